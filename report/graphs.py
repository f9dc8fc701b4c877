"""What a report takes from the capture: the time-sequence graphs of the chosen flows and
the receiver's ACK delay behind each probe. The one place the report reads packets.

Flows are chosen by ``--flow`` (a flow_id, or ``ADDR:PORT-ADDR:PORT``, IPv6 in brackets)
and by how much they suffered (the most retransmissions first). The capture is read once
per analysis, only those flows' packets kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from retranscope.errors import BadInput
from retranscope.report import tsg
from retranscope.report.packets import (
    CaptureMissing,
    Endpoint,
    ack_delay_ns,
    flow_span,
    flow_view,
    locate_capture,
    read_flow_packets,
)

#: Flows graphed per analysis when none is asked for.
DEFAULT_GRAPHS = 3
#: Flows whose probes get an ACK delay from the capture, at most (those with the most
#: probes; each flow costs a little Python, a fleet-sized capture has many).
MAX_DELAY_FLOWS = 2000

_ENDPOINT = r"(\[[0-9A-Fa-f:.]+\]|[0-9.]+):(\d+)"
_SPEC = re.compile(rf"^{_ENDPOINT}\s*(?:-|->|→|,)\s*{_ENDPOINT}$")


@dataclass
class GraphOptions:
    flows: list[str] = field(default_factory=list)  # --flow SPEC
    pcap: list[Path] = field(default_factory=list)  # --pcap for this analysis
    top: int = DEFAULT_GRAPHS  # graphs of the flows that suffered most
    warn: Callable[[str], None] = lambda _line: None
    key: str = ""  # makes the page's element ids unique across analyses


@dataclass
class Evidence:
    figures: list[str] = field(default_factory=list)  # <figure> per graphed flow
    graphed: list[int] = field(default_factory=list)  # their flow ids
    ack_delay: pd.Series | None = None  # ns per TLP row of retransmits (index = row)
    notes: list[str] = field(default_factory=list)  # said on the page
    capture: list[Path] = field(default_factory=list)  # the files read
    missing: list[str] = field(default_factory=list)  # --flow specs this analysis lacks


def parse_flow_spec(spec: str) -> tuple:
    """``("id", n)`` or ``("tuple", (saddr, sport, daddr, dport))``; BadInput otherwise."""
    text = spec.strip()
    if text.isdigit():
        return ("id", int(text))
    m = _SPEC.match(text)
    if not m:
        raise BadInput(
            f"--flow {spec!r}: give a flow_id or ADDR:PORT-ADDR:PORT "
            "(IPv6 in brackets: [fd00::1]:40000-[fd00::2]:5001)"
        )
    a, p, b, q = m.groups()
    return ("tuple", (a.strip("[]"), int(p), b.strip("[]"), int(q)))


def find_flows(flows: pd.DataFrame, spec: str) -> pd.DataFrame:
    """flows.parquet rows a spec names: by id, or by 4-tuple in either direction (the data
    direction is what gets drawn: the one with more retransmissions, then more data);
    every connection of a reused 4-tuple."""
    kind, value = parse_flow_spec(spec)
    if kind == "id":
        return flows[flows["flow_id"] == value]
    a, p, b, q = value

    def match(sa, sp, da, dp):
        return (
            (flows["saddr"] == sa)
            & (flows["sport"] == sp)
            & (flows["daddr"] == da)
            & (flows["dport"] == dp)
        )

    both = flows[match(a, p, b, q) | match(b, q, a, p)]
    if both.empty:
        return both
    rank = both.assign(_r=both.get("retransmissions", 0), _d=both.get("n_data", 0))
    best = rank.sort_values(["_r", "_d"], ascending=False).iloc[0]
    keep = match(best["saddr"], best["sport"], best["daddr"], best["dport"])
    return flows[keep & (flows["flow_id"] >= 0)]


def choose_flows(
    flows: pd.DataFrame, specs: list[str], top: int, missing: list[str] | None = None
) -> pd.DataFrame:
    """Flows asked for, then the ``top`` with the most retransmissions; specs that name
    no flow are appended to ``missing``."""
    picked = []
    for spec in specs:
        hit = find_flows(flows, spec)
        if hit.empty and missing is not None:
            missing.append(spec)
        picked.append(hit)
    if "retransmissions" in flows and top > 0:
        worst = flows[(flows["flow_id"] >= 0) & (flows["retransmissions"] > 0)]
        picked.append(
            worst.sort_values("retransmissions", ascending=False, kind="stable").head(top)
        )
    if not picked:
        return flows.iloc[0:0]
    out = pd.concat(picked)
    return out.drop_duplicates("flow_id") if len(out) else out


def gather(a, opts: GraphOptions) -> Evidence:
    """Read the analysis's capture once and build its graphs and probes' ACK delays.

    ``a``: render.Analysis. A missing capture is an error when flows were asked for by
    ``--flow`` or the capture by ``--pcap``; otherwise the page and a warning say it."""
    ev = Evidence()
    r, flows = a.retransmits, a.flows
    if flows.empty or (flows["flow_id"] < 0).all():
        ev.missing = list(opts.flows)
        if len(r):
            ev.notes.append(
                "No time-sequence graphs: this analysis has no capture (events "
                "only); analyze with --pcap to draw them."
            )
        return ev
    chosen = choose_flows(flows, opts.flows, opts.top, ev.missing)
    probes = r.loc[(r["kind"] == "tlp") & (r["flow_id"] >= 0), "flow_id"].value_counts()
    if len(probes) > MAX_DELAY_FLOWS:
        ev.notes.append(
            f"ACK delays measured for the probes of the {MAX_DELAY_FLOWS:,} flows with the "
            f"most probes ({int(probes.iloc[:MAX_DELAY_FLOWS].sum()):,} of "
            f"{int(probes.sum()):,} probes)."
        )
    tlp_flow_ids = set(probes.index[:MAX_DELAY_FLOWS].tolist())
    tlp_flows = flows[flows["flow_id"].isin(tlp_flow_ids)]
    if chosen.empty and tlp_flows.empty:
        return ev
    try:
        ev.capture = locate_capture(a.summary, a.path or Path("."), opts.pcap)
    except CaptureMissing as err:
        if opts.pcap or len(opts.flows) > len(ev.missing):  # asked for: an error
            raise
        ev.notes.append(f"Time-sequence graphs and ACK delays not drawn: {err}.")
        opts.warn(f"{a.name}: {err}")
        return ev
    wanted = pd.concat([chosen, tlp_flows]).drop_duplicates("flow_id")
    index = read_flow_packets(
        ev.capture,
        [Endpoint.of_flow(f) for _, f in wanted.iterrows()],
        a.summary,
        check=bool(opts.pcap),
    )
    delays = []
    probe_rows = r[(r["kind"] == "tlp") & r["flow_id"].isin(tlp_flow_ids)].groupby("flow_id")
    drawn = set(chosen["flow_id"].tolist())
    for _, flow in wanted.iterrows():
        span = flow_span(flows, flow)
        view = flow_view(index, flow, span)
        fid = int(flow["flow_id"])
        if fid in tlp_flow_ids:
            t = probe_rows.get_group(fid)
            ends = view.place(t["ts_wall_ns"].to_numpy("int64"), t["end_seq"].to_numpy("int64"))
            delays.append(pd.Series(ack_delay_ns(view, ends), index=t.index))
        if fid in drawn:
            rows = tsg.rows_of_flow(r, flow, span)
            data = tsg.graph_data(view, flow, rows, f"{tsg.flow_label(flow)} (flow {fid})")
            ev.figures.append(tsg.figure_html(data, f"tsg-{opts.key}{fid}", rows))
            ev.graphed.append(fid)
    if delays:
        ev.ack_delay = pd.concat(delays)
    return ev
