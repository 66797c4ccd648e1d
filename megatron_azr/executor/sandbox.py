"""Which isolation layers this machine supports, and how a worker's sandbox is started.

A worker is one fork server (``runtime/zygote.py``) inside its own sandbox. What is shared per
worker and what is fresh per job:

* per worker (set up once, at ~30 ms): the bwrap namespaces (pid, net, ipc, uts, cgroup; user
  too when not root), the read-only filesystem view (/usr, the interpreter's stdlib, the runtime,
  the exposed packages of ``executor.packages`` in /packages; no /proc, /home, /etc, project
  files, other site-packages), a private size-capped tmpfs /tmp, the seccomp filter (inherited by
  every job), the cgroup pids + memory caps, the preloaded modules;
* per job (inside the fork server, at ~1 ms): a fresh process, an environment with only the
  one-thread settings of BLAS/OpenMP, a private working directory, rlimits, an unprivileged uid
  without groups or capabilities, and a sweep of everything the job left running.

``detect`` probes what works; ``resolve`` picks the strongest stack or refuses (unconfined only
with an explicit opt-in); ``SandboxSpec.argv`` builds the worker command line.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from megatron_azr.executor import cgroups, packages
from megatron_azr.executor.config import ExecutorConfig
from megatron_azr.executor.runtime import seccomp

RUNTIME_DIR = str(Path(__file__).resolve().parent / "runtime")
_SANDBOX_RUNTIME_ROOT = "/azr"
# On the jobs' sys.path: the entries of executor.packages (outside /azr, which stays 0700).
_SANDBOX_PACKAGES = "/packages"
# Modules common in AZR programs, imported once in the fork server instead of once per job.
PRELOAD = ["collections", "itertools", "functools", "math", "re", "string", "heapq", "bisect",
           "operator", "copy", "typing"]  # fmt: skip
_FS_VIEW = (
    "read-only /usr + interpreter stdlib + executor.packages; no /proc, /etc, /home, project "
    "files, other site-packages"
)
_ZYGOTE_CAPS = ["CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_CHOWN"]


class SandboxUnavailable(RuntimeError):
    """No acceptable isolation on this machine (and unconfined execution was not allowed)."""


@dataclass(frozen=True)
class Platform:
    root: bool
    bwrap: str  # resolved path, "" if not found
    bwrap_version: str
    bwrap_error: str  # why bwrap cannot be used here ("" if it can)
    seccomp: bool
    cgroups: cgroups.CgroupSupport

    @property
    def bwrap_ok(self) -> bool:
        return bool(self.bwrap) and not self.bwrap_error


@dataclass(frozen=True)
class Interpreter:
    """The Python that runs jobs (its real binary, not a venv's symlink)."""

    exe: str
    prefix: str
    version: str  # "3.11"

    @property
    def stdlib(self) -> str:
        return f"{self.prefix}/lib/python{self.version}"


@functools.lru_cache(maxsize=8)
def find_interpreter(python: str) -> Interpreter:
    """``python`` as configured ("" = the interpreter running this process)."""
    if not python:
        exe = os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable)
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        return Interpreter(exe, os.path.realpath(sys.base_prefix), version)
    exe = os.path.realpath(shutil.which(python) or python)
    query = "import sys; print(sys.base_prefix); print('%d.%d' % sys.version_info[:2])"
    try:
        done = subprocess.run([exe, "-S", "-c", query], capture_output=True, text=True, timeout=30)
        prefix, version = done.stdout.split()
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        msg = f"executor.python={python!r} is not a usable interpreter: {e}"
        raise SandboxUnavailable(msg) from e
    if tuple(int(v) for v in version.split(".")) < (3, 11):
        raise SandboxUnavailable(f"executor.python={python!r} is Python {version}; need >= 3.11")
    return Interpreter(exe, os.path.realpath(prefix), version)


def _readable_by_others(path: str) -> bool:
    """Can an unprivileged uid reach and read ``path`` (list it, if a directory; every parent
    searchable)?"""
    p = Path(path)
    try:
        need = 0o005 if p.is_dir() else 0o004
        if p.stat().st_mode & need != need:
            return False
        return all(parent.stat().st_mode & 0o001 for parent in p.parents)
    except OSError:
        return False


@functools.lru_cache(maxsize=4)
def _probe_bwrap(bwrap: str, root: bool, python: str) -> tuple[str, str, str]:
    path = shutil.which(bwrap) or ""
    if not path:
        return "", "", f"{bwrap!r} not found (Debian: apt-get install bubblewrap)"
    try:
        version = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return path, "", f"bwrap --version failed: {e}"
    interp = find_interpreter(python)
    argv = [path, *_namespace_args(root), *_fs_view_args(interp), "--", interp.exe, "-S", "-c",
            "print(1)"]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return path, version, f"bwrap probe failed: {e}"
    if done.returncode != 0 or done.stdout.strip() != "1":
        return path, version, f"bwrap probe failed: {done.stderr.strip()[-300:]}"
    return path, version, ""


def detect(cfg: ExecutorConfig) -> Platform:
    root = os.geteuid() == 0
    bwrap, version, error = _probe_bwrap(cfg.bwrap, root, cfg.python)
    return Platform(root, bwrap, version, error, seccomp.supported(), cgroups.detect())


def _namespace_args(root: bool) -> list[str]:
    args = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
    args += ["--unshare-cgroup-try", "--die-with-parent", "--new-session"]
    if root:
        # No user namespace: the fork server stays host uid 0 with only the capabilities it
        # needs to hand each job its own unprivileged host uid.
        args += ["--cap-drop", "ALL"]
        for cap in _ZYGOTE_CAPS:
            args += ["--cap-add", cap]
    else:
        args += ["--unshare-user"]
    return args


def _fs_view_args(interp: Interpreter) -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("lib", "lib64", "bin", "sbin"):
        path = f"/{top}"
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    exe, prefix = interp.exe, interp.prefix
    if not prefix.startswith("/usr/"):
        # bwrap would copy the modes of the host's parents (/root is 0700): open the path.
        parents = Path(prefix).parents
        for parent in reversed([p for p in parents if str(p) != "/"]):
            args += ["--perms", "0755", "--dir", str(parent)]
        args += ["--ro-bind", prefix, prefix]
        if not exe.startswith(prefix + "/"):
            args += ["--ro-bind", exe, exe]
        # The interpreter runs with -S: hide installed packages from the view as well.
        site = Path(interp.stdlib, "site-packages")
        if site.is_dir():
            args += ["--tmpfs", str(site)]
    args += ["--dev", "/dev"]
    return args


@dataclass(frozen=True)
class SandboxSpec:
    """A resolved sandbox: everything needed to start worker ``k``."""

    mode: str  # "bwrap" or "unconfined"
    cfg: ExecutorConfig
    platform: Platform
    packages: packages.Packages = field(default_factory=packages.Packages)

    @property
    def uid_switch(self) -> bool:
        return self.platform.root

    @property
    def seccomp(self) -> bool:
        return self.cfg.seccomp and self.platform.seccomp

    @property
    def pid_namespace(self) -> bool:
        return self.mode == "bwrap"

    def job_uid(self, index: int) -> int | None:
        return self.cfg.job_uid_base + index if self.uid_switch else None

    def hash_seed(self, index: int) -> int:
        return index + 1  # distinct per worker: validation compares two workers' runs

    def zygote_config(self, index: int, workdir: str) -> dict[str, object]:
        c = self.cfg
        uid = self.job_uid(index)
        return {
            "uid": uid,
            "gid": uid,
            "rlimits": {
                "as": c.memory_mb << 20,
                "fsize": c.max_file_mb << 20,
                "nofile": c.max_open_files,
                "nproc": c.max_processes,
            },
            "workdir": workdir,
            "pid_namespace": self.pid_namespace,
            "output_cap": 1 << 20,
            "seccomp": self.seccomp,
            # Unix sockets reach nothing from a private net namespace; outside one they could.
            "allow_unix_sockets": self.mode == "bwrap",
            "preload": PRELOAD + self.preloaded_packages,
            "package_path": self.package_path(workdir),
            "runtime_root": self.runtime_root,
        }

    @property
    def preloaded_packages(self) -> list[str]:
        return [m for m in self.cfg.preload if m in self.packages.modules]

    def package_path(self, workdir: str) -> str:
        """The directory of the exposed packages, as jobs see it ("" if none)."""
        if not self.packages.entries:
            return ""
        return _SANDBOX_PACKAGES if self.mode == "bwrap" else f"{workdir}/packages"

    def link_packages(self, workdir: str) -> None:
        """Unconfined: the package directory of a worker, symlinks to the installed entries."""
        if not self.packages.entries:
            return
        directory = self.package_path(workdir)
        os.mkdir(directory, 0o755)
        for name, path in self.packages.entries.items():
            os.symlink(path, f"{directory}/{name}")

    @property
    def runtime_root(self) -> str:
        return _SANDBOX_RUNTIME_ROOT if self.mode == "bwrap" else str(Path(RUNTIME_DIR).parent)

    def argv(self, index: int, workdir: str) -> list[str]:
        exe = find_interpreter(self.cfg.python).exe
        boot = (
            f"import sys; sys.path.insert(0, {self.runtime_root!r}); "
            "from runtime.zygote import main; main()"
        )
        cfg_json = json.dumps(self.zygote_config(index, workdir))
        python = [exe, "-S", "-s", "-P", "-B", "-c", boot, cfg_json]
        if self.mode != "bwrap":
            return python
        tmpfs = str(self.cfg.tmpfs_mb << 20)
        # bwrap makes mount points 0700 unless told: jobs must list this one.
        binds = ["--perms", "0755", "--dir", _SANDBOX_PACKAGES] if self.packages.entries else []
        for name, path in self.packages.entries.items():
            binds += ["--ro-bind", path, f"{_SANDBOX_PACKAGES}/{name}"]
        return [
            self.platform.bwrap,
            *_namespace_args(self.platform.root),
            "--clearenv",
            "--setenv", "PYTHONHASHSEED", str(self.hash_seed(index)),
            *_fs_view_args(find_interpreter(self.cfg.python)),
            "--size", tmpfs, "--tmpfs", "/tmp",
            "--ro-bind", RUNTIME_DIR, f"{_SANDBOX_RUNTIME_ROOT}/runtime",
            *binds,
            "--chdir", "/tmp",
            "--", *python,
        ]  # fmt: skip

    def env(self, index: int) -> dict[str, str]:
        """The worker's environment (bwrap clears it anyway; unconfined gets only this)."""
        return {"PYTHONHASHSEED": str(self.hash_seed(index))}

    def workdir(self) -> str:
        return "/tmp" if self.mode == "bwrap" else ""

    def layers(self) -> list[tuple[str, str]]:
        """(layer, what is in force) for ``azr executor doctor`` and logs."""
        c, p = self.cfg, self.platform
        rows = [("fresh process per job", "fork of a warm per-worker server; environment: "
                 "only the one-thread settings of BLAS/OpenMP")]  # fmt: skip
        if self.mode == "bwrap":
            ns = "pid, net, ipc, uts, cgroup" + ("" if p.root else ", user")
            rows += [
                ("sandbox", f"{p.bwrap_version or 'bwrap'}: namespaces {ns}; caps dropped"),
                ("network", "private network namespace (no interfaces up)"),
                ("filesystem", _FS_VIEW),
                ("private dir", f"/tmp/jobN (0700) on a {c.tmpfs_mb} MiB tmpfs per worker"),
            ]
        else:
            rows += [
                ("sandbox", "UNCONFINED (explicit opt-in): no namespaces, host filesystem view"),
                ("network", "seccomp only (no sockets at all)"),
                ("private dir", "host temp dir per worker, one 0700 subdir per job"),
            ]
        rows.append(("packages", self.describe_packages()))
        rows.append(
            (
                "rlimits",
                f"AS {c.memory_mb} MiB, CPU budget+1 s, FSIZE {c.max_file_mb} MiB, "
                f"NOFILE {c.max_open_files}, NPROC {c.max_processes}, CORE 0",
            )
        )
        if self.uid_switch:
            rows.append(("uid", f"unprivileged uid {c.job_uid_base}+worker, no groups, no caps"))
        else:
            rows.append(("uid", "not separated (executor not started as root)"))
        if self.seccomp:
            n = len(seccomp.denied_syscalls())
            rows.append(("seccomp", f"{platform.machine()} filter: sockets other than AF_UNIX, "
                         f"namespace clones and {n} syscalls denied"))  # fmt: skip
        elif not c.seccomp:
            rows.append(("seccomp", "OFF (executor.seccomp=false)"))
        else:
            rows.append(("seccomp", f"unavailable on {platform.machine()}"))
        if p.cgroups.available:
            rows.append(
                (
                    "cgroup",
                    f"v{p.cgroups.version} per worker: pids.max "
                    f"{_pids_max(c)}, memory {_memory_cap_mb(c)} MiB",
                )
            )
        else:
            rows.append(("cgroup", f"unavailable: {p.cgroups.reason}"))
        return rows

    def describe_packages(self) -> str:
        versions = self.packages.versions
        if not versions:
            return "none (executor.packages=[]): the standard library only"
        text = ", ".join(f"{name} {version}" for name, version in versions.items())
        where = _SANDBOX_PACKAGES if self.mode == "bwrap" else "symlinks in the worker's dir"
        preloaded = ", ".join(self.preloaded_packages) or "none"
        return f"{text}; read-only at {where} on sys.path; preloaded: {preloaded}"


def _pids_max(cfg: ExecutorConfig) -> int:
    return cfg.max_processes + 8  # the worker's own processes: bwrap, its init, the server


def _memory_cap_mb(cfg: ExecutorConfig) -> int:
    return cfg.memory_mb + cfg.tmpfs_mb + 256  # one job + its tmpfs + the server


def cgroup_limits(cfg: ExecutorConfig) -> tuple[int, int]:
    return _pids_max(cfg), _memory_cap_mb(cfg) << 20


def _find_packages(cfg: ExecutorConfig) -> packages.Packages:
    python = find_interpreter(cfg.python).exe if cfg.python else ""
    try:
        return packages.find(cfg.packages, python)
    except packages.PackageError as e:
        raise SandboxUnavailable(str(e)) from None


def resolve(cfg: ExecutorConfig, plat: Platform | None = None) -> SandboxSpec:
    """The strongest stack available, or ``SandboxUnavailable``."""
    plat = plat or detect(cfg)
    if cfg.sandbox in ("auto", "bwrap") and plat.bwrap_ok:
        return SandboxSpec("bwrap", cfg, plat, _find_packages(cfg))
    if cfg.sandbox == "bwrap":
        raise SandboxUnavailable(f"sandbox 'bwrap' requested but unusable: {plat.bwrap_error}")
    if cfg.allow_unconfined:
        stdlib = find_interpreter(cfg.python).stdlib
        if plat.root and not _readable_by_others(stdlib):
            raise SandboxUnavailable(
                f"unconfined jobs run as an unprivileged uid, which cannot read {stdlib} "
                "(a parent directory is private); point executor.python at a world-readable "
                "interpreter (e.g. /usr/bin/python3) or use bwrap"
            )
        found = _find_packages(cfg)
        private = [p for p in found.entries.values() if not _readable_by_others(p)]
        if plat.root and private:
            raise SandboxUnavailable(
                f"unconfined jobs run as an unprivileged uid, which cannot read {private[0]} "
                "(executor.packages); install the packages world-readable, or use bwrap"
            )
        return SandboxSpec("unconfined", cfg, plat, found)
    if cfg.sandbox == "unconfined":
        raise SandboxUnavailable(
            "sandbox 'unconfined' runs untrusted programs without namespaces or a private "
            "filesystem view; set executor.allow_unconfined=true to accept that"
        )
    raise SandboxUnavailable(
        f"no sandbox available ({plat.bwrap_error}); refusing to run untrusted code "
        "unconfined. Install bubblewrap (and allow user namespaces or run as root), or set "
        "executor.allow_unconfined=true to accept the risk. See `azr executor doctor`."
    )
