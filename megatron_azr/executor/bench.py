"""Executor throughput and latency on CRUXEval, against the original AZR executor's design.

The baseline is built the way the original works (spec §10): one pebble ``ProcessPool`` worker,
recreated per batch; each program is one ``pool.map`` call (the original's ``apply`` ->
``batch_apply([code])``) whose worker ``exec``s all but the last line of a template and ``eval``s
the last one, under a signal timeout, then ``str``/``pickle`` checks and the 400-char
truncation. No isolation at all. The project side is the sandboxed pool with every layer this
machine supports. Both run the same 800 programs on the same cores in the same process;
throughput uses batches (the trainer's pattern), latency one job at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import re
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from megatron_azr.azr.config import AZRConfig
from megatron_azr.azr.protocols import Job, JobKind
from megatron_azr.executor.config import ExecutorConfig
from megatron_azr.executor.runtime.harness import find_banned_imports, truncate

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "data" / "benchmarks" / "cruxeval.jsonl"
RUN_TEMPLATE = "{code}\nrepr(f({inputs}))"
CHECK_DETERMINISM_TEMPLATE = (
    "{code}\nreturns = f({inputs})\nif returns != f({inputs}):\n"
    "    raise Exception('Non-deterministic code')\nrepr(returns)"
)


# ------------------------------------------------------------------------- the baseline


class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout()


def _timed(fn: Callable[[str], Any], arg: str, seconds: float) -> Any:
    """What ``timeout_decorator.timeout(seconds)`` does with signals."""
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(arg)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def original_execute(lines: list[str], timeout_length: float) -> tuple[Any, str]:
    """The original ``PythonExecutor.execute`` (auto mode) in a pebble worker."""
    namespace: dict[str, Any] = {}

    def exec_code(piece: str) -> None:
        if re.search(r"(\s|^)?input\(", piece):
            raise RuntimeError()
        exec(piece, namespace)

    try:
        _timed(exec_code, "\n".join(lines[:-1]), timeout_length)
        result = _timed(lambda expr: eval(expr, namespace), lines[-1], timeout_length)
        report = "Done"
        str(result)
        pickle.dumps(result)
    except BaseException:
        result = ""
        report = traceback.format_exc().split("\n")[-2]
    return result, report


def original_apply(pool: Any, code: str, timeout_length: float) -> tuple[str, str]:
    """``apply(code)`` = ``batch_apply([code])``: one pool.map round trip per program."""
    from concurrent.futures import TimeoutError as FutureTimeout
    from functools import partial

    fn = partial(original_execute, timeout_length=timeout_length)
    out: list[tuple[Any, str]] = []
    iterator = pool.map(fn, [code.strip().split("\n")], timeout=timeout_length).result()
    while True:
        try:
            out.append(next(iterator))
        except StopIteration:
            break
        except FutureTimeout:
            out.append(("", "Timeout Error"))
        except Exception as error:
            out.append(("", f"Error: {error}"))
    res, report = out[0]
    return truncate(str(res)), truncate(str(report))


def run_baseline(
    programs: list[dict[str, str]], batch: int, timeout: float, banned: Sequence[str] | None
) -> tuple[list[str], list[float], float]:
    """``banned``: the import ban list of the validate workload (None: the run workload)."""
    try:
        from pebble import ProcessPool
    except ImportError as e:
        raise SystemExit(
            "the baseline needs pebble (the original executor's pool): pip install pebble "
            "(it is in the dev/test extras)"
        ) from e
    template = CHECK_DETERMINISM_TEMPLATE if banned is not None else RUN_TEMPLATE
    outputs, latencies = [], []
    start = time.perf_counter()
    for i in range(0, len(programs), batch):
        with ProcessPool(max_workers=1) as pool:  # recreated per batch, as the original does
            for rec in programs[i : i + batch]:
                t = time.perf_counter()
                # check_all, in-process
                if banned is not None and find_banned_imports(rec["code"], list(banned)):
                    outputs.append("")
                    latencies.append(time.perf_counter() - t)
                    continue
                out, report = original_apply(
                    pool, template.format(code=rec["code"], inputs=rec["input"]), timeout
                )
                latencies.append(time.perf_counter() - t)
                outputs.append(out if "error" not in report.lower() else "")
    return outputs, latencies, time.perf_counter() - start


# ------------------------------------------------------------------------- the project


def _jobs(
    programs: list[dict[str, str]], cfg: ExecutorConfig, banned: Sequence[str] | None
) -> list[Job]:
    kind: JobKind = "validate" if banned is not None else "run"
    return [
        Job(
            rec.get("id", str(i)),
            kind,
            rec["code"],
            (rec["input"],),
            banned_imports=tuple(banned or ()),
            timeout_s=cfg.timeout_s,
        )
        for i, rec in enumerate(programs)
    ]


def run_project(
    ex: Any, programs: list[dict[str, str]], batch: int, cfg: ExecutorConfig,
    banned: Sequence[str] | None, latency_samples: int,
) -> tuple[list[str], list[float], float]:  # fmt: skip
    jobs = _jobs(programs, cfg, banned)
    outputs: list[str] = []
    start = time.perf_counter()
    for i in range(0, len(jobs), batch):
        outputs += [r.outputs[0] if r.ok and r.outputs else "" for r in ex.run(jobs[i : i + batch])]
    elapsed = time.perf_counter() - start
    latencies = []
    for job in jobs[:latency_samples]:
        t = time.perf_counter()
        ex.run([job])
        latencies.append(time.perf_counter() - t)
    return outputs, latencies, elapsed


# ------------------------------------------------------------------------- the floor

# The least a fresh process per job can cost: fork a bare ``python -S``, compile and run the
# program, send its repr back over a pipe, reap. No isolation at all. One such loop per CPU
# bounds what any fork-per-job executor can reach on this machine.
_FORK_FLOOR = """
import json, os, sys, time
programs = json.loads(sys.stdin.read())
start = time.perf_counter()
for p in programs:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            g = {}
            exec(compile(p["code"], "<p>", "exec"), g)
            out = repr(eval(compile("f(" + p["input"] + ")", "<i>", "eval"), g))
        except BaseException:
            out = ""
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    os.read(r, 1 << 16)
    os.close(r)
    os.waitpid(pid, 0)
print(len(programs) / (time.perf_counter() - start))
"""


def fork_floor(programs: list[dict[str, str]]) -> float:
    """Programs/s of the bare fork-per-job loop above, one process per CPU, summed."""
    import subprocess

    payload = json.dumps([{"code": p["code"], "input": p["input"]} for p in programs])
    procs = [
        subprocess.Popen(
            [sys.executable, "-S", "-c", _FORK_FLOOR],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(os.cpu_count() or 1)
    ]
    return sum(float(proc.communicate(payload, timeout=600)[0]) for proc in procs)


# ------------------------------------------------------------------------- report


def _pct(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] * 1e3 if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1e3


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    model = model or platform.processor()
    return f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}"


def main() -> int:
    p = argparse.ArgumentParser(prog="executor_bench", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(), ExecutorConfig(), AZRConfig().banned_imports)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=str(DEFAULT_DATA), help="CRUXEval JSONL (code/input/output)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N programs")
    p.add_argument("--batch", type=int, default=64, help="jobs per request (an AZR sub-batch)")
    p.add_argument(
        "--rounds", type=int, default=3, help="alternate the sides N times; report medians"
    )
    p.add_argument("--latency-samples", type=int, default=200, help="jobs timed one at a time")
    p.add_argument("--workloads", default="run,validate", help="run, validate or both")


def run(args: argparse.Namespace, cfg: ExecutorConfig, banned: Sequence[str]) -> int:
    """Both sides on every workload; ``banned``: the import ban list validation applies."""
    from megatron_azr.executor.pool import SandboxExecutor

    with open(args.data) as fh:
        programs = [json.loads(line) for line in fh if line.strip()]
    if args.limit:
        programs = programs[: args.limit]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    rows = []
    t = time.perf_counter()
    with SandboxExecutor(cfg) as ex:
        startup = time.perf_counter() - t
        layers = ", ".join(name for name, detail in ex.layers() if "unavailable" not in detail)
        print(f"machine: {machine()}; load average before: {os.getloadavg()[0]:.2f}", flush=True)
        print(f"sandbox: {ex.spec.mode}, {len(ex.workers)} workers; layers: {layers}")
        print(f"sandboxed pool start-up (once): {startup * 1e3:.0f} ms", flush=True)
        for workload in workloads:
            ban = banned if workload == "validate" else None
            sides: dict[str, tuple[list[float], list[float], list[str]]] = {
                "original (pebble, 1 worker, exec)": ([], [], []),
                "sandboxed pool": ([], [], []),
            }
            for _ in range(max(1, args.rounds)):
                # Alternating the sides spreads load from other tenants over both.
                for name, (tputs, lats, outs) in sides.items():
                    if name.startswith("original"):
                        o, lat, elapsed = run_baseline(programs, args.batch, cfg.timeout_s, ban)
                    else:
                        o, lat, elapsed = run_project(
                            ex, programs, args.batch, cfg, ban, args.latency_samples
                        )
                    tputs.append(len(programs) / elapsed)
                    lats += lat
                    outs[:] = o
            for name, (tputs, lats, outs) in sides.items():
                same = sum(o == rec["output"] for o, rec in zip(outs, programs, strict=True))
                rows.append((name, workload, statistics.median(tputs), _pct(lats, 50),
                             _pct(lats, 99), same))  # fmt: skip
    print(f"\n{len(programs)} CRUXEval programs, batches of {args.batch}, median of "
          f"{max(1, args.rounds)} alternating rounds; load average after: "
          f"{os.getloadavg()[0]:.2f}")  # fmt: skip
    print("| executor | workload | programs/s | p50 ms | p99 ms | output == recorded |")
    print("|---|---|---:|---:|---:|---:|")
    for name, workload, tput, p50, p99, same in rows:
        print(f"| {name} | {workload} | {tput:.0f} | {p50:.2f} | {p99:.2f} | {same} |")
    floor = fork_floor(programs)
    print(f"\nfloor: a bare fork per job (python -S, compile, exec, pipe; no isolation) on all "
          f"{os.cpu_count()} CPUs: {floor:.0f} programs/s")  # fmt: skip
    by = {(n.startswith("sandboxed"), w): tput for n, w, tput, *_ in rows}
    for w in workloads:
        print(f"{w}: sandboxed / original = {by[(True, w)] / by[(False, w)]:.2f}x")
    primary = workloads[0]
    print(f"ratio: {by[(True, primary)] / by[(False, primary)]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
