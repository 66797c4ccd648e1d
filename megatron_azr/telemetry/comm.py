"""Communication accounting: every torch.distributed collective, counted where it is issued.

The hook sits on the methods of ``torch.distributed.ProcessGroup`` (``allreduce``,
``all_gather_single``, ``send``, ...), the one place that every Python-level collective passes
through with its group and tensors: ``dist.all_reduce`` and friends, megatron-core's module-level
aliases (``dist_all_gather_func = torch.distributed.all_gather_into_tensor`` is bound at import,
so wrapping the ``torch.distributed`` functions would miss it), the object collectives, and the
coalesced fast paths of DDP's gradient sync. A ``TorchFunctionMode``/``TorchDispatchMode`` would
see them too, but would also run Python on every tensor op; this costs one Python call per
collective (measured in benchmarks/RESULTS.md, "Profiling: overhead of the accounting").
Collectives issued from C++ (vLLM's own communicators, torch's C++ DDP reducer) are not seen.

Sizes follow nccl-tests (doc/PERFORMANCE.md): ``S`` is the whole buffer of an all-reduce or
broadcast, the gathered output of an all-gather, the scattered input of a reduce-scatter.
``algbw = S / t``, ``busbw = algbw * factor(op, n)``. Time is measured for synchronous
collectives only: wall clock around issue and completion on CPU (gloo), CUDA events on the
current stream on GPU (read when the step's stats are taken, never blocking in between).
Asynchronous ones (``async_op=True``, point-to-point sends/receives) are counted with their
bytes but not timed: their completion is not observable without waiting on them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

GB = 1e9  # nccl-tests' GB/s

# busbw = algbw * factor(n): nccl-tests doc/PERFORMANCE.md "Summary" (gather, scatter and
# send/receive as nccl-tests' gather_perf, scatter_perf and sendrecv_perf compute them).
_BUS_FACTORS: dict[str, Callable[[int], float]] = {
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "all_to_all": lambda n: (n - 1) / n,
    "gather": lambda n: (n - 1) / n,
    "scatter": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0,
    "reduce": lambda n: 1.0,
    "send": lambda n: 1.0,
    "recv": lambda n: 1.0,
    "barrier": lambda n: 0.0,
}

# ProcessGroup method -> (op, index of the argument whose tensors are S, multiplied by group
# size?). Methods absent from a torch version are skipped.
_METHODS: dict[str, tuple[str, int, bool]] = {
    "allreduce": ("all_reduce", 0, False),
    "allreduce_coalesced": ("all_reduce", 0, False),
    "broadcast": ("broadcast", 0, False),
    "reduce": ("reduce", 0, False),
    "allgather": ("all_gather", 0, False),
    "all_gather_single": ("all_gather", 0, False),
    "_allgather_base": ("all_gather", 0, False),
    "allgather_coalesced": ("all_gather", 0, False),
    "allgather_into_tensor_coalesced": ("all_gather", 0, False),
    "all_gather_single_coalesced": ("all_gather", 0, False),
    "reduce_scatter": ("reduce_scatter", 1, False),
    "reduce_scatter_single": ("reduce_scatter", 1, False),
    "_reduce_scatter_base": ("reduce_scatter", 1, False),
    "reduce_scatter_tensor_coalesced": ("reduce_scatter", 1, False),
    "reduce_scatter_single_coalesced": ("reduce_scatter", 1, False),
    "alltoall": ("all_to_all", 1, False),
    "alltoall_base": ("all_to_all", 1, False),
    "gather": ("gather", 1, True),
    "scatter": ("scatter", 0, True),
    "send": ("send", 0, False),
    "recv": ("recv", 0, False),
    "recv_anysource": ("recv", 0, False),
    "barrier": ("barrier", -1, False),
}

# megatron-core's group_desc -> the short names of the comm table.
_SHORT_NAMES = {
    "default_pg": "world",
    "TENSOR_MODEL_PARALLEL_GROUP": "tp",
    "PIPELINE_MODEL_PARALLEL_GROUP": "pp",
    "DATA_PARALLEL_GROUP": "dp",
    # Without context parallelism megatron's DP group is this one (the project has no CP).
    "DATA_PARALLEL_GROUP_WITH_CP": "dp",
    "CONTEXT_PARALLEL_GROUP": "cp",
    "MODEL_PARALLEL_GROUP": "mp",
    "EMBEDDING_GROUP": "embd",
    "POSITION_EMBEDDING_GROUP": "pos_embd",
    "TENSOR_AND_DATA_PARALLEL_GROUP": "tp_dp",
    "TENSOR_AND_DATA_PARALLEL_GROUP_WITH_CP": "tp_dp",
    "TENSOR_AND_CONTEXT_PARALLEL_GROUP": "tp_cp",
    "INTRA_DISTRIBUTED_OPTIMIZER_INSTANCE_GROUP": "dist_opt",
}


def bus_factor(op: str, n: int) -> float:
    """nccl-tests' correction from algorithm to bus bandwidth for ``op`` over ``n`` ranks."""
    return _BUS_FACTORS[op](n) if n > 0 else 0.0


def algbw(nbytes: float, seconds: float) -> float:
    """Algorithm bandwidth in GB/s (10^9 bytes, as nccl-tests)."""
    return nbytes / seconds / GB if seconds > 0 else 0.0


def busbw(op: str, nbytes: float, seconds: float, n: int) -> float:
    """Bus bandwidth in GB/s: ``algbw * bus_factor(op, n)``."""
    return algbw(nbytes, seconds) * bus_factor(op, n)


def group_name(pg: Any) -> str:
    """The comm table's name of a process group: tp, pp, dp, mp, world, ... (megatron-core
    labels its groups with ``group_desc``); unlabelled groups by their torch name."""
    desc = getattr(pg, "group_desc", "") or ""
    if desc in _SHORT_NAMES:
        return _SHORT_NAMES[desc]
    if desc and desc != "undefined":
        return desc.lower().removesuffix("_group")
    return f"pg{pg.group_name}"


@dataclass(frozen=True)
class Key:
    phase: str
    group: str
    size: int  # ranks in the group
    op: str


@dataclass
class CommStat:
    count: int = 0
    bytes: int = 0
    timed_count: int = 0
    timed_bytes: int = 0
    time_s: float = 0.0

    def add(self, other: CommStat) -> None:
        self.count += other.count
        self.bytes += other.bytes
        self.timed_count += other.timed_count
        self.timed_bytes += other.timed_bytes
        self.time_s += other.time_s

    def algbw(self) -> float:
        return algbw(self.timed_bytes, self.time_s)

    def busbw(self, op: str, n: int) -> float:
        return busbw(op, self.timed_bytes, self.time_s, n)


Stats = dict[Key, CommStat]


def _nbytes(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (list, tuple)):
        return sum(_nbytes(v) for v in x)
    return 0


def _first_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (list, tuple)):
        for v in x:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _is_sync(pg: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """A collective the caller waits for at once (``async_op=False``), outside coalescing."""
    opts = kwargs.get("opts", args[-1] if args else None)
    if not getattr(opts, "asyncOp", True):
        return pg not in dist.distributed_c10d._world.pg_coalesce_state
    return False


class CommAccounting:
    """Counts the collectives of this process while installed (:meth:`install`), keyed by
    :class:`Key`; ``phase`` is the name the caller is in (the trainer's phase tracker sets it).
    Process-wide: one instance at a time."""

    def __init__(self) -> None:
        self.phase = "other"
        self.paused = False
        self._step: Stats = {}
        self._total: Stats = {}
        self._pending: list[tuple[CommStat, Any, Any]] = []  # CUDA events to read at take()
        self._names: dict[Any, tuple[str, int]] = {}

    # -- hooks -------------------------------------------------------------------------------

    def install(self) -> CommAccounting:
        global _ACTIVE
        if _ACTIVE is not None and _ACTIVE is not self:
            raise RuntimeError("another CommAccounting is installed")
        _ACTIVE = self
        _patch()
        return self

    def uninstall(self) -> None:
        global _ACTIVE
        if _ACTIVE is self:
            _ACTIVE = None
            _unpatch()

    def __enter__(self) -> CommAccounting:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    @contextmanager
    def pause(self) -> Iterator[None]:
        """Collectives inside are not counted (the telemetry's own gathers)."""
        before, self.paused = self.paused, True
        try:
            yield
        finally:
            self.paused = before

    def _group(self, pg: Any) -> tuple[str, int]:
        named = self._names.get(pg)
        if named is None:
            named = self._names[pg] = (group_name(pg), pg.size())
        return named

    def issue(
        self,
        pg: Any,
        orig: Callable[..., Any],
        spec: tuple[str, int, bool],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        op, sized, times_n = spec
        name, n = self._group(pg)
        nbytes = (_nbytes(args[sized]) if 0 <= sized < len(args) else 0) * (n if times_n else 1)
        stat = self._step.setdefault(Key(self.phase, name, n, op), CommStat())
        stat.count += 1
        stat.bytes += nbytes
        t = _first_tensor(args)
        cuda = t is not None and t.is_cuda
        if not _is_sync(pg, args, kwargs) or (cuda and torch.cuda.is_current_stream_capturing()):
            return orig(pg, *args, **kwargs)  # not timed (nor CUDA events in a graph capture)
        if cuda:
            work = self._cuda_timed(stat, orig, pg, args, kwargs)
        else:
            t0 = time.perf_counter()
            work = orig(pg, *args, **kwargs)
            work.wait()
            stat.time_s += time.perf_counter() - t0
        stat.timed_count += 1
        stat.timed_bytes += nbytes
        return work

    def _cuda_timed(
        self,
        stat: CommStat,
        orig: Callable[..., Any],
        pg: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Issue between two events on the current stream, read at :meth:`take`."""
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        work = orig(pg, *args, **kwargs)
        work.wait()  # the current stream waits for the collective (the caller does too)
        end.record()
        self._pending.append((stat, start, end))
        return work

    # -- results -----------------------------------------------------------------------------

    def take(self) -> Stats:
        """The stats since the last call (added to the run's totals); reads pending CUDA
        events, which waits for the collectives issued so far."""
        if self._pending:
            torch.cuda.synchronize()  # events may sit on several streams
            for stat, start, end in self._pending:
                stat.time_s += start.elapsed_time(end) / 1e3
            self._pending.clear()
        step, self._step = self._step, {}
        for key, stat in step.items():
            self._total.setdefault(key, CommStat()).add(stat)
        return step

    @property
    def total(self) -> Stats:
        return self._total


_ACTIVE: CommAccounting | None = None
# The class attributes replaced: pybind11's method descriptors (``getattr`` on the class gives
# the unbound function, which would not bind ``self`` once set back).
_ORIGINALS: dict[str, Any] = {}


def _hook(name: str, orig: Callable[..., Any], spec: tuple[str, int, bool]) -> Callable[..., Any]:
    def hooked(pg: Any, *args: Any, **kwargs: Any) -> Any:
        acc = _ACTIVE
        if acc is None or acc.paused:
            return orig(pg, *args, **kwargs)
        return acc.issue(pg, orig, spec, args, kwargs)

    hooked.__name__ = name
    hooked.__doc__ = orig.__doc__
    return hooked


def _patch() -> None:
    if _ORIGINALS:
        return
    cls = dist.ProcessGroup
    for name, spec in _METHODS.items():
        if name in cls.__dict__:
            _ORIGINALS[name] = cls.__dict__[name]
            setattr(cls, name, _hook(name, getattr(cls, name), spec))


def _unpatch() -> None:
    for name, raw in _ORIGINALS.items():
        setattr(dist.ProcessGroup, name, raw)
    _ORIGINALS.clear()


# -- reporting ----------------------------------------------------------------------------------


def metrics(stats: Stats) -> dict[str, float]:
    """Flat metrics of one step: ``comm/<phase>/<group>/<op>/{count,bytes,time_s,algbw_gbps,
    busbw_gbps}`` (bandwidths only where something was timed)."""
    out: dict[str, float] = {}
    for key, s in sorted(stats.items(), key=lambda kv: _order(kv[0])):
        prefix = f"comm/{key.phase}/{key.group}/{key.op}"
        out[f"{prefix}/count"] = float(s.count)
        out[f"{prefix}/bytes"] = float(s.bytes)
        if s.timed_count:
            out[f"{prefix}/time_s"] = s.time_s
            out[f"{prefix}/algbw_gbps"] = s.algbw()
            out[f"{prefix}/busbw_gbps"] = s.busbw(key.op, key.size)
    return out


def _order(key: Key) -> tuple[str, str, str]:
    return (key.phase, key.group, key.op)


def _fmt_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


Baseline = Callable[[str, str, float], float | None]


def table(stats: Stats, baseline: Baseline | None = None) -> str:
    """The end-of-run comm table: one row per (phase, group, op). ``baseline(group, op,
    bytes)`` gives comm-bench's busbw at the nearest size, shown as the share reached."""
    head = (
        f"{'phase':<12}{'group':<10}{'op':<15}{'count':>8}{'bytes':>12}{'avg size':>12}"
        f"{'time ms':>10}{'algbw':>9}{'busbw':>9}{'of bench':>10}"
    )
    lines = [head, "-" * len(head)]
    for key, s in sorted(stats.items(), key=lambda kv: _order(kv[0])):
        avg = s.bytes / s.count if s.count else 0.0
        timed = s.timed_count > 0 and s.time_s > 0
        bw = s.busbw(key.op, key.size) if timed else 0.0
        ref = baseline(key.group, key.op, avg) if (baseline and timed) else None
        measured = f"{s.time_s * 1e3:>10.1f}{s.algbw():>9.2f}{bw:>9.2f}"
        lines.append(
            f"{key.phase:<12}{f'{key.group}({key.size})':<10}{key.op:<15}{s.count:>8}"
            f"{_fmt_bytes(s.bytes):>12}{_fmt_bytes(avg):>12}"
            + (measured if timed else f"{'-':>10}{'-':>9}{'-':>9}")
            + (f"{bw / ref:>10.0%}" if ref else f"{'-':>10}")
        )
    lines.append("bandwidths in GB/s (nccl-tests' algbw and busbw); '-': asynchronous, not timed")
    return "\n".join(lines)
