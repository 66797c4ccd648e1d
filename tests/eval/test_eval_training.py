"""`eval.every` in a real `azr train` run (tiny model, torch engine, sandboxed executor): the
scores land in metrics.jsonl and the per-problem results in the run directory."""

import json
import subprocess
import sys

import pytest
from integration.tiny_run import FAST, metrics
from processes import ROOT, child_env

pytestmark = [pytest.mark.slow, pytest.mark.sandbox]


def test_training_scores_the_configured_benchmarks_every_n_steps(tmp_path):
    out = tmp_path / "run"
    args = ["--config", "configs/tiny_cpu.yaml", f"run.output_dir={out}", *FAST, "run.steps=3",
            "eval.every=2", "eval.limit=2", "eval.max_tokens=8",
            "eval.benchmarks=[cruxeval-i,cruxeval-o,gsm8k]"]  # fmt: skip
    r = subprocess.run([sys.executable, "-m", "megatron_azr.cli", "train", *args], cwd=ROOT,
                       env=child_env(), capture_output=True, text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    rows = metrics(out, keep_volatile=True)
    evaluated = [row["step"] for row in rows if "eval/cruxeval-i/pass@1" in row]
    assert evaluated == [2]
    row = rows[1]
    for name in ("cruxeval-i", "cruxeval-o", "gsm8k"):
        assert 0.0 <= row[f"eval/{name}/pass@1"] <= 100.0
        saved = json.loads(
            (out / "eval" / "training" / "step_00000002" / f"{name}.json").read_text()
        )
        assert saved["n_problems"] == 2 and saved["template"] == "azr"
        # The policy saw the AZR prompt (R1 template) and was stopped at </answer>.
        assert all(p["prompt"].endswith("Assistant: <think>") for p in saved["problems"])
    assert row["time/eval_s"] > 0 and "time/eval_s" not in rows[0]

    # The run's latest checkpoint, exported to HF once, evaluated by `azr eval --model RUN`.
    cmd = [sys.executable, "-m", "megatron_azr.cli", "eval", "--model", str(out), "--engine",
           "torch", "--benchmark", "gsm8k", "--limit", "2", "--max-tokens", "4"]  # fmt: skip
    r = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    step_dir = out / "eval" / "step_00000003"
    assert (step_dir / "hf" / "config.json").is_file() and (
        step_dir / "hf" / "tokenizer.json"
    ).is_file()
    assert json.loads((step_dir / "summary.json").read_text())["gsm8k"]["n_problems"] == 2
    assert f"| {out.name} step 3 |" in (step_dir / "table.md").read_text()
