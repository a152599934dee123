"""`fairsteer eval --task chat`: sampled chats per strength through a real server -> DIR/report.json, chat.png

    fairsteer eval --task chat --model smollm2-135m-instruct --adapter A.safetensors --strengths 0,0.5,1 \\
        [--chat-samples 3] [--chat-max-tokens 48] --out DIR

Starts `fairsteer serve` on 127.0.0.1 (a free port, `server.launcher`) with the model and the adapters,
samples the held-out chat prompts of `server.chat_eval` through /v1/chat/completions with the audit's client
(`server.audit.sample`), stops the server, and writes per adapter and strength the occupation gap, the BLS
correlation, the overall female share, the stated-gender accuracy (with 95% intervals) and the targets, their
plot (DIR/chat.png), and every response in DIR/chat-outputs.jsonl. Strength 0 is the base model for every
adapter, so it is sampled once and shared: its responses appear once, with "adapter": null. The server's
log is DIR/chat-server.log.
"""

import asyncio
import json
import os
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path

from cli.main import UsageError
from cli.verdict import targets_verdict

# A real model's server on a loaded 2-core machine: minutes to start, and time to finish its requests.
READY_TIMEOUT_S, STOP_GRACE_S = 900, 30


def run_chat(args, strengths: list[float]) -> int:
    from adapters import io
    from server import chat_eval, launcher, lexicons

    if not args.model or not args.adapter:
        raise UsageError("--task chat needs --model and at least one --adapter FILE")
    if args.chat_samples < 1 or args.chat_max_tokens < 1:
        raise UsageError("--chat-samples and --chat-max-tokens must be at least 1, e.g. --chat-samples 3")
    labels: dict[str, tuple[str, str]] = {}  # serving name -> (file, version)
    for file in args.adapter:
        spec = io.load(file)
        label = spec.meta.method if spec.meta.method not in labels else f"{spec.meta.method}-{len(labels)}"
        labels[label] = (str(file), spec.version)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chats, lexicon, started = chat_eval.chat_prompts(), lexicons.load(), time.monotonic()
    port = launcher.free_port()
    argv = launcher.fairsteer_argv(args.model, {label: file for label, (file, _) in labels.items()}, port)
    server = launcher.ServerProcess(argv, port, out / "chat-server.log", ready_timeout=READY_TIMEOUT_S,
                                    stop_grace=STOP_GRACE_S)
    try:
        with server:
            base, steered = _sample(server.url, list(labels), strengths, args, chats)
    except launcher.ServerStartError as exc:
        raise UsageError(f"the evaluation {exc.reason}; its log is {server.log_path}") from None
    with open(out / "chat-outputs.jsonl", "w") as f:
        f.writelines(json.dumps({"adapter": label, **asdict(o)}, ensure_ascii=False) + "\n"
                     for label, outputs in ((None, base), *steered.items()) for o in outputs)
    adapters = {}
    for label, (file, version) in labels.items():
        rows = chat_eval.summarize(base + steered[label], chats, lexicon, seed=args.seed)
        adapters[label] = {"file": file, "version": version, "rows": rows, "targets": chat_eval.targets(rows)}
    report = {"task": "chat", "model": args.model, "settings": {
        "strengths": strengths, "samples": args.chat_samples, "max_tokens": args.chat_max_tokens,
        "seed": args.seed, "neutral_prompts": sum(g is None for g in chats.genders),
        "stated_prompts": sum(g is not None for g in chats.genders)},
        "adapters": adapters, "eval_minutes": round((time.monotonic() - started) / 60, 1)}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    chat_eval.plot({label: result["rows"] for label, result in adapters.items()}, out / "chat.png")
    _print_summary(adapters)
    print(f"wrote {out / 'report.json'} and {out / 'chat.png'} in {report['eval_minutes']} min")
    return 0


def _sample(url: str, labels: list[str], strengths: list[float], args, chats) -> tuple[list, dict[str, list]]:
    """(strength-0 outputs, {adapter: outputs at the other strengths}). Strength 0 is sampled once, naming
    the first adapter: every request and seed is then the one a run with that adapter alone sends."""
    from server import audit

    model = _served_model(url)

    def sample(adapter: str, at: list[float]) -> list:
        if not at:
            return []
        config = audit.AuditConfig(url=url, model=model, out=Path(args.out), strengths=tuple(at),
                                   adapter=adapter, api_key=os.environ.get("FAIRSTEER_API_KEY"),
                                   samples=args.chat_samples, max_tokens=args.chat_max_tokens, seed=args.seed,
                                   max_requests=10**6)
        return asyncio.run(audit.sample(config, chats.prompts))[0]

    base = sample(labels[0], [s for s in strengths if s == 0])
    return base, {label: sample(label, [s for s in strengths if s != 0]) for label in labels}


def _print_summary(adapters: dict[str, dict]) -> None:
    def fmt(figure: dict) -> str:
        return "n/a" if figure["value"] is None else f"{figure['value']:.3f}"

    print(f"{'adapter':>10} {'ω':>5} {'gap':>7} {'BLS r':>7} {'female share':>12} {'gendered':>8} {'stated acc':>10}")
    for label, result in adapters.items():
        for r in result["rows"]:
            print(f"{label:>10} {r['strength']:>5g} {fmt(r['occupation_gap']):>7} {fmt(r['bls_correlation']):>7} "
                  f"{fmt(r['female_share']):>12} {fmt(r['gendered_rate']):>8} {fmt(r['stated_accuracy']):>10}")
        for t in result["targets"]:
            print(f"{label} at ω = {t['strength']:g}: {targets_verdict(t['met'])}")


def _served_model(url: str) -> str:
    with urllib.request.urlopen(url + "/v1/models", timeout=30) as response:
        return json.load(response)["data"][0]["id"]
