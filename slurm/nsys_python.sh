#!/usr/bin/env bash
# The interpreter srun starts on each task when AZR_NSYS=1 (set up by _azr_profile in
# launch.sh): the ranks in AZR_NSYS_RANKS ("all" or a list of global ranks) run under
# `nsys profile`, which records only between the trainer's cudaProfilerStart (before the first of
# profile.steps) and cudaProfilerStop (after the last); the other ranks run as usual.
rank=${SLURM_PROCID:-${RANK:-0}}
if [[ $AZR_NSYS_RANKS == all || " $AZR_NSYS_RANKS " == *" $rank "* ]]; then
    # shellcheck disable=SC2086  # AZR_NSYS_ARGS is a list of arguments
    exec nsys profile --capture-range=cudaProfilerApi --capture-range-end=stop \
        --trace=cuda,nvtx,osrt --cuda-memory-usage=true --force-overwrite=true \
        --output="$AZR_NSYS_OUT/rank$rank" ${AZR_NSYS_ARGS:-} "$AZR_NSYS_PYTHON" "$@"
fi
exec "$AZR_NSYS_PYTHON" "$@"
