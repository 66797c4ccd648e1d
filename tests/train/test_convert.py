"""`azr convert` end to end: real processes, sharded both ways, bit-exact."""

import subprocess
import sys
from pathlib import Path

import pytest
from processes import child_env, torchrun_cmd

torch = pytest.importorskip("torch")
safetensors = pytest.importorskip("safetensors.torch")


def _azr(args, nproc=None, timeout=180):
    launch = torchrun_cmd(nproc) if nproc else [sys.executable]
    cmd = [*launch, "-m", "megatron_azr.cli", "convert", *args]
    return subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout)


def test_round_trip_tp2_to_pp2_bf16_tied(tiny_models, tmp_path):
    transformers = pytest.importorskip("transformers")
    src = tmp_path / "llama_bf16"
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    model.to(torch.bfloat16).save_pretrained(src)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (src / f).write_bytes((Path(tiny_models["llama"]) / f).read_bytes())

    r = _azr(["hf-to-mcore", str(src), str(tmp_path / "ckpt"), "--tp", "2"], nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _azr(["mcore-to-hf", str(tmp_path / "ckpt"), str(tmp_path / "back"), "--pp", "2"], nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]

    original = safetensors.load_file(src / "model.safetensors")
    back = safetensors.load_file(tmp_path / "back" / "model.safetensors")
    assert back.keys() == original.keys() and "lm_head.weight" not in back  # tied
    for name, t in original.items():
        assert back[name].dtype == torch.bfloat16 and torch.equal(back[name], t), name
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "back" / f).read_bytes() == (src / f).read_bytes(), f
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp dirs left


def test_bad_input_is_a_clear_error(tmp_path):
    r = _azr(["hf-to-mcore", str(tmp_path / "missing"), str(tmp_path / "out")])
    assert r.returncode == 2 and "no config.json" in r.stderr
    (tmp_path / "notckpt").mkdir()
    r = _azr(["mcore-to-hf", str(tmp_path / "notckpt"), str(tmp_path / "out")])
    assert r.returncode == 2 and "not an actor checkpoint" in r.stderr
    assert not (tmp_path / "out").exists()
