/* test_nats_cluster.c - a 3-node nats-server JetStream cluster with R3 streams (nats.streamReplicas=3): kill -9 the
 * stream leader, then the leader of a busy consumer, and restart every node in turn, all under a steady publish
 * load. Nothing is lost or written twice, nothing goes to the DLQ, events_failed_total stays 0, /ready recovers. */
#include <signal.h>
#include <stdatomic.h>
#include <time.h>

#include "itest.h"

#define CO "clu"
#define SCH "daisi_clu"
#define RT_STREAM "wa_events_stream"
#define BUSY_DURABLE "wa_listener_clu_messages_upsert"

static h_nats_t node[3];

static bool cluster_start(void)
{
    return h_nats_cluster_start(node, &N);
}

static int node_named(const char *name)
{
    for (int i = 0; name && i < 3; i++)
        if (strcmp(node[i].server_name, name) == 0)
            return i;
    return -1;
}

/* The node leading the stream (durable NULL) or the consumer; -1 when none is known within the timeout. */
static int leader_of(const char *stream, const char *durable, int timeout_ms)
{
    for (int64_t end = h_now_ms() + timeout_ms; h_now_ms() < end; h_sleep_ms(200)) {
        jsCtx *js = h_nats_jsctx(&N);
        jsErrCode jerr = 0;
        int who = -1;
        if (!js)
            continue;
        if (durable) {
            jsConsumerInfo *ci = NULL;
            if (js_GetConsumerInfo(&ci, js, stream, durable, NULL, &jerr) == NATS_OK && ci && ci->Cluster)
                who = node_named(ci->Cluster->Leader);
            jsConsumerInfo_Destroy(ci);
        } else {
            jsStreamInfo *si = NULL;
            if (js_GetStreamInfo(&si, js, stream, NULL, &jerr) == NATS_OK && si && si->Cluster)
                who = node_named(si->Cluster->Leader);
            jsStreamInfo_Destroy(si);
        }
        if (who >= 0)
            return who;
    }
    return -1;
}

/* Every raft group of the tenant: the three streams and the eleven durables. */
static const struct {
    const char *stream, *durable;
} groups[] = {
    {"wa_events_stream", NULL},
    {"wa_history_events_stream", NULL},
    {"dlq_stream", NULL},
    {"wa_events_stream", "wa_listener_clu_chats_upsert"},
    {"wa_events_stream", "wa_listener_clu_chats_update"},
    {"wa_events_stream", "wa_listener_clu_messages_upsert"},
    {"wa_events_stream", "wa_listener_clu_messages_update"},
    {"wa_events_stream", "wa_listener_clu_contacts_upsert"},
    {"wa_events_stream", "wa_listener_clu_contacts_update"},
    {"wa_events_stream", "wa_listener_clu_connection_update"},
    {"wa_history_events_stream", "wa_history_listener_clu_chats"},
    {"wa_history_events_stream", "wa_history_listener_clu_messages"},
    {"wa_history_events_stream", "wa_history_listener_clu_contacts"},
    {"dlq_stream", "v1_dlq_worker_clu"},
};

static bool current_in(const jsClusterInfo *c, const char *name)
{
    if (!c)
        return false;
    if (c->Leader && strcmp(c->Leader, name) == 0)
        return true;
    for (int r = 0; r < c->ReplicasLen; r++) {
        jsPeerInfo *p = c->Replicas[r];
        if (p && p->Name && strcmp(p->Name, name) == 0 && p->Current && !p->Offline)
            return true;
    }
    return false;
}

/* True once the node leads or is a current replica of every stream and durable of the tenant (it rejoined and caught
 * up): only then may the next node go, or a group would be left without a quorum. */
static bool rejoined(int i, int timeout_ms)
{
    for (int64_t end = h_now_ms() + timeout_ms; h_now_ms() < end; h_sleep_ms(250)) {
        jsCtx *js = h_nats_jsctx(&N);
        bool all = js != NULL;
        for (size_t g = 0; all && g < sizeof groups / sizeof groups[0]; g++) {
            jsErrCode jerr = 0;
            if (groups[g].durable) {
                jsConsumerInfo *ci = NULL;
                all = js_GetConsumerInfo(&ci, js, groups[g].stream, groups[g].durable, NULL, &jerr) == NATS_OK && ci &&
                      current_in(ci->Cluster, node[i].server_name);
                jsConsumerInfo_Destroy(ci);
            } else {
                jsStreamInfo *si = NULL;
                all = js_GetStreamInfo(&si, js, groups[g].stream, NULL, &jerr) == NATS_OK && si &&
                      current_in(si->Cluster, node[i].server_name);
                jsStreamInfo_Destroy(si);
            }
        }
        if (all)
            return true;
    }
    return false;
}

static int stream_replicas(const char *stream)
{
    jsCtx *js = h_nats_jsctx(&N);
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    int r = -1;
    if (js && js_GetStreamInfo(&si, js, stream, NULL, &jerr) == NATS_OK && si)
        r = (int)si->Config->Replicas;
    jsStreamInfo_Destroy(si);
    return r;
}

/* ---- steady load and a /ready watcher, each in its own thread ---- */

static atomic_bool stop_load, stop_watch;
static atomic_int published, pub_failures;
static atomic_llong ready_gap_max_ms, ready_gap_now_start;

static void *load_run(void *arg)
{
    (void)arg;
    char buf[256], id[64];
    for (int i = 0; !atomic_load(&stop_load); i++) {
        snprintf(buf, sizeof buf,
                 "{\"message_id\":\"f%d\",\"chat_id\":\"c%d\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"OUT\","
                 "\"message_timestamp\":%d}",
                 i, i % 50, 1700000000 + i);
        snprintf(id, sizeof id, "f-%d", i);
        if (!it_pub("v1.messages.upsert", CO, buf, id))
            atomic_fetch_add(&pub_failures, 1);
        atomic_store(&published, i + 1);
        h_sleep_ms(3); /* steady, not a flood: a few hundred events per second */
    }
    return NULL;
}

static void *watch_run(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop_watch)) {
        char *body = NULL;
        int st = h_http(S.http_port, "GET", "/ready", &body);
        free(body);
        long long now = h_now_ms(), since = atomic_load(&ready_gap_now_start);
        if (st == 200) {
            atomic_store(&ready_gap_now_start, 0);
        } else if (!since) {
            atomic_store(&ready_gap_now_start, now);
        } else if (now - since > atomic_load(&ready_gap_max_ms)) {
            atomic_store(&ready_gap_max_ms, now - since);
        }
        h_sleep_ms(100);
    }
    return NULL;
}

static long long committed(void)
{
    return h_pg_int(&P, "SELECT count(DISTINCT message_id) FROM " SCH ".messages");
}

/* Waits until the service commits events published after this call (processing goes on); returns the ms it took,
 * -1 on timeout. */
static long long progress_after(int timeout_ms)
{
    long long t0 = h_now_ms();
    long long want = committed() + 200;
    for (int64_t end = t0 + timeout_ms; h_now_ms() < end; h_sleep_ms(100))
        if (committed() >= want)
            return h_now_ms() - t0;
    return -1;
}

/* Sum of every events_failed_total sample (all labels). */
static double failed_total(void)
{
    char *body = NULL;
    double sum = 0;
    if (h_http(S.http_port, "GET", "/metrics", &body) != 200 || !body) {
        free(body);
        return -1;
    }
    for (char *p = body; (p = strstr(p, "\nmessage_event_service_events_failed_total")) != NULL; p++) {
        char *sp = strchr(p + 1, ' ');
        char *nl = strchr(p + 1, '\n');
        if (sp && (!nl || sp < nl))
            sum += strtod(sp + 1, NULL);
    }
    free(body);
    return sum;
}

static const char *const SVC_ENV[] = {
    "NATS_STREAMREPLICAS=3",
    /* An ack that reached a node as it died is lost; the message comes back after the ack wait. Short, so the test
     * sees every event committed soon after the load stops. */
    "NATS_REALTIME_ACKWAIT=5s", NULL};

static pthread_t load_t, watch_t;

static bool up(void)
{
    atexit(it_dump_log);
    if (!cluster_start() || !h_pg_start(&P))
        return false;
    if (!h_svc_start(&S, CO, &N, &P, SVC_ENV) || !h_svc_wait_ready(&S, 90000))
        return false;
    atomic_store(&stop_load, false);
    atomic_store(&stop_watch, false);
    pthread_create(&load_t, NULL, load_run, NULL);
    pthread_create(&watch_t, NULL, watch_run, NULL);
    return true;
}

/* Stops the load and checks the outcome: every published event committed exactly once, no DLQ record, no failure
 * counted, /ready never down for long. */
static void down_and_check(void)
{
    atomic_store(&stop_load, true);
    pthread_join(load_t, NULL);
    int total = atomic_load(&published);
    CHECK_EQ_INT(atomic_load(&pub_failures), 0);
    long long got = h_pg_wait_int(&P, total, 120000, "SELECT count(DISTINCT message_id) FROM " SCH ".messages");
    fprintf(stderr, "published %d, committed %lld\n", total, got);
    CHECK_EQ_INT(got, total);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".messages"), total);
    CHECK_EQ_INT(it_dlq_count(CO), 0);
    CHECK(failed_total() == 0);
    atomic_store(&stop_watch, true);
    pthread_join(watch_t, NULL);
    long long gap = atomic_load(&ready_gap_max_ms);
    fprintf(stderr, "longest /ready non-200 stretch: %lld ms\n", gap);
    CHECK(gap < 30000); /* "recovers within seconds": a bound on correctness, not a speed target */
    int st = 0;
    for (int64_t end = h_now_ms() + 30000; h_now_ms() < end && st != 200; h_sleep_ms(100)) {
        char *body = NULL;
        st = h_http(S.http_port, "GET", "/ready", &body);
        free(body);
    }
    CHECK_EQ_INT(st, 200);
    CHECK_EQ_INT(h_svc_signal(&S, SIGTERM, 30000), 0);
    const char *keep = getenv("MES_KEEP_SERVICE_LOG"); /* for looking at a failover by hand */
    char *log = keep ? h_svc_log(&S) : NULL;
    FILE *f = log ? fopen(keep, "w") : NULL;
    if (f) {
        fputs(log, f);
        fclose(f);
    }
    free(log);
}

TEST(r3_cluster_survives_kill_9_of_the_stream_leader_and_of_a_busy_consumer_leader_and_nodes_rejoin)
{
    REQUIRE(up());
    CHECK_EQ_INT(stream_replicas(RT_STREAM), 3);
    CHECK_EQ_INT(stream_replicas("wa_history_events_stream"), 3);
    CHECK_EQ_INT(stream_replicas("dlq_stream"), 3);
    REQUIRE(progress_after(30000) >= 0);

    int sl = leader_of(RT_STREAM, NULL, 20000);
    REQUIRE(sl >= 0);
    fprintf(stderr, "%lld kill -9 stream leader %s\n", (long long)time(NULL), node[sl].server_name);
    h_nats_kill(&node[sl]);
    long long ms = progress_after(60000);
    fprintf(stderr, "processing went on %lld ms after the stream leader died\n", ms);
    CHECK(ms >= 0);
    REQUIRE(h_nats_restart(&node[sl]));
    CHECK(h_nats_wait_ready(&node[sl], 60000));
    CHECK(rejoined(sl, 60000));

    int cl = leader_of(RT_STREAM, BUSY_DURABLE, 20000);
    REQUIRE(cl >= 0);
    fprintf(stderr, "%lld kill -9 consumer leader %s (%s)\n", (long long)time(NULL), node[cl].server_name,
            BUSY_DURABLE);
    h_nats_kill(&node[cl]);
    ms = progress_after(60000);
    fprintf(stderr, "processing went on %lld ms after the consumer leader died\n", ms);
    CHECK(ms >= 0);
    REQUIRE(h_nats_restart(&node[cl]));
    CHECK(h_nats_wait_ready(&node[cl], 60000));
    CHECK(rejoined(cl, 60000));
    CHECK(progress_after(30000) >= 0);
    down_and_check();
}

TEST(r3_cluster_rolling_restart_of_every_node_loses_nothing)
{
    REQUIRE(up());
    REQUIRE(progress_after(30000) >= 0);
    for (int i = 0; i < 3; i++) {
        fprintf(stderr, "restarting %s\n", node[i].server_name);
        REQUIRE(h_nats_restart(&node[i])); /* SIGTERM (nats-server's graceful stop), then the same store again */
        CHECK(h_nats_wait_ready(&node[i], 60000));
        CHECK(rejoined(i, 60000));
        long long ms = progress_after(60000);
        fprintf(stderr, "processing went on %lld ms after %s came back\n", ms, node[i].server_name);
        CHECK(ms >= 0);
    }
    down_and_check();
}

/* nats.streamReplicas applies only when the service creates a stream: existing ones (R1 here, made before the
 * service starts) keep their replica count, and the difference is logged once per stream with both values. */
TEST(existing_streams_keep_their_replicas_and_the_difference_is_logged_once)
{
    atexit(it_dump_log);
    REQUIRE(h_nats_start(&N) && h_pg_start(&P) && h_streams_create(&N));
    /* The tenant's advisory stream too (the service adds the subjects it lacks): a stream it would create with three
     * replicas cannot exist on this one server, and startup would fail, as it should. */
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    const char *adv[] = {"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.dlq_stream.v1_dlq_worker_" CO};
    sc.Name = "mes_advisories_" CO;
    sc.Subjects = adv;
    sc.SubjectsLen = 1;
    sc.Storage = js_FileStorage;
    REQUIRE(h_nats_jsctx(&N) && js_AddStream(NULL, h_nats_jsctx(&N), &sc, NULL, NULL) == NATS_OK);
    const char *env[] = {"NATS_STREAMREPLICAS=3", NULL};
    REQUIRE(h_svc_start(&S, CO, &N, &P, env));
    REQUIRE(h_svc_wait_ready(&S, 60000));
    CHECK_EQ_INT(stream_replicas(RT_STREAM), 1);
    CHECK_EQ_INT(stream_replicas("dlq_stream"), 1);
    char *log = h_svc_log(&S);
    REQUIRE(log);
    int n = 0;
    for (const char *p = log; (p = strstr(p, "existing stream has another replica count")) != NULL; p++)
        n++;
    CHECK_EQ_INT(n, 4);
    CHECK_CONTAINS(log, "\"stream\":\"wa_events_stream\",\"replicas\":1,\"nats.streamReplicas\":3");
    free(log);
    CHECK_EQ_INT(h_svc_signal(&S, SIGTERM, 20000), 0);
}
