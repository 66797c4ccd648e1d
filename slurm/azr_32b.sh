#!/bin/bash
# AZR self-play on Qwen2.5-Coder-32B (configs/azr_32b.yaml): one task per GPU, 2 nodes of 8.
#
#   sbatch slurm/azr_32b.sh model.path=/models/Qwen2.5-Coder-32B [KEY=VALUE ...]
#   sbatch --nodes=4 slurm/azr_32b.sh ...               # actor data parallelism over 32 GPUs
#   sbatch -p gpu : -p cpu --nodes=2 slurm/azr_32b.sh ...  # partitions per component, 2 farm nodes
#   sbatch -p PARTITION -A ACCOUNT slurm/azr_32b.sh ... # site options go before the script
#   AZR_OUTPUT_DIR=runs/azr-32b-123 sbatch slurm/azr_32b.sh run.steps=600   # continue a run
#
# A heterogeneous job: component 0 (the GPUs) trains, component 1 (CPU nodes) is the executor
# farm; options before a ":" apply to component 0, after it to component 1. Submit from the
# repository root (or export AZR_ROOT). KEY=VALUE arguments are dotted config overrides. The
# run writes to $SLURM_SUBMIT_DIR/runs/<job name>-<job id>/ (logs/rank<N>.log, metrics.jsonl,
# checkpoints/, config.yaml, farm/); this script's output goes to <job name>-<job id>.out.
# Requeue and the other knobs: see slurm/launch.sh.
#
#SBATCH --job-name=azr-32b
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --mem=0
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@600
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
#SBATCH hetjob
# Component 1, the executor farm: CPU nodes running one `azr executor serve` each (one sandboxed
# worker per CPU); the trainer sends its executor jobs there (slurm/launch.sh, _azr_farm_start).
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --mem=0
#SBATCH --time=24:00:00

set -euo pipefail
# Slurm runs a copy of this script from its spool directory: the checkout is found from the
# submit directory or AZR_ROOT.
AZR_ROOT=${AZR_ROOT:-$SLURM_SUBMIT_DIR}
if [[ ! -f $AZR_ROOT/slurm/launch.sh ]]; then
    echo "azr: no megatron-azr checkout at $AZR_ROOT: submit from its root or export AZR_ROOT" >&2
    exit 2
fi
source "$AZR_ROOT/slurm/launch.sh"

azr_launch configs/azr_32b.yaml "$@"
