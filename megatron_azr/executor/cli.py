"""``azr executor check | serve | doctor | bench``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from megatron_azr.config import Config


def _config(args: argparse.Namespace) -> Config:
    from megatron_azr.config import load_config

    return load_config(args.config, args.overrides)


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="run config YAML (its executor section)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. executor.workers=4")


class _Intermixed(argparse.ArgumentParser):
    """KEY=VALUE overrides may also follow options: ``check FILE --endpoints URL key=value``."""

    _inner = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._inner:  # parse_known_intermixed_args parses in two passes through here
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("executor", help="the sandboxed code executor")
    sub = p.add_subparsers(dest="executor_command", required=True, parser_class=_Intermixed)

    c = sub.add_parser(
        "check",
        help="run the programs of a JSONL file in the sandbox",
        epilog="exit status: 0 every record ran ok (and reproduced its recorded output), "
        "1 some did not (invalid, error, timeout, mismatch), 2 the check could not run",
    )
    c.add_argument("file", help="JSONL: program|snippet|code, input|inputs, [output|outputs]")
    c.add_argument("--out", default="-", help="result JSONL (default: stdout)")
    c.add_argument(
        "--validate",
        action="store_true",
        help="full proposal validation: ban list, two hash seeds, determinism",
    )
    c.add_argument("--chunk", type=int, default=256, help="records per executor request")
    c.add_argument(
        "--endpoints",
        default="",
        metavar="URL[,URL...]",
        help="run through these farm servers (`azr executor serve`) instead of a local pool; "
        "with executor.token_file=F",
    )
    _add_config(c)
    c.set_defaults(func=_cmd_check)

    s = sub.add_parser("serve", help="serve the sandboxed pool over HTTP (a farm server)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    s.add_argument("--port", type=int, default=0, help="0: any free port (announced)")
    s.add_argument("--token-file", required=True, help="0600 file with the bearer token")
    s.add_argument("--rendezvous", default="", metavar="DIR", help="announce the server here")
    s.add_argument(
        "--advertise",
        default="",
        metavar="HOST",
        help="host name clients use (default: SLURMD_NODENAME, else this host's)",
    )
    s.add_argument("--max-jobs", type=int, default=4096, help="jobs per request at most")
    s.add_argument("--max-request-mb", type=int, default=64, help="request body size at most")
    _add_config(s)
    s.set_defaults(func=_cmd_serve)

    d = sub.add_parser("doctor", help="show and verify the isolation layers in force")
    _add_config(d)
    d.set_defaults(func=_cmd_doctor)

    b = sub.add_parser("bench", help="throughput/latency on CRUXEval vs the original executor")
    from megatron_azr.executor.bench import add_arguments

    add_arguments(b)
    _add_config(b)
    b.set_defaults(func=_cmd_bench)


def _cmd_check(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from megatron_azr.executor import check
    from megatron_azr.executor.pool import ExecutorError
    from megatron_azr.executor.remote import open_executor
    from megatron_azr.executor.sandbox import SandboxUnavailable

    full = _config(args)
    cfg = full.executor
    if args.endpoints:
        try:
            cfg = dataclasses.replace(cfg, endpoints=args.endpoints.split(","))
        except ValueError as e:
            print(f"azr executor: --endpoints: {e}", file=sys.stderr)
            return 2
    banned = full.azr.banned_imports if args.validate else None
    summary = check.Summary()
    try:
        with open(args.file) as fh:
            total = sum(1 for line in fh if line.strip())
    except OSError as e:
        print(f"azr executor: cannot read {args.file}: {e.strerror}", file=sys.stderr)
        return 2
    out = sys.stdout if args.out == "-" else open(args.out, "w")  # noqa: SIM115
    try:
        with open_executor(cfg) as ex, open(args.file) as fh:
            bar = tqdm(total=total, desc="executor check", unit="rec", file=sys.stderr)
            index = 0
            for lines in check.chunks(fh, args.chunk):
                records = [
                    check.parse_record(index + k, line, cfg, banned) for k, line in enumerate(lines)
                ]
                index += len(lines)
                for line in check.run_records(ex, records):
                    summary.add(line)
                    out.write(json.dumps(line) + "\n")
                out.flush()
                bar.update(len(lines))
            bar.close()
    except (SandboxUnavailable, ExecutorError) as e:
        print(f"azr executor: {e}", file=sys.stderr)
        return 2
    finally:
        if out is not sys.stdout:
            out.close()
    print(summary.text(), file=sys.stderr)
    return 0 if summary.all_ok() else 1


def _cmd_serve(args: argparse.Namespace) -> int:
    from megatron_azr.executor import server, wire
    from megatron_azr.executor.pool import ExecutorError, SandboxExecutor
    from megatron_azr.executor.sandbox import SandboxUnavailable
    from megatron_azr.telemetry.logs import setup_logging

    cfg = _config(args).executor
    setup_logging("INFO")
    opts = server.ServeOptions(
        host=args.host, port=args.port, rendezvous=args.rendezvous, advertise=args.advertise,
        max_jobs=args.max_jobs, max_request_mb=args.max_request_mb,
    )  # fmt: skip
    try:
        token = wire.read_token(args.token_file)  # before minutes of pool start-up, not after
        with SandboxExecutor(cfg) as pool:
            server.serve(pool, token, opts)
    except (wire.WireError, SandboxUnavailable, ExecutorError, OSError) as e:
        print(f"azr executor serve: {e}", file=sys.stderr)
        return 2
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from megatron_azr.executor import doctor, sandbox
    from megatron_azr.executor.pool import ExecutorError

    cfg = _config(args).executor
    console = Console()
    plat = sandbox.detect(cfg)
    console.print(
        f"root: {plat.root}   bwrap: {plat.bwrap or 'missing'} {plat.bwrap_version} "
        f"{('(unusable: ' + plat.bwrap_error + ')') if plat.bwrap_error else '(usable)'}\n"
        f"seccomp filter: {'yes' if plat.seccomp else 'no'}   cgroups: "
        f"{('v' + str(plat.cgroups.version)) if plat.cgroups.available else plat.cgroups.reason}"
    )
    try:
        layers, checks = doctor.probe(cfg)
    except (sandbox.SandboxUnavailable, ExecutorError) as e:
        console.print(f"[bold red]refused:[/] {e}")
        return 2
    table = Table(title="layers in force")
    table.add_column("layer")
    table.add_column("setting")
    for name, detail in layers:
        table.add_row(name, detail)
    console.print(table)
    verified = Table(title="verified from inside a job")
    verified.add_column("layer")
    verified.add_column("ok")
    verified.add_column("evidence", overflow="fold")
    for c in checks:
        verified.add_row(c.layer, "[green]yes[/]" if c.ok else "[bold red]NO[/]", c.evidence)
    console.print(verified)
    return 0 if all(c.ok for c in checks) else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    from megatron_azr.executor import bench
    from megatron_azr.executor.pool import ExecutorError
    from megatron_azr.executor.sandbox import SandboxUnavailable

    try:
        cfg = _config(args)
        return bench.run(args, cfg.executor, cfg.azr.banned_imports)
    except (SandboxUnavailable, ExecutorError) as e:
        print(f"azr executor: {e}", file=sys.stderr)
        return 2
