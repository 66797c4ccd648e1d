"""Moving one bucket of TP shards from the pipeline stage that owns it to the ranks that read it.

A bucket travels as *slots*: slot ``r`` is the flat concatenation of TP rank ``r``'s shards of the
bucket's parameters (same offsets in every slot). A transport is collective over the
model-parallel group (the TP x PP ranks of one data-parallel replica): every member calls
:meth:`move` for every bucket, in the same order, and readers get the slots back as views of
staging memory that stays valid until their next call.

* :class:`CollectiveTransport`: torch.distributed on one flat buffer per bucket: all-gather over
  TP (NCCL; one broadcast per TP rank on gloo, in place) then broadcast over PP, or, for a single
  reader, a send from each owning rank: NCCL on GPUs, gloo on CPU.
* :class:`SharedMemoryTransport`: CPU ranks on one host exchange through a shared-memory window
  in ``/dev/shm`` instead of gloo's loopback TCP, which pushes every byte through the kernel
  twice: writers copy their slot in, readers convert straight out of it. The window has two
  halves used alternately, so one barrier per bucket is enough to keep a writer off a half that
  a reader may still be reading: bucket ``k`` reuses the half of bucket ``k - 2``, which every
  reader finished before entering the barrier of bucket ``k - 1``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist

TransportName = Literal["auto", "collective", "shm"]
SHM_DIR = "/dev/shm"

# Copies this rank's shards of a bucket into a flat tensor of the bucket's slot length.
Pack = Callable[[torch.Tensor], None]
Slots = Mapping[int, torch.Tensor]  # TP rank -> its slot (the ones this rank reads)


@dataclass(frozen=True)
class ShardLayout:
    """Where this rank's shards sit: TP/PP sizes and ranks, and the groups to talk over.

    ``pp_group`` may be None when ``pp == 1``, ``mp_group`` (TP x PP of this data-parallel
    replica) when ``tp * pp == 1``.
    """

    tp: int
    tp_rank: int
    pp: int
    pp_rank: int
    tp_group: Any = None
    pp_group: Any = None
    mp_group: Any = None

    @property
    def mp_size(self) -> int:
        return self.tp * self.pp


@dataclass(frozen=True)
class Peer:
    """One member of the model-parallel group, as every member sees it."""

    rank: int  # global
    tp_rank: int
    pp_rank: int
    host: str
    shm_free: int  # bytes free in /dev/shm (0 without it)
    dtype: torch.dtype  # of its parameters
    device: str  # type of its parameters' device


@dataclass(frozen=True)
class Move:
    """One bucket to move. ``gather``: readers need every TP rank's slot (else only their own);
    ``dst``: the only reader (None: every member reads)."""

    owner: int  # pipeline rank holding the bucket's parameters
    gather: bool
    numel: int  # elements per slot
    dst: int | None


def _shm_free() -> int:
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def peers(layout: ShardLayout, dtype: torch.dtype, device: torch.device) -> tuple[list[Peer], Peer]:
    """Every member of the model-parallel group, and this rank (one all-gather of metadata)."""
    me = Peer(
        rank=dist.get_rank() if dist.is_initialized() else 0,
        tp_rank=layout.tp_rank,
        pp_rank=layout.pp_rank,
        host=socket.gethostname(),
        shm_free=_shm_free(),
        dtype=dtype,
        device=device.type,
    )
    if layout.mp_size == 1:
        return [me], me
    table: list[Any] = [None] * layout.mp_size
    dist.all_gather_object(table, me, group=layout.mp_group)
    return table, me


def shm_unavailable(table: list[Peer], window_bytes: int) -> str | None:
    """Why the shared-memory transport cannot serve this group (None: it can)."""
    if any(p.device != "cpu" for p in table):
        return "parameters are not in host memory"
    if len({p.host for p in table}) > 1:
        return "the model-parallel group spans several hosts"
    if min(p.shm_free for p in table) < window_bytes:
        return f"{SHM_DIR} has less than the {window_bytes / 2**20:.0f} MiB it needs free"
    return None


class Transport:
    """What both transports share: the group table and who reads what."""

    name = "base"
    buffers = 1  # staging buffers of one bucket each (the budget is divided among them)
    full_slots = False  # staging holds every TP slot even when a reader needs only its own

    def __init__(self, layout: ShardLayout, table: list[Peer], me: Peer) -> None:
        self.layout, self.table, self.me = layout, table, me
        self._at = {(p.pp_rank, p.tp_rank): p.rank for p in table}

    def rank_at(self, pp_rank: int, tp_rank: int) -> int:
        return self._at[(pp_rank, tp_rank)]

    def move(self, move: Move, pack: Pack) -> Slots | None:
        raise NotImplementedError

    def close(self) -> None: ...


class CollectiveTransport(Transport):
    name = "collective"

    def __init__(
        self,
        layout: ShardLayout,
        table: list[Peer],
        me: Peer,
        dtype: torch.dtype,
        device: torch.device,
        capacity: int,
    ) -> None:
        super().__init__(layout, table, me)
        self.dtype, self.device, self.capacity = dtype, device, capacity
        self._staging: torch.Tensor | None = None  # allocated once, reused by every bucket

    def _buffer(self, numel: int) -> torch.Tensor:
        if self._staging is None:
            self._staging = torch.empty(self.capacity, dtype=self.dtype, device=self.device)
        return self._staging[:numel]

    def move(self, move: Move, pack: Pack) -> Slots | None:
        if move.dst is not None:
            return self._to_dst(move, pack)
        lay, n = self.layout, move.numel
        if not move.gather:  # own shards only: from the owner stage over PP
            buf = self._buffer(n)
            if lay.pp_rank == move.owner:
                pack(buf)
            dist.broadcast(buf, src=self.rank_at(move.owner, lay.tp_rank), group=lay.pp_group)
            return {lay.tp_rank: buf}
        buf = self._buffer(lay.tp * n)
        slots = {r: buf[r * n : (r + 1) * n] for r in range(lay.tp)}
        if lay.pp_rank == move.owner:
            pack(slots[lay.tp_rank])
            if lay.tp > 1 and self.device.type == "cpu":
                # gloo's all-gather stages its output in a second buffer as large as the
                # bucket; broadcasts work in place.
                for r, slot in slots.items():
                    dist.broadcast(slot, src=self.rank_at(move.owner, r), group=lay.tp_group)
            elif lay.tp > 1:
                _all_gather(buf, slots[lay.tp_rank], lay.tp_group)
        if lay.pp > 1:
            dist.broadcast(buf, src=self.rank_at(move.owner, lay.tp_rank), group=lay.pp_group)
        return slots

    def _to_dst(self, move: Move, pack: Pack) -> Slots | None:
        """Each rank of the owner stage sends its slot straight to dst (point to point)."""
        lay, n, dst = self.layout, move.numel, move.dst
        assert dst is not None and move.gather
        me = self.me.rank
        if me != dst:
            if lay.pp_rank == move.owner:
                send = self._buffer(n)
                pack(send)
                dist.send(send, dst=dst)
            return None
        buf = self._buffer(lay.tp * n)
        slots = {r: buf[r * n : (r + 1) * n] for r in range(lay.tp)}
        for r, slot in slots.items():
            if not (lay.pp_rank == move.owner and r == lay.tp_rank):  # own shards: parameters
                dist.recv(slot, src=self.rank_at(move.owner, r))
        return slots

    def close(self) -> None:
        self._staging = None


class SharedMemoryTransport(Transport):
    name = "shm"
    buffers = 2
    full_slots = True

    def __init__(
        self, layout: ShardLayout, table: list[Peer], me: Peer, dtype: torch.dtype, capacity: int
    ) -> None:
        super().__init__(layout, table, me)
        self.capacity = capacity  # elements per half
        self._k = 0
        creator = min(p.rank for p in table)
        names: list[Any] = [f"{SHM_DIR}/megatron-azr-reshard-{uuid.uuid4().hex}"]
        dist.broadcast_object_list(names, src=creator, group=layout.mp_group)
        path = names[0]
        if me.rank == creator:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            try:
                os.ftruncate(fd, 2 * capacity * dtype.itemsize)
            finally:
                os.close(fd)
        dist.barrier(group=layout.mp_group)
        try:
            self._window: torch.Tensor | None = torch.from_file(
                path, shared=True, size=2 * capacity, dtype=dtype
            )
        finally:
            # Past this barrier every member has it mapped: unlinked now, the memory goes away
            # with the last mapping, even if a rank dies.
            dist.barrier(group=layout.mp_group)
            if me.rank == creator:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def move(self, move: Move, pack: Pack) -> Slots | None:
        assert self._window is not None
        lay, n = self.layout, move.numel
        half = self._window[(self._k % 2) * self.capacity :][: lay.tp * n]
        self._k += 1
        slots = {r: half[r * n : (r + 1) * n] for r in range(lay.tp)}
        assert move.dst is None or move.gather  # a single reader reads every TP rank's slot
        # Every slot of a moved bucket is read by someone, except a single reader's own: it
        # takes its shards from its parameters.
        if lay.pp_rank == move.owner and move.dst != self.me.rank:
            pack(slots[lay.tp_rank])
        dist.barrier(group=lay.mp_group)
        return slots if move.dst in (None, self.me.rank) else None

    def close(self) -> None:
        self._window = None


class LocalTransport(Transport):
    """No model parallelism: every shard is this rank's own parameter."""

    name = "local"

    def move(self, move: Move, pack: Pack) -> Slots | None:
        raise AssertionError("nothing moves without model parallelism")


def _all_gather(out: torch.Tensor, inp: torch.Tensor, group: Any) -> None:
    # torch >= 2.10 renames all_gather_into_tensor (and deprecates the old name).
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out, inp, group=group)
