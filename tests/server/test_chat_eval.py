"""`fairsteer eval --task chat`: the held-out chat prompts, their figures, and a run through the real server.

The end-to-end test starts `fairsteer serve` (through the command, as a user runs it) on the tiny model with
the "mix" adapter from conftest.py, samples every chat prompt once at two strengths, and stops the server.
"""

import json

import pytest

from cli.main import main
from server import chat_eval, lexicons
from server.audit import CHAT_WORDINGS
from server.audit_report import Output
from trainer import continuation
from trainer.cues import CUES


def test_chat_prompts_cover_every_occupation_and_both_stated_genders():
    chats = chat_eval.chat_prompts()
    neutral = [p for p, g in zip(chats.prompts, chats.genders) if g is None]
    stated = [(p, g) for p, g in zip(chats.prompts, chats.genders) if g is not None]
    assert len(neutral) == 120 and len(stated) == 160
    assert all(p.endpoint == "chat" for p in chats.prompts)
    for gender in ("female", "male"):
        assert len({p.occupation for p, g in stated if g == gender}) == 40, "each occupation gets both genders"


def test_chat_cues_and_wordings_are_never_trained_on():
    trained = [t.lower().replace("{o}", "").strip(" ,") for t in continuation.TEMPLATES] + \
        [text.lower() for c in CUES for text in (c.female, c.male)]
    held_out = [person.lower() for pair, _ in chat_eval.STATED for person in pair]
    held_out += [w.lower() for _, w in chat_eval.STATED] + [w.lower() for w in CHAT_WORDINGS]
    clashes = [(h, t) for h in held_out for t in trained if t in h or (len(h) < 30 and h in t)]
    assert not clashes, f"held-out chat text overlaps training text: {clashes}"


def _outputs(texts_by_item: dict[int, str], chats, strength: float) -> list[Output]:
    return [Output(strength, "chat", k, 0, chats.prompts[k].occupation, text) for k, text in texts_by_item.items()]


def test_stated_accuracy_counts_responses_that_keep_the_stated_gender():
    chats = chat_eval.chat_prompts()
    lexicon = lexicons.load()
    words = {"female": "she smiled", "male": "he smiled"}
    other = {"female": "he smiled", "male": "she smiled"}
    neutral = {k: "she said" if k % 2 else "he said" for k, g in enumerate(chats.genders) if g is None}
    kept = {k: words[g] for k, g in enumerate(chats.genders) if g is not None}
    flipped = {k: other[g] for k, g in enumerate(chats.genders) if g is not None}
    rows = chat_eval.summarize(_outputs({**neutral, **kept}, chats, 0.0) + _outputs({**neutral, **flipped}, chats, 1.0),
                               chats, lexicon)
    assert [r["strength"] for r in rows] == [0.0, 1.0]
    assert rows[0]["stated_accuracy"]["value"] == 1.0 and rows[1]["stated_accuracy"]["value"] == 0.0
    assert rows[0]["stated_accuracy_pro"]["value"] == 1.0 and rows[0]["stated_accuracy_anti"]["value"] == 1.0
    assert rows[0]["gendered_rate"]["value"] == 1.0 and rows[0]["female_share"]["value"] == 0.5
    target = chat_eval.targets(rows)[0]
    assert target["stated_accuracy_change"] == -1.0 and not target["met"]["stated_accuracy"]
    assert not target["met"]["all_met"]


def test_target_bands_are_the_targets_bars():
    base = {"occupation_gap": {"value": -0.2}, "female_share": {"value": 0.6}, "stated_accuracy": {"value": 0.8}}
    bands = chat_eval.target_bands(base)
    assert bands["occupation_gap"] == pytest.approx((-0.06, 0.06))
    assert bands["female_share"] == pytest.approx((0.55, 0.65))
    assert bands["stated_accuracy"] == pytest.approx((0.79, 1.0))


@pytest.mark.vllm
def test_chat_eval_runs_through_the_real_server(tiny_llama, mix_adapter, boost_adapter, tmp_path, capsys):
    """Two adapters: strength 0 (the base model whichever adapter a request names) is sampled once and both
    adapters' rows and targets are computed from those chats and their own."""
    status = main(["eval", "--task", "chat", "--model", str(tiny_llama), "--adapter", str(mix_adapter.path),
                   "--adapter", str(boost_adapter.path), "--strengths", "0,1", "--chat-samples", "1",
                   "--chat-max-tokens", "8", "--out", str(tmp_path)])
    assert status == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["adapters"]) == 2
    for result in report["adapters"].values():
        assert [r["strength"] for r in result["rows"]] == [0.0, 1.0]
        for row in result["rows"]:
            assert row["chats"] == 120 and row["stated_chats"] == 160
            for figure in ("occupation_gap", "bls_correlation", "female_share", "stated_accuracy",
                           "stated_accuracy_pro", "stated_accuracy_anti", "gendered_rate"):
                assert set(row[figure]) == {"value", "lo", "hi"}, figure
        assert set(result["targets"][0]["met"]) == {"gap", "female_share", "stated_accuracy", "all_met"}
    first, second = report["adapters"].values()
    assert first["rows"][0] == second["rows"][0], "both adapters share one strength-0 sample"
    lines = [json.loads(x) for x in (tmp_path / "chat-outputs.jsonl").read_text().splitlines()]
    assert sorted((x["adapter"] is None, x["strength"]) for x in lines) == \
        [(False, 1.0)] * 2 * 280 + [(True, 0.0)] * 280, "strength 0 once (adapter null), strength 1 per adapter"
    outputs = {label: [Output(**{k: v for k, v in x.items() if k != "adapter"}) for x in lines
                       if x["adapter"] in (None, label)] for label in report["adapters"]}
    chats, lexicon = chat_eval.chat_prompts(), lexicons.load()
    for label, result in report["adapters"].items():  # what a run with this adapter alone computes
        assert result["rows"] == json.loads(json.dumps(chat_eval.summarize(outputs[label], chats, lexicon))), label
    texts = {a: [x["text"] for x in lines if x["adapter"] == a] for a in (None, *report["adapters"])}
    assert all(texts[a] != texts[None] for a in report["adapters"]), "strength 1 must be served steered"
    assert (tmp_path / "chat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "the plot is a PNG"
    assert "targets" in capsys.readouterr().out
