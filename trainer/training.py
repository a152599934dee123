"""Train an adapter by any method: the one table from method name to its training function.

    fairsteer train --method dso|caa|mean-diff --model M --out FILE      (cli/train.py)

The names are `adapters.methods.TrainedMethod`, what the adapter file records. Every method returns a
`SteeringSpec` in the one adapter format, so the server never learns which method made it.
"""

from collections.abc import Callable
from dataclasses import replace
from functools import partial

from adapters.hf import model_identity
from adapters.methods import TRAINED_METHODS, TrainedMethod
from adapters.sites import all_sites, parse_site
from adapters.spec import SteeringSpec
from trainer import baselines, session
from trainer.config import DSOConfig
from trainer.errors import ConfigError
from trainer.run import Run

# (model, tokenizer, pad_id, splits, cfg, sites, run) -> the trained adapter
TrainFn = Callable[..., SteeringSpec]

TRAINERS: dict[TrainedMethod, TrainFn] = {
    "dso": session.train,
    "caa": partial(baselines.train, "caa", baselines.caa_vectors),
    "mean_diff": partial(baselines.train, "mean_diff", baselines.mean_diff_vectors),
}
assert tuple(TRAINERS) == TRAINED_METHODS, "every method in adapters.methods.TrainedMethod needs a trainer"


def train(method: TrainedMethod, model, tokenizer, pad_id: int, splits, cfg: DSOConfig,
          run: Run) -> SteeringSpec:
    """The adapter `method` trains on `splits` at the sites `cfg.sites` names, carrying the base model's
    license notice (every method's adapter is a derivative of the model)."""
    sites = sites_for(cfg, model_identity(model).num_layers)
    spec = TRAINERS[method](model, tokenizer, pad_id, splits, cfg, sites, run)
    return replace(spec, meta=replace(spec.meta, license_notice=run.license_notice))


def sites_for(cfg: DSOConfig, num_layers: int) -> tuple[str, ...]:
    """The site names `cfg.sites` stands for: "all", "layers" (no final norm) or a comma-separated list."""
    if cfg.sites in ("all", "layers"):
        return all_sites(num_layers, include_final=cfg.sites == "all")
    sites = tuple(s.strip() for s in cfg.sites.split(",") if s.strip())
    try:
        for s in sites:
            parse_site(s)
    except ValueError as exc:
        raise ConfigError(f"--sites: {exc}") from None
    return sites
