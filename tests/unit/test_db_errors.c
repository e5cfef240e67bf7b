/* test_db_errors.c - SPEC 4 classes of PostgreSQL errors seen in a switchover, and which connect failures startup
 * treats as unfixable by retrying (TLS verification and TLS files). */
#include "db.h"
#include "testlib.h"

static db_error_t classify(const char *state, bool conn_bad)
{
    db_error_t e;
    memset(&e, 0, sizeof e);
    db_classify(state, conn_bad, &e);
    return e;
}

TEST(switchover_errors_are_outages_not_data_errors)
{
    /* lost connection (no SQLSTATE), admin/crash shutdown, starting up, 08xxx, read-only (a standby, a fenced
     * primary), out of resources: pause, reconnect, retry the batch in hand. */
    const char *outages[] = {NULL,    "",      "57P01", "57P02", "57P03", "08000",
                             "08003", "08006", "08001", "25006", "53300", "53100"};
    for (size_t i = 0; i < sizeof outages / sizeof outages[0]; i++) {
        db_error_t e = classify(outages[i], false);
        CHECK(e.outage);
        CHECK(e.retryable);
    }
    db_error_t bad = classify("23505", true); /* a broken session is an outage whatever the last state said */
    CHECK(bad.outage);
}

TEST(data_errors_and_timeouts_stay_what_they_are)
{
    db_error_t e = classify("22P02", false);
    CHECK(!e.outage);
    CHECK(!e.retryable);
    e = classify("23505", false);
    CHECK(!e.outage && !e.retryable);
    e = classify("57014", false);
    CHECK(!e.outage && e.retryable && e.cls == ERR_TIMEOUT);
    e = classify("40P01", false);
    CHECK(!e.outage && e.retryable);
    e = classify("42P01", false); /* a dropped table: retryable, not DLQ at once */
    CHECK(!e.outage && e.retryable);
}

TEST(tls_setup_failures_are_unfixable_by_retrying_and_outages_are_not)
{
    const char *unfixable[] = {
        "connection to server at \"127.0.0.1\", port 5432 failed: SSL error: certificate verify failed",
        "connection to server at \"127.0.0.1\", port 5432 failed: server certificate for \"db.example\" does not "
        "match host name \"127.0.0.1\"",
        "connection to server at \"127.0.0.1\", port 5432 failed: root certificate file \"/x/ca.crt\" does not exist",
        "could not read root certificate file \"/x/ca.crt\": permission denied",
        "could not open certificate file \"/x/client.crt\": No such file or directory",
        "private key file \"/x/client.key\" has group or world access; file must have permissions u=rw (0600)",
        "certificate present, but not private key file \"/x/client.key\"",
        "connection to server at \"h\", port 1 failed: server does not support SSL, but SSL was required",
        "connection to server at \"h\", port 1 failed: SSL error: tlsv1 alert unknown ca",
        "connection to server at \"h\", port 1 failed: SSL error: tlsv13 alert certificate required",
        /* multi-host: one host down, the other fails verification - still a configuration problem */
        "connection to server at \"127.0.0.1\", port 1 failed: Connection refused  connection to server at "
        "\"127.0.0.1\", port 2 failed: SSL error: certificate verify failed",
    };
    for (size_t i = 0; i < sizeof unfixable / sizeof unfixable[0]; i++) {
        if (!db_connect_unfixable(unfixable[i]))
            testlib_fail(__FILE__, __LINE__, "not unfixable: %s", unfixable[i]);
    }
    const char *transient[] = {
        "connection to server at \"127.0.0.1\", port 5432 failed: Connection refused",
        "connection to server at \"127.0.0.1\", port 5432 failed: SSL SYSCALL error: EOF detected",
        "connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  the database system is starting up",
        "connection to server at \"127.0.0.1\", port 1 failed: Connection refused  connection to server at "
        "\"127.0.0.1\", port 2 failed: session is read-only",
        "connection to server at \"127.0.0.1\", port 5432 failed: timeout expired",
        NULL,
    };
    for (size_t i = 0; i < sizeof transient / sizeof transient[0]; i++) {
        if (db_connect_unfixable(transient[i]))
            testlib_fail(__FILE__, __LINE__, "wrongly unfixable: %s", transient[i] ? transient[i] : "(null)");
    }
}
