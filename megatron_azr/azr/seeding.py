"""Building seed buffers with the model itself, from the identity triplet (spec §3).

No gradient updates: the current policy proposes deduction/abduction tasks conditioned on up to K
references drawn from the seed set built so far (at first only the identity triplet), the executor
validates them as in self-play, and valid, not-yet-seen triplets join the set until it holds
``batch_size * seed_batch_factor`` entries (paper: 256). Induction seeds are then proposed for
programs drawn from that set. Only here are programs cleaned of comments, docstrings and
module-level statements other than imports/definitions (the proposer prompt says so); the
unmodified program is kept as ``original_snippet``.

The result is an ordinary :class:`Buffers` (abduction and deduction identical), or its two lists;
:func:`save_seed_file` writes a list in the official seed-file layout, loadable through
``azr.seed_io_path`` / ``azr.seed_induction_path`` (``megatron_azr.seed`` runs all this with real
engines).
"""

from __future__ import annotations

import functools
import json
import logging
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from megatron_azr.azr.buffers import Buffers, write_jsonl
from megatron_azr.azr.config import AZRConfig
from megatron_azr.azr.parsing import (
    ParseFailure,
    first_turn,
    parse_induction_proposal,
    parse_program_proposal,
)
from megatron_azr.azr.prompts import Wrap, proposer_prompt, r1_wrap
from megatron_azr.azr.protocols import Executor, Generator, Job, TaskType
from megatron_azr.azr.selfplay import (
    ProposerPrompt,
    draw_prompts,
    execute_checked,
    generate_checked,
    induction_record,
    induction_validation_job,
    program_record,
    program_validation_job,
    prompt_seeds,
    sampling_params,
)
from megatron_azr.azr.tasks import (
    InductionTask,
    Triplet,
    identity_induction_task,
    identity_triplet,
)

logger = logging.getLogger(__name__)

R = TypeVar("R", Triplet, InductionTask)


def _key(record: Triplet | InductionTask) -> str:
    return json.dumps(record.to_json(), sort_keys=True)


def official_record(record: Triplet | InductionTask) -> dict[str, Any]:
    """``record`` as the original's seed files hold it: seeds carry no step (they are step 0)
    and the original never stored the proposer's thought."""
    data = record.to_json()
    del data["thought"], data["step"]
    return data


def save_seed_file(path: str | Path, records: Iterable[Triplet | InductionTask]) -> None:
    """Seed records as JSONL in the official layout, atomically (a crash leaves no file)."""
    write_jsonl(path, (official_record(r) for r in records))


class Seeder:
    def __init__(
        self,
        cfg: AZRConfig,
        rollout: Generator,
        executor: Executor,
        *,
        seed: int = 0,
        prompt_fits: Callable[[str], bool] | None = None,
        wrap: Wrap = r1_wrap,
        max_rounds: int = 64,
    ) -> None:
        self.cfg = cfg
        self.rollout = rollout
        self.executor = executor
        self.sampling = sampling_params(cfg)
        self.seed = seed
        self.rng = random.Random(f"megatron-azr/seeding/{seed}")
        self.calls = 0  # generate calls so far: each draws fresh per-prompt seeds
        self.prompt_fits = prompt_fits or (lambda _prompt: True)
        self.wrap = wrap
        self.max_rounds = max_rounds
        self.target = cfg.batch_size * cfg.seed_batch_factor

    def run(self) -> Buffers:
        triplets = self.seed_triplets()
        induction = self.seed_induction(triplets)
        return Buffers.from_seeds(
            triplets, induction, self.cfg.max_buffer_size, self.cfg.buffer_cap_policy
        )

    def _plan(self, draw: Callable[[], ProposerPrompt]) -> list[ProposerPrompt]:
        return draw_prompts(self.cfg.batch_size, draw, self.prompt_fits)

    def _texts(self, prompts: list[str]) -> list[str]:
        self.calls += 1
        seeds = prompt_seeds(self.seed, self.calls, len(prompts))
        groups = generate_checked(self.rollout, prompts, self.sampling, seeds)
        return [first_turn(group[0].text) for group in groups]

    def _grow(self, records: list[R], propose: Callable[[], list[R]], what: str) -> list[R]:
        """Add the not-yet-seen records of ``propose()`` rounds to ``records`` until it holds
        ``target`` of them or ``max_rounds`` rounds have run."""
        seen = {_key(r) for r in records}
        for round_ in range(1, self.max_rounds + 1):
            if len(records) >= self.target:
                break
            for record in propose():
                if _key(record) not in seen:
                    seen.add(_key(record))
                    records.append(record)
            logger.info("seeding round %d: %d/%d %s", round_, len(records), self.target, what)
        if len(records) < self.target:
            logger.warning(
                "seeding stopped after %d rounds with %d/%d %s",
                self.max_rounds,
                len(records),
                self.target,
                what,
            )
        return records[: self.target]

    def seed_triplets(self) -> list[Triplet]:
        cfg = self.cfg
        seeds = [identity_triplet()]
        k = cfg.k_references if cfg.include_references else 0

        def draw(task: TaskType) -> ProposerPrompt:
            refs = self.rng.sample(seeds, min(k, len(seeds)))
            prompt = proposer_prompt(
                task,
                references=refs,
                banned=cfg.banned_imports,
                timeout_s=cfg.program_timeout_s,
                seeding=True,
                empty_reference_section=cfg.empty_reference_section,
                wrap=self.wrap,
            )
            return ProposerPrompt(task, prompt)

        def propose() -> list[Triplet]:
            prompts = [
                pp.prompt
                for task in (TaskType.ABDUCTION, TaskType.DEDUCTION)
                for pp in self._plan(functools.partial(draw, task))
            ]
            parsed = [
                parse_program_proposal(
                    text,
                    reject_multiple_functions=cfg.reject_multiple_functions,
                    entry_function=cfg.entry_function,
                    seeding=True,
                )
                for text in self._texts(prompts)
            ]
            jobs: list[Job | None] = [
                None if isinstance(p, ParseFailure) else program_validation_job(p, cfg)
                for p in parsed
            ]
            results = execute_checked(self.executor, [j for j in jobs if j is not None])
            out = []
            for p, job in zip(parsed, jobs, strict=True):
                if isinstance(p, ParseFailure) or job is None:
                    continue
                result = results[job.id]
                if result.ok and len(result.outputs) == 1:
                    out.append(program_record(p, result.outputs[0]))
            return out

        return self._grow(seeds, propose, "triplets")

    def seed_induction(self, programs: list[Triplet]) -> list[InductionTask]:
        cfg = self.cfg

        def draw() -> ProposerPrompt:
            program = self.rng.choice(programs)
            n = cfg.n_induction_inputs
            prompt = proposer_prompt(
                TaskType.INDUCTION, program=program.snippet, n_inputs=n, wrap=self.wrap
            )
            return ProposerPrompt(TaskType.INDUCTION, prompt, program)

        def propose() -> list[InductionTask]:
            plan = self._plan(draw)
            texts = self._texts([pp.prompt for pp in plan])
            parsed = [parse_induction_proposal(t, cfg.n_induction_inputs) for t in texts]
            jobs: list[Job | None] = [
                None
                if isinstance(p, ParseFailure) or pp.program is None
                else induction_validation_job(pp.program.snippet, p, cfg)
                for p, pp in zip(parsed, plan, strict=True)
            ]
            results = execute_checked(self.executor, [j for j in jobs if j is not None])
            out = []
            for p, job, pp in zip(parsed, jobs, plan, strict=True):
                program = pp.program
                if isinstance(p, ParseFailure) or job is None or program is None:
                    continue
                result = results[job.id]
                if result.ok and len(result.outputs) == len(p.inputs):
                    out.append(induction_record(program, p, result.outputs))
            return out

        return self._grow([identity_induction_task()], propose, "tasks (induction)")
