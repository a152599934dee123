"""What an adapter file contains, for `fairsteer adapter inspect FILE [--json] [--model PATH]`.

`describe` gathers the name, method, version (content hash), format version, base model identity, the
sites in compact form ("5 sites: layers.0-1 input_norm+post_attention_norm, final_norm"), the parameter
count (and, with a model, its share of that model's parameters, counted from the safetensors headers
without loading weights, plus whether the adapter fits it), the training settings, the calibration
table and the base model's license notice, as JSON-ready values; `render` lays them out as text. A model folder that cannot be read raises
`ModelPullError`. The command itself is cli/adapter.py.
"""

import json
import struct
from pathlib import Path
from typing import Any

LAYER_KINDS = ("input_norm", "post_attention_norm")


def describe(spec, path: Path, model: str | None = None) -> dict[str, Any]:
    """Everything `inspect` shows, as JSON-ready values."""
    meta = spec.meta
    info = {
        "file": str(path), "file_bytes": path.stat().st_size,
        "name": meta.name, "method": meta.method, "version": spec.version,
        "format_version": meta.format_version, "base_model": meta.base_model,
        "identity": {"architecture": meta.identity.architecture, "hidden_size": meta.identity.hidden_size,
                     "num_layers": meta.identity.num_layers, "fingerprint": meta.identity.fingerprint},
        "sites_summary": summarize_sites(spec.sites), "sites": list(spec.sites),
        "num_parameters": spec.num_parameters,
        "training": meta.training, "calibration": [dict(row) for row in meta.calibration],
        "license_notice": meta.license_notice,
    }
    if model is not None:
        info["model"] = _describe_model(model, spec)
    return info


def _describe_model(name_or_path: str, spec) -> dict[str, Any]:
    from adapters.model_store import ModelPullError, resolve_model
    from adapters.spec import ModelIdentity

    folder = Path(resolve_model(name_or_path))
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelPullError(f"--model {name_or_path}: no config.json there; give a local Hugging Face model folder")
    identity = ModelIdentity.from_config(json.loads(config_file.read_text()))
    total = model_parameter_count(folder)
    mismatch = spec.meta.identity.mismatch(identity)
    return {"path": str(folder), "num_parameters": total, "share": spec.num_parameters / total,
            "fits": mismatch is None, "mismatch": mismatch}


def model_parameter_count(folder: Path) -> int:
    """Parameters stored in a model folder's safetensors files, read from their headers only."""
    from adapters.model_store import ModelPullError

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelPullError(f"{folder} has no .safetensors weights to count parameters from")
    total = 0
    for file in files:
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))  # safetensors: u64 header length, then JSON header
            header = json.loads(f.read(length))
        for key, entry in header.items():
            if key != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= dim
                total += count
    return total


def summarize_sites(sites: tuple[str, ...] | list[str]) -> str:
    """'61 sites: layers.0-29 input_norm+post_attention_norm, final_norm' (kinds sharing layers grouped)."""
    from adapters.sites import parse_site

    layers_by_kind: dict[str, list[int]] = {}
    final = False
    for site in sites:
        layer, kind = parse_site(site)
        if layer is None:
            final = True
        else:
            layers_by_kind.setdefault(kind, []).append(layer)
    groups: dict[str, list[str]] = {}  # rendered layer ranges -> kinds steered on exactly those layers
    for kind in LAYER_KINDS:
        if kind in layers_by_kind:
            groups.setdefault(_ranges(layers_by_kind[kind]), []).append(kind)
    parts = [f"layers.{ranges} {'+'.join(kinds)}" for ranges, kinds in groups.items()]
    if final:
        parts.append("final_norm")
    return f"{len(sites)} site{'s' if len(sites) != 1 else ''}: {', '.join(parts)}"


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    numbers = sorted(set(numbers))
    out, start = [], numbers[0]
    for prev, cur in zip(numbers, numbers[1:] + [None]):
        if cur is None or cur != prev + 1:
            out.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
    return ",".join(out)


def render(info: dict[str, Any]) -> str:
    ident = info["identity"]
    lines = [
        ("adapter", info["name"]),
        ("file", f"{info['file']} ({info['file_bytes']:,} bytes)"),
        ("method", info["method"]),
        ("version", info["version"]),
        ("format version", str(info["format_version"])),
        ("base model", (f"{info['base_model']} ({ident['architecture']}, hidden {ident['hidden_size']}, "
                        f"{ident['num_layers']} layers, fingerprint {ident['fingerprint']})")),
        ("sites", info["sites_summary"]),
        ("parameters", f"{info['num_parameters']:,} (a and b, fp32)"),
    ]
    if "model" in info:
        model = info["model"]
        fit = "fits" if model["fits"] else f"DOES NOT FIT: {model['mismatch']}"
        share = f"{model['num_parameters']:,} parameters; the adapter adds {100 * model['share']:.4f}% of them"
        lines.append(("model", f"{model['path']}: {share}; {fit}"))
    width = max(len(key) for key, _ in lines)
    out = [f"{key:<{width}}  {value}" for key, value in lines]
    if info["license_notice"]:  # the base model's terms: whoever receives the adapter must be told
        out += ["", "license notice (the base model's terms; this adapter is a derivative of that model)"]
        out += [f"  {line}" for line in info["license_notice"].splitlines()]
    out += ["", "training settings"]
    out += _key_values(info["training"]) or ["  (none recorded)"]
    out += ["", "calibration"]
    out += _table(info["calibration"]) or ["  (no calibration table)"]
    return "\n".join(out)


def _key_values(settings: dict[str, Any]) -> list[str]:
    if not settings:
        return []
    width = max(len(str(key)) for key in settings)
    return [f"  {key:<{width}}  {value if isinstance(value, str) else json.dumps(value)}"
            for key, value in settings.items()]


def _table(rows: list[dict[str, Any]]) -> list[str]:
    """Aligned columns, strength first, then every other key in order of first appearance."""
    if not rows:
        return []
    columns = ["strength"] + [k for row in rows for k in row if k != "strength"]
    columns = list(dict.fromkeys(columns))
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    header = "  " + "  ".join(col.rjust(w) for col, w in zip(columns, widths))
    return [header] + ["  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
