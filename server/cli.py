"""The `fairsteer` command line.

    fairsteer serve --model PATH_OR_NAME --adapter NAME=FILE ...   serve with per-request fairness_strength
    fairsteer model pull smollm2-135m-instruct                     obtain the default real model offline
    fairsteer adapter inspect FILE [--json] [--model M]            show an adapter's metadata and sites
    fairsteer train --method dso --model M --out FILE              train an adapter (dso, caa, mean-diff)
    fairsteer eval --model M --adapter FILE --out DIR              measure bias/capability per strength

Each subcommand lives beside the code it drives and exposes `register(subparsers)`, which adds its parser
and sets `run`; modules import their heavy dependencies (torch, vLLM) inside `run`, so `--help` is fast.
Errors a user can fix are raised as `UsageError` (or `AdapterFormatError`) and printed without a traceback.
"""

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "server.serve_command",
    "adapters.model_store",
    "adapters.inspect",
    "trainer.train_command",
    "trainer.eval_command",
)


class UsageError(Exception):
    """A problem the user can fix; the message names it and the fix."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fairsteer", description=__doc__.split("\n\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from adapters.spec import AdapterFormatError

    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (UsageError, AdapterFormatError) as exc:
        print(f"fairsteer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Run the imported module's main, so `UsageError` raised by subcommands is this same class.
    from server.cli import main as _main

    sys.exit(_main())
