/* rows.c - the JSON rows of every entity: each statement's one parameter is a JSON array of these objects (sql.h
 * reads them with jsonb_to_recordset). Objects the event carries (last_message, key, message_obj, ...) are copied as
 * the text that was sent, never re-printed. */
#include <string.h>

#include "internal.h"

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

/* One onboarding row for the messages order[from..to) of one (agent, phone), in stream order. The first message is
 * the one that would create the contact: it gives the identity, origin, assigned_to and first_message_*; the tags
 * are every campaign's tags in stream order (mes_merge_tags dedupes), which is what applying the messages one by
 * one ends with. */
static void row_onboarding(row_t *r, const store_item_t *items, const uint32_t *order, size_t from, size_t to,
                           const char *phones)
{
    uint32_t i = order[from];
    const message_upsert_t *m = &items[i].ev->u.msg;
    const char *phone = phones + (size_t)i * (PAYLOAD_MAX_PHONE + 1);
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
        const message_upsert_t *mk = &items[order[k]].ev->u.msg;
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

void store_rows(buf_t *b, const store_item_t *items, const uint32_t *idx, size_t n)
{
    buf_reset(b);
    buf_putc(b, '[');
    for (size_t k = 0; k < n; k++) {
        const store_item_t *it = &items[idx[k]];
        row_fn fn = row_writer(it->ev->type);
        row_t r;
        row_begin(&r, b, idx[k]);
        if (fn)
            fn(&r, it);
        row_end(&r, it);
    }
    buf_putc(b, ']');
}

void store_row_onboarding(buf_t *b, const store_item_t *items, const uint32_t *order, size_t from, size_t to,
                          const char *phones)
{
    row_t r;
    row_begin(&r, b, order[from]);
    row_onboarding(&r, items, order, from, to, phones);
    row_end(&r, &items[order[from]]);
}
