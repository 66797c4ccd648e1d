"""Job kinds and statuses through the real sandboxed pool (spec §5.2, §6.3)."""

from __future__ import annotations

import pytest
from executor_helpers import run1, src

from megatron_azr.azr.protocols import Job

pytestmark = pytest.mark.sandbox


def test_results_come_back_in_job_order_with_ids(clean):
    jobs = [
        Job(f"j{i}", "run", f"def f(x):\n    return x + {i}", (str(i),), timeout_s=5.0)
        for i in range(40)
    ]
    results = clean.run(jobs)
    assert [r.id for r in results] == [f"j{i}" for i in range(40)]
    assert [r.outputs for r in results] == [[str(2 * i)] for i in range(40)]
    assert all(r.status == "ok" and r.time_s > 0 for r in results)


def test_validation_runs_under_two_hash_seeds(clean):
    # Set order of strings depends on the hash seed: two workers (two seeds) disagree.
    words = "['apple', 'banana', 'cherry', 'date', 'elder', 'fig', 'grape']"
    r = run1(clean, "def f(xs):\n    return list(set(xs))", words, kind="validate")
    assert r.status == "invalid" and r.error_type == "NonDeterministic"
    assert "hash seed" in r.stderr_tail
    r = run1(clean, "def f(xs):\n    return sorted(set(xs))", "['b', 'a', 'b']", kind="validate")
    assert r.ok and r.outputs == ["['a', 'b']"]


def test_validation_rejects_what_the_original_let_through(clean):
    programs = {
        "import random\ndef f(x):\n    return random.random()": "BannedImport",
        "def f(x):\n    return lambda: x": "AddressInOutput",
        "state = [0]\ndef f(x):\n    state[0] += 1\n    return state[0]": "NonDeterministic",
        "def f(x):\n    return float('nan')": "UnequalToItself",
    }
    for program, error_type in programs.items():
        r = run1(clean, program, kind="validate", banned_imports=("random",))
        assert (r.status, r.error_type) == ("invalid", error_type), program
    r = run1(clean, "def f(x):\n    raise Exception('no error in this name')", kind="validate")
    assert r.status == "error" and not r.ok and r.outputs == [""]


def test_program_returning_the_word_error_is_fine(clean):
    # The original judged by substring "error" in the status; here only the status counts.
    r = run1(clean, "def f(x):\n    return 'Error: ' + x", "'none'", kind="validate")
    assert r.ok and r.outputs == ["'Error: none'"]


def test_deduction_abduction_induction(clean):
    program = src("""
        class P:
            def __init__(self, v):
                self.v = v
            def __eq__(self, other):
                return isinstance(other, P) and other.v == self.v
            def __repr__(self):
                return f'P({self.v})'
        def f(v):
            return P(v * 2)
    """)
    sort2 = "def f(a, b):\n    return sorted([a, b])"
    jobs = [
        # A program's own class is not in an answer's scope: such a gold cannot be matched
        # (validation rejects it as NoRoundTrip).
        Job("d1", "deduction", program, expected=("P(4)",), prediction="P(4)"),
        Job("d2", "deduction", program, expected=("[4, 'a']",), prediction="[5, 'a']"),
        Job("d3", "deduction", program, expected=("[4, 'a']",), prediction="[4, 'a'"),
        Job("a1", "abduction", sort2, expected=("[1, 2]",), prediction="2, 1"),
        Job("i1", "induction", "", inputs=("1", "2", "0"), expected=("1.0", "0.5", "inf"),
            prediction="def f(x):\n    return 1 / x", imports=("import math",)),
    ]  # fmt: skip
    d1, d2, d3, a1, i1 = clean.run(jobs)
    assert (d1.status, d1.error_type, d1.matches) == ("error", "NotLiteral", [False])
    assert d2.ok and d2.matches == [False]
    assert d3.status == "error" and d3.matches == [False] and d3.error_type == "SyntaxError"
    assert a1.ok and a1.matches == [True] and a1.outputs == ["[1, 2]"]
    # Fractional induction stays computable: one pair raised, the others are judged.
    assert i1.status == "error" and i1.matches == [True, True, False]


def test_statuses(clean):
    jobs = [
        Job("timeout", "run", "def f(x):\n    while True:\n        pass", ("1",), timeout_s=1.0),
        Job("memory", "run", "def f(x):\n    return len(bytearray(1 << 40))", ("1",)),
        Job("killed", "run", "import ctypes\ndef f(x):\n    return ctypes.string_at(0)", ("1",)),
        Job("stdin", "run", "def f(x):\n    return input()", ("1",)),
        Job("bad", "nonsense", "def f(x):\n    return x", ("1",)),  # type: ignore[arg-type]
        Job("big", "run", "x = 1\n" * 100_000 + "def f(x):\n    return x", ("1",)),
    ]
    t, m, k, s, bad, big = clean.run(jobs)
    assert (t.status, t.error_type) == ("timeout", "Timeout") and 1.0 <= t.time_s < 5.0
    assert m.status == "memory" and m.error_type == "MemoryError"
    assert (k.status, k.error_type) == ("killed", "SIGSEGV")
    assert s.status == "error" and s.error_type == "EOFError"  # stdin is /dev/null: no hang
    assert (bad.status, bad.error_type) == ("invalid", "BadJob")
    assert (big.status, big.error_type) == ("invalid", "ProgramTooLarge")


def test_timeouts_cut_only_the_item_that_hangs(clean):
    program = "def f(x):\n    while x:\n        pass\n    return x"
    r = run1(clean, program, "0", "1", "2", timeout_s=0.5)
    assert r.status == "timeout" and r.outputs[0] == "0"
