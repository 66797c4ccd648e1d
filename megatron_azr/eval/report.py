"""``azr report``: runs side by side, from what they wrote (``metrics.jsonl``, ``azr eval``
results under ``<run>/eval/step_<N>/``).

Writes PNG figures (one panel per metric, one line per run, step on the x axis): rewards and
valid/solve rates per task type, training-time eval scores, and each run's step time split into
its phases; a markdown table of each run's final numbers; and, for an ablation array's directory
(``slurm/azr_ablation.sh`` writes one run per entry under it), the paper's Table 2 layout with
the paper's numbers beside the run's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

from megatron_azr.eval.paper import TABLE2, TABLE2_LABELS
from megatron_azr.eval.table import averages, by_column

TASKS = ("abduction", "deduction", "induction")
PHASES = ("rollout", "update", "reshard", "eval")
# The standard figures: file name -> (title, metric keys).
FIGURES: dict[str, tuple[str, list[str]]] = {
    "rewards": (
        "Mean reward per task type and role",
        [f"{t}/{role}/reward_mean" for role in ("propose", "solve") for t in TASKS],
    ),
    "rates": (
        "Valid proposals and solve accuracy per task type",
        [f"{t}/propose/valid_rate" for t in TASKS] + [f"{t}/solve/accuracy" for t in TASKS],
    ),
}
FINAL_COLUMNS = [
    *(f"{t}/propose/valid_rate" for t in TASKS),
    *(f"{t}/solve/accuracy" for t in TASKS),
    *(f"{t}/solve/reward_mean" for t in TASKS),
    "actor/entropy",
]


@dataclass
class Run:
    name: str
    path: Path
    rows: list[dict[str, float]]  # one per step, in step order

    def series(self, key: str) -> tuple[list[int], list[float]]:
        points = [(int(r["step"]), float(r[key])) for r in self.rows if _is_number(r.get(key))]
        return [s for s, _ in points], [v for _, v in points]

    def last(self, key: str) -> float | None:
        values = self.series(key)[1]
        return values[-1] if values else None

    def metric_keys(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.rows:
            seen.update(dict.fromkeys(k for k, v in r.items() if _is_number(v)))
        return list(seen)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_run(path: Path, name: str | None = None) -> Run:
    log = path / "metrics.jsonl"
    if not log.is_file():
        raise FileNotFoundError(f"{path} has no metrics.jsonl (not a run directory)")
    by_step: dict[int, dict[str, float]] = {}
    for line in log.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_step[int(row["step"])] = row  # a resumed run may log a step again: the last wins
    return Run(name or path.name, path, [by_step[s] for s in sorted(by_step)])


def expand(paths: Sequence[Path]) -> tuple[list[Run], bool]:
    """Runs, and whether they are one ablation array (a directory whose subdirectories are
    runs, as ``slurm/azr_ablation.sh`` lays them out)."""
    if len(paths) == 1 and not (paths[0] / "metrics.jsonl").is_file():
        subs = sorted(p for p in paths[0].iterdir() if (p / "metrics.jsonl").is_file())
        if not subs:
            raise FileNotFoundError(f"{paths[0]} holds neither metrics.jsonl nor runs")
        return [load_run(p) for p in subs], True
    runs = [load_run(p) for p in paths]
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = f"{r.path.parent.name}/{r.path.name}"
    return runs, False


# ------------------------------------------------------------------------------ figures


def _grid(n: int) -> tuple[int, int]:
    cols = min(3, n)
    return math.ceil(n / cols), cols


def plot_metrics(runs: Sequence[Run], keys: Sequence[str], title: str, path: Path) -> Path | None:
    """One panel per key that some run logged; None when no run has any of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(r.series(k)[0] for r in runs)]
    if not keys:
        return None
    nrows, ncols = _grid(len(keys))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.6 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for i, run in enumerate(runs):
            steps, values = run.series(key)
            if steps:
                ax.plot(steps, values, label=run.name, **_style(i, len(steps)))
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(key.rsplit("/", 1)[-1])
        ax.grid(alpha=0.3)
        _step_ticks(ax, sorted({s for r in runs for s in r.series(key)[0]}))
        if key.endswith(("_rate", "/accuracy")):
            ax.set_ylim(-0.05, 1.05)
        elif "/pass@" in key:
            ax.set_ylim(-2, 102)
            ax.set_ylabel(key.rsplit("/", 1)[-1] + " (%)")
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    legend: dict[str, Any] = {}
    for ax in axes.flat:
        legend.update(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    legend = {r.name: legend[r.name] for r in runs if r.name in legend}  # in run order
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=min(4, len(legend)),
               frameon=False)  # fmt: skip
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06 if nrows > 1 else 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _style(i: int, n_points: int) -> dict[str, Any]:
    """Run i's colour, dash and marker, the same in every panel; equal curves of two runs stay
    visible one over the other."""
    return dict(
        color=f"C{i % 10}",
        linestyle=("-", "--", ":", "-.")[i % 4],
        marker=("o", "s", "^", "D", "v")[i % 5] if n_points < 30 else None,
        markersize=5 - (i % 3),
        alpha=0.85,
    )


def plot_step_time(runs: Sequence[Run], path: Path) -> Path | None:
    """Per run, each step's wall time stacked by phase (rollout, update, reshard, eval)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in runs if r.series("time/step_s")[0]]
    if not runs:
        return None
    nrows, ncols = _grid(len(runs))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.6 * nrows), squeeze=False)
    for ax, run in zip(axes.flat, runs, strict=False):
        steps = [int(r["step"]) for r in run.rows]
        bottom = [0.0] * len(steps)
        for phase in PHASES:
            values = [float(r.get(f"time/{phase}_s", 0.0)) for r in run.rows]
            if any(values):
                ax.bar(steps, values, bottom=bottom, label=phase)
                bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        other = [
            float(r.get("time/step_s", 0.0)) - b for r, b in zip(run.rows, bottom, strict=True)
        ]
        if any(
            o > 0.05 * max(1e-9, float(r.get("time/step_s", 0)))
            for o, r in zip(other, run.rows, strict=True)
        ):
            ax.bar(steps, [max(0.0, o) for o in other], bottom=bottom, label="other")
        ax.set_title(f"{run.name}: time per step", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("seconds")
        ax.legend(fontsize=8)
        _step_ticks(ax, steps)
    for ax in list(axes.flat)[len(runs) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _step_ticks(ax: Any, steps: Sequence[int]) -> None:
    """Whole steps on the x axis: every step when there are few, else integer ticks."""
    if len(steps) <= 20:
        ax.set_xticks(list(steps))
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)


# ------------------------------------------------------------------------------ tables


def final_table(runs: Sequence[Run]) -> str:
    """Markdown: each run's last logged value of the standard columns and of its eval scores,
    and its mean step time."""
    evals = sorted({k for r in runs for k in r.metric_keys() if k.startswith("eval/")})
    columns = [c for c in FINAL_COLUMNS + evals if any(r.last(c) is not None for r in runs)]
    header = ["run", "steps", *columns, "mean step s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in runs:
        step_times = r.series("time/step_s")[1]
        cells = [r.name, str(int(r.rows[-1]["step"])) if r.rows else "0"]
        cells += ["–" if r.last(c) is None else f"{r.last(c):.3g}" for c in columns]
        cells.append(f"{mean(step_times):.1f}" if step_times else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def eval_scores(run: Run) -> dict[str, float]:
    """Benchmark -> pass@1: the latest ``azr eval`` of the run (``eval/step_<N>/summary.json``),
    over the last training-time scores for benchmarks it does not have."""
    scores = {
        key.split("/")[1]: value
        for key in run.metric_keys()
        if key.startswith("eval/") and key.endswith("/pass@1")
        for value in [run.last(key)]
        if value is not None
    }
    summaries = sorted((run.path / "eval").glob("step_*/summary.json"))
    if summaries:
        latest = json.loads(summaries[-1].read_text())
        scores.update({b: float(v["pass@1"]) for b, v in latest.items() if "pass@1" in v})
    return scores


def table2(runs: Sequence[Run]) -> str:
    """The paper's Table 2 layout: one row per ablation, code / math / overall averages, the
    paper's numbers beside (entries named as in configs/ablations/table2.txt)."""
    header = ["variant", "run", "Code avg", "Math avg", "Overall"]
    header += ["paper Code", "paper Math", "paper Overall"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = {name: i for i, name in enumerate(TABLE2)}
    missing = []
    for run in sorted(runs, key=lambda r: (order.get(r.name, len(order)), r.name)):
        cols, _ = by_column(eval_scores(run))
        ours = averages(cols)
        if not ours:
            missing.append(run.name)
        paper = TABLE2.get(run.name)
        paper_cells = ["–"] * 3 if paper is None else [f"{paper[0]:.1f}", f"{paper[1]:.1f}",
                                                       f"{mean(paper):.1f}"]  # fmt: skip
        cells = [TABLE2_LABELS.get(run.name, run.name), run.name]
        cells += [_cell(ours.get(k)) for k in ("Code avg", "Math avg", "Overall")] + paper_cells
        lines.append("| " + " | ".join(cells) + " |")
    notes = ["", "Averages over the paper's benchmarks that were scored (paper: all nine)."]
    if missing:
        notes.append("No benchmark scores yet for: " + ", ".join(missing)
                     + " (run `azr eval --model <run dir>` on each).")  # fmt: skip
    return "\n".join(lines + notes) + "\n"


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


# ------------------------------------------------------------------------------ entry point


def report(
    paths: Sequence[Path], out: str | Path | None, metrics: Sequence[str] | None
) -> list[Path]:
    runs, array = expand(paths)
    if out is None:
        out = (
            paths[0] / "report"
            if len(paths) == 1
            else Path("runs") / "reports" / "-vs-".join(r.name for r in runs)
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path | None] = []
    if metrics:
        keys = [k for m in metrics for k in _matching(runs, m)]
        written.append(plot_metrics(runs, keys, "Chosen metrics", out / "metrics.png"))
    else:
        for name, (title, keys) in FIGURES.items():
            written.append(plot_metrics(runs, keys, title, out / f"{name}.png"))
        evals = sorted({k for r in runs for k in r.metric_keys() if k.startswith("eval/")})
        written.append(plot_metrics(runs, evals, "Evaluation during training", out / "eval.png"))
        written.append(plot_step_time(runs, out / "step_time.png"))
    (out / "final.md").write_text(final_table(runs))
    written.append(out / "final.md")
    if array:
        (out / "table2.md").write_text(table2(runs))
        written.append(out / "table2.md")
    return [p for p in written if p is not None]


def _matching(runs: Sequence[Run], pattern: str) -> list[str]:
    """A key, or every key under a prefix (``abduction/`` or ``eval``)."""
    keys = sorted({k for r in runs for k in r.metric_keys()})
    if pattern in keys:
        return [pattern]
    prefix = pattern.rstrip("/") + "/"
    return [k for k in keys if k.startswith(prefix)]
