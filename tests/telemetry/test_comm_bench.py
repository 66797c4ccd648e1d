"""`azr comm-bench` on 2 gloo ranks under torchrun, over the groups of a TP=2 layout."""

import json
import subprocess

import pytest
from processes import ROOT, child_env, torchrun_cmd

from megatron_azr.telemetry import comm

pytestmark = pytest.mark.slow


def test_comm_bench_prints_nccl_tests_columns_per_group_and_op(tmp_path):
    out = tmp_path / "bench.json"
    args = ["parallel.tp=2", "-b", "1K", "-e", "16K", "-f", "4", "-n", "3", "-w", "1"]
    cmd = [*torchrun_cmd(2), "-m", "megatron_azr.cli", "comm-bench", *args, "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    for op in ("all_reduce", "all_gather", "reduce_scatter", "broadcast"):
        assert f"# {op} over tp (2 ranks), gloo, float32, 3 iters" in r.stdout
    assert "over dp" not in r.stdout and "over pp" not in r.stdout  # one rank each: skipped
    assert "size (B)" in r.stdout and "busbw GB/s" in r.stdout
    rows = json.loads(out.read_text())["results"]
    groups = {(x["group"], x["ranks"]) for x in rows}
    assert groups == {("tp", 2), ("mp", 2), ("world", 2)}
    assert sorted({x["bytes"] for x in rows}) == [1024, 4096, 16384]
    for x in rows:
        assert x["time_s"] > 0
        assert x["algbw"] == pytest.approx(x["bytes"] / x["time_s"] / 1e9)
        assert x["busbw"] == pytest.approx(x["algbw"] * comm.bus_factor(x["op"], 2))
