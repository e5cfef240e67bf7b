/* consumer.h - one lane per durable consumer: fetch a batch, validate, commit in one transaction, then ack/NAK/DLQ. */
#ifndef MES_CONSUMER_H
#define MES_CONSUMER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include <nats/nats.h>

#include "buf.h"
#include "config.h"
#include "db.h"
#include "event.h"
#include "mes_nats.h"
#include "payload.h"
#include "store.h"
#include "writer.h"

typedef struct consumer consumer_t;

/* Creates the lane for event type et (one of the ten bases); does not subscribe yet. Its commits go through writer
 * (group commit over the writers' sessions, shared by the lanes; it must outlive the lane). Caller owns
 * (consumer_destroy). */
consumer_t *consumer_create(const config_t *cfg, mes_nats_t *nats, writer_t *writer, event_type_t et,
                            const atomic_bool *stop);
/* Ensures/binds the durable consumer. */
int consumer_subscribe(consumer_t *c) __attribute__((warn_unused_result));
/* Starts the lane thread. */
int consumer_start(consumer_t *c) __attribute__((warn_unused_result));
bool consumer_subscribed(const consumer_t *c);
/* Waits for the thread until deadline_ms (CLOCK_REALTIME ms). Returns true when it ended. Call after *stop is set. */
bool consumer_join(consumer_t *c, int64_t deadline_ms);
void consumer_destroy(consumer_t *c); /* NULL-safe; only after a successful join (or if never started) */
event_type_t consumer_event_type(const consumer_t *c);
const char *consumer_durable(const consumer_t *c); /* its durable consumer's name */
/* Links each update lane (chats/messages/contacts.update) to the upsert lane of its entity among lanes[0..n), so an
 * update batch waits (bounded) until that lane has processed what was published before it. Call before starting. */
void consumer_link_updates(consumer_t **lanes, int n);

/* last_metadata (SPEC 3.1) of a NATS message, appended to b: stream, sequences, consumer, message id, subject and
 * processed_at. Allocation-free once b has grown (exposed for the handler microbenchmark). */
void consumer_build_meta(buf_t *b, const char *stream, uint64_t stream_seq, const char *consumer, uint64_t consumer_seq,
                         const char *msg_id, const char *subject, const char *processed_at);

#endif
