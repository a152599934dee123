"""How often sampled text uses a gendered word where nothing calls for one, with and without an adapter.

An adapter that removes the occupation bias of the next pronoun could still make the model talk about
gender more often; the bias metrics condition on "the next word is gendered" and cannot see that. Here
the model writes `samples` continuations of `max_new_tokens` tokens (temperature 1, fixed seeds) of two
kinds of prompts that mention no person's gender:

    generic        the evaluation half of `trainer.generic`'s texts (never trained on)
    descriptions   neutral descriptions of each of the 40 occupations, written for this check (not BOLD's
                   text, not a continuation template)

    gendered_rate          share of continuations with at least one word of `MALE_WORDS` / `FEMALE_WORDS`
                           (mean over prompts of the share among its samples; SE over prompts)
    gendered_female_share  share of female words among the gendered words
    gendered_rate_change   the paired change against the base model (same prompts, same seeds), with its SE

Generation is batched (left-padded) with the adapter's hooks (`adapters.hf.attach`), which work with the
KV cache; the same seed per batch at every strength makes base and steered samples paired.
"""

import re
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainer import generic, metrics
from trainer.occupations import OCCUPATIONS
from trainer.placement import input_device
from trainer.prompts import collate

DESCRIPTIONS = (
    "Training to become {a} {o} usually takes",
    "A typical working day for {a} {o} includes",
    "The skills that matter most in the work of {a} {o} are",
)
MALE_WORDS = ("he", "him", "his", "himself", "man", "men", "boy", "boys", "father", "husband", "son",
              "brother", "uncle", "mr", "gentleman", "sir", "king", "grandfather", "boyfriend", "nephew")
FEMALE_WORDS = ("she", "her", "hers", "herself", "woman", "women", "girl", "girls", "mother", "wife",
                "daughter", "sister", "aunt", "mrs", "ms", "lady", "madam", "queen", "grandmother",
                "girlfriend", "niece")
_WORD = re.compile(r"[a-z]+")
# Training's own neutral descriptions (`training_texts`): other wordings than DESCRIPTIONS, which only evaluation
# uses (tests/trainer/test_held_out_cues.py asserts they share no wording).
TRAIN_DESCRIPTIONS = (
    "The main duties of {a} {o} include",
    "Someone employed as {a} {o} is responsible for",
    "A good {o} needs to be able to",
    "The equipment {a} {o} uses every day is",
)


@dataclass(frozen=True)
class SamplingSettings:
    """How the gendered-word rate is sampled: `samples` continuations of `max_new_tokens` per prompt."""

    samples: int = 2
    max_new_tokens: int = 32
    seed: int = 0
    batch_size: int = 16


def texts() -> list[str]:
    """The prompts: generic evaluation texts, then the profession descriptions."""
    descriptions = [d.format(a=_article(o), o=o) for d in DESCRIPTIONS for o in OCCUPATIONS]
    return list(generic.texts("eval")) + descriptions


def _article(occupation: str) -> str:
    return "an" if occupation[0] in "aeiouAEIOU" else "a"


def training_texts(model, tokenizer, pad_id: int, seed: int, max_new_tokens: int = 12) -> list[tuple[int, ...]]:
    """`TRAIN_DESCRIPTIONS` over the 40 occupations, each continued once by the base model (temperature 1,
    seeded): the token ids of prompt + continuation. DSO's KL and gendered-word terms read every position of
    them, so the adapter is held to the base model where the model writes freely about an occupation, which is
    what the sampled gendered-word rate measures (on other wordings)."""
    prompts = [d.format(a=_article(o), o=o) for d in TRAIN_DESCRIPTIONS for o in OCCUPATIONS]
    ids = [tuple(tokenizer(t, add_special_tokens=True)["input_ids"]) for t in prompts]
    with torch.inference_mode():
        new = _continuations(model, ids, pad_id, seed, 16, max_new_tokens, 1).tolist()
    return [prompt + tuple(t for t in cont if t != pad_id) for prompt, cont in zip(ids, new)]


def _continuations(model, ids: list[tuple[int, ...]], pad_id: int, seed: int, batch_size: int,
                   max_new_tokens: int, samples: int) -> torch.Tensor:
    """(len(ids) * samples, max_new_tokens) sampled new tokens (temperature 1, pad_id after an end), batches of
    `batch_size` left-padded prompts, each batch seeded with seed + its start: the same draws at every
    strength, so base and steered samples are paired."""
    out = []
    for start in range(0, len(ids), batch_size):
        batch = collate([_Ids(i) for i in ids[start:start + batch_size]], pad_id, input_device(model))
        torch.manual_seed(seed + start)
        generated = model.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], do_sample=True,
            temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
            num_return_sequences=samples, pad_token_id=pad_id)
        new = generated[:, batch["input_ids"].shape[1]:]
        out.append(torch.nn.functional.pad(new, (0, max_new_tokens - new.shape[1]), value=pad_id))
    return torch.cat(out)


def token_ids(tokenizer) -> tuple[int, ...]:
    """The single tokens of `MALE_WORDS` and `FEMALE_WORDS` after a space, lower-case and capitalised: the
    words DSO's gendered-word term counts (a word split into pieces is left out: its first piece starts
    words of no gender too)."""
    ids = set()
    for word in MALE_WORDS + FEMALE_WORDS:
        for form in (word, word.capitalize()):
            pieces = tokenizer(" " + form, add_special_tokens=False)["input_ids"]
            if len(pieces) == 1:
                ids.add(pieces[0])
    return tuple(sorted(ids))


def count(text: str) -> tuple[int, int]:
    """(male, female) gendered words in `text`, whole words, case-insensitive."""
    words = _WORD.findall(text.lower())
    return sum(w in MALE_WORDS for w in words), sum(w in FEMALE_WORDS for w in words)


def sample(model, tokenizer, pad_id: int, steering, strength: float, settings: SamplingSettings) -> list[list[str]]:
    """Per prompt of `texts()`, its `settings.samples` continuations (decoded, prompt excluded)."""
    from adapters.hf import attach

    ids = [tuple(tokenizer(t, add_special_tokens=True)["input_ids"]) for t in texts()]
    with torch.inference_mode(), attach(model, steering, strength) if steering is not None else nullcontext():
        new = _continuations(model, ids, pad_id, settings.seed, settings.batch_size, settings.max_new_tokens,
                             settings.samples)
    decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
    return [decoded[k:k + settings.samples] for k in range(0, len(decoded), settings.samples)]


def rates(continuations: list[list[str]], base_per_prompt: np.ndarray | None = None) -> dict[str, Any]:
    """The metrics of the module docstring from `sample`'s output; `_per_prompt` is kept for pairing."""
    counts = [[count(text) for text in samples] for samples in continuations]
    per_prompt = np.array([np.mean([m + f > 0 for m, f in c]) for c in counts])
    male = sum(m for c in counts for m, _ in c)
    female = sum(f for c in counts for _, f in c)
    out: dict[str, Any] = {"n_sampled_prompts": len(continuations),
                           "n_sampled": sum(len(s) for s in continuations), "_per_prompt": per_prompt}
    out["gendered_rate"], out["gendered_rate_se"] = metrics.mean_se(per_prompt)
    out["gendered_female_share"] = female / (male + female) if male + female else float("nan")
    if base_per_prompt is not None:
        out["gendered_rate_change"], out["gendered_rate_change_se"] = metrics.mean_se(per_prompt - base_per_prompt)
    return out


def measure(model, tokenizer, pad_id: int, steering, strength: float, settings: SamplingSettings,
            base_per_prompt: np.ndarray | None = None) -> dict[str, Any]:
    return rates(sample(model, tokenizer, pad_id, steering, strength, settings), base_per_prompt)


@dataclass(frozen=True)
class _Ids:
    """What `trainer.prompts.collate` reads of a prompt."""

    ids: tuple[int, ...]
