/* test_postgres_ha.c - PostgreSQL over TLS (verify-full with a test CA) and a primary crash with a synchronous
 * standby promoted under load: the service follows a multi-host DSN to the new primary and loses nothing. */
#include <signal.h>
#include <sys/stat.h>

#include "itest.h"

#define CO "acme"
#define SCH "daisi_acme"
static const char *const NO_ENV_HA[] = {NULL};
#define PASSWORD "Pw-s3cretTLS-77" /* in the DSN only to prove it stays out of the log (trust auth ignores it) */

static bool have(const char *exe)
{
    char *out = NULL;
    const char *argv[] = {"/bin/sh", "-c", exe, NULL};
    int st = h_run(argv, NULL, 20000, &out);
    free(out);
    return st == 0;
}

/* Test PKI in dir: ca.crt (signs server.crt, SAN IP:127.0.0.1 + DNS:localhost), other-ca.crt (an unrelated CA),
 * server.key owned by postgres with mode 0600 (PostgreSQL refuses a key others can read). */
static bool make_pki(const char *dir)
{
    char script[2048];
    snprintf(script, sizeof script,
             "set -e; cd '%s'; exec 2>&1; "
             "K='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'; "
             "openssl req -x509 $K -keyout ca.key -out ca.crt -days 2 -subj /CN=mes-test-ca; "
             "openssl req -x509 $K -keyout other-ca.key -out other-ca.crt -days 2 -subj /CN=mes-other-ca; "
             "openssl req $K -keyout server.key -out server.csr -subj /CN=127.0.0.1; "
             "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > san.ext; "
             "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 "
             "-extfile san.ext; "
             "chown postgres server.key server.crt; chmod 0600 server.key; chmod 0644 server.crt ca.crt other-ca.crt",
             dir);
    char *out = NULL;
    const char *argv[] = {"/bin/sh", "-c", script, NULL};
    int st = h_run(argv, NULL, 60000, &out);
    if (st != 0)
        fprintf(stderr, "making the test PKI failed (%d): %s\n", st, out ? out : "");
    free(out);
    return st == 0;
}

/* Starts PostgreSQL with ssl=on and the test server certificate; fills pki. Skips when openssl is missing. */
static void tls_server(char *pki, size_t pkilen)
{
    if (!have("command -v openssl >/dev/null"))
        SKIP("openssl is not installed (scripts/install-deps.sh installs it)");
    if (!h_tmpdir(pki, pkilen) || !make_pki(pki)) {
        testlib_fail(__FILE__, __LINE__, "test PKI");
        exit(1);
    }
    char opts[900];
    snprintf(opts, sizeof opts, "-c ssl=on -c ssl_cert_file=%s/server.crt -c ssl_key_file=%s/server.key", pki, pki);
    if (!h_pg_start_opts(&P, opts) || !h_nats_start(&N)) {
        testlib_fail(__FILE__, __LINE__, "servers did not start");
        exit(1);
    }
    atexit(it_dump_log);
}

/* Sum of every sample of a metric family (all label sets) on the service's /metrics; -1 when unreadable. */
static double metric_sum(int port, const char *family)
{
    char *body = NULL;
    if (h_http(port, "GET", "/metrics", &body) != 200 || !body) {
        free(body);
        return -1;
    }
    double sum = 0;
    size_t fl = strlen(family);
    for (char *line = body; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        if (strncmp(line, family, fl) == 0 && (line[fl] == '{' || line[fl] == ' ')) {
            const char *v = strrchr(line, ' ');
            if (v)
                sum += atof(v + 1);
        }
        line = nl ? nl + 1 : NULL;
    }
    free(body);
    return sum;
}

TEST(postgres_tls_verify_full_with_the_test_ca_connects_and_commits)
{
    char pki[256];
    tls_server(pki, sizeof pki);
    char dsn[600], env_dsn[700];
    snprintf(dsn, sizeof dsn,
             "host=127.0.0.1 port=%d user=postgres dbname=postgres password=" PASSWORD
             " sslmode=verify-full sslrootcert=%s/ca.crt",
             P.port, pki);
    snprintf(env_dsn, sizeof env_dsn, "POSTGRES_DSN=%s", dsn);
    const char *env[] = {env_dsn, NULL};
    REQUIRE(h_svc_start(&S, CO, &N, &P, env));
    REQUIRE(h_svc_wait_ready(&S, 60000));
    it_pubjob_t j = {.co = CO, .prefix = "t", .from = 0, .to = 500};
    it_publish_range(&j);
    CHECK_EQ_INT(j.failures, 0);
    CHECK_EQ_INT(h_pg_wait_int(&P, 500, 60000, "SELECT count(*) FROM " SCH ".messages"), 500);
    /* Every session of the service is encrypted (pg_stat_ssl), none is plain text. */
    CHECK(h_pg_int(&P, "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
                       " WHERE a.application_name = 'message-event-service' AND s.ssl") > 0);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
                              " WHERE a.application_name = 'message-event-service' AND NOT s.ssl"),
                 0);
    CHECK_EQ_INT(it_dlq_count(CO), 0);
    char *log = h_svc_log(&S);
    /* The startup dump shows the TLS keys as given (readable), the password masked. */
    char want[400];
    snprintf(want, sizeof want, "sslmode=verify-full sslrootcert=%s/ca.crt", pki);
    CHECK_CONTAINS(log, want);
    CHECK_CONTAINS(log, "password=****");
    CHECK(log && !strstr(log, "s3cretTLS"));
    free(log);
    CHECK_EQ_INT(h_svc_signal(&S, SIGTERM, 20000), 0);
}

TEST(postgres_tls_with_a_wrong_ca_exits_2_at_once_naming_the_problem)
{
    char pki[256];
    tls_server(pki, sizeof pki);
    char env_dsn[700];
    snprintf(env_dsn, sizeof env_dsn,
             "POSTGRES_DSN=host=127.0.0.1 port=%d user=postgres dbname=postgres password=" PASSWORD
             " sslmode=verify-full sslrootcert=%s/other-ca.crt",
             P.port, pki);
    /* A startup deadline far beyond the wait below: exiting within it proves startup stopped retrying on purpose. */
    const char *env[] = {env_dsn, "STARTUP_TIMEOUT=10m", NULL};
    REQUIRE(h_svc_start(&S, CO, &N, &P, env));
    int st = h_svc_wait_exit(&S, 45000);
    CHECK_EQ_INT(st, 2);
    if (st == -1)
        h_svc_signal(&S, SIGKILL, 5000);
    char *log = h_svc_log(&S);
    const char *line = log ? strstr(log, "retrying cannot help") : NULL;
    if (line) { /* what the operator reads */
        while (line > log && line[-1] != '\n')
            line--;
        fprintf(stderr, "%.*s\n", (int)strcspn(line, "\n"), line);
    }
    CHECK_CONTAINS(log, "startup failed: PostgreSQL TLS setup is wrong; retrying cannot help");
    CHECK_CONTAINS(log, "database.postgresDSN");
    CHECK_CONTAINS(log, "certificate verify failed");
    CHECK_CONTAINS(log, "does not verify against sslrootcert");
    CHECK_CONTAINS(log, "other-ca.crt");
    CHECK(log && !strstr(log, "s3cretTLS"));
    CHECK(log && !strstr(log, "PostgreSQL not reachable yet; retrying"));
    free(log);
    /* The server itself is fine: the same DSN with the right CA connects (what the operator fixes). */
    char ok_dsn[700];
    snprintf(ok_dsn, sizeof ok_dsn,
             "host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=verify-full sslrootcert=%s/ca.crt", P.port,
             pki);
    PGconn *c = PQconnectdb(ok_dsn);
    CHECK(PQstatus(c) == CONNECTION_OK && PQsslInUse(c));
    PQfinish(c);
}

/* ---- primary crash, standby promotion ------------------------------------------------------------------------ */

#define FAILOVER_EVENTS 5000
#define FAILOVER_RATE_PER_S 500

typedef struct {
    int published, failures;
    pthread_t thread;
} paced_t;

/* A steady open-loop publisher (FAILOVER_RATE_PER_S): every fifth event a chats.upsert, the rest messages.upsert,
 * each with a unique id, so "committed exactly once" is a row count. Pacing keeps the load flowing through the
 * switchover instead of queueing everything in JetStream before the primary dies. */
static void *paced_publish(void *arg)
{
    paced_t *p = arg;
    int64_t t0 = h_now_ms();
    char buf[256], id[64];
    for (int i = 0; i < FAILOVER_EVENTS; i++) {
        int64_t due = t0 + (int64_t)i * 1000 / FAILOVER_RATE_PER_S;
        int64_t now = h_now_ms();
        if (due > now)
            h_sleep_ms((int)(due - now));
        bool ok;
        if (i % 5 == 0) {
            snprintf(buf, sizeof buf,
                     "{\"chat_id\":\"fc%d\",\"jid\":\"j%d\",\"agent_id\":\"a\",\"phone_number\":\"1%d\"}", i, i, i);
            snprintf(id, sizeof id, "fc-%d", i);
            ok = it_pub("v1.chats.upsert", CO, buf, id);
        } else {
            snprintf(buf, sizeof buf,
                     "{\"message_id\":\"fm%d\",\"chat_id\":\"c%d\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"OUT\","
                     "\"message_timestamp\":%d}",
                     i, i % 50, 1700000000 + i);
            snprintf(id, sizeof id, "fm-%d", i);
            ok = it_pub("v1.messages.upsert", CO, buf, id);
        }
        if (ok)
            __atomic_add_fetch(&p->published, 1, __ATOMIC_SEQ_CST);
        else
            p->failures++;
    }
    return NULL;
}

TEST(postgres_primary_crash_with_standby_promoted_under_load_loses_nothing)
{
    static h_pg_t standby;
    /* Synchronous replication: a commit the primary acknowledges is already on the standby (the harness's default
     * synchronous_commit=off is overridden; the last -c wins). */
    REQUIRE(h_pg_start_opts(&P, "-c synchronous_commit=on -c synchronous_standby_names=mes_standby"));
    atexit(it_dump_log);
    REQUIRE(h_pg_start_standby(&standby, &P, "mes_standby", NULL));
    REQUIRE(h_pg_wait_int(&P, 1, 30000,
                          "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'mes_standby'"
                          " AND sync_state = 'sync'") == 1);
    REQUIRE(h_nats_start(&N));
    char env_dsn[400];
    snprintf(env_dsn, sizeof env_dsn,
             "POSTGRES_DSN=host=127.0.0.1,127.0.0.1 port=%d,%d user=postgres dbname=postgres"
             " target_session_attrs=read-write connect_timeout=2",
             P.port, standby.port);
    const char *env[] = {env_dsn, NULL};
    REQUIRE(h_svc_start(&S, CO, &N, &P, env));
    REQUIRE(h_svc_wait_ready(&S, 60000));

    paced_t pub = {0};
    pthread_create(&pub.thread, NULL, paced_publish, &pub);
    /* Let the writers commit a good share on the primary, then crash it mid-traffic. */
    long long before = h_pg_wait_int(&P, 1000, 30000, "SELECT least(count(*), 1000) FROM " SCH ".messages");
    CHECK_EQ_INT(before, 1000);
    int64_t t_crash = h_now_ms();
    h_pg_stop_immediate(&P);
    fprintf(stderr, "primary crashed (gone after %lld ms) with %d events published\n",
            (long long)(h_now_ms() - t_crash), __atomic_load_n(&pub.published, __ATOMIC_SEQ_CST));
    REQUIRE(h_pg_promote(&standby));
    fprintf(stderr, "standby promoted %lld ms after the crash\n", (long long)(h_now_ms() - t_crash));
    pthread_join(pub.thread, NULL);
    CHECK_EQ_INT(pub.failures, 0);
    CHECK_EQ_INT(pub.published, FAILOVER_EVENTS);

    /* Everything on the promoted server, exactly once. */
    const int chats = (FAILOVER_EVENTS + 4) / 5, msgs = FAILOVER_EVENTS - chats;
    CHECK_EQ_INT(h_pg_wait_int(&standby, msgs, 90000, "SELECT count(*) FROM " SCH ".messages"), msgs);
    CHECK_EQ_INT(h_pg_wait_int(&standby, chats, 30000, "SELECT count(*) FROM " SCH ".chats WHERE chat_id LIKE 'fc%%'"),
                 chats);
    CHECK_EQ_INT(h_pg_int(&standby, "SELECT count(DISTINCT message_id) FROM " SCH ".messages"), msgs);
    fprintf(stderr, "all %d events on the promoted server %lld ms after the crash\n", FAILOVER_EVENTS,
            (long long)(h_now_ms() - t_crash));
    /* The service writes there now, and nothing was treated as a data error. */
    CHECK(h_pg_int(&standby, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'message-event-service'") >
          0);
    CHECK_EQ_INT(it_dlq_count(CO), 0);
    CHECK_EQ_INT(h_pg_int(&standby, "SELECT count(*) FROM " SCH ".exhausted_events"), 0);
    CHECK_EQ_INT((long long)metric_sum(S.http_port, "message_event_service_events_failed_total"), 0);
    CHECK_EQ_INT((long long)metric_sum(S.http_port, "dlq_tasks_submitted_total"), 0);
    int ready = -1;
    for (int64_t end = h_now_ms() + 30000; h_now_ms() < end;) {
        char *body = NULL;
        ready = h_http(S.http_port, "GET", "/ready", &body);
        free(body);
        if (ready == 200)
            break;
        h_sleep_ms(100);
    }
    CHECK_EQ_INT(ready, 200);
    char *log = h_svc_log(&S);
    size_t outages = 0;
    for (const char *p = log; p && (p = strstr(p, "database outage during a batch")) != NULL; p++)
        outages++;
    fprintf(stderr, "batches retried after the crash: %zu\n", outages);
    free(log);
    CHECK_EQ_INT(h_svc_signal(&S, SIGTERM, 20000), 0);
}

/* A primary that turns read-only (an HA tool fencing it, default_transaction_read_only for maintenance, or a
 * session that reached a standby) answers every write with 25006 read_only_sql_transaction. That is not a data
 * error: the writers pause as in an outage, reconnect and retry their batch in hand once writes are accepted again;
 * /ready says the database is down meanwhile. */
TEST(read_only_primary_pauses_the_writers_until_it_takes_writes_again)
{
    REQUIRE(it_up(CO, NO_ENV_HA));
    it_pubjob_t j = {.co = CO, .prefix = "ro", .from = 0, .to = 3000};
    it_publish_start(&j);
    h_pg_wait_int(&P, 300, 30000, "SELECT least(count(*), 300) FROM " SCH ".messages");
    /* The test's own session stays writable whatever the server default says. */
    REQUIRE(h_pg_exec(&P, "SET default_transaction_read_only = off"));
    REQUIRE(h_pg_exec(&P, "ALTER SYSTEM SET default_transaction_read_only = on"));
    REQUIRE(h_pg_exec(&P, "SELECT pg_reload_conf()"));
    int ready = 0;
    for (int64_t end = h_now_ms() + 20000; h_now_ms() < end && ready != 503;) {
        char *body = NULL;
        ready = h_http(S.http_port, "GET", "/ready", &body);
        if (ready == 503)
            CHECK_CONTAINS(body, "\"postgres\":\"down\"");
        free(body);
        h_sleep_ms(50);
    }
    CHECK_EQ_INT(ready, 503);
    long long frozen = h_pg_int(&P, "SELECT count(*) FROM " SCH ".messages");
    /* Long enough for several failed batches and reconnects while events keep arriving. */
    h_sleep_ms(3000);
    CHECK(h_pg_int(&P, "SELECT count(*) FROM " SCH ".messages") == frozen);
    REQUIRE(h_pg_exec(&P, "ALTER SYSTEM RESET default_transaction_read_only"));
    REQUIRE(h_pg_exec(&P, "SELECT pg_reload_conf()"));
    it_publish_wait(&j);
    CHECK_EQ_INT(j.failures, 0);
    CHECK_EQ_INT(h_pg_wait_int(&P, 3000, 90000, "SELECT count(*) FROM " SCH ".messages"), 3000);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(DISTINCT message_id) FROM " SCH ".messages"), 3000);
    CHECK_EQ_INT(it_dlq_count(CO), 0);
    CHECK_EQ_INT((long long)metric_sum(S.http_port, "message_event_service_events_failed_total"), 0);
    char *log = h_svc_log(&S);
    CHECK_CONTAINS(log, "25006");
    free(log);
}
