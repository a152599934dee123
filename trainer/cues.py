"""Gender cues for the continuation task's resolvable items: ways a text states a person's gender.

Five kinds, each inserted where a template names its occupation ("the {o}"):

    appositive  "The nurse, a father of three, was late ..."
    title       "Mr Okafor, the nurse, was late ..."          (Mr / Ms / Mrs + surname)
    kinship     "My uncle, the nurse, was late ..."           (kinship and role nouns)
    name        "Maria, the nurse, was late ..."              (a gendered first name)
    pronoun     "The nurse, still wearing his coat, was late ..."   (an earlier pronoun, same sentence)

A `Cue` is one entry of a kind with its female and male text; its `key` ("name:Maria/David") is what the
split keeps on one side, so a phrase, a first name or a surname is either trained on or evaluated, never
both (`trainer.continuation.split`). Every kind has the same number of entries, so each kind gets about
the same share of items on each side. No entry contains another's text as a whole phrase.
"""

from dataclasses import dataclass
from typing import Literal

CueKind = Literal["appositive", "title", "kinship", "name", "pronoun"]
CUE_KINDS: tuple[CueKind, ...] = ("appositive", "title", "kinship", "name", "pronoun")

APPOSITIVES = (
    ("a mother of three", "a father of three"), ("a young woman", "a young man"),
    ("a grandmother", "a grandfather"), ("a single mother", "a single father"),
    ("an elderly woman", "an elderly man"), ("a widow", "a widower"), ("a mother of two", "a father of two"),
    ("a middle-aged woman", "a middle-aged man"), ("a new mother", "a new father"),
    ("a local woman", "a local man"), ("a retired lady", "a retired gentleman"),
    ("a proud grandmother", "a proud grandfather"), ("a young mother", "a young father"),
    ("a woman from Leeds", "a man from Leeds"), ("a keen sportswoman", "a keen sportsman"),
    ("a divorced woman", "a divorced man"),
)
KINSHIP = (
    ("my aunt", "my uncle"), ("my mother", "my father"), ("my sister", "my brother"),
    ("my daughter", "my son"), ("my niece", "my nephew"), ("my grandmother", "my grandfather"),
    ("my wife", "my husband"), ("my girlfriend", "my boyfriend"), ("my stepmother", "my stepfather"),
    ("my granddaughter", "my grandson"), ("my stepdaughter", "my stepson"), ("my goddaughter", "my godson"),
    ("my ex-wife", "my ex-husband"), ("our landlady", "our landlord"), ("my godmother", "my godfather"),
    ("my stepsister", "my stepbrother"),
)
SURNAMES = ("Okafor", "Novak", "Patel", "Schmidt", "Kowalski", "Tanaka", "Moreau", "Lindqvist", "Haddad",
            "Jensen", "Costa", "O'Brien", "Nguyen", "Rossi", "Fischer", "Mensah")
FIRST_NAMES = (  # (female, male)
    ("Maria", "David"), ("Emma", "James"), ("Aisha", "Omar"), ("Sofia", "Lucas"), ("Hannah", "Thomas"),
    ("Olivia", "Daniel"), ("Priya", "Rahul"), ("Chloe", "Peter"), ("Fatima", "Ahmed"), ("Laura", "Marco"),
    ("Ingrid", "Erik"), ("Grace", "George"), ("Natalia", "Ivan"), ("Amara", "Kwame"), ("Helen", "Michael"),
    ("Julia", "Stefan"),
)
PRONOUN_PHRASES = (  # {p}: her / his
    "still wearing {p} coat", "holding {p} coffee", "who had just finished {p} shift", "who had lost {p} keys",
    "keys in {p} hand", "who had forgotten {p} umbrella", "phone in {p} pocket",
    "who had parked {p} car outside", "tired after {p} long drive", "who had hurt {p} knee",
    "fresh from {p} holiday", "who loves {p} job", "who had packed {p} bag early",
    "who was checking {p} watch", "back from {p} lunch break", "who had left {p} glasses at home",
)


@dataclass(frozen=True)
class Cue:
    """One way of stating a gender: `female` / `male` its two texts, `kind` how it enters a sentence."""

    kind: CueKind
    female: str
    male: str

    @property
    def key(self) -> str:
        """What the split keeps on one side: the entry (both genders of it, and its surname or names)."""
        return f"{self.kind}:{self.female}/{self.male}"

    def text(self, gender: str) -> str:
        return self.female if gender == "female" else self.male

    def insert(self, template: str, gender: str) -> str:
        """`template` ("... the {o} ...") with the cue stated for gender at the occupation; {o} stays."""
        phrase = self.text(gender)
        if self.kind in ("appositive", "pronoun"):
            replacement = f"the {{o}}, {phrase},"
        else:  # the cue names the person, the occupation follows as an appositive
            replacement = f"{phrase}, the {{o}},"
        at = template.lower().index("the {o}")
        if at == 0:
            replacement = replacement[0].upper() + replacement[1:]
        return template[:at] + replacement + template[at + len("the {o}"):]


def _titles() -> tuple[Cue, ...]:
    # Ms and Mrs alternate, so both forms of address are used; the surname is the entry.
    return tuple(Cue("title", f"{('Ms', 'Mrs')[k % 2]} {s}", f"Mr {s}") for k, s in enumerate(SURNAMES))


CUES: tuple[Cue, ...] = (
    *(Cue("appositive", f, m) for f, m in APPOSITIVES),
    *_titles(),
    *(Cue("kinship", f, m) for f, m in KINSHIP),
    *(Cue("name", f, m) for f, m in FIRST_NAMES),
    *(Cue("pronoun", p.format(p="her"), p.format(p="his")) for p in PRONOUN_PHRASES),
)
assert all(sum(c.kind == k for c in CUES) == len(APPOSITIVES) for k in CUE_KINDS), "same count per kind"
