/* pull.h - JetStream pull consumption over core NATS: MSG.NEXT requests on an inbox of our own, their status replies,
 * and acks published to each message's reply subject. Replaces nats.c 3.4.1's Fetch and natsMsg_Ack family, whose
 * defects (an over-run of Fetch's own array when deliveries of an earlier request arrive late, corrupting the heap
 * under load; 409 statuses turned into errors; acks read through msg->sub) cannot be worked around from outside. */
#ifndef MES_PULL_H
#define MES_PULL_H

#include <stdbool.h>
#include <stdint.h>

#include <nats/nats.h>

/* One durable's pull subscription: an inbox subscription and the requests sent from it. Owned by one thread (the
 * fetch loop); the messages it hands out are owned by whoever holds them, and stay valid and ackable after
 * pull_destroy (acks go to their own reply subject, never through the subscription). */
typedef struct pull pull_t;

/* Subscribes a fresh inbox for deliveries of durable on stream. NULL on failure. Caller owns (pull_destroy). */
pull_t *pull_create(natsConnection *nc, const char *stream, const char *durable);
/* Unsubscribes (NULL-safe). Deliveries still queued are dropped unacked: JetStream redelivers them after the ack wait. */
void pull_destroy(pull_t *p);

/* Up to max messages into *out (malloc'd list; free with natsMsgList_Destroy): first what earlier requests delivered
 * late, then what one new request brings. no_wait: what the consumer has now (the request carries a 50 ms expiry).
 * Otherwise the request waits up to wait_ms for messages, and the call returns as soon as the request is complete or
 * ends (408 expired, 409 leadership change or limits, 404 nothing, 503 no consumer leader: after 409/503 it pauses
 * 50/250 ms, a failover being normal). NATS_OK with out->Count > 0; NATS_NOT_FOUND (no_wait) or NATS_TIMEOUT when
 * nothing came; another status when publishing failed. Never more than max messages: later deliveries wait in the inbox for the next
 * call. */
natsStatus pull_fetch(pull_t *p, int max, bool no_wait, int64_t wait_ms, natsMsgList *out);

/* Acknowledgements of a delivered message (JetStream's ack protocol on its reply subject). */
natsStatus pull_ack(natsConnection *nc, natsMsg *m);
/* Waits up to timeout_ms for the server to confirm the ack. */
natsStatus pull_ack_sync(natsConnection *nc, natsMsg *m, int64_t timeout_ms);
natsStatus pull_nak(natsConnection *nc, natsMsg *m, int64_t delay_ms);
natsStatus pull_in_progress(natsConnection *nc, natsMsg *m);
natsStatus pull_term(natsConnection *nc, natsMsg *m);

#endif
