/* latency.c - publish->commit latency at a given event rate: the service under a paced realistic load, measured with
 * timestamped probe events whose rows PostgreSQL stamps at commit. Starts its own nats-server and PostgreSQL.
 *
 *   bench-latency --rate R [--duration 20] [--probe-share 0.1] [--warmup 3] [--history-count 100]
 *                 [--subjects LIST] [--invalid-ratio X] [--label L] [--env KEY=VALUE ...] [--timeline] [--json]
 *
 * Load: mes-loadgen --rate R*(1-share) (the default realistic mix unless --subjects) plus this program's probes at
 * R*share, alternating new chats.upsert and messages.upsert events that carry their publish time (wall clock, us) in
 * a free-form object (last_message / message_obj are stored as sent). Latency of a probe = updated_at of its row -
 * publish time. updated_at is now(), i.e. the start of the service's transaction: the figure excludes the
 * transaction's own duration (a few ms), and includes queueing in NATS, the fetch wait and the batch before it.
 * Probes published during the warm-up are not counted. Also reported: PostgreSQL's commits per second from the start
 * of the load until every probe has committed, and the service's peak sessions (bench_pgwatch). */
#include <fcntl.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "clock.h"
#include "harness.h"
#include "common.h"

#define COMPANY "bench"

extern char **environ;

static atomic_long pub_errors;

static void on_pub_error(jsCtx *js, jsPubAckErr *pae, void *closure)
{
    (void)js;
    (void)pae;
    (void)closure;
    atomic_fetch_add(&pub_errors, 1);
}

/* Probe k: even k a new chat, odd k a new message in it (half of them IN, so onboarding runs as in production). */
static int probe(char *out, size_t len, long k, int64_t us, char *subject, size_t slen)
{
    long long sec = (long long)(us / 1000000);
    long c = k / 2, agent = c % 8;
    if (k % 2 == 0) {
        snprintf(subject, slen, "v1.chats.upsert." COMPANY);
        return snprintf(out, len,
                        "{\"chat_id\":\"lat-c%ld\",\"jid\":\"65%010ld@s.whatsapp.net\",\"agent_id\":\"lat-a%ld\","
                        "\"phone_number\":\"+65%010ld\",\"push_name\":\"Probe %ld\",\"is_group\":false,"
                        "\"not_spam\":true,\"unread_count\":1,\"conversation_timestamp\":%lld,"
                        "\"last_message\":{\"text\":\"probe\",\"pub_us\":%lld}}",
                        c, c, agent, c, c, sec, (long long)us);
    }
    bool in = c % 2 == 0;
    char peer[32], self[32];
    snprintf(peer, sizeof peer, "65%010ld", c);
    snprintf(self, sizeof self, "6581%08ld", agent);
    snprintf(subject, slen, "v1.messages.upsert." COMPANY);
    return snprintf(out, len,
                    "{\"message_id\":\"lat-m%ld\",\"chat_id\":\"lat-c%ld\",\"jid\":\"%s@s.whatsapp.net\","
                    "\"agent_id\":\"lat-a%ld\",\"flow\":\"%s\",\"from_phone\":\"%s\",\"to_phone\":\"%s\","
                    "\"message_type\":\"text\",\"message_text\":\"probe message\",\"status\":\"%s\","
                    "\"key\":{\"id\":\"lat-m%ld\",\"fromMe\":%s,\"remoteJid\":\"%s@s.whatsapp.net\"},"
                    "\"message_obj\":{\"conversation\":\"probe message\",\"pub_us\":%lld},\"message_timestamp\":%lld}",
                    c, c, peer, agent, in ? "IN" : "OUT", in ? peer : self, in ? self : peer, in ? "received" : "sent",
                    c, in ? "false" : "true", peer, (long long)us, sec);
}

static void print_timeline(const h_pg_t *p, long long start_us)
{
    PGresult *r = PQexec(h_pg_conn(p),
                         "WITH l AS ("
                         " SELECT 'chat' AS kind, extract(epoch FROM updated_at) * 1000"
                         " - (last_message->>'pub_us')::float8 / 1000 AS ms, (last_message->>'pub_us')::bigint AS us"
                         " FROM daisi_" COMPANY ".chats WHERE chat_id LIKE 'lat-%'"
                         " UNION ALL SELECT 'message', extract(epoch FROM updated_at) * 1000"
                         " - (message_obj->>'pub_us')::float8 / 1000, (message_obj->>'pub_us')::bigint"
                         " FROM daisi_" COMPANY ".messages WHERE message_id LIKE 'lat-%')"
                         " SELECT us / 1000000, kind, count(*), round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)),"
                         " round(max(ms)) FROM l GROUP BY 1, 2 ORDER BY 1, 2");
    fprintf(stderr, "second kind     probes  p50_ms  max_ms\n");
    for (int i = 0; PQresultStatus(r) == PGRES_TUPLES_OK && i < PQntuples(r); i++)
        fprintf(stderr, "%6lld %-8s %7s %7s %7s\n", atoll(PQgetvalue(r, i, 0)) - start_us / 1000000,
                PQgetvalue(r, i, 1), PQgetvalue(r, i, 2), PQgetvalue(r, i, 3), PQgetvalue(r, i, 4));
    PQclear(r);
}

static double json_num(const char *s, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = s ? strstr(s, pat) : NULL;
    return p ? strtod(p + strlen(pat), NULL) : -1;
}

int main(int argc, char **argv)
{
    double rate = 0, duration = 20, share = 0.1, warmup = 3;
    const char *label = "latency", *history = "100", *subjects = NULL, *invalid = "0";
    const char *env[32] = {NULL};
    int nenv = 0;
    bool json = false, timeline = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rate") && i + 1 < argc)
            rate = atof(argv[++i]);
        else if (!strcmp(argv[i], "--duration") && i + 1 < argc)
            duration = atof(argv[++i]);
        else if (!strcmp(argv[i], "--probe-share") && i + 1 < argc)
            share = atof(argv[++i]);
        else if (!strcmp(argv[i], "--warmup") && i + 1 < argc)
            warmup = atof(argv[++i]);
        else if (!strcmp(argv[i], "--history-count") && i + 1 < argc)
            history = argv[++i];
        else if (!strcmp(argv[i], "--subjects") && i + 1 < argc)
            subjects = argv[++i];
        else if (!strcmp(argv[i], "--invalid-ratio") && i + 1 < argc)
            invalid = argv[++i];
        else if (!strcmp(argv[i], "--label") && i + 1 < argc)
            label = argv[++i];
        else if (!strcmp(argv[i], "--env") && i + 1 < argc && nenv < 30)
            env[nenv++] = argv[++i];
        else if (!strcmp(argv[i], "--json"))
            json = true;
        else if (!strcmp(argv[i], "--timeline"))
            timeline = true;
        else {
            fprintf(stderr,
                    "usage: %s --rate R [--duration S] [--probe-share X] [--warmup S] [--history-count N] "
                    "[--subjects LIST] [--invalid-ratio X] [--label L] [--env K=V]... [--timeline] [--json]\n",
                    argv[0]);
            return 2;
        }
    }
    if (rate <= 0 || duration <= warmup || share <= 0 || share > 1) {
        fprintf(stderr, "bench-latency: need --rate > 0, --duration > --warmup, 0 < --probe-share <= 1\n");
        return 2;
    }
    const char *build = getenv("MES_BUILD_DIR");
    if (!build || !getenv("MES_SERVICE_BIN")) {
        fprintf(stderr, "bench-latency: set MES_BUILD_DIR and MES_SERVICE_BIN (bench/run.sh does)\n");
        return 2;
    }
    h_nats_t n;
    h_pg_t p;
    h_svc_t s;
    char dir[256];
    if (!h_nats_start(&n) || !h_pg_start(&p) || !h_streams_create(&n) || !h_tmpdir(dir, sizeof dir))
        return 1;
    bench_keep_prepare(&p);
    bench_pgwatch_t *watch = bench_pgwatch_start(&p);
    if (!watch || !h_svc_start(&s, COMPANY, &n, &p, env) || !h_svc_wait_ready(&s, 60000))
        return 1;
    int64_t t_load = h_now_ms();

    /* Background load: the load generator, open loop, in its own process. */
    double probe_rate = rate * share, bg_rate = rate - probe_rate;
    char loadgen[512], rbuf[32], dbuf[32], report[300];
    snprintf(loadgen, sizeof loadgen, "%s/loadtest/mes-loadgen", build);
    snprintf(rbuf, sizeof rbuf, "%.1f", bg_rate);
    snprintf(dbuf, sizeof dbuf, "%.3fs", duration);
    snprintf(report, sizeof report, "%s/loadgen.json", dir);
    const char *lg[24] = {loadgen, "--url",         n.url,   "--rate",          rbuf,    "--duration",
                          dbuf,    "--company_ids", COMPANY, "--history-count", history, "--invalid-ratio",
                          invalid, "--seed",        "7",     "--quiet",         "--json"};
    int na = 17;
    if (subjects) {
        lg[na++] = "--subjects";
        lg[na++] = subjects;
    }
    lg[na] = NULL;
    pid_t lg_pid = -1;
    if (bg_rate >= 1) {
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 1, report, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (posix_spawn(&lg_pid, loadgen, &fa, NULL, (char *const *)lg, environ) != 0) {
            fprintf(stderr, "bench-latency: cannot start %s\n", loadgen);
            return 1;
        }
        posix_spawn_file_actions_destroy(&fa);
    }

    /* Probes: paced by an absolute schedule, published asynchronously (the PubAck is not part of the latency). */
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = 8192;
    jo.PublishAsync.ErrHandler = on_pub_error;
    if (natsConnection_ConnectTo(&nc, n.url) != NATS_OK || natsConnection_JetStream(&js, nc, &jo) != NATS_OK) {
        fprintf(stderr, "bench-latency: cannot connect to %s\n", n.url);
        return 1;
    }
    int64_t t0 = clock_mono_ns(), end = t0 + (int64_t)(duration * 1e9);
    int64_t counted_from_us = clock_real_us() + (int64_t)(warmup * 1e6);
    long probes = 0;
    char data[1024], subject[64];
    for (;; probes++) {
        int64_t due = t0 + (int64_t)((double)probes * 1e9 / probe_rate);
        if (due >= end)
            break;
        clock_sleep_until_ns(due);
        int len = probe(data, sizeof data, probes, clock_real_us(), subject, sizeof subject);
        if (js_PublishAsync(js, subject, data, len, NULL) != NATS_OK)
            atomic_fetch_add(&pub_errors, 1);
    }
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = 30000;
    if (js_PublishAsyncComplete(js, &po) != NATS_OK)
        fprintf(stderr, "bench-latency: some probe PubAcks did not arrive\n");
    double achieved_bg = 0;
    if (lg_pid > 0) {
        int st = 0;
        waitpid(lg_pid, &st, 0);
        FILE *f = fopen(report, "r");
        char buf[8192] = "";
        if (f) {
            size_t got = fread(buf, 1, sizeof buf - 1, f);
            buf[got] = '\0';
            fclose(f);
        }
        achieved_bg = json_num(buf, "achieved_rate");
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            fprintf(stderr, "bench-latency: loadgen exited with %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    }

    /* Every probe committed (or the deadline passed: then the missing ones count as lost, reported). */
    long want = probes - atomic_load(&pub_errors);
    long long got = h_pg_wait_int(&p, want, 120000,
                                  "SELECT (SELECT count(*) FROM daisi_%s.chats WHERE chat_id LIKE 'lat-%%')"
                                  " + (SELECT count(*) FROM daisi_%s.messages WHERE message_id LIKE 'lat-%%')",
                                  COMPANY, COMPANY);
    int64_t t_done = h_now_ms();
    char *row =
        h_pg_str(&p,
                 "WITH l AS ("
                 " SELECT extract(epoch FROM updated_at) * 1000 - (last_message->>'pub_us')::float8 / 1000 AS ms,"
                 " (last_message->>'pub_us')::bigint AS us FROM daisi_%s.chats WHERE chat_id LIKE 'lat-%%'"
                 " UNION ALL"
                 " SELECT extract(epoch FROM updated_at) * 1000 - (message_obj->>'pub_us')::float8 / 1000,"
                 " (message_obj->>'pub_us')::bigint FROM daisi_%s.messages WHERE message_id LIKE 'lat-%%')"
                 " SELECT concat_ws(' ', count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),"
                 " percentile_cont(0.95) WITHIN GROUP (ORDER BY ms),"
                 " percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms)) FROM l WHERE us >= %lld",
                 COMPANY, COMPANY, (long long)counted_from_us);
    long counted = 0;
    double p50 = -1, p95 = -1, p99 = -1, mx = -1;
    if (!row || sscanf(row, "%ld %lf %lf %lf %lf", &counted, &p50, &p95, &p99, &mx) != 5)
        fprintf(stderr, "bench-latency: percentile query failed (%s)\n", row ? row : "no row");
    free(row);
    if (timeline) /* per second of the run and probe kind: where the slow probes sit (to stderr) */
        print_timeline(&p, (long long)counted_from_us - (long long)(warmup * 1e6));
    double achieved = achieved_bg + (double)probes / duration;
    bool complete = got == want && want == probes;
    /* The commit count is complete only once the service's sessions have ended (see bench_pgwatch_finish). */
    int stopped = bench_svc_stop(&s), peak_sessions = -1;
    long long commits = -1;
    if (bench_pgwatch_finish(watch, &commits, &peak_sessions) != 0)
        fprintf(stderr, "%s: PostgreSQL commits not counted (tx_per_s -1)\n", argv[0]);
    long long deadlocks = bench_pgwatch_deadlocks(watch);
    bench_pgwatch_destroy(watch);
    double tx_rate = commits >= 0 && t_done > t_load ? (double)commits * 1000.0 / (double)(t_done - t_load) : -1;
    if (json)
        printf("{\"label\":\"%s\",\"target_rate\":%.0f,\"achieved_rate\":%.0f,\"probes\":%ld,\"counted\":%ld,"
               "\"lost\":%lld,\"p50_ms\":%.1f,\"p95_ms\":%.1f,\"p99_ms\":%.1f,\"max_ms\":%.1f,\"pg_commits\":%lld,"
               "\"tx_per_s\":%.0f,\"peak_sessions\":%d,\"deadlocks\":%lld,\"complete\":%s}\n",
               label, rate, achieved, probes, counted, (long long)probes - (got < 0 ? 0 : got), p50, p95, p99, mx,
               commits, tx_rate, peak_sessions, deadlocks, complete ? "true" : "false");
    else
        printf("%-22s rate %7.0f/s (achieved %7.0f)  probes %6ld  p50 %7.1f ms  p95 %7.1f ms  p99 %7.1f ms  "
               "max %7.1f ms  %7.0f tx/s  peak sessions %d  deadlocks %lld%s\n",
               label, rate, achieved, counted, p50, p95, p99, mx, tx_rate, peak_sessions, deadlocks,
               complete ? "" : "  INCOMPLETE");
    fflush(stdout); /* the harness's cleanup may _exit(1): keep the result */
    bench_keep(&s, &p);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return complete && stopped == 0 ? 0 : 1;
}
