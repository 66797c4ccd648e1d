"""``azr executor serve``: one node's sandboxed pool behind HTTP, a member of the executor farm.

aiohttp serves (an asyncio server and client in one maintained package: the trainer's
``RemoteExecutor`` uses its client), prometheus_client formats ``/metrics``. The pool is the
local ``SandboxExecutor``, unchanged: same isolation, same results.

* ``POST /v1/run`` (``Authorization: Bearer <token>``): ``{"jobs": [Job fields...]}`` ->
  ``{"results": [ExecResult fields...]}`` in job order. Refused: 401 without the token, 413 for
  a body or a job count over the limits, 400 (one line) for anything malformed, 503 while
  draining or when the pool cannot run.
* ``GET /healthz``: 200 ``{"status": "ok", "workers": N, ...}``; 503 while draining.
* ``GET /metrics``: Prometheus text: jobs by kind and status, request and job latency
  histograms, requests by status code, queue depth, busy workers.

``/healthz`` and ``/metrics`` need no token: they reveal counts, run nothing, and monitoring
scrapes them. Requests that arrive while the pool is busy queue and run together as the next
batch, so the pool never waits for a round trip. SIGTERM (or SIGINT) drains: new work is
refused, the queued and running batches finish and are answered, the server leaves the
rendezvous directory, writes its final metrics there and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from megatron_azr.azr.protocols import ExecResult, Job
from megatron_azr.executor import wire
from megatron_azr.executor.pool import SandboxExecutor

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Jobs merged into one pool run at most (queued requests beyond it wait for the next run).
_MERGE_JOBS = 8192


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port (announced in the rendezvous file and on stdout)
    rendezvous: str = ""  # directory where the server announces itself ("" = nowhere)
    advertise: str = ""  # host name clients use ("" = SLURMD_NODENAME, else this host's name)
    max_jobs: int = 4096  # per request
    max_request_mb: int = 64


class FarmMetrics:
    def __init__(self, pool: SandboxExecutor) -> None:
        disable_created_metrics()  # the *_created series only double what a scrape returns
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs = Counter("azr_farm_jobs", "Jobs answered, by kind and status",
                            ["kind", "status"], registry=r)  # fmt: skip
        self.requests = Counter("azr_farm_requests", "Requests to /v1/run, by HTTP status",
                                ["code"], registry=r)  # fmt: skip
        self.request_seconds = Histogram(
            "azr_farm_request_seconds", "Time from a /v1/run request's arrival to its answer",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.job_seconds = Histogram("azr_farm_job_seconds", "CPU-side run time of each job",
                                     buckets=_LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.queued = Gauge("azr_farm_queued_jobs", "Jobs accepted, waiting for the pool",
                            registry=r)  # fmt: skip
        self.running = Gauge("azr_farm_running_jobs", "Jobs in the pool's current run",
                             registry=r)  # fmt: skip
        busy = Gauge("azr_farm_busy_workers", "Workers with tasks in flight", registry=r)
        busy.set_function(lambda: float(pool.busy_workers()))
        workers = Gauge("azr_farm_workers", "Sandboxed workers of this server", registry=r)
        workers.set(len(pool.workers))

    def text(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class _Request:
    jobs: list[Job]
    done: asyncio.Future[list[ExecResult]]


@dataclass
class Batcher:
    """Runs requests on the pool one batch at a time, merging those that queued meanwhile."""

    pool: SandboxExecutor
    metrics: FarmMetrics
    queue: list[_Request] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    busy: bool = False
    thread: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="azr-pool")
    )

    def submit(self, jobs: list[Job]) -> asyncio.Future[list[ExecResult]]:
        done: asyncio.Future[list[ExecResult]] = asyncio.get_running_loop().create_future()
        self.queue.append(_Request(jobs, done))
        self.metrics.queued.inc(len(jobs))
        self.wake.set()
        return done

    @property
    def idle(self) -> bool:
        return not self.queue and not self.busy

    async def serve(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                await self._run_batch(self._take())

    def _take(self) -> list[_Request]:
        taken: list[_Request] = []
        n = 0
        while self.queue and (not taken or n + len(self.queue[0].jobs) <= _MERGE_JOBS):
            req = self.queue.pop(0)
            taken.append(req)
            n += len(req.jobs)
        return taken

    async def _run_batch(self, requests: list[_Request]) -> None:
        jobs = [j for r in requests for j in r.jobs]
        self.busy = True
        self.metrics.queued.dec(len(jobs))
        self.metrics.running.set(len(jobs))
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self.thread, self.pool.run, jobs
            )
        except Exception as e:  # the pool itself failed (workers do not start): not a verdict
            log.error("pool run failed: %s", e)
            for r in requests:
                if not r.done.done():
                    r.done.set_exception(e)
            return
        finally:
            self.busy = False
            self.metrics.running.set(0)
        for job, result in zip(jobs, results, strict=True):
            self.metrics.jobs.labels(job.kind, result.status).inc()
            self.metrics.job_seconds.observe(result.time_s)
        start = 0
        for r in requests:
            if not r.done.done():  # the client may have gone away
                r.done.set_result(results[start : start + len(r.jobs)])
            start += len(r.jobs)


class FarmServer:
    """The aiohttp application around one pool (``start``/``drain``; ``serve`` runs both)."""

    def __init__(self, pool: SandboxExecutor, token: str, opts: ServeOptions) -> None:
        self.pool, self.opts = pool, opts
        self._auth = f"Bearer {token}".encode()
        self.metrics = FarmMetrics(pool)
        self.batcher = Batcher(pool, self.metrics)
        self.draining = False
        self.url = ""
        self.entry: Path | None = None
        self.max_bytes = opts.max_request_mb << 20
        # One byte over the limit is enough for aiohttp to refuse a body without Content-Length.
        self.app = web.Application(client_max_size=self.max_bytes)
        self.app.add_routes([
            web.post(wire.RUN_PATH, self.handle_run),
            web.get("/healthz", self.handle_health),
            web.get("/metrics", self.handle_metrics),
        ])  # fmt: skip
        self.runner = web.AppRunner(self.app, access_log=None)
        self._batcher_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ handlers

    def _answer(self, code: int, text: str, **headers: str) -> web.Response:
        self.metrics.requests.labels(str(code)).inc()
        return web.Response(status=code, text=text.replace("\n", " ") + "\n", headers=headers)

    async def handle_run(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, self._auth):
            return self._answer(401, "missing or wrong bearer token", **{
                "WWW-Authenticate": "Bearer"})  # fmt: skip
        if self.draining:
            return self._answer(503, "draining: this server takes no new work")
        if request.content_length is not None and request.content_length > self.max_bytes:
            return self._too_large_body(request.content_length)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large_body(None)
        try:
            jobs = wire.jobs_from_body(wire.loads(body))
        except wire.WireError as e:
            return self._answer(400, str(e))
        if len(jobs) > self.opts.max_jobs:
            return self._answer(413, f"{len(jobs)} jobs in one request; the limit is "
                                f"{self.opts.max_jobs} (--max-jobs)")  # fmt: skip
        try:
            results = await self.batcher.submit(jobs)
        except Exception as e:
            return self._answer(503, f"the pool failed: {e}")
        self.metrics.requests.labels("200").inc()
        self.metrics.request_seconds.observe(time.perf_counter() - t0)
        return web.json_response(wire.results_to_body(results))

    def _too_large_body(self, size: int | None) -> web.Response:
        got = f"a body of {size} bytes" if size is not None else "a larger body"
        return self._answer(413, f"{got}; the limit is {self.opts.max_request_mb} MiB "
                            "(--max-request-mb)")  # fmt: skip

    async def handle_health(self, request: web.Request) -> web.Response:
        status = "draining" if self.draining else "ok"
        info = {"status": status, "workers": len(self.pool.workers), "max_jobs":
                self.opts.max_jobs, "queued_jobs": sum(len(r.jobs) for r in self.batcher.queue),
                "busy_workers": self.pool.busy_workers()}  # fmt: skip
        return web.json_response(info, status=503 if self.draining else 200)

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.text(), content_type="text/plain", charset="utf-8")

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> str:
        self._batcher_task = asyncio.create_task(self.batcher.serve())
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.opts.host, self.opts.port, shutdown_timeout=30)
        await site.start()
        port = self.runner.addresses[0][1]
        host = self.opts.advertise or os.environ.get("SLURMD_NODENAME") or socket.gethostname()
        self.url = f"http://{host}:{port}"
        if self.opts.rendezvous:
            self.entry = announce(Path(self.opts.rendezvous), self.url)
        return self.url

    async def drain(self) -> None:
        """Refuse new work, finish and answer what was accepted, then stop listening."""
        self.draining = True
        if self.entry is not None:
            self.entry.unlink(missing_ok=True)
        while not self.batcher.idle:
            await asyncio.sleep(0.05)
        if self.entry is not None:
            final = self.entry.with_name(self.entry.stem.replace("server-", "metrics-") + ".prom")
            final.write_bytes(self.metrics.text())
        await self.runner.cleanup()  # waits for the handlers still writing their answers
        if self._batcher_task is not None:
            self._batcher_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._batcher_task
        self.batcher.thread.shutdown()


def announce(directory: Path, url: str) -> Path:
    """Write ``server-<host>-<port>.json`` (atomically) for clients that discover the farm."""
    directory.mkdir(parents=True, exist_ok=True)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    entry = directory / f"server-{host}-{port}.json"
    tmp = entry.with_suffix(".tmp")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid(), "started": time.time()}))
    tmp.replace(entry)
    return entry


async def _serve(pool: SandboxExecutor, token: str, opts: ServeOptions) -> None:
    server = FarmServer(pool, token, opts)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    url = await server.start()
    print(f"azr executor serve: {url}{wire.RUN_PATH} ({len(pool.workers)} workers, sandbox "
          f"{pool.spec.mode}); SIGTERM drains", flush=True)  # fmt: skip
    await stop.wait()
    log.info("draining: finishing %d queued jobs", sum(len(r.jobs) for r in server.batcher.queue))
    await server.drain()
    print("azr executor serve: drained, stopped", flush=True)


def serve(pool: SandboxExecutor, token: str, opts: ServeOptions) -> None:
    """Serve ``pool`` until SIGTERM/SIGINT, then drain (the caller closes the pool)."""
    asyncio.run(_serve(pool, token, opts))
