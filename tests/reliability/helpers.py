"""Shared constants and assertions of the reliability tests (fixtures are in conftest.py)."""

API_KEY = "test-api-key-0123456789"
ADMIN_KEY = "test-admin-key-9876543210"
# Small engine: 256 tokens of context are enough for every prompt here and bound any generation.
ENGINE = ("--kv-cache-memory-bytes", str(64 * 1024**2), "--max-model-len", "256")


def api_headers(key: str = API_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_openai_error(response, status: int) -> dict:
    """The response has `status` and OpenAI's error shape; returns the error object."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"], error
    assert error["code"] == status and isinstance(error["type"], str), error
    return error
