"""The results table in the paper's layout: per-benchmark pass@1, code average, math average,
overall = (code + math) / 2, with the paper's numbers for the same base model beside them.

Averages cover the paper's benchmarks that were run (the paper's are over all nine); the paper's
row is averaged over the same columns so that the two rows compare like with like. GSM8K and
CRUXEval are not in the paper's table: they get columns but stay out of the averages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import mean

from megatron_azr.eval.paper import CODE_COLUMNS, COLUMNS, MATH_COLUMNS, PAPER_COLUMN, REPORTED


def averages(scores: Mapping[str, float]) -> dict[str, float]:
    """Code avg, math avg and overall of per-column scores (paper column names)."""
    out: dict[str, float] = {}
    code = [scores[c] for c in CODE_COLUMNS if c in scores]
    maths = [scores[c] for c in MATH_COLUMNS if c in scores]
    if code:
        out["Code avg"] = mean(code)
    if maths:
        out["Math avg"] = mean(maths)
    if code or maths:
        out["Overall"] = mean(out[k] for k in ("Code avg", "Math avg") if k in out)
    return out


def by_column(pass1: Mapping[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """Benchmark pass@1 -> (paper columns, extra columns). HumanEval+ wins over HumanEval."""
    cols: dict[str, float] = {}
    extra: dict[str, float] = {}
    for name, value in pass1.items():
        col = PAPER_COLUMN.get(name)
        if col is None:
            extra[name] = value
        elif col not in cols or name == "humaneval+":
            cols[col] = value
    return cols, extra


def render(
    pass1: Mapping[str, float], label: str, paper_model: str | None, titles: Mapping[str, str]
) -> str:
    """Markdown: this run's row and, when the paper has the model, the paper's row."""
    cols, extra = by_column(pass1)
    shown = [c for c in COLUMNS if c in cols]
    extras = list(extra)
    header = [*shown, *(titles.get(e, e) for e in extras), "Code avg", "Math avg", "Overall"]
    lines = [
        "| model | " + " | ".join(header) + " |",
        "|---|" + "---|" * len(header),
        _row(label, cols, extra, shown, extras),
    ]
    notes = []
    if paper_model is not None:
        reported = REPORTED[paper_model]
        paper_cols = {c: reported[c] for c in shown}
        lines.append(_row(f"paper: {paper_model}", paper_cols, {}, shown, extras))
        full = averages(reported)
        notes.append(
            f"Averages are over the columns shown; the paper's own for {paper_model} (all nine "
            f"benchmarks): code {full['Code avg']:.1f}, math {full['Math avg']:.1f}, "
            f"overall {full['Overall']:.1f}."
        )
    if "humaneval" in pass1 and "humaneval+" not in pass1:
        notes.append("HEval+ column: HumanEval's base tests (no HumanEval+ file was given).")
    return "\n".join(lines + (["", *notes] if notes else [])) + "\n"


def _row(
    label: str,
    cols: Mapping[str, float],
    extra: Mapping[str, float],
    shown: Sequence[str],
    extras: Sequence[str],
) -> str:
    avg = averages(cols)
    cells = [_cell(cols.get(c)) for c in shown] + [_cell(extra.get(e)) for e in extras]
    cells += [_cell(avg.get(k)) for k in ("Code avg", "Math avg", "Overall")]
    return f"| {label} | " + " | ".join(cells) + " |"


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"
