"""Soak test: a real `fairsteer serve` under bounded mixed traffic for --minutes, adapters replaced under it.

    nice -n 10 .venv/bin/python bench/soak.py --minutes 30 --out build/soak.json

The server runs on 127.0.0.1 with --adapter-dir, --admin-key and two adapters, `left` and `right`, built
here (seeded random a, b at every site: isolation does not depend on their values). `--concurrency`
clients send requests back to back (bench/load_test.py's mix: completions and chat, streaming and not,
n = 1/2, greedy and sampled, 15% of streams hung up after their first chunk; strengths 0-1 over the two
adapters), while every `--flip-every` seconds one adapter is replaced by its other file through
`PUT /v1/admin/adapters/NAME`. After the traffic, greedy requests (every distinct one, up to --check-max)
are run again alone on the adapter version that served them, and each greedy output must equal its solo
run (load_test.compare_greedy). Reports requests served, errors by kind, admin flips, latency, the resident
memory of every server process (API server and engine core) at start and end, and every output that
differed. Exits 1 on any error, failed flip or difference. Not part of `make test`.

Model: SmolLM2-135M-Instruct where `fairsteer model pull` has it, else the tiny random Llama of
tests/tiny_models.py (`--model tiny|smollm2-135m-instruct|PATH`).
"""

import argparse
import asyncio
import json
import os
import random
import secrets
import sys
import tempfile
import time
from collections import Counter
from itertools import count
from pathlib import Path

import httpx
import psutil
from transformers import AutoConfig

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from server_process import ServerProcess, fairsteer_argv, free_port

from adapters import io
from adapters.model_store import default_cache_dir, resolve_model
from adapters.spec import ModelIdentity, random_spec
from bench.load_test import Job, Result, call, client_for, compare_greedy, make_jobs

STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
FILES = {"left": ("left-1.safetensors", "left-2.safetensors"),     # adapter -> the two files it flips between
         "right": ("right-1.safetensors", "right-2.safetensors")}
SMOLLM2 = "smollm2-135m-instruct"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="how long the traffic runs")
    p.add_argument("--model", default="auto", help=f"'auto' ({SMOLLM2} if pulled, else tiny), 'tiny', "
                                                   "an alias or a folder")
    p.add_argument("--concurrency", type=int, default=8, help="clients sending back to back")
    p.add_argument("--flip-every", type=float, default=20.0, help="seconds between adapter replacements")
    p.add_argument("--check-max", type=int, default=400, help="at most this many distinct greedy requests "
                                                              "re-run alone at the end (a random sample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    return p.parse_args(argv)


def prepare(model: str, workdir: Path) -> tuple[str, Path, dict[str, str]]:
    """(model folder, adapter folder, {file name: adapter version})."""
    if model == "auto":
        model = SMOLLM2 if (default_cache_dir() / SMOLLM2).is_dir() else "tiny"
    if model == "tiny":
        from tiny_models import save_tiny_model

        model = str(save_tiny_model(workdir / "tiny-llama"))
    else:
        model = resolve_model(model)
    identity = ModelIdentity.from_config(AutoConfig.from_pretrained(model))
    folder = workdir / "adapters"
    folder.mkdir()
    versions = {}
    for seed, file in enumerate(f for pair in FILES.values() for f in pair):
        spec = random_spec(identity, file.removesuffix(".safetensors"), seed, scale_a=0.2, scale_b=0.5,
                           base_model=model, method="constructed")
        versions[file] = io.load(io.save(spec, folder / file)).version
    return model, folder, versions


def server_rss(server: ServerProcess) -> dict[str, float]:
    """Resident memory in MiB of the server process and each of its children (the engine core), by pid."""
    root = psutil.Process(server.proc.pid)
    sizes = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            sizes[f"{proc.pid} {proc.name()}"] = proc.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            pass
    return sizes


def error_kind(error: str) -> str:
    """'HTTP 503', 'ReadTimeout', 'stream error', ...: the part of load_test's error text before details."""
    return " ".join(error.split()[:2]).rstrip(":") if error.startswith("HTTP ") else error.split(":")[0]


def _pair(r: Result) -> tuple:
    """(solo request, the adapter version it must be re-run on; None for an unsteered request)."""
    steered = r.job.adapter is not None and r.job.strength > 0
    return r.job.solo_key(), r.version if steered else None


class Soak:
    """The traffic, the flips and the memory samples of one run, and their summary."""

    def __init__(self, server: ServerProcess, model: str, versions: dict[str, str], args: argparse.Namespace):
        self.server, self.model, self.versions, self.args = server, model, versions, args
        self.current = {name: files[0] for name, files in FILES.items()}   # adapter -> file it serves now
        self.results: list[tuple[float, Result]] = []                      # (seconds since start, result)
        self.flips: list[dict] = []
        self.phase = "traffic"                                               # or "solo check"
        self.rss: list[tuple[float, dict[str, float]]] = []
        self.start = time.monotonic()
        self.deadline = self.start + 60 * args.minutes

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    async def client(self, worker: int, client: httpx.AsyncClient) -> None:
        for chunk in count():
            for job in make_jobs(100, list(FILES), seed=self.args.seed * 10_000 + worker * 1000 + chunk,
                                 strengths=STRENGTHS):
                if time.monotonic() >= self.deadline:
                    return
                self.results.append((self.elapsed(), await call(client, self.model, job)))

    async def flipper(self, admin: httpx.AsyncClient) -> None:
        names = list(FILES)
        for i in count():
            await asyncio.sleep(min(self.args.flip_every, max(0.0, self.deadline - time.monotonic())))
            if time.monotonic() >= self.deadline:
                return
            name = names[i % len(names)]
            a, b = FILES[name]
            await self.put(admin, name, b if self.current[name] == a else a)

    async def put(self, admin: httpx.AsyncClient, name: str, file: str) -> bool:
        started = time.monotonic()
        try:
            r = await admin.put(f"/v1/admin/adapters/{name}", json={"file": file})
            ok = r.status_code == 200 and r.json().get("version") == self.versions[file]
            detail = r.text[:200]
        except httpx.HTTPError as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        self.flips.append({"t": round(self.elapsed(), 1), "phase": self.phase, "adapter": name, "file": file,
                           "ok": ok, "seconds": round(time.monotonic() - started, 3),
                           **({} if ok else {"error": detail})})
        if ok:
            self.current[name] = file
        return ok

    async def sample_memory(self) -> None:
        while time.monotonic() < self.deadline:
            await asyncio.sleep(min(60.0, max(0.0, self.deadline - time.monotonic())))
            self.rss.append((self.elapsed(), server_rss(self.server)))

    async def run(self, api_key: str, admin_key: str) -> None:
        self.rss.append((0.0, server_rss(self.server)))
        admin = httpx.AsyncClient(base_url=self.server.url, timeout=120,
                                  headers={"Authorization": f"Bearer {admin_key}"})
        async with client_for(self.server.url, api_key, self.args.concurrency) as client, admin:
            await asyncio.gather(*(self.client(w, client) for w in range(self.args.concurrency)),
                                 self.flipper(admin), self.sample_memory())
        self.rss.append((self.elapsed(), server_rss(self.server)))

    async def solo_check(self, api_key: str, admin_key: str) -> dict:
        """Re-run distinct greedy requests alone, each steered one on the version that served it; compare.

        Unsteered requests (no adapter, or strength 0) are the base model whatever version their header
        names (the default adapter's), so they are re-run once, on any version.
        """
        served = [r for _, r in self.results if r.ok and r.job.greedy and not r.job.hang_up]
        pairs = sorted({_pair(r) for r in served}, key=repr)
        pairs = random.Random(self.args.seed).sample(pairs, min(len(pairs), self.args.check_max))
        file_of = {version: file for file, version in self.versions.items()}
        reference, problems = {}, []
        self.phase = "solo check"
        admin = httpx.AsyncClient(base_url=self.server.url, timeout=120,
                                  headers={"Authorization": f"Bearer {admin_key}"})
        async with client_for(self.server.url, api_key, 1) as client, admin:
            for key, version in sorted(pairs, key=lambda p: (str(p[0].adapter), str(p[1]), repr(p[0]))):
                wanted = file_of[version] if version is not None else None
                stale = wanted and self.current[key.adapter] != wanted
                if stale and not await self.put(admin, key.adapter, wanted):
                    problems.append(f"could not load {wanted} as {key.adapter} for the solo runs")
                    continue
                solo = await call(client, self.model, key)
                if not solo.ok or (version is not None and solo.version != version):
                    problems.append(f"solo run of {key} failed or ran on {solo.version}, not {version}: "
                                    f"{solo.error}")
                    continue
                reference[(key, version) if version is not None else key] = solo.tokens
        chosen = set(pairs)
        checked = [r for r in served if _pair(r) in chosen]
        outputs_by_version: dict[Job, list] = {}                    # steered request -> output per version
        for k, tokens in reference.items():
            if isinstance(k, tuple):
                outputs_by_version.setdefault(k[0], []).append(tokens)
        both = [outs for outs in outputs_by_version.values() if len(outs) > 1]
        return {"greedy_served": len(served), "distinct": len({_pair(r) for r in served}),
                "distinct_rerun": len(reference), "greedy_checked": len(checked),
                # steered requests re-run on both versions of their adapter, and how many of them gave
                # different outputs: the check can tell the versions apart
                "rerun_on_both_versions": len(both), "versions_differ": sum(len(outs) > 1 for outs in both),
                "mismatches": compare_greedy(checked, reference), "solo_problems": problems}

    def summary(self, check: dict) -> dict:
        results = [r for _, r in self.results]
        done = sorted(r.latency for r in results if r.ok and not r.job.hang_up)
        kinds = Counter(("chat" if r.job.endpoint.startswith("chat") else "completions")
                        + (" stream" if r.job.stream else "") + (" hung up" if r.job.hang_up else "")
                        for r in results if r.ok)
        minutes = Counter(int(t // 60) for t, r in self.results if r.ok)
        first, last = self.rss[0][1], self.rss[-1][1]
        return {
            "traffic_seconds": round(self.rss[-1][0], 1), "requests": len(results),
            "served": sum(r.ok for r in results), "served_by_kind": dict(sorted(kinds.items())),
            "served_per_minute": [minutes[m] for m in range(max(minutes, default=-1) + 1)],
            "errors_by_kind": dict(Counter(error_kind(r.error) for r in results if not r.ok)),
            "error_examples": [f"{r.job}: {r.error}" for r in results if not r.ok][:10],
            "latency_ms": {q: round(1000 * done[min(len(done) - 1, int(f * len(done)))]) if done else None
                           for q, f in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))},
            "flips": {"during_traffic": sum(f["ok"] and f["phase"] == "traffic" for f in self.flips),
                      "for_solo_runs": sum(f["ok"] and f["phase"] != "traffic" for f in self.flips),
                      "failed": [f for f in self.flips if not f["ok"]],
                      "seconds_max": max((f["seconds"] for f in self.flips), default=None)},
            "rss_mib": {p: {"start": round(first[p], 1), "end": round(last[p], 1) if p in last else None}
                        for p in first},
            "rss_series_mib": [{"t": round(t), **{p: round(v, 1) for p, v in sizes.items()}}
                               for t, sizes in self.rss],
            **check,
        }


def print_table(s: dict) -> None:
    flips = s["flips"]
    rows = [("traffic", f"{s['traffic_seconds']:.0f} s, {s['requests']} requests"),
            ("served", f"{s['served']}  " + ", ".join(f"{k} {v}" for k, v in s["served_by_kind"].items())),
            ("errors", ", ".join(f"{k} {v}" for k, v in s["errors_by_kind"].items()) or "0"),
            ("latency", ", ".join(f"{k} {v} ms" for k, v in s["latency_ms"].items())),
            ("adapter flips", (f"{flips['during_traffic']} under traffic (+{flips['for_solo_runs']} for the "
                               f"solo runs), {len(flips['failed'])} failed, slowest "
                               f"{flips['seconds_max']} s")),
            ("versions differ", (f"{s['versions_differ']} of {s['rerun_on_both_versions']} steered requests "
                                 "re-run on both versions of their adapter")),
            ("greedy = solo", (f"{s['greedy_checked'] - len(s['mismatches'])} / {s['greedy_checked']} "
                               f"checked ({s['distinct_rerun']} of {s['distinct']} distinct requests re-run "
                               f"alone, {s['greedy_served']} greedy served)"))]
    rows += [(f"RSS {proc}", f"{v['start']:.0f} MiB -> {v['end']:.0f} MiB" if v["end"] is not None
              else f"{v['start']:.0f} MiB -> (gone)") for proc, v in s["rss_mib"].items()]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    for line in s["mismatches"][:10] + s["solo_problems"][:10] + s["error_examples"]:
        print("  ", line)


def main(argv=None) -> int:
    args = parse_args(argv)
    api_key, admin_key = f"soak-{secrets.token_hex(12)}", f"soak-admin-{secrets.token_hex(12)}"
    with tempfile.TemporaryDirectory(prefix="fairsteer-soak-") as tmp:
        workdir = Path(tmp)
        model, folder, versions = prepare(args.model, workdir)
        port = free_port()
        adapters = {name: str(folder / files[0]) for name, files in FILES.items()}
        argv_ = fairsteer_argv(model, adapters, port, fairsteer_options=("--adapter-dir", str(folder),
                                                                         "--max-adapters", "4"))
        env = {"FAIRSTEER_API_KEY": api_key, "FAIRSTEER_ADMIN_KEY": admin_key}
        server = ServerProcess(argv_, port, workdir / "server.log", env=env)
        load_start = os.getloadavg()
        try:
            server.start().wait_ready(900)       # SmolLM2 on a busy 2-core machine can take minutes
            soak = Soak(server, model, versions, args)
            asyncio.run(soak.run(api_key, admin_key))
            summary = soak.summary(asyncio.run(soak.solo_check(api_key, admin_key)))
            alive = server.proc.poll() is None
            summary |= {"server_alive_at_end": alive, "server_log_tail": None if alive else server.log_tail()}
        finally:
            server.stop()
    summary = {"model": model, "minutes": args.minutes, "concurrency": args.concurrency,
               "flip_every_s": args.flip_every, "seed": args.seed, "cpus": os.cpu_count(),
               "niceness": os.nice(0), "load_average_start": load_start, "load_average_end": os.getloadavg(),
               **summary}
    print_table(summary)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1))
    failed = summary["errors_by_kind"] or summary["flips"]["failed"] or summary["mismatches"]
    return 1 if failed or summary["solo_problems"] or not summary["server_alive_at_end"] else 0


if __name__ == "__main__":
    sys.exit(main())
