"""The executor farm: ``azr executor serve`` servers (real subprocesses, real HTTP) and the
``RemoteExecutor`` that spreads a batch over them.

Answers equal the local pool's; bad requests are refused while the server keeps serving; SIGTERM
drains; a server SIGKILLed in the middle of a batch costs no job its verdict and none gets two;
a restarted server rejoins; with no server the call fails with one line after the deadline.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from executor_helpers import ROOT, azr, job_processes, require_sandbox
from farm_helpers import FarmServer, body, free_port, jobs_counted, verdict, wait_until

from megatron_azr.azr.protocols import ExecResult, Job
from megatron_azr.executor import ExecutorConfig, wire
from megatron_azr.executor.pool import ExecutorError
from megatron_azr.executor.remote import RemoteExecutor, _backoff, open_executor

pytestmark = pytest.mark.sandbox

# Job uids of the servers started here, clear of the session pool's (990000 + worker).
UIDS = (991000, 992000, 993000)


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("farm") / "token"
    wire.write_token(path)
    return path


@pytest.fixture(scope="module")
def server(token_file):
    """One server with small limits: 64 jobs and 1 MiB per request."""
    require_sandbox()
    s = FarmServer(token_file, UIDS[0], "--max-jobs", "64", "--max-request-mb", "1")
    yield s.start()
    s.stop()


def client(token_file: Path, *urls: str, **kw: object) -> RemoteExecutor:
    fast = {"farm_backoff_s": 0.1, "farm_backoff_max_s": 1.0, "farm_min_jobs_per_request": 1}
    cfg = ExecutorConfig(endpoints=list(urls), token_file=str(token_file), **{**fast, **kw})  # type: ignore[arg-type]
    return RemoteExecutor(cfg)


def mixed_jobs() -> list[Job]:
    """Every kind, verdicts of every sort (the same jobs the local pool answers)."""
    return [
        Job("run-ok", "run", "def f(x):\n    return sorted(x)", ("[3, 1, 2]", "'cba'")),
        Job("run-error", "run", "def f(x):\n    return 1 / x", ("0",)),
        Job("run-timeout", "run", "def f(x):\n    while True:\n        pass", ("1",),
            timeout_s=0.5),
        Job("validate-ok", "validate", "def f(x):\n    return x * 2", ("21",),
            banned_imports=("os",)),
        Job("validate-banned", "validate", "import os\ndef f(x):\n    return x", ("1",),
            banned_imports=("os",)),
        Job("deduction", "deduction", "def f(x):\n    return x", ("1",), ("[1, 2]",), "[1, 2]"),
        Job("abduction", "abduction", "def f(a, b):\n    return a + b", (), ("5",), "2, 3"),
        Job("induction", "induction", "def f(x):\n    return x + 1", ("1", "2"), ("2", "4"),
            "def f(x):\n    return x * 2"),
        Job("bad", "run", "def f(x):\n    return x", ()),  # a job the pool calls invalid
    ]  # fmt: skip


def slow_jobs(n: int, tag: str) -> list[Job]:
    program = "import time\ndef f(x):\n    time.sleep(0.05)\n    return [x] * 3"
    return [Job(f"{tag}-{i}", "run", program, (str(i),)) for i in range(n)]


# ------------------------------------------------------------------------------ one server


def test_answers_equal_the_local_pools_and_are_counted(server, token_file, pool):
    jobs = mixed_jobs() * 9  # 81 jobs: more than one request's 64
    before = jobs_counted(server.metrics())
    farm = client(token_file, server.url)
    remote = farm.run(jobs)
    assert [verdict(r) for r in remote] == [verdict(r) for r in pool.run(jobs)]
    assert remote[2].status == "timeout" and remote[4].error_type == "BannedImport"
    assert farm.stats.requests >= 2 and farm.stats.infra_failures == 0
    assert set(farm.stats.verdicts.values()) == {9}  # each of the 9 distinct ids, 9 times
    samples = server.metrics()
    assert jobs_counted(samples) - before == len(jobs)
    assert samples[("azr_farm_jobs_total", (("kind", "run"), ("status", "timeout")))] >= 9
    assert samples[("azr_farm_workers", ())] == 2
    assert samples[("azr_farm_request_seconds_count", ())] >= 2
    status, text = server.get("/healthz")
    assert status == 200 and json.loads(text)["status"] == "ok"


def test_bad_requests_are_refused_and_the_server_keeps_serving(server, token_file):
    token = wire.read_token(token_file)
    one = [{"id": "a", "kind": "run", "program": "def f(x):\n    return x", "inputs": ["1"]}]
    refused = {
        "no token": (server.post(body(one), None), 401),
        "wrong token": (server.post(body(one), token[::-1]), 401),
        "not JSON": (server.post(b"{jobs: [", token), 400),
        "NaN": (server.post(b'{"jobs": [{"timeout_s": NaN}]}', token), 400),
        "no jobs key": (server.post(b'{"work": []}', token), 400),
        "wrong type": (server.post(body([{**one[0], "inputs": "1"}]), token), 400),
        "unknown field": (server.post(body([{**one[0], "shell": "rm -rf /"}]), token), 400),
        "too many jobs": (server.post(body(one * 65), token), 413),
        "too large": (server.post(body([{**one[0], "program": "x" * (2 << 20)}]), token), 413),
    }
    for what, ((status, text), expected) in refused.items():
        assert status == expected, (what, status, text)
        assert text.endswith("\n") and text.count("\n") == 1, (what, text)  # one line
    assert "jobs[0]" in refused["wrong type"][0][1] and "inputs" in refused["wrong type"][0][1]
    assert "shell" in refused["unknown field"][0][1]
    assert "65 jobs" in refused["too many jobs"][0][1]
    status, text = server.post(body(one), token)
    assert status == 200 and json.loads(text)["results"][0]["outputs"] == ["1"]
    codes = {dict(labels)["code"]: v for (name, labels), v in server.metrics().items()
             if name == "azr_farm_requests_total"}  # fmt: skip
    assert codes["401"] >= 2 and codes["400"] >= 5 and codes["413"] >= 2 and codes["200"] >= 1


def test_a_wrong_token_fails_the_call_at_once(server, tmp_path):
    other = tmp_path / "other-token"
    wire.write_token(other)
    t0 = time.monotonic()
    with pytest.raises(ExecutorError, match="HTTP 401"):
        client(other, server.url, farm_deadline_s=600).run(mixed_jobs()[:1])
    assert time.monotonic() - t0 < 30


def test_check_through_the_farm_matches_the_local_check(server, token_file, tmp_path):
    data = tmp_path / "records.jsonl"
    records = [
        {"code": "def f(x):\n    return x * 2", "input": "21", "output": "42"},
        {"code": "def f(x):\n    return x", "input": "1", "output": "2"},
        {"code": "def f(x):\n    raise ValueError(x)", "input": "3"},
        {"input": "1"},
    ]
    data.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    local = azr("check", str(data))
    farm = azr("check", str(data), "--endpoints", server.url, f"executor.token_file={token_file}")

    def lines(done: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
        return [{k: v for k, v in json.loads(x).items() if k != "time_s"}
                for x in done.stdout.splitlines()]  # fmt: skip

    assert farm.returncode == local.returncode
    assert lines(farm) == lines(local) and len(lines(farm)) == 4
    assert farm.stderr.splitlines()[-1] == local.stderr.splitlines()[-1]  # the summary


def test_a_token_file_others_can_read_is_refused(token_file, tmp_path):
    loose = tmp_path / "token"
    loose.write_text(token_file.read_text())
    os.chmod(loose, 0o644)
    done = azr("serve", "--token-file", str(loose), timeout=60)
    assert done.returncode == 2
    expected = f"azr executor serve: token file {loose} is mode 0644; it must be 0600"
    assert done.stderr.strip() == expected


def test_sigterm_drains_what_was_accepted_then_leaves_the_rendezvous(token_file, tmp_path):
    require_sandbox()
    rendezvous = tmp_path / "farm"
    s = FarmServer(token_file, UIDS[1], "--rendezvous", str(rendezvous))
    s.start()
    [entry] = rendezvous.glob("server-*.json")
    assert json.loads(entry.read_text())["url"] == s.url
    token = wire.read_token(token_file)
    jobs = [dataclasses.asdict(j) for j in slow_jobs(20, "drain")]  # ~0.5 s on two workers
    answers: list[tuple[int, str]] = []

    def post() -> None:
        answers.append(s.post(body(jobs), token))

    def gauge(name: str) -> float:
        return s.metrics()[(name, ())]

    running, queued = threading.Thread(target=post), threading.Thread(target=post)
    running.start()
    wait_until(lambda: gauge("azr_farm_running_jobs") > 0, "the first request to run")
    queued.start()
    wait_until(lambda: gauge("azr_farm_queued_jobs") > 0, "the second request to queue")
    s.signal(signal.SIGTERM)  # one request running, one accepted and waiting
    time.sleep(0.1)
    assert s.post(body(jobs), token) == (503, "draining: this server takes no new work\n")
    assert s.get("/healthz")[0] == 503
    assert not entry.exists()
    running.join(60)
    queued.join(60)
    assert s.finish() == 0, s.output
    expected = [[repr([i] * 3)] for i in range(20)]
    for status, text in answers:
        assert status == 200 and [r["outputs"] for r in json.loads(text)["results"]] == expected
    final = (rendezvous / entry.name.replace("server-", "metrics-")).with_suffix(".prom")
    assert 'azr_farm_jobs_total{kind="run",status="ok"} 40.0' in final.read_text()
    assert "drained, stopped" in s.output


# ------------------------------------------------------------------------------ faults


@pytest.fixture
def two_servers(token_file) -> Iterator[list[FarmServer]]:
    """Servers a and b (a test may replace one with a restarted one: all are stopped)."""
    require_sandbox()
    servers = [FarmServer(token_file, UIDS[1]), FarmServer(token_file, UIDS[2])]
    for s in servers:
        s.start()
    yield servers
    for s in servers:
        s.stop()


def in_background(farm: RemoteExecutor, jobs: list[Job]) -> Callable[[], list[ExecResult]]:
    """Start ``farm.run(jobs)`` on a thread; the returned function waits for its results."""
    out: list[list[ExecResult]] = []
    worker = threading.Thread(target=lambda: out.append(farm.run(jobs)))
    worker.start()

    def results() -> list[ExecResult]:
        worker.join(120)
        [done] = out
        return done

    return results


@pytest.mark.slow
def test_a_server_killed_mid_batch_costs_no_verdict_and_rejoins_after_restart(
    token_file, two_servers, pool
):
    a, b = two_servers
    farm = client(token_file, a.url, b.url)
    jobs = slow_jobs(160, "chaos")  # 8 requests of 20 jobs, ~0.5 s each
    results = in_background(farm, jobs)
    # Once a has answered its first request and runs the next one:
    wait_until(
        lambda: jobs_counted(m := a.metrics()) >= 20 and m[("azr_farm_running_jobs", ())] > 0,
        "a server to answer its first request and run the next",
    )
    a.signal(signal.SIGKILL)
    assert [verdict(r) for r in results()] == [verdict(r) for r in pool.run(jobs)]
    assert sorted(farm.stats.verdicts) == sorted(j.id for j in jobs)
    assert set(farm.stats.verdicts.values()) == {1}  # exactly one verdict per job
    assert farm.stats.evictions == 1 and farm.stats.retries >= 1
    assert a.finish() == -signal.SIGKILL
    # Nothing of the killed server's sandboxes survives it (bwrap --die-with-parent).
    time.sleep(0.5)
    assert job_processes(UIDS[1], 2) == []

    a = two_servers[0] = FarmServer(token_file, UIDS[1], port=a.port)  # same address
    a.start()
    time.sleep(1.1)  # the client's probe backoff (farm_backoff_max_s) has passed
    again = slow_jobs(80, "rejoin")
    assert [r.outputs for r in farm.run(again)] == [[repr([i] * 3)] for i in range(80)]
    assert farm.stats.readmissions == 1
    assert jobs_counted(a.metrics()) > 0  # the restarted server took part
    assert set(farm.stats.verdicts.values()) == {1}


def test_a_draining_server_finishes_its_requests_and_the_rest_goes_elsewhere(
    token_file, two_servers
):
    a, b = two_servers
    farm = client(token_file, a.url, b.url)
    results = in_background(farm, slow_jobs(160, "drain-farm"))
    wait_until(lambda: a.metrics()[("azr_farm_running_jobs", ())] > 0, "a to run a request")
    a.signal(signal.SIGTERM)
    assert [r.outputs for r in results()] == [[repr([i] * 3)] for i in range(160)]
    assert a.finish() == 0  # drained: what it had accepted was answered
    assert set(farm.stats.verdicts.values()) == {1}
    # Its next request was refused (503): an infrastructure failure, re-routed to b.
    assert farm.stats.evictions == 1 and farm.stats.infra_failures >= 1


def test_no_server_fails_the_call_with_one_line_after_the_deadline(token_file):
    dead = f"http://127.0.0.1:{free_port()}"
    farm = client(token_file, dead, farm_deadline_s=2.0)
    t0 = time.monotonic()
    with pytest.raises(ExecutorError) as e:
        farm.run(mixed_jobs()[:2])
    assert 2.0 <= time.monotonic() - t0 < 10
    message = str(e.value)
    assert "\n" not in message and message.startswith("executor farm: no server answered for")
    assert dead in message and "executor.farm_deadline_s=2" in message


def test_backoff_doubles_to_its_cap_with_jitter():
    cfg = ExecutorConfig(farm_backoff_s=0.5, farm_backoff_max_s=8.0)
    rng = random.Random(0)
    for failures, full in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (9, 8.0)]:
        delays = [_backoff(cfg, failures, rng) for _ in range(200)]
        assert full / 2 <= min(delays) and max(delays) <= full
        assert max(delays) - min(delays) > full / 4  # jittered, not fixed


def test_the_farm_is_chosen_by_config_with_paths_in_the_run_directory(tmp_path):
    with pytest.raises(ExecutorError, match="token_file is not set"):
        open_executor(ExecutorConfig(endpoints=["http://a:1"]))
    with pytest.raises(ValueError, match="http"):
        ExecutorConfig(endpoints=["a:1"], token_file="t")
    (tmp_path / "farm").mkdir()
    wire.write_token(tmp_path / "farm" / "token")
    cfg = ExecutorConfig(rendezvous="farm", token_file="farm/token")
    farm = open_executor(cfg, tmp_path)
    assert isinstance(farm, RemoteExecutor) and farm.rendezvous == tmp_path / "farm"
    with pytest.raises(ExecutorError, match="token file"):
        open_executor(dataclasses.replace(cfg, token_file="farm/missing"), tmp_path)


@pytest.mark.slow
def test_farm_bench_prints_the_three_sides_and_the_ratio():
    require_sandbox()
    cmd = [sys.executable, str(ROOT / "benchmarks" / "farm_bench.py"), "--limit", "24",
           "--batch", "12", "--rounds", "1", "--latency-samples", "3"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    table = [line for line in lines if line.startswith("| ") and "---" not in line][1:]
    sides = {(row.split("|")[1].strip(), row.split("|")[2].strip()) for row in table}
    assert sides == {(s, w) for s in ("local pool", "one server", "two servers")
                     for w in ("run", "validate")}  # fmt: skip
    assert all(row.split("|")[-2].strip() == "24" for row in table)  # all reproduced
    assert lines[-1].startswith("ratio: ") and float(lines[-1].split()[1]) > 0
