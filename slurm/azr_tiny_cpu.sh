#!/bin/bash
# The launch of slurm/azr_14b.sh on CPU: the tiny random model (configs/tiny_cpu.yaml) as two
# tensor-parallel ranks (component 0), and the executor farm as one `azr executor serve` on a
# second node (component 1), the same heterogeneous shape. tests/integration/test_slurm.py runs
# it in a Slurm started for the test.
#
#   sbatch slurm/azr_tiny_cpu.sh [KEY=VALUE ...]
#
#SBATCH --job-name=azr-tiny-cpu
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=1
#SBATCH --time=00:30:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@60
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
#SBATCH hetjob
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --time=00:30:00

set -euo pipefail
# Slurm runs a copy of this script from its spool directory: the checkout is found from the
# submit directory (submit from the repository root) or from AZR_ROOT.
AZR_ROOT=${AZR_ROOT:-$SLURM_SUBMIT_DIR}
if [[ ! -f $AZR_ROOT/slurm/launch.sh ]]; then
    echo "azr: no megatron-azr checkout at $AZR_ROOT: submit from its root or export AZR_ROOT" >&2
    exit 2
fi
source "$AZR_ROOT/slurm/launch.sh"

azr_launch configs/tiny_cpu.yaml parallel.tp=2 "$@"
