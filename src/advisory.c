/* advisory.c - the safety net: max-deliveries advisories of this tenant's durables become exhausted_events rows. */
#include "advisory.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "clock.h"
#include "consumer.h"
#include "dlq.h"
#include "dlq_worker.h"
#include "intake.h"
#include "json.h"
#include "log.h"
#include "metrics.h"
#include "text.h"

#define ADV_BATCH 16
#define ADV_FETCH_WAIT_MS 500
#define ADV_TYPE "io.nats.jetstream.advisory.v1.max_deliver"

/* Threads: main (create, subscribe, start, join, destroy) and the advisory reader; the HTTP threads read
 * in.subscribed (advisory_subscribed). */
struct advisory {
    /* Set at create, read-only after. */
    const config_t *cfg;
    mes_nats_t *nats;
    const atomic_bool *stop;
    bool (*db_up)(void *ctx); /* called on the reader */
    void *db_up_ctx;
    intake_t in; /* mes_advisory_worker_<co> on mes_advisories_<co>: main's, then the thread's */
    /* Made by main at create, then the reader's only. */
    dlq_exhauster_t *exh; /* the DLQ workers' exhaustion; borrows a session of their pool for each advisory */
    json_doc_t doc;
    buf_t rec, meta;
    /* Main's only. */
    pthread_t thread;
    bool started;
};

/* What a max-deliveries advisory says. */
typedef struct {
    char stream[128];
    char consumer[256];
    char ts[64];
    int64_t seq;
    int64_t deliveries;
} adv_t;

/* One of this tenant's durables. */
typedef struct {
    mes_durable_t d;
    bool dlq;
    metrics_stream_t ms;
} target_t;

typedef enum { OUT_DONE, OUT_RETRY, OUT_LEAVE } outcome_t;

static bool find_target(const config_t *cfg, const char *stream, const char *consumer, target_t *t)
{
    for (int i = 0; i <= ET_BASE_COUNT; i++) {
        bool dlq = i == ET_BASE_COUNT;
        mes_nats_durable(&t->d, cfg, dlq ? MES_DURABLE_DLQ : MES_DURABLE_LANE, (event_type_t)i);
        if (strcmp(t->d.stream, stream) == 0 && strcmp(t->d.durable, consumer) == 0) {
            t->dlq = dlq;
            t->ms = dlq                                                   ? MSTREAM_DLQ
                    : event_type_lane((event_type_t)i) == LANE_HISTORICAL ? MSTREAM_HISTORICAL
                                                                          : MSTREAM_REALTIME;
            return true;
        }
    }
    return false;
}

static void get_str(const json_doc_t *d, const char *src, const char *key, char *out, size_t cap)
{
    int t = json_obj_get(d, src, 0, key);
    out[0] = '\0';
    if (t < 0 || d->toks[t].type != JSON_STRING || json_str_decoded_len(src, &d->toks[t]) + 1 > cap)
        return;
    out[json_str_decode(src, &d->toks[t], out)] = '\0';
}

static int64_t get_int(const json_doc_t *d, const char *src, const char *key)
{
    int t = json_obj_get(d, src, 0, key);
    int64_t v;
    if (t < 0 || d->toks[t].type != JSON_NUMBER || !json_num_to_i64(src, &d->toks[t], &v))
        return -1;
    return v;
}

static bool parse_advisory(advisory_t *a, const char *data, size_t len, adv_t *v)
{
    char type[64];
    memset(v, 0, sizeof *v);
    if (json_parse(&a->doc, data, len, NULL, 0) != JSON_OK || a->doc.toks[0].type != JSON_OBJECT)
        return false;
    get_str(&a->doc, data, "type", type, sizeof type);
    get_str(&a->doc, data, "stream", v->stream, sizeof v->stream);
    get_str(&a->doc, data, "consumer", v->consumer, sizeof v->consumer);
    get_str(&a->doc, data, "timestamp", v->ts, sizeof v->ts);
    v->seq = get_int(&a->doc, data, "stream_seq");
    v->deliveries = get_int(&a->doc, data, "deliveries");
    return strcmp(type, ADV_TYPE) == 0 && v->stream[0] && v->consumer[0] && v->seq > 0 && v->deliveries >= 0;
}

/* The Nats-Msg-Id of m when it can key a row (UTF-8 text of at most 200 bytes), else NULL. */
static const char *usable_msg_id(natsMsg *m)
{
    const char *id = NULL;
    if (natsMsgHeader_Get(m, "Nats-Msg-Id", &id) != NATS_OK || !id || !*id || strlen(id) > 200 ||
        !text_utf8_valid(id, strlen(id)))
        return NULL;
    return id;
}

/* Appends ,"jetstream_advisory":<the advisory> before the closing brace of the object in a->rec. */
static void add_advisory(advisory_t *a, const char *adv, size_t len)
{
    if (a->rec.len && a->rec.data[a->rec.len - 1] == '}')
        a->rec.len--;
    buf_puts(&a->rec, ",\"jetstream_advisory\":");
    buf_append(&a->rec, adv, len);
    buf_putc(&a->rec, '}');
}

/* The record of an event whose message is still in its stream: a DLQ record as a lane would have published it at the
 * last delivery (so `exhausted replay` and the DLQ worker's row format apply unchanged), plus the advisory. */
static void build_record(advisory_t *a, const adv_t *v, const target_t *t, natsMsg *orig, const char *gave,
                         const char *adv, size_t adv_len, bool *is_json)
{
    const char *body = natsMsg_GetData(orig);
    size_t blen = (size_t)natsMsg_GetDataLength(orig);
    char seqid[300], now[40];
    const char *src_id = usable_msg_id(orig);
    snprintf(seqid, sizeof seqid, "%s:%lld", v->stream, (long long)v->seq);
    clock_rfc3339_now(now, sizeof now);
    buf_reset(&a->meta);
    consumer_build_meta(&a->meta, v->stream, (uint64_t)v->seq, v->consumer, 0, src_id ? src_id : seqid, t->d.filter,
                        now);
    *is_json = body && blen > 0 && json_parse(&a->doc, body, blen, NULL, 0) == JSON_OK;
    dlq_record_t r = {
        .source_subject = t->d.filter,
        .payload = body ? body : "",
        .payload_len = body ? blen : 0,
        .payload_is_json = *is_json,
        .error = gave,
        .cls = ERR_UNKNOWN,
        .retryable = true, /* never judged: JetStream stopped retrying, nothing said retrying cannot help */
        .retry_count = (int)v->deliveries,
        .max_retry = t->d.max_deliver,
        .source_stream = v->stream,
        .source_sequence = (uint64_t)v->seq,
        .source_message_id = src_id ? src_id : seqid,
        .item_index = -1,
        .source_metadata = a->meta.oom ? NULL : a->meta.data,
        .source_metadata_len = a->meta.oom ? 0 : a->meta.len,
        .ts = clock_rfc3339_valid(v->ts, false) ? v->ts : NULL,
    };
    buf_reset(&a->rec);
    dlq_record_build(&a->rec, a->cfg->company_id, &r);
    add_advisory(a, adv, adv_len);
}

/* The record of an event whose message is gone: what the advisory says, in the DLQ record's field names. */
static void describe(advisory_t *a, const adv_t *v, const target_t *t, const char *error, const char *adv,
                     size_t adv_len)
{
    buf_t *b = &a->rec;
    buf_reset(b);
    buf_puts(b, "{\"source_subject\":");
    buf_put_json_str(b, t->d.filter, strlen(t->d.filter));
    buf_puts(b, ",\"company\":");
    buf_put_json_str(b, a->cfg->company_id, strlen(a->cfg->company_id));
    buf_puts(b, ",\"error\":");
    buf_put_json_str(b, error, strlen(error));
    buf_printf(b, ",\"error_type\":\"retryable\",\"error_class\":\"unknown\",\"retry_count\":%lld,\"max_retry\":%d",
               (long long)v->deliveries, t->d.max_deliver);
    buf_puts(b, ",\"source_stream\":");
    buf_put_json_str(b, v->stream, strlen(v->stream));
    buf_printf(b, ",\"source_sequence\":%lld,\"source_message_id\":\"", (long long)v->seq);
    buf_put_utf8(b, v->stream, strlen(v->stream), 200);
    buf_printf(b, ":%lld\",\"original_payload_missing\":true", (long long)v->seq);
    if (clock_rfc3339_valid(v->ts, false))
        buf_printf(b, ",\"ts\":\"%s\"", v->ts);
    buf_putc(b, '}');
    add_advisory(a, adv, adv_len);
}

static outcome_t handle(advisory_t *a, natsMsg *msg)
{
    const config_t *cfg = a->cfg;
    const char *data = natsMsg_GetData(msg);
    size_t len = (size_t)natsMsg_GetDataLength(msg);
    adv_t v;
    target_t t;
    if (!data || !parse_advisory(a, data, len, &v)) {
        log_warn("advisory", "not a max-deliveries advisory; skipped", LF_S("subject", natsMsg_GetSubject(msg)));
        return OUT_DONE;
    }
    if (!find_target(cfg, v.stream, v.consumer, &t)) {
        log_warn("advisory", "advisory about a consumer that is not this tenant's; skipped", LF_S("stream", v.stream),
                 LF_S("consumer", v.consumer));
        return OUT_DONE;
    }
    char msgid[300], aka[300], gave[400], why[512], error[1024];
    snprintf(msgid, sizeof msgid, "%s:%lld", v.stream, (long long)v.seq);
    snprintf(gave, sizeof gave, "JetStream gave up after %lld deliveries (consumer %s)", (long long)v.deliveries,
             v.consumer);
    natsMsg *orig = NULL;
    mes_source_t src = mes_nats_get_msg(a->nats, v.stream, (uint64_t)v.seq, &orig, why, sizeof why);
    if (src == MES_SRC_FAILED) {
        log_warn("advisory", "cannot read the message an advisory names; will retry", LF_S("error", why));
        return OUT_RETRY;
    }
    if (src == MES_SRC_OK && strcmp(natsMsg_GetSubject(orig), t.d.filter) != 0) { /* the stream was re-created */
        snprintf(why, sizeof why, "stream %s sequence %lld now holds a message of subject %s, not %s", v.stream,
                 (long long)v.seq, natsMsg_GetSubject(orig), t.d.filter);
        natsMsg_Destroy(orig);
        orig = NULL;
    }
    dlq_exhaust_t in = {
        .msg_id = msgid,
        .why = gave,
        .held = msg,
        .origin = "JetStream gave up on an event: stored in exhausted_events",
    };
    if (orig && t.dlq) {
        /* A DLQ record: stored as the DLQ worker's exhaustion stores it, its original inside. The worker keys its row
         * by the record's Nats-Msg-Id: a row there means the record is stored already. */
        in.record = natsMsg_GetData(orig) ? natsMsg_GetData(orig) : "";
        in.len = natsMsg_GetData(orig) ? (size_t)natsMsg_GetDataLength(orig) : 0;
        in.attempts = (int)v.deliveries;
        in.also_known_as = usable_msg_id(orig);
    } else if (orig) {
        bool is_json = false;
        build_record(a, &v, &t, orig, gave, data, len, &is_json);
        in.record = a->rec.data;
        in.len = a->rec.len;
        if (is_json && (size_t)natsMsg_GetDataLength(orig) > DLQ_MAX_EMBED)
            in.original_json = natsMsg_GetData(orig); /* the record holds a prefix; the row gets the whole original */
        /* The key of the DLQ worker's row for this event's DLQ record, when a lane sent one at a last delivery. */
        snprintf(aka, sizeof aka, "dlq:%s:%lld", v.stream, (long long)v.seq);
        in.also_known_as = aka;
    } else {
        snprintf(error, sizeof error, "%s; %s", gave, why);
        describe(a, &v, &t, error, data, len);
        in.record = a->rec.data;
        in.len = a->rec.len;
        in.why = error;
        if (!t.dlq) {
            snprintf(aka, sizeof aka, "dlq:%s:%lld", v.stream, (long long)v.seq);
            in.also_known_as = aka;
        }
    }
    if (a->rec.oom) {
        natsMsg_Destroy(orig);
        return OUT_RETRY;
    }
    bool inserted = false;
    dlq_exh_result_t r = dlq_exhauster_store(a->exh, &in, &inserted);
    natsMsg_Destroy(orig);
    if (r == DLQ_EXH_STOPPING)
        return OUT_LEAVE;
    if (r == DLQ_EXH_NOT_STORED)
        return OUT_RETRY;
    if (inserted)
        metrics_jetstream_exhausted(t.ms);
    return OUT_DONE;
}

static void settle(advisory_t *a, natsMsg *msg, outcome_t out)
{
    natsStatus s = NATS_OK;
    if (out == OUT_LEAVE)
        return; /* unacked: redelivered after the ack wait, here or to another replica */
    if (out == OUT_DONE) {
        s = pull_ack_sync(a->nats->nc, msg, 5000);
    } else {
        jsMsgMetaData *md = NULL;
        int n = 1;
        if (natsMsg_GetMetaData(&md, msg) == NATS_OK && md)
            n = (int)md->NumDelivered;
        jsMsgMetaData_Destroy(md);
        s = pull_nak(a->nats->nc, msg,
                     clock_backoff_ms(a->cfg->realtime.nak_base_delay_ms, a->cfg->realtime.nak_max_delay_ms, n, false));
    }
    if (s != NATS_OK) /* the advisory comes back; its row is keyed, so it is stored once whatever happens */
        log_warn("advisory", "advisory ack/nak failed; it will be redelivered", LF_S("error", natsStatus_GetText(s)));
}

/* Room for a batch unless PostgreSQL is down: an outage pauses intake, as for the DLQ worker. */
static int fetch_room(void *ctx)
{
    advisory_t *a = ctx;
    if (a->db_up && !a->db_up(a->db_up_ctx)) {
        clock_sleep_ms(200);
        return 0;
    }
    return ADV_BATCH;
}

/* Stores and settles each advisory in turn; what is not settled (stopping) stays unacked for redelivery. */
static void handle_all(void *ctx, natsMsgList *list, double fetch_s)
{
    advisory_t *a = ctx;
    (void)fetch_s;
    for (int i = 0; i < list->Count && !atomic_load(a->stop); i++)
        settle(a, list->Msgs[i], handle(a, list->Msgs[i]));
}

static void *run(void *arg)
{
    advisory_t *a = arg;
    log_thread_name("advisories", NULL);
    const intake_ops_t ops = {
        .who = "advisory", .room = fetch_room, .wait_ms = ADV_FETCH_WAIT_MS, .deliver = handle_all};
    intake_run(&a->in, a->nats, a->stop, &ops, a);
    return NULL;
}

advisory_t *advisory_create(const config_t *cfg, mes_nats_t *nats, db_pool_t *pool, const atomic_bool *stop,
                            bool (*db_up)(void *ctx), void *db_up_ctx)
{
    advisory_t *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->cfg = cfg;
    a->nats = nats;
    a->stop = stop;
    a->db_up = db_up;
    a->db_up_ctx = db_up_ctx;
    json_doc_init(&a->doc);
    buf_init(&a->rec);
    buf_init(&a->meta);
    mes_nats_durable(&a->in.dur, cfg, MES_DURABLE_ADVISORY, ET_UNKNOWN);
    if (!(a->exh = dlq_exhauster_create(cfg, nats, pool, stop))) {
        advisory_destroy(a);
        return NULL;
    }
    return a;
}

int advisory_subscribe(advisory_t *a)
{
    if (intake_subscribe(&a->in, a->nats) != 0)
        return -1;
    log_info("advisory", "max-deliveries advisory consumer subscribed", LF_S("stream", a->in.dur.stream),
             LF_S("durable", a->in.dur.durable));
    return 0;
}

int advisory_start(advisory_t *a)
{
    if (pthread_create(&a->thread, NULL, run, a) != 0)
        return -1;
    a->started = true;
    return 0;
}

bool advisory_subscribed(const advisory_t *a)
{
    return a && atomic_load(&((advisory_t *)a)->in.subscribed);
}

bool advisory_join(advisory_t *a, int64_t deadline_ms)
{
    if (!a || !a->started)
        return true;
    struct timespec ts = {(time_t)(deadline_ms / 1000), (long)(deadline_ms % 1000) * 1000000L};
    if (pthread_timedjoin_np(a->thread, NULL, &ts) != 0)
        return false;
    a->started = false;
    return true;
}

void advisory_destroy(advisory_t *a)
{
    if (!a)
        return;
    intake_close(&a->in);
    dlq_exhauster_destroy(a->exh);
    json_doc_free(&a->doc);
    buf_free(&a->rec);
    buf_free(&a->meta);
    free(a);
}
