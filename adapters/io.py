"""The adapter file: one safetensors file, the seam between trainer and server.

Layout:
    tensors        "<site>.a", "<site>.b" for each site, fp32, shape (hidden,)
    __metadata__   {"format": "fairsteer.adapter", "format_version": "1", "metadata": <JSON of AdapterMeta>}

Only safetensors is read (never pickle). `load` refuses anything it cannot fully validate with an
`AdapterFormatError` that names the problem.
"""

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from adapters.spec import FORMAT_VERSION, AdapterFormatError, AdapterMeta, ModelIdentity, SteeringSpec

FORMAT_TAG = "fairsteer.adapter"
MAX_FILE_BYTES = 2 * 1024**3  # far above any real adapter (a 8192-wide, 81-site one is 5 MB)


def save(spec: SteeringSpec, path: str | Path) -> Path:
    """Write `spec` to `path` atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for i, site in enumerate(spec.sites):
        tensors[f"{site}.a"] = spec.a[i].contiguous()
        tensors[f"{site}.b"] = spec.b[i].contiguous()
    meta = asdict(spec.meta)
    meta["sites"] = list(spec.sites)
    metadata = {"format": FORMAT_TAG, "format_version": str(FORMAT_VERSION), "metadata": json.dumps(meta)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def load(path: str | Path, model: ModelIdentity | None = None) -> SteeringSpec:
    """Read and validate an adapter file; with `model`, also check it fits that model."""
    path = Path(path)
    if not path.is_file():
        raise AdapterFormatError(f"{path}: no such adapter file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise AdapterFormatError(f"{path}: {size} bytes is too large for a steering adapter")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            raw = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open, not a dict)
    except Exception as exc:  # noqa: BLE001 -- safetensors raises several types for corrupt or truncated files
        raise AdapterFormatError(
            f"{path}: not a readable safetensors file ({exc}); it may be truncated or of another format. "
            "Adapters are written by `fairsteer train`") from None
    spec = _from_header(path, header, raw)
    if model is not None:
        try:
            spec.check_compatible(model)
        except AdapterFormatError as exc:  # name the file: a server loads several
            raise AdapterFormatError(f"{path}: {exc}") from None
    return spec


def _from_header(path: Path, header: dict[str, str], raw: dict[str, torch.Tensor]) -> SteeringSpec:
    if header.get("format") != FORMAT_TAG:
        raise AdapterFormatError(f"{path}: a safetensors file, but not a fairsteer adapter "
                                 f"(__metadata__ format is {header.get('format')!r}, expected {FORMAT_TAG!r})")
    if header.get("format_version") != str(FORMAT_VERSION):
        raise AdapterFormatError(
            f"{path}: adapter format version {header.get('format_version')!r}; this fairsteer reads version "
            f"{FORMAT_VERSION}. Use the fairsteer release that wrote it, or retrain")
    try:
        meta = json.loads(header["metadata"])
        sites = tuple(meta.pop("sites"))
        meta["identity"] = ModelIdentity(**meta["identity"])
        meta["calibration"] = tuple(meta.get("calibration") or ())
        adapter_meta = AdapterMeta(**meta)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # e.g. JSON that is not an object
        raise AdapterFormatError(f"{path}: adapter metadata is malformed ({exc!r})") from None

    expected = {f"{site}.{part}" for site in sites for part in ("a", "b")}
    missing, extra = sorted(expected - raw.keys()), sorted(raw.keys() - expected)
    if missing:
        raise AdapterFormatError(f"{path}: sites listed in the metadata have no tensors: {missing[:4]}")
    if extra:
        raise AdapterFormatError(f"{path}: tensors for sites not listed in the metadata: {extra[:4]}")
    for key in sorted(expected):
        if raw[key].dim() != 1:
            raise AdapterFormatError(f"{path}: tensor {key!r} has shape {tuple(raw[key].shape)}; expected (hidden,)")
    try:
        a = torch.stack([raw[f"{site}.a"] for site in sites])
        b = torch.stack([raw[f"{site}.b"] for site in sites])
    except RuntimeError as exc:
        raise AdapterFormatError(f"{path}: site tensors differ in size ({exc})") from None
    try:
        return SteeringSpec(sites, a, b, adapter_meta)
    except AdapterFormatError as exc:
        raise AdapterFormatError(f"{path}: {exc}") from None
