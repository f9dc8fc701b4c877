"""Five ready questions over a fleet dataset, as DuckDB SQL over the views of fleet/query.py.

`retranscope fleet query DATASET NAME` runs one by name; docs/fleet.md prints each (a test
proves the text there is this text), and bench/bench_fleet.py times them.

"Real loss": a retransmission the receiver did not show needless (no D-SACK, no timestamp
echo of the original): the report's convention too (a null ``spurious`` counts as real).
"""

from __future__ import annotations

QUESTIONS: dict[str, tuple[str, str]] = {
    "worst_hosts": (
        "Worst hosts by real loss",
        """\
-- Hosts ranked by retransmissions that repaired real loss (not shown spurious),
-- with the rate per thousand data segments in their captures (runs.data_segments is
-- the sum of each run's flows.n_data).
WITH r AS (
    SELECT host,
           count(*) FILTER (WHERE NOT coalesce(spurious, false)) AS real_loss,
           count(*) FILTER (WHERE spurious) AS spurious,
           count(*) AS retransmissions
    FROM retransmits GROUP BY host),
d AS (SELECT host, sum(data_segments) AS data_segments FROM runs
      WHERE status = 'ok' GROUP BY host)
SELECT host, real_loss, spurious, retransmissions, data_segments,
       round(1000.0 * real_loss / nullif(data_segments, 0), 2) AS real_loss_per_1k
FROM r JOIN d USING (host)
ORDER BY real_loss DESC, real_loss_per_1k DESC, host
LIMIT 20""",
    ),
    "spurious_tlp_share": (
        "Spurious TLP share per host per day",
        """\
-- Tail loss probes per host and day (the UTC day each run started), and the share the
-- receiver showed needless: probe noise, not loss.
SELECT host, date,
       count(*) FILTER (WHERE kind = 'tlp') AS tlp,
       count(*) FILTER (WHERE kind = 'tlp' AND spurious) AS spurious_tlp,
       round(count(*) FILTER (WHERE kind = 'tlp' AND spurious)
             / nullif(count(*) FILTER (WHERE kind = 'tlp'), 0), 3) AS spurious_tlp_share
FROM retransmits
GROUP BY host, date
HAVING count(*) FILTER (WHERE kind = 'tlp') > 0
ORDER BY host, date""",
    ),
    "top_peers": (
        "Top peers",
        """\
-- The receivers the retransmissions were sent to, across the fleet: how many hosts
-- resent to each, and how much of it repaired real loss.
SELECT daddr AS peer,
       count(DISTINCT host) AS hosts,
       count(*) FILTER (WHERE NOT coalesce(spurious, false)) AS real_loss,
       count(*) FILTER (WHERE spurious) AS spurious,
       count(*) AS retransmissions
FROM retransmits
GROUP BY daddr
ORDER BY real_loss DESC, retransmissions DESC, peer
LIMIT 20""",
    ),
    "rto_chains": (
        "RTO chains per host",
        """\
-- Retransmission timeouts per host. A timeout with backoff n is the (n+1)th in a row on
-- its connection with no new data acknowledged between (RFC 6298 5.5: the timer doubles);
-- a chain is a run of two or more.
SELECT host,
       count(*) FILTER (WHERE backoff = 1) AS chains,
       max(backoff) + 1 AS longest_chain,
       count(*) AS timeouts,
       count(DISTINCT run_id) FILTER (WHERE backoff >= 1) AS runs_with_chains,
       round(max(since_original_ns) / 1e9, 3) AS longest_wait_s
FROM retransmits
WHERE kind IN ('rto', 'syn', 'synack')
GROUP BY host
ORDER BY chains DESC, longest_chain DESC, host""",
    ),
    "counter_reconciliation": (
        "Kernel-counter reconciliation per run",
        """\
-- Per recorded run: the kernel's own counters over the recording against the analysis.
-- unexplained_segments is RetransSegs less the segments the events reported and those the
-- kernel resent without an event: 0 when every resent segment is accounted for. The
-- kernel also counts in TCPLossProbes the probes that sent new data (no retransmission),
-- and in TCPTimeouts each timeout, SYN ones included. Only this host's own
-- retransmissions are compared (match 'peer_sent' rows are the other end's).
WITH own AS (
    SELECT run_id,
           count(*) FILTER (WHERE kind = 'tlp') AS tlp,
           count(*) FILTER (WHERE kind IN ('rto', 'syn', 'synack')) AS timeouts,
           count(*) FILTER (WHERE kind = 'fast') AS fast,
           count(*) FILTER (WHERE kind = 'rto_recovery') AS slow_start
    FROM retransmits
    WHERE match IS DISTINCT FROM 'peer_sent'
    GROUP BY run_id)
SELECT r.host, r.date, r.run_id,
       r.kernel_retrans_segs, r.event_segments, r.unreported_segments,
       r.kernel_retrans_segs - r.event_segments - r.unreported_segments
           AS unexplained_segments,
       r.counters_delta['TcpExt:TCPLossProbes'] AS kernel_loss_probes,
       coalesce(o.tlp, 0) AS tlp,
       r.counters_delta['TcpExt:TCPTimeouts'] AS kernel_timeouts,
       coalesce(o.timeouts, 0) AS timeouts,
       r.events_lost_in_kernel, r.frames_without_event
FROM runs r LEFT JOIN own o USING (run_id)
WHERE r.status = 'ok' AND r.kernel_retrans_segs IS NOT NULL
ORDER BY abs(unexplained_segments) DESC,
         abs(kernel_timeouts - coalesce(o.timeouts, 0)) DESC, r.host, r.date, r.run_id""",
    ),
}
