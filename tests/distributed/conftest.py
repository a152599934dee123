"""Fixtures for the parallel-engine tests: one tiny model, adapters, servers with pinned workers.

    dist_model      a 4-layer, 128-wide random Llama (4 heads, 2 KV heads: splits over 2 tensor-parallel
                    ranks; 2 layers per pipeline stage), built once per session
    dist_adapters   a folder served with --adapter-dir: A.safetensors, B.safetensors (random a, b at every
                    site, different seeds)
    start           start(kind, model, engine=...) -> a healthy ServerProcess, one core per engine worker
                    (VLLM_CPU_OMP_THREADS_BIND="0|1"); all are stopped at the end of the session
    tp1_reference   the single-worker answers (fairsteer serve, uni executor) to REFERENCE: every parallel
                    mode is compared with them

Each server costs 30-60 s to start on 2 cores; a module starts the few it needs and stops them.
"""

from pathlib import Path

import pytest
from distributed.helpers import ADMIN_KEY, ENGINE, PINNED, REFERENCE, Answer, adapter_table, answers
from server_process import ServerProcess, fairsteer_argv, free_port, plain_vllm_argv
from tiny_models import save_tiny_model
from transformers import AutoConfig

from adapters import io
from adapters.spec import ModelIdentity, random_spec


def random_adapter(identity: ModelIdentity, name: str, seed: int, path: Path) -> Path:
    spec = random_spec(identity, name, seed, scale_a=0.5, scale_b=2.0, base_model="tiny", method="constructed")
    return io.save(spec, path)


@pytest.fixture(scope="session")
def dist_model(tmp_path_factory) -> str:
    return str(save_tiny_model(tmp_path_factory.mktemp("dist-model"), "LlamaForCausalLM", seed=0, layers=4))


@pytest.fixture(scope="session")
def dist_adapters(dist_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dist-adapters")
    identity = ModelIdentity.from_config(AutoConfig.from_pretrained(dist_model))
    random_adapter(identity, "A", 1, folder / "A.safetensors")
    random_adapter(identity, "B", 2, folder / "B.safetensors")
    return folder


@pytest.fixture(scope="session")
def start(tmp_path_factory):
    """start(kind, model, engine=(...), adapters=..., options=..., env=...) -> a healthy ServerProcess.

    kind "fairsteer" runs `fairsteer serve` (admin key in its environment), "plain" vLLM's own server
    with the same defaults (server_process.plain_vllm_argv)."""
    started: list[ServerProcess] = []

    def run(kind: str, model: str, engine: tuple[str, ...] = (), adapters: dict | None = None,
            options: tuple[str, ...] = (), env: dict | None = None, timeout: float = 600) -> ServerProcess:
        port = free_port()
        log = tmp_path_factory.mktemp(f"dist-{kind}") / f"server-{port}.log"
        if kind == "plain":
            argv = plain_vllm_argv(model, port, engine_options=ENGINE + engine)
        else:
            if "--adapter-dir" in options:
                options += ("--adapter-record", str(log.with_suffix(".record.json")))
            argv = fairsteer_argv(model, adapters or {}, port, fairsteer_options=options,
                                  engine_options=ENGINE + engine)
        server = ServerProcess(argv, port, log, env={**PINNED, "FAIRSTEER_ADMIN_KEY": ADMIN_KEY, **(env or {})})
        started.append(server)
        server.start()
        print(f"started {kind} {' '.join(engine)}: log {log}")
        return server.wait_ready(timeout)

    yield run
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def tp1_reference(start, dist_model, dist_adapters) -> list[Answer]:
    """fairsteer serve with one worker (the uni executor), each REFERENCE request alone."""
    server = start("fairsteer", dist_model, adapters=adapter_table(dist_adapters))
    try:
        return answers(server.url, dist_model, REFERENCE, batched=False)
    finally:
        server.stop()
