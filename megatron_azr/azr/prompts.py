"""Prompts for the six (task type x role) cases, in the R1 think/answer template (spec §4).

Wording is this project's own; structure and requirements follow the paper's prompts (Figs 34-39):
proposers get the rules, a format example, the judging criteria (with the banned-module list) and
their conditioning material; solvers get the task material and the answer format. All answers are
fenced blocks inside ``<answer>`` (the parser only looks there). Unlike the original, the
"difficulty" criterion of the two program proposers is not swapped between them.

Body builders return the task text alone; :func:`proposer_prompt` and :func:`solver_prompt`
return the full prompt, wrapped by the paper's raw R1 template (:func:`r1_wrap`, the default, for
base models) or another :data:`Wrap` (the trainer builds one from a model's chat template).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from megatron_azr.azr.protocols import TaskType
from megatron_azr.azr.tasks import InductionTask, Triplet

# DeepSeek-R1-Zero style: the model's generation starts inside an open <think>. Base models get a
# plain concatenation (no chat template, no special tokens), as in the original.
R1_INSTRUCTION = (
    "A conversation between User and Assistant. The User gives a task and the Assistant "
    "completes it. The Assistant first reasons about the task privately and then gives the User "
    "its answer. The reasoning goes inside <think> </think> tags and the answer inside "
    "<answer> </answer> tags, i.e. <think> reasoning here </think> <answer> answer here "
    "</answer>."
)
R1_TEMPLATE = R1_INSTRUCTION + "\nUser: {prompt}\nAssistant: <think>"

# A prompt template: task text -> the full prompt, which must end inside an open <think>.
Wrap = Callable[[str], str]

INDUCTION_SUFFIX = "f(<|YOUR INPUT WILL BE PLUGGED HERE|>)"


def r1_wrap(task_prompt: str) -> str:
    return R1_TEMPLATE.replace("{prompt}", task_prompt.strip())


def prompt_wrap(template: str, tokenizer: Any) -> Wrap:
    """The prompt template of ``azr.prompt_template``: the paper's raw R1 text, or the R1
    instruction and the task through the tokenizer's chat template (generation opened with
    ``<think>`` as in the raw template)."""
    if template == "r1":
        return r1_wrap
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "azr.prompt_template=chat, but the model's tokenizer has no chat template "
            "(a base model): use azr.prompt_template=r1"
        )

    def wrap(task: str) -> str:
        messages = [
            {"role": "system", "content": R1_INSTRUCTION},
            {"role": "user", "content": task.strip()},
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return str(text) + "<think>"

    return wrap


def _fence(tag: str, body: str) -> str:
    return f"```{tag}\n{body}\n```"


def _code_rules(timeout_s: float, seeding: bool = False) -> str:
    rules = [
        "- Name the entry function `f` (`def f(...): ...`); nested definitions inside `f` are fine",
        "- `f` takes at least one argument and returns a value",
        "- `f` is deterministic: the same input gives the same output every time",
        "- Do not use any of: randomness, dates or times, file or network I/O, printing or "
        "logging, any state outside the function",
        f"- The code must finish within {timeout_s:g} seconds on an ordinary CPU",
        "- Put all imports and class definitions at the very top of the snippet",
        "- End the snippet with the return of `f`; anything after it is removed",
    ]
    if seeding:
        rules.append(
            "- Declare every variable inside `f` or inside functions it calls: variables "
            "declared outside functions are removed"
        )
    return "\n".join(rules)


_EXAMPLE_INPUT = "'John', {'age': 20, 'city': 'New York'}"
_EXAMPLE_PROGRAM = "def f(name: str, info: dict):\n    # logic here\n    return result"
_EXAMPLE_ANSWER_PROGRAM = "def f(a):\n    return a"

_PROGRAM_GOAL = {
    TaskType.DEDUCTION: (
        "work out its output from a given input",
        "the test taker is shown your code and your input and must predict the output",
        "predicting the output from your code and your input should be hard",
    ),
    TaskType.ABDUCTION: (
        "work out an input from a given output",
        "the test taker is shown your code and the output it returns for your input, and must "
        "find any input that produces that output",
        "finding an input that produces your output, given only the code, should be hard",
    ),
}


def program_proposer_body(
    task: TaskType,
    references: Sequence[Triplet],
    banned: Sequence[str],
    timeout_s: float = 10.0,
    seeding: bool = False,
    empty_reference_section: bool = True,
) -> str:
    """Deduction/abduction proposer: write a new program and one input for it.

    Without references (K = 0, the "no references" ablation of paper Table 2) the paper's run
    kept the whole prompt, its reference wording and an empty reference section
    (``empty_reference_section``); False drops them instead."""
    goal, shown, difficulty = _PROGRAM_GOAL[task]
    refs = "\n".join(
        f"<snippet_{k}>\n{_fence('python', r.snippet)}\n{_fence('input', r.input)}\n"
        f"{_fence('output', r.output)}\n</snippet_{k}>"
        for k, r in enumerate(references)
    )
    with_refs = bool(refs) or empty_reference_section
    using = "Using the reference snippets below as examples, design" if with_refs else "Design"
    creativity = (
        "\n- Creativity: the snippet must be clearly different from the reference snippets"
        if with_refs
        else ""
    )
    distinct = ", different from the references" if with_refs else ""
    refs_section = f"\n### Reference Code Snippets:\n{refs}\n" if with_refs else ""
    return f"""## Task: Write a New Python Code Snippet and One Input for It

Custom classes are allowed; define them at the top of the snippet. {using} a new and \
distinctive snippet that takes real algorithmic reasoning to {goal}. Your snippet and its input \
become one puzzle of an I.Q. test: {shown}.

### Code Requirements:
{_code_rules(timeout_s, seeding)}
- Solving the puzzle should require tracking state through several transformations, i.e. many \
reasoning steps

### Input Requirements:
- Give exactly one input for `f`
- Separate multiple arguments with commas
- Put quotes around string arguments

### Answer Format:
Put the code in a python block and the input in an input block, for example:
{_fence("python", _EXAMPLE_PROGRAM)}
{_fence("input", _EXAMPLE_INPUT)}

### How Your Puzzle Is Judged:
- It runs: your code executes on your input without error
- Difficulty: {difficulty}. Aim for algorithmic depth or intricate logic, e.g. data structures \
(trees, heaps, stacks, queues, graphs), recursion, dynamic programming, greedy search, \
backtracking, divide and conquer, non-trivial control flow{creativity}
- Forbidden words: do not use any of the following in any form, not even in comments: \
{", ".join(banned)}

First make a plan: decide what makes your snippet challenging{distinct} and creative. Then \
write the snippet and its input.
{refs_section}"""


def induction_proposer_body(program: str, n_inputs: int) -> str:
    """Induction proposer: write ``n_inputs`` inputs for a given program, and a message."""
    shown = _fence("python", f"{program}\n{INDUCTION_SUFFIX}")
    return f"""## Task: Write {n_inputs} Inputs for the Code Snippet Below, and a Message

Design {n_inputs} inputs that can be plugged into the code snippet below and that together \
produce a diverse set of outputs. Some of your inputs, with the outputs the snippet returns for \
them, will be shown to a test taker who must reconstruct the function (an I.Q. test); the other \
pairs are used to check their answer. You may also leave the test taker a message to help them.

### Input Requirements:
- Give {n_inputs} valid inputs for the snippet
- Separate multiple arguments with commas and put quotes around string arguments
- Put each input in its own input block

### Message Requirements:
- Put the message in a message block
- It can take any form: a coding question, a plain-language description of what the snippet \
does, a hint
- It must not contain the code itself

### Answer Format:
{_fence("input", _EXAMPLE_INPUT)}
{_fence("input", "'Sammy', {'age': 37, 'city': 'Los Angeles'}")}
{_fence("message", "Your message to the test taker")}

### How Your Inputs Are Judged:
- They run: the snippet executes on every input without error
- Coverage: together the inputs and outputs cover the snippet's input space well enough to pin \
down the function
- Diversity: the inputs are clearly different from each other
- The inputs and the message together make a puzzle that is challenging but solvable

First make a plan: understand the snippet, then decide how your inputs reach high coverage and \
why they are challenging and creative. Then write the inputs, each in an input block, and the \
message in a message block.

### Code Snippet:
{shown}
"""


def abduction_solver_body(task: Triplet) -> str:
    return f"""# Task: Find an Input That Produces the Given Output

Below are a Python code snippet and an output it returned. Think step by step, then give one \
input that makes the snippet return exactly this output. Put the input in an input block; put \
quotes around string arguments and separate multiple arguments with commas.

# Code Snippet:
{_fence("python", task.snippet)}

# Output:
{_fence("output", task.output)}

# Answer Format:
{_fence("input", "arg1, arg2, ...")}

# Example Answer:
{_fence("input", _EXAMPLE_INPUT)}
"""


def deduction_solver_body(task: Triplet) -> str:
    return f"""# Task: Predict the Output of a Python Code Snippet

Below are a Python code snippet and an input. Think step by step, then give the value the \
snippet returns for this input. Put it in an output block as a Python literal: put quotes around \
strings, and write several returned values as a tuple.

# Code Snippet:
{_fence("python", task.snippet)}

# Input:
{_fence("input", task.input)}

# Example Answer:
{_fence("output", "{'age': 20, 'city': 'New York'}")}
"""


def induction_solver_body(task: InductionTask, timeout_s: float = 10.0) -> str:
    pairs = "\n".join(
        f"{_fence(f'input_{k}', i)}\n{_fence(f'output_{k}', o)}"
        for k, (i, o) in enumerate(task.given_pairs, start=1)
    )
    return f"""# Task: Reconstruct the Function Behind the Input/Output Pairs

Below are input/output pairs produced by a hidden Python function, and a message about it. Think \
step by step and write a general code snippet that reproduces the function: it will be run on \
further, hidden inputs and must return the matching hidden outputs. It helps to check your \
function against each given pair; if it disagrees with one, revise it. Put the final code in a \
python block.

# Code Requirements:
{_code_rules(timeout_s)}

# Input/Output Pairs:
{pairs}

# Message:
{_fence("message", task.message)}

# Example Answer:
{_fence("python", _EXAMPLE_ANSWER_PROGRAM)}

Name your entry function `f`!
"""


def proposer_prompt(
    task: TaskType,
    *,
    references: Sequence[Triplet] = (),
    program: str = "",
    banned: Sequence[str] = (),
    n_inputs: int = 10,
    timeout_s: float = 10.0,
    seeding: bool = False,
    empty_reference_section: bool = True,
    wrap: Wrap = r1_wrap,
) -> str:
    """The proposer prompt: ``references`` for deduction/abduction, ``program`` (a buffer
    program) for induction."""
    if task is TaskType.INDUCTION:
        return wrap(induction_proposer_body(program, n_inputs))
    return wrap(
        program_proposer_body(task, references, banned, timeout_s, seeding, empty_reference_section)
    )


def solver_prompt(
    task: TaskType,
    record: Triplet | InductionTask,
    timeout_s: float = 10.0,
    wrap: Wrap = r1_wrap,
) -> str:
    """The solver prompt for a buffer entry of type ``task``."""
    if task is TaskType.INDUCTION:
        if not isinstance(record, InductionTask):
            raise TypeError(f"induction solver prompt needs an InductionTask, got {record!r}")
        return wrap(induction_solver_body(record, timeout_s))
    if not isinstance(record, Triplet):
        raise TypeError(f"{task} solver prompt needs a Triplet, got {record!r}")
    if task is TaskType.ABDUCTION:
        return wrap(abduction_solver_body(record))
    return wrap(deduction_solver_body(record))
