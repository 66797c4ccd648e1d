"""Transformer Engine: lazy import, availability and FP8 recipe checks.

megatron-core turns ``TransformerConfig.fp8`` / ``fp8_recipe`` into TE recipe objects itself
(``DelayedScaling``, ``Float8CurrentScaling``, ``MXFP8BlockScaling`` from
``transformer_engine.common.recipe``) and wraps each layer in ``fp8_autocast``; this module only
decides whether the requested recipe can run here and says why not, before a job wastes a
cluster allocation.
"""

from __future__ import annotations

import importlib.util

# Minimum CUDA compute capability per recipe: FP8 GEMMs need Ada/Hopper (8.9), MXFP8's block
# scaling exists on Blackwell (10.0) only.
_MIN_CAPABILITY = {"delayed": (8, 9), "tensorwise": (8, 9), "mxfp8": (10, 0)}
_MIN_TE = {"delayed": "1.0", "tensorwise": "2.2", "mxfp8": "2.1"}

INSTALL_HINT = (
    "install it with `pip install 'transformer-engine[pytorch]'` (the `gpu` extra of "
    "megatron-azr) or use an NGC PyTorch container"
)


def te_installed() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def require_te() -> None:
    if not te_installed():
        raise ImportError(f"Transformer Engine is not installed: {INSTALL_HINT}")


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


def check_fp8(recipe: str) -> None:
    """Raise a clear error if FP8 ``recipe`` cannot run on this machine."""
    if recipe == "none":
        return
    if recipe not in _MIN_CAPABILITY:
        raise ValueError(f"unknown fp8 recipe {recipe!r} (delayed, tensorwise, mxfp8)")
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"fp8 recipe '{recipe}' needs a CUDA GPU")
    require_te()
    import transformer_engine

    have = _version_tuple(transformer_engine.__version__)
    if have < _version_tuple(_MIN_TE[recipe]):
        raise RuntimeError(
            f"fp8 recipe '{recipe}' needs Transformer Engine >= {_MIN_TE[recipe]}, "
            f"found {transformer_engine.__version__}"
        )
    cap = torch.cuda.get_device_capability()
    if cap < _MIN_CAPABILITY[recipe]:
        need = ".".join(map(str, _MIN_CAPABILITY[recipe]))
        raise RuntimeError(
            f"fp8 recipe '{recipe}' needs compute capability >= {need}; "
            f"{torch.cuda.get_device_name()} has {cap[0]}.{cap[1]}"
        )
