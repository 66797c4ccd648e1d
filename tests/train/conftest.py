import json
import subprocess
from pathlib import Path

import pytest
from processes import child_env, torchrun_cmd

WORKER = Path(__file__).with_name("dist_worker.py")


def _torchrun(nproc: int, scenario: str, args: dict, timeout: float = 240) -> None:
    """Run a dist_worker scenario under torchrun; fail with its output on error or timeout."""
    cmd = [*torchrun_cmd(nproc), str(WORKER), scenario, json.dumps(args)]
    try:
        proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun {scenario} timed out after {timeout}s:\n{(e.stderr or '')[-4000:]}")
    if proc.returncode != 0:
        pytest.fail(f"torchrun {scenario} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random HF models: Qwen2 (QKV bias, untied), Llama (tied, Llama-3.1 RoPE scaling)
    and a 4-layer Qwen2 for interleaved pipelines."""
    from megatron_azr.models.hf_tiny import make_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return {
        "qwen2": str(make_tiny_model(root / "qwen2", "qwen2", seed=1)),
        "llama": str(
            make_tiny_model(
                root / "llama", "llama", tie_word_embeddings=True, llama3_rope_factor=8.0, seed=2
            )
        ),
        "qwen2_4l": str(make_tiny_model(root / "qwen2_4l", "qwen2", num_layers=4, seed=3)),
    }


@pytest.fixture(scope="session")
def torchrun():
    return _torchrun
