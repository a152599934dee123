"""Direct Steering Optimization: train the affine adapter h' = h + ω·(a ⊙ h + b) by RL at ω = 1.

    fairsteer train --method dso --task continuation --model smollm2-135m-instruct --out A.safetensors
    fairsteer train --method dso --model M --data ../shared/data/synthbias --out A.safetensors  (coreference)

One step (rollout -> reward -> loss -> step):
  1. batch: `occupations_per_step` occupations (cycled through all, so batches are occupation-balanced),
     one ambiguous item each (coreference: asked in both option orders); `resolvable_per_step` resolvable
     items; `generic_per_step` generic texts (`trainer.generic`); continuation: `description_per_step`
     occupation descriptions with the base model's continuations (`trainer.gendered_rate.training_texts`).
  2. rollout: one forward pass of the policy (base model + adapter at ω = 1) and one of the base model
     (no gradient). The answer distribution is read at the answer position.
  3. reward: the paper's majority-flip reward (`trainer.rewards`) on the answer's stereotype status.
     Coreference: over (pro, anti, other), other scored −1. Continuation: over (pro, anti) given that the
     next word is gendered (most next words are not, and that is no refusal). Estimator "exact" (default)
     takes the exact expectation over the answers: the same objective as sampling, with no sampling
     variance. Estimator "sample" draws one answer per item and uses REINFORCE with a per-occupation
     running-mean baseline, the variance reducer.
  4. loss = −E[r] + kl_coef · KL_text + answer_kl_coef · KL_answer + stated_coef · stated
            + gendered_coef · gendered + order_coef · order + l1_coef · l1
     KL_text: KL(policy || base) per token over every position of the generic texts and every prompt
     position except the answers (keeps general next-token behaviour).
     KL_answer: at the answers of resolvable items (keeps answers the text decides) and, for continuation,
     the KL between the policy's and the base model's P(next word is gendered) on the ambiguous items.
     stated (continuation): mean over resolvable items of max(0, log P_base(stated | gendered) −
     log P_policy(stated | gendered)): only a loss of faithfulness to the stated gender costs; the items
     carry every cue kind of the training side (`trainer.cues`), so it is learnt beyond one phrasing.
     gendered (continuation): Σ_r max(0, G_r − G_base_r) / Σ_r G_base_r, G_r = Σ_t P_policy(gendered
     word at t) over the KL_text positions of row r (the words of `trainer.gendered_rate`): the expected
     number of gendered words in text that calls for none must not rise in any text (sampled text
     measures it: `trainer.gendered_rate`). The texts include `description_per_step` neutral occupation
     descriptions continued by the base model (`gendered_rate.training_texts`), where the model writes
     freely about an occupation.
     order (coreference): mean over examples of |P(pro | one option order) − P(pro | the other)|, the
     answers renormalised to the two people: a model that answers by position pays 1.
     l1 = mean|a| + mean|b|. This is our reading of the paper's "KL bound": fixed-multiplier (Lagrangian)
     penalties.
  5. Adam on (a, b) only; cosine learning-rate decay to 10%.
`step` is one such step on a `trainer.checkpoint.TrainState`; `trainer.session.train` runs them as a run
(placement, time budget, checkpoints, log, progress bar, Ctrl-C) and returns the adapter. Everything here
runs on the model's devices; the adapter and Adam stay fp32 whatever the model's dtype.
Degenerate optima the penalties are there for: the "indifferent" solution (every answer 50/50, resolvable
ones included; KL_answer) and, in coreference, answering by position (order); `fairsteer eval` checks
both at every strength (report.json "acceptance").
"""

import math
import random
import time
from dataclasses import dataclass

import torch

from trainer import gendered_rate, generic, metrics, rewards, task_registry
from trainer.checkpoint import TrainState
from trainer.config import DSOConfig, TaskName
from trainer.prompts import Prompt, answer_logprobs, option_probs


@dataclass
class Batch:
    prompts: list[Prompt]   # ambiguous prompts first, then resolvable ones, then texts (generic, descriptions)
    num_ambiguous: int
    num_resolvable: int = 0
    gendered_ids: tuple[int, ...] = ()  # the words of the gendered-word term (continuation)


class BatchSampler:
    """Occupation-balanced batches: occupations in a seeded cyclic order, each with its own cycled queue."""

    def __init__(self, train: list, resolvable: list, tokenizer, cfg: DSOConfig,
                 descriptions: list[tuple[int, ...]] = ()) -> None:
        self.cfg = cfg
        self.by_occ: dict[str, list[list[Prompt]]] = {}
        for group in _groups(tokenizer, train, cfg.task):
            self.by_occ.setdefault(group[0].occupation, []).append(group)
        self.occupations = sorted(self.by_occ)
        self.resolvable = _groups(tokenizer, resolvable, cfg.task)
        self.generic = generic.prompts(tokenizer, "train")
        self.descriptions = [Prompt(ids, (), (), None, "", i) for i, ids in enumerate(descriptions)]
        self.gendered_ids = gendered_rate.token_ids(tokenizer) if cfg.task == "continuation" else ()

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
        for group in rng.sample(self.resolvable, min(self.cfg.resolvable_per_step, len(self.resolvable))):
            prompts.extend(group)
        n_res = len(prompts) - n_amb
        prompts += rng.sample(self.generic, min(self.cfg.generic_per_step, len(self.generic)))
        prompts += rng.sample(self.descriptions, min(self.cfg.description_per_step, len(self.descriptions)))
        return Batch(prompts, n_amb, n_res, self.gendered_ids)

    def largest(self, start: int, count: int = 64) -> tuple[int, int]:
        """(most rows, longest prompt) over the batches of steps start .. start + count: the shape that the
        memory estimate (`trainer.memory`) is made for."""
        batches = [self.batch(s).prompts for s in range(start, start + count)]
        return max(len(b) for b in batches), max(len(p.ids) for b in batches for p in b)


def _groups(tokenizer, items: list, task_name: TaskName) -> list[list[Prompt]]:
    """The prompts of each item: coreference, the pair of option orders; continuation, the one prompt."""
    groups: dict[int, list[Prompt]] = {}
    for p in task_registry.prompts(tokenizer, task_name, items):
        groups.setdefault(p.index, []).append(p)
    return list(groups.values())


def order_gap(status: torch.Tensor, prompts: list[Prompt]) -> torch.Tensor:
    """Mean over examples asked in two orders of |P(pro | order 1) − P(pro | order 2)|, each renormalised
    to the two answers; `status` (B, 3) as (pro, anti, other), the two orders of an example adjacent."""
    pro = status[:, 0] / (status[:, 0] + status[:, 1]).clamp(min=1e-12)
    pairs = [i for i in range(len(prompts) - 1) if prompts[i].index == prompts[i + 1].index]
    if not pairs:
        return torch.zeros((), device=status.device)
    idx = torch.tensor(pairs, device=status.device)
    return (pro[idx] - pro[idx + 1]).abs().mean()


def _bernoulli_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    p, q = p.clamp(1e-6, 1 - 1e-6), q.clamp(1e-6, 1 - 1e-6)
    return (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).mean()


def objective(model, steering, batch: Batch, tracker: rewards.MajorityTracker, cfg: DSOConfig, pad_id: int,
              generator: torch.Generator | None = None, update_majority: bool = True,
              backward: bool = False) -> dict:
    """The loss of one batch and its parts. With update_majority False the majority is read, not moved
    (used to compare the objective before and after training on a fixed batch). With backward True the
    loss is backpropagated while the adapter is still attached, as activation checkpointing needs (its
    backward pass recomputes the steered layers)."""
    from adapters.hf import attach

    with torch.no_grad():
        base_last, base_logp, _ = answer_logprobs(model, batch.prompts, pad_id, all_positions=True)
    with attach(model, steering, 1.0):
        last, logp, mask = answer_logprobs(model, batch.prompts, pad_id, all_positions=True)
        out = _loss(steering, batch, tracker, cfg, generator, update_majority, base_last, base_logp, last,
                    logp, mask.to(logp.device))
        if backward:
            out["loss"].backward()
    return out


def _loss(steering, batch: Batch, tracker, cfg: DSOConfig, generator, update_majority: bool, base_last,
          base_logp, last, logp, mask) -> dict:
    """The DSO loss from the two passes' log-probs: last (B, V), logp (B, T, V), mask (B, T)."""
    n_amb, n_opt = batch.num_ambiguous, batch.num_ambiguous + batch.num_resolvable
    text_mask = mask.float().clone()
    text_mask[:n_opt, -1] = 0  # answer positions are handled below; generic texts count whole
    kl_text = generic.kl_per_token(logp, base_logp, text_mask)
    answer_mask = torch.zeros_like(text_mask)
    answer_mask[n_amb:n_opt, -1] = 1  # resolvable answers only: changing ambiguous ones is the goal
    kl_answer = (generic.kl_per_token(logp, base_logp, answer_mask) if batch.num_resolvable
                 else torch.zeros((), device=logp.device))

    stated = (stated_drop(last[n_amb:n_opt], base_last[n_amb:n_opt], batch.prompts[n_amb:n_opt])
              if cfg.task == "continuation" and batch.num_resolvable else torch.zeros((), device=logp.device))
    amb = batch.prompts[:n_amb]
    gendered = (gendered_excess(logp, base_logp, text_mask, batch.gendered_ids)
                if batch.gendered_ids else torch.zeros((), device=logp.device))
    probs = option_probs(last[:n_amb], amb)
    other = probs[:, 2].mean().item()  # continuation: P(next word not gendered), before conditioning
    if cfg.task == "continuation":
        base_probs = option_probs(base_last[:n_amb], amb)
        kl_answer = kl_answer + _bernoulli_kl(1 - probs[:, 2], 1 - base_probs[:, 2])
        probs = metrics.conditional(probs)
    status = rewards.by_status(probs, amb)
    order = order_gap(status, amb) if cfg.task == "coreference" else torch.zeros((), device=status.device)
    occs = [p.occupation for p in amb]
    signs = tracker.update(occs, status) if update_majority else tracker.signs(occs)
    table = tracker.rewards(occs, signs, status.device)
    expected = rewards.expected_reward(status, table)
    if cfg.estimator == "exact":
        pg_loss = -expected.mean()
    else:
        pg_loss, sampled = rewards.sampled_reward_loss(status, table, tracker.baseline_for(occs), generator)
        tracker.update_baseline(occs, sampled)
    l1 = (steering.a.abs().mean() + steering.b.abs().mean()).to(logp.device)  # a split model: another GPU
    penalty = (cfg.kl_coef * kl_text + cfg.answer_kl_coef * kl_answer + cfg.stated_coef * stated
               + cfg.gendered_coef * gendered + cfg.order_coef * order + cfg.l1_coef * l1)
    return {"loss": pg_loss + penalty, "objective": (-expected.mean() + penalty).detach(),
            "reward": expected.mean().item(), "kl": kl_text.item(), "kl_answer": kl_answer.item(),
            "stated": stated.item(), "gendered": gendered.item(), "order": order.item(), "l1": l1.item(),
            "other": other, "batch_bias": rewards.per_occupation_bias(status, occs)}


def stated_drop(last: torch.Tensor, base_last: torch.Tensor, prompts: list[Prompt]) -> torch.Tensor:
    """Mean over resolvable continuation prompts of max(0, log P_base(stated | gendered) − log P(stated |
    gendered)); last, base_last (B, V) log-probs at the answer."""
    rows = torch.arange(len(prompts), device=last.device)
    correct = torch.tensor([p.correct for p in prompts], device=last.device)
    policy = metrics.conditional(option_probs(last, prompts))[rows, correct].clamp(min=1e-9).log()
    base = metrics.conditional(option_probs(base_last, prompts))[rows, correct].clamp(min=1e-9).log()
    return (base.detach() - policy).clamp(min=0).mean()


def gendered_excess(logp: torch.Tensor, base_logp: torch.Tensor, mask: torch.Tensor,
                    ids: tuple[int, ...]) -> torch.Tensor:
    """Σ_r max(0, G_r − G_base_r) / Σ_r G_base_r, with G_r the expected count of the words `ids` over the
    positions of row r where mask is 1; logp, base_logp (B, T, V), mask (B, T)."""
    index = torch.tensor(ids, device=logp.device)
    steered = (logp[..., index].exp().sum(-1) * mask).sum(-1)
    base = (base_logp[..., index].exp().sum(-1) * mask).sum(-1).detach()
    return (steered - base).clamp(min=0).sum() / base.sum().clamp(min=1e-12)


def lr_at(step: int, cfg: DSOConfig) -> float:
    """Cosine decay from lr to lr/10 over cfg.steps."""
    frac = min(step / max(cfg.steps, 1), 1.0)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def step(model, state: TrainState, sampler: BatchSampler, cfg: DSOConfig, pad_id: int) -> dict:
    """One optimiser step at `state.step` (rollout -> reward -> loss -> step); advances `state.step`.
    Returns the loss parts, the learning rate and the batch's size (rows, padded tokens)."""
    lr = lr_at(state.step, cfg)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    batch = sampler.batch(state.step)
    state.optimizer.zero_grad(set_to_none=True)
    out = objective(model, state.steering, batch, state.tracker, cfg, pad_id, state.generator, backward=True)
    state.optimizer.step()
    state.step += 1
    rows, length = len(batch.prompts), max(len(p.ids) for p in batch.prompts)
    return {**out, "lr": lr, "rows": rows, "tokens": rows * length}


def train_steps(model, steering, sampler: BatchSampler, tracker, optimizer, cfg: DSOConfig, pad_id: int,
                start: int, on_step=None, deadline: float | None = None) -> int:
    """Run optimiser steps from `start` to cfg.steps (or the deadline); returns the next step index."""
    state = TrainState(steering, optimizer, tracker, torch.Generator().manual_seed(cfg.seed), start)
    while state.step < cfg.steps and not (deadline is not None and time.monotonic() > deadline):
        out = step(model, state, sampler, cfg, pad_id)
        if on_step:
            on_step(state.step, out)
    return state.step
