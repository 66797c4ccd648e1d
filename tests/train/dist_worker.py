"""Multi-process scenarios for the parallel tests, launched by torchrun from pytest.

``python -m torch.distributed.run --nproc-per-node N tests/train/dist_worker.py SCENARIO JSON``
where JSON holds the scenario's arguments (paths to tiny HF models, an output directory).
Several layouts run one after another in the same processes (the parallel state is rebuilt for
each), so one launch checks many layouts. Rank 0 (or the rank that holds a result) writes
results with ``torch.save`` for the test to compare.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_azr.azr.protocols import Role, TaskType, TrainSample
from megatron_azr.models import hf_io, mapping, spec
from megatron_azr.models.config import ModelConfig
from megatron_azr.models.layers import PackedAttention
from megatron_azr.train import checkpoint
from megatron_azr.train.actor import Actor
from megatron_azr.train.config import ActorConfig, ParallelConfig
from megatron_azr.train.logprobs import logprob_and_entropy, reference_logprob_and_entropy
from megatron_azr.train.schedule import run_schedule

LAYOUTS = {
    "dp2": ParallelConfig(),
    "tp2": ParallelConfig(tp=2),
    "tp2sp": ParallelConfig(tp=2, sequence_parallel=True),
    "pp2": ParallelConfig(pp=2),
    "pp2vpp2": ParallelConfig(pp=2, vpp=2),
    "single": ParallelConfig(),
}


SUBBATCHES = [(t, r) for t in TaskType for r in Role]


def samples_for_step(step: int, n: int = 8, vocab: int = 512) -> list[TrainSample]:
    """Random samples spread over the (task, role) sub-batches, with unequal token counts (the
    default loss weighs sub-batches, not tokens: a layout must not change the weights)."""
    rng = random.Random(1000 + step)
    out = []
    for _ in range(n):
        prompt = [rng.randrange(vocab) for _ in range(rng.randint(2, 14))]
        response = [rng.randrange(vocab) for _ in range(rng.randint(1, 24))]
        task, role = rng.choice(SUBBATCHES)
        out.append(TrainSample(task, role, prompt, response, 0.0, rng.gauss(0, 1)))
    return out


def is_writer() -> bool:
    return dist.get_rank() == 0


def gather_state(actor: Actor) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in actor.state_dict_for_rollout()}


# -- scenario: logits parity + HF round trip ---------------------------------------------


def _full_logits(chunks, arch: ModelConfig, tokens: torch.Tensor) -> torch.Tensor | None:
    """Full-vocabulary logits [S - 1, V] on the last stage (None elsewhere; the last position
    predicts no token of the sequence, so the actor computes no logits for it); also checks the
    vocab-parallel log-prob/entropy against a full-vocabulary reference."""
    from megatron.core import parallel_state as ps

    from megatron_azr.train.batch import SeqSpec, collate

    n = tokens.numel()
    mb = collate(
        [SeqSpec(0, 1, n - 1)],
        [tokens[:1].tolist()],
        [tokens[1:].tolist()],
        [0.0],
        [1.0],
        None,
        None,
        2,
    )
    tp = ps.get_tensor_model_parallel_world_size()
    group = ps.get_tensor_model_parallel_group()

    def loss_fn(mb, logits):
        local = logits[0]
        lp, ent = logprob_and_entropy(
            local,
            mb.targets[0, : n - 1],
            ps.get_tensor_model_parallel_rank() * local.shape[-1],
            group if tp > 1 else None,
        )
        parts = [torch.empty_like(local) for _ in range(tp)]
        dist.all_gather(parts, local.contiguous(), group=group)
        full = torch.cat(parts, dim=-1)
        ref_lp, ref_ent = reference_logprob_and_entropy(full, mb.targets[0, : n - 1])
        assert torch.allclose(lp, ref_lp, atol=1e-5), (lp - ref_lp).abs().max()
        assert torch.allclose(ent, ref_ent, atol=1e-5), (ent - ref_ent).abs().max()
        return full.sum() * 0, torch.tensor(0, dtype=torch.int), full

    out = run_schedule(chunks, [mb], loss_fn, forward_only=True, device=torch.device("cpu"))
    return out[0] if out else None


def scenario_logits(args: dict) -> None:
    """Per model and layout: full logits of one sequence, packed log-probs of a batch, the layer
    placement, and an HF export of the loaded weights."""
    from megatron.core import parallel_state as ps

    out = Path(args["out"])
    tokens = torch.tensor(args["tokens"])
    for family, hf_dir in args["models"].items():
        arch = ModelConfig.from_hf_dir(hf_dir)
        for name in args["layouts"]:
            actor = Actor(arch, LAYOUTS[name], _actor_cfg(), init_from=hf_dir, trainable=False)
            chunks = actor.models
            lay = actor.layout
            for v, chunk in enumerate(chunks):
                for local, layer in enumerate(chunk.decoder.layers):
                    g = mapping.local_to_global(
                        local, arch.num_layers, lay.pp, lay.pp_rank, lay.vpp, v
                    )
                    assert layer.layer_number == g + 1, (name, v, local, layer.layer_number)
            with torch.no_grad():
                logits = _full_logits(chunks, arch, tokens)
            packed = actor.logprobs(samples_for_step(0))
            first_dp_tp = ps.get_tensor_model_parallel_rank() == ps.get_data_parallel_rank() == 0
            if logits is not None and first_dp_tp:
                torch.save(logits, out / f"logits_{family}_{name}.pt")
            if is_writer():
                torch.save(packed, out / f"packed_{family}_{name}.pt")
            hf_io.save_hf(chunks, arch, out / f"hf_{family}_{name}", meta_from=hf_dir)


# -- scenario: one update at several layouts ---------------------------------------------


def _actor_cfg(**kw) -> ActorConfig:
    # Adam moves an element by ~lr * g / (|g| + eps): with eps 1e-8 an element whose gradient is
    # float noise (~1e-8) moves by up to lr, whatever the layout; 1e-4 keeps such moves ~1e-4 lr.
    base = dict(precision="fp32", lr=1e-3, micro_batch_tokens=48, entropy_coeff=0.01, adam_eps=1e-4)
    base.update(kw)
    return ActorConfig(**base)


def scenario_update(args: dict) -> None:
    out = Path(args["out"])
    for model, name in args["runs"]:
        hf_dir = args["models"][model]
        arch = ModelConfig.from_hf_dir(hf_dir)
        actor = Actor(arch, LAYOUTS[name], _actor_cfg(), init_from=hf_dir)
        result = {"metrics": []}
        s1 = samples_for_step(1)
        old = actor.logprobs(s1)
        result["logprobs"] = old
        result["metrics"].append(actor.update(s1, old_logprobs=old))
        result["metrics"].append(actor.update(samples_for_step(2)))  # on-policy path
        result["state"] = gather_state(actor)
        if name == "single" and model == "qwen2":
            result["errors"] = _bad_inputs(actor)
            result["kl"] = _kl_to_reference(actor, hf_dir)
        if is_writer():
            torch.save(result, out / f"update_{model}_{name}.pt")


def _bad_inputs(actor: Actor) -> list[str]:
    """Bad batches are refused with a clear error and leave the weights untouched."""
    before = gather_state(actor)
    ok = samples_for_step(1)[:2]
    bad = [
        [dataclasses.replace(ok[0], response_token_ids=[])],
        [dataclasses.replace(ok[0], prompt_token_ids=[])],
        [dataclasses.replace(ok[0], response_token_ids=[1, 2, 10**6])],
        [dataclasses.replace(ok[0], advantage=float("nan")), ok[1]],
    ]
    errors = []
    for batch in bad:
        try:
            actor.update(batch)
        except ValueError as e:
            errors.append(str(e))
    try:
        actor.update(ok, old_logprobs=[[0.0]])
    except ValueError as e:
        errors.append(str(e))
    after = gather_state(actor)
    assert all(torch.equal(before[k], after[k]) for k in before)
    return errors


def _kl_to_reference(actor: Actor, hf_dir: str) -> list[float]:
    """A frozen reference policy and a KL-regularised actor live next to ``actor``."""
    arch, layout = actor.arch, actor.parallel
    probe = samples_for_step(5)
    before = actor.logprobs(probe)
    ref = Actor(arch, layout, _actor_cfg(), init_from=hf_dir, trainable=False)
    kl_actor = Actor(arch, layout, _actor_cfg(kl_coef=0.1), init_from=hf_dir)
    batch = samples_for_step(3)
    ref_lp = ref.logprobs(batch)
    kls = [kl_actor.update(batch, ref_logprobs=ref_lp)["kl"] for _ in range(2)]
    assert actor.logprobs(probe) == before  # the first actor is untouched
    return kls


# -- scenario: updates for an outside reference ------------------------------------------


def scenario_reference(args: dict) -> None:
    """Per case, a fresh actor from the HF weights takes one on-policy update per batch of
    ``args["batches"]`` (samples as JSON dicts); metrics and weights after each go to the test."""
    out = Path(args["out"])
    arch = ModelConfig.from_hf_dir(args["hf"])
    batches = [
        [
            TrainSample(
                TaskType(d["task"]), Role(d["role"]), d["prompt"], d["response"], 0.0, d["adv"]
            )
            for d in batch
        ]
        for batch in args["batches"]
    ]
    for name, overrides in args["cases"].items():
        actor = Actor(arch, LAYOUTS["single"], _actor_cfg(**overrides), init_from=args["hf"])
        result = []
        for batch in batches:
            metrics = actor.update(batch)
            result.append({"metrics": metrics, "state": gather_state(actor)})
        torch.save(result, out / f"reference_{name}.pt")


# -- scenario: activation recompute ------------------------------------------------------


def scenario_recompute(args: dict) -> None:
    """Two updates with recompute=full and with recompute=none from the same weights."""
    out = Path(args["out"])
    arch = ModelConfig.from_hf_dir(args["hf"])
    for name in args["layouts"]:
        for recompute in ("none", "full"):
            cfg = _actor_cfg(recompute=recompute)
            actor = Actor(arch, LAYOUTS[name], cfg, init_from=args["hf"])
            metrics = [actor.update(samples_for_step(s)) for s in (1, 2)]
            state = gather_state(actor)
            if is_writer():
                torch.save({"metrics": metrics, "state": state}, out / f"{name}_{recompute}.pt")


# -- scenario: bf16 on CPU ----------------------------------------------------------------


def scenario_bf16(args: dict) -> None:
    """Two updates in fp32 and in bf16 (megatron's mixed-precision optimizer: fp32 master
    weights and Adam state behind bf16 model weights) from the same weights, one process."""
    out = Path(args["out"])
    arch = ModelConfig.from_hf_dir(args["hf"])
    for precision in ("fp32", "bf16"):
        actor = Actor(
            arch, LAYOUTS["single"], _actor_cfg(precision=precision), init_from=args["hf"]
        )
        before = gather_state(actor)
        metrics = [actor.update(samples_for_step(s)) for s in (1, 2)]
        result = {
            "metrics": metrics,
            "before": before,
            "after": gather_state(actor),
            "param_dtypes": sorted({str(p.dtype) for p in actor.models[0].parameters()}),
            "optimizers": [
                type(o).__name__ for o in getattr(actor.optimizer, "chained_optimizers", [])
            ],
        }
        torch.save(result, out / f"bf16_{precision}.pt")


# -- scenario: checkpoint save / resume ---------------------------------------------------


def _run_steps(actor: Actor, steps: range) -> list[dict]:
    return [actor.update(samples_for_step(s)) for s in steps]


def scenario_ckpt_save(args: dict) -> None:
    out = Path(args["out"])
    arch = ModelConfig.from_hf_dir(args["hf"])
    for name, layout, dopt in args["runs"]:
        par = dataclasses.replace(LAYOUTS[layout], distributed_optimizer=dopt)
        actor = Actor(arch, par, _actor_cfg(), init_from=args["hf"])
        first = _run_steps(actor, range(1, 2))
        checkpoint.save(actor, out / f"ckpt_{name}")
        rest = _run_steps(actor, range(2, 5))
        if is_writer():
            torch.save({"metrics": first + rest}, out / f"ckpt_{name}_uninterrupted.pt")


def scenario_ckpt_resume(args: dict) -> None:
    """``args["source"]`` names the checkpoint each run resumes from (default ``ckpt_NAME``);
    ``args["refused"]``: (checkpoint, layout) pairs whose load must fail, naming the fix."""
    out = Path(args["out"])
    arch = ModelConfig.from_hf_dir(args["hf"])
    for ckpt, layout in args.get("refused", []):
        par = dataclasses.replace(LAYOUTS[layout], distributed_optimizer=True)
        actor = Actor(arch, par, _actor_cfg(), init_from=args["hf"])
        try:
            checkpoint.load(actor, out / ckpt)
        except ValueError as e:
            assert "azr convert reshardable" in str(e), e
        else:
            raise AssertionError(f"{ckpt} loaded at {layout}")
    for name, layout, dopt in args["runs"]:
        par = dataclasses.replace(LAYOUTS[layout], distributed_optimizer=dopt)
        actor = Actor(arch, par, _actor_cfg(), init_from=args["hf"])
        checkpoint.load(actor, out / args.get("source", {}).get(name, f"ckpt_{name}"))
        assert actor.steps == 1, actor.steps
        rest = _run_steps(actor, range(2, 5))
        if is_writer():
            torch.save({"metrics": rest}, out / f"ckpt_{name}_resumed.pt")


# -- scenario: optimizer state allocated at construction ---------------------------------


def scenario_optimizer_state(args: dict) -> None:
    """Adam's state exists as soon as the actor is built (before any engine would measure free
    memory), and two updates from it equal two updates from torch's lazy initialisation."""
    arch = ModelConfig.from_hf_dir(args["hf"])
    result: dict = {}
    for dopt in (False, True):
        par = ParallelConfig(distributed_optimizer=dopt)
        early = Actor(arch, par, _actor_cfg(), init_from=args["hf"])
        opts = getattr(early.optimizer, "chained_optimizers", [early.optimizer])
        states = [st for o in opts for st in o.optimizer.state.values()]
        params = [p for o in opts for g in o.optimizer.param_groups for p in g["params"]]
        mem = early.memory_bytes()
        zero = all(
            float(st["exp_avg"].abs().sum()) == 0 and float(st["step"]) == 0 for st in states
        )
        lazy = Actor(arch, par, _actor_cfg(), init_from=args["hf"])
        for o in getattr(lazy.optimizer, "chained_optimizers", [lazy.optimizer]):
            o.optimizer.state.clear()  # as get_megatron_optimizer leaves it
        runs = [_run_steps(a, range(1, 3)) for a in (early, lazy)]
        same = all(
            torch.equal(a, b)
            for (_, a), (_, b) in zip(
                early.state_dict_for_rollout(), lazy.state_dict_for_rollout(), strict=True
            )
        )
        result["dopt" if dopt else "plain"] = {
            "states": len(states),
            "params": len(params),
            "zero": zero,
            "optimizer_bytes": mem["optimizer"],
            "numel": sum(p.numel() for p in params),
            "losses": [[m["loss"] for m in r] for r in runs],
            "weights_equal": same,
        }
    if is_writer():
        Path(args["out"], "optimizer_state.json").write_text(json.dumps(result))


# -- scenario: a local-spec checkpoint into a model with Transformer Engine extra state -------


class ExtraStateAttention(PackedAttention):
    """Stands in for TE's DotProductAttention on CPU: the module carries extra state (TE's FP8
    metadata) in its state dict, hence in its sharded state dict (a ShardedObject)."""

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor([7.0])

    def set_extra_state(self, state: object) -> None:
        self.restored = state


class ExtraWeightAttention(ExtraStateAttention):
    """As above plus a real parameter no local-spec checkpoint holds."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.te_scale = torch.nn.Parameter(torch.ones(1))


def scenario_ckpt_extra_state(args: dict) -> None:
    out = Path(args["out"])
    arch = ModelConfig.from_hf_dir(args["hf"])
    local = Actor(arch, ParallelConfig(), _actor_cfg(), init_from=args["hf"], trainable=False)
    checkpoint.save(local, out / "local")
    samples = samples_for_step(1)
    want = torch.tensor([x for lp in local.logprobs(samples) for x in lp])
    results = {}
    for name, attention in (("extra_state", ExtraStateAttention), ("weight", ExtraWeightAttention)):
        spec.PackedAttention = attention  # what local_layer_spec() builds from now on
        try:
            te_like = Actor(arch, ParallelConfig(), _actor_cfg(), trainable=False)
            sd = te_like.models[0].sharded_state_dict()
            extra = [k for k in sd if k.endswith("core_attention._extra_state")]
            try:
                checkpoint.load_weights(te_like, out / "local")
            except ValueError as e:
                results[name] = {"error": str(e), "extra_keys": extra}
                continue
            got = torch.tensor([x for lp in te_like.logprobs(samples) for x in lp])
            results[name] = {"max_diff": (got - want).abs().max().item(), "extra_keys": extra}
        finally:
            spec.PackedAttention = PackedAttention
    if is_writer():
        (out / "extra_state.json").write_text(json.dumps(results))


SCENARIOS = {
    "logits": scenario_logits,
    "update": scenario_update,
    "recompute": scenario_recompute,
    "bf16": scenario_bf16,
    "reference": scenario_reference,
    "ckpt_save": scenario_ckpt_save,
    "ckpt_resume": scenario_ckpt_resume,
    "ckpt_extra_state": scenario_ckpt_extra_state,
    "optimizer_state": scenario_optimizer_state,
}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]](json.loads(sys.argv[2]))
    dist.barrier()
    dist.destroy_process_group()
