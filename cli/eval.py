"""`fairsteer eval`: bias and capability per steering strength -> DIR/report.json and DIR/tradeoff.png.

    fairsteer eval --model smollm2-135m-instruct --adapter A.safetensors [--adapter B.safetensors ...] \\
        --strengths 0,0.25,0.5,0.75,1 --data ../shared/data/synthbias --mmlu ../shared/data/mmlu --out DIR
    fairsteer eval --task continuation --model M --adapter A.safetensors --out DIR   (generated prompts)
    fairsteer eval --task chat --model M --adapter A.safetensors --out DIR   (chats, a real server; chat.png)
    ... --write-calibration      also store each adapter's table in its metadata (the server shows it)
    ... --samples 2 --sample-tokens 32   continuation: the gendered-word rate of sampled text (0 skips it)
    ... --device cuda --dtype bfloat16   on a GPU (default auto: a GPU in bf16 where there is one)

The evaluation prompts are the held-out side of the same deterministic split the trainer uses (same
--data, --seed and --holdout-occupations), so no training prompt is ever scored. Metrics: see
`trainer.metrics` and `trainer.evaluate`; this module turns flags into their arguments and prints a summary.
Continuation is evaluated on held-out wordings *and* held-out gender cues (`trainer.cues`): stated-gender
accuracy per cue kind and pro/anti with 95% intervals, the gendered-word rate, and issue 15's targets.
"""

import sys
import time
from dataclasses import replace

from cli.main import UsageError
from cli.verdict import targets_verdict
from trainer.config import DEVICE_HELP, DTYPE_HELP, DTYPES, TASKS, TaskName, device_problem


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="measure bias and capability per strength",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder or alias (smollm2-135m-instruct)")
    parser.add_argument("--adapter", action="append", default=[], help="adapter file; repeat to compare")
    parser.add_argument("--strengths", default="0,0.25,0.5,0.75,1", help="comma-separated ω values")
    parser.add_argument("--task", choices=(*TASKS, "chat"), default=None,
                        help="coreference or continuation (default: the adapter's training task, else coreference)"
                             "; chat: sampled chats through a real server (cli/eval_chat.py)")
    parser.add_argument("--chat-samples", type=int, default=3, help="chat: sampled responses per instruction")
    parser.add_argument("--chat-max-tokens", type=int, default=48, help="chat: tokens per response")
    parser.add_argument("--data", default="generated", help="coreference: 'generated', 'synthbias:PATH', "
                        "'winobias:PATH'; continuation: 'generated' or a CSV prompt,occupation[,gender]")
    parser.add_argument("--n-eval", type=int, default=600, help="held-out items per kind (ambiguous, resolvable)")
    parser.add_argument("--mmlu", help="MMLU folder or tarball (e.g. ../shared/data/mmlu)")
    parser.add_argument("--mmlu-n", type=int, default=200, help="MMLU questions (subject-balanced subset)")
    parser.add_argument("--mmlu-strengths", help="strengths at which to measure MMLU (default: all)")
    parser.add_argument("--combine", nargs="+", metavar="DIR",
                        help="no model: merge the report.json of earlier runs (same data) into --out")
    parser.add_argument("--seed", type=int, default=0, help="split seed; must match training's")
    parser.add_argument("--holdout-occupations", default="", help="as given to training")
    parser.add_argument("--no-prompting", action="store_true", help="skip the prompting-only reference row")
    parser.add_argument("--samples", type=int, default=2,
                        help="continuation: sampled continuations per text for the gendered-word rate "
                             "(trainer/gendered_rate.py); 0 skips it")
    parser.add_argument("--sample-tokens", type=int, default=32, help="tokens per sampled continuation")
    parser.add_argument("--write-calibration", action="store_true",
                        help="store the measured table in each adapter's metadata")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help=DTYPE_HELP)
    parser.add_argument("--out", required=True, help="output folder")
    parser.set_defaults(run=run)


def parse_strengths(text: str) -> list[float]:
    try:
        values = sorted({float(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise UsageError(f"--strengths {text!r}: expected comma-separated numbers, e.g. 0,0.5,1") from None
    if not values or any(not (-4 <= v <= 4) for v in values):
        raise UsageError(f"--strengths {text!r}: give values between -4 and 4")
    return values


def run(args) -> int:
    import torch

    from adapters import io
    from adapters.hf import Steering, model_identity
    from trainer import evaluate, gendered_rate, mmlu, placement, report
    from trainer.base_model import load_model
    from trainer.run import minutes_since, peak_rss_mb
    from trainer.task_registry import load_splits

    if args.combine:
        return _combine(args.combine, args.out)
    if args.task == "chat":
        from cli.eval_chat import run_chat

        return run_chat(args, parse_strengths(args.strengths))
    if not args.model:
        raise UsageError("--model is required (a model folder or smollm2-135m-instruct)")
    strengths = parse_strengths(args.strengths)
    if args.n_eval < 2:
        raise UsageError("--n-eval must be at least 2 (standard errors need two examples)")
    if args.samples < 0 or args.sample_tokens < 1:
        raise UsageError("--samples must be 0 or more and --sample-tokens at least 1, e.g. --samples 2 "
                         "--sample-tokens 32")
    if device_problem(args.device):
        raise UsageError(device_problem(args.device))
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    model, tokenizer, pad_id = load_model(args.model, args.device, args.dtype)
    where = placement.of(model)
    identity = model_identity(model)
    specs, adapters = {}, {}
    for path in args.adapter:
        spec = io.load(path, identity)
        label = spec.meta.method if spec.meta.method not in adapters else spec.name
        _warn_split(spec, args)
        specs[label], adapters[label] = (path, spec), Steering.from_spec(spec).to(where.device)
    task_name = args.task or _adapter_task(specs)
    holdout = tuple(o.strip() for o in args.holdout_occupations.split(",") if o.strip())
    splits = load_splits(task_name, args.data, 0, args.n_eval, args.seed, holdout)
    questions = mmlu.load(args.mmlu, args.mmlu_n) if args.mmlu else []
    log = lambda msg: print(msg, file=sys.stderr)
    sampling = (gendered_rate.SamplingSettings(args.samples, args.sample_tokens, args.seed, args.batch_size)
                if task_name == "continuation" and args.samples else None)
    result = evaluate.evaluate_all(model, tokenizer, pad_id, splits.eval_ambiguous, splits.eval_resolvable,
                                   questions, adapters, strengths, prompting=not args.no_prompting,
                                   batch_size=args.batch_size, log=log,
                                   mmlu_strengths=parse_strengths(args.mmlu_strengths) if args.mmlu_strengths
                                   else None, task_name=task_name, sampling=sampling)
    header = {"model": args.model, "data": args.data, "task": task_name, "settings": {
        "strengths": strengths, "n_eval": args.n_eval, "mmlu": args.mmlu, "mmlu_n": len(questions),
        "seed": args.seed, "holdout_occupations": list(holdout), **where.describe(),
        "sampling": None if sampling is None else vars(sampling),
        "adapters": {label: {"file": str(p), "version": s.version, "name": s.name} for label, (p, s) in
                     specs.items()}},
        "eval_minutes": minutes_since(started), "peak_rss_mb": round(peak_rss_mb())}
    path = report.write(result, args.out, header)
    methods = report.group(result["rows"])
    if args.write_calibration:
        for label, (file, spec) in specs.items():
            table = report.calibration(methods[label])
            io.save(replace(spec, meta=replace(spec.meta, calibration=table)), file)
            print(f"calibration of {len(table)} strengths written into {file} (version {spec.version})")
    _print_summary(methods)
    _print_accuracy(methods)
    _print_acceptance(methods)
    _print_targets(methods)
    print(f"wrote {path} and {path.parent / 'tradeoff.png'} in {header['eval_minutes']} min, "
          f"peak memory {header['peak_rss_mb']} MB")
    return 0


def _combine(dirs: list[str], out: str) -> int:
    """One report and plot from several runs: their base rows must agree (same model, data, split)."""
    from trainer import report

    rows, header = report.combine(dirs)
    path = report.write({"rows": rows}, out, header)
    _print_summary(report.group(rows))
    print(f"wrote {path} and {path.parent / 'tradeoff.png'}")
    return 0


def _adapter_task(specs: dict) -> TaskName:
    """The task the adapters were trained on (coreference when they record none, or without adapters)."""
    tasks = {(spec.meta.training or {}).get("task", "coreference") for _, spec in specs.values()}
    if len(tasks) > 1:
        raise UsageError(f"the adapters were trained on different tasks {sorted(tasks)}; pass --task")
    task = tasks.pop() if tasks else "coreference"
    if task not in TASKS:
        raise UsageError(f"the adapters were trained on task {task!r}, which this fairsteer does not know; "
                         f"pass --task ({' or '.join(TASKS)})")
    return task


def _warn_split(spec, args) -> None:
    trained = spec.meta.training or {}
    for key, given in (("seed", args.seed), ("data", args.data), ("task", args.task)):
        if key == "task" and given is None:
            continue
        if key in trained and trained[key] != given:
            print(f"warning: adapter {spec.name!r} was trained with {key}={trained[key]!r}, evaluating with "
                  f"{given!r}: evaluation prompts may overlap its training prompts", file=sys.stderr)


def _print_acceptance(methods: dict) -> None:
    from trainer import report

    for label, checks in report.acceptance(methods).items():
        for c in checks:
            failed = [k for k, v in c.items() if v is False and k != "acceptable"]
            verdict = "acceptable" if c["acceptable"] else "NOT acceptable: " + ", ".join(failed)
            print(f"{label} at ω = {c['strength']:g}: {verdict}")


def _print_targets(methods: dict) -> None:
    from trainer import report

    for label, t in report.targets(methods).items():
        print(f"{label} at ω = {t['strength']:g}: bias {100 * t['bias_share_of_base']:.0f}% of base; "
              f"{targets_verdict(t['met'])}")


def _print_accuracy(methods: dict) -> None:
    """Stated-gender accuracy (expectation) with 95% intervals: overall, pro, anti, and per cue kind."""
    keys = [k for k in methods["base"][0] if k.startswith("unambiguous_accuracy") and "greedy" not in k
            and not k.endswith(("_se", "_lo", "_hi"))]
    if not keys:
        return
    print("stated-gender accuracy [95% interval]")
    for label, rows in methods.items():
        for r in rows:
            cells = [f"{k.removeprefix('unambiguous_accuracy').strip('_') or 'all'} {r[k]:.3f} "
                     f"[{r.get(k + '_lo', r[k]):.3f}, {r.get(k + '_hi', r[k]):.3f}]" for k in keys if k in r]
            print(f"  {label:<10} {r['strength']:>5g}  " + "; ".join(cells))


def _print_summary(methods: dict) -> None:
    cols = ("stereotype_gap", "unambiguous_accuracy", "other_rate", "first_option_rate_ambiguous",
            "generic_kl", "gendered_rate", "mmlu_accuracy")
    print(f"{'method':<10} {'ω':>5} {'POB [95% CI]':>22} {'floor':>6} " + " ".join(f"{c[:16]:>16}" for c in cols))
    for label, rows in methods.items():
        for r in rows:
            pob = (f"{r['per_occupation_bias']:.3f} [{r.get('per_occupation_bias_lo', 0):.3f}, "
                   f"{r.get('per_occupation_bias_hi', 0):.3f}]")
            cells = [f"{r[c]:.3f}±{r.get(c + '_se', 0):.3f}" if c in r else "-" for c in cols]
            print(f"{label:<10} {r['strength']:>5g} {pob:>22} {r.get('per_occupation_bias_noise_floor', 0):>6.3f} "
                  + " ".join(f"{c:>16}" for c in cells))
