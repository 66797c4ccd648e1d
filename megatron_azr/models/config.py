"""Model cards: the architecture of a Qwen2 / Qwen2.5 / Llama-3 decoder as a typed dataclass.

A card is a small YAML file in ``configs/models/`` holding the published hyperparameters of one
model (the numbers of its HF ``config.json``). A run points at the weights (``model.path``: an HF
directory or a Megatron checkpoint) and, optionally, at a card (``model.card``): an HF directory's
own ``config.json`` is the architecture, and a card given with it must agree with it. Cards are
loaded strictly through :mod:`megatron_azr.config`, so a typo in a card is an error naming the key
and file. No torch import here: configs load on CPU-only tooling nodes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

Family = Literal["qwen2", "llama"]

# The checkout: shipped cards, configs and data files are found here whatever the working directory.
REPO_ROOT = Path(__file__).resolve().parents[2]
# The card of a random init (tests, the tiny default) when model.card and model.path are empty.
DEFAULT_CARD = "tiny"
# Relative tolerance of float fields when two descriptions of one model are compared: a
# converted checkpoint may store rms_norm_eps 1e-6 as float32 (9.999999974752427e-07).
FLOAT_REL_TOL = 1e-6

# Llama-3.1 RoPE scaling ("rope_type": "llama3"); megatron-core hard-codes these three values
# next to the factor, so a checkpoint with others cannot be represented and is rejected.
LLAMA3_ROPE_FIXED = {
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


@dataclass
class ModelConfig:
    """Architecture of a decoder-only model; field names follow megatron-core where they exist."""

    name: str
    family: Family
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int  # KV heads (GQA)
    vocab_size: int
    kv_channels: int | None = None  # head dim; None = hidden_size // num_attention_heads
    max_position_embeddings: int = 32768
    rope_theta: float = 10000.0
    rope_scaling_factor: float | None = None  # Llama-3.1 "llama3" scaling
    norm_eps: float = 1e-6
    qkv_bias: bool = False  # True for Qwen2
    tie_word_embeddings: bool = False
    hf_id: str = ""  # where the published weights live, for people (never downloaded)

    def __post_init__(self) -> None:
        for f in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1")
        if self.num_query_groups < 1 or self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_query_groups ({self.num_query_groups})"
            )
        if self.kv_channels is None and self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    def num_parameters(self) -> int:
        """Parameter count (embeddings included once if tied)."""
        h, d = self.hidden_size, self.head_dim
        q, kv = self.num_attention_heads * d, self.num_query_groups * d
        attn = h * (q + 2 * kv) + q * h + (q + 2 * kv if self.qkv_bias else 0)
        layer = attn + 3 * h * self.ffn_hidden_size + 2 * h
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * layer + emb + h

    # -- HF config.json <-> card -------------------------------------------------------------

    @classmethod
    def from_hf(cls, hf: dict[str, Any], name: str = "") -> ModelConfig:
        """The card of an HF ``config.json`` (Qwen2ForCausalLM or LlamaForCausalLM)."""
        model_type = hf.get("model_type")
        if model_type not in ("qwen2", "llama"):
            raise ValueError(
                f"unsupported HF model_type {model_type!r}: this converter knows qwen2 and llama"
            )
        if model_type == "llama" and (hf.get("attention_bias") or hf.get("mlp_bias")):
            raise ValueError("Llama checkpoints with attention_bias/mlp_bias are not supported")
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {hf.get('hidden_act')!r} (expected silu)")
        rope = hf.get("rope_scaling") or None
        params = hf.get("rope_parameters") or {}  # transformers >= 5 nests theta and scaling
        if params.get("rope_type", "default") != "default":
            rope = params
        factor = None
        if rope is not None:
            if rope.get("rope_type", rope.get("type")) != "llama3":
                raise ValueError(f"unsupported rope_scaling {rope!r} (only 'llama3' is)")
            for k, v in LLAMA3_ROPE_FIXED.items():
                if float(rope.get(k, v)) != float(v):
                    raise ValueError(f"rope_scaling.{k}={rope[k]} unsupported (megatron uses {v})")
            factor = float(rope["factor"])
        theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
        heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
        return cls(
            name=name or hf.get("_name_or_path", "") or model_type,
            family=model_type,
            num_layers=hf["num_hidden_layers"],
            hidden_size=hf["hidden_size"],
            ffn_hidden_size=hf["intermediate_size"],
            num_attention_heads=heads,
            num_query_groups=hf.get("num_key_value_heads") or heads,
            vocab_size=hf["vocab_size"],
            kv_channels=None if head_dim * heads == hf["hidden_size"] else head_dim,
            max_position_embeddings=hf.get("max_position_embeddings", 32768),
            rope_theta=float(theta),
            rope_scaling_factor=factor,
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            qkv_bias=model_type == "qwen2",
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )

    @classmethod
    def from_hf_dir(cls, path: str | Path) -> ModelConfig:
        cfg_file = Path(path) / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"not an HF model directory (no config.json): {path}")
        return cls.from_hf(json.loads(cfg_file.read_text()), name=Path(path).name)

    def architecture(self) -> dict[str, Any]:
        """The fields that decide tensor shapes and numerics (everything but names)."""
        d = asdict(self)
        for k in ("name", "hf_id", "max_position_embeddings"):
            d.pop(k)
        d["kv_channels"] = self.head_dim
        return d

    def check_matches(self, other: ModelConfig, what: str) -> None:
        """Raise if ``other`` (e.g. read from weights on disk) has a different architecture;
        floats agree within :data:`FLOAT_REL_TOL`."""
        a, b = self.architecture(), other.architecture()
        diff = {k: (a[k], b[k]) for k in a if not _same(a[k], b[k])}
        if diff:
            fields = "; ".join(
                f"{k} is {x!r} in the card, {y!r} there" for k, (x, y) in diff.items()
            )
            raise ValueError(f"model card '{self.name}' does not match {what}: {fields}")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=FLOAT_REL_TOL)
    return bool(a == b)


def resolve_card(card: str | Path) -> Path:
    """A card path as given, else relative to the repository (for the shipped cards)."""
    p = Path(card)
    for candidate in (p, REPO_ROOT / p, REPO_ROOT / "configs" / "models" / f"{card}.yaml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"model card not found: {card}")


def load_model_card(card: str | Path) -> ModelConfig:
    """Load a card by path or by shipped name (``tiny``, ``qwen2.5-coder-7b``, ...)."""
    import yaml

    from megatron_azr.config import ConfigError, from_dict

    path = resolve_card(card)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    return from_dict(ModelConfig, data, str(path))


@dataclass
class ModelSection:
    """The ``model:`` section of a run: where the initial weights are, and their architecture.

    ``path`` is an HF directory (converted on load into any parallel layout) or a checkpoint
    written by ``azr convert hf-to-mcore`` / the actor; empty means random init (tests only).
    ``card`` names a model card: optional for an HF directory (its ``config.json`` is the
    architecture; a card given too must agree with it), required for a checkpoint; a random
    init without one uses :data:`DEFAULT_CARD`.
    """

    card: str = ""
    path: str = ""

    def __post_init__(self) -> None:
        # Resolved now so that a bad card or a disagreeing HF directory fails at config load,
        # before any model is built (and not on the cluster).
        self._arch = resolve_architecture(self.card, self.path)

    @property
    def arch(self) -> ModelConfig:
        """The architecture every downstream consumer builds from."""
        return self._arch


def resolve_architecture(card: str, path: str) -> ModelConfig:
    """The architecture of ``model.card`` / ``model.path`` (see :class:`ModelSection`)."""
    hf_dir = Path(path) if path and (Path(path) / "config.json").is_file() else None
    if hf_dir is None:
        if path and not card:
            state = "does not exist" if not Path(path).exists() else "has no config.json"
            raise ValueError(
                f"model.path {path} {state}, and no model.card names the architecture: "
                "give an HF directory (`azr model smollm2` builds SmolLM2-135M-Instruct's) or "
                "set model.card for a checkpoint"
            )
        try:
            return load_model_card(card or DEFAULT_CARD)
        except FileNotFoundError as e:
            raise ValueError(str(e)) from e
    arch = ModelConfig.from_hf_dir(hf_dir)
    if not card:
        return arch
    try:
        named = load_model_card(card)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from e
    named.check_matches(arch, f"model.path's {hf_dir / 'config.json'}")
    return replace(arch, name=named.name, hf_id=named.hf_id)
