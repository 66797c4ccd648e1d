"""What a training run measures about itself: phases, communication, GPU, traces.

:class:`Telemetry` is the trainer's one handle (README "Profiling"):

* ``phase(name)``: a named span (rollout, generate, executor, update, grad_sync, optimizer,
  reshard, checkpoint). Inside it collectives are attributed to the phase, NVML and torch peaks
  are kept per phase, and on GPU the span is an NVTX range (what nsys shows) and a
  ``record_function`` range (what torch.profiler shows). On GPU its boundaries synchronise the
  device, so that its time is the GPU's and not the launch queue's.
* ``step(step)``: the torch.profiler trace of a traced step and rank, and the nsys capture range
  (``cudaProfilerStart`` before the first traced step, ``cudaProfilerStop`` after the last).
* ``end_step(step)`` (collective): every rank's phase times, comm stats and GPU figures are
  gathered to rank 0, which returns the step's metrics (its own comm stats, the straggler report
  over all ranks, the GPU figures' maxima) and appends every rank's record to
  ``<output_dir>/profile/ranks.jsonl``.
* ``close()``: the comm table and the straggler summary of the whole run, in the log.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megatron_azr.telemetry import comm
from megatron_azr.telemetry.config import ProfileConfig
from megatron_azr.telemetry.gpu import GIB, GpuSampler, open_sampler

logger = logging.getLogger(__name__)

BENCH_FILE = "comm_bench.json"


def profile_dir(out: Path) -> Path:
    return out / "profile"


class Telemetry:
    def __init__(self, cfg: ProfileConfig, out: Path) -> None:
        self.cfg, self.dir = cfg, profile_dir(out)
        self.rank = dist.get_rank()
        self.cuda = torch.cuda.is_available()
        self.acc = comm.CommAccounting().install() if cfg.comm_accounting else None
        self.gpu: GpuSampler | None = open_sampler(cfg.gpu_sample_s)
        self._open: list[str] = []
        self._times: dict[str, float] = {}
        self._torch_peak: dict[str, int] = {}
        self._stragglers: dict[str, list[tuple[float, float, int]]] = {}
        self._trace: Any = None
        self._captured = False

    # -- spans ---------------------------------------------------------------------------------

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        outer = self.acc.phase if self.acc is not None else ""
        with ExitStack() as stack:
            self._sync()
            if self.cuda:
                for p in self._open:  # the reset below must not lose an open phase's peak
                    self._torch_peak[p] = max(self._torch_peak.get(p, 0), _torch_peak())
                torch.cuda.reset_peak_memory_stats()
                stack.enter_context(torch.cuda.nvtx.range(name))
            stack.enter_context(torch.profiler.record_function(f"azr/{name}"))
            self._open.append(name)
            if self.acc is not None:
                self.acc.phase = name
            if self.gpu is not None:
                self.gpu.set_phases(tuple(self._open))
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self._sync()
                self._times[name] = self._times.get(name, 0.0) + time.perf_counter() - t0
                self._open.pop()
                if self.cuda:
                    self._torch_peak[name] = max(self._torch_peak.get(name, 0), _torch_peak())
                if self.acc is not None:
                    self.acc.phase = outer
                if self.gpu is not None:
                    self.gpu.set_phases(tuple(self._open))

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def phased(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` run inside ``phase(name)``."""

        def run(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                return fn(*args, **kwargs)

        return run

    def instrument(self, actor: Any, engine: Any, executor: Any) -> None:
        """Phases inside the trainer's coarse ones: the engine's generate, the executor, and
        the actor's gradient sync (megatron's ``finalize_model_grads_func``, which the schedule
        calls after the last backward), optimizer step and log-probs."""
        engine.generate = self.phased("generate", engine.generate)
        executor.run = self.phased("executor", executor.run)
        actor.logprobs = self.phased("logprobs", actor.logprobs)
        if actor.optimizer is not None:
            actor.optimizer.step = self.phased("optimizer", actor.optimizer.step)
            tconfig = actor.tconfig
            tconfig.finalize_model_grads_func = self.phased(
                "grad_sync", tconfig.finalize_model_grads_func
            )

    @contextmanager
    def step(self, step: int) -> Iterator[None]:
        traced = self.cfg.traces(self.rank, step)
        if traced and self.cuda and not self._captured:
            torch.cuda.profiler.start()  # nsys --capture-range=cudaProfilerApi starts here
            self._captured = True
        if traced and self.cfg.torch_trace:
            self._start_trace()
        try:
            yield
        finally:
            if self._trace is not None:
                self._stop_trace(step)
            if self._captured and step == max(self.cfg.steps):
                torch.cuda.profiler.stop()
                self._captured = False

    def _start_trace(self) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._trace = torch.profiler.profile(activities=activities, record_shapes=True)
        self._trace.start()

    def _stop_trace(self, step: int) -> None:
        trace, self._trace = self._trace, None
        trace.stop()
        path = trace_path(self.dir, self.rank, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        trace.export_chrome_trace(str(path))
        logger.info("torch.profiler trace of step %d: %s (open in ui.perfetto.dev)", step, path)

    # -- per step ------------------------------------------------------------------------------

    def end_step(self, step: int) -> dict[str, float]:
        """Collective: the step's telemetry metrics on rank 0 ({} elsewhere)."""
        record = self._take()
        gathered: list[Any] | None = [None] * dist.get_world_size() if self.rank == 0 else None
        ctx = self.acc.pause() if self.acc is not None else _nothing()
        with ctx:
            dist.gather_object(record, gathered, dst=0)
        if gathered is None:
            return {}
        self._write_ranks(step, gathered)
        out = {f"time/{p}_s": t for p, t in record["phases"].items()}
        if "time/update_s" in out and "time/grad_sync_s" in out:
            inner = out["time/grad_sync_s"] + out.get("time/optimizer_s", 0.0)
            out["time/forward_backward_s"] = out["time/update_s"] - inner
        out.update(record["comm"])
        out.update(self._straggler(gathered))
        out.update(_gpu_maxima(gathered))
        return out

    def _take(self) -> dict[str, Any]:
        phases, self._times = self._times, {}
        gpu = self.gpu.take() if self.gpu is not None else {}
        gpu.update({f"gpu/torch_peak_gib/{p}": b / GIB for p, b in self._torch_peak.items()})
        self._torch_peak = {}
        stats = self.acc.take() if self.acc is not None else {}
        return {"rank": self.rank, "phases": phases, "comm": comm.metrics(stats), "gpu": gpu}

    def _straggler(self, gathered: list[dict[str, Any]]) -> dict[str, float]:
        out: dict[str, float] = {}
        for p in sorted({p for r in gathered for p in r["phases"]}):
            times = [r["phases"].get(p, 0.0) for r in gathered]
            slowest = max(range(len(times)), key=times.__getitem__)
            spread = times[slowest] - min(times)
            out[f"straggler/{p}/max_s"] = times[slowest]
            out[f"straggler/{p}/spread_s"] = spread
            out[f"straggler/{p}/slowest_rank"] = float(gathered[slowest]["rank"])
            self._stragglers.setdefault(p, []).append((times[slowest], spread, slowest))
        return out

    def _write_ranks(self, step: int, gathered: list[dict[str, Any]]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / "ranks.jsonl").open("a", encoding="utf-8") as f:
            for r in gathered:
                f.write(json.dumps({"step": step, **r}) + "\n")

    # -- end of run ----------------------------------------------------------------------------

    def close(self) -> None:
        if self._trace is not None:
            self._trace.stop()
            self._trace = None
        if self.acc is not None:
            self.acc.take()
            if self.acc.total:
                text = comm.table(self.acc.total, load_baseline(self.dir / BENCH_FILE))
                logger.info("communication of this rank over the run:\n%s", text)
            self.acc.uninstall()
        if self.rank == 0 and self._stragglers:
            logger.info("straggler report over the run:\n%s", self._straggler_table())
        if self.gpu is not None:
            self.gpu.close()

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _straggler_table(self) -> str:
        head = f"{'phase':<18}{'mean max s':>12}{'mean spread s':>15}"
        lines = [head + f"{'slowest rank (steps)':>24}"]
        for p, rows in sorted(self._stragglers.items()):
            ranks = [r for _, _, r in rows]
            top = max(set(ranks), key=ranks.count)
            mean_max = sum(m for m, _, _ in rows) / len(rows)
            mean_spread = sum(s for _, s, _ in rows) / len(rows)
            lines.append(
                f"{p:<18}{mean_max:>12.3f}{mean_spread:>15.3f}"
                f"{f'{top} ({ranks.count(top)}/{len(rows)})':>24}"
            )
        return "\n".join(lines)


def trace_path(profile: Path, rank: int, step: int) -> Path:
    return profile / "torch" / f"rank{rank}_step{step}.json"


def _torch_peak() -> int:
    return int(torch.cuda.max_memory_allocated())


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _gpu_maxima(gathered: list[dict[str, Any]]) -> dict[str, float]:
    """Each GPU figure's maximum over ranks (memory peaks are what a budget must fit)."""
    out: dict[str, float] = {}
    for r in gathered:
        for k, v in r["gpu"].items():
            out[k] = max(out.get(k, -math.inf), v)
    return out


def load_baseline(path: Path) -> comm.Baseline | None:
    """comm-bench's results (``azr comm-bench`` writes them to ``<output_dir>/profile/``) as a
    lookup: busbw of (group, op) at the size nearest (in log scale) to the one asked."""
    if not path.is_file():
        return None
    rows = json.loads(path.read_text())["results"]

    def lookup(group: str, op: str, nbytes: float) -> float | None:
        same = [r for r in rows if r["group"] == group and r["op"] == op and r["busbw"] > 0]
        if not same or nbytes <= 0:
            return None
        near = min(same, key=lambda r: abs(math.log(r["bytes"] / nbytes)))
        return float(near["busbw"])

    return lookup
