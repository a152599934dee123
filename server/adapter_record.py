"""The operator's adapter set, recorded so that a restarted server serves what was configured.

With --adapter-dir, every admin change (load, replace, unload) is recorded before it takes effect, in
`<first --adapter-dir>/.fairsteer-adapters.json` (or `--adapter-record FILE`):

    {"format": "fairsteer-adapter-record", "format_version": 1,
     "command_line": {NAME: FILE, ...},            the --adapter table the record was made under
     "default_adapter": NAME,
     "adapters": {NAME: {"file": ABSOLUTE FILE, "version": CONTENT HASH}, ...}}

written atomically (a temporary file in the same folder, fsync, rename), so a crash leaves the old record
or the new one, never a mix. At start-up, when the --adapter table is the one the record was made under,
the recorded set is served instead of it; a recorded file that is gone or holds another version stops
start-up, naming it (restore the file, or delete the record to start from --adapter). A different
--adapter table means the operator changed the configuration: it wins, and the record starts again.
"""

import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.errors import ServeConfigError

RECORD_NAME = ".fairsteer-adapters.json"
FORMAT = "fairsteer-adapter-record"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class RecordedAdapter:
    file: str
    version: str


@dataclass(frozen=True)
class AdapterRecord:
    path: Path
    command_line: dict[str, str]

    def restore(self) -> tuple[dict[str, str], dict[str, str], str | None]:
        """(adapter table to load, expected version per name, default adapter) at start-up.

        The table is `command_line` itself when there is no record or it was made under another one.
        """
        recorded = self._read()
        if recorded is None:
            return self.command_line, {}, None
        if recorded["command_line"] != self.command_line:
            print(f"fairsteer serve: the --adapter options differ from those {self.path} was recorded under; "
                  "serving the command line's adapters and recording them anew", file=sys.stderr)
            return self.command_line, {}, None
        adapters = {name: RecordedAdapter(**entry) for name, entry in recorded["adapters"].items()}
        for name, entry in adapters.items():
            if not os.path.isfile(entry.file):
                raise ServeConfigError(f"adapter {name!r} recorded in {self.path} (loaded at run time) has "
                                       f"vanished: {entry.file}. Restore the file, or delete {self.path} to "
                                       "start from the --adapter options")
        return ({name: e.file for name, e in adapters.items()}, {name: e.version for name, e in adapters.items()},
                recorded["default_adapter"])

    def save(self, adapters: dict[str, Any], default_adapter: str | None) -> None:
        """Record `adapters` (name -> server.registry.LoadedAdapter) atomically; raises OSError."""
        data = {"format": FORMAT, "format_version": FORMAT_VERSION, "command_line": self.command_line,
                "default_adapter": default_adapter,
                "adapters": {name: {"file": str(Path(a.path).resolve()), "version": a.version}
                             for name, a in adapters.items()}}
        fd, tmp = tempfile.mkstemp(prefix=".fairsteer-record-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(data, out, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        directory = os.open(self.path.parent, os.O_RDONLY)  # the rename itself survives a power cut
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _read(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = None
        if not _readable(data):
            raise ServeConfigError(f"{self.path} is not a fairsteer adapter record this version can read; "
                                   "move it away to start from the --adapter options")
        return data


def _readable(data: Any) -> bool:
    return (isinstance(data, dict) and data.get("format") == FORMAT
            and data.get("format_version") == FORMAT_VERSION and isinstance(data.get("command_line"), dict)
            and isinstance(data.get("adapters"), dict)
            and all(isinstance(e, dict) and set(e) == {"file", "version"} for e in data["adapters"].values()))


def check_versions(record: AdapterRecord, expected: dict[str, str], loaded: dict[str, Any]) -> None:
    """Every restored adapter must be the version recorded (name -> LoadedAdapter)."""
    for name, version in expected.items():
        if loaded[name].version != version:
            raise ServeConfigError(f"adapter {name!r} recorded in {record.path} was version {version}, but "
                                   f"{loaded[name].path} now holds version {loaded[name].version}: the file "
                                   f"changed. Restore it, or delete {record.path} to start from the --adapter "
                                   "options")
