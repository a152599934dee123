"""`fairsteer audit`: which genders does a live deployment's output use, per strength? -> DIR/report.json, audit.png

    fairsteer audit --url http://127.0.0.1:8000 --model smollm2-135m-instruct --strengths 0,0.5,1 --out DIR
    fairsteer audit --url http://vllm:8000 --model M --strengths 0 --out DIR     (any OpenAI-compatible server)
    ... --prompts FILE.jsonl      your own prompts: {"prompt": "..." | "messages": [...], "occupation": "nurse"}

Samples completions and chats over an occupation prompt set, counts gender words with the server's own group
lexicon and reports, per strength and endpoint, the rates with bootstrap 95% intervals, the occupation gap,
the correlation with the BLS female share and text health (`server.audit`, `server.audit_report`).
"""

import argparse
import os
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("audit", help="audit a live server's outputs for gender bias per strength",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="the server's address, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", required=True, help="the served model name (GET /v1/models)")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), metavar="KEY",
                   help="the server's API key (default: $OPENAI_API_KEY)")
    p.add_argument("--strengths", default="0,0.5,1",
                   help="comma-separated fairness_strength values (default 0,0.5,1; 0 only for a non-fairsteer server)")
    p.add_argument("--adapter", metavar="NAME", help="steering adapter to audit (default: the server's default)")
    p.add_argument("--prompts", type=Path, metavar="FILE.jsonl", help="your prompts (default: the built-in set)")
    p.add_argument("--samples", type=int, default=2, help="sampled outputs per prompt and strength (default 2)")
    p.add_argument("--max-tokens", type=int, default=48, help="tokens per output (default 48)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at most (default 8)")
    p.add_argument("--max-requests", type=int, default=5000,
                   help="refuse to send more requests than this in all (default 5000)")
    p.add_argument("--seed", type=int, default=0, help="base of the per-request seeds (default 0)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request (default 300)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.set_defaults(run=run)


def run(args) -> int:
    from server.audit import AuditConfig, parse_strengths
    from server.audit import run as audit

    config = AuditConfig(url=args.url, model=args.model, out=args.out, api_key=args.api_key,
                         strengths=parse_strengths(args.strengths), adapter=args.adapter, prompts=args.prompts,
                         samples=args.samples, max_tokens=args.max_tokens, temperature=args.temperature,
                         concurrency=args.concurrency, max_requests=args.max_requests, seed=args.seed,
                         timeout=args.timeout)
    report = audit(config)
    print(summary(report))
    print(f"wrote {args.out / 'report.json'}, {args.out / 'audit.png'} and {args.out / 'outputs.jsonl'}")
    return 0


def summary(report: dict) -> str:
    """One line per strength and endpoint: the figures an operator looks at first."""
    def fmt(figure: dict) -> str:
        if figure["value"] is None:
            return "n/a"
        interval = "" if figure["lo"] is None else f" [{figure['lo']:.2f}, {figure['hi']:.2f}]"
        return f"{figure['value']:.2f}{interval}"

    header = (f"{'strength':>8} {'endpoint':>11} {'outputs':>7} {'male':>6} {'female':>6} {'none':>6} "
              f"{'female share':>20} {'occupation gap':>20} {'BLS r':>20} {'distinct-2':>10} {'rep-4':>6}")
    lines = [header]
    for c in report["results"]:
        r, h = c["rates"], c["health"]
        lines.append(f"{c['strength']:>8g} {c['endpoint']:>11} {c['counts']['outputs']:>7} "
                     f"{r['male']['value'] or 0:>6.2f} {r['female']['value'] or 0:>6.2f} {r['none']['value'] or 0:>6.2f} "
                     f"{fmt(r['female_share']):>20} {fmt(c['occupation_gap']):>20} {fmt(c['bls_correlation']):>20} "
                     f"{h['distinct_2'] or 0:>10.2f} {h['repetition_rate'] or 0:>6.2f}")
    return "\n".join(lines)
