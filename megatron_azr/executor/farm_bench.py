"""What HTTP costs: CRUXEval through the local pool, one farm server and two, in one run.

The servers are real ``azr executor serve`` processes on this machine (127.0.0.1), each with as
many workers as the local pool; the client is ``RemoteExecutor``. Each call of ``--batch`` jobs
goes to the three sides in turn (rotating order), ``--rounds`` times over the programs, so that
load from other tenants falls on all of them alike; throughput is jobs over the summed time of
a side's calls, p50/p99 come from jobs sent one at a time, interleaved the same way. On one
machine two servers share its cores, so they show the client's splitting and its cost, not
scaling (see the README for nodes). The last line is ``ratio: <one-server throughput / local
throughput>`` on the first workload.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from megatron_azr.executor import bench, wire
from megatron_azr.executor.config import ExecutorConfig

_ROOT = Path(__file__).resolve().parents[2]


class LocalServer:
    """``azr executor serve`` as a subprocess on 127.0.0.1 (benchmarks and tests).
    ``uid_base`` keeps its job uids apart from other pools on this host."""

    def __init__(self, token_file: Path, uid_base: int, *args: str, port: int = 0,
                 workers: int = 2) -> None:  # fmt: skip
        self.token_file, self.uid_base, self.args = token_file, uid_base, args
        self.port, self.workers = port, workers
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None
        self.output = ""

    def start(self, timeout: float = 120) -> LocalServer:
        config = [f"executor.workers={self.workers}", f"executor.job_uid_base={self.uid_base}"]
        cmd = [sys.executable, "-m", "megatron_azr.cli", "executor", "serve",
               "--port", str(self.port), "--advertise", "127.0.0.1",
               "--token-file", str(self.token_file), *self.args, *config]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(_ROOT), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, cwd=_ROOT)  # fmt: skip
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.proc.stdout], [], [], 1.0)[0]:
                line = self.proc.stdout.readline()
                self.output += line
                if line.startswith("azr executor serve: http"):
                    self.url = line.split()[3].removesuffix(wire.RUN_PATH)
                    self.port = int(self.url.rsplit(":", 1)[1])
                    return self
                if not line and self.proc.poll() is not None:
                    break
        self.kill()
        raise RuntimeError(f"the server did not start:\n{self.output}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 60) -> int:
        """Wait for the exit; the rest of its output goes to ``output``."""
        assert self.proc is not None
        out, _ = self.proc.communicate(timeout=timeout)
        self.output += out
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.finish()

    def stop(self) -> None:
        """SIGTERM (a drain), SIGKILL if it does not end."""
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.finish()
            except subprocess.TimeoutExpired:
                self.kill()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=str(bench.DEFAULT_DATA), help="CRUXEval JSONL")
    p.add_argument("--limit", type=int, default=0, help="use only the first N programs")
    p.add_argument("--batch", type=int, default=256,
                   help="jobs per executor call (~ one call of a 14B-recipe AZR step)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=3, help="alternate the sides N times")
    p.add_argument("--latency-samples", type=int, default=200, help="jobs timed one at a time")
    p.add_argument("--workloads", default="run,validate", help="run, validate or both")
    p.add_argument("--workers", type=int, default=2, help="workers of the pool and each server")


def _sides(args: argparse.Namespace, cfg: ExecutorConfig, token: Path) -> tuple[Any, ...]:
    from megatron_azr.executor.pool import SandboxExecutor
    from megatron_azr.executor.remote import RemoteExecutor

    local = SandboxExecutor(dataclasses.replace(cfg, workers=args.workers))
    servers = [LocalServer(token, 991000 + 1000 * k, workers=args.workers).start()
               for k in range(2)]  # fmt: skip

    def farm(n: int) -> RemoteExecutor:
        urls = [s.url for s in servers[:n]]
        return RemoteExecutor(dataclasses.replace(cfg, endpoints=urls, token_file=str(token)))

    return local, servers, {"local pool": local, "one server": farm(1), "two servers": farm(2)}


def run(args: argparse.Namespace, cfg: ExecutorConfig, banned: Sequence[str]) -> int:
    with open(args.data) as fh:
        programs = [json.loads(line) for line in fh if line.strip()][: args.limit or None]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    with tempfile.TemporaryDirectory(prefix="azr-farm-bench-") as tmp:
        token = Path(tmp) / "token"
        wire.write_token(token)
        local, servers, sides = _sides(args, cfg, token)
        try:
            rows = _measure(args, cfg, banned, programs, workloads, sides)
        finally:
            local.close()
            for s in servers:
                s.stop()
    print(f"machine: {bench.machine()}; load average after: {os.getloadavg()[0]:.2f}")
    print(f"{len(programs)} CRUXEval programs, calls of {args.batch} jobs, {args.workers} "
          f"workers per pool and server, {max(1, args.rounds)} interleaved rounds")  # fmt: skip
    print("| executor | workload | programs/s | p50 ms | p99 ms | output == recorded |")
    print("|---|---|---:|---:|---:|---:|")
    for name, workload, tput, p50, p99, same in rows:
        print(f"| {name} | {workload} | {tput:.0f} | {p50:.2f} | {p99:.2f} | {same} |")
    by = {(name, w): tput for name, w, tput, *_ in rows}
    for w in workloads:
        print(
            f"{w}: one server / local = {by[('one server', w)] / by[('local pool', w)]:.3f}, "
            f"two servers / local = {by[('two servers', w)] / by[('local pool', w)]:.3f}"
        )
    primary = workloads[0]
    print(f"ratio: {by[('one server', primary)] / by[('local pool', primary)]:.3f}")
    return 0


def _measure(
    args: argparse.Namespace, cfg: ExecutorConfig, banned: Sequence[str],
    programs: list[dict[str, str]], workloads: list[str], sides: dict[str, Any],
) -> list[tuple[str, str, float, float, float, int]]:  # fmt: skip
    """Every call (and every latency probe) goes to each side in turn, the order rotating, so
    that load from other tenants, which comes and goes within seconds, falls on all sides."""
    rows = []
    names = list(sides)
    for workload in workloads:
        jobs = bench._jobs(programs, cfg, banned if workload == "validate" else None)
        calls = [jobs[i : i + args.batch] for i in range(0, len(jobs), args.batch)]
        spent = dict.fromkeys(names, 0.0)
        outputs: dict[str, list[str]] = {n: [] for n in names}
        for r in range(max(1, args.rounds)):
            for i, call in enumerate(calls):
                for name in names[(i + r) % 3 :] + names[: (i + r) % 3]:
                    t = time.perf_counter()
                    results = sides[name].run(call)
                    spent[name] += time.perf_counter() - t
                    if r == 0:
                        outputs[name] += [x.outputs[0] if x.ok and x.outputs else ""
                                          for x in results]  # fmt: skip
        latencies: dict[str, list[float]] = {n: [] for n in names}
        for i, job in enumerate(jobs[: args.latency_samples]):
            for name in names[i % 3 :] + names[: i % 3]:
                t = time.perf_counter()
                sides[name].run([job])
                latencies[name].append(time.perf_counter() - t)
        for name in names:
            tput = len(jobs) * max(1, args.rounds) / spent[name]
            same = sum(o == rec["output"] for o, rec in zip(outputs[name], programs, strict=True))
            lats = latencies[name]
            rows.append((name, workload, tput, bench._pct(lats, 50), bench._pct(lats, 99), same))
            print(f"{name} {workload}: {tput:.0f} programs/s", flush=True)
    return rows


def main() -> int:
    from megatron_azr.azr.config import AZRConfig

    p = argparse.ArgumentParser(prog="farm_bench", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(), ExecutorConfig(), AZRConfig().banned_imports)
