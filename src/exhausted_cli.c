/* exhausted_cli.c - the "exhausted" operator command (SPEC 5.3): list, show, replay and resolve exhausted_events. */
#include "exhausted.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nats/nats.h>

#include "buf.h"
#include "clock.h"
#include "db.h"
#include "dlq.h"
#include "event.h"
#include "log.h"
#include "mes_nats.h"
#include "router.h"
#include "secrets.h"
#include "store.h"
#include "text.h"

#define LIMIT_DEFAULT "100"
#define LIMIT_MAX 100000
#define AGE_MAX_SECS (100LL * 366 * 86400)
#define ERROR_COLUMN_CHARS 60 /* last_error is cut to this many characters in the table */
#define NATS_CONNECT_MS 5000
#define PUBLISH_WAIT_MS 5000

/* Bit flags so that a flag can name the subcommands it applies to. */
typedef enum { CMD_NONE = 0, CMD_LIST = 1, CMD_SHOW = 2, CMD_REPLAY = 4, CMD_RESOLVE = 8 } cmd_t;

static const struct {
    const char *name;
    cmd_t cmd;
} commands[] = {{"list", CMD_LIST}, {"show", CMD_SHOW}, {"replay", CMD_REPLAY}, {"resolve", CMD_RESOLVE}};

typedef struct {
    cmd_t cmd;
    bool unresolved, all_unresolved, json;
    const char *subject, *since, *id, *limit, *note; /* point into argv; NULL when not given */
    /* Derived by check_opts; every SQL parameter is text. */
    char id_txt[24];    /* canonical decimal of --id */
    char since_ts[64];  /* --since as a timestamp for $n::timestamptz, or "" */
    char since_ago[40]; /* --since as "<n> seconds" for $n::interval, or "" */
} opts_t;

typedef struct {
    const char *name;
    unsigned cmds; /* subcommands that accept the flag */
    bool takes_value;
    size_t off; /* of a bool (no value) or a const char * (value) in opts_t */
} flag_t;

static const flag_t flags[] = {
    {"--unresolved", CMD_LIST, false, offsetof(opts_t, unresolved)},
    {"--subject", CMD_LIST, true, offsetof(opts_t, subject)},
    {"--since", CMD_LIST, true, offsetof(opts_t, since)},
    {"--limit", CMD_LIST, true, offsetof(opts_t, limit)},
    {"--id", CMD_SHOW | CMD_REPLAY | CMD_RESOLVE, true, offsetof(opts_t, id)},
    {"--all-unresolved", CMD_REPLAY, false, offsetof(opts_t, all_unresolved)},
    {"--note", CMD_RESOLVE, true, offsetof(opts_t, note)},
    {"--json", CMD_LIST | CMD_SHOW | CMD_REPLAY, false, offsetof(opts_t, json)},
};

#define NFLAGS (sizeof flags / sizeof flags[0])

static const char usage_text[] =
    "usage: message-event-service [--config FILE] exhausted COMMAND [OPTIONS]\n"
    "\n"
    "  list    [--unresolved] [--subject S] [--since TIME] [--limit N] [--json]\n"
    "          the newest N (default " LIMIT_DEFAULT ") matching rows, oldest first. S is a subject, or a base\n"
    "          subject without the tenant token. TIME is RFC 3339 (2024-05-01T10:00:00Z, or a date meaning\n"
    "          midnight UTC) or an age such as 90s, 30m, 2h, 7d, 1w, 1h30m.\n"
    "  show    --id N [--json]\n"
    "          every column of one row\n"
    "  replay  --id N | --all-unresolved [--json]\n"
    "          publishes the original event to its source subject again (JetStream, PubAck awaited),\n"
    "          then marks the row resolved with a note\n"
    "  resolve --id N --note TEXT\n"
    "          marks the row resolved and appends TEXT to its notes\n"
    "\n"
    "The tenant and the connections come from the service configuration (COMPANY_ID, POSTGRES_DSN,\n"
    "NATS_URL, --config FILE). Only the tenant's own rows are read or changed.\n"
    "Exit status: 0 done, 1 nothing matched, 2 bad usage, 3 failure (PostgreSQL or NATS unreachable,\n"
    "or some replays failed or were refused).\n";

/* One run of the command. */
typedef struct {
    const config_t *cfg;
    opts_t o;
    FILE *out; /* the command's output: the process's original stdout */
    db_conn_t *db;
} cli_t;

/* ---------------------------------------------------------------------------------------------------------------- */
/* Arguments                                                                                                        */

__attribute__((format(printf, 1, 2))) static int bad_usage(const char *fmt, ...)
{
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        fputs("exhausted: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputs("\n\n", stderr);
        va_end(ap);
    }
    fputs(usage_text, stderr);
    return EXH_EXIT_USAGE;
}

static const char *command_name(cmd_t cmd)
{
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (commands[i].cmd == cmd)
            return commands[i].name;
    return "?";
}

static const flag_t *flag_named(const char *name, size_t len)
{
    for (size_t i = 0; i < NFLAGS; i++)
        if (strlen(flags[i].name) == len && memcmp(flags[i].name, name, len) == 0)
            return &flags[i];
    return NULL;
}

static bool *flag_bool(opts_t *o, const flag_t *f)
{
    return (bool *)(void *)((char *)o + f->off);
}

static const char **flag_str(opts_t *o, const flag_t *f)
{
    return (const char **)(void *)((char *)o + f->off);
}

static bool flag_given(opts_t *o, const flag_t *f)
{
    return f->takes_value ? *flag_str(o, f) != NULL : *flag_bool(o, f);
}

/* Decimal digits only, 1..max. */
static bool parse_count(const char *s, long long max, long long *out)
{
    long long v = 0;
    if (!*s)
        return false;
    for (; *s; s++) {
        if (!isdigit((unsigned char)*s) || v > (max - (*s - '0')) / 10)
            return false;
        v = v * 10 + (*s - '0');
    }
    *out = v;
    return v >= 1;
}

/* "90s", "30m", "2h", "7d", "1w" and sums such as "1h30m", in seconds (at most a century). */
static bool parse_age(const char *s, long long *secs)
{
    static const struct {
        char unit;
        long long secs;
    } units[] = {{'s', 1}, {'m', 60}, {'h', 3600}, {'d', 86400}, {'w', 7 * 86400}};
    long long total = 0;
    if (!*s)
        return false;
    while (*s) {
        long long n = 0, mult = 0;
        const char *start = s;
        for (; isdigit((unsigned char)*s); s++)
            if ((n = n * 10 + (*s - '0')) > AGE_MAX_SECS)
                return false;
        for (size_t i = 0; i < sizeof units / sizeof units[0] && s > start; i++)
            if (units[i].unit == *s)
                mult = units[i].secs;
        if (!mult || n > (AGE_MAX_SECS - total) / mult)
            return false;
        total += n * mult;
        s++;
    }
    *secs = total;
    return true;
}

static int check_opts(opts_t *o)
{
    long long v;
    if (o->cmd == CMD_NONE)
        return bad_usage(NULL);
    for (size_t i = 0; i < NFLAGS; i++)
        if (flag_given(o, &flags[i]) && !(flags[i].cmds & o->cmd))
            return bad_usage("%s does not apply to '%s'", flags[i].name, command_name(o->cmd));
    if (o->id) {
        if (!parse_count(o->id, INT64_MAX, &v))
            return bad_usage("--id must be a positive integer, not '%s'", o->id);
        snprintf(o->id_txt, sizeof o->id_txt, "%lld", v);
    }
    if ((o->cmd == CMD_SHOW || o->cmd == CMD_RESOLVE) && !o->id)
        return bad_usage("'%s' needs --id N", command_name(o->cmd));
    if (o->cmd == CMD_REPLAY && !o->id == !o->all_unresolved)
        return bad_usage("'replay' needs exactly one of --id N and --all-unresolved");
    if (o->cmd == CMD_RESOLVE && (!o->note || text_blank(o->note, strlen(o->note))))
        return bad_usage("'resolve' needs --note TEXT");
    if (o->limit && !parse_count(o->limit, LIMIT_MAX, &v))
        return bad_usage("--limit must be an integer from 1 to %d, not '%s'", LIMIT_MAX, o->limit);
    if (!o->limit)
        o->limit = LIMIT_DEFAULT;
    if (o->subject && text_blank(o->subject, strlen(o->subject)))
        return bad_usage("--subject must not be empty");
    if (o->since) {
        if (parse_age(o->since, &v))
            snprintf(o->since_ago, sizeof o->since_ago, "%lld seconds", v);
        else if (clock_rfc3339_valid(o->since, true) && strlen(o->since) < sizeof o->since_ts)
            snprintf(o->since_ts, sizeof o->since_ts, "%s", o->since);
        else
            return bad_usage("--since must be an RFC 3339 time (2024-05-01T10:00:00Z) or an age such as 30m, 2h, "
                             "7d; not '%s'",
                             o->since);
    }
    return EXH_EXIT_OK;
}

/* Flags take "--flag VALUE" or "--flag=VALUE" and may come before or after the command word. --config was already
 * applied by config_load. */
static int parse_args(opts_t *o, int argc, char **argv)
{
    memset(o, 0, sizeof *o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
            return bad_usage(NULL);
        if (strcmp(a, "--config") == 0) {
            i++;
            continue;
        }
        if (strncmp(a, "--config=", 9) == 0)
            continue;
        if (a[0] != '-') {
            if (o->cmd != CMD_NONE)
                return bad_usage("unexpected argument '%s'", a);
            for (size_t k = 0; k < sizeof commands / sizeof commands[0]; k++)
                if (strcmp(a, commands[k].name) == 0)
                    o->cmd = commands[k].cmd;
            if (o->cmd == CMD_NONE)
                return bad_usage("unknown command '%s'", a);
            continue;
        }
        const char *eq = strchr(a, '=');
        size_t len = eq ? (size_t)(eq - a) : strlen(a);
        const flag_t *f = flag_named(a, len);
        if (!f)
            return bad_usage("unknown flag '%.*s'", (int)len, a);
        if (!f->takes_value) {
            if (eq)
                return bad_usage("%s takes no value", f->name);
            *flag_bool(o, f) = true;
        } else if (eq) {
            *flag_str(o, f) = eq + 1;
        } else if (i + 1 < argc) {
            *flag_str(o, f) = argv[++i];
        } else {
            return bad_usage("%s needs a value", f->name);
        }
    }
    return check_opts(o);
}

int exhausted_argv_index(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0)
            i++;
        else if (strcmp(argv[i], "exhausted") == 0)
            return i;
    }
    return -1;
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* Output and sessions                                                                                              */

/* log.c writes its lines to file descriptor 1. Moving fd 1 onto stderr (and keeping a private stream on the old
 * stdout) leaves stdout to the command's table or JSON, so scripts can parse it. */
static FILE *claim_stdout(void)
{
    fflush(stdout);
    int fd = dup(STDOUT_FILENO);
    if (fd < 0)
        return NULL;
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        return NULL;
    }
    if (dup2(STDERR_FILENO, STDOUT_FILENO) < 0) {
        fclose(f);
        return NULL;
    }
    return f;
}

static int open_db(cli_t *c)
{
    db_error_t err;
    char masked[512];
    if ((c->db = db_connect(c->cfg, &err)) && db_command(c->db, "SET TIME ZONE 'UTC'", &err) == 0)
        return 0;
    secrets_mask(c->cfg->postgres_dsn, masked, sizeof masked);
    fprintf(stderr, "exhausted: cannot use PostgreSQL (%s): %s\n", masked, err.message);
    return -1;
}

/* Runs one of the store's exhausted_events statements; on failure says what failed on stderr and returns NULL. */
static PGresult *query(cli_t *c, const char *what, store_exhausted_query_t q, const char *const *params)
{
    db_error_t err;
    PGresult *r = store_exhausted_query(c->db, q, params, &err);
    if (!r)
        fprintf(stderr, "exhausted: %s failed: %s\n", what, err.message);
    return r;
}

static const char *cell(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? "-" : PQgetvalue(r, row, col);
}

/* Characters (UTF-8 code points) of s: what a terminal column width is made of. */
static size_t text_width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        w += ((unsigned char)*s & 0xC0) != 0x80;
    return w;
}

static void put_padded(FILE *out, const char *s, size_t width)
{
    fputs(s, out);
    for (size_t w = text_width(s); w < width; w++)
        fputc(' ', out);
}

/* At most ERROR_COLUMN_CHARS characters of s on one line: control characters become spaces, a cut ends in "...". */
static void put_error_cell(FILE *out, const char *s)
{
    size_t chars = text_width(s), kept = 0;
    size_t keep = chars > ERROR_COLUMN_CHARS ? ERROR_COLUMN_CHARS - 3 : chars;
    for (; *s; s++) {
        bool lead = ((unsigned char)*s & 0xC0) != 0x80;
        if (lead && kept++ == keep)
            break;
        fputc((unsigned char)*s < 0x20 || *s == 0x7F ? ' ' : *s, out);
    }
    if (chars > keep)
        fputs("...", out);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* list                                                                                                             */

static void print_table(FILE *out, const PGresult *r)
{
    static const char *const head[] = {"ID", "CREATED_AT", "SUBJECT", "RETRIES", "RESOLVED", "LAST_ERROR"};
    enum { PADDED = 5 }; /* the last column is not padded */
    size_t width[PADDED];
    int rows = PQntuples(r);
    for (int j = 0; j < PADDED; j++) {
        width[j] = strlen(head[j]);
        for (int i = 0; i < rows; i++) {
            size_t w = text_width(cell(r, i, j));
            width[j] = w > width[j] ? w : width[j];
        }
    }
    for (int j = 0; j < PADDED; j++) {
        put_padded(out, head[j], width[j]);
        fputs("  ", out);
    }
    fprintf(out, "%s\n", head[PADDED]);
    for (int i = rows - 1; i >= 0; i--) { /* oldest first */
        for (int j = 0; j < PADDED; j++) {
            put_padded(out, cell(r, i, j), width[j]);
            fputs("  ", out);
        }
        put_error_cell(out, PQgetisnull(r, i, PADDED) ? "-" : PQgetvalue(r, i, PADDED));
        fputc('\n', out);
    }
}

static int cmd_list(cli_t *c)
{
    const opts_t *o = &c->o;
    const char *params[6] = {c->cfg->company_id,
                             o->unresolved ? "true" : "false",
                             o->subject,
                             o->since_ts[0] ? o->since_ts : NULL,
                             o->since_ago[0] ? o->since_ago : NULL,
                             o->limit};
    PGresult *r = query(c, "list", o->json ? EXQ_LIST_JSON : EXQ_LIST_TABLE, params);
    if (!r)
        return EXH_EXIT_FAILED;
    long long shown, matched;
    if (o->json) {
        fprintf(c->out, "%s\n", PQgetvalue(r, 0, 0));
        matched = atoll(PQgetvalue(r, 0, 1));
        shown = matched < atoll(o->limit) ? matched : atoll(o->limit);
    } else {
        shown = PQntuples(r);
        matched = shown ? atoll(PQgetvalue(r, 0, 6)) : 0;
        if (shown)
            print_table(c->out, r);
    }
    PQclear(r);
    if (matched == 0) {
        fprintf(stderr, "exhausted: no matching exhausted events\n");
        return EXH_EXIT_NO_MATCH;
    }
    if (matched > shown)
        fprintf(stderr, "exhausted: showing the newest %lld of %lld matching rows (--limit)\n", shown, matched);
    return EXH_EXIT_OK;
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* show                                                                                                             */

/* "label  value", continuation lines of multi-line values (notes, pretty JSON) indented under the value. */
static void print_record(FILE *out, const PGresult *r)
{
    int cols = PQnfields(r);
    size_t width = 0;
    for (int j = 0; j < cols; j++)
        width = strlen(PQfname(r, j)) > width ? strlen(PQfname(r, j)) : width;
    for (int j = 0; j < cols; j++) {
        put_padded(out, PQfname(r, j), width + 2);
        for (const char *p = cell(r, 0, j); *p; p++) {
            fputc(*p, out);
            if (*p == '\n')
                put_padded(out, "", width + 2);
        }
        fputc('\n', out);
    }
}

static int cmd_show(cli_t *c)
{
    const char *params[2] = {c->o.id_txt, c->cfg->company_id};
    PGresult *r = query(c, "show", c->o.json ? EXQ_SHOW_JSON : EXQ_SHOW, params);
    if (!r)
        return EXH_EXIT_FAILED;
    int rc = EXH_EXIT_OK;
    if (PQntuples(r) == 0) {
        fprintf(stderr, "exhausted: no exhausted event %s for company %s\n", c->o.id_txt, c->cfg->company_id);
        rc = EXH_EXIT_NO_MATCH;
    } else if (c->o.json) {
        fprintf(c->out, "%s\n", PQgetvalue(r, 0, 0));
    } else {
        print_record(c->out, r);
    }
    PQclear(r);
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* resolve                                                                                                          */

static int cmd_resolve(cli_t *c)
{
    const char *params[3] = {c->o.id_txt, c->cfg->company_id, c->o.note};
    PGresult *r = query(c, "resolve", EXQ_RESOLVE, params);
    if (!r)
        return EXH_EXIT_FAILED;
    int rc = EXH_EXIT_OK;
    if (PQntuples(r) == 0) {
        fprintf(stderr, "exhausted: no exhausted event %s for company %s\n", c->o.id_txt, c->cfg->company_id);
        rc = EXH_EXIT_NO_MATCH;
    } else {
        fprintf(c->out, "resolved exhausted event %s\n", c->o.id_txt);
    }
    PQclear(r);
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* replay                                                                                                           */

typedef enum { REPLAYED = 0, SKIPPED, REFUSED, FAILED } outcome_t;

static const char *const outcome_names[] = {"replayed", "skipped", "refused", "failed"};

typedef struct {
    outcome_t outcome;
    char subject[128];
    char stream[128];
    uint64_t seq;
    bool duplicate; /* JetStream de-duplicated it against a replay of the same row in the same second */
    char error[768];
} replay_result_t;

enum { COL_SUBJECT = 0, COL_ENCODING, COL_PAYLOAD, COL_TRUNCATED, COL_STREAM, COL_SEQUENCE, COL_ITEM };

/* Records why a row was not replayed; returns -1 for the caller to pass on. */
__attribute__((format(printf, 3, 4))) static int set_outcome(replay_result_t *res, outcome_t o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char raw[sizeof res->error];
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    secrets_mask(raw, res->error, sizeof res->error); /* nats.c texts (nats_GetLastError) may echo the URL */
    res->outcome = o;
    return -1;
}

/* Tenant isolation: only <base>.<co> of one of the ten bases, with <co> the configured company, is published. */
static event_type_t replay_event_type(const config_t *cfg, const char *subject)
{
    route_subject_t rs = router_subject(subject, cfg->company_id);
    return rs.own_tenant ? rs.et : ET_UNKNOWN;
}

/* A DLQ record of an original over DLQ_MAX_EMBED holds only a prefix; the whole message is still in its source
 * stream unless limits removed it since. A history item has no message of its own (its source is the whole batch),
 * so a truncated item cannot be recovered this way. */
static int fetch_source(mes_nats_t *n, const PGresult *r, const char *subject, buf_t *out, replay_result_t *res)
{
    const char *stream = PQgetisnull(r, 0, COL_STREAM) ? NULL : PQgetvalue(r, 0, COL_STREAM);
    long long seq;

    if (strcmp(PQgetvalue(r, 0, COL_ITEM), "t") == 0)
        return set_outcome(res, REFUSED,
                           "the DLQ record holds a truncated history item and its source message is "
                           "the whole batch; replay it by hand from the batch");
    if (!stream || PQgetisnull(r, 0, COL_SEQUENCE) || !parse_count(PQgetvalue(r, 0, COL_SEQUENCE), INT64_MAX, &seq))
        return set_outcome(res, REFUSED,
                           "the DLQ record holds a truncated original and no source_stream/"
                           "source_sequence to fetch the whole message from");
    char why[512];
    switch (mes_nats_get_source(n, stream, (uint64_t)seq, subject, out, why, sizeof why)) {
    case MES_SRC_OK: return 0;
    case MES_SRC_GONE: return set_outcome(res, REFUSED, "the DLQ record holds a truncated original and %s", why);
    case MES_SRC_MISMATCH: return set_outcome(res, REFUSED, "%s", why);
    case MES_SRC_FAILED: break;
    }
    return set_outcome(res, FAILED, "%s", why);
}

/* The original event's bytes: the embedded JSON as PostgreSQL renders it (jsonb keeps numbers exact; key order and
 * spacing may differ, which no handler depends on), the decoded base64, or the full message from its stream. */
static int original_bytes(mes_nats_t *n, const PGresult *r, const char *subject, buf_t *out, replay_result_t *res)
{
    const char *enc = PQgetisnull(r, 0, COL_ENCODING) ? "json" : PQgetvalue(r, 0, COL_ENCODING);
    const char *payload = PQgetisnull(r, 0, COL_PAYLOAD) ? NULL : PQgetvalue(r, 0, COL_PAYLOAD);

    if (strcmp(PQgetvalue(r, 0, COL_TRUNCATED), "t") == 0)
        return fetch_source(n, r, subject, out, res);
    if (!payload)
        return set_outcome(res, REFUSED, "the DLQ record has no original_payload");
    if (strcmp(enc, "base64") == 0) {
        if (!text_base64_decode_append(out, payload, strlen(payload)))
            return set_outcome(res, REFUSED, "original_payload is not valid base64");
    } else if (strcmp(enc, "json") == 0) {
        buf_puts(out, payload);
    } else {
        return set_outcome(res, REFUSED, "unknown original_payload_encoding '%.64s'", enc);
    }
    return out->oom ? set_outcome(res, FAILED, "out of memory") : 0;
}

/* Nats-Msg-Id replay:<row>:<unix time>: not de-duplicated against the original (or an earlier replay), while a
 * replay retried within the same second is. ExpectStream keeps a stray subject from landing in another stream. */
static int publish(mes_nats_t *n, event_type_t et, const char *id, const char *subject, const buf_t *data, time_t at,
                   replay_result_t *res)
{
    const config_t *cfg = n->cfg;
    char msgid[64];
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    jsPubOptions po;

    snprintf(msgid, sizeof msgid, "replay:%s:%lld", id, (long long)at);
    jsPubOptions_Init(&po);
    po.MsgId = msgid;
    po.MaxWait = PUBLISH_WAIT_MS;
    po.ExpectStream = event_type_lane(et) == LANE_HISTORICAL ? cfg->historical.stream : cfg->realtime.stream;
    natsStatus s = js_Publish(&pa, n->js, subject, data->data ? data->data : "", (int)data->len, &po, &jerr);
    if (s != NATS_OK)
        return set_outcome(res, FAILED, "publish to %s failed: %s (js error %d) %s", subject, natsStatus_GetText(s),
                           (int)jerr, nats_GetLastError(NULL) ? nats_GetLastError(NULL) : "");
    snprintf(res->stream, sizeof res->stream, "%s", pa->Stream ? pa->Stream : "");
    res->seq = pa->Sequence;
    res->duplicate = pa->Duplicate;
    jsPubAck_Destroy(pa);
    return 0;
}

/* One row in its own transaction: the row lock keeps a concurrent replay off it, and the row is marked only after
 * the PubAck, so a failed publish leaves it unresolved. A failed mark after a good publish is reported: replaying
 * again would publish the event twice (the handlers' upserts make that harmless except for unread deltas). */
static outcome_t replay_row(cli_t *c, mes_nats_t *n, const char *id, replay_result_t *res)
{
    db_error_t err;
    PGresult *r = NULL, *mark = NULL;
    buf_t bytes;
    time_t at = time(NULL);
    char note[512], ts[32];

    memset(res, 0, sizeof *res);
    buf_init(&bytes);
    res->outcome = FAILED;
    if (db_command(c->db, "BEGIN", &err) != 0) {
        set_outcome(res, FAILED, "BEGIN: %s", err.message);
        goto cleanup;
    }
    const char *params[3] = {id, c->cfg->company_id, c->o.all_unresolved ? "true" : "false"};
    if (!(r = store_exhausted_query(c->db, EXQ_REPLAY_ROW, params, &err))) {
        set_outcome(res, FAILED, "reading the row: %s", err.message);
        goto cleanup;
    }
    if (PQntuples(r) == 0) {
        set_outcome(res, SKIPPED, "another replay holds the row, or it was resolved meanwhile");
        goto cleanup;
    }
    const char *subject = PQgetvalue(r, 0, COL_SUBJECT);
    event_type_t et = replay_event_type(c->cfg, subject);
    if (et == ET_UNKNOWN) {
        set_outcome(res, REFUSED, "source subject '%.200s' is not an event subject of company %s", subject,
                    c->cfg->company_id);
        goto cleanup;
    }
    snprintf(res->subject, sizeof res->subject, "%s", subject);
    if (original_bytes(n, r, subject, &bytes, res) != 0 || publish(n, et, id, subject, &bytes, at, res) != 0)
        goto cleanup;

    struct tm tm;
    gmtime_r(&at, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    snprintf(note, sizeof note, "replayed at %s to %s (stream seq %llu)%s", ts, subject, (unsigned long long)res->seq,
             res->duplicate ? " (de-duplicated retry)" : "");
    const char *mark_params[3] = {id, c->cfg->company_id, note};
    if (!(mark = store_exhausted_query(c->db, EXQ_REPLAY_MARK, mark_params, &err)) ||
        db_command(c->db, "COMMIT", &err) != 0) {
        set_outcome(res, FAILED, "published to %s (stream %s seq %llu) but marking the row resolved failed: %s",
                    subject, res->stream, (unsigned long long)res->seq, err.message);
        goto cleanup;
    }
    res->outcome = REPLAYED;
cleanup:
    if (res->outcome != REPLAYED)
        db_rollback(c->db);
    PQclear(mark);
    PQclear(r);
    buf_free(&bytes);
    return res->outcome;
}

static void report(cli_t *c, const char *id, const replay_result_t *res, buf_t *json)
{
    if (res->outcome != REPLAYED)
        fprintf(stderr, "exhausted: row %s %s: %s\n", id, outcome_names[res->outcome], res->error);
    if (!c->o.json) {
        if (res->outcome == REPLAYED)
            fprintf(c->out, "replayed %s to %s (stream %s seq %llu)%s\n", id, res->subject, res->stream,
                    (unsigned long long)res->seq, res->duplicate ? " de-duplicated" : "");
        return;
    }
    buf_puts(json, json->len > 1 ? ",\n{\"id\":" : "{\"id\":");
    buf_puts(json, id);
    buf_printf(json, ",\"status\":\"%s\"", outcome_names[res->outcome]);
    if (res->outcome == REPLAYED) {
        buf_puts(json, ",\"subject\":");
        buf_put_json_str(json, res->subject, strlen(res->subject));
        buf_puts(json, ",\"stream\":");
        buf_put_json_str(json, res->stream, strlen(res->stream));
        buf_printf(json, ",\"stream_sequence\":%llu,\"duplicate\":%s", (unsigned long long)res->seq,
                   res->duplicate ? "true" : "false");
    } else {
        buf_puts(json, ",\"error\":");
        buf_put_json_str(json, res->error, strlen(res->error));
    }
    buf_putc(json, '}');
}

static int cmd_replay(cli_t *c)
{
    const char *params[2] = {c->cfg->company_id, c->o.id ? c->o.id_txt : NULL};
    mes_nats_t n;
    atomic_bool stop = false;
    buf_t json;
    int counts[FAILED + 1] = {0};
    int rc = EXH_EXIT_FAILED;

    memset(&n, 0, sizeof n);
    buf_init(&json);
    buf_putc(&json, '[');
    PGresult *ids = query(c, "replay", EXQ_REPLAY_IDS, params);
    if (!ids)
        goto cleanup;
    if (PQntuples(ids) > 0 && mes_nats_connect(&n, c->cfg, clock_mono_ms() + NATS_CONNECT_MS, &stop) != 0) {
        char masked[512];
        secrets_mask(c->cfg->nats_url, masked, sizeof masked);
        fprintf(stderr, "exhausted: cannot connect to NATS at %s\n", masked);
        goto cleanup;
    }
    for (int i = 0; i < PQntuples(ids); i++) {
        replay_result_t res;
        const char *id = PQgetvalue(ids, i, 0);
        counts[replay_row(c, &n, id, &res)]++;
        report(c, id, &res, &json);
    }
    if (c->o.json)
        fprintf(c->out, "%s]\n", json.data);
    if (counts[REFUSED] + counts[FAILED] > 0)
        rc = EXH_EXIT_FAILED;
    else
        rc = counts[REPLAYED] > 0 ? EXH_EXIT_OK : EXH_EXIT_NO_MATCH;
    if (PQntuples(ids) == 0)
        fprintf(stderr, "exhausted: no matching exhausted events\n");
    else
        fprintf(stderr, "exhausted: %d replayed, %d skipped, %d refused, %d failed\n", counts[REPLAYED],
                counts[SKIPPED], counts[REFUSED], counts[FAILED]);
cleanup:
    PQclear(ids);
    mes_nats_close(&n);
    mes_nats_library_close();
    buf_free(&json);
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------------- */

int exhausted_cli(const config_t *cfg, int argc, char **argv)
{
    cli_t c = {.cfg = cfg};
    int rc = parse_args(&c.o, argc, argv);
    if (rc != EXH_EXIT_OK)
        return rc;

    log_level_t lvl = LOG_WARN;
    if (log_level_parse(cfg->log_level, &lvl) != 0 || lvl < LOG_WARN)
        lvl = LOG_WARN;
    log_init(lvl, cfg->company_id);
    if (!(c.out = claim_stdout())) {
        fprintf(stderr, "exhausted: cannot set up stdout: %s\n", strerror(errno));
        return EXH_EXIT_FAILED;
    }
    if (open_db(&c) != 0) {
        rc = EXH_EXIT_FAILED;
        goto cleanup;
    }
    switch (c.o.cmd) {
    case CMD_LIST: rc = cmd_list(&c); break;
    case CMD_SHOW: rc = cmd_show(&c); break;
    case CMD_REPLAY: rc = cmd_replay(&c); break;
    case CMD_RESOLVE: rc = cmd_resolve(&c); break;
    case CMD_NONE: rc = bad_usage(NULL); break;
    }
cleanup:
    db_close(c.db);
    if (fclose(c.out) != 0 && rc == EXH_EXIT_OK) {
        fprintf(stderr, "exhausted: writing the output failed: %s\n", strerror(errno));
        rc = EXH_EXIT_FAILED;
    }
    return rc;
}
