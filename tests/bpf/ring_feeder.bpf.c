/* Feeds a one-page ring buffer on demand, for record/ringbuf.py's tests: each getppid()
 * of the test process (FEEDER_TGID) writes one record. ctl[0]: what to write (0: a
 * struct rts_event, 1: an 8-byte record of another size, 2: a struct rts_event
 * discarded); ctl[1]: the running sequence number, written into ts_mono_ns. */
#include <uapi/linux/ptrace.h>
#include <linux/types.h>
#include "retranscope.h"

BPF_RINGBUF_OUTPUT(ring, 1);
BPF_ARRAY(ctl, u64, 2);

TRACEPOINT_PROBE(syscalls, sys_enter_getppid)
{
	if ((bpf_get_current_pid_tgid() >> 32) != FEEDER_TGID)
		return 0;
	int k_mode = 0, k_seq = 1;
	u64 *mode = ctl.lookup(&k_mode), *seq = ctl.lookup(&k_seq);
	if (!mode || !seq)
		return 0;
	u64 n = (*seq)++;
	if (*mode == 1) {
		u64 *r = ring.ringbuf_reserve(sizeof(u64));
		if (r) {
			*r = n;
			ring.ringbuf_submit(r, 0);
		}
		return 0;
	}
	struct rts_event *e = ring.ringbuf_reserve(sizeof(*e));
	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_mono_ns = n;
	e->event_type = RTS_EV_RETRANSMIT;
	if (*mode == 2)
		ring.ringbuf_discard(e, 0);
	else
		ring.ringbuf_submit(e, 0);
	return 0;
}
