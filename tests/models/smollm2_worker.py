"""Child process of tests/models/test_smollm2.py: the SmolLM2 directory through the training path.

Loads the run config (architecture from the directory's config.json), builds the megatron actor
in fp32 from the directory, and writes to ``out``: the largest logit difference between the
actor's model and transformers on one sequence, both log-probs of its tokens, and the greedy
answer of a torch rollout engine that holds no weights of its own until the actor streams them
in (as in ``azr train``). A process of its own: torch.distributed and megatron's parallel state
are process-wide.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import torch
import transformers

from megatron_azr.azr.protocols import Role, SamplingParams, TaskType, TrainSample
from megatron_azr.config import load_config
from megatron_azr.rollout.build import build_rollout_engine
from megatron_azr.rollout.reshard import push_weights
from megatron_azr.train.actor import Actor
from megatron_azr.train.dist import init_process_group

TEXT = "The quick brown fox jumps over the lazy dog. Paris is the capital of France, and Berlin"
QUESTION = "What is the capital of France? Answer in one sentence."


def main(model_dir: str, out: str) -> None:
    # fp32 (the config trains in bf16): the comparison with transformers is about the weights.
    cfg = load_config(
        "configs/smollm2_cpu.yaml",
        [f"model.path={model_dir}", "actor.precision=fp32", "rollout.dtype=float32"],
    )
    init_process_group()
    actor = Actor(cfg.model.arch, cfg.parallel, cfg.actor, init_from=cfg.model.path)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    ids = tok(TEXT).input_ids
    sample = TrainSample(TaskType.DEDUCTION, Role.SOLVE, ids[:3], ids[3:], 0.0, 0.0)
    got = actor.logprobs([sample])[0]
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokens = torch.tensor([ids])
    with torch.no_grad():
        ref_logits = hf(tokens).logits[0]
        logits = actor.models[0](tokens, torch.arange(len(ids))[None], None)[0]
    logp = torch.log_softmax(ref_logits, -1)
    ref = logp[2:-1].gather(1, torch.tensor(ids[3:])[:, None]).squeeze(1).tolist()
    del hf

    rollout_cfg = dataclasses.replace(cfg.rollout, load_format="dummy")
    engine = build_rollout_engine(rollout_cfg, model_dir)
    push_weights(engine, actor.models, actor.arch, rollout_cfg, dst=0)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
    )
    (completion,) = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=40))[0]
    result = {
        "logits_diff": (logits - ref_logits).abs().max().item(),
        "actor": got,
        "hf": ref,
        "greedy": completion.text,
    }
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
