"""Direct Steering Optimization: train the affine adapter h' = h + ω·(a ⊙ h + b) by RL at ω = 1.

    fairsteer train --method dso --model smollm2-135m-instruct --data ../shared/data/synthbias --out A.safetensors

One step (rollout -> reward -> loss -> step):
  1. batch: `occupations_per_step` occupations (cycled through all, so batches are occupation-balanced),
     one ambiguous prompt each, asked in both option orders; plus `resolvable_per_step` resolvable prompts.
  2. rollout: one forward pass of the policy (base model + adapter at ω = 1) and one of the base model
     (no gradient). The answer distribution is read at the answer position (`trainer.task`).
  3. reward: the paper's majority-flip reward (`trainer.rewards`). Estimator "exact" (default) takes the
     exact expectation over the three answers (pro / anti / other): the same objective as sampling, with
     no sampling variance. Estimator "sample" draws one answer per prompt and uses REINFORCE with a
     per-occupation running-mean baseline, the variance reducer.
  4. loss = −E[r] + kl_coef · KL_text + answer_kl_coef · KL_answer + l1_coef · (mean|a| + mean|b|).
     KL_text: KL(policy || base) averaged over every prompt position except the answer positions (keeps
     general next-token behaviour). KL_answer: the same at the answer position of the resolvable prompts
     only (keeps unambiguous answers); the ambiguous answers are left free, changing them is the goal.
     This is our reading of the paper's "KL bound": fixed-multiplier (Lagrangian) penalties. A first
     version averaged the answer KL into KL_text, where it weighed ~1/500 and the adapter collapsed every
     answer, resolvable ones included, to 50/50 (bias 0.005, but KL 2.0 nats at answers).
  5. Adam on (a, b) only; cosine learning-rate decay to 10%.
Beware the degenerate "indifferent" optimum (every prompt at P(pro) = P(anti)): the reward is indifferent
to it, so the KL on resolvable answers is what keeps the adapter from flattening all answers; check
unambiguous accuracy at every strength (`fairsteer eval`).
"""

import math
import random
import time
from dataclasses import dataclass

import torch

from trainer import rewards, task
from trainer.config import DSOConfig
from trainer.data import Example


@dataclass
class Batch:
    prompts: list[task.Prompt]   # ambiguous prompts first, then resolvable ones
    num_ambiguous: int


class BatchSampler:
    """Occupation-balanced batches: occupations in a seeded cyclic order, each with its own cycled queue."""

    def __init__(self, train: list[Example], resolvable: list[Example], tokenizer, cfg: DSOConfig) -> None:
        self.rng = random.Random(cfg.seed)
        self.cfg = cfg
        self.by_occ: dict[str, list[list[task.Prompt]]] = {}
        for group in _prompt_pairs(tokenizer, train):
            self.by_occ.setdefault(group[0].occupation, []).append(group)
        self.occupations = sorted(self.by_occ)
        self.resolvable = _prompt_pairs(tokenizer, resolvable)
        self.step = 0

    def batch(self, step: int) -> Batch:
        """Deterministic in (seed, step), so a resumed run sees the same batches."""
        rng = random.Random(f"{self.cfg.seed}|{step}")
        k = min(self.cfg.occupations_per_step, len(self.occupations))
        start = (step * k) % len(self.occupations)
        order = random.Random(f"{self.cfg.seed}|epoch{step * k // len(self.occupations)}").sample(
            self.occupations, len(self.occupations))
        chosen = [order[(start + i) % len(order)] for i in range(k)]
        prompts = [p for occ in chosen for p in rng.choice(self.by_occ[occ])]
        n_amb = len(prompts)
        if self.resolvable and self.cfg.resolvable_per_step:
            for pair in rng.sample(self.resolvable, min(self.cfg.resolvable_per_step, len(self.resolvable))):
                prompts.extend(pair)
        return Batch(prompts, n_amb)


def _prompt_pairs(tokenizer, examples: list[Example]) -> list[list[task.Prompt]]:
    prompts = task.coref_prompts(tokenizer, examples, both_orders=True)
    return [prompts[i:i + 2] for i in range(0, len(prompts), 2)]


def kl_to_base(logp: torch.Tensor, base_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over positions where mask is 1 of KL(p || p_base); logp, base_logp (B, T, V), mask (B, T)."""
    per_pos = (logp.exp() * (logp - base_logp)).sum(-1)  # (B, T)
    return (per_pos * mask).sum() / mask.sum().clamp(min=1)


def objective(model, steering, batch: Batch, tracker: rewards.MajorityTracker, cfg: DSOConfig, pad_id: int,
              generator: torch.Generator | None = None, update_majority: bool = True) -> dict:
    """The loss of one batch and its parts. With update_majority False the majority is read, not moved
    (used to compare the objective before and after training on a fixed batch)."""
    from adapters.hf import attach

    with torch.no_grad():
        _, base_logp, _ = task.answer_logprobs(model, batch.prompts, pad_id, all_positions=True)
    with attach(model, steering, 1.0):
        last, logp, mask = task.answer_logprobs(model, batch.prompts, pad_id, all_positions=True)
    text_mask = mask.float().clone()
    text_mask[:, -1] = 0  # answer positions are handled below
    kl_text = kl_to_base(logp, base_logp, text_mask)
    answer_mask = torch.zeros_like(text_mask)
    answer_mask[batch.num_ambiguous:, -1] = 1  # resolvable answers only: changing ambiguous ones is the goal
    kl_answer = kl_to_base(logp, base_logp, answer_mask) if batch.num_ambiguous < len(batch.prompts) \
        else torch.zeros(())

    amb = batch.prompts[: batch.num_ambiguous]
    status = rewards.by_status(task.option_probs(last[: batch.num_ambiguous], amb), amb)
    occs = [p.occupation for p in amb]
    if update_majority:
        signs = tracker.update(occs, status)
    else:
        signs = tracker.signs(occs)
    table = tracker.rewards(occs, signs)
    expected = rewards.expected_reward(status, table)
    if cfg.estimator == "exact":
        pg_loss = -expected.mean()
    else:
        pg_loss, sampled = rewards.sampled_reward_loss(status, table, tracker.baseline_for(occs), generator)
        tracker.update_baseline(occs, sampled)
    l1 = steering.a.abs().mean() + steering.b.abs().mean()
    penalty = cfg.kl_coef * kl_text + cfg.answer_kl_coef * kl_answer + cfg.l1_coef * l1
    return {"loss": pg_loss + penalty, "objective": (-expected.mean() + penalty).detach(),
            "reward": expected.mean().item(), "kl": kl_text.item(), "kl_answer": kl_answer.item(),
            "l1": l1.item(),
            "other": status[:, 2].mean().item(), "batch_bias": rewards.per_occupation_bias(status, occs)}


def lr_at(step: int, cfg: DSOConfig) -> float:
    """Cosine decay from lr to lr/10 over cfg.steps."""
    frac = min(step / max(cfg.steps, 1), 1.0)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def train_steps(model, steering, sampler: BatchSampler, tracker, optimizer, cfg: DSOConfig, pad_id: int,
                start: int, on_step=None, deadline: float | None = None) -> int:
    """Run optimiser steps from `start` to cfg.steps (or the deadline); returns the next step index."""
    generator = torch.Generator().manual_seed(cfg.seed)
    step = start
    while step < cfg.steps:
        if deadline is not None and time.monotonic() > deadline:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        out = objective(model, steering, sampler.batch(step), tracker, cfg, pad_id, generator)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        step += 1
        if on_step:
            on_step(step, out)
    return step
