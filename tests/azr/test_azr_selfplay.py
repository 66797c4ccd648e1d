"""The self-play step driven by a scripted policy and an in-process grader (see azr_scripted)."""

import itertools
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from azr_scripted import (
    DOUBLE,
    DOUBLE_F,
    IDENTITY,
    TRIPLE,
    InProcessExecutor,
    ScriptedRollout,
    answer,
    completion,
    fence,
    prompt_blocks,
    prompt_kind,
    true_solution,
)

from megatron_azr.azr.buffers import Buffers
from megatron_azr.azr.config import AZRConfig
from megatron_azr.azr.protocols import ExecResult, Job, Role, TaskType
from megatron_azr.azr.selfplay import EngineContractError, SelfPlayStep
from megatron_azr.azr.tasks import InductionTask, Triplet, identity_induction_task

ROOT = Path(__file__).resolve().parents[2]
ABD, DED, IND = TaskType.ABDUCTION, TaskType.DEDUCTION, TaskType.INDUCTION

WRONG = {
    "solve_abduction": fence("input", "'wrong'"),
    "solve_deduction": fence("output", "'wrong'"),
    "solve_induction": fence("python", "def f(a):\n    return None"),
}
# Solver samples i < quota are right: n = 4 learnability samples give these solve rates.
QUOTA = {IDENTITY: 4, DOUBLE_F: 2, TRIPLE: 0, "Echo.": 1, "Triples.": 4}


def program_answer(code: str, inp: str) -> str:
    return answer(fence("python", code) + "\n" + fence("input", inp))


def induction_answer(inputs: list[str]) -> Callable[[str], str]:
    def respond(prompt: str) -> str:
        program = next(iter(prompt_blocks(prompt).values()))
        message = "Triples." if "x * 3" in program else "Echo."
        return answer("\n".join(fence("input", i) for i in inputs) + fence("message", message))

    return respond


PROPOSALS: dict[str, list[str | Callable[[str], str]]] = {
    "propose_abduction": [
        program_answer(DOUBLE, "3"),  # valid, solved 2/4 -> 0.5
        "I give up",  # no <answer>
        program_answer("def f(x):\n    return x / 0", "1"),  # raises
        "hmm <answer>" + fence("python", IDENTITY) + fence("input", "'abc'") + "</answer>",
    ],
    "propose_deduction": [
        program_answer(IDENTITY, "[1, 2]"),  # valid, solved 4/4 -> zero reward
        program_answer("def g(x):\n    return x\ndef f(x):\n    return g(x)", "1"),
        program_answer("import random\ndef f(x):\n    return x", "1"),  # banned import
        program_answer(DOUBLE, "5"),  # valid, 0.5
    ],
    "propose_induction": [
        induction_answer(["1", "2", "3", "4"]),
        induction_answer(["1", "2", "3"]),  # too few
        induction_answer(["oops(", "5", "6", "7", "8"]),  # last 4 are used
        induction_answer(["1", "2", "3", "1 +"]),  # one input does not run
    ],
}


class Policy:
    """Canned proposals in order per prompt kind; solver samples i < QUOTA[task] are right."""

    def __init__(self, quota: dict[str, int] | None = None) -> None:
        self.quota = QUOTA if quota is None else quota
        self.counters: Counter[str] = Counter()

    def __call__(self, prompt: str, i: int) -> str:
        kind = prompt_kind(prompt)
        if kind.startswith("propose"):
            options = PROPOSALS[kind]
            item = options[self.counters[kind] % len(options)]
            self.counters[kind] += 1
            return item(prompt) if callable(item) else item
        blocks = prompt_blocks(prompt)
        key = blocks["message"] if kind == "solve_induction" else blocks["python"]
        return answer(true_solution(prompt) if i < self.quota.get(key, 0) else WRONG[kind])


def seed_buffers() -> Buffers:
    ident = identity_induction_task()
    echo = InductionTask(IDENTITY, ident.inputs, ident.outputs, "Echo.")
    seeds = [Triplet(IDENTITY, '"Hello world"', "'Hello world'"), Triplet(TRIPLE, "2", "6")]
    return Buffers.from_seeds(seeds, [echo], max_size=100)


def make_step(**overrides):
    cfg = AZRConfig(
        batch_size=4, k_references=2, n_induction_inputs=4, n_learnability_samples=4, **overrides
    )
    rollout, executor = ScriptedRollout(Policy()), InProcessExecutor()
    step = SelfPlayStep(cfg, seed_buffers(), rollout, executor, seed=3)
    return step, rollout, executor


def by_task(items, task):
    return [x for x in items if x.task is task]


def test_one_step_end_to_end():
    step, rollout, executor = make_step()
    result = step.run(1)

    # Two generate calls: all proposer + solver prompts (n=1), then learnability (n=4).
    assert [(len(p), s.n) for p, s in rollout.calls] == [(24, 1), (5, 4)]
    assert len(executor.batches) == 2

    abd, ded, ind = (by_task(result.proposals, t) for t in (ABD, DED, IND))
    assert [p.failure for p in abd] == [None, "no_answer", "exec_error", None]
    assert [p.reward for p in abd] == [0.5, -1.0, -1.0, -1.0]  # last: valid but unformatted
    # The unformatted valid proposal is not worth learnability rollouts: its reward is -1.
    assert [p.solve_rate for p in abd] == [0.5, 0.0, 0.0, 0.0]
    assert [p.failure for p in ded] == [None, "multiple_functions", "exec_invalid", None]
    assert [p.reward for p in ded] == [-0.5, -1.0, -1.0, 0.5]
    assert [p.failure for p in ind] == [None, "too_few_inputs", None, "exec_error"]
    for p in (ind[0], ind[2]):
        assert isinstance(p.record, InductionTask)
        echo = p.record.snippet == IDENTITY
        assert p.record.message == ("Echo." if echo else "Triples.")
        assert p.reward == (0.75 if echo else -0.5)
    assert ind[2].record.inputs == ["5", "6", "7", "8"]
    assert ind[2].record.outputs == (
        ["5", "6", "7", "8"] if ind[2].record.snippet == IDENTITY else ["15", "18", "21", "24"]
    )

    # Valid proposals (formatted or not) joined their buffers, tagged with the step.
    added = step.buffers.abduction.entries[2:]
    assert [(t.snippet, t.input, t.output, t.step) for t in added] == [
        (DOUBLE_F, "3", "6", 1),
        (IDENTITY, "'abc'", "'abc'", 1),
    ]
    assert [(t.input, t.output) for t in step.buffers.deduction.entries[2:]] == [
        ("[1, 2]", "[1, 2]"),
        ("5", "10"),
    ]
    assert len(step.buffers.induction) == 3

    # Solvers: right on the identity seeds, wrong on the triple seed; induction 1/1.
    for task in (ABD, DED):
        solves = by_task(result.solves, task)
        assert len(solves) == 4 and {s.record.snippet for s in solves} == {IDENTITY, TRIPLE}
        assert [s.reward for s in solves] == [
            1.0 if s.record.snippet == IDENTITY else -0.5 for s in solves
        ]
    assert [s.reward for s in by_task(result.solves, IND)] == [1.0] * 4

    # Six sub-batches of TrainSamples carrying the completions and the TRR++ advantages.
    assert set(result.batches) == {(t, r) for t in TaskType for r in Role}
    for (task, role), samples in result.batches.items():
        items = by_task(result.proposals if role is Role.PROPOSE else result.solves, task)
        assert len(samples) == 4
        for sample, item in zip(samples, items, strict=True):
            assert sample.task is task and sample.role is role
            assert sample.response_token_ids == list(item.completion.text.encode())
            assert sample.rollout_logprobs == [-0.25] * len(sample.response_token_ids)
            assert sample.reward == item.reward and sample.advantage == item.advantage
        lengths = [len(s.response_token_ids) for s in samples]
        weighted = sum(s.advantage * n for s, n in zip(samples, lengths, strict=True))
        assert weighted == pytest.approx(0.0, abs=1e-9)
        if len({s.reward for s in samples}) == 1:
            assert all(s.advantage == 0.0 for s in samples)
        else:
            best = max(samples, key=lambda s: s.reward)
            assert best.advantage > 0
    assert len(result.samples()) == 24

    m = result.metrics
    assert m["abduction/propose/valid_rate"] == 0.5 and m["deduction/propose/valid_rate"] == 0.5
    assert m["abduction/propose/format_rate"] == 0.5  # no answer, no </think>
    assert m["abduction/propose/fail/no_answer"] == 0.25
    assert m["induction/solve/accuracy"] == 1.0 and m["induction/buffer/size"] == 3
    assert m["deduction/buffer/added"] == 2 and m["deduction/buffer/size_before"] == 2


def test_solve_rate_metrics_cover_only_probed_proposals():
    """A valid but unformatted proposal gets no learnability rollouts: it has no solve rate to
    average (abduction: one probed at 0.5, one unformatted; deduction: 1.0 and 0.5)."""
    m = make_step()[0].run(1).metrics
    assert m["abduction/propose/solve_rate_mean"] == 0.5
    assert m["abduction/propose/learnable_rate"] == 1.0
    assert m["deduction/propose/solve_rate_mean"] == 0.75
    assert m["deduction/propose/learnable_rate"] == 0.5


def test_buffer_records_keep_the_proposers_thought():
    """Spec §1.2: deduction/abduction entries store the text inside <think> (never trained on)."""
    step, _, _ = make_step()
    step.run(1)
    added = step.buffers.deduction.entries[2:]
    assert [t.thought for t in added] == ["thinking", "thinking"]
    assert [t.thought for t in step.buffers.deduction.entries[:2]] == ["", ""]  # seeds had none


def test_executor_jobs_are_deduplicated_and_well_formed():
    step, _, executor = make_step()
    step.run(1)
    for batch in executor.batches:
        assert len({j.id for j in batch}) == len(batch)
    validations = [j for j in executor.batches[0] if j.kind == "validate"]
    assert len(validations) == 9
    banned = tuple(step.cfg.banned_imports)
    assert all(j.banned_imports == banned for j in validations if len(j.inputs) == 1)
    assert all(j.banned_imports == () for j in validations if len(j.inputs) == 4)
    assert all(j.timeout_s == 10.0 for j in executor.jobs)
    # Learnability: 4 samples of the DOUBLE abduction task hold 2 distinct answers -> 2 jobs.
    learn = executor.batches[1]
    assert sum(j.kind == "abduction" and j.program == DOUBLE_F for j in learn) == 2
    ind_jobs = [j for j in executor.jobs if j.kind == "induction"]
    assert ind_jobs and all(len(j.inputs) == len(j.expected) for j in ind_jobs)


def test_second_step_solves_last_steps_proposals_first():
    step, _, _ = make_step()
    step.run(1)
    # The induction proposer's pool now holds the programs proposed at step 1 too.
    assert len(step.buffers.programs()) == 8
    result = step.run(2)
    for task in (ABD, DED):
        solves = by_task(result.solves, task)
        assert [s.record.step for s in solves] == [1, 1, 0, 0]
    ind = by_task(result.solves, IND)
    assert [s.record.step for s in ind][:2] == [1, 1]


def test_same_seed_same_batches_other_seed_other_batches():
    cfg = AZRConfig(
        batch_size=8,
        seed_io_path="data/azr_seeds/7b_coder_seed_io.jsonl",
        seed_induction_path="data/azr_seeds/7b_coder_code_f_seed_io.jsonl",
    )

    def run(seed: int):
        rollout = ScriptedRollout(lambda prompt, i: "no answer")
        step = SelfPlayStep(
            cfg, Buffers.from_config(cfg, ROOT), rollout, InProcessExecutor(), seed=seed
        )
        result = step.run(1)
        return rollout.calls[0][0], result.metrics

    prompts_a, metrics_a = run(7)
    prompts_b, metrics_b = run(7)
    assert prompts_a == prompts_b and metrics_a == metrics_b and len(prompts_a) == 48
    assert run(8)[0] != prompts_a


def test_zero_reward_switch():
    step, _, _ = make_step(proposer_zero_reward=0.0)
    result = step.run(1)
    assert [p.reward for p in by_task(result.proposals, DED)] == [0.0, -1.0, -1.0, 0.5]


def test_solver_only_ablation_and_no_references():
    step, rollout, _ = make_step(train_propose=False, include_references=False)
    result = step.run(1)
    for task in TaskType:
        assert result.batches[(task, Role.PROPOSE)] == []
        assert len(result.batches[(task, Role.SOLVE)]) == 4
    # Proposals still happen and still grow the buffers.
    assert (
        result.metrics["abduction/propose/valid_rate"] == 0.5 and len(step.buffers.abduction) == 4
    )
    proposer_prompts = [p for p in rollout.calls[0][0] if prompt_kind(p).startswith("propose")]
    assert proposer_prompts and not any("<snippet_" in p for p in proposer_prompts)


@pytest.mark.parametrize("status", ["timeout", "killed", "memory", "invalid", "error"])
def test_any_non_ok_validation_status_is_invalid(status):
    step, _, executor = make_step()
    executor.override = {"# twice the input": status}
    result = step.run(1)
    abd = by_task(result.proposals, ABD)
    assert abd[0].failure == f"exec_{status}" and abd[0].reward == -1.0 and not abd[0].valid
    assert all(t.snippet != DOUBLE_F for t in step.buffers.abduction)


def test_prompt_length_filter():
    def fits(prompt: str) -> bool:
        too_long_solver = "Predict the Output" in prompt and "```input\n5\n```" in prompt
        return not too_long_solver and not ("Find an Input" in prompt and TRIPLE in prompt)

    step, rollout, _ = make_step()
    step.prompt_fits = fits
    result = step.run(1)
    assert all(fits(p) for prompts, _ in rollout.calls for p in prompts)
    # The DOUBLE deduction task (input 5) is valid, but its solver prompt is too long: rate 0.
    ded = by_task(result.proposals, DED)
    assert ded[3].valid and ded[3].solve_rate == 0.0 and ded[3].reward == -0.5
    assert [s.record.snippet for s in by_task(result.solves, ABD)] == [IDENTITY] * 4
    # ... and no solver could ever be shown it, so it stays out of the buffer.
    assert not ded[3].solvable and ded[0].solvable
    assert [t.input for t in step.buffers.deduction if t.step == 1] == ["[1, 2]"]
    assert result.metrics["deduction/buffer/added"] == 1


def test_induction_accuracy_reward():
    half = "def f(a):\n    return a if isinstance(a, str) else None"  # 1 of 3 hidden pairs

    def policy(prompt: str, i: int) -> str:
        if prompt_kind(prompt) == "solve_induction":
            return answer(fence("python", half))
        return "no answer"

    for mode, reward in (("binary", -0.5), ("accuracy", pytest.approx(1 / 3))):
        cfg = AZRConfig(batch_size=2, task_types=["induction"], induction_reward=mode)
        step = SelfPlayStep(cfg, seed_buffers(), ScriptedRollout(policy), InProcessExecutor())
        result = step.run(1)
        assert [s.reward for s in result.solves] == [reward, reward]
        assert set(result.batches) == {(IND, Role.PROPOSE), (IND, Role.SOLVE)}


def test_solver_format_errors_are_not_run():
    def policy(prompt: str, i: int) -> str:
        kind = prompt_kind(prompt)
        if kind == "solve_deduction":
            return "no closing think <answer>" + fence("output", "'Hello world'") + "</answer>"
        if kind == "solve_induction":
            return answer("def f(a): return a")  # no code fence
        return "nothing"

    cfg = AZRConfig(batch_size=2, task_types=["deduction", "induction"])
    executor = InProcessExecutor()
    step = SelfPlayStep(cfg, seed_buffers(), ScriptedRollout(policy), executor)
    result = step.run(1)
    assert [s.reward for s in result.solves] == [-1.0] * 4
    assert executor.jobs == []
    assert result.metrics["induction/solve/format_rate"] == 0.0


def test_empty_buffers_do_not_crash():
    cfg = AZRConfig(batch_size=3)
    buffers = Buffers.from_seeds([], [], max_size=10)
    rollout = ScriptedRollout(Policy())
    result = SelfPlayStep(cfg, buffers, rollout, InProcessExecutor()).run(1)
    assert [len(result.batches[(t, Role.SOLVE)]) for t in TaskType] == [0, 0, 0]
    assert len(result.batches[(IND, Role.PROPOSE)]) == 0
    # Abduction/deduction proposers still work from the empty prompt (K = min(K, 0)).
    assert len(result.batches[(ABD, Role.PROPOSE)]) == 3
    assert len(buffers.abduction) == 1 and len(buffers.deduction) == 1


class ShortRollout(ScriptedRollout):
    def generate(self, prompts, sampling, seeds=None):
        return super().generate(prompts, sampling, seeds)[:-1]


class WrongIdExecutor(InProcessExecutor):
    def run(self, jobs):
        return [ExecResult("other", "ok") for _ in jobs]


def test_engine_contract_violations_are_loud():
    cfg = AZRConfig(batch_size=2)
    with pytest.raises(EngineContractError, match="completions"):
        SelfPlayStep(cfg, seed_buffers(), ShortRollout(Policy()), InProcessExecutor()).run(1)
    with pytest.raises(EngineContractError, match="missing ids"):
        SelfPlayStep(cfg, seed_buffers(), ScriptedRollout(Policy()), WrongIdExecutor()).run(1)


def test_job_ids_are_content_hashes():
    from megatron_azr.azr.selfplay import job_id

    a = Job(id="", kind="deduction", program="p", prediction="1", expected=("1",))
    b = Job(id="x", kind="deduction", program="p", prediction="1", expected=("1",))
    c = Job(id="", kind="deduction", program="p", prediction="2", expected=("1",))
    assert job_id(a) == job_id(b) != job_id(c) and job_id(a).startswith("deduction-")


class SeededRollout:
    """Sample ``j`` of prompt ``i`` gets the seed ``seeds[i] + j`` (or ``sampling.seed + j``
    without per-prompt seeds), as the real engines do."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int]] = []

    def generate(self, prompts, sampling, seeds=None):
        self.calls.append((list(prompts), sampling.n))
        if seeds is None:
            seeds = [sampling.seed if sampling.seed is not None else 0] * len(prompts)
        return [
            [completion(f"{p}@{seed + j}") for j in range(sampling.n)]
            for p, seed in zip(prompts, seeds, strict=True)
        ]


class CategoricalRollout:
    """Samples one token per sample from ``probs`` by inverse CDF of ``Random(seed).random()``,
    the way an engine turns its seeded uniform stream into a token: equal seeds, equal tokens."""

    def __init__(self, probs: list[float]) -> None:
        self.probs = probs

    def _draw(self, seed: int) -> str:
        u, acc = random.Random(seed).random(), 0.0
        for k, p in enumerate(self.probs):
            acc += p
            if u < acc:
                return str(k)
        return str(len(self.probs) - 1)

    def generate(self, prompts, sampling, seeds=None):
        if seeds is None:
            seeds = [sampling.seed] * len(prompts)
        return [[completion(self._draw(s + j)) for j in range(sampling.n)] for s in seeds]


def test_prompts_of_a_step_sample_independently():
    """Different prompts with the same next-token distribution: under one seed per call they
    drew identical tokens (the coupling seen on a real model); with per-prompt seeds the rate
    at which neighbours agree is the independent rate sum(p^2) within a binomial bound."""
    from megatron_azr.azr.protocols import SamplingParams
    from megatron_azr.azr.selfplay import SEED_STRIDE, generate_checked, prompt_seeds

    probs = [0.5, 0.3, 0.2]
    rollout = CategoricalRollout(probs)
    prompts = [f"prompt {i}" for i in range(400)]
    sampling = SamplingParams(n=1, seed=77)

    def agreement(seeds):
        out = [g[0].text for g in generate_checked(rollout, prompts, sampling, seeds)]
        return sum(a == b for a, b in itertools.pairwise(out)) / (len(out) - 1)

    assert agreement(None) == 1.0  # the bug: one stream for every prompt
    expected = sum(p * p for p in probs)
    bound = 4 * (expected * (1 - expected) / (len(prompts) - 1)) ** 0.5
    seeds = prompt_seeds(77, 0, len(prompts))
    assert abs(agreement(seeds) - expected) < bound
    # Disjoint streams (seed + j for j < SEED_STRIDE), also across a step's calls, and the same
    # on a replay.
    streams = [s + j for call in (0, 1) for s in prompt_seeds(77, call, 400) for j in range(64)]
    assert len(set(streams)) == len(streams)
    assert seeds == prompt_seeds(77, 0, len(prompts)) != prompt_seeds(78, 0, 400)
    with pytest.raises(ValueError, match="at most"):
        prompt_seeds(77, 0, SEED_STRIDE + 1)


def test_self_play_sends_per_prompt_seeds():
    step, rollout, _ = make_step()
    step.run(1, rollout_seed=5)
    main, probe = rollout.seeds[0], rollout.seeds[1]
    assert main is not None and probe is not None
    assert len(set(main)) == len(main) and not set(main) & set(probe)
    again, rollout2, _ = make_step()
    again.run(1, rollout_seed=5)
    assert rollout2.seeds[:2] == [main, probe]  # a resumed run replays the same seeds
    unseeded, rollout3, _ = make_step()
    unseeded.run(1)
    assert rollout3.seeds[0] is None


def test_a_second_dialogue_turn_is_cut_before_parsing():
    """A model that writes the dialogue on (``User: ...``, ``Assistant: ...``) is judged on its
    first turn: a right answer in a later turn earns nothing, a right first turn counts."""
    cfg = AZRConfig(batch_size=2, n_learnability_samples=1, task_types=["deduction"])
    later = (
        "ponder\nUser: and?\nAssistant: <think>x</think> <answer>"
        + fence("output", "'Hello world'")
        + "</answer>"
    )
    first = (
        answer(fence("output", "'Hello world'")) + "\nUser: thanks\nAssistant: <answer>x</answer>"
    )
    replies = iter([later, first])

    def respond(prompt: str, i: int) -> str:
        if prompt_kind(prompt).startswith("propose"):
            return "no"
        return next(replies)

    buffers = Buffers.from_seeds([Triplet(IDENTITY, '"Hello world"', "'Hello world'")], [], 10)
    result = SelfPlayStep(cfg, buffers, ScriptedRollout(respond), InProcessExecutor()).run(1)
    solves = by_task(result.solves, DED)
    assert [s.well_formatted for s in solves] == [False, True]
    assert [s.reward for s in solves] == [-1.0, 1.0]
    assert solves[1].answer == "'Hello world'" and solves[1].status == "ok"


def test_copies_of_a_prompt_get_distinct_samples_under_a_seed():
    from megatron_azr.azr.protocols import SamplingParams
    from megatron_azr.azr.selfplay import generate_checked

    rollout = SeededRollout()
    out = generate_checked(rollout, ["a", "b", "a", "c", "a"], SamplingParams(n=2, seed=10))
    texts = [[c.text for c in group] for group in out]
    assert texts == [
        ["a@10", "a@11"],
        ["b@10", "b@11"],
        ["a@12", "a@13"],
        ["c@10", "c@11"],
        ["a@14", "a@15"],
    ]
    # One request per distinct prompt, one call per distinct number of copies.
    assert rollout.calls == [(["b", "c"], 2), (["a"], 6)]

    # Without a seed every sample is drawn afresh: the prompts go as they are, in one call.
    rollout = SeededRollout()
    generate_checked(rollout, ["a", "a"], SamplingParams(n=2))
    assert rollout.calls == [(["a", "a"], 2)]


def test_identity_seed_step_solves_distinct_samples():
    """From a buffer holding only the identity seed, every solver prompt of a sub-batch is the
    same text; under a seed their completions still differ."""
    cfg = AZRConfig(batch_size=4, n_learnability_samples=2)
    rollout = SeededRollout()
    step = SelfPlayStep(cfg, Buffers.from_config(cfg), rollout, InProcessExecutor(), seed=1)
    result = step.run(1, rollout_seed=5)
    for task in (ABD, DED):
        solves = by_task(result.solves, task)
        assert len({s.prompt for s in solves}) == 1
        assert len({s.completion.text for s in solves}) == len(solves) == 4
