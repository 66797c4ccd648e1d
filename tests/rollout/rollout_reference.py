"""Plain-HF references the rollout engines are checked against."""

from __future__ import annotations

import torch
from transformers import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

PROMPTS = ["def f(a):", "print(", "x = [1, 2, 3]\nfor i in x:\n    "]  # ragged: left padding


def hf_greedy(model, tok, prompt: str, max_new: int) -> list[int]:
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new
    )
    return out[0, ids.shape[1] :].tolist()


def hf_warpers(temperature: float, top_k: int, top_p: float) -> LogitsProcessorList:
    """transformers' own warpers: a reference for temperature / top-k / top-p independent of
    ``megatron_azr.rollout.sampling``."""
    return LogitsProcessorList(
        [TemperatureLogitsWarper(temperature), TopKLogitsWarper(top_k), TopPLogitsWarper(top_p)]
    )


@torch.no_grad()
def hf_token_logprobs(model, prompt_ids, token_ids, warpers=None) -> torch.Tensor:
    """Log-probs of ``token_ids`` after ``prompt_ids`` from one unbatched HF forward."""
    ids = torch.tensor([list(prompt_ids) + list(token_ids)])
    logits = model(ids).logits[0, len(prompt_ids) - 1 : -1].float()
    if warpers is not None:
        logits = warpers(ids, logits)
    return logits.log_softmax(-1).gather(-1, torch.tensor(token_ids)[:, None])[:, 0]
