/* test_http.c - the HTTP endpoints over a real socket: status codes, bodies, limits, port conflicts, idle clients. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "http.h"
#include "log.h"
#include "metrics.h"
#include "testlib.h"

static atomic_bool ready_answer;
static atomic_int ready_calls;

static bool ready_cb(void *ctx, char *details, size_t len)
{
    (void)ctx;
    atomic_fetch_add(&ready_calls, 1);
    bool ok = atomic_load(&ready_answer);
    snprintf(details, len, "\"postgres\":\"%s\",\"nats\":\"up\"", ok ? "up" : "down");
    return ok;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A port that was free a moment ago: bind to port 0 and read back what the kernel chose. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &sl) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(sa.sin_port);
}

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {
        .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

typedef struct {
    int status; /* 0 when no HTTP response came back */
    char head[2048];
    char *body; /* malloc'd, NUL-terminated; NULL when no response */
    size_t body_len;
} resp_t;

static void resp_free(resp_t *r)
{
    free(r->body);
    r->body = NULL;
}

/* Sends raw request bytes and reads the whole response (the request asks for Connection: close). */
static int exchange(int port, const char *request, size_t request_len, resp_t *r)
{
    memset(r, 0, sizeof *r);
    int fd = connect_to(port);
    if (fd < 0)
        return -1;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    if (!buf) {
        close(fd);
        return -1;
    }
    if (send(fd, request, request_len, MSG_NOSIGNAL) < 0) {
        /* the server may answer before the whole body is sent; read what it said anyway */
    }
    for (;;) {
        if (len == cap) {
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb)
                break;
            buf = nb;
            cap *= 2;
        }
        ssize_t n = recv(fd, buf + len, cap - len, 0);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    char *sep = strstr(buf, "\r\n\r\n");
    if (strncmp(buf, "HTTP/1.", 7) != 0 || !sep) {
        free(buf);
        return 0;
    }
    size_t hl = (size_t)(sep - buf);
    snprintf(r->head, sizeof r->head, "%.*s", (int)(hl < sizeof r->head ? hl : sizeof r->head - 1), buf);
    r->status = atoi(buf + 9);
    r->body_len = len - hl - 4;
    r->body = malloc(r->body_len + 1);
    if (r->body)
        memcpy(r->body, sep + 4, r->body_len + 1);
    free(buf);
    return r->status;
}

static int request(int port, const char *method, const char *path, resp_t *r)
{
    char req[512];
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", method, path);
    return exchange(port, req, (size_t)n, r);
}

static http_server_t *start(int *port, int max_conn, int64_t timeout_ms)
{
    *port = free_port();
    http_config_t cfg = {
        .address = "127.0.0.1",
        .port = *port,
        .max_connections = max_conn,
        .connection_timeout_ms = timeout_ms,
        .version = "1.2.3-test",
        .ready = ready_cb,
    };
    return http_start(&cfg);
}

static void setup(void)
{
    log_init(LOG_WARN, "acme");
    metrics_init("acme", "1.2.3-test", 10, false);
    atomic_store(&ready_answer, true);
    atomic_store(&ready_calls, 0);
}

TEST(health_returns_200_with_version)
{
    setup();
    int port;
    http_server_t *srv = start(&port, 32, 5000);
    REQUIRE(srv);
    resp_t r;
    CHECK_EQ_INT(request(port, "GET", "/health", &r), 200);
    CHECK_EQ_STR(r.body, "{\"status\":\"UP\",\"version\":\"1.2.3-test\"}");
    CHECK_CONTAINS(r.head, "Content-Type: application/json");
    resp_free(&r);
    http_stop(srv);
    metrics_shutdown();
}

TEST(ready_follows_the_check_200_then_503)
{
    setup();
    int port;
    http_server_t *srv = start(&port, 32, 5000);
    REQUIRE(srv);
    resp_t r;
    CHECK_EQ_INT(request(port, "GET", "/ready", &r), 200);
    CHECK_EQ_STR(r.body, "{\"status\":\"READY\",\"details\":{\"postgres\":\"up\",\"nats\":\"up\"}}");
    CHECK_CONTAINS(r.head, "Content-Type: application/json");
    resp_free(&r);

    atomic_store(&ready_answer, false);
    CHECK_EQ_INT(request(port, "GET", "/ready", &r), 503);
    CHECK_EQ_STR(r.body, "{\"status\":\"NOT_READY\",\"details\":{\"postgres\":\"down\",\"nats\":\"up\"}}");
    resp_free(&r);

    atomic_store(&ready_answer, true);
    CHECK_EQ_INT(request(port, "GET", "/ready", &r), 200);
    resp_free(&r);
    CHECK_EQ_INT(atomic_load(&ready_calls), 3);
    http_stop(srv);
    metrics_shutdown();
}

TEST(ready_returns_503_after_shutting_down_without_calling_the_check)
{
    setup();
    int port;
    http_server_t *srv = start(&port, 32, 5000);
    REQUIRE(srv);
    http_set_shutting_down(srv);
    resp_t r;
    CHECK_EQ_INT(request(port, "GET", "/ready", &r), 503);
    CHECK_EQ_STR(r.body, "{\"status\":\"NOT_READY\",\"details\":{\"shutdown\":\"in progress\"}}");
    resp_free(&r);
    CHECK_EQ_INT(atomic_load(&ready_calls), 0);
    CHECK_EQ_INT(request(port, "GET", "/health", &r), 200); /* liveness is unaffected */
    resp_free(&r);
    http_stop(srv);
    metrics_shutdown();
}

TEST(metrics_returns_200_prometheus_text_and_ignores_query_string)
{
    setup();
    metrics_event_received(ET_CHATS_UPSERT, LANE_REALTIME);
    int port;
    http_server_t *srv = start(&port, 32, 5000);
    REQUIRE(srv);
    resp_t r;
    CHECK_EQ_INT(request(port, "GET", "/metrics", &r), 200);
    CHECK_CONTAINS(r.head, "Content-Type: text/plain; version=0.0.4; charset=utf-8");
    CHECK_CONTAINS(r.body, "# TYPE message_event_service_events_received_total counter\n");
    CHECK_CONTAINS(r.body, "message_event_service_events_received_total{event_type=\"v1.chats.upsert\","
                           "company_id=\"acme\",consumer_type=\"realtime\"} 1\n");
    CHECK_CONTAINS(r.body, "message_event_service_build_info{version=\"1.2.3-test\"} 1\n");
    resp_free(&r);
    CHECK_EQ_INT(request(port, "GET", "/metrics?x=1&name[]=y", &r), 200);
    CHECK_CONTAINS(r.body, "process_open_fds ");
    resp_free(&r);
    http_stop(srv);
    metrics_shutdown();
}

TEST(head_returns_status_and_headers_without_body)
{
    setup();
    int port;
    http_server_t *srv = start(&port, 32, 5000);
    REQUIRE(srv);
    resp_t r;
    CHECK_EQ_INT(request(port, "HEAD", "/metrics", &r), 200);
    CHECK_EQ_INT(r.body_len, 0);
    CHECK_CONTAINS(r.head, "Content-Type: text/plain");
    resp_free(&r);
    CHECK_EQ_INT(request(port, "HEAD", "/health", &r), 200);
    CHECK_EQ_INT(r.body_len, 0);
    resp_free(&r);
    http_stop(srv);
    metrics_shutdown();
}

TEST(unknown_path_returns_404_json)
{
    setup();
    int port;
    http_server_t *srv = start(&port, 32, 5000);
    REQUIRE(srv);
    resp_t r;
    CHECK_EQ_INT(request(port, "GET", "/nope", &r), 404);
    CHECK_CONTAINS(r.head, "Content-Type: application/json");
    CHECK_CONTAINS(r.body, "\"error\"");
    resp_free(&r);
    CHECK_EQ_INT(request(port, "GET", "/health/extra", &r), 404);
    resp_free(&r);
    http_stop(srv);
    metrics_shutdown();
}

TEST(non_get_methods_return_405_with_allow_header)
{
    setup();
    int port;
    http_server_t *srv = start(&port, 32, 5000);
    REQUIRE(srv);
    static const char *const methods[] = {"POST", "PUT", "DELETE", "OPTIONS", "PATCH"};
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        resp_t r;
        CHECK_EQ_INT(request(port, methods[i], "/health", &r), 405);
        CHECK_CONTAINS(r.head, "Allow: GET, HEAD");
        resp_free(&r);
    }
    resp_t r;
    CHECK_EQ_INT(request(port, "POST", "/nope", &r), 405);
    resp_free(&r);
    http_stop(srv);
    metrics_shutdown();
}

TEST(huge_post_body_is_rejected_without_being_read)
{
    setup();
    int port;
    http_server_t *srv = start(&port, 32, 5000);
    REQUIRE(srv);
    /* Announces 1 GB but sends only 64 KB: a server that buffered the body would wait for the rest. */
    const char *head = "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n";
    size_t hl = strlen(head), n = hl + 65536;
    char *req = malloc(n);
    REQUIRE(req);
    memcpy(req, head, hl);
    memset(req + hl, 'a', n - hl);
    double t0 = now_s();
    resp_t r;
    CHECK_EQ_INT(exchange(port, req, n, &r), 405);
    CHECK(now_s() - t0 < 3.0);
    resp_free(&r);
    free(req);
    CHECK_EQ_INT(request(port, "GET", "/health", &r), 200);
    resp_free(&r);
    http_stop(srv);
    metrics_shutdown();
}

TEST(start_on_port_in_use_returns_null)
{
    setup();
    int port;
    http_server_t *first = start(&port, 32, 5000);
    REQUIRE(first);
    http_config_t cfg = {.address = "127.0.0.1",
                         .port = port,
                         .max_connections = 32,
                         .connection_timeout_ms = 1000,
                         .version = "x",
                         .ready = ready_cb};
    CHECK(http_start(&cfg) == NULL);

    /* also when the holder is not an HTTP server */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    REQUIRE(fd >= 0);
    REQUIRE(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(fd, 1) == 0);
    REQUIRE(getsockname(fd, (struct sockaddr *)&sa, &sl) == 0);
    cfg.port = ntohs(sa.sin_port);
    CHECK(http_start(&cfg) == NULL);
    close(fd);

    resp_t r;
    CHECK_EQ_INT(request(port, "GET", "/health", &r), 200); /* the first server is unharmed */
    resp_free(&r);
    http_stop(first);
    metrics_shutdown();
}

TEST(invalid_bind_address_returns_null)
{
    setup();
    http_config_t cfg = {.address = "not-an-ip",
                         .port = free_port(),
                         .max_connections = 32,
                         .connection_timeout_ms = 1000,
                         .version = "x",
                         .ready = ready_cb};
    CHECK(http_start(&cfg) == NULL);
    cfg.address = "::1::2";
    CHECK(http_start(&cfg) == NULL);
    http_stop(NULL); /* NULL-safe */
    metrics_shutdown();
}

TEST(fifty_idle_connections_do_not_stop_metrics_from_answering)
{
    setup();
    int port;
    http_server_t *srv = start(&port, 128, 3000);
    REQUIRE(srv);
    int idle[50];
    int opened = 0;
    for (int i = 0; i < 50; i++) {
        idle[i] = connect_to(port);
        if (idle[i] >= 0)
            opened++;
    }
    CHECK_EQ_INT(opened, 50);
    double t0 = now_s();
    resp_t r;
    CHECK_EQ_INT(request(port, "GET", "/metrics", &r), 200);
    /* well before the 3 s timeout could have freed anything */
    CHECK(now_s() - t0 < 1.5);
    resp_free(&r);

    /* and the server drops the idle ones once the timeout passes */
    int closed = 0;
    for (int i = 0; i < 50; i++) {
        char c;
        if (idle[i] >= 0 && recv(idle[i], &c, 1, 0) <= 0)
            closed++;
        if (idle[i] >= 0)
            close(idle[i]);
    }
    CHECK_EQ_INT(closed, 50);
    http_stop(srv);
    metrics_shutdown();
}

TEST(idle_clients_over_the_per_ip_limit_are_refused_until_the_timeout_frees_slots)
{
    setup();
    int port;
    http_server_t *srv = start(&port, 8, 1000); /* per-IP limit 4 */
    REQUIRE(srv);
    int idle[4];
    for (int i = 0; i < 4; i++)
        idle[i] = connect_to(port);
    usleep(200 * 1000); /* let the server accept them */
    resp_t r;
    /* the fifth connection from this address is closed without an answer */
    CHECK_EQ_INT(request(port, "GET", "/metrics", &r), 0);
    resp_free(&r);
    double deadline = now_s() + 10;
    int status = 0;
    while (status != 200 && now_s() < deadline) {
        status = request(port, "GET", "/metrics", &r);
        resp_free(&r);
        if (status != 200)
            usleep(100 * 1000);
    }
    CHECK_EQ_INT(status, 200);
    for (int i = 0; i < 4; i++)
        if (idle[i] >= 0)
            close(idle[i]);
    http_stop(srv);
    metrics_shutdown();
}

static int scrape_port;
static atomic_int scrape_ok;

static void *scrape(void *arg)
{
    (void)arg;
    for (int i = 0; i < 20; i++) {
        resp_t r;
        if (request(scrape_port, "GET", "/metrics", &r) == 200 && strstr(r.body, "process_start_time_seconds"))
            atomic_fetch_add(&scrape_ok, 1);
        resp_free(&r);
        metrics_event_received(ET_CHATS_UPDATE, LANE_REALTIME);
    }
    return NULL;
}

TEST(concurrent_scrapes_all_succeed)
{
    setup();
    http_server_t *srv = start(&scrape_port, 32, 5000);
    REQUIRE(srv);
    atomic_store(&scrape_ok, 0);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        REQUIRE(pthread_create(&th[i], NULL, scrape, NULL) == 0);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    CHECK_EQ_INT(atomic_load(&scrape_ok), 80);
    http_stop(srv);
    metrics_shutdown();
}

/* Issue 17: every answer said "Connection: close", so each scrape paid a TCP handshake. */
TEST(get_requests_share_one_keep_alive_connection)
{
    setup();
    int port;
    http_server_t *srv = start(&port, 16, 5000);
    REQUIRE(srv != NULL);
    int fd = connect_to(port);
    REQUIRE(fd >= 0);
    static const char req[] = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    char buf[8192];
    for (int i = 0; i < 3; i++) {
        REQUIRE(send(fd, req, sizeof req - 1, MSG_NOSIGNAL) == (ssize_t)(sizeof req - 1));
        size_t len = 0;
        buf[0] = '\0';
        /* one whole answer: the head plus the body its Content-Length announces */
        while (len < sizeof buf - 1) {
            ssize_t n = recv(fd, buf + len, sizeof buf - 1 - len, 0);
            if (n <= 0)
                break;
            len += (size_t)n;
            buf[len] = '\0';
            char *sep = strstr(buf, "\r\n\r\n");
            const char *cl = strcasestr(buf, "Content-Length:");
            if (sep && cl && len >= (size_t)(sep + 4 - buf) + (size_t)atoi(cl + 15))
                break;
        }
        CHECK_CONTAINS(buf, "HTTP/1.1 200");
        CHECK_CONTAINS(buf, "\"status\":\"UP\"");
        CHECK(strcasestr(buf, "Connection: close") == NULL);
    }
    close(fd);
    http_stop(srv);
}
