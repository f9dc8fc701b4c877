"""`record --metrics`, scraped by a real Prometheus server (Debian's `prometheus`),
started here on localhost: the retransmission counts it stored, by reason, family and
remote address, are those of the events the recorder wrote; and so are the counts of
events written, lost and unreported."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

PORT4, PORT6 = 5001, 5002


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> bytes:
    return urllib.request.urlopen(url, timeout=5).read()


class Prometheus:
    """A throw-away Prometheus scraping one target every second."""

    def __init__(self, workdir: Path, target: str):
        exe = shutil.which("prometheus")
        if exe is None:
            pytest.skip("needs Debian's prometheus package (./setup.sh installs it)")
        self.port = free_port()
        cfg = workdir / "prometheus.yml"
        cfg.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: retranscope\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        self.proc = subprocess.Popen(
            [
                exe,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if get(f"{self.url}/-/ready"):
                    return
            except OSError:
                time.sleep(0.3)
        self.close()
        raise RuntimeError("prometheus did not become ready")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def query(self, expr: str) -> list[dict]:
        body = get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        out = json.loads(body)
        assert out["status"] == "success", out
        return out["data"]["result"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def own_scrape(addr: str) -> dict[str, float]:
    text = get(f"http://{addr}/metrics").decode()
    return {
        ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1])
        for ln in text.splitlines()
        if ln.startswith("retranscope_")
    }


def test_prometheus_scrapes_what_the_files_hold(tmp_path):
    from retranscope.analyze.events import read_events
    from retranscope.lab.netns import Lab
    from retranscope.lab.recorded import start_bulk, start_server

    metrics = f"127.0.0.1:{free_port()}"
    out = tmp_path / "rec"
    prom = Prometheus(tmp_path, metrics)
    rec = None
    try:
        with Lab(ipv6=True, tso=False) as lab:
            ino = os.stat(f"/run/netns/{lab.sender_ns}").st_ino
            # Loss on the clients' data only: once a transfer ends (the server has read
            # it all and closed), nothing is left to retransmit and the counts stop.
            lab.add_rule(f"tcp dport {PORT4} ct original packets {{ 8, 40, 41, 42, 90 }} drop")
            lab.add_rule(f"tcp dport {PORT6} numgen random mod 100 < 4 drop")
            rec = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "retranscope",
                    "record",
                    "--out",
                    str(out),
                    "--quiet",
                    "--netns",
                    str(ino),
                    "--metrics",
                    metrics,
                    "--metrics-remote",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert rec.stderr is not None
            for line in rec.stderr:
                if "retranscope: recording" in line:
                    break
            for fam, port in ((4, PORT4), (6, PORT6)):
                start_server(
                    lab, "--port", port, "--family", fam, "--mode", "sink", "--timeout-s", "60"
                )
            clients = [
                start_bulk(lab, port, 2_000_000, family=fam, conns=3, timeout_s=40)
                for fam, port in ((4, PORT4), (6, PORT6))
            ]
            for c in clients:
                assert c.wait(timeout=60) == 0
            # Stable: the recorder's own numbers no longer move...
            before, stable_at = own_scrape(metrics), None
            while stable_at is None:
                time.sleep(2.0)
                now = own_scrape(metrics)
                stable_at = time.time() if now == before else None
                before = now
            # ...and Prometheus has scraped since.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                up = prom.query("up")
                if up and float(up[0]["value"][0]) > stable_at + 1 and up[0]["value"][1] == "1":
                    break
                time.sleep(0.5)
            else:
                pytest.fail(f"prometheus never scraped the recorder: {prom.query('up')}")
            series = prom.query("retranscope_retransmissions_total")
            scalars = {
                name: prom.query(name)
                for name in (
                    "retranscope_events_written_total",
                    "retranscope_events_lost_total",
                    "retranscope_unreported_segments_total",
                )
            }
            rec.send_signal(signal.SIGINT)
            assert rec.wait(timeout=60) == 0
    finally:
        if rec is not None and rec.poll() is None:
            rec.kill()
            rec.wait()
        prom.close()

    ev = read_events(out).frame()
    meta = json.loads((out / "run.json").read_text())
    assert len(ev) > 20 and set(ev["family"]) == {4, 6}
    expected = ev.groupby(["reason", "family", "daddr"]).size().to_dict()
    got = {
        (s["metric"]["reason"], int(s["metric"]["family"]), s["metric"]["remote"]): int(
            float(s["value"][1])
        )
        for s in series
    }
    print(f"\n{len(ev)} events; Prometheus: {got}")
    assert got == expected
    assert all(s["metric"]["job"] == "retranscope" for s in series)

    def scalar(name: str) -> int:
        (one,) = scalars[name]
        return int(float(one["value"][1]))

    assert scalar("retranscope_events_written_total") == len(ev) == meta["events_written"]
    assert scalar("retranscope_events_lost_total") == meta["events_lost_in_kernel"]
    assert (
        scalar("retranscope_unreported_segments_total")
        == meta["accounting"]["unreported_between_events"]
    )
