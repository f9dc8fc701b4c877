"""What `retranscope analyze` writes, declared once (the report, notebooks and the fleet
read these).

retransmits.parquet: one row per retransmission: per kernel event when events are given
(plus one row per retransmitted frame that no event explains), else per retransmitted
wire segment. flows.parquet: one row per flow (one direction of one connection).
summary.json: totals, match accounting, capture/record quality, kernel counter deltas.

Both tables have the same columns whatever the inputs (a capture, events, or both):
a column an input cannot fill is null. Each field's ``doc`` metadata says what it means;
analyze/outputs.py writes exactly these schemas.
"""

from __future__ import annotations

import pyarrow as pa

from retranscope.schemas.vocabulary import FAMILY_OF_KIND, KINDS  # noqa: F401 (re-exported)

OUTPUT_SCHEMA_VERSION = 1


def _field(name: str, typ: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, typ, metadata={b"doc": doc.encode()})


RETRANSMITS_SCHEMA = pa.schema(
    [
        _field(
            "ts_wall_ns",
            pa.int64(),
            "when it was sent: the event's time, else the frame's (CLOCK_REALTIME ns)",
        ),
        _field(
            "source",
            pa.string(),
            "'event+capture', 'event' (no frame), or 'capture' (no event / no events given)",
        ),
        _field("family", pa.uint8(), "4 or 6"),
        _field("saddr", pa.string(), "sender of the retransmitted segment"),
        _field("sport", pa.uint16(), "sender's port (host byte order)"),
        _field("daddr", pa.string(), "receiver of the retransmitted segment"),
        _field("dport", pa.uint16(), "receiver's port (host byte order)"),
        _field("flow_id", pa.int64(), "flow in flows.parquet, -1 without a capture"),
        _field("seq", pa.uint32(), "raw 32-bit sequence number (the event's, else the frame's)"),
        _field("end_seq", pa.uint32(), "raw 32-bit, exclusive"),
        _field(
            "kind",
            pa.string(),
            "the kernel's reason when there is an event, else kind_pcap "
            "(schemas/vocabulary.py KINDS)",
        ),
        _field(
            "kind_pcap",
            pa.string(),
            "the capture's verdict (sender state replay), null without a frame",
        ),
        _field(
            "spurious",
            pa.bool_(),
            "a D-SACK (RFC 2883) or a timestamp echo (RFC 3522) showed it was not needed",
        ),
        _field("spurious_by", pa.string(), "'dsack' | 'ts_echo' | null"),
        _field("since_original_ns", pa.int64(), "since the first transmission of this data"),
        _field(
            "since_last_send_ns",
            pa.int64(),
            "since the flow's previous transmission (for a TLP: the probe gap)",
        ),
        _field("since_last_ack_ns", pa.int64(), "since the last ACK from the receiver"),
        _field("srtt_us", pa.float64(), "smoothed RTT estimated from the capture at that moment"),
        _field(
            "expected_pto_ns",
            pa.int64(),
            "PTO the sender would have armed (RFC 8985, Linux tcp_schedule_loss_probe)",
        ),
        _field("expected_rto_ns", pa.int64(), "RTO incl. backoff (RFC 6298, 200 ms floor)"),
        _field("backoff", pa.int32(), "index within an RTO chain: 0 first timeout, 1, 2, ..."),
        _field("trigger_frame", pa.int64(), "fast retransmit: the ACK that triggered it"),
        _field("since_trigger_ns", pa.int64(), "since the ACK that triggered it"),
        _field(
            "ack_delay_ns",
            pa.int64(),
            "from this data's first transmission to the receiver's first ACK covering it "
            "(cumulative: one that reached the sender, or one lost after the capture point "
            "that this retransmission shows the sender never got), "
            "in the sender's time: the capture's interval plus the round trip between the "
            "capture point and the sender when it is elsewhere. For a TLP whose original "
            "arrived, the receiver's ACK delay to compare with the PTO; null when either is "
            "not in the capture",
        ),
        _field(
            "cause",
            pa.string(),
            "why it was re-sent (schemas/vocabulary.py CAUSES; analyze/causes.py): from the "
            "sender replay's own decision and the evidence it read (a frame), or from the "
            "kernel's reason and socket state (an event with no frame, or whose frame the "
            "capture read in another family). Always in the family of ``kind``, except "
            "'timing_only' (any kind). 'pmtu' and 'tfo': a re-send no timer and no duplicate "
            "ACK caused (the kernel's Loss state entered at once, "
            "tcp_non_congestion_loss_retransmit; kind rto_recovery) and the rest of that Loss "
            "state's walk; null only for a row with neither a frame nor an event",
        ),
        _field(
            "cause_text",
            pa.string(),
            "the cause in one sentence, citing frame numbers and measured times, e.g. "
            "'TLP 8.6 ms after the last send (PTO = 2·SRTT + 2 ms = ...); the receiver's ACK "
            "came 31 ms after the original (frame 17), after the probe: a delayed ACK longer "
            "than the PTO; D-SACK: spurious'",
        ),
        _field(
            "pmtu_mtu",
            pa.int32(),
            "cause 'pmtu': the path MTU, from the ICMP message or from the size the segments "
            "were cut to plus their headers; null when the capture shows neither",
        ),
        _field(
            "evidence",
            pa.string(),
            "what the capture's verdict rests on: 'acks' (the receiver's ACKs of the flow are "
            "in the capture and the sender's state was replayed from them) or 'timing_only' "
            "(no ACK of the flow in the capture: a one-way capture; the kind is read from the "
            "flow's own sending, its position and the silence before it, see "
            "analyze/sender.py); null without a frame",
        ),
        _field(
            "sender_os",
            pa.string(),
            "the stack that sent it (flows.parquet sender_os): kinds of stacks other than "
            "Linux follow Linux's rules; null without a frame",
        ),
        _field(
            "since_prev_retransmit_ns",
            pa.int64(),
            "events: since the same socket's previous retransmission",
        ),
        _field(
            "kernel_ca_state",
            pa.string(),
            "the socket's congestion-avoidance state (event; vocabulary CA_STATES)",
        ),
        _field("kernel_srtt_us", pa.uint32(), "the socket's SRTT (event)"),
        _field("kernel_backoff", pa.int32(), "icsk_backoff (event)"),
        _field("frame", pa.int64(), "first capture frame of this retransmission (-1 if none)"),
        _field("frames", pa.int64(), "capture frames it covers"),
        _field(
            "spurious_frames",
            pa.int64(),
            "of its wire frames, how many were shown needless: one kernel event can resend "
            "segments the receiver had beside the one it lacked",
        ),
        _field("tx_index", pa.int32(), "2 = first retransmission of these bytes, 3 = second, ..."),
        _field(
            "kind_agrees",
            pa.bool_(),
            "kind_pcap is in the same family as the kernel's reason (null if either is missing)",
        ),
        _field(
            "match",
            pa.string(),
            "'matched', or why not: for events no_frame, not_sent, before_capture, "
            "after_capture, capture_dropped, flow_not_in_capture, no_capture; for frames "
            "no_event, before_recording, after_recording, filtered_out, peer_sent (the other "
            "host sent it), unreported (the kernel resent it but ran no probe: see "
            "accounting); null without events",
        ),
    ],
    metadata={b"schema": b"retranscope.retransmits"},
)

FLOWS_SCHEMA = pa.schema(
    [
        _field("flow_id", pa.int64(), "this flow's id (retransmits.flow_id); -1 without a capture"),
        _field(
            "rev_flow_id",
            pa.int64(),
            "the opposite direction of the same connection, -1 if not in the capture",
        ),
        _field("conn_id", pa.int64(), "the connection (both directions share it)"),
        _field("family", pa.uint8(), "4 or 6"),
        _field("saddr", pa.string(), "sender of this direction's data"),
        _field("sport", pa.uint16(), "sender's port (host byte order)"),
        _field("daddr", pa.string(), "receiver of this direction's data"),
        _field("dport", pa.uint16(), "receiver's port (host byte order)"),
        _field("first_ts_ns", pa.int64(), "first packet of the flow (CLOCK_REALTIME ns)"),
        _field("last_ts_ns", pa.int64(), "last packet of the flow"),
        _field("n_packets", pa.int64(), "packets in this direction"),
        _field("n_data", pa.int64(), "of them, with payload"),
        _field("mss", pa.uint16(), "MSS option of this direction's SYN (0: not seen)"),
        _field("sack_ok", pa.bool_(), "SACK negotiated (RFC 2018), or seen in use"),
        _field("ts_ok", pa.bool_(), "timestamps negotiated (RFC 7323), or seen in use"),
        _field(
            "sender_os",
            pa.string(),
            "the stack that sent this flow, from its SYN's option layout and initial TTL: "
            "'linux', 'windows', 'macos', 'bsd', 'other', or 'unknown' (no SYN, TTL from 64); "
            "kinds of stacks other than Linux follow Linux's rules",
        ),
        _field(
            "initial_ttl",
            pa.int16(),
            "the sender's initial TTL / hop limit (32, 64, 128, 255) inferred from the TTL "
            "seen; -1 unknown",
        ),
        _field("retransmissions", pa.int64(), "rows of retransmits.parquet of this flow"),
        *(
            _field(k, pa.int64(), f"retransmissions of kind {k} on this address/port 4-tuple")
            for k in KINDS
        ),
        _field("spurious", pa.int64(), "of the 4-tuple's retransmissions, how many were spurious"),
        _field("spurious_share", pa.float64(), "spurious / retransmissions"),
        _field("srtt_us_median", pa.float64(), "median SRTT over the 4-tuple's retransmissions"),
        _field(
            "keepalives",
            pa.int64(),
            "keep-alives this flow sent (RFC 9293 §3.8.4: a byte at snd_una - 1): not "
            "retransmissions, not in retransmits.parquet; null without a capture",
        ),
        _field(
            "zero_window_probes",
            pa.int64(),
            "zero-window probes this flow sent (RFC 9293 §3.8.6.1): not retransmissions, not "
            "in retransmits.parquet; null without a capture",
        ),
        _field(
            "out_of_order",
            pa.int64(),
            "segments of this flow that reached the capture point after data above them but "
            "were first transmissions (reordering, tshark's out-of-order): not "
            "retransmissions; null without a capture",
        ),
        _field(
            "duplicate_frames",
            pa.int64(),
            "frames of this flow the capture holds twice (the same IPv4 packet: same "
            "identification, sequence number, length, flags, TSval), e.g. from a span port: "
            "not retransmissions; null without a capture",
        ),
        _field(
            "unseen_ranges",
            pa.int64(),
            "ranges of this flow's data above its first captured byte that no captured "
            "segment covers (frames the capture missed, or a pause): retransmissions of them "
            "cannot be seen; null without a capture",
        ),
    ],
    metadata={b"schema": b"retranscope.flows"},
)


def doc(schema: pa.Schema, column: str) -> str:
    """The meaning of one output column, from its field metadata."""
    md = schema.field(column).metadata or {}
    return md.get(b"doc", b"").decode()


# (column, meaning) pairs, for readers that list the columns (the report's glossary).
RETRANSMIT_COLUMNS = tuple((f.name, doc(RETRANSMITS_SCHEMA, f.name)) for f in RETRANSMITS_SCHEMA)
FLOW_COLUMNS = tuple((f.name, doc(FLOWS_SCHEMA, f.name)) for f in FLOWS_SCHEMA)
