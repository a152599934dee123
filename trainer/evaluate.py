"""Fairness and capability of a model, with or without an adapter, at several steering strengths.

Two tasks share these metrics. Coreference (`trainer.task`): which of two people a pronoun refers to,
every example asked in both option orders and the two averaged. Continuation (`trainer.continuation`):
the gender of the next word after a prompt about one occupation, conditioned on it being gendered.
Every metric is an expectation under the model's answer distribution, read exactly from next-token
probabilities:

    per_occupation_bias   mean over occupations o of |mean_{i in o} (P_i(pro) − P_i(anti))|, ambiguous
                          items; with a 95% interval (`_lo`, `_hi`: ± 1.96 bootstrap SEs) and
    ..._noise_floor       the same metric with each item's pro/anti labels swapped at random (mean and
                          95th percentile of 1000 draws): what a model with no gender preference at all
                          but the same per-item spread would score. Bias below it is not measurable.
    stereotype_gap        mean_i (P_i(pro) − P_i(anti)), ambiguous, signed (> 0: stereotypes win)
    other_rate            mean_i P_i(other): coreference, mass on neither person; continuation, mass on
                          non-gendered next words (not part of the bias, but an adapter should not move it)
    unambiguous_accuracy  mean_i P_i(right answer) on resolvable items (coreference: the syntactic
                          referent; continuation: the stated gender); _pro / _anti: split by whether the
                          right answer is the stereotypical one
    first_option_rate     coreference: mean P(first listed) / (P(first) + P(second)): position bias
    bls_correlation       continuation: Pearson r over occupations between the BLS female share and the
                          mean log P(female)/P(male)
    kl_to_base            mean over items of KL(P_steered || P_base) at the answer position
    generic_kl            KL(P_steered || P_base) per token of generic text (`trainer.generic`)
    mmlu_accuracy         argmax over the letters A-D (the usual MMLU protocol), when MMLU is given;
    mmlu_change           the paired change against the base model on the same questions
Greedy variants (`*_greedy`: the argmax answer instead of the expectation) are reported for coreference.
Standard errors (`*_se`): per-example standard deviation / sqrt(n); for per_occupation_bias the standard
deviation of a stratified bootstrap over examples within occupations.
"""

import math
from contextlib import nullcontext

import numpy as np
import torch

from trainer import generic, rewards, task, tasks

BOOTSTRAP = 1000


def score(model, prompts: list[task.Prompt], pad_id: int, steering=None, strength: float = 0.0,
          batch_size: int = 16, base_logp: torch.Tensor | None = None):
    """(probs (N, K+1), answer log-probs (N, V) or None, KL to base (N,) or None) for `prompts`."""
    from adapters.hf import attach

    probs, logps, kls = [], [], []
    ctx = attach(model, steering, strength) if steering is not None and strength != 0 else nullcontext()
    with torch.inference_mode(), ctx:
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            logp = task.answer_logprobs(model, chunk, pad_id)
            probs.append(task.option_probs(logp, chunk))
            if base_logp is None:
                logps.append(logp)
            else:
                base = base_logp[i:i + batch_size]
                kls.append(generic.kl(logp, base).clamp(min=0))
    return (torch.cat(probs), torch.cat(logps) if logps else None, torch.cat(kls) if kls else None)


def generic_kl(model, prompts: list[task.Prompt], pad_id: int, steering, strength: float,
               batch_size: int = 8) -> tuple[float, float]:
    """KL(steered || base) per token of generic text: mean over texts of their per-token mean, and its SE."""
    from adapters.hf import attach

    per_text = []
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            batch = task.collate(chunk, pad_id)
            base = torch.log_softmax(model(**batch).logits.float(), -1)
            with attach(model, steering, strength):
                steered = torch.log_softmax(model(**batch).logits.float(), -1)
            mask = batch["attention_mask"].float()
            per_pos = generic.kl(steered, base).clamp(min=0) * mask
            per_text += (per_pos.sum(-1) / mask.sum(-1)).tolist()
    return _mean_se(np.array(per_text))


def conditional(probs: torch.Tensor) -> torch.Tensor:
    """(N, 3) -> the same with the two answers renormalised and other set to 0: P(answer | gendered)."""
    both = probs[:, :2].sum(-1, keepdim=True).clamp(min=1e-12)
    return torch.cat([probs[:, :2] / both, torch.zeros_like(probs[:, 2:])], dim=-1)


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    se = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return float(values.mean()), se


def _per_example(values: torch.Tensor, prompts: list[task.Prompt]) -> np.ndarray:
    """Average per-prompt values over the prompts (option orders) of each example, in example order."""
    sums: dict[int, list[float]] = {}
    for v, p in zip(values.tolist(), prompts):
        sums.setdefault(p.index, []).append(v)
    return np.array([sum(v) / len(v) for _, v in sorted(sums.items())])


def _bias(groups: list[np.ndarray]) -> float:
    return float(np.mean([abs(g.mean()) for g in groups]))


def occupation_bias(gaps: np.ndarray, occupations: list[str], seed: int = 0,
                    noise_floor: bool = True) -> dict[str, float]:
    """Per-Occupation Bias of per-example gaps: value, bootstrap SE and 95% interval (resampling examples
    within occupations), and the noise floor (random pro/anti swaps per example: mean, 95th percentile)."""
    groups = [gaps[[i for i, o in enumerate(occupations) if o == occ]] for occ in sorted(set(occupations))]
    rng = np.random.default_rng(seed)
    boot = np.array([_bias([rng.choice(g, len(g)) for g in groups]) for _ in range(BOOTSTRAP)])
    value, se = _bias(groups), float(boot.std(ddof=1))
    # Normal interval from the bootstrap SE: percentiles of the resampled |mean| sit above the estimate
    # (|.| is biased upwards under resampling), often wholly above it with ~15 examples per occupation.
    out = {"per_occupation_bias": value, "per_occupation_bias_se": se,
           "per_occupation_bias_lo": max(value - 1.96 * se, 0.0), "per_occupation_bias_hi": value + 1.96 * se}
    if noise_floor:
        floor = np.array([_bias([g * rng.choice((-1.0, 1.0), len(g)) for g in groups]) for _ in range(BOOTSTRAP)])
        out["per_occupation_bias_noise_floor"] = float(floor.mean())
        out["per_occupation_bias_noise_floor_hi"] = float(np.percentile(floor, 95))
    return out


def coref_metrics(probs: torch.Tensor, prompts: list[task.Prompt], kind: str, task_name: str = "coreference") -> dict:
    """Metrics of one kind ("ambiguous" or "resolvable") from (N, 3) option probabilities."""
    out: dict[str, float] = {}
    if task_name == "continuation":  # the outcome is the gender given that the next word is gendered
        key = "other_rate" if kind == "ambiguous" else "other_rate_resolvable"
        out[key], out[f"{key}_se"] = _mean_se(probs[:, 2].numpy())
        probs = conditional(probs)
    status = rewards.by_status(probs, prompts)  # (N, 3): pro, anti, other
    greedy = torch.nn.functional.one_hot(probs.argmax(-1), 3).float()
    greedy_status = rewards.by_status(greedy, prompts)
    if kind == "ambiguous":
        occs = _occupations(prompts)
        for suffix, st in (("", status), ("_greedy", greedy_status)):
            gaps = _per_example(st[:, 0] - st[:, 1], prompts)
            bias = occupation_bias(gaps, occs, noise_floor=suffix == "")
            out.update({k.replace("per_occupation_bias", f"per_occupation_bias{suffix}"): v for k, v in bias.items()})
            out[f"stereotype_gap{suffix}"], out[f"stereotype_gap{suffix}_se"] = _mean_se(gaps)
        if task_name == "coreference":
            out["other_rate"], out["other_rate_se"] = _mean_se(_per_example(status[:, 2], prompts))
        else:
            out["bls_correlation"] = bls_correlation(status, prompts)
        out["n_ambiguous"], out["n_occupations"] = len({p.index for p in prompts}), len(set(occs))
    else:
        correct = torch.tensor([p.correct for p in prompts])
        rows = torch.arange(len(prompts))
        is_pro = np.array([p.labels[p.correct] == "pro" for p in _first_per_example(prompts)])
        for suffix, pr in (("", probs), ("_greedy", greedy)):
            acc = _per_example(pr[rows, correct], prompts)
            out[f"unambiguous_accuracy{suffix}"], out[f"unambiguous_accuracy{suffix}_se"] = _mean_se(acc)
            for part, sel in (("pro", is_pro), ("anti", ~is_pro)):
                m, se = _mean_se(acc[sel])
                out[f"unambiguous_accuracy{suffix}_{part}"], out[f"unambiguous_accuracy{suffix}_{part}_se"] = m, se
        if task_name == "coreference":
            out["other_rate_resolvable"], out["other_rate_resolvable_se"] = _mean_se(
                _per_example(probs[:, -1], prompts))
        out["n_resolvable"] = len({p.index for p in prompts})
    if task_name == "coreference":
        first = probs[:, 0] / (probs[:, 0] + probs[:, 1]).clamp(min=1e-12)
        out[f"first_option_rate_{kind}"], out[f"first_option_rate_{kind}_se"] = _mean_se(first.numpy())
    return out


def bls_correlation(status: torch.Tensor, prompts: list[task.Prompt]) -> float:
    """Pearson r over occupations: BLS female share vs mean log P(female) / P(male) (continuation)."""
    from trainer.data import FEMALE_SHARE, majority_is_female

    log_odds: dict[str, list[float]] = {}
    for (pro, anti), p in zip(status[:, :2].clamp(min=1e-9).log().tolist(), prompts):
        female_minus_male = pro - anti if majority_is_female(p.occupation) else anti - pro
        log_odds.setdefault(p.occupation, []).append(female_minus_male)
    occs = sorted(log_odds)
    means = [np.mean(log_odds[o]) for o in occs]
    if len(occs) < 3 or np.ptp(means) == 0:  # undefined for a constant
        return float("nan")
    return float(np.corrcoef([FEMALE_SHARE[o] for o in occs], means)[0, 1])


def _first_per_example(prompts: list[task.Prompt]) -> list[task.Prompt]:
    seen: dict[int, task.Prompt] = {}
    for p in prompts:
        seen.setdefault(p.index, p)
    return [seen[k] for k in sorted(seen)]


def _occupations(prompts: list[task.Prompt]) -> list[str]:
    return [p.occupation for p in _first_per_example(prompts)]


def mmlu_metrics(probs: torch.Tensor, prompts: list[task.Prompt], base_hits: np.ndarray | None = None) -> dict:
    """Accuracy (argmax over A-D); with the base model's per-question hits also the paired change, whose
    SE is far smaller than the two accuracies' when most answers do not change."""
    correct = torch.tensor([p.correct for p in prompts])
    hits = (probs[:, :4].argmax(-1) == correct).float().numpy()
    m, se = _mean_se(hits)
    out = {"mmlu_accuracy": m, "mmlu_accuracy_se": se, "n_mmlu": len(prompts), "_mmlu_hits": hits}
    if base_hits is not None:
        out["mmlu_change"], out["mmlu_change_se"] = _mean_se(hits - base_hits)
    return out


def evaluate_all(model, tokenizer, pad_id: int, ambiguous, resolvable, mmlu_questions, adapters: dict,
                 strengths: list[float], prompting: bool = True, batch_size: int = 16, log=print,
                 mmlu_strengths: list[float] | None = None, task_name: str = "coreference") -> dict:
    """Rows of metrics: the base model, each adapter at each strength > 0, and the prompting reference.

    Args:
        ambiguous, resolvable: evaluation items (held out from training) of `task_name`.
        mmlu_questions: `trainer.mmlu.Question`s, or an empty list to skip MMLU.
        adapters: method label -> `adapters.hf.Steering`.
        mmlu_strengths: the strengths at which MMLU is measured (None: all); its prompts are long.
    """
    amb, res = (tasks.prompts(tokenizer, task_name, items) for items in (ambiguous, resolvable))
    mm = task.mmlu_prompts(tokenizer, mmlu_questions) if mmlu_questions else []
    generic_prompts = generic.prompts(tokenizer, "eval")
    base_mmlu: dict[str, np.ndarray] = {}  # the base model's per-question hits, for paired changes

    def measure(label: str, strength: float, steering=None, base_logp=None, prompts=None, n_amb=None,
                mm_prompts=mm):
        prompts, n_amb = (amb + res, len(amb)) if prompts is None else (prompts, n_amb)
        with_mmlu = bool(mm_prompts) and (mmlu_strengths is None or strength in mmlu_strengths)
        log(f"eval {label} strength {strength}: {len(prompts)} {task_name} + "
            f"{len(mm_prompts) if with_mmlu else 0} MMLU prompts")
        probs, logp, kl = score(model, prompts, pad_id, steering, strength, batch_size, base_logp)
        row = {"method": label, "strength": strength}
        row.update(coref_metrics(probs[:n_amb], prompts[:n_amb], "ambiguous", task_name))
        row.update(coref_metrics(probs[n_amb:], prompts[n_amb:], "resolvable", task_name))
        row["kl_to_base"], row["kl_to_base_se"] = (0.0, 0.0) if kl is None else _mean_se(kl.numpy())
        row["generic_kl"], row["generic_kl_se"] = (0.0, 0.0) if steering is None else generic_kl(
            model, generic_prompts, pad_id, steering, strength)
        if with_mmlu:
            row.update(mmlu_metrics(score(model, mm_prompts, pad_id, steering, strength, batch_size)[0],
                                    mm_prompts, base_mmlu.get("hits")))
            hits = row.pop("_mmlu_hits")
            if label == "base":
                base_mmlu["hits"] = hits
        return row, logp

    base_row, base_logp = measure("base", 0.0)
    rows = [base_row]
    for label, steering in adapters.items():
        rows.append({**base_row, "method": label})
        for s in strengths:
            if s != 0:
                rows.append(measure(label, s, steering, base_logp)[0])
    if prompting:
        instruction = task.FAIRNESS_INSTRUCTION if task_name == "coreference" else task.CONTINUATION_INSTRUCTION
        hinted_amb, hinted_res = (tasks.prompts(tokenizer, task_name, items, instruction=instruction)
                                  for items in (ambiguous, resolvable))
        rows.append(measure("prompting", 0.0, base_logp=base_logp, prompts=hinted_amb + hinted_res,
                            n_amb=len(hinted_amb), mm_prompts=[])[0])
    return {"rows": rows, "strengths": strengths, "task": task_name}
