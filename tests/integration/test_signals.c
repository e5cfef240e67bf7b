/* test_signals.c - signals an operator or a supervisor sends (issue 17): SIGHUP and SIGUSR1/2 are logged and
 * ignored, a stop request while startup still waits for PostgreSQL or NATS is a clean exit 0, not a failure. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "itest.h"

#define CO "acme"

static const char *const NO_ENV[] = {NULL};

TEST(sighup_and_sigusr_are_logged_and_ignored_and_the_service_keeps_processing)
{
    REQUIRE(it_up(CO, NO_ENV));
    CHECK_EQ_INT(h_svc_signal(&S, SIGHUP, 0), 0);
    CHECK(h_svc_wait_log(&S, "\"signal\":\"SIGHUP\"", 10000));
    CHECK_EQ_INT(h_svc_signal(&S, SIGUSR1, 0), 0);
    CHECK(h_svc_wait_log(&S, "\"signal\":\"SIGUSR1\"", 10000));
    REQUIRE(it_pub("v1.chats.upsert", CO,
                   "{\"chat_id\":\"after-hup\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\"}", NULL));
    CHECK_EQ_INT(h_pg_wait_int(&P, 1, 20000, "SELECT count(*) FROM daisi_acme.chats WHERE chat_id = 'after-hup'"), 1);
    CHECK_EQ_INT(h_http(S.http_port, "GET", "/ready", NULL), 200);
    CHECK_EQ_INT(h_svc_signal(&S, SIGTERM, 20000), 0);
}

/* Starts the service with whatever of NATS and PostgreSQL is down, waits for its retry line, stops it. */
static void stop_during_startup(const char *retry_line)
{
    REQUIRE(h_svc_start(&S, CO, &N, &P, NO_ENV));
    REQUIRE(h_svc_wait_log(&S, retry_line, 30000));
    CHECK_EQ_INT(h_svc_signal(&S, SIGTERM, 15000), 0);
    char *log = h_svc_log(&S);
    CHECK_CONTAINS(log, "startup interrupted by a stop request");
    CHECK(log && strstr(log, "startup failed") == NULL && strstr(log, "\"level\":\"error\"") == NULL);
    free(log);
}

TEST(sigterm_while_waiting_for_postgres_exits_zero_saying_startup_was_interrupted)
{
    REQUIRE(h_nats_start(&N) && h_pg_start(&P));
    h_pg_stop(&P);
    stop_during_startup("PostgreSQL not reachable yet; retrying");
}

TEST(sigterm_while_waiting_for_nats_exits_zero_saying_startup_was_interrupted)
{
    REQUIRE(h_nats_start(&N) && h_pg_start(&P));
    h_nats_stop(&N);
    stop_during_startup("cannot connect to NATS; retrying");
}
