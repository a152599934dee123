"""The evaluation's outputs: DIR/report.json and DIR/tradeoff.png, and the adapter calibration table.

report.json:
    {"model", "data", "settings", "methods": {label: [row per strength, ascending]}, "targets"}
each row holding every metric of `trainer.evaluate` with its `_se` and the counts. "targets" compares
each adapter at strength 1 with the base model (issue 4's acceptance figures).
tradeoff.png: Per-Occupation Bias (lower is fairer) against each capability measure (KL to base,
unambiguous accuracy, MMLU when measured), one curve per method through its strengths.
"""

import json
from pathlib import Path

CALIBRATION_KEYS = ("per_occupation_bias", "stereotype_gap", "unambiguous_accuracy", "other_rate",
                    "kl_to_base", "mmlu_accuracy")


def group(rows: list[dict]) -> dict[str, list[dict]]:
    methods: dict[str, list[dict]] = {}
    for row in rows:
        methods.setdefault(row["method"], []).append(row)
    return {k: sorted(v, key=lambda r: r["strength"]) for k, v in methods.items()}


def targets(methods: dict[str, list[dict]]) -> dict[str, dict]:
    """Per adapter, at its largest strength: bias as a share of base, accuracy and MMLU changes (points)."""
    base = methods["base"][0]
    out = {}
    for label, rows in methods.items():
        if label in ("base", "prompting") or len(rows) < 2:
            continue
        top = rows[-1]
        entry = {"strength": top["strength"],
                 "bias_share_of_base": top["per_occupation_bias"] / max(base["per_occupation_bias"], 1e-12),
                 "unambiguous_accuracy_change_points": 100 * (top["unambiguous_accuracy"]
                                                              - base["unambiguous_accuracy"])}
        if "mmlu_accuracy" in top:
            entry["mmlu_change_points"] = 100 * (top["mmlu_accuracy"] - base["mmlu_accuracy"])
        out[label] = entry
    return out


def calibration(rows: list[dict]) -> tuple[dict, ...]:
    """The adapter-metadata calibration table: strength -> the headline metrics and their SEs."""
    table = []
    for row in rows:
        entry = {"strength": row["strength"]}
        for key in CALIBRATION_KEYS:
            if key in row:
                entry[key] = round(row[key], 5)
                entry[f"{key}_se"] = round(row.get(f"{key}_se", float("nan")), 5)
        table.append(entry)
    return tuple(table)


def write(result: dict, out_dir: str | Path, header: dict) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    methods = group(result["rows"])
    report = {**header, "methods": methods, "targets": targets(methods)}
    path = out_dir / "report.json"
    path.write_text(json.dumps(report, indent=1, allow_nan=True) + "\n")
    plot(methods, out_dir / "tradeoff.png", title=header.get("model", ""))
    return path


def plot(methods: dict[str, list[dict]], path: Path, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_spec = [("kl_to_base", "KL to base (answer position)"),
                 ("unambiguous_accuracy", "unambiguous accuracy"),
                 ("mmlu_accuracy", "MMLU accuracy")]
    axes_spec = [a for a in axes_spec if any(a[0] in r for rows in methods.values() for r in rows)]
    fig, axes = plt.subplots(1, len(axes_spec), figsize=(5 * len(axes_spec), 4), squeeze=False)
    for ax, (key, label) in zip(axes[0], axes_spec):
        for method, rows in methods.items():
            pts = [(r[key], r["per_occupation_bias"], r["strength"]) for r in rows if key in r]
            if not pts:
                continue
            xs, ys, _ = zip(*pts)
            style = {"base": "k*", "prompting": "gs"}.get(method, "o-")
            ax.plot(xs, ys, style, label=method, markersize=9 if method in ("base", "prompting") else 5)
            if method not in ("base", "prompting"):
                for x, y, s in pts:
                    ax.annotate(f"{s:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel("Per-Occupation Bias (lower is fairer)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Fairness-capability trade-off {title}".strip(), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
