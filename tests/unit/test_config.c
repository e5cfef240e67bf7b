/* test_config.c - config_load precedence, every rejection class, duration parsing, secret masking, config_log. */
#include "config.h"
#include "log.h"
#include "testlib.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern char **environ;

static char err[2048];
static char tmpdir[64];
static char oldcwd[PATH_MAX];

/* Unsets every variable the service could read, so a developer's shell cannot change a result. */
static void clear_env(void)
{
    static const char *const prefixes[] = {"LOGLEVEL=", "LOG_LEVEL=",    "SERVER_",      "NATS_",
                                           "DATABASE_", "POSTGRES_DSN=", "COMPANY_",     "METRICS_",
                                           "SHUTDOWN_", "STARTUP_",      "CONFIG_FILE=", "WORKERPOOLS_"};
    char names[256][128];
    int n = 0;

    for (char **e = environ; e && *e && n < 256; e++) {
        for (size_t p = 0; p < sizeof prefixes / sizeof prefixes[0]; p++) {
            if (strncmp(*e, prefixes[p], strlen(prefixes[p])) == 0) {
                size_t len = strcspn(*e, "=");
                if (len < sizeof names[0])
                    snprintf(names[n++], sizeof names[0], "%.*s", (int)len, *e);
                break;
            }
        }
    }
    for (int i = 0; i < n; i++)
        unsetenv(names[i]);
}

/* Each case starts from a clean environment in an empty directory (so no config/default.yaml is found). */
static void begin(void)
{
    clear_env();
    if (!oldcwd[0] && !getcwd(oldcwd, sizeof oldcwd))
        oldcwd[0] = '\0';
    snprintf(tmpdir, sizeof tmpdir, "/tmp/mes_cfg_XXXXXX");
    if (!mkdtemp(tmpdir) || chdir(tmpdir) != 0)
        testlib_fail(__FILE__, __LINE__, "cannot make a temporary directory");
    setenv("COMPANY_ID", "Acme_01", 1);
}

static void end(void)
{
    clear_env();
    unlink("config/default.yaml");
    rmdir("config");
    unlink("c.yaml");
    if (oldcwd[0] && chdir(oldcwd) != 0)
        testlib_fail(__FILE__, __LINE__, "cannot return to %s", oldcwd);
    rmdir(tmpdir);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        testlib_fail(__FILE__, __LINE__, "cannot write %s", path);
        return;
    }
    fputs(text, f);
    fclose(f);
}

static int load(config_t *cfg)
{
    return config_load(cfg, 0, NULL, err, sizeof err);
}

/* Loads with "--config c.yaml" after writing text to c.yaml. */
static int load_yaml(config_t *cfg, const char *text)
{
    char a0[] = "mes", a1[] = "--config", a2[] = "c.yaml";
    char *argv[] = {a0, a1, a2, NULL};
    write_file("c.yaml", text);
    return config_load(cfg, 3, argv, err, sizeof err);
}

/* Expects the load to fail with status 2 and every needle in the message. */
static void expect_bad(int line, int rc, const char *n1, const char *n2, const char *n3)
{
    const char *needles[] = {"invalid configuration: ", n1, n2, n3};
    if (rc != CONFIG_EXIT_BAD)
        testlib_fail(__FILE__, line, "expected CONFIG_EXIT_BAD, got %d (err \"%s\")", rc, err);
    for (int i = 0; i < 4; i++) {
        if (needles[i] && !strstr(err, needles[i]))
            testlib_fail(__FILE__, line, "\"%s\" not in \"%s\"", needles[i], err);
    }
}

static void expect_env_bad(int line, const char *env, const char *value, const char *key, const char *rule)
{
    config_t cfg;
    char quoted[256];
    setenv(env, value, 1);
    snprintf(quoted, sizeof quoted, "= \"%s\"", value);
    expect_bad(line, load(&cfg), key, quoted, rule);
    config_free(&cfg);
    unsetenv(env);
}

/* Runs fn with stdout redirected to a temporary file and returns what was written (caller frees). */
static char *capture(void (*fn)(const void *), const void *arg)
{
    char path[] = "/tmp/mes_out_XXXXXX";
    int fd = mkstemp(path), saved = dup(STDOUT_FILENO);
    char *text = NULL;

    if (fd < 0 || saved < 0)
        return NULL;
    fflush(stdout);
    dup2(fd, STDOUT_FILENO);
    fn(arg);
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    off_t size = lseek(fd, 0, SEEK_END);
    text = calloc(1, (size_t)size + 1);
    if (text && pread(fd, text, (size_t)size, 0) != size)
        text[0] = '\0';
    close(fd);
    unlink(path);
    return text;
}

static void run_config_log(const void *cfg)
{
    config_log(cfg);
}

TEST(defaults_load_with_only_company_id_set)
{
    config_t c;
    begin();
    REQUIRE(load(&c) == 0);
    CHECK_EQ_STR(err, "");
    CHECK_EQ_STR(c.log_level, "info");
    CHECK_EQ_INT(c.server_port, 8080);
    CHECK_EQ_STR(c.server_address, "0.0.0.0");
    CHECK_EQ_INT(c.http_max_connections, 64);
    CHECK_EQ_INT(c.http_connection_timeout_ms, 10000);
    CHECK_EQ_STR(c.nats_url, "nats://127.0.0.1:4222");
    CHECK_EQ_STR(c.realtime.stream, "wa_events_stream");
    CHECK_EQ_STR(c.realtime.consumer, "wa_listener_");
    CHECK_EQ_STR(c.realtime.group, "wa_listener_group");
    CHECK_EQ_STR(c.realtime.subject_list, "");
    CHECK_EQ_INT(c.realtime.max_age_days, 30);
    CHECK_EQ_INT(c.realtime.max_deliver, 5);
    CHECK_EQ_INT(c.realtime.nak_base_delay_ms, 1000);
    CHECK_EQ_INT(c.realtime.nak_max_delay_ms, 30000);
    CHECK_EQ_INT(c.realtime.ack_wait_ms, 30000);
    CHECK_EQ_INT(c.realtime.max_ack_pending, 1000);
    CHECK_EQ_INT(c.realtime.batch_size, 256);
    CHECK_EQ_INT(c.realtime.fetch_wait_ms, 500);
    CHECK_EQ_STR(c.historical.stream, "wa_history_events_stream");
    CHECK_EQ_STR(c.historical.consumer, "wa_history_listener_");
    CHECK_EQ_STR(c.historical.group, "wa_history_listener_group");
    CHECK_EQ_STR(c.historical.subject_list, "");
    CHECK_EQ_INT(c.historical.max_age_days, 30);
    CHECK_EQ_INT(c.historical.max_deliver, 3);
    CHECK_EQ_INT(c.historical.nak_base_delay_ms, 2000);
    CHECK_EQ_INT(c.historical.nak_max_delay_ms, 60000);
    CHECK_EQ_INT(c.historical.ack_wait_ms, 60000);
    CHECK_EQ_INT(c.historical.max_ack_pending, 500);
    CHECK_EQ_INT(c.historical.batch_size, 64);
    CHECK_EQ_INT(c.historical.fetch_wait_ms, 500);
    CHECK_EQ_STR(c.dlq_stream, "dlq_stream");
    CHECK_EQ_STR(c.dlq_subject, "v1.dlq");
    CHECK_EQ_INT(c.dlq_workers, 8);
    CHECK_EQ_INT(c.dlq_queue_size, 100);
    CHECK_EQ_INT(c.dlq_max_retries, 5);
    CHECK_EQ_INT(c.dlq_base_delay_ms, 60000);
    CHECK_EQ_INT(c.dlq_max_delay_ms, 15 * 60000);
    CHECK_EQ_INT(c.dlq_max_age_days, 7);
    CHECK_EQ_INT(c.dlq_max_deliver, 10);
    CHECK_EQ_INT(c.dlq_ack_wait_ms, 30000);
    CHECK_EQ_INT(c.dlq_max_ack_pending, 1000);
    CHECK_EQ_STR(c.postgres_dsn, "host=127.0.0.1 port=5432 user=postgres dbname=postgres");
    CHECK(c.postgres_auto_migrate);
    CHECK_EQ_INT(c.statement_timeout_ms, 30000);
    CHECK_EQ_INT(c.lock_timeout_ms, 5000);
    CHECK_EQ_INT(c.db_max_connections, 4);
    CHECK_EQ_INT(c.db_writers, 2);
    CHECK_EQ_INT(c.partition_check_interval_ms, 3600000);
    CHECK_EQ_STR(c.company_id, "Acme_01");
    CHECK_EQ_STR(c.schema, "daisi_acme_01");
    CHECK(c.metrics_enabled);
    CHECK_EQ_INT(c.metrics_max_agent_labels, 1000);
    CHECK(!c.metrics_jid_label);
    CHECK_EQ_INT(c.shutdown_timeout_ms, 20000);
    CHECK_EQ_INT(c.startup_timeout_ms, 60000);
    config_free(&c);
    end();
}

TEST(yaml_file_overrides_defaults_and_env_overrides_file)
{
    config_t c;
    begin();
    setenv("NATS_REALTIME_MAXDELIVER", "9", 1);
    int rc = load_yaml(&c, "logLevel: debug\n"
                           "nats:\n"
                           "  url: nats://file-host:4222\n"
                           "  realtime:\n"
                           "    maxDeliver: 7\n"
                           "    batchSize: 100\n"
                           "database:\n"
                           "  postgresAutoMigrate: no\n");
    REQUIRE(rc == 0);
    CHECK_EQ_STR(c.log_level, "debug");
    CHECK_EQ_STR(c.nats_url, "nats://file-host:4222");
    CHECK_EQ_INT(c.realtime.max_deliver, 9);
    CHECK_EQ_INT(c.realtime.batch_size, 100);
    CHECK(!c.postgres_auto_migrate);
    CHECK_EQ_INT(c.historical.max_deliver, 3);
    config_free(&c);
    end();
}

TEST(config_file_env_var_names_the_yaml_file)
{
    config_t c;
    begin();
    write_file("c.yaml", "server:\n  port: 9100\n");
    setenv("CONFIG_FILE", "c.yaml", 1);
    REQUIRE(load(&c) == 0);
    CHECK_EQ_INT(c.server_port, 9100);
    config_free(&c);
    end();
}

TEST(config_argument_in_both_forms_wins_over_config_file_env)
{
    config_t c;
    char a0[] = "mes", a1[] = "--config=c.yaml", a2[] = "migrate";
    char *argv[] = {a0, a1, a2, NULL};
    begin();
    write_file("c.yaml", "server:\n  port: 9200\n");
    setenv("CONFIG_FILE", "does-not-exist.yaml", 1);
    REQUIRE(config_load(&c, 3, argv, err, sizeof err) == 0);
    CHECK_EQ_INT(c.server_port, 9200);
    config_free(&c);
    REQUIRE(load_yaml(&c, "server:\n  port: 9300\n") == 0); /* "--config c.yaml" */
    CHECK_EQ_INT(c.server_port, 9300);
    config_free(&c);
    end();
}

TEST(default_yaml_in_the_working_directory_is_read_when_no_file_is_named)
{
    config_t c;
    begin();
    REQUIRE(mkdir("config", 0700) == 0);
    write_file("config/default.yaml", "metrics:\n  jidLabel: true\n");
    REQUIRE(load(&c) == 0);
    CHECK(c.metrics_jid_label);
    config_free(&c);
    end();
}

TEST(named_config_file_that_is_missing_is_an_error)
{
    config_t c;
    char a0[] = "mes", a1[] = "--config", a2[] = "/nonexistent/x.yaml", a3[] = "--config";
    char *argv[] = {a0, a1, a2, NULL};
    char *dangling[] = {a0, a3, NULL};
    begin();
    expect_bad(__LINE__, config_load(&c, 3, argv, err, sizeof err), "/nonexistent/x.yaml", "cannot be read", NULL);
    setenv("CONFIG_FILE", "missing.yaml", 1);
    expect_bad(__LINE__, load(&c), "missing.yaml", "No such file", NULL);
    unsetenv("CONFIG_FILE");
    expect_bad(__LINE__, config_load(&c, 2, dangling, err, sizeof err), "--config needs a file name", NULL, NULL);
    config_free(&c);
    end();
}

TEST(short_reference_env_names_set_their_keys)
{
    config_t c;
    begin();
    setenv("POSTGRES_DSN", "host=db user=svc dbname=events", 1);
    setenv("NATS_URL", "nats://nats.internal:4222", 1);
    setenv("COMPANY_ID", "Tenant7", 1);
    setenv("LOG_LEVEL", "WARN", 1);
    setenv("SERVER_PORT", "9090", 1);
    REQUIRE(load(&c) == 0);
    CHECK_EQ_STR(c.postgres_dsn, "host=db user=svc dbname=events");
    CHECK_EQ_STR(c.nats_url, "nats://nats.internal:4222");
    CHECK_EQ_STR(c.company_id, "Tenant7");
    CHECK_EQ_STR(c.log_level, "warn"); /* stored in canonical form */
    CHECK_EQ_INT(c.server_port, 9090);
    config_free(&c);
    end();
}

TEST(long_env_names_work_and_short_names_win_when_both_are_set)
{
    config_t c;
    begin();
    setenv("DATABASE_POSTGRESDSN", "host=long", 1);
    setenv("LOGLEVEL", "error", 1);
    setenv("DATABASE_POOLSIZE", "4", 1);
    REQUIRE(load(&c) == 0);
    CHECK_EQ_STR(c.postgres_dsn, "host=long");
    CHECK_EQ_STR(c.log_level, "error");
    CHECK_EQ_INT(c.db_max_connections, 4); /* database.poolSize: the old name of database.maxConnections */
    config_free(&c);
    setenv("POSTGRES_DSN", "host=short", 1);
    setenv("LOG_LEVEL", "debug", 1);
    REQUIRE(load(&c) == 0);
    CHECK_EQ_STR(c.postgres_dsn, "host=short");
    CHECK_EQ_STR(c.log_level, "debug");
    config_free(&c);
    end();
}

TEST(empty_env_variable_counts_as_unset)
{
    config_t c;
    begin();
    setenv("NATS_URL", "", 1);
    setenv("SERVER_PORT", "", 1);
    REQUIRE(load_yaml(&c, "server:\n  port: 8181\n") == 0);
    CHECK_EQ_STR(c.nats_url, "nats://127.0.0.1:4222");
    CHECK_EQ_INT(c.server_port, 8181);
    config_free(&c);
    end();
}

TEST(durations_parse_ms_s_m_h_and_combinations)
{
    config_t c;
    begin();
    setenv("NATS_REALTIME_FETCHWAIT", "500ms", 1);
    setenv("NATS_REALTIME_ACKWAIT", "2s", 1);
    setenv("NATS_REALTIME_NAKMAXDELAY", "1m", 1);
    setenv("DATABASE_PARTITIONCHECKINTERVAL", "1h", 1);
    setenv("NATS_HISTORICAL_ACKWAIT", "1m30s", 1);
    setenv("NATS_HISTORICAL_FETCHWAIT", "1.5s", 1);
    setenv("DATABASE_STATEMENTTIMEOUT", "0s", 1);
    REQUIRE(load(&c) == 0);
    CHECK_EQ_INT(c.realtime.fetch_wait_ms, 500);
    CHECK_EQ_INT(c.realtime.ack_wait_ms, 2000);
    CHECK_EQ_INT(c.realtime.nak_max_delay_ms, 60000);
    CHECK_EQ_INT(c.partition_check_interval_ms, 3600000);
    CHECK_EQ_INT(c.historical.ack_wait_ms, 90000);
    CHECK_EQ_INT(c.historical.fetch_wait_ms, 1500);
    CHECK_EQ_INT(c.statement_timeout_ms, 0);
    config_free(&c);
    end();
}

TEST(duration_without_unit_or_malformed_is_rejected_naming_the_allowed_forms)
{
    static const char *const bad[] = {"30", "", "s", "-1s", "1d", "1 s", "1s ", "2sec", "1.s5", "99999999999999h"};
    begin();
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (!*bad[i])
            continue; /* empty env is unset; checked through YAML below */
        expect_env_bad(__LINE__, "NATS_REALTIME_ACKWAIT", bad[i],
                       "key nats.realtime.ackWait (env NATS_REALTIME_ACKWAIT)",
                       "must be a duration between 1s and 1h written as a number with a unit ms, s, m or h");
    }
    config_t c;
    expect_bad(__LINE__, load_yaml(&c, "shutdown:\n  timeout:\n"), "key shutdown.timeout (file c.yaml line 2", "= \"\"",
               "500ms, 2s, 1m, 1h");
    end();
}

TEST(bad_integer_message_names_key_env_value_and_range)
{
    config_t c;
    begin();
    setenv("NATS_REALTIME_MAXDELIVER", "abc", 1);
    REQUIRE(load(&c) == CONFIG_EXIT_BAD);
    CHECK_EQ_STR(err, "invalid configuration: key nats.realtime.maxDeliver (env NATS_REALTIME_MAXDELIVER) = \"abc\": "
                      "must be an integer between 1 and 1000");
    config_free(&c);
    end();
}

TEST(out_of_range_and_overflowing_integers_are_rejected)
{
    begin();
    expect_env_bad(__LINE__, "SERVER_PORT", "0", "key server.port (env SERVER_PORT)", "between 1 and 65535");
    expect_env_bad(__LINE__, "SERVER_PORT", "65536", "key server.port", "between 1 and 65535");
    expect_env_bad(__LINE__, "SERVER_PORT", "-80", "key server.port", "between 1 and 65535");
    expect_env_bad(__LINE__, "SERVER_PORT", "99999999999999999999999", "key server.port", "between 1 and 65535");
    expect_env_bad(__LINE__, "SERVER_PORT", "80.5", "key server.port", "between 1 and 65535");
    expect_env_bad(__LINE__, "SERVER_PORT", " 80", "key server.port", "between 1 and 65535");
    expect_env_bad(__LINE__, "NATS_REALTIME_BATCHSIZE", "4097", "nats.realtime.batchSize", "between 1 and 4096");
    expect_env_bad(__LINE__, "NATS_DLQWORKERS", "0", "nats.dlqWorkers", "between 1 and 256");
    expect_env_bad(__LINE__, "NATS_DLQQUEUESIZE", "100001", "nats.dlqQueueSize", "between 1 and 100000");
    expect_env_bad(__LINE__, "NATS_HISTORICAL_MAXAGE", "-1", "nats.historical.maxAge", "whole number of days");
    expect_env_bad(__LINE__, "NATS_DLQMAXDELAYMINUTES", "1441", "nats.dlqMaxDelayMinutes",
                   "minutes between 1 and 1440");
    expect_env_bad(__LINE__, "NATS_DLQACKWAIT", "999ms", "nats.dlqAckWait", "between 1s and 1h");
    end();
}

TEST(bad_bool_is_rejected_and_all_bool_spellings_are_accepted)
{
    config_t c;
    begin();
    expect_env_bad(__LINE__, "METRICS_ENABLED", "maybe", "key metrics.enabled (env METRICS_ENABLED)",
                   "must be one of true, false, 1, 0, yes, no");
    setenv("METRICS_ENABLED", "No", 1);
    setenv("METRICS_JIDLABEL", "1", 1);
    setenv("DATABASE_POSTGRESAUTOMIGRATE", "FALSE", 1);
    REQUIRE(load(&c) == 0);
    CHECK(!c.metrics_enabled);
    CHECK(c.metrics_jid_label);
    CHECK(!c.postgres_auto_migrate);
    config_free(&c);
    end();
}

TEST(bad_log_level_is_rejected_naming_the_levels)
{
    begin();
    expect_env_bad(__LINE__, "LOG_LEVEL", "verbose", "key logLevel (env LOG_LEVEL)",
                   "must be one of debug, info, warn, error");
    expect_env_bad(__LINE__, "LOGLEVEL", "trace", "key logLevel (env LOGLEVEL)", "debug, info, warn, error");
    end();
}

TEST(bad_company_id_is_rejected_naming_the_rule)
{
    static const char *const bad[] = {"acme-co", "acme co",        "acme.co",
                                      "Ünï",     "a;drop table x", "a123456789012345678901234567890123456789012345678"};
    begin();
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_env_bad(__LINE__, "COMPANY_ID", bad[i], "key company.id (env COMPANY_ID)", "^[A-Za-z0-9_]{1,48}$");
    end();
}

TEST(missing_company_id_is_an_error_naming_company_id)
{
    config_t c;
    begin();
    unsetenv("COMPANY_ID");
    expect_bad(__LINE__, load(&c), "key company.id (env COMPANY_ID) is not set", "required", "^[A-Za-z0-9_]{1,48}$");
    expect_bad(__LINE__, load_yaml(&c, "company:\n  id: \"\"\n"), "key company.id", "is empty", "COMPANY_ID");
    REQUIRE(load_yaml(&c, "company:\n  id: FromFile\n") == 0);
    CHECK_EQ_STR(c.schema, "daisi_fromfile");
    config_free(&c);
    end();
}

TEST(schema_is_daisi_plus_lower_case_company_id)
{
    config_t c;
    begin();
    setenv("COMPANY_ID", "ACME_Corp_42", 1);
    REQUIRE(load(&c) == 0);
    CHECK_EQ_STR(c.company_id, "ACME_Corp_42");
    CHECK_EQ_STR(c.schema, "daisi_acme_corp_42");
    config_free(&c);
    end();
}

TEST(unknown_yaml_key_is_rejected_naming_it)
{
    config_t c;
    begin();
    expect_bad(__LINE__, load_yaml(&c, "nats:\n  realtime:\n    maxDelivr: 5\n"), "unknown key nats.realtime.maxDelivr",
               "c.yaml line 3", NULL);
    expect_bad(__LINE__, load_yaml(&c, "nats: 5\n"), "unknown key nats ", NULL, NULL);
    expect_bad(__LINE__, load_yaml(&c, "bogus:\n  - 1\n"), "unknown key bogus", NULL, NULL);
    end();
}

TEST(worker_pools_keys_are_accepted_and_ignored)
{
    config_t c;
    begin();
    REQUIRE(load_yaml(&c, "workerPools:\n  onboarding:\n    workers: 4\n    queueSize: [1, {a: b}]\n"
                          "  other: x\nserver:\n  port: 8082\n") == 0);
    CHECK_EQ_INT(c.server_port, 8082);
    config_free(&c);
    end();
}

TEST(yaml_keys_match_case_insensitively_like_the_reference)
{
    config_t c;
    begin();
    REQUIRE(load_yaml(&c, "NATS:\n  Realtime:\n    maxdeliver: 11\n") == 0);
    CHECK_EQ_INT(c.realtime.max_deliver, 11);
    config_free(&c);
    end();
}

TEST(malformed_yaml_is_rejected_with_file_and_position)
{
    config_t c;
    begin();
    expect_bad(__LINE__, load_yaml(&c, "nats:\n  url: a: b\n"), "c.yaml is not valid YAML", "line", NULL);
    expect_bad(__LINE__, load_yaml(&c, "a: 'unterminated\n"), "not valid YAML", NULL, NULL);
    expect_bad(__LINE__, load_yaml(&c, "\tlogLevel: info\n"), "not valid YAML", NULL, NULL);
    expect_bad(__LINE__, load_yaml(&c, "- a\n- b\n"), "top level must be a mapping", NULL, NULL);
    expect_bad(__LINE__, load_yaml(&c, "just text\n"), "top level must be a mapping", NULL, NULL);
    expect_bad(__LINE__, load_yaml(&c, "logLevel: info\n---\nlogLevel: debug\n"), "only one YAML document", NULL, NULL);
    expect_bad(__LINE__, load_yaml(&c, "logLevel: &a info\nnats:\n  url: *a\n"), "aliases are not supported",
               "nats.url", NULL);
    expect_bad(__LINE__, load_yaml(&c, "logLevel: info\nlogLevel: debug\n"), "key logLevel appears twice", NULL, NULL);
    expect_bad(__LINE__, load_yaml(&c, "? [a]\n: 1\n"), "must be plain names", NULL, NULL);
    expect_bad(__LINE__, load_yaml(&c, "logLevel: \"a\\0b\"\n"), "NUL byte", NULL, NULL);
    end();
}

TEST(yaml_list_or_mapping_where_a_scalar_is_expected_is_rejected)
{
    config_t c;
    begin();
    expect_bad(__LINE__, load_yaml(&c, "server:\n  port: [1, 2]\n"), "key server.port",
               "expects a single value, not a list", NULL);
    expect_bad(__LINE__, load_yaml(&c, "logLevel:\n  x: 1\n"), "key logLevel", "not a mapping", NULL);
    end();
}

TEST(empty_or_comment_only_yaml_file_sets_nothing)
{
    static const char *const empty[] = {"", "# only a comment\n", "---\n", "~\n"};
    config_t c;
    begin();
    for (size_t i = 0; i < sizeof empty / sizeof empty[0]; i++) {
        CHECK_EQ_INT(load_yaml(&c, empty[i]), 0);
        CHECK_EQ_INT(c.server_port, 8080);
        config_free(&c);
    }
    end();
}

TEST(dlq_max_retries_above_dlq_max_deliver_is_rejected_naming_both_keys)
{
    begin();
    setenv("NATS_DLQMAXDELIVER", "6", 1);
    expect_env_bad(__LINE__, "NATS_DLQMAXRETRIES", "7", "key nats.dlqMaxRetries (env NATS_DLQMAXRETRIES)",
                   "must not be greater than nats.dlqMaxDeliver (\"6\")");
    end();
}

TEST(base_delay_above_max_delay_and_batch_above_max_ack_pending_are_rejected)
{
    begin();
    expect_env_bad(__LINE__, "NATS_REALTIME_NAKBASEDELAY", "31s", "key nats.realtime.nakBaseDelay",
                   "must not be greater than nats.realtime.nakMaxDelay (\"30s\")");
    expect_env_bad(__LINE__, "NATS_DLQBASEDELAYMINUTES", "16", "key nats.dlqBaseDelayMinutes",
                   "must not be greater than nats.dlqMaxDelayMinutes (\"15\")");
    expect_env_bad(__LINE__, "NATS_DLQBASEDELAY", "20m", "key nats.dlqBaseDelay",
                   "must not be greater than nats.dlqMaxDelayMinutes");
    expect_env_bad(__LINE__, "NATS_HISTORICAL_BATCHSIZE", "501", "key nats.historical.batchSize",
                   "must not be greater than nats.historical.maxAckPending (\"500\")");
    end();
}

TEST(dlq_base_delay_duration_overrides_the_minutes_key)
{
    config_t c;
    begin();
    setenv("NATS_DLQBASEDELAYMINUTES", "2", 1);
    setenv("NATS_DLQMAXDELAYMINUTES", "20", 1);
    REQUIRE(load(&c) == 0);
    CHECK_EQ_INT(c.dlq_base_delay_ms, 120000);
    CHECK_EQ_INT(c.dlq_max_delay_ms, 1200000);
    config_free(&c);
    setenv("NATS_DLQBASEDELAY", "30s", 1);
    setenv("NATS_DLQMAXDELAY", "90s", 1);
    REQUIRE(load(&c) == 0);
    CHECK_EQ_INT(c.dlq_base_delay_ms, 30000);
    CHECK_EQ_INT(c.dlq_max_delay_ms, 90000);
    config_free(&c);
    /* An empty (null) value in the file leaves the minutes key in charge. */
    unsetenv("NATS_DLQBASEDELAY");
    unsetenv("NATS_DLQMAXDELAY");
    REQUIRE(load_yaml(&c, "nats:\n  dlqBaseDelay: ~\n  dlqMaxDelay: \"\"\n") == 0);
    CHECK_EQ_INT(c.dlq_base_delay_ms, 120000);
    config_free(&c);
    end();
}

TEST(nats_names_and_subjects_are_validated)
{
    begin();
    expect_env_bad(__LINE__, "NATS_REALTIME_STREAM", "wa events", "nats.realtime.stream", "NATS name rules");
    expect_env_bad(__LINE__, "NATS_DLQSTREAM", "dlq.stream", "nats.dlqStream", "NATS name rules");
    expect_env_bad(__LINE__, "NATS_HISTORICAL_CONSUMER", "wa_*", "nats.historical.consumer", "NATS name rules");
    expect_env_bad(__LINE__, "NATS_DLQSUBJECT", "v1.dlq.>", "nats.dlqSubject", "without spaces, '*' or '>'");
    expect_env_bad(__LINE__, "NATS_DLQSUBJECT", "v1..dlq", "nats.dlqSubject", "non-empty tokens");
    expect_env_bad(__LINE__, "SERVER_ADDRESS", "localhost", "server.address", "numeric IPv4 or IPv6");
    end();
}

TEST(subject_list_is_normalised_and_limited_to_the_lane_bases)
{
    config_t c;
    begin();
    setenv("NATS_REALTIME_SUBJECTLIST", " v1.chats.upsert , v1.messages.upsert,v1.chats.upsert", 1);
    REQUIRE(load(&c) == 0);
    CHECK_EQ_STR(c.realtime.subject_list, "v1.chats.upsert,v1.messages.upsert");
    config_free(&c);
    unsetenv("NATS_REALTIME_SUBJECTLIST");
    REQUIRE(load_yaml(&c, "nats:\n  historical:\n    subjectList: [v1.history.chats, v1.history.contacts]\n") == 0);
    CHECK_EQ_STR(c.historical.subject_list, "v1.history.chats,v1.history.contacts");
    config_free(&c);
    expect_env_bad(__LINE__, "NATS_REALTIME_SUBJECTLIST", "v1.history.chats", "nats.realtime.subjectList",
                   "comma-separated list of: v1.chats.upsert, v1.chats.update");
    expect_env_bad(__LINE__, "NATS_HISTORICAL_SUBJECTLIST", "v1.history.chats,,", "nats.historical.subjectList",
                   "v1.history.messages");
    end();
}

TEST(mask_secret_hides_passwords_in_keyword_dsns)
{
    char out[256];
    config_mask_secret("host=db user=svc password=s3cret dbname=x", out, sizeof out);
    CHECK_EQ_STR(out, "host=db user=svc password=**** dbname=x");
    config_mask_secret("password='with space \\' quote' host=db", out, sizeof out);
    CHECK_EQ_STR(out, "password=**** host=db");
    config_mask_secret("host=db PASSWORD = s3cret", out, sizeof out);
    CHECK_EQ_STR(out, "host=db PASSWORD = ****");
    config_mask_secret("password='unterminated secret", out, sizeof out);
    CHECK_EQ_STR(out, "password=****");
    config_mask_secret("sslpassword=keypass host=db", out, sizeof out);
    CHECK_EQ_STR(out, "sslpassword=**** host=db");
    config_mask_secret("host=127.0.0.1 port=5432 user=postgres dbname=postgres", out, sizeof out);
    CHECK_EQ_STR(out, "host=127.0.0.1 port=5432 user=postgres dbname=postgres");
}

TEST(mask_secret_hides_passwords_in_uris_and_nats_urls)
{
    char out[256];
    config_mask_secret("postgres://u:pa@ss@db:5432/ev?sslmode=disable", out, sizeof out);
    CHECK_EQ_STR(out, "postgres://u:****@db:5432/ev?sslmode=disable");
    config_mask_secret("postgresql://svc@db/ev?password=s3cret&sslmode=require", out, sizeof out);
    CHECK_EQ_STR(out, "postgresql://svc@db/ev?password=****&sslmode=require");
    config_mask_secret("nats://user:pass@host:4222", out, sizeof out);
    CHECK_EQ_STR(out, "nats://user:****@host:4222");
    config_mask_secret("nats://a:x@h1:4222, tls://b:y@h2:4222", out, sizeof out);
    CHECK_EQ_STR(out, "nats://a:****@h1:4222, tls://b:****@h2:4222");
    config_mask_secret("nats://s3cr3ttoken@host:4222", out, sizeof out);
    CHECK_EQ_STR(out, "nats://****@host:4222");
    config_mask_secret("nats://127.0.0.1:4222", out, sizeof out);
    CHECK_EQ_STR(out, "nats://127.0.0.1:4222");
}

TEST(mask_secret_is_safe_with_small_buffers_and_null)
{
    char out[12];
    config_mask_secret("password=abcdefghijkl", out, sizeof out);
    CHECK_EQ_STR(out, "password=**");
    config_mask_secret("nats://u:secretsecret@h", out, 10);
    CHECK(strstr(out, "secret") == NULL);
    config_mask_secret(NULL, out, sizeof out);
    CHECK_EQ_STR(out, "");
    config_mask_secret("x", out, 0);
    config_mask_secret("x", NULL, 5);
}

TEST(bad_secret_value_is_masked_in_the_error_message)
{
    begin();
    setenv("NATS_URL", "nats://u:hunter2@h\x01", 1);
    config_t c;
    REQUIRE(load(&c) == CONFIG_EXIT_BAD);
    CHECK_CONTAINS(err, "key nats.url (env NATS_URL) = \"nats://u:****@h?\"");
    CHECK(strstr(err, "hunter2") == NULL);
    end();
}

TEST(config_log_emits_valid_json_without_any_password)
{
    config_t c;
    begin();
    setenv("POSTGRES_DSN", "host=db user=svc password='pg pass' dbname=x", 1);
    setenv("NATS_URL", "nats://svc:natspw@nats:4222", 1);
    REQUIRE(load(&c) == 0);
    log_init(LOG_INFO, c.company_id);
    char *out = capture(run_config_log, &c);
    REQUIRE(out);
    CHECK(strstr(out, "pg pass") == NULL);
    CHECK(strstr(out, "natspw") == NULL);
    cJSON *j = cJSON_Parse(out);
    CHECK(j != NULL);
    CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItem(j, "logger")), "config");
    CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItem(j, "company_id")), "Acme_01");
    CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItem(j, "database.postgresDSN")),
                 "host=db user=svc password=**** dbname=x");
    CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItem(j, "nats.url")), "nats://svc:****@nats:4222");
    CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItem(j, "nats.realtime.ackWait")), "30s");
    CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItem(j, "nats.dlqBaseDelay")), "1m");
    CHECK_EQ_INT(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "server.port")), 8080);
    CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItem(j, "schema")), "daisi_acme_01");
    cJSON_Delete(j);
    free(out);
    config_free(&c);
    end();
}

/* The file documents the defaults: loading it must change nothing (compared through the startup dump). */
TEST(config_default_yaml_matches_the_built_in_defaults)
{
    config_t builtin, file;
    char path[PATH_MAX + 64];
    const char *src = getenv("MES_SOURCE_DIR");
    begin();
    if (src)
        snprintf(path, sizeof path, "%s/config/default.yaml", src);
    else /* __FILE__ is <source>/tests/unit/test_config.c, absolute under CMake, else relative to the start cwd */
        snprintf(path, sizeof path, "%s%s%.*s/config/default.yaml", __FILE__[0] == '/' ? "" : oldcwd,
                 __FILE__[0] == '/' ? "" : "/", (int)(strlen(__FILE__) - strlen("tests/unit/test_config.c")), __FILE__);
    char a0[] = "mes", a1[] = "--config";
    char *argv[] = {a0, a1, path, NULL};
    REQUIRE(load(&builtin) == 0);
    int rc = config_load(&file, 3, argv, err, sizeof err);
    if (rc) {
        testlib_fail(__FILE__, __LINE__, "%s", err);
        config_free(&builtin);
        return;
    }
    log_init(LOG_INFO, "Acme_01");
    char *a = capture(run_config_log, &builtin), *b = capture(run_config_log, &file);
    REQUIRE(a && b);
    const char *fa = strstr(a, "\"level\""), *fb = strstr(b, "\"level\""); /* skip the timestamps */
    REQUIRE(fa && fb);
    CHECK_EQ_STR(fa, fb);
    free(a);
    free(b);
    config_free(&builtin);
    config_free(&file);
    end();
}

/* Every key, fed values of every wrong shape, must either load or fail with a message - never crash. */
TEST(garbage_in_every_key_never_crashes)
{
    static const char *const garbage[] = {
        "abc",
        "-1",
        "0",
        "99999999999999999999999",
        "1e3",
        " 5",
        "\t",
        "1.5",
        "-5s",
        "5x",
        "ms",
        "1h1h1h1h",
        "9223372036854775807ms",
        "9223372036854775807",
        "nats://u:p@h",
        "a b",
        "a.b",
        "*",
        ">",
        "\x01",
        "true",
        "\xff\xfe",
        "'",
        "\"",
        "%s%n",
        "v1.chats.upsert,",
        ",",
    };
    static char big[20000];
    config_t c;
    begin();
    memset(big, '7', sizeof big - 1);
    REQUIRE(load(&c) == 0);
    log_init(LOG_INFO, "x");
    char *dump = capture(run_config_log, &c);
    config_free(&c);
    cJSON *j = dump ? cJSON_Parse(dump) : NULL;
    REQUIRE(j);
    int keys = 0;
    for (cJSON *it = j->child; it; it = it->next) {
        char env[128];
        size_t n = 0;
        if (strchr(it->string, '.') == NULL && strcmp(it->string, "logLevel") != 0)
            continue; /* ts, level, msg, ... */
        for (; it->string[n] && n + 1 < sizeof env; n++)
            env[n] = it->string[n] == '.' ? '_' : (char)toupper((unsigned char)it->string[n]);
        env[n] = '\0';
        keys++;
        for (size_t g = 0; g <= sizeof garbage / sizeof garbage[0]; g++) {
            setenv(env, g < sizeof garbage / sizeof garbage[0] ? garbage[g] : big, 1);
            err[0] = '\0';
            int rc = load(&c);
            if (rc != 0 && (rc != CONFIG_EXIT_BAD || !strstr(err, "invalid configuration: ")))
                testlib_fail(__FILE__, __LINE__, "%s: rc %d err \"%s\"", env, rc, err);
            config_free(&c);
        }
        if (strcmp(env, "COMPANY_ID") == 0)
            setenv(env, "Acme_01", 1); /* every other key needs a valid tenant to get as far as its own check */
        else
            unsetenv(env);
    }
    CHECK(keys >= 50);
    cJSON_Delete(j);
    free(dump);
    end();
}

TEST(garbage_yaml_files_never_crash)
{
    static const char *const docs[] = {
        ": :",
        "{{{{",
        "[[[[",
        "a:\n b:\n  c:\n   d:\n    e:\n     f:\n      g:\n       h:\n        i: 1\n",
        "\xff\xfe\x00",
        "!!binary 4pyT\n",
        "*undefined\n",
        "nats: {url: [1, [2, [3]]]}\n",
        "%YAML 9.9\n---\na: 1\n",
        "server: {port: !!int 12}\n",
        "? \n: \n",
        "company:\n  id: [a]\n",
    };
    config_t c;
    begin();
    for (size_t i = 0; i < sizeof docs / sizeof docs[0]; i++) {
        err[0] = '\0';
        int rc = load_yaml(&c, docs[i]);
        if (rc != 0 && (rc != CONFIG_EXIT_BAD || !strstr(err, "invalid configuration: ")))
            testlib_fail(__FILE__, __LINE__, "doc %zu: rc %d err \"%s\"", i, rc, err);
        config_free(&c);
    }
    end();
}

TEST(config_free_is_null_safe_and_idempotent)
{
    config_t c;
    begin();
    config_free(NULL);
    REQUIRE(load(&c) == 0);
    config_free(&c);
    config_free(&c);
    CHECK(c.nats_url == NULL);
    end();
}

TEST(connection_budget_and_writers_are_validated_naming_the_key)
{
    config_t c;
    begin();
    setenv("DATABASE_MAXCONNECTIONS", "3", 1);
    REQUIRE(load(&c) == 0);
    CHECK_EQ_INT(c.db_max_connections, 3);
    CHECK_EQ_INT(c.db_writers, 2); /* auto: min(2, maxConnections - 1) */
    config_free(&c);
    setenv("DATABASE_MAXCONNECTIONS", "2", 1);
    REQUIRE(load(&c) == 0);
    CHECK_EQ_INT(c.db_writers, 1);
    config_free(&c);
    setenv("DATABASE_WRITERS", "2", 1);
    expect_bad(__LINE__, load(&c), "database.writers", "must be at most database.maxConnections - 1", "\"2\"");
    setenv("DATABASE_MAXCONNECTIONS", "1", 1);
    expect_bad(__LINE__, load(&c), "database.maxConnections", "DATABASE_MAXCONNECTIONS", "\"1\"");
    end();
}

/* ---- production NATS keys (SPEC 9, December 2026) ---- */

TEST(nats_url_list_is_accepted_and_empty_items_or_inner_blanks_are_rejected)
{
    config_t c;
    begin();
    setenv("NATS_URL", "nats://a:4222, nats://b:4222 ,tls://c:4222", 1);
    REQUIRE(load(&c) == 0);
    CHECK_EQ_STR(c.nats_url, "nats://a:4222, nats://b:4222 ,tls://c:4222");
    config_free(&c);
    expect_env_bad(__LINE__, "NATS_URL", "nats://a:1,,nats://b:2", "key nats.url (env NATS_URL)", "comma-separated");
    expect_env_bad(__LINE__, "NATS_URL", "nats://a:1,", "key nats.url", "no empty items");
    expect_env_bad(__LINE__, "NATS_URL", "nats://a :1", "key nats.url", "no spaces inside a URL");
    end();
}

TEST(stream_replicas_defaults_to_1_and_accepts_1_to_5)
{
    config_t c;
    begin();
    REQUIRE(load(&c) == 0);
    CHECK_EQ_INT(c.nats_stream_replicas, 1);
    config_free(&c);
    setenv("NATS_STREAMREPLICAS", "3", 1);
    REQUIRE(load(&c) == 0);
    CHECK_EQ_INT(c.nats_stream_replicas, 3);
    config_free(&c);
    expect_env_bad(__LINE__, "NATS_STREAMREPLICAS", "0", "key nats.streamReplicas (env NATS_STREAMREPLICAS)",
                   "between 1 and 5");
    expect_env_bad(__LINE__, "NATS_STREAMREPLICAS", "6", "key nats.streamReplicas", "between 1 and 5");
    end();
}

TEST(tls_and_auth_keys_load_from_env_and_file_and_secrets_are_masked_in_the_dump)
{
    config_t c;
    begin();
    write_file("ca.pem", "x");
    write_file("c.pem", "x");
    write_file("c.key", "x");
    setenv("NATS_TLS_CAFILE", "ca.pem", 1);
    setenv("NATS_TLS_CERTFILE", "c.pem", 1);
    setenv("NATS_TLS_KEYFILE", "c.key", 1);
    setenv("NATS_USER", "svc", 1);
    setenv("NATS_PASSWORD", "Sekr1t-pw", 1);
    REQUIRE(load(&c) == 0);
    CHECK_EQ_STR(c.nats_tls_ca_file, "ca.pem");
    CHECK_EQ_STR(c.nats_tls_key_file, "c.key");
    CHECK_EQ_STR(c.nats_user, "svc");
    CHECK_EQ_STR(c.nats_password, "Sekr1t-pw");
    CHECK(c.nats_token == NULL && c.nats_nkey_seed_file == NULL && c.nats_creds_file == NULL);
    log_init(LOG_INFO, c.company_id);
    char *out = capture(run_config_log, &c);
    REQUIRE(out);
    CHECK(strstr(out, "Sekr1t") == NULL);
    CHECK_CONTAINS(out, "\"nats.password\":\"****\"");
    CHECK_CONTAINS(out, "\"nats.tls.caFile\":\"ca.pem\"");
    CHECK_CONTAINS(out, "\"nats.token\":\"\"");
    free(out);
    config_free(&c);
    unsetenv("NATS_USER");
    unsetenv("NATS_PASSWORD");
    REQUIRE(load_yaml(&c, "nats:\n  token: Tok-abc-123\n  tls:\n    caFile: ca.pem\n") == 0);
    CHECK_EQ_STR(c.nats_token, "Tok-abc-123");
    out = capture(run_config_log, &c);
    REQUIRE(out);
    CHECK(strstr(out, "Tok-abc") == NULL);
    free(out);
    config_free(&c);
    unlink("ca.pem");
    unlink("c.pem");
    unlink("c.key");
    end();
}

TEST(missing_unreadable_or_empty_nats_files_exit_2_naming_the_key)
{
    config_t c;
    begin();
    expect_env_bad(__LINE__, "NATS_TLS_CAFILE", "/nonexistent/ca.pem", "key nats.tls.caFile (env NATS_TLS_CAFILE)",
                   "cannot be opened: No such file or directory");
    expect_env_bad(__LINE__, "NATS_NKEYSEEDFILE", "/nonexistent/u.nk", "key nats.nkeySeedFile", "cannot be opened");
    expect_env_bad(__LINE__, "NATS_CREDSFILE", "/nonexistent/u.creds", "key nats.credsFile", "cannot be opened");
    expect_env_bad(__LINE__, "NATS_TLS_CAFILE", "/", "key nats.tls.caFile", "cannot be read");
    write_file("empty.pem", "");
    expect_env_bad(__LINE__, "NATS_TLS_CAFILE", "empty.pem", "key nats.tls.caFile", "the file is empty");
    unlink("empty.pem");
    (void)c;
    end();
}

TEST(half_pairs_and_two_auth_methods_are_rejected_naming_the_keys)
{
    begin();
    write_file("c.pem", "x");
    setenv("NATS_TLS_CERTFILE", "c.pem", 1);
    config_t c;
    expect_bad(__LINE__, load(&c), "key nats.tls.certFile", "needs nats.tls.keyFile too", NULL);
    unsetenv("NATS_TLS_CERTFILE");
    setenv("NATS_USER", "svc", 1);
    expect_bad(__LINE__, load(&c), "key nats.user", "needs nats.password too", NULL);
    unsetenv("NATS_USER");
    setenv("NATS_PASSWORD", "pw-only-1", 1);
    expect_bad(__LINE__, load(&c), "key nats.password", "needs nats.user too", NULL);
    CHECK(strstr(err, "pw-only-1") == NULL);
    setenv("NATS_USER", "svc", 1);
    setenv("NATS_TOKEN", "tok-2", 1);
    expect_bad(__LINE__, load(&c), "key nats.token", "cannot be combined with nats.user", NULL);
    CHECK(strstr(err, "tok-2") == NULL);
    unlink("c.pem");
    end();
}
