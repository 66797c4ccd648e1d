"""What travels between the farm's servers and their clients: jobs, results, the token.

Both directions are parsed strictly against the dataclasses' annotations: an unknown or
missing field, a wrong type or a non-finite number is refused with one line naming the field,
never coerced. Nothing in a job is evaluated here; the sandbox runs it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from megatron_azr.azr.protocols import ExecResult, Job

RUN_PATH = "/v1/run"


class WireError(ValueError):
    """A body that is not what the farm protocol allows (the message is one line)."""


def _no_constant(name: str) -> Any:
    raise WireError(f"{name} is not a number the farm accepts")


def loads(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_no_constant)
    except WireError:
        raise
    except ValueError as e:
        raise WireError(f"not JSON: {e}") from None


def _kind_of(value: Any) -> str:
    return type(value).__name__


def _checker(tp: Any) -> Callable[[Any], Any]:
    """A converter for one annotation of Job/ExecResult: returns the value or raises a
    ``TypeError`` that says what was expected."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        allowed = set(args)

        def literal(v: Any) -> Any:
            if isinstance(v, str) and v in allowed:
                return v
            raise TypeError(f"one of {sorted(allowed)}, got {v!r}"[:200])

        return literal
    if origin in (list, tuple):
        item = args[0]
        container = tuple if origin is tuple else list

        def items(v: Any) -> Any:
            if not isinstance(v, list) or not all(type(x) is item for x in v):
                raise TypeError(f"a list of {item.__name__}, got {_kind_of(v)}")
            return container(v)

        return items
    if tp is float:

        def number(v: Any) -> float:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise TypeError(f"a number, got {_kind_of(v)}")
            return float(v)

        return number

    def exact(v: Any) -> Any:
        if type(v) is not tp:
            raise TypeError(f"{tp.__name__}, got {_kind_of(v)}")
        return v

    return exact


_FIELDS: dict[type[Any], tuple[dict[str, Callable[[Any], Any]], frozenset[str]]] = {}


def _fields(cls: type[Any]) -> tuple[dict[str, Callable[[Any], Any]], frozenset[str]]:
    """(converter per field, the required fields) of a dataclass, computed once."""
    if cls not in _FIELDS:
        _FIELDS[cls] = _compute_fields(cls)
    return _FIELDS[cls]


def _compute_fields(cls: type[Any]) -> tuple[dict[str, Callable[[Any], Any]], frozenset[str]]:
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    required = frozenset(
        f.name for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )  # fmt: skip
    return {f.name: _checker(hints[f.name]) for f in fields}, required


def _typed(cls: type[Any], data: Any, where: str) -> Any:
    """``cls(**data)``, strictly: no unknown or missing field, every value of its type."""
    checkers, required = _fields(cls)
    if not isinstance(data, dict):
        raise WireError(f"{where}: expected an object, got {_kind_of(data)}")
    unknown = data.keys() - checkers.keys()
    if unknown:
        raise WireError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    missing = required - data.keys()
    if missing:
        raise WireError(f"{where}: missing field {sorted(missing)[0]!r}")
    values = {}
    for name, value in data.items():
        try:
            values[name] = checkers[name](value)
        except TypeError as e:
            raise WireError(f"{where}.{name}: expected {e}") from None
    return cls(**values)


def _listed(body: Any, key: str) -> list[Any]:
    if not isinstance(body, dict) or set(body) != {key}:
        got = sorted(body) if isinstance(body, dict) else type(body).__name__
        raise WireError(f"expected an object with the one key '{key}', got {got}")
    items = body[key]
    if not isinstance(items, list):
        raise WireError(f"'{key}' must be a list, got {type(items).__name__}")
    return items


def _plain(obj: Any) -> dict[str, Any]:
    """A job's or result's fields (flat: JSON writes its tuples as lists), without the copying
    of ``dataclasses.asdict``."""
    return {name: getattr(obj, name) for name in _fields(type(obj))[0]}


def jobs_to_body(jobs: list[Job]) -> dict[str, Any]:
    return {"jobs": [_plain(j) for j in jobs]}


def jobs_from_body(body: Any) -> list[Job]:
    return [_typed(Job, j, f"jobs[{i}]") for i, j in enumerate(_listed(body, "jobs"))]


def results_to_body(results: list[ExecResult]) -> dict[str, Any]:
    return {"results": [_plain(r) for r in results]}


def results_from_body(body: Any) -> list[ExecResult]:
    return [_typed(ExecResult, r, f"results[{i}]") for i, r in enumerate(_listed(body, "results"))]


def read_token(path: str | Path) -> str:
    """The bearer token in ``path``, a file only its owner can read or write (0600 or 0400):
    anyone who reads it can run code through the farm."""
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
        token = path.read_text().strip()
    except OSError as e:
        raise WireError(f"token file {path}: {e.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise WireError(f"token file {path} is mode {stat.S_IMODE(mode):04o}; it must be 0600")
    if len(token) < 16 or any(c.isspace() for c in token):
        raise WireError(f"token file {path}: expected one token of at least 16 characters")
    return token


def write_token(path: str | Path) -> str:
    """A fresh random token in a new 0600 file (what the Slurm launch does with ``secrets``)."""
    import secrets

    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token
