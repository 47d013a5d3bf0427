"""The ``d2v`` command line.

Each subsystem owns a light ``cli`` module (argparse only, no torch at import time) exposing
``register(subparsers)`` and optionally ``register_bench(bench_subparsers)``. The heavy imports happen
inside the functions the parsers dispatch to, so ``d2v embed`` starts without torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from d2v import __version__
from d2v.core.errors import D2VError

# Order is the order of ``d2v --help``.
_CLI_MODULES = (
    "d2v.models.cli",  # convert
    "d2v.training.cli",  # train, probe
    "d2v.export.cli",  # export
    "d2v.workflows.serve",  # serve (the server's flags + model provisioning), bench serve
    "d2v.extract.cli",  # embed, extract
    "d2v.workflows.cli",  # quickstart
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="d2v", description="data2vec: train, export and serve embedding models.")
    parser.add_argument("--version", action="version", version=f"d2v {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = sub.add_parser("bench", help="benchmarks (speed, reported as ratios; never a test)")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="WHAT")
    bench.set_defaults(func=lambda args: bench.print_help() or 2)
    for name in _CLI_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a subsystem not installed in this environment
            if exc.name and name.startswith(exc.name):
                continue
            raise
        module.register(sub)
        if hasattr(module, "register_bench"):
            module.register_bench(bench_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # one line per HTTP request is noise on a terminal (d2v embed, d2v extract)
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except D2VError as exc:
        print(f"d2v {args.command}: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"d2v {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
