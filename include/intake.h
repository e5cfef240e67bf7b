/* intake.h - the one fetch loop of every JetStream reader in the service (the subject lanes' fetchers, the DLQ
 * worker's fetcher, the advisory listener): pull from the reader's durable when its owner has room, hand what came
 * to the owner, re-create the pull subscription after a reconnect, a stall or a durable/stream deleted at runtime
 * (mes_nats_fetch_watch), and back off on errors. */
#ifndef MES_INTAKE_H
#define MES_INTAKE_H

#include <stdatomic.h>

#include "mes_nats.h"
#include "pull.h"

/* One reader's durable and its pull subscription: main's while it subscribes (before the loop's thread starts), then
 * the loop's thread's; `subscribed` (what /ready reports) is read by any thread. */
typedef struct {
    mes_durable_t dur;       /* set at create, read-only after (also by the HTTP threads: the durable's name) */
    mes_fetch_watch_t watch; /* main's until the loop's thread starts, then that thread's */
    pull_t *sub;             /* likewise */
    atomic_bool subscribed;  /* atomic: written by main, then the loop's thread; read by any */
} intake_t;

/* What a reader does around the loop. ctx is the reader. Read only by the loop's thread (usually a const on its
 * stack); every callback runs on that thread. */
typedef struct {
    const char *who; /* log component */
    /* Blocks (briefly: the loop re-checks stop when it returns) until the reader can take messages; returns how many
     * it can take now, 0 when not now. */
    int (*room)(void *ctx);
    /* One fetch of up to room messages (pull_fetch's contract). NULL: pull_fetch(sub, room, false, wait_ms). */
    natsStatus (*fetch)(void *ctx, pull_t *sub, int room, natsMsgList *out);
    int64_t wait_ms;
    /* Takes the messages fetched (fetch_s: how long the fetch took). Whatever it leaves in list is destroyed
     * unacked (JetStream redelivers it after the ack wait). */
    void (*deliver)(void *ctx, natsMsgList *list, double fetch_s);
    void (*on_fetch)(void *ctx); /* optional: before every fetch (a metric) */
    void (*on_error)(void *ctx); /* optional: a fetch failed (a metric) */
} intake_ops_t;

/* Binds in->sub to in->dur (creating the durable, and its stream, when missing) and sets in->subscribed. 0 or -1. */
int intake_subscribe(intake_t *in, mes_nats_t *n) __attribute__((warn_unused_result));
/* Drops the pull subscription (NULL-safe). What it still had queued is unacked: redelivered after the ack wait. */
void intake_close(intake_t *in);

/* Runs the loop until *stop. Messages delivered stay valid and ackable after the subscription is replaced (acks go to
 * each message's reply subject), so a re-subscription never waits for what the reader holds. */
void intake_run(intake_t *in, mes_nats_t *n, const atomic_bool *stop, const intake_ops_t *ops, void *ctx);

#endif
