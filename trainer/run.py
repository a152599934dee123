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
        out: the adapter file; DSO keeps OUT.ckpt (checkpoint) and OUT.log.jsonl (one row per step) beside it.
        resume: DSO only: continue from OUT.ckpt if there is one.
        started: `time.monotonic()` when the run began (model loading included): the time budget counts
            from here.
    """

    name: str
    base_model: str
    out: Path
    resume: bool = False
    started: float = field(default_factory=time.monotonic)


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def minutes_since(started: float) -> float:
    """Minutes since `started` (a `time.monotonic()` reading), rounded to hundredths."""
    return round((time.monotonic() - started) / 60, 2)
