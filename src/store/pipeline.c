/* pipeline.c - the executor: one transaction per call, every planned statement sent in one libpq pipeline (BEGIN,
 * the statements, COMMIT, one sync: one round trip), then the results read back in order and applied to the items
 * (which updates found their row, which onboarding created its contact). Statements are prepared once per session. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "internal.h"
#include "sql.h"

#define OP_CTL (-1)                   /* BEGIN / COMMIT / ROLLBACK / the contacts lock: no metrics of their own */
#define LOCK_STMT "mes_contacts_lock" /* SQL_CONTACTS_LOCK, prepared like the writes (planned once per session) */

/* Prepares one statement on the session. Parameter types come from the statement's own casts ($k::text[]). */
static int prepare(db_conn_t *c, const char *name, const char *sql, db_error_t *err)
{
    PGresult *r = PQprepare(c->pg, name, sql, 0, NULL);
    int rc = r && PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : -1;
    if (rc != 0)
        db_error_from(err, c->pg, r);
    PQclear(r);
    return rc;
}

static int prepare_all(db_conn_t *c, db_error_t *err)
{
    /* Every writer statement finds its rows by key through a unique index. The planner guesses the rows of the
     * parameters and would switch to sequential scans once a table has some thousands of rows (see sql.h), making
     * each batch cost O(table); on the writer sessions a sequential scan is never the right plan. */
    if (db_command(c, "SET enable_seqscan = off", err) != 0)
        return -1;
    /* And every statement runs its generic plan from the first execution. With custom plans PostgreSQL sees the
     * parameters' real row counts, finds a plan cheaper than the generic one's guess of 10 rows per array, and so
     * never switches: contacts.update was planned again on every call of a paced load, 0.2 ms each, 72% of its time
     * (pg_stat_statements, 2026-12-07). The generic plans are the ones the statements are written for (sql.h). */
    if (db_command(c, "SET plan_cache_mode = force_generic_plan", err) != 0)
        return -1;
    if (prepare(c, LOCK_STMT, SQL_CONTACTS_LOCK, err) != 0)
        return -1;
    for (int st = 0; st < ST_COUNT; st++)
        if (prepare(c, store_statement_name(st), store_stmt_info[st].sql, err) != 0)
            return -1;
    c->store_prepared = true;
    return 0;
}

/* One statement in flight: its result is read after the sync; `first`/`count` index the round's items in s->opidx. */
struct store_op {
    int kind; /* op_kind_t, or OP_CTL */
    db_op_t op;
    db_entity_t ent;
    uint32_t first, count;
};

static bool ops_grow(store_scratch_t *s, size_t nidx)
{
    store_op_t *o = buf_array_grow(s->ops, &s->ops_cap, s->nops + 1, sizeof *o, 32);
    if (!o)
        return false;
    s->ops = o;
    uint32_t *x = buf_array_grow(s->opidx, &s->opidx_cap, s->nopidx + nidx, sizeof *x, 256);
    if (!x)
        return false;
    s->opidx = x;
    return true;
}

/* Queues a transaction-control command: cmd's text, or the prepared statement `prepared` when not NULL. */
static int send_ctl(db_conn_t *c, store_scratch_t *s, const char *cmd, const char *prepared, db_error_t *err)
{
    if (!ops_grow(s, 0) || !(prepared ? PQsendQueryPrepared(c->pg, prepared, 0, NULL, NULL, NULL, 0)
                                      : PQsendQueryParams(c->pg, cmd, 0, NULL, NULL, NULL, NULL, 0))) {
        db_error_from(err, c->pg, NULL);
        return -1;
    }
    s->ops[s->nops++] = (store_op_t){.kind = OP_CTL};
    return 0;
}

static void out_of_memory(db_error_t *err, size_t n)
{
    snprintf(err->message, sizeof err->message, "out of memory building a batch of %zu rows", n);
    err->sqlstate[0] = '\0';
    err->cls = ERR_UNKNOWN;
    err->retryable = true;
    err->outage = false;
}

/* Queues one planned statement; its items are remembered for the result. */
static int send(db_conn_t *c, store_scratch_t *s, const store_stmt_t *st, db_error_t *err)
{
    if (!ops_grow(s, st->rows)) {
        out_of_memory(err, st->rows);
        return -1;
    }
    static const int binary[STORE_MAX_COLS] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    _Static_assert(STORE_MAX_COLS == 18, "one format (binary) per column");
    if (!PQsendQueryPrepared(c->pg, store_statement_name(st->st), st->nparams, st->values, st->lengths, binary, 0)) {
        db_error_from(err, c->pg, NULL);
        return -1;
    }
    const stmt_info_t *info = &store_stmt_info[st->st];
    store_op_t *o = &s->ops[s->nops++];
    *o = (store_op_t){.kind = (int)info->kind,
                      .op = info->op,
                      .ent = info->ent,
                      .first = (uint32_t)s->nopidx,
                      .count = (uint32_t)st->rows};
    memcpy(s->opidx + s->nopidx, st->idx, st->rows * sizeof *st->idx);
    s->nopidx += st->rows;
    return 0;
}

static bool same_owner(const store_scratch_t *s, uint32_t i, const store_item_t *it, const char *agent, int alen,
                       const char *phone, int plen)
{
    const char *p = s->phones + (size_t)i * (PAYLOAD_MAX_PHONE + 1);
    const str_t *a = &it->ev->u.msg.agent_id;
    return a->len == (uint32_t)alen && memcmp(a->p, agent, (size_t)alen) == 0 && strlen(p) == (size_t)plen &&
           memcmp(p, phone, (size_t)plen) == 0;
}

/* Applies one statement's result to its items. */
static void apply_result(const store_scratch_t *s, const store_op_t *o, const PGresult *res, store_item_t *items,
                         size_t n)
{
    const uint32_t *idx = s->opidx + o->first;
    if (o->kind == OP_FOUND) {
        for (uint32_t j = 0; j < o->count; j++)
            items[idx[j]].result = ERR_NOT_FOUND;
        for (int t = 0; t < PQntuples(res); t++) {
            long i = strtol(PQgetvalue(res, t, 0), NULL, 10);
            if (i >= 0 && (size_t)i < n)
                items[i].result = ERR_NONE;
        }
    } else if (o->kind == OP_ONB_CREATE) {
        for (int t = 0; t < PQntuples(res); t++) {
            const char *agent = PQgetvalue(res, t, 0), *phone = PQgetvalue(res, t, 1);
            int alen = PQgetlength(res, t, 0), plen = PQgetlength(res, t, 1);
            for (uint32_t j = 0; j < o->count; j++)
                if (same_owner(s, idx[j], &items[idx[j]], agent, alen, phone, plen)) {
                    items[idx[j]].onb = ONB_SUCCESS_CREATED;
                    break;
                }
        }
    }
}

/* Keeps the caller's messages alive while the session waits on PostgreSQL (a lock wait, a long group): the session is
 * nonblocking during a commit and every wait is a poll() no longer than the keepalive's period. */
typedef struct {
    const db_keepalive_t *ka;
    int64_t last_ms;
} waiter_t;

/* Waits until the socket is ready for events, or until the keepalive is due (then calls it). -1 on a poll error. */
static int wait_socket(db_conn_t *c, short events, waiter_t *w)
{
    if (db_keepalive_due(w->ka, w->last_ms)) {
        w->ka->fn(w->ka->ctx);
        w->last_ms = clock_mono_ms();
    }
    int timeout = -1; /* no keepalive: until the socket is ready */
    if (w->ka && w->ka->fn) {
        int64_t due = w->last_ms + w->ka->every_ms - clock_mono_ms();
        timeout = due < 1 ? 1 : (int)due;
    }
    struct pollfd p = {.fd = PQsocket(c->pg), .events = events};
    if (poll(&p, 1, timeout) < 0 && errno != EINTR)
        return -1;
    return 0;
}

/* The next result: sends what libpq still buffers and reads until a whole result is in, never blocking longer than
 * the keepalive's period. A broken session ends the wait: PQgetResult then reports it. */
static PGresult *next_result(db_conn_t *c, waiter_t *w)
{
    while (PQisBusy(c->pg)) {
        int pending = PQflush(c->pg); /* 1: output left (the server reads it as it goes) */
        if (pending < 0 || wait_socket(c, pending ? POLLIN | POLLOUT : POLLIN, w) != 0 || !PQconsumeInput(c->pg))
            break;
    }
    return PQgetResult(c->pg);
}

/* Reads every queued statement's result and the sync. Each statement's duration is the time since the previous
 * result arrived, so the observations add up to the batch's wall time. Returns 0, or -1 with the first error. */
static int collect(db_conn_t *c, store_scratch_t *s, store_item_t *items, size_t n, double t_sent, waiter_t *w,
                   db_error_t *err)
{
    int rc = 0;
    double prev = t_sent;
    for (size_t k = 0; k < s->nops; k++) {
        PGresult *res = next_result(c, w);
        if (!res) {
            db_error_from(err, c->pg, NULL);
            return -1; /* the session is gone; the caller drops it */
        }
        ExecStatusType st = PQresultStatus(res);
        double now = clock_mono_s();
        bool ok = st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK;
        if (s->ops[k].kind != OP_CTL) /* BEGIN, lock and COMMIT time count toward the next statement / the sync */
            metrics_db_duration(s->ops[k].op, s->ops[k].ent, ok, now - prev);
        if (s->ops[k].kind != OP_CTL || k == 0)
            prev = now;
        if (ok && rc == 0)
            apply_result(s, &s->ops[k], res, items, n);
        else if (!ok && rc == 0 && st != PGRES_PIPELINE_ABORTED) {
            db_error_from(err, c->pg, res);
            rc = -1;
        }
        PQclear(res);
        while ((res = PQgetResult(c->pg)) != NULL) /* the NULL that ends each statement's results */
            PQclear(res);
    }
    PGresult *sync = next_result(c, w);
    if (!sync || PQresultStatus(sync) != PGRES_PIPELINE_SYNC) {
        if (rc == 0)
            db_error_from(err, c->pg, sync);
        rc = -1;
    }
    PQclear(sync);
    return rc;
}

/* One round trip per batch: BEGIN, every statement, COMMIT, then one sync, and the results. A statement that cannot
 * even be queued rolls back whatever was (never commit part of a batch). The session is nonblocking meanwhile, so
 * queueing never blocks on a full socket and every wait keeps the caller's messages alive (next_result). Leaves
 * pipeline mode, blocking mode, and the session outside any transaction. */
static int pipeline_commit(db_conn_t *c, store_scratch_t *s, store_item_t *items, size_t n, const db_keepalive_t *ka,
                           db_error_t *err)
{
    waiter_t w = {ka, clock_mono_ms()};
    if (PQsetnonblocking(c->pg, 1) != 0 || !PQenterPipelineMode(c->pg)) {
        db_error_from(err, c->pg, NULL);
        (void)PQsetnonblocking(c->pg, 0);
        return -1;
    }
    int rc = -1;
    bool queued = send_ctl(c, s, "BEGIN", NULL, err) == 0;
    store_stmt_t st;
    int more = 0;
    bool contacts_locked = false;
    while (queued && (more = store_plan_next(s, &st)) == 1) {
        if (store_stmt_info[st.st].locked && !contacts_locked) {
            queued = send_ctl(c, s, NULL, LOCK_STMT, err) == 0;
            contacts_locked = true;
        }
        queued = queued && send(c, s, &st, err) == 0;
    }
    if (queued && more < 0) {
        out_of_memory(err, n);
        queued = false;
    }
    queued = queued && send_ctl(c, s, "COMMIT", NULL, err) == 0;
    if (queued) {
        metrics_onboarding_queue_add((long)s->onboarding);
        if (PQpipelineSync(c->pg))
            rc = collect(c, s, items, n, clock_mono_s(), &w, err);
        else
            db_error_from(err, c->pg, NULL);
        metrics_onboarding_queue_add(-(long)s->onboarding);
    } else if (send_ctl(c, s, "ROLLBACK", NULL, err) == 0 && PQpipelineSync(c->pg)) {
        db_error_t ignored;
        (void)collect(c, s, items, n, clock_mono_s(), &w, &ignored);
    }
    if (!PQexitPipelineMode(c->pg) && rc == 0) {
        db_error_from(err, c->pg, NULL);
        rc = -1;
    }
    if (PQsetnonblocking(c->pg, 0) != 0 && rc == 0) { /* flushes what is left, if anything */
        db_error_from(err, c->pg, NULL);
        rc = -1;
    }
    /* After an error inside BEGIN the session sits in an aborted transaction until ROLLBACK. */
    if (db_ok(c) && PQtransactionStatus(c->pg) != PQTRANS_IDLE)
        db_rollback(c);
    return rc;
}

int store_commit(db_conn_t *c, store_item_t *items, size_t n, store_scratch_t *s, const db_keepalive_t *ka,
                 db_error_t *err)
{
    for (size_t i = 0; i < n; i++) {
        items[i].result = ERR_NONE;
        items[i].onb =
            (items[i].onboard && items[i].ev->type == ET_MESSAGES_UPSERT) ? ONB_SKIPPED_NOT_APPLICABLE : ONB_COUNT;
    }
    if (n == 0)
        return 0;
    if (!db_ok(c)) {
        db_error_from(err, c ? c->pg : NULL, NULL);
        return -1;
    }
    if (store_plan_begin(s, items, n) != 0) {
        out_of_memory(err, n);
        return -1;
    }
    if (!c->store_prepared && prepare_all(c, err) != 0)
        return -1;
    s->nops = s->nopidx = 0;
    int rc = pipeline_commit(c, s, items, n, ka, err);
    if (rc != 0)
        for (size_t i = 0; i < n; i++)
            if (items[i].onb != ONB_COUNT)
                items[i].onb = ONB_ERROR_DB;
    return rc;
}
