"""The analyzer's outputs, column by column, against the digests in tests/fixtures/golden.json
(tests/golden.py): every corpus recording, capture alone, events alone and both. A
restructuring must leave them byte-identical; a change of behaviour rewrites the file in a
commit that says why."""

from __future__ import annotations

import json

import golden
import pytest

REFERENCE = json.loads(golden.GOLDEN.read_text()) if golden.GOLDEN.exists() else {}


@pytest.mark.parametrize("recording", golden.recordings(), ids=lambda p: p.name)
def test_outputs_match_golden(recording, tmp_path):
    assert recording.name in REFERENCE, "tests/golden.py has not digested this recording"
    for mode in golden.MODES:
        got = golden.analyze_digests(recording, mode, tmp_path / mode)
        want = REFERENCE[recording.name][mode]
        moved = [
            f"{table}.{col}"
            for table in ("retransmits", "flows")
            for col in sorted(set(want[table]) | set(got[table]))
            if want[table].get(col) != got[table].get(col)
        ]
        if want["summary"] != got["summary"]:
            moved.append("summary.json")
        assert not moved, f"{mode}: outputs differ from the golden digests in {moved}"
