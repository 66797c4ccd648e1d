#!/bin/bash
# AZR_PYTHON of the Slurm farm test: the interpreter ($AZR_TEST_PYTHON) for everything the
# launch runs, except that the ranks' `-m megatron_azr.cli train` trains with the scripted
# policy of scripted_train.py (a random tiny model writes no task the executor could check).
here=$(dirname "$(readlink -f "$0")")
root=$(dirname "$(dirname "$here")")
export PYTHONPATH=$root/tests:$root/tests/azr:$here${PYTHONPATH:+:$PYTHONPATH}
if [[ $1 == -m && $2 == megatron_azr.cli && $3 == train ]]; then
    shift 3
    exec "$AZR_TEST_PYTHON" "$here/scripted_train.py" --slurm "$@"
fi
exec "$AZR_TEST_PYTHON" "$@"
