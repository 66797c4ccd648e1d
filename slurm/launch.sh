# shellcheck shell=bash
# Launch logic shared by the sbatch scripts in slurm/ (sourced by them, not run on its own).
#
#   azr_launch CONFIG [KEY=VALUE ...]        one training run
#   azr_array_entry FILE INDEX               "<name> [KEY=VALUE ...]" of an ablation list
#
# `srun` starts one task per GPU (or per CPU slot), each running `azr train` itself (as
# `python -m megatron_azr.cli train`, so that the preflight and the ranks use one interpreter):
# no torchrun. The trainer maps SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID to RANK / WORLD_SIZE
# / LOCAL_RANK; MASTER_ADDR / MASTER_PORT are set here.
#
# Knobs (environment, all optional):
#   AZR_OUTPUT_DIR  run directory; default $SLURM_SUBMIT_DIR/runs/$SLURM_JOB_NAME-$SLURM_JOB_ID
#                   (a run.output_dir=... override wins). Point a new job at an old directory to
#                   continue that run: the trainer resumes from <dir>/checkpoints/latest.
#   AZR_PYTHON      interpreter with megatron-azr installed (default: python)
#   AZR_ENV_FILE    sourced first: module loads, venv activation, site NCCL/UCX settings
#   MASTER_PORT     rendezvous port (default: 15000 + job id mod 15000, below the ephemeral range)
#   NCCL_DEBUG      NCCL log level (default WARN; INFO or TRACE to debug a hang)
#   WANDB_RUN_ID    wandb run id (default: derived from the run directory, so that requeued and
#                   resubmitted jobs log to one wandb run)
#
# Requeue: the scripts ask for `--requeue --signal=B:USR1@<seconds>`. Before the time limit
# Slurm sends SIGUSR1 to this shell, which requeues the job (same job id, so the same output
# directory); the requeued job resumes from checkpoints/latest and replays exactly the steps
# after it (rollout seeds depend only on run seed and step). A node failure requeues through
# --requeue alone, and so does a preemption. A crash of the trainer fails the job: it is not
# requeued.

if [[ -n ${AZR_ENV_FILE:-} ]]; then
    # shellcheck disable=SC1090
    source "$AZR_ENV_FILE"
fi

AZR_PYTHON=${AZR_PYTHON:-python}

# A heterogeneous job's batch shell sees component 0's CPUs per task only under a suffixed name.
if [[ -z ${SLURM_CPUS_PER_TASK:-} && -n ${SLURM_CPUS_PER_TASK_HET_GROUP_0:-} ]]; then
    export SLURM_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK_HET_GROUP_0
fi

_azr_env() {
    MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
    export MASTER_ADDR
    export MASTER_PORT=${MASTER_PORT:-$((15000 + SLURM_JOB_ID % 15000))}
    # Megatron orders its TP/SP communication kernels before the compute they overlap with;
    # that ordering holds only with a single hardware queue per device.
    export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
    # A failed or timed-out collective aborts the process (and --kill-on-bad-exit the job)
    # instead of leaving the other ranks waiting in NCCL.
    export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
    export TORCH_NCCL_AVOID_RECORD_STREAMS=${TORCH_NCCL_AVOID_RECORD_STREAMS:-1}
    export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
    # No PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True: vLLM's sleep mode allocator refuses
    # it (the preflight stops a job that inherits it).
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
    export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
    # Weights and tokenizer come from model.path; compute nodes often have no egress.
    export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
}

_azr_on_usr1() {
    echo "azr: SIGUSR1 (time limit near): requeueing job $SLURM_JOB_ID;" \
        "it resumes from $_AZR_OUT/checkpoints/latest" >&2
    _AZR_REQUEUED=1
    scontrol requeue "$SLURM_JOB_ID"
}

azr_launch() {
    local config=$1
    shift
    local arg out=${AZR_OUTPUT_DIR:-$SLURM_SUBMIT_DIR/runs/$SLURM_JOB_NAME-$SLURM_JOB_ID}
    for arg in "$@"; do
        if [[ $arg == run.output_dir=* ]]; then out=${arg#run.output_dir=}; fi
    done
    if [[ $out != /* ]]; then out=$SLURM_SUBMIT_DIR/$out; fi
    _AZR_OUT=$out
    _azr_env
    # One wandb run per run directory: requeued and resubmitted jobs append to it.
    WANDB_RUN_ID=${WANDB_RUN_ID:-azr-$(printf '%s' "$out" | sha1sum | cut -c1-12)}
    export WANDB_RUN_ID
    echo "azr: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST," \
        "$SLURM_NTASKS tasks, master $MASTER_ADDR:$MASTER_PORT," \
        "commit $(git -C "$AZR_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"

    cd "$AZR_ROOT" || return 2
    local -a overrides=("$@" "run.output_dir=$out")
    _azr_farm_config || return $?
    "$AZR_PYTHON" slurm/preflight.py --world "$SLURM_NTASKS" "$config" "${overrides[@]}" ||
        return $?
    _azr_farm_start "$config" || return $?

    # srun runs in the background: bash runs a trap only between commands, and `wait`
    # returns as soon as a signal arrives.
    trap _azr_on_usr1 USR1
    srun --label --kill-on-bad-exit=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" \
        "$AZR_PYTHON" -m megatron_azr.cli train --config "$config" "${overrides[@]}" &
    local pid=$! rc=0
    wait "$pid" || rc=$?
    # Requeued: Slurm is ending this allocation; stay until it does.
    while [[ -n ${_AZR_REQUEUED:-} ]] && kill -0 "$pid" 2>/dev/null; do
        wait "$pid" || rc=$?
    done
    return "$rc"
}

# The executor farm of a heterogeneous job (README "Executor farm"). Component 1 of the job
# (`#SBATCH hetjob` in azr_14b.sh, azr_7b.sh, azr_tiny_cpu.sh) runs one `azr executor serve`
# per node, one sandboxed worker per CPU of the node; the trainer (component 0) sends its
# executor jobs there over HTTP. A config mistake still ends the job in the preflight, before
# any server starts. The servers announce themselves in <run>/farm/ and share the
# bearer token <run>/farm/token (0600, new for every job); their output goes to
# <run>/farm/serve-<node>.out. When the job's shell exits they drain (SIGTERM through scancel:
# srun turns a SIGTERM of its own into a kill) and leave their last /metrics in
# <run>/farm/metrics-<host>-<port>.prom. AZR_FARM_WAIT: seconds to wait for every server to
# announce itself (default 600). A job without a second component keeps the local pool.
# Before the preflight: the farm's keys join the caller's overrides (bash scoping), so that the
# preflight records them in config.yaml and the trainer uses the farm. Nothing is written yet.
_azr_farm_config() {
    [[ ${SLURM_HET_SIZE:-1} -ge 2 ]] || return 0
    overrides+=("executor.token_file=$_AZR_OUT/farm/token" "executor.rendezvous=$_AZR_OUT/farm")
}

# After the preflight: the token, the servers, and a wait until each has announced itself.
_azr_farm_start() {
    [[ ${SLURM_HET_SIZE:-1} -ge 2 ]] || return 0
    local config=$1 farm=$_AZR_OUT/farm wait=${AZR_FARM_WAIT:-600}
    local servers=${SLURM_JOB_NUM_NODES_HET_GROUP_1:?} up=0
    mkdir -p "$farm"
    rm -f "$farm"/token "$farm"/server-*.json
    "$AZR_PYTHON" -c 'import sys; from megatron_azr.executor.wire import write_token
write_token(sys.argv[1])' "$farm/token" || return 2
    # Without the trainer's CPUs per task (exported above for component 0; srun reads it as -c,
    # which implies --exact): each server's step gets every CPU of its node's allocation.
    env -u SLURM_CPUS_PER_TASK srun --het-group=1 --job-name=azr-farm --ntasks-per-node=1 \
        --kill-on-bad-exit=0 --output="$farm/serve-%N.out" \
        bash -c 'exec "$0" -m megatron_azr.cli executor serve \
            --host 0.0.0.0 --port 0 --token-file "$1" --rendezvous "$2" "${@:3}" \
            executor.workers="$SLURM_CPUS_ON_NODE"' \
        "$AZR_PYTHON" "$farm/token" "$farm" --config "$config" "${overrides[@]}" &
    _AZR_FARM_PID=$!
    trap _azr_farm_stop EXIT
    local deadline=$((SECONDS + wait))
    while ((up < servers)); do
        if ! kill -0 "$_AZR_FARM_PID" 2>/dev/null; then
            echo "azr: the executor farm ended before serving; see $farm/serve-*.out" >&2
            return 2
        fi
        if ((SECONDS > deadline)); then
            echo "azr: $up of $servers executor farm servers announced themselves in" \
                "$wait s (AZR_FARM_WAIT); see $farm/serve-*.out" >&2
            return 2
        fi
        sleep 1
        up=$(compgen -G "$farm/server-*.json" | wc -l)
    done
    echo "azr: executor farm: $servers servers on $SLURM_JOB_NODELIST_HET_GROUP_1," \
        "$(sed -n 's/.*"url": "\([^"]*\)".*/\1/p' "$farm"/server-*.json | tr '\n' ' ')"
}

_azr_farm_stop() {
    local step
    step=$(scontrol show step -o 2>/dev/null |
        sed -n "s/^StepId=\(${SLURM_JOB_ID_HET_GROUP_1:-x}\.[0-9]*\) .* Name=azr-farm .*/\1/p")
    [[ -z $step ]] || scancel --signal=TERM "$step"
    wait "$_AZR_FARM_PID" 2>/dev/null || true
}

azr_array_entry() {
    local file=$1 index=$2 entries
    [[ -f $file ]] || {
        echo "azr: ablation list $file not found" >&2
        return 2
    }
    entries=$(grep -v -E '^[[:space:]]*(#|$)' "$file" || true)
    local count
    count=$(printf '%s\n' "$entries" | grep -c . || true)
    if ((index < 0 || index >= count)); then
        echo "azr: array index $index is outside the $count entries of $file" >&2
        return 2
    fi
    printf '%s\n' "$entries" | sed -n "$((index + 1))p"
}
