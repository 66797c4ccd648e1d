"""Model text -> values, without the program (spec §6.3; issue 9, fix 1).

Every string that becomes a value to compare (a deduction answer and its gold output, an
abduction answer's arguments, an induction task's hidden inputs and outputs, a validated output
read back, a recorded output) is evaluated here, never with the program's names in scope: with
them, the deduction answer ``f(<the input>)`` equals the gold by construction. The original graded
deduction the same way (``eval(gold) == eval(answer)`` in the trainer, no program).

What a literal may use (the *scope*):

* the constants a repr prints by name: ``inf``, ``nan``, ``Ellipsis``;
* the builtin types whose name a repr of a builtin value prints or a value is naturally written
  with: ``set()``, ``frozenset({1})``, ``range(0, 3)``, ``slice(1, 2, None)``, ``bytearray(b'')``,
  ``float('inf')``, ``int``, ``complex``, ``str``, ``bytes``, ``bool``, ``list``, ``tuple``,
  ``dict``. Each builds data from data; none takes code (``type``, ``object``, ``map``,
  ``property``, ``eval`` and the like are absent);
* the names the task's import statements bind (``Counter``, ``np``, ``Fraction``; never
  shadowing the names above), each import statement executed on its own, never the program;
  built only when a text needs a name that is not in the lists above.

What a literal may be (the syntax tree is walked and evaluated here; nothing is ``eval``-ed):
constants; tuple, list, set and dict displays; unary ``+``/``-`` on a number; ``real +/- complex``
(how complex numbers print); names of the scope and dotted names through modules (``np.nan``); and
calls of a *class* of the scope (not a metaclass) whose arguments are themselves literals and are
neither callables nor modules (``Counter({'a': 1})``, ``np.int64(5)``, ``Fraction(1, 3)``). No
lambda, comprehension, subscript, operator other than those, walrus, attribute of a non-module,
or name starting with ``_``: no code reaches a value, so no object with a custom ``__eq__`` can be
built from text (``type('A', (), {'__eq__': lambda s, o: True})()`` is refused three times over).

The harness evaluates a check's literals before the item's program runs. The builtins used here
are captured at import all the same: code that ran earlier in the job process (a validated
program, an induction answer) cannot change them by rebinding ``builtins``.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable
from typing import Any, cast

_type, _isinstance, _issubclass, _callable = type, isinstance, issubclass, callable
_getattr, _zip = getattr, zip
_tuple, _list, _set, _dict = tuple, list, set, dict
_parse, _walk, _compile, _exec = ast.parse, ast.walk, compile, exec
_import = __import__
_Module = _type(ast)
_NUMBERS = (int, float, complex)
_REALS = (int, float)

BASE: dict[str, Any] = {
    "inf": float("inf"),
    "nan": float("nan"),
    "Ellipsis": Ellipsis,
    **{t.__name__: t for t in (set, frozenset, dict, list, tuple, int, float, complex, str,
                               bytes, bytearray, bool, range, slice)},
}  # fmt: skip


class NotLiteral(Exception):
    """Text that is not a literal of an output (names the first offending part)."""


class Scope:
    """The names a literal may use: ``BASE``, then (built on first need, once per job process)
    the names bound by the import statements found in ``sources``."""

    def __init__(self, sources: Callable[[], Iterable[str]]) -> None:
        self._sources = sources
        self._names: dict[str, Any] | None = None

    def lookup(self, name: str) -> Any:
        if name in BASE:  # never shadowed by an import (``from numpy import *`` binds ``bool``)
            return BASE[name]
        if name.startswith("_"):
            raise NotLiteral(f"name {name!r} is not allowed in a literal")
        if self._names is None:
            self._names = imported_names(self._sources())
        if name not in self._names:
            raise NotLiteral(f"name {name!r} is not available to a literal")
        return self._names[name]


def imported_names(sources: Iterable[str]) -> dict[str, Any]:
    """Names bound by the import statements of ``sources`` (code, or import lines), each
    statement run on its own; one that fails (a missing module, a relative import) binds
    nothing. Nothing else of the sources runs."""
    ns: dict[str, Any] = {"__builtins__": {"__import__": _import}}
    for source in sources:
        try:
            tree = _parse(source)
        except (SyntaxError, ValueError):
            continue
        for node in _walk(tree):
            if _isinstance(node, ast.Import | ast.ImportFrom) and not _getattr(node, "level", 0):
                module = ast.Module(body=[cast(ast.stmt, node)], type_ignores=[])
                code = _compile(module, "<imports>", "exec")
                try:
                    _exec(code, ns)
                except Exception:
                    continue
    del ns["__builtins__"]
    return ns


def evaluate(text: str, scope: Scope) -> Any:
    """The value of a literal; raises SyntaxError, NotLiteral, or what a constructor raised."""
    return _Evaluator(scope).value(_parse(text.strip(), "<literal>", "eval").body)


def arguments(text: str, scope: Scope) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` of an argument list (``1, [2], k=3``), each argument a literal.

    Parsed as the call ``_(`` + text + ``)``; text that closes that call is refused. The newline
    keeps a trailing comment from swallowing the ``)``.
    """
    call = cast(ast.Call, _parse("_(" + text + "\n)", "<arguments>", "eval").body)
    func: Any = _getattr(call, "func", None)
    if _type(call) is not ast.Call or _type(func) is not ast.Name or func.id != "_":
        raise NotLiteral("the text is not one argument list")
    return _Evaluator(scope).arguments(call)


class _Evaluator:
    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    def value(self, node: ast.expr) -> Any:
        method = _RULES.get(_type(node))
        if method is None:
            raise NotLiteral(f"{_type(node).__name__} is not allowed in a literal")
        return method(self, node)

    def constant(self, node: ast.Constant) -> Any:
        return node.value

    def elements(self, nodes: list[ast.expr]) -> list[Any]:
        out = []
        for n in nodes:
            if _isinstance(n, ast.Starred):
                raise NotLiteral("unpacking (*) is not allowed in a literal display")
            out.append(self.value(n))
        return out

    def tuple_(self, node: ast.Tuple) -> Any:
        return _tuple(self.elements(node.elts))

    def list_(self, node: ast.List) -> Any:
        return self.elements(node.elts)

    def set_(self, node: ast.Set) -> Any:
        return _set(self.elements(node.elts))

    def dict_(self, node: ast.Dict) -> Any:
        out = {}
        for k, v in _zip(node.keys, node.values, strict=True):
            if k is None:
                raise NotLiteral("unpacking (**) is not allowed in a literal display")
            out[self.value(k)] = self.value(v)
        return out

    def unary(self, node: ast.UnaryOp) -> Any:
        operand = self.value(node.operand)
        if _type(node.op) not in (ast.USub, ast.UAdd) or _type(operand) not in _NUMBERS:
            raise NotLiteral("only + and - of a number are allowed in a literal")
        return -operand if _type(node.op) is ast.USub else +operand

    def binary(self, node: ast.BinOp) -> Any:
        # How complex numbers print: (1+2j), (-0-1j), (inf+1j).
        left, right = self.value(node.left), self.value(node.right)
        if (
            _type(node.op) not in (ast.Add, ast.Sub)
            or _type(left) not in _REALS
            or _type(right) is not complex
        ):
            raise NotLiteral("the only operator allowed in a literal is real +/- complex")
        return left + right if _type(node.op) is ast.Add else left - right

    def name(self, node: ast.Name) -> Any:
        return self.scope.lookup(node.id)

    def attribute(self, node: ast.Attribute) -> Any:
        if not _isinstance(node.value, ast.Name | ast.Attribute):
            raise NotLiteral("attributes are allowed only as public names of a module")
        owner = self.value(node.value)
        if _type(owner) is not _Module or node.attr.startswith("_"):
            raise NotLiteral("attributes are allowed only as public names of a module")
        try:
            return _getattr(owner, node.attr)
        except AttributeError:
            raise NotLiteral(f"module {owner.__name__!r} has no {node.attr!r}") from None

    def call(self, node: ast.Call) -> Any:
        if not _isinstance(node.func, ast.Name | ast.Attribute):
            raise NotLiteral("only classes (constructors) may be called in a literal")
        cls = self.value(node.func)
        if not _isinstance(cls, _type) or _issubclass(cls, _type):
            raise NotLiteral("only classes (constructors) may be called in a literal")
        args, kwargs = self.arguments(node)
        return cls(*args, **kwargs)

    def arguments(self, node: ast.Call) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args: list[Any] = []
        for a in node.args:
            if not _isinstance(a, ast.Starred):
                args.append(_data(self.value(a)))
                continue
            values = self.value(cast(ast.Starred, a).value)
            if _type(values) not in (_list, _tuple):
                raise NotLiteral("* in a call takes a list or tuple")
            args += [_data(v) for v in values]
        kwargs: dict[str, Any] = {}
        for k in node.keywords:
            value = self.value(k.value)
            if k.arg is not None:
                kwargs[k.arg] = _data(value)
            elif _type(value) is _dict:
                kwargs.update({key: _data(v) for key, v in value.items()})
            else:
                raise NotLiteral("** in a call takes a dict")
        return _tuple(args), kwargs


def _data(value: Any) -> Any:
    """An argument of a constructor: data only, so that no constructor is handed code to run."""
    if _callable(value) or _type(value) is _Module:
        raise NotLiteral("a callable or a module cannot be an argument in a literal")
    return value


_RULES: dict[type, Callable[[_Evaluator, Any], Any]] = {
    ast.Constant: _Evaluator.constant,
    ast.Tuple: _Evaluator.tuple_,
    ast.List: _Evaluator.list_,
    ast.Set: _Evaluator.set_,
    ast.Dict: _Evaluator.dict_,
    ast.UnaryOp: _Evaluator.unary,
    ast.BinOp: _Evaluator.binary,
    ast.Name: _Evaluator.name,
    ast.Attribute: _Evaluator.attribute,
    ast.Call: _Evaluator.call,
}
