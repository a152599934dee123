"""Fixtures for the reliability tests: a tiny model, an adapter folder with good and bad files, keys.

    rel_model      Path of a 2-layer, 128-wide random Llama (tests/tiny_models.py), built once per session
    adapter_dir    a folder served with --adapter-dir: A.safetensors and B.safetensors (two random adapters
                   at every site, different seeds), corrupt.safetensors (not safetensors), wrong.safetensors
                   (valid, for a 64-wide model), escape.safetensors (a symlink to a file outside the folder);
                   outside.safetensors lies next to the folder, reachable only by traversal
    start_server   starts `fairsteer serve` on 127.0.0.1 with the keys in its environment; stopped by PID

Each test module shares one server (start-up costs about 30-60 s on 2 cores).
"""

from pathlib import Path

import pytest
from reliability.helpers import ADMIN_KEY, API_KEY, ENGINE
from server_process import ServerProcess, fairsteer_argv, free_port
from tiny_models import save_tiny_model, tiny_config
from transformers import AutoConfig

from adapters import io
from adapters.spec import ModelIdentity, random_spec


def random_adapter(name: str, identity: ModelIdentity, seed: int, path: Path) -> Path:
    spec = random_spec(identity, name, seed, scale_a=0.5, scale_b=2.0, base_model="tiny", method="constructed")
    return io.save(spec, path)


@pytest.fixture(scope="session")
def rel_model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("rel-model"), "LlamaForCausalLM", seed=0)


@pytest.fixture(scope="session")
def adapter_dir(rel_model, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rel-adapters")
    folder = root / "served"
    folder.mkdir()
    identity = ModelIdentity.from_config(AutoConfig.from_pretrained(rel_model))
    random_adapter("A", identity, 1, folder / "A.safetensors")
    random_adapter("B", identity, 2, folder / "B.safetensors")
    (folder / "corrupt.safetensors").write_bytes(b"\x80\x04 this is not a safetensors file (nor a pickle)")
    wrong = ModelIdentity.from_config(tiny_config("LlamaForCausalLM", hidden=64))
    random_adapter("wrong", wrong, 3, folder / "wrong.safetensors")
    outside = random_adapter("outside", identity, 4, root / "outside.safetensors")
    (folder / "escape.safetensors").symlink_to(outside)
    return folder


@pytest.fixture(scope="session")
def start_server(rel_model, tmp_path_factory):
    """start_server(adapters, *fairsteer_options, engine=vllm_options) -> a healthy ServerProcess; all are
    stopped at the end."""
    started: list[ServerProcess] = []

    def start(adapters: dict[str, str], *options: str, engine: tuple[str, ...] = ()) -> ServerProcess:
        port = free_port()
        log = tmp_path_factory.mktemp("rel-logs") / f"server-{port}.log"
        env = {"FAIRSTEER_API_KEY": API_KEY, "FAIRSTEER_ADMIN_KEY": ADMIN_KEY}
        if "--adapter-dir" in options and "--adapter-record" not in options:  # servers share adapter_dir
            options += ("--adapter-record", str(log.with_suffix(".record.json")))
        server = ServerProcess(fairsteer_argv(str(rel_model), adapters, port, fairsteer_options=options,
                                              engine_options=ENGINE + engine), port, log, env=env)
        started.append(server)
        server.start()
        return server.wait_ready()

    yield start
    for server in started:
        server.stop()
