/* dlq_worker.h - the per-tenant DLQ worker (SPEC 5.2): a fetcher thread, a bounded queue and a pthread pool. */
#ifndef MES_DLQ_WORKER_H
#define MES_DLQ_WORKER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "db.h"
#include "nats_setup.h"

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

/* Delay before DLQ attempt k+1: min(base * 2^(k-1), max), no jitter (SPEC 5.2). */
int64_t dlq_worker_backoff_ms(const config_t *cfg, int k);

#endif
