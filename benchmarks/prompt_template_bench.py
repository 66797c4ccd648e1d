"""Which prompt template lets a model answer in AZR's format: the paper's raw R1 text or the
model's own chat template (``azr.prompt_template``)?

Samples proposer responses (deduction and abduction with K reference snippets from the seed
file, induction on a seed program) under both templates with batched ``transformers``
``generate`` (temperature 1, the trainer's sampling; ``--temperature 0``: greedy), and counts
per template and task type: well formatted (the R1 think/answer check), an ``<answer>``
present, a proposal that parses (code + input, or N inputs + message), cut at the length limit,
mean length.

    python benchmarks/prompt_template_bench.py --model .cache/models/SmolLM2-135M-Instruct

Last line: ``ratio: <chat well-formatted share / r1 well-formatted share>`` (above 1: the
chat template suits this model better).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from megatron_azr.azr.buffers import load_records
from megatron_azr.azr.config import ORIGINAL_BANNED
from megatron_azr.azr.parsing import (
    ParseFailure,
    extract_answer,
    first_turn,
    is_well_formatted,
    parse_induction_proposal,
    parse_program_proposal,
)
from megatron_azr.azr.prompts import proposer_prompt
from megatron_azr.azr.protocols import TaskType
from megatron_azr.azr.tasks import Triplet
from megatron_azr.trainer import prompt_wrap

ROOT = Path(__file__).resolve().parents[1]


def prompts(task: TaskType, seeds: list[Triplet], n: int, k: int, wrap, rng) -> list[str]:
    if task is TaskType.INDUCTION:
        return [
            proposer_prompt(task, program=rng.choice(seeds).snippet, n_inputs=4, wrap=wrap)
            for _ in range(n)
        ]
    return [
        proposer_prompt(task, references=rng.sample(seeds, k), banned=ORIGINAL_BANNED, wrap=wrap)
        for _ in range(n)
    ]


def generate(
    model, tok, texts: list[str], max_new: int, seed: int, temperature: float
) -> list[tuple[str, bool]]:
    torch.manual_seed(seed)
    tok.padding_side = "left"
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **batch, do_sample=temperature > 0, temperature=temperature or None, top_p=1.0, top_k=0,
            max_new_tokens=max_new, pad_token_id=tok.pad_token_id,
        )  # fmt: skip
    new = out[:, batch.input_ids.shape[1] :]
    res = []
    for row in new:
        ids = [t for t in row.tolist() if t != tok.pad_token_id]
        cut = len(ids) >= max_new and tok.eos_token_id not in ids
        res.append((tok.decode(ids, skip_special_tokens=True), cut))
    return res


def parses(task: TaskType, text: str) -> bool:
    if task is TaskType.INDUCTION:
        return not isinstance(parse_induction_proposal(text, 4), ParseFailure)
    return not isinstance(parse_program_proposal(text), ParseFailure)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="HF model directory")
    ap.add_argument("--seeds", default=str(ROOT / "data/azr_seeds/7b_coder_seed_io.jsonl"))
    ap.add_argument("--n", type=int, default=8, help="responses per task type and template")
    ap.add_argument("--k", type=int, default=2, help="reference snippets per program proposal")
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    seeds = [r for r in load_records(args.seeds, TaskType.DEDUCTION) if isinstance(r, Triplet)]
    seeds = [s for s in seeds if len(s.snippet) < 600]  # keep prompts short for a small model

    share: dict[str, float] = {}
    print(f"{'template':<8} {'task':<10} {'n':>3} {'format':>7} {'answer':>7} {'parses':>7} "
          f"{'cut':>5} {'tokens':>7} {'s':>6}")  # fmt: skip
    for template in ("r1", "chat"):
        wrap = prompt_wrap(template, tok)
        formatted = total = 0
        for task in TaskType:
            rng = random.Random(f"{template}/{task}")
            texts = prompts(task, seeds, args.n, args.k, wrap, rng)
            t0 = time.perf_counter()
            outs = generate(model, tok, texts, args.max_new_tokens, len(texts), args.temperature)
            dt = time.perf_counter() - t0
            resp = [first_turn(t) for t, _ in outs]
            fmt = sum(is_well_formatted(r) for r in resp)
            ans = sum(extract_answer(r) is not None for r in resp)
            ok = sum(parses(task, r) for r in resp)
            cut = sum(c for _, c in outs)
            toks = sum(len(tok(t, add_special_tokens=False).input_ids) for t, _ in outs)
            formatted, total = formatted + fmt, total + len(resp)
            print(f"{template:<8} {task.value:<10} {len(resp):>3} {fmt:>7} {ans:>7} {ok:>7} "
                  f"{cut:>5} {toks / len(resp):>7.0f} {dt:>6.0f}")  # fmt: skip
            print(f"  e.g. {resp[0][:300]!r}")
        share[template] = formatted / total
    for template, value in share.items():
        print(f"{template}: {value:.2f} of proposals well formatted")
    print(f"ratio: {share['chat'] / max(share['r1'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
