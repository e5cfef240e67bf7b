/* drain.c - end-to-end drain benchmark: pre-publish N events with mes-loadgen, start the service, measure committed
 * events/s from the first to the last commit (the service's own counters, cross-checked against row counts), peak
 * RSS, PostgreSQL's commits per second over the same window and the service's peak sessions (bench_pgwatch). Starts its own nats-server and PostgreSQL through the test harness.
 *
 *   bench-drain --count 100000 --subjects v1.chats.upsert [--history-count 100] [--invalid-ratio 0.01] [--cluster]
 *               [--label chats-only] [--env KEY=VALUE ...] [--json]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "common.h"

static double metric_sum(int port, const char *prefix)
{
    char *body = NULL;
    if (h_http(port, "GET", "/metrics", &body) != 200 || !body) {
        free(body);
        return -1;
    }
    double sum = 0;
    size_t pl = strlen(prefix);
    for (char *line = strtok(body, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, prefix, pl) != 0)
            continue;
        char *sp = strrchr(line, ' ');
        if (sp)
            sum += strtod(sp + 1, NULL);
    }
    free(body);
    return sum;
}

int main(int argc, char **argv)
{
    long count = 100000;
    const char *subjects = "v1.chats.upsert", *label = "run", *history = "100", *invalid = "0";
    const char *env[32] = {NULL};
    int nenv = 0;
    bool json = false, cluster = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--count") && i + 1 < argc)
            count = atol(argv[++i]);
        else if (!strcmp(argv[i], "--subjects") && i + 1 < argc)
            subjects = argv[++i];
        else if (!strcmp(argv[i], "--label") && i + 1 < argc)
            label = argv[++i];
        else if (!strcmp(argv[i], "--history-count") && i + 1 < argc)
            history = argv[++i];
        else if (!strcmp(argv[i], "--invalid-ratio") && i + 1 < argc)
            invalid = argv[++i];
        else if (!strcmp(argv[i], "--env") && i + 1 < argc && nenv < 30)
            env[nenv++] = argv[++i];
        else if (!strcmp(argv[i], "--cluster"))
            cluster = true;
        else if (!strcmp(argv[i], "--json"))
            json = true;
        else {
            fprintf(stderr,
                    "usage: %s --count N --subjects LIST [--label L] [--history-count N] "
                    "[--invalid-ratio X] [--env K=V]... [--cluster] [--json]\n",
                    argv[0]);
            return 2;
        }
    }
    const char *build = getenv("MES_BUILD_DIR");
    if (!build || !getenv("MES_SERVICE_BIN")) {
        fprintf(stderr, "bench-drain: set MES_BUILD_DIR and MES_SERVICE_BIN (bench/run.sh does)\n");
        return 2;
    }
    h_nats_t n, node[3];
    h_pg_t p;
    h_svc_t s;
    if (cluster) { /* a 3-node JetStream cluster with R3 streams: the cost of replication */
        if (!h_nats_cluster_start(node, &n) || !h_pg_start(&p) || !h_streams_create_replicas(&n, 3))
            return 1;
        if (nenv < 30)
            env[nenv++] = "NATS_STREAMREPLICAS=3";
    } else if (!h_nats_start(&n) || !h_pg_start(&p) || !h_streams_create(&n)) {
        return 1;
    }

    /* 1. Pre-publish: the backlog the service drains (to one node: mes-loadgen takes one URL). */
    if (bench_prepublish("bench-drain", cluster ? &node[0] : &n, "bench", count, subjects, history, invalid) != 0)
        return 1;

    /* 2. Start the service and watch its counters. */
    int64_t t_start = h_now_ms();
    bench_keep_prepare(&p);
    bench_pgwatch_t *watch = bench_pgwatch_start(&p);
    if (!watch || !h_svc_start(&s, "bench", &n, &p, env) || !h_svc_wait_ready(&s, 60000))
        return 1;
    int64_t t_ready = h_now_ms(), t_first = 0, t_last = 0;
    double done = 0, rss = 0, peak = 0;
    while (h_now_ms() - t_ready < 600000) {
        done = metric_sum(s.http_port, "message_event_service_events_processed_total{") +
               metric_sum(s.http_port, "message_event_service_events_failed_total{");
        rss = metric_sum(s.http_port, "process_resident_memory_bytes");
        if (rss > peak)
            peak = rss;
        if (done > 0 && !t_first)
            t_first = h_now_ms();
        if (done >= (double)count) {
            t_last = h_now_ms();
            break;
        }
        h_sleep_ms(50); /* rendering /metrics costs the service CPU: do not poll it too often */
    }
    /* Rows cross-check (history batches count as one event each but write many rows). */
    long long rows =
        h_pg_int(&p, "SELECT (SELECT count(*) FROM daisi_bench.chats) + (SELECT count(*) FROM daisi_bench.messages)"
                     " + (SELECT count(*) FROM daisi_bench.contacts) + (SELECT count(*) FROM daisi_bench.agents)");
    double secs = t_last && t_first ? (double)(t_last - t_first) / 1000.0 : 0;
    /* The first poll after a commit can be up to 50 ms late: count the window from the poll before. */
    double rate = secs > 0 ? (double)count / (secs + 0.05) : 0;
    double rows_rate = secs > 0 ? (double)rows / (secs + 0.05) : 0;
    /* The commit count is complete only once the service's sessions have ended (see bench_pgwatch_finish). */
    int stopped = bench_svc_stop(&s), peak_sessions = -1;
    long long commits = -1;
    if (bench_pgwatch_finish(watch, &commits, &peak_sessions) != 0)
        fprintf(stderr, "%s: PostgreSQL commits not counted (tx_per_s -1)\n", argv[0]);
    long long deadlocks = bench_pgwatch_deadlocks(watch);
    bench_pgwatch_destroy(watch);
    double tx_rate = secs > 0 && commits >= 0 ? (double)commits / (secs + 0.05) : -1;
    if (json)
        printf("{\"label\":\"%s\",\"events\":%ld,\"seconds\":%.3f,\"events_per_s\":%.0f,\"rows\":%lld,"
               "\"rows_per_s\":%.0f,\"peak_rss_mib\":%.1f,\"startup_s\":%.2f,\"pg_commits\":%lld,\"tx_per_s\":%.0f,"
               "\"peak_sessions\":%d,\"deadlocks\":%lld,\"drained\":%s}\n",
               label, count, secs, rate, rows, rows_rate, peak / 1048576, (double)(t_ready - t_start) / 1000, commits,
               tx_rate, peak_sessions, deadlocks, t_last ? "true" : "false");
    else
        printf("%-22s events %8ld  drain %7.2f s  %9.0f events/s  rows %9lld (%9.0f rows/s)  peak RSS %6.1f MiB  "
               "%7.0f tx/s  peak sessions %d  deadlocks %lld%s\n",
               label, count, secs, rate, rows, rows_rate, peak / 1048576, tx_rate, peak_sessions, deadlocks,
               t_last ? "" : "  NOT DRAINED");
    bench_keep(&s, &p);
    return t_last && stopped == 0 ? 0 : 1;
}
