/* main.c - message-event-service: startup and shutdown order (SPEC 11), nothing else. */
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "advisory.h"
#include "clock.h"
#include "config.h"
#include "consumer.h"
#include "db.h"
#include "dlq_worker.h"
#include "exhausted.h"
#include "http.h"
#include "log.h"
#include "secrets.h"
#include "maintenance.h"
#include "metrics.h"
#include "mes_nats.h"
#include "store.h"

static atomic_bool g_stop; /* set by the signal handler or main; every thread polls it */
static atomic_int g_signals;
static atomic_int g_ignored_signal; /* the last SIGHUP/SIGUSR1/SIGUSR2, for main to log (0: none) */
static int g_wake[2] = {-1, -1};    /* set by main before the handlers are installed; the handlers write to [1] */

/* Main writes every field; the other threads read through pointers it hands out, and the HTTP threads read app_t
 * itself in ready() only as g_stage publishes it. Main frees or clears a field only after the threads that read it
 * have ended (HTTP is stopped before anything it reads). */
typedef struct {
    config_t cfg;                     /* loaded before any thread starts; read-only after, by every thread */
    mes_nats_t nats;                  /* connected before STAGE_NATS (ready() reads it from then); see mes_nats.h */
    consumer_t *lanes[ET_BASE_COUNT]; /* lanes, nlanes: main's; ready() reads them from STAGE_LANES */
    int nlanes;
    dlq_worker_t *dlq; /* dlq, adv: ready() reads them from STAGE_ALL */
    advisory_t *adv;
    maintenance_t *maint; /* ready() from STAGE_DB; the DLQ fetcher and advisory reader through db_up() */
    http_server_t *http;  /* main's */
    /* The session budget (database.maxConnections), split once: the lanes' writers, the DLQ workers, maintenance
     * (its own session when the budget leaves two or more beside the writers, else it shares the DLQ workers').
     * Main's pointers; the pools and the writer lock inside. */
    db_pool_t *writers_pool, *dlq_pool, *maint_pool;
    writer_t *writer; /* group commit of the lanes over writers_pool */
} app_t;

#define WRITER_GROUP_ROWS 2048

static void on_signal(int sig)
{
    (void)sig;
    if (atomic_fetch_add(&g_signals, 1) >= 1)
        _exit(1); /* a second signal exits at once */
    atomic_store(&g_stop, true);
    if (g_wake[1] >= 0) {
        ssize_t w = write(g_wake[1], "x", 1);
        (void)w;
    }
}

/* SIGHUP (and SIGUSR1/2) would end the process with no log line and no drain. The service reloads nothing (every
 * key is read once at startup and a restart drains cleanly), so these are logged by main and otherwise ignored. */
static void on_ignored_signal(int sig)
{
    atomic_store(&g_ignored_signal, sig);
    if (g_wake[1] >= 0) {
        ssize_t w = write(g_wake[1], "h", 1);
        (void)w;
    }
}

static void log_ignored_signal(void)
{
    int sig = atomic_exchange(&g_ignored_signal, 0);
    if (sig)
        log_info("main", "signal ignored: configuration is read once at startup; restart the process to change it",
                 LF_S("signal", sig == SIGHUP    ? "SIGHUP"
                                : sig == SIGUSR1 ? "SIGUSR1"
                                                 : "SIGUSR2"));
}

/* A stop request (SIGTERM/SIGINT) while startup still waits for PostgreSQL or NATS is not a failure: the step that
 * gave up says nothing, and main logs "startup interrupted" and exits 0. */
static bool stopping(void)
{
    return atomic_load(&g_stop);
}

/* /ready runs on HTTP threads from the first moment, while main still builds the components it reads: main
 * publishes each one by raising g_stage (release) once it is complete, and ready() reads only what is published
 * (acquire). Before this, a probe during startup could read the lane count before the lane pointer it covers. */
enum { STAGE_NONE, STAGE_DB, STAGE_NATS, STAGE_LANES, STAGE_ALL };
static _Atomic int g_stage = STAGE_NONE; /* written by main only (release), read by the HTTP threads (acquire) */

static void publish_stage(int stage)
{
    atomic_store_explicit(&g_stage, stage, memory_order_release);
}

static bool ready(void *ctx, char *details, size_t len)
{
    app_t *a = ctx;
    int stage = atomic_load_explicit(&g_stage, memory_order_acquire);
    if (atomic_load(&g_stop)) { /* set by the signal handler itself: 503 from the first moment of shutdown */
        snprintf(details, len, "\"shutdown\":\"in progress\"");
        return false;
    }
    bool db = stage >= STAGE_DB && maintenance_db_up(a->maint);
    bool nats = stage >= STAGE_NATS && mes_nats_connected(&a->nats);
    int nlanes = stage >= STAGE_LANES ? a->nlanes : 0, subscribed = 0;
    for (int i = 0; i < nlanes; i++)
        subscribed += consumer_subscribed(a->lanes[i]);
    bool consumers = nlanes > 0 && subscribed == nlanes;
    bool dlq = stage >= STAGE_ALL && dlq_worker_subscribed(a->dlq);
    bool adv = stage >= STAGE_ALL && advisory_subscribed(a->adv);
    int k = snprintf(details, len,
                     "\"postgres\":\"%s\",\"nats\":\"%s\",\"consumers\":\"%d/%d subscribed\",\"dlq_worker\":\"%s\","
                     "\"advisories\":\"%s\"",
                     db ? "up" : "down", nats ? "up" : "down", subscribed, nlanes,
                     dlq ? "subscribed" : "not subscribed", adv ? "subscribed" : "not subscribed");
    /* Name the durables being re-created (after a reconnect, a stall, or a durable or stream deleted at runtime);
     * durable names are [A-Za-z0-9_] (SPEC 1: the company id rule), so they need no escaping. */
    if (stage >= STAGE_LANES && (!consumers || (stage >= STAGE_ALL && !dlq)) && k > 0 && (size_t)k < len) {
        const char *sep = "";
        k += snprintf(details + k, len - (size_t)k, ",\"not_subscribed\":[");
        for (int i = 0; i < nlanes && (size_t)k < len; i++)
            if (!consumer_subscribed(a->lanes[i])) {
                k += snprintf(details + k, len - (size_t)k, "%s\"%s\"", sep, consumer_durable(a->lanes[i]));
                sep = ",";
            }
        if (stage >= STAGE_ALL && !dlq && (size_t)k < len)
            k += snprintf(details + k, len - (size_t)k, "%s\"%s\"", sep, dlq_worker_durable(a->dlq));
        if ((size_t)k < len)
            snprintf(details + k, len - (size_t)k, "]");
    }
    return db && nats && consumers && dlq && adv;
}

/* PostgreSQL with retry and backoff until the startup deadline; then the schema. Returns 0, -1, or CONFIG_EXIT_BAD
 * when the connection cannot succeed without an operator's change (TLS verification or TLS files). */
static int start_database(app_t *a, int64_t deadline)
{
    db_error_t err;
    int64_t wait = 200;
    db_conn_t *db = NULL;
    char masked[1024];
    secrets_mask(a->cfg.postgres_dsn, masked, sizeof masked);
    while (!(db = db_connect(&a->cfg, &err))) {
        if (stopping())
            return -1;
        /* A wrong CA or an unreadable key fails the same way until someone changes the DSN, the files or the
         * server's certificate: retrying until the startup deadline would only hide the cause behind a timeout. */
        const char *unfixable = db_connect_unfixable(err.message);
        if (unfixable) {
            log_error("main", "startup failed: PostgreSQL TLS setup is wrong; retrying cannot help",
                      LF_S("key", "database.postgresDSN"), LF_S("problem", unfixable), LF_S("dsn", masked),
                      LF_S("error", err.message));
            return CONFIG_EXIT_BAD;
        }
        if (clock_mono_ms() + wait > deadline) {
            log_error("main", "startup failed: cannot connect to PostgreSQL", LF_S("dsn", masked),
                      LF_S("error", err.message));
            return -1;
        }
        log_warn("main", "PostgreSQL not reachable yet; retrying", LF_S("dsn", masked), LF_S("error", err.message),
                 LF_I("retry_in_ms", wait));
        clock_sleep_ms_unless(wait, &g_stop);
        wait = clock_backoff_next(wait, 5000);
    }
    int rc = store_migrate(db, a->cfg.postgres_auto_migrate, &err);
    if (rc == 0)
        rc = store_ensure_partitions(db, time(NULL), &err);
    if (rc != 0)
        log_error("main", "startup failed: database schema", LF_S("schema", a->cfg.schema), LF_S("error", err.message));
    else
        log_info("main", "database schema ready", LF_S("schema", a->cfg.schema));
    db_close(db);
    return rc;
}

/* Which bases this process consumes: all of a lane, or nats.<lane>.subjectList. */
static int start_consumers(app_t *a)
{
    for (int et = 0; et < ET_BASE_COUNT; et++) {
        if (!a->cfg.consume[et])
            continue;
        consumer_t *c = consumer_create(&a->cfg, &a->nats, a->writer, (event_type_t)et, &g_stop);
        if (!c)
            return -1;
        a->lanes[a->nlanes++] = c;
        if (consumer_subscribe(c) != 0)
            return -1;
    }
    consumer_link_updates(a->lanes, a->nlanes);
    for (int i = 0; i < a->nlanes; i++)
        if (consumer_start(a->lanes[i]) != 0)
            return -1;
    return 0;
}

static bool db_up(void *ctx)
{
    return maintenance_db_up(((app_t *)ctx)->maint);
}

/* The DLQ worker pool (SPEC 5.2): its own durable, fetcher, bounded queue and workers. */
static int start_dlq_worker(app_t *a)
{
    if (!(a->dlq = dlq_worker_create(&a->cfg, &a->nats, a->dlq_pool, &g_stop, db_up, a)))
        return -1;
    if (dlq_worker_subscribe(a->dlq) != 0 || dlq_worker_start(a->dlq) != 0)
        return -1;
    return 0;
}

static int pools_create(app_t *a)
{
    int writers = a->cfg.db_writers, rest = a->cfg.db_max_connections - writers; /* rest >= 1 (config.c) */
    db_budget_set(a->cfg.db_max_connections);
    a->writers_pool = db_pool_create(writers);
    a->dlq_pool = db_pool_create(rest >= 2 ? rest - 1 : 1);
    a->maint_pool = rest >= 2 ? db_pool_create(1) : a->dlq_pool;
    if (!a->writers_pool || !a->dlq_pool || !a->maint_pool)
        return -1;
    /* A group takes what the lanes have ready up to two full chunks of a lane (1 024 rows each, consumer.c): large
     * enough to coalesce ten lanes' small batches, small enough that its row locks are held briefly. */
    if (!(a->writer = writer_create(a->writers_pool, WRITER_GROUP_ROWS)))
        return -1;
    log_info("main", "PostgreSQL sessions budgeted", LF_I("max_connections", a->cfg.db_max_connections),
             LF_I("writers", writers), LF_I("dlq_workers", rest >= 2 ? rest - 1 : 1),
             LF_S("maintenance", rest >= 2 ? "own session" : "shares the DLQ workers' session"));
    return 0;
}

/* After every user of a pool has ended. */
static void pools_destroy(app_t *a)
{
    if (a->maint_pool != a->dlq_pool)
        db_pool_destroy(a->maint_pool);
    db_pool_destroy(a->dlq_pool);
    writer_destroy(a->writer);
    db_pool_destroy(a->writers_pool);
    a->maint_pool = a->dlq_pool = a->writers_pool = NULL;
    a->writer = NULL;
}

/* The safety net for what JetStream gives up on (issue 13): max-deliveries advisories -> exhausted_events. */
static int start_advisories(app_t *a)
{
    if (!(a->adv = advisory_create(&a->cfg, &a->nats, a->dlq_pool, &g_stop, db_up, a)))
        return -1;
    if (advisory_subscribe(a->adv) != 0 || advisory_start(a->adv) != 0)
        return -1;
    return 0;
}

/* Stop intake, let lanes finish, commit and ack their batches, then close connections. */
static int shutdown_all(app_t *a)
{
    int64_t deadline = clock_real_ms() + a->cfg.shutdown_timeout_ms;
    atomic_store(&g_stop, true);
    if (a->http)
        http_set_shutting_down(a->http);
    for (int i = 0; i < a->nlanes; i++) {
        if (!consumer_join(a->lanes[i], deadline)) {
            log_error("main", "shutdown timeout: a lane did not finish; exiting with its messages unacked",
                      LF_S("event_type", event_type_base(consumer_event_type(a->lanes[i]))));
            return 1; /* the thread still owns its messages; they will be redelivered */
        }
    }
    if (!dlq_worker_join(a->dlq, deadline)) {
        log_error("main", "shutdown timeout: DLQ workers did not finish; exiting with their records unacked");
        return 1;
    }
    if (!advisory_join(a->adv, deadline)) {
        log_error("main", "shutdown timeout: the advisory consumer did not finish; exiting with its advisory unacked");
        return 1;
    }
    /* /ready reads the components: stop HTTP (it waits for requests in progress) before freeing them. */
    http_stop(a->http);
    a->http = NULL;
    maintenance_stop(a->maint);
    a->maint = NULL;
    dlq_worker_destroy(a->dlq);
    a->dlq = NULL;
    advisory_destroy(a->adv);
    a->adv = NULL;
    for (int i = 0; i < a->nlanes; i++)
        consumer_destroy(a->lanes[i]);
    a->nlanes = 0;
    pools_destroy(a);
    mes_nats_close(&a->nats);
    mes_nats_library_close();
    log_info("main", "shutdown complete");
    return 0;
}

int main(int argc, char **argv)
{
    static app_t app;
    char err[1024];

    /* Before anything touches OpenSSL (libpq, nats.c): no OpenSSL cleanup at exit. nats.c frees its connections' TLS
     * contexts on its own threads, which may still run while exit() runs (a crash seen under TSan), and its library
     * destructor frees OpenSSL's compression-method list that OPENSSL_cleanup frees again (a crash seen under ASan
     * after nats_CloseAndWait). The memory stays reachable until the process is gone. */
    OPENSSL_init_crypto(OPENSSL_INIT_NO_ATEXIT, NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (config_load(&app.cfg, argc, argv, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        log_init(LOG_ERROR, "");
        log_error("config", err);
        return CONFIG_EXIT_BAD;
    }
    log_level_t lvl = LOG_INFO;
    (void)log_level_parse(app.cfg.log_level, &lvl);
    log_init(lvl, app.cfg.company_id);
    int cmd = exhausted_argv_index(argc, argv); /* operator command (SPEC 5.3) instead of the service */
    if (cmd > 0) {
        int status = exhausted_cli(&app.cfg, argc - cmd, argv + cmd);
        config_free(&app.cfg);
        return status;
    }
    log_info("main", "starting message-event-service", LF_S("version", MES_VERSION));
    config_log(&app.cfg);

    if (pipe(g_wake) != 0) {
        log_error("main", "startup failed: pipe", LF_S("error", strerror(errno)));
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_ignored_signal;
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (metrics_init(app.cfg.company_id, MES_VERSION, app.cfg.metrics_max_agent_labels, app.cfg.metrics_jid_label) !=
        0) {
        log_error("main", "startup failed: metrics");
        return 1;
    }
    metrics_streams_set(app.cfg.realtime.stream, app.cfg.historical.stream, app.cfg.dlq_stream);
    /* HTTP first (deviation from the reference order, on purpose): /health answers and /ready says what is still
     * missing while we wait for PostgreSQL or NATS. */
    app.maint = NULL;
    http_config_t hc = {
        .address = app.cfg.server_address,
        .port = app.cfg.server_port,
        .max_connections = app.cfg.http_max_connections,
        .connection_timeout_ms = app.cfg.http_connection_timeout_ms,
        .version = MES_VERSION,
        .metrics_disabled = !app.cfg.metrics_enabled,
        .ready = ready,
        .ready_ctx = &app,
    };
    int rc = 1;
    int64_t deadline = clock_mono_ms() + app.cfg.startup_timeout_ms;
    if (!(app.http = http_start(&hc))) {
        log_error("main", "startup failed: HTTP server", LF_S("address", app.cfg.server_address),
                  LF_I("port", app.cfg.server_port));
        goto cleanup;
    }
    if (pools_create(&app) != 0) {
        log_error("main", "startup failed: out of memory");
        goto cleanup;
    }
    int dbrc = start_database(&app, deadline);
    if (dbrc != 0) {
        if (dbrc == CONFIG_EXIT_BAD)
            rc = CONFIG_EXIT_BAD;
        goto cleanup;
    }
    if (!(app.maint = maintenance_start(&app.cfg, app.maint_pool, &g_stop)))
        goto cleanup;
    publish_stage(STAGE_DB);
    int nrc = mes_nats_connect(&app.nats, &app.cfg, deadline, &g_stop);
    if (nrc != 0) {
        if (nrc == MES_NATS_BAD_CONFIG)
            rc = CONFIG_EXIT_BAD;
        if (!stopping())
            log_error("main", "startup failed: cannot connect to NATS");
        goto cleanup;
    }
    if (mes_nats_ensure_streams(&app.nats) != 0) {
        if (!stopping())
            log_error("main", "startup failed: streams");
        goto cleanup;
    }
    publish_stage(STAGE_NATS);
    if (start_consumers(&app) != 0) {
        if (!stopping())
            log_error("main", "startup failed: consumers");
        goto cleanup;
    }
    publish_stage(STAGE_LANES);
    if (start_dlq_worker(&app) != 0) {
        if (!stopping())
            log_error("main", "startup failed: DLQ worker");
        goto cleanup;
    }
    if (start_advisories(&app) != 0) {
        if (!stopping())
            log_error("main", "startup failed: advisory consumer");
        goto cleanup;
    }
    publish_stage(STAGE_ALL);
    log_info("main", "Both consumers started successfully", LF_I("lanes", app.nlanes));

    while (!atomic_load(&g_stop)) {
        log_ignored_signal();
        char ch;
        ssize_t r = read(g_wake[0], &ch, 1);
        if (r < 0 && errno != EINTR)
            break;
    }
    log_info("main", "shutdown requested");
    rc = 0;
cleanup:
    log_ignored_signal();
    if (rc != 0 && stopping()) {
        log_info("main", "startup interrupted by a stop request; exiting",
                 LF_S("reached", atomic_load(&g_stage) >= STAGE_DB ? "PostgreSQL ready, waiting for NATS"
                                                                   : "waiting for PostgreSQL"));
        rc = 0;
    }
    if (shutdown_all(&app) != 0) {
        /* A thread that did not finish (and HTTP, maintenance) may still read the configuration and the metrics:
         * leave them to the exit, which frees everything anyway. */
        return 1;
    }
    metrics_shutdown();
    config_free(&app.cfg);
    return rc;
}
