/* store.h - the tenant schema (migrations, partitions) and batched upserts of validated events (SPEC 3, 6). */
#ifndef MES_STORE_H
#define MES_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "buf.h"
#include "db.h"
#include "metrics.h"
#include "payload.h"

/* Creates the schema, schema_migrations and every pending migration, under an advisory lock so replicas starting
 * together do not race. With auto_migrate false, only verifies that the schema is complete. Returns 0 or -1 (err). */
int store_migrate(db_conn_t *c, bool auto_migrate, db_error_t *err) __attribute__((warn_unused_result));
/* Ensures monthly messages partitions from the month before `now` through 3 months ahead; rows that already sit in
 * messages_default for such a month are moved into the new partition. Idempotent. */
int store_ensure_partitions(db_conn_t *c, time_t now, db_error_t *err) __attribute__((warn_unused_result));

/* One event (or history item) to write. */
typedef struct {
    const event_t *ev; /* valid event; ev->type is the entity event type (history items: *_UPSERT) */
    const char *meta;  /* last_metadata JSON object text */
    uint32_t meta_len;
    bool onboard; /* realtime messages.upsert: run onboarding in the same transaction */
    /* out */
    error_class_t result;    /* ERR_NONE or ERR_NOT_FOUND (update of a missing row) */
    onboarding_status_t onb; /* when onboard: the onboarding outcome */
} store_item_t;

typedef struct store_op store_op_t;

/* Per-thread scratch space for building statements; reused across batches. */
typedef struct {
    buf_t json;
    store_op_t *ops; /* statements queued in the pipeline, read back in order */
    size_t nops, ops_cap;
    uint32_t *opidx; /* the items of each queued statement */
    size_t nopidx, opidx_cap;
    size_t onboarding; /* onboarding items of the batch in flight (for the queue gauge) */
    /* When set, statements go to emit instead of PostgreSQL (store_build_statements). */
    void (*emit)(void *arg, const char *stmt, const char *json, size_t len);
    void *emit_arg;
    uint32_t *order; /* index scratch */
    uint32_t *round;
    char *phones; /* cap slots of PAYLOAD_MAX_PHONE + 1: normalised onboarding phones */
    size_t cap;
} store_scratch_t;

void store_scratch_init(store_scratch_t *s);
void store_scratch_free(store_scratch_t *s);

/*
 * Writes all items in ONE transaction with one multi-row prepared statement per entity and "round", all sent in one
 * libpq pipeline (one round trip; the implicit transaction commits at the sync): items
 * naming the same key are split into successive rounds in stream (array) order, so the result equals applying them
 * one by one. Returns 0 when committed (items[i].result tells not_found), -1 when the transaction failed and was rolled
 * back (err says why; no item was written).
 */
int store_commit(db_conn_t *c, store_item_t *items, size_t n, store_scratch_t *s, db_error_t *err)
    __attribute__((warn_unused_result));

/* Plans and builds every statement store_commit would send for items (same sorting, rounds, onboarding rows and $1
 * JSON), handing each to emit instead of a database: for the handler microbenchmark. Returns 0, -1 on OOM. */
int store_build_statements(store_item_t *items, size_t n, store_scratch_t *s,
                           void (*emit)(void *arg, const char *stmt, const char *json, size_t len), void *arg);

/* One exhausted DLQ record (SPEC 5.2). Strings are NUL-terminated; original_json may be NULL (non-JSON original). */
typedef struct {
    const char *company_id;
    const char *source_subject;
    const char *last_error;
    int retry_count;         /* source deliveries + DLQ attempts */
    const char *event_ts;    /* RFC 3339 "ts" of the record, or NULL */
    const char *dlq_payload; /* the record (JSON text) */
    const char *original_json;
    const char *dlq_message_id; /* the record's Nats-Msg-Id: a redelivered exhaustion never writes two rows */
    const char *also_known_as;  /* NULL, or another dlq_message_id under which the same event may be stored already
                                 * (a max-deliveries advisory about a record the DLQ worker exhausted): no row then */
} store_exhausted_t;

/* Inserts the exhausted_events row; a row with the same dlq_message_id (or also_known_as) already there counts as
 * success. *inserted (may be NULL) tells whether this call wrote the row. */
int store_exhausted_insert(db_conn_t *c, const store_exhausted_t *e, bool *inserted, db_error_t *err)
    __attribute__((warn_unused_result));

#endif
