"""Math answers: extraction from responses, equivalence through math-verify, and the shipped
benchmarks' gold answers scoring 100% through both."""

from itertools import pairwise

import pytest

from megatron_azr.eval.benchmarks import BENCHMARKS, last_boxed
from megatron_azr.eval.math_answers import MathAnswer, extract, grade, is_equivalent

MATH = [name for name, b in BENCHMARKS.items() if b.domain == "math"]


@pytest.mark.parametrize(
    ("gold", "answer"),
    [
        ("\\frac{1}{2}", "0.5"),  # fractions
        ("\\frac{1}{2}", "1/2"),
        ("\\dfrac12", "\\frac{1}{2}"),
        ("\\frac{\\sqrt{2}}{2}", "\\sqrt2/2"),
        ("70000", "70,000"),  # thousands separators
        ("18", "\\$18"),  # currency
        ("1.6", "1.6 \\mathrm{~cm}"),  # units
        ("204", "204 \\text{ minutes}"),
        ("90", "90^\\circ"),
        ("10\\%", "0.1"),  # percentages
        ("(0,1]", "(0, 1]"),  # intervals
        ("x \\in [2, 5)", "[2,5)"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)"),  # tuples, LaTeX delimiters
        ("2, 3", "3, 2"),  # an unordered answer list
        ("y = 2x + 1", "2x+1"),  # an equation against its right-hand side
        ("4.5e33", "4.5 \\times 10^{33}"),  # Minerva's scientific notation
        ("27.0", "27"),
        ("\\text{(C)}", "C"),
    ],
)
def test_equivalent_forms_match(gold, answer):
    assert is_equivalent(gold, MathAnswer(answer, True))


@pytest.mark.parametrize(
    ("gold", "answer"),
    [("3", "4"), ("(0,1]", "(0,1)"), ("(0,1]", "[0,1]"), ("\\frac{1}{2}", "0.51"), ("18", "")],
)
def test_different_answers_do_not_match(gold, answer):
    assert not is_equivalent(gold, MathAnswer(answer, True))


def test_last_boxed_balances_braces():
    assert (
        last_boxed("a \\boxed{1} then \\boxed{\\frac{1}{\\sqrt{2}}} end") == "\\frac{1}{\\sqrt{2}}"
    )
    assert last_boxed("\\boxed 5$") == "5"
    assert last_boxed("\\fbox{7}") == "7"
    assert last_boxed("no box here") is None


def test_extraction_prefers_the_answer_block_then_its_last_box():
    r1 = "reasoning \\boxed{1}</think> <answer>so \\boxed{2} and \\boxed{3}</answer>"
    assert extract(r1) == MathAnswer("3", True)
    assert extract("think</think><answer> 42 </answer>") == MathAnswer("42", True)
    assert extract("Work... so the answer is \\boxed{7}.") == MathAnswer("7", True)
    # Only the first turn counts: a model that goes on with the dialogue is not graded on it.
    assert extract("<answer>5</answer>\nUser: again\nAssistant: <answer>6</answer>").text == "5"
    assert extract("204") == MathAnswer("204", True)  # a bare answer (predictions files)


def test_unformatted_prose_is_graded_on_its_final_expression():
    ok, _ = grade("12", "We add 5 and 7.\nThe final answer is $12$.")
    assert ok
    ok, _ = grade("12", "We add 5 and 7.\nThe final answer is $13$.")
    assert not ok


@pytest.mark.parametrize("name", MATH)
def test_gold_answers_score_100_percent_on_every_math_benchmark(name):
    """The first 60 problems of each (all of them: the slow test below), the gold answer boxed in
    an R1 response, and bare."""
    problems = BENCHMARKS[name].load()[:60]
    for p in problems:
        boxed = f"<think>...</think> <answer>The answer is \\boxed{{{p.answer}}}.</answer>"
        assert grade(p.answer, boxed)[0], (p.id, p.answer)
        assert grade(p.answer, p.answer)[0], (p.id, p.answer)


@pytest.mark.slow
@pytest.mark.parametrize("name", MATH)
def test_gold_answers_score_100_percent_on_whole_math_benchmarks(name):
    problems = BENCHMARKS[name].load()
    correct = sum(grade(p.answer, f"<answer>\\boxed{{{p.answer}}}</answer>")[0] for p in problems)
    assert correct == len(problems)


def test_minerva_gold_solutions_grade_through_their_last_box():
    problems = BENCHMARKS["minerva"].load()[:40]
    assert all(grade(p.answer, p.record["solution"])[0] for p in problems)


def test_shuffled_gold_answers_score_near_zero():
    problems = BENCHMARKS["math500"].load()[:100]
    shifted = [grade(p.answer, f"\\boxed{{{q.answer}}}")[0] for p, q in pairwise(problems)]
    assert sum(shifted) <= 3
