/* common.c - shared by the server benchmarks: the pre-published backlog, and what a run can leave behind for
 * profiling after its measurement (see bench/README.md). */
#include "common.h"

#include <stdio.h>
#include <stdlib.h>

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
    if (log_path) {
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
        write_file(stats_path, top ? top : "pg_stat_statements unavailable: see bench/README.md\n");
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
