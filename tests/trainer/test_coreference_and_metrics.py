"""Coreference answer parsing and prompt labels, and the metrics on hand-built answer distributions."""

import math

import numpy as np
import pytest
import torch
from tiny_models import tiny_tokenizer

from trainer import coreference, metrics, rewards
from trainer.prompts import Prompt

EX = coreference.make_example("The driver greeted the nurse and thanked her.", "her", "driver", "nurse",
                       "resolvable", referent="nurse")


@pytest.mark.parametrize("text, expected", [
    ("The nurse.", "pro"), ("It refers to the driver", "anti"), ("the Nurses", "pro"),
    ("I cannot tell from the sentence.", "other"), ("Either the nurse or the driver.", "other"),
    ("", "other"), ("nursery", "other"),
])
def test_parse_answer_maps_free_text_to_pro_anti_or_other(text, expected):
    assert coreference.parse_answer(text, EX) == expected


def _examples(n_per_occ: int = 2) -> list[coreference.Example]:
    """Balanced ambiguous examples over occupations whose first tokens differ under the tiny tokenizer."""
    occs = [("mechanic", "nurse"), ("carpenter", "secretary")]
    out = []
    for male, female in occs:
        for i in range(n_per_occ):
            for pronoun in ("he", "she"):
                out.append(coreference.make_example(f"The {male} met the {female} and {pronoun} smiled {i}.", pronoun,
                                             male, female, "ambiguous"))
    return out


def test_prompts_ask_both_orders_and_label_pro_anti():
    tok = tiny_tokenizer()
    prompts = coreference.prompts(tok, _examples(1))
    assert len(prompts) == 8
    for p, q in zip(prompts[::2], prompts[1::2]):
        assert p.index == q.index and p.labels == ("pro", "anti") and q.labels == ("anti", "pro")
        assert p.options == q.options[::-1]


def _probs(prompts, choose) -> torch.Tensor:
    """(N, 3) probabilities putting all mass on choose(prompt) in {"pro", "anti", "first", "other"}."""
    rows = []
    for p in prompts:
        c = choose(p)
        col = {"first": 0, "other": 2}.get(c, p.labels.index(c) if c in p.labels else None)
        rows.append(torch.nn.functional.one_hot(torch.tensor(col), 3).float())
    return torch.stack(rows)


def test_always_stereotypical_model_has_bias_one_and_positive_gap():
    prompts = coreference.prompts(tiny_tokenizer(), _examples())
    m = metrics.coreference_metrics(_probs(prompts, lambda p: "pro"), prompts, "ambiguous")
    assert m["per_occupation_bias"] == pytest.approx(1.0)
    assert m["stereotype_gap"] == pytest.approx(1.0) and m["stereotype_gap_se"] == pytest.approx(0.0)
    assert m["other_rate"] == 0.0 and m["n_occupations"] == 2


def test_always_anti_model_has_bias_one_and_negative_gap():
    prompts = coreference.prompts(tiny_tokenizer(), _examples())
    m = metrics.coreference_metrics(_probs(prompts, lambda p: "anti"), prompts, "ambiguous")
    assert m["per_occupation_bias"] == pytest.approx(1.0) and m["stereotype_gap"] == pytest.approx(-1.0)


def test_first_position_model_shows_no_gender_bias_but_full_position_bias():
    prompts = coreference.prompts(tiny_tokenizer(), _examples())
    m = metrics.coreference_metrics(_probs(prompts, lambda p: "first"), prompts, "ambiguous")
    assert m["per_occupation_bias"] == pytest.approx(0.0), "both orders must cancel position bias"
    assert m["first_option_rate_ambiguous"] == pytest.approx(1.0)


def test_refusing_model_is_reported_as_other_not_dropped():
    prompts = coreference.prompts(tiny_tokenizer(), _examples())
    m = metrics.coreference_metrics(_probs(prompts, lambda p: "other"), prompts, "ambiguous")
    assert m["other_rate"] == 1.0 and m["per_occupation_bias"] == 0.0


def test_male_answering_model_on_gender_balanced_data():
    """A model that always names the male-majority occupation: pro for 'he', anti for 'she' prompts.
    Per occupation the two cancel: bias 0, while the per-example gaps are +-1 (standard error known)."""
    prompts = coreference.prompts(tiny_tokenizer(), _examples())
    def male(p):
        return "pro" if _pronoun_male(p) else "anti"

    m = metrics.coreference_metrics(_probs(prompts, male), prompts, "ambiguous")
    assert m["per_occupation_bias"] == pytest.approx(0.0)
    n = m["n_ambiguous"]
    assert m["stereotype_gap"] == pytest.approx(0.0)
    assert m["stereotype_gap_se"] == pytest.approx(np.std([1, -1] * (n // 2), ddof=1) / math.sqrt(n))


def _pronoun_male(p) -> bool:
    return not coreference.pronoun_is_female(_examples()[p.index].pronoun)


def test_unambiguous_accuracy_splits_pro_and_anti_referents():
    tok = tiny_tokenizer()
    res = [coreference.make_example(f"The mechanic greeted the nurse and thanked {o}.", o, "mechanic", "nurse",
                             "resolvable", referent="nurse") for o in ("her", "him")]
    prompts = coreference.prompts(tok, res)
    # Always answers "nurse": right on both, pro for "her", anti for "him".
    nurse = torch.stack([torch.tensor([1.0, 0, 0]) if "nurse" in tok.decode([p.options[0][0]]) else
                         torch.tensor([0, 1.0, 0]) for p in prompts])
    m = metrics.coreference_metrics(nurse, prompts, "resolvable")
    assert m["unambiguous_accuracy"] == 1.0
    assert m["unambiguous_accuracy_pro"] == 1.0 and m["unambiguous_accuracy_anti"] == 1.0
    wrong = 1 - nurse
    wrong[:, 2] = 0
    assert metrics.coreference_metrics(wrong, prompts, "resolvable")["unambiguous_accuracy"] == 0.0


def test_bootstrap_interval_is_a_point_for_constant_and_wide_for_noisy_gaps():
    occs = ["a"] * 4 + ["b"] * 4
    constant = metrics.occupation_bias(np.ones(8), occs)
    assert (constant["per_occupation_bias"], constant["per_occupation_bias_se"]) == (1.0, 0.0)
    assert constant["per_occupation_bias_lo"] == constant["per_occupation_bias_hi"] == 1.0
    noisy = metrics.occupation_bias(np.array([1, -1, 1, 1, 0, 0, 1, -1.0]), occs)
    assert noisy["per_occupation_bias"] == pytest.approx((0.5 + 0.0) / 2) and noisy["per_occupation_bias_se"] > 0
    assert noisy["per_occupation_bias_lo"] < 0.25 < noisy["per_occupation_bias_hi"]


def test_noise_floor_is_the_bias_of_random_label_swaps():
    """Gaps of +1 on 4 examples per occupation: with labels swapped at random, |mean of 4 random signs|
    averages E|S| / 4 with S a sum of 4 random signs: (2·4 + 8·2) / 16 / 4 = 0.375."""
    occs = ["a"] * 4 + ["b"] * 4
    m = metrics.occupation_bias(np.ones(8), occs)
    assert m["per_occupation_bias_noise_floor"] == pytest.approx(0.375, abs=0.03)
    assert m["per_occupation_bias"] > m["per_occupation_bias_noise_floor_hi"], "a real bias clears the floor"
    pure_noise = np.tile([1.0, -1.0], 4)  # no preference per occupation at all
    m = metrics.occupation_bias(pure_noise, occs)
    assert m["per_occupation_bias"] == 0.0 and m["per_occupation_bias_noise_floor"] > 0.2


def test_reward_flips_with_the_majority_and_never_rewards_other():
    tracker = rewards.MajorityTracker(momentum=0.0)
    status = torch.tensor([[0.8, 0.2, 0.0], [0.1, 0.6, 0.3]])
    signs = tracker.update(["nurse", "driver"], status)
    assert signs == {"nurse": 1, "driver": -1}
    table = tracker.rewards(["nurse", "driver"], signs)
    assert table.tolist() == [[-1, 1, -1], [1, -1, -1]]
    assert rewards.expected_reward(status, table).tolist() == pytest.approx([-0.6, 0.1 - 0.6 - 0.3])


def test_mmlu_change_is_paired_on_the_same_questions():
    prompts = [Prompt((1,), ((5,), (6,), (7,), (8,)), tuple("ABCD"), k % 4, "", k) for k in range(8)]
    right = torch.nn.functional.one_hot(torch.tensor([p.correct for p in prompts]), 5).float()
    base = metrics.mmlu_metrics(right, prompts)
    assert base["mmlu_accuracy"] == 1.0 and "mmlu_change" not in base
    one_wrong = right.clone()
    one_wrong[0] = torch.tensor([0, 1.0, 0, 0, 0])
    steered = metrics.mmlu_metrics(one_wrong, prompts, base["_mmlu_hits"])
    assert steered["mmlu_change"] == pytest.approx(-1 / 8)
    assert steered["mmlu_change_se"] == pytest.approx(np.std([-1] + [0] * 7, ddof=1) / math.sqrt(8))
