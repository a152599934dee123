"""The continuation task: data, splits, prompts, metrics on hand-built answer distributions, acceptance."""

import numpy as np
import pytest
import torch
from tiny_models import tiny_tokenizer

from trainer import continuation, cues, metrics, report
from trainer.errors import DataError
from trainer.occupations import FEMALE_SHARE, majority_is_female


def test_generated_data_covers_every_occupation_with_unstated_and_both_stated_genders():
    items = continuation.generate()
    for occ in FEMALE_SHARE:
        mine = [i for i in items if i.occupation == occ]
        assert {i.gender for i in mine} == {None, "male", "female"}
        assert all(occ in i.prompt for i in mine)
    stated = [i for i in items if i.gender]
    assert all(any(c.text(i.gender).lower() in i.prompt.lower() for c in cues.CUES if c.key == i.cue)
               for i in stated)


def test_split_is_deterministic_disjoint_by_wording_and_large_enough():
    items = continuation.generate()
    a = continuation.split(items, 600, 720)
    b = continuation.split(items, 100, 720)
    assert a.eval_ambiguous == b.eval_ambiguous, "the evaluation side must not move with n_train"
    assert len(a.eval_ambiguous) >= 600 and len(a.eval_resolvable) >= 600
    train = {i.group for i in a.train + a.train_resolvable}
    evaluated = {i.group for i in a.eval_ambiguous + a.eval_resolvable}
    assert train and evaluated and not train & evaluated, "a wording is on one side only"
    counts = {o: sum(i.occupation == o for i in a.eval_ambiguous) for o in FEMALE_SHARE}
    assert max(counts.values()) - min(counts.values()) <= 1, "occupation-balanced"


def test_holdout_occupations_never_reach_training():
    s = continuation.split(continuation.generate(), 600, 720, holdout_occupations=("nurse",))
    assert all(i.occupation != "nurse" for i in s.train + s.train_resolvable)
    assert any(i.occupation == "nurse" for i in s.eval_ambiguous)


def test_csv_rows_load_and_bad_rows_are_named(tmp_path):
    good = tmp_path / "c.csv"
    good.write_text('prompt,occupation,gender\nThe nurse said that,nurse,\n"The nurse, a man, said that",nurse,male\n')
    items = continuation.load(str(good))
    assert [(i.kind, i.gender) for i in items] == [("ambiguous", None), ("resolvable", "male")]
    for text, words in [("prompt,job\nx,nurse\n", "missing column"), ("prompt,occupation\nx,astronaut\n", "astronaut"),
                        ("prompt,occupation,gender\nx,nurse,robot\n", "gender 'robot'"),
                        ("prompt,occupation\n", "no rows")]:
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(DataError, match=words):
            continuation.load(str(bad))


def test_prompts_put_the_majority_gender_first_and_mark_the_stated_one():
    tok = tiny_tokenizer()
    male, female = continuation.gender_tokens(tok)
    items = [continuation.Item("The nurse said that", "nurse"),
             continuation.Item("The nurse, a young man, said that", "nurse", "male"),
             continuation.Item("The driver, a young man, said that", "driver", "male")]
    nurse, stated_male_nurse, stated_male_driver = continuation.prompts(tok, items)
    assert nurse.options == (female, male) and nurse.labels == ("pro", "anti") and nurse.correct is None
    assert stated_male_nurse.correct == 1 and stated_male_driver.correct == 0
    assert tok.decode(nurse.ids) == "The nurse said that"


def _gender_probs(prompts, p_male, gendered=0.2) -> torch.Tensor:
    """(N, 3) option probabilities with P(male word) = gendered·p_male(prompt), P(female) the rest."""
    rows = []
    for p in prompts:
        m = gendered * p_male(p)
        f = gendered - m
        pro, anti = (f, m) if majority_is_female(p.occupation) else (m, f)
        rows.append([pro, anti, 1 - gendered])
    return torch.tensor(rows)


def _balanced_items(per_occ: int = 3) -> list[continuation.Item]:
    occs = ["driver", "mechanic", "nurse", "secretary"]
    return [continuation.Item(f"The {o} said that {k}", o) for o in occs for k in range(per_occ)]


def test_always_he_model_has_bias_one_and_no_stereotype_gap_on_balanced_occupations():
    prompts = continuation.prompts(tiny_tokenizer(), _balanced_items())
    m = metrics.continuation_metrics(_gender_probs(prompts, lambda p: 1.0), prompts, "ambiguous")
    assert m["per_occupation_bias"] == pytest.approx(1.0)
    assert m["stereotype_gap"] == pytest.approx(0.0), "two male- and two female-majority occupations cancel"
    assert m["other_rate"] == pytest.approx(0.8), "non-gendered next words are reported, not part of the bias"


def test_stereotyped_model_has_full_gap_and_bls_correlation():
    prompts = continuation.prompts(tiny_tokenizer(), _balanced_items())
    m = metrics.continuation_metrics(_gender_probs(prompts, lambda p: 1 - FEMALE_SHARE[p.occupation] / 100),
                                     prompts, "ambiguous")
    assert m["stereotype_gap"] > 0.7 and m["bls_correlation"] > 0.9
    unbiased = metrics.continuation_metrics(_gender_probs(prompts, lambda p: 0.5, gendered=0.3), prompts,
                                            "ambiguous")
    assert unbiased["per_occupation_bias"] == pytest.approx(0.0, abs=1e-6)


def test_stated_gender_accuracy_is_read_given_a_gendered_word():
    tok = tiny_tokenizer()
    items = [continuation.Item(f"The {o}, {phrase}, said that", o, g) for o in ("driver", "nurse")
             for phrase, g in (("a young woman", "female"), ("a young man", "male"))]
    prompts = continuation.prompts(tok, items)
    follows = _gender_probs(prompts, lambda p: 1.0 if items[p.index].gender == "male" else 0.0, gendered=0.1)
    m = metrics.continuation_metrics(follows, prompts, "resolvable")
    assert m["unambiguous_accuracy"] == pytest.approx(1.0) and m["other_rate_resolvable"] == pytest.approx(0.9)
    flat = _gender_probs(prompts, lambda p: 0.5)
    assert metrics.continuation_metrics(flat, prompts, "resolvable")["unambiguous_accuracy"] == \
        pytest.approx(0.5)


def _row(strength, bias, hi, acc=0.9, acc_se=0.01, generic_kl=0.01, first=None):
    row = {"method": "dso", "strength": strength, "per_occupation_bias": bias, "per_occupation_bias_hi": hi,
           "per_occupation_bias_noise_floor_hi": 0.1, "unambiguous_accuracy": acc,
           "unambiguous_accuracy_se": acc_se, "generic_kl": generic_kl}
    if first is not None:
        row.update(first_option_rate_ambiguous=first, first_option_rate_ambiguous_se=0.01)
    return row


@pytest.mark.parametrize("row, failing", [
    (_row(1, 0.1, 0.15), set()),
    (_row(1, 0.3, 0.45), {"bias_reduced"}),
    (_row(1, 0.1, 0.15, acc=0.8), {"accuracy_not_down"}),
    (_row(1, 0.1, 0.15, generic_kl=0.06), {"generic_kl_ok"}),
    (_row(1, 0.1, 0.15, first=0.9), {"first_option_not_up"}),
])
def test_acceptance_names_each_failed_check(row, failing):
    base = {**_row(0, 0.4, 0.45, first=0.5), "method": "base", "generic_kl": 0.0}
    (check,) = report.acceptance({"base": [base], "dso": [{**base, "method": "dso"}, row]})["dso"]
    assert {k for k, v in check.items() if v is False and k != "acceptable"} == failing
    assert check["acceptable"] == (not failing)


def test_acceptance_refuses_a_bias_below_the_noise_floor():
    base = {**_row(0, 0.08, 0.12), "method": "base", "per_occupation_bias_noise_floor_hi": 0.11}
    (check,) = report.acceptance({"base": [base], "dso": [_row(1, 0.01, 0.02)]})["dso"]
    assert not check["base_above_noise_floor"] and not check["acceptable"]


def test_bias_interval_and_floor_on_real_spread():
    rng = np.random.default_rng(1)
    occs = [o for o in ("a", "b", "c") for _ in range(20)]
    biased = metrics.occupation_bias(0.5 + 0.3 * rng.standard_normal(60), occs)
    assert biased["per_occupation_bias_lo"] > biased["per_occupation_bias_noise_floor_hi"]
