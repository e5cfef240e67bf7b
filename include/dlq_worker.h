/* dlq_worker.h - the per-tenant DLQ worker (SPEC 5.2): a fetcher thread, a bounded queue and a pthread pool. */
#ifndef MES_DLQ_WORKER_H
#define MES_DLQ_WORKER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "db.h"
#include "mes_nats.h"

typedef struct dlq_worker dlq_worker_t;

/* db_up (may be NULL) tells whether PostgreSQL answers: while it says no, the fetcher takes nothing new, so an outage
 * does not burn DLQ attempts. The workers share the sessions of pool (it must outlive the worker). Caller owns the
 * result (dlq_worker_destroy). */
dlq_worker_t *dlq_worker_create(const config_t *cfg, mes_nats_t *nats, db_pool_t *pool, const atomic_bool *stop,
                                bool (*db_up)(void *ctx), void *db_up_ctx);
/* Ensures/binds v1_dlq_worker_<co> on <dlqSubject>.<co>. */
int dlq_worker_subscribe(dlq_worker_t *w) __attribute__((warn_unused_result));
int dlq_worker_start(dlq_worker_t *w) __attribute__((warn_unused_result));
bool dlq_worker_subscribed(const dlq_worker_t *w);
const char *dlq_worker_durable(const dlq_worker_t *w); /* v1_dlq_worker_<co> */
/* After *stop is set: the fetcher stops, workers finish their record and drain the queue (records they cannot finish
 * stay unacked for redelivery). Waits until deadline_ms (CLOCK_REALTIME); true when every thread ended. */
bool dlq_worker_join(dlq_worker_t *w, int64_t deadline_ms);
void dlq_worker_destroy(dlq_worker_t *w); /* NULL-safe; only after a successful join or if never started */

/* The workers' exhaustion (parsing, row, degraded row for data PostgreSQL refuses, waiting out an outage) for
 * records that do not come from the DLQ consumer: max-deliveries advisories (advisory.c). One worker's state; it borrows
 * a session of pool for each record, like a worker. Not thread-safe: one owner thread. */
typedef struct dlq_exhauster dlq_exhauster_t;

dlq_exhauster_t *dlq_exhauster_create(const config_t *cfg, mes_nats_t *nats, db_pool_t *pool, const atomic_bool *stop);
void dlq_exhauster_destroy(dlq_exhauster_t *x); /* NULL-safe */

typedef struct {
    const char *record; /* a DLQ record (SPEC 5.1); anything else is kept the way the workers keep one */
    size_t len;
    const char *msg_id;        /* the row's dlq_message_id */
    const char *also_known_as; /* NULL, or a key under which the same event may be stored already (no row then) */
    int attempts;              /* added to the record's retry_count */
    const char *why;           /* last_error; a record's own differing error is appended */
    const char *original_json; /* NULL, or the full JSON original when the record embeds a truncated copy */
    natsMsg *held;             /* NULL, or a message kept alive with in-progress acks while PostgreSQL is away */
    const char *origin;        /* the log line's message */
} dlq_exhaust_t;

typedef enum { DLQ_EXH_STORED = 0, DLQ_EXH_NOT_STORED, DLQ_EXH_STOPPING } dlq_exh_result_t;

/* Stores the exhausted_events row of in->record. STORED: the row is there (*inserted, may be NULL: written by this
 * call); NOT_STORED: PostgreSQL refused it for a retryable reason, try again later; STOPPING: *stop was set while
 * waiting for PostgreSQL. */
dlq_exh_result_t dlq_exhauster_store(dlq_exhauster_t *x, const dlq_exhaust_t *in, bool *inserted)
    __attribute__((warn_unused_result));

/* Delay before DLQ attempt k+1: min(base * 2^(k-1), max), no jitter (SPEC 5.2). */
int64_t dlq_worker_backoff_ms(const config_t *cfg, int k);

#endif
