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
#   AZR_DRY_RUN     1: after the preflight, print `azr plan` (memory table, every rank's place)
#                   and every srun line the job would run, and start nothing
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

# Profiling and hang post-mortems (README "Profiling"). Knobs (environment, all optional):
#   TORCH_NCCL_TRACE_BUFFER_SIZE  NCCL flight recorder entries per rank (default 20000,
#                   torchtitan's; 0 = off);
#                   on a collective timeout (profile.pg_timeout_minutes) every rank dumps them to
#                   <run>/flight_recorder/nccl_trace_rank_<rank>; read the dumps with
#                   `torchfrtrace <run>/flight_recorder --prefix nccl_trace_rank_`
#   AZR_NSYS=1      run the ranks of profile.ranks under `nsys profile`, capturing the steps
#                   of profile.steps, into <run>/profile/nsys/rank<N>.nsys-rep
#   AZR_NSYS_ARGS   more `nsys profile` arguments (e.g. "--gpu-metrics-devices=all")
_azr_profile() {
    local out=$1 config=$2
    shift 2
    export TORCH_NCCL_TRACE_BUFFER_SIZE=${TORCH_NCCL_TRACE_BUFFER_SIZE:-20000}
    export TORCH_NCCL_DUMP_ON_TIMEOUT=${TORCH_NCCL_DUMP_ON_TIMEOUT:-1}
    export TORCH_NCCL_DEBUG_INFO_TEMP_FILE=${TORCH_NCCL_DEBUG_INFO_TEMP_FILE:-$out/flight_recorder/nccl_trace_rank_}
    mkdir -p "$(dirname "$TORCH_NCCL_DEBUG_INFO_TEMP_FILE")"
    echo "azr: NCCL flight recorder: $TORCH_NCCL_TRACE_BUFFER_SIZE entries per rank, dumped on" \
        "a collective timeout to ${TORCH_NCCL_DEBUG_INFO_TEMP_FILE}<rank>;" \
        "read: torchfrtrace $(dirname "$TORCH_NCCL_DEBUG_INFO_TEMP_FILE")" \
        "--prefix $(basename "$TORCH_NCCL_DEBUG_INFO_TEMP_FILE")"
    [[ ${AZR_NSYS:-0} == 1 ]] || return 0
    command -v nsys >/dev/null || {
        echo "azr: AZR_NSYS=1 but nsys is not on PATH" >&2
        return 2
    }
    local ranks
    ranks=$("$AZR_PYTHON" -m megatron_azr.telemetry.nsys "$config" "$@") || return 2
    export AZR_NSYS_RANKS=$ranks AZR_NSYS_OUT=$out/profile/nsys AZR_NSYS_PYTHON=$AZR_PYTHON
    mkdir -p "$AZR_NSYS_OUT"
    AZR_PYTHON=$AZR_ROOT/slurm/nsys_python # srun starts each task through it
    echo "azr: nsys on ranks $ranks: $AZR_NSYS_OUT/rank<N>.nsys-rep"
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
    # The dry run's plan and the farm run on the plain interpreter (the profile may point
    # AZR_PYTHON at the nsys wrapper for the trainer's ranks); printed srun lines show nsys.
    [[ -z ${AZR_DRY_RUN:-} ]] || _azr_dry_run "$config" "${overrides[@]}"
    _azr_farm_start "$config" || return $?
    _azr_profile "$out" "$config" "${overrides[@]}" || return $?

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

# The dry run replaces srun with a function that prints its command line and returns the plan's
# status, so every srun the launch code reaches is shown exactly as it would run, and a layout
# that does not fit fails the job.
_azr_dry_run() {
    local config=$1 gpus=${SLURM_GPUS_PER_NODE:-} rc=0
    shift
    gpus=${gpus##*:} # "h100:8" -> 8
    if [[ ! $gpus =~ ^[1-9][0-9]*$ ]]; then # a CPU allocation: the recipes' one task per GPU
        gpus=${SLURM_NTASKS_PER_NODE:-$((SLURM_NTASKS / SLURM_JOB_NUM_NODES))}
    fi
    local i=0 host
    for host in $(scontrol show hostnames "$SLURM_JOB_NODELIST"); do
        echo "azr dry run: node $i = $host"
        i=$((i + 1))
    done
    "$AZR_PYTHON" -m megatron_azr.cli plan --config "$config" --nodes "$SLURM_JOB_NUM_NODES" \
        --gpus-per-node "$gpus" --ranks "$@" || rc=$?
    _AZR_DRY_RC=$rc
    srun() {
        echo "azr dry run: srun$(printf ' %q' "$@")"
        return "$_AZR_DRY_RC"
    }
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
    # Without the trainer's CPUs per task (exported above for component 0; srun reads it as -c,
    # which implies --exact): each server's step gets every CPU of its node's allocation.
    local -a serve=(env -u SLURM_CPUS_PER_TASK srun --het-group=1 --job-name=azr-farm
        --ntasks-per-node=1 --kill-on-bad-exit=0 --output="$farm/serve-%N.out"
        bash -c 'exec "$0" -m megatron_azr.cli executor serve \
            --host 0.0.0.0 --port 0 --token-file "$1" --rendezvous "$2" "${@:3}" \
            executor.workers="$SLURM_CPUS_ON_NODE"'
        "$AZR_PYTHON" "$farm/token" "$farm" --config "$config" "${overrides[@]}")
    if [[ -n ${AZR_DRY_RUN:-} ]]; then # `env` would run the real srun, not the dry run's
        echo "azr dry run: farm on $servers node(s):$(printf ' %q' "${serve[@]}")"
        return 0
    fi
    mkdir -p "$farm"
    rm -f "$farm"/token "$farm"/server-*.json
    "$AZR_PYTHON" -c 'import sys; from megatron_azr.executor.wire import write_token
write_token(sys.argv[1])' "$farm/token" || return 2
    "${serve[@]}" &
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
