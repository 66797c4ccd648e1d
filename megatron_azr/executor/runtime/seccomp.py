"""A seccomp-BPF filter for job processes, assembled by hand.

Python's libseccomp bindings are not installable everywhere (not for a pyenv interpreter), and the
filter is small: a classic-BPF program checked against the architecture, installed with
``prctl(PR_SET_SECCOMP)``. The policy is a deny list on top of the other layers, aimed at what a
job could use to reach outside its sandbox: network sockets, new namespaces, mounts, tracing and
reading other processes, kernel keyrings and modules, BPF, io_uring, clocks. Denied calls fail
with an errno (the program sees an ordinary ``OSError``); a foreign architecture or an x32 call
kills the process.

Installed once in the worker's fork server and inherited by every job process (filters survive
``fork`` and cannot be removed), so it costs nothing per job.
"""

from __future__ import annotations

import ctypes
import errno
import platform

# Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
_LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x05 | 0x10 | 0x00  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x05 | 0x30 | 0x00  # BPF_JMP | BPF_JGE | BPF_K
_JSET_K = 0x05 | 0x40 | 0x00  # BPF_JMP | BPF_JSET | BPF_K
_RET_K = 0x06 | 0x00  # BPF_RET | BPF_K

_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6] (little endian:
# the low 32 bits of args[i] sit at 16 + 8 * i).
_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16

_AF_UNIX = 1
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME
_CLONE_NEW_MASK = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000
_CLONE_NEW_MASK |= 0x10000000 | 0x20000000 | 0x40000000 | 0x00000080

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2

# The tables: every syscall the filter inspects. All but socket/clone/clone3 are denied outright:
# calls a job never needs and a sandbox escape often does. Numbers from the kernel's
# asm/unistd_64.h (x86_64) and asm-generic/unistd.h (aarch64).
_INSPECTED = ("socket", "clone", "clone3")

_X86_64 = {
    "socket": 41, "clone": 56, "clone3": 435, "ptrace": 101, "process_vm_readv": 310,
    "process_vm_writev": 311, "kcmp": 312, "pidfd_getfd": 438, "mount": 165, "umount2": 166,
    "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308, "open_tree": 428,
    "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "mount_setattr": 442, "open_by_handle_at": 304, "name_to_handle_at": 303, "bpf": 321,
    "perf_event_open": 298, "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "keyctl": 250, "add_key": 248, "request_key": 249,
    "init_module": 175, "finit_module": 313, "delete_module": 176, "kexec_load": 246,
    "kexec_file_load": 320, "reboot": 169, "swapon": 167, "swapoff": 168, "acct": 163,
    "syslog": 103, "quotactl": 179, "quotactl_fd": 443, "nfsservctl": 180, "iopl": 172,
    "ioperm": 173, "uselib": 134, "lookup_dcookie": 212, "vhangup": 153, "fanotify_init": 300,
    "personality": 135, "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305,
    "adjtimex": 159,
}  # fmt: skip

_AARCH64 = {
    "socket": 198, "clone": 220, "clone3": 435, "ptrace": 117, "process_vm_readv": 270,
    "process_vm_writev": 271, "kcmp": 272, "pidfd_getfd": 438, "mount": 40, "umount2": 39,
    "pivot_root": 41, "chroot": 51, "unshare": 97, "setns": 268, "open_tree": 428,
    "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "mount_setattr": 442, "open_by_handle_at": 265, "name_to_handle_at": 264, "bpf": 280,
    "perf_event_open": 241, "userfaultfd": 282, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "keyctl": 219, "add_key": 217, "request_key": 218,
    "init_module": 105, "finit_module": 273, "delete_module": 106, "kexec_load": 104,
    "kexec_file_load": 294, "reboot": 142, "swapon": 224, "swapoff": 225, "acct": 89,
    "syslog": 116, "quotactl": 60, "quotactl_fd": 443, "nfsservctl": 42, "lookup_dcookie": 18,
    "vhangup": 58, "fanotify_init": 262, "personality": 92, "settimeofday": 170,
    "clock_settime": 112, "clock_adjtime": 266, "adjtimex": 171,
}  # fmt: skip

# machine -> (AUDIT_ARCH_*, syscall table, first syscall number of a foreign ABI to kill or None)
_ARCHES: dict[str, tuple[int, dict[str, int], int | None]] = {
    "x86_64": (0xC000003E, _X86_64, 0x40000000),  # x32 calls carry __X32_SYSCALL_BIT
    "aarch64": (0xC00000B7, _AARCH64, None),
}


def supported() -> bool:
    return platform.machine() in _ARCHES


def denied_syscalls() -> list[str]:
    """The names this machine's filter denies (for ``azr executor doctor``)."""
    _, table, _ = _ARCHES[platform.machine()]
    return [name for name in table if name not in _INSPECTED]


class _Assembler:
    """Classic BPF with symbolic jump targets, resolved to the 8-bit relative offsets at the end."""

    def __init__(self) -> None:
        self.code: list[tuple[int, str | None, str | None, int]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int, jt: str | None = None, jf: str | None = None) -> None:
        self.code.append((code, jt, jf, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def assemble(self) -> bytes:
        out = bytearray()
        for i, (code, jt, jf, k) in enumerate(self.code):
            offs = []
            for target in (jt, jf):
                off = 0 if target is None else self.labels[target] - (i + 1)
                if not 0 <= off <= 255:
                    raise ValueError(f"BPF jump to {target} out of range ({off})")
                offs.append(off)
            out += code.to_bytes(2, "little") + bytes(offs) + (k & 0xFFFFFFFF).to_bytes(4, "little")
        return bytes(out)


def build_filter(allow_unix_sockets: bool) -> bytes:
    """The filter program for this machine, as packed ``struct sock_filter`` entries."""
    audit_arch, table, foreign_abi = _ARCHES[platform.machine()]
    a = _Assembler()
    a.op(_LD_W_ABS, _OFF_ARCH)
    a.op(_JEQ_K, audit_arch, None, "kill")
    a.op(_LD_W_ABS, _OFF_NR)
    if foreign_abi is not None:
        a.op(_JGE_K, foreign_abi, "kill", None)
    a.op(_JEQ_K, table["socket"], "socket", None)
    a.op(_JEQ_K, table["clone"], "clone", None)
    # clone3 passes its flags in memory a filter cannot read; ENOSYS makes glibc fall back to
    # clone, whose flags are checked below.
    a.op(_JEQ_K, table["clone3"], "enosys", None)
    for name in denied_syscalls():
        a.op(_JEQ_K, table[name], "eperm", None)
    a.op(_RET_K, _RET_ALLOW)
    a.label("socket")
    a.op(_LD_W_ABS, _OFF_ARG0)
    if allow_unix_sockets:
        a.op(_JEQ_K, _AF_UNIX, "allow", None)
    a.op(_RET_K, _RET_ERRNO | errno.EACCES)
    a.label("clone")
    a.op(_LD_W_ABS, _OFF_ARG0)
    a.op(_JSET_K, _CLONE_NEW_MASK, "eperm", "allow")
    a.label("allow")
    a.op(_RET_K, _RET_ALLOW)
    a.label("eperm")
    a.op(_RET_K, _RET_ERRNO | errno.EPERM)
    a.label("enosys")
    a.op(_RET_K, _RET_ERRNO | errno.ENOSYS)
    a.label("kill")
    a.op(_RET_K, _RET_KILL_PROCESS)
    return a.assemble()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(allow_unix_sockets: bool) -> int:
    """Install the filter on the calling process (and all its future children).

    Returns the number of BPF instructions. Raises ``OSError`` if the kernel refuses.
    """
    program = build_filter(allow_unix_sockets)
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"PR_SET_NO_NEW_PRIVS: {errno.errorcode.get(err, err)}")
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p).value)
    if prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"PR_SET_SECCOMP: {errno.errorcode.get(err, err)}")
    return len(program) // 8
