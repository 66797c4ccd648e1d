"""Vocab-parallel log-prob/entropy: the torch and chunked backends and the TP combination in
process, the Triton kernels through Triton's CPU interpreter in a subprocess
(kernels_interp_cases.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kernels_helpers import make_case, reference, sharded

from kernels import logprob_entropy as lpe
from kernels.logprob_entropy import resolve_backend, row_stats, triton_available
from megatron_azr.train.logprobs import logprob_and_entropy

ROOT = Path(__file__).resolve().parents[2]
# Where scripts/setup.sh --tests installs triton, outside the environment (it breaks `import vllm`).
TRITON_DIR = Path(os.environ.get("AZR_TRITON_INTERP", ROOT / ".cache" / "triton-interp"))


@pytest.fixture
def small_chunks(monkeypatch):
    """Blocks of 3 rows of a 97-wide vocabulary: the chunked cases span several, the last
    ragged."""
    monkeypatch.setattr(lpe, "CHUNK_ELEMENTS", 3 * 97)


def test_backend_resolution_on_cpu():
    x = torch.zeros(2, 3)
    assert resolve_backend("auto", x) == "chunked"
    assert resolve_backend("auto", x.double()) == "chunked"
    assert resolve_backend("torch", x) == "torch"
    assert resolve_backend("chunked", x) == "chunked"
    with pytest.raises(ValueError, match="unknown log-prob backend"):
        resolve_backend("cuda", x)
    if not triton_available():  # the main environment: no triton
        with pytest.raises(ImportError, match="triton"):
            resolve_backend("triton", x)


def test_actor_config_takes_the_backend():
    from megatron_azr.config import ConfigError, load_config

    assert load_config(None, ["actor.logprob_kernel=torch"]).actor.logprob_kernel == "torch"
    with pytest.raises(ConfigError, match="logprob_kernel"):
        load_config(None, ["actor.logprob_kernel=cuda"])


def test_row_blocks_cover_every_row_once(small_chunks):
    blocks = lpe.row_blocks(torch.zeros(11, 97))
    assert [(b.start, b.stop) for b in blocks] == [(0, 3), (3, 6), (6, 9), (9, 11)]
    assert lpe.row_blocks(torch.zeros(0, 97)) == []
    assert len(lpe.row_blocks(torch.zeros(5, 10**6))) == 5  # at least one row per block


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("backend", ["torch", "chunked"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shards", [1, 2, 3])
def test_torch_shards_combine_to_full_vocabulary(shards, dtype, backend):
    logits, target, g_lp, g_ent = make_case(11, 97, dtype, seed=shards)
    lp, ent, grad = sharded(logits, target, shards, backend, g_lp, g_ent)
    ref_lp, ref_ent, ref_grad = reference(logits, target, g_lp, g_ent)
    atol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(lp.double(), ref_lp, rtol=0, atol=atol)
    torch.testing.assert_close(ent.double(), ref_ent, rtol=0, atol=atol)
    assert grad.dtype == dtype
    if dtype == torch.bfloat16:
        torch.testing.assert_close(grad, ref_grad.to(dtype), rtol=2**-7, atol=1e-6)
    else:
        torch.testing.assert_close(grad.double(), ref_grad, rtol=0, atol=atol)


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("backend", ["torch", "chunked"])
def test_large_magnitude_logits_torch(backend):
    logits, target, g_lp, g_ent = make_case(5, 130, torch.float32, scale=30.0, offset=1e4)
    logits[1] = torch.linspace(-1e4, 1e4, 130)
    lp, ent, grad = sharded(logits, target, 2, backend, g_lp, g_ent)
    ref_lp, ref_ent, ref_grad = reference(logits, target, g_lp, g_ent)
    torch.testing.assert_close(lp.double(), ref_lp, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(ent.double(), ref_ent, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=0, atol=1e-5)


def test_row_stats_definition():
    z = torch.tensor([[1.0, 3.0, 2.0]])
    m, s, w = row_stats(z, "torch")
    e = torch.exp(z[0] - 3.0)
    assert m.item() == 3.0
    assert s.item() == pytest.approx(e.sum().item())
    assert w.item() == pytest.approx((e * (z[0] - 3.0)).sum().item())


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("backend", ["torch", "chunked"])
def test_function_saves_the_logits_not_an_fp32_copy(backend):
    """The backward recomputes from the logits themselves (no fp32 shard kept alive)."""
    logits, target, _, _ = make_case(4, 50, torch.bfloat16)
    x = logits.clone().requires_grad_(True)
    lp, ent = logprob_and_entropy(x, target, backend=backend)
    saved = [t for t in lp.grad_fn.saved_tensors if t.dim() == 2]
    assert len(saved) == 1 and saved[0].dtype == torch.bfloat16
    (lp.sum() + ent.sum()).backward()
    ref_grad = reference(logits, target, torch.ones(4), torch.ones(4))[2]
    torch.testing.assert_close(x.grad, ref_grad.to(torch.bfloat16), rtol=2**-7, atol=1e-6)


def _peak_above(fn) -> int:
    """Peak resident bytes while ``fn`` runs, above the resident bytes before it (the kernel's
    high-water mark, reset first)."""

    def status(key: str) -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if key in x)
        return int(line.split()[1]) * 1024

    Path("/proc/self/clear_refs").write_text("5")
    base = status("VmRSS:")
    fn()
    return status("VmHWM:") - base


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_chunked_keeps_only_logits_and_gradient_at_full_size():
    """Forward and backward over 256 MiB of fp32 logits: the chunked backend's peak above the
    live logits is their gradient plus a few blocks; the reference's is several copies."""
    logits, target, g_lp, g_ent = make_case(1024, 65536, torch.float32)
    size = logits.numel() * logits.element_size()

    def step(backend: str) -> None:
        x = logits.requires_grad_(True)
        lp, ent = logprob_and_entropy(x, target, backend=backend)
        torch.autograd.backward((lp, ent), (g_lp, g_ent))
        x.grad = None

    step("chunked")  # warm-up: the allocator's first use
    chunked = _peak_above(lambda: step("chunked"))
    reference = _peak_above(lambda: step("torch"))
    assert chunked < 1.25 * size, (chunked / size, reference / size)
    assert reference > 2.5 * size, (chunked / size, reference / size)


def _pytest_with_triton(cases: str, tmp_path: Path, interpret: bool) -> None:
    """Run ``cases`` with pytest in a subprocess that sees the isolated triton install."""
    if not (TRITON_DIR / "triton" / "__init__.py").exists():
        pytest.fail(f"no triton under {TRITON_DIR}: run scripts/setup.sh --tests")
    env = {
        **os.environ,
        "PYTHONPATH": f"{TRITON_DIR}{os.pathsep}{ROOT}",
        "TRITON_CACHE_DIR": str(tmp_path / "triton-cache"),
        "TRITON_DEFAULT_FP_FUSION": "1",
    }
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--rootdir={ROOT}"]
    cmd.append(str(Path(__file__).with_name(cases)))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout


def test_triton_kernels_in_interpreter(tmp_path):
    """The Triton kernels run by Triton's CPU interpreter: kernels_interp_cases.py."""
    _pytest_with_triton("kernels_interp_cases.py", tmp_path, interpret=True)


def test_triton_kernels_compile_for_gpus(tmp_path):
    """The same kernels compiled for sm_80 / sm_90 without a GPU: kernels_compile_cases.py."""
    _pytest_with_triton("kernels_compile_cases.py", tmp_path, interpret=False)
