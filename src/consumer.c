/* consumer.c - one lane: fetch a batch -> validate -> one transaction -> ack, NAK with delay, or DLQ then ack. */
#include "consumer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "dlq.h"
#include "intake.h"
#include "json.h"
#include "log.h"
#include "metrics.h"
#include "router.h"

/* Rows per transaction at most (a single message with more items still goes in one transaction of its own). */
#define MAX_TX_ITEMS 1024
#define DLQ_PUBACK_WAIT_MS 5000 /* how long a batch waits for its DLQ records' PubAcks */
#define UPSERT_WAIT_MS 5000     /* at most this long an update batch waits for its entity's upsert lane */
#define HOLD_FETCHES 4          /* the handoff slot holds at most this many fetches (hold_max_of) */
#define HOLD_BYTES (1 << 20)    /* and takes another fetch only while its payloads are smaller than this */

/* What happens to one message once its batch has been decided. */
typedef enum { OUT_ACK = 0, OUT_DLQ, OUT_RETRY, OUT_LEAVE } outcome_t;

typedef struct {
    natsMsg *msg;
    jsMsgMetaData *md;
    const char *subject;
    const char *data;
    int len;
    char msg_id[160]; /* Nats-Msg-Id or stream:seq */
    event_t ev;
    const char *meta; /* last_metadata JSON (arena) */
    uint32_t meta_len;
    double t_recv;
    uint32_t first_item; /* its store items: [first_item, first_item + n_items) */
    uint32_t n_items;
    bool committed; /* its items are in a committed transaction */
    outcome_t out;
    error_class_t cls;
    bool retryable;
    const char *err;
    int dlq_first, dlq_n; /* its DLQ records in the batch publisher: [dlq_first, dlq_first + dlq_n) */
    bool dlq_unsent;      /* a record could not even be sent (dlq_err says why) */
    char dlq_err[200];
} slot_t;

/* Threads: main (create, subscribe, link, start, join, destroy), the fetcher, the lane, and other lanes (only
 * done_seq, idle_since_ms and the handoff flags, through `upsert`). */
struct consumer {
    /* set at create, read-only after */
    const config_t *cfg;
    const lane_config_t *lc;
    mes_nats_t *nats;
    event_type_t et;
    lane_t lane;
    const atomic_bool *stop;
    intake_t in;            /* its durable and pull subscription: main's until the fetcher starts, then the fetcher's */
    pthread_t thread;       /* the lane: validate, commit, ack */
    pthread_t fetch_thread; /* prefetches the next batch while the lane commits the current one */
    bool started, fetch_started; /* main's */
    int hold_max; /* the most messages the handoff slot holds, and the lane takes at once (set at create) */

    /* One-slot handoff between the fetcher and the lane. While the lane commits, the fetcher keeps filling the slot
     * up to hold_max messages (fetches of up to batchSize each, appended); the lane then takes the whole slot at once.
     * So a lane with a backlog brings up to hold_max messages to a group instead of one fetch, and while the lane
     * waits for PostgreSQL the slot fills up and intake pauses: at most 2 x hold_max messages in hand per lane. */
    pthread_mutex_t ho_mu;
    pthread_cond_t ho_cv;
    natsMsgList ho_list; /* ho_*: under ho_mu (the fetcher fills, the lane empties; other lanes read ho_full) */
    size_t ho_bytes;     /* payload bytes in ho_list */
    uint64_t ho_pending; /* messages the durable still had for us after the last fetch (its NumPending) */
    double ho_fetch_s;
    bool ho_full, ho_fetcher_done;
    bool lane_busy; /* the lane holds a batch it has not finished (under ho_mu) */

    /* Cross-lane order (consumer_link_updates): an update lane waits for `upsert`, the lane of its entity's upserts.
     * done_seq is the highest stream sequence this lane has finished; idle_since_ms is when its fetcher last found
     * nothing to fetch (0 while it holds messages). */
    consumer_t *upsert;            /* set by main before the threads start */
    _Atomic uint64_t done_seq;     /* written by the lane, read by the update lanes */
    _Atomic int64_t idle_since_ms; /* written by the fetcher, read by the update lanes */

    writer_t *writer; /* group commit over the writers' sessions, shared by every lane (set at create) */
    /* the lane thread's alone from here on (keep_alive runs on it too) */
    db_conn_t **db; /* a writers' session this lane holds alone while it isolates a failed group, else NULL */
    payload_ctx_t pctx;
    store_scratch_t scratch;
    dlq_batch_t *dlqb; /* publishes a batch's DLQ records together */
    buf_t metabuf;     /* last_metadata scratch, reused per message */
    slot_t *slots;
    store_item_t *items;
    size_t items_cap;
};

/* ---- lifecycle -------------------------------------------------------------------------------------------- */

/* The most messages a lane takes at once: its handoff slot fills with fetches of up to batch_size while it commits,
 * up to HOLD_FETCHES fetches and at most half of max_ack_pending (the other half is the batch in process), never
 * below one fetch. */
static int hold_max_of(int batch_size, int max_ack_pending)
{
    int m = max_ack_pending / 2; /* the slot and the batch in process together stay within max ack pending */
    if (m > HOLD_FETCHES * batch_size)
        m = HOLD_FETCHES * batch_size;
    return m > batch_size ? m : batch_size;
}

consumer_t *consumer_create(const config_t *cfg, mes_nats_t *nats, writer_t *writer, event_type_t et,
                            const atomic_bool *stop)
{
    consumer_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->cfg = cfg;
    c->et = et;
    c->lane = event_type_lane(et);
    c->lc = c->lane == LANE_HISTORICAL ? &cfg->historical : &cfg->realtime;
    c->nats = nats;
    c->writer = writer;
    c->stop = stop;
    mes_nats_durable(&c->in.dur, cfg, MES_DURABLE_LANE, et);
    store_scratch_init(&c->scratch);
    buf_init(&c->metabuf);
    pthread_mutex_init(&c->ho_mu, NULL);
    pthread_cond_init(&c->ho_cv, NULL);
    c->hold_max = hold_max_of(c->lc->batch_size, c->lc->max_ack_pending);
    c->slots = calloc((size_t)c->hold_max, sizeof *c->slots);
    c->dlqb = dlq_batch_create(nats->nc, cfg);
    if (!c->slots || !c->dlqb || payload_ctx_init(&c->pctx, cfg->company_id) != 0) {
        consumer_destroy(c);
        return NULL;
    }
    return c;
}

void consumer_destroy(consumer_t *c)
{
    if (!c)
        return;
    intake_close(&c->in);
    payload_ctx_free(&c->pctx);
    store_scratch_free(&c->scratch);
    dlq_batch_destroy(c->dlqb);
    buf_free(&c->metabuf);
    free(c->slots);
    free(c->items);
    if (c->ho_full) { /* never processed: unacked, redelivered after ack wait */
        natsMsgList_Destroy(&c->ho_list);
    }
    pthread_mutex_destroy(&c->ho_mu);
    pthread_cond_destroy(&c->ho_cv);
    free(c);
}

event_type_t consumer_event_type(const consumer_t *c)
{
    return c->et;
}

const char *consumer_durable(const consumer_t *c)
{
    return c->in.dur.durable;
}

bool consumer_subscribed(const consumer_t *c)
{
    return atomic_load(&c->in.subscribed);
}

int consumer_subscribe(consumer_t *c)
{
    if (intake_subscribe(&c->in, c->nats) != 0)
        return -1;
    log_info("consumer", "consumer subscribed", LF_S("durable", c->in.dur.durable), LF_S("filter", c->in.dur.filter),
             LF_S("consumer_type", lane_name(c->lane)));
    return 0;
}

/* ---- database session --------------------------------------------------------------------------------------- */

/* Keeps held messages alive while we wait (ack wait must never expire on work we still own). */
typedef struct {
    consumer_t *c;
    size_t held;
} hold_t;

static void keep_alive(void *arg)
{
    hold_t *h = arg;
    for (size_t i = 0; i < h->held; i++)
        if (h->c->slots[i].msg)
            pull_in_progress(h->c->nats->nc, h->c->slots[i].msg);
    pthread_mutex_lock(&h->c->ho_mu); /* the prefetched batch waits too */
    if (h->c->ho_full)
        for (int i = 0; i < h->c->ho_list.Count; i++)
            pull_in_progress(h->c->nats->nc, h->c->ho_list.Msgs[i]);
    pthread_mutex_unlock(&h->c->ho_mu);
}

/* The keepalive of a lane waiting on PostgreSQL with h's messages in hand (h must outlive its use). */
static db_keepalive_t keepalive_of(hold_t *h)
{
    return (db_keepalive_t){keep_alive, h, db_keepalive_every_ms(h->c->lc->ack_wait_ms)};
}

/* Returns true with a usable session; false when stopping. Holds `held` messages alive meanwhile. */
static bool ensure_db(consumer_t *c, size_t held)
{
    hold_t h = {c, held};
    db_keepalive_t ka = keepalive_of(&h);
    return db_wait_usable(c->db, c->cfg, c->stop, &ka, c->in.dur.durable);
}

/* ---- per-message preparation ---------------------------------------------------------------------------------- */

void consumer_build_meta(buf_t *b, const char *stream, uint64_t stream_seq, const char *consumer, uint64_t consumer_seq,
                         const char *msg_id, const char *subject, const char *processed_at)
{
    buf_puts(b, "{\"stream\":");
    buf_put_json_str(b, stream, strlen(stream));
    buf_puts(b, ",\"stream_sequence\":");
    buf_put_i64(b, (int64_t)stream_seq);
    buf_puts(b, ",\"consumer\":");
    buf_put_json_str(b, consumer, strlen(consumer));
    buf_puts(b, ",\"consumer_sequence\":");
    buf_put_i64(b, (int64_t)consumer_seq);
    buf_puts(b, ",\"message_id\":");
    buf_put_json_str(b, msg_id, strlen(msg_id));
    buf_puts(b, ",\"message_subject\":");
    buf_put_json_str(b, subject, strlen(subject));
    buf_puts(b, ",\"processed_at\":\"");
    buf_puts(b, processed_at);
    buf_puts(b, "\"}");
}

/* last_metadata of one message, into the batch arena (no malloc at steady state: c->metabuf is reused). */
static void build_meta(consumer_t *c, slot_t *s, const char *processed_at)
{
    buf_reset(&c->metabuf);
    consumer_build_meta(&c->metabuf, s->md && s->md->Stream ? s->md->Stream : c->lc->stream,
                        s->md ? s->md->Sequence.Stream : 0,
                        s->md && s->md->Consumer ? s->md->Consumer : c->in.dur.durable,
                        s->md ? s->md->Sequence.Consumer : 0, s->msg_id, s->subject, processed_at);
    s->meta = c->metabuf.oom ? NULL : arena_strndup(c->pctx.arena, c->metabuf.data, c->metabuf.len);
    if (!s->meta)
        s->meta = "{}";
    s->meta_len = (uint32_t)strlen(s->meta);
}

static bool grow_items(consumer_t *c, size_t need)
{
    store_item_t *it = buf_array_grow(c->items, &c->items_cap, need, sizeof *it, 256);
    if (!it)
        return false;
    c->items = it;
    return true;
}

static void prepare(consumer_t *c, slot_t *s, const char *processed_at, size_t *nitems)
{
    s->subject = natsMsg_GetSubject(s->msg);
    s->data = natsMsg_GetData(s->msg);
    s->len = natsMsg_GetDataLength(s->msg);
    if (natsMsg_GetMetaData(&s->md, s->msg) != NATS_OK)
        s->md = NULL;
    const char *hid = NULL;
    if (natsMsgHeader_Get(s->msg, "Nats-Msg-Id", &hid) == NATS_OK && hid && *hid)
        snprintf(s->msg_id, sizeof s->msg_id, "%s", hid);
    else
        snprintf(s->msg_id, sizeof s->msg_id, "%s:%llu", s->md && s->md->Stream ? s->md->Stream : c->lc->stream,
                 (unsigned long long)(s->md ? s->md->Sequence.Stream : 0));
    build_meta(c, s, processed_at);
    metrics_event_received(c->et, c->lane);

    double t0 = clock_mono_s();
    router_route(&c->pctx, s->subject, c->et, s->data, (size_t)(s->len > 0 ? s->len : 0), -1, &s->ev);
    metrics_routing_duration(c->et, c->lane, clock_mono_s() - t0);

    s->first_item = (uint32_t)*nitems;
    s->n_items = 0;
    s->out = OUT_ACK;
    s->cls = ERR_NONE;
    s->err = NULL;
    if (s->ev.err != ERR_NONE) {
        s->out = OUT_DLQ;
        s->cls = s->ev.err;
        s->retryable = false;
        s->err = s->ev.errmsg ? s->ev.errmsg : "invalid event";
        return;
    }
    str_t agent = payload_agent_id(&s->ev);
    if (agent.p) {
        str_t jid = payload_jid(&s->ev);
        metrics_event_with_agent(c->et, agent.p, agent.len, jid.p, jid.p ? jid.len : 0);
    }
    if (!grow_items(c, *nitems + router_item_count(&s->ev))) {
        s->out = OUT_RETRY;
        s->cls = ERR_UNKNOWN;
        s->retryable = true;
        s->err = "out of memory";
        return;
    }
    s->n_items = (uint32_t)router_items(&s->ev, s->meta, s->meta_len, &c->items[*nitems], NULL, NULL);
    *nitems += s->n_items;
}

/* ---- deciding --------------------------------------------------------------------------------------------- */

static int deliveries(const slot_t *s)
{
    return s->md ? (int)s->md->NumDelivered : 1;
}

/* A failed write of this message: retry later or, at the last delivery / when permanent, DLQ. */
static void fail_slot(consumer_t *c, slot_t *s, const db_error_t *err)
{
    s->cls = err->cls;
    s->retryable = err->retryable;
    s->err = arena_printf(c->pctx.arena, "%s", err->message);
    if (!s->err)
        s->err = "database error";
    s->out = (err->retryable && deliveries(s) < c->lc->max_deliver) ? OUT_RETRY : OUT_DLQ;
}

static const char *not_found_text(consumer_t *c, const event_t *ev)
{
    switch (ev->type) {
    case ET_CHATS_UPDATE:
        return arena_printf(c->pctx.arena, "chat '%.*s' not found", (int)ev->u.chat_update.chat_id.len,
                            ev->u.chat_update.chat_id.p);
    case ET_MESSAGES_UPDATE:
        return arena_printf(c->pctx.arena, "message '%.*s' not found", (int)ev->u.msg_update.message_id.len,
                            ev->u.msg_update.message_id.p);
    case ET_CONTACTS_UPDATE:
        return arena_printf(c->pctx.arena, "contact agent_id '%.*s' phone_number '%.*s' not found",
                            (int)ev->u.contact.agent_id.len, ev->u.contact.agent_id.p,
                            (int)ev->u.contact.phone_number.len, ev->u.contact.phone_number.p);
    default: return "row not found";
    }
}

static void committed_slot(consumer_t *c, slot_t *s)
{
    for (uint32_t k = 0; k < s->n_items; k++) {
        store_item_t *it = &c->items[s->first_item + k];
        if (it->result == ERR_NOT_FOUND) {
            s->out = OUT_DLQ;
            s->cls = ERR_NOT_FOUND;
            s->retryable = true;
            s->err = not_found_text(c, it->ev);
            if (!s->err)
                s->err = "row not found";
        }
        if (it->onb != ONB_COUNT) {
            const message_upsert_t *m = &it->ev->u.msg;
            if (m->flow.len == 2 && memcmp(m->flow.p, "IN", 2) == 0) {
                metrics_onboarding_submitted();
                metrics_onboarding_processed(it->onb);
            }
        }
    }
}

/* The store items of the slots of [from, to) that have rows: [*first, *last). False when there are none. */
static bool items_of(const consumer_t *c, size_t from, size_t to, uint32_t *first, uint32_t *last)
{
    *first = *last = c->slots[from].first_item;
    for (size_t i = from; i < to; i++)
        if (c->slots[i].out == OUT_ACK && c->slots[i].n_items > 0)
            *last = c->slots[i].first_item + c->slots[i].n_items;
    return *last > *first;
}

/* Onboarding's share of a commit: its duration counts when the items held onboarding work. */
static void onboarding_timed(const consumer_t *c, uint32_t first, uint32_t last, double seconds)
{
    for (uint32_t k = first; k < last; k++)
        if (c->items[k].onb != ONB_COUNT) {
            metrics_onboarding_duration(seconds);
            return;
        }
}

/* A deadlock or serialization failure: says nothing about the events, the same work may simply run again. */
static bool is_conflict(const db_error_t *err)
{
    return strcmp(err->sqlstate, "40P01") == 0 || strcmp(err->sqlstate, "40001") == 0;
}

/* Commits the items of slots [from, to) in one transaction; on an outage waits for the database and tries again.
 * Returns 0 committed, 1 failed (err filled), -1 stopping with the database down (leave messages unacked). */
static int commit_range(consumer_t *c, size_t from, size_t to, size_t held, db_error_t *err)
{
    uint32_t first, last;
    if (!items_of(c, from, to, &first, &last))
        return 0;
    int conflicts = 0;
    for (;;) {
        if (!ensure_db(c, held))
            return -1;
        hold_t h = {c, held};
        db_keepalive_t ka = keepalive_of(&h);
        double t0 = clock_mono_s();
        int rc = store_commit(*c->db, &c->items[first], last - first, &c->scratch, &ka, err);
        onboarding_timed(c, first, last, clock_mono_s() - t0);
        if (rc == 0)
            return 0;
        /* A deadlock or serialization failure with another lane or replica says nothing about the events: run the
         * same batch again (after a short, jittered pause) instead of isolating it event by event. */
        if (is_conflict(err) && conflicts < 3) {
            conflicts++;
            log_info("consumer", "transaction conflict; retrying the batch", LF_S("durable", c->in.dur.durable),
                     LF_S("sqlstate", err->sqlstate), LF_I("attempt", conflicts));
            clock_sleep_ms(clock_backoff_ms(30, 30, 1, true)); /* 24-36 ms */
            continue;
        }
        if (!err->outage)
            return 1;
        log_warn("consumer", "database outage during a batch; will retry it", LF_S("durable", c->in.dur.durable),
                 LF_S("error", err->message));
        db_close(*c->db);
        *c->db = NULL;
    }
}

/* ---- acting --------------------------------------------------------------------------------------------- */

/* Sends one DLQ record of slot s through the batch publisher (its PubAck is collected with the batch's). */
static void send_dlq(consumer_t *c, slot_t *s, const char *payload, size_t len, bool is_json, const char *error,
                     error_class_t cls, bool retryable, int item)
{
    if (s->dlq_unsent)
        return;
    dlq_record_t r = {
        .source_subject = s->subject,
        .payload = payload,
        .payload_len = len,
        .payload_is_json = is_json,
        .error = error,
        .cls = cls,
        .retryable = retryable,
        .retry_count = deliveries(s),
        .max_retry = c->lc->max_deliver,
        .source_stream = s->md && s->md->Stream ? s->md->Stream : c->lc->stream,
        .source_sequence = s->md ? s->md->Sequence.Stream : 0,
        .source_message_id = s->msg_id,
        .item_index = item,
        .source_metadata = s->meta,
        .source_metadata_len = s->meta_len,
    };
    int k = dlq_batch_add(c->dlqb, &r, s->dlq_err, sizeof s->dlq_err);
    if (k < 0) {
        s->dlq_unsent = true;
        return;
    }
    if (s->dlq_n++ == 0)
        s->dlq_first = k;
}

/* Which DLQ records a slot needs: the message itself, or the invalid items of a history batch whose valid rest is
 * committed already. */
static void queue_dlq(consumer_t *c, slot_t *s)
{
    s->dlq_first = -1;
    s->dlq_n = 0;
    s->dlq_unsent = false;
    if (s->out == OUT_DLQ) {
        /* Embed the original as JSON only when it is JSON: the parse knows, unless a subject or size error was
         * raised before it. */
        bool is_json =
            s->ev.json == TEXT_JSON || (s->ev.json == TEXT_UNCHECKED && s->data && s->len > 0 &&
                                        json_parse(&c->pctx.doc, s->data, (size_t)s->len, NULL, 0) == JSON_OK);
        send_dlq(c, s, s->data ? s->data : "", (size_t)(s->len > 0 ? s->len : 0), is_json, s->err, s->cls, s->retryable,
                 -1);
    } else if (c->lane == LANE_HISTORICAL && s->ev.err == ERR_NONE && s->out == OUT_ACK) {
        for (uint32_t i = 0; i < s->ev.n_items && !s->dlq_unsent; i++) {
            const event_t *it = &s->ev.items[i];
            if (it->err != ERR_NONE)
                send_dlq(c, s, it->raw.p, it->raw.len, true, it->errmsg ? it->errmsg : "invalid item", it->err, false,
                         (int)i);
        }
    }
}

/* After the batch's PubAcks: whether every DLQ record of s is stored (else why, in s->dlq_err). */
static bool dlq_stored(consumer_t *c, slot_t *s)
{
    if (s->dlq_unsent)
        return false;
    for (int k = s->dlq_first; k >= 0 && k < s->dlq_first + s->dlq_n; k++)
        if (!dlq_batch_ok(c->dlqb, k, s->dlq_err, sizeof s->dlq_err))
            return false;
    return true;
}

static void dlq_failed_log(const slot_t *s)
{
    log_warn("consumer", "DLQ publish failed; the event will be redelivered", LF_S("subject", s->subject),
             LF_S("message_id", s->msg_id), LF_S("error", s->dlq_err));
}

static void dlq_sent_log(consumer_t *c, const slot_t *s, const char *error, error_class_t cls, int item)
{
    metrics_dlq_published(c->et, c->lane, cls);
    log_info("consumer", "event sent to DLQ", LF_S("subject", s->subject), LF_S("message_id", s->msg_id),
             LF_S("error_class", error_class_name(cls)), LF_S("error", error), LF_I("item_index", item));
}

static void nak(consumer_t *c, slot_t *s)
{
    int64_t d = clock_backoff_ms(c->lc->nak_base_delay_ms, c->lc->nak_max_delay_ms, deliveries(s), true);
    pull_nak(c->nats->nc, s->msg, d);
}

static void finish(consumer_t *c, slot_t *s)
{
    if (s->out == OUT_LEAVE)
        goto cleanup;
    /* History items that failed validation went to the DLQ; the valid rest is committed already. */
    int bad_items = 0;
    if (c->lane == LANE_HISTORICAL && s->ev.err == ERR_NONE && s->out == OUT_ACK) {
        for (uint32_t i = 0; i < s->ev.n_items; i++)
            bad_items += s->ev.items[i].err != ERR_NONE;
        if (bad_items && !dlq_stored(c, s)) {
            dlq_failed_log(s);
            metrics_event_action(c->et, c->lane, ACT_NAK_DLQ_PUBLISH_FAIL, ERR_VALIDATION);
            metrics_event_failed(c->et, c->lane);
            nak(c, s);
            goto cleanup;
        }
        for (uint32_t i = 0; bad_items && i < s->ev.n_items; i++) {
            const event_t *it = &s->ev.items[i];
            if (it->err != ERR_NONE)
                dlq_sent_log(c, s, it->errmsg ? it->errmsg : "invalid item", it->err, (int)i);
        }
    }
    switch (s->out) {
    case OUT_ACK:
        pull_ack(c->nats->nc, s->msg);
        metrics_event_processed(c->et, c->lane);
        metrics_event_action(c->et, c->lane, bad_items ? ACT_DLQ_PUBLISHED_ACK_SUCCESS : ACT_ACK_SUCCESS,
                             bad_items ? ERR_VALIDATION : ERR_NONE);
        break;
    case OUT_RETRY:
        nak(c, s);
        metrics_event_failed(c->et, c->lane);
        metrics_event_action(c->et, c->lane, ACT_NACK_RETRYABLE, s->cls);
        log_debug("consumer", "event NAKed for retry", LF_S("message_id", s->msg_id), LF_S("error", s->err));
        break;
    case OUT_DLQ:
        metrics_event_failed(c->et, c->lane);
        if (!dlq_stored(c, s)) {
            dlq_failed_log(s);
            nak(c, s);
            metrics_event_action(c->et, c->lane, ACT_NAK_DLQ_PUBLISH_FAIL, s->cls);
            break;
        }
        dlq_sent_log(c, s, s->err, s->cls, -1);
        pull_ack(c->nats->nc, s->msg);
        metrics_event_action(c->et, c->lane, ACT_DLQ_PUBLISHED_ACK_SUCCESS, s->cls);
        break;
    case OUT_LEAVE: break;
    }
    metrics_processing_duration(c->et, c->lane, clock_mono_s() - s->t_recv);
cleanup:
    jsMsgMetaData_Destroy(s->md);
    natsMsg_Destroy(s->msg);
    s->md = NULL;
    s->msg = NULL;
}

/* Slots of [from, to) that have rows to commit. */
static size_t writing_slots(const consumer_t *c, size_t from, size_t to)
{
    size_t k = 0;
    for (size_t i = from; i < to; i++)
        k += c->slots[i].out == OUT_ACK && c->slots[i].n_items > 0;
    return k;
}

/* Marks the slots of [from, to) that have rows as committed, or as failed with err. */
static void settle_range(consumer_t *c, size_t from, size_t to, const db_error_t *err)
{
    for (size_t i = from; i < to; i++) {
        slot_t *s = &c->slots[i];
        if (s->out != OUT_ACK || s->n_items == 0)
            continue;
        if (!err) {
            s->committed = true;
            committed_slot(c, s);
        } else {
            fail_slot(c, s, err);
        }
    }
}

/* Commits the items of slots [from, to) in one transaction on the lane's own session, unless `failed` says that this
 * very range failed already (with that error). When it fails for a reason other than an outage, the range is
 * bisected: each half is committed (or bisected again) in stream order, down to the single event that fails, which
 * alone takes the error. One bad event among n costs about 2 log2 n transactions instead of the n + 1 of applying
 * them one by one; its neighbours are written again at most log2 n times and never redelivered. *tx counts the
 * transactions tried. Returns -1 when stopping with the database down, else 0. */
static int commit_bisect(consumer_t *c, size_t from, size_t to, size_t held, const db_error_t *failed, int *tx)
{
    db_error_t err;
    size_t writers = writing_slots(c, from, to);
    if (writers == 0)
        return 0;
    int rc = 1;
    if (failed) {
        err = *failed;
    } else {
        (*tx)++;
        rc = commit_range(c, from, to, held, &err);
    }
    if (rc == -1)
        return -1;
    if (rc == 0 || writers == 1) {
        settle_range(c, from, to, rc == 0 ? NULL : &err);
        return 0;
    }
    size_t mid = from + (to - from) / 2;
    if (commit_bisect(c, from, mid, held, NULL, tx) == -1)
        return -1;
    return commit_bisect(c, mid, to, held, NULL, tx);
}

/* Commits slots [from, to): first in a group with what other lanes have ready (writer_commit); when the group fails,
 * on a session of the lane's own, where an outage is waited out and a data error is isolated by bisection. */
static int commit_chunk(consumer_t *c, size_t from, size_t to, size_t held)
{
    uint32_t first, last;
    if (!items_of(c, from, to, &first, &last))
        return 0;
    hold_t h = {c, held};
    db_keepalive_t ka = keepalive_of(&h);
    db_error_t err;
    bool alone = false;
    double dt = 0;
    int rc = writer_commit(c->writer, &c->items[first], last - first, &c->scratch, &ka, &err, &alone, &dt);
    if (dt > 0) /* 0: the group failed before it reached PostgreSQL */
        onboarding_timed(c, first, last, dt);
    if (rc == 0) {
        settle_range(c, from, to, NULL);
        return 0;
    }
    /* Alone and refused for its data: this range is known to fail, bisect at once. Otherwise (another lane's rows, an
     * outage, a conflict) try it again on its own first. */
    bool known = alone && !err.outage && !is_conflict(&err);
    size_t writers = writing_slots(c, from, to);
    int tx = 0;
    c->db = writer_session(c->writer, &ka);
    rc = commit_bisect(c, from, to, held, known ? &err : NULL, &tx);
    writer_session_release(c->writer, c->db);
    c->db = NULL;
    if (tx > 1 || (known && writers > 1)) /* the failed events are each logged with their error when finished */
        log_warn("consumer", "batch failed; bisected it to isolate the failing events",
                 LF_S("durable", c->in.dur.durable), LF_I("events", (long long)writers),
                 LF_I("failed", (long long)(writers - writing_slots(c, from, to))), LF_I("transactions", tx + 1));
    return rc;
}

/* An update published after the upsert that creates its row must not find the row missing just because the upsert
 * lane is behind (in a backlog the update lanes drain faster and would send most updates to the DLQ as not_found,
 * each retried by the DLQ worker later). So before committing, an update batch whose newest stream sequence is
 * max_seq waits until the upsert lane has finished a message at or past max_seq, or has found nothing left to fetch
 * since this batch arrived (t_recv_ms) and holds nothing: then every upsert published before the batch is
 * committed. The wait is bounded (another replica may own those upserts, or that lane may be stalled); after it,
 * what is still missing takes the usual not_found path. Subjects share one stream, so sequences order them. */
static void wait_for_upserts(consumer_t *c, uint64_t max_seq, int64_t t_recv_ms)
{
    consumer_t *u = c->upsert;
    if (!u || !max_seq)
        return;
    int64_t deadline = clock_mono_ms() + UPSERT_WAIT_MS;
    for (;;) {
        if (atomic_load(&u->done_seq) >= max_seq)
            return;
        if (atomic_load(&u->idle_since_ms) > t_recv_ms) {
            pthread_mutex_lock(&u->ho_mu);
            bool quiet = !u->ho_full && !u->lane_busy;
            pthread_mutex_unlock(&u->ho_mu);
            if (quiet && atomic_load(&u->idle_since_ms) > t_recv_ms)
                return;
        }
        if (atomic_load(c->stop) || clock_mono_ms() >= deadline)
            return;
        clock_sleep_ms(2);
    }
}

void consumer_link_updates(consumer_t **lanes, int n)
{
    static const event_type_t pairs[][2] = {{ET_CHATS_UPDATE, ET_CHATS_UPSERT},
                                            {ET_MESSAGES_UPDATE, ET_MESSAGES_UPSERT},
                                            {ET_CONTACTS_UPDATE, ET_CONTACTS_UPSERT}};
    for (int i = 0; i < n; i++)
        for (size_t p = 0; p < sizeof pairs / sizeof pairs[0]; p++)
            if (lanes[i]->et == pairs[p][0])
                for (int j = 0; j < n; j++)
                    if (lanes[j]->et == pairs[p][1])
                        lanes[i]->upsert = lanes[j];
}

static void process_batch(consumer_t *c, natsMsg **msgs, size_t n, double fetch_s)
{
    char processed_at[40];
    size_t nitems = 0;
    double t = clock_mono_s();
    clock_rfc3339_now(processed_at, sizeof processed_at);
    arena_reset(c->pctx.arena);
    for (size_t i = 0; i < n; i++) {
        slot_t *s = &c->slots[i];
        memset(s, 0, sizeof *s);
        s->msg = msgs[i];
        s->t_recv = t;
        prepare(c, s, processed_at, &nitems);
    }
    metrics_batch_size(c->lane, (int)n);
    if (n && c->slots[n - 1].md)
        metrics_consumer_pending_set(c->et, c->slots[n - 1].md->NumPending);

    uint64_t max_seq = 0;
    for (size_t i = 0; i < n; i++)
        if (c->slots[i].md && c->slots[i].md->Sequence.Stream > max_seq)
            max_seq = c->slots[i].md->Sequence.Stream;
    if (c->upsert && nitems > 0)
        wait_for_upserts(c, max_seq, (int64_t)(t * 1000));
    double t_prepared = clock_mono_s();
    /* Commit in chunks of at most MAX_TX_ITEMS rows: a fetched history batch can hold thousands of items, and one
     * huge transaction would hold its row locks long enough to stall every other lane writing the same rows. */
    int rc = 0;
    for (size_t from = 0; from < n && rc != -1 && nitems > 0;) {
        size_t to = from, rows = 0;
        while (to < n && (to == from || rows + c->slots[to].n_items <= MAX_TX_ITEMS))
            rows += c->slots[to++].n_items;
        rc = commit_chunk(c, from, to, n);
        from = to;
    }
    if (rc == -1) { /* stopping while the database is down: what was not committed stays unacked */
        for (size_t i = 0; i < n; i++)
            if (c->slots[i].out == OUT_ACK && c->slots[i].n_items > 0 && !c->slots[i].committed)
                c->slots[i].out = OUT_LEAVE;
    }
    double t_committed = clock_mono_s();
    /* DLQ records of the whole batch go out together; their PubAcks are awaited once, before any ack. */
    bool any_dlq = false;
    dlq_batch_begin(c->dlqb);
    for (size_t i = 0; i < n; i++) {
        queue_dlq(c, &c->slots[i]);
        any_dlq |= c->slots[i].dlq_n > 0;
    }
    if (any_dlq)
        dlq_batch_wait(c->dlqb, DLQ_PUBACK_WAIT_MS);
    for (size_t i = 0; i < n; i++)
        finish(c, &c->slots[i]);
    if (max_seq > atomic_load(&c->done_seq))
        atomic_store(&c->done_seq, max_seq); /* only this lane writes it */
    /* Where a batch's time goes (for tuning; debug level costs nothing otherwise). */
    log_debug("consumer", "batch", LF_S("durable", c->in.dur.durable), LF_I("n", (long long)n),
              LF_I("items", (long long)nitems), LF_D("fetch_ms", fetch_s * 1000),
              LF_D("prepare_ms", (t_prepared - t) * 1000), LF_D("commit_ms", (t_committed - t_prepared) * 1000),
              LF_D("finish_ms", (clock_mono_s() - t_committed) * 1000));
}

/* ---- the lane thread ---------------------------------------------------------------------------------------- */

/* Waits up to ms for the handoff slot to change. Caller holds ho_mu. */
static void ho_wait(consumer_t *c, int64_t ms)
{
    struct timespec ts = clock_deadline_in_ms(ms);
    pthread_cond_timedwait(&c->ho_cv, &c->ho_mu, &ts);
}

static void list_append(natsMsgList *out, natsMsgList *more);

/* Hands a fetched batch to the lane (ownership moves with it): into the empty slot, or after what waits there. */
static void hand_off(void *ctx, natsMsgList *list, double fetch_s)
{
    consumer_t *c = ctx;
    size_t bytes = 0;
    for (int i = 0; i < list->Count; i++)
        bytes += (size_t)natsMsg_GetDataLength(list->Msgs[i]);
    uint64_t pending = mes_nats_pending_after(list);
    pthread_mutex_lock(&c->ho_mu);
    c->ho_pending = pending;
    c->ho_bytes = (c->ho_full ? c->ho_bytes : 0) + bytes;
    if (c->ho_full) {
        list_append(&c->ho_list, list);
        c->ho_fetch_s += fetch_s;
    } else {
        c->ho_list = *list;
        c->ho_fetch_s = fetch_s;
        c->ho_full = true;
        memset(list, 0, sizeof *list);
    }
    pthread_cond_broadcast(&c->ho_cv);
    pthread_mutex_unlock(&c->ho_mu);
}

/* Appends more's messages to out (both arrays come from nats.c's allocator, which is malloc/free). On out of
 * memory the extra messages are dropped unacked: they come back after the ack wait. */
static void list_append(natsMsgList *out, natsMsgList *more)
{
    natsMsg **all = malloc((size_t)(out->Count + more->Count) * sizeof *all);
    if (!all) {
        natsMsgList_Destroy(more);
        return;
    }
    memcpy(all, out->Msgs, (size_t)out->Count * sizeof *all);
    memcpy(all + out->Count, more->Msgs, (size_t)more->Count * sizeof *all);
    free(out->Msgs);
    free(more->Msgs);
    out->Msgs = all;
    out->Count += more->Count;
    memset(more, 0, sizeof *more);
}

/* Pulls one batch without a latency floor. A plain Fetch of N waits until N messages arrived or the request expired,
 * so a quiet lane would hold its first event up to fetch_wait. Instead: take what is there now (no-wait); if nothing
 * is, wait for ONE message (returns the moment it arrives), then top the batch up with what is there now. */
static natsStatus fetch_batch(void *ctx, pull_t *sub, int batch, natsMsgList *out)
{
    consumer_t *c = ctx;
    int64_t wait_ms = c->lc->fetch_wait_ms;
    natsStatus s = pull_fetch(sub, batch, true, wait_ms, out);
    if (s == NATS_OK && out->Count > 0) {
        atomic_store(&c->idle_since_ms, 0);
        return NATS_OK;
    }
    natsMsgList_Destroy(out);
    if (s != NATS_OK && s != NATS_NOT_FOUND && s != NATS_TIMEOUT)
        return s;
    /* Nothing left for this lane right now: update lanes waiting on it may go on (wait_for_upserts). */
    atomic_store(&c->idle_since_ms, clock_mono_ms());
    s = pull_fetch(sub, 1, false, wait_ms, out);
    if (s != NATS_OK || out->Count == 0)
        return s;
    atomic_store(&c->idle_since_ms, 0);
    natsMsgList more = {0};
    if (batch > 1 && pull_fetch(sub, batch - 1, true, wait_ms, &more) == NATS_OK && more.Count > 0)
        list_append(out, &more);
    natsMsgList_Destroy(&more);
    return NATS_OK;
}

/* Whether the fetcher may add to a slot that is not empty: only with a backlog of at least a fetch behind it (a
 * drain, a burst), and while the slot holds fewer than hold_max messages of fewer than HOLD_BYTES (history batches
 * are large). Without a backlog the slot takes one fetch, as the lane would gain nothing but extra pull requests
 * (each a round trip through nats-server, which shares the cores) from topping it up. Caller holds ho_mu. */
static bool slot_takes_more(const consumer_t *c)
{
    return c->ho_list.Count < c->hold_max && c->ho_bytes < HOLD_BYTES && c->ho_pending >= (uint64_t)c->lc->batch_size;
}

/* The fetcher's room: up to a batch whenever the handoff slot is empty or takes more (slot_takes_more). */
static int slot_room(void *ctx)
{
    consumer_t *c = ctx;
    pthread_mutex_lock(&c->ho_mu);
    while (c->ho_full && !slot_takes_more(c) && !atomic_load(c->stop))
        ho_wait(c, 100);
    int room = c->hold_max - (c->ho_full ? c->ho_list.Count : 0);
    pthread_mutex_unlock(&c->ho_mu);
    return room < c->lc->batch_size ? room : c->lc->batch_size;
}

/* The fetcher: pulls whenever the handoff slot has room (slot_room). Owns the subscription. */
static void *fetch_run(void *arg)
{
    consumer_t *c = arg;
    log_thread_name("fetch", event_type_short(c->et));
    const intake_ops_t ops = {.who = "consumer", .room = slot_room, .fetch = fetch_batch, .deliver = hand_off};
    intake_run(&c->in, c->nats, c->stop, &ops, c);
    pthread_mutex_lock(&c->ho_mu);
    c->ho_fetcher_done = true;
    pthread_cond_broadcast(&c->ho_cv);
    pthread_mutex_unlock(&c->ho_mu);
    return NULL;
}

/* The lane: takes batches from the handoff in fetch order, so same-key events still commit in stream order. On
 * stop it finishes the batch it has and the one waiting in the slot (commit and ack), then returns. */
static void *run(void *arg)
{
    consumer_t *c = arg;
    log_thread_name("lane", event_type_short(c->et));
    for (;;) {
        pthread_mutex_lock(&c->ho_mu);
        while (!c->ho_full && !c->ho_fetcher_done)
            ho_wait(c, 100);
        if (!c->ho_full) {
            pthread_mutex_unlock(&c->ho_mu);
            break;
        }
        natsMsgList list = c->ho_list;
        double fetch_s = c->ho_fetch_s;
        memset(&c->ho_list, 0, sizeof c->ho_list);
        c->ho_full = false;
        c->lane_busy = true;
        pthread_cond_broadcast(&c->ho_cv);
        pthread_mutex_unlock(&c->ho_mu);

        process_batch(c, list.Msgs, (size_t)list.Count, fetch_s);
        pthread_mutex_lock(&c->ho_mu);
        c->lane_busy = false;
        pthread_cond_broadcast(&c->ho_cv);
        pthread_mutex_unlock(&c->ho_mu);
        for (int i = 0; i < list.Count; i++)
            list.Msgs[i] = NULL; /* each message was destroyed by its owner in finish() */
        natsMsgList_Destroy(&list);
    }
    log_info("consumer", "lane stopped", LF_S("durable", c->in.dur.durable));
    return NULL;
}

int consumer_start(consumer_t *c)
{
    if (pthread_create(&c->thread, NULL, run, c) != 0)
        return -1;
    c->started = true;
    if (pthread_create(&c->fetch_thread, NULL, fetch_run, c) != 0) {
        pthread_mutex_lock(&c->ho_mu); /* let the lane thread end */
        c->ho_fetcher_done = true;
        pthread_cond_broadcast(&c->ho_cv);
        pthread_mutex_unlock(&c->ho_mu);
        return -1;
    }
    c->fetch_started = true;
    return 0;
}

bool consumer_join(consumer_t *c, int64_t deadline_ms)
{
    struct timespec ts = clock_timespec_of_ms(deadline_ms);
    if (c->fetch_started) {
        if (pthread_timedjoin_np(c->fetch_thread, NULL, &ts) != 0)
            return false;
        c->fetch_started = false;
    }
    if (c->started) {
        if (pthread_timedjoin_np(c->thread, NULL, &ts) != 0)
            return false;
        c->started = false;
    }
    return true;
}
