/* test_service.c - the process around the pipeline: config errors, HTTP endpoints, readiness, logs, SIGTERM. */
#include <signal.h>

#include "itest.h"

static const char *const NO_ENV[] = {NULL};

static int run_bin(const char *const *env, char **out)
{
    const char *bin = getenv("MES_SERVICE_BIN");
    const char *argv[] = {bin, NULL};
    return h_run(argv, env, 20000, out);
}

TEST(invalid_config_value_exits_2_naming_the_key)
{
    const char *env[] = {"COMPANY_ID=acme", "NATS_REALTIME_MAXDELIVER=abc", NULL};
    char *out = NULL;
    CHECK_EQ_INT(run_bin(env, &out), 2);
    CHECK_CONTAINS(out, "nats.realtime.maxDeliver");
    CHECK_CONTAINS(out, "abc");
    free(out);
    const char *env2[] = {"COMPANY_ID=acme", "DATABASE_STATEMENTTIMEOUT=soon", NULL};
    CHECK_EQ_INT(run_bin(env2, &out), 2);
    CHECK_CONTAINS(out, "database.statementTimeout");
    free(out);
    const char *env3[] = {"COMPANY_ID=acme", "SERVER_PORT=70000", NULL};
    CHECK_EQ_INT(run_bin(env3, &out), 2);
    CHECK_CONTAINS(out, "server.port");
    free(out);
}

TEST(invalid_company_id_exits_2_naming_the_rule)
{
    const char *env[] = {"COMPANY_ID=acme;drop", NULL};
    char *out = NULL;
    CHECK_EQ_INT(run_bin(env, &out), 2);
    CHECK_CONTAINS(out, "A-Za-z0-9_");
    free(out);
    const char *env2[] = {"COMPANY_ID=", NULL};
    CHECK_EQ_INT(run_bin(env2, &out), 2);
    free(out);
}

TEST(missing_named_config_file_exits_2)
{
    const char *env[] = {"COMPANY_ID=acme", "CONFIG_FILE=/nonexistent/mes.yaml", NULL};
    char *out = NULL;
    CHECK_EQ_INT(run_bin(env, &out), 2);
    CHECK_CONTAINS(out, "/nonexistent/mes.yaml");
    free(out);
}

TEST(health_ready_metrics_and_unknown_paths_answer_as_specified)
{
    REQUIRE(it_up("acme", NO_ENV));
    char *body = NULL;
    CHECK_EQ_INT(h_http(S.http_port, "GET", "/health", &body), 200);
    CHECK_CONTAINS(body, "\"status\":\"UP\"");
    CHECK_CONTAINS(body, "\"version\"");
    free(body);
    CHECK_EQ_INT(h_http(S.http_port, "GET", "/ready", &body), 200);
    CHECK_CONTAINS(body, "READY");
    free(body);
    CHECK_EQ_INT(h_http(S.http_port, "GET", "/metrics", &body), 200);
    CHECK_CONTAINS(body, "message_event_service_build_info");
    free(body);
    CHECK_EQ_INT(h_http(S.http_port, "GET", "/nope", &body), 404);
    free(body);
    CHECK_EQ_INT(h_http(S.http_port, "POST", "/health", &body), 405);
    free(body);
}

TEST(metrics_enabled_false_answers_404_saying_so_and_leaves_health_and_ready)
{
    static const char *const env[] = {"METRICS_ENABLED=false", NULL};
    REQUIRE(it_up("acme", env));
    char *body = NULL;
    CHECK_EQ_INT(h_http(S.http_port, "GET", "/metrics", &body), 404);
    CHECK_CONTAINS(body, "metrics are disabled (metrics.enabled is false)");
    free(body);
    CHECK_EQ_INT(h_http(S.http_port, "GET", "/health", &body), 200);
    free(body);
    CHECK_EQ_INT(h_http(S.http_port, "GET", "/ready", &body), 200);
    free(body);
}

TEST(metrics_pass_promtool_and_export_every_contract_family)
{
    REQUIRE(it_up("acme", NO_ENV));
    char *body = NULL;
    REQUIRE(h_http(S.http_port, "GET", "/metrics", &body) == 200);
    char path[] = "/tmp/mes-metrics-XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs(body, f);
    fclose(f);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "promtool check metrics < %s 2>&1", path);
    CHECK_EQ_INT(system(cmd), 0);
    unlink(path);
    static const char *const families[] = {"message_event_service_events_received_total",
                                           "message_event_service_events_processed_total",
                                           "message_event_service_events_failed_total",
                                           "message_event_service_event_processing_duration_seconds",
                                           "message_event_service_event_routing_duration_seconds",
                                           "message_event_service_event_processing_actions_total",
                                           "message_event_service_event_with_agent_received_total",
                                           "message_event_service_db_operation_duration_seconds",
                                           "dlq_fetch_requests_total",
                                           "dlq_fetch_errors_total",
                                           "dlq_queue_length",
                                           "dlq_workers_active",
                                           "dlq_tasks_submitted_total",
                                           "dlq_processing_duration_seconds",
                                           "dlq_task_retries_total",
                                           "dlq_acks_success_total",
                                           "dlq_acks_failure_total",
                                           "dlq_tasks_dropped_total",
                                           "onboarding_tasks_submitted_total",
                                           "onboarding_tasks_processed_total",
                                           "onboarding_processing_duration_seconds",
                                           "onboarding_queue_length",
                                           "process_cpu_seconds_total",
                                           "process_resident_memory_bytes",
                                           "process_virtual_memory_bytes",
                                           "process_open_fds",
                                           "process_max_fds",
                                           "process_start_time_seconds",
                                           "message_event_service_build_info",
                                           NULL};
    for (int i = 0; families[i]; i++) {
        char want[160];
        snprintf(want, sizeof want, "# TYPE %s ", families[i]);
        CHECK_CONTAINS(body, want);
    }
    free(body);
}

TEST(ready_is_503_while_postgres_is_down_and_200_when_it_returns)
{
    REQUIRE(it_up("acme", NO_ENV));
    char *body = NULL;
    CHECK_EQ_INT(h_http(S.http_port, "GET", "/ready", &body), 200);
    free(body);
    h_pg_stop(&P);
    int code = 0;
    for (int64_t end = h_now_ms() + 15000; h_now_ms() < end; h_sleep_ms(100)) {
        code = h_http(S.http_port, "GET", "/ready", &body);
        if (code == 503)
            break;
        free(body);
        body = NULL;
    }
    CHECK_EQ_INT(code, 503);
    CHECK_CONTAINS(body, "\"postgres\":\"down\"");
    free(body);
    body = NULL;
    CHECK_EQ_INT(h_http(S.http_port, "GET", "/health", &body), 200);
    free(body);
    REQUIRE(h_pg_restart(&P));
    for (int64_t end = h_now_ms() + 20000; h_now_ms() < end; h_sleep_ms(100)) {
        code = h_http(S.http_port, "GET", "/ready", &body);
        free(body);
        body = NULL;
        if (code == 200)
            break;
    }
    CHECK_EQ_INT(code, 200);
}

TEST(ready_is_503_while_nats_is_down)
{
    REQUIRE(it_up("acme", NO_ENV));
    h_nats_stop(&N);
    char *body = NULL;
    int code = 0;
    for (int64_t end = h_now_ms() + 15000; h_now_ms() < end; h_sleep_ms(100)) {
        code = h_http(S.http_port, "GET", "/ready", &body);
        if (code == 503)
            break;
        free(body);
        body = NULL;
    }
    CHECK_EQ_INT(code, 503);
    CHECK_CONTAINS(body, "\"nats\":\"down\"");
    free(body);
    REQUIRE(h_nats_restart(&N));
    for (int64_t end = h_now_ms() + 20000; h_now_ms() < end; h_sleep_ms(100)) {
        code = h_http(S.http_port, "GET", "/ready", NULL);
        if (code == 200)
            break;
    }
    CHECK_EQ_INT(code, 200);
}

TEST(sigterm_exits_zero_within_the_shutdown_timeout)
{
    const char *env[] = {"SHUTDOWN_TIMEOUT=5s", NULL};
    REQUIRE(it_up("acme", env));
    int64_t t0 = h_now_ms();
    CHECK_EQ_INT(h_svc_signal(&S, SIGTERM, 10000), 0);
    CHECK(h_now_ms() - t0 < 6000);
    char *log = h_svc_log(&S);
    CHECK_CONTAINS(log, "shutdown complete");
    free(log);
}

TEST(secrets_never_appear_in_logs)
{
    char dsn_env[512];
    REQUIRE(h_nats_start(&N));
    REQUIRE(h_pg_start(&P));
    snprintf(dsn_env, sizeof dsn_env, "POSTGRES_DSN=%s password=Sup3rSecretPw", P.dsn);
    const char *env[] = {dsn_env, "NATS_URL_IGNORED=1", NULL};
    REQUIRE(h_svc_start(&S, "acme", &N, &P, env));
    REQUIRE(h_svc_wait_ready(&S, 60000));
    char *log = h_svc_log(&S);
    CHECK(log && strstr(log, "Sup3rSecretPw") == NULL);
    CHECK_CONTAINS(log, "Both consumers started successfully");
    CHECK_CONTAINS(log, "\"company_id\":\"acme\"");
    free(log);
}
