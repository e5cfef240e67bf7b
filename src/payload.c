/* payload.c - JSON payload -> typed, validated events (SPEC 2): one field table per event type drives every rule. */
#include "payload.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "text.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define MAX_FIELDS 20  /* most fields in one table; each has a canonical and an alias slot */
#define MAX_KEY_LEN 32 /* no known key is longer, so longer keys are skipped without decoding */
#define SHOW_MAX 64    /* bytes of a sent value quoted in an error message */

typedef enum {
    K_STR,      /* string of at most `limit` decoded bytes */
    K_CPHONE,   /* contact identity phone: string (limit on the value as sent), stored normalised to digits */
    K_COMPANY,  /* must equal <co>: filled when absent in realtime payloads, required in history items */
    K_FLOW,     /* "IN" or "OUT" */
    K_BOOL,     /* tri_t */
    K_COUNT,    /* int32 >= 0 */
    K_DELTA,    /* int32, any sign */
    K_TS,       /* int64 >= 0, Unix seconds (milliseconds normalised) */
    K_MSGTS,    /* int64 any sign, Unix seconds (milliseconds normalised) */
    K_OBJ,      /* object kept as raw text (str_t at off); members checked against `sub` when set */
    K_CAMPAIGN, /* object whose members (`sub`) are stored in the same struct; off is the has_campaign flag */
    K_ITEMS,    /* history container array of at most `limit` items */
} kind_t;

#define REQ 0x01     /* required: present, not null, and (for strings) not blank */
#define INHERIT 0x02 /* history messages: an item without it takes the container's agent_id */

typedef struct field field_t;
struct field {
    const char *name;  /* canonical key */
    const char *alias; /* "" when none; when both are sent the canonical key wins (see apply) */
    uint8_t name_len, alias_len;
    uint8_t kind;
    uint8_t flags;
    uint32_t limit;
    int32_t off; /* destination offset in the struct being filled; -1: validated, not stored */
    const field_t *sub;
    uint32_t nsub;
};

typedef struct {
    const field_t *f;
    uint32_t n;
} table_t;

#define FIELD(T, m, nm, al, kind, flags, limit)                                                                        \
    {                                                                                                                  \
        nm, al, sizeof(nm) - 1, sizeof(al) - 1, kind, flags, limit, (int32_t)offsetof(T, m), NULL, 0                   \
    }
#define CHECK_ONLY(nm, al, kind, flags, limit)                                                                         \
    {                                                                                                                  \
        nm, al, sizeof(nm) - 1, sizeof(al) - 1, kind, flags, limit, -1, NULL, 0                                        \
    }
#define OBJECT(T, m, nm, kind, sub)                                                                                    \
    {                                                                                                                  \
        nm, "", sizeof(nm) - 1, 0, kind, 0, PAYLOAD_MAX_OBJECT, (int32_t)offsetof(T, m), sub, ARRAY_LEN(sub)           \
    }
#define TABLE(a)                                                                                                       \
    {                                                                                                                  \
        a, ARRAY_LEN(a)                                                                                                \
    }

static const field_t chat_upsert_fields[] = {
    FIELD(chat_upsert_t, chat_id, "chat_id", "", K_STR, REQ, PAYLOAD_MAX_ID),
    FIELD(chat_upsert_t, jid, "jid", "", K_STR, REQ, PAYLOAD_MAX_ID),
    FIELD(chat_upsert_t, agent_id, "agent_id", "", K_STR, REQ, PAYLOAD_MAX_ID),
    FIELD(chat_upsert_t, phone_number, "phone_number", "", K_STR, REQ, PAYLOAD_MAX_PHONE),
    FIELD(chat_upsert_t, push_name, "push_name", "", K_STR, 0, PAYLOAD_MAX_STRING),
    FIELD(chat_upsert_t, group_name, "group_name", "", K_STR, 0, PAYLOAD_MAX_STRING),
    FIELD(chat_upsert_t, custom_name, "custom_name", "", K_STR, 0, PAYLOAD_MAX_STRING),
    FIELD(chat_upsert_t, company_id, "company_id", "", K_COMPANY, 0, 0),
    FIELD(chat_upsert_t, is_group, "is_group", "", K_BOOL, 0, 0),
    FIELD(chat_upsert_t, not_spam, "not_spam", "", K_BOOL, 0, 0),
    FIELD(chat_upsert_t, last_message, "last_message", "", K_OBJ, 0, PAYLOAD_MAX_OBJECT),
    FIELD(chat_upsert_t, conversation_timestamp, "conversation_timestamp", "", K_TS, 0, 0),
    FIELD(chat_upsert_t, unread_count, "unread_count", "", K_COUNT, 0, 0),
};

static const field_t chat_update_fields[] = {
    FIELD(chat_update_t, chat_id, "chat_id", "id", K_STR, REQ, PAYLOAD_MAX_ID),
    FIELD(chat_update_t, agent_id, "agent_id", "", K_STR, 0, PAYLOAD_MAX_ID),
    FIELD(chat_update_t, unread_count, "unread_count", "", K_COUNT, 0, 0),
    FIELD(chat_update_t, unread_delta, "unread_delta", "", K_DELTA, 0, 0),
    FIELD(chat_update_t, conversation_timestamp, "conversation_timestamp", "", K_TS, 0, 0),
    FIELD(chat_update_t, last_message, "last_message", "", K_OBJ, 0, PAYLOAD_MAX_OBJECT),
    CHECK_ONLY("company_id", "", K_COMPANY, 0, 0),
};

/* The key object is stored raw; these members are only checked. */
static const field_t message_key_fields[] = {
    CHECK_ONLY("id", "", K_STR, REQ, PAYLOAD_MAX_ID),
    CHECK_ONLY("fromMe", "from_me", K_BOOL, 0, 0),
    CHECK_ONLY("remoteJid", "remote_jid", K_STR, 0, PAYLOAD_MAX_STRING),
};

static const field_t campaign_fields[] = {
    FIELD(message_upsert_t, is_campaign, "is_campaign", "", K_BOOL, 0, 0),
    FIELD(message_upsert_t, campaign_tags, "tags", "", K_STR, 0, PAYLOAD_MAX_STRING),
    FIELD(message_upsert_t, campaign_assigned_to, "assigned_to", "", K_STR, 0, PAYLOAD_MAX_STRING),
    FIELD(message_upsert_t, campaign_origin, "origin", "", K_STR, 0, PAYLOAD_MAX_STRING),
};

static const field_t message_upsert_fields[] = {
    FIELD(message_upsert_t, message_id, "message_id", "", K_STR, REQ, PAYLOAD_MAX_ID),
    FIELD(message_upsert_t, chat_id, "chat_id", "", K_STR, REQ, PAYLOAD_MAX_ID),
    FIELD(message_upsert_t, jid, "jid", "", K_STR, REQ, PAYLOAD_MAX_ID),
    FIELD(message_upsert_t, agent_id, "agent_id", "", K_STR, REQ | INHERIT, PAYLOAD_MAX_ID),
    FIELD(message_upsert_t, flow, "flow", "", K_FLOW, REQ, 0),
    FIELD(message_upsert_t, from_phone, "from_phone", "from", K_STR, 0, PAYLOAD_MAX_PHONE),
    FIELD(message_upsert_t, to_phone, "to_phone", "to", K_STR, 0, PAYLOAD_MAX_PHONE),
    FIELD(message_upsert_t, message_type, "message_type", "", K_STR, 0, PAYLOAD_MAX_STRING),
    FIELD(message_upsert_t, message_text, "message_text", "", K_STR, 0, PAYLOAD_MAX_STRING),
    FIELD(message_upsert_t, message_url, "message_url", "", K_STR, 0, PAYLOAD_MAX_STRING),
    FIELD(message_upsert_t, status, "status", "", K_STR, 0, PAYLOAD_MAX_STRING),
    FIELD(message_upsert_t, company_id, "company_id", "", K_COMPANY, 0, 0),
    OBJECT(message_upsert_t, key, "key", K_OBJ, message_key_fields),
    FIELD(message_upsert_t, message_obj, "message_obj", "", K_OBJ, 0, PAYLOAD_MAX_OBJECT),
    FIELD(message_upsert_t, message_timestamp, "message_timestamp", "", K_MSGTS, 0, 0),
    OBJECT(message_upsert_t, has_campaign, "campaign", K_CAMPAIGN, campaign_fields),
};

static const field_t message_update_fields[] = {
    FIELD(message_update_t, message_id, "message_id", "id", K_STR, REQ, PAYLOAD_MAX_ID),
    FIELD(message_update_t, status, "status", "", K_STR, 0, PAYLOAD_MAX_STRING),
    FIELD(message_update_t, message_url, "message_url", "", K_STR, 0, PAYLOAD_MAX_STRING),
    FIELD(message_update_t, edited_message_obj, "edited_message_obj", "", K_OBJ, 0, PAYLOAD_MAX_OBJECT),
    FIELD(message_update_t, is_deleted, "is_deleted", "", K_BOOL, 0, 0),
    CHECK_ONLY("company_id", "", K_COMPANY, 0, 0),
};

/* contacts.upsert, contacts.update and history contacts share one shape. */
static const field_t contact_fields[] = {
    FIELD(contact_t, phone_number, "phone_number", "", K_CPHONE, REQ, PAYLOAD_MAX_PHONE),
    FIELD(contact_t, agent_id, "agent_id", "", K_STR, REQ, PAYLOAD_MAX_ID),
    FIELD(contact_t, chat_id, "chat_id", "", K_STR, 0, PAYLOAD_MAX_ID),
    FIELD(contact_t, push_name, "push_name", "", K_STR, 0, PAYLOAD_MAX_STRING),
    FIELD(contact_t, company_id, "company_id", "", K_COMPANY, 0, 0),
};

static const field_t agent_fields[] = {
    FIELD(agent_t, agent_id, "agent_id", "", K_STR, REQ, PAYLOAD_MAX_ID),
    FIELD(agent_t, qr_code, "qr_code", "", K_STR, 0, PAYLOAD_MAX_STRING),
    FIELD(agent_t, status, "status", "", K_STR, 0, PAYLOAD_MAX_STRING),
    FIELD(agent_t, agent_name, "agent_name", "", K_STR, 0, PAYLOAD_MAX_STRING),
    FIELD(agent_t, host_name, "host_name", "", K_STR, 0, PAYLOAD_MAX_STRING),
    FIELD(agent_t, version, "version", "", K_STR, 0, PAYLOAD_MAX_STRING),
    FIELD(agent_t, phone_number, "phone_number", "", K_STR, 0, PAYLOAD_MAX_PHONE),
    FIELD(agent_t, company_id, "company_id", "", K_COMPANY, 0, 0),
};

/* History containers fill the event itself; the container's agent_id sits in u.msg.agent_id so that
 * payload_agent_id finds it and items can inherit it. */
static const field_t history_chats_fields[] = {
    CHECK_ONLY("chats", "", K_ITEMS, REQ, PAYLOAD_MAX_ITEMS),
    CHECK_ONLY("company_id", "", K_COMPANY, 0, 0),
};
static const field_t history_messages_fields[] = {
    CHECK_ONLY("messages", "", K_ITEMS, REQ, PAYLOAD_MAX_ITEMS),
    FIELD(event_t, is_last_batch, "is_last_batch", "", K_BOOL, 0, 0),
    FIELD(event_t, u.msg.agent_id, "agent_id", "", K_STR, 0, PAYLOAD_MAX_ID),
    CHECK_ONLY("company_id", "", K_COMPANY, 0, 0),
};
static const field_t history_contacts_fields[] = {
    CHECK_ONLY("contacts", "", K_ITEMS, REQ, PAYLOAD_MAX_ITEMS),
    CHECK_ONLY("company_id", "", K_COMPANY, 0, 0),
};

/* Indexed by event_type_t. */
static const table_t tables[ET_BASE_COUNT] = {
    TABLE(chat_upsert_fields),
    TABLE(chat_update_fields),
    TABLE(message_upsert_fields),
    TABLE(message_update_fields),
    TABLE(contact_fields),
    TABLE(contact_fields),
    TABLE(agent_fields),
    TABLE(history_chats_fields),
    TABLE(history_messages_fields),
    TABLE(history_contacts_fields),
};

_Static_assert(ARRAY_LEN(message_upsert_fields) <= MAX_FIELDS, "raise MAX_FIELDS");
_Static_assert(ARRAY_LEN(chat_upsert_fields) <= MAX_FIELDS, "raise MAX_FIELDS");
_Static_assert(ARRAY_LEN(agent_fields) <= MAX_FIELDS, "raise MAX_FIELDS");

typedef enum {
    CO_FILL,    /* realtime event: absent -> <co> */
    CO_REQUIRE, /* history item: absent -> error */
    CO_CHECK,   /* history container: absent is fine */
} company_mode_t;

/* One object being validated: where the text lives, how company_id behaves, where errors go. */
typedef struct {
    payload_ctx_t *ctx;
    const char *src;
    const json_tok_t *toks;
    event_t *ev; /* receives err/errmsg */
    long item;   /* history item index for the "item <i>: " prefix, or -1 */
    company_mode_t company;
    str_t inherit_agent; /* container agent_id for history message items */
    uint32_t items_tok;  /* K_ITEMS: token of the container array */
} pstate_t;

static int fail(pstate_t *st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Records a validation error (the first one wins: callers return at once). */
static int fail(pstate_t *st, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *m = st->item >= 0 ? arena_printf(st->ctx->arena, "item %ld: %s", st->item, msg)
                                  : arena_strndup(st->ctx->arena, msg, strlen(msg));
    st->ev->err = ERR_VALIDATION;
    st->ev->errmsg = m ? m : "validation failed (no memory for the message)";
    return -1;
}

/* How many bytes of a value to quote: at most SHOW_MAX, never cutting a UTF-8 sequence in two (the message is
 * later embedded in JSON by the DLQ writer, which escapes it but cannot repair a cut character). */
static int shown(const char *p, size_t n)
{
    if (n <= SHOW_MAX)
        return (int)n;
    size_t k = SHOW_MAX;
    while (k > 0 && ((unsigned char)p[k] & 0xC0) == 0x80)
        k--;
    return (int)k;
}

/* Arguments for "%.*s%s": the shown part of a value and "..." when it was truncated. */
#define QUOTED(p, n) shown(p, n), (p), ((size_t)(n) > (size_t)shown(p, n) ? "..." : "")

/* Out of memory is not the sender's fault: class unknown, not validation. */
static int oom(pstate_t *st)
{
    st->ev->err = ERR_UNKNOWN;
    st->ev->errmsg = "out of memory while validating the payload";
    return -1;
}

static const char *type_name(const json_tok_t *t)
{
    static const char *const names[] = {"null", "boolean", "boolean", "number", "string", "array", "object"};
    return names[t->type];
}

/* "key.id" for members of nested objects, "chat_id" at the top. Runs for every field, so no snprintf. */
static const char *label(char *buf, size_t n, const char *parent, const char *name)
{
    if (!parent)
        return name;
    size_t a = strlen(parent), b = strlen(name);
    if (a + b + 2 > n)
        return name;
    memcpy(buf, parent, a);
    buf[a] = '.';
    memcpy(buf + a + 1, name, b + 1);
    return buf;
}

static int fail_type(pstate_t *st, const char *name, const char *want, const json_tok_t *t)
{
    return fail(st, "field '%s' must be %s, got %s", name, want, type_name(t));
}

/* A string value: zero-copy when the token has no escapes, else decoded into the arena. */
static int get_str(pstate_t *st, const char *name, uint32_t tok, uint32_t limit, str_t *out)
{
    const json_tok_t *t = &st->toks[tok];
    if (t->type != JSON_STRING)
        return fail_type(st, name, "a string", t);
    size_t n = json_str_decoded_len(st->src, t);
    if (n > limit)
        return fail(st, "field '%s' is %zu bytes, limit %u", name, n, (unsigned)limit);
    if (!(t->flags & JSON_F_ESCAPED)) {
        out->p = st->src + t->start + 1;
    } else {
        char *p = arena_alloc(st->ctx->arena, n + 1);
        if (!p)
            return oom(st);
        json_str_decode(st->src, t, p);
        out->p = p;
    }
    out->len = (uint32_t)n;
    return 0;
}

static int get_int(pstate_t *st, const char *name, uint32_t tok, int64_t lo, int64_t hi, int64_t *out)
{
    const json_tok_t *t = &st->toks[tok];
    if (t->type != JSON_NUMBER)
        return fail_type(st, name, "an integer", t);
    if (!json_num_to_i64(st->src, t, out) || *out < lo || *out > hi)
        return fail(st, "field '%s' must be an integer between %lld and %lld, got %.*s%s", name, (long long)lo,
                    (long long)hi, QUOTED(st->src + t->start, t->len));
    return 0;
}

static int get_timestamp(pstate_t *st, const char *name, uint32_t tok, int64_t lo, opt_i64_t *out)
{
    int64_t v;
    if (get_int(st, name, tok, lo, INT64_MAX, &v))
        return -1;
    v = payload_timestamp_normalize(v);
    if (v > PAYLOAD_MAX_TIMESTAMP)
        return fail(st, "field '%s' is %lld seconds after normalisation, limit %lld", name, (long long)v,
                    PAYLOAD_MAX_TIMESTAMP);
    out->set = true;
    out->v = v;
    return 0;
}

static int get_company(pstate_t *st, uint32_t tok, str_t *out)
{
    const char *co = st->ctx->company_id;
    size_t n = strlen(co);
    str_t v;
    if (get_str(st, "company_id", tok, UINT32_MAX, &v))
        return -1;
    if (v.len != n || memcmp(v.p, co, n) != 0)
        return fail(st, "company_id mismatch: '%.*s%s' is not '%s'", QUOTED(v.p, v.len), co);
    *out = (str_t){co, (uint32_t)n};
    return 0;
}

static int get_phone(pstate_t *st, const char *name, uint32_t tok, uint32_t limit, str_t *out)
{
    if (get_str(st, name, tok, limit, out))
        return -1;
    size_t i = 0;
    while (i < out->len && out->p[i] >= '0' && out->p[i] <= '9')
        i++;
    if (i == out->len && i > 0)
        return 0; /* already digits only: keep the zero-copy span */
    char *p = arena_alloc(st->ctx->arena, out->len + 1);
    if (!p)
        return oom(st);
    size_t n = payload_phone_normalize(out->p, out->len, p);
    if (n == 0)
        return fail(st, "%s has no digits", name);
    p[n] = '\0';
    out->p = p;
    out->len = (uint32_t)n;
    return 0;
}

/* Duplicates (the same exact key twice) are detected by slot, so the scan is O(members) whatever the size. */
static int find_slot(const field_t *f, uint32_t n, const char *src, const json_tok_t *k, uint32_t *hint)
{
    const char *key = src + k->start + 1;
    size_t len = k->len - 2;
    char tmp[MAX_KEY_LEN + 1];
    if (len > 6 * MAX_KEY_LEN) /* an escape is at most 6 bytes per decoded byte: cannot be a known key */
        return -1;
    if (k->flags & JSON_F_ESCAPED) {
        if (json_str_decoded_len(src, k) > MAX_KEY_LEN)
            return -1;
        len = json_str_decode(src, k, tmp);
        key = tmp;
    } else if (len > MAX_KEY_LEN) {
        return -1;
    }
    /* Producers send keys in a stable order close to the table's, so the search starts after the previous hit:
     * usually one comparison per key, never worse than a full scan. */
    for (uint32_t k2 = 0, i = *hint; k2 < n; k2++, i = i + 1 == n ? 0 : i + 1) {
        if (f[i].name_len == len && f[i].name[0] == key[0] && memcmp(f[i].name, key, len) == 0) {
            *hint = i + 1 == n ? 0 : i + 1;
            return (int)(2 * i);
        }
        if (f[i].alias_len == len && len && memcmp(f[i].alias, key, len) == 0) {
            *hint = i + 1 == n ? 0 : i + 1;
            return (int)(2 * i + 1);
        }
    }
    return -1;
}

static int apply(pstate_t *st, const field_t *tab, uint32_t n, uint32_t obj, void *base, const char *parent);

/* One present field: type, range and limit checks, then the store into base + f->off. */
static int apply_field(pstate_t *st, const field_t *f, uint32_t tok, const char *name, void *base)
{
    void *dst = f->off >= 0 ? (char *)base + f->off : NULL;
    const json_tok_t *t = &st->toks[tok];
    str_t s = {0};
    int64_t v;
    switch ((kind_t)f->kind) {
    case K_STR:
        if (get_str(st, name, tok, f->limit, &s))
            return -1;
        if ((f->flags & REQ) && text_blank(s.p, s.len))
            return fail(st, "field '%s' must not be blank", name);
        break;
    case K_CPHONE:
        if (get_phone(st, name, tok, f->limit, &s))
            return -1;
        break;
    case K_COMPANY:
        if (get_company(st, tok, &s))
            return -1;
        break;
    case K_FLOW:
        if (t->type != JSON_STRING)
            return fail_type(st, name, "a string", t);
        if (json_str_eq(st->src, t, "IN", 2))
            s = (str_t){"IN", 2};
        else if (json_str_eq(st->src, t, "OUT", 3))
            s = (str_t){"OUT", 3};
        else if (get_str(st, name, tok, UINT32_MAX, &s) == 0)
            return fail(st, "field '%s' must be 'IN' or 'OUT', got '%.*s%s'", name, QUOTED(s.p, s.len));
        else
            return -1;
        break;
    case K_BOOL:
        if (t->type != JSON_TRUE && t->type != JSON_FALSE)
            return fail_type(st, name, "a boolean", t);
        if (dst)
            *(tri_t *)dst = t->type == JSON_TRUE ? TRI_TRUE : TRI_FALSE;
        return 0;
    case K_COUNT:
    case K_DELTA:
        if (get_int(st, name, tok, f->kind == K_COUNT ? 0 : INT32_MIN, INT32_MAX, &v))
            return -1;
        if (dst)
            *(opt_i64_t *)dst = (opt_i64_t){true, v};
        return 0;
    case K_TS:
    case K_MSGTS: return get_timestamp(st, name, tok, f->kind == K_TS ? 0 : INT64_MIN, dst ? dst : &(opt_i64_t){0});
    case K_OBJ:
    case K_CAMPAIGN:
        if (t->type != JSON_OBJECT)
            return fail_type(st, name, "an object", t);
        if (t->len > f->limit)
            return fail(st, "field '%s' is %u bytes, limit %u", name, (unsigned)t->len, (unsigned)f->limit);
        if (f->sub && apply(st, f->sub, f->nsub, tok, base, name))
            return -1;
        if (f->kind == K_CAMPAIGN) {
            if (dst)
                *(bool *)dst = true;
            return 0;
        }
        s = (str_t){st->src + t->start, t->len}; /* raw text as sent: big integers stay exact */
        break;
    case K_ITEMS:
        if (t->type != JSON_ARRAY)
            return fail_type(st, name, "an array", t);
        if (t->count > f->limit)
            return fail(st, "field '%s' has %u items, limit %u", name, (unsigned)t->count, (unsigned)f->limit);
        st->items_tok = tok;
        return 0;
    }
    if (dst)
        *(str_t *)dst = s;
    return 0;
}

/* A field that is absent or null. */
static int apply_absent(pstate_t *st, const field_t *f, const char *name, void *base)
{
    void *dst = f->off >= 0 ? (char *)base + f->off : NULL;
    if (f->kind == K_COMPANY) {
        if (st->company == CO_REQUIRE)
            return fail(st, "company_id is required");
        if (st->company == CO_FILL && dst)
            *(str_t *)dst = (str_t){st->ctx->company_id, (uint32_t)strlen(st->ctx->company_id)};
        return 0;
    }
    if ((f->flags & INHERIT) && st->inherit_agent.p) {
        if ((f->flags & REQ) && text_blank(st->inherit_agent.p, st->inherit_agent.len))
            return fail(st, "field '%s' must not be blank (inherited from the batch)", name);
        if (dst)
            *(str_t *)dst = st->inherit_agent;
        return 0;
    }
    if (f->flags & REQ)
        return fail(st, "field '%s' is required", name);
    return 0;
}

/* Validates object token obj against a field table and fills base. Two passes: first map each member to its field
 * slot (canonical or alias), so duplicates and canonical-wins are decided before anything is read; then check the
 * fields in table order, which makes the reported error deterministic.
 * Canonical wins: when both the canonical key and its alias are present, the alias is ignored entirely (not even
 * type-checked), whatever their order. A null canonical counts as absent, so a non-null alias is then used.
 * Duplicates: the same exact key twice (after unescaping) is an error, even with equal values or null, because a
 * later reader (PostgreSQL jsonb keeps the last) could see a different value than the one validated here. */
static int apply(pstate_t *st, const field_t *tab, uint32_t n, uint32_t obj, void *base, const char *parent)
{
    int32_t slot[2 * MAX_FIELDS];
    char lbuf[96];
    for (uint32_t i = 0; i < 2 * n; i++)
        slot[i] = -1;

    const json_tok_t *o = &st->toks[obj];
    uint32_t k = obj + 1, hint = 0;
    for (uint32_t m = 0; m < o->count; m++) {
        uint32_t v = k + 1;
        int s = find_slot(tab, n, st->src, &st->toks[k], &hint);
        if (s >= 0) {
            if (slot[s] >= 0) {
                const field_t *f = &tab[s / 2];
                return fail(st, "duplicate key '%s'", label(lbuf, sizeof lbuf, parent, s & 1 ? f->alias : f->name));
            }
            slot[s] = (int32_t)v;
        }
        k = st->toks[v].skip;
    }

    for (uint32_t i = 0; i < n; i++) {
        const field_t *f = &tab[i];
        int32_t tok = slot[2 * i];
        const char *key = f->name;
        if (tok < 0 || st->toks[tok].type == JSON_NULL) { /* null counts as absent: fall back to the alias */
            tok = slot[2 * i + 1];
            key = f->alias;
            if (tok >= 0 && st->toks[tok].type == JSON_NULL)
                tok = -1;
        }
        const char *name = label(lbuf, sizeof lbuf, parent, tok >= 0 ? key : f->name);
        if (tok < 0 ? apply_absent(st, f, name, base) : apply_field(st, f, (uint32_t)tok, name, base))
            return -1;
    }
    return 0;
}

/* Validates one realtime event or history item (already known to be an object) of a non-history type. */
static void parse_object(pstate_t *st, event_type_t et, uint32_t obj, event_t *ev)
{
    if (apply(st, tables[et].f, tables[et].n, obj, &ev->u, NULL))
        return;
    if (et == ET_MESSAGES_UPSERT)
        ev->u.msg.message_date =
            ev->u.msg.message_timestamp.set ? payload_timestamp_days(ev->u.msg.message_timestamp.v) : 0;
}

static void parse_history(pstate_t *st, event_type_t et, event_t *ev)
{
    static const event_type_t item_type[] = {ET_CHATS_UPSERT, ET_MESSAGES_UPSERT, ET_CONTACTS_UPSERT};
    st->company = CO_CHECK;
    if (apply(st, tables[et].f, tables[et].n, 0, ev, NULL))
        return;
    const json_tok_t *arr = &st->toks[st->items_tok];
    event_type_t it = item_type[et - ET_HISTORY_FIRST];
    if (arr->count == 0)
        return;
    ev->items = arena_alloc(st->ctx->arena, (size_t)arr->count * sizeof *ev->items);
    if (!ev->items) {
        oom(st);
        return;
    }
    ev->n_items = arr->count;
    pstate_t ist = *st;
    ist.company = CO_REQUIRE;
    ist.inherit_agent = et == ET_HISTORY_MESSAGES ? ev->u.msg.agent_id : (str_t){0};
    uint32_t k = st->items_tok + 1;
    for (uint32_t i = 0; i < arr->count; i++) {
        event_t *item = &ev->items[i];
        const json_tok_t *t = &st->toks[k];
        memset(item, 0, sizeof *item);
        item->type = it;
        item->raw = (str_t){st->src + t->start, t->len};
        ist.ev = item;
        ist.item = (long)i;
        if (t->type != JSON_OBJECT)
            fail(&ist, "must be a JSON object, got %s", type_name(t));
        else
            parse_object(&ist, it, k, item);
        k = t->skip;
    }
}

int payload_ctx_init(payload_ctx_t *ctx, const char *company_id)
{
    ctx->company_id = company_id;
    json_doc_init(&ctx->doc);
    ctx->arena = arena_create(64 * 1024);
    return ctx->arena ? 0 : -1;
}

void payload_ctx_free(payload_ctx_t *ctx)
{
    if (!ctx)
        return;
    arena_destroy(ctx->arena);
    ctx->arena = NULL;
    json_doc_free(&ctx->doc);
}

static error_class_t set_error(payload_ctx_t *ctx, event_t *ev, error_class_t c, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static error_class_t set_error(payload_ctx_t *ctx, event_t *ev, error_class_t c, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ev->err = c;
    ev->errmsg = arena_strndup(ctx->arena, msg, strlen(msg));
    if (!ev->errmsg)
        ev->errmsg = "invalid payload (no memory for the message)";
    return c;
}

error_class_t payload_parse(payload_ctx_t *ctx, event_type_t et, const char *data, size_t len, event_t *ev)
{
    memset(ev, 0, sizeof *ev);
    ev->type = et;
    ev->raw = (str_t){data, (uint32_t)(len > UINT32_MAX ? UINT32_MAX : len)};
    if ((unsigned)et >= ET_BASE_COUNT)
        return set_error(ctx, ev, ERR_VALIDATION, "unknown event type");
    if (len > PAYLOAD_MAX_MESSAGE)
        return set_error(ctx, ev, ERR_VALIDATION, "message is %zu bytes, limit %d", len, PAYLOAD_MAX_MESSAGE);

    char jerr[128];
    json_status_t js = json_parse(&ctx->doc, data, len, jerr, sizeof jerr);
    ev->json = js == JSON_OK ? TEXT_JSON : TEXT_NOT_JSON;
    switch (js) {
    case JSON_OK: break;
    case JSON_ESYNTAX: return set_error(ctx, ev, ERR_UNMARSHAL, "invalid JSON: %s", jerr);
    case JSON_ELIMIT: /* well-formed so far but beyond our limits: the sender must change it, not fix its JSON */
        return set_error(ctx, ev, ERR_VALIDATION, "JSON %s", jerr);
    default: /* JSON_ENOMEM: our problem, not the sender's */
        return set_error(ctx, ev, ERR_UNKNOWN, "JSON parser: %s", jerr);
    }
    if (ctx->doc.toks[0].type != JSON_OBJECT)
        return set_error(ctx, ev, ERR_UNMARSHAL, "payload is not a JSON object");

    pstate_t st = {.ctx = ctx, .src = data, .toks = ctx->doc.toks, .ev = ev, .item = -1, .company = CO_FILL};
    if (et >= ET_HISTORY_FIRST)
        parse_history(&st, et, ev);
    else
        parse_object(&st, et, 0, ev);
    return ev->err;
}

/* The first valid item's value: what a history batch of chats/contacts "carries" for the metrics label. */
static str_t first_item(const event_t *ev, str_t (*get)(const event_t *))
{
    for (uint32_t i = 0; i < ev->n_items; i++) {
        if (ev->items[i].err == ERR_NONE) {
            str_t s = get(&ev->items[i]);
            if (s.p)
                return s;
        }
    }
    return (str_t){0};
}

str_t payload_agent_id(const event_t *ev)
{
    switch (ev->type) {
    case ET_CHATS_UPSERT: return ev->u.chat.agent_id;
    case ET_CHATS_UPDATE: return ev->u.chat_update.agent_id;
    case ET_MESSAGES_UPSERT: return ev->u.msg.agent_id;
    case ET_CONTACTS_UPSERT:
    case ET_CONTACTS_UPDATE: return ev->u.contact.agent_id;
    case ET_CONNECTION_UPDATE: return ev->u.agent.agent_id;
    case ET_HISTORY_MESSAGES:
        if (ev->u.msg.agent_id.p)
            return ev->u.msg.agent_id;
        return first_item(ev, payload_agent_id);
    case ET_HISTORY_CHATS:
    case ET_HISTORY_CONTACTS: return first_item(ev, payload_agent_id);
    default: return (str_t){0}; /* messages.update carries no agent_id */
    }
}

str_t payload_jid(const event_t *ev)
{
    switch (ev->type) {
    case ET_CHATS_UPSERT: return ev->u.chat.jid;
    case ET_MESSAGES_UPSERT: return ev->u.msg.jid;
    case ET_HISTORY_CHATS:
    case ET_HISTORY_MESSAGES: return first_item(ev, payload_jid);
    default: return (str_t){0};
    }
}

size_t payload_phone_normalize(const char *in, size_t n, char *out)
{
    const char *at = memchr(in, '@', n);
    if (at)
        n = (size_t)(at - in);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (in[i] >= '0' && in[i] <= '9')
            out[k++] = in[i];
    return k;
}

int64_t payload_timestamp_normalize(int64_t ts)
{
    return ts > 100000000000LL ? ts / 1000 : ts;
}

int32_t payload_timestamp_days(int64_t ts)
{
    if (ts <= 0)
        return 0;
    int64_t d = ts / 86400;
    return d > INT32_MAX ? INT32_MAX : (int32_t)d;
}

/* Howard Hinnant's civil_from_days: exact proleptic Gregorian for any day count. Years outside 0..9999 do not fit
 * the fixed-width output and are clamped to 0000-01-01 / 9999-12-31. */
void payload_days_to_date(int32_t days, char out[11])
{
    const int64_t min_days = -719528, max_days = 2932896; /* 0000-01-01 and 9999-12-31 */
    int64_t z = days < min_days ? min_days : days > max_days ? max_days : days;
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int d = (int)(doy - (153 * mp + 2) / 5 + 1);
    int m = (int)(mp < 10 ? mp + 3 : mp - 9);
    int y = (int)(yoe + era * 400 + (m <= 2));
    out[0] = (char)('0' + y / 1000);
    out[1] = (char)('0' + y / 100 % 10);
    out[2] = (char)('0' + y / 10 % 10);
    out[3] = (char)('0' + y % 10);
    out[4] = '-';
    out[5] = (char)('0' + m / 10);
    out[6] = (char)('0' + m % 10);
    out[7] = '-';
    out[8] = (char)('0' + d / 10);
    out[9] = (char)('0' + d % 10);
    out[10] = '\0';
}
