"""The Triton kernels on CPU through Triton's interpreter, against the torch reference.

Not collected by the main run (triton must stay out of the main environment): the test
``test_kernels_logprob_entropy.py::test_triton_kernels_in_interpreter`` runs this file with
pytest in a subprocess, with ``TRITON_INTERPRET=1`` and the isolated triton install on
``PYTHONPATH``.

Tolerances: forward log-prob and entropy within 1e-5 (absolute) of the float64 full-vocabulary
reference for fp32 and bf16 logits (both are computed in fp32 from the same values) and within
2e-6 (+ 1e-6 relative) of the torch backend; fp32 gradients within 1e-5 of float64 and 1e-6 (+
1e-5 relative) of the torch backend; bf16 gradients within one bf16 step (rtol 2^-7): the
interpreter truncates fp32 -> bf16 where the GPU (and torch) round to nearest even.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from kernels_helpers import make_case, reference, sharded
from processes import child_env, torchrun_cmd

from kernels import logprob_entropy_triton as kt
from kernels.logprob_entropy import logits_grad, resolve_backend, row_stats
from megatron_azr.train.logprobs import logprob_and_entropy

assert os.environ.get("TRITON_INTERPRET") == "1", "run through test_kernels_logprob_entropy.py"
# numpy evaluates the masked lanes too (exp(-inf) * -inf) before tl.where discards them.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

HERE = Path(__file__).resolve().parent
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
GRAD_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.bfloat16: dict(rtol=2**-7, atol=1e-6)}


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """64-wide blocks: every shape below spans several blocks, most with a ragged last one."""
    monkeypatch.setattr(kt, "MAX_BLOCK", 64)


def check_grad(grad, ref_grad, dtype):
    if dtype == torch.float32:
        torch.testing.assert_close(grad.double(), ref_grad, rtol=0, atol=1e-5)
    else:
        torch.testing.assert_close(grad, ref_grad.to(dtype), rtol=2**-7, atol=1e-6)


def check_against(lp, ent, grad, ref_lp, ref_ent, ref_grad, dtype):
    torch.testing.assert_close(lp.double(), ref_lp, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent.double(), ref_ent, rtol=0, atol=1e-5)
    check_grad(grad, ref_grad, dtype)


def test_interpreter_backend_is_selected():
    x = torch.zeros(2, 3)
    assert resolve_backend("triton", x) == "triton"
    assert resolve_backend("auto", x) == "chunked"  # auto takes Triton on CUDA only


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (4, 64), (17, 300), (9, 1000)])
def test_single_shard_matches_torch_and_reference(shape, dtype):
    logits, target, g_lp, g_ent = make_case(*shape, dtype, seed=shape[1])
    lp, ent, grad = sharded(logits, target, 1, "triton", g_lp, g_ent)
    t_lp, t_ent, t_grad = sharded(logits, target, 1, "torch", g_lp, g_ent)
    torch.testing.assert_close(lp, t_lp, rtol=1e-6, atol=2e-6)
    torch.testing.assert_close(ent, t_ent, rtol=1e-6, atol=2e-6)
    assert grad.dtype == dtype
    torch.testing.assert_close(grad, t_grad, **GRAD_TOL[dtype])
    check_against(lp, ent, grad, *reference(logits, target, g_lp, g_ent), dtype)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shards", [2, 3])
def test_shards_combine_to_full_vocabulary(shards, dtype):
    """Ragged slices (301 = 151 + 150, 101 + 100 + 100); targets fall in every slice."""
    logits, target, g_lp, g_ent = make_case(23, 301, dtype, seed=shards)
    lp, ent, grad = sharded(logits, target, shards, "triton", g_lp, g_ent)
    check_against(lp, ent, grad, *reference(logits, target, g_lp, g_ent), dtype)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_large_magnitude_logits(dtype):
    """Logits around 1e4 (no overflow in exp), a row spanning -1e4..1e4 (one shard's max far
    below the other's), a near-uniform row (entropy ~ log V)."""
    logits, target, g_lp, g_ent = make_case(6, 257, dtype, scale=30.0, offset=1e4, seed=3)
    logits[1] = torch.linspace(-1e4, 1e4, 257).to(dtype)
    logits[2] = (1e4 + torch.arange(257) * 1e-3).to(dtype)
    target[1] = 3  # a target with log p ~ -2e4
    ref = reference(logits, target, g_lp, g_ent)
    for shards in (1, 2):
        lp, ent, grad = sharded(logits, target, shards, "triton", g_lp, g_ent)
        assert torch.isfinite(lp).all() and torch.isfinite(ent).all()
        # log p(t) reaches -2e4 here: its fp32 resolution is 2e-3.
        torch.testing.assert_close(lp.double(), ref[0], rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(ent.double(), ref[1], rtol=0, atol=1e-5)
        check_grad(grad, ref[2], dtype)


def test_strided_rows_are_read_in_place_and_transposed_ones_copied():
    base, target, g_lp, g_ent = make_case(7, 400, torch.float32, seed=11)
    view = base[:, 50:350]  # row stride 400
    assert kt._rows(view) is view
    target = target % 300
    ref = reference(view.contiguous(), target, g_lp, g_ent)
    check_against(*sharded(view, target, 1, "triton", g_lp, g_ent), *ref, torch.float32)
    t = view.t().contiguous().t()  # column-major: stride(-1) != 1
    check_against(*sharded(t, target, 2, "triton", g_lp, g_ent), *ref, torch.float32)


def test_empty_batch():
    logits = torch.zeros(0, 100, dtype=torch.bfloat16)
    stats = row_stats(logits, "triton")
    assert stats.max.shape == (0,)
    empty = torch.zeros(0)
    grad = logits_grad(logits, torch.zeros(0, dtype=torch.long), *[empty] * 5, backend="triton")
    assert grad.shape == (0, 100) and grad.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_autograd_function_with_the_kernels(dtype):
    """Through the actor's entry point: loss.sum() hands expanded (stride-0) upstream grads."""
    logits, target, _, _ = make_case(13, 200, dtype, seed=5)
    grads = {}
    for backend in ("triton", "torch"):
        x = logits.clone().requires_grad_(True)
        lp, ent = logprob_and_entropy(x, target, backend=backend)
        (lp.sum() - 0.5 * ent.sum()).backward()
        grads[backend] = (lp.detach(), ent.detach(), x.grad)
    for a, b in zip(grads["triton"][:2], grads["torch"][:2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=2e-6)
    torch.testing.assert_close(grads["triton"][2], grads["torch"][2], **GRAD_TOL[dtype])


def test_two_process_gloo():
    """Real TP=2 over gloo: every backend through the all-reduces, against the full vocab."""
    backends = ["triton", "torch", "chunked"]
    cmd = [*torchrun_cmd(2), str(HERE / "kernels_dist_worker.py"), *backends]
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert proc.stdout.count(" ok") == 2 * 2 * len(backends)  # ranks x dtypes x backends
