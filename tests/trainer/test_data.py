"""Data: loaders, pro/anti labels from the BLS table, deterministic disjoint splits, MMLU subsets."""

import pytest
from shared_data import SHARED, needs_shared_data

from trainer import coreference, data, mmlu, templates
from trainer.errors import ConfigError, DataError
from trainer.occupations import OCCUPATIONS


def test_pro_and_anti_follow_pronoun_gender_and_bls_majority():
    ex = coreference.make_example("The nurse and the driver ate, and she paid.", "she", "driver", "nurse", "ambiguous")
    assert (ex.pro, ex.anti, ex.occupation) == ("nurse", "driver", "driver")
    ex = coreference.make_example("The nurse and the driver ate, and he paid.", "he", "driver", "nurse", "ambiguous")
    assert (ex.pro, ex.anti) == ("driver", "nurse")
    assert coreference.make_example("The nurse met the secretary; she left.", "she", "nurse", "secretary",
                             "ambiguous") is None, "two female-majority occupations give no pro/anti contrast"


def test_generated_data_covers_all_occupations_both_kinds_and_genders():
    examples = templates.generate()
    for kind in ("ambiguous", "resolvable"):
        subset = [e for e in examples if e.kind == kind]
        assert {e.occupation for e in subset} == set(OCCUPATIONS)
        assert {coreference.pronoun_is_female(e.pronoun) for e in subset} == {True, False}
    resolvable = [e for e in examples if e.kind == "resolvable"]
    assert all(e.referent in (e.pro, e.anti) for e in resolvable)
    assert 0.4 < sum(e.referent == e.pro for e in resolvable) / len(resolvable) < 0.6


def test_winobias_line_marks_referent_and_pronoun():
    ex = data.parse_winobias_line("7 [The accountant] and the driver met because [he] had questions.",
                                  "resolvable")
    assert ex.sentence == "The accountant and the driver met because he had questions."
    assert (ex.referent, ex.pro, ex.anti, ex.pronoun) == ("accountant", "driver", "accountant", "he")


def test_splits_are_deterministic_disjoint_and_occupation_balanced():
    examples = data.load("generated")
    first = data.split(examples, n_train=200, n_eval=120, seed=3)
    again = data.split(list(reversed(examples)), n_train=200, n_eval=120, seed=3)
    assert first == again, "the same data and seed must give the same split, whatever the input order"
    train_groups = {e.group for e in first.train + first.train_resolvable}
    eval_groups = {e.group for e in first.eval_ambiguous + first.eval_resolvable}
    assert not train_groups & eval_groups, "no training sentence may appear in evaluation"
    counts = {o: sum(e.occupation == o for e in first.train) for o in OCCUPATIONS}
    assert max(counts.values()) - min(counts.values()) <= 1
    bigger = data.split(examples, n_train=400, n_eval=120, seed=3)
    assert bigger.eval_ambiguous == first.eval_ambiguous, "growing training must not move evaluation prompts"
    assert data.split(examples, 200, 120, seed=4).train != first.train


def test_holdout_occupations_never_reach_training():
    s = data.split(data.load("generated"), 300, 200, holdout_occupations=("nurse", "driver"))
    assert not any({e.pro, e.anti} & {"nurse", "driver"} for e in s.train + s.train_resolvable)
    assert any({e.pro, e.anti} & {"nurse", "driver"} for e in s.eval_ambiguous)
    with pytest.raises(ConfigError, match="unknown occupation"):
        data.split(data.load("generated"), 10, 10, holdout_occupations=("astronaut",))


def test_unknown_data_spec_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="generated"):
        data.load(str(tmp_path))


@needs_shared_data("synthbias")
def test_synthbias_and_its_winobias_copy_load_every_row():
    examples = data.load(str(SHARED / "synthbias"))
    assert len(examples) == 31728
    assert sum(e.kind == "ambiguous" for e in examples) == 14120
    resolvable = [e for e in examples if e.kind == "resolvable"]
    assert all(e.referent in (e.pro, e.anti) for e in resolvable)
    assert len(data.load(f"winobias:{SHARED / 'synthbias'}")) > 30000


def test_mmlu_subset_from_a_folder_is_subject_balanced(tmp_path):
    (tmp_path / "test").mkdir()
    for subject in ("algebra", "history"):
        rows = [f'"{subject} q{i}?",w,x,y,z,{"ABCD"[i % 4]}' for i in range(5)]
        (tmp_path / "test" / f"{subject}_test.csv").write_text("\n".join(rows) + "\n")
    qs = mmlu.load(tmp_path, n=4)
    assert len(qs) == 4 and {q.subject for q in qs} == {"algebra", "history"}
    assert mmlu.load(tmp_path, n=4) == qs
    assert qs[0].answer in "ABCD" and len(qs[0].choices) == 4


@needs_shared_data("mmlu", "mmlu_data.tar.gz")
def test_mmlu_tarball_is_read_in_place():
    qs = mmlu.load(SHARED / "mmlu", n=60)
    assert len(qs) == 60 and len({q.subject for q in qs}) == 57
