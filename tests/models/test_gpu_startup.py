"""Start-up decisions of the GPU path that are plain logic: Transformer Engine probe, APEX
gradient-accumulation fusion. They run on CPU against real (if deliberately broken) packages."""

import logging
import sys

import pytest

from megatron_azr.models import te


def _fake_te(root, pytorch_init: str) -> None:
    pkg = root / "transformer_engine"
    (pkg / "pytorch").mkdir(parents=True)
    (pkg / "__init__.py").write_text("__version__ = '2.8.0'\n")
    (pkg / "pytorch" / "__init__.py").write_text(pytorch_init)


@pytest.fixture
def te_on_path(tmp_path, monkeypatch):
    """Put a transformer_engine package of the test's making first on sys.path."""
    for name in [m for m in sys.modules if m.split(".")[0] == "transformer_engine"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    te.te_unusable_reason.cache_clear()
    yield tmp_path
    te.te_unusable_reason.cache_clear()
    for name in [m for m in sys.modules if m.split(".")[0] == "transformer_engine"]:
        del sys.modules[name]


def test_te_whose_extension_fails_to_load_counts_as_absent(te_on_path):
    """A TE wheel built for another CUDA is found on the path (find_spec says yes) but its
    shared library does not load: that is 'no TE' for transformer_impl=auto."""
    _fake_te(
        te_on_path,
        "raise OSError('libtransformer_engine.so: undefined symbol: cudaGetDriverEntryPoint')\n",
    )
    assert not te.te_installed()
    assert "undefined symbol" in (te.te_unusable_reason() or "")
    with pytest.raises(ImportError, match=r"does not import .*undefined symbol"):
        te.require_te()


def test_te_that_imports_counts_as_present(te_on_path):
    _fake_te(te_on_path, "")
    assert te.te_installed()
    te.require_te()


def test_gradient_accumulation_fusion_needs_apex(caplog):
    """Without APEX's fused_weight_gradient_mlp_cuda (this machine, and the `gpu` extra)
    megatron's ColumnParallelLinear (GPTModel's output layer, TE spec included) raises on the
    flag: it must be off on CUDA too, with a line in the log saying why."""
    from megatron.core.tensor_parallel import layers

    from megatron_azr.models.builder import gradient_accumulation_fusion

    assert not layers._grad_accum_fusion_available  # no APEX here
    with caplog.at_level(logging.INFO, logger="megatron_azr.models.builder"):
        assert gradient_accumulation_fusion(cuda=True) is False
    assert "fused_weight_gradient_mlp_cuda" in caplog.text
    assert gradient_accumulation_fusion(cuda=False) is False


def test_gradient_accumulation_fusion_with_apex_present(monkeypatch):
    from megatron.core.tensor_parallel import layers

    from megatron_azr.models.builder import gradient_accumulation_fusion

    monkeypatch.setattr(layers, "_grad_accum_fusion_available", True)
    assert gradient_accumulation_fusion(cuda=True) is True
