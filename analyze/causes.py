"""Why each retransmission happened: a cause code and one sentence per row.

The sender replay (analyze/sender.py) decides every burst with one rule and records in its
Verdict the evidence that rule read (sender.RULES): the ACK that released it, the state it
found, when the Recovery or Loss episode began, the previous re-send of the range, when the
RTO was armed, the ICMP message it answered. This module puts that into words, per
retransmission: ``cause`` (schemas/vocabulary.py CAUSES) and ``cause_text``, a sentence
citing frames and measured times, e.g.

    TLP 5.48 ms after the last send (PTO = 2·SRTT + 2 ms = 2·46 µs + 2 ms = 2.09 ms); the
    receiver's ACK came 5.68 ms after the original (frame 16), after the probe: a delayed
    ACK longer than the PTO; D-SACK: spurious

What the decision could not see, because it came later (a D-SACK or timestamp echo showing
the original arrived, the receiver's ACK delay, an ACK lost after the capture point),
qualifies the code (tlp -> tlp_delayed_ack, rto -> rto_ack_lost, fast_sack ->
fast_spurious) and never the kind: every cause belongs to the family of the kind the replay
chose. The sentence says which facts are measured here and which are the replay's.

Lookups are vectorised; the sentences are formatted per retransmission (thousands in a
million-packet capture), never per packet.

A kernel event with no frame gets its cause from its reason and the socket state the event
carries (:func:`of_events`); a matched event whose reason the capture read in another
family keeps the kernel's cause, with the capture's reading beside it (:func:`with_kernel`).
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

import numpy as np

from retranscope.analyze.table import NO_VALUE, GroupedSearch, Nullable, filled, gather
from retranscope.schemas.vocabulary import (
    CAUSE_OF_REASON,
    CAUSES,
    FAMILY_OF_KIND,
    TCP_CA_RECOVERY,
)

# include/net/tcp.h, as analyze/sender.py reads them (us)
_TIMEOUT_MIN_US, _RTO_MIN_US, _TIMEOUT_INIT_US = 2_000, 200_000, 1_000_000
_SYN_LINEAR_TIMEOUTS = 4  # tcp_syn_linear_timeouts' default (Linux 6.5+)

_SPURIOUS_BY = {"dsack": "D-SACK", "ts_echo": "timestamp echo (Eifel)"}
_KIND_WORDS = {
    "tlp": "a TLP",
    "fast": "a fast retransmit",
    "rto": "an RTO",
    "rto_recovery": "a slow-start retransmit in Loss",
    "syn": "a SYN timeout",
    "synack": "a SYN-ACK timeout",
    "unknown": "unknown",
}


def family_of_cause(cause: str | None, kind: str | None) -> str | None:
    """The kind family a cause belongs to (CAUSES), the kind's where the cause leaves it
    open (timing_only)."""
    fam = CAUSES.get(cause, (None, ""))[0] if cause else None
    return fam if fam is not None else FAMILY_OF_KIND.get(kind) if kind else None


# --- the capture's causes (classify._replay_columns) --------------------------------------


def cause_columns(out: dict, verdicts: list, ctx: dict[str, Any]) -> dict[str, Any]:
    """``cause``, ``cause_text`` and ``ack_delay_ns`` per row of classify's table ``out``
    (its replay columns already there), from each burst's Verdict (``verdicts``, indexed by
    ``ctx["burst_of"]``; None for a probe, an out-of-order original or a duplicate: no
    cause).

    ``ctx``: the bulk evidence classify_table holds: ``A`` (the ACK table the replay read),
    ``a_flow`` (its flow per row), ``mss`` (per flow), ``origs`` (the first transmissions,
    classify._Originals), ``pkt_frame`` and ``pkt_ts`` (per packet row), ``family`` and
    ``shift_ns`` (per flow: the round trip between the capture point and the sender,
    classify._remote_shift_us), ``lost_at`` (per row: the packet row of the first ACK that
    covered it in the capture but never reached the sender, -1: none).
    """
    m = len(out["flow_id"])
    ev = _row_evidence(out, verdicts, ctx)
    codes = np.full(m, None, dtype=object)
    texts = np.full(m, None, dtype=object)
    has = ev.pop("has")
    keys = list(ev)
    for i, values in enumerate(zip(*ev.values())):
        if has[i]:
            codes[i], texts[i] = _sentence(dict(zip(keys, values)))
    d = np.array([NO_VALUE if x is None else x for x in ev["ack_delay"]], dtype=np.int64)
    return {
        "cause": codes,
        "cause_text": texts,
        "ack_delay_ns": Nullable(np.where(d > NO_VALUE, d, 0), d > NO_VALUE),
    }


def _row_evidence(out: dict, verdicts: list, ctx: dict[str, Any]) -> dict[str, list]:
    """Per row, as Python lists: the Verdict's evidence, the columns the sentence cites,
    and what the bulk lookups add (the receiver's ACK delay, an ACK lost after the capture
    point, the SACK blocks of the trigger ACK, the newest delivered segment, and the frames
    of the times the Verdict holds)."""
    A, a_flow, burst_of = ctx["A"], ctx["a_flow"], ctx["burst_of"]
    flow = np.asarray(out["flow_id"], dtype=np.int64)
    seq, end = out["seq_abs"], out["end_abs"]
    ts, frame = out["ts_ns"], out["frame"]
    v_of = [verdicts[b] if 0 <= b < len(verdicts) else None for b in burst_of.tolist()]
    has = np.array([v is not None for v in v_of], dtype=bool)
    na = len(a_flow)

    ack_delay, ack_frame, use_lost, lost_frame, lost_ts, orig_ts = _receiver_ack(
        out, ctx, flow, end
    )

    # The trigger ACK's SACK blocks above the row (D-SACK excluded), in segments.
    trig = np.array([v.trigger if v is not None else -1 for v in v_of], dtype=np.int64)
    t_ok = (trig >= 0) & (trig < na)
    tc = np.clip(trig, 0, max(na - 1, 0))
    above = np.zeros(len(flow), dtype=np.int64)
    if na:
        L, R = A["sack_l"][tc], A["sack_r"][tc]
        live = R > L
        live[:, 0] &= ~A["dsack"][tc]
        above = np.where(live, np.clip(R - np.maximum(L, end[:, None]), 0, None), 0).sum(1)
    mss = np.maximum(ctx["mss"][flow], 1)
    segs_above = np.where(t_ok, -(-above // mss), 0)
    top = np.where(t_ok, gather(A["sack_hi"], tc, t_ok, NO_VALUE), NO_VALUE)
    adv = gather(A["adv"], tc, t_ok, False)

    # RACK: when the newest delivered segment (the highest SACKed) was sent.
    origs = ctx["origs"]
    d_ok, p = origs.containing(flow, np.where(top > end, top - 1, 0))
    d_ok &= top > end
    d_ts = gather(origs.ts, p, d_ok, NO_VALUE)
    d_frame = gather(ctx["pkt_frame"], gather(origs.sel, p, d_ok, 0), d_ok, -1)

    names = (
        "rule kind ca_before episode_ns episode_by prev_rtx_ns armed_ns pkts_out dupacks "
        "icmp_frame cause mtu pto_us rto_us backoff"
    ).split()
    get, none = attrgetter(*names), (None,) * len(names)
    by_name = dict(zip(names, zip(*[get(v) if v is not None else none for v in v_of])))

    def vals(name: str) -> list:
        return list(by_name[name]) if by_name else [None] * len(v_of)

    # The Verdict's own fields; its "cause" is the loss cause (tfo, pmtu) it read.
    ev: dict[str, list] = {
        "has": has.tolist(),
        **{("loss_cause" if n == "cause" else n): vals(n) for n in names},
        "ts": ts.tolist(),
        "frame": frame.tolist(),
        "len": (end - seq).tolist(),
        "burst_len": _burst_max(end - seq, burst_of).tolist(),
        "burst_bytes": _burst_sum(end - seq, burst_of).tolist(),
        "tx_index": filled(out["tx_index"], 0).astype(np.int64).tolist(),
        "orig_frame": out["orig_frame"].tolist(),
        "since_orig": _opt(out["since_original_ns"]),
        "since_send": _opt(out["since_last_send_ns"]),
        "since_ack": _opt(out["since_last_ack_ns"]),
        "srtt_us": _opt(out["srtt_us"]),
        "trig_frame": _opt(out["trigger_frame"]),
        "since_trig": _opt(out["since_trigger_ns"]),
        "spurious_by": list(out["spurious_by"]),
        "ack_delay": [None if x == NO_VALUE else x for x in ack_delay.tolist()],
        "ack_frame": ack_frame.tolist(),
        "ack_lost": use_lost.tolist(),
        "lost_frame": lost_frame.tolist(),
        "lost_ts": lost_ts.tolist(),
        "orig_ts": orig_ts.tolist(),
        "segs_above": segs_above.tolist(),
        "trig_adv": adv.tolist(),
        "delivered_ts": d_ts.tolist(),
        "delivered_frame": d_frame.tolist(),
        "v6": (ctx["family"][flow] == 6).tolist(),
    }
    frame_at = dict(zip(zip(flow.tolist(), ev["ts"]), ev["frame"]))
    ev["episode_frame"] = _frames_at(frame_at, flow, ev["episode_ns"])
    ev["prev_rtx_frame"] = _frames_at(frame_at, flow, ev["prev_rtx_ns"])
    return ev


def _receiver_ack(
    out: dict, ctx: dict[str, Any], flow: np.ndarray, end: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Per row: the receiver's ACK delay for the original in the sender's time, that
    ACK's frame, whether it was an ACK lost after the capture point, the lost ACK's frame
    and time, and the original's time."""
    A, a_flow = ctx["A"], ctx["a_flow"]
    na = len(a_flow)
    # The receiver's first cumulative ACK covering the row's data (what reached the
    # sender), or the ACK lost after the capture point when that came first; in the
    # sender's time: the original left half the trip before it passed here, the ACK
    # reaches the sender half the trip after.
    orig_ts = filled(out["orig_ts_ns"], NO_VALUE)
    kc = (
        GroupedSearch(a_flow, A["una"])(flow, end, "left")
        if na
        else np.zeros(len(flow), dtype=np.int64)
    )
    cov = (kc < na) & (gather(a_flow, kc, kc < na, -1) == flow)
    cov_ts = gather(A["ts"], kc, cov, NO_VALUE)
    cov_frame = gather(A["frame"], kc, cov, -1)
    lost_at = ctx["lost_at"]
    lost = lost_at >= 0
    lost_ts = gather(ctx["pkt_ts"], lost_at, lost, NO_VALUE)
    lost_frame = gather(ctx["pkt_frame"], lost_at, lost, -1)
    use_lost = lost & (~cov | (lost_ts < cov_ts))
    ack_t = np.where(use_lost, lost_ts, cov_ts)
    ack_ok = (orig_ts > NO_VALUE) & (cov | lost) & (ack_t >= orig_ts)
    ack_delay = np.where(ack_ok, ack_t - orig_ts + ctx["shift_ns"][flow], NO_VALUE)
    ack_frame = np.where(use_lost, lost_frame, cov_frame)
    return ack_delay, ack_frame, use_lost, lost_frame, lost_ts, orig_ts


def _burst_max(length: np.ndarray, burst_of: np.ndarray) -> np.ndarray:
    """Per row, the longest segment of its burst (a PMTU re-send's new MSS: its last
    segment is what is left over)."""
    if not len(length):
        return length
    top = np.zeros(int(burst_of.max()) + 1, dtype=np.int64)
    np.maximum.at(top, burst_of, length)
    return top[burst_of]


def _burst_sum(length: np.ndarray, burst_of: np.ndarray) -> np.ndarray:
    """Per row, the bytes its burst re-sent."""
    if not len(length):
        return length
    return np.bincount(burst_of, weights=length).astype(np.int64)[burst_of]


def _opt(col) -> list:
    """A column's values as a list, None where null."""
    if isinstance(col, Nullable):
        return [v if ok else None for v, ok in zip(col.values.tolist(), col.valid.tolist())]
    return [None if v is None or v != v else v for v in np.asarray(col).tolist()]


def _frames_at(frame_at: dict, flow: np.ndarray, when: list) -> list[int]:
    """The frame of the row of the same flow sent at exactly ``when`` (a time a Verdict
    holds: the re-send that began an episode, a previous re-send), -1 where none is in
    this table (``frame_at``: (flow, time) -> frame of its rows; they are few)."""
    return [-1 if w is None else frame_at.get((f, w), -1) for f, w in zip(flow.tolist(), when)]


# --- the sentences ------------------------------------------------------------------------


def _t(ns) -> str:
    """A duration: 46 µs, 5.48 ms, 412 ms, 1.47 s."""
    if ns is None:
        return "?"
    a = abs(ns)
    if a < 999_500:
        return f"{ns / 1e3:.3g} µs"
    if a < 999_500_000:
        return f"{ns / 1e6:.3g} ms"
    return f"{ns / 1e9:.3g} s"


def _fr(frame) -> str:
    return f"frame {frame}" if frame is not None and frame >= 0 else "a frame not in the capture"


def _in(frame, before_ns=None) -> str:
    """The parenthesis " (frame N, 3 ms before)", or as much of it as is known."""
    parts = ([f"frame {frame}"] if frame is not None and frame >= 0 else []) + (
        [f"{_t(before_ns)} before"] if before_ns is not None else []
    )
    return f" ({', '.join(parts)})" if parts else ""


def _nth(n: int) -> str:
    return f"{n}{'tsnrhtdd'[(n // 10 % 10 != 1) * (n % 10 < 4) * n % 10 :: 4]}"


def _sentence(e: dict) -> tuple[str, str]:
    """(code, sentence) of one retransmission from its evidence."""
    rule = e["rule"]
    if rule.startswith("timing_"):
        return "timing_only", _timing_only(e)
    code, text = _BY_RULE.get(rule, _unknown)(e)
    sp = e["spurious_by"]
    if sp and code not in ("tlp", "tlp_delayed_ack", "rto_spurious"):
        if CAUSES[code][0] == "fast" and code != "lost_retransmit":
            code = "fast_spurious"
            text += (
                f"; {_SPURIOUS_BY.get(sp, sp)}: the original had arrived (reordered, or "
                "its ACK lost): spurious"
            )
        else:
            text += f"; {_SPURIOUS_BY.get(sp, sp)}: spurious"
    return code, text


def _unknown(e: dict) -> tuple[str, str]:
    return "unknown", f"not classified (rule {e['rule']})"


def _pto_arith(e: dict) -> str:
    """How the PTO was reckoned (tcp_schedule_loss_probe)."""
    pto_ns, srtt = int(e["pto_us"] * 1000), e["srtt_us"]
    if not srtt:
        return f"no RTT sample yet: PTO = {_t(pto_ns)}"
    one = e["pkts_out"] == 1
    extra_us = _RTO_MIN_US if one else _TIMEOUT_MIN_US
    raw_ns = int((2 * srtt + extra_us) * 1000)
    s = (
        "one segment out: " if one else ""
    ) + f"PTO = 2·SRTT + {_t(extra_us * 1000)} = 2·{_t(srtt * 1000)} + {_t(extra_us * 1000)}"
    if raw_ns > pto_ns + 1000:
        return s + f", capped at the RTO, = {_t(pto_ns)}"
    return s + f" = {_t(pto_ns)}"


def _ack_lost_clause(e: dict, what: str) -> str:
    delay = e["lost_ts"] - e["orig_ts"] if e["orig_ts"] > NO_VALUE else None
    after = f", {_t(delay)} after the original" if delay is not None and delay >= 0 else ""
    return (
        f"; the receiver's ACK of it ({_fr(e['lost_frame'])}{after}) was lost after "
        f"the capture point: {what} of data that had arrived"
    )


def _tlp(e: dict) -> tuple[str, str]:
    text = f"TLP {_t(e['since_send'])} after the last send ({_pto_arith(e)})"
    if e["ack_lost"]:
        return "tlp_ack_lost", text + _ack_lost_clause(e, "a probe")
    delay, sp, orig = e["ack_delay"], e["spurious_by"], e["since_orig"]
    if delay is None:
        text += "; no ACK covering it in the capture"
    else:
        text += (
            f"; the receiver's ACK reached the sender {_t(delay)} after the original "
            f"({_fr(e['ack_frame'])})"
        )
        if orig is not None and delay >= orig:
            text += ", after the probe"
    if not sp:
        return "tlp", text + "; not shown spurious"
    by = _SPURIOUS_BY.get(sp, sp)
    if delay is not None and delay > e["pto_us"] * 1000:
        return "tlp_delayed_ack", text + f": a delayed ACK longer than the PTO; {by}: spurious"
    return "tlp", text + f"; {by}: the original had arrived: spurious"


def _rto(e: dict) -> tuple[str, str]:
    bo, rto_ns = max(e["backoff"] or 0, 0), int(e["rto_us"] * 1000)
    fired = e["ts"] - e["armed_ns"] if e["armed_ns"] > NO_VALUE else None
    srtt = e["srtt_us"]
    if bo:
        arith = f"backoff {bo}: RTO = {_t(rto_ns >> bo)} × {1 << bo} = {_t(rto_ns)}"
        armed = "the previous timeout's re-send" + _in(e["prev_rtx_frame"])
    else:
        arith = (
            f"RTO = SRTT + RTTVAR = {_t(srtt * 1000)} + {_t(rto_ns - srtt * 1000)} = {_t(rto_ns)}"
            if srtt
            else f"RTO = {_t(rto_ns)}, no RTT sample yet"
        )
        armed = "the timer was armed"
    after = f"{_t(fired)} after {armed}" if fired is not None else ""
    sla = e["since_ack"]
    silent = sla is not None and (fired is None or sla >= fired - _TIMEOUT_MIN_US * 1000)
    if silent:
        text = f"RTO after {_t(sla)} without an ACK"
        if fired is not None and (bo or abs(fired - sla) > max(fired // 20, 1_000_000)):
            text += f", {after}"  # armed by a send after that ACK
    else:
        text = "RTO" + (f" {after}" if after else "")
    text += f" ({arith})"
    if e["ack_lost"]:
        return "rto_ack_lost", text + _ack_lost_clause(e, "a timeout")
    if e["spurious_by"]:
        by = _SPURIOUS_BY.get(e["spurious_by"], e["spurious_by"])
        return "rto_spurious", (
            text + f"; {by}: the original had arrived, its ACK was late, not lost: spurious"
        )
    if silent:
        return "rto", text + "; the path was silent"
    if sla is None:
        return "rto", text + "; no ACK of this flow in the capture before it"
    return "rto", text + f"; the last ACK, {_t(sla)} before, did not acknowledge the head"


def _rto_capture_start(e: dict) -> tuple[str, str]:
    code, text = _rto(e)
    return code, (
        "RTO ending the silence the capture began in (no ACK of this flow before "
        "it); the receiver's next ACK showed it was the head, with data beyond it "
        f"held (RTO {_t(int(e['rto_us'] * 1000))})"
        + (text[text.index(";") :] if code != "rto" and ";" in text else "")
    )


def _above(e: dict) -> str:
    n = e["segs_above"]
    tf, st = e["trig_frame"], e["since_trig"]
    ack = f"the ACK in {_fr(tf)}" + (f" ({_t(st)} before)" if st is not None else "")
    if n > 0:
        return f"{ack} SACKs {n} segment{'s' if n != 1 else ''} above it"
    if e["trig_adv"]:
        return f"{ack} moved snd_una to it, data above it SACKed before"
    return f"{ack} repeats SACK blocks above it"


def _rack(e: dict) -> str:
    """RACK's test (tcp_rack_detect_loss): it was sent before the newest delivered segment,
    by more than that one's RTT plus the reorder window ago."""
    last_tx = (
        e["prev_rtx_ns"] if e["tx_index"] > 2 and e["prev_rtx_ns"] > NO_VALUE else e["orig_ts"]
    )
    if e["delivered_ts"] <= NO_VALUE or last_tx <= NO_VALUE or e["delivered_ts"] < last_tx:
        return ""
    return (
        f" (RACK: sent {_t(e['delivered_ts'] - last_tx)} before the newest delivered "
        f"segment, {_fr(e['delivered_frame'])})"
    )


def _episode(e: dict, state: str) -> str:
    if e["episode_ns"] is None or e["episode_ns"] <= NO_VALUE or e["episode_ns"] == e["ts"]:
        return ""
    ago = _t(e["ts"] - e["episode_ns"])
    if e["episode_by"] == "lost_out":
        # tcp_fastretrans_alert re-opened Recovery on the ACK that ended the last episode
        return (
            f"; in {state} again since an ACK {ago} before ended the episode before it "
            "with a re-sent segment still missing"
        )
    at = f"frame {e['episode_frame']}, " if e["episode_frame"] >= 0 else ""
    return f"; in {state} since its first re-send ({at}{ago} before)"


def _fast_sack(e: dict) -> tuple[str, str]:
    text = f"fast retransmit: {_above(e)}{_rack(e)}"
    if e["ca_before"] == TCP_CA_RECOVERY:
        text += _episode(e, "Recovery")
    return "fast_sack", text


def _fast_dupack(e: dict) -> tuple[str, str]:
    tf = _fr(e["trig_frame"])
    if e["ca_before"] == TCP_CA_RECOVERY and e["trig_adv"]:
        return "fast_dupack", (
            f"fast retransmit (NewReno, no SACK): the partial ACK in {tf} "
            "moved snd_una to this hole, below the recovery point" + _episode(e, "Recovery")
        )
    n = e["dupacks"]
    if n > 0:
        return "fast_dupack", (
            f"fast retransmit (no SACK): {n} duplicate ACK{'s' if n != 1 else ''}, the last in {tf}"
        )
    return "fast_dupack", f"fast retransmit (no SACK) on the ACK in {tf}"


def _rack_timer(e: dict) -> tuple[str, str]:
    return "rack_timer", (
        f"RACK reorder timer: {_t(e['since_ack'])} after the ACK in "
        f"{_fr(e['trig_frame'])}, which SACKed data above it, and no ACK "
        f"since{_rack(e)}"
    )


def _lost_retransmit(e: dict) -> tuple[str, str]:
    n = e["tx_index"] - 2
    which = "the first re-send" if n <= 1 else f"the {_nth(n)} re-send"
    prev = e["prev_rtx_ns"]
    if prev is not None and prev > NO_VALUE:
        was = f"{which} of this range{_in(e['prev_rtx_frame'], e['ts'] - prev)} was lost too"
    else:
        was = "an earlier re-send of this range was lost too"
    return "lost_retransmit", f"lost retransmission: {was}: {_above(e)}{_rack(e)}"


_LOSS_BY = {
    "pmtu": "the path MTU drop",
    "tfo": "the Fast Open SYN-ACK",
    "rto": "the RTO",
    "rto_capture_start": "the RTO",
    "timing_rto": "the RTO",
    "capture_start": "",
    "unseen_timeout": "",
}


def _loss_walk(e: dict, how: str) -> tuple[str, str]:
    by = e["episode_by"] or "rto"
    cause = e["loss_cause"]
    code = cause if cause in ("pmtu", "tfo") else "slow_start_after_rto"
    if code == "pmtu":
        head = "the rest of the re-send after the path MTU drop"
    elif code == "tfo":
        head = "the rest of the Fast Open data the SYN-ACK did not cover"
    else:
        head = "slow-start retransmit after an RTO"
    if by == "unseen_timeout":
        since = (
            "; in Loss after a timeout the capture did not show (a sender without "
            "SACK re-sends several segments at once, or above snd_una, only in Loss)"
        )
    elif by == "capture_start":
        since = "; the capture began in Loss (its first segment of this flow was a re-send)"
    elif e["episode_ns"] is not None and e["episode_ns"] > NO_VALUE:
        since = (
            f"; in Loss since {_LOSS_BY.get(by) or 'the RTO'}"
            f"{_in(e['episode_frame'], e['ts'] - e['episode_ns'])}"
        )
    else:
        since = "; in Loss"
    return code, f"{head}: {how}{since}"


def _ack_walk(e: dict) -> tuple[str, str]:
    return _loss_walk(e, f"the ACK in {_fr(e['trig_frame'])} released it")


def _walk(e: dict, how: str, lead: str = "fast retransmit") -> tuple[str, str]:
    """A walk of the retransmit queue (tcp_xmit_retransmit_queue): in Loss the slow-start
    walk, else fast recovery's."""
    if e["kind"] == "rto_recovery":
        return _loss_walk(e, how)
    return "fast_sack", f"{lead}: {how}"


def _walk_continued(e: dict) -> tuple[str, str]:
    how = (
        f"{_t(e['since_send'])} after the previous send, no ACK between (the walk of the "
        "retransmit queue, continued)"
    )
    return _walk(e, how, "fast retransmit continued")


def _multi_segment(e: dict) -> tuple[str, str]:
    sla, tf = e["since_ack"], e["trig_frame"]
    after = (
        ""
        if sla is None
        else f", {_t(sla)} after the " + (f"ACK in frame {tf}" if tf is not None else "last ACK")
    )
    return _walk(
        e,
        f"{e['burst_bytes']} bytes re-sent at once{after} (more than one MSS at "
        "once: the retransmit queue's walk, not a timer)",
    )


def _capture_start_walk(e: dict) -> tuple[str, str]:
    return _walk(
        e,
        "the capture began mid-recovery: no ACK of this flow before it, the "
        "receiver's first ACK holds data beyond it",
    )


def _pmtu(e: dict) -> tuple[str, str]:
    mtu, n = e["mtu"], e["burst_len"]
    msg = "ICMPv6 packet-too-big" if e["v6"] else "ICMP fragmentation-needed"
    at = f"at MSS {n} " if mtu and n < mtu else ""
    if e["icmp_frame"] >= 0:
        return "pmtu", f"re-sent {at}after {msg} (MTU {mtu}) in {_fr(e['icmp_frame'])}"
    return "pmtu", (
        f"re-sent cut to {n} bytes at once, with no ACK and no timer due: a path "
        "MTU drop (no ICMP message in the capture"
        + (f"; MTU {mtu} from the segment size" if mtu else "")
        + ")"
    )


def _tfo(e: dict) -> tuple[str, str]:
    return "tfo", (
        f"TCP Fast Open: the SYN-ACK in {_fr(e['trig_frame'])} acknowledged the "
        f"SYN but not the data it carried; re-sent at once ({e['len']} bytes)"
    )


def _syn(e: dict, what: str) -> tuple[str, str]:
    n = max(e["tx_index"] - 2, 0)  # earlier retransmissions of this SYN
    prev = e["orig_frame"] if n == 0 else e["prev_rtx_frame"]
    gap = e["since_send"]
    rto = _t(int(e["rto_us"] * 1000))
    text = f"{what} timeout #{n + 1}: re-sent"
    if gap is not None:
        text += f" {_t(gap)} after the previous {what}"
        text += f" in frame {prev}" if prev is not None and prev >= 0 else ""
    if what == "SYN":
        if e["backoff"] <= 0:
            text += (
                f" (timeout {rto}: Linux 6.5+ keeps the first SYN timeouts at 1 s, "
                f"tcp_syn_linear_timeouts = {_SYN_LINEAR_TIMEOUTS}; older kernels double "
                "from the first)"
            )
        else:
            text += f" (timeout {rto}: doubling after the linear ones, backoff {e['backoff']})"
        return "syn_timeout", text
    return "synack_timeout", text + f" (timeout 1 s × {1 << max(e['backoff'], 0)} = {rto})"


def _timing_only(e: dict) -> str:
    gap, rule = e["since_send"], e["rule"]
    g = _t(gap) if gap is not None else "?"
    what = {
        "timing_tlp": f"the tail re-sent {g} after the last send, in Open on a SACK "
        "connection with no probe out: read as a TLP",
        "timing_walk": f"in Loss, re-sent {g} after the last send (sooner than any timer): "
        "read as the slow-start walk after the RTO",
        "timing_fast": f"re-sent {g} after the last send, amid the stream (sooner than any "
        "timer, not the tail): read as a fast retransmit",
    }.get(rule)
    if what is None:  # timing_rto
        quiet = gap is None or gap >= 0.75 * _RTO_MIN_US * 1000
        what = (
            f"re-sent after {g} of silence (at least ¾ of TCP_RTO_MIN): read as an RTO"
            if quiet
            else f"the tail re-sent {g} after the last send with a probe already out or no "
            "SACK: read as an RTO"
        )
    return f"one-way capture (no ACK of this flow): {what}"


_BY_RULE = {
    "tlp": _tlp,
    "rto": _rto,
    "rto_capture_start": _rto_capture_start,
    "rack_timer": _rack_timer,
    "fast_sack": _fast_sack,
    "fast_dupack": _fast_dupack,
    "lost_retransmit": _lost_retransmit,
    "loss_walk": _ack_walk,
    "walk_continued": _walk_continued,
    "multi_segment": _multi_segment,
    "capture_start_walk": _capture_start_walk,
    "pmtu": _pmtu,
    "tfo": _tfo,
    "syn": lambda e: _syn(e, "SYN"),
    "synack": lambda e: _syn(e, "SYN-ACK"),
}


# --- kernel events (analyze/pipeline.py) ---------------------------------------------------

_REASON_WORDS = {
    "tlp": "tail loss probe, tcp_send_loss_probe",
    "rto": "retransmission timeout, tcp_retransmit_timer",
    "fast": "fast retransmit / RACK, tcp_xmit_retransmit_queue outside Loss",
    "rto_recovery": "slow-start retransmit, tcp_xmit_retransmit_queue in Loss",
    "syn": "SYN timeout, tcp_retransmit_timer in SYN_SENT",
    "synack": "SYN-ACK timeout, the request socket's timer",
    "other": "no known caller on the kernel stack",
}


def of_events(ev: dict) -> tuple[np.ndarray, np.ndarray]:
    """(cause, cause_text) per kernel event, from the event alone: its reason and the
    socket state the event carries (icsk_backoff, SRTT, packets_out, the CA state, the
    error a failed attempt returned)."""
    n = len(ev["reason"])
    reason = list(ev["reason"])

    def col(name: str) -> list:
        return _opt(ev[name]) if name in ev else [None] * n

    srtt, backoff, pout, ca, err = (
        col(k) for k in ("srtt_us", "backoff", "packets_out", "ca_state", "err")
    )
    codes = np.array([CAUSE_OF_REASON.get(r, "unknown") for r in reason], dtype=object)
    texts = np.empty(n, dtype=object)
    for i in range(n):
        texts[i] = _event_sentence(reason[i], srtt[i], backoff[i], pout[i], ca[i], err[i])
    return codes, texts


def _event_sentence(reason, srtt, backoff, pout, ca, err) -> str:
    s = f"kernel: {_REASON_WORDS.get(reason, reason)}"
    parts = []
    if reason == "tlp" and srtt:
        extra = _RTO_MIN_US if pout == 1 else _TIMEOUT_MIN_US
        parts.append(
            f"SRTT {_t(srtt * 1000)}: PTO ≈ 2·SRTT + {_t(extra * 1000)} = "
            f"{_t((2 * srtt + extra) * 1000)}"
        )
    elif srtt:
        parts.append(f"SRTT {_t(srtt * 1000)}")
    if reason in ("rto", "syn", "synack") and backoff is not None:
        parts.append(f"backoff {backoff}")
    if pout is not None:
        parts.append(f"{pout} segment{'s' if pout != 1 else ''} out")
    if ca:
        parts.append(f"CA state {ca}")
    if err:
        parts.append(f"the attempt failed ({err}: not sent)")
    return s + (f" ({', '.join(parts)})" if parts else "")


def with_kernel(
    ev_cause: np.ndarray,
    ev_text: np.ndarray,
    cap_cause,
    cap_text,
    kind: np.ndarray,
    kind_pcap,
    has_frame: np.ndarray,
    match,
) -> tuple[np.ndarray, np.ndarray]:
    """Per kernel event: the capture's cause where a retransmitted frame of it was found
    (``has_frame``) and read in the kernel's family (its evidence is richer); else the
    event's own, with the capture's reading beside it when there was one, or why no frame
    was found (``match``)."""
    cc, ct, kp, mt = (np.asarray(x, dtype=object) for x in (cap_cause, cap_text, kind_pcap, match))
    codes, texts = ev_cause.copy(), ev_text.copy()
    for i in range(len(ev_cause)):
        if has_frame[i] and cc[i] is not None:
            if family_of_cause(cc[i], kp[i]) == FAMILY_OF_KIND.get(kind[i]):
                codes[i], texts[i] = cc[i], ct[i]
            else:
                texts[i] = (
                    f"{ev_text[i]}; the capture read it as {_KIND_WORDS.get(kp[i], kp[i])}: {ct[i]}"
                )
        elif mt[i] not in (None, "matched", "no_capture"):
            texts[i] = f"{ev_text[i]}; no frame in the capture ({mt[i]})"
    return codes, texts


__all__ = ["cause_columns", "of_events", "with_kernel", "family_of_cause"]
