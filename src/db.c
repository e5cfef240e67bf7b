/* db.c - PostgreSQL sessions: connect with session timeouts and the tenant search_path; SPEC 4 error classes. */
#include "db.h"

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
    if (strncmp(s, "08", 2) == 0 || strncmp(s, "53", 2) == 0 || strcmp(s, "57P01") == 0 ||
        strcmp(s, "57P02") == 0 || strcmp(s, "57P03") == 0) {
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

db_conn_t *db_connect(const config_t *cfg, db_error_t *err)
{
    db_conn_t *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err->message, sizeof err->message, "out of memory");
        err->sqlstate[0] = '\0';
        db_classify(NULL, true, err);
        return NULL;
    }
    c->cfg = cfg;
    snprintf(c->schema_ident, sizeof c->schema_ident, "\"%s\"", cfg->schema); /* schema is [a-z0-9_]: safe */
    /* connect_timeout bounds a hung TCP connect; keepalives detect a dead server under a long-idle session. */
    const char *keys[] = {"dbname", "connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval",
                          "keepalives_count", "application_name", NULL};
    const char *vals[] = {cfg->postgres_dsn, "5", "1", "10", "5", "3", "message-event-service", NULL};
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
}

bool db_ok(const db_conn_t *c)
{
    return c && c->pg && PQstatus(c->pg) == CONNECTION_OK;
}

bool db_ping(db_conn_t *c)
{
    db_error_t err;
    PGresult *r = db_exec(c, "SELECT 1", 0, NULL, &err);
    if (!r)
        return false;
    PQclear(r);
    return true;
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

bool db_wait_usable(db_conn_t **c, const config_t *cfg, const atomic_bool *stop, void (*keepalive)(void *ctx),
                    void *ctx, int64_t ack_wait_ms, const char *who)
{
    int64_t keep_every_ms = ack_wait_ms / 3 < 5000 ? ack_wait_ms / 3 : 5000;
    int64_t wait = 100, last_keepalive = clock_mono_ms();
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
        for (int64_t slept = 0; slept < wait; slept += 100) {
            if (atomic_load(stop))
                return false;
            if (keepalive && clock_mono_ms() - last_keepalive >= keep_every_ms) {
                keepalive(ctx);
                last_keepalive = clock_mono_ms();
            }
            clock_sleep_ms(100);
        }
        wait = clock_backoff_next(wait, 5000);
    }
    return true;
}
