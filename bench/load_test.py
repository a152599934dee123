"""Bounded async load test of a running `fairsteer serve`: isolation under load, latency, errors.

    python bench/load_test.py --url http://127.0.0.1:8000 --model NAME [--api-key KEY] \\
        [--requests 400] [--concurrency 32] [--adapters mix,boost] [--seed 0]

Many concurrent clients mix `fairness_strength` (0 .. 1.5) and adapters, completions and chat, streaming
and not, n = 1 and n = 2, short and long prompts, greedy and sampled requests, and clients that hang up
mid-stream. Before the load, every distinct greedy request is run ALONE once; under load every greedy
request must return exactly the same token ids (batched = solo: steering never leaks between batch rows,
also not from a client that hung up). A stream that sends an error event or ends without `[DONE]` has
failed. Prints requests, concurrency, duration, errors and p50/p99 latency; exits 1 when any request
failed or any greedy output differed.

`run_load` is also what tests/reliability uses, with small bounded counts.
"""

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass, field

import httpx

SHORT_PROMPTS = ["The doctor said", "Hi", "The nurse told the mechanic that", "Paris is", "Once upon a time"]
LONG_PROMPT = " ".join(["The engineer reviewed the design with the manager and the secretary."] * 4)  # ~100 tokens
STRENGTHS = (0.0, 0.0, 0.25, 0.5, 1.0, 1.5)


@dataclass(frozen=True)
class Job:
    endpoint: str            # "completions" | "chat/completions"
    prompt: str
    adapter: str | None
    strength: float
    stream: bool
    n: int
    greedy: bool
    hang_up: bool            # read the first chunk of the stream, then close the connection
    max_tokens: int = 12

    def body(self, model: str) -> dict:
        body = {"model": model, "max_tokens": self.max_tokens, "n": self.n, "stream": self.stream,
                "return_token_ids": True, "fairness_strength": self.strength}
        body.update({"temperature": 0.0} if self.greedy else {"temperature": 1.0, "seed": 7})
        if self.adapter:
            body["steering"] = self.adapter
        if self.endpoint == "completions":
            body["prompt"] = self.prompt
        else:
            body["messages"] = [{"role": "user", "content": self.prompt}]
        return body

    def solo_key(self) -> "Job":
        """Greedy output depends only on endpoint, prompt, adapter and strength."""
        return Job(self.endpoint, self.prompt, self.adapter, self.strength, False, 1, True, False, self.max_tokens)


@dataclass
class Result:
    job: Job
    ok: bool
    latency: float
    tokens: tuple[int, ...] | None = None      # choice 0's token ids (None for a hang-up)
    version: str | None = None                  # x-fairsteer-version: the adapter version that served it
    error: str | None = None


@dataclass
class Report:
    requests: int
    concurrency: int
    duration: float
    results: list[Result] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Result]:
        return [r for r in self.results if not r.ok]

    def percentile(self, q: float) -> float:
        done = sorted(r.latency for r in self.results if r.ok and not r.job.hang_up)
        return done[min(len(done) - 1, int(q * len(done)))] if done else float("nan")

    def summary(self) -> str:
        greedy = sum(1 for r in self.results if r.job.greedy and not r.job.hang_up)
        hang_ups = sum(1 for r in self.results if r.job.hang_up)
        return (f"requests {self.requests}  concurrency {self.concurrency}  duration {self.duration:.1f} s  "
                f"errors {len(self.errors)}  p50 {self.percentile(0.5) * 1000:.0f} ms  "
                f"p99 {self.percentile(0.99) * 1000:.0f} ms  greedy checked {greedy}  "
                f"mismatches {len(self.mismatches)}  hang-ups {hang_ups}")


def make_jobs(count: int, adapters: list[str], seed: int = 0,
              strengths: tuple[float, ...] = STRENGTHS) -> list[Job]:
    rng = random.Random(seed)
    jobs = []
    for _ in range(count):
        adapter = rng.choice([None, *adapters]) if adapters else None
        strength = rng.choice(strengths) if adapter else 0.0
        stream = rng.random() < 0.5
        greedy = rng.random() < 0.7
        jobs.append(Job(endpoint=rng.choice(["completions", "chat/completions"]),
                        prompt=LONG_PROMPT if rng.random() < 0.2 else rng.choice(SHORT_PROMPTS),
                        adapter=adapter, strength=strength, stream=stream,
                        n=1 if greedy or rng.random() < 0.5 else 2, greedy=greedy,
                        hang_up=stream and rng.random() < 0.15))
    return jobs


async def call(client: httpx.AsyncClient, model: str, job: Job, timeout: float = 120.0) -> Result:
    """One request; never raises: failures come back as Result(ok=False, error=...)."""
    start = time.monotonic()
    url = f"/v1/{job.endpoint}"
    try:
        if not job.stream:
            r = await client.post(url, json=job.body(model), timeout=timeout)
            if r.status_code != 200:
                return Result(job, False, time.monotonic() - start, error=f"HTTP {r.status_code}: {r.text[:200]}")
            data = r.json()
            choice = min(data["choices"], key=lambda c: c["index"])
            return Result(job, True, time.monotonic() - start, tuple(choice.get("token_ids") or ()),
                          r.headers.get("x-fairsteer-version"))
        return await _stream(client, url, model, job, start, timeout)
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        return Result(job, False, time.monotonic() - start, error=f"{type(exc).__name__}: {exc}")


async def _stream(client, url, model, job, start, timeout) -> Result:
    tokens: list[int] = []
    async with client.stream("POST", url, json=job.body(model), timeout=timeout) as r:
        if r.status_code != 200:
            text = (await r.aread()).decode(errors="replace")
            return Result(job, False, time.monotonic() - start, error=f"HTTP {r.status_code}: {text[:200]}")
        version = r.headers.get("x-fairsteer-version")
        done = False
        async for line in r.aiter_lines():
            done = done or line == "data: [DONE]"
            if not line.startswith("data: {"):
                continue
            if job.hang_up:  # leave mid-stream: the server must abort the request and clear its row
                return Result(job, True, time.monotonic() - start, None, version)
            event = json.loads(line[6:])
            if "error" in event:  # an error after the 200 header: the stream failed part-way
                return Result(job, False, time.monotonic() - start, error=f"stream error: {str(event)[:200]}")
            for choice in event.get("choices") or ():
                if choice.get("index", 0) == 0:
                    tokens += choice.get("token_ids") or []
    if not done:
        return Result(job, False, time.monotonic() - start, error="stream ended without data: [DONE]")
    return Result(job, True, time.monotonic() - start, tuple(tokens), version)


def client_for(url: str, api_key: str | None, concurrency: int) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(base_url=url, headers=headers,
                             limits=httpx.Limits(max_connections=concurrency + 4))


async def solo_runs(client, model: str, jobs: list[Job]) -> dict[Job, tuple[int, ...]]:
    """Each distinct greedy request, alone (one at a time)."""
    reference = {}
    for key in dict.fromkeys(j.solo_key() for j in jobs if j.greedy):
        result = await call(client, model, key)
        if not result.ok:
            raise RuntimeError(f"solo run failed: {result.error}")
        reference[key] = result.tokens
    return reference


async def run_load(url: str, model: str, jobs: list[Job], concurrency: int, api_key: str | None = None,
                   reference: dict | None = None, during=None) -> Report:
    """Solo references (unless given), then all `jobs` with at most `concurrency` in flight.

    `during`, if given, is an async callable run concurrently with the load (e.g. adapter reloads).
    Greedy results are compared to `reference[job.solo_key()]`; a reference keyed by (job, version) is
    used instead when present, for runs where the adapter version changes under load.
    """
    async with client_for(url, api_key, concurrency) as client:
        if reference is None:
            reference = await solo_runs(client, model, jobs)
        gate = asyncio.Semaphore(concurrency)

        async def bounded(job: Job) -> Result:
            async with gate:
                return await call(client, model, job)

        start = time.monotonic()
        tasks = [asyncio.gather(*(bounded(j) for j in jobs))]
        if during is not None:
            tasks.append(during())
        results, *_ = await asyncio.gather(*tasks)
        report = Report(len(jobs), concurrency, time.monotonic() - start, list(results))
    report.mismatches = compare_greedy(report.results, reference)
    return report


def compare_greedy(results: list[Result], reference: dict) -> list[str]:
    """Each greedy result that differs from its solo run, as a line; hang-ups and failures are skipped.

    `reference` maps job.solo_key() to token ids, or (job.solo_key(), version) where the adapter version
    changed during the run (preferred when present).
    """
    mismatches = []
    for r in results:
        if not r.ok or not r.job.greedy or r.job.hang_up:
            continue
        expected = reference.get((r.job.solo_key(), r.version), reference.get(r.job.solo_key()))
        if r.tokens != expected:
            mismatches.append(f"{r.job} (version {r.version}): got {r.tokens}, alone {expected}")
    return mismatches


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", required=True, help="the served model name (GET /v1/models)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--adapters", default="", help="comma-separated adapter names to mix (default: none)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    adapters = [a for a in args.adapters.split(",") if a]
    jobs = make_jobs(args.requests, adapters, args.seed)
    report = asyncio.run(run_load(args.url, args.model, jobs, args.concurrency, args.api_key))
    print(report.summary())
    for r in report.errors[:10]:
        print("error:", r.job, r.error)
    for line in report.mismatches[:10]:
        print("mismatch:", line)
    return 1 if report.errors or report.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
