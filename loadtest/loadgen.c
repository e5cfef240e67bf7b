/* loadgen.c - mes-loadgen: open-loop JetStream load generator with linked entities, poison events, /metrics and a
 * no-loss verifier against PostgreSQL and the DLQ (SPEC 13).
 *
 *   mes-loadgen --count 100000 --rate 20000 --company_ids acme,globex --verify "host=127.0.0.1 dbname=postgres"
 *   mes-loadgen --dry-run --count 50 --seed 7 --id-prefix demo | mes-publish --id-prefix demo
 *
 * Event n (1-based, across all tenants) carries Nats-Msg-Id "<prefix>-<n>". Entity ids derive from the prefix, the
 * tenant and a per-tenant counter ("<prefix>-<co>-c<k>" is chat k), so --verify keeps counters, not id lists: the
 * published entities of a kind are 0..made-1 minus the few whose publish failed. The event sequence is a pure
 * function of the flags and --seed (own PRNG); only timestamps follow the wall clock (--dry-run uses a virtual clock
 * so its output is byte-for-byte reproducible).
 *
 * Exit status: 0 every event published (and, with --verify, every entity and poison event accounted for);
 * 1 publish errors, a failed verify or a runtime error (cannot connect); 2 bad usage, with a message naming the flag.
 *
 * Threads: main generates, publishes, expires PubAcks lost for --ack-timeout and later verifies; the nats.c
 * reply-subscription thread runs on_ack for every PubAck or error reply; libmicrohttpd's thread renders /metrics.
 * They share only atomics, the slot table (a slot is owned by main until its seq is stored with release order, then
 * by whoever settles it, which stores seq 0) and the failure list under fail_mu.
 *
 * Memory is bounded for any run length: 4*concurrency slots, a fixed latency histogram, counters per tenant and
 * entity kind; with --verify also one bit per event for poison events and the (capped) list of failed publishes.
 * Out of memory is fatal: a load generator that guesses past it would report lies. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <libpq-fe.h>
#include <microhttpd.h>
#include <nats/nats.h>

#include "clock.h"

/* ---------------------------------------------------------------------------------------------------------------- */
/* Contract tables.                                                                                                 */

enum {
    S_CHATS_UPSERT,
    S_CHATS_UPDATE,
    S_MESSAGES_UPSERT,
    S_MESSAGES_UPDATE,
    S_CONTACTS_UPSERT,
    S_CONTACTS_UPDATE,
    S_CONNECTION_UPDATE,
    S_HISTORY_CHATS,
    S_HISTORY_MESSAGES,
    S_HISTORY_CONTACTS,
    NSUBJ
};

/* Default weights: a chat app's day, mostly messages and their status updates; history imports are rare but each
 * carries --history-count items. Durable names are the service's defaults (SPEC 1.3). */
static const struct {
    const char *base, *durable_suffix, *items_key;
    bool history;
    int weight;
} SUBJ[NSUBJ] = {
    {"v1.chats.upsert", "chats_upsert", NULL, false, 8},
    {"v1.chats.update", "chats_update", NULL, false, 10},
    {"v1.messages.upsert", "messages_upsert", NULL, false, 40},
    {"v1.messages.update", "messages_update", NULL, false, 24},
    {"v1.contacts.upsert", "contacts_upsert", NULL, false, 6},
    {"v1.contacts.update", "contacts_update", NULL, false, 4},
    {"v1.connection.update", "connection_update", NULL, false, 2},
    {"v1.history.chats", "chats", "chats", true, 2},
    {"v1.history.messages", "messages", "messages", true, 3},
    {"v1.history.contacts", "contacts", "contacts", true, 1},
};

#define REALTIME_STREAM "wa_events_stream"
#define HISTORY_STREAM "wa_history_events_stream"
#define DLQ_STREAM "dlq_stream"

/* Entity kinds that --verify checks. Contacts are keyed by (agent, phone): the phone is `tag` + 10 digits of k. */
enum { K_NONE = -1, K_CHAT, K_MESSAGE, K_CONTACT, K_AGENT, K_HCHAT, K_HMESSAGE, K_HCONTACT, NKIND };
#define K_POISON NKIND
static const struct {
    const char *name, *table, *column, *tag;
} KIND[NKIND] = {
    {"chats", "chats", "chat_id", "c"},           {"messages", "messages", "message_id", "m"},
    {"contacts", "contacts", NULL, "62"},         {"agents", "agents", "agent_id", "a"},
    {"history_chats", "chats", "chat_id", "hc"},  {"history_messages", "messages", "message_id", "hm"},
    {"history_contacts", "contacts", NULL, "63"},
};

enum { P_NONE, P_MALFORMED, P_MISSING, P_WRONG_TYPE, P_COMPANY, NPOISON };
static const char *const POISON_NAME[NPOISON] = {"none", "malformed_json", "missing_required", "wrong_type",
                                                 "company_mismatch"};

enum { E_TIMEOUT, E_NO_RESPONDERS, E_MAX_PAYLOAD, E_OTHER, NERR };
static const char *const ERR_NAME[NERR] = {"timeout", "no_responders", "max_payload", "other"};

#define AGENTS_PER_TENANT 8
#define UPDATE_LAG 64                  /* updates target entities created at least this many creations ago */
#define VCLOCK_BASE_MS 1700000000000LL /* --dry-run clock: 2023-11-14, then +10 ms per event */
#define MAX_TENANTS 64
#define MISSING_SHOWN 20
#define FAILED_CAP 1000000  /* failed publishes remembered for --verify; beyond it verify is inconclusive */
#define VERIFY_CHUNK 200000 /* entity ids per anti-join query */
/* The open loop wakes at most once per PACE_TICK_NS and sends every slot due by then back to back. Sleeping until
 * each slot (every 118 us at 8 500 events/s) cost this process about a third of a core, mostly in wake-ups and
 * context switches of its own and of nats.c's flusher, and made nats-server read one small message per read on the
 * same two cores the service under test has. A millisecond of pacing jitter is far below what the load measures. */
#define PACE_TICK_NS 1000000LL

/* ---------------------------------------------------------------------------------------------------------------- */
/* Small utilities: clocks, PRNG, buffers, sets.                                                                     */

static void die_oom(void)
{
    fputs("mes-loadgen: out of memory\n", stderr);
    exit(1);
}

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        die_oom();
    return q;
}

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    if (!p)
        die_oom();
    return p;
}

/* xoshiro256** seeded through splitmix64: fast, good, and the same numbers on every platform (never rand()). */
typedef struct {
    uint64_t s[4];
} rng_t;

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void rng_seed(rng_t *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rng_next(rng_t *r)
{
    uint64_t *s = r->s, x = s[1] * 5, result = ((x << 7) | (x >> 57)) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = (s[3] << 45) | (s[3] >> 19);
    return result;
}

static uint64_t rnd_below(rng_t *r, uint64_t n)
{
    return n ? rng_next(r) % n : 0; /* modulo bias is below 2^-40 for our n */
}

static double rnd_unit(rng_t *r)
{
    return (double)(rng_next(r) >> 11) * 0x1.0p-53;
}

static bool rnd_pct(rng_t *r, unsigned pct)
{
    return rnd_below(r, 100) < pct;
}

/* Growable byte buffer, always NUL-terminated. */
typedef struct {
    char *p;
    size_t len, cap;
} sbuf_t;

static void sb_reserve(sbuf_t *b, size_t more)
{
    if (b->len + more + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + more + 1)
        cap *= 2;
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
}

static void sb_reset(sbuf_t *b)
{
    sb_reserve(b, 0);
    b->len = 0;
    b->p[0] = '\0';
}

static void sb_put(sbuf_t *b, const char *s, size_t n)
{
    sb_reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_puts(sbuf_t *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

static void sb_printf(sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sb_reserve(b, 128);
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= b->cap - b->len) {
        sb_reserve(b, (size_t)n);
        va_start(ap, fmt);
        vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
}

/* JSON string literal; our own strings are plain ASCII, but error texts from libraries may not be. */
static void sb_json_str(sbuf_t *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            sb_printf(b, "\\%c", c);
        else if (c < 0x20)
            sb_printf(b, "\\u%04x", c);
        else
            sb_put(b, s, 1);
    }
    sb_put(b, "\"", 1);
}

static void sb_free(sbuf_t *b)
{
    free(b->p);
    *b = (sbuf_t){0};
}

/* Set of uint64 (open addressing, linear probing; keys stored +1 so 0 means empty). */
typedef struct {
    uint64_t *k;
    size_t cap, n;
} u64set_t;

static size_t u64_hash(uint64_t x, size_t mask)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x & mask;
}

static bool u64set_has(const u64set_t *s, uint64_t v)
{
    if (!s->cap)
        return false;
    for (size_t i = u64_hash(v, s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
        if (s->k[i] == 0)
            return false;
        if (s->k[i] == v + 1)
            return true;
    }
}

static void u64set_add(u64set_t *s, uint64_t v)
{
    if ((s->n + 1) * 2 > s->cap) {
        u64set_t bigger = {xcalloc(s->cap ? s->cap * 2 : 64, sizeof(uint64_t)), s->cap ? s->cap * 2 : 64, 0};
        for (size_t i = 0; i < s->cap; i++)
            if (s->k[i])
                u64set_add(&bigger, s->k[i] - 1);
        free(s->k);
        *s = bigger;
    }
    for (size_t i = u64_hash(v, s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
        if (s->k[i] == v + 1)
            return;
        if (s->k[i] == 0) {
            s->k[i] = v + 1;
            s->n++;
            return;
        }
    }
}

static void u64set_free(u64set_t *s)
{
    free(s->k);
    *s = (u64set_t){0};
}

/* One bit per event sequence: which events were poison (kept only with --verify; main thread only). */
typedef struct {
    uint64_t *w;
    size_t nw;
} bitvec_t;

static void bitvec_set(bitvec_t *v, uint64_t i)
{
    size_t wi = (size_t)(i / 64);
    if (wi >= v->nw) {
        size_t nw = v->nw ? v->nw : 1024;
        while (nw <= wi)
            nw *= 2;
        v->w = xrealloc(v->w, nw * sizeof(uint64_t));
        memset(v->w + v->nw, 0, (nw - v->nw) * sizeof(uint64_t));
        v->nw = nw;
    }
    v->w[wi] |= 1ULL << (i % 64);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* Options.                                                                                                         */

typedef struct {
    const char *url;
    int weights[NSUBJ];
    const char *companies[MAX_TENANTS];
    int ntenants;
    double rate;       /* events/s; 0 = as fast as in-flight allows */
    double duration_s; /* 0 = none */
    uint64_t count;    /* 0 = none */
    int concurrency;
    int history_count;
    double invalid_ratio;
    uint64_t seed;
    int metrics_port;
    const char *metrics_address; /* NULL = every address */
    bool json, quiet, dry_run;
    const char *verify_dsn;
    char prefix[72];
    double verify_timeout_s;
    double ack_timeout_s;
} opts_t;

static const char USAGE[] =
    "usage: mes-loadgen (--count N | --duration D) [options]\n"
    "  --url URL              NATS server (default nats://127.0.0.1:4222)\n"
    "  --subjects LIST        base subjects with optional weights, e.g. v1.chats.upsert:3,v1.messages.upsert:10\n"
    "                         (default: a realistic mix of all ten)\n"
    "  --company_ids LIST     tenants, comma separated (default acme)\n"
    "  --rate R               events/s, open loop; 0 = as fast as possible (default 0)\n"
    "  --duration D           stop after D (e.g. 30s, 5m, 1h, 500ms)\n"
    "  --count N              stop after N events (whichever of --duration/--count comes first)\n"
    "  --concurrency N        max publishes awaiting their PubAck (default 1000)\n"
    "  --history-count N      items per history batch, 1..10000 (default 50)\n"
    "  --invalid-ratio X      share 0..1 of poison events (default 0)\n"
    "  --seed N               PRNG seed: same seed, same events (default 1)\n"
    "  --id-prefix P          Nats-Msg-Id/entity id prefix [A-Za-z0-9_.-]{1,64} (default from seed and start time)\n"
    "  --ack-timeout D        PubAck wait per event (default 10s)\n"
    "  --metrics-port N       serve Prometheus /metrics on this port (default 0 = off)\n"
    "  --metrics-address A    IPv4 or IPv6 address /metrics binds (default: every address)\n"
    "  --verify DSN           after publishing, wait for the service to drain and prove nothing was lost\n"
    "  --verify-timeout D     how long to wait for the drain (default 120s)\n"
    "  --json                 print the final report as one JSON object on stdout\n"
    "  --quiet                no progress lines\n"
    "  --dry-run              print \"SUBJECT PAYLOAD\" lines to stdout instead of publishing (as fast as possible,\n"
    "                         virtual clock, report on stderr)\n"
    "exit status: 0 all published (and verified), 1 publish errors or a failed verify, 2 bad usage\n";

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("mes-loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\n(see mes-loadgen --help)\n", stderr);
    va_end(ap);
    return 2;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    if (!s || !isdigit((unsigned char)*s))
        return false;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return false;
    *out = v;
    return true;
}

static bool parse_double(const char *s, double *out)
{
    if (!s || !*s)
        return false;
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v))
        return false;
    *out = v;
    return true;
}

/* "30s", "5m", "1h", "250ms", or plain seconds. */
static bool parse_duration(const char *s, double *out)
{
    if (!s || !*s)
        return false;
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (errno || end == s || !isfinite(v) || v < 0)
        return false;
    double mult = 1;
    if (strcmp(end, "ms") == 0)
        mult = 0.001;
    else if (strcmp(end, "s") == 0 || *end == '\0')
        mult = 1;
    else if (strcmp(end, "m") == 0)
        mult = 60;
    else if (strcmp(end, "h") == 0)
        mult = 3600;
    else
        return false;
    *out = v * mult;
    return true;
}

static bool valid_company(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 48)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_')
            return false;
    return true;
}

static bool valid_prefix(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 64)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_' && *s != '.' && *s != '-')
            return false;
    return true;
}

/* Splits a comma list in place (argv strings are ours to modify). */
static int split_commas(char *s, char **out, int max)
{
    int n = 0;
    for (char *tok = strtok(s, ","); tok; tok = strtok(NULL, ",")) {
        if (n == max)
            return -1;
        out[n++] = tok;
    }
    return n;
}

static int parse_subjects(opts_t *o, char *list)
{
    char *items[NSUBJ * 4];
    int n = split_commas(list, items, NSUBJ * 4);
    if (n <= 0)
        return usage_error("--subjects: expected a comma list of base subjects");
    memset(o->weights, 0, sizeof o->weights);
    bool seen[NSUBJ] = {0};
    int total = 0;
    for (int i = 0; i < n; i++) {
        char *colon = strchr(items[i], ':');
        uint64_t w = 1;
        if (colon) {
            *colon = '\0';
            if (!parse_u64(colon + 1, &w) || w > 1000000)
                return usage_error("--subjects: weight '%s' of %s must be an integer 0..1000000", colon + 1, items[i]);
        }
        int k = -1;
        for (int j = 0; j < NSUBJ; j++)
            if (strcmp(items[i], SUBJ[j].base) == 0)
                k = j;
        if (k < 0)
            return usage_error("--subjects: unknown subject '%s' (one of the ten bases, e.g. v1.chats.upsert)",
                               items[i]);
        if (seen[k])
            return usage_error("--subjects: %s is listed twice", items[i]);
        seen[k] = true;
        o->weights[k] = (int)w;
        total += (int)w;
    }
    if (total == 0)
        return usage_error("--subjects: all weights are 0");
    return 0;
}

/* Returns 0, 2 (bad usage, message printed) or -1 (--help printed). */
static int parse_args(opts_t *o, int argc, char **argv)
{
    *o = (opts_t){.url = "nats://127.0.0.1:4222",
                  .concurrency = 1000,
                  .history_count = 50,
                  .seed = 1,
                  .verify_timeout_s = 120,
                  .ack_timeout_s = 10};
    for (int i = 0; i < NSUBJ; i++)
        o->weights[i] = SUBJ[i].weight;
    char *companies = NULL;
    const char *prefix = NULL;
    bool have_duration = false, have_count = false;
    for (int i = 1; i < argc; i++) {
        char *arg = argv[i], *val = NULL;
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            fputs(USAGE, stdout);
            return -1;
        }
        if (strncmp(arg, "--", 2) != 0)
            return usage_error("unexpected argument '%s'", arg);
        char *eq = strchr(arg, '=');
        if (eq) {
            *eq = '\0';
            val = eq + 1;
        }
        if (strcmp(arg, "--json") == 0 || strcmp(arg, "--quiet") == 0 || strcmp(arg, "--dry-run") == 0) {
            if (val)
                return usage_error("flag %s takes no value", arg);
            if (arg[2] == 'j')
                o->json = true;
            else if (arg[2] == 'q')
                o->quiet = true;
            else
                o->dry_run = true;
            continue;
        }
        static const char *const valued[] = {"--url",
                                             "--subjects",
                                             "--company_ids",
                                             "--rate",
                                             "--duration",
                                             "--count",
                                             "--concurrency",
                                             "--history-count",
                                             "--invalid-ratio",
                                             "--seed",
                                             "--metrics-port",
                                             "--metrics-address",
                                             "--verify",
                                             "--id-prefix",
                                             "--verify-timeout",
                                             "--ack-timeout",
                                             NULL};
        bool known = false;
        for (int j = 0; valued[j]; j++)
            known |= strcmp(arg, valued[j]) == 0;
        if (!known)
            return usage_error("unknown flag %s", arg);
        if (!val) {
            if (i + 1 >= argc)
                return usage_error("flag %s needs a value", arg);
            val = argv[++i];
        }
        uint64_t u;
        double d;
        if (strcmp(arg, "--url") == 0) {
            o->url = val;
        } else if (strcmp(arg, "--subjects") == 0) {
            if (parse_subjects(o, val))
                return 2;
        } else if (strcmp(arg, "--company_ids") == 0) {
            companies = val;
        } else if (strcmp(arg, "--rate") == 0) {
            if (!parse_double(val, &d) || d < 0 || d > 1e8)
                return usage_error("--rate: '%s' is not a number of events/s between 0 and 1e8", val);
            o->rate = d;
        } else if (strcmp(arg, "--duration") == 0) {
            if (!parse_duration(val, &d) || d <= 0)
                return usage_error("--duration: '%s' is not a positive duration like 30s, 5m or 500ms", val);
            o->duration_s = d;
            have_duration = true;
        } else if (strcmp(arg, "--count") == 0) {
            if (!parse_u64(val, &u) || u == 0 || u > (1ULL << 40))
                return usage_error("--count: '%s' is not an integer between 1 and 2^40", val);
            o->count = u;
            have_count = true;
        } else if (strcmp(arg, "--concurrency") == 0) {
            if (!parse_u64(val, &u) || u == 0 || u > 1000000)
                return usage_error("--concurrency: '%s' is not an integer between 1 and 1000000", val);
            o->concurrency = (int)u;
        } else if (strcmp(arg, "--history-count") == 0) {
            if (!parse_u64(val, &u) || u == 0 || u > 10000)
                return usage_error("--history-count: '%s' is not an integer between 1 and 10000", val);
            o->history_count = (int)u;
        } else if (strcmp(arg, "--invalid-ratio") == 0) {
            if (!parse_double(val, &d) || d < 0 || d > 1)
                return usage_error("--invalid-ratio: '%s' is not a number between 0 and 1", val);
            o->invalid_ratio = d;
        } else if (strcmp(arg, "--seed") == 0) {
            if (!parse_u64(val, &u))
                return usage_error("--seed: '%s' is not an unsigned integer", val);
            o->seed = u;
        } else if (strcmp(arg, "--metrics-port") == 0) {
            if (!parse_u64(val, &u) || u > 65535)
                return usage_error("--metrics-port: '%s' is not a port 0..65535", val);
            o->metrics_port = (int)u;
        } else if (strcmp(arg, "--metrics-address") == 0) {
            struct in6_addr probe;
            if (inet_pton(AF_INET, val, &probe) != 1 && inet_pton(AF_INET6, val, &probe) != 1)
                return usage_error("--metrics-address: '%s' is not an IPv4 or IPv6 address", val);
            o->metrics_address = val;
        } else if (strcmp(arg, "--verify") == 0) {
            if (!*val)
                return usage_error("--verify: the DSN is empty");
            o->verify_dsn = val;
        } else if (strcmp(arg, "--id-prefix") == 0) {
            if (!valid_prefix(val))
                return usage_error("--id-prefix: '%s' must match [A-Za-z0-9_.-]{1,64}", val);
            prefix = val;
        } else if (strcmp(arg, "--verify-timeout") == 0) {
            if (!parse_duration(val, &d) || d <= 0)
                return usage_error("--verify-timeout: '%s' is not a positive duration like 120s", val);
            o->verify_timeout_s = d;
        } else if (strcmp(arg, "--ack-timeout") == 0) {
            if (!parse_duration(val, &d) || d < 0.001 || d > 3600)
                return usage_error("--ack-timeout: '%s' is not a duration between 1ms and 1h", val);
            o->ack_timeout_s = d;
        }
    }
    if (!have_duration && !have_count)
        return usage_error("one of --count or --duration is required");
    if (o->dry_run && o->verify_dsn)
        return usage_error("--verify cannot be combined with --dry-run (nothing is published)");
    if (companies) {
        char *list[MAX_TENANTS + 1];
        int n = split_commas(companies, list, MAX_TENANTS);
        if (n <= 0)
            return usage_error("--company_ids: expected 1..%d comma-separated company ids", MAX_TENANTS);
        for (int i = 0; i < n; i++) {
            if (!valid_company(list[i]))
                return usage_error("--company_ids: '%s' must match ^[A-Za-z0-9_]{1,48}$", list[i]);
            for (int j = 0; j < i; j++)
                if (strcmp(list[i], list[j]) == 0)
                    return usage_error("--company_ids: '%s' is listed twice", list[i]);
            o->companies[i] = list[i];
        }
        o->ntenants = n;
    } else {
        o->companies[0] = "acme";
        o->ntenants = 1;
    }
    if (prefix) {
        snprintf(o->prefix, sizeof o->prefix, "%s", prefix);
    } else if (o->dry_run) {
        /* Reproducible by default: a dry run publishes nothing, so there is no duplicate window to dodge. */
        snprintf(o->prefix, sizeof o->prefix, "lg%" PRIu64, o->seed);
    } else {
        /* Seed + start time in ms (base 36): a rerun with the same seed still gets fresh Nats-Msg-Ids, so
         * JetStream's duplicate window does not swallow it. */
        char t36[16], *p = t36 + sizeof t36;
        *--p = '\0';
        for (uint64_t t = (uint64_t)clock_real_ms(); t; t /= 36)
            *--p = "0123456789abcdefghijklmnopqrstuvwxyz"[t % 36];
        snprintf(o->prefix, sizeof o->prefix, "lg%" PRIu64 "-%s", o->seed, p);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* Event generator: linked entities per tenant, a pure function of the seed and the sequence.                       */

typedef struct {
    const char *co;
    char idp[160];            /* "<prefix>-<co>-": every entity id of this tenant starts with it */
    uint64_t made[NKIND];     /* entities created so far: ids 0..made-1 */
    uint64_t delivered, read; /* status ladder: messages below `delivered` got "delivered", below `read` "read" */
} tenant_t;

typedef struct {
    int subj, tenant;
    int kind;       /* entity kind this event creates, K_NONE, or K_POISON */
    uint64_t n0;    /* first entity created (the event's seq for poison) */
    uint32_t count; /* entities created */
    int poison;
    sbuf_t body;
} event_t;

typedef struct {
    rng_t rng;
    const opts_t *o;
    tenant_t t[MAX_TENANTS];
    int ntenants;
    uint64_t cum[NSUBJ], total;
} gen_t;

static const char *const WORDS[] = {
    "halo",  "kak",   "pesanan", "sudah",   "dikirim", "terima", "kasih", "promo", "hari",     "ini",  "diskon",
    "50%",   "it's",  "ready",   "ok",      "thanks",  "order",  "besok", "harga", "tolong",   "cek",  "invoice",
    "lunas", "kirim", "alamat",  "selamat", "pagi",    "siang",  "malam", "ya",    "tracking", "resi",
};

static const char *const AGENT_STATUS[] = {"open", "connecting", "close"};

static void gen_init(gen_t *g, const opts_t *o)
{
    memset(g, 0, sizeof *g);
    g->o = o;
    rng_seed(&g->rng, o->seed);
    g->ntenants = o->ntenants;
    for (int i = 0; i < o->ntenants; i++) {
        g->t[i].co = o->companies[i];
        snprintf(g->t[i].idp, sizeof g->t[i].idp, "%s-%s-", o->prefix, o->companies[i]);
    }
    for (int i = 0; i < NSUBJ; i++) {
        g->total += (uint64_t)o->weights[i];
        g->cum[i] = g->total;
    }
}

/* Updates only target entities old enough that their upsert has most likely been consumed: the service reads each
 * subject on its own consumer, so a fresh entity's update could overtake it (that still works, via not_found and the
 * DLQ worker, but should be the exception). */
static uint64_t eligible(uint64_t made)
{
    return made > 2 * UPDATE_LAG ? made - UPDATE_LAG : made / 2;
}

/* Hot-path appenders: the generator writes every payload from these instead of printf, which otherwise costs a
 * third of the publisher's CPU at 50k+ events/s. */
#define SB_LIT(b, lit) sb_put((b), (lit), sizeof(lit) - 1)

static void sb_u64w(sbuf_t *b, uint64_t v, int width)
{
    char tmp[24];
    int i = (int)sizeof tmp;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v || (int)sizeof tmp - i < width);
    sb_put(b, tmp + i, sizeof tmp - (size_t)i);
}

static void sb_u64(sbuf_t *b, uint64_t v)
{
    sb_u64w(b, v, 1);
}

static void sb_i64(sbuf_t *b, int64_t v)
{
    if (v < 0) {
        SB_LIT(b, "-");
        sb_u64(b, (uint64_t)0 - (uint64_t)v);
    } else {
        sb_u64(b, (uint64_t)v);
    }
}

/* "<prefix>-<co>-<tag><n>" */
static void sb_id(sbuf_t *b, const tenant_t *t, const char *tag, uint64_t n)
{
    sb_puts(b, t->idp);
    sb_puts(b, tag);
    sb_u64(b, n);
}

static void put_phone(sbuf_t *b, const char *cc, uint64_t k)
{
    sb_puts(b, cc);
    sb_u64w(b, k % 10000000000ULL, 10);
}

static void put_agent_phone(sbuf_t *b, uint64_t agent)
{
    SB_LIT(b, "6281");
    sb_u64w(b, agent, 8);
}

static void put_text(gen_t *g, sbuf_t *b, int words)
{
    for (int i = 0; i < words; i++) {
        if (i)
            SB_LIT(b, " ");
        sb_puts(b, WORDS[rnd_below(&g->rng, sizeof WORDS / sizeof WORDS[0])]);
    }
}

static void put_company(sbuf_t *b, const tenant_t *t, bool always, gen_t *g)
{
    /* Realtime payloads may omit company_id (the service fills it); history items must carry it. */
    if (always || rnd_pct(&g->rng, 50)) {
        SB_LIT(b, ",\"company_id\":\"");
        sb_puts(b, t->co);
        SB_LIT(b, "\"");
    }
}

/* A chat object. Realtime chat k talks to phone 62<k>; history chat k to 64<k>; agent = k mod AGENTS. */
static void put_chat(gen_t *g, const tenant_t *t, sbuf_t *b, uint64_t k, bool history, int64_t now_ms)
{
    const char *cc = history ? "64" : "62";
    bool group = rnd_pct(&g->rng, 5);
    SB_LIT(b, "{\"chat_id\":\"");
    sb_id(b, t, history ? "hc" : "c", k);
    SB_LIT(b, "\",\"jid\":\"");
    put_phone(b, cc, k);
    if (group)
        SB_LIT(b, "-1600000000@g.us\",\"agent_id\":\"");
    else
        SB_LIT(b, "@s.whatsapp.net\",\"agent_id\":\"");
    sb_id(b, t, "a", k % AGENTS_PER_TENANT);
    SB_LIT(b, "\",\"phone_number\":\"+");
    put_phone(b, cc, k);
    SB_LIT(b, "\",\"push_name\":\"Customer ");
    sb_u64(b, k);
    if (group) {
        SB_LIT(b, "\",\"is_group\":true,\"group_name\":\"Group ");
        sb_u64(b, k);
        SB_LIT(b, "\"");
    } else {
        SB_LIT(b, "\",\"is_group\":false");
    }
    SB_LIT(b, ",\"not_spam\":true,\"unread_count\":");
    sb_u64(b, rnd_below(&g->rng, 5));
    SB_LIT(b, ",\"conversation_timestamp\":");
    sb_i64(b, now_ms / 1000 - (history ? (int64_t)rnd_below(&g->rng, 30 * 86400) : 0));
    SB_LIT(b, ",\"last_message\":{\"text\":\"");
    put_text(g, b, 1 + (int)rnd_below(&g->rng, 6));
    SB_LIT(b, "\"}");
    put_company(b, t, history, g);
    SB_LIT(b, "}");
}

/* A message object in chat c. History messages are older and live in history chats. */
static void put_message(gen_t *g, const tenant_t *t, sbuf_t *b, uint64_t m, uint64_t c, bool history, int64_t now_ms)
{
    const char *cc = history ? "64" : "62", *mtag = history ? "hm" : "m";
    bool in = rnd_pct(&g->rng, 50), image = rnd_pct(&g->rng, 10);
    uint64_t agent = c % AGENTS_PER_TENANT;
    SB_LIT(b, "{\"message_id\":\"");
    sb_id(b, t, mtag, m);
    SB_LIT(b, "\",\"chat_id\":\"");
    sb_id(b, t, history ? "hc" : "c", c);
    SB_LIT(b, "\",\"jid\":\"");
    put_phone(b, cc, c);
    SB_LIT(b, "@s.whatsapp.net\"");
    /* History items may inherit agent_id from the batch. */
    if (!history || rnd_pct(&g->rng, 50)) {
        SB_LIT(b, ",\"agent_id\":\"");
        sb_id(b, t, "a", agent);
        SB_LIT(b, "\"");
    }
    if (in) {
        SB_LIT(b, ",\"flow\":\"IN\",\"from_phone\":\"");
        put_phone(b, cc, c);
        SB_LIT(b, "\",\"to_phone\":\"");
        put_agent_phone(b, agent);
    } else {
        SB_LIT(b, ",\"flow\":\"OUT\",\"from_phone\":\"");
        put_agent_phone(b, agent);
        SB_LIT(b, "\",\"to_phone\":\"");
        put_phone(b, cc, c);
    }
    if (image)
        SB_LIT(b, "\",\"message_type\":\"image\",\"message_text\":\"");
    else
        SB_LIT(b, "\",\"message_type\":\"text\",\"message_text\":\"");
    put_text(g, b, 2 + (int)rnd_below(&g->rng, 10));
    SB_LIT(b, "\"");
    if (image) {
        SB_LIT(b, ",\"message_url\":\"https://media.example.invalid/");
        sb_id(b, t, mtag, m);
        SB_LIT(b, ".jpg\"");
    }
    if (in)
        SB_LIT(b, ",\"status\":\"received\",\"key\":{\"id\":\"");
    else
        SB_LIT(b, ",\"status\":\"sent\",\"key\":{\"id\":\"");
    sb_id(b, t, mtag, m);
    if (in)
        SB_LIT(b, "\",\"fromMe\":false,\"remoteJid\":\"");
    else
        SB_LIT(b, "\",\"fromMe\":true,\"remoteJid\":\"");
    put_phone(b, cc, c);
    SB_LIT(b, "@s.whatsapp.net\"},\"message_timestamp\":");
    int64_t ts_ms = history ? now_ms - (int64_t)rnd_below(&g->rng, 30 * 86400) * 1000 : now_ms;
    /* Both encodings occur in the wild; the service reads > 1e11 as milliseconds. */
    sb_i64(b, rnd_pct(&g->rng, 50) ? ts_ms : ts_ms / 1000);
    if (!history && in && rnd_pct(&g->rng, 10))
        sb_printf(b,
                  ",\"campaign\":{\"is_campaign\":true,\"tags\":\"promo,wave%d\",\"origin\":\"campaign_%d\","
                  "\"assigned_to\":\"%sa%" PRIu64 "\"}",
                  (int)rnd_below(&g->rng, 4), (int)rnd_below(&g->rng, 3), t->idp, agent);
    put_company(b, t, history, g);
    SB_LIT(b, "}");
}

/* A contact: phone <cc><k> with formatting a real client would send (the service normalises to digits). */
static void put_contact(gen_t *g, const tenant_t *t, sbuf_t *b, uint64_t k, bool history, const char *name_suffix)
{
    const char *cc = history ? "63" : "62";
    uint64_t style = rnd_below(&g->rng, 3);
    SB_LIT(b, "{\"phone_number\":\"");
    if (style == 1)
        SB_LIT(b, "+");
    put_phone(b, cc, k);
    if (style == 2)
        SB_LIT(b, "@s.whatsapp.net");
    SB_LIT(b, "\",\"agent_id\":\"");
    sb_id(b, t, "a", k % AGENTS_PER_TENANT);
    if (!history) {
        SB_LIT(b, "\",\"chat_id\":\"");
        sb_id(b, t, "c", k);
    }
    SB_LIT(b, "\",\"push_name\":\"Customer ");
    sb_u64(b, k);
    sb_puts(b, name_suffix);
    SB_LIT(b, "\"");
    put_company(b, t, history, g);
    SB_LIT(b, "}");
}

/* When an update has nothing old enough to target yet, publish the upsert it would follow instead (if that subject
 * is enabled); otherwise it targets entity 0, which may not exist and then ends as not_found in the DLQ. */
static int substitute(const gen_t *g, const tenant_t *t, int subj)
{
    static const struct {
        int update, upsert, kind;
    } dep[] = {{S_CHATS_UPDATE, S_CHATS_UPSERT, K_CHAT},
               {S_MESSAGES_UPDATE, S_MESSAGES_UPSERT, K_MESSAGE},
               {S_CONTACTS_UPDATE, S_CONTACTS_UPSERT, K_CONTACT}};
    for (size_t i = 0; i < sizeof dep / sizeof dep[0]; i++)
        if (subj == dep[i].update && eligible(t->made[dep[i].kind]) == 0 && g->o->weights[dep[i].upsert] > 0)
            return dep[i].upsert;
    return subj;
}

static void gen_poison(gen_t *g, const tenant_t *t, uint64_t seq, event_t *ev)
{
    sbuf_t *b = &ev->body;
    const char *items = SUBJ[ev->subj].items_key;
    switch (ev->poison) {
    case P_MALFORMED:
        switch (rnd_below(&g->rng, 3)) {
        case 0: /* truncated in the middle of an object */
            sb_printf(b, "{\"chat_id\":\"%sx%" PRIu64 "\",\"jid\":", t->idp, seq);
            break;
        case 1: /* missing comma */
            sb_printf(b, "{\"message_id\":\"%sx%" PRIu64 "\" \"flow\":\"IN\"}", t->idp, seq);
            break;
        default: /* not JSON at all */ sb_printf(b, "poison-%" PRIu64 " <not json> \x01\x02", seq);
        }
        return;
    case P_MISSING:
        if (items) {
            sb_printf(b, "{\"is_last_batch\":true,\"note\":\"%sx%" PRIu64 " has no %s\"}", t->idp, seq, items);
            return;
        }
        switch (ev->subj) {
        case S_CHATS_UPSERT:
            sb_printf(b, "{\"jid\":\"%sx%" PRIu64 "@s.whatsapp.net\",\"agent_id\":\"%sa0\",\"phone_number\":\"1\"}",
                      t->idp, seq, t->idp);
            break;
        case S_CHATS_UPDATE: sb_printf(b, "{\"unread_delta\":1,\"note\":\"%sx%" PRIu64 "\"}", t->idp, seq); break;
        case S_MESSAGES_UPSERT:
            sb_printf(b, "{\"message_id\":\"%sx%" PRIu64 "\",\"chat_id\":\"%sc0\",\"jid\":\"j\",\"agent_id\":\"%sa0\"}",
                      t->idp, seq, t->idp, t->idp);
            break;
        case S_MESSAGES_UPDATE: sb_printf(b, "{\"status\":\"read\",\"note\":\"%sx%" PRIu64 "\"}", t->idp, seq); break;
        case S_CONTACTS_UPSERT:
        case S_CONTACTS_UPDATE:
            sb_printf(b, "{\"agent_id\":\"%sa0\",\"push_name\":\"%sx%" PRIu64 "\"}", t->idp, t->idp, seq);
            break;
        default: sb_printf(b, "{\"status\":\"open\",\"agent_name\":\"%sx%" PRIu64 "\"}", t->idp, seq);
        }
        return;
    case P_WRONG_TYPE:
        if (items) {
            sb_printf(b, "{\"%s\":\"%sx%" PRIu64 "\"}", items, t->idp, seq);
            return;
        }
        switch (ev->subj) {
        case S_CHATS_UPSERT:
            sb_printf(b, "{\"chat_id\":%" PRIu64 ",\"jid\":\"j\",\"agent_id\":\"%sa0\",\"phone_number\":\"1\"}", seq,
                      t->idp);
            break;
        case S_CHATS_UPDATE:
            sb_printf(b, "{\"chat_id\":\"%sx%" PRIu64 "\",\"unread_delta\":\"many\"}", t->idp, seq);
            break;
        case S_MESSAGES_UPSERT:
            sb_printf(b,
                      "{\"message_id\":\"%sx%" PRIu64 "\",\"chat_id\":\"%sc0\",\"jid\":\"j\",\"agent_id\":\"%sa0\","
                      "\"flow\":\"IN\",\"message_timestamp\":\"yesterday\"}",
                      t->idp, seq, t->idp, t->idp);
            break;
        case S_MESSAGES_UPDATE:
            sb_printf(b, "{\"message_id\":\"%sx%" PRIu64 "\",\"is_deleted\":\"yes\"}", t->idp, seq);
            break;
        case S_CONTACTS_UPSERT:
        case S_CONTACTS_UPDATE:
            sb_printf(b, "{\"phone_number\":62%" PRIu64 ",\"agent_id\":\"%sa0\"}", seq, t->idp);
            break;
        default: sb_printf(b, "{\"agent_id\":[\"%sx%" PRIu64 "\"]}", t->idp, seq);
        }
        return;
    default: /* P_COMPANY: well-formed, but for another tenant */
        if (items)
            sb_printf(b, "{\"company_id\":\"%s_other\",\"%s\":[],\"note\":\"%sx%" PRIu64 "\"}", t->co, items, t->idp,
                      seq);
        else
            sb_printf(b,
                      "{\"chat_id\":\"%sx%" PRIu64 "\",\"message_id\":\"%sx%" PRIu64 "\",\"agent_id\":\"%sa0\","
                      "\"jid\":\"j\",\"phone_number\":\"620\",\"flow\":\"IN\",\"company_id\":\"%s_other\"}",
                      t->idp, seq, t->idp, seq, t->idp, t->co);
    }
}

/* The event with sequence seq. Touches only g (counters, PRNG): publish outcomes never change what comes next. */
static void gen_next(gen_t *g, uint64_t seq, int64_t now_ms, event_t *ev)
{
    ev->tenant = (int)rnd_below(&g->rng, (uint64_t)g->ntenants);
    tenant_t *t = &g->t[ev->tenant];
    uint64_t r = rnd_below(&g->rng, g->total);
    ev->subj = 0;
    while (r >= g->cum[ev->subj])
        ev->subj++;
    ev->kind = K_NONE;
    ev->n0 = 0;
    ev->count = 0;
    ev->poison = P_NONE;
    sb_reset(&ev->body);
    sbuf_t *b = &ev->body;

    if (g->o->invalid_ratio > 0 && rnd_unit(&g->rng) < g->o->invalid_ratio) {
        ev->poison = 1 + (int)rnd_below(&g->rng, NPOISON - 1);
        ev->kind = K_POISON;
        ev->n0 = seq;
        ev->count = 1;
        gen_poison(g, t, seq, ev);
        return;
    }
    ev->subj = substitute(g, t, ev->subj);
    uint64_t k, e;
    int h = g->o->history_count;
    switch (ev->subj) {
    case S_CHATS_UPSERT:
        /* Mostly new chats; some re-upserts of known chats (new last message). */
        if (t->made[K_CHAT] == 0 || rnd_pct(&g->rng, 75)) {
            k = t->made[K_CHAT]++;
            ev->kind = K_CHAT;
            ev->n0 = k;
            ev->count = 1;
        } else {
            k = rnd_below(&g->rng, t->made[K_CHAT]);
        }
        put_chat(g, t, b, k, false, now_ms);
        break;
    case S_CHATS_UPDATE:
        e = eligible(t->made[K_CHAT]);
        k = rnd_below(&g->rng, e);
        switch (rnd_below(&g->rng, 10)) {
        case 0:
        case 1: /* the agent opened the chat */
            sb_printf(b, "{\"chat_id\":\"%sc%" PRIu64 "\",\"unread_count\":0}", t->idp, k);
            break;
        case 2: sb_printf(b, "{\"id\":\"%sc%" PRIu64 "\",\"unread_delta\":-1}", t->idp, k); break;
        default: /* a new incoming message */
            sb_printf(b,
                      "{\"chat_id\":\"%sc%" PRIu64 "\",\"unread_delta\":%d,\"conversation_timestamp\":%" PRId64
                      ",\"last_message\":{\"text\":\"",
                      t->idp, k, 1 + (int)rnd_below(&g->rng, 3), now_ms / 1000);
            put_text(g, b, 1 + (int)rnd_below(&g->rng, 5));
            sb_puts(b, "\"}}");
        }
        break;
    case S_MESSAGES_UPSERT:
        k = t->made[K_MESSAGE]++;
        ev->kind = K_MESSAGE;
        ev->n0 = k;
        ev->count = 1;
        put_message(g, t, b, k, rnd_below(&g->rng, t->made[K_CHAT]), false, now_ms);
        break;
    case S_MESSAGES_UPDATE: {
        /* Status ladder sent -> delivered -> read, each message in creation order, "read" after "delivered". */
        e = eligible(t->made[K_MESSAGE]);
        bool can_read = t->read < t->delivered, can_deliver = t->delivered < e;
        const char *status = "read";
        if (can_read && (!can_deliver || rnd_pct(&g->rng, 50))) {
            k = t->read++;
        } else if (can_deliver) {
            k = t->delivered++;
            status = "delivered";
        } else {
            k = rnd_below(&g->rng, e); /* ladder done: a repeated "read" is a harmless no-op */
        }
        if (rnd_pct(&g->rng, 3)) { /* an edit instead of a status change */
            sb_printf(b, "{\"message_id\":\"%sm%" PRIu64 "\",\"edited_message_obj\":{\"text\":\"", t->idp, k);
            put_text(g, b, 3);
            sb_puts(b, "\"}}");
        } else {
            sb_printf(b, "{\"%s\":\"%sm%" PRIu64 "\",\"status\":\"%s\"}", rnd_pct(&g->rng, 10) ? "id" : "message_id",
                      t->idp, k, status);
        }
        break;
    }
    case S_CONTACTS_UPSERT:
        if (t->made[K_CONTACT] == 0 || rnd_pct(&g->rng, 85)) {
            k = t->made[K_CONTACT]++;
            ev->kind = K_CONTACT;
            ev->n0 = k;
            ev->count = 1;
        } else {
            k = rnd_below(&g->rng, t->made[K_CONTACT]);
        }
        put_contact(g, t, b, k, false, "");
        break;
    case S_CONTACTS_UPDATE:
        k = rnd_below(&g->rng, eligible(t->made[K_CONTACT]));
        put_contact(g, t, b, k, false, " (vip)");
        break;
    case S_CONNECTION_UPDATE:
        if (t->made[K_AGENT] < AGENTS_PER_TENANT) {
            k = t->made[K_AGENT]++;
            ev->kind = K_AGENT;
            ev->n0 = k;
            ev->count = 1;
            sb_printf(b,
                      "{\"agent_id\":\"%sa%" PRIu64 "\",\"status\":\"open\",\"agent_name\":\"Agent %" PRIu64
                      "\",\"host_name\":\"wa-host-%" PRIu64 "\",\"version\":\"2.3000.%d\","
                      "\"phone_number\":\"6281%08" PRIu64 "\",\"qr_code\":\"\"}",
                      t->idp, k, k, k % 3, (int)rnd_below(&g->rng, 100), k);
        } else {
            k = rnd_below(&g->rng, AGENTS_PER_TENANT);
            sb_printf(b, "{\"agent_id\":\"%sa%" PRIu64 "\",\"status\":\"%s\"}", t->idp, k,
                      AGENT_STATUS[rnd_below(&g->rng, 3)]);
        }
        break;
    case S_HISTORY_CHATS:
    case S_HISTORY_MESSAGES:
    case S_HISTORY_CONTACTS: {
        int kind = ev->subj == S_HISTORY_CHATS ? K_HCHAT : ev->subj == S_HISTORY_MESSAGES ? K_HMESSAGE : K_HCONTACT;
        ev->kind = kind;
        ev->n0 = t->made[kind];
        ev->count = (uint32_t)h;
        t->made[kind] += (uint64_t)h;
        uint64_t agent = ev->n0 % AGENTS_PER_TENANT;
        if (kind == K_HMESSAGE)
            sb_printf(b, "{\"agent_id\":\"%sa%" PRIu64 "\",\"is_last_batch\":%s,", t->idp, agent,
                      rnd_pct(&g->rng, 10) ? "true" : "false");
        else
            sb_puts(b, "{");
        sb_printf(b, "\"%s\":[", SUBJ[ev->subj].items_key);
        for (int i = 0; i < h; i++) {
            if (i)
                sb_puts(b, ",");
            uint64_t n = ev->n0 + (uint64_t)i;
            if (kind == K_HCHAT)
                put_chat(g, t, b, n, true, now_ms);
            else if (kind == K_HMESSAGE)
                put_message(g, t, b, n, rnd_below(&g->rng, t->made[K_HCHAT] ? t->made[K_HCHAT] : 1), true, now_ms);
            else
                put_contact(g, t, b, n, true, "");
        }
        sb_puts(b, "]}");
        break;
    }
    }
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* Statistics shared by the publisher, the ack callback and /metrics.                                               */

#define LAT_SUBBITS 5
#define LAT_SUB (1 << LAT_SUBBITS)
#define LAT_NB ((40 - LAT_SUBBITS + 1) * LAT_SUB) /* microseconds up to 2^40: ~3% resolution, 9 KiB, any run length */
static const double PROM_LE[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                 0.1,    0.25,    0.5,    1,     2.5,    5,     10,   30};
#define NPROM (sizeof PROM_LE / sizeof PROM_LE[0])

typedef struct {
    _Atomic uint64_t b[LAT_NB];
    _Atomic uint64_t prom[NPROM + 1]; /* per bucket, not cumulative; the last is +Inf */
    _Atomic uint64_t sum_ns, max_ns;
} lat_t;

static int lat_index(uint64_t us)
{
    if (us < LAT_SUB)
        return (int)us;
    int p = 63 - __builtin_clzll(us);
    int idx = (p - LAT_SUBBITS + 1) * LAT_SUB + (int)((us >> (p - LAT_SUBBITS)) - LAT_SUB);
    return idx < LAT_NB ? idx : LAT_NB - 1;
}

/* Middle of bucket idx, in microseconds. */
static double lat_value(int idx)
{
    if (idx < LAT_SUB)
        return idx;
    int g = idx / LAT_SUB;
    uint64_t lower = (uint64_t)(LAT_SUB + idx % LAT_SUB) << (g - 1), width = 1ULL << (g - 1);
    return (double)lower + (double)width / 2.0;
}

static void lat_record(lat_t *l, int64_t ns)
{
    if (ns < 0)
        ns = 0;
    atomic_fetch_add_explicit(&l->b[lat_index((uint64_t)ns / 1000)], 1, memory_order_relaxed);
    size_t i = 0;
    while (i < NPROM && (double)ns > PROM_LE[i] * 1e9)
        i++;
    atomic_fetch_add_explicit(&l->prom[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&l->sum_ns, (uint64_t)ns, memory_order_relaxed);
    uint64_t m = atomic_load_explicit(&l->max_ns, memory_order_relaxed);
    while ((uint64_t)ns > m && !atomic_compare_exchange_weak_explicit(&l->max_ns, &m, (uint64_t)ns,
                                                                      memory_order_relaxed, memory_order_relaxed))
        ;
}

/* Quantile q in seconds (0 when nothing was recorded). */
static double lat_quantile(lat_t *l, double q)
{
    uint64_t total = 0;
    for (int i = 0; i < LAT_NB; i++)
        total += atomic_load_explicit(&l->b[i], memory_order_relaxed);
    if (!total)
        return 0;
    uint64_t want = (uint64_t)ceil(q * (double)total), seen = 0;
    if (want == 0)
        want = 1;
    for (int i = 0; i < LAT_NB; i++) {
        seen += atomic_load_explicit(&l->b[i], memory_order_relaxed);
        if (seen >= want) {
            double v = lat_value(i) / 1e6, max = (double)atomic_load(&l->max_ns) / 1e9;
            return v < max ? v : max;
        }
    }
    return (double)atomic_load(&l->max_ns) / 1e9;
}

typedef struct {
    _Atomic uint64_t attempted, published, errors;
} cell_t;

/* One in-flight publish. seq != 0 marks it busy; see the ownership note at the top of the file. */
typedef struct {
    _Atomic uint64_t seq;
    int64_t sent_ns;
    int subj, tenant, kind;
    uint64_t n0;
    uint32_t count;
} slot_t;

typedef struct {
    int tenant, kind;
    uint64_t n0;
    uint32_t count;
} failed_t;

typedef struct {
    opts_t o;
    gen_t gen;
    cell_t cells[NSUBJ][MAX_TENANTS];
    _Atomic uint64_t err_class[NERR], poison[NPOISON], duplicates, deficit_full, deficit_behind;
    _Atomic int64_t inflight;
    _Atomic int waiting;
    int64_t low_water; /* in-flight level at which a waiting sender is woken */
    lat_t lat;
    slot_t *slots;
    uint64_t slot_mask;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* --verify bookkeeping */
    bitvec_t poison_seqs;
    pthread_mutex_t fail_mu;
    failed_t *failed;
    size_t nfailed, capfailed;
    bool failed_overflow;
    char last_err[NERR][200]; /* under fail_mu */
    natsConnection *nc;
    jsCtx *js;
    size_t prefix_len;
    uint64_t seq; /* last sequence handed out */
    int64_t t0_ns, elapsed_ns;
    double target_rate;
} lg_t;

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    if (g_stop) { /* second signal: the operator means it */
        signal(sig, SIG_DFL);
        raise(sig);
    }
    g_stop = 1;
}

static uint64_t total_of(lg_t *g, int what)
{
    uint64_t n = 0;
    for (int s = 0; s < NSUBJ; s++)
        for (int t = 0; t < g->o.ntenants; t++) {
            cell_t *c = &g->cells[s][t];
            n += atomic_load(what == 0 ? &c->attempted : what == 1 ? &c->published : &c->errors);
        }
    return n;
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* /metrics (Prometheus text format 0.0.4).                                                                         */

static void render_metrics(lg_t *g, sbuf_t *b)
{
    static const struct {
        const char *name, *help;
    } fam[3] = {
        {"loadgen_messages_attempted_total", "Events handed to the NATS client for publishing."},
        {"loadgen_messages_published_total", "Events whose JetStream PubAck was received."},
        {"loadgen_publish_errors_total", "Events that failed to publish (error, no responders or PubAck timeout)."},
    };
    for (int f = 0; f < 3; f++) {
        sb_printf(b, "# HELP %s %s\n# TYPE %s counter\n", fam[f].name, fam[f].help, fam[f].name);
        for (int s = 0; s < NSUBJ; s++) {
            if (!g->o.weights[s])
                continue;
            for (int t = 0; t < g->o.ntenants; t++) {
                cell_t *c = &g->cells[s][t];
                uint64_t v = atomic_load(f == 0 ? &c->attempted : f == 1 ? &c->published : &c->errors);
                sb_printf(b, "%s{subject=\"%s\",company_id=\"%s\"} %" PRIu64 "\n", fam[f].name, SUBJ[s].base,
                          g->o.companies[t], v);
            }
        }
    }
    sb_puts(b, "# HELP loadgen_publish_latency_seconds Time from the async publish call to its PubAck callback "
               "(successful publishes).\n# TYPE loadgen_publish_latency_seconds histogram\n");
    uint64_t cum = 0;
    for (size_t i = 0; i <= NPROM; i++) {
        cum += atomic_load(&g->lat.prom[i]);
        if (i < NPROM)
            sb_printf(b, "loadgen_publish_latency_seconds_bucket{le=\"%g\"} %" PRIu64 "\n", PROM_LE[i], cum);
        else
            sb_printf(b, "loadgen_publish_latency_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n", cum);
    }
    sb_printf(b, "loadgen_publish_latency_seconds_sum %.9f\nloadgen_publish_latency_seconds_count %" PRIu64 "\n",
              (double)atomic_load(&g->lat.sum_ns) / 1e9, cum);
    sb_puts(b, "# HELP loadgen_publish_error_class_total Failed publishes by error class.\n"
               "# TYPE loadgen_publish_error_class_total counter\n");
    for (int e = 0; e < NERR; e++)
        sb_printf(b, "loadgen_publish_error_class_total{class=\"%s\"} %" PRIu64 "\n", ERR_NAME[e],
                  atomic_load(&g->err_class[e]));
    sb_puts(b, "# HELP loadgen_poison_events_total Poison events attempted, by kind.\n"
               "# TYPE loadgen_poison_events_total counter\n");
    for (int p = 1; p < NPOISON; p++)
        sb_printf(b, "loadgen_poison_events_total{kind=\"%s\"} %" PRIu64 "\n", POISON_NAME[p],
                  atomic_load(&g->poison[p]));
    sb_printf(b,
              "# HELP loadgen_schedule_deficit_total Scheduled events that could not be sent on time (open loop).\n"
              "# TYPE loadgen_schedule_deficit_total counter\nloadgen_schedule_deficit_total %" PRIu64 "\n"
              "# HELP loadgen_in_flight Publishes awaiting their PubAck.\n# TYPE loadgen_in_flight gauge\n"
              "loadgen_in_flight %" PRId64 "\n"
              "# HELP loadgen_target_rate Target events per second (0 = unbounded).\n"
              "# TYPE loadgen_target_rate gauge\nloadgen_target_rate %g\n",
              atomic_load(&g->deficit_full) + atomic_load(&g->deficit_behind), atomic_load(&g->inflight), g->o.rate);
}

static enum MHD_Result on_http(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                               const char *version, const char *upload_data, size_t *upload_data_size, void **state)
{
    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)state;
    lg_t *g = cls;
    sbuf_t b = {0};
    unsigned code = MHD_HTTP_OK;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        code = MHD_HTTP_METHOD_NOT_ALLOWED;
        sb_puts(&b, "method not allowed\n");
    } else if (strcmp(url, "/metrics") == 0) {
        render_metrics(g, &b);
    } else {
        code = MHD_HTTP_NOT_FOUND;
        sb_puts(&b, "not found; try /metrics\n");
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(b.len, b.p, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        sb_free(&b);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
    enum MHD_Result ret = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return ret;
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* Publishing.                                                                                                      */

static int classify(natsStatus s, jsErrCode jerr)
{
    if (s == NATS_TIMEOUT)
        return E_TIMEOUT;
    if (s == NATS_NO_RESPONDERS)
        return E_NO_RESPONDERS;
    if (s == NATS_MAX_PAYLOAD || jerr == JSStreamMessageExceedsMaximumErr)
        return E_MAX_PAYLOAD;
    return E_OTHER;
}

/* "<prefix>-<digits>" -> digits; 0 when id is not one of ours. */
static uint64_t seq_of(const char *prefix, size_t plen, const char *id)
{
    uint64_t v;
    if (!id || strncmp(id, prefix, plen) != 0 || id[plen] != '-' || !parse_u64(id + plen + 1, &v))
        return 0;
    return v;
}

/* Settles one publish: counts it, remembers what a failure did not publish, and frees the slot. */
static void settle(lg_t *g, slot_t *sl, bool ok, bool dup, int cls, const char *errtext)
{
    cell_t *c = &g->cells[sl->subj][sl->tenant];
    if (ok) {
        atomic_fetch_add(&c->published, 1);
        if (dup)
            atomic_fetch_add(&g->duplicates, 1);
        lat_record(&g->lat, clock_mono_ns() - sl->sent_ns);
    } else {
        atomic_fetch_add(&c->errors, 1);
        atomic_fetch_add(&g->err_class[cls], 1);
        pthread_mutex_lock(&g->fail_mu);
        if (errtext)
            snprintf(g->last_err[cls], sizeof g->last_err[cls], "%s", errtext);
        if (g->o.verify_dsn && sl->kind != K_NONE) {
            if (g->nfailed == FAILED_CAP) {
                g->failed_overflow = true;
            } else {
                if (g->nfailed == g->capfailed) {
                    g->capfailed = g->capfailed ? g->capfailed * 2 : 256;
                    g->failed = xrealloc(g->failed, g->capfailed * sizeof *g->failed);
                }
                g->failed[g->nfailed++] = (failed_t){sl->tenant, sl->kind, sl->n0, sl->count};
            }
        }
        pthread_mutex_unlock(&g->fail_mu);
    }
    atomic_store_explicit(&sl->seq, 0, memory_order_release);
    /* Wake the sender only at the low-water mark: one wake-up per batch of acks, not a context switch per ack. */
    if (atomic_fetch_sub(&g->inflight, 1) - 1 <= g->low_water && atomic_load(&g->waiting)) {
        pthread_mutex_lock(&g->mu);
        pthread_cond_signal(&g->cv);
        pthread_mutex_unlock(&g->mu);
    }
}

/* nats.c calls this for every async publish: PubAck, error reply, no responders or MaxWait timeout. We own msg. */
static void on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    (void)js;
    lg_t *g = closure;
    const char *id = NULL;
    uint64_t seq = natsMsgHeader_Get(msg, "Nats-Msg-Id", &id) == NATS_OK ? seq_of(g->o.prefix, g->prefix_len, id) : 0;
    slot_t *sl = seq ? &g->slots[seq & g->slot_mask] : NULL;
    if (sl && atomic_load_explicit(&sl->seq, memory_order_acquire) == seq) {
        if (pa)
            settle(g, sl, true, pa->Duplicate, 0, NULL);
        else
            settle(g, sl, false, false, pae ? classify(pae->Err, pae->ErrCode) : E_OTHER,
                   pae && pae->ErrText ? pae->ErrText : "unknown publish error");
    }
    natsMsg_Destroy(msg);
}

static bool has_room(lg_t *g)
{
    return atomic_load(&g->inflight) < g->o.concurrency &&
           atomic_load_explicit(&g->slots[(g->seq + 1) & g->slot_mask].seq, memory_order_acquire) == 0;
}

/* Waits up to max_ns until in flight has drained to the low-water mark. waiting/inflight are seq_cst on both
 * sides, so either the ack side sees waiting (and signals) or we see its decrement (and do not sleep). A slot still
 * busy after that (one publish stuck for 4*concurrency newer ones) is only re-checked at max_ns. */
static void wait_room(lg_t *g, int64_t max_ns)
{
    pthread_mutex_lock(&g->mu);
    atomic_store(&g->waiting, 1);
    if (atomic_load(&g->inflight) > g->low_water && !g_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t t = ts.tv_nsec + max_ns;
        ts.tv_sec += (time_t)(t / 1000000000LL);
        ts.tv_nsec = (long)(t % 1000000000LL);
        pthread_cond_timedwait(&g->cv, &g->mu, &ts);
    }
    atomic_store(&g->waiting, 0);
    pthread_mutex_unlock(&g->mu);
}

/* Generates and sends (or prints) the next event. */
static void send_next(lg_t *g, event_t *ev)
{
    uint64_t seq = ++g->seq;
    gen_next(&g->gen, seq, g->o.dry_run ? VCLOCK_BASE_MS + (int64_t)seq * 10 : clock_real_ms(), ev);
    const char *co = g->o.companies[ev->tenant];
    cell_t *c = &g->cells[ev->subj][ev->tenant];
    atomic_fetch_add(&c->attempted, 1);
    if (ev->poison)
        atomic_fetch_add(&g->poison[ev->poison], 1);
    if (g->o.dry_run) {
        fputs(SUBJ[ev->subj].base, stdout);
        putchar('.');
        fputs(co, stdout);
        putchar(' ');
        fwrite(ev->body.p, 1, ev->body.len, stdout);
        putchar('\n');
        atomic_fetch_add(&c->published, 1);
        return;
    }
    if (ev->kind == K_POISON && g->o.verify_dsn)
        bitvec_set(&g->poison_seqs, seq);

    char subject[128], id[96];
    snprintf(subject, sizeof subject, "%s.%s", SUBJ[ev->subj].base, co);
    snprintf(id, sizeof id, "%s-%" PRIu64, g->o.prefix, seq);
    slot_t *sl = &g->slots[seq & g->slot_mask];
    sl->sent_ns = clock_mono_ns();
    sl->subj = ev->subj;
    sl->tenant = ev->tenant;
    sl->kind = ev->kind;
    sl->n0 = ev->n0;
    sl->count = ev->count;
    atomic_fetch_add(&g->inflight, 1);
    atomic_store_explicit(&sl->seq, seq, memory_order_release); /* from here on_ack may settle it */

    natsMsg *m = NULL;
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = id; /* no MaxWait: nats.c would queue a timer entry and a late "timeout" message for every publish,
                    * about 20% of our CPU; expire_stuck() covers lost PubAcks instead */
    natsStatus s = natsMsg_Create(&m, subject, NULL, ev->body.p, (int)ev->body.len);
    if (s == NATS_OK)
        s = js_PublishMsgAsync(g->js, &m, &po);
    natsMsg_Destroy(m); /* NULL when the library took it */
    if (s != NATS_OK)
        settle(g, sl, false, false, classify(s, 0), nats_GetLastError(NULL));
}

static void progress(lg_t *g, int64_t now)
{
    if (g->o.quiet)
        return;
    double el = (double)(now - g->t0_ns) / 1e9;
    uint64_t att = total_of(g, 0);
    fprintf(stderr,
            "mes-loadgen: t=%.1fs attempted=%" PRIu64 " published=%" PRIu64 " errors=%" PRIu64 " in_flight=%" PRId64
            " rate=%.0f/s deficit=%" PRIu64 "\n",
            el, att, total_of(g, 1), total_of(g, 2), atomic_load(&g->inflight), el > 0 ? (double)att / el : 0.0,
            atomic_load(&g->deficit_full));
}

/* Hands every publish nats.c still waits for back to us and counts it as a timeout. nats.c cannot time out one
 * async publish without a per-message timer, so this is all or nothing: acks arriving later for these are dropped
 * by the library (and their entities merely excluded from --verify). */
static void expire_pending(lg_t *g, const char *why)
{
    natsMsgList pending = {0};
    if (js_PublishAsyncGetPendingList(&pending, g->js) != NATS_OK)
        return;
    for (int i = 0; i < pending.Count; i++) {
        const char *id = NULL;
        uint64_t seq = natsMsgHeader_Get(pending.Msgs[i], "Nats-Msg-Id", &id) == NATS_OK
                           ? seq_of(g->o.prefix, g->prefix_len, id)
                           : 0;
        slot_t *sl = seq ? &g->slots[seq & g->slot_mask] : NULL;
        if (sl && atomic_load_explicit(&sl->seq, memory_order_acquire) == seq)
            settle(g, sl, false, false, E_TIMEOUT, why);
    }
    natsMsgList_Destroy(&pending);
}

/* A publish older than --ack-timeout means the server lost or is not sending PubAcks (restart, stall): expire
 * everything in flight so the run goes on. Only main writes sent_ns, so reading it here is race-free. */
static void expire_stuck(lg_t *g, int64_t now)
{
    int64_t limit = (int64_t)(g->o.ack_timeout_s * 1e9);
    for (uint64_t i = 0; i <= g->slot_mask; i++)
        if (atomic_load_explicit(&g->slots[i].seq, memory_order_acquire) != 0 && now - g->slots[i].sent_ns > limit) {
            expire_pending(g, "no PubAck within --ack-timeout");
            return;
        }
}

/* The open loop. Slot i of the schedule is due at t0 + i/rate (sent at most PACE_TICK_NS late, with the slots due
 * in the same tick). A due slot is sent when there is room in flight;
 * when there is none, every slot due at that moment is dropped and counted as deficit, so slow PubAcks never slow
 * the schedule down and a later burst never makes up for them. With --rate 0 there is no schedule: send whenever
 * there is room. */
static void run_loop(lg_t *g)
{
    event_t ev = {0};
    const opts_t *o = &g->o;
    int64_t t0 = clock_mono_ns(), end = o->duration_s > 0 ? t0 + (int64_t)(o->duration_s * 1e9) : INT64_MAX;
    int64_t next_progress = t0 + 5000000000LL, next_expiry = t0 + 100000000LL;
    double ns_per = o->rate > 0 ? 1e9 / o->rate : 0;
    uint64_t slots_done = 0;
    g->t0_ns = t0;
    for (;;) {
        if (g_stop || (o->count && g->seq >= o->count))
            break;
        int64_t now = clock_mono_ns();
        if (now >= end)
            break;
        if (now >= next_progress) {
            progress(g, now);
            next_progress += 5000000000LL;
        }
        if (now >= next_expiry && !o->dry_run) {
            expire_stuck(g, now);
            next_expiry = now + 100000000LL;
        }
        if (o->dry_run) {
            send_next(g, &ev);
            continue;
        }
        if (ns_per == 0) {
            if (has_room(g))
                send_next(g, &ev);
            else
                wait_room(g, 5000000);
            continue;
        }
        uint64_t due = (uint64_t)((double)(now - t0) / ns_per) + 1;
        if (due > slots_done) {
            if (has_room(g)) {
                send_next(g, &ev);
                slots_done++;
            } else {
                atomic_fetch_add(&g->deficit_full, due - slots_done);
                slots_done = due;
                wait_room(g, (int64_t)ns_per + 1000);
            }
            continue;
        }
        int64_t next = t0 + (int64_t)((double)slots_done * ns_per);
        /* A slot due within the tick goes out with those due by its end; in the run's last tick, each slot is sent
         * at its time as before, so every slot due before the end is sent (and none counted as deficit). */
        if (next < now + PACE_TICK_NS && now + PACE_TICK_NS < end)
            next = now + PACE_TICK_NS;
        next = next < end ? next : end;
        clock_sleep_until_ns(next < next_expiry ? next : next_expiry);
    }
    int64_t stop = clock_mono_ns();
    /* A duration-bounded run that fell behind (CPU-bound) leaves due slots unsent: also deficit. */
    if (ns_per > 0 && !g_stop && stop >= end && !(o->count && g->seq >= o->count)) {
        uint64_t due_total = (uint64_t)ceil(o->duration_s * o->rate);
        if (due_total > slots_done)
            atomic_fetch_add(&g->deficit_behind, due_total - slots_done);
    }
    g->elapsed_ns = stop - t0;
    sb_free(&ev.body);
}

/* After the loop: wait up to --ack-timeout for the last PubAcks; whatever is still pending then is a timeout. */
static void drain_acks(lg_t *g)
{
    if (g->o.dry_run)
        return;
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = (int64_t)(g->o.ack_timeout_s * 1000);
    if (js_PublishAsyncComplete(g->js, &po) != NATS_OK)
        expire_pending(g, "no PubAck before the end of the run");
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* --verify: drained consumers, then every published entity in PostgreSQL, the DLQ or exhausted_events.            */

typedef struct {
    uint64_t published, in_db, in_dlq, missing;
} vcount_t;

typedef struct {
    bool ran, drained, inconclusive;
    double drain_s;
    char not_drained[256]; /* first consumer still busy (or missing) at the timeout */
    char error[256];       /* why verify could not run */
    vcount_t ent[MAX_TENANTS][NKIND];
    vcount_t poison;
    char *missing_ids[MISSING_SHOWN];
    int nmissing_ids;
    uint64_t dlq_records;
} verify_t;

typedef struct {
    lg_t *g;
    verify_t *v;
    u64set_t dlq_seq;                     /* our seqs that have a DLQ record or an exhausted_events row */
    u64set_t dlq_ent[MAX_TENANTS][NKIND]; /* entity numbers found inside such records */
    PGconn *pg;
} vctx_t;

static void note_missing(verify_t *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note_missing(verify_t *v, const char *fmt, ...)
{
    if (v->nmissing_ids >= MISSING_SHOWN)
        return;
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    v->missing_ids[v->nmissing_ids] = strdup(buf);
    if (!v->missing_ids[v->nmissing_ids])
        die_oom();
    v->nmissing_ids++;
}

/* libpq messages end with a newline; one-line reports read better without it. */
static void set_error(verify_t *v, const char *what, const char *detail)
{
    snprintf(v->error, sizeof v->error, "%s: %s", what, detail);
    size_t n = strlen(v->error);
    while (n && isspace((unsigned char)v->error[n - 1]))
        v->error[--n] = '\0';
    for (char *p = v->error; *p; p++)
        if (*p == '\n' || *p == '\t')
            *p = ' ';
}

/* Messages pending or awaiting ack on one of the service's durables, or -1 when it cannot be read. why (when not
 * 0) names the consumer and its state. */
static int64_t consumer_backlog(lg_t *g, int tenant, int s, jsOptions *jo, char *why, size_t len)
{
    char durable[160];
    snprintf(durable, sizeof durable, "%s%s_%s", SUBJ[s].history ? "wa_history_listener_" : "wa_listener_",
             g->o.companies[tenant], SUBJ[s].durable_suffix);
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus st =
        js_GetConsumerInfo(&ci, g->js, SUBJ[s].history ? HISTORY_STREAM : REALTIME_STREAM, durable, jo, &jerr);
    if (st != NATS_OK) {
        snprintf(why, len, "%s: %s", durable,
                 jerr == JSConsumerNotFoundErr ? "consumer not found (is the service running for this tenant?)"
                                               : natsStatus_GetText(st));
        return -1;
    }
    int64_t n = (int64_t)ci->NumPending + ci->NumAckPending;
    snprintf(why, len, "%s: %" PRIu64 " pending, %" PRId64 " awaiting ack", durable, ci->NumPending, ci->NumAckPending);
    jsConsumerInfo_Destroy(ci);
    return n;
}

/* Drained = every durable of every tenant has nothing pending and nothing awaiting ack at one pass. Publishing is
 * over by then, and the service acks only after the commit or the DLQ record, so a drained service has written
 * everything it will write (the DLQ worker may still retry records; that only moves them into the tables). */
static bool wait_drained(vctx_t *x)
{
    lg_t *g = x->g;
    verify_t *v = x->v;
    int64_t t0 = clock_mono_ns(), deadline = t0 + (int64_t)(g->o.verify_timeout_s * 1e9), next_note = t0 + 5000000000LL;
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = 5000;
    for (;;) {
        bool all = true;
        int64_t pending = 0;
        v->not_drained[0] = '\0';
        for (int t = 0; t < g->o.ntenants; t++)
            for (int s = 0; s < NSUBJ; s++) {
                char why[256];
                int64_t n = consumer_backlog(g, t, s, &jo, why, sizeof why);
                if (n != 0 && all)
                    snprintf(v->not_drained, sizeof v->not_drained, "%s", why);
                all &= n == 0;
                pending += n > 0 ? n : 0;
            }
        int64_t now = clock_mono_ns();
        if (all) {
            v->drained = true;
            v->drain_s = (double)(now - t0) / 1e9;
            return true;
        }
        if (now >= deadline || g_stop)
            return false;
        if (now >= next_note && !g->o.quiet) {
            fprintf(stderr, "mes-loadgen: verify: waiting for the service to drain (%" PRId64 " pending; %s)\n",
                    pending, v->not_drained);
            next_note += 5000000000LL;
        }
        clock_sleep_until_ns(now + 250000000LL);
    }
}

/* "<idp><tag><digits>" -> digits. */
static bool entity_num(const char *id, const char *idp, const char *tag, uint64_t *n)
{
    size_t lp = strlen(idp), lt = strlen(tag);
    return id && strncmp(id, idp, lp) == 0 && strncmp(id + lp, tag, lt) == 0 && parse_u64(id + lp + lt, n);
}

/* Contact (agent, phone) -> k when the agent is ours and the phone is <tag> + 10 digits (after normalising). */
static bool contact_num(const cJSON *item, const tenant_t *t, const char *tag, uint64_t *n)
{
    const char *agent = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(item, "agent_id"));
    const char *phone = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(item, "phone_number"));
    uint64_t a;
    if (!phone || !entity_num(agent, t->idp, "a", &a))
        return false;
    char digits[80];
    size_t nd = 0;
    for (const char *p = phone; *p && *p != '@' && nd + 1 < sizeof digits; p++)
        if (isdigit((unsigned char)*p))
            digits[nd++] = *p;
    digits[nd] = '\0';
    return nd == 12 && strncmp(digits, tag, 2) == 0 && parse_u64(digits + 2, n);
}

/* Records the entity an upsert item (from a DLQ record's original payload) was about. */
static void absorb_item(vctx_t *x, int tenant, int kind, const cJSON *item)
{
    const tenant_t *t = &x->g->gen.t[tenant];
    uint64_t n;
    bool ok;
    if (kind == K_CONTACT || kind == K_HCONTACT)
        ok = contact_num(item, t, KIND[kind].tag, &n);
    else
        ok = entity_num(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(item, KIND[kind].column)), t->idp,
                        KIND[kind].tag, &n);
    if (ok)
        u64set_add(&x->dlq_ent[tenant][kind], n);
}

/* One DLQ record (from the stream or an exhausted_events row): which of our events and entities it accounts for. */
static void absorb_record(vctx_t *x, int tenant, const char *data, size_t len)
{
    cJSON *r = cJSON_ParseWithLength(data, len);
    if (!r)
        return;
    uint64_t seq = seq_of(x->g->o.prefix, x->g->prefix_len,
                          cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(r, "source_message_id")));
    const char *subject = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(r, "source_subject"));
    const cJSON *orig = cJSON_GetObjectItemCaseSensitive(r, "original_payload");
    bool item = cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(r, "item_index"));
    if (!seq || !subject)
        goto cleanup;
    u64set_add(&x->dlq_seq, seq);
    if (!cJSON_IsObject(orig))
        goto cleanup;
    for (int s = 0; s < NSUBJ; s++) {
        size_t bl = strlen(SUBJ[s].base);
        if (strncmp(subject, SUBJ[s].base, bl) != 0 || subject[bl] != '.')
            continue;
        static const int kind_of[NSUBJ] = {K_CHAT, K_NONE,  K_MESSAGE, K_NONE,     K_CONTACT,
                                           K_NONE, K_AGENT, K_HCHAT,   K_HMESSAGE, K_HCONTACT};
        int kind = kind_of[s];
        if (kind == K_NONE)
            break;
        if (!SUBJ[s].history || item) {
            absorb_item(x, tenant, kind, orig);
        } else { /* a whole batch went to the DLQ */
            const cJSON *it;
            cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(orig, SUBJ[s].items_key))
                absorb_item(x, tenant, kind, it);
        }
        break;
    }
cleanup:
    cJSON_Delete(r);
}

/* Reads every DLQ record of the tenant with an ordered (ephemeral, unacked) consumer: the service's durable
 * v1_dlq_worker_<co> is never touched. */
static int read_dlq(vctx_t *x, int tenant)
{
    lg_t *g = x->g;
    char subject[128];
    snprintf(subject, sizeof subject, "v1.dlq.%s", g->o.companies[tenant]);
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = 10000;
    jo.Stream.Info.SubjectsFilter = subject;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsSubscription *sub = NULL;
    int rc = -1;
    uint64_t want = 0, got = 0;
    natsStatus s = js_GetStreamInfo(&si, g->js, DLQ_STREAM, &jo, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
        rc = 0; /* no DLQ stream: nothing was ever dead-lettered */
        goto cleanup;
    }
    if (s != NATS_OK) {
        snprintf(x->v->error, sizeof x->v->error, "stream info %s: %s", DLQ_STREAM, natsStatus_GetText(s));
        goto cleanup;
    }
    for (int i = 0; si->State.Subjects && i < si->State.Subjects->Count; i++)
        want += si->State.Subjects->List[i].Msgs;
    if (want == 0) {
        rc = 0;
        goto cleanup;
    }
    jsOptions_Init(&jo);
    jo.Wait = 10000;
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = DLQ_STREAM;
    so.Ordered = true;
    so.Config.DeliverPolicy = js_DeliverAll;
    s = js_SubscribeSync(&sub, g->js, subject, &jo, &so, &jerr);
    if (s != NATS_OK) {
        snprintf(x->v->error, sizeof x->v->error, "ordered consumer on %s: %s", subject, natsStatus_GetText(s));
        goto cleanup;
    }
    natsSubscription_SetPendingLimits(sub, -1, -1);
    while (got < want) {
        natsMsg *m = NULL;
        s = natsSubscription_NextMsg(&m, sub, 10000);
        if (s != NATS_OK) {
            snprintf(x->v->error, sizeof x->v->error, "reading %s: %s after %" PRIu64 " of %" PRIu64 " records",
                     subject, natsStatus_GetText(s), got, want);
            goto cleanup;
        }
        absorb_record(x, tenant, natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m));
        got++;
        jsMsgMetaData *meta = NULL;
        bool last = natsMsg_GetMetaData(&meta, m) == NATS_OK && meta->NumPending == 0;
        jsMsgMetaData_Destroy(meta);
        natsMsg_Destroy(m);
        if (last)
            break;
    }
    x->v->dlq_records += got;
    rc = 0;
cleanup:
    if (sub) {
        natsSubscription_Unsubscribe(sub);
        natsSubscription_Destroy(sub);
    }
    jsStreamInfo_Destroy(si);
    return rc;
}

static char *schema_ident(PGconn *pg, const char *co)
{
    char name[64];
    size_t i = 0;
    for (; co[i] && i < 48; i++)
        name[i] = (char)tolower((unsigned char)co[i]);
    name[i] = '\0';
    char full[80];
    snprintf(full, sizeof full, "daisi_%s", name);
    return PQescapeIdentifier(pg, full, strlen(full));
}

/* exhausted_events rows of ours, one query per tenant; their dlq_payload is the DLQ record. */
static int read_exhausted(vctx_t *x, int tenant, const char *schema)
{
    char sql[512], plen[16];
    snprintf(sql, sizeof sql,
             "SELECT dlq_payload::text FROM %s.exhausted_events"
             " WHERE left(dlq_payload->>'source_message_id', $2::int) = $1",
             schema);
    snprintf(plen, sizeof plen, "%zu", x->g->prefix_len + 1);
    char pfx[80];
    snprintf(pfx, sizeof pfx, "%s-", x->g->o.prefix);
    const char *params[2] = {pfx, plen};
    PGresult *r = PQexecParams(x->pg, sql, 2, NULL, params, NULL, NULL, 0);
    int rc = 0;
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        set_error(x->v, "exhausted_events", PQerrorMessage(x->pg));
        rc = -1;
    } else {
        for (int i = 0; i < PQntuples(r); i++)
            absorb_record(x, tenant, PQgetvalue(r, i, 0), (size_t)PQgetlength(r, i, 0));
    }
    PQclear(r);
    return rc;
}

/* Entity numbers of a kind whose publish failed: not expected anywhere. */
static void build_excluded(lg_t *g, int tenant, int kind, u64set_t *out)
{
    for (size_t i = 0; i < g->nfailed; i++)
        if (g->failed[i].tenant == tenant && g->failed[i].kind == kind)
            for (uint32_t j = 0; j < g->failed[i].count; j++)
                u64set_add(out, g->failed[i].n0 + j);
}

/* Anti-join per chunk of entity numbers: the database computes which of 0..made-1 are absent, in one statement per
 * VERIFY_CHUNK ids (no id list is shipped: the ids are generate_series + prefix). */
static int check_kind(vctx_t *x, int tenant, int kind, const char *schema)
{
    lg_t *g = x->g;
    const tenant_t *t = &g->gen.t[tenant];
    uint64_t made = t->made[kind];
    vcount_t *vc = &x->v->ent[tenant][kind];
    u64set_t excluded = {0};
    int rc = 0;
    char sql[768];
    build_excluded(g, tenant, kind, &excluded);
    vc->published = made - excluded.n;
    if (KIND[kind].column)
        snprintf(sql, sizeof sql,
                 "SELECT n FROM generate_series($2::bigint, $3::bigint) n WHERE NOT EXISTS"
                 " (SELECT 1 FROM %s.%s e WHERE e.%s = $1::text || n::text)",
                 schema, KIND[kind].table, KIND[kind].column);
    else
        snprintf(sql, sizeof sql,
                 "SELECT n FROM generate_series($2::bigint, $3::bigint) n WHERE NOT EXISTS"
                 " (SELECT 1 FROM %s.contacts e WHERE e.agent_id = $1::text || 'a' || (n %% %d)::text"
                 " AND e.phone_number = '%s' || lpad((n %% 10000000000)::text, 10, '0'))",
                 schema, AGENTS_PER_TENANT, KIND[kind].tag);
    char idp[200];
    snprintf(idp, sizeof idp, "%s%s", t->idp, KIND[kind].column ? KIND[kind].tag : "");
    uint64_t absent = 0;
    for (uint64_t lo = 0; lo < made && rc == 0; lo += VERIFY_CHUNK) {
        uint64_t hi = lo + VERIFY_CHUNK < made ? lo + VERIFY_CHUNK - 1 : made - 1;
        char slo[24], shi[24];
        snprintf(slo, sizeof slo, "%" PRIu64, lo);
        snprintf(shi, sizeof shi, "%" PRIu64, hi);
        const char *params[3] = {KIND[kind].column ? idp : t->idp, slo, shi};
        PGresult *r = PQexecParams(x->pg, sql, 3, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            char what[160];
            snprintf(what, sizeof what, "%s.%s", schema, KIND[kind].table);
            set_error(x->v, what, PQerrorMessage(x->pg));
            rc = -1;
        } else {
            for (int i = 0; i < PQntuples(r); i++) {
                uint64_t n = strtoull(PQgetvalue(r, i, 0), NULL, 10);
                if (u64set_has(&excluded, n))
                    continue;
                absent++;
                if (u64set_has(&x->dlq_ent[tenant][kind], n)) {
                    vc->in_dlq++;
                } else {
                    vc->missing++;
                    if (KIND[kind].column)
                        note_missing(x->v, "%s %s%s%" PRIu64, KIND[kind].name, t->idp, KIND[kind].tag, n);
                    else
                        note_missing(x->v, "%s (agent_id %sa%" PRIu64 ", phone %s%010" PRIu64 ")", KIND[kind].name,
                                     t->idp, n % AGENTS_PER_TENANT, KIND[kind].tag, (uint64_t)(n % 10000000000ULL));
                }
            }
        }
        PQclear(r);
    }
    vc->in_db = vc->published - absent;
    u64set_free(&excluded);
    return rc;
}

/* Poison events: each must have left a DLQ record (or an exhausted_events row) naming its Nats-Msg-Id. */
static void check_poison(vctx_t *x)
{
    lg_t *g = x->g;
    u64set_t excluded = {0};
    for (size_t i = 0; i < g->nfailed; i++)
        if (g->failed[i].kind == K_POISON)
            u64set_add(&excluded, g->failed[i].n0);
    for (size_t w = 0; w < g->poison_seqs.nw; w++) {
        for (uint64_t bits = g->poison_seqs.w[w]; bits; bits &= bits - 1) {
            uint64_t seq = (uint64_t)w * 64 + (uint64_t)__builtin_ctzll(bits);
            if (u64set_has(&excluded, seq))
                continue;
            x->v->poison.published++;
            if (u64set_has(&x->dlq_seq, seq)) {
                x->v->poison.in_dlq++;
            } else {
                x->v->poison.missing++;
                note_missing(x->v, "poison event %s-%" PRIu64, g->o.prefix, seq);
            }
        }
    }
    u64set_free(&excluded);
}

static bool verify_ok(const lg_t *g, const verify_t *v)
{
    if (!v->drained || v->error[0] || v->inconclusive || v->poison.missing)
        return false;
    for (int t = 0; t < g->o.ntenants; t++)
        for (int k = 0; k < NKIND; k++)
            if (v->ent[t][k].missing)
                return false;
    return true;
}

static void run_verify(lg_t *g, verify_t *v)
{
    vctx_t x = {.g = g, .v = v};
    v->ran = true;
    v->inconclusive = g->failed_overflow;
    if (!g->o.quiet)
        fprintf(stderr, "mes-loadgen: verify: waiting up to %.0fs for the service to drain\n", g->o.verify_timeout_s);
    wait_drained(&x); /* checked even when not drained: the report then shows what is missing so far */
    x.pg = PQconnectdb(g->o.verify_dsn);
    if (PQstatus(x.pg) != CONNECTION_OK) {
        set_error(v, "cannot connect to PostgreSQL", PQerrorMessage(x.pg));
        goto cleanup;
    }
    for (int t = 0; t < g->o.ntenants && !v->error[0]; t++) {
        char *schema = schema_ident(x.pg, g->o.companies[t]);
        if (!schema) {
            set_error(v, "cannot quote the schema name", PQerrorMessage(x.pg));
            break;
        }
        if (read_dlq(&x, t) == 0 && read_exhausted(&x, t, schema) == 0)
            for (int k = 0; k < NKIND && !v->error[0]; k++)
                check_kind(&x, t, k, schema);
        PQfreemem(schema);
    }
    if (!v->error[0])
        check_poison(&x);
cleanup:
    PQfinish(x.pg);
    u64set_free(&x.dlq_seq);
    for (int t = 0; t < MAX_TENANTS; t++)
        for (int k = 0; k < NKIND; k++)
            u64set_free(&x.dlq_ent[t][k]);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* Report.                                                                                                          */

static void report_text(lg_t *g, const verify_t *v, FILE *f)
{
    double el = (double)g->elapsed_ns / 1e9;
    uint64_t att = total_of(g, 0), pub = total_of(g, 1), err = total_of(g, 2);
    uint64_t dfull = atomic_load(&g->deficit_full), dbehind = atomic_load(&g->deficit_behind);
    fprintf(f, "mes-loadgen report: prefix %s, seed %" PRIu64 "%s\n", g->o.prefix, g->o.seed,
            g->o.dry_run ? " (dry run)" : "");
    char target[32];
    if (g->o.rate > 0)
        snprintf(target, sizeof target, "%.0f/s", g->o.rate);
    else
        snprintf(target, sizeof target, "max");
    fprintf(f,
            "  elapsed %.3fs, target rate %s, achieved %.1f events/s, deficit %" PRIu64 " (in-flight full %" PRIu64
            ", behind schedule %" PRIu64 ")\n",
            el, target, el > 0 ? (double)att / el : 0.0, dfull + dbehind, dfull, dbehind);
    fprintf(f, "  events: attempted %" PRIu64 ", published %" PRIu64 ", errors %" PRIu64 ", duplicates %" PRIu64 "\n",
            att, pub, err, atomic_load(&g->duplicates));
    fprintf(f, "  poison:");
    for (int p = 1; p < NPOISON; p++)
        fprintf(f, " %s %" PRIu64 "%s", POISON_NAME[p], atomic_load(&g->poison[p]), p + 1 < NPOISON ? "," : "\n");
    fprintf(f, "  PubAck latency: p50 %.3f ms, p95 %.3f ms, p99 %.3f ms, max %.3f ms\n",
            lat_quantile(&g->lat, 0.50) * 1e3, lat_quantile(&g->lat, 0.95) * 1e3, lat_quantile(&g->lat, 0.99) * 1e3,
            (double)atomic_load(&g->lat.max_ns) / 1e6);
    fprintf(f, "  errors by class:");
    for (int e = 0; e < NERR; e++)
        fprintf(f, " %s %" PRIu64 "%s", ERR_NAME[e], atomic_load(&g->err_class[e]), e + 1 < NERR ? "," : "\n");
    for (int e = 0; e < NERR; e++)
        if (g->last_err[e][0])
            fprintf(f, "    last %s: %s\n", ERR_NAME[e], g->last_err[e]);
    fprintf(f, "  %-22s %-16s %10s %10s %8s\n", "subject", "company_id", "attempted", "published", "errors");
    for (int s = 0; s < NSUBJ; s++)
        for (int t = 0; t < g->o.ntenants; t++) {
            cell_t *c = &g->cells[s][t];
            if (!atomic_load(&c->attempted))
                continue;
            fprintf(f, "  %-22s %-16s %10" PRIu64 " %10" PRIu64 " %8" PRIu64 "\n", SUBJ[s].base, g->o.companies[t],
                    atomic_load(&c->attempted), atomic_load(&c->published), atomic_load(&c->errors));
        }
    if (!v->ran)
        return;
    if (v->drained)
        fprintf(f, "verify: service drained after %.1fs; %" PRIu64 " DLQ records read\n", v->drain_s, v->dlq_records);
    else
        fprintf(f, "verify: service NOT drained within %.0fs (%s)\n", g->o.verify_timeout_s, v->not_drained);
    if (v->error[0]) {
        fprintf(f, "verify: error: %s\nverify: FAILED\n", v->error);
        return;
    }
    if (v->inconclusive)
        fprintf(f, "verify: inconclusive: more than %d failed publishes to account for\n", FAILED_CAP);
    fprintf(f, "  %-18s %-16s %10s %10s %8s %8s\n", "entity", "company_id", "published", "in_db", "in_dlq", "missing");
    for (int t = 0; t < g->o.ntenants; t++)
        for (int k = 0; k < NKIND; k++) {
            const vcount_t *c = &v->ent[t][k];
            fprintf(f, "  %-18s %-16s %10" PRIu64 " %10" PRIu64 " %8" PRIu64 " %8" PRIu64 "\n", KIND[k].name,
                    g->o.companies[t], c->published, c->in_db, c->in_dlq, c->missing);
        }
    fprintf(f, "  %-18s %-16s %10" PRIu64 " %10s %8" PRIu64 " %8" PRIu64 "\n", "poison_events", "*",
            v->poison.published, "-", v->poison.in_dlq, v->poison.missing);
    for (int i = 0; i < v->nmissing_ids; i++)
        fprintf(f, "  missing: %s\n", v->missing_ids[i]);
    fprintf(f, "verify: %s\n", verify_ok(g, v) ? "OK, nothing lost" : "FAILED");
}

static void json_vcount(sbuf_t *b, const vcount_t *c)
{
    sb_printf(b, "\"published\":%" PRIu64 ",\"in_db\":%" PRIu64 ",\"in_dlq\":%" PRIu64 ",\"missing\":%" PRIu64,
              c->published, c->in_db, c->in_dlq, c->missing);
}

static void report_json(lg_t *g, const verify_t *v, FILE *f)
{
    sbuf_t b = {0};
    double el = (double)g->elapsed_ns / 1e9;
    uint64_t att = total_of(g, 0);
    bool first;
    sb_puts(&b, "{\"tool\":\"mes-loadgen\",\"prefix\":");
    sb_json_str(&b, g->o.prefix);
    sb_printf(&b,
              ",\"seed\":%" PRIu64 ",\"dry_run\":%s,\"elapsed_seconds\":%.6f,\"target_rate\":%g,\"achieved_rate\":%.3f"
              ",\"attempted\":%" PRIu64 ",\"published\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"duplicates\":%" PRIu64
              ",\"deficit\":%" PRIu64 ",\"deficit_inflight_full\":%" PRIu64 ",\"deficit_behind_schedule\":%" PRIu64,
              g->o.seed, g->o.dry_run ? "true" : "false", el, g->o.rate, el > 0 ? (double)att / el : 0.0, att,
              total_of(g, 1), total_of(g, 2), atomic_load(&g->duplicates),
              atomic_load(&g->deficit_full) + atomic_load(&g->deficit_behind), atomic_load(&g->deficit_full),
              atomic_load(&g->deficit_behind));
    sb_printf(&b, ",\"latency_seconds\":{\"p50\":%.6f,\"p95\":%.6f,\"p99\":%.6f,\"max\":%.6f}",
              lat_quantile(&g->lat, 0.5), lat_quantile(&g->lat, 0.95), lat_quantile(&g->lat, 0.99),
              (double)atomic_load(&g->lat.max_ns) / 1e9);
    sb_puts(&b, ",\"errors_by_class\":{");
    for (int e = 0; e < NERR; e++)
        sb_printf(&b, "%s\"%s\":%" PRIu64, e ? "," : "", ERR_NAME[e], atomic_load(&g->err_class[e]));
    sb_puts(&b, "},\"last_errors\":{");
    first = true;
    for (int e = 0; e < NERR; e++)
        if (g->last_err[e][0]) {
            sb_printf(&b, "%s\"%s\":", first ? "" : ",", ERR_NAME[e]);
            sb_json_str(&b, g->last_err[e]);
            first = false;
        }
    sb_puts(&b, "},\"poison\":{");
    for (int p = 1; p < NPOISON; p++)
        sb_printf(&b, "%s\"%s\":%" PRIu64, p > 1 ? "," : "", POISON_NAME[p], atomic_load(&g->poison[p]));
    sb_puts(&b, "},\"subjects\":[");
    first = true;
    for (int s = 0; s < NSUBJ; s++)
        for (int t = 0; t < g->o.ntenants; t++) {
            cell_t *c = &g->cells[s][t];
            if (!atomic_load(&c->attempted))
                continue;
            sb_printf(&b,
                      "%s{\"subject\":\"%s\",\"company_id\":\"%s\",\"attempted\":%" PRIu64 ",\"published\":%" PRIu64
                      ",\"errors\":%" PRIu64 "}",
                      first ? "" : ",", SUBJ[s].base, g->o.companies[t], atomic_load(&c->attempted),
                      atomic_load(&c->published), atomic_load(&c->errors));
            first = false;
        }
    sb_puts(&b, "]");
    if (v->ran) {
        sb_printf(&b, ",\"verify\":{\"ok\":%s,\"drained\":%s,\"drain_seconds\":%.3f,\"dlq_records\":%" PRIu64,
                  verify_ok(g, v) ? "true" : "false", v->drained ? "true" : "false", v->drain_s, v->dlq_records);
        if (!v->drained) {
            sb_puts(&b, ",\"not_drained\":");
            sb_json_str(&b, v->not_drained);
        }
        if (v->error[0]) {
            sb_puts(&b, ",\"error\":");
            sb_json_str(&b, v->error);
        }
        sb_printf(&b, ",\"inconclusive\":%s", v->inconclusive ? "true" : "false");
    }
    if (v->ran && !v->error[0]) { /* counts exist only when the checks ran */
        sb_puts(&b, ",\"entities\":[");
        first = true;
        for (int t = 0; t < g->o.ntenants; t++)
            for (int k = 0; k < NKIND; k++) {
                sb_printf(&b, "%s{\"entity\":\"%s\",\"company_id\":\"%s\",", first ? "" : ",", KIND[k].name,
                          g->o.companies[t]);
                json_vcount(&b, &v->ent[t][k]);
                sb_puts(&b, "}");
                first = false;
            }
        sb_puts(&b, "],\"poison_events\":{");
        json_vcount(&b, &v->poison);
        sb_puts(&b, "},\"missing_ids\":[");
        for (int i = 0; i < v->nmissing_ids; i++) {
            if (i)
                sb_puts(&b, ",");
            sb_json_str(&b, v->missing_ids[i]);
        }
        sb_puts(&b, "]");
    }
    if (v->ran)
        sb_puts(&b, "}");
    sb_puts(&b, "}\n");
    fputs(b.p, f);
    fflush(f);
    sb_free(&b);
}

/* ---------------------------------------------------------------------------------------------------------------- */

static int connect_nats(lg_t *g)
{
    natsOptions *opts = NULL;
    jsOptions jo;
    natsStatus s = natsOptions_Create(&opts);
    if (s == NATS_OK)
        s = natsOptions_SetURL(opts, g->o.url);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(opts, 120);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(opts, 500);
    /* A larger socket buffer lets the flusher coalesce more publishes per write at high rates. */
    if (s == NATS_OK)
        s = natsOptions_SetIOBufSize(opts, 256 * 1024);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectBufSize(opts, 64 * 1024 * 1024);
    if (s == NATS_OK)
        s = natsConnection_Connect(&g->nc, opts);
    if (s == NATS_OK) {
        jsOptions_Init(&jo);
        jo.Wait = 10000;
        jo.PublishAsync.MaxPending = g->o.concurrency;
        jo.PublishAsync.AckHandler = on_ack;
        jo.PublishAsync.AckHandlerClosure = g;
        jo.PublishAsync.StallWait = 1000;
        s = natsConnection_JetStream(&g->js, g->nc, &jo);
    }
    natsOptions_Destroy(opts);
    if (s != NATS_OK) {
        fprintf(stderr, "mes-loadgen: cannot connect to %s: %s\n", g->o.url, natsStatus_GetText(s));
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static lg_t lg; /* large (cells, histogram) and shared with callbacks: static storage */
    lg_t *g = &lg;
    verify_t v = {0};
    struct MHD_Daemon *httpd = NULL;
    int rc = parse_args(&g->o, argc, argv);
    if (rc)
        return rc == -1 ? 0 : rc;

    gen_init(&g->gen, &g->o);
    g->prefix_len = strlen(g->o.prefix);
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    pthread_mutex_init(&g->fail_mu, NULL);
    /* 4x concurrency slots: a slot is reused only after 4*concurrency newer sends, so a busy slot (one stuck
     * publish) only pauses sending instead of needing a map. */
    uint64_t nslots = 1;
    while (nslots < (uint64_t)g->o.concurrency * 4)
        nslots <<= 1;
    g->slots = xcalloc(nslots, sizeof *g->slots);
    g->slot_mask = nslots - 1;
    g->low_water = g->o.concurrency - (g->o.concurrency + 7) / 8;

    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    rc = 1;
    if (g->o.metrics_port) {
        /* Validated by parse_opts: one of the two families parses. */
        const char *addr = g->o.metrics_address ? g->o.metrics_address : "0.0.0.0";
        struct sockaddr_in sa4 = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g->o.metrics_port)};
        struct sockaddr_in6 sa6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)g->o.metrics_port)};
        struct sockaddr *bind_sa = (struct sockaddr *)&sa4;
        unsigned family_flag = 0;
        if (inet_pton(AF_INET, addr, &sa4.sin_addr) != 1) {
            inet_pton(AF_INET6, addr, &sa6.sin6_addr);
            bind_sa = (struct sockaddr *)&sa6;
            family_flag = MHD_USE_IPv6;
        }
        httpd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG | family_flag,
                                 (uint16_t)g->o.metrics_port, NULL, NULL, on_http, g, MHD_OPTION_SOCK_ADDR, bind_sa,
                                 MHD_OPTION_CONNECTION_TIMEOUT, 10U, MHD_OPTION_END);
        if (!httpd) {
            fprintf(stderr, "mes-loadgen: cannot serve /metrics on %s port %d\n", addr, g->o.metrics_port);
            goto cleanup;
        }
    }
    if (!g->o.dry_run && connect_nats(g) != 0)
        goto cleanup;
    if (!g->o.quiet)
        fprintf(stderr, "mes-loadgen: %s %s, prefix %s, seed %" PRIu64 ", %d tenant(s)\n",
                g->o.dry_run ? "dry run" : "publishing to", g->o.dry_run ? "to stdout" : g->o.url, g->o.prefix,
                g->o.seed, g->o.ntenants);

    run_loop(g);
    drain_acks(g);
    if (g->o.dry_run)
        fflush(stdout);
    if (g->o.verify_dsn && !g_stop)
        run_verify(g, &v);

    FILE *out = g->o.dry_run ? stderr : stdout;
    if (g->o.json)
        report_json(g, &v, out);
    else
        report_text(g, &v, out);
    /* An interrupted run is not a failure by itself, but a requested verify that could not run is. */
    rc = total_of(g, 2) > 0 || (g->o.verify_dsn && !(v.ran && verify_ok(g, &v))) ? 1 : 0;

cleanup:
    if (httpd)
        MHD_stop_daemon(httpd);
    jsCtx_Destroy(g->js);
    natsConnection_Destroy(g->nc);
    nats_Close();
    for (int i = 0; i < v.nmissing_ids; i++)
        free(v.missing_ids[i]);
    free(g->slots);
    free(g->failed);
    free(g->poison_seqs.w);
    return rc;
}
