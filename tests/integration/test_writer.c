/* test_writer.c - the writer stage (group commit, src/writer.c) when a stop request or a PostgreSQL outage meets a
 * group in flight. One writer session (DATABASE_WRITERS=1) and six busy lanes: while a test session holds a lock
 * that the group's statements need, the group waits in PostgreSQL and the other lanes' batches queue behind it.
 *
 * How a full group is made without timing the service: the backlog is published while the service is down and it
 * starts with every table it writes locked, so the first group waits and every other lane fetches a batch and
 * queues it. A second session then locks one table the first group does not need and the first lock goes: the
 * first group commits and the queued batches leave together as one group, which now waits for that table. pg_locks
 * shows when it waits. database.lockTimeout is raised so only the test decides how long a group waits. */
#include <signal.h>

#include <nats/nats.h>

#include "itest.h"

#define CO "acme"
#define SCH "daisi_acme"
#define K 1000 /* events per lane in the backlog (and rows the updates address) */

/* database.lockTimeout raised: the group waits for the test's lock, never for a timer of its own. */
static const char *const ENV[] = {"LOG_LEVEL=debug", "DATABASE_WRITERS=1", "DATABASE_LOCKTIMEOUT=120s", NULL};

/* The six lanes in play: durable suffix and subject base. Upserts of a new entity, updates of rows committed
 * before the backlog (so no update can find its row missing, whatever the order the lanes commit in). */
static const char *const SUFFIX[] = {"chats_upsert", "messages_upsert", "contacts_upsert",
                                     "chats_update", "messages_update", "contacts_update"};
static const char *const BASE[] = {"v1.chats.upsert", "v1.messages.upsert", "v1.contacts.upsert",
                                   "v1.chats.update", "v1.messages.update", "v1.contacts.update"};
enum { NLANES = 6 };

/* Events published on each lane's subject (the rows made before the backlog included). */
static long long published[NLANES];

static bool pub(int lane, const char *json)
{
    published[lane]++;
    return it_pub(BASE[lane], CO, json, NULL);
}

/* The upserts of one entity set: chat <c><i>, message <m><i> in it (timestamp <ts> then i in five digits) and
 * contact <phone><100000 + i> named <name>. */
static bool pub_upserts(const char *c, const char *m, int phone, int ts, const char *name, int i)
{
    char chat[256], msg[512], contact[256];
    snprintf(chat, sizeof chat, "{\"chat_id\":\"%s%d\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\"}", c, i);
    snprintf(msg, sizeof msg,
             "{\"message_id\":\"%s%d\",\"chat_id\":\"%s%d\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"OUT\","
             "\"status\":\"sent\",\"message_timestamp\":%d%05d}",
             m, i, c, i, ts, i);
    snprintf(contact, sizeof contact, "{\"agent_id\":\"a\",\"phone_number\":\"%d%d\",\"push_name\":\"%s\"}", phone,
             100000 + i, name);
    return pub(0, chat) && pub(1, msg) && pub(2, contact);
}

/* Chats pre<i>, messages pm<i> and contacts 63<i> that the backlog's updates address. */
static bool make_rows_to_update(void)
{
    for (int i = 0; i < K; i++) {
        if (!pub_upserts("pre", "pm", 63, 17000, "pre", i))
            return false;
    }
    return h_pg_wait_int(&P, K, 60000, "SELECT count(*) FROM " SCH ".chats") == K &&
           h_pg_wait_int(&P, K, 60000, "SELECT count(*) FROM " SCH ".messages") == K &&
           h_pg_wait_int(&P, K, 60000, "SELECT count(*) FROM " SCH ".contacts") == K;
}

/* The backlog: K new chats g<i>, messages gm<i>, contacts 62<i>; one unread_delta per chat pre<i>, status read per
 * message pm<i>, push_name u<i> per contact 63<i>. Interleaved, so every lane has work at once. */
static bool publish_backlog(void)
{
    for (int i = 0; i < K; i++) {
        char chat[128], msg[128], contact[256];
        snprintf(chat, sizeof chat, "{\"chat_id\":\"pre%d\",\"unread_delta\":1}", i);
        snprintf(msg, sizeof msg, "{\"message_id\":\"pm%d\",\"status\":\"read\"}", i);
        snprintf(contact, sizeof contact, "{\"agent_id\":\"a\",\"phone_number\":\"63%d\",\"push_name\":\"u%d\"}",
                 100000 + i, i);
        if (!pub_upserts("g", "gm", 62, 17100, "g", i) || !pub(3, chat) || !pub(4, msg) || !pub(5, contact))
            return false;
    }
    return true;
}

/* What each lane has in PostgreSQL: rows (upserts) or applied updates. */
static long long applied(int lane)
{
    switch (lane) {
    case 0: return h_pg_int(&P, "SELECT count(*) FROM " SCH ".chats");
    case 1: return h_pg_int(&P, "SELECT count(*) FROM " SCH ".messages");
    case 2: return h_pg_int(&P, "SELECT count(*) FROM " SCH ".contacts");
    case 3: return h_pg_int(&P, "SELECT coalesce(sum(unread_count), 0) FROM " SCH ".chats");
    case 4: return h_pg_int(&P, "SELECT count(*) FROM " SCH ".messages WHERE status = 'read'");
    default: return h_pg_int(&P, "SELECT count(*) FROM " SCH ".contacts WHERE push_name LIKE 'u%%'");
    }
}

/* Every published event in PostgreSQL exactly once: every row once, every unread_delta counted once. */
static void check_everything_once(int timeout_ms)
{
    static const long long want[NLANES] = {2 * K, 2 * K, 2 * K, K, K, K};
    for (int l = 0; l < NLANES; l++) {
        int64_t end = h_now_ms() + timeout_ms;
        long long got = applied(l);
        while (got != want[l] && h_now_ms() < end) {
            h_sleep_ms(100);
            got = applied(l);
        }
        if (got != want[l])
            fprintf(stderr, "lane %s: %lld applied, want %lld\n", SUFFIX[l], got, want[l]);
        CHECK_EQ_INT(got, want[l]);
    }
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(DISTINCT chat_id) FROM " SCH ".chats"), 2 * K);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".chats WHERE chat_id LIKE 'pre%%' AND unread_count <> 1"),
                 0);
    CHECK_EQ_INT(h_pg_int(&P, "SELECT count(*) FROM " SCH ".agents"), 1);
}

/* The durable of one of the six lanes. */
static bool durable_state(int lane, it_durable_t *st)
{
    char durable[128];
    snprintf(durable, sizeof durable, "wa_listener_%s_%s", CO, SUFFIX[lane]);
    return it_durable_state(durable, st);
}

/* Polls until every lane's durable has nothing left to deliver and nothing unacked; returns what is left. */
static long long wait_all_acked(int timeout_ms)
{
    int64_t end = h_now_ms() + timeout_ms;
    for (;;) {
        long long left = 0;
        for (int l = 0; l < NLANES; l++) {
            it_durable_t s;
            left += durable_state(l, &s) ? s.pending + s.ack_pending : 1;
        }
        if (left == 0 || h_now_ms() >= end)
            return left;
        h_sleep_ms(100);
    }
}

/* message_event_service_events_<family>_total of a realtime lane of acme (-1 when absent). */
static double lane_count(const char *family, int lane)
{
    char series[256];
    snprintf(series, sizeof series,
             "message_event_service_events_%s_total{event_type=\"%s\",company_id=\"acme\",consumer_type=\"realtime\"}",
             family, BASE[lane]);
    return h_metric(S.http_port, series);
}

static void check_no_failures_on_this_instance(void)
{
    for (int l = 0; l < NLANES; l++)
        CHECK(lane_count("failed", l) <= 0);
}

/* After a fault: every event committed once, none in the DLQ, none counted as failed, every durable with nothing
 * unacked, and a clean SIGTERM. */
static void check_recovered_once_then_stop(void)
{
    check_everything_once(120000);
    CHECK_EQ_INT(it_dlq_count(CO), 0);
    check_no_failures_on_this_instance();
    CHECK_EQ_INT(wait_all_acked(60000), 0);
    CHECK_EQ_INT(h_svc_signal(&S, SIGTERM, 30000), 0);
}

#define WAITING_SERVICE                                                                                                \
    " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid JOIN pg_class c ON c.oid = l.relation"                  \
    " WHERE NOT l.granted AND a.application_name = 'message-event-service' AND a.wait_event_type = 'Lock'"

/* Waits until a session of the service waits for a lock on SCH.table. */
static bool wait_blocked_on(const char *table, int timeout_ms)
{
    return h_pg_wait_int(&P, 1, timeout_ms, "SELECT least(count(*), 1)" WAITING_SERVICE " AND c.relname = '%s'",
                         table) == 1;
}

/* The table a session of the service waits for (malloc'd), NULL when none does within timeout_ms. */
static char *blocked_table(int timeout_ms)
{
    int64_t end = h_now_ms() + timeout_ms;
    for (;;) {
        char *t = h_pg_str(&P, "SELECT min(c.relname::text)" WAITING_SERVICE);
        if (t || h_now_ms() >= end)
            return t;
        h_sleep_ms(20);
    }
}

/* Commits the rows the updates need (a first start), publishes the backlog while the service is down, and starts it
 * with every table it writes locked: the first group waits, the other lanes fetch full batches and queue them. Then
 * a second session locks one table the first group does not wait for, and the first lock goes: the first group
 * commits and the queued batches leave together as one group, which waits for that table (*waits_on). Returns that
 * session. */
static PGconn *hold_a_full_group(const char **waits_on)
{
    memset(published, 0, sizeof published);
    if (!it_up(CO, ENV) || !make_rows_to_update() || h_svc_signal(&S, SIGTERM, 30000) != 0)
        return NULL;
    PGconn *all = it_lock_tables(SCH ".agents, " SCH ".chats, " SCH ".messages, " SCH ".contacts");
    if (!all)
        return NULL;
    if (!it_pub("v1.connection.update", CO, "{\"agent_id\":\"ag\",\"status\":\"open\"}", NULL) || !publish_backlog() ||
        !h_svc_start(&S, CO, &N, &P, ENV) || !h_svc_wait_ready(&S, 60000)) {
        PQfinish(all);
        return NULL;
    }
    char *first = blocked_table(30000);
    /* Each upsert lane holds a batch (received counts it); a moment more to validate it and queue it. */
    int64_t end = h_now_ms() + 30000;
    while (h_now_ms() < end &&
           !(lane_count("received", 0) > 0 && lane_count("received", 1) > 0 && lane_count("received", 2) > 0))
        h_sleep_ms(50);
    h_sleep_ms(1000);
    const char *target = first && strcmp(first, "chats") == 0 ? "messages" : "chats";
    *waits_on = target;
    printf("first group waits on %s; the next will wait on %s\n", first ? first : "(none)", target);
    char tables[128];
    snprintf(tables, sizeof tables, SCH ".%s", target);
    PGconn *one = first ? it_lock_tables(tables) : NULL;
    free(first);
    if (!one) {
        PQfinish(all);
        return NULL;
    }
    if (!it_unlock(all) || !wait_blocked_on(target, 30000)) {
        PQfinish(one);
        return NULL;
    }
    return one;
}

/* "group committed" debug lines of writer.c with batches > 1 and result committed, in log from offset `from`
 * (printed: batches and rows of each). */
static int full_groups_committed(const char *log, size_t from)
{
    int n = 0;
    if (!log || strlen(log) < from)
        return 0;
    for (const char *p = log + from; (p = strstr(p, "\"msg\":\"group committed\"")) != NULL; p++) {
        const char *eol = strchr(p, '\n');
        const char *b = strstr(p, "\"batches\":"), *r = strstr(p, "\"rows\":");
        const char *ok = strstr(p, "\"result\":\"committed\"");
        if (!b || !r || !ok || (eol && (b > eol || r > eol || ok > eol)))
            continue;
        long batches = strtol(b + strlen("\"batches\":"), NULL, 10), rows = strtol(r + strlen("\"rows\":"), NULL, 10);
        printf("group committed: %ld batches, %ld rows\n", batches, rows);
        n += batches > 1;
    }
    return n;
}

static size_t log_len(void)
{
    char *log = h_svc_log(&S);
    size_t n = log ? strlen(log) : 0;
    free(log);
    return n;
}

/* SPEC 11: on SIGTERM the batches in hand are finished, committed and acked. Here the stop request meets a group
 * of several lanes' batches waiting in PostgreSQL with more queued behind it: the service waits for it (still
 * alive, /ready 503), commits it and what queued, acks all of it and exits 0; nothing it took is left for a
 * redelivery, and the next start takes exactly what the first never fetched. */
TEST(sigterm_with_a_full_group_waiting_in_postgres_commits_and_acks_all_it_holds_then_exits_0)
{
    const char *table = NULL;
    PGconn *lock = hold_a_full_group(&table);
    REQUIRE(lock);
    REQUIRE(kill(S.pid, SIGTERM) == 0);
    CHECK(h_svc_wait_log(&S, "shutdown requested", 20000));
    h_sleep_ms(1000); /* the group still waits: the service must wait for it, not exit under it */
    CHECK(h_pid_alive(S.pid));
    CHECK_EQ_INT(h_http(S.http_port, "GET", "/ready", NULL), 503);
    CHECK(wait_blocked_on(table, 1000));
    size_t released_at = log_len();
    REQUIRE(it_unlock(lock));
    int64_t t0 = h_now_ms();
    CHECK_EQ_INT(h_svc_wait_exit(&S, 60000), 0); /* 0 means within shutdown.timeout (else 1) */
    printf("exit %lld ms after the lock was released\n", (long long)(h_now_ms() - t0));
    char *log = h_svc_log(&S);
    CHECK_CONTAINS(log, "shutdown complete");
    int full = full_groups_committed(log, released_at);
    printf("groups of several batches committed after the release: %d\n", full);
    CHECK(full >= 1);
    CHECK(log && !strstr(log, "event sent to DLQ") && !strstr(log, "NAKed for retry") &&
          !strstr(log, "shutdown timeout"));
    free(log);
    /* Everything it fetched is acked (and so committed: each acked upsert is a row, each update applied). */
    it_durable_t st[NLANES];
    for (int l = 0; l < NLANES; l++) {
        REQUIRE(durable_state(l, &st[l]));
        printf("%s after exit: %lld not delivered, %lld unacked, %lld applied of %lld\n", SUFFIX[l], st[l].pending,
               st[l].ack_pending, applied(l), published[l]);
        CHECK_EQ_INT(st[l].ack_pending, 0);
        CHECK_EQ_INT(applied(l), published[l] - st[l].pending);
    }
    /* The next start receives exactly what was never delivered: nothing acked comes back. */
    REQUIRE(h_svc_start(&S, CO, &N, &P, ENV) && h_svc_wait_ready(&S, 60000));
    check_everything_once(60000);
    CHECK_EQ_INT(wait_all_acked(60000), 0);
    for (int l = 0; l < NLANES; l++) {
        double got = lane_count("received", l);
        CHECK_EQ_INT(got < 0 ? 0 : (long long)got, st[l].pending);
    }
    CHECK_EQ_INT(it_dlq_count(CO), 0);
    check_no_failures_on_this_instance();
    CHECK_EQ_INT(h_svc_signal(&S, SIGTERM, 30000), 0);
}

/* SPEC 11 with PostgreSQL gone under the group: what was not committed is left unacked (never acked without a
 * commit) and the service still exits 0 within shutdown.timeout; after PostgreSQL and the service come back,
 * every event is committed exactly once and nothing went to the DLQ. */
static void stop_with_postgres_gone(bool sigterm_first)
{
    const char *table = NULL;
    PGconn *lock = hold_a_full_group(&table);
    REQUIRE(lock);
    if (sigterm_first) {
        REQUIRE(kill(S.pid, SIGTERM) == 0);
        CHECK(h_svc_wait_log(&S, "shutdown requested", 20000));
        h_pg_stop(&P); /* the waiting group loses its session mid-statement */
    } else {
        h_pg_stop(&P);
        CHECK(h_svc_wait_log(&S, "database unavailable; paused", 30000)); /* the group failed; lanes wait */
        REQUIRE(kill(S.pid, SIGTERM) == 0);
    }
    PQfinish(lock); /* its session is gone with the server */
    int64_t t0 = h_now_ms();
    CHECK_EQ_INT(h_svc_wait_exit(&S, 60000), 0);
    printf("exit %lld ms after the stop request / outage\n", (long long)(h_now_ms() - t0));
    char *log = h_svc_log(&S);
    CHECK_CONTAINS(log, "shutdown complete");
    CHECK(log && !strstr(log, "event sent to DLQ"));
    free(log);
    REQUIRE(h_pg_restart(&P));
    /* Never acked without a commit: what the durables count as acked is at most what PostgreSQL holds. */
    long long left = 0;
    it_durable_t st[NLANES];
    for (int l = 0; l < NLANES; l++) {
        REQUIRE(durable_state(l, &st[l]));
        long long acked = published[l] - st[l].pending - st[l].ack_pending;
        long long have = applied(l);
        printf("%s after exit: %lld not delivered, %lld unacked, %lld acked, %lld applied\n", SUFFIX[l], st[l].pending,
               st[l].ack_pending, acked, have);
        CHECK(have >= acked);                        /* nothing acked that is not committed */
        CHECK(have <= published[l] - st[l].pending); /* nor committed what was never delivered */
        left += st[l].ack_pending;
    }
    CHECK(left > 0); /* the group in flight was not committed: its events wait for a redelivery */
    /* After the ack wait the next start gets them again. */
    REQUIRE(h_svc_start(&S, CO, &N, &P, ENV) && h_svc_wait_ready(&S, 60000));
    check_recovered_once_then_stop();
}

TEST(postgres_stopped_under_a_waiting_group_then_sigterm_leaves_it_unacked_and_a_restart_commits_it_once)
{
    stop_with_postgres_gone(false);
}

TEST(sigterm_then_postgres_stopped_under_the_waiting_group_leaves_it_unacked_and_a_restart_commits_it_once)
{
    stop_with_postgres_gone(true);
}

/* A PostgreSQL outage that takes the session of a group holding several lanes' batches (one writer session): each
 * lane waits the outage out and commits its batch again; everything lands once, nothing goes to the DLQ, nothing
 * counts as failed, and every durable ends with nothing unacked. */
TEST(postgres_outage_under_a_group_of_several_lanes_commits_everything_once_after_recovery)
{
    const char *table = NULL;
    PGconn *lock = hold_a_full_group(&table);
    REQUIRE(lock);
    h_pg_stop(&P);
    PQfinish(lock);
    CHECK(h_svc_wait_log(&S, "database unavailable; paused", 30000));
    h_sleep_ms(3000); /* the outage itself: a few seconds with the lanes waiting */
    REQUIRE(h_pg_restart(&P));
    check_recovered_once_then_stop();
}

/* A group that waits in PostgreSQL longer than the ack wait (a lock held by someone else, here 3 ack waits). The
 * lanes waiting for the group's result send in-progress acks (writer.c wait_slice), and so does the lane committing
 * it, from inside store_commit (pipeline.c polls the session no longer than the keepalive's period): nothing is
 * redelivered, and a delta is applied once. (Before that fix: unread_count 3, received 3.) */
TEST(a_group_waiting_longer_than_the_ack_wait_is_not_redelivered_and_applies_a_delta_once)
{
    static const char *const env[] = {"LOG_LEVEL=debug", "DATABASE_WRITERS=1", "DATABASE_LOCKTIMEOUT=120s",
                                      "NATS_REALTIME_ACKWAIT=2s", NULL};
    REQUIRE(it_up(CO, env));
    REQUIRE(it_pub("v1.chats.upsert", CO,
                   "{\"chat_id\":\"slow\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\"}", NULL));
    REQUIRE(h_pg_wait_int(&P, 1, 30000, "SELECT count(*) FROM " SCH ".chats") == 1);
    PGconn *lock = it_lock_tables(SCH ".chats");
    REQUIRE(lock);
    REQUIRE(it_pub("v1.chats.update", CO, "{\"chat_id\":\"slow\",\"unread_delta\":1}", NULL));
    REQUIRE(wait_blocked_on("chats", 30000));
    h_sleep_ms(6000);
    REQUIRE(it_unlock(lock));
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 30000, "SELECT unread_count FROM " SCH ".chats"), 1);
    h_sleep_ms(3000); /* a redelivered copy would be applied by now */
    CHECK_EQ_INT(h_pg_int(&P, "SELECT unread_count FROM " SCH ".chats"), 1);
    CHECK_EQ_INT(lane_count("received", 3), 1);
}
