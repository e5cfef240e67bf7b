/* db.h - one PostgreSQL session: connect with timeouts and the tenant search_path, run statements, classify errors. */
#ifndef MES_DB_H
#define MES_DB_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "config.h"
#include "event.h"

/* What went wrong with a statement, in SPEC 4 terms. */
typedef struct {
    char sqlstate[6];  /* "" when there is none (lost connection) */
    char message[512]; /* "SQLSTATE 23505: duplicate key ..." - safe to put in a DLQ record */
    error_class_t cls; /* ERR_DATABASE or ERR_TIMEOUT */
    bool retryable;    /* transient: retry the same work later */
    bool outage;       /* the database is unreachable or restarting: pause, reconnect, retry; never burn deliveries */
} db_error_t;

/* A session; owned by exactly one thread at a time. */
typedef struct {
    PGconn *pg;
    const config_t *cfg;
    char schema_ident[80]; /* quoted identifier, e.g. "daisi_acme" */
    bool store_prepared;   /* the store's statements are prepared on this session */
} db_conn_t;

/* Connects, sets statement_timeout, lock_timeout and search_path to the tenant schema (which need not exist yet).
 * Returns NULL and fills err on failure. Caller owns the result (db_close). */
db_conn_t *db_connect(const config_t *cfg, db_error_t *err);
void db_close(db_conn_t *c); /* NULL-safe */

/* The session budget (database.maxConnections): from now on db_connect refuses (as an outage) a session that would
 * make more than max open at once. Set once at startup, before any session. */
void db_budget_set(int max);
int db_sessions_open(void); /* sessions open right now */

/* What a thread that waits on PostgreSQL while it holds JetStream messages calls every every_ms: in-progress acks,
 * so their ack wait never expires on work still in hand (db_keepalive_every_ms). fn may be NULL. */
typedef struct {
    void (*fn)(void *ctx);
    void *ctx;
    int64_t every_ms;
} db_keepalive_t;

/* True when ka (may be NULL, or without fn) is due: every_ms have passed since last_ms (clock_mono_ms). The caller
 * then calls ka->fn(ka->ctx), outside any lock it holds, and sets last_ms to the time. */
bool db_keepalive_due(const db_keepalive_t *ka, int64_t last_ms);

/* A fixed set of sessions shared by several threads (the writers' lanes, the DLQ workers and maintenance): a thread
 * holds one only while it talks to PostgreSQL and waits for one rather than opening its own, so the sessions of a
 * process are bounded by the sum of its pools' sizes. */
typedef struct db_pool db_pool_t;
db_pool_t *db_pool_create(int size);
void db_pool_destroy(db_pool_t *p); /* NULL-safe; closes its sessions; none may be held any more */
/* Takes one of the pool's sessions, waiting while all are held: up to wait_ms (< 0: until *stop is set), calling
 * the keepalive (may be NULL) meanwhile. Returns the slot, or NULL when the wait ended first.
 * The session in the slot may be missing or broken: db_wait_usable(slot, ...) reconnects it in place. */
db_conn_t **db_pool_acquire(db_pool_t *p, int64_t wait_ms, const atomic_bool *stop, const db_keepalive_t *ka)
    __attribute__((warn_unused_result));
void db_pool_release(db_pool_t *p, db_conn_t **slot); /* NULL-safe */
/* True when the session is usable (cheap: looks at the socket state, no round trip). */
bool db_ok(const db_conn_t *c);
/* Round trip: true when the server answers and takes writes (false on a standby or a read-only server). */
bool db_ping(db_conn_t *c);

/* Runs sql with text parameters. On success returns the result (caller PQclear's it). On failure returns NULL and
 * fills err. */
PGresult *db_exec(db_conn_t *c, const char *sql, int nparams, const char *const *params, db_error_t *err);
/* db_exec for commands without parameters or interesting results. Returns 0 or -1. */
int db_command(db_conn_t *c, const char *sql, db_error_t *err) __attribute__((warn_unused_result));

/* Makes *c a usable session: reconnects with backoff (100 ms doubling to 5 s) until it works or *stop is set. A
 * session this thread reconnected here less than 10 s ago that is broken again is redialled only after a pause
 * (100 ms doubling to 5 s), so a server that accepts sessions but refuses the work (25006 on a standby) is not
 * hammered.
 * While waiting it calls the keepalive (may be NULL), so messages the caller holds stay alive (in-progress acks)
 * instead of being redelivered. `who` names the caller in the log. Returns false when stopping first. */
bool db_wait_usable(db_conn_t **c, const config_t *cfg, const atomic_bool *stop, const db_keepalive_t *ka,
                    const char *who);

/* For a failed connect's message: a short hint when retrying cannot help (TLS verification or TLS files: wrong CA,
 * host name not in the certificate, unreadable sslrootcert/sslcert/sslkey, ssl off on a server that must speak TLS),
 * else NULL. Startup stops on these at once instead of retrying until its deadline. */
const char *db_connect_unfixable(const char *message);

/* How often a thread waiting for PostgreSQL sends in-progress acks for messages with that ack wait: a third of it,
 * at most every 5 s. */
int64_t db_keepalive_every_ms(int64_t ack_wait_ms);

/* Best-effort ROLLBACK after a failed transaction (no-op on a broken session). */
void db_rollback(db_conn_t *c);

/* Fills err from a failed result (or the connection state when res is NULL). */
void db_error_from(db_error_t *err, const PGconn *pg, const PGresult *res);
/* Classification of a SQLSTATE (SPEC 4); exposed for unit tests. */
void db_classify(const char *sqlstate, bool conn_bad, db_error_t *err);

#endif
