/* plan.c - the order of a transaction's writes: per entity in a fixed order, each entity's items sorted by key and
 * split into rounds (the n-th item of a key goes in round n), one multi-row statement per round. A round never
 * names a key twice, so each statement's rows are independent, and the rounds in order give the result of
 * applying the items one by one. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "sql.h"

const stmt_info_t store_stmt_info[ST_COUNT] = {
    [ST_CHATS_UPSERT] = {SQL_CHATS_UPSERT, OP_PLAIN, DBOP_BULK_UPSERT, DBENT_CHAT},
    [ST_CHATS_UPDATE] = {SQL_CHATS_UPDATE, OP_FOUND, DBOP_UPDATE, DBENT_CHAT},
    [ST_MESSAGES_UPSERT] = {SQL_MESSAGES_UPSERT, OP_PLAIN, DBOP_BULK_UPSERT, DBENT_MESSAGE},
    [ST_MESSAGES_UPDATE] = {SQL_MESSAGES_UPDATE, OP_FOUND, DBOP_UPDATE, DBENT_MESSAGE},
    [ST_CONTACTS_UPSERT] = {SQL_CONTACTS_UPSERT, OP_PLAIN, DBOP_BULK_UPSERT, DBENT_CONTACT, true},
    [ST_CONTACTS_UPDATE] = {SQL_CONTACTS_UPDATE, OP_FOUND, DBOP_UPDATE, DBENT_CONTACT, true},
    [ST_AGENTS_INSERT] = {SQL_AGENTS_INSERT, OP_PLAIN, DBOP_UPSERT, DBENT_AGENT, true},
    [ST_AGENTS_UPDATE] = {SQL_AGENTS_UPDATE, OP_PLAIN, DBOP_UPSERT, DBENT_AGENT, true},
    [ST_ONB_CREATE] = {SQL_ONB_CREATE, OP_ONB_CREATE, DBOP_UPSERT, DBENT_CONTACT, true},
    [ST_ONB_MERGE] = {SQL_ONB_MERGE, OP_PLAIN, DBOP_UPDATE, DBENT_CONTACT, true},
    [ST_ONB_LOG] = {SQL_ONB_LOG, OP_PLAIN, DBOP_SAVE, DBENT_ONBOARDING_LOG, true},
};

const char *store_statement_name(int st)
{
    static const char *const names[ST_COUNT] = {"mes_st_0", "mes_st_1", "mes_st_2", "mes_st_3", "mes_st_4", "mes_st_5",
                                                "mes_st_6", "mes_st_7", "mes_st_8", "mes_st_9", "mes_st_10"};
    return st >= 0 && st < ST_COUNT ? names[st] : "mes_st_unknown";
}

/* The stages of a transaction, in order: each entity's items and the statements over each of its rounds. */
typedef struct {
    event_type_t type;
    int st[2]; /* the statements over one round's rows; -1: none */
} stage_t;

static const stage_t stages[] = {
    {ET_CHATS_UPSERT, {ST_CHATS_UPSERT, -1}},
    {ET_CHATS_UPDATE, {ST_CHATS_UPDATE, -1}},
    {ET_MESSAGES_UPSERT, {ST_MESSAGES_UPSERT, -1}},
    {ET_MESSAGES_UPDATE, {ST_MESSAGES_UPDATE, -1}},
    {ET_CONTACTS_UPSERT, {ST_CONTACTS_UPSERT, -1}},
    {ET_CONTACTS_UPDATE, {ST_CONTACTS_UPDATE, -1}},
    {ET_CONNECTION_UPDATE, {ST_AGENTS_INSERT, ST_AGENTS_UPDATE}},
};
#define N_STAGES ((int)(sizeof stages / sizeof stages[0]))
/* After the entities: onboarding, three statements over one row per (agent, phone). */
static const int onboarding_st[] = {ST_ONB_CREATE, ST_ONB_MERGE, ST_ONB_LOG};

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
    for (int c = 0; c < STORE_MAX_COLS; c++)
        buf_init(&s->cols[c]);
}

void store_scratch_free(store_scratch_t *s)
{
    for (int c = 0; c < STORE_MAX_COLS; c++)
        buf_free(&s->cols[c]);
    free(s->order);
    free(s->round);
    free(s->idx);
    free(s->ops);
    free(s->opidx);
    free(s->phones);
    memset(s, 0, sizeof *s);
}

/* The per-item arrays share one capacity: each grows from it to the same new size. */
static bool scratch_grow(store_scratch_t *s, size_t n)
{
    size_t c1 = s->cap, c2 = s->cap, c3 = s->cap, c4 = s->cap;
    uint32_t *o = buf_array_grow(s->order, &c1, n, sizeof *o, 256);
    if (!o)
        return false;
    s->order = o;
    uint32_t *r = buf_array_grow(s->round, &c2, n, sizeof *r, 256);
    if (!r)
        return false;
    s->round = r;
    uint32_t *x = buf_array_grow(s->idx, &c3, n, sizeof *x, 256);
    if (!x)
        return false;
    s->idx = x;
    char *ph = buf_array_grow(s->phones, &c4, n, PAYLOAD_MAX_PHONE + 1, 256);
    if (!ph)
        return false;
    s->phones = ph;
    s->cap = c4;
    return true;
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
                                     store_onboardable(&items[i], s->phones + i * (PAYLOAD_MAX_PHONE + 1), &plen)
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

static bool same_key(const store_scratch_t *s, const store_item_t *items, uint32_t a, uint32_t b)
{
    key_t_ ka = item_key(s, items, a, true), kb = item_key(s, items, b, true);
    return str_cmp(ka.a, kb.a) == 0 && str_cmp(ka.b, kb.b) == 0;
}

/* Onboarding's rows: one per (agent, phone) of the transaction, however many of its messages it holds; s->idx gets
 * the first item of each. Returns the row count. */
static size_t onboarding_rows(store_scratch_t *s)
{
    store_item_t *items = s->items;
    size_t k = 0;
    store_onboarding_begin(s);
    for (size_t from = 0; from < s->m;) {
        size_t to = from + 1;
        while (to < s->m && same_key(s, items, s->order[from], s->order[to]))
            to++;
        for (size_t j = from; j < to; j++)
            items[s->order[j]].onb = ONB_SUCCESS_EXISTS; /* until the create statement says it made the contact */
        store_row_onboarding(s, items, s->order, from, to, s->phones);
        s->idx[k++] = s->order[from];
        from = to;
    }
    s->rows_rc = store_onboarding_end(s, k);
    return k;
}

int store_plan_begin(store_scratch_t *s, store_item_t *items, size_t n)
{
    s->items = items;
    s->n = n;
    s->stage = 0;
    s->planned = false;
    s->sub = 0;
    s->m = s->k = 0;
    s->onboarding = 0;
    s->rows_rc = 0;
    return n == 0 || scratch_grow(s, n) ? 0 : -1;
}

static int yield(store_scratch_t *s, int st, store_stmt_t *out)
{
    if (s->rows_rc != 0)
        return -1;
    *out = (store_stmt_t){
        .st = st, .nparams = s->ncols, .values = s->col_vals, .lengths = s->col_lens, .idx = s->idx, .rows = s->k};
    s->sub++;
    return 1;
}

int store_plan_next(store_scratch_t *s, store_stmt_t *out)
{
    if (s->n == 0)
        return 0;
    for (;;) {
        if (s->stage < N_STAGES) {
            const stage_t *g = &stages[s->stage];
            if (s->sub == 1 && g->st[1] >= 0) /* a second statement over the same rows */
                return yield(s, g->st[1], out);
            if (!s->planned) {
                s->m = plan(s, s->items, s->n, want_type, &g->type, false, &s->rounds);
                s->next_round = 0;
                s->planned = true;
            }
            if (s->m && s->next_round < s->rounds) {
                s->k = round_items(s, s->m, s->next_round++, s->idx);
                s->rows_rc = store_rows(s, s->items, s->idx, s->k);
                s->sub = 0;
                return yield(s, g->st[0], out);
            }
            s->stage++;
            s->planned = false;
            s->sub = 0;
            continue;
        }
        if (s->stage == N_STAGES) {
            if (!s->planned) {
                s->m = plan(s, s->items, s->n, NULL, NULL, true, &s->rounds);
                s->onboarding = s->m;
                s->planned = true;
                s->sub = 0;
                if (s->m)
                    s->k = onboarding_rows(s);
            }
            if (s->m && s->sub < (int)(sizeof onboarding_st / sizeof onboarding_st[0]))
                return yield(s, onboarding_st[s->sub], out);
            s->stage++;
        }
        return 0;
    }
}
