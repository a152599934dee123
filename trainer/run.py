"""One run of the trainer: what every method needs besides the model and data, and what the run cost.

The cost (minutes, peak memory) is recorded in the adapter's metadata and in the evaluation's report.
"""

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Run:
    """The adapter's names and the run's files.

    Attributes:
        name: the adapter's name (the command line's default: the output file's stem).
        base_model: the model's name or path as given, recorded in the adapter.
        out: the adapter file.
        resume: DSO only: continue from the newest checkpoint in `checkpoints` if there is one.
        checkpoint_dir: DSO's checkpoint folder (`trainer.checkpoint`); None: OUT.ckpt beside the adapter.
        log_jsonl: DSO's JSON-lines log, one row per step (`trainer.progress`); None: OUT.log.jsonl.
        stop_after: DSO only: stop (with a checkpoint) once this many steps are done, short of cfg.steps, as
            a time-sliced job does; a later run with `resume` continues the same schedule.
        started: `time.monotonic()` when the run began (model loading included): the time budget counts
            from here.
        license_notice: the base model's NOTICE (`adapters.model_store.license_notice`), which its terms
            require the adapter, a derivative of the model, to carry; None where the model has none.
    """

    name: str
    base_model: str
    out: Path
    resume: bool = False
    checkpoint_dir: Path | None = None
    log_jsonl: Path | None = None
    stop_after: int | None = None
    started: float = field(default_factory=time.monotonic)
    license_notice: str | None = None

    @property
    def checkpoints(self) -> Path:
        return self.checkpoint_dir or Path(f"{self.out}.ckpt")

    @property
    def log(self) -> Path:
        return self.log_jsonl or Path(f"{self.out}.log.jsonl")


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def minutes_since(started: float) -> float:
    """Minutes since `started` (a `time.monotonic()` reading), rounded to hundredths."""
    return round((time.monotonic() - started) / 60, 2)
