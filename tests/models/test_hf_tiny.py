import json

import pytest

from megatron_azr.models.hf_tiny import make_tiny_model, train_tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_tokenizer_is_reproducible(tmp_path):
    a = json.loads((train_tokenizer(tmp_path / "a") / "tokenizer.json").read_text())
    b = json.loads((train_tokenizer(tmp_path / "b") / "tokenizer.json").read_text())
    assert a["model"]["vocab"] == b["model"]["vocab"] and len(a["model"]["vocab"]) == 512
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "a")
    text = "<think>x</think> <answer>```python\ndef f(a):\n    return a\n```</answer>"
    assert tok.decode(tok(text).input_ids) == text


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_tiny_model_loads_and_is_seeded(tmp_path, family):
    d1 = make_tiny_model(tmp_path / "m1", family, seed=3)
    d2 = make_tiny_model(tmp_path / "m2", family, seed=3)
    m1 = transformers.AutoModelForCausalLM.from_pretrained(d1)
    m2 = transformers.AutoModelForCausalLM.from_pretrained(d2)
    assert type(m1).__name__.lower().startswith(family)
    for (n1, p1), (_, p2) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.equal(p1, p2), n1
    assert ("model.layers.0.self_attn.q_proj.bias" in m1.state_dict()) == (family == "qwen2")
