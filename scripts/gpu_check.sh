#!/usr/bin/env bash
# The GPU paths on one lent GPU (an H100 or H200 with CUDA torch; no Transformer Engine, no CUDA
# vLLM), in under 8 minutes, ending with one summary table (markdown, for benchmarks/RESULTS.md):
#
#   gpu tests      every test marked `gpu` that can run on one GPU (TE, vLLM and two-GPU ones skip)
#   actor MFU      benchmarks/actor_bench.py, local spec: tokens/s and MFU against the HF baseline
#   plan check     benchmarks/actor_bench.py --memory against `azr plan`'s actor state + activations
#   logprob kernel benchmarks/logprob_kernel_bench.py: Triton kernels against the torch reference
#
#   bash scripts/gpu_check.sh
#
# Without a CUDA GPU it says so and exits 0 having run nothing. megatron-core is rarely installed
# on such a machine: wheels in $AZR_WHEELS (default .whl/, e.g. from `pip download --no-deps
# --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d .whl
# megatron-core==0.16.1`) are installed into a temporary directory first. Knobs: AZR_PYTHON
# (default python3), AZR_CHECK_DIR (logs; default runs/gpu_check). Exit status: 0 when every
# step passed, 1 otherwise, 2 when the machine cannot run the checks.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

PY=${AZR_PYTHON:-python3}
WHEELS=${AZR_WHEELS:-.whl}
LOGS=${AZR_CHECK_DIR:-runs/gpu_check}

if ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    echo "gpu_check: no CUDA GPU visible to $PY (torch.cuda.is_available() is not True):" \
        "nothing run; run this script on a GPU machine"
    exit 0
fi
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    site=$(mktemp -d)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$WHEELS"/*.whl ||
        exit 2
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ! "$PY" -c 'import megatron.core' 2>/dev/null; then
    echo "gpu_check: megatron-core does not import with $PY: put its wheel in $WHEELS/" >&2
    exit 2
fi
mkdir -p "$LOGS"

# The plan-check workload, shared by the benchmark and the plan: a 0.5B model, 32 samples of up
# to 1024 + 2048 tokens packed into 4096-token micro-batches, full recompute, local spec.
CARD=qwen2.5-0.5b
MEMORY_ARGS=(--card "$CARD" --impl local --samples 32 --prompt 256 1024 --response 128 2048
    --micro-batch-tokens 4096 --recompute full --steps 2)
PLAN_OVERRIDES=(actor.transformer_impl=local actor.micro_batch_tokens=4096 actor.recompute=full
    azr.max_prompt_tokens=1024 azr.max_response_tokens=2048)

# What `azr plan` says the actor holds at its peak (state + activations) for that workload.
plan_prediction() {
    "$PY" - "${PLAN_OVERRIDES[@]}" <<EOF
import sys
from megatron_azr import plan
from megatron_azr.config import load_config
cfg = load_config(None, ["model.card=$CARD", *sys.argv[1:]])
p = plan.plan_layout(cfg, plan.Layout(1, 1, 1, 1), 1, 80 * plan.GiB)
print(f"plan GB: {(p.static + sum(p.activations.values())) / plan.GiB:.2f}")
EOF
}

# One line per step for the table, read from its log.
summary_tests() { grep -E '(passed|failed|skipped|deselected|errors?)\b.* in [0-9.]+s' "$1" | tail -n1 | tr -d '='; }
summary_actor() {
    awk '/^megatron actor/ {printf "actor %s tokens/s, MFU %s; ", $(NF-2), $NF}
         /^HF baseline/ {printf "baseline %s tokens/s; ", $(NF-2)}
         /^ratio:/ {printf "speed-up %s", $2}' "$1"
}
summary_plan() {
    plan_prediction | cat "$1" - | awk '/^peak GB:/ {m = $3} /^plan GB:/ {p = $3}
         END {if (m != "" && p != "") printf "measured peak %s GiB, plan %s GiB (plan/measured %.2f)", m, p, p / m}'
}
summary_kernel() {
    awk -F'|' '/^\| Triton/ {printf "Triton fwd+bwd %s ms, %s MiB; ", $5, $6}
               /^time ratio/ {printf "%s; ", $0} /^ratio:/ {printf "memory %s", $0}' "$1"
}

declare -a ROWS=()
failed=0
step() { # step NAME SECONDS SUMMARY COMMAND...
    local name=$1 limit=$2 summarize=$3 rc=0 status=ok start=$SECONDS
    shift 3
    local log="$LOGS/${name// /_}.log"
    echo "gpu_check: $name (at most ${limit} s, log $log)"
    timeout "$limit" "$@" >"$log" 2>&1 || rc=$?
    if ((rc == 124)); then status="TIMEOUT"; elif ((rc)); then status="FAILED ($rc)"; fi
    ((rc == 0)) || failed=1
    ROWS+=("| $name | $status | $((SECONDS - start)) | $($summarize "$log") |")
}

per_test=()
if "$PY" -c 'import pytest_timeout' 2>/dev/null; then per_test=(--timeout=150); fi
step "gpu tests" 250 summary_tests "$PY" -m pytest -m gpu tests -q -rfEs -p no:cacheprovider \
    --continue-on-collection-errors "${per_test[@]}"
step "actor MFU" 80 summary_actor "$PY" benchmarks/actor_bench.py --card "$CARD" --impl local \
    --micro-batch-tokens 4096
step "plan check" 60 summary_plan "$PY" benchmarks/actor_bench.py --memory "${MEMORY_ARGS[@]}"
step "logprob kernel" 50 summary_kernel "$PY" benchmarks/logprob_kernel_bench.py

echo
"$PY" -c 'import torch, megatron.core as m
print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, megatron-core {m.__version__}")'
echo "| step | status | s | result |"
echo "|---|---|---:|---|"
printf '%s\n' "${ROWS[@]}"
grep -hE '^(FAILED|ERROR) ' "$LOGS/gpu_tests.log" || true
exit "$failed"
