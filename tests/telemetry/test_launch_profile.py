"""slurm/launch.sh's profiling set-up (`_azr_profile`), run by bash itself: the flight recorder's
environment, and with AZR_NSYS=1 the ranks of profile.ranks started under nsys. nsys is not
installed here: a stand-in on PATH records how it was called and runs the rest of the line."""

import os
import subprocess
import sys

from processes import ROOT

NSYS = """#!/usr/bin/env bash
echo "nsys $*" >> "$NSYS_LOG"
while [[ $1 == -* ]]; do shift; done  # nsys' options, then "profile"'s; the command follows
[[ $1 == profile ]] && shift
while [[ $1 == -* ]]; do shift; done
exec "$@"
"""


def profile_env(tmp_path, *overrides, nsys=True):
    shim = tmp_path / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "nsys").write_text(NSYS)
    (shim / "nsys").chmod(0o755)
    out = tmp_path / "run"
    script = (
        f"source slurm/launch.sh && _azr_profile {out} configs/tiny_cpu.yaml "
        + " ".join(overrides)
        + ' && echo "AZR_PYTHON=$AZR_PYTHON" && env'
    )
    env = {
        **os.environ,
        "PATH": f"{shim}:{os.environ['PATH']}",
        "AZR_ROOT": str(ROOT),
        "AZR_PYTHON": sys.executable,
        "AZR_NSYS": "1" if nsys else "0",
    }
    r = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    lines = r.stdout.splitlines()
    found = dict(x.split("=", 1) for x in lines if "=" in x and not x.startswith("azr:"))
    return r, found, out


def test_flight_recorder_is_on_and_its_dump_place_is_in_the_log(tmp_path):
    r, env, out = profile_env(tmp_path, nsys=False)
    assert r.returncode == 0, r.stderr
    assert env["TORCH_NCCL_TRACE_BUFFER_SIZE"] == "20000"
    assert env["TORCH_NCCL_DUMP_ON_TIMEOUT"] == "1"
    assert env["TORCH_NCCL_DEBUG_INFO_TEMP_FILE"] == f"{out}/flight_recorder/nccl_trace_rank_"
    assert (out / "flight_recorder").is_dir()
    assert f"torchfrtrace {out}/flight_recorder --prefix nccl_trace_rank_" in r.stdout
    assert env["AZR_PYTHON"] == sys.executable  # no nsys unless asked


def test_nsys_wraps_only_the_traced_ranks(tmp_path):
    r, env, out = profile_env(tmp_path, "profile.steps=[2,3]", "profile.ranks=[1]")
    assert r.returncode == 0, r.stderr
    wrapper = env["AZR_PYTHON"]
    assert wrapper.endswith("slurm/nsys_python") and "nsys on ranks 1:" in r.stdout
    log = tmp_path / "nsys.log"
    task_env = {**os.environ, **env, "NSYS_LOG": str(log), "PATH": f"{tmp_path / 'bin'}:"
                f"{os.environ['PATH']}"}  # fmt: skip
    for rank in ("0", "1", "2"):
        done = subprocess.run(
            [wrapper, "-c", "import sys; print(sys.executable)"],
            env={**task_env, "SLURM_PROCID": rank},
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0 and done.stdout.strip() == sys.executable, done.stderr
    [call] = log.read_text().splitlines()
    assert "--capture-range=cudaProfilerApi" in call and "--capture-range-end=stop" in call
    assert f"--output={out}/profile/nsys/rank1" in call


def test_nsys_needs_the_steps_to_capture(tmp_path):
    r, _, _ = profile_env(tmp_path)
    assert r.returncode == 2 and "needs profile.steps" in r.stderr
