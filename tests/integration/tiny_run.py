"""What the integration tests share about a tiny `azr train` run."""

import json
from pathlib import Path

# Overrides that keep a tiny CPU run to seconds per step.
FAST = [
    "azr.batch_size=2",
    "azr.k_references=1",
    "azr.max_response_tokens=12",
    "azr.n_learnability_samples=2",
    "run.checkpoint_every=1",
    "logging.wandb_mode=disabled",
]
# Wall-clock figures differ between runs, and so does the telemetry (README "Profiling": its
# counts depend on the layout and on what a resumed run set up); everything else replays exactly.
VOLATILE = ("time", "actor/time_s", "comm/", "straggler/", "gpu/")


def metrics(out: Path, *, keep_volatile: bool = False) -> list[dict]:
    """The rows of ``<out>/metrics.jsonl``, without the wall-clock figures unless asked."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    if keep_volatile:
        return rows
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]
