"""Scoring predictions made elsewhere: one JSON object per line, the benchmark's id field (or
``id``) and ``completion`` (raw model text or a bare answer). Several lines with the same id are
that problem's samples (pass@k); problems without a line are left out of the score and counted."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from megatron_azr.eval.benchmarks import Benchmark, Problem


@dataclass
class Predictions:
    problems: list[Problem]
    responses: list[list[str]]
    missing: int  # benchmark problems without a prediction


def read_predictions(bench: Benchmark, problems: list[Problem], path: str | Path) -> Predictions:
    by_id = {p.id: p for p in problems}
    samples: dict[str, list[str]] = defaultdict(list)
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            key = bench.id_field if bench.id_field in row else "id"
            if not isinstance(row, dict) or key not in row or "completion" not in row:
                raise ValueError(f"{path}:{n}: expected {bench.id_field!r} and 'completion'")
            pid = str(row[key])
            if pid not in by_id:
                raise ValueError(f"{path}:{n}: {bench.title} has no problem {pid!r}")
            samples[pid].append(str(row["completion"]))
    chosen = [p for p in problems if p.id in samples]
    if not chosen:
        raise ValueError(f"{path}: no predictions")
    return Predictions(chosen, [samples[p.id] for p in chosen], len(problems) - len(chosen))
