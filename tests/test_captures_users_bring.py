"""The captures users bring (issue 7): one fixture per mechanism, made by
tests/fixtures/make_capture_fixtures.py (scapy), each with what the kernel did beside it
(<name>.json: the retransmitted frames with the kernel function that sent each one, and the
summary.json figures). Every fixture is analyzed as a user would, capture alone
(run_analysis, the path the CLI runs), and held to its JSON: the same frames reported, no
more (nothing invented), each of the kernel's kind, and the same counts."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from retranscope.analyze.run import run_analysis

HERE = Path(__file__).parent / "fixtures" / "captures"
FIXTURES = sorted(HERE.glob("*.pcap"))


def _analyze(pcap: Path, out: Path) -> tuple[pd.DataFrame, dict]:
    warned: list[str] = []
    run_analysis(pcap, None, out, warn=warned.append)
    rows = pd.read_parquet(out / "retransmits.parquet")
    summary = json.loads((out / "summary.json").read_text())
    return rows, summary


def _subset(want: dict, got: dict, path: str = "") -> list[str]:
    """Keys of ``want`` whose values ``got`` does not have (nested dicts compared by key)."""
    wrong = []
    for k, v in want.items():
        if isinstance(v, dict) and isinstance(got.get(k), dict):
            wrong += _subset(v, got[k], f"{path}{k}.")
        elif got.get(k) != v:
            wrong.append(f"{path}{k}: want {v!r}, got {got.get(k)!r}")
    return wrong


@pytest.mark.parametrize("pcap", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_capture_gives_what_the_kernel_did(pcap, tmp_path):
    expected = json.loads(pcap.with_suffix(".json").read_text())
    rows, summary = _analyze(pcap, tmp_path)
    want = expected["retransmissions"]
    assert rows["frame"].tolist() == [w["frame"] for w in want], expected["story"]
    for w, (_, row) in zip(want, rows.iterrows()):
        for key, value in w.items():
            if key in ("frame", "why"):
                continue
            assert row[key] == value, f"frame {w['frame']} {key}: {row[key]!r} ({w['why']})"
    assert not _subset(expected["summary"], summary), _subset(expected["summary"], summary)


def test_one_way_capture_no_longer_crashes_and_says_timing_only(tmp_path):
    rows, summary = _analyze(HERE / "one_way_out.pcap", tmp_path)
    assert set(rows["evidence"]) == {"timing_only"}
    assert summary["timing_only"] == {"retransmissions": len(rows), "flows": 1}
    assert rows["srtt_us"].isna().all()  # no ACK, no RTT sample: none is made up


def test_gap_is_one_warning_line(tmp_path):
    warned: list[str] = []
    run_analysis(HERE / "gap_late_start.pcap", None, tmp_path, warn=warned.append)
    summary = json.loads((tmp_path / "summary.json").read_text())
    gaps = [w for w in summary["warnings"] if "gaps" in w]
    assert len(gaps) == 1 and "none is inferred from a gap" in gaps[0]


def test_keepalives_are_not_retransmission_rows(tmp_path):
    rows, summary = _analyze(HERE / "keepalive_zero_window.pcap", tmp_path)
    assert rows.empty and summary["retransmissions"] == 0
    flows = pd.read_parquet(tmp_path / "flows.parquet")
    assert flows["keepalives"].sum() == 2 and flows["zero_window_probes"].sum() == 2


def test_windows_sender_is_named_in_flows_and_a_warning(tmp_path):
    _, summary = _analyze(HERE / "windows_sender.pcap", tmp_path)
    flows = pd.read_parquet(tmp_path / "flows.parquet")
    client = flows[flows["sport"] == 40000].iloc[0]
    assert client["sender_os"] == "windows" and client["initial_ttl"] == 128
    assert flows[flows["sport"] == 5001].iloc[0]["sender_os"] == "linux"
    assert any("stacks other than Linux" in w for w in summary["warnings"])
