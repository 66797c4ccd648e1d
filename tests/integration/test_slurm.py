"""The sbatch scripts of slurm/, submitted to a real Slurm (controller + node daemon started by
the test, see slurm_box.py): what cluster users run, with CPU resources instead of GPUs.

- slurm/azr_tiny_cpu.sh (the launch code of azr_14b.sh): two srun tasks form one TP=2 group,
  train, log per rank, write metrics and a checkpoint; the job's second component, on another
  node, is the executor farm that the trainer's executor jobs go to over HTTP;
- a new job pointed at that run directory resumes it; SIGUSR1 (what Slurm sends before the time
  limit) makes the job requeue itself, and the requeued job resumes from checkpoints/latest and
  replays the steps after it exactly;
- slurm/azr_ablation.sh as a two-task array over configs/ablations/table2.txt;
- a bad model path stops the job in its preflight, before any rank starts.
"""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from slurm_box import SlurmBox, running_box
from tiny_run import FAST, VOLATILE, metrics

ROOT = Path(__file__).resolve().parents[2]
WANDB = "logging.wandb_mode=offline"  # where a run's jobs are checked to share one wandb run
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="session")
def box(tmp_path_factory):
    # Two nodes: heterogeneous jobs (trainer + executor farm) need two.
    with running_box(tmp_path_factory.mktemp("slurm"), nodes=2) as box:
        yield box


@pytest.fixture(scope="module")
def submit_dir(tmp_path_factory):
    """Where jobs are submitted from, as a user would from their checkout: the default run
    directories and job outputs land here (the checkout itself is found through AZR_ROOT)."""
    return tmp_path_factory.mktemp("submit")


def sbatch(
    box: SlurmBox,
    submit_dir: Path,
    script: str,
    *args: str,
    options: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    wait: bool = True,
    timeout: float = 240,
) -> tuple[str, int]:
    """Submit ``script`` from ``submit_dir``; with ``wait``, block until the job (every task of
    an array) ends. Returns the job id and sbatch's exit code (the job's with ``wait``)."""
    defaults = {"AZR_ROOT": str(ROOT), "AZR_PYTHON": sys.executable, "PYTHONPATH": str(ROOT),
                "OMP_NUM_THREADS": "1"}  # fmt: skip
    job_env = box.env(**{**defaults, **(env or {})})
    cmd = ["sbatch", "--parsable", *options, *(["--wait"] if wait else []), str(ROOT / script)]
    proc = subprocess.Popen(
        [*cmd, *args], cwd=submit_dir, env=job_env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        job_id = out.split()[0].split(";")[0] if out.split() else "?"
        pytest.fail(f"{script} did not end in {timeout:.0f} s\n{job_output(submit_dir, job_id)}")
    if not out.split():
        pytest.fail(f"sbatch refused {script}: {err}")
    return out.split()[0].split(";")[0], proc.returncode


def job_output(submit_dir: Path, job_id: str) -> str:
    files = sorted([*submit_dir.glob(f"*-{job_id}.out"), *submit_dir.glob(f"*-{job_id}_*.out")])
    return "\n".join(f"--- {f.name}\n{f.read_text()[-6000:]}" for f in files)


def wait_state(box: SlurmBox, job_id: str, submit_dir: Path, cond, timeout: float, what: str):
    def check() -> bool:
        job = box.job(job_id)
        if cond(job):
            return True
        if job["JobState"] in DONE:
            pytest.fail(f"job {job_id} ended ({job['JobState']}) before {what}\n"
                        + job_output(submit_dir, job_id))  # fmt: skip
        return False

    try:
        box.wait_for(check, timeout, what)
    except TimeoutError as e:
        pytest.fail(f"{e}\n{job_output(submit_dir, job_id)}")
    return box.job(job_id)


def latest(out: Path) -> str | None:
    pointer = out / "checkpoints" / "latest"
    return pointer.read_text() if pointer.is_file() else None


@pytest.fixture(scope="module")
def first_run(box, submit_dir):
    job_id, rc = sbatch(box, submit_dir, "slurm/azr_tiny_cpu.sh", "run.steps=1", *FAST, WANDB)
    assert rc == 0, job_output(submit_dir, job_id)
    return job_id, submit_dir / "runs" / f"azr-tiny-cpu-{job_id}"


def test_tiny_cpu_job_trains_on_two_tasks(first_run, submit_dir):
    job_id, out = first_run
    for rank in (0, 1):
        log = (out / "logs" / f"rank{rank}.log").read_text()
        assert f"[rank {rank}]" in log and "step 1:" in log
    assert [row["step"] for row in metrics(out, keep_volatile=True)] == [1]
    assert latest(out) == "step_00000001"
    assert (out / "checkpoints" / "step_00000001" / "trainer_state.json").is_file()
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["parallel"]["tp"] == 2 and recorded["run"]["output_dir"] == str(out)
    slurm_out = (submit_dir / f"azr-tiny-cpu-{job_id}.out").read_text()
    assert "azr preflight: tiny-cpu: 2 tasks = tp 2 x pp 1 x dp 1" in slurm_out
    # The job verifies on its farm component: the preflight leaves the sandbox to the farm's
    # nodes (tests/test_slurm_scripts.py checks it on a host that runs the pool itself).
    assert "azr preflight: sandbox: on the executor farm's nodes" in slurm_out
    assert re.search(r"^1: .*\[rank 1\]", slurm_out, re.M)  # srun --label: task 1's stream


@pytest.fixture(scope="module")
def farm_run(box, submit_dir):
    """The tiny job whose ranks train with the scripted policy (scripted_python.sh as
    AZR_PYTHON): a random tiny model writes no task, so its steps would give the farm nothing
    to check. Everything else is the shipped script and launch."""
    scripted = {"AZR_PYTHON": str(ROOT / "tests" / "integration" / "scripted_python.sh"),
                "AZR_TEST_PYTHON": sys.executable}  # fmt: skip
    seeds = submit_dir / "farm-seeds"  # no seed files: the policy writes its own (spec §3)
    seeds.mkdir()
    job_id, rc = sbatch(
        box, submit_dir, "slurm/azr_tiny_cpu.sh", "run.steps=1", "azr.batch_size=2",
        "azr.n_learnability_samples=2", "azr.max_response_tokens=400", "run.name=farm",
        f"azr.seed_io_path={seeds}/io.jsonl", f"azr.seed_induction_path={seeds}/code_f.jsonl",
        "logging.wandb_mode=disabled", env=scripted, timeout=400,
    )  # fmt: skip
    assert rc == 0, job_output(submit_dir, job_id)
    return job_id, submit_dir / "runs" / f"azr-tiny-cpu-{job_id}"


def test_tiny_cpu_job_verifies_on_its_farm_component_over_http(farm_run, submit_dir):
    job_id, out = farm_run
    slurm_out = (submit_dir / f"azr-tiny-cpu-{job_id}.out").read_text()
    trainer_nodes = re.search(r"^azr: job \S+ \(restart 0\) on (\S+),", slurm_out, re.M)[1]
    farm = re.search(r"^azr: executor farm: 1 servers on (\S+), (http://\S+)", slurm_out, re.M)
    assert farm is not None, slurm_out[-3000:]
    assert farm[1] != trainer_nodes  # the two components ran on different nodes
    assert stat.S_IMODE((out / "farm" / "token").stat().st_mode) == 0o600
    recorded = yaml.safe_load((out / "config.yaml").read_text())["executor"]
    assert recorded["rendezvous"] == str(out / "farm")
    [serve_log] = (out / "farm").glob("serve-*.out")
    assert serve_log.name == f"serve-{farm[1]}.out"
    assert f"azr executor serve: {farm[2]}/v1/run" in serve_log.read_text()
    assert "drained, stopped" in serve_log.read_text()  # SIGTERM at the job's end: a drain
    assert not list((out / "farm").glob("server-*.json"))  # it left the rendezvous

    # Every job the trainer sent was answered by the farm, and counted there once.
    log = (out / "logs" / "rank0.log").read_text()
    sent = [int(n) for n in re.findall(r"executor farm: (\d+) jobs answered by 1 servers", log)]
    assert sent and sum(sent) > 0
    [final] = (out / "farm").glob("metrics-*.prom")
    families = {f.name: f for f in text_string_to_metric_families(final.read_text())}
    counted = {tuple(sorted(s.labels.items())): s.value
               for s in families["azr_farm_jobs"].samples}  # fmt: skip
    assert sum(counted.values()) == sum(sent)
    assert {dict(k)["kind"] for k in counted} >= {"validate"}
    requests = {s.labels["code"]: s.value for s in families["azr_farm_requests"].samples}
    answered = [s.value for s in families["azr_farm_request_seconds"].samples
                if s.name.endswith("_count")]  # fmt: skip
    assert requests == {"200": answered[0]}  # nothing refused, every request timed
    [row] = metrics(out)
    assert row["step"] == 1
    for task in ("abduction", "deduction", "induction"):
        assert row[f"{task}/propose/valid_rate"] == 1.0  # validated in the farm's sandbox


def test_resubmitted_run_resumes_and_requeues_itself_on_sigusr1(box, first_run, submit_dir):
    _, out = first_run
    job_id, rc = sbatch(
        box, submit_dir, "slurm/azr_tiny_cpu.sh", "run.steps=4", *FAST, WANDB,
        env={"AZR_OUTPUT_DIR": str(out)}, wait=False,
    )  # fmt: skip
    assert rc == 0
    # A new job on the same directory continues at step 2; once step 2 is checkpointed, the
    # signal Slurm sends before the time limit (--signal=B:USR1@...) requeues the job.
    wait_state(box, job_id, submit_dir, lambda _: latest(out) == "step_00000002", 180, "step 2")
    box.run("scancel", "--batch", "--signal=USR1", job_id)
    job = wait_state(
        box, job_id, submit_dir,
        lambda j: j["JobState"] == "COMPLETED" and int(j["Restarts"]) >= 1,
        240, "the requeued job to complete",
    )  # fmt: skip
    assert job["ExitCode"] == "0:0" and job["Restarts"] == "1"
    slurm_out = (submit_dir / f"azr-tiny-cpu-{job_id}.out").read_text()
    assert "SIGUSR1 (time limit near): requeueing" in slurm_out
    assert f"job {job_id} (restart 1)" in slurm_out  # --open-mode=append kept both runs

    for rank in (0, 1):
        log = (out / "logs" / f"rank{rank}.log").read_text()
        resumed = [int(s) for s in re.findall(r"resumed from \S+/step_\d+ at step (\d+)", log)]
        assert resumed[0] == 1 and resumed[1] >= 2 and len(resumed) == 2, log[-3000:]
    rows = metrics(out, keep_volatile=True)
    assert {r["step"] for r in rows} == {1, 2, 3, 4}
    # Steps logged before the requeue and again after it are replays: identical but timings.
    seen: dict[int, dict] = {}
    for row in rows:
        row = {k: v for k, v in row.items() if not k.startswith(VOLATILE)}
        assert seen.setdefault(row["step"], row) == row
    assert latest(out) == "step_00000004"
    # Three jobs (first run, resubmission, requeue), one wandb run id.
    wandb_runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 3 and len({p.name.rsplit("-", 1)[1] for p in wandb_runs}) == 1
    kept = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert kept == ["step_00000003", "step_00000004"]  # run.keep_checkpoints = 2


def test_ablation_array_runs_each_entry_in_its_own_directory(box, submit_dir):
    # The cluster script as is; CPU resources instead of its 4 GPUs, the tiny config as base.
    cpu = ("--array=0-1", "--ntasks-per-node=1", "--cpus-per-task=1", "--gpus-per-node=0")
    job_id, rc = sbatch(
        box, submit_dir, "slurm/azr_ablation.sh", "run.steps=1", *FAST,
        options=(*cpu, "--mem=0"), env={"AZR_CONFIG": "configs/tiny_cpu.yaml"},
    )  # fmt: skip
    assert rc == 0, job_output(submit_dir, job_id)
    base = submit_dir / "runs" / f"azr-table2-{job_id}"
    assert sorted(p.name for p in base.iterdir()) == ["deduction-only", "full"]
    entries = {"full": {"abduction", "deduction", "induction"}, "deduction-only": {"deduction"}}
    for name, types in entries.items():
        out = base / name
        cfg = yaml.safe_load((out / "config.yaml").read_text())
        assert set(cfg["azr"]["task_types"]) == types
        assert cfg["run"]["name"] == f"azr-table2-{name}"
        [row] = metrics(out, keep_volatile=True)
        assert {k.split("/")[0] for k in row if k.endswith("valid_rate")} == types
        assert latest(out) == "step_00000001"


def test_bad_model_path_stops_the_job_before_any_rank_starts(box, submit_dir):
    # The job ends in seconds; sbatch --wait polls at growing intervals (up to 32 s).
    job_id, rc = sbatch(
        box, submit_dir, "slurm/azr_tiny_cpu.sh", "model.path=/nonexistent/Qwen", timeout=120
    )
    assert rc == 2
    slurm_out = (submit_dir / f"azr-tiny-cpu-{job_id}.out").read_text()
    assert "azr preflight: error: model.path /nonexistent/Qwen does not exist" in slurm_out
    assert not (submit_dir / "runs" / f"azr-tiny-cpu-{job_id}" / "logs").exists()
