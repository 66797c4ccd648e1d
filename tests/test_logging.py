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
