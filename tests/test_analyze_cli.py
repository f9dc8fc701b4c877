"""`retranscope analyze` and `report` driven through the CLI: exit codes, one-line errors,
outputs that pandas and pyarrow read as they are, and one test per corpus recording."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from browser import CHROMIUM, dump_dom, screenshot
from corpus import recordings, whole_sender_capture
from typer.testing import CliRunner

from retranscope.cli import app

CORPUS = Path(__file__).parent / "fixtures" / "corpus"
# Every event matched holds for captures taken whole on the recording host.
RECORDINGS = [p.name for p in recordings() if whole_sender_capture(p)]
runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, list(args))


def analyze_both(capture, events, out):
    """`retranscope analyze --pcap CAPTURE --events DIR --out OUT -q`."""
    return cli("analyze", "--pcap", str(capture), "--events", str(events), "--out", str(out), "-q")


def one_error_line(result) -> str:
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    assert lines[0].startswith("retranscope: error: ")
    return lines[0]


def test_missing_capture_is_one_line_exit_2(tmp_path):
    r = cli("analyze", "--pcap", str(tmp_path / "nope.pcap"), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2
    assert "nope.pcap" in one_error_line(r)


def test_not_a_capture(tmp_path):
    bad = tmp_path / "x.pcap"
    bad.write_bytes(b"this is not a capture at all, just text\n" * 3)
    r = cli("analyze", "--pcap", str(bad), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2
    assert "pcap" in one_error_line(r)
    assert not (tmp_path / "o" / "summary.json").exists()


def test_empty_capture(tmp_path):
    bad = tmp_path / "empty.pcap"
    bad.write_bytes(b"")
    r = cli("analyze", "--pcap", str(bad), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2
    one_error_line(r)


def test_unknown_link_type(tmp_path):
    import struct

    bad = tmp_path / "lt.pcap"
    bad.write_bytes(
        struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 147)
        + struct.pack("<IIII", 0, 0, 4, 4)
        + b"abcd"
    )
    r = cli("analyze", "--pcap", str(bad), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2
    assert "147" in one_error_line(r)


def test_truncated_capture_warns_and_keeps_packets_before(tmp_path):
    src = CORPUS / "random_loss_notso" / "capture.pcap"
    data = src.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) // 2 + 7])  # ends inside a record
    out = tmp_path / "o"
    r = cli("analyze", "--pcap", str(cut), "--out", str(out), "-q")
    assert r.exit_code == 0, r.output
    assert "retranscope: warning: capture ends inside record" in r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["capture"]["truncated"] is True
    assert summary["warnings"] and "records before it" in summary["warnings"][0]
    assert summary["capture"]["records"] > 1000


def test_events_of_another_schema_version(tmp_path):
    src = CORPUS / "fast_nth"
    dst = tmp_path / "rec"
    shutil.copytree(src, dst)
    f = next((dst / "events").glob("*.parquet"))
    t = pq.read_table(f)
    md = dict(t.schema.metadata)
    md[b"schema_version"] = b"999"
    pq.write_table(t.replace_schema_metadata(md), f)
    r = cli("analyze", "--events", str(dst), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2
    assert "version 999" in one_error_line(r)


def test_events_dir_without_events(tmp_path):
    r = cli("analyze", "--events", str(tmp_path), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2
    one_error_line(r)


def test_no_input_at_all(tmp_path):
    r = cli("analyze", "--out", str(tmp_path / "o"))
    assert r.exit_code == 2
    one_error_line(r)


def test_capture_and_events_from_different_runs_says_so(tmp_path):
    r = analyze_both(
        str(CORPUS / "fast_nth" / "capture.pcap"),
        str(CORPUS / "slow_server_tlp"),
        str(tmp_path / "o"),
    )
    assert r.exit_code == 0
    assert "no kernel event matched any frame" in r.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["match"]["events_matched"] == 0


@pytest.mark.parametrize("name", RECORDINGS)
def test_corpus_recording_analyzes_with_every_event_matched(tmp_path, name):
    d = CORPUS / name
    out = tmp_path / "o"
    r = analyze_both(d / "capture.pcap", d, out)
    assert r.exit_code == 0, r.output
    rt = pd.read_parquet(out / "retransmits.parquet")
    flows = pd.read_parquet(out / "flows.parquet")
    summary = json.loads((out / "summary.json").read_text())
    ev = rt[rt["source"] != "capture"]
    run = json.loads((d / "run.json").read_text())
    assert len(ev) == run["events_written"]
    unmatched = ev[ev["match"] != "matched"]
    if name.endswith("__late"):
        # The capture was cut: only events from before its start may lack frames.
        assert set(unmatched["match"]) <= {"before_capture"}, unmatched["match"].value_counts()
    else:
        assert unmatched.empty, unmatched[["kind", "match", "seq"]].to_string()
    assert summary["complete"] and summary["retransmissions"] == len(rt)
    assert flows["retransmissions"].sum() >= (rt["flow_id"] >= 0).sum() - len(unmatched)
    if not name.endswith("__late"):
        # Events take only resent frames (never an original that overlaps their range):
        # with the capture's every retransmitted frame, matched or not, accounted once.
        wire = cli("analyze", "--pcap", str(d / "capture.pcap"), "--out", str(tmp_path / "c"), "-q")
        assert wire.exit_code == 0, wire.output
        n_wire = len(pd.read_parquet(tmp_path / "c" / "retransmits.parquet"))
        m = summary["match"]
        assert m["frames_matched"] + m["frames_without_event"] == n_wire, (m, n_wire)
        assert int(ev["frames"].sum()) == m["frames_matched"]
    for col in (
        "ts_wall_ns",
        "saddr",
        "sport",
        "daddr",
        "dport",
        "seq",
        "end_seq",
        "kind",
        "spurious",
        "since_original_ns",
        "since_last_send_ns",
        "since_last_ack_ns",
    ):
        assert col in rt, col


def test_capture_only_and_events_only(tmp_path):
    d = CORPUS / "blackhole_rto"
    r = cli("analyze", "--pcap", str(d / "capture.pcap"), "--out", str(tmp_path / "c"), "-q")
    assert r.exit_code == 0, r.output
    rt = pd.read_parquet(tmp_path / "c" / "retransmits.parquet")
    assert (rt["source"] == "capture").all() and (rt["kind"] == rt["kind_pcap"]).all()
    r = cli("analyze", "--events", str(d), "--out", str(tmp_path / "e"), "-q")
    assert r.exit_code == 0, r.output
    rt = pd.read_parquet(tmp_path / "e" / "retransmits.parquet")
    assert (rt["source"] == "event").all()
    kernel = pd.read_parquet(d / "events")
    assert sorted(rt["kind"]) == sorted(kernel["reason"])
    assert {"rto", "rto_recovery"} <= set(rt["kind"])


def test_report_html_and_markdown(tmp_path):
    d = CORPUS / "slow_server_tlp"
    analyze_both(d / "capture.pcap", d, tmp_path / "a")
    r = cli("report", str(tmp_path / "a"), "--out", str(tmp_path / "rep.html"))
    assert r.exit_code == 0, r.output
    html = (tmp_path / "rep.html").read_text()
    md = (tmp_path / "rep.md").read_text()
    assert "tail loss probes" in html and "<svg" in html
    assert "| tlp |" in md
    assert "Probe gap" in html


def test_report_of_a_non_analysis(tmp_path):
    r = cli("report", str(tmp_path), "--out", str(tmp_path / "r.html"))
    assert r.exit_code == 2
    one_error_line(r)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (./setup.sh installs it)")
def test_report_renders_in_a_real_browser(tmp_path):
    d = CORPUS / "blackhole_rto"
    analyze_both(d / "capture.pcap", d, tmp_path / "a")
    cli("report", str(tmp_path / "a"), "--out", str(tmp_path / "rep.html"))
    page, prof = tmp_path / "rep.html", tmp_path / "profile"
    dom = dump_dom(page, prof)
    assert "retranscope report" in dom
    assert dom.count("<svg") >= 2 and "<circle" in dom
    shot = screenshot(page, tmp_path / "shot.png", prof, size="1000,1400")
    assert shot.exists() and shot.stat().st_size > 10_000


def test_module_entry_point():
    r = subprocess.run(
        [sys.executable, "-m", "retranscope", "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "analyze" in r.stdout


def test_frames_outside_the_recording_are_said_so(tmp_path):
    """Events recorded for a port filter: frames of other ports are 'filtered_out'."""
    d = CORPUS / "random_loss_notso"
    rec = tmp_path / "rec"
    shutil.copytree(d, rec)
    run = json.loads((rec / "run.json").read_text())
    run["filters"]["port"] = 1  # pretend the recorder only watched port 1
    (rec / "run.json").write_text(json.dumps(run))
    ev = pq.read_table(next((rec / "events").glob("*.parquet")))
    pq.write_table(ev.slice(0, 0), next((rec / "events").glob("*.parquet")))
    r = analyze_both(d / "capture.pcap", rec, tmp_path / "o")
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["match"]["frames_without_event_by"] == {
        "filtered_out": s["match"]["frames_without_event"]
    }
    assert s["match"]["frames_without_event"] > 0


@pytest.mark.parametrize("with_events", [False, True])
def test_outputs_read_as_they_are_by_polars_and_duckdb(tmp_path, with_events):
    """The promise in the README: pandas, DuckDB and Polars read the outputs as they are."""
    polars = pytest.importorskip("polars")
    duckdb = pytest.importorskip("duckdb")
    d = CORPUS / "reqresp_loss_both"
    out = tmp_path / "o"
    if with_events:
        r = analyze_both(d / "capture.pcap", d, out)
    else:
        r = cli("analyze", "--pcap", str(d / "capture.pcap"), "--out", str(out), "-q")
    assert r.exit_code == 0, r.output
    for name in ("retransmits", "flows"):
        path = out / f"{name}.parquet"
        pdf = pd.read_parquet(path)
        pl = polars.read_parquet(path)
        assert pl.height == len(pdf) > 0 and pl.columns == list(pdf.columns)
        n = duckdb.sql(f"SELECT count(*) FROM '{path}'").fetchall()[0][0]
        assert n == len(pdf)
    rt = polars.read_parquet(out / "retransmits.parquet")
    assert rt.schema["seq"] == polars.UInt32 and rt.schema["ts_wall_ns"] == polars.Int64
    kinds = duckdb.sql(
        f"SELECT kind, count(*) FROM '{out / 'retransmits.parquet'}' GROUP BY kind"
    ).fetchall()
    assert sum(c for _, c in kinds) == rt.height
    by_pandas = pd.read_parquet(out / "retransmits.parquet")["kind"].value_counts()
    assert dict(kinds) == by_pandas.to_dict()


def test_outputs_have_the_declared_schemas_whatever_the_inputs(tmp_path):
    """retransmits.parquet and flows.parquet have exactly the schemas of schemas/outputs.py
    (same columns, order and types for a capture, events or both), and every column carries
    its meaning as field metadata."""
    from retranscope.schemas.outputs import FLOWS_SCHEMA, RETRANSMITS_SCHEMA

    d = CORPUS / "random_loss_notso"
    runs = {
        "both": ("--pcap", str(d / "capture.pcap"), "--events", str(d)),
        "capture": ("--pcap", str(d / "capture.pcap")),
        "events": ("--events", str(d)),
    }
    for mode, args in runs.items():
        r = cli("analyze", *args, "--out", str(tmp_path / mode), "-q")
        assert r.exit_code == 0, r.output
        for name, declared in (("retransmits", RETRANSMITS_SCHEMA), ("flows", FLOWS_SCHEMA)):
            written = pq.read_schema(tmp_path / mode / f"{name}.parquet")
            assert written.names == declared.names, (mode, name)
            assert written.types == declared.types, (mode, name)
            for f in written:
                assert (f.metadata or {}).get(b"doc"), f"{name}.{f.name} has no doc ({mode})"


def _on_a_terminal(argv: list[str]) -> tuple[int, str]:
    """Run ``argv`` with its stderr (and stdin, stdout) on a pseudo-terminal: its exit
    code and everything it wrote there."""
    import os
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    said = bytearray()
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child is gone and the terminal closed
            break
        if not chunk:
            break
        said += chunk
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), said.decode(errors="replace")


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_progress_on_a_terminal_reads_then_classifies_to_the_end(tmp_path, jobs):
    """On a terminal, `analyze` shows where reading stands (bytes, packets, rate, ETA)
    and then, for a spilled capture, where the classification of its shards stands; the
    last state of each is always drawn, so a finished run ends each line at 100%."""
    pcap = CORPUS / "multi_flow_rtt50" / "capture.pcap"
    exe = str(Path(sys.executable).parent / "retranscope")
    argv = [exe, "analyze", "--pcap", str(pcap), "--out", str(tmp_path / "o"), "-q"]
    code, said = _on_a_terminal(argv + ["--spill", "-j", jobs])
    assert code == 0, said
    lines = [ln.strip() for ln in said.replace("\r", "\n").splitlines() if ln.strip()]
    reading = [ln for ln in lines if ln.startswith("reading capture")]
    classifying = [ln for ln in lines if ln.startswith("classifying")]
    assert reading and "100%" in reading[-1] and "packets" in reading[-1], said
    assert classifying and classifying[0].startswith("classifying [") and "0%" in classifying[0]
    n = json.loads((tmp_path / "o" / "summary.json").read_text())["capture"]["tcp_packets"]
    assert f"{n:,}/{n:,} packets" in classifying[-1] and "100%" in classifying[-1], said
    assert lines.index(reading[-1]) < lines.index(classifying[0])  # reading first
    # not a terminal: no progress at all
    piped = subprocess.run(
        argv + ["--spill"], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    assert piped.returncode == 0 and "reading capture" not in piped.stderr
    assert "classifying" not in piped.stderr
