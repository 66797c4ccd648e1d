"""The narrow waists between the algorithm and its engines.

The algorithm only ever sees these types: a rollout engine that turns prompts into completions,
an executor that turns jobs into results, and the per-response training samples it hands to the
actor. Nothing here imports torch; tensors cross ``update_weights`` as opaque objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol


class TaskType(StrEnum):
    """The three AZR task types; values are the names used in configs and logs."""

    ABDUCTION = "abduction"  # original code: `code_i`, predict the input
    DEDUCTION = "deduction"  # `code_o`, predict the output
    INDUCTION = "induction"  # `code_f`, predict the function


class Role(StrEnum):
    PROPOSE = "propose"
    SOLVE = "solve"


# ------------------------------------------------------------------------------------------
# Rollout


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 = off
    max_tokens: int = 8096
    n: int = 1  # samples per prompt; engines share the prompt's KV cache among them
    stop: tuple[str, ...] = ()
    # Sample j of every prompt draws from seed + j (vLLM's semantics). Callers that need
    # independent prompts pass per-prompt ``seeds`` to ``generate`` instead.
    seed: int | None = None


@dataclass
class Completion:
    """One sampled response. ``logprobs[i]`` is the sampler's log-prob of ``token_ids[i]``."""

    text: str
    token_ids: list[int]
    logprobs: list[float]
    prompt_token_ids: list[int]
    finish_reason: Literal["stop", "length"] = "stop"


class Generator(Protocol):
    """What the algorithm needs of a rollout engine."""

    def generate(
        self,
        prompts: Sequence[str],
        sampling: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """``sampling.n`` completions for each prompt, in prompt order.

        ``seeds``: one per prompt; sample j of prompt i draws from ``seeds[i] + j``, whatever
        else is in the call (batching must not change a seeded prompt's samples). Without it,
        ``sampling.seed`` seeds every prompt alike."""
        ...


class RolloutEngine(Generator, Protocol):
    def update_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Load HF-named full tensors (or this engine's own shards) into the live engine."""
        ...

    def sleep(self) -> None:
        """Release accelerator memory (weights and KV cache) while the actor trains."""
        ...

    def wake_up(self) -> None: ...


# ------------------------------------------------------------------------------------------
# Executor

JobKind = Literal["run", "validate", "deduction", "abduction", "induction"]
Status = Literal["ok", "error", "timeout", "memory", "killed", "invalid"]


@dataclass(frozen=True)
class Job:
    """One unit of sandboxed work. ``id`` makes retries idempotent (farm, resubmission).

    kinds:
      run        execute ``program`` on each of ``inputs``; ``outputs`` = repr per input.
      validate   proposal validation (syntax, ``banned_imports``, determinism over two fresh
                 processes); ``outputs`` = repr per input (the gold outputs of the task).
      deduction  does ``prediction`` equal ``expected[0]``? Both are literals, evaluated without
                 the program (which does not run): only the names ``imports`` bind, ``inf``,
                 ``nan`` and builtin constructors (``executor/runtime/literals.py``).
      abduction  does ``f(*args, **kwargs)`` equal ``expected[0]``, ``prediction`` being the
                 argument list, each argument a literal evaluated as above?
      induction  does the predicted program ``prediction`` map each of ``inputs`` (the hidden
                 inputs, literals) to the matching ``expected`` (``imports`` of the gold program
                 prepended)? ``program`` is the gold program, carried for the record only.

    A ``run``/``validate`` input is evaluated in the program's scope (``f(<input>)``) unless
    ``literal_inputs``, which makes validation also require literal arguments (an induction
    task's inputs become hidden inputs, graded as literals); every other text that becomes a
    value is a literal, so no answer can call the program or build an object with a custom
    ``__eq__``.
    """

    id: str
    kind: JobKind
    program: str
    inputs: tuple[str, ...] = ()
    expected: tuple[str, ...] = ()
    prediction: str = ""
    imports: tuple[str, ...] = ()
    banned_imports: tuple[str, ...] = ()
    timeout_s: float = 10.0
    literal_inputs: bool = False


@dataclass
class ExecResult:
    """What happened to a job: data, never an exception for a failing program.

    ``status`` is "ok" only if everything the job asked for ran to completion; any other value
    makes a proposal invalid. ``matches`` holds one bool per compared pair of a check job (an
    error on one pair is a False there, so fractional induction rewards stay computable); a
    ``run``/``validate`` job given ``expected`` fills it too (same text or equal value).

    Trust boundary: the verdict is computed inside the job's own sandboxed process. Answers to
    deduction and abduction are literals and cannot carry code; a value equal to anything
    (even nested in builtin containers) matches nothing. A program that runs in the job (an
    induction answer, a proposal under validation) can still forge its result lines and so
    misreport its own job. The sandbox keeps it from touching anything else.
    """

    id: str
    status: Status
    outputs: list[str] = field(default_factory=list)
    matches: list[bool] = field(default_factory=list)
    error_type: str = ""
    stderr_tail: str = ""
    time_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Executor(Protocol):
    def run(self, jobs: Sequence[Job]) -> list[ExecResult]:
        """Results in job order; program failures are results, not exceptions."""
        ...


# ------------------------------------------------------------------------------------------
# Training samples (algorithm -> actor)


@dataclass
class TrainSample:
    """One response to train on. The same advantage applies to every response token.

    The actor refuses a batch with an empty prompt, an out-of-vocabulary id or a non-finite
    advantage before it touches the weights."""

    task: TaskType
    role: Role
    prompt_token_ids: list[int]
    response_token_ids: list[int]
    reward: float
    advantage: float
    rollout_logprobs: list[float] = field(default_factory=list)
