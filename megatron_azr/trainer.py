"""The AZR self-play loop, top to bottom (``azr train``).

One step: wake rollout -> propose (3 task types) -> validate proposals on the executor ->
learnability rollouts -> solve -> verify -> rewards -> TRR++ advantages -> sleep rollout ->
actor update -> reshard weights into rollout -> checkpoint / log. The algorithm
(:class:`~megatron_azr.azr.selfplay.SelfPlayStep`) sees the engines only through their protocols.

SPMD: every rank runs this function (torchrun / srun). The algorithm runs on every rank over
identical state; what must happen once (an in-process rollout engine, the sandboxed executor)
runs on global rank 0 and its results are broadcast, so every rank hands the same samples to
the actor. A colocated vLLM engine instead lives on every rank: its replicas split the prompts
and all-gather the completions (``rollout.placement``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from tqdm import tqdm

from megatron_azr import atomic, rundir
from megatron_azr.azr.buffers import Buffers
from megatron_azr.azr.prompts import prompt_wrap
from megatron_azr.azr.protocols import (
    Completion,
    ExecResult,
    Executor,
    Job,
    RolloutEngine,
    SamplingParams,
)
from megatron_azr.azr.selfplay import SelfPlayStep
from megatron_azr.config import Config, to_dict
from megatron_azr.eval.training import TrainingEval
from megatron_azr.rollout.build import build_rollout_engine, log_memory_budget
from megatron_azr.rollout.config import RolloutConfig
from megatron_azr.rollout.reshard import push_weights
from megatron_azr.rundir import LATEST, STATE_FILE, checkpoint_root
from megatron_azr.seed import ensure_seed_files
from megatron_azr.telemetry.logs import setup_logging
from megatron_azr.telemetry.metrics import MetricsLogger
from megatron_azr.telemetry.profile import Telemetry
from megatron_azr.telemetry.rollouts import dump_rollouts, summary
from megatron_azr.train.actor import Actor
from megatron_azr.train.config import Precision
from megatron_azr.train.dist import broadcast_object
from megatron_azr.train.host_memory import keep_freed_host_memory

logger = logging.getLogger(__name__)
T = TypeVar("T")


# (rollout config, model directory, the actor's precision) -> engine
EngineBuilder = Callable[[RolloutConfig, Path, Precision], RolloutEngine]


def train(cfg: Config, build_engine: EngineBuilder = build_rollout_engine) -> dict[str, float]:
    """Run ``cfg.run.steps`` self-play steps (resuming from the latest checkpoint in
    ``cfg.run.output_dir`` if there is one); returns the last step's metrics.
    ``build_engine`` makes the rollout engine from its config and model directory."""
    from megatron_azr.train.dist import init_process_group

    out = Path(cfg.run.output_dir)
    start_point = rundir.check_start(cfg)  # before any model load, before writing into `out`
    if not torch.cuda.is_available():
        keep_freed_host_memory()  # resharding's tensor churn on CPU (train/host_memory.py)
    init_process_group(cfg.profile.pg_timeout_minutes)
    rank = dist.get_rank()
    setup_logging(cfg.logging.level, rundir.rank_log(out, rank), rank=rank)
    leader = rank == 0
    if start_point.finished(cfg.run.steps):
        return report_finished(out, start_point.resume.step, cfg.run.steps, leader)
    rundir.record_start(cfg, start_point, leader)
    resume = start_point.resume.path

    # The actor, then everything a resumed run restores: weights, optimizer, buffers, step (a
    # resumed run never reads model.path: the checkpoint overwrites every weight).
    init_from = (cfg.model.path or None) if resume is None else None
    actor = Actor(cfg.model.arch, cfg.parallel, cfg.actor, init_from=init_from)
    start, buffers = 0, None
    if resume is not None:
        start, buffers = load_checkpoint(actor, resume, cfg)
        logger.info("resumed from %s at step %d", resume, start)

    # The actor's optimizer state exists already (Actor allocates it), so the engine that
    # measures free memory next sees the actor at its resident size.
    log_memory_budget(actor.memory_bytes(), cfg.rollout)
    with ExitStack() as stack:
        model_dir = rollout_model_dir(actor, out / "rollout_model")
        engine = make_rollout(cfg, model_dir, build_engine)
        executor = make_executor(cfg, stack)
        tokenizer = load_tokenizer(model_dir)
        metrics_log = (
            stack.enter_context(
                closing(MetricsLogger(cfg.logging, out, cfg.run.name, to_dict(cfg)))
            )
            if leader
            else None
        )
        telemetry = stack.enter_context(Telemetry(cfg.profile, out))
        telemetry.instrument(actor, engine, executor)
        # The engine starts from the actor's weights, streamed through the resharding path.
        engine.push_weights(actor)
        _release_cached_memory()

        def fits(prompt: str) -> bool:
            return len(tokenizer(prompt).input_ids) <= cfg.azr.max_prompt_tokens

        wrap = prompt_wrap(cfg.azr.prompt_template, tokenizer)
        if buffers is None:
            # A fresh run whose seed files are absent has the model write them (spec §3).
            engine.wake_up()
            ensure_seed_files(cfg, engine, executor, fits, wrap=wrap)
            engine.sleep()
            buffers = Buffers.from_config(cfg.azr)
        selfplay = SelfPlayStep(
            cfg.azr, buffers, engine, executor, seed=cfg.run.seed, prompt_fits=fits, wrap=wrap
        )
        evaluation = TrainingEval(
            cfg.eval, cfg.azr.prompt_template, tokenizer, wrap, out if leader else None
        )

        metrics: dict[str, float] = {}
        steps = range(start + 1, cfg.run.steps + 1)
        for step in tqdm(
            steps, desc="azr train", disable=not leader, initial=start, total=cfg.run.steps
        ):
            t0 = time.perf_counter()
            times: dict[str, float] = {}
            with telemetry.step(step):
                with _timed(times, "rollout", telemetry):
                    engine.wake_up()
                    # Rollout seeds depend on (run seed, step) only: a resumed run replays.
                    result = selfplay.run(step, rollout_seed=_step_seed(cfg.run.seed, step))
                    engine.sleep()
                samples = result.samples()
                with _timed(times, "update", telemetry):
                    update = actor.update(samples) if samples else {}
                    _release_cached_memory()
                # No rollout follows the last update, but an evaluation of it may.
                if step < cfg.run.steps or evaluation.due(step):
                    with _timed(times, "reshard", telemetry):
                        engine.push_weights(actor)
                        _release_cached_memory()
                evals = evaluation.run_if_due(step, engine, executor)  # eval/*, time/eval_s
            times["time/step_s"] = time.perf_counter() - t0
            metrics = {
                **result.metrics,
                **{f"actor/{k}": v for k, v in update.items()},
                **times,
                **telemetry.end_step(step),  # collective; rank 0's metrics
                **evals,
                "samples": float(len(samples)),
            }
            if metrics_log is not None and step % cfg.logging.log_every == 0:
                metrics_log.log(step, metrics)
            if leader and cfg.logging.rollout_dump:
                rows = result.rows()
                dump_rollouts(out, step, rows, cfg.logging.rollout_dump_rate, cfg.run.seed)
            logger.info("step %d: %s", step, _summary(metrics))
            if step % cfg.run.checkpoint_every == 0 or step == cfg.run.steps:
                with telemetry.phase("checkpoint"):  # reported with the next step
                    save_checkpoint(actor, buffers, step, out, cfg.run.keep_checkpoints)
    if leader and metrics:
        print(summary(out, cfg.run.steps, metrics), flush=True)
    return metrics


def report_finished(out: Path, done: int, steps: int, leader: bool) -> dict[str, float]:
    """A rerun of a finished run: say so (and show its last step) instead of loading a model
    to do nothing."""
    log = out / "metrics.jsonl"  # absent when logging.log_every skipped every step
    rows = log.read_text().splitlines() if leader and log.is_file() else []
    last: dict[str, float] = json.loads(rows[-1]) if rows else {}
    if leader:
        print(
            f"azr train: {out} is finished (checkpoint at step {done}, run.steps={steps}): "
            "nothing to do. Raise run.steps to continue it, or choose another run.output_dir.",
            flush=True,
        )
        if last:
            print(summary(out, int(last["step"]), last), flush=True)
    return last


# ---------------------------------------------------------------------------------------------
# Engines, placed on ranks


def make_rollout(
    cfg: Config, model_dir: Path, build: EngineBuilder = build_rollout_engine
) -> LeaderRollout | ReplicatedRollout:
    rollout_cfg = dataclasses.replace(cfg.rollout, load_format="dummy")
    # rollout.dtype=auto computes in the actor's precision: the engine's log-probs enter the loss.
    precision = cfg.actor.precision
    if cfg.rollout.replicated:
        size = cfg.rollout.tensor_parallel_size
        if dist.get_world_size() % size:
            raise ValueError(
                f"rollout.tensor_parallel_size={size} does not divide the world size "
                f"{dist.get_world_size()}"
            )
        return ReplicatedRollout(build(rollout_cfg, model_dir, precision), rollout_cfg)
    engine = on_leader(lambda: build(rollout_cfg, model_dir, precision), share=False)
    return LeaderRollout(engine, rollout_cfg)


def make_executor(cfg: Config, stack: ExitStack) -> Executor:
    """The local sandboxed pool, or the farm when ``executor.endpoints``/``rendezvous`` name one
    (relative farm paths are in the run directory), on rank 0."""
    from megatron_azr.executor.remote import open_executor

    def open_farm_or_pool() -> Executor:
        executor = open_executor(cfg.executor, cfg.run.output_dir)
        stack.callback(executor.close)
        return executor

    return LeaderExecutor(on_leader(open_farm_or_pool, share=False))


class RankFailure(RuntimeError):
    """Raised on every other rank when one rank's part of a collective step failed."""


@dataclasses.dataclass(frozen=True)
class _Failed:
    rank: int
    error: str

    @classmethod
    def of(cls, e: BaseException) -> _Failed:
        return cls(dist.get_rank(), f"{type(e).__name__}: {e}")

    def raise_elsewhere(self) -> typing.NoReturn:
        message = f"rank {self.rank} failed: {self.error}"
        logger.error("%s", message)  # in this rank's log too, whoever catches the exception
        raise RankFailure(message)


def on_leader(fn: Callable[[], T], *, share: bool = True) -> T:
    """``fn()`` on rank 0; its result on every rank (``share``) or on rank 0 only (None
    elsewhere). If it raises, rank 0 raises the error and every other rank a
    :class:`RankFailure` naming it, instead of waiting in the next collective until the
    process group times out."""
    if not _is_leader():
        got = broadcast_object(None)
        if isinstance(got, _Failed):
            got.raise_elsewhere()
        return got
    try:
        out = fn()
    except Exception as e:
        broadcast_object(_Failed.of(e))
        raise
    broadcast_object(out if share else None)
    return out


class LeaderRollout:
    """An in-process engine on rank 0; every other rank receives its completions."""

    def __init__(self, engine: RolloutEngine | None, cfg: RolloutConfig) -> None:
        self.engine, self.cfg = engine, cfg

    def generate(
        self, prompts: Sequence[str], sampling: SamplingParams, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        return on_leader(lambda: self._engine().generate(prompts, sampling, seeds))

    def _engine(self) -> RolloutEngine:
        assert self.engine is not None, "the engine lives on rank 0"
        return self.engine

    def push_weights(self, actor: Actor) -> None:
        """The actor's weights into the engine (collective; only rank 0 receives tensors)."""
        push_weights(self.engine, actor.models, actor.arch, self.cfg, dst=0)

    def sleep(self) -> None:
        if self.engine is not None:
            self.engine.sleep()

    def wake_up(self) -> None:
        if self.engine is not None:
            self.engine.wake_up()


class ReplicatedRollout:
    """An engine on every rank, one replica per ``rollout.tensor_parallel_size`` consecutive ranks.

    Replica ``r`` of ``R`` generates prompts ``r, r + R, ...`` (every rank of a replica with
    the same inputs, as tensor-parallel engines need); the replicas' outputs are all-gathered,
    so every rank returns the same completions, whatever numerical noise separates replicas.
    With one replica every rank already holds them all (the ranks of a tensor-parallel vLLM
    engine return the same outputs): only a failure flag is gathered.
    """

    def __init__(self, engine: RolloutEngine, cfg: RolloutConfig) -> None:
        self.engine, self.cfg = engine, cfg
        self.size = cfg.tensor_parallel_size
        self.replicas = dist.get_world_size() // self.size
        self.index = dist.get_rank() // self.size

    def generate(
        self, prompts: Sequence[str], sampling: SamplingParams, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        mine = list(prompts[self.index :: self.replicas])
        my_seeds = None if seeds is None else list(seeds[self.index :: self.replicas])
        if dist.get_world_size() == 1:
            return self.engine.generate(mine, sampling, my_seeds) if mine else []
        failed: _Failed | None = None
        out: list[list[Completion]] = []
        try:
            out = self.engine.generate(mine, sampling, my_seeds) if mine else []
        except Exception as e:  # the others learn of it in the gather, instead of hanging there
            failed, error = _Failed.of(e), e
        speaks = dist.get_rank() % self.size == 0  # the first rank of each replica speaks for it
        # With one replica every rank holds the completions already: only a failure travels.
        mine_out = None if self.replicas == 1 or not speaks else out
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, failed or mine_out)
        if failed is not None:
            raise error
        for g in gathered:
            if isinstance(g, _Failed):
                g.raise_elsewhere()
        if self.replicas == 1:
            return out
        parts = gathered[:: self.size]
        return [parts[i % self.replicas][i // self.replicas] for i in range(len(prompts))]

    def push_weights(self, actor: Actor) -> None:
        """The actor's weights into every replica (collective); a vLLM engine whose TP equals
        the actor's receives its own shards, without a TP gather."""
        push_weights(self.engine, actor.models, actor.arch, self.cfg)

    def sleep(self) -> None:
        self.engine.sleep()

    def wake_up(self) -> None:
        self.engine.wake_up()


class LeaderExecutor:
    """The sandboxed pool on rank 0; every other rank receives its results."""

    def __init__(self, executor: Executor | None) -> None:
        self.executor = executor

    def run(self, jobs: Sequence[Job]) -> list[ExecResult]:
        return on_leader(lambda: self._local().run(jobs))

    def _local(self) -> Executor:
        assert self.executor is not None, "the executor lives on rank 0"
        return self.executor


def rollout_model_dir(actor: Any, path: Path) -> Path:
    """Config and tokenizer for the rollout engine (its weights come from the actor).

    Copied from the HF directory the actor was initialised from; for a random init, a config
    generated from the model card and a locally trained tokenizer.
    """
    from megatron_azr.models import hf_io
    from megatron_azr.models.hf_tiny import train_tokenizer

    if _is_leader():
        tmp = path.with_name(f".{path.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if actor.hf_source is not None:
            hf_io.copy_meta_files(actor.hf_source, tmp)
        else:
            dtype = next(iter(actor.models[0].parameters())).dtype
            (tmp / "config.json").write_text(json.dumps(hf_io.hf_config(actor.arch, dtype)))
            train_tokenizer(tmp, actor.arch.vocab_size)
        atomic.replace_dir(tmp, path)
    dist.barrier()
    return path


def load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


# ---------------------------------------------------------------------------------------------
# Checkpoints: one directory per step holds everything a run needs to resume exactly.


def save_checkpoint(actor: Any, buffers: Buffers, step: int, out: Path, keep: int) -> Path:
    """Actor (weights + optimizer, reshardable), buffers and step, written to a temporary
    directory, listed in its manifest, synced and renamed into place; ``latest`` moves only
    after that (collective). See :mod:`megatron_azr.rundir`."""
    from megatron_azr.train import checkpoint

    root = checkpoint_root(out)
    final = root / f"step_{step:08d}"
    tmp = root / f".step_{step:08d}.tmp"
    if _is_leader():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    checkpoint.save(actor, tmp / "actor")
    if _is_leader():
        buffers.save(tmp / "buffers")
        state = {"step": step, "actor_steps": actor.steps}
        atomic.write_text(tmp / STATE_FILE, json.dumps(state))
        rundir.write_manifest(tmp)
        atomic.replace_dir(tmp, final)
        atomic.write_text(root / LATEST, final.name)
        _prune_checkpoints(root, final, keep)
    dist.barrier()
    logger.info("checkpoint at step %d: %s", step, final)
    return final


def _prune_checkpoints(root: Path, newest: Path, keep: int) -> None:
    """Keep the ``keep`` newest checkpoints up to ``newest``. Any after it belong to a future
    this run abandoned when it resumed from an older one (those were incomplete, or ``latest``
    was set back by hand): the run replays those steps."""
    done = sorted(p for p in root.glob("step_*") if p.is_dir())
    kept = [p for p in done if p.name <= newest.name]
    for old in [p for p in done if p.name > newest.name] + kept[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(actor: Any, path: Path, cfg: Config) -> tuple[int, Buffers]:
    from megatron_azr.train import checkpoint

    checkpoint.load(actor, path / "actor")
    state = json.loads((path / STATE_FILE).read_text())
    buffers = Buffers.load(path / "buffers", cfg.azr.max_buffer_size, cfg.azr.buffer_cap_policy)
    return int(state["step"]), buffers


# ---------------------------------------------------------------------------------------------
# Small helpers


def _is_leader() -> bool:
    return dist.get_rank() == 0


def _release_cached_memory() -> None:
    """Hand torch's cached GPU blocks (the actor's activations, resharding's staging) back
    before the engine's next wake-up allocates its KV cache outside torch's allocator."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _step_seed(run_seed: int, step: int) -> int:
    return (run_seed * 1_000_003 + step) % (2**31)


def _summary(metrics: dict[str, float]) -> str:
    keys = ("actor/loss", "time/step_s")
    shown = {k: metrics[k] for k in keys if k in metrics}
    shown.update({k: v for k, v in metrics.items() if k.endswith("valid_rate")})
    return " ".join(f"{k}={v:.3g}" for k, v in shown.items())


@contextmanager
def _timed(spans: dict[str, float], name: str, telemetry: Telemetry) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        with telemetry.phase(name):
            yield
    finally:
        spans[f"time/{name}_s"] = time.perf_counter() - t0
