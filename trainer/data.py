"""Coreference data sources (`--data SPEC`) and deterministic train/eval splits.

Every source becomes a list of `trainer.coreference.Example`s, of two kinds:

    ambiguous   (SynthBias type1, WinoBias type1, generated): either occupation is a valid referent;
                `pro` is the occupation whose majority gender matches the pronoun, `anti` the other.
    resolvable  (SynthBias type2, WinoBias type2, generated): `referent` is the true answer, and it is
                either the pro- or the anti-stereotypical one.

Sources: "generated" (the default: `trainer.templates` over the 40 WinoBias occupations, so a fresh
machine can train and evaluate), a SynthBias CSV or its folder, a WinoBias-format folder; prefixes
"synthbias:PATH" / "winobias:PATH" force the reader. Licences: the shared data is read in place and split in
code; nothing here writes a modified copy. A source that cannot be read raises `trainer.errors.DataError`.
"""

import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from trainer import templates
from trainer.coreference import Example, make_example
from trainer.errors import ConfigError, DataError
from trainer.occupations import FEMALE_SHARE, OCCUPATIONS
from trainer.prompts import Kind

# ----------------------------------------------------------------------------------------------------
# Sources


def load_synthbias(path: str | Path) -> list[Example]:
    """SynthBias CSV (`type,sample,occ_1,occ_2,pronoun,is_stereotypical`); type2's referent is occ_1."""
    path = Path(path)
    if path.is_dir():
        path = path / "synthbias_data.csv"
    if not path.is_file():
        raise DataError(f"{path}: no SynthBias CSV here; pass the file or its folder "
                       "(e.g. --data ../shared/data/synthbias)")
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            kind: Kind = "ambiguous" if row["type"] == "type1" else "resolvable"
            referent = row["occ_1"] if kind == "resolvable" else None
            ex = make_example(row["sample"], row["pronoun"], row["occ_1"], row["occ_2"], kind, referent)
            if ex is not None:
                out.append(ex)
    return out


_WINOBIAS_LINE = re.compile(r"^\d+\s+(.*)$")
_BRACKETS = re.compile(r"\[([^\]]+)\]")


def parse_winobias_line(line: str, kind: Kind) -> Example | None:
    """`1 [The accountant] and the driver met because [he] ...`: brackets mark referent and pronoun."""
    m = _WINOBIAS_LINE.match(line.strip())
    if not m:
        raise DataError(f"not a WinoBias line: {line!r}")
    text = m.group(1)
    marked = _BRACKETS.findall(text)
    if len(marked) != 2:
        raise DataError(f"expected two [bracketed] spans in {line!r}")
    referent = re.sub(r"^(the|a|an)\s+", "", marked[0].strip(), flags=re.IGNORECASE)
    pronoun = marked[1].strip()
    sentence = _BRACKETS.sub(lambda g: g.group(1), text)
    others = [o for o in OCCUPATIONS if o != referent and re.search(rf"\b{re.escape(o)}\b", sentence)]
    if referent not in FEMALE_SHARE or len(others) != 1:
        return None
    return make_example(sentence, pronoun, referent, others[0], kind,
                        referent if kind == "resolvable" else None)


def load_winobias(folder: str | Path) -> list[Example]:
    """WinoBias line format: `type1-{pro,anti}.txt` (ambiguous) and `type2-{pro,anti}.txt` (resolvable)."""
    folder = Path(folder)
    if (folder / "winobias_format").is_dir():
        folder = folder / "winobias_format"
    files = sorted(folder.glob("type[12]-*.txt"))
    if not files:
        raise DataError(f"{folder}: no WinoBias files (type1-pro.txt ...) here")
    out = []
    for file in files:
        kind: Kind = "ambiguous" if file.name.startswith("type1") else "resolvable"
        for line in file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                ex = parse_winobias_line(line, kind)
                if ex is not None:
                    out.append(ex)
    return out


def load(spec: str | None) -> list[Example]:
    """Examples from a `--data` SPEC: None/"generated", "synthbias:PATH", "winobias:PATH", or a path."""
    if spec in (None, "", "generated"):
        return templates.generate()
    reader, _, rest = spec.partition(":")
    if reader in ("synthbias", "winobias") and rest:
        return load_synthbias(rest) if reader == "synthbias" else load_winobias(rest)
    path = Path(spec)
    if path.suffix == ".csv" or (path / "synthbias_data.csv").is_file():
        return load_synthbias(path)
    if path.is_dir() and (any(path.glob("type1-*.txt")) or (path / "winobias_format").is_dir()):
        return load_winobias(path)
    raise DataError(f"--data {spec!r}: not a SynthBias CSV/folder or a WinoBias-format folder. Use "
                    "'generated' (built in), 'synthbias:PATH' or 'winobias:PATH'")


# ----------------------------------------------------------------------------------------------------
# Splits


@dataclass(frozen=True)
class Splits:
    """Disjoint by construction: a sentence group (and any held-out occupation) is on one side only."""

    train: list[Example]              # ambiguous, what DSO optimises
    train_resolvable: list[Example]   # resolvable, used only for the capability (KL) term
    eval_ambiguous: list[Example]
    eval_resolvable: list[Example]


def _rank(seed: int, key: str) -> int:
    return int(hashlib.sha256(f"{seed}|{key}".encode()).hexdigest()[:15], 16)


def _balanced(examples: list[Example], n: int, seed: int) -> list[Example]:
    """Up to n examples, round-robin over occupations in hashed order, so every occupation gets its share."""
    by_occ: dict[str, list[Example]] = {}
    for e in sorted(examples, key=lambda e: _rank(seed, e.group + e.pronoun + e.occupation)):
        by_occ.setdefault(e.occupation, []).append(e)
    queues = [by_occ[o] for o in sorted(by_occ)]
    out: list[Example] = []
    depth = 0
    while len(out) < n and any(depth < len(q) for q in queues):
        out.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    return out[:n]


def split(examples: list[Example], n_train: int, n_eval: int, seed: int = 0, eval_fraction: float = 0.3,
          holdout_occupations: tuple[str, ...] = ()) -> Splits:
    """Deterministic, disjoint train/eval splits, occupation-balanced.

    Args:
        n_train: ambiguous training prompts (the paper uses 600); resolvable training prompts: n_train // 4.
        n_eval: evaluation prompts per kind (ambiguous and resolvable).
        seed: changes which sentence groups land on which side.
        eval_fraction: share of sentence groups reserved for evaluation, whatever n_train and n_eval are,
            so growing the training set never moves an evaluation prompt into it.
        holdout_occupations: occupations seen only in evaluation (any example naming one is kept out of
            training), to measure generalisation to unseen occupations.
    """
    unknown = [o for o in holdout_occupations if o not in FEMALE_SHARE]
    if unknown:
        raise ConfigError(f"--holdout-occupations: unknown occupation(s) {unknown}; known: {', '.join(OCCUPATIONS)}")
    held = set(holdout_occupations)
    cut = int(eval_fraction * 2**60)

    def is_eval(e: Example) -> bool:
        return (e.pro in held or e.anti in held) or _rank(seed, e.group) < cut  # 60-bit hash

    sides: dict[tuple[bool, str], list[Example]] = {}
    for e in examples:
        sides.setdefault((is_eval(e), e.kind), []).append(e)
    if held:  # held-out occupations appear in evaluation only, as occupations of their own examples
        for key in [(True, "ambiguous"), (True, "resolvable")]:
            sides.setdefault(key, [])
    train_amb = sides.get((False, "ambiguous"), [])
    if not train_amb and n_train > 0:
        raise DataError("the data has no ambiguous examples to train on; use SynthBias or 'generated'")
    return Splits(
        train=_balanced(train_amb, n_train, seed),
        train_resolvable=_balanced(sides.get((False, "resolvable"), []), n_train // 4, seed),
        eval_ambiguous=_balanced(sides.get((True, "ambiguous"), []), n_eval, seed),
        eval_resolvable=_balanced(sides.get((True, "resolvable"), []), n_eval, seed),
    )
