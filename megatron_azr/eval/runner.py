"""Generate, grade, score: one benchmark's responses become a :class:`BenchmarkResult`.

Generation goes through any :class:`~megatron_azr.azr.protocols.Generator` (a rollout engine,
or the trainer's leader/replicated wrappers); grading through any
:class:`~megatron_azr.azr.protocols.Executor` (code) and math-verify (math), on the calling
process. pass@k is the unbiased estimator of the HumanEval paper over n samples per problem.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from math import comb
from typing import Any

from megatron_azr.azr.protocols import Executor, Generator, Job, SamplingParams
from megatron_azr.eval import code, math_answers
from megatron_azr.eval.benchmarks import Benchmark, Problem
from megatron_azr.eval.config import EvalConfig
from megatron_azr.eval.prompts import PromptStyle, continues_code, prompt, stops

logger = logging.getLogger(__name__)


@dataclass
class Verdict:
    passed: bool
    answer: str  # what was graded: the extracted answer or program
    detail: str = ""  # why it failed, when the executor says
    base_passed: bool | None = None  # EvalPlus: the base tests alone


@dataclass
class BenchmarkResult:
    benchmark: str
    title: str
    domain: str
    n_problems: int
    n_samples: int
    pass_at: dict[str, float]  # "pass@1" -> percent
    template: str = ""
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)  # e.g. base-tests pass@1 of EvalPlus
    problems: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def pass1(self) -> float:
        return self.pass_at["pass@1"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) passes."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def grade(
    bench: Benchmark,
    problems: Sequence[Problem],
    responses: Sequence[Sequence[str]],
    executor: Executor | None,
    continuation: bool = False,
    tagged: bool = False,
) -> list[list[Verdict]]:
    """One verdict per response of each problem. ``continuation``: the prompts ended inside the
    program (code benchmarks under the plain template); ``tagged``: CRUXEval answers count only
    inside ``<answer>`` (the AZR templates)."""
    if bench.domain == "math":
        return [
            [Verdict(*math_answers.grade(p.answer, r)) for r in rs]
            for p, rs in zip(problems, responses, strict=True)
        ]
    if executor is None:
        raise ValueError(f"{bench.name} needs an executor to run its tests")
    jobs: list[Job | None] = []
    answers: list[str] = []
    for p, rs in zip(problems, responses, strict=True):
        for j, r in enumerate(rs):
            job_id = f"{bench.name}/{p.id}/{j}"
            if bench.domain == "crux":
                answer = code.cruxeval_answer(bench, r, tagged)
                crux = None if answer is None else code.cruxeval_job(job_id, bench, p, answer)
                jobs.append(crux)
                answers.append(answer or "")
            else:
                program = code.extract_program(p, bench, r, continuation)
                jobs.append(code.test_job(job_id, bench, p, program.code) if program.code else None)
                answers.append(program.code)
    runnable = [j for j in jobs if j is not None]
    results = iter(executor.run(runnable))
    flat: list[Verdict] = []
    for job, answer in zip(jobs, answers, strict=True):
        if job is None:
            flat.append(Verdict(False, answer, "no answer found"))
            continue
        res = next(results)
        base = code.base_passed(res) if bench.fmt == "evalplus" else None
        flat.append(Verdict(code.passed(res), answer, code.failure(res), base))
    it = iter(flat)
    return [[next(it) for _ in rs] for rs in responses]


def score(
    bench: Benchmark,
    problems: Sequence[Problem],
    responses: Sequence[Sequence[str]],
    verdicts: Sequence[Sequence[Verdict]],
    ks: Sequence[int],
    template: str = "",
    seconds: float = 0.0,
) -> BenchmarkResult:
    n_samples = min((len(v) for v in verdicts), default=0)
    pass_at = {}
    for k in ks:
        if k <= n_samples:
            per = [pass_at_k(len(v), sum(x.passed for x in v), k) for v in verdicts]
            pass_at[f"pass@{k}"] = 100.0 * sum(per) / max(1, len(per))
    extra = {}
    if bench.fmt == "evalplus":
        per = [pass_at_k(len(v), sum(bool(x.base_passed) for x in v), 1) for v in verdicts]
        extra["base_pass@1"] = 100.0 * sum(per) / max(1, len(per))
    rows = [
        {
            "id": p.id,
            "passed": [x.passed for x in v],
            "answers": [x.answer for x in v],
            "details": [x.detail for x in v],
            "responses": list(rs),
        }
        for p, rs, v in zip(problems, responses, verdicts, strict=True)
    ]
    return BenchmarkResult(
        bench.name, bench.title, bench.domain, len(problems), n_samples, pass_at, template,
        seconds, extra, rows,
    )  # fmt: skip


def evaluate(
    bench: Benchmark,
    problems: Sequence[Problem],
    engine: Generator,
    executor: Executor | None,
    cfg: EvalConfig,
    s: PromptStyle,
) -> BenchmarkResult:
    """Generate ``cfg.n`` responses per problem under the prompt style ``s``, grade, score."""
    t0 = time.perf_counter()
    prompts = [prompt(bench, p, s) for p in problems]
    sampling = SamplingParams(
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_tokens=cfg.max_tokens,
        n=cfg.n,
        stop=stops(bench, s),
    )
    # Sampled evaluation is reproducible per problem whatever else is in the batch.
    seeds = [cfg.seed + i * cfg.n for i in range(len(prompts))] if cfg.temperature > 0 else None
    completions = engine.generate(prompts, sampling, seeds)
    responses = [[c.text for c in cs] for cs in completions]
    verdicts = grade(bench, problems, responses, executor, continues_code(bench, s), s.azr)
    result = score(bench, problems, responses, verdicts, cfg.pass_k, s.template,
                   time.perf_counter() - t0)  # fmt: skip
    for row, p in zip(result.problems, prompts, strict=True):
        row["prompt"] = p
    logger.info("%s: %s over %d problems", bench.title, _fmt(result.pass_at), len(problems))
    return result


def _fmt(pass_at: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.1f}%" for k, v in pass_at.items())
