"""The words the outputs use, declared once: kinds of retransmission, their families, the
congestion-avoidance states, and why a row has or lacks a match. Every module that writes
or reads one of these imports it from here.
"""

from __future__ import annotations

#: Why a segment was resent, as the kernel's own reason (record/reasons.py) and as the
#: capture's replay (analyze/sender.py) name it. ``unknown``: neither could tell.
KINDS = ("tlp", "fast", "rto", "rto_recovery", "syn", "synack", "unknown")

#: The recorder's ``reason`` column: the kinds, with ``other`` where no known caller was on
#: the kernel stack. The analyzer reads ``other`` as ``unknown`` (REASON_AS_KIND).
REASONS = ("tlp", "rto", "syn", "synack", "fast", "rto_recovery", "other")
REASON_AS_KIND = {r: ("unknown" if r == "other" else r) for r in REASONS}

#: The three families the kernel's counters separate (TCPTimeouts + TCPSlowStartRetrans +
#: TCPSynRetrans / TCPFastRetrans / TCPLossProbes): what an engineer needs told apart, and
#: what accuracy is judged in.
FAMILY_OF_KIND = {
    "tlp": "tlp",
    "fast": "fast",
    "rto": "rto",
    "rto_recovery": "rto",
    "syn": "rto",
    "synack": "rto",
    "unknown": "unknown",
    "other": "unknown",
}
FAMILIES = ("tlp", "fast", "rto", "unknown")

#: enum tcp_ca_state, include/net/tcp.h
TCP_CA_OPEN, TCP_CA_DISORDER, TCP_CA_CWR, TCP_CA_RECOVERY, TCP_CA_LOSS = 0, 1, 2, 3, 4
CA_STATES = {
    TCP_CA_OPEN: "Open",
    TCP_CA_DISORDER: "Disorder",
    TCP_CA_CWR: "CWR",
    TCP_CA_RECOVERY: "Recovery",
    TCP_CA_LOSS: "Loss",
}

#: retransmits.parquet ``match``: a kernel event and its frames found each other...
MATCHED = "matched"
#: ...or why an event has no frame (analyze/join.py why_unmatched)...
EVENT_UNMATCHED = (
    "no_frame",
    "not_sent",
    "before_capture",
    "after_capture",
    "capture_dropped",
    "flow_not_in_capture",
    "no_capture",
)
#: ...or why a retransmitted frame has no event (analyze/pipeline.py).
FRAME_UNMATCHED = (
    "no_event",
    "before_recording",
    "after_recording",
    "filtered_out",
    "peer_sent",
    "unreported",
)

#: Why each retransmission happened: retransmits.parquet ``cause`` (analyze/causes.py; its
#: sentence, citing frames and measured times, is ``cause_text``). code -> (family, meaning).
#: The family is the kind family the cause belongs to (FAMILY_OF_KIND's values); None: the
#: row's kind says it (a one-way capture's reading). A capture's cause comes from the
#: sender replay's own decision (analyze/sender.py Verdict.rule) and the evidence it read;
#: a kernel event without a frame gets one from its reason and the socket state it carries.
CAUSES: dict[str, tuple[str | None, str]] = {
    "tlp": (
        "tlp",
        "tail loss probe: the probe timer (PTO = 2·SRTT + 2 ms, or + 200 ms with "
        "one segment out, at most the RTO) fired with the tail unacknowledged",
    ),
    "tlp_delayed_ack": (
        "tlp",
        "tail loss probe of data that had arrived: the receiver's ACK "
        "reached the sender later than the PTO (a delayed ACK) and a "
        "D-SACK or timestamp echo showed the probe spurious",
    ),
    "tlp_ack_lost": (
        "tlp",
        "tail loss probe of data that had arrived: the receiver's ACK is "
        "in the capture but was lost after the capture point",
    ),
    "fast_sack": (
        "fast",
        "fast retransmit / RACK on SACK news: the receiver SACKed data "
        "above it (RFC 6675, RFC 8985)",
    ),
    "fast_dupack": (
        "fast",
        "fast retransmit without SACK (Reno): duplicate ACKs, or a "
        "partial ACK during recovery (NewReno, RFC 6582)",
    ),
    "rack_timer": (
        "fast",
        "the RACK reorder timer (tcp_rack_reo_timeout): no ACK just "
        "before, but one a little earlier SACKed data sent after it",
    ),
    "lost_retransmit": (
        "fast",
        "a retransmission lost again: RACK found the previous "
        "re-send of this range lost (RFC 8985 §6.2)",
    ),
    "fast_spurious": (
        "fast",
        "fast retransmit of data that had arrived (D-SACK or "
        "timestamp echo): reordered, or its ACK lost",
    ),
    "fast": (
        "fast",
        "fast retransmit / RACK (tcp_xmit_retransmit_queue outside Loss): a "
        "kernel event with no frame, its ACKs not in the capture",
    ),
    "rto": (
        "rto",
        "retransmission timeout: no ACK advanced snd_una for the RTO "
        "(RFC 6298), doubled per repeated timeout (backoff)",
    ),
    "rto_spurious": (
        "rto",
        "retransmission timeout of data that had arrived (timestamp "
        "echo, Eifel RFC 3522, or D-SACK): its ACK was late, not lost",
    ),
    "rto_ack_lost": (
        "rto",
        "timeout of data that had arrived: the receiver's ACK is in the "
        "capture but was lost after the capture point",
    ),
    "slow_start_after_rto": (
        "rto",
        "slow-start retransmit in the Loss state a timeout "
        "entered (tcp_xmit_retransmit_queue in Loss)",
    ),
    "pmtu": (
        "rto",
        "re-sent at a smaller MSS after a path MTU drop (ICMP fragmentation "
        "needed / packet too big: tcp_simple_retransmit), in the Loss state "
        "entered at once",
    ),
    "tfo": (
        "rto",
        "data a TCP Fast Open SYN carried that the SYN-ACK did not acknowledge "
        "(tcp_rcv_fastopen_synack), re-sent at once",
    ),
    "syn_timeout": (
        "rto",
        "SYN re-sent by the handshake's timer (1 s, linear for the first "
        "tcp_syn_linear_timeouts on Linux 6.5+, then doubling)",
    ),
    "synack_timeout": ("rto", "SYN-ACK re-sent by the request socket's timer (1 s, doubling)"),
    "timing_only": (
        None,
        "a one-way capture (no ACK of the flow): the kind read from what "
        "was re-sent and the silence before it",
    ),
    "unknown": ("unknown", "no known kernel caller and no capture evidence"),
}

#: The cause a kernel event alone gives, by its reason (REASONS).
CAUSE_OF_REASON = {
    "tlp": "tlp",
    "fast": "fast",
    "rto": "rto",
    "rto_recovery": "slow_start_after_rto",
    "syn": "syn_timeout",
    "synack": "synack_timeout",
    "other": "unknown",
}
