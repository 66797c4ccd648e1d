"""Rollout engines hosted in a child process, for tests.

vLLM changes the process that builds it (it initialises torch.distributed, pins threads to
cores, caches its environment), which must not leak into the pytest process. The child holds
any number of named engines and runs one command at a time; errors come back with their type
(when it is a builtin) and the child's traceback.
"""

from __future__ import annotations

import builtins
import contextlib
import multiprocessing as mp
import os
import traceback
from typing import Any

_CHILD_ENV = {"VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}
_LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK")
_LAUNCHER_ENV += ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")


def _serve(conn: Any, env: dict[str, str]) -> None:
    for var in _LAUNCHER_ENV:  # a parent started by torchrun: the engine is not one of its ranks
        os.environ.pop(var, None)
    os.environ.update(env)
    import torch

    from megatron_azr.rollout import RolloutConfig, build_rollout_engine
    from megatron_azr.rollout.weights import iter_safetensors

    engines: dict[str, Any] = {}

    def build(
        key: str, model_dir: str, cfg: dict[str, Any], actor_precision: str | None = None
    ) -> dict[str, Any]:
        engine = build_rollout_engine(RolloutConfig(**cfg), model_dir, actor_precision)  # type: ignore[arg-type]
        engines[key] = engine
        llm = getattr(engine, "llm", None)
        if llm is None:
            return {}
        mc = llm.llm_engine.model_config
        return {"dtype": str(mc.dtype), "prefix_caching": engine.cfg.enable_prefix_caching}

    def update_from_dir(key: str, model_dir: str) -> None:
        engines[key].update_weights(iter_safetensors(model_dir))

    def update_stream(key: str) -> None:
        """update_weights on (name, tensor) messages as they arrive, up to a None."""
        done = False

        def incoming() -> Any:
            nonlocal done
            while (item := conn.recv()) is not None:
                yield item
            done = True

        try:
            engines[key].update_weights(incoming())
        finally:
            while not done:  # a failed update: drop the rest of the stream
                done = conn.recv() is None

    def push_from_megatron(key: str, hf_dir: str) -> None:
        """Load ``hf_dir`` into a megatron-core model in this process's world (one rank) and
        reshard it into engine ``key`` (engine shards when the engine's TP is the model's)."""
        from megatron_azr.models import hf_io
        from megatron_azr.models.builder import BuildOptions, build_model
        from megatron_azr.models.config import ModelConfig
        from megatron_azr.rollout import reshard
        from megatron_azr.train.config import ParallelConfig
        from megatron_azr.train.dist import init_parallel

        arch = ModelConfig.from_hf_dir(hf_dir)
        init_parallel(ParallelConfig(), seed=0)
        engine = engines[key]
        precision = "bf16" if engine.cfg.dtype == "bfloat16" else "fp32"
        chunks = build_model(arch, BuildOptions(impl="local", precision=precision))
        hf_io.load_hf(chunks, arch, hf_dir)
        reshard.push_weights(engine, chunks, arch, engine.cfg)

    def init_process_group() -> None:  # a one-rank "training world" for colocated vLLM
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend, rank=0, world_size=1)

    def cuda_free_bytes() -> int:
        torch.cuda.synchronize()
        return int(torch.cuda.mem_get_info()[0])

    commands = {
        f.__name__: f
        for f in (
            build,
            update_from_dir,
            update_stream,
            push_from_megatron,
            init_process_group,
            cuda_free_bytes,
        )
    }
    while True:
        cmd, args, kwargs = conn.recv()
        if cmd == "close":
            return
        try:
            if cmd in commands:
                result = commands[cmd](*args, **kwargs)
            else:  # an engine method: (key, *method args)
                result = getattr(engines[args[0]], cmd)(*args[1:], **kwargs)
            conn.send(("ok", result))
        except BaseException as e:
            conn.send(("error", (type(e).__name__, str(e), traceback.format_exc())))


class RemoteEngines:
    def __init__(self, env: dict[str, str] | None = None, timeout: float = 600.0) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._timeout = timeout
        self._proc = ctx.Process(target=_serve, args=(child, {**_CHILD_ENV, **(env or {})}))
        self._proc.start()

    def __call__(self, cmd: str, *args: Any, **kwargs: Any) -> Any:
        self.submit(cmd, *args, **kwargs)
        return self.result(cmd)

    def submit(self, cmd: str, *args: Any, **kwargs: Any) -> None:
        """Start ``cmd`` in the child without waiting (collect it with :meth:`result`)."""
        self._conn.send((cmd, args, kwargs))

    def stream(self, key: str, named_tensors: Any) -> None:
        """``update_weights`` of engine ``key`` fed lazily from ``named_tensors`` in this
        process (tensors travel through shared memory)."""
        self.submit("update_stream", key)
        for name, tensor in named_tensors:
            self._conn.send((name, tensor))
        self._conn.send(None)
        self.result("update_stream")

    def result(self, cmd: str) -> Any:
        if not self._conn.poll(self._timeout):
            self.close()
            raise TimeoutError(f"engine child did not answer {cmd!r} in {self._timeout} s")
        status, payload = self._conn.recv()
        if status == "error":
            name, message, tb = payload
            exc_type = getattr(builtins, name, RuntimeError)
            if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
                exc_type = RuntimeError
            raise exc_type(f"{message}\n--- in the engine child ({name}) ---\n{tb}")
        return payload

    def close(self) -> None:
        if self._proc.is_alive():
            with contextlib.suppress(BrokenPipeError, OSError):
                self._conn.send(("close", (), {}))
            self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
