"""What a user sees when a command is given something wrong: one line saying what and where,
not a traceback; and what `azr train --help` points to."""

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from processes import ROOT, child_env

from megatron_azr.config import ConfigError, load_config
from megatron_azr.telemetry.logs import setup_logging


def azr(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "megatron_azr.cli", *args]
    return subprocess.run(
        cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    ("override", "hint"),
    [
        ("azr.k_refrences=3", "did you mean 'azr.k_references'?"),
        ("run.stpes=3", "did you mean 'run.steps'?"),
        ("azrr.batch_size=3", "('azrr' is not a section), did you mean 'azr'?"),
        ("logging.wandb_mdoe=online", "did you mean 'logging.wandb_mode'?"),
    ],
)
def test_unknown_key_suggests_the_nearest(override, hint):
    with pytest.raises(ConfigError) as e:
        load_config("configs/tiny_cpu.yaml", [override])
    assert str(e.value).endswith(hint)


def test_unknown_key_in_a_file_suggests_the_nearest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("actor:\n  precison: bf16\n")
    with pytest.raises(ConfigError, match=r"unknown key 'actor.precison', did you mean 'actor.pre"):
        load_config(path)


def test_no_suggestion_for_a_key_like_nothing():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["azr.zzzz=1"])
    assert "did you mean" not in str(e.value)


def test_train_help_names_azr_config_and_the_sections():
    done = azr("train", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "`azr config --config FILE [KEY=VALUE ...]` prints the resolved config" in text
    assert "sections run, azr, model, parallel, actor, rollout, executor, logging" in text


def test_missing_model_path_is_one_line_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    done = azr("train", "model.card=tiny", "model.path=/nonexistent/model", f"run.output_dir={out}")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "azr: configuration error: model.path /nonexistent/model does not exist (give an HF "
        "directory or a checkpoint of `azr convert hf-to-mcore`; `azr model smollm2` builds "
        "SmolLM2-135M-Instruct's)"
    ]
    assert not out.exists()
    # Without a card the config itself names the problem, as one line too.
    done = azr("train", "model.path=/nonexistent/model", f"run.output_dir={out}")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert "model.path /nonexistent/model does not exist" in done.stderr and not out.exists()


def test_wrong_card_for_an_hf_directory_is_one_line(tmp_path):
    from megatron_azr.models.hf_tiny import make_tiny_model

    hf = make_tiny_model(tmp_path / "llama", "llama", seed=1)
    done = azr("train", "model.card=tiny", f"model.path={hf}", f"run.output_dir={tmp_path}/r")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert "model card 'tiny' does not match model.path's" in done.stderr
    assert "family is 'qwen2' in the card, 'llama' there" in done.stderr


def test_python_warnings_go_to_the_rank_log_only(tmp_path, capfd):
    log = tmp_path / "rank0.log"
    setup_logging("INFO", log, rank=0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            # What megatron says at import on a machine without Apex / Transformer Engine.
            warnings.warn("Apex is not installed. Falling back to Torch Norm", stacklevel=1)
        logging.getLogger("megatron_azr.x").warning("a warning of ours")
        for h in logging.getLogger().handlers:
            h.flush()
        err = capfd.readouterr().err
        assert "a warning of ours" in err and "Apex" not in err
        text = log.read_text()
        assert "Apex is not installed" in text and "a warning of ours" in text
    finally:
        setup_logging("INFO")  # no file: warnings are shown again


@pytest.mark.slow
def test_train_keeps_the_fallback_warnings_out_of_the_terminal(tmp_path):
    out = tmp_path / "run"
    done = azr("train", f"run.output_dir={out}", "run.steps=0", "logging.wandb_mode=disabled")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Falling back" not in done.stderr and "UserWarning" not in done.stderr
    assert "Falling back" in Path(out / "logs" / "rank0.log").read_text()
