"""DSO checkpoints: everything a run needs to continue bit-for-bit where it stopped.

A checkpoint folder (OUT.ckpt/ by default, or the folder given to `--resume DIR`) holds

    step-00000040.pt   one checkpoint: the step, the adapter's a and b (fp32), Adam's state, the majority
                       tracker's running estimates and baselines, the RNG states (the sampling generator,
                       torch's CPU and CUDA generators, Python's), the last log rows, the settings
    latest             the name of the newest complete checkpoint file

Each file is written under a temporary name and renamed, then `latest` likewise, so a crash at any moment
leaves the previous checkpoint readable; the two newest are kept. Batches are deterministic in (seed, step),
so a resumed run with the same settings computes the same steps as one that was never interrupted. Only
settings in `RESUMABLE_CHANGES` may differ on resume; `steps` may too (the learning-rate schedule then
stretches, so the run is no longer the uninterrupted one), and the model dtype may not.
"""

import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainer.config import DSOConfig
from trainer.errors import ConfigError

# What a step computes does not depend on these (device: same math, other rounding only across CPU/GPU).
RESUMABLE_CHANGES = {"steps", "time_budget_min", "save_every", "threads", "device", "gradient_checkpointing"}
KEEP = 2
LATEST = "latest"


@dataclass
class TrainState:
    """What the optimiser steps change, and what a checkpoint saves and restores.

    Attributes:
        steering: `adapters.hf.Steering` (a, b fp32, on the optimiser's device).
        optimizer: Adam over steering's parameters.
        tracker: `trainer.rewards.MajorityTracker` (running estimates of the majority and reward baselines).
        generator: the CPU generator of the sample estimator's draws.
        step: optimiser steps done.
        recent: the last log rows (the adapter's metadata averages them).
    """

    steering: torch.nn.Module
    optimizer: torch.optim.Optimizer
    tracker: object
    generator: torch.Generator
    step: int = 0
    recent: list[dict] = field(default_factory=list)


def _rng_state(generator: torch.Generator) -> dict:
    return {"generator": generator.get_state(), "torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}


def _set_rng_state(state: dict, generator: torch.Generator) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(directory: Path, cfg: DSOConfig, state: TrainState, dtype: str) -> Path:
    """Write a checkpoint of `state` into `directory` atomically; returns its file."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{state.step:08d}.pt"
    tmp = directory / f".{path.name}.tmp"
    torch.save({"config": cfg.to_dict(), "dtype": dtype, "step": state.step,
                "a": state.steering.a.detach().cpu().clone(), "b": state.steering.b.detach().cpu().clone(),
                "optimizer": state.optimizer.state_dict(), "tracker": state.tracker.state_dict(),
                "rng": _rng_state(state.generator), "recent": list(state.recent)}, tmp)
    tmp.replace(path)
    pointer = directory / f".{LATEST}.tmp"
    pointer.write_text(path.name + "\n")
    pointer.replace(directory / LATEST)
    for old in sorted(directory.glob("step-*.pt"))[:-KEEP]:
        if old != path:
            old.unlink()
    return path


def clear(directory: Path) -> None:
    """Remove the checkpoints of an earlier run (a fresh start must not leave them to be resumed)."""
    if directory.is_file():  # an older fairsteer's single-file checkpoint of this output
        directory.unlink()
    for old in (*directory.glob("step-*.pt"), directory / LATEST):
        old.unlink(missing_ok=True)


def latest(directory: Path) -> Path | None:
    """The newest complete checkpoint file in `directory`, or None."""
    pointer = directory / LATEST
    if pointer.is_file() and (directory / pointer.read_text().strip()).is_file():
        return directory / pointer.read_text().strip()
    files = sorted(directory.glob("step-*.pt"))
    return files[-1] if files else None


def resume(directory: Path, cfg: DSOConfig, state: TrainState, dtype: str) -> None:
    """Load the newest checkpoint in `directory` into `state` (step 0 and a note when there is none).

    Raises:
        ConfigError: the checkpoint was written with settings that change what a step computes, or is
            the single-file checkpoint of an older fairsteer (it has no RNG state).
    """
    if directory.is_file():
        raise ConfigError(f"--resume: {directory} is a checkpoint file of an older fairsteer (no RNG state, "
                          "so it cannot continue bit-for-bit); delete it to start over")
    path = latest(directory) if directory.is_dir() else None
    if path is None:
        print(f"no checkpoint in {directory}; starting from step 0", file=sys.stderr)
        return
    saved = torch.load(path, map_location="cpu", weights_only=True)
    current = cfg.to_dict()
    diff = sorted(k for k in set(saved["config"]) | set(current)
                  if saved["config"].get(k) != current.get(k) and k not in RESUMABLE_CHANGES)
    if saved["dtype"] != dtype:
        diff.append(f"dtype {saved['dtype']} -> {dtype}")
    if diff:
        raise ConfigError(f"--resume: {path} was written with different settings ({diff}); rerun with the "
                          "same settings, or delete the checkpoint folder to start over")
    if saved["config"]["steps"] != cfg.steps:
        print(f"--steps {cfg.steps} differs from the checkpoint's {saved['config']['steps']}: the learning-rate "
              "schedule stretches, so this is not the run that was interrupted", file=sys.stderr)
    with torch.no_grad():
        state.steering.a.copy_(saved["a"])
        state.steering.b.copy_(saved["b"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.tracker.load_state_dict(saved["tracker"])
    _set_rng_state(saved["rng"], state.generator)
    state.step, state.recent = int(saved["step"]), list(saved["recent"])
    print(f"resumed from {path} at step {state.step}", file=sys.stderr)
