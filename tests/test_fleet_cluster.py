"""`retranscope fleet analyze --scheduler` on a real Dask cluster on localhost: a `dask
scheduler` process and two `dask worker` processes started here (and ended by PID, even
on failure). One worker is killed while it holds tasks; every run still ends analyzed,
exactly once, with the rows `retranscope analyze` writes for it alone."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_fleet import CORPUS, assert_rows_equal_single_runs, fleet_argv, runs_table

from retranscope.fleet.simulate import build_fleet

DASK = str(Path(sys.executable).parent / "dask")
# Long tasks first in the list (about 0.3-1.4 s each here), small ones after.
RUNS = [
    "random_loss_notso",
    "random_loss_v6_notso",
    "reno_ts_off_loss_v6",
    "bbr_loss_rtt20",
    "blackhole_rto",
    "random_loss_rtt_v6_notso",
    "random_loss_rtt",
    "heavy_loss_rtt10",
    "mtu1000_loss",
    "reorder_rtt20_notso",
    "slow_server_tlp",
    "syn_drop",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A scheduler and workers as separate processes, each remembered by PID."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.address = f"tcp://127.0.0.1:{_free_port()}"
        self.procs: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.logs / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(
            [DASK, *args], stdout=log, stderr=log, start_new_session=True
        )

    def start(self, workers: int) -> None:
        port = self.address.rsplit(":", 1)[1]
        self._start(
            "scheduler", ["scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"]
        )
        for i in range(workers):
            self._start(
                f"w{i}",
                [
                    "worker",
                    self.address,
                    "--nthreads",
                    "1",
                    "--no-nanny",
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                    "--name",
                    f"w{i}",
                ],
            )

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.kill(name)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        c.start(workers=2)
        yield c
    finally:
        c.stop()


@pytest.mark.slow
def test_a_worker_killed_mid_run_loses_no_run(cluster, tmp_path):
    from distributed import Client

    runs = build_fleet([CORPUS / n for n in RUNS], tmp_path / "root", len(RUNS), days=2)
    dataset = tmp_path / "ds"
    with Client(cluster.address, timeout=30) as watch:
        watch.wait_for_workers(2, timeout=60)
        workers = {info["name"]: addr for addr, info in watch.scheduler_info()["workers"].items()}
        cmd = fleet_argv(
            "analyze", tmp_path / "root", "--out", dataset, "--scheduler", cluster.address
        )
        fleet = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(fleet.stderr), daemon=True)
        reader.start()
        try:
            held: list[str] = []
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and fleet.poll() is None:
                held = watch.processing(workers["w0"]).get(workers["w0"], [])
                if held and any(" ok " in ln for ln in lines):
                    break
                time.sleep(0.02)
            assert held and fleet.poll() is None, "w0 held no task mid-run: " + "".join(lines)
            cluster.kill("w0")
            fleet.wait(timeout=300)
        finally:
            if fleet.poll() is None:
                os.killpg(fleet.pid, signal.SIGKILL)
                fleet.wait()
        reader.join(timeout=10)
    assert fleet.returncode == 0, "".join(lines)
    table = runs_table(dataset)
    assert len(table) == len(RUNS) and table["run_id"].is_unique
    assert (table["status"] == "ok").all(), table[["path", "error"]]
    # the tasks w0 held when it died were run again, by w1
    lost = [k for k in held if k.startswith("retranscope-fleet-")]
    assert lost, held
    by_id = table.set_index("run_id")
    for key in lost:
        run_id = key.split("-")[2]
        assert by_id.loc[run_id, "worker"] == workers["w1"], key
    assert set(table["worker"]) <= set(workers.values())
    assert_rows_equal_single_runs(dataset, {"recorded": runs}, tmp_path / "single")
