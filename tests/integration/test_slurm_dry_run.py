"""``AZR_DRY_RUN=1 sbatch slurm/azr_14b.sh``, submitted to a real Slurm (slurm_box.py): the job
prints the plan's memory table, every rank's place and the srun line it would run, and starts
no rank. The 14B script runs as is, with CPUs instead of its 8 GPUs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from slurm_box import SlurmBox, running_box

ROOT = Path(__file__).resolve().parents[2]
# The box has no GPUs: the script's 8 tasks per node get one CPU each.
CPU = ("--gpus-per-node=0", "--cpus-per-task=1")

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    # Two nodes: the script is a heterogeneous job (its second component is the executor farm).
    with running_box(tmp_path_factory.mktemp("slurm"), cpus=8, nodes=2) as box:
        yield box


def dry_run(box: SlurmBox, submit: Path, *overrides: str) -> tuple[int, str, str]:
    """Submit azr_14b.sh with AZR_DRY_RUN=1, wait for it; (exit code, job id, its output)."""
    env = box.env(
        AZR_ROOT=str(ROOT), AZR_PYTHON=sys.executable, PYTHONPATH=str(ROOT), AZR_DRY_RUN="1"
    )
    r = subprocess.run(
        ["sbatch", "--parsable", "--wait", *CPU, str(ROOT / "slurm" / "azr_14b.sh"), *overrides],
        cwd=submit, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    job_id = r.stdout.split(";")[0].strip()
    assert job_id, r.stderr
    return r.returncode, job_id, (submit / f"azr-14b-{job_id}.out").read_text()


def test_dry_run_prints_the_plan_ranks_and_srun_line_and_starts_nothing(box, tmp_path):
    weights = tmp_path / "Qwen2.5-Coder-14B"  # the preflight checks only that it exists
    weights.mkdir()
    rc, job_id, out = dry_run(
        box, tmp_path, f"model.path={weights}", "rollout.tensor_parallel_size=4"
    )
    assert rc == 0, out
    assert "azr preflight: azr-coder-14b: 8 tasks = tp 4 x pp 1 x dp 2" in out
    assert re.search(rf"^azr dry run: node 0 = ({'|'.join(box.nodes)})$", out, re.M), out
    assert "layout: tp 4 (given) x pp 1 (given) x dp 2" in out
    assert "rollout: vLLM tp 4 (given) x 2 replicas, shard path" in out
    ranks = re.findall(r"^rank (\d+): node 0 local (\d+); actor tp (\d) pp 0 dp (\d); "
                       r"vLLM replica (\d) tp (\d)$", out, re.M)  # fmt: skip
    assert [tuple(map(int, r)) for r in ranks] == [
        (r, r, r % 4, r // 4, r // 4, r % 4) for r in range(8)
    ]
    [farm] = re.findall(
        r"^azr dry run: farm on 1 node\(s\): env .* srun --het-group=1 .*$", out, re.M
    )
    assert (
        "executor serve" in farm and not (tmp_path / "runs" / f"azr-14b-{job_id}" / "farm").exists()
    )
    [srun] = re.findall(r"^azr dry run: srun --label .*$", out, re.M)
    assert "--label --kill-on-bad-exit=1 --cpus-per-task=1 " in srun
    assert f"-m megatron_azr.cli train --config configs/azr_14b.yaml model.path={weights}" in srun
    run_dir = tmp_path / "runs" / f"azr-14b-{job_id}"
    assert f"run.output_dir={run_dir}" in srun
    assert re.search(r"^fits: yes \d+\.\d/79\.1$", out, re.M)
    assert not (run_dir / "logs").exists()  # no rank started


def test_dry_run_of_a_layout_that_does_not_fit_fails_the_job(box, tmp_path):
    rc, _, out = dry_run(box, tmp_path, f"model.path={tmp_path}", "parallel.tp=2",
                      "rollout.tensor_parallel_size=2")  # fmt: skip
    assert rc == 1, out
    assert re.search(r"^refused: generate phase needs [\d.]+ GiB per GPU", out, re.M)
    assert re.search(r"^fits: no [\d.]+/79\.1$", out, re.M)
    assert "azr dry run: srun " in out  # the line is still shown
