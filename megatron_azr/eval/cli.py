"""``azr eval`` and ``azr report``. Registration imports nothing heavy.

azr eval --model DIR [--benchmark NAME[:FILE] ...] [--template azr|azr-chat|plain|chat]
azr eval --benchmark NAME --predictions FILE.jsonl      # score predictions made elsewhere
azr report RUN_DIR [RUN_DIR ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from megatron_azr.eval.benchmarks import Benchmark
    from megatron_azr.eval.runner import BenchmarkResult

logger = logging.getLogger("azr.eval")

DEFAULT_BENCHMARKS = ("cruxeval-i", "cruxeval-o", "humaneval", "mbpp+", "aime24", "aime25",
                      "amc23", "math500", "minerva", "olympiadbench", "gsm8k")  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="score a model (or predictions) on code and math benchmarks",
        description="Greedy pass@1 by default; JSON per benchmark, summary.json and table.md "
        "in --out. With --predictions, scores a file of completions made elsewhere.",
    )
    p.add_argument("--model", help="HF directory, or a run / step / actor checkpoint directory")
    p.add_argument("--benchmark", action="append", metavar="NAME[:FILE]",
                   help=f"repeatable; default: {' '.join(DEFAULT_BENCHMARKS)}")  # fmt: skip
    p.add_argument("--predictions", metavar="FILE.jsonl", help="score these completions")
    p.add_argument("--limit", type=int, default=0, help="first N problems per benchmark (0 = all)")
    p.add_argument("--template", default="azr", choices=["azr", "azr-chat", "plain", "chat"])
    p.add_argument("--n", type=int, default=1, help="samples per problem")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--pass-k", type=int, nargs="+", default=[1], metavar="K")
    p.add_argument("--max-tokens", type=int, default=8096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", default="vllm_cpu", choices=["torch", "vllm", "vllm_cpu"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--workers", type=int, default=0, help="sandbox workers (0 = one per CPU)")
    p.add_argument("--paper-model", help="the paper's row to compare with (default: from --model)")
    p.add_argument(
        "--out",
        help="output directory (default: <run>/eval/step_<N> for a run, else runs/eval/<model>)",
    )
    p.set_defaults(func=_run(_cmd_eval))

    r = subparsers.add_parser(
        "report",
        help="plots and tables of runs' metrics (and the paper's Table 2 for an ablation array)",
    )
    r.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run directories, or an ablation array's directory")  # fmt: skip
    r.add_argument(
        "--out",
        default=None,
        help="output directory (default: RUN_DIR/report for one, else runs/reports/<names>)",
    )
    r.add_argument("--metrics", nargs="+", default=None, metavar="KEY",
                   help="metrics.jsonl keys or prefixes (default: a standard set)")  # fmt: skip
    r.set_defaults(func=_run(_cmd_report))


def _run(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        from megatron_azr.telemetry.logs import setup_logging

        setup_logging("INFO")
        try:
            return int(handler(args))
        except (FileNotFoundError, ValueError) as e:
            print(f"azr {args.command}: {e}", file=sys.stderr)
            return 2

    return run


def _cmd_report(args: argparse.Namespace) -> int:
    from megatron_azr.eval.report import report

    for path in report([Path(r) for r in args.runs], args.out, args.metrics):
        print(f"azr report: wrote {path}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from megatron_azr.eval.benchmarks import resolve
    from megatron_azr.eval.config import EvalConfig

    names = args.benchmark or list(DEFAULT_BENCHMARKS)
    benches = [resolve(n) for n in names]
    if args.predictions:
        if len(benches) != 1:
            raise ValueError("--predictions scores one benchmark: give exactly one --benchmark")
        return _score_predictions(benches[0], args)
    cfg = EvalConfig(every=0, benchmarks=[b.name for b in benches], limit=args.limit,
                     template=args.template, n=args.n, temperature=args.temperature,
                     top_p=args.top_p, pass_k=args.pass_k, max_tokens=args.max_tokens,
                     seed=args.seed)  # fmt: skip
    if not args.model:
        raise ValueError("give --model (or --predictions)")
    return _generate_and_score(benches, args, cfg)


def _score_predictions(bench: Benchmark, args: argparse.Namespace) -> int:
    """pass@k for each --pass-k up to the number of samples every problem has."""
    from megatron_azr.eval.predictions import read_predictions
    from megatron_azr.eval.runner import grade, score

    problems = bench.load()
    preds = read_predictions(bench, problems, args.predictions)
    with _executor(bench.domain != "math", args.workers) as executor:
        verdicts = grade(bench, preds.problems, preds.responses, executor)
    result = score(bench, preds.problems, preds.responses, verdicts, args.pass_k, "predictions")
    out = Path(args.out or Path(args.predictions).with_suffix(".scored"))
    _write(out, [result], None, Path(args.predictions).stem)
    print(f"{bench.title}: scored {len(preds.problems)} problems "
          f"({preds.missing} of {len(problems)} without a prediction); {out}")  # fmt: skip
    for key, value in result.extra.items():
        print(f"{key}: {value:.2f}")
    for key in sorted(result.pass_at, key=lambda k: int(k.split("@")[1]), reverse=True):
        print(f"{key}: {result.pass_at[key]:.2f}")
    return 0


def _generate_and_score(benches: list[Benchmark], args: argparse.Namespace, cfg: Any) -> int:
    from megatron_azr.eval.model import resolve_model
    from megatron_azr.eval.paper import match_model
    from megatron_azr.eval.prompts import style
    from megatron_azr.eval.runner import evaluate
    from megatron_azr.rollout.build import build_rollout_engine
    from megatron_azr.rollout.config import RolloutConfig

    source = resolve_model(args.model)
    problems = {b.name: b.load() for b in benches}
    if cfg.limit:
        problems = {k: v[: cfg.limit] for k, v in problems.items()}
    tokenizer = None
    if cfg.template in ("azr-chat", "chat"):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source.hf_dir)
    s = style(cfg.template, tokenizer)
    # One process, one engine (vllm: one GPU; its tensor parallelism needs the trainer's ranks).
    rollout = RolloutConfig(engine=args.engine, dtype=args.dtype, max_model_len=args.max_model_len)
    engine = build_rollout_engine(rollout, source.hf_dir)
    default_out = (source.run_dir / "eval" / f"step_{source.step:08d}") if source.run_dir else (
        Path("runs") / "eval" / source.label)  # fmt: skip
    out = Path(args.out or default_out)
    results: list[BenchmarkResult] = []
    needs_executor = any(b.domain != "math" for b in benches)
    with _executor(needs_executor, args.workers) as executor:
        for bench in benches:
            results.append(evaluate(bench, problems[bench.name], engine, executor, cfg, s))
            _write(out, results, args.paper_model or match_model(str(args.model)), source.label)
    print((out / "table.md").read_text(), end="")
    print(f"azr eval: results in {out}")
    return 0


def _executor(needed: bool, workers: int) -> Any:
    """The sandbox for code benchmarks: EvalPlus's 4 GiB memory cap, room for big test data."""
    if not needed:
        return contextlib.nullcontext()
    from megatron_azr.executor.config import ExecutorConfig
    from megatron_azr.executor.pool import SandboxExecutor

    return SandboxExecutor(ExecutorConfig(workers=workers, memory_mb=4096, max_program_kb=4096))


def _write(out: Path, results: list[BenchmarkResult], paper_model: str | None, label: str) -> None:
    from megatron_azr import atomic
    from megatron_azr.eval.table import render

    out.mkdir(parents=True, exist_ok=True)
    for r in results:
        atomic.write_text(out / f"{r.benchmark.replace('+', 'plus')}.json",
                          json.dumps(r.to_json(), indent=1))  # fmt: skip
    summary = {r.benchmark: {**r.pass_at, **r.extra, "n_problems": r.n_problems} for r in results}
    atomic.write_text(out / "summary.json", json.dumps(summary, indent=1))
    pass1 = {r.benchmark: r.pass1 for r in results if "pass@1" in r.pass_at}
    titles = {r.benchmark: r.title for r in results}
    atomic.write_text(out / "table.md", render(pass1, label, paper_model, titles))
