"""`retranscope fleet report`: a self-contained page (no request leaves the file), checked
in headless Chromium, with a verdict per host and every run linked to its own report; a
run's report made from the dataset is the one `retranscope report` makes of the run alone."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from browser import CHROMIUM, dump_dom, screenshot
from test_fleet import cli, fleet_ds, runs_table, single  # noqa: F401 (fixture)

from retranscope.report.fleet import VERDICTS
from retranscope.report.render import load, write_report


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.refs += [v for k, v in attrs if k in ("href", "src", "srcset", "action") and v]


@pytest.fixture(scope="module")
def report(fleet_ds):  # noqa: F811
    base, fleet, _r = fleet_ds
    own = fleet["recorded"][1] / "report.html"  # a run that has its own report already
    own.write_text("<html><body>its own report</body></html>")
    out = base / "site" / "fleet.html"
    r = cli("fleet", "report", base / "ds", "--out", out)
    return base, fleet, out, r


def test_report_links_every_run_to_its_report(report):
    base, fleet, out, r = report
    assert r.exit_code == 0, r.output
    assert "9 run reports linked, 8 made" in r.output
    html = out.read_text()
    refs = _Refs()
    refs.feed(html)
    links = [x for x in refs.refs if x.endswith(".html")]
    assert len(links) == 9
    for link in links:
        assert (out.parent / link).resolve().is_file(), link
    own = fleet["recorded"][1] / "report.html"
    assert any((out.parent / x).resolve() == own.resolve() for x in links)
    again = cli("fleet", "report", base / "ds", "--out", out)
    assert "9 run reports linked, 0 made" in again.output


def test_report_is_self_contained(report):
    _base, _fleet, out, _r = report
    html = out.read_text()
    refs = _Refs()
    refs.feed(html)
    assert not {"script", "link", "img", "iframe", "object"} & refs.tags
    assert all(not re.match(r"^(https?:)?//", x) for x in refs.refs), refs.refs
    assert "url(" not in html and "@import" not in html


def test_report_has_hosts_verdicts_failures_and_charts(report):
    base, _fleet, out, _r = report
    html = out.read_text()
    runs = runs_table(base / "ds")
    for host in runs["host"]:
        assert f"<td>{host}</td>" in html
    verdicts = re.findall(r"<td>(quiet|probe noise|mostly probe noise|real loss)</td>", html)
    assert set(verdicts) <= set(VERDICTS) and len(verdicts) == runs["host"].nunique()
    assert "broken.pcap" in html and "bad_input" in html  # the run that failed, with why
    assert "same run_id" in html  # the copy, said
    assert html.count("<svg") >= 2 and "Retransmissions by kind" in html


def test_run_report_made_from_the_dataset_is_the_single_run_report(report, tmp_path):
    base, fleet, out, _r = report
    runs = runs_table(base / "ds").set_index("path")
    run_dir = fleet["recorded"][4]
    row = runs.loc[run_dir.relative_to(base / "root").as_posix()]
    made = base / "ds" / "reports" / row["run_id"] / "report.html"
    ref = single(run_dir, run_dir / "capture.pcap", tmp_path / "alone")
    name = f"{row['host']} {row['date']} {row.name}"
    # What `retranscope report` writes for that run alone (time-sequence graphs included:
    # both find the run's capture where its summary.json says).
    alone = write_report([load(ref, name=name)], tmp_path / "alone.html")[0]
    assert made.read_text() == alone.read_text()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (./setup.sh installs it)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    _base, _fleet, out, _r = report
    prof = tmp_path / "profile"
    dom = dump_dom(out, prof)
    assert "retranscope fleet report" in dom
    assert dom.count("<svg") >= 2 and "<rect" in dom
    shot = screenshot(out, tmp_path / "fleet.png", prof)
    assert shot.exists() and shot.stat().st_size > 20_000
    first_link = re.search(r"href='([^']+\.html)'", out.read_text()).group(1)
    page = (out.parent / first_link).resolve()
    run_dom = dump_dom(page, prof)
    assert "retranscope report" in run_dom or "its own report" in run_dom
