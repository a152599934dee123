"""Renders a Grafana dashboard JSON as a PNG from a live Prometheus, with matplotlib (no Grafana needed).

    .venv/bin/python docker/grafana/render_png.py --prometheus http://127.0.0.1:9090 \
        --start 1700000000 --end 1700000600 --out docs/dashboard.png

Panels sit where their `gridPos` puts them (24 columns); each query runs through Prometheus's HTTP API
exactly as Grafana would send it with every variable at "All". Time series are drawn as lines, bar gauges
as horizontal bars, tables as text, stats as a number. It shows the layout and real data, not Grafana's
exact look. The observability test renders one from the data it scraped; docs/dashboard.png comes from it.
"""

import argparse
import json
import math
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_DASHBOARD = Path(__file__).parent / "dashboards" / "fairsteer.json"
ROW_INCHES = 0.42  # height of one grid unit; 24 columns span the figure width


def concrete(expr: str, rate_interval: str, range_: str) -> str:
    """The query as Grafana sends it with $model_name and $adapter at "All"."""
    expr = expr.replace("$__rate_interval", rate_interval).replace("$__range", range_)
    return expr.replace("$model_name", ".*").replace("$adapter", ".*")


def query(prometheus: str, expr: str, start: float, end: float, step: float | None) -> list[dict]:
    """Prometheus API result list: range (matrix) when `step` is given, else instant (vector) at `end`."""
    params = {"query": expr, "time": end} if step is None else {"query": expr, "start": start, "end": end,
                                                                 "step": step}
    url = f"{prometheus}/api/v1/{'query' if step is None else 'query_range'}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr!r}: {body}")
    return body["data"]["result"]


def legend(template: str, labels: dict[str, str]) -> str:
    if template in ("", "__auto"):
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "value"
    for key, value in labels.items():
        template = template.replace("{{" + key + "}}", value)
    return template


def _finite(values) -> list[float]:
    return [v for v in (float(x) for x in values) if math.isfinite(v)]


def draw_panel(ax, panel: dict, prometheus: str, start: float, end: float, step: float, range_: str) -> None:
    ax.set_title(panel["title"], fontsize=9, loc="left")
    kind = panel["type"]
    for target in panel["targets"]:
        expr = concrete(target["expr"], f"{max(4 * step, 60):.0f}s", range_)
        instant = target.get("instant", False) or kind in ("bargauge", "table", "stat")
        result = query(prometheus, expr, start, end, None if instant else step)
        if kind == "timeseries":
            for series in result:
                times = [datetime.fromtimestamp(float(t), UTC) for t, _ in series["values"]]
                values = [float(v) for _, v in series["values"]]
                ax.plot(times, values, linewidth=1.2, label=legend(target["legendFormat"], series["metric"]))
        elif kind == "bargauge":
            rows = sorted((legend(target["legendFormat"], s["metric"]), float(s["value"][1])) for s in result)
            ax.barh([r[0] for r in rows], [0 if math.isnan(r[1]) else r[1] for r in rows], color="tab:blue")
            ax.invert_yaxis()
            ax.tick_params(axis="y", labelsize=6)
        elif kind == "table":
            columns = ["adapter", "version", "method"]
            cells = [[s["metric"].get(c, "") for c in columns] for s in result] or [["(none)", "", ""]]
            ax.axis("off")
            ax.table(cellText=cells, colLabels=columns, loc="upper left", cellLoc="left").set_fontsize(8)
        elif kind == "stat":
            values = _finite(s["value"][1] for s in result)
            unit = panel["fieldConfig"]["defaults"].get("unit")
            text = "no data" if not values else (f"{values[0]:.0%}" if unit == "percentunit" else f"{values[0]:g}")
            ax.axis("off")
            ax.text(0.5, 0.4, text, ha="center", va="center", fontsize=22, transform=ax.transAxes)
    if kind == "timeseries":
        ax.tick_params(labelsize=6)
        ax.xaxis.set_major_formatter(_time_formatter())
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=5, ncol=2, loc="upper left")


def _time_formatter():
    import matplotlib.dates as mdates

    return mdates.DateFormatter("%H:%M:%S")


def render(dashboard: dict, prometheus: str, start: float, end: float, out: Path, step: float = 5.0) -> Path:
    """Draws every panel of `dashboard` for [start, end] into the PNG `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = dashboard["panels"]
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(16, height * ROW_INCHES))
    grid = fig.add_gridspec(height, 24, hspace=0.0, wspace=2.0, left=0.03, right=0.99, top=0.97, bottom=0.02)
    range_ = f"{max(int(end - start), 60)}s"
    for p in panels:
        g = p["gridPos"]
        if p["type"] == "row":  # a title strip across the grid
            ax = fig.add_subplot(grid[g["y"], :])
            ax.axis("off")
            ax.text(0, 0.2, p["title"], fontsize=11, weight="bold", transform=ax.transAxes)
            continue
        # The top grid unit holds the panel's title, the bottom one its tick labels.
        ax = fig.add_subplot(grid[g["y"] + 1: g["y"] + g["h"] - 1, g["x"]: g["x"] + g["w"]])
        draw_panel(ax, p, prometheus, start, end, step, range_)
    fig.suptitle(dashboard["title"], fontsize=13)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--dashboard", type=Path, default=DEFAULT_DASHBOARD)
    parser.add_argument("--start", type=float, required=True, help="Unix seconds")
    parser.add_argument("--end", type=float, required=True, help="Unix seconds")
    parser.add_argument("--step", type=float, default=5.0, help="seconds between points")
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    args = parser.parse_args(argv)
    render(json.loads(args.dashboard.read_text()), args.prometheus, args.start, args.end, args.out, args.step)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
