/* test_exhausted_cli.c - the "exhausted" operator command against real NATS + PostgreSQL + the running service. */
#include <stdint.h>

#include "buf.h"
#include "text.h"
#include "dlq.h"
#include "itest.h"
#include "json.h"

#define CO "acme"
#define SCH "daisi_acme"

static const char *const NO_ENV[] = {NULL};

static const char CHAT_JSON[] = "{\"chat_id\":\"replayed-1\",\"jid\":\"628@s.whatsapp.net\",\"agent_id\":\"ag1\","
                                "\"phone_number\":\"628\",\"last_message\":{\"n\":12345678901234567890}}";

/* Runs `$MES_SERVICE_BIN exhausted <args...>` (NULL-terminated) for tenant acme with the test's servers, or with
 * dsn instead of the test PostgreSQL. With stdout_only, stderr is discarded so out is exactly what scripts see. */
static int run_cli_with(const char *dsn, bool stdout_only, char **out, const char *const *args)
{
    char dsn_env[320], url_env[300];
    snprintf(dsn_env, sizeof dsn_env, "POSTGRES_DSN=%s", dsn ? dsn : P.dsn);
    snprintf(url_env, sizeof url_env, "NATS_URL=%s", N.url[0] ? N.url : "nats://127.0.0.1:1");
    const char *env[] = {"COMPANY_ID=" CO, dsn_env, url_env, NULL};
    const char *argv[32];
    int n = 0;
    if (stdout_only) {
        argv[n++] = "/bin/sh";
        argv[n++] = "-c";
        argv[n++] = "exec \"$@\" 2>/dev/null";
        argv[n++] = "sh";
    }
    argv[n++] = getenv("MES_SERVICE_BIN");
    argv[n++] = "exhausted";
    for (int i = 0; args[i] && n < 31; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    int rc = h_run(argv, env, 30000, out);
    fprintf(stderr, "--- exhausted %s%s -> %d\n%s\n", args[0] ? args[0] : "", args[0] && args[1] ? " ..." : "", rc,
            *out ? *out : "");
    return rc;
}

#define CLI(out, ...) run_cli_with(NULL, false, (out), (const char *const[]){__VA_ARGS__, NULL})
#define CLI_STDOUT(out, ...) run_cli_with(NULL, true, (out), (const char *const[]){__VA_ARGS__, NULL})

/* Inserts an exhausted_events row as the DLQ worker writes it: the DLQ record (SPEC 5.1) in dlq_payload, the JSON
 * original (or NULL for a base64 one) in original_payload. original is JSON text, or base64 text when b64. Returns
 * the row id. */
static long long add_row(const char *subject, const char *original, bool b64, const char *error, int seq)
{
    const char *stream = strncmp(subject, "v1.history.", 11) == 0 ? "wa_history_events_stream" : "wa_events_stream";
    char rec[8192], orig_col[4096];
    snprintf(rec, sizeof rec,
             "{\"source_subject\":\"%s\",\"company\":\"" CO "\",\"original_payload\":%s%s%s,"
             "\"original_payload_encoding\":\"%s\",\"error\":\"%s\",\"error_type\":\"retryable\","
             "\"error_class\":\"database\",\"retry_count\":5,\"max_retry\":5,\"source_stream\":\"%s\","
             "\"source_sequence\":%d,\"source_message_id\":\"%s:%d\",\"ts\":\"2026-01-02T03:04:05.123456Z\"}",
             subject, b64 ? "\"" : "", original, b64 ? "\"" : "", b64 ? "base64" : "json", error, stream, seq, stream,
             seq);
    snprintf(orig_col, sizeof orig_col, b64 ? "NULL" : "$j$%s$j$::jsonb", original);
    return h_pg_int(&P,
                    "INSERT INTO " SCH ".exhausted_events (company_id, source_subject, last_error, retry_count,"
                    " event_timestamp, dlq_payload, original_payload, dlq_message_id)"
                    " VALUES ('" CO "', $j$%s$j$, $j$%s$j$, 10, '2026-01-02T03:04:05.123456Z', $j$%s$j$::jsonb, %s,"
                    " 'dlq:%s:%d') RETURNING id",
                    subject, error, rec, orig_col, stream, seq);
}

/* The "id" of every object in list --json output, in order; -1 when the output is not a JSON array of rows. */
static int json_ids(const char *text, long long *ids, int max)
{
    json_doc_t d;
    char err[128] = "";
    int n = -1;
    json_doc_init(&d);
    if (!text || json_parse(&d, text, strlen(text), err, sizeof err) != JSON_OK || d.toks[0].type != JSON_ARRAY) {
        fprintf(stderr, "not a JSON array (%s): %s\n", err, text ? text : "(null)");
        goto out;
    }
    n = 0;
    for (uint32_t i = 1; n < (int)d.toks[0].count; i = d.toks[i].skip) {
        int id = json_obj_get(&d, text, i, "id");
        int64_t v;
        if (d.toks[i].type != JSON_OBJECT || id < 0 || !json_num_to_i64(text, &d.toks[id], &v)) {
            n = -1;
            break;
        }
        if (n < max)
            ids[n] = v;
        n++;
    }
out:
    json_doc_free(&d);
    return n;
}

static char *id_str(long long id)
{
    static char s[4][24];
    static int next;
    char *p = s[next++ % 4];
    snprintf(p, sizeof s[0], "%lld", id);
    return p;
}

TEST(list_shows_rows_and_json_is_valid)
{
    REQUIRE(it_up(CO, NO_ENV));
    long long a = add_row("v1.chats.upsert.acme", CHAT_JSON, false,
                          "SQLSTATE 23505: duplicate key value violates unique constraint chats_chat_id_key "
                          "TAIL-THAT-IS-CUT",
                          11);
    long long b = add_row("v1.messages.update.acme", "{\"message_id\":\"m-9\",\"status\":\"read\"}", false,
                          "not_found: message m-9 does not exist", 12);
    REQUIRE(a > 0 && b > a);

    char *out = NULL;
    CHECK_EQ_INT(CLI(&out, "list"), 0);
    CHECK_CONTAINS(out, "ID");
    CHECK_CONTAINS(out, "SUBJECT");
    CHECK_CONTAINS(out, "LAST_ERROR");
    CHECK_CONTAINS(out, "v1.chats.upsert.acme");
    CHECK_CONTAINS(out, "v1.messages.update.acme");
    CHECK_CONTAINS(out, "not_found: message m-9 does not exist");
    CHECK_CONTAINS(out, "SQLSTATE 23505: duplicate key value violates unique const...");
    CHECK(out && !strstr(out, "TAIL-THAT-IS-CUT"));
    /* Oldest first, aligned: the subject column starts at the same offset on both rows. */
    const char *ra = out ? strstr(out, "v1.chats.upsert.acme") : NULL, *rb = out ? strstr(out, "v1.messages") : NULL;
    CHECK(ra && rb && ra < rb);
    if (ra && rb) {
        const char *la = ra, *lb = rb;
        while (la > out && la[-1] != '\n')
            la--;
        while (lb > out && lb[-1] != '\n')
            lb--;
        CHECK_EQ_INT(ra - la, rb - lb);
    }
    free(out);

    CHECK_EQ_INT(CLI_STDOUT(&out, "list", "--json"), 0);
    long long ids[4];
    CHECK_EQ_INT(json_ids(out, ids, 4), 2);
    CHECK_EQ_INT(ids[0], a);
    CHECK_EQ_INT(ids[1], b);
    /* Every column, jsonb columns as JSON values, big numbers exactly as stored. */
    const char *const columns[] = {"\"created_at\"",
                                   "\"company_id\"",
                                   "\"source_subject\"",
                                   "\"last_error\"",
                                   "\"retry_count\"",
                                   "\"event_timestamp\"",
                                   "\"dlq_payload\"",
                                   "\"original_payload\"",
                                   "\"resolved\"",
                                   "\"resolved_at\"",
                                   "\"notes\"",
                                   "\"dlq_message_id\"",
                                   NULL};
    for (int i = 0; columns[i]; i++)
        CHECK_CONTAINS(out, columns[i]);
    CHECK_CONTAINS(out, "12345678901234567890");
    CHECK_CONTAINS(out, "\"error_class\": \"database\"");
    free(out);
}

TEST(list_unresolved_and_subject_filters_and_exit_1_when_nothing_matches)
{
    REQUIRE(it_up(CO, NO_ENV));
    long long open_chat = add_row("v1.chats.upsert.acme", CHAT_JSON, false, "e1", 1);
    long long done_msg = add_row("v1.messages.upsert.acme", "{\"message_id\":\"m1\"}", false, "e2", 2);
    long long old_chat = add_row("v1.chats.upsert.acme", CHAT_JSON, false, "e3", 3);
    REQUIRE(h_pg_exec(&P, "UPDATE " SCH ".exhausted_events SET resolved = true, resolved_at = now() WHERE id = %lld",
                      done_msg));
    REQUIRE(h_pg_exec(&P, "UPDATE " SCH ".exhausted_events SET created_at = now() - interval '3 days' WHERE id = %lld",
                      old_chat));
    char *out = NULL;
    long long ids[4];

    CHECK_EQ_INT(CLI_STDOUT(&out, "list", "--unresolved", "--json"), 0);
    CHECK_EQ_INT(json_ids(out, ids, 4), 2);
    CHECK(ids[0] == open_chat && ids[1] == old_chat);
    free(out);

    CHECK_EQ_INT(CLI_STDOUT(&out, "list", "--subject", "v1.messages.upsert.acme", "--json"), 0);
    CHECK_EQ_INT(json_ids(out, ids, 4), 1);
    CHECK_EQ_INT(ids[0], done_msg);
    free(out);

    /* A base subject without the tenant token means the tenant's subject. */
    CHECK_EQ_INT(CLI_STDOUT(&out, "list", "--subject=v1.chats.upsert", "--json"), 0);
    CHECK_EQ_INT(json_ids(out, ids, 4), 2);
    free(out);

    CHECK_EQ_INT(CLI_STDOUT(&out, "list", "--since", "1d", "--json"), 0);
    CHECK_EQ_INT(json_ids(out, ids, 4), 2);
    CHECK(ids[0] == open_chat && ids[1] == done_msg);
    free(out);

    char *since = h_pg_str(&P, "SELECT to_char(now() AT TIME ZONE 'UTC' - interval '2 days',"
                               " 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')");
    REQUIRE(since);
    CHECK_EQ_INT(CLI_STDOUT(&out, "list", "--unresolved", "--since", since, "--json"), 0);
    CHECK_EQ_INT(json_ids(out, ids, 4), 1);
    CHECK_EQ_INT(ids[0], open_chat);
    free(out);
    free(since);

    /* --limit keeps the newest rows. */
    CHECK_EQ_INT(CLI_STDOUT(&out, "list", "--limit", "1", "--json"), 0);
    CHECK_EQ_INT(json_ids(out, ids, 4), 1);
    CHECK_EQ_INT(ids[0], old_chat);
    free(out);

    CHECK_EQ_INT(CLI(&out, "list", "--subject", "v1.contacts.upsert.acme"), 1);
    CHECK_CONTAINS(out, "no matching");
    free(out);
    CHECK_EQ_INT(CLI_STDOUT(&out, "list", "--unresolved", "--subject", "v1.messages.upsert.acme", "--json"), 1);
    CHECK_EQ_INT(json_ids(out, ids, 4), 0);
    free(out);
    CHECK_EQ_INT(CLI(&out, "list", "--since", "2099-01-01T00:00:00+07:00"), 1);
    free(out);
}

TEST(show_prints_every_column)
{
    REQUIRE(it_up(CO, NO_ENV));
    long long id = add_row("v1.chats.upsert.acme", CHAT_JSON, false, "SQLSTATE 22001: value too long", 5);
    REQUIRE(id > 0);
    REQUIRE(h_pg_exec(&P,
                      "UPDATE " SCH ".exhausted_events SET notes = 'first line' || E'\\n' || 'second line'"
                      " WHERE id = %lld",
                      id));
    char *out = NULL;
    CHECK_EQ_INT(CLI(&out, "show", "--id", id_str(id)), 0);
    const char *const columns[] = {"id ",          "created_at ", "company_id ",      "source_subject ",
                                   "retry_count ", "last_error ", "event_timestamp ", "resolved ",
                                   "resolved_at ", "notes ",      "dlq_message_id ",  "original_payload ",
                                   "dlq_payload ", NULL};
    for (int i = 0; columns[i]; i++)
        CHECK_CONTAINS(out, columns[i]);
    CHECK_CONTAINS(out, "v1.chats.upsert.acme");
    CHECK_CONTAINS(out, "SQLSTATE 22001: value too long");
    CHECK_CONTAINS(out, "dlq:wa_events_stream:5");
    CHECK_CONTAINS(out, "false");
    /* jsonb_pretty: one key per line, indented; continuation lines stay under the value column. */
    CHECK_CONTAINS(out, "    \"error_class\": \"database\",\n");
    CHECK_CONTAINS(out, "\"source_sequence\": 5");
    CHECK_CONTAINS(out, "12345678901234567890");
    CHECK_CONTAINS(out, "first line\n                  second line");
    free(out);

    CHECK_EQ_INT(CLI_STDOUT(&out, "show", "--id", id_str(id), "--json"), 0);
    json_doc_t d;
    char err[128];
    json_doc_init(&d);
    CHECK(out && json_parse(&d, out, strlen(out), err, sizeof err) == JSON_OK && d.toks[0].type == JSON_OBJECT &&
          d.toks[0].count == 13);
    json_doc_free(&d);
    free(out);

    CHECK_EQ_INT(CLI(&out, "show", "--id", "999999"), 1);
    CHECK_CONTAINS(out, "no exhausted event 999999");
    free(out);
}

TEST(replay_republishes_original_and_the_event_is_applied)
{
    REQUIRE(it_up(CO, NO_ENV));
    long long id = add_row("v1.chats.upsert.acme", CHAT_JSON, false, "SQLSTATE 57014: statement timeout", 42);
    REQUIRE(id > 0);
    char *out = NULL;
    CHECK_EQ_INT(CLI(&out, "replay", "--id", id_str(id)), 0);
    CHECK_CONTAINS(out, "replayed");
    CHECK_CONTAINS(out, "v1.chats.upsert.acme");
    free(out);

    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".chats WHERE chat_id = 'replayed-1'"), 1);
    CHECK_EQ_INT(h_pg_int(&P,
                          "SELECT count(*) FROM " SCH ".chats WHERE chat_id = 'replayed-1'"
                          " AND last_message::text LIKE '%%12345678901234567890%%'"
                          " AND last_metadata->>'message_id' LIKE 'replay:%lld:%%'",
                          id),
                 1);
    CHECK_EQ_INT(h_pg_int(&P,
                          "SELECT count(*) FROM " SCH ".exhausted_events WHERE id = %lld AND resolved"
                          " AND resolved_at IS NOT NULL"
                          " AND notes LIKE 'replayed at %%Z to v1.chats.upsert.acme (stream seq 1)'",
                          id),
                 1);
    CHECK_EQ_INT(h_stream_count(&N, "wa_events_stream", "v1.chats.upsert.acme"), 1);

    /* Nothing unresolved is left. */
    CHECK_EQ_INT(CLI(&out, "replay", "--all-unresolved"), 1);
    free(out);
    CHECK_EQ_INT(CLI(&out, "replay", "--id", "999999"), 1);
    free(out);
}

TEST(replay_decodes_base64_originals)
{
    REQUIRE(it_up(CO, NO_ENV));
    static const char original[] = "{\"chat_id\":\"b64-chat\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\"}";
    buf_t b64;
    buf_init(&b64);
    text_base64_append(&b64, (const unsigned char *)original, strlen(original));
    long long id = add_row("v1.chats.upsert.acme", b64.data, true, "unmarshal: invalid UTF-8 at byte 3", 7);
    long long bad = add_row("v1.chats.upsert.acme", "not*base64", true, "unmarshal", 8);
    buf_free(&b64);
    REQUIRE(id > 0 && bad > id);

    char *out = NULL;
    CHECK_EQ_INT(CLI_STDOUT(&out, "replay", "--all-unresolved", "--json"), 3);
    CHECK_CONTAINS(out, "\"status\":\"replayed\"");
    CHECK_CONTAINS(out, "\"status\":\"refused\"");
    CHECK_CONTAINS(out, "not valid base64");
    json_doc_t d;
    char err[128];
    json_doc_init(&d);
    CHECK(out && json_parse(&d, out, strlen(out), err, sizeof err) == JSON_OK && d.toks[0].count == 2);
    json_doc_free(&d);
    free(out);

    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".chats WHERE chat_id = 'b64-chat'"), 1);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".exhausted_events WHERE resolved"), 1);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".exhausted_events WHERE id = %lld AND resolved", id), 1);
}

TEST(replay_fetches_truncated_originals_from_the_source_stream)
{
    REQUIRE(it_up(CO, NO_ENV));
    static const char original[] = "{\"chat_id\":\"big-chat\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\"}";
    REQUIRE(it_pub("v1.chats.upsert", CO, original, "big-1")); /* stream sequence 1 */
    REQUIRE(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".chats WHERE chat_id = 'big-chat'") == 1);
    REQUIRE(h_pg_exec(&P, "DELETE FROM " SCH ".chats"));

    /* The DLQ record kept only a base64 prefix ("eyJj" = '{"c'). */
    long long id = add_row("v1.chats.upsert.acme", "eyJj", true, "too large", 1);
    long long gone = add_row("v1.chats.upsert.acme", "eyJj", true, "too large", 999);
    REQUIRE(h_pg_exec(&P, "UPDATE " SCH ".exhausted_events SET dlq_payload = dlq_payload ||"
                          " '{\"original_payload_truncated\":true,\"original_payload_size\":600000}'::jsonb"));

    char *out = NULL;
    CHECK_EQ_INT(CLI(&out, "replay", "--id", id_str(id)), 0);
    free(out);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".chats WHERE chat_id = 'big-chat'"), 1);

    CHECK_EQ_INT(CLI(&out, "replay", "--id", id_str(gone)), 3);
    CHECK_CONTAINS(out, "gone from stream wa_events_stream (sequence 999)");
    free(out);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".exhausted_events WHERE id = %lld AND resolved", gone), 0);
}

TEST(replay_refuses_another_tenants_subject)
{
    REQUIRE(it_up(CO, NO_ENV));
    long long foreign_subject = add_row("v1.chats.upsert.globex", CHAT_JSON, false, "e", 1);
    long long not_an_event = add_row("v1.dlq.acme", CHAT_JSON, false, "e", 2);
    long long foreign_row = add_row("v1.chats.upsert.acme", CHAT_JSON, false, "e", 3);
    REQUIRE(h_pg_exec(&P, "UPDATE " SCH ".exhausted_events SET company_id = 'globex' WHERE id = %lld", foreign_row));
    char *out = NULL;

    CHECK_EQ_INT(CLI(&out, "replay", "--id", id_str(foreign_subject)), 3);
    CHECK_CONTAINS(out, "source subject 'v1.chats.upsert.globex' is not an event subject of company acme");
    free(out);
    CHECK_EQ_INT(CLI(&out, "replay", "--id", id_str(not_an_event)), 3);
    CHECK_CONTAINS(out, "source subject 'v1.dlq.acme' is not an event subject of company acme");
    free(out);
    /* A row of another company is not this tenant's to touch: it does not match at all. */
    CHECK_EQ_INT(CLI(&out, "replay", "--id", id_str(foreign_row)), 1);
    free(out);
    CHECK_EQ_INT(CLI(&out, "replay", "--all-unresolved"), 3);
    CHECK_CONTAINS(out, "0 replayed, 0 skipped, 2 refused, 0 failed");
    free(out);

    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".exhausted_events WHERE resolved"), 0);
    CHECK_EQ_INT(h_stream_count(&N, "wa_events_stream", "v1.chats.upsert.globex"), 0);
    CHECK_EQ_INT(it_dlq_count(CO), 0);
}

TEST(resolve_marks_row_with_note)
{
    REQUIRE(it_up(CO, NO_ENV));
    long long id = add_row("v1.contacts.upsert.acme", "{\"phone_number\":\"1\",\"agent_id\":\"a\"}", false, "e", 1);
    REQUIRE(id > 0);
    char *out = NULL;
    CHECK_EQ_INT(CLI(&out, "resolve", "--id", id_str(id), "--note", "fixed upstream; won't replay"), 0);
    CHECK_CONTAINS(out, "resolved exhausted event");
    free(out);
    CHECK_EQ_INT(h_pg_int(&P,
                          "SELECT count(*) FROM " SCH ".exhausted_events WHERE id = %lld AND resolved"
                          " AND resolved_at IS NOT NULL"
                          " AND notes LIKE 'resolved at %%Z: fixed upstream; won''t replay'",
                          id),
                 1);
    /* Notes accumulate. */
    CHECK_EQ_INT(CLI(&out, "resolve", "--id", id_str(id), "--note=checked again"), 0);
    free(out);
    CHECK_EQ_INT(h_pg_int(&P,
                          "SELECT count(*) FROM " SCH ".exhausted_events WHERE id = %lld"
                          " AND notes LIKE '%%won''t replay' || E'\\n' || 'resolved at %%: checked again'",
                          id),
                 1);
    CHECK_EQ_INT(CLI(&out, "resolve", "--id", "999999", "--note", "x"), 1);
    free(out);
}

/* No servers: usage is checked before any connection (the DSN points nowhere). */
TEST(bad_usage_exits_2)
{
    static const char *const cases[][6] = {
        {NULL},
        {"--help", NULL},
        {"frobnicate", NULL},
        {"list", "--bogus", NULL},
        {"list", "extra", NULL},
        {"list", "--note", "x", NULL},
        {"list", "--since", "yesterday", NULL},
        {"list", "--since", "2024-02-30T00:00:00Z", NULL},
        {"list", "--since", "2024-01-01T25:00:00Z", NULL},
        {"list", "--limit", "0", NULL},
        {"list", "--json=yes", NULL},
        {"show", NULL},
        {"show", "--id", NULL},
        {"show", "--id", "abc", NULL},
        {"show", "--id", "0", NULL},
        {"show", "--id", "-5", NULL},
        {"show", "--id", "99999999999999999999", NULL},
        {"replay", NULL},
        {"replay", "--id", "1", "--all-unresolved", NULL},
        {"resolve", "--id", "1", NULL},
        {"resolve", "--id", "1", "--note", "  ", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out = NULL;
        const char *args[7] = {0};
        for (int k = 0; k < 6 && cases[i][k]; k++)
            args[k] = cases[i][k];
        CHECK_EQ_INT(run_cli_with("host=127.0.0.1 port=1 dbname=none", false, &out, args), 2);
        CHECK_CONTAINS(out, "usage: message-event-service");
        free(out);
    }
}

TEST(unreachable_database_exits_3)
{
    char *out = NULL;
    const char *args[] = {"list", NULL};
    CHECK_EQ_INT(run_cli_with("host=127.0.0.1 port=1 dbname=none", false, &out, args), 3);
    CHECK_CONTAINS(out, "cannot use PostgreSQL");
    free(out);
}
