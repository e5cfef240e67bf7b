/* dlq_worker.c - DLQ fetcher -> bounded queue -> pthread pool: re-run records, NAK with backoff, or exhaust. */
#include "dlq_worker.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "clock.h"
#include "consumer.h"
#include "db.h"
#include "dlq.h"
#include "intake.h"
#include "json.h"
#include "log.h"
#include "metrics.h"
#include "payload.h"
#include "router.h"
#include "store.h"
#include "text.h"

/* A bounded FIFO of messages; the fetcher fills it only with what fits (FIX: the reference over-fetched and let
 * records age past their ack wait). Filled by the fetcher, emptied by the workers. */
typedef struct {
    natsMsg **ring; /* under mu; a message belongs to the queue from push to pop */
    int cap;        /* set at init, read-only after */
    int head, len;  /* under mu */
    pthread_mutex_t mu;
    pthread_cond_t not_empty, has_room;
} queue_t;

/* Threads: main (create, subscribe, start, join, destroy), the fetcher, the workers; the HTTP threads read
 * in.subscribed and in.dur (dlq_worker_subscribed, dlq_worker_durable). */
struct dlq_worker {
    /* Set at create, read-only after. */
    const config_t *cfg;
    mes_nats_t *nats;
    const atomic_bool *stop;
    bool (*db_up)(void *ctx); /* called on the fetcher */
    void *db_up_ctx;
    db_pool_t *pool; /* sessions the workers share (with maintenance, advisories): they wait for one, never open one */
    intake_t in;     /* v1_dlq_worker_<co> (as configured) and its pull subscription: main's, then the fetcher's */
    atomic_bool fetcher_done; /* set by the fetcher as it ends (by main's join when it never started); workers read */
    queue_t q;                /* fetcher -> workers, under q.mu */
    /* Main's only. */
    pthread_t fetcher;
    pthread_t *workers;
    int nworkers, started_workers;
    bool fetcher_started;
};

/* One worker's private state: made by main in dlq_worker_start, then its worker thread's only (freed by it). The
 * exhauster's is its owner thread's (the advisory reader's). */
typedef struct {
    dlq_worker_t *w;
    db_conn_t **db; /* the pool's session this worker holds for the record in hand, else NULL */
    payload_ctx_t pctx;
    store_scratch_t scratch;
    json_doc_t doc;
    buf_t buf;
    natsMsg *msg; /* the record in hand, kept alive while we wait for the database */
    int id;
} worker_t;

/* What a record's processing decided. */
typedef enum { RES_ACK, RES_RETRY, RES_EXHAUST, RES_LEAVE } result_t;

/* Fields of a DLQ record (SPEC 5.1) as spans of its text. */
typedef struct {
    bool valid;
    char subject[256];
    char company[64];
    const char *orig;
    size_t orig_len;
    bool orig_base64;
    char *orig_decoded; /* base64 originals, malloc'd */
    int64_t retry_count;
    int64_t item_index; /* -1 when absent */
    const char *source_meta;
    size_t source_meta_len;
    char ts[64];
    char stream[128];
    int64_t seq;
    bool truncated;   /* original_payload is a prefix: the full original is at stream/seq */
    bool fatal;       /* error_type "fatal": the publisher found that retrying cannot help */
    char error[1024]; /* the record's own error */
} record_t;

int64_t dlq_worker_backoff_ms(const config_t *cfg, int k)
{
    return clock_backoff_ms(cfg->dlq_base_delay_ms, cfg->dlq_max_delay_ms, k, false);
}

/* ---- queue ------------------------------------------------------------------------------------------------ */

static int queue_init(queue_t *q, int cap)
{
    memset(q, 0, sizeof *q);
    q->ring = calloc((size_t)cap, sizeof *q->ring);
    if (!q->ring)
        return -1;
    q->cap = cap;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->not_empty, NULL);
    pthread_cond_init(&q->has_room, NULL);
    return 0;
}

static void queue_free(queue_t *q)
{
    if (!q->ring)
        return;
    for (int i = 0; i < q->len; i++)
        natsMsg_Destroy(q->ring[(q->head + i) % q->cap]); /* unacked: redelivered after ack wait */
    free(q->ring);
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->not_empty);
    pthread_cond_destroy(&q->has_room);
    q->ring = NULL;
}

static void queue_push(queue_t *q, natsMsg *m)
{
    pthread_mutex_lock(&q->mu);
    q->ring[(q->head + q->len) % q->cap] = m; /* the fetcher never asks for more than the room left */
    q->len++;
    metrics_dlq_queue_length_set(q->len);
    pthread_cond_signal(&q->not_empty);
    pthread_mutex_unlock(&q->mu);
}

/* Waits up to wait_ms for room; returns the free slots (0 on timeout). */
static int queue_room(queue_t *q, int64_t wait_ms)
{
    struct timespec ts = clock_deadline_in_ms(wait_ms);
    pthread_mutex_lock(&q->mu);
    while (q->len == q->cap && pthread_cond_timedwait(&q->has_room, &q->mu, &ts) == 0) {
    }
    int room = q->cap - q->len;
    pthread_mutex_unlock(&q->mu);
    return room;
}

/* Next message, or NULL once the fetcher is done and the queue is empty. */
static natsMsg *queue_pop(dlq_worker_t *w)
{
    queue_t *q = &w->q;
    natsMsg *m = NULL;
    pthread_mutex_lock(&q->mu);
    while (q->len == 0 && !atomic_load(&w->fetcher_done)) {
        struct timespec ts = clock_deadline_in_ms(200);
        pthread_cond_timedwait(&q->not_empty, &q->mu, &ts);
    }
    if (q->len > 0) {
        m = q->ring[q->head];
        q->head = (q->head + 1) % q->cap;
        q->len--;
        metrics_dlq_queue_length_set(q->len);
        pthread_cond_signal(&q->has_room);
    }
    pthread_mutex_unlock(&q->mu);
    return m;
}

/* ---- fetcher ------------------------------------------------------------------------------------------------ */

/* The fetcher's room: never more than the queue can take; nothing while PostgreSQL is down (fetching then would only
 * burn the records' delivery attempts). */
static int fetch_room(void *ctx)
{
    dlq_worker_t *w = ctx;
    if (w->db_up && !w->db_up(w->db_up_ctx)) {
        clock_sleep_ms(200);
        return 0;
    }
    return queue_room(&w->q, 200);
}

static void enqueue(void *ctx, natsMsgList *list, double fetch_s)
{
    dlq_worker_t *w = ctx;
    (void)fetch_s;
    for (int i = 0; i < list->Count; i++) {
        queue_push(&w->q, list->Msgs[i]); /* ownership moves to the queue */
        metrics_dlq_task_submitted();
        list->Msgs[i] = NULL;
    }
}

static void count_fetch(void *ctx)
{
    (void)ctx;
    metrics_dlq_fetch_request();
}

static void count_fetch_error(void *ctx)
{
    (void)ctx;
    metrics_dlq_fetch_error();
}

static void *fetch_loop(void *arg)
{
    dlq_worker_t *w = arg;
    log_thread_name("dlq-fetch", NULL);
    const intake_ops_t ops = {.who = "dlq",
                              .room = fetch_room,
                              .wait_ms = 500,
                              .deliver = enqueue,
                              .on_fetch = count_fetch,
                              .on_error = count_fetch_error};
    intake_run(&w->in, w->nats, w->stop, &ops, w);
    atomic_store(&w->fetcher_done, true);
    pthread_mutex_lock(&w->q.mu);
    pthread_cond_broadcast(&w->q.not_empty);
    pthread_mutex_unlock(&w->q.mu);
    return NULL;
}

/* ---- record parsing ----------------------------------------------------------------------------------------- */

static void copy_str(const char *src, const json_doc_t *d, int t, char *out, size_t cap)
{
    out[0] = '\0';
    if (t < 0 || d->toks[t].type != JSON_STRING)
        return;
    size_t n = json_str_decoded_len(src, &d->toks[t]);
    if (n + 1 > cap)
        return;
    json_str_decode(src, &d->toks[t], out);
    out[n] = '\0';
}

static int64_t get_int(const char *src, const json_doc_t *d, int t, int64_t dflt)
{
    int64_t v;
    if (t < 0 || d->toks[t].type != JSON_NUMBER || !json_num_to_i64(src, &d->toks[t], &v))
        return dflt;
    return v;
}

static void parse_record(worker_t *wk, const char *data, size_t len, record_t *r)
{
    char err[128];
    memset(r, 0, sizeof *r);
    r->item_index = -1;
    if (json_parse(&wk->doc, data, len, err, sizeof err) != JSON_OK || wk->doc.toks[0].type != JSON_OBJECT)
        return;
    const json_doc_t *d = &wk->doc;
    copy_str(data, d, json_obj_get(d, data, 0, "source_subject"), r->subject, sizeof r->subject);
    copy_str(data, d, json_obj_get(d, data, 0, "company"), r->company, sizeof r->company);
    copy_str(data, d, json_obj_get(d, data, 0, "ts"), r->ts, sizeof r->ts);
    copy_str(data, d, json_obj_get(d, data, 0, "source_stream"), r->stream, sizeof r->stream);
    r->seq = get_int(data, d, json_obj_get(d, data, 0, "source_sequence"), 0);
    r->retry_count = get_int(data, d, json_obj_get(d, data, 0, "retry_count"), 0);
    r->item_index = get_int(data, d, json_obj_get(d, data, 0, "item_index"), -1);
    int tr = json_obj_get(d, data, 0, "original_payload_truncated");
    r->truncated = tr >= 0 && d->toks[tr].type == JSON_TRUE;
    copy_str(data, d, json_obj_get(d, data, 0, "error"), r->error, sizeof r->error);
    char type[16];
    copy_str(data, d, json_obj_get(d, data, 0, "error_type"), type, sizeof type);
    r->fatal = strcmp(type, "fatal") == 0;
    char enc[16];
    copy_str(data, d, json_obj_get(d, data, 0, "original_payload_encoding"), enc, sizeof enc);
    int t = json_obj_get(d, data, 0, "original_payload");
    int m = json_obj_get(d, data, 0, "source_metadata");
    if (m >= 0 && d->toks[m].type == JSON_OBJECT) {
        r->source_meta = data + d->toks[m].start;
        r->source_meta_len = d->toks[m].len;
    }
    if (t < 0 || !r->subject[0])
        return;
    if (strcmp(enc, "base64") == 0 && d->toks[t].type == JSON_STRING) {
        /* base64 has no escapes: the token text between the quotes is the encoding */
        buf_t raw;
        buf_init(&raw);
        if (!text_base64_decode_append(&raw, data + d->toks[t].start + 1, d->toks[t].len - 2)) {
            buf_free(&raw);
            return;
        }
        r->orig_len = raw.len;
        r->orig_decoded = raw.data ? raw.data : strdup(""); /* owned by the record, freed after processing */
        r->orig = r->orig_decoded;
        r->orig_base64 = true;
    } else {
        r->orig = data + d->toks[t].start;
        r->orig_len = d->toks[t].len;
    }
    r->valid = true;
}

/* ---- processing ----------------------------------------------------------------------------------------------- */

static void keep_alive(void *arg)
{
    worker_t *wk = arg;
    if (wk->msg)
        pull_in_progress(wk->w->nats->nc, wk->msg);
}

/* The keepalive of a worker waiting on PostgreSQL with its record in hand. */
static db_keepalive_t keepalive_of(worker_t *wk)
{
    return (db_keepalive_t){keep_alive, wk, db_keepalive_every_ms(wk->w->cfg->dlq_ack_wait_ms)};
}

static bool ensure_db(worker_t *wk)
{
    char who[32];
    if (wk->id < 0)
        snprintf(who, sizeof who, "advisories");
    else
        snprintf(who, sizeof who, "dlq-worker-%d", wk->id);
    const config_t *cfg = wk->w->cfg;
    /* A session of the pool the workers share (with maintenance and the advisories), held until the record is
     * finished. While stopping we still finish the record in hand if a session and the database are there; we never
     * wait for them. */
    db_keepalive_t ka = keepalive_of(wk);
    if (!wk->db && !(wk->db = db_pool_acquire(wk->w->pool, atomic_load(wk->w->stop) ? 0 : -1, wk->w->stop, &ka)))
        return false;
    return db_wait_usable(wk->db, cfg, wk->w->stop, &ka, who);
}

/* last_metadata for a DLQ replay: the original message's metadata plus "dlq_attempt". */
static const char *replay_meta(worker_t *wk, const record_t *r, int attempt, uint32_t *len)
{
    buf_t *b = &wk->buf;
    buf_reset(b);
    if (r->source_meta && r->source_meta_len >= 2) {
        buf_append(b, r->source_meta, r->source_meta_len - 1); /* drop the closing brace */
        if (r->source_meta_len > 2)
            buf_putc(b, ',');
    } else {
        buf_puts(b, "{\"stream\":");
        buf_put_json_str(b, r->stream, strlen(r->stream));
        buf_printf(b, ",\"stream_sequence\":%lld,\"message_subject\":", (long long)r->seq);
        buf_put_json_str(b, r->subject, strlen(r->subject));
        buf_putc(b, ',');
    }
    buf_printf(b, "\"dlq_attempt\":%d}", attempt);
    const char *s = arena_strndup(wk->pctx.arena, b->data ? b->data : "{}", b->len);
    *len = s ? (uint32_t)b->len : 2;
    return s ? s : "{}";
}

/* s as valid UTF-8 of at most max bytes, in the worker's arena ("" when out of memory): record fields are copied into
 * error texts and rows, and PostgreSQL refuses text that is not UTF-8 (22021). */
static const char *shown(worker_t *wk, const char *s, size_t n, size_t max)
{
    buf_t *b = &wk->buf;
    buf_reset(b);
    buf_put_utf8(b, s, n, max);
    const char *out = arena_strndup(wk->pctx.arena, b->data ? b->data : "", b->len);
    return out ? out : "";
}

/* Re-runs the record's original through the live handlers. Returns the decision; *why explains failures. */
static result_t apply(worker_t *wk, const record_t *r, int attempt, const char **why, bool *retryable)
{
    const config_t *cfg = wk->w->cfg;
    *retryable = false;
    route_subject_t rs = router_subject(r->subject, cfg->company_id);
    if (strcmp(r->company, cfg->company_id) != 0 || !rs.own_tenant) {
        *why = arena_printf(wk->pctx.arena,
                            "DLQ record of another tenant (company '%s', subject '%s') "
                            "rejected by %s",
                            shown(wk, r->company, strlen(r->company), 64),
                            shown(wk, r->subject, strlen(r->subject), 128), cfg->company_id);
        return RES_EXHAUST;
    }
    if (rs.et == ET_UNKNOWN) {
        *why =
            arena_printf(wk->pctx.arena, "unknown source subject '%s'", shown(wk, r->subject, strlen(r->subject), 128));
        return RES_EXHAUST;
    }
    /* Exactly the live route; a history item travels alone and is re-wrapped there. */
    event_t ev;
    error_class_t cls = router_route(&wk->pctx, r->subject, rs.et, r->orig, r->orig_len, r->item_index, &ev);
    if (cls == ERR_UNKNOWN) { /* out of memory */
        *why = ev.errmsg;
        *retryable = true;
        return RES_RETRY;
    }
    if (cls != ERR_NONE) {
        *why = ev.errmsg;
        return RES_EXHAUST; /* unmarshal / validation: retrying cannot help */
    }
    uint32_t meta_len = 0;
    const char *meta = replay_meta(wk, r, attempt, &meta_len);
    size_t n = router_item_count(&ev);
    store_item_t *items = arena_alloc(wk->pctx.arena, (n ? n : 1) * sizeof *items);
    if (!items) {
        *why = "out of memory";
        *retryable = true;
        return RES_RETRY;
    }
    size_t bad = 0;
    size_t k = router_items(&ev, meta, meta_len, items, &bad, why);
    for (;;) {
        if (!ensure_db(wk))
            return RES_LEAVE;
        db_error_t err;
        db_keepalive_t ka = keepalive_of(wk);
        if (store_commit(*wk->db, items, k, &wk->scratch, &ka, &err) == 0)
            break;
        if (err.outage) { /* pause, keep the record alive, try again: an outage must not burn attempts */
            db_close(*wk->db);
            *wk->db = NULL;
            if (atomic_load(wk->w->stop))
                return RES_LEAVE;
            continue;
        }
        *why = arena_printf(wk->pctx.arena, "%s", err.message);
        *retryable = err.retryable;
        return err.retryable ? RES_RETRY : RES_EXHAUST;
    }
    for (size_t i = 0; i < k; i++) {
        if (items[i].result == ERR_NOT_FOUND) {
            *why = "row still not found on DLQ retry (update before its upsert)";
            *retryable = true;
            return RES_RETRY;
        }
    }
    if (bad) /* the valid part is written; the invalid items cannot get better */
        return RES_EXHAUST;
    return RES_ACK;
}

/* The row of a record PostgreSQL refused as it was (a number jsonb cannot hold, text that is not UTF-8, ...): every
 * field made from the record is base64 or sanitised text, so nothing of it can fail the insert again. */
static void degrade(worker_t *wk, store_exhausted_t *e, buf_t *payload, buf_t *orig, const char *data, size_t len,
                    const record_t *r, const char *why, const char *refusal)
{
    buf_reset(payload);
    buf_puts(payload, "{\"degraded\":true,\"source_subject\":");
    buf_put_json_str(payload, e->source_subject, strlen(e->source_subject));
    if (r->valid) {
        buf_puts(payload, ",\"source_stream\":");
        buf_put_json_str(payload, r->stream, strlen(r->stream));
        buf_printf(payload, ",\"source_sequence\":%lld", (long long)r->seq);
        if (r->item_index >= 0)
            buf_printf(payload, ",\"item_index\":%lld", (long long)r->item_index);
        buf_reset(orig); /* a JSON string: the original as base64, the row's original_payload and the record's */
        buf_putc(orig, '"');
        text_base64_append(orig, (const unsigned char *)r->orig, r->orig_len);
        buf_putc(orig, '"');
        buf_puts(payload, ",\"original_payload_encoding\":\"base64\",\"original_payload\":");
        buf_append(payload, orig->data, orig->len);
        e->original_json = orig->data;
    } else {
        e->original_json = NULL;
    }
    buf_puts(payload, ",\"dlq_record_base64\":\"");
    text_base64_append(payload, (const unsigned char *)data, len);
    buf_puts(payload, "\"}");
    e->dlq_payload = payload->data ? payload->data : "{}";
    e->event_ts = NULL;
    e->last_error = arena_printf(wk->pctx.arena, "%s [stored degraded: PostgreSQL refused the row as it was: %s]", why,
                                 shown(wk, refusal, strlen(refusal), 400));
    if (!e->last_error)
        e->last_error = why;
}

/* How a row is keyed and counted (exhaust for the DLQ consumer's records, dlq_exhauster_store for the others). */
typedef struct {
    const char *msg_id;        /* dlq_message_id */
    const char *also_known_as; /* NULL or a second key that means "stored already" */
    int retry_count;
    bool last_chance;          /* a retryable refusal stores the degraded row at once: there is no later delivery */
    const char *origin;        /* for the log line */
    const char *original_json; /* NULL, or the full JSON original when the record holds a truncated copy */
    bool inserted;             /* out: this call wrote the row */
} row_key_t;

/* Stores the exhausted_events row of record data[0..len) (parsed into r): the record as dlq_payload, its JSON
 * original as original_payload. Waits out a database outage; a data-class refusal stores the degraded row. Returns
 * RES_EXHAUST when the row is there (written now or before), RES_RETRY when it is not, RES_LEAVE when stopping. */
static result_t store_row(worker_t *wk, const char *data, size_t len, const record_t *r, const char *why, row_key_t *k)
{
    const config_t *cfg = wk->w->cfg;
    const char *hid = k->msg_id;
    why = shown(wk, why, strlen(why), 4096);
    /* dlq_payload is jsonb: a record that is not JSON is kept as base64 inside an object. */
    const char *payload = data;
    buf_t wrapped, orig_b64;
    buf_init(&wrapped);
    buf_init(&orig_b64);
    if (!r->valid && json_parse(&wk->doc, data, len, NULL, 0) != JSON_OK) {
        buf_puts(&wrapped, "{\"invalid_record_base64\":\"");
        text_base64_append(&wrapped, (const unsigned char *)data, len);
        buf_puts(&wrapped, "\"}");
        payload = wrapped.data ? wrapped.data : "{}";
    }
    char *orig = NULL;
    if (k->original_json)
        orig = strdup(k->original_json);
    else if (r->valid && !r->orig_base64)
        orig = strndup(r->orig, r->orig_len);
    store_exhausted_t e = {
        .company_id = cfg->company_id,
        .source_subject = r->subject[0] ? shown(wk, r->subject, strlen(r->subject), 255) : "unknown",
        .last_error = why,
        .retry_count = k->retry_count,
        .event_ts = clock_rfc3339_valid(r->ts, false) ? r->ts : NULL,
        .dlq_payload = payload,
        .original_json = orig,
        .dlq_message_id = hid,
        .also_known_as = k->also_known_as,
    };
    result_t res = RES_EXHAUST;
    bool degraded = false;
    k->inserted = false;
    for (;;) {
        if (!ensure_db(wk)) {
            res = RES_LEAVE;
            break;
        }
        db_error_t err;
        if (store_exhausted_insert(*wk->db, &e, &k->inserted, &err) == 0)
            break;
        if (err.outage && !atomic_load(wk->w->stop)) { /* pause and try again: an outage must not burn attempts */
            db_close(*wk->db);
            *wk->db = NULL;
            continue;
        }
        /* A data-class refusal (22xxx, 23xxx, ...) would refuse the same row on every delivery until JetStream gives
         * up, and the record would leave without a row: store a row made only of safe text instead. A retryable
         * failure is retried, except at the record's last delivery, where the safe row is the last chance. */
        if (!degraded && !atomic_load(wk->w->stop) && (!err.retryable || k->last_chance)) {
            log_warn("dlq", "exhausted event refused by PostgreSQL as it is; storing a degraded row",
                     LF_S("error", err.message), LF_S("dlq_message_id", hid));
            degrade(wk, &e, &wrapped, &orig_b64, data, len, r, why, err.message);
            degraded = true;
            continue;
        }
        /* FIX: never ack a record that is not stored; try again later */
        log_warn("dlq", "cannot store exhausted event; will retry", LF_S("error", err.message),
                 LF_S("dlq_message_id", hid));
        res = RES_RETRY;
        break;
    }
    free(orig);
    buf_free(&wrapped);
    buf_free(&orig_b64);
    if (res == RES_EXHAUST)
        log_warn("dlq", k->origin, LF_S("source_subject", e.source_subject), LF_S("error", e.last_error),
                 LF_I("retry_count", e.retry_count), LF_S("dlq_message_id", hid), LF_B("degraded", degraded),
                 LF_B("already_stored", !k->inserted));
    return res;
}

static result_t exhaust(worker_t *wk, const char *data, size_t len, const record_t *r, int attempt, const char *why)
{
    const config_t *cfg = wk->w->cfg;
    char msgid[256];
    const char *hid = NULL;
    jsMsgMetaData *md = NULL;
    /* The header is the row's unique key: only text PostgreSQL can store and index, else <dlq_stream>:<seq>. */
    if (natsMsgHeader_Get(wk->msg, "Nats-Msg-Id", &hid) != NATS_OK || !hid || !*hid || strlen(hid) > 200 ||
        !text_utf8_valid(hid, strlen(hid))) {
        (void)natsMsg_GetMetaData(&md, wk->msg);
        snprintf(msgid, sizeof msgid, "%s:%llu", cfg->dlq_stream, (unsigned long long)(md ? md->Sequence.Stream : 0));
        jsMsgMetaData_Destroy(md);
        hid = msgid;
    }
    row_key_t k = {
        .msg_id = hid,
        .retry_count = (int)r->retry_count + attempt,
        .last_chance = attempt >= cfg->dlq_max_deliver,
        .origin = "DLQ record exhausted",
    };
    return store_row(wk, data, len, r, why, &k);
}

static void settle(worker_t *wk, result_t res, int attempt)
{
    const config_t *cfg = wk->w->cfg;
    natsStatus s = NATS_OK;
    switch (res) {
    case RES_ACK:
        s = pull_ack_sync(wk->w->nats->nc, wk->msg, 5000);
        if (s == NATS_OK)
            metrics_dlq_ack_success();
        break;
    case RES_EXHAUST:
        s = pull_ack_sync(wk->w->nats->nc, wk->msg, 5000);
        if (s == NATS_OK)
            metrics_dlq_task_dropped();
        break;
    case RES_RETRY:
        s = pull_nak(wk->w->nats->nc, wk->msg, dlq_worker_backoff_ms(cfg, attempt));
        if (s == NATS_OK)
            metrics_dlq_task_retry();
        break;
    case RES_LEAVE: return;
    }
    if (s != NATS_OK) {
        metrics_dlq_ack_failure();
        log_warn("dlq", "DLQ ack/nak failed; the record will be redelivered", LF_S("error", natsStatus_GetText(s)));
    }
}

/* A record that holds a truncated original (over 512 KiB): its own error stands when its publisher found that
 * retrying cannot help (error_type "fatal": unmarshal, validation, a data-class database error);
 * otherwise the full original is read from its source stream. Returns RES_ACK when r now holds the full original. */
static result_t full_original(worker_t *wk, record_t *r, const char **why)
{
    if (r->fatal) {
        *why = r->error[0] ? r->error : "invalid event (truncated in its DLQ record)";
        return RES_EXHAUST;
    }
    if (r->item_index >= 0) {
        *why = "the DLQ record holds a truncated history item and its source message is the whole batch";
        return RES_EXHAUST;
    }
    char msg[512] = "no source_stream/source_sequence to read the full original from";
    buf_t full;
    buf_init(&full);
    mes_source_t s = MES_SRC_GONE;
    if (r->stream[0] && r->seq > 0)
        s = mes_nats_get_source(wk->w->nats, r->stream, (uint64_t)r->seq, r->subject, &full, msg, sizeof msg);
    if (s != MES_SRC_OK) {
        buf_free(&full);
        *why = arena_printf(wk->pctx.arena, "truncated original in the DLQ record (%s); %s", r->error, msg);
        if (!*why)
            *why = "truncated original in the DLQ record";
        return s == MES_SRC_FAILED ? RES_RETRY : RES_EXHAUST;
    }
    free(r->orig_decoded);
    r->orig_decoded = full.data ? full.data : strdup("");
    r->orig = r->orig_decoded;
    r->orig_len = full.len;
    return RES_ACK;
}

static void process(worker_t *wk)
{
    const config_t *cfg = wk->w->cfg;
    double t0 = clock_mono_s();
    const char *data = natsMsg_GetData(wk->msg);
    size_t len = (size_t)natsMsg_GetDataLength(wk->msg);
    jsMsgMetaData *md = NULL;
    int attempt = 1;
    if (natsMsg_GetMetaData(&md, wk->msg) == NATS_OK && md)
        attempt = (int)md->NumDelivered;
    jsMsgMetaData_Destroy(md);
    arena_reset(wk->pctx.arena);

    record_t r;
    parse_record(wk, data ? data : "", len, &r);
    const char *why = "invalid DLQ record: not a JSON object with source_subject and original_payload";
    bool retryable = false;
    result_t res = r.valid && r.truncated ? full_original(wk, &r, &why) : RES_ACK;
    if (res == RES_ACK)
        res = r.valid ? apply(wk, &r, attempt, &why, &retryable) : RES_EXHAUST;
    /* Retryable failures get attempts up to nats.dlqMaxRetries (FIX: counted on the DLQ message's own deliveries). */
    if (res == RES_RETRY && attempt >= cfg->dlq_max_retries)
        res = RES_EXHAUST;
    if (res == RES_EXHAUST)
        res = exhaust(wk, data ? data : "", len, &r, attempt, why);
    settle(wk, res, attempt);
    free(r.orig_decoded);
    metrics_dlq_processing_duration(clock_mono_s() - t0);
}

static void *work_loop(void *arg)
{
    worker_t *wk = arg;
    log_thread_name("dlq-worker", NULL);
    natsMsg *m;
    while ((m = queue_pop(wk->w)) != NULL) {
        metrics_dlq_workers_active_add(1);
        wk->msg = m;
        process(wk);
        db_pool_release(wk->w->pool, wk->db);
        wk->db = NULL;
        natsMsg_Destroy(m);
        wk->msg = NULL;
        metrics_dlq_workers_active_add(-1);
    }
    payload_ctx_free(&wk->pctx);
    store_scratch_free(&wk->scratch);
    json_doc_free(&wk->doc);
    buf_free(&wk->buf);
    free(wk);
    return NULL;
}

/* ---- lifecycle ------------------------------------------------------------------------------------------------ */

dlq_worker_t *dlq_worker_create(const config_t *cfg, mes_nats_t *nats, db_pool_t *pool, const atomic_bool *stop,
                                bool (*db_up)(void *ctx), void *db_up_ctx)
{
    dlq_worker_t *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->cfg = cfg;
    w->nats = nats;
    w->stop = stop;
    w->db_up = db_up;
    w->db_up_ctx = db_up_ctx;
    w->pool = pool;
    w->nworkers = cfg->dlq_workers;
    mes_nats_durable(&w->in.dur, cfg, MES_DURABLE_DLQ, ET_UNKNOWN);
    w->workers = calloc((size_t)w->nworkers, sizeof *w->workers);
    if (!w->workers || queue_init(&w->q, cfg->dlq_queue_size) != 0) {
        dlq_worker_destroy(w);
        return NULL;
    }
    return w;
}

int dlq_worker_subscribe(dlq_worker_t *w)
{
    if (intake_subscribe(&w->in, w->nats) != 0)
        return -1;
    log_info("dlq", "DLQ consumer subscribed", LF_S("durable", w->in.dur.durable), LF_S("filter", w->in.dur.filter),
             LF_I("workers", w->nworkers), LF_I("queue_size", w->q.cap));
    return 0;
}

const char *dlq_worker_durable(const dlq_worker_t *w)
{
    return w->in.dur.durable;
}

bool dlq_worker_subscribed(const dlq_worker_t *w)
{
    return w && atomic_load(&((dlq_worker_t *)w)->in.subscribed);
}

int dlq_worker_start(dlq_worker_t *w)
{
    for (int i = 0; i < w->nworkers; i++) {
        worker_t *wk = calloc(1, sizeof *wk);
        if (!wk)
            return -1;
        wk->w = w;
        wk->id = i;
        store_scratch_init(&wk->scratch);
        json_doc_init(&wk->doc);
        buf_init(&wk->buf);
        if (payload_ctx_init(&wk->pctx, w->cfg->company_id) != 0 ||
            pthread_create(&w->workers[i], NULL, work_loop, wk) != 0) {
            payload_ctx_free(&wk->pctx);
            free(wk);
            return -1;
        }
        w->started_workers++;
    }
    if (pthread_create(&w->fetcher, NULL, fetch_loop, w) != 0)
        return -1;
    w->fetcher_started = true;
    return 0;
}

bool dlq_worker_join(dlq_worker_t *w, int64_t deadline_ms)
{
    if (!w)
        return true;
    struct timespec ts = clock_timespec_of_ms(deadline_ms);
    if (w->fetcher_started) {
        if (pthread_timedjoin_np(w->fetcher, NULL, &ts) != 0)
            return false;
        w->fetcher_started = false;
    } else {
        atomic_store(&w->fetcher_done, true); /* never started: let workers see the end */
    }
    while (w->started_workers > 0) {
        if (pthread_timedjoin_np(w->workers[w->started_workers - 1], NULL, &ts) != 0)
            return false;
        w->started_workers--;
    }
    return true;
}

void dlq_worker_destroy(dlq_worker_t *w)
{
    if (!w)
        return;
    intake_close(&w->in);
    queue_free(&w->q);
    free(w->workers);
    free(w);
}

/* ---- exhaustion for records from elsewhere ------------------------------------------------------------------ */

/* A worker outside the DLQ worker's pool of threads (its sessions come from the same db_pool): the same parsing, row,
 * degraded row and session handling as the workers' exhaustion. Made by main, then its one owner thread's. */
struct dlq_exhauster {
    dlq_worker_t w; /* only cfg, nats, stop and pool are set (at create, read-only after) */
    worker_t wk;
};

dlq_exhauster_t *dlq_exhauster_create(const config_t *cfg, mes_nats_t *nats, db_pool_t *pool, const atomic_bool *stop)
{
    dlq_exhauster_t *x = calloc(1, sizeof *x);
    if (!x)
        return NULL;
    x->w.cfg = cfg;
    x->w.nats = nats;
    x->w.stop = stop;
    x->w.pool = pool;
    x->wk.w = &x->w;
    x->wk.id = -1;
    store_scratch_init(&x->wk.scratch);
    json_doc_init(&x->wk.doc);
    buf_init(&x->wk.buf);
    if (payload_ctx_init(&x->wk.pctx, cfg->company_id) != 0) {
        dlq_exhauster_destroy(x);
        return NULL;
    }
    return x;
}

void dlq_exhauster_destroy(dlq_exhauster_t *x)
{
    if (!x)
        return;
    payload_ctx_free(&x->wk.pctx);
    store_scratch_free(&x->wk.scratch);
    json_doc_free(&x->wk.doc);
    buf_free(&x->wk.buf);
    free(x);
}

dlq_exh_result_t dlq_exhauster_store(dlq_exhauster_t *x, const dlq_exhaust_t *in, bool *inserted)
{
    worker_t *wk = &x->wk;
    arena_reset(wk->pctx.arena);
    wk->msg = in->held;
    record_t r;
    parse_record(wk, in->record, in->len, &r);
    const char *why = in->why;
    if (r.valid && r.error[0] && strcmp(r.error, why) != 0) { /* a DLQ record: its own error says what failed */
        const char *both =
            arena_printf(wk->pctx.arena, "%s; the record's error: %s", why, shown(wk, r.error, strlen(r.error), 2048));
        if (both)
            why = both;
    }
    row_key_t k = {
        .msg_id = in->msg_id,
        .also_known_as = in->also_known_as,
        .retry_count = (int)r.retry_count + in->attempts,
        .origin = in->origin ? in->origin : "exhausted event stored",
        .original_json = in->original_json,
    };
    result_t res = store_row(wk, in->record, in->len, &r, why, &k);
    db_pool_release(x->w.pool, wk->db); /* held for this record only, as a worker holds one */
    wk->db = NULL;
    free(r.orig_decoded);
    wk->msg = NULL;
    if (inserted)
        *inserted = res == RES_EXHAUST && k.inserted;
    return res == RES_EXHAUST ? DLQ_EXH_STORED : res == RES_LEAVE ? DLQ_EXH_STOPPING : DLQ_EXH_NOT_STORED;
}
