/* metrics.c - the service's Prometheus metrics: C11 atomics on the hot path, text format 0.0.4 on render. */
#include "metrics.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "text.h"

typedef atomic_uint_fast64_t counter_t;

/* Label values taken from events are cut to this many input bytes: max_agent_labels bounds the number of series,
 * this bounds their size (a hostile 1 MB agent_id must not become a 1 MB label kept forever). */
#define LABEL_IN_MAX 256
/* Worst case per input byte: invalid -> U+FFFD (3 bytes); '"' '\\' '\n' -> 2 bytes. */
#define LABEL_OUT_MAX (3 * LABEL_IN_MAX + 1)
#define AGENT_LABELS_MAX 1000000

/* Buckets are stored non-cumulative; the last slot counts observations above the highest bound (+Inf only). */
#define BUCKETS_MAX 17
typedef struct {
    counter_t bucket[BUCKETS_MAX + 1];
    counter_t sum; /* nanoseconds for durations, plain units for sizes */
} hist_t;

typedef struct {
    int n;
    const double *bound;
    const char *const *le;
    bool ns; /* sum kept in nanoseconds, rendered as seconds */
} hist_kind_t;

static const double dur_bound[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                   0.1,    0.25,    0.5,    1,     2.5,    5,     10,   30};
static const char *const dur_le[] = {"0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
                                     "0.1",    "0.25",    "0.5",    "1",     "2.5",    "5",     "10",   "30"};
static const hist_kind_t dur_kind = {17, dur_bound, dur_le, true};

static const double batch_bound[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096};
static const char *const batch_le[] = {"1",   "2",   "4",   "8",    "16",   "32",  "64",
                                       "128", "256", "512", "1024", "2048", "4096"};
static const hist_kind_t batch_kind = {13, batch_bound, batch_le, false};

static const char *const db_op_names[DBOP_COUNT] = {"upsert", "update", "bulk_upsert", "save", "find"};
static const char *const db_ent_names[DBENT_COUNT] = {"chat",  "message",        "contact",
                                                      "agent", "onboarding_log", "exhausted_event"};
static const char *const onb_names[ONB_COUNT] = {"success_created", "success_exists", "skipped_not_applicable",
                                                 "error_db", "error_other"};

/* (operation, entity) pairs the store performs; they get zero-valued series from startup so dashboards show 0, not
 * "no data". Any other pair is still counted and appears once observed: the label set stays bounded either way. */
static const struct {
    db_op_t op;
    db_entity_t ent;
} db_pairs[] = {
    {DBOP_UPSERT, DBENT_CHAT},    {DBOP_UPDATE, DBENT_CHAT},         {DBOP_BULK_UPSERT, DBENT_CHAT},
    {DBOP_UPSERT, DBENT_MESSAGE}, {DBOP_UPDATE, DBENT_MESSAGE},      {DBOP_BULK_UPSERT, DBENT_MESSAGE},
    {DBOP_UPSERT, DBENT_CONTACT}, {DBOP_UPDATE, DBENT_CONTACT},      {DBOP_BULK_UPSERT, DBENT_CONTACT},
    {DBOP_UPSERT, DBENT_AGENT},   {DBOP_SAVE, DBENT_ONBOARDING_LOG}, {DBOP_SAVE, DBENT_EXHAUSTED_EVENT},
};

/* Everything the hot path touches. Zero is the initial state; metrics_init resets it (main, before any other thread).
 * Atomic: written by any thread (lanes, fetchers, DLQ workers, advisory reader, maintenance, nats.c's callbacks), read
 * by the HTTP threads (metrics_render). */
static struct {
    counter_t received[ET_COUNT][LANE_COUNT];
    counter_t processed[ET_COUNT][LANE_COUNT];
    counter_t failed[ET_COUNT][LANE_COUNT];
    hist_t processing[ET_COUNT][LANE_COUNT];
    hist_t routing[ET_COUNT][LANE_COUNT];
    counter_t actions[ET_COUNT][LANE_COUNT][ACT_COUNT][ERR_COUNT];
    hist_t db[DBOP_COUNT][DBENT_COUNT][2]; /* [.][.][ok] */

    counter_t dlq_fetch_requests, dlq_fetch_errors, dlq_submitted, dlq_retries;
    counter_t dlq_acks_success, dlq_acks_failure, dlq_dropped;
    atomic_long dlq_queue_length, dlq_workers_active;
    hist_t dlq_duration;

    counter_t onb_submitted, onb_processed[ONB_COUNT];
    hist_t onb_duration;
    atomic_long onb_queue_length;

    counter_t dlq_published[ET_COUNT][LANE_COUNT][ERR_COUNT];
    hist_t batch[LANE_COUNT];
    atomic_int nats_connected, db_up;
    counter_t consumer_pending[ET_COUNT];
    counter_t js_exhausted[MSTREAM_COUNT];
} m;

/* Label values escaped once at init; constant afterwards. Main writes them before the HTTP threads start, which read
 * them in metrics_render. */
static char company[LABEL_OUT_MAX];
static char version[LABEL_OUT_MAX];
static char stream_names[MSTREAM_COUNT][LABEL_OUT_MAX]; /* set once at startup (metrics_streams_set) */
static double start_time;

/* Distinct (agent_id, jid) label pairs, escaped. Open addressing with linear probing, never shrinks; at most
 * `limit` pairs plus the overflow pair, so the table is never more than half full. */
typedef struct {
    uint64_t hash;
    uint64_t count[ET_COUNT];
    char *jid; /* points into agent[] */
    char agent[];
} agent_entry_t;

static struct {
    pthread_mutex_t mu;
    agent_entry_t **slot; /* slot, cap, used, limit and the entries: under mu (lanes write, HTTP threads render) */
    size_t cap;           /* power of two */
    size_t used;
    size_t limit;
    bool jid_label; /* set by metrics_init, read-only after: read without mu */
} agents = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void inc(counter_t *c)
{
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

static uint64_t load(const counter_t *c)
{
    return atomic_load_explicit((counter_t *)c, memory_order_relaxed);
}

static unsigned et_of(event_type_t et)
{
    return (unsigned)et < ET_COUNT ? (unsigned)et : ET_UNKNOWN;
}

static unsigned lane_of(lane_t lane)
{
    return (unsigned)lane < LANE_COUNT ? (unsigned)lane : LANE_REALTIME;
}

static unsigned err_of(error_class_t err)
{
    return (unsigned)err < ERR_COUNT ? (unsigned)err : ERR_UNKNOWN;
}

/* The combinations that exist in practice: realtime bases on the realtime lane, history bases on the historical
 * lane, "unknown" on both. Other combinations are rendered only if something counted them. */
static bool lane_matches(unsigned et, unsigned lane)
{
    return et == ET_UNKNOWN || event_type_lane((event_type_t)et) == (lane_t)lane;
}

static void observe(hist_t *h, const hist_kind_t *k, double v)
{
    if (!(v > 0)) /* also catches NaN */
        v = 0;
    int i = 0;
    while (i < k->n && v > k->bound[i])
        i++;
    atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
    if (v > 1e9) /* keeps the conversion defined; a billion seconds is not a real observation */
        v = 1e9;
    uint64_t add = k->ns ? (uint64_t)(v * 1e9 + 0.5) : (uint64_t)v;
    atomic_fetch_add_explicit(&h->sum, add, memory_order_relaxed);
}

/* Writes s as an exposition-format label value (without quotes) into out[LABEL_OUT_MAX]: invalid UTF-8 bytes become
 * U+FFFD, backslash, double quote and newline are escaped, input beyond LABEL_IN_MAX bytes is dropped. */
static size_t label_value(const char *s, size_t n, char *out)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t o = 0;
    if (n > LABEL_IN_MAX)
        n = LABEL_IN_MAX;
    for (size_t i = 0; i < n;) {
        size_t len = p[i] ? text_utf8_len(s + i, n - i) : 0; /* NUL too: label values are kept as C strings */
        if (len == 0) {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        } else if (p[i] == '\\' || p[i] == '"' || p[i] == '\n') {
            out[o++] = '\\';
            out[o++] = p[i] == '\n' ? 'n' : (char)p[i];
            i++;
        } else {
            memcpy(out + o, p + i, len);
            o += len;
            i += len;
        }
    }
    out[o] = '\0';
    return o;
}

static uint64_t fnv1a(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* Finds or (when allowed) inserts the pair; caller holds agents.mu. NULL when the table is full or on OOM. */
static agent_entry_t *agent_find(const char *agent, size_t alen, const char *jid, size_t jlen, bool may_insert)
{
    uint64_t h = fnv1a(fnv1a(0xcbf29ce484222325ULL, agent, alen + 1), jid, jlen);
    size_t i = h & (agents.cap - 1);
    for (agent_entry_t *e; (e = agents.slot[i]) != NULL; i = (i + 1) & (agents.cap - 1)) {
        if (e->hash == h && strcmp(e->agent, agent) == 0 && strcmp(e->jid, jid) == 0)
            return e;
    }
    if (!may_insert)
        return NULL;
    agent_entry_t *e = calloc(1, sizeof *e + alen + 1 + jlen + 1);
    if (!e)
        return NULL;
    e->hash = h;
    memcpy(e->agent, agent, alen + 1);
    e->jid = e->agent + alen + 1;
    memcpy(e->jid, jid, jlen + 1);
    agents.slot[i] = e;
    agents.used++;
    return e;
}

static void agents_free(void)
{
    for (size_t i = 0; i < agents.cap; i++)
        free(agents.slot[i]);
    free(agents.slot);
    agents.slot = NULL;
    agents.cap = agents.used = 0;
}

/* Fields of /proc/self/stat the process families need: starttime (clock ticks since boot), vsize (bytes) and rss
 * (pages). False when unreadable. The one reader of that file. */
static bool proc_stat(unsigned long long *start_ticks, unsigned long long *vsize, long long *rss_pages)
{
    char buf[1024];
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* comm may contain spaces and parentheses */
    /* fields 3..24: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime
     * priority nice num_threads itrealvalue starttime vsize rss */
    return p && sscanf(p + 2,
                       "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu"
                       " %llu %lld",
                       start_ticks, vsize, rss_pages) == 3;
}

/* Start of this process in Unix seconds: starttime is in clock ticks since boot (CLOCK_BOOTTIME), so anchor it with
 * the current REALTIME - BOOTTIME offset (finer than /proc/stat's whole-second btime). */
static double process_start(void)
{
    struct timespec rt, bt;
    clock_gettime(CLOCK_REALTIME, &rt);
    double now = (double)rt.tv_sec + rt.tv_nsec / 1e9;
    unsigned long long ticks, vsize;
    long long rss;
    if (!proc_stat(&ticks, &vsize, &rss) || clock_gettime(CLOCK_BOOTTIME, &bt) != 0)
        return now;
    double boot = now - ((double)bt.tv_sec + bt.tv_nsec / 1e9);
    return boot + (double)ticks / (double)sysconf(_SC_CLK_TCK);
}

int metrics_init(const char *company_id, const char *ver, int max_agent_labels, bool jid_label)
{
    if (!company_id || !ver || max_agent_labels < 0 || max_agent_labels > AGENT_LABELS_MAX)
        return -1;
    metrics_shutdown();
    /* Single-threaded by contract (before any other call), so a plain reset of the atomics is fine. */
    memset(&m, 0, sizeof m);
    memset(stream_names, 0, sizeof stream_names);
    label_value(company_id, strlen(company_id), company);
    label_value(ver, strlen(ver), version);
    start_time = process_start();

    size_t cap = 4;
    while (cap < 2 * ((size_t)max_agent_labels + 1))
        cap *= 2;
    agents.slot = calloc(cap, sizeof *agents.slot);
    if (!agents.slot)
        return -1;
    agents.cap = cap;
    agents.limit = (size_t)max_agent_labels;
    agents.jid_label = jid_label;
    return 0;
}

void metrics_shutdown(void)
{
    pthread_mutex_lock(&agents.mu);
    agents_free();
    pthread_mutex_unlock(&agents.mu);
}

void metrics_event_received(event_type_t et, lane_t lane)
{
    inc(&m.received[et_of(et)][lane_of(lane)]);
}

void metrics_event_processed(event_type_t et, lane_t lane)
{
    inc(&m.processed[et_of(et)][lane_of(lane)]);
}

void metrics_event_failed(event_type_t et, lane_t lane)
{
    inc(&m.failed[et_of(et)][lane_of(lane)]);
}

void metrics_event_action(event_type_t et, lane_t lane, action_t action, error_class_t err)
{
    if ((unsigned)action >= ACT_COUNT)
        return;
    inc(&m.actions[et_of(et)][lane_of(lane)][action][err_of(err)]);
}

void metrics_processing_duration(event_type_t et, lane_t lane, double seconds)
{
    observe(&m.processing[et_of(et)][lane_of(lane)], &dur_kind, seconds);
}

void metrics_routing_duration(event_type_t et, lane_t lane, double seconds)
{
    observe(&m.routing[et_of(et)][lane_of(lane)], &dur_kind, seconds);
}

void metrics_event_with_agent(event_type_t et, const char *agent_id, size_t agent_len, const char *jid, size_t jid_len)
{
    char a[LABEL_OUT_MAX], j[LABEL_OUT_MAX];
    /* Keyed on the escaped form: two raw values that render identically must share one series. */
    size_t alen = label_value(agent_id ? agent_id : "", agent_id ? agent_len : 0, a);
    size_t jlen = 0;
    j[0] = '\0';
    if (agents.jid_label)
        jlen = label_value(jid ? jid : "", jid ? jid_len : 0, j);

    pthread_mutex_lock(&agents.mu);
    if (agents.slot) {
        agent_entry_t *e = agent_find(a, alen, j, jlen, agents.used < agents.limit);
        if (!e) /* table full: the overflow pair is always admitted (the capacity reserves room for it) */
            e = agent_find("other", 5, agents.jid_label ? "other" : "", agents.jid_label ? 5 : 0, true);
        if (e)
            e->count[et_of(et)]++;
    }
    pthread_mutex_unlock(&agents.mu);
}

void metrics_db_duration(db_op_t op, db_entity_t ent, bool ok, double seconds)
{
    if ((unsigned)op >= DBOP_COUNT || (unsigned)ent >= DBENT_COUNT)
        return;
    observe(&m.db[op][ent][ok], &dur_kind, seconds);
}

void metrics_dlq_fetch_request(void)
{
    inc(&m.dlq_fetch_requests);
}

void metrics_dlq_fetch_error(void)
{
    inc(&m.dlq_fetch_errors);
}

void metrics_dlq_queue_length_set(long n)
{
    atomic_store_explicit(&m.dlq_queue_length, n, memory_order_relaxed);
}

void metrics_dlq_workers_active_add(int delta)
{
    atomic_fetch_add_explicit(&m.dlq_workers_active, delta, memory_order_relaxed);
}

void metrics_dlq_task_submitted(void)
{
    inc(&m.dlq_submitted);
}

void metrics_dlq_processing_duration(double seconds)
{
    observe(&m.dlq_duration, &dur_kind, seconds);
}

void metrics_dlq_task_retry(void)
{
    inc(&m.dlq_retries);
}

void metrics_dlq_ack_success(void)
{
    inc(&m.dlq_acks_success);
}

void metrics_dlq_ack_failure(void)
{
    inc(&m.dlq_acks_failure);
}

void metrics_dlq_task_dropped(void)
{
    inc(&m.dlq_dropped);
}

void metrics_dlq_published(event_type_t et, lane_t lane, error_class_t err)
{
    inc(&m.dlq_published[et_of(et)][lane_of(lane)][err_of(err)]);
}

void metrics_onboarding_submitted(void)
{
    inc(&m.onb_submitted);
}

void metrics_onboarding_processed(onboarding_status_t st)
{
    if ((unsigned)st < ONB_COUNT)
        inc(&m.onb_processed[st]);
}

void metrics_onboarding_duration(double seconds)
{
    observe(&m.onb_duration, &dur_kind, seconds);
}

void metrics_onboarding_queue_add(long delta)
{
    atomic_fetch_add_explicit(&m.onb_queue_length, delta, memory_order_relaxed);
}

void metrics_batch_size(lane_t lane, int n)
{
    observe(&m.batch[lane_of(lane)], &batch_kind, n);
}

void metrics_nats_connected_set(bool up)
{
    atomic_store_explicit(&m.nats_connected, up, memory_order_relaxed);
}

void metrics_db_up_set(bool up)
{
    atomic_store_explicit(&m.db_up, up, memory_order_relaxed);
}

void metrics_streams_set(const char *realtime, const char *historical, const char *dlq)
{
    const char *names[MSTREAM_COUNT] = {realtime, historical, dlq};
    for (int i = 0; i < MSTREAM_COUNT; i++)
        label_value(names[i] ? names[i] : "", names[i] ? strlen(names[i]) : 0, stream_names[i]);
}

void metrics_jetstream_exhausted(metrics_stream_t s)
{
    if ((unsigned)s < MSTREAM_COUNT)
        inc(&m.js_exhausted[s]);
}

void metrics_consumer_pending_set(event_type_t et, uint64_t pending)
{
    atomic_store_explicit(&m.consumer_pending[et_of(et)], pending, memory_order_relaxed);
}

/* ---- rendering ---- */

static void family(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void sample(FILE *f, const char *name, const char *labels, unsigned long long v)
{
    fprintf(f, "%s%s%s%s %llu\n", name, *labels ? "{" : "", labels, *labels ? "}" : "", v);
}

static uint64_t hist_count(const hist_t *h)
{
    uint64_t n = 0;
    for (int i = 0; i <= BUCKETS_MAX; i++)
        n += load(&h->bucket[i]);
    return n;
}

/* _count is the +Inf bucket by construction: both come from the same bucket reads, so a scrape racing with
 * observations is still self-consistent (cumulative, monotonic, +Inf == _count). */
static void hist(FILE *f, const char *name, const char *labels, const hist_t *h, const hist_kind_t *k)
{
    const char *sep = *labels ? "," : "";
    uint64_t cum = 0;
    for (int i = 0; i < k->n; i++) {
        cum += load(&h->bucket[i]);
        fprintf(f, "%s_bucket{%s%sle=\"%s\"} %llu\n", name, labels, sep, k->le[i], (unsigned long long)cum);
    }
    for (int i = k->n; i <= BUCKETS_MAX; i++)
        cum += load(&h->bucket[i]);
    fprintf(f, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep, (unsigned long long)cum);
    uint64_t sum = load(&h->sum);
    const char *lo = *labels ? "{" : "", *lc = *labels ? "}" : "";
    if (k->ns)
        fprintf(f, "%s_sum%s%s%s %llu.%09llu\n", name, lo, labels, lc, (unsigned long long)(sum / 1000000000u),
                (unsigned long long)(sum % 1000000000u));
    else
        fprintf(f, "%s_sum%s%s%s %llu\n", name, lo, labels, lc, (unsigned long long)sum);
    fprintf(f, "%s_count%s%s%s %llu\n", name, lo, labels, lc, (unsigned long long)cum);
}

static void event_labels(char *lb, size_t n, unsigned et, unsigned lane)
{
    snprintf(lb, n, "event_type=\"%s\",company_id=\"%s\",consumer_type=\"%s\"", event_type_base((event_type_t)et),
             company, lane_name((lane_t)lane));
}

static void event_counter(FILE *f, const char *name, const char *help, counter_t c[ET_COUNT][LANE_COUNT])
{
    char lb[2 * LABEL_OUT_MAX];
    family(f, name, "counter", help);
    for (unsigned lane = 0; lane < LANE_COUNT; lane++) {
        for (unsigned et = 0; et < ET_COUNT; et++) {
            uint64_t v = load(&c[et][lane]);
            if (v || lane_matches(et, lane)) {
                event_labels(lb, sizeof lb, et, lane);
                sample(f, name, lb, v);
            }
        }
    }
}

static void event_hist(FILE *f, const char *name, const char *help, hist_t h[ET_COUNT][LANE_COUNT])
{
    char lb[2 * LABEL_OUT_MAX];
    family(f, name, "histogram", help);
    for (unsigned lane = 0; lane < LANE_COUNT; lane++) {
        for (unsigned et = 0; et < ET_COUNT; et++) {
            if (lane_matches(et, lane) || hist_count(&h[et][lane])) {
                event_labels(lb, sizeof lb, et, lane);
                hist(f, name, lb, &h[et][lane], &dur_kind);
            }
        }
    }
}

/* ack_success goes with error_type "none", every other action with a real error class; "panic" is never emitted. */
static bool action_expected(unsigned act, unsigned err)
{
    if (act == ACT_ACK_SUCCESS)
        return err == ERR_NONE;
    return err != ERR_NONE && err != ERR_PANIC;
}

static void render_events(FILE *f)
{
    char lb[2 * LABEL_OUT_MAX];
    const char *name;

    event_counter(f, "message_event_service_events_received_total", "Event deliveries received.", m.received);
    event_counter(f, "message_event_service_events_processed_total", "Events committed and acked.", m.processed);
    event_counter(f, "message_event_service_events_failed_total",
                  "Event deliveries that were not committed (counted once per delivery).", m.failed);
    event_hist(f, "message_event_service_event_processing_duration_seconds",
               "Seconds from receipt to ack/nak of one event.", m.processing);
    event_hist(f, "message_event_service_event_routing_duration_seconds",
               "Seconds spent parsing, validating and routing one event.", m.routing);

    name = "message_event_service_event_processing_actions_total";
    family(f, name, "counter", "Outcome actions taken per event delivery, by error class.");
    for (unsigned lane = 0; lane < LANE_COUNT; lane++) {
        for (unsigned et = 0; et < ET_COUNT; et++) {
            for (unsigned act = 0; act < ACT_COUNT; act++) {
                for (unsigned err = 0; err < ERR_COUNT; err++) {
                    uint64_t v = load(&m.actions[et][lane][act][err]);
                    if (!v && !(lane_matches(et, lane) && action_expected(act, err)))
                        continue;
                    int k = snprintf(lb, sizeof lb, "event_type=\"%s\",company_id=\"%s\",consumer_type=\"%s\",",
                                     event_type_base((event_type_t)et), company, lane_name((lane_t)lane));
                    snprintf(lb + k, sizeof lb - (size_t)k, "action=\"%s\",error_type=\"%s\"",
                             action_name((action_t)act), error_class_name((error_class_t)err));
                    sample(f, name, lb, v);
                }
            }
        }
    }

    name = "message_event_service_event_with_agent_received_total";
    family(f, name, "counter", "Events that carry an agent_id (agent_id and jid label values are bounded).");
    pthread_mutex_lock(&agents.mu);
    for (size_t i = 0; i < agents.cap; i++) {
        const agent_entry_t *e = agents.slot[i];
        for (unsigned et = 0; e && et < ET_COUNT; et++) {
            if (e->count[et])
                fprintf(f, "%s{event_type=\"%s\",company_id=\"%s\",agent_id=\"%s\",jid=\"%s\"} %llu\n", name,
                        event_type_base((event_type_t)et), company, e->agent, e->jid, (unsigned long long)e->count[et]);
        }
    }
    pthread_mutex_unlock(&agents.mu);

    name = "message_event_service_dlq_published_total";
    family(f, name, "counter", "DLQ records published by the live lanes.");
    for (unsigned lane = 0; lane < LANE_COUNT; lane++) {
        for (unsigned et = 0; et < ET_COUNT; et++) {
            for (unsigned err = 0; err < ERR_COUNT; err++) {
                uint64_t v = load(&m.dlq_published[et][lane][err]);
                if (!v && !(lane_matches(et, lane) && action_expected(ACT_NACK_RETRYABLE, err)))
                    continue;
                int k = snprintf(lb, sizeof lb, "event_type=\"%s\",company_id=\"%s\",consumer_type=\"%s\",",
                                 event_type_base((event_type_t)et), company, lane_name((lane_t)lane));
                snprintf(lb + k, sizeof lb - (size_t)k, "error_type=\"%s\"", error_class_name((error_class_t)err));
                sample(f, name, lb, v);
            }
        }
    }
}

static bool db_pair_expected(unsigned op, unsigned ent)
{
    for (size_t i = 0; i < sizeof db_pairs / sizeof db_pairs[0]; i++) {
        if ((unsigned)db_pairs[i].op == op && (unsigned)db_pairs[i].ent == ent)
            return true;
    }
    return false;
}

static void render_db(FILE *f)
{
    const char *name = "message_event_service_db_operation_duration_seconds";
    char lb[2 * LABEL_OUT_MAX];
    family(f, name, "histogram", "Seconds taken by one database statement or batch.");
    for (unsigned op = 0; op < DBOP_COUNT; op++) {
        for (unsigned ent = 0; ent < DBENT_COUNT; ent++) {
            for (int ok = 1; ok >= 0; ok--) {
                const hist_t *h = &m.db[op][ent][ok];
                if (!db_pair_expected(op, ent) && !hist_count(h))
                    continue;
                snprintf(lb, sizeof lb, "operation=\"%s\",entity=\"%s\",company_id=\"%s\",status=\"%s\"",
                         db_op_names[op], db_ent_names[ent], company, ok ? "success" : "error");
                hist(f, name, lb, h, &dur_kind);
            }
        }
    }
}

static void company_counter(FILE *f, const char *name, const char *help, const counter_t *c)
{
    char lb[2 * LABEL_OUT_MAX];
    snprintf(lb, sizeof lb, "company_id=\"%s\"", company);
    family(f, name, "counter", help);
    sample(f, name, lb, load(c));
}

static void plain(FILE *f, const char *name, const char *type, const char *help, long long v)
{
    family(f, name, type, help);
    fprintf(f, "%s %lld\n", name, v);
}

static void render_dlq_onboarding(FILE *f)
{
    char lb[2 * LABEL_OUT_MAX];
    snprintf(lb, sizeof lb, "company_id=\"%s\"", company);

    plain(f, "dlq_fetch_requests_total", "counter", "Fetch requests to the DLQ consumer.",
          (long long)load(&m.dlq_fetch_requests));
    plain(f, "dlq_fetch_errors_total", "counter", "DLQ fetch errors other than no messages.",
          (long long)load(&m.dlq_fetch_errors));
    plain(f, "dlq_queue_length", "gauge", "DLQ records waiting in the worker queue.",
          atomic_load_explicit(&m.dlq_queue_length, memory_order_relaxed));
    plain(f, "dlq_workers_active", "gauge", "DLQ workers processing a record right now.",
          atomic_load_explicit(&m.dlq_workers_active, memory_order_relaxed));
    company_counter(f, "dlq_tasks_submitted_total", "DLQ records handed to the worker pool.", &m.dlq_submitted);
    family(f, "dlq_processing_duration_seconds", "histogram", "Seconds spent processing one DLQ record.");
    hist(f, "dlq_processing_duration_seconds", lb, &m.dlq_duration, &dur_kind);
    company_counter(f, "dlq_task_retries_total", "DLQ records NAKed with delay for a retry.", &m.dlq_retries);
    company_counter(f, "dlq_acks_success_total", "DLQ records reprocessed successfully and acked.",
                    &m.dlq_acks_success);
    company_counter(f, "dlq_acks_failure_total", "DLQ ack/nak/term operations that failed.", &m.dlq_acks_failure);
    company_counter(f, "dlq_tasks_dropped_total", "DLQ records exhausted and persisted to exhausted_events.",
                    &m.dlq_dropped);

    company_counter(f, "onboarding_tasks_submitted_total", "Incoming messages considered for onboarding.",
                    &m.onb_submitted);
    const char *name = "onboarding_tasks_processed_total";
    family(f, name, "counter", "Onboarding outcomes by status.");
    for (unsigned st = 0; st < ONB_COUNT; st++) {
        char slb[3 * LABEL_OUT_MAX];
        snprintf(slb, sizeof slb, "%s,status=\"%s\"", lb, onb_names[st]);
        sample(f, name, slb, load(&m.onb_processed[st]));
    }
    family(f, "onboarding_processing_duration_seconds", "histogram", "Seconds of onboarding work per message.");
    hist(f, "onboarding_processing_duration_seconds", lb, &m.onb_duration, &dur_kind);
    plain(f, "onboarding_queue_length", "gauge", "Onboarding work pending in the current batch.",
          atomic_load_explicit(&m.onb_queue_length, memory_order_relaxed));
}

static void render_own(FILE *f)
{
    char lb[2 * LABEL_OUT_MAX];
    const char *name = "message_event_service_batch_size";
    family(f, name, "histogram", "Events per batch handed to the store.");
    for (unsigned lane = 0; lane < LANE_COUNT; lane++) {
        snprintf(lb, sizeof lb, "consumer_type=\"%s\"", lane_name((lane_t)lane));
        hist(f, name, lb, &m.batch[lane], &batch_kind);
    }
    plain(f, "message_event_service_nats_connected", "gauge", "1 when the NATS connection is up.",
          atomic_load_explicit(&m.nats_connected, memory_order_relaxed));
    plain(f, "message_event_service_db_up", "gauge", "1 when PostgreSQL answers.",
          atomic_load_explicit(&m.db_up, memory_order_relaxed));
    name = "message_event_service_consumer_pending";
    family(f, name, "gauge", "Messages pending in the durable consumer, as last reported by NATS.");
    for (unsigned et = 0; et < ET_BASE_COUNT; et++) {
        snprintf(lb, sizeof lb, "event_type=\"%s\"", event_type_base((event_type_t)et));
        sample(f, name, lb, load(&m.consumer_pending[et]));
    }
    name = "message_event_service_jetstream_exhausted_total";
    family(f, name, "counter",
           "Events JetStream stopped delivering (max-deliveries advisory) stored in exhausted_events, by stream.");
    for (unsigned i = 0; i < MSTREAM_COUNT; i++) {
        if (!stream_names[i][0])
            continue;
        uint64_t v = 0;
        bool first = true; /* two keys may name one stream: one series, with the sum */
        for (unsigned k = 0; k < MSTREAM_COUNT; k++) {
            if (strcmp(stream_names[k], stream_names[i]) == 0) {
                first = first && k >= i;
                v += load(&m.js_exhausted[k]);
            }
        }
        if (!first)
            continue;
        fprintf(f, "%s{company_id=\"%s\",stream=\"%s\"} %llu\n", name, company, stream_names[i], (unsigned long long)v);
    }
    name = "message_event_service_build_info";
    family(f, name, "gauge", "Build information; the value is always 1.");
    fprintf(f, "%s{version=\"%s\"} 1\n", name, version);
}

static long long open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    long long n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] != '.')
            n++;
    }
    closedir(d);
    return n - 1; /* the directory stream's own descriptor */
}

static void render_process(FILE *f)
{
    struct rusage ru;
    double cpu = 0;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    family(f, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.");
    fprintf(f, "process_cpu_seconds_total %.6f\n", cpu);

    unsigned long long start_ticks = 0, vsize = 0;
    long long rss = 0;
    if (proc_stat(&start_ticks, &vsize, &rss)) {
        plain(f, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
              rss * sysconf(_SC_PAGESIZE));
        plain(f, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", (long long)vsize);
    }
    long long fds = open_fds();
    if (fds >= 0)
        plain(f, "process_open_fds", "gauge", "Number of open file descriptors.", fds);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        family(f, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
        if (rl.rlim_cur == RLIM_INFINITY)
            fprintf(f, "process_max_fds +Inf\n");
        else
            fprintf(f, "process_max_fds %llu\n", (unsigned long long)rl.rlim_cur);
    }
    family(f, "process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.");
    fprintf(f, "process_start_time_seconds %.3f\n", start_time);
}

char *metrics_render(size_t *len)
{
    char *out = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&out, &n);
    if (!f)
        return NULL;
    render_events(f);
    render_db(f);
    render_dlq_onboarding(f);
    render_own(f);
    render_process(f);
    bool failed = ferror(f) != 0;
    if (fclose(f) != 0 || failed) {
        free(out);
        return NULL;
    }
    if (len)
        *len = n;
    return out;
}
