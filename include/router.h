/* router.h - the one route every event takes before the store, live or replayed from the DLQ (SPEC 1.1, 2, 4):
 * subject -> event type -> tenant check -> validated event (a DLQ record's history item re-wrapped into a one-item
 * batch) -> store items. The lanes (consumer.c) and the DLQ worker (dlq_worker.c) both call it, so "a replay meets
 * exactly the live validation" holds by construction. Pure functions over a caller's payload_ctx_t (one per thread). */
#ifndef MES_ROUTER_H
#define MES_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "event.h"
#include "payload.h"
#include "store.h"

/* What a subject names: one of the ten bases (else ET_UNKNOWN) and whether its last token is this tenant's <co>. */
typedef struct {
    event_type_t et;
    bool own_tenant;
} route_subject_t;

route_subject_t router_subject(const char *subject, const char *company_id);

/*
 * Routes one event's text: the subject must be exactly <base>.<co> of this tenant (and, when expected is not
 * ET_UNKNOWN, of that base), then data is parsed and validated by payload_parse as that type. item_index >= 0 says
 * data is ONE item of a history batch (what a DLQ record keeps of a history item): it is wrapped back into a one-item
 * batch, so it meets the live validation, and an item error names item_index, its place in the original batch.
 * Returns ev->err; a subject that does not fit is ERR_VALIDATION with ev->errmsg naming it. Spans point into data and
 * ctx->arena.
 */
error_class_t router_route(payload_ctx_t *ctx, const char *subject, event_type_t expected, const char *data, size_t len,
                           int64_t item_index, event_t *ev);

/* How many store items router_items writes for a valid ev at most. */
size_t router_item_count(const event_t *ev);

/* A valid ev's store items into out[0..router_item_count(ev)): a realtime event is one item (messages.upsert with
 * onboarding in the same transaction), a history batch its valid items in batch order. Returns how many; *bad (may be
 * NULL) counts the items left out as invalid and *bad_err (may be NULL) is the last one's error. */
size_t router_items(const event_t *ev, const char *meta, uint32_t meta_len, store_item_t *out, size_t *bad,
                    const char **bad_err);

#endif
