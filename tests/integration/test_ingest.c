/* test_ingest.c - the ten subjects end to end against real NATS + PostgreSQL: rows, write rules, DLQ decisions. */
#include <signal.h>
#include <time.h>

#include <nats/nats.h>

#include "itest.h"

#define CO "acme"
#define SCH "daisi_acme"

static const char *const NO_ENV[] = {NULL};

TEST(chats_upsert_stores_exact_row_with_metadata)
{
    REQUIRE(it_up(CO, NO_ENV));
    REQUIRE(it_pub("v1.chats.upsert", CO,
                   "{\"chat_id\":\"c1\",\"jid\":\"628@s.whatsapp.net\",\"agent_id\":\"ag1\",\"phone_number\":\"+62 8\","
                   "\"push_name\":\"Budi\",\"group_name\":\"G\",\"custom_name\":\"Cus\",\"is_group\":true,"
                   "\"not_spam\":false,\"unread_count\":3,\"conversation_timestamp\":1700000000,"
                   "\"last_message\":{\"text\":\"hi\",\"n\":12345678901234567890}}",
                   "m-c1"));
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".chats"), 1);
    char *row = h_pg_str(&P, "SELECT concat_ws('|', chat_id, jid, agent_id, phone_number, push_name, group_name,"
                             " custom_name, is_group, not_spam, unread_count, conversation_timestamp, company_id,"
                             " last_message->>'text', last_metadata->>'stream', last_metadata->>'message_id',"
                             " last_metadata->>'message_subject', last_metadata->>'consumer')"
                             " FROM " SCH ".chats");
    CHECK_EQ_STR(row, "c1|628@s.whatsapp.net|ag1|+62 8|Budi|G|Cus|t|f|3|1700000000|acme|hi|wa_events_stream|m-c1|"
                      "v1.chats.upsert.acme|wa_listener_acme_chats_upsert");
    free(row);
    /* Big integers inside JSON objects are stored from the original text, not through a double. */
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".chats WHERE last_message::text LIKE"
                              " '%%12345678901234567890%%'"),
                 1);
    CHECK_EQ_INT(
        h_pg_int(&P, "SELECT count(*) FROM " SCH ".chats WHERE created_at IS NOT NULL AND updated_at IS NOT NULL"), 1);
}

TEST(chats_upsert_present_fields_overwrite_absent_keep_and_older_does_not_regress)
{
    REQUIRE(it_up(CO, NO_ENV));
    it_pub("v1.chats.upsert", CO,
           "{\"chat_id\":\"c2\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\",\"push_name\":\"new\","
           "\"unread_count\":5,\"conversation_timestamp\":2000,\"last_message\":{\"t\":\"newest\"}}",
           NULL);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".chats"), 1);
    /* Older event: must not overwrite push_name/unread/last_message, nor move the timestamp back. */
    it_pub("v1.chats.upsert", CO,
           "{\"chat_id\":\"c2\",\"jid\":\"j2\",\"agent_id\":\"a2\",\"phone_number\":\"2\",\"push_name\":\"old\","
           "\"unread_count\":1,\"conversation_timestamp\":1000,\"last_message\":{\"t\":\"old\"},\"custom_name\":\"X\"}",
           NULL);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".chats WHERE custom_name = 'X'"), 1);
    char *row = h_pg_str(&P, "SELECT concat_ws('|', jid, agent_id, phone_number, push_name, unread_count,"
                             " conversation_timestamp, last_message->>'t') FROM " SCH ".chats");
    CHECK_EQ_STR(row, "j|a|1|new|5|2000|newest");
    free(row);
    /* Event without a timestamp is not older; absent fields keep the stored value. */
    it_pub("v1.chats.upsert", CO,
           "{\"chat_id\":\"c2\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\",\"group_name\":\"G2\"}", NULL);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".chats WHERE group_name = 'G2'"), 1);
    row = h_pg_str(&P, "SELECT concat_ws('|', push_name, unread_count, conversation_timestamp, custom_name)"
                       " FROM " SCH ".chats");
    CHECK_EQ_STR(row, "new|5|2000|X");
    free(row);
}

TEST(chats_update_sets_absolute_and_adds_delta_with_floor_zero)
{
    REQUIRE(it_up(CO, NO_ENV));
    it_pub("v1.chats.upsert", CO, "{\"chat_id\":\"c3\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\"}", NULL);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".chats"), 1);
    it_pub("v1.chats.update", CO, "{\"chat_id\":\"c3\",\"unread_count\":5}", NULL);
    CHECK_EQ_INT(h_pg_wait_int(&P, 5, 20000, "SELECT unread_count FROM " SCH ".chats"), 5);
    it_pub("v1.chats.update", CO, "{\"id\":\"c3\",\"unread_delta\":3}", NULL);
    CHECK_EQ_INT(h_pg_wait_int(&P, 8, 20000, "SELECT unread_count FROM " SCH ".chats"), 8);
    it_pub("v1.chats.update", CO, "{\"chat_id\":\"c3\",\"unread_delta\":-100,\"conversation_timestamp\":77}", NULL);
    CHECK_EQ_INT(h_pg_wait_int(&P, 0, 20000, "SELECT unread_count FROM " SCH ".chats"), 0);
    CHECK_EQ_INT(h_pg_wait_int(&P, 77, 20000, "SELECT conversation_timestamp FROM " SCH ".chats"), 77);
    /* A burst of deltas on one chat: every one counts (atomic in SQL, stream order within a batch). */
    for (int i = 0; i < 100; i++)
        it_pub("v1.chats.update", CO, "{\"chat_id\":\"c3\",\"unread_delta\":1}", NULL);
    CHECK_EQ_INT(h_pg_wait_int(&P, 100, 30000, "SELECT unread_count FROM " SCH ".chats"), 100);
    CHECK_EQ_INT(it_dlq_count(CO), 0);
}

TEST(update_before_upsert_goes_to_dlq_as_not_found)
{
    REQUIRE(it_up(CO, NO_ENV));
    it_pub("v1.chats.update", CO, "{\"chat_id\":\"ghost\",\"unread_count\":1}", "u-ghost");
    it_pub("v1.messages.update", CO, "{\"message_id\":\"ghost-m\",\"status\":\"read\"}", NULL);
    it_pub("v1.contacts.update", CO, "{\"phone_number\":\"999\",\"agent_id\":\"a\",\"push_name\":\"x\"}", NULL);
    CHECK_EQ_INT(it_dlq_wait(CO, 3, 20000), 3);
    char *t = it_dlq_text(CO);
    CHECK_CONTAINS(t, "\"error_class\":\"not_found\"");
    CHECK_CONTAINS(t, "chat 'ghost' not found");
    CHECK_CONTAINS(t, "\"source_subject\":\"v1.chats.update.acme\"");
    CHECK_CONTAINS(t, "\"original_payload_encoding\":\"json\"");
    CHECK_CONTAINS(t, "\"original_payload\":{\"chat_id\":\"ghost\",\"unread_count\":1}");
    CHECK_CONTAINS(t, "\"source_message_id\":\"u-ghost\"");
    free(t);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".chats"), 0);
}

TEST(messages_upsert_status_never_regresses_and_update_can_undelete)
{
    REQUIRE(it_up(CO, NO_ENV));
    const char *m = "{\"message_id\":\"m1\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"OUT\","
                    "\"status\":\"read\",\"message_text\":\"hello\",\"message_timestamp\":1700000000000,"
                    "\"from\":\"111\",\"to\":\"222\",\"key\":{\"id\":\"k1\",\"fromMe\":true},"
                    "\"message_obj\":{\"big\":98765432109876543210}}";
    it_pub("v1.messages.upsert", CO, m, NULL);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".messages"), 1);
    char *row =
        h_pg_str(&P, "SELECT concat_ws('|', message_id, from_phone, to_phone, status, message_text,"
                     " message_timestamp, message_date, key->>'id', is_deleted, company_id) FROM " SCH ".messages");
    CHECK_EQ_STR(row, "m1|111|222|read|hello|1700000000|2023-11-14|k1|f|acme");
    free(row);
    CHECK_EQ_INT(
        h_pg_int(&P, "SELECT count(*) FROM " SCH ".messages WHERE message_obj::text LIKE '%%98765432109876543210%%'"),
        1);
    /* A lower status does not regress; failed always applies. */
    it_pub("v1.messages.update", CO, "{\"message_id\":\"m1\",\"status\":\"delivered\",\"is_deleted\":true}", NULL);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".messages WHERE is_deleted"), 1);
    row = h_pg_str(&P, "SELECT status FROM " SCH ".messages");
    CHECK_EQ_STR(row, "read");
    free(row);
    it_pub("v1.messages.update", CO, "{\"id\":\"m1\",\"is_deleted\":false,\"status\":\"played\"}", NULL);
    CHECK_EQ_INT(
        h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".messages WHERE NOT is_deleted AND status = 'played'"),
        1);
    it_pub("v1.messages.upsert", CO,
           "{\"message_id\":\"m1\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"OUT\",\"status\":"
           "\"failed\",\"message_timestamp\":1700000000}",
           NULL);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".messages WHERE status = 'failed'"), 1);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".messages"), 1);
    /* The same message_id on today's date is a second row, in this month's partition (the first is in the default
     * one); an update by message_id applies to both. */
    char m2[256];
    snprintf(m2, sizeof m2,
             "{\"message_id\":\"m1\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"OUT\","
             "\"status\":\"sent\",\"message_timestamp\":%lld}",
             (long long)time(NULL));
    it_pub("v1.messages.upsert", CO, m2, NULL);
    CHECK_EQ_INT(h_pg_wait_int(&P, 2, 20000, "SELECT count(*) FROM " SCH ".messages"), 2);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(DISTINCT tableoid) FROM " SCH ".messages"), 2);
    it_pub("v1.messages.update", CO, "{\"message_id\":\"m1\",\"status\":\"played\",\"message_url\":\"u2\"}", NULL);
    CHECK_EQ_INT(h_pg_wait_int(&P, 2, 20000,
                               "SELECT count(*) FROM " SCH ".messages WHERE message_url = 'u2' AND status = 'played'"),
                 2);
    CHECK_EQ_INT(it_dlq_count(CO), 0);
}

TEST(message_without_timestamp_lands_on_epoch_date_and_redelivery_is_idempotent)
{
    REQUIRE(it_up(CO, NO_ENV));
    const char *m = "{\"message_id\":\"m2\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"OUT\"}";
    it_pub("v1.messages.upsert", CO, m, "dup-1");
    it_pub("v1.messages.upsert", CO, m, "dup-2"); /* a second copy with another id: same row */
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".messages"), 1);
    h_sleep_ms(300);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".messages WHERE message_date = '1970-01-01'"), 1);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".messages"), 1);
}

TEST(two_realtime_contacts_in_one_schema_and_update_applies_push_name)
{
    REQUIRE(it_up(CO, NO_ENV));
    it_pub("v1.contacts.upsert", CO,
           "{\"phone_number\":\"+62 811-1@s.whatsapp.net\",\"agent_id\":\"a\",\"push_name\":\"One\"}", NULL);
    it_pub("v1.contacts.upsert", CO, "{\"phone_number\":\"62822\",\"agent_id\":\"a\",\"push_name\":\"Two\"}", NULL);
    CHECK_EQ_INT(h_pg_wait_int(&P, 2, 20000, "SELECT count(*) FROM " SCH ".contacts"), 2);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(DISTINCT id) FROM " SCH ".contacts WHERE id <> ''"), 2);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".contacts WHERE phone_number = '628111'"), 1);
    it_pub("v1.contacts.update", CO, "{\"phone_number\":\"628111\",\"agent_id\":\"a\",\"push_name\":\"Uno\"}", NULL);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".contacts WHERE push_name = 'Uno'"), 1);
    char *row =
        h_pg_str(&P, "SELECT concat_ws('|', gender, status) FROM " SCH ".contacts WHERE phone_number = '628111'");
    CHECK_EQ_STR(row, "MALE|ACTIVE");
    free(row);
}

TEST(connection_update_stores_empty_strings_not_null_and_present_empty_overwrites)
{
    REQUIRE(it_up(CO, NO_ENV));
    it_pub("v1.connection.update", CO, "{\"agent_id\":\"ag\",\"status\":\"open\",\"phone_number\":\"628\"}", NULL);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".agents"), 1);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".agents WHERE qr_code = '' AND agent_name = '' AND"
                              " host_name = '' AND version = '' AND status = 'open' AND phone_number = '628'"),
                 1);
    it_pub("v1.connection.update", CO, "{\"agent_id\":\"ag\",\"qr_code\":\"QR\",\"agent_name\":\"Agent\"}", NULL);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".agents WHERE qr_code = 'QR'"), 1);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".agents WHERE status = 'open' AND agent_name = 'Agent'"), 1);
    it_pub("v1.connection.update", CO, "{\"agent_id\":\"ag\",\"qr_code\":\"\"}", NULL);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".agents WHERE qr_code = ''"), 1);
}

TEST(history_batch_writes_valid_items_and_sends_each_bad_item_to_dlq)
{
    REQUIRE(it_up(CO, NO_ENV));
    it_pub("v1.history.chats", CO,
           "{\"chats\":[{\"chat_id\":\"h1\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\",\"company_id\":"
           "\"acme\"},"
           "{\"chat_id\":\"\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\",\"company_id\":\"acme\"},"
           "{\"chat_id\":\"h3\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\",\"company_id\":\"acme\"}]}",
           "hist-1");
    it_pub("v1.history.messages", CO,
           "{\"agent_id\":\"a\",\"is_last_batch\":true,\"messages\":[{\"message_id\":\"hm1\",\"chat_id\":\"c\",\"jid\":"
           "\"j\","
           "\"flow\":\"IN\",\"from_phone\":\"628\",\"company_id\":\"acme\",\"message_timestamp\":1700000000}]}",
           NULL);
    it_pub("v1.history.contacts", CO,
           "{\"contacts\":[{\"phone_number\":\"1\",\"agent_id\":\"a\",\"company_id\":\"acme\"},"
           "{\"phone_number\":\"2\",\"agent_id\":\"a\",\"company_id\":\"acme\"}]}",
           NULL);
    CHECK_EQ_INT(h_pg_wait_int(&P, 2, 20000, "SELECT count(*) FROM " SCH ".chats"), 2);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".messages"), 1);
    CHECK_EQ_INT(h_pg_wait_int(&P, 2, 20000, "SELECT count(*) FROM " SCH ".contacts"), 2);
    CHECK_EQ_INT(it_dlq_wait(CO, 1, 20000), 1);
    char *t = it_dlq_text(CO);
    CHECK_CONTAINS(t, "\"item_index\":1");
    CHECK_CONTAINS(t, "chat_id");
    CHECK_CONTAINS(t, "\"source_subject\":\"v1.history.chats.acme\"");
    free(t);
    /* History messages do not onboard. */
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".onboarding_log"), 0);
}

TEST(malformed_json_becomes_dlq_record_with_base64_original)
{
    REQUIRE(it_up(CO, NO_ENV));
    it_pub("v1.chats.upsert", CO, "{not json", "bad-1");
    CHECK_EQ_INT(it_dlq_wait(CO, 1, 20000), 1);
    char *t = it_dlq_text(CO);
    CHECK_CONTAINS(t, "\"original_payload_encoding\":\"base64\"");
    CHECK_CONTAINS(t, "\"original_payload\":\"e25vdCBqc29u\"");
    CHECK_CONTAINS(t, "\"error_class\":\"unmarshal\"");
    CHECK_CONTAINS(t, "\"error_type\":\"fatal\"");
    free(t);
}

/* SPEC 4: a record that did not reach the DLQ means the original is NAKed, never acked; once the DLQ stream is
 * back, the redelivery stores the record (once, whatever was retried), and a whole batch of bad events still
 * gets one record each. */
TEST(dlq_publish_failure_naks_the_original_and_the_record_lands_once_the_dlq_stream_returns)
{
    REQUIRE(it_up(CO, NO_ENV));
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    REQUIRE(natsConnection_ConnectTo(&nc, N.url) == NATS_OK && natsConnection_JetStream(&js, nc, NULL) == NATS_OK);
    REQUIRE(js_DeleteStream(js, "dlq_stream", NULL, NULL) == NATS_OK);
    it_pub("v1.chats.upsert", CO, "{not json", "bad-nak-1");
    CHECK(h_svc_wait_log(&S, "DLQ publish failed; the event will be redelivered", 20000));
    char series[256];
    snprintf(series, sizeof series,
             "message_event_service_event_processing_actions_total{event_type=\"v1.chats.upsert\",company_id=\"%s\","
             "consumer_type=\"realtime\",action=\"nak_dlq_publish_fail\",error_type=\"unmarshal\"}",
             CO);
    CHECK(h_metric(S.http_port, series) >= 1);
    /* Not acked: nothing else may have happened to it (no ack_success / dlq_published_ack_success). */
    snprintf(series, sizeof series,
             "message_event_service_event_processing_actions_total{event_type=\"v1.chats.upsert\",company_id=\"%s\","
             "consumer_type=\"realtime\",action=\"dlq_published_ack_success\",error_type=\"unmarshal\"}",
             CO);
    CHECK(h_metric(S.http_port, series) <= 0);
    REQUIRE(h_streams_create(&N));
    for (int i = 0; i < 20; i++) {
        char id[32];
        snprintf(id, sizeof id, "bad-nak-b%d", i);
        it_pub("v1.chats.upsert", CO, "[1,2]", id);
    }
    CHECK_EQ_INT(it_dlq_wait(CO, 21, 30000), 21);
    h_sleep_ms(1500); /* a further redelivery would add nothing: records are de-duplicated by Nats-Msg-Id */
    CHECK_EQ_INT(it_dlq_count(CO), 21);
    CHECK(h_metric(S.http_port, series) >= 1);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
}

/* A backlog: every update is published after the upsert that creates its row, and the service starts with all of
 * it waiting. The update lanes would drain faster than the upsert lanes; they wait for them instead, so no update
 * finds its row missing (no DLQ record, no retry needed) and every update is applied. */
TEST(updates_in_a_backlog_never_overtake_the_upserts_published_before_them)
{
    enum { K = 1500 };
    REQUIRE(h_nats_start(&N) && h_pg_start(&P) && h_streams_create(&N));
    atexit(it_dump_log);
    char buf[256];
    for (int i = 0; i < K; i++) {
        snprintf(buf, sizeof buf, "{\"chat_id\":\"bk%d\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\"}", i);
        REQUIRE(it_pub("v1.chats.upsert", CO, buf, NULL));
        snprintf(buf, sizeof buf,
                 "{\"message_id\":\"bm%d\",\"chat_id\":\"bk%d\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"OUT\","
                 "\"status\":\"sent\",\"message_timestamp\":%d}",
                 i, i, 1700000000 + i);
        REQUIRE(it_pub("v1.messages.upsert", CO, buf, NULL));
    }
    for (int i = 0; i < K; i++) {
        snprintf(buf, sizeof buf, "{\"chat_id\":\"bk%d\",\"unread_delta\":1}", i);
        REQUIRE(it_pub("v1.chats.update", CO, buf, NULL));
        snprintf(buf, sizeof buf, "{\"message_id\":\"bm%d\",\"status\":\"read\"}", i);
        REQUIRE(it_pub("v1.messages.update", CO, buf, NULL));
    }
    REQUIRE(h_svc_start(&S, CO, &N, &P, NO_ENV) && h_svc_wait_ready(&S, 60000));
    CHECK_EQ_INT(h_pg_wait_int(&P, K, 60000, "SELECT count(*) FROM " SCH ".chats WHERE unread_count = 1"), K);
    CHECK_EQ_INT(h_pg_wait_int(&P, K, 60000, "SELECT count(*) FROM " SCH ".messages WHERE status = 'read'"), K);
    CHECK_EQ_INT(it_dlq_count(CO), 0);
}

/* message_event_service_events_<family>_total of a realtime lane of acme, as /metrics shows it now. */
static double lane_count(const char *family, const char *event_type)
{
    char series[256];
    snprintf(series, sizeof series,
             "message_event_service_events_%s_total{event_type=\"%s\",company_id=\"acme\",consumer_type=\"realtime\"}",
             family, event_type);
    return h_metric(S.http_port, series);
}

/* The one DLQ record of the chat 'poison', refused by PostgreSQL's CHECK constraint (SQLSTATE 23514). */
static void check_poison_dlq_record(void)
{
    CHECK_EQ_INT(it_dlq_wait(CO, 1, 20000), 1);
    char *t = it_dlq_text(CO);
    CHECK_CONTAINS(t, "23514");
    CHECK_CONTAINS(t, "\"chat_id\":\"poison\"");
    free(t);
}

/* Creates the schema (a first start), stops the service and makes PostgreSQL refuse the chat 'poison' (a CHECK
 * constraint stands for any data error the validation cannot foresee), so a backlog can be published before the
 * next start. */
static bool up_then_refuse_poison(void)
{
    return it_up(CO, NO_ENV) && h_svc_signal(&S, SIGTERM, 20000) == 0 &&
           h_pg_exec(&P, "ALTER TABLE " SCH ".chats ADD CONSTRAINT test_poison CHECK (chat_id <> 'poison')");
}

/* Publishes chats.upsert for chat <prefix><i>, or for 'poison' when bad. */
static bool pub_chat(const char *prefix, int i, bool bad)
{
    char buf[256];
    if (bad)
        snprintf(buf, sizeof buf, "{\"chat_id\":\"poison\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\"}");
    else
        snprintf(buf, sizeof buf, "{\"chat_id\":\"%s%d\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\"}",
                 prefix, i);
    return it_pub("v1.chats.upsert", CO, buf, NULL);
}

/* A batch that PostgreSQL refuses because of one event (a CHECK constraint added here stands for any data error the
 * validation cannot foresee) is bisected: the other 199 are committed without a redelivery, the bad one alone goes to
 * the DLQ with its SQLSTATE, and the isolation costs about 2 log2 n transactions, not n + 1. */
TEST(one_event_postgres_refuses_in_a_backlog_batch_is_isolated_by_bisection)
{
    enum { K = 200, BAD = 137 };
    REQUIRE(up_then_refuse_poison());
    for (int i = 0; i < K; i++)
        REQUIRE(pub_chat("bis", i, i == BAD));
    REQUIRE(h_svc_start(&S, CO, &N, &P, NO_ENV) && h_svc_wait_ready(&S, 60000));
    CHECK_EQ_INT(h_pg_wait_int(&P, K - 1, 30000, "SELECT count(*) FROM " SCH ".chats"), K - 1);
    check_poison_dlq_record();
    CHECK(h_svc_wait_log(&S, "bisected it to isolate the failing events", 10000));
    /* The fetch may split the backlog into more than one batch; the one holding the bad event logs its count. */
    char *log = h_svc_log(&S);
    const char *at = log ? strstr(log, "bisected it to isolate the failing events") : NULL;
    const char *tx = at ? strstr(at, "\"transactions\":") : NULL;
    long n_tx = tx ? strtol(tx + strlen("\"transactions\":"), NULL, 10) : -1;
    printf("isolating the bad event took %ld transactions\n", n_tx);
    CHECK(n_tx > 1 && n_tx <= 2 * 8 + 1); /* 2 ceil(log2 200) + 1 at most */
    const char *failed = at ? strstr(at, "\"failed\":1") : NULL;
    CHECK(failed != NULL);
    free(log);
    /* Nothing was redelivered: 200 received, 199 processed, 1 failed, exactly. */
    h_sleep_ms(300);
    CHECK_EQ_INT(lane_count("received", "v1.chats.upsert"), K);
    CHECK_EQ_INT(lane_count("processed", "v1.chats.upsert"), K - 1);
    CHECK_EQ_INT(lane_count("failed", "v1.chats.upsert"), 1);
}

/* A backlog on three subjects at once: the lanes' batches meet in groups (writer.c). One chat PostgreSQL refuses
 * fails its group; every lane of that group commits again on its own, so the messages and contacts of the same group
 * still land, and only the bad chat goes to the DLQ. */
TEST(one_bad_event_in_a_group_across_subjects_costs_only_itself)
{
    enum { K = 600 };
    REQUIRE(up_then_refuse_poison());
    char buf[512];
    for (int i = 0; i < K; i++) {
        REQUIRE(pub_chat("g", i, i == K - 20));
        snprintf(buf, sizeof buf,
                 "{\"message_id\":\"gm%d\",\"chat_id\":\"g%d\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"OUT\","
                 "\"status\":\"sent\",\"message_timestamp\":%d}",
                 i, i, 1700000000 + i);
        REQUIRE(it_pub("v1.messages.upsert", CO, buf, NULL));
        snprintf(buf, sizeof buf, "{\"agent_id\":\"a\",\"phone_number\":\"62%d\",\"push_name\":\"p%d\"}", 100000 + i,
                 i);
        REQUIRE(it_pub("v1.contacts.upsert", CO, buf, NULL));
    }
    /* One writer session for three busy lanes: batches queue behind each other and meet in groups. */
    static const char *const debug[] = {"LOG_LEVEL=debug", "DATABASE_WRITERS=1", NULL};
    REQUIRE(h_svc_start(&S, CO, &N, &P, debug) && h_svc_wait_ready(&S, 60000));
    CHECK_EQ_INT(h_pg_wait_int(&P, K - 1, 30000, "SELECT count(*) FROM " SCH ".chats"), K - 1);
    CHECK_EQ_INT(h_pg_wait_int(&P, K, 30000, "SELECT count(*) FROM " SCH ".messages"), K);
    /* How often batches met (debug log of writer.c): reported, not asserted, as it depends on scheduling. */
    char *log = h_svc_log(&S);
    int groups = 0, failed = 0;
    for (const char *p = log; p && (p = strstr(p, "\"msg\":\"group committed\"")) != NULL; p++) {
        groups++;
        const char *eol = strchr(p, '\n');
        const char *f = strstr(p, "\"result\":\"failed\"");
        failed += f && (!eol || f < eol);
    }
    free(log);
    printf("groups of several batches: %d, of which failed: %d\n", groups, failed);
    CHECK_EQ_INT(h_pg_wait_int(&P, K, 30000, "SELECT count(*) FROM " SCH ".contacts WHERE push_name LIKE 'p%%'"), K);
    check_poison_dlq_record();
    h_sleep_ms(300);
    CHECK_EQ_INT(lane_count("failed", "v1.chats.upsert"), 1);
    CHECK_EQ_INT(lane_count("processed", "v1.messages.upsert"), K);
    CHECK_EQ_INT(lane_count("processed", "v1.contacts.upsert"), K);
}

TEST(company_mismatch_and_foreign_tenant_subjects_are_never_written)
{
    REQUIRE(it_up(CO, NO_ENV));
    it_pub("v1.chats.upsert", "other", "{\"chat_id\":\"x\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\"}",
           NULL);
    it_pub("v1.chats.upsert", CO,
           "{\"chat_id\":\"y\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\",\"company_id\":\"other\"}",
           NULL);
    it_pub("v1.chats.upsert", CO, "{\"chat_id\":\"z\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\"}", NULL);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".chats"), 1);
    CHECK_EQ_INT(it_dlq_wait(CO, 1, 20000), 1);
    char *t = it_dlq_text(CO);
    CHECK_CONTAINS(t, "company_id mismatch");
    free(t);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".chats WHERE chat_id IN ('x', 'y')"), 0);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM pg_namespace WHERE nspname = 'daisi_other'"), 0);
}

TEST(same_key_burst_ends_in_stream_order)
{
    REQUIRE(it_up(CO, NO_ENV));
    char buf[256];
    for (int i = 1; i <= 60; i++) {
        snprintf(
            buf, sizeof buf,
            "{\"chat_id\":\"burst\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\",\"push_name\":\"v%d\"}", i);
        REQUIRE(it_pub("v1.chats.upsert", CO, buf, NULL));
    }
    char *v = NULL;
    int64_t end = h_now_ms() + 20000;
    while (h_now_ms() < end) {
        free(v);
        v = h_pg_str(&P, "SELECT push_name FROM " SCH ".chats WHERE chat_id = 'burst'");
        if (v && strcmp(v, "v60") == 0)
            break;
        h_sleep_ms(50);
    }
    CHECK_EQ_STR(v, "v60");
    free(v);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".chats"), 1);
}

/* A lane with a backlog takes several fetches at once (consumer.c, hold_max): while its batch waits in PostgreSQL,
 * its fetcher keeps filling the handoff slot with fetches of batchSize (16 here), up to four of them, and the lane
 * then commits them together, in stream order. The first batch is held by a lock on chats until the slot is full. */
TEST(a_lane_with_a_backlog_takes_several_fetches_at_once_in_stream_order)
{
    enum { CHATS = 30, VERSIONS = 20 };
    /* database.lockTimeout raised: the batch waits for the test's lock, never for a timer of its own. */
    static const char *const ENV[] = {"NATS_REALTIME_BATCHSIZE=16", "DATABASE_LOCKTIMEOUT=120s", NULL};
    REQUIRE(it_up(CO, ENV) && h_svc_signal(&S, SIGTERM, 20000) == 0);
    char buf[256];
    for (int v = 1; v <= VERSIONS; v++)
        for (int i = 0; i < CHATS; i++) {
            snprintf(buf, sizeof buf,
                     "{\"chat_id\":\"hold%d\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\","
                     "\"push_name\":\"v%d\"}",
                     i, v);
            REQUIRE(it_pub("v1.chats.upsert", CO, buf, NULL));
        }
    PGconn *lock = it_lock_tables(SCH ".chats");
    REQUIRE(lock && h_svc_start(&S, CO, &N, &P, ENV) && h_svc_wait_ready(&S, 60000));
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 30000,
                               "SELECT least(count(*), 1) FROM pg_stat_activity WHERE application_name ="
                               " 'message-event-service' AND wait_event_type = 'Lock'"),
                 1);
    /* Unacked: the batch held by the lock (16) and a full slot behind it (consumer.c: hold_max_of(16, 1000) = 64). */
    it_durable_t d = {0};
    int64_t end = h_now_ms() + 30000;
    while (h_now_ms() < end && !(it_durable_state("wa_listener_" CO "_chats_upsert", &d) && d.ack_pending >= 16 + 64))
        h_sleep_ms(50);
    CHECK_EQ_INT(d.ack_pending, 16 + 64);
    REQUIRE(it_unlock(lock));
    CHECK_EQ_INT(h_pg_wait_int(&P, CHATS, 30000,
                               "SELECT count(*) FROM " SCH ".chats WHERE chat_id LIKE 'hold%%' AND push_name = 'v%d'",
                               VERSIONS),
                 CHATS);
    const char *series = "message_event_service_batch_size_bucket{consumer_type=\"realtime\",le=\"16\"}";
    double small = h_metric(S.http_port, series),
           all = h_metric(S.http_port, "message_event_service_batch_size_count{consumer_type=\"realtime\"}");
    printf("realtime batches: %.0f, of at most one fetch (16): %.0f\n", all, small);
    CHECK(all > small);
    CHECK_EQ_INT(it_dlq_count(CO), 0);
}

/* The fetch loops' watch asks nats-server about a durable every 5 s (its ack floor, the pending gauge), but not while
 * the durable is delivering a backlog: nats-server 2.9.10 answers such a request with a pending count that has no
 * last sequence when the consumer stands in the stream's newest block, and then recounts the block for every message
 * it delivers (mes_nats.c, mes_nats_fetch_watch; bench-info-stall shows the cost). A lane with a batch size of 1 drains
 * a backlog in many small fetches for longer than 5 s; a core subscription sees every consumer info request the
 * service sends for that durable, and none may come while most of the backlog is still in the stream. */
static atomic_bool info_armed;          /* the service is ready: its startup asked already (subscribing) */
static atomic_llong info_rows_seen;     /* the test's latest count of committed rows */
static atomic_int info_early, info_all; /* requests while less than 99% was committed; all requests */

static void on_info_request(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    long long k = *(const long long *)closure;
    if (!atomic_load(&info_armed)) {
        natsMsg_Destroy(msg);
        return;
    }
    if (atomic_load(&info_rows_seen) < k - k / 100)
        atomic_fetch_add(&info_early, 1);
    atomic_fetch_add(&info_all, 1);
    natsMsg_Destroy(msg);
}

TEST(a_lane_draining_a_backlog_does_not_ask_for_consumer_info)
{
    static const long long K = 15000;
    static const char *const ENV[] = {"NATS_REALTIME_BATCHSIZE=1", NULL};
    REQUIRE(h_nats_start(&N) && h_pg_start(&P) && h_streams_create(&N));
    atexit(it_dump_log);
    char buf[256];
    for (long long i = 0; i < K; i++) {
        snprintf(buf, sizeof buf, "{\"chat_id\":\"ci%lld\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\"}",
                 i);
        REQUIRE(it_pub("v1.chats.upsert", CO, buf, NULL));
    }
    natsConnection *nc = NULL;
    natsSubscription *sub = NULL;
    REQUIRE(natsConnection_ConnectTo(&nc, N.url) == NATS_OK &&
            natsConnection_Subscribe(&sub, nc, "$JS.API.CONSUMER.INFO.wa_events_stream.wa_listener_" CO "_chats_upsert",
                                     on_info_request, (void *)&K) == NATS_OK &&
            natsConnection_Flush(nc) == NATS_OK);
    REQUIRE(h_svc_start(&S, CO, &N, &P, ENV) && h_svc_wait_ready(&S, 60000));
    atomic_store(&info_armed, true);
    int64_t t0 = h_now_ms(), end = t0 + 240000;
    long long rows = 0;
    while (rows < K && h_now_ms() < end) {
        rows = h_pg_int(&P, "SELECT count(*) FROM " SCH ".chats");
        atomic_store(&info_rows_seen, rows);
        h_sleep_ms(50);
    }
    int64_t took = h_now_ms() - t0;
    h_sleep_ms(8000); /* caught up: within 5 s (and a fetch wait) the watch asks again */
    printf("backlog of %lld drained in %.1f s; consumer info requests: %d while draining, %d in all\n", K,
           (double)took / 1000.0, atomic_load(&info_early), atomic_load(&info_all));
    CHECK_EQ_INT(rows, K);
    CHECK(took > 6000); /* the watch's 5 s check fell inside the drain, so the rule was exercised */
    CHECK_EQ_INT(atomic_load(&info_early), 0);
    CHECK(atomic_load(&info_all) >= 1); /* once nothing is pending it asks again */
    natsSubscription_Destroy(sub);
    natsConnection_Destroy(nc);
}

TEST(onboarding_creates_one_contact_and_one_log_row_per_agent_and_phone)
{
    REQUIRE(it_up(CO, NO_ENV));
    char buf[512];
    for (int i = 0; i < 3; i++) {
        snprintf(buf, sizeof buf,
                 "{\"message_id\":\"on%d\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"ag\",\"flow\":\"IN\","
                 "\"from_phone\":\"+62 877@s.whatsapp.net\",\"message_timestamp\":%d%s}",
                 i, 1700000000 + i,
                 i == 2 ? ",\"campaign\":{\"is_campaign\":true,\"tags\":\"promo,vip\",\"origin\":\"Ads\"}" : "");
        REQUIRE(it_pub("v1.messages.upsert", CO, buf, NULL));
    }
    it_pub("v1.messages.upsert", CO,
           "{\"message_id\":\"out1\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"ag\",\"flow\":\"OUT\",\"from_"
           "phone\":\"555\"}",
           NULL);
    CHECK_EQ_INT(h_pg_wait_int(&P, 4, 20000, "SELECT count(*) FROM " SCH ".messages"), 4);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".contacts WHERE tags LIKE '%%vip%%'"), 1);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".contacts"), 1);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".onboarding_log"), 1);
    char *row = h_pg_str(&P, "SELECT concat_ws('|', phone_number, agent_id, origin, tags, first_message_id, status)"
                             " FROM " SCH ".contacts");
    CHECK_EQ_STR(row, "62877|ag|DirectChat|Onboarded,promo,vip|on0|ACTIVE");
    free(row);
    row = h_pg_str(&P, "SELECT concat_ws('|', message_id, phone_number, \"timestamp\") FROM " SCH ".onboarding_log");
    CHECK_EQ_STR(row, "on0|62877|1700000000");
    free(row);
}

TEST(metrics_counters_equal_the_events_sent_in_a_known_mix)
{
    REQUIRE(it_up(CO, NO_ENV));
    for (int i = 0; i < 5; i++) {
        char buf[256];
        snprintf(buf, sizeof buf, "{\"chat_id\":\"k%d\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\"}", i);
        it_pub("v1.chats.upsert", CO, buf, NULL);
    }
    it_pub("v1.chats.upsert", CO, "[1,2]", NULL);
    it_pub("v1.chats.update", CO, "{\"chat_id\":\"nope\"}", NULL);
    CHECK_EQ_INT(h_pg_wait_int(&P, 5, 20000, "SELECT count(*) FROM " SCH ".chats"), 5);
    CHECK_EQ_INT(it_dlq_wait(CO, 2, 20000), 2);
    h_sleep_ms(300);
    CHECK_EQ_INT(lane_count("received", "v1.chats.upsert"), 6);
    CHECK_EQ_INT(lane_count("processed", "v1.chats.upsert"), 5);
    CHECK_EQ_INT(lane_count("failed", "v1.chats.upsert"), 1);
    CHECK_EQ_INT(lane_count("failed", "v1.chats.update"), 1);
    CHECK_EQ_INT(h_metric(S.http_port,
                          "message_event_service_event_processing_actions_total{event_type=\"v1.chats.upsert\",company_"
                          "id=\"acme\",consumer_type=\"realtime\",action=\"ack_success\",error_type=\"none\"}"),
                 5);
    CHECK_EQ_INT(
        h_metric(S.http_port,
                 "message_event_service_event_processing_actions_total{event_type=\"v1.chats.upsert\",company_id="
                 "\"acme\",consumer_type=\"realtime\",action=\"dlq_published_ack_success\",error_type=\"unmarshal\"}"),
        1);
    CHECK_EQ_INT(
        h_metric(S.http_port,
                 "message_event_service_event_processing_actions_total{event_type=\"v1.chats.update\",company_id="
                 "\"acme\",consumer_type=\"realtime\",action=\"dlq_published_ack_success\",error_type=\"not_found\"}"),
        1);
}

TEST(onboarding_burst_in_one_batch_ends_like_one_by_one)
{
    /* Publish before the service starts so all of it lands in one batch. */
    REQUIRE(h_nats_start(&N) && h_pg_start(&P) && h_streams_create(&N));
    char buf[512];
    for (int i = 0; i < 5; i++) {
        snprintf(buf, sizeof buf,
                 "{\"message_id\":\"b%d\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"ag\",\"flow\":\"IN\","
                 "\"from_phone\":\"62888\",\"message_timestamp\":%d%s}",
                 i, 1700000100 + i,
                 i == 2   ? ",\"campaign\":{\"tags\":\"promo, vip\",\"origin\":\"Ads\",\"assigned_to\":\"x\"}"
                 : i == 4 ? ",\"campaign\":{\"tags\":\"vip,late\"}"
                          : "");
        REQUIRE(it_pub("v1.messages.upsert", CO, buf, NULL));
    }
    REQUIRE(h_svc_start(&S, CO, &N, &P, NO_ENV));
    REQUIRE(h_svc_wait_ready(&S, 60000));
    CHECK_EQ_INT(h_pg_wait_int(&P, 5, 20000, "SELECT count(*) FROM " SCH ".messages"), 5);
    char *row = h_pg_str(
        &P, "SELECT concat_ws('|', count(*) OVER (), origin, tags, coalesce(assigned_to, '-'), first_message_id,"
            " first_message_timestamp) FROM " SCH ".contacts");
    /* One by one: b0 creates (no campaign), b2 and b4 merge their tags; origin was already set by b0. */
    CHECK_EQ_STR(row, "1|DirectChat|Onboarded,promo,vip,late|-|b0|1700000100");
    free(row);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".onboarding_log WHERE message_id = 'b0'"), 1);
    CHECK_EQ_INT(
        h_metric(S.http_port, "onboarding_tasks_processed_total{company_id=\"acme\",status=\"success_created\"}"), 1);
    CHECK_EQ_INT(
        h_metric(S.http_port, "onboarding_tasks_processed_total{company_id=\"acme\",status=\"success_exists\"}"), 4);
}

/* The tag union behind onboarding (SPEC 6) lives in SQL too (migration 4 rewrote it in PL/pgSQL: same results as
 * the SQL original, which these cases were checked against). */
TEST(sql_merge_tags_is_a_trimmed_first_seen_union_without_blanks)
{
    REQUIRE(it_up(CO, NO_ENV));
    char *merged =
        h_pg_str(&P, "SELECT string_agg(coalesce(" SCH ".mes_merge_tags(a, b), '<null>'), '|' ORDER BY o) FROM (VALUES"
                     " (1, NULL, NULL), (2, '', ''), (3, ' , ,', NULL), (4, NULL, 'x'), (5, 'a, b,,a', 'c, b ,d'),"
                     " (6, 'Onboarded', 'promo, vip,vip'), (7, ' x y ', 'x y')) v(o, a, b)");
    CHECK_EQ_STR(merged, "<null>|<null>|<null>|x|a,b,c,d|Onboarded,promo,vip|x y");
    free(merged);
}

/* The rank behind "status never regresses" lives in SQL (the writer statements call it): tested there. */
TEST(sql_status_rank_orders_the_delivery_statuses_and_leaves_others_off_the_ladder)
{
    REQUIRE(it_up(CO, NO_ENV));
    char *ranks = h_pg_str(&P, "SELECT string_agg(" SCH ".mes_status_rank(s)::text, ',' ORDER BY o) FROM unnest("
                               "ARRAY['pending','sent','delivered','read','played','failed','READ','sen','']) WITH"
                               " ORDINALITY AS t(s, o)");
    CHECK_EQ_STR(ranks, "1,2,3,4,5,0,0,0,0");
    free(ranks);
}
