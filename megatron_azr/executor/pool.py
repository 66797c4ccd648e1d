"""The local executor: a pool of sandboxed fork-server workers behind ``Executor.run``.

``run(jobs)`` turns jobs into tasks (one per job; two for ``validate``, which must run on two
workers, i.e. under two hash seeds), streams them to the workers in small batches with a couple
of batches in flight per worker so no server waits for the next one, and assembles one
``ExecResult`` per job, in job order. Everything runs on the calling thread around one
``selectors`` loop; no model text is ever parsed, compiled or evaluated in this process.

The pool outlives any job: a worker whose server dies (or stops answering within the job's
budget plus a grace period) is killed with its whole sandbox and restarted; the task it was
running gets a "killed" (or "timeout") result and the tasks queued behind it run elsewhere. A
batch in, results out, job ids carried through: a farm server can wrap ``run`` as is.
"""

from __future__ import annotations

import itertools
import logging
import selectors
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from megatron_azr.azr.protocols import ExecResult, Job
from megatron_azr.executor import cgroups, results, sandbox
from megatron_azr.executor.config import ExecutorConfig
from megatron_azr.executor.worker import Worker

log = logging.getLogger(__name__)

_KINDS = ("run", "validate", "deduction", "abduction", "induction")
_START_TIMEOUT_S = 60.0  # generous: two shared cores under load
_GRACE_S = 5.0  # beyond a task's own budget before its server counts as hung
_MAX_START_FAILURES = 3


class ExecutorError(RuntimeError):
    """The executor itself cannot work (workers do not start); never raised for a job."""


@dataclass(eq=False)
class _Task:
    tid: int
    payload: dict[str, Any]
    budget: float  # seconds the server may spend on it, all items together
    pair: _Task | None = None  # the other half of a validation
    worker: int | None = None
    result: dict[str, Any] | None = None


@dataclass
class _Plan:
    job: Job
    tasks: list[_Task] = field(default_factory=list)
    result: ExecResult | None = None


class SandboxExecutor:
    """``Executor`` over local sandboxed workers. Use as a context manager, or call ``close``."""

    def __init__(self, cfg: ExecutorConfig | None = None) -> None:
        self.cfg = cfg or ExecutorConfig()
        self.spec = sandbox.resolve(self.cfg)
        if self.spec.mode != "bwrap":
            log.warning("executor running UNCONFINED (allow_unconfined=true): %s", self.layers())
        support = self.spec.platform.cgroups
        self._cgroups = cgroups.PoolCgroups(support) if support.available else None
        self.workers: list[Worker] = []
        for k in range(self.cfg.n_workers):
            group = self._cgroups.worker(k) if self._cgroups else None
            self.workers.append(Worker(k, self.spec, group))
        self._lock = threading.Lock()
        self._tids = itertools.count()
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown, self.workers, self._cgroups)
        self._sel = selectors.DefaultSelector()
        self._start_failures = [0] * len(self.workers)
        try:
            for w in self.workers:
                self._start(w)
            self._wait_ready()
            self._check_packages()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ public

    def run(self, jobs: Sequence[Job]) -> list[ExecResult]:
        """Results in job order; program failures are results, not exceptions."""
        with self._lock:
            if self._closed:
                raise ExecutorError("executor is closed")
            plans = [self._plan(job) for job in jobs]
            queue: deque[_Task] = deque(t for p in plans for t in p.tasks)
            self._loop(queue, sum(len(p.tasks) for p in plans))
            return [p.result or self._assemble(p) for p in plans]

    def layers(self) -> list[tuple[str, str]]:
        return self.spec.layers()

    def busy_workers(self) -> int:
        """Workers with tasks in flight now (read without the lock: a gauge, not a decision)."""
        return sum(1 for w in self.workers if w.inflight)

    def worker_facts(self) -> list[dict[str, Any]]:
        """What each server reported at start (pid, uid, seccomp instructions)."""
        return [dict(w.facts) for w in self.workers]

    def close(self) -> None:
        """Stop every worker and remove its cgroups (waits for a ``run`` in progress)."""
        with self._lock:
            self._closed = True
            self._finalizer()
            self._sel.close()

    def __enter__(self) -> SandboxExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_packages(self) -> None:
        """Import each exposed package in a job, as programs will: metadata can be incomplete
        (a requirement not declared) and an interpreter can reject a build."""
        modules = self.spec.packages.modules
        if not modules:
            return
        program = "import importlib\ndef f(name):\n    return str(importlib.import_module(name))"
        jobs = [Job(f"package {m}", "run", program, (repr(m),), timeout_s=60.0) for m in modules]
        for module, result in zip(modules, self.run(jobs), strict=True):
            if not result.ok:
                raise ExecutorError(
                    f"executor.packages: {module!r} does not import in the sandbox: "
                    f"{result.error_type}: {result.stderr_tail.strip()[-300:]} (a requirement its "
                    "metadata does not declare can be added to executor.packages)"
                )

    # ------------------------------------------------------------------ planning

    def _plan(self, job: Job) -> _Plan:
        plan = _Plan(job)
        error_type, problem = self._check_job(job)
        if problem:
            plan.result = ExecResult(job.id, "invalid", error_type=error_type, stderr_tail=problem)
            return plan
        n_items = 1 if job.kind in ("deduction", "abduction") else len(job.inputs)
        payload = {
            "kind": job.kind,
            "program": job.program,
            "inputs": list(job.inputs),
            "expected": list(job.expected),
            "prediction": job.prediction,
            "imports": list(job.imports),
            "banned": list(job.banned_imports),
            "round_trip": self.cfg.validate_round_trip,
            "literal_inputs": job.literal_inputs,
            "timeout": job.timeout_s,
            "n_items": n_items,
        }
        budget = job.timeout_s * max(1, n_items)
        tid = next(self._tids)
        plan.tasks.append(_Task(tid, {**payload, "tid": tid}, budget))
        if job.kind == "validate":
            # The second half only reruns the program under another hash seed (another
            # worker); the first half does every other check.
            tid = next(self._tids)
            rerun = {**payload, "tid": tid, "kind": "run", "expected": [], "banned": []}
            plan.tasks.append(_Task(tid, rerun, budget))
            a, b = plan.tasks
            a.pair, b.pair = b, a
        return plan

    def _check_job(self, job: Job) -> tuple[str, str]:
        """(error type, problem) of a job that cannot run as given; ("", "") if it can."""
        size = len(job.program) + len(job.prediction) + sum(len(i) for i in job.imports)
        if size > self.cfg.max_program_kb << 10:
            limit = self.cfg.max_program_kb
            return "ProgramTooLarge", f"program of {size} bytes exceeds max_program_kb={limit}"
        n_in, n_out = len(job.inputs), len(job.expected)
        if job.kind not in _KINDS:
            problem = f"unknown job kind {job.kind!r}"
        elif not job.timeout_s > 0:
            problem = "timeout_s must be > 0"
        elif job.kind in ("run", "validate") and not n_in:
            problem = f"a {job.kind} job needs at least one input"
        elif job.kind in ("run", "validate") and n_out and n_out != n_in:
            problem = "expected outputs, when given, must match the inputs one to one"
        elif job.kind in ("deduction", "abduction") and n_out != 1:
            problem = f"a {job.kind} job needs exactly one expected output"
        elif job.kind == "induction" and (not n_in or n_in != n_out):
            problem = "an induction job needs as many expected outputs as inputs (at least one)"
        else:
            return "", ""
        return "BadJob", problem

    # ------------------------------------------------------------------ the loop

    def _loop(self, queue: deque[_Task], n_tasks: int) -> None:
        done = 0
        depth = 2
        while done < n_tasks:
            for w in self.workers:
                if not w.alive and w.proc is not None:
                    done += self._worker_lost(w, queue, "WorkerDied")
                if w.ready and len(w.messages) < depth and queue:
                    batch = self._take(queue, w)
                    if batch:
                        w.send(batch)
                self._watch(w)
            if done >= n_tasks:
                break
            for key, events in self._sel.select(timeout=0.5):
                w = key.data
                if events & selectors.EVENT_WRITE:
                    w.flush()
                if events & selectors.EVENT_READ:
                    frames = w.read()
                    if frames is None:
                        done += self._worker_lost(w, queue, "WorkerDied")
                        continue
                    for frame in frames:
                        done += self._on_frame(w, frame)
            now = time.monotonic()
            for w in self.workers:
                if w.inflight and now - w.last_progress > w.inflight[0].budget + _GRACE_S:
                    log.warning("worker %d unresponsive; restarting its sandbox", w.index)
                    done += self._worker_lost(w, queue, "WorkerUnresponsive", status="timeout")
                elif not w.ready and w.alive and now - w.started > _START_TIMEOUT_S:
                    self._worker_lost(w, queue, "WorkerStartTimeout")

    def _take(self, queue: deque[_Task], w: Worker) -> list[_Task]:
        """Up to a message's worth of tasks this worker may run (not both halves of a pair)."""
        n = min(self.cfg.tasks_per_message, max(1, len(queue) // len(self.workers)))
        batch: list[_Task] = []
        skipped: list[_Task] = []
        while queue and len(batch) < n and len(skipped) < 4 * n:
            t = queue.popleft()
            if t.pair is not None and t.pair.worker == w.index:
                skipped.append(t)
            else:
                t.worker = w.index
                batch.append(t)
        queue.extendleft(reversed(skipped))
        return batch

    def _watch(self, w: Worker) -> None:
        """Keep the selector in step: always read a live worker, write while bytes wait."""
        if w.proc is None or not w.alive:
            return
        registered = self._sel.get_map()
        if registered.get(w.rfd()) is None:
            self._sel.register(w.rfd(), selectors.EVENT_READ, w)
        if w.outbuf and registered.get(w.wfd()) is None:
            self._sel.register(w.wfd(), selectors.EVENT_WRITE, w)
        elif not w.outbuf and registered.get(w.wfd()) is not None:
            self._sel.unregister(w.wfd())

    def _on_frame(self, w: Worker, frame: dict[str, Any]) -> int:
        if "ready" in frame:
            w.ready = True
            w.facts = frame["ready"]
            self._start_failures[w.index] = 0
            return 0
        w.last_progress = time.monotonic()
        task = w.answered()
        if task.tid != frame["tid"]:
            raise ExecutorError(f"worker {w.index} answered task {frame['tid']}, not {task.tid}")
        result = results.interpret(task.payload, frame)
        if result["signal"] == 9 and w.oom_killed():  # the OOM killer, not us, sent the SIGKILL
            result["status"], result["error_type"] = "memory", "OOMKilled"
        task.result = result
        return 1

    def _worker_lost(self, w: Worker, queue: deque[_Task], why: str, status: str = "killed") -> int:
        """Kill and restart a worker; fail its running task, requeue the rest. Returns #done."""
        self._forget(w)
        w.kill()
        done = 0
        if w.inflight:
            head = w.inflight.popleft()
            if why == "WorkerDied" and w.oom_killed():
                status, why = "memory", "OOMKilled"
            head.result = results.lost(why, status)
            done = 1
            for t in reversed(w.inflight):
                t.worker = None
                queue.appendleft(t)
        elif not w.ready:
            self._start_failures[w.index] += 1
            if self._start_failures[w.index] >= _MAX_START_FAILURES:
                raise ExecutorError(f"worker {w.index} failed to start {_MAX_START_FAILURES}x")
        self._start(w)
        return done

    def _forget(self, w: Worker) -> None:
        if w.proc is None:
            return
        for fd in (w.rfd(), w.wfd()):
            if self._sel.get_map().get(fd) is not None:
                self._sel.unregister(fd)

    def _start(self, w: Worker) -> None:
        w.start()
        self._watch(w)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not all(w.ready for w in self.workers):
            if time.monotonic() > deadline:
                raise ExecutorError("executor workers did not start in time")
            for key, _ in self._sel.select(timeout=0.5):
                w = key.data
                frames = w.read()
                if frames is None:
                    self._worker_lost(w, deque(), "WorkerDied")
                    continue
                for frame in frames:
                    self._on_frame(w, frame)
            for w in self.workers:
                if not w.alive and not w.ready:
                    self._worker_lost(w, deque(), "WorkerDied")

    # ------------------------------------------------------------------ results

    def _assemble(self, plan: _Plan) -> ExecResult:
        job = plan.job
        with_matches = bool(job.expected)
        first, *second = (
            results.to_exec_result(job.id, t.result or results.lost("NoAnswer"), with_matches)
            for t in plan.tasks
        )
        return results.combine_validation(job.id, first, second[0]) if second else first


def _shutdown(workers: list[Worker], groups: cgroups.PoolCgroups | None) -> None:
    for w in workers:
        w.stop()
    if groups is not None:
        groups.remove()
