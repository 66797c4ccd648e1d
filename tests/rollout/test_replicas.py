"""How ``ReplicatedRollout`` (trainer.py) moves completions between ranks: replicas split the
prompts and all-gather; one replica spanning all ranks (a TP engine) gathers nothing."""

import json
import subprocess
from pathlib import Path

import pytest
from processes import child_env, torchrun_cmd

WORKER = Path(__file__).with_name("replicas_worker.py")


def _run(tmp_path: Path, tp: int) -> list[list[str]]:
    cmd = [*torchrun_cmd(2), str(WORKER), str(tmp_path), str(tp)]
    r = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]


@pytest.mark.slow
def test_two_replicas_split_the_prompts_and_share_the_completions(tmp_path):
    rank0, rank1 = _run(tmp_path, tp=1)
    assert rank0 == rank1 == ["a@0", "b@1", "c@0"]


@pytest.mark.slow
def test_one_replica_gathers_nothing(tmp_path):
    """Every rank of a TP-2 engine generated all prompts itself: each keeps its own outputs
    (an all-gather would have handed rank 1 the outputs of rank 0)."""
    rank0, rank1 = _run(tmp_path, tp=2)
    assert rank0 == ["a@0", "b@0", "c@0"] and rank1 == ["a@1", "b@1", "c@1"]
