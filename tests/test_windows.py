"""A shard classified a window of rows at a time (analyze/windows.py) gives what the whole
shard gives, row for row, or says why it cannot vouch for that (and is then classified
whole): on the corpus recordings, cut into windows far smaller than their connections; on
a connection past 2**32 bytes; through the spilled analysis."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from packet_builder import Trace

from retranscope.analyze import sender, spill, windows
from retranscope.analyze.capture import chunks, read_capture
from retranscope.analyze.classify import SCAN_BLOCK, SCAN_LEVELS, rtt_estimator, rtt_state
from retranscope.analyze.pipeline import classify_part
from retranscope.analyze.run import run_analysis

CORPUS = Path(__file__).resolve().parent / "fixtures" / "corpus"
RECORDINGS = sorted(d for d in CORPUS.iterdir() if (d / "capture.pcap").exists())


def _blocks(packets: dict, size: int):
    n = len(packets["frame"])
    return (windows._take_rows(packets, np.arange(i, min(n, i + size))) for i in range(0, n, size))


def _differ(got, want) -> list[str]:
    """The columns of two shards.Parts that differ (empty: the same, row for row)."""
    out = []
    for name in ("flows", "wire", "per_flow"):
        a, b = getattr(got, name), getattr(want, name)
        if list(a) != list(b):
            return [f"{name}: columns {list(a)} vs {list(b)}"]
        out += [
            f"{name}.{c}"
            for c in a
            if len(a[c]) != len(b[c]) or not windows._same_cells(a[c], b[c]).all()
        ]
    return out + [k for k in ("acks_lost", "drop_flow") if getattr(got, k) != getattr(want, k)]


def _in_windows(
    packets: dict, window_rows: int, margin_rows: int, block: int = 777, too_big=None, into=None
):
    n = len(packets["frame"])
    first = int(packets["frame"][int(np.argmin(packets["ts_ns"]))])
    return windows.classify_in_windows(
        _blocks(packets, block), n, too_big, None, first, -1, window_rows, margin_rows, into
    )


def test_the_srtt_carried_on_from_a_top_block_is_the_whole_flows_to_the_last_bit():
    rng = np.random.default_rng(3)
    m = rng.integers(1_000, 900_000, 5_000)
    g = np.zeros(len(m), dtype=np.int64)
    whole = rtt_state(g, m)
    srtt, rto = rtt_estimator(g, m)  # the in-memory path's, which may skip the mdev passes
    assert np.array_equal(srtt, whole["srtt"]) and np.array_equal(rto, whole["rto"])
    top = SCAN_BLOCK**SCAN_LEVELS
    for at in (top, 7 * top, (len(m) // top - 1) * top):
        seed = {"on": np.zeros(len(m) - at, dtype=bool)}
        seed["on"][0] = True
        for name in ("srtt", "mdev1", "mdev2"):
            seed[name] = np.full(len(m) - at, whole["cin_" + name][at])
        seed["srtt_prev"] = np.full(len(m) - at, whole["srtt"][at - 1])
        seed["mdev1_prev"] = np.full(len(m) - at, whole["mdev1"][at - 1])
        carried = rtt_state(g[at:], m[at:], seed)
        for k in ("srtt", "mdev1", "mdev2", "rto"):
            assert np.array_equal(carried[k], whole[k][at:]), (at, k)
    # from the value at the row before instead of the carry into the block, the last bits
    # may differ: what the windows carry is the carry
    assert not np.array_equal(whole["cin_srtt"][top::top], whole["srtt"][top - 1 :: top][:-1])


@pytest.mark.parametrize("window_rows, margin_rows", [(1000, 250), (400, 200), (200, 100)])
def test_windows_give_the_whole_shard_or_say_why(window_rows, margin_rows):
    """Every corpus recording cut into windows: the same Part as classified whole, or
    None with a reason; never another answer. Most recordings cut into several windows
    come out whole-alike (the rest have gaps, ACKs lost after the capture point, or
    retransmissions of bytes sent before their window: doubts, by design)."""
    alike, doubted, cut = 0, {}, 0
    for rec in RECORDINGS:
        capture = read_capture(rec / "capture.pcap")
        packets, too_big = capture.packets, capture.meta.icmp_too_big
        if not len(packets["frame"]):
            continue
        _, whole = classify_part(packets, too_big)
        part, why = _in_windows(packets, window_rows, margin_rows, too_big=too_big)
        several = len(packets["frame"]) > window_rows
        cut += several
        if part is None:
            doubted[why] = doubted.get(why, 0) + 1
            continue
        assert not _differ(part, whole), (rec.name, _differ(part, whole))
        alike += several
    assert cut >= 40 and alike >= cut // 3, (alike, cut, doubted)


def test_margins_wider_than_half_a_window_are_refused():
    """With 2M > W the next window would start before this one (and a window vouched for
    rows it got wrong: the corpus's random_loss_v6_notso in windows of 1,000 rows with
    margins of 1,000)."""
    packets = read_capture(CORPUS / "tail_drop_tlp" / "capture.pcap").packets
    with pytest.raises(ValueError, match="margins"):
        _in_windows(packets, 100, 51)


def test_a_long_connection_in_many_windows():
    """A 12,852-packet bulk transfer through random loss, cut into 10 windows: the same as
    whole, its 350 retransmissions included."""
    packets = read_capture(CORPUS / "random_loss_notso" / "capture.pcap").packets
    n = len(packets["frame"])
    _, whole = classify_part(packets, None)
    part, why = _in_windows(packets, n // 10, 500)
    assert part is not None, why
    assert not _differ(part, whole)
    assert len(whole.wire["frame"]) > 300


@pytest.mark.parametrize(
    "name, window_rows, margin_rows",
    [("reorder_mid_rtt50", 300, 100), ("jitter_rcv_rtt30_v6", 1000, 125)],
)
def test_the_senders_replayed_state_is_compared_at_each_cut(
    name, window_rows, margin_rows, monkeypatch
):
    """Two recordings whose windows, started afresh 2M rows before their own, came out
    alike at the cuts and yet resent later rows in another recovery episode than the
    whole shard does (a sentence cites another first re-send): the senders' states at
    the cut (SenderState.at_cut) differ, and the windows say so instead."""
    capture = read_capture(CORPUS / name / "capture.pcap")
    packets, too_big = capture.packets, capture.meta.icmp_too_big
    _, whole = classify_part(packets, too_big)
    part, why = _in_windows(packets, window_rows, margin_rows, too_big=too_big)
    assert part is None and "sender's replayed state" in why, why
    # without that comparison, the windows vouch for rows the whole shard words otherwise
    monkeypatch.setattr(windows, "_check_same_senders", lambda *args: None)
    part, why = _in_windows(packets, window_rows, margin_rows, too_big=too_big)
    assert part is not None and _differ(part, whole) == ["wire.cause_text"], why


def _interleaved(packets: dict, copies: int, gap_ns: int) -> dict:
    """``copies`` of a recording's connection, each from a client port of its own and
    ``gap_ns`` after the one before, merged in time: a shard of many short connections."""
    client = int(packets["sport"][0])  # the SYN's sender
    parts = []
    for i in range(copies):
        p = {k: v.copy() for k, v in packets.items()}
        p["sport"][p["sport"] == client] += i
        p["dport"][p["dport"] == client] += i
        p["ts_ns"] += i * gap_ns
        parts.append(p)
    out = {k: np.concatenate([p[k] for p in parts]) for k in packets}
    order = np.argsort(out["ts_ns"], kind="stable")
    out = {k: v[order] for k, v in out.items()}
    out["frame"] = np.arange(1, len(order) + 1, dtype=out["frame"].dtype)
    return out


@pytest.mark.parametrize("name", ["slow_server_tlp", "fast_nth"])
def test_a_shard_of_many_short_connections_in_windows(name, monkeypatch):
    """40 copies of a short connection, each begun an eighth of its length after the one
    before, cut into windows of 1,000 rows: the windows vouch, alike. A connection begun
    in the rows two windows share is seen by the later one from its first RTT sample
    (Seam.rtt: _from_first), and one whose 4-tuple has no rows before a window finds no
    earlier ACK or send because there is none. Without the first, the windows doubt."""
    packets = read_capture(CORPUS / name / "capture.pcap").packets
    span = int(packets["ts_ns"].max() - packets["ts_ns"].min())
    packets = _interleaved(packets, 40, span // 8)
    _, whole = classify_part(packets, None)
    part, why = _in_windows(packets, 1000, 250)
    assert part is not None, why
    assert not _differ(part, whole) and len(whole.wire["frame"]) >= 40
    assert len(packets["frame"]) > 3 * 1000
    monkeypatch.setattr(windows, "_from_first", lambda *args: False)
    part, why = _in_windows(packets, 1000, 250)
    assert part is None and "SRTT" in why, why


def test_a_connection_silent_for_a_whole_window_is_not_split(monkeypatch):
    """A short request/response connection beside a bulk transfer, silent from the
    bulk's first rows to its last tenth. The windows carried rows of the window before's
    4-tuples only: the later windows had none of it (its handshake, its offsets) and, at
    stop 23, made it a second connection (8 flows where the whole shard has 6). Its rows
    are now parked while it is silent (_History.parked: its first, last and maxima rows)
    and carried into the window it is back in: the windows vouch, alike. Without them
    (or let go past PARKED_MAX_ROWS), the windows say that it has no rows carried."""
    bulk = read_capture(CORPUS / "random_loss_notso" / "capture.pcap").packets
    t0, span_ms = int(bulk["ts_ns"].min()), int(np.ptp(bulk["ts_ns"])) / 1e6
    tr = Trace()
    c = tr.conn()
    t, seq = c.handshake(1.0, rtt_ms=2.0), 1
    for at in [t, t + 5, t + 10, span_ms * 0.9, span_ms * 0.9 + 5]:
        c.send(at + 1, seq, 100)
        c.ack(at + 3, seq + 100)
        seq += 100
    quiet = tr.packets()
    quiet["ts_ns"] += t0 - int(quiet["ts_ns"].min())
    both = {k: np.concatenate([bulk[k], quiet[k].astype(bulk[k].dtype)]) for k in bulk}
    order = np.argsort(both["ts_ns"], kind="stable")
    both = {k: v[order] for k, v in both.items()}
    both["frame"] = np.arange(1, len(order) + 1, dtype=both["frame"].dtype)
    _, whole = classify_part(both, None)
    assert len(whole.flows["flow_id"]) == 6
    part, why = _in_windows(both, 2000, 500)
    assert part is not None and not _differ(part, whole), why
    monkeypatch.setattr(windows, "PARKED_MAX_ROWS", 4)  # let go: the budget's bound
    part, why = _in_windows(both, 2000, 500)
    assert part is None and "silent for a whole window" in why, why
    monkeypatch.setattr(windows, "PARKED_MAX_ROWS", 1 << 18)
    monkeypatch.setattr(windows, "_trimmed", lambda history: None)  # nothing parked
    part, why = _in_windows(both, 2000, 500)
    assert part is None and "silent for a whole window" in why, why


def _mixed(seed: int) -> tuple[dict, dict]:
    """A bulk recording with 1-8 short ones mixed in at random times (a tenth split by a
    silence, some reusing the 4-tuple of the one before), merged in time; and each
    recording's packets."""
    sizes, caps = {}, {}
    for rec in RECORDINGS:
        capture = read_capture(rec / "capture.pcap")
        if not capture.meta.icmp_too_big:
            caps[rec.name] = capture.packets
            sizes[rec.name] = len(capture.packets["frame"])
    odd = ("__", "hole", "ack_loss", "blackhole", "late", "gap")
    smalls = [k for k, n in sizes.items() if 0 < n <= 400 and not any(x in k for x in odd)]
    bulks = [k for k, n in sizes.items() if n >= 2000]
    rng = random.Random(seed)
    bulk = caps[rng.choice(bulks)]
    t0, span = int(bulk["ts_ns"].min()), int(np.ptp(bulk["ts_ns"]))
    parts, port = [bulk], 30000
    for _ in range(rng.randint(1, 8)):
        p = {k: v.copy() for k, v in caps[rng.choice(smalls)].items()}
        client = int(p["sport"][0])
        reuse = max(30000, port - 1) if rng.random() < 0.15 else port
        port = reuse + 1
        p["sport"][p["sport"] == client] = reuse
        p["dport"][p["dport"] == client] = reuse
        p["ts_ns"] += t0 - int(p["ts_ns"].min()) + rng.randint(0, span)
        if rng.random() < 0.1 and len(p["frame"]) > 4:
            p["ts_ns"][rng.randint(1, len(p["frame"]) - 1) :] += rng.randint(0, span)
        parts.append(p)
    out = {k: np.concatenate([q[k].astype(bulk[k].dtype) for q in parts]) for k in bulk}
    order = np.argsort(out["ts_ns"], kind="stable")
    out = {k: v[order] for k, v in out.items()}
    out["frame"] = np.arange(1, len(order) + 1, dtype=out["frame"].dtype)
    return out, bulk


@pytest.mark.parametrize("seed", [145, 147, 259, 323, 373, 397, 451])
def test_short_connections_mixed_into_a_bulk_transfer(seed):
    """Random mixes of corpus recordings (_mixed) in windows of 500-3,000 rows: the whole
    shard's answer or a doubt, never another answer. Over seeds 0-599 the stop-23 code
    gave another answer in 13 of 707 windowed runs, this one in none (nor over 600-899);
    these seeds are the mixes where it did (a connection silent for a whole window
    split in two)."""
    packets, bulk = _mixed(seed)
    _, whole = classify_part(packets, None)
    rng = random.Random(seed * 7)
    for _ in range(3):
        w = rng.choice([500, 1000, 2000, 3000])
        m = w // rng.choice([4, 8])
        if _in_windows(bulk, w, m)[0] is None:
            continue
        part, why = _in_windows(packets, w, m)
        assert part is None or not _differ(part, whole), (w, m, _differ(part, whole))


def _sender(una: list[int]) -> sender.SenderState:
    """A SACK sender whose receiver's ACKs (frames 10, 11, ...) moved snd_una to ``una``."""
    n = len(una)
    table = {c: np.zeros(n, dtype=np.int64) for c in ("ack", "prev_una", "sack_hi", "tsecr")}
    table.update({c: np.zeros(n, dtype=np.int64) for c in ("sack_hi_left", "sack_top")})
    table.update({c: np.zeros(n, dtype=np.int64) for c in ("sack_n", "payload")})
    table.update({c: np.zeros(n, dtype=bool) for c in ("dsack", "syn", "new_after")})
    table.update(una=np.array(una), adv=np.ones(n, dtype=bool), frame=np.arange(10, 10 + n))
    table.update(ts=np.arange(n) * 1_000_000, sample_ff=np.arange(n))
    acks = sender.AckHistory(table, np.arange(n))
    return sender.SenderState(acks, None, 0, n, True, 1000, 0, 0)  # type: ignore[arg-type]


def test_a_senders_state_at_a_cut_is_what_the_rest_of_its_flow_can_read():
    """SenderState.at_cut: a sender in Recovery is as a fresh one once the ACKs before the
    cut reached high_seq (the next ACK ends the episode) and what it resent lies below
    what a later retransmission may resend; not before, nor with a resent segment
    above snd_una that a later ACK may land on (Disorder: tcp_try_keep_open)."""
    una = [0, 1000, 3000, 5000, 5000]

    def recovering() -> sender.SenderState:
        s = _sender(una)
        s.tcp_enter_recovery(1, 5000, ts_ns=7, by="fast_sack")
        s.ever_resent.add(1000, 2000)
        s.last_rtx_ns[1000] = 7
        s.undo_retrans, s.undo_dsack_ns, s.retrans_stamp = 1, sender.NEVER, 99
        return s

    fresh = _sender(una)
    assert recovering().at_cut(2, 4000)[0] != fresh.at_cut(2, 4000)[0]  # still in Recovery
    assert recovering().at_cut(2, 4000)[1] == 11  # its episode's ACK (frame 11) read on
    assert recovering().at_cut(3, 4000)[0] == fresh.at_cut(3, 4000)[0]
    assert recovering().at_cut(3, 4000)[1] == sender.NEVER
    assert recovering().at_cut(3, 0)[0] != fresh.at_cut(3, 0)[0]  # 1000-2000 may be resent
    ahead = recovering()
    ahead.last_rtx_ns[6000] = 8  # resent above snd_una: leaving Recovery may be Disorder
    ahead.ever_resent.add(6000, 7000)
    opened = _sender(una)
    opened.last_rtx_ns[6000] = 8
    opened.ever_resent.add(6000, 7000)
    assert ahead.at_cut(3, 4000)[0] != opened.at_cut(3, 4000)[0]
    opened.ca_state = sender.DISORDER  # Disorder leaves by the same test as Recovery
    assert ahead.at_cut(3, 4000)[0] == opened.at_cut(3, 4000)[0]
    # ACKs applied out of order (a clock that stepped back): a state no other equals
    late = recovering()
    late.last_k = 4
    state, ref = late.at_cut(3, 4000)
    with pytest.raises(windows._Doubt, match="replayed state"):
        windows._check_same_senders({7: (state, ref, fresh.at_cut(3, 4000)[0])}, {}, 0)
    with pytest.raises(windows._Doubt, match="replayed state"):
        windows._check_same_senders({}, {7: (state, ref, fresh.at_cut(3, 4000)[0])}, 0)


@pytest.mark.parametrize("window_rows, margin_rows", [(400, 200), (200, 100)])
def test_acks_lost_after_the_capture_point_are_judged_as_whole_across_cuts(
    window_rows, margin_rows
):
    """A receiver whose ACKs a black hole ate after the capture point (27 ACKs the sender
    never had), cut into 10-19 windows: the ACKs judged lost, their count and the causes
    that cite them as the whole capture gives them. Where a range of lost ACKs would be
    told by a retransmission past the rows a window compares, it says so instead."""
    rec = CORPUS / "ack_blackhole_rto_notso" / "capture.pcap"
    packets = read_capture(rec).packets
    _, whole = classify_part(packets, None)
    part, why = _in_windows(packets, window_rows, margin_rows)
    assert part is not None, why
    assert not _differ(part, whole) and part.acks_lost == whole.acks_lost > 20
    assert len(packets["frame"]) > 9 * window_rows
    assert list(whole.wire["cause"]) == ["rto_ack_lost"] * 3  # each citing a lost ACK
    packets = read_capture(CORPUS / "bulk_ack_loss_rcv" / "capture.pcap").packets
    part, why = _in_windows(packets, 200, 100)
    assert part is None and "lost after the capture point" in why


def test_a_windowed_shards_rows_stored_as_its_windows_are_done(tmp_path, monkeypatch):
    """Stored a window at a time (what a spilled shard does), the rows read back are those
    the windows held; finish_part writes them in output order from the windows' files,
    a row group at a time, and removes those files; the digest is the held rows'."""
    from retranscope.analyze import streamed
    from retranscope.analyze.streamed import finish_part

    packets = read_capture(CORPUS / "random_loss_notso" / "capture.pcap").packets
    n = len(packets["frame"])
    held, _ = _in_windows(packets, n // 10, 500)
    kept, why = _in_windows(packets, n // 10, 500, into=tmp_path)
    assert kept is not None, why
    assert isinstance(kept.wire, windows.WindowRows) and len(kept.wire.stored) == 11
    assert not _differ(
        shards_part(kept.flows, _held(kept.wire), kept.per_flow, kept.acks_lost), held
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    b = finish_part(held, tmp_path / "b", 0)
    monkeypatch.setattr(streamed, "ROW_GROUP_ROWS", 64)  # the stored order in many groups
    a = finish_part(kept, tmp_path / "a", 0)
    assert not list(tmp_path.glob("window-*"))  # the windows' files are gone
    assert len(a.rows.parts) > 4 and a.rows.n_rows == b.rows.n_rows > 300
    for x, y in ((a.rows, b.rows), (a.flows, b.flows)):
        got, want = x.read(0, x.n_rows), y.read(0, y.n_rows)
        assert got.keys() == want.keys()
        assert not [c for c in got if not _alike(got[c], want[c])]
    assert a.sums == b.sums and np.array_equal(a.row_ts, b.row_ts)


def _held(rows: windows.WindowRows) -> dict:
    """Stored window rows back in memory, as the windows' Part holds them: text as Python
    strings, in frame order."""
    from retranscope.analyze.table import Text, take

    got = rows.rows(np.arange(len(rows)), lambda f: f)
    got = {c: v.to_objects() if isinstance(v, Text) else v for c, v in got.items()}
    return take(got, np.argsort(got["frame"], kind="stable"))


def shards_part(flows, wire, per_flow, acks_lost):
    from retranscope.analyze.shards import Part

    return Part(flows, wire, per_flow, acks_lost)


def _alike(x, y) -> bool:
    """Two stored columns hold the same rows (text read back either way, NaN alike)."""
    from retranscope.analyze.table import Text

    x, y = (c.to_objects() if isinstance(c, Text) else c for c in (x, y))
    if getattr(x, "dtype", None) is not None and x.dtype.kind == "f":
        return np.array_equal(x, y, equal_nan=True)
    return bool(windows._same_cells(x, y).all())


def _past_4_gb(c) -> None:
    """A bulk transfer of 3.3 * 2**32 bytes in 64 KB segments (each ACKed), some resent
    after an RTO: the windows' rows lie more than 2**31 bytes from the handshake rows
    they carry, where stepping from one to the next unwraps wrong."""
    seg = 65_000
    t = c.handshake(0, 1)
    lost = {30_000, 120_000, 200_000}
    for i in range(int(3.3 * (1 << 32)) // seg):
        seq = 1 + i * seg
        c.send(t, seq, seg)
        if i in lost:
            c.send(t + 210, seq, seg)  # the RTO's re-send
            t += 210
        c.ack(t + 0.5, seq + seg)
        t += 0.01


def test_a_connection_past_4_gb_is_unwrapped_across_the_rows_windows_leave_out(monkeypatch):
    tr = Trace()
    _past_4_gb(tr.conn())
    packets = tr.packets()
    n = len(packets["frame"])
    _, whole = classify_part(packets, None)
    assert len(whole.wire["frame"]) >= 3
    part, why = _in_windows(packets, 40_000, 2_000, block=10_000)
    assert part is not None, why
    assert not _differ(part, whole)
    # without the seam's correction the windows do not come out alike
    monkeypatch.setattr(windows.Seam, "correct", lambda self, *a: None)
    part, why = _in_windows(packets, 40_000, 2_000, block=10_000)
    assert part is None or _differ(part, whole), n


def test_merged_blocks_are_in_capture_order():
    rng = np.random.default_rng(0)
    frames = np.sort(rng.choice(10_000, 3_000, replace=False))
    owner = rng.integers(0, 3, len(frames))
    streams = []
    for k in range(3):
        f = frames[owner == k]
        rows = {"frame": f, "x": f * 2}
        streams.append(
            iter([{c: v[i : i + 97] for c, v in rows.items()} for i in range(0, len(f), 97)])
        )
    got = list(windows.merged_blocks(streams))
    merged = np.concatenate([b["frame"] for b in got])
    assert np.array_equal(merged, frames)
    assert np.array_equal(np.concatenate([b["x"] for b in got]), frames * 2)


def _outputs(out: Path) -> dict:
    got: dict = {
        name: pq.read_table(out / name) for name in ("retransmits.parquet", "flows.parquet")
    }
    got["summary.json"] = (out / "summary.json").read_text()
    return got


@pytest.mark.parametrize(
    "name, doubted",
    [("multi_flow_rtt50", True), ("random_loss_v6_notso", True), ("tail_drop_tlp", False)],
)
def test_spilled_shards_in_windows_give_what_the_whole_capture_gives(
    name, doubted, tmp_path, monkeypatch
):
    """Spilled, every shard classified in windows (several buckets merged by frame, the
    capture's first packet borrowed), in turn and on two workers: the outputs of the
    whole capture; where the windows doubt (``doubted``: a shard of this recording does),
    the shard is classified whole."""
    pcap = CORPUS / name / "capture.pcap"
    run_analysis(pcap, None, tmp_path / "memory", spill=False)
    want = _outputs(tmp_path / "memory")
    monkeypatch.setattr(chunks, "DECODE_CHUNK_RECORDS", 300)
    monkeypatch.setattr(spill, "SHARD_PACKETS", 1500)
    monkeypatch.setattr(spill, "WINDOWED_MIN_ROWS", 0)
    monkeypatch.setattr(windows, "WINDOW_ROWS", 300)
    monkeypatch.setattr(windows, "MARGIN_ROWS", 100)
    tried: list[bool] = []
    attempt = spill.SpilledCapture._classify_windows

    def counted(self, shard, too_big):
        part = attempt(self, shard, too_big)
        tried.append(part is not None)
        return part

    monkeypatch.setattr(spill.SpilledCapture, "_classify_windows", counted)
    for jobs in (1, 2):
        out = tmp_path / f"windows{jobs}"
        run_analysis(pcap, None, out, spill=True, jobs=jobs)
        got = _outputs(out)
        for key, value in want.items():
            if key == "summary.json":
                assert got[key].replace(f"/windows{jobs}", "/memory") == value
            else:
                assert value.equals(got[key]), (key, jobs)
    assert any(tried) and (not all(tried)) == doubted, tried  # (the shards in this process)


def test_a_shard_whose_windows_doubt_for_want_of_rows_is_tried_with_wider_margins(
    tmp_path, monkeypatch, capfd
):
    """A bulk transfer through random loss (12,852 packets) in windows of 2,000 rows: with
    margins of 125 a retransmission resends bytes sent before its window; tried again
    4x wider (500), the windows vouch, and the outputs are those of the capture in
    memory, no notice said. A doubt wider margins cannot answer (a gap) is not retried."""
    pcap = CORPUS / "random_loss_notso" / "capture.pcap"
    run_analysis(pcap, None, tmp_path / "memory", spill=False)
    monkeypatch.setattr(spill, "WINDOWED_MIN_ROWS", 0)
    monkeypatch.setattr(windows, "WINDOW_ROWS", 2000)
    monkeypatch.setattr(windows, "MARGIN_ROWS", 125)
    assert windows.wider_margins() == [125, 500]
    margins: list = []
    attempt = windows.classify_in_windows

    def counted(*args, **kwargs):
        part, why = attempt(*args, **kwargs)
        margins.append((kwargs["margin_rows"], why))
        return part, why

    monkeypatch.setattr(spill, "classify_in_windows", counted)
    run_analysis(pcap, None, tmp_path / "windows", spill=True, jobs=1)
    assert [m for m, _ in margins] == [125, 500], margins
    assert "before its window" in margins[0][1] and margins[1][1] is None
    assert "notice" not in capfd.readouterr().err
    want, got = _outputs(tmp_path / "memory"), _outputs(tmp_path / "windows")
    for key in ("retransmits.parquet", "flows.parquet"):
        assert want[key].equals(got[key]), key
    assert not windows.margin_may_help("the capture misses data of a flow")
    assert windows.margin_may_help("the windows beside a cut disagree on cause")
