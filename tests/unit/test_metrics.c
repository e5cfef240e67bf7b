/* test_metrics.c - the metrics module: every SPEC 7 family, promtool validity, counting, bounding, escaping. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "metrics.h"
#include "testlib.h"

#define CO "acme"
#define EV_RT "event_type=\"v1.chats.upsert\",company_id=\"acme\",consumer_type=\"realtime\""

static char *render(void)
{
    size_t len = 0;
    char *s = metrics_render(&len);
    if (s && strlen(s) != len)
        testlib_fail(__FILE__, __LINE__, "render length %zu != strlen %zu", len, strlen(s));
    return s;
}

/* The line that starts with `series ` (exact name and labels); NULL when absent. */
static const char *find_series(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return p + n + 1;
    }
    return NULL;
}

/* Value of the series, or NAN when absent (which fails any equality check). */
static double value_of(const char *text, const char *series)
{
    const char *v = find_series(text, series);
    if (!v) {
        fprintf(stderr, "series not found: %s\n", series);
        return NAN;
    }
    return strtod(v, NULL);
}

static bool promtool_ok(const char *text, char *report, size_t len)
{
    char path[] = "/tmp/mes_metrics_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        return false;
    size_t n = strlen(text);
    bool wrote = write(fd, text, n) == (ssize_t)n;
    close(fd);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "promtool check metrics < %s 2>&1", path);
    FILE *p = wrote ? popen(cmd, "r") : NULL;
    size_t got = p ? fread(report, 1, len - 1, p) : 0;
    report[got] = '\0';
    int rc = p ? pclose(p) : -1;
    unlink(path);
    return rc == 0;
}

TEST(render_has_help_and_type_for_every_spec_family)
{
    static const struct {
        const char *name, *type;
    } families[] = {
        {"message_event_service_events_received_total", "counter"},
        {"message_event_service_events_processed_total", "counter"},
        {"message_event_service_events_failed_total", "counter"},
        {"message_event_service_event_processing_duration_seconds", "histogram"},
        {"message_event_service_event_routing_duration_seconds", "histogram"},
        {"message_event_service_event_processing_actions_total", "counter"},
        {"message_event_service_event_with_agent_received_total", "counter"},
        {"message_event_service_db_operation_duration_seconds", "histogram"},
        {"dlq_fetch_requests_total", "counter"},
        {"dlq_fetch_errors_total", "counter"},
        {"dlq_queue_length", "gauge"},
        {"dlq_workers_active", "gauge"},
        {"dlq_tasks_submitted_total", "counter"},
        {"dlq_processing_duration_seconds", "histogram"},
        {"dlq_task_retries_total", "counter"},
        {"dlq_acks_success_total", "counter"},
        {"dlq_acks_failure_total", "counter"},
        {"dlq_tasks_dropped_total", "counter"},
        {"onboarding_tasks_submitted_total", "counter"},
        {"onboarding_tasks_processed_total", "counter"},
        {"onboarding_processing_duration_seconds", "histogram"},
        {"onboarding_queue_length", "gauge"},
        {"process_cpu_seconds_total", "counter"},
        {"process_resident_memory_bytes", "gauge"},
        {"process_virtual_memory_bytes", "gauge"},
        {"process_open_fds", "gauge"},
        {"process_max_fds", "gauge"},
        {"process_start_time_seconds", "gauge"},
        {"message_event_service_build_info", "gauge"},
        {"message_event_service_nats_connected", "gauge"},
        {"message_event_service_db_up", "gauge"},
        {"message_event_service_consumer_pending", "gauge"},
        {"message_event_service_dlq_published_total", "counter"},
        {"message_event_service_batch_size", "histogram"},
    };
    REQUIRE(metrics_init(CO, "0.1.0", 10, false) == 0);
    char *text = render();
    REQUIRE(text);
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
        char want[256];
        snprintf(want, sizeof want, "# HELP %s ", families[i].name);
        CHECK_CONTAINS(text, want);
        snprintf(want, sizeof want, "# TYPE %s %s\n", families[i].name, families[i].type);
        CHECK_CONTAINS(text, want);
    }
    CHECK_EQ_INT(value_of(text, "message_event_service_build_info{version=\"0.1.0\"}"), 1);
    free(text);
    metrics_shutdown();
}

TEST(render_passes_promtool_check_metrics)
{
    if (access("/usr/bin/promtool", X_OK) != 0 && system("command -v promtool >/dev/null 2>&1") != 0) {
        testlib_fail(__FILE__, __LINE__, "promtool not found: apt-get install prometheus (it ships promtool)");
        return;
    }
    REQUIRE(metrics_init(CO, "0.1.0-\"dev\"", 2, true) == 0);
    metrics_streams_set("wa_events_stream", "wa_history_events_stream", "dlq\"stream\n");
    metrics_jetstream_exhausted(MSTREAM_DLQ);
    metrics_event_received(ET_CHATS_UPSERT, LANE_REALTIME);
    metrics_event_action(ET_HISTORY_CHATS, LANE_HISTORICAL, ACT_DLQ_PUBLISHED_ACK_SUCCESS, ERR_VALIDATION);
    metrics_event_action(ET_CHATS_UPSERT, LANE_HISTORICAL, ACT_ACK_SUCCESS, ERR_NONE); /* odd pair: still valid */
    metrics_processing_duration(ET_MESSAGES_UPSERT, LANE_REALTIME, 0.003);
    metrics_db_duration(DBOP_FIND, DBENT_AGENT, false, 0.2);
    metrics_event_with_agent(ET_CHATS_UPSERT, "ag\"1\n\\", 6, "j\xff", 2);
    metrics_event_with_agent(ET_CHATS_UPSERT, "ag2", 3, "j2", 2);
    metrics_event_with_agent(ET_CHATS_UPSERT, "ag3", 3, "j3", 2);
    metrics_batch_size(LANE_HISTORICAL, 5000);
    metrics_dlq_workers_active_add(-1);
    char *text = render();
    REQUIRE(text);
    char report[4096];
    bool ok = promtool_ok(text, report, sizeof report);
    if (!ok)
        testlib_fail(__FILE__, __LINE__, "promtool check metrics failed:\n%s", report);
    free(text);
    metrics_shutdown();
}

TEST(zero_series_exist_only_for_valid_event_type_and_lane_pairs)
{
    REQUIRE(metrics_init(CO, "0.1.0", 10, false) == 0);
    char *text = render();
    REQUIRE(text);
    CHECK_EQ_INT(value_of(text, "message_event_service_events_received_total{" EV_RT "}"), 0);
    CHECK(find_series(text, "message_event_service_events_received_total{event_type=\"v1.history.chats\","
                            "company_id=\"acme\",consumer_type=\"historical\"}"));
    CHECK(find_series(text, "message_event_service_events_received_total{event_type=\"unknown\","
                            "company_id=\"acme\",consumer_type=\"historical\"}"));
    CHECK(find_series(text, "message_event_service_events_received_total{event_type=\"unknown\","
                            "company_id=\"acme\",consumer_type=\"realtime\"}"));
    CHECK(!find_series(text, "message_event_service_events_received_total{event_type=\"v1.chats.upsert\","
                             "company_id=\"acme\",consumer_type=\"historical\"}"));
    CHECK(!find_series(text, "message_event_service_events_received_total{event_type=\"v1.history.chats\","
                             "company_id=\"acme\",consumer_type=\"realtime\"}"));
    CHECK(find_series(text, "message_event_service_event_processing_actions_total{" EV_RT
                            ",action=\"ack_success\",error_type=\"none\"}"));
    CHECK(find_series(text, "message_event_service_event_processing_actions_total{" EV_RT
                            ",action=\"nack_retryable\",error_type=\"database\"}"));
    CHECK(!find_series(text, "message_event_service_event_processing_actions_total{" EV_RT
                             ",action=\"nack_retryable\",error_type=\"panic\"}"));
    CHECK(find_series(text, "onboarding_tasks_processed_total{company_id=\"acme\",status=\"skipped_not_applicable\"}"));
    CHECK(find_series(text, "message_event_service_db_operation_duration_seconds_count{operation=\"bulk_upsert\","
                            "entity=\"message\",company_id=\"acme\",status=\"error\"}"));
    CHECK(find_series(text, "message_event_service_batch_size_count{consumer_type=\"historical\"}"));
    free(text);
    metrics_shutdown();
}

TEST(counters_and_gauges_move_with_their_calls)
{
    REQUIRE(metrics_init(CO, "0.1.0", 10, false) == 0);
    for (int i = 0; i < 3; i++)
        metrics_event_received(ET_CHATS_UPSERT, LANE_REALTIME);
    metrics_event_processed(ET_CHATS_UPSERT, LANE_REALTIME);
    metrics_event_failed(ET_CHATS_UPSERT, LANE_REALTIME);
    metrics_event_action(ET_CHATS_UPSERT, LANE_REALTIME, ACT_NACK_RETRYABLE, ERR_DATABASE);
    metrics_event_received((event_type_t)99, LANE_HISTORICAL); /* out of range counts as unknown */
    metrics_dlq_published(ET_MESSAGES_UPDATE, LANE_REALTIME, ERR_NOT_FOUND);
    metrics_dlq_fetch_request();
    metrics_dlq_fetch_request();
    metrics_dlq_fetch_error();
    metrics_dlq_task_submitted();
    metrics_dlq_task_retry();
    metrics_dlq_ack_success();
    metrics_dlq_ack_failure();
    metrics_dlq_task_dropped();
    metrics_dlq_queue_length_set(42);
    metrics_dlq_workers_active_add(3);
    metrics_dlq_workers_active_add(-1);
    metrics_onboarding_submitted();
    metrics_onboarding_processed(ONB_SUCCESS_CREATED);
    metrics_onboarding_queue_add(5);
    metrics_onboarding_queue_add(-2);
    metrics_nats_connected_set(true);
    metrics_db_up_set(true);
    metrics_consumer_pending_set(ET_HISTORY_MESSAGES, 12345);

    char *t = render();
    REQUIRE(t);
    CHECK_EQ_INT(value_of(t, "message_event_service_events_received_total{" EV_RT "}"), 3);
    CHECK_EQ_INT(value_of(t, "message_event_service_events_processed_total{" EV_RT "}"), 1);
    CHECK_EQ_INT(value_of(t, "message_event_service_events_failed_total{" EV_RT "}"), 1);
    CHECK_EQ_INT(value_of(t, "message_event_service_event_processing_actions_total{" EV_RT
                             ",action=\"nack_retryable\",error_type=\"database\"}"),
                 1);
    CHECK_EQ_INT(value_of(t, "message_event_service_events_received_total{event_type=\"unknown\","
                             "company_id=\"acme\",consumer_type=\"historical\"}"),
                 1);
    CHECK_EQ_INT(value_of(t, "message_event_service_dlq_published_total{event_type=\"v1.messages.update\","
                             "company_id=\"acme\",consumer_type=\"realtime\",error_type=\"not_found\"}"),
                 1);
    CHECK_EQ_INT(value_of(t, "dlq_fetch_requests_total"), 2);
    CHECK_EQ_INT(value_of(t, "dlq_fetch_errors_total"), 1);
    CHECK_EQ_INT(value_of(t, "dlq_tasks_submitted_total{company_id=\"acme\"}"), 1);
    CHECK_EQ_INT(value_of(t, "dlq_task_retries_total{company_id=\"acme\"}"), 1);
    CHECK_EQ_INT(value_of(t, "dlq_acks_success_total{company_id=\"acme\"}"), 1);
    CHECK_EQ_INT(value_of(t, "dlq_acks_failure_total{company_id=\"acme\"}"), 1);
    CHECK_EQ_INT(value_of(t, "dlq_tasks_dropped_total{company_id=\"acme\"}"), 1);
    CHECK_EQ_INT(value_of(t, "dlq_queue_length"), 42);
    CHECK_EQ_INT(value_of(t, "dlq_workers_active"), 2);
    CHECK_EQ_INT(value_of(t, "onboarding_tasks_submitted_total{company_id=\"acme\"}"), 1);
    CHECK_EQ_INT(value_of(t, "onboarding_tasks_processed_total{company_id=\"acme\",status=\"success_created\"}"), 1);
    CHECK_EQ_INT(value_of(t, "onboarding_tasks_processed_total{company_id=\"acme\",status=\"error_db\"}"), 0);
    CHECK_EQ_INT(value_of(t, "onboarding_queue_length"), 3);
    CHECK_EQ_INT(value_of(t, "message_event_service_nats_connected"), 1);
    CHECK_EQ_INT(value_of(t, "message_event_service_db_up"), 1);
    CHECK_EQ_INT(value_of(t, "message_event_service_consumer_pending{event_type=\"v1.history.messages\"}"), 12345);
    free(t);

    metrics_nats_connected_set(false);
    metrics_dlq_queue_length_set(0);
    t = render();
    REQUIRE(t);
    CHECK_EQ_INT(value_of(t, "message_event_service_nats_connected"), 0);
    CHECK_EQ_INT(value_of(t, "dlq_queue_length"), 0);
    free(t);
    metrics_shutdown();
}

TEST(half_second_observation_lands_in_le_0_5_and_above_with_sum_0_5)
{
    REQUIRE(metrics_init(CO, "0.1.0", 10, false) == 0);
    metrics_processing_duration(ET_CHATS_UPSERT, LANE_REALTIME, 0.5);
    metrics_routing_duration(ET_CHATS_UPSERT, LANE_REALTIME, 0.00005); /* below the lowest bucket */
    metrics_db_duration(DBOP_UPSERT, DBENT_CHAT, true, 31.0);          /* above the highest bucket */
    char *t = render();
    REQUIRE(t);
    const char *h = "message_event_service_event_processing_duration_seconds";
    char s[512];
    static const struct {
        const char *le;
        int want;
    } buckets[] = {{"0.0001", 0}, {"0.25", 0}, {"0.5", 1}, {"1", 1}, {"30", 1}, {"+Inf", 1}};
    for (size_t i = 0; i < sizeof buckets / sizeof buckets[0]; i++) {
        snprintf(s, sizeof s, "%s_bucket{" EV_RT ",le=\"%s\"}", h, buckets[i].le);
        CHECK_EQ_INT(value_of(t, s), buckets[i].want);
    }
    snprintf(s, sizeof s, "%s_count{" EV_RT "}", h);
    CHECK_EQ_INT(value_of(t, s), 1);
    snprintf(s, sizeof s, "%s_sum{" EV_RT "}", h);
    CHECK(fabs(value_of(t, s) - 0.5) < 1e-9);

    snprintf(s, sizeof s, "message_event_service_event_routing_duration_seconds_bucket{" EV_RT ",le=\"0.0001\"}");
    CHECK_EQ_INT(value_of(t, s), 1);
    const char *db = "message_event_service_db_operation_duration_seconds_bucket{operation=\"upsert\",entity=\"chat\","
                     "company_id=\"acme\",status=\"success\"";
    snprintf(s, sizeof s, "%s,le=\"30\"}", db);
    CHECK_EQ_INT(value_of(t, s), 0);
    snprintf(s, sizeof s, "%s,le=\"+Inf\"}", db);
    CHECK_EQ_INT(value_of(t, s), 1);
    free(t);
    metrics_shutdown();
}

TEST(batch_size_histogram_counts_per_consumer_type)
{
    REQUIRE(metrics_init(CO, "0.1.0", 10, false) == 0);
    metrics_batch_size(LANE_REALTIME, 1);
    metrics_batch_size(LANE_REALTIME, 100);
    metrics_batch_size(LANE_HISTORICAL, 4096);
    char *t = render();
    REQUIRE(t);
    CHECK_EQ_INT(value_of(t, "message_event_service_batch_size_bucket{consumer_type=\"realtime\",le=\"1\"}"), 1);
    CHECK_EQ_INT(value_of(t, "message_event_service_batch_size_bucket{consumer_type=\"realtime\",le=\"64\"}"), 1);
    CHECK_EQ_INT(value_of(t, "message_event_service_batch_size_bucket{consumer_type=\"realtime\",le=\"128\"}"), 2);
    CHECK_EQ_INT(value_of(t, "message_event_service_batch_size_sum{consumer_type=\"realtime\"}"), 101);
    CHECK_EQ_INT(value_of(t, "message_event_service_batch_size_bucket{consumer_type=\"historical\",le=\"2048\"}"), 0);
    CHECK_EQ_INT(value_of(t, "message_event_service_batch_size_bucket{consumer_type=\"historical\",le=\"4096\"}"), 1);
    CHECK_EQ_INT(value_of(t, "message_event_service_batch_size_count{consumer_type=\"historical\"}"), 1);
    free(t);
    metrics_shutdown();
}

static const char *agent_series(char *out, size_t n, const char *agent, const char *jid)
{
    snprintf(out, n,
             "message_event_service_event_with_agent_received_total{event_type=\"v1.messages.upsert\","
             "company_id=\"acme\",agent_id=\"%s\",jid=\"%s\"}",
             agent, jid);
    return out;
}

TEST(agent_label_bounded_fourth_distinct_agent_counted_as_other)
{
    char s[512];
    REQUIRE(metrics_init(CO, "0.1.0", 3, false) == 0);
    static const char *const ids[] = {"a1", "a2", "a3", "a4", "a1", "a5"};
    for (size_t i = 0; i < 6; i++)
        metrics_event_with_agent(ET_MESSAGES_UPSERT, ids[i], 2, "jid-ignored", 11);
    char *t = render();
    REQUIRE(t);
    CHECK_EQ_INT(value_of(t, agent_series(s, sizeof s, "a1", "")), 2);
    CHECK_EQ_INT(value_of(t, agent_series(s, sizeof s, "a2", "")), 1);
    CHECK_EQ_INT(value_of(t, agent_series(s, sizeof s, "a3", "")), 1);
    CHECK_EQ_INT(value_of(t, agent_series(s, sizeof s, "other", "")), 2);
    CHECK(!find_series(t, agent_series(s, sizeof s, "a4", "")));
    CHECK(!strstr(t, "jid-ignored"));
    free(t);
    metrics_shutdown();
}

TEST(jid_label_pairs_bounded_when_enabled)
{
    char s[512];
    REQUIRE(metrics_init(CO, "0.1.0", 2, true) == 0);
    metrics_event_with_agent(ET_MESSAGES_UPSERT, "a1", 2, "j1", 2);
    metrics_event_with_agent(ET_MESSAGES_UPSERT, "a1", 2, "j2", 2);
    metrics_event_with_agent(ET_MESSAGES_UPSERT, "a1", 2, "j3", 2);
    metrics_event_with_agent(ET_MESSAGES_UPSERT, "a1", 2, "j1", 2);
    char *t = render();
    REQUIRE(t);
    CHECK_EQ_INT(value_of(t, agent_series(s, sizeof s, "a1", "j1")), 2);
    CHECK_EQ_INT(value_of(t, agent_series(s, sizeof s, "a1", "j2")), 1);
    CHECK_EQ_INT(value_of(t, agent_series(s, sizeof s, "other", "other")), 1);
    free(t);
    metrics_shutdown();
}

TEST(agent_label_values_escape_quotes_backslashes_newlines_and_replace_invalid_utf8)
{
    char s[512];
    REQUIRE(metrics_init(CO, "0.1.0", 10, true) == 0);
    /* not NUL-terminated: the trailing 'X' is outside the given length */
    const char agent[] = "q\"b\\n\nX";
    metrics_event_with_agent(ET_MESSAGES_UPSERT, agent, 6, "\xff\xc3\xa9\xe2\x82", 5);
    metrics_event_with_agent(ET_MESSAGES_UPSERT, "nul\0z", 5, "\xed\xa0\x80", 3); /* NUL, UTF-16 surrogate */
    char *t = render();
    REQUIRE(t);
    /* 0xff -> U+FFFD, é kept, the truncated 3-byte sequence -> one U+FFFD per byte */
    const char *jid = "\xef\xbf\xbd\xc3\xa9\xef\xbf\xbd\xef\xbf\xbd";
    CHECK_EQ_INT(value_of(t, agent_series(s, sizeof s, "q\\\"b\\\\n\\n", jid)), 1);
    CHECK_EQ_INT(value_of(t, agent_series(s, sizeof s, "nul\xef\xbf\xbdz", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd")), 1);
    CHECK(!strstr(t, "X\""));
    free(t);
    metrics_shutdown();
}

TEST(long_agent_label_is_truncated_to_a_bounded_size)
{
    REQUIRE(metrics_init(CO, "0.1.0", 10, false) == 0);
    size_t n = 100000;
    char *big = malloc(n);
    REQUIRE(big);
    memset(big, 'x', n);
    metrics_event_with_agent(ET_CHATS_UPSERT, big, n, NULL, 0);
    free(big);
    size_t len = 0;
    char *t = metrics_render(&len);
    REQUIRE(t);
    const char *p = strstr(t, "agent_id=\"x");
    REQUIRE(p);
    CHECK(strchr(p + 10, '"') - (p + 10) <= 1024);
    free(t);
    metrics_shutdown();
}

#define THREADS 4
#define ROUNDS 50000

static void *hammer(void *arg)
{
    (void)arg;
    for (int i = 0; i < ROUNDS; i++) {
        metrics_event_received(ET_MESSAGES_UPSERT, LANE_REALTIME);
        metrics_event_action(ET_MESSAGES_UPSERT, LANE_REALTIME, ACT_ACK_SUCCESS, ERR_NONE);
        metrics_processing_duration(ET_MESSAGES_UPSERT, LANE_REALTIME, 0.001);
        metrics_dlq_workers_active_add(1);
        metrics_dlq_workers_active_add(-1);
        if (i % 10 == 0)
            metrics_event_with_agent(ET_MESSAGES_UPSERT, "agent", 5, "", 0);
    }
    return NULL;
}

static void *scraper(void *arg)
{
    atomic_int *stop = arg;
    while (!atomic_load(stop)) {
        char *t = metrics_render(NULL);
        free(t);
    }
    return NULL;
}

TEST(concurrent_updates_from_four_threads_sum_exactly_while_rendering)
{
    REQUIRE(metrics_init(CO, "0.1.0", 10, false) == 0);
    pthread_t th[THREADS], sc;
    atomic_int stop = 0;
    REQUIRE(pthread_create(&sc, NULL, scraper, &stop) == 0);
    for (int i = 0; i < THREADS; i++)
        REQUIRE(pthread_create(&th[i], NULL, hammer, NULL) == 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    atomic_store(&stop, 1);
    pthread_join(sc, NULL);

    char s[512];
    char *t = render();
    REQUIRE(t);
    const char *lb = "event_type=\"v1.messages.upsert\",company_id=\"acme\",consumer_type=\"realtime\"";
    snprintf(s, sizeof s, "message_event_service_events_received_total{%s}", lb);
    CHECK_EQ_INT(value_of(t, s), THREADS * ROUNDS);
    snprintf(s, sizeof s,
             "message_event_service_event_processing_actions_total{%s,action=\"ack_success\","
             "error_type=\"none\"}",
             lb);
    CHECK_EQ_INT(value_of(t, s), THREADS * ROUNDS);
    snprintf(s, sizeof s, "message_event_service_event_processing_duration_seconds_count{%s}", lb);
    CHECK_EQ_INT(value_of(t, s), THREADS * ROUNDS);
    snprintf(s, sizeof s, "message_event_service_event_processing_duration_seconds_sum{%s}", lb);
    CHECK(fabs(value_of(t, s) - THREADS * ROUNDS * 0.001) < 1e-6);
    CHECK_EQ_INT(value_of(t, "dlq_workers_active"), 0);
    CHECK_EQ_INT(value_of(t, agent_series(s, sizeof s, "agent", "")), THREADS * ROUNDS / 10);
    free(t);
    metrics_shutdown();
}

TEST(process_metrics_describe_this_process)
{
    time_t now = time(NULL);
    REQUIRE(metrics_init(CO, "0.1.0", 10, false) == 0);
    char *t = render();
    REQUIRE(t);
    double start = value_of(t, "process_start_time_seconds");
    CHECK(start <= (double)now + 1 && start > (double)now - 600);
    CHECK(value_of(t, "process_resident_memory_bytes") > 100000);
    CHECK(value_of(t, "process_virtual_memory_bytes") >= value_of(t, "process_resident_memory_bytes"));
    CHECK(value_of(t, "process_open_fds") >= 3);
    CHECK(value_of(t, "process_max_fds") >= 64);
    CHECK(value_of(t, "process_cpu_seconds_total") >= 0);
    free(t);
    metrics_shutdown();
}

TEST(init_resets_values_and_rejects_bad_arguments)
{
    REQUIRE(metrics_init(CO, "0.1.0", 10, false) == 0);
    metrics_event_received(ET_CHATS_UPSERT, LANE_REALTIME);
    metrics_event_with_agent(ET_CHATS_UPSERT, "a", 1, NULL, 0);
    metrics_shutdown();
    metrics_event_with_agent(ET_CHATS_UPSERT, "a", 1, NULL, 0); /* after shutdown: ignored, no crash */
    REQUIRE(metrics_init("other_co", "0.2.0", 10, false) == 0);
    char *t = render();
    REQUIRE(t);
    CHECK_EQ_INT(value_of(t, "message_event_service_events_received_total{event_type=\"v1.chats.upsert\","
                             "company_id=\"other_co\",consumer_type=\"realtime\"}"),
                 0);
    CHECK(!strstr(t, "agent_id=\"a\""));
    CHECK(!strstr(t, "company_id=\"acme\""));
    free(t);
    metrics_shutdown();
    CHECK(metrics_init(NULL, "0.1.0", 10, false) != 0);
    CHECK(metrics_init(CO, "0.1.0", -1, false) != 0);
    metrics_shutdown();
}

TEST(jetstream_exhausted_has_a_zero_series_per_stream_and_one_series_for_a_shared_name)
{
    REQUIRE(metrics_init(CO, "0.1.0", 10, false) == 0);
    metrics_streams_set("rt", "hist", "dlq");
    metrics_jetstream_exhausted(MSTREAM_HISTORICAL);
    char *text = render();
    REQUIRE(text);
    CHECK_CONTAINS(text, "# TYPE message_event_service_jetstream_exhausted_total counter\n");
    CHECK_EQ_INT(value_of(text, "message_event_service_jetstream_exhausted_total{company_id=\"" CO "\",stream=\"rt\"}"),
                 0);
    CHECK_EQ_INT(
        value_of(text, "message_event_service_jetstream_exhausted_total{company_id=\"" CO "\",stream=\"hist\"}"), 1);
    CHECK_EQ_INT(
        value_of(text, "message_event_service_jetstream_exhausted_total{company_id=\"" CO "\",stream=\"dlq\"}"), 0);
    free(text);
    /* Both lanes on one stream: one series with the sum, never a duplicate label set. */
    REQUIRE(metrics_init(CO, "0.1.0", 10, false) == 0);
    metrics_streams_set("events", "events", "dlq");
    metrics_jetstream_exhausted(MSTREAM_REALTIME);
    metrics_jetstream_exhausted(MSTREAM_HISTORICAL);
    text = render();
    REQUIRE(text);
    const char *first = strstr(text, "stream=\"events\"");
    CHECK(first && !strstr(first + 1, "stream=\"events\""));
    CHECK_EQ_INT(
        value_of(text, "message_event_service_jetstream_exhausted_total{company_id=\"" CO "\",stream=\"events\"}"), 2);
    free(text);
    metrics_shutdown();
}
