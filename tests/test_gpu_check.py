"""scripts/gpu_check.sh off a GPU: one clear line, status 0, nothing run (on a GPU machine the
script itself is the check; see README "Checking the GPU paths")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a Python that imports torch, in a subprocess
@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script runs every check")
def test_gpu_check_without_cuda_says_so_and_runs_nothing(tmp_path):
    logs = tmp_path / "logs"
    env = {**os.environ, "AZR_PYTHON": sys.executable, "AZR_CHECK_DIR": str(logs)}
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"gpu_check: no CUDA GPU visible to {sys.executable}")
    assert "nothing run" in r.stdout and not r.stderr
    assert not logs.exists()
