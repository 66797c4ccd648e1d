"""The actor's CPU passes end by handing freed heap memory back (train/host_memory.py)."""

import subprocess
import sys
from pathlib import Path

import pytest

# In a child: glibc set up as `azr train` does (freed blocks up to 32 MiB kept, trim above
# 1 GiB), 512 MiB of 8 MiB tensors freed between small live ones; resident MiB printed before
# and after the release.
CHILD = """
import torch
from pathlib import Path
from megatron_azr.train.host_memory import keep_freed_host_memory, release_freed

def rss():
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if "VmRSS" in x)
    return int(line.split()[1]) // 1024

assert keep_freed_host_memory()
base = rss()
big, small = [], []
for _ in range(64):
    big.append(torch.ones(2 << 20))
    small.append(torch.ones(1024))
del big
kept = rss() - base
assert release_freed()
print(kept, rss() - base)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_release_returns_the_freed_heap():
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=root, capture_output=True, text=True, check=True
    )
    kept, after = map(int, out.stdout.split())
    assert kept > 400, kept  # glibc kept the freed 512 MiB resident
    assert after < 64, after
