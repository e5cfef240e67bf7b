/* config.c - the configuration as one table of keys: defaults < YAML file < environment, validated, logged masked. */
#include "config.h"

#include "event.h"
#include "log.h"
#include "secrets.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <yaml.h>

typedef enum {
    T_STR,  /* char *, bounds are the length */
    T_INT,  /* int */
    T_BOOL, /* bool: true/false/1/0/yes/no */
    T_DUR,  /* int64_t milliseconds from "500ms", "2s", "1m", "1h" (or "1m30s"); bounds in ms */
    T_DAYS, /* int, whole days */
    T_MIN,  /* int64_t milliseconds from whole minutes; bounds in minutes */
} ktype_t;

/* Rules on top of the type; allowed() words each one for the error message. */
typedef enum { C_TEXT, C_LEVEL, C_IP, C_NAME, C_SUBJECT, C_RT_BASES, C_HIST_BASES, C_COMPANY, C_URLS } kcheck_t;

#define F_SECRET 1u   /* may hold a password: shown only through config_mask_secret */
#define F_REQUIRED 2u /* no default: unset or empty is an error */
#define F_OPTIONAL 4u /* no default: unset or empty leaves the field to an earlier key with the same offset */
#define F_LIST 8u     /* the YAML file may give a sequence, joined with ',' */
#define F_WHOLE 16u   /* the whole value is a secret (a password, a token): shown as **** */
#define F_FILE 32u    /* names a file that must exist and be readable at startup */
#define F_ALIAS 64u   /* an old name of the key before it (same field): accepted, wins when set, never dumped */

typedef struct {
    const char *name; /* dotted YAML path; the env name is derived from it */
    ktype_t type;
    const char *def; /* default as text, parsed like any other value; NULL with F_REQUIRED/F_OPTIONAL */
    long long min, max;
    size_t off; /* field in config_t */
    unsigned flags;
    kcheck_t check;
    const char *short_env; /* the reference's short env name; it wins over the long one when both are set */
} cfkey_t;

#define OFF(f) offsetof(config_t, f)
#define MS_S 1000LL
#define MS_M (60 * MS_S)
#define MS_H (60 * MS_M)
#define MS_D (24 * MS_H)

/*
 * Every key the service understands. Order matters in one place: keys sharing a field are applied top to bottom,
 * so nats.dlqBaseDelay (optional, a duration) comes after nats.dlqBaseDelayMinutes and overrides it when set.
 */
static const cfkey_t keys[] = {
    {"logLevel", T_STR, "info", 1, 16, OFF(log_level), 0, C_LEVEL, "LOG_LEVEL"},
    {"server.address", T_STR, "0.0.0.0", 1, 64, OFF(server_address), 0, C_IP},
    {"server.port", T_INT, "8080", 1, 65535, OFF(server_port), 0, C_TEXT, "SERVER_PORT"},
    {"server.maxConnections", T_INT, "64", 1, 10000, OFF(http_max_connections)},
    {"server.connectionTimeout", T_DUR, "10s", MS_S, MS_H, OFF(http_connection_timeout_ms)},

    {"nats.url", T_STR, "nats://127.0.0.1:4222", 1, 4096, OFF(nats_url), F_SECRET, C_URLS, "NATS_URL"},
    {"nats.streamReplicas", T_INT, "1", 1, 5, OFF(nats_stream_replicas)},
    {"nats.tls.caFile", T_STR, NULL, 1, 4096, OFF(nats_tls_ca_file), F_OPTIONAL | F_FILE},
    {"nats.tls.certFile", T_STR, NULL, 1, 4096, OFF(nats_tls_cert_file), F_OPTIONAL | F_FILE},
    {"nats.tls.keyFile", T_STR, NULL, 1, 4096, OFF(nats_tls_key_file), F_OPTIONAL | F_FILE},
    {"nats.user", T_STR, NULL, 1, 1024, OFF(nats_user), F_OPTIONAL},
    {"nats.password", T_STR, NULL, 1, 1024, OFF(nats_password), F_OPTIONAL | F_SECRET | F_WHOLE},
    {"nats.token", T_STR, NULL, 1, 4096, OFF(nats_token), F_OPTIONAL | F_SECRET | F_WHOLE},
    {"nats.nkeySeedFile", T_STR, NULL, 1, 4096, OFF(nats_nkey_seed_file), F_OPTIONAL | F_FILE},
    {"nats.credsFile", T_STR, NULL, 1, 4096, OFF(nats_creds_file), F_OPTIONAL | F_FILE},

    {"nats.realtime.stream", T_STR, "wa_events_stream", 1, 255, OFF(realtime.stream), 0, C_NAME},
    {"nats.realtime.consumer", T_STR, "wa_listener_", 1, 128, OFF(realtime.consumer), 0, C_NAME},
    {"nats.realtime.group", T_STR, "wa_listener_group", 1, 255, OFF(realtime.group), 0, C_NAME},
    {"nats.realtime.subjectList", T_STR, "", 0, 4096, OFF(realtime.subject_list), F_LIST, C_RT_BASES},
    {"nats.realtime.maxAge", T_DAYS, "30", 0, 36500, OFF(realtime.max_age_days)},
    {"nats.realtime.maxDeliver", T_INT, "5", 1, 1000, OFF(realtime.max_deliver)},
    {"nats.realtime.nakBaseDelay", T_DUR, "1s", 1, MS_H, OFF(realtime.nak_base_delay_ms)},
    {"nats.realtime.nakMaxDelay", T_DUR, "30s", 1, MS_D, OFF(realtime.nak_max_delay_ms)},
    {"nats.realtime.ackWait", T_DUR, "30s", MS_S, MS_H, OFF(realtime.ack_wait_ms)},
    {"nats.realtime.maxAckPending", T_INT, "1000", 1, 1000000, OFF(realtime.max_ack_pending)},
    {"nats.realtime.batchSize", T_INT, "256", 1, 4096, OFF(realtime.batch_size)},
    {"nats.realtime.fetchWait", T_DUR, "500ms", 1, MS_M, OFF(realtime.fetch_wait_ms)},

    {"nats.historical.stream", T_STR, "wa_history_events_stream", 1, 255, OFF(historical.stream), 0, C_NAME},
    {"nats.historical.consumer", T_STR, "wa_history_listener_", 1, 128, OFF(historical.consumer), 0, C_NAME},
    {"nats.historical.group", T_STR, "wa_history_listener_group", 1, 255, OFF(historical.group), 0, C_NAME},
    {"nats.historical.subjectList", T_STR, "", 0, 4096, OFF(historical.subject_list), F_LIST, C_HIST_BASES},
    {"nats.historical.maxAge", T_DAYS, "30", 0, 36500, OFF(historical.max_age_days)},
    {"nats.historical.maxDeliver", T_INT, "3", 1, 1000, OFF(historical.max_deliver)},
    {"nats.historical.nakBaseDelay", T_DUR, "2s", 1, MS_H, OFF(historical.nak_base_delay_ms)},
    {"nats.historical.nakMaxDelay", T_DUR, "60s", 1, MS_D, OFF(historical.nak_max_delay_ms)},
    {"nats.historical.ackWait", T_DUR, "60s", MS_S, MS_H, OFF(historical.ack_wait_ms)},
    {"nats.historical.maxAckPending", T_INT, "500", 1, 1000000, OFF(historical.max_ack_pending)},
    {"nats.historical.batchSize", T_INT, "64", 1, 4096, OFF(historical.batch_size)},
    {"nats.historical.fetchWait", T_DUR, "500ms", 1, MS_M, OFF(historical.fetch_wait_ms)},

    {"nats.dlqStream", T_STR, "dlq_stream", 1, 255, OFF(dlq_stream), 0, C_NAME},
    {"nats.dlqSubject", T_STR, "v1.dlq", 1, 200, OFF(dlq_subject), 0, C_SUBJECT},
    {"nats.dlqWorkers", T_INT, "8", 1, 256, OFF(dlq_workers)},
    {"nats.dlqQueueSize", T_INT, "100", 1, 100000, OFF(dlq_queue_size)},
    {"nats.dlqMaxRetries", T_INT, "5", 1, 1000, OFF(dlq_max_retries)},
    {"nats.dlqBaseDelayMinutes", T_MIN, "1", 1, 1440, OFF(dlq_base_delay_ms)},
    {"nats.dlqBaseDelay", T_DUR, NULL, 1, MS_D, OFF(dlq_base_delay_ms), F_OPTIONAL},
    {"nats.dlqMaxDelayMinutes", T_MIN, "15", 1, 1440, OFF(dlq_max_delay_ms)},
    {"nats.dlqMaxDelay", T_DUR, NULL, 1, MS_D, OFF(dlq_max_delay_ms), F_OPTIONAL},
    {"nats.dlqMaxAgeDays", T_DAYS, "7", 0, 36500, OFF(dlq_max_age_days)},
    {"nats.dlqMaxDeliver", T_INT, "10", 1, 1000, OFF(dlq_max_deliver)},
    {"nats.dlqAckWait", T_DUR, "30s", MS_S, MS_H, OFF(dlq_ack_wait_ms)},
    {"nats.dlqMaxAckPending", T_INT, "1000", 1, 1000000, OFF(dlq_max_ack_pending)},

    {"database.postgresDSN", T_STR, "host=127.0.0.1 port=5432 user=postgres dbname=postgres", 1, 4096,
     OFF(postgres_dsn), F_SECRET, C_TEXT, "POSTGRES_DSN"},
    {"database.postgresAutoMigrate", T_BOOL, "true", 0, 1, OFF(postgres_auto_migrate)},
    {"database.statementTimeout", T_DUR, "30s", 0, MS_D, OFF(statement_timeout_ms)}, /* 0 = PostgreSQL's "off" */
    {"database.lockTimeout", T_DUR, "5s", 0, MS_D, OFF(lock_timeout_ms)},
    /* Every PostgreSQL session of the process: writers, DLQ workers, maintenance, startup (db.c enforces it). */
    {"database.maxConnections", T_INT, "4", 2, 1000, OFF(db_max_connections)},
    {"database.poolSize", T_INT, NULL, 2, 1000, OFF(db_max_connections), F_OPTIONAL | F_ALIAS},
    {"database.writers", T_INT, "0", 0, 999, OFF(db_writers)}, /* 0: min(2, maxConnections - 1) */
    {"database.partitionCheckInterval", T_DUR, "1h", MS_S, 7 * MS_D, OFF(partition_check_interval_ms)},

    {"company.id", T_STR, NULL, 1, 48, OFF(company_id), F_REQUIRED, C_COMPANY, "COMPANY_ID"},

    {"metrics.enabled", T_BOOL, "true", 0, 1, OFF(metrics_enabled)},
    {"metrics.maxAgentLabels", T_INT, "1000", 1, 1000000, OFF(metrics_max_agent_labels)},
    {"metrics.jidLabel", T_BOOL, "false", 0, 1, OFF(metrics_jid_label)},

    {"shutdown.timeout", T_DUR, "20s", MS_S, 10 * MS_M, OFF(shutdown_timeout_ms)},
    {"startup.timeout", T_DUR, "60s", MS_S, MS_H, OFF(startup_timeout_ms)},
};

#define NKEYS (sizeof keys / sizeof keys[0])

/* Pairs that must hold lo <= hi after every key is applied (values read from the fields, so effective ones). */
static const struct {
    const char *lo, *hi;
    int factor; /* lo * factor <= hi; 0 means 1 */
} ordered[] = {
    {"nats.realtime.nakBaseDelay", "nats.realtime.nakMaxDelay"},
    {"nats.historical.nakBaseDelay", "nats.historical.nakMaxDelay"},
    {"nats.dlqBaseDelayMinutes", "nats.dlqMaxDelayMinutes"},
    /* A retry count the DLQ consumer can never reach would make exhaustion unreachable. */
    {"nats.dlqMaxRetries", "nats.dlqMaxDeliver"},
    /* A lane holds up to two batches (the one committing and the prefetched next one): both must fit in max ack
     * pending, or the prefetch waits out its whole expiry. Replicas share the budget too (see README). */
    {"nats.realtime.batchSize", "nats.realtime.maxAckPending", 2},
    {"nats.historical.batchSize", "nats.historical.maxAckPending", 2},
};

/* Workers of the reference's in-memory onboarding pool; onboarding now runs inside the message transaction. */
#define IGNORED_PREFIX "workerPools"
#define MAX_DEPTH 8
#define MAX_PATH 256

/* Where one key's text came from. */
typedef struct {
    const char *text; /* NULL = not given */
    char *owned;      /* text copied out of the YAML parser */
    const char *env;  /* environment variable that gave it */
    int line;         /* line in the YAML file, 0 if not from the file */
} raw_t;

typedef struct {
    raw_t raw[NKEYS];
    char env[NKEYS][64]; /* long env name of each key */
    const char *file;    /* YAML file being read, NULL if none */
    char *err;
    size_t errlen;
} load_t;

static int fail(load_t *ld, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(load_t *ld, const char *fmt, ...)
{
    va_list ap;
    int n = snprintf(ld->err, ld->errlen, "invalid configuration: ");

    if (n > 0 && (size_t)n < ld->errlen) {
        va_start(ap, fmt);
        vsnprintf(ld->err + n, ld->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return CONFIG_EXIT_BAD;
}

static void env_name(const cfkey_t *k, char *out, size_t len)
{
    size_t i = 0;
    for (; k->name[i] && i + 1 < len; i++)
        out[i] = k->name[i] == '.' ? '_' : (char)toupper((unsigned char)k->name[i]);
    out[i] = '\0';
}

/* YAML keys match case-insensitively, as the reference's config loader (viper) lower-cases them. */
static int key_index(const char *name)
{
    for (size_t i = 0; i < NKEYS; i++) {
        if (strcasecmp(keys[i].name, name) == 0)
            return (int)i;
    }
    return -1;
}

/* A value fit for a one-line message: secrets masked, control characters replaced, long text cut. */
static void show(const cfkey_t *k, const char *s, char *out, size_t len)
{
    char masked[300];

    if (k->flags & F_WHOLE) {
        s = *s ? "****" : "";
    } else if (k->flags & F_SECRET) {
        config_mask_secret(s, masked, sizeof masked);
        s = masked;
    }
    size_t i = 0;
    for (; s[i] && i + 4 < len && i < 200; i++)
        out[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    if (s[i]) {
        memcpy(out + i, "...", 3);
        i += 3;
    }
    out[i] = '\0';
}

static void fmt_duration(long long ms, char *out, size_t len)
{
    static const struct {
        long long ms;
        const char *unit;
    } units[] = {{MS_H, "h"}, {MS_M, "m"}, {MS_S, "s"}, {1, "ms"}};
    size_t n = 0;

    if (ms <= 0) {
        snprintf(out, len, "0s");
        return;
    }
    out[0] = '\0';
    for (size_t u = 0; u < 4 && n < len; u++) {
        if (ms >= units[u].ms) {
            n += (size_t)snprintf(out + n, len - n, "%lld%s", ms / units[u].ms, units[u].unit);
            ms %= units[u].ms;
        }
    }
}

static void bases_of(lane_t lane, char *out, size_t len)
{
    size_t n = 0;
    out[0] = '\0';
    for (int et = 0; et < ET_BASE_COUNT && n < len; et++) {
        if (event_type_lane((event_type_t)et) == lane)
            n += (size_t)snprintf(out + n, len - n, "%s%s", n ? ", " : "", event_type_base((event_type_t)et));
    }
}

/* The "what is allowed" half of an error message. */
static void allowed(const cfkey_t *k, char *out, size_t len)
{
    char lo[32], hi[32], list[256];

    switch (k->type) {
    case T_INT: snprintf(out, len, "must be an integer between %lld and %lld", k->min, k->max); return;
    case T_DAYS: snprintf(out, len, "must be a whole number of days between %lld and %lld", k->min, k->max); return;
    case T_MIN: snprintf(out, len, "must be a whole number of minutes between %lld and %lld", k->min, k->max); return;
    case T_BOOL: snprintf(out, len, "must be one of true, false, 1, 0, yes, no"); return;
    case T_DUR:
        fmt_duration(k->min, lo, sizeof lo);
        fmt_duration(k->max, hi, sizeof hi);
        snprintf(out, len,
                 "must be a duration between %s and %s written as a number with a unit ms, s, m or h "
                 "(e.g. 500ms, 2s, 1m, 1h, 1m30s)",
                 lo, hi);
        return;
    case T_STR: break;
    }
    switch (k->check) {
    case C_LEVEL: snprintf(out, len, "must be one of debug, info, warn, error"); break;
    case C_IP: snprintf(out, len, "must be a numeric IPv4 or IPv6 address such as 0.0.0.0, 127.0.0.1 or ::"); break;
    case C_NAME:
        snprintf(out, len,
                 "must be 1 to %lld characters without spaces, control characters, '.', '*', '>', '/' or "
                 "'\\' (NATS name rules)",
                 k->max);
        break;
    case C_SUBJECT:
        snprintf(out, len,
                 "must be a NATS subject of 1 to %lld characters: non-empty tokens separated by '.', "
                 "without spaces, '*' or '>'",
                 k->max);
        break;
    case C_RT_BASES:
    case C_HIST_BASES:
        bases_of(k->check == C_RT_BASES ? LANE_REALTIME : LANE_HISTORICAL, list, sizeof list);
        snprintf(out, len, "must be empty (every subject of the lane) or a comma-separated list of: %s", list);
        break;
    case C_COMPANY:
        snprintf(out, len, "must match ^[A-Za-z0-9_]{1,48}$ (letters, digits and '_', 1 to 48 characters)");
        break;
    case C_TEXT: snprintf(out, len, "must be 1 to %lld characters without control characters", k->max); break;
    case C_URLS:
        snprintf(out, len,
                 "must be one NATS server URL or a comma-separated list of them (nats://host:port or "
                 "tls://host:port, 1 to %lld characters in all, no empty items, no spaces inside a URL)",
                 k->max);
        break;
    }
}

/* "(env X)" or "(file F line N, env X)": the env name shown is the one that gave the value, else the short one. */
static void origin(const load_t *ld, size_t i, char *out, size_t len)
{
    const raw_t *r = &ld->raw[i];
    const char *e = r->env ? r->env : keys[i].short_env ? keys[i].short_env : ld->env[i];
    if (r->line)
        snprintf(out, len, "file %s line %d, env %s", ld->file, r->line, e);
    else
        snprintf(out, len, "env %s", e);
}

static int bad_value(load_t *ld, size_t i, const char *why)
{
    char where[MAX_PATH * 2 + 64], shown[220], rule[512];

    origin(ld, i, where, sizeof where);
    show(&keys[i], ld->raw[i].text ? ld->raw[i].text : "", shown, sizeof shown);
    if (!why) {
        allowed(&keys[i], rule, sizeof rule);
        why = rule;
    }
    return fail(ld, "key %s (%s) = \"%s\": %s", keys[i].name, where, shown, why);
}

/* Decimal integer, optional sign, nothing else (strtoll alone would skip spaces and accept "12abc"). */
static int parse_int(const char *s, long long *out)
{
    char *end;

    if (!(isdigit((unsigned char)s[0]) || ((s[0] == '-' || s[0] == '+') && isdigit((unsigned char)s[1]))))
        return -1;
    errno = 0;
    *out = strtoll(s, &end, 10);
    return errno || *end ? -1 : 0;
}

/* Go-style durations restricted to ms, s, m, h: "500ms", "2s", "1.5s", "1m30s". A unit is required. */
static int parse_duration(const char *s, long long *out)
{
    static const struct {
        const char *unit;
        long long ms;
    } units[] = {{"ms", 1}, {"s", MS_S}, {"m", MS_M}, {"h", MS_H}};
    long long total = 0;

    if (!*s)
        return -1;
    while (*s) {
        long long whole = 0, frac = 0, scale = 1;
        int digits = 0;
        for (; isdigit((unsigned char)*s); s++, digits++) {
            if (whole > 1000000000LL) /* far beyond any bound; keeps the arithmetic below from overflowing */
                return -1;
            whole = whole * 10 + (*s - '0');
        }
        if (*s == '.') {
            for (s++; isdigit((unsigned char)*s); s++, digits++) {
                if (scale < 1000000000LL) { /* digits past nanoseconds cannot matter */
                    frac = frac * 10 + (*s - '0');
                    scale *= 10;
                }
            }
        }
        if (digits == 0)
            return -1;
        size_t u = 0;
        for (; u < 4; u++) {
            size_t n = strlen(units[u].unit);
            if (strncmp(s, units[u].unit, n) == 0 && !isalpha((unsigned char)s[n]))
                break;
        }
        if (u == 4)
            return -1;
        s += strlen(units[u].unit);
        total += whole * units[u].ms + frac * units[u].ms / scale;
        if (total > 1000000000000000LL)
            return -1;
    }
    *out = total;
    return 0;
}

static int parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "1", "yes"}, *const no[] = {"false", "0", "no"};
    for (int i = 0; i < 3; i++) {
        if (strcasecmp(s, yes[i]) == 0 || strcasecmp(s, no[i]) == 0) {
            *out = strcasecmp(s, yes[i]) == 0;
            return 0;
        }
    }
    return -1;
}

static bool has_control(const char *s)
{
    for (; *s; s++) {
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return true;
    }
    return false;
}

static bool valid_name(const char *s)
{
    return strpbrk(s, " .*>/\\") == NULL;
}

static bool valid_subject(const char *s)
{
    if (strpbrk(s, " *>") || s[0] == '.')
        return false;
    for (; *s; s++) {
        if (s[0] == '.' && (s[1] == '.' || s[1] == '\0'))
            return false;
    }
    return true;
}

/* Explicit ranges rather than isalnum(): the rule is ASCII whatever the locale. */
static bool valid_company(const char *s)
{
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return false;
    }
    return true;
}

/* Whether the normalised list "a,b" (bases_list) names item. */
static bool list_has(const char *list, const char *item)
{
    size_t n = strlen(item);
    for (const char *p = list; *p; p += *p == ',') {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && memcmp(p, item, n) == 0)
            return true;
        p += len;
    }
    return false;
}

/* A comma-separated list of server URLs: items trimmed of blanks, none empty, none with a blank inside. */
static bool valid_url_list(const char *s)
{
    for (;;) {
        size_t n = strcspn(s, ",");
        const char *a = s, *b = s + n;
        while (a < b && isspace((unsigned char)*a))
            a++;
        while (b > a && isspace((unsigned char)b[-1]))
            b--;
        if (a == b)
            return false;
        for (const char *c = a; c < b; c++)
            if (isspace((unsigned char)*c))
                return false;
        if (!s[n])
            return true;
        s += n + 1;
    }
}

/*
 * Normalises a subject list to "a,b" (items trimmed, duplicates dropped) for list_has and the startup dump.
 * Returns NULL (errno 0) if an item is not a base of the lane, NULL (errno ENOMEM) on allocation failure.
 */
static char *bases_list(const char *s, lane_t lane)
{
    char *out = calloc(1, strlen(s) + 1);
    bool seen[ET_COUNT] = {0};
    size_t n = 0;

    if (!out)
        return NULL;
    errno = 0;
    while (*s) {
        const char *end = strchr(s, ',');
        if (!end)
            end = s + strlen(s);
        const char *a = s, *b = end;
        while (a < b && isspace((unsigned char)*a))
            a++;
        while (b > a && isspace((unsigned char)b[-1]))
            b--;
        event_type_t et = event_type_from_base(a, (size_t)(b - a));
        if (et == ET_UNKNOWN || event_type_lane(et) != lane)
            goto cleanup;
        if (!seen[et])
            n += (size_t)sprintf(out + n, "%s%s", n ? "," : "", event_type_base(et));
        seen[et] = true;
        s = *end ? end + 1 : end;
    }
    return out;
cleanup:
    free(out);
    return NULL;
}

static int set_str(load_t *ld, config_t *cfg, size_t i, const char *s)
{
    const cfkey_t *k = &keys[i];
    char **field = (char **)((char *)cfg + k->off);
    char *v = NULL;
    log_level_t lvl = LOG_INFO;
    static const char *const level_names[] = {"debug", "info", "warn", "error"};
    unsigned char addr[sizeof(struct in6_addr)];
    size_t len = strlen(s);
    bool ok = (long long)len >= k->min && (long long)len <= k->max && !has_control(s);

    if (ok) {
        switch (k->check) {
        case C_LEVEL: ok = log_level_parse(s, &lvl) == 0; break;
        case C_IP: ok = inet_pton(AF_INET, s, addr) == 1 || inet_pton(AF_INET6, s, addr) == 1; break;
        case C_NAME: ok = valid_name(s); break;
        case C_SUBJECT: ok = valid_subject(s); break;
        case C_COMPANY: ok = valid_company(s); break;
        case C_URLS: ok = valid_url_list(s); break;
        case C_RT_BASES:
        case C_HIST_BASES:
            v = bases_list(s, k->check == C_RT_BASES ? LANE_REALTIME : LANE_HISTORICAL);
            if (!v && errno == ENOMEM)
                return fail(ld, "out of memory");
            ok = v != NULL;
            break;
        case C_TEXT: break;
        }
    }
    if (!ok)
        return bad_value(ld, i, NULL);
    if (!v)
        v = strdup(k->check == C_LEVEL ? level_names[lvl] : s); /* the level is stored in its canonical form */
    if (!v)
        return fail(ld, "out of memory");
    free(*field);
    *field = v;
    return 0;
}

static int apply(load_t *ld, config_t *cfg, size_t i)
{
    const cfkey_t *k = &keys[i];
    const char *s = ld->raw[i].text;
    void *field = (char *)cfg + k->off;
    long long v;
    bool b;

    if (!s || (!*s && (k->flags & (F_OPTIONAL | F_REQUIRED)))) {
        char where[MAX_PATH * 2 + 64], rule[512];
        if (!(k->flags & F_REQUIRED))
            return 0;
        origin(ld, i, where, sizeof where);
        allowed(k, rule, sizeof rule);
        return fail(ld, "key %s (%s) is %s: it is required and %s", k->name, where, s ? "empty" : "not set", rule);
    }
    switch (k->type) {
    case T_STR: return set_str(ld, cfg, i, s);
    case T_BOOL:
        if (parse_bool(s, &b) != 0)
            return bad_value(ld, i, NULL);
        *(bool *)field = b;
        return 0;
    case T_INT:
    case T_DAYS:
    case T_MIN:
        if (parse_int(s, &v) != 0 || v < k->min || v > k->max)
            return bad_value(ld, i, NULL);
        if (k->type == T_MIN)
            *(int64_t *)field = v * MS_M;
        else
            *(int *)field = (int)v;
        return 0;
    case T_DUR:
        if (parse_duration(s, &v) != 0 || v < k->min || v > k->max)
            return bad_value(ld, i, NULL);
        *(int64_t *)field = v;
        return 0;
    }
    return 0;
}

static long long numeric(const config_t *cfg, const cfkey_t *k)
{
    const void *field = (const char *)cfg + k->off;
    return k->type == T_DUR || k->type == T_MIN ? *(const int64_t *)field : *(const int *)field;
}

/* The key that last set this key's field (nats.dlqBaseDelay when given, else nats.dlqBaseDelayMinutes). */
static size_t effective(const load_t *ld, size_t i)
{
    size_t e = i;
    for (size_t j = i + 1; j < NKEYS; j++) {
        if (keys[j].off == keys[i].off && ld->raw[j].text && *ld->raw[j].text)
            e = j;
    }
    return e;
}

static int check_ordered(load_t *ld, const config_t *cfg)
{
    char why[MAX_PATH + 64], shown[220];

    for (size_t p = 0; p < sizeof ordered / sizeof ordered[0]; p++) {
        size_t lo = effective(ld, (size_t)key_index(ordered[p].lo));
        size_t hi = effective(ld, (size_t)key_index(ordered[p].hi));
        int factor = ordered[p].factor ? ordered[p].factor : 1;
        if (numeric(cfg, &keys[lo]) * factor <= numeric(cfg, &keys[hi]))
            continue;
        show(&keys[hi], ld->raw[hi].text, shown, sizeof shown);
        if (factor == 1)
            snprintf(why, sizeof why, "must not be greater than %s (\"%s\")", keys[hi].name, shown);
        else
            snprintf(why, sizeof why, "times %d must not be greater than %s (\"%s\")", factor, keys[hi].name, shown);
        return bad_value(ld, lo, why);
    }
    return 0;
}

/* database.writers leaves at least one session of database.maxConnections for the DLQ workers and maintenance;
 * 0 picks min(2, maxConnections - 1) (two writers measured best on two cores; see README). */
static int check_writers(load_t *ld, config_t *cfg)
{
    int budget = cfg->db_max_connections;
    if (cfg->db_writers == 0)
        cfg->db_writers = budget - 1 < 2 ? budget - 1 : 2;
    if (cfg->db_writers <= budget - 1)
        return 0;
    size_t m = effective(ld, (size_t)key_index("database.maxConnections"));
    char why[MAX_PATH + 96], shown[220];
    show(&keys[m], ld->raw[m].text ? ld->raw[m].text : keys[m].def, shown, sizeof shown);
    snprintf(why, sizeof why, "must be at most %s - 1 (\"%s\"): one session stays for the DLQ workers and maintenance",
             keys[m].name, shown);
    return bad_value(ld, (size_t)key_index("database.writers"), why);
}

/* A file key's file must exist and be readable now: a typo found at startup, not at the first reconnect. */
static int check_file(load_t *ld, size_t i, const char *path)
{
    char why[300], b;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, sizeof why, "the file cannot be opened: %s", strerror(errno));
        return bad_value(ld, i, why);
    }
    ssize_t n = read(fd, &b, 1);
    int e = errno;
    close(fd);
    if (n < 0) {
        snprintf(why, sizeof why, "the file cannot be read: %s", strerror(e));
        return bad_value(ld, i, why);
    }
    if (n == 0)
        return bad_value(ld, i, "the file is empty");
    return 0;
}

static const char *field_str(const config_t *cfg, const char *key)
{
    int i = key_index(key);
    return i < 0 ? NULL : *(char *const *)((const char *)cfg + keys[i].off);
}

/* Keys that only make sense together (a certificate and its key, a user and a password) and the NATS
 * authentication methods, of which one at most is given (nats.c would pick one silently, or refuse at connect). */
static int check_nats(load_t *ld, const config_t *cfg)
{
    for (size_t i = 0; i < NKEYS; i++) {
        const char *v = keys[i].flags & F_FILE ? *(char *const *)((const char *)cfg + keys[i].off) : NULL;
        int rc;
        if (v && (rc = check_file(ld, i, v)) != 0)
            return rc;
    }
    static const struct {
        const char *a, *b;
    } pairs[] = {{"nats.tls.certFile", "nats.tls.keyFile"},
                 {"nats.tls.keyFile", "nats.tls.certFile"},
                 {"nats.user", "nats.password"},
                 {"nats.password", "nats.user"}};
    char why[200];
    for (size_t p = 0; p < sizeof pairs / sizeof pairs[0]; p++) {
        if (field_str(cfg, pairs[p].a) && !field_str(cfg, pairs[p].b)) {
            snprintf(why, sizeof why, "needs %s too", pairs[p].b);
            return bad_value(ld, (size_t)key_index(pairs[p].a), why);
        }
    }
    static const char *const auth[] = {"nats.user", "nats.token", "nats.nkeySeedFile", "nats.credsFile"};
    const char *first = NULL;
    for (size_t a = 0; a < sizeof auth / sizeof auth[0]; a++) {
        if (!field_str(cfg, auth[a]))
            continue;
        if (first) {
            snprintf(why, sizeof why,
                     "cannot be combined with %s: give one NATS authentication method "
                     "(user/password, token, NKey seed file or credentials file)",
                     first);
            return bad_value(ld, (size_t)key_index(auth[a]), why);
        }
        first = auth[a];
    }
    return 0;
}

/* Seeds in an NKey seed file or a credentials file (lines "SU...", "SA...", "SO..."): secrets to mask. */
static void register_seeds(const char *path)
{
    FILE *f = path ? fopen(path, "r") : NULL;
    char line[1024];
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        char *a = line, *b = line + strlen(line);
        while (*a && isspace((unsigned char)*a))
            a++;
        while (b > a && isspace((unsigned char)b[-1]))
            *--b = '\0';
        if (a[0] == 'S' && strlen(a) >= 50 && strspn(a, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") == strlen(a))
            secrets_register(a);
    }
    fclose(f);
}

/* Environment over file: empty variables count as unset, as in the reference (viper without AllowEmptyEnv). */
static void read_env(load_t *ld)
{
    for (size_t i = 0; i < NKEYS; i++) {
        /* The reference's short name wins when both are set: it is what existing deployments already export. */
        const char *s = keys[i].short_env ? getenv(keys[i].short_env) : NULL;
        const char *name = keys[i].short_env;
        if (!s || !*s) {
            s = getenv(ld->env[i]);
            name = ld->env[i];
        }
        if (s && *s) {
            ld->raw[i].text = s;
            ld->raw[i].env = name;
            ld->raw[i].line = 0;
        }
    }
}

/* ---- YAML: nested mappings flattened to dotted keys ---- */

static int next_event(load_t *ld, yaml_parser_t *p, yaml_event_t *ev)
{
    if (yaml_parser_parse(p, ev))
        return 0;
    return fail(ld, "config file %s is not valid YAML: line %zu column %zu: %s%s%s", ld->file, p->problem_mark.line + 1,
                p->problem_mark.column + 1, p->problem ? p->problem : "parse error", p->context ? " " : "",
                p->context ? p->context : "");
}

static int line_of(const yaml_event_t *ev)
{
    return (int)ev->start_mark.line + 1;
}

/* Consumes the rest of a value whose first event is ev (which the caller still owns). */
static int skip_value(load_t *ld, yaml_parser_t *p, const yaml_event_t *ev)
{
    int depth = ev->type == YAML_MAPPING_START_EVENT || ev->type == YAML_SEQUENCE_START_EVENT;
    yaml_event_t e;

    while (depth > 0) {
        if (next_event(ld, p, &e))
            return CONFIG_EXIT_BAD;
        if (e.type == YAML_MAPPING_START_EVENT || e.type == YAML_SEQUENCE_START_EVENT)
            depth++;
        else if (e.type == YAML_MAPPING_END_EVENT || e.type == YAML_SEQUENCE_END_EVENT)
            depth--;
        yaml_event_delete(&e);
    }
    return 0;
}

static bool is_null(const yaml_event_t *ev)
{
    const char *v = (const char *)ev->data.scalar.value;
    return ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
           (!*v || !strcmp(v, "~") || !strcmp(v, "null") || !strcmp(v, "Null") || !strcmp(v, "NULL"));
}

static int set_raw(load_t *ld, const char *path, int line, char *text)
{
    int i = key_index(path);

    if (i < 0) {
        free(text);
        return fail(ld,
                    "unknown key %s in config file %s line %d (not a setting of this service; check the spelling "
                    "against config/default.yaml)",
                    path, ld->file, line);
    }
    raw_t *r = &ld->raw[i];
    if (r->line) {
        free(text);
        return fail(ld, "key %s appears twice in config file %s (lines %d and %d)", keys[i].name, ld->file, r->line,
                    line);
    }
    r->owned = text;
    r->text = text;
    r->line = line;
    return 0;
}

static int scalar_value(load_t *ld, const char *path, const yaml_event_t *ev)
{
    const char *v = (const char *)ev->data.scalar.value;

    if (memchr(v, '\0', ev->data.scalar.length))
        return fail(ld, "key %s in config file %s line %d contains a NUL byte", path, ld->file, line_of(ev));
    char *text = strdup(is_null(ev) ? "" : v);
    if (!text)
        return fail(ld, "out of memory");
    return set_raw(ld, path, line_of(ev), text);
}

/* A sequence of scalars for a list key, joined with ','. */
static int list_value(load_t *ld, yaml_parser_t *p, const char *path, const yaml_event_t *start)
{
    char *text = calloc(1, 1);
    size_t len = 0;
    yaml_event_t e;
    int rc = CONFIG_EXIT_BAD;

    if (!text)
        return fail(ld, "out of memory");
    for (;;) {
        if (next_event(ld, p, &e))
            goto cleanup;
        if (e.type == YAML_SEQUENCE_END_EVENT)
            break;
        if (e.type != YAML_SCALAR_EVENT || memchr(e.data.scalar.value, '\0', e.data.scalar.length)) {
            fail(ld, "key %s in config file %s line %d: list items must be plain strings", path, ld->file, line_of(&e));
            yaml_event_delete(&e);
            goto cleanup;
        }
        char *grown = realloc(text, len + e.data.scalar.length + 2);
        if (!grown) {
            fail(ld, "out of memory");
            yaml_event_delete(&e);
            goto cleanup;
        }
        text = grown;
        len += (size_t)sprintf(text + len, "%s%s", len ? "," : "", (const char *)e.data.scalar.value);
        yaml_event_delete(&e);
    }
    yaml_event_delete(&e);
    rc = set_raw(ld, path, line_of(start), text);
    text = NULL; /* set_raw owns it now, on success and failure */
cleanup:
    free(text);
    return rc;
}

static int walk_mapping(load_t *ld, yaml_parser_t *p, const char *prefix, int depth)
{
    yaml_event_t key, val;
    char path[MAX_PATH];
    int rc = 0;

    for (;;) {
        if (next_event(ld, p, &key))
            return CONFIG_EXIT_BAD;
        if (key.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&key);
            return 0;
        }
        if (key.type != YAML_SCALAR_EVENT) {
            rc = fail(ld, "config file %s line %d: keys under %s must be plain names", ld->file, line_of(&key),
                      *prefix ? prefix : "the top level");
            yaml_event_delete(&key);
            return rc;
        }
        int n = snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "", (const char *)key.data.scalar.value);
        int line = line_of(&key);
        yaml_event_delete(&key);
        if (n < 0 || (size_t)n >= sizeof path)
            return fail(ld, "config file %s line %d: key %.64s... is too long", ld->file, line, path);
        if (next_event(ld, p, &val))
            return CONFIG_EXIT_BAD;

        int i = key_index(path);
        if (strncasecmp(path, IGNORED_PREFIX, strlen(IGNORED_PREFIX)) == 0 &&
            (path[strlen(IGNORED_PREFIX)] == '\0' || path[strlen(IGNORED_PREFIX)] == '.'))
            rc = skip_value(ld, p, &val);
        else if (val.type == YAML_SCALAR_EVENT)
            rc = scalar_value(ld, path, &val);
        else if (val.type == YAML_ALIAS_EVENT)
            rc = fail(ld, "config file %s line %d: YAML aliases are not supported (key %s)", ld->file, line, path);
        else if (val.type == YAML_SEQUENCE_START_EVENT && i >= 0 && (keys[i].flags & F_LIST))
            rc = list_value(ld, p, path, &val);
        else if (i >= 0)
            rc = fail(ld, "key %s in config file %s line %d expects a single value, not a %s", keys[i].name, ld->file,
                      line, val.type == YAML_SEQUENCE_START_EVENT ? "list" : "mapping");
        else if (val.type == YAML_SEQUENCE_START_EVENT)
            rc = fail(ld,
                      "unknown key %s in config file %s line %d (not a setting of this service; check the "
                      "spelling against config/default.yaml)",
                      path, ld->file, line);
        else if (depth + 1 >= MAX_DEPTH)
            rc = fail(ld, "config file %s line %d: nesting under %s is too deep", ld->file, line, path);
        else
            rc = walk_mapping(ld, p, path, depth + 1);
        yaml_event_delete(&val);
        if (rc)
            return rc;
    }
}

/* One document whose top level is a mapping; an empty file or document sets nothing. */
static int walk_stream(load_t *ld, yaml_parser_t *p)
{
    yaml_event_t ev;
    int rc = 0, docs = 0;

    for (;;) {
        if (next_event(ld, p, &ev))
            return CONFIG_EXIT_BAD;
        yaml_event_type_t t = ev.type;
        if (t == YAML_DOCUMENT_START_EVENT && ++docs > 1)
            rc = fail(ld, "config file %s line %d: only one YAML document is allowed", ld->file, line_of(&ev));
        else if (t == YAML_MAPPING_START_EVENT)
            rc = walk_mapping(ld, p, "", 0);
        else if (t == YAML_SEQUENCE_START_EVENT || t == YAML_ALIAS_EVENT || (t == YAML_SCALAR_EVENT && !is_null(&ev)))
            rc = fail(ld, "config file %s line %d: the top level must be a mapping of keys", ld->file, line_of(&ev));
        yaml_event_delete(&ev);
        if (rc || t == YAML_STREAM_END_EVENT)
            return rc;
    }
}

static int read_yaml(load_t *ld, const char *path)
{
    yaml_parser_t p;
    FILE *f = fopen(path, "rb");
    int rc;

    ld->file = path;
    if (!f)
        return fail(ld, "config file %s cannot be read: %s", path, strerror(errno));
    if (!yaml_parser_initialize(&p)) {
        fclose(f);
        return fail(ld, "out of memory");
    }
    yaml_parser_set_input_file(&p, f);
    rc = walk_stream(ld, &p);
    yaml_parser_delete(&p);
    fclose(f);
    return rc;
}

/* --config FILE / --config=FILE (last one wins), else CONFIG_FILE, else config/default.yaml if it exists. */
static int config_path(load_t *ld, int argc, char **argv, const char **path)
{
    *path = NULL;
    for (int i = 1; i < argc && argv && argv[i]; i++) {
        if (strcmp(argv[i], "--") == 0)
            break;
        if (strncmp(argv[i], "--config=", 9) == 0) {
            *path = argv[i] + 9;
        } else if (strcmp(argv[i], "--config") == 0) {
            if (i + 1 >= argc || !argv[i + 1])
                return fail(ld, "--config needs a file name");
            *path = argv[++i];
        } else {
            continue;
        }
        if (!**path)
            return fail(ld, "--config needs a file name");
    }
    if (!*path) {
        const char *env = getenv("CONFIG_FILE");
        if (env && *env)
            *path = env;
    }
    if (!*path && access("config/default.yaml", F_OK) == 0)
        *path = "config/default.yaml";
    return 0;
}

static void free_raw(load_t *ld)
{
    for (size_t i = 0; i < NKEYS; i++)
        free(ld->raw[i].owned);
}

int config_load(config_t *cfg, int argc, char **argv, char *err, size_t errlen)
{
    char errbuf[8];
    load_t *ld = calloc(1, sizeof *ld);
    const char *path;
    int rc = CONFIG_EXIT_BAD;

    if (!err || errlen == 0) {
        err = errbuf;
        errlen = sizeof errbuf;
    }
    err[0] = '\0';
    memset(cfg, 0, sizeof *cfg);
    if (!ld) {
        snprintf(err, errlen, "invalid configuration: out of memory");
        return CONFIG_EXIT_BAD;
    }
    ld->err = err;
    ld->errlen = errlen;
    for (size_t i = 0; i < NKEYS; i++) {
        ld->raw[i].text = keys[i].def;
        env_name(&keys[i], ld->env[i], sizeof ld->env[i]);
    }

    if ((rc = config_path(ld, argc, argv, &path)) != 0)
        goto cleanup;
    if (path && (rc = read_yaml(ld, path)) != 0)
        goto cleanup;
    read_env(ld);
    for (size_t i = 0; i < NKEYS; i++) {
        if ((rc = apply(ld, cfg, i)) != 0)
            goto cleanup;
    }
    if ((rc = check_ordered(ld, cfg)) != 0)
        goto cleanup;
    if ((rc = check_writers(ld, cfg)) != 0)
        goto cleanup;
    if ((rc = check_nats(ld, cfg)) != 0)
        goto cleanup;
    snprintf(cfg->schema, sizeof cfg->schema, "daisi_%s", cfg->company_id);
    for (char *c = cfg->schema; *c; c++)
        *c = (char)tolower((unsigned char)*c);
    for (int et = 0; et < ET_BASE_COUNT; et++) {
        const lane_config_t *lc =
            event_type_lane((event_type_t)et) == LANE_HISTORICAL ? &cfg->historical : &cfg->realtime;
        cfg->consume[et] = !*lc->subject_list || list_has(lc->subject_list, event_type_base((event_type_t)et));
    }
    /* From here on every library error text is masked against these (secrets_mask in log.c, db.c, the CLI). */
    secrets_register_dsn(cfg->postgres_dsn);
    secrets_register_dsn(cfg->nats_url);
    secrets_register(cfg->nats_password);
    secrets_register(cfg->nats_token);
    register_seeds(cfg->nats_nkey_seed_file);
    register_seeds(cfg->nats_creds_file);

cleanup:
    if (rc)
        config_free(cfg);
    free_raw(ld);
    free(ld);
    return rc;
}

void config_free(config_t *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < NKEYS; i++) {
        if (keys[i].type == T_STR) {
            char **field = (char **)((char *)cfg + keys[i].off);
            free(*field);
            *field = NULL;
        }
    }
}

void config_log(const config_t *cfg)
{
    log_field_t fields[NKEYS + 1];
    char durations[NKEYS][32];
    char *masked[NKEYS] = {0};
    size_t n = 0;

    if (!cfg || !log_enabled(LOG_INFO))
        return;
    for (size_t i = 0; i < NKEYS; i++) {
        const cfkey_t *k = &keys[i];
        const void *field = (const char *)cfg + k->off;
        /* Keys sharing a field are shown once, as the effective duration under the last key's name. */
        bool shadowed = k->flags & F_ALIAS;
        for (size_t j = i + 1; j < NKEYS; j++)
            shadowed |= keys[j].off == k->off && !(keys[j].flags & F_ALIAS);
        if (shadowed)
            continue;
        switch (k->type) {
        case T_STR: {
            const char *s = *(char *const *)field ? *(char *const *)field : "";
            if ((k->flags & F_WHOLE) && *s) {
                s = "****";
            } else if (k->flags & F_SECRET) {
                size_t len = 2 * strlen(s) + 64;
                if ((masked[i] = malloc(len)) != NULL)
                    config_mask_secret(s, masked[i], len);
                s = masked[i] ? masked[i] : "****";
            }
            fields[n++] = LF_S(k->name, s);
            break;
        }
        case T_BOOL: fields[n++] = LF_B(k->name, *(const bool *)field); break;
        case T_INT:
        case T_DAYS: fields[n++] = LF_I(k->name, *(const int *)field); break;
        case T_DUR:
        case T_MIN:
            fmt_duration(*(const int64_t *)field, durations[i], sizeof durations[i]);
            fields[n++] = LF_S(k->name, durations[i]);
            break;
        }
    }
    fields[n++] = LF_S("schema", cfg->schema);
    log_emit(LOG_INFO, "config", "configuration loaded", fields, n);
    for (size_t i = 0; i < NKEYS; i++)
        free(masked[i]);
}

/* ---- secret masking ---- */

typedef struct {
    char *p;
    size_t len, cap;
} sink_t;

static void emit(sink_t *o, const char *s, size_t n)
{
    for (size_t i = 0; i < n && o->len + 1 < o->cap; i++)
        o->p[o->len++] = s[i];
}

/* libpq keywords whose value is a secret. */
static const char *const secret_words[] = {"password", "sslpassword"};

/* If s is at "password = value", returns the length up to the value (keyword, blanks, '='); else 0. */
static size_t secret_keyword(const char *start, const char *s)
{
    if (s > start && (isalnum((unsigned char)s[-1]) || s[-1] == '_'))
        return 0;
    for (size_t w = 0; w < sizeof secret_words / sizeof secret_words[0]; w++) {
        size_t n = strlen(secret_words[w]);
        if (strncasecmp(s, secret_words[w], n) != 0)
            continue;
        while (s[n] == ' ' || s[n] == '\t')
            n++;
        if (s[n] != '=')
            continue;
        for (n++; s[n] == ' ' || s[n] == '\t'; n++)
            ;
        return n;
    }
    return 0;
}

/* Length of a keyword value: 'quoted with \' escapes' or up to a blank or '&' (URI query form). */
static size_t value_len(const char *s)
{
    size_t n = 0;
    if (s[0] == '\'') {
        for (n = 1; s[n] && s[n] != '\''; n++) {
            if (s[n] == '\\' && s[n + 1])
                n++;
        }
        return s[n] ? n + 1 : n; /* an unterminated quote masks to the end */
    }
    while (s[n] && !isspace((unsigned char)s[n]) && s[n] != '&')
        n++;
    return n;
}

/*
 * At "://": masks the password of user:password@ in the authority, which ends at the next blank or ',' (NATS
 * server lists). The last '@' is used since raw passwords may contain '@'. A bare userinfo is a NATS token
 * (nats://token@host) and is masked, except for postgres URIs where it is only the user name.
 * Returns how many bytes of s were consumed.
 */
static size_t mask_authority(sink_t *o, const char *start, const char *s)
{
    const char *a = s + 3, *end = a + strcspn(a, " \t\r\n,"), *at = NULL;
    for (const char *c = a; c < end; c++) {
        if (*c == '@')
            at = c;
    }
    emit(o, s, 3);
    if (!at)
        return 3;
    const char *colon = memchr(a, ':', (size_t)(at - a));
    const char *scheme = s;
    while (scheme > start && (isalnum((unsigned char)scheme[-1]) || strchr("+-.", scheme[-1])))
        scheme--;
    bool postgres = strncasecmp(scheme, "postgres", 8) == 0;
    if (colon) {
        emit(o, a, (size_t)(colon - a) + 1);
        emit(o, "****", 4);
    } else if (postgres) {
        emit(o, a, (size_t)(at - a));
    } else {
        emit(o, "****", 4);
    }
    return (size_t)(at - s);
}

void config_mask_secret(const char *s, char *out, size_t outlen)
{
    sink_t o = {out, 0, outlen};

    if (!out || outlen == 0)
        return;
    const char *start = s ? s : "";
    for (const char *c = start; *c;) {
        size_t kw = secret_keyword(start, c);
        if (kw) {
            emit(&o, c, kw);
            emit(&o, "****", 4);
            c += kw + value_len(c + kw);
        } else if (strncmp(c, "://", 3) == 0) {
            c += mask_authority(&o, start, c);
        } else {
            emit(&o, c, 1);
            c++;
        }
    }
    out[o.len] = '\0';
}
