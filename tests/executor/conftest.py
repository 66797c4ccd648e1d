"""Fixtures for the executor tests (helpers: ``executor_helpers.py``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from executor_helpers import ROOT, executor_config, job_processes, require_sandbox, serves

from megatron_azr.executor import SandboxExecutor


@pytest.fixture(scope="session")
def pool() -> Iterator[SandboxExecutor]:
    require_sandbox()
    ex = SandboxExecutor(executor_config(workers=2))
    groups = [d for w in ex.workers if w.group is not None for d in w.group.dirs]
    yield ex
    hostdirs = [w.hostdir for w in ex.workers if w.hostdir]
    ex.close()
    # The suite leaves nothing of its own (other azr work on the host is not counted): no job
    # process, no cgroup, no host temp dir.
    assert job_processes() == []
    assert not any(os.path.exists(d) for d in groups + hostdirs)


@pytest.fixture
def clean(pool: SandboxExecutor) -> Iterator[SandboxExecutor]:
    """The shared pool, checked after the test: still serving, nothing left running."""
    yield pool
    assert serves(pool), "the pool stopped serving"
    assert job_processes() == [], "a job left processes behind"


@pytest.fixture
def project_secret() -> Iterator[Path]:
    """A root-only file inside the project tree (the worktree is not in any sandbox view)."""
    path = ROOT / ".pytest-secret-executor"
    path.write_text("TOP-SECRET-7f3a")
    os.chmod(path, 0o600)
    yield path
    path.unlink()
