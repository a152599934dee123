"""The security middleware and the admin path rules without an engine (fast; run in `make test-fast`).

A small Starlette app stands in for vLLM's routes; requests go through httpx's ASGI transport, or straight
through the ASGI interface where the body must arrive in several pieces.
"""

import asyncio
import json

import httpx
import pytest
from reliability.helpers import ADMIN_KEY, API_KEY, api_headers, assert_openai_error
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from server.admin import AdapterAdmin, AdminError
from server.errors import ServeConfigError
from server.security import SecurityMiddleware, SecuritySettings
from server.settings import DEFAULT_DRAIN_S, AdminSettings, ServeOptions, _admin, _security, drain_kwargs

LIMIT = 2048


async def echo(request):
    return JSONResponse({"bytes": len(await request.body())})


async def fastapi_style_error(request):
    return JSONResponse({"detail": "There was an error parsing the body"}, status_code=400)


async def openai_style_error(request):
    return JSONResponse({"error": {"message": "kept as is", "type": "X", "param": "p", "code": 400}}, 400)


def make_app(settings: SecuritySettings):
    routes = [Route("/v1/completions", echo, methods=["POST"]), Route("/health", lambda r: PlainTextResponse("")),
              Route("/metrics", lambda r: PlainTextResponse("")), Route("/v1/admin/adapters", echo),
              Route("/v1/bad", fastapi_style_error, methods=["POST"]),
              Route("/v1/openai", openai_style_error, methods=["POST"])]
    return SecurityMiddleware(Starlette(routes=routes), settings)


def request(app, method, path, root_path="", **kwargs):
    async def go():
        transport = httpx.ASGITransport(app=app, root_path=root_path)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


@pytest.fixture
def app():
    return make_app(SecuritySettings(API_KEY, ADMIN_KEY, LIMIT))


def test_each_route_accepts_exactly_its_keys(app):
    matrix = [  # (path, method, key, expected status)
        ("/v1/completions", "POST", None, 401), ("/v1/completions", "POST", "wrong-key-0000", 401),
        ("/v1/completions", "POST", API_KEY, 200), ("/v1/completions", "POST", ADMIN_KEY, 200),
        ("/v1/admin/adapters", "GET", None, 401), ("/v1/admin/adapters", "GET", API_KEY, 403),
        ("/v1/admin/adapters", "GET", ADMIN_KEY, 200), ("/health", "GET", None, 200), ("/metrics", "GET", None, 200),
    ]
    for path, method, key, status in matrix:
        r = request(app, method, path, headers=api_headers(key) if key else {}, json={} if method == "POST" else None)
        assert r.status_code == status, (path, key, r.text)
        if status >= 400:
            assert_openai_error(r, status)


def test_a_root_path_prefix_does_not_dodge_the_key_checks(app):
    """vLLM's --root-path: routes match with the prefix stripped, so the checks must strip it too."""
    for key, status in ((None, 401), (API_KEY, 403), (ADMIN_KEY, 200)):
        r = request(app, "GET", "/api/v1/admin/adapters", root_path="/api", headers=api_headers(key) if key else {})
        assert r.status_code == status, (key, r.text)
    assert request(app, "POST", "/api/v1/completions", root_path="/api", json={}).status_code == 401
    assert request(app, "GET", "/api/health", root_path="/api").status_code == 200


def test_a_root_path_prefix_does_not_dodge_steering():
    from server.admin import AdapterSlots
    from server.registry import SteeringRegistry
    from server.steering_api import SteeringMiddleware

    unsteered = SteeringRegistry("m", {}, None, 0.0, 1.0)
    app = SteeringMiddleware(Starlette(routes=[Route("/v1/completions", echo, methods=["POST"])]), lambda: unsteered,
                             AdapterSlots(None, unsteered, 0))
    r = request(app, "POST", "/api/v1/completions", root_path="/api", json={"prompt": "x", "fairness_strength": 0.5})
    assert "no steering adapter" in assert_openai_error(r, 400)["message"], "must be checked as a completion"


@pytest.mark.parametrize(("key", "accepted"), [(None, False), ("wrong-key-0000", False), (API_KEY, True)])
def test_websockets_need_the_key_too(app, key, accepted):
    sent = []

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        sent.append(message)

    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    scope = {"type": "websocket", "path": "/v1/realtime", "headers": headers, "query_string": b"", "root_path": ""}
    asyncio.run(app(scope, receive, send))
    closed = sent[:1] == [{"type": "websocket.close", "code": 1008}]
    assert closed != accepted, sent


def test_an_open_server_needs_no_key_but_admin_routes_stay_closed_without_an_admin_key():
    app = make_app(SecuritySettings(None, None, LIMIT))
    assert request(app, "POST", "/v1/completions", json={}).status_code == 200
    # No admin key: the middleware lets the route answer, and `fairsteer serve` installs no admin routes.
    assert request(app, "GET", "/v1/admin/adapters").status_code == 200


def test_declared_oversized_body_gets_413(app):
    r = request(app, "POST", "/v1/completions", headers=api_headers(), content=b"x" * (LIMIT + 1))
    assert "limit of 2048 bytes" in assert_openai_error(r, 413)["message"]
    assert request(app, "POST", "/v1/completions", headers=api_headers(), content=b"x" * LIMIT).json() == \
        {"bytes": LIMIT}


def test_undeclared_oversized_body_gets_413_as_its_bytes_arrive(app):
    """No Content-Length: the middleware counts the body pieces and stops at the limit."""
    pieces = [b"x" * 1000] * 5
    sent = []

    async def receive():
        return {"type": "http.request", "body": pieces.pop(0), "more_body": bool(pieces[1:])}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": [
        (b"authorization", f"Bearer {API_KEY}".encode())], "query_string": b"", "root_path": ""}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413 and len(pieces) == 2, "must answer before reading the rest"
    assert json.loads(sent[1]["body"])["error"]["code"] == 413


def test_errors_not_in_openai_shape_are_rewritten_and_others_kept(app):
    error = assert_openai_error(request(app, "POST", "/v1/bad", headers=api_headers(), content=b"{"), 400)
    assert "not valid JSON" in error["message"]
    r = request(app, "POST", "/v1/openai", headers=api_headers(), json={})
    assert r.json()["error"] == {"message": "kept as is", "type": "X", "param": "p", "code": 400}
    assert_openai_error(request(app, "GET", "/v1/nothing-here", headers=api_headers()), 404)


@pytest.mark.parametrize(("api", "admin", "limit", "words"), [
    ("short", None, LIMIT, "at least 8"), (" spaced-key ", None, LIMIT, "surrounding spaces"),
    ("same-key-123", "same-key-123", LIMIT, "must differ"), (None, None, 10, "at least 1024")])
def test_bad_settings_are_refused_with_the_fix(api, admin, limit, words, monkeypatch):
    monkeypatch.delenv("FAIRSTEER_API_KEY", raising=False)
    monkeypatch.delenv("FAIRSTEER_ADMIN_KEY", raising=False)
    with pytest.raises(ValueError, match=words):
        SecuritySettings.from_options(api, admin, limit)


def test_keys_come_from_the_environment_and_flags_win(monkeypatch):
    monkeypatch.setenv("FAIRSTEER_API_KEY", "from-env-api-key")
    monkeypatch.setenv("FAIRSTEER_ADMIN_KEY", "from-env-admin-key")
    assert SecuritySettings.from_options(None, None, LIMIT).api_key == "from-env-api-key"
    assert SecuritySettings.from_options("from-flag-key", None, LIMIT).api_key == "from-flag-key"


def test_adapter_files_only_from_the_configured_folders(tmp_path):
    served, other = tmp_path / "served", tmp_path / "other"
    served.mkdir(), other.mkdir()
    (served / "ok.safetensors").write_bytes(b"x")
    (served / "sub").mkdir()
    (served / "sub" / "deep.safetensors").write_bytes(b"x")
    (other / "secret.safetensors").write_bytes(b"x")
    (served / "link.safetensors").symlink_to(other / "secret.safetensors")
    manager = AdapterAdmin(None, None, None, AdminSettings((served.resolve(),), 4))
    assert manager.resolve_file("ok.safetensors") == (served / "ok.safetensors").resolve()
    assert manager.resolve_file("sub/deep.safetensors") == (served / "sub" / "deep.safetensors").resolve()
    for bad, status in [("../other/secret.safetensors", 400), (str(other / "secret.safetensors"), 400),
                        ("link.safetensors", 404), ("ok.pt", 400), ("", 400), (None, 400),
                        ("sub/../../other/secret.safetensors", 400), ("missing.safetensors", 404),
                        ("x" * 300 + ".safetensors", 400), ("nul\0.safetensors", 400)]:
        with pytest.raises(AdminError) as info:
            manager.resolve_file(bad)
        assert info.value.status == status, (bad, info.value.message)


def _serve_options(**overrides) -> ServeOptions:
    return ServeOptions(**{"max_request_bytes": LIMIT, **overrides})


def _configure(options: ServeOptions, vllm_options: list[str]) -> None:
    """The start-up checks of `build_settings` that need no model."""
    _admin(options, _security(options), {}, vllm_options)


@pytest.mark.parametrize(("overrides", "options", "words"), [
    ({"adapter_dirs": ["."]}, ["--enforce-eager"], "needs an admin key"),
    ({"adapter_dirs": ["/no/such/dir"], "admin_key": ADMIN_KEY}, ["--enforce-eager"], "not a directory"),
    ({"adapter_dirs": ["."], "admin_key": ADMIN_KEY, "max_adapters": 0}, ["--enforce-eager"], "between 1 and 64"),
    ({"drain_timeout": -1}, [], "--drain-timeout"),
    ({"api_key": "short"}, [], "at least 8"),
])
def test_serve_flags_that_cannot_work_stop_start_up_with_the_fix(overrides, options, words, monkeypatch):
    monkeypatch.delenv("FAIRSTEER_API_KEY", raising=False)
    monkeypatch.delenv("FAIRSTEER_ADMIN_KEY", raising=False)
    with pytest.raises(ServeConfigError, match=words):
        _configure(_serve_options(**overrides), options)


def test_vllm_dev_mode_is_refused_on_a_server_with_an_api_key(monkeypatch):
    monkeypatch.delenv("FAIRSTEER_API_KEY", raising=False)
    monkeypatch.delenv("FAIRSTEER_ADMIN_KEY", raising=False)
    monkeypatch.setenv("VLLM_SERVER_DEV_MODE", "1")
    with pytest.raises(ServeConfigError, match="VLLM_SERVER_DEV_MODE"):
        _configure(_serve_options(api_key=API_KEY), [])
    _configure(_serve_options(), [])  # an open loopback server may use it
    monkeypatch.setenv("VLLM_SERVER_DEV_MODE", "0")
    _configure(_serve_options(api_key=API_KEY), [])


def test_serve_drains_by_default_unless_vllm_shutdown_timeout_is_given():
    assert drain_kwargs(_serve_options(), []) == {"shutdown_timeout": DEFAULT_DRAIN_S}
    assert drain_kwargs(_serve_options(), ["--shutdown-timeout", "5"]) == {}
    assert drain_kwargs(_serve_options(), ["--shutdown-timeout=5"]) == {}


@pytest.mark.parametrize("name", ["ok\n", "with space", "-dash-first", "", "x" * 65, "naïve"])
def test_adapter_names_that_cannot_travel_in_headers_are_refused(name):
    from server.admin import _check_name
    from server.settings import _adapter_table

    with pytest.raises(AdminError, match="not usable") as info:
        _check_name(name)
    assert info.value.status == 400
    if name:  # an empty name is refused earlier, as NAME=FILE malformed
        with pytest.raises(ServeConfigError, match="not usable"):
            _adapter_table((f"{name}=a.safetensors",), "m")
    _check_name("dso-v2.1_final")
