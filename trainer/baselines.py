"""Steering-vector baselines in the DSO adapter format (a = 0, b = v): the server never learns the method.

    caa        Contrastive Activation Addition (Rimsky et al., 2024): each ambiguous training prompt is
               completed with its anti- and with its pro-stereotypical answer token; v is the mean over
               prompts of act(anti) − act(pro) at that answer token. Paired, so the prompt cancels.
    mean_diff  Difference of class means: over resolvable training prompts, the activation at the answer
               position averaged over prompts whose true referent is anti-stereotypical, minus the average
               over those whose referent is pro-stereotypical. Unpaired.
Both at the site(s) of `cfg.sites`; with the default "all", one site, the middle layer's input norm, as
CAA steers one layer (adding a full-size difference at all 61 sites would compound).
Scale: the raw differences are small (SmolLM2 layer 15: |v| = 0.23 for CAA against activations of norm
about 9), so v is rescaled to RELATIVE_NORM times the mean activation norm at its site: ω in [0, 1] then
sweeps from no effect to a push as large as the activation itself, and the evaluation's strengths trace
each baseline's whole trade-off curve. ITI (per-head probing) is not implemented.
"""

import sys
from collections.abc import Callable

import torch

from adapters.methods import TrainedMethod
from adapters.sites import module_path
from trainer import placement, task_registry
from trainer.config import DSOConfig, TaskName
from trainer.errors import DataError
from trainer.prompts import Prompt, collate
from trainer.run import Run

# (model, tokenizer, pad_id, splits, sites, task) -> (raw vector (S, D), mean activation norm (S,))
VectorFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
MAX_EXAMPLES = 160  # one option order each: enough for a stable mean, minutes on one CPU core
RELATIVE_NORM = 1.0


def default_sites(cfg: DSOConfig, sites: tuple[str, ...], num_layers: int) -> tuple[str, ...]:
    return (f"layers.{num_layers // 2}.input_norm",) if cfg.sites == "all" else sites


def site_activations(model, prompts: list[Prompt], pad_id: int, sites: tuple[str, ...],
                     extra_token: list[int] | None = None, batch_size: int = 16) -> torch.Tensor:
    """(N, S, D) outputs of each site's module at the last position (after `extra_token[i]` if given), fp32
    on the CPU whatever the model's device and dtype."""
    arch = model.config.architectures[0]
    captured: dict[int, torch.Tensor] = {}
    hooks = [model.get_submodule(module_path(arch, site)).register_forward_hook(
        lambda m, a, out, k=k: captured.__setitem__(k, out[:, -1].float().cpu()))
        for k, site in enumerate(sites)]
    rows = []
    try:
        with torch.inference_mode():
            for i in range(0, len(prompts), batch_size):
                chunk = prompts[i:i + batch_size]
                if extra_token is not None:
                    chunk = [Prompt(p.ids + (t,), p.options, p.labels, p.correct, p.occupation, p.index)
                             for p, t in zip(chunk, extra_token[i:i + batch_size])]
                model(**collate(chunk, pad_id, placement.input_device(model)), use_cache=False)
                rows.append(torch.stack([captured[k] for k in range(len(sites))], dim=1))
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(rows)


def caa_vectors(model, tokenizer, pad_id, splits, sites,
                task_name: TaskName) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw vector (S, D), mean activation norm (S,)): act(anti answer) − act(pro answer), paired."""
    prompts = task_registry.prompts(tokenizer, task_name, splits.train[:MAX_EXAMPLES], both_orders=False)
    tok = {lab: [p.options[p.labels.index(lab)][0] for p in prompts] for lab in ("pro", "anti")}
    anti = site_activations(model, prompts, pad_id, sites, tok["anti"])
    pro = site_activations(model, prompts, pad_id, sites, tok["pro"])
    return (anti - pro).mean(0), torch.cat([anti, pro]).norm(dim=-1).mean(0)


def mean_diff_vectors(model, tokenizer, pad_id, splits, sites,
                      task_name: TaskName) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw vector (S, D), mean activation norm (S,)): mean act(anti referent) − mean act(pro referent)."""
    prompts = task_registry.prompts(tokenizer, task_name, splits.train_resolvable[:MAX_EXAMPLES],
                                    both_orders=False)
    if not prompts:
        raise DataError("mean-diff needs resolvable training examples; the data has none")
    acts = site_activations(model, prompts, pad_id, sites)
    anti = torch.tensor([p.labels[p.correct] == "anti" for p in prompts])
    if anti.all() or not anti.any():
        raise DataError("mean-diff needs resolvable examples of both referent kinds")
    return acts[anti].mean(0) - acts[~anti].mean(0), acts.norm(dim=-1).mean(0)


def train(method: TrainedMethod, vectors: VectorFn, model, tokenizer, pad_id: int, splits, cfg: DSOConfig,
          sites: tuple[str, ...], run: Run):
    """A SteeringSpec for a baseline: `vectors` gives the raw direction per site, rescaled here."""
    from adapters.hf import model_identity
    from adapters.spec import AdapterMeta, SteeringSpec

    identity = model_identity(model)
    sites = default_sites(cfg, sites, identity.num_layers)
    print(f"{method}: collecting activations at {', '.join(sites)}", file=sys.stderr)
    raw, act_norm = vectors(model, tokenizer, pad_id, splits, sites, cfg.task)  # (S, D), (S,)
    scale = RELATIVE_NORM * act_norm / raw.norm(dim=-1).clamp(min=1e-12)
    b = (raw * scale.unsqueeze(-1)).to(torch.float32).contiguous()
    training = {**cfg.to_dict(), **placement.of(model).describe(), "model": run.base_model,
                "examples": MAX_EXAMPLES,
                "raw_vector_norms": [round(float(n), 4) for n in raw.norm(dim=-1)],
                "activation_norms": [round(float(n), 4) for n in act_norm], "relative_norm": RELATIVE_NORM}
    meta = AdapterMeta(name=run.name, method=method, base_model=run.base_model, identity=identity,
                       training=training)
    return SteeringSpec(tuple(sites), torch.zeros_like(b), b, meta)
