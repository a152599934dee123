"""Fairness and capability of a model, with or without an adapter, at several steering strengths.

    fairsteer eval --model M --adapter A.safetensors --strengths 0,0.5,1 --out DIR    (cli/eval.py)

`evaluate_all` scores the held-out items of a task (`trainer.task_registry`) once for the base model, for
each adapter at each strength > 0, and once behind a debiasing instruction (the prompting-only reference
row); the metrics are those of `trainer.metrics`, plus what needs the model itself:

    kl_to_base            mean over items of KL(P_steered || P_base) at the answer position
    generic_kl            KL(P_steered || P_base) per token of generic text (`trainer.generic`)
    mmlu_*                `trainer.metrics.mmlu_metrics`, when MMLU questions are given
    gendered_rate*        continuation: how often sampled text that calls for no gendered word uses one
                          (`trainer.gendered_rate`), when sampling settings are given
"""

from contextlib import nullcontext

import numpy as np
import torch

from trainer import gendered_rate, generic, metrics, mmlu, task_registry
from trainer.config import TaskName
from trainer.prompts import Prompt, answer_logprobs, collate, option_probs


def score(model, prompts: list[Prompt], pad_id: int, steering=None, strength: float = 0.0,
          batch_size: int = 16, base_logp: torch.Tensor | None = None):
    """(probs (N, K+1), answer log-probs (N, V) or None, KL to base (N,) or None) for `prompts`; the
    log-probs on the model's output device, the rest on the CPU."""
    from adapters.hf import attach

    probs, logps, kls = [], [], []
    ctx = attach(model, steering, strength) if steering is not None and strength != 0 else nullcontext()
    with torch.inference_mode(), ctx:
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            logp = answer_logprobs(model, chunk, pad_id)
            probs.append(option_probs(logp, chunk).cpu())
            if base_logp is None:
                logps.append(logp)
            else:
                base = base_logp[i:i + batch_size].to(logp.device)
                kls.append(generic.kl(logp, base).clamp(min=0).cpu())
    return (torch.cat(probs), torch.cat(logps) if logps else None, torch.cat(kls) if kls else None)


def generic_kl(model, prompts: list[Prompt], pad_id: int, steering, strength: float,
               batch_size: int = 8) -> tuple[float, float]:
    """KL(steered || base) per token of generic text: mean over texts of their per-token mean, and its SE."""
    from adapters.hf import attach
    from trainer.placement import input_device

    per_text = []
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            batch = collate(chunk, pad_id, input_device(model))
            base = torch.log_softmax(model(**batch, use_cache=False).logits.float(), -1)
            with attach(model, steering, strength):
                steered = torch.log_softmax(model(**batch, use_cache=False).logits.float(), -1)
            mask = batch["attention_mask"].float().to(base.device)
            per_pos = generic.kl(steered, base).clamp(min=0) * mask
            per_text += (per_pos.sum(-1) / mask.sum(-1)).tolist()
    return metrics.mean_se(np.array(per_text))


def evaluate_all(model, tokenizer, pad_id: int, ambiguous, resolvable, mmlu_questions, adapters: dict,
                 strengths: list[float], prompting: bool = True, batch_size: int = 16, log=print,
                 mmlu_strengths: list[float] | None = None, task_name: TaskName = "coreference",
                 sampling: gendered_rate.SamplingSettings | None = None) -> dict:
    """Rows of metrics: the base model, each adapter at each strength > 0, and the prompting reference.

    Args:
        ambiguous, resolvable: evaluation items (held out from training) of `task_name`.
        mmlu_questions: `trainer.mmlu.Question`s, or an empty list to skip MMLU.
        adapters: method label -> `adapters.hf.Steering`.
        mmlu_strengths: the strengths at which MMLU is measured (None: all); its prompts are long.
        sampling: how to sample the gendered-word rate (None: not measured).
    """
    task = task_registry.REGISTRY[task_name]
    amb, res = (task.prompts(tokenizer, items) for items in (ambiguous, resolvable))
    mm = mmlu.prompts(tokenizer, mmlu_questions) if mmlu_questions else []
    generic_prompts = generic.prompts(tokenizer, "eval")
    base_mmlu: dict[str, np.ndarray] = {}  # the base model's per-question hits, for paired changes
    base_gendered: dict[str, np.ndarray] = {}  # the base model's per-prompt gendered-word rates

    def measure(label: str, strength: float, steering=None, base_logp=None, prompts=None, n_amb=None,
                mm_prompts=mm, sample=True):
        prompts, n_amb = (amb + res, len(amb)) if prompts is None else (prompts, n_amb)
        with_mmlu = bool(mm_prompts) and (mmlu_strengths is None or strength in mmlu_strengths)
        log(f"eval {label} strength {strength}: {len(prompts)} {task_name} + "
            f"{len(mm_prompts) if with_mmlu else 0} MMLU prompts")
        probs, logp, kl = score(model, prompts, pad_id, steering, strength, batch_size, base_logp)
        row = {"method": label, "strength": strength}
        row.update(task.metrics(probs[:n_amb], prompts[:n_amb], "ambiguous"))
        row.update(task.metrics(probs[n_amb:], prompts[n_amb:], "resolvable"))
        row["kl_to_base"], row["kl_to_base_se"] = (0.0, 0.0) if kl is None else metrics.mean_se(kl.numpy())
        row["generic_kl"], row["generic_kl_se"] = (0.0, 0.0) if steering is None else generic_kl(
            model, generic_prompts, pad_id, steering, strength)
        if with_mmlu:
            mm_probs = score(model, mm_prompts, pad_id, steering, strength, batch_size)[0]
            row.update(metrics.mmlu_metrics(mm_probs, mm_prompts, base_mmlu.get("hits")))
            hits = row.pop("_mmlu_hits")
            if label == "base":
                base_mmlu["hits"] = hits
        if sampling is not None and sample:
            log(f"eval {label} strength {strength}: sampling {sampling.samples} x {sampling.max_new_tokens} "
                "tokens per text for the gendered-word rate")
            row.update(gendered_rate.measure(model, tokenizer, pad_id, steering, strength, sampling,
                                             base_gendered.get("per_prompt")))
            per_prompt = row.pop("_per_prompt")
            if label == "base":
                base_gendered["per_prompt"] = per_prompt
        return row, logp

    base_row, base_logp = measure("base", 0.0)
    rows = [base_row]
    for label, steering in adapters.items():
        rows.append({**base_row, "method": label})
        for s in strengths:
            if s != 0:
                rows.append(measure(label, s, steering, base_logp)[0])
    if prompting:
        hinted_amb, hinted_res = (task.prompts(tokenizer, items, instruction=task.instruction)
                                  for items in (ambiguous, resolvable))
        rows.append(measure("prompting", 0.0, base_logp=base_logp, prompts=hinted_amb + hinted_res,
                            n_amb=len(hinted_amb), mm_prompts=[], sample=False)[0])
    return {"rows": rows, "strengths": strengths, "task": task_name}
