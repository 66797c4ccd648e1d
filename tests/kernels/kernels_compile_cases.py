"""Ahead-of-time compilation of the Triton kernels for NVIDIA GPUs, on a machine without one.

Not collected by the main run: ``test_kernels_logprob_entropy.py`` runs this file in a
subprocess with the isolated triton install on ``PYTHONPATH`` (and without the interpreter,
which replaces ``@triton.jit`` functions by Python ones).
"""

from __future__ import annotations

import os
import subprocess

import pytest
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource

from kernels import logprob_entropy_triton as kt

assert os.environ.get("TRITON_INTERPRET") != "1"


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_kernels_compile_without_register_spills(arch, dtype, tmp_path):
    """A cubin for A100 / H100 at the launch configuration of a 152k vocabulary at TP=2;
    ptxas reports no spills."""
    block, warps = kt.launch_config(152064 // 2)
    assert block == kt.MAX_BLOCK
    per_row = ["*fp32"] * 5
    sigs = {
        kt._row_stats_kernel: [f"*{dtype}", "i64", "*fp32", "*fp32", "*fp32", "i32"],
        kt._logits_grad_kernel: [f"*{dtype}", f"*{dtype}", "i64", "i64", "*i64", *per_row, "i32"],
    }
    for fn, types in sigs.items():
        sig = dict(zip(fn.arg_names, [*types, "constexpr"], strict=True))
        compiled = triton.compile(
            ASTSource(fn, sig, {"BLOCK": block}),
            target=GPUTarget("cuda", arch, 32),
            options={"num_warps": warps},
        )
        assert compiled.asm["cubin"], fn.__name__
        ptx = tmp_path / f"{fn.__name__}.ptx"
        ptx.write_text(compiled.asm["ptx"])
        # Triton emits sm_90a PTX for Hopper.
        sm = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        out = subprocess.run(
            [get_ptxas(arch).path, f"-arch={sm}", "-v", str(ptx), "-o", os.devnull],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "0 bytes spill stores, 0 bytes spill loads" in out.stdout + out.stderr, out
