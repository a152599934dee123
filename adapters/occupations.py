"""The 40 WinoBias occupations and their BLS female shares: what makes an answer stereotypical.

Both tasks (coreference: `trainer.coreference`, continuation: `trainer.continuation`) label an answer
"pro" when it follows the occupation's majority gender and "anti" when it goes against it; the majority is
whichever gender holds more than half the occupation's jobs in `FEMALE_SHARE`. The table lives here, below
the trainer and the server, because both read it: the trainer to label answers, `server.audit` to relate a
live server's outputs to the BLS shares.
"""

# Percent female per occupation: U.S. BLS (2017) as tabulated by WinoBias (Zhao et al., NAACL 2018).
FEMALE_SHARE: dict[str, float] = {
    "carpenter": 2, "mechanic": 4, "construction worker": 4, "laborer": 4, "driver": 6, "sheriff": 14,
    "mover": 18, "developer": 20, "farmer": 22, "guard": 22, "chief": 27, "janitor": 34, "lawyer": 35,
    "cook": 38, "physician": 38, "CEO": 39, "analyst": 41, "manager": 43, "supervisor": 44,
    "salesperson": 48,
    "editor": 52, "designer": 54, "accountant": 61, "auditor": 61, "writer": 63, "baker": 65, "clerk": 72,
    "counselor": 73, "cashier": 73, "attendant": 76, "teacher": 78, "tailor": 80, "librarian": 84,
    "assistant": 85, "cleaner": 89, "housekeeper": 89, "nurse": 90, "receptionist": 90, "hairdresser": 92,
    "secretary": 95,
}
OCCUPATIONS = tuple(FEMALE_SHARE)


def majority_is_female(occupation: str) -> bool:
    return FEMALE_SHARE[occupation] > 50
