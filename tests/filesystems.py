"""A small filesystem of our own, for tests of what a full disk does (root: tmpfs)."""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def small_fs(path: Path, size: str):
    """A tmpfs of ``size`` (mount's syntax: "2m", "1200k") mounted at ``path`` (made
    here), unmounted at the end, also on failure."""
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
