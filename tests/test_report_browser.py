"""The report in a real browser: Debian's headless Chromium, driven by Playwright (no
browser download: ``executable_path``). The time-sequence graphs hold one mark per
retransmission of the flow (counted from retransmits.parquet), hovering one shows why it
happened, zoom and pan work, the page fetches nothing, and the tables read without
JavaScript.

Screenshots go to the test's temporary directory; with RETRANSCOPE_DOC_IMAGES=DIR they are
also written there (how docs/images/ is made: see docs/report.md).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from browser import CHROMIUM, CHROMIUM_ARGS
from test_report import Analyses, cli, expected_rows, graph_json

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright not installed (pip install -e '.[dev]')"
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (./setup.sh installs it)"
)

DOC_IMAGES = os.environ.get("RETRANSCOPE_DOC_IMAGES")


@pytest.fixture(scope="module")
def analyses(tmp_path_factory) -> Analyses:
    return Analyses(tmp_path_factory.mktemp("analyses"))


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module (Playwright gives it a fresh temporary profile, its
    --user-data-dir); each test opens its own context."""
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A report opened in a fresh tab, every request it makes recorded (and refused if it
    is not the report file itself)."""

    def __init__(self, browser, html: Path):
        self.url = html.resolve().as_uri()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.context = browser.new_context(viewport={"width": 1100, "height": 1300})
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.route("**/*", self._route)
        self.page.goto(self.url)
        self.page.wait_for_selector("html[data-tsg-ready]", state="attached")

    def _route(self, route):
        self.requests.append(route.request.url)
        if route.request.url == self.url:
            route.continue_()
        else:
            route.abort()

    def marks(self, figure: int) -> int:
        return self.page.eval_on_selector_all(
            "figure.tsg", f"f => f[{figure}].querySelectorAll('path.rtx').length"
        )

    def drawn(self) -> None:
        """Until the graph has redrawn after an input: its handlers change the view at
        once and draw in the next animation frame (tsg.js schedule), so two frames from
        now the drawing is done. A fixed sleep raced with a busy machine's frames."""
        self.page.evaluate(
            "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"
        )

    def close(self):
        self.context.close()


def shot(locator, tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    locator.screenshot(path=str(out))
    return shot_copy(out)


def shot_copy(out: Path) -> Path:
    """A screenshot taken: not blank, and copied to RETRANSCOPE_DOC_IMAGES if it is one of
    the README's images."""
    assert out.stat().st_size > 5_000
    if DOC_IMAGES and out.name.startswith("report-"):
        Path(DOC_IMAGES).mkdir(parents=True, exist_ok=True)
        shutil.copy(out, Path(DOC_IMAGES) / out.name)
    return out


def report(analyses_dirs: list[Path], out: Path, *extra: str) -> Path:
    r = cli("report", *analyses_dirs, "--out", out, *extra)
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.parametrize(
    "name",
    [
        "slow_server_tlp",
        "reqresp_loss_both",
        "blackhole_rto",
        "syn_drop_twice",
        "random_loss_v6",
        "heavy_loss_rtt10",
    ],
)
def test_graph_marks_are_the_flows_retransmissions(browser, analyses, tmp_path, name):
    d = analyses(name)
    html = report([d], tmp_path / "r.html")
    figures = graph_json(html.read_text())
    assert figures
    p = Page(browser, html)
    try:
        assert p.errors == []
        assert p.page.get_attribute("html", "data-tsg-ready") == str(len(figures))
        for i, data in enumerate(figures):
            flow_id = int(data["title"].rsplit("(flow ", 1)[1].rstrip(")"))
            rows = expected_rows(d, flow_id)
            assert p.marks(i) == len(rows) > 0
            hollow = p.page.eval_on_selector_all(
                "figure.tsg", f"f => f[{i}].querySelectorAll('path.rtx.spurious').length"
            )
            assert hollow == int(rows["spurious"].fillna(False).astype(bool).sum())
            for kind, n in rows["kind"].value_counts().items():
                got = p.page.eval_on_selector_all(
                    "figure.tsg", f"f => f[{i}].querySelectorAll('path.rtx.k-{kind}').length"
                )
                assert got == n, kind
        shot(p.page.locator("figure.tsg").first, tmp_path, f"{name}.png")
        assert p.requests == [p.url]
    finally:
        p.close()


def test_hover_shows_the_cause(browser, analyses, tmp_path):
    """The hover says the analyzer's cause (code and sentence, retransmits.parquet cause /
    cause_text); the PTO deadline of the probe is in it too."""
    d = analyses("slow_server_tlp")
    r = pd.read_parquet(d / "retransmits.parquet")
    html = report([d], tmp_path / "r.html")
    p = Page(browser, html)
    try:
        tip = p.page.locator("figure.tsg .tsg-tip")
        assert tip.is_hidden()
        first = r.sort_values("ts_wall_ns").iloc[1]
        p.page.locator("figure.tsg path.rtx").nth(1).hover()
        assert tip.is_visible()
        text = tip.inner_text()
        assert first["cause_text"] in text and "a delayed ACK longer than the PTO" in text
        assert "PTO armed at" in text and "tlp (tlp_delayed_ack), spurious" in text
        shot(p.page.locator("figure.tsg").first, tmp_path, "tsg-hover-cause.png")
        p.page.mouse.move(5, 5)
        assert tip.is_hidden()
    finally:
        p.close()


def test_zoom_pan_and_reset(browser, analyses, tmp_path):
    html = report([analyses("reqresp_loss_both")], tmp_path / "r.html", "--graphs", "1")
    p = Page(browser, html)
    try:
        svg = p.page.locator("figure.tsg svg.tsg-plot").first

        def ticks():
            return svg.locator("g.axes text").all_inner_texts()

        def view():
            return p.page.evaluate("() => document.querySelector('figure.tsg').tsg.view")

        full, before = view(), ticks()
        svg.scroll_into_view_if_needed()
        box = svg.bounding_box()
        p.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        p.page.mouse.wheel(0, -600)  # zoom in
        p.drawn()
        zoomed = view()
        assert zoomed[1] - zoomed[0] < (full[1] - full[0]) / 2
        assert zoomed[3] - zoomed[2] < (full[3] - full[2]) / 2
        assert ticks() != before
        n = p.marks(0)
        p.page.mouse.down()
        p.page.mouse.move(box["x"] + box["width"] / 2 - 200, box["y"] + box["height"] / 2)
        p.page.mouse.up()
        p.drawn()
        panned = view()
        assert panned[0] > zoomed[0] and panned[1] - panned[0] == pytest.approx(
            zoomed[1] - zoomed[0]
        )
        assert p.marks(0) == n  # retransmissions are never culled or sampled
        p.page.locator("figure.tsg .tsg-reset").first.click()
        p.drawn()
        assert view() == full and ticks() == before
    finally:
        p.close()


def test_the_page_fetches_nothing(browser, analyses, tmp_path):
    """Every request the page makes is recorded (and any other than the file refused):
    the file alone loads; nothing in it points to the network either."""
    html = report([analyses("random_loss_v6"), analyses("slow_server_tlp")], tmp_path / "r.html")
    text = html.read_text()
    for needle in ("http://", "https://", "src=", "@import", "url(http"):
        assert needle not in text.replace("http://www.w3.org/2000/svg", ""), needle
    p = Page(browser, html)
    try:
        p.page.locator("figure.tsg path.rtx").first.hover(force=True)
        p.page.mouse.wheel(0, -300)
        p.drawn()
        assert p.requests == [p.url] and p.errors == []
    finally:
        p.close()


def test_tables_read_without_javascript(browser, analyses, tmp_path):
    d = analyses("reqresp_loss_both")
    html = report([d], tmp_path / "r.html")
    r = pd.read_parquet(d / "retransmits.parquet")
    probes = int(
        (
            (r["kind"] == "tlp") & r["since_last_send_ns"].notna() & r["expected_pto_ns"].notna()
        ).sum()
    )
    ctx = browser.new_context(java_script_enabled=False)
    try:
        page = ctx.new_page()
        page.goto(html.resolve().as_uri())
        assert page.get_attribute("html", "data-tsg-ready") is None
        body = page.inner_text("body")
        assert "This graph is drawn by the page's script" in body
        assert "Flows that suffered most" in body and "Why each retransmission happened" in body
        assert page.locator("table").count() >= 5
        assert page.locator("svg.probegap circle.probe").count() == probes > 0  # static SVG
    finally:
        ctx.close()


def test_screenshots_of_the_main_views(browser, analyses, tmp_path):
    """Overview, a time-sequence graph zoomed in on a probe and hovered, the causes (the
    why-table), the probe-gap plot and the compare view (the README's images)."""
    one = report([analyses("reqresp_loss_both")], tmp_path / "one.html")
    p = Page(browser, one)
    try:
        p.page.set_viewport_size({"width": 1100, "height": 1250})
        shot(p.page, tmp_path, "report-overview.png")
        fig = p.page.locator("figure.tsg").first
        fig.scroll_into_view_if_needed()
        mark = fig.locator("path.rtx.k-tlp").nth(2)
        box = mark.bounding_box()
        p.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] - 4)
        for _ in range(2):  # zoom in around the probe: its PTO deadline and the ACKs
            p.page.mouse.wheel(0, -600)
            p.drawn()
        mark.hover(force=True)
        assert fig.locator(".tsg-tip").is_visible()
        tip = fig.locator(".tsg-tip").inner_text()
        assert tip.startswith("tlp") and "TLP " in tip and "PTO = 2·SRTT" in tip
        shot(fig, tmp_path, "report-tsg-hover.png")
    finally:
        p.close()
    why = report([analyses("reqresp_loss_both_v6")], tmp_path / "why.html", "--graphs", "0")
    p = Page(browser, why)
    try:
        sec = p.page.locator("div.why-section")
        sec.locator("details").evaluate("d => d.open = true")
        assert sec.locator("table.causes tr").count() >= 5  # header + the causes
        box = sec.bounding_box()
        p.page.set_viewport_size({"width": 1100, "height": int(box["height"]) + 50})
        box = sec.bounding_box()
        out = tmp_path / "report-why.png"
        p.page.screenshot(path=str(out), clip={**box, "height": min(box["height"], 1150)})
        shot_copy(out)
    finally:
        p.close()
    probes = report([analyses("slow_server_tlp")], tmp_path / "tlp.html")
    p = Page(browser, probes)
    try:
        plot = p.page.locator("svg.probegap").first
        assert plot.locator("circle.probe").count() == 4
        shot(plot, tmp_path, "report-probe-gap.png")
    finally:
        p.close()
    cmp = report(
        [analyses("slow_server_tlp"), analyses("reqresp_loss_both")], tmp_path / "cmp.html"
    )
    p = Page(browser, cmp)
    try:
        section = p.page.locator("section.compare")
        assert section.locator("tr.changed").count() >= 1
        shot(section, tmp_path, "report-compare.png")
    finally:
        p.close()
