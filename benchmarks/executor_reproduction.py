"""Reproduction of recorded outputs (CRUXEval, the AZR seed buffers); every mismatch classified.

Runs each file twice through the sandboxed executor, as ``azr executor check`` does: plainly (the
program on its input; the recorded output compared by value inside the sandbox) and with full
proposal validation (``--validate``). Prints markdown for ``benchmarks/RESULTS.md``: per file the
reproduction rate over records whose output is reproducible at all, then one row per mismatching
record with its cause, then the records validation rejects although their text was reproduced.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from megatron_azr.azr.config import AZRConfig
from megatron_azr.executor import ExecutorConfig, SandboxExecutor
from megatron_azr.executor.check import parse_record, run_records

ROOT = Path(__file__).resolve().parents[1]
FILES = [
    ROOT / "data" / "benchmarks" / "cruxeval.jsonl",
    ROOT / "data" / "azr_seeds" / "7b_coder_seed_io.jsonl",
    ROOT / "data" / "azr_seeds" / "7b_coder_code_f_seed_io.jsonl",
]
NOT_REPRODUCIBLE = {"NonDeterministic", "AddressInOutput", "UnequalToItself"}


def run_file(
    ex: SandboxExecutor, path: Path, cfg: ExecutorConfig, banned: list[str] | None
) -> list[dict]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return run_records(ex, [parse_record(i, line, cfg, banned) for i, line in enumerate(lines)])


def cause(rec: dict, check: dict) -> str:
    detail = check.get("detail", "")
    kind = check.get("error_type", "")
    if kind == "NonDeterministic" and "hash seed" in detail:
        why = "output depends on string-hash order (iteration over a set)"
    elif kind == "NonDeterministic":
        why = "output changes from call to call (`secrets` randomness)"
    elif kind == "AddressInOutput":
        why = "repr carries a memory address (a lambda in the input)"
    elif kind == "UnequalToItself":
        why = "output is not equal to itself (NaN)"
    else:
        why = f"unexplained ({check['status']} {kind})"
    outputs = rec.get("outputs") or [rec.get("output")]
    if any(o == "" for o in outputs):
        why += "; recorded output empty (the original's 'error' substring bug let it through)"
    return why


def rejection(rec: dict, check: dict) -> str:
    outputs = rec.get("outputs") or [rec.get("output")]
    if check.get("error_type") == "NoRoundTrip" and any(len(o or "") > 400 for o in outputs):
        return "output longer than 400 chars, cut by the original's rule: no usable gold answer"
    if check.get("error_type") == "NonDeterministic" and "hash seed" in check.get("detail", ""):
        return "hash-order dependent (matched the record under this run's seed by chance)"
    return check.get("detail", "").splitlines()[-1][:90].replace("|", "\\|")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", type=Path, default=FILES)
    args = p.parse_args()
    cfg = ExecutorConfig()
    with SandboxExecutor(cfg) as ex:
        for path in args.files:
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            plain = run_file(ex, path, cfg, banned=None)
            checked = run_file(ex, path, cfg, banned=AZRConfig().banned_imports)
            bad = {c["index"] for c in checked if c.get("error_type") in NOT_REPRODUCIBLE}
            mismatched = [r["index"] for r in plain if not r.get("match")]
            reproducible = len(records) - len(bad)
            reproduced = sum(1 for r in plain if r.get("match") and r["index"] not in bad)
            print(f"\n### {path.name}: {len(records)} records")
            rate = 100 * reproduced / reproducible
            print(f"- reproduced (value equality, in the sandbox): {len(records) - len(mismatched)}"
                  f"/{len(records)}; over the {reproducible} records whose output is reproducible "
                  f"at all: {reproduced}/{reproducible} = {rate:.2f}%")  # fmt: skip
            print(
                f"- `--validate`: {sum(c['status'] == 'ok' for c in checked)} valid, "
                f"{len(records) - sum(c['status'] == 'ok' for c in checked)} rejected"
            )
            if mismatched:
                print("\n| record | cause of the mismatch | `--validate` verdict |")
                print("|---:|---|---|")
                for i in mismatched:
                    c = checked[i]
                    print(f"| {i} | {cause(records[i], c)} | {c['status']} {c.get('error_type')} |")
            rejected = [c for c in checked if c["status"] != "ok" and c["index"] not in mismatched]
            if rejected:
                print("\nReproduced, but rejected by `--validate`:\n")
                print("| record | verdict | why |")
                print("|---:|---|---|")
                for c in rejected:
                    print(f"| {c['index']} | {c['status']} {c.get('error_type')} | "
                          f"{rejection(records[c['index']], c)} |")  # fmt: skip


if __name__ == "__main__":
    main()
