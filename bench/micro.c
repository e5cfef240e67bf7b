/* micro.c - handler microbenchmark: route + parse/validate + statement parameters per event type, in ns and mallocs.
 *
 *   bench-micro [--loadgen PATH] [--ms-per-rep N] [--reps N] [--only BASE] [--json]
 *
 * Payloads come from `mes-loadgen --dry-run` (the realistic mix for realtime types, so updates spread over many keys
 * the way they do in production; history batches of 100 items), cycled in lane-sized batches: 256 realtime messages
 * or 64 history messages per batch, the service's default batchSize. Per batch it does what the consumer and the
 * store do before the database is involved: arena_reset; per message the subject check, the last_metadata object and
 * payload_parse; then the store's planning (sort by key, same-key rounds) and the JSON array of rows ($1) of every
 * statement, onboarding rows included. Two numbers per type: "parse" (route + payload_parse only) and "full" (all of
 * it). Allocations are counted by interposing malloc & co. (glibc __libc_* entry points), only inside the timed
 * repetitions, after a warm-up, so they are steady-state allocations per event.
 *
 * NOTE: the last_metadata builder (consumer.c build_meta) and the row builders (store/batch.c plan, build_rows,
 * row_*) are file-static in src/, so this file carries a FAITHFUL REIMPLEMENTATION of them (marked below). Replace it
 * with a call to a public store function (e.g. store_build_params) once one exists. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "clock.h"
#include "event.h"
#include "payload.h"
#include "store.h"

/* ---- allocation counter (interposed over glibc's allocator) ------------------------------------------------------ */

extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t sz);
extern void *__libc_realloc(void *p, size_t n);
extern void __libc_free(void *p);
extern void *__libc_memalign(size_t align, size_t n);

static bool counting;
static unsigned long long n_allocs, n_frees;

void *malloc(size_t n)
{
    n_allocs += counting;
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t sz)
{
    n_allocs += counting;
    return __libc_calloc(n, sz);
}

void *realloc(void *p, size_t n)
{
    n_allocs += counting;
    return __libc_realloc(p, n);
}

void free(void *p)
{
    n_frees += counting && p;
    __libc_free(p);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    n_allocs += counting;
    void *p = __libc_memalign(align, n);
    if (!p)
        return 12; /* ENOMEM */
    *out = p;
    return 0;
}

void *aligned_alloc(size_t align, size_t n)
{
    n_allocs += counting;
    return __libc_memalign(align, n);
}

/* ---- payload pools ---------------------------------------------------------------------------------------------- */

#define COMPANY "bench"
#define POOL_MAX 1024
#define RT_BATCH 256
#define HIST_BATCH 64
#define HIST_ITEMS 100

typedef struct {
    event_type_t et;
    size_t n;
    char *subject[POOL_MAX];
    char *data[POOL_MAX];
    size_t len[POOL_MAX];
    char msg_id[POOL_MAX][32];
} pool_t;

static pool_t pools[ET_BASE_COUNT];

/* Runs the load generator in dry-run mode and files each "SUBJECT PAYLOAD" line under its event type. */
static int load_pools(const char *loadgen, const char *args)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' --dry-run --company_ids " COMPANY " --seed 42 --id-prefix mb %s 2>/dev/null",
             loadgen, args);
    FILE *f = popen(cmd, "r");
    if (!f)
        return -1;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
        if (line[n - 1] == '\n')
            line[--n] = '\0';
        char *sp = strchr(line, ' ');
        char *dot = sp ? memrchr(line, '.', (size_t)(sp - line)) : NULL;
        if (!dot)
            continue;
        event_type_t et = event_type_from_base(line, (size_t)(dot - line));
        if (et == ET_UNKNOWN || pools[et].n == POOL_MAX)
            continue;
        pool_t *p = &pools[et];
        p->et = et;
        p->subject[p->n] = strndup(line, (size_t)(sp - line));
        p->data[p->n] = strdup(sp + 1);
        p->len[p->n] = strlen(sp + 1);
        snprintf(p->msg_id[p->n], sizeof p->msg_id[p->n], "mb-%zu", p->n + 1);
        if (!p->subject[p->n] || !p->data[p->n])
            break;
        p->n++;
    }
    free(line);
    return pclose(f) == 0 ? 0 : -1;
}

/* ---- one message as the consumer prepares it ---------------------------------------------------------------------- */

typedef struct {
    event_t ev;
    const char *meta;
    uint32_t meta_len;
    char msg_id[160];
} slot_t;

/* The subject must be exactly <base>.<co> for this lane's base (consumer.c check_subject). */
static bool route_ok(const char *subject, event_type_t et)
{
    const char *dot = strrchr(subject, '.');
    return dot && event_type_from_base(subject, (size_t)(dot - subject)) == et && strcmp(dot + 1, COMPANY) == 0;
}

/* REIMPLEMENTATION of consumer.c build_meta (static there); the stream metadata values are stand-ins. */
static void build_meta(arena_t *arena, slot_t *s, const char *subject, uint64_t seq, const char *processed_at)
{
    static const char stream[] = "wa_events_stream", consumer[] = "message-event-service-bench";
    buf_t b;
    buf_init(&b);
    buf_puts(&b, "{\"stream\":");
    buf_put_json_str(&b, stream, strlen(stream));
    buf_printf(&b, ",\"stream_sequence\":%llu,\"consumer\":", (unsigned long long)seq);
    buf_put_json_str(&b, consumer, strlen(consumer));
    buf_printf(&b, ",\"consumer_sequence\":%llu,\"message_id\":", (unsigned long long)seq);
    buf_put_json_str(&b, s->msg_id, strlen(s->msg_id));
    buf_puts(&b, ",\"message_subject\":");
    buf_put_json_str(&b, subject, strlen(subject));
    buf_printf(&b, ",\"processed_at\":\"%s\"}", processed_at);
    s->meta = b.oom ? "{}" : arena_strndup(arena, b.data, b.len);
    if (!s->meta)
        s->meta = "{}";
    s->meta_len = (uint32_t)strlen(s->meta);
    buf_free(&b);
}

/* ==== BEGIN REIMPLEMENTATION of src/store/batch.c (plan, build_rows, row_*; static there). Keep in sync. ========= */

typedef struct {
    buf_t *b;
    bool first;
} row_t;

static void key(row_t *r, const char *k)
{
    if (!r->first)
        buf_putc(r->b, ',');
    r->first = false;
    buf_putc(r->b, '"');
    buf_puts(r->b, k);
    buf_puts(r->b, "\":");
}

static void f_str(row_t *r, const char *k, str_t v)
{
    if (!v.p)
        return;
    key(r, k);
    buf_put_json_str(r->b, v.p, v.len);
}

static void f_raw(row_t *r, const char *k, str_t v)
{
    if (!v.p)
        return;
    key(r, k);
    buf_append(r->b, v.p, v.len);
}

static void f_i64(row_t *r, const char *k, opt_i64_t v)
{
    if (!v.set)
        return;
    key(r, k);
    buf_put_i64(r->b, v.v);
}

static void f_tri(row_t *r, const char *k, tri_t v)
{
    if (v == TRI_UNSET)
        return;
    key(r, k);
    buf_puts(r->b, v == TRI_TRUE ? "true" : "false");
}

static void row_chat(row_t *r, const store_item_t *it)
{
    const chat_upsert_t *c = &it->ev->u.chat;
    f_str(r, "chat_id", c->chat_id);
    f_str(r, "jid", c->jid);
    f_str(r, "push_name", c->push_name);
    f_tri(r, "is_group", c->is_group);
    f_str(r, "group_name", c->group_name);
    f_i64(r, "unread_count", c->unread_count);
    f_raw(r, "last_message", c->last_message);
    f_i64(r, "conversation_timestamp", c->conversation_timestamp);
    f_tri(r, "not_spam", c->not_spam);
    f_str(r, "agent_id", c->agent_id);
    f_str(r, "company_id", c->company_id);
    f_str(r, "phone_number", c->phone_number);
    f_str(r, "custom_name", c->custom_name);
}

static void row_chat_update(row_t *r, const store_item_t *it)
{
    const chat_update_t *c = &it->ev->u.chat_update;
    f_str(r, "chat_id", c->chat_id);
    f_str(r, "agent_id", c->agent_id);
    f_i64(r, "unread_count", c->unread_count);
    f_i64(r, "unread_delta", c->unread_delta);
    f_i64(r, "conversation_timestamp", c->conversation_timestamp);
    f_raw(r, "last_message", c->last_message);
}

static void row_message(row_t *r, const store_item_t *it)
{
    const message_upsert_t *m = &it->ev->u.msg;
    char date[11];
    f_str(r, "message_id", m->message_id);
    f_str(r, "from_phone", m->from_phone);
    f_str(r, "to_phone", m->to_phone);
    f_str(r, "chat_id", m->chat_id);
    f_str(r, "jid", m->jid);
    f_str(r, "message_text", m->message_text);
    f_str(r, "message_url", m->message_url);
    f_str(r, "message_type", m->message_type);
    f_str(r, "company_id", m->company_id);
    f_raw(r, "key", m->key);
    f_raw(r, "message_obj", m->message_obj);
    f_str(r, "flow", m->flow);
    f_str(r, "agent_id", m->agent_id);
    f_str(r, "status", m->status);
    f_i64(r, "message_timestamp", m->message_timestamp);
    days_to_date(m->message_date, date);
    key(r, "message_date");
    buf_putc(r->b, '"');
    buf_puts(r->b, date);
    buf_putc(r->b, '"');
}

static void row_message_update(row_t *r, const store_item_t *it)
{
    const message_update_t *m = &it->ev->u.msg_update;
    f_str(r, "message_id", m->message_id);
    f_str(r, "status", m->status);
    f_str(r, "message_url", m->message_url);
    f_raw(r, "edited_message_obj", m->edited_message_obj);
    f_tri(r, "is_deleted", m->is_deleted);
}

static void row_contact(row_t *r, const store_item_t *it)
{
    const contact_t *c = &it->ev->u.contact;
    f_str(r, "phone_number", c->phone_number);
    f_str(r, "agent_id", c->agent_id);
    f_str(r, "chat_id", c->chat_id);
    f_str(r, "push_name", c->push_name);
    f_str(r, "company_id", c->company_id);
}

static void row_agent(row_t *r, const store_item_t *it)
{
    const agent_t *a = &it->ev->u.agent;
    f_str(r, "agent_id", a->agent_id);
    f_str(r, "qr_code", a->qr_code);
    f_str(r, "status", a->status);
    f_str(r, "agent_name", a->agent_name);
    f_str(r, "phone_number", a->phone_number);
    f_str(r, "host_name", a->host_name);
    f_str(r, "version", a->version);
    f_str(r, "company_id", a->company_id);
}

static bool onboardable(const store_item_t *it, char phone[PAYLOAD_MAX_PHONE + 1], size_t *plen)
{
    const message_upsert_t *m = &it->ev->u.msg;
    if (!it->onboard || !m->flow.p || m->flow.len != 2 || memcmp(m->flow.p, "IN", 2) != 0 || !m->from_phone.p)
        return false;
    size_t n = m->from_phone.len > PAYLOAD_MAX_PHONE ? PAYLOAD_MAX_PHONE : m->from_phone.len;
    *plen = phone_normalize(m->from_phone.p, n, phone);
    phone[*plen] = '\0';
    return *plen > 0;
}

static void row_onboarding(row_t *r, const store_item_t *it)
{
    const message_upsert_t *m = &it->ev->u.msg;
    char phone[PAYLOAD_MAX_PHONE + 1];
    size_t plen = 0;
    (void)onboardable(it, phone, &plen);
    key(r, "phone");
    buf_put_json_str(r->b, phone, plen);
    f_str(r, "agent_id", m->agent_id);
    f_str(r, "chat_id", m->chat_id);
    f_str(r, "company_id", m->company_id);
    if (m->has_campaign) {
        f_str(r, "origin", m->campaign_origin);
        f_str(r, "tags", m->campaign_tags);
        f_str(r, "assigned_to", m->campaign_assigned_to);
    }
    f_str(r, "message_id", m->message_id);
    f_i64(r, "message_timestamp", m->message_timestamp);
}

typedef struct {
    str_t a, b;
} ikey_t;

static ikey_t item_key(const store_scratch_t *s, const store_item_t *items, uint32_t i, bool onboarding)
{
    const event_t *ev = items[i].ev;
    ikey_t k = {{NULL, 0}, {NULL, 0}};
    if (onboarding) {
        k.a = ev->u.msg.agent_id;
        k.b.p = s->phones + (size_t)i * (PAYLOAD_MAX_PHONE + 1);
        k.b.len = (uint32_t)strlen(k.b.p);
        return k;
    }
    switch (ev->type) {
    case ET_CHATS_UPSERT:
        k.a = ev->u.chat.chat_id;
        break;
    case ET_CHATS_UPDATE:
        k.a = ev->u.chat_update.chat_id;
        break;
    case ET_MESSAGES_UPSERT:
        k.a = ev->u.msg.message_id;
        k.b.p = (const char *)&ev->u.msg.message_date;
        k.b.len = sizeof ev->u.msg.message_date;
        break;
    case ET_MESSAGES_UPDATE:
        k.a = ev->u.msg_update.message_id;
        break;
    case ET_CONTACTS_UPSERT:
    case ET_CONTACTS_UPDATE:
        k.a = ev->u.contact.agent_id;
        k.b = ev->u.contact.phone_number;
        break;
    case ET_CONNECTION_UPDATE:
        k.a = ev->u.agent.agent_id;
        break;
    default:
        break;
    }
    return k;
}

static int str_cmp(str_t x, str_t y)
{
    size_t n = x.len < y.len ? x.len : y.len;
    int c = n ? memcmp(x.p, y.p, n) : 0;
    if (c)
        return c;
    return x.len < y.len ? -1 : x.len > y.len;
}

typedef struct {
    const store_scratch_t *s;
    const store_item_t *items;
    bool onboarding;
} sort_ctx_t;

static int cmp_items(const void *pa, const void *pb, void *arg)
{
    const sort_ctx_t *ctx = arg;
    uint32_t ia = *(const uint32_t *)pa, ib = *(const uint32_t *)pb;
    ikey_t ka = item_key(ctx->s, ctx->items, ia, ctx->onboarding), kb = item_key(ctx->s, ctx->items, ib, ctx->onboarding);
    int c = str_cmp(ka.a, kb.a);
    if (!c)
        c = str_cmp(ka.b, kb.b);
    if (!c)
        c = ia < ib ? -1 : ia > ib;
    return c;
}

static bool scratch_grow(store_scratch_t *s, size_t n)
{
    if (n <= s->cap)
        return true;
    size_t cap = s->cap ? s->cap : 256;
    while (cap < n)
        cap *= 2;
    uint32_t *o = realloc(s->order, cap * sizeof *o);
    if (!o)
        return false;
    s->order = o;
    uint32_t *r = realloc(s->round, cap * sizeof *r);
    if (!r)
        return false;
    s->round = r;
    char *ph = realloc(s->phones, cap * (PAYLOAD_MAX_PHONE + 1));
    if (!ph)
        return false;
    s->phones = ph;
    s->cap = cap;
    return true;
}

typedef void (*row_fn)(row_t *r, const store_item_t *it);

static void build_rows(buf_t *b, const store_item_t *items, const uint32_t *idx, size_t n, row_fn fn)
{
    buf_reset(b);
    buf_putc(b, '[');
    for (size_t k = 0; k < n; k++) {
        row_t r = {b, true};
        if (b->len > 1)
            buf_putc(b, ',');
        buf_puts(b, "{\"i\":");
        buf_put_i64(b, idx[k]);
        r.first = false;
        fn(&r, &items[idx[k]]);
        key(&r, "meta");
        buf_append(b, items[idx[k]].meta, items[idx[k]].meta_len);
        buf_putc(b, '}');
    }
    buf_putc(b, ']');
}

static size_t plan(store_scratch_t *s, const store_item_t *items, size_t n, event_type_t type, bool onboarding,
                   uint32_t *rounds)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (onboarding) {
            char phone[PAYLOAD_MAX_PHONE + 1];
            size_t plen;
            if (items[i].ev->type != ET_MESSAGES_UPSERT || !onboardable(&items[i], phone, &plen))
                continue;
            (void)onboardable(&items[i], s->phones + i * (PAYLOAD_MAX_PHONE + 1), &plen);
        } else if (items[i].ev->type != type) {
            continue;
        }
        s->order[m++] = (uint32_t)i;
    }
    sort_ctx_t ctx = {s, items, onboarding};
    qsort_r(s->order, m, sizeof *s->order, cmp_items, &ctx);
    uint32_t maxr = 0;
    for (size_t k = 0; k < m; k++) {
        uint32_t r = 0;
        if (k > 0) {
            ikey_t a = item_key(s, items, s->order[k - 1], onboarding), b = item_key(s, items, s->order[k], onboarding);
            if (str_cmp(a.a, b.a) == 0 && str_cmp(a.b, b.b) == 0)
                r = s->round[k - 1] + 1;
        }
        s->round[k] = r;
        if (r + 1 > maxr)
            maxr = r + 1;
    }
    *rounds = maxr;
    return m;
}

static size_t round_items(const store_scratch_t *s, size_t m, uint32_t r, uint32_t *idx)
{
    size_t k = 0;
    for (size_t j = 0; j < m; j++)
        if (s->round[j] == r)
            idx[k++] = s->order[j];
    return k;
}

static const struct {
    event_type_t type;
    row_fn row;
    int statements; /* statements that take the same $1 (connection.update: insert + update) */
} writers[] = {
    {ET_CHATS_UPSERT, row_chat, 1},    {ET_CHATS_UPDATE, row_chat_update, 1}, {ET_MESSAGES_UPSERT, row_message, 1},
    {ET_MESSAGES_UPDATE, row_message_update, 1}, {ET_CONTACTS_UPSERT, row_contact, 1},
    {ET_CONTACTS_UPDATE, row_contact, 1}, {ET_CONNECTION_UPDATE, row_agent, 2},
};

/* Builds every statement parameter of store_commit for items[0..n); returns the bytes built (so nothing is dead
 * code to the optimiser) and counts the statements the store would execute (BEGIN/COMMIT excluded). */
static size_t store_params(store_item_t *items, size_t n, store_scratch_t *s, size_t *statements)
{
    size_t bytes = 0;
    if (n == 0 || !scratch_grow(s, n))
        return 0;
    uint32_t *idx = malloc(n * sizeof *idx); /* as store_commit does, once per batch */
    if (!idx)
        return 0;
    for (size_t w = 0; w < sizeof writers / sizeof writers[0]; w++) {
        uint32_t rounds = 0;
        size_t m = plan(s, items, n, writers[w].type, false, &rounds);
        for (uint32_t r = 0; m && r < rounds; r++) {
            size_t k = round_items(s, m, r, idx);
            build_rows(&s->json, items, idx, k, writers[w].row);
            bytes += s->json.len;
            *statements += (size_t)writers[w].statements;
        }
    }
    uint32_t rounds = 0;
    size_t m = plan(s, items, n, ET_MESSAGES_UPSERT, true, &rounds);
    for (uint32_t r = 0; r < rounds; r++) {
        size_t k = round_items(s, m, r, idx);
        build_rows(&s->json, items, idx, k, row_onboarding);
        bytes += s->json.len;
        *statements += 3; /* create, merge, log */
    }
    free(idx);
    return bytes;
}

/* ==== END REIMPLEMENTATION ========================================================================================= */

/* ---- the benchmark ---------------------------------------------------------------------------------------------- */

typedef struct {
    payload_ctx_t ctx;
    store_scratch_t scratch;
    slot_t *slots;
    store_item_t *items;
    size_t items_cap;
    size_t sink; /* bytes built: keeps the work observable */
    size_t statements, rows, invalid;
} bench_t;

/* One lane batch of `n` messages starting at pool index `start`. full: also metadata and statement parameters. */
static void run_batch(bench_t *b, const pool_t *p, size_t start, size_t n, bool full)
{
    char processed_at[40];
    clock_rfc3339_now(processed_at, sizeof processed_at);
    arena_reset(b->ctx.arena);
    bool history = event_type_lane(p->et) == LANE_HISTORICAL;
    size_t nitems = 0;
    for (size_t k = 0; k < n; k++) {
        size_t i = (start + k) % p->n;
        slot_t *s = &b->slots[k];
        memset(&s->ev, 0, sizeof s->ev);
        if (full) {
            snprintf(s->msg_id, sizeof s->msg_id, "%s", p->msg_id[i]);
            build_meta(b->ctx.arena, s, p->subject[i], start + k + 1, processed_at);
        }
        if (!route_ok(p->subject[i], p->et)) {
            s->ev.err = ERR_VALIDATION;
            b->invalid++;
            continue;
        }
        if (payload_parse(&b->ctx, p->et, p->data[i], p->len[i], &s->ev) != ERR_NONE) {
            b->invalid++;
            continue;
        }
        if (!full)
            continue;
        size_t want = history ? s->ev.n_items : 1;
        if (nitems + want > b->items_cap) {
            size_t cap = b->items_cap ? b->items_cap : 256;
            while (cap < nitems + want)
                cap *= 2;
            store_item_t *it = realloc(b->items, cap * sizeof *it);
            if (!it)
                abort();
            b->items = it;
            b->items_cap = cap;
        }
        if (history) {
            for (uint32_t j = 0; j < s->ev.n_items; j++)
                if (s->ev.items[j].err == ERR_NONE)
                    b->items[nitems++] = (store_item_t){.ev = &s->ev.items[j], .meta = s->meta, .meta_len = s->meta_len};
        } else {
            b->items[nitems++] = (store_item_t){
                .ev = &s->ev, .meta = s->meta, .meta_len = s->meta_len, .onboard = p->et == ET_MESSAGES_UPSERT};
        }
    }
    if (full) {
        b->sink += store_params(b->items, nitems, &b->scratch, &b->statements);
        b->rows += nitems;
    }
}

typedef struct {
    double ns_per_msg;        /* median over the repetitions */
    double allocs_per_msg;    /* over all timed repetitions */
    double frees_per_msg;
    double items_per_msg;     /* store rows per message (history: valid items) */
    double statements_per_batch;
} result_t;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static result_t measure(bench_t *b, const pool_t *p, bool full, int reps, double ms_per_rep)
{
    size_t batch = event_type_lane(p->et) == LANE_HISTORICAL ? HIST_BATCH : RT_BATCH, pos = 0;
    /* Warm-up: twice through the pool, so token buffers, arena chunks and scratch space reached their steady size. */
    for (size_t done = 0; done < 2 * p->n + 2 * batch; done += batch, pos += batch)
        run_batch(b, p, pos, batch, full);
    double per[64];
    if (reps > 64)
        reps = 64;
    size_t msgs = 0, rows0 = b->rows, st0 = b->statements, batches = 0;
    n_allocs = n_frees = 0;
    for (int r = 0; r < reps; r++) {
        size_t m = 0;
        counting = true;
        double t0 = now_ns(), t;
        do {
            run_batch(b, p, pos, batch, full);
            pos += batch;
            m += batch;
            batches++;
        } while ((t = now_ns()) - t0 < ms_per_rep * 1e6);
        counting = false;
        per[r] = (t - t0) / (double)m;
        msgs += m;
    }
    qsort(per, (size_t)reps, sizeof per[0], cmp_double);
    return (result_t){per[reps / 2], (double)n_allocs / (double)msgs, (double)n_frees / (double)msgs,
                      (double)(b->rows - rows0) / (double)msgs, (double)(b->statements - st0) / (double)batches};
}

int main(int argc, char **argv)
{
    const char *loadgen = NULL, *only = NULL;
    double ms_per_rep = 150;
    int reps = 5;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--loadgen") && i + 1 < argc)
            loadgen = argv[++i];
        else if (!strcmp(argv[i], "--ms-per-rep") && i + 1 < argc)
            ms_per_rep = atof(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else if (!strcmp(argv[i], "--json"))
            json = true;
        else {
            fprintf(stderr, "usage: %s [--loadgen PATH] [--ms-per-rep N] [--reps N] [--only BASE] [--json]\n",
                    argv[0]);
            return 2;
        }
    }
    char path[512];
    if (!loadgen) {
        const char *build = getenv("MES_BUILD_DIR");
        snprintf(path, sizeof path, "%s/loadtest/mes-loadgen", build ? build : ".");
        loadgen = path;
    }
    if (reps < 1 || ms_per_rep <= 0) {
        fprintf(stderr, "bench-micro: --reps and --ms-per-rep must be positive\n");
        return 2;
    }
    /* Realtime: the default mix without history, so updates target many keys as in production. */
    if (load_pools(loadgen, "--count 6000 --subjects v1.chats.upsert:8,v1.chats.update:10,v1.messages.upsert:40,"
                            "v1.messages.update:24,v1.contacts.upsert:6,v1.contacts.update:4,"
                            "v1.connection.update:2") != 0 ||
        load_pools(loadgen, "--count 64 --history-count 100 --subjects v1.history.chats") != 0 ||
        load_pools(loadgen, "--count 64 --history-count 100 --subjects v1.history.messages") != 0 ||
        load_pools(loadgen, "--count 64 --history-count 100 --subjects v1.history.contacts") != 0) {
        fprintf(stderr, "bench-micro: %s --dry-run failed (pass --loadgen PATH or set MES_BUILD_DIR)\n", loadgen);
        return 1;
    }
    bench_t b;
    memset(&b, 0, sizeof b);
    store_scratch_init(&b.scratch);
    b.slots = calloc(RT_BATCH, sizeof *b.slots);
    if (!b.slots || payload_ctx_init(&b.ctx, COMPANY) != 0) {
        fprintf(stderr, "bench-micro: out of memory\n");
        return 1;
    }
    if (!json) {
        printf("handler microbenchmark: batches of %d realtime / %d history messages (%d items each); median of %d x "
               "%.0f ms\n",
               RT_BATCH, HIST_BATCH, HIST_ITEMS, reps, ms_per_rep);
        printf("%-22s %6s %6s %12s %9s %11s %10s %9s %8s\n", "event type", "bytes", "rows", "parse ns/ev",
               "allocs", "full ns/ev", "allocs/ev", "frees/ev", "stmts/b");
    }
    for (int et = 0; et < ET_BASE_COUNT; et++) {
        const pool_t *p = &pools[et];
        if (only && strcmp(only, event_type_base((event_type_t)et)) != 0)
            continue; /* e.g. to profile one type: perf record bench-micro --only v1.messages.upsert */
        if (p->n == 0) {
            fprintf(stderr, "bench-micro: no payloads for %s\n", event_type_base((event_type_t)et));
            return 1;
        }
        size_t bytes = 0;
        for (size_t i = 0; i < p->n; i++)
            bytes += p->len[i];
        size_t invalid0 = b.invalid;
        result_t parse = measure(&b, p, false, reps, ms_per_rep);
        result_t full = measure(&b, p, true, reps, ms_per_rep);
        bool history = event_type_lane(p->et) == LANE_HISTORICAL;
        if (b.invalid != invalid0)
            fprintf(stderr, "bench-micro: %s: %zu payloads failed validation\n", event_type_base(p->et),
                    b.invalid - invalid0);
        if (json)
            printf("{\"type\":\"%s\",\"history\":%s,\"bytes\":%.0f,\"rows_per_event\":%.2f,\"parse_ns\":%.1f,"
                   "\"parse_allocs\":%.3f,\"full_ns\":%.1f,\"allocs\":%.3f,\"frees\":%.3f,\"statements_per_batch\":%.2f,"
                   "\"full_ns_per_item\":%.1f}\n",
                   event_type_base(p->et), history ? "true" : "false", (double)bytes / (double)p->n,
                   full.items_per_msg, parse.ns_per_msg, parse.allocs_per_msg, full.ns_per_msg, full.allocs_per_msg,
                   full.frees_per_msg, full.statements_per_batch, full.ns_per_msg / (full.items_per_msg > 0 ? full.items_per_msg : 1));
        else
            printf("%-22s %6.0f %6.1f %12.0f %9.2f %11.0f %10.2f %9.2f %8.1f%s\n", event_type_base(p->et),
                   (double)bytes / (double)p->n, full.items_per_msg, parse.ns_per_msg, parse.allocs_per_msg,
                   full.ns_per_msg, full.allocs_per_msg, full.frees_per_msg, full.statements_per_batch,
                   history ? "  (per batch of 100 items)" : "");
        if (history && !json)
            printf("%-22s %6s %6s %12.0f %9.3f %11.0f %10.3f %9.3f   per item\n", "", "", "",
                   parse.ns_per_msg / full.items_per_msg, parse.allocs_per_msg / full.items_per_msg,
                   full.ns_per_msg / full.items_per_msg,
                   full.allocs_per_msg / full.items_per_msg, full.frees_per_msg / full.items_per_msg);
    }
    if (!json)
        printf("(parse = subject check + payload_parse; full = + last_metadata + store planning and $1 JSON of every "
               "statement; reimplemented row builder, see micro.c)\n");
    fprintf(stderr, "%s", b.sink ? "" : "bench-micro: nothing built?\n");
    payload_ctx_free(&b.ctx);
    store_scratch_free(&b.scratch);
    free(b.items);
    free(b.slots);
    return 0;
}
