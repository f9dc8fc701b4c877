"""Digests of what `retranscope analyze` writes for every corpus recording, in each mode
(capture alone, events alone, both): the reference that a restructuring must reproduce.

    .venv/bin/python tests/golden.py            # rewrite tests/fixtures/golden.json
    .venv/bin/pytest tests/test_golden.py       # compare against it

A digest is taken per output column (its values, as Python objects, as JSON) and of
summary.json with the input paths replaced by their role, so a difference names the
column that moved and does not depend on where the repository is checked out or on the
Parquet writer's version. Rewrite the file only in a commit that says why the outputs
changed.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).parent
CORPUS = HERE / "fixtures" / "corpus"
GOLDEN = HERE / "fixtures" / "golden.json"
MODES = ("capture", "events", "both")


def recordings() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if (p / "run.json").exists())


def _digest(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _table_digests(path: Path) -> dict[str, str]:
    table = pq.read_table(path)
    out = {"__columns__": _digest([f"{f.name}:{f.type}" for f in table.schema])}
    for name in table.column_names:
        out[name] = _digest(table.column(name).to_pylist())
    return out


def _summary_digest(path: Path, recording: Path) -> str:
    text = path.read_text().replace(str(recording), "<recording>")
    return _digest(json.loads(text))


def analyze_digests(
    recording: Path, mode: str, out: Path, spill: bool | None = None, decode_jobs: int = 1
) -> dict:
    """Analyze one recording in one mode (the production path, a function of paths) and
    digest what it wrote. ``spill``, ``decode_jobs``: run_analysis's (spill None: as it
    chooses)."""
    from retranscope.analyze.run import run_analysis

    pcap = recording / "capture.pcap" if mode in ("capture", "both") else None
    events = recording if mode in ("events", "both") else None
    try:
        run_analysis(pcap, events, out, spill=spill, decode_jobs=decode_jobs)
    except Exception as exc:  # a crash is an outcome to pin too (until it is fixed)
        return {"retransmits": {}, "flows": {}, "summary": f"raised {type(exc).__name__}"}
    return {
        "retransmits": _table_digests(out / "retransmits.parquet"),
        "flows": _table_digests(out / "flows.parquet"),
        "summary": _summary_digest(out / "summary.json", recording),
    }


def main() -> None:
    import tempfile

    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rec in recordings():
            for mode in MODES:
                out = Path(tmp) / rec.name / mode
                result.setdefault(rec.name, {})[mode] = analyze_digests(rec, mode, out)
            print(rec.name, file=sys.stderr)
    GOLDEN.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} ({len(result)} recordings)", file=sys.stderr)


if __name__ == "__main__":
    main()
