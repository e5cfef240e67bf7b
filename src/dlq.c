/* dlq.c - DLQ record body (SPEC 5.1) and its de-duplicated, PubAck-confirmed publication. */
#include "dlq.h"

#include <stdio.h>
#include <string.h>

#include "clock.h"

void base64_append(buf_t *b, const unsigned char *in, size_t n)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (!buf_reserve(b, (n + 2) / 3 * 4 + 1))
        return;
    char *o = b->data + b->len;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *o++ = tbl[v >> 18];
        *o++ = tbl[(v >> 12) & 63];
        *o++ = tbl[(v >> 6) & 63];
        *o++ = tbl[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);
        *o++ = tbl[v >> 18];
        *o++ = tbl[(v >> 12) & 63];
        *o++ = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    b->len = (size_t)(o - b->data);
    b->data[b->len] = '\0';
}

static int b64_value(char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    return ch == '+' ? 62 : ch == '/' ? 63 : -1;
}

/* Strict padded standard base64 (RFC 4648), the form dlq.c writes. */
bool base64_decode_append(buf_t *out, const char *s, size_t n)
{
    if (n % 4 != 0 || !buf_reserve(out, n / 4 * 3))
        return false;
    for (size_t i = 0; i < n; i += 4) {
        int v[4], pad = 0;
        for (int k = 0; k < 4; k++) {
            if (s[i + k] == '=' && i + 4 == n && k >= 2) {
                v[k] = 0;
                pad++;
            } else if (pad || (v[k] = b64_value(s[i + k])) < 0) {
                return false;
            }
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        const unsigned char bytes[3] = {(unsigned char)(w >> 16), (unsigned char)(w >> 8), (unsigned char)w};
        buf_append(out, bytes, (size_t)(3 - pad));
    }
    return !out->oom;
}

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
        base64_append(b, (const unsigned char *)r->payload, truncated ? DLQ_MAX_EMBED : r->payload_len);
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
    kstr(b, "ts", ts);
    buf_putc(b, '}');
}

int dlq_publish(jsCtx *js, const config_t *cfg, const dlq_record_t *r, buf_t *scratch, char *err, size_t errlen)
{
    char subject[256], msgid[256];
    natsMsg *m = NULL;
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    natsStatus s;

    buf_reset(scratch);
    dlq_record_build(scratch, cfg->company_id, r);
    if (scratch->oom) {
        snprintf(err, errlen, "out of memory building the DLQ record");
        return -1;
    }
    snprintf(subject, sizeof subject, "%s.%s", cfg->dlq_subject, cfg->company_id);
    dlq_record_msg_id(r, msgid, sizeof msgid);
    s = natsMsg_Create(&m, subject, NULL, scratch->data, (int)scratch->len);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, "Original-Nats-Msg-Id", r->source_message_id);
    if (s == NATS_OK) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MsgId = msgid; /* a crash between this publish and the source ack cannot double the record */
        po.MaxWait = 5000;
        po.ExpectStream = cfg->dlq_stream;
        s = js_PublishMsg(&pa, js, m, &po, &jerr);
    }
    natsMsg_Destroy(m);
    jsPubAck_Destroy(pa);
    if (s != NATS_OK) {
        snprintf(err, errlen, "DLQ publish failed: %s (js error %d)", natsStatus_GetText(s), (int)jerr);
        return -1;
    }
    return 0;
}
