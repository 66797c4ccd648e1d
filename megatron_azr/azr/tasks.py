"""Task records (spec §1): what the buffers hold and what goes to and from JSONL.

Deduction and abduction share one record, the triplet ``(snippet, input, output)``: the task type
decides which part the solver is shown. Induction tasks hold one program with N inputs, their
outputs and a free-text message. Outputs are always stored as the executor's ``repr`` strings, so a
returned ``str`` ``abc`` is stored as ``'abc'`` (quotes included) and grading compares values, never
text.

The JSON layout is the official AZR one (``snippet``, ``input``/``inputs``, ``output``/``outputs``,
``imports``, ...), plus ``step``: the global step at which the entry was added (0 = seed). Keys this
code does not know (the official files carry ``_input_type`` and friends) are kept in ``extra`` and
written back unchanged, so a load/save round trip never loses data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class TaskRecordError(ValueError):
    """A JSON record that is not a valid task; the message names the offending key."""


def _get(d: dict[str, Any], key: str, kind: type, default: Any = ...) -> Any:
    if key not in d:
        if default is ...:
            raise TaskRecordError(f"missing key '{key}'")
        return default
    value = d[key]
    if kind is int and isinstance(value, bool):
        raise TaskRecordError(f"key '{key}': expected int, got bool")
    if not isinstance(value, kind):
        raise TaskRecordError(f"key '{key}': expected {kind.__name__}, got {type(value).__name__}")
    return value


def _str_list(d: dict[str, Any], key: str, default: Any = ...) -> list[str]:
    value = _get(d, key, list, default)
    if not all(isinstance(v, str) for v in value):
        raise TaskRecordError(f"key '{key}': expected a list of strings")
    return list(value)


_TRIPLET_KEYS = {"snippet", "input", "output", "imports", "original_snippet", "thought", "step"}


@dataclass
class Triplet:
    """A deduction/abduction task ``(p, i, o)``; ``output`` is a repr string."""

    snippet: str
    input: str
    output: str
    imports: list[str] = field(default_factory=list)
    # The program as proposed, before seeding-only clean-up; equal to ``snippet`` in self-play.
    original_snippet: str = ""
    thought: str = ""
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.original_snippet:
            self.original_snippet = self.snippet

    def to_json(self) -> dict[str, Any]:
        return {
            "snippet": self.snippet,
            "input": self.input,
            "output": self.output,
            "imports": list(self.imports),
            "original_snippet": self.original_snippet,
            "composite_functions": [],
            "thought": self.thought,
            "step": self.step,
            **self.extra,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Triplet:
        if not isinstance(d, dict):
            raise TaskRecordError(f"expected a JSON object, got {type(d).__name__}")
        # `composite_functions` is always empty in the paper runs (App. D curriculum, unused);
        # to_json writes an empty one so files stay loadable by the original code.
        extra = {
            k: v
            for k, v in d.items()
            if k not in _TRIPLET_KEYS and not (k == "composite_functions" and v == [])
        }
        return cls(
            snippet=_get(d, "snippet", str),
            input=_get(d, "input", str),
            output=_get(d, "output", str),
            imports=_str_list(d, "imports", []),
            original_snippet=_get(d, "original_snippet", str, ""),
            thought=_get(d, "thought", str, ""),
            step=_get(d, "step", int, 0),
            extra=extra,
        )


_INDUCTION_KEYS = {"snippet", "inputs", "outputs", "message", "imports", "thought", "step"}


@dataclass
class InductionTask:
    """An induction task: a program, N inputs with their repr outputs, and a message.

    The solver is shown the first ``len(inputs) // 2`` pairs and graded on the rest (5/5 for the
    paper's N = 10; the official seed file also holds a 6-input record, split 3/3).
    """

    snippet: str
    inputs: list[str]
    outputs: list[str]
    message: str
    imports: list[str] = field(default_factory=list)
    thought: str = ""
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.outputs):
            raise TaskRecordError(
                f"induction task has {len(self.inputs)} inputs but {len(self.outputs)} outputs"
            )
        if len(self.inputs) < 2:
            raise TaskRecordError("induction task needs >= 2 input/output pairs (given + hidden)")

    @property
    def n_given(self) -> int:
        return len(self.inputs) // 2

    @property
    def given_pairs(self) -> list[tuple[str, str]]:
        return list(zip(self.inputs[: self.n_given], self.outputs[: self.n_given], strict=True))

    @property
    def hidden_inputs(self) -> list[str]:
        return self.inputs[self.n_given :]

    @property
    def hidden_outputs(self) -> list[str]:
        return self.outputs[self.n_given :]

    def to_json(self) -> dict[str, Any]:
        return {
            "snippet": self.snippet,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "message": self.message,
            "imports": list(self.imports),
            "thought": self.thought,
            "step": self.step,
            **self.extra,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> InductionTask:
        if not isinstance(d, dict):
            raise TaskRecordError(f"expected a JSON object, got {type(d).__name__}")
        extra = {k: v for k, v in d.items() if k not in _INDUCTION_KEYS}
        return cls(
            snippet=_get(d, "snippet", str),
            inputs=_str_list(d, "inputs"),
            outputs=_str_list(d, "outputs"),
            message=_get(d, "message", str),
            imports=_str_list(d, "imports", []),
            thought=_get(d, "thought", str, ""),
            step=_get(d, "step", int, 0),
            extra=extra,
        )


# The "zero" seed of paper Fig. 5: the identity program. The induction seed feeds it one input of
# each kind the original used (string, int, dict built by a call, float tuple, a string that looks
# like a matrix, a long int); outputs are the reprs the executor would produce.
IDENTITY_PROGRAM = "def f(a):\n    return a"


def identity_triplet() -> Triplet:
    return Triplet(snippet=IDENTITY_PROGRAM, input='"Hello world"', output="'Hello world'")


def identity_induction_task() -> InductionTask:
    inputs = [
        '"Hello world"',
        "1",
        "dict(a=1, b=2)",
        "(1.1, 1.2, 1.3)",
        '"[[1, 0, 0], [0, 0, 0], [0, 0, 0]]"',
        "1001101100010001",
    ]
    outputs = [
        "'Hello world'",
        "1",
        "{'a': 1, 'b': 2}",
        "(1.1, 1.2, 1.3)",
        "'[[1, 0, 0], [0, 0, 0], [0, 0, 0]]'",
        "1001101100010001",
    ]
    return InductionTask(
        snippet=IDENTITY_PROGRAM,
        inputs=inputs,
        outputs=outputs,
        message="Write a function that returns its input unchanged.",
    )
