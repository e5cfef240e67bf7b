/* itest.h - shared set-up for integration tests: one NATS, one PostgreSQL and the service for a tenant. */
#ifndef MES_ITEST_H
#define MES_ITEST_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "testlib.h"

static h_nats_t N;
static h_pg_t P;
static h_svc_t S;

/* On a failed test, show the end of the service log: CI output then says what the service saw. */
static void it_dump_log(void)
{
    if (!testlib_failed() || S.pid <= 0)
        return;
    char *log = h_svc_log(&S);
    if (!log)
        return;
    /* Keep the whole log (the temp dir is removed at exit) and show its end. */
    char keep[128];
    snprintf(keep, sizeof keep, "/tmp/mes-failed-test-%d.log", (int)getpid());
    FILE *f = fopen(keep, "w");
    if (f) {
        fputs(log, f);
        fclose(f);
    }
    size_t n = strlen(log), lines = 0;
    const char *p = log + n;
    while (p > log && lines < 61)
        if (*--p == '\n')
            lines++;
    fprintf(stderr, "--- last service log lines (whole log kept in %s) ---\n%s\n", keep, p);
    free(log);
}

/* Runs one query against the test's PostgreSQL every every_ms on a session of its own, in a thread, and hands each
 * result to on_result (in that thread) until it_sampler_stop: what a test watches while the service works (its
 * sessions, its lock waits). */
typedef struct {
    const char *sql;
    int every_ms;
    void (*on_result)(void *ctx, const PGresult *r);
    void *ctx;
    long samples; /* results handed over; read after it_sampler_stop */
    atomic_bool stop;
    pthread_t thread;
} it_sampler_t;

static inline void *it_sampler_run(void *arg)
{
    it_sampler_t *s = arg;
    PGconn *pg = PQconnectdb(P.dsn);
    while (!atomic_load(&s->stop) && PQstatus(pg) == CONNECTION_OK) {
        PGresult *r = PQexec(pg, s->sql);
        if (PQresultStatus(r) == PGRES_TUPLES_OK) {
            s->on_result(s->ctx, r);
            s->samples++;
        }
        PQclear(r);
        h_sleep_ms(s->every_ms);
    }
    PQfinish(pg);
    return NULL;
}

static inline void it_sampler_start(it_sampler_t *s)
{
    atomic_init(&s->stop, false);
    s->samples = 0;
    REQUIRE(pthread_create(&s->thread, NULL, it_sampler_run, s) == 0);
}

static inline void it_sampler_stop(it_sampler_t *s)
{
    atomic_store(&s->stop, true);
    pthread_join(s->thread, NULL);
}

/* Starts NATS, PostgreSQL and the service for `co`; waits for "Both consumers started successfully". */
static inline bool it_up(const char *co, const char *const *env)
{
    bool started = h_nats_start(&N) && h_pg_start(&P);
    atexit(it_dump_log); /* after the harness registered its cleanup: atexit runs LIFO, so the log is still there */
    if (!started)
        return false;
    if (!h_svc_start(&S, co, &N, &P, env))
        return false;
    if (!h_svc_wait_ready(&S, 60000)) {
        char *log = h_svc_log(&S);
        fprintf(stderr, "service did not start; log:\n%s\n", log ? log : "(none)");
        free(log);
        return false;
    }
    return true;
}

/* Publishes data on <base>.<co>. */
static inline bool it_pub(const char *base, const char *co, const char *data, const char *msg_id)
{
    char subject[256];
    snprintf(subject, sizeof subject, "%s.%s", base, co);
    return h_publish(&N, subject, data, strlen(data), msg_id);
}

/* A session of the test's own holding SHARE locks (what inserts and updates wait for) on `tables` (comma-separated)
 * in an open transaction until it_unlock: the service's writes to them wait in PostgreSQL meanwhile. SHARE locks of
 * two sessions do not conflict, so a second session can lock a table the first holds. NULL when it cannot. */
static inline PGconn *it_lock_tables(const char *tables)
{
    PGconn *c = PQconnectdb(P.dsn);
    if (PQstatus(c) != CONNECTION_OK) {
        PQfinish(c);
        return NULL;
    }
    char sql[512];
    snprintf(sql, sizeof sql, "BEGIN; LOCK TABLE %s IN SHARE MODE", tables);
    PGresult *r = PQexec(c, sql);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok) {
        PQfinish(c);
        return NULL;
    }
    return c;
}

/* Ends it_lock_tables' transaction and session. */
static inline bool it_unlock(PGconn *c)
{
    PGresult *r = PQexec(c, "COMMIT");
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    PQfinish(c);
    return ok;
}

/* A durable consumer of wa_events_stream as JetStream reports it now. */
typedef struct {
    long long pending, ack_pending;
} it_durable_t;

static inline bool it_durable_state(const char *durable, it_durable_t *st)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    if (js_GetConsumerInfo(&ci, h_nats_jsctx(&N), "wa_events_stream", durable, NULL, &jerr) != NATS_OK || !ci)
        return false;
    st->pending = (long long)ci->NumPending;
    st->ack_pending = (long long)ci->NumAckPending;
    jsConsumerInfo_Destroy(ci);
    return true;
}

/* Number of DLQ records for tenant co. */
static inline long long it_dlq_count(const char *co)
{
    char subject[128];
    snprintf(subject, sizeof subject, "v1.dlq.%s", co);
    return h_stream_count(&N, "dlq_stream", subject);
}

/* Waits until the DLQ holds `want` records for co (or timeout); returns the count seen. */
static inline long long it_dlq_wait(const char *co, long long want, int timeout_ms)
{
    int64_t end = h_now_ms() + timeout_ms;
    long long n = -1;
    while (h_now_ms() < end) {
        n = it_dlq_count(co);
        if (n == want)
            return n;
        h_sleep_ms(50);
    }
    return n;
}

/* All DLQ records of co, joined by "\n" (malloc'd). */
static inline char *it_dlq_text(const char *co)
{
    char subject[128], **v = NULL;
    snprintf(subject, sizeof subject, "v1.dlq.%s", co);
    int n = h_stream_read(&N, "dlq_stream", subject, 1000, &v);
    size_t len = 1;
    for (int i = 0; i < n; i++)
        len += strlen(v[i]) + 1;
    char *out = calloc(1, len);
    for (int i = 0; i < n && out; i++) {
        strcat(out, v[i]);
        strcat(out, "\n");
    }
    h_strv_free(v, n);
    return out;
}

/* Publishes messages.upsert events <prefix><from..to) for tenant co with Nats-Msg-Id "<prefix>-<i>", in a thread or
 * inline. Each message id is unique, so "every event committed exactly once" is count(*) == to - from. */
typedef struct {
    const char *co;
    const char *prefix;
    int from, to;
    int failures;
    pthread_t thread;
} it_pubjob_t;

static inline void *it_publish_range(void *arg)
{
    it_pubjob_t *j = arg;
    char buf[256], id[64];
    for (int i = j->from; i < j->to; i++) {
        snprintf(buf, sizeof buf,
                 "{\"message_id\":\"%s%d\",\"chat_id\":\"c%d\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"OUT\","
                 "\"message_timestamp\":%d}",
                 j->prefix, i, i % 50, 1700000000 + i);
        snprintf(id, sizeof id, "%s-%d", j->prefix, i);
        if (!it_pub("v1.messages.upsert", j->co, buf, id))
            j->failures++;
    }
    return NULL;
}

static inline void it_publish_start(it_pubjob_t *j)
{
    pthread_create(&j->thread, NULL, it_publish_range, j);
}

static inline void it_publish_wait(it_pubjob_t *j)
{
    pthread_join(j->thread, NULL);
}

#endif
