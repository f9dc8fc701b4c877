"""Every compile-time variant of bpf/retranscope.bpf.c compiles and passes the kernel's
verifier, including those this machine cannot attach: the kprobe fallback for kernels
without tcp:tcp_retransmit_skb, -l's kprobe on tcp_send_loss_probe (no CONFIG_KPROBES
here), the perf buffer, the cong-state map for kernels without a usable BTF offset, the
socket-gone records (tcp:tcp_destroy_sock) with either buffer."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.root

VARIANTS = {
    "kprobe_fallback_ringbuf": (
        ["-DRTS_KPROBE_RETRANSMIT", "-DRTS_KPROBE_TLP", "-DRTS_USE_RINGBUF"],
        [("rts_kprobe_retransmit", "KPROBE"), ("rts_kprobe_tlp", "KPROBE")],
    ),
    "kprobe_fallback_perf": (["-DRTS_KPROBE_RETRANSMIT"], [("rts_kprobe_retransmit", "KPROBE")]),
    "tracepoints_perf_filters_count_camap": (
        [
            "-DRTS_HAVE_TP",
            "-DRTS_TP_HAS_ERR",
            "-DRTS_CA_FROM_MAP",
            "-DRTS_COUNT",
            "-DRTS_FILTER_PORT=5001",
            "-DRTS_FILTER_FAMILY=10",
            "-DRTS_FILTER_NETNS=7",
            "-DRTS_SOCK_GONE",
        ],
        [
            ("tracepoint__tcp__tcp_retransmit_skb", "TRACEPOINT"),
            ("tracepoint__tcp__tcp_retransmit_synack", "TRACEPOINT"),
            ("tracepoint__tcp__tcp_cong_state_set", "TRACEPOINT"),
            ("tracepoint__tcp__tcp_destroy_sock", "TRACEPOINT"),
        ],
    ),
    "tracepoints_ringbuf_no_offsets": (
        ["-DRTS_HAVE_TP", "-DRTS_USE_RINGBUF", "NO_OFFSETS"],
        [("tracepoint__tcp__tcp_retransmit_skb", "TRACEPOINT")],
    ),
    # What the recorder loads here: ring buffer, socket-gone records, no cong-state map.
    "tracepoints_ringbuf_sock_gone": (
        ["-DRTS_HAVE_TP", "-DRTS_TP_HAS_ERR", "-DRTS_USE_RINGBUF", "-DRTS_SOCK_GONE"],
        [
            ("tracepoint__tcp__tcp_retransmit_skb", "TRACEPOINT"),
            ("tracepoint__tcp__tcp_destroy_sock", "TRACEPOINT"),
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_passes_the_verifier(name):
    from bcc import BPF

    from retranscope.bpf import BPF_DIR
    from retranscope.record.btf import BTF, kernel_offsets
    from retranscope.record.probe import ensure_tracefs

    ensure_tracefs()
    flags, functions = VARIANTS[name]
    if "NO_OFFSETS" in flags:
        # A kernel without BTF: every offset unknown, the program must still load.
        values, _ = kernel_offsets(None)
        flags = [f for f in flags if f != "NO_OFFSETS"]
    else:
        values, _ = kernel_offsets(BTF.load())
    cflags = [f"-I{BPF_DIR}", "-Wno-macro-redefined", *flags]
    cflags += [f"-D{k}={v}" for k, v in values.items()]
    b = BPF(src_file=str(BPF_DIR / "retranscope.bpf.c").encode(), cflags=cflags)
    try:
        for fn, typ in functions:
            assert b.load_func(fn.encode(), getattr(BPF, typ)).fd >= 0
    finally:
        b.cleanup()
