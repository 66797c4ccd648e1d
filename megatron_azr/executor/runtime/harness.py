"""What a job's process runs: the job templates of spec §5.2 and §6.3.

Programs, inputs, predictions and gold outputs arrive as separate strings and are compiled
separately (``f(`` + input + ``)`` in eval mode, the program in exec mode), never pasted into one
template: an input cannot close the call and smuggle statements in, and a syntax error is
attributed to the part that has it. Each item (one input, or one hidden pair) runs on a fresh
namespace in which the program's module code was executed again, as the original's one execution
per check did.

Model text that becomes a value to compare (answers, gold outputs, an abduction answer's
arguments, hidden inputs, an output read back) is a literal evaluated without the program's names
(``literals.py``): a deduction is graded without running the program at all, an abduction or
induction answer's arguments are values before ``f(*args, **kwargs)`` is called. Only a proposed
program's own inputs (``run``/``validate``) are evaluated in its scope, as ``f(<input>)``. A side
equal to anything (``__eq__`` always true, even nested in builtin containers) matches nothing.

Results leave as JSON lines on a pipe, one per item and a final ``done`` line, written through
functions captured at import time: a program that rebinds ``builtins.repr`` or ``json.dumps``
changes nothing here. The process is forked per job, so whatever a program tampers with dies
with it. What this module cannot prevent (and does not try to): code running in the job process
can write its own lines to the pipe and so misreport its own job; the sandbox layers, not this
module, keep it from touching anything else.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import signal
from collections.abc import Callable, Iterator
from typing import Any

from . import literals

OUTPUT_LIMIT = 400  # the original's truncation rule (spec §5.2.5)
MESSAGE_LIMIT = 600
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")

# Captured before any job code runs (job code runs in a forked copy of this module).
_repr, _str, _bool, _len, _type = repr, str, bool, len, type
_id, _isinstance = id, isinstance
_compile, _exec, _eval = compile, exec, eval
_write = os.write
_quote = json.encoder.encode_basestring_ascii
_JSON_CONST: dict[Any, str] = {None: "null", True: "true", False: "false"}
_CALL_F = compile("f(*args, **kwargs)", "<call>", "eval")


def truncate(text: str) -> str:
    """``str(repr(value)).strip()`` cut to 400 chars: first 200 + '...' + last 200."""
    text = text.strip()
    if _len(text) > OUTPUT_LIMIT:
        half = OUTPUT_LIMIT // 2
        text = text[:half] + "..." + text[-half:]
    return text


class ItemTimeout(BaseException):
    """An item ran past its budget (raised by SIGALRM; a BaseException so that a program's
    ``except Exception`` does not swallow it; one that swallows it hits the server's deadline)."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise ItemTimeout()


class Invalid(Exception):
    """A proposal that ran but breaks a validation rule (non-determinism, address in output)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


def find_banned_imports(source: str, banned: list[str]) -> list[str]:
    """Imports of ``source`` that hit the ban list (spec §5.2.1, as the original plus its intent).

    A plain entry matches any component of a dotted module path (the original's rule); a dotted
    entry matches that path or below it (``os.path`` bans ``import os.path`` and ``from os import
    path``, which the original's per-component rule never matched). ``__import__('x')`` and
    ``importlib.import_module('x')`` with a literal name count as imports. Unparsable code falls
    back to the original's word-boundary search over the text.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return [b for b in banned if re.search(rf"\b{re.escape(b)}\b", source)]
    return _banned_in_tree(tree, banned)


def _banned_in_tree(tree: ast.AST, banned: list[str]) -> list[str]:
    single = {b for b in banned if "." not in b}
    dotted = [b for b in banned if "." in b]

    def hit(path: str) -> bool:
        if any(part in single for part in path.split(".")):
            return True
        return any(path == d or path.startswith(d + ".") for d in dotted)

    hits: list[str] = []
    for node in ast.walk(tree):
        paths: list[str] = []
        if isinstance(node, ast.Import):
            paths = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            paths = [module] if module else []
            paths += [f"{module}.{a.name}" if module else a.name for a in node.names]
        elif isinstance(node, ast.Call) and node.args:
            func, arg = node.func, node.args[0]
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name in ("__import__", "import_module") and isinstance(arg, ast.Constant):
                paths = [arg.value] if isinstance(arg.value, str) else []
        hits += [p for p in paths if hit(p)]
    return hits


def _error_type(exc: BaseException) -> str:
    if isinstance(exc, ItemTimeout):
        return "Timeout"
    try:
        return _str(_type(exc).__name__)[:100]
    except BaseException:
        return "Exception"


def _message(stage: str, exc: BaseException) -> str:
    try:
        text = _str(exc)
    except BaseException:
        text = ""
    return f"{stage}: {_error_type(exc)}: {text}"[:MESSAGE_LIMIT]


def _status_of(exc: BaseException) -> str:
    if isinstance(exc, ItemTimeout):
        return "timeout"
    if isinstance(exc, MemoryError):
        return "memory"
    return "error"


class _Failure(Exception):
    def __init__(self, stage: str, exc: BaseException, output: str | None = None) -> None:
        super().__init__(stage)
        self.stage, self.exc, self.output = stage, exc, output


def _stage(stage: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except BaseException as e:  # a program may raise SystemExit, KeyboardInterrupt, anything
        raise _Failure(stage, e) from None


class Emitter:
    """Writes result lines to the job's result pipe.

    Records are flat (str keys; str, bool, int or None values) and encoded by hand around the C
    string escaper: ``json.dumps`` builds an encoder per call, and in a freshly forked process
    every object it allocates or touches costs a copied page.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def emit(self, record: dict[str, Any]) -> None:
        parts = []
        for key, value in record.items():
            if value is None or _type(value) is bool or _type(value) is int:
                text = _JSON_CONST[value] if _type(value) is not int else _str(value)
            else:
                text = _quote(_str(value))
            parts.append(_quote(key) + ":" + text)
        data = ("{" + ",".join(parts) + "}\n").encode()
        while data:
            data = data[_write(self.fd, data) :]


def _call_source(args: str) -> str:
    # The newline keeps a trailing comment in the argument text from swallowing the ")".
    return "f(" + args + "\n)"


def _fresh_namespace(program: Any) -> dict[str, Any]:
    ns: dict[str, Any] = {}
    _exec(program, ns)
    return ns


def _equal(gold: Any, value: Any) -> bool:
    """The original's ``gold == value``, except that a side equal to anything matches nothing."""
    return _bool(gold == value) and not _equal_to_anything(gold) and not _equal_to_anything(value)


class _Unmatched:
    """Equal only to itself: an object that compares equal to a fresh one equals anything."""

    __slots__ = ()


_CONTAINERS: dict[type, Callable[[Any], Iterator[Any]]] = {
    list: list.__iter__,
    tuple: tuple.__iter__,
    set: set.__iter__,
    frozenset: frozenset.__iter__,
}


def _equal_to_anything(value: Any) -> bool:
    """Is ``value``, or an element of it (through builtin containers and dicts), equal to an
    object it has never seen? Such an element makes any comparison hold (``[A()] == [1]``).
    Elements inside other containers are not walked (a known limit, like any program that
    runs in the job's process and chooses to misreport its own verdict)."""
    stack, seen, probe = [value], set(), _Unmatched()
    while stack:
        v = stack.pop()
        if _id(v) in seen:
            continue
        seen.add(_id(v))
        try:
            if _bool(v == probe):
                return True
        except Exception:  # numpy arrays refuse bool(); such a value is no always-equal object
            pass
        if _isinstance(v, dict):
            stack += dict.keys(v)
            stack += dict.values(v)
            continue
        for base, iterate in _CONTAINERS.items():
            if _isinstance(v, base):
                stack += iterate(v)
                break
    return False


def prepare(task: dict[str, Any]) -> dict[str, Any]:
    """Everything about a task that involves no job code, done in the server before the fork:
    a forked job process pays for every page it writes, the server does not."""
    kind = task["kind"]
    # Induction runs the solver's program (the prediction) with the gold imports prepended.
    body = task["prediction"] if kind == "induction" else task["program"]
    source = "\n".join(task.get("imports") or []) + "\n" + body
    expected = task.get("expected") or []
    if kind in ("run", "validate"):
        items = [(i, arg, _at(expected, i)) for i, arg in enumerate(task["inputs"])]
    elif kind == "abduction":
        items = [(0, task["prediction"], expected[0])]
    elif kind == "induction":
        pairs = zip(task["inputs"], expected, strict=True)
        items = [(i, arg, gold) for i, (arg, gold) in enumerate(pairs)]
    elif kind == "deduction":
        items = [(0, None, expected[0])]
    else:
        raise ValueError(f"unknown job kind {kind!r}")
    banned = tuple(task.get("banned") or ())
    return {"task": task, "kind": kind, "source": source, "items": items,
            "budget": float(task.get("timeout") or 0),
            "banned_words": _words_of(banned) if banned else None}  # fmt: skip


@functools.lru_cache(maxsize=8)
def _words_of(banned: tuple[str, ...]) -> re.Pattern[str]:
    """Any component of a banned name, as a word: a program whose text has none of them cannot
    import anything banned, and skips building its syntax tree (costly in a fresh process)."""
    parts = sorted({part for name in banned for part in name.split(".") if part})
    return re.compile(r"\b(?:" + "|".join(re.escape(p) for p in parts) + r")\b")


def run_task(task: dict[str, Any], out: Emitter) -> None:
    execute(prepare(task), out)


def execute(prepared: dict[str, Any], out: Emitter) -> None:
    """Run a prepared task (in the job process) and emit its result lines."""
    task, kind, source = prepared["task"], prepared["kind"], prepared["source"]
    program = None
    try:
        if kind == "validate":
            program = _check_proposal(source, task.get("banned") or [], prepared["banned_words"])
        elif kind != "deduction":
            program = _stage("program", lambda: _compile(source, "<program>", "exec"))
    except _Failure as f:
        out.emit({"i": -1, **_failure_record(f)})
        return
    # What a literal may name besides the builtin few: what the task's import statements bind.
    scope = literals.Scope(lambda: [*(task.get("imports") or ()), task.get("program") or ""])
    budget = prepared["budget"]
    if budget:
        signal.signal(signal.SIGALRM, _on_alarm)
    for i, args, expected in prepared["items"]:
        try:
            if budget:
                signal.setitimer(signal.ITIMER_REAL, budget)
            record = _run_item(program, kind, args, expected, task, scope)
            signal.setitimer(signal.ITIMER_REAL, 0)
        except _Failure as f:
            signal.setitimer(signal.ITIMER_REAL, 0)
            record = {**_failure_record(f), "match": False}
        out.emit({"i": i, **record})


def _failure_record(f: _Failure) -> dict[str, Any]:
    if isinstance(f.exc, Invalid):
        record = {"status": "invalid", "error_type": f.exc.error_type, "message": _str(f.exc)}
        if f.output is not None:  # what the run produced, for comparison across hash seeds
            record["output"] = f.output
        return record
    if f.stage == "syntax":
        return {"status": "invalid", "error_type": _error_type(f.exc),
                "message": _message("program", f.exc)}  # fmt: skip
    return {"status": _status_of(f.exc), "error_type": _error_type(f.exc),
            "message": _message(f.stage, f.exc)}  # fmt: skip


def _at(seq: list[str] | None, i: int) -> str | None:
    return seq[i] if seq and i < _len(seq) else None


def _literal(stage: str, text: str | None, scope: literals.Scope) -> Any:
    return _stage(stage, lambda: literals.evaluate(_str(text), scope))


def _run_item(
    program: Any,
    kind: str,
    args: str | None,
    expected: str | None,
    task: dict[str, Any],
    scope: literals.Scope,
) -> dict[str, Any]:
    if kind == "deduction":  # no program: with its names in scope, `f(<input>)` is the gold
        gold = _literal("expected", expected, scope)
        value = _literal("prediction", task["prediction"], scope)
        return _verdict(gold, value)
    if kind in ("abduction", "induction"):
        # Model text becomes values before the program runs, without its names; then the
        # original's `gold == f(pred)`.
        stage = "prediction" if kind == "abduction" else "input"
        gold = _literal("expected", expected, scope)
        call_args = _stage(stage, lambda: literals.arguments(args or "", scope))
        ns = _stage("program", lambda: _fresh_namespace(program))
        return _verdict(gold, _stage("call", lambda: _call_f(ns, *call_args)))
    if task.get("literal_inputs"):
        try:
            literals.arguments(args or "", scope)
        except BaseException as e:
            raise _Failure("input", Invalid("NotLiteral", _message("input", e))) from None
    ns = _stage("program", lambda: _fresh_namespace(program))
    call = _stage("input", lambda: _compile(_call_source(args or ""), "<input>", "eval"))
    value = _stage("call", lambda: _eval(call, ns))
    output = _stage("repr", lambda: truncate(_str(_repr(value))))
    if kind == "validate":
        try:
            _check_deterministic(ns, call, value, output, task, scope)
        except BaseException as e:
            raise _Failure("determinism", e, output) from None
    record: dict[str, Any] = {"status": "ok", "output": output}
    if expected is not None:
        record["match"] = _reproduces(expected, output, value, scope)
    return record


def _call_f(ns: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return _eval(_CALL_F, ns, {"args": args, "kwargs": kwargs})  # NameError without an f


def _verdict(gold: Any, value: Any) -> dict[str, Any]:
    match = _stage("compare", lambda: _equal(gold, value))
    output = _stage("repr", lambda: truncate(_str(_repr(value))))
    return {"status": "ok", "output": output, "match": match}


def _reproduces(expected: str, output: str, value: Any, scope: literals.Scope) -> bool:
    """Does a recorded output (a repr, cut by the 400-char rule) describe this result? Yes if the
    text is identical, else if it evaluates, as a literal, to an equal value. A gold that does
    not evaluate is a mismatch, not an error: the program itself ran fine."""
    if output == expected.strip():
        return True
    try:
        return _equal(literals.evaluate(expected, scope), value)
    except ItemTimeout:
        raise
    except BaseException:
        return False


def _check_proposal(source: str, banned: list[str], words: re.Pattern[str] | None) -> Any:
    """Spec §5.2.1-2: the proposal parses and imports nothing banned; returns its code.

    Raises ``_Failure`` (status "invalid" for syntax errors and banned imports).
    """
    if words is None or not words.search(source):
        return _stage("syntax", lambda: _compile(source, "<program>", "exec"))
    tree = _stage("syntax", lambda: ast.parse(source, "<program>"))
    hits = _banned_in_tree(tree, banned)
    if hits:
        err = Invalid("BannedImport", "banned imports: " + ", ".join(sorted(set(hits))))
        raise _Failure("imports", err)
    return _stage("syntax", lambda: _compile(tree, "<program>", "exec"))


def _check_deterministic(
    ns: dict[str, Any],
    call: Any,
    first: Any,
    output: str,
    task: dict[str, Any],
    scope: literals.Scope,
) -> None:
    """Spec §5.2.3 done right: a second call in the same namespace (state kept between calls
    shows up, as in the original's template) must agree, and the output must be usable as gold."""
    if _ADDRESS.search(output):
        raise Invalid("AddressInOutput", f"the output carries a memory address: {output[:200]}")
    second = _eval(call, ns)
    if not _bool(first == first):
        raise Invalid("UnequalToItself", f"the output is not equal to itself: {output[:200]}")
    if _equal_to_anything(first):  # every abduction/induction answer would match it
        raise Invalid("EqualToAnything", f"the output equals anything: {output[:200]}")
    if not _bool(first == second) or truncate(_str(_repr(second))) != output:
        raise Invalid("NonDeterministic", "two calls in one process returned different values")
    if task.get("round_trip"):
        # Read back as a solver's answer is: a literal, without the program's names.
        try:
            same = _bool(literals.evaluate(output, scope) == first)
        except ItemTimeout:
            raise
        except BaseException as e:
            raise Invalid("NoRoundTrip", _message("output", e)) from None
        if not same:
            raise Invalid("NoRoundTrip", "the output repr evaluates to a different value")
