"""`fairsteer serve`: vLLM's OpenAI server with a per-request `fairness_strength`.

    fairsteer serve                                   SmolLM2-135M-Instruct + the shipped adapter, 127.0.0.1:8000
    fairsteer serve --model PATH_OR_NAME --adapter NAME=FILE [--adapter NAME2=FILE2 ...]
                    [--default-adapter NAME] [--default-fairness-strength X] [--max-fairness-strength Y]
                    [--host 127.0.0.1] [--port 8000] [-- VLLM ENGINE OPTIONS ...]

Options after `--` go to vLLM unchanged (e.g. `-- --max-num-seqs 64 --gpu-memory-utilization 0.8`) and
override our defaults: on CPU eager mode, the in-process executor, fp32, a 256 MiB KV cache and a context
of at most 2048 tokens (measured to work on a 2-core machine, see shared/DESIGN.md); on GPU, vLLM's own.
A bad adapter file, bad options or a plugin that fails to load stop start-up with exit status 2.

Keys are better given through FAIRSTEER_API_KEY / FAIRSTEER_ADMIN_KEY than on the command line, where
other local users can read them in the process list.
"""

import argparse

from server.security import DEFAULT_MAX_REQUEST_BYTES
from server.settings import DEFAULT_DRAIN_S, DEFAULT_MAX_ADAPTERS, DEFAULT_MODEL, ServeOptions


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve a model with per-request fairness_strength (OpenAI API)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help=f"a Hugging Face folder, a hub id, or a known alias (default: {DEFAULT_MODEL})")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=FILE",
                   help="load a steering adapter under NAME (repeatable; the first is the default)")
    p.add_argument("--default-adapter", metavar="NAME", help="the adapter requests get without `steering`")
    p.add_argument("--default-fairness-strength", type=float, default=0.0, metavar="X",
                   help="strength for requests that send no fairness_strength (default 0: unsteered)")
    p.add_argument("--max-fairness-strength", type=float, default=2.0, metavar="Y",
                   help="requests above it get HTTP 400 (default 2.0; 1.0 is the trained map)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--group-lexicon", metavar="FILE",
                   help="JSON lexicon of the groups counted in /metrics (default: the gender lexicon; "
                        "format in server/lexicons)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require `Authorization: Bearer KEY` on the API (or set FAIRSTEER_API_KEY)")
    p.add_argument("--admin-key", default=None, metavar="KEY",
                   help="the key for /v1/admin adapter management (or set FAIRSTEER_ADMIN_KEY)")
    p.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES, metavar="N",
                   help=f"refuse larger request bodies with HTTP 413 (default {DEFAULT_MAX_REQUEST_BYTES})")
    p.add_argument("--adapter-dir", action="append", default=[], metavar="DIR",
                   help="enable loading/replacing/unloading adapters at run time from files in DIR "
                        "(repeatable; needs --admin-key)")
    p.add_argument("--adapter-record", metavar="FILE",
                   help="where run-time adapter changes are recorded, to be restored on restart (default: "
                        "the first --adapter-dir's .fairsteer-adapters.json)")
    p.add_argument("--max-adapters", type=int, default=DEFAULT_MAX_ADAPTERS, metavar="N",
                   help=f"most adapters loaded at once with --adapter-dir (default {DEFAULT_MAX_ADAPTERS})")
    p.add_argument("--drain-timeout", type=int, default=DEFAULT_DRAIN_S, metavar="S",
                   help="on SIGTERM/SIGINT, let in-flight requests finish for up to S seconds (vLLM's "
                        f"--shutdown-timeout; default {DEFAULT_DRAIN_S}, 0 aborts them)")
    p.add_argument("engine_options", nargs=argparse.REMAINDER,
                   help="after `--`: vLLM engine/server options, passed through")
    p.set_defaults(run=run)


def options_from(args: argparse.Namespace) -> ServeOptions:
    return ServeOptions(
        model=args.model, adapters=tuple(args.adapter), default_adapter=args.default_adapter,
        default_fairness_strength=args.default_fairness_strength,
        max_fairness_strength=args.max_fairness_strength, host=args.host, port=args.port,
        group_lexicon=args.group_lexicon, api_key=args.api_key, admin_key=args.admin_key,
        max_request_bytes=args.max_request_bytes, adapter_dirs=tuple(args.adapter_dir), adapter_record=args.adapter_record,
        max_adapters=args.max_adapters, drain_timeout=args.drain_timeout,
        engine_options=tuple(args.engine_options))


def run(args: argparse.Namespace) -> int:
    from server.app import run as serve
    from server.settings import build_settings

    return serve(build_settings(options_from(args)))
