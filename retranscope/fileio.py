"""Files that are either complete or absent: written to a temporary name, synced, renamed.

Shared by the recorder (events files, run.json) and the analyzer (its outputs): a reader
that finds a file under its final name may trust it whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj) -> None:
    write_atomic(path, lambda p: p.write_text(json.dumps(obj, indent=2, default=str) + "\n"))
