/* advisory.h - the safety net for what JetStream gives up on: max-deliveries advisories -> exhausted_events. */
#ifndef MES_ADVISORY_H
#define MES_ADVISORY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "db.h"
#include "mes_nats.h"

/* When deliveries of a message run out outside the service's own decisions (a process killed while it held the
 * message, an ack wait that expired, another client on the durable), JetStream stops redelivering it and publishes
 * $JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>. The tenant's advisory stream keeps those of its
 * durables (mes_nats_ensure_advisory_stream), so advisories published while no replica runs wait there; one thread
 * reads them through a durable the replicas share and stores each event in exhausted_events, keyed
 * "<stream>:<stream sequence>" (two replicas or a repeated advisory write one row), then acks the advisory. */
typedef struct advisory advisory_t;

/* db_up (may be NULL): while it says no, nothing new is fetched. Rows are written on a session borrowed from pool (the
 * DLQ workers'), one advisory at a time. Caller owns the result (advisory_destroy). */
advisory_t *advisory_create(const config_t *cfg, mes_nats_t *nats, db_pool_t *pool, const atomic_bool *stop,
                            bool (*db_up)(void *ctx), void *db_up_ctx);
/* Ensures the durable on the advisory stream and binds a pull subscription. */
int advisory_subscribe(advisory_t *a) __attribute__((warn_unused_result));
int advisory_start(advisory_t *a) __attribute__((warn_unused_result));
bool advisory_subscribed(const advisory_t *a);
/* After *stop is set: the thread finishes the advisory in hand (an unfinished one stays unacked for redelivery).
 * Waits until deadline_ms (CLOCK_REALTIME); true when it ended. */
bool advisory_join(advisory_t *a, int64_t deadline_ms);
void advisory_destroy(advisory_t *a); /* NULL-safe; only after a successful join or if never started */

#endif
