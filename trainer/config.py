"""Training settings: one dataclass, flags generated from it, optional YAML (`--config FILE`).

Precedence: dataclass default < YAML file < explicit command-line flag. The resolved settings are written
into the adapter's metadata (`training`), so an adapter file says how it was made. A setting that cannot be
used raises `trainer.errors.ConfigError`. Light to import (no torch): the command line builds its flags
from here.
"""

import argparse
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from trainer.errors import ConfigError

# The task (its data, prompts and metrics: `trainer.task_registry`) and the reward estimator (`trainer.dso`).
TaskName = Literal["coreference", "continuation"]
Estimator = Literal["exact", "sample"]
TASKS: tuple[TaskName, ...] = get_args(TaskName)
ESTIMATORS: tuple[Estimator, ...] = get_args(Estimator)
# Where the frozen model runs and in which dtype (`trainer.placement`); the adapter and its optimiser stay fp32.
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES: tuple[DtypeName, ...] = get_args(DtypeName)
DEVICE_HELP = ("'auto' (CUDA if visible, else CPU), 'cpu', 'cuda' (one GPU, or the visible GPUs together when the "
               "model does not fit on one) or 'cuda:N' (GPU N)")
DTYPE_HELP = "'auto' (bfloat16 on a GPU that has it, else float32), 'float32', 'bfloat16' or 'float16'"


RENAMED = {"checkpoint_every": "save_every"}  # old setting name -> its name now


def device_problem(device: str) -> str | None:
    """Why `device` is not a device setting (None when it is one); shared by train's and eval's flags."""
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        return None
    return f"--device {device!r}: use {DEVICE_HELP}"


@dataclass
class DSOConfig:
    """DSO and baseline settings.

    Data: which prompts, how many, which split.
    Objective: reward estimator, KL and l1 weights.
    Optimisation: steps, batch composition, learning rate, time budget, checkpoints, seed.
    Hardware: device, dtype, activation checkpointing, CPU threads. The adapter and its optimiser are fp32
    on every device and dtype; bfloat16/float16 round only the frozen model's weights and activations.
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
    stated_coef: float = field(default=5.0, metadata={
        "help": "continuation: weight of the drop of log P(stated gender | gendered word) below the base "
                "model's on resolvable prompts (keeps the model faithful to a gender the text states)"})
    gendered_coef: float = field(default=1.0, metadata={
        "help": "continuation: weight of the rise of the expected number of gendered next words over the "
                "batch's text positions (log of steered / base, when above 0), against an adapter that makes "
                "the model talk about gender more"})
    order_coef: float = field(default=1.0, metadata={
        "help": "coreference: weight of the mean |P(pro) in one option order − P(pro) in the other|, "
                "against answering by position"})
    generic_per_step: int = field(default=4, metadata={
        "help": "generic texts (trainer/generic.py, training half) per batch, in the KL term"})
    description_per_step: int = field(default=4, metadata={
        "help": "continuation: neutral occupation descriptions continued by the base model "
                "(trainer/gendered_rate.py, training wordings) per batch, in the KL and gendered-word terms"})
    l1_coef: float = field(default=0.01, metadata={"help": "weight of mean |a| + mean |b|"})
    # --- optimisation
    steps: int = field(default=200, metadata={"help": "optimiser steps (the time budget may stop earlier)"})
    occupations_per_step: int = field(default=8, metadata={
        "help": "occupations per batch, one ambiguous prompt each, asked in both option orders"})
    resolvable_per_step: int = field(default=2, metadata={
        "help": "resolvable prompts per batch, used only in the KL and stated-gender terms (keeps answers the "
                "text decides)"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (cosine decay to 10%)"})
    sites: str = field(default="all", metadata={"help": "'all', 'layers' (no final norm) or a comma list"})
    time_budget_min: float = field(default=28.0, metadata={"help": "stop training after this many minutes"})
    save_every: int = field(default=10, metadata={
        "help": "steps between checkpoints (OUT.ckpt/, or the --resume folder); one is also written at the "
                "end, at the time budget and on Ctrl-C"})
    seed: int = field(default=0, metadata={"help": "seed for splits, batch order and sampling"})
    # --- hardware
    device: str = field(default="auto", metadata={"help": DEVICE_HELP})
    dtype: DtypeName = field(default="auto", metadata={"help": "the frozen model's dtype: " + DTYPE_HELP})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute each decoder layer's activations in the backward pass: activation memory falls "
                "from every layer's to one layer's, a step costs about one more forward pass; turned on by "
                "itself on a GPU where a step would not fit otherwise"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"estimator must be 'exact' or 'sample', got {self.estimator!r}")
        if self.other_reward >= 0:
            raise ConfigError(f"other_reward {self.other_reward} would reward refusals; use a value < 0")
        for name in ("n_train", "n_eval", "steps", "occupations_per_step", "save_every", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("kl_coef", "answer_kl_coef", "stated_coef", "gendered_coef", "order_coef", "l1_coef", "lr", "time_budget_min",
                     "generic_per_step", "description_per_step", "resolvable_per_step"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0 <= self.majority_momentum < 1:
            raise ConfigError(f"majority_momentum must be in [0, 1), got {self.majority_momentum}")
        if device_problem(self.device):
            raise ConfigError(device_problem(self.device))
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    def holdout(self) -> tuple[str, ...]:
        return tuple(o.strip() for o in self.holdout_occupations.split(",") if o.strip())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def add_flags(parser: argparse.ArgumentParser, cls=DSOConfig) -> None:
    """One `--flag` per dataclass field, default None so that only flags given explicitly override YAML;
    a boolean field gets `--flag` / `--no-flag`."""
    for f in fields(cls):
        default = f.default if f.default is not MISSING else None
        text = f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%")  # argparse formats help
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, type=type(default), default=None, help=text)


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
    for old, new in RENAMED.items():
        if old in values and new in known:
            raise ConfigError(f"--config {path}: {old!r} is now called {new!r}; rename the key")
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"--config {path}: unknown setting(s) {unknown}; known: {sorted(known)}")
    return values
