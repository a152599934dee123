"""DSO training throughput and memory: steps/s, examples/s, tokens/s, and a step's memory estimate
(`trainer.memory`) against its measured peak; plus the training smoke of bench/gpu_check.sh.

    .venv/bin/python bench/train_throughput.py                          # SmolLM2-135M, CPU, fp32 and bf16
    .venv/bin/python bench/train_throughput.py --device cuda --dtypes bfloat16 --checkpointing both
    .venv/bin/python bench/train_throughput.py --shape llama-3.1-8b --device cuda   # random weights, that shape
    .venv/bin/python bench/train_throughput.py --estimate-only --shape llama-3.1-8b --dtypes bfloat16
    .venv/bin/python bench/train_throughput.py --smoke [--cpu-smoke] --out DIR     # gpu_check.sh part (d)

A step is `trainer.dso.step` on the task's own batches (default: continuation, the shipped recipe; 14 rows:
8 occupations, 2 resolvable, 4 generic texts). examples/s counts the batch's rows, tokens/s its padded
tokens. Time: median of the timed steps after warm-up (CUDA synchronised). Memory, measured on one more
step (`trainer.memory.measure_peak`): on CUDA torch.cuda.max_memory_allocated above what was allocated
before the step; on the CPU the peak of the allocations torch's profiler records (the profiler slows that
step, so it is not timed). `--shape` builds a random model of a known shape on the device (no download):
what a 7-8B model costs, checked without its weights. The smoke (`--smoke`) trains a tiny random model in
bf16 on the device: an uninterrupted run against one stopped and resumed from its checkpoint, the adapter's
format, the memory estimate against the measured peak, on a GPU also an 8B-shaped step and the adapter's
master copy on another device than the model. It writes DIR/train_check.json and appends to DIR/summary.md;
exit status 1 if a check failed.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run from anywhere without installing; the tiny models

from adapters.hf import Steering, model_identity
from trainer import dso, memory, placement, rewards
from trainer.checkpoint import TrainState
from trainer.config import DSOConfig
from trainer.task_registry import load_splits

# Known shapes (their config.json's shape fields), for random models on the device.
SHAPES = {
    "llama-3.1-8b": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
                     "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                     "num_key_value_heads": 8, "vocab_size": 128256, "rope_theta": 500000.0,
                     "max_position_embeddings": 8192, "tie_word_embeddings": False},
    "qwen2.5-7b": {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584,
                   "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                   "num_key_value_heads": 4, "vocab_size": 152064, "rope_theta": 1000000.0,
                   "max_position_embeddings": 8192, "tie_word_embeddings": False},
}
# measured / estimated step memory accepted by the smoke: the estimate is meant as a safe plan, so it may
# be generous (CPU checks: 0.82-1.09), never far short of what a step takes.
RATIO_BOUNDS = (0.5, 1.25)


def shape_config(shape: str):
    from transformers import AutoConfig

    if shape == "tiny":
        from tiny_models import tiny_config
        return tiny_config()
    fields = dict(SHAPES[shape])
    return AutoConfig.for_model(fields.pop("model_type"), bos_token_id=1, eos_token_id=2, pad_token_id=0, **fields)


def random_model(shape: str, device: str, dtype: torch.dtype):
    """A seeded random model of `shape`, built directly on `device` in `dtype`, frozen."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(shape_config(shape), dtype=dtype)
    return model.eval().requires_grad_(False)


def setup(model, tokenizer, cfg: DSOConfig) -> tuple[TrainState, dso.BatchSampler]:
    splits = load_splits(cfg.task, "generated", cfg.n_train, cfg.n_eval, cfg.seed, ())
    steering = Steering.zeros(model_identity(model)).to(placement.of(model).device)
    state = TrainState(steering, torch.optim.Adam(steering.parameters(), lr=cfg.lr),
                       rewards.MajorityTracker(cfg.majority_momentum, cfg.other_reward),
                       torch.Generator().manual_seed(cfg.seed))
    return state, dso.BatchSampler(splits.train, splits.train_resolvable, tokenizer, cfg)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model, state, sampler, cfg, pad_id, warmup: int, steps: int) -> dict:
    """Median seconds per step after warm-up, and the rates it gives."""
    device = placement.of(model).device
    for _ in range(warmup):
        dso.step(model, state, sampler, cfg, pad_id)
    seconds, rows, tokens = [], [], []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        out = dso.step(model, state, sampler, cfg, pad_id)
        _sync(device)
        seconds.append(time.perf_counter() - start)
        rows.append(out["rows"])
        tokens.append(out["tokens"])
    median = statistics.median(seconds)
    return {"seconds_per_step": median, "steps_per_s": 1 / median,
            "examples_per_s": statistics.mean(rows) / median, "tokens_per_s": statistics.mean(tokens) / median}


def memory_check(model, state, sampler, cfg, pad_id, checkpointing: bool) -> dict:
    """One step's measured peak (above the loaded model, adapter and Adam state) against the estimate."""
    where = placement.of(model)
    prompts = sampler.batch(state.step).prompts
    rows, length = len(prompts), max(len(p.ids) for p in prompts)
    estimate = memory.estimate(model.config, where.dtype, rows, length, len(state.steering.sites),
                               checkpointing, weights=memory.model_bytes(model))
    measured = memory.measure_peak(lambda: dso.step(model, state, sampler, cfg, pad_id), where.device)
    ratio = measured / estimate.step
    return {"rows": rows, "length": length, "estimate": estimate.to_dict(), "estimate_step_mib": estimate.step / 2**20,
            "measured_step_mib": measured / 2**20, "measured_over_estimate": ratio,
            "estimate_ok": RATIO_BOUNDS[0] <= ratio <= RATIO_BOUNDS[1]}


def bench_one(model, tokenizer, pad_id, cfg, checkpointing: bool, warmup: int, steps: int) -> dict:
    state, sampler = setup(model, tokenizer, cfg)
    with placement.activation_checkpointing(model, checkpointing):
        row = time_steps(model, state, sampler, cfg, pad_id, warmup, steps)
        row.update(memory_check(model, state, sampler, cfg, pad_id, checkpointing))
    where = placement.of(model)
    return {"device": str(where.device), "dtype": placement.dtype_name(where.dtype),
            "gradient_checkpointing": checkpointing, **row}


def format_row(label: str, r: dict) -> str:
    return (f"{label:<22} {r['dtype']:<9} ckpt={'on ' if r['gradient_checkpointing'] else 'off'} "
            f"{r['steps_per_s']:7.3f} steps/s {r['examples_per_s']:8.1f} examples/s {r['tokens_per_s']:9.0f} "
            f"tokens/s | batch {r['rows']}x{r['length']} memory/step est {r['estimate_step_mib']:9.1f} MiB "
            f"measured {r['measured_step_mib']:9.1f} MiB ({r['measured_over_estimate']:.2f}x)")


def load(args, dtype_name: str):
    """(model, tokenizer, pad_id, label) for --model or --shape."""
    if args.shape:
        from tiny_models import tiny_tokenizer
        device, dtype = placement.resolve(args.device, dtype_name)
        device = "cuda:0" if device == "cuda" else device
        return random_model(args.shape, device, dtype), tiny_tokenizer(), 0, f"random {args.shape}"
    from trainer.base_model import load_model
    return (*load_model(args.model, args.device, dtype_name), args.model)


def estimate_only(args) -> int:
    """Print the estimate for the task's largest default batch (prompts tokenised by --model's tokenizer,
    else the tiny test tokenizer), without building the model."""
    from tiny_models import tiny_tokenizer

    from adapters.sites import all_sites

    config, tokenizer = shape_config(args.shape or "tiny"), tiny_tokenizer()
    if args.model:  # its tokenizer (the prompts' lengths), and its config unless --shape names one
        from transformers import AutoConfig, AutoTokenizer

        from adapters.model_store import resolve_model
        path = resolve_model(args.model)
        tokenizer = AutoTokenizer.from_pretrained(path)
        config = config if args.shape else AutoConfig.from_pretrained(path)
    cfg = DSOConfig(task=args.task, n_train=600, n_eval=10)
    splits = load_splits(cfg.task, "generated", cfg.n_train, cfg.n_eval, cfg.seed, ())
    rows, length = dso.BatchSampler(splits.train, splits.train_resolvable, tokenizer, cfg).largest(0)
    rows, length = args.rows or rows, args.length or length
    sites = len(all_sites(memory.text_config(config).num_hidden_layers))
    for name in args.dtypes.split(","):
        for ckpt in _checkpointing(args.checkpointing):
            est = memory.estimate(config, placement.DTYPE_OF[name], rows, length, sites, ckpt)
            print(f"{args.shape or args.model} ({args.task}) {name} ckpt={'on' if ckpt else 'off'} batch {rows}x{length}: "
                  f"{est.describe()}")
    return 0


def _checkpointing(choice: str) -> tuple[bool, ...]:
    return {"off": (False,), "on": (True,), "both": (False, True)}[choice]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model folder or alias (default: smollm2-135m-instruct)")
    p.add_argument("--shape", choices=["tiny", *SHAPES], help="a random model of this shape instead of --model")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated model dtypes")
    p.add_argument("--checkpointing", choices=["off", "on", "both"], default="off")
    p.add_argument("--task", choices=["continuation", "coreference"], default="continuation")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--estimate-only", action="store_true", help="print the estimate only (no model built)")
    p.add_argument("--rows", type=int, help="--estimate-only: batch rows instead of the task's")
    p.add_argument("--length", type=int, help="--estimate-only: padded length instead of the task's")
    p.add_argument("--smoke", action="store_true", help="the gpu_check.sh training smoke (see the docstring)")
    p.add_argument("--cpu-smoke", action="store_true", help="with --smoke: on the CPU (make test)")
    p.add_argument("--out", type=Path, help="write results.json (throughput) / train_check.json (smoke) here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.smoke:
        return smoke("cpu" if args.cpu_smoke else "cuda", args.out or Path("gpu_check_out"))
    if args.estimate_only:
        return estimate_only(args)
    args.model = args.model or ("smollm2-135m-instruct" if not args.shape else None)
    cfg = DSOConfig(task=args.task, n_train=600, n_eval=10, steps=10**6)
    rows = []
    for name in args.dtypes.split(","):
        model, tokenizer, pad_id, label = load(args, name)
        for ckpt in _checkpointing(args.checkpointing):
            rows.append({"model": label, **bench_one(model, tokenizer, pad_id, cfg, ckpt, args.warmup, args.steps)})
            print(format_row(label, rows[-1]), flush=True)
        del model
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=1))
    return 0


# ---- the training smoke of bench/gpu_check.sh (part d) --------------------------------------------------

def _train(model, tokenizer, cfg: DSOConfig, out: Path, **run):
    from trainer import session
    from trainer.run import Run

    splits = load_splits(cfg.task, "generated", cfg.n_train, cfg.n_eval, cfg.seed, ())
    sites = tuple(Steering.zeros(model_identity(model)).sites)
    return session.train(model, tokenizer, 0, splits, cfg, sites, Run(name=out.stem, base_model="tiny", out=out,
                                                                        **run))


def _resume_check(model, tokenizer, device: str, work: Path) -> dict:
    """Uninterrupted 4 steps against 2 steps, stop, resume to 4: the same adapter (bit-for-bit on the CPU;
    on a GPU to rounding where a kernel is not deterministic), in the one adapter format."""
    from adapters import io

    cfg = DSOConfig(task="continuation", n_train=40, n_eval=4, steps=4, occupations_per_step=4, save_every=1,
                    estimator="sample", dtype="bfloat16", device=device)
    whole = _train(model, tokenizer, cfg, work / "whole.safetensors")
    _train(model, tokenizer, cfg, work / "split.safetensors", stop_after=2)
    resumed = _train(model, tokenizer, cfg, work / "split.safetensors", resume=True)
    exact = torch.equal(whole.a, resumed.a) and torch.equal(whole.b, resumed.b)
    # A GPU kernel without a deterministic version (warned about) can round differently between the runs;
    # Adam can turn that into up to 2·lr on an element whose gradient is near 0: 2e-3 after 4 steps.
    close = torch.allclose(whole.a, resumed.a, atol=2e-3) and torch.allclose(whole.b, resumed.b, atol=2e-3)
    again = io.load(io.save(resumed, work / "resumed.safetensors"))
    fmt = (again.a.dtype == again.b.dtype == torch.float32 and again.a.device.type == "cpu"
           and again.meta.training["dtype"] == "bfloat16" and again.meta.training["steps_done"] == 4)
    return {"pass": (exact if device == "cpu" else close) and fmt,
            "bit_identical": exact, "close": close, "format_ok": fmt, "trained_on": again.meta.training["device"],
            "max_abs_diff": float((whole.a - resumed.a).abs().max().max((whole.b - resumed.b).abs().max()))}


def _master_elsewhere_check(model, tokenizer) -> dict:
    """The adapter's fp32 master copy on the CPU, the model on the GPU: the hooks move a and b to the
    sites and the gradient comes back; it must match the gradient with the master on the GPU."""
    cfg = DSOConfig(task="continuation", n_train=40, n_eval=4, occupations_per_step=4)
    grads = []
    for where in ("cpu", placement.of(model).device):
        state, sampler = setup(model, tokenizer, cfg)
        state.steering.to(where)
        with torch.no_grad():
            state.steering.b.fill_(0.01)
        dso.objective(model, state.steering, sampler.batch(0), state.tracker, cfg, 0, backward=True)
        grads.append(state.steering.b.grad.detach().cpu())
    ok = torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6) and grads[0].abs().sum() > 0
    return {"pass": bool(ok)}


def _big_shape_check(shape: str) -> dict:
    """An 8B-shaped random model on the GPU in bf16: memory estimate vs measured, and steps/s."""
    from tiny_models import tiny_tokenizer

    need = memory.weight_bytes(shape_config(shape), torch.bfloat16)
    free = torch.cuda.mem_get_info()[0]
    if free < 2.5 * need:
        return {"pass": True, "skipped": f"{free / 2**30:.0f} GiB free"}
    model = random_model(shape, "cuda:0", torch.bfloat16)
    cfg = DSOConfig(task="coreference", n_train=80, n_eval=10, steps=10**6)
    rows = [bench_one(model, tiny_tokenizer(), 0, cfg, ckpt, 1, 2) for ckpt in (False, True)]
    del model
    torch.cuda.empty_cache()
    return {"pass": all(r["estimate_ok"] for r in rows), "results": rows}


def _guarded(name: str, fn) -> dict:
    """One check's result; an exception is that check's failure, and the others still run."""
    try:
        return {**fn(), "check": name}
    except Exception as exc:  # noqa: BLE001 -- reported in the summary, the exit status is 1
        import traceback
        traceback.print_exc()
        return {"check": name, "pass": False, "error": repr(exc)}


def smoke(device: str, out: Path) -> int:
    """Part (d) of bench/gpu_check.sh: see the module docstring."""
    from tiny_models import tiny_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    if device == "cuda" and not torch.cuda.is_available():
        print("training smoke: no CUDA device (use --cpu-smoke)", file=sys.stderr)
        return 1
    if device == "cuda":  # gpu_check.sh sets CUBLAS_WORKSPACE_CONFIG for this
        torch.use_deterministic_algorithms(True, warn_only=True)
    model, tokenizer = random_model("tiny", device if device == "cpu" else "cuda:0", torch.bfloat16), tiny_tokenizer()
    cfg = DSOConfig(task="continuation", n_train=40, n_eval=4, occupations_per_step=4, steps=10**6)

    def tiny_memory(ckpt: bool) -> dict:
        row = bench_one(model, tokenizer, 0, cfg, ckpt, 1, 2)
        # On a GPU a tiny step is smaller than cuBLAS's workspace: reported, checked on the 8B shape below.
        return {"pass": row["estimate_ok"] or device == "cuda", **row}

    with tempfile.TemporaryDirectory() as work:
        parts = [("resume = uninterrupted; adapter format", lambda: _resume_check(model, tokenizer, device, Path(work))),
                 ("tiny step, bf16, ckpt off: estimate vs measured", lambda: tiny_memory(False)),
                 ("tiny step, bf16, ckpt on: estimate vs measured", lambda: tiny_memory(True))]
        if device == "cuda":
            parts += [("master copy on the CPU, model on the GPU", lambda: _master_elsewhere_check(model, tokenizer)),
                      ("llama-3.1-8b step, bf16, estimate vs measured", lambda: _big_shape_check("llama-3.1-8b"))]
        checks = [_guarded(name, fn) for name, fn in parts]
    for c in checks:
        print(f"{'PASS' if c['pass'] else 'FAIL'} {c['check']}: "
              f"{ {k: v for k, v in c.items() if k not in ('check', 'pass', 'results', 'estimate')} }", flush=True)
        for r in c.get("results", []):
            print("    " + format_row("llama-3.1-8b", r), flush=True)
    (out / "train_check.json").write_text(json.dumps({"device": device, "checks": checks}, indent=1, default=str))
    lines = ["", "## (d) training smoke (bench/train_throughput.py --smoke)", ""]
    lines += [f"- {'PASS' if c['pass'] else 'FAIL'} {c['check']}" for c in checks]
    lines += ["    - " + format_row("llama-3.1-8b", r) for c in checks for r in c.get("results", [])]
    with open(out / "summary.md", "a") as f:
        f.write("\n".join(lines) + "\n")
    return 0 if all(c["pass"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
