"""Coverage-guided fuzzing of the capture reader, and through it of the whole analysis.

    .venv/bin/python bench/fuzz_capture.py --seconds 600                # by hand, longer
    .venv/bin/python bench/fuzz_capture.py --target reader --seconds 35  # as CI runs it

atheris (libFuzzer for Python) mutates capture files, guided by the coverage of the
reader's code (analyze/capture/) and of the analysis (analyze/). Each input goes through
``read_capture`` (its first byte picks the block size, so that records cut by block ends
are exercised too); an input that decodes TCP segments then goes through
``run_analysis`` as `retranscope analyze` runs it, every ANALYSIS_EVERY-th time (the
analysis writes Parquet: slower than the reader). Any exception that is not a
RetranscopeError is a crash, any input taking longer than --timeout seconds a hang:
libFuzzer stops there and writes the input to --artifacts (a crash-* or timeout-* file).

The seed corpus: every file of tests/fixtures/reader/, the first 64 kB of a few lab
recordings, and gzip/zstd copies of some of them (the decompressing path).
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import sys
import tempfile
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "reader"
CORPUS = ROOT / "tests" / "fixtures" / "corpus"
MAX_LEN = 1 << 16
BLOCK_BYTES = (64, 333, 4096, 1 << 20)  # what the first byte of an input picks
ANALYSIS_EVERY = 8

with atheris.instrument_imports(include=["retranscope.analyze"]):
    from retranscope.analyze.capture import read_capture
    from retranscope.analyze.run import run_analysis

from retranscope.errors import RetranscopeError  # noqa: E402

_state = {"inputs": 0, "decoded": 0, "analyzed": 0, "out": None, "analysis": True}


def test_one_input(data: bytes) -> None:
    _state["inputs"] += 1
    if not data:
        return
    block = BLOCK_BYTES[data[0] % len(BLOCK_BYTES)]
    try:
        cap = read_capture(io.BytesIO(data[1:]), chunk_bytes=block, jobs=1)
    except RetranscopeError:
        return
    if cap.meta.tcp_packets == 0:
        return
    _state["decoded"] += 1
    if not _state["analysis"] or _state["decoded"] % ANALYSIS_EVERY:
        return
    out = Path(_state["out"])
    path = out / "input.pcap"
    path.write_bytes(data[1:])
    try:
        run_analysis(path, None, out / "analysis")
    except RetranscopeError:
        return
    _state["analyzed"] += 1


def seed_corpus(directory: Path) -> int:
    """Write the seeds (each with a first byte that picks a small block size)."""
    import zstandard

    directory.mkdir(parents=True, exist_ok=True)
    seeds = {p.name: p.read_bytes() for p in sorted(FIXTURES.iterdir()) if p.is_file()}
    for rec in sorted(CORPUS.glob("*/capture.pcap"))[:6]:
        seeds[f"{rec.parent.name}.pcap"] = rec.read_bytes()[: MAX_LEN - 1]
    for name in ("eth_v4_v6.pcap", "pcapng_two_ifaces.pcapng", "encap_gre.pcap"):
        data = seeds[name]
        seeds[name + ".gz"] = gzip.compress(data, mtime=0)
        seeds[name + ".zst"] = zstandard.ZstdCompressor(write_checksum=True).compress(data)
    for i, (name, data) in enumerate(sorted(seeds.items())):
        (directory / name).write_bytes(bytes([i % len(BLOCK_BYTES)]) + data[: MAX_LEN - 1])
    return len(seeds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument(
        "--target",
        choices=("reader", "analysis"),
        default="analysis",
        help="the reader alone, or the reader and then the whole analysis",
    )
    ap.add_argument("--timeout", type=int, default=10, help="seconds an input may take")
    ap.add_argument("--corpus", type=Path, help="keep the evolving corpus here")
    ap.add_argument("--artifacts", type=Path, default=Path("fuzz-artifacts"))
    ap.add_argument(
        "--workdir",
        type=Path,
        help="scratch files here (default: a temporary directory, removed at the end)",
    )
    ap.add_argument("--quiet", action="store_true", help="libFuzzer's own output off")
    args = ap.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="retranscope-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    _state["out"] = str(work)
    _state["analysis"] = args.target == "analysis"
    corpus = args.corpus or work / "corpus"
    n_seeds = seed_corpus(corpus)
    args.artifacts.mkdir(parents=True, exist_ok=True)
    libfuzzer = [
        sys.argv[0],
        str(corpus),
        f"-max_total_time={args.seconds}",
        f"-timeout={args.timeout}",
        f"-max_len={MAX_LEN}",
        "-rss_limit_mb=3072",
        f"-artifact_prefix={args.artifacts}/",
        "-print_final_stats=1",
    ]
    if args.quiet:
        libfuzzer.append("-close_fd_mask=1")
    what = "the reader and the analysis" if _state["analysis"] else "the reader"
    print(f"fuzzing {what} for {args.seconds} s from {n_seeds} seeds", flush=True)
    if args.workdir is None:
        # libFuzzer ends the process with _exit (no atexit, no finally): a child of this
        # process removes the scratch directory once this process is gone
        _remove_when_done(work)
    atheris.Setup(libfuzzer, test_one_input)
    # libFuzzer ends the process: at the time limit (printing "Done N runs"), a crash or
    # a hang (writing the input to --artifacts)
    atheris.Fuzz()
    return 0


def _remove_when_done(work: Path) -> None:
    import subprocess

    subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, shutil, sys, time\n"
            "while os.getppid() == int(sys.argv[1]): time.sleep(0.5)\n"
            "shutil.rmtree(sys.argv[2], ignore_errors=True)",
            str(os.getpid()),
            str(work),
        ],
        start_new_session=True,
    )


if __name__ == "__main__":
    sys.exit(main())
