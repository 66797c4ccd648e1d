import pytest
import torch.distributed as dist

from megatron_azr.train.dist import free_port


@pytest.fixture(scope="module")
def world():
    """A gloo world of one in this process: every collective really runs, through the same
    ProcessGroup methods as in a job."""
    if not dist.is_initialized():
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
        )
    yield dist.group.WORLD
    dist.destroy_process_group()
