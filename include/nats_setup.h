/* nats_setup.h - the NATS connection, streams (SPEC 1.2) and per-tenant durable consumers (SPEC 1.3). */
#ifndef MES_NATS_SETUP_H
#define MES_NATS_SETUP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nats/nats.h>

#include "buf.h"
#include "config.h"
#include "event.h"

typedef struct {
    natsConnection *nc;
    jsCtx *js;
    const config_t *cfg;
    atomic_uint_fast64_t reconnects; /* bumped by the reconnected callback */
    natsStatus last_status;          /* last JetStream API failure of ensure_streams (retry decisions) */
    int last_jerr;
    unsigned replicas_warned;        /* streams whose replica difference was logged already */
} mes_nats_t;

/* Per fetch loop: notices reconnects and stalls so the loop can re-create its pull subscription. */
typedef struct {
    uint64_t seen_reconnects;
    int64_t last_msg_ms;   /* last fetch that returned messages (or the start) */
    int64_t last_check_ms; /* last time the server was asked about pending messages */
    bool suspect;          /* the previous check already saw messages pending while nothing arrived */
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
bool mes_nats_connected(const mes_nats_t *n);

/* Creates missing streams and adds missing subjects to existing ones; never deletes, never resets limits. */
int mes_nats_ensure_streams(mes_nats_t *n) __attribute__((warn_unused_result));

/* Durable name and filter subject of the consumer for event type et (or the DLQ when dlq is true). */
void mes_nats_consumer_names(const config_t *cfg, event_type_t et, bool dlq, char *durable, size_t dlen, char *filter,
                             size_t flen);
/* Creates the durable if missing (deliver all), updates ack wait / max deliver / max ack pending in place when they
 * differ, and binds a pull subscription to it. */
int mes_nats_subscribe(mes_nats_t *n, event_type_t et, bool dlq, natsSubscription **sub)
    __attribute__((warn_unused_result));

/* Call after every fetch. Returns true when the pull subscription must be re-created: after a reconnect (pull
 * requests do not survive a server restart, and nats-server 2.9 may ignore the old inbox afterwards), or when the
 * server reported messages pending at two checks 5 s apart while no fetch returned anything for 10 s (a stall,
 * whatever its cause; one check alone would also catch a message published a moment ago). A delivery already on its
 * way to the old inbox is not lost: it is redelivered after the ack wait. Every 5 s of silence it also refreshes
 * message_event_service_consumer_pending for live lanes from the server's count. */
bool mes_nats_fetch_watch(mes_nats_t *n, mes_fetch_watch_t *w, event_type_t et, bool dlq, bool got_messages);
/* One Fetch of at most `batch` messages from a pull subscription, shaped around two defects of nats.c 3.4.1 (the
 * version Debian ships):
 * - a no-wait request without an expiry returns as soon as nothing is queued locally, before the server's reply has
 *   arrived: partial batches, with the rest of the reply left queued in the subscription;
 * - a Fetch that starts with such leftovers counts its loop against the reduced request size: it can return more
 *   messages than asked and write past the array it allocated (heap corruption under load; a core showed 256
 *   messages returned for a request of 255, ASan a read past a 3-entry array).
 * So every request carries an expiry (no-wait ones 50 ms at most: the server answers them at once, the expiry only
 * bounds a reply that never ends), and with leftovers queued the request is sized so that nats.c's loop ends inside
 * its array. What exceeds `batch` is kept in *carry (owned by the caller, one per subscription; free it with
 * natsMsgList_Destroy) and returned first by the next call, so no delivery is dropped. */
natsStatus mes_nats_fetch(natsSubscription *sub, natsMsgList *carry, int batch, bool no_wait, int64_t wait_ms,
                          natsMsgList *out);

/* Unsubscribes *sub (NULL-safe) and sets it to NULL; the subscription itself is freed later (see nats_setup.c), by
 * mes_nats_close at the latest. */
void mes_nats_unsubscribe(natsSubscription **sub);
/* Unsubscribes and destroys *sub, then binds a new pull subscription to the same durable, retrying with backoff
 * (200 ms doubling to 5 s) until it works or *stop is set. *subscribed (what /ready reports) is false meanwhile.
 * Only call right after this thread's Fetch returned (no pull request of ours is still in flight to the old inbox). */
void mes_nats_resubscribe(mes_nats_t *n, event_type_t et, bool dlq, natsSubscription **sub, atomic_bool *subscribed,
                          const atomic_bool *stop);

/* What mes_nats_get_source found. */
typedef enum { MES_SRC_OK = 0, MES_SRC_GONE, MES_SRC_MISMATCH, MES_SRC_FAILED } mes_source_t;
/* Appends the body of message seq of stream to out, when it is there and of the given subject (the full original
 * of a DLQ record that holds a truncated copy). Otherwise says why in why: GONE (the stream or the message is no
 * more), MISMATCH (another subject at that sequence), FAILED (NATS did not answer: try again later). */
mes_source_t mes_nats_get_source(mes_nats_t *n, const char *stream, uint64_t seq, const char *subject, buf_t *out,
                                 char *why, size_t whylen) __attribute__((warn_unused_result));

#endif
