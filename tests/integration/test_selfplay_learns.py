"""`azr train` end to end on tasks that are valid: a scripted policy proposes programs the real
sandbox accepts and answers half of the solver prompts right, so the whole path valid proposal
-> sandbox -> rewards -> advantages -> update runs (a random model never gets past parsing)."""

import json
import os
import subprocess
import sys

import pytest
from processes import ROOT, child_env
from tiny_run import metrics

pytestmark = pytest.mark.slow

TASKS = ("abduction", "deduction", "induction")


def test_valid_tasks_flow_through_rewards_into_the_update(tmp_path):
    out = tmp_path / "run"
    overrides = [
        "run.steps=2",
        "run.checkpoint_every=2",
        # Absent seed files: the run has its policy write them first (spec §3).
        f"azr.seed_io_path={tmp_path / 'seeds' / 'io.jsonl'}",
        f"azr.seed_induction_path={tmp_path / 'seeds' / 'code_f.jsonl'}",
        "azr.batch_size=4",
        "azr.n_learnability_samples=4",
        "azr.max_response_tokens=400",
        "actor.lr=1e-4",
        "actor.entropy_coeff=0",  # the policy gradient alone
        "logging.wandb_mode=disabled",
    ]
    cmd = [sys.executable, str(ROOT / "tests" / "integration" / "scripted_train.py"), str(out)]
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "tests"), str(ROOT / "tests" / "azr"), env["PYTHONPATH"]]
    )
    r = subprocess.run(
        [*cmd, *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]

    seeds = [json.loads(line) for line in (tmp_path / "seeds" / "io.jsonl").open()]
    induction = [json.loads(line) for line in (tmp_path / "seeds" / "code_f.jsonl").open()]
    assert len(seeds) == len(induction) == 16  # B * S
    assert seeds[0]["snippet"] == "def f(a):\n    return a"  # the identity triplet first
    assert all(" * " in s["snippet"] for s in seeds[1:]) and len(induction[-1]["inputs"]) == 4

    rows = metrics(out)
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        for t in TASKS:
            assert row[f"{t}/propose/valid_rate"] == 1.0, (t, row)  # the sandbox ran and accepted
            assert 0 < row[f"{t}/solve/accuracy"] < 1, (t, row)
            assert row[f"{t}/buffer/added"] > 0
    assert rows[1]["deduction/buffer/size"] > rows[0]["deduction/buffer/size_before"]
    assert any(row[f"{t}/propose/reward_mean"] > 0 for row in rows for t in TASKS)

    dump = [json.loads(line) for line in (out / "rollouts" / "step_00000002.jsonl").open()]
    assert {(d["task"], d["role"]) for d in dump} == {
        (t, r) for t in TASKS for r in ("proposer", "solver")
    }
    proposals = [d for d in dump if d["role"] == "proposer"]
    assert all(d["valid"] and d["status"] == "ok" and d["parsed"] for d in proposals)
    assert {d["reward"] for d in dump} >= {1.0, -0.5} and any(d["advantage"] for d in dump)
    solved = [d for d in dump if d["role"] == "solver" and d["reward"] == 1.0]
    assert solved and all(d["status"] == "ok" and d["accuracy"] == 1.0 for d in solved)

    # The update moves the policy towards positively rewarded responses (measured by
    # transformers on the weights the engine was sent before and after step 1's update): they
    # gain log-prob against the negatively rewarded ones, and the policy-gradient objective
    # sum(A * log p) rises. (On a random model every response is near the uniform log(1/512);
    # Adam's sign-like first step moves all of them a little alike.)
    lps = json.loads((out / "logprobs.json").read_text())
    up = [x["after"] - x["before"] for x in lps if x["advantage"] > 0]
    down = [x["after"] - x["before"] for x in lps if x["advantage"] < 0]
    assert up and down
    assert sum(up) / len(up) > sum(down) / len(down)
    gain = sum(x["advantage"] * x["tokens"] * (x["after"] - x["before"]) for x in lps)
    assert gain > 0
