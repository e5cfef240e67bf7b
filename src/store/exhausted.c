/* exhausted.c - the last stop of a DLQ record: an idempotent exhausted_events row, and the operator's statements over
 * those rows (list, show, resolve, replay: exhausted_cli.c). */
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

/* ---- the operator's statements (exhausted_cli.c) ------------------------------------------------------------- */

/* $1 company, $2 unresolved only, $3 subject (or base), $4 since timestamp, $5 since age, $6 limit. The newest rows
 * win the limit; count(*) OVER () still sees every match, so a cut list can say how much it left out. */
#define LIST_FROM                                                                                                      \
    " FROM exhausted_events e"                                                                                         \
    " WHERE e.company_id = $1"                                                                                         \
    " AND ($2::boolean IS NOT TRUE OR e.resolved IS NOT TRUE)"                                                         \
    " AND ($3::text IS NULL OR e.source_subject = $3 OR e.source_subject = $3 || '.' || $1)"                           \
    " AND ($4::timestamptz IS NULL OR e.created_at >= $4::timestamptz)"                                                \
    " AND ($5::interval IS NULL OR e.created_at >= now() - $5::interval)"                                              \
    " ORDER BY e.id DESC LIMIT $6::integer"

static const char list_table_sql[] =
    "SELECT e.id, to_char(e.created_at, 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), e.source_subject, e.retry_count,"
    " CASE WHEN e.resolved THEN 'yes' ELSE 'no' END, e.last_error, count(*) OVER ()" LIST_FROM;

/* json_agg of the whole row: every column, jsonb columns as JSON values rendered by PostgreSQL (numbers exact). */
static const char list_json_sql[] = "SELECT coalesce(json_agg(s.e ORDER BY (s.e).id), '[]'::json),"
                                    " coalesce(max(s.matched), 0)"
                                    " FROM (SELECT e, count(*) OVER () AS matched" LIST_FROM ") s";

static const char show_sql[] =
    "SELECT id, created_at, company_id, source_subject, retry_count, last_error, event_timestamp, resolved::text"
    " AS resolved, resolved_at, notes, dlq_message_id, jsonb_pretty(original_payload) AS original_payload,"
    " jsonb_pretty(dlq_payload) AS dlq_payload"
    " FROM exhausted_events WHERE id = $1 AND company_id = $2";

static const char show_json_sql[] = "SELECT to_json(e) FROM exhausted_events e WHERE e.id = $1 AND e.company_id = $2";

#define NOTE_TS "to_char(now(), 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

/* Notes accumulate, one line per event in the row's life. */
static const char resolve_sql[] =
    "UPDATE exhausted_events SET resolved = true, resolved_at = now(),"
    " notes = concat_ws(E'\\n', nullif(notes, ''), 'resolved at ' || " NOTE_TS " || ': ' || $3::text)"
    " WHERE id = $1 AND company_id = $2 RETURNING id";

/* --id N: that row, resolved or not (the operator asked for it); --all-unresolved: every unresolved row. */
static const char replay_ids_sql[] =
    "SELECT id FROM exhausted_events WHERE company_id = $1"
    " AND CASE WHEN $2::bigint IS NULL THEN resolved IS NOT TRUE ELSE id = $2::bigint END ORDER BY id";

/* The row, locked for the rest of its transaction; SKIP LOCKED leaves a row that another replay holds. */
static const char replay_row_sql[] =
    "SELECT source_subject, dlq_payload->>'original_payload_encoding',"
    " CASE WHEN dlq_payload->>'original_payload_encoding' = 'base64' THEN dlq_payload->>'original_payload'"
    " ELSE coalesce(dlq_payload->'original_payload', original_payload)::text END,"
    " coalesce(dlq_payload->'original_payload_truncated' = 'true'::jsonb, false),"
    " dlq_payload->>'source_stream', dlq_payload->>'source_sequence', dlq_payload ? 'item_index'"
    " FROM exhausted_events WHERE id = $1 AND company_id = $2 AND ($3::boolean IS NOT TRUE OR resolved IS NOT TRUE)"
    " FOR UPDATE SKIP LOCKED";

static const char replay_mark_sql[] =
    "UPDATE exhausted_events SET resolved = true, resolved_at = now(),"
    " notes = concat_ws(E'\\n', nullif(notes, ''), $3::text) WHERE id = $1 AND company_id = $2";

static const struct {
    const char *sql;
    int nparams;
} queries[] = {
    [EXQ_LIST_TABLE] = {list_table_sql, 6},
    [EXQ_LIST_JSON] = {list_json_sql, 6},
    [EXQ_SHOW] = {show_sql, 2},
    [EXQ_SHOW_JSON] = {show_json_sql, 2},
    [EXQ_RESOLVE] = {resolve_sql, 3},
    [EXQ_REPLAY_IDS] = {replay_ids_sql, 2},
    [EXQ_REPLAY_ROW] = {replay_row_sql, 3},
    [EXQ_REPLAY_MARK] = {replay_mark_sql, 3},
};

PGresult *store_exhausted_query(db_conn_t *c, store_exhausted_query_t q, const char *const *params, db_error_t *err)
{
    return db_exec(c, queries[q].sql, queries[q].nparams, params, err);
}
