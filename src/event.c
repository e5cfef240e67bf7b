/* event.c - names of event types, lanes, error classes and actions. */
#include "event.h"

#include <string.h>

static const char *const bases[ET_COUNT] = {
    "v1.chats.upsert",
    "v1.chats.update",
    "v1.messages.upsert",
    "v1.messages.update",
    "v1.contacts.upsert",
    "v1.contacts.update",
    "v1.connection.update",
    "v1.history.chats",
    "v1.history.messages",
    "v1.history.contacts",
    "unknown",
};

static const char *const suffixes[ET_COUNT] = {
    "chats_upsert",      "chats_update", "messages_upsert", "messages_update", "contacts_upsert", "contacts_update",
    "connection_update", "chats",        "messages",        "contacts",        "unknown",
};

/* Short enough that "fetch " or "lane " and one of these fit a thread's name (log_thread_name). */
static const char *const shorts[ET_COUNT] = {
    "chat.ups", "chat.upd",  "msg.ups",  "msg.upd",   "cont.ups", "cont.upd",
    "conn.upd", "hist.chat", "hist.msg", "hist.cont", "unknown",
};

const char *event_type_short(event_type_t et)
{
    return (et >= 0 && et < ET_COUNT) ? shorts[et] : shorts[ET_UNKNOWN];
}

const char *event_type_base(event_type_t et)
{
    return (et >= 0 && et < ET_COUNT) ? bases[et] : bases[ET_UNKNOWN];
}

const char *event_type_durable_suffix(event_type_t et)
{
    return (et >= 0 && et < ET_COUNT) ? suffixes[et] : suffixes[ET_UNKNOWN];
}

lane_t event_type_lane(event_type_t et)
{
    return (et >= ET_HISTORY_FIRST && et <= ET_HISTORY_LAST) ? LANE_HISTORICAL : LANE_REALTIME;
}

event_type_t event_type_from_base(const char *base, size_t len)
{
    for (int i = 0; i < ET_BASE_COUNT; i++) {
        if (strlen(bases[i]) == len && memcmp(bases[i], base, len) == 0)
            return (event_type_t)i;
    }
    return ET_UNKNOWN;
}

const char *lane_name(lane_t lane)
{
    return lane == LANE_HISTORICAL ? "historical" : "realtime";
}

const char *error_class_name(error_class_t c)
{
    static const char *const names[ERR_COUNT] = {
        "none", "unmarshal", "validation", "not_found", "database", "nats", "timeout", "unknown", "panic",
    };
    return (c >= 0 && c < ERR_COUNT) ? names[c] : "unknown";
}

const char *action_name(action_t a)
{
    static const char *const names[ACT_COUNT] = {
        "ack_success", "nack_retryable", "dlq_published_ack_success", "nak_dlq_marshal_fail", "nak_dlq_publish_fail",
    };
    return (a >= 0 && a < ACT_COUNT) ? names[a] : "unknown";
}
