import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from megatron_azr.config import ConfigError
from megatron_azr.config import load_config as load_config_file
from megatron_azr.models.config import ModelConfig, ModelSection, load_model_card

ROOT = Path(__file__).resolve().parents[2]
CARDS = sorted((ROOT / "configs" / "models").glob("*.yaml"))

# Published parameter counts (billions, embeddings included).
PUBLISHED = {
    "qwen2.5-0.5b": 0.49,
    "qwen2.5-1.5b": 1.54,
    "qwen2.5-coder-3b": 3.09,
    "qwen2.5-coder-7b": 7.62,
    "qwen2.5-coder-14b": 14.7,
    "qwen2.5-coder-32b": 32.5,
    "llama-3.1-8b": 8.03,
    "smollm2-135m": 0.135,
}


def test_every_card_loads_and_matches_published_size():
    names = {p.stem for p in CARDS}
    assert {"tiny", "qwen2.5-0.5b", "qwen2.5-coder-7b", "qwen2.5-coder-14b"} <= names
    for p in CARDS:
        card = load_model_card(p)
        assert card.name == p.stem
        if card.name in PUBLISHED:
            billions = card.num_parameters() / 1e9
            assert billions == pytest.approx(PUBLISHED[card.name], rel=0.01), card.name


def test_card_by_name_and_strict_keys(tmp_path):
    assert load_model_card("tiny") == load_model_card(ROOT / "configs/models/tiny.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs/models/tiny.yaml").read_text() + "num_heads: 3\n")
    with pytest.raises(ConfigError, match="num_heads"):
        load_model_card(bad)
    text = (ROOT / "configs/models/tiny.yaml").read_text()
    bad.write_text(text.replace("num_query_groups: 2", "num_query_groups: 3"))
    with pytest.raises(ConfigError, match="num_query_groups"):
        load_model_card(bad)


def test_model_section_fails_early_on_missing_card():
    assert ModelSection(card="qwen2.5-coder-7b").arch.hidden_size == 3584
    with pytest.raises(ValueError, match="model card not found"):
        ModelSection(card="configs/models/nope.yaml")


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_hf_config_round_trip(tmp_path, family):
    pytest.importorskip("torch")
    from megatron_azr.models.hf_io import hf_config
    from megatron_azr.models.hf_tiny import make_tiny_model

    factor = 8.0 if family == "llama" else None
    d = make_tiny_model(tmp_path / family, family, llama3_rope_factor=factor)
    card = ModelConfig.from_hf_dir(d)
    assert card.qkv_bias == (family == "qwen2") and card.rope_scaling_factor == factor
    import torch

    regenerated = ModelConfig.from_hf(hf_config(card, torch.float32), name=card.name)
    card.check_matches(regenerated, "regenerated config")


def test_unsupported_hf_configs_are_rejected():
    base = json.loads(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "vocab_size": 512,
            }
        )
    )
    assert ModelConfig.from_hf(base).num_query_groups == 4
    with pytest.raises(ValueError, match="model_type"):
        ModelConfig.from_hf({**base, "model_type": "mistral"})
    with pytest.raises(ValueError, match="rope_scaling"):
        ModelConfig.from_hf({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ValueError, match="high_freq_factor"):
        ModelConfig.from_hf(
            {
                **base,
                "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 2.0},
            }
        )


def test_check_matches_names_the_difference():
    a = load_model_card("tiny")
    b = ModelConfig(**{**a.__dict__, "norm_eps": 1e-5})
    with pytest.raises(ValueError, match="norm_eps"):
        a.check_matches(b, "the weights")


def test_run_config_points_at_a_card():
    from megatron_azr.config import load_config

    cfg = load_config(ROOT / "configs/tiny_cpu.yaml", ["model.card=qwen2.5-coder-7b"])
    assert cfg.model.arch.num_query_groups == 4 and cfg.actor.precision == "fp32"
    with pytest.raises(ConfigError, match=r"section 'model'.*not found"):
        load_config(ROOT / "configs/tiny_cpu.yaml", ["model.card=nope"])
    with pytest.raises(ConfigError, match="vpp"):
        load_config(ROOT / "configs/tiny_cpu.yaml", ["parallel.vpp=2"])


# A GGUF-converted checkpoint's config.json (SmolLM2-like): untied head, rms_norm_eps 1e-6 stored
# as float32.
GGUF_LIKE = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "rms_norm_eps": 9.999999974752427e-07,
    "rope_theta": 100000.0,
    "tie_word_embeddings": False,
}


def _hf_dir(tmp_path: Path, **changes) -> Path:
    d = tmp_path / "hf"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps({**GGUF_LIKE, **changes}))
    return d


def _card(tmp_path: Path, **changes) -> Path:
    card = {
        "name": "mine",
        "hf_id": "org/mine",
        "family": "llama",
        "num_layers": 2,
        "hidden_size": 64,
        "ffn_hidden_size": 128,
        "num_attention_heads": 4,
        "num_query_groups": 2,
        "vocab_size": 512,
        "rope_theta": 100000.0,
        "norm_eps": 1.0e-6,
        "tie_word_embeddings": False,
        **changes,
    }
    p = tmp_path / "mine.yaml"
    p.write_text(yaml.safe_dump(card))
    return p


def test_hf_directory_is_the_architecture_without_a_card(tmp_path):
    d = _hf_dir(tmp_path)
    arch = ModelSection(path=str(d)).arch
    assert arch == ModelConfig.from_hf_dir(d)
    assert (arch.family, arch.num_layers, arch.tie_word_embeddings) == ("llama", 2, False)
    assert arch.norm_eps == 9.999999974752427e-07


def test_a_card_given_with_an_hf_directory_must_agree(tmp_path):
    d = _hf_dir(tmp_path)
    # float32-rounded epsilon: equal within the tolerance; the card names the model.
    arch = ModelSection(card=str(_card(tmp_path)), path=str(d)).arch
    assert (arch.name, arch.hf_id) == ("mine", "org/mine")
    assert arch.architecture() == ModelConfig.from_hf_dir(d).architecture()
    # A genuinely different field, caught at config load with both values on one line.
    cfg_file = tmp_path / "run.yaml"
    card = _card(tmp_path, tie_word_embeddings=True, norm_eps=1e-5)
    cfg_file.write_text(f"model:\n  card: {card}\n  path: {d}\n")
    with pytest.raises(ConfigError) as e:
        load_config_file(cfg_file)
    msg = str(e.value)
    assert "\n" not in msg and str(cfg_file) in msg and str(d / "config.json") in msg
    assert "tie_word_embeddings is True in the card, False there" in msg
    assert "norm_eps is 1e-05 in the card, 9.999999974752427e-07 there" in msg
    assert "num_layers" not in msg


def test_without_an_hf_directory_the_card_is_the_architecture(tmp_path):
    assert ModelSection().arch == load_model_card("tiny")  # random init: the tiny default
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()  # a checkpoint directory has no config.json
    assert ModelSection(card="qwen2.5-coder-7b", path=str(ckpt)).arch.hidden_size == 3584
    with pytest.raises(ValueError, match=r"ckpt has no config\.json, and no model\.card"):
        ModelSection(path=str(ckpt))
    with pytest.raises(ValueError, match=r"nope does not exist, and no model\.card"):
        ModelSection(path=str(tmp_path / "nope"))


def test_float_fields_compare_with_a_relative_tolerance():
    a = load_model_card("tiny")
    a.check_matches(ModelConfig(**{**a.__dict__, "norm_eps": float(np.float32(1e-6))}), "x")
    a.check_matches(ModelConfig(**{**a.__dict__, "rope_theta": 10000.0 * (1 + 1e-9)}), "x")
    with pytest.raises(ValueError, match=r"rope_theta is 10000\.0 in the card, 10001\.0 there"):
        a.check_matches(ModelConfig(**{**a.__dict__, "rope_theta": 10001.0}), "x")
