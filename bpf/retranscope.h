/* The retransmit event: the one layout shared by the BPF program (retranscope.bpf.c)
 * and user space (schemas/events.py decodes it; tests/test_schema.py checks the two agree
 * field by field, offsets included).
 *
 * Every field is naturally aligned and the struct has no implicit padding, so the
 * layout is the same for clang's BPF target and for numpy.
 * Ports are host byte order. Addresses are 16 bytes: IPv6 as is, IPv4 in the first 4.
 * Timestamps are CLOCK_MONOTONIC (bpf_ktime_get_ns); user space adds the wall-clock offset.
 */
#ifndef RETRANSCOPE_H
#define RETRANSCOPE_H

#define RTS_STACK_DEPTH 8   /* kernel frames kept: the caller of tcp_retransmit_skb is within 4 */
#define RTS_COMM_LEN 16

/* event_type */
#define RTS_EV_RETRANSMIT 1  /* tcp:tcp_retransmit_skb (or the kprobe fallback) */
#define RTS_EV_SYNACK 2      /* tcp:tcp_retransmit_synack */
#define RTS_EV_TLP_ATTEMPT 3 /* kprobe tcp_send_loss_probe (-l): an attempt, maybe new data */
#define RTS_EV_SOCK_GONE 4   /* tcp:tcp_destroy_sock of a socket that had events (not written) */

/* flags */
#define RTS_F_HAS_ERR 0x01      /* the tracepoint carries err (recent kernels) */
#define RTS_F_HAS_SEQ 0x02      /* seq/end_seq were read from the skb control block */
#define RTS_F_HAS_CA_STATE 0x04 /* ca_state is known */
#define RTS_F_HAS_SOCK 0x08     /* srtt/snd_una/snd_nxt/packets_out/backoff were read */
#define RTS_F_CA_FROM_MAP 0x10  /* ca_state came from tcp:tcp_cong_state_set, not the socket */
#define RTS_F_HAS_SEGS 0x20     /* segs was read from skb_shinfo(skb)->gso_segs */
#define RTS_F_HAS_TOTAL 0x40    /* total_retrans was read from the socket */

struct rts_event {
	__u64 ts_mono_ns;               /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 skaddr;                   /* struct sock *: the socket id while it lives */
	__u64 skbaddr;
	__u64 stack[RTS_STACK_DEPTH];   /* kernel return addresses; the reason is derived from them */
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 pid;                      /* on-CPU tgid (0 in softirq, like tcpretrans) */
	__u32 netns_ino;                /* network namespace inode (as in /proc/PID/ns/net) */
	__u32 sock_ino;                 /* socket inode (as in /proc/PID/fd), 0 if none */
	__u32 seq;                      /* TCP_SKB_CB(skb)->seq, raw */
	__u32 end_seq;                  /* TCP_SKB_CB(skb)->end_seq, raw */
	__u32 snd_una;                  /* tp->snd_una */
	__u32 snd_nxt;                  /* tp->snd_nxt */
	__u32 srtt_us8;                 /* tp->srtt_us: smoothed RTT in us, left-shifted by 3 */
	__u32 packets_out;              /* tp->packets_out */
	__u32 total_retrans;            /* tp->total_retrans: segments the socket has resent, this one included */
	__s32 err;                      /* the tracepoint's err (0 if absent) */
	__s32 stack_len;                /* frames in stack[], or a negative errno */
	__u16 sport;                    /* host byte order */
	__u16 dport;                    /* host byte order */
	__u16 family;                   /* AF_INET 2, AF_INET6 10 */
	__u16 segs;                     /* tcp_skb_pcount(skb): segments in this retransmission */
	__u8 state;                     /* sk_state: TCP_ESTABLISHED 1, TCP_SYN_SENT 2, ... */
	__u8 ca_state;                  /* icsk_ca_state: Open 0, Disorder 1, CWR 2, Recovery 3, Loss 4 */
	__u8 backoff;                   /* icsk_backoff: RTO backoff exponent */
	__u8 event_type;                /* RTS_EV_* */
	__u8 flags;                     /* RTS_F_* */
	__u8 pad0;
	char comm[RTS_COMM_LEN];
	__u8 pad1[2];
};

/* Per-flow counts for -c, aggregated in the kernel like tcpretrans -c. */
struct rts_flow_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u16 pad0;
};

#endif
