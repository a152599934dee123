"""Generates the Grafana dashboard JSON in docker/grafana/dashboards/ from plain Python (dashboards as code).

    .venv/bin/python docker/grafana/generate.py            # rewrite the committed JSON
    .venv/bin/python docker/grafana/generate.py --check    # exit 1 if the committed JSON has drifted

Panels name only metrics defined in `server/metrics.py` (fairsteer_*) or by vLLM 0.32 (vllm:*), always
with a `{...}` selector; tests/observability checks the names, that every expression parses (promtool),
and that every panel returns data from a real Prometheus that scraped a real server.
Grafana variables: $model_name and $adapter (multi-value, "All" = ".*"), $__rate_interval, $__range.
"""

import argparse
import json
import sys
from pathlib import Path

OUT_DIR = Path(__file__).parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # uid fixed by provisioning/datasources
SEL = 'model_name=~"$model_name", adapter=~"$adapter"'  # our metrics
VSEL = 'model_name=~"$model_name"'  # vLLM's metrics (no adapter label)
RATE = "[$__rate_interval]"


def share(metric: str, by: str, total: str | None = None, fn: str = "rate", window: str = RATE) -> str:
    """Per-group `metric` as a fraction of `total` (default: all groups' `metric`) within each value of `by`."""
    return (f"sum by ({by}, group) ({fn}({metric}{{{SEL}}}{window}))\n"
            f"/ on ({by}) group_left\nsum by ({by}) ({fn}({total or metric}{{{SEL}}}{window}))")


def quantile(q: float, metric: str, selector: str) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{selector}}}{RATE})))"


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False, fmt: str = "time_series") -> dict:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend or "__auto", "refId": ref,
            "instant": instant, "range": not instant, "format": fmt}


def panel(kind: str, title: str, grid: tuple[int, int, int, int], targets: list[dict], unit: str = "short",
          description: str = "", **options) -> dict:
    x, y, w, h = grid
    return {"type": kind, "title": title, "description": description, "datasource": DATASOURCE,
            "gridPos": {"x": x, "y": y, "w": w, "h": h}, "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": options}


def row(title: str, y: int) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
            "panels": []}


def variable(name: str, query: str, label: str) -> dict:
    return {"name": name, "label": label, "type": "query", "datasource": DATASOURCE,
            "query": {"query": query, "refId": name}, "definition": query, "refresh": 2, "multi": True,
            "includeAll": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"}, "sort": 1}


def fairness_panels(y: int) -> list[dict]:
    return [
        row("Outputs by group (group lexicon, whole-word matches)", y),
        panel("timeseries", "Completions mentioning each group, by strength bucket", (0, y + 1, 12, 8),
              [target(share("fairsteer_group_completions_total", "strength_bucket", "fairsteer_completions_total"),
                      "{{group}} @ ω {{strength_bucket}}")],
              unit="percentunit",
              description="Fraction of finished completions whose text mentions the group at least once."),
        panel("timeseries", "Share of group term occurrences, by adapter", (12, y + 1, 12, 8),
              [target(share("fairsteer_group_terms_total", "adapter"), "{{group}} · {{adapter}}")],
              unit="percentunit", description="Each group's share of all lexicon terms in completions."),
        panel("bargauge", "Share of group terms per strength bucket (dashboard range)", (0, y + 9, 24, 8),
              [target(share("fairsteer_group_terms_total", "strength_bucket", fn="increase", window="[$__range]"),
                      "{{strength_bucket}} · {{group}}", instant=True)],
              unit="percentunit", orientation="horizontal", displayMode="gradient"),
    ]


def traffic_panels(y: int) -> list[dict]:
    return [
        row("Requests by fairness strength", y),
        panel("timeseries", "Requests/s by strength bucket", (0, y + 1, 8, 8),
              [target(f"sum by (strength_bucket) (rate(fairsteer_requests_total{{{SEL}}}{RATE}))",
                      "ω {{strength_bucket}}")], unit="reqps"),
        panel("timeseries", "Requests/s by adapter", (8, y + 1, 8, 8),
              [target(f"sum by (adapter) (rate(fairsteer_requests_total{{{SEL}}}{RATE}))", "{{adapter}}")],
              unit="reqps"),
        panel("timeseries", "Requested strength percentiles", (16, y + 1, 8, 8),
              [target(quantile(q, "fairsteer_request_strength", SEL), f"p{round(q * 100)}", ref)
               for q, ref in ((0.5, "A"), (0.9, "B"))]),
    ]


def serving_panels(y: int) -> list[dict]:
    return [
        row("Serving (vLLM)", y),
        panel("timeseries", "Throughput (tokens/s)", (0, y + 1, 6, 8),
              [target(f"sum(rate(vllm:generation_tokens_total{{{VSEL}}}{RATE}))", "generated", "A"),
               target(f"sum(rate(vllm:prompt_tokens_total{{{VSEL}}}{RATE}))", "prompt", "B")], unit="short"),
        panel("timeseries", "End-to-end latency percentiles", (6, y + 1, 6, 8),
              [target(quantile(q, "vllm:e2e_request_latency_seconds", VSEL), f"p{round(q * 100)}", ref)
               for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))], unit="s"),
        panel("timeseries", "Time to first token p90", (12, y + 1, 6, 8),
              [target(quantile(0.9, "vllm:time_to_first_token_seconds", VSEL), "TTFT p90")], unit="s"),
        panel("timeseries", "Queue: running and waiting requests", (18, y + 1, 6, 8),
              [target(f"sum(vllm:num_requests_running{{{VSEL}}})", "running", "A"),
               target(f"sum(vllm:num_requests_waiting{{{VSEL}}})", "waiting", "B")]),
    ]


def adapter_panels(y: int) -> list[dict]:
    return [
        row("Adapters and health", y),
        panel("table", "Loaded adapters and versions", (0, y + 1, 12, 6),
              [target("max by (adapter, version, method) (fairsteer_adapter_info{adapter=~\"$adapter\"})",
                      instant=True, fmt="table")], showHeader=True)
        | {"transformations": [{"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True}}}]},
        panel("stat", "KV cache usage", (12, y + 1, 6, 6),
              [target(f"max(vllm:kv_cache_usage_perc{{{VSEL}}})", "KV cache")], unit="percentunit"),
        panel("stat", "Counting errors (dashboard range)", (18, y + 1, 6, 6),
              [target('sum(increase(fairsteer_metrics_errors_total{stage=~".+"}[$__range]))', "errors",
                      instant=True)],
              description="Exceptions swallowed by the group counters; serving went on. Should stay 0."),
    ]


def dashboard() -> dict:
    panels = fairness_panels(0) + traffic_panels(17) + serving_panels(26) + adapter_panels(35)
    for number, p in enumerate(panels, start=1):
        p["id"] = number
    return {
        "uid": "fairsteer-overview", "title": "fairsteer: group balance and serving", "editable": True,
        "schemaVersion": 39, "version": 1, "tags": ["fairsteer", "vllm"], "timezone": "utc",
        "time": {"from": "now-1h", "to": "now"}, "refresh": "10s", "graphTooltip": 1,
        "templating": {"list": [
            variable("model_name", "label_values(fairsteer_requests_total, model_name)", "Model"),
            variable("adapter", 'label_values(fairsteer_requests_total{model_name=~"$model_name"}, adapter)',
                     "Adapter")]},
        "annotations": {"list": []}, "links": [], "panels": panels,
    }


def render() -> dict[str, str]:
    """File name → JSON text, exactly as committed."""
    return {"fairsteer.json": json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON differs")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = OUT_DIR / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"stale dashboards: {stale}; run: .venv/bin/python docker/grafana/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
