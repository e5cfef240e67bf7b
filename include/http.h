/* http.h - /health, /ready and /metrics on libmicrohttpd (SPEC 8). */
#ifndef MES_HTTP_H
#define MES_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Readiness is asked of the caller: fills details (a JSON object body without braces, e.g. "\"postgres\":\"up\"")
 * and returns true when ready. Called from HTTP threads: must be thread-safe and fast. */
typedef bool (*http_ready_fn)(void *ctx, char *details, size_t len);

typedef struct http_server http_server_t;

typedef struct {
    const char *address; /* bind address, e.g. "0.0.0.0" or "127.0.0.1" */
    int port;
    int max_connections;
    int64_t connection_timeout_ms;
    const char *version;
    bool metrics_disabled; /* metrics.enabled = false: /metrics answers 404 saying so */
    http_ready_fn ready;
    void *ready_ctx;
} http_config_t;

/* Starts the server; returns NULL (and logs why) on failure. */
http_server_t *http_start(const http_config_t *cfg);
/* Makes /ready answer 503 from now on (shutdown). */
void http_set_shutting_down(http_server_t *srv);
/* Stops and frees; NULL-safe. */
void http_stop(http_server_t *srv);

#endif
