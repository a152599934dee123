"""`fairsteer model pull NAME [--cache-dir DIR]`: obtain a known small model offline; prints its folder.

The recipe and the cache are `adapters.model_store`'s; this module turns flags into its arguments.
"""

import sys

from adapters.model_store import MODELS
from cli.main import UsageError


def register(subparsers) -> None:
    parser = subparsers.add_parser("model", help="obtain models (offline-friendly)")
    actions = parser.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    pull_parser = actions.add_parser("pull", help="obtain a known small model as a Hugging Face folder")
    pull_parser.add_argument("name", help=f"one of: {', '.join(MODELS)}")
    pull_parser.add_argument("--cache-dir", help="where models are kept (default: $FAIRSTEER_HOME/models "
                             "or ~/.cache/fairsteer/models)")
    pull_parser.set_defaults(run=run)


def run(args) -> int:
    from adapters.model_store import pull, terms_path

    if args.name not in MODELS:
        raise UsageError(f"unknown model {args.name!r}; known: {', '.join(MODELS)}. For any other model, "
                         "pass its local Hugging Face folder to --model directly")
    folder = pull(args.name, args.cache_dir)
    terms = terms_path(args.name, folder)
    if terms is not None:  # stderr: stdout stays the folder alone, for scripts
        print(f"terms of use: {terms} (the model and anything derived from it, such as an adapter trained "
              "on it, come under these terms)", file=sys.stderr)
    print(folder)
    return 0
