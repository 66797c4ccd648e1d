"""Grading answers through the real sandbox: the reward hacks score 0, honest answers score 1.

Model text becomes a value only as a literal, without the program's names (issue 9, fix 1; spec
§6.3): with them in scope the deduction answer ``f(<the input>)`` equals the gold by construction.
"""

from __future__ import annotations

import pytest
from executor_helpers import src

from megatron_azr.azr.protocols import ExecResult, Job

pytestmark = pytest.mark.sandbox

ALWAYS_EQUAL = "type('A', (), {'__eq__': lambda s, o: True, '__hash__': None})()"
# The gold of every deduction below: f(21) == 42.
DOUBLE = src("""
    FACTOR = 2
    def g():
        return 21
    def f(x):
        return x * FACTOR
""")


def graded(pool, jobs: list[Job]) -> dict[str, ExecResult]:
    return {r.id: r for r in pool.run(jobs)}


def deduction(answer: str, gold: str = "42", program: str = DOUBLE, **kw) -> Job:
    return Job(answer, "deduction", program, expected=(gold,), prediction=answer, **kw)


HACKS = [
    "f(21)",  # the hack of issue 9: the program's own f computes the gold
    "f(*(21,))",
    "f(g())",
    "FACTOR * 21",
    "g() * FACTOR",
    ALWAYS_EQUAL,
    "[" + ALWAYS_EQUAL + "][0]",
    "__import__('builtins').eval('42')",
    "eval('42')",
    "(lambda: 42)()",
    "[42 for _ in 'x'][0]",
    "(x := 42)",
    "globals()['f'](21)",
    "int.__add__(40, 2)",
    "40 + 2",  # not a literal either: the whitelist takes no arithmetic but complex numbers
]


def test_hack_answers_to_a_deduction_score_zero(clean):
    results = graded(clean, [deduction(a) for a in HACKS] + [deduction("42")])
    assert results.pop("42").matches == [True]  # the honest answer, same task
    assert {a: r.matches for a, r in results.items()} == {a: [False] for a in HACKS}
    assert all(r.status == "error" for r in results.values())  # refused, never evaluated


def test_always_equal_objects_cannot_reach_abduction_or_induction(clean):
    identity = "def f(x):\n    return x"
    wrap = "def f(x):\n    return [x]"
    jobs = [
        Job("abd-object", "abduction", identity, expected=("5",), prediction=ALWAYS_EQUAL),
        Job("abd-nested", "abduction", wrap, expected=("[5]",), prediction=f"[{ALWAYS_EQUAL}]"),
        Job("abd-name", "abduction", "SEED = 5\n" + identity, expected=("5",), prediction="SEED"),
        Job("abd-honest", "abduction", identity, expected=("5",), prediction="5"),
        # An induction answer is code: the object it builds matches nothing, even nested.
        Job("ind-object", "induction", identity, inputs=("1", "2"), expected=("1", "2"),
            prediction=f"def f(x):\n    return {ALWAYS_EQUAL}"),
        Job("ind-nested", "induction", wrap, inputs=("1", "2"), expected=("[1]", "[2]"),
            prediction=f"def f(x):\n    return [{ALWAYS_EQUAL}]"),
        Job("ind-dict", "induction", identity, inputs=("1",), expected=("{'k': 1}",),
            prediction=f"def f(x):\n    return {{'k': {ALWAYS_EQUAL}}}"),
        # Hidden inputs and outputs are literals too (proposer text, evaluated without names).
        Job("ind-input", "induction", identity, inputs=(ALWAYS_EQUAL,), expected=("1",),
            prediction="def f(x):\n    return x"),
        Job("ind-gold", "induction", identity, inputs=("1",), expected=(ALWAYS_EQUAL,),
            prediction="def f(x):\n    return x"),
        Job("ind-honest", "induction", wrap, inputs=("1", "2"), expected=("[1]", "[2]"),
            prediction="def f(y):\n    return [y]"),
    ]  # fmt: skip
    r = graded(clean, jobs)
    for name in ("abd-object", "abd-nested", "abd-name", "ind-input", "ind-gold"):
        assert (r[name].status, r[name].error_type) == ("error", "NotLiteral"), name
        assert r[name].matches == [False], name
    for name in ("ind-object", "ind-nested", "ind-dict"):
        assert r[name].ok and not any(r[name].matches), name
    assert r["abd-honest"].matches == [True] and r["abd-honest"].outputs == ["5"]
    assert r["ind-honest"].matches == [True, True]


LEGIT = [  # (gold as the program's repr prints it, an honest answer written differently)
    ("[1, (2, 3), {'a': {4}}]", "[1, (2, 3), {'a': {4}}]"),
    ("{1, 2, 3}", "{3, 1, 2}"),
    ("{'b': 1, 'a': 2}", "{'a': 2, 'b': 1}"),
    ("frozenset({1, 2})", "frozenset({2, 1})"),
    ("set()", "set()"),
    ("-5", "-5"),
    ("(-1.5, -0.0)", "(-1.5, 0.0)"),
    ("(1-2j)", "(1-2j)"),
    ("-2j", "-2j"),
    ("((1, (2, (3,))),)", "((1, (2, (3,))),)"),
    ("'it\\'s \"quoted\"'", '"it\'s \\"quoted\\""'),
    ("inf", "float('inf')"),
    ("[-inf, 1e+300]", "[-inf, 1e300]"),
    ("range(0, 3)", "range(3)"),
    ("b'\\x00a'", "b'\\x00a'"),
    ("{Ellipsis}", "{...}"),
    ("(None, True, False)", "(None, True, False)"),
]


def test_honest_answers_still_score(clean):
    jobs = [deduction(answer, gold) for gold, answer in LEGIT]
    counter = "from collections import Counter, deque\nfrom fractions import Fraction\n" + DOUBLE
    imports = ("from collections import Counter, deque", "from fractions import Fraction")
    extra = [
        ("Counter({'a': 2, 'b': 1})", "Counter({'b': 1, 'a': 2})"),
        ("deque([1, 2], maxlen=3)", "deque([1, 2], maxlen=3)"),
        ("Fraction(1, 3)", "Fraction(2, 6)"),
    ]
    jobs += [deduction(a, g, counter, imports=imports) for g, a in extra]
    jobs.append(deduction("nan", "nan"))  # as before: nan equals nothing, itself included
    results = clean.run(jobs)
    failed = [(j.prediction, r.stderr_tail) for j, r in zip(jobs, results, strict=True) if not r.ok]
    assert [r.matches for r in results[:-1]] == [[True]] * (len(jobs) - 1), failed
    assert results[-1].ok and results[-1].matches == [False]
    # Arguments of an abduction answer: positional, keyword, unpacked.
    program = "def f(a, b=0, *rest):\n    return [a, b, *rest]"
    answers = {"1, 2, 3": True, "1, b=2": False, "*[1, 2, 3]": True, "1, *(2, 3)": True,
               "**{'a': 1, 'b': 2}, ": False, "1, 2, 3 # a comment": True}  # fmt: skip
    jobs = [Job(a, "abduction", program, expected=("[1, 2, 3]",), prediction=a) for a in answers]
    assert {r.id: r.matches[0] for r in clean.run(jobs)} == answers


def test_validation_reads_outputs_back_as_a_solver_would(clean):
    cases = {
        # A program's class prints a repr only its own scope evaluates: no solver can match it.
        "class P:\n    def __repr__(self):\n        return 'P()'\n"
        "    def __eq__(self, o):\n        return isinstance(o, P)\ndef f(x):\n    return P()":
            ("invalid", "NoRoundTrip"),
        # Equal to anything, with a repr that reads back: every abduction answer would match.
        f"def f(x):\n    A = {ALWAYS_EQUAL[:-2]}\n    A.__repr__ = lambda s: '1'\n    return A()":
            ("invalid", "EqualToAnything"),
        "from collections import Counter\ndef f(x):\n    return Counter('aab')": ("ok", ""),
        "def f(x):\n    from fractions import Fraction\n    return Fraction(x, 3)": ("ok", ""),
    }  # fmt: skip
    jobs = [Job(str(i), "validate", p, ("1",)) for i, p in enumerate(cases)]
    verdicts = [(r.status, r.error_type) for r in clean.run(jobs)]
    assert verdicts == list(cases.values())


def test_induction_validation_requires_literal_inputs(clean):
    """An induction task's inputs become hidden inputs, graded as literals: an expression input
    would make a task no solver can pass, so validation with ``literal_inputs`` refuses it."""
    program = "def f(s):\n    return len(s)"
    jobs = [
        Job("expr", "validate", program, ("'a' * 100",), literal_inputs=True),
        Job("lit", "validate", program, ("'aaa'", "[1, 2]"), literal_inputs=True),
        Job("plain", "validate", program, ("'a' * 100",)),  # a deduction input may compute
    ]
    r = graded(clean, jobs)
    assert (r["expr"].status, r["expr"].error_type) == ("invalid", "NotLiteral")
    assert (r["lit"].status, r["lit"].outputs) == ("ok", ["3", "2"])
    assert (r["plain"].status, r["plain"].outputs) == ("ok", ["100"])
