"""`azr train` under faults, with the real components on the tiny model: a damaged newest
checkpoint, a kill in the middle of a save, SIGKILL (what a scheduler or the OOM killer sends)
and a failure on rank 0 of a two-rank run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from processes import ROOT, child_env, torchrun_cmd
from tiny_run import azr_train, metrics, train_cmd

pytestmark = pytest.mark.slow


def start_train(out: Path, *overrides: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        train_cmd(out, *overrides),
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def wait_for(condition, proc: subprocess.Popen[str], timeout: float = 300, poll: float = 0.005):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, "the run ended before the moment the test waits for"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(poll)


def buffers(out: Path, step: int) -> dict[str, str]:
    d = out / "checkpoints" / f"step_{step:08d}" / "buffers"
    return {p.name: p.read_text() for p in sorted(d.glob("*.jsonl"))}


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted 3-step run: what every interrupted run must end up equal to."""
    out = tmp_path_factory.mktemp("straight") / "run"
    azr_train(out, "run.steps=3")
    return out


def test_damaged_newest_checkpoint_resumes_from_the_one_before(tmp_path, straight):
    out = tmp_path / "run"
    azr_train(out, "run.steps=2")
    assert (out / "config.yaml").is_file()  # every run records its resolved config
    shard = max((out / "checkpoints/step_00000002/actor/dist").glob("*.distcp"),
                key=lambda p: p.stat().st_size)  # fmt: skip
    size = shard.stat().st_size
    os.truncate(shard, size // 2)

    resumed = azr_train(out, "run.steps=3")
    rel = shard.relative_to(out / "checkpoints/step_00000002")
    assert f"step_00000002: {rel} has {size // 2} bytes, {size} were written" in resumed.stderr
    log = (out / "logs" / "rank0.log").read_text()
    assert "resumed from" in log and "step_00000001 at step 1" in log
    # Steps 2 and 3 replayed exactly; the damaged checkpoint was replaced.
    assert metrics(out)[-2:] == metrics(straight)[-2:]
    assert buffers(out, 3) == buffers(straight, 3)
    assert (out / "checkpoints" / "latest").read_text() == "step_00000003"


def test_killed_during_a_save_resumes_from_the_previous_checkpoint(tmp_path, straight):
    out = tmp_path / "run"
    proc = start_train(out, "run.steps=3")
    staging = out / "checkpoints" / ".step_00000002.tmp"
    wait_for(staging.exists, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    root = out / "checkpoints"
    assert (root / "latest").read_text() == "step_00000001"
    assert not (root / "step_00000002").exists()

    azr_train(out, "run.steps=3")
    assert buffers(out, 3) == buffers(straight, 3)
    assert metrics(out)[-1] == metrics(straight)[-1]
    assert not staging.exists() and sorted(p.name for p in root.iterdir()) == [
        "latest", "step_00000002", "step_00000003"
    ]  # fmt: skip


def descendants(pid: int) -> dict[int, str]:
    """pid -> command line of every live process below ``pid``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = cmdline(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigkill_of_the_trainer_leaves_no_process_behind(tmp_path):
    out = tmp_path / "run"
    # wandb on (offline) too: its service is one of the processes a run starts.
    proc = start_train(out, "run.steps=50", "logging.wandb_mode=offline")
    wait_for((out / "checkpoints" / "latest").exists, proc, poll=0.2)  # a save has run
    started = descendants(proc.pid)
    assert started, "the trainer runs the sandbox's workers at least"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 20
    while any(alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = {p: c for p, c in started.items() if alive(p)}
    assert survivors == {}


def two_ranks(cmd: list[str]) -> tuple[subprocess.CompletedProcess[str], float]:
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), env["PYTHONPATH"]])
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return done, time.monotonic() - t0


def test_executor_failing_on_rank_0_ends_every_rank_with_its_error(tmp_path):
    # A package the sandbox cannot expose: the pool on rank 0 refuses to start.
    packages = "executor.packages=[numpy,no-such-distribution]"
    done, seconds = two_ranks(train_cmd(tmp_path, packages, nproc=2))
    assert done.returncode != 0
    assert seconds < 240
    rank1 = (tmp_path / "logs" / "rank1.log").read_text()
    assert "rank 0 failed: SandboxUnavailable: executor.packages: no-such-distribution" in rank1


def test_rollout_engine_failing_on_rank_0_ends_every_rank_with_its_error(tmp_path):
    script = Path(__file__).with_name("failing_engine.py")
    done, seconds = two_ranks([*torchrun_cmd(2), str(script), str(tmp_path)])
    assert done.returncode != 0
    assert seconds < 240
    rank1 = (tmp_path / "logs" / "rank1.log").read_text()
    assert "rank 0 failed: RuntimeError: rollout engine failed on purpose" in rank1
