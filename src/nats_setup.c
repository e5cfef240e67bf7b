/* nats_setup.c - NATS connection with endless reconnect, streams created/extended, durable pull consumers. */
#include "nats_setup.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "secrets.h"
#include "metrics.h"

static void on_disconnected(natsConnection *nc, void *closure)
{
    (void)nc;
    (void)closure;
    metrics_nats_connected_set(false);
    log_warn("nats", "disconnected from NATS; reconnecting");
}

static void on_reconnected(natsConnection *nc, void *closure)
{
    (void)nc;
    mes_nats_t *n = closure;
    atomic_fetch_add(&n->reconnects, 1);
    metrics_nats_connected_set(true);
    log_info("nats", "reconnected to NATS");
}

static void on_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    (void)nc;
    (void)sub;
    (void)closure;
    log_warn("nats", "asynchronous NATS error", LF_S("error", natsStatus_GetText(err)));
}

int mes_nats_connect(mes_nats_t *n, const config_t *cfg, int64_t deadline_ms, const atomic_bool *stop)
{
    natsOptions *opts = NULL;
    natsStatus s;
    char masked[512];
    int64_t wait = 200;

    memset(n, 0, sizeof *n);
    n->cfg = cfg;
    secrets_mask(cfg->nats_url, masked, sizeof masked);
    if ((s = natsOptions_Create(&opts)) != NATS_OK)
        goto fail;
    s = natsOptions_SetURL(opts, cfg->nats_url);
    if (s == NATS_OK)
        s = natsOptions_SetName(opts, "message-event-service");
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(opts, -1); /* a NATS restart must never end the service */
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(opts, 250);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectJitter(opts, 100, 1000);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectBufSize(opts, 8 * 1024 * 1024);
    if (s == NATS_OK)
        s = natsOptions_SetPingInterval(opts, 5000);
    if (s == NATS_OK)
        s = natsOptions_SetMaxPingsOut(opts, 3);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(opts, 5000);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(opts, on_disconnected, NULL);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectedCB(opts, on_reconnected, n);
    if (s == NATS_OK)
        s = natsOptions_SetErrorHandler(opts, on_error, NULL);
    if (s != NATS_OK)
        goto fail;

    for (;;) {
        s = natsConnection_Connect(&n->nc, opts);
        if (s == NATS_OK)
            break;
        log_warn("nats", "cannot connect to NATS; retrying", LF_S("url", masked), LF_S("error", natsStatus_GetText(s)),
                 LF_I("retry_in_ms", wait));
        if (clock_mono_ms() + wait > deadline_ms || atomic_load(stop))
            goto fail;
        clock_sleep_ms_unless(wait, stop);
        wait = clock_backoff_next(wait, 5000);
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = 10000;
    if ((s = natsConnection_JetStream(&n->js, n->nc, &jo)) != NATS_OK)
        goto fail;
    natsOptions_Destroy(opts);
    metrics_nats_connected_set(true);
    log_info("nats", "connected to NATS", LF_S("url", masked));
    return 0;
fail:
    if (!stop || !atomic_load(stop)) /* a stop request ended the wait: the caller says so, it is no failure */
        log_error("nats", "NATS connection failed", LF_S("url", masked), LF_S("error", natsStatus_GetText(s)),
                  LF_S("detail", nats_GetLastError(NULL)));
    natsOptions_Destroy(opts);
    mes_nats_close(n);
    return -1;
}

static void retired_free_all(void);

void mes_nats_close(mes_nats_t *n)
{
    if (!n)
        return;
    if (n->js)
        jsCtx_Destroy(n->js);
    n->js = NULL;
    if (n->nc) {
        natsConnection_Close(n->nc);
        retired_free_all(); /* closed: no reader thread can reach them any more */
        natsConnection_Destroy(n->nc);
    }
    n->nc = NULL;
    metrics_nats_connected_set(false);
}

bool mes_nats_connected(const mes_nats_t *n)
{
    return n && n->nc && natsConnection_Status(n->nc) == NATS_CONN_STATUS_CONNECTED;
}

/* ---- streams ------------------------------------------------------------------------------------------- */

static bool has_subject(const jsStreamConfig *sc, const char *subj)
{
    for (int i = 0; i < sc->SubjectsLen; i++)
        if (strcmp(sc->Subjects[i], subj) == 0)
            return true;
    return false;
}

static int ensure_stream(mes_nats_t *n, const char *name, const char **subjects, int nsubj, int max_age_days)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, n->js, name, NULL, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
        jsStreamConfig sc;
        jsStreamConfig_Init(&sc);
        sc.Name = name;
        sc.Subjects = subjects;
        sc.SubjectsLen = nsubj;
        sc.Storage = js_FileStorage;
        sc.Retention = js_LimitsPolicy; /* FIX: never interest retention (it drops events before a consumer exists) */
        sc.MaxAge = (int64_t)max_age_days * 24 * 3600 * 1000000000LL;
        s = js_AddStream(&si, n->js, &sc, NULL, &jerr);
        if (s == NATS_OK) {
            log_info("nats", "stream created", LF_S("stream", name), LF_I("max_age_days", max_age_days));
            jsStreamInfo_Destroy(si);
            return 0;
        }
        /* Replicas start together: another one may have created it between our lookup and our create (the server
         * then answers "name in use" or "subjects overlap"). If it exists now, go on as for an existing stream. */
        jsErrCode create_err = jerr;
        char detail[256];
        snprintf(detail, sizeof detail, "%s", nats_GetLastError(NULL) ? nats_GetLastError(NULL) : "");
        si = NULL;
        if (js_GetStreamInfo(&si, n->js, name, NULL, &jerr) != NATS_OK || !si) {
            log_error("nats", "cannot create stream", LF_S("stream", name), LF_S("error", natsStatus_GetText(s)),
                      LF_I("js_error", create_err), LF_S("detail", detail));
            jsStreamInfo_Destroy(si);
            return -1;
        }
        s = NATS_OK;
    }
    if (s != NATS_OK) {
        log_error("nats", "cannot read stream", LF_S("stream", name), LF_S("error", natsStatus_GetText(s)),
                  LF_I("js_error", jerr));
        return -1;
    }
    /* Present: add only the subjects it lacks, keep every other setting the operator may have tuned. */
    int missing = 0;
    for (int i = 0; i < nsubj; i++)
        missing += !has_subject(si->Config, subjects[i]);
    if (missing) {
        jsStreamConfig *sc = si->Config;
        int total = sc->SubjectsLen + missing;
        const char **subs = calloc((size_t)total, sizeof *subs);
        if (!subs) {
            jsStreamInfo_Destroy(si);
            return -1;
        }
        int k = 0;
        for (int i = 0; i < sc->SubjectsLen; i++)
            subs[k++] = sc->Subjects[i];
        for (int i = 0; i < nsubj; i++)
            if (!has_subject(sc, subjects[i]))
                subs[k++] = subjects[i];
        const char **old = sc->Subjects;
        int oldlen = sc->SubjectsLen;
        sc->Subjects = subs;
        sc->SubjectsLen = total;
        jsStreamInfo *upd = NULL;
        s = js_UpdateStream(&upd, n->js, sc, NULL, &jerr);
        sc->Subjects = old;
        sc->SubjectsLen = oldlen;
        free(subs);
        jsStreamInfo_Destroy(upd);
        if (s != NATS_OK) {
            log_error("nats", "cannot add subjects to stream", LF_S("stream", name),
                      LF_S("error", natsStatus_GetText(s)), LF_I("js_error", jerr),
                      LF_S("detail", nats_GetLastError(NULL)));
            jsStreamInfo_Destroy(si);
            return -1;
        }
        log_info("nats", "stream subjects added", LF_S("stream", name), LF_I("added", missing));
    }
    jsStreamInfo_Destroy(si);
    return 0;
}

/* Ensures the service's streams; only the one named `only` when it is not NULL. The fourth is the tenant's advisory
 * stream (advisory.c): the max-deliveries advisory subject of each of its eleven durables (all ten lanes whatever
 * subjectList says, and the DLQ's), so advisories published while no replica runs wait there; created before the
 * consumers, so an advisory about one of them is kept from the moment it can be published. */
static int ensure_streams(mes_nats_t *n, const char *only)
{
    const config_t *cfg = n->cfg;
    char rt[ET_BASE_COUNT][64], dlq[128], adv[ET_BASE_COUNT + 1][600];
    const char *advs[ET_BASE_COUNT + 1];
    mes_durable_t d;
    for (int i = 0; i <= ET_BASE_COUNT; i++) {
        mes_nats_durable(&d, cfg, i < ET_BASE_COUNT ? MES_DURABLE_LANE : MES_DURABLE_DLQ, (event_type_t)i);
        snprintf(adv[i], sizeof adv[i], "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.%s.%s", d.stream, d.durable);
        advs[i] = adv[i];
    }
    mes_nats_durable(&d, cfg, MES_DURABLE_ADVISORY, ET_UNKNOWN);
    const char *rts[ET_BASE_COUNT], *his[ET_BASE_COUNT];
    int nrt = 0, nhi = 0;
    for (int et = 0; et < ET_BASE_COUNT; et++) {
        snprintf(rt[et], sizeof rt[et], "%s.*", event_type_base((event_type_t)et));
        if (event_type_lane((event_type_t)et) == LANE_REALTIME)
            rts[nrt++] = rt[et];
        else
            his[nhi++] = rt[et];
    }
    snprintf(dlq, sizeof dlq, "%s.>", cfg->dlq_subject);
    const char *dlqs[1] = {dlq};
    const struct {
        const char *name;
        const char **subjects;
        int nsubj, max_age_days;
    } streams[] = {
        {cfg->realtime.stream, rts, nrt, cfg->realtime.max_age_days},
        {cfg->historical.stream, his, nhi, cfg->historical.max_age_days},
        {cfg->dlq_stream, dlqs, 1, cfg->dlq_max_age_days},
        {d.stream, advs, ET_BASE_COUNT + 1, cfg->dlq_max_age_days},
    };
    for (size_t i = 0; i < sizeof streams / sizeof streams[0]; i++)
        if ((!only || strcmp(only, streams[i].name) == 0) &&
            ensure_stream(n, streams[i].name, streams[i].subjects, streams[i].nsubj, streams[i].max_age_days) != 0)
            return -1;
    return 0;
}

int mes_nats_ensure_streams(mes_nats_t *n)
{
    return ensure_streams(n, NULL);
}

/* ---- consumers ------------------------------------------------------------------------------------------ */

void mes_nats_durable(mes_durable_t *d, const config_t *cfg, mes_durable_kind_t kind, event_type_t et)
{
    memset(d, 0, sizeof *d);
    d->kind = kind;
    d->et = kind == MES_DURABLE_LANE ? et : ET_UNKNOWN;
    switch (kind) {
    case MES_DURABLE_LANE: {
        const lane_config_t *lc = event_type_lane(et) == LANE_HISTORICAL ? &cfg->historical : &cfg->realtime;
        snprintf(d->stream, sizeof d->stream, "%s", lc->stream);
        snprintf(d->durable, sizeof d->durable, "%s%s_%s", lc->consumer, cfg->company_id, event_type_durable_suffix(et));
        snprintf(d->filter, sizeof d->filter, "%s.%s", event_type_base(et), cfg->company_id);
        d->ack_wait_ms = lc->ack_wait_ms;
        d->max_deliver = lc->max_deliver;
        d->max_ack_pending = lc->max_ack_pending;
        break;
    }
    case MES_DURABLE_DLQ:
        snprintf(d->stream, sizeof d->stream, "%s", cfg->dlq_stream);
        snprintf(d->durable, sizeof d->durable, "v1_dlq_worker_%s", cfg->company_id);
        snprintf(d->filter, sizeof d->filter, "%s.%s", cfg->dlq_subject, cfg->company_id);
        d->ack_wait_ms = cfg->dlq_ack_wait_ms;
        d->max_deliver = cfg->dlq_max_deliver;
        d->max_ack_pending = cfg->dlq_max_ack_pending;
        break;
    case MES_DURABLE_ADVISORY:
        snprintf(d->stream, sizeof d->stream, "mes_advisories_%s", cfg->company_id);
        snprintf(d->durable, sizeof d->durable, "mes_advisory_worker_%s", cfg->company_id);
        d->ack_wait_ms = cfg->dlq_ack_wait_ms;
        d->max_deliver = -1; /* the safety net never gives up itself: an advisory stays until its row is stored */
        d->max_ack_pending = 64;
        break;
    }
}

static bool js_not_found(natsStatus s, jsErrCode jerr)
{
    return s == NATS_NOT_FOUND || jerr == JSConsumerNotFoundErr || jerr == JSStreamNotFoundErr;
}

/* Creation time of stream (ns), and its last sequence in *last_seq; 0 when it cannot be read. */
static int64_t stream_created(mes_nats_t *n, const char *stream, uint64_t *last_seq)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    int64_t created = 0;
    *last_seq = 0;
    if (js_GetStreamInfo(&si, n->js, stream, NULL, &jerr) == NATS_OK && si) {
        created = si->Created;
        *last_seq = si->State.LastSeq;
    }
    jsStreamInfo_Destroy(si);
    return created;
}

int mes_nats_subscribe(mes_nats_t *n, const mes_durable_t *d, mes_fetch_watch_t *w, pull_t **sub)
{
    const char *stream = d->stream, *durable = d->durable, *filter = d->filter;
    jsErrCode jerr = 0;
    jsConsumerInfo *ci = NULL;

    natsStatus s = js_GetConsumerInfo(&ci, n->js, stream, durable, NULL, &jerr);
    if (s != NATS_OK && jerr == JSStreamNotFoundErr) {
        /* The stream is the service's own (deleted at runtime, or never there): create it, then the durable. */
        log_warn("nats", "stream missing; re-creating it", LF_S("stream", stream), LF_S("durable", durable));
        if (ensure_streams(n, stream) != 0)
            return -1;
        jerr = 0;
        s = js_GetConsumerInfo(&ci, n->js, stream, durable, NULL, &jerr);
    }
    if (s == NATS_NOT_FOUND || jerr == JSConsumerNotFoundErr) {
        jsConsumerConfig cc;
        jsConsumerConfig_Init(&cc);
        cc.Durable = durable;
        cc.DeliverPolicy = js_DeliverAll; /* FIX: a new tenant's backlog is processed, not skipped */
        uint64_t last_seq = 0;
        if (w && w->ack_floor > 0 && stream_created(n, stream, &last_seq) == w->stream_created &&
            last_seq >= w->ack_floor) {
            /* It was here and is gone (deleted at runtime): go on after what it had acked. What it delivered
             * beyond its ack floor comes again (upserts are idempotent); nothing is skipped. */
            cc.DeliverPolicy = js_DeliverByStartSequence;
            cc.OptStartSeq = w->ack_floor + 1;
            log_warn("nats", "consumer missing; re-creating it after its last ack floor", LF_S("durable", durable),
                     LF_I("start_sequence", (long long)cc.OptStartSeq));
        } else if (w && w->ack_floor > 0) {
            log_warn("nats", "consumer missing on a new stream; re-creating it from the stream's start",
                     LF_S("durable", durable));
        }
        cc.AckPolicy = js_AckExplicit;
        cc.AckWait = d->ack_wait_ms * 1000000LL;
        cc.MaxDeliver = d->max_deliver;
        cc.MaxAckPending = d->max_ack_pending;
        cc.FilterSubject = filter[0] ? filter : NULL;
        s = js_AddConsumer(&ci, n->js, stream, &cc, NULL, &jerr);
        if (s == NATS_OK)
            log_info("nats", "consumer created", LF_S("stream", stream), LF_S("durable", durable),
                     LF_S("filter", filter));
        else if (jerr == JSConsumerNameExistErr || jerr == JSConsumerExistingActiveErr)
            s = js_GetConsumerInfo(&ci, n->js, stream, durable, NULL, &jerr);
    } else if (s == NATS_OK) {
        jsConsumerConfig *cc = ci->Config;
        if (filter[0] && (cc->FilterSubject == NULL || strcmp(cc->FilterSubject, filter) != 0)) {
            log_error("nats", "existing consumer has another filter subject; refusing to change it",
                      LF_S("durable", durable), LF_S("filter", cc->FilterSubject ? cc->FilterSubject : ""),
                      LF_S("expected", filter));
            jsConsumerInfo_Destroy(ci);
            return -1;
        }
        /* The advisory durable is never changed: an operator may have tuned it, and it only needs to exist. */
        if (d->kind != MES_DURABLE_ADVISORY &&
            (cc->AckWait != d->ack_wait_ms * 1000000LL || cc->MaxDeliver != d->max_deliver ||
             cc->MaxAckPending != d->max_ack_pending)) {
            cc->AckWait = d->ack_wait_ms * 1000000LL;
            cc->MaxDeliver = d->max_deliver;
            cc->MaxAckPending = d->max_ack_pending;
            jsConsumerInfo *upd = NULL;
            s = js_UpdateConsumer(&upd, n->js, stream, cc, NULL, &jerr);
            jsConsumerInfo_Destroy(upd);
            if (s == NATS_OK)
                log_info("nats", "consumer updated in place", LF_S("durable", durable));
        }
    }
    if (s == NATS_OK && w && ci) {
        uint64_t last_seq;
        w->ack_floor = ci->AckFloor.Stream;
        w->stream_created = stream_created(n, stream, &last_seq);
    }
    jsConsumerInfo_Destroy(ci);
    if (s != NATS_OK) {
        log_error("nats", "cannot create or update consumer", LF_S("stream", stream), LF_S("durable", durable),
                  LF_S("error", natsStatus_GetText(s)), LF_I("js_error", jerr), LF_S("detail", nats_GetLastError(NULL)));
        return -1;
    }

    pull_t *fresh = pull_create(n->nc, stream, durable); /* adopted only on success */
    if (!fresh) {
        log_error("nats", "cannot subscribe", LF_S("durable", durable), LF_S("detail", nats_GetLastError(NULL)));
        return -1;
    }
    *sub = fresh;
    return 0;
}

/* ---- fetch loops' watchdog ---------------------------------------------------------------------------------- */

#define STALL_SILENCE_MS 10000
#define CHECK_EVERY_MS 5000 /* also bounds how much a durable re-created after a deletion delivers again */

bool mes_nats_fetch_watch(mes_nats_t *n, mes_fetch_watch_t *w, const mes_durable_t *d, bool got_messages)
{
    int64_t now = clock_mono_ms();
    uint64_t r = atomic_load(&n->reconnects);
    if (!w->last_msg_ms)
        w->last_msg_ms = w->last_check_ms = now;
    if (r != w->seen_reconnects) {
        w->seen_reconnects = r;
        w->last_msg_ms = now;
        w->suspect = false;
        return true;
    }
    if (got_messages) {
        w->last_msg_ms = now;
        w->suspect = false;
    }
    if (now - w->last_check_ms < CHECK_EVERY_MS)
        return false;
    w->last_check_ms = now;
    const char *stream = d->stream, *durable = d->durable;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetConsumerInfo(&ci, n->js, stream, durable, NULL, &jerr);
    if (s != NATS_OK || !ci) {
        jsConsumerInfo_Destroy(ci);
        if (!js_not_found(s, jerr))
            return false; /* NATS did not answer: the next check asks again */
        log_warn("nats", jerr == JSStreamNotFoundErr ? "stream deleted at runtime; re-creating it and the consumer"
                                                     : "consumer deleted at runtime; re-creating it",
                 LF_S("stream", stream), LF_S("durable", durable));
        return true;
    }
    w->ack_floor = ci->AckFloor.Stream;
    uint64_t pending = ci->NumPending;
    int64_t ack_pending = ci->NumAckPending, max_ack = ci->Config ? ci->Config->MaxAckPending : 0;
    jsConsumerInfo_Destroy(ci);
    if (d->kind == MES_DURABLE_LANE)
        metrics_consumer_pending_set(d->et, pending);
    if (got_messages)
        return false;
    bool stalled = pending > 0 && (max_ack <= 0 || ack_pending < max_ack) && now - w->last_msg_ms >= STALL_SILENCE_MS;
    if (stalled && w->suspect) {
        w->suspect = false;
        w->last_msg_ms = now;
        log_warn("nats", "consumer stalled with messages pending; re-subscribing", LF_S("durable", durable),
                 LF_I("pending", (long long)pending), LF_I("ack_pending", ack_pending));
        return true;
    }
    w->suspect = stalled;
    return false;
}

/* Unsubscribed subscriptions are destroyed late: nats.c 3.4.1's reader thread can still be delivering a message to a
 * subscription it looked up just before the unsubscribe (fixed upstream in 3.6.1, #638), and freeing it then
 * crashed the service right after a NATS restart, when the fetchers re-subscribe. They are freed once RETIRED_MAX
 * newer ones wait, or when the connection is closed (no reader thread left). */
#define RETIRED_MAX 32
static pthread_mutex_t retired_mu = PTHREAD_MUTEX_INITIALIZER;
static natsSubscription *retired[RETIRED_MAX];
static int nretired;

static void retired_free_all(void)
{
    pthread_mutex_lock(&retired_mu);
    for (int i = 0; i < nretired; i++)
        natsSubscription_Destroy(retired[i]);
    nretired = 0;
    pthread_mutex_unlock(&retired_mu);
}

void mes_nats_unsubscribe(natsSubscription **sub)
{
    if (!*sub)
        return;
    natsSubscription_Unsubscribe(*sub);
    pthread_mutex_lock(&retired_mu);
    if (nretired == RETIRED_MAX) {
        natsSubscription_Destroy(retired[0]);
        memmove(retired, retired + 1, (RETIRED_MAX - 1) * sizeof retired[0]);
        nretired--;
    }
    retired[nretired++] = *sub;
    pthread_mutex_unlock(&retired_mu);
    *sub = NULL;
}

void mes_nats_resubscribe(mes_nats_t *n, const mes_durable_t *d, mes_fetch_watch_t *w, pull_t **sub,
                          atomic_bool *subscribed, const atomic_bool *stop)
{
    atomic_store(subscribed, false);
    for (int64_t wait = 200; !atomic_load(stop); wait = clock_backoff_next(wait, 5000)) {
        pull_destroy(*sub);
        *sub = NULL;
        if (mes_nats_subscribe(n, d, w, sub) == 0) {
            atomic_store(subscribed, true);
            log_info("nats", "consumer re-subscribed", LF_S("durable", d->durable));
            return;
        }
        clock_sleep_ms(wait);
    }
}

/* ---- a message by stream sequence ---------------------------------------------------------------------------- */

mes_source_t mes_nats_get_msg(mes_nats_t *n, const char *stream, uint64_t seq, natsMsg **out, char *why, size_t whylen)
{
    jsErrCode jerr = 0;
    *out = NULL;
    natsStatus s = js_GetMsg(out, n->js, stream, seq, NULL, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSNoMessageFoundErr || jerr == JSStreamNotFoundErr) {
        natsMsg_Destroy(*out);
        *out = NULL;
        snprintf(why, whylen, "the full message is gone from stream %s (sequence %llu)", stream,
                 (unsigned long long)seq);
        return MES_SRC_GONE;
    }
    if (s != NATS_OK) {
        natsMsg_Destroy(*out);
        *out = NULL;
        snprintf(why, whylen, "reading the full original from stream %s sequence %llu: %s (js error %d)", stream,
                 (unsigned long long)seq, natsStatus_GetText(s), (int)jerr);
        return MES_SRC_FAILED;
    }
    return MES_SRC_OK;
}

mes_source_t mes_nats_get_source(mes_nats_t *n, const char *stream, uint64_t seq, const char *subject, buf_t *out,
                                 char *why, size_t whylen)
{
    natsMsg *m = NULL;
    mes_source_t rc = mes_nats_get_msg(n, stream, seq, &m, why, whylen);
    if (rc != MES_SRC_OK)
        return rc;
    if (strcmp(natsMsg_GetSubject(m), subject) != 0) {
        snprintf(why, whylen, "stream %s sequence %llu holds a message of subject %s, not %s", stream,
                 (unsigned long long)seq, natsMsg_GetSubject(m), subject);
        rc = MES_SRC_MISMATCH;
    } else {
        buf_append(out, natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m));
    }
    natsMsg_Destroy(m);
    return rc;
}
