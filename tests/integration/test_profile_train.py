"""`azr train` profiled on 2 gloo ranks (TP=2): a torch.profiler trace per rank of the chosen
step, and the comm accounting's bytes against the tiny model's parameter bytes, by hand."""

import json
import subprocess

import pytest
import yaml
from processes import ROOT, child_env, torchrun_cmd
from tiny_run import FAST

pytestmark = pytest.mark.slow


def tp_shard_parameters(card: dict, tp: int) -> int:
    """Parameters one TP rank of a Qwen2 model holds: matrices split over TP, norms whole."""
    h, f, v = card["hidden_size"], card["ffn_hidden_size"], card["vocab_size"]
    head = h // card["num_attention_heads"]
    qkv_rows = (card["num_attention_heads"] + 2 * card["num_query_groups"]) * head
    layer = (
        h  # input norm
        + qkv_rows * h // tp  # fused QKV
        + (qkv_rows // tp if card["qkv_bias"] else 0)
        + h * h // tp  # attention output projection
        + h  # pre-MLP norm
        + 2 * f * h // tp  # fused gate/up
        + h * f // tp  # down projection
    )
    embeddings = v * h // tp * (1 if card["tie_word_embeddings"] else 2)
    return embeddings + card["num_layers"] * layer + h  # + final norm


def test_tiny_card_by_hand():
    card = yaml.safe_load((ROOT / "configs/models/tiny.yaml").read_text())
    # embedding 256x64, output 256x64, per layer 64 + 128x64/2 + 64 + 64x32 + 64 + 256x64/2
    # + 64x64, final norm 64
    assert tp_shard_parameters(card, 2) == 16384 + 16384 + 2 * 18624 + 64 == 70080


def test_profiled_tp2_run_traces_each_rank_and_accounts_parameter_bytes(tmp_path):
    out = tmp_path / "run"
    args = [
        "--config", "configs/tiny_cpu.yaml", f"run.output_dir={out}", *FAST, "run.steps=3",
        "parallel.tp=2", "profile.steps=[2]", "profile.torch_trace=true",
        "rollout.reshard_transport=collective",  # shm moves no bytes through collectives
    ]  # fmt: skip
    cmd = [*torchrun_cmd(2), "-m", "megatron_azr.cli", "train", *args]
    r = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]

    card = yaml.safe_load((ROOT / "configs/models/tiny.yaml").read_text())
    for rank in (0, 1):
        trace = out / "profile" / "torch" / f"rank{rank}_step2.json"
        events = json.loads(trace.read_text())["traceEvents"]
        names = {e.get("name", "") for e in events}
        assert {"azr/rollout", "azr/update", "azr/grad_sync", "azr/reshard"} <= names
        assert any(n.startswith("c10d::allreduce") for n in names), rank
        assert any(n.startswith("gloo:") for n in names), rank
        assert not (out / "profile" / "torch" / f"rank{rank}_step1.json").exists()
        if rank == 1:  # its shards on their way to rank 0's engine, with their size
            [send] = [e for e in events if e.get("name") == "c10d::send"]
            assert send["args"]["Input Dims"][0] == [[tp_shard_parameters(card, 2)]]

    param_bytes = tp_shard_parameters(card, 2) * 4  # fp32 parameters, fp32 gradient buffer
    rows = [json.loads(x) for x in (out / "profile" / "ranks.jsonl").read_text().splitlines()]
    step2 = {r["rank"]: r["comm"] for r in rows if r["step"] == 2}
    for rank in (0, 1):
        # megatron's finalize_model_grads: DDP's all-reduce of the whole gradient buffer, and
        # the all-reduce of the step's token count (one int32) over the same group.
        assert step2[rank]["comm/grad_sync/dp/all_reduce/count"] == 2
        assert step2[rank]["comm/grad_sync/dp/all_reduce/bytes"] == param_bytes + 4
    # Resharding into rank 0's engine: rank 1 sends every shard it holds, rank 0 receives it.
    assert step2[1]["comm/reshard/world/send/bytes"] == param_bytes
    assert step2[0]["comm/reshard/world/recv/bytes"] == param_bytes

    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    m = metrics[1]
    assert m["comm/grad_sync/dp/all_reduce/bytes"] == param_bytes + 4  # rank 0's, per step
    assert {"straggler/update/max_s", "straggler/update/slowest_rank"} <= set(m)
    assert m["straggler/update/slowest_rank"] in (0.0, 1.0)
    assert not any(k.startswith("gpu/") for k in m)
    log = (out / "logs" / "rank0.log").read_text()
    assert "communication of this rank over the run" in log and "tp(2)" in log
