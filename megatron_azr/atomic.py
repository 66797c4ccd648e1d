"""Writing files and directories so that a crash leaves the old version or the new one, never
a mix: build beside the target, sync, rename over it, sync the directory that holds the name.

Without the syncs a rename can reach the disk before the data it publishes (ext4 and XFS order
neither by default): a power loss or a node crash then leaves a complete-looking name over
empty or short files."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def write_text(path: Path, text: str) -> None:
    """``text`` to ``path`` through a synced temporary file renamed over it."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (names created, renamed, removed) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Every file and directory under ``root`` (and ``root`` itself) to disk, deepest first."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            if os.path.islink(os.path.join(dirpath, name)):
                continue  # its target is not ours to sync
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def staging_dir(final: Path) -> Path:
    """A new empty directory beside ``final`` to build it in, then :func:`replace_dir` it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would survive the rename
    return tmp


def replace_dir(src: Path, dst: Path) -> None:
    """Move ``src``, synced, to ``dst``; an existing ``dst`` is removed only once ``src`` is in
    place."""
    fsync_tree(src)
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
    os.replace(src, dst)
    fsync_dir(dst.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
