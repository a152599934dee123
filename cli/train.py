"""`fairsteer train`: produce a steering adapter (DSO, or a baseline) in the shared adapter format.

    fairsteer train --method dso --model smollm2-135m-instruct --data ../shared/data/synthbias \\
        --out adapters/shipped/smollm2-135m-instruct-dso.safetensors [--config dso.yaml] [--resume]
    fairsteer train --method caa|mean-diff --model M --data SPEC --out FILE
    fairsteer train --task continuation ...   (the default model's measurable bias; trainer/continuation.py)
    fairsteer train --model meta-llama/Llama-3.1-8B-Instruct-folder --device cuda --dtype bfloat16 \\
        [--gradient-checkpointing] --save-every 20 --out A.safetensors      (a GPU node; trainer/session.py)

--device auto|cpu|cuda|cuda:N and --dtype auto|float32|bfloat16|float16 place the frozen model (auto: a GPU
in bf16 where there is one); the adapter and its optimiser stay fp32. DSO writes a checkpoint folder
(OUT.ckpt/) every --save-every steps, at the end and on Ctrl-C, and a JSON-lines log (OUT.log.jsonl, or
--log-jsonl FILE); `--resume [DIR]` continues bit-for-bit from the newest checkpoint in DIR (default
OUT.ckpt). Ctrl-C or SIGTERM saves and exits with status 130. It prints the memory estimate of a step, wall time and
peak memory. The training itself is `trainer.training`; this module turns flags into its arguments.
"""

import argparse
import sys
import time
from pathlib import Path

from adapters.methods import TRAINED_METHODS
from cli.main import UsageError
from trainer.config import add_flags, from_args

# The flag spells the names as words ("mean-diff"); the adapter file records the method's own name.
METHOD_FLAGS = {method.replace("_", "-"): method for method in TRAINED_METHODS}


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a steering adapter (dso, caa, mean-diff)",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="dso", choices=METHOD_FLAGS)
    parser.add_argument("--model", required=True, help="model folder or alias (smollm2-135m-instruct)")
    parser.add_argument("--out", required=True, help="adapter file to write (.safetensors)")
    parser.add_argument("--config", help="YAML file of DSOConfig settings (flags override it)")
    parser.add_argument("--name", help="adapter name (default: the output file's stem)")
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="DIR",
                        help="continue from the newest checkpoint in DIR (default: OUT.ckpt), and keep "
                             "writing checkpoints there")
    parser.add_argument("--log-jsonl", metavar="FILE", help="one JSON line per DSO step (default: OUT.log.jsonl)")
    add_flags(parser)
    parser.add_argument("--checkpoint-every", dest="save_every", type=int, help=argparse.SUPPRESS)  # old name
    parser.set_defaults(run=run)


def run(args) -> int:
    import torch

    from adapters import io
    from adapters.model_store import license_notice, resolve_model
    from trainer.base_model import load_model
    from trainer.run import Run, minutes_since, peak_rss_mb
    from trainer.task_registry import load_splits
    from trainer.training import train

    started = time.monotonic()
    cfg = from_args(args)
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise UsageError(f"--out {out}: adapter files end in .safetensors")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model, tokenizer, pad_id = load_model(args.model, cfg.device, cfg.dtype, training=cfg)
    splits = load_splits(cfg.task, cfg.data, cfg.n_train, cfg.n_eval, cfg.seed, cfg.holdout())
    print(f"{cfg.task} data {cfg.data}: {len(splits.train)} ambiguous + {len(splits.train_resolvable)} resolvable "
          f"training examples; evaluation held out", file=sys.stderr)
    method = METHOD_FLAGS[args.method]
    notice = license_notice(resolve_model(args.model))
    if notice:
        print(f"the model's terms require its derivatives to carry its NOTICE; recorded in the adapter:\n{notice}",
              file=sys.stderr)
    spec = train(method, model, tokenizer, pad_id, splits, cfg,
                 Run(name=args.name or out.stem, base_model=args.model, out=out, resume=args.resume is not None,
                     checkpoint_dir=Path(args.resume) if args.resume else None,
                     log_jsonl=Path(args.log_jsonl) if args.log_jsonl else None, started=started,
                     license_notice=notice))
    io.save(spec, out)
    print(f"wrote {out} ({args.method}, {len(spec.sites)} sites, version {spec.version}); "
          f"{minutes_since(started):.1f} min, peak memory {peak_rss_mb():.0f} MB")
    return 0
