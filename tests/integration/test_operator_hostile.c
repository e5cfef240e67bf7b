/* test_operator_hostile.c - issue 17: what a hostile operator environment does to the service (secrets in library
 * error texts, signals, startup interruptions). Each case starts its own servers. */
#include <signal.h>

#include "itest.h"

#define CO "hostile"

/* The password fragments of the hostile DSNs below: none may appear anywhere in the output. */
static bool leaks(const char *out, const char *const *fragments)
{
    bool leaked = false;
    for (size_t i = 0; fragments[i]; i++)
        if (out && strstr(out, fragments[i])) {
            fprintf(stderr, "password fragment \"%s\" leaked\n", fragments[i]);
            leaked = true;
        }
    return leaked;
}

TEST(library_errors_about_a_password_with_a_raw_slash_never_show_a_fragment_of_it)
{
    REQUIRE(h_nats_start(&N) && h_pg_start(&P));
    atexit(it_dump_log);
    static const char *const fragments[] = {"Xy7abc", "Qk+9def", "9def", NULL};
    char dsn[256], dsn_env[300];
    /* libpq reads "Xy7abc" as the port: "invalid integer value "Xy7abc" for connection option "port"". */
    snprintf(dsn, sizeof dsn, "postgres://postgres:Xy7abc/Qk+9def@127.0.0.1:%d/postgres", P.port);
    snprintf(dsn_env, sizeof dsn_env, "POSTGRES_DSN=%s", dsn);
    const char *env[] = {dsn_env, "STARTUP_TIMEOUT=2s", NULL};
    REQUIRE(h_svc_start(&S, CO, &N, &P, env));
    int rc = h_svc_wait_exit(&S, 60000);
    CHECK(rc > 0);
    char *log = h_svc_log(&S);
    REQUIRE(log != NULL);
    CHECK_CONTAINS(log, "for connection option");
    CHECK(!leaks(log, fragments));
    free(log);

    /* The operator CLI prints libpq's message on stderr. */
    char url_env[300];
    snprintf(url_env, sizeof url_env, "NATS_URL=%s", N.url);
    const char *cenv[] = {"COMPANY_ID=" CO, dsn_env, url_env, NULL};
    const char *argv[] = {getenv("MES_SERVICE_BIN"), "exhausted", "list", NULL};
    char *out = NULL;
    rc = h_run(argv, cenv, 30000, &out);
    fprintf(stderr, "--- exhausted list -> %d\n%s\n", rc, out ? out : "");
    CHECK(rc != 0);
    CHECK_CONTAINS(out, "for connection option");
    CHECK(!leaks(out, fragments));
    free(out);
}

TEST(key_value_dsn_passwords_with_special_characters_never_reach_the_log)
{
    REQUIRE(h_nats_start(&N) && h_pg_start(&P));
    atexit(it_dump_log);
    /* A key=value DSN whose quoted password holds every DSN-special character (trust auth: the server accepts it);
     * the debug log shows the configuration and every connection. */
    static const char *const fragments[] = {"Zq8mno", "Wv5pqr", "Tu3stu", "Rs1vwx", NULL};
    char dsn_env[400];
    snprintf(dsn_env, sizeof dsn_env,
             "POSTGRES_DSN=host=127.0.0.1 port=%d user=postgres dbname=postgres password='Zq8mno/?#@:%%+&= "
             "\\'\"Wv5pqr\\\\Tu3stu%%2FRs1vwx'",
             P.port);
    REQUIRE(h_svc_start(&S, CO, &N, &P, (const char *const[]){dsn_env, "LOG_LEVEL=debug", NULL}));
    REQUIRE(h_svc_wait_ready(&S, 60000));
    CHECK_EQ_INT(h_svc_signal(&S, SIGTERM, 30000), 0);
    char *log = h_svc_log(&S);
    REQUIRE(log != NULL);
    CHECK(!leaks(log, fragments));
    free(log);
}

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

/* One GET over IPv6 loopback; the status code, or -1 when nothing answered. */
static int http6_status(int port, const char *path)
{
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port)};
    inet_pton(AF_INET6, "::1", &sa.sin6_addr);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int status = -1;
    char req[256], buf[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n", path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && write(fd, req, (size_t)n) == n) {
        ssize_t got = read(fd, buf, sizeof buf - 1);
        if (got > 12) {
            buf[got] = '\0';
            sscanf(buf, "HTTP/1.%*d %d", &status);
        }
    }
    close(fd);
    return status;
}

/* Whether this machine's loopback has IPv6 (containers often run without it). */
static bool ipv6_loopback(void)
{
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6};
    inet_pton(AF_INET6, "::1", &sa.sin6_addr);
    bool ok = bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return ok;
}

TEST(server_address_ipv6_loopback_serves_health_and_ready)
{
    if (!ipv6_loopback())
        SKIP("::1 cannot be bound on this machine (no IPv6 loopback)");
    REQUIRE(it_up(CO, (const char *const[]){"SERVER_ADDRESS=::1", NULL}));
    CHECK_EQ_INT(http6_status(S.http_port, "/health"), 200);
    int64_t deadline = h_now_ms() + 30000;
    int ready;
    while ((ready = http6_status(S.http_port, "/ready")) != 200 && h_now_ms() < deadline)
        h_sleep_ms(100);
    CHECK_EQ_INT(ready, 200);
    char *log = h_svc_log(&S);
    CHECK_CONTAINS(log, "\"address\":\"::1\"");
    free(log);
    CHECK_EQ_INT(h_svc_signal(&S, SIGTERM, 30000), 0);
}
