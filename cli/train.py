"""`fairsteer train`: produce a steering adapter (DSO, or a baseline) in the shared adapter format.

    fairsteer train --method dso --model smollm2-135m-instruct --data ../shared/data/synthbias \\
        --out adapters/shipped/smollm2-135m-instruct-dso.safetensors [--config dso.yaml] [--resume]
    fairsteer train --method caa|mean-diff --model M --data SPEC --out FILE
    fairsteer train --task continuation ...   (the default model's measurable bias; trainer/continuation.py)

DSO writes a checkpoint (OUT.ckpt) every `checkpoint_every` steps and a JSON-lines log (OUT.log.jsonl);
`--resume` continues from the checkpoint with the same batches. It prints wall time and peak memory.
The training itself is `trainer.training`; this module turns flags into its arguments.
"""

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
    parser.add_argument("--resume", action="store_true", help="continue from OUT.ckpt if present")
    add_flags(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    import torch

    from adapters import io
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
    model, tokenizer, pad_id = load_model(args.model)
    splits = load_splits(cfg.task, cfg.data, cfg.n_train, cfg.n_eval, cfg.seed, cfg.holdout())
    print(f"{cfg.task} data {cfg.data}: {len(splits.train)} ambiguous + {len(splits.train_resolvable)} resolvable "
          f"training examples; evaluation held out", file=sys.stderr)
    method = METHOD_FLAGS[args.method]
    spec = train(method, model, tokenizer, pad_id, splits, cfg,
                 Run(name=args.name or out.stem, base_model=args.model, out=out, resume=args.resume,
                     started=started))
    io.save(spec, out)
    print(f"wrote {out} ({args.method}, {len(spec.sites)} sites, version {spec.version}); "
          f"{minutes_since(started):.1f} min, peak memory {peak_rss_mb():.0f} MB")
    return 0
