"""Which CUDA device a task takes: all GPUs visible (torchrun, plain srun) or one per task
(srun --gpu-bind / --gpus-per-task, CUDA_VISIBLE_DEVICES of one device)."""

import pytest

from megatron_azr.train.dist import cuda_device_index


def test_all_gpus_visible_takes_the_local_rank():
    assert [cuda_device_index(r, 8) for r in range(8)] == list(range(8))


def test_one_gpu_per_task_takes_device_zero_whatever_the_local_rank():
    assert [cuda_device_index(r, 1) for r in range(8)] == [0] * 8


def test_fewer_gpus_than_local_ranks_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with pytest.raises(RuntimeError, match=r"local rank 5 but 2 GPUs .*CUDA_VISIBLE_DEVICES=2,3"):
        cuda_device_index(5, 2)
