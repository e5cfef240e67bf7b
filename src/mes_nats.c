/* mes_nats.c - NATS connection with endless reconnect, streams created/extended, durable pull consumers. */
#include "mes_nats.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "nkey.h"
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

/* Splits nats.url at ',' into trimmed items (config_load already refused empty ones). */
static int split_urls(const char *list, char ***out)
{
    int n = 1;
    for (const char *c = list; *c; c++)
        n += *c == ',';
    char **v = calloc((size_t)n, sizeof *v);
    if (!v)
        return -1;
    int k = 0;
    for (const char *s = list; k < n;) {
        size_t len = strcspn(s, ",");
        const char *a = s, *b = s + len;
        while (a < b && isspace((unsigned char)*a))
            a++;
        while (b > a && isspace((unsigned char)b[-1]))
            b--;
        if (b > a && !(v[k++] = strndup(a, (size_t)(b - a)))) {
            for (int i = 0; i < k - 1; i++)
                free(v[i]);
            free(v);
            return -1;
        }
        if (!s[len])
            break;
        s += len + 1;
    }
    *out = v;
    return k;
}

static void free_urls(char **v, int n)
{
    for (int i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* Host of a server URL: after "scheme://" and any "userinfo@", up to ':' or '/' ("[v6]" without the brackets). */
static void url_host(const char *url, char *host, size_t len)
{
    const char *a = strstr(url, "://");
    a = a ? a + 3 : url;
    const char *end = a + strcspn(a, "/?#");
    for (const char *c = a; c < end; c++)
        if (*c == '@')
            a = c + 1;
    const char *b;
    if (*a == '[') {
        a++;
        b = memchr(a, ']', (size_t)(end - a));
        if (!b)
            b = end;
    } else {
        b = memchr(a, ':', (size_t)(end - a));
        if (!b)
            b = end;
    }
    snprintf(host, len, "%.*s", (int)(b - a), a);
}

static bool tls_wanted(const config_t *cfg, char **urls, int n)
{
    if (cfg->nats_tls_ca_file || cfg->nats_tls_cert_file || cfg->nats_tls_key_file)
        return true;
    for (int i = 0; i < n; i++)
        if (strncasecmp(urls[i], "tls://", 6) == 0)
            return true;
    return false;
}

/* TLS and authentication from the nats.tls.* and auth keys (SPEC 9). Hostname verification is always on: the
 * expected name is the host of the first URL (nats.c 3.4.1 checks one name for every server, so the certificates of
 * a cluster must all carry it, e.g. the service name or a wildcard; see README "Production deployment"). */
static natsStatus set_security(natsOptions *opts, const config_t *cfg, char **urls, int n, char *why, size_t whylen)
{
    natsStatus s = NATS_OK;
    char host[200];
    url_host(urls[0], host, sizeof host);
    if (tls_wanted(cfg, urls, n)) {
        s = natsOptions_SetSecure(opts, true);
        if (s == NATS_OK && cfg->nats_tls_ca_file &&
            (s = natsOptions_LoadCATrustedCertificates(opts, cfg->nats_tls_ca_file)) != NATS_OK)
            snprintf(why, whylen, "nats.tls.caFile: cannot load the CA certificates");
        if (s == NATS_OK && cfg->nats_tls_cert_file &&
            (s = natsOptions_LoadCertificatesChain(opts, cfg->nats_tls_cert_file, cfg->nats_tls_key_file)) != NATS_OK)
            snprintf(why, whylen, "nats.tls.certFile / nats.tls.keyFile: cannot load the client certificate and key");
    }
    /* Also without TLS keys: a server that requires TLS switches the connection to TLS, and it is verified too. */
    if (s == NATS_OK && host[0] && (s = natsOptions_SetExpectedHostname(opts, host)) != NATS_OK)
        snprintf(why, whylen, "nats.url: cannot verify host name %.150s", host);
    if (s == NATS_OK && cfg->nats_user)
        s = natsOptions_SetUserInfo(opts, cfg->nats_user, cfg->nats_password);
    if (s == NATS_OK && cfg->nats_token)
        s = natsOptions_SetToken(opts, cfg->nats_token);
    if (s == NATS_OK && cfg->nats_nkey_seed_file) {
        char seed[128], pub[128], err[160];
        if (nkey_read_seed_file(cfg->nats_nkey_seed_file, seed, sizeof seed, err, sizeof err) != 0 ||
            nkey_public_from_seed(seed, pub, sizeof pub, err, sizeof err) != 0) {
            snprintf(why, whylen, "nats.nkeySeedFile: %s", err);
            s = NATS_INVALID_ARG;
        } else {
            s = natsOptions_SetNKeyFromSeed(opts, pub, cfg->nats_nkey_seed_file);
        }
        memset(seed, 0, sizeof seed);
    }
    if (s == NATS_OK && cfg->nats_creds_file &&
        (s = natsOptions_SetUserCredentialsFromFiles(opts, cfg->nats_creds_file, NULL)) != NATS_OK)
        snprintf(why, whylen, "nats.credsFile: cannot use the credentials file");
    return s;
}

/* A connect failure that retrying cannot cure: the server's certificate does not verify against nats.tls.caFile
 * (or the host name does not match), or the server refused our credentials. */
static const char *config_failure(natsStatus s, const char *detail, const config_t *cfg)
{
    if (!detail)
        detail = "";
    if (s == NATS_SSL_ERROR || strstr(detail, "certificate") || strstr(detail, "SSL handshake") ||
        strstr(detail, "hostname"))
        return cfg->nats_tls_ca_file ? "the NATS server's TLS certificate does not verify against nats.tls.caFile "
                                       "(wrong CA, or the certificate does not name the host of nats.url)"
                                     : "the NATS server's TLS certificate does not verify (set nats.tls.caFile to "
                                       "the CA that signed it; its name must match the host of nats.url)";
    if (s == NATS_NOT_PERMITTED || strcasestr(detail, "authorization violation") ||
        strcasestr(detail, "authentication"))
        return "the NATS server refused the credentials (nats.user/nats.password, nats.token, nats.nkeySeedFile, "
               "nats.credsFile, or user:password@ in nats.url)";
    return NULL;
}

int mes_nats_connect(mes_nats_t *n, const config_t *cfg, int64_t deadline_ms, const atomic_bool *stop)
{
    natsOptions *opts = NULL;
    natsStatus s;
    char masked[4096 + 64], why[256] = "", detail[512] = "";
    int64_t wait = 200;
    char **urls = NULL;
    int nurls = 0, rc = -1;

    memset(n, 0, sizeof *n);
    n->cfg = cfg;
    secrets_mask(cfg->nats_url, masked, sizeof masked);
    if ((s = natsOptions_Create(&opts)) != NATS_OK)
        goto cleanup;
    if ((nurls = split_urls(cfg->nats_url, &urls)) <= 0) {
        s = NATS_NO_MEMORY;
        goto cleanup;
    }
    /* nats.c 3.4.1: SetURL with a comma list returns OK but never connects; SetServers with the split list does.
     * Servers the cluster announces are added to the pool (discovery is on by default). */
    s = natsOptions_SetServers(opts, (const char **)urls, nurls);
    if (s == NATS_OK)
        s = set_security(opts, cfg, urls, nurls, why, sizeof why);
    if (s != NATS_OK && why[0]) {
        rc = MES_NATS_BAD_CONFIG;
        goto cleanup;
    }
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
        goto cleanup;

    for (;;) {
        s = natsConnection_Connect(&n->nc, opts);
        if (s == NATS_OK)
            break;
        secrets_mask(nats_GetLastError(NULL), detail, sizeof detail);
        const char *cls = config_failure(s, detail, cfg);
        if (cls) {
            snprintf(why, sizeof why, "%s", cls);
            rc = MES_NATS_BAD_CONFIG;
            goto cleanup;
        }
        log_warn("nats", "cannot connect to NATS; retrying", LF_S("url", masked), LF_S("error", natsStatus_GetText(s)),
                 LF_S("detail", detail), LF_I("retry_in_ms", wait));
        if (clock_mono_ms() + wait > deadline_ms || atomic_load(stop))
            goto cleanup;
        clock_sleep_ms_unless(wait, stop);
        wait = clock_backoff_next(wait, 5000);
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = 10000;
    if ((s = natsConnection_JetStream(&n->js, n->nc, &jo)) != NATS_OK)
        goto cleanup;
    bool tls = tls_wanted(cfg, urls, nurls);
    natsOptions_Destroy(opts);
    free_urls(urls, nurls);
    metrics_nats_connected_set(true);
    char server[256] = "";
    natsConnection_GetConnectedUrl(n->nc, server, sizeof server);
    secrets_mask(server, detail, sizeof detail);
    log_info("nats", "connected to NATS", LF_S("url", masked), LF_S("server", detail), LF_I("seed_servers", nurls),
             LF_B("tls", tls));
    return 0;
cleanup:
    if (rc == MES_NATS_BAD_CONFIG) {
        if (!detail[0])
            secrets_mask(nats_GetLastError(NULL), detail, sizeof detail);
        log_error("nats", "NATS connection refused by the configuration", LF_S("url", masked), LF_S("reason", why),
                  LF_S("error", natsStatus_GetText(s)), LF_S("detail", detail));
        fprintf(stderr, "invalid configuration: %s: %s\n", why, detail);
    } else if (!stop || !atomic_load(stop)) { /* a stop request ended the wait: the caller says so, no failure */
        if (!detail[0])
            secrets_mask(nats_GetLastError(NULL), detail, sizeof detail);
        log_error("nats", "NATS connection failed", LF_S("url", masked), LF_S("error", natsStatus_GetText(s)),
                  LF_S("detail", detail));
    }
    natsOptions_Destroy(opts);
    free_urls(urls, nurls > 0 ? nurls : 0);
    mes_nats_close(n);
    return rc;
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

void mes_nats_library_close(void)
{
    natsStatus s = nats_CloseAndWait(2000);
    if (s != NATS_OK && s != NATS_NOT_INITIALIZED)
        log_warn("nats", "the NATS library's threads did not end in time", LF_S("error", natsStatus_GetText(s)));
}

bool mes_nats_connected(const mes_nats_t *n)
{
    return n && n->nc && natsConnection_Status(n->nc) == NATS_CONN_STATUS_CONNECTED;
}

/* JetStream API answers that a cluster gives while it elects a leader or a peer restarts: try again shortly. */
static bool js_transient(natsStatus s, jsErrCode jerr)
{
    return s == NATS_TIMEOUT || s == NATS_NO_RESPONDERS || s == NATS_CONNECTION_DISCONNECTED || s == NATS_IO_ERROR ||
           s == NATS_STALE_CONNECTION || jerr == 10008 /* JSClusterNotAvailErr */ ||
           jerr == 10005 /* JSClusterNoPeersErr */ || jerr == 10006 /* JSClusterNotActiveErr */ ||
           jerr == 10007 /* JSClusterNotAssignedErr */ || jerr == 10009 /* JSClusterNotLeaderErr */ ||
           jerr == 10074 /* JSClusterPeerNotMemberErr */ || jerr == 10023 /* JSInsufficientResourcesErr */;
}

/* Remembers a JetStream API failure for the retry loops; transient ones are logged as warnings. */
static log_level_t js_failed_at(natsStatus *ps, int *pj, natsStatus s, jsErrCode jerr)
{
    *ps = s;
    *pj = (int)jerr;
    return js_transient(s, jerr) ? LOG_WARN : LOG_ERROR;
}

/* js_failed_at for ensure_stream, which fetchers re-creating a stream may run at the same time as main. */
static log_level_t stream_failed_at(mes_nats_t *n, natsStatus s, jsErrCode jerr)
{
    atomic_store(&n->last_status, s);
    atomic_store(&n->last_jerr, (int)jerr);
    return js_transient(s, jerr) ? LOG_WARN : LOG_ERROR;
}

/* ---- streams ------------------------------------------------------------------------------------------- */

static bool has_subject(const jsStreamConfig *sc, const char *subj)
{
    for (int i = 0; i < sc->SubjectsLen; i++)
        if (strcmp(sc->Subjects[i], subj) == 0)
            return true;
    return false;
}

static int ensure_stream(mes_nats_t *n, int idx, const char *name, const char **subjects, int nsubj, int max_age_days)
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
        sc.Replicas = n->cfg->nats_stream_replicas; /* only here: an existing stream's replicas are never changed */
        s = js_AddStream(&si, n->js, &sc, NULL, &jerr);
        if (s == NATS_OK) {
            log_info("nats", "stream created", LF_S("stream", name), LF_I("max_age_days", max_age_days),
                     LF_I("replicas", sc.Replicas));
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
            LOG_AT(stream_failed_at(n, s, create_err), "nats", "cannot create stream", LF_S("stream", name),
                   LF_S("error", natsStatus_GetText(s)), LF_I("js_error", create_err), LF_S("detail", detail));
            jsStreamInfo_Destroy(si);
            return -1;
        }
        s = NATS_OK;
    }
    if (s != NATS_OK) {
        LOG_AT(stream_failed_at(n, s, jerr), "nats", "cannot read stream", LF_S("stream", name),
               LF_S("error", natsStatus_GetText(s)), LF_I("js_error", jerr));
        return -1;
    }
    /* Present: add only the subjects it lacks, keep every other setting the operator may have tuned. */
    int have = si->Config->Replicas > 0 ? (int)si->Config->Replicas : 1;
    if (have != n->cfg->nats_stream_replicas && !(atomic_fetch_or(&n->replicas_warned, 1u << idx) & (1u << idx))) {
        log_warn("nats", "existing stream has another replica count than nats.streamReplicas; leaving it as it is",
                 LF_S("stream", name), LF_I("replicas", have),
                 LF_I("nats.streamReplicas", n->cfg->nats_stream_replicas));
    }
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
            LOG_AT(stream_failed_at(n, s, jerr), "nats", "cannot add subjects to stream", LF_S("stream", name),
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

#define JS_RETRY_MS 30000

static int ensure_streams(mes_nats_t *n, const char *only);

int mes_nats_ensure_streams(mes_nats_t *n)
{
    int64_t deadline = clock_mono_ms() + JS_RETRY_MS;
    for (int64_t wait = 200;; wait = wait * 2 > 2000 ? 2000 : wait * 2) {
        atomic_store(&n->last_status, NATS_OK);
        atomic_store(&n->last_jerr, 0);
        int rc = ensure_streams(n, NULL);
        if (rc == 0 || !js_transient(atomic_load(&n->last_status), atomic_load(&n->last_jerr)) ||
            clock_mono_ms() + wait > deadline)
            return rc;
        log_info("nats", "JetStream not ready (cluster electing a leader?); retrying", LF_I("retry_in_ms", wait));
        clock_sleep_ms(wait);
    }
}

/* Ensures the service's streams once; only the one named `only` when it is not NULL. The fourth is the tenant's
 * advisory stream (advisory.c): the max-deliveries advisory subject of each of its eleven durables (all ten lanes
 * whatever subjectList says, and the DLQ's), so advisories published while no replica runs wait there; created
 * before the consumers, so an advisory about one of them is kept from the moment it can be published. */
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
            ensure_stream(n, (int)i, streams[i].name, streams[i].subjects, streams[i].nsubj, streams[i].max_age_days) !=
                0)
            return -1;
    return 0;
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
        snprintf(d->durable, sizeof d->durable, "%s%s_%s", lc->consumer, cfg->company_id,
                 event_type_durable_suffix(et));
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

static int subscribe_once(mes_nats_t *n, const mes_durable_t *d, mes_fetch_watch_t *w, pull_t **sub, bool bind_only,
                          natsStatus *st, int *je);

/* Consumer create/lookup right after a cluster (re)formed can meet "no leader yet" answers: retried for 10 s. */
int mes_nats_subscribe(mes_nats_t *n, const mes_durable_t *d, mes_fetch_watch_t *w, pull_t **sub)
{
    int64_t deadline = clock_mono_ms() + 10000;
    for (int64_t wait = 200;; wait = clock_backoff_next(wait, 2000)) {
        natsStatus st = NATS_OK;
        int je = 0;
        int rc = subscribe_once(n, d, w, sub, false, &st, &je);
        if (rc == 0 || !js_transient(st, je) || clock_mono_ms() + wait > deadline)
            return rc;
        clock_sleep_ms(wait);
    }
}

/* bind_only: the durable exists (checked or created before); only a new inbox is subscribed for it, which asks
 * nothing of JetStream, so nothing waits on a consumer leader being elected. */
static int subscribe_once(mes_nats_t *n, const mes_durable_t *d, mes_fetch_watch_t *w, pull_t **sub, bool bind_only,
                          natsStatus *st, int *je)
{
    const char *stream = d->stream, *durable = d->durable, *filter = d->filter;
    jsErrCode jerr = 0;
    jsConsumerInfo *ci = NULL;
    /* Short API waits: while a consumer's leader is being elected the request has no answer, and the caller's retry
     * (mes_nats_subscribe, mes_nats_resubscribe) is quicker than one long wait. */
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = 2500;

    natsStatus s = bind_only ? NATS_OK : js_GetConsumerInfo(&ci, n->js, stream, durable, &jo, &jerr);
    if (!bind_only && s != NATS_OK && jerr == JSStreamNotFoundErr) {
        /* The stream is the service's own (deleted at runtime, or never there): create it, then the durable. */
        log_warn("nats", "stream missing; re-creating it", LF_S("stream", stream), LF_S("durable", durable));
        if (ensure_streams(n, stream) != 0)
            return -1;
        jerr = 0;
        s = js_GetConsumerInfo(&ci, n->js, stream, durable, &jo, &jerr);
    }
    if (bind_only) {
        /* straight to the subscription */
    } else if (s == NATS_NOT_FOUND || jerr == JSConsumerNotFoundErr) {
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
        s = js_AddConsumer(&ci, n->js, stream, &cc, &jo, &jerr);
        if (s == NATS_OK)
            log_info("nats", "consumer created", LF_S("stream", stream), LF_S("durable", durable),
                     LF_S("filter", filter));
        else if (jerr == JSConsumerNameExistErr || jerr == JSConsumerExistingActiveErr)
            s = js_GetConsumerInfo(&ci, n->js, stream, durable, &jo, &jerr);
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
            s = js_UpdateConsumer(&upd, n->js, stream, cc, &jo, &jerr);
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
        LOG_AT(js_failed_at(st, je, s, jerr), "nats", "cannot create or update consumer", LF_S("stream", stream),
               LF_S("durable", durable), LF_S("error", natsStatus_GetText(s)), LF_I("js_error", jerr),
               LF_S("detail", nats_GetLastError(NULL)));
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
#define CHECK_EVERY_MS 5000 /* outside a backlog, also bounds what a durable re-created after a deletion redelivers */

uint64_t mes_nats_pending_after(const natsMsgList *got)
{
    jsMsgMetaData *md = NULL;
    uint64_t pending = 0;
    if (got && got->Count > 0 && natsMsg_GetMetaData(&md, got->Msgs[got->Count - 1]) == NATS_OK && md)
        pending = md->NumPending;
    jsMsgMetaData_Destroy(md);
    return pending;
}

bool mes_nats_fetch_watch(mes_nats_t *n, mes_fetch_watch_t *w, const mes_durable_t *d, const natsMsgList *got)
{
    bool got_messages = got && got->Count > 0;
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
    /* Not while the durable delivers a backlog. nats-server 2.9.10 counts a consumer's pending messages once and
     * then keeps the count up to date as it delivers; a consumer info request counts again, and when the consumer
     * stands in the stream's newest block with more of its messages ahead than behind, that count comes back with no
     * last sequence (filestore.go, FilteredState's "scan the out nodes" branch). From then on the server counts again
     * for every message it delivers, each time reading the block from its start: delivery fell to about one message
     * a millisecond, and a paced run that had fallen behind stayed behind for the rest of the run (p99 of 15-25 s;
     * README, "The consumer-info stall"). Once nothing has come for 5 s it asks as before, so the stall watch loses
     * nothing (its verdict needs 10 s of silence); the pending gauge comes from the deliveries meanwhile
     * (consumer.c), and the ack floor is refreshed once the backlog is gone. */
    if (got_messages)
        w->backlog = mes_nats_pending_after(got);
    if (w->backlog > 0 && now - w->last_msg_ms < CHECK_EVERY_MS)
        return false; /* still delivering (an empty fetch in a backlog says little); due again at the next fetch */
    w->last_check_ms = now;
    const char *stream = d->stream, *durable = d->durable;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    jsOptions jo; /* short: during a cluster election this call must not hold the fetch loop for 10 s */
    jsOptions_Init(&jo);
    jo.Wait = 2000;
    natsStatus s = js_GetConsumerInfo(&ci, n->js, stream, durable, &jo, &jerr);
    if (s != NATS_OK || !ci) {
        jsConsumerInfo_Destroy(ci);
        if (!js_not_found(s, jerr))
            return false; /* NATS did not answer: the next check asks again */
        w->missing = true;
        log_warn("nats",
                 jerr == JSStreamNotFoundErr ? "stream deleted at runtime; re-creating it and the consumer"
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
static natsSubscription *retired[RETIRED_MAX]; /* retired, nretired: under retired_mu (fetch loops, main) */
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
        /* After a reconnect or a stall the durable is there: a new inbox suffices, and asks nothing of a cluster that
         * may be electing the consumer's leader. A durable or stream found missing takes the whole way: look up,
         * create (after the ack floor it had), update. */
        natsStatus st = NATS_OK;
        int je = 0;
        bool whole = !w || w->missing;
        if ((whole ? mes_nats_subscribe(n, d, w, sub) : subscribe_once(n, d, w, sub, true, &st, &je)) == 0) {
            if (w)
                w->missing = false;
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
