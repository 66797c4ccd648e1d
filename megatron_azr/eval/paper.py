"""The paper's reported numbers (greedy pass@1, %), for the tables that put a run beside them.

Sources (spec §12-13): Table 1 (7B models), Table 5 (other sizes and families), Table 2 (the
ablations on AZR-Base-7B). Columns are the paper's: three code benchmarks (HumanEval+, MBPP+,
LiveCodeBench v1-5) and six math ones; CAvg, MAvg and AVG are the paper's own averages.
"""

from __future__ import annotations

import re

CODE_COLUMNS = ("HEval+", "MBPP+", "LCB")
MATH_COLUMNS = ("AIME24", "AIME25", "AMC23", "MATH500", "Minerva", "Olymp.")
COLUMNS = CODE_COLUMNS + MATH_COLUMNS

# Which paper column a benchmark is scored against. HumanEval's base tests stand in for
# HumanEval+ when no HumanEval+ file is given (the table marks it).
PAPER_COLUMN = {
    "humaneval+": "HEval+",
    "humaneval": "HEval+",
    "mbpp+": "MBPP+",
    "livecodebench": "LCB",
    "aime24": "AIME24",
    "aime25": "AIME25",
    "amc23": "AMC23",
    "math500": "MATH500",
    "minerva": "Minerva",
    "olympiadbench": "Olymp.",
}

# model -> the nine per-benchmark numbers in COLUMNS order.
_ROWS: dict[str, tuple[float, ...]] = {
    "Qwen2.5-7B": (73.2, 65.3, 17.5, 6.7, 3.3, 37.5, 64.8, 25.0, 27.7),
    "Qwen2.5-7B-Instruct": (75.0, 68.5, 25.5, 13.3, 6.7, 52.5, 76.4, 35.7, 37.6),
    "Qwen2.5-Coder-7B": (80.5, 69.3, 19.9, 6.7, 3.3, 40.0, 54.0, 17.3, 21.9),
    "Qwen2.5-Math-7B": (61.0, 57.9, 16.2, 10.0, 16.7, 42.5, 64.2, 15.4, 28.0),
    "AZR-Base-7B": (71.3, 69.1, 25.3, 13.3, 13.3, 52.5, 74.4, 38.2, 38.5),
    "AZR-Coder-7B": (83.5, 69.6, 31.7, 20.0, 10.0, 57.5, 72.6, 36.4, 38.2),
    "Llama-3.1-8B": (31.7, 53.7, 0.0, 0.0, 0.0, 2.5, 10.6, 5.5, 2.1),
    "AZR-Llama-3.1-8B": (35.4, 50.8, 8.5, 3.3, 0.0, 5.0, 13.2, 14.0, 5.0),
    "Qwen2.5-Coder-3B": (67.1, 65.9, 20.0, 3.3, 3.3, 20.0, 51.0, 18.4, 16.6),
    "AZR-Coder-3B": (71.3, 69.0, 24.4, 3.3, 3.3, 37.5, 62.0, 26.1, 27.0),
    "Qwen2.5-Coder-14B": (76.8, 71.7, 31.4, 0.0, 0.0, 37.5, 54.8, 10.7, 18.5),
    "AZR-Coder-14B": (80.5, 71.2, 39.0, 23.3, 20.0, 65.0, 78.6, 32.0, 39.3),
    "Qwen2.5-14B": (78.0, 66.7, 21.7, 6.7, 3.3, 35.0, 66.2, 28.3, 32.4),
    "AZR-Base-14B": (70.7, 68.8, 35.2, 10.0, 20.0, 62.5, 76.2, 40.4, 42.5),
}
REPORTED: dict[str, dict[str, float]] = {
    m: dict(zip(COLUMNS, v, strict=True)) for m, v in _ROWS.items()
}

# Paper Table 2 (all on Qwen2.5-7B base): ablation -> (code avg, math avg); overall = mean.
TABLE2: dict[str, tuple[float, float]] = {
    "deduction-only": (54.6, 32.0),
    "no-induction": (54.2, 33.3),
    "no-references": (54.4, 33.1),
    "solver-only": (54.8, 36.0),
    "full": (55.2, 38.4),
}
TABLE2_LABELS = {
    "deduction-only": "Deduction only",
    "no-induction": "w/o induction",
    "no-references": "w/o generation references (K = 0)",
    "solver-only": "Train solver only",
    "full": "Full AZR",
}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9.]", "", name.lower())


_BY_KEY = {_key(m): m for m in REPORTED}
_BY_KEY.update(
    {_key("Qwen2.5-7B-Coder"): "Qwen2.5-Coder-7B", _key("Qwen2.5-7B-Ins"): "Qwen2.5-7B-Instruct"}
)


def match_model(name: str) -> str | None:
    """The paper's row for a model name or path (its last component, case and punctuation
    ignored): ``/models/Qwen2.5-7B`` -> ``Qwen2.5-7B``; None when the paper has no row."""
    last = name.rstrip("/").rsplit("/", 1)[-1]
    return _BY_KEY.get(_key(last))
