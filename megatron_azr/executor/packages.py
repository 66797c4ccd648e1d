"""Installed distributions that jobs may import (``executor.packages``; issue 9, fix 4).

Jobs see the standard library, plus these: the original's environment had numpy and sympy, the
official seed programs import them, and base models write ``import numpy as np`` often. Each
listed distribution is resolved, with the distributions it requires (sympy needs mpmath), to the
top-level entries it installed (``numpy/``, ``numpy.libs/``, ``sympy/``, ``isympy.py``). The
sandbox binds each entry read-only into one directory on the job interpreter's ``sys.path``;
nothing else of site-packages is visible.

Resolution reads installed metadata with ``importlib.metadata`` only (no import of the packages),
in the interpreter jobs run under: in this process when ``executor.python`` is empty, else by
running this file (standard library only) under that interpreter. A requirement with an
``extra`` marker is skipped; one with another marker is followed when installed.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field

_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_META = (".dist-info", ".egg-info")


@dataclass(frozen=True)
class Packages:
    """What ``resolve`` found (empty: the standard library only)."""

    # Entry name under the package directory -> its host path (a directory or a module file).
    entries: dict[str, str] = field(default_factory=dict)
    # Distribution -> version, the listed ones and what they require.
    versions: dict[str, str] = field(default_factory=dict)
    # Top-level packages (or modules) of the listed distributions: what a job imports.
    modules: tuple[str, ...] = ()


class PackageError(RuntimeError):
    """A listed distribution is not installed for the jobs' interpreter."""


def find(names: list[str], python: str = "") -> Packages:
    """Resolve ``names`` for the interpreter ``python`` ("" = this one); raises PackageError."""
    if not names:
        return Packages()
    if python:
        done = subprocess.run(
            [python, "-P", __file__, json.dumps(names)], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise PackageError(f"resolving {names} under {python} failed: {done.stderr[-500:]}")
        found = json.loads(done.stdout)
    else:
        found = resolve(names)
    if found["missing"]:
        missing = ", ".join(found["missing"])
        raise PackageError(
            f"executor.packages: {missing} not installed for {python or sys.executable} "
            f"(install it, or remove it from executor.packages)"
        )
    return Packages(found["entries"], found["versions"], tuple(found["modules"]))


def resolve(names: list[str]) -> dict[str, object]:
    """The JSON-able resolution of ``names`` in this interpreter (see the module docstring)."""
    entries: dict[str, str] = {}
    versions: dict[str, str] = {}
    modules: list[str] = []
    missing: list[str] = []
    queue = [(name, True) for name in names]
    while queue:
        name, listed = queue.pop(0)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            if listed:
                missing.append(name)
            continue  # a requirement behind a marker that does not apply here
        key = dist.metadata["Name"] or name
        if key in versions:
            continue
        versions[key] = dist.version
        tops = _top_level(dist)
        entries.update(tops)
        if listed:
            modules += _importable(tops)
        for req in dist.requires or []:
            spec, _, marker = req.partition(";")
            match = _REQUIREMENT.match(spec)
            if match and "extra" not in marker:
                queue.append((match.group(1), False))
    return {"entries": entries, "versions": versions, "modules": modules, "missing": missing}


def _top_level(dist: md.Distribution) -> dict[str, str]:
    """Top-level entries a distribution installed next to its metadata, by name."""
    site = str(dist.locate_file(""))
    if dist.files is not None:
        names = {f.parts[0] for f in dist.files if f.parts}
    else:  # e.g. Debian's python3-* packages: no RECORD; top_level.txt or the name itself
        listed = (dist.read_text("top_level.txt") or dist.metadata["Name"] or "").split()
        names = {e for n in listed for e in os.listdir(site) if e == n or e.startswith(n + ".")}
    out = {}
    for name in sorted(names):
        path = os.path.join(site, name)
        if name in ("..", "__pycache__") or name.endswith(_META) or not os.path.exists(path):
            continue
        out[name] = os.path.realpath(path)
    return out


def _importable(tops: dict[str, str]) -> list[str]:
    """Names ``import`` takes: packages if there are any (``sympy``, not the script module
    ``isympy``), else modules; never a library directory such as ``numpy.libs``."""
    packages = [n for n, p in tops.items() if os.path.isfile(os.path.join(p, "__init__.py"))]
    if packages:
        return packages
    return sorted({n.split(".")[0] for n in tops if n.endswith((".py", ".so"))})


if __name__ == "__main__":
    print(json.dumps(resolve(json.loads(sys.argv[1]))))
