/* harness.h - integration-test harness: real nats-server (JetStream) and PostgreSQL 15 on free loopback ports in
 * temp dirs, the service binary under test, and clients to publish, query and scrape. Every process it starts is
 * stopped by PID at exit, also when a check fails or the test is killed by SIGTERM/SIGINT/SIGALRM. */
#ifndef MES_HARNESS_H
#define MES_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <libpq-fe.h>
#include <nats/nats.h>

typedef struct {
    pid_t pid;
    int port;
    char dir[256];        /* temp dir (store / data dir) */
    char url[256];        /* nats://127.0.0.1:port (or, set by a test, a comma list of a cluster's servers) */
    char conf[300];       /* config file (h_nats_start_conf), empty for h_nats_start */
    char server_name[32]; /* "n<port>" with h_nats_start_conf */
    int wait;             /* H_NATS_WAIT_*: how (re)starts decide the server is ready */
} h_nats_t;

enum { H_NATS_WAIT_JS = 0, H_NATS_WAIT_LOG = 1, H_NATS_WAIT_NONE = 2 };

typedef struct {
    pid_t pid; /* postmaster pid */
    int port;
    char dir[256];   /* data dir (owned by postgres) */
    char dsn[256];   /* "host=127.0.0.1 port=N user=postgres dbname=postgres" */
    char opts[1024]; /* extra server options of h_pg_start_opts / h_pg_start_standby, kept for h_pg_restart */
} h_pg_t;

typedef struct {
    pid_t pid;
    int http_port;
    char log_path[256]; /* stdout+stderr of the service */
    char company[64];
} h_svc_t;

/* Starts nats-server -js on a free port with store in a fresh temp dir; waits until it accepts connections. */
bool h_nats_start(h_nats_t *n);
/* Starts nats-server -c <dir>/nats.conf holding server_name "n<port>", listen 127.0.0.1:<port> (port <= 0: a free
 * one), jetstream with store_dir in the temp dir, and extra_conf (cluster, tls, authorization blocks) appended.
 * wait: H_NATS_WAIT_JS (JetStream answers the raw probe), H_NATS_WAIT_LOG ("Server is ready" in its log: TLS or auth
 * servers the probe cannot talk to) or H_NATS_WAIT_NONE (cluster nodes that need their peers first; then
 * h_nats_wait_ready). Restarts (h_nats_restart) reuse the file. */
bool h_nats_start_conf(h_nats_t *n, int port, const char *extra_conf, int wait);
bool h_nats_wait_ready(h_nats_t *n, int timeout_ms);
/* A 3-node JetStream cluster (cluster "mes", routes between the three on free loopback ports), each node started with
 * h_nats_start_conf; returns when JetStream answers on every node. *all gets url = the three client URLs as a comma
 * list (with a blank, which the service trims) for h_svc_start/h_publish, and port = the first node's port. */
bool h_nats_cluster_start(h_nats_t node[3], h_nats_t *all);
/* h_streams_create with that many replicas per stream. */
bool h_streams_create_replicas(const h_nats_t *n, int replicas);
/* kill -9 the server (a crash), reaped by PID. */
void h_nats_kill(h_nats_t *n);
/* The harness's cached JetStream context for n->url (list allowed), for stream/consumer info in tests. */
jsCtx *h_nats_jsctx(const h_nats_t *n);
/* Stops (SIGTERM, then SIGKILL after 5 s) and, with restart, starts again on the same port and store dir. */
void h_nats_stop(h_nats_t *n);
bool h_nats_restart(h_nats_t *n);

/* initdb (cached template under $MES_BUILD_DIR/pg-template, copied per test) + pg_ctl start on a free port, as the
 * postgres user via runuser; listen only on 127.0.0.1; trust auth; fsync=off. Waits until it answers queries. */
bool h_pg_start(h_pg_t *p);
void h_pg_stop(h_pg_t *p);    /* fast shutdown, by PID */
bool h_pg_restart(h_pg_t *p); /* start again on the same dir and port */
/* h_pg_start with extra server options appended after the harness's own, so a repeated -c wins (e.g.
 * "-c ssl=on -c ssl_cert_file=/dir/server.crt -c ssl_key_file=/dir/server.key", "-c synchronous_commit=on").
 * Passed through pg_ctl -o, i.e. a shell: quote values with blanks in single quotes. Every server gets its own
 * copy of the template data dir, so options (or a standby made from it) never touch the template. */
bool h_pg_start_opts(h_pg_t *p, const char *server_opts);
/* A hot streaming standby of primary: pg_basebackup -R -X stream into a fresh data dir owned by postgres, its
 * primary_conninfo carrying application_name=app_name (what the primary's synchronous_standby_names names), started
 * on a free port with server_opts (may be NULL). Waits until the primary's pg_stat_replication shows it streaming. */
bool h_pg_start_standby(h_pg_t *s, const h_pg_t *primary, const char *app_name, const char *server_opts);
/* pg_ctl promote; waits until the server takes writes (pg_is_in_recovery() false). */
bool h_pg_promote(h_pg_t *p);
/* Immediate shutdown, what `pg_ctl stop -m immediate` does (SIGQUIT to the postmaster: no checkpoint, backends
 * die at once, clients see their sessions end mid-statement): a primary lost in a crash. Waits until it is gone. */
void h_pg_stop_immediate(h_pg_t *p);

/* Starts $MES_SERVICE_BIN with COMPANY_ID=company, NATS_URL, POSTGRES_DSN, SERVER_PORT=<free port>,
 * SERVER_ADDRESS=127.0.0.1 and the extra "KEY=VALUE" strings in env (NULL-terminated, may be NULL).
 * Output goes to log_path. Does not wait; see h_svc_wait_log / h_svc_wait_ready. */
bool h_svc_start(h_svc_t *s, const char *company, const h_nats_t *n, const h_pg_t *p, const char *const *env);
/* Waits until the service log contains needle; false on timeout or if the process exited. */
bool h_svc_wait_log(h_svc_t *s, const char *needle, int timeout_ms);
/* Waits for "Both consumers started successfully". */
bool h_svc_wait_ready(h_svc_t *s, int timeout_ms);
/* Sends sig; for SIGTERM/SIGINT waits up to timeout_ms for exit and returns the exit status (-1 on timeout, then
 * SIGKILLs). For SIGKILL returns after reaping. */
int h_svc_signal(h_svc_t *s, int sig, int timeout_ms);
/* Waits (without signalling) until the service exits; returns its status as h_svc_signal does, -1 on timeout
 * (the process is left running). */
int h_svc_wait_exit(h_svc_t *s, int timeout_ms);
/* Runs the binary to completion with args/env (for config-error and subcommand tests); captures output into out
 * (malloc'd, caller frees). Returns the exit status, or -1 on timeout. */
int h_run(const char *const *argv, const char *const *env, int timeout_ms, char **out);
/* Whole service log so far (malloc'd, caller frees). */
char *h_svc_log(const h_svc_t *s);

/* Minimal HTTP/1.1 GET (or other method) to 127.0.0.1:port; returns the status code (or -1), body malloc'd. */
int h_http(int port, const char *method, const char *path, char **body);
/* Value of the first sample whose line starts with `series` (exact name{labels} text) in /metrics, or -1. */
double h_metric(int port, const char *series);

/* libpq helpers on p->dsn (connection cached per process). */
PGconn *h_pg_conn(const h_pg_t *p);
/* First column of the first row as integer (-1 on error / no row); SQL built with printf-style args. */
long long h_pg_int(const h_pg_t *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* First column of the first row as string (malloc'd, NULL when NULL or error). */
char *h_pg_str(const h_pg_t *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool h_pg_exec(const h_pg_t *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Polls until the integer query result equals want or timeout; returns the last value seen. */
long long h_pg_wait_int(const h_pg_t *p, long long want, int timeout_ms, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* NATS client for publishing (JetStream, waits for PubAck). msg_id may be NULL. Connection cached per URL. */
bool h_publish(const h_nats_t *n, const char *subject, const char *data, size_t len, const char *msg_id);
/* Ensures the service streams exist before publishing when the service is not running yet (same config as the
 * service defaults: wa_events_stream, wa_history_events_stream, dlq_stream). */
bool h_streams_create(const h_nats_t *n);
/* Number of messages in a stream whose subject equals `subject` (uses a temporary ordered/ephemeral consumer or
 * stream info with subjects filter). -1 on error. */
long long h_stream_count(const h_nats_t *n, const char *stream, const char *subject);
/* Fetches up to max messages' data on subject from stream (ephemeral consumer, deliver all) into a malloc'd array
 * of malloc'd NUL-terminated strings; returns the count. Free with h_strv_free. */
int h_stream_read(const h_nats_t *n, const char *stream, const char *subject, int max, char ***out);
void h_strv_free(char **v, int n);

/* Monotonic milliseconds. Tests never sleep a fixed time where they can poll: use these with deadlines. */
int64_t h_now_ms(void);
void h_sleep_ms(int ms);
int h_free_port(void);

/* Stops everything started by this process (also registered with atexit and on fatal signals). */
void h_cleanup(void);

/* Additions (not in the first contract): */
/* True while pid runs; a zombie counts as gone (reaped here when it is our child). For "the server really died". */
bool h_pid_alive(pid_t pid);
/* Creates an empty 0755 dir /tmp/mes-h-<pid>-XXXXXX (for config files, stub binaries), removed at exit. */
bool h_tmpdir(char *out, size_t outlen);

#endif
