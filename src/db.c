/* db.c - PostgreSQL sessions: connect with session timeouts and the tenant search_path; SPEC 4 error classes. */
#include "db.h"

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "log.h"
#include "secrets.h"

void db_classify(const char *sqlstate, bool conn_bad, db_error_t *err)
{
    const char *s = sqlstate ? sqlstate : "";
    err->cls = ERR_DATABASE;
    err->retryable = true;
    err->outage = false;
    if (conn_bad || s[0] == '\0') {
        err->outage = true; /* lost connection: no SQLSTATE at all */
        return;
    }
    /* 08 connection exceptions, 53 insufficient resources, 57P01-03 the server shutting down, crashing or still
     * starting (a primary stopped for a switchover sends 57P01), and 25006 read_only_sql_transaction: the session
     * reached a server that cannot take writes (a standby, or a primary demoted or fenced by an HA tool). None of
     * them says anything about the events: the writer drops the session, reconnects (a multi-host DSN with
     * target_session_attrs=read-write then finds the new primary) and retries the batch in hand. */
    if (strncmp(s, "08", 2) == 0 || strncmp(s, "53", 2) == 0 || strcmp(s, "57P01") == 0 || strcmp(s, "57P02") == 0 ||
        strcmp(s, "57P03") == 0 || strcmp(s, "25006") == 0) {
        err->outage = true;
        return;
    }
    if (strcmp(s, "57014") == 0 || strcmp(s, "55P03") == 0) { /* statement_timeout, lock_timeout */
        err->cls = ERR_TIMEOUT;
        return;
    }
    if (strcmp(s, "40001") == 0 || strcmp(s, "40P01") == 0)
        return;
    /* Data errors will fail the same way every time: 22 (data exception), 23 (integrity), 21 (cardinality),
     * 42 (bad statement or object) and XX/others that are not transient are treated as permanent only for 21-23;
     * everything else stays retryable so an operator mistake (e.g. a dropped table) does not become DLQ records at
     * once. */
    if (strncmp(s, "22", 2) == 0 || strncmp(s, "23", 2) == 0 || strncmp(s, "21", 2) == 0)
        err->retryable = false;
}

void db_error_from(db_error_t *err, const PGconn *pg, const PGresult *res)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = res ? PQresultErrorMessage(res) : NULL;
    bool bad = pg == NULL || PQstatus(pg) != CONNECTION_OK;
    if (!msg || !*msg)
        msg = pg ? PQerrorMessage(pg) : "no connection";
    snprintf(err->sqlstate, sizeof err->sqlstate, "%s", state ? state : "");
    if (state)
        snprintf(err->message, sizeof err->message, "SQLSTATE %s: %s", state, msg);
    else
        snprintf(err->message, sizeof err->message, "database connection: %s", msg);
    /* libpq may echo a DSN or a fragment of its password (issue 17): the message is masked before it reaches a
     * log, a DLQ record or the CLI's stderr. */
    char masked[sizeof err->message];
    secrets_mask(err->message, masked, sizeof masked);
    memcpy(err->message, masked, sizeof masked);
    /* libpq messages end with a newline; keep records and logs on one line. */
    for (char *p = err->message; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    size_t n = strlen(err->message);
    while (n > 0 && err->message[n - 1] == ' ')
        err->message[--n] = '\0';
    db_classify(state, bad, err);
}

static int set_session(db_conn_t *c, db_error_t *err)
{
    char st[32], lt[32];
    snprintf(st, sizeof st, "%lld", (long long)c->cfg->statement_timeout_ms);
    snprintf(lt, sizeof lt, "%lld", (long long)c->cfg->lock_timeout_ms);
    const char *params[3] = {st, lt, c->schema_ident};
    PGresult *r = db_exec(c,
                          "SELECT set_config('statement_timeout', $1, false), set_config('lock_timeout', $2, false),"
                          " set_config('search_path', $3, false)",
                          3, params, err);
    if (!r)
        return -1;
    PQclear(r);
    return 0;
}

/* The process's session budget (database.maxConnections). Every session is made by db_connect and ended by
 * db_close, so counting there makes exceeding the budget impossible, whatever a caller does: the pools are sized to
 * fit it, and a session beyond it is refused like an outage (the caller waits and tries again). */
static atomic_int sessions_open;          /* any thread that connects or closes */
static atomic_int sessions_max = INT_MAX; /* set by main at startup, before any session */

void db_budget_set(int max)
{
    atomic_store(&sessions_max, max > 0 ? max : INT_MAX);
}

int db_sessions_open(void)
{
    return atomic_load(&sessions_open);
}

db_conn_t *db_connect(const config_t *cfg, db_error_t *err)
{
    if (atomic_fetch_add(&sessions_open, 1) >= atomic_load(&sessions_max)) {
        atomic_fetch_sub(&sessions_open, 1);
        snprintf(err->message, sizeof err->message, "connection budget (database.maxConnections = %d) in use",
                 atomic_load(&sessions_max));
        err->sqlstate[0] = '\0';
        db_classify(NULL, true, err);
        return NULL;
    }
    db_conn_t *c = calloc(1, sizeof *c);
    if (!c) {
        atomic_fetch_sub(&sessions_open, 1);
        snprintf(err->message, sizeof err->message, "out of memory");
        err->sqlstate[0] = '\0';
        db_classify(NULL, true, err);
        return NULL;
    }
    c->cfg = cfg;
    snprintf(c->schema_ident, sizeof c->schema_ident, "\"%s\"", cfg->schema); /* schema is [a-z0-9_]: safe */
    /* Defaults first, the operator's DSN last: libpq applies the keywords in array order and the expanded dbname
     * (the whole DSN) overrides what came before it, so every key the DSN names (sslmode, sslrootcert, host lists,
     * target_session_attrs, connect_timeout, ...) reaches libpq untouched, and these only fill what it leaves out.
     * connect_timeout bounds a hung TCP connect (per host of a multi-host DSN); keepalives detect a dead server under
     * an idle session; tcp_user_timeout ends a session whose sent data stays unacknowledged (a primary host that
     * vanished mid-COMMIT), which keepalives cannot detect while data is in flight: without it the writer would sit
     * in the kernel's retransmission timeout (~15 min) instead of failing over. */
    const char *keys[] = {"connect_timeout",     "keepalives",       "keepalives_idle",
                          "keepalives_interval", "keepalives_count", "tcp_user_timeout",
                          "application_name",    "dbname",           NULL};
    const char *vals[] = {"5", "1", "10", "5", "3", "30000", "message-event-service", cfg->postgres_dsn, NULL};
    c->pg = PQconnectdbParams(keys, vals, 1);
    if (!c->pg || PQstatus(c->pg) != CONNECTION_OK) {
        db_error_from(err, c->pg, NULL);
        db_close(c);
        return NULL;
    }
    if (set_session(c, err) != 0) {
        db_close(c);
        return NULL;
    }
    return c;
}

void db_close(db_conn_t *c)
{
    if (!c)
        return;
    if (c->pg)
        PQfinish(c->pg);
    free(c);
    atomic_fetch_sub(&sessions_open, 1);
}

/* ---- pools ------------------------------------------------------------------------------------------------ */

/* Shared by the threads of its users (lanes, DLQ workers, advisory reader, maintenance); made and destroyed by main
 * while none of them runs. */
struct db_pool {
    pthread_mutex_t mu;
    pthread_cond_t freed;
    int size;          /* set at create, read-only after */
    db_conn_t **conns; /* conns[i] belongs to whoever holds slot i (busy[i]), used without mu; idle: read under mu */
    bool *busy;        /* under mu */
};

db_pool_t *db_pool_create(int size)
{
    db_pool_t *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->size = size;
    p->conns = calloc((size_t)size, sizeof *p->conns);
    p->busy = calloc((size_t)size, sizeof *p->busy);
    if (!p->conns || !p->busy) {
        free(p->conns);
        free(p->busy);
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->freed, NULL);
    return p;
}

void db_pool_destroy(db_pool_t *p)
{
    if (!p)
        return;
    for (int i = 0; i < p->size; i++)
        db_close(p->conns[i]);
    free(p->conns);
    free(p->busy);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->freed);
    free(p);
}

bool db_keepalive_due(const db_keepalive_t *ka, int64_t last_ms)
{
    return ka && ka->fn && clock_mono_ms() - last_ms >= ka->every_ms;
}

db_conn_t **db_pool_acquire(db_pool_t *p, int64_t wait_ms, const atomic_bool *stop, const db_keepalive_t *ka)
{
    int64_t start = clock_mono_ms(), last_keepalive = start;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        /* A connected idle session first (its prepared statements are there already), else any idle slot. */
        int pick = -1;
        for (int i = 0; i < p->size; i++)
            if (!p->busy[i] && (pick < 0 || (p->conns[i] && !p->conns[pick])))
                pick = i;
        if (pick >= 0) {
            p->busy[pick] = true;
            pthread_mutex_unlock(&p->mu);
            return &p->conns[pick];
        }
        int64_t now = clock_mono_ms();
        if ((wait_ms >= 0 && now - start >= wait_ms) || (stop && atomic_load(stop)))
            break;
        if (db_keepalive_due(ka, last_keepalive)) {
            pthread_mutex_unlock(&p->mu); /* keepalive publishes to NATS: never under the pool's lock */
            ka->fn(ka->ctx);
            last_keepalive = clock_mono_ms();
            pthread_mutex_lock(&p->mu);
            continue;
        }
        struct timespec ts = clock_deadline_in_ms(100);
        pthread_cond_timedwait(&p->freed, &p->mu, &ts);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

void db_pool_release(db_pool_t *p, db_conn_t **slot)
{
    if (!p || !slot)
        return;
    pthread_mutex_lock(&p->mu);
    p->busy[slot - p->conns] = false;
    pthread_cond_signal(&p->freed);
    pthread_mutex_unlock(&p->mu);
}

bool db_ok(const db_conn_t *c)
{
    return c && c->pg && PQstatus(c->pg) == CONNECTION_OK;
}

bool db_ping(db_conn_t *c)
{
    db_error_t err;
    /* A session on a standby (or a server made read-only) answers, but every write would fail with 25006. */
    PGresult *r =
        db_exec(c, "SELECT 1 WHERE pg_catalog.current_setting('transaction_read_only') = 'off'", 0, NULL, &err);
    if (!r)
        return false;
    bool writable = PQntuples(r) == 1;
    PQclear(r);
    return writable;
}

PGresult *db_exec(db_conn_t *c, const char *sql, int nparams, const char *const *params, db_error_t *err)
{
    if (!db_ok(c)) {
        db_error_from(err, c ? c->pg : NULL, NULL);
        return NULL;
    }
    PGresult *r = PQexecParams(c->pg, sql, nparams, NULL, params, NULL, NULL, 0);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return r;
    db_error_from(err, c->pg, r);
    PQclear(r);
    return NULL;
}

void db_rollback(db_conn_t *c)
{
    if (!db_ok(c))
        return;
    PGresult *r = PQexec(c->pg, "ROLLBACK");
    PQclear(r);
}

int db_command(db_conn_t *c, const char *sql, db_error_t *err)
{
    /* Simple-query protocol: allows several statements (migrations) in one string. */
    if (!db_ok(c)) {
        db_error_from(err, c ? c->pg : NULL, NULL);
        return -1;
    }
    PGresult *r = PQexec(c->pg, sql);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        PQclear(r);
        return 0;
    }
    db_error_from(err, c->pg, r);
    PQclear(r);
    return -1;
}

const char *db_connect_unfixable(const char *message)
{
    /* libpq 15's texts (fe-secure-openssl.c, fe-connect.c). "SSL SYSCALL error" and an EOF during the handshake are
     * not here: a server going down mid-handshake is an outage like any other. */
    static const struct {
        const char *needle, *hint;
    } tls[] = {
        {"certificate verify failed", "the server certificate does not verify against sslrootcert (wrong CA, or an "
                                      "expired or self-signed server certificate)"},
        {"does not match host name", "the server certificate does not name the host of the DSN (verify-full checks "
                                     "the host name or IP against the certificate's SAN/CN)"},
        {"root certificate file", "sslrootcert cannot be read"},
        {"could not get home directory to locate root certificate", "sslrootcert is not set"},
        {"could not open certificate file", "sslcert cannot be read"},
        {"could not read certificate file", "sslcert cannot be read"},
        {"private key file", "sslkey is missing, unreadable, too widely readable (must be 0600) or does not match "
                             "sslcert"},
        {"server does not support SSL, but SSL was required", "the server has ssl=off but sslmode requires TLS"},
        {"alert unknown ca", "the server does not trust the client certificate (sslcert)"},
        {"alert bad certificate", "the server rejected the client certificate (sslcert)"},
        {"certificate required", "the server requires a client certificate (sslcert, sslkey)"},
    };
    if (!message)
        return NULL;
    for (size_t i = 0; i < sizeof tls / sizeof tls[0]; i++)
        if (strstr(message, tls[i].needle))
            return tls[i].hint;
    return NULL;
}

/* When a session this thread opened here fails again soon after (a server that accepts sessions but refuses the
 * work: a standby answering 25006, a server out of resources), reconnecting at once would spin. So the thread keeps
 * when it last reconnected and, if that was under REDIAL_WINDOW_MS ago, waits before dialling again, doubling up to
 * the same 5 s cap as a refused connect. A session that lived longer resets it: the first reconnect after a
 * switchover is immediate. Thread-local, because each thread that waits here runs its own loop, on whichever pool
 * session it holds. */
#define REDIAL_WINDOW_MS 10000
static _Thread_local int64_t tl_reconnected_at = INT64_MIN / 2;
static _Thread_local int64_t tl_redial_ms;

/* Sleeps ms in 100 ms steps, keeping held messages alive; false when stop is set. */
static bool pause_ms(int64_t ms, const atomic_bool *stop, const db_keepalive_t *ka, int64_t *last_keepalive)
{
    for (int64_t slept = 0; slept < ms; slept += 100) {
        if (atomic_load(stop))
            return false;
        if (db_keepalive_due(ka, *last_keepalive)) {
            ka->fn(ka->ctx);
            *last_keepalive = clock_mono_ms();
        }
        clock_sleep_ms(ms - slept < 100 ? ms - slept : 100);
    }
    return !atomic_load(stop);
}

int64_t db_keepalive_every_ms(int64_t ack_wait_ms)
{
    return ack_wait_ms / 3 < 5000 ? ack_wait_ms / 3 : 5000;
}

bool db_wait_usable(db_conn_t **c, const config_t *cfg, const atomic_bool *stop, const db_keepalive_t *ka,
                    const char *who)
{
    int64_t wait = 100, last_keepalive = clock_mono_ms();
    if (db_ok(*c))
        return true;
    if (clock_mono_ms() - tl_reconnected_at < REDIAL_WINDOW_MS) {
        tl_redial_ms = tl_redial_ms <= 0 ? 100 : clock_backoff_next(tl_redial_ms, 5000);
        if (!pause_ms(tl_redial_ms, stop, ka, &last_keepalive))
            return false;
    } else {
        tl_redial_ms = 0;
    }
    while (!db_ok(*c)) {
        db_error_t err;
        db_close(*c);
        *c = db_connect(cfg, &err);
        if (*c)
            break;
        if (atomic_load(stop))
            return false;
        log_warn("db", "database unavailable; paused", LF_S("who", who), LF_S("error", err.message),
                 LF_I("retry_in_ms", wait));
        /* Sleep in small steps so stop and keep-alive stay responsive. */
        if (!pause_ms(wait, stop, ka, &last_keepalive))
            return false;
        wait = clock_backoff_next(wait, 5000);
    }
    tl_reconnected_at = clock_mono_ms();
    return true;
}
