"""The analyzer's outputs, column by column, against the digests in tests/fixtures/golden.json
(tests/golden.py): every corpus recording, capture alone, events alone and both. A
restructuring must leave them byte-identical; a change of behaviour rewrites the file in a
commit that says why."""

from __future__ import annotations

import json

import golden
import pytest

REFERENCE = json.loads(golden.GOLDEN.read_text()) if golden.GOLDEN.exists() else {}


def _moved(want: dict, got: dict) -> list[str]:
    moved = [
        f"{table}.{col}"
        for table in ("retransmits", "flows")
        for col in sorted(set(want[table]) | set(got[table]))
        if want[table].get(col) != got[table].get(col)
    ]
    return moved + (["summary.json"] if want["summary"] != got["summary"] else [])


@pytest.mark.parametrize("recording", golden.recordings(), ids=lambda p: p.name)
def test_outputs_match_golden(recording, tmp_path):
    assert recording.name in REFERENCE, "tests/golden.py has not digested this recording"
    for mode in golden.MODES:
        got = golden.analyze_digests(recording, mode, tmp_path / mode)
        moved = _moved(REFERENCE[recording.name][mode], got)
        assert not moved, f"{mode}: outputs differ from the golden digests in {moved}"


@pytest.mark.parametrize("recording", golden.recordings(), ids=lambda p: p.name)
def test_spilled_outputs_match_golden(recording, tmp_path, monkeypatch):
    """Every corpus recording spilled to disk (as captures from 64 MiB are), read in three
    parts by three processes (capture/split.py, as a pcap file of 64 MiB or more is with
    --decode-jobs 2 or more), classified in shards of ~300 packets and its outputs
    streamed from them in row groups of 7 rows (analyze/streamed.py): the digests of the
    recording analyzed whole, in memory, by one process."""
    from retranscope.analyze import outputs, spill
    from retranscope.analyze.capture import split

    monkeypatch.setattr(spill, "SHARD_PACKETS", 300)
    monkeypatch.setattr(outputs, "ROW_GROUP_ROWS", 7)
    monkeypatch.setattr(split, "SPLIT_MIN_PART_BYTES", 1)
    joined = []
    absorb = spill._Spiller.absorb
    monkeypatch.setattr(
        spill._Spiller, "absorb", lambda self, *a: joined.append(1) or absorb(self, *a)
    )
    out = tmp_path / "spilled"
    got = golden.analyze_digests(recording, "capture", out, spill=True, decode_jobs=3)
    assert joined, "the capture was read by one process"
    moved = _moved(REFERENCE[recording.name]["capture"], got)
    assert not moved, f"spilled: outputs differ from the golden digests in {moved}"
