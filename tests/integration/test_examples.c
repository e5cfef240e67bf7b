/* test_examples.c - every program in examples/ runs against a real service and leaves the rows its header promises,
 * so the examples cannot rot. The binaries are $MES_BUILD_DIR/examples/<name>. */
#include <sys/stat.h>

#include "itest.h"

#define CO "acme"
#define SCH "daisi_acme"

static const char *const NO_ENV[] = {NULL};

/* Runs examples/<name> with the NULL-terminated args (and env, may be NULL); returns its exit status, output in out. */
static int run_env(const char *name, const char *const *env, char **out, const char *const *args)
{
    const char *build = getenv("MES_BUILD_DIR");
    char path[512];
    snprintf(path, sizeof path, "%s/examples/%s", build ? build : ".", name);
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "example %s was not built (cmake --build build --target %s)\n", path, name);
        *out = NULL;
        return -2;
    }
    const char *argv[16] = {path};
    int n = 1;
    for (int i = 0; args[i] && n < 15; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    int rc = h_run(argv, env, 90000, out);
    fprintf(stderr, "--- %s", name);
    for (int i = 0; args[i]; i++)
        fprintf(stderr, " %s", args[i]);
    fprintf(stderr, " -> %d\n%s\n", rc, *out ? *out : "");
    return rc;
}

/* The test servers and tenant as options, then the example's own args, NULL-terminated. */
#define RUN(out, name, ...)                                                                                            \
    run_env((name), NULL, (out), (const char *const[]){"--url", N.url, "--company", CO, __VA_ARGS__})

static long long exhausted_rows(void)
{
    return h_pg_int(&P, "SELECT count(*) FROM " SCH ".exhausted_events");
}

TEST(chat_message_and_history_examples_write_their_rows_and_onboard_the_sender)
{
    REQUIRE(it_up(CO, NO_ENV));
    char *out = NULL;

    CHECK_EQ_INT(RUN(&out, "publish_chat", NULL), 0);
    CHECK_CONTAINS(out, "published v1.chats.upsert.acme (Nats-Msg-Id chat-example-chat-1): stream "
                        "wa_events_stream, sequence 1");
    free(out);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 30000,
                               "SELECT count(*) FROM " SCH ".chats WHERE chat_id = 'example-chat-1'"
                               " AND push_name = 'Budi' AND unread_count = 1 AND company_id = 'acme'"
                               " AND last_message->>'text' = 'Halo, ada promo?'"),
                 1);
    /* Published twice, stored once: the Nats-Msg-Id makes a retry safe. */
    CHECK_EQ_INT(RUN(&out, "publish_chat", NULL), 0);
    CHECK_CONTAINS(out, "sequence 1, a duplicate the stream already held");
    free(out);

    CHECK_EQ_INT(RUN(&out, "publish_message_onboarding", NULL), 0);
    CHECK_CONTAINS(out, "published v1.messages.upsert.acme");
    free(out);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 30000,
                               "SELECT count(*) FROM " SCH ".messages WHERE message_id = 'example-msg-1'"
                               " AND flow = 'IN' AND status = 'delivered'"
                               " AND message_date = (now() AT TIME ZONE 'UTC')::date"),
                 1);
    /* Onboarded in the message's transaction: the contact (phone normalised to digits) and its log row. */
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".contacts WHERE agent_id = 'example-agent'"
                              " AND phone_number = '6281234567' AND tags = 'promo,december' AND origin = 'Ads'"
                              " AND first_message_id = 'example-msg-1' AND status = 'ACTIVE'"),
                 1);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".onboarding_log WHERE agent_id = 'example-agent'"
                              " AND phone_number = '6281234567' AND message_id = 'example-msg-1'"),
                 1);

    /* Options from the environment, as the service reads them. */
    char url_env[300];
    snprintf(url_env, sizeof url_env, "NATS_URL=%s", N.url);
    const char *env[] = {url_env, "COMPANY_ID=" CO, NULL};
    CHECK_EQ_INT(run_env("publish_history_batch", env, &out, (const char *const[]){"--count", "4", NULL}), 0);
    CHECK_CONTAINS(out, "published v1.history.messages.acme (Nats-Msg-Id history-example-old-1-to-4): stream "
                        "wa_history_events_stream");
    free(out);
    CHECK_EQ_INT(h_pg_wait_int(&P, 4, 30000,
                               "SELECT count(*) FROM " SCH ".messages"
                               " WHERE message_id LIKE 'example-old-%%' AND company_id = 'acme'"
                               " AND message_date = '2023-11-14' AND message_timestamp > 1700000000"),
                 4);
    /* History does not onboard; nothing went to the DLQ. */
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".contacts"), 1);
    CHECK_EQ_INT(it_dlq_count(CO), 0);

    CHECK_EQ_INT(run_env("publish_chat", NULL, &out, (const char *const[]){"--bogus", "1", NULL}), 2);
    CHECK_CONTAINS(out, "usage:");
    free(out);
}

TEST(poison_example_shows_its_dlq_record_and_replay_publishes_it_again_and_resolves_the_row)
{
    REQUIRE(it_up(CO, NO_ENV));
    char *out = NULL;
    CHECK_EQ_INT(RUN(&out, "publish_poison", "--wait", "60", NULL), 0);
    CHECK_CONTAINS(out, "DLQ record on v1.dlq.acme:");
    CHECK_CONTAINS(out, "\"error_class\":\"validation\"");
    CHECK_CONTAINS(out, "flow");
    CHECK_CONTAINS(out, "\"source_message_id\":\"example-poison-1\"");
    free(out);
    /* A validation error is not retried: the DLQ worker exhausts it at once. */
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 30000,
                               "SELECT count(*) FROM " SCH ".exhausted_events WHERE NOT resolved"
                               " AND source_subject = 'v1.messages.upsert.acme'"
                               " AND dlq_payload->>'source_message_id' = 'example-poison-1'"),
                 1);
    long long id = h_pg_int(&P, "SELECT id FROM " SCH ".exhausted_events");
    REQUIRE(id > 0);
    char id_s[24], row_line[64];
    snprintf(id_s, sizeof id_s, "%lld", id);
    snprintf(row_line, sizeof row_line, "%lld  v1.messages.upsert.acme  ", id);

    char dsn_opt[300];
    snprintf(dsn_opt, sizeof dsn_opt, "%s", P.dsn);
    CHECK_EQ_INT(RUN(&out, "replay_exhausted", "--dsn", dsn_opt, NULL), 0);
    CHECK_CONTAINS(out, row_line);
    CHECK_CONTAINS(out, "1 unresolved; replay one with --id N");
    free(out);

    CHECK_EQ_INT(RUN(&out, "replay_exhausted", "--dsn", dsn_opt, "--id", id_s, NULL), 0);
    CHECK_CONTAINS(out, "published v1.messages.upsert.acme (Nats-Msg-Id example-replay-");
    CHECK_CONTAINS(out, "marked resolved");
    free(out);
    CHECK_EQ_INT(h_pg_int(&P,
                          "SELECT count(*) FROM " SCH ".exhausted_events WHERE id = %lld AND resolved"
                          " AND resolved_at IS NOT NULL AND notes LIKE 'replayed by examples/%%'",
                          id),
                 1);
    /* Re-published: the stream holds it twice. Still poison: it comes back as a new record and a new row. */
    CHECK_EQ_INT(h_stream_count(&N, "wa_events_stream", "v1.messages.upsert.acme"), 2);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 30000,
                               "SELECT count(*) FROM " SCH ".exhausted_events WHERE NOT resolved"
                               " AND dlq_payload->>'source_message_id' = 'example-replay-%lld'",
                               id),
                 1);

    /* The row is resolved now: nothing left to replay under that id. */
    CHECK_EQ_INT(RUN(&out, "replay_exhausted", "--dsn", dsn_opt, "--id", id_s, NULL), 1);
    CHECK_CONTAINS(out, "no unresolved exhausted event");
    free(out);
    CHECK_EQ_INT(exhausted_rows(), 2);
}

TEST(replay_example_applies_an_update_that_was_exhausted_before_its_message_existed)
{
    /* One DLQ attempt: a not_found record is exhausted at once instead of being retried for minutes. */
    const char *const env[] = {"NATS_DLQMAXRETRIES=1", NULL};
    REQUIRE(it_up(CO, env));
    REQUIRE(it_pub("v1.messages.update", CO, "{\"message_id\":\"example-msg-1\",\"status\":\"read\"}", "early-read"));
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 30000,
                               "SELECT count(*) FROM " SCH ".exhausted_events WHERE NOT resolved"
                               " AND dlq_payload->>'error_class' = 'not_found'"),
                 1);
    long long id = h_pg_int(&P, "SELECT id FROM " SCH ".exhausted_events");
    REQUIRE(id > 0);

    /* The cause goes away: the message now exists (status delivered). */
    char *out = NULL;
    CHECK_EQ_INT(RUN(&out, "publish_message_onboarding", NULL), 0);
    free(out);
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 30000,
                               "SELECT count(*) FROM " SCH ".messages WHERE message_id = 'example-msg-1'"
                               " AND status = 'delivered'"),
                 1);

    char id_s[24];
    snprintf(id_s, sizeof id_s, "%lld", id);
    CHECK_EQ_INT(RUN(&out, "replay_exhausted", "--dsn", P.dsn, "--id", id_s, NULL), 0);
    CHECK_CONTAINS(out, "published v1.messages.update.acme");
    CHECK_CONTAINS(out, "marked resolved");
    free(out);
    /* The replayed update is applied; the row is resolved and nothing new was exhausted. */
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 30000,
                               "SELECT count(*) FROM " SCH ".messages WHERE message_id = 'example-msg-1'"
                               " AND status = 'read'"),
                 1);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".exhausted_events WHERE id = %lld AND resolved", id), 1);
    CHECK_EQ_INT(exhausted_rows(), 1);
}
