"""Per-group output metrics: which groups the served completions refer to, per adapter and strength.

The serving layer calls, in the API server process:

    configure(lexicon_path, served_models)      once at start-up; raises LexiconError for a bad lexicon
    set_loaded_adapters({name: spec, ...})       once the adapters are loaded (fills fairsteer_adapter_info)
    observe_request(model, adapter, strength)    once per accepted request
    observe_completion(model, adapter, strength, text)   once per finished choice, streamed or not

Each completion is classified by the group lexicon (`server.lexicons`): per group, one count to
`fairsteer_group_completions_total` if the text mentions the group at all, and the number of term
occurrences to `fairsteer_group_terms_total`; `fairsteer_completions_total` is the denominator. The
metrics themselves are defined in `server.metrics`.

Label values are bounded whatever clients send: the model is one of the served names given to
`configure` ("other" otherwise), the adapter one of the loaded names, "none" or "other", the strength one
of the fixed buckets. Text never leaves this module. Counting must never break serving: every exception
in `observe_*` is swallowed, counted in `fairsteer_metrics_errors_total` and logged (rate-limited).
"""

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from server import lexicons, metrics
from server.lexicons import Lexicon, LexiconError

__all__ = ["NO_ADAPTER", "OTHER", "LexiconError", "configure", "observe_completion", "observe_request",
           "set_loaded_adapters", "strength_bucket"]

log = logging.getLogger(__name__)
NO_ADAPTER = "none"  # label of requests served without an adapter
OTHER = "other"      # label of any model or adapter name not known at start-up (should not happen)
# Before configure()/set_loaded_adapters() name them, the first few names seen are accepted, then "other":
# bounded even if the serving layer never declares its model or adapters (it validates adapter names first).
_MAX_UNDECLARED_MODELS = 4
_MAX_UNDECLARED_ADAPTERS = 16


@dataclass
class _State:
    lexicon: Lexicon | None = None
    models: tuple[str, ...] = ()
    models_fixed: bool = False
    adapters: frozenset[str] = frozenset()
    adapters_fixed: bool = False
    errors: int = 0


_state = _State()


def configure(lexicon_path: str | None = None, served_models: Iterable[str] = ()) -> Lexicon:
    """Load and validate the group lexicon (None: the default gender lexicon) and fix the model labels.

    Call at start-up, before serving: a bad lexicon raises `LexiconError` whose message names the file,
    the problem and the fix, so the server refuses to start rather than count wrongly.

    Args:
        lexicon_path: JSON lexicon file (format in `server.lexicons`); change it to count other groups.
        served_models: the names requests may carry in `model`; anything else is labelled "other".
    """
    lexicon = lexicons.load(lexicon_path)
    models = tuple(dict.fromkeys(served_models))
    _state.lexicon, _state.models, _state.models_fixed = lexicon, models, bool(models)
    metrics.LEXICON_TERMS.clear()
    for group, terms in lexicon.groups.items():
        metrics.LEXICON_TERMS.labels(lexicon.axis, group).set(len(terms))
    _initialise_series()
    return lexicon


def set_loaded_adapters(adapters: Mapping[str, Any]) -> None:
    """Declare the loaded adapters: serving name → `adapters.spec.SteeringSpec` (uses .version, .meta.method).

    Only these names (and "none") become `adapter` label values; each gets one
    `fairsteer_adapter_info{adapter, version, method} 1` series.
    """
    _state.adapters, _state.adapters_fixed = frozenset(adapters), True
    metrics.ADAPTER_INFO.clear()
    for name, spec in adapters.items():
        metrics.ADAPTER_INFO.labels(name, spec.version, spec.meta.method).set(1)
    _initialise_series()


def strength_bucket(strength: float) -> str:
    """The fixed bucket of a fairness_strength: "0", "(0,0.25]", …, "(0.75,1]", ">1" (or "invalid")."""
    if not isinstance(strength, (int, float)) or math.isnan(strength) or strength < 0:
        return "invalid"
    if strength == 0:
        return "0"
    for upper, name in ((0.25, "(0,0.25]"), (0.5, "(0.25,0.5]"), (0.75, "(0.5,0.75]"), (1.0, "(0.75,1]")):
        if strength <= upper:
            return name
    return ">1"


def observe_request(model: str, adapter: str | None, strength: float) -> None:
    """Count one accepted request. Never raises."""
    try:
        model_label, adapter_label = _model_label(model), _adapter_label(adapter)
        metrics.REQUESTS.labels(model_label, adapter_label, strength_bucket(strength)).inc()
        if strength_bucket(strength) != "invalid":
            metrics.REQUEST_STRENGTH.labels(model_label, adapter_label).observe(float(strength))
    except Exception as exc:  # noqa: BLE001 - counting must never break serving
        _count_error("request", exc)


def observe_completion(model: str, adapter: str | None, strength: float, text: str) -> None:
    """Classify one finished choice's text and count it per group. Never raises; the text is not kept."""
    try:
        lexicon = _lexicon()
        route = (_model_label(model), _adapter_label(adapter), strength_bucket(strength))
        counts = lexicon.count(text)
        metrics.COMPLETIONS.labels(*route).inc()
        for group, n in counts.items():
            if n:
                metrics.GROUP_COMPLETIONS.labels(*route, lexicon.axis, group).inc()
                metrics.GROUP_TERMS.labels(*route, lexicon.axis, group).inc(n)
    except Exception as exc:  # noqa: BLE001 - counting must never break serving
        _count_error("completion", exc)


def _lexicon() -> Lexicon:
    if _state.lexicon is None:  # configure() not called: the default lexicon (always valid, tested)
        configure(None, ())
    return _state.lexicon


def _model_label(model: str) -> str:
    if model in _state.models:
        return model
    if not _state.models_fixed and isinstance(model, str) and len(_state.models) < _MAX_UNDECLARED_MODELS:
        _state.models = (*_state.models, model)
        return model
    return OTHER


def _adapter_label(adapter: str | None) -> str:
    if adapter is None:
        return NO_ADAPTER
    if adapter in _state.adapters:
        return adapter
    if not _state.adapters_fixed and isinstance(adapter, str) and len(_state.adapters) < _MAX_UNDECLARED_ADAPTERS:
        _state.adapters = _state.adapters | {adapter}
        return adapter
    return OTHER


def _initialise_series() -> None:
    """Create every expected series at 0, so rates and shares exist from the first scrape on."""
    lexicon = _state.lexicon
    if lexicon is None:
        return
    buckets = [b for b in metrics.STRENGTH_BUCKETS if b != "invalid"]
    for model in _state.models:
        for adapter in (NO_ADAPTER, *sorted(_state.adapters)):
            metrics.REQUEST_STRENGTH.labels(model, adapter)
            for bucket in buckets:
                metrics.REQUESTS.labels(model, adapter, bucket)
                metrics.COMPLETIONS.labels(model, adapter, bucket)
                for group in lexicon.groups:
                    metrics.GROUP_COMPLETIONS.labels(model, adapter, bucket, lexicon.axis, group)
                    metrics.GROUP_TERMS.labels(model, adapter, bucket, lexicon.axis, group)
    for stage in ("request", "completion"):
        metrics.ERRORS.labels(stage)


def _count_error(stage: str, exc: Exception) -> None:
    try:
        metrics.ERRORS.labels(stage).inc()
        _state.errors += 1
        if _state.errors in (1, 10, 100) or _state.errors % 1000 == 0:  # logged, but never a flood
            log.warning("fairsteer group metrics: error #%d while counting a %s (serving continues)",
                        _state.errors, stage, exc_info=exc)
    except Exception:  # noqa: BLE001, S110 - even a failing error counter must not reach the request
        pass
