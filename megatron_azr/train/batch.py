"""Self-play samples -> packed micro-batches (dynamic batching by token budget).

Every rank receives the same global list of samples. :func:`partition_dp` deals them to
data-parallel ranks balancing tokens (longest first, to the lightest rank); :func:`pack` bins
each rank's share into micro-batches of at most ``max_tokens`` tokens (first-fit decreasing), and
:func:`collate` lays one bin out as a single row: sequences back to back, padded to a multiple
the kernels need; ``cu_seqlens`` (THD) keeps attention and positions inside each sequence.
Everything is deterministic, so all ranks of a pipeline agree on the micro-batches without
communicating.

Position ``i`` of a row predicts token ``i + 1``; ``response_pos`` lists, in order, the
positions whose token ``i + 1`` is a response token of the same sequence. Response token ``j``
of a sample therefore sits at position ``start + len(prompt) + j - 1``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeqSpec:
    """What packing needs to know about one sample (index into the global sample list)."""

    index: int
    prompt_len: int
    response_len: int

    @property
    def length(self) -> int:
        return self.prompt_len + self.response_len


@dataclass
class MicroBatch:
    tokens: torch.Tensor  # [1, S] int64
    position_ids: torch.Tensor  # [1, S] position within each sequence
    targets: torch.Tensor  # [1, S] next token (0 where none)
    # [R] int64: the positions whose target is a response token, in order (built here, on the
    # host: finding them on the device would cost a sync per micro-batch)
    response_pos: torch.Tensor
    advantages: torch.Tensor  # [1, S] float
    weights: torch.Tensor  # [1, S] float: the loss weight of each token (train/loss.py)
    old_logprobs: torch.Tensor  # [1, S] float
    ref_logprobs: torch.Tensor | None  # [1, S] float
    seq_lens: list[int]  # packed sequence lengths, then the padding (if any) as one more
    seqs: list[SeqSpec]
    starts: list[int]  # row offset of each sequence in ``seqs``

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[1])

    def cu_seqlens(self) -> torch.Tensor:
        lens = torch.tensor([0, *self.seq_lens], dtype=torch.int32)
        return torch.cumsum(lens, 0, dtype=torch.int32)

    def to(self, device: torch.device | str) -> MicroBatch:
        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return MicroBatch(
            tokens=self.tokens.to(device),
            position_ids=self.position_ids.to(device),
            targets=self.targets.to(device),
            response_pos=self.response_pos.to(device),
            advantages=self.advantages.to(device),
            weights=self.weights.to(device),
            old_logprobs=self.old_logprobs.to(device),
            ref_logprobs=mv(self.ref_logprobs),
            seq_lens=self.seq_lens,
            seqs=self.seqs,
            starts=self.starts,
        )


def partition_dp(seqs: Sequence[SeqSpec], dp: int) -> list[list[SeqSpec]]:
    """Deal sequences to ``dp`` ranks, balancing token counts (LPT), deterministically."""
    parts: list[list[SeqSpec]] = [[] for _ in range(dp)]
    loads = [0] * dp
    for s in sorted(seqs, key=lambda s: (-s.length, s.index)):
        r = min(range(dp), key=lambda i: (loads[i], i))
        parts[r].append(s)
        loads[r] += s.length
    return [sorted(p, key=lambda s: s.index) for p in parts]


def pack(seqs: Sequence[SeqSpec], max_tokens: int, min_bins: int = 1) -> list[list[SeqSpec]]:
    """First-fit decreasing into bins of at most ``max_tokens`` tokens (a longer sequence gets
    a bin of its own). At least ``min_bins`` bins; extra ones are empty (pipeline schedules
    want a minimum number of micro-batches)."""
    bins: list[list[SeqSpec]] = []
    loads: list[int] = []
    for s in sorted(seqs, key=lambda s: (-s.length, s.index)):
        if s.length > max_tokens:
            logger.warning(
                "sample %d has %d tokens, more than the micro-batch budget %d: it gets a "
                "micro-batch of its own",
                s.index,
                s.length,
                max_tokens,
            )
        for i, load in enumerate(loads):
            if load + s.length <= max_tokens:
                bins[i].append(s)
                loads[i] += s.length
                break
        else:
            bins.append([s])
            loads.append(s.length)
    while len(bins) < min_bins:
        bins.append([])
    return [sorted(b, key=lambda s: s.index) for b in bins]


def collate(
    bin_: Sequence[SeqSpec],
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    advantages: Sequence[float],
    weights: Sequence[float],
    old_logprobs: Sequence[Sequence[float]] | None,
    ref_logprobs: Sequence[Sequence[float]] | None,
    pad_multiple: int,
    min_length: int = 0,
    pad_id: int = 0,
) -> MicroBatch:
    """Lay out one bin as a packed row (all per-sample inputs indexed by ``SeqSpec.index``),
    padded to a multiple of ``pad_multiple`` and to at least ``min_length`` tokens."""
    tokens: list[int] = []
    positions: list[int] = []
    starts: list[int] = []
    seq_lens: list[int] = []
    for s in bin_:
        starts.append(len(tokens))
        seq = [*prompts[s.index], *responses[s.index]]
        tokens += seq
        positions += range(len(seq))
        seq_lens.append(len(seq))
    n = len(tokens)
    total = max(pad_multiple, -(-max(n, min_length) // pad_multiple) * pad_multiple)
    if total > n:
        seq_lens.append(total - n)
        tokens += [pad_id] * (total - n)
        positions += range(total - n)
    tok = torch.tensor(tokens, dtype=torch.long)
    targets = torch.zeros(total, dtype=torch.long)
    response_pos: list[int] = []
    adv = torch.zeros(total)
    weight = torch.zeros(total)
    old = torch.zeros(total)
    ref = torch.zeros(total) if ref_logprobs is not None else None
    for s, start in zip(bin_, starts, strict=True):
        first = start + s.prompt_len - 1  # position predicting the first response token
        sl = slice(first, first + s.response_len)
        targets[sl] = tok[start + s.prompt_len : start + s.length]
        response_pos += range(first, first + s.response_len)
        adv[sl] = float(advantages[s.index])
        weight[sl] = float(weights[s.index])
        if old_logprobs is not None:
            old[sl] = torch.tensor(old_logprobs[s.index], dtype=torch.float32)
        if ref is not None and ref_logprobs is not None:
            ref[sl] = torch.tensor(ref_logprobs[s.index], dtype=torch.float32)
    return MicroBatch(
        tokens=tok[None],
        position_ids=torch.tensor(positions, dtype=torch.long)[None],
        targets=targets[None],
        response_pos=torch.tensor(response_pos, dtype=torch.long),
        advantages=adv[None],
        weights=weight[None],
        old_logprobs=old[None],
        ref_logprobs=None if ref is None else ref[None],
        seq_lens=seq_lens,
        seqs=list(bin_),
        starts=starts,
    )
