"""Communication accounting and nccl-tests' bandwidth formulas, in one gloo process."""

import json

import pytest
import torch
import torch.distributed as dist

from megatron_azr.telemetry import comm
from megatron_azr.telemetry.comm import CommStat, Key

# -- nccl-tests' formulas ---------------------------------------------------------------------


def test_bus_factors_are_nccl_tests_summary():
    # doc/PERFORMANCE.md, "Summary", for n = 8.
    n = 8
    assert comm.bus_factor("all_reduce", n) == 2 * 7 / 8
    assert comm.bus_factor("reduce_scatter", n) == 7 / 8
    assert comm.bus_factor("all_gather", n) == 7 / 8
    assert comm.bus_factor("all_to_all", n) == 7 / 8
    assert comm.bus_factor("broadcast", n) == 1.0
    assert comm.bus_factor("reduce", n) == 1.0


@pytest.mark.parametrize(
    "op, n, size, time_us, algbw, busbw",
    [
        # all_reduce_perf, 16 H100s (2 nodes): "134217728 33554432 float sum -1 1652.2 81.24
        # 152.32" (size B, count, type, redop, root, time us, algbw, busbw).
        ("all_reduce", 16, 134217728, 1652.2, 81.24, 152.32),
        ("all_reduce", 16, 8589934592, 47535, 180.71, 338.82),
        # sendrecv_perf on 8 A100s: "134217728 ... 1211.2 110.81 110.81".
        ("send", 8, 134217728, 1211.2, 110.81, 110.81),
    ],
)
def test_bandwidths_reproduce_published_nccl_tests_rows(op, n, size, time_us, algbw, busbw):
    # The printed columns are rounded (time to 0.1 us, or 1 us above 10 ms; GB/s to 0.01).
    assert comm.algbw(size, time_us / 1e6) == pytest.approx(algbw, abs=0.01)
    assert comm.busbw(op, size, time_us / 1e6, n) == pytest.approx(busbw, abs=0.01)


def test_all_gather_busbw_is_half_of_algbw_on_two_ranks():
    # all_gather_perf between 2 nodes, 16 GiB: "algbw 46.79 / busbw 23.40".
    size = 16 << 30
    t = size / 46.79e9
    assert comm.busbw("all_gather", size, t, 2) == pytest.approx(23.40, abs=0.006)
    assert comm.busbw("reduce_scatter", size, t, 2) == pytest.approx(23.40, abs=0.006)


# -- the hooks --------------------------------------------------------------------------------


def test_counts_every_path_with_nccl_tests_sizes(world):
    alias = dist.all_gather_into_tensor  # bound before the hooks, as megatron-core binds it
    with comm.CommAccounting() as acc:
        t = torch.ones(1000)  # 4000 bytes
        dist.all_reduce(t)
        out = torch.zeros(1000)
        alias(out, t)  # all-gather: S = the gathered output
        part = torch.zeros(1000)
        dist.reduce_scatter_tensor(part, t)  # reduce-scatter: S = the scattered input
        acc.phase = "reshard"
        dist.broadcast(t, src=0)
        dist.all_reduce(t, async_op=True).wait()  # counted, not timed
        with acc.pause():
            dist.all_reduce(t)
        dist.broadcast_object_list([{"a": 1}], src=0)  # object collectives are broadcasts too
        # DDP's gradient sync: coalesced all-reduces.
        with dist._coalescing_manager(world, async_ops=False):
            dist.all_reduce(torch.ones(10))
            dist.all_reduce(torch.ones(30))
        stats = acc.take()
    by = {(k.phase, k.op): s for k, s in stats.items()}
    assert all(k.group == "world" and k.size == 1 for k in stats)
    ar = by[("other", "all_reduce")]
    assert (ar.count, ar.bytes, ar.timed_count) == (1, 4000, 1)
    assert ar.time_s > 0
    assert (by[("other", "all_gather")].count, by[("other", "all_gather")].bytes) == (1, 4000)
    assert by[("other", "reduce_scatter")].bytes == 4000
    reshard_ar = by[("reshard", "all_reduce")]
    # the async one (4000 B, untimed) and the coalesced pair (160 B, timed as one call)
    assert (reshard_ar.count, reshard_ar.bytes) == (2, 4160)
    assert (reshard_ar.timed_count, reshard_ar.timed_bytes) == (1, 160)
    bcast = by[("reshard", "broadcast")]
    assert bcast.count == 3 and bcast.bytes > 4000  # the tensor, the object's size and payload


def test_uninstall_restores_the_process_group_methods(world):
    before = dict(vars(dist.ProcessGroup))
    with comm.CommAccounting():
        assert vars(dist.ProcessGroup)["allreduce"] is not before["allreduce"]
        with pytest.raises(RuntimeError, match="another"):
            comm.CommAccounting().install()
    assert dict(vars(dist.ProcessGroup)) == before
    acc = comm.CommAccounting()
    dist.all_reduce(torch.ones(4))
    assert acc.take() == {}


def test_take_accumulates_the_run_total(world):
    with comm.CommAccounting() as acc:
        dist.all_reduce(torch.ones(4))
        first = acc.take()
        dist.all_reduce(torch.ones(4))
        dist.all_reduce(torch.ones(4))
        second = acc.take()
    key = Key("other", "world", 1, "all_reduce")
    assert first[key].count == 1 and second[key].count == 2
    assert acc.total[key].count == 3 and acc.total[key].bytes == 48


def test_group_names_follow_megatron_group_desc(world):
    assert comm.group_name(world) == "world"
    g = dist.new_group([0], group_desc="TENSOR_MODEL_PARALLEL_GROUP")
    assert comm.group_name(g) == "tp"
    assert comm.group_name(dist.new_group([0], group_desc="RESHARD_GROUP")) == "reshard"
    assert comm.group_name(dist.new_group([0])).startswith("pg")


# -- reporting ----------------------------------------------------------------------------------


def test_metrics_and_table_with_a_bench_baseline(tmp_path):
    from megatron_azr.telemetry.profile import load_baseline

    stats = {
        Key("reshard", "tp", 4, "all_gather"): CommStat(2, 2 << 30, 2, 2 << 30, 0.1),
        Key("update", "pp", 2, "send"): CommStat(5, 500, 0, 0, 0.0),
    }
    m = comm.metrics(stats)
    ag = "comm/reshard/tp/all_gather"
    assert m[f"{ag}/bytes"] == 2 << 30 and m[f"{ag}/count"] == 2
    assert m[f"{ag}/algbw_gbps"] == pytest.approx((2 << 30) / 0.1 / 1e9)
    assert m[f"{ag}/busbw_gbps"] == pytest.approx(m[f"{ag}/algbw_gbps"] * 3 / 4)
    assert "comm/update/pp/send/busbw_gbps" not in m  # asynchronous: not timed

    bench = tmp_path / "comm_bench.json"
    rows = [
        {"group": "tp", "op": "all_gather", "bytes": 1 << 20, "busbw": 100.0},
        {"group": "tp", "op": "all_gather", "bytes": 1 << 30, "busbw": m[f"{ag}/busbw_gbps"] / 0.5},
    ]
    bench.write_text(json.dumps({"results": rows}))
    text = comm.table(stats, load_baseline(bench))
    line = next(row for row in text.splitlines() if row.startswith("reshard"))
    assert "tp(4)" in line and "all_gather" in line and line.rstrip().endswith("50%")
    send = next(row for row in text.splitlines() if row.startswith("update"))
    assert send.split()[-4:] == ["-", "-", "-", "-"]
    assert load_baseline(tmp_path / "absent.json") is None
