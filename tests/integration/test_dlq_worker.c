/* test_dlq_worker.c - the DLQ worker pool against real NATS + PostgreSQL: retries, exhaustion, isolation, bounds. */
#include <pthread.h>
#include <stdatomic.h>

#include "itest.h"

#define CO "acme"
#define SCH "daisi_acme"

/* Fast DLQ retries so the tests see several attempts within seconds. */
static const char *const FAST[] = {"NATS_DLQBASEDELAY=200ms", "NATS_DLQMAXDELAY=1s", "NATS_DLQMAXRETRIES=3", NULL};

static double metric(const char *series)
{
    return h_metric(S.http_port, series);
}

/* Publishes a hand-made DLQ record (SPEC 5.1) with the given Nats-Msg-Id. */
static bool pub_record(const char *co, const char *company, const char *source_subject, const char *original,
                       bool base64, const char *msg_id)
{
    char body[4096], subject[128];
    snprintf(body, sizeof body,
             "{\"source_subject\":\"%s\",\"company\":\"%s\",\"original_payload\":%s%s%s,"
             "\"original_payload_encoding\":\"%s\",\"error\":\"test\",\"error_type\":\"fatal\",\"error_class\":"
             "\"validation\",\"retry_count\":1,\"max_retry\":5,\"source_stream\":\"wa_events_stream\","
             "\"source_sequence\":42,\"source_message_id\":\"src-1\",\"ts\":\"2026-11-22T10:00:00.000Z\"}",
             source_subject, company, base64 ? "\"" : "", original, base64 ? "\"" : "", base64 ? "base64" : "json");
    snprintf(subject, sizeof subject, "v1.dlq.%s", co);
    return h_publish(&N, subject, body, strlen(body), msg_id);
}

TEST(update_before_its_upsert_is_applied_by_a_dlq_retry_once_the_upsert_lands)
{
    REQUIRE(it_up(CO, FAST));
    REQUIRE(it_pub("v1.chats.update", CO, "{\"chat_id\":\"late\",\"unread_count\":7}", "upd-late"));
    CHECK_EQ_INT(it_dlq_wait(CO, 1, 20000), 1);
    REQUIRE(it_pub("v1.chats.upsert", CO,
                   "{\"chat_id\":\"late\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\"}", NULL));
    CHECK_EQ_INT(
        h_pg_wait_int(&P, 7, 20000, "SELECT coalesce(unread_count, -1) FROM " SCH ".chats WHERE chat_id = 'late'"), 7);
    /* The DLQ write carries the original's metadata plus the DLQ attempt. */
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".chats WHERE last_metadata->>'message_id' = 'upd-late'"
                              " AND (last_metadata->>'dlq_attempt')::int >= 1"),
                 1);
    int64_t end = h_now_ms() + 10000;
    while (h_now_ms() < end && metric("dlq_acks_success_total{company_id=\"acme\"}") < 1)
        h_sleep_ms(50);
    CHECK_EQ_INT(metric("dlq_acks_success_total{company_id=\"acme\"}"), 1);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".exhausted_events"), 0);
}

TEST(not_found_that_never_resolves_is_exhausted_after_max_retries_with_one_row)
{
    REQUIRE(it_up(CO, FAST));
    int64_t t0 = h_now_ms();
    REQUIRE(it_pub("v1.chats.update", CO, "{\"chat_id\":\"never\",\"unread_delta\":1}", "upd-never"));
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 30000, "SELECT count(*) FROM " SCH ".exhausted_events"), 1);
    int64_t took = h_now_ms() - t0;
    /* Attempts 1 and 2 were NAKed with 200 ms then 400 ms (growing); attempt 3 exhausted. */
    CHECK(took >= 600);
    char *row =
        h_pg_str(&P, "SELECT concat_ws('|', company_id, source_subject, retry_count, event_timestamp IS NOT NULL,"
                     " dlq_payload->>'error_class', original_payload->>'chat_id', resolved,"
                     " dlq_message_id LIKE 'dlq:wa_events_stream:%%', last_error LIKE '%%not found%%')"
                     " FROM " SCH ".exhausted_events");
    CHECK_EQ_STR(row, "acme|v1.chats.update.acme|4|t|not_found|never|f|t|t");
    free(row);
    h_sleep_ms(300);
    CHECK_EQ_INT(metric("dlq_task_retries_total{company_id=\"acme\"}"), 2);
    CHECK_EQ_INT(metric("dlq_tasks_dropped_total{company_id=\"acme\"}"), 1);
    CHECK_EQ_INT(metric("dlq_acks_failure_total{company_id=\"acme\"}"), 0);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".exhausted_events"), 1);
}

TEST(malformed_json_is_exhausted_at_once_with_null_original_and_base64_in_the_record)
{
    REQUIRE(it_up(CO, FAST));
    REQUIRE(it_pub("v1.messages.upsert", CO, "{oops", "bad-json"));
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".exhausted_events"), 1);
    char *row =
        h_pg_str(&P, "SELECT concat_ws('|', original_payload IS NULL, dlq_payload->>'original_payload_encoding',"
                     " dlq_payload->>'original_payload', retry_count, last_error LIKE 'invalid JSON%%')"
                     " FROM " SCH ".exhausted_events");
    CHECK_EQ_STR(row, "t|base64|e29vcHM=|2|t");
    free(row);
    h_sleep_ms(200);
    CHECK_EQ_INT(metric("dlq_task_retries_total{company_id=\"acme\"}"), 0);
}

TEST(redelivered_exhaustion_does_not_write_a_second_row)
{
    REQUIRE(it_up(CO, FAST));
    /* The row a crash between insert and ack would leave behind. */
    REQUIRE(h_pg_exec(&P,
                      "INSERT INTO " SCH ".exhausted_events (company_id, source_subject, dlq_payload, dlq_message_id)"
                      " VALUES ('acme', 'v1.chats.upsert.acme', '{}', 'dlq:wa_events_stream:77')"));
    REQUIRE(pub_record(CO, CO, "v1.chats.upsert.acme", "e25vcGU=", true, "dlq:wa_events_stream:77"));
    int64_t end = h_now_ms() + 20000;
    while (h_now_ms() < end && metric("dlq_tasks_dropped_total{company_id=\"acme\"}") < 1)
        h_sleep_ms(50);
    CHECK_EQ_INT(metric("dlq_tasks_dropped_total{company_id=\"acme\"}"), 1);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".exhausted_events"), 1);
}

TEST(postgres_down_during_exhaustion_retries_later_and_the_record_ends_persisted)
{
    REQUIRE(it_up(CO, FAST));
    h_pg_stop(&P);
    REQUIRE(pub_record(CO, CO, "v1.chats.upsert.acme", "e25vcGU=", true, "dlq:wa_events_stream:5"));
    h_sleep_ms(2500); /* the outage: the worker must pause, not burn attempts or drop the record */
    REQUIRE(h_pg_restart(&P));
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 30000, "SELECT count(*) FROM " SCH ".exhausted_events"), 1);
    /* retry_count = source deliveries (1) + DLQ attempts: the outage did not burn attempts. */
    CHECK_EQ_INT(h_pg_int(&P, "SELECT retry_count FROM " SCH ".exhausted_events"), 2);
}

TEST(two_tenants_never_touch_each_others_dlq_records)
{
    REQUIRE(it_up(CO, FAST));
    h_svc_t beta;
    REQUIRE(h_svc_start(&beta, "beta", &N, &P, FAST));
    REQUIRE(h_svc_wait_ready(&beta, 60000));
    REQUIRE(it_pub("v1.chats.upsert", "beta", "{broken", NULL));
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM daisi_beta.exhausted_events"), 1);
    /* A record on acme's DLQ subject that claims to be beta's is rejected by acme, never applied anywhere. */
    REQUIRE(pub_record(CO, "beta", "v1.chats.upsert.beta",
                       "{\"chat_id\":\"stolen\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\"}", false,
                       "x-1"));
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".exhausted_events"), 1);
    CHECK_EQ_INT(
        h_pg_int(&P, "SELECT count(*) FROM " SCH ".exhausted_events WHERE last_error LIKE '%%another tenant%%'"), 1);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM daisi_beta.exhausted_events"), 1);
    CHECK_EQ_INT(
        h_pg_int(&P, "SELECT count(*) FROM " SCH ".chats") + h_pg_int(&P, "SELECT count(*) FROM daisi_beta.chats"), 0);
}

typedef struct {
    int port;
    atomic_int done;
    double max_queue;
} sampler_t;

static void *sample_queue(void *arg)
{
    sampler_t *s = arg;
    while (!atomic_load(&s->done)) {
        double q = h_metric(s->port, "dlq_queue_length");
        if (q > s->max_queue)
            s->max_queue = q;
        h_sleep_ms(5);
    }
    return NULL;
}

TEST(queue_never_exceeds_its_capacity_and_no_record_is_processed_twice)
{
    const char *env[] = {"NATS_DLQQUEUESIZE=5", "NATS_DLQWORKERS=2", "NATS_DLQBASEDELAY=200ms", "NATS_DLQMAXDELAY=1s",
                         NULL};
    REQUIRE(it_up(CO, env));
    sampler_t smp = {S.http_port, 0, 0};
    pthread_t t;
    pthread_create(&t, NULL, sample_queue, &smp);
    for (int i = 0; i < 200; i++) {
        char id[64];
        snprintf(id, sizeof id, "dlq:wa_events_stream:%d", 1000 + i);
        REQUIRE(pub_record(CO, CO, "v1.chats.upsert.acme", "e25vcGU=", true, id));
    }
    CHECK_EQ_INT(h_pg_wait_int(&P, 200, 60000, "SELECT count(*) FROM " SCH ".exhausted_events"), 200);
    atomic_store(&smp.done, 1);
    pthread_join(t, NULL);
    fprintf(stderr, "max dlq_queue_length seen: %.0f\n", smp.max_queue);
    CHECK(smp.max_queue <= 5);
    h_sleep_ms(300);
    CHECK_EQ_INT(metric("dlq_tasks_dropped_total{company_id=\"acme\"}"), 200);
    CHECK_EQ_INT(metric("dlq_tasks_submitted_total{company_id=\"acme\"}"), 200);
    CHECK_EQ_INT(metric("dlq_queue_length"), 0);
    CHECK_EQ_INT(metric("dlq_workers_active"), 0);
}

TEST(invalid_history_item_is_exhausted_under_its_original_index)
{
    REQUIRE(it_up(CO, FAST));
    REQUIRE(it_pub("v1.history.contacts", CO,
                   "{\"contacts\":[{\"phone_number\":\"1\",\"agent_id\":\"a\",\"company_id\":\"acme\"},"
                   "{\"phone_number\":\"none\",\"agent_id\":\"a\",\"company_id\":\"acme\"}]}",
                   NULL));
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".exhausted_events"), 1);
    char *err = h_pg_str(&P, "SELECT last_error || '|' || (dlq_payload->>'item_index') FROM " SCH ".exhausted_events");
    CHECK_EQ_STR(err, "item 1: phone_number has no digits|1");
    free(err);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".contacts"), 1);
}
