"""`server.audit_report`'s cluster bootstrap on synthetic outputs (no server): when the chats of one occupation
agree with each other, drawing occupations gives a wider interval than drawing chats one by one, and about
the same one when they do not."""

import numpy as np

from server import audit_report
from server.audit_report import Output

OCCUPATIONS, CHATS_PER_OCCUPATION = 40, 9


def _female_share_width(female: np.ndarray, clusters: list) -> float:
    """Width of the 95% interval of the pooled female share, chats weighted by `bootstrap_weights`."""
    weights = audit_report.bootstrap_weights(clusters, seed=0)
    interval = audit_report.interval(weights @ female / weights.sum(1))
    return interval["hi"] - interval["lo"]


def _chats(correlated: bool) -> tuple[np.ndarray, list[int]]:
    """1 = a chat that uses female words. Correlated: each occupation has its own share (0.1 or 0.9);
    otherwise every chat is female with probability 0.5."""
    rng = np.random.default_rng(1)
    share = rng.choice([0.1, 0.9], OCCUPATIONS) if correlated else np.full(OCCUPATIONS, 0.5)
    occupation = np.repeat(np.arange(OCCUPATIONS), CHATS_PER_OCCUPATION)
    return (rng.random(len(occupation)) < share[occupation]).astype(float), occupation.tolist()


def test_cluster_interval_is_wider_than_the_per_chat_one_when_an_occupations_chats_agree():
    female, occupation = _chats(correlated=True)
    by_chat = _female_share_width(female, list(range(len(female))))
    by_occupation = _female_share_width(female, occupation)
    # Design effect 1 + (m - 1) * ICC with m = 9, ICC = 0.64: the width should grow by about sqrt(6.1) = 2.5.
    assert by_occupation > 1.8 * by_chat, (by_occupation, by_chat)


def test_cluster_interval_matches_the_per_chat_one_when_chats_are_independent():
    female, occupation = _chats(correlated=False)
    by_chat = _female_share_width(female, list(range(len(female))))
    by_occupation = _female_share_width(female, occupation)
    assert 0.75 < by_occupation / by_chat < 1.33, (by_occupation, by_chat)


def test_bootstrap_weights_draw_whole_clusters():
    weights = audit_report.bootstrap_weights(["a", "a", "b", "c", "c", "c"], seed=3)
    assert (weights[0] == 1).all(), "row 0 is the estimate: every unit once"
    assert (weights[1:, 0] == weights[1:, 1]).all() and (weights[1:, 3] == weights[1:, 5]).all()
    assert (weights[1:, [0, 2, 3]].sum(1) == 3).all(), "each draw takes as many clusters as there are"


def test_audit_gap_interval_draws_occupations():
    """The audit's occupation gap on chats whose occupations each say one gender, whatever their BLS
    majority: drawing prompts within each occupation never changes the figure (every draw keeps all
    occupations with the same shares); drawing occupations does."""
    from adapters.occupations import OCCUPATIONS as NAMES
    from server import lexicons

    rng = np.random.default_rng(0)
    says_female = rng.random(len(NAMES)) < 0.5
    outputs = [Output(0.0, "chat", 3 * k + p, 0, name, "she said" if says_female[k] else "he said")
               for k, name in enumerate(NAMES) for p in range(3)]
    (cell,) = audit_report.summarize(outputs, lexicons.load())
    gap = cell["occupation_gap"]
    assert gap["hi"] - gap["lo"] > 0.3, f"occupations drawn with replacement must move the gap: {gap}"
    share = cell["rates"]["female_share"]
    assert share["lo"] < share["value"] < share["hi"]
