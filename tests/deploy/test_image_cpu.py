"""The CPU image, run: `localhost/fairsteer:VERSION-cpu` (built by `make image-cpu` with podman) serves
steered and unsteered requests to the official `openai` client, counts groups on /metrics, answers the
probe paths the Kubernetes manifests name, works behind vLLM's router, and drains on SIGTERM: the request
it accepted finishes whole and the server exits. It runs as UID 2000 with a read-only root file system:
only its declared volumes and a tmpfs /tmp are writable, so a write anywhere else would fail it.

The model is SmolLM2-135M-Instruct (pulled on the host by `fairsteer model pull`, mounted read-only at
/models) with the shipped adapter (mounted read-only at /adapters), as a Kubernetes pod mounts them.
Slow: about two minutes, most of it vLLM's start-up in the container.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Self

import httpx
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
PODMAN = [str(ROOT / "docker" / "local" / "images.sh"), "podman"]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = os.environ.get("FAIRSTEER_CPU_IMAGE", f"localhost/fairsteer:{VERSION}-cpu")
MODEL = "smollm2-135m-instruct"
ADAPTER = ROOT / "adapters" / "shipped" / "smollm2-135m-instruct-dso.safetensors"
PROMPTS = ["The nurse finished the night shift, and then", "The engineer fixed the bridge because",
           "My neighbour, a teacher, told me that"]
STEERED, UNSTEERED = "(0.75,1]", "0"
pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=check)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Container:
    """The image running under podman, as `podman run` starts it; removed on exit."""

    def __init__(self, port: int, model_dir: str):
        self.name, self.port, self.url = f"fairsteer-test-{os.getpid()}", port, f"http://127.0.0.1:{port}"
        self.run_args = [
            "run", "-d", "--name", self.name, "--read-only", "--read-only-tmpfs", "--shm-size", "1g", "-p", f"127.0.0.1:{port}:8000",
            "-v", f"{model_dir}:/models/{MODEL}:ro", "-v", f"{ADAPTER.parent}:/adapters:ro", IMAGE,
            "--model", f"/models/{MODEL}", "--adapter", f"dso=/adapters/{ADAPTER.name}",
            # A long drain: on a busy 2-core machine the engine can fall to a few tokens per second.
            "--drain-timeout", "600", "--", "--served-model-name", MODEL]

    def __enter__(self) -> Self:
        podman("rm", "-f", self.name, check=False)
        podman(*self.run_args)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if not self.running():
                pytest.fail(f"the container exited during start-up:\n{self.logs()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        pytest.fail(f"the container did not become healthy in 10 minutes:\n{self.logs()}")

    def __exit__(self, *exc) -> None:
        podman("rm", "-f", "-t", "0", self.name, check=False)

    def running(self) -> bool:
        state = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False).stdout.strip()
        return state == "true"

    def logs(self) -> str:
        logs = podman("logs", self.name, check=False)
        return (logs.stdout + logs.stderr)[-8000:]

    def inspect(self, template: str) -> str:
        return podman("inspect", "--format", template, self.name).stdout.strip()


@pytest.fixture(scope="module")
def container(smollm2_path, tmp_path_factory):
    assert shutil.which("podman"), "podman is missing: run `make image-cpu` (installs it and builds the image)"
    if podman("image", "exists", IMAGE, check=False).returncode != 0:
        pytest.fail(f"{IMAGE} is not built: run `make image-cpu` first (`make test` does)")
    # The model volume as an operator must provide it: readable by the image's UID 2000 (the pulled
    # model.safetensors is 0600, owned by whoever pulled it).
    model_dir = tmp_path_factory.mktemp("models") / MODEL
    shutil.copytree(smollm2_path, model_dir)
    for path in [model_dir, *model_dir.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    with Container(_free_port(), str(model_dir)) as running:
        yield running


def _manifest_probe_paths() -> set[str]:
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "deploy" / "k8s" / "base")], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    (deployment,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {container[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}


def _samples(metrics_text: str, name: str) -> dict[tuple, float]:
    """{(strength_bucket, group or None): value} of one counter, for the dso adapter or none."""
    out = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name:
                labels = sample.labels
                out[(labels["adapter"], labels["strength_bucket"], labels.get("group"))] = sample.value
    return out


def _mentions(text: str, terms: list[str]) -> bool:
    """A plain whole-word, case-insensitive search, independent of the server's matcher."""
    return any(re.search(rf"(?<!\w){re.escape(t)}(?!\w)", text, re.IGNORECASE) for t in terms)


def test_image_runs_as_uid_2000_with_a_read_only_root(container):
    assert container.inspect("{{.Config.User}}") == "2000:0"
    assert container.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"
    whoami = podman("exec", container.name, "python3", "-c", "import os; print(os.getuid(), os.getgid())")
    assert whoami.stdout.split() == ["2000", "0"]
    # Writable: the declared cache volume and /tmp. Not writable: the image itself and the mounted files.
    probe = ("import os\nfor d in ('/var/cache/fairsteer', '/tmp', '/opt/fairsteer', '/var/lib/fairsteer', "
             f"'/models/{MODEL}', '/adapters'):\n"
             "    try:\n        open(os.path.join(d, '.w'), 'w').close(); print(d, 'rw')\n"
             "    except OSError:\n        print(d, 'ro')\n")
    result = dict(line.split() for line in podman("exec", container.name, "python3", "-c", probe).stdout.splitlines())
    assert result == {"/var/cache/fairsteer": "rw", "/tmp": "rw", "/opt/fairsteer": "ro",
                      "/var/lib/fairsteer": "ro", f"/models/{MODEL}": "ro", "/adapters": "ro"}, result
    labels = json.loads(podman("image", "inspect", "--format", "{{json .Labels}}", IMAGE).stdout)
    assert labels["org.opencontainers.image.version"] == VERSION


def test_the_image_holds_its_default_model(container):
    # `docker run IMAGE` with no arguments serves the baked SmolLM2; check it is there and complete.
    check = podman("exec", container.name, "python3", "-c",
                   "from adapters.model_store import COMPLETE_MARKER, default_cache_dir as d; "
                   "print((d() / 'smollm2-135m-instruct' / COMPLETE_MARKER).is_file())")
    assert check.stdout.strip() == "True", check.stderr


def test_probe_paths_of_the_manifests_answer(container):
    paths = _manifest_probe_paths()
    assert paths == {"/health", "/livez"}
    for path in paths:
        assert httpx.get(container.url + path, timeout=10).status_code == 200, path


def test_steered_and_unsteered_requests_are_counted_per_group(container):
    client = openai.OpenAI(base_url=container.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    texts = {}
    for strength, bucket in ((1.0, STEERED), (0.0, UNSTEERED)):
        for prompt in PROMPTS:
            r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0,
                                          extra_body={"fairness_strength": strength})
            assert r.model_extra["fairsteer"]["adapter"] == "dso"
            assert r.model_extra["fairsteer"]["strength"] == strength
            texts.setdefault(bucket, []).append(r.choices[0].text)
    assert texts[STEERED] != texts[UNSTEERED], "strength 1 must change the shipped adapter's outputs"

    metrics_text = httpx.get(container.url + "/metrics", timeout=10).text
    completions = _samples(metrics_text, "fairsteer_completions_total")
    groups = _samples(metrics_text, "fairsteer_group_completions_total")
    lexicon = json.loads((ROOT / "server" / "lexicons" / "gender.json").read_text())["groups"]
    mentioned = 0
    for bucket, outputs in texts.items():
        adapter = "dso"  # the default adapter labels strength-0 requests too (each response echoed it)
        assert completions[(adapter, bucket, None)] == len(outputs)
        for group, terms in lexicon.items():
            expected = sum(_mentions(text, terms) for text in outputs)
            assert groups.get((adapter, bucket, group), 0.0) == expected, (bucket, group, outputs)
            mentioned += expected
    assert mentioned > 0, f"no completion mentioned any group; the counters were not exercised: {texts}"


def test_vllm_router_forwards_fairness_strength(container, tmp_path):
    """vLLM's router (static backends, as deploy/k8s/overlays/router runs it) passes the request body whole."""
    router_bin = shutil.which("vllm-router") or str(Path(sys.executable).with_name("vllm-router"))
    assert Path(router_bin).exists(), "vllm-router is missing: it is in the dev extra"
    port = _free_port()
    log = (tmp_path / "router.log").open("w")
    router = subprocess.Popen([router_bin, "--host", "127.0.0.1", "--port", str(port), "--worker-urls",
                               container.url, "--policy", "cache_aware", "--health-check-endpoint", "/health"],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readiness", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        routed = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
        direct = openai.OpenAI(base_url=container.url + "/v1", api_key="unused", max_retries=0, timeout=300)
        for strength in (1.0, 0.0):
            ask = {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 16, "temperature": 0,
                   "extra_body": {"fairness_strength": strength}}
            via_router, straight = routed.completions.create(**ask), direct.completions.create(**ask)
            assert via_router.model_extra["fairsteer"] == straight.model_extra["fairsteer"]
            assert via_router.choices[0].text == straight.choices[0].text
        # The router's own probe paths, as router.yaml names them.
        for path in ("/readiness", "/liveness"):
            assert httpx.get(url + path, timeout=5).status_code == 200, path
    finally:
        router.send_signal(signal.SIGTERM)
        try:
            router.wait(20)
        except subprocess.TimeoutExpired:
            router.kill()
        log.close()


def test_sigterm_finishes_the_accepted_request_and_exits(container):
    """Last in the module: SIGTERM while a stream is generating. The stream must end whole (its full
    max_tokens and finish_reason), /health must say 503 while /livez stays 200, and the server must exit."""
    client = openai.OpenAI(base_url=container.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    tokens = 48
    stream = client.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=tokens, temperature=1.0,
                                       stream=True, stream_options={"include_usage": True},
                                       extra_body={"fairness_strength": 1.0, "min_tokens": tokens})
    first = next(stream)
    podman("kill", "--signal", "SIGTERM", container.name)
    during: dict[str, int] = {}

    def probe():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "/health" not in during:
            try:
                if (code := httpx.get(container.url + "/health", timeout=5).status_code) != 200:
                    during["/livez"] = httpx.get(container.url + "/livez", timeout=5).status_code
                    during["/health"] = code
            except httpx.HTTPError as exc:
                during.setdefault("error", repr(exc))
                return
            time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        chunks = [first, *stream]
    except openai.APIError as exc:
        pytest.fail(f"the accepted stream broke after SIGTERM ({exc!r}); server log:\n{container.logs()}")
    finally:
        prober.join()
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = [c.usage for c in chunks if c.usage]
    assert finish == ["length"] and usage and usage[-1].completion_tokens == tokens, \
        f"the accepted stream was cut: finish {finish}, usage {usage}"
    assert during == {"/health": 503, "/livez": 200}, f"during the drain: {during}\n{container.logs()}"
    exit_code = podman("wait", container.name, timeout=120).stdout.strip()
    assert not container.running()
    assert exit_code == "0", f"exit status {exit_code}:\n{container.logs()}"
