/* batch.c - one transaction per batch: items split into key-unique rounds, one multi-row statement per round. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "sql.h"
#include "store.h"

/* ---- row JSON writers ------------------------------------------------------------------------------------ */

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

static void row_begin(row_t *r, buf_t *b, uint32_t i)
{
    r->b = b;
    r->first = true;
    if (b->len > 1)
        buf_putc(b, ',');
    buf_puts(b, "{\"i\":");
    buf_put_i64(b, i);
    r->first = false;
}

static void row_end(row_t *r, const store_item_t *it)
{
    key(r, "meta");
    buf_append(r->b, it->meta, it->meta_len);
    buf_putc(r->b, '}');
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
    payload_days_to_date(m->message_date, date);
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

/* ---- onboarding ----------------------------------------------------------------------------------------- */

/* Onboarding applies to an IN message with a from_phone that has digits (SPEC 6). */
static bool onboardable(const store_item_t *it, char phone[PAYLOAD_MAX_PHONE + 1], size_t *plen)
{
    const message_upsert_t *m = &it->ev->u.msg;
    if (!it->onboard || !m->flow.p || m->flow.len != 2 || memcmp(m->flow.p, "IN", 2) != 0 || !m->from_phone.p)
        return false;
    size_t n = m->from_phone.len > PAYLOAD_MAX_PHONE ? PAYLOAD_MAX_PHONE : m->from_phone.len;
    *plen = payload_phone_normalize(m->from_phone.p, n, phone);
    phone[*plen] = '\0';
    return *plen > 0;
}

/* One onboarding row for the messages order[from..to) of one (agent, phone), in stream order. The first message is
 * the one that would create the contact: it gives the identity, origin, assigned_to and first_message_*; the tags
 * are every campaign's tags in stream order (mes_merge_tags dedupes), which is what applying the messages one by
 * one ends with. */
static void row_onboarding(row_t *r, const store_scratch_t *s, const store_item_t *items, size_t from, size_t to)
{
    uint32_t i = s->order[from];
    const message_upsert_t *m = &items[i].ev->u.msg;
    const char *phone = s->phones + (size_t)i * (PAYLOAD_MAX_PHONE + 1);
    key(r, "phone");
    buf_put_json_str(r->b, phone, strlen(phone));
    f_str(r, "agent_id", m->agent_id);
    f_str(r, "chat_id", m->chat_id);
    f_str(r, "company_id", m->company_id);
    if (m->has_campaign) {
        f_str(r, "origin", m->campaign_origin);
        f_str(r, "assigned_to", m->campaign_assigned_to);
        f_str(r, "first_tags", m->campaign_tags);
    }
    bool any = false;
    for (size_t k = from; k < to; k++) {
        const message_upsert_t *mk = &items[s->order[k]].ev->u.msg;
        if (!mk->has_campaign || !mk->campaign_tags.p)
            continue;
        if (!any)
            key(r, "tags");
        /* JSON-escaped pieces joined with commas inside one string literal */
        buf_t *b = r->b;
        if (!any)
            buf_putc(b, '"');
        else
            buf_putc(b, ',');
        size_t before = b->len;
        buf_put_json_str(b, mk->campaign_tags.p, mk->campaign_tags.len);
        if (!b->oom && b->len >= before + 2) { /* drop the quotes buf_put_json_str added */
            memmove(b->data + before, b->data + before + 1, b->len - before - 2);
            b->len -= 2;
            b->data[b->len] = '\0';
        }
        any = true;
    }
    if (any)
        buf_putc(r->b, '"');
    f_str(r, "message_id", m->message_id);
    f_i64(r, "message_timestamp", m->message_timestamp);
}

/* ---- keys and rounds -------------------------------------------------------------------------------------- */

typedef struct {
    str_t a, b;
} key_t_;

/* Onboarding identity is (agent_id, normalised phone): computed once per item into s->phones by plan(). */
static key_t_ item_key(const store_scratch_t *s, const store_item_t *items, uint32_t i, bool onboarding)
{
    const event_t *ev = items[i].ev;
    key_t_ k = {{NULL, 0}, {NULL, 0}};
    if (onboarding) {
        k.a = ev->u.msg.agent_id;
        k.b.p = s->phones + (size_t)i * (PAYLOAD_MAX_PHONE + 1);
        k.b.len = (uint32_t)strlen(k.b.p);
        return k;
    }
    switch (ev->type) {
    case ET_CHATS_UPSERT: k.a = ev->u.chat.chat_id; break;
    case ET_CHATS_UPDATE: k.a = ev->u.chat_update.chat_id; break;
    case ET_MESSAGES_UPSERT: /* conflict key is (message_id, message_date) */
        k.a = ev->u.msg.message_id;
        k.b.p = (const char *)&ev->u.msg.message_date;
        k.b.len = sizeof ev->u.msg.message_date;
        break;
    case ET_MESSAGES_UPDATE: k.a = ev->u.msg_update.message_id; break;
    case ET_CONTACTS_UPSERT:
    case ET_CONTACTS_UPDATE:
        k.a = ev->u.contact.agent_id;
        k.b = ev->u.contact.phone_number;
        break;
    case ET_CONNECTION_UPDATE: k.a = ev->u.agent.agent_id; break;
    default: break;
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
    key_t_ ka = item_key(ctx->s, ctx->items, ia, ctx->onboarding),
           kb = item_key(ctx->s, ctx->items, ib, ctx->onboarding);
    int c = str_cmp(ka.a, kb.a);
    if (!c)
        c = str_cmp(ka.b, kb.b);
    if (!c)
        c = ia < ib ? -1 : ia > ib; /* stream order within a key */
    return c;
}

void store_scratch_init(store_scratch_t *s)
{
    memset(s, 0, sizeof *s);
    buf_init(&s->json);
}

void store_scratch_free(store_scratch_t *s)
{
    buf_free(&s->json);
    free(s->order);
    free(s->round);
    free(s->ops);
    free(s->opidx);
    free(s->phones);
    memset(s, 0, sizeof *s);
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

/* ---- statements: prepared once per session, sent pipelined ----------------------------------------------------- */

/* Every statement the writers use; prepared on a session's first batch, so a batch costs no parse or plan. */
typedef enum {
    ST_CHATS_UPSERT,
    ST_CHATS_UPDATE,
    ST_MESSAGES_UPSERT,
    ST_MESSAGES_UPDATE,
    ST_CONTACTS_UPSERT,
    ST_CONTACTS_UPDATE,
    ST_AGENTS_INSERT,
    ST_AGENTS_UPDATE,
    ST_ONB_CREATE,
    ST_ONB_MERGE,
    ST_ONB_LOG,
    ST_COUNT
} stmt_t;

static const char *const stmt_sql[ST_COUNT] = {
    SQL_CHATS_UPSERT,    SQL_CHATS_UPDATE,    SQL_MESSAGES_UPSERT, SQL_MESSAGES_UPDATE,
    SQL_CONTACTS_UPSERT, SQL_CONTACTS_UPDATE, SQL_AGENTS_INSERT,   SQL_AGENTS_UPDATE,
    SQL_ONB_CREATE,      SQL_ONB_MERGE,       SQL_ONB_LOG,
};

static void stmt_name(stmt_t st, char out[16])
{
    snprintf(out, 16, "mes_st_%d", (int)st);
}

static int prepare_all(db_conn_t *c, db_error_t *err)
{
    /* Every writer statement finds its rows by key through a unique index. The planner guesses 100 rows for the
     * JSON array and would switch to sequential scans once a table has some thousands of rows (see sql.h), making
     * each batch cost O(table); on the writer sessions a sequential scan is never the right plan. */
    if (db_command(c, "SET enable_seqscan = off", err) != 0)
        return -1;
    for (int st = 0; st < ST_COUNT; st++) {
        char name[16];
        stmt_name((stmt_t)st, name);
        PGresult *r = PQprepare(c->pg, name, stmt_sql[st], 1, NULL);
        if (!r || PQresultStatus(r) != PGRES_COMMAND_OK) {
            db_error_from(err, c->pg, r);
            PQclear(r);
            return -1;
        }
        PQclear(r);
    }
    c->store_prepared = true;
    return 0;
}

typedef void (*row_fn)(row_t *r, const store_item_t *it);

typedef struct {
    event_type_t type;
    row_fn row;
    stmt_t st;
    int st2; /* second statement over the same rows, or -1 */
    bool returns_found;
    db_op_t op;
    db_entity_t ent;
} writer_t;

static const writer_t writers[] = {
    {ET_CHATS_UPSERT, row_chat, ST_CHATS_UPSERT, -1, false, DBOP_BULK_UPSERT, DBENT_CHAT},
    {ET_CHATS_UPDATE, row_chat_update, ST_CHATS_UPDATE, -1, true, DBOP_UPDATE, DBENT_CHAT},
    {ET_MESSAGES_UPSERT, row_message, ST_MESSAGES_UPSERT, -1, false, DBOP_BULK_UPSERT, DBENT_MESSAGE},
    {ET_MESSAGES_UPDATE, row_message_update, ST_MESSAGES_UPDATE, -1, true, DBOP_UPDATE, DBENT_MESSAGE},
    {ET_CONTACTS_UPSERT, row_contact, ST_CONTACTS_UPSERT, -1, false, DBOP_BULK_UPSERT, DBENT_CONTACT},
    {ET_CONTACTS_UPDATE, row_contact, ST_CONTACTS_UPDATE, -1, true, DBOP_UPDATE, DBENT_CONTACT},
    {ET_CONNECTION_UPDATE, row_agent, ST_AGENTS_INSERT, ST_AGENTS_UPDATE, false, DBOP_UPSERT, DBENT_AGENT},
};

/* What to do with a statement's result once it arrives. OP_CTL: BEGIN / COMMIT / ROLLBACK (no metrics). */
typedef enum { OP_PLAIN, OP_FOUND, OP_ONB_CREATE, OP_CTL } op_kind_t;

/* One statement in flight: its result is read after the sync; `first`/`count` index the round's items in s->opidx. */
struct store_op {
    op_kind_t kind;
    db_op_t op;
    db_entity_t ent;
    uint32_t first, count;
};

static bool ops_grow(store_scratch_t *s, size_t nidx)
{
    if (s->nops == s->ops_cap) {
        size_t cap = s->ops_cap ? s->ops_cap * 2 : 32;
        store_op_t *o = realloc(s->ops, cap * sizeof *o);
        if (!o)
            return false;
        s->ops = o;
        s->ops_cap = cap;
    }
    if (s->nopidx + nidx > s->opidx_cap) {
        size_t cap = s->opidx_cap ? s->opidx_cap : 256;
        while (cap < s->nopidx + nidx)
            cap *= 2;
        uint32_t *x = realloc(s->opidx, cap * sizeof *x);
        if (!x)
            return false;
        s->opidx = x;
        s->opidx_cap = cap;
    }
    return true;
}

/* Queues a transaction-control command. */
static int send_ctl(db_conn_t *c, store_scratch_t *s, const char *cmd, db_error_t *err)
{
    if (!ops_grow(s, 0) || !PQsendQueryParams(c->pg, cmd, 0, NULL, NULL, NULL, NULL, 0)) {
        db_error_from(err, c->pg, NULL);
        return -1;
    }
    s->ops[s->nops++] = (store_op_t){.kind = OP_CTL};
    return 0;
}

/* Queues one statement over the rows in s->json; the round's items are remembered for the result. */
static int send(db_conn_t *c, store_scratch_t *s, stmt_t st, op_kind_t kind, db_op_t op, db_entity_t ent,
                const uint32_t *idx, size_t k, db_error_t *err)
{
    char name[16];
    if (s->json.oom || !ops_grow(s, k)) {
        snprintf(err->message, sizeof err->message, "out of memory building a batch of %zu rows", k);
        err->sqlstate[0] = '\0';
        err->cls = ERR_UNKNOWN;
        err->retryable = true;
        err->outage = false;
        return -1;
    }
    stmt_name(st, name);
    const char *params[1] = {s->json.data};
    if (s->emit)
        s->emit(s->emit_arg, name, s->json.data, s->json.len);
    else if (!PQsendQueryPrepared(c->pg, name, 1, params, NULL, NULL, 0)) {
        db_error_from(err, c->pg, NULL);
        return -1;
    }
    store_op_t *o = &s->ops[s->nops++];
    *o = (store_op_t){.kind = kind, .op = op, .ent = ent, .first = (uint32_t)s->nopidx, .count = (uint32_t)k};
    memcpy(s->opidx + s->nopidx, idx, k * sizeof *idx);
    s->nopidx += k;
    return 0;
}

/* Builds the JSON rows of one round of `order[0..n)`. */
static void build_rows(buf_t *b, const store_item_t *items, const uint32_t *idx, size_t n, row_fn fn)
{
    buf_reset(b);
    buf_putc(b, '[');
    for (size_t k = 0; k < n; k++) {
        row_t r;
        row_begin(&r, b, idx[k]);
        fn(&r, &items[idx[k]]);
        row_end(&r, &items[idx[k]]);
    }
    buf_putc(b, ']');
}

/* Collects the items selected by `want` into s->order sorted by key, and assigns each its round (its rank among the
 * items with the same key). Returns the count and the number of rounds. */
static size_t plan(store_scratch_t *s, const store_item_t *items, size_t n,
                   bool (*want)(const store_item_t *, const void *), const void *arg, bool onboarding, uint32_t *rounds)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        size_t plen = 0;
        /* Onboarding: the normalised phone (its identity) is computed once, straight into s->phones. */
        bool keep = onboarding ? items[i].ev->type == ET_MESSAGES_UPSERT &&
                                     onboardable(&items[i], s->phones + i * (PAYLOAD_MAX_PHONE + 1), &plen)
                               : want(&items[i], arg);
        if (keep)
            s->order[m++] = (uint32_t)i;
    }
    sort_ctx_t ctx = {s, items, onboarding};
    qsort_r(s->order, m, sizeof *s->order, cmp_items, &ctx);
    uint32_t maxr = 0;
    for (size_t k = 0; k < m; k++) {
        uint32_t r = 0;
        if (k > 0) {
            key_t_ a = item_key(s, items, s->order[k - 1], onboarding), b = item_key(s, items, s->order[k], onboarding);
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

static bool want_type(const store_item_t *it, const void *arg)
{
    return it->ev->type == *(const event_type_t *)arg;
}

/* Items of round r, in key order, gathered into idx. */
static size_t round_items(const store_scratch_t *s, size_t m, uint32_t r, uint32_t *idx)
{
    size_t k = 0;
    for (size_t j = 0; j < m; j++)
        if (s->round[j] == r)
            idx[k++] = s->order[j];
    return k;
}

static int write_entity(db_conn_t *c, const writer_t *w, store_item_t *items, size_t n, store_scratch_t *s,
                        uint32_t *idx, db_error_t *err)
{
    uint32_t rounds = 0;
    size_t m = plan(s, items, n, want_type, &w->type, false, &rounds);
    for (uint32_t r = 0; r < rounds && m; r++) {
        size_t k = round_items(s, m, r, idx);
        build_rows(&s->json, items, idx, k, w->row);
        if (send(c, s, w->st, w->returns_found ? OP_FOUND : OP_PLAIN, w->op, w->ent, idx, k, err) != 0)
            return -1;
        if (w->st2 >= 0 && send(c, s, (stmt_t)w->st2, OP_PLAIN, w->op, w->ent, idx, k, err) != 0)
            return -1;
    }
    return 0;
}

static bool same_owner(const store_scratch_t *s, uint32_t i, const store_item_t *it, const char *agent, int alen,
                       const char *phone, int plen)
{
    const char *p = s->phones + (size_t)i * (PAYLOAD_MAX_PHONE + 1);
    const str_t *a = &it->ev->u.msg.agent_id;
    return a->len == (uint32_t)alen && memcmp(a->p, agent, (size_t)alen) == 0 && strlen(p) == (size_t)plen &&
           memcmp(p, phone, (size_t)plen) == 0;
}

static bool same_key(const store_scratch_t *s, const store_item_t *items, uint32_t a, uint32_t b)
{
    key_t_ ka = item_key(s, items, a, true), kb = item_key(s, items, b, true);
    return str_cmp(ka.a, kb.a) == 0 && str_cmp(ka.b, kb.b) == 0;
}

/* One row (and so one round) per (agent, phone) in the batch, however many of its messages the batch holds. */
static int write_onboarding(db_conn_t *c, store_item_t *items, size_t n, store_scratch_t *s, uint32_t *idx,
                            db_error_t *err)
{
    uint32_t rounds = 0;
    size_t m = plan(s, items, n, NULL, NULL, true, &rounds);
    s->onboarding = m;
    if (m == 0)
        return 0;
    buf_reset(&s->json);
    buf_putc(&s->json, '[');
    size_t k = 0;
    for (size_t from = 0; from < m;) {
        size_t to = from + 1;
        while (to < m && same_key(s, items, s->order[from], s->order[to]))
            to++;
        for (size_t j = from; j < to; j++)
            items[s->order[j]].onb = ONB_SUCCESS_EXISTS; /* until the create statement says it made the contact */
        row_t r;
        row_begin(&r, &s->json, s->order[from]);
        row_onboarding(&r, s, items, from, to);
        row_end(&r, &items[s->order[from]]);
        idx[k++] = s->order[from];
        from = to;
    }
    buf_putc(&s->json, ']');
    if (send(c, s, ST_ONB_CREATE, OP_ONB_CREATE, DBOP_UPSERT, DBENT_CONTACT, idx, k, err) != 0 ||
        send(c, s, ST_ONB_MERGE, OP_PLAIN, DBOP_UPDATE, DBENT_CONTACT, idx, k, err) != 0 ||
        send(c, s, ST_ONB_LOG, OP_PLAIN, DBOP_SAVE, DBENT_ONBOARDING_LOG, idx, k, err) != 0)
        return -1;
    return 0;
}

/* Applies one statement's result to its items. */
static void apply_result(const store_scratch_t *s, const store_op_t *o, const PGresult *res, store_item_t *items,
                         size_t n)
{
    const uint32_t *idx = s->opidx + o->first;
    if (o->kind == OP_FOUND) {
        for (uint32_t j = 0; j < o->count; j++)
            items[idx[j]].result = ERR_NOT_FOUND;
        for (int t = 0; t < PQntuples(res); t++) {
            long i = strtol(PQgetvalue(res, t, 0), NULL, 10);
            if (i >= 0 && (size_t)i < n)
                items[i].result = ERR_NONE;
        }
    } else if (o->kind == OP_ONB_CREATE) {
        for (int t = 0; t < PQntuples(res); t++) {
            const char *agent = PQgetvalue(res, t, 0), *phone = PQgetvalue(res, t, 1);
            int alen = PQgetlength(res, t, 0), plen = PQgetlength(res, t, 1);
            for (uint32_t j = 0; j < o->count; j++)
                if (same_owner(s, idx[j], &items[idx[j]], agent, alen, phone, plen)) {
                    items[idx[j]].onb = ONB_SUCCESS_CREATED;
                    break;
                }
        }
    }
}

/* Reads every queued statement's result and the sync. Each statement's duration is the time since the previous
 * result arrived, so the observations add up to the batch's wall time. Returns 0, or -1 with the first error. */
static int collect(db_conn_t *c, store_scratch_t *s, store_item_t *items, size_t n, double t_sent, db_error_t *err)
{
    int rc = 0;
    double prev = t_sent;
    for (size_t k = 0; k < s->nops; k++) {
        PGresult *res = PQgetResult(c->pg);
        if (!res) {
            db_error_from(err, c->pg, NULL);
            return -1; /* the session is gone; the caller drops it */
        }
        ExecStatusType st = PQresultStatus(res);
        double now = clock_mono_s();
        bool ok = st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK;
        if (s->ops[k].kind != OP_CTL) /* BEGIN/COMMIT time counts toward the next statement / the sync */
            metrics_db_duration(s->ops[k].op, s->ops[k].ent, ok, now - prev);
        if (s->ops[k].kind != OP_CTL || k == 0)
            prev = now;
        if (ok && rc == 0)
            apply_result(s, &s->ops[k], res, items, n);
        else if (!ok && rc == 0 && st != PGRES_PIPELINE_ABORTED) {
            db_error_from(err, c->pg, res);
            rc = -1;
        }
        PQclear(res);
        while ((res = PQgetResult(c->pg)) != NULL) /* the NULL that ends each statement's results */
            PQclear(res);
    }
    PGresult *sync = PQgetResult(c->pg);
    if (!sync || PQresultStatus(sync) != PGRES_PIPELINE_SYNC) {
        if (rc == 0)
            db_error_from(err, c->pg, sync);
        rc = -1;
    }
    PQclear(sync);
    return rc;
}

/* One round trip per batch: BEGIN, every statement, COMMIT, then one sync, and the results. A statement that cannot
 * even be queued rolls back whatever was (never commit part of a batch). Leaves pipeline mode, and the session
 * outside any transaction. */
static int pipeline_commit(db_conn_t *c, store_scratch_t *s, store_item_t *items, size_t n, uint32_t *idx,
                           db_error_t *err)
{
    if (!PQenterPipelineMode(c->pg)) {
        db_error_from(err, c->pg, NULL);
        return -1;
    }
    int rc = -1;
    bool queued = send_ctl(c, s, "BEGIN", err) == 0;
    for (size_t w = 0; queued && w < sizeof writers / sizeof writers[0]; w++)
        queued = write_entity(c, &writers[w], items, n, s, idx, err) == 0;
    queued = queued && write_onboarding(c, items, n, s, idx, err) == 0 && send_ctl(c, s, "COMMIT", err) == 0;
    if (queued) {
        metrics_onboarding_queue_add((long)s->onboarding);
        if (PQpipelineSync(c->pg))
            rc = collect(c, s, items, n, clock_mono_s(), err);
        else
            db_error_from(err, c->pg, NULL);
        metrics_onboarding_queue_add(-(long)s->onboarding);
    } else if (send_ctl(c, s, "ROLLBACK", err) == 0 && PQpipelineSync(c->pg)) {
        db_error_t ignored;
        (void)collect(c, s, items, n, clock_mono_s(), &ignored);
    }
    if (!PQexitPipelineMode(c->pg) && rc == 0) {
        db_error_from(err, c->pg, NULL);
        rc = -1;
    }
    /* After an error inside BEGIN the session sits in an aborted transaction until ROLLBACK. */
    if (db_ok(c) && PQtransactionStatus(c->pg) != PQTRANS_IDLE)
        db_rollback(c);
    return rc;
}

int store_commit(db_conn_t *c, store_item_t *items, size_t n, store_scratch_t *s, db_error_t *err)
{
    uint32_t *idx = NULL;
    for (size_t i = 0; i < n; i++) {
        items[i].result = ERR_NONE;
        items[i].onb =
            (items[i].onboard && items[i].ev->type == ET_MESSAGES_UPSERT) ? ONB_SKIPPED_NOT_APPLICABLE : ONB_COUNT;
    }
    if (n == 0)
        return 0;
    if (!db_ok(c)) {
        db_error_from(err, c ? c->pg : NULL, NULL);
        return -1;
    }
    if (!scratch_grow(s, n) || !(idx = malloc(n * sizeof *idx))) {
        snprintf(err->message, sizeof err->message, "out of memory planning a batch of %zu", n);
        err->sqlstate[0] = '\0';
        err->cls = ERR_UNKNOWN;
        err->retryable = true;
        err->outage = false;
        free(idx);
        return -1;
    }
    if (!c->store_prepared && prepare_all(c, err) != 0) {
        free(idx);
        return -1;
    }
    s->nops = s->nopidx = 0;
    s->onboarding = 0;
    int rc = pipeline_commit(c, s, items, n, idx, err);
    free(idx);
    if (rc != 0)
        for (size_t i = 0; i < n; i++)
            if (items[i].onb != ONB_COUNT)
                items[i].onb = ONB_ERROR_DB;
    return rc;
}

int store_build_statements(store_item_t *items, size_t n, store_scratch_t *s,
                           void (*emit)(void *arg, const char *stmt, const char *json, size_t len), void *arg)
{
    db_error_t err;
    int rc = -1;
    uint32_t *idx = NULL;
    if (n == 0)
        return 0;
    if (!scratch_grow(s, n) || !(idx = malloc(n * sizeof *idx)))
        goto cleanup;
    s->emit = emit;
    s->emit_arg = arg;
    s->nops = s->nopidx = 0;
    for (size_t w = 0; w < sizeof writers / sizeof writers[0]; w++)
        if (write_entity(NULL, &writers[w], items, n, s, idx, &err) != 0)
            goto cleanup;
    if (write_onboarding(NULL, items, n, s, idx, &err) != 0)
        goto cleanup;
    rc = 0;
cleanup:
    s->emit = NULL;
    free(idx);
    return rc;
}
