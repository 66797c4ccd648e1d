"""GPU telemetry. NVML cannot run here, so the sampler's bookkeeping (peaks per open phase, means
per step) is checked against a stand-in that serves scripted readings through NVML's API; the
real path (NVML, NVTX, CUDA-event timing of NCCL collectives) is the gpu-marked test."""

import types

import pytest
import torch
import torch.distributed as dist

from megatron_azr.telemetry.gpu import GIB, GpuSampler, open_sampler


class ScriptedNvml(types.SimpleNamespace):
    """NVML's query functions, answering from a list of (used bytes, util %, power mW)."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM = 1, 2

    class NVMLError(Exception):
        pass

    def __init__(self, readings):
        super().__init__(readings=list(readings), i=-1)

    def nvmlDeviceGetMemoryInfo(self, h):
        self.i += 1
        return types.SimpleNamespace(used=self.readings[min(self.i, len(self.readings) - 1)][0])

    def nvmlDeviceGetUtilizationRates(self, h):
        return types.SimpleNamespace(gpu=self.readings[min(self.i, len(self.readings) - 1)][1])

    def nvmlDeviceGetPowerUsage(self, h):
        return self.readings[min(self.i, len(self.readings) - 1)][2]

    def nvmlDeviceGetClockInfo(self, h, kind):
        return 1980 if kind == self.NVML_CLOCK_SM else 2619

    def nvmlShutdown(self):
        pass


def test_peaks_per_open_phase_and_step_means():
    gib = 2**30
    nvml = ScriptedNvml([(1 * gib, 10, 100_000), (5 * gib, 90, 500_000), (3 * gib, 50, 300_000),
                         (2 * gib, 30, 200_000)])  # fmt: skip
    s = GpuSampler(nvml, handle=None, interval=3600)  # no background samples in this test
    try:
        s.set_phases(("update",))  # reading 1
        s.set_phases(("update", "grad_sync"))  # reading 2: 5 GiB inside both
        s.set_phases(("update",))  # reading 3
        out = s.take()  # reading 4
    finally:
        s.close()
    assert out["gpu/mem_peak_gib/update"] == 5.0
    assert out["gpu/mem_peak_gib/grad_sync"] == 5.0
    assert out["gpu/mem_used_gib"] == 2.0
    assert out["gpu/util_pct"] == pytest.approx((10 + 90 + 50 + 30) / 4)
    assert out["gpu/power_w"] == pytest.approx((100 + 500 + 300 + 200) / 4)
    assert out["gpu/sm_clock_mhz"] == 1980 and gib == GIB


def test_absent_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert open_sampler(0.2) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nvml_and_nccl_timing_on_a_gpu(tmp_path):
    from megatron_azr.telemetry.config import ProfileConfig
    from megatron_azr.telemetry.profile import Telemetry
    from megatron_azr.train.dist import free_port

    torch.cuda.set_device(0)
    dist.init_process_group(
        "nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    try:
        with Telemetry(ProfileConfig(steps=[1], torch_trace=True), tmp_path) as tel:
            with tel.step(1), tel.phase("update"):
                x = torch.ones(64 << 20, device="cuda")  # 256 MiB
                dist.all_reduce(x)
            m = tel.end_step(1)
    finally:
        dist.destroy_process_group()
    assert m["comm/update/world/all_reduce/bytes"] == 256 << 20
    assert m["comm/update/world/all_reduce/time_s"] > 0
    assert m["gpu/mem_peak_gib/update"] >= 0.25 and m["gpu/torch_peak_gib/update"] >= 0.25
    assert m["gpu/power_w"] > 0 and m["gpu/sm_clock_mhz"] > 0
    assert (tmp_path / "profile" / "torch" / "rank0_step1.json").is_file()
