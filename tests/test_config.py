import subprocess
import sys
from pathlib import Path

import pytest

from megatron_azr.config import Config, ConfigError, apply_overrides, dump_config, load_config

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
        load_config(p)


def test_overrides_are_typed(tmp_path):
    cfg = load_config(TINY, ["azr.k_references=4", "azr.proposer_zero_reward=0", "run.name=abl"])
    assert cfg.azr.k_references == 4
    assert cfg.azr.proposer_zero_reward == 0.0 and isinstance(cfg.azr.proposer_zero_reward, float)
    assert cfg.run.name == "abl"
    cfg = load_config(TINY, ["azr.task_types=[deduction]"])
    assert cfg.azr.task_types == ["deduction"]


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
