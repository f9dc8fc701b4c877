"""The corpus of lab recordings (tests/fixtures/corpus/, made by make_corpus.py): which
recordings there are, and which were captured whole on the retransmitting host (the
others were captured at the receiver, mid-path or one way, or derived with gaps: see
docs/lab.md; lab/judge.py scores those)."""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = Path(__file__).parent / "fixtures" / "corpus"


def recordings(root: Path = CORPUS) -> list[Path]:
    return sorted(p for p in root.iterdir() if (p / "run.json").exists()) if root.is_dir() else []


def whole_sender_capture(d: Path) -> bool:
    """Captured on the retransmitting host, from start to end, nothing derived."""
    meta = d / "scenario.json"
    if not meta.is_file():
        return True
    info = json.loads(meta.read_text())
    return info.get("capture_point", "sender") == "sender" and not info.get("derived")
