"""Hand freed host memory back to the OS after a CPU actor pass.

A step on CPU allocates and frees gigabytes of activations and logits. Those below glibc's mmap
threshold (which rises to 32 MiB after the first large free, and is 32 MiB under `azr train`:
``rollout/transport.py``) come from the heap, and glibc keeps freed heap memory resident
(fragmented, or below the trim threshold). Without a trim the resident size after each step
creeps up by gigabytes (Qwen2.5-0.5B in fp32 without recompute: 8.2 GB of live state, 11.9 GB
resident after the second update) and the rollout that follows stacks on top of it.
``malloc_trim(0)`` returns every free page (tens of milliseconds).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    trim: Callable[[int], int] | None = getattr(ctypes.CDLL(name), "malloc_trim", None)
    return trim


def release_freed() -> bool:
    """Return the heap's free memory to the OS; False where the C library has no
    ``malloc_trim`` (not glibc: nothing to do)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
