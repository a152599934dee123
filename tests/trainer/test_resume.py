"""Resumable DSO runs (trainer/session.py, trainer/checkpoint.py): stop and resume is the uninterrupted run,
bit for bit; checkpoints are atomic and checked against the settings; Ctrl-C saves and exits 130."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_models import save_tiny_model, tiny_model, tiny_tokenizer

from adapters.hf import Steering, model_identity
from trainer import checkpoint, session
from trainer.base_model import load_model
from trainer.config import DSOConfig
from trainer.errors import ConfigError
from trainer.run import Run
from trainer.task_registry import load_splits

TIME_KEYS = {"minutes", "seconds"}


def _cfg(**kw) -> DSOConfig:
    # The sample estimator draws answers: a resumed run must continue the generator, not restart it.
    base = {"task": "continuation", "n_train": 40, "n_eval": 4, "steps": 5, "occupations_per_step": 3,
            "generic_per_step": 2, "estimator": "sample", "save_every": 2, "lr": 0.02}
    return DSOConfig(**{**base, **kw})


def _train(model, cfg: DSOConfig, out: Path, tokenizer=None, **run):
    splits = load_splits(cfg.task, "generated", cfg.n_train, cfg.n_eval, cfg.seed, ())
    sites = Steering.zeros(model_identity(model)).sites
    return session.train(model, tokenizer or tiny_tokenizer(), 0, splits, cfg, sites, Run("t", "tiny", out, **run))


def _untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


def _log(out: Path) -> list[dict]:
    return _untimed([json.loads(line) for line in Path(f"{out}.log.jsonl").read_text().splitlines()])


def _state(out: Path) -> dict:
    return torch.load(checkpoint.latest(Path(f"{out}.ckpt")), weights_only=True)


def test_stopping_and_resuming_equals_the_uninterrupted_run_bit_for_bit(tmp_path):
    model, cfg = tiny_model(), _cfg()
    whole = _train(model, cfg, tmp_path / "whole.safetensors")
    first = _train(model, cfg, tmp_path / "split.safetensors", stop_after=3)
    assert first.meta.training["steps_done"] == 3
    resumed = _train(model, cfg, tmp_path / "split.safetensors", resume=True)
    assert torch.equal(resumed.a, whole.a) and torch.equal(resumed.b, whole.b), "resume must be bit-for-bit"
    assert resumed.version == whole.version
    assert _log(tmp_path / "split.safetensors") == _log(tmp_path / "whole.safetensors"), "each step once, same"
    ours, theirs = _state(tmp_path / "split.safetensors"), _state(tmp_path / "whole.safetensors")
    assert (ours["step"], ours["tracker"]) == (theirs["step"], theirs["tracker"]), "the running estimates"
    assert _untimed(ours["recent"]) == _untimed(theirs["recent"])
    for a, b in zip(ours["optimizer"]["state"].values(), theirs["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a), "Adam's moments must match exactly"
    assert torch.equal(ours["rng"]["generator"], theirs["rng"]["generator"])


def test_checkpoints_are_whole_files_the_two_newest_kept_and_named_by_latest(tmp_path):
    out = tmp_path / "a.safetensors"
    _train(tiny_model(), _cfg(steps=4, save_every=1, estimator="exact"), out)
    folder = Path(f"{out}.ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["latest", "step-00000003.pt", "step-00000004.pt"]
    assert checkpoint.latest(folder).name == "step-00000004.pt"
    assert not list(folder.glob(".*")), "no temporary file is left behind"
    state = _state(out)
    assert state["a"].dtype == torch.float32 and state["step"] == 4 and "rng" in state


def test_resume_refuses_settings_that_change_the_steps_and_a_new_dtype(tmp_path):
    out, model = tmp_path / "a.safetensors", tiny_model()
    _train(model, _cfg(steps=2, estimator="exact"), out)
    with pytest.raises(ConfigError, match="lr"):
        _train(model, _cfg(steps=2, estimator="exact", lr=0.5), out, resume=True)
    with pytest.raises(ConfigError, match="dtype float32 -> bfloat16"):
        _train(model.to(torch.bfloat16), _cfg(steps=2, estimator="exact"), out, resume=True)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_saves_the_finished_step_and_exits_130(tmp_path, stop):
    """A real `fairsteer train` process and a real SIGINT or SIGTERM (a pod evicted): it finishes the step in
    progress, writes a checkpoint holding exactly the state after that step, and exits with status 130."""
    model_dir = save_tiny_model(tmp_path / "model")
    out = tmp_path / "run.safetensors"
    argv = [str(Path(sys.executable).parent / "fairsteer"), "train", "--model", str(model_dir), "--out", str(out),
            "--task", "continuation", "--n-train", "40", "--n-eval", "4", "--occupations-per-step", "3", "--generic-per-step", "2",
            "--estimator", "sample", "--lr", "0.02", "--steps", "100000", "--save-every", "100000"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = Path(f"{out}.log.jsonl")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted after step" in err and "--resume" in err
    assert not out.exists(), "an interrupted run writes no adapter, only its checkpoint"
    steps = len(log.read_text().splitlines())
    saved = _state(out)
    assert saved["step"] == steps, "the checkpoint holds the last logged step"
    model, tokenizer, _ = load_model(str(model_dir))
    cfg = _cfg(steps=100000, save_every=100000)
    reference = _train(model, cfg, tmp_path / "ref.safetensors", tokenizer, stop_after=steps)
    assert torch.equal(saved["a"], reference.a) and torch.equal(saved["b"], reference.b), (
        "the checkpoint must be the state after its step, as an uninterrupted run has it")
