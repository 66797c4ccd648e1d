"""The sandboxed code executor: validates proposals and verifies answers (spec §5.2, §6.3, §10).

``SandboxExecutor`` implements ``megatron_azr.azr.protocols.Executor`` over a pool of fork-server
workers, each inside its own sandbox (see ``sandbox.py`` for the layers).
"""

from megatron_azr.executor.config import ExecutorConfig
from megatron_azr.executor.pool import ExecutorError, SandboxExecutor
from megatron_azr.executor.sandbox import SandboxUnavailable

__all__ = ["ExecutorConfig", "ExecutorError", "SandboxExecutor", "SandboxUnavailable"]
