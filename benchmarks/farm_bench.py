"""The executor farm's HTTP cost on the 800 CRUXEval programs (and their validation): the local
sandboxed pool, one `azr executor serve` and two, in the same run; programs/s and p50/p99
latency per side. The last line is ``ratio: <one-server / local throughput>`` (target >= 0.9).
Options: --help. Results: benchmarks/RESULTS.md.
"""

import sys

from megatron_azr.executor.farm_bench import main

if __name__ == "__main__":
    sys.exit(main())
