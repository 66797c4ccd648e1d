"""torchrun worker of tests/test_seed.py: ``ensure_seed_files`` under SPMD, as ``azr train``
calls it, with the trainer's leader-placed engines (rank 0 generates and runs the sandbox, every
rank receives the results).

    torchrun --nproc-per-node=2 tests/seed_worker.py OUT_DIR KEY=VALUE...
"""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).with_name("azr")))
from azr_scripted import ScriptedRollout
from test_azr_seeding import SeedPolicy

from megatron_azr.azr.buffers import Buffers
from megatron_azr.config import load_config
from megatron_azr.executor import SandboxExecutor
from megatron_azr.seed import ensure_seed_files
from megatron_azr.train.dist import init_process_group
from megatron_azr.trainer import LeaderExecutor, LeaderRollout

ROOT = Path(__file__).resolve().parents[1]


def main(out: Path, overrides: list[str]) -> None:
    init_process_group()
    rank = dist.get_rank()
    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml", overrides)
    scripted = ScriptedRollout(SeedPolicy()) if rank == 0 else None
    with ExitStack() as stack:
        local = stack.enter_context(SandboxExecutor(cfg.executor)) if rank == 0 else None
        rollout = LeaderRollout(scripted, cfg.rollout)
        written = ensure_seed_files(cfg, rollout, LeaderExecutor(local), lambda p: True)
        # Every rank reads the files as soon as the call returns (rank 0 wrote them).
        sizes = {str(k): v for k, v in Buffers.from_config(cfg.azr).sizes().items()}
    result = {"written": [str(p) for p in written], "sizes": sizes}
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
