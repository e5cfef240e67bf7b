/* store.h - the tenant schema (migrations, partitions), batched upserts of validated events and the exhausted_events
 * rows (SPEC 3, 5.2, 6). Every SQL statement of the service lives under src/store: migrate.c (schema), rows.c (the
 * rows as column arrays), plan.c (keys, rounds, statements), pipeline.c (one transaction in one round trip),
 * exhausted.c. */
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

/* The most columns a statement's rows have (messages: the row index and 17 fields). */
#define STORE_MAX_COLS 18

/* One statement of a planned transaction: a prepared statement and its parameters, one per column of its rows, each a
 * text[] array in PostgreSQL's binary format (rows.c). */
typedef struct {
    int st;                    /* which statement (store_statement_name) */
    int nparams;               /* columns */
    const char *const *values; /* the parameters; valid until the next store_plan_next */
    const int *lengths;        /* their sizes in bytes */
    const uint32_t *idx;       /* the items its rows were made of, in row order */
    size_t rows;
} store_stmt_t;

/* Per-thread scratch space for planning and sending; reused across batches. Only the store reads its fields. */
typedef struct {
    buf_t cols[STORE_MAX_COLS];           /* the rows of the statement being planned, one array per column */
    const char *col_vals[STORE_MAX_COLS]; /* their data and sizes, as libpq takes them */
    int col_lens[STORE_MAX_COLS];
    int ncols;
    bool cols_bad;   /* a row wrote another number of columns (a bug; the statement is not sent) */
    int rows_rc;     /* what writing the current statement's rows returned */
    uint32_t *order; /* the items of the current entity, sorted by key */
    uint32_t *round; /* each one's round: its rank among the items with the same key */
    uint32_t *idx;   /* the items of the current statement */
    char *phones;    /* cap slots of PAYLOAD_MAX_PHONE + 1: normalised onboarding phones */
    size_t cap;
    /* the plan's cursor (store_plan_begin / store_plan_next) */
    store_item_t *items;
    size_t n;
    int stage;    /* index into plan.c's entity table; past it: onboarding, then done */
    bool planned; /* the current stage's items are ordered */
    uint32_t next_round, rounds;
    size_t m;          /* items of the current stage */
    int sub;           /* statements already yielded over the current rows */
    size_t k;          /* rows of the current statement */
    size_t onboarding; /* onboarding rows of the transaction being planned (for the queue gauge) */
    /* the executor's statements in flight, read back in order */
    store_op_t *ops;
    size_t nops, ops_cap;
    uint32_t *opidx; /* the items of each queued statement */
    size_t nopidx, opidx_cap;
} store_scratch_t;

void store_scratch_init(store_scratch_t *s);
void store_scratch_free(store_scratch_t *s);

/*
 * Plans items[0..n) exactly as store_commit writes them: per entity in a fixed order (chats, chats updates, messages,
 * messages updates, contacts, contacts updates, agents, then onboarding), items naming the same key split into
 * successive rounds in array (stream) order, one multi-row statement per round. Then store_plan_next yields each
 * statement in turn (returns 1, 0 when there are no more, -1 out of memory). store_commit sends what it yields; the
 * handler microbenchmark calls the same two functions without a database. Marks onboarding items' .onb.
 */
int store_plan_begin(store_scratch_t *s, store_item_t *items, size_t n) __attribute__((warn_unused_result));
int store_plan_next(store_scratch_t *s, store_stmt_t *out) __attribute__((warn_unused_result));
/* "mes_st_<st>": the name a statement is prepared under on every writer session. */
const char *store_statement_name(int st);

/*
 * Writes all items in ONE transaction: every planned statement is sent in one libpq pipeline (one round trip; BEGIN
 * first, COMMIT at the sync), so the result equals applying the items one by one in array order. Returns 0 when
 * committed (items[i].result tells not_found), -1 when the transaction failed and was rolled back (err says why; no
 * item was written). While PostgreSQL works (a lock wait, a long group) it calls ka (may be NULL) every ka->every_ms,
 * so the caller's messages are never redelivered because a transaction outlasted their ack wait.
 */
int store_commit(db_conn_t *c, store_item_t *items, size_t n, store_scratch_t *s, const db_keepalive_t *ka,
                 db_error_t *err) __attribute__((warn_unused_result));

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

/* The operator's statements over exhausted_events (exhausted_cli.c), each with its parameters, all text. */
typedef enum {
    EXQ_LIST_TABLE,  /* $1 company, $2 unresolved only, $3 subject (or base), $4 since timestamp, $5 since age, $6
                      * limit: id, created_at, subject, retries, resolved, last_error, matched (newest first) */
    EXQ_LIST_JSON,   /* the same filters: one row, the JSON array of the whole rows and the number matched */
    EXQ_SHOW,        /* $1 id, $2 company: the row, JSON columns pretty-printed */
    EXQ_SHOW_JSON,   /* $1 id, $2 company: the row as one JSON object */
    EXQ_RESOLVE,     /* $1 id, $2 company, $3 note: marks it resolved, appends the note; returns its id */
    EXQ_REPLAY_IDS,  /* $1 company, $2 id or NULL (every unresolved row): the ids, oldest first */
    EXQ_REPLAY_ROW,  /* $1 id, $2 company, $3 unresolved only; inside a transaction, locks the row (SKIP LOCKED):
                      * subject, original encoding, original, truncated, source stream, source sequence, item? */
    EXQ_REPLAY_MARK, /* $1 id, $2 company, $3 note: marks a replayed row resolved */
} store_exhausted_query_t;

/* Runs one of them: the result (PQclear it) or NULL with err filled. */
PGresult *store_exhausted_query(db_conn_t *c, store_exhausted_query_t q, const char *const *params, db_error_t *err);

#endif
