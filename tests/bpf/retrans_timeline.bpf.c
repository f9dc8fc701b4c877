/* An independent reference for the recorder's tests: how many retransmissions the kernel
 * made in each millisecond (CLOCK_MONOTONIC, the clock of the events' ts_mono_ns), counted
 * in the kernel with nothing to lose (per-CPU counters, no buffer). Only segments sent to
 * TIMELINE_PORT from the network namespace TIMELINE_NETNS (other labs on the machine use
 * the same port). Bucket k counts [k ms, k+1 ms) modulo 65536 ms (65 s of history).
 * RTS_OFF_SK_NET / RTS_OFF_NET_INUM: offsets from the running kernel's BTF. */
#include <uapi/linux/ptrace.h>

#define TIMELINE_BUCKETS 65536

BPF_PERCPU_ARRAY(per_ms, u64, TIMELINE_BUCKETS);

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
	if (args->dport != TIMELINE_PORT)
		return 0;
	const char *net = 0;
	u32 inum = 0;
	bpf_probe_read_kernel(&net, sizeof(net), (const char *)args->skaddr + RTS_OFF_SK_NET);
	bpf_probe_read_kernel(&inum, sizeof(inum), net + RTS_OFF_NET_INUM);
	if (inum != TIMELINE_NETNS)
		return 0;
	int k = (bpf_ktime_get_ns() / 1000000) & (TIMELINE_BUCKETS - 1);
	u64 *v = per_ms.lookup(&k);
	if (v)
		(*v)++;
	return 0;
}
