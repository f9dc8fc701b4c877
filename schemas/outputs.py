"""What `retranscope analyze` writes (the report and notebooks read these).

retransmits.parquet: one row per retransmission: per kernel event when events are given
(plus one row per retransmitted frame that no event explains), else per retransmitted
wire segment. flows.parquet: one row per flow (one direction of one connection).
summary.json: totals, match accounting, capture/record quality, kernel counter deltas.
"""

from __future__ import annotations

from retranscope.schemas.vocabulary import FAMILY_OF_KIND, KINDS  # noqa: F401 (re-exported)

OUTPUT_SCHEMA_VERSION = 1

# (column, meaning). Types are fixed by analyze/outputs.py.
RETRANSMIT_COLUMNS = (
    ("ts_wall_ns", "when it was sent: the event's time, else the frame's (CLOCK_REALTIME ns)"),
    ("source", "'event+capture', 'event' (no frame), or 'capture' (no event / no events given)"),
    ("family", "4 or 6"),
    ("saddr", "sender of the retransmitted segment"),
    ("sport", ""),
    ("daddr", ""),
    ("dport", ""),
    ("flow_id", "flow in flows.parquet, -1 without a capture"),
    ("seq", "raw 32-bit sequence number (the event's, else the frame's)"),
    ("end_seq", "raw 32-bit, exclusive"),
    ("kind", "the kernel's reason when there is an event, else kind_pcap"),
    ("kind_pcap", "the capture's verdict (sender state replay), null without a frame"),
    (
        "kind_agrees",
        "kind_pcap is in the same family as the kernel's reason (null if either is missing)",
    ),
    ("spurious", "a D-SACK (RFC 2883) or a timestamp echo (RFC 3522) showed it was not needed"),
    ("spurious_by", "'dsack' | 'ts_echo' | null"),
    ("spurious_frames", "of its wire frames, how many were shown needless: one kernel event "
                        "can resend segments the receiver had beside the one it lacked"),
    ("since_original_ns", "since the first transmission of this data"),
    ("since_last_send_ns", "since the flow's previous transmission (for a TLP: the probe gap)"),
    ("since_last_ack_ns", "since the last ACK from the receiver"),
    ("srtt_us", "smoothed RTT estimated from the capture at that moment"),
    (
        "expected_pto_ns",
        "PTO the sender would have armed (RFC 8985, Linux tcp_schedule_loss_probe)",
    ),
    ("expected_rto_ns", "RTO incl. backoff (RFC 6298, 200 ms floor)"),
    ("backoff", "index within an RTO chain: 0 first timeout, 1, 2, ..."),
    ("trigger_frame", "fast retransmit: the ACK that triggered it"),
    ("since_trigger_ns", ""),
    ("frame", "first capture frame of this retransmission (-1 if none)"),
    ("frames", "capture frames it covers"),
    ("tx_index", "2 = first retransmission of these bytes, 3 = second, ..."),
    (
        "match",
        "'matched', or why not: for events no_frame, not_sent, before_capture, "
        "after_capture, capture_dropped, flow_not_in_capture; for frames no_event, "
        "before_recording, after_recording, filtered_out, peer_sent (the other host "
        "sent it), unreported (the kernel resent it but ran no probe: see accounting)",
    ),
    ("since_prev_retransmit_ns", "events: since the same socket's previous retransmission"),
    ("kernel_ca_state", "the socket's congestion-avoidance state (event)"),
    ("kernel_srtt_us", "the socket's SRTT (event)"),
    ("kernel_backoff", "icsk_backoff (event)"),
)
