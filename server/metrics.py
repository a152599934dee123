"""Every Prometheus metric fairsteer defines, in one place (names prefixed `fairsteer_`).

They live on prometheus_client's default registry, which is what vLLM's `/metrics` route serves when
it runs one API server process (`get_prometheus_registry()` returns `REGISTRY` unless
PROMETHEUS_MULTIPROC_DIR is set, which vLLM only does for `--api-server-count > 1`). Our counters are
recorded in the API server process, where requests and completions pass, so they appear beside vLLM's
`vllm:*` metrics on the same page. Gauges carry a `multiprocess_mode` so that they still aggregate
sensibly if an operator does run several API server processes.

Labels are bounded whatever clients send (see `server.group_metrics`):
    model_name      a served model name (the label vLLM uses too) given at start-up, else "other"
    adapter         a loaded adapter's serving name, "none" (no adapter) or "other"
    strength_bucket one of STRENGTH_BUCKETS
    axis, group     from the group lexicon loaded at start-up (validated, at most 16 groups)
No prompt or output text is ever a label value.

`docker/grafana/dashboards/*.json` may only name metrics listed here or vLLM's; a test checks it.
"""

from prometheus_client import Counter, Gauge, Histogram

# Fixed, documented buckets of the requested fairness_strength ω. "invalid" only catches values the HTTP
# layer should already have refused (negative, NaN), so a bug upstream cannot create new label values.
STRENGTH_BUCKETS: tuple[str, ...] = ("0", "(0,0.25]", "(0.25,0.5]", "(0.5,0.75]", "(0.75,1]", ">1", "invalid")

# Histogram bounds for the requested strength; `le="0"` counts exactly-unsteered requests.
STRENGTH_HISTOGRAM_BOUNDS: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)

_ROUTE = ("model_name", "adapter", "strength_bucket")

REQUESTS = Counter(
    "fairsteer_requests", "Accepted generation requests, by adapter and fairness_strength bucket.", _ROUTE)
REQUEST_STRENGTH = Histogram(
    "fairsteer_request_strength", "Requested fairness_strength of accepted requests.",
    ("model_name", "adapter"), buckets=STRENGTH_HISTOGRAM_BOUNDS)
COMPLETIONS = Counter(
    "fairsteer_completions",
    "Finished choices (streamed or not) classified by the group lexicon; the denominator of group shares.",
    _ROUTE)
GROUP_COMPLETIONS = Counter(
    "fairsteer_group_completions",
    "Finished choices whose text mentions at least one term of the group (whole words, case-insensitive).",
    (*_ROUTE, "axis", "group"))
GROUP_TERMS = Counter(
    "fairsteer_group_terms",
    "Occurrences of the group's lexicon terms in finished choices (whole words, case-insensitive).",
    (*_ROUTE, "axis", "group"))
ERRORS = Counter(
    "fairsteer_metrics_errors",
    "Exceptions swallowed while counting (serving went on); stage is 'request' or 'completion'.",
    ("stage",))
ADAPTER_INFO = Gauge(
    "fairsteer_adapter_info",
    "Loaded steering adapters: 1 per adapter, with its content-hash version and training method.",
    ("adapter", "version", "method"), multiprocess_mode="max")
LEXICON_TERMS = Gauge(
    "fairsteer_lexicon_terms", "Number of terms per group in the loaded group lexicon.",
    ("axis", "group"), multiprocess_mode="max")

# Names as they appear on /metrics (counters gain `_total`, histograms `_bucket`/`_sum`/`_count`).
EXPOSED_NAMES: frozenset[str] = frozenset({
    "fairsteer_requests_total",
    "fairsteer_request_strength_bucket", "fairsteer_request_strength_sum", "fairsteer_request_strength_count",
    "fairsteer_completions_total",
    "fairsteer_group_completions_total",
    "fairsteer_group_terms_total",
    "fairsteer_metrics_errors_total",
    "fairsteer_adapter_info",
    "fairsteer_lexicon_terms",
})
