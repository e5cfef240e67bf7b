/* http.c - /health, /ready and /metrics served by libmicrohttpd (SPEC 8). */
#include "http.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "log.h"
#include "metrics.h"

#define POOL_THREADS 2
#define READY_DETAILS_MAX 2048
/* Enough for request headers of a probe or a scraper; MHD answers 431 beyond it. Bodies are never buffered. */
#define CONN_MEMORY_LIMIT (32 * 1024)
#define LISTEN_BACKLOG 128

/* Read by libmicrohttpd's threads (handle); main starts and stops it. */
struct http_server {
    struct MHD_Daemon *daemon; /* main's */
    atomic_bool shutting_down; /* atomic: set by main, read by the MHD threads */
    /* Set before the daemon starts, read-only after. */
    http_ready_fn ready; /* runs on the MHD threads */
    void *ready_ctx;
    char *health_body; /* built once at start; served as a persistent buffer until MHD_stop_daemon */
    bool metrics_disabled;
};

static const char not_found_body[] = "{\"error\":\"not found\"}";
static const char not_allowed_body[] = "{\"error\":\"method not allowed\"}";
static const char metrics_off_body[] = "{\"error\":\"metrics are disabled (metrics.enabled is false)\"}";
static const char json_type[] = "application/json";
static const char metrics_type[] = "text/plain; version=0.0.4; charset=utf-8";

/* libmicrohttpd's last message on this thread. http_start reads it to say why the daemon did not start; runtime
 * messages (one per refused connection under a flood, for instance) stay at debug so they cannot flood the log. */
static _Thread_local char mhd_last_error[256];

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    vsnprintf(mhd_last_error, sizeof mhd_last_error, fmt, ap);
    size_t n = strlen(mhd_last_error);
    while (n > 0 && (mhd_last_error[n - 1] == '\n' || mhd_last_error[n - 1] == '\r'))
        mhd_last_error[--n] = '\0';
    log_debug("http", "libmicrohttpd", LF_S("detail", mhd_last_error));
}

/* Queues a response and drops our reference; MHD owns it from here. */
static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, struct MHD_Response *resp, const char *type)
{
    if (!resp)
        return MHD_NO; /* out of memory: MHD closes the connection */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result r = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return r;
}

static enum MHD_Result reply_static(struct MHD_Connection *conn, unsigned status, const char *body)
{
    return reply(conn, status, MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_PERSISTENT),
                 json_type);
}

/* Takes ownership of a malloc'd body; it is released with the same allocator that made it. */
static enum MHD_Result reply_owned(struct MHD_Connection *conn, unsigned status, char *body, size_t len,
                                   const char *type)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer_with_free_callback(len, body, free);
    if (!resp)
        free(body);
    return reply(conn, status, resp, type);
}

static enum MHD_Result ready(struct http_server *srv, struct MHD_Connection *conn)
{
    char details[READY_DETAILS_MAX] = "";
    bool ok = false;
    if (atomic_load(&srv->shutting_down)) {
        snprintf(details, sizeof details, "\"shutdown\":\"in progress\"");
    } else if (srv->ready) {
        ok = srv->ready(srv->ready_ctx, details, sizeof details);
        details[sizeof details - 1] = '\0';
    } else {
        snprintf(details, sizeof details, "\"readiness\":\"no check configured\"");
    }
    size_t cap = strlen(details) + 64;
    char *body = malloc(cap);
    if (!body)
        return MHD_NO;
    int n = snprintf(body, cap, "{\"status\":\"%s\",\"details\":{%s}}", ok ? "READY" : "NOT_READY", details);
    return reply_owned(conn, ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, body, (size_t)n, json_type);
}

static enum MHD_Result metrics(struct MHD_Connection *conn)
{
    size_t len = 0;
    char *text = metrics_render(&len);
    if (!text)
        return reply_static(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "{\"error\":\"out of memory\"}");
    return reply_owned(conn, MHD_HTTP_OK, text, len, metrics_type);
}

/* GET and HEAD are answered once MHD has read the whole request (the second call), so the connection stays open for
 * the next request: a scraper pays one TCP handshake per connection, not per scrape. Any other method is answered
 * on the first call, before its body is read: MHD then closes the connection instead of buffering an upload, so a
 * large POST costs nothing. url carries no query string (MHD splits it off). */
static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                              const char *version, const char *upload_data, size_t *upload_data_size, void **req_cls)
{
    static char answered; /* its address (never written) marks an answered request: later calls discard its body */
    struct http_server *srv = cls;
    (void)version;
    (void)upload_data;
    bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    if (*req_cls == NULL) {
        if (!get) {
            *req_cls = &answered;
            return reply_static(conn, MHD_HTTP_METHOD_NOT_ALLOWED, not_allowed_body);
        }
        *req_cls = srv;
        return MHD_YES; /* headers read; answer when the request is complete */
    }
    if (*req_cls == &answered || *upload_data_size != 0) { /* the body of an answered request, or of a GET */
        *upload_data_size = 0;
        return MHD_YES;
    }
    *req_cls = &answered;
    if (strcmp(url, "/health") == 0)
        return reply_static(conn, MHD_HTTP_OK, srv->health_body);
    if (strcmp(url, "/ready") == 0)
        return ready(srv, conn);
    if (strcmp(url, "/metrics") == 0)
        return srv->metrics_disabled ? reply_static(conn, MHD_HTTP_NOT_FOUND, metrics_off_body) : metrics(conn);
    return reply_static(conn, MHD_HTTP_NOT_FOUND, not_found_body);
}

/* The /health body, built once; the version is JSON-escaped because it comes from the build or configuration. */
static char *health_json(const char *version)
{
    buf_t b;
    buf_init(&b);
    buf_puts(&b, "{\"status\":\"UP\",\"version\":");
    buf_put_json_str(&b, version, strlen(version));
    buf_puts(&b, "}");
    if (b.oom) {
        buf_free(&b);
        return NULL;
    }
    return b.data; /* caller frees */
}

http_server_t *http_start(const http_config_t *cfg)
{
    if (!cfg)
        return NULL;
    const char *addr = cfg->address ? cfg->address : "0.0.0.0";
    /* server.address is validated as IPv4 or IPv6 (config C_IP); serve both. */
    struct sockaddr_in sa4 = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cfg->port)};
    struct sockaddr_in6 sa6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)cfg->port)};
    struct sockaddr *sa = (struct sockaddr *)&sa4;
    unsigned family_flag = 0;
    if (inet_pton(AF_INET, addr, &sa4.sin_addr) != 1) {
        if (inet_pton(AF_INET6, addr, &sa6.sin6_addr) != 1) {
            log_error("http", "server.address is not an IPv4 or IPv6 address", LF_S("address", addr));
            return NULL;
        }
        sa = (struct sockaddr *)&sa6;
        family_flag = MHD_USE_IPv6;
    }
    if (cfg->port < 0 || cfg->port > 65535 || cfg->max_connections < 1) {
        log_error("http", "invalid HTTP settings", LF_I("port", cfg->port),
                  LF_I("max_connections", cfg->max_connections));
        return NULL;
    }

    http_server_t *srv = calloc(1, sizeof *srv);
    if (!srv)
        return NULL;
    atomic_init(&srv->shutting_down, false);
    srv->ready = cfg->ready;
    srv->metrics_disabled = cfg->metrics_disabled;
    srv->ready_ctx = cfg->ready_ctx;
    srv->health_body = health_json(cfg->version ? cfg->version : "");
    if (!srv->health_body)
        goto cleanup;

    /* Round up so a sub-second setting still times out; MHD's unit is whole seconds. */
    int64_t timeout_s = (cfg->connection_timeout_ms + 999) / 1000;
    if (timeout_s < 1)
        timeout_s = 1;
    /* One address may hold at most half the slots, so a single abusive client cannot lock out probes and scrapers
     * coming from elsewhere; idle ones are dropped after the timeout. */
    unsigned per_ip = cfg->max_connections >= 2 ? (unsigned)cfg->max_connections / 2 : 1;
    /* With a thread pool MHD splits the connection limit between the threads; keep at least one per thread. */
    unsigned limit = cfg->max_connections < POOL_THREADS ? POOL_THREADS : (unsigned)cfg->max_connections;

    mhd_last_error[0] = '\0';
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG | family_flag;
    srv->daemon = MHD_start_daemon(flags, 0, NULL, NULL, handle, srv, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
                                   MHD_OPTION_SOCK_ADDR, sa, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)POOL_THREADS,
                                   MHD_OPTION_CONNECTION_LIMIT, limit, MHD_OPTION_PER_IP_CONNECTION_LIMIT, per_ip,
                                   MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)timeout_s,
                                   MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY_LIMIT,
                                   MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)LISTEN_BACKLOG, MHD_OPTION_END);
    if (!srv->daemon) {
        log_error("http", "cannot start the HTTP server", LF_S("address", addr), LF_I("port", cfg->port),
                  LF_S("detail", mhd_last_error));
        goto cleanup;
    }
    log_info("http", "HTTP server listening", LF_S("address", addr), LF_I("port", cfg->port),
             LF_I("max_connections", limit), LF_I("timeout_s", timeout_s));
    return srv;

cleanup:
    free(srv->health_body);
    free(srv);
    return NULL;
}

void http_set_shutting_down(http_server_t *srv)
{
    if (srv)
        atomic_store(&srv->shutting_down, true);
}

void http_stop(http_server_t *srv)
{
    if (!srv)
        return;
    MHD_stop_daemon(srv->daemon);
    free(srv->health_body);
    free(srv);
}
