"""Installed packages exposed to jobs (``executor.packages``, default numpy and sympy; issue 9,
fix 4): importable, read-only, nothing else of site-packages, a missing one refused at start."""

from __future__ import annotations

import pytest
from executor_helpers import executor_config, run1, seen, src

from megatron_azr.azr.protocols import Job
from megatron_azr.executor import ExecutorError, SandboxExecutor, SandboxUnavailable

pytestmark = pytest.mark.sandbox


def test_jobs_compute_with_numpy_and_sympy(clean):
    program = src("""
        import sys
        preloaded = sorted(m for m in ('numpy', 'sympy') if m in sys.modules)
        import numpy as np
        import sympy
        def f(n):
            a = np.arange(n, dtype=np.int64).reshape(2, -1)
            x = sympy.Symbol('x')
            roots = sympy.solve(x**2 - n, x)
            return (preloaded, int(a.sum()), a.T.tolist(), float(np.linalg.det(np.eye(2) * 2)),
                    [str(r) for r in roots], str(sympy.Rational(n, 4)))
    """)
    out = seen(run1(clean, program, "6", timeout_s=30.0))
    # Nothing preloaded by default: each job imports what it uses.
    assert out == ([], 15, [[0, 3], [1, 4], [2, 5]], 4.0, ["-sqrt(6)", "sqrt(6)"], "3/2")


def test_preloaded_packages_are_in_the_fork_server():
    program = src("""
        import sys
        def f(x):
            return sorted(m for m in ('numpy', 'sympy', 'yaml') if m in sys.modules)
    """)
    # yaml is not exposed, so it is not preloaded either (and not importable).
    with SandboxExecutor(executor_config(workers=2, preload=["numpy", "yaml"])) as ex:
        assert ex.spec.preloaded_packages == ["numpy"]
        assert seen(run1(ex, program)) == ["numpy"]


def test_numpy_scalars_are_literals_of_an_answer(clean):
    program = "import numpy as np\ndef f(x):\n    return np.int64(x) * 2"
    imports = ("import numpy as np",)
    answers = {"6": True, "np.int64(6)": True, "6.0": True, "np.int64(7)": False, "f(3)": False}
    jobs = [Job(a, "deduction", program, expected=("np.int64(6)",), prediction=a, imports=imports)
            for a in answers]  # fmt: skip
    jobs.append(Job("validate", "validate", program, ("3",)))
    *graded, valid = clean.run(jobs)
    assert {r.id: r.matches[0] for r in graded} == answers
    assert valid.ok and valid.outputs == ["np.int64(6)"]  # reads back: np is an import's name


def test_only_the_listed_packages(clean):
    # Read-only: test_executor_layers.py::test_minimal_read_only_filesystem writes into them.
    probe = src("""
        import importlib
        def f(x):
            out = []
            for name in ('mpmath', 'yaml', 'torch', 'megatron_azr'):
                try:
                    importlib.import_module(name)
                    out.append('imported')
                except ImportError as e:
                    out.append(type(e).__name__)
            return out
    """)
    mpmath, *others = seen(run1(clean, probe))  # type: ignore[misc]
    assert mpmath == "imported"  # sympy's requirement comes along
    assert others == ["ModuleNotFoundError"] * 3  # installed for the trainer, not listed


def test_standard_library_only_and_missing_packages():
    with SandboxExecutor(executor_config(workers=2, packages=[])) as ex:
        r = run1(ex, "import numpy\ndef f(x):\n    return x")
        assert r.error_type == "ModuleNotFoundError"
        assert ex.spec.package_path("/tmp") == ""
    with pytest.raises(SandboxUnavailable, match="no-such-distribution"):
        SandboxExecutor(executor_config(workers=2, packages=["numpy", "no-such-distribution"]))


def test_a_package_that_does_not_import_stops_the_pool():
    # Debian's python3-sympy declares no requirements, so mpmath is not exposed with it: the
    # check at start imports each package in a job and names the one that fails.
    cfg = executor_config(workers=2, python="/usr/bin/python3", packages=["sympy"])
    with pytest.raises(ExecutorError, match=r"'sympy' does not import.*mpmath"):
        SandboxExecutor(cfg)
