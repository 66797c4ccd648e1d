"""What each template shows the model, per benchmark kind."""

import pytest
from transformers import AutoTokenizer

from megatron_azr.azr.prompts import R1_TEMPLATE
from megatron_azr.eval.benchmarks import BENCHMARKS
from megatron_azr.eval.prompts import (
    CONTINUATION_STOPS,
    MATH_INSTRUCTION,
    continues_code,
    prompt,
    stops,
    style,
)
from megatron_azr.models import smollm2

R1_HEAD = R1_TEMPLATE.split("{prompt}")[0]


def _first(name):
    return BENCHMARKS[name], BENCHMARKS[name].load()[0]


@pytest.mark.parametrize("name", ["cruxeval-i", "cruxeval-o", "humaneval", "mbpp+", "math500"])
def test_azr_template_is_the_r1_template_stopped_after_the_answer(name):
    bench, problem = _first(name)
    s = style("azr")
    text = prompt(bench, problem, s)
    assert text.startswith(R1_HEAD) and text.endswith("Assistant: <think>")
    assert stops(bench, s) == ("</answer>",) and not continues_code(bench, s)


def test_azr_cruxeval_prompts_are_the_solver_prompts():
    bench, problem = _first("cruxeval-i")
    text = prompt(bench, problem, style("azr"))
    assert "Find an Input" in text and problem.question in text and problem.record["output"] in text
    assert problem.record["input"] not in text.split("# Output:")[1]  # the answer is not shown
    bench, problem = _first("cruxeval-o")
    assert "Predict the Output" in prompt(bench, problem, style("azr"))


def test_plain_template_continues_code_and_asks_math_for_a_box():
    bench, problem = _first("humaneval")
    s = style("plain")
    assert prompt(bench, problem, s) == problem.question
    assert continues_code(bench, s) and stops(bench, s) == CONTINUATION_STOPS
    bench, problem = _first("aime24")
    assert prompt(bench, problem, s) == f"{problem.question}\n{MATH_INSTRUCTION}"


def test_chat_templates_use_the_models_chat_template():
    tokenizer = AutoTokenizer.from_pretrained(smollm2.build()[0])
    bench, problem = _first("gsm8k")
    chat = prompt(bench, problem, style("chat", tokenizer))
    assert chat.startswith("<|im_start|>") and MATH_INSTRUCTION in chat
    assert chat.endswith("<|im_start|>assistant\n")
    azr_chat = prompt(bench, problem, style("azr-chat", tokenizer))
    assert "<answer> </answer>" in azr_chat and azr_chat.endswith("<think>")
    with pytest.raises(ValueError, match="chat template"):
        style("chat", tokenizer=None)
