"""What a DSO run shows and records while it trains, and how Ctrl-C stops it.

`StepLog`: a progress bar on stderr with the live reward, the running bias estimate and the KL, and one
JSON line per step (OUT.log.jsonl, or `--log-jsonl FILE`) for the curves:

    {"step": 12, "loss": .., "reward": .., "kl": .., "kl_answer": .., "order": .., "l1": .., "other": ..,
     "batch_bias": .., "bias_estimate": .., "lr": .., "rows": .., "tokens": .., "minutes": ..}

A resumed run keeps the rows up to its checkpoint's step and appends from there, so the file holds each
step once. `deferred_interrupt`: the first Ctrl-C (SIGINT) only asks the run to stop after the step in
progress, which then saves a checkpoint and exits; a second one interrupts at once.
"""

import json
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace


class StepLog:
    """The progress bar and the JSON-lines log of one run, from step `start` of `total`."""

    def __init__(self, path: Path, start: int, total: int) -> None:
        from tqdm import tqdm

        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = _rows_up_to(path, start) if start else []
        self.file = open(path, "w")  # noqa: SIM115 -- closed by close()
        for row in kept:
            self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        self.bar = tqdm(total=total, initial=start, desc="dso", file=sys.stderr, dynamic_ncols=True)

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        self.bar.update(1)
        self.bar.set_postfix(reward=f"{row['reward']:.3f}", bias=f"{row['bias_estimate']:.3f}",
                             kl=f"{row['kl']:.4f}")

    def close(self) -> None:
        self.bar.close()
        self.file.close()


def _rows_up_to(path: Path, step: int) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("step", 0) <= step]


@contextmanager
def deferred_interrupt() -> Iterator[SimpleNamespace]:
    """Inside the block, SIGINT (Ctrl-C) and SIGTERM (what Kubernetes sends a pod it evicts) set `.requested`
    instead of stopping the run (the loop checks it between steps and saves a checkpoint); the handlers then
    step aside, so a second signal interrupts at once. Outside the main thread (where signals cannot be
    handled) it only yields the flag."""
    flag = SimpleNamespace(requested=False)
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in signals}

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    def handler(signum, frame) -> None:
        flag.requested = True
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{name}: stopping after this step and saving a checkpoint (Ctrl-C again to abort now)",
              file=sys.stderr)
        restore()

    for s in signals:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        restore()
