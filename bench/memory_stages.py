"""Where the classification of one capture holds its memory, stage by stage.

    .venv/bin/python bench/memory_stages.py [CAPTURE]   (default bench/data/big.pcap)

Reads the capture whole and lays it out as a spilled shard holds it (analyze/spill.py:
the addresses as numbered 4-tuples, schemas/packets.SPILLED_DTYPES, the SACK edges
sparse), then runs the stages of pipeline.classify_capture one by one under tracemalloc
(numpy reports its buffers to it) and prints, per stage, the bytes a packet still held
after it (live) and the most held while it ran (peak), the packet table apart. The
process's peak is the table plus the largest stage peak plus the interpreter; a shard of
N packets costs about N times (table + largest peak). Not a test: nothing here asserts.
"""

from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    from retranscope.analyze.capture import read_capture
    from retranscope.analyze.classify import classify_table
    from retranscope.analyze.flows import _mix64, flow_table, sequence_space
    from retranscope.analyze.retrans import capture_gaps, retransmission_table, sender_context
    from retranscope.analyze.shards import canonical_tuple
    from retranscope.analyze.spill import TupleNumbers
    from retranscope.schemas.packets import SPILLED_DTYPES, sparse_sack_edges

    path = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "data" / "big.pcap"
    whole = read_capture(path).packets
    numbers = TupleNumbers()
    first_sent, canon = canonical_tuple(whole)
    code = numbers.code(_mix64(canon), canon, first_sent)
    del first_sent, canon
    packets = {name: code if name == "tuple" else whole[name] for name in SPILLED_DTYPES}
    packets |= sparse_sack_edges(whole)
    tuples = numbers.table()
    del whole, code
    n = max(len(packets["ts_ns"]), 1)
    table = sum(col.nbytes for col in packets.values())
    print(f"{path}: {n:,} packets, packet table {table / n:.0f} B a packet")
    print(f"{'stage':24s} {'live B/pkt':>11s} {'peak B/pkt':>11s}")
    tracemalloc.start()

    def mark(stage: str) -> None:
        live, peak = tracemalloc.get_traced_memory()
        print(f"{stage:24s} {live / n:11.0f} {peak / n:11.0f}")
        tracemalloc.reset_peak()

    flow_id, flows = flow_table(packets, tuples)
    mark("flow_table")
    space = sequence_space(packets, flow_id, flows)
    mark("sequence_space")
    context = sender_context(packets, flow_id, flows, space)
    mark("sender_context")
    retrans = retransmission_table(packets, flow_id, flows, space, context)
    mark("retransmission_table")
    notes: dict = {"gaps": capture_gaps(packets, flow_id, flows, space, context)}
    mark("capture_gaps")
    del context  # as classify_capture does
    classify_table(packets, flow_id, flows, retrans, space=space, notes=notes, too_big=[])
    mark("classify_table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
