"""A checkpoint written by the local spec (`azr convert hf-to-mcore`) loaded into a model whose
modules carry Transformer Engine extra state, through megatron's real dist checkpointing. TE
itself needs CUDA: a module with ``get_extra_state``/``set_extra_state`` stands in for it
(tests/train/dist_worker.py), which is what puts ``*._extra_state`` into the sharded state dict."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_missing_extra_state_loads_and_a_missing_weight_fails(tiny_models, torchrun, tmp_path):
    torchrun(1, "ckpt_extra_state", {"out": str(tmp_path), "hf": tiny_models["qwen2"]})
    got = json.loads((tmp_path / "extra_state.json").read_text())
    # The stand-in really adds extra state the checkpoint lacks, and the load still succeeds
    # with the checkpoint's weights (same log-probs as the model that saved it).
    assert got["extra_state"]["extra_keys"], got
    assert "error" not in got["extra_state"], got["extra_state"]
    assert got["extra_state"]["max_diff"] < 1e-6
    # A real parameter missing from the checkpoint is still an error, naming it.
    assert "core_attention.te_scale" in got["weight"]["error"], got["weight"]
