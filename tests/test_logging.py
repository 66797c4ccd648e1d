import json
import logging

from megatron_azr.telemetry.logs import setup_logging


def test_rank_in_every_line(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "3")
    log_file = tmp_path / "run.log"
    setup_logging("INFO", log_file)
    logging.getLogger("megatron_azr.test").info("hello")
    logging.getLogger("other").warning("world")
    for h in logging.getLogger().handlers:
        h.flush()
    lines = log_file.read_text().splitlines()
    assert len(lines) == 2
    assert all("[rank 3]" in line for line in lines)
    setup_logging("INFO", log_file, rank=0)  # idempotent: replaces, does not stack handlers
    logging.getLogger("x").info("again")
    assert log_file.read_text().splitlines()[-1].count("again") == 1
    assert "[rank 0]" in log_file.read_text().splitlines()[-1]


def test_rollout_dump_keeps_a_deterministic_share(tmp_path):
    from megatron_azr.telemetry.rollouts import dump_path, dump_rollouts

    rows = [{"i": i, "role": "solver"} for i in range(400)]
    path = dump_rollouts(tmp_path, 7, rows, 1.0, seed=1)
    assert path == dump_path(tmp_path, 7) == tmp_path / "rollouts" / "step_00000007.jsonl"
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows

    kept = dump_rollouts(tmp_path, 7, rows, 0.25, seed=1).read_text()
    assert 60 < len(kept.splitlines()) < 140
    assert dump_rollouts(tmp_path, 7, rows, 0.25, seed=1).read_text() == kept  # a replay
    assert dump_rollouts(tmp_path, 8, rows, 0.25, seed=1).read_text() != kept


def test_summary_names_rates_per_task_and_where_to_look(tmp_path):
    from megatron_azr.telemetry.rollouts import dump_rollouts, summary

    dump_rollouts(tmp_path, 3, [{"x": 1}], 1.0, seed=0)
    metrics = {"deduction/propose/n": 4.0, "deduction/propose/valid_rate": 0.25,
               "deduction/solve/accuracy": 0.5}  # fmt: skip
    text = summary(tmp_path, 3, metrics)
    line = next(x for x in text.splitlines() if x.startswith("deduction"))
    assert line.split() == ["deduction", "4", "0.25", "0.00", "0.00", "0", "0.50", "0.00"]
    assert "abduction" not in text  # a task type the run does not play
    assert str(tmp_path / "rollouts" / "step_00000003.jsonl") in text
    assert str(tmp_path / "metrics.jsonl") in text
