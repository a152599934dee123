"""Training settings: one dataclass, flags generated from it, optional YAML (`--config FILE`).

Precedence: dataclass default < YAML file < explicit command-line flag. The resolved settings are written
into the adapter's metadata (`training`), so an adapter file says how it was made. A setting that cannot be
used raises `trainer.errors.ConfigError`. Light to import (no torch): the command line builds its flags
from here.
"""

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from trainer.errors import ConfigError

# The task (its data, prompts and metrics: `trainer.task_registry`) and the reward estimator (`trainer.dso`).
TaskName = Literal["coreference", "continuation"]
Estimator = Literal["exact", "sample"]
TASKS: tuple[TaskName, ...] = get_args(TaskName)
ESTIMATORS: tuple[Estimator, ...] = get_args(Estimator)


@dataclass
class DSOConfig:
    """DSO and baseline settings.

    Data: which prompts, how many, which split.
    Objective: reward estimator, KL and l1 weights.
    Optimisation: steps, batch composition, learning rate, time budget, seed.
    """

    # --- data
    task: TaskName = field(default="coreference", metadata={
        "help": "'coreference' (who does the pronoun refer to; trainer/coreference.py) or 'continuation' "
                "(the gender of the next pronoun after a prompt about one occupation; trainer/continuation.py)"})
    data: str = field(default="generated", metadata={
        "help": "data SPEC: 'generated' (built in, both tasks); coreference: 'synthbias:PATH', "
                "'winobias:PATH' or a path; continuation: a CSV prompt,occupation[,gender]"})
    n_train: int = field(default=600, metadata={"help": "ambiguous training prompts (the paper: 600)"})
    n_eval: int = field(default=600, metadata={"help": "evaluation prompts per kind kept out of training"})
    holdout_occupations: str = field(default="", metadata={
        "help": "comma-separated occupations kept out of training entirely"})
    # --- objective
    estimator: Estimator = field(default="exact", metadata={
        "help": "'exact': expectation over the answers (pro/anti/other) from one forward pass; 'sample': "
                "REINFORCE on a sampled answer with a per-occupation baseline"})
    other_reward: float = field(default=-1.0, metadata={
        "help": "reward of an answer naming neither occupation; -1 so refusals are never rewarded"})
    majority_momentum: float = field(default=0.5, metadata={
        "help": "weight of the running per-occupation estimate when deciding the current majority"})
    kl_coef: float = field(default=1.0, metadata={
        "help": "weight of KL(steered || base) over prompt text positions"})
    answer_kl_coef: float = field(default=1.0, metadata={
        "help": "weight of KL(steered || base) at the answers of resolvable prompts (keeps answers that the "
                "text decides) and, for continuation, of the KL of P(next word is gendered) on ambiguous ones"})
    order_coef: float = field(default=1.0, metadata={
        "help": "coreference: weight of the mean |P(pro) in one option order − P(pro) in the other|, "
                "against answering by position"})
    generic_per_step: int = field(default=4, metadata={
        "help": "generic texts (trainer/generic.py, training half) per batch, in the KL term"})
    l1_coef: float = field(default=0.01, metadata={"help": "weight of mean |a| + mean |b|"})
    # --- optimisation
    steps: int = field(default=200, metadata={"help": "optimiser steps (the time budget may stop earlier)"})
    occupations_per_step: int = field(default=8, metadata={
        "help": "occupations per batch, one ambiguous prompt each, asked in both option orders"})
    resolvable_per_step: int = field(default=2, metadata={
        "help": "resolvable prompts per batch, used only in the KL terms (keeps answers the text decides)"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (cosine decay to 10%)"})
    sites: str = field(default="all", metadata={"help": "'all', 'layers' (no final norm) or a comma list"})
    time_budget_min: float = field(default=28.0, metadata={"help": "stop training after this many minutes"})
    checkpoint_every: int = field(default=10, metadata={"help": "steps between checkpoints (OUT.ckpt)"})
    seed: int = field(default=0, metadata={"help": "seed for splits, batch order and sampling"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"estimator must be 'exact' or 'sample', got {self.estimator!r}")
        if self.other_reward >= 0:
            raise ConfigError(f"other_reward {self.other_reward} would reward refusals; use a value < 0")
        for name in ("n_train", "n_eval", "steps", "occupations_per_step", "checkpoint_every", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("kl_coef", "answer_kl_coef", "order_coef", "l1_coef", "lr", "time_budget_min",
                     "generic_per_step", "resolvable_per_step"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0 <= self.majority_momentum < 1:
            raise ConfigError(f"majority_momentum must be in [0, 1), got {self.majority_momentum}")

    def holdout(self) -> tuple[str, ...]:
        return tuple(o.strip() for o in self.holdout_occupations.split(",") if o.strip())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def add_flags(parser: argparse.ArgumentParser, cls=DSOConfig) -> None:
    """One `--flag` per dataclass field, default None so that only flags given explicitly override YAML."""
    for f in fields(cls):
        default = f.default if f.default is not MISSING else None
        text = f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%")  # argparse formats help
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(default), default=None, help=text)


def from_args(args: argparse.Namespace, cls=DSOConfig) -> DSOConfig:
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(read_yaml(args.config, cls))
    for f in fields(cls):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    return cls(**values)


def read_yaml(path: str | Path, cls=DSOConfig) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML ({exc})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a mapping of setting: value")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"--config {path}: unknown setting(s) {unknown}; known: {sorted(known)}")
    return values
