/* metrics.h - the only module that knows the Prometheus text format (SPEC 7). Counters, gauges and histograms are
 * C11 atomics (no lock on the event path); only the bounded agent-label table takes a mutex, and rendering reads
 * everything without stopping writers. */
#ifndef MES_METRICS_H
#define MES_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "event.h"

typedef enum { DBOP_UPSERT = 0, DBOP_UPDATE, DBOP_BULK_UPSERT, DBOP_SAVE, DBOP_FIND, DBOP_COUNT } db_op_t;
typedef enum {
    DBENT_CHAT = 0,
    DBENT_MESSAGE,
    DBENT_CONTACT,
    DBENT_AGENT,
    DBENT_ONBOARDING_LOG,
    DBENT_EXHAUSTED_EVENT,
    DBENT_COUNT
} db_entity_t;
typedef enum {
    ONB_SUCCESS_CREATED = 0,
    ONB_SUCCESS_EXISTS,
    ONB_SKIPPED_NOT_APPLICABLE,
    ONB_ERROR_DB,
    ONB_ERROR_OTHER,
    ONB_COUNT
} onboarding_status_t;

/* Registers every family with HELP/TYPE and zero-valued series. Call once before any other function. */
int metrics_init(const char *company_id, const char *version, int max_agent_labels, bool jid_label);
void metrics_shutdown(void);

/* Live event stages; et may be ET_UNKNOWN. */
void metrics_event_received(event_type_t et, lane_t lane);
void metrics_event_processed(event_type_t et, lane_t lane);
void metrics_event_failed(event_type_t et, lane_t lane);
void metrics_event_action(event_type_t et, lane_t lane, action_t action, error_class_t err);
void metrics_processing_duration(event_type_t et, lane_t lane, double seconds);
void metrics_routing_duration(event_type_t et, lane_t lane, double seconds);
/* agent_id/jid need not be NUL-terminated. Bounded: after max_agent_labels distinct agents -> "other". */
void metrics_event_with_agent(event_type_t et, const char *agent_id, size_t agent_len, const char *jid, size_t jid_len);
void metrics_db_duration(db_op_t op, db_entity_t ent, bool ok, double seconds);

/* DLQ worker. */
void metrics_dlq_fetch_request(void);
void metrics_dlq_fetch_error(void);
void metrics_dlq_queue_length_set(long n);
void metrics_dlq_workers_active_add(int delta);
void metrics_dlq_task_submitted(void);
void metrics_dlq_processing_duration(double seconds);
void metrics_dlq_task_retry(void);
void metrics_dlq_ack_success(void);
void metrics_dlq_ack_failure(void);
void metrics_dlq_task_dropped(void);
/* DLQ records published by the live lanes (own metric). */
void metrics_dlq_published(event_type_t et, lane_t lane, error_class_t err);

/* Onboarding. */
void metrics_onboarding_submitted(void);
void metrics_onboarding_processed(onboarding_status_t st);
void metrics_onboarding_duration(double seconds);
void metrics_onboarding_queue_add(long delta);

/* Own metrics (message_event_service_ prefix). */
void metrics_batch_size(lane_t lane, int n);
void metrics_nats_connected_set(bool up);
void metrics_db_up_set(bool up);
void metrics_consumer_pending_set(event_type_t et, uint64_t pending);

/* Events JetStream stopped delivering (max-deliveries advisories) stored in exhausted_events, by the stream that
 * held them. metrics_streams_set names the three streams (after metrics_init) so each has a zero series. */
typedef enum { MSTREAM_REALTIME = 0, MSTREAM_HISTORICAL, MSTREAM_DLQ, MSTREAM_COUNT } metrics_stream_t;
void metrics_streams_set(const char *realtime, const char *historical, const char *dlq);
void metrics_jetstream_exhausted(metrics_stream_t s);

/* Renders the whole exposition (text format 0.0.4). Returns a malloc'd buffer (caller frees), NULL on OOM. */
char *metrics_render(size_t *len);

#endif
