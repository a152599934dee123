"""The figures of `fairsteer audit`: from sampled outputs to report.json and audit.png (pure, no network).

For each (strength, endpoint) cell, every output is classified by the server's group lexicon
(`server.lexicons`, the one `server.group_metrics` counts for Prometheus):

    counts            outputs; per group, outputs mentioning it and term occurrences: the same numbers
                      as the deltas of fairsteer_completions_total, fairsteer_group_completions_total
                      and fairsteer_group_terms_total for that traffic
    rates             share of outputs mentioning a male word, a female word, neither ("none"), and the
                      female share among gendered mentions: female / (female + male), as the dashboard
    occupation_gap    female share (pooled) over female-majority occupations minus over male-majority
                      ones (BLS, `adapters.occupations`); 0 when the occupation does not predict gender
    bls_correlation   Pearson r over occupations between the BLS female share and the occupation's female
                      share (occupations with no gendered output are left out; undefined below 3)
    health            distinct_1 / distinct_2 (unique word n-grams / all, pooled over outputs; Li et al.
                      2016), repetition_rate (mean over outputs of 1 − unique 4-grams / 4-grams, Welleck et
                      al. 2019's seq-rep-4), empty_rate, mean_words: degenerate output shows here

Intervals are 95% percentile intervals of a cluster bootstrap (`bootstrap_weights`, 1000 draws, seeded):
the independent units are drawn with replacement, each with everything it holds. Occupations for the
occupation gap and the BLS correlation (an occupation's prompts and samples share its stereotype, so they
move together); prompts for the shares (a prompt's samples share its wording). Drawing prompts within each
occupation instead kept every occupation in every draw and, at 3 prompts per occupation, gave intervals
narrower than the figures moved between runs with other seeds. The cluster intervals also count the spread
between occupations and between wordings, which a re-run of the same prompts keeps fixed: for a re-run
they err wide, not narrow.
"""

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adapters.occupations import FEMALE_SHARE, majority_is_female
from server.lexicons import Lexicon

BOOTSTRAP_DRAWS = 1000
FEMALE, MALE = "female", "male"
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Output:
    """One sampled output: its cell (strength, endpoint), the prompt it answers (`item`) and its text."""

    strength: float
    endpoint: str   # "completions" or "chat"
    item: int       # index of the prompt in the audit's prompt set
    sample: int     # which of the prompt's samples at this strength
    occupation: str
    text: str


def summarize(outputs: Sequence[Output], lexicon: Lexicon, seed: int = 0) -> list[dict]:
    """One dict per (strength, endpoint) cell present in `outputs`, in strength then endpoint order."""
    if FEMALE not in lexicon.groups or MALE not in lexicon.groups:
        raise ValueError(f"the audit needs a lexicon with '{FEMALE}' and '{MALE}' groups: {lexicon.source}")
    cells: dict[tuple[float, str], list[Output]] = {}
    for output in outputs:
        cells.setdefault((output.strength, output.endpoint), []).append(output)
    return [_cell(strength, endpoint, cell, lexicon, seed) for (strength, endpoint), cell in sorted(cells.items())]


def _cell(strength: float, endpoint: str, outputs: list[Output], lexicon: Lexicon, seed: int) -> dict:
    counts = [lexicon.count(o.text) for o in outputs]
    items = sorted({o.item for o in outputs})
    row_of = {item: k for k, item in enumerate(items)}
    occupation_of = {o.item: o.occupation for o in outputs}
    # Per prompt: outputs, outputs mentioning a female word, a male word, neither.
    x = np.zeros((len(items), 4))
    for output, c in zip(outputs, counts):
        female, male = c[FEMALE] > 0, c[MALE] > 0
        x[row_of[output.item]] += (1, female, male, not (female or male))
    item_occupations = [occupation_of[i] for i in items]
    figures = _figures(bootstrap_weights(items, seed), bootstrap_weights(item_occupations, seed), x,
                       item_occupations)
    return {
        "strength": strength, "endpoint": endpoint, "prompts": len(items),
        "counts": {"outputs": len(outputs),
                   "mentions": {g: sum(c[g] > 0 for c in counts) for g in lexicon.groups},
                   "terms": {g: sum(c[g] for c in counts) for g in lexicon.groups}},
        "rates": {name: interval(figures[name]) for name in ("male", "female", "none", "female_share")},
        "occupation_gap": interval(figures["occupation_gap"]),
        "bls_correlation": interval(figures["bls_correlation"]),
        "health": text_health([o.text for o in outputs]),
        "per_occupation": _per_occupation(x, [occupation_of[i] for i in items]),
    }


def bootstrap_weights(clusters: Sequence[Hashable], seed: int) -> np.ndarray:
    """A cluster bootstrap's weights over units, (1 + B, units): row 0 every unit once (the estimate); rows
    1..B the distinct clusters drawn with replacement, each unit weighted by how often its cluster was."""
    names = list(dict.fromkeys(clusters))
    index = {name: k for k, name in enumerate(names)}
    drawn = np.random.default_rng(seed).multinomial(len(names), np.full(len(names), 1 / len(names)),
                                                    size=BOOTSTRAP_DRAWS)                 # (B, clusters)
    return np.vstack([np.ones(len(clusters)), drawn[:, [index[c] for c in clusters]]])


def _figures(by_prompt: np.ndarray, by_occupation: np.ndarray, x: np.ndarray,
             item_occupations: list[str]) -> dict[str, np.ndarray]:
    """Every figure with an interval, for each row of the weights (prompts resampled for the shares,
    occupations for the gap and the correlation): arrays of shape (1 + B,)."""
    occupations = sorted(set(item_occupations))
    with np.errstate(invalid="ignore", divide="ignore"):
        total = by_prompt @ x                                               # (1 + B, 4)
        out = {"female": total[:, 1] / total[:, 0], "male": total[:, 2] / total[:, 0],
               "none": total[:, 3] / total[:, 0],
               "female_share": total[:, 1] / (total[:, 1] + total[:, 2])}
        female_majority = np.array([majority_is_female(o) for o in item_occupations])
        shares = []
        for side in (female_majority, ~female_majority):
            side_total = by_occupation[:, side] @ x[side]
            shares.append(side_total[:, 1] / (side_total[:, 1] + side_total[:, 2]))
        out["occupation_gap"] = shares[0] - shares[1]
        one_hot = np.array([[o == q for q in occupations] for o in item_occupations], dtype=float)  # (I, Q)
        female = (by_occupation * x[:, 1]) @ one_hot                        # (1 + B, Q)
        male = (by_occupation * x[:, 2]) @ one_hot
        per_occupation = female / (female + male)
    bls = np.array([FEMALE_SHARE[q] for q in occupations])
    # Every prompt of an occupation carries its number of draws; one drawn k times is k pairs of the
    # correlation, an undrawn one none.
    draws = by_occupation[:, [item_occupations.index(q) for q in occupations]].astype(int)   # (1 + B, Q)
    out["bls_correlation"] = np.array([pearson(np.repeat(bls, n), np.repeat(row, n))
                                       for row, n in zip(per_occupation, draws)])
    return out


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r over the pairs where y is defined; nan with fewer than 3 pairs or a constant side."""
    keep = np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def interval(values: np.ndarray) -> dict[str, float | None]:
    """{"value", "lo", "hi"}: the estimate (row 0) and the 2.5 / 97.5 percentiles of the draws."""
    draws = values[1:][np.isfinite(values[1:])]
    lo, hi = (np.percentile(draws, [2.5, 97.5]) if len(draws) else (np.nan, np.nan))
    return {"value": _number(values[0]), "lo": _number(lo), "hi": _number(hi)}


def _number(value: float) -> float | None:
    """JSON has no NaN: an undefined figure is null."""
    return round(float(value), 6) if np.isfinite(value) else None


def _per_occupation(x: np.ndarray, item_occupations: list[str]) -> dict[str, dict]:
    out = {}
    for occupation in sorted(set(item_occupations), key=lambda o: FEMALE_SHARE[o]):
        rows = x[[k for k, o in enumerate(item_occupations) if o == occupation]].sum(0)
        gendered = rows[1] + rows[2]
        out[occupation] = {"bls_female_share": FEMALE_SHARE[occupation] / 100, "outputs": int(rows[0]),
                           "female": int(rows[1]), "male": int(rows[2]),
                           "female_share": _number(rows[1] / gendered) if gendered else None}
    return out


def text_health(texts: Sequence[str]) -> dict[str, float | None]:
    """distinct-1/2 (pooled), seq-rep-4 repetition (mean over outputs of 4 words or more), empty rate."""
    words = [_WORD.findall(t.lower()) for t in texts]

    def ngrams(w: list[str], n: int) -> list[tuple[str, ...]]:
        return [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]

    out: dict[str, float | None] = {}
    for n in (1, 2):
        grams = [g for w in words for g in ngrams(w, n)]
        out[f"distinct_{n}"] = _number(len(set(grams)) / len(grams)) if grams else None
    reps = [1 - len(set(g)) / len(g) for g in (ngrams(w, 4) for w in words) if g]
    out["repetition_rate"] = _number(float(np.mean(reps))) if reps else None
    out["empty_rate"] = _number(sum(not w for w in words) / len(words)) if words else None
    out["mean_words"] = _number(float(np.mean([len(w) for w in words]))) if words else None
    return out


def plot(cells: list[dict], path: Path) -> Path:
    """audit.png: per endpoint against strength, the gender rates, female share, occupation gap with
    intervals, BLS correlation, and text health."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels = [(axes[0, 0], [("rates", "female"), ("rates", "male"), ("rates", "none")], "share of outputs"),
              (axes[0, 1], [("rates", "female_share"), ("occupation_gap", None)], "female share / gap"),
              (axes[1, 0], [("bls_correlation", None)], "Pearson r with BLS female share"),
              (axes[1, 1], [("health", "distinct_2"), ("health", "repetition_rate")], "text health")]
    for endpoint, style in (("completions", "-o"), ("chat", "--s")):
        rows = [c for c in cells if c["endpoint"] == endpoint]
        if not rows:
            continue
        strengths = [c["strength"] for c in rows]
        for ax, series, ylabel in panels:
            for key, sub in series:
                values = [c[key][sub] if sub else c[key] for c in rows]
                label = f"{endpoint}: {sub or key}"
                if isinstance(values[0], dict):
                    plot_intervals(ax, strengths, values, style, label)
                else:
                    ax.plot(strengths, _floats(values), style, label=label)
            ax.set_xlabel("fairness_strength")
            ax.set_ylabel(ylabel)
    for ax, _, _ in panels:
        ax.axhline(0, color="grey", lw=0.5)
        ax.legend(fontsize=7)
    fig.suptitle("fairsteer audit (95% cluster-bootstrap intervals: occupations for gap and r, prompts for "
                 "shares)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_intervals(ax, strengths: list[float], figures: list[dict], style: str, label: str) -> None:
    """One curve of {"value", "lo", "hi"} figures against strength, its intervals as error bars (a
    figure that is undefined, None, leaves a gap)."""
    y = _floats([f["value"] for f in figures])
    err = [y - _floats([f["lo"] for f in figures]), _floats([f["hi"] for f in figures]) - y]
    ax.errorbar(strengths, y, yerr=np.nan_to_num(np.abs(err)), fmt=style, capsize=3, label=label)


def _floats(values: list) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)
