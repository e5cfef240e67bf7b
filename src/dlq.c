/* dlq.c - DLQ record body (SPEC 5.1) and its de-duplicated, PubAck-confirmed publication. */
#include "dlq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "mes_nats.h"
#include "text.h"

static void kstr(buf_t *b, const char *k, const char *v)
{
    buf_printf(b, ",\"%s\":", k);
    buf_put_json_str(b, v ? v : "", v ? strlen(v) : 0);
}

void dlq_record_msg_id(const dlq_record_t *r, char *out, size_t len)
{
    if (r->item_index >= 0)
        snprintf(out, len, "dlq:%s:%llu:%d", r->source_stream, (unsigned long long)r->source_sequence, r->item_index);
    else
        snprintf(out, len, "dlq:%s:%llu", r->source_stream, (unsigned long long)r->source_sequence);
}

void dlq_record_build(buf_t *b, const char *company, const dlq_record_t *r)
{
    char ts[40];
    clock_rfc3339_now(ts, sizeof ts);

    buf_puts(b, "{\"source_subject\":");
    buf_put_json_str(b, r->source_subject, strlen(r->source_subject));
    kstr(b, "company", company);
    bool truncated = r->payload_len > DLQ_MAX_EMBED;
    if (r->payload_is_json && !truncated) {
        buf_puts(b, ",\"original_payload\":");
        buf_append(b, r->payload, r->payload_len);
        buf_puts(b, ",\"original_payload_encoding\":\"json\"");
    } else {
        buf_puts(b, ",\"original_payload\":\"");
        text_base64_append(b, (const unsigned char *)r->payload, truncated ? DLQ_MAX_EMBED : r->payload_len);
        buf_puts(b, "\",\"original_payload_encoding\":\"base64\"");
        if (truncated)
            buf_printf(b, ",\"original_payload_truncated\":true,\"original_payload_size\":%zu", r->payload_len);
    }
    kstr(b, "error", r->error);
    kstr(b, "error_type", r->retryable ? "retryable" : "fatal");
    kstr(b, "error_class", error_class_name(r->cls));
    buf_printf(b, ",\"retry_count\":%d,\"max_retry\":%d", r->retry_count, r->max_retry);
    kstr(b, "source_stream", r->source_stream);
    buf_printf(b, ",\"source_sequence\":%llu", (unsigned long long)r->source_sequence);
    kstr(b, "source_message_id", r->source_message_id);
    if (r->item_index >= 0)
        buf_printf(b, ",\"item_index\":%d", r->item_index);
    if (r->source_metadata && r->source_metadata_len) {
        buf_puts(b, ",\"source_metadata\":");
        buf_append(b, r->source_metadata, r->source_metadata_len);
    }
    kstr(b, "ts", r->ts ? r->ts : ts);
    buf_putc(b, '}');
}

/* ---- batch publishing ----------------------------------------------------------------------------------------- */

enum { REC_PENDING = 0, REC_OK, REC_FAILED };

/* Made by main (consumer_create), then its lane thread's only. nats.c's reader thread only queues the PubAcks on sub
 * (locked inside nats.c); they are read here by the lane, in dlq_batch_wait. */
struct dlq_batch {
    natsConnection *nc;
    const config_t *cfg;
    natsSubscription *sub;
    char inbox[128];
    char subject[256];
    uint64_t gen;      /* batch number, part of every reply subject */
    unsigned char *st; /* REC_* per record of the current batch */
    int n, cap, pending;
    char last_err[200]; /* why the last record failed (one reason is enough for the logs) */
    buf_t scratch;
};

dlq_batch_t *dlq_batch_create(natsConnection *nc, const config_t *cfg)
{
    dlq_batch_t *b = calloc(1, sizeof *b);
    natsInbox *inbox = NULL;
    if (!b)
        return NULL;
    b->nc = nc;
    b->cfg = cfg;
    buf_init(&b->scratch);
    snprintf(b->subject, sizeof b->subject, "%s.%s", cfg->dlq_subject, cfg->company_id);
    char filter[160];
    if (natsInbox_Create(&inbox) != NATS_OK) {
        dlq_batch_destroy(b);
        return NULL;
    }
    snprintf(b->inbox, sizeof b->inbox, "%s", (const char *)inbox);
    natsInbox_Destroy(inbox);
    snprintf(filter, sizeof filter, "%s.>", b->inbox);
    if (natsConnection_SubscribeSync(&b->sub, nc, filter) != NATS_OK) {
        dlq_batch_destroy(b);
        return NULL;
    }
    return b;
}

void dlq_batch_destroy(dlq_batch_t *b)
{
    if (!b)
        return;
    mes_nats_unsubscribe(&b->sub);
    buf_free(&b->scratch);
    free(b->st);
    free(b);
}

void dlq_batch_begin(dlq_batch_t *b)
{
    b->gen++;
    b->n = 0;
    b->pending = 0;
    b->last_err[0] = '\0';
}

static int batch_slot(dlq_batch_t *b)
{
    if (b->n == b->cap) {
        int cap = b->cap ? b->cap * 2 : 64;
        unsigned char *st = realloc(b->st, (size_t)cap);
        if (!st)
            return -1;
        b->st = st;
        b->cap = cap;
    }
    b->st[b->n] = REC_PENDING;
    return b->n++;
}

int dlq_batch_add(dlq_batch_t *b, const dlq_record_t *r, char *err, size_t errlen)
{
    char reply[200], msgid[256];
    natsMsg *m = NULL;
    int k = batch_slot(b);
    if (k < 0) {
        snprintf(err, errlen, "out of memory queueing the DLQ record");
        return -1;
    }
    buf_reset(&b->scratch);
    dlq_record_build(&b->scratch, b->cfg->company_id, r);
    if (b->scratch.oom) {
        b->n--;
        snprintf(err, errlen, "out of memory building the DLQ record");
        return -1;
    }
    snprintf(reply, sizeof reply, "%s.%llu.%d", b->inbox, (unsigned long long)b->gen, k);
    dlq_record_msg_id(r, msgid, sizeof msgid);
    natsStatus s = natsMsg_Create(&m, b->subject, reply, b->scratch.data, (int)b->scratch.len);
    /* The JetStream publish headers: de-duplication (a crash between this publish and the source ack cannot double
     * the record) and the stream that must store it. */
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, "Nats-Msg-Id", msgid);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, "Nats-Expected-Stream", b->cfg->dlq_stream);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, "Original-Nats-Msg-Id", r->source_message_id);
    if (s == NATS_OK)
        s = natsConnection_PublishMsg(b->nc, m);
    natsMsg_Destroy(m);
    if (s != NATS_OK) {
        b->n--;
        snprintf(err, errlen, "DLQ publish failed: %s", natsStatus_GetText(s));
        return -1;
    }
    b->pending++;
    return k;
}

/* A PubAck is {"stream":..,"seq":..[,"duplicate":true]}; a refusal is {"error":{..}}; a status-only reply without
 * data is "no responders" (no stream listens on the subject). */
static void on_reply(dlq_batch_t *b, natsMsg *m)
{
    const char *subj = natsMsg_GetSubject(m);
    size_t il = strlen(b->inbox);
    if (strncmp(subj, b->inbox, il) != 0 || subj[il] != '.')
        return;
    char *end = NULL;
    unsigned long long gen = strtoull(subj + il + 1, &end, 10);
    if (gen != b->gen || !end || *end != '.')
        return; /* a late answer to an earlier batch */
    long k = strtol(end + 1, NULL, 10);
    if (k < 0 || k >= b->n || b->st[k] != REC_PENDING)
        return;
    const char *data = natsMsg_GetData(m);
    int len = natsMsg_GetDataLength(m);
    char text[160];
    snprintf(text, sizeof text, "%.*s", len > 150 ? 150 : len, data ? data : "");
    if (len > 0 && strstr(text, "\"error\"") == NULL && strstr(text, "\"seq\"") != NULL) {
        b->st[k] = REC_OK;
    } else {
        b->st[k] = REC_FAILED;
        snprintf(b->last_err, sizeof b->last_err, "DLQ publish refused: %s", len > 0 ? text : "no responders");
    }
    b->pending--;
}

void dlq_batch_wait(dlq_batch_t *b, int64_t max_wait_ms)
{
    int64_t deadline = clock_mono_ms() + max_wait_ms;
    while (b->pending > 0) {
        int64_t left = deadline - clock_mono_ms();
        if (left <= 0)
            break;
        natsMsg *m = NULL;
        natsStatus s = natsSubscription_NextMsg(&m, b->sub, left);
        if (s == NATS_TIMEOUT)
            break;
        if (s != NATS_OK) {
            /* e.g. a slow-consumer error: keep waiting for the rest until the deadline */
            clock_sleep_ms(1);
            continue;
        }
        on_reply(b, m);
        natsMsg_Destroy(m);
    }
}

bool dlq_batch_ok(const dlq_batch_t *b, int k, char *err, size_t errlen)
{
    if (k >= 0 && k < b->n && b->st[k] == REC_OK)
        return true;
    if (k >= 0 && k < b->n && b->st[k] == REC_PENDING)
        snprintf(err, errlen, "DLQ publish failed: no PubAck in time");
    else
        snprintf(err, errlen, "%s", b->last_err[0] ? b->last_err : "DLQ publish failed");
    return false;
}
