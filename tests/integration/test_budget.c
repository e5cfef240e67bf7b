/* test_budget.c - database.maxConnections bounds every PostgreSQL session of the process (issue 11, connection
 * budget): sampled from pg_stat_activity while the lanes commit a mixed load and the DLQ workers retry and exhaust
 * records, the service never holds more sessions than its budget, and everything still ends committed or exhausted. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "itest.h"

#define CO "acme"
#define SCH "daisi_acme"

/* The most sessions of the service seen in one sample (libpq application_name). */
static void count_sessions(void *ctx, const PGresult *r)
{
    int *max_seen = ctx, n = atoi(PQgetvalue(r, 0, 0));
    if (n > *max_seen)
        *max_seen = n;
}

/* Valid events on several subjects at once, poison, and updates of rows that never come (DLQ retries, then
 * exhaustion): every kind of session user is busy together. */
static void publish_mix(int n)
{
    char buf[256], id[64];
    for (int i = 0; i < n; i++) {
        snprintf(buf, sizeof buf, "{\"chat_id\":\"c%d\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\"}", i);
        snprintf(id, sizeof id, "chat-%d", i);
        REQUIRE(it_pub("v1.chats.upsert", CO, buf, id));
        snprintf(buf, sizeof buf,
                 "{\"message_id\":\"m%d\",\"chat_id\":\"c%d\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"IN\","
                 "\"from_phone\":\"62%d\",\"message_timestamp\":%d}",
                 i, i, 1000 + i % 97, 1700000000 + i);
        snprintf(id, sizeof id, "msg-%d", i);
        REQUIRE(it_pub("v1.messages.upsert", CO, buf, id));
        snprintf(buf, sizeof buf, "{\"agent_id\":\"ag%d\",\"status\":\"open\"}", i % 7);
        REQUIRE(it_pub("v1.connection.update", CO, buf, NULL));
        if (i % 50 == 0) {
            snprintf(id, sizeof id, "poison-%d", i);
            REQUIRE(it_pub("v1.contacts.upsert", CO, "{not json", id));
            snprintf(buf, sizeof buf, "{\"message_id\":\"never-%d\",\"status\":\"read\"}", i);
            snprintf(id, sizeof id, "orphan-%d", i);
            REQUIRE(it_pub("v1.messages.update", CO, buf, id));
        }
    }
}

static void check_budget(const char *const *env, int budget)
{
    enum { K = 1500 };
    REQUIRE(it_up(CO, env));
    int max_seen = 0;
    it_sampler_t s = {.sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                             "'message-event-service' AND backend_type = 'client backend'",
                      .every_ms = 10,
                      .on_result = count_sessions,
                      .ctx = &max_seen};
    it_sampler_start(&s);
    publish_mix(K);
    CHECK_EQ_INT(h_pg_wait_int(&P, K, 90000, "SELECT count(*) FROM " SCH ".messages"), K);
    CHECK_EQ_INT(h_pg_wait_int(&P, K, 30000, "SELECT count(*) FROM " SCH ".chats"), K);
    CHECK_EQ_INT(h_pg_wait_int(&P, 7, 30000, "SELECT count(*) FROM " SCH ".agents"), 7);
    /* 30 poison events and 30 orphan updates: each ends as one exhausted row (the orphans after their retries). */
    CHECK_EQ_INT(h_pg_wait_int(&P, 2 * (K / 50), 90000, "SELECT count(*) FROM " SCH ".exhausted_events"), 2 * (K / 50));
    it_sampler_stop(&s);
    printf("sessions: at most %d of a budget of %d over %ld samples\n", max_seen, budget, s.samples);
    CHECK(s.samples > 100);
    CHECK(max_seen >= 2); /* the sampler saw the service at all */
    CHECK(max_seen <= budget);
    char *body = NULL;
    CHECK_EQ_INT(h_http(S.http_port, "GET", "/ready", &body), 200);
    free(body);
}

TEST(sessions_never_exceed_the_default_budget_of_four_with_lanes_and_dlq_workers_busy)
{
    static const char *const env[] = {"NATS_DLQBASEDELAY=100ms", "NATS_DLQMAXDELAY=300ms", "NATS_DLQMAXRETRIES=2",
                                      NULL};
    check_budget(env, 4);
}

/* The smallest budget: one writer session for all ten lanes, one session the DLQ workers share with maintenance. */
TEST(a_budget_of_two_sessions_still_commits_everything_and_exhausts_what_fails)
{
    static const char *const env[] = {"DATABASE_MAXCONNECTIONS=2", "NATS_DLQBASEDELAY=100ms", "NATS_DLQMAXDELAY=300ms",
                                      "NATS_DLQMAXRETRIES=2", NULL};
    check_budget(env, 2);
}

/* database.poolSize, the key's old name, is still understood. */
TEST(the_old_pool_size_key_sets_the_budget)
{
    static const char *const env[] = {"DATABASE_POOLSIZE=3", NULL};
    REQUIRE(it_up(CO, env));
    CHECK(h_svc_wait_log(&S, "\"max_connections\":3", 5000));
}
