"""`record --metrics ADDR:PORT`: the recorder's counts in the Prometheus text format.

Served by prometheus_client from a thread; the recorder's loop updates the numbers in
bulk (one group-by per batch of events, the kernel's and tcpdump's counters about once
a second), and a scrape reads a consistent copy under a lock. Metrics:

  retranscope_retransmissions_total{reason,family[,remote]}   events (as written)
  retranscope_retransmitted_segments_total{reason,family}     their segments (tcp_skb_pcount)
  retranscope_events_lost_total          refused by a full kernel buffer
  retranscope_events_missed_total        the kernel skipped the program (another was running)
  retranscope_unreported_segments_total  resent without any event (the sockets' own totals)
  retranscope_events_written_total       on disk (closed files and the flushed journal)
  retranscope_tcpdump_packets_total{what}  captured / dropped_by_kernel / dropped_by_interface
  process_*                              the recorder's own CPU and memory

The remote address label (--metrics-remote) is one series per peer: off by default, as a
busy server has many peers.
"""

from __future__ import annotations

import threading
from collections import defaultdict

import pyarrow as pa

from retranscope.errors import BadInput, EnvironmentProblem


def parse_listen(text: str) -> tuple[str, int]:
    """ADDR:PORT, [V6ADDR]:PORT or :PORT (every address)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadInput(f"--metrics {text!r}: give ADDR:PORT, e.g. 127.0.0.1:9977")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "0.0.0.0", int(port)


class RecorderMetrics:
    def __init__(self, listen: str, remote: bool = False):
        from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

        addr, port = parse_listen(listen)
        self.remote = remote
        self._lock = threading.Lock()
        self._events: dict[tuple[str, ...], int] = defaultdict(int)
        self._segments: dict[tuple[str, ...], int] = defaultdict(int)
        self._values: dict[str, int] = {}
        self._tcpdump: dict[str, int] = {}
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        ProcessCollector(registry=registry)
        try:
            self.server, self.thread = start_http_server(port, addr, registry)
        except OSError as exc:
            raise EnvironmentProblem(
                f"--metrics {listen}: cannot listen there ({exc.strerror or exc})"
            ) from exc
        self.address = f"{addr}:{self.server.server_port}"

    def count(self, table: pa.Table) -> None:
        """One batch of decoded events."""
        if not table.num_rows:
            return
        keys = ["reason", "family"] + (["daddr"] if self.remote else [])
        segs = table["segs"].fill_null(1).cast(pa.int64())
        grouped = (
            pa.table({**{k: table[k] for k in keys}, "segs": segs})
            .group_by(keys)
            .aggregate([("segs", "sum"), ("segs", "count")])
        )
        cols = [grouped[k].to_pylist() for k in keys]
        n = grouped["segs_count"].to_pylist()
        s = grouped["segs_sum"].to_pylist()
        with self._lock:
            for i, key in enumerate(zip(*cols)):
                label = tuple(str(v) for v in key)
                self._events[label] += n[i]
                self._segments[label[:2]] += s[i]

    def set(self, **values: int | None) -> None:
        """Running totals kept elsewhere (the kernel's counts, the writer's)."""
        with self._lock:
            self._values.update({k: int(v) for k, v in values.items() if v is not None})

    def set_tcpdump(self, stats: dict) -> None:
        with self._lock:
            self._tcpdump.update(
                {
                    k: int(v)
                    for k, v in stats.items()
                    if k in ("captured", "dropped_by_kernel", "dropped_by_interface")
                    and v is not None
                }
            )

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        with self._lock:
            events, segments = dict(self._events), dict(self._segments)
            values, tcpdump = dict(self._values), dict(self._tcpdump)
        labels = ["reason", "family"] + (["remote"] if self.remote else [])
        fam = CounterMetricFamily(
            "retranscope_retransmissions",
            "TCP retransmissions recorded, by the kernel's reason",
            labels=labels,
        )
        for key, v in sorted(events.items()):
            fam.add_metric(list(key), v)
        yield fam
        fam = CounterMetricFamily(
            "retranscope_retransmitted_segments",
            "Segments in the recorded retransmissions",
            labels=["reason", "family"],
        )
        for key, v in sorted(segments.items()):
            fam.add_metric(list(key), v)
        yield fam
        for name, doc in (
            ("events_lost", "Events the kernel buffer refused (full)"),
            ("events_missed", "Tracepoint hits the kernel ran no BPF program for"),
            ("unreported_segments", "Segments resent without an event (socket totals)"),
            ("events_written", "Events on disk"),
        ):
            if name in values:
                yield CounterMetricFamily(f"retranscope_{name}", doc, value=values[name])
        if tcpdump:
            fam = CounterMetricFamily(
                "retranscope_tcpdump_packets",
                "tcpdump's own counts (captured, dropped)",
                labels=["what"],
            )
            for k, v in sorted(tcpdump.items()):
                fam.add_metric([k], v)
            yield fam

    def totals(self) -> dict[str, int]:
        """Events per reason/family (for run.json and the tests)."""
        with self._lock:
            return {"/".join(k): v for k, v in self._events.items()}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
