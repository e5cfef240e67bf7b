/* exhausted.c - the last stop of a DLQ record: an idempotent exhausted_events row for operators to inspect/replay. */
#include <stdio.h>
#include <stdlib.h>

#include "clock.h"
#include "store.h"

int store_exhausted_insert(db_conn_t *c, const store_exhausted_t *e, bool *inserted, db_error_t *err)
{
    char retries[16];
    snprintf(retries, sizeof retries, "%d", e->retry_count);
    const char *params[9] = {e->company_id,  e->source_subject, e->last_error,     retries,         e->event_ts,
                             e->dlq_payload, e->original_json,  e->dlq_message_id, e->also_known_as};
    double t0 = clock_mono_s();
    PGresult *r;
    if (e->also_known_as) /* the other key is only looked at: the unique one stays the arbiter between replicas */
        r = db_exec(c,
                    "INSERT INTO exhausted_events (company_id, source_subject, last_error, retry_count,"
                    " event_timestamp, dlq_payload, original_payload, dlq_message_id, created_at)"
                    " SELECT $1, $2, $3, $4::integer, $5::timestamptz, $6::jsonb, $7::jsonb, $8, now()"
                    " WHERE NOT EXISTS (SELECT 1 FROM exhausted_events WHERE dlq_message_id = $9)"
                    " ON CONFLICT (dlq_message_id) DO NOTHING",
                    9, params, err);
    else
        r = db_exec(c,
                    "INSERT INTO exhausted_events (company_id, source_subject, last_error, retry_count,"
                    " event_timestamp, dlq_payload, original_payload, dlq_message_id, created_at)"
                    " VALUES ($1, $2, $3, $4::integer, $5::timestamptz, $6::jsonb, $7::jsonb, $8, now())"
                    " ON CONFLICT (dlq_message_id) DO NOTHING",
                    8, params, err);
    metrics_db_duration(DBOP_SAVE, DBENT_EXHAUSTED_EVENT, r != NULL, clock_mono_s() - t0);
    if (!r)
        return -1;
    if (inserted)
        *inserted = atoi(PQcmdTuples(r)) > 0;
    PQclear(r);
    return 0;
}
