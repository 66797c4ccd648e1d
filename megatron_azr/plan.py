"""``azr plan``: what one GPU holds during a run, computed before the run is submitted.

Pure arithmetic over the model card and the run config, reading the fields the trainer reads
(``parallel.*``, ``actor.*``, ``rollout.*``, the ``azr`` sequence lengths); no torch. A step has
three phases on every GPU, and the plan's peak is the largest:

- generate: the actor's weights, gradients and optimizer state (resident: the actor is not
  offloaded) beside vLLM's share ``rollout.gpu_memory_utilization x capacity``;
- update: the actor's state plus its activations, vLLM asleep (both sleep levels free its
  weights and KV cache on the GPU);
- weight push: the actor's state, vLLM's woken weights and the resharding staging.

Each phase adds the reserve that no PyTorch allocation shows: CUDA context, vLLM's CUDA graphs,
NCCL communicators and allocator fragmentation.

Sources of the formulas:

- Actor state, per parameter on the rank: 2 B bf16 weights + 4 B fp32 gradient buffer
  (``grad_reduce_in_fp32=True`` in ``train/actor.py``) + 12 B fp32 main parameters and Adam m, v,
  the 12 B divided by DP under the distributed optimizer: megatron's estimator
  (Megatron-LM ``megatron/training/theoretical_memory_usage.py``,
  ``compute_weight_and_optimizer_memory``: 18 or 6 + 12 / dp bytes per parameter). fp32
  training has no separate main parameters: 4 + 4 + 8 (/ dp).
- Activations: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
  Models", section 4 / Table 2, redone for this layer (RMSNorm, GQA with q = heads x head_dim and
  kv = groups x head_dim, SwiGLU with ffn size f, no dropout). Bytes per token and layer, with e
  bytes per element (2 in bf16, 4 in fp32): ``e (4h / sp`` (inputs of the two norms, of QKV and
  of fc1) ``+ ((q + 2kv) + q + 3f) / tp)`` (Q, K, V; attention output; fc1's gate and up; fc2's
  input), where sp = tp under sequence parallelism and 1 otherwise. Fused attention (Transformer
  Engine) adds fp32 softmax statistics, ``4 heads / tp``; megatron's unfused local attention
  keeps the s x s probabilities in fp32 and, in bf16 runs, their bf16 copy for the product with
  V, ``(4 + 2) heads x s / tp`` (``FusedScaleMaskSoftmax.forward_torch_softmax`` and
  ``DotProductAttention`` in megatron-core 0.16.1; dropout 0 stores nothing). Full recompute
  stores only each layer's input (``e h / sp``) and recomputes one layer at a time in the
  backward. 1F1B keeps ``pp - stage`` micro-batches in flight, scaled by megatron's interleaving
  penalty ``1 + (pp - 1) / (pp x vpp)``. The last stage adds the response rows' logits and their
  gradient (``2 e V / tp`` per row; the torch log-prob reference three fp32 copies more). A
  micro-batch is ``actor.micro_batch_tokens``, or one whole sequence when that is longer, and
  every row is counted as a response row (the upper bound).
- vLLM: its share is ``gpu_memory_utilization x total memory`` (vLLM ``v1/worker/utils.py``
  ``request_memory``); the KV cache is what the share leaves after the weights, the profile run's
  activations and the CUDA-graph estimate (``v1/worker/gpu_worker.py``
  ``determine_available_memory``). The profile run is estimated as ``max_num_batched_tokens``
  (16384 for ``LLM()`` on GPUs of 70 GiB and more, ``engine/arg_utils.py``) tokens of one layer's
  largest tensors plus ``max_num_seqs`` rows of fp32 logits, three copies (logits, softmax,
  log-probs). KV per token and GPU: ``2 x layers x max(1, groups / tp) x head_dim x 2 B`` (vLLM
  replicates KV heads when its TP exceeds the groups), in blocks of 16 tokens.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from megatron_azr.config import Config, ConfigError, load_config
from megatron_azr.models.config import REPO_ROOT, ModelConfig

GiB = 2**30
# An 80 GB H100 as CUDA reports it ("total capacity of 79.10 GiB" in PyTorch's OOM message).
DEFAULT_GPU_GIB = 79.1

# The reserve: memory that PyTorch's allocator does not show. Estimates, not measurements.
# CUDA context (with lazy module loading) plus cuBLAS / TE workspaces.
CONTEXT_BYTES = 1.0 * GiB
# vLLM's decode graphs up to max_num_seqs (vLLM logs the real figure when it captures them).
# Newer vLLM takes its estimate from the share, older vLLM allocates beside it: counted both ways.
CUDA_GRAPH_BYTES = 1.0 * GiB
# Per NCCL communicator a GPU takes part in: 544-688 MiB measured per process group on A100
# NVLink (NVIDIA/nccl#964); NVLS on NVSwitch systems takes more (NCCL_NVLS_ENABLE=0 saves it).
NCCL_BYTES = 0.75 * GiB
# The caching allocator without expandable segments (vLLM's sleep mode refuses them).
FRAGMENTATION = 0.03  # of capacity

# vLLM's max_num_batched_tokens for LLM() on GPUs of 70 GiB and more (engine/arg_utils.py); the
# engine does not set it.
VLLM_BATCHED_TOKENS = 16384
VLLM_BLOCK_TOKENS = 16
VLLM_VOCAB_PAD = 64  # vLLM pads the vocabulary of its embedding and head to a multiple of this
PHASES = {
    "generate": "actor state + vLLM share + reserve",
    "update": "actor state + activations + reserve",
    "weight push": "actor state + vLLM weights + resharding staging + reserve",
}


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int
    rollout_tp: int


@dataclass
class VllmMemory:
    share: float
    weights: float
    activations: float
    cuda_graphs: float
    kv_cache: float
    kv_bytes_per_token: int
    max_model_len: int
    seq_len: int  # the configured prompt + response
    sequences: int  # of seq_len tokens at once, per replica

    @property
    def tokens(self) -> int:
        return max(0, int(self.kv_cache // self.kv_bytes_per_token))


@dataclass
class Plan:
    """Bytes per GPU on the most loaded pipeline stage."""

    arch: ModelConfig
    layout: Layout
    capacity: float
    stage: int
    params: float  # actor parameters on this rank
    weights: float
    grads: float
    optimizer: float  # as configured
    optimizer_other: float  # with the distributed optimizer switched the other way
    activations: dict[str, float]
    vllm: VllmMemory | None
    reserve: dict[str, float]
    phases: dict[str, float]
    refusals: list[str] = field(default_factory=list)

    @property
    def static(self) -> float:
        return self.weights + self.grads + self.optimizer

    @property
    def peak(self) -> float:
        return max(self.phases.values())

    @property
    def fits(self) -> bool:
        return not self.refusals


# -- the model ----------------------------------------------------------------------------------


def _dims(arch: ModelConfig) -> tuple[int, int, int, int]:
    """(hidden, q width, kv width, ffn)."""
    h, d, f = arch.hidden_size, arch.head_dim, arch.ffn_hidden_size
    return h, arch.num_attention_heads * d, arch.num_query_groups * d, f


def layer_params(arch: ModelConfig) -> tuple[int, int]:
    """(tensor-parallel-sharded, replicated) parameters of one decoder layer."""
    h, q, kv, f = _dims(arch)
    sharded = h * (q + 2 * kv) + q * h + 3 * h * f + (q + 2 * kv if arch.qkv_bias else 0)
    return sharded, 2 * h  # the two RMSNorm weights


def stage_params(arch: ModelConfig, tp: int, pp: int, stage: int) -> float:
    """Parameters on one rank of pipeline stage ``stage`` (megatron-core's GPTModel: the
    embedding on the first stage, final norm and output layer on the last, a copy of a tied
    embedding there when pp > 1)."""
    sharded, replicated = layer_params(arch)
    n = arch.num_layers / pp * (sharded / tp + replicated)
    emb = arch.vocab_size * arch.hidden_size / tp
    if stage == 0:
        n += emb
    if stage == pp - 1:
        n += arch.hidden_size + (emb if pp > 1 or not arch.tie_word_embeddings else 0)
    return n


def seq_len(cfg: Config) -> int:
    return cfg.azr.max_prompt_tokens + cfg.azr.max_response_tokens


def micro_batch_tokens(cfg: Config) -> int:
    """The largest micro-batch: the budget, or one sequence longer than it (batch.pack)."""
    return max(cfg.actor.micro_batch_tokens, seq_len(cfg))


# -- the actor ----------------------------------------------------------------------------------


def actor_state(cfg: Config, params: float, dp: int) -> tuple[float, float, float, float]:
    """(weights, gradients, optimizer as configured, optimizer the other way), bytes."""
    bf16 = cfg.actor.precision == "bf16"
    weights = (2 if bf16 else 4) * params
    grads = 4 * params
    full = (12 if bf16 else 8) * params
    sharded = full / dp
    if cfg.parallel.distributed_optimizer:
        return weights, grads, sharded, full
    return weights, grads, full, sharded


def activations(cfg: Config, arch: ModelConfig, lay: Layout, stage: int) -> dict[str, float]:
    """Activation bytes of the update on one rank of ``stage`` (see the module docstring)."""
    h, q, kv, f = _dims(arch)
    s, tp, a = micro_batch_tokens(cfg), lay.tp, arch.num_attention_heads
    sp = tp if cfg.parallel.sequence_parallel and tp > 1 else 1
    e = 2 if cfg.actor.precision == "bf16" else 4  # bytes per activation element
    if _impl(cfg) == "transformer_engine":
        attention = 4 * a / tp  # fp32 softmax statistics per token and head
    else:  # fp32 probabilities, and their bf16 copy in bf16 runs
        attention = (4 + (e if e == 2 else 0)) * a * s / tp
    layer = s * (e * (4 * h / sp + ((q + 2 * kv) + q + 3 * f) / tp) + attention)
    in_flight = float(lay.pp - stage)
    if cfg.parallel.vpp > 1:
        in_flight *= 1 + (lay.pp - 1) / (lay.pp * cfg.parallel.vpp)
    layers = arch.num_layers / lay.pp
    out: dict[str, float] = {}
    if cfg.actor.recompute == "full":
        out["layer inputs"] = in_flight * layers * s * e * h / sp
        out["one recomputed layer"] = layer
    else:
        out["stored layers"] = in_flight * layers * layer
    if stage == lay.pp - 1:
        per_row = 2 * e + (12 if cfg.actor.logprob_kernel == "torch" else 0)
        out["logits + gradient"] = s * arch.vocab_size / tp * per_row
    return out


def _impl(cfg: Config) -> str:
    """The layers a GPU run builds: ``auto`` is Transformer Engine on a GPU node with TE."""
    return "local" if cfg.actor.transformer_impl == "local" else "transformer_engine"


# -- vLLM -----------------------------------------------------------------------------------


def _rollout_bytes(cfg: Config) -> int:
    dtype = cfg.rollout.dtype
    if dtype == "auto":
        return 2 if cfg.actor.precision == "bf16" else 4
    return 4 if dtype == "float32" else 2


def vllm_memory(cfg: Config, arch: ModelConfig, rtp: int, capacity: float) -> VllmMemory:
    h, q, _, f = _dims(arch)
    elem = _rollout_bytes(cfg)
    vocab = -(-arch.vocab_size // VLLM_VOCAB_PAD) * VLLM_VOCAB_PAD
    q_r = q / rtp
    kv_r = max(1, arch.num_query_groups // rtp) * arch.head_dim
    layer = h * (q_r + 2 * kv_r) + q_r * h + 3 * h * f / rtp + 2 * h
    layer += q_r + 2 * kv_r if arch.qkv_bias else 0
    heads = 1 if arch.tie_word_embeddings else 2
    weights = elem * (arch.num_layers * layer + heads * vocab * h / rtp + h)
    tokens = VLLM_BATCHED_TOKENS * elem * (3 * h + q_r + 2 * kv_r + 2 * f / rtp)
    sampler = cfg.rollout.max_num_seqs * vocab * 4 * 3
    share = cfg.rollout.gpu_memory_utilization * capacity
    graphs = 0.0 if cfg.rollout.enforce_eager else CUDA_GRAPH_BYTES
    kv_cache = share - weights - (tokens + sampler) - graphs
    per_token = 2 * arch.num_layers * kv_r * elem
    max_len = cfg.rollout.max_model_len or arch.max_position_embeddings
    blocks = int(kv_cache // (per_token * VLLM_BLOCK_TOKENS)) if kv_cache > 0 else 0
    sequences = blocks // -(-seq_len(cfg) // VLLM_BLOCK_TOKENS)
    return VllmMemory(
        share, weights, tokens + sampler, graphs, kv_cache, per_token, max_len, seq_len(cfg),
        sequences,
    )  # fmt: skip


# -- the plan -------------------------------------------------------------------------------


def _vllm(cfg: Config) -> bool:
    return cfg.rollout.engine == "vllm"


def communicators(cfg: Config, lay: Layout) -> list[str]:
    """NCCL communicators a GPU takes part in: the default group (the trainer's broadcasts and
    gathers), each parallel group larger than one, vLLM's own TP group."""
    names = ["world"]
    names += [n for n, size in (("tp", lay.tp), ("pp", lay.pp), ("dp", lay.dp)) if size > 1]
    if _vllm(cfg) and lay.rollout_tp > 1:
        names.append("vLLM tp")
    return names


def reserve(cfg: Config, lay: Layout, capacity: float) -> dict[str, float]:
    comms = communicators(cfg, lay)
    out = {"CUDA context + workspaces": CONTEXT_BYTES}
    if _vllm(cfg) and not cfg.rollout.enforce_eager:
        out["vLLM CUDA graphs"] = CUDA_GRAPH_BYTES
    out[f"NCCL ({', '.join(comms)})"] = NCCL_BYTES * len(comms)
    out[f"allocator fragmentation ({FRAGMENTATION:.0%})"] = FRAGMENTATION * capacity
    return out


def layout_errors(cfg: Config, arch: ModelConfig, lay: Layout, world: int) -> list[str]:
    """What the builder, the preflight and vLLM refuse (models/builder.py, slurm/preflight.py)."""
    errors = []
    if world % (lay.tp * lay.pp):
        errors.append(f"tp {lay.tp} x pp {lay.pp} does not divide the {world} GPUs")
    stages = lay.pp * cfg.parallel.vpp
    if arch.num_layers % stages:
        errors.append(f"{arch.num_layers} layers do not split over pp x vpp = {stages} stages")
    for what, n in (("num_query_groups", arch.num_query_groups), ("vocab_size", arch.vocab_size)):
        if n % lay.tp:
            errors.append(f"tp {lay.tp} does not divide {what} {n}")
    if _vllm(cfg):
        r, groups = lay.rollout_tp, arch.num_query_groups
        if world % r:
            errors.append(f"rollout tp {r} does not divide the {world} GPUs")
        if arch.num_attention_heads % r or (groups % r and r % groups):
            errors.append(
                f"rollout tp {r} does not divide {arch.num_attention_heads} attention heads and "
                f"{groups} KV heads (vLLM)"
            )
    return errors


def _staging(cfg: Config, arch: ModelConfig, lay: Layout) -> float:
    """Resharding memory above the actor's (rollout/reshard.py): one bucket's staging,
    max(bucket, largest tensor), plus the tensor being built; the largest tensor is the
    embedding, whole on the HF path (rollout TP != actor TP), one shard on the shard path."""
    shards = lay.rollout_tp if lay.rollout_tp == lay.tp else 1
    largest = _rollout_bytes(cfg) * arch.vocab_size * arch.hidden_size / shards
    return max(cfg.rollout.update_bucket_mb * 2**20, largest) + largest


def plan_stage(cfg: Config, lay: Layout, world: int, capacity: float, stage: int) -> Plan:
    arch = cfg.model.arch
    params = stage_params(arch, lay.tp, lay.pp, stage)
    weights, grads, opt, other = actor_state(cfg, params, lay.dp)
    acts = activations(cfg, arch, lay, stage)
    vllm = vllm_memory(cfg, arch, lay.rollout_tp, capacity) if _vllm(cfg) else None
    res = reserve(cfg, lay, capacity)
    static, extra = weights + grads + opt, sum(res.values())
    phases = {"update": static + sum(acts.values()) + extra}
    if vllm is not None:
        phases["generate"] = static + vllm.share + extra
        phases["weight push"] = static + vllm.weights + _staging(cfg, arch, lay) + extra
    p = Plan(
        arch, lay, capacity, stage, params, weights, grads, opt, other, acts, vllm, res, phases
    )
    p.refusals = layout_errors(cfg, arch, lay, world) + _memory_refusals(p)
    return p


def _memory_refusals(p: Plan) -> list[str]:
    out = []
    v = p.vllm
    if v is not None and v.kv_cache <= 0:
        out.append(
            f"vLLM's weights, activations and CUDA graphs overflow its share "
            f"({v.share / GiB:.1f} GiB) by {-v.kv_cache / GiB:.1f} GiB: raise "
            "rollout.gpu_memory_utilization or rollout.tensor_parallel_size"
        )
    elif v is not None and v.tokens < v.max_model_len:
        # vLLM refuses to start when one max_model_len sequence does not fit its KV cache.
        out.append(
            f"vLLM's KV cache ({v.kv_cache / GiB:.2f} GiB) holds no sequence of max_model_len "
            f"{v.max_model_len} tokens: raise rollout.gpu_memory_utilization or "
            "rollout.tensor_parallel_size"
        )
    name, peak = max(p.phases.items(), key=lambda kv: kv[1])
    if peak > p.capacity:
        out.append(
            f"{name} phase needs {peak / GiB:.1f} GiB per GPU: "
            f"{(peak - p.capacity) / GiB:.1f} GiB over the {p.capacity / GiB:.1f} GiB of a GPU"
        )
    return out


def plan_layout(cfg: Config, lay: Layout, world: int, capacity: float) -> Plan:
    """The plan of the most loaded pipeline stage (first: most micro-batches in flight and the
    embedding; last: logits and the output layer)."""
    stages = {0, lay.pp - 1}
    return max((plan_stage(cfg, lay, world, capacity, s) for s in stages), key=lambda p: p.peak)


# -- choosing the layout --------------------------------------------------------------------


def given_keys(config: str | None, overrides: list[str]) -> set[str]:
    """Dotted keys set by the config file or the overrides (the rest the plan may choose)."""
    keys = {o.split("=", 1)[0].strip() for o in overrides}
    if config:
        path = Path(config)
        if not path.is_file() and (REPO_ROOT / path).is_file():
            path = REPO_ROOT / path
        data = yaml.safe_load(path.read_text()) or {}
        keys |= {f"{s}.{k}" for s, sec in data.items() if isinstance(sec, dict) for k in sec}
    return keys


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidates(cfg: Config, world: int, gpus_per_node: int, given: set[str]) -> Iterator[Layout]:
    """Layouts that divide, in order of preference: the smallest model-parallel group (most data
    parallelism, least communication), no pipeline before some, TP within a node; vLLM at the
    actor's TP first (the resharding shard path: no gather), then the smallest."""
    tps = [cfg.parallel.tp] if "parallel.tp" in given else _divisors(gpus_per_node)
    pps = [cfg.parallel.pp] if "parallel.pp" in given else _divisors(world)
    pairs = sorted(((t, p) for t in tps for p in pps if world % (t * p) == 0),
                   key=lambda tp_pp: (tp_pp[0] * tp_pp[1], tp_pp[1], tp_pp[0]))  # fmt: skip
    fixed_rtp = "rollout.tensor_parallel_size" in given or not _vllm(cfg)
    for tp, pp in pairs:
        rtps = (
            [cfg.rollout.tensor_parallel_size]
            if fixed_rtp
            else sorted(_divisors(gpus_per_node), key=lambda r: (r != tp, r))
        )
        for r in rtps:
            lay = Layout(tp, pp, world // (tp * pp), r)
            if not layout_errors(cfg, cfg.model.arch, lay, world):
                yield lay


def choose(cfg: Config, world: int, gpus_per_node: int, capacity: float, given: set[str]) -> Plan:
    """The first candidate that fits, else the one with the smallest peak; when none divides,
    the configured layout with its refusals."""
    best: Plan | None = None
    for lay in candidates(cfg, world, gpus_per_node, given):
        p = plan_layout(cfg, lay, world, capacity)
        if p.fits:
            return p
        if best is None or p.peak < best.peak:
            best = p
    if best is None:
        tp, pp, r = cfg.parallel.tp, cfg.parallel.pp, cfg.rollout.tensor_parallel_size
        best = plan_layout(cfg, Layout(tp, pp, max(1, world // (tp * pp)), r), world, capacity)
    return best


# -- output ---------------------------------------------------------------------------------


def _row(label: str, value: float, how: str = "") -> str:
    return f"  {label:<44}{value / GiB:>7.2f}  {how}".rstrip()


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def _b(n: float) -> str:
    return f"{n / 1e9:.2f}B"


def render(p: Plan, cfg: Config, nodes: int, gpus_per_node: int, given: set[str]) -> list[str]:
    a, lay, par = p.arch, p.layout, cfg.parallel

    def src(key: str) -> str:
        return "given" if key in given else "chosen"

    switches = {
        "sequence parallel": par.sequence_parallel and lay.tp > 1,
        "distributed optimizer": par.distributed_optimizer,
    }
    lines = [
        f"azr plan: {a.name}, {_b(a.num_parameters())} parameters; {_n(nodes, 'node')} x "
        f"{gpus_per_node} GPUs of {p.capacity / GiB:.1f} GiB",
        f"layout: tp {lay.tp} ({src('parallel.tp')}) x pp {lay.pp} ({src('parallel.pp')}) x "
        f"dp {lay.dp}" + "".join(f", {s}" for s, on in switches.items() if on),
    ]
    if p.vllm is not None:
        replicas = nodes * gpus_per_node // lay.rollout_tp
        path = "shard path" if lay.rollout_tp == lay.tp else "HF path"
        lines.append(
            f"rollout: vLLM tp {lay.rollout_tp} ({src('rollout.tensor_parallel_size')}) x "
            f"{_n(replicas, 'replica')}, {path}"
        )
    stage = f" of pipeline stage {p.stage}" if lay.pp > 1 else ""
    prec = cfg.actor.precision
    per_param = 12 if prec == "bf16" else 8
    dist_on = par.distributed_optimizer
    opt_used = f"{per_param} B x {_b(p.params)}" + (f" / dp {lay.dp}" if dist_on else "")
    lines += [
        f"{'per GPU' + stage:<50}GiB",
        _row(f"actor weights ({prec})", p.weights, f"{_b(p.params)} parameters on this GPU"),
        _row("actor gradients (fp32, grad_reduce_in_fp32)", p.grads, f"4 B x {_b(p.params)}"),
        _row(f"optimizer, {'distributed' if dist_on else 'not distributed'} (used)", p.optimizer,
             ("fp32 main params + " if prec == "bf16" else "") + f"Adam m, v: {opt_used}"),
        _row(f"optimizer, {'not distributed' if dist_on else f'distributed over dp {lay.dp}'}",
             p.optimizer_other, "(parallel.distributed_optimizer switched)"),
        _row(f"activations (recompute {cfg.actor.recompute}, {micro_batch_tokens(cfg)} tokens)",
             sum(p.activations.values()),
             ", ".join(f"{k} {v / GiB:.2f}" for k, v in p.activations.items())),
    ]  # fmt: skip
    v = p.vllm
    if v is not None:
        lines += [
            _row(f"vLLM share (gpu_memory_utilization {cfg.rollout.gpu_memory_utilization})",
                 v.share),
            _row(f"  vLLM weights (tp {lay.rollout_tp})", v.weights),
            _row("  vLLM profile-run activations", v.activations),
            _row("  vLLM CUDA graphs (estimate)", v.cuda_graphs),
            _row("  vLLM KV cache", max(v.kv_cache, 0.0),
                 f"{v.kv_bytes_per_token / 1024:.1f} KiB/token: {v.tokens / 1e3:.0f}k tokens = "
                 f"{v.sequences} sequences of {v.seq_len} per replica "
                 f"(max_num_seqs {cfg.rollout.max_num_seqs})"),
        ]  # fmt: skip
    lines += [_row(f"reserve: {k}", x) for k, x in p.reserve.items()]
    lines.append("phases (peak per GPU)")
    lines += [_row(k, x, PHASES[k]) for k, x in p.phases.items()]
    lines += [f"refused: {r}" for r in p.refusals]
    lines.append(f"fits: {'yes' if p.fits else 'no'} {p.peak / GiB:.1f}/{p.capacity / GiB:.1f}")
    return lines


def rank_map(lay: Layout, nodes: int, gpus_per_node: int, vllm: bool) -> list[str]:
    """Each rank's place: node, local rank, megatron's TP/PP/DP coordinates (order
    tp-cp-ep-dp-pp, megatron-core ``initialize_model_parallel``'s default) and its vLLM replica
    (consecutive groups of the rollout TP size, trainer.py ``ReplicatedRollout``)."""
    lines = []
    for r in range(nodes * gpus_per_node):
        tp_r, dp_r, pp_r = r % lay.tp, (r // lay.tp) % lay.dp, r // (lay.tp * lay.dp)
        line = (
            f"rank {r}: node {r // gpus_per_node} local {r % gpus_per_node}; actor tp {tp_r} "
            f"pp {pp_r} dp {dp_r}"
        )
        if vllm:
            line += f"; vLLM replica {r // lay.rollout_tp} tp {r % lay.rollout_tp}"
        lines.append(line)
    return lines


# -- the command ----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.model:
        overrides += [f"model.card={args.model}", "model.path="]
    cfg = load_config(args.config, overrides)
    given = given_keys(args.config, args.overrides)
    world = args.nodes * args.gpus_per_node
    p = choose(cfg, world, args.gpus_per_node, args.gpu_memory * GiB, given)
    lines = render(p, cfg, args.nodes, args.gpus_per_node, given)
    if args.ranks:
        lines[-1:-1] = rank_map(p.layout, args.nodes, args.gpus_per_node, _vllm(cfg))
    print("\n".join(lines))
    return 0 if p.fits else 1


def _cmd_plan(args: argparse.Namespace) -> int:
    try:
        return run(args)
    except ConfigError as e:
        print(f"azr plan: configuration error: {e}", file=sys.stderr)
        return 2


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan", help="per-GPU memory of a run and its parallel layout, before submitting it"
    )
    p.add_argument("--model", default="", metavar="CARD", help="model card (default: config's)")
    p.add_argument("--nodes", type=_positive, required=True)
    p.add_argument("--gpus-per-node", type=_positive, required=True)
    p.add_argument(
        "--gpu-memory", type=float, default=DEFAULT_GPU_GIB, metavar="GIB",
        help=f"memory of one GPU as CUDA reports it (default {DEFAULT_GPU_GIB}: an 80 GB H100)",
    )  # fmt: skip
    p.add_argument("--ranks", action="store_true", help="also print every rank's place")
    p.add_argument("--config", default=None, help="YAML config file (default: built-in defaults)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.set_defaults(func=_cmd_plan)
