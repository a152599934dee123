"""One DSO training run around the steps of `trainer.dso`: what makes it fit, survive and report.

    fairsteer train --method dso --model M --out A.safetensors [--device cuda --dtype bfloat16]
        [--gradient-checkpointing] [--save-every 10] [--resume [DIR]] [--log-jsonl FILE]

In order: the adapter's fp32 parameters and Adam are put on the model's input device; the step's memory is
estimated for the largest batch (`trainer.memory`) and printed; on a GPU where the step would not fit,
activation checkpointing is turned on if that makes it fit, else the run stops with the fix; with `resume`
the newest checkpoint is loaded (`trainer.checkpoint`); then the steps run, each logged and shown
(`trainer.progress`), a checkpoint every `save_every` steps and at the end, the time budget or Ctrl-C. Ctrl-C
saves and re-raises KeyboardInterrupt (the command exits 130); SIGTERM (a pod evicted) does the same. The adapter is a CPU fp32 `SteeringSpec`
whatever trained it; its metadata records the device, dtype, memory estimate and measured peak.
"""

import sys
import time

import torch

from trainer import checkpoint, dso, gendered_rate, memory, placement, progress, rewards
from trainer.checkpoint import TrainState
from trainer.config import DSOConfig
from trainer.errors import ConfigError
from trainer.run import Run, minutes_since, peak_rss_mb


def train(model, tokenizer, pad_id: int, splits, cfg: DSOConfig, sites: tuple[str, ...], run: Run):
    """A DSO `SteeringSpec` at `sites`, trained on `splits.train` (+ `train_resolvable` in the KL terms)."""
    from adapters.hf import Steering, model_identity

    where = placement.of(model)
    steering = Steering.zeros(model_identity(model), sites).to(where.device)  # fp32 master copy
    state = TrainState(steering, torch.optim.Adam(steering.parameters(), lr=cfg.lr),
                       rewards.MajorityTracker(cfg.majority_momentum, cfg.other_reward),
                       torch.Generator().manual_seed(cfg.seed))
    descriptions = (gendered_rate.training_texts(model, tokenizer, pad_id, cfg.seed)
                    if cfg.task == "continuation" and cfg.description_per_step else [])
    sampler = dso.BatchSampler(splits.train, splits.train_resolvable, tokenizer, cfg, descriptions)
    dtype = placement.dtype_name(where.dtype)
    if run.resume:
        checkpoint.resume(run.checkpoints, cfg, state, dtype)
    else:
        checkpoint.clear(run.checkpoints)
    checkpointing, estimate = plan_memory(model, sampler, cfg, len(sites), state.step, where)
    if where.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(where.device)
    log = progress.StepLog(run.log, state.step, cfg.steps)
    try:
        with placement.activation_checkpointing(model, checkpointing), progress.deferred_interrupt() as stop:
            _run_steps(model, state, sampler, cfg, pad_id, run, log, stop, dtype)
    finally:
        log.close()
    checkpoint.save(run.checkpoints, cfg, state, dtype)
    if stop.requested:
        print(f"interrupted after step {state.step}: checkpoint in {run.checkpoints}; continue with the same "
              f"command and --resume {run.checkpoints}", file=sys.stderr)
        raise KeyboardInterrupt
    if state.step < cfg.steps:
        print(f"stopped after {state.step} of {cfg.steps} steps (time budget of {cfg.time_budget_min} min, or "
              f"Run.stop_after); continue with --resume {run.checkpoints}", file=sys.stderr)
    return _adapter(state, cfg, run, where, checkpointing, estimate)


def _run_steps(model, state: TrainState, sampler, cfg: DSOConfig, pad_id: int, run: Run, log, stop,
               dtype: str) -> None:
    deadline = run.started + 60 * cfg.time_budget_min
    while state.step < cfg.steps and time.monotonic() <= deadline:
        started = time.monotonic()
        parts = dso.step(model, state, sampler, cfg, pad_id)
        row = {k: round(float(v), 6) for k, v in parts.items() if k not in ("loss", "objective")}
        row.update(step=state.step, loss=round(parts["loss"].item(), 6), rows=parts["rows"],
                   tokens=parts["tokens"], bias_estimate=round(state.tracker.bias(), 6),
                   seconds=round(time.monotonic() - started, 4), minutes=minutes_since(run.started))
        state.recent = [*state.recent, row][-10:]
        log.write(row)
        if state.step % cfg.save_every == 0 and state.step < cfg.steps:
            checkpoint.save(run.checkpoints, cfg, state, dtype)
        if stop.requested or state.step == run.stop_after:
            return


def plan_memory(model, sampler, cfg: DSOConfig, num_sites: int, start: int,
                where: placement.Placement) -> tuple[bool, memory.StepMemory]:
    """(activation checkpointing on?, the estimate it is on for), printed. On a single GPU whose memory
    the step would overflow, checkpointing is turned on when that makes it fit; when nothing does, a
    ConfigError names the fix."""
    rows, length = sampler.largest(start)
    weights = memory.model_bytes(model)

    def at(ckpt: bool) -> memory.StepMemory:
        return memory.estimate(model.config, where.dtype, rows, length, num_sites, ckpt, weights)

    checkpointing = cfg.gradient_checkpointing
    if where.device.type == "cuda" and len(where.devices) == 1:
        capacity = placement.HEADROOM * torch.cuda.get_device_properties(where.device).total_memory
        checkpointing = choose_checkpointing(checkpointing, at(False), at(True), capacity, str(where.device))
    estimate = at(checkpointing)
    print(f"memory per step (estimate; batch {rows} rows x {length} tokens, {placement.dtype_name(where.dtype)}, "
          f"activation checkpointing {'on' if checkpointing else 'off'}): {estimate.describe()}",
          file=sys.stderr)
    return checkpointing, estimate


def choose_checkpointing(requested: bool, plain: memory.StepMemory, checkpointed: memory.StepMemory,
                         capacity: float, device: str) -> bool:
    """Whether to checkpoint activations on a device of `capacity` usable bytes: as requested, or turned on
    when the step fits only with it. Raises ConfigError when it fits neither way."""
    if (checkpointed if requested else plain).total <= capacity:
        return requested
    if checkpointed.total <= capacity:
        print(f"one step needs about {plain.total / memory.GIB:.1f} GiB without activation checkpointing, more "
              f"than {device} has: turned it on", file=sys.stderr)
        return True
    raise ConfigError(f"one step needs about {checkpointed.total / memory.GIB:.1f} GiB even with activation "
                      f"checkpointing ({checkpointed.describe()}); {device} has {capacity / memory.GIB:.1f} "
                      "usable: use fewer --occupations-per-step / --generic-per-step, a smaller --dtype, or "
                      "--device cuda with several GPUs")


def _adapter(state: TrainState, cfg: DSOConfig, run: Run, where: placement.Placement, checkpointing: bool,
             estimate: memory.StepMemory):
    from adapters.spec import AdapterMeta

    recent = state.recent or [{}]
    measured = ({"peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated(where.device) / memory.GIB, 3)}
                if where.device.type == "cuda" else {})
    training = {**cfg.to_dict(), **where.describe(), "gradient_checkpointing": checkpointing,
                "model": run.base_model, "steps_done": state.step, "train_minutes": minutes_since(run.started),
                "peak_rss_mb": round(peak_rss_mb()), "memory_estimate_gib": round(estimate.total / memory.GIB, 3),
                **measured, "final_batch_bias_avg10":
                    round(sum(r.get("batch_bias", 0) for r in recent) / len(recent), 4)}
    meta = AdapterMeta(name=run.name, method="dso", base_model=run.base_model,
                       identity=state.steering.identity, training=training)
    return state.steering.to_spec(meta)
