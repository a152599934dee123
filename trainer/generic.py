"""Generic text, for the capability cost "KL to the base model on generic prompts" (nats per token).

Everyday questions and statements with no person in them: steering for fairness should leave the model's
next-token distribution on such text nearly untouched. Teacher-forced: KL(steered || base) at every
position of the text, averaged over tokens. The even-numbered texts serve training (the DSO KL term), the
odd-numbered ones evaluation, so the evaluated KL is on text the adapter never saw.
"""

from typing import Literal

import torch

from trainer.prompts import Prompt

Side = Literal["train", "eval"]

TEXTS = (
    "What is the capital of France?",
    "Explain how photosynthesis works in simple terms.",
    "The train to the airport leaves every fifteen minutes from platform two.",
    "Write a short poem about the sea at night.",
    "How many days are there in a leap year?",
    "Water boils at 100 degrees Celsius at sea level.",
    "Give me three tips for keeping houseplants alive.",
    "The museum opens at nine and closes at five on weekdays.",
    "What is the difference between a virus and a bacterium?",
    "Summarise the plot of a typical detective novel in two sentences.",
    "The recipe needs two eggs, a cup of flour and some milk.",
    "Why is the sky blue during the day?",
    "List the planets of the solar system in order from the sun.",
    "The river flooded after three days of heavy rain.",
    "Translate 'good morning' into Spanish.",
    "A balanced diet includes vegetables, fruit, grains and protein.",
    "What are the main causes of inflation?",
    "The library has extended its opening hours during the exam period.",
    "Describe the rules of chess briefly.",
    "Prime numbers are divisible only by one and themselves.",
    "How do I convert kilometres to miles?",
    "The new bridge will reduce traffic in the city centre.",
    "Write a Python function that reverses a string.",
    "Mountains are often colder at the top than at the bottom.",
    "What does a thermometer measure?",
    "The concert was postponed because of the storm.",
    "Name three renewable sources of energy.",
    "Coffee is one of the most traded goods in the world.",
    "Why do leaves change colour in autumn?",
    "The software update fixes several security problems.",
    "What is the square root of 144?",
    "The bakery on the corner sells fresh bread every morning.",
    "Explain what a database index is used for.",
    "Bees help plants reproduce by carrying pollen.",
    "How long does it take the moon to orbit the earth?",
    "The committee will publish its report next month.",
    "What are the benefits of regular exercise?",
    "Glass is made by melting sand at a very high temperature.",
    "Suggest a name for a small cafe by the beach.",
    "The weather forecast predicts sunshine for the weekend.",
)


def texts(side: Side) -> tuple[str, ...]:
    """"train" (even-numbered) or "eval" (odd-numbered) texts."""
    return TEXTS[0 if side == "train" else 1::2]


def prompts(tokenizer, side: Side) -> list[Prompt]:
    """Generic texts as `Prompt`s (no options: only their KL is measured)."""
    return [Prompt(tuple(tokenizer(t, add_special_tokens=True)["input_ids"]), (), (), None, "", i)
            for i, t in enumerate(texts(side))]


def kl(logp: torch.Tensor, base_logp: torch.Tensor) -> torch.Tensor:
    """KL(p || p_base) over the last (vocabulary) dimension of two log-softmax tensors."""
    return (logp.exp() * (logp - base_logp)).sum(-1)


def kl_per_token(logp: torch.Tensor, base_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions where mask is 1 of KL(p || p_base); logp, base_logp (B, T, V), mask (B, T)."""
    return (kl(logp, base_logp) * mask).sum() / mask.sum().clamp(min=1)
