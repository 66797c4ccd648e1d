"""Farm servers (``azr executor serve``) started as real subprocesses, for the farm tests."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from executor_helpers import ROOT
from prometheus_client.parser import text_string_to_metric_families

from megatron_azr.azr.protocols import ExecResult


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FarmServer:
    """One ``azr executor serve`` on 127.0.0.1; ``uid_base`` keeps its job uids apart from any
    other pool on this host."""

    def __init__(self, token_file: Path, uid_base: int, *args: str, port: int = 0) -> None:
        self.token_file, self.uid_base, self.args = token_file, uid_base, args
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        self.output = ""

    def start(self, timeout: float = 120) -> FarmServer:
        cmd = [sys.executable, "-m", "megatron_azr.cli", "executor", "serve",
               "--port", str(self.port), "--advertise", "127.0.0.1",
               "--token-file", str(self.token_file), *self.args, "executor.workers=2",
               f"executor.job_uid_base={self.uid_base}"]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, cwd=ROOT)  # fmt: skip
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 1.0)
            if ready:
                line = self.proc.stdout.readline()
                self.output += line
                if line.startswith("azr executor serve: http"):
                    return self
                if not line and self.proc.poll() is not None:
                    break
        raise RuntimeError(f"the server did not start:\n{self.output}")

    def finish(self, timeout: float = 60) -> int:
        """Wait for the exit; the rest of its output goes to ``output``."""
        assert self.proc is not None
        out, _ = self.proc.communicate(timeout=timeout)
        self.output += out
        return self.proc.returncode

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.finish()
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.finish()

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def post(self, body: bytes, token: str | None) -> tuple[int, str]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + "/v1/run", body, headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = self.get("/metrics")
        assert status == 200
        return parse_metrics(text)


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> {(sample name, sorted labels): value}."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def jobs_counted(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    return sum(v for (name, _), v in samples.items() if name == "azr_farm_jobs_total")


def verdict(r: ExecResult) -> tuple[object, ...]:
    """A result without its timing (the part that must not depend on where a job ran)."""
    return (r.id, r.status, r.outputs, r.matches, r.error_type)


def body(jobs: list[dict[str, object]]) -> bytes:
    return json.dumps({"jobs": jobs}).encode()
