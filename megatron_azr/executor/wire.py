"""What travels between the farm's servers and their clients: jobs, results, the token.

Both directions are parsed strictly with the typed config loader (``config.from_dict``): an
unknown field, a wrong type or a non-finite number is refused with one line naming the field,
never coerced. Nothing in a job is evaluated here; the sandbox runs it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path
from typing import Any

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


def _typed(cls: type[Any], data: Any, where: str) -> Any:
    from megatron_azr.config import ConfigError, from_dict

    try:
        return from_dict(cls, data, where)
    except ConfigError as e:
        raise WireError(str(e).replace("\n", " ")) from None


def _listed(body: Any, key: str) -> list[Any]:
    if not isinstance(body, dict) or set(body) != {key}:
        got = sorted(body) if isinstance(body, dict) else type(body).__name__
        raise WireError(f"expected an object with the one key '{key}', got {got}")
    items = body[key]
    if not isinstance(items, list):
        raise WireError(f"'{key}' must be a list, got {type(items).__name__}")
    return items


def jobs_to_body(jobs: list[Job]) -> dict[str, Any]:
    return {"jobs": [dataclasses.asdict(j) for j in jobs]}


def jobs_from_body(body: Any) -> list[Job]:
    return [_typed(Job, j, f"jobs[{i}]") for i, j in enumerate(_listed(body, "jobs"))]


def results_to_body(results: list[ExecResult]) -> dict[str, Any]:
    return {"results": [dataclasses.asdict(r) for r in results]}


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
