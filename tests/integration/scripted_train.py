"""Child process of test_selfplay_learns: `azr train` (real actor, real sandbox, real trainer)
with a scripted policy that proposes valid tasks and solves some of them.

The policy's texts go through the run's real tokenizer, so the actor trains on them as on any
model's output. The engine also keeps each weight snapshot it is sent; afterwards the log-probs
of step 1's responses are computed with `transformers` under the weights before and after the
update (an evaluator independent of the actor), and written to ``<out>/logprobs.json``.

Usage: python scripted_train.py OUT [KEY=VALUE ...]
       python scripted_train.py --slurm --config FILE [KEY=VALUE ...]   (`azr train`'s arguments:
       a rank of a Slurm job, through scripted_python.sh; trains only)
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from azr_scripted import fence, prompt_blocks, prompt_kind
from processes import ROOT

from megatron_azr.azr.protocols import Completion, SamplingParams
from megatron_azr.config import load_config
from megatron_azr.trainer import train

AFFINE = re.compile(r"return a \* (\d+) \+ (\d+)")


def affine(program: str) -> tuple[int, int]:
    """(k, b) of the scripted programs `a * k + b`; the identity seed is (1, 0)."""
    m = AFFINE.search(program)
    return (int(m.group(1)), int(m.group(2))) if m else (1, 0)


def reply(body: str) -> str:
    return f"Let me work it out.</think> <answer>{body}</answer>"


def respond(prompt: str, rng: random.Random, right: bool) -> str:
    """Proposals are always valid (their numbers drawn from ``rng``); a solver answer is right
    when ``right`` says so."""
    kind = prompt_kind(prompt)
    if kind in ("propose_deduction", "propose_abduction"):
        k, b = rng.randint(2, 9), rng.randint(0, 9)
        code = f"def f(a):\n    return a * {k} + {b}"
        return reply(fence("python", code) + "\n" + fence("input", str(rng.randint(1, 50))))
    blocks = prompt_blocks(prompt)
    if kind == "propose_induction":
        k, b = affine(blocks["python"])
        inputs = "\n".join(fence("input", str(rng.randint(1, 99))) for _ in range(4))
        return reply(inputs + "\n" + fence("message", f"a times {k} plus {b}"))
    if kind == "solve_deduction":
        k, b = affine(blocks["python"])
        x = eval(blocks["input"])  # the scripted programs' inputs: ints or the seed's string
        value = x * k + b if isinstance(x, int) else x
        return reply(fence("output", repr(value) if right else "-12345"))
    if kind == "solve_abduction":
        k, b = affine(blocks["python"])
        out = eval(blocks["output"])
        value = (out - b) // k if isinstance(out, int) else out
        return reply(fence("input", repr(value) if right else "-12345"))
    numbers = re.findall(r"\d+", blocks["message"])
    if not numbers:  # the identity seed's message
        return reply(fence("python", f"def f(a):\n    return {'a' if right else 'None'}"))
    k, b = map(int, numbers[:2])
    return reply(fence("python", f"def f(a):\n    return a * {k} + {b + (0 if right else 1)}"))


class ScriptedEngine:
    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoTokenizer

        self.model_dir = model_dir
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.snapshots: list[dict[str, torch.Tensor]] = []
        self.completions: dict[tuple[str, str], Completion] = {}
        self.answers = 0

    def generate(
        self, prompts: Sequence[str], sampling: SamplingParams, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        assert seeds is not None, "the trainer seeds every prompt"
        out = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            group = []
            for j in range(sampling.n):
                # Every third solver answer is right: each batch of four gets one or two, and
                # learnability probes get solve rates of 1/4 and 1/2 (proposer rewards vary).
                self.answers += prompt_kind(prompt).startswith("solve")
                text = respond(prompt, random.Random(seed + j), self.answers % 3 == 1)
                ids = self.tok(text, add_special_tokens=False)
                ids = ids.input_ids[: sampling.max_tokens]
                c = Completion(
                    text=self.tok.decode(ids),
                    token_ids=ids,
                    logprobs=[0.0] * len(ids),
                    prompt_token_ids=self.tok(prompt).input_ids,
                )
                self.completions[(prompt, c.text)] = c
                group.append(c)
            out.append(group)
        return out

    def update_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        self.snapshots.append({k: v.detach().clone() for k, v in named_tensors})

    def sleep(self) -> None:
        pass

    def wake_up(self) -> None:
        pass


def hf_logprob_means(
    model_dir: Path, weights: dict[str, torch.Tensor], pairs: list[Completion]
) -> list[float]:
    """Mean log-prob of each response's tokens under ``weights``, by `transformers`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    model.load_state_dict(weights, strict=True)
    model.eval()
    means = []
    with torch.no_grad():
        for c in pairs:
            ids = torch.tensor([c.prompt_token_ids + c.token_ids])
            logits = model(ids).logits[0, len(c.prompt_token_ids) - 1 : -1].float()
            lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c.token_ids)[:, None])
            means.append(float(lp.mean()))
    return means


def build_scripted(_cfg: Any, model_dir: Path, _precision: str) -> ScriptedEngine:
    return ScriptedEngine(model_dir)


def main() -> None:
    if sys.argv[1] == "--slurm":
        from megatron_azr.cli import build_parser

        args = build_parser().parse_args(["train", *sys.argv[2:]])
        train(load_config(args.config, args.overrides), build_engine=build_scripted)
        return
    out = Path(sys.argv[1])
    cfg = load_config(
        str(ROOT / "configs" / "tiny_cpu.yaml"), [f"run.output_dir={out}", *sys.argv[2:]]
    )
    engines: list[ScriptedEngine] = []

    def build(_cfg: Any, model_dir: Path, _precision: str) -> ScriptedEngine:
        engines.append(ScriptedEngine(model_dir))
        return engines[-1]

    train(cfg, build_engine=build)
    engine = engines[0]
    rows = [json.loads(line) for line in (out / "rollouts" / "step_00000001.jsonl").open()]
    trained = [r for r in rows if r["advantage"] != 0.0]
    pairs = [engine.completions[(r["prompt"], r["response"])] for r in trained]
    before, after = (hf_logprob_means(engine.model_dir, w, pairs) for w in engine.snapshots[:2])
    result = [
        {"advantage": r["advantage"], "tokens": len(c.token_ids), "before": b, "after": a}
        for r, c, b, a in zip(trained, pairs, before, after, strict=True)
    ]
    (out / "logprobs.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
