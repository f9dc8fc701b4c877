"""A connection is classified the same whatever other connections the capture holds.

Big captures are classified in shards (analyze/shards.py): each holds some of the
capture's 4-tuples, and the outputs must be those of the whole capture, for any --jobs.
So no stage may let one flow's answer depend on another flow's packets. Each case below
did, until stop 21 (found by an audit of the stages): a flag or a search over all
flows together that gave a flow another answer beside some flows than alone.
"""

from __future__ import annotations

import re

import numpy as np
from packet_builder import Trace

from retranscope.analyze import shards
from retranscope.analyze.pipeline import classify_capture, classify_part
from retranscope.analyze.table import Nullable

# renumbered by the merge, or frames: they differ with the capture around the connection
_IDS = {"pkt", "frame", "flow_id", "orig_frame", "trigger_frame", "burst"}
_FLOW_IDS = {"flow_id", "rev_flow_id", "conn_id", "first_frame", "last_frame"}


def _value(col, i):
    if isinstance(col, Nullable):
        return col.values[i].item() if col.valid[i] else None
    v = col[i]
    return v.item() if hasattr(v, "item") else v


def _rows_of(packets: dict, cport: int) -> tuple[list, list]:
    """The classified rows and the flows of the connection with client port ``cport``,
    without their ids and frame numbers."""
    _, flows, table = classify_capture(packets)
    mine = np.flatnonzero((flows["sport"] == cport) | (flows["dport"] == cport))
    rows = []
    for i in np.flatnonzero(np.isin(table["flow_id"], mine)).tolist():
        row = {k: _value(c, i) for k, c in table.items() if k not in _IDS}
        row["cause_text"] = re.sub(r"frame \d+", "frame N", str(row["cause_text"]))
        rows.append(row)
    fl = [{k: _value(c, f) for k, c in flows.items() if k not in _FLOW_IDS} for f in mine]
    return rows, fl


def _capture(*conns) -> dict:
    """(conn keyword arguments, function writing its packets) of each connection."""
    tr = Trace()
    for kw, write in conns:
        write(tr.conn(**kw))
    return tr.packets()


def _same_alone_and_beside(write, others: list[list], cport: int = 40000, edit=None) -> None:
    """The connection ``write`` makes (client port ``cport``) classified alone and beside
    each list of ``others`` (their times place them before or after it); ``edit``: what
    is done to each capture's packets before."""
    edit = edit or (lambda p: p)
    alone = _rows_of(edit(_capture(({}, write))), cport)
    assert alone[0], "the connection has retransmissions to compare"
    for beside in others:
        together = _rows_of(edit(_capture(({}, write), *beside)), cport)
        assert together == alone, [kw for kw, _ in beside]


def _recut(c) -> None:
    # new data re-cut: [501, 3501) after [1, 3001), so capture order is not sequence
    # order among the segments sent in order; then a re-send of [601, 1001)
    t = c.handshake(0, 10)
    c.send(t + 5, 1, 1000)
    c.send(t + 5.1, 1001, 1000)
    c.send(t + 5.2, 2001, 1000)
    c.send(t + 5.3, 501, 3000)
    c.send(t + 300, 601, 400)
    c.ack(t + 310, 3501)


def _with_out_of_order_original(c) -> None:
    c.send(1.0, 1, 100)
    c.send(1.01, 201, 100)
    c.send(1.02, 101, 100)  # fills the hole 10 µs later: an out-of-order original
    c.ack(30, 301)


def _plain_rto(start_ms: float):
    def write(c) -> None:
        t = c.handshake(start_ms, 10)
        c.send(t + 1, 1, 100)
        c.send(t + 1.1, 101, 100)
        c.send(t + 400, 101, 100)
        c.ack(t + 410, 201)

    return write


def test_originals_are_searched_by_sequence_whatever_the_other_flows():
    # Sorted by sequence only when some flow of the capture had an out-of-order original
    # (retrans.py, classify._Originals); and with more than 32 flows queried, the search
    # ran over all flows' keys at once (table.GroupedSearch), which agrees with a search
    # of the flow's own rows only where those are sorted.
    beside = [[({"cport": 40001}, _with_out_of_order_original)]]
    many = [({"cport": 41000 + i}, _plain_rto(-1.0 - 0.001 * i)) for i in range(34)]
    beside.append(many)
    _same_alone_and_beside(_recut, beside)


def test_packets_out_of_a_flow_whose_first_transmissions_are_unseen():
    # The estimate for a flow with no first transmission in the capture (bytes out in
    # MSS units) was used only when no flow of the capture had one; beside one that did,
    # it was 1, which changed the probe timeout (+200 ms instead of +2 ms).
    def joined_late(c) -> None:
        c.ack(1.0, 1, sack=((5001, 10001),))
        for i in range(4):
            c.send(11.0 + 0.01 * i, 1 + 1000 * i, 1000)
        c.ack(21.0, 1001, sack=((5001, 10001),))
        c.send(121.0, 1001, 1000)

    def other(c) -> None:
        c.send(0.5, 1, 100)
        c.send(0.6, 101, 100)
        c.send(300.0, 101, 100)
        c.ack(310.0, 201)

    _same_alone_and_beside(joined_late, [[({"cport": 40001}, other)]])


def test_a_dsack_matches_the_same_copy_of_two_sent_at_once():
    # Of two copies of a retransmission with the same time, the D-SACK is matched to one
    # by a sort of every flow's candidates together: an unstable one moved the tie.
    def twice(c) -> None:
        t = c.handshake(0, 10)
        for i in range(5):
            c.send(t + 5 + 20 * i, 1 + 100 * i, 100)
            c.ack(t + 15 + 20 * i, 101 + 100 * i)
        t += 200
        c.send(t, 501, 1000)
        c.send(t + 300, 501, 1000)  # an RTO re-send, captured twice at the same ns
        c.send(t + 300, 501, 1000)
        c.ack(t + 301, 1501)
        c.ack(t + 302, 1501, sack=((501, 1501),))  # D-SACK

    def dsacked(n: int):
        def write(c) -> None:
            t = c.handshake(0.5, 10)
            for i in range(n):
                c.send(t + 1 + 0.01 * i, 1 + 100 * i, 100)
            for i in range(n):
                c.send(t + 400 + 0.37 * ((i * 7919) % n), 1 + 100 * i, 100)
            c.ack(t + 600, 1 + 100 * n)
            c.ack(t + 601, 1 + 100 * n, sack=((1, 1 + 100 * n),))

        return write

    _same_alone_and_beside(twice, [[({"cport": 40001}, dsacked(n))] for n in (5, 40, 160, 320)])


def test_last_ack_of_a_far_sender_when_the_clock_steps_back():
    # Captured at the client, 20 ms from the server that sends and resends. One of the
    # client's ACKs is stamped 5-300 ms late (a clock that stepped): the search for the
    # last ACK before a time ran over times out of order, and answered by where the other
    # flows' ACKs lay.
    def far(c) -> None:
        c.syn(0)
        c.synack(20)
        c.packet(20.02, "c", seq=1, ack=1, flags=0)
        t, seq = 40.0, 1
        for _ in range(6):
            c.send(t, seq, 1000, by="s")
            c.ack(t + 0.05, seq + 1000, by="c")
            seq += 1000
            t += 40
        c.send(t, seq, 1000, by="s")
        c.send(t + 0.1, seq + 1000, 1000, by="s")
        c.ack(t + 0.15, seq + 2000, by="c")
        c.send(t + 30, seq + 1000, 1000, by="s")

    def other(start_ms: float, n_acks: int):
        def write(c) -> None:
            t = c.handshake(start_ms, 10)
            s = 1
            for i in range(n_acks):
                c.send(t + 1 + 2 * i, s, 100)
                c.ack(t + 1.5 + 2 * i, s + 100)
                s += 100
            c.send(t + 400, s - 100, 100)
            c.ack(t + 410, s)

        return write

    beside = [
        [({"cport": 41000 + i}, other(-1.0 - 0.01 * i, 3 + i)) for i in range(n_before)]
        + [({"cport": 42000 + i}, other(1.0 + 0.01 * i, 2 + i)) for i in range(n_after)]
        for n_before, n_after in ((1, 0), (0, 1), (1, 1), (2, 0), (0, 2), (3, 1))
    ]
    for which, late_ms in ((1, 300), (3, 30), (7, 5)):

        def skew(p: dict, which=which, late_ms=late_ms) -> dict:
            acks = np.flatnonzero(
                (p["sport"] == 40000) & (p["dport"] == 5001) & (p["payload_len"] == 0)
            )
            p["ts_ns"] = p["ts_ns"].copy()
            p["ts_ns"][acks[which]] += late_ms * 10**6
            return p

        _same_alone_and_beside(far, beside, edit=skew)


def test_connections_of_a_reused_port_are_numbered_alike_whole_and_in_shards():
    # conn_id: 4-tuples in order of their first packet, the connections of a 4-tuple in
    # capture order (shards.merge_parts). The whole capture numbered connections by their
    # own first packet instead (an array aliased where a copy was meant).
    def exchange(t0: float):
        def write(c) -> None:
            t = c.handshake(t0, 1)
            c.send(t + 1, 1, 100)
            c.ack(t + 2, 101)

        return write

    p = _capture(
        ({}, exchange(0)),
        ({"cport": 40001}, exchange(10)),
        ({"isn_c": 7_000_000, "isn_s": 9_000_000}, exchange(20)),  # port 40000 again
    )
    _, whole = classify_part(p, None)
    by_tuple = np.where((p["sport"] == 40000) | (p["dport"] == 40000), 0, 1)
    merged = shards.classify_sharded(p, None, by_tuple, classify_part, jobs=1)
    conn = [part.flows["conn_id"].tolist() for part in (whole, merged)]
    assert conn[0] == conn[1] == [0, 0, 2, 2, 1, 1]
