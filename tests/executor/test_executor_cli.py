"""``azr executor check | doctor | bench`` as a user runs them (real subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from executor_helpers import ROOT, azr, require_sandbox

pytestmark = pytest.mark.sandbox


def test_registration_stays_light():
    heavy = "('torch', 'megatron', 'vllm')"
    code = ("import sys, megatron_azr.cli as c; c.build_parser(); "
            f"print(sorted(m for m in {heavy} if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)  # fmt: skip
    assert out.stdout.strip() == "[]"


def test_check_records(tmp_path: Path):
    require_sandbox()
    records = [
        {"code": "def f(x):\n    return x * 2", "input": "21", "output": "42"},
        {"snippet": "def f(x):\n    return {'b': x, 'a': 1}", "input": "2",
         "output": "{'a': 1, 'b': 2}"},  # value equality, not text
        {"program": "def f(x):\n    return x", "input": "1", "output": "2"},
        {"program": "def f(x):\n    return x + 1", "input": "1"},  # no output: just run
        {"snippet": "def f(a):\n    return a", "inputs": ["1", "'x'"], "outputs": ["1", "'x'"]},
        {"code": "def f(x):\n    raise ValueError('no')", "input": "1", "output": "1"},
        {"input": "1"},
    ]  # fmt: skip
    lines = [json.dumps(r) for r in records] + ["{not json"]
    data = tmp_path / "records.jsonl"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "results.jsonl"
    done = azr("check", str(data), "--out", str(out))
    assert done.returncode == 1, done.stderr  # some records failed: a script can tell
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in results] == list(range(8))
    assert [r["status"] for r in results] == ["ok"] * 5 + ["error", "invalid", "invalid"]
    assert [r.get("match") for r in results[:6]] == [True, True, False, None, True, False]
    assert results[3]["output"] == "2" and results[4]["outputs"] == ["1", "'x'"]
    assert results[5]["error_type"] == "ValueError"
    assert results[6]["error_type"] == results[7]["error_type"] == "BadRecord"
    assert "reproduced 3/5 recorded outputs" in done.stderr


def test_check_validate_to_stdout(tmp_path: Path):
    require_sandbox()
    data = tmp_path / "proposals.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [
        {"snippet": "import random\ndef f(x):\n    return x", "input": "1"},
        {"snippet": "def f(x):\n    return list(set(x))", "input": repr(list("abcdefghi"))},
        {"snippet": "def f(x):\n    return sorted(x)", "input": "[3, 1]", "output": "[1, 3]"},
    ]) + "\n")  # fmt: skip
    done = azr("check", str(data), "executor.timeout_s=5", "--validate")  # overrides: after FILE
    assert done.returncode == 1, done.stderr  # two proposals are invalid
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["status"], r.get("error_type")) for r in results] == [
        ("invalid", "BannedImport"), ("invalid", "NonDeterministic"), ("ok", None)]  # fmt: skip
    assert results[2]["match"] is True


def test_check_exit_status_says_whether_every_record_passed(tmp_path: Path):
    require_sandbox()
    data = tmp_path / "good.jsonl"
    data.write_text(
        json.dumps({"code": "def f(x):\n    return x * 2", "input": "2", "output": "4"})
    )
    done = azr("check", str(data))
    assert done.returncode == 0, done.stderr
    data.write_text(
        json.dumps({"code": "def f(x):\n    return x * 2", "input": "2", "output": "5"})
    )
    assert azr("check", str(data)).returncode == 1  # ran, but did not reproduce its output


def test_check_of_a_missing_file_is_one_line(tmp_path: Path):
    done = azr("check", str(tmp_path / "nope.jsonl"))
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == f"azr executor: cannot read {tmp_path}/nope.jsonl: No such file or directory"
    )


def test_doctor_verifies_every_layer():
    require_sandbox()
    done = azr("doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    for layer in ("unprivileged uid", "no network", "seccomp", "rlimits", "read-only", "packages"):
        assert layer in done.stdout
    assert "│ NO" not in done.stdout and done.stdout.count("│ yes │") == 8
    assert "import numpy" in done.stdout and "import sympy" in done.stdout


def test_doctor_refuses_when_unconfined_is_not_allowed():
    done = azr("doctor", "executor.bwrap=/nonexistent/bwrap")
    assert done.returncode == 2 and "refused" in done.stdout


def test_bench_prints_both_sides_and_the_ratio():
    require_sandbox()
    done = azr("bench", "--limit", "48", "--batch", "16", "--latency-samples", "5",
               "--workloads", "run")  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    table = [line for line in lines if line.startswith("| ")]
    assert any(line.startswith("| original") for line in table)
    assert any(line.startswith("| sandboxed") for line in table)
    assert all(line.split("|")[-2].strip() == "48" for line in table[1:])  # all reproduced
    assert lines[-1].startswith("ratio: ") and float(lines[-1].split()[1]) > 0
    [floor] = [line for line in lines if line.startswith("floor: ")]
    assert float(floor.split(": ")[-1].split()[0]) > 0
