"""GPU telemetry through NVML (``nvidia-ml-py``): memory, utilisation, power and clocks.

A daemon thread samples this rank's device every ``interval`` seconds, and the phase tracker
samples at every phase boundary too (a phase shorter than the interval still gets its peak).
NVML sees the whole device: the actor's tensors, vLLM's KV cache and weights (allocated outside
torch's allocator in sleep mode), NCCL's buffers and the CUDA context, which is what a memory
budget of a colocated run must be read from. torch's own peak per phase comes from
``torch.cuda.max_memory_allocated``.

Absent without CUDA or without the package: :func:`open_sampler` returns None and nothing is
logged above DEBUG.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any

import torch

logger = logging.getLogger(__name__)

GIB = 2**30


def open_sampler(interval: float) -> GpuSampler | None:
    if interval <= 0 or not torch.cuda.is_available():
        return None
    try:
        import pynvml
    except ImportError:
        logger.debug("nvidia-ml-py is not installed: no NVML telemetry")
        return None
    try:
        pynvml.nvmlInit()
        handle = _handle(pynvml, torch.cuda.current_device())
    except pynvml.NVMLError as e:
        logger.debug("NVML unavailable (%s): no GPU telemetry", e)
        return None
    return GpuSampler(pynvml, handle, interval)


def _handle(nvml: Any, device: int) -> Any:
    """NVML's handle of torch's ``device``: by UUID, since NVML numbers every GPU of the node
    while torch numbers the visible ones (CUDA_VISIBLE_DEVICES); by index when all are
    visible (torch prints the UUID without NVML's "GPU-" prefix)."""
    uuid = str(torch.cuda.get_device_properties(device).uuid)
    try:
        return nvml.nvmlDeviceGetHandleByUUID(
            uuid if uuid[:4] in ("GPU-", "MIG-") else f"GPU-{uuid}"
        )
    except nvml.NVMLError:
        if os.environ.get("CUDA_VISIBLE_DEVICES"):
            raise
        return nvml.nvmlDeviceGetHandleByIndex(device)


class GpuSampler:
    def __init__(self, nvml: Any, handle: Any, interval: float) -> None:
        self.nvml, self.handle, self.interval = nvml, handle, interval
        self._lock = threading.Lock()
        self._open: tuple[str, ...] = ()
        self._reset()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="azr-nvml", daemon=True)
        self._thread.start()

    def _reset(self) -> None:
        self._peak: dict[str, int] = {}
        self._sums = {"util_pct": 0.0, "power_w": 0.0, "sm_clock_mhz": 0.0, "mem_clock_mhz": 0.0}
        self._n = 0
        self._used = 0

    def set_phases(self, open_phases: tuple[str, ...]) -> None:
        """The phases now open (outermost first); samples count toward each one's peak."""
        self._open = open_phases
        self.sample()

    def sample(self) -> None:
        nvml, h = self.nvml, self.handle
        try:
            used = int(nvml.nvmlDeviceGetMemoryInfo(h).used)
            util = float(nvml.nvmlDeviceGetUtilizationRates(h).gpu)
            power = nvml.nvmlDeviceGetPowerUsage(h) / 1e3
            sm = float(nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM))
            mem = float(nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM))
        except nvml.NVMLError as e:  # a query this GPU does not support: skip the sample
            logger.debug("NVML sample failed: %s", e)
            return
        with self._lock:
            self._used = used
            for phase in self._open:
                self._peak[phase] = max(self._peak.get(phase, 0), used)
            for key, v in (
                ("util_pct", util),
                ("power_w", power),
                ("sm_clock_mhz", sm),
                ("mem_clock_mhz", mem),
            ):
                self._sums[key] += v
            self._n += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def take(self) -> dict[str, float]:
        """This step's figures (means over its samples, peaks per phase), then a fresh step."""
        self.sample()
        with self._lock:
            out = {"gpu/mem_used_gib": self._used / GIB}
            out.update({f"gpu/{k}": v / max(self._n, 1) for k, v in self._sums.items()})
            out.update({f"gpu/mem_peak_gib/{p}": b / GIB for p, b in self._peak.items()})
            self._reset()
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(self.nvml.NVMLError):
            self.nvml.nvmlShutdown()
