"""wandb as the trainer starts it (telemetry/metrics.py): which mode wins, and an online start
without a network, which must log offline instead of hanging or stopping the training."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import child_env

from megatron_azr.telemetry.config import LoggingConfig
from megatron_azr.telemetry.metrics import MetricsLogger, wandb_mode

pytest.importorskip("wandb")


def test_environment_wins_over_the_config_and_says_so(monkeypatch, caplog):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode(LoggingConfig(wandb_mode="online")) == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    with caplog.at_level("INFO"):
        assert wandb_mode(LoggingConfig(wandb_mode="online")) == "offline"
    assert "WANDB_MODE=offline from the environment overrides logging.wandb_mode=online" in (
        caplog.text
    )


def test_disabled_in_the_environment_starts_no_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    log = MetricsLogger(LoggingConfig(wandb_mode="offline"), tmp_path, "t", {})
    log.log(1, {"x": 1.0})
    log.close()
    assert not (tmp_path / "wandb").exists()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["x"] == 1.0


CHILD = """
import json, sys, time
from pathlib import Path
from megatron_azr.telemetry.config import LoggingConfig
from megatron_azr.telemetry.logs import setup_logging
from megatron_azr.telemetry.metrics import MetricsLogger

setup_logging("INFO")
cfg = LoggingConfig(wandb_mode="online", wandb_init_timeout_s=10.0)
t0 = time.monotonic()
log = MetricsLogger(cfg, Path(sys.argv[1]), "no-network", {"a": 1})
log.log(1, {"x": 1.0})
log.close()
print(json.dumps({"seconds": time.monotonic() - t0}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("key", [True, False], ids=["api-key", "no-api-key"])
def test_online_without_network_logs_offline(tmp_path, key):
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--net", "true"]).returncode:
        pytest.skip("needs unshare --net (root) for a process without a network")
    # A well-formed key makes wandb try the network (no key fails before it tries).
    env = child_env(WANDB_API_KEY="a" * 40) if key else child_env()
    env.pop("WANDB_MODE", None)
    if not key:
        env.pop("WANDB_API_KEY", None)
    t0 = time.monotonic()
    done = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", CHILD, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert time.monotonic() - t0 < 120
    assert "wandb: online start failed" in done.stderr and "logging offline under" in done.stderr
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["step"] == 1
    assert Path(tmp_path / "metrics.jsonl").read_text().count("\n") == 1
