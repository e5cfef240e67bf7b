/* test_dlq_hostile.c - DLQ records whose exhausted_events row PostgreSQL refuses as it is (issue 17, class 1): each
 * ends as exactly one row, at once, never NAKed until JetStream gives up. */
#include <stdlib.h>
#include <string.h>

#include "itest.h"

#define CO "acme"
#define SCH "daisi_acme"

static const char *const FAST[] = {"NATS_DLQBASEDELAY=200ms", "NATS_DLQMAXDELAY=1s", "NATS_DLQMAXRETRIES=3", NULL};

/* Publishes a hand-made DLQ record (SPEC 5.1) with the given source subject, ts and JSON original. */
static bool pub_record(const char *source_subject, const char *ts, const char *original, const char *msg_id)
{
    char body[8192];
    snprintf(body, sizeof body,
             "{\"source_subject\":\"%s\",\"company\":\"" CO "\",\"original_payload\":%s,"
             "\"original_payload_encoding\":\"json\",\"error\":\"test\",\"error_type\":\"fatal\",\"error_class\":"
             "\"validation\",\"retry_count\":1,\"max_retry\":5,\"source_stream\":\"wa_events_stream\","
             "\"source_sequence\":42,\"source_message_id\":\"src-1\",\"ts\":\"%s\"}",
             source_subject, original, ts);
    return h_publish(&N, "v1.dlq." CO, body, strlen(body), msg_id);
}

/* One row, stored without a single NAK of the record. */
static void check_one_row_at_once(void)
{
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".exhausted_events"), 1);
    int64_t end = h_now_ms() + 5000;
    while (h_now_ms() < end && h_metric(S.http_port, "dlq_tasks_dropped_total{company_id=\"acme\"}") < 1)
        h_sleep_ms(50);
    CHECK_EQ_INT(h_metric(S.http_port, "dlq_tasks_dropped_total{company_id=\"acme\"}"), 1);
    CHECK_EQ_INT(h_metric(S.http_port, "dlq_task_retries_total{company_id=\"acme\"}"), 0);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".exhausted_events"), 1);
}

TEST(an_original_jsonb_cannot_hold_is_stored_degraded_as_base64_at_once)
{
    REQUIRE(it_up(CO, FAST));
    /* 1e131072 is valid JSON, but beyond jsonb's numeric range (22003). */
    REQUIRE(
        pub_record("v1.chats.upsert." CO, "2026-11-22T10:00:00Z", "{\"chat_id\":\"x\",\"extra\":1e131072}", "h-num"));
    check_one_row_at_once();
    char *row = h_pg_str(&P, "SELECT concat_ws('|', source_subject, dlq_payload->>'degraded',"
                             " convert_from(decode(original_payload #>> '{}', 'base64'), 'UTF8'),"
                             " event_timestamp IS NULL, last_error LIKE '%%stored degraded%%22003%%', dlq_message_id)"
                             " FROM " SCH ".exhausted_events");
    CHECK_EQ_STR(row, "v1.chats.upsert.acme|true|{\"chat_id\":\"x\",\"extra\":1e131072}|t|t|h-num");
    free(row);
}

TEST(an_impossible_record_ts_gives_a_null_event_timestamp_not_a_refused_row)
{
    REQUIRE(it_up(CO, FAST));
    REQUIRE(pub_record("v1.chats.upsert." CO, "2024-13-45T25:61:61Z", "{\"chat_id\":\"x\"}", "h-ts"));
    check_one_row_at_once();
    char *row = h_pg_str(&P, "SELECT concat_ws('|', event_timestamp IS NULL, original_payload->>'chat_id',"
                             " dlq_payload->>'ts') FROM " SCH ".exhausted_events");
    CHECK_EQ_STR(row, "t|x|2024-13-45T25:61:61Z");
    free(row);
}

TEST(a_long_non_ascii_subject_is_cut_between_characters_in_the_row)
{
    REQUIRE(it_up(CO, FAST));
    char subject[256] = "";
    for (int i = 0; i < 70; i++)
        strcat(subject, "\xc3\xa9"); /* é: a byte cut would split one (22021) */
    REQUIRE(pub_record(subject, "2026-11-22T10:00:00Z", "{\"chat_id\":\"x\"}", "h-subject"));
    check_one_row_at_once();
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".exhausted_events WHERE last_error LIKE '%%another tenant%%'"
                              " AND source_subject = repeat(chr(233), 70)"),
                 1);
}

TEST(a_nats_msg_id_that_is_not_utf8_keys_the_row_by_stream_sequence)
{
    REQUIRE(it_up(CO, FAST));
    REQUIRE(pub_record("v1.chats.upsert." CO, "2026-11-22T10:00:00Z", "{\"chat_id\":\"x\"}", "bad-\xff\xfe-id"));
    check_one_row_at_once();
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".exhausted_events WHERE dlq_message_id = 'dlq_stream:1'"),
                 1);
}

/* ---- records that hold a truncated original (over 512 KiB; issue 17, class 4) ---- */

static const char *const PATIENT[] = {"NATS_DLQBASEDELAY=200ms", "NATS_DLQMAXDELAY=500ms", "NATS_DLQMAXRETRIES=9",
                                      NULL};

TEST(a_large_update_before_its_upsert_is_applied_from_its_full_original_not_exhausted_as_truncated)
{
    REQUIRE(it_up(CO, PATIENT));
    /* A legal 600 KB messages.update (an unknown key carries the bulk): its DLQ record embeds only a prefix. */
    size_t pad = 600000;
    char *ev = malloc(pad + 128);
    REQUIRE(ev != NULL);
    int n = snprintf(ev, 128, "{\"message_id\":\"big\",\"status\":\"read\",\"padding\":\"");
    memset(ev + n, 'p', pad);
    strcpy(ev + n + pad, "\"}");
    REQUIRE(it_pub("v1.messages.update", CO, ev, "big-upd"));
    free(ev);
    CHECK_EQ_INT(it_dlq_wait(CO, 1, 20000), 1);
    REQUIRE(it_pub("v1.messages.upsert", CO,
                   "{\"message_id\":\"big\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"OUT\","
                   "\"status\":\"sent\",\"message_timestamp\":1700000000}",
                   "big-ups"));
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 30000,
                               "SELECT count(*) FROM " SCH ".messages WHERE message_id = 'big'"
                               " AND status = 'read'"),
                 1);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".exhausted_events"), 0);
}

TEST(a_truncated_record_that_cannot_get_better_keeps_its_own_error)
{
    REQUIRE(it_up(CO, FAST));
    /* 1 MB of garbage: not JSON, so the record's error is an unmarshal error on the whole body, and its original is a
     * truncated base64 prefix that must not be re-parsed into a different, misleading error. */
    size_t len = 1000000;
    char *junk = malloc(len + 1);
    REQUIRE(junk != NULL);
    memset(junk, 'z', len);
    junk[len] = '\0';
    REQUIRE(it_pub("v1.chats.upsert", CO, junk, "junk"));
    free(junk);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".exhausted_events"), 1);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".exhausted_events WHERE last_error = dlq_payload->>'error'"
                              " AND (dlq_payload->>'original_payload_truncated')::boolean"),
                 1);
}
