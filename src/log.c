/* log.c - JSON-lines logger: one escaped, size-bounded JSON object per line on stdout (SPEC 10). */
#include "log.h"

#include "secrets.h"
#include "text.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define LINE_CAP 65536             /* hard size of one line, newline included */
#define LINE_SOFT (LINE_CAP - 256) /* past this no new character is escaped; the rest is markers and closers */
#define FIELD_MAX 8192             /* input bytes kept per string value */
#define KEY_MAX 256                /* input bytes kept per key */
#define MARKER "...[truncated]"

typedef struct {
    char *p;
    size_t len;
    bool full; /* the soft limit was reached: add no more fields */
} out_t;

static atomic_int min_level = LOG_INFO; /* atomic: log_init writes it, every thread reads it */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
/* Both guarded by mu: log_init may run while other threads log (tests re-init). Every thread logs itself, under mu:
 * there is no log writer thread. */
static char company[128];
static char line[LINE_CAP];

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int log_level_parse(const char *s, log_level_t *out)
{
    if (!s || !out)
        return -1;
    for (int i = LOG_DEBUG; i <= LOG_ERROR; i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (log_level_t)i;
            return 0;
        }
    }
    if (strcasecmp(s, "warning") == 0) {
        *out = LOG_WARN;
        return 0;
    }
    return -1;
}

static int clamp(int level)
{
    return level < LOG_DEBUG ? LOG_DEBUG : level > LOG_ERROR ? LOG_ERROR : level;
}

void log_init(log_level_t level, const char *company_id)
{
    atomic_store(&min_level, clamp((int)level));
    pthread_mutex_lock(&mu);
    snprintf(company, sizeof company, "%s", company_id ? company_id : "");
    pthread_mutex_unlock(&mu);
}

bool log_enabled(log_level_t level)
{
    return (int)level >= atomic_load_explicit(&min_level, memory_order_relaxed);
}

/* Appends n bytes. The soft limit plus the 256-byte tail make this clamp unreachable; it only guards memory. */
static void put(out_t *o, const char *s, size_t n)
{
    if (o->len + n > LINE_CAP - 1)
        n = LINE_CAP - 1 - o->len;
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

static void puts_(out_t *o, const char *s)
{
    put(o, s, strlen(s));
}

/*
 * Writes s as a JSON string. Invalid UTF-8 bytes become \ufffd so the line always parses. At most maxin input
 * bytes are kept, and nothing is escaped past LINE_SOFT; a cut string ends with MARKER, and a cut caused by the
 * line size sets o->full.
 */
static void put_str(out_t *o, const char *s, size_t maxin)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t n = strnlen(s, maxin + 4); /* +4: a character starting before maxin may end after it */
    size_t i = 0;

    put(o, "\"", 1);
    while (i < n) {
        if (i >= maxin || o->len + 6 > LINE_SOFT) {
            if (o->len + 6 > LINE_SOFT)
                o->full = true;
            puts_(o, MARKER);
            break;
        }
        size_t len;
        if (text_json_needs_escape(s + i, n - i, &len)) {
            char esc[6];
            put(o, esc, text_json_escape(u[i], esc));
        } else {
            put(o, s + i, len);
        }
        i += len;
    }
    put(o, "\"", 1);
}

/* Every message and string value goes through secrets_mask: library error texts (libpq, nats.c) reach the log as
 * fields, and they may echo a password or a fragment of one. Called under mu: one static buffer. */
static void put_masked(out_t *o, const char *s)
{
    static char masked[FIELD_MAX + 64];
    secrets_mask(s, masked, sizeof masked);
    put_str(o, masked, FIELD_MAX);
}

static void put_field(out_t *o, const log_field_t *f)
{
    char num[64];

    put(o, ",", 1);
    put_str(o, f->key, KEY_MAX);
    put(o, ":", 1);
    switch (f->type) {
    case LOGF_STR:
        if (f->s)
            put_masked(o, f->s);
        else
            puts_(o, "null");
        break;
    case LOGF_INT:
        snprintf(num, sizeof num, "%lld", f->i);
        puts_(o, num);
        break;
    case LOGF_DBL:
        /* JSON has no NaN or Infinity. */
        if (isfinite(f->d))
            snprintf(num, sizeof num, "%.15g", f->d);
        else
            snprintf(num, sizeof num, "null");
        puts_(o, num);
        break;
    case LOGF_BOOL: puts_(o, f->i ? "true" : "false"); break;
    default: puts_(o, "null"); break;
    }
}

static void timestamp(char *buf, size_t len)
{
    struct timespec now;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, len - n, ".%03ldZ", now.tv_nsec / 1000000L);
}

/* One write(2) per line; a failing stdout drops the line, since there is nowhere to report it. */
static void write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDOUT_FILENO, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

void log_emit(log_level_t level, const char *logger, const char *msg, const log_field_t *fields, size_t nfields)
{
    char ts[40];

    if (!log_enabled(level))
        return;
    /* The whole line is built under the lock in one static buffer: no allocation, and the timestamp order
     * matches the line order. Logging is not on the per-message hot path, so the serialisation is cheap. */
    pthread_mutex_lock(&mu);
    out_t o = {.p = line};
    timestamp(ts, sizeof ts);
    puts_(&o, "{\"ts\":\"");
    puts_(&o, ts);
    puts_(&o, "\",\"level\":\"");
    puts_(&o, level_names[clamp((int)level)]);
    puts_(&o, "\",\"logger\":");
    put_str(&o, logger ? logger : "", KEY_MAX);
    puts_(&o, ",\"msg\":");
    put_masked(&o, msg ? msg : "");
    puts_(&o, ",\"company_id\":");
    put_str(&o, company, KEY_MAX);
    for (size_t i = 0; i < nfields && fields; i++) {
        if (fields[i].type == LOGF_NONE || !fields[i].key)
            continue;
        if (o.full)
            break;
        put_field(&o, &fields[i]);
    }
    if (o.full)
        puts_(&o, ",\"truncated\":true");
    puts_(&o, "}\n");
    write_all(line, o.len);
    pthread_mutex_unlock(&mu);
}

void log_thread_name(const char *role, const char *what)
{
    char name[16]; /* the kernel keeps 15 characters and the terminator */
    snprintf(name, sizeof name, "%s%s%s", role, what ? " " : "", what ? what : "");
    (void)pthread_setname_np(pthread_self(), name);
}
