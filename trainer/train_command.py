"""`fairsteer train`: produce a steering adapter (DSO, or a baseline) in the shared adapter format.

    fairsteer train --method dso --model smollm2-135m-instruct --data ../shared/data/synthbias \\
        --out adapters/shipped/smollm2-135m-instruct-dso.safetensors [--config dso.yaml] [--resume]
    fairsteer train --method caa|mean-diff --model M --data SPEC --out FILE
    fairsteer train --task continuation ...   (the default model's measurable bias; trainer/continuation.py)

DSO writes a checkpoint (OUT.ckpt) every `checkpoint_every` steps and a JSON-lines log (OUT.log.jsonl);
`--resume` continues from the checkpoint with the same batches. It prints wall time and peak memory.
"""

import json
import resource
import sys
import time
from pathlib import Path

from server.cli import UsageError
from trainer.config import DSOConfig, add_flags, from_args

METHODS = ("dso", "caa", "mean-diff")
RESUMABLE_CHANGES = {"steps", "time_budget_min", "checkpoint_every", "threads"}  # may differ on --resume


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a steering adapter (dso, caa, mean-diff)",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="dso", choices=METHODS)
    parser.add_argument("--model", required=True, help="model folder or alias (smollm2-135m-instruct)")
    parser.add_argument("--out", required=True, help="adapter file to write (.safetensors)")
    parser.add_argument("--config", help="YAML file of DSOConfig settings (flags override it)")
    parser.add_argument("--name", help="adapter name (default: the output file's stem)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT.ckpt if present")
    add_flags(parser)
    parser.set_defaults(run=run)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def sites_for(cfg: DSOConfig, num_layers: int) -> tuple[str, ...]:
    from adapters.sites import all_sites, parse_site

    if cfg.sites in ("all", "layers"):
        return all_sites(num_layers, include_final=cfg.sites == "all")
    sites = tuple(s.strip() for s in cfg.sites.split(",") if s.strip())
    try:
        for s in sites:
            parse_site(s)
    except ValueError as exc:
        raise UsageError(f"--sites: {exc}") from None
    return sites


def run(args) -> int:
    import torch

    from trainer import task
    from trainer.tasks import load_splits

    cfg = from_args(args)
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise UsageError(f"--out {out}: adapter files end in .safetensors")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    started = time.monotonic()
    model, tokenizer, pad_id = task.load_model(args.model)
    splits = load_splits(cfg.task, cfg.data, cfg.n_train, cfg.n_eval, cfg.seed, cfg.holdout())
    print(f"{cfg.task} data {cfg.data}: {len(splits.train)} ambiguous + {len(splits.train_resolvable)} resolvable "
          f"training examples; evaluation held out", file=sys.stderr)
    if args.method == "dso":
        spec = _train_dso(args, cfg, model, tokenizer, pad_id, splits, out, started)
    else:
        from trainer import baselines
        spec = baselines.train(args.method.replace("-", "_"), model, tokenizer, pad_id, splits, cfg,
                               name=args.name or out.stem, base_model=args.model,
                               sites=sites_for(cfg, model.config.num_hidden_layers))
    from adapters import io
    io.save(spec, out)
    minutes = (time.monotonic() - started) / 60
    print(f"wrote {out} ({args.method}, {len(spec.sites)} sites, version {spec.version}); "
          f"{minutes:.1f} min, peak memory {peak_rss_mb():.0f} MB")
    return 0


def _train_dso(args, cfg, model, tokenizer, pad_id, splits, out: Path, started: float):
    import torch
    from tqdm import tqdm

    from adapters.hf import Steering, model_identity
    from adapters.spec import AdapterMeta
    from trainer import dso, rewards

    identity = model_identity(model)
    steering = Steering.zeros(identity, sites_for(cfg, identity.num_layers))
    optimizer = torch.optim.Adam(steering.parameters(), lr=cfg.lr)
    tracker = rewards.MajorityTracker(cfg.majority_momentum, cfg.other_reward)
    sampler = dso.BatchSampler(splits.train, splits.train_resolvable, tokenizer, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt, log_path = Path(f"{out}.ckpt"), Path(f"{out}.log.jsonl")
    start = _resume(ckpt, cfg, steering, optimizer, tracker) if args.resume else 0
    bar = tqdm(total=cfg.steps, initial=start, desc="dso", file=sys.stderr, dynamic_ncols=True)
    log = open(log_path, "a" if start else "w")  # noqa: SIM115 -- closed in the finally below
    history: list[dict] = []

    def on_step(step: int, parts: dict) -> None:
        row = {k: (round(float(v), 5) if k != "loss" else round(v.item(), 5)) for k, v in parts.items()
               if k != "objective"}
        row.update(step=step, minutes=round((time.monotonic() - started) / 60, 2))
        history.append(row)
        log.write(json.dumps(row) + "\n")
        log.flush()
        bar.update(1)
        bar.set_postfix(bias=f"{row['batch_bias']:.3f}", kl=f"{row['kl']:.4f}", other=f"{row['other']:.2f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            _save_ckpt(ckpt, cfg, step, steering, optimizer, tracker)

    deadline = started + 60 * cfg.time_budget_min
    try:
        step = dso.train_steps(model, steering, sampler, tracker, optimizer, cfg, pad_id, start, on_step,
                               deadline)
    finally:
        bar.close()
        log.close()
    if step < cfg.steps:
        print(f"time budget of {cfg.time_budget_min} min reached after {step} of {cfg.steps} steps",
              file=sys.stderr)
    _save_ckpt(ckpt, cfg, step, steering, optimizer, tracker)
    recent = history[-10:] or [{}]
    training = {**cfg.to_dict(), "model": args.model, "steps_done": step,
                "train_minutes": round((time.monotonic() - started) / 60, 2),
                "peak_rss_mb": round(peak_rss_mb()), "final_batch_bias_avg10":
                    round(sum(r.get("batch_bias", 0) for r in recent) / len(recent), 4)}
    meta = AdapterMeta(name=args.name or out.stem, method="dso", base_model=args.model, identity=identity,
                       training=training)
    return steering.to_spec(meta)


def _save_ckpt(path: Path, cfg, step, steering, optimizer, tracker) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save({"config": cfg.to_dict(), "step": step, "a": steering.a.detach(), "b": steering.b.detach(),
                "optimizer": optimizer.state_dict(), "tracker": tracker.state_dict()}, tmp)
    tmp.replace(path)


def _resume(path: Path, cfg, steering, optimizer, tracker) -> int:
    import torch

    if not path.is_file():
        print(f"no checkpoint at {path}; starting from step 0", file=sys.stderr)
        return 0
    state = torch.load(path, weights_only=True)
    diff = sorted(k for k in state["config"] if state["config"][k] != cfg.to_dict().get(k)
                  and k not in RESUMABLE_CHANGES)
    if diff:
        raise UsageError(f"--resume: {path} was written with different settings ({diff}); rerun with the "
                         "same settings, or delete the checkpoint to start over")
    with torch.no_grad():
        steering.a.copy_(state["a"])
        steering.b.copy_(state["b"])
    optimizer.load_state_dict(state["optimizer"])
    tracker.load_state_dict(state["tracker"])
    print(f"resumed from {path} at step {state['step']}", file=sys.stderr)
    return int(state["step"])
