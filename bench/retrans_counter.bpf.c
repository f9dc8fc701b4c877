/* The benchmark's reference: how many retransmits the kernel made, counted in the kernel
 * with nothing to lose (one per-CPU counter, no buffer). Only the storm's senders:
 * segments *to* the server's port (the server's own retransmissions are not the storm). */
#include <uapi/linux/ptrace.h>

BPF_PERCPU_ARRAY(made, u64, 1);

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
	if (args->dport != BENCH_PORT)
		return 0;
	int zero = 0;
	u64 *v = made.lookup(&zero);
	if (v)
		(*v)++;
	return 0;
}
