"""`retranscope fleet analyze` and `fleet query` on a small fleet made from the corpus:
the fleet's rows are those `retranscope analyze` writes for each run alone; a bad run is a
row with its error and counts in the exit code; a second run with nothing new does nothing;
a killed `fleet analyze` loses nothing; the five ready questions answer what pandas
computes from the same rows."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from retranscope.cli import app
from retranscope.fleet.dataset import run_file
from retranscope.fleet.questions import QUESTIONS
from retranscope.fleet.simulate import build_fleet

CORPUS = Path(__file__).parent / "fixtures" / "corpus"
DOCS = Path(__file__).parent.parent / "docs" / "fleet.md"
SMALL = [
    "slow_server_tlp",
    "tail_drop_tlp",
    "syn_drop",
    "fast_nth",
    "blackhole_rto__any",
    "random_loss_v6",
    "reqresp_loss_both",
    "synack_drop",
]
HOST_FROM = "captures/{host}/*.pcap"
runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def fleet_argv(*args) -> list[str]:
    """`retranscope fleet ARGS` as a process of its own."""
    return [sys.executable, "-m", "retranscope", "fleet", *(str(a) for a in args)]


def analyze_in(base: Path, *args):
    """`retranscope fleet analyze BASE/root --out BASE/ds ARGS`, in this process."""
    return cli("fleet", "analyze", base / "root", "--out", base / "ds", *args)


def make_fleet(root: Path) -> dict:
    """8 recorded runs of 8 hosts over 2 days, a capture alone of host db-1, a corrupt
    capture of host db-2, and a copy of one run's directory elsewhere."""
    runs = build_fleet([CORPUS / n for n in SMALL], root, len(SMALL), days=2, peers=3)
    alone = root / "captures" / "db-1" / "monday.pcap"
    alone.parent.mkdir(parents=True)
    shutil.copy(CORPUS / "tail_drop_rtt50" / "capture.pcap", alone)
    bad = root / "captures" / "db-2" / "broken.pcap"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x00" * 100)
    copy = root / "zz-copies" / "again"  # after the original by path: the copy is the duplicate
    shutil.copytree(runs[0], copy)
    return {"recorded": runs, "alone": alone, "bad": bad, "copy": copy}


def single(run_dir: Path | None, capture: Path, out: Path) -> Path:
    """What `retranscope analyze` writes for the run alone."""
    args = ["analyze", "--pcap", capture, "--out", out, "-q"]
    if run_dir is not None:
        args += ["--events", run_dir]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    return out


def runs_table(dataset: Path) -> pd.DataFrame:
    return pq.read_table(dataset / "runs.parquet").to_pandas()


def assert_rows_equal_single_runs(dataset: Path, fleet: dict, scratch: Path) -> None:
    """Every ok run's files in the dataset hold exactly what `analyze` wrote for it, once."""
    runs = runs_table(dataset).set_index("path")
    inputs = {
        r.relative_to(r.parents[1]).as_posix(): (r, r / "capture.pcap") for r in fleet["recorded"]
    }
    if "alone" in fleet:
        inputs["captures/db-1/monday.pcap"] = (None, fleet["alone"])
    assert set(runs.index[runs["status"] == "ok"]) == set(inputs)
    for path, (run_dir, capture) in inputs.items():
        row = runs.loc[path]
        ref = single(run_dir, capture, scratch / path.replace("/", "_"))
        for table in ("retransmits", "flows"):
            got = pq.read_table(run_file(dataset, table, row["host"], row["date"], row["run_id"]))
            assert got.column("run_id").to_pylist() == [row["run_id"]] * got.num_rows
            want = pq.read_table(ref / f"{table}.parquet")
            got = got.drop_columns(["run_id"])
            assert got.schema.equals(want.schema, check_metadata=True), (path, table)
            assert got.to_pandas().equals(want.to_pandas()), (path, table)  # NaN == NaN here
            assert row[f"{table}_rows"] == want.num_rows
        assert json.loads(row["summary_json"]) == json.loads((ref / "summary.json").read_text())
    files = sorted(p for t in ("retransmits", "flows") for p in (dataset / t).rglob("*.parquet"))
    assert len(files) == 2 * len(inputs)  # nothing twice, nothing stale


@pytest.fixture(scope="module")
def fleet_ds(tmp_path_factory):
    """The small fleet analyzed once, on a LocalCluster of 2 worker processes."""
    base = tmp_path_factory.mktemp("fleet")
    fleet = make_fleet(base / "root")
    r = analyze_in(base, "--workers", 2, "--host-from", HOST_FROM)
    return base, fleet, r


def test_analyze_writes_the_single_run_rows(fleet_ds, tmp_path):
    base, fleet, r = fleet_ds
    assert r.exit_code == 1, r.output  # one bad capture
    assert "11 runs: 10 analyzed, 0 up to date, 1 failed, 1 copies" in r.output
    assert_rows_equal_single_runs(base / "ds", fleet, tmp_path)


def test_partitions_runs_and_errors(fleet_ds):
    base, fleet, _r = fleet_ds
    runs = runs_table(base / "ds").set_index("path")
    bad = runs.loc["captures/db-2/broken.pcap"]
    assert bad["status"] == "bad_input" and "broken.pcap" in bad["error"]
    assert bad["host"] == "db-2" and pd.isna(bad["traceback"])
    alone = runs.loc["captures/db-1/monday.pcap"]
    assert alone["host"] == "db-1" and alone["run_id"].startswith("cap-")
    assert not alone["has_events"] and alone["capture"] == "captures/db-1/monday.pcap"
    first = runs.loc[fleet["recorded"][0].relative_to(base / "root").as_posix()]
    assert list(first["duplicate_paths"]) == ["zz-copies/again"]  # same run_id: counted once
    assert "zz-copies/again" not in runs.index
    ok = runs[runs["status"] == "ok"]
    assert ok["analyzer_version"].nunique() == 1 and ok["worker"].str.startswith("tcp://").all()
    assert (ok["fingerprint"].str.len() == 32).all() and (ok["task_s"] > 0).all()
    assert set(ok["host"]) == {f"sim-{i:04d}" for i in range(len(SMALL))} | {"db-1"}
    # hive partitions: pyarrow reads host and date from the paths as columns
    rt = ds.dataset(base / "ds" / "retransmits", partitioning="hive").to_table().to_pandas()
    assert set(rt["host"]) <= set(ok["host"]) and rt["date"].nunique() == 2
    assert len(rt) == ok["retransmissions"].sum() == ok["retransmits_rows"].sum()
    fl = ds.dataset(base / "ds" / "flows", partitioning="hive").to_table().to_pandas()
    n_data = fl.groupby("run_id")["n_data"].sum()
    assert (ok.set_index("run_id")["data_segments"] == n_data.reindex(ok["run_id"])).all()
    kinds = rt["kind"].value_counts()
    for kind, n in kinds.items():
        assert ok[kind].sum() == n


def test_rerun_with_nothing_new_does_nothing_then_only_what_changed(fleet_ds, tmp_path):
    base, fleet, _r = fleet_ds
    before = runs_table(base / "ds")
    r = analyze_in(base, "--host-from", HOST_FROM)
    assert r.exit_code == 1  # the bad capture still counts: it is still there and still bad
    assert "0 analyzed, 10 up to date, 1 failed" in r.output
    assert runs_table(base / "ds").equals(before)
    # a capture rewritten (its mtime moves): that run alone is analyzed again
    changed = fleet["recorded"][3] / "capture.pcap"
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    r = analyze_in(base, "--host-from", HOST_FROM, "--workers", 1)
    assert "1 analyzed, 9 up to date" in r.output, r.output
    after = runs_table(base / "ds").set_index("run_id")
    b = before.set_index("run_id")
    redone = after.index[after["analyzed_at_ns"] != b["analyzed_at_ns"]]
    assert list(after.loc[redone, "path"]) == [changed.parent.relative_to(base / "root").as_posix()]
    assert_rows_equal_single_runs(base / "ds", fleet, tmp_path)


def test_force_and_a_run_that_moves_host(tmp_path):
    root = tmp_path / "root"
    runs = build_fleet([CORPUS / n for n in SMALL[:3]], root, 3)
    dataset = tmp_path / "ds"
    assert cli("fleet", "analyze", root, "--out", dataset, "--workers", "1").exit_code == 0
    meta = json.loads((runs[1] / "run.json").read_text())
    old = runs_table(dataset).set_index("run_id").loc[meta["run_id"]]
    meta["host"] = "renamed host/α"  # percent-encoded in the directory name, decoded back
    (runs[1] / "run.json").write_text(json.dumps(meta))
    r = cli("fleet", "analyze", root, "--out", dataset, "--workers", "1")
    assert "1 analyzed, 2 up to date" in r.output
    new = runs_table(dataset).set_index("run_id").loc[meta["run_id"]]
    assert new["host"] == "renamed host/α"
    assert not run_file(dataset, "retransmits", old["host"], old["date"], meta["run_id"]).exists()
    moved = run_file(dataset, "retransmits", "renamed host/α", new["date"], meta["run_id"])
    assert moved.exists() and "host=renamed%20host%2F%CE%B1" in str(moved)
    r = cli(
        "fleet",
        "query",
        dataset,
        "SELECT host, count(*) AS n FROM retransmits GROUP BY host ORDER BY host",
        "--out",
        tmp_path / "hosts.csv",
    )
    assert r.exit_code == 0, r.output
    counts = pd.read_csv(tmp_path / "hosts.csv").set_index("host")["n"]
    assert counts["renamed host/α"] == new["retransmits_rows"] and len(counts) == 3
    r = cli("fleet", "analyze", root, "--out", dataset, "--workers", "1", "--force")
    assert "3 analyzed, 0 up to date" in r.output


def test_questions_answer_what_pandas_finds(fleet_ds):
    base, _fleet, _r = fleet_ds
    dataset = base / "ds"
    rt = ds.dataset(dataset / "retransmits", partitioning="hive").to_table().to_pandas()
    real = ~rt["spurious"].fillna(False).astype(bool)
    for name in QUESTIONS:
        out = base / f"{name}.parquet"
        r = cli("fleet", "query", dataset, name, "--out", out)
        assert r.exit_code == 0, r.output
        got = pq.read_table(out).to_pandas()
        assert len(got) > 0, name
        if name == "worst_hosts":
            want = real.groupby(rt["host"]).sum()
            assert dict(zip(got["host"], got["real_loss"])) == {
                h: n for h, n in want.items() if h in set(got["host"])
            }
            assert list(got["real_loss"]) == sorted(got["real_loss"], reverse=True)
        elif name == "spurious_tlp_share":
            tlp = rt[rt["kind"] == "tlp"]
            want = tlp.groupby(["host", "date"])["spurious"].agg(["size", "sum"])
            assert int(got["tlp"].sum()) == len(tlp)
            assert int(got["spurious_tlp"].sum()) == int(want["sum"].sum())
        elif name == "top_peers":
            assert int(got["retransmissions"].sum()) == len(rt)
            assert set(got["peer"]) == set(rt["daddr"])
        elif name == "rto_chains":
            rto = rt[rt["kind"].isin(["rto", "syn", "synack"])]
            assert int(got["timeouts"].sum()) == len(rto)
            assert int(got["chains"].sum()) == int((rto["backoff"] == 1).sum())
        elif name == "counter_reconciliation":
            assert len(got) == len(SMALL)  # the recorded runs: the capture alone has no counters
            assert (got["unexplained_segments"] == 0).all()
            assert (got["kernel_timeouts"] == got["timeouts"]).all()


def test_query_prints_a_table_and_writes_csv(fleet_ds):
    base, _fleet, _r = fleet_ds
    r = cli(
        "fleet",
        "query",
        base / "ds",
        "SELECT host, count(*) AS n FROM runs GROUP BY host ORDER BY host",
    )
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[0].split() == ["host", "n"] and "db-1" in r.output and "(10 rows)" in lines[-1]
    out = base / "kinds.csv"
    r = cli(
        "fleet",
        "query",
        base / "ds",
        "SELECT kind, count(*) AS n FROM retransmits GROUP BY kind ORDER BY kind",
        "--out",
        out,
    )
    assert r.exit_code == 0 and out.read_text().startswith("kind,n\n")


def one_error_line(result) -> str:
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith("retranscope: error: ")
    return lines[0]


def test_bad_arguments_are_one_line(tmp_path, fleet_ds):
    base, _fleet, _r = fleet_ds
    r = cli("fleet", "analyze", tmp_path / "nope", "--out", tmp_path / "ds")
    assert r.exit_code == 2 and "nope" in one_error_line(r)
    r = cli("fleet", "analyze", tmp_path, "--out", tmp_path / "ds", "--host-from", "*.pcap")
    assert r.exit_code == 2 and "{host}" in one_error_line(r)
    r = cli("fleet", "query", tmp_path, "SELECT 1")
    assert r.exit_code == 2 and "runs.parquet" in one_error_line(r)
    r = cli("fleet", "query", base / "ds", "SELECT nothing FROM retransmits")
    assert r.exit_code == 2 and "nothing" in one_error_line(r)
    r = cli("fleet", "query", base / "ds", "SELECT 1", "--out", tmp_path / "x.json")
    assert r.exit_code == 2 and ".csv" in one_error_line(r)
    (tmp_path / "notruns").mkdir()
    pq.write_table(pa.table({"a": [1]}), tmp_path / "notruns" / "runs.parquet")
    r = cli("fleet", "analyze", base / "root", "--out", tmp_path / "notruns")
    assert r.exit_code == 2 and "not a retranscope fleet runs table" in one_error_line(r)


def test_docs_print_the_questions_as_they_run():
    text = DOCS.read_text()
    for name, (title, sql) in QUESTIONS.items():
        assert title in text and f"retranscope fleet query DATASET {name}" in text, name
        assert sql in text, f"docs/fleet.md has another text of {name}"


@pytest.mark.slow
def test_killed_fleet_analyze_loses_nothing(tmp_path):
    """SIGKILL `fleet analyze` (and its LocalCluster) mid-way: what was committed stays
    readable, and the next run finishes the rest; every run once, as analyzed alone."""
    fleet = make_fleet(tmp_path / "root")
    dataset = tmp_path / "ds"
    cmd = fleet_argv(
        "analyze", tmp_path / "root", "--out", dataset, "--workers", 1, "--host-from", HOST_FROM
    )
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        seen = 0
        for line in proc.stderr:
            seen += " ok " in line
            if seen == 4:
                break
        # Killed once a checkpoint (every 2 s, at a run's end) committed some runs: waited
        # for, not slept for (a fixed 2.5 s raced with it: on a loaded machine no run may
        # end in that time, and without a checkpoint nothing is committed).
        deadline = time.monotonic() + 120
        while not (dataset / "runs.parquet").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    committed = runs_table(dataset)
    assert 1 <= (committed["status"] == "ok").sum() < 10
    r = cli(
        "fleet",
        "analyze",
        tmp_path / "root",
        "--out",
        dataset,
        "--workers",
        "1",
        "--host-from",
        HOST_FROM,
    )
    assert r.exit_code == 1, r.output
    assert_rows_equal_single_runs(dataset, fleet, tmp_path / "single")


@pytest.mark.parametrize(
    ("pattern", "path", "host"),
    [
        ("{host}/*.pcap", "web-1/monday.pcap", "web-1"),
        ("{host}", "web-1/2026/01/monday.pcap", "web-1"),  # leading directories only
        ("**/host-{host}/*", "dc1/rack2/host-7/a.pcap", "7"),
        ("**/host-{host}/*", "host-8/a.pcap", "8"),
        ("caps/{host}-*.pcap", "caps/db-2-0105.pcap", "db"),  # {host} takes the least
        ("caps/{host}.pcap", "caps/db-2.pcap", "db-2"),
        ("{host}/*.pcap", "monday.pcap", None),
        ("caps/{host}/*.pcap", "other/web-1/a.pcap", None),
    ],
)
def test_host_from_pattern(pattern, path, host):
    from retranscope.fleet.discover import HostPattern

    assert HostPattern(pattern).host(path) == host


def test_partition_values_are_safe_directory_names():
    from retranscope.fleet.dataset import partition_value

    assert partition_value("web-1.dc_2") == "web-1.dc_2"
    assert partition_value("a/b c") == "a%2Fb%20c"
    assert partition_value("..") == "%2E."
    assert partition_value(".hidden") == "%2Ehidden"


def test_an_empty_root_makes_an_empty_dataset(tmp_path):
    (tmp_path / "root").mkdir()
    r = cli("fleet", "analyze", tmp_path / "root", "--out", tmp_path / "ds")
    assert r.exit_code == 0 and "0 runs: 0 analyzed" in r.output
    r = cli("fleet", "query", tmp_path / "ds", "SELECT count(*) AS n FROM runs")
    assert r.exit_code == 0 and "(1 rows)" in r.output
    r = cli("fleet", "query", tmp_path / "ds", "SELECT * FROM retransmits")
    assert r.exit_code == 2 and "no run in" in one_error_line(r)


def test_a_window_of_tasks_in_flight_analyzes_every_run(tmp_path, monkeypatch):
    """Tasks are submitted a window at a time as others complete (fleet/runner.py)."""
    from retranscope.fleet import engine, runner

    monkeypatch.setattr(runner, "WINDOW", 2)
    build_fleet([CORPUS / n for n in SMALL[:5]], tmp_path / "root", 5)
    lines: list[str] = []
    out = runner.analyze_fleet(
        tmp_path / "root",
        tmp_path / "ds",
        lambda: engine.local(1, processes=False),
        say=lines.append,
    )
    assert out.analyzed == 5 and not out.failed
    assert sum(" ok " in ln for ln in lines) == 5
    assert runs_table(tmp_path / "ds")["status"].eq("ok").sum() == 5


def test_a_recording_without_events_is_its_capture_alone(tmp_path):
    """The recorder writes no events file when it saw no retransmission; the analyzer
    refuses such a directory as --events, so the fleet analyzes the capture alone (what
    `retranscope analyze --pcap` writes) and says so, keeping run.json's host and counters."""
    from retranscope.fleet import engine, runner
    from retranscope.fleet.task import NO_EVENTS_WARNING

    (run,) = build_fleet([CORPUS / "tail_drop_tlp"], tmp_path / "root", 1)
    shutil.rmtree(run / "events")
    meta = json.loads((run / "run.json").read_text())
    out = runner.analyze_fleet(
        tmp_path / "root", tmp_path / "ds", lambda: engine.local(1, processes=False)
    )
    assert out.analyzed == 1 and not out.failed
    row = runs_table(tmp_path / "ds").iloc[0]
    assert row["host"] == meta["host"] and row["run_id"] == meta["run_id"]
    assert list(row["warnings"]) == [NO_EVENTS_WARNING] and not row["has_events"]
    assert (
        dict(row["counters_delta"])["Tcp:RetransSegs"] == meta["counters_delta"]["Tcp:RetransSegs"]
    )
    ref = single(None, run / "capture.pcap", tmp_path / "alone")
    got = pq.read_table(
        run_file(tmp_path / "ds", "retransmits", row["host"], row["date"], row["run_id"])
    ).drop_columns(["run_id"])
    assert got.to_pandas().equals(pq.read_table(ref / "retransmits.parquet").to_pandas())
