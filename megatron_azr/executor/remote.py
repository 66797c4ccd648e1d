"""``RemoteExecutor``: the ``Executor`` protocol over the farm's servers (``azr executor serve``).

``run(jobs)`` cuts the batch into requests and keeps at most ``farm_requests_per_server``
requests on each healthy server and ``farm_max_inflight`` jobs over the whole farm, handing the
next request to the least loaded server (jobs in flight per worker). What can go wrong is of two
kinds, never mixed:

* a program's verdict (any ``ExecResult``, ``timeout`` and ``killed`` included) is final: it
  fills its job's slot, once;
* an infrastructure failure (connection refused or reset, HTTP 5xx, no answer within the
  request's budget, a garbled answer) says nothing about the jobs: the server is evicted, the
  request's jobs go back to the queue and run elsewhere after an exponential backoff with
  jitter, and the evicted server is probed (``/healthz``, same backoff) until it answers and
  is re-admitted.

Each request's jobs sit in exactly one request at a time and only that request's answer fills
their slots, so every job gets exactly one verdict however often servers fail (``stats``
counts them per job id, a content hash). The step fails, with one line, only when no server
has answered for ``farm_deadline_s`` (401 and 400 answers fail at once: retrying cannot help).

Servers come from ``executor.endpoints`` and from the ``server-*.json`` files that servers
write into the rendezvous directory (re-read during a call, so servers that start late or
restart on another port join).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from megatron_azr.azr.protocols import ExecResult, Job
from megatron_azr.executor import wire
from megatron_azr.executor.config import ExecutorConfig
from megatron_azr.executor.pool import ExecutorError, SandboxExecutor

log = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 10.0
_DISCOVER_EVERY_S = 2.0


@dataclass
class Server:
    url: str
    workers: int = 2
    max_jobs: int = 4096
    healthy: bool = False
    failures: int = 0  # consecutive: sets the probe backoff
    retry_at: float = 0.0  # next probe, while evicted
    probing: bool = False
    last_error: str = "not contacted yet"
    requests: int = 0  # in flight now
    jobs: int = 0  # in flight now

    @property
    def load(self) -> float:
        return self.jobs / max(1, self.workers)


@dataclass
class FarmStats:
    """What the farm client did, over its whole life (every ``run`` call)."""

    jobs: int = 0
    requests: int = 0
    infra_failures: int = 0
    retries: int = 0  # requests re-queued after an infrastructure failure
    evictions: int = 0
    readmissions: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)  # per job id


@dataclass(eq=False)
class _Chunk:
    slots: list[int]
    attempts: int = 0
    ready_at: float = 0.0
    last_server: str = ""


class _Infra(Exception):
    """A failure of the farm, not of the jobs: retry elsewhere."""


class _TooLarge(Exception):
    """413: the server's limits are smaller than ours; split the request."""


def _backoff(cfg: ExecutorConfig, failures: int, rng: random.Random) -> float:
    """Exponential in the number of failures, capped, with "equal jitter" (half random)."""
    delay = min(cfg.farm_backoff_max_s, cfg.farm_backoff_s * 2 ** max(0, failures - 1))
    return delay * rng.uniform(0.5, 1.0)


def _budget(job: Job) -> float:
    """Seconds the pool may spend on ``job`` (a validation runs twice)."""
    items = 1 if job.kind in ("deduction", "abduction") else max(1, len(job.inputs))
    return job.timeout_s * items * (2 if job.kind == "validate" else 1)


class RemoteExecutor:
    """``Executor`` over farm servers. ``base_dir``: where a relative rendezvous directory or
    token file is (the run directory in ``azr train``)."""

    def __init__(self, cfg: ExecutorConfig, base_dir: str | Path = ".") -> None:
        if not cfg.farm:
            raise ExecutorError("executor farm: neither executor.endpoints nor rendezvous is set")
        if not cfg.token_file:
            raise ExecutorError("executor farm: executor.token_file is not set")
        self.cfg = cfg
        base = Path(base_dir)
        try:
            self.token = wire.read_token(base / Path(cfg.token_file).expanduser())
        except wire.WireError as e:
            raise ExecutorError(f"executor farm: {e}") from None
        self.rendezvous = base / cfg.rendezvous if cfg.rendezvous else None
        self.servers: dict[str, Server] = {}
        for url in cfg.endpoints:
            self._add(url)
        self.stats = FarmStats()
        self._rng = random.Random()

    def run(self, jobs: Sequence[Job]) -> list[ExecResult]:
        """Results in job order; raises ``ExecutorError`` only when the farm cannot answer."""
        if not jobs:
            return []
        return asyncio.run(_Call(self, list(jobs)).run())

    def close(self) -> None:
        """Nothing is held between calls (each call opens and closes its connections)."""

    def __enter__(self) -> RemoteExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ servers

    def _add(self, url: str) -> Server:
        url = url.rstrip("/")
        return self.servers.setdefault(url, Server(url))

    def discover(self) -> None:
        """Add the servers announced in the rendezvous directory; forget announced servers that
        left it (drained) unless they still answer."""
        if self.rendezvous is None:
            return
        announced = set()
        for entry in sorted(self.rendezvous.glob("server-*.json")):
            try:
                announced.add(self._add(str(json.loads(entry.read_text())["url"])).url)
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being replaced, or removed under us
        configured = {u.rstrip("/") for u in self.cfg.endpoints}
        for url, s in list(self.servers.items()):
            if url not in announced | configured and not s.healthy and not s.requests:
                del self.servers[url]

    def evict(self, server: Server, why: str) -> None:
        if server.healthy:
            self.stats.evictions += 1
            log.warning("executor farm: %s evicted (%s)", server.url, why)
        server.healthy = False
        server.failures += 1
        server.last_error = why
        server.retry_at = time.monotonic() + _backoff(self.cfg, server.failures, self._rng)

    def admit(self, server: Server, info: dict[str, object]) -> None:
        if not server.healthy and server.failures:
            self.stats.readmissions += 1
            log.info("executor farm: %s re-admitted (its health check passed)", server.url)
        workers, max_jobs = info.get("workers"), info.get("max_jobs")
        server.workers = workers if isinstance(workers, int) and workers > 0 else server.workers
        server.max_jobs = max_jobs if isinstance(max_jobs, int) and max_jobs > 0 else 4096
        server.healthy, server.failures, server.last_error = True, 0, ""


class _Call:
    """One ``run``: its queue of requests, the requests and probes in flight, its deadline."""

    def __init__(self, farm: RemoteExecutor, jobs: list[Job]) -> None:
        self.farm, self.cfg, self.jobs = farm, farm.cfg, jobs
        self.results: list[ExecResult | None] = [None] * len(jobs)
        self.queue: deque[_Chunk] = deque()
        self.running: dict[asyncio.Task[list[ExecResult]], tuple[_Chunk, Server]] = {}
        self.probes: dict[asyncio.Task[dict[str, object]], Server] = {}
        self.start = self.progress = time.monotonic()
        self.discovered = 0.0
        self.requests = self.retried = 0

    async def run(self) -> list[ExecResult]:
        self.farm.discover()
        self.discovered = time.monotonic()
        self.queue.extend(self._chunks(list(range(len(self.jobs)))))
        auth = {"Authorization": f"Bearer {self.farm.token}"}
        async with aiohttp.ClientSession(headers=auth) as self.session:
            try:
                while self.queue or self.running:
                    self._rediscover()
                    self._probe_due()
                    self._dispatch()
                    self._check_deadline()
                    await self._wait()
            finally:
                for task in [*self.running, *self.probes]:
                    task.cancel()
                await asyncio.gather(*self.running, *self.probes, return_exceptions=True)
        self.farm.stats.jobs += len(self.jobs)
        log.info("executor farm: %d jobs answered by %d servers in %.2f s (%d requests, "
                 "%d retried)", len(self.jobs), sum(s.healthy for s in self.farm.servers.values()),
                 time.monotonic() - self.start, self.requests, self.retried)  # fmt: skip
        return [r for r in self.results if r is not None]

    # ------------------------------------------------------------------ planning

    def _chunks(self, slots: list[int]) -> list[_Chunk]:
        """About two rounds of requests over the servers known now, so that a faster server
        takes more of them and a lost request costs little; none smaller than
        ``farm_min_jobs_per_request`` or larger than any server takes."""
        servers = max(1, len(self.farm.servers))
        per = math.ceil(len(slots) / (2 * self.cfg.farm_requests_per_server * servers))
        limit = min([self.cfg.farm_max_jobs_per_request,
                     *(s.max_jobs for s in self.farm.servers.values())])  # fmt: skip
        size = max(1, min(max(per, self.cfg.farm_min_jobs_per_request), limit))
        return [_Chunk(slots[i : i + size]) for i in range(0, len(slots), size)]

    def _in_flight(self) -> int:
        return sum(len(chunk.slots) for chunk, _ in self.running.values())

    def _pick(self, chunk: _Chunk) -> Server | None:
        free = [s for s in self.farm.servers.values()
                if s.healthy and s.requests < self.cfg.farm_requests_per_server]  # fmt: skip
        if not free:
            return None
        # A retried request prefers another server than the one that just failed it.
        return min(free, key=lambda s: (s.url == chunk.last_server, s.load, s.url))

    def _dispatch(self) -> None:
        now = time.monotonic()
        for chunk in list(self.queue):
            if chunk.ready_at > now:
                continue
            inflight = self._in_flight()
            if inflight and inflight + len(chunk.slots) > self.cfg.farm_max_inflight:
                return
            server = self._pick(chunk)
            if server is None:
                return
            self.queue.remove(chunk)
            server.requests += 1
            server.jobs += len(chunk.slots)
            self.farm.stats.requests += 1
            self.requests += 1
            task = asyncio.create_task(self._post(server, chunk))
            self.running[task] = (chunk, server)

    def _rediscover(self) -> None:
        if time.monotonic() - self.discovered > _DISCOVER_EVERY_S:
            self.farm.discover()
            self.discovered = time.monotonic()

    def _probe_due(self) -> None:
        now = time.monotonic()
        for s in self.farm.servers.values():
            if not s.healthy and not s.probing and s.retry_at <= now:
                s.probing = True
                self.probes[asyncio.create_task(self._probe(s))] = s

    def _check_deadline(self) -> None:
        waited = time.monotonic() - self.progress
        if self.running or waited <= self.cfg.farm_deadline_s:
            return
        servers = self.farm.servers.values()
        states = "; ".join(f"{s.url}: {s.last_error}" for s in servers)
        where = f"{len(servers)} servers: {states}" if servers else self._nowhere()
        raise ExecutorError(
            f"executor farm: no server answered for {waited:.0f} s "
            f"(executor.farm_deadline_s={self.cfg.farm_deadline_s:g}; {where})"
        )

    def _nowhere(self) -> str:
        rendezvous = [str(self.farm.rendezvous)] if self.farm.rendezvous else []
        where = [*self.cfg.endpoints, *rendezvous]
        return f"no server announced in {', '.join(where)}"

    # ------------------------------------------------------------------ waiting

    async def _wait(self) -> None:
        tasks: list[asyncio.Task[Any]] = [*self.running, *self.probes]
        now = time.monotonic()
        wakeups = [c.ready_at for c in self.queue if c.ready_at > now]
        wakeups += [s.retry_at for s in self.farm.servers.values() if not s.healthy]
        timeout = min([1.0, *(max(0.01, t - now) for t in wakeups)])
        if not tasks:
            await asyncio.sleep(timeout)
            return
        done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task in self.probes:
                self._probed(task)
            else:
                self._answered(task)

    def _probed(self, task: asyncio.Task[dict[str, object]]) -> None:
        server = self.probes.pop(task)
        server.probing = False
        try:
            self.farm.admit(server, task.result())
        except _Infra as e:
            self.farm.evict(server, str(e))

    def _answered(self, task: asyncio.Task[list[ExecResult]]) -> None:
        chunk, server = self.running.pop(task)
        server.requests -= 1
        server.jobs -= len(chunk.slots)
        try:
            results = task.result()
        except _Infra as e:
            self.farm.stats.infra_failures += 1
            self.farm.evict(server, str(e))
            self._retry(chunk, server)
            return
        except _TooLarge as e:
            if len(chunk.slots) == 1:
                raise ExecutorError(f"executor farm: {server.url} refused one job: {e}") from None
            half = len(chunk.slots) // 2
            self.queue.extendleft([_Chunk(chunk.slots[half:]), _Chunk(chunk.slots[:half])])
            server.max_jobs = max(1, min(server.max_jobs, half))
            return
        for slot, result in zip(chunk.slots, results, strict=True):
            assert self.results[slot] is None, "a job's verdict arrived twice"
            self.results[slot] = result
            self.farm.stats.verdicts[result.id] += 1
        self.progress = time.monotonic()

    def _retry(self, chunk: _Chunk, server: Server) -> None:
        chunk.attempts += 1
        chunk.last_server = server.url
        chunk.ready_at = time.monotonic() + _backoff(self.cfg, chunk.attempts, self.farm._rng)
        self.farm.stats.retries += 1
        self.retried += 1
        log.warning("executor farm: %d jobs re-queued after %s failed (attempt %d)",
                    len(chunk.slots), server.url, chunk.attempts)  # fmt: skip
        self.queue.appendleft(chunk)

    # ------------------------------------------------------------------ HTTP

    def _timeout(self, jobs: list[Job], server: Server) -> float:
        """The jobs' budget on this server, for each request it may run before this one."""
        budgets = [_budget(j) for j in jobs]
        one = max(budgets) + sum(budgets) / server.workers
        return self.cfg.farm_margin_s + self.cfg.farm_requests_per_server * one

    async def _post(self, server: Server, chunk: _Chunk) -> list[ExecResult]:
        jobs = [self.jobs[i] for i in chunk.slots]
        body = json.dumps(wire.jobs_to_body(jobs)).encode()
        timeout = self._timeout(jobs, server)
        try:
            async with self.session.post(
                server.url + wire.RUN_PATH, data=body, timeout=aiohttp.ClientTimeout(total=timeout),
                headers={"Content-Type": "application/json"},
            ) as resp:  # fmt: skip
                answer = await resp.read()
        except TimeoutError:
            raise _Infra(f"no answer within {timeout:.0f} s") from None
        except aiohttp.ClientError as e:
            raise _Infra(f"{type(e).__name__}: {e}") from None
        line = answer.decode(errors="replace").strip()[:300]
        if resp.status == 413:
            raise _TooLarge(line)
        if resp.status in (400, 401, 403):
            raise ExecutorError(f"executor farm: {server.url} refused the request: "
                                f"HTTP {resp.status}: {line}")  # fmt: skip
        if resp.status != 200:
            raise _Infra(f"HTTP {resp.status}: {line}")
        try:
            results = wire.results_from_body(wire.loads(answer))
        except wire.WireError as e:
            raise _Infra(f"garbled answer: {e}") from None
        if [r.id for r in results] != [j.id for j in jobs]:
            raise _Infra(f"answered {len(results)} results for {len(jobs)} other jobs")
        return results

    async def _probe(self, server: Server) -> dict[str, object]:
        try:
            async with self.session.get(
                server.url + "/healthz", timeout=aiohttp.ClientTimeout(total=_PROBE_TIMEOUT_S)
            ) as resp:
                answer = await resp.read()
        except TimeoutError:
            raise _Infra(f"health check: no answer within {_PROBE_TIMEOUT_S:.0f} s") from None
        except aiohttp.ClientError as e:
            raise _Infra(f"health check: {type(e).__name__}: {e}") from None
        try:
            info = json.loads(answer)
        except ValueError:
            info = None
        if resp.status != 200 or not isinstance(info, dict) or info.get("status") != "ok":
            detail = (
                info.get("status")
                if isinstance(info, dict)
                else answer[:100].decode(errors="replace")
            )
            raise _Infra(f"health check: HTTP {resp.status} {detail}")
        return info


def open_executor(
    cfg: ExecutorConfig, base_dir: str | Path = "."
) -> SandboxExecutor | RemoteExecutor:
    """The farm when the config names one (``executor.endpoints`` / ``rendezvous``), else a
    local pool; either is a context manager. ``base_dir``: where relative farm paths are."""
    if cfg.farm:
        return RemoteExecutor(cfg, base_dir)
    return SandboxExecutor(cfg)
