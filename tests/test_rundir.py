"""The run directory as a start reads it (megatron_azr/rundir.py): which checkpoint a run resumes
from when the newest is damaged, what a resumed run may change, and that checks come before
anything is written. Real files, no model: the trainer's own runs are in
tests/integration/test_faults.py."""

import json
import os
from pathlib import Path

import pytest

from megatron_azr import atomic, rundir
from megatron_azr.config import ConfigError, load_config

TINY = "configs/tiny_cpu.yaml"


def fake_checkpoint(out: Path, step: int) -> Path:
    """A published checkpoint as save_checkpoint lays it out (small files stand for the
    actor's shards), with its manifest, and ``latest`` pointing at it."""
    root = rundir.checkpoint_root(out)
    tmp = root / f".step_{step:08d}.tmp"
    (tmp / "actor" / "dist").mkdir(parents=True)
    (tmp / "actor" / "dist" / "__0_0.distcp").write_bytes(os.urandom(4096))
    (tmp / "actor" / "meta.json").write_text("{}")
    (tmp / "buffers").mkdir()
    (tmp / "buffers" / "deduction.jsonl").write_text('{"x": 1}\n')
    (tmp / rundir.STATE_FILE).write_text(json.dumps({"step": step, "actor_steps": step}))
    rundir.write_manifest(tmp)
    final = root / f"step_{step:08d}"
    atomic.replace_dir(tmp, final)
    atomic.write_text(root / rundir.LATEST, final.name)
    return final


@pytest.fixture
def out(tmp_path: Path) -> Path:
    for step in (1, 2, 3):
        fake_checkpoint(tmp_path, step)
    return tmp_path


def test_latest_complete_checkpoint_is_the_resume_point(out):
    resume = rundir.find_resume(out)
    assert resume.path == out / "checkpoints" / "step_00000003" and resume.step == 3
    assert resume.skipped == []


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: (d / "actor/dist/__0_0.distcp").write_bytes(b"\0" * 100), "has 100 bytes, 4096"),
        (lambda d: (d / "actor/dist/__0_0.distcp").unlink(), "actor/dist/__0_0.distcp is missing"),
        (lambda d: (d / "buffers/deduction.jsonl").write_text(""), "has 0 bytes, 9 were"),
        (lambda d: (d / rundir.STATE_FILE).write_text('{"st'), "trainer_state.json is missing"),
        (lambda d: (d / rundir.MANIFEST).write_text("{"), "manifest.json is unreadable"),
    ],
    ids=["truncated-shard", "deleted-shard", "emptied-buffer", "torn-state", "torn-manifest"],
)
def test_damaged_newest_checkpoint_falls_back_to_the_newest_complete(out, damage, reason):
    damage(out / "checkpoints" / "step_00000003")
    resume = rundir.find_resume(out)
    assert resume.path == out / "checkpoints" / "step_00000002"
    assert len(resume.skipped) == 1 and resume.skipped[0].startswith("step_00000003: ")
    assert reason in resume.skipped[0]


def test_latest_naming_a_missing_checkpoint_falls_back(out):
    (out / "checkpoints" / "latest").write_text("step_00000004")
    resume = rundir.find_resume(out)
    assert resume.path == out / "checkpoints" / "step_00000003"
    assert "step_00000004 (named by" in resume.skipped[0]


def test_checkpoints_newer_than_latest_are_not_resumed(out):
    # A crash after publishing step 3, before `latest` moved: the run replays step 3.
    (out / "checkpoints" / "latest").write_text("step_00000002")
    assert rundir.find_resume(out).path == out / "checkpoints" / "step_00000002"


def test_no_complete_checkpoint_refuses_to_start_over(out, tmp_path):
    for step in (1, 2, 3):
        (out / "checkpoints" / f"step_{step:08d}" / rundir.STATE_FILE).unlink()
    with pytest.raises(rundir.RunDirError, match="holds no complete checkpoint"):
        rundir.find_resume(out)
    assert rundir.find_resume(tmp_path / "fresh").path is None  # no `latest`: a fresh run


def test_replace_dir_syncs_files_and_directories_before_the_rename(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recording_replace(src, dst) -> None:
        events.append(("rename", str(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    src = tmp_path / ".new"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "shard").write_bytes(b"x" * 10)
    (src / "meta.json").write_text("{}")
    atomic.replace_dir(src, tmp_path / "final")
    synced = [path for kind, path in events[:-2] if kind == "fsync"]
    assert sorted(synced) == sorted(
        str(p) for p in (src / "sub" / "shard", src / "sub", src / "meta.json", src)
    )
    assert events[-2:] == [("rename", str(tmp_path / "final")), ("fsync", str(tmp_path))]


def config_of(out: Path, *overrides: str):
    return load_config(TINY, [f"run.output_dir={out}", *overrides])


def test_resume_lists_changes_and_refuses_fixed_ones_unless_allowed(out, caplog):
    rundir.record_start(config_of(out), rundir.check_start(config_of(out)), leader=True)
    assert (out / "config.yaml").is_file()

    start = rundir.check_start(config_of(out, "run.steps=9", "azr.k_references=3"))
    assert [(k, a, b) for k, a, b in start.changes] == [
        ("azr.k_references", 2, 3),
        ("run.steps", 4, 9),
    ]
    with caplog.at_level("WARNING"):
        rundir.record_start(config_of(out, "run.steps=9"), start, leader=False)
    assert "config differs from the recorded one: run.steps: 4 -> 9" in caplog.text

    seeds = "azr.seed_io_path=/elsewhere/seed_io.jsonl"
    with pytest.raises(ConfigError, match=r"cannot change \(azr.seed_io_path: .* -> '/elsewhere"):
        rundir.check_start(config_of(out, seeds))
    with pytest.raises(ConfigError, match=r"model\.card: 'tiny' -> 'tiny-llama'"):
        rundir.check_start(config_of(out, "model.card=tiny-llama"))
    allowed = rundir.check_start(config_of(out, seeds, "run.allow_config_change=true"))
    assert "azr.seed_io_path" in [k for k, _, _ in allowed.changes]


def test_a_fresh_run_may_change_anything(tmp_path):
    rundir.record_start(config_of(tmp_path), rundir.check_start(config_of(tmp_path)), True)
    start = rundir.check_start(config_of(tmp_path, "model.card=tiny-llama"))  # no checkpoint
    assert start.resume.path is None and start.changes


def test_finished_run_is_recognised_before_any_other_check(out):
    start = rundir.check_start(config_of(out, "run.steps=3", "model.path=/nonexistent"))
    assert start.finished(3) and not start.finished(4)
