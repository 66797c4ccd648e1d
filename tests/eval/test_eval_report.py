"""`azr report`: figures and tables from run directories (metrics.jsonl as the trainer writes
it, `azr eval` summaries), and the paper's Table 2 layout for an ablation array."""

import json
import subprocess
import sys

from processes import ROOT, child_env

from megatron_azr.eval.paper import TABLE2
from megatron_azr.eval.report import expand, final_table, table2

TASKS = ("abduction", "deduction", "induction")


def _run_dir(path, steps, offset=0.0, evals=None):
    """A run directory as the trainer leaves it: one metrics row per step."""
    path.mkdir(parents=True)
    rows = []
    for step in range(1, steps + 1):
        row = {"step": step, "time": 0.0, "time/rollout_s": 2.0, "time/update_s": 1.0,
               "time/reshard_s": 0.1, "time/step_s": 3.2}  # fmt: skip
        row["actor/entropy"] = 1 - 0.1 * step
        for t in TASKS:
            row[f"{t}/propose/valid_rate"] = min(1.0, offset + 0.1 * step)
            row[f"{t}/solve/accuracy"] = 0.05 * step
            row[f"{t}/propose/reward_mean"] = 0.1 * step - 0.5
            row[f"{t}/solve/reward_mean"] = 0.1 * step - 1
        if step % 2 == 0:
            row["eval/cruxeval-i/pass@1"] = 10.0 * step + offset
            row["time/eval_s"] = 0.5
            row["time/step_s"] += 0.5
        rows.append(row)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if evals is not None:
        d = path / "eval" / f"step_{steps:08d}"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({b: {"pass@1": v} for b, v in evals.items()}))
    return path


def azr_report(*args):
    cmd = [sys.executable, "-m", "megatron_azr.cli", "report", *args]
    r = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_report_of_two_runs_writes_figures_and_the_final_table(tmp_path):
    a = _run_dir(tmp_path / "a", 4)
    b = _run_dir(tmp_path / "b", 6, offset=0.2)
    out = tmp_path / "report"
    azr_report(str(a), str(b), "--out", str(out))
    for name in ("rewards", "rates", "eval", "step_time"):
        png = (out / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000, name
    table = (out / "final.md").read_text().splitlines()
    assert table[0].startswith("| run | steps | abduction/propose/valid_rate |")
    assert "eval/cruxeval-i/pass@1" in table[0]
    assert table[2].startswith("| a | 4 | 0.4 |") and table[2].endswith(
        "| 3.5 |"
    )  # 3.2, 3.7 alternate
    assert table[3].startswith("| b | 6 | 0.8 |")


def test_chosen_metrics_by_key_or_prefix(tmp_path):
    a = _run_dir(tmp_path / "a", 3)
    out = tmp_path / "r"
    r = azr_report(str(a), "--out", str(out), "--metrics", "actor/entropy", "eval")
    assert (out / "metrics.png").is_file() and not (out / "rewards.png").exists()
    assert "metrics.png" in r.stdout


def test_an_ablation_array_gets_the_papers_table_2(tmp_path):
    array = tmp_path / "azr-table2-123"
    scores = {"humaneval": 60.0, "mbpp+": 50.0, "math500": 40.0, "aime24": 10.0}
    _run_dir(array / "full", 4, evals=scores)
    _run_dir(array / "deduction-only", 4)  # not evaluated yet
    runs, is_array = expand([array])
    assert is_array and [r.name for r in runs] == ["deduction-only", "full"]
    text = table2(runs)
    rows = {line.split(" | ")[1]: line for line in text.splitlines() if line.startswith("| ")}
    paper_code, paper_math = TABLE2["full"]
    assert rows["full"] == (
        f"| Full AZR | full | 55.0 | 25.0 | 40.0 | {paper_code:.1f} | {paper_math:.1f} | "
        f"{(paper_code + paper_math) / 2:.1f} |"
    )
    assert rows["deduction-only"].startswith("| Deduction only | deduction-only | – | – | – |")
    assert "No benchmark scores yet for: deduction-only" in text
    azr_report(str(array))
    assert (array / "report" / "table2.md").read_text() == text


def test_a_resumed_run_that_logged_a_step_twice_counts_it_once(tmp_path):
    a = _run_dir(tmp_path / "a", 2)
    with (a / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"step": 2, "time/step_s": 9.0}) + "\n")
    [run], _ = expand([a])
    assert [r["step"] for r in run.rows] == [1, 2]
    assert final_table([run]).splitlines()[2].endswith("| 6.1 |")  # (3.2 + 9.0) / 2
