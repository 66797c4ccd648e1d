"""torchrun worker: log-prob/entropy at TP = world size over gloo, each rank holding a ragged
slice of the vocabulary, against the full-vocabulary reference (the inputs are rebuilt from a
seed on every rank). Backends to check come as arguments."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from kernels_helpers import make_case, reference

from megatron_azr.train.logprobs import logprob_and_entropy


def main(backends: list[str]) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    for dtype in (torch.float32, torch.bfloat16):
        logits, target, g_lp, g_ent = make_case(19, 301, dtype, seed=7)
        ref_lp, ref_ent, ref_grad = reference(logits, target, g_lp, g_ent)
        parts = torch.tensor_split(torch.arange(logits.shape[1]), world)
        cols = parts[rank]
        for backend in backends:
            local = logits[:, cols].clone().requires_grad_(True)
            lp, ent = logprob_and_entropy(local, target, int(cols[0]), dist.group.WORLD, backend)
            (lp * g_lp + ent * g_ent).sum().backward()
            torch.testing.assert_close(lp.double(), ref_lp, rtol=0, atol=1e-5)
            torch.testing.assert_close(ent.double(), ref_ent, rtol=0, atol=1e-5)
            ref = ref_grad[:, cols].to(dtype)
            rtol = 0 if dtype == torch.float32 else 2**-7  # bf16 grads: one rounding step
            torch.testing.assert_close(local.grad, ref, atol=1e-5, rtol=rtol)
            print(f"rank {rank}: {backend} {dtype} ok", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
