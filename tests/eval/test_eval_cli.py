"""`azr eval --predictions` end to end (a subprocess, as a user runs it), pass@k, the results
table with the paper's numbers, and benchmark names."""

import json
import subprocess
import sys

import pytest
from processes import ROOT, child_env

from megatron_azr.eval.benchmarks import BENCHMARKS, resolve
from megatron_azr.eval.paper import REPORTED, match_model
from megatron_azr.eval.runner import pass_at_k
from megatron_azr.eval.table import averages, render


def azr_eval(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "megatron_azr.cli", "eval", *args]
    return subprocess.run(
        cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300
    )


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.sandbox
def test_predictions_are_scored_and_the_last_line_is_pass_at_1(tmp_path):
    problems = BENCHMARKS["humaneval"].load()[:10]
    # Half the problems get their canonical body (a continuation of the prompt), half a wrong one.
    rows = [
        {
            "task_id": p.id,
            "completion": p.record["canonical_solution"] if i % 2 else "    return 0\n",
        }
        for i, p in enumerate(problems)
    ]
    preds = _write(tmp_path / "preds.jsonl", rows)
    r = azr_eval("--benchmark", "humaneval", "--predictions", preds, "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == "pass@1: 50.00"
    assert "scored 10 problems (154 of 164 without a prediction)" in r.stdout
    scored = json.loads((tmp_path / "o" / "humaneval.json").read_text())
    assert [row["passed"] for row in scored["problems"]] == [[bool(i % 2)] for i in range(10)]


def test_math_predictions_take_bare_answers_and_report_pass_at_k(tmp_path):
    problems = BENCHMARKS["gsm8k"].load()[:4]
    # Two samples per problem: one right (bare), one wrong; problem 0 gets two right.
    rows = [{"idx": int(p.id), "completion": p.answer} for p in problems]
    rows += [
        {"idx": int(p.id), "completion": p.answer if i == 0 else "-1"}
        for i, p in enumerate(problems)
    ]
    preds = _write(tmp_path / "gsm.jsonl", rows)
    r = azr_eval("--benchmark", "gsm8k", "--predictions", preds, "--pass-k", "1", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    tail = r.stdout.strip().splitlines()[-2:]
    assert tail == ["pass@2: 100.00", "pass@1: 62.50"]  # (1 + 0.5 * 3) / 4


def test_predictions_for_unknown_problems_are_refused(tmp_path):
    preds = _write(tmp_path / "p.jsonl", [{"idx": 999999, "completion": "1"}])
    r = azr_eval("--benchmark", "gsm8k", "--predictions", preds)
    assert r.returncode == 2 and "has no problem '999999'" in r.stderr


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 4, 2) == 1.0


def test_table_puts_the_paper_row_beside_the_run():
    pass1 = {"humaneval": 10.0, "mbpp+": 20.0, "math500": 5.0, "aime24": 0.0, "gsm8k": 30.0}
    titles = {"gsm8k": "GSM8K"}
    text = render(pass1, "my-model", "Qwen2.5-7B", titles)
    header, _, ours, paper, *notes = text.splitlines()
    assert header == (
        "| model | HEval+ | MBPP+ | AIME24 | MATH500 | GSM8K | Code avg | Math avg | Overall |"
    )
    # GSM8K is shown but is not one of the paper's benchmarks: it stays out of the averages.
    assert ours == "| my-model | 10.0 | 20.0 | 0.0 | 5.0 | 30.0 | 15.0 | 2.5 | 8.8 |"
    q = REPORTED["Qwen2.5-7B"]
    code, maths = (q["HEval+"] + q["MBPP+"]) / 2, (q["AIME24"] + q["MATH500"]) / 2
    assert paper.endswith(f"| {code:.1f} | {maths:.1f} | {(code + maths) / 2:.1f} |")
    assert any("HumanEval's base tests" in n for n in notes)


def test_the_papers_own_averages_are_reproduced_from_its_columns():
    # Table 1 prints CAvg/MAvg/AVG for AZR-Coder-7B as 61.6 / 39.1 / 50.4.
    avg = averages(REPORTED["AZR-Coder-7B"])
    assert [round(avg[k], 1) for k in ("Code avg", "Math avg", "Overall")] == [61.6, 39.1, 50.4]


def test_model_names_find_their_paper_rows():
    assert match_model("/models/Qwen2.5-7B") == "Qwen2.5-7B"
    assert match_model("/models/qwen2.5-7b-coder/") == "Qwen2.5-Coder-7B"
    assert match_model("/work/.cache/models/SmolLM2-135M-Instruct") is None


def test_benchmark_names():
    assert resolve("MBPPPLUS").name == "mbpp+"
    with pytest.raises(ValueError, match="no shipped data"):
        resolve("livecodebench")
    with pytest.raises(ValueError, match="unknown benchmark"):
        resolve("mmlu")
