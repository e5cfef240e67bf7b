/* test_harness.c - proves the integration harness itself: real nats-server/PostgreSQL start, answer, restart with
 * their data, stop, and are killed (with their temp dirs removed) when the test process dies by a signal. */
#include "harness.h"
#include "testlib.h"

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <unistd.h>

#define SUBJ "v1.chats.upsert.harness"

static bool dir_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Polls until pid is gone (a reparented zombie may need a moment to be reaped). */
static bool wait_dead(pid_t pid, int timeout_ms)
{
    for (int64_t deadline = h_now_ms() + timeout_ms; h_now_ms() < deadline;) {
        if (!h_pid_alive(pid))
            return true;
        h_sleep_ms(20);
    }
    return !h_pid_alive(pid);
}

/* A durable that plays the service's part: the harness's reads must not move it. */
static bool add_durable(const h_nats_t *n, const char *durable, natsConnection **nc_out, jsCtx **js_out)
{
    jsConsumerConfig cc;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    if (natsConnection_ConnectTo(nc_out, n->url) != NATS_OK ||
        natsConnection_JetStream(js_out, *nc_out, NULL) != NATS_OK)
        return false;
    jsConsumerConfig_Init(&cc);
    cc.Durable = durable;
    cc.FilterSubject = SUBJ;
    cc.AckPolicy = js_AckExplicit;
    cc.DeliverPolicy = js_DeliverAll;
    natsStatus s = js_AddConsumer(&ci, *js_out, "wa_events_stream", &cc, NULL, &jerr);
    jsConsumerInfo_Destroy(ci);
    return s == NATS_OK;
}

TEST(nats_starts_publishes_and_stops)
{
    h_nats_t n;
    REQUIRE(h_nats_start(&n));
    CHECK(n.port > 0);
    CHECK(strstr(n.url, "nats://127.0.0.1:") == n.url);
    CHECK(h_pid_alive(n.pid));
    REQUIRE(h_streams_create(&n));
    REQUIRE(h_streams_create(&n)); /* idempotent */

    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    REQUIRE(add_durable(&n, "wa_listener_harness_chats_upsert", &nc, &js));

    for (int i = 0; i < 10; i++) {
        char data[64], id[32];
        int len = snprintf(data, sizeof data, "{\"i\":%d}", i);
        snprintf(id, sizeof id, "harness-%d", i);
        CHECK(h_publish(&n, SUBJ, data, (size_t)len, id));
    }
    CHECK(h_publish(&n, SUBJ, "{\"i\":0}", 7, "harness-0")); /* duplicate MsgId: acked, not stored */
    CHECK(h_publish(&n, "v1.history.chats.harness", "{}", 2, NULL));
    CHECK(h_publish(&n, "v1.dlq.harness", "{}", 2, NULL));
    CHECK_EQ_INT(h_stream_count(&n, "wa_events_stream", SUBJ), 10);
    CHECK_EQ_INT(h_stream_count(&n, "wa_events_stream", "v1.chats.upsert.other"), 0);
    CHECK_EQ_INT(h_stream_count(&n, "wa_history_events_stream", "v1.history.chats.harness"), 1);
    CHECK_EQ_INT(h_stream_count(&n, "dlq_stream", "v1.dlq.harness"), 1);
    CHECK_EQ_INT(h_stream_count(&n, "no_such_stream", SUBJ), -1);

    char **msgs = NULL;
    int got = h_stream_read(&n, "wa_events_stream", SUBJ, 100, &msgs);
    CHECK_EQ_INT(got, 10);
    for (int i = 0; i < got; i++) {
        char want[64];
        snprintf(want, sizeof want, "{\"i\":%d}", i);
        CHECK_EQ_STR(msgs[i], want);
    }
    h_strv_free(msgs, got);
    got = h_stream_read(&n, "wa_events_stream", SUBJ, 3, &msgs);
    CHECK_EQ_INT(got, 3);
    h_strv_free(msgs, got);
    CHECK_EQ_INT(h_stream_read(&n, "wa_events_stream", "v1.chats.upsert.other", 5, &msgs), 0);
    CHECK(msgs == NULL);

    jsConsumerInfo *ci = NULL;
    REQUIRE(js_GetConsumerInfo(&ci, js, "wa_events_stream", "wa_listener_harness_chats_upsert", NULL, NULL) == NATS_OK);
    CHECK_EQ_INT(ci->NumPending, 10);
    CHECK_EQ_INT(ci->Delivered.Stream, 0);
    jsConsumerInfo_Destroy(ci);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);

    pid_t pid = n.pid;
    h_nats_stop(&n);
    CHECK(!h_pid_alive(pid));
    CHECK(kill(pid, 0) != 0 && errno == ESRCH); /* reaped, not a zombie */
}

TEST(nats_restart_keeps_stream)
{
    h_nats_t n;
    REQUIRE(h_nats_start(&n));
    REQUIRE(h_streams_create(&n));
    for (int i = 0; i < 5; i++)
        CHECK(h_publish(&n, SUBJ, "before", 6, NULL));
    pid_t old_pid = n.pid;
    int old_port = n.port;
    REQUIRE(h_nats_restart(&n));
    CHECK(!h_pid_alive(old_pid));
    CHECK(n.pid != old_pid);
    CHECK_EQ_INT(n.port, old_port);
    /* the cached connection reconnects by itself; publishing right away exercises the retry path */
    for (int i = 0; i < 5; i++)
        CHECK(h_publish(&n, SUBJ, "after", 5, NULL));
    CHECK_EQ_INT(h_stream_count(&n, "wa_events_stream", SUBJ), 10);
    char **msgs = NULL;
    int got = h_stream_read(&n, "wa_events_stream", SUBJ, 100, &msgs);
    CHECK_EQ_INT(got, 10);
    if (got == 10) {
        CHECK_EQ_STR(msgs[0], "before");
        CHECK_EQ_STR(msgs[9], "after");
    }
    h_strv_free(msgs, got);

    /* a stop/start pair (not restart) also keeps the store */
    h_nats_stop(&n);
    CHECK(!h_pid_alive(n.pid));
    REQUIRE(h_nats_restart(&n));
    CHECK_EQ_INT(h_stream_count(&n, "wa_events_stream", SUBJ), 10);
}

TEST(postgres_starts_answers_and_stops)
{
    h_pg_t p;
    REQUIRE(h_pg_start(&p));
    CHECK(p.port > 0);
    CHECK(h_pid_alive(p.pid));
    char want_dsn[128];
    snprintf(want_dsn, sizeof want_dsn, "host=127.0.0.1 port=%d user=postgres dbname=postgres", p.port);
    CHECK_EQ_STR(p.dsn, want_dsn);
    CHECK_EQ_INT(h_pg_int(&p, "SELECT %d + 1", 41), 42);
    char *s = h_pg_str(&p, "SELECT current_user");
    CHECK_EQ_STR(s, "postgres");
    free(s);
    s = h_pg_str(&p, "SHOW listen_addresses");
    CHECK_EQ_STR(s, "127.0.0.1");
    free(s);
    s = h_pg_str(&p, "SHOW fsync");
    CHECK_EQ_STR(s, "off");
    free(s);
    CHECK_EQ_INT(h_pg_int(&p, "SHOW max_connections"), 200);
    s = h_pg_str(&p, "SHOW server_encoding");
    CHECK_EQ_STR(s, "UTF8");
    free(s);
    CHECK(h_pg_str(&p, "SELECT NULL") == NULL);
    CHECK_EQ_INT(h_pg_int(&p, "SELECT 1 WHERE false"), -1);
    CHECK(!h_pg_exec(&p, "SELECT * FROM no_such_table"));
    CHECK(h_pg_exec(&p, "CREATE SCHEMA daisi_harness; CREATE TABLE daisi_harness.t (id int primary key)"));
    CHECK(h_pg_exec(&p, "INSERT INTO daisi_harness.t SELECT generate_series(1, %d)", 7));
    CHECK_EQ_INT(h_pg_wait_int(&p, 7, 2000, "SELECT count(*) FROM daisi_harness.t"), 7);
    int64_t t0 = h_now_ms();
    CHECK_EQ_INT(h_pg_wait_int(&p, 8, 300, "SELECT count(*) FROM daisi_harness.t"), 7);
    CHECK(h_now_ms() - t0 >= 300);
    PGconn *c = h_pg_conn(&p);
    CHECK(c != NULL && PQstatus(c) == CONNECTION_OK);

    pid_t pid = p.pid;
    h_pg_stop(&p);
    CHECK(!h_pid_alive(pid));
    CHECK(dir_exists(p.dir)); /* kept for a restart until exit */
    CHECK_EQ_INT(h_pg_int(&p, "SELECT 1"), -1);
}

TEST(postgres_restart_keeps_data)
{
    h_pg_t p;
    REQUIRE(h_pg_start(&p));
    REQUIRE(h_pg_exec(&p, "CREATE TABLE kept (id int primary key, v text)"));
    REQUIRE(h_pg_exec(&p, "INSERT INTO kept SELECT g, 'v' || g FROM generate_series(1, 100) g"));
    pid_t old_pid = p.pid;
    int old_port = p.port;
    REQUIRE(h_pg_restart(&p));
    CHECK(!h_pid_alive(old_pid));
    CHECK(p.pid != old_pid);
    CHECK_EQ_INT(p.port, old_port);
    /* the cached connection died with the old server; the helpers reconnect */
    CHECK_EQ_INT(h_pg_int(&p, "SELECT count(*) FROM kept"), 100);
    char *s = h_pg_str(&p, "SELECT v FROM kept WHERE id = 42");
    CHECK_EQ_STR(s, "v42");
    free(s);

    /* stop, query fails, start again, query works */
    h_pg_stop(&p);
    CHECK_EQ_INT(h_pg_int(&p, "SELECT 1"), -1);
    REQUIRE(h_pg_restart(&p));
    CHECK_EQ_INT(h_pg_wait_int(&p, 100, 5000, "SELECT count(*) FROM kept"), 100);
}

/* Forks a child that starts servers and reports "natspid pgpid natsdir pgdir"; returns the child's pid. */
static pid_t start_child_with_servers(bool with_pg, const char *deadline_s, char *line, size_t linelen)
{
    int pfd[2];
    if (pipe(pfd) != 0)
        return -1;
    fflush(NULL);
    pid_t child = fork();
    if (child == 0) {
        close(pfd[0]);
        if (deadline_s)
            setenv("MES_HARNESS_DEADLINE_S", deadline_s, 1);
        h_nats_t n;
        h_pg_t p;
        memset(&p, 0, sizeof p);
        bool ok = h_nats_start(&n) && (!with_pg || h_pg_start(&p));
        char buf[1024];
        int len = ok ? snprintf(buf, sizeof buf, "%d %d %s %s\n", (int)n.pid, with_pg ? (int)p.pid : 0, n.dir,
                                with_pg ? p.dir : "-")
                     : snprintf(buf, sizeof buf, "FAIL\n");
        if (write(pfd[1], buf, (size_t)len) != len)
            _exit(4);
        for (int i = 0; i < 1200; i++)
            h_sleep_ms(100);
        _exit(3); /* not reached when the parent's signal works */
    }
    close(pfd[1]);
    size_t len = 0;
    line[0] = '\0';
    for (int64_t deadline = h_now_ms() + 150000; child > 0 && h_now_ms() < deadline && !strchr(line, '\n');) {
        struct pollfd pf = {pfd[0], POLLIN, 0};
        if (poll(&pf, 1, 100) <= 0)
            continue;
        ssize_t r = read(pfd[0], line + len, linelen - len - 1);
        if (r <= 0)
            break;
        len += (size_t)r;
        line[len] = '\0';
    }
    close(pfd[0]);
    return child;
}

static int wait_child(pid_t child, int timeout_ms)
{
    int st = 0;
    for (int64_t deadline = h_now_ms() + timeout_ms; h_now_ms() < deadline;) {
        if (waitpid(child, &st, WNOHANG) == child)
            return st;
        h_sleep_ms(20);
    }
    kill(child, SIGKILL);
    waitpid(child, &st, 0);
    return -1;
}

TEST(cleanup_kills_children_on_sigterm)
{
    char line[1024];
    pid_t child = start_child_with_servers(true, NULL, line, sizeof line);
    REQUIRE(child > 0);
    int nats_pid = 0, pg_pid = 0;
    char nats_dir[256] = "", pg_dir[256] = "";
    if (sscanf(line, "%d %d %255s %255s", &nats_pid, &pg_pid, nats_dir, pg_dir) != 4) {
        kill(child, SIGKILL);
        wait_child(child, 5000);
        testlib_fail(__FILE__, __LINE__, "child did not start servers: '%s'", line);
        return;
    }
    CHECK(h_pid_alive(nats_pid));
    CHECK(h_pid_alive(pg_pid));
    CHECK(dir_exists(nats_dir));
    CHECK(dir_exists(pg_dir));

    REQUIRE(kill(child, SIGTERM) == 0);
    int st = wait_child(child, 30000);
    CHECK(st != -1 && WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM);
    CHECK(wait_dead(nats_pid, 5000));
    CHECK(wait_dead(pg_pid, 5000));
    CHECK(!dir_exists(nats_dir));
    CHECK(!dir_exists(pg_dir));
}

TEST(deadline_alarm_stops_servers)
{
    char line[1024];
    pid_t child = start_child_with_servers(false, "3", line, sizeof line);
    REQUIRE(child > 0);
    int nats_pid = 0, pg_pid = 0;
    char nats_dir[256] = "", pg_dir[256] = "";
    if (sscanf(line, "%d %d %255s %255s", &nats_pid, &pg_pid, nats_dir, pg_dir) != 4) {
        kill(child, SIGKILL);
        wait_child(child, 5000);
        testlib_fail(__FILE__, __LINE__, "child did not start nats: '%s'", line);
        return;
    }
    int st = wait_child(child, 30000);
    CHECK(st != -1 && WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM);
    CHECK(wait_dead(nats_pid, 5000));
    CHECK(!dir_exists(nats_dir));
}

TEST(run_captures_output_and_kills_on_timeout)
{
    const char *ok_argv[] = {"sh", "-c", "echo \"out $HARNESS_X\"; echo err >&2; exit 3", NULL};
    const char *env[] = {"HARNESS_X=forty-two", NULL};
    char *out = NULL;
    CHECK_EQ_INT(h_run(ok_argv, env, 10000, &out), 3);
    CHECK_CONTAINS(out, "out forty-two");
    CHECK_CONTAINS(out, "err");
    free(out);

    const char *slow_argv[] = {"sh", "-c", "echo started; sleep 30", NULL};
    int64_t t0 = h_now_ms();
    CHECK_EQ_INT(h_run(slow_argv, NULL, 300, &out), -1);
    CHECK(h_now_ms() - t0 < 5000);
    CHECK_CONTAINS(out, "started");
    free(out);

    const char *missing[] = {"/nonexistent/binary", NULL};
    CHECK(h_run(missing, NULL, 1000, &out) != 0);
    free(out);
}

/* A one-thread HTTP server answering every connection with the canned responses in turn. */
struct stub_http {
    int fd;
    const char *responses[4];
    int n;
};

static void *stub_http_main(void *arg)
{
    struct stub_http *h = arg;
    for (int i = 0; i < h->n; i++) {
        int c = accept(h->fd, NULL, NULL);
        if (c < 0)
            break;
        char req[2048];
        size_t len = 0;
        while (len < sizeof req - 1) {
            ssize_t r = read(c, req + len, sizeof req - 1 - len);
            if (r <= 0)
                break;
            len += (size_t)r;
            req[len] = '\0';
            if (strstr(req, "\r\n\r\n"))
                break;
        }
        ssize_t w = write(c, h->responses[i], strlen(h->responses[i]));
        (void)w;
        close(c);
    }
    return NULL;
}

TEST(http_client_reads_metrics_from_a_stub_server)
{
    static const char body[] = "# HELP mes_up Up.\n# TYPE mes_up gauge\nmes_up 1\nmes_up_total 9\n"
                               "mes_events_total{type=\"chats\",result=\"ok\"} 42\nmes_lag_seconds 0.25\n";
    char plain[512], chunked[512];
    snprintf(plain, sizeof plain,
             "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: %zu\r\n\r\n%s",
             strlen(body), body);
    snprintf(chunked, sizeof chunked, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%zx\r\n%s\r\n0\r\n\r\n",
             strlen(body), body);
    struct stub_http h = {.n = 4,
                          .responses = {plain, chunked, plain, "HTTP/1.1 503 Service Unavailable\r\n\r\nnot ready"}};
    int port = h_free_port();
    REQUIRE(port > 0);
    h.fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(bind(h.fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(h.fd, 8) == 0);
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, stub_http_main, &h) == 0);

    char *got = NULL;
    CHECK_EQ_INT(h_http(port, "GET", "/metrics", &got), 200);
    CHECK_EQ_STR(got, body);
    free(got);
    CHECK_EQ_INT(h_http(port, "GET", "/metrics", &got), 200);
    CHECK_EQ_STR(got, body);
    free(got);
    CHECK(h_metric(port, "mes_events_total{type=\"chats\",result=\"ok\"}") == 42.0);
    CHECK_EQ_INT(h_http(port, "GET", "/ready", &got), 503);
    CHECK_EQ_STR(got, "not ready");
    free(got);
    pthread_join(t, NULL);
    close(h.fd);
    CHECK_EQ_INT(h_http(port, "GET", "/metrics", &got), -1); /* nobody listens any more */
    CHECK(got == NULL);
}

TEST(svc_helpers_drive_a_stub_service)
{
    /* A shell stand-in for the service binary, to prove env, logs, readiness and signals without it. */
    char dir[256], bin[320];
    REQUIRE(h_tmpdir(dir, sizeof dir));
    snprintf(bin, sizeof bin, "%s/stub-service", dir);
    FILE *f = fopen(bin, "w");
    REQUIRE(f != NULL);
    fputs("#!/bin/sh\n"
          "echo \"co=$COMPANY_ID nats=$NATS_URL pg=$POSTGRES_DSN port=$SERVER_PORT addr=$SERVER_ADDRESS "
          "level=$LOG_LEVEL extra=$HARNESS_EXTRA\"\n"
          "[ -n \"$STUB_EXIT\" ] && { echo 'config error: bad'; exit \"$STUB_EXIT\"; }\n"
          "trap 'echo got TERM; exit 0' TERM\n"
          "echo 'Both consumers started successfully'\n"
          "while :; do sleep 0.05; done\n",
          f);
    fclose(f);
    chmod(bin, 0755);
    setenv("MES_SERVICE_BIN", bin, 1);

    h_nats_t n = {.url = "nats://127.0.0.1:1"};
    h_pg_t p = {.dsn = "host=127.0.0.1 port=2 user=postgres dbname=postgres"};
    const char *env[] = {"HARNESS_EXTRA=yes", "LOG_LEVEL=debug", NULL};
    h_svc_t s;
    REQUIRE(h_svc_start(&s, "acme", &n, &p, env));
    CHECK(h_svc_wait_ready(&s, 10000));
    char *log = h_svc_log(&s);
    char want[128];
    snprintf(want, sizeof want, "port=%d addr=127.0.0.1 level=debug extra=yes", s.http_port);
    CHECK_CONTAINS(log, "co=acme nats=nats://127.0.0.1:1 pg=host=127.0.0.1 port=2 user=postgres dbname=postgres");
    CHECK_CONTAINS(log, want);
    free(log);
    CHECK_EQ_INT(h_svc_signal(&s, SIGTERM, 5000), 0);
    CHECK(h_svc_wait_log(&s, "got TERM", 100));
    CHECK(!h_pid_alive(s.pid));

    REQUIRE(h_svc_start(&s, "acme", &n, &p, NULL));
    CHECK(h_svc_wait_ready(&s, 10000));
    CHECK_EQ_INT(h_svc_signal(&s, SIGKILL, 0), 128 + SIGKILL);

    const char *bad[] = {"STUB_EXIT=2", NULL};
    REQUIRE(h_svc_start(&s, "acme", &n, &p, bad));
    int64_t t0 = h_now_ms();
    CHECK(!h_svc_wait_log(&s, "never printed", 20000));
    CHECK(h_now_ms() - t0 < 10000); /* returns when the process exits, not at the timeout */
    CHECK(h_svc_wait_log(&s, "config error", 100));
    CHECK_EQ_INT(h_svc_signal(&s, SIGTERM, 1000), 2);

    unsetenv("MES_SERVICE_BIN");
    CHECK(!h_svc_start(&s, "acme", &n, &p, NULL));
}
