/* test_shared_rows.c - lanes of different subjects write the same rows (chats from chats.upsert, chats.update and
 * history.chats; contacts from contacts.upsert and from the onboarding of IN messages), in groups on two writer
 * sessions, from a backlog: every row ends as applying the events one by one in stream order would leave it, and
 * nothing goes to the DLQ. The two sessions are not partitioned (README, "Two writers, not partitioned"), so they
 * may meet on a row; the test counts how often one waited for the other's transaction and the deadlocks PostgreSQL
 * saw, and prints them: a wait or a deadlock costs time, not correctness (a conflict is retried). A second backlog
 * shares only contacts, between contacts.upsert and onboarding, and asserts that the contacts lock leaves no
 * deadlock. */
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "itest.h"

#define CO "acme"
#define SCH "daisi_acme"
#define KEYS 40 /* few keys, many events: the lanes keep meeting on the same rows */

typedef struct {
    int waits;         /* samples in which a service session waited for another service session */
    char example[200]; /* the first wait seen: the waiting and the blocking statement */
} waits_t;

static void count_waits(void *ctx, const PGresult *r)
{
    waits_t *w = ctx;
    w->waits += PQntuples(r) > 0;
    if (PQntuples(r) > 0 && !w->example[0])
        snprintf(w->example, sizeof w->example, "'%s' waited for '%s'", PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1));
}

/* Deadlocks PostgreSQL broke in the database so far. A backend adds its own to this counter lazily (when it goes
 * idle, at most once a second, and when it exits), so the count is complete only once the service's sessions have
 * ended: deadlocks_after_stop stops the service (SIGTERM) and waits for that before reading. */
static long long db_deadlocks(void)
{
    return h_pg_int(&P, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()");
}

static long long deadlocks_after_stop(long long before)
{
    CHECK_EQ_INT(h_svc_signal(&S, SIGTERM, 30000), 0);
    CHECK_EQ_INT(
        h_pg_wait_int(&P, 0, 15000,
                      "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'message-event-service'"),
        0);
    return db_deadlocks() - before;
}

static void publish_overlapping(int n)
{
    char buf[512], id[64];
    for (int i = 0; i < n; i++) {
        int k = i % KEYS;
        snprintf(buf, sizeof buf,
                 "{\"chat_id\":\"c%d\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"62%d\","
                 "\"conversation_timestamp\":%d}",
                 k, k, 1700000000 + i);
        snprintf(id, sizeof id, "chat-%d", i);
        REQUIRE(it_pub("v1.chats.upsert", CO, buf, id));
        snprintf(buf, sizeof buf,
                 "{\"chats\":[{\"chat_id\":\"c%d\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"62%d\","
                 "\"company_id\":\"" CO "\",\"conversation_timestamp\":%d}]}",
                 (k + 7) % KEYS, k, 1600000000 + i);
        snprintf(id, sizeof id, "hchat-%d", i);
        REQUIRE(it_pub("v1.history.chats", CO, buf, id));
        snprintf(buf, sizeof buf, "{\"chat_id\":\"c%d\",\"unread_count\":%d}", k, i % 9); /* after its upsert */
        snprintf(id, sizeof id, "chatupd-%d", i);
        REQUIRE(it_pub("v1.chats.update", CO, buf, id));
        snprintf(buf, sizeof buf,
                 "{\"message_id\":\"m%d\",\"chat_id\":\"c%d\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"IN\","
                 "\"from_phone\":\"62%d\",\"message_timestamp\":%d}",
                 i, k, k, 1700000000 + i);
        snprintf(id, sizeof id, "msg-%d", i);
        REQUIRE(it_pub("v1.messages.upsert", CO, buf, id));
        snprintf(buf, sizeof buf, "{\"phone_number\":\"62%d\",\"agent_id\":\"a\",\"push_name\":\"p%d\"}",
                 (k + 11) % KEYS, i);
        snprintf(id, sizeof id, "contact-%d", i);
        REQUIRE(it_pub("v1.contacts.upsert", CO, buf, id));
        snprintf(buf, sizeof buf, "{\"agent_id\":\"a\",\"status\":\"open\",\"agent_name\":\"n%d\"}", i);
        REQUIRE(it_pub("v1.connection.update", CO, buf, NULL));
    }
}

TEST(lanes_writing_the_same_rows_in_groups_on_two_sessions_leave_every_row_right)
{
    enum { K = 600 };
    static const char *const env[] = {"DATABASE_WRITERS=2", NULL};
    /* A backlog on six subjects: the service starts with all of it waiting, so big groups meet at once. */
    REQUIRE(h_nats_start(&N) && h_pg_start(&P) && h_streams_create(&N));
    atexit(it_dump_log);
    publish_overlapping(K);
    long long deadlocks0 = db_deadlocks();
    waits_t w = {0};
    it_sampler_t s = {.sql = "SELECT left(w.query, 40) || ' (' || w.wait_event || ')', left(b.query, 40) FROM "
                             "pg_stat_activity w JOIN pg_stat_activity b ON b.pid = ANY (pg_blocking_pids(w.pid)) "
                             "WHERE w.application_name = 'message-event-service' AND w.wait_event_type = 'Lock' "
                             "AND b.application_name = 'message-event-service'",
                      .every_ms = 5,
                      .on_result = count_waits,
                      .ctx = &w};
    it_sampler_start(&s);
    REQUIRE(h_svc_start(&S, CO, &N, &P, env) && h_svc_wait_ready(&S, 60000));
    CHECK_EQ_INT(h_pg_wait_int(&P, K, 120000, "SELECT count(*) FROM " SCH ".messages"), K);
    /* Each chat as its last events left it: the newest realtime upsert's timestamp (the history items are older and
     * leave the latest columns alone), the last update's unread_count. */
    CHECK_EQ_INT(h_pg_wait_int(&P, KEYS, 60000,
                               "SELECT count(*) FROM " SCH ".chats WHERE conversation_timestamp = 1700000000 + %d + "
                               "substr(chat_id, 2)::int AND unread_count = (%d + substr(chat_id, 2)::int) %% 9",
                               K - KEYS, K - KEYS),
                 KEYS);
    CHECK_EQ_INT(h_pg_wait_int(&P, KEYS, 60000, "SELECT count(*) FROM " SCH ".contacts"), KEYS);
    it_sampler_stop(&s);
    long long deadlocks = deadlocks_after_stop(deadlocks0);
    printf("lock waits between the service's sessions: %d of %ld samples (%s); deadlocks: %lld\n", w.waits, s.samples,
           w.example[0] ? w.example : "none", deadlocks);
    CHECK(s.samples > 20);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".chats"), KEYS);
    CHECK_EQ_INT(it_dlq_count(CO), 0);
}

/* Contacts are written by five statements of a transaction (contacts.upsert rounds, contacts.update, onboarding's
 * create, merge and log), each in key order but together in no global one. Two groups that meet on contacts in
 * opposite statements (one group's contacts.upsert, the other's onboarding) could each hold a contact the other
 * needs: PostgreSQL broke such a cycle about once per 100k-event mix drain after deadlock_timeout (1 s) before the
 * contacts lock (sql.h). Here only contacts are shared: every message has its own id, and nothing writes chats. */
TEST(contacts_written_by_upserts_and_onboarding_on_two_sessions_never_deadlock)
{
    enum { K = 3000, PHONES = 300 }; /* 7 and 13 are prime to 300: each order visits every phone */
    static const char *const env[] = {"DATABASE_WRITERS=2", NULL};
    REQUIRE(h_nats_start(&N) && h_pg_start(&P) && h_streams_create(&N));
    atexit(it_dump_log);
    char buf[512], id[64];
    for (int i = 0; i < K; i++) {
        snprintf(buf, sizeof buf, "{\"phone_number\":\"62%d\",\"agent_id\":\"a\",\"push_name\":\"p%d\"}",
                 i * 7 % PHONES, i);
        snprintf(id, sizeof id, "contact-%d", i);
        REQUIRE(it_pub("v1.contacts.upsert", CO, buf, id));
        snprintf(buf, sizeof buf,
                 "{\"message_id\":\"m%d\",\"chat_id\":\"c%d\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"IN\","
                 "\"from_phone\":\"62%d\",\"message_timestamp\":%d,\"campaign\":{\"tags\":\"t%d\"}}",
                 i, i, (i * 13 + 5) % PHONES, 1700000000 + i,
                 i / PHONES); /* each phone: t0..t9, so every merge writes */
        snprintf(id, sizeof id, "msg-%d", i);
        REQUIRE(it_pub("v1.messages.upsert", CO, buf, id));
    }
    long long deadlocks0 = db_deadlocks();
    REQUIRE(h_svc_start(&S, CO, &N, &P, env) && h_svc_wait_ready(&S, 60000));
    CHECK_EQ_INT(h_pg_wait_int(&P, K, 120000, "SELECT count(*) FROM " SCH ".messages"), K);
    CHECK_EQ_INT(h_pg_wait_int(&P, PHONES, 60000, "SELECT count(*) FROM " SCH ".onboarding_log"), PHONES);
    CHECK_EQ_INT(h_pg_wait_int(&P, PHONES, 60000,
                               "SELECT count(*) FROM " SCH ".contacts WHERE push_name IS NOT NULL AND "
                               "tags LIKE '%%t0%%' AND tags LIKE '%%t9%%'"),
                 PHONES);
    long long deadlocks = deadlocks_after_stop(deadlocks0);
    printf("deadlocks: %lld\n", deadlocks);
    CHECK_EQ_INT(deadlocks, 0);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".contacts"), PHONES);
    CHECK_EQ_INT(it_dlq_count(CO), 0);
}
