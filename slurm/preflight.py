"""Checks a run against its Slurm allocation before ``srun`` starts any rank (slurm/launch.sh).

A typo in an override, a layout that does not divide the allocation or a missing checkpoint
would otherwise surface as the same traceback in every rank's log, after the ranks have loaded
torch and formed their process group. Here it is one line in the job's output, seconds after
the job starts. On success the resolved config is written to ``<output_dir>/config.yaml`` (the
record of what ran) and one summary line is printed.

    python slurm/preflight.py --world N CONFIG [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from megatron_azr import atomic
from megatron_azr.config import Config, ConfigError, dump_config, load_config, to_dict


class PreflightError(ValueError):
    pass


def check(cfg: Config, world: int) -> list[str]:
    """Raise :class:`PreflightError` on a run that cannot start; return notices otherwise."""
    par = cfg.parallel
    if world % (par.tp * par.pp):
        raise PreflightError(
            f"{world} tasks do not divide into tp*pp = {par.tp}*{par.pp} model-parallel groups: "
            "change --ntasks-per-node/--nodes or parallel.tp/parallel.pp"
        )
    if cfg.rollout.engine == "vllm" and world % cfg.rollout.tensor_parallel_size:
        raise PreflightError(
            f"rollout.tensor_parallel_size={cfg.rollout.tensor_parallel_size} does not divide "
            f"the {world} tasks (one colocated vLLM worker per task)"
        )
    alloc = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    if cfg.rollout.engine == "vllm" and "expandable_segments:True" in alloc:
        raise PreflightError(
            f"PYTORCH_CUDA_ALLOC_CONF={alloc} in the job's environment: vLLM's sleep mode "
            "(the colocated rollout) refuses expandable segments; unset it"
        )
    if cfg.model.path and not Path(cfg.model.path).exists():
        raise PreflightError(
            f"model.path {cfg.model.path} does not exist: pass the weights of "
            f"{cfg.model.arch.hf_id or cfg.model.arch.name} as an HF directory or as a checkpoint "
            "from `azr convert hf-to-mcore HF_DIR CKPT_DIR`, e.g. "
            "`sbatch slurm/azr_14b.sh model.path=/models/Qwen2.5-Coder-14B`"
        )
    for key in ("seed_io_path", "seed_induction_path"):
        path = getattr(cfg.azr, key)
        if path and not Path(path).is_file():
            raise PreflightError(f"azr.{key} {path} is not a file (relative to {Path.cwd()})")
    return _config_changes(cfg)


def _config_changes(cfg: Config) -> list[str]:
    """Keys that differ from the config recorded by an earlier job in the same directory
    (a resubmission that extends ``run.steps`` is fine; a changed learning rate is worth a
    line in the log)."""
    recorded = Path(cfg.run.output_dir) / "config.yaml"
    if not recorded.is_file():
        return []
    old, new = _flatten(yaml.safe_load(recorded.read_text()) or {}), _flatten(to_dict(cfg))
    return [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(old.keys() | new.keys())
        if old.get(k) != new.get(k)
    ]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def summary(cfg: Config, world: int) -> str:
    par = cfg.parallel
    dp = world // (par.tp * par.pp)
    latest = Path(cfg.run.output_dir) / "checkpoints" / "latest"
    start = f"resuming from {latest.read_text().strip()}" if latest.is_file() else "fresh start"
    weights = cfg.model.path or "random init"
    return (
        f"{cfg.run.name}: {world} tasks = tp {par.tp} x pp {par.pp} x dp {dp}; "
        f"model {cfg.model.arch.name} from {weights}; rollout {cfg.rollout.engine}; "
        f"{cfg.run.steps} steps, {start}; output {cfg.run.output_dir}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=int, required=True, help="tasks in the allocation")
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        notices = check(cfg, args.world)
    except (ConfigError, PreflightError) as e:
        print(f"azr preflight: error: {e}", file=sys.stderr)
        return 2
    for line in notices:
        print(f"azr preflight: config differs from the recorded one: {line}", file=sys.stderr)
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "config.yaml", dump_config(cfg))
    print(f"azr preflight: {summary(cfg, args.world)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
