/* test_advisory.c - the safety net for what JetStream gives up on: events whose deliveries run out outside the
 * service's own decisions (another client on the durable, never acking) end in exhausted_events once, from the
 * max-deliveries advisory, also when it was published while no replica ran. Real NATS + PostgreSQL. */
#include <signal.h>

#include "itest.h"

#define CO "acme"
#define SCH "daisi_acme"
#define ADV_STREAM "mes_advisories_" CO
#define ADV_DURABLE "mes_advisory_worker_" CO
#define ADV_SUBJECT(stream, durable) "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." stream "." durable

/* Two deliveries, one second each: a client that never acks exhausts a message within seconds. */
static const char *const ENV[] = {"NATS_REALTIME_MAXDELIVER=2", "NATS_REALTIME_ACKWAIT=1s", "NATS_DLQMAXDELIVER=2",
                                  "NATS_DLQACKWAIT=1s",         "NATS_DLQMAXRETRIES=2",     NULL};

static const char CHAT[] = "{\"chat_id\":\"lost-chat\",\"jid\":\"628@s.whatsapp.net\",\"agent_id\":\"ag1\","
                           "\"phone_number\":\"628\"}";

static natsConnection *fnc; /* the foreign client */
static jsCtx *fjs;

static bool foreign_connect(void)
{
    if (fjs)
        return true;
    if (natsConnection_ConnectTo(&fnc, N.url) != NATS_OK)
        return false;
    return natsConnection_JetStream(&fjs, fnc, NULL) == NATS_OK;
}

static double metric_of(const h_svc_t *s, const char *stream)
{
    char series[256];
    snprintf(series, sizeof series,
             "message_event_service_jetstream_exhausted_total{company_id=\"" CO "\",stream=\"%s\"}", stream);
    double v = h_metric(s->http_port, series);
    return v < 0 ? 0 : v;
}

/* Pulls from durable on stream like another client would, never acking, until JetStream has given up on the message
 * and the advisory is in the tenant's advisory stream. Returns the deliveries the client received. */
static int exhaust_outside(const char *stream, const char *durable, const char *filter, const char *adv_subject)
{
    natsSubscription *sub = NULL;
    jsSubOptions so;
    jsErrCode jerr = 0;
    jsSubOptions_Init(&so);
    so.Stream = stream;
    so.Consumer = durable;
    if (!foreign_connect() || js_PullSubscribe(&sub, fjs, filter, durable, NULL, &so, &jerr) != NATS_OK) {
        fprintf(stderr, "foreign pull subscribe on %s failed (js error %d)\n", durable, (int)jerr);
        return -1;
    }
    int deliveries = 0;
    for (int64_t end = h_now_ms() + 30000; h_now_ms() < end && h_stream_count(&N, ADV_STREAM, adv_subject) < 1;) {
        natsMsgList l = {0};
        if (natsSubscription_Fetch(&l, sub, 1, 1500, &jerr) == NATS_OK)
            deliveries += l.Count;
        natsMsgList_Destroy(&l); /* never acked */
    }
    natsSubscription_Destroy(sub); /* bound to an existing durable: the durable stays */
    return deliveries;
}

/* Waits until the advisory durable has nothing pending or unacked: every advisory so far was handled. */
static bool advisories_settled(int timeout_ms)
{
    for (int64_t end = h_now_ms() + timeout_ms; h_now_ms() < end; h_sleep_ms(100)) {
        jsConsumerInfo *ci = NULL;
        jsErrCode jerr = 0;
        if (js_GetConsumerInfo(&ci, fjs, ADV_STREAM, ADV_DURABLE, NULL, &jerr) != NATS_OK)
            continue;
        bool done = ci->NumPending == 0 && ci->NumAckPending == 0;
        jsConsumerInfo_Destroy(ci);
        if (done)
            return true;
    }
    return false;
}

/* `message-event-service exhausted <args>` for tenant acme with the test's servers; returns the exit status. */
static int cli(const char *const *args)
{
    char dsn_env[320], url_env[300], *out = NULL;
    snprintf(dsn_env, sizeof dsn_env, "POSTGRES_DSN=%s", P.dsn);
    snprintf(url_env, sizeof url_env, "NATS_URL=%s", N.url);
    const char *env[] = {"COMPANY_ID=" CO, dsn_env, url_env, NULL};
    const char *argv[16];
    int n = 0;
    argv[n++] = getenv("MES_SERVICE_BIN");
    argv[n++] = "exhausted";
    for (int i = 0; args[i] && n < 15; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    int rc = h_run(argv, env, 30000, &out);
    fprintf(stderr, "--- exhausted %s -> %d\n%s\n", args[0], rc, out ? out : "");
    free(out);
    return rc;
}

/* The service up once (streams, durables and the advisory stream exist), then stopped cleanly. */
static bool up_then_down(void)
{
    if (!it_up(CO, ENV))
        return false;
    char *body = NULL;
    int status = h_http(S.http_port, "GET", "/ready", &body);
    bool ok = status == 200 && body && strstr(body, "\"advisories\":\"subscribed\"");
    if (!ok)
        fprintf(stderr, "/ready %d: %s\n", status, body ? body : "(none)");
    free(body);
    /* The family is there from startup, with a zero series per stream. */
    ok = ok &&
         h_metric(S.http_port, "message_event_service_jetstream_exhausted_total{company_id=\"" CO
                               "\",stream=\"wa_events_stream\"}") == 0 &&
         h_metric(S.http_port,
                  "message_event_service_jetstream_exhausted_total{company_id=\"" CO "\",stream=\"dlq_stream\"}") == 0;
    return h_svc_signal(&S, SIGTERM, 20000) == 0 && ok;
}

TEST(an_event_exhausted_by_another_client_while_the_service_was_down_is_stored_once_and_replays)
{
    REQUIRE(up_then_down());
    REQUIRE(it_pub("v1.chats.upsert", CO, CHAT, "lost-1")); /* wa_events_stream sequence 1 */
    CHECK_EQ_INT(exhaust_outside("wa_events_stream", "wa_listener_acme_chats_upsert", "v1.chats.upsert.acme",
                                 ADV_SUBJECT("wa_events_stream", "wa_listener_acme_chats_upsert")),
                 2);
    CHECK_EQ_INT(h_stream_count(&N, ADV_STREAM, ADV_SUBJECT("wa_events_stream", "wa_listener_acme_chats_upsert")), 1);

    /* Two replicas come back and share the advisory durable. */
    h_svc_t s2;
    REQUIRE(h_svc_start(&S, CO, &N, &P, ENV) && h_svc_start(&s2, CO, &N, &P, ENV));
    REQUIRE(h_svc_wait_ready(&S, 60000) && h_svc_wait_ready(&s2, 60000));
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".exhausted_events"), 1);
    char *row = h_pg_str(&P, "SELECT concat_ws('|', dlq_message_id, source_subject, retry_count,"
                             " original_payload->>'chat_id', last_error, event_timestamp IS NOT NULL, company_id,"
                             " dlq_payload->>'source_sequence', dlq_payload->>'original_payload_encoding',"
                             " dlq_payload->'jetstream_advisory'->>'deliveries', dlq_payload->>'source_message_id')"
                             " FROM " SCH ".exhausted_events");
    CHECK_EQ_STR(row, "wa_events_stream:1|v1.chats.upsert.acme|2|lost-chat|JetStream gave up after 2 deliveries"
                      " (consumer wa_listener_acme_chats_upsert)|t|acme|1|json|2|lost-1");
    free(row);
    /* The service never received it: only the advisory told. */
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".chats"), 0);

    /* The same advisory again, several times, to both replicas: still one row, counted once. */
    char **adv = NULL;
    REQUIRE(h_stream_read(&N, ADV_STREAM, ADV_SUBJECT("wa_events_stream", "wa_listener_acme_chats_upsert"), 1, &adv) ==
            1);
    for (int i = 0; i < 4; i++)
        CHECK(h_publish(&N, ADV_SUBJECT("wa_events_stream", "wa_listener_acme_chats_upsert"), adv[0], strlen(adv[0]),
                        NULL));
    h_strv_free(adv, 1);
    CHECK(advisories_settled(20000));
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".exhausted_events"), 1);
    CHECK_EQ_INT(metric_of(&S, "wa_events_stream") + metric_of(&s2, "wa_events_stream"), 1);

    /* Replayable: the original goes back to its subject and is applied. */
    long long id = h_pg_int(&P, "SELECT id FROM " SCH ".exhausted_events");
    char ids[24];
    snprintf(ids, sizeof ids, "%lld", id);
    CHECK_EQ_INT(cli((const char *const[]){"replay", "--id", ids, NULL}), 0);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".chats WHERE chat_id = 'lost-chat'"), 1);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".exhausted_events WHERE resolved"), 1);
    CHECK_EQ_INT(h_svc_signal(&s2, SIGTERM, 20000), 0);
    CHECK_EQ_INT(h_svc_signal(&S, SIGTERM, 20000), 0);
}

TEST(an_event_whose_message_was_removed_before_the_advisory_is_processed_is_recorded_from_the_advisory)
{
    REQUIRE(up_then_down());
    REQUIRE(it_pub("v1.chats.upsert", CO, CHAT, "gone-1"));
    CHECK_EQ_INT(exhaust_outside("wa_events_stream", "wa_listener_acme_chats_upsert", "v1.chats.upsert.acme",
                                 ADV_SUBJECT("wa_events_stream", "wa_listener_acme_chats_upsert")),
                 2);
    jsErrCode jerr = 0;
    REQUIRE(js_DeleteMsg(fjs, "wa_events_stream", 1, NULL, &jerr) == NATS_OK);
    REQUIRE(h_svc_start(&S, CO, &N, &P, ENV) && h_svc_wait_ready(&S, 60000));
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".exhausted_events"), 1);
    char *row = h_pg_str(&P, "SELECT concat_ws('|', dlq_message_id, source_subject, retry_count,"
                             " original_payload IS NULL, last_error, dlq_payload->>'original_payload_missing',"
                             " dlq_payload->'jetstream_advisory'->>'stream_seq') FROM " SCH ".exhausted_events");
    CHECK_EQ_STR(row, "wa_events_stream:1|v1.chats.upsert.acme|2|t|JetStream gave up after 2 deliveries (consumer"
                      " wa_listener_acme_chats_upsert); the full message is gone from stream wa_events_stream"
                      " (sequence 1)|true|1");
    free(row);
    CHECK(advisories_settled(20000));
    CHECK_EQ_INT(metric_of(&S, "wa_events_stream"), 1);
    /* Nothing to replay: the command says so and leaves the row open. */
    long long id = h_pg_int(&P, "SELECT id FROM " SCH ".exhausted_events");
    char ids[24];
    snprintf(ids, sizeof ids, "%lld", id);
    CHECK_EQ_INT(cli((const char *const[]){"replay", "--id", ids, NULL}), 3);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".exhausted_events WHERE resolved"), 0);
    CHECK_EQ_INT(h_svc_signal(&S, SIGTERM, 20000), 0);
}

TEST(a_dlq_record_exhausted_outside_the_dlq_worker_is_stored_as_its_exhaustion_would_with_its_original)
{
    REQUIRE(up_then_down());
    static const char rec[] =
        "{\"source_subject\":\"v1.chats.upsert.acme\",\"company\":\"acme\",\"original_payload\":{\"chat_id\":"
        "\"from-dlq\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\"},\"original_payload_encoding\":\"json\","
        "\"error\":\"SQLSTATE 57014: canceling statement\",\"error_type\":\"retryable\",\"error_class\":\"timeout\","
        "\"retry_count\":2,\"max_retry\":2,\"source_stream\":\"wa_events_stream\",\"source_sequence\":42,"
        "\"source_message_id\":\"src-42\",\"ts\":\"2026-11-22T10:00:00.000Z\"}";
    REQUIRE(h_publish(&N, "v1.dlq.acme", rec, strlen(rec), "dlq:wa_events_stream:42")); /* dlq_stream sequence 1 */
    CHECK_EQ_INT(exhaust_outside("dlq_stream", "v1_dlq_worker_acme", "v1.dlq.acme",
                                 ADV_SUBJECT("dlq_stream", "v1_dlq_worker_acme")),
                 2);
    REQUIRE(h_svc_start(&S, CO, &N, &P, ENV) && h_svc_wait_ready(&S, 60000));
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".exhausted_events"), 1);
    char *row = h_pg_str(&P, "SELECT concat_ws('|', dlq_message_id, source_subject, retry_count,"
                             " original_payload->>'chat_id', last_error, dlq_payload->>'error_class',"
                             " event_timestamp = '2026-11-22T10:00:00Z') FROM " SCH ".exhausted_events");
    CHECK_EQ_STR(row, "dlq_stream:1|v1.chats.upsert.acme|4|from-dlq|JetStream gave up after 2 deliveries (consumer"
                      " v1_dlq_worker_acme); the record's error: SQLSTATE 57014: canceling statement|timeout|t");
    free(row);
    CHECK(advisories_settled(20000));
    CHECK_EQ_INT(metric_of(&S, "dlq_stream"), 1);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".chats"), 0);
    long long id = h_pg_int(&P, "SELECT id FROM " SCH ".exhausted_events");
    char ids[24];
    snprintf(ids, sizeof ids, "%lld", id);
    CHECK_EQ_INT(cli((const char *const[]){"replay", "--id", ids, NULL}), 0);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".chats WHERE chat_id = 'from-dlq'"), 1);
    CHECK_EQ_INT(h_svc_signal(&S, SIGTERM, 20000), 0);
}

/* The service runs and consumes only chats.upsert: the chats.update durable belongs to another client, which
 * exhausts a message on it. The live advisory is stored without a restart. */
TEST(an_event_exhausted_while_the_service_runs_is_stored_without_a_restart)
{
    static const char *const env[] = {"NATS_REALTIME_MAXDELIVER=2", "NATS_REALTIME_ACKWAIT=1s",
                                      "NATS_REALTIME_SUBJECTLIST=v1.chats.upsert", NULL};
    REQUIRE(it_up(CO, env));
    REQUIRE(foreign_connect());
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = "wa_listener_acme_chats_update";
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = 1000000000LL;
    cc.MaxDeliver = 2;
    cc.FilterSubject = "v1.chats.update.acme";
    jsErrCode jerr = 0;
    REQUIRE(js_AddConsumer(NULL, fjs, "wa_events_stream", &cc, NULL, &jerr) == NATS_OK);
    REQUIRE(it_pub("v1.chats.update", CO, "{\"chat_id\":\"x\",\"unread_count\":1}", NULL));
    CHECK_EQ_INT(exhaust_outside("wa_events_stream", "wa_listener_acme_chats_update", "v1.chats.update.acme",
                                 ADV_SUBJECT("wa_events_stream", "wa_listener_acme_chats_update")),
                 2);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM " SCH ".exhausted_events"), 1);
    char *row = h_pg_str(&P, "SELECT concat_ws('|', dlq_message_id, source_subject, retry_count,"
                             " original_payload->>'chat_id', dlq_payload->>'source_message_id')"
                             " FROM " SCH ".exhausted_events");
    CHECK_EQ_STR(row, "wa_events_stream:1|v1.chats.update.acme|2|x|wa_events_stream:1");
    free(row);
    CHECK(advisories_settled(20000));
    CHECK_EQ_INT(metric_of(&S, "wa_events_stream"), 1);
    CHECK_EQ_INT(h_svc_signal(&S, SIGTERM, 20000), 0);
}

/* After a NATS restart the advisory consumer re-subscribes (pull requests do not survive one): /ready is 200 again
 * and an event exhausted afterwards is stored. */
TEST(the_advisory_consumer_resubscribes_after_a_nats_restart)
{
    static const char *const env[] = {"NATS_REALTIME_MAXDELIVER=2", "NATS_REALTIME_ACKWAIT=1s",
                                      "NATS_REALTIME_SUBJECTLIST=v1.chats.upsert", NULL};
    REQUIRE(it_up(CO, env));
    REQUIRE(h_nats_restart(&N));
    int status = 0;
    for (int64_t end = h_now_ms() + 30000; h_now_ms() < end && status != 200; h_sleep_ms(100)) {
        char *body = NULL;
        status = h_http(S.http_port, "GET", "/ready", &body);
        free(body);
    }
    CHECK_EQ_INT(status, 200);
    REQUIRE(foreign_connect());
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = "wa_listener_acme_contacts_update";
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = 1000000000LL;
    cc.MaxDeliver = 2;
    cc.FilterSubject = "v1.contacts.update.acme";
    jsErrCode jerr = 0;
    REQUIRE(js_AddConsumer(NULL, fjs, "wa_events_stream", &cc, NULL, &jerr) == NATS_OK);
    REQUIRE(it_pub("v1.contacts.update", CO, "{\"phone_number\":\"1\",\"agent_id\":\"a\"}", NULL));
    CHECK_EQ_INT(exhaust_outside("wa_events_stream", "wa_listener_acme_contacts_update", "v1.contacts.update.acme",
                                 ADV_SUBJECT("wa_events_stream", "wa_listener_acme_contacts_update")),
                 2);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 30000,
                               "SELECT count(*) FROM " SCH ".exhausted_events"
                               " WHERE source_subject = 'v1.contacts.update.acme'"),
                 1);
    CHECK_EQ_INT(h_svc_signal(&S, SIGTERM, 20000), 0);
}
