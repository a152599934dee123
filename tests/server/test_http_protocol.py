"""The steering fields of a request, without an engine: validation, translation and cache salts.

The same contract is checked over real HTTP in test_http_api.py; here every case is cheap.
"""

import json
import math

import pytest

from server.engine_boundary import INTERNAL_ADAPTER_KEY, INTERNAL_STRENGTH_KEY
from server.protocol import (
    Applied,
    Policy,
    SteeringError,
    cache_salt,
    mentions_steering,
    resolve,
    rewrite,
)

POLICY = Policy({"fair": "aaaaaaaaaaaa", "other": "bbbbbbbbbbbb"}, default_adapter="fair",
                default_strength=0.25, max_strength=1.5)
UNSTEERED = Policy({}, default_adapter=None)

BAD = [  # (body, param the 400 must name, words the message must contain)
    ({"fairness_strength": "0.5"}, "fairness_strength", "not a string"),
    ({"fairness_strength": None}, "fairness_strength", "null"),
    ({"fairness_strength": math.nan}, "fairness_strength", "finite"),
    ({"fairness_strength": math.inf}, "fairness_strength", "finite"),
    ({"fairness_strength": -0.1}, "fairness_strength", ">= 0"),
    ({"fairness_strength": 1.6}, "fairness_strength", "maximum 1.5"),
    ({"fairness_strength": True}, "fairness_strength", "boolean"),
    ({"fairness_strength": [1]}, "fairness_strength", "array"),
    ({"steering": "nope"}, "steering", "unknown steering adapter 'nope'"),
    ({"steering": None}, "steering", "null"),
    ({"steering": 3}, "steering", "adapter name"),
    ({"fairness_strength": 0.5, "vllm_xargs": {"fairness_strength": 0.7}}, "fairness_strength", "twice"),
    ({"steering": "fair", "vllm_xargs": {"steering": "other"}}, "steering", "twice"),
    ({"vllm_xargs": "fairness_strength=1"}, "vllm_xargs", "JSON object"),
    ({"vllm_xargs": [1]}, "vllm_xargs", "JSON object"),
    ({"vllm_xargs": {"fairness_strength": "1"}}, "fairness_strength", "string"),
    ({"fairness_strenght": 1.0}, "fairness_strenght", "unknown field 'fairness_strenght'"),
    ({"fairsteer_strength": 1.0}, "fairsteer_strength", "'fairness_strength'"),
    ({"vllm_xargs": {"Steering_adapter": "fair"}}, "vllm_xargs.Steering_adapter", "unknown field"),
]


@pytest.mark.parametrize(("body", "param", "words"), BAD, ids=[json.dumps(b)[:60] for b, _, _ in BAD])
def test_bad_steering_fields_name_the_field(body, param, words):
    with pytest.raises(SteeringError) as info:
        resolve(body, POLICY)
    assert info.value.param == param, "the 400 must name the offending field"
    assert words in info.value.message


def test_defaults_apply_when_fields_are_absent():
    assert resolve({"prompt": "x"}, POLICY) == Applied("fair", "aaaaaaaaaaaa", 0.25)
    assert resolve({"prompt": "x"}, UNSTEERED) == Applied(None, None, 0.0)


def test_fields_are_read_from_the_top_level_and_from_vllm_xargs():
    top = resolve({"fairness_strength": 1, "steering": "other"}, POLICY)
    inner = resolve({"vllm_xargs": {"fairness_strength": 1.0, "steering": "other"}}, POLICY)
    both = resolve({"fairness_strength": 1, "steering": "other", "vllm_xargs": {"fairness_strength": 1.0}}, POLICY)
    assert top == inner == both == Applied("other", "bbbbbbbbbbbb", 1.0)


def test_strength_without_any_adapter_is_refused_but_zero_is_served():
    with pytest.raises(SteeringError) as info:
        resolve({"fairness_strength": 0.5}, UNSTEERED)
    assert info.value.param == "fairness_strength" and "no steering adapter" in info.value.message
    assert resolve({"fairness_strength": 0}, UNSTEERED) == Applied(None, None, 0.0)
    with pytest.raises(SteeringError, match="none"):
        resolve({"steering": "fair"}, UNSTEERED)


def test_rewrite_sets_internal_keys_naming_the_pinned_version():
    body = {"prompt": "x", "fairness_strength": 0.5, "steering": "other", "vllm_xargs": {"mine": 1}}
    applied = resolve(body, POLICY)
    out = rewrite(body, applied)
    assert "fairness_strength" not in out and "steering" not in out
    assert out["vllm_xargs"] == {"mine": 1, INTERNAL_ADAPTER_KEY: "other@bbbbbbbbbbbb", INTERNAL_STRENGTH_KEY: 0.5}
    assert out["cache_salt"] == cache_salt(applied, None)


@pytest.mark.parametrize(("key", "public"), [(INTERNAL_STRENGTH_KEY, "fairness_strength"),
                                             (INTERNAL_ADAPTER_KEY, "steering")])
def test_internal_keys_sent_by_a_client_are_refused_naming_the_public_field(key, public):
    for body in ({"prompt": "x", "vllm_xargs": {key: 50}}, {"prompt": "x", key: 50},
                 {"prompt": "x", "fairness_strength": 0, "vllm_xargs": {key: "evil"}}):
        with pytest.raises(SteeringError) as info:
            resolve(body, POLICY)
        assert key in info.value.param and repr(public) in info.value.message


def test_unsteered_rewrite_leaves_no_internal_keys_and_no_salt():
    body = {"prompt": "x", "fairness_strength": 0, "vllm_xargs": {"mine": 1}}
    out = rewrite(body, resolve(body, POLICY))
    assert out == {"prompt": "x", "vllm_xargs": {"mine": 1}}, "strength 0 must reach vLLM as a plain request"
    assert rewrite({"prompt": "x", "fairness_strength": 0}, resolve({"fairness_strength": 0}, POLICY)) == {"prompt": "x"}


def test_cache_salt_differs_per_setting_and_keeps_the_clients_salt():
    settings = [Applied("fair", "aaaaaaaaaaaa", s) for s in (0.25, 0.5, 1.0)] + [
        Applied("other", "bbbbbbbbbbbb", 0.5), Applied("fair", "cccccccccccc", 0.5)]
    salts = {cache_salt(a, None) for a in settings}
    assert len(salts) == len(settings), "each (adapter, version, strength) needs its own KV namespace"
    one = settings[0]
    assert cache_salt(one, None) == cache_salt(one, None), "same setting, same salt: caching still works"
    assert cache_salt(one, "tenant-a") != cache_salt(one, "tenant-b") != cache_salt(one, None)
    for salt in salts:
        assert len(salt) <= 128 and "/" not in salt and "@" not in salt  # vLLM's cache_salt rules


def test_invalid_client_salt_is_left_for_vllm_to_refuse():
    body = {"prompt": "x", "fairness_strength": 1.0, "cache_salt": ""}
    assert rewrite(body, resolve(body, POLICY))["cache_salt"] == ""


def test_mentions_steering_finds_public_and_internal_fields():
    assert mentions_steering({"fairness_strength": 0}) == "fairness_strength"
    assert mentions_steering({"vllm_xargs": {INTERNAL_STRENGTH_KEY: 1}}) == f"vllm_xargs.{INTERNAL_STRENGTH_KEY}"
    assert mentions_steering({"input": "hello"}) is None


def test_applied_headers_state_adapter_version_and_strength():
    headers = dict(Applied("fair", "aaaaaaaaaaaa", 0.5).headers())
    assert headers == {b"x-fairsteer-adapter": b"fair", b"x-fairsteer-version": b"aaaaaaaaaaaa",
                       b"x-fairsteer-strength": b"0.5"}


def test_a_nonzero_default_strength_refuses_endpoints_that_cannot_steer():
    from server.registry import SteeringRegistry
    from server.steering_api import _unsteerable

    steered_default = SteeringRegistry("m", {}, "fair", default_strength=0.5, max_strength=1.0)
    problem = _unsteerable("/v1/responses", {"input": "Hi"}, steered_default)
    assert problem and problem[1] == "fairness_strength" and "/v1/responses" in problem[0]
    assert _unsteerable("/tokenize", {"prompt": "Hi"}, steered_default) is None
    unsteered_default = SteeringRegistry("m", {}, "fair", default_strength=0.0, max_strength=1.0)
    assert _unsteerable("/v1/responses", {"input": "Hi"}, unsteered_default) is None
    assert _unsteerable("/v1/responses", {"input": "Hi", "steering": "fair"}, unsteered_default)[1] == "steering"
