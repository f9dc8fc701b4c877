"""Retransmissions the kernel made without an event, from the sockets' own totals."""

from __future__ import annotations

import numpy as np

from retranscope.accounting import GapTracker, gap_intervals, unreported_segments

# Two sockets. Socket 1: events of 2, 1, 3 segments; its total jumps by 4 (not 1) at the
# second event, so 3 segments were resent between the first two events with no event.
# Socket 2: its first event already carries 5 segments resent before it (total 6, segs 1).
SK = np.array([1, 2, 1, 1, 2])
TS = np.array([10, 11, 20, 30, 40])
SEGS = np.array([2, 1, 1, 3, 2])
TOTAL = np.array([2, 6, 6, 9, 8])
ALL = np.ones(5, dtype=bool)


def test_gap_between_two_events_of_one_socket_and_before_a_first_event():
    r = unreported_segments(SK, TS, SEGS, TOTAL, ALL)
    assert r == {"between_events": 3, "before_first_event": 5, "sockets_with_gaps": 1}


def test_no_gap_when_every_retransmission_has_its_event():
    total = np.array([2, 1, 3, 6, 3])
    r = unreported_segments(SK, TS, SEGS, total, ALL)
    assert r["between_events"] == 0 and r["before_first_event"] == 0


def test_a_reused_socket_address_starts_over():
    # Socket address 1 freed and reused: the new socket's total starts low again.
    sk, ts = np.array([1, 1, 1]), np.array([1, 2, 3])
    segs, total = np.array([1, 1, 1]), np.array([5, 6, 1])
    r = unreported_segments(sk, ts, segs, total, np.ones(3, bool))
    assert r["between_events"] == 0 and r["before_first_event"] == 4


def test_tracker_fed_in_batches_agrees_with_the_whole():
    g = GapTracker()
    for part in (slice(0, 2), slice(2, 4), slice(4, 5)):
        g.update(SK[part], TS[part], SEGS[part], TOTAL[part], ALL[part])
    s = g.summary()
    assert s["unreported_between_events"] == 3 and s["before_first_event"] == 5
    assert s["event_segments"] == int(SEGS.sum()) and s["sockets_with_gaps"] == 1


def test_gap_intervals_place_the_missing_retransmissions_in_time():
    from retranscope.analyze.events import address_halves

    n = len(SK)
    ev = {
        "event_type": np.full(n, "retransmit", dtype=object),
        "skaddr": SK,
        "ts_wall_ns": TS,
        "segs": SEGS,
        "total_retrans": TOTAL,
        "sport": 40000 + SK,
        "dport": np.full(n, 5001),
    }
    ev["saddr_hi"], ev["saddr_lo"] = address_halves(np.full(n, "10.0.0.1", dtype=object))
    ev["daddr_hi"], ev["daddr_lo"] = address_halves(np.full(n, "10.0.0.2", dtype=object))
    g = gap_intervals(ev)
    got = [
        [int(g[k][i]) for k in ("sport", "from_ns", "to_ns", "segments")]
        for i in range(len(g["to_ns"]))
    ]
    assert got == [[40001, 10, 20, 3]]
