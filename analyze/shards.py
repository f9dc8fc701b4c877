"""Classifying a capture in shards: connections apart, on several cores, merged back.

Every fact the classification derives is per flow or per connection (a flow's sequence
space, its sender's replay, the ACKs of its reverse flow), so the packets of one 4-tuple
(both directions, every connection that reused it) are a shard's to classify alone: the
rows are split by 4-tuple into ``n`` shards of about equal packet counts, each shard is
classified as if it were the whole capture (``classify_part``), and the parts are merged
into what the whole capture gives, numbered as flows.flow_table numbers them:

- flows by first appearance in the capture (their first frame);
- connections by their 4-tuple's first frame, then in capture order within the 4-tuple;
- retransmissions in frame order (the order classify_table gives them).

One fact is the capture's, not a flow's: its first packet's time (classify_table's
``t_cap0``, from which the replay tells a timeout the capture began in). A shard that
does not hold that packet gets a copy of it, as a flow of its own that the merge drops.

Shards run on worker processes forked from this one (the packet table is shared with them,
not copied; each takes its own rows) and in this process, one of them.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from retranscope.analyze.memory import libc_function
from retranscope.analyze.table import Nullable, Table, Text, n_rows

#: rows are hashed into this many buckets by 4-tuple; buckets are dealt to shards
HASH_BUCKETS = 4096
#: below this many packets a capture is classified whole, in this process: forking a
#: worker (~20-50 ms) and merging would cost more than the second core gives back
SHARD_MIN_PACKETS = 200_000
#: packets per shard aimed at: the classification's temporaries take ~200 bytes a packet,
#: and a shard's arrays (8 bytes a packet) stay under glibc's 32 MB mmap threshold, so
#: each shard reuses the heap memory the one before freed instead of faulting in fresh
#: pages (analyze/memory.py; on the 13M-packet capture, 4 shards instead of 1: a third
#: of the page faults, 0.9 GB less peak memory)
SHARD_PACKETS = 1 << 20
SERIAL_SHARDS_MIN_PACKETS = 4 * SHARD_PACKETS


def shard_count(n_packets: int, jobs: int) -> int:
    """How many shards a capture of ``n_packets`` in memory is classified in by ``jobs``
    processes (1: whole). One process classifies whole below SERIAL_SHARDS_MIN_PACKETS:
    on the 1.3M-packet capture shards neither saved time nor memory (the packet table is
    the bulk), on the 13M one they did (docs/scale.md)."""
    if n_packets < SHARD_MIN_PACKETS or (jobs < 2 and n_packets < SERIAL_SHARDS_MIN_PACKETS):
        return 1
    return max(jobs, -(-n_packets // SHARD_PACKETS))


@dataclass
class Part:
    """One shard's classification: ``flows`` (flows.FLOW_COLUMNS, local ids), ``wire``
    (output rows of its retransmissions, pipeline._wire_table, local flow ids; a shard
    classified in windows, its rows stored as they were done: windows.WindowRows),
    ``per_flow`` (per-flow counts for flows.parquet and summary.json), ``acks_lost`` (its
    ACKs lost after the capture point), ``drop_flow`` (the local id of the borrowed first
    packet's flow, -1: none)."""

    flows: Table
    wire: Table
    per_flow: dict[str, np.ndarray]
    acks_lost: int
    drop_flow: int = -1


ClassifyPart = Callable[..., "tuple[np.ndarray, Part]"]  # classify_part(packets, too_big, tuples=)


def canonical_tuple(packets: dict[str, np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each row's 4-tuple with its lesser endpoint first (flows._endpoint_less): whether
    the row was sent by that endpoint, and [a_hi, a_lo, a_port, b_hi, b_lo, b_port]."""
    from retranscope.analyze.flows import _endpoint_less

    s = (packets["saddr_hi"], packets["saddr_lo"], packets["sport"])
    d = (packets["daddr_hi"], packets["daddr_lo"], packets["dport"])
    first = _endpoint_less(*s, *d)
    return first, [np.where(first, a, b) for a, b in zip(s, d)] + [
        np.where(first, b, a) for a, b in zip(s, d)
    ]


def tuple_hash(packets: dict[str, np.ndarray]) -> np.ndarray:
    """A 64-bit hash of each row's unordered endpoint pair (both directions alike)."""
    from retranscope.analyze.flows import _mix64

    return _mix64(canonical_tuple(packets)[1])


def bucket_of_hash(h: np.ndarray, n_buckets: int) -> np.ndarray:
    """Each row's bucket (0 .. n_buckets - 1) from its tuple_hash's high bits (a
    multiplicative hash mixes its low bits least)."""
    return ((h >> np.uint64(32)) % np.uint64(n_buckets)).astype(np.int64)


def tuple_bucket(packets: dict[str, np.ndarray], n_buckets: int) -> np.ndarray:
    """Each row's bucket (0 .. n_buckets - 1) by its 4-tuple."""
    return bucket_of_hash(tuple_hash(packets), n_buckets)


def assign_shards(packets: dict[str, np.ndarray], n_shards: int) -> np.ndarray | None:
    """Shard of each row (0, 1, ... with no empty shard): 4-tuples hashed into buckets, the
    buckets dealt biggest first to the least loaded shard. None when the rows make fewer
    than two shards."""
    if n_shards < 2 or n_rows(packets) == 0:
        return None
    bucket = tuple_bucket(packets, HASH_BUCKETS)
    count = np.bincount(bucket, minlength=HASH_BUCKETS)
    used = np.flatnonzero(count)
    if len(used) < 2:
        return None
    load = np.zeros(n_shards, dtype=np.int64)
    shard_of_bucket = np.zeros(HASH_BUCKETS, dtype=np.int64)
    for b in used[np.argsort(-count[used], kind="stable")].tolist():
        s = int(np.argmin(load))
        shard_of_bucket[b] = s
        load[s] += count[b]
    if np.count_nonzero(load) < 2:
        return None
    compact = np.cumsum(load > 0) - 1  # shards left empty (fewer tuples than shards)
    return compact[shard_of_bucket][bucket]


def shard_rows(shard_of_row: np.ndarray, s: int, anchor: int) -> tuple[np.ndarray, int]:
    """Rows of shard ``s`` in capture order, with the capture's first packet (row
    ``anchor``) added where the shard lacks it; and that row's position (-1: not added)."""
    rows = np.flatnonzero(shard_of_row == s)
    if shard_of_row[anchor] == s:
        return rows, -1
    at = int(np.searchsorted(rows, anchor))
    return np.insert(rows, at, anchor), at


# the worker processes' view of the capture: set before they are forked
_SHARED: dict = {}


def _part_of_shard(s: int) -> Part:
    packets, shard_of_row, anchor = _SHARED["packets"], _SHARED["shard_of_row"], _SHARED["anchor"]
    rows, borrowed = shard_rows(shard_of_row, s, anchor)
    sub = {name: col[rows] for name, col in packets.items()}
    flow_id, part = _SHARED["classify"](sub, _SHARED["too_big"])
    part.drop_flow = int(flow_id[borrowed]) if borrowed >= 0 else -1
    return part


def classify_sharded(
    packets: dict[str, np.ndarray],
    too_big: list[dict] | None,
    shard_of_row: np.ndarray,
    classify: ClassifyPart,
    jobs: int,
) -> Part:
    """Every shard's Part, merged: with ``jobs`` 1 one after the other in this process,
    else shard 0 in this process and the others on ``jobs - 1`` forked workers."""
    n_shards = int(shard_of_row.max()) + 1
    _SHARED.update(
        packets=packets,
        shard_of_row=shard_of_row,
        anchor=int(np.argmin(packets["ts_ns"])),
        too_big=too_big,
        classify=classify,
    )
    try:
        if jobs < 2:
            parts = [_part_of_shard(s) for s in range(n_shards)]
        else:
            give_back_free_memory()
            ctx = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(
                max_workers=min(jobs - 1, n_shards - 1), mp_context=ctx
            ) as pool:
                futures = [pool.submit(_part_of_shard, s) for s in range(1, n_shards)]
                parts = [_part_of_shard(0)] + [f.result() for f in futures]
    finally:
        _SHARED.clear()
    return merge_parts(parts)


def give_back_free_memory() -> None:
    """Return the heap's free memory to the kernel (glibc malloc_trim), which
    analyze/memory.py otherwise keeps for reuse. Before a fork: pages the two processes
    share after it are copied on the first write by either, and the freed blocks are
    exactly what the next arrays are written into (fresh pages are only zero-filled).
    Before a spilled shard a forked worker classifies (analyze/spill.py), but not
    between those one process classifies in turn into one table: there the freed pages
    are what the next shard's arrays are written into."""
    trim = libc_function("malloc_trim")
    if trim is not None:
        trim(0)


def _concat(cols: list) -> np.ndarray | Nullable | Text:
    """One column of several parts. A part without rows may build a column of another
    kind (objects for a Nullable): only parts with rows count."""
    cols = [c for c in cols if len(c)] or cols[:1]
    if isinstance(cols[0], Text):
        if all(isinstance(c, Text) for c in cols):
            return Text.concat(cols)
        cols = [c.to_objects() if isinstance(c, Text) else c for c in cols]  # text and not
    if isinstance(cols[0], Nullable):
        return Nullable(
            np.concatenate([c.values for c in cols]), np.concatenate([c.valid for c in cols])
        )
    return np.concatenate(cols)


def _tuple_first_frame(flows: Table) -> np.ndarray:
    """Per flow, the first frame of its 4-tuple (the earliest of the tuple's flows)."""
    from retranscope.analyze.flows import _endpoint_less

    s = (flows["saddr_hi"], flows["saddr_lo"], flows["sport"])
    d = (flows["daddr_hi"], flows["daddr_lo"], flows["dport"])
    first = _endpoint_less(*s, *d)
    key = np.stack(
        [np.where(first, a, b).astype(np.uint64) for a, b in zip(s, d)]
        + [np.where(first, b, a).astype(np.uint64) for a, b in zip(s, d)],
        axis=1,
    )
    _, tid = np.unique(key, axis=0, return_inverse=True)
    tid = tid.ravel()
    out = np.full(tid.max(initial=-1) + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(out, tid, flows["first_frame"])
    return out[tid]


def number_flows(
    first_frame: np.ndarray, rev_cat: np.ndarray, conn_key: np.ndarray, tuple_first: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The whole capture's numbering of the flows of its shards, concatenated (see the
    module docstring). Per flow: ``first_frame``; ``rev_cat``, its reverse flow's row in
    the concatenation (-1: none); ``conn_key``, its connection (unique across shards, in
    capture order within one); ``tuple_first``, its 4-tuple's first frame. Returns
    ``order`` (output row -> concatenation row) and, per concatenation row, its flow id,
    reverse flow id (-1: none) and connection id."""
    order = np.argsort(first_frame, kind="stable")  # flows by first appearance
    new_id = np.empty(len(order), dtype=np.int64)
    new_id[order] = np.arange(len(order))
    rev_id = np.where(rev_cat >= 0, new_id[np.clip(rev_cat, 0, None)], -1)
    _, conn_id = np.unique(np.stack([tuple_first, conn_key], axis=1), axis=0, return_inverse=True)
    return order, new_id, rev_id, conn_id.ravel().astype(np.int64)


def merge_parts(parts: list[Part]) -> Part:
    """The parts as one capture's classification (see the module docstring)."""
    keeps, offsets, base = [], [], 0
    for p in parts:
        n = n_rows(p.flows)
        keeps.append(np.flatnonzero(np.arange(n) != p.drop_flow))
        offsets.append(base)
        base += len(keeps[-1])
    flows = {
        name: _concat([p.flows[name][k] for p, k in zip(parts, keeps)]) for name in parts[0].flows
    }
    per_flow = {
        name: np.concatenate([p.per_flow[name][k] for p, k in zip(parts, keeps)])
        for name in parts[0].per_flow
    }
    # local flow id -> row in the concatenation (-1: dropped), per part
    local_to_cat = []
    for p, k, off in zip(parts, keeps, offsets):
        m = np.full(n_rows(p.flows) + 1, -1, dtype=np.int64)  # [-1] stays -1
        m[k] = off + np.arange(len(k))
        local_to_cat.append(m)
    rev_cat = np.concatenate(
        [m[p.flows["rev_flow_id"][k]] for p, k, m in zip(parts, keeps, local_to_cat)]
    )
    conn_key = np.concatenate(
        [p.flows["conn_id"][k] + (i << 40) for i, (p, k) in enumerate(zip(parts, keeps))]
    )
    order, new_id, rev_id, conn_id = number_flows(
        flows["first_frame"], rev_cat, conn_key, _tuple_first_frame(flows)
    )
    flows["flow_id"], flows["rev_flow_id"], flows["conn_id"] = new_id, rev_id, conn_id
    flows = {name: col[order] for name, col in flows.items()}
    per_flow = {name: col[order] for name, col in per_flow.items()}

    wires = []
    for p, m in zip(parts, local_to_cat):
        cat = m[p.wire["flow_id"]]
        keep = np.flatnonzero(cat >= 0)
        w = {name: col[keep] for name, col in p.wire.items()}
        w["flow_id"] = new_id[cat[keep]]
        wires.append(w)
    wire = {name: _concat([w[name] for w in wires]) for name in wires[0]}
    by_frame = np.argsort(wire["frame"], kind="stable")
    wire = {name: col[by_frame] for name, col in wire.items()}
    return Part(flows, wire, per_flow, sum(p.acks_lost for p in parts))
