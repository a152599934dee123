"""Unit tests of the group lexicon, its validation, strength buckets and the bounded metric labels."""

import json
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY, generate_latest

from server import group_metrics, lexicons, metrics
from server.lexicons import LexiconError

MODEL = "unit-test-model"


class _Spec:  # what set_loaded_adapters reads from a SteeringSpec
    def __init__(self, version: str, method: str):
        self.version = version
        self.meta = type("Meta", (), {"method": method})()


@pytest.fixture
def configured():
    group_metrics.configure(None, served_models=[MODEL])
    group_metrics.set_loaded_adapters({"fair": _Spec("0123456789ab", "dso"), "caa": _Spec("ba9876543210", "caa")})
    yield


def _value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_default_lexicon_counts_whole_words_case_insensitively():
    lexicon = lexicons.load()
    text = "She said HE's a non-binary person; her brother and their kids. Shed heal hemlock. Mr. Smith, the woman's."
    assert lexicon.axis == "gender"
    assert lexicon.count(text) == {"female": 3, "male": 3, "neutral": 4}, \
        "she/HER/woman's, HE's/brother/Mr, non-binary/person/their/kids; never inside 'shed' or 'hemlock'"


def test_phrases_match_longest_first_across_whitespace_and_apostrophes():
    lexicon = lexicons.parse({"format_version": 1, "axis": "age", "groups": {
        "young": ["young woman", "teen", "kid's toy"], "old": ["woman", "senior citizen"]}})
    text = "A young  woman and a Woman, senior\ncitizen; teenager, TEEN, a kid’s toy."
    assert lexicon.count(text) == {"young": 3, "old": 2}


def test_default_lexicon_file_documents_itself():
    raw = json.loads(lexicons.DEFAULT_PATH.read_text())
    assert set(raw["groups"]) == {"female", "male", "neutral"}
    assert raw["description"], "the shipped lexicon says what it counts and its caveats"


BAD_LEXICONS = [
    ({"format_version": 2, "axis": "g", "groups": {"a": ["x"]}}, "'format_version' must be 1"),
    ({"format_version": 1, "axis": "Gender!", "groups": {"a": ["x"]}}, "'axis' 'Gender!' is not allowed"),
    ({"format_version": 1, "axis": "g", "groups": {}}, "'groups' must be a non-empty object"),
    ({"format_version": 1, "axis": "g", "groups": {"a": []}}, "group 'a' must be a non-empty list"),
    ({"format_version": 1, "axis": "g", "groups": {"a": ["she", " "]}}, "term ' ' in group 'a'"),
    ({"format_version": 1, "axis": "g", "groups": {"a": ["she"], "b": ["She"]}},
     "term 'She' appears in group 'a' and again in group 'b'"),
    ({"format_version": 1, "axis": "g", "groups": {"a": ["-she"]}}, "must start and end with a letter"),
    ({"format_version": 1, "axis": "g", "groups": {"a b": ["x"]}}, "group name 'a b' is not allowed"),
    ({"format_version": 1, "axis": "g", "groups": {f"g{i}": [f"t{i}"] for i in range(17)}},
     "17 groups, at most 16"),
    ({"format_version": 1, "axis": "g", "groups": {"a": ["x"]}, "terms": []}, "unknown field(s) ['terms']"),
    (["she"], "the top level must be a JSON object"),
]


@pytest.mark.parametrize("raw,problem", BAD_LEXICONS, ids=[p for _, p in BAD_LEXICONS])
def test_bad_lexicon_is_refused_naming_the_problem(tmp_path, raw, problem):
    path = tmp_path / "lexicon.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(LexiconError) as err:
        group_metrics.configure(str(path))
    assert problem in str(err.value) and str(path) in str(err.value)


def test_unreadable_lexicon_files_are_refused(tmp_path):
    with pytest.raises(LexiconError, match="does not exist; pass an existing JSON file"):
        lexicons.load(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text('{"axis": "g",, }')
    with pytest.raises(LexiconError, match="is not valid JSON: .* at line 1, column 14"):
        lexicons.load(tmp_path / "broken.json")


@pytest.mark.parametrize("strength,bucket", [
    (0, "0"), (0.0, "0"), (1e-9, "(0,0.25]"), (0.25, "(0,0.25]"), (0.2500001, "(0.25,0.5]"), (0.5, "(0.25,0.5]"),
    (0.75, "(0.5,0.75]"), (0.9, "(0.75,1]"), (1, "(0.75,1]"), (1.01, ">1"), (float("inf"), ">1"),
    (-0.1, "invalid"), (float("nan"), "invalid"), ("0.5", "invalid"), (None, "invalid"),
])
def test_strength_buckets_are_the_documented_ones(strength, bucket):
    assert group_metrics.strength_bucket(strength) == bucket
    assert bucket in metrics.STRENGTH_BUCKETS


def test_completion_counts_follow_the_lexicon(configured):
    labels = {"model_name": MODEL, "adapter": "fair", "strength_bucket": "(0.5,0.75]", "axis": "gender"}
    before = {g: _value("fairsteer_group_terms_total", **labels, group=g) for g in ("female", "male", "neutral")}
    mentions = _value("fairsteer_group_completions_total", **labels, group="female")
    total = _value("fairsteer_completions_total", model_name=MODEL, adapter="fair", strength_bucket="(0.5,0.75]")
    group_metrics.observe_completion(MODEL, "fair", 0.7, "She and her sister met him.")
    group_metrics.observe_completion(MODEL, "fair", 0.6, "Nothing here.")
    after = {g: _value("fairsteer_group_terms_total", **labels, group=g) for g in before}
    assert {g: after[g] - before[g] for g in before} == {"female": 3, "male": 1, "neutral": 0}
    assert _value("fairsteer_group_completions_total", **labels, group="female") - mentions == 1
    assert _value("fairsteer_completions_total", model_name=MODEL, adapter="fair",
                  strength_bucket="(0.5,0.75]") - total == 2


def test_requests_are_counted_with_their_strength(configured):
    before = _value("fairsteer_requests_total", model_name=MODEL, adapter="none", strength_bucket="0")
    count = _value("fairsteer_request_strength_count", model_name=MODEL, adapter="caa")
    group_metrics.observe_request(MODEL, None, 0.0)
    group_metrics.observe_request(MODEL, "caa", 1.5)
    assert _value("fairsteer_requests_total", model_name=MODEL, adapter="none", strength_bucket="0") - before == 1
    assert _value("fairsteer_request_strength_count", model_name=MODEL, adapter="caa") - count == 1
    assert _value("fairsteer_adapter_info", adapter="fair", version="0123456789ab", method="dso") == 1


def _label_values(family: str, label: str) -> set[str]:
    return {s.labels[label] for m in REGISTRY.collect() if m.name == family for s in m.samples}


def test_label_cardinality_is_bounded_whatever_clients_send(configured):
    families = ("fairsteer_requests", "fairsteer_group_terms")
    # Other tests in this process may have added labels; only what this flood adds is checked.
    before = {(f, label): _label_values(f, label) for f in families for label in ("model_name", "adapter")}
    rng = random.Random(0)
    for i in range(500):
        name = "".join(rng.choice("abcdefgh{}\"\n") for _ in range(8))
        strength = rng.choice([rng.uniform(-5, 50), float("nan"), float("inf"), i])
        group_metrics.observe_request(name, name if i % 2 else "fair", strength)
        group_metrics.observe_completion(name, name, strength, f"she {name}")
    for family in families:
        new_models = _label_values(family, "model_name") - before[family, "model_name"]
        new_adapters = _label_values(family, "adapter") - before[family, "adapter"]
        assert new_models <= {MODEL, "other"}, f"{family}: client-chosen model labels {new_models}"
        assert new_adapters <= {"fair", "caa", "none", "other"}, f"{family}: adapter labels {new_adapters}"
        assert _label_values(family, "strength_bucket") <= set(metrics.STRENGTH_BUCKETS)


def test_no_prompt_or_output_text_ever_appears_in_metrics(configured):
    secret = "zanzibarquokka"
    group_metrics.observe_request(secret, secret, 0.5)
    group_metrics.observe_completion(secret, secret, 0.5, f"she said {secret}")
    assert secret not in generate_latest(REGISTRY).decode()


def test_counting_errors_are_swallowed_and_counted(configured):
    before = _value("fairsteer_metrics_errors_total", stage="completion")
    group_metrics.observe_completion(MODEL, "fair", 0.5, None)  # not a string: the classifier raises inside
    assert _value("fairsteer_metrics_errors_total", stage="completion") - before == 1


def test_every_exposed_name_is_defined_in_metrics_module(configured):
    exposed = {s.name for m in REGISTRY.collect() if m.name.startswith("fairsteer_") for s in m.samples
               if not s.name.endswith("_created")}  # prometheus_client's creation timestamps
    assert exposed == metrics.EXPOSED_NAMES


def test_undeclared_names_are_capped_when_the_server_never_declares_them(monkeypatch):
    monkeypatch.setattr(group_metrics, "_state", group_metrics._State())  # as if configure() was never called
    before = _label_values("fairsteer_requests", "adapter")
    for i in range(40):
        group_metrics.observe_request(f"undeclared-model-{i % 6}", f"undeclared-{i}", 0.5)
    new = _label_values("fairsteer_requests", "adapter") - before
    assert len(new - {"other"}) == group_metrics._MAX_UNDECLARED_ADAPTERS
    assert "other" in _label_values("fairsteer_requests", "adapter"), "names past the cap become 'other'"
    models = {m for m in _label_values("fairsteer_requests", "model_name") if m.startswith("undeclared")}
    assert len(models) == group_metrics._MAX_UNDECLARED_MODELS


def test_a_bad_lexicon_is_a_start_up_error_the_command_line_prints(tmp_path):
    from cli.main import user_errors

    assert issubclass(LexiconError, user_errors()), "fairsteer serve prints it without a traceback (exit 2)"


def test_metrics_aggregate_in_vllms_multiprocess_mode(tmp_path):
    # vLLM sets PROMETHEUS_MULTIPROC_DIR for --api-server-count > 1 and serves a MultiProcessCollector;
    # prometheus_client picks file-backed values at import, hence a fresh interpreter per "API server".
    import subprocess
    import sys

    script = (
        "from server import group_metrics\n"
        "group_metrics.configure(None, ['m'])\n"
        "group_metrics.observe_completion('m', None, 0.5, 'she and he and she')\n"
    )
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=lexicons.DEFAULT_PATH.parents[2])
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
    labels = {"model_name": "m", "adapter": "none", "strength_bucket": "(0.25,0.5]", "axis": "gender"}
    assert registry.get_sample_value("fairsteer_group_terms_total", {**labels, "group": "female"}) == 4
    assert registry.get_sample_value("fairsteer_lexicon_terms", {"axis": "gender", "group": "male"}) > 0


_WORDS = ["she", "he", "her", "hers", "herself", "hero", "sh", "s", "the", "SHE", "He", "them", "they", "theyre"]


@given(st.lists(st.tuples(st.sampled_from(_WORDS), st.sampled_from([" ", ", ", ".", "\n", "-", "'", "_", "2"])),
                max_size=40))
@settings(max_examples=200, deadline=None)
def test_trie_matching_equals_a_plain_word_split(pieces):
    # For single-word terms, whole-word matching is exactly: split on non-word characters, look up each word.
    lexicon = lexicons.parse({"format_version": 1, "axis": "g", "groups": {
        "f": ["she", "her", "hers", "herself"], "m": ["he", "hero"], "n": ["they", "them"]}})
    text = "".join(word + sep for word, sep in pieces)
    words = re.findall(r"\w+", text.casefold())
    expected = {g: sum(w in terms for w in words) for g, terms in lexicon.groups.items()}
    assert lexicon.count(text) == expected, text
