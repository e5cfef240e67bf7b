/* dlq.h - DLQ records (SPEC 5.1): build the JSON body and publish a batch of them with JetStream de-duplication. */
#ifndef MES_DLQ_H
#define MES_DLQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nats/nats.h>

#include "buf.h"
#include "config.h"
#include "event.h"

typedef struct {
    const char *source_subject;
    const char *payload; /* original bytes (the whole message, or one history item) */
    size_t payload_len;
    bool payload_is_json; /* embed as JSON; otherwise base64 */
    const char *error;    /* human-readable reason */
    error_class_t cls;
    bool retryable;  /* error_type "retryable" | "fatal" */
    int retry_count; /* deliveries of the source message so far */
    int max_retry;   /* the source consumer's max deliver */
    const char *source_stream;
    uint64_t source_sequence;
    const char *source_message_id; /* Nats-Msg-Id of the source, or "<stream>:<seq>" */
    int item_index;                /* -1 unless one item of a history batch */
    const char *source_metadata;   /* last_metadata JSON of the source (so a replay writes the original's) */
    size_t source_metadata_len;
    const char *ts; /* RFC 3339 time of the failure; NULL: now */
} dlq_record_t;

/* Originals larger than this (base64 grows them by 4/3 and NATS caps a message at 1 MiB) embed a base64 prefix of the original and say so ("original_payload_truncated"), so a
 * 1 MiB poison message cannot make its own DLQ record unpublishable; the full original stays in its source stream at
 * source_stream/source_sequence. */
#define DLQ_MAX_EMBED (512 * 1024)

/* Appends the record body to b. */
void dlq_record_build(buf_t *b, const char *company, const dlq_record_t *r);
/* "dlq:<stream>:<seq>" or "dlq:<stream>:<seq>:<item>". */
void dlq_record_msg_id(const dlq_record_t *r, char *out, size_t len);

/* A batch's DLQ records published together: each goes out as a JetStream publish with its own reply subject on the
 * publisher's private inbox, and the PubAcks are then collected in one wait, so N records cost one round trip
 * instead of N. A record counts as stored only when its PubAck came back (de-duplication by Nats-Msg-Id makes a
 * re-publish after a lost PubAck harmless). Not thread-safe: one publisher per thread. */
typedef struct dlq_batch dlq_batch_t;

dlq_batch_t *dlq_batch_create(natsConnection *nc, const config_t *cfg);
void dlq_batch_destroy(dlq_batch_t *b);
/* Starts a new batch: replies to earlier batches are ignored from now on. */
void dlq_batch_begin(dlq_batch_t *b);
/* Sends one record. Returns its index in the batch, or -1 (err filled) when it could not even be sent. */
int dlq_batch_add(dlq_batch_t *b, const dlq_record_t *r, char *err, size_t errlen);
/* Waits up to max_wait_ms for the PubAcks of everything sent since dlq_batch_begin. */
void dlq_batch_wait(dlq_batch_t *b, int64_t max_wait_ms);
/* After dlq_batch_wait: whether record k is stored; if not, why in err. */
bool dlq_batch_ok(const dlq_batch_t *b, int k, char *err, size_t errlen);

#endif
