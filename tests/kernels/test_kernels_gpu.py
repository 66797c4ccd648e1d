"""The Triton log-prob kernels on a CUDA GPU at realistic sizes. Skipped without CUDA.

Run on a GPU node with ``pytest -m gpu tests/kernels/test_kernels_gpu.py``. Tolerances: the
kernels and the torch reference both accumulate in fp32; log-prob and entropy agree within 1e-4
over a 76k-entry shard (summation order), bf16 gradients within one bf16 step.
"""

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

QWEN_VOCAB = 152064


def _case(n, v, dtype, seed=0):
    from kernels_helpers import make_case

    return [t.cuda() for t in make_case(n, v, dtype, scale=4.0, seed=seed)]


def _run(logits, target, g_lp, g_ent, backend):
    from megatron_azr.train.logprobs import logprob_and_entropy

    x = logits.detach().requires_grad_(True)
    lp, ent = logprob_and_entropy(x, target, backend=backend)
    torch.autograd.backward((lp, ent), (g_lp, g_ent))
    return lp.detach(), ent.detach(), x.grad


def test_auto_picks_the_kernels_on_cuda():
    from kernels.logprob_entropy import resolve_backend

    pytest.importorskip("triton")
    assert resolve_backend("auto", torch.zeros(1, 1, device="cuda", dtype=torch.bfloat16)) == (
        "triton"
    )
    assert resolve_backend("auto", torch.zeros(1, 1, device="cuda", dtype=torch.float64)) == (
        "chunked"
    )


@pytest.mark.parametrize(
    ("n", "v", "dtype"),
    [
        (8192, QWEN_VOCAB // 2, torch.bfloat16),  # 8k response tokens, Qwen2.5 vocab at TP=2
        (4096, QWEN_VOCAB, torch.bfloat16),  # TP=1
        (1024, 32000 + 13, torch.float32),  # ragged last block
    ],
)
def test_kernels_match_reference(n, v, dtype):
    case = _case(n, v, dtype)
    lp, ent, grad = _run(*case, backend="triton")
    r_lp, r_ent, r_grad = _run(*case, backend="torch")
    torch.testing.assert_close(lp, r_lp, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ent, r_ent, rtol=1e-5, atol=1e-4)
    assert grad.dtype == dtype
    tol = dict(rtol=2**-7, atol=1e-6) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad, r_grad, **tol)


def test_tp_split_matches_full_vocabulary_on_gpu():
    from kernels_helpers import reference, sharded

    logits, target, g_lp, g_ent = _case(512, 50000, torch.bfloat16, seed=1)
    lp, ent, grad = sharded(logits, target, 4, "triton", g_lp, g_ent)
    r_lp, r_ent, r_grad = reference(logits, target, g_lp, g_ent)
    torch.testing.assert_close(lp.double(), r_lp, rtol=0, atol=1e-4)
    torch.testing.assert_close(ent.double(), r_ent, rtol=0, atol=1e-4)
    torch.testing.assert_close(grad, r_grad.to(torch.bfloat16), rtol=2**-7, atol=1e-6)


def test_kernels_allocate_nothing_of_the_shard_size_but_the_gradient():
    logits, target, g_lp, g_ent = _case(8192, QWEN_VOCAB // 2, torch.bfloat16)
    _run(logits, target, g_lp, g_ent, "triton")  # compile outside the measurement
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    _run(logits, target, g_lp, g_ent, "triton")
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra < logits.nbytes + 64 * 2**20, extra  # the bf16 gradient + per-token vectors
