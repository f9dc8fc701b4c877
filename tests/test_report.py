"""The report from real analyses of the corpus recordings: time-sequence graph data, the
probe-gap plot's ACK delays, the compare view and its tests, capture sets, causes, and how
the capture is found (or said missing). The browser side is tests/test_report_browser.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from retranscope.analyze.run import run_analysis
from retranscope.cli import app
from retranscope.errors import BadInput
from retranscope.report import compare, graphs, probegap, stats, tsg
from retranscope.report.packets import unwrap
from retranscope.report.render import (
    TERMINAL_COLUMNS,
    load,
    render_html,
    render_markdown,
    render_terminal,
    top_flows,
)

CORPUS = Path(__file__).parent / "fixtures" / "corpus"
runner = CliRunner()


class Analyses:
    """Each corpus recording analyzed once per session (capture and events, as a user
    runs `retranscope analyze --pcap capture.pcap --events DIR`)."""

    def __init__(self, base: Path):
        self.base = base

    def __call__(self, name: str, events: bool = True) -> Path:
        out = self.base / (name + ("" if events else "-pcap"))
        if not (out / "summary.json").exists():
            # relative to the current directory, as a user types it (and as the page's
            # capture table then shows it)
            rec = Path(os.path.relpath(CORPUS / name))
            run_analysis(rec / "capture.pcap", rec if events else None, out)
        return out


@pytest.fixture(scope="session")
def analyses(tmp_path_factory) -> Analyses:
    return Analyses(tmp_path_factory.mktemp("analyses"))


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith("retranscope: error: ")
    return lines[0]


def graph_json(html: str) -> list[dict]:
    """The data blocks of the page's time-sequence graphs."""
    return [
        json.loads(m)
        for m in re.findall(
            r"<script type='application/json' class='tsg-data'>(.*?)</script>", html
        )
    ]


def expected_rows(analysis_dir: Path, flow_id: int) -> pd.DataFrame:
    """retransmits.parquet's rows of a flow, counted here independently of the report:
    its own rows, and events of its 4-tuple without a frame inside its time span."""
    r = pd.read_parquet(analysis_dir / "retransmits.parquet")
    f = pd.read_parquet(analysis_dir / "flows.parquet")
    flow = f[f["flow_id"] == flow_id].iloc[0]
    rev = f[f["flow_id"] == flow["rev_flow_id"]]
    lo = min([flow["first_ts_ns"]] + rev["first_ts_ns"].tolist())
    hi = max([flow["last_ts_ns"]] + rev["last_ts_ns"].tolist())
    same = (
        (r["saddr"] == flow["saddr"])
        & (r["sport"] == flow["sport"])
        & (r["daddr"] == flow["daddr"])
        & (r["dport"] == flow["dport"])
    )
    loose = same & (r["flow_id"] == -1) & r["ts_wall_ns"].between(lo, hi)
    return r[(r["flow_id"] == flow_id) | loose]


# --- sequence space -------------------------------------------------------------------


def test_unwrap_crosses_4_gb_and_goes_back():
    base = 0xFFFF_F000
    raw = (
        np.array([base, base + 0x800, 0x0000_0100, 0x0000_2000, base + 0x900], dtype=np.int64)
        & 0xFFFFFFFF
    )
    got = unwrap(raw.astype(np.uint32), base)
    assert got.tolist() == [0, 0x800, 0x1100, 0x3000, 0x900]


# --- flow specs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec,want",
    [
        ("7", ("id", 7)),
        ("10.0.0.1:40000-10.0.0.2:5001", ("tuple", ("10.0.0.1", 40000, "10.0.0.2", 5001))),
        ("10.0.0.1:40000 -> 10.0.0.2:5001", ("tuple", ("10.0.0.1", 40000, "10.0.0.2", 5001))),
        ("[fd00::1]:40000-[fd00::2]:5001", ("tuple", ("fd00::1", 40000, "fd00::2", 5001))),
    ],
)
def test_flow_spec(spec, want):
    assert graphs.parse_flow_spec(spec) == want


@pytest.mark.parametrize("spec", ["10.0.0.1-10.0.0.2", "fd00::1:4-fd00::2:5", "flow7", ""])
def test_bad_flow_spec_is_bad_input(spec):
    with pytest.raises(BadInput, match="--flow"):
        graphs.parse_flow_spec(spec)


# --- tests of proportions -------------------------------------------------------------


def test_proportion_tests_known_values():
    # Fisher's tea-tasting table [[3, 1], [1, 3]]: two-sided p = 34/70
    assert stats.fisher_exact(3, 4, 1, 4) == pytest.approx(34 / 70)
    # [[1, 9], [9, 1]]: p = 0.0010940 (R's fisher.test)
    assert stats.fisher_exact(1, 10, 9, 10) == pytest.approx(0.0010940, rel=1e-3)
    # 45/100 against 30/100: z = 2.1909, p = 0.02846
    assert stats.z_test(45, 100, 30, 100) == pytest.approx(0.02846, rel=1e-3)
    assert stats.compare_shares(3, 4, 1, 4).method == "Fisher's exact"
    assert stats.compare_shares(45, 100, 30, 100).method == "z-test"
    # fully separated samples of 5: U = 0, z = -2.611, p = 0.00902
    assert stats.mann_whitney([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(0.00902, rel=1e-2)
    assert stats.mann_whitney([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


# --- sampling -------------------------------------------------------------------------


def test_sampling_keeps_the_neighbours_of_every_retransmission():
    t = np.arange(200_000) * 10
    pos = np.searchsorted(t, [5_000, 777_777, 1_500_005, 1_499_000])
    s = tsg.sample(len(t), pos, budget=2000)
    assert s.stride > 1 and 1 <= s.neighbours <= tsg.FOCUS_MAX
    for i in pos:
        assert set(range(i - s.neighbours, i + s.neighbours)) <= set(s.keep.tolist())
    assert len(s.keep) <= 2100
    assert s.keep[0] == 0 and s.keep[-1] == len(t) - 1
    note = s.note("original segments")
    assert f"{len(s.keep):,} of 200,000" in note and "every" in note
    assert tsg.sample(100, pos).note("x") == "all 100 x"


def test_graph_of_a_sampled_flow_keeps_every_retransmission(analyses):
    """A small budget forces sampling of a real flow: originals and ACKs shrink, the
    retransmissions do not, and the data says how it was sampled."""
    a = load(analyses("random_loss_notso"))
    flow = a.flows.sort_values("retransmissions").iloc[-1]
    from retranscope.report.packets import (
        Endpoint,
        flow_span,
        flow_view,
        locate_capture,
        read_flow_packets,
    )

    paths = locate_capture(a.summary, a.path)
    index = read_flow_packets(paths, [Endpoint.of_flow(flow)], a.summary)
    span = flow_span(a.flows, flow)
    view = flow_view(index, flow, span)
    rows = tsg.rows_of_flow(a.retransmits, flow, span)
    data = tsg.graph_data(view, flow, rows, "t", budget=200)
    assert data["sampled"]
    assert len(data["rtx"]["t"]) == len(expected_rows(a.path, int(flow["flow_id"]))) > 100
    n_orig = int(view.original.sum())
    assert len(data["orig"]["t"]) < n_orig
    assert f"of {n_orig:,} original segments" in data["notes"][0]
    # originals never include a retransmitted segment, whatever the sampling
    t = np.cumsum(data["orig"]["t"])
    s = np.cumsum(data["orig"]["s"])
    reach = np.maximum.accumulate(s + np.array(data["orig"]["l"]))
    assert (s[1:] + np.array(data["orig"]["l"][1:]) > reach[:-1]).all()
    assert (np.diff(t) >= 0).all()
    # the original of every retransmitted first byte is drawn (zoomed in on a hole, the
    # segment that was lost is there)
    end = s + np.array(data["orig"]["l"])
    for first in data["rtx"]["s"]:
        assert ((s <= first) & (first < end)).any(), first


# --- probe gap and ACK delay ----------------------------------------------------------


def test_spurious_probes_sit_where_the_ack_delay_exceeds_the_pto(analyses):
    """slow_server_tlp: the server thinks 15-30 ms before answering, so no ACK comes
    before the PTO (2·SRTT + 2 ms, a few ms); every probe is spurious (D-SACK)."""
    a = load(analyses("slow_server_tlp"))
    ev = graphs.gather(a, graphs.GraphOptions())
    p = probegap.probe_table(a.retransmits, ev.ack_delay)
    assert len(p) == 4 and p["spurious"].all()
    assert p["ack_delay_ms"].notna().all()
    assert (p["ack_delay_ms"] > p["pto_ms"]).all()
    # the ACK came only after the probe: a lower bound of the receiver's delay
    assert p["after_probe"].all() and (p["ack_delay_ms"] >= p["gap_ms"]).all()
    assert "4 of the 4 probes with a measured ACK delay" in probegap.story(p)
    svg = probegap.plot(p, "t")
    assert svg.count('class="probe"') == 4 and svg.count('class="ackdelay"') == 4


def test_ack_delay_column_is_used_when_the_analysis_has_it(analyses):
    a = load(analyses("slow_server_tlp"))
    a.retransmits["ack_delay_ns"] = 40_000_000
    p = probegap.probe_table(a.retransmits, None)
    assert (p["ack_delay_ms"] == 40).all()


# --- the page -------------------------------------------------------------------------


def test_report_draws_the_worst_flows_and_the_asked_one(analyses, tmp_path):
    """--graphs 1 draws the worst flow; --flow adds the one asked for, given here by its
    reverse direction (the ACKs): the data direction is what gets drawn."""
    d = analyses("random_loss_v6")
    flows = pd.read_parquet(d / "flows.parquet")
    data_flows = flows[flows["n_data"] > 10].sort_values("retransmissions")
    mild, worst = data_flows.iloc[0], data_flows.iloc[-1]
    assert 0 < mild["retransmissions"] < worst["retransmissions"]
    spec = f"[{mild['daddr']}]:{mild['dport']}-[{mild['saddr']}]:{mild['sport']}"
    r = cli("report", d, "--out", tmp_path / "r.html", "--graphs", "1", "--flow", spec)
    assert r.exit_code == 0, r.output
    html = (tmp_path / "r.html").read_text()
    data = graph_json(html)
    assert len(data) == 2
    for got, flow in zip(data, (mild, worst)):
        assert f"(flow {int(flow['flow_id'])})" in got["title"]
        assert len(got["rtx"]["t"]) == len(expected_rows(d, int(flow["flow_id"])))
        assert not got["sampled"] and got["notes"][0].startswith("all ")
    r = cli(
        "report",
        d,
        "--out",
        tmp_path / "r.html",
        "--graphs",
        "0",
        "--flow",
        str(int(mild["flow_id"])),
    )
    assert [g["title"] for g in graph_json((tmp_path / "r.html").read_text())] == [data[0]["title"]]


def test_unknown_flow_is_one_line_exit_2(analyses, tmp_path):
    d = analyses("fast_nth")
    r = cli("report", d, "--out", tmp_path / "r.html", "--flow", "10.9.9.9:1-10.9.9.8:2")
    assert r.exit_code == 2
    assert "no such flow" in one_error_line(r)
    assert not (tmp_path / "r.html").exists()


def _moved(analysis_dir: Path, tmp_path: Path) -> Path:
    """A copy of an analysis whose summary names a capture that is not there."""
    d = tmp_path / "moved"
    shutil.copytree(analysis_dir, d)
    s = json.loads((d / "summary.json").read_text())
    s["capture"]["path"] = "/nonexistent/capture.pcap"
    for f in s["capture"].get("files") or []:
        f["path"] = "/nonexistent/capture.pcap"
    (d / "summary.json").write_text(json.dumps(s))
    return d


def test_missing_capture_is_said_in_the_page_and_on_stderr(analyses, tmp_path):
    d = _moved(analyses("fast_nth"), tmp_path)
    r = cli("report", d, "--out", tmp_path / "r.html")
    assert r.exit_code == 0, r.output
    assert "the capture /nonexistent/capture.pcap is not here: give --pcap" in r.output
    html = (tmp_path / "r.html").read_text()
    assert "Time-sequence graphs and ACK delays not drawn" in html
    assert "is not here: give --pcap" in html and not graph_json(html)


def test_missing_capture_with_flow_asked_is_one_line_exit_2(analyses, tmp_path):
    d = _moved(analyses("fast_nth"), tmp_path)
    r = cli("report", d, "--out", tmp_path / "r.html", "--flow", "0")
    assert r.exit_code == 2
    line = one_error_line(r)
    assert "the capture /nonexistent/capture.pcap is not here: give --pcap" in line


def test_pcap_option_points_to_the_capture(analyses, tmp_path):
    d = _moved(analyses("fast_nth"), tmp_path)
    elsewhere = tmp_path / "else.pcap"
    shutil.copy(CORPUS / "fast_nth" / "capture.pcap", elsewhere)
    r = cli("report", d, "--out", tmp_path / "r.html", "--pcap", elsewhere)
    assert r.exit_code == 0, r.output
    assert len(graph_json((tmp_path / "r.html").read_text())) == 1


def test_pcap_of_another_capture_is_rejected(analyses, tmp_path):
    d = analyses("fast_nth")
    r = cli(
        "report", d, "--out", tmp_path / "r.html", "--pcap", CORPUS / "syn_drop" / "capture.pcap"
    )
    assert r.exit_code == 2
    assert "is not the capture this analysis read" in one_error_line(r)


def test_events_only_analysis_says_why_no_graph(tmp_path):
    rec = CORPUS / "blackhole_rto"
    run_analysis(None, rec, tmp_path / "a")
    r = cli("report", tmp_path / "a", "--out", tmp_path / "r.html")
    assert r.exit_code == 0, r.output
    html = (tmp_path / "r.html").read_text()
    assert "no capture (events only)" in html and not graph_json(html)
    r = cli("report", tmp_path / "a", "--out", tmp_path / "r.html", "--flow", "0")
    assert r.exit_code == 2 and "no such flow" in one_error_line(r)


def _split_pcap(src: Path, out_dir: Path, parts: int) -> list[Path]:
    """Cut a classic pcap into ``parts`` files of consecutive records (as tcpdump -C
    rotates), each with the same file header."""
    raw = src.read_bytes()
    head, order = raw[:24], "<" if raw[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    offs, at = [], 24
    while at + 16 <= len(raw):
        offs.append(at)
        at += 16 + struct.unpack(order + "I", raw[at + 8 : at + 12])[0]
    bounds = np.linspace(0, len(offs), parts + 1).astype(int)
    paths = []
    for i in range(parts):
        lo = offs[bounds[i]]
        hi = offs[bounds[i + 1]] if bounds[i + 1] < len(offs) else len(raw)
        p = out_dir / f"capture.pcap{i}"
        p.write_bytes(head + raw[lo:hi])
        paths.append(p)
    return paths


def test_capture_set_files_and_graphs_from_several_files(analyses, tmp_path):
    """A capture set's summary lists ``files``: the page shows each with its figures, and
    the graphs read the flow's packets across the files (the same as from one file)."""
    d = tmp_path / "set"
    shutil.copytree(analyses("reqresp_loss_both"), d)
    files = _split_pcap(CORPUS / "reqresp_loss_both" / "capture.pcap", tmp_path, 3)
    from retranscope.analyze.capture import read_capture

    s = json.loads((d / "summary.json").read_text())
    entries = []
    for f in files:
        m = read_capture(f).meta
        entries.append(
            {
                "path": str(f),
                "records": m.records,
                "tcp_packets": m.tcp_packets,
                "first_ts_ns": m.first_ts_ns,
                "last_ts_ns": m.last_ts_ns,
            }
        )
    s["capture"]["files"] = entries
    (d / "summary.json").write_text(json.dumps(s))
    r = cli("report", d, "--out", tmp_path / "set.html", "--graphs", "1")
    assert r.exit_code == 0, r.output
    one = cli(
        "report", analyses("reqresp_loss_both"), "--out", tmp_path / "one.html", "--graphs", "1"
    )
    assert one.exit_code == 0, one.output
    html = (tmp_path / "set.html").read_text()
    assert "Capture set: 3 files" in html
    for e in entries:
        assert e["path"] in html and f">{e['records']}<" in html
    got, want = graph_json(html)[0], graph_json((tmp_path / "one.html").read_text())[0]
    assert got["orig"] == want["orig"] and got["rtx"] == want["rtx"] and got["ack"] == want["ack"]


def test_top_flows_are_flows_parquet_counts(analyses):
    a = load(analyses("reqresp_loss_both"))
    t = top_flows(a)
    f = a.flows.set_index("flow_id")
    for row in t.itertuples():
        assert row.retransmissions == f.at[row.flow_id, "retransmissions"]
        for k in ("tlp", "fast", "rto"):
            if k in t:
                assert getattr(row, k) == f.at[row.flow_id, k]
    assert t["retransmissions"].is_monotonic_decreasing


def test_causes_shown_when_the_analysis_has_them(analyses, tmp_path):
    """retransmits.parquet with cause/cause_text (as the analyzer will write them): the
    why-table and the graph's hover text are those sentences; without them, kind and
    timing."""
    d = tmp_path / "caused"
    shutil.copytree(analyses("slow_server_tlp"), d)
    r = pd.read_parquet(d / "retransmits.parquet")
    r["cause"] = "tlp_delayed_ack"
    r["cause_text"] = [
        f"TLP {i}: the receiver's ACK came late (frame {f})" for i, f in enumerate(r["frame"])
    ]
    # text that would end or derail the <script> element holding it, were it not escaped
    r.loc[r.index[0], "cause_text"] = '</script><!-- <script>x</script> & "quoted"'
    r.to_parquet(d / "retransmits.parquet")
    res = cli("report", d, "--out", tmp_path / "c.html")
    assert res.exit_code == 0, res.output
    html = (tmp_path / "c.html").read_text()
    data = graph_json(html)[0]
    assert data["rtx"]["why"] == r.sort_values("ts_wall_ns")["cause_text"].tolist()
    assert "tlp_delayed_ack" in html and "causes as the analyzer found them" in html
    own = graph_json(
        render_html(
            [load(analyses("slow_server_tlp"))],
            [graphs.gather(load(analyses("slow_server_tlp")), graphs.GraphOptions())],
        )
    )[0]
    assert all(
        w.startswith("TLP ") and "PTO = 2·SRTT + 2 ms" in w and "D-SACK: spurious" in w
        for w in own["rtx"]["why"]
    )
    # An analysis written before the analyzer had causes: kind and timing instead.
    old = tmp_path / "old"
    shutil.copytree(analyses("slow_server_tlp"), old)
    r = pd.read_parquet(old / "retransmits.parquet").drop(columns=["cause", "cause_text"])
    r.to_parquet(old / "retransmits.parquet")
    a = load(old)
    plain = graph_json(render_html([a], [graphs.gather(a, graphs.GraphOptions())]))[0]
    assert all(
        w.startswith("tail loss probe ") and "expected PTO" in w and "spurious (D-SACK)" in w
        for w in plain["rtx"]["why"]
    )


def test_timers_drawn_where_a_probe_or_timeout_fired(analyses):
    a = load(analyses("reqresp_loss_both"))
    ev = graphs.gather(a, graphs.GraphOptions(top=1))
    data = graph_json(ev.figures[0])[0]
    kinds = [data["kinds"][k] for k in data["rtx"]["k"]]
    for kind, timer in zip(kinds, data["rtx"]["timer"]):
        if kind == "tlp":
            assert timer and timer[2] == "pto" and timer[0] < timer[1]
        elif kind == "fast":
            assert timer is None
    assert any(t and t[2] == "rto" for t in data["rtx"]["timer"])


# --- compare --------------------------------------------------------------------------


def test_compare_view_only_for_exactly_two(analyses):
    a, b, c = (load(analyses(n)) for n in ("slow_server_tlp", "random_loss", "fast_nth"))
    assert "Compare: slow_server_tlp → random_loss" in render_html([a, b])
    assert "Compare" not in render_html([a]) and "Compare" not in render_html([a, b, c])
    md = render_markdown([a, b])
    assert "## Compare: slow_server_tlp → random_loss" in md and "| p (Holm) |" in md


def test_compare_finds_the_change_and_states_its_test(analyses):
    """All 4 probes spurious before, none of 33 retransmissions after: beyond noise by
    Fisher's exact test (p = 1/C(37,4), Holm-adjusted over the page's tests)."""
    a, b = load(analyses("slow_server_tlp")), load(analyses("random_loss"))
    tests = compare.compare(a, b)
    sp = next(t for t in tests if t.what == "spurious, of all retransmissions")
    assert sp.method == "Fisher's exact"
    assert sp.p == pytest.approx(1 / 66045, rel=1e-6)
    assert sp.changed and sp.adjusted >= sp.p
    same = compare.compare(a, a)
    assert not any(t.changed for t in same)
    html = render_html([a, b])
    assert "spurious, of all retransmissions" in html and "Fisher&#x27;s exact" in html
    assert "Holm" in html


def test_compare_through_the_cli(analyses, tmp_path):
    r = cli(
        "report",
        analyses("slow_server_tlp"),
        analyses("random_loss"),
        "--out",
        tmp_path / "cmp.html",
    )
    assert r.exit_code == 0, r.output
    assert r.output.startswith("From slow_server_tlp to random_loss")
    r = cli(
        "report",
        analyses("slow_server_tlp"),
        analyses("random_loss"),
        "--out",
        tmp_path / "cmp.html",
        "--pcap",
        CORPUS / "slow_server_tlp" / "capture.pcap",
    )
    assert r.exit_code == 2 and "one --pcap per analysis" in one_error_line(r)


CAPTURES = Path(__file__).parent / "fixtures" / "captures"


@pytest.mark.parametrize(
    "name, events",
    [
        ("slow_server_tlp", True),  # kernel events joined: the match lines
        ("random_loss", False),
        ("reqresp_loss_both", True),
        ("captures/pmtu_v4_tso", False),  # the path MTU line, with its MTU
        ("captures/tfo_data_not_acked", False),  # the Fast Open line
        ("captures/ack_lost_after_capture", False),
    ],
)
def test_terminal_summary_reads_only_its_columns(analyses, tmp_path, name, events):
    """`analyze` prints its summary from TERMINAL_COLUMNS of retransmits.parquet alone
    (no flows.parquet): the same lines as from the whole analysis."""
    if name.startswith("captures/"):
        out = tmp_path / "a"
        run_analysis(CAPTURES / (name.split("/")[1] + ".pcap"), None, out)
    else:
        out = analyses(name, events=events)
    whole, few = load(out), load(out, terminal=True)
    assert set(few.retransmits.columns) <= set(TERMINAL_COLUMNS) and few.flows.empty
    assert len(few.retransmits) == len(whole.retransmits) > 0
    assert render_terminal([few]) == render_terminal([whole])


def test_terminal_summary_counts_partly_spurious_from_its_columns(analyses, tmp_path):
    """Retransmissions that also resent segments the receiver had (spurious_frames on a
    row not spurious as a whole): none of the corpus has them, so they are written in."""
    d = tmp_path / "partly"
    shutil.copytree(analyses("random_loss", events=False), d)
    r = pd.read_parquet(d / "retransmits.parquet")
    r.loc[~r["spurious"].fillna(False).astype(bool), "spurious_frames"] = 2
    r.to_parquet(d / "retransmits.parquet")
    said = render_terminal([load(d, terminal=True)])
    assert " more resent a lost segment together with " in said
    assert said == render_terminal([load(d)])
