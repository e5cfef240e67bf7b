/* refbound.c - the reference architecture's bound and a minimal batched pipeline (the ceiling), chats.upsert only,
 * against a real nats-server and PostgreSQL on this machine, in the same run as the service's drain benchmarks.
 *
 *   bench-refbound [--count N] [--ref-count M] [--json]
 *
 * Pre-publishes N v1.chats.upsert events with mes-loadgen (as bench-drain does), then drains the same backlog twice
 * through two durable pull consumers into two empty tables of schema refbench (the chats columns):
 *   ref-autocommit  the reference's shape: Fetch up to 256; per message cJSON parse, one prepared single-row
 *                   INSERT ... ON CONFLICT (chat_id) DO UPDATE in autocommit (one transaction per event), ack.
 *                   Only the first M messages (it is slow; the rate is steady long before).
 *   min-batched     the least a batched pipeline must do: Fetch 256; per message cJSON parse (an object with a string
 *                   chat_id) and stream metadata; keep the last event per chat_id; ONE multi-row INSERT ... SELECT
 *                   FROM jsonb_to_recordset($1) ON CONFLICT DO UPDATE over the raw payloads (autocommit); ack all
 *                   after it committed. The next batch is fetched and built while PostgreSQL runs this one.
 * Rates are counted from the first fetched batch to the last ack (flushed). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "buf.h"
#include "common.h"
#include "harness.h"

#define COMPANY "bench"
#define SUBJECT "v1.chats.upsert." COMPANY
#define FETCH 256

#define TABLE_DDL(t)                                                                                                   \
    "CREATE TABLE refbench." t " (id bigserial PRIMARY KEY, chat_id text NOT NULL UNIQUE, jid text, push_name text,"   \
    " is_group boolean, group_name text, unread_count integer, last_message jsonb, conversation_timestamp bigint,"     \
    " not_spam boolean, agent_id text, company_id text, phone_number text, custom_name text, last_metadata jsonb,"     \
    " created_at timestamptz, updated_at timestamptz)"

#define COLS                                                                                                           \
    "chat_id, jid, push_name, is_group, group_name, unread_count, last_message, conversation_timestamp, not_spam,"     \
    " agent_id, company_id, phone_number, last_metadata, created_at, updated_at"

#define SET_LATEST                                                                                                     \
    " ON CONFLICT (chat_id) DO UPDATE SET push_name = EXCLUDED.push_name, group_name = EXCLUDED.group_name,"           \
    " unread_count = EXCLUDED.unread_count, last_message = EXCLUDED.last_message,"                                     \
    " conversation_timestamp = EXCLUDED.conversation_timestamp, not_spam = EXCLUDED.not_spam,"                         \
    " last_metadata = EXCLUDED.last_metadata, updated_at = now()"

static const char SQL_ONE[] = "INSERT INTO refbench.chats_a (" COLS ") VALUES ($1, $2, $3, $4::boolean, $5,"
                              " $6::integer, $7::jsonb, $8::bigint, $9::boolean, $10, $11, $12, $13::jsonb, now(),"
                              " now())" SET_LATEST;

static const char SQL_MANY[] =
    "INSERT INTO refbench.chats_b (" COLS ") SELECT r.chat_id, r.jid, r.push_name, r.is_group, r.group_name,"
    " r.unread_count, r.last_message, r.conversation_timestamp, r.not_spam, r.agent_id,"
    " COALESCE(r.company_id, '" COMPANY "'), r.phone_number, r.meta, now(), now()"
    " FROM jsonb_to_recordset($1::jsonb) AS r(chat_id text, jid text, push_name text, is_group boolean,"
    " group_name text, unread_count integer, last_message jsonb, conversation_timestamp bigint, not_spam boolean,"
    " agent_id text, company_id text, phone_number text, meta jsonb)" SET_LATEST;

typedef struct {
    natsConnection *nc;
    jsCtx *js;
    PGconn *pg;
} env_t;

typedef struct {
    const char *label;
    long events, rows;
    double seconds;
} result_t;

static bool pg_ok(PGresult *r, const char *what)
{
    ExecStatusType st = PQresultStatus(r);
    bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok)
        fprintf(stderr, "bench-refbound: %s: %s", what, PQresultErrorMessage(r));
    PQclear(r);
    return ok;
}

static natsSubscription *subscribe(env_t *e, const char *durable)
{
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = "wa_events_stream";
    so.Config.AckPolicy = js_AckExplicit;
    so.Config.AckWait = 120LL * 1000000000LL;
    so.Config.MaxAckPending = 100000;
    natsSubscription *sub = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_PullSubscribe(&sub, e->js, SUBJECT, durable, NULL, &so, &jerr);
    if (s != NATS_OK) {
        fprintf(stderr, "bench-refbound: pull subscribe %s: %s (%d)\n", durable, natsStatus_GetText(s), (int)jerr);
        return NULL;
    }
    return sub;
}

/* The JSON text of a member as a string parameter: strings as is, other values printed (the reference did this). */
static const char *param(const cJSON *o, const char *k, char *num, size_t numlen, char **owned)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!v || cJSON_IsNull(v))
        return NULL;
    if (cJSON_IsString(v))
        return v->valuestring;
    if (cJSON_IsBool(v))
        return cJSON_IsTrue(v) ? "true" : "false";
    if (cJSON_IsNumber(v)) {
        snprintf(num, numlen, "%.0f", v->valuedouble);
        return num;
    }
    *owned = cJSON_PrintUnformatted(v);
    return *owned;
}

static void meta_json(natsMsg *m, char *out, size_t len)
{
    jsMsgMetaData *md = NULL;
    if (natsMsg_GetMetaData(&md, m) == NATS_OK) {
        snprintf(out, len, "{\"stream\":\"%s\",\"stream_sequence\":%llu,\"consumer\":\"%s\"}", md->Stream,
                 (unsigned long long)md->Sequence.Stream, md->Consumer);
        jsMsgMetaData_Destroy(md);
    } else {
        snprintf(out, len, "{}");
    }
}

/* One event, one transaction: the reference's handler. */
static bool one_event(env_t *e, natsMsg *m)
{
    cJSON *o = cJSON_ParseWithLength(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m));
    if (!o || !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(o, "chat_id"))) {
        cJSON_Delete(o);
        natsMsg_Term(m, NULL);
        return true;
    }
    static const char *const keys[] = {"chat_id",    "jid",          "push_name",    "is_group",
                                       "group_name", "unread_count", "last_message", "conversation_timestamp",
                                       "not_spam",   "agent_id",     "company_id",   "phone_number"};
    char nums[12][32], meta[512], *owned[12] = {NULL};
    const char *values[13];
    for (int i = 0; i < 12; i++)
        values[i] = param(o, keys[i], nums[i], sizeof nums[i], &owned[i]);
    if (!values[10])
        values[10] = COMPANY;
    meta_json(m, meta, sizeof meta);
    values[12] = meta;
    bool ok = pg_ok(PQexecPrepared(e->pg, "one", 13, values, NULL, NULL, 0), "single-row upsert");
    for (int i = 0; i < 12; i++)
        cJSON_free(owned[i]);
    cJSON_Delete(o);
    if (ok)
        natsMsg_Ack(m, NULL);
    return ok;
}

typedef struct {
    const char *id;
    uint32_t idlen, i;
} keyed_t;

static int cmp_keyed(const void *pa, const void *pb)
{
    const keyed_t *a = pa, *b = pb;
    uint32_t n = a->idlen < b->idlen ? a->idlen : b->idlen;
    int c = memcmp(a->id, b->id, n);
    if (!c)
        c = (a->idlen > b->idlen) - (a->idlen < b->idlen);
    return c ? c : (a->i > b->i) - (a->i < b->i);
}

/* A fetched batch whose statement may be in flight: acked only after its statement committed. */
typedef struct {
    natsMsgList l;
    bool bad[FETCH]; /* terminated at parse (not acked) */
    bool sent;
} inflight_t;

/* One batch, one statement: parse, keep the last event per chat_id, and build $1 from the raw payloads plus their
 * metadata. */
static void build_batch(inflight_t *f, buf_t *b)
{
    keyed_t keys[FETCH];
    cJSON *docs[FETCH];
    int n = 0;
    natsMsgList *l = &f->l;
    for (int i = 0; i < l->Count; i++) {
        natsMsg *m = l->Msgs[i];
        cJSON *o = cJSON_ParseWithLength(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m));
        const cJSON *id = o ? cJSON_GetObjectItemCaseSensitive(o, "chat_id") : NULL;
        const char *d = natsMsg_GetData(m);
        int len = natsMsg_GetDataLength(m);
        f->bad[i] = !cJSON_IsString(id) || len < 2 || d[len - 1] != '}';
        if (f->bad[i]) {
            cJSON_Delete(o);
            natsMsg_Term(m, NULL);
            continue;
        }
        docs[n] = o;
        keys[n] = (keyed_t){id->valuestring, (uint32_t)strlen(id->valuestring), (uint32_t)i};
        n++;
    }
    qsort(keys, (size_t)n, sizeof keys[0], cmp_keyed);
    buf_reset(b);
    buf_putc(b, '[');
    bool first = true;
    for (int k = 0; k < n; k++) {
        if (k + 1 < n && keys[k + 1].idlen == keys[k].idlen && !memcmp(keys[k + 1].id, keys[k].id, keys[k].idlen))
            continue; /* a later event of the same chat follows */
        natsMsg *m = l->Msgs[keys[k].i];
        char meta[512];
        meta_json(m, meta, sizeof meta);
        if (!first)
            buf_putc(b, ',');
        first = false;
        buf_append(b, natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m) - 1);
        buf_puts(b, ",\"meta\":");
        buf_puts(b, meta);
        buf_putc(b, '}');
    }
    buf_putc(b, ']');
    for (int k = 0; k < n; k++)
        cJSON_Delete(docs[k]);
}

/* Sends the statement without waiting for its result. */
static bool send_batch(env_t *e, inflight_t *f, const buf_t *b)
{
    const char *values[1] = {b->data};
    f->sent = PQsendQueryPrepared(e->pg, "many", 1, values, NULL, NULL, 0) == 1;
    if (!f->sent)
        fprintf(stderr, "bench-refbound: send: %s", PQerrorMessage(e->pg));
    return f->sent;
}

/* Waits for the batch's statement (autocommit: its transaction) and acks the batch. */
static bool finish_batch(env_t *e, inflight_t *f)
{
    bool ok = f->sent;
    for (PGresult *r; f->sent && (r = PQgetResult(e->pg)) != NULL;)
        ok = pg_ok(r, "multi-row upsert") && ok;
    for (int i = 0; ok && i < f->l.Count; i++)
        if (!f->bad[i])
            natsMsg_Ack(f->l.Msgs[i], NULL);
    natsMsgList_Destroy(&f->l);
    memset(f, 0, sizeof *f);
    return ok;
}

/* ref-autocommit: fetch, then one event at a time. min-batched: fetch batch k+1 and build its statement while
 * PostgreSQL runs batch k (the service overlaps fetching and committing too, so a strictly sequential loop would be
 * no ceiling). */
static bool drain(env_t *e, const char *durable, bool batched, long want, result_t *res)
{
    natsSubscription *sub = subscribe(e, durable);
    if (!sub)
        return false;
    buf_t b;
    buf_init(&b);
    inflight_t fl[2];
    memset(fl, 0, sizeof fl);
    int cur = 0;
    long done = 0;
    int64_t t_first = 0, deadline = h_now_ms() + 600000;
    bool ok = true;
    while (ok && done < want && h_now_ms() < deadline) {
        natsMsgList *l = &fl[cur].l;
        jsErrCode jerr = 0;
        int batch = batched || want - done >= FETCH ? FETCH : (int)(want - done);
        natsStatus s = natsSubscription_Fetch(l, sub, batch, 2000, &jerr);
        if (s == NATS_TIMEOUT)
            continue;
        if (s != NATS_OK) {
            fprintf(stderr, "bench-refbound: fetch: %s\n", natsStatus_GetText(s));
            ok = false;
            break;
        }
        if (!t_first)
            t_first = h_now_ms();
        done += l->Count;
        if (batched) {
            build_batch(&fl[cur], &b);
            if (fl[1 - cur].l.Count && !finish_batch(e, &fl[1 - cur]))
                ok = false;
            ok = ok && send_batch(e, &fl[cur], &b);
            cur = 1 - cur;
        } else {
            for (int i = 0; ok && i < l->Count; i++)
                ok = one_event(e, l->Msgs[i]);
            natsMsgList_Destroy(l);
            memset(l, 0, sizeof *l);
        }
    }
    for (int k = 0; k < 2; k++)
        if (fl[k].l.Count && !finish_batch(e, &fl[k]))
            ok = false;
    natsConnection_Flush(e->nc);
    int64_t t_last = h_now_ms();
    buf_free(&b);
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    res->events = done;
    res->seconds = t_first ? (double)(t_last - t_first) / 1000.0 : 0;
    return ok && done >= want;
}

static void report(const result_t *r, bool json)
{
    double rate = r->seconds > 0 ? (double)r->events / r->seconds : 0;
    if (json)
        printf("{\"label\":\"%s\",\"events\":%ld,\"seconds\":%.3f,\"events_per_s\":%.0f,\"rows\":%ld}\n", r->label,
               r->events, r->seconds, rate, r->rows);
    else
        printf("%-22s events %8ld  drain %7.2f s  %9.0f events/s  rows %9ld\n", r->label, r->events, r->seconds, rate,
               r->rows);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    long count = 100000, ref_count = 10000;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--count") && i + 1 < argc)
            count = atol(argv[++i]);
        else if (!strcmp(argv[i], "--ref-count") && i + 1 < argc)
            ref_count = atol(argv[++i]);
        else if (!strcmp(argv[i], "--json"))
            json = true;
        else {
            fprintf(stderr, "usage: %s [--count N] [--ref-count M] [--json]\n", argv[0]);
            return 2;
        }
    }
    if (count < 1 || ref_count < 1)
        return 2;
    if (ref_count > count)
        ref_count = count;
    const char *build = getenv("MES_BUILD_DIR");
    if (!build) {
        fprintf(stderr, "bench-refbound: set MES_BUILD_DIR (bench/run.sh does)\n");
        return 2;
    }
    h_nats_t n;
    h_pg_t p;
    if (!h_nats_start(&n) || !h_pg_start(&p) || !h_streams_create(&n))
        return 1;
    if (bench_prepublish("bench-refbound", &n, COMPANY, count, "v1.chats.upsert", NULL, NULL) != 0)
        return 1;

    env_t e = {0};
    if (natsConnection_ConnectTo(&e.nc, n.url) != NATS_OK || natsConnection_JetStream(&e.js, e.nc, NULL) != NATS_OK) {
        fprintf(stderr, "bench-refbound: cannot connect to %s\n", n.url);
        return 1;
    }
    bench_keep_prepare(&p);
    e.pg = PQconnectdb(p.dsn);
    if (PQstatus(e.pg) != CONNECTION_OK || !pg_ok(PQexec(e.pg, "CREATE SCHEMA refbench"), "schema") ||
        !pg_ok(PQexec(e.pg, TABLE_DDL("chats_a")), "table a") ||
        !pg_ok(PQexec(e.pg, TABLE_DDL("chats_b")), "table b") ||
        !pg_ok(PQprepare(e.pg, "one", SQL_ONE, 0, NULL), "prepare one") ||
        !pg_ok(PQprepare(e.pg, "many", SQL_MANY, 0, NULL), "prepare many"))
        return 1;

    result_t a = {"ref-autocommit", 0, 0, 0}, b = {"min-batched", 0, 0, 0};
    bool ok = drain(&e, "refbench_a", false, ref_count, &a);
    a.rows = (long)h_pg_int(&p, "SELECT count(*) FROM refbench.chats_a");
    report(&a, json);
    ok = drain(&e, "refbench_b", true, count, &b) && ok;
    b.rows = (long)h_pg_int(&p, "SELECT count(*) FROM refbench.chats_b");
    report(&b, json);
    bench_keep(NULL, &p);
    PQfinish(e.pg);
    jsCtx_Destroy(e.js);
    natsConnection_Destroy(e.nc);
    return ok ? 0 : 1;
}
