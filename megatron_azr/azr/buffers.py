"""Task buffers (spec §1.2, §3, §7.1): what the proposer conditions on and the solver trains on.

Three buffers: abduction and deduction start from the same seed triplets and then grow apart, each
with the valid proposals of its own type; induction holds induction tasks. Every valid proposal is
appended whatever its learnability (no dedup in self-play). Sampling takes a caller's seeded
``random.Random`` so batches are reproducible; nothing here keeps hidden random state.

Cap policies when a buffer is full: ``drop_new`` is the original's truncation to the first
``max_size`` entries (new valid tasks are discarded), ``evict_oldest`` keeps the newest.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Generic, Literal, TypeVar

from megatron_azr.azr.config import AZRConfig
from megatron_azr.azr.protocols import TaskType
from megatron_azr.azr.tasks import (
    InductionTask,
    TaskRecordError,
    Triplet,
    identity_induction_task,
    identity_triplet,
)

T = TypeVar("T", Triplet, InductionTask)
CapPolicy = Literal["drop_new", "evict_oldest"]


class BufferFileError(ValueError):
    """A buffer file that cannot be loaded; the message names the file and line."""


class TaskBuffer(Generic[T]):
    def __init__(
        self,
        task: TaskType,
        max_size: int,
        cap_policy: CapPolicy = "drop_new",
        entries: Iterable[T] = (),
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        self.task = task
        self.max_size = max_size
        self.cap_policy = cap_policy
        self._entries: list[T] = []
        self.add(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[T]:
        return iter(self._entries)

    @property
    def entries(self) -> Sequence[T]:
        return tuple(self._entries)

    def add(self, entries: Iterable[T]) -> int:
        """Append ``entries`` (each carries its ``step``), apply the cap; returns how many of
        them the buffer kept."""
        new = list(entries)
        if self.cap_policy == "drop_new":
            kept = new[: max(0, self.max_size - len(self._entries))]
            self._entries.extend(kept)
            return len(kept)
        self._entries.extend(new)
        overflow = len(self._entries) - self.max_size
        if overflow > 0:
            del self._entries[:overflow]
        return min(len(new), self.max_size)

    def sample(self, k: int, rng: random.Random) -> list[T]:
        """``min(k, len)`` entries uniformly without replacement (proposer references)."""
        return rng.sample(self._entries, min(k, len(self._entries)))

    def solver_batch(
        self,
        n: int,
        step: int,
        rng: random.Random,
        *,
        window: int = 1,
        accept: Callable[[T], bool] | None = None,
    ) -> list[T]:
        """The solver's tasks at step ``step`` (original strategy ``max_new``): the entries added
        within ``window`` steps (last step's valid proposals; the step-0 seeds at step 1) come
        first in random order, then a uniform fill without replacement from the rest. Entries
        ``accept`` rejects (a prompt over the length limit) are skipped. Only when the buffer has
        fewer acceptable entries than ``n`` are accepted ones repeated (uniformly), so the batch
        is short only when nothing at all is acceptable: it never fails on a small buffer."""
        is_new = [step - e.step <= window for e in self._entries]
        new = [e for e, fresh in zip(self._entries, is_new, strict=True) if fresh]
        old = [e for e, fresh in zip(self._entries, is_new, strict=True) if not fresh]
        rng.shuffle(new)
        rng.shuffle(old)
        batch: list[T] = []
        for entry in new + old:
            if len(batch) == n:
                return batch
            if accept is None or accept(entry):
                batch.append(entry)
        if not batch:
            return batch
        accepted = list(batch)
        while len(batch) < n:
            batch.append(rng.choice(accepted))
        return batch

    # ---- persistence

    def save(self, path: str | Path) -> None:
        """Write the buffer as JSONL, atomically (a crash leaves the old file intact)."""
        write_jsonl(path, (e.to_json() for e in self._entries))


def write_jsonl(path: str | Path, rows: Iterable[dict[str, object]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_records(
    path: str | Path, task: TaskType, limit: int | None = None
) -> list[Triplet] | list[InductionTask]:
    """Task records from a JSONL file in the official AZR format (or ours, which adds ``step``);
    the first ``limit`` lines when given (the seed truncation to B * S)."""
    path = Path(path)
    if not path.is_file():
        raise BufferFileError(f"buffer file not found: {path}")
    triplets: list[Triplet] = []
    induction: list[InductionTask] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if limit is not None and len(triplets) + len(induction) >= limit:
                break
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if task is TaskType.INDUCTION:
                    induction.append(InductionTask.from_json(data))
                else:
                    triplets.append(Triplet.from_json(data))
            except (json.JSONDecodeError, TaskRecordError) as e:
                raise BufferFileError(f"{path}:{lineno}: not a valid {task} task: {e}") from e
    return induction if task is TaskType.INDUCTION else triplets


def _triplets(records: list[Triplet] | list[InductionTask]) -> list[Triplet]:
    return [r for r in records if isinstance(r, Triplet)]


def _induction(records: list[Triplet] | list[InductionTask]) -> list[InductionTask]:
    return [r for r in records if isinstance(r, InductionTask)]


@dataclass
class Buffers:
    """The three buffers of one run."""

    abduction: TaskBuffer[Triplet]
    deduction: TaskBuffer[Triplet]
    induction: TaskBuffer[InductionTask]

    FILES: ClassVar[dict[TaskType, str]] = {
        TaskType.ABDUCTION: "abduction.jsonl",
        TaskType.DEDUCTION: "deduction.jsonl",
        TaskType.INDUCTION: "induction.jsonl",
    }

    def program_buffer(self, task: TaskType) -> TaskBuffer[Triplet]:
        if task is TaskType.ABDUCTION:
            return self.abduction
        if task is TaskType.DEDUCTION:
            return self.deduction
        raise ValueError(f"{task} has no triplet buffer")

    def programs(self) -> list[Triplet]:
        """The induction proposer's pool: abduction + deduction entries, duplicates kept (a seed
        program sits in both, as in the original)."""
        return [*self.abduction, *self.deduction]

    def sizes(self) -> dict[TaskType, int]:
        return {
            TaskType.ABDUCTION: len(self.abduction),
            TaskType.DEDUCTION: len(self.deduction),
            TaskType.INDUCTION: len(self.induction),
        }

    @classmethod
    def from_seeds(
        cls,
        triplets: Sequence[Triplet],
        induction: Sequence[InductionTask],
        max_size: int,
        cap_policy: CapPolicy = "drop_new",
    ) -> Buffers:
        """Abduction and deduction get the same seed triplets (as separate records)."""

        def copies() -> list[Triplet]:
            return [Triplet.from_json(t.to_json()) for t in triplets]

        return cls(
            abduction=TaskBuffer(TaskType.ABDUCTION, max_size, cap_policy, copies()),
            deduction=TaskBuffer(TaskType.DEDUCTION, max_size, cap_policy, copies()),
            induction=TaskBuffer(TaskType.INDUCTION, max_size, cap_policy, induction),
        )

    @classmethod
    def from_config(cls, cfg: AZRConfig, base_dir: str | Path = ".") -> Buffers:
        """Seed buffers of a fresh run: the official/previously generated seed files named in the
        config, truncated to ``batch_size * seed_batch_factor`` entries (paper: 256), or the
        identity seed when a path is empty."""
        limit = cfg.batch_size * cfg.seed_batch_factor
        base = Path(base_dir)
        triplets = (
            _triplets(load_records(base / cfg.seed_io_path, TaskType.DEDUCTION, limit))
            if cfg.seed_io_path
            else [identity_triplet()]
        )
        induction = (
            _induction(load_records(base / cfg.seed_induction_path, TaskType.INDUCTION, limit))
            if cfg.seed_induction_path
            else [identity_induction_task()]
        )
        return cls.from_seeds(triplets, induction, cfg.max_buffer_size, cfg.buffer_cap_policy)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.abduction.save(directory / self.FILES[TaskType.ABDUCTION])
        self.deduction.save(directory / self.FILES[TaskType.DEDUCTION])
        self.induction.save(directory / self.FILES[TaskType.INDUCTION])

    @classmethod
    def load(
        cls, directory: str | Path, max_size: int, cap_policy: CapPolicy = "drop_new"
    ) -> Buffers:
        directory = Path(directory)

        def records(task: TaskType) -> list[Triplet] | list[InductionTask]:
            return load_records(directory / cls.FILES[task], task)

        return cls(
            abduction=TaskBuffer(
                TaskType.ABDUCTION, max_size, cap_policy, _triplets(records(TaskType.ABDUCTION))
            ),
            deduction=TaskBuffer(
                TaskType.DEDUCTION, max_size, cap_policy, _triplets(records(TaskType.DEDUCTION))
            ),
            induction=TaskBuffer(
                TaskType.INDUCTION, max_size, cap_policy, _induction(records(TaskType.INDUCTION))
            ),
        )
