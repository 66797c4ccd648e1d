"""What the model is shown for each benchmark, under each template (``EvalConfig.template``).

``azr`` and ``azr-chat`` are the AZR evaluation prompts: the R1 think/answer template around
the task (the CRUXEval tasks are the AZR solver prompts themselves; code asks for a
self-contained script in a markdown block, as the original's EvalPlus fork did; math is the
problem alone, answered in ``<answer>``). ``plain`` is each benchmark's base-model prompt: code
prompts are continued as they stand (HumanEval's function body, MBPP+'s docstring), math asks
for a ``\\boxed{}`` answer (the original's ``qwen-boxed`` instruction). ``chat`` puts the plain
prompt in a user message of the model's chat template.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from megatron_azr.azr.prompts import Wrap, prompt_wrap, r1_wrap, solver_prompt
from megatron_azr.azr.tasks import Triplet
from megatron_azr.eval.benchmarks import Benchmark, Problem
from megatron_azr.eval.code import cruxeval_task
from megatron_azr.eval.config import Template

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CODE_INSTRUCTION = (
    "Please provide a self-contained Python script that solves the following problem in a "
    "markdown code block:"
)
# Codex's stops for a base model continuing a HumanEval function: the next top-level statement.
CONTINUATION_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")


@dataclass(frozen=True)
class PromptStyle:
    """A template made concrete: the task body style and the text around it."""

    template: Template
    wrap: Wrap  # body -> the full prompt

    @property
    def azr(self) -> bool:
        return self.template in ("azr", "azr-chat")


def style(template: Template, tokenizer: Any = None, wrap: Wrap | None = None) -> PromptStyle:
    """``wrap`` overrides the R1 wrapper of the azr templates (the trainer passes its own)."""
    if template == "azr":
        return PromptStyle(template, wrap or r1_wrap)
    if template == "azr-chat":
        return PromptStyle(template, wrap or prompt_wrap("chat", tokenizer))
    if template == "plain":
        return PromptStyle(template, _identity)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("template 'chat' needs a tokenizer with a chat template")
    return PromptStyle(template, _chat_user(tokenizer))


def _identity(text: str) -> str:
    return text


def _chat_user(tokenizer: Any) -> Callable[[str], str]:
    def wrap(text: str) -> str:
        messages = [{"role": "user", "content": text}]
        return str(
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        )

    return wrap


def continues_code(bench: Benchmark, s: PromptStyle) -> bool:
    """Does the prompt end inside the program (the response continues it)?"""
    return s.template == "plain" and bench.fmt in ("tests", "evalplus", "lcb")


def prompt(bench: Benchmark, problem: Problem, s: PromptStyle) -> str:
    if bench.domain == "crux":
        task = cruxeval_task(bench)
        triplet = Triplet(
            problem.question, str(problem.record["input"]), str(problem.record["output"])
        )
        return solver_prompt(task, triplet, wrap=s.wrap)
    if bench.domain == "math":
        body = problem.question if s.azr else f"{problem.question}\n{MATH_INSTRUCTION}"
        return s.wrap(body)
    if continues_code(bench, s):
        if bench.fmt == "lcb":
            starter = str(problem.record.get("starter_code") or "")
            return f"{problem.question.strip()}\n\n```python\n{starter}"
        return problem.question
    return s.wrap(_code_body(bench, problem))


def _code_body(bench: Benchmark, problem: Problem) -> str:
    if bench.fmt == "lcb":
        starter = str(problem.record.get("starter_code") or "")
        if starter:
            return (
                f"{problem.question.strip()}\n\nYou will use the following starter code to write "
                f"the solution and enclose it in a python code block:\n```python\n{starter}\n```"
            )
        return (
            f"{problem.question.strip()}\n\nRead the inputs from stdin, solve the problem and "
            "write the answer to stdout, in a python code block."
        )
    return f"{CODE_INSTRUCTION}\n```python\n{problem.question.strip()}\n```"


def stops(bench: Benchmark, s: PromptStyle) -> tuple[str, ...]:
    if s.azr:
        return ("</answer>",)  # what follows the answer is never graded
    if continues_code(bench, s):
        return ("\n```",) if bench.fmt == "lcb" else CONTINUATION_STOPS
    return ()
