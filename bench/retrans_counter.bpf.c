/* The benchmark's reference: how many retransmits the kernel made, counted in the kernel
 * with nothing to lose (one per-CPU counter, no buffer). Only the storm's senders:
 * segments *to* the server's port (the server's own retransmissions are not the storm),
 * from the lab's network namespace (watch[0], set per run: other labs on the machine may
 * use the same port). RTS_OFF_SK_NET / RTS_OFF_NET_INUM: offsets from the kernel's BTF. */
#include <uapi/linux/ptrace.h>

BPF_PERCPU_ARRAY(made, u64, 1);
BPF_ARRAY(watch, u32, 1);

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
	if (args->dport != BENCH_PORT)
		return 0;
	int zero = 0;
	u32 *want = watch.lookup(&zero);
	if (want && *want) {
		const char *net = 0;
		u32 inum = 0;
		bpf_probe_read_kernel(&net, sizeof(net), (const char *)args->skaddr + RTS_OFF_SK_NET);
		bpf_probe_read_kernel(&inum, sizeof(inum), net + RTS_OFF_NET_INUM);
		if (inum != *want)
			return 0;
	}
	u64 *v = made.lookup(&zero);
	if (v)
		(*v)++;
	return 0;
}
