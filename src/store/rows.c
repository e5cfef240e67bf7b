/* rows.c - the rows of every entity as columns: a statement's parameter k is column k of all its rows, a text[] array
 * in PostgreSQL's binary format (array_recv), and sql.h unnests the columns and casts each to its type. Strings go as
 * their bytes, so PostgreSQL parses no JSON envelope: with one JSON array per statement (jsonb_to_recordset), parsing
 * that parameter at Bind took a third of the writer backend's CPU in a chats-only drain (2026-12-06 profile). Objects
 * the event carries (last_message, key, message_obj, ...) and last_metadata are sent as the text that was sent or
 * built, never re-printed, and become jsonb in SQL; absent fields are NULL elements. */
#include <string.h>

#include "internal.h"

/* ---- binary text[] columns ------------------------------------------------------------------------------------ */

#define TEXTOID 25
#define ARRAY_HEADER 20 /* ndim, flags, element type, then one dimension: size and lower bound */

static void put_be32(buf_t *b, uint32_t v)
{
    const char be[4] = {(char)(v >> 24), (char)(v >> 16), (char)(v >> 8), (char)v};
    buf_append(b, be, 4);
}

static void set_be32(buf_t *b, size_t at, uint32_t v)
{
    if (b->oom || at + 4 > b->len)
        return;
    b->data[at] = (char)(v >> 24);
    b->data[at + 1] = (char)(v >> 16);
    b->data[at + 2] = (char)(v >> 8);
    b->data[at + 3] = (char)v;
}

/* One row being written: each f_* call below appends the next column's element, in the column order of sql.h. */
typedef struct {
    store_scratch_t *s;
    int col;
} row_t;

static buf_t *next_col(row_t *r)
{
    return r->col < STORE_MAX_COLS ? &r->s->cols[r->col++] : NULL;
}

static void f_null(row_t *r)
{
    buf_t *b = next_col(r);
    if (b)
        put_be32(b, UINT32_MAX); /* length -1: NULL */
}

static void f_bytes(row_t *r, const char *p, size_t n)
{
    buf_t *b = next_col(r);
    if (!b)
        return;
    put_be32(b, (uint32_t)n);
    buf_append(b, p, n);
}

/* key: the column's name in sql.h, for the reader (the order of the calls is what counts). A JSON object goes as
 * the text that was sent and is cast to jsonb in SQL; a JSON null never gets here (the parser counts it as absent). */
static void f_str(row_t *r, const char *key, str_t v)
{
    (void)key;
    if (v.p)
        f_bytes(r, v.p, v.len);
    else
        f_null(r);
}

static void f_i64(row_t *r, const char *key, opt_i64_t v)
{
    (void)key;
    if (!v.set) {
        f_null(r);
        return;
    }
    buf_t *b = next_col(r);
    if (!b)
        return;
    size_t at = b->len;
    put_be32(b, 0);
    buf_put_i64(b, v.v);
    set_be32(b, at, (uint32_t)(b->len - at - 4));
}

static void f_tri(row_t *r, const char *key, tri_t v)
{
    (void)key;
    if (v == TRI_UNSET)
        f_null(r);
    else
        f_bytes(r, v == TRI_TRUE ? "true" : "false", v == TRI_TRUE ? 4 : 5);
}

static void cols_begin(store_scratch_t *s, int ncols)
{
    s->ncols = ncols;
    s->cols_bad = false;
    for (int c = 0; c < ncols; c++) {
        buf_reset(&s->cols[c]);
        buf_append(&s->cols[c], "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", ARRAY_HEADER);
    }
}

static void row_begin(row_t *r, store_scratch_t *s, uint32_t i)
{
    r->s = s;
    r->col = 0;
    f_i64(r, "i", (opt_i64_t){.set = true, .v = i});
}

static void row_end(row_t *r, const store_item_t *it)
{
    f_bytes(r, it->meta, it->meta_len); /* meta */
    if (r->col != r->s->ncols)
        r->s->cols_bad = true;
}

/* Fills in every column's header: one dimension of `rows` text elements from 1. Returns -1 when a column ran out of
 * memory or a row wrote another number of columns than its statement has (a bug: the arrays would not line up). */
static int cols_end(store_scratch_t *s, size_t rows)
{
    int rc = s->cols_bad ? -1 : 0;
    for (int c = 0; c < s->ncols; c++) {
        buf_t *b = &s->cols[c];
        set_be32(b, 0, 1);       /* ndim */
        set_be32(b, 4, 0);       /* flags: NULL elements are marked by their length alone */
        set_be32(b, 8, TEXTOID); /* element type */
        set_be32(b, 12, (uint32_t)rows);
        set_be32(b, 16, 1); /* lower bound */
        if (b->oom)
            rc = -1;
        s->col_vals[c] = b->data;
        s->col_lens[c] = (int)b->len;
    }
    return rc;
}

/* ---- the entities, column order as in sql.h ------------------------------------------------------------------ */

static void row_chat(row_t *r, const store_item_t *it)
{
    const chat_upsert_t *c = &it->ev->u.chat;
    f_str(r, "chat_id", c->chat_id);
    f_str(r, "jid", c->jid);
    f_str(r, "push_name", c->push_name);
    f_tri(r, "is_group", c->is_group);
    f_str(r, "group_name", c->group_name);
    f_i64(r, "unread_count", c->unread_count);
    f_str(r, "last_message", c->last_message);
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
    f_str(r, "last_message", c->last_message);
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
    f_str(r, "key", m->key);
    f_str(r, "message_obj", m->message_obj);
    f_str(r, "flow", m->flow);
    f_str(r, "agent_id", m->agent_id);
    f_str(r, "status", m->status);
    f_i64(r, "message_timestamp", m->message_timestamp);
    payload_days_to_date(m->message_date, date);
    f_bytes(r, date, strlen(date)); /* message_date */
}

static void row_message_update(row_t *r, const store_item_t *it)
{
    const message_update_t *m = &it->ev->u.msg_update;
    f_str(r, "message_id", m->message_id);
    f_str(r, "status", m->status);
    f_str(r, "message_url", m->message_url);
    f_str(r, "edited_message_obj", m->edited_message_obj);
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

/* Columns of each entity's rows: the row index, the fields above, last_metadata. */
static int row_columns(event_type_t t)
{
    switch (t) {
    case ET_CHATS_UPSERT: return 15;
    case ET_CHATS_UPDATE: return 8;
    case ET_MESSAGES_UPSERT: return 18;
    case ET_MESSAGES_UPDATE: return 7;
    case ET_CONTACTS_UPSERT:
    case ET_CONTACTS_UPDATE: return 7;
    case ET_CONNECTION_UPDATE: return 10;
    default: return 2;
    }
}

/* ---- onboarding ----------------------------------------------------------------------------------------- */

/* Onboarding applies to an IN message with a from_phone that has digits (SPEC 6). */
bool store_onboardable(const store_item_t *it, char phone[PAYLOAD_MAX_PHONE + 1], size_t *plen)
{
    const message_upsert_t *m = &it->ev->u.msg;
    if (!it->onboard || !m->flow.p || m->flow.len != 2 || memcmp(m->flow.p, "IN", 2) != 0 || !m->from_phone.p)
        return false;
    size_t n = m->from_phone.len > PAYLOAD_MAX_PHONE ? PAYLOAD_MAX_PHONE : m->from_phone.len;
    *plen = payload_phone_normalize(m->from_phone.p, n, phone);
    phone[*plen] = '\0';
    return *plen > 0;
}

#define ONB_COLUMNS 12

/* One onboarding row for the messages order[from..to) of one (agent, phone), in stream order. The first message is
 * the one that would create the contact: it gives the identity, origin, assigned_to and first_message_*; the tags
 * are every campaign's tags in stream order, joined with commas (mes_merge_tags dedupes), which is what applying the
 * messages one by one ends with. */
static void row_onboarding(row_t *r, const store_item_t *items, const uint32_t *order, size_t from, size_t to,
                           const char *phones)
{
    uint32_t i = order[from];
    const message_upsert_t *m = &items[i].ev->u.msg;
    const char *phone = phones + (size_t)i * (PAYLOAD_MAX_PHONE + 1);
    const str_t none = {NULL, 0};
    f_bytes(r, phone, strlen(phone)); /* phone */
    f_str(r, "agent_id", m->agent_id);
    f_str(r, "chat_id", m->chat_id);
    f_str(r, "company_id", m->company_id);
    f_str(r, "origin", m->has_campaign ? m->campaign_origin : none);
    f_str(r, "assigned_to", m->has_campaign ? m->campaign_assigned_to : none);
    f_str(r, "first_tags", m->has_campaign ? m->campaign_tags : none);
    buf_t *b = next_col(r); /* tags */
    if (b) {
        size_t at = b->len;
        bool any = false;
        put_be32(b, 0);
        for (size_t k = from; k < to; k++) {
            const message_upsert_t *mk = &items[order[k]].ev->u.msg;
            if (!mk->has_campaign || !mk->campaign_tags.p)
                continue;
            if (any)
                buf_putc(b, ',');
            buf_append(b, mk->campaign_tags.p, mk->campaign_tags.len);
            any = true;
        }
        set_be32(b, at, any ? (uint32_t)(b->len - at - 4) : UINT32_MAX);
    }
    f_str(r, "message_id", m->message_id);
    f_i64(r, "message_timestamp", m->message_timestamp);
}

/* ---- one statement's rows ------------------------------------------------------------------------------------ */

typedef void (*row_fn)(row_t *r, const store_item_t *it);

static row_fn row_writer(event_type_t t)
{
    switch (t) {
    case ET_CHATS_UPSERT: return row_chat;
    case ET_CHATS_UPDATE: return row_chat_update;
    case ET_MESSAGES_UPSERT: return row_message;
    case ET_MESSAGES_UPDATE: return row_message_update;
    case ET_CONTACTS_UPSERT:
    case ET_CONTACTS_UPDATE: return row_contact;
    case ET_CONNECTION_UPDATE: return row_agent;
    default: return NULL;
    }
}

int store_rows(store_scratch_t *s, const store_item_t *items, const uint32_t *idx, size_t n)
{
    cols_begin(s, n ? row_columns(items[idx[0]].ev->type) : 2);
    for (size_t k = 0; k < n; k++) {
        const store_item_t *it = &items[idx[k]];
        row_fn fn = row_writer(it->ev->type);
        row_t r;
        row_begin(&r, s, idx[k]);
        if (fn)
            fn(&r, it);
        row_end(&r, it);
    }
    return cols_end(s, n);
}

void store_onboarding_begin(store_scratch_t *s)
{
    cols_begin(s, ONB_COLUMNS);
}

void store_row_onboarding(store_scratch_t *s, const store_item_t *items, const uint32_t *order, size_t from, size_t to,
                          const char *phones)
{
    row_t r;
    row_begin(&r, s, order[from]);
    row_onboarding(&r, items, order, from, to, phones);
    row_end(&r, &items[order[from]]);
}

int store_onboarding_end(store_scratch_t *s, size_t rows)
{
    return cols_end(s, rows);
}
