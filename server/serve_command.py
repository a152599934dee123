"""`fairsteer serve`: vLLM's OpenAI server with a per-request `fairness_strength`.

    fairsteer serve                                   SmolLM2-135M-Instruct + the shipped adapter, 127.0.0.1:8000
    fairsteer serve --model PATH_OR_NAME --adapter NAME=FILE [--adapter NAME2=FILE2 ...]
                    [--default-adapter NAME] [--default-fairness-strength X] [--max-fairness-strength Y]
                    [--host 127.0.0.1] [--port 8000] [-- VLLM ENGINE OPTIONS ...]

Options after `--` go to vLLM unchanged (e.g. `-- --max-num-seqs 64 --gpu-memory-utilization 0.8`) and
override our defaults: on CPU eager mode, the in-process executor, fp32, a 256 MiB KV cache and a context
of at most 2048 tokens (measured to work on a 2-core machine, see shared/DESIGN.md); on GPU, vLLM's own.
A bad adapter file, bad options or a plugin that fails to load stop start-up with exit status 2.
"""

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"
SHIPPED_ADAPTERS = {DEFAULT_MODEL: ("dso", Path(__file__).resolve().parent.parent / "adapters" / "shipped"
                                    / "smollm2-135m-instruct-dso.safetensors")}
CPU_KV_CACHE_BYTES = 256 * 1024**2
CPU_MAX_MODEL_LEN = 2048


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
    p.add_argument("engine_options", nargs=argparse.REMAINDER,
                   help="after `--`: vLLM engine/server options, passed through")
    from server.reliability import add_flags  # issue 6: --api-key --admin-key --adapter-dir ...

    add_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from server.cli import UsageError

    engine_options = list(args.engine_options)
    if engine_options and engine_options[0] == "--":
        engine_options = engine_options[1:]
    if engine_options and not engine_options[0].startswith("-"):
        raise UsageError(f"unexpected argument {engine_options[0]!r}; vLLM options go after `--`, "
                         "e.g. `fairsteer serve --model M -- --max-num-seqs 8`")
    alias = args.model or DEFAULT_MODEL
    model_path = _resolve(alias)
    table = _adapter_table(args.adapter, alias)
    on_cpu = not _has_cuda()
    options = engine_defaults(model_path, on_cpu)
    if alias != model_path and not any(o.startswith("--served-model-name") for o in engine_options):
        options += ["--served-model-name", alias]
    options += engine_options
    served_name = _served_name(options, model_path)

    from server import group_metrics
    from server.registry import load_registry

    group_metrics.configure(args.group_lexicon, [served_name])  # a bad lexicon stops start-up here
    identity = _identity(model_path)
    registry = load_registry(served_name, table, identity, args.default_adapter,
                             args.default_fairness_strength, args.max_fairness_strength)
    group_metrics.set_loaded_adapters(registry.adapters)
    kwargs = _plugin_kwargs(model_path, table)
    from server.reliability import configure  # issue 6: auth, limits, run-time adapters

    kwargs = configure(args, model_path, identity, table, kwargs, options)
    return _serve(model_path, args.host, args.port, options, kwargs, registry)


def engine_defaults(model_path: str, on_cpu: bool) -> list[str]:
    """vLLM options that work on this kind of machine; the user's options after `--` override them."""
    if not on_cpu:
        return []
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # with 2 threads and a busy neighbour: 15x slower
    return ["--enforce-eager", "--distributed-executor-backend", "uni", "--dtype", "float32",
            "--kv-cache-memory-bytes", str(CPU_KV_CACHE_BYTES),
            "--max-model-len", str(min(CPU_MAX_MODEL_LEN, _model_context(model_path)))]


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _resolve(alias: str) -> str:
    from adapters.model_store import ModelPullError, resolve_model
    from server.cli import UsageError

    try:
        return resolve_model(alias)
    except ModelPullError as exc:
        raise UsageError(f"cannot obtain model {alias!r}: {exc}") from None


def _adapter_table(specs: list[str], alias: str) -> dict[str, str]:
    from server.cli import UsageError
    from server.registry import adapter_name_problem

    table: dict[str, str] = {}
    for item in specs:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--adapter {item!r}: expected NAME=FILE, e.g. --adapter dso=adapters/shipped/x.safetensors")
        if name in table:
            raise UsageError(f"--adapter {name!r} is given twice; each adapter needs its own name")
        if problem := adapter_name_problem(name):
            raise UsageError(f"--adapter {item!r}: {problem}")
        table[name] = path
    if table or alias not in SHIPPED_ADAPTERS:
        return table
    name, shipped = SHIPPED_ADAPTERS[alias]
    if shipped.is_file():
        return {name: str(shipped)}
    print(f"fairsteer serve: WARNING: {shipped} does not exist yet (the trainer produces it); serving "
          f"{alias} UNSTEERED: requests with fairness_strength > 0 will get HTTP 400", file=sys.stderr)
    return {}


def _model_context(model_path: str) -> int:
    config = Path(model_path) / "config.json"
    if not config.is_file():
        return CPU_MAX_MODEL_LEN
    data = json.loads(config.read_text())
    data = data.get("text_config", data)
    return int(data.get("max_position_embeddings") or CPU_MAX_MODEL_LEN)


def _identity(model_path: str):
    from adapters.spec import AdapterFormatError, ModelIdentity
    from server.cli import UsageError

    try:
        from transformers import AutoConfig

        return ModelIdentity.from_config(AutoConfig.from_pretrained(model_path))
    except AdapterFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to read the config is the user's to fix
        raise UsageError(f"cannot read the model config of {model_path!r} ({exc}); pass a Hugging Face "
                         f"folder or `--model {DEFAULT_MODEL}`") from None


def option_value(options: list[str], flag: str) -> str | None:
    """The value of `flag` among vLLM's options (`--flag V` or `--flag=V`; the last one given wins)."""
    value = None
    for i, option in enumerate(options):
        if option == flag and i + 1 < len(options):
            value = options[i + 1]
        elif option.startswith(flag + "="):
            value = option.split("=", 1)[1]
    return value


def _served_name(options: list[str], model_path: str) -> str:
    """The name requests use for the model: the last --served-model-name given (its first value)."""
    return option_value(options, "--served-model-name") or model_path


def _plugin_kwargs(model_path: str, table: dict[str, str]) -> dict:
    """The engine kwargs that select the steered model; import failures stop start-up (never unsteered)."""
    if not table:
        return {}
    from server.cli import UsageError

    try:
        from server import vllm_plugin
    except Exception as exc:  # noqa: BLE001 - report any import failure, never serve without steering
        raise UsageError(f"the fairsteer vLLM plugin failed to load ({exc!r}); refusing to serve with "
                         "adapters unapplied") from None
    from adapters.spec import AdapterFormatError

    for key, value in getattr(vllm_plugin, "ENV", {}).items():
        os.environ.setdefault(key, str(value))
    try:
        return vllm_plugin.engine_kwargs(model_path, table)
    except AdapterFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. PluginError: the engine would not apply steering
        raise UsageError(f"steering cannot be enabled: {exc}") from None


def _serve(model_path, host, port, options, kwargs, registry) -> int:
    import uvloop

    from server.app import build_vllm_args, serve
    from server.cli import UsageError

    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")  # as vLLM's own CLI does
    args = build_vllm_args(model_path, host, port, options, kwargs)
    try:
        uvloop.run(serve(args, registry))
    except (KeyboardInterrupt, SystemExit):
        raise
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port} ({exc}); pick another --port") from None
    except Exception as exc:  # noqa: BLE001 - the engine logged the cause above; say so plainly
        raise UsageError(f"the vLLM engine failed to start: {exc}. The log above names the cause") from None
    return 0
