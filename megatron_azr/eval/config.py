"""The ``eval`` section of a run config: benchmarks scored during training (``azr eval`` takes
the same knobs on its command line). Pure Python, so that ``megatron_azr.config`` stays cheap."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# azr: the R1 think/answer template (what AZR-trained models see); azr-chat: the same through
# the tokenizer's chat template (azr.prompt_template=chat); plain: each benchmark's own prompt as
# raw text, for base models (code prompts are continued, math asks for \boxed{}); chat: the plain
# prompt as a user message of the chat template, for instruct models.
Template = Literal["azr", "azr-chat", "plain", "chat"]


@dataclass
class EvalConfig:
    # Score the benchmarks every this many steps (after the step's update); 0 = never. The
    # original validated on CRUXEval-I/O every 10 steps, greedy (spec §9 item 4).
    every: int = 10
    benchmarks: list[str] = field(default_factory=lambda: ["cruxeval-i", "cruxeval-o"])
    # The first N problems of each benchmark; 0 = all of them.
    limit: int = 0
    # "auto" in training: azr, or azr-chat when azr.prompt_template=chat (the policy's own
    # template); `azr eval` defaults to azr.
    template: Literal["auto", "azr", "azr-chat", "plain", "chat"] = "auto"
    # Greedy pass@1 by default (temperature 0, one sample, the paper's protocol); n samples at
    # a temperature > 0 give pass@k for every k in `pass_k` up to n.
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    pass_k: list[int] = field(default_factory=lambda: [1])
    max_tokens: int = 8096  # the original's evaluation length for code (spec §11)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.every < 0 or self.limit < 0:
            raise ValueError("every and limit must be >= 0")
        if self.n < 1 or self.max_tokens < 1:
            raise ValueError("n and max_tokens must be >= 1")
        if not self.pass_k or any(k < 1 or k > self.n for k in self.pass_k):
            raise ValueError(f"pass_k must be in 1..n (n={self.n}), got {self.pass_k}")
        if self.n > 1 and self.temperature == 0:
            raise ValueError("n > 1 samples need temperature > 0 (greedy samples are identical)")
