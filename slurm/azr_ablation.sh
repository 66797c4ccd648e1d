#!/bin/bash
# Ablations as a job array: array index i runs entry i of an ablation list ("<name> [KEY=VALUE
# ...]" per line, default configs/ablations/table2.txt: the paper's Table 2) on top of a base
# config (default configs/azr_7b.yaml, 4 GPUs per run). With the default base config, the runs
# are Table 2's: Qwen2.5-7B (base) at model.path=/models/Qwen2.5-7B, seeded with that model's
# official seed files (data/azr_seeds/7b_seed_io.jsonl, 7b_code_f_seed_io.jsonl).
#
#   sbatch slurm/azr_ablation.sh [model.path=/models/Qwen2.5-7B] [KEY=VALUE ...]
#   sbatch --array=1,3 slurm/azr_ablation.sh ...       # a subset of the entries
#   AZR_ABLATIONS=mine.txt AZR_CONFIG=configs/azr_14b.yaml \
#       sbatch --array=0-2 --gpus-per-node=8 --ntasks-per-node=8 slurm/azr_ablation.sh ...
#
# Entry <name> writes to $SLURM_SUBMIT_DIR/runs/<job name>-<array job id>/<name>/ (or to
# $AZR_OUTPUT_DIR/<name>/) and logs to wandb as run <job name>-<name>. Overrides given here
# apply to every entry, after the entry's own. Requeue and the other knobs: see slurm/launch.sh.
#
#SBATCH --job-name=azr-table2
#SBATCH --array=0-4
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --mem=256G
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@600
#SBATCH --open-mode=append
#SBATCH --output=%x-%A_%a.out

set -euo pipefail
# Slurm runs a copy of this script from its spool directory: the checkout is found from the
# submit directory or AZR_ROOT.
AZR_ROOT=${AZR_ROOT:-$SLURM_SUBMIT_DIR}
if [[ ! -f $AZR_ROOT/slurm/launch.sh ]]; then
    echo "azr: no megatron-azr checkout at $AZR_ROOT: submit from its root or export AZR_ROOT" >&2
    exit 2
fi
source "$AZR_ROOT/slurm/launch.sh"

list=${AZR_ABLATIONS:-configs/ablations/table2.txt}
[[ $list == /* ]] || list=$AZR_ROOT/$list
line=$(azr_array_entry "$list" "${SLURM_ARRAY_TASK_ID:?submit with --array}")
read -r -a entry <<<"$line"
name=${entry[0]}
base=${AZR_OUTPUT_DIR:-$SLURM_SUBMIT_DIR/runs/$SLURM_JOB_NAME-$SLURM_ARRAY_JOB_ID}
export AZR_OUTPUT_DIR=$base/$name

# Table 2's model and seeds come first, so the entry's and the command line's overrides win.
table2=()
[[ -n ${AZR_CONFIG:-} ]] || table2=(
    model.path=/models/Qwen2.5-7B
    azr.seed_io_path=data/azr_seeds/7b_seed_io.jsonl
    azr.seed_induction_path=data/azr_seeds/7b_code_f_seed_io.jsonl
)
azr_launch "${AZR_CONFIG:-configs/azr_7b.yaml}" "${table2[@]}" "${entry[@]:1}" \
    "run.name=$SLURM_JOB_NAME-$name" "$@"
