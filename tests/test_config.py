import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from megatron_azr.azr.buffers import Buffers
from megatron_azr.azr.protocols import TaskType
from megatron_azr.config import Config, ConfigError, apply_overrides, dump_config, load_config
from megatron_azr.models.smollm2 import DEFAULT_DIR as SMOLLM2

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_tiny_default_loads():
    cfg = load_config(TINY)
    assert cfg.run.name == "tiny-cpu"
    assert cfg.azr.batch_size == 4
    assert cfg.azr.task_types == ["abduction", "deduction", "induction"]


def test_every_shipped_config_loads():
    paths = sorted((ROOT / "configs").rglob("*.yaml"))
    assert paths
    for p in paths:
        if "models" in p.parts:
            continue  # model cards are a section, loaded by their own tests
        if p.name == "smollm2_cpu.yaml" and not SMOLLM2.is_dir():
            # Its architecture is the built directory's: without it, say how to build it.
            with pytest.raises(ConfigError, match="azr model smollm2"):
                load_config(p)
            continue
        cfg = load_config(p)
        for key in ("seed_io_path", "seed_induction_path"):
            assert Path(getattr(cfg.azr, key)).is_file(), (p.name, key)


def test_data_paths_resolve_against_the_repository_not_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seeds = ROOT / "data" / "azr_seeds"
    for config in (TINY, Path("configs/tiny_cpu.yaml")):  # a shipped config named from anywhere
        cfg = load_config(config)
        assert cfg.azr.seed_io_path == str(seeds / "7b_coder_seed_io.jsonl")
        assert cfg.azr.seed_induction_path == str(seeds / "7b_coder_code_f_seed_io.jsonl")
    assert Buffers.from_config(cfg.azr).sizes() == {t: 16 for t in TaskType}
    # Overrides resolve the same way; absolute paths and empty ones stay as they are.
    cfg = load_config(TINY, ["azr.seed_io_path=data/azr_seeds/7b_seed_io.jsonl"])
    assert cfg.azr.seed_io_path == str(seeds / "7b_seed_io.jsonl")
    absolute = str(tmp_path / "elsewhere.jsonl")
    cfg = load_config(TINY, [f"azr.seed_io_path={absolute}", "azr.seed_induction_path="])
    assert (cfg.azr.seed_io_path, cfg.azr.seed_induction_path) == (absolute, "")
    assert load_config(TINY, ["azr.k_references=3"]).model.path == ""


def test_data_paths_next_to_the_config_file_win(tmp_path):
    configs = tmp_path / "mine"
    (configs / "model").mkdir(parents=True)
    hf = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
          "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 128}  # fmt: skip
    (configs / "model" / "config.json").write_text(json.dumps(hf))
    (configs / "seeds.jsonl").write_text((ROOT / "data/azr_seeds/7b_seed_io.jsonl").read_text())
    p = configs / "run.yaml"
    p.write_text(
        "azr:\n  seed_io_path: seeds.jsonl\n"
        "  seed_induction_path: data/azr_seeds/7b_code_f_seed_io.jsonl\n"
        "model:\n  path: model\n"
    )
    cfg = load_config(p)
    assert cfg.azr.seed_io_path == str(configs / "seeds.jsonl")
    assert cfg.azr.seed_induction_path == str(ROOT / "data/azr_seeds/7b_code_f_seed_io.jsonl")
    # The architecture is read from the resolved directory, whatever the working directory.
    assert cfg.model.path == str(configs / "model") and cfg.model.arch.hidden_size == 32
    assert load_config(p, ["azr.seed_io_path=seeds.jsonl"]) == cfg


def test_cli_from_another_directory_finds_the_seed_files(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "megatron_azr.cli", "config", "--config", str(TINY)],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    azr = yaml.safe_load(r.stdout)["azr"]
    for key in ("seed_io_path", "seed_induction_path"):
        assert Path(azr[key]).is_absolute() and Path(azr[key]).is_file(), azr[key]


def test_overrides_are_typed(tmp_path):
    cfg = load_config(TINY, ["azr.k_references=4", "azr.proposer_zero_reward=0", "run.name=abl"])
    assert cfg.azr.k_references == 4
    assert cfg.azr.proposer_zero_reward == 0.0 and isinstance(cfg.azr.proposer_zero_reward, float)
    assert cfg.run.name == "abl"
    cfg = load_config(TINY, ["azr.task_types=[deduction]"])
    assert cfg.azr.task_types == ["deduction"]
    # YAML 1.1 reads 1e-4 (no dot) as a string; a float field still takes it.
    cfg = load_config(TINY, ["actor.lr=1e-4", "actor.adam_eps=-2.5E-3"])
    assert cfg.actor.lr == 1e-4 and cfg.actor.adam_eps == -2.5e-3
    with pytest.raises(ConfigError, match=r"actor\.lr"):
        load_config(TINY, ["actor.lr=1e-4x"])


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    p = write(tmp_path, "azr:\n  k_refrences: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "azr.k_refrences" in str(e.value) and str(p) in str(e.value)


def test_unknown_section(tmp_path):
    p = write(tmp_path, "nope:\n  a: 1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'nope'"):
        load_config(p)


@pytest.mark.parametrize(
    "text, key",
    [
        ("azr:\n  k_references: four\n", "azr.k_references"),
        ("azr:\n  k_references: 4.5\n", "azr.k_references"),
        ("azr:\n  include_references: 1\n", "azr.include_references"),
        ("azr:\n  task_types: [deduction, sorting]\n", "azr.task_types[1]"),
        ("azr:\n  buffer_cap_policy: fifo\n", "azr.buffer_cap_policy"),
        ("azr:\n  program_timeout_s: soon\n", "azr.program_timeout_s"),
        ("azr:\n  advantage_whitening: sequence\n", "azr.advantage_whitening"),
        ("run: 3\n", "run"),
    ],
)
def test_wrong_types_name_key_and_file(tmp_path, text, key):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"'{key}'" in str(e.value) and str(p) in str(e.value)


def test_bad_values_are_rejected_with_section(tmp_path):
    p = write(tmp_path, "azr:\n  batch_size: 0\n")
    with pytest.raises(ConfigError, match=r"section 'azr'.*batch_size"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"section 'azr'.*program_timeout_s"):
        load_config(TINY, ["azr.program_timeout_s=0"])
    assert load_config(TINY, ["azr.program_timeout_s=2"]).azr.program_timeout_s == 2.0


def test_kl_penalty_is_refused_until_the_trainer_computes_reference_logprobs(tmp_path):
    with pytest.raises(ConfigError, match=r"actor.kl_coef > 0 needs reference log-probs"):
        load_config(write(tmp_path, "actor:\n  kl_coef: 0.01\n"))
    assert load_config(TINY, ["actor.kl_coef=0"]).actor.kl_coef == 0.0


def test_override_errors_name_the_override():
    with pytest.raises(ConfigError, match=r"override 'azr.k_refs=4'.*unknown key 'azr.k_refs'"):
        load_config(TINY, ["azr.k_refs=4"])
    with pytest.raises(ConfigError, match=r"override 'azr.k_references=x'.*expected int"):
        load_config(TINY, ["azr.k_references=x"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(TINY, ["azr.k_references"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "azr: [unclosed\n"))


def test_dump_round_trip(tmp_path):
    cfg = apply_overrides(Config(), ["azr.k_references=3"])
    p = write(tmp_path, dump_config(cfg))
    assert load_config(p) == cfg


def test_cli_reports_config_errors(tmp_path):
    p = write(tmp_path, "azr:\n  k_references: four\n")
    r = subprocess.run(
        [sys.executable, "-m", "megatron_azr.cli", "config", "--config", str(p)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "azr.k_references" in r.stderr and str(p) in r.stderr
