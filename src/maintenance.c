/* maintenance.c - a thread that checks PostgreSQL for /ready and keeps monthly partitions rolling while running. */
#include "maintenance.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "db.h"
#include "clock.h"
#include "log.h"
#include "metrics.h"
#include "store.h"

struct maintenance {
    /* Set at start, read-only after. */
    const config_t *cfg;
    const atomic_bool *stop;
    db_pool_t *pool;
    atomic_bool db_up; /* written by the maintenance thread; read by /ready, the DLQ fetcher, the advisory reader */
    pthread_t thread;  /* main's */
};

static void *run(void *arg)
{
    maintenance_t *m = arg;
    log_thread_name("maintenance", NULL);
    int64_t next_partitions = 0; /* now: the first check also covers a month that turned during startup */
    bool was_up = true;
    while (!atomic_load(m->stop)) {
        db_error_t err;
        db_conn_t **db = db_pool_acquire(m->pool, 1000, m->stop, NULL);
        if (!db)
            continue; /* every session busy (they are usable, then), or stopping: the last verdict stands */
        if (!db_ok(*db)) {
            db_close(*db);
            *db = db_connect(m->cfg, &err);
        }
        bool up = *db && db_ping(*db);
        if (*db && !up) { /* also a read-only session: reconnect, a multi-host DSN may lead to the new primary */
            db_close(*db);
            *db = NULL;
        }
        atomic_store(&m->db_up, up);
        metrics_db_up_set(up);
        if (up != was_up)
            log_info("maintenance", up ? "database reachable" : "database unreachable");
        was_up = up;
        if (up && clock_mono_ms() >= next_partitions) {
            if (store_ensure_partitions(*db, time(NULL), &err) != 0)
                log_warn("maintenance", "partition upkeep failed; will retry", LF_S("error", err.message));
            else
                next_partitions = clock_mono_ms() + m->cfg->partition_check_interval_ms;
        }
        db_pool_release(m->pool, db);
        clock_sleep_ms_unless(1000, m->stop);
    }
    return NULL;
}

maintenance_t *maintenance_start(const config_t *cfg, db_pool_t *pool, const atomic_bool *stop)
{
    maintenance_t *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->cfg = cfg;
    m->stop = stop;
    m->pool = pool;
    atomic_store(&m->db_up, true);
    if (pthread_create(&m->thread, NULL, run, m) != 0) {
        free(m);
        return NULL;
    }
    return m;
}

bool maintenance_db_up(const maintenance_t *m)
{
    return m && atomic_load(&((maintenance_t *)m)->db_up);
}

void maintenance_stop(maintenance_t *m)
{
    if (!m)
        return;
    pthread_join(m->thread, NULL);
    free(m);
}
