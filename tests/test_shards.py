"""Classifying in shards of connections (analyze/shards.py), in one process or several,
gives what classifying the capture whole gives: the same Parquet tables and the same
summary.json, on every corpus recording that has more than one 4-tuple."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from retranscope.analyze import shards
from retranscope.analyze.capture import read_capture
from retranscope.analyze.outputs import write_outputs
from retranscope.analyze.pipeline import analyze

CORPUS = Path(__file__).resolve().parent / "fixtures" / "corpus"


def _several_tuples() -> list[Path]:
    out = []
    for d in sorted(CORPUS.iterdir()):
        if not (d / "capture.pcap").exists():
            continue
        packets = read_capture(d / "capture.pcap").packets
        if len(np.unique(shards.tuple_hash(packets))) > 1:
            out.append(d)
    return out


RECORDINGS = _several_tuples()


def _outputs(capture, jobs: int, out: Path) -> dict[str, object]:
    write_outputs(analyze(capture=capture, jobs=jobs), out)
    got: dict[str, object] = {
        name: pq.read_table(out / name) for name in ("retransmits.parquet", "flows.parquet")
    }
    got["summary.json"] = (out / "summary.json").read_text()
    return got


def _assert_same(got: dict, want: dict, how: str) -> None:
    for name, table in want.items():
        if name == "summary.json":
            assert got[name] == table, f"{how}: summary.json differs"
            continue
        differ = [c for c in table.column_names if not table.column(c).equals(got[name].column(c))]
        assert got[name].column_names == table.column_names, f"{how}: {name} columns"
        assert not differ, f"{how}: {name} differs in {differ}"


def test_corpus_has_recordings_of_several_connections():
    assert len(RECORDINGS) >= 20


def test_shard_count():
    assert shards.shard_count(1000, 2) == 1  # small: whole
    assert shards.shard_count(1_300_000, 1) == 1  # one process: whole up to 4M packets
    assert shards.shard_count(1_300_000, 2) == 2
    assert shards.shard_count(13_000_000, 1) == -(-13_000_000 // shards.SHARD_PACKETS)


@pytest.mark.parametrize("recording", RECORDINGS, ids=lambda p: p.name)
def test_shards_give_what_the_whole_capture_gives(recording, tmp_path, monkeypatch):
    capture = read_capture(recording / "capture.pcap")
    whole = _outputs(capture, 1, tmp_path / "whole")  # small: never sharded by default
    monkeypatch.setattr(shards, "SHARD_MIN_PACKETS", 0)
    monkeypatch.setattr(shards, "SERIAL_SHARDS_MIN_PACKETS", 0)
    # one shard per 4-tuple (the first packet borrowed by all but one), in this process
    monkeypatch.setattr(shards, "SHARD_PACKETS", 1)
    _assert_same(_outputs(capture, 1, tmp_path / "each"), whole, "a shard per 4-tuple")
    # two shards, the second on a forked worker
    monkeypatch.setattr(shards, "SHARD_PACKETS", 1 << 30)
    _assert_same(_outputs(capture, 2, tmp_path / "two"), whole, "two processes")


def test_shards_are_balanced_and_keep_both_directions_together():
    packets = read_capture(CORPUS / "multi_flow_rtt50" / "capture.pcap").packets
    shard = shards.assign_shards(packets, 2)
    assert shard is not None and set(np.unique(shard).tolist()) == {0, 1}
    h = shards.tuple_hash(packets)
    for value in np.unique(h):
        assert len(np.unique(shard[h == value])) == 1  # a 4-tuple is in one shard
    swapped = dict(packets)
    for a, b in (("saddr_hi", "daddr_hi"), ("saddr_lo", "daddr_lo"), ("sport", "dport")):
        swapped[a], swapped[b] = packets[b], packets[a]
    assert np.array_equal(shards.tuple_hash(swapped), h)  # either direction, one hash
    assert shards.assign_shards(packets, 1) is None


def test_every_shard_starts_at_the_captures_first_packet():
    """classify_table times a timeout the capture began in from the capture's first
    packet: each shard is given it (then its flow is dropped from the merge)."""
    from retranscope.analyze.pipeline import classify_part

    packets = read_capture(CORPUS / "multi_flow_rtt50" / "capture.pcap").packets
    seen: list[tuple[int, int]] = []

    def spy(sub, too_big):
        seen.append((int(sub["ts_ns"].min()), len(sub["frame"])))
        return classify_part(sub, too_big)

    shard = shards.assign_shards(packets, 3)
    merged = shards.classify_sharded(packets, None, shard, spy, jobs=1)
    whole = classify_part(packets, None)[1]
    assert len(seen) == 3
    assert all(t == int(packets["ts_ns"].min()) for t, _ in seen)
    assert sum(n for _, n in seen) == len(packets["frame"]) + 2  # two borrowed copies
    for name in ("flow_id", "rev_flow_id", "conn_id", "first_frame"):
        assert np.array_equal(merged.flows[name], whole.flows[name])
    assert np.array_equal(merged.wire["frame"], whole.wire["frame"])
