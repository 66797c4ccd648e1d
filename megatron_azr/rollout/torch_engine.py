"""A small rollout engine around an HF transformers causal LM on CPU.

For unit tests and small CPU runs: vLLM's sampling semantics (``megatron_azr.rollout.sampling``)
and per-token log-probs. The prompts of a call (``max_num_seqs // n`` at a time) are prefilled
together, left-padded under an attention mask; each prompt's KV cache is then copied to its
``n`` samples, and every row decodes in one batch, leaving it when it finishes. Each row samples
from its own seeded generator, so batching never changes a seeded sample. ``sleep``/``wake_up``
are no-ops: the model lives in host memory, which the actor does not compete for.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from megatron_azr.azr.protocols import Completion, SamplingParams
from megatron_azr.rollout import sampling as S
from megatron_azr.rollout.config import RolloutConfig
from megatron_azr.rollout.weights import NamedTensors, UpdateStats, checked

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class _Sequence:
    prompt: int
    generator: torch.Generator
    max_new: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None


class TorchEngine:
    """``RolloutEngine`` on an HF model in this process (CPU).

    ``update_weights`` takes HF-named full tensors; with no tensor parallelism, those are also
    this engine's own shards.
    """

    name = "torch"

    def __init__(self, model_dir: str | Path, cfg: RolloutConfig | None = None) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        cfg = cfg or RolloutConfig(engine="torch")
        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        dtype = _DTYPES.get(cfg.dtype, "auto")
        if cfg.load_format == "dummy":
            config = AutoConfig.from_pretrained(model_dir)
            dtype = dtype if dtype != "auto" else (config.dtype or torch.float32)
            self.model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        else:
            self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        self.model.eval()
        self._weights_valid = cfg.load_format != "dummy"
        # state_dict() tensors share storage with the live parameters: copying into them
        # updates the model in place (tied embeddings included).
        self._state = self.model.state_dict()
        self._rng = torch.Generator().manual_seed(cfg.seed)
        self.max_model_len = cfg.max_model_len or self.model.config.max_position_embeddings
        eos = self.model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        self._eos = {i for i in [*eos_ids, self.tokenizer.eos_token_id] if i is not None}
        pad = self.tokenizer.pad_token_id
        self._pad = pad if pad is not None else min(self._eos, default=0)

    # -- RolloutEngine ---------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[str],
        sampling: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        S.validate(sampling)
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts: give one per prompt")
        if not self._weights_valid:
            raise RuntimeError(
                "torch engine has no valid weights (load_format='dummy' or a failed update): "
                "call update_weights() before generate()"
            )
        prompt_ids = [self._encode(p) for p in prompts]
        row_seeds = self._row_seeds(sampling, seeds, len(prompts))
        n = sampling.n
        per_chunk = max(1, self.cfg.max_num_seqs // n)
        out: list[list[Completion]] = []
        for start in range(0, len(prompt_ids), per_chunk):
            stop = start + per_chunk
            out += self._generate_chunk(
                prompt_ids[start:stop], sampling, row_seeds[start * n : stop * n]
            )
        return out

    @torch.no_grad()
    def update_weights(self, named_tensors: NamedTensors) -> None:
        shapes = {name: t.shape for name, t in self._state.items()}
        stats = UpdateStats()
        try:
            for name, tensor in checked(named_tensors, shapes, "HF parameter", stats):
                self._state[name].copy_(tensor)
        except BaseException:
            self._weights_valid = False  # partly updated: refuse to generate until a full update
            raise
        # Tied weights share storage: writing either name writes both.
        written = {self._state[name].data_ptr() for name in stats.names}
        missing = [n for n, p in self.model.named_parameters() if p.data_ptr() not in written]
        if missing and not self._weights_valid:
            raise RuntimeError(
                f"update_weights left {len(missing)} parameters unwritten (e.g. "
                f"{missing[0]!r}) in an engine without valid weights: send every parameter"
            )
        self._weights_valid = True
        stats.log(self.name)

    def sleep(self) -> None:
        """No-op: host memory is not what the actor needs freed."""

    def wake_up(self) -> None:
        """No-op, see ``sleep``."""

    # -- decoding --------------------------------------------------------------------------

    def _encode(self, prompt: str) -> list[int]:
        ids = self.tokenizer(prompt).input_ids
        if not ids:
            raise ValueError("empty prompt: nothing to condition on")
        if len(ids) >= self.max_model_len:
            raise ValueError(
                f"prompt of {len(ids)} tokens leaves no room to generate "
                f"(max_model_len={self.max_model_len})"
            )
        return ids

    def _decode(self, token_ids: list[int]) -> str:
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=True))

    def _row_seeds(
        self, sampling: SamplingParams, seeds: Sequence[int] | None, count: int
    ) -> list[int]:
        """The seed of each (prompt, sample) row, prompt-major: ``seeds[i] + j``, else
        ``sampling.seed + j``, else fresh draws of this engine's generator."""
        n = sampling.n
        if seeds is None and sampling.seed is not None:
            seeds = [sampling.seed] * count
        if seeds is not None:
            return [int(s) + j for s in seeds for j in range(n)]
        draws = torch.randint(0, 2**62, (count * n,), generator=self._rng)
        return [int(s) for s in draws]

    @torch.inference_mode()
    def _generate_chunk(
        self, prompt_ids: list[list[int]], sampling: SamplingParams, seeds: list[int]
    ) -> list[list[Completion]]:
        n = sampling.n
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
        for i, ids in enumerate(prompt_ids):  # left padding: every row ends at the same column
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            mask[i, width - len(ids) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
        )
        # The prompt's KV cache is computed once, then copied to its n samples.
        cache = out.past_key_values
        cache.batch_repeat_interleave(n)
        logits = out.logits[:, -1].float().repeat_interleave(n, 0)
        mask = mask.repeat_interleave(n, 0)
        next_pos = positions[:, -1:].repeat_interleave(n, 0) + 1

        seqs = [
            _Sequence(
                prompt=r // n,
                generator=torch.Generator().manual_seed(seeds[r]),
                max_new=min(sampling.max_tokens, self.max_model_len - len(prompt_ids[r // n])),
            )
            for r in range(len(prompt_ids) * n)
        ]
        active = list(range(len(seqs)))
        while True:
            gens = [seqs[r].generator for r in active]
            tokens, logprobs = S.sample_next(logits, sampling, gens, self.cfg.logprobs_mode)
            keep = []
            for row, r in enumerate(active):
                self._append(seqs[r], int(tokens[row]), float(logprobs[row]), sampling)
                if seqs[r].finish_reason is None:
                    keep.append(row)
            if not keep:
                break
            if len(keep) < len(active):
                idx = torch.tensor(keep)
                cache.batch_select_indices(idx)
                mask, next_pos, tokens = mask[idx], next_pos[idx], tokens[idx]
                active = [active[row] for row in keep]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = self.model(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=next_pos,
                past_key_values=cache,
                use_cache=True,
            )
            logits = out.logits[:, -1].float()
            next_pos = next_pos + 1

        return [
            [
                Completion(
                    text=s.text,
                    token_ids=s.token_ids,
                    logprobs=s.logprobs,
                    prompt_token_ids=prompt_ids[s.prompt],
                    finish_reason="stop" if s.finish_reason == "stop" else "length",
                )
                for s in seqs[p * n : (p + 1) * n]
            ]
            for p in range(len(prompt_ids))
        ]

    def _append(self, seq: _Sequence, token: int, logprob: float, sampling: SamplingParams) -> None:
        seq.token_ids.append(token)
        seq.logprobs.append(logprob)
        if sampling.stop and token not in self._eos:
            text = self._decode(seq.token_ids)
            cut = S.find_stop(text, len(text) - len(seq.text), sampling.stop)
            seq.text = text
            if cut != -1:
                seq.text, seq.finish_reason = text[:cut], "stop"
                return
        if token in self._eos:
            seq.finish_reason = "stop"
        elif len(seq.token_ids) >= seq.max_new:
            seq.finish_reason = "length"
        if seq.finish_reason is not None:
            seq.text = self._decode(seq.token_ids)
