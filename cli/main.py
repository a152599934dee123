"""The `fairsteer` command line.

    fairsteer serve --model PATH_OR_NAME --adapter NAME=FILE ...   serve with per-request fairness_strength
    fairsteer model pull smollm2-135m-instruct                     obtain the default real model offline
    fairsteer adapter inspect FILE [--json] [--model M]            show an adapter's metadata and sites
    fairsteer train --method dso --model M --out FILE              train an adapter (dso, caa, mean-diff)
    fairsteer eval --model M --adapter FILE --out DIR              measure bias/capability per strength
    fairsteer audit --url URL --model NAME --out DIR               audit a live server's outputs per strength

Each subcommand module here exposes `register(subparsers)`, which adds its parser and sets `run`; modules
import their heavy dependencies (torch, vLLM) inside `run`, so `--help` is fast. The lower layers raise
their own exceptions (`USER_ERRORS`); they are printed as one line naming the problem, without a traceback.

SIGTERM and SIGHUP unwind a command as Ctrl-C does (`Terminated`, a KeyboardInterrupt), so its `with` and
`finally` blocks run and the child processes it owns are stopped, not orphaned: `eval --task chat`'s server
(server/launcher.py), `model pull`'s pip. `serve` keeps its own handlers: vLLM drains in-flight requests.
"""

import argparse
import importlib
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

COMMAND_MODULES = ("cli.serve", "cli.model", "cli.adapter", "cli.train", "cli.eval", "cli.audit")
COMMANDS_WITH_OWN_SIGNAL_HANDLING = ("serve",)  # server/app.py, server/api_servers.py
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class UsageError(Exception):
    """A command-line problem the user can fix; the message names it and the fix."""


class Terminated(KeyboardInterrupt):
    """A stop signal, raised where the command is, as Ctrl-C's KeyboardInterrupt is."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stop_signals_unwind() -> Iterator[None]:
    """Inside the block SIGTERM and SIGHUP raise `Terminated`; the previous handlers come back after it."""
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}

    def handler(signum, frame) -> None:
        for s in STOP_SIGNALS:  # once: a second signal must not cut short the stopping of child processes
            signal.signal(s, signal.SIG_IGN)
        raise Terminated(signum)

    for s in STOP_SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def user_errors() -> tuple[type[Exception], ...]:
    """Every layer's "the user can fix this" exception (imported late: they pull in torch)."""
    from adapters.model_store import ModelPullError
    from adapters.spec import AdapterFormatError
    from server.audit import AuditError
    from server.errors import ServeConfigError
    from trainer.errors import TrainerError

    return UsageError, AdapterFormatError, ModelPullError, ServeConfigError, TrainerError, AuditError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fairsteer", description=__doc__.split("\n\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    own_handling = args.command in COMMANDS_WITH_OWN_SIGNAL_HANDLING
    try:
        with stop_signals_unwind() if not own_handling else nullcontext():
            return args.run(args) or 0
    except user_errors() as exc:
        print(f"fairsteer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Terminated as exc:
        print(f"fairsteer {args.command}: stopped by {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
