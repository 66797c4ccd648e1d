"""Turning model text into tasks and answers (spec §5.1, §6.1, §6.2).

Everything here takes untrusted model output and never raises on it: a function either returns
what it found or ``None`` / a :class:`ParseFailure` naming why not. Nothing is executed: answers
are only cut out of the text; running and comparing them is the executor's job.

Fenced blocks are read the way markdown pairs them (one opening fence, the next closing fence),
so a ```` ```input ```` block is never mistaken for code. The code block of a proposal is the first
fence tagged ``python`` (or ``py``/``python3``) or untagged; the original's pattern also accepted
a first fence of any other tag as code, which only ever produced invalid programs.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Literal

from megatron_azr.azr.protocols import TaskType

# ---------------------------------------------------------------------------------------------
# Answer extraction and the think/answer format check


def first_turn(response: str) -> str:
    """The response up to a second ``Assistant:`` turn. A model that keeps writing the dialogue
    after its answer (``User: ...`` then ``Assistant: ...``) is judged on its own first turn only,
    as the original did (it split the decoded text on ``Assistant:``)."""
    return response.split("Assistant:", 1)[0]


def extract_answer(response: str) -> str | None:
    """Text after the last ``<answer>`` up to the next ``</answer>`` (or the end), stripped.

    ``None`` when there is no ``<answer>`` tag at all (the original's empty extraction).
    """
    if "<answer>" not in response:
        return None
    return response.rsplit("<answer>", 1)[1].split("</answer>", 1)[0].strip()


def extract_thought(response: str) -> str:
    """The text of the think block the prompt opened, up to ``</think>`` (or the end)."""
    return ("<think>" + response).rsplit("<think>", 1)[1].split("</think>", 1)[0].strip()


# Anchored at the start of the generation; text after </answer> is tolerated (spec §6.1).
FORMAT_RE = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)


def is_well_formatted(response: str, prompt_opens_think: bool = True) -> bool:
    """The R1 format check. Every AZR prompt ends in ``Assistant: <think>``, so the response
    itself starts inside the think block: the check runs on ``<think>`` + response, which is the
    original's "text after ``Assistant:``"."""
    text = ("<think>" + response) if prompt_opens_think else response
    return FORMAT_RE.match(text.strip()) is not None


# ---------------------------------------------------------------------------------------------
# Fenced blocks


@dataclass(frozen=True)
class Fence:
    tag: str  # lower-cased language tag, "" when untagged
    body: str  # stripped


_FENCE_RE = re.compile(r"```[ \t]*([\w+.-]*)[ \t]*\n?(.*?)\n?[ \t]*```", re.DOTALL)
CODE_TAGS = frozenset({"", "python", "py", "python3"})


def fences(text: str) -> list[Fence]:
    return [Fence(m.group(1).lower(), m.group(2).strip()) for m in _FENCE_RE.finditer(text)]


def _first(blocks: list[Fence], tags: frozenset[str] | set[str]) -> str | None:
    return next((b.body for b in blocks if b.tag in tags), None)


def _last(blocks: list[Fence], tags: frozenset[str] | set[str]) -> str | None:
    return next((b.body for b in reversed(blocks) if b.tag in tags), None)


def _last_match(pattern: str, text: str) -> re.Match[str] | None:
    last = None
    for last in re.finditer(pattern, text, re.IGNORECASE):  # noqa: B007 (we want the last one)
        pass
    return last


def _after_marker(text: str, marker: str, last: bool = True) -> str | None:
    """``# Input: ...`` style fallback: from the last (or first) marker to the next fence or the
    end of the text."""
    pattern = re.escape(marker)
    found = _last_match(pattern, text) if last else re.search(pattern, text, re.IGNORECASE)
    if found is None:
        return None
    rest = text[found.end() :]
    return rest.split("\n```", 1)[0].strip()


def _call_arg(text: str, name: str) -> str | None:
    """``input(...)`` fallback: the last ``name(`` up to the first ``)`` after it."""
    if ")" not in text:
        return None
    matches = list(re.finditer(rf"{name}\s*\((.*?)\)", text, re.DOTALL | re.IGNORECASE))
    return matches[-1].group(1).strip() if matches else None


def _tag_body(text: str, tag: str) -> str | None:
    """``<input> ... </input>`` fallback (closing tag optional)."""
    last = _last_match(f"<{tag}>", text)
    if last is None:
        return None
    rest = text[last.end() :]
    close = re.search(f"</{tag}>", rest, re.IGNORECASE)
    return (rest[: close.start()] if close else rest).strip()


def _phrase(text: str, phrase: str) -> str | None:
    """``the input is ...`` fallback: everything after the phrase, minus one final period."""
    last = _last_match(re.escape(phrase), text)
    if last is None:
        return None
    rest = text[last.end() :].strip()
    return rest[:-1].strip() if rest.endswith(".") else rest


def _solver_value(answer: str, kind: Literal["input", "output"]) -> str:
    """The solver's input (abduction) or output (deduction) from its ``<answer>`` text, with the
    original's fallbacks in order; the whole answer text when nothing matches."""
    for found in (
        _last(fences(answer), {kind}),
        _after_marker(answer, f"# {kind}:"),
        _call_arg(answer, kind),
        _tag_body(answer, kind),
        _phrase(answer, f"the {kind} is"),
    ):
        if found is not None:
            return found
    return answer


def extract_solver_answer(task: TaskType, response: str) -> str | None:
    """What the solver answered: argument text (abduction), a literal (deduction) or a program
    (induction). ``None`` when there is no ``<answer>`` block, or, for induction, no code fence
    inside it; such answers are graded wrong without being run."""
    answer = extract_answer(response)
    if answer is None:
        return None
    if task is TaskType.ABDUCTION:
        return _solver_value(answer, "input")
    if task is TaskType.DEDUCTION:
        return _solver_value(answer, "output")
    code = _last(fences(answer), CODE_TAGS)
    return code if code else None


# ---------------------------------------------------------------------------------------------
# Program analysis (AST only; nothing is executed)


@dataclass(frozen=True)
class ParseFailure:
    """Why a proposal could not be turned into a task (a metric label, not an exception)."""

    reason: str


def _parse(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


_FUNCTION_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef)


def count_function_defs(tree: ast.AST) -> int:
    """Every ``def`` in the program, nested helpers and methods included (spec §5.1 step 3)."""
    return sum(isinstance(n, _FUNCTION_DEFS) for n in ast.walk(tree))


def entry_function_name(tree: ast.Module, entry_function: Literal["first", "last"]) -> str | None:
    """The module-level function that becomes ``f``: ``f`` itself if defined, else the first
    (Qwen runs) or last (Llama run) module-level ``def``."""
    names = [n.name for n in tree.body if isinstance(n, _FUNCTION_DEFS)]
    if not names:
        return None
    if "f" in names:
        return "f"
    return names[0] if entry_function == "first" else names[-1]


_DEF_NAME_RE = re.compile(r"(?:async\s+)?def\s+(\w+)")


def rename_function(code: str, old: str, new: str) -> str | None:
    """Rename function ``old`` to ``new``: its ``def`` and every reference to the name (recursive
    calls, passing it around), located through the AST so strings, comments, attributes
    (``obj.old``) and keyword arguments are untouched. Comments are kept: they are the proposer's
    channel to the solver (spec §13.2). ``None`` if the code does not parse."""
    code = code.replace("\r\n", "\n").replace("\r", "\n")
    tree = _parse(code)
    if tree is None:
        return None
    lines = code.split("\n")
    spots: set[tuple[int, int]] = set()  # (0-based line, character column) where `old` starts

    def char_col(lineno: int, byte_col: int) -> int:
        return len(lines[lineno - 1].encode()[:byte_col].decode(errors="ignore"))

    for node in ast.walk(tree):
        if isinstance(node, ast.Name | ast.arg):
            if (node.id if isinstance(node, ast.Name) else node.arg) != old:
                continue
            spots.add((node.lineno - 1, char_col(node.lineno, node.col_offset)))
        elif isinstance(node, _FUNCTION_DEFS) and node.name == old:
            col = char_col(node.lineno, node.col_offset)
            m = _DEF_NAME_RE.match(lines[node.lineno - 1], col)
            if m is None or m.group(1) != old:
                return None  # `def` split over lines with a backslash: not worth supporting
            spots.add((node.lineno - 1, m.start(1)))
    for row, col in sorted(spots, reverse=True):
        line = lines[row]
        if line[col : col + len(old)] != old:
            return None
        lines[row] = line[:col] + new + line[col + len(old) :]
    return "\n".join(lines)


def collect_imports(code: str) -> list[str]:
    """Import statements of the program, one normalised line each (the original's
    ``parse_imports``); they are prepended to induction answers when those are checked."""
    tree = _parse(code)
    if tree is None:
        return [m.strip() for m in re.findall(r"^\s*(?:from|import)\s+.*$", code, re.MULTILINE)]
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in node.names)
            if isinstance(node, ast.Import):
                lines.append(f"import {names}")
            else:
                lines.append(f"from {'.' * node.level}{node.module or ''} import {names}")
    return lines


def _drop_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    first = body[0] if body else None
    is_doc = (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    )
    return body[1:] if is_doc and len(body) > 1 else body


def strip_for_seeding(code: str) -> str:
    """Seeding-only clean-up (spec §3 step 2): drop comments and docstrings and every module-level
    statement that is not an import, function or class. Never applied in self-play, where
    comments carry information to the solver and removing them hurt (spec §13.2)."""
    tree = _parse(code)
    if tree is None:
        return code
    keep = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    tree.body = [n for n in tree.body if isinstance(n, keep)]
    for node in ast.walk(tree):
        if isinstance(node, (*_FUNCTION_DEFS, ast.ClassDef)):
            node.body = _drop_docstring(node.body)
    try:
        return ast.unparse(tree)
    except (ValueError, RecursionError):
        return code


# ---------------------------------------------------------------------------------------------
# Proposals


@dataclass(frozen=True)
class ProgramProposal:
    """A parsed deduction/abduction proposal: program (entry renamed to ``f``) and one input."""

    code: str
    input: str
    imports: list[str] = field(default_factory=list)
    original_code: str = ""


@dataclass(frozen=True)
class InductionProposal:
    inputs: list[str]
    message: str


def parse_program_proposal(
    response: str,
    *,
    reject_multiple_functions: bool = True,
    entry_function: Literal["first", "last"] = "first",
    seeding: bool = False,
) -> ProgramProposal | ParseFailure:
    """Spec §5.1: code = first python/untagged fence inside ``<answer>``, input = first
    ``input`` fence (fallback ``# Input:``); at least one ``def``, exactly one when
    ``reject_multiple_functions``; entry renamed to ``f``; imports collected."""
    answer = extract_answer(response)
    if answer is None:
        return ParseFailure("no_answer")
    blocks = fences(answer)
    code = _first(blocks, CODE_TAGS)
    if not code:
        return ParseFailure("no_code")
    inp = _first(blocks, {"input"})
    if inp is None:
        inp = _after_marker(answer, "# Input:", last=False)
    if not inp:
        return ParseFailure("no_input")
    code = code.replace("\r\n", "\n").replace("\r", "\n")
    tree = _parse(code)
    if tree is None:
        return ParseFailure("syntax")
    n_defs = count_function_defs(tree)
    if n_defs == 0:
        return ParseFailure("no_function")
    if reject_multiple_functions and n_defs > 1:
        return ParseFailure("multiple_functions")
    entry = entry_function_name(tree, entry_function)
    if entry is None:
        return ParseFailure("no_function")
    if entry != "f":
        renamed = rename_function(code, entry, "f")
        if renamed is None:
            return ParseFailure("rename")
        code = renamed
    imports = collect_imports(code)
    original = code
    if seeding:
        code = strip_for_seeding(code)
    return ProgramProposal(code=code, input=inp, imports=imports, original_code=original)


def parse_induction_proposal(response: str, n_inputs: int) -> InductionProposal | ParseFailure:
    """Spec §5.2 (induction): the last ``n_inputs`` ``input`` fences and a message (``message``
    fence, else ``<message>`` tags, else ``# Message:``)."""
    answer = extract_answer(response)
    if answer is None:
        return ParseFailure("no_answer")
    blocks = fences(answer)
    inputs = [b.body for b in blocks if b.tag == "input"]
    if len(inputs) < n_inputs:
        return ParseFailure("too_few_inputs")
    inputs = inputs[len(inputs) - n_inputs :]
    if any(not i for i in inputs):
        return ParseFailure("empty_input")
    message = _first(blocks, {"message"})
    if message is None:
        message = _tag_body(answer, "message")
    if message is None:
        message = _after_marker(answer, "# Message:", last=False)
    if message is None:
        return ParseFailure("no_message")
    return InductionProposal(inputs=inputs, message=message)
