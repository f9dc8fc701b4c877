"""Headless Chromium for the report tests, started one way everywhere: Debian's chromium
with the flags docs/kernel-notes.md found to work here, plus the ones that keep Chromium's
own background traffic (updates, first run, sync) out of tests about network requests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]


def chromium(profile: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run Chromium once with a fresh profile directory; stdout as text."""
    argv = [str(CHROMIUM), *CHROMIUM_ARGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def dump_dom(page: Path, profile: Path) -> str:
    """The page's DOM after its scripts ran."""
    return chromium(profile, "--dump-dom", page.as_uri()).stdout


def screenshot(page: Path, shot: Path, profile: Path, size: str = "1300,2400") -> Path:
    chromium(profile, f"--window-size={size}", f"--screenshot={shot}", page.as_uri())
    return shot
