/* test_owned_objects.c - durables and streams the service owns, deleted at runtime (issue 17, classes 2 and 3): the
 * service notices within seconds, re-creates what is its own, re-subscribes, and /ready names what is missing
 * meanwhile. Nothing published afterwards is lost, and a durable re-created on the same stream resumes after its ack
 * floor instead of re-applying the whole stream. */
#include <stdlib.h>
#include <string.h>

#include "itest.h"

#define CO "acme"
#define SCH "daisi_acme"
#define DLQ_DURABLE "v1_dlq_worker_" CO

static const char *const NO_ENV[] = {NULL};

static natsConnection *nc;
static jsCtx *js;

static bool js_up(void)
{
    return natsConnection_ConnectTo(&nc, N.url) == NATS_OK && natsConnection_JetStream(&js, nc, NULL) == NATS_OK;
}

static void js_down(void)
{
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
}

static bool consumer_exists(const char *stream, const char *durable)
{
    jsConsumerInfo *ci = NULL;
    bool ok = js_GetConsumerInfo(&ci, js, stream, durable, NULL, NULL) == NATS_OK && ci;
    jsConsumerInfo_Destroy(ci);
    return ok;
}

static bool stream_exists(const char *stream)
{
    jsStreamInfo *si = NULL;
    bool ok = js_GetStreamInfo(&si, js, stream, NULL, NULL) == NATS_OK && si;
    jsStreamInfo_Destroy(si);
    return ok;
}

/* Waits until the durable exists again and /ready answers 200 (the service re-subscribed). */
static bool wait_recovered(const char *stream, const char *durable, int timeout_ms)
{
    for (int64_t end = h_now_ms() + timeout_ms; h_now_ms() < end; h_sleep_ms(100)) {
        if (!consumer_exists(stream, durable))
            continue;
        char *body = NULL;
        int code = h_http(S.http_port, "GET", "/ready", &body);
        free(body);
        if (code == 200)
            return true;
    }
    return false;
}

static bool wait_ready_body(int want_code, const char *needle, int timeout_ms)
{
    for (int64_t end = h_now_ms() + timeout_ms; h_now_ms() < end; h_sleep_ms(100)) {
        char *body = NULL;
        int code = h_http(S.http_port, "GET", "/ready", &body);
        bool hit = code == want_code && (!needle || (body && strstr(body, needle)));
        free(body);
        if (hit)
            return true;
    }
    return false;
}

/* Publishes a poison chat upsert and waits for its exhausted_events row (unmarshal: the DLQ worker exhausts it at
 * once), which proves both the live lane's DLQ publish and the DLQ worker's consumption. */
static void poison_reaches_exhausted(const char *id, long long want_rows)
{
    REQUIRE(it_pub("v1.chats.upsert", CO, "{poison", id));
    CHECK_EQ_INT(h_pg_wait_int(&P, want_rows, 40000, "SELECT count(*) FROM " SCH ".exhausted_events"), want_rows);
}

static void chat(const char *id)
{
    char buf[256];
    snprintf(buf, sizeof buf, "{\"chat_id\":\"%s\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\"}", id);
    REQUIRE(it_pub("v1.chats.upsert", CO, buf, NULL));
}

TEST(a_realtime_durable_deleted_at_runtime_is_recreated_after_its_ack_floor_and_its_lane_resumes)
{
    REQUIRE(it_up(CO, NO_ENV) && js_up());
    chat("c1");
    for (int i = 0; i < 3; i++)
        REQUIRE(it_pub("v1.chats.update", CO, "{\"chat_id\":\"c1\",\"unread_delta\":1}", NULL));
    CHECK_EQ_INT(h_pg_wait_int(&P, 3, 20000, "SELECT unread_count FROM " SCH ".chats WHERE chat_id = 'c1'"), 3);
    /* The service learns its durables' ack floors every 5 s and has no signal for it: wait one period so the floor
     * it knows covers the three deltas (what a stale floor costs is a redelivery of at most 5 s of acked work). */
    h_sleep_ms(5500);
    REQUIRE(js_DeleteConsumer(js, "wa_events_stream", "wa_listener_" CO "_chats_update", NULL, NULL) == NATS_OK);
    CHECK(h_svc_wait_log(&S, "consumer deleted at runtime; re-creating it", 20000));
    CHECK(wait_recovered("wa_events_stream", "wa_listener_" CO "_chats_update", 20000));
    CHECK(h_svc_wait_log(&S, "re-creating it after its last ack floor", 1000));
    REQUIRE(it_pub("v1.chats.update", CO, "{\"chat_id\":\"c1\",\"unread_delta\":1}", NULL));
    /* 4, not 7: the three deltas acked before the deletion are not applied again. */
    CHECK_EQ_INT(h_pg_wait_int(&P, 4, 20000, "SELECT unread_count FROM " SCH ".chats WHERE chat_id = 'c1'"), 4);
    h_sleep_ms(1000); /* a replay of the stream would show up within this */
    CHECK_EQ_INT(h_pg_int(&P, "SELECT unread_count FROM " SCH ".chats WHERE chat_id = 'c1'"), 4);
    CHECK_EQ_INT(it_dlq_count(CO), 0);
    js_down();
}

TEST(the_dlq_durable_deleted_at_runtime_is_recreated_and_records_flow_again)
{
    REQUIRE(it_up(CO, NO_ENV) && js_up());
    REQUIRE(js_DeleteConsumer(js, "dlq_stream", DLQ_DURABLE, NULL, NULL) == NATS_OK);
    CHECK(h_svc_wait_log(&S, "consumer deleted at runtime; re-creating it", 20000));
    CHECK(wait_recovered("dlq_stream", DLQ_DURABLE, 20000));
    poison_reaches_exhausted("poison-1", 1);
    CHECK_EQ_INT(it_dlq_count(CO), 1);
    js_down();
}

TEST(the_dlq_stream_deleted_at_runtime_is_recreated_and_the_worker_resubscribes)
{
    REQUIRE(it_up(CO, NO_ENV) && js_up());
    poison_reaches_exhausted("poison-before", 1);
    REQUIRE(js_DeleteStream(js, "dlq_stream", NULL, NULL) == NATS_OK);
    CHECK(h_svc_wait_log(&S, "stream deleted at runtime; re-creating it and the consumer", 20000));
    CHECK(wait_recovered("dlq_stream", DLQ_DURABLE, 20000));
    CHECK(stream_exists("dlq_stream"));
    poison_reaches_exhausted("poison-after", 2);
    CHECK_EQ_INT(it_dlq_count(CO), 1); /* the new stream holds only the record published after it was re-created */
    js_down();
}

TEST(a_dlq_stream_recreated_by_hand_gets_the_worker_back)
{
    REQUIRE(it_up(CO, NO_ENV) && js_up());
    REQUIRE(js_DeleteStream(js, "dlq_stream", NULL, NULL) == NATS_OK);
    REQUIRE(h_streams_create(&N)); /* an operator re-creates it at once, without the durable */
    CHECK(h_svc_wait_log(&S, "deleted at runtime", 20000));
    CHECK(wait_recovered("dlq_stream", DLQ_DURABLE, 20000));
    poison_reaches_exhausted("poison-hand", 1);
    js_down();
}

/* While the service cannot re-create what it owns (here another stream holds the DLQ subjects, so the DLQ stream
 * cannot be created), /ready is 503 and names the durable; once the obstacle is gone it recovers by itself. */
TEST(ready_names_a_durable_that_cannot_be_recreated_and_recovers_when_it_can)
{
    REQUIRE(it_up(CO, NO_ENV) && js_up());
    REQUIRE(js_DeleteStream(js, "dlq_stream", NULL, NULL) == NATS_OK);
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    const char *subjects[] = {"v1.dlq.>"};
    sc.Name = "squatter";
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Storage = js_MemoryStorage;
    REQUIRE(js_AddStream(NULL, js, &sc, NULL, NULL) == NATS_OK);
    CHECK(wait_ready_body(503, "\"not_subscribed\":[\"" DLQ_DURABLE "\"]", 20000));
    REQUIRE(js_DeleteStream(js, "squatter", NULL, NULL) == NATS_OK);
    CHECK(wait_recovered("dlq_stream", DLQ_DURABLE, 30000));
    poison_reaches_exhausted("poison-squat", 1);
    js_down();
}

TEST(the_realtime_stream_deleted_at_runtime_is_recreated_and_every_lane_resumes)
{
    REQUIRE(it_up(CO, NO_ENV) && js_up());
    chat("before");
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".chats"), 1);
    REQUIRE(js_DeleteStream(js, "wa_events_stream", NULL, NULL) == NATS_OK);
    CHECK(h_svc_wait_log(&S, "stream deleted at runtime; re-creating it and the consumer", 20000));
    CHECK(wait_recovered("wa_events_stream", "wa_listener_" CO "_chats_upsert", 20000));
    CHECK(wait_recovered("wa_events_stream", "wa_listener_" CO "_connection_update", 20000));
    chat("after");
    REQUIRE(it_pub("v1.connection.update", CO, "{\"agent_id\":\"a1\",\"status\":\"open\"}", NULL));
    CHECK_EQ_INT(h_pg_wait_int(&P, 2, 20000, "SELECT count(*) FROM " SCH ".chats"), 2);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".agents"), 1);
    js_down();
}
