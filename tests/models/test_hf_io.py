"""HF safetensors directories: sharded writing and reading back."""

import json

import torch

from megatron_azr.models.hf_io import HFWeights, write_safetensors


def test_sharded_write_reads_back_exactly_sized_after_the_cast(tmp_path):
    names = ["model.embed_tokens.weight", *(f"t{i}" for i in range(1, 5))]
    tensors = {n: torch.randn(16, 8) for n in names}  # 512 B each in fp32, 256 in bf16
    write_safetensors(iter(tensors.items()), tmp_path, max_shard_bytes=600, dtype=torch.bfloat16)

    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
        "model.safetensors.index.json",
    ]  # two bf16 tensors per shard (three fp32 ones would not fit): no temporary files left
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 5 * 256
    assert index["weight_map"]["t4"] == "model-00003-of-00003.safetensors"
    with HFWeights(tmp_path) as w:
        assert w.names() == set(tensors)
        assert w.dtype() == torch.bfloat16
        for name, t in tensors.items():
            assert torch.equal(w.get(name), t.to(torch.bfloat16)), name


def test_one_shard_is_a_plain_model_file(tmp_path):
    write_safetensors([("a", torch.ones(3))], tmp_path, max_shard_bytes=1 << 20)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    with HFWeights(tmp_path) as w:
        assert torch.equal(w.get("a"), torch.ones(3))
