"""Starting the project's code in child processes, as the multi-process tests do."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from megatron_azr.train.dist import free_port

ROOT = Path(__file__).resolve().parents[1]


def child_env(**extra: str) -> dict[str, str]:
    """This environment with the checkout first on ``PYTHONPATH`` and one intra-op thread per
    process (the tests' workers share the machine's cores)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def torchrun_cmd(nproc: int) -> list[str]:
    """The command prefix that starts ``nproc`` local workers, on a free rendezvous port."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        f"--master-port={free_port()}",
    ]
