"""Fixtures shared across test folders."""

import pytest


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """SmolLM2-135M-Instruct's local folder (`fairsteer model pull`); skipped where it cannot be obtained."""
    from adapters.model_store import ModelPullError, pull

    try:
        return str(pull("smollm2-135m-instruct"))
    except (ModelPullError, OSError) as exc:
        pytest.skip(f"SmolLM2 could not be obtained here: {exc}")


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    """(model, tokenizer, pad_id) of SmolLM2-135M-Instruct in fp32, frozen (`trainer.task.load_model`)."""
    from trainer import task

    return task.load_model(smollm2_path)
