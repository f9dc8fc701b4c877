"""The Linux sender's loss recovery, replayed per flow: which kernel function resent a burst.

Linux retransmits from four places (net/ipv4/tcp_output.c, tcp_timer.c, tcp_recovery.c):

* ``tcp_send_loss_probe`` (**tlp**, RFC 8985 §7): the probe timer fired ~2·SRTT after the
  last transmission or ACK, in the Open/CWR state, on a SACK connection, with no probe
  already outstanding (``tlp_high_seq``); it resends the *tail* (the last MSS below snd_nxt).
* ``tcp_retransmit_timer`` (**rto**, RFC 6298 §5): the retransmission timer fired; it
  enters the Loss state and resends the *head* (snd_una), one MSS, doubling the timer on each
  consecutive timeout (``backoff``). In SYN_SENT that is a **syn**; a SYN-ACK is a **synack**.
* ``tcp_xmit_retransmit_queue`` called while processing an ACK (or from the RACK reorder
  timer, tcp_rack_reo_timeout): **fast** when the congestion state is not Loss (SACK/RACK
  recovery, RFC 6675 / RFC 8985 §6), **rto_recovery** in the Loss state (the slow-start
  retransmits of the rest of the window after an RTO, until snd_una passes high_seq).

The capture is taken on the sender's host, so an ACK-clocked retransmission leaves within
microseconds of the ACK that released it, while every timer fires at least
TCP_TIMEOUT_MIN_US (2 ms) after the event that armed it. That clock, which segment is resent
(head = snd_una, tail = the last MSS below snd_nxt), how much is resent at once (the timers
resend one MSS), and the congestion state replayed below decide the kind.

The replayed state (tcp_fastretrans_alert, tcp_process_loss, tcp_process_tlp_ack):

* Open / Disorder: Disorder while the receiver reports SACKed data above snd_una, or
  after recovery while the segment at snd_una was ever resent (tcp_try_keep_open). A probe
  is only scheduled in Open (and CWR), on a SACK connection, with tlp_high_seq clear.
* Recovery: entered by the first fast retransmit (an ACK with loss news, or the RACK
  reorder timer; high_seq = snd_nxt), left when snd_una reaches high_seq or when D-SACKs
  report every retransmission of the episode duplicate (tcp_try_undo_dsack).
* Loss: entered by an RTO (high_seq = snd_nxt, tlp_high_seq cleared), left when snd_una
  reaches high_seq, on an Eifel undo (the ACK echoes a TSval older than the first
  retransmission, tcp_packet_delayed), an F-RTO undo (never-resent data acknowledged, RFC
  5682), a D-SACK undo, or for Recovery when RACK finds a retransmission lost again
  (FLAG_LOST_RETRANS: a range already resent in this Loss episode is resent on an ACK).
* tlp_high_seq: set by a probe; cleared by an ACK beyond it, a D-SACK or pure duplicate
  ACK at it, entering Recovery or Loss; an ACK exactly at it leaves it set.

A capture that starts mid-connection is read with the same rules: a gap before the next
new data shows how far snd_nxt already was (retrans.py marks the segments before it), and
a retransmission with no ACK seen yet is timed from the capture's start.

``SenderState`` is one flow's sender; its methods are the transitions, named after the
kernel functions they mirror. The replay walks only the *bursts* of retransmissions of each
flow (not every packet); the ACK-driven state changes between two bursts are found with
binary searches over the flow's cumulative-ACK array. classify.py computes, in bulk, the
evidence each burst is judged on (its clock, SRTT/RTO, packets out, the ACK table).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from copy import copy

import numpy as np

from retranscope.analyze.table import NO_VALUE
from retranscope.schemas.packets import TCP_ACK, TCP_SYN
from retranscope.schemas.vocabulary import (
    TCP_CA_DISORDER,
    TCP_CA_LOSS,
    TCP_CA_OPEN,
    TCP_CA_RECOVERY,
)

# include/net/tcp.h
TCP_RTO_MIN_US = 200_000  # TCP_RTO_MIN (HZ/5)
TCP_RTO_MAX_US = 120_000_000  # TCP_RTO_MAX
TCP_TIMEOUT_INIT_US = 1_000_000  # TCP_TIMEOUT_INIT, RFC 6298 §2.1
TCP_TIMEOUT_MIN_US = 2_000  # TCP_TIMEOUT_MIN_US: floor of the PTO and RACK timers
TCP_SYN_LINEAR_TIMEOUTS = 4  # net.ipv4.tcp_syn_linear_timeouts' default (Linux 6.5+)

#: A retransmission this soon after an ACK was sent while processing it: no timer can fire
#: earlier than TCP_TIMEOUT_MIN_US after the ACK that (re)armed it.
ACK_CLOCK_NS = TCP_TIMEOUT_MIN_US * 1000 // 2
#: No timer fires sooner than this after the ACK that re-armed it: an ACK that advances
#: snd_una re-arms the probe/RTO timer (tcp_set_xmit_timer) or the RACK reorder timer, both
#: at least TCP_TIMEOUT_MIN_US away. Closer than that, a retransmission answers that ACK
#: even if the stack processed it late (socket owned by the writer: the backlog).
TIMER_MIN_NS = TCP_TIMEOUT_MIN_US * 1000
#: Wire segments of one kernel retransmit call (a GSO skb split, or the rest of the queue
#: walk) leave back to back, with no ACK in between.
BURST_GAP_NS = TCP_TIMEOUT_MIN_US * 1000 // 2

#: An ICMP too-big message resends what it concerns at once, or when the writer releases
#: the socket (tcp_release_cb, TCP_MTU_REDUCED_DEFERRED): within this much.
TOO_BIG_NS = 10_000_000

#: "Never" (no D-SACK, no exit): later than any time or ACK index.
NEVER = int(np.iinfo(np.int64).max // 4)

OPEN, DISORDER, RECOVERY, LOSS = TCP_CA_OPEN, TCP_CA_DISORDER, TCP_CA_RECOVERY, TCP_CA_LOSS


class SeqRanges:
    """A set of disjoint [lo, hi) sequence ranges, merged on insertion (bisect, no scans)."""

    __slots__ = ("lo", "hi")

    def __init__(self) -> None:
        self.lo: list[int] = []
        self.hi: list[int] = []

    def __bool__(self) -> bool:
        return bool(self.lo)

    def add(self, lo: int, hi: int) -> None:
        i = bisect_left(self.hi, lo)  # first range ending at or after lo
        j = bisect_right(self.lo, hi)  # ranges starting at or before hi
        if i < j:
            lo = min(lo, self.lo[i])
            hi = max(hi, self.hi[j - 1])
        self.lo[i:j] = [lo]
        self.hi[i:j] = [hi]

    def overlaps(self, lo: int, hi: int) -> bool:
        i = bisect_right(self.hi, lo)  # first range ending after lo
        return i < len(self.lo) and self.lo[i] < hi

    def covers(self, lo: int, hi: int) -> bool:
        i = bisect_right(self.lo, lo) - 1
        return i >= 0 and self.hi[i] >= hi

    def above(self, floor: int) -> tuple[tuple[int, int], ...]:
        """The ranges, cut at ``floor``: what a query at or above it can see."""
        i = bisect_right(self.hi, floor)
        return tuple((max(lo, floor), hi) for lo, hi in zip(self.lo[i:], self.hi[i:]))


class AckHistory:
    """The receiver's ACKs of every data flow (classify._ack_table), flow after flow, each
    in capture order, as Python lists: the replay reads them one scalar at a time, several
    times faster from a list than from numpy. A column becomes a list when first read:
    most captures never need the F-RTO, Eifel or probe columns, and making a list of
    650,000 large integers costs a few ms. ``adv_ff[k]``: the last ACK at or before k that
    advanced snd_una (-1: none); ``sack_left``: the left edge of the highest SACK block;
    ``sample_ff[k]``: the last ACK at or before k that gave an RTT sample (-1: none)."""

    ts: list[int]
    una: list[int]
    ack: list[int]
    prev_una: list[int]
    adv: list[bool]
    adv_ff: list[int]
    sack_hi: list[int]
    sack_left: list[int]
    sack_top: list[int]
    sack_n: list[int]
    dsack: list[bool]
    syn: list[bool]
    tsecr: list[int]
    payload: list[int]
    new_after: list[bool]
    sample_ff: list[int]
    frame: list[int]
    snd_nxt: list[int]

    def __init__(self, table: dict[str, np.ndarray], adv_ff: np.ndarray):
        self._columns = dict(table, adv_ff=adv_ff, sack_left=table["sack_hi_left"])

    def __getattr__(self, name: str) -> list:
        # Only reached while the column is not yet an attribute.
        if name.startswith("_") or name not in self._columns:
            raise AttributeError(name)
        column = self._columns[name].tolist()
        setattr(self, name, column)
        return column


class RetransRows:
    """Per retransmitted wire segment (classify's rows), as Python lists: ``seq``, ``ts``
    (ns), ``flags``, ``snd_nxt`` (the sender's when it left), ``tsval``/``has_ts``, ``k``
    (the last ACK before it, an AckHistory index, -1: none), ``sla`` (ns since that ACK, in
    the sender's time), ``srtt``/``rto`` (us, in force), ``probe`` (keep-alive / window
    probe), ``dsack`` (when a D-SACK reported it duplicate, else NEVER), ``pkts_out``
    (tp->packets_out), ``head_ts`` (first transmission of the segment at snd_una) and
    ``sls`` (ns since the flow's previous transmission, NO_VALUE: none) and ``cut`` (it
    starts where a first transmission started and ends before that one did), ``orig_ts``
    (ns: the first transmission of its first byte in the capture, NO_VALUE: none) and
    ``gap_below`` (above snd_una with nothing seen in between: classify._unseen_below) and
    ``spans`` (it runs into the next first transmission: skbs collapsed)."""

    __slots__ = (
        "seq",
        "ts",
        "flags",
        "snd_nxt",
        "tsval",
        "has_ts",
        "k",
        "sla",
        "srtt",
        "rto",
        "probe",
        "dsack",
        "pkts_out",
        "head_ts",
        "sls",
        "end",
        "cut",
        "orig_ts",
        "gap_below",
        "spans",
    )

    def __init__(self, table: dict[str, np.ndarray]):
        self.seq: list[int] = table["seq"].tolist()
        self.ts: list[int] = table["ts"].tolist()
        self.flags: list[int] = table["flags"].tolist()
        self.snd_nxt: list[int] = table["snd_nxt"].tolist()
        self.tsval: list[int] = table["tsval"].tolist()
        self.has_ts: list[bool] = table["has_ts"].tolist()
        self.k: list[int] = table["k"].tolist()
        self.sla: list[int] = table["sla"].tolist()
        self.srtt: list[float] = table["srtt"].tolist()
        self.rto: list[float] = table["rto"].tolist()
        self.probe: list[bool] = table["probe"].tolist()
        self.dsack: list[int] = table["dsack"].tolist()
        self.pkts_out: list[int] = table["pkts_out"].tolist()
        self.head_ts: list[int] = table["head_ts"].tolist()
        self.sls: list[int] = table["sls"].tolist()
        self.end: list[int] = table["end"].tolist()
        self.cut: list[bool] = table["cut"].tolist()
        self.orig_ts: list[int] = table["orig_ts"].tolist()
        self.gap_below: list[bool] = table["gap_below"].tolist()
        self.spans: list[bool] = table["spans"].tolist()


class Burst:
    """One kernel retransmit call as the capture shows it: wire segments ``rows`` of one
    flow sent back to back with no ACK between, covering [lo, hi), and the evidence every
    rule reads (taken at its first segment)."""

    __slots__ = (
        "rows",
        "lo",
        "hi",
        "ts_ns",
        "k",
        "una",
        "snd_nxt",
        "srtt_us",
        "rto_us",
        "since_ack_ns",
        "flags",
        "pkts_out",
        "head_ts_ns",
        "since_send_ns",
        "cut",
        "multi",
    )

    def __init__(
        self, rows: list[int], lo: int, hi: int, r: RetransRows, una: int, mss: int | None
    ):
        r0 = rows[0]
        self.rows, self.lo, self.hi = rows, lo, hi
        self.ts_ns = r.ts[r0]
        self.k = r.k[r0]
        self.una = una
        self.snd_nxt = r.snd_nxt[r0]
        self.srtt_us = r.srtt[r0]
        self.rto_us = r.rto[r0]
        self.since_ack_ns = r.sla[r0]
        self.flags = r.flags[r0]
        self.pkts_out = r.pkts_out[r0]
        self.head_ts_ns = r.head_ts[r0]
        self.since_send_ns = r.sls[r0]  # since the flow's previous transmission (NO_VALUE)
        self.cut = r.cut[r0]  # begins where a first transmission began, ends before it
        # tcp_retransmit_timer and tcp_send_loss_probe resend one MSS (segs = 1, and
        # tcp_retrans_try_collapse stays within it): more at once is
        # tcp_xmit_retransmit_queue, from an ACK (perhaps one not seen) or the RACK timer.
        self.multi = len(rows) > 1 or (mss is not None and hi - lo > mss)


class Verdict:
    """What the replay concluded about a burst: the kernel ``kind``, its ``clock`` ("ack" or
    "timer"), ``position`` (head/tail/middle), the CA state it was sent in, the timeout's
    ``backoff`` (-1: not a timeout), the ``trigger`` ACK (AckHistory index, -1: none), and
    the probe and retransmission timeouts in force (``pto_us``, ``rto_us``), and for a
    re-send no timer and no duplicate ACK caused, its ``cause`` ("tfo", "pmtu") and the
    path MTU it implies (``mtu``, 0: unknown).

    And the evidence the deciding rule read, which analyze/causes.py puts into words:
    ``rule`` (RULES: which rule decided), ``ca_before`` (the CA state the burst found, once
    the ACKs before it were applied), ``episode_ns`` / ``episode_by`` (when the Recovery or
    Loss episode it belongs to began, and what began it: RULES' names, "capture_start" or
    "unseen_timeout"; NO_VALUE / None outside one), ``prev_rtx_ns`` (the previous
    retransmission of its first segment, NO_VALUE: none), ``armed_ns`` (a timeout: when
    the RTO timer was last armed, tcp_rearm_rto; NO_VALUE otherwise), ``pkts_out`` (the
    PTO's one-segment case), ``dupacks`` (ACKs since the last that advanced snd_una, up to
    the trigger) and ``icmp_frame`` (the ICMP too-big message a PMTU re-send answers, -1:
    none in the capture)."""

    __slots__ = (
        "kind",
        "clock",
        "position",
        "ca_state",
        "backoff",
        "trigger",
        "pto_us",
        "rto_us",
        "cause",
        "mtu",
        "rule",
        "ca_before",
        "episode_ns",
        "episode_by",
        "prev_rtx_ns",
        "armed_ns",
        "pkts_out",
        "dupacks",
        "icmp_frame",
    )

    def __init__(self, position: str, pto_us: float):
        self.kind = "unknown"
        self.clock = "timer"
        self.position = position
        self.ca_state = OPEN
        self.backoff = -1
        self.trigger = -1
        self.pto_us = pto_us
        self.rto_us: float = 0.0
        self.cause: str | None = None
        self.mtu = 0
        self.rule = "unknown"
        self.ca_before = OPEN
        self.episode_ns = NO_VALUE
        self.episode_by: str | None = None
        self.prev_rtx_ns = NO_VALUE
        self.armed_ns = NO_VALUE
        self.pkts_out = 0
        self.dupacks = 0
        self.icmp_frame = -1


#: Verdict.rule: which rule of the replay decided a burst (the method that decides it).
RULES = {
    "tlp": "the probe timer fired (_which_timer -> tcp_send_loss_probe)",
    "rto": "the retransmission timer fired (_which_timer, _reno_timer_kind -> "
    "tcp_retransmit_timer)",
    "rto_capture_start": "the RTO ending the silence the capture began in (_capture_start_kind)",
    "rack_timer": "the RACK reorder timer (_which_timer: fast, no ACK just before)",
    "fast_sack": "an ACK with SACK news, outside Loss (tcp_fastretrans_alert)",
    "fast_dupack": "a duplicate or partial ACK of a Reno flow (tcp_fastretrans_alert)",
    "lost_retransmit": "an ACK on which RACK found a retransmission lost again "
    "(tcp_fastretrans_alert, SACK, the range already resent)",
    "loss_walk": "an ACK in Loss: the slow-start walk (tcp_fastretrans_alert -> tcp_process_loss)",
    "multi_segment": "more than one MSS at once, no ACK just before: the retransmit queue's "
    "walk (an ACK the capture may lack, or the RACK timer), never a timer's "
    "one-MSS re-send (_which_timer)",
    "walk_continued": "in Loss, not the head, right after the previous send: the walk "
    "continued without an ACK (TSQ, pacing)",
    "capture_start_walk": "no ACK of the flow yet, data held beyond it (_capture_start_kind)",
    "syn": "the handshake's timer, SYN_SENT (_syn_timeout)",
    "synack": "the request socket's timer (_syn_timeout)",
    "tfo": "the SYN-ACK did not cover the SYN's data (_fastopen_data_not_acked)",
    "pmtu": "a path MTU drop (_no_timer_could_fire)",
    "timing_tlp": "one-way: the tail after a silence, a probe allowed (_by_timing_alone)",
    "timing_rto": "one-way: after a silence, or the tail with no probe allowed",
    "timing_walk": "one-way: in Loss, soon after the previous send",
    "timing_fast": "one-way: amid the stream, sooner than any timer",
}


class SenderState:
    """One flow's sender (struct tcp_sock, as far as the capture shows it), replayed burst by
    burst. ``on_burst`` first applies the ACKs received since the previous burst (tcp_ack),
    then decides which kernel function sent the burst, then records its transitions."""

    __slots__ = (
        "acks",
        "rows",
        "a_first",
        "a_end",
        "sack_ok",
        "mss",
        "una0",
        "t_cap0",
        # congestion state (icsk_ca_state) and its bookkeeping
        "ca_state",
        "high_seq",
        "entry_k",
        "loss_ranges",
        "ever_resent",
        "frto",
        # undo: retransmissions since the last Open (undo_retrans) and their D-SACKs
        "undo_retrans",
        "undo_dsack_ns",
        "retrans_stamp",
        # tail loss probe in flight (tlp_high_seq), and the ACK current when it left
        "tlp_high_seq",
        "tlp_k",
        # consecutive timeouts of one head with snd_una unmoved (icsk_retransmits)
        "rto_head",
        "rto_una",
        "retransmits",
        # RTO doublings since the last valid RTT sample (icsk_backoff), and the last ACK
        # applied
        "icsk_backoff",
        "last_k",
        "syn_retransmits",
        "last_rtx_ns",
        # what a re-send no timer and no ACK caused needs: the data the SYN carried (TCP
        # Fast Open, its end; NO_VALUE: none), the header bytes around a segment's payload
        # (IP, TCP, options), and the path MTU messages (ICMP) the capture holds
        "syn_end",
        "hdr_bytes",
        "too_big",
        "too_big_seen",
        # what entered the current Loss episode when it was no timeout ("pmtu", "tfo")
        "loss_cause",
        # when the current Recovery or Loss episode began and the rule that began it (the
        # evidence a cause cites: Verdict.episode_ns / episode_by)
        "episode_ns",
        "episode_by",
        # no ACK of this flow in the capture (a one-way capture): timing alone decides
        "timing_only",
        # the sender evidently arms no loss probe (_probe_overdue)
        "no_probe",
        # when the previous burst of retransmissions left (NO_VALUE: none yet)
        "prev_burst_ns",
        # the round trip from the capture point to the sender and back (0: its own host)
        "trip_ns",
        # the highest snd_una the replay took beyond the capture's ACKs (snd_una_of)
        "una_hint",
        # the MSS, or the capture's best guess where no handshake shows it
        "mss_est",
    )

    def __init__(
        self,
        acks: AckHistory,
        rows: RetransRows,
        a_first: int,
        a_end: int,
        sack_ok: bool,
        mss: int | None,
        una0: int,
        t_cap0: int,
        syn_end: int = NO_VALUE,
        hdr_bytes: int = 0,
        too_big: list[tuple[int, int, int]] | None = None,
    ):
        self.acks, self.rows = acks, rows
        self.a_first, self.a_end = a_first, a_end  # this flow's ACKs: [a_first, a_end)
        self.sack_ok = sack_ok
        self.mss = mss  # the sender's MSS, None when no handshake showed it
        self.una0 = una0  # snd_una before any ACK
        self.t_cap0 = t_cap0  # the capture's first packet (ns)
        self.ca_state = OPEN
        self.high_seq = 0
        self.entry_k = -1  # ACK index current when the state was entered
        self.loss_ranges = SeqRanges()  # ranges resent since the last RTO (the Loss episode)
        self.ever_resent = SeqRanges()  # every range ever resent (TCPCB_EVER_RETRANS)
        self.frto = False
        self.undo_retrans = 0  # retransmissions since the last Open (undo accounting)
        self.undo_dsack_ns = NO_VALUE  # ... and when the last of their D-SACKs arrived
        self.retrans_stamp: int | None = None  # TSval of the episode's first retransmission
        self.tlp_high_seq: int | None = None
        self.tlp_k = -1
        self.rto_head: int | None = None  # head seq of the current run of timeouts
        self.rto_una: int | None = None
        self.retransmits = 0
        self.icsk_backoff = 0
        self.last_k = -1
        self.syn_retransmits = 0
        self.last_rtx_ns: dict[int, int] = {}  # seq -> time of its latest retransmission
        self.syn_end = syn_end
        self.hdr_bytes = hdr_bytes
        # (ts_ns, mtu, frame) of each ICMP too-big, in time order
        self.too_big = too_big or []
        self.too_big_seen = 0  # messages before this index have been answered
        self.loss_cause: str | None = None
        self.episode_ns = NO_VALUE
        self.episode_by: str | None = None
        self.timing_only = a_first >= a_end
        self.no_probe = False
        self.prev_burst_ns = NO_VALUE
        self.trip_ns = 0
        self.una_hint = NO_VALUE
        self.mss_est = mss or 1 << 30

    def capture_started_in_loss(self, seq: int, end: int, ts_ns: int, snd_nxt: int) -> None:
        """The capture began in a Loss episode (classify._capture_start_timeout): the
        timeout resent [seq, end) at ts_ns with snd_nxt as high_seq (tcp_enter_loss, from
        tcp_retransmit_timer). F-RTO is taken as not running: what was resent before the
        capture is unknown, so no ACK can prove the timeout spurious."""
        self.tcp_enter_loss(-1, snd_nxt, frto=False, ts_ns=ts_ns, by="capture_start")
        self.loss_ranges.add(seq, end)
        self.ever_resent.add(seq, end)
        self.rto_head, self.rto_una, self.retransmits = seq, seq, 0
        self.icsk_backoff = 1  # that timeout doubled the RTO
        self.undo_retrans, self.undo_dsack_ns = 1, NEVER  # no D-SACK can undo it unseen
        self.last_rtx_ns[seq] = ts_ns

    def snd_una_at(self, k: int) -> int:
        """snd_una once ACK ``k`` (-1: none yet) was processed."""
        return self.acks.una[k] if k >= 0 else self.una0

    def snd_una_of(self, r0: int) -> int:
        """snd_una when retransmission ``r0`` left. Where it starts above the capture's
        snd_una with nothing seen in between and no SACK block above (a capture that lost
        frames, or started late), snd_una had reached it: tcp_retransmit_timer and
        tcp_send_loss_probe resend the head or the tail, never a segment between, and
        without SACK nothing marks one lost there (tcp_mark_head_lost works from the
        head); the ACK that moved it is missing from the capture."""
        r, k = self.rows, self.rows.k[r0]
        una = self.snd_una_at(k)
        lo = r.seq[r0]
        if r.gap_below[r0] and lo > una and not (k >= 0 and self.acks.sack_hi[k] > una):
            self.una_hint = max(self.una_hint, lo)
            return lo
        return una

    def at_cut(self, k: int, sent_floor: int) -> tuple[tuple, int]:
        """What of this sender the rest of its flow can still read, as of a cut after
        which the next ACK it applies is at or after ``k`` (the flow's last ACK before
        the cut, -1: none) and no retransmission resends below ``sent_floor`` (what was
        sent before the later window's rows: windows._reaches_back): two replays of one
        flow that give the same here go on alike (windows.py compares the replays of the
        two windows beside a cut, the later one started afresh). And the earliest ACK (a
        frame; NEVER: none) it refers to, or whose search starts at the flow's first,
        whose successors the later window must hold.

        The ACKs up to ``k`` are applied to a copy (tcp_ack, lazy in the replay: a burst
        applies those since the one before). tcp_ack(k) then tcp_ack(k') is tcp_ack(k')
        but in one thing: leaving Recovery, Loss or Disorder, it picks Disorder by
        whether the segment at snd_una was ever resent (tcp_try_keep_open) at k's snd_una
        as well as at k''s; so where a segment above snd_una was resent, the state before
        the copy's ACKs (left by them, or Disorder, against Open) is compared too.
        What is read only below the floor (the history sets, ``una_hint``) and what the
        state no longer reads (the episode's marks outside one, the backoff's ACK without
        backoff, the SYN's timer once ACKed) is left out. A flow's constants (MSS, SACK,
        the path) are the flows' facts, compared elsewhere."""
        if 0 <= k < self.last_k:  # a clock that stepped back: ACKs not in order
            return ("ACKs applied out of order",), -1
        a = copy(self)  # tcp_ack reassigns what it changes: the copy shares no state it sets
        una = self.snd_una_at(k)
        if k >= 0:
            a.tcp_ack(k, una)
        st = a.ca_state
        episode = st == RECOVERY or st == LOSS
        floor = min(una, sent_floor)
        refs = []
        if episode:  # tcp_process_loss reads the first ACKs after the episode began
            floor = min(floor, a.snd_una_at(a.entry_k))
            refs.append(a.entry_k)
        if a.tlp_high_seq is not None:
            refs.append(a.tlp_k)
        if a.icsk_backoff:
            refs.append(a.last_k)
        frame = self.acks.frame if refs else []
        resent = tuple(sorted((s, t) for s, t in a.last_rtx_ns.items() if s >= floor))
        leaves = self.ca_state == DISORDER or (
            (self.ca_state == RECOVERY or self.ca_state == LOSS) and not episode
        )
        state = (
            a.timing_only,
            a.no_probe,
            st,
            leaves if resent else None,
            a.high_seq if st != OPEN else None,
            tuple(frame[j] if j >= 0 else -1 for j in refs),
            a.loss_ranges.above(floor),
            a.ever_resent.above(floor),
            a.frto if st == LOSS else None,
            bool(a.undo_retrans),  # read as a flag (tcp_ack, tcp_retransmit_skb)
            a.undo_dsack_ns,
            a.retrans_stamp,
            a.tlp_high_seq,
            a.rto_head,
            a.rto_una,
            a.retransmits,
            a.icsk_backoff,
            a.syn_retransmits if k < 0 else None,
            a.loss_cause if st == LOSS else None,
            a.episode_ns,
            a.episode_by,
            a.prev_burst_ns if a.timing_only and st == RECOVERY else None,
            max(a.una_hint, floor) if st == LOSS else None,
            resent,
        )
        # -1 (no ACK yet): the searches start at the flow's first ACK (a_first)
        first = frame[self.a_first] if refs and self.a_first < self.a_end else NEVER
        return state, min((frame[j] if j >= 0 else first for j in refs), default=NEVER)

    # ---- a burst ---------------------------------------------------------------------

    def on_burst(self, b: Burst) -> Verdict:
        """Which kernel function sent burst ``b``, and the transitions it made."""
        if b.k >= 0:
            self.tcp_ack(b.k, b.una)
        head = b.lo <= b.una
        tail = b.hi >= b.snd_nxt
        v = Verdict(
            "head+tail" if head and tail else "head" if head else "tail" if tail else "middle",
            self.probe_timeout_us(b),
        )
        v.ca_before, v.pkts_out = self.ca_state, b.pkts_out
        v.prev_rtx_ns = self.last_rtx_ns.get(b.lo, NO_VALUE)
        if self.timing_only and not b.flags & TCP_SYN:
            self._by_timing_alone(b, v, tail)
        else:
            self._decide(b, v, head, tail)
        if self.ca_state == RECOVERY or self.ca_state == LOSS:
            v.episode_ns, v.episode_by = self.episode_ns, self.episode_by
        self.tcp_retransmit_skb(b, v.kind)
        return v

    def _decide(self, b: Burst, v: Verdict, head: bool, tail: bool) -> None:
        """A burst of a flow whose ACKs the capture holds: a re-send no timer and no
        duplicate ACK caused (TCP Fast Open, a path MTU drop), else the usual senders."""
        ack_clocked = self._ack_clocked(b, head)
        if self._fastopen_data_not_acked(b):
            self.tcp_non_congestion_loss_retransmit(b, v, "tfo")
            v.clock, v.trigger = "ack", b.k
        elif not ack_clocked and not b.flags & TCP_SYN and self._no_timer_could_fire(b):
            self.tcp_non_congestion_loss_retransmit(b, v, "pmtu")
            v.mtu = self._path_mtu(b)
            i = self._too_big_index(b.ts_ns)
            v.icmp_frame = self.too_big[i][2] if i is not None else -1
            v.clock = "icmp"
            self.too_big_seen = bisect_right(self.too_big, (b.ts_ns, 1 << 62))
        else:
            self._on_loss_news(b, v, head, tail, ack_clocked)
            if v.kind == "rto_recovery":
                v.cause = self.loss_cause

    def _on_loss_news(
        self, b: Burst, v: Verdict, head: bool, tail: bool, ack_clocked: bool
    ) -> None:
        """The usual senders: the handshake's timer, an ACK with loss news, or a timer."""
        if (
            not self.sack_ok
            and self.ca_state != LOSS
            and not b.flags & TCP_SYN
            and (b.multi or not head)
        ):
            self._unseen_timeout(b)
        if b.flags & TCP_SYN:
            self._syn_timeout(b, v)
        elif ack_clocked:
            v.clock = "ack"
            v.trigger = b.k
            v.kind = self.tcp_fastretrans_alert(b)
            v.rule = self._ack_rule(b, v)
            v.ca_state = self.ca_state
            v.rto_us = b.rto_us
        else:
            self._timer_fired(b, v, head, tail)
            v.ca_state = self.ca_state
            v.rto_us = min(b.rto_us * (1 << min(max(v.backoff, 0), 10)), TCP_RTO_MAX_US)

    # ---- no ACK in the capture ------------------------------------------------------------

    def _by_timing_alone(self, b: Burst, v: Verdict, tail: bool) -> None:
        """A flow whose ACKs the capture lacks (``tcpdump -Q``, a ``src host`` filter,
        asymmetric routing): what released each burst is read from what it resends and
        the silence before it.

        * The tail (the last data sent) is resent by a timer: fast recovery resends holes
          below data the receiver SACKed, which was sent later, and nothing was sent after
          the tail. In Open on a SACK connection with no probe out that timer is the loss
          probe (tcp_send_loss_probe), else the RTO.
        * Anything else after a silence of TCP_RTO_MIN (less a quarter: the RTO runs from
          the head's transmission or the last ACK, not from the last send) is the RTO
          (tcp_retransmit_timer), which enters Loss.
        * Otherwise an ACK released it (the probe timer cannot have: it resends the tail):
          in Loss, below high_seq, the slow-start walk (rto_recovery), else fast recovery.

        A Recovery or Loss episode is over once a burst resends data first sent after it
        began (snd_una had passed high_seq, or a timer or the walk would resend below it),
        a probe episode once a burst resends data above the probe. Without ACKs, snd_una
        (the head) is unknown: ``position`` says only "tail" or "unknown"; nothing shows a
        retransmission spurious, nor an SRTT."""
        v.position = "tail" if tail else "unknown"
        if not self.sack_ok and self.ca_state != LOSS and b.hi - b.lo > self.mss_est:
            # NewReno resends one MSS per partial ACK (tcp_newreno_mark_lost cuts the head
            # to one); more at once is the Loss state's walk after a timeout.
            self._unseen_timeout(b)
        if tail and self.ca_state == RECOVERY and self.sack_ok and self._sent_after_tail(b):
            tail = False  # RACK may have marked it lost: an ACK can release it
        if self.ca_state != OPEN and b.lo >= self.high_seq:
            self.tcp_try_to_open(b.lo)
        if self.tlp_high_seq is not None and b.lo >= self.tlp_high_seq:
            self.tlp_high_seq = None
        quiet = b.since_send_ns < 0 or b.since_send_ns >= 0.75 * TCP_RTO_MIN_US * 1000
        v.clock = "timer"
        if self.ca_state == LOSS and not quiet:
            v.kind, v.clock, v.rule = "rto_recovery", "ack", "timing_walk"
        elif (
            tail
            and self.ca_state == OPEN
            and self.sack_ok
            and self.tlp_high_seq is None
            and not self._collapsed(b)
        ):
            self.tcp_send_loss_probe(b)
            v.kind, v.rule = "tlp", "timing_tlp"
        elif tail or quiet:
            v.kind, v.rule = "rto", "timing_rto"
            v.backoff = self.tcp_retransmit_timer(b, v.rule)
        else:
            if self.ca_state != RECOVERY:
                self.tcp_enter_recovery(b.k, b.snd_nxt, b.ts_ns, "timing_fast")
            v.kind, v.clock, v.rule = "fast", "ack", "timing_fast"
        v.ca_state = self.ca_state
        v.rto_us = b.rto_us

    def _sent_after_tail(self, b: Burst) -> bool:
        """Did the flow's previous retransmission leave after every segment of ``b`` last
        did? RACK (tcp_rack_detect_loss) marks lost whatever was sent before a segment that
        was delivered, retransmissions included (their xmit time is the resend's): once the
        receiver has that later retransmission, an ACK in Recovery marks even the tail lost
        and tcp_xmit_retransmit_queue resends it, no timer needed. RACK needs SACK
        (tcp_identify_packet_loss: a Reno flow has tcp_newreno_mark_lost, the head only)."""
        if self.prev_burst_ns == NO_VALUE:
            return False
        r = self.rows
        for i in b.rows:
            sent = max(r.orig_ts[i], self.last_rtx_ns.get(r.seq[i], NO_VALUE))
            if sent == NO_VALUE or sent >= self.prev_burst_ns:
                return False
        return True

    # ---- re-sends no timer and no duplicate ACK caused -----------------------------------

    def tcp_non_congestion_loss_retransmit(self, b: Burst, v: Verdict, cause: str) -> None:
        """Loss entered without a timeout (tcp_non_congestion_loss_retransmit): high_seq =
        snd_nxt, undo_marker = 0 (no undo: the loss was not congestion), and
        tcp_xmit_retransmit_queue resends what was marked lost at once, in the Loss state:
        the kernel's reason is rto_recovery. Its callers: tcp_rcv_fastopen_synack (the
        SYN-ACK did not cover the data the SYN carried) and tcp_simple_retransmit (an ICMP
        "fragmentation needed" / ICMPv6 "packet too big" lowered the path MTU below segments
        in flight: tcp_v4_mtu_reduced, tcp_v6_mtu_reduced)."""
        if self.ca_state != LOSS:
            self.tcp_enter_loss(b.k, b.snd_nxt, frto=False, ts_ns=b.ts_ns, by=cause)
        self.undo_retrans, self.undo_dsack_ns = 0, NEVER  # undo_marker = 0
        self.loss_cause = cause  # the rest of the episode's walk has the same cause
        v.kind, v.cause, v.rule = "rto_recovery", cause, cause
        v.ca_state, v.rto_us = LOSS, b.rto_us

    def _fastopen_data_not_acked(self, b: Burst) -> bool:
        """Did the SYN-ACK just release ``b``, the data the SYN carried that it did not
        acknowledge (tcp_rcv_synsent_state_process -> tcp_rcv_fastopen_synack)?"""
        return (
            b.k >= 0
            and b.lo < self.syn_end
            and bool(self.acks.syn[b.k])
            and 0 <= b.since_ack_ns <= ACK_CLOCK_NS
        )

    def _no_timer_could_fire(self, b: Burst) -> bool:
        """Sent by no ACK and sooner than any timer could fire: only a path MTU drop
        (tcp_simple_retransmit) resends so. An ICMP too-big message of the flow in the
        capture shortly before it says so outright. Otherwise its segments must show the
        new MSS: the first one starts where a first transmission started but ends before it
        (tcp_retransmit_skb -> tcp_fragment at the lower mss_now; a resend trimmed of an
        acknowledged head starts inside the original instead); and, in the Open state with no
        SACKed data (no RACK reorder timer armed), less than TCP_TIMEOUT_MIN after the
        flow's previous transmission (the probe timer is re-armed at each one, and fires no
        sooner), no duplicate ACK as recent (its processing may have been deferred), and
        with the RTO far from due (tcp_rearm_rto: it runs from the head's transmission or
        the last ACK that advanced snd_una)."""
        if self._too_big_before(b.ts_ns) is not None:
            return True
        if not b.cut or self.ca_state != OPEN or (b.k >= 0 and self.acks.sack_hi[b.k] > b.una):
            return False
        if not 0 <= b.since_send_ns < TIMER_MIN_NS:
            return False
        a, k = self.acks, b.k
        if (
            k >= 0
            and 0 <= b.since_ack_ns < TIMER_MIN_NS
            and (a.sack_n[k] > 0 or (not a.adv[k] and a.payload[k] == 0))
        ):
            return False  # a duplicate ACK the stack processed late (socket backlog)
        return not self._rto_due(b)

    def _too_big_before(self, ts_ns: int) -> int | None:
        """The MTU of the latest ICMP too-big message of the flow within TOO_BIG_NS before
        ``ts_ns`` (tcp_v4_err defers the work to tcp_release_cb while the writer holds the
        socket) that no earlier burst answered, else None. The burst that answers it takes
        it, and every message before it."""
        i = self._too_big_index(ts_ns)
        return None if i is None else self.too_big[i][1]

    def _too_big_index(self, ts_ns: int) -> int | None:
        """Which message _too_big_before reads (an index into ``too_big``), else None."""
        i = bisect_right(self.too_big, (ts_ns, 1 << 62)) - 1
        if i >= self.too_big_seen and ts_ns - self.too_big[i][0] <= TOO_BIG_NS:
            return i
        return None

    def _path_mtu(self, b: Burst) -> int:
        """The path MTU a PMTU re-send shows: the ICMP message's, else its segments' size
        plus their headers when they were cut below the MSS (tcp_fragment at the new
        mss_now); 0 when neither shows it (a TSO capture at the sender holds the skb, not
        its wire segments)."""
        mtu = self._too_big_before(b.ts_ns)
        if mtu is not None:
            return mtu
        r = self.rows
        seg_max = max(r.end[i] - r.seq[i] for i in b.rows)
        if self.mss is not None and self.hdr_bytes and seg_max < self.mss:
            return seg_max + self.hdr_bytes
        return 0

    def probe_timeout_us(self, b: Burst) -> float:
        """The PTO tcp_schedule_loss_probe would arm: 2·SRTT plus TCP_TIMEOUT_MIN (plus
        TCP_RTO_MIN instead when one segment is out: a delayed ACK), TCP_TIMEOUT_INIT before
        any RTT sample, and never later than the RTO."""
        srtt = b.srtt_us
        pto = (
            2 * srtt + (TCP_RTO_MIN_US if b.pkts_out == 1 else TCP_TIMEOUT_MIN_US)
            if srtt > 0
            else TCP_TIMEOUT_INIT_US
        )
        return min(pto, b.rto_us)

    def _rto_due(self, b: Burst) -> bool:
        """Had half the (backed-off) RTO passed since the timer was last armed? It runs from
        the later of the head's last transmission and the last ACK that advanced snd_una
        (tcp_rearm_rto, tcp_rto_delta_us), doubled per timeout since the last RTT sample
        (icsk_rto << icsk_backoff)."""
        since_arm_ns = b.ts_ns - self._rto_armed_ns(b)
        return since_arm_ns >= 0.5 * b.rto_us * 1000 * (1 << min(self.icsk_backoff, 10))

    def _rto_armed_ns(self, b: Burst) -> int:
        """When the RTO timer was last armed before ``b``: the later of the head's last
        transmission and the last ACK that advanced snd_una (tcp_rearm_rto)."""
        a = self.acks
        head_tx = max(b.head_ts_ns, self.last_rtx_ns.get(b.una, NO_VALUE))
        ka = a.adv_ff[b.k] if b.k >= 0 else -1
        t_adv = a.ts[ka] if ka >= self.a_first else NO_VALUE
        return max(head_tx, t_adv)

    def _ack_clocked(self, b: Burst, head: bool) -> bool:
        """Did an ACK release this burst (tcp_ack -> tcp_xmit_recovery) rather than a timer?

        Within ACK_CLOCK_NS of an ACK, yes. Up to TIMER_MIN_NS after an ACK that advanced
        snd_una also (the stack processed it late), unless the RTO was due for the head.
        In Open, only a dubious ACK enters tcp_fastretrans_alert (tcp_ack_is_dubious): one
        with SACK blocks (FLAG_DATA_SACKED; the receiver repeats them while it holds data
        out of order, which is the kernel's Disorder) or a duplicate ACK (no FLAG_NOT_DUP);
        progress alone, or peer data, releases nothing.
        """
        sla, k = b.since_ack_ns, b.k
        a = self.acks
        clocked = 0 <= sla <= ACK_CLOCK_NS or (
            0 <= sla < TIMER_MIN_NS and k >= 0 and a.adv[k] and not (head and self._rto_due(b))
        )
        if clocked and self.ca_state == OPEN and k >= 0:
            if not (a.sack_n[k] > 0 or (not a.adv[k] and a.payload[k] == 0)):
                return False
        return clocked

    # ---- the ACKs between two bursts (tcp_ack) -----------------------------------------

    def tcp_ack(self, k: int, una: int) -> None:
        """Apply the ACKs up to index ``k`` (snd_una is now ``una``): leaving Recovery/Loss
        when snd_una reaches high_seq or on an undo, Disorder when nothing resent is left at
        snd_una, the end of a probe episode (tcp_process_tlp_ack), and a new run of
        timeouts once snd_una moved (tcp_ack clears icsk_retransmits). icsk_backoff (and
        the doubled icsk_rto) go only on a valid RTT sample (tcp_ack_update_rtt, RFC 6298
        §5.7): with timestamps every ACK that moves snd_una gives one; without them an ACK
        of resent data alone does not (Karn), and the next RTO stays backed off."""
        if self.acks.sample_ff[k] > self.last_k:
            self.icsk_backoff = 0
        self.last_k = k
        st = self.ca_state
        while st == RECOVERY or st == LOSS:
            exit_k = self._high_seq_acked_at()
            undo_k = self.tcp_process_loss(min(k, exit_k)) if st == LOSS else NEVER
            if self.undo_retrans and min(exit_k, undo_k) > k:
                undo_k = min(undo_k, self.tcp_try_undo_dsack(k))
            if min(exit_k, undo_k) > k:
                break
            if st == RECOVERY and exit_k <= undo_k and self._lost_still_out(exit_k):
                # Recovery ends at this ACK (tcp_fastretrans_alert step D), and step E
                # opens the next episode at once: tcp_time_to_recover holds while lost_out
                # does, and the segment now at snd_una was marked lost and re-sent in the
                # episode that ended (data sent after that one began, lost in turn).
                self.tcp_enter_recovery(
                    exit_k, self.acks.snd_nxt[exit_k], self.acks.ts[exit_k], "lost_out"
                )
                continue  # the new episode may end within these ACKs too
            self.tcp_try_to_open(una)
            break
        if st == DISORDER and una not in self.last_rtx_ns:
            self.ca_state = OPEN
        if self.tlp_high_seq is not None and self.tcp_process_tlp_ack(k):
            self.tlp_high_seq = None
        if self.rto_una is not None and una > self.rto_una:
            self.rto_head = self.rto_una = None
            self.retransmits = 0

    def _lost_still_out(self, j: int) -> bool:
        """At ACK ``j``, is the segment at snd_una one the current episode re-sent (marked
        lost: tp->lost_out counts it until it is acknowledged)? Its first byte is the new
        snd_una, and it went out after the episode began and before this ACK came."""
        a = self.acks
        sent_ns = self.last_rtx_ns.get(a.una[j])
        return (
            sent_ns is not None
            and self.episode_ns <= sent_ns <= a.ts[j]
            and a.snd_nxt[j] > a.una[j]
        )

    def _high_seq_acked_at(self) -> int:
        """First ACK since the state was entered at which snd_una reaches high_seq (else
        NEVER): tcp_fastretrans_alert step D, tcp_process_loss ``recovered``. Reno holds
        Recovery while snd_una == high_seq, until something above it is acked
        (tcp_is_non_sack_preventing_reopen; RFC 6582 against false fast retransmits): a
        timeout meanwhile interrupts recovery. It holds Loss the same way (tcp_process_loss
        -> tcp_try_undo_recovery returns with the state kept while snd_una == high_seq):
        duplicate ACKs there release nothing."""
        una = self.acks.una
        lo, end = max(self.entry_k + 1, self.a_first), self.a_end
        if not self.sack_ok:
            j = bisect_right(una, self.high_seq, lo, end)
            return j if j < end and una[j] > self.high_seq else NEVER
        j = bisect_left(una, self.high_seq, lo, end)
        return j if j < end and una[j] >= self.high_seq else NEVER

    def tcp_process_loss(self, upto_k: int) -> int:
        """First ACK in (entry_k, upto_k] at which the Loss state is undone, else NEVER.

        tcp_process_loss, per ACK (the first eight after the timeout): one advancing
        snd_una undoes when it echoes a TSval older than the episode's first retransmission
        (tcp_try_undo_loss -> tcp_packet_delayed, Eifel). With F-RTO (RFC 5682 §3.1), an ACK
        or SACK of never-retransmitted, never-SACKed data below high_seq proves the timeout
        spurious (step 3.b, FLAG_ORIG_SACK_ACKED); once new data went out, a SACK or
        duplicate ACK proves the loss real (step 3.a); the first partial ACK with no new
        data to send falls back to conventional recovery (step 2.b). Without SACK only the
        F-RTO undo reopens the connection: tcp_try_undo_loss restores cwnd on an Eifel undo
        but leaves a Reno sender in Loss (`frto_undo || tcp_is_sack`).
        """
        a = self.acks
        frto = self.frto
        new_sent = False
        first = max(self.entry_k + 1, self.a_first)
        for j in range(first, min(upto_k, first + 7) + 1):
            adv = a.adv[j]
            if self.sack_ok and adv and self.tcp_packet_delayed(j):
                return j
            if not frto:
                continue
            # What was SACKed before: at the flow's first ACK in the capture nothing is
            # known, and its blocks (from before the capture) are not news.
            top = a.sack_top[j] if j > self.a_first else max(a.sack_top[j], a.sack_hi[j])
            if self._frto_orig_acked(j, top):
                return j
            if new_sent:
                if a.sack_hi[j] > top or (not adv and a.payload[j] == 0):
                    frto = False  # step 3.a: the loss was real
            elif adv and a.una[j] < self.high_seq:
                if a.new_after[j]:
                    new_sent = True  # step 2.b: new data sent
                else:
                    frto = False  # step 2.b: nothing new to send
        return NEVER

    def tcp_packet_delayed(self, j: int) -> bool:
        """Does ACK ``j`` echo a TSval older than the episode's first retransmission
        (tcp_packet_delayed, RFC 3522)? Then the original arrived: the loss was spurious."""
        tsecr = self.acks.tsecr[j]
        return (
            self.retrans_stamp is not None
            and bool(tsecr)
            and ((tsecr - self.retrans_stamp) & 0xFFFFFFFF) >= (1 << 31)
        )

    def _frto_orig_acked(self, j: int, top: int) -> bool:
        """F-RTO step 3.b: does ACK ``j`` (s)ack never-retransmitted data below high_seq
        (FLAG_ORIG_SACK_ACKED)? ``top``: the highest SACK known before it. Without SACK a
        cumulative ACK proves nothing if it also covers a segment that was ever resent
        (tcp_clean_rtx_queue drops FLAG_ORIG_SACK_ACKED on FLAG_RETRANS_DATA_ACKED for Reno):
        only an ACK of never-resent data alone undoes."""
        a = self.acks
        if a.adv[j]:
            # what the sender had acknowledged before, also where the capture lacks the ACK
            prev_una = max(a.prev_una[j], self.una_hint)
            lo, hi = max(prev_una, top), min(a.una[j], self.high_seq)
            if self.sack_ok:
                if hi > lo and not self.loss_ranges.covers(lo, hi):
                    return True
            elif hi > lo and not self.ever_resent.overlaps(prev_una, a.una[j]):
                return True
        if a.sack_hi[j] > top:
            lo = max(top, a.sack_left[j], a.una[j])
            hi = min(a.sack_hi[j], self.high_seq)
            if hi > lo and not self.loss_ranges.covers(lo, hi):
                return True
        return False

    def tcp_try_undo_dsack(self, k: int) -> int:
        """The ACK (up to ``k``) at which D-SACKs have reported every retransmission of the
        episode duplicate (undo_retrans == 0), else NEVER: at that D-SACK in Recovery or
        Disorder (tcp_try_undo_dsack), at the first ACK since that moves snd_una in Loss
        (tcp_process_loss -> tcp_try_undo_loss, on FLAG_SND_UNA_ADVANCED only)."""
        if self.undo_dsack_ns >= NEVER:
            return NEVER
        a, end = self.acks, self.a_end
        j = bisect_left(a.ts, self.undo_dsack_ns, max(self.entry_k + 1, self.a_first), end)
        if self.ca_state == LOSS and j < end and not a.adv[j]:
            j = bisect_right(a.una, a.una[j], j, end)
        return j if j <= k else NEVER

    def tcp_try_to_open(self, una: int) -> None:
        """Recovery or Loss is over (tcp_try_to_open -> tcp_try_keep_open): Disorder, not
        Open, while the segment at snd_una was ever resent (tcp_any_retrans_done); no probe
        is scheduled in Disorder (tcp_schedule_loss_probe). The episode's undo state goes."""
        self.ca_state = DISORDER if una in self.last_rtx_ns else OPEN
        self.episode_ns, self.episode_by = NO_VALUE, None
        self.undo_retrans, self.undo_dsack_ns = 0, NO_VALUE
        self.retrans_stamp = None
        if self.loss_ranges:
            self.loss_ranges = SeqRanges()
        self.frto = False

    def tcp_process_tlp_ack(self, k: int) -> bool:
        """Did an ACK after the probe, up to ``k``, end the probe episode?

        tcp_process_tlp_ack: an ACK beyond tlp_high_seq ends it (loss repaired, or new data
        acknowledged); so does a D-SACK at or above it (original and probe both arrived) or
        a pure duplicate ACK at it. An ACK exactly at tlp_high_seq that advances snd_una
        leaves it set.
        """
        a = self.acks
        tlp_high = self.tlp_high_seq
        if tlp_high is None:
            return False
        lo, end = max(self.tlp_k + 1, self.a_first), self.a_end
        j = bisect_right(a.una, tlp_high, lo, end)
        if j <= k and j < end:
            return True
        for i in range(lo, min(k, j - 1, lo + 64) + 1):
            if a.ack[i] >= tlp_high and (
                a.dsack[i] or (not a.adv[i] and a.payload[i] == 0 and a.sack_n[i] == 0)
            ):
                return True
        return False

    # ---- the transitions a burst makes ---------------------------------------------------

    def tcp_enter_loss(
        self, k: int, snd_nxt: int, frto: bool, ts_ns: int = NO_VALUE, by: str = "rto"
    ) -> None:
        """The Loss state (tcp_enter_loss): high_seq = snd_nxt, the probe episode ends
        (tlp_high_seq = 0: in tcp_enter_loss on recent kernels, in tcp_retransmit_timer on
        older ones), a new Loss episode of resent ranges begins (at ``ts_ns``, by rule
        ``by``: the evidence of the causes after it)."""
        self.ca_state = LOSS
        self.episode_ns, self.episode_by = ts_ns, by
        self.high_seq = snd_nxt
        self.entry_k = k
        self.loss_cause = None
        if self.loss_ranges:
            self.loss_ranges = SeqRanges()
        self.tlp_high_seq = None
        self.frto = frto

    def tcp_enter_recovery(
        self, k: int, snd_nxt: int, ts_ns: int = NO_VALUE, by: str = "fast_sack"
    ) -> None:
        """The Recovery state (tcp_enter_recovery -> tcp_init_cwnd_reduction): high_seq =
        snd_nxt, tlp_high_seq = 0; a Loss episode it interrupts is over."""
        self.ca_state = RECOVERY
        self.episode_ns, self.episode_by = ts_ns, by
        self.high_seq = snd_nxt
        self.entry_k = k
        self.tlp_high_seq = None
        if self.loss_ranges:
            self.loss_ranges = SeqRanges()

    def tcp_retransmit_timer(self, b: Burst, rule: str = "rto") -> int:
        """The RTO fired: count the run of timeouts of this head (icsk_retransmits), enter
        Loss, with F-RTO (RFC 5682 §3.1 step 1) unless recovery was already underway and
        this is not a repeated timeout (``new_recovery || icsk_retransmits`` in
        tcp_enter_loss), and double the timer (icsk_backoff, returned as it was when the
        resend left: tcp_retransmit_timer increments it after tcp_retransmit_skb)."""
        if self._same_timeout_run(b):
            self.retransmits += 1
        else:
            self.rto_head, self.retransmits, self.rto_una = b.lo, 0, b.una
        frto = self.ca_state < RECOVERY or self.retransmits > 0
        self.tcp_enter_loss(b.k, b.snd_nxt, frto, b.ts_ns, rule)
        backoff = self.icsk_backoff  # what the resend went out with; then it doubles
        self.icsk_backoff += 1
        return backoff

    def _same_timeout_run(self, b: Burst) -> bool:
        return self.rto_head is not None and self.rto_head == b.lo and self.rto_una == b.una

    def tcp_send_loss_probe(self, b: Burst) -> None:
        """The probe left: one probe per flight until tlp_high_seq is cleared."""
        self.tlp_high_seq = b.snd_nxt
        self.tlp_k = b.k

    def _unseen_timeout(self, b: Burst) -> None:
        """A Reno burst that only the Loss state sends: a timeout the capture did not show.

        NewReno recovery resends only the segment at snd_una, one MSS per partial ACK
        (tcp_newreno_mark_lost marks just the head, cut to one MSS), whatever clocks it (an
        ACK, or TSQ's tasklet once the device drains). More at once, or a segment above
        snd_una, is the Loss state's walk over all that a timeout marked lost
        (tcp_timeout_mark_lost). Its high_seq is at least what has been sent; whether F-RTO
        ran is unknown, so it is taken as not.
        """
        self.tcp_enter_loss(b.k, b.snd_nxt, frto=False, ts_ns=b.ts_ns, by="unseen_timeout")

    def tcp_fastretrans_alert(self, b: Burst) -> str:
        """An ACK released the burst (tcp_fastretrans_alert -> tcp_xmit_retransmit_queue).

        In Loss it is the slow-start walk (tcp_process_loss: **rto_recovery**), unless it
        resends a range already resent in this Loss episode: only RACK finds a
        retransmission lost again (FLAG_LOST_RETRANS from tcp_rack_mark_lost), which moves
        Loss to Recovery. RACK needs SACK: a Reno flow stays in Loss, resending in slow
        start, until snd_una passes high_seq (tcp_newreno_mark_lost marks nothing in Loss).
        Otherwise it is a fast retransmit, in Recovery (tcp_enter_recovery on the first).
        """
        if self.ca_state == LOSS and (
            not self.sack_ok or not self.loss_ranges.overlaps(b.lo, b.hi)
        ):
            return "rto_recovery"
        if self.ca_state != RECOVERY:
            self.tcp_enter_recovery(
                b.k, b.snd_nxt, b.ts_ns, "fast_sack" if self.sack_ok else "fast_dupack"
            )
        return "fast"

    def _ack_rule(self, b: Burst, v: Verdict) -> str:
        """The rule an ACK-clocked burst of kind ``v.kind`` followed (Verdict.rule), with
        the evidence it read: a range resent before and resent again on SACK news is
        RACK's lost retransmission (tcp_rack_detect_loss looks at retransmitted segments'
        latest transmission too; Reno has nothing that re-marks one); without SACK, the
        duplicate ACKs since snd_una last moved (tcp_fastretrans_alert's dupack count)."""
        if v.kind == "rto_recovery":
            return "loss_walk"
        if self.sack_ok:
            return "lost_retransmit" if self.ever_resent.overlaps(b.lo, b.hi) else "fast_sack"
        if b.k >= 0:
            v.dupacks = b.k - max(self.acks.adv_ff[b.k], self.a_first - 1)
        return "fast_dupack"

    def _syn_timeout(self, b: Burst, v: Verdict) -> None:
        """A resent SYN or SYN-ACK: the handshake's retransmission timer, from
        TCP_TIMEOUT_INIT.

        A SYN (tcp_retransmit_timer in SYN_SENT): with tcp_syn_linear_timeouts (default 4,
        Linux 6.5 and later) the timer neither doubles icsk_rto nor counts icsk_backoff
        until tp->total_rto exceeds that many, so the first five resends come TCP_TIMEOUT_INIT
        apart with backoff 0 (the corpus's syn_drop_twice: 1 s, 1 s, backoff 0, 0); then
        it doubles. A SYN-ACK (the request socket's timer, reqsk_timer_handler) doubles from
        the first: TCP_TIMEOUT_INIT << num_timeout.
        """
        n = self.syn_retransmits
        self.syn_retransmits += 1
        if b.flags & TCP_ACK:
            v.kind, v.backoff = "synack", n
        else:
            v.kind, v.backoff = "syn", max(0, n - TCP_SYN_LINEAR_TIMEOUTS)
        v.rule = v.kind
        v.ca_state = OPEN
        v.rto_us = min(TCP_TIMEOUT_INIT_US * (1 << min(v.backoff, 7)), TCP_RTO_MAX_US)

    # ---- which timer fired -------------------------------------------------------------

    def _timer_fired(self, b: Burst, v: Verdict, head: bool, tail: bool) -> None:
        """No ACK released the burst: which timer sent it, and its transition. The RACK
        reorder timer sends a fast retransmit (tcp_rack_reo_timeout, armed by the last ACK:
        its trigger), the RTO enters Loss (tcp_retransmit_timer), the probe timer sets
        tlp_high_seq (tcp_send_loss_probe)."""
        kind, v.clock, v.rule = self._which_timer(b, head, tail)
        if v.clock == "ack":
            v.trigger = b.k
        if kind == "fast":
            v.trigger = b.k
            if self.ca_state != RECOVERY:
                self.tcp_enter_recovery(b.k, b.snd_nxt, b.ts_ns, v.rule)
        elif kind == "rto":
            v.armed_ns = self._rto_armed_ns(b)
            v.backoff = self.tcp_retransmit_timer(b, v.rule)
        elif kind == "tlp":
            self.tcp_send_loss_probe(b)
        v.kind = kind

    def _which_timer(self, b: Burst, head: bool, tail: bool) -> tuple[str, str, str]:
        """(kind, clock, rule) of a burst no ACK just released. The RTO only fires after most of
        the RTO; the RACK reorder timer within reo_wnd + 2 ms of the ACK that armed it; the
        probe only in Open, at the tail, with no probe out."""
        if b.k < 0:
            early = self._capture_start_kind(b)
            if early is not None:
                return (
                    early,
                    "timer",
                    ("rto_capture_start" if early == "rto" else "capture_start_walk"),
                )
        elif b.multi:
            return ("rto_recovery" if self.ca_state == LOSS else "fast"), "timer", "multi_segment"
        if not self.sack_ok:
            return self._reno_timer_kind(b, head)
        sla_ns, srtt_us = b.since_ack_ns, b.srtt_us
        reo_like = b.k >= 0 and 0 <= sla_ns <= (0.5 * srtt_us + 15_000) * 1000
        sacked = b.k >= 0 and self.acks.sack_hi[b.k] > b.una
        if self.ca_state == LOSS:
            if not head and 0 <= b.since_send_ns < TIMER_MIN_NS:
                # The Loss state's walk, continued without an ACK (TSQ, pacing): the RTO
                # resends only the head, and no timer fires this soon after a send.
                return "rto_recovery", "burst", "walk_continued"
            if sacked and not head and reo_like:
                return "fast", "timer", "rack_timer"
            return "rto", "timer", "rto"
        if self.ca_state == OPEN and not sacked:
            if tail and self.tlp_high_seq is None and not self._past_rto(b):
                if self._probe_overdue(b):
                    # No probe was armed where one would have been: this sender sends
                    # none (no SACK, or TLP off), here and for the rest of the flow.
                    self.no_probe = True
                elif not self.no_probe and not self._collapsed(b):
                    return "tlp", "timer", "tlp"
            if head and (tail or self._rto_due(b)):
                return "rto", "timer", "rto"
            # The head, long before the RTO was due (tcp_rearm_rto armed it at the head's
            # send or the last ACK that advanced snd_una): an ACK the capture lacks, or
            # RACK's reorder timer, released it.
            return ("tlp", "timer", "tlp") if tail else ("fast", "timer", "rack_timer")
        # Disorder or Recovery: the RACK reorder timer (fast) fires within reo_wnd + 2 ms
        # of the ACK that armed it; the RTO only after the whole RTO.
        if b.k < 0:
            timeout_like = b.ts_ns - self.t_cap0 >= 0.75 * b.rto_us * 1000
        else:
            timeout_like = sla_ns < 0 or sla_ns >= 0.75 * b.rto_us * 1000
        if head and (timeout_like or not reo_like):
            return "rto", "timer", "rto"
        return "fast", "timer", "rack_timer"

    def _past_rto(self, b: Burst) -> bool:
        """Did the burst follow the flow's previous transmission by half as much again as
        the RTO in force? The probe timer never fires later than the RTO would
        (tcp_schedule_loss_probe clamps the PTO to what is left of it): only a timeout,
        backed off, waits that long."""
        rto_ns = b.rto_us * 1000 * (1 << min(self.icsk_backoff, 10))
        return b.since_send_ns > 1.5 * rto_ns

    def _collapsed(self, b: Burst) -> bool:
        """Does ``b`` run from one first transmission into the next? tcp_send_loss_probe
        resends the last skb of the retransmit queue (its last MSS), and
        tcp_retrans_try_collapse merges only the skbs after the one resent: a probe never
        spans two. The RTO's resend of the head, collapsed with what follows, does."""
        r = self.rows
        return any(r.spans[i] for i in b.rows)

    def _probe_overdue(self, b: Burst) -> bool:
        """Did the tail go out long after a probe would have, at the RTO instead?

        tcp_schedule_loss_probe re-arms the probe at every transmission (tcp_write_xmit)
        and every ACK that acknowledges or SACKs data (tcp_set_xmit_timer), for PTO =
        2·SRTT + TCP_TIMEOUT_MIN when more than one segment is out; only with one segment
        out (+ TCP_RTO_MIN) or an SRTT so long that the RTO comes first is it clamped to
        the RTO. A tail resent after twice that PTO and most of the RTO was sent by no
        probe: none was armed (SACK not negotiated, net.ipv4.tcp_early_retrans = 0), and
        tcp_retransmit_timer fired. The silence is counted from the later of the flow's
        previous send and the last ACK of the capture (an ACK the sender never got only
        shortens it)."""
        if b.srtt_us <= 0 or b.pkts_out <= 1:
            return False
        pto_ns = (2 * b.srtt_us + TCP_TIMEOUT_MIN_US) * 1000
        rto_ns = b.rto_us * 1000
        if pto_ns >= 0.5 * rto_ns:
            return False  # the probe would fire near the RTO anyway: no telling them apart
        quiet = [t for t in (b.since_send_ns, b.since_ack_ns) if t >= 0]
        if not quiet:
            return False
        since_ns = min(quiet)
        return since_ns >= 2 * pto_ns + TIMER_MIN_NS and since_ns >= 0.75 * rto_ns

    def _capture_start_kind(self, b: Burst) -> str | None:
        """No ACK of this flow yet in the capture. Unless the capture only just began, none
        arrived lately either: the silence is at least (now - capture start). Just after
        the start the clock is unknown. A capture that starts at a random moment far more
        often opens in the silence before a timer (hundreds of ms before an RTO) than in the
        microseconds between an ACK and the fast retransmit it clocks: so a resend that the
        receiver's next ACK shows was at the head (snd_una moves past it) while it held data
        beyond is the RTO ending that silence; one that was not at the head, with data held
        beyond it, was sent on SACK news (fast recovery). None: no such evidence."""
        a, fa = self.acks, self.a_first
        # A sender away from the capture point: what it sent in the first round trip was
        # released by ACKs that passed here before the capture began.
        held_beyond = (
            b.ts_ns - self.t_cap0 <= ACK_CLOCK_NS + self.trip_ns
            and fa < self.a_end
            and (a.sack_hi[fa] > b.hi or a.una[fa] > b.hi)
        )
        if held_beyond and a.sack_hi[fa] > b.hi and self._released_before_capture(b):
            # ...while the receiver SACKed data above it: the sender was hearing SACKs, on
            # which RACK marks a hole lost within a round trip (tcp_rack_detect_loss).
            return "rto_recovery" if self.ca_state == LOSS else "fast"
        if held_beyond and not b.multi and a.una[fa] > b.lo:
            # snd_nxt was at least what the receiver shows it held (sent before the
            # capture): the Loss episode lasts until snd_una passes it.
            b.snd_nxt = max(b.snd_nxt, a.una[fa], a.sack_hi[fa])
            return "rto"
        if b.multi or held_beyond:
            return "rto_recovery" if self.ca_state == LOSS else "fast"
        return None

    def _released_before_capture(self, b: Burst) -> bool:
        """Was ``b`` sent, by a sender away from the capture point, within the first round
        trip of the capture (the ACKs that released it passed here before the capture
        began), and amid the flow's sending (its previous transmission less than most of
        TCP_RTO_MIN before)? A sender that kept sending was hearing ACKs, not waiting out
        the RTO's silence."""
        return (
            self.trip_ns > 0
            and b.ts_ns - self.t_cap0 <= ACK_CLOCK_NS + self.trip_ns
            and 0 <= b.since_send_ns < 0.75 * TCP_RTO_MIN_US * 1000
        )

    def _reno_timer_kind(self, b: Burst, head: bool) -> tuple[str, str, str]:
        """Without SACK the only timer is the RTO (no TLP, no RACK reorder timer): a
        retransmission that cannot be one was clocked by a late-processed ACK, or by
        duplicate ACKs that passed the capture point before it began."""
        unseen_ack = b.k < 0 and not self._released_before_capture(b)
        if head and (unseen_ack or (b.k >= 0 and self._rto_due(b))):
            return "rto", "timer", "rto"
        if self.ca_state == LOSS:
            return "rto_recovery", "ack", "loss_walk"
        return "fast", "ack", "fast_dupack"

    # ---- bookkeeping of what was resent (tcp_retransmit_skb) -----------------------------

    def tcp_retransmit_skb(self, b: Burst, kind: str) -> None:
        """What tcp_retransmit_skb records: the ranges resent in this Loss episode and ever
        (TCPCB_EVER_RETRANS), the episode's count for the undo (undo_retrans) and the TSval
        of its first retransmission (retrans_stamp; a probe, sent by __tcp_retransmit_skb,
        sets neither, nor does a resent SYN: below), and each segment's latest
        retransmission time."""
        r = self.rows
        if kind == "rto" or kind == "rto_recovery":
            self.loss_ranges.add(b.lo, b.hi)
        self.ever_resent.add(b.lo, b.hi)
        # A resent SYN or SYN-ACK leaves no undo state behind: the ACK of the SYN clears
        # retrans_stamp (tcp_clean_rtx_queue on FLAG_SYN_ACKED; tcp_rcv_state_process in
        # SYN_RECV), and the first recovery episode starts undo_retrans afresh from the
        # retransmissions then in flight (tcp_init_undo), none of them the SYN's.
        if kind != "tlp" and kind != "syn" and kind != "synack":
            r0 = b.rows[0]
            if not self.undo_retrans:
                self.retrans_stamp = r.tsval[r0] if r.has_ts[r0] else None
            self.undo_retrans += len(b.rows)
            for i in b.rows:
                if r.dsack[i] > self.undo_dsack_ns:
                    self.undo_dsack_ns = r.dsack[i]
        for i in b.rows:
            self.last_rtx_ns[r.seq[i]] = r.ts[i]
        self.prev_burst_ns = b.ts_ns


class _Senders:
    """A new SenderState for a flow, from replay's per-flow inputs."""

    def __init__(self, flows, acks: AckHistory, rows: RetransRows, t_cap0: int, too_big):
        self.acks, self.rows, self.t_cap0, self.too_big = acks, rows, t_cap0, too_big or {}
        names = ("sack_ok", "mss", "mss_known", "una0", "a_start", "a_end", "syn_end")
        self.of = {k: flows[k].tolist() for k in (*names, "hdr_bytes")}
        self.trip_ns = flows["trip_ns"].tolist() if "trip_ns" in flows else None
        self.flows, self.loss0 = flows, flows.get("loss0_nxt")

    def new(self, f: int, no_probe: bool) -> SenderState:
        of = self.of
        sender = SenderState(
            self.acks,
            self.rows,
            of["a_start"][f],
            of["a_end"][f],
            of["sack_ok"][f],
            of["mss"][f] if of["mss_known"][f] else None,
            of["una0"][f],
            self.t_cap0,
            of["syn_end"][f],
            of["hdr_bytes"][f],
            self.too_big.get(f),
        )
        sender.no_probe = no_probe
        sender.mss_est = of["mss"][f]
        sender.trip_ns = self.trip_ns[f] if self.trip_ns is not None else 0
        loss0 = self.loss0
        if loss0 is not None and loss0[f] > NO_VALUE:
            sender.capture_started_in_loss(
                int(self.flows["loss0_seq"][f]),
                int(self.flows["loss0_end"][f]),
                int(self.flows["loss0_ts"][f]),
                int(loss0[f]),
            )
        return sender


def replay(
    rows: dict[str, np.ndarray],
    flows: dict[str, np.ndarray],
    acks: dict[str, np.ndarray],
    adv_ff: np.ndarray,
    order_r: np.ndarray,
    burst_of: np.ndarray,
    r_flow: np.ndarray,
    t_cap0: int,
    too_big: dict[int, list[tuple[int, int, int]]] | None = None,
    cuts: list[tuple[int, list, list, list]] | None = None,
    r_frame: np.ndarray | None = None,
) -> dict[str, list]:
    """Walk each flow's retransmission bursts in order through its SenderState.

    ``rows``: per retransmission (RetransRows' columns), ``flows``: per flow (``sack_ok``,
    ``mss``, ``mss_known``, ``una0``, ``a_start``/``a_end``: its slice of ``acks``), ``acks``:
    the ACK table (AckHistory), ``order_r``: the rows by flow then frame, ``burst_of``: each
    row's burst. ``flows`` also holds ``syn_end``, ``hdr_bytes`` and, optionally, the
    capture-start Loss (``loss0_*``); ``too_big``: per flow, the path MTU messages of the
    capture, [(ts_ns, mtu, frame), ...] in time order.
    Returns per row: cause, mtu, kind, clock, position, ca, backoff, trigger (ACK index),
    pto_ns, rto_ns; and per burst (``burst_of``'s numbers) its Verdict, None for a probe
    (``verdicts``: the evidence analyze/causes.py words). With ``cuts`` ((frame, each flow's
    sent_floor, each flow's last ACK every burst after it applies: SenderState.at_cut's,
    whether the flow has rows after the cut), in frame order, and ``r_frame`` (each row's
    frame), ``at_cut``: per cut, per flow with rows after it that replayed a burst before
    it, (SenderState.at_cut before its first burst at or after the frame, the earliest ACK
    frame that refers to, at_cut of a sender that replayed nothing).
    """
    m = len(r_flow)
    out: dict[str, list] = {
        "cause": [None] * m,
        "mtu": [0] * m,
        "kind": ["unknown"] * m,
        "clock": [None] * m,
        "position": [None] * m,
        "ca": [-1] * m,
        "backoff": [-1] * m,
        "trigger": [-1] * m,
        "pto_ns": [0] * m,
        "rto_ns": [0] * m,
    }
    b_sorted = burst_of[order_r]
    b_first = np.flatnonzero(np.r_[True, b_sorted[1:] != b_sorted[:-1]])
    b_last = np.r_[b_first[1:], len(order_r)]
    seg_lo = np.minimum.reduceat(rows["seq"][order_r], b_first).tolist()
    seg_hi = np.maximum.reduceat(rows["end"][order_r], b_first).tolist()
    b_flow = r_flow[order_r[b_first]].tolist()

    r = RetransRows(rows)
    new_sender = _Senders(flows, AckHistory(acks, adv_ff), r, t_cap0, too_big).new
    rows_l = order_r.tolist()
    cause, mtu, kind, clock, position, ca, backoff, trigger, pto_ns, rto_ns = out.values()
    verdicts: list[Verdict | None] = [None] * len(b_first)

    cuts = cuts or []
    at_cut: list[dict] = [{} for _ in cuts]
    b_frame = r_frame[order_r[b_first]].tolist() if cuts and r_frame is not None else []

    def snap(sender: SenderState, f: int, ci: int) -> None:
        """The sender's state at cut ``ci``, and a fresh one's; none for a flow with no
        rows after the cut, or a sender that replayed nothing yet (fresh)."""
        if not cuts[ci][3][f] or (sender.prev_burst_ns == NO_VALUE and not sender.no_probe):
            return
        sent_floor, k = cuts[ci][1][f], cuts[ci][2][f]
        state, ref = sender.at_cut(k, sent_floor)
        at_cut[ci][f] = (state, ref, new_sender(f, False).at_cut(k, sent_floor)[0])

    def run_flow(sender: SenderState, bursts: range) -> None:
        ci, f = 0, b_flow[bursts.start]
        for bi in bursts:
            while ci < len(cuts) and b_frame[bi] >= cuts[ci][0]:
                snap(sender, f, ci)
                ci += 1
            burst_rows = rows_l[b_first_l[bi] : b_last_l[bi]]
            r0 = burst_rows[0]
            if r.probe[r0]:
                continue  # keep-alive / window probe: not a retransmission of data
            b = Burst(burst_rows, seg_lo[bi], seg_hi[bi], r, sender.snd_una_of(r0), sender.mss)
            v = sender.on_burst(b)
            verdicts[bi] = v
            v_pto_ns, v_rto_ns = int(v.pto_us * 1000), int(v.rto_us * 1000)
            for row in burst_rows:
                cause[row] = v.cause
                mtu[row] = v.mtu
                kind[row] = v.kind
                clock[row] = "burst"
                position[row] = v.position
                ca[row] = v.ca_state
                backoff[row] = v.backoff
                trigger[row] = v.trigger
                pto_ns[row] = v_pto_ns
                rto_ns[row] = v_rto_ns
            clock[r0] = v.clock
        for c in range(ci, len(cuts)):
            snap(sender, f, c)

    b_first_l, b_last_l = b_first.tolist(), b_last.tolist()
    f_starts = [bi for bi in range(len(b_flow)) if bi == 0 or b_flow[bi] != b_flow[bi - 1]]
    for lo, hi in zip(f_starts, [*f_starts[1:], len(b_flow)]):
        sender = new_sender(b_flow[lo], False)
        run_flow(sender, range(lo, hi))
        if sender.no_probe:
            # A sender that arms no probe (_probe_overdue) never did: SACK and
            # net.ipv4.tcp_early_retrans hold for the whole connection. Its earlier tails
            # are read again knowing it.
            run_flow(new_sender(b_flow[lo], True), range(lo, hi))
    out["verdicts"] = verdicts
    out["at_cut"] = at_cut
    return out
