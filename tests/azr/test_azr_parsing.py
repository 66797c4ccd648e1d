import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_azr.azr.parsing import (
    InductionProposal,
    ParseFailure,
    ProgramProposal,
    collect_imports,
    extract_answer,
    extract_solver_answer,
    extract_thought,
    fences,
    is_well_formatted,
    parse_induction_proposal,
    parse_program_proposal,
    rename_function,
    strip_for_seeding,
)
from megatron_azr.azr.protocols import TaskType

ABD, DED, IND = TaskType.ABDUCTION, TaskType.DEDUCTION, TaskType.INDUCTION


def resp(body: str, think: str = "plan") -> str:
    return f"{think}</think>\n<answer>\n{body}\n</answer>"


def program(code: str, inp: str = "1") -> str:
    return resp(f"```python\n{code}\n```\n\n```input\n{inp}\n```")


# ---------------------------------------------------------------------------- answer & format


def test_answer_is_after_last_tag_up_to_next_close():
    text = "a <answer>first</answer> b <answer> second </answer> tail </answer>"
    assert extract_answer(text) == "second"
    assert extract_answer("x <answer> open to the end") == "open to the end"
    assert extract_answer("no tag at all") is None
    assert extract_thought("I think</think><answer>1</answer>") == "I think"


@pytest.mark.parametrize(
    "response, ok",
    [
        ("reasoning</think> <answer>x</answer>", True),
        ("reasoning</think>\n\n<answer>x</answer> trailing text is fine", True),
        ("</think><answer></answer>", True),
        ("reasoning <answer>x</answer>", False),  # think never closed
        ("reasoning</think> text <answer>x</answer>", False),  # text between the blocks
        ("reasoning</think> <answer>x", False),  # answer never closed
        ("", False),
    ],
)
def test_format_regex(response, ok):
    assert is_well_formatted(response) is ok


def test_format_without_think_in_prompt_is_anchored():
    assert is_well_formatted("<think>a</think><answer>b</answer>", prompt_opens_think=False)
    assert not is_well_formatted("hi <think>a</think><answer>b</answer>", prompt_opens_think=False)


def test_fences_pair_in_order_and_lowercase_tags():
    blocks = fences("```Python\nx = 1\n```\ntext\n```input\n'a', 2\n```\n```\nbare\n```")
    assert [(b.tag, b.body) for b in blocks] == [
        ("python", "x = 1"),
        ("input", "'a', 2"),
        ("", "bare"),
    ]
    assert [(b.tag, b.body) for b in fences("```input 'x'```")] == [("input", "'x'")]


# ---------------------------------------------------------------------------- program proposals


def test_spec_example_proposal():
    code = "def f(name: str, info: dict):\n    return name + str(info['age'])"
    parsed = parse_program_proposal(program(code, "'John', {'age': 20, 'city': 'New York'}"))
    assert parsed == ProgramProposal(
        code=code, input="'John', {'age': 20, 'city': 'New York'}", imports=[], original_code=code
    )


def test_code_is_first_python_or_untagged_fence_and_input_first_input_fence():
    body = (
        "```input\n'first'\n```\n```\ndef g(x):\n    return x\n```\n"
        "```python\ndef h(y):\n    return y\n```\n```input\n'second'\n```"
    )
    parsed = parse_program_proposal(resp(body))
    assert isinstance(parsed, ProgramProposal)
    assert parsed.code == "def f(x):\n    return x" and parsed.input == "'first'"


def test_input_fallback_comment_line():
    body = "```python\ndef f(a):\n    return a\n```\n# Input: 42\n```\n# Input: 43"
    parsed = parse_program_proposal(resp(body))
    assert isinstance(parsed, ProgramProposal) and parsed.input == "42"  # the first one


@pytest.mark.parametrize(
    "text, reason",
    [
        ("no answer tags ```python\ndef f(a):\n    return a\n```", "no_answer"),
        (resp("```input\n1\n```"), "no_code"),
        (resp("```python\ndef f(a):\n    return a\n```"), "no_input"),
        (program("def f(a)\n    return a"), "syntax"),
        (program("x = 1"), "no_function"),
        (program("class A:\n    def f(self):\n        return 1"), "no_function"),
        (
            program("def f(a):\n    def g(b):\n        return b\n    return g(a)"),
            "multiple_functions",
        ),
        (program("def g(a):\n    return a\ndef f(a):\n    return g(a)"), "multiple_functions"),
    ],
)
def test_proposal_failures(text, reason):
    assert parse_program_proposal(text) == ParseFailure(reason)


def test_multiple_functions_allowed_by_switch_first_and_last_entry():
    code = "def helper(a):\n    return a + 1\n\ndef solve(a):\n    return helper(a) * 2"
    first = parse_program_proposal(program(code), reject_multiple_functions=False)
    assert isinstance(first, ProgramProposal)
    assert first.code.startswith("def f(a):") and "return f(a) * 2" in first.code
    last = parse_program_proposal(
        program(code), reject_multiple_functions=False, entry_function="last"
    )
    assert isinstance(last, ProgramProposal)
    assert "def helper(a)" in last.code and "def f(a):\n    return helper(a) * 2" in last.code
    # An existing `f` is the entry whatever the position.
    keep = "def g(a):\n    return a\ndef f(a):\n    return g(a)"
    kept = parse_program_proposal(program(keep), reject_multiple_functions=False)
    assert isinstance(kept, ProgramProposal) and kept.code == keep


def test_rename_covers_recursion_but_not_strings_comments_attributes_kwargs():
    code = (
        "import functools\n"
        "@functools.lru_cache(None)\n"
        "def fib(n):\n"
        "    # fib(n) recursion; obj.fib stays\n"
        "    s = 'fib(3)'\n"
        "    g = fib\n"
        "    return n if n < 2 else fib(n - 1) + g(n - 2) + len(dict(fib=1)) * 0\n"
    )
    out = rename_function(code, "fib", "f")
    assert out is not None
    assert "def f(n):" in out and "f(n - 1)" in out and "g = f\n" in out
    assert "# fib(n) recursion; obj.fib stays" in out and "'fib(3)'" in out
    assert "dict(fib=1)" in out
    ns: dict = {}
    exec(out, ns)
    assert ns["f"](10) == 55 and "fib" not in ns


def test_rename_with_non_ascii_and_async_def():
    out = rename_function("async def ü(x):\n    y = 'é'; return await ü(x)\n", "ü", "f")
    assert out == "async def f(x):\n    y = 'é'; return await f(x)\n"
    assert rename_function("def (:", "a", "f") is None


def test_imports_collected_from_ast():
    code = (
        "import os.path as p, re\nfrom collections import deque\n"
        "def f(a):\n    import math\n    return a"
    )
    assert collect_imports(code) == [
        "import os.path as p, re",
        "from collections import deque",
        "import math",
    ]
    parsed = parse_program_proposal(program(code))
    assert isinstance(parsed, ProgramProposal) and parsed.imports == collect_imports(code)


def test_strip_for_seeding_only_when_asked():
    code = (
        "import re\nLIMIT = 3  # global\n\ndef f(a):\n"
        '    """Doc."""\n    # comment\n    return re.sub("a", "b", a)[:LIMIT]\nprint(f("x"))'
    )
    plain = parse_program_proposal(program(code))
    seeded = parse_program_proposal(program(code), seeding=True)
    assert isinstance(plain, ProgramProposal) and isinstance(seeded, ProgramProposal)
    assert plain.code == code
    assert seeded.code == "import re\n\ndef f(a):\n    return re.sub('a', 'b', a)[:LIMIT]"
    assert seeded.original_code == code
    assert strip_for_seeding("def f(:") == "def f(:"


# ---------------------------------------------------------------------------- induction proposals


def test_induction_takes_last_n_inputs_and_message():
    body = "\n".join(f"```input\n{i}\n```" for i in range(12)) + "\n```message\nAdd one.\n```"
    assert parse_induction_proposal(resp(body), 10) == InductionProposal(
        inputs=[str(i) for i in range(2, 12)], message="Add one."
    )


@pytest.mark.parametrize(
    "tail, message",
    [
        ("<message>\nTagged.\n</message>", "Tagged."),
        ("# Message: Commented.", "Commented."),
    ],
)
def test_induction_message_fallbacks(tail, message):
    body = "```input\n1\n```\n```input\n2\n```\n" + tail
    parsed = parse_induction_proposal(resp(body), 2)
    assert isinstance(parsed, InductionProposal) and parsed.message == message


def test_induction_failures():
    two = "```input\n1\n```\n```input\n2\n```"
    assert parse_induction_proposal(resp(two + "\n```message\nm\n```"), 3) == ParseFailure(
        "too_few_inputs"
    )
    assert parse_induction_proposal(resp(two), 2) == ParseFailure("no_message")
    assert parse_induction_proposal(two, 2) == ParseFailure("no_answer")
    empty = "```input\n\n```\n```input\n2\n```\n```message\nm\n```"
    assert parse_induction_proposal(resp(empty), 2) == ParseFailure("empty_input")


# ---------------------------------------------------------------------------- solver answers


@pytest.mark.parametrize(
    "body, expected",
    [
        ("```input\n'a'\n```\nbetter:\n```input\n'b', 2\n```", "'b', 2"),
        ("# Input: 'x', 3", "'x', 3"),
        ("I call input('a', 1) here", "'a', 1"),
        ("<input> [1, 2] </input>", "[1, 2]"),
        ("So the input is 'hello'.", "'hello'"),
        ("'just', 'text'", "'just', 'text'"),
    ],
)
def test_abduction_answer_and_fallback_order(body, expected):
    assert extract_solver_answer(ABD, resp(body)) == expected


@pytest.mark.parametrize(
    "body, expected",
    [
        ("```output\n1\n```\n```output\n{'age': 20}\n```", "{'age': 20}"),
        ("# Output: 0\n```\n# Output: (1, 2)", "(1, 2)"),  # the last one
        ("output([3])", "[3]"),
        ("<output>'s'", "'s'"),
        ("The output is 7.", "7"),
        ("True", "True"),
    ],
)
def test_deduction_answer_and_fallback_order(body, expected):
    assert extract_solver_answer(DED, resp(body)) == expected


def test_fallbacks_only_when_the_fence_is_missing():
    body = "The output is 3.\n```output\n4\n```"
    assert extract_solver_answer(DED, resp(body)) == "4"


def test_induction_answer_is_last_code_fence():
    body = (
        "```python\ndef f(a):\n    return 1\n```\n```output\nx\n```\n"
        "```\ndef f(a):\n    return a\n```"
    )
    assert extract_solver_answer(IND, resp(body)) == "def f(a):\n    return a"
    assert extract_solver_answer(IND, resp("def f(a): return a")) is None
    assert extract_solver_answer(DED, "no answer block") is None


# ---------------------------------------------------------------------------- hostile text

FRAGMENTS = [
    "<answer>",
    "</answer>",
    "<think>",
    "</think>",
    "```",
    "```python\n",
    "```input\n",
    "```output\n",
    "```message\n",
    "def ",
    "f(",
    "(",
    ")",
    ":",
    "\n",
    "    ",
    "# Input:",
    "# Message:",
    "<input>",
    "the output is",
    "input(",
    "\x00",
    "\r",
    "é",
    "import os\n",
    "return",
    "lambda",
    "'",
    '"""',
]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=8), max_size=40))
def test_parsers_never_raise(parts):
    text = "".join(parts)
    for t in (text, resp(text), program(text)):
        parse_program_proposal(t)
        parse_program_proposal(t, reject_multiple_functions=False, entry_function="last")
        parse_program_proposal(t, seeding=True)
        parse_induction_proposal(t, 2)
        for task in TaskType:
            extract_solver_answer(task, t)
        is_well_formatted(t)
        collect_imports(t)
        strip_for_seeding(t)


def test_pathological_inputs_are_contained_and_fast():
    start = time.perf_counter()
    deep = "def f(a):\n    return " + "(" * 5000 + "a" + ")" * 5000
    assert parse_program_proposal(program(deep)) == ParseFailure("syntax")
    blanks = resp("<input>" + " " * 200_000)
    assert extract_solver_answer(ABD, blanks) == ""
    many_calls = resp("input(" * 20_000)
    assert extract_solver_answer(ABD, many_calls) == "input(" * 20_000
    assert parse_program_proposal(program("def f(a):\n    return '\x00'")) is not None
    assert time.perf_counter() - start < 5
