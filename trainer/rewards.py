"""The DSO reward (paper, Sec. 3) and its exact expectation over the answers of a forced choice.

For an ambiguous prompt of occupation o, an answer is "pro" or "anti" (stereotype status) or "other":

    r(answer) = −1   if the answer's status equals the current majority status for o
              = +1   if it is the minority status
              = other_reward (−1 by default) for "other", so a refusal is never better than the majority

Theorem 1 of the paper: with occupation-balanced data, maximising E[r] minimises Per-Occupation Bias
(mean over o of |P(pro) − P(anti)|). The current majority for o is the sign of a running estimate of
P(pro) − P(anti): a mix of the previous estimate (weight `momentum`) and this batch's (detached).

Expected reward of one prompt, exactly, from the three answer probabilities q:
    E[r] = q_pro · r_pro + q_anti · r_anti + q_other · r_other
"""

import torch

from trainer.prompts import Prompt


def by_status(probs: torch.Tensor, prompts: list[Prompt]) -> torch.Tensor:
    """(B, 3) option probabilities in listed order + other -> (B, 3) as (pro, anti, other)."""
    pro_col = torch.tensor([p.labels.index("pro") for p in prompts], device=probs.device)
    rows = torch.arange(len(prompts), device=probs.device)
    return torch.stack([probs[rows, pro_col], probs[rows, 1 - pro_col], probs[:, -1]], dim=-1)


class MajorityTracker:
    """Per-occupation running estimate of P(pro) − P(anti), and the reward table it implies."""

    def __init__(self, momentum: float = 0.5, other_reward: float = -1.0) -> None:
        self.momentum = momentum
        self.other_reward = other_reward
        self.gap: dict[str, float] = {}
        self.baseline: dict[str, float] = {}  # per-occupation running mean reward (sample estimator)

    def update(self, occupations: list[str], status_probs: torch.Tensor) -> dict[str, int]:
        """Fold this batch's per-occupation gaps into the estimate; returns each occupation's majority
        sign (+1: pro is the majority, −1: anti)."""
        gaps = (status_probs[:, 0] - status_probs[:, 1]).detach()
        signs = {}
        for occ in sorted(set(occupations)):
            batch_gap = gaps[[i for i, o in enumerate(occupations) if o == occ]].mean().item()
            prev = self.gap.get(occ)
            est = batch_gap if prev is None else self.momentum * prev + (1 - self.momentum) * batch_gap
            self.gap[occ] = est
            signs[occ] = 1 if est >= 0 else -1
        return signs

    def rewards(self, occupations: list[str], signs: dict[str, int],
                device: torch.device | str = "cpu") -> torch.Tensor:
        """(B, 3) rewards of (pro, anti, other) for each prompt."""
        maj = torch.tensor([float(signs[o]) for o in occupations], device=device)
        return torch.stack([-maj, maj, torch.full_like(maj, self.other_reward)], dim=-1)

    def bias(self) -> float:
        """The running estimate of Per-Occupation Bias: mean over the occupations seen of |estimate|."""
        return sum(abs(g) for g in self.gap.values()) / max(len(self.gap), 1)

    def signs(self, occupations: list[str]) -> dict[str, int]:
        """The current majority signs, without folding in a batch."""
        return {o: (1 if self.gap.get(o, 0.0) >= 0 else -1) for o in occupations}

    def baseline_for(self, occupations: list[str]) -> torch.Tensor:
        return torch.tensor([self.baseline.get(o, 0.0) for o in occupations])

    def update_baseline(self, occupations: list[str], sampled: torch.Tensor, decay: float = 0.9) -> None:
        for occ in set(occupations):
            r = sampled[[i for i, o in enumerate(occupations) if o == occ]].mean().item()
            self.baseline[occ] = decay * self.baseline.get(occ, r) + (1 - decay) * r

    def state_dict(self) -> dict:
        return {"gap": dict(self.gap), "baseline": dict(self.baseline)}

    def load_state_dict(self, state: dict) -> None:
        self.gap = dict(state["gap"])
        self.baseline = dict(state.get("baseline", {}))


def expected_reward(status_probs: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """(B,) exact E[r] per prompt; differentiable in the probabilities."""
    return (status_probs * rewards).sum(-1)


def sampled_reward_loss(status_probs: torch.Tensor, rewards: torch.Tensor, baseline: torch.Tensor,
                        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE with a baseline: (loss, sampled rewards on the CPU). loss = −mean((r − b) · log q(answer)).

    The answers are drawn on the CPU with `generator` (a CPU generator), so a run draws the same answers
    on every device and a resumed run continues the same sequence."""
    q = status_probs.detach().clamp(min=1e-12).cpu()
    answers = torch.multinomial(q / q.sum(-1, keepdim=True), 1, generator=generator).squeeze(-1)
    rows = torch.arange(len(answers))
    r = rewards.cpu()[rows, answers]
    dev = status_probs.device
    logq = status_probs[rows.to(dev), answers.to(dev)].clamp(min=1e-12).log()
    return -((r - baseline.cpu()).to(dev) * logq).mean(), r


def per_occupation_bias(status_probs: torch.Tensor, occupations: list[str]) -> float:
    """Mean over occupations of |mean P(pro) − mean P(anti)| (training-batch monitor)."""
    gaps = (status_probs[:, 0] - status_probs[:, 1]).detach()
    per = [gaps[[i for i, o in enumerate(occupations) if o == occ]].mean().abs().item()
           for occ in sorted(set(occupations))]
    return sum(per) / len(per)
