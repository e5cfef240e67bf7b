/* pull.c - JetStream pull consumption over core NATS: MSG.NEXT requests, status replies, acks on reply subjects. */
#include "pull.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "log.h"
#include "mes_nats.h"

#define NOWAIT_EXPIRES_MS 50 /* a no-wait request is answered at once; the expiry only bounds a reply that never ends */
#define REPLY_MARGIN_MS 250  /* how long past its expiry a request's end (its 408) may take to arrive */

static atomic_int_fast64_t leader_logged_ms; /* atomic (compare-exchange): shared by every fetch loop */

/* Owned by one thread at a time (pull.h): the subscriber (main at startup) until its fetch loop starts, then that
 * loop's thread. nats.c's reader thread only queues deliveries on sub (locked inside nats.c). */
struct pull {
    /* Set at create, read-only after. */
    natsConnection *nc;
    natsSubscription *sub;
    char next_subject[512]; /* $JS.API.CONSUMER.MSG.NEXT.<stream>.<durable> */
    char inbox[128];        /* requests reply to <inbox>.<id>; the subscription is on <inbox>.* */
    uint64_t id;            /* of the latest request: the owner's */
};

/* ---- lifecycle ------------------------------------------------------------------------------------------------ */

pull_t *pull_create(natsConnection *nc, const char *stream, const char *durable)
{
    pull_t *p = calloc(1, sizeof *p);
    natsInbox *inbox = NULL;
    if (!p || natsInbox_Create(&inbox) != NATS_OK)
        goto cleanup;
    snprintf(p->inbox, sizeof p->inbox, "%s", inbox);
    snprintf(p->next_subject, sizeof p->next_subject, "$JS.API.CONSUMER.MSG.NEXT.%s.%s", stream, durable);
    p->nc = nc;
    char wildcard[sizeof p->inbox + 2];
    snprintf(wildcard, sizeof wildcard, "%s.*", p->inbox);
    if (natsConnection_SubscribeSync(&p->sub, nc, wildcard) != NATS_OK)
        goto cleanup;
    natsInbox_Destroy(inbox);
    return p;
cleanup:
    natsInbox_Destroy(inbox);
    free(p);
    return NULL;
}

void pull_destroy(pull_t *p)
{
    if (!p)
        return;
    mes_nats_unsubscribe(&p->sub); /* freed late: see there */
    free(p);
}

/* ---- fetching ------------------------------------------------------------------------------------------------- */

/* The status code of a status reply ("404", "408", "409", "100", "503"), or NULL for a message. */
static const char *status_of(natsMsg *m)
{
    const char *v = NULL;
    if (natsMsg_GetDataLength(m) == 0 && natsMsgHeader_Get(m, "Status", &v) == NATS_OK && v && *v)
        return v;
    return NULL;
}

/* A JetStream delivery carries its ack subject as reply. */
static bool is_delivery(natsMsg *m)
{
    const char *r = natsMsg_GetReply(m);
    return r && strncmp(r, "$JS.ACK.", 8) == 0;
}

natsStatus pull_fetch(pull_t *p, int max, bool no_wait, int64_t wait_ms, natsMsgList *out)
{
    memset(out, 0, sizeof *out);
    if (max <= 0)
        return NATS_INVALID_ARG;
    natsMsg **msgs = malloc((size_t)max * sizeof *msgs);
    if (!msgs)
        return NATS_NO_MEMORY;
    int n = 0, pause_ms = 0;
    natsStatus rc = NATS_OK;

    /* Deliveries of earlier requests that arrived after those requests' calls returned come first: they are older. */
    int queued = 0, queued_bytes = 0;
    if (natsSubscription_GetPending(p->sub, &queued, &queued_bytes) != NATS_OK)
        queued = 0;
    for (natsMsg *m = NULL; queued-- > 0 && n < max && natsSubscription_NextMsg(&m, p->sub, 1) == NATS_OK; m = NULL) {
        if (is_delivery(m))
            msgs[n++] = m;
        else
            natsMsg_Destroy(m); /* an earlier request's status: that request is over */
    }
    if (n == max)
        goto cleanup;

    /* One request for the rest. With messages in hand already, it does not wait for more. */
    bool nowait = no_wait || n > 0;
    int64_t expires_ms = nowait ? NOWAIT_EXPIRES_MS : (wait_ms > 0 ? wait_ms : 1);
    char reply[sizeof p->inbox + 24], body[128];
    snprintf(reply, sizeof reply, "%s.%" PRIu64, p->inbox, ++p->id);
    int len = snprintf(body, sizeof body, "{\"batch\":%d,\"expires\":%lld%s}", max - n,
                       (long long)expires_ms * 1000000LL, nowait ? ",\"no_wait\":true" : "");
    rc = natsConnection_PublishRequest(p->nc, p->next_subject, reply, body, len);
    if (rc != NATS_OK)
        goto cleanup;

    int64_t deadline = clock_mono_ms() + expires_ms + REPLY_MARGIN_MS;
    while (n < max) {
        int64_t left = deadline - clock_mono_ms();
        natsMsg *m = NULL;
        if (left <= 0 || natsSubscription_NextMsg(&m, p->sub, left) != NATS_OK)
            break; /* the request's end never came (a server restart, a lost reply): the next call starts afresh */
        if (is_delivery(m)) {
            msgs[n++] = m;
            continue;
        }
        const char *status = status_of(m);
        bool ours = strcmp(natsMsg_GetSubject(m), reply) == 0;
        /* 100 is an idle heartbeat; a status of an earlier request says nothing about this one. Any other status of
         * ours ends this request: 404/408 nothing (more) to deliver, 409 a leadership change (or a limit reached),
         * 503 nobody serves MSG.NEXT for the durable (its leader is being elected, or it is gone: the fetch loop's
         * watchdog tells those apart). */
        bool ends = ours && (!status || strcmp(status, "100") != 0);
        if (ours && status && (strcmp(status, "409") == 0 || strcmp(status, "503") == 0))
            pause_ms = strcmp(status, "409") == 0 ? 50 : 250;
        natsMsg_Destroy(m); /* status points into m's headers: decided above, not read below */
        if (ends)
            break;
    }
    if (pause_ms && n == 0) {
        /* A clustered JetStream moving a leader: normal during a failover, no error. A short pause, and the caller's
         * next request reaches the new leader. Logged at most every 5 s for the whole process. */
        int64_t now = clock_mono_ms(), last = atomic_load(&leader_logged_ms);
        if (now - last >= 5000 && atomic_compare_exchange_strong(&leader_logged_ms, &last, now))
            log_info("nats", "pull request ended by a JetStream leader change or a consumer without leader; retrying",
                     LF_S("status", pause_ms == 50 ? "409 leadership change" : "503 no responders"));
        clock_sleep_ms(pause_ms);
    }
cleanup:
    if (n == 0) {
        free(msgs);
        return rc != NATS_OK ? rc : (no_wait ? NATS_NOT_FOUND : NATS_TIMEOUT);
    }
    out->Msgs = msgs;
    out->Count = n;
    return NATS_OK;
}

/* ---- acks ----------------------------------------------------------------------------------------------------- */

static natsStatus reply_with(natsConnection *nc, natsMsg *m, const char *body)
{
    const char *r = natsMsg_GetReply(m);
    if (!r || !*r)
        return NATS_ILLEGAL_STATE;
    return natsConnection_Publish(nc, r, body, (int)strlen(body));
}

natsStatus pull_ack(natsConnection *nc, natsMsg *m)
{
    return reply_with(nc, m, "+ACK");
}

natsStatus pull_ack_sync(natsConnection *nc, natsMsg *m, int64_t timeout_ms)
{
    const char *r = natsMsg_GetReply(m);
    if (!r || !*r)
        return NATS_ILLEGAL_STATE;
    natsMsg *resp = NULL;
    natsStatus s = natsConnection_Request(&resp, nc, r, "+ACK", 4, timeout_ms);
    natsMsg_Destroy(resp);
    return s;
}

natsStatus pull_nak(natsConnection *nc, natsMsg *m, int64_t delay_ms)
{
    char body[64];
    snprintf(body, sizeof body, "-NAK {\"delay\":%lld}", (long long)(delay_ms > 0 ? delay_ms : 0) * 1000000LL);
    return reply_with(nc, m, delay_ms > 0 ? body : "-NAK");
}

natsStatus pull_in_progress(natsConnection *nc, natsMsg *m)
{
    return reply_with(nc, m, "+WPI");
}

natsStatus pull_term(natsConnection *nc, natsMsg *m)
{
    return reply_with(nc, m, "+TERM");
}
