"""Scripted engines for driving the self-play step in tests (test-only code).

``ScriptedRollout`` answers each prompt with a function of (prompt, sample index); token ids are
the UTF-8 bytes of the text so response lengths vary with the text, as real ones do.

``InProcessExecutor`` runs the jobs' programs with ``exec`` in this process. That is only
acceptable because every program it sees is written by the tests themselves; the package never
does this (its executor is a sandbox).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from megatron_azr.azr.parsing import fences
from megatron_azr.azr.protocols import Completion, ExecResult, Job, SamplingParams
from megatron_azr.executor.runtime import literals
from megatron_azr.executor.runtime.harness import find_banned_imports


def completion(text: str, prompt: str = "") -> Completion:
    ids = list(text.encode())
    return Completion(
        text=text,
        token_ids=ids,
        logprobs=[-0.25] * len(ids),
        prompt_token_ids=list(prompt.encode())[:16],
    )


class ScriptedRollout:
    def __init__(self, respond: Callable[[str, int], str]) -> None:
        self.respond = respond
        self.calls: list[tuple[list[str], SamplingParams]] = []
        self.seeds: list[list[int] | None] = []

    def generate(
        self, prompts: Sequence[str], sampling: SamplingParams, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        self.calls.append((list(prompts), sampling))
        self.seeds.append(None if seeds is None else list(seeds))
        return [[completion(self.respond(p, i), p) for i in range(sampling.n)] for p in prompts]

    def update_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        pass

    def sleep(self) -> None:
        pass

    def wake_up(self) -> None:
        pass


def _namespace(program: str, imports: Sequence[str] = ()) -> dict[str, Any]:
    ns: dict[str, Any] = {}
    exec("\n".join([*imports, program]), ns)
    return ns


class InProcessExecutor:
    """Grades jobs like the real executor would, for trusted test programs only.

    ``override`` forces a status for jobs whose program contains a given substring, to exercise
    failure statuses (timeouts, kills) without writing such programs.
    """

    def __init__(self, override: dict[str, str] | None = None) -> None:
        self.override = override or {}
        self.batches: list[list[Job]] = []

    @property
    def jobs(self) -> list[Job]:
        return [j for batch in self.batches for j in batch]

    def run(self, jobs: Sequence[Job]) -> list[ExecResult]:
        self.batches.append(list(jobs))
        return [self._one(job) for job in jobs]

    def _one(self, job: Job) -> ExecResult:
        for needle, status in self.override.items():
            if needle in job.program or needle in job.prediction:
                return ExecResult(job.id, status)  # type: ignore[arg-type]
        try:
            if job.kind == "validate":
                if find_banned_imports(job.program, list(job.banned_imports)):
                    return ExecResult(job.id, "invalid", error_type="BannedImport")
                ns = _namespace(job.program)
                outputs = []
                for inp in job.inputs:
                    first, second = eval(f"f({inp})", ns), eval(f"f({inp})", ns)
                    if first != second:
                        return ExecResult(job.id, "error", error_type="NonDeterministic")
                    outputs.append(repr(first))
                return ExecResult(job.id, "ok", outputs=outputs)
            # Answers, gold outputs and hidden inputs are literals, evaluated without the
            # program, as the real executor does (deduction runs no program at all).
            scope = literals.Scope(lambda: job.imports)
            if job.kind == "deduction":
                match = self._same(
                    job.expected[0], lambda: literals.evaluate(job.prediction, scope), scope
                )
                return ExecResult(job.id, "ok", matches=[match])
            if job.kind in ("abduction", "induction"):
                ns = _namespace(
                    job.prediction if job.kind == "induction" else job.program, job.imports
                )
                pairs = (
                    [(job.prediction, job.expected[0])]
                    if job.kind == "abduction"
                    else zip(job.inputs, job.expected, strict=True)
                )
                matches = [
                    self._same(gold, lambda a=args: self._call(ns, a, scope), scope)
                    for args, gold in pairs
                ]
                return ExecResult(job.id, "ok", matches=matches)
        except Exception as e:
            return ExecResult(job.id, "error", error_type=type(e).__name__)
        raise AssertionError(f"unexpected job kind {job.kind}")

    @staticmethod
    def _call(ns: dict[str, Any], args: str, scope: literals.Scope) -> Any:
        positional, keywords = literals.arguments(args, scope)
        return ns["f"](*positional, **keywords)

    @staticmethod
    def _same(gold: str, value: Callable[[], Any], scope: literals.Scope) -> bool:
        try:
            return bool(literals.evaluate(gold, scope) == value())
        except Exception:
            return False


# ----------------------------------------------------------------------------- a scripted policy


def answer(body: str, think: str = "thinking") -> str:
    """A well-formatted response (the prompt already opened <think>)."""
    return f"{think}</think> <answer>{body}</answer>"


def fence(tag: str, body: str) -> str:
    return f"```{tag}\n{body}\n```"


def prompt_kind(prompt: str) -> str:
    """Which of the six prompts this is, from the task title line."""
    user = prompt.split("User: ", 1)[1]
    title = user.split("\n", 1)[0]
    if "Write a New Python Code Snippet" in title:
        return "propose_deduction" if "predict the output" in user else "propose_abduction"
    if "Inputs for the Code Snippet" in title:
        return "propose_induction"
    if "Find an Input" in title:
        return "solve_abduction"
    if "Predict the Output" in title:
        return "solve_deduction"
    if "Reconstruct the Function" in title:
        return "solve_induction"
    raise AssertionError(f"unknown prompt: {title}")


def prompt_blocks(prompt: str) -> dict[str, str]:
    """Fenced blocks of a solver prompt by tag (the first of each tag)."""
    out: dict[str, str] = {}
    for b in fences(prompt.split("User: ", 1)[1]):
        out.setdefault(b.tag, b.body)
    return out


def true_solution(prompt: str) -> str:
    """The correct answer body for a solver prompt, computed by running the shown program."""
    kind = prompt_kind(prompt)
    blocks = prompt_blocks(prompt)
    if kind == "solve_deduction":
        ns = _namespace(blocks["python"])
        return fence("output", repr(eval(f"f({blocks['input']})", ns)))
    if kind == "solve_abduction":
        # Every test program is chosen so that its output is also a valid input for `inverse`.
        return fence("input", INVERSES[blocks["python"]](blocks["output"]))
    if kind == "solve_induction":
        return fence("python", INDUCTION_ANSWERS[blocks["message"]])
    raise AssertionError(kind)


IDENTITY = "def f(a):\n    return a"
DOUBLE = "def double(x):\n    # twice the input\n    return x * 2"
DOUBLE_F = "def f(x):\n    # twice the input\n    return x * 2"
TRIPLE = "def f(x):\n    return x * 3"
INVERSES: dict[str, Callable[[str], str]] = {
    IDENTITY: lambda out: out,
    DOUBLE_F: lambda out: repr(eval(out) // 2),
    TRIPLE: lambda out: repr(eval(out) // 3),
}
INDUCTION_ANSWERS = {
    "Echo.": IDENTITY,
    "Doubles.": DOUBLE_F,
    "Triples.": TRIPLE,
}
