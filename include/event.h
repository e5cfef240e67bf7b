/* event.h - the shared vocabulary: event types, lanes, error classes, actions. */
#ifndef MES_EVENT_H
#define MES_EVENT_H

#include <stdbool.h>
#include <stddef.h>

/* The ten base subjects (SPEC 1.1). Order is part of the ABI of metrics arrays. */
typedef enum {
    ET_CHATS_UPSERT = 0,
    ET_CHATS_UPDATE,
    ET_MESSAGES_UPSERT,
    ET_MESSAGES_UPDATE,
    ET_CONTACTS_UPSERT,
    ET_CONTACTS_UPDATE,
    ET_CONNECTION_UPDATE,
    ET_HISTORY_CHATS,
    ET_HISTORY_MESSAGES,
    ET_HISTORY_CONTACTS,
    ET_UNKNOWN, /* metrics label "unknown" */
    ET_COUNT
} event_type_t;

#define ET_REALTIME_FIRST ET_CHATS_UPSERT
#define ET_REALTIME_LAST ET_CONNECTION_UPDATE
#define ET_HISTORY_FIRST ET_HISTORY_CHATS
#define ET_HISTORY_LAST ET_HISTORY_CONTACTS
#define ET_BASE_COUNT 10

typedef enum { LANE_REALTIME = 0, LANE_HISTORICAL, LANE_COUNT } lane_t;

/* Error classes of SPEC 4; names are the metric label / DLQ error_class values. */
typedef enum {
    ERR_NONE = 0,
    ERR_UNMARSHAL,
    ERR_VALIDATION,
    ERR_NOT_FOUND,
    ERR_DATABASE,
    ERR_NATS,
    ERR_TIMEOUT,
    ERR_UNKNOWN,
    ERR_PANIC, /* documented label value, never emitted */
    ERR_COUNT
} error_class_t;

/* Processing actions (SPEC 7, label "action"). */
typedef enum {
    ACT_ACK_SUCCESS = 0,
    ACT_NACK_RETRYABLE,
    ACT_DLQ_PUBLISHED_ACK_SUCCESS,
    ACT_NAK_DLQ_MARSHAL_FAIL,
    ACT_NAK_DLQ_PUBLISH_FAIL,
    ACT_COUNT
} action_t;

/* "v1.chats.upsert" ... ; ET_UNKNOWN -> "unknown". */
const char *event_type_base(event_type_t et);
/* "chats_upsert", "connection_update", "chats" (history) - used in durable names. */
const char *event_type_durable_suffix(event_type_t et);
/* "chat.ups", "msg.upd", "hist.cont" ... (at most 9 characters): the names of its fetcher and lane threads. */
const char *event_type_short(event_type_t et);
lane_t event_type_lane(event_type_t et);
/* Exact match of a base string; ET_UNKNOWN when none. */
event_type_t event_type_from_base(const char *base, size_t len);
const char *lane_name(lane_t lane); /* "realtime" | "historical" */
const char *error_class_name(error_class_t c);
const char *action_name(action_t a);

#endif
