/* retranscope's kernel side (bcc). One event per TCP retransmission, with what is needed
 * to join it to a capture (flow, TCP_SKB_CB seq/end_seq) and to name the kernel's reason
 * (the kernel stack: tcp_send_loss_probe / tcp_retransmit_timer / tcp_xmit_retransmit_queue,
 * plus the socket's congestion-avoidance state).
 *
 * Configuration comes from -D flags set by record/probe.py:
 *   RTS_USE_RINGBUF          ring buffer (5.8+) instead of the perf buffer
 *   RTS_RINGBUF_PAGES        ring buffer size in pages (power of two)
 *   RTS_TP_HAS_ERR           the tcp_retransmit_skb format has `err` (read from tracefs)
 *   RTS_HAVE_TP              attach to tracepoints (else: kprobe fallback for old kernels)
 *   RTS_COUNT                aggregate per-flow counts in the kernel (-c)
 *   RTS_CA_FROM_MAP          track icsk_ca_state via tcp:tcp_cong_state_set (no BTF offset)
 *   RTS_SOCK_GONE            tell user space when a socket it has events of is destroyed
 *                            (tcp:tcp_destroy_sock), so its per-socket state can be dropped
 *   RTS_FILTER_FAMILY        2 or 10 (-4 / -6)
 *   RTS_FILTER_PORT          host-order port matched against sport or dport
 *   RTS_FILTER_NETNS         network namespace inode
 *   RTS_OFF_*                struct offsets taken from the running kernel's BTF
 *                            (never from the headers bcc compiles against: docs/kernel-notes.md);
 *                            -1 where unknown, and the field is then left 0.
 */
#include <uapi/linux/ptrace.h>
#include <linux/types.h>
#include "retranscope.h"

#ifndef RTS_RINGBUF_PAGES
#define RTS_RINGBUF_PAGES 512
#endif

#ifdef RTS_USE_RINGBUF
BPF_RINGBUF_OUTPUT(events, RTS_RINGBUF_PAGES);
#else
BPF_PERF_OUTPUT(events);
BPF_PERCPU_ARRAY(scratch, struct rts_event, 1);
#endif

/* [0] events the ring/perf buffer refused (full): never silent, reported at exit.
 * [1] events that passed the filters (what the kernel made, as far as we were asked). */
BPF_PERCPU_ARRAY(stats, u64, 2);

#ifdef RTS_COUNT
BPF_HASH(counts, struct rts_flow_key, u64, 65536);
#endif

#ifdef RTS_CA_FROM_MAP
BPF_HASH(ca_states, u64, u8, 65536);
#endif

#ifdef RTS_SOCK_GONE
/* Sockets that have had a retransmit event: their destruction is reported (one
 * RTS_EV_SOCK_GONE record), so user space keeps per-socket state only for live sockets.
 * Full (65536 live sockets with retransmissions): the socket is not reported when it
 * goes, and user space keeps its state until the recording ends. */
BPF_HASH(reported, u64, u8, 65536);
#endif

static __always_inline void rts_stat(int idx)
{
	u64 *v = stats.lookup(&idx);
	if (v)
		(*v)++;
}

static __always_inline u32 rts_read_u32(const void *base, long off)
{
	u32 v = 0;
	if (base && off >= 0)
		bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
	return v;
}

static __always_inline const void *rts_read_ptr(const void *base, long off)
{
	const void *p = 0;
	if (base && off >= 0)
		bpf_probe_read_kernel(&p, sizeof(p), (const char *)base + off);
	return p;
}

static __always_inline u32 rts_netns_ino(const void *sk)
{
	const void *net = rts_read_ptr(sk, RTS_OFF_SK_NET);
	return rts_read_u32(net, RTS_OFF_NET_INUM);
}

/* Socket-side facts: namespace, socket inode, congestion state, RTT and send window. */
static __always_inline void rts_read_sock(struct rts_event *e, const void *sk)
{
	if (!sk)
		return;
	e->netns_ino = rts_netns_ino(sk);

	/* SOCK_INODE(): the inode sits beside the socket in struct socket_alloc. */
	const char *sock = rts_read_ptr(sk, RTS_OFF_SK_SOCKET);
	if (sock && RTS_OFF_SOCKET_ALLOC_INODE >= 0 && RTS_OFF_INODE_INO >= 0)
		e->sock_ino = rts_read_u32(sock - RTS_OFF_SOCKET_ALLOC_SOCKET,
					   RTS_OFF_SOCKET_ALLOC_INODE + RTS_OFF_INODE_INO);

#if RTS_OFF_CA_STATE_BYTE >= 0
	u8 b = 0;
	bpf_probe_read_kernel(&b, 1, (const char *)sk + RTS_OFF_CA_STATE_BYTE);
	e->ca_state = (b >> RTS_CA_STATE_SHIFT) & RTS_CA_STATE_MASK;
	e->flags |= RTS_F_HAS_CA_STATE;
#elif defined(RTS_CA_FROM_MAP)
	u64 key = (u64)sk;
	u8 *ca = ca_states.lookup(&key);
	if (ca) {
		e->ca_state = *ca;
		e->flags |= RTS_F_HAS_CA_STATE | RTS_F_CA_FROM_MAP;
	}
#endif

#if RTS_OFF_TP_SRTT >= 0
	e->srtt_us8 = rts_read_u32(sk, RTS_OFF_TP_SRTT);
	e->snd_una = rts_read_u32(sk, RTS_OFF_TP_SND_UNA);
	e->snd_nxt = rts_read_u32(sk, RTS_OFF_TP_SND_NXT);
	e->packets_out = rts_read_u32(sk, RTS_OFF_TP_PACKETS_OUT);
	e->flags |= RTS_F_HAS_SOCK;
#endif
#if RTS_OFF_TP_TOTAL_RETRANS >= 0
	/* Read where the tracepoint fires, at the end of __tcp_retransmit_skb: this
	 * retransmission's segments are already in it. */
	e->total_retrans = rts_read_u32(sk, RTS_OFF_TP_TOTAL_RETRANS);
	e->flags |= RTS_F_HAS_TOTAL;
#endif
#if RTS_OFF_ICSK_BACKOFF >= 0
	bpf_probe_read_kernel(&e->backoff, 1, (const char *)sk + RTS_OFF_ICSK_BACKOFF);
#endif
}

/* Filters run before a buffer slot is reserved: another namespace's storm must neither
 * take ring space (a discarded record still occupies it until consumed) nor be counted
 * as lost here. */
static __always_inline int rts_filtered(const void *sk, u16 family, u16 sport, u16 dport)
{
#ifdef RTS_FILTER_NETNS
	if (rts_netns_ino(sk) != RTS_FILTER_NETNS)
		return 1;
#endif
#ifdef RTS_FILTER_FAMILY
	if (family != RTS_FILTER_FAMILY)
		return 1;
#endif
#ifdef RTS_FILTER_PORT
	if (sport != RTS_FILTER_PORT && dport != RTS_FILTER_PORT)
		return 1;
#endif
	return 0;
}

static __always_inline struct rts_event *rts_reserve(void)
{
#ifdef RTS_USE_RINGBUF
	return events.ringbuf_reserve(sizeof(struct rts_event));
#else
	int zero = 0;
	return scratch.lookup(&zero);
#endif
}

/* A full buffer is a lost event: counted as made ([1]) and lost ([0]), never silent. */
static __always_inline struct rts_event *rts_reserve_counted(void)
{
	struct rts_event *e = rts_reserve();
	if (!e) {
		rts_stat(0);
		rts_stat(1);
	}
	return e;
}

/* TCP_SKB_CB(skb)->seq / end_seq: the TCP header is not built yet where we look. */
static __always_inline void rts_read_skb_seq(struct rts_event *e, const void *skb)
{
#if RTS_OFF_SKB_CB >= 0
	const char *cb = (const char *)skb + RTS_OFF_SKB_CB;
	bpf_probe_read_kernel(&e->seq, 4, cb + RTS_OFF_TCB_SEQ);
	bpf_probe_read_kernel(&e->end_seq, 4, cb + RTS_OFF_TCB_END_SEQ);
	e->flags |= RTS_F_HAS_SEQ;
#endif
#if RTS_OFF_SKB_HEAD >= 0 && RTS_OFF_SKB_END >= 0 && RTS_OFF_SHINFO_GSO_SEGS >= 0
	/* tcp_skb_pcount(skb) = skb_shinfo(skb)->gso_segs (TCP sets it on every skb). */
	const char *head = rts_read_ptr(skb, RTS_OFF_SKB_HEAD);
	u32 end = rts_read_u32(skb, RTS_OFF_SKB_END);
	if (head) {
		bpf_probe_read_kernel(&e->segs, 2, head + end + RTS_OFF_SHINFO_GSO_SEGS);
		e->flags |= RTS_F_HAS_SEGS;
	}
#endif
}

static __always_inline void rts_submit(void *ctx, struct rts_event *e)
{
	rts_stat(1);
#ifdef RTS_COUNT
	struct rts_flow_key k = {};
	__builtin_memcpy(k.saddr, e->saddr, 16);
	__builtin_memcpy(k.daddr, e->daddr, 16);
	k.sport = e->sport;
	k.dport = e->dport;
	k.family = e->family;
	u64 zero = 0;
	/* Returns the map's own value (inserted as 0 if new): always add. */
	u64 *c = counts.lookup_or_try_init(&k, &zero);
	if (c)
		__sync_fetch_and_add(c, 1);
#endif
#ifdef RTS_USE_RINGBUF
	events.ringbuf_submit(e, 0);
#else
	if (events.perf_submit(ctx, e, sizeof(*e)) < 0)
		rts_stat(0);
#endif
}

static __always_inline void rts_common(void *ctx, struct rts_event *e, u8 type)
{
	e->ts_mono_ns = bpf_ktime_get_ns();
	e->event_type = type;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	/* The caller that decided to retransmit is a few frames up; user space maps the
	 * addresses to tcp_send_loss_probe / tcp_retransmit_timer / tcp_xmit_retransmit_queue
	 * through /proc/kallsyms. No kprobe needed (docs/kernel-notes.md). */
	long n = bpf_get_stack(ctx, e->stack, sizeof(e->stack), 0);
	e->stack_len = n > 0 ? (long)((unsigned long)n >> 3) : n;
}

/* Start an event: filters first (nothing reserved for what is filtered out), then a
 * zeroed buffer slot; NULL when filtered out or when the buffer is full (counted lost). */
static __always_inline struct rts_event *rts_begin(const void *sk, u16 family, u16 sport,
						   u16 dport)
{
	if (rts_filtered(sk, family, sport, dport))
		return 0;
	struct rts_event *e = rts_reserve_counted();
	if (e)
		__builtin_memset(e, 0, sizeof(*e));
	return e;
}

/* Flow fields from a tcp tracepoint's arguments (ports there are host order; IPv4
 * addresses go in the first 4 bytes). */
static __always_inline void rts_set_flow(struct rts_event *e, u16 family, u16 sport, u16 dport,
					 const u8 *s4, const u8 *d4, const u8 *s6, const u8 *d6)
{
	e->family = family;
	e->sport = sport;
	e->dport = dport;
	if (family == 10) {
		__builtin_memcpy(e->saddr, s6, 16);
		__builtin_memcpy(e->daddr, d6, 16);
	} else {
		__builtin_memcpy(e->saddr, s4, 4);
		__builtin_memcpy(e->daddr, d4, 4);
	}
}

#ifdef RTS_HAVE_TP
TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
	u16 family = args->family;
	struct rts_event *e = rts_begin(args->skaddr, family, args->sport, args->dport);
	if (!e)
		return 0;
	rts_set_flow(e, family, args->sport, args->dport, args->saddr, args->daddr,
		     args->saddr_v6, args->daddr_v6);
	e->state = args->state;
#ifdef RTS_TP_HAS_ERR
	e->err = args->err;
	e->flags |= RTS_F_HAS_ERR;
#endif
	e->skaddr = (u64)args->skaddr;
	e->skbaddr = (u64)args->skbaddr;
	rts_read_skb_seq(e, args->skbaddr);
	rts_read_sock(e, args->skaddr);
	rts_common(args, e, RTS_EV_RETRANSMIT);
	rts_submit(args, e);
#ifdef RTS_SOCK_GONE
	u64 key = (u64)args->skaddr;
	u8 one = 1;
	reported.update(&key, &one);
#endif
	return 0;
}

TRACEPOINT_PROBE(tcp, tcp_retransmit_synack)
{
	u16 family = args->family;
	struct rts_event *e = rts_begin(args->skaddr, family, args->sport, args->dport);
	if (!e)
		return 0;
	rts_set_flow(e, family, args->sport, args->dport, args->saddr, args->daddr,
		     args->saddr_v6, args->daddr_v6);
	e->state = 12; /* TCP_NEW_SYN_RECV: the request socket's state */
	e->skaddr = (u64)args->skaddr;
	e->skbaddr = (u64)args->req;
#if RTS_OFF_TREQ_SNT_ISN >= 0
	/* A SYN-ACK occupies one sequence number: [snt_isn, snt_isn + 1). */
	e->seq = rts_read_u32(args->req, RTS_OFF_TREQ_SNT_ISN);
	e->end_seq = e->seq + 1;
	e->flags |= RTS_F_HAS_SEQ;
#endif
	e->netns_ino = rts_netns_ino(args->skaddr);
	rts_common(args, e, RTS_EV_SYNACK);
	rts_submit(args, e);
	return 0;
}

#ifdef RTS_CA_FROM_MAP
TRACEPOINT_PROBE(tcp, tcp_cong_state_set)
{
	u64 key = (u64)args->skaddr;
	u8 st = args->cong_state;
	ca_states.update(&key, &st);
	return 0;
}

#endif

#if defined(RTS_CA_FROM_MAP) || defined(RTS_SOCK_GONE)
TRACEPOINT_PROBE(tcp, tcp_destroy_sock)
{
	u64 key = (u64)args->skaddr;
#ifdef RTS_CA_FROM_MAP
	ca_states.delete(&key);
#endif
#ifdef RTS_SOCK_GONE
	if (!reported.lookup(&key))
		return 0;
	reported.delete(&key);
	/* Not a retransmission: neither counted in stats nor written out. A full buffer
	 * only means user space keeps this socket's state longer. */
	struct rts_event *e = rts_reserve();
	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_mono_ns = bpf_ktime_get_ns();
	e->skaddr = key;
	e->event_type = RTS_EV_SOCK_GONE;
#ifdef RTS_USE_RINGBUF
	events.ringbuf_submit(e, 0);
#else
	events.perf_submit(args, e, sizeof(*e));
#endif
#endif
	return 0;
}
#endif
#endif /* RTS_HAVE_TP */

/* Flow of a socket from struct sock_common, for the kprobes (no tracepoint args there). */
static __always_inline void rts_flow_from_sock(struct rts_event *e, const void *sk)
{
	u16 family = 0, lport = 0, dport_be = 0;
	u8 state = 0;
	bpf_probe_read_kernel(&family, 2, (const char *)sk + RTS_OFF_SKC_FAMILY);
	bpf_probe_read_kernel(&lport, 2, (const char *)sk + RTS_OFF_SKC_NUM);
	bpf_probe_read_kernel(&dport_be, 2, (const char *)sk + RTS_OFF_SKC_DPORT);
	bpf_probe_read_kernel(&state, 1, (const char *)sk + RTS_OFF_SKC_STATE);
	e->family = family;
	e->sport = lport;                 /* skc_num is host order */
	e->dport = __builtin_bswap16(dport_be); /* skc_dport is network order */
	e->state = state;
	if (family == 10) {
		bpf_probe_read_kernel(e->saddr, 16, (const char *)sk + RTS_OFF_SKC_V6_RCV_SADDR);
		bpf_probe_read_kernel(e->daddr, 16, (const char *)sk + RTS_OFF_SKC_V6_DADDR);
	} else {
		bpf_probe_read_kernel(e->saddr, 4, (const char *)sk + RTS_OFF_SKC_RCV_SADDR);
		bpf_probe_read_kernel(e->daddr, 4, (const char *)sk + RTS_OFF_SKC_DADDR);
	}
}

/* One kprobe event: flow and state from the socket itself (no tracepoint args). */
static __always_inline int rts_kprobe_event(struct pt_regs *ctx, const void *sk,
					    const void *skb, u8 type)
{
	u16 family = 0, lport = 0, dport_be = 0;
	bpf_probe_read_kernel(&family, 2, (const char *)sk + RTS_OFF_SKC_FAMILY);
	bpf_probe_read_kernel(&lport, 2, (const char *)sk + RTS_OFF_SKC_NUM);
	bpf_probe_read_kernel(&dport_be, 2, (const char *)sk + RTS_OFF_SKC_DPORT);
	struct rts_event *e = rts_begin(sk, family, lport, __builtin_bswap16(dport_be));
	if (!e)
		return 0;
	rts_flow_from_sock(e, sk);
	e->skaddr = (u64)sk;
	e->skbaddr = (u64)skb;
	if (skb)
		rts_read_skb_seq(e, skb);
	rts_read_sock(e, sk);
	rts_common(ctx, e, type);
	rts_submit(ctx, e);
	return 0;
}

#ifdef RTS_KPROBE_RETRANSMIT
/* Fallback for kernels without tcp:tcp_retransmit_skb (before 4.15):
 * int tcp_retransmit_skb(struct sock *sk, struct sk_buff *skb, int segs). */
int rts_kprobe_retransmit(struct pt_regs *ctx)
{
	return rts_kprobe_event(ctx, (const void *)PT_REGS_PARM1(ctx),
				(const void *)PT_REGS_PARM2(ctx), RTS_EV_RETRANSMIT);
}
#endif

#ifdef RTS_KPROBE_TLP
/* -l: every call of tcp_send_loss_probe(struct sock *sk) is a probe *attempt*; it may send
 * new data instead of retransmitting (RFC 8985 §7.3), which no retransmit event shows. */
int rts_kprobe_tlp(struct pt_regs *ctx)
{
	return rts_kprobe_event(ctx, (const void *)PT_REGS_PARM1(ctx), 0, RTS_EV_TLP_ATTEMPT);
}
#endif
