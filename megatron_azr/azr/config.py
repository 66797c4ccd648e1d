"""Hyperparameters of the AZR algorithm (spec §9). Defaults reproduce the paper's runs.

Where the original code and the paper disagree the field is a switch whose default is what
produced the paper's reported numbers; the other value is documented next to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

TaskTypeName = Literal["abduction", "deduction", "induction"]

# Paper Fig. 8 / config `banned_words` (the original also lists `hmac`; the paper figure omits it).
# The dotted entries never matched in the original's per-component AST check; here a dotted
# entry matches the dotted import path, so `os.path` bans `import os.path` but not `import os`.
ORIGINAL_BANNED = [
    "logging",
    "random",
    "multiprocessing",
    "pebble",
    "subprocess",
    "threading",
    "datetime",
    "time",
    "hashlib",
    "hmac",
    "bcrypt",
    "os.sys",
    "os.path",
    "sys.exit",
    "os.environ",
    "calendar",
]
# What the original meant to block (paper text mentions sys/shutil); safety does not rest on
# this list, the sandbox provides it (see megatron_azr.executor).
EXTRA_BANNED = ["os", "sys", "shutil", "socket", "ctypes", "signal", "resource", "pty", "asyncio"]


@dataclass
class AZRConfig:
    task_types: list[TaskTypeName] = field(
        default_factory=lambda: ["abduction", "deduction", "induction"]
    )
    # Responses per (task type, role) sub-batch: 6 sub-batches of 64 = 384 per step in the paper.
    batch_size: int = 64
    # Reference triplets shown to the deduction/abduction proposer (0 = the "no references"
    # ablation of Table 2).
    k_references: int = 6
    # Induction: inputs written by the proposer; the solver sees the first half.
    n_induction_inputs: int = 10
    # Solver rollouts per valid proposal to estimate learnability.
    n_learnability_samples: int = 8
    # Cap per buffer and what happens when it is full: "drop_new" is the original's truncation
    # to the first entries (new valid proposals are discarded); "evict_oldest" keeps the newest.
    max_buffer_size: int = 16384
    buffer_cap_policy: Literal["drop_new", "evict_oldest"] = "drop_new"
    # Solver batches take the entries added within this many steps first (1 = the previous
    # step's valid proposals, the original's `max_new`), then fill uniformly; 0 = plain uniform.
    solver_new_window: int = 1
    # Proposer reward for a valid, well-formatted task the solver gets 0/n or n/n right:
    # -0.5 is what the original code does and what produced the paper's numbers; 0.0 is the
    # paper's eq. 4 read literally (GitHub issue #37).
    proposer_zero_reward: float = -0.5
    # Induction solver reward: "binary" (all hidden pairs right; paper) or "accuracy" (fraction).
    induction_reward: Literal["binary", "accuracy"] = "binary"
    # TRR++ whitening: "token" weights each response by its token count (veRL's masked_whiten,
    # what the original ran); "response" is the paper's per-response mean/std.
    advantage_whitening: Literal["token", "response"] = "token"
    # Parsing (spec §5.1): Qwen runs reject snippets with more than one `def`; Llama runs do not.
    reject_multiple_functions: bool = True
    # Which def is renamed to `f`: the first one (Qwen runs) or the last one (Llama run).
    entry_function: Literal["first", "last"] = "first"
    # Time limit of one program execution (spec §5.2): printed into the prompts and sent with
    # every executor job.
    program_timeout_s: float = 10.0
    # Proposer-side import ban list, printed into the proposer prompt.
    banned_imports: list[str] = field(default_factory=lambda: ORIGINAL_BANNED + EXTRA_BANNED)
    # Ablation switches (paper Table 2): show references to the proposer, train the proposer.
    include_references: bool = True
    train_propose: bool = True
    # Proposer prompts without references (K = 0): the paper's run kept the prompt's reference
    # wording and an empty "Reference Code Snippets" section (Table 2's "w/o references" row);
    # false drops both.
    empty_reference_section: bool = True
    # Prompt template: "r1" is the paper's raw R1 text (a plain concatenation, no chat tokens;
    # what base models were trained with); "chat" puts the R1 instruction and the task through
    # the model's own chat template (instruct models), the generation still opened with <think>.
    prompt_template: Literal["r1", "chat"] = "r1"
    # Seed buffers (JSONL in the official format); empty = start from the identity triplet.
    seed_io_path: str = ""
    seed_induction_path: str = ""
    # Seed entries kept: B * seed_batch_factor (paper: 64 * 4 = 256).
    seed_batch_factor: int = 4
    # Sampling of every rollout, proposer and solver alike (spec §9): temperature 1, top-p 1,
    # top-k off; prompts over max_prompt_tokens are never sent (spec §7.4).
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_prompt_tokens: int = 6144
    max_response_tokens: int = 8096

    def __post_init__(self) -> None:
        if not self.task_types:
            raise ValueError("task_types must name at least one task type")
        if len(set(self.task_types)) != len(self.task_types):
            raise ValueError(f"task_types has duplicates: {self.task_types}")
        positive = ("batch_size", "n_learnability_samples", "max_buffer_size", "seed_batch_factor")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.k_references < 0:
            raise ValueError("k_references must be >= 0")
        if self.n_induction_inputs < 2:
            raise ValueError("n_induction_inputs must be >= 2 (half given, half hidden)")
        if self.solver_new_window < 0:
            raise ValueError("solver_new_window must be >= 0")
        if self.program_timeout_s <= 0:
            raise ValueError("program_timeout_s must be > 0")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k == 0 or self.top_k < -1:
            raise ValueError("need temperature >= 0, top_p in (0, 1], top_k = -1 (off) or >= 1")
        if self.max_prompt_tokens < 1 or self.max_response_tokens < 1:
            raise ValueError("max_prompt_tokens and max_response_tokens must be >= 1")
        if not -1.0 <= self.proposer_zero_reward <= 0.0:
            raise ValueError("proposer_zero_reward must lie in [-1, 0] (-0.5 code, 0.0 paper)")
