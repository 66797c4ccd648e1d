"""The policy actor: log-probs and one PPO update of a megatron-core model, at any layout.

SPMD contract: every rank of the job calls the same method with the same global list of
:class:`~megatron_azr.azr.protocols.TrainSample` and gets the same result back. Inside, samples
are dealt to data-parallel ranks by tokens, packed into micro-batches by the token budget, run
through megatron's schedule (1F1B / interleaved for PP), and results are reduced back.

The loss is aggregated over the whole global batch (per (task, role) sub-batch or per token, see
:mod:`megatron_azr.train.loss`) with weights computed from the global sample list, so ``update``
gives the same loss, grad norm and weights at every TP/PP/DP layout and micro-batching up to
float summation order.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.distributed import DistributedDataParallel as DDP
from megatron.core.distributed import DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

from kernels.logprob_entropy import resolve_backend
from megatron_azr.azr.protocols import TrainSample
from megatron_azr.models import hf_io
from megatron_azr.models.builder import BuildOptions, build_model, resolve_impl, transformer_config
from megatron_azr.models.config import ModelConfig
from megatron_azr.train import batch as batching
from megatron_azr.train import mcore_compat
from megatron_azr.train.config import ActorConfig, ParallelConfig
from megatron_azr.train.dist import init_parallel
from megatron_azr.train.host_memory import release_freed
from megatron_azr.train.logprobs import logprob_and_entropy
from megatron_azr.train.loss import METRICS, PolicyLossConfig, policy_loss_sums, token_weights
from megatron_azr.train.schedule import run_schedule

logger = logging.getLogger(__name__)


class Actor:
    """Policy model + optimizer. Construct on every rank (it initialises the parallel state)."""

    def __init__(
        self,
        arch: ModelConfig,
        parallel: ParallelConfig,
        cfg: ActorConfig,
        *,
        init_from: str | Path | None = None,
        trainable: bool = True,
    ) -> None:
        self.arch, self.parallel, self.cfg = arch, parallel, cfg
        self.layout = init_parallel(parallel, cfg.seed)
        self.device = torch.device(
            f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
        )
        self.impl = resolve_impl(cfg.transformer_impl)
        # Fail here, not at the first forward, when the log-prob kernel cannot run.
        dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
        resolve_backend(cfg.logprob_kernel, torch.empty(0, 1, dtype=dtype, device=self.device))
        opts = BuildOptions(
            impl=self.impl,
            precision=cfg.precision,
            fp8=cfg.fp8,
            fp8_amax_history_len=cfg.fp8_amax_history_len,
            sequence_parallel=parallel.sequence_parallel,
            recompute=cfg.recompute,
        )
        self.tconfig = transformer_config(arch, opts)
        self.models = build_model(arch, opts, self.tconfig)  # unwrapped chunks
        self.hf_source: Path | None = None
        self.optimizer: Any = None
        self.steps = 0
        if init_from is not None:
            self._init_weights(Path(init_from))
        self.loss_cfg = PolicyLossConfig(
            clip_low=cfg.clip_ratio,
            clip_high=cfg.clip_ratio if cfg.clip_ratio_high is None else cfg.clip_ratio_high,
            entropy_coeff=cfg.entropy_coeff,
            kl_coef=cfg.kl_coef,
        )
        # Row lengths: FP8 GEMMs want token counts in multiples of 16 (MXFP8: 32) and sequence
        # parallelism splits the row over TP ranks, each of which must get such a multiple.
        fp8_align = {"none": 1, "delayed": 16, "tensorwise": 16, "mxfp8": 32}[cfg.fp8]
        per_rank = math.lcm(fp8_align, 8 if torch.cuda.is_available() else 1)
        self.pad_multiple = per_rank * (self.layout.tp if self.tconfig.sequence_parallel else 1)
        # What the schedule runs: the chunks, wrapped in megatron DDP once trainable.
        self.chunks: list[Any] = list(self.models)
        if trainable:
            self._setup_training()

    # -- construction ------------------------------------------------------------------------

    def _init_weights(self, path: Path) -> None:
        from megatron_azr.train import checkpoint

        if (path / "config.json").is_file():
            hf_io.load_hf(self.models, self.arch, path)
            self.hf_source = path
        elif checkpoint.is_checkpoint(path):
            checkpoint.load_weights(self, path)
        else:
            raise FileNotFoundError(
                f"model.path {path} is neither an HF model directory (config.json) nor a "
                "checkpoint written by `azr convert hf-to-mcore` or the actor"
            )

    def _setup_training(self) -> None:
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=False,
            use_distributed_optimizer=self.parallel.distributed_optimizer,
            # A NaN/Inf gradient raises at the grad sync, before it can reach the weights.
            check_for_nan_in_grad=True,
        )
        self.chunks = [
            DDP(config=self.tconfig, ddp_config=ddp_config, module=m, disable_bucketing=i > 0)
            for i, m in enumerate(self.models)
        ]
        self.tconfig.finalize_model_grads_func = finalize_model_grads
        cfg = self.cfg
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(
                optimizer="adam",
                lr=cfg.lr,
                min_lr=cfg.lr,
                weight_decay=cfg.weight_decay,
                adam_beta1=cfg.adam_beta1,
                adam_beta2=cfg.adam_beta2,
                adam_eps=cfg.adam_eps,
                clip_grad=cfg.grad_clip,
                bf16=cfg.precision == "bf16",
                params_dtype=self.tconfig.params_dtype,
                use_distributed_optimizer=self.parallel.distributed_optimizer,
            ),
            self.chunks,
        )
        mcore_compat.allocate_optimizer_state(self.optimizer)

    def memory_bytes(self) -> dict[str, int]:
        """Bytes this rank holds between steps: weights, gradient buffers, optimizer state
        (moments and fp32 master copies), each storage counted once."""
        seen: set[int] = set()

        def total(tensors: Iterator[torch.Tensor]) -> int:
            n = 0
            for t in tensors:
                storage = t.untyped_storage()
                if storage.data_ptr() not in seen:
                    seen.add(storage.data_ptr())
                    n += storage.nbytes()
            return n

        weights = total(p for m in self.models for p in m.parameters())
        buffers = [b for c in self.chunks for b in getattr(c, "buffers", [])]
        grads = total(b.grad_data for b in buffers)
        optimizer = 0
        if self.optimizer is not None:
            opts = getattr(self.optimizer, "chained_optimizers", [self.optimizer])
            optimizer = total(
                t
                for o in opts
                for t in [
                    *(p for g in o.optimizer.param_groups for p in g["params"]),
                    *(v for st in o.optimizer.state.values() for v in st.values()),
                ]
                if isinstance(t, torch.Tensor) and t.numel() > 1
            )
        return {"weights": weights, "grads": grads, "optimizer": optimizer}

    # -- batching ----------------------------------------------------------------------------

    def _seq_specs(self, samples: Sequence[TrainSample]) -> list[batching.SeqSpec]:
        specs = []
        vocab = self.arch.vocab_size
        for i, s in enumerate(samples):
            if not s.prompt_token_ids:
                raise ValueError(f"sample {i} has an empty prompt")
            ids = [*s.prompt_token_ids, *s.response_token_ids]
            if min(ids) < 0 or max(ids) >= vocab:
                raise ValueError(f"sample {i} has token ids outside the vocabulary [0, {vocab})")
            specs.append(batching.SeqSpec(i, len(s.prompt_token_ids), len(s.response_token_ids)))
        return specs

    def _micro_batches(
        self,
        samples: Sequence[TrainSample],
        old: Sequence[Sequence[float]] | None = None,
        ref: Sequence[Sequence[float]] | None = None,
        weights: Sequence[float] | None = None,
    ) -> list[batching.MicroBatch]:
        for name, lps in (("old_logprobs", old), ("ref_logprobs", ref)):
            if lps is None:
                continue
            if len(lps) != len(samples):
                raise ValueError(f"{name}: {len(lps)} entries for {len(samples)} samples")
            for i, (s, lp) in enumerate(zip(samples, lps, strict=True)):
                if len(lp) != len(s.response_token_ids):
                    raise ValueError(
                        f"{name}[{i}] has {len(lp)} values for {len(s.response_token_ids)} tokens"
                    )
        specs = [s for s in self._seq_specs(samples) if s.response_len > 0]
        mine = batching.partition_dp(specs, self.layout.dp)[self.layout.dp_rank]
        min_bins = self.layout.pp if self.layout.vpp > 1 else 1
        bins = batching.pack(mine, self.cfg.micro_batch_tokens, min_bins)
        if self.layout.vpp > 1:  # the interleaved schedule wants a multiple of pp
            bins += [[] for _ in range(-len(bins) % self.layout.pp)]
        # Pipeline stages exchange fixed-shape activations: one length for the whole step
        # (every rank of a pipeline holds the same bins, so they agree without communicating).
        min_length = max(sum(s.length for s in b) for b in bins) if self.layout.pp > 1 else 0
        prompts = [s.prompt_token_ids for s in samples]
        responses = [s.response_token_ids for s in samples]
        advantages = [s.advantage for s in samples]
        weights = [1.0] * len(samples) if weights is None else weights
        return [
            batching.collate(
                b, prompts, responses, advantages, weights, old, ref, self.pad_multiple, min_length
            )
            for b in bins
        ]

    def _token_logprobs(
        self, mb: batching.MicroBatch, logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(positions, log-probs, entropies) of the response tokens of ``mb`` from ``logits``
        [1, R, V/tp] of its rows ``response_pos``."""
        pos = mb.response_pos
        local = logits[0]
        tp = self.layout.tp
        lp, ent = logprob_and_entropy(
            local,
            mb.targets[0].index_select(0, pos),
            vocab_start=self.layout.tp_rank * local.shape[-1],
            group=ps.get_tensor_model_parallel_group() if tp > 1 else None,
            backend=self.cfg.logprob_kernel,
        )
        return pos, lp, ent

    def _release_host_memory(self) -> None:
        """On CPU the pass's activations and logits were host memory: give it back
        (:mod:`megatron_azr.train.host_memory`)."""
        if self.device.type == "cpu":
            release_freed()

    def _reduce_from_last_stage(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over data-parallel ranks; non-last pipeline stages contribute zeros."""
        if self.layout.dp > 1:
            dist.all_reduce(t, group=ps.get_data_parallel_group())
        if self.layout.pp > 1:
            dist.all_reduce(t, group=ps.get_pipeline_model_parallel_group())
        return t

    # -- public API --------------------------------------------------------------------------

    @torch.no_grad()
    def logprobs(self, samples: Sequence[TrainSample]) -> list[list[float]]:
        """Log-prob of every response token under the current weights (the "old" log-probs)."""
        offsets = [0]
        for s in samples:
            offsets.append(offsets[-1] + len(s.response_token_ids))
        out = torch.zeros(offsets[-1], dtype=torch.float32, device=self.device)
        mbs = self._micro_batches(samples)

        def loss_fn(mb: batching.MicroBatch, logits: torch.Tensor) -> Any:
            _, lp, _ = self._token_logprobs(mb, logits)
            return lp.sum(), torch.tensor(0, dtype=torch.int, device=self.device), (mb, lp)

        for m in self.chunks:
            m.eval()
        for mb, lp in run_schedule(
            self.chunks, mbs, loss_fn, forward_only=True, device=self.device
        ):
            k = 0
            for s in mb.seqs:  # response_pos lists each sequence's positions in turn
                out[offsets[s.index] : offsets[s.index + 1]] = lp[k : k + s.response_len]
                k += s.response_len
        self._reduce_from_last_stage(out)
        values = out.cpu().tolist()
        self._release_host_memory()
        return [values[offsets[i] : offsets[i + 1]] for i in range(len(samples))]

    def update(
        self,
        samples: Sequence[TrainSample],
        old_logprobs: Sequence[Sequence[float]] | None = None,
        ref_logprobs: Sequence[Sequence[float]] | None = None,
    ) -> dict[str, float]:
        """One optimizer step on ``samples``; returns global metrics (same on every rank).

        ``old_logprobs=None`` means on-policy: the ratio is taken against the current weights
        (detached), exactly what recomputing old log-probs right before a single step gives.
        """
        if self.optimizer is None:
            raise RuntimeError("this actor was built with trainable=False")
        if self.cfg.kl_coef > 0 and ref_logprobs is None:
            raise ValueError("actor.kl_coef > 0 needs ref_logprobs")
        if not any(s.response_token_ids for s in samples):
            # An empty step would still apply weight decay and advance Adam's step count.
            raise ValueError("update() needs at least one sample with response tokens")
        for i, s in enumerate(samples):
            if not math.isfinite(s.advantage):
                raise ValueError(f"sample {i} has a non-finite advantage ({s.advantage})")
        t0 = time.perf_counter()
        weights = token_weights(
            [(s.task, s.role) for s in samples],
            [len(s.response_token_ids) for s in samples],
            self.cfg.loss_aggregation,
        )
        mbs = self._micro_batches(samples, old_logprobs, ref_logprobs, weights)
        on_policy = old_logprobs is None

        def loss_fn(mb: batching.MicroBatch, logits: torch.Tensor) -> Any:
            pos, lp, ent = self._token_logprobs(mb, logits)
            old = lp.detach() if on_policy else mb.old_logprobs[0].index_select(0, pos)
            ref = None if mb.ref_logprobs is None else mb.ref_logprobs[0].index_select(0, pos)
            total, sums = policy_loss_sums(
                lp,
                ent,
                old,
                mb.advantages[0].index_select(0, pos),
                mb.weights[0].index_select(0, pos),
                self.loss_cfg,
                ref,
            )
            return total, torch.tensor(pos.numel(), dtype=torch.int, device=self.device), sums

        for m in self.chunks:
            m.train()
            m.zero_grad_buffer()
        self.optimizer.zero_grad()
        payloads = run_schedule(self.chunks, mbs, loss_fn, forward_only=False, device=self.device)
        ok, grad_norm, _ = self.optimizer.step()
        if not ok:
            raise FloatingPointError("optimizer step skipped (non-finite gradients)")
        self.steps += 1
        sums = torch.zeros(len(METRICS), dtype=torch.float64, device=self.device)
        for p in payloads:
            sums += p.double()
        self._reduce_from_last_stage(sums)
        m = dict(zip(METRICS, sums.tolist(), strict=True))
        n = max(m["tokens"], 1.0)
        self._release_host_memory()
        elapsed = time.perf_counter() - t0
        return {
            "loss": m["loss"] / n,
            "pg_loss": m["pg_loss"] / n,
            "entropy": m["entropy"] / n,
            "clip_frac": m["clip_frac"] / n,
            "kl": m["kl"] / n,
            "ratio": m["ratio"] / n,
            "grad_norm": float(grad_norm),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "tokens": m["tokens"],
            "micro_batches": float(len(mbs)),
            "time_s": elapsed,
        }

    def state_dict_for_rollout(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full HF-named tensors (collective: every rank iterates)."""
        return hf_io.iter_hf_tensors(self.models, self.arch)

    def export_hf(self, out_dir: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write the current weights as an HF directory (collective; rank 0 writes)."""
        hf_io.save_hf(self.models, self.arch, out_dir, meta_from=self.hf_source, dtype=dtype)
