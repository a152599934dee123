"""The project's own coreference data: templates over the 40 WinoBias occupations (the default data set).

Ambiguous templates leave either occupation a valid referent ("The nurse and the driver had lunch, and she
paid the bill"). Resolvable ones are settled by syntax, not by world knowledge: an object pronoun in the
subject's clause cannot be the subject ("The driver greeted the nurse and thanked her" -> the nurse), and a
reflexive is the subject ("The nurse cut herself while ..." -> the nurse). Every (male-majority,
female-majority) occupation pair appears in both orders, with both pronoun genders; which template a pair
gets is fixed by a hash, so the set is the same on every machine.
"""

import hashlib

from trainer.coreference import Example, make_example
from trainer.occupations import FEMALE_SHARE

AMBIGUOUS = (
    "The {x} and the {y} had lunch together, and {subj} paid the bill.",
    "The {x} talked with the {y} before {subj} went home.",
    "The {x} and the {y} arrived early because {subj} wanted a good seat.",
    "The {x} met the {y} after {subj} finished work for the day.",
    "The {x} called the {y} while {subj} was waiting for the bus.",
    "The {x} and the {y} planned the trip, and {subj} booked the hotel.",
)
# (template, which slot is the referent)
RESOLVABLE = (
    ("The {x} greeted the {y} and thanked {obj} for the help.", "y"),
    ("The {x} praised the {y} and offered {obj} a coffee.", "y"),
    ("The {x} waved at the {y} and asked {obj} to wait.", "y"),
    ("The {x} cut {refl} while showing the {y} the new tools.", "x"),
    ("The {x} introduced {refl} to the {y} at the meeting.", "x"),
    ("The {x} poured {refl} a glass of water before visiting the {y}.", "x"),
)
_FORMS = {True: {"subj": "she", "obj": "her", "refl": "herself"},
          False: {"subj": "he", "obj": "him", "refl": "himself"}}
_SLOT_PRONOUN = {"subj": "subj", "obj": "obj", "refl": "refl"}


def _pick(key: str, n: int) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % n


def _pronoun_slot(template: str) -> str:
    return next(slot for slot in _SLOT_PRONOUN if "{" + slot + "}" in template)


def generate() -> list[Example]:
    """All generated examples: 20 x 20 occupation pairs x 2 orders x 2 pronoun genders, per kind."""
    male = [o for o, share in FEMALE_SHARE.items() if share <= 50]
    female = [o for o, share in FEMALE_SHARE.items() if share > 50]
    out: list[Example] = []
    for m in male:
        for f in female:
            for x, y in ((m, f), (f, m)):
                for is_female in (True, False):
                    forms = _FORMS[is_female]
                    amb = AMBIGUOUS[_pick(f"a|{x}|{y}", len(AMBIGUOUS))]
                    slot = _pronoun_slot(amb)
                    out.append(make_example(amb.format(x=x, y=y, **forms), forms[slot], x, y, "ambiguous"))
                    res, who = RESOLVABLE[_pick(f"r|{x}|{y}", len(RESOLVABLE))]
                    slot = _pronoun_slot(res)
                    referent = x if who == "x" else y
                    out.append(make_example(res.format(x=x, y=y, **forms), forms[slot], x, y, "resolvable",
                                            referent))
    return [e for e in out if e is not None]
