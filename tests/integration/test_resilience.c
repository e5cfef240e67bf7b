/* test_resilience.c - replicas, database outages and hostile input: nothing lost, nothing doubled, no stalls. */
#include <signal.h>

#include "itest.h"

#define CO "acme"
#define SCH "daisi_acme"

static const char *const NO_ENV[] = {NULL};

TEST(two_replicas_share_the_work_and_write_nothing_twice)
{
    REQUIRE(it_up(CO, NO_ENV));
    h_svc_t s2;
    REQUIRE(h_svc_start(&s2, CO, &N, &P, NO_ENV));
    REQUIRE(h_svc_wait_ready(&s2, 60000));
    it_pubjob_t j = {.co = CO, .prefix = "r", .from = 0, .to = 3000};
    it_publish_range(&j);
    CHECK_EQ_INT(j.failures, 0);
    CHECK_EQ_INT(h_pg_wait_int(&P, 3000, 60000, "SELECT count(*) FROM " SCH ".messages"), 3000);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(DISTINCT message_id) FROM " SCH ".messages"), 3000);
    double a = h_metric(S.http_port, "message_event_service_events_processed_total{event_type=\"v1.messages.upsert\","
                                     "company_id=\"acme\",consumer_type=\"realtime\"}");
    double b = h_metric(s2.http_port, "message_event_service_events_processed_total{event_type=\"v1.messages.upsert\","
                                      "company_id=\"acme\",consumer_type=\"realtime\"}");
    fprintf(stderr, "replica split: %.0f / %.0f\n", a, b);
    CHECK(a > 0 && b > 0);
    CHECK(a + b >= 3000);
    CHECK_EQ_INT(it_dlq_count(CO), 0);
}

TEST(postgres_stop_and_start_during_traffic_commits_everything_and_dlqs_nothing)
{
    REQUIRE(it_up(CO, NO_ENV));
    it_pubjob_t j = {.co = CO, .prefix = "o", .from = 0, .to = 3000};
    it_publish_start(&j);
    h_pg_wait_int(&P, 300, 30000, "SELECT least(count(*), 300) FROM " SCH ".messages");
    h_pg_stop(&P);
    h_sleep_ms(4000); /* the outage itself: a few seconds with the service running against a dead database */
    REQUIRE(h_pg_restart(&P));
    it_publish_wait(&j);
    CHECK_EQ_INT(j.failures, 0);
    CHECK_EQ_INT(h_pg_wait_int(&P, 3000, 90000, "SELECT count(*) FROM " SCH ".messages"), 3000);
    CHECK_EQ_INT(it_dlq_count(CO), 0);
}

TEST(killed_backends_mid_traffic_lose_nothing)
{
    REQUIRE(it_up(CO, NO_ENV));
    it_pubjob_t j = {.co = CO, .prefix = "k", .from = 0, .to = 2000};
    it_publish_start(&j);
    for (int i = 0; i < 5; i++) {
        h_sleep_ms(200);
        h_pg_exec(&P, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name ="
                      " 'message-event-service'");
    }
    it_publish_wait(&j);
    CHECK_EQ_INT(h_pg_wait_int(&P, 2000, 60000, "SELECT count(*) FROM " SCH ".messages"), 2000);
    CHECK_EQ_INT(it_dlq_count(CO), 0);
}

TEST(hostile_input_on_every_subject_becomes_dlq_records_and_lanes_keep_flowing)
{
    REQUIRE(it_up(CO, NO_ENV));
    static const char *const bases[] = {"v1.chats.upsert",      "v1.chats.update",    "v1.messages.upsert",
                                        "v1.messages.update",   "v1.contacts.upsert", "v1.contacts.update",
                                        "v1.connection.update", "v1.history.chats",   "v1.history.messages",
                                        "v1.history.contacts"};
    char deep[200];
    memset(deep, '[', 65);
    memset(deep + 65, ']', 65);
    deep[130] = '\0';
    /* Under NATS' 1 MiB max payload but over the DLQ record's embed limit: the record carries a truncated base64. */
    char *huge = malloc(1000001);
    memset(huge, 'a', 1000000);
    huge[0] = '"';
    huge[999999] = '"';
    huge[1000000] = '\0';
    const char *hostile[] = {"",
                             "{",
                             "null",
                             "[]",
                             "\"str\"",
                             "{\"chat_id\":1}",
                             deep,
                             "\xff\xfe\xfd",
                             "{\"a\":\"\xc3\x28\"}",
                             "{\"chat_id\":\"x\",\"chat_id\":\"y\"}",
                             "{\"n\":1e999999}",
                             "{\"s\":\"\\u0000\"}",
                             "{\"s\":\"\\ud800\"}",
                             "{\"agent_id\":\"'; DROP TABLE chats; --\",\"qr_code\":5}"};
    int nh = (int)(sizeof hostile / sizeof hostile[0]);
    int sent = 0;
    for (int b = 0; b < 10; b++) {
        for (int i = 0; i < nh; i++) {
            char subject[128];
            snprintf(subject, sizeof subject, "%s.%s", bases[b], CO);
            REQUIRE(h_publish(&N, subject, hostile[i], strlen(hostile[i]), NULL));
            sent++;
        }
    }
    /* Raw NUL bytes in the middle of a body, and a body just under NATS' max payload. */
    REQUIRE(h_publish(&N, "v1.chats.upsert.acme", "{\"chat_id\":\"a\0b\"}", 16, NULL));
    sent++;
    REQUIRE(h_publish(&N, "v1.messages.upsert.acme", huge, strlen(huge), NULL));
    sent++;
    free(huge);
    CHECK_EQ_INT(it_dlq_wait(CO, sent, 60000), sent);
    /* The lanes still flow: a valid event on every realtime subject after the garbage. */
    it_pub("v1.chats.upsert", CO, "{\"chat_id\":\"ok\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\"}", NULL);
    it_pub("v1.connection.update", CO, "{\"agent_id\":\"'; DROP TABLE agents; --\"}", NULL);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".chats WHERE chat_id = 'ok'"), 1);
    CHECK_EQ_INT(
        h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".agents WHERE agent_id = '''; DROP TABLE agents; --'"),
        1);
    char *t = it_dlq_text(CO);
    CHECK_CONTAINS(t, "\"error_class\":\"unmarshal\"");
    CHECK_CONTAINS(t, "\"error_class\":\"validation\"");
    free(t);
    char *body = NULL;
    CHECK_EQ_INT(h_http(S.http_port, "GET", "/health", &body), 200);
    free(body);
}

TEST(replicas_starting_at_once_on_a_fresh_server_both_become_ready)
{
    REQUIRE(h_pg_start(&P));
    for (int round = 0; round < 3; round++) {
        h_nats_t n;
        h_svc_t a, b;
        REQUIRE(h_nats_start(&n)); /* fresh: no streams, no consumers, so both replicas race to create them */
        REQUIRE(h_svc_start(&a, CO, &n, &P, NO_ENV));
        REQUIRE(h_svc_start(&b, CO, &n, &P, NO_ENV));
        CHECK(h_svc_wait_ready(&a, 60000));
        CHECK(h_svc_wait_ready(&b, 60000));
        CHECK_EQ_INT(h_svc_signal(&a, SIGTERM, 20000), 0);
        CHECK_EQ_INT(h_svc_signal(&b, SIGTERM, 20000), 0);
        h_nats_stop(&n);
    }
}
