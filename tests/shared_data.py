"""Where tests find the project's read-only data (`../shared/data` beside the repository root), one place.

CI and the developers' machines have it; a clone on its own does not, and it cannot be put in the
repository (SynthBias is CC BY-NC-ND: no modified copies, see ../shared/data/README.md). A test that needs
it is marked, and where the folder is absent it is skipped with the reason, one line per test in pytest's
`-ra` summary:

    @needs_shared_data("synthbias")
    def test_...():
        data.load(str(SHARED / "synthbias"))

FAIRSTEER_REQUIRE_SHARED_DATA=1 turns the skips off, so a machine that must have the data (CI) fails
loudly where it went missing instead of skipping.
"""

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def needs_shared_data(*parts: str) -> pytest.MarkDecorator:
    """Skip the test unless ../shared/data/<parts> exists (a file or a folder)."""
    path = SHARED.joinpath(*parts)
    relative = "../shared/data/" + "/".join(parts)
    required = os.environ.get("FAIRSTEER_REQUIRE_SHARED_DATA") == "1"
    return pytest.mark.skipif(not required and not path.exists(),
                              reason=f"{relative} is absent (the project's shared data, not in a plain clone; "
                                     f"../shared/data/README.md)")
