"""`azr train` end to end with the real components: megatron actor, torch rollout engine,
sandboxed executor, on the tiny random model (which never proposes a valid task: what is checked
is the loop, its checkpoints and its layouts, not learning)."""

import json
import re
from pathlib import Path

import pytest
from tiny_run import azr_train, metrics

pytestmark = pytest.mark.slow


def buffers(out: Path, step: int) -> dict[str, str]:
    d = out / "checkpoints" / f"step_{step:08d}" / "buffers"
    return {p.name: p.read_text() for p in sorted(d.glob("*.jsonl"))}


def test_train_checkpoints_and_resumes_exactly(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    first = azr_train(straight, "run.steps=3")
    azr_train(resumed, "run.steps=2")
    azr_train(resumed, "run.steps=3")  # picks up checkpoints/latest = step 2
    again = azr_train(resumed, "run.steps=3")  # finished: says so, loads no model

    rows = metrics(straight)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["samples"] == 12 for r in rows)  # 6 sub-batches of 2
    assert all(r["actor/tokens"] > 0 and r["actor/grad_norm"] > 0 for r in rows)
    assert metrics(resumed) == rows  # the resumed run replays step 3 exactly

    root = straight / "checkpoints"
    assert (root / "latest").read_text() == "step_00000003"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000002", "step_00000003"]
    assert buffers(straight, 3) == buffers(resumed, 3)
    state = json.loads((root / "step_00000003" / "trainer_state.json").read_text())
    assert state == {"step": 3, "actor_steps": 3}
    log = (resumed / "logs" / "rank0.log").read_text()
    assert "resumed from" in log and "[rank 0]" in log
    # Adam's state is resident before the rollout engine is built (the colocated vLLM sizes
    # itself against free memory): the actor's memory line, optimizer included, comes first.
    log = (straight / "logs" / "rank0.log").read_text()
    mem = log.index("actor memory on this rank before the rollout engine")
    assert mem < log.index("rollout engine torch built")
    assert float(re.search(r"optimizer ([\d.]+) MiB", log[mem:]).group(1)) > 0

    # Every response of a step is in its rollout dump, the same on a replay.
    dump = straight / "rollouts" / "step_00000003.jsonl"
    lines = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(lines) == 12 and {d["role"] for d in lines} == {"proposer", "solver"}
    assert all(d["reward"] == -1.0 and d["failure"] for d in lines if d["role"] == "proposer")
    assert (resumed / "rollouts" / "step_00000003.jsonl").read_text() == dump.read_text()
    # The end of a run: where it is and how it went; a rerun of a finished run says so.
    assert f"run directory: {straight}" in first.stdout and str(dump) in first.stdout
    assert "deduction" in first.stdout.split("step 3:")[1]
    assert "is finished (checkpoint at step 3, run.steps=3)" in again.stdout
    assert "resumed from" not in again.stderr and len(metrics(resumed)) == 3


@pytest.mark.parametrize(
    "layout",
    [
        ("parallel.tp=2",),  # one engine on rank 0, completions broadcast
        ("rollout.placement=replicas",),  # data parallel: an engine per rank, prompts dealt out
    ],
    ids=["tp2-leader", "dp2-replicas"],
)
def test_two_process_run_matches_single_process(tmp_path, layout):
    single, tp2 = tmp_path / "single", tmp_path / "two"
    azr_train(single, "run.steps=1")
    azr_train(tp2, "run.steps=1", *layout, nproc=2)
    a, b = metrics(single)[0], metrics(tp2)[0]
    exact = {k for k in a if not k.startswith("actor/")}
    # Seeded per prompt, the rollouts do not depend on which rank generates them: the
    # verdicts, rewards and advantages are identical.
    assert {k: a[k] for k in exact} == {k: b[k] for k in exact}
    for k in ("actor/loss", "actor/entropy", "actor/grad_norm"):
        assert b[k] == pytest.approx(a[k], rel=1e-4), k
    for rank in (0, 1):
        assert f"[rank {rank}]" in (tp2 / "logs" / f"rank{rank}.log").read_text()
