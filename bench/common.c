/* common.c - shared by the server benchmarks: the pre-published backlog, PostgreSQL's commits and the service's
 * sessions during a run, and what a run can leave behind for profiling after its measurement (see bench/README.md). */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#define SERVICE_APP "message-event-service" /* the application_name of every session the service opens (src/db.c) */
#define SAMPLE_MS 50

struct bench_pgwatch {
    PGconn *pg; /* own session (application_name bench-pgwatch): the sampler thread's until joined, then finish's */
    pthread_t thread;
    bool running;
    atomic_bool stop;
    int peak;            /* written by the sampler until joined */
    long long own;       /* this session's committed transactions since the baseline, the baseline's own included */
    long long base;      /* pg_stat_database.xact_commit at the start */
    long long dl_base;   /* pg_stat_database.deadlocks at the start */
    long long deadlocks; /* deadlocks PostgreSQL broke since the start; -1 until finish has read it */
};

/* One sample of the service's sessions (-1 on error); a query that returned rows committed, so it counts in own. */
static int sample(bench_pgwatch_t *w)
{
    PGresult *r = PQexec(w->pg, "SELECT count(*) FROM pg_stat_activity WHERE application_name = '" SERVICE_APP "'");
    int n = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
        n = atoi(PQgetvalue(r, 0, 0));
        w->own++;
    }
    PQclear(r);
    if (n > w->peak)
        w->peak = n;
    return n;
}

/* A column of this database's row in pg_stat_database (-1 on error). */
static long long db_stat(bench_pgwatch_t *w, const char *column)
{
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT %s FROM pg_stat_database WHERE datname = current_database()", column);
    PGresult *r = PQexec(w->pg, sql);
    long long v = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
        v = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

static void *sampler(void *arg)
{
    bench_pgwatch_t *w = arg;
    while (!atomic_load(&w->stop)) {
        (void)sample(w);
        h_sleep_ms(SAMPLE_MS);
    }
    return NULL;
}

static void stop_sampler(bench_pgwatch_t *w)
{
    if (!w->running)
        return;
    atomic_store(&w->stop, true);
    pthread_join(w->thread, NULL);
    w->running = false;
}

bench_pgwatch_t *bench_pgwatch_start(const h_pg_t *p)
{
    bench_pgwatch_t *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->peak = -1;
    atomic_init(&w->stop, false);
    /* The DSN expands last and names no application_name, so ours stays and the filter above never counts us. */
    const char *keys[] = {"application_name", "dbname", NULL};
    const char *vals[] = {"bench-pgwatch", p->dsn, NULL};
    w->pg = PQconnectdbParams(keys, vals, 1);
    if (PQstatus(w->pg) != CONNECTION_OK) {
        fprintf(stderr, "bench: pgwatch cannot connect: %s", PQerrorMessage(w->pg));
        goto err;
    }
    w->base = db_stat(w, "xact_commit");
    w->dl_base = db_stat(w, "deadlocks");
    w->deadlocks = -1;
    if (w->base < 0 || w->dl_base < 0) {
        fprintf(stderr, "bench: pgwatch cannot read pg_stat_database: %s", PQerrorMessage(w->pg));
        goto err;
    }
    w->own = 2; /* the baselines' transactions commit after their own reads */
    if (pthread_create(&w->thread, NULL, sampler, w) != 0) {
        fprintf(stderr, "bench: pgwatch cannot start its thread\n");
        goto err;
    }
    w->running = true;
    return w;
err:
    bench_pgwatch_destroy(w);
    return NULL;
}

/* Commits: the delta of pg_stat_database.xact_commit between the start and now, read only once the service's
 * sessions are gone. A backend adds its transactions to the shared counters lazily: at most once per second
 * (PGSTAT_MIN_INTERVAL) when it goes idle after a transaction, and an idle backend's remainder only after 10 s
 * (PGSTAT_IDLE_INTERVAL), so a read during or just after a run misses up to a second per busy session and all of an
 * idle one's last second. pg_stat_force_next_flush() acts on the calling backend only, and pg_stat_statements (which
 * counts live) is not loaded by default and sees no autocommit statement as a COMMIT. A backend does flush everything
 * when it exits, before it leaves pg_stat_activity (its shutdown hook runs first), so after the service's exit the
 * counter is complete. What the delta therefore holds besides the measured window: the service's startup
 * (migrations, session setup: a few dozen transactions), its maintenance ping (one per second) while idle before the
 * stop, and the benchmark's own main-connection queries (a few, and polls every 50 ms while latency waits for its
 * last probes): small next to the thousands a run commits. This session's own transactions (~20/s, material at low
 * rates) are counted exactly and subtracted: the forced flush below puts all of them in the counter before the read. */
int bench_pgwatch_finish(bench_pgwatch_t *w, long long *commits, int *peak)
{
    *commits = -1;
    *peak = -1;
    if (!w)
        return -1;
    stop_sampler(w);
    int n = -1;
    for (int64_t deadline = h_now_ms() + 15000;;) {
        n = sample(w);
        if (n == 0 || h_now_ms() >= deadline)
            break;
        h_sleep_ms(SAMPLE_MS);
    }
    *peak = w->peak;
    if (n != 0) {
        fprintf(stderr, "bench: the service's sessions did not end within 15 s (%d left): commits not counted\n", n);
        return -1;
    }
    PGresult *r = PQexec(w->pg, "SELECT pg_stat_force_next_flush()"); /* PostgreSQL 15+; flushed before it returns */
    if (PQresultStatus(r) == PGRES_TUPLES_OK)
        w->own++;
    PQclear(r);
    long long end = db_stat(w, "xact_commit"), dl = db_stat(w, "deadlocks");
    if (dl >= 0)
        w->deadlocks = dl - w->dl_base;
    if (end < 0)
        return -1;
    *commits = end - w->base - w->own;
    return 0;
}

long long bench_pgwatch_deadlocks(const bench_pgwatch_t *w)
{
    return w ? w->deadlocks : -1;
}

void bench_pgwatch_destroy(bench_pgwatch_t *w)
{
    if (!w)
        return;
    stop_sampler(w);
    PQfinish(w->pg);
    free(w);
}

int bench_svc_stop(h_svc_t *s)
{
    int st = h_svc_signal(s, SIGTERM, 30000);
    if (st != 0)
        fprintf(stderr, "bench: the service exited with status %d on SIGTERM\n", st);
    return st == 0 ? 0 : -1;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "bench: cannot write %s\n", path);
        return;
    }
    if (text)
        fputs(text, f);
    fclose(f);
}

void bench_keep(h_svc_t *s, const h_pg_t *p)
{
    const char *log_path = getenv("BENCH_KEEP_LOG"); /* e.g. with --env LOG_LEVEL=debug for per-batch timings */
    if (log_path && s) {
        char *log = h_svc_log(s);
        write_file(log_path, log);
        free(log);
    }
    /* Needs MES_HARNESS_PG_OPTS="-c shared_preload_libraries=pg_stat_statements" (the extension is created here). */
    const char *stats_path = getenv("BENCH_PG_STATEMENTS");
    if (stats_path) {
        char *top =
            h_pg_str(p, "SELECT string_agg(format('%%9s ms %%7s calls %%8s rows %%7s ms/call (plan %%7s ms, %%6s"
                        " plans)  %%s', round(total_exec_time + total_plan_time), calls, rows,"
                        " round(((total_exec_time + total_plan_time) / calls)::numeric, 3),"
                        " round(total_plan_time), plans, left(query, 70)),"
                        " E'\\n' ORDER BY total_exec_time + total_plan_time DESC)"
                        " FROM (SELECT * FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 30) t");
        /* Rows written per table, and how many updates were HOT (no index entries written: the new version fit on
         * the same page). Backends report these at most once a second, so the last second may be missing. */
        char *tables = h_pg_str(p, "SELECT string_agg(format('%%-28s inserted %%8s updated %%8s hot %%8s',"
                                   " relname, n_tup_ins, n_tup_upd, n_tup_hot_upd), E'\\n' ORDER BY relname)"
                                   " FROM pg_stat_user_tables WHERE n_tup_ins + n_tup_upd > 0");
        char *text = NULL;
        if (asprintf(&text, "%s\n\n%s\n", top ? top : "pg_stat_statements unavailable: see bench/README.md",
                     tables ? tables : "") < 0)
            text = NULL;
        write_file(stats_path, text);
        free(text);
        free(tables);
        free(top);
    }
}

void bench_keep_prepare(const h_pg_t *p)
{
    if (getenv("BENCH_PG_STATEMENTS"))
        (void)h_pg_exec(p, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements");
}

int bench_prepublish(const char *prog, const h_nats_t *n, const char *company, long count, const char *subjects,
                     const char *history, const char *invalid)
{
    const char *build = getenv("MES_BUILD_DIR");
    char loadgen[512], cnt[32];
    snprintf(loadgen, sizeof loadgen, "%s/loadtest/mes-loadgen", build ? build : ".");
    snprintf(cnt, sizeof cnt, "%ld", count);
    const char *argv[24] = {loadgen,  "--url",         n->url,  "--count", cnt,      "--subjects",
                            subjects, "--company_ids", company, "--quiet", "--seed", "42"};
    int na = 12;
    if (history) {
        argv[na++] = "--history-count";
        argv[na++] = history;
    }
    if (invalid) {
        argv[na++] = "--invalid-ratio";
        argv[na++] = invalid;
    }
    argv[na] = NULL;
    char *out = NULL;
    int st = h_run(argv, NULL, 600000, &out);
    if (st != 0)
        fprintf(stderr, "%s: loadgen failed (%d):\n%s\n", prog, st, out ? out : "");
    free(out);
    return st == 0 ? 0 : -1;
}
