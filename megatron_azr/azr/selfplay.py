"""One AZR self-play step (spec §7): prompts -> responses -> executor verdicts -> rewards -> TRR++.

The step only talks to a :class:`Generator` (what it needs of a rollout engine) and an
:class:`Executor` (protocols); every check of a model answer is an executor job, nothing
model-written is evaluated in this process.

Order of work. The original runs, per task type, propose -> validate -> learnability -> solve.
Since all six loaders are built from the buffer state at the start of the step (spec §7.1) and the
policy does not change inside a step, the same results come from batching across task types,
which keeps the engines busy with large batches and cuts round trips to 4:

1. build the six prompt lists (proposer references / programs, solver batches) from the buffers;
2. one ``generate`` for the 3 proposer batches and the 3 solver batches (n = 1);
3. parse proposals; one executor call validates them and grades the solver answers;
4. one ``generate`` with ``n = n_learnability_samples`` for every valid proposal, one executor
   call to grade those answers; the solve rate gives the proposer reward;
5. append valid proposals to their buffers (tagged with the step), TRR++ per sub-batch.

Executor jobs carry content-derived ids and are deduplicated, so identical answers to one task
are run once (the original's answer cache) and a retried call is idempotent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from megatron_azr.azr.advantages import trr_advantages
from megatron_azr.azr.buffers import Buffers, T, TaskBuffer
from megatron_azr.azr.config import AZRConfig
from megatron_azr.azr.parsing import (
    InductionProposal,
    ParseFailure,
    ProgramProposal,
    extract_solver_answer,
    extract_thought,
    first_turn,
    is_well_formatted,
    parse_induction_proposal,
    parse_program_proposal,
)
from megatron_azr.azr.prompts import Wrap, proposer_prompt, r1_wrap, solver_prompt
from megatron_azr.azr.protocols import (
    Completion,
    ExecResult,
    Executor,
    Generator,
    Job,
    Role,
    SamplingParams,
    TaskType,
    TrainSample,
)
from megatron_azr.azr.rewards import proposer_reward, solver_reward
from megatron_azr.azr.tasks import InductionTask, Triplet

logger = logging.getLogger(__name__)

TASK_ORDER = (TaskType.ABDUCTION, TaskType.DEDUCTION, TaskType.INDUCTION)
# Fresh reference draws tried for a proposer prompt that exceeds the length limit.
PROMPT_ATTEMPTS = 8


class EngineContractError(RuntimeError):
    """An engine broke its protocol (wrong number of completions/results, unknown job ids)."""


@dataclass
class Proposal:
    """One proposer response and what became of it."""

    task: TaskType
    prompt: str
    completion: Completion
    well_formatted: bool
    # Parse failure reason, or "exec_<status>" for a failed validation; None when valid.
    failure: str | None = None
    record: Triplet | InductionTask | None = None
    # False when the task's solver prompt is over the length limit: it is never shown to a
    # solver, so it stays out of the buffer (its solve rate is 0, as in the original).
    solvable: bool = True
    solve_rate: float = 0.0
    reward: float = 0.0
    advantage: float = 0.0
    parsed: ProgramProposal | InductionProposal | None = field(default=None, repr=False)
    status: str = ""  # the validation job's status; "" when the proposal did not parse

    @property
    def valid(self) -> bool:
        return self.record is not None

    @property
    def text(self) -> str:
        return first_turn(self.completion.text)


@dataclass
class Solve:
    """One solver response on a buffer task."""

    task: TaskType
    record: Triplet | InductionTask
    prompt: str
    completion: Completion
    well_formatted: bool
    accuracy: float = 0.0
    reward: float = 0.0
    advantage: float = 0.0
    answer: str | None = None  # what was graded; None: no answer to run (graded -1 or 0)
    status: str = ""  # the grading job's status; "" when none ran

    @property
    def text(self) -> str:
        return first_turn(self.completion.text)


@dataclass
class StepResult:
    step: int
    # The six (task, role) sub-batches. Proposer ones are empty when ``train_propose`` is off.
    batches: dict[tuple[TaskType, Role], list[TrainSample]]
    metrics: dict[str, float]
    proposals: list[Proposal] = field(default_factory=list)
    solves: list[Solve] = field(default_factory=list)

    def samples(self) -> list[TrainSample]:
        """All training samples of the step (one actor update on all of them)."""
        return [s for batch in self.batches.values() for s in batch]

    def rows(self) -> list[dict[str, object]]:
        """Every proposer and solver response of the step as a plain record (the rollout dump):
        what the model saw and wrote, what was parsed from it, what the executor said, and the
        reward and advantage it was trained with."""
        out: list[dict[str, object]] = [_proposal_row(self.step, p) for p in self.proposals]
        out += [_solve_row(self.step, s) for s in self.solves]
        return out


def _response_fields(item: Proposal | Solve) -> dict[str, object]:
    c = item.completion
    return {
        "prompt": item.prompt,
        "response": c.text,
        "response_tokens": len(c.token_ids),
        "finish_reason": c.finish_reason,
        "well_formatted": item.well_formatted,
    }


def _proposal_row(step: int, p: Proposal) -> dict[str, object]:
    parsed: dict[str, object] | None = None
    if isinstance(p.parsed, ProgramProposal):
        parsed = {"program": p.parsed.code, "input": p.parsed.input}
    elif isinstance(p.parsed, InductionProposal):
        parsed = {"inputs": p.parsed.inputs, "message": p.parsed.message}
    if isinstance(p.record, Triplet):
        parsed = {**(parsed or {}), "output": p.record.output}
    elif isinstance(p.record, InductionTask):
        parsed = {**(parsed or {}), "program": p.record.snippet, "outputs": p.record.outputs}
    return {
        "step": step,
        "task": p.task.value,
        "role": "proposer",
        **_response_fields(p),
        "parsed": parsed,
        "status": p.status,
        "failure": p.failure,
        "valid": p.valid,
        "added_to_buffer": p.valid and p.solvable,
        "solve_rate": p.solve_rate,
        "reward": p.reward,
        "advantage": p.advantage,
    }


def _solve_row(step: int, s: Solve) -> dict[str, object]:
    r = s.record
    expected = r.output if isinstance(r, Triplet) else r.hidden_outputs
    return {
        "step": step,
        "task": s.task.value,
        "role": "solver",
        **_response_fields(s),
        "parsed": s.answer,
        "expected": expected,
        "status": s.status,
        "accuracy": s.accuracy,
        "reward": s.reward,
        "advantage": s.advantage,
    }


@dataclass
class ProposerPrompt:
    task: TaskType
    prompt: str
    program: Triplet | None = None  # induction: the buffer program the inputs are for


def draw_prompts(
    n: int, draw: Callable[[], ProposerPrompt], fits: Callable[[str], bool]
) -> list[ProposerPrompt]:
    """``n`` proposer prompts from ``draw``; one that does not ``fit`` is redrawn, up to
    ``PROMPT_ATTEMPTS`` times, then left out (the batch comes out short)."""
    out = []
    for _ in range(n):
        for _attempt in range(PROMPT_ATTEMPTS):
            pp = draw()
            if fits(pp.prompt):
                out.append(pp)
                break
    return out


def job_id(job: Job) -> str:
    """A content hash: equal work gets an equal id (dedup, idempotent retries)."""
    payload = dataclasses.asdict(dataclasses.replace(job, id=""))
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return f"{job.kind}-{digest[:32]}"


def make_job(**fields: object) -> Job:
    job = Job(id="", **fields)  # type: ignore[arg-type]
    return dataclasses.replace(job, id=job_id(job))


def program_validation_job(proposal: ProgramProposal, cfg: AZRConfig) -> Job:
    """Validation of a proposed program on its proposed input (ban list, determinism)."""
    return make_job(
        kind="validate",
        program=proposal.code,
        inputs=(proposal.input,),
        banned_imports=tuple(cfg.banned_imports),
        timeout_s=cfg.program_timeout_s,
    )


def induction_validation_job(program: str, proposal: InductionProposal, cfg: AZRConfig) -> Job:
    """A buffer program run on proposed inputs, without the ban check: the program came from a
    validated buffer. The inputs must be literals: the hidden ones are graded as literals, so a
    task with an expression input (``'a' * 100``) could never be solved."""
    return make_job(
        kind="validate",
        program=program,
        inputs=tuple(proposal.inputs),
        timeout_s=cfg.program_timeout_s,
        literal_inputs=True,
    )


def program_record(
    proposal: ProgramProposal, output: str, *, step: int = 0, thought: str = ""
) -> Triplet:
    """The deduction/abduction task a validated program proposal becomes."""
    return Triplet(
        snippet=proposal.code,
        input=proposal.input,
        output=output,
        imports=list(proposal.imports),
        original_snippet=proposal.original_code,
        thought=thought,
        step=step,
    )


def induction_record(
    program: Triplet, proposal: InductionProposal, outputs: Sequence[str], *, step: int = 0
) -> InductionTask:
    """The induction task validated inputs for a buffer program become."""
    return InductionTask(
        snippet=program.snippet,
        inputs=list(proposal.inputs),
        outputs=list(outputs),
        message=proposal.message,
        imports=list(program.imports),
        step=step,
    )


def sampling_params(cfg: AZRConfig) -> SamplingParams:
    """The sampling of every rollout, proposer and solver alike (spec §9)."""
    return SamplingParams(
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        max_tokens=cfg.max_response_tokens,
    )


# Per-prompt seeds lie on a grid: a call's block holds SEED_STRIDE prompts, each with room for
# SEED_STRIDE samples (seed + j), so no two prompts of a step ever share a random stream.
SEED_STRIDE = 4096


def prompt_seeds(seed: int, call: int, n: int) -> list[int]:
    """One seed per prompt position of generate call number ``call`` under ``seed`` (a step's):
    prompts draw independent random streams (one seed for all made sample ``j`` of every prompt
    use the same stream, which couples similar prompts), and a resumed run, which rebuilds the
    same prompts in the same order, replays them exactly. Sample ``j`` of prompt ``i`` draws
    from ``seeds[i] + j``: the grid keeps those disjoint for up to ``SEED_STRIDE`` prompts per
    call and samples per prompt; the base is a hash of ``seed``."""
    if n > SEED_STRIDE:
        raise ValueError(f"{n} prompts in one generate call: at most {SEED_STRIDE} are seeded")
    digest = hashlib.sha256(f"megatron-azr/rollout/{seed}".encode()).digest()
    base = int.from_bytes(digest[:4], "big") + call * SEED_STRIDE * SEED_STRIDE
    return [base + i * SEED_STRIDE for i in range(n)]


def generate_checked(
    rollout: Generator,
    prompts: Sequence[str],
    sampling: SamplingParams,
    seeds: Sequence[int] | None = None,
) -> list[list[Completion]]:
    """``sampling.n`` completions per prompt, from ``rollout.generate`` with its contract checked.

    Under a seed, engines give sample ``j`` of a prompt the seed ``seed + j`` (as vLLM does),
    so copies of one prompt in a call (solver batches topped up by repetition, induction
    programs drawn twice, a buffer holding only the identity seed) would all get the same
    completions. Each distinct prompt goes to the engine once instead, with ``n`` samples per
    copy (one call per distinct number of copies) and the seed of its first position, and the
    copies share out its samples.
    """
    if not prompts:
        return []
    if sampling.seed is None and seeds is None:
        return _generate_checked(rollout, list(prompts), sampling, None)
    copies = Counter(prompts)  # in order of first appearance
    first: dict[str, int] = {}
    for i, p in enumerate(prompts):
        first.setdefault(p, i)
    samples: dict[str, list[Completion]] = {}
    for m in sorted(set(copies.values())):
        distinct = [p for p, c in copies.items() if c == m]
        groups = _generate_checked(
            rollout,
            distinct,
            dataclasses.replace(sampling, n=m * sampling.n),
            None if seeds is None else [seeds[first[p]] for p in distinct],
        )
        samples.update(zip(distinct, groups, strict=True))
    taken: Counter[str] = Counter()
    out = []
    for p in prompts:
        k = taken[p]
        taken[p] += 1
        out.append(samples[p][k * sampling.n : (k + 1) * sampling.n])
    return out


def _generate_checked(
    rollout: Generator, prompts: list[str], sampling: SamplingParams, seeds: list[int] | None
) -> list[list[Completion]]:
    out = rollout.generate(prompts, sampling, seeds)
    if len(out) != len(prompts) or any(len(group) != sampling.n for group in out):
        got = [len(group) for group in out]
        raise EngineContractError(
            f"rollout engine returned {got} completions for {len(prompts)} prompts x n={sampling.n}"
        )
    return out


def execute_checked(executor: Executor, jobs: Sequence[Job]) -> dict[str, ExecResult]:
    """Run the distinct jobs (by content id) once each; results by job id."""
    unique = list({job.id: job for job in jobs}.values())
    if not unique:
        return {}
    results = executor.run(unique)
    by_id = {r.id: r for r in results}
    missing = [j.id for j in unique if j.id not in by_id]
    if len(results) != len(unique) or missing:
        raise EngineContractError(
            f"executor returned {len(results)} results for {len(unique)} jobs "
            f"(missing ids: {missing[:3]})"
        )
    return by_id


class SelfPlayStep:
    """Runs self-play steps against given engines and mutates ``buffers`` (valid proposals).

    ``prompt_fits`` is the trainer's prompt-length filter (token count <= max prompt length);
    prompts it rejects are never sent: proposer prompts are redrawn, solver batches skip the task,
    and a valid proposal whose solver prompt is too long gets solve rate 0 (as in the original)
    and stays out of the buffer (no solver could ever be shown it). ``wrap`` is the prompt
    template (default: the paper's raw R1 template).
    """

    def __init__(
        self,
        cfg: AZRConfig,
        buffers: Buffers,
        rollout: Generator,
        executor: Executor,
        *,
        seed: int = 0,
        prompt_fits: Callable[[str], bool] | None = None,
        wrap: Wrap = r1_wrap,
    ) -> None:
        self.cfg = cfg
        self.buffers = buffers
        self.rollout = rollout
        self.executor = executor
        self.sampling = sampling_params(cfg)
        self.seed = seed
        self.prompt_fits = prompt_fits or (lambda _prompt: True)
        self.wrap = wrap
        self.task_types = [t for t in TASK_ORDER if t.value in cfg.task_types]

    # ------------------------------------------------------------------------------- the step

    def run(self, step: int, rollout_seed: int | None = None) -> StepResult:
        """Self-play step ``step`` (1-based; the seeds carry step 0). Deterministic in
        (``seed``, ``step``, buffer state, engine outputs). ``rollout_seed``: the sampling seed
        of this step's rollouts (None: the engine draws its own)."""
        rng = random.Random(f"megatron-azr/selfplay/{self.seed}/{step}")
        sampling = dataclasses.replace(self.sampling, seed=rollout_seed)
        sizes_before = self.buffers.sizes()

        # 1. All six loaders from the buffer state at the start of the step.
        proposer_prompts = [p for t in self.task_types for p in self._proposer_prompts(t, rng)]
        solver_tasks = [s for t in self.task_types for s in self._solver_tasks(t, step, rng)]
        for t in self.task_types:
            n_propose = sum(p.task is t for p in proposer_prompts)
            n_solve = sum(s[0] is t for s in solver_tasks)
            if min(n_propose, n_solve) < self.cfg.batch_size:
                logger.warning(
                    "step %d %s: short batches (%d proposer, %d solver prompts of %d): small "
                    "buffer or prompts over the length limit",
                    step,
                    t,
                    n_propose,
                    n_solve,
                    self.cfg.batch_size,
                )

        # 2. Proposer and solver responses.
        prompts = [p.prompt for p in proposer_prompts] + [prompt for _, _, prompt in solver_tasks]
        completions = [c[0] for c in self._generate(prompts, sampling, n=1, call=0)]
        proposals = [
            Proposal(p.task, p.prompt, c, is_well_formatted(first_turn(c.text)))
            for p, c in zip(proposer_prompts, completions[: len(proposer_prompts)], strict=True)
        ]
        solves = [
            Solve(t, record, prompt, c, is_well_formatted(first_turn(c.text)))
            for (t, record, prompt), c in zip(
                solver_tasks, completions[len(proposer_prompts) :], strict=True
            )
        ]

        # 3. Validate proposals and grade solver answers in one executor call.
        validations = [
            self._validation_job(p, pp) for p, pp in zip(proposals, proposer_prompts, strict=True)
        ]
        solver_jobs = [self._solver_job(s) for s in solves]
        results = self._execute([j for j in validations + solver_jobs if j is not None])
        for proposal, job, pp in zip(proposals, validations, proposer_prompts, strict=True):
            if job is not None:
                self._accept(proposal, job, results[job.id], pp, step)
        for solve, job in zip(solves, solver_jobs, strict=True):
            # As in the original, an induction answer without a code block is a format error.
            solve.well_formatted = job is not None
            if job is not None:
                solve.status = results[job.id].status
                solve.accuracy = self._accuracy(solve.task, results[job.id], solve.record)
            solve.reward = solver_reward(solve.well_formatted, solve.accuracy)

        # 4. Learnability: n solver rollouts per valid proposal. A valid proposal with a broken
        # think/answer format gets -1 whatever its solve rate, so it is not estimated (the
        # original spent the rollouts anyway).
        self._estimate_solve_rates([p for p in proposals if p.valid and p.well_formatted], sampling)
        for p in proposals:
            p.reward = proposer_reward(
                p.valid, p.well_formatted, p.solve_rate, self.cfg.proposer_zero_reward
            )

        # 5. Grow the buffers, then TRR++ per (task, role) sub-batch.
        added = {t: 0 for t in TASK_ORDER}
        for t in self.task_types:
            new = [p.record for p in proposals if p.task is t and p.solvable]
            if t is TaskType.INDUCTION:
                induction = [r for r in new if isinstance(r, InductionTask)]
                added[t] = self.buffers.induction.add(induction)
            else:
                triplets = [r for r in new if isinstance(r, Triplet)]
                added[t] = self.buffers.program_buffer(t).add(triplets)
        batches = self._batches(proposals, solves)
        metrics = self._metrics(proposals, solves, added, sizes_before)
        return StepResult(step, batches, metrics, proposals, solves)

    # ------------------------------------------------------------------------------- loaders

    def _proposer_prompts(self, task: TaskType, rng: random.Random) -> list[ProposerPrompt]:
        cfg = self.cfg
        if task is TaskType.INDUCTION:
            pool = self.buffers.programs()
            if not pool:
                return []

            def draw() -> ProposerPrompt:
                program = rng.choice(pool)
                n = cfg.n_induction_inputs
                prompt = proposer_prompt(task, program=program.snippet, n_inputs=n, wrap=self.wrap)
                return ProposerPrompt(task, prompt, program)

        else:
            k = cfg.k_references if cfg.include_references else 0
            buffer = self.buffers.program_buffer(task)

            def draw() -> ProposerPrompt:
                prompt = proposer_prompt(
                    task,
                    references=buffer.sample(k, rng),
                    banned=cfg.banned_imports,
                    timeout_s=cfg.program_timeout_s,
                    empty_reference_section=cfg.empty_reference_section,
                    wrap=self.wrap,
                )
                return ProposerPrompt(task, prompt)

        return draw_prompts(cfg.batch_size, draw, self.prompt_fits)

    def _solver_tasks(
        self, task: TaskType, step: int, rng: random.Random
    ) -> list[tuple[TaskType, Triplet | InductionTask, str]]:
        if task is TaskType.INDUCTION:
            return [(task, r, p) for r, p in self._solver_batch(self.buffers.induction, step, rng)]
        buffer = self.buffers.program_buffer(task)
        return [(task, r, p) for r, p in self._solver_batch(buffer, step, rng)]

    def _solver_batch(
        self, buffer: TaskBuffer[T], step: int, rng: random.Random
    ) -> list[tuple[T, str]]:
        prompts: dict[int, str] = {}

        def accept(entry: T) -> bool:
            prompt = self.solver_prompt(buffer.task, entry)
            prompts[id(entry)] = prompt
            return self.prompt_fits(prompt)

        batch = buffer.solver_batch(
            self.cfg.batch_size, step, rng, window=self.cfg.solver_new_window, accept=accept
        )
        return [(entry, prompts[id(entry)]) for entry in batch]

    def solver_prompt(self, task: TaskType, record: Triplet | InductionTask) -> str:
        return solver_prompt(task, record, self.cfg.program_timeout_s, self.wrap)

    # ------------------------------------------------------------------------------- proposals

    def _validation_job(self, proposal: Proposal, pp: ProposerPrompt) -> Job | None:
        """The executor job that validates a proposal, or None (failure recorded) if it does not
        even parse."""
        cfg = self.cfg
        text = proposal.text
        if proposal.task is TaskType.INDUCTION:
            assert pp.program is not None
            parsed_inputs = parse_induction_proposal(text, cfg.n_induction_inputs)
            if isinstance(parsed_inputs, ParseFailure):
                proposal.failure = parsed_inputs.reason
                return None
            proposal.parsed = parsed_inputs
            return induction_validation_job(pp.program.snippet, parsed_inputs, cfg)
        parsed = parse_program_proposal(
            text,
            reject_multiple_functions=cfg.reject_multiple_functions,
            entry_function=cfg.entry_function,
        )
        if isinstance(parsed, ParseFailure):
            proposal.failure = parsed.reason
            return None
        proposal.parsed = parsed
        return program_validation_job(parsed, cfg)

    def _accept(
        self, proposal: Proposal, job: Job, result: ExecResult, pp: ProposerPrompt, step: int
    ) -> None:
        """Turn a validated proposal into a task record; ANY non-ok status makes it invalid (the
        original let statuses without the word "error" through, spec §5.2 item 3)."""
        proposal.status = result.status
        if result.status != "ok":
            proposal.failure = f"exec_{result.status}"
            return
        if len(result.outputs) != len(job.inputs):
            proposal.failure = "exec_outputs"
            return
        parsed = proposal.parsed
        if isinstance(parsed, InductionProposal):
            assert pp.program is not None
            proposal.record = induction_record(pp.program, parsed, result.outputs, step=step)
        elif isinstance(parsed, ProgramProposal):
            thought = extract_thought(proposal.text)
            proposal.record = program_record(parsed, result.outputs[0], step=step, thought=thought)

    def _estimate_solve_rates(self, valid: list[Proposal], sampling: SamplingParams) -> None:
        """r̄ = mean accuracy of ``n_learnability_samples`` solver answers (no format
        requirement, only ``<answer>`` extraction). These rollouts are not trained on."""
        n = self.cfg.n_learnability_samples
        probes: list[tuple[Proposal, str]] = []
        for p in valid:
            assert p.record is not None
            prompt = self.solver_prompt(p.task, p.record)
            if self.prompt_fits(prompt):
                probes.append((p, prompt))
            else:
                p.solve_rate, p.solvable = 0.0, False
        groups = self._generate([prompt for _, prompt in probes], sampling, n=n, call=1)
        jobs = [
            [
                self._check_job(p.task, p.record, extract_solver_answer(p.task, first_turn(c.text)))
                for c in cs
            ]
            for (p, _), cs in zip(probes, groups, strict=True)
        ]
        results = self._execute([j for group in jobs for j in group if j is not None])
        for (p, _), group_jobs in zip(probes, jobs, strict=True):
            assert p.record is not None
            record = p.record
            accs = [
                0.0 if j is None else self._accuracy(p.task, results[j.id], record)
                for j in group_jobs
            ]
            p.solve_rate = sum(accs) / n

    # ------------------------------------------------------------------------------- grading

    def _solver_job(self, solve: Solve) -> Job | None:
        """The grading job of a solver answer; None (graded -1, not run) when the format is
        broken or there is no answer to run."""
        if not solve.well_formatted:
            return None
        solve.answer = extract_solver_answer(solve.task, solve.text)
        return self._check_job(solve.task, solve.record, solve.answer)

    def _check_job(
        self, task: TaskType, record: Triplet | InductionTask | None, answer: str | None
    ) -> Job | None:
        if answer is None or record is None:
            return None
        timeout = self.cfg.program_timeout_s
        if isinstance(record, InductionTask):
            return make_job(
                kind="induction",
                program=record.snippet,
                prediction=answer,
                inputs=tuple(record.hidden_inputs),
                expected=tuple(record.hidden_outputs),
                imports=tuple(record.imports),
                timeout_s=timeout,
            )
        return make_job(
            kind="abduction" if task is TaskType.ABDUCTION else "deduction",
            program=record.snippet,
            prediction=answer,
            expected=(record.output,),
            imports=tuple(record.imports),
            timeout_s=timeout,
        )

    def _accuracy(
        self, task: TaskType, result: ExecResult, record: Triplet | InductionTask
    ) -> float:
        """Per-pair verdicts -> accuracy. Induction: binary (all hidden pairs, paper) or the
        matched fraction (``induction_reward: accuracy``); a pair without a verdict is wrong."""
        n_pairs = len(record.hidden_inputs) if isinstance(record, InductionTask) else 1
        hits = sum(bool(m) for m in result.matches[:n_pairs])
        if task is TaskType.INDUCTION and self.cfg.induction_reward == "accuracy":
            return hits / n_pairs
        return 1.0 if hits == n_pairs else 0.0

    # ------------------------------------------------------------------------------- engines

    def _generate(
        self, prompts: Sequence[str], sampling: SamplingParams, n: int, call: int
    ) -> list[list[Completion]]:
        seeds = None if sampling.seed is None else prompt_seeds(sampling.seed, call, len(prompts))
        return generate_checked(self.rollout, prompts, dataclasses.replace(sampling, n=n), seeds)

    def _execute(self, jobs: Sequence[Job]) -> dict[str, ExecResult]:
        return execute_checked(self.executor, jobs)

    # ------------------------------------------------------------------------------- outputs

    def _batches(
        self, proposals: list[Proposal], solves: list[Solve]
    ) -> dict[tuple[TaskType, Role], list[TrainSample]]:
        batches: dict[tuple[TaskType, Role], list[TrainSample]] = {}
        for t in self.task_types:
            role_items: list[tuple[Role, list[Proposal | Solve]]] = [
                (Role.PROPOSE, [p for p in proposals if p.task is t]),
                (Role.SOLVE, [s for s in solves if s.task is t]),
            ]
            for role, items in role_items:
                if role is Role.PROPOSE and not self.cfg.train_propose:
                    # The "solver only" ablation: proposals still happen and are rewarded (for
                    # the buffers and the logs) but are not trained on.
                    batches[(t, role)] = []
                    continue
                advantages = trr_advantages(
                    [i.reward for i in items],
                    [len(i.completion.token_ids) for i in items],
                    self.cfg.advantage_whitening,
                )
                samples = []
                for item, adv in zip(items, advantages, strict=True):
                    item.advantage = adv
                    c = item.completion
                    samples.append(
                        TrainSample(
                            task=t,
                            role=role,
                            prompt_token_ids=list(c.prompt_token_ids),
                            response_token_ids=list(c.token_ids),
                            reward=item.reward,
                            advantage=adv,
                            rollout_logprobs=list(c.logprobs),
                        )
                    )
                batches[(t, role)] = samples
        return batches

    def _metrics(
        self,
        proposals: list[Proposal],
        solves: list[Solve],
        added: dict[TaskType, int],
        sizes_before: dict[TaskType, int],
    ) -> dict[str, float]:
        m: dict[str, float] = {}
        sizes = self.buffers.sizes()

        def mean(xs: Sequence[float]) -> float:
            return sum(xs) / len(xs) if xs else 0.0

        for t in self.task_types:
            ps = [p for p in proposals if p.task is t]
            valid = [p for p in ps if p.valid]
            m[f"{t}/propose/n"] = len(ps)
            m[f"{t}/propose/valid_rate"] = len(valid) / len(ps) if ps else 0.0
            m[f"{t}/propose/format_rate"] = mean([float(p.well_formatted) for p in ps])
            m[f"{t}/propose/reward_mean"] = mean([p.reward for p in ps])
            # Only well-formatted valid proposals get learnability rollouts (a solve rate).
            probed = [p for p in valid if p.well_formatted]
            m[f"{t}/propose/solve_rate_mean"] = mean([p.solve_rate for p in probed])
            m[f"{t}/propose/learnable_rate"] = mean([float(0 < p.solve_rate < 1) for p in probed])
            m[f"{t}/propose/response_len_mean"] = mean([len(p.completion.token_ids) for p in ps])
            for reason, count in Counter(p.failure for p in ps if p.failure).items():
                m[f"{t}/propose/fail/{reason}"] = count / len(ps)
            ss = [s for s in solves if s.task is t]
            m[f"{t}/solve/n"] = len(ss)
            m[f"{t}/solve/accuracy"] = mean([s.accuracy if s.well_formatted else 0.0 for s in ss])
            m[f"{t}/solve/format_rate"] = mean([float(s.well_formatted) for s in ss])
            m[f"{t}/solve/reward_mean"] = mean([s.reward for s in ss])
            m[f"{t}/solve/response_len_mean"] = mean([len(s.completion.token_ids) for s in ss])
            unsolvable = sum(not p.solvable for p in valid)
            m[f"{t}/propose/solver_prompt_too_long"] = unsolvable / len(ps) if ps else 0.0
            m[f"{t}/buffer/added"] = added[t]
            m[f"{t}/buffer/dropped"] = len(valid) - unsolvable - added[t]  # by the cap
            m[f"{t}/buffer/size"] = sizes[t]
            m[f"{t}/buffer/size_before"] = sizes_before[t]
        return m
