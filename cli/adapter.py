"""`fairsteer adapter inspect FILE [--json] [--model M]`: show an adapter's metadata, sites and calibration.

What is shown is `adapters.inspect`'s; a bad file exits with status 2 and the reason (`AdapterFormatError`).
"""

import json
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("adapter", help="steering adapter files")
    actions = parser.add_subparsers(dest="adapter_command", required=True, metavar="ACTION")
    inspect = actions.add_parser("inspect", help="show an adapter's metadata, sites and calibration")
    inspect.add_argument("file", help="an adapter .safetensors file")
    inspect.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    inspect.add_argument("--model", help="a local Hugging Face folder (or a known model name): report the "
                         "adapter's share of its parameters and whether the adapter fits it")
    inspect.set_defaults(run=run)


def run(args) -> int:
    from adapters.inspect import describe, render
    from adapters.io import load

    spec = load(args.file)
    info = describe(spec, Path(args.file), args.model)
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0
