"""The two modules our local layer spec swaps into megatron-core's.

* :class:`RMSNorm`: HF's numerics (normalise in fp32, scale in the input dtype), with its weight
  tagged ``sequence_parallel`` so megatron all-reduces its grad over TP under sequence
  parallelism (torch's norms, megatron's fallback without Apex, reject sequence parallel).
* :class:`PackedAttention`: causal attention over packed sequences in megatron's THD format
  (``PackedSeqParams.cu_seqlens``), one ``scaled_dot_product_attention`` per sequence. Megatron's
  own local attention rejects packed input; with it, a packed row would need an S x S mask and
  quadratic work across sequences. Transformer Engine's attention does the same job on GPU.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig


class RMSNorm(torch.nn.Module):
    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        device = None if config.use_cpu_initialization else torch.cuda.current_device()
        self.weight = torch.nn.Parameter(
            torch.ones(hidden_size, dtype=config.params_dtype, device=device)
        )
        self.weight.sequence_parallel = config.sequence_parallel  # type: ignore[attr-defined]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


class PackedAttention(MegatronModule):
    """Drop-in for megatron's ``DotProductAttention`` (same constructor and call)."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: Any,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: Any = None,
    ) -> None:
        super().__init__(config=config)
        if config.context_parallel_size > 1:
            raise ValueError("PackedAttention does not support context parallelism")
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        self.scale = softmax_scale

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # [b, heads, s, d]; grouped-query attention: k/v have fewer heads than q.
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=True,
            scale=self.scale,
            enable_gqa=k.shape[1] != q.shape[1],
        )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: Any = None,
        attention_bias: Any = None,
        packed_seq_params: Any = None,
    ) -> torch.Tensor:
        if attention_bias is not None:
            raise ValueError("PackedAttention does not support attention_bias")
        if packed_seq_params is None:
            # [s, b, heads, d], each row one causal sequence (the mask is not consulted).
            out = self._sdpa(*(t.permute(1, 2, 0, 3) for t in (query, key, value)))
            return out.permute(2, 0, 1, 3).reshape(query.shape[0], query.shape[1], -1)
        # THD: [t, heads, d] with sequences delimited by cu_seqlens.
        bounds = packed_seq_params.cu_seqlens_q.tolist()
        outs = []
        for start, end in itertools.pairwise(bounds):
            q, k, v = (t[start:end].transpose(0, 1)[None] for t in (query, key, value))
            outs.append(self._sdpa(q, k, v)[0].transpose(0, 1))
        return torch.cat(outs).reshape(query.shape[0], -1)
