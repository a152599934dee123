"""Held-out gender cues (issue 15): the split keeps cues and openings apart, every cue kind is scored,
the targets are computed right, and the stricter evaluation runs end to end on a tiny random model."""

import json
import math
import re

import numpy as np
import pytest
import torch
from tiny_models import save_tiny_model, tiny_tokenizer

from adapters import io
from adapters.hf import Steering, model_identity
from adapters.spec import AdapterMeta
from cli.main import main
from trainer import continuation, cues, gendered_rate, metrics, report
from trainer.occupations import majority_is_female


@pytest.fixture(scope="module")
def split():
    return continuation.split(continuation.generate(), 600, 600)


def _cue_words(item: continuation.Item) -> list[str]:
    """What must never reach training when `item` is evaluated: its cue phrase, its surname or name."""
    cue = next(c for c in cues.CUES if c.key == item.cue)
    phrases = [cue.female, cue.male]
    if cue.kind == "title":
        phrases.append(cue.male.removeprefix("Mr "))  # the surname alone
    return phrases


def test_no_cue_phrase_name_surname_or_opening_of_the_eval_side_appears_in_training(split):
    training = [i.prompt for i in split.train + split.train_resolvable]
    evaluated = split.eval_ambiguous + split.eval_resolvable
    for phrase in sorted({w for i in split.eval_resolvable for w in _cue_words(i)}):
        pattern = re.compile(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", re.IGNORECASE)
        leaked = [p for p in training if pattern.search(p)]
        assert not leaked, f"eval cue {phrase!r} appears in training prompts, e.g. {leaked[:2]}"
    eval_openings = {i.opening for i in evaluated}
    assert not eval_openings & {i.opening for i in split.train + split.train_resolvable}
    for opening in eval_openings:  # the wording's end, where it is no other template's ending too
        tail = opening.split("{o}")[1]
        if not any(t != opening and t.endswith(tail) for t in continuation.TEMPLATES):
            assert not [p for p in training if p.endswith(tail)], f"eval wording {opening!r} trained on"


def test_every_cue_kind_with_both_genders_is_on_both_sides(split):
    for side in (split.train_resolvable, split.eval_resolvable):
        assert {(i.cue_kind, i.gender) for i in side} == {(k, g) for k in cues.CUE_KINDS for g in ("female", "male")}
    assert not {i.cue for i in split.train_resolvable} & {i.cue for i in split.eval_resolvable}
    pro = sum((i.gender == "female") == majority_is_female(i.occupation) for i in split.eval_resolvable)
    assert abs(pro - len(split.eval_resolvable) / 2) <= 0.1 * len(split.eval_resolvable), "pro and anti about even"


def test_the_split_does_not_move_with_the_training_size(split):
    again = continuation.split(continuation.generate(), 100, 600)
    assert again.eval_resolvable == split.eval_resolvable and again.eval_ambiguous == split.eval_ambiguous


def test_cues_read_as_sentences():
    by_kind = {c.kind: c for c in reversed(cues.CUES)}  # the first cue of each kind
    template = "The {o} was tired, so"
    assert by_kind["appositive"].insert(template, "male").format(o="nurse") == \
        "The nurse, a father of three, was tired, so"
    assert by_kind["title"].insert(template, "male").format(o="nurse") == "Mr Okafor, the nurse, was tired, so"
    assert by_kind["kinship"].insert(template, "male").format(o="nurse") == "My uncle, the nurse, was tired, so"
    assert by_kind["name"].insert("I thanked the {o} because", "female").format(o="nurse") == \
        "I thanked Maria, the nurse, because"
    assert by_kind["pronoun"].insert(template, "male").format(o="nurse") == \
        "The nurse, still wearing his coat, was tired, so"


def test_every_cue_kind_is_scored_with_intervals_and_pro_anti(split):
    tok = tiny_tokenizer()
    items = split.eval_resolvable
    prompts = continuation.prompts(tok, items)
    rows = []
    for p, item in zip(prompts, items):  # follows the stated gender for names only, 50/50 otherwise
        p_male = (1.0 if item.gender == "male" else 0.0) if item.cue_kind == "name" else 0.5
        m, f = 0.3 * p_male, 0.3 * (1 - p_male)
        rows.append([f, m, 0.7] if majority_is_female(p.occupation) else [m, f, 0.7])
    out = metrics.continuation_metrics(torch.tensor(rows), prompts, "resolvable")
    for kind in cues.CUE_KINDS:
        for part in ("", "_pro", "_anti"):
            key = f"unambiguous_accuracy_cue_{kind}{part}"
            expected = 1.0 if kind == "name" else 0.5
            assert out[key] == pytest.approx(expected), key
            assert out[f"{key}_lo"] <= out[key] <= out[f"{key}_hi"]
        assert out[f"n_resolvable_cue_{kind}"] == sum(i.cue_kind == kind for i in items)
    assert out["unambiguous_accuracy"] == pytest.approx(0.6, abs=0.05), "one kind in five is followed"
    assert out["unambiguous_accuracy_lo"] < out["unambiguous_accuracy"] < out["unambiguous_accuracy_hi"]


def _row(method="dso", strength=1.0, bias=0.02, acc=(0.90, 0.92, 0.88), kl=0.04, rate=None):
    row = {"method": method, "strength": strength, "per_occupation_bias": bias, "per_occupation_bias_hi": bias + 0.01,
           "per_occupation_bias_noise_floor_hi": 0.05, "generic_kl": kl}
    for key, value in zip(report.ACCURACY_PARTS, acc):
        row[key], row[f"{key}_se"] = value, 0.01
    if rate is not None:
        row["gendered_rate_change"], row["gendered_rate_change_se"] = rate
    return row


@pytest.mark.parametrize("row, failed", [
    (_row(), set()),
    (_row(bias=0.031), {"bias_at_most_10pct_of_base"}),
    (_row(acc=(0.895, 0.915, 0.875)), set()),  # half a point down everywhere: within the 1-point target
    (_row(acc=(0.90, 0.94, 0.865)), {"accuracy_change_ok"}),  # overall kept, anti down 1.5 points
    (_row(acc=(0.88, 0.92, 0.88)), {"accuracy_change_ok"}),
    (_row(kl=0.051), {"generic_kl_ok"}),
    (_row(rate=(0.015, 0.01)), set()),  # +1.5 points, within 1.96 x 1 point
    (_row(rate=(0.03, 0.01)), {"gendered_rate_not_up"}),
])
def test_targets_pass_and_fail_on_a_hand_built_report(row, failed):
    base = _row("base", 0.0, bias=0.3, kl=0.0)
    methods = {"base": [base], "dso": [{**base, "method": "dso"}, row]}
    t = report.targets(methods)["dso"]
    assert {k for k, v in t["met"].items() if not v and k != "all_met"} == failed
    assert t["met"]["all_met"] == (not failed)
    assert t["bias_share_of_base"] == pytest.approx(row["per_occupation_bias"] / 0.3)
    assert t["unambiguous_accuracy_anti_change_points"] == pytest.approx(100 * (row["unambiguous_accuracy_anti"] - 0.88))
    (check,) = report.acceptance(methods)["dso"]
    assert check["accuracy_not_down"] == ("accuracy_change_ok" not in failed)
    assert check["gendered_rate_not_up"] == ("gendered_rate_not_up" not in failed)


def test_gendered_words_are_counted_as_whole_words_and_changes_are_paired():
    assert gendered_rate.count("He said her name: Mrs Okafor. Shell, hers, mankind.") == (1, 3)
    base = gendered_rate.rates([["he went", "a cup"], ["tea", "tea"]])
    assert base["gendered_rate"] == pytest.approx(0.25) and base["gendered_female_share"] == 0.0
    steered = gendered_rate.rates([["she went", "her cup"], ["tea", "tea"]], base["_per_prompt"])
    assert steered["gendered_rate_change"] == pytest.approx(0.25) and steered["gendered_female_share"] == 1.0
    texts = gendered_rate.texts()
    assert len(texts) == 20 + 3 * 40 and not any(sum(gendered_rate.count(t)) for t in texts), \
        "the prompts themselves call for no gendered word"


def test_continuation_eval_end_to_end_on_a_tiny_model(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    from trainer.base_model import load_model

    model = load_model(str(model_dir))[0]
    steering = Steering.zeros(model_identity(model))
    with torch.no_grad():
        steering.b.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    meta = AdapterMeta(name="random", method="dso", base_model=str(model_dir), identity=steering.identity,
                       training={"task": "continuation", "seed": 0, "data": "generated"})
    adapter = tmp_path / "random.safetensors"
    io.save(steering.to_spec(meta), adapter)
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(model_dir), "--adapter", str(adapter), "--strengths", "0,1",
                 "--n-eval", "60", "--samples", "1", "--sample-tokens", "4", "--no-prompting",
                 "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["task"] == "continuation" and rep["settings"]["sampling"]["samples"] == 1
    base, top = rep["methods"]["base"][0], rep["methods"]["dso"][-1]
    for kind in cues.CUE_KINDS:
        assert f"unambiguous_accuracy_cue_{kind}_anti_hi" in top, kind
    assert top["n_sampled"] == len(gendered_rate.texts()) and "gendered_rate_change_se" in top
    assert np.isfinite(base["gendered_rate"]) and "gendered_rate_change" not in base
    met = rep["targets"]["dso"]["met"]
    assert set(met) == {"bias_at_most_10pct_of_base", "accuracy_change_ok", "generic_kl_ok",
                        "gendered_rate_not_up", "all_met"}
    (check,) = rep["acceptance"]["dso"]
    assert "gendered_rate_not_up" in check and isinstance(check["acceptable"], bool)


def test_training_pays_for_losing_the_stated_gender_only():
    from tiny_models import tiny_model

    from trainer import dso, rewards
    from trainer.config import DSOConfig
    from trainer.task_registry import load_splits

    cfg = DSOConfig(task="continuation", n_train=200, occupations_per_step=4, resolvable_per_step=4)
    model, tok = tiny_model(), tiny_tokenizer()
    splits = load_splits(cfg.task, "generated", cfg.n_train, cfg.n_eval, cfg.seed, ())
    assert {i.cue_kind for i in splits.train_resolvable} == set(cues.CUE_KINDS), "training sees every kind"
    batch = dso.BatchSampler(splits.train, splits.train_resolvable, tok, cfg).batch(0)
    steering = Steering.zeros(model_identity(model))
    untouched = dso.objective(model, steering, batch, rewards.MajorityTracker(), cfg, 0)
    assert untouched["stated"] == 0.0, "the base model loses nothing against itself"
    res = batch.prompts[batch.num_ambiguous:batch.num_ambiguous + batch.num_resolvable]
    with torch.no_grad():
        last = torch.log_softmax(torch.randn(len(res), 512, generator=torch.Generator().manual_seed(0)), -1)
    drop = dso.stated_drop(last, last, res)
    assert drop == 0.0
    worse = last.clone()
    for row, p in enumerate(res):  # move mass from the stated gender's words to the other's
        worse[row, list(p.options[p.correct])] -= 3.0
    assert dso.stated_drop(worse, last, res) > 0 and dso.stated_drop(last, worse, res) == 0.0


def test_training_pays_for_more_gendered_words_in_any_text_only_when_they_rise():
    from trainer import dso

    base = torch.log_softmax(torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0)), -1)
    mask = torch.ones(2, 5)
    ids = (3, 4, 5)
    assert dso.gendered_excess(base, base, mask, ids) == 0.0
    more = base.clone()
    more[..., list(ids)] += 1.0  # e times the mass on gendered words (before renormalising)
    more = torch.log_softmax(more, -1)
    assert 0.5 < dso.gendered_excess(more, base, mask, ids) < math.e - 1, "the relative rise of the expected count"
    assert dso.gendered_excess(base, more, mask, ids) == 0.0, "fewer gendered words cost nothing"
    one_row = torch.stack([more[0], base[1]])
    fewer_elsewhere = torch.stack([base[0], base[1] - 0.0])
    fewer_elsewhere[1, :, list(ids)] -= 5.0
    mixed = torch.stack([more[0], torch.log_softmax(fewer_elsewhere[1], -1)])
    assert dso.gendered_excess(one_row, base, mask, ids) > 0
    assert dso.gendered_excess(mixed, base, mask, ids) == pytest.approx(
        dso.gendered_excess(one_row, base, mask, ids).item()), "a fall in one text does not pay for a rise in another"


def test_training_descriptions_share_no_wording_with_the_evaluated_ones():
    def wording(template: str) -> set[str]:
        return set(re.findall(r"[a-z]+", template.lower())) - {"a", "an", "o", "of", "the", "to", "be", "is"}

    for train in gendered_rate.TRAIN_DESCRIPTIONS:
        for held_out in gendered_rate.DESCRIPTIONS:
            shared = wording(train) & wording(held_out)
            assert len(shared) <= 1, (train, held_out, shared)
    eval_texts = set(gendered_rate.texts())
    train_texts = {d.format(a="a", o=o) for d in gendered_rate.TRAIN_DESCRIPTIONS for o in ("nurse",)}
    assert not train_texts & eval_texts


def test_training_descriptions_are_continued_by_the_base_model_and_enter_the_batches():
    from tiny_models import tiny_model

    from trainer import dso
    from trainer.config import DSOConfig
    from trainer.task_registry import load_splits

    model, tok = tiny_model(), tiny_tokenizer()
    texts = gendered_rate.training_texts(model, tok, 0, seed=0, max_new_tokens=3)
    assert len(texts) == len(gendered_rate.TRAIN_DESCRIPTIONS) * 40
    prompt = tuple(tok(gendered_rate.TRAIN_DESCRIPTIONS[0].format(a="a", o="carpenter"))["input_ids"])
    assert texts[0][:len(prompt)] == prompt and len(texts[0]) > len(prompt)
    assert texts == gendered_rate.training_texts(model, tok, 0, seed=0, max_new_tokens=3), "seeded"
    cfg = DSOConfig(task="continuation", n_train=200, occupations_per_step=4, description_per_step=3)
    splits = load_splits(cfg.task, "generated", cfg.n_train, cfg.n_eval, cfg.seed, ())
    batch = dso.BatchSampler(splits.train, splits.train_resolvable, tok, cfg, texts).batch(0)
    assert sum(p.ids in set(texts) for p in batch.prompts) == 3 and batch.gendered_ids
