"""A real Prometheus scrapes a real `fairsteer serve` on 127.0.0.1; the dashboards are checked against it.

The tiny random Llama serves two constructed adapters. `logit_bias` pushes its sampling towards " she",
" he" and a few neutral tokens, so the served texts mention groups; the expected counts are computed here
from the texts the server returned (a plain word split, independent of the server's regex), keyed by
the adapter and strength the server says it applied, and compared with what Prometheus scraped.

    FAIRSTEER_DEMO_ROUNDS=12 FAIRSTEER_DASHBOARD_PNG=docs/dashboard.png \
        .venv/bin/pytest tests/observability/test_prometheus_e2e.py     # regenerate the README figure
"""

import json
import math
import os
import re
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import torch
from observability.dashboards import queries
from observability.processes import PrometheusProcess, wait_for
from server_process import ServerProcess, fairsteer_argv, free_port
from tiny_models import save_tiny_model
from transformers import AutoConfig, AutoTokenizer

from server import group_metrics
from server.launcher import fairsteer_command

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny"
PROMPT = "The doctor called the nurse because"
# (adapter, strength, endpoint, stream, n): every strength bucket, both adapters, streamed or not, n > 1.
PLAN = [
    ("shift_he", 0.0, "completions", False, 1), ("shift_he", 0.2, "completions", False, 2),
    ("shift_he", 0.5, "completions", True, 1), ("shift_he", 0.7, "chat/completions", False, 1),
    ("shift_he", 1.0, "chat/completions", True, 1), ("shift_he", 1.5, "completions", False, 1),
    ("random", 0.3, "completions", False, 1), ("random", 0.9, "completions", True, 2),
    ("random", 1.0, "chat/completions", False, 1),
]
ROUNDS = int(os.environ.get("FAIRSTEER_DEMO_ROUNDS", "2"))
PAUSE = float(os.environ.get("FAIRSTEER_DEMO_PAUSE", "0"))  # seconds between rounds, for a longer demo
LEXICON = {g: set(t) for g, t in json.loads((ROOT / "server/lexicons/gender.json").read_text())["groups"].items()}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("served")
    model_dir = save_tiny_model(tmp / "model", "LlamaForCausalLM", seed=0)
    adapters = {name: _constructed_adapter(model_dir, name, tmp) for name in ("shift_he", "random")}
    port = free_port()
    # The console script, as users run it.
    argv = fairsteer_argv(str(model_dir), {name: str(path) for name, path in adapters.items()}, port,
                          engine_options=("--served-model-name", MODEL, "--max-model-len", "512",
                                          "--kv-cache-memory-bytes", str(128 * 1024**2)))
    with ServerProcess(argv, port, tmp / "server.log", ready_timeout=300) as server:
        yield {"url": server.url, "model_dir": model_dir}


def _constructed_adapter(model_dir: Path, name: str, tmp: Path) -> Path:
    """The "shift_he" adapter moves the final hidden state from " she" towards " he" (the logit gap moves by
    4·ω), so the group shares visibly follow the strength; "random" is a small random shift."""
    from safetensors.torch import load_file

    from adapters import io
    from adapters.spec import AdapterMeta, ModelIdentity, SteeringSpec

    identity = ModelIdentity.from_config(AutoConfig.from_pretrained(model_dir))
    if name == "shift_he":
        w = load_file(str(model_dir / "model.safetensors"))["lm_head.weight"].float()
        she, he = (AutoTokenizer.from_pretrained(model_dir).encode(t, add_special_tokens=False)[0]
                   for t in (" she", " he"))
        b = w[he] / w[he].norm() - w[she] / w[she].norm()
        b = (b * 4.0 / float((w[he] - w[she]) @ b)).unsqueeze(0)
    else:
        b = torch.randn(1, identity.hidden_size, generator=torch.Generator().manual_seed(0)) * 0.2
    meta = AdapterMeta(name=name, method="constructed", base_model=str(model_dir), identity=identity)
    spec = SteeringSpec(("final_norm",), torch.zeros_like(b), b, meta)
    return io.save(spec, tmp / f"{name}.safetensors")


@pytest.fixture(scope="module")
def prometheus(served, tmp_path_factory):
    from observability.dashboards import prometheus_tool

    tmp = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(f"global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: fairsteer\n"
                      f"    static_configs: [{{targets: ['{served['url'][7:]}']}}]\n")
    command = [prometheus_tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
               f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    with PrometheusProcess(command, port, tmp / "prometheus.log", ready_timeout=60) as proc:
        # Two scrapes of the idle server first, so that rates over the traffic have a baseline.
        wait_for(lambda: _scalar(proc.url, 'count_over_time(up{job="fairsteer"}[1m])') >= 2, 60, proc, "scrapes")
        yield proc.url


@pytest.fixture(scope="module")
def traffic(served, prometheus):
    """Sends PLAN × ROUNDS; returns what was served and the expected per-group counts."""
    tokenizer = AutoTokenizer.from_pretrained(served["model_dir"])
    boosted = {tokenizer.encode(w, add_special_tokens=False)[0]: 30 for w in (" she", " he", " the", " nurse", ".")}
    start = time.time()
    served_choices = []
    with httpx.Client(base_url=served["url"], timeout=120) as client:
        for round_ in range(ROUNDS):
            for i, (adapter, strength, endpoint, stream, n) in enumerate(PLAN):
                body = {"model": MODEL, "max_tokens": 16, "temperature": 1.0, "seed": 100 * round_ + i,
                        "logit_bias": boosted, "n": n, "stream": stream, "steering": adapter,
                        "fairness_strength": strength}
                if endpoint == "completions":
                    body["prompt"] = PROMPT
                else:
                    body["messages"] = [{"role": "user", "content": PROMPT}]
                applied, texts = _send(client, f"/v1/{endpoint}", body)
                served_choices += [(applied, text) for text in texts]
            time.sleep(PAUSE)
    expected = _expected(served_choices)
    wait_for(lambda: _scalar(prometheus, f'sum(fairsteer_completions_total{{model_name="{MODEL}"}})')
             == len(served_choices), 60, None, "Prometheus to scrape every completion")
    return {"start": start, "end": time.time(), "choices": served_choices, **expected}


def _send(client: httpx.Client, path: str, body: dict) -> tuple[dict, list[str]]:
    """(the steering the server says it applied, the text of every choice)."""
    if not body["stream"]:
        response = client.post(path, json=body)
        assert response.status_code == 200, response.text
        data = response.json()
        return data["fairsteer"], [c.get("text") or c["message"]["content"] for c in data["choices"]]
    texts: dict[int, str] = {}
    applied = None
    with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            applied = applied or event.get("fairsteer")
            for choice in event.get("choices") or ():
                piece = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                texts[choice["index"]] = texts.get(choice["index"], "") + piece
    assert applied is not None, "the first stream chunk states the applied steering"
    return applied, [texts[i] for i in sorted(texts)]


def _expected(choices: list[tuple[dict, str]]) -> dict:
    terms, mentions, completions = Counter(), Counter(), Counter()
    for applied, text in choices:
        route = (applied["adapter"] or group_metrics.NO_ADAPTER, group_metrics.strength_bucket(applied["strength"]))
        words = re.findall(r"\w+", text.lower())
        completions[route] += 1
        for group, vocabulary in LEXICON.items():
            count = sum(word in vocabulary for word in words)
            terms[(*route, group)] += count
            mentions[(*route, group)] += count > 0
    return {"terms": terms, "mentions": mentions, "completions": completions}


def _query(prometheus: str, expr: str) -> list[dict]:
    body = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=30).json()
    assert body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def _scalar(prometheus: str, expr: str) -> float:
    result = _query(prometheus, expr)
    return float(result[0]["value"][1]) if result else -1.0


def _by_route(prometheus: str, metric: str, with_group: bool) -> Counter:
    keys = "adapter, strength_bucket" + (", group" if with_group else "")
    found = Counter()
    for series in _query(prometheus, f'sum by ({keys}) ({metric}{{model_name="{MODEL}"}})'):
        m = series["metric"]
        key = (m["adapter"], m["strength_bucket"], m["group"]) if with_group else (m["adapter"], m["strength_bucket"])
        found[key] = int(float(series["value"][1]))
    return +found  # drop zeros: pre-created series of routes not used


def test_texts_mention_groups_so_the_counts_mean_something(traffic):
    assert sum(traffic["terms"].values()) >= 20, f"too few group terms served: {traffic['choices'][:3]}"
    assert {g for (_, _, g), n in traffic["terms"].items() if n} >= {"female", "male"}


def test_per_group_counts_in_prometheus_equal_the_served_texts(traffic, prometheus):
    assert _by_route(prometheus, "fairsteer_group_terms_total", True) == +traffic["terms"]
    assert _by_route(prometheus, "fairsteer_group_completions_total", True) == +traffic["mentions"]
    assert _by_route(prometheus, "fairsteer_completions_total", False) == +traffic["completions"]


def test_requests_are_counted_per_adapter_and_strength_bucket(traffic, prometheus):
    expected = Counter()
    for adapter, strength, *_ in PLAN:
        expected[(adapter, group_metrics.strength_bucket(strength))] += ROUNDS
    assert _by_route(prometheus, "fairsteer_requests_total", False) == expected
    count = _scalar(prometheus, f'sum(fairsteer_request_strength_count{{model_name="{MODEL}"}})')
    assert count == len(PLAN) * ROUNDS


def test_loaded_adapters_and_versions_are_exported(served, prometheus, traffic):
    steerings = httpx.get(f"{served['url']}/v1/steerings", timeout=10).json()["data"]
    exported = {(s["metric"]["adapter"], s["metric"]["version"]) for s in _query(prometheus, "fairsteer_adapter_info")}
    assert exported == {(s["id"], s["version"]) for s in steerings}


def test_every_dashboard_panel_query_returns_data(traffic, prometheus):
    window = f"{math.ceil(time.time() - traffic['start']) + 30}s"
    rate_window = f"{max(60, math.ceil(time.time() - traffic['start']) + 10)}s"
    empty = []
    for q in queries():
        result = _query(prometheus, q.concrete(rate_interval=rate_window, range_=window))
        values = [float(s["value"][1]) for s in result]
        if not any(math.isfinite(v) for v in values):
            empty.append(f"{q.panel} [{q.ref}]: {q.concrete()}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_no_prompt_or_output_text_reaches_metrics(served, traffic):
    page = httpx.get(f"{served['url']}/metrics", timeout=10).text
    assert PROMPT not in page and "doctor called" not in page
    longest = max((text for _, text in traffic["choices"]), key=len)
    assert longest.strip() not in page


def test_dashboard_renders_from_scraped_data(traffic, prometheus, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_png", ROOT / "docker/grafana/render_png.py")
    render_png = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render_png)
    dashboard = json.loads((ROOT / "docker/grafana/dashboards/fairsteer.json").read_text())
    out = Path(os.environ.get("FAIRSTEER_DASHBOARD_PNG") or tmp_path / "dashboard.png")
    render_png.render(dashboard, prometheus, traffic["start"] - 20, time.time(), out, step=2.0)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 50_000


def test_a_bad_lexicon_stops_fairsteer_serve_at_start_up(tmp_path):
    import subprocess

    model_dir = save_tiny_model(tmp_path / "model", "LlamaForCausalLM", seed=0)
    lexicon = tmp_path / "bad.json"
    lexicon.write_text(json.dumps({"format_version": 1, "axis": "gender", "groups": {"f": ["she"], "m": ["She"]}}))
    result = subprocess.run([*fairsteer_command(), "serve", "--model", str(model_dir),
                             "--group-lexicon", str(lexicon), "--port", str(free_port())],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "term 'She' appears in group 'f' and again in group 'm'" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
