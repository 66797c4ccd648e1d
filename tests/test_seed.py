"""Seed files: the shipped official ones, and ``megatron_azr.seed`` writing absent ones with the
model (``azr seed``; ``azr train`` through ``ensure_seed_files``), with the real sandbox."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

for helpers in ("azr", "executor"):  # their test helpers, imported by bare name
    sys.path.insert(0, str(Path(__file__).with_name(helpers)))
from azr_scripted import ScriptedRollout, prompt_kind  # noqa: E402
from executor_helpers import require_sandbox  # noqa: E402
from processes import child_env, torchrun_cmd  # noqa: E402
from test_azr_seeding import SeedPolicy  # noqa: E402

from megatron_azr.azr.buffers import Buffers, load_records  # noqa: E402
from megatron_azr.azr.protocols import TaskType  # noqa: E402
from megatron_azr.azr.tasks import IDENTITY_PROGRAM  # noqa: E402
from megatron_azr.config import load_config  # noqa: E402
from megatron_azr.executor import SandboxExecutor  # noqa: E402
from megatron_azr.seed import ensure_seed_files  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "data" / "azr_seeds"
TINY = ROOT / "configs" / "tiny_cpu.yaml"
TRIPLET_KEYS = ["snippet", "input", "output", "imports", "original_snippet", "composite_functions"]
INDUCTION_KEYS = ["snippet", "inputs", "outputs", "message", "imports"]


@pytest.mark.parametrize("path", sorted(SEEDS.glob("*.jsonl")), ids=lambda p: p.name)
def test_every_shipped_seed_file_loads_completely(path):
    task = TaskType.INDUCTION if "code_f" in path.name else TaskType.DEDUCTION
    records = load_records(path, task)
    assert len(records) == 256 and records[0].snippet == IDENTITY_PROGRAM
    assert f"`azr_seeds/{path.name}`" in (ROOT / "data" / "README.md").read_text()


def _cfg(tmp_path: Path, *overrides: str):
    return load_config(
        TINY,
        [
            f"azr.seed_io_path={tmp_path}/io.jsonl",
            f"azr.seed_induction_path={tmp_path}/code_f.jsonl",
            "azr.batch_size=2",
            "azr.seed_batch_factor=3",
            "azr.n_induction_inputs=4",
            *overrides,
        ],
    )


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.sandbox
def test_seeding_writes_the_official_layout_and_reuses_it(tmp_path):
    require_sandbox()
    cfg = _cfg(tmp_path)
    io, code_f = Path(cfg.azr.seed_io_path), Path(cfg.azr.seed_induction_path)
    with SandboxExecutor(cfg.executor) as executor:
        written = ensure_seed_files(cfg, ScriptedRollout(SeedPolicy()), executor, lambda p: True)
        assert written == [io, code_f]
        triplets, tasks = _rows(io), _rows(code_f)
        # B * S entries each, in the original's layout (no step, no thought), duplicates dropped.
        assert len(triplets) == len(tasks) == 6
        assert all(list(r) == TRIPLET_KEYS for r in triplets)
        assert all(list(r) == INDUCTION_KEYS for r in tasks)
        assert triplets[0]["snippet"] == tasks[0]["snippet"] == IDENTITY_PROGRAM
        assert len({r["snippet"] for r in triplets}) == 6
        # Outputs are what the sandbox computed: `x + k` of the input 1.
        assert all(r["output"] == str(1 + int(r["snippet"][-1])) for r in triplets[1:])
        assert {r["snippet"] for r in tasks} <= {r["snippet"] for r in triplets}
        assert Buffers.from_config(cfg.azr).sizes() == {t: 6 for t in TaskType}

        # A second run reuses both files: no generation, nothing rewritten.
        stamps = [io.stat().st_mtime_ns, code_f.stat().st_mtime_ns]
        again = ScriptedRollout(SeedPolicy())
        assert ensure_seed_files(cfg, again, executor, lambda p: True) == []
        assert again.calls == [] and [io.stat().st_mtime_ns, code_f.stat().st_mtime_ns] == stamps


@pytest.mark.sandbox
def test_only_the_absent_induction_file_is_seeded_from_the_existing_triplets(tmp_path):
    require_sandbox()
    official = SEEDS / "7b_seed_io.jsonl"
    cfg = _cfg(tmp_path, f"azr.seed_io_path={official}")
    rollout = ScriptedRollout(SeedPolicy())
    with SandboxExecutor(cfg.executor) as executor:
        written = ensure_seed_files(cfg, rollout, executor, lambda p: True)
    assert written == [tmp_path / "code_f.jsonl"]
    kinds = {prompt_kind(p) for prompts, _ in rollout.calls for p in prompts}
    assert kinds == {"propose_induction"}
    programs = {t.snippet for t in load_records(official, TaskType.DEDUCTION, limit=6)}
    tasks = _rows(tmp_path / "code_f.jsonl")
    assert len(tasks) == 6 and {r["snippet"] for r in tasks} <= programs


def _azr_seed(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "megatron_azr.cli", "seed", "--config", str(TINY), *args],
        env=child_env(), capture_output=True, text=True, timeout=300, cwd=cwd,
    )  # fmt: skip


@pytest.mark.sandbox
@pytest.mark.slow
def test_azr_seed_runs_the_model_and_the_sandbox(tmp_path):
    """A random tiny model writes no valid program: the seeder gives up after its rounds with
    the identity seeds, and writes them; a second run is a no-op that builds no engine."""
    require_sandbox()
    from megatron_azr.models.hf_tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "tiny", "qwen2", seed=1)
    out = tmp_path / "out"
    args = (f"model.path={model}", "azr.batch_size=1", "azr.max_response_tokens=8",
            "--out", str(out))  # fmt: skip
    first = _azr_seed(tmp_path, *args)
    assert first.returncode == 0, first.stderr[-3000:]
    io, code_f = out / "7b_coder_seed_io.jsonl", out / "7b_coder_code_f_seed_io.jsonl"
    assert f"azr seed: {io}: written" in first.stdout
    assert "seeding stopped after 64 rounds with 1/4 triplets" in first.stderr
    assert [r["snippet"] for r in _rows(io)] == [IDENTITY_PROGRAM]
    assert [list(r) for r in _rows(code_f)] == [INDUCTION_KEYS]

    second = _azr_seed(tmp_path, *args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"azr seed: {code_f}: exists, reused" in second.stdout
    assert "seeding" not in second.stderr


def test_azr_seed_refuses_what_it_cannot_do(tmp_path):
    r = _azr_seed(tmp_path, "azr.seed_io_path=", "azr.seed_induction_path=")
    assert r.returncode == 2 and "names no seed files" in r.stderr
    r = _azr_seed(tmp_path, "--out", str(tmp_path))
    assert r.returncode == 2 and "model.path, which must be an HF directory" in r.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.sandbox
@pytest.mark.slow
def test_ranks_return_with_the_files_rank_0_wrote(tmp_path):
    """SPMD, as ``azr train`` calls it: two ranks, the engine and sandbox on rank 0 only."""
    require_sandbox()
    overrides = [
        f"azr.seed_io_path={tmp_path}/io.jsonl",
        f"azr.seed_induction_path={tmp_path}/code_f.jsonl",
        "azr.batch_size=2", "azr.seed_batch_factor=3", "azr.n_induction_inputs=4",
    ]  # fmt: skip
    cmd = [*torchrun_cmd(2), str(ROOT / "tests" / "seed_worker.py"), str(tmp_path), *overrides]
    r = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    results = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert results[0] == results[1]
    assert results[0]["written"] == [f"{tmp_path}/io.jsonl", f"{tmp_path}/code_f.jsonl"]
    assert set(results[0]["sizes"].values()) == {6}
