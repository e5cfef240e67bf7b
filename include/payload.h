/* payload.h - JSON payload -> typed, validated events (SPEC 2). The one place for every field rule. */
#ifndef MES_PAYLOAD_H
#define MES_PAYLOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "event.h"
#include "json.h"

/* A string value. Decoded strings point into the source (no escapes) or into the arena. Free-form objects hold the
 * raw JSON text of the object exactly as sent (never re-printed: big integers stay exact). p == NULL: absent/null. */
typedef struct {
    const char *p;
    uint32_t len;
} str_t;

typedef struct {
    bool set;
    int64_t v;
} opt_i64_t;

typedef enum { TRI_UNSET = 0, TRI_FALSE, TRI_TRUE } tri_t;

/* Limits (SPEC 2). */
#define PAYLOAD_MAX_ID 256
#define PAYLOAD_MAX_PHONE 64
#define PAYLOAD_MAX_STRING 4096
#define PAYLOAD_MAX_OBJECT 65536
#define PAYLOAD_MAX_MESSAGE 1048576
#define PAYLOAD_MAX_ITEMS 10000
/* 9999-12-31T23:59:59Z: a normalised timestamp beyond it cannot be a PostgreSQL date we want. */
#define PAYLOAD_MAX_TIMESTAMP 253402300799LL

typedef struct { /* v1.chats.upsert and v1.history.chats items */
    str_t chat_id, jid, agent_id, phone_number, push_name, group_name, custom_name, company_id;
    tri_t is_group, not_spam;
    str_t last_message;               /* raw object */
    opt_i64_t conversation_timestamp; /* normalised seconds, >= 0 */
    opt_i64_t unread_count;           /* int32 >= 0 */
} chat_upsert_t;

typedef struct { /* v1.chats.update */
    str_t chat_id, agent_id;
    opt_i64_t unread_count; /* absolute, int32 >= 0 */
    opt_i64_t unread_delta; /* int32, may be negative */
    opt_i64_t conversation_timestamp;
    str_t last_message; /* raw object */
} chat_update_t;

typedef struct { /* v1.messages.upsert and v1.history.messages items */
    str_t message_id, chat_id, jid, agent_id, flow /* "IN"|"OUT" */, from_phone, to_phone, message_type, message_text,
        message_url, status, company_id;
    str_t key;         /* raw object as sent (validated: id required; fromMe/from_me bool; remoteJid/remote_jid str) */
    str_t message_obj; /* raw object */
    opt_i64_t message_timestamp; /* normalised seconds (ms / 1000 when > 1e11) */
    int32_t message_date;        /* days since 1970-01-01 (UTC) of message_timestamp; 0 when missing or <= 0 */
    bool has_campaign;
    tri_t is_campaign;
    str_t campaign_tags, campaign_assigned_to, campaign_origin;
} message_upsert_t;

typedef struct { /* v1.messages.update */
    str_t message_id, status, message_url;
    str_t edited_message_obj; /* raw object */
    tri_t is_deleted;
} message_update_t;

typedef struct {        /* v1.contacts.upsert / v1.contacts.update / v1.history.contacts items */
    str_t phone_number; /* normalised: digits only (payload_phone_normalize) */
    str_t agent_id, chat_id, push_name, company_id;
} contact_t;

typedef struct { /* v1.connection.update */
    str_t agent_id, qr_code, status, agent_name, host_name, version, phone_number, company_id;
} agent_t;

/* What the parse learnt of a payload's text, so a DLQ record embeds it as JSON without parsing it again. */
typedef enum { TEXT_UNCHECKED = 0, TEXT_JSON, TEXT_NOT_JSON } text_json_t;

typedef struct event event_t;
struct event {
    event_type_t type;  /* for history items: ET_CHATS_UPSERT, ET_MESSAGES_UPSERT or ET_CONTACTS_UPSERT */
    error_class_t err;  /* ERR_NONE, ERR_UNMARSHAL or ERR_VALIDATION */
    const char *errmsg; /* NUL-terminated, arena; names the field and the limit; NULL when valid */
    str_t raw;          /* raw JSON text of this event / history item (span of the source) */
    text_json_t json;   /* whether payload_parse found the whole text to be JSON (unchecked: it stopped before) */
    union {
        chat_upsert_t chat;
        chat_update_t chat_update;
        message_upsert_t msg;
        message_update_t msg_update;
        contact_t contact;
        agent_t agent;
    } u;
    /* History containers only (type ET_HISTORY_*): the items, each validated on its own. */
    uint32_t n_items;
    event_t *items; /* arena */
    tri_t is_last_batch;
};

/* Per-thread parsing context. Not thread-safe; one per lane/worker. */
typedef struct {
    arena_t *arena;         /* reset by the owner between batches */
    json_doc_t doc;         /* token buffer reused across calls */
    const char *company_id; /* <co>; borrowed */
} payload_ctx_t;

int payload_ctx_init(payload_ctx_t *ctx, const char *company_id) __attribute__((warn_unused_result));
void payload_ctx_free(payload_ctx_t *ctx);

/*
 * Parses and validates one event of type et (one of the ten bases) from data[0..len). Realtime payloads without
 * company_id get <co>; a present company_id must equal <co>. For history types the container is validated (array
 * present, at most PAYLOAD_MAX_ITEMS) and then every item on its own: ev->items[i].err tells each item's fate, and
 * items must carry company_id. Returns ev->err. Spans point into data and ctx->arena: valid while both live.
 */
error_class_t payload_parse(payload_ctx_t *ctx, event_type_t et, const char *data, size_t len, event_t *ev);

/* agent_id / jid of an event for the metrics label (absent -> p == NULL). */
str_t payload_agent_id(const event_t *ev);
str_t payload_jid(const event_t *ev);

/* Identity phone normalisation (SPEC 2): drop any "@..." suffix, keep digits only. out needs n bytes. Returns the
 * new length (0 when no digits). The only such function in the program. */
size_t payload_phone_normalize(const char *in, size_t n, char *out);
/* Unix seconds from a timestamp that may be in milliseconds (> 1e11 -> / 1000). */
int64_t payload_timestamp_normalize(int64_t ts);
/* Days since 1970-01-01 of a normalised timestamp; 0 when ts <= 0. */
int32_t payload_timestamp_days(int64_t ts);
/* "YYYY-MM-DD" of days since epoch into out[11]. */
void payload_days_to_date(int32_t days, char out[11]);

#endif
