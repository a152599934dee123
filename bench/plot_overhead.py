"""Plot the steering cost curve from bench/engine_overhead.py --json files: ratio to plain vLLM vs batch size.

    .venv/bin/python bench/plot_overhead.py OUT.png RUN.json [RUN.json ...] [--clock cpu|wall]

One line per (run, arm): the median over rounds of (arm rate) / (plain rate) of the same round, so each
point compares measurements taken side by side. --clock cpu (default): tokens per CPU second of the engine's
processes; wall: tokens per wall second. A run's label is its mode and steered sites.
"""

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the file backend

STYLES = {"steered, mixed": "-o", "steered, all 0": ":s"}  # other arms (fewer sites): dashed


def round_ratios(rates: dict[str, list[float]], arm: str) -> list[float]:
    return [r / p for r, p in zip(rates[arm], rates["plain"], strict=True)]


def curves(run: dict, clock: str) -> dict[str, tuple[list[int], list[float]]]:
    """{arm: (batch sizes, median per-round ratio to plain)} of one run, every arm but plain."""
    results = run["results"]
    sizes = [result["prompts"] for result in results]
    names = [arm for arm in results[0]["rates"][clock] if arm != "plain"]
    return {arm: (sizes, [statistics.median(round_ratios(result["rates"][clock], arm)) for result in results])
            for arm in names}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args(argv)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for path in args.runs:
        run = json.loads(Path(path).read_text())
        settings = run["settings"]
        label = f"{settings['mode']}, {settings['sites']} sites" if settings["sites"] != "all" else settings["mode"]
        for arm, (sizes, ratios) in curves(run, args.clock).items():
            ax.plot(sizes, ratios, STYLES.get(arm, "--^"), label=f"{label}: {arm.removeprefix('steered, ')}")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.axhline(0.99, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent sequences")
    unit = "tokens per engine CPU-second" if args.clock == "cpu" else "tokens per second"
    ax.set_ylabel(f"{unit} / plain vLLM's\n(median of per-round ratios)")
    ax.set_title("Steering cost, SmolLM2-135M, vLLM 0.32 CPU (2 cores, shared)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
