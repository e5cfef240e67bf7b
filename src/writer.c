/* writer.c - group commit across the lanes (see writer.h). */
#include "writer.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "log.h"

#define WAIT_SLICE_MS 20 /* a waiting lane looks again at least this often (keepalives, sessions given back) */

typedef enum { REQ_QUEUED = 0, REQ_TAKEN, REQ_DONE } req_state_t;

/* One lane's batch. Lives on that lane's stack until REQ_DONE; the fields after `n` are written by the lane that
 * takes it into a group, under w->mu for `state` and `next`, before REQ_DONE for the results. */
typedef struct req {
    store_item_t *items;
    size_t n;
    req_state_t state;
    int rc;
    db_error_t err;
    size_t group; /* batches in its group */
    double seconds;
    struct req *next;
} req_t;

/* Shared by every lane thread; made and destroyed by main while no lane runs. */
struct writer {
    db_pool_t *pool; /* set at create, read-only after (the pool locks inside) */
    size_t max_rows; /* likewise */
    pthread_mutex_t mu;
    pthread_cond_t cv;  /* a group finished, or a session was given back */
    req_t *head, *tail; /* queued batches, oldest first (under mu) */
    size_t queued_rows; /* rows of the queued batches (under mu) */
    int in_flight;      /* groups being committed now (under mu) */
};

writer_t *writer_create(db_pool_t *pool, size_t max_rows)
{
    writer_t *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->pool = pool;
    w->max_rows = max_rows ? max_rows : 1;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    return w;
}

void writer_destroy(writer_t *w)
{
    if (!w)
        return;
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}

static void fail_all(req_t *g, int rc, const db_error_t *err, size_t group, double seconds)
{
    for (req_t *q = g; q; q = q->next) {
        q->rc = rc;
        q->err = *err;
        q->group = group;
        q->seconds = seconds;
    }
}

/* Commits the group g (k batches, rows items) on slot. Fills every batch's results; states are left to the caller. */
static void commit_group(db_conn_t **slot, req_t *g, size_t k, size_t rows, store_scratch_t *scratch,
                         const db_keepalive_t *ka)
{
    db_error_t err = {0};
    if (!db_ok(*slot)) {
        snprintf(err.message, sizeof err.message, "no usable writer session (reconnecting)");
        err.cls = ERR_DATABASE;
        err.retryable = err.outage = true;
        fail_all(g, 1, &err, k, 0);
        return;
    }
    if (k == 1) { /* alone: its own items, no copy */
        double t0 = clock_mono_s();
        g->rc = store_commit(*slot, g->items, g->n, scratch, ka, &g->err) == 0 ? 0 : 1;
        g->group = 1;
        g->seconds = clock_mono_s() - t0;
        return;
    }
    store_item_t *all = malloc(rows * sizeof *all);
    if (!all) {
        snprintf(err.message, sizeof err.message, "out of memory grouping %zu rows", rows);
        err.cls = ERR_UNKNOWN;
        err.retryable = true;
        fail_all(g, 1, &err, k, 0);
        return;
    }
    size_t at = 0;
    for (req_t *q = g; q; q = q->next) {
        memcpy(all + at, q->items, q->n * sizeof *all);
        at += q->n;
    }
    double t0 = clock_mono_s();
    int rc = store_commit(*slot, all, rows, scratch, ka, &err) == 0 ? 0 : 1;
    double dt = clock_mono_s() - t0;
    at = 0;
    for (req_t *q = g; q; q = q->next) {
        for (size_t i = 0; i < q->n; i++) {
            q->items[i].result = all[at + i].result;
            q->items[i].onb = all[at + i].onb;
        }
        at += q->n;
    }
    free(all);
    fail_all(g, rc, &err, k, dt); /* the same verdict for every batch of the group */
    log_debug("writer", "group committed", LF_I("batches", (long long)k), LF_I("rows", (long long)rows),
              LF_S("result", rc == 0 ? "committed" : "failed"), LF_D("commit_ms", dt * 1000));
}

/* Takes the queued batches that fit one group, oldest first. Caller holds mu; the queue is not empty. */
static req_t *take_group(writer_t *w, size_t *k, size_t *rows)
{
    req_t *g = w->head, *last = NULL;
    *k = *rows = 0;
    for (req_t *q = w->head; q && (*k == 0 || *rows + q->n <= w->max_rows); q = q->next) {
        q->state = REQ_TAKEN;
        *rows += q->n;
        (*k)++;
        last = q;
    }
    w->head = last->next;
    if (!w->head)
        w->tail = NULL;
    last->next = NULL;
    w->queued_rows -= *rows;
    return g;
}

/* Whether a queued batch may start a group now. The first group always may. Another one, beside a group in flight,
 * only once a quarter of a group's rows is waiting, i.e. when one session is not keeping up (a drain: ten lanes
 * hand over full batches of up to 256): below that, the batches wait for the group in flight and go out together
 * after it. Measured 2026-12-06 (README, "The second writer only when one falls behind"): a second session taking
 * whatever was queued made two transactions of half the size, which cost PostgreSQL more per event (p99 at 13.7k
 * events/s paced 67 vs 110 ms with this rule, medians); a full group's rows as the threshold was never reached in a
 * drain, which then ran at one session's 21.7k events/s instead of two sessions' 29.8k. Caller holds mu. */
static bool may_start_group(const writer_t *w)
{
    return w->in_flight == 0 || w->queued_rows >= w->max_rows / 4;
}

/* Waits on cv for up to WAIT_SLICE_MS, calling the keepalive (outside the lock) when it is due. Caller holds mu. */
static void wait_slice(writer_t *w, const db_keepalive_t *ka, int64_t *last_ka)
{
    if (db_keepalive_due(ka, *last_ka)) {
        pthread_mutex_unlock(&w->mu);
        ka->fn(ka->ctx);
        *last_ka = clock_mono_ms();
        pthread_mutex_lock(&w->mu);
        return;
    }
    struct timespec ts = clock_deadline_in_ms(WAIT_SLICE_MS);
    pthread_cond_timedwait(&w->cv, &w->mu, &ts);
}

int writer_commit(writer_t *w, store_item_t *items, size_t n, store_scratch_t *scratch, const db_keepalive_t *ka,
                  db_error_t *err, bool *alone, double *seconds)
{
    req_t r = {.items = items, .n = n};
    int64_t last_ka = clock_mono_ms();
    pthread_mutex_lock(&w->mu);
    if (w->tail)
        w->tail->next = &r;
    else
        w->head = &r;
    w->tail = &r;
    w->queued_rows += n;
    while (r.state != REQ_DONE) {
        db_conn_t **slot = NULL;
        if (r.state == REQ_QUEUED && may_start_group(w) && (slot = db_pool_acquire(w->pool, 0, NULL, NULL)) != NULL) {
            /* This lane commits what is queued now (its own batch among it, unless older ones fill the group). */
            size_t k, rows;
            req_t *g = take_group(w, &k, &rows);
            w->in_flight++;
            pthread_mutex_unlock(&w->mu);
            commit_group(slot, g, k, rows, scratch, ka); /* ka: the combiner's own messages */
            db_pool_release(w->pool, slot);
            pthread_mutex_lock(&w->mu);
            w->in_flight--;
            for (req_t *q = g, *next; q; q = next) {
                next = q->next; /* q may be gone once REQ_DONE is seen by its lane */
                q->next = NULL;
                q->state = REQ_DONE;
            }
            pthread_cond_broadcast(&w->cv);
            continue;
        }
        wait_slice(w, ka, &last_ka);
    }
    pthread_mutex_unlock(&w->mu);
    *err = r.err;
    *alone = r.group == 1;
    *seconds = r.seconds;
    return r.rc;
}

db_conn_t **writer_session(writer_t *w, const db_keepalive_t *ka)
{
    return db_pool_acquire(w->pool, -1, NULL, ka);
}

void writer_session_release(writer_t *w, db_conn_t **slot)
{
    if (!slot)
        return;
    db_pool_release(w->pool, slot);
    pthread_mutex_lock(&w->mu); /* lanes with queued batches may take it now */
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}
