/* test_faults.c - try to break it: kill -9, SIGTERM under load, NATS restarts, a dying replica, hostile clients. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "itest.h"

#define CO "acme"
#define SCH "daisi_acme"

static const char *const NO_ENV[] = {NULL};

static long long committed(void)
{
    return h_pg_int(&P, "SELECT count(*) FROM " SCH ".messages");
}

static void expect_exactly_once(int n)
{
    CHECK_EQ_INT(h_pg_wait_int(&P, n, 90000, "SELECT count(*) FROM " SCH ".messages"), n);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(DISTINCT message_id) FROM " SCH ".messages"), n);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".exhausted_events"), 0);
    CHECK_EQ_INT(it_dlq_count(CO), 0);
}

TEST(kill_9_mid_stream_then_restart_commits_every_event_exactly_once)
{
    const char *env[] = {"NATS_REALTIME_ACKWAIT=3s", NULL};
    REQUIRE(it_up(CO, env));
    it_pubjob_t j = {.co = CO, .prefix = "k9-", .from = 0, .to = 5000};
    it_publish_start(&j);
    h_pg_wait_int(&P, 1000, 30000, "SELECT least(count(*), 1000) FROM " SCH ".messages");
    CHECK_EQ_INT(h_svc_signal(&S, SIGKILL, 5000), 128 + SIGKILL);
    fprintf(stderr, "killed with %lld committed\n", committed());
    REQUIRE(h_svc_start(&S, CO, &N, &P, env));
    REQUIRE(h_svc_wait_ready(&S, 60000));
    it_publish_wait(&j);
    CHECK_EQ_INT(j.failures, 0);
    expect_exactly_once(5000);
}

TEST(sigterm_under_load_turns_ready_503_commits_in_flight_and_exits_0)
{
    const char *env[] = {"SHUTDOWN_TIMEOUT=10s", NULL};
    REQUIRE(it_up(CO, env));
    it_pubjob_t j = {.co = CO, .prefix = "st-", .from = 0, .to = 4000};
    it_publish_start(&j);
    h_pg_wait_int(&P, 500, 30000, "SELECT least(count(*), 500) FROM " SCH ".messages");
    kill(S.pid, SIGTERM);
    int code = 0;
    for (int64_t end = h_now_ms() + 500; h_now_ms() < end; h_sleep_ms(5)) { /* allow for signal delivery */
        code = h_http(S.http_port, "GET", "/ready", NULL);
        if (code == 503 || code == -1)
            break;
    }
    CHECK(code == 503 || code == -1); /* 503 at once, or already gone */
    int64_t t0 = h_now_ms();
    CHECK_EQ_INT(h_svc_wait_exit(&S, 11000), 0);
    CHECK(h_now_ms() - t0 < 10500);
    char *log = h_svc_log(&S);
    CHECK_CONTAINS(log, "shutdown complete");
    free(log);
    REQUIRE(h_svc_start(&S, CO, &N, &P, env));
    REQUIRE(h_svc_wait_ready(&S, 60000));
    it_publish_wait(&j);
    CHECK_EQ_INT(j.failures, 0);
    expect_exactly_once(4000);
}

TEST(second_signal_exits_at_once_with_failure_status)
{
    REQUIRE(it_up(CO, NO_ENV));
    kill(S.pid, SIGTERM);
    kill(S.pid, SIGTERM);
    int st = h_svc_wait_exit(&S, 5000);
#ifdef MES_UNDER_SANITIZER
    /* _exit on the second signal leaves threads unjoined on purpose; ThreadSanitizer reports that (status 66). */
    CHECK(st == 0 || st == 1 || st == 66);
#else
    CHECK(st == 0 || st == 1); /* 1 when the second signal landed before the first shutdown finished */
#endif
}

TEST(nats_restart_under_load_loses_nothing_and_the_dlq_worker_resumes)
{
    /* Deliveries that were on their way when the connection dropped come back after the ack wait: keep it short. */
    const char *env[] = {"NATS_REALTIME_ACKWAIT=5s", "NATS_DLQACKWAIT=5s", NULL};
    REQUIRE(it_up(CO, env));
    it_pubjob_t a = {.co = CO, .prefix = "nr-", .from = 0, .to = 2000};
    it_publish_range(&a);
    h_pg_wait_int(&P, 200, 30000, "SELECT least(count(*), 200) FROM " SCH ".messages");
    h_nats_stop(&N);
    h_sleep_ms(1500);
    REQUIRE(h_nats_restart(&N));
    it_pubjob_t b = {.co = CO, .prefix = "nr-", .from = 2000, .to = 4000};
    it_publish_range(&b);
    CHECK_EQ_INT(a.failures + b.failures, 0);
    expect_exactly_once(4000);
    /* The DLQ worker came back too: a poison event after the restart ends exhausted. */
    REQUIRE(it_pub("v1.chats.upsert", CO, "{after-restart", NULL));
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 30000, "SELECT count(*) FROM " SCH ".exhausted_events"), 1);
}

TEST(replica_killed_mid_load_leaves_the_other_to_finish_the_work)
{
    const char *env[] = {"NATS_REALTIME_ACKWAIT=3s", NULL};
    REQUIRE(it_up(CO, env));
    h_svc_t s2;
    REQUIRE(h_svc_start(&s2, CO, &N, &P, env));
    REQUIRE(h_svc_wait_ready(&s2, 60000));
    it_pubjob_t j = {.co = CO, .prefix = "rk-", .from = 0, .to = 4000};
    it_publish_start(&j);
    h_pg_wait_int(&P, 800, 30000, "SELECT least(count(*), 800) FROM " SCH ".messages");
    CHECK_EQ_INT(h_svc_signal(&s2, SIGKILL, 5000), 128 + SIGKILL);
    it_publish_wait(&j);
    CHECK_EQ_INT(j.failures, 0);
    expect_exactly_once(4000);
}

TEST(hostile_input_keeps_memory_flat)
{
    REQUIRE(it_up(CO, NO_ENV));
    static const char *const bad[] = {"{", "[]", "{\"chat_id\":1}", "\xff\xfe", "{\"a\":\"\\ud800\"}", "null"};
    char subject[64];
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 3000; i++) {
            snprintf(subject, sizeof subject, "v1.%s.%s", i % 2 ? "chats.upsert" : "contacts.update", CO);
            const char *b = bad[i % 6];
            REQUIRE(h_publish(&N, subject, b, strlen(b), NULL));
        }
        CHECK_EQ_INT(it_dlq_wait(CO, 3000LL * (round + 1), 60000), 3000LL * (round + 1));
    }
    double rss1 = h_metric(S.http_port, "process_resident_memory_bytes");
    for (int i = 0; i < 3000; i++) {
        snprintf(subject, sizeof subject, "v1.chats.upsert.%s", CO);
        REQUIRE(h_publish(&N, subject, bad[i % 6], strlen(bad[i % 6]), NULL));
    }
    CHECK_EQ_INT(it_dlq_wait(CO, 9000, 60000), 9000);
    double rss2 = h_metric(S.http_port, "process_resident_memory_bytes");
    fprintf(stderr, "RSS after 6000 poison events %.1f MiB, after 9000 %.1f MiB\n", rss1 / 1048576, rss2 / 1048576);
#ifndef MES_UNDER_SANITIZER
    CHECK(rss2 - rss1 < 8.0 * 1048576);
#endif
}

/* A client from another loopback address: per-IP limits must keep it from starving everybody else. */
static int connect_from(const char *src, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    inet_pton(AF_INET, src, &a.sin_addr);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    struct sockaddr_in d = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &d.sin_addr);
    if (connect(fd, (struct sockaddr *)&d, sizeof d) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

TEST(http_survives_idle_slow_and_oversized_clients_while_metrics_answer)
{
    REQUIRE(it_up(CO, NO_ENV));
    int fds[300], n = 0;
    for (int i = 0; i < 300; i++) {
        int fd = connect_from("127.0.0.2", S.http_port);
        if (fd >= 0) {
            fds[n++] = fd;
            if (i % 3 == 0) { /* slow loris: a header that never ends */
                ssize_t w = write(fd, "GET /metrics HTTP/1.1\r\nX-Slow: ", 31);
                (void)w;
            }
        }
    }
    /* Oversized request: a huge header and a huge body announced. */
    int big = connect_from("127.0.0.3", S.http_port);
    if (big >= 0) {
        char hdr[256];
        snprintf(hdr, sizeof hdr, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n");
        ssize_t w = write(big, hdr, strlen(hdr));
        (void)w;
    }
    for (int i = 0; i < 10; i++) {
        char *body = NULL;
        CHECK_EQ_INT(h_http(S.http_port, "GET", "/metrics", &body), 200);
        CHECK_CONTAINS(body, "process_open_fds");
        free(body);
    }
    for (int i = 0; i < n; i++)
        close(fds[i]);
    if (big >= 0)
        close(big);
    char *body = NULL;
    CHECK_EQ_INT(h_http(S.http_port, "GET", "/health", &body), 200);
    free(body);
}
