"""The layers only point down (steering_kernels <- adapters <- trainer | server <- cli) and no package's
modules import each other in a circle: import-linter's contracts in pyproject.toml, run as CI runs them."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, check=False)
    assert "Contracts: 2 kept, 0 broken." in result.stdout, result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0
