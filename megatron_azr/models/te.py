"""Transformer Engine: lazy import, availability and FP8 recipe checks.

megatron-core turns ``TransformerConfig.fp8`` / ``fp8_recipe`` into TE recipe objects itself
(``DelayedScaling``, ``Float8CurrentScaling``, ``MXFP8BlockScaling`` from
``transformer_engine.common.recipe``) and wraps each layer in ``fp8_autocast``; this module only
decides whether the requested recipe can run here and says why not, before a job wastes a
cluster allocation.
"""

from __future__ import annotations

import functools
import logging

logger = logging.getLogger(__name__)

# Minimum CUDA compute capability per recipe: FP8 GEMMs need Ada/Hopper (8.9), MXFP8's block
# scaling exists on Blackwell (10.0) only.
_MIN_CAPABILITY = {"delayed": (8, 9), "tensorwise": (8, 9), "mxfp8": (10, 0)}
_MIN_TE = {"delayed": "1.0", "tensorwise": "2.2", "mxfp8": "2.1"}

INSTALL_HINT = (
    "install it with `pip install 'transformer-engine[pytorch]'` (the `gpu` extra of "
    "megatron-azr) or use an NGC PyTorch container"
)


@functools.cache
def te_unusable_reason() -> str | None:
    """None when ``transformer_engine.pytorch`` imports, else why not.

    The import, not the package's presence, decides: a wheel built for another CUDA or torch
    is found on the path but its extension fails to load (``OSError``/``RuntimeError`` from
    the shared library, not only ``ImportError``), and ``transformer_impl=auto`` must then fall
    back to the local spec instead of failing later inside megatron's TE wrappers.
    """
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def te_installed() -> bool:
    return te_unusable_reason() is None


def require_te() -> None:
    why = te_unusable_reason()
    if why is not None:
        raise ImportError(f"Transformer Engine does not import ({why}): {INSTALL_HINT}")


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
