"""`azr plan`: its numbers against hand computations, the recipes against their allocations, the
layout choice and the refusals. Pure Python, fast."""

from __future__ import annotations

import math
import re

import pytest
from test_slurm_scripts import ROOT, launched_config, preflight, sbatch_options

from megatron_azr import plan
from megatron_azr.cli import main
from megatron_azr.config import load_config
from megatron_azr.models.config import load_model_card

GiB = 2**30
H100 = 79.1 * GiB
# The recipes' rollout layout (issue 10, finding 6): vLLM at the actor's TP, so every push takes
# the shard path (7B: TP 2 x 2 replicas; 14B: TP 4 x 2; 32B: TP 8, one replica per node).
RECIPES = {"azr_7b.sh": 2, "azr_14b.sh": 4, "azr_32b.sh": 8}


def recipe(config: str, *overrides: str):
    return load_config(config, ["model.path=", *overrides])


def hand_vllm_kv(share: float, weights: int, activations: int, per_token: int, length: int):
    """KV bytes left in vLLM's share (CUDA-graph estimate 1 GiB) and whole sequences of
    ``length`` tokens in 16-token blocks."""
    kv = share - weights - activations - 1 * GiB
    blocks = math.floor(kv / (per_token * 16))
    return kv, blocks // math.ceil(length / 16)


def check_against_hand(p, *, params, acts, vllm_act, per_token, comms):
    lay = p.layout
    assert p.params == params
    assert (p.weights, p.grads) == (2 * params, 4 * params)
    assert p.optimizer == pytest.approx(12 * params / lay.dp)  # distributed over DP
    assert p.optimizer_other == 12 * params
    assert p.activations == pytest.approx(acts)
    v = p.vllm
    share = 0.35 * H100
    # vLLM at the actor's TP holds exactly the actor's shard of the weights, in bf16.
    assert v.share == pytest.approx(share) and v.weights == pytest.approx(2 * params)
    assert v.activations == vllm_act
    kv, sequences = hand_vllm_kv(share, 2 * params, vllm_act, per_token, 14240)
    assert v.kv_bytes_per_token == per_token
    assert v.kv_cache == pytest.approx(kv) and v.sequences == sequences
    reserve = 1 * GiB + 1 * GiB + 0.75 * GiB * comms + 0.03 * H100
    assert sum(p.reserve.values()) == pytest.approx(reserve)
    static = 18 * params - 12 * params + 12 * params / lay.dp
    assert p.phases["generate"] == pytest.approx(static + share + reserve)
    assert p.phases["update"] == pytest.approx(static + sum(acts.values()) + reserve)
    # Shard path: staging is max(512 MiB bucket, one embedding shard) plus the shard being built.
    emb_shard = 2 * 152064 * p.arch.hidden_size / lay.tp
    push = static + 2 * params + max(512 * 2**20, emb_shard) + emb_shard + reserve
    assert p.phases["weight push"] == pytest.approx(push)
    assert p.peak == p.phases["generate"] and p.fits


# Hand computations of two recipe layouts, numbers written out.
HAND = {
    "7b": dict(
        config="configs/azr_7b.yaml",
        layout=plan.Layout(tp=2, pp=1, dp=2, rollout_tp=2),
        world=4,
        # Qwen2.5-Coder-7B: h 3584, 28 heads x 128 (q 3584), 4 KV groups (kv 512), ffn 18944,
        # 28 layers, vocab 152064, untied, QKV bias.
        # One layer, TP-sharded: 3584*(3584+2*512) + 3584*3584 + 3*3584*18944 + (3584+2*512)
        #   = 16,515,072 + 12,845,056 + 203,685,888 + 4,608 = 233,050,624; replicated 2*3584.
        # TP 2: 28*(233,050,624/2 + 7,168) + 2*152064*3584/2 + 3584 (final norm)
        #   = 3,262,909,440 + 544,997,376 + 3,584
        params=3_807_910_400,
        # Activations, s = 16384 tokens, sequence parallel over 2, full recompute, TE attention:
        #   layer inputs: 28 layers * 16384 * 2 B * 3584 / 2
        #   one layer: 16384 * 2 * (4*3584/2 + ((3584+1024) + 3584 + 3*18944)/2) + 16384 * 4*28/2
        #            = 16384 * (14336 + 65024 + 56)
        #   logits + gradient: 16384 * 152064/2 * (2 + 2) B
        acts={
            "layer inputs": 1_644_167_168,
            "one recomputed layer": 16384 * 79416,
            "logits + gradient": 4_982_833_152,
        },
        # vLLM profile run: 16384 tokens * 2 B * (3*3584 + 3584/2 + 2*256 + 2*18944/2)
        #   + 256 seqs * 152064 * 4 B * 3; KV per token: 2 * 28 layers * 2 heads * 128 * 2 B.
        vllm_act=16384 * 2 * 32000 + 256 * 152064 * 12,
        per_token=28_672,
    ),
    "14b": dict(
        config="configs/azr_14b.yaml",
        layout=plan.Layout(tp=4, pp=1, dp=2, rollout_tp=4),
        world=8,
        # Qwen2.5-Coder-14B: h 5120, 40 heads x 128 (q 5120), 8 KV groups (kv 1024), ffn 13824,
        # 48 layers, vocab 152064, untied, QKV bias.
        # One layer, TP-sharded: 5120*7168 + 5120*5120 + 3*5120*13824 + 7168
        #   = 36,700,160 + 26,214,400 + 212,336,640 + 7,168 = 275,258,368; replicated 10,240.
        # TP 4: 48*(275,258,368/4 + 10,240) + 2*152064*5120/4 + 5120
        #   = 3,303,591,936 + 389,283,840 + 5,120
        params=3_692_880_896,
        # s = 16384, sequence parallel over 4:
        #   layer inputs: 48 * 16384 * 2 * 5120 / 4
        #   one layer: 16384 * 2 * (4*5120/4 + (7168 + 5120 + 3*13824)/4) + 16384 * 4*40/4
        #            = 16384 * (10240 + 26880 + 40)
        #   logits + gradient: 16384 * 152064/4 * 4
        acts={
            "layer inputs": 2_013_265_920,
            "one recomputed layer": 16384 * 37160,
            "logits + gradient": 2_491_416_576,
        },
        # vLLM TP 4: 16384 * 2 * (3*5120 + 1280 + 2*256 + 2*13824/4) + 256 * 152064 * 12;
        # KV per token: 2 * 48 layers * 2 heads * 128 * 2 B.
        vllm_act=16384 * 2 * 24064 + 256 * 152064 * 12,
        per_token=49_152,
    ),
}


@pytest.mark.parametrize("model", sorted(HAND))
def test_plan_matches_the_hand_computation(model):
    case = HAND[model]
    lay = case["layout"]
    cfg = recipe(case["config"], f"rollout.tensor_parallel_size={lay.rollout_tp}")
    p = plan.plan_layout(cfg, lay, case["world"], H100)
    check_against_hand(
        p, params=case["params"], acts=case["acts"], vllm_act=case["vllm_act"],
        per_token=case["per_token"], comms=4,
    )  # fmt: skip


def test_fp32_local_spec_matches_the_hand_computation():
    """The workload measured on CPU in benchmarks/RESULTS.md ("azr plan against a measured
    peak"): 4.46 GiB planned, 4.49 GiB measured above the process's memory before the build."""
    cfg = load_config(None, [
        "model.card=smollm2-135m", "actor.precision=fp32", "actor.transformer_impl=local",
        "actor.micro_batch_tokens=4096", "actor.recompute=full",
        "azr.max_prompt_tokens=16", "azr.max_response_tokens=1000",
    ])  # fmt: skip
    p = plan.plan_layout(cfg, plan.Layout(tp=1, pp=1, dp=1, rollout_tp=1), 1, H100)
    # SmolLM2-135M: h 576, 9 heads x 64 (q 576), 3 KV groups (kv 192), ffn 1536, 30 layers,
    # vocab 49152, tied: 30*(576*960 + 576*576 + 3*576*1536 + 2*576) + 49152*576 + 576.
    params = 134_515_008
    assert p.params == params
    assert p.static == (4 + 4 + 8) * params  # fp32: no separate main weights
    # fp32 activations (4 B), s = 4096 (the budget; one sequence is at most 1016 tokens):
    #   layer inputs: 30 * 4096 * 4 * 576
    #   one layer: 4096 * (4 * (4*576 + 960 + 576 + 3*1536) + 4 * 9 * 4096), the last term the
    #     unfused attention's fp32 probabilities (no bf16 copy in fp32)
    #   logits + gradient (chunked kernel): 4096 * 49152 * (4 + 4)
    assert p.activations == {
        "layer inputs": 30 * 4096 * 4 * 576,
        "one recomputed layer": 4096 * (4 * 8448 + 147_456),
        "logits + gradient": 4096 * 49152 * 8,
    }


@pytest.mark.parametrize("card", ["tiny", "qwen2.5-0.5b", "qwen2.5-coder-14b", "llama-3.1-8b"])
@pytest.mark.parametrize(("tp", "pp"), [(1, 1), (2, 2)])
def test_shards_add_up_to_the_card(card, tp, pp):
    arch = load_model_card(card)
    total = sum(plan.stage_params(arch, tp, pp, s) for s in range(pp)) * tp
    _, replicated = plan.layer_params(arch)
    # TP replicates the norms (and the final norm); PP gives the last stage a tied embedding.
    extra = (tp - 1) * (arch.num_layers * replicated + arch.hidden_size)
    if arch.tie_word_embeddings and pp > 1:
        extra += arch.vocab_size * arch.hidden_size
    assert total == pytest.approx(arch.num_parameters() + extra)


@pytest.mark.parametrize("script", sorted(RECIPES))
def test_recipe_fits_its_allocation(script, capsys, tmp_path):
    opts = sbatch_options(script)
    config = launched_config(script)
    nodes, gpus = int(opts["nodes"]), int(opts["gpus-per-node"])
    rollout_tp = f"rollout.tensor_parallel_size={RECIPES[script]}"
    args = ["plan", "--config", config, "--nodes", str(nodes), "--gpus-per-node", str(gpus)]
    rc = main([*args, rollout_tp])
    out = capsys.readouterr().out
    assert rc == 0, out
    last = out.splitlines()[-1]
    assert re.fullmatch(r"fits: yes \d+\.\d/79\.1", last), out
    cfg = recipe(config, rollout_tp)
    preflight.check(load_config(config, [f"model.path={tmp_path}", rollout_tp]), nodes * gpus)
    replicas = nodes * gpus // RECIPES[script]
    assert f"rollout: vLLM tp {RECIPES[script]} (given) x {replicas} replica" in out
    assert "shard path" in out and f"tp {cfg.parallel.tp} (given)" in out
    # At least a few full-length sequences per replica at once, and some headroom.
    sequences = int(re.search(r"= (\d+) sequences of 14240", out).group(1))
    assert sequences >= 16, out
    assert float(last.split()[2].split("/")[0]) < 79.1 - 1.0


def test_32b_recipe_is_the_14b_recipe_on_two_nodes():
    big, small = recipe("configs/azr_32b.yaml"), recipe("configs/azr_14b.yaml")
    assert big.model.arch.name == "qwen2.5-coder-32b"
    assert (big.azr, big.actor) == (small.azr, small.actor)
    assert (big.parallel.tp, big.parallel.pp, big.rollout.tensor_parallel_size) == (8, 1, 8)
    assert sbatch_options("azr_32b.sh")["nodes"] == "2"
    assert (ROOT / "slurm" / "azr_32b.sh").read_text().count("configs/azr_32b.yaml") >= 1


def run_plan(capsys, *args: str) -> tuple[int, list[str]]:
    rc = main(["plan", *args])
    return rc, capsys.readouterr().out.splitlines()


def test_plan_chooses_the_layout_when_the_config_does_not_give_it(capsys):
    # No config file: parallel.* and rollout.tensor_parallel_size are free. 14B on 8 GPUs with
    # the default gpu_memory_utilization 0.5: TP 4 x DP 2 leaves too little beside vLLM.
    args = ("--model", "qwen2.5-coder-14b", "--nodes", "1", "--gpus-per-node", "8")
    rc, out = run_plan(capsys, *args, "rollout.engine=vllm", "parallel.distributed_optimizer=true")
    assert rc == 0
    assert "layout: tp 8 (chosen) x pp 1 (chosen) x dp 1" in out[1]
    assert out[2].startswith("rollout: vLLM tp 8 (chosen) x 1 replica, shard path")
    # Sequences of the configured prompt + response (6144 + 8096), though max_model_len is the
    # model's 32768 here.
    assert any("sequences of 14240 per replica" in line for line in out)
    # Given values are kept, and a layout that does not fit is refused with the overflow.
    rc, out = run_plan(capsys, *args, "rollout.engine=vllm", "parallel.tp=2")
    assert rc == 1 and "tp 2 (given)" in out[1]
    [refusal] = [line for line in out if line.startswith("refused:")]
    assert re.fullmatch(
        r"refused: (generate|update|weight push) phase needs \d+\.\d GiB per GPU: "
        r"\d+\.\d GiB over the 79\.1 GiB of a GPU", refusal,
    )  # fmt: skip
    peak = float(out[-1].split()[2].split("/")[0])
    assert out[-1].startswith("fits: no") and peak > 79.1
    assert float(refusal.split(" needs ")[1].split()[0]) == peak


@pytest.mark.parametrize(("overrides", "refusal"), [
    (["parallel.tp=3"], "tp 3 x pp 1 does not divide the 8 GPUs"),
    (["parallel.tp=3"], "tp 3 does not divide num_query_groups 8"),
    (["parallel.pp=5"], "48 layers do not split over pp x vpp = 5 stages"),
    (["rollout.tensor_parallel_size=3"], "rollout tp 3 does not divide the 8 GPUs"),
    (["rollout.tensor_parallel_size=1"],
     "vLLM's weights, activations and CUDA graphs overflow its share (27.7 GiB) by 2.8 GiB"),
    (["rollout.gpu_memory_utilization=0.12", "rollout.tensor_parallel_size=4"],
     "vLLM's KV cache (0.44 GiB) holds no sequence of max_model_len 14240 tokens"),
])  # fmt: skip
def test_plan_refuses_what_does_not_divide_or_fit(capsys, overrides, refusal):
    rc, out = run_plan(
        capsys, "--config", "configs/azr_14b.yaml", "--nodes", "1", "--gpus-per-node", "8",
        *overrides,
    )  # fmt: skip
    assert rc == 1
    assert any(line.startswith(f"refused: {refusal}") for line in out), "\n".join(out)
    assert out[-1].startswith("fits: no ")


def test_plan_reports_a_config_error_in_one_line(capsys):
    rc = main(["plan", "--config", "configs/azr_14b.yaml", "--nodes", "1", "--gpus-per-node",
               "8", "parallel.tpp=2"])  # fmt: skip
    assert rc == 2 and "unknown key 'parallel.tpp'" in capsys.readouterr().err


@pytest.mark.slow  # importing megatron-core
def test_rank_map_follows_megatrons_rank_order():
    """Megatron-core's own rank groups (order tp-cp-ep-dp-pp) against the plan's map."""
    from megatron.core.parallel_state import RankGenerator

    lay = plan.Layout(tp=2, pp=2, dp=2, rollout_tp=4)
    gen = RankGenerator(tp=2, ep=1, dp=2, pp=2, cp=1, order="tp-cp-ep-dp-pp")
    lines = plan.rank_map(lay, nodes=2, gpus_per_node=4, vllm=True)
    place = {
        int(m[1]): tuple(map(int, m.groups()[1:]))
        for m in (re.match(r"rank (\d+): node (\d+) local (\d+); actor tp (\d+) pp (\d+) dp (\d+)"
                           r"; vLLM replica (\d+) tp (\d+)", line) for line in lines)
    }  # fmt: skip
    for kind, pos in (("tp", 2), ("pp", 3), ("dp", 4)):
        for group in gen.get_ranks(kind):
            assert [place[r][pos] for r in group] == list(range(len(group))), (kind, group)
    assert [place[r][:2] for r in (0, 3, 4, 7)] == [(0, 0), (0, 3), (1, 0), (1, 3)]
    assert [place[r][5:] for r in (0, 3, 4, 7)] == [(0, 0), (0, 3), (1, 0), (1, 3)]


def test_plan_needs_at_least_one_gpu(capsys):
    with pytest.raises(SystemExit) as e:
        main(["plan", "--model", "tiny", "--nodes", "0", "--gpus-per-node", "8"])
    assert e.value.code == 2 and "--nodes: must be >= 1, got 0" in capsys.readouterr().err
