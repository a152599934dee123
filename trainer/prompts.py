"""A prompt whose answer is read from the next-token distribution, and scoring batches of them.

Every task asks this way: coreference (`trainer.coreference`), continuation (`trainer.continuation`),
MMLU (`trainer.mmlu`) and the generic texts of the KL term (`trainer.generic`). A prompt ends where the
answer starts; one forward pass gives, at that position, each option's probability and the rest:

    P(option k) = sum of the probabilities of the tokens that start option k
    P(other)    = 1 − sum_k P(option k)

P(other) is the mass on anything else (a refusal, another word): it is reported as `other_rate`, never
renormalised away.
"""

from dataclasses import dataclass
from typing import Literal

import torch

# Which half of a task an item is in: ambiguous items measure the bias (no right answer), resolvable ones
# the capability an adapter must keep (the text decides the answer).
Kind = Literal["ambiguous", "resolvable"]


@dataclass(frozen=True)
class Prompt:
    """A tokenised prompt whose answer is read from the next-token distribution after `ids`.

    Attributes:
        ids: prompt tokens, the prefilled answer start included.
        options: per answer, in the order the prompt lists them, the tokens that start it (one for a
            coreference or MMLU answer; every he/she-word for a continuation's gender).
        labels: per option, "pro"/"anti" (coreference, continuation) or "A".."D" (MMLU).
        correct: index into options of the right answer; None for ambiguous prompts.
        occupation: the example's grouping occupation ("" for MMLU).
        index: which example this prompt asks (prompts of both option orders share it).
        tag: a label the metrics break results down by (continuation: the cue kind of a stated gender).
    """

    ids: tuple[int, ...]
    options: tuple[tuple[int, ...], ...]
    labels: tuple[str, ...]
    correct: int | None
    occupation: str
    index: int
    tag: str = ""


def render(tokenizer, user: str, prefix: str) -> list[int]:
    """Chat template when the tokenizer has one (instruction models), plain text otherwise."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True)
        return tokenizer(text + prefix, add_special_tokens=False)["input_ids"]
    return tokenizer(f"{user}\n{prefix}", add_special_tokens=True)["input_ids"]


def first_token(tokenizer, word: str) -> int:
    """The token that starts `word` when it follows the prompt (a leading space, as in running text)."""
    return tokenizer(" " + word, add_special_tokens=False)["input_ids"][0]


def collate(prompts: list[Prompt], pad_id: int,
            device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Left-padded batch, so the answer position is the last one in every row; positions skip padding.
    On `device` (a model's: `trainer.placement.input_device`)."""
    width = max(len(p.ids) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p.ids):] = torch.tensor(p.ids)
        mask[row, width - len(p.ids):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {k: t.to(device) for k, t in (("input_ids", ids), ("attention_mask", mask), ("position_ids", positions))}


def answer_logprobs(model, prompts: list[Prompt], pad_id: int, all_positions: bool = False):
    """Log-softmax at the answer position, (B, V); with all_positions also every position's, (B, T, V).
    On the model's output device; no KV cache is kept (one forward pass per batch)."""
    from trainer.placement import input_device

    batch = collate(prompts, pad_id, input_device(model))
    logits = model(**batch, logits_to_keep=0 if all_positions else 1, use_cache=False).logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    return (logp[:, -1], logp, batch["attention_mask"]) if all_positions else logp[:, -1]


def option_probs(logp: torch.Tensor, prompts: list[Prompt]) -> torch.Tensor:
    """(B, K + 1): each option's probability in listed order, then P(other) = 1 − their sum."""
    p = torch.stack([torch.stack([logp[row, list(tokens)].exp().sum() for tokens in prompt.options])
                     for row, prompt in enumerate(prompts)])
    return torch.cat([p, (1 - p.sum(-1, keepdim=True)).clamp(min=0)], dim=-1)
