/*
 * fakeipvs.so: preloaded into keepalived by bench-healthcheck so that its
 * checker runs on a kernel without IPVS (the build machines' kernel has
 * none, and keepalived's checker exits at start when IPVS is missing).
 *
 * keepalived reaches IPVS through libnl's generic netlink calls. This
 * library answers them for the "IPVS" family only: the family resolves to
 * a made-up id, messages to it are not sent, GET_INFO gets a reply with a
 * version and a connection table size (what keepalived's init checks),
 * dumps are empty and every other command succeeds. Everything else,
 * the health checks above all, is keepalived's own code running for real.
 * Only benchmarks use it; nothing of it reaches lvsha.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <string.h>
#include <linux/netlink.h>

struct nl_sock;
struct nl_msg;
typedef int (*nl_recvmsg_msg_cb_t)(struct nl_msg *, void *);

#define FAKE_FAMILY 0x3ff
#define IPVS_CMD_GET_INFO 15
#define IPVS_INFO_ATTR_VERSION 1
#define IPVS_INFO_ATTR_CONN_TAB_SIZE 2
#define NL_CB_VALID 0
#define NL_CB_FINISH 1
#define NL_CB_ACK 4
#define NL_CB_TYPES 11

/* keepalived is single-threaded and keeps one IPVS socket: it sets a
 * callback for valid messages, and others for the ack (or the end of a
 * dump) that stop its receive loop. */
static struct nl_sock *cb_sock[NL_CB_TYPES];
static nl_recvmsg_msg_cb_t cb_func[NL_CB_TYPES];
static void *cb_arg[NL_CB_TYPES];
static struct nl_sock *pending_sock;
static int pending_cmd = -1;

static void *next(const char *name) { return dlsym(RTLD_NEXT, name); }
static void *any(const char *name) { return dlsym(RTLD_DEFAULT, name); }

int genl_ctrl_resolve(struct nl_sock *sk, const char *name)
{
	if (name && strcmp(name, "IPVS") == 0)
		return FAKE_FAMILY;
	int (*real)(struct nl_sock *, const char *) = next("genl_ctrl_resolve");
	return real(sk, name);
}

int nl_socket_modify_cb(struct nl_sock *sk, int type, int kind, nl_recvmsg_msg_cb_t func, void *arg)
{
	if (type >= 0 && type < NL_CB_TYPES) {
		cb_sock[type] = sk;
		cb_func[type] = func;
		cb_arg[type] = arg;
	}
	int (*real)(struct nl_sock *, int, int, nl_recvmsg_msg_cb_t, void *) = next("nl_socket_modify_cb");
	return real(sk, type, kind, func, arg);
}

/* intercept reports whether msg is for the fake family, noting its command. */
static int intercept(struct nl_sock *sk, struct nl_msg *msg)
{
	struct nlmsghdr *(*hdr)(struct nl_msg *) = any("nlmsg_hdr");
	struct nlmsghdr *h = hdr(msg);
	if (h->nlmsg_type != FAKE_FAMILY)
		return 0;
	pending_sock = sk;
	pending_cmd = ((uint8_t *)NLMSG_DATA(h))[0];
	return (int)h->nlmsg_len;
}

int nl_send_auto(struct nl_sock *sk, struct nl_msg *msg)
{
	int n = intercept(sk, msg);
	if (n > 0)
		return n;
	int (*real)(struct nl_sock *, struct nl_msg *) = next("nl_send_auto");
	return real(sk, msg);
}

int nl_send_auto_complete(struct nl_sock *sk, struct nl_msg *msg)
{
	int n = intercept(sk, msg);
	if (n > 0)
		return n;
	int (*real)(struct nl_sock *, struct nl_msg *) = next("nl_send_auto_complete");
	return real(sk, msg);
}

static int info_reply(nl_recvmsg_msg_cb_t func, void *arg);

int nl_recvmsgs_default(struct nl_sock *sk)
{
	if (sk != pending_sock) {
		int (*real)(struct nl_sock *) = next("nl_recvmsgs_default");
		return real(sk);
	}
	int cmd = pending_cmd;
	pending_cmd = -1;
	pending_sock = NULL;
	int r = 0;
	if (cmd == IPVS_CMD_GET_INFO && sk == cb_sock[NL_CB_VALID] && cb_func[NL_CB_VALID])
		r = info_reply(cb_func[NL_CB_VALID], cb_arg[NL_CB_VALID]);
	/* Then the ack, or failing a handler for it the end of a dump. */
	int t = sk == cb_sock[NL_CB_ACK] && cb_func[NL_CB_ACK] ? NL_CB_ACK : NL_CB_FINISH;
	if (r >= 0 && sk == cb_sock[t] && cb_func[t])
		cb_func[t](NULL, cb_arg[t]);
	return r < 0 ? r : 0;
}

/* info_reply hands func the answer to IPVS_CMD_GET_INFO. */
static int info_reply(nl_recvmsg_msg_cb_t func, void *arg)
{
	struct nl_msg *(*alloc)(void) = any("nlmsg_alloc");
	void (*msgfree)(struct nl_msg *) = any("nlmsg_free");
	void *(*gput)(struct nl_msg *, uint32_t, uint32_t, int, int, int, uint8_t, uint8_t) = any("genlmsg_put");
	int (*put)(struct nl_msg *, int, int, const void *) = any("nla_put");
	struct nl_msg *reply = alloc();
	if (!reply)
		return -1;
	uint32_t version = 0x010201, size = 4096;
	gput(reply, 0, 0, FAKE_FAMILY, 0, 0, IPVS_CMD_GET_INFO, 1);
	put(reply, IPVS_INFO_ATTR_VERSION, sizeof version, &version);
	put(reply, IPVS_INFO_ATTR_CONN_TAB_SIZE, sizeof size, &size);
	int r = func(reply, arg);
	msgfree(reply);
	return r;
}
