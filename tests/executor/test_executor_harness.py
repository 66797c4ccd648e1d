"""The job templates and checks, run in-process on benign programs (no sandbox needed)."""

from __future__ import annotations

import json
import os

import pytest

from megatron_azr.azr.config import EXTRA_BANNED, ORIGINAL_BANNED
from megatron_azr.executor.runtime import harness


def execute(task: dict) -> list[dict]:
    r, w = os.pipe()
    try:
        harness.execute(harness.prepare({"timeout": 5.0, **task}), harness.Emitter(w))
    finally:
        os.close(w)
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.close(r)
    return [json.loads(line) for line in data.decode().splitlines()]


def test_truncation_is_the_originals():
    assert harness.truncate("  abc \n") == "abc"
    exact = "x" * 400
    assert harness.truncate(exact) == exact
    long = "a" * 150 + "b" * 300 + "c" * 150
    cut = harness.truncate(long)
    assert cut == long[:200] + "..." + long[-200:] and len(cut) == 403


@pytest.mark.parametrize(
    "source, banned, hits",
    [
        ("import numpy.random", ["random"], ["numpy.random"]),  # per component, as the original
        ("from os import path", ["os.path"], ["os.path"]),  # dotted: the original never matched
        ("import os.path as p", ["os.path"], ["os.path"]),
        ("import os", ["os.path"], []),  # a dotted entry does not ban its parent
        ("from collections import Counter", ORIGINAL_BANNED + EXTRA_BANNED, []),
        ("x = __import__('subprocess')", ["subprocess"], ["subprocess"]),
        ("import importlib\nm = importlib.import_module('socket')", ["socket"], ["socket"]),
        ("def f(:\n  import time", ["time"], ["time"]),  # unparsable: word-boundary fallback
        ("timer = 1", ["time"], []),
    ],
)
def test_banned_imports(source, banned, hits):
    assert harness.find_banned_imports(source, banned) == hits


def test_inputs_are_compiled_apart_from_the_program():
    # An input cannot close the call and run statements: it is an expression, compiled alone.
    [rec] = execute(
        {"kind": "run", "program": "def f(x):\n    return x", "inputs": ["1)\nimport os\n(2"]}
    )
    assert rec["status"] == "error" and rec["error_type"] == "SyntaxError"
    [rec] = execute({"kind": "run", "program": "def f(x):\n    return x", "inputs": ["3 # c"]})
    assert rec == {"i": 0, "status": "ok", "output": "3"}


def test_validate_statuses():
    ok = execute({"kind": "validate", "program": "def f(x):\n    return [x] * 2",
                  "inputs": ["'a'", "2"], "banned": ["os"], "round_trip": True})  # fmt: skip
    assert [r["output"] for r in ok] == ["['a', 'a']", "[2, 2]"]
    cases = {
        "def f(x:\n    return x": "SyntaxError",
        "import os\ndef f(x):\n    return x": "BannedImport",
        "def f(x, acc=[]):\n    acc.append(x)\n    return len(acc)": "NonDeterministic",
        "def f(x):\n    return float('nan')": "UnequalToItself",
        "def f(x):\n    return object()": "AddressInOutput",
        "def f(x):\n    return 'y' * 500": "NoRoundTrip",  # a cut repr cannot be a gold answer
        "import collections\ndef f(x):\n    return collections.Counter('aab')": "NoRoundTrip",
    }
    for program, error_type in cases.items():
        [rec] = execute({"kind": "validate", "program": program, "inputs": ["1"],
                         "banned": ["os"], "round_trip": True})  # fmt: skip
        assert (rec["status"], rec["error_type"]) == ("invalid", error_type), program


def test_raising_anything_is_an_error_even_without_error_in_its_name():
    # The original's bug: Exception('Non-deterministic code') and friends passed as valid.
    for program in (
        "def f(x):\n    raise Exception('bad')",
        "class Boom(Exception):\n    pass\ndef f(x):\n    raise Boom()",
        "def f(x):\n    raise SystemExit(0)",
        "def f(x):\n    return input()",
    ):
        [rec] = execute({"kind": "validate", "program": program, "inputs": ["1"]})
        assert rec["status"] == "error", program


def test_check_kinds():
    program = "from collections import Counter\ndef f(s):\n    return Counter(s)"
    [rec] = execute({"kind": "deduction", "program": program, "expected": ["Counter('aab')"],
                     "prediction": "Counter({'a': 2, 'b': 1})"})  # fmt: skip
    assert rec["status"] == "ok" and rec["match"] is True  # literals; Counter from the import
    [rec] = execute({"kind": "abduction", "program": "def f(a, b):\n    return a + b",
                     "expected": ["5"], "prediction": "2, 3"})  # fmt: skip
    assert rec["match"] is True
    [rec] = execute({"kind": "abduction", "program": "def f(a, b):\n    return a + b",
                     "expected": ["5"], "prediction": "2, 2"})  # fmt: skip
    assert rec["match"] is False and rec["status"] == "ok"
    records = execute({"kind": "induction", "program": "", "imports": ["import math"],
                       "prediction": "def f(x):\n    return math.floor(10 / x)",
                       "inputs": ["1", "0", "3"], "expected": ["10", "0", "4"]})  # fmt: skip
    assert [r["match"] for r in records] == [True, False, False]
    assert [r["status"] for r in records] == ["ok", "error", "ok"]


def test_reproduction_check_accepts_identical_text_or_equal_value():
    program = "def f(x):\n    return {'b': x, 'a': 2}"
    [rec] = execute({"kind": "run", "program": program, "inputs": ["1"],
                     "expected": ["{'a': 2, 'b': 1}"]})  # fmt: skip
    assert rec["match"] is True  # value equality, not text
    [rec] = execute({"kind": "run", "program": "def f(x):\n    return 'z' * 999",
                     "inputs": ["1"], "expected": [harness.truncate(repr("z" * 999))]})  # fmt: skip
    assert rec["match"] is True  # the original's cut text, reproduced exactly
    [rec] = execute({"kind": "run", "program": "def f(x):\n    return 1", "inputs": ["1"],
                     "expected": [""]})  # fmt: skip
    assert rec["match"] is False and rec["status"] == "ok"  # unusable gold: mismatch, not error


def test_item_timeout_is_per_item():
    records = execute({"kind": "run", "timeout": 0.3,
                       "program": "def f(x):\n    while x:\n        pass\n    return 0",
                       "inputs": ["1", "0"]})  # fmt: skip
    assert [r["status"] for r in records] == ["timeout", "ok"]
