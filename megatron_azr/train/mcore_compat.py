"""megatron-core version-specific code, in one place (CPU patches live in ``cpu_compat``).

The APIs this project calls (GPTModel, layer specs, parallel_state, schedules, DDP,
get_megatron_optimizer, dist_checkpointing) have the same signatures in 0.16.1 (CPU CI,
Python 3.11) and 0.19.x (clusters, Python 3.12); what differs or is broken is handled here.

Workarounds for megatron-core's distributed-optimizer checkpoints without Apex/TE.

Without Apex or Transformer Engine, megatron's ``DistributedOptimizer`` wraps torch's Adam, and
its checkpoint load path (0.16.1, still present in 0.19.x) has these bugs:

* a fresh optimizer has no state, and building the sharded state dict for loading asserts on
  the per-param ``step`` it reads from that state: megatron's own fix is to take one dummy step
  (``_init_optimizer_states_with_dummy_values``), which we call;
* restoring per-param state copies every key of torch's Adam state, ``step`` included, from a
  checkpoint that does not store ``step`` per param (it travels in the param groups): KeyError
  in the ``fully_reshardable`` format; in ``dp_reshardable`` the "loaded" ``step`` is the
  tensor captured when the sharded state dict was built, i.e. the step *before* the load,
  which silently overwrites the restored one. Either way we keep the current ``step`` for that
  copy: the param groups' value, which ``load_state_dict`` put in place just before;
* ``load_state_dict`` gives every param the *same* ``step`` tensor; torch's Adam increments
  each param's step in place, so after resume the shared counter advances once per param per
  step and the bias correction drifts silently. We give each param its own copy.

Both are no-ops where Apex/TE fused Adam is used (the step lives in the param groups there).
The resume test (tests/train/test_parallel.py) compares resumed losses with an uninterrupted
run, so a regression shows up as a failure, not as drift.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


def _distributed_optimizers(optimizer: Any) -> Iterator[Any]:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if isinstance(opt, DistributedOptimizer):
            yield opt


def _uses_torch_adam() -> bool:
    from megatron.core.optimizer import distrib_optimizer

    return not getattr(distrib_optimizer, "HAVE_APEX_OR_TE", True)


def _keep_step_on_restore(opt: Any) -> None:
    if getattr(opt, "_azr_keeps_step", False):
        return
    original = opt._set_main_param_and_optimizer_states

    def set_states(model_param: Any, tensors: dict[str, torch.Tensor]) -> None:
        current = opt._get_main_param_and_optimizer_states(model_param)
        if "step" in current:
            tensors = {**tensors, "step": current["step"].detach().clone()}
        with torch.no_grad():
            original(model_param, tensors)

    opt._set_main_param_and_optimizer_states = set_states
    opt._azr_keeps_step = True


def prepare_optimizer_for_load(optimizer: Any) -> None:
    """Give a fresh distributed optimizer the state its checkpoint loader expects."""
    if not _uses_torch_adam():
        return
    for opt in _distributed_optimizers(optimizer):
        if len(opt.optimizer.state) == 0:
            opt._init_optimizer_states_with_dummy_values()
        _keep_step_on_restore(opt)


def fix_optimizer_after_load(optimizer: Any) -> None:
    """Un-share the per-param ``step`` tensors megatron's loader aliases."""
    if not _uses_torch_adam():
        return
    for opt in _distributed_optimizers(optimizer):
        for state in opt.optimizer.state.values():
            if "step" in state and isinstance(state["step"], torch.Tensor):
                state["step"] = state["step"].detach().clone()


def allocate_optimizer_state(optimizer: Any) -> None:
    """Create Adam's state now (zero moments, step 0) instead of at the first ``step()``.

    The first step fills an empty state exactly this way, so updates do not change; what
    changes is when the memory is taken: before the rollout engine measures free GPU memory,
    not after it (trainer.py). TE/Apex Adam: megatron's own ``init_state_fn`` (what its
    checkpoint loader calls on an empty state, ``optimizer/__init__.py:391`` in 0.16.1).
    torch's Adam: its lazy initialisation, step tensor included (``torch/optim/adam.py``
    ``_init_group``), which ``init_state_fn`` leaves out.
    """
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = opt.optimizer
        if isinstance(inner, torch.optim.Adam | torch.optim.AdamW):
            for group in inner.param_groups:
                for p in group["params"]:
                    if len(inner.state[p]) == 0:
                        inner.state[p].update(_torch_adam_state(p, group))
        elif getattr(opt, "init_state_fn", None) is not None:
            opt.init_state_fn(inner, opt.config)


def _torch_adam_state(p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
    on_device = group["capturable"] or group["fused"]
    state = {
        "step": torch.zeros((), dtype=torch.float32, device=p.device)
        if on_device
        else torch.tensor(0.0, dtype=_scalar_dtype()),
        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
    }
    if group["amsgrad"]:
        state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


def _scalar_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def in_process_write_results() -> None:
    """Keep megatron's checkpoint writer from starting a process that outlives the trainer.

    ``FileSystemWriterAsync`` (every ``dist_checkpointing.save``, 0.16.1 to 0.19.x) collects its
    write results in a queue it creates on first use as ``mp.get_context("spawn").Manager()
    .Queue()``: a manager *process* (spawned: it imports torch, holds a socket, ~200 MB) and a
    resource tracker, neither of which watches its parent. Killed with SIGKILL (a scheduler, the
    OOM killer), the trainer leaves both behind, reparented to init. A synchronous save (the only
    kind this project makes: ``AsyncRequest.execute_sync``) fills and drains that queue in the
    saving process itself, so a plain in-process queue does the job with no process at all. An
    asynchronous save would need the manager back (its writer is another process).
    """
    import queue

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = queue.Queue()
