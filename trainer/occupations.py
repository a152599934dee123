"""The 40 WinoBias occupations and their BLS female shares, for the trainer's modules.

The table itself is `adapters.occupations` (one layer down, so that the server's audit reads the same one).
"""

from adapters.occupations import FEMALE_SHARE, OCCUPATIONS, majority_is_female

__all__ = ["FEMALE_SHARE", "OCCUPATIONS", "majority_is_female"]
