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
CA_STATES = {TCP_CA_OPEN: "Open", TCP_CA_DISORDER: "Disorder", TCP_CA_CWR: "CWR",
             TCP_CA_RECOVERY: "Recovery", TCP_CA_LOSS: "Loss"}

#: retransmits.parquet ``match``: a kernel event and its frames found each other...
MATCHED = "matched"
#: ...or why an event has no frame (analyze/join.py why_unmatched)...
EVENT_UNMATCHED = ("no_frame", "not_sent", "before_capture", "after_capture",
                   "capture_dropped", "flow_not_in_capture", "no_capture")
#: ...or why a retransmitted frame has no event (analyze/pipeline.py).
FRAME_UNMATCHED = ("no_event", "before_recording", "after_recording", "filtered_out",
                   "peer_sent", "unreported")
