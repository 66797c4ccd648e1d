"""Executor throughput on the 800 CRUXEval programs vs the original AZR executor's design.

Same as ``azr executor bench``: prints both sides (programs/s, p50/p99 latency) and, as its last
line, ``ratio: <sandboxed / original throughput>`` for the first workload. Options: --help.
"""

import sys

from megatron_azr.executor.bench import main

if __name__ == "__main__":
    sys.exit(main())
