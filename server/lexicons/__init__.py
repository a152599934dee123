"""Group lexicons: which demographic groups a generated text refers to, by whole-word term matching.

A lexicon is a JSON file (the default, `gender.json`, sits beside this module):

    {
      "format_version": 1,
      "axis": "gender",                      # label value; lowercase letters, digits, _ (≤ 32 chars)
      "description": "free text, optional",
      "groups": {                            # 1..16 groups, names like the axis
        "female": ["she", "her", "woman", ...],
        "male": ["he", "him", "man", ...],
        "neutral": ["they", "person", ...]
      }
    }

Terms are matched as whole words (no word character directly before or after), case-insensitively
(Unicode case folding); a term may hold several words ("young woman") and inner hyphens or apostrophes.
A term may belong to one group only. Where terms overlap in the text, the longest wins and each
character counts once. `load()` checks all of this at start-up and raises `LexiconError` naming the
file, the field and the fix, so a bad lexicon never reaches request time.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

from server.errors import ServeConfigError

FORMAT_VERSION = 1
DEFAULT_PATH = Path(__file__).with_name("gender.json")
MAX_GROUPS = 16  # bounds the `group` label's cardinality
MAX_TERMS_PER_GROUP = 2000
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
# Word characters, optionally joined by single spaces, hyphens or apostrophes: whole-word matching needs
# a term to start and end with a word character.
_TERM = re.compile(r"\w+(?:[ '’-]\w+)*")
_KEYS = {"format_version", "axis", "description", "groups"}


class LexiconError(ServeConfigError):
    """A group lexicon file that cannot be used; the message names the file, the problem and the fix.

    A `ServeConfigError`, so `fairsteer serve` prints it without a traceback and exits with status 2."""


@dataclass(frozen=True)
class Lexicon:
    """A validated lexicon: `groups` maps group name → its terms (case-folded, in file order)."""

    axis: str
    groups: dict[str, tuple[str, ...]]
    source: str

    def __post_init__(self) -> None:
        group_of = {term: group for group, terms in self.groups.items() for term in terms}
        object.__setattr__(self, "_group_of", group_of)
        pattern = r"(?<!\w)" + _trie_pattern(group_of) + r"(?!\w)"
        object.__setattr__(self, "_regex", re.compile(pattern, re.IGNORECASE))

    def count(self, text: str) -> dict[str, int]:
        """Term occurrences per group in `text` (every group present, zeros included)."""
        counts = dict.fromkeys(self.groups, 0)
        for match in self._regex.finditer(text):
            group = self._group_of.get(_fold(match.group(0)))
            if group is not None:  # a case-insensitive match whose fold differs (rare Unicode): skip
                counts[group] += 1
        return counts


def _fold(term: str) -> str:
    # One spelling per term: case-folded, typographic apostrophe as ASCII, runs of spaces as one.
    return " ".join(term.casefold().replace("’", "'").split())


def _trie_pattern(terms) -> str:
    """One regex for all terms, shaped as their prefix trie: "s(?:he|ister)" instead of "she|sister".

    A flat alternation of a few hundred terms is tried term by term at every position (about 2 µs per
    character here); the trie tries one character per level. Greedy optional tails with backtracking give
    the longest term that ends on a word boundary. Inner spaces match any whitespace run; an apostrophe
    matches either spelling of it.
    """
    trie: dict = {}
    for term in terms:
        node = trie
        for char in term:
            node = node.setdefault(char, {})
        node[""] = {}  # a term ends here

    def emit(node: dict) -> str:
        alternatives = [_char_pattern(char) + emit(child) for char, child in sorted(node.items()) if char]
        if not alternatives:
            return ""
        body = alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"
        return f"(?:{body})?" if "" in node else body

    return emit(trie)


def _char_pattern(char: str) -> str:
    return {" ": r"\s+", "'": "['’]"}.get(char, re.escape(char))


def load(path: str | Path | None = None) -> Lexicon:
    """Read and validate a lexicon file (None: the default gender lexicon)."""
    path = Path(path) if path is not None else DEFAULT_PATH
    where = f"group lexicon {path}"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LexiconError(f"{where} does not exist; pass an existing JSON file to --group-lexicon") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LexiconError(f"{where} cannot be read ({exc}); check the path and its permissions") from None
    except json.JSONDecodeError as exc:
        raise LexiconError(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") \
            from None
    return parse(raw, source=str(path))


def parse(raw: object, source: str = "<lexicon>") -> Lexicon:
    """Validate a decoded lexicon document; see the module docstring for the format."""
    where = f"group lexicon {source}"
    if not isinstance(raw, dict):
        raise LexiconError(f"{where}: the top level must be a JSON object with 'format_version', 'axis' "
                           f"and 'groups', got {type(raw).__name__}")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise LexiconError(f"{where}: unknown field(s) {unknown}; allowed fields are {sorted(_KEYS)}")
    if raw.get("format_version") != FORMAT_VERSION:
        raise LexiconError(f"{where}: 'format_version' must be {FORMAT_VERSION}, got "
                           f"{raw.get('format_version')!r}; add \"format_version\": {FORMAT_VERSION}")
    axis = _check_name(raw.get("axis"), f"{where}: 'axis'")
    groups = raw.get("groups")
    if not isinstance(groups, dict) or not groups:
        raise LexiconError(f"{where}: 'groups' must be a non-empty object mapping group name to a list of "
                           "terms, e.g. {\"female\": [\"she\"], \"male\": [\"he\"]}")
    if len(groups) > MAX_GROUPS:
        raise LexiconError(f"{where}: {len(groups)} groups, at most {MAX_GROUPS} are allowed (each group is "
                           "a metric label value); split the axis into several lexicons")
    seen: dict[str, str] = {}
    checked: dict[str, tuple[str, ...]] = {}
    for group, terms in groups.items():
        _check_name(group, f"{where}: group name")
        checked[group] = _check_terms(terms, group, where, seen)
    return Lexicon(axis=axis, groups=checked, source=source)


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise LexiconError(f"{what} {name!r} is not allowed: use 1-32 lowercase letters, digits or '_', "
                           "starting with a letter (it becomes a Prometheus label value)")
    return name


def _check_terms(terms: object, group: str, where: str, seen: dict[str, str]) -> tuple[str, ...]:
    if not isinstance(terms, list) or not terms:
        raise LexiconError(f"{where}: group '{group}' must be a non-empty list of terms (strings)")
    if len(terms) > MAX_TERMS_PER_GROUP:
        raise LexiconError(f"{where}: group '{group}' has {len(terms)} terms; at most {MAX_TERMS_PER_GROUP}")
    folded = []
    for term in terms:
        if not isinstance(term, str) or not _TERM.fullmatch(" ".join(term.split())):
            raise LexiconError(
                f"{where}: term {term!r} in group '{group}' is not a word or phrase: a term must start and end "
                "with a letter or digit, with only single spaces, hyphens or apostrophes inside")
        key = _fold(term)
        if key in seen:
            raise LexiconError(f"{where}: term {term!r} appears in group '{seen[key]}' and again in group "
                               f"'{group}'; a term may belong to one group only: remove one")
        seen[key] = group
        folded.append(key)
    return tuple(folded)
