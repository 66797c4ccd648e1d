"""Which ranks ``slurm/launch.sh`` wraps in ``nsys profile`` (``AZR_NSYS=1``).

``python -m megatron_azr.telemetry.nsys CONFIG [KEY=VALUE ...]`` prints the config's
``profile.ranks`` (space-separated, or ``all``); it fails when ``profile.steps`` is empty, since
the trainer would then never open nsys' capture range (``cudaProfilerStart``).
"""

from __future__ import annotations

import sys

from megatron_azr.config import ConfigError, load_config


def nsys_ranks(config: str, overrides: list[str]) -> str:
    profile = load_config(config, overrides).profile
    if not profile.steps:
        raise ConfigError("AZR_NSYS=1 needs profile.steps (the steps nsys captures)")
    return "all" if profile.ranks is None else " ".join(str(r) for r in profile.ranks)


def main(argv: list[str]) -> int:
    try:
        print(nsys_ranks(argv[0], argv[1:]))
    except (ConfigError, IndexError) as e:
        print(f"azr: nsys: {e or 'usage: CONFIG [KEY=VALUE ...]'}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
