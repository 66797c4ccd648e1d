"""Run megatron-core on CPU (gloo): every patch it needs, in one place.

megatron-core assumes CUDA throughout. On a machine without it (CI, laptops) we apply the
smallest set of process-wide patches that makes the real training stack run unmodified: the
model, the pipeline schedules, DDP, the (distributed) optimizer and dist checkpointing. Each patch
was shown necessary on megatron-core 0.16.1 and is re-checked on 0.19.x; they touch private
names, so :func:`apply` asserts what it patches exists and is only ever called without CUDA.

1. RNG tracker: megatron forks a CUDA generator for every attention call (even at dropout 0);
   :class:`CPURNGStatesTracker` keeps the same ``add``/``fork`` contract on CPU generator states.
2. ``torch.cuda.current_device()`` (~90 call sites, mostly ``device=`` arguments, some in
   backward passes) returns the CPU device.
3. A :class:`torch.overrides.TorchFunctionMode` maps the remaining CUDA device arguments
   (``"cuda"``, ``torch.device("cuda", 0)``) to CPU, makes ``Tensor.cuda()`` the identity and
   reports CUDA type names from ``Tensor.type()`` (clip_grads and the distributed optimizer
   assert them). Torch function modes are not active inside autograd's backward, hence 2.
4. Stream/synchronisation calls (pipeline p2p, DDP grad sync) become no-ops.
5. Activation recompute (``tensor_parallel.checkpoint`` and ``CheckpointWithoutOutput``) saves
   the CPU generator, the CUDA generator and the tracker's states before a layer's forward and
   restores them to recompute it; the CUDA part goes through the module's
   ``_get_cuda_rng_state`` / ``_set_cuda_rng_state`` (0.16.1 and 0.19.x), which assert CUDA. There
   is no CUDA generator here, so they become an empty state and a no-op: the CPU generator and
   the tracker's (CPU) states are still saved and restored by megatron itself.
(Sequence parallel norms are not a patch: our local layer spec builds SP-aware norms.)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

logger = logging.getLogger(__name__)

_CPU = torch.device("cpu")
_APPLIED = False
_MODE: TorchFunctionMode | None = None

_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
}


def _is_cuda_device(d: Any) -> bool:
    if isinstance(d, torch.device):
        return d.type == "cuda"
    if isinstance(d, str):
        return d.startswith("cuda")
    return False


class _CudaToCpuMode(TorchFunctionMode):
    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return _CUDA_TYPE_NAMES.get(name, name)
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = _CPU
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], _CPU, *args[2:])
        return func(*args, **kwargs)


class CPURNGStatesTracker:
    """megatron's ``CudaRNGStatesTracker`` contract on the CPU default generator."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()
        self._is_initialized = False

    def is_initialized(self) -> bool:
        return self._is_initialized

    def get_states(self) -> dict[str, torch.Tensor]:
        return dict(self.states_)

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self._is_initialized = True
        self.states_ = states

    def add(self, name: str, seed: int) -> None:
        self._is_initialized = True
        if seed in self.seeds_:
            raise RuntimeError(f"seed {seed} already exists")
        if name in self.states_:
            raise RuntimeError(f"rng state {name} already exists")
        self.seeds_.add(seed)
        self.states_[name] = torch.Generator().manual_seed(seed).get_state()

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng") -> Iterator[None]:
        if name not in self.states_:
            raise RuntimeError(f"rng state {name} is not added")
        orig = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)


class _NullStream:
    """Stands in for ``torch.cuda.current_stream()``: waits and syncs are no-ops on CPU."""

    def wait_stream(self, other: Any) -> None: ...

    def wait_event(self, event: Any) -> None: ...

    def synchronize(self) -> None: ...

    def record_event(self, event: Any = None) -> None: ...


def apply() -> None:
    """Install the patches (idempotent). Never call this on a machine with CUDA."""
    global _APPLIED, _MODE
    if _APPLIED:
        return
    if torch.cuda.is_available():
        raise RuntimeError("cpu_compat.apply() must not run where CUDA is available")
    from megatron.core.tensor_parallel import random as mpu_random

    for attr in ("_CUDA_RNG_STATE_TRACKER", "_CUDA_RNG_STATE_TRACKER_INITIALIZED"):
        if not hasattr(mpu_random, attr):
            raise RuntimeError(f"megatron-core changed: tensor_parallel.random.{attr} is gone")
    mpu_random._CUDA_RNG_STATE_TRACKER = CPURNGStatesTracker()
    mpu_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    for attr in ("_get_cuda_rng_state", "_set_cuda_rng_state"):
        if not hasattr(mpu_random, attr):
            raise RuntimeError(f"megatron-core changed: tensor_parallel.random.{attr} is gone")
    mpu_random._get_cuda_rng_state = lambda *a, **k: torch.empty(0, dtype=torch.uint8)
    mpu_random._set_cuda_rng_state = lambda *a, **k: None

    # Distinct function objects: dynamo's trace rules reject one object under two names.
    patches = {
        "current_device": lambda: _CPU,
        "synchronize": lambda *a, **k: None,
        "current_stream": lambda *a, **k: _NullStream(),
        "manual_seed": lambda *a, **k: None,
    }
    for name, fn in patches.items():
        setattr(torch.cuda, name, fn)

    _MODE = _CudaToCpuMode()
    _MODE.__enter__()
    _APPLIED = True
    logger.info("megatron-core CPU compatibility layer applied (gloo, CPU RNG tracker)")
