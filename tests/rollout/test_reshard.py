"""Resharding from a real megatron-core actor (torchrun, gloo): exactness at every layout,
bounded memory, and the end-to-end path into the torch and vLLM-CPU engines."""

import json
import subprocess
from pathlib import Path

import pytest
from processes import child_env, torchrun_cmd

from megatron_azr.models.hf_tiny import make_tiny_model

HERE = Path(__file__).resolve().parent


def torchrun(nproc: int, scenario: str, args: dict, timeout: float = 600, **env: str) -> None:
    cmd = [*torchrun_cmd(nproc), str(HERE / "reshard_worker.py"), scenario]
    # PYTHONWARNINGS: megatron's import noise
    env = child_env(**env, PYTHONWARNINGS="ignore::UserWarning,ignore::FutureWarning")
    try:
        proc = subprocess.run(
            [*cmd, json.dumps(args)], env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{scenario} timed out after {timeout}s:\n{(e.stderr or '')[-4000:]}")
    if proc.returncode != 0:
        pytest.fail(f"{scenario} failed ({proc.returncode}):\n{proc.stderr[-8000:]}")


@pytest.fixture(scope="module")
def layout_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("reshard")
    return {
        # 4 layers for interleaved pipelines; 500 rows: vLLM pads its TP shards of it
        "qwen2": str(
            make_tiny_model(root / "qwen2", "qwen2", num_layers=4, vocab_size=500, seed=4)
        ),
        "llama_tied": str(
            make_tiny_model(root / "llama", "llama", tie_word_embeddings=True, seed=5)
        ),
    }


def test_every_layout_transport_destination_and_bucket_size_is_exact(layout_models, tmp_path):
    """Bit-exact HF tensors (in HF order) and vLLM shards at TP=2, PP=2, interleaved PP and DP,
    through both transports, to every rank or one, with per-tensor, mid and whole-stage buckets."""
    runs = [("qwen2", ["tp2", "pp2", "pp2vpp2", "dp2"]), ("llama_tied", ["tp2", "pp2"])]
    torchrun(2, "layouts", {"models": layout_models, "runs": runs})


MEMORY_ARCH = dict(
    name="mem",
    family="qwen2",
    num_layers=6,
    hidden_size=1024,
    ffn_hidden_size=4096,
    num_attention_heads=16,
    num_query_groups=4,
    vocab_size=8192,
    qkv_bias=True,
)
BUCKET = 64 << 20
SLACK = 16 << 20


def test_peak_memory_is_one_bucket_plus_one_tensor(tmp_path):
    """~430 MB fp32 model at TP=2: a pass's peak RSS above the baseline (the kernel's high-water
    mark, reset before the pass) stays under one bucket + the largest parameter + 16 MiB."""
    from megatron_azr.models.config import ModelConfig

    arch = ModelConfig(**MEMORY_ARCH)
    h, f, v = arch.hidden_size, arch.ffn_hidden_size, arch.vocab_size
    largest = max(2 * f * h, v * h) * 4
    model_bytes = arch.num_parameters() * 4
    assert model_bytes > 400e6 and BUCKET + largest < model_bytes / 4
    out = tmp_path / "memory.json"
    # A fixed mmap threshold makes glibc return every freed tensor to the OS at once, so RSS
    # measures live memory rather than what the allocator keeps for reuse.
    args = {"arch": MEMORY_ARCH, "bucket_bytes": BUCKET, "out": str(out)}
    torchrun(2, "memory", args, MALLOC_MMAP_THRESHOLD_="131072")
    ranks = json.loads(out.read_text())
    for rank, results in enumerate(ranks):
        for r in results:
            reads = r["dst"] is None or r["dst"] == rank
            assert r["tensors"] == (6 * 12 + 3 if reads else 0), (rank, r)
            bound = BUCKET + largest + SLACK
            assert r["peak"] < bound, f"rank {rank} {r}: {r['peak'] / 2**20:.1f} MiB"


TOKENS = [3, 17, 250, 9, 499, 42, 0, 77, 128, 64, 300, 5, 6, 99]


@pytest.mark.vllm
def test_trained_actor_resharded_into_engines_matches_hf_on_the_export(tmp_path_factory, tmp_path):
    """Two PPO updates at TP=2 x PP=2 (4 gloo ranks), then the resharded weights stream into the
    torch engine and into vLLM-CPU (dummy-loaded: every weight comes from the stream), and
    through the export path into an HF checkpoint. Greedy generations of both engines are
    identical to transformers on the export; logits (torch engine) are equal and log-probs
    (vLLM, and the actor itself) within 1e-4 in fp32. Every rank's vLLM TP=2 shards put back
    together are the exported tensors."""
    import torch
    from reshard_shapes import hf_from_vllm_shards
    from rollout_reference import PROMPTS, hf_greedy, hf_token_logprobs
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megatron_azr.models.config import ModelConfig

    root = tmp_path_factory.mktemp("e2e_model")
    model = make_tiny_model(
        root, "qwen2", hidden_size=128, num_heads=4, num_kv_heads=2, intermediate_size=256,
        vocab_size=500, seed=6,
    )  # fmt: skip
    vllm = {"engine": "vllm_cpu", "dtype": "float32", "seed": 0}
    args = {"out": str(tmp_path), "model": str(model), "vllm": vllm, "tokens": TOKENS}
    torchrun(4, "e2e", args)
    r = torch.load(tmp_path / "e2e.pt", weights_only=False)
    exported = load_file(tmp_path / "exported" / "model.safetensors")
    original = load_file(model / "model.safetensors")
    assert exported.keys() == original.keys()
    assert max((exported[k] - v).abs().max().item() for k, v in original.items()) > 1e-3
    assert all(m["tokens"] > 0 and m["grad_norm"] > 0 for m in r["metrics"])
    # the torch engine holds exactly the exported weights
    for name, t in exported.items():
        assert torch.equal(r["torch_state"][name], t), name

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "exported", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "exported")
    with torch.no_grad():
        ref_logits = hf(torch.tensor([TOKENS])).logits[0]
    torch.testing.assert_close(r["torch_logits"], ref_logits, atol=1e-5, rtol=0)
    for i, prompt in enumerate(PROMPTS):
        ((t,), (v,)) = r["torch"][i], r["vllm"][i]
        ref = hf_greedy(hf, tok, prompt, 24)
        assert t.token_ids == ref and v.token_ids == ref, prompt
        assert t.text == v.text
        ref_lp = hf_token_logprobs(hf, v.prompt_token_ids, v.token_ids)
        torch.testing.assert_close(torch.tensor(v.logprobs), ref_lp, atol=1e-4, rtol=0)
        torch.testing.assert_close(torch.tensor(t.logprobs), ref_lp, atol=1e-4, rtol=0)
        actor_lp = torch.tensor(r["actor_logprobs"][i])
        torch.testing.assert_close(actor_lp, ref_lp, atol=1e-4, rtol=0)

    # ranks 0, 1 are TP ranks 0, 1 of stage 0; ranks 2, 3 the same TP ranks of stage 1
    shards = [torch.load(tmp_path / f"shards_rank{i}.pt") for i in range(4)]
    for a, b in ((0, 2), (1, 3)):
        assert shards[a].keys() == shards[b].keys()
        assert all(torch.equal(shards[a][k], shards[b][k]) for k in shards[a])
    arch = ModelConfig.from_hf_dir(tmp_path / "exported")
    rebuilt = hf_from_vllm_shards(shards[:2], arch)
    assert rebuilt.keys() == exported.keys()
    for name, t in exported.items():
        assert torch.equal(rebuilt[name], t), name
