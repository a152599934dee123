"""`fairsteer eval --task chat`: sampled chats per strength through a real server -> DIR/report.json

    fairsteer eval --task chat --model smollm2-135m-instruct --adapter A.safetensors --strengths 0,0.5,1 \\
        [--chat-samples 3] [--chat-max-tokens 48] --out DIR

Starts `fairsteer serve` on 127.0.0.1 (a free port) with the model and the adapters, samples the held-out
chat prompts of `server.chat_eval` through /v1/chat/completions with the audit's client
(`server.audit.sample`), stops the server, and writes per adapter and strength the occupation gap, the BLS
correlation, the overall female share, the stated-gender accuracy (with 95% intervals) and the targets,
plus every response in DIR/chat-outputs.jsonl. The server's log is DIR/chat-server.log.
"""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from cli.main import UsageError


def run_chat(args, strengths: list[float]) -> int:
    from adapters import io
    from server import audit, chat_eval, lexicons

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
    adapters: dict[str, dict] = {}
    with _server(args.model, {k: f for k, (f, _) in labels.items()}, out / "chat-server.log") as url:
        model = _served_model(url)
        with open(out / "chat-outputs.jsonl", "w") as outputs_file:
            for label, (file, version) in labels.items():
                config = audit.AuditConfig(url=url, model=model, out=out, api_key=os.environ.get("FAIRSTEER_API_KEY"),
                                           strengths=tuple(strengths), adapter=label, samples=args.chat_samples,
                                           max_tokens=args.chat_max_tokens, seed=args.seed, max_requests=10**6)
                outputs, _ = asyncio.run(audit.sample(config, chats.prompts))
                outputs_file.writelines(json.dumps({"adapter": label, **asdict(o)}, ensure_ascii=False) + "\n"
                                        for o in outputs)
                rows = chat_eval.summarize(outputs, chats, lexicon, seed=args.seed)
                adapters[label] = {"file": file, "version": version, "rows": rows,
                                   "targets": chat_eval.targets(rows)}
    report = {"task": "chat", "model": args.model, "settings": {
        "strengths": strengths, "samples": args.chat_samples, "max_tokens": args.chat_max_tokens,
        "seed": args.seed, "neutral_prompts": sum(g is None for g in chats.genders),
        "stated_prompts": sum(g is not None for g in chats.genders)},
        "adapters": adapters, "eval_minutes": round((time.monotonic() - started) / 60, 1)}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    _print_summary(adapters)
    print(f"wrote {out / 'report.json'} in {report['eval_minutes']} min")
    return 0


def _print_summary(adapters: dict[str, dict]) -> None:
    def fmt(figure: dict) -> str:
        return "n/a" if figure["value"] is None else f"{figure['value']:.3f}"

    print(f"{'adapter':>10} {'ω':>5} {'gap':>7} {'BLS r':>7} {'female share':>12} {'gendered':>8} {'stated acc':>10}")
    for label, result in adapters.items():
        for r in result["rows"]:
            print(f"{label:>10} {r['strength']:>5g} {fmt(r['occupation_gap']):>7} {fmt(r['bls_correlation']):>7} "
                  f"{fmt(r['female_share']):>12} {fmt(r['gendered_rate']):>8} {fmt(r['stated_accuracy']):>10}")
        for t in result["targets"]:
            failed = [k for k, ok in t["met"].items() if not ok and k != "all_met"]
            verdict = "targets met" if t["met"]["all_met"] else "targets NOT met: " + ", ".join(failed)
            print(f"{label} at ω = {t['strength']:g}: {verdict}")


@contextmanager
def _server(model: str, adapters: dict[str, str], log_path: Path, timeout: float = 900) -> Iterator[str]:
    """`fairsteer serve` on 127.0.0.1 in its own session; yields its URL once healthy, stops it after."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "cli.main", "serve", "--model", model, "--host", "127.0.0.1", "--port", str(port)]
    for name, file in adapters.items():
        argv += ["--adapter", f"{name}={file}"]
    # vLLM's CPU default pins the engine to core 0 and reserves the rest; a lone server may use them all.
    env = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", **os.environ}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url, log_path, timeout)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the engine's processes share the server's session
        except ProcessLookupError:
            pass
        proc.wait(30)


def _wait_healthy(proc: subprocess.Popen, url: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UsageError(f"the evaluation server exited with status {proc.returncode} before it was ready; "
                             f"its log is {log_path}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise UsageError(f"the evaluation server was not ready after {timeout:.0f} s; its log is {log_path}")


def _served_model(url: str) -> str:
    with urllib.request.urlopen(url + "/v1/models", timeout=30) as response:
        return json.load(response)["data"][0]["id"]
