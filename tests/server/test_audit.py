"""`fairsteer audit` end to end against a real `fairsteer serve` (tiny model, adapters from conftest.py).

One server for the module, started with an API key (so a wrong key can be refused), on 127.0.0.1 and
stopped by PID. The audit runs through the command line in-process (`cli.main.main`), as an operator
runs it; its group counts must equal the deltas of the server's own /metrics counters for its traffic.
The plain-vLLM case (strength 0, no fairsteer field) is in test_http_api.py, which starts plain vLLM.
"""

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_process import ServerProcess, fairsteer_argv, free_port

from cli.main import main
from server.audit import AuditError, builtin_prompts, load_prompts
from server.group_metrics import strength_bucket

pytestmark = pytest.mark.vllm

API_KEY = "audit-test-key-0123456789"
ENGINE = ("--kv-cache-memory-bytes", str(64 * 1024**2), "--max-model-len", "256")
FIGURES = ("rates", "occupation_gap", "bls_correlation", "health", "counts", "per_occupation")


@pytest.fixture(scope="module")
def server(tiny_llama, adapter_table, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("audit-logs") / "server.log"
    argv = fairsteer_argv(str(tiny_llama), adapter_table, port, engine_options=ENGINE)
    with ServerProcess(argv, port, log, env={"FAIRSTEER_API_KEY": API_KEY}) as process:
        yield process


def audit(server, model, out, *options, key=API_KEY, url=None) -> int:
    return main(["audit", "--url", url or server.url, "--model", model, "--api-key", key, "--out", str(out),
                 *options])


def counters(url: str) -> dict[tuple[str, str, str], float]:
    """(metric, strength bucket, group) -> value, summed over the other labels, from /metrics."""
    import httpx

    out: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in family.samples:
            if s.name in ("fairsteer_completions_total", "fairsteer_group_completions_total",
                          "fairsteer_group_terms_total"):
                key = (s.name, s.labels["strength_bucket"], s.labels.get("group", ""))
                out[key] = out.get(key, 0.0) + s.value
    return out


def test_audit_report_agrees_with_the_servers_group_counters(server, tiny_llama, tmp_path):
    before = counters(server.url)
    status = audit(server, str(tiny_llama), tmp_path, "--strengths", "0,1", "--adapter", "mix",
                   "--samples", "1", "--max-tokens", "12", "--concurrency", "8")
    after = counters(server.url)
    assert status == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert (tmp_path / "audit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "the plot is a PNG"
    cells = {(c["strength"], c["endpoint"]): c for c in report["results"]}
    assert set(cells) == {(s, e) for s in (0.0, 1.0) for e in ("completions", "chat")}
    assert report["server"]["fairsteer"] and report["server"]["applied"]["1.0"]["adapter"] == "mix"
    for cell in cells.values():
        assert all(figure in cell for figure in FIGURES)
        assert set(cell["rates"]) == {"male", "female", "none", "female_share"}
        for figure in (*cell["rates"].values(), cell["occupation_gap"], cell["bls_correlation"]):
            assert set(figure) == {"value", "lo", "hi"}
        assert set(cell["health"]) >= {"distinct_1", "distinct_2", "repetition_rate"}
        assert cell["counts"]["outputs"] == 120 and len(cell["per_occupation"]) == 40
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    gendered = 0
    for strength in (0.0, 1.0):
        bucket, both = strength_bucket(strength), [cells[strength, e]["counts"] for e in ("completions", "chat")]
        assert delta["fairsteer_completions_total", bucket, ""] == sum(c["outputs"] for c in both)
        for group in ("female", "male", "neutral"):
            mentions = sum(c["mentions"][group] for c in both)
            assert delta["fairsteer_group_completions_total", bucket, group] == mentions, (strength, group)
            assert delta["fairsteer_group_terms_total", bucket, group] == sum(c["terms"][group] for c in both)
            gendered += mentions
    assert gendered > 0, "the tiny model's sampled text must mention some group, or the comparison is empty"
    texts = [json.loads(line) for line in (tmp_path / "outputs.jsonl").read_text().splitlines()]
    by_strength = {s: [t["text"] for t in texts if t["strength"] == s] for s in (0.0, 1.0)}
    assert by_strength[0.0] != by_strength[1.0], "strength 1 with the mix adapter must change the outputs"


def test_operator_prompts_with_the_same_seed_repeat_exactly(server, tiny_llama, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "The nurse and the pilot", "occupation": "nurse"}\n'
                       '{"messages": [{"role": "user", "content": "Hi there"}], "occupation": "CEO"}\n')
    runs = []
    for name in ("a", "b"):
        assert audit(server, str(tiny_llama), tmp_path / name, "--prompts", str(prompts), "--strengths", "0.5",
                     "--samples", "3", "--max-tokens", "8") == 0
        runs.append((tmp_path / name / "outputs.jsonl").read_text())
    assert runs[0] == runs[1], "per-request seeds make a run repeat on a server that honours seed"
    assert len(runs[0].splitlines()) == 6


@pytest.mark.parametrize("case,options,problem", [
    ("closed port", {"url": "closed"}, "cannot reach http://127.0.0.1:"),
    ("wrong key", {"key": "wrong-key-0123456789"}, "refused the API key (HTTP 401"),
    ("unknown model", {"model": "no-such-model"}, "does not serve model 'no-such-model'"),
    ("strength above the maximum", {"args": ("--strengths", "0,3")}, "refused the steering fields (HTTP 400"),
    ("unknown adapter", {"args": ("--adapter", "nope")}, "unknown steering adapter 'nope'"),
    ("bad strengths", {"args": ("--strengths", "0,half")}, "--strengths '0,half': expected comma-separated"),
    ("negative strength", {"args": ("--strengths", "-1")}, "give one or more numbers >= 0"),
    ("too many requests", {"args": ("--max-requests", "10")}, "more than --max-requests 10"),
])
def test_audit_problems_are_one_line_errors(server, tiny_llama, tmp_path, capsys, case, options, problem):
    url = f"http://127.0.0.1:{free_port()}" if options.get("url") == "closed" else None
    status = audit(server, options.get("model", str(tiny_llama)), tmp_path, "--max-tokens", "2",
                   *options.get("args", ()), key=options.get("key", API_KEY), url=url)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("audit:")]  # the progress bar's
    assert status == 2, f"{case}: exit status 2 (a user error)"
    assert "Traceback" not in err and len(lines) == 1, f"{case}: one line, got {lines}"
    assert lines[0].startswith("fairsteer audit: error: ") and problem in lines[0], f"{case}: {lines[0]}"


def test_builtin_prompts_cover_every_occupation_on_both_endpoints():
    prompts = builtin_prompts()
    for endpoint in ("completions", "chat"):
        assert len({p.occupation for p in prompts if p.endpoint == endpoint}) == 40
    text = " ".join(p.prompt or p.messages[0]["content"] for p in prompts).lower().split()
    assert not {"he", "she", "his", "her", "him", "they", "their"} & set(text), "the prompts carry no pronoun"


@pytest.mark.parametrize("line,problem", [
    ('{"prompt": "x"}', "'occupation' None is not one of the 40"),
    ('{"prompt": "x", "messages": [], "occupation": "nurse"}', "exactly one of 'prompt'"),
    ('{"messages": [{"role": "user"}], "occupation": "nurse"}', "'messages' must be a non-empty list"),
    ("not json", "not JSON"),
])
def test_bad_prompt_files_name_the_line(tmp_path, line, problem):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "fine", "occupation": "Nurse"}\n' + line + "\n")
    with pytest.raises(AuditError, match="line 2") as err:
        load_prompts(path)
    assert problem in str(err.value)
