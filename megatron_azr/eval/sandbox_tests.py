"""The test runner of a code benchmark, run INSIDE the executor's sandbox (never imported by the
trainer: :mod:`megatron_azr.eval.code` sends this file's source text as a job's program).

A job is the executor's ``run`` kind: the program (this source plus one ``SPEC = ...`` line) is
executed, then ``f(<input>)`` is evaluated for each input, each in a fresh namespace under its own
time budget (``Job.timeout_s``). ``f`` returns ``"pass"`` or raises ``Failed`` naming the first
failing test; the executor compares the returned repr with the expected ``'pass'``.

The candidate's code runs through ``exec`` in a namespace of its own, so a solution that defines
``f``, ``SPEC`` or ``check`` changes nothing here. Only the standard library is imported at the
top: numpy (exposed to jobs) is imported for float comparisons of EvalPlus outputs only.

Formats (``SPEC["format"]``):
  tests      HumanEval: the candidate, then the benchmark's ``check`` function on the entry point.
  evalplus   HumanEval+/MBPP+: outputs on the base inputs (``f('base')``) and the plus inputs
             (``f('plus')``) must equal the canonical solution's, with EvalPlus's float tolerance,
             special oracles and time rule (a call may take ``max(min_time, factor * canonical)``).
  lcb        LiveCodeBench: stdin/stdout tests (the program runs as ``__main__``) or functional
             tests (``Solution().<func_name>(*args)``), LiveCodeBench's comparison rules.
"""

from __future__ import annotations

import contextlib
import copy
import decimal
import io
import json
import math
import signal
import sys
import time
from typing import Any

SPEC: dict[str, Any] = {}  # the job program appends `SPEC = json.loads(...)`


class Failed(Exception):
    """A test did not pass: wrong output, an exception in the candidate, or too slow."""


class _NoInput(io.StringIO):
    def read(self, *args: Any) -> str:
        raise OSError("stdin is not readable in this benchmark")

    readline = read  # type: ignore[assignment]


@contextlib.contextmanager
def _captured_io(stdin: str | None) -> Any:
    """The candidate's prints go to a buffer (they would mix with the job's result pipe
    otherwise); stdin is the test's input, or unreadable."""
    out = io.StringIO()
    old = sys.stdin, sys.stdout, sys.stderr
    sys.stdin = io.StringIO(stdin) if stdin is not None else _NoInput()
    sys.stdout = sys.stderr = out
    try:
        yield out
    finally:
        sys.stdin, sys.stdout, sys.stderr = old


@contextlib.contextmanager
def _time_limit(seconds: float, what: str) -> Any:
    """Preempt one call after ``seconds``. The job's own SIGALRM budget (the executor harness's
    timer and handler) is narrowed for the call and restored after it, so the job still ends at
    its own deadline; the harness's timeout exception becomes this test's failure."""
    remaining = signal.getitimer(signal.ITIMER_REAL)[0]
    t0 = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, min(seconds, remaining) if remaining else seconds)
    try:
        yield
    except BaseException as e:
        if type(e).__name__ != "ItemTimeout":
            raise
        raise Failed(f"{what}: took over {seconds:.3g} s") from None
    finally:
        left = remaining - (time.monotonic() - t0)
        signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3) if remaining else 0)


def _load(code: str, name: str = "__candidate__") -> dict[str, Any]:
    ns: dict[str, Any] = {"__name__": name}
    with _captured_io(None):
        exec(compile(code, "<candidate>", "exec"), ns)
    return ns


def _entry(ns: dict[str, Any], name: str) -> Any:
    if not callable(ns.get(name)):
        raise Failed(f"the program defines no function {name!r}")
    return ns[name]


def f(part: str) -> str:
    fmt = SPEC["format"]
    if fmt == "tests":
        return _run_check()
    if fmt == "evalplus":
        return _run_evalplus(part)
    if fmt == "lcb":
        return _run_lcb()
    raise ValueError(f"unknown test format {fmt!r}")


# ------------------------------------------------------------------------------ HumanEval


def _run_check() -> str:
    ns = _load(SPEC["code"])
    entry = _entry(ns, SPEC["entry_point"])
    exec(compile(SPEC["test"], "<test>", "exec"), ns)
    with _captured_io(None):
        ns["check"](entry)
    return "pass"


# ------------------------------------------------------------------------------ EvalPlus

# MBPP+ outputs compared as sets, or only for being None (EvalPlus's special oracles).
_SET_EQUAL = {"similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly",
              "larg_nnum", "intersection_array", "find_dissimilar", "Diff"}  # fmt: skip
_NOT_NONE = {"check_str", "text_match_three", "text_starta_endb"}


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


# JSON cannot hold tuples, sets or complex numbers: which MBPP+ tasks take them, by task number
# (EvalPlus's deserialisation of its own data file).
def _args_tuples(inp: list[Any]) -> list[Any]:
    return [tuple(a) for a in inp]


def _args_nested_tuples(inp: list[Any]) -> list[Any]:
    return [[tuple(x) for x in a] for a in inp]


def _first_nested_tuples(inp: list[Any]) -> list[Any]:
    return [[tuple(x) for x in inp[0]], *inp[1:]]


def _second_tuple(inp: list[Any]) -> list[Any]:
    return [inp[0], tuple(inp[1]), *inp[2:]]


def _first_tuple(inp: list[Any]) -> list[Any]:
    return [tuple(inp[0]), *inp[1:]]


def _first_items_tuples(inp: list[Any]) -> list[Any]:
    items = [tuple(x) if isinstance(x, list) else x for x in inp[0]]
    return [tuple(items), *inp[1:]]


_MBPP_ARGS: dict[int, Any] = {
    **dict.fromkeys((2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579,
                     596, 616, 630, 726, 740, 744, 809), _args_tuples),
    **dict.fromkeys((63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780),
                    _args_nested_tuples),
    **dict.fromkeys((75, 413, 444, 753), _first_nested_tuples),
    **dict.fromkeys((106, 750), _second_tuple),
    **dict.fromkeys((250, 405, 446, 617, 720, 763, 808), _first_tuple),
    **dict.fromkeys((259, 401, 445), lambda inp: _args_tuples(_args_nested_tuples(inp))),
    278: _first_items_tuples,
    307: _first_tuple,
    115: lambda inp: [[set(x) if isinstance(x, list) and x else {} for x in inp[0]]],
    124: lambda inp: [float(inp[0]), complex(inp[1])],
    252: lambda inp: [complex(inp[0])],
    722: lambda inp: [{k: tuple(v) for k, v in inp[0].items()}, *inp[1:]],
    **dict.fromkeys((580, 615, 791), _tuples),
}  # fmt: skip


def _inputs(part: str) -> list[Any]:
    raw = SPEC["base_input"] if part == "base" else SPEC["plus_input"]
    task = SPEC["task_id"]
    convert = None
    if task.startswith("Mbpp/"):
        convert = _MBPP_ARGS.get(int(task.split("/")[-1]))
    return [convert(inp) if convert else inp for inp in raw]


def _is_floats(x: Any) -> bool:
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(v, float) for v in x)
    return type(x).__module__ == "numpy" and str(getattr(x, "dtype", "")) in ("float64", "float32")


def _surface_area(base_edge: float, height: float) -> int:  # Mbpp/581's accepted reading
    slant = math.sqrt((base_edge / 2) ** 2 + height**2)
    return round(base_edge**2 + 2 * base_edge * slant)


def _digit_distance(a: int, b: int) -> int:  # Mbpp/558 with zero padding
    sa, sb = str(a), str(b)
    width = max(len(sa), len(sb))
    return sum(abs(int(x) - int(y)) for x, y in zip(sa.zfill(width), sb.zfill(width), strict=True))


def _poly(xs: list[float], x: float) -> float:
    return sum(c * math.pow(x, i) for i, c in enumerate(xs))


def _matches(out: Any, exp: Any, inp: list[Any], atol: float) -> bool:
    name, mbpp = SPEC["entry_point"], SPEC["task_id"].startswith("Mbpp/")
    if not mbpp and name == "find_zero":
        return abs(_poly(inp[0], out)) <= atol
    exact = out == exp
    if mbpp and name == "are_equivalent":
        exact = True
    elif mbpp and name == "sum_div":
        exact = exact or out == 0
    elif mbpp and name == "surface_Area":
        exact = exact or abs(out - _surface_area(*inp)) <= atol
    elif mbpp and name == "digit_distance_nums":
        exact = exact or out == _digit_distance(*inp)
    elif mbpp and name in _SET_EQUAL:
        exact = set(out) == set(exp)
    elif mbpp and name in _NOT_NONE:
        exact = out == exp if isinstance(out, bool) else exp == (out is not None)
    if exact:
        return True
    if atol == 0 and _is_floats(exp):
        atol = 1e-6
    if atol == 0 or type(out) is not type(exp):
        return False
    if isinstance(exp, (list, tuple)) and len(out) != len(exp):
        return False
    import numpy

    return bool(numpy.allclose(out, exp, rtol=1e-07, atol=atol))


def _run_evalplus(part: str) -> str:
    """Canonical and candidate on each input of ``part`` (deep copies: either may mutate its
    arguments); the first mismatch or over-time call fails the part."""
    name = SPEC["entry_point"]
    gold = _load(SPEC["canonical"])[name]
    cand = _entry(_load(SPEC["code"]), name)
    not_none = SPEC["task_id"].startswith("Mbpp/") and name in _NOT_NONE
    for k, inp in enumerate(_inputs(part)):
        t0 = time.perf_counter()
        with _captured_io(None):
            exp = gold(*copy.deepcopy(inp))
        limit = max(SPEC["min_time_s"], SPEC["time_factor"] * (time.perf_counter() - t0))
        if not_none:
            exp = exp is not None
        try:
            with _time_limit(limit, f"{part} input {k}"), _captured_io(None):
                out = cand(*copy.deepcopy(inp))
        except Exception as e:
            if isinstance(e, Failed):
                raise
            raise Failed(f"{part} input {k}: {type(e).__name__}: {e}") from None
        if not _matches(out, exp, inp, SPEC["atol"]):
            raise Failed(f"{part} input {k}: wrong output {_short(out)}, expected {_short(exp)}")
    return "pass"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ------------------------------------------------------------------------------ LiveCodeBench


def _numbers(text: str) -> list[decimal.Decimal] | None:
    try:
        return [decimal.Decimal(t) for t in text.split()]
    except decimal.InvalidOperation:
        return None


def _same_stdout(got: str, want: str) -> bool:
    """LiveCodeBench's rule: line by line after stripping; a line also matches when both hold
    the same numbers."""
    got_lines = [ln.strip() for ln in got.strip().split("\n")]
    want_lines = [ln.strip() for ln in want.strip().split("\n")]
    if len(got_lines) != len(want_lines):
        return False
    for g, w in zip(got_lines, want_lines, strict=True):
        if g == w:
            continue
        gn, wn = _numbers(g), _numbers(w)
        if gn is None or wn is None or gn != wn:
            return False
    return True


def _run_lcb() -> str:
    code, tests, limit = SPEC["code"], SPEC["tests"], SPEC["test_time_s"]
    func = SPEC.get("func_name") or ""
    for k, test in enumerate(tests):
        try:
            with _time_limit(limit, f"test {k}"):
                ok = _lcb_test(code, func, test)
        except Exception as e:
            if isinstance(e, Failed):
                raise
            raise Failed(f"test {k}: {type(e).__name__}: {e}") from None
        if not ok:
            raise Failed(f"test {k}: wrong output")
    return "pass"


def _lcb_test(code: str, func: str, test: dict[str, str]) -> bool:
    if test["testtype"] == "functional":
        ns = _load(code)
        target = getattr(ns["Solution"](), func) if "Solution" in ns else ns[func]
        args = [json.loads(line) for line in test["input"].split("\n")]
        with _captured_io(None):
            out = target(*args)
        return bool(json.loads(json.dumps(_listify(out))) == json.loads(test["output"]))
    with _captured_io(test["input"]) as stdout, contextlib.suppress(SystemExit):
        exec(compile(code, "<candidate>", "exec"), {"__name__": "__main__"})
    return _same_stdout(stdout.getvalue(), test["output"])


def _listify(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return [_listify(v) for v in x]
    return x
