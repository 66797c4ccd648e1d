"""The trainer's telemetry handle in one gloo process: phases, comm attribution, the straggler
report, torch.profiler traces, and no GPU figures (nor noise about them) on CPU."""

import json
import logging

import pytest
import torch
import torch.distributed as dist

from megatron_azr.config import ConfigError, load_config
from megatron_azr.telemetry.config import ProfileConfig
from megatron_azr.telemetry.profile import Telemetry, trace_path


def test_profile_section_loads_and_says_what_is_traced():
    cfg = load_config(None, ["profile.steps=[10,11,12]", "profile.ranks=[0,8]"]).profile
    assert cfg.traces(0, 11) and cfg.traces(8, 12)
    assert not cfg.traces(1, 11) and not cfg.traces(0, 9)
    assert ProfileConfig(steps=[2]).traces(5, 2)  # ranks None: every rank
    assert cfg.comm_accounting and cfg.pg_timeout_minutes == 30
    with pytest.raises(ConfigError, match="steps are numbered from 1"):
        load_config(None, ["profile.steps=[0]"])
    with pytest.raises(ConfigError, match="pg_timeout_minutes"):
        load_config(None, ["profile.pg_timeout_minutes=0"])


def _step(tel: Telemetry, step: int, n: int) -> None:
    with tel.step(step):
        with tel.phase("update"):
            dist.all_reduce(torch.ones(n))
            tel.phased("grad_sync", lambda: dist.all_reduce(torch.ones(2 * n)))()
        with tel.phase("reshard"):
            dist.broadcast(torch.ones(n), src=0)


def test_phases_attribute_collectives_and_trace_the_chosen_step(world, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    cfg = ProfileConfig(steps=[2], torch_trace=True)
    with Telemetry(cfg, tmp_path) as tel:
        _step(tel, 1, 100)
        first = tel.end_step(1)
        _step(tel, 2, 1000)
        second = tel.end_step(2)

    assert first["comm/update/world/all_reduce/bytes"] == 400
    assert first["comm/grad_sync/world/all_reduce/bytes"] == 800  # the inner phase's own
    assert second["comm/reshard/world/broadcast/bytes"] == 4000
    assert second["comm/reshard/world/broadcast/count"] == 1  # the telemetry's gather is not
    assert second["time/update_s"] >= second["time/grad_sync_s"] > 0
    assert second["time/forward_backward_s"] == pytest.approx(
        second["time/update_s"] - second["time/grad_sync_s"]
    )
    assert second["straggler/update/slowest_rank"] == 0 and second["straggler/update/spread_s"] == 0
    assert not any(k.startswith("gpu/") for k in second)  # CPU: no NVML, no torch CUDA peaks
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    assert not trace_path(tmp_path / "profile", 0, 1).exists()
    trace = json.loads(trace_path(tmp_path / "profile", 0, 2).read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"azr/update", "azr/grad_sync", "azr/reshard"} <= names
    assert {"c10d::allreduce_", "c10d::broadcast_"} <= names  # the collectives, with shapes
    rows = [json.loads(x) for x in (tmp_path / "profile" / "ranks.jsonl").read_text().splitlines()]
    assert [(r["step"], r["rank"]) for r in rows] == [(1, 0), (2, 0)]
    assert rows[1]["comm"]["comm/update/world/all_reduce/bytes"] == 4000
    table = "\n".join(r.getMessage() for r in caplog.records)
    assert "communication of this rank over the run" in table and "straggler report" in table
    assert dist.ProcessGroup.allreduce.__class__.__name__ != "function"  # hooks removed


def test_accounting_off_leaves_collectives_alone(world, tmp_path):
    before = vars(dist.ProcessGroup)["allreduce"]
    with Telemetry(ProfileConfig(comm_accounting=False), tmp_path) as tel:
        assert vars(dist.ProcessGroup)["allreduce"] is before
        _step(tel, 1, 10)
        m = tel.end_step(1)
    assert not any(k.startswith("comm/") for k in m) and "straggler/update/max_s" in m
