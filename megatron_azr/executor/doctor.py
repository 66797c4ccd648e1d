"""``azr executor doctor``: what this machine supports, what is in force, and proof.

The proof is a job: the executor starts as configured and runs a probe program that reports what
it can see and do from inside the sandbox (uid, environment, working directory, filesystem,
network, namespaces, limits). Each layer is then marked verified or not from those observations,
not from what the configuration claims.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path

from megatron_azr.azr.protocols import Job
from megatron_azr.executor.config import ExecutorConfig
from megatron_azr.executor.runtime.zygote import ONE_THREAD

# Runs inside the sandbox, one input per probe so that each answer stays short (outputs are
# cut at 400 characters) and one failing probe cannot hide the others.
PROBE = r"""
import os, socket, resource, ctypes, importlib

def _inet():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1)
    s.connect(("1.1.1.1", 53))
    return "connected"

def _write(path):
    open(path, "w").close()
    return "written"

def _package(name):
    module = importlib.import_module(name)
    return getattr(module, "__version__", "?"), os.path.dirname(module.__file__)

def _write_package(name):
    return _write(os.path.join(_package(name)[1], "azr-doctor"))

def _fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return "ok"

_LIMITS = {"as": resource.RLIMIT_AS, "cpu": resource.RLIMIT_CPU, "fsize": resource.RLIMIT_FSIZE,
           "nofile": resource.RLIMIT_NOFILE, "nproc": resource.RLIMIT_NPROC,
           "core": resource.RLIMIT_CORE}

def f(name, arg=None):
    probes = {
        "uid": os.getuid,
        "groups": os.getgroups,
        "env": lambda: dict(os.environ),
        "cwd": os.getcwd,
        "cwd_entries": lambda: os.listdir("."),
        "root_entries": lambda: sorted(os.listdir("/")),
        "project_visible": lambda: os.path.exists(arg),
        "write_usr": lambda: _write("/usr/azr-doctor"),
        "write_tmp": lambda: _write("/tmp/azr-doctor"),
        "inet": _inet,
        "unshare_user": lambda: (ctypes.CDLL(None, use_errno=True).unshare(0x10000000),
                                 ctypes.get_errno()),
        "fork": _fork,
        "rlimits": lambda: {k: resource.getrlimit(v)[0] for k, v in _LIMITS.items()},
        "package": lambda: _package(arg),
        "write_package": lambda: _write_package(arg),
    }
    try:
        return probes[name]()
    except BaseException as e:
        return "denied: " + type(e).__name__
"""
PROBES = ["uid", "groups", "env", "cwd", "cwd_entries", "root_entries", "project_visible",
          "write_usr", "write_tmp", "inet", "unshare_user", "fork", "rlimits"]  # fmt: skip


@dataclass
class Check:
    layer: str
    ok: bool
    evidence: str


def probe(cfg: ExecutorConfig) -> tuple[list[tuple[str, str]], list[Check]]:
    """(layers claimed, checks verified); raises SandboxUnavailable."""
    from megatron_azr.executor.pool import SandboxExecutor

    project = str(Path(__file__).resolve().parents[2])
    with SandboxExecutor(cfg) as ex:
        layers = ex.layers()
        confined = ex.spec.mode == "bwrap"
        root = ex.spec.platform.root
        facts = ex.worker_facts()
        modules = ex.spec.packages.modules
        calls = {name: (name, project) for name in PROBES}
        calls.update({f"{p} {m}": (p, m) for m in modules for p in ("package", "write_package")})
        inputs = tuple(f"{name!r}, {arg!r}" for name, arg in calls.values())
        [res] = ex.run([Job("doctor", "run", PROBE, inputs, timeout_s=30.0)])
        packages = ex.spec.describe_packages()
    if not res.ok:
        raise RuntimeError(f"the probe job failed: {res.status} {res.error_type} {res.stderr_tail}")
    # Literals printed by our own probe, parsed (never evaluated).
    seen = {n: ast.literal_eval(o) for n, o in zip(calls, res.outputs, strict=True)}
    checks = [
        Check(
            "fresh process, only the one-thread settings in the environment",
            seen["env"] == ONE_THREAD,
            f"environ={seen['env']}",
        ),
        Check(
            "private working dir",
            seen["cwd_entries"] == [] and "job" in str(seen["cwd"]),
            f"cwd={seen['cwd']} entries={seen['cwd_entries']}",
        ),
        Check(
            "unprivileged uid",
            seen["uid"] != 0 and seen["groups"] == [] if root else seen["uid"] == os.getuid(),
            f"uid={seen['uid']} groups={seen['groups']}",
        ),
        Check("no network", str(seen["inet"]).startswith("denied"), f"connect: {seen['inet']}"),
        Check(
            "seccomp",
            facts[0].get("seccomp", 0) > 0 and seen["unshare_user"][0] == -1,
            f"{facts[0].get('seccomp', 0)} BPF instructions; unshare(NEWUSER) -> "
            f"{seen['unshare_user']}",
        ),
        Check(
            "rlimits",
            seen["rlimits"]["as"] == cfg.memory_mb << 20
            and seen["rlimits"]["nofile"] == cfg.max_open_files
            and seen["rlimits"]["core"] == 0,
            str(seen["rlimits"]),
        ),
    ]
    if modules:
        found = {m: seen[f"package {m}"] for m in modules}
        writes = {m: seen[f"write_package {m}"] for m in modules}
        checks.append(
            Check(
                "packages, read-only",
                all(isinstance(v, tuple) for v in found.values())
                and all(str(w).startswith("denied") for w in writes.values()),
                "; ".join(f"import {m}: {found[m]}, write: {writes[m]}" for m in modules)
                + f" ({packages})",
            )
        )
    if confined:
        checks.append(
            Check(
                "read-only minimal filesystem",
                str(seen["write_usr"]).startswith("denied")
                and str(seen["write_tmp"]).startswith("denied")
                and seen["project_visible"] is False,
                f"/ = {seen['root_entries']}; write /usr: {seen['write_usr']}; "
                f"write /tmp: {seen['write_tmp']}; project visible: {seen['project_visible']}",
            )
        )
    return layers, checks
