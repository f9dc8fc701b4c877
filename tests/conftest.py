"""Shared fixtures. Real-kernel tests (marked `root`) need root, BPF, network namespaces
and nftables; they are skipped with the reason when the machine cannot do that, and CI
(a root machine with all of it) runs them all."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def _lab_capable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "nft", "tcpdump"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not Path(f"/lib/modules/{os.uname().release}/build").exists():
        return "needs kernel headers (./setup.sh)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "needs bcc (./setup.sh)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True)
    if probe.returncode != 0:
        return "network namespaces unavailable"
    return None


LAB_SKIP = _lab_capable()


def pytest_collection_modifyitems(config, items):
    if LAB_SKIP is None:
        return
    marker = pytest.mark.skip(reason=f"real-kernel test: {LAB_SKIP}")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(marker)


class Recorded:
    """Each scenario recorded once per test session (recorder + lab + real loss)."""

    def __init__(self, base: Path):
        self.base = base
        self.runs: dict[str, object] = {}

    def __call__(self, name: str):
        if name not in self.runs:
            from retranscope.lab.recorded import record_scenario
            from retranscope.lab.scenarios import SCENARIOS

            self.runs[name] = record_scenario(SCENARIOS[name], self.base / name)
        return self.runs[name]


@pytest.fixture(scope="session")
def recorded(tmp_path_factory) -> Recorded:
    return Recorded(tmp_path_factory.mktemp("recorded"))
