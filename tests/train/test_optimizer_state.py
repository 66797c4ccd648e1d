"""Adam's state is allocated when the actor is built, not at its first step: the colocated
vLLM engine built next sizes itself against free GPU memory, so the actor must already hold
everything it keeps resident (finding 4 of issue 10)."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_adam_state_exists_before_the_first_step_and_changes_no_update(
    tiny_models, torchrun, tmp_path
):
    torchrun(1, "optimizer_state", {"out": str(tmp_path), "hf": tiny_models["qwen2"]})
    got = json.loads((tmp_path / "optimizer_state.json").read_text())
    for name, r in got.items():
        assert r["states"] == r["params"] > 0 and r["zero"], (name, r)
        # fp32 actor: exp_avg + exp_avg_sq, 8 bytes per parameter of the (DP-sharded) state
        assert r["optimizer_bytes"] == 8 * r["numel"], (name, r)
        early, lazy = r["losses"]
        assert early == lazy and r["weights_equal"], (name, r)
