"""Distributed start-up: torch.distributed (NCCL on GPU, gloo on CPU) and megatron parallel state.

Works under torchrun / srun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK) and as a
plain single process (a world of one on a free local port).
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from megatron_azr.train.config import ParallelConfig

logger = logging.getLogger(__name__)

# Set by init_process_group; megatron's groups get the same timeout (profile.pg_timeout_minutes).
_timeout_minutes = 30


@dataclass(frozen=True)
class Layout:
    """Where this rank sits in the (tp, pp, dp) grid."""

    tp: int
    pp: int
    dp: int
    vpp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects; no communication in a world of one)."""
    if dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env_from_slurm() -> None:
    """Fill torchrun's variables from Slurm's when started by ``srun`` directly."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")


def cuda_device_index(local_rank: int, visible: int) -> int:
    """This task's CUDA device among the ``visible`` ones.

    Every GPU of the node visible to every task (plain ``srun``, torchrun): the local rank.
    One GPU per task (``srun --gpu-bind=single:1``/``--gpus-per-task=1``, or a
    ``CUDA_VISIBLE_DEVICES`` of one device): device 0, whatever the local rank.
    """
    if visible == 1:
        return 0
    if 0 <= local_rank < visible:
        return local_rank
    raise RuntimeError(
        f"local rank {local_rank} but {visible} GPUs visible to this task "
        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}): give "
        "each task one GPU (--gpu-bind) or every task all GPUs of the node"
    )


def _select_cuda_device() -> None:
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    index = cuda_device_index(local_rank, torch.cuda.device_count())
    torch.cuda.set_device(index)
    if index != local_rank:
        # Colocated vLLM (external_launcher) takes LOCAL_RANK as its device index
        # (vllm/v1/executor/uniproc_executor.py:196, vLLM 0.32): point it at ours.
        os.environ["LOCAL_RANK"] = str(index)
        logger.info("one GPU visible to this task: cuda:%d (local rank %d)", index, local_rank)


def init_process_group(timeout_minutes: int = 30) -> None:
    """torch.distributed with NCCL when CUDA is present, else gloo (+ the CPU compat layer)."""
    global _timeout_minutes
    if not torch.cuda.is_available():
        from megatron_azr.train import cpu_compat

        cpu_compat.apply()
    if dist.is_initialized():
        return
    _timeout_minutes = timeout_minutes
    _env_from_slurm()
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    if "MASTER_ADDR" not in os.environ:
        raise RuntimeError("MASTER_ADDR/MASTER_PORT are not set (launch with torchrun or srun)")
    if torch.cuda.is_available():
        _select_cuda_device()
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(
        backend=backend,
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        timeout=datetime.timedelta(minutes=timeout_minutes),
    )
    logger.info("torch.distributed up: %s, world size %d", backend, dist.get_world_size())


def init_parallel(parallel: ParallelConfig, seed: int) -> Layout:
    """Initialise megatron's parallel state for ``parallel``.

    A second call with the same layout keeps the state (a reference policy next to the actor
    shares its process groups); a different layout tears the old one down first.
    """
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    init_process_group()
    world = dist.get_world_size()
    if world % (parallel.tp * parallel.pp):
        raise ValueError(
            f"world size {world} is not divisible by tp*pp = {parallel.tp}*{parallel.pp}"
        )
    if ps.model_parallel_is_initialized():
        lay = current_layout()
        if (lay.tp, lay.pp, lay.vpp) == (parallel.tp, parallel.pp, parallel.vpp):
            return lay
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=parallel.vpp if parallel.vpp > 1 else None,
        distributed_timeout_minutes=_timeout_minutes,
    )
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    torch.manual_seed(seed)
    return current_layout()


def current_layout() -> Layout:
    from megatron.core import parallel_state as ps

    return Layout(
        tp=ps.get_tensor_model_parallel_world_size(),
        pp=ps.get_pipeline_model_parallel_world_size(),
        dp=ps.get_data_parallel_world_size(),
        vpp=ps.get_virtual_pipeline_model_parallel_world_size() or 1,
        tp_rank=ps.get_tensor_model_parallel_rank(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        dp_rank=ps.get_data_parallel_rank(),
    )


def shutdown() -> None:
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
