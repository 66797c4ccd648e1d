"""The hand-assembled seccomp filter, installed in a forked child (no sandbox needed)."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import socket
import threading

import pytest

from megatron_azr.executor.runtime import seccomp

pytestmark = pytest.mark.skipif(
    not seccomp.supported(), reason=f"no seccomp table for {platform.machine()}"
)
NR = {"x86_64": {"ptrace": 101, "mount": 165, "bpf": 321, "kexec_load": 246},
      "aarch64": {"ptrace": 117, "mount": 40, "bpf": 280, "kexec_load": 104}}  # fmt: skip


def in_filtered_child(allow_unix: bool, body) -> dict:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            seccomp.install(allow_unix_sockets=allow_unix)
            os.write(w, json.dumps(body()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    data = os.read(r, 1 << 16)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(data)


def _socket_errno(family: int) -> int:
    try:
        socket.socket(family, socket.SOCK_STREAM).close()
        return 0
    except OSError as e:
        return e.errno or -1


def _syscall_errno(nr: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return 0 if libc.syscall(nr, 0, 0, 0, 0, 0) == 0 else ctypes.get_errno()


def test_network_sockets_denied_unix_optional():
    def body():
        return {f: _socket_errno(f) for f in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)}

    seen = in_filtered_child(True, body)
    assert seen[str(socket.AF_INET)] == errno.EACCES
    assert seen[str(socket.AF_INET6)] == errno.EACCES
    assert seen[str(socket.AF_UNIX)] == 0
    assert in_filtered_child(False, body)[str(socket.AF_UNIX)] == errno.EACCES


def test_escape_syscalls_denied_and_ordinary_work_still_works():
    table = NR[platform.machine()]

    def body():
        libc = ctypes.CDLL(None, use_errno=True)
        out = {name: _syscall_errno(nr) for name, nr in table.items()}
        out["unshare_user"] = 0 if libc.unshare(0x10000000) == 0 else ctypes.get_errno()
        ran = []
        t = threading.Thread(target=lambda: ran.append(1))  # clone3 -> ENOSYS -> clone
        t.start()
        t.join()
        pid = os.fork()
        if pid == 0:
            os._exit(3)
        out["thread"] = ran == [1]
        out["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        return out

    seen = in_filtered_child(True, body)
    assert {k: seen[k] for k in table} == dict.fromkeys(table, errno.EPERM)
    assert seen["unshare_user"] == errno.EPERM
    assert seen["thread"] is True and seen["fork"] == 3


def test_filter_inherited_and_permanent():
    def body():
        pid = os.fork()
        if pid == 0:
            os._exit(_socket_errno(socket.AF_INET))
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    assert in_filtered_child(True, body) == errno.EACCES


def test_every_denied_name_has_a_number():
    names = seccomp.denied_syscalls()
    assert {"ptrace", "mount", "unshare", "setns", "bpf", "io_uring_setup", "keyctl"} <= set(names)
    assert len(seccomp.build_filter(True)) % 8 == 0
