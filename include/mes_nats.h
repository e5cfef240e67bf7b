/* mes_nats.h - the NATS connection, streams (SPEC 1.2) and per-tenant durable consumers (SPEC 1.3). */
#ifndef MES_NATS_H
#define MES_NATS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nats/nats.h>

#include "buf.h"
#include "config.h"
#include "event.h"
#include "pull.h"

/* Shared by every thread that talks to NATS, and by nats.c's own threads (callbacks). */
typedef struct {
    /* Set by main in mes_nats_connect before any fetch loop starts, read-only after; mes_nats_close (main) clears
     * them once every thread that uses them has ended. nats.c locks the connection inside. */
    natsConnection *nc;
    jsCtx *js;
    const config_t *cfg;
    atomic_uint_fast64_t reconnects; /* bumped by the reconnected callback (nats.c's thread), read by the fetch loops */
    /* Atomic: ensure_streams runs on main and, re-creating a stream deleted at runtime, on any fetch loop at once. */
    _Atomic natsStatus last_status; /* last JetStream API failure of ensure_streams (main's retry decisions) */
    atomic_int last_jerr;
    atomic_uint replicas_warned; /* streams whose replica difference was logged already */
} mes_nats_t;

/* Per fetch loop: notices reconnects, stalls and a durable or stream deleted at runtime, so the loop can re-create
 * its pull subscription (and what it binds to). Written by the thread that subscribes first (main, before the loop's
 * thread starts), then by the loop's thread only. */
typedef struct {
    uint64_t seen_reconnects;
    int64_t last_msg_ms;   /* last fetch that returned messages (or the start) */
    int64_t last_check_ms; /* last time the server was asked about the consumer */
    bool suspect;          /* the previous check already saw messages pending while nothing arrived */
    uint64_t backlog;      /* what the newest message fetched said was still pending (read while a check is due) */
    bool missing;          /* the last check found the durable or its stream gone: re-subscribing re-creates them */
    /* Where the durable stood when last seen, so that one deleted at runtime is re-created from there (not from the
     * start of its stream, which would re-apply every delta): everything at or below its ack floor was acked. */
    uint64_t ack_floor;     /* stream sequence of the ack floor (0: not known) */
    int64_t stream_created; /* creation time (ns) of the stream it was seen on: a re-created stream starts over */
} mes_fetch_watch_t;

/* Connects to the servers of nats.url (a comma list; the cluster's other servers are discovered) with the TLS and
 * authentication keys, retrying with backoff until deadline_ms of CLOCK_MONOTONIC or *stop, and reconnects forever
 * afterwards. Returns 0, -1 (logged), or MES_NATS_BAD_CONFIG when retrying cannot help: the server's certificate
 * does not verify (wrong nats.tls.caFile, host name mismatch), the credentials were refused, or a key file is not
 * usable; the reason is logged and written to stderr, and the service exits with status 2. */
#define MES_NATS_BAD_CONFIG (-2)
int mes_nats_connect(mes_nats_t *n, const config_t *cfg, int64_t deadline_ms, const atomic_bool *stop)
    __attribute__((warn_unused_result));
void mes_nats_close(mes_nats_t *n); /* NULL-safe; closes and destroys the connection */
/* Once every connection is closed, at exit: waits (up to 2 s) until nats.c's own threads have ended. Without it they
 * may still free a connection's TLS context while exit() runs OpenSSL's cleanup (a crash seen at shutdown). */
void mes_nats_library_close(void);
bool mes_nats_connected(const mes_nats_t *n);

/* Creates missing streams and adds missing subjects to existing ones; never deletes, never resets limits. The three
 * of SPEC 1.2, and the tenant's advisory stream "mes_advisories_<co>" (advisory.c): file storage, limits retention,
 * max age nats.dlqMaxAgeDays, the max-deliveries advisory subject of each of the eleven durables. */
int mes_nats_ensure_streams(mes_nats_t *n) __attribute__((warn_unused_result));

/* The durable consumers the service owns: one per lane (SPEC 1.3), the DLQ worker's, and the advisory reader's. */
typedef enum { MES_DURABLE_LANE = 0, MES_DURABLE_DLQ, MES_DURABLE_ADVISORY } mes_durable_kind_t;

/* One of them, exactly as the service configures it, built once from the config (mes_nats_durable): whatever
 * creates, binds, watches or names a durable reads it from here. Built by main at create; read-only after, by any
 * thread. */
typedef struct {
    mes_durable_kind_t kind;
    event_type_t et; /* the lane's event type; ET_UNKNOWN for the DLQ and advisory durables */
    char stream[256];
    char durable[256];
    char filter[256]; /* "" for the advisory durable: every subject of its stream */
    int64_t ack_wait_ms;
    int max_deliver; /* -1: unlimited (the advisory durable never gives up on an advisory) */
    int max_ack_pending;
} mes_durable_t;

/* The durable of kind (and lane et, for MES_DURABLE_LANE) under cfg. */
void mes_nats_durable(mes_durable_t *d, const config_t *cfg, mes_durable_kind_t kind, event_type_t et);
/* Creates the durable if missing; updates ack wait / max deliver / max ack pending in place when they differ (the
 * advisory durable is never changed); binds a pull subscription to it. A missing stream of the service's own is
 * re-created first (SPEC 1.2: created if missing). A new durable delivers all, unless w knows where a durable of that
 * name stood on the same stream (it was deleted at runtime): then it starts after that ack floor. w (may be NULL)
 * learns the durable's position. */
int mes_nats_subscribe(mes_nats_t *n, const mes_durable_t *d, mes_fetch_watch_t *w, pull_t **sub)
    __attribute__((warn_unused_result));

/* What the durable still had for us after the newest message of a fetch (its NumPending; 0 when not known). */
uint64_t mes_nats_pending_after(const natsMsgList *got);

/* Call after every fetch, with what it returned (NULL or empty: nothing). Returns true when the pull subscription
 * must be re-created: after a reconnect (pull requests do not survive a server restart, and nats-server 2.9 may
 * ignore the old inbox afterwards), when the durable or its stream is gone (deleted at runtime: mes_nats_subscribe
 * re-creates them), or when the server reported messages pending at two checks 5 s apart while no fetch returned
 * anything for 10 s (a stall, whatever its cause; one check alone would also catch a message published a moment
 * ago). A delivery already on its way to the old inbox is not lost: it is redelivered after the ack wait. Every 5 s
 * it asks the server about the durable, unless the newest message fetched says more are pending (nats-server 2.9.10
 * then slows down: see mes_nats.c): that refreshes its ack floor in w and, for live lanes,
 * message_event_service_consumer_pending. */
bool mes_nats_fetch_watch(mes_nats_t *n, mes_fetch_watch_t *w, const mes_durable_t *d, const natsMsgList *got);
/* Unsubscribes *sub (NULL-safe) and sets it to NULL; the subscription itself is freed later (see mes_nats.c), by
 * mes_nats_close at the latest. */
void mes_nats_unsubscribe(natsSubscription **sub);
/* Destroys the pull subscription *sub (pull_destroy), then binds a new one to the same durable (re-creating the
 * durable or its stream when missing), retrying with backoff (200 ms doubling to 5 s) until it works or *stop is set.
 * *subscribed (what /ready reports) is false meanwhile. Messages already delivered stay ackable. */
void mes_nats_resubscribe(mes_nats_t *n, const mes_durable_t *d, mes_fetch_watch_t *w, pull_t **sub,
                          atomic_bool *subscribed, const atomic_bool *stop);

/* What mes_nats_get_source found. */
typedef enum { MES_SRC_OK = 0, MES_SRC_GONE, MES_SRC_MISMATCH, MES_SRC_FAILED } mes_source_t;
/* Appends the body of message seq of stream to out, when it is there and of the given subject (the full original
 * of a DLQ record that holds a truncated copy). Otherwise says why in why: GONE (the stream or the message is no
 * more), MISMATCH (another subject at that sequence), FAILED (NATS did not answer: try again later). */
mes_source_t mes_nats_get_source(mes_nats_t *n, const char *stream, uint64_t seq, const char *subject, buf_t *out,
                                 char *why, size_t whylen) __attribute__((warn_unused_result));
/* Message seq of stream, whole (subject, headers, data, time), into *out (caller destroys) when OK. GONE and FAILED as
 * for mes_nats_get_source. */
mes_source_t mes_nats_get_msg(mes_nats_t *n, const char *stream, uint64_t seq, natsMsg **out, char *why, size_t whylen)
    __attribute__((warn_unused_result));

#endif
