"""Evaluation during training (the trainer's ``eval.every`` hook).

Runs SPMD like the step itself: every rank calls the engine and the executor (the trainer's
leader/replicated wrappers make those collective and broadcast their results), so every rank
computes the same scores; the leader also writes each benchmark's JSON under
``<run>/eval/training/step_<N>/``. Scores go into the step's metrics as ``eval/<benchmark>/pass@k``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from megatron_azr import atomic
from megatron_azr.azr.prompts import Wrap
from megatron_azr.eval.benchmarks import Benchmark, Problem, resolve
from megatron_azr.eval.config import EvalConfig, Template
from megatron_azr.eval.prompts import style
from megatron_azr.eval.runner import evaluate


class TrainingEval:
    def __init__(
        self,
        cfg: EvalConfig,
        azr_template: str,
        tokenizer: Any,
        wrap: Wrap,
        out: Path | None,
    ) -> None:
        """``azr_template``/``wrap``: the policy's own prompt template (``azr.prompt_template``)
        and its wrapper, which the AZR templates reuse; ``out``: the run directory on the rank
        that writes results (None elsewhere)."""
        self.cfg, self.out = cfg, out
        template: Template = (
            ("azr-chat" if azr_template == "chat" else "azr")
            if cfg.template == "auto"
            else cfg.template
        )
        azr = template in ("azr", "azr-chat")
        self.style = style(template, tokenizer, wrap if azr else None)
        self.benches: list[Benchmark] = (
            [resolve(name) for name in cfg.benchmarks] if cfg.every else []
        )
        self._problems: dict[str, list[Problem]] = {}

    def due(self, step: int) -> bool:
        return self.cfg.every > 0 and step % self.cfg.every == 0

    def run_if_due(self, step: int, engine: Any, executor: Any) -> dict[str, float]:
        """The step's eval metrics ({} when no evaluation is due), ``time/eval_s`` included."""
        if not self.due(step):
            return {}
        t0 = time.perf_counter()
        metrics: dict[str, float] = {}
        engine.wake_up()
        try:
            for bench in self.benches:
                result = evaluate(bench, self._load(bench), engine, executor, self.cfg, self.style)
                for key, value in {**result.pass_at, **result.extra}.items():
                    metrics[f"eval/{bench.name}/{key}"] = value
                if self.out is not None:
                    path = (
                        self.out / "eval" / "training" / f"step_{step:08d}" / f"{bench.name}.json"
                    )
                    path.parent.mkdir(parents=True, exist_ok=True)
                    atomic.write_text(path, json.dumps(result.to_json(), indent=1))
        finally:
            engine.sleep()
        metrics["time/eval_s"] = time.perf_counter() - t0
        return metrics

    def _load(self, bench: Benchmark) -> list[Problem]:
        if bench.name not in self._problems:
            problems = bench.load()
            self._problems[bench.name] = problems[: self.cfg.limit] if self.cfg.limit else problems
        return self._problems[bench.name]
