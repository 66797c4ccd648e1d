"""Tiny random HF models and a locally trained tokenizer: no model hub is ever needed.

Tests, benchmarks and the tiny CPU default build their models here: a byte-level BPE tokenizer
trained in a second on a fixed built-in corpus (so it is identical on every machine), and a
random Qwen2 or Llama model saved as an ordinary HF directory that transformers, vLLM and the
Megatron converters all read.
"""

from __future__ import annotations

import builtins
import keyword
import string
from pathlib import Path
from typing import Any

from megatron_azr.models.config import LLAMA3_ROPE_FIXED, Family

EOS = "<|endoftext|>"


def _builtin_corpus() -> list[str]:
    words = list(keyword.kwlist) + sorted(n for n in dir(builtins) if not n.startswith("_"))
    tags = ["<think>", "</think>", "<answer>", "</answer>", "```python", "```input", "```output"]
    lines = [" ".join(words), " ".join(tags), string.printable]
    lines += [f"def f({w}):\n    return {w}\n" for w in words]
    lines += [f"f({i}, '{w}') == [{i}, {i + 1}]" for i, w in enumerate(words)]
    return lines


def train_tokenizer(out_dir: str | Path, vocab_size: int = 512) -> Path:
    """Train a byte-level BPE tokenizer and save it as an HF tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_builtin_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return out


def make_tiny_model(
    out_dir: str | Path,
    family: Family = "qwen2",
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vocab_size: int = 512,
    tie_word_embeddings: bool = False,
    rope_theta: float = 10000.0,
    llama3_rope_factor: float | None = None,
    seed: int = 0,
) -> Path:
    """Save a random ``family`` model plus its tokenizer under ``out_dir``; returns the dir."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    out = train_tokenizer(out_dir, vocab_size)
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": rope_theta}
    if llama3_rope_factor is not None:  # Llama-3.1 style long-context RoPE scaling
        rope.update(rope_type="llama3", factor=llama3_rope_factor, **LLAMA3_ROPE_FIXED)
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=4096 if llama3_rope_factor is None else 16384,
        rms_norm_eps=1e-6,
        rope_parameters=rope,
        tie_word_embeddings=tie_word_embeddings,
        eos_token_id=0,
        bos_token_id=0,
        pad_token_id=0,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model: Qwen2ForCausalLM | LlamaForCausalLM
    if family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, attention_bias=False, mlp_bias=False))
    else:
        raise ValueError(f"unknown model family {family!r} (expected 'qwen2' or 'llama')")
    # Random init with std 0.02 gives near-uniform logits; a larger spread makes greedy decoding
    # and logit comparisons meaningful in tests.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
            elif "norm" in name:
                p.uniform_(0.8, 1.2)
            else:
                p.normal_(0.0, 0.1)
    model.save_pretrained(out, safe_serialization=True)
    return out
