"""Math answers: cut the answer out of a response, then compare it with the gold by value.

Extraction follows the original's harness (spec §11): the ``<answer>`` block of an R1-format
response (the last ``\\boxed{}`` inside it if there is one), else the last ``\\boxed{}`` of the
text. A response with neither is either a bare answer (a predictions file may hold just ``204``)
or unformatted text, from which math-verify picks the final expression it can find.

Equivalence is math-verify's (Hugging Face, pinned in pyproject.toml): LaTeX and plain
expressions parsed to sympy, compared symbolically and numerically (fractions, radicals,
percentages, units and ``\\text{}`` dropped, intervals, tuples and sets, equations against
their right-hand side). math-verify bounds each parse and comparison with a SIGALRM timeout, so
grading runs on the main thread.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from megatron_azr.azr.parsing import extract_answer, first_turn
from megatron_azr.eval.benchmarks import last_boxed

# math-verify logs every unparsable candidate at WARNING: model text is full of them.
logging.getLogger("math_verify").setLevel(logging.ERROR)
logging.getLogger("latex2sympy2_extended").setLevel(logging.ERROR)

# `4.5e33` (Minerva's gold style) is not LaTeX: math-verify would read e as Euler's number.
_MATH_MODE = re.compile(r"(?<!\\)\$")  # math-mode delimiters; `\$` is a dollar sign
_SCIENTIFIC = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*[eE]\s*([-+]?\d+)\s*$")


@dataclass(frozen=True)
class MathAnswer:
    text: str  # what was extracted ("" = nothing)
    isolated: bool  # a delimited answer (boxed, <answer>, or the whole of a short reply)


def extract(response: str) -> MathAnswer:
    text = first_turn(response)
    answer = extract_answer(text)
    scope = answer if answer is not None else text
    boxed = last_boxed(scope)
    if boxed is not None:
        return MathAnswer(boxed, True)
    if answer is not None:
        return MathAnswer(answer, True)
    stripped = text.strip()
    # One line may be a bare answer (tried as one first); more is prose with the answer in it.
    return MathAnswer(stripped, "\n" not in stripped)


def _as_latex(answer: str) -> str:
    m = _SCIENTIFIC.match(answer)
    if m:
        answer = f"{m.group(1)} \\times 10^{{{m.group(2)}}}"
    return "\\boxed{" + _MATH_MODE.sub("", answer).strip() + "}"


def is_equivalent(gold: str, answer: MathAnswer) -> bool:
    """Does the extracted answer equal the gold answer (a LaTeX or plain expression)?"""
    from math_verify import parse, verify

    if not answer.text:
        return False
    gold_parsed = parse(_as_latex(gold))
    if not gold_parsed:
        return answer.text.strip() == gold.strip()
    target = parse(_as_latex(answer.text)) if answer.isolated else []
    if not target:
        target = parse(answer.text)
    return bool(target) and bool(verify(gold_parsed, target))


def grade(gold: str, response: str) -> tuple[bool, str]:
    """(correct, the extracted answer text)."""
    answer = extract(response)
    return is_equivalent(gold, answer), answer.text
