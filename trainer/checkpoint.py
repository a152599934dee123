"""DSO checkpoints (OUT.ckpt): the adapter's tensors, optimiser and majority tracker after a step.

A run resumed from a checkpoint continues with the same batches (they are deterministic in seed and step),
so only settings that do not change what a step computes may differ from the checkpoint's.
"""

import sys
from pathlib import Path

import torch

from trainer.config import DSOConfig
from trainer.errors import ConfigError

RESUMABLE_CHANGES = {"steps", "time_budget_min", "checkpoint_every", "threads"}  # may differ on --resume


def save(path: Path, cfg: DSOConfig, step: int, steering, optimizer, tracker) -> None:
    """Write the checkpoint atomically (a temp file, then a rename): a crash never leaves half of one."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"config": cfg.to_dict(), "step": step, "a": steering.a.detach(), "b": steering.b.detach(),
                "optimizer": optimizer.state_dict(), "tracker": tracker.state_dict()}, tmp)
    tmp.replace(path)


def resume(path: Path, cfg: DSOConfig, steering, optimizer, tracker) -> int:
    """Load the checkpoint into steering, optimizer and tracker; returns the step to continue from (0 if
    there is none). Raises ConfigError when it was written with settings that change the steps."""
    if not path.is_file():
        print(f"no checkpoint at {path}; starting from step 0", file=sys.stderr)
        return 0
    state = torch.load(path, weights_only=True)
    diff = sorted(k for k in state["config"] if state["config"][k] != cfg.to_dict().get(k)
                  and k not in RESUMABLE_CHANGES)
    if diff:
        raise ConfigError(f"--resume: {path} was written with different settings ({diff}); rerun with the "
                          "same settings, or delete the checkpoint to start over")
    with torch.no_grad():
        steering.a.copy_(state["a"])
        steering.b.copy_(state["b"])
    optimizer.load_state_dict(state["optimizer"])
    tracker.load_state_dict(state["tracker"])
    print(f"resumed from {path} at step {state['step']}", file=sys.stderr)
    return int(state["step"])
