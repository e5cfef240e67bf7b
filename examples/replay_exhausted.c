/* replay_exhausted.c - lists a tenant's exhausted events, or replays one once its cause is gone.
 *
 *   replay_exhausted [--dsn DSN] [--company demo]                       lists the unresolved rows
 *   replay_exhausted --id N [--dsn DSN] [--url URL] [--company demo]   replays row N
 *
 * Defaults come from POSTGRES_DSN, NATS_URL and COMPANY_ID, as for the service. A replay publishes the row's
 * original_payload to its source_subject, waits for the PubAck and marks the row resolved. The service then treats
 * the event like any other: written if its cause is gone, else a new DLQ record and row. The full operator command
 * is `message-event-service exhausted replay --id N` (base64 and truncated originals, row locks). Exits 0 on
 * success, 1 otherwise, 2 on bad usage. */
#include <ctype.h>
#include <libpq-fe.h>

#include "examples.h"

int main(int argc, char **argv)
{
    if (!args_ok(argc, argv, (const char *const[]){"--dsn", "--url", "--company", "--id", NULL})) {
        fprintf(stderr, "usage: %s [--dsn DSN] [--url URL] [--company CO] [--id N]\n", argv[0]);
        return 2;
    }
    const char *dsn = opt(argc, argv, "--dsn", "POSTGRES_DSN", "host=127.0.0.1 user=postgres dbname=postgres");
    const char *url = opt(argc, argv, "--url", "NATS_URL", "nats://127.0.0.1:4222");
    const char *company = opt(argc, argv, "--company", "COMPANY_ID", "demo");
    const char *id = opt(argc, argv, "--id", NULL, NULL);

    PGconn *db = PQconnectdb(dsn);
    if (PQstatus(db) != CONNECTION_OK) {
        fprintf(stderr, "cannot connect to PostgreSQL: %s", PQerrorMessage(db));
        PQfinish(db);
        return 1;
    }
    char schema[64], sql[512]; /* the tenant's schema: daisi_ + lower-case company, quoted as an identifier */
    snprintf(schema, sizeof schema, "daisi_%.48s", company);
    for (char *c = schema; *c; c++)
        *c = (char)tolower((unsigned char)*c);
    char *sch = PQescapeIdentifier(db, schema, strlen(schema));
    int rc = 1;
    if (!id) {
        snprintf(sql, sizeof sql,
                 "SELECT id, source_subject, last_error FROM %s.exhausted_events"
                 " WHERE NOT resolved ORDER BY id",
                 sch);
        PGresult *r = PQexec(db, sql);
        if (PQresultStatus(r) == PGRES_TUPLES_OK) {
            for (int i = 0; i < PQntuples(r); i++)
                printf("%s  %s  %.80s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), PQgetvalue(r, i, 2));
            printf("%d unresolved; replay one with --id N\n", PQntuples(r));
            rc = 0;
        } else
            fprintf(stderr, "%s", PQerrorMessage(db));
        PQclear(r);
    } else {
        /* original_payload is NULL when the original was not JSON (the DLQ record keeps it as base64). */
        snprintf(sql, sizeof sql,
                 "SELECT source_subject, original_payload::text FROM %s.exhausted_events"
                 " WHERE id = $1 AND NOT resolved AND original_payload IS NOT NULL",
                 sch);
        PGresult *r = PQexecParams(db, sql, 1, NULL, &id, NULL, NULL, 0);
        natsConnection *nc = NULL;
        jsCtx *js = NULL;
        char msg_id[64]; /* a rerun after a failed UPDATE is not stored twice */
        snprintf(msg_id, sizeof msg_id, "example-replay-%.40s", id);
        if (PQresultStatus(r) != PGRES_TUPLES_OK)
            fprintf(stderr, "%s", PQerrorMessage(db));
        else if (PQntuples(r) == 0)
            fprintf(stderr, "no unresolved exhausted event %s with a JSON original in %s\n", id, schema);
        else if (connect_js(url, &nc, &js) && publish(js, PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1), msg_id)) {
            const char *params[2] = {id, "replayed by examples/replay_exhausted"};
            snprintf(sql, sizeof sql,
                     "UPDATE %s.exhausted_events SET resolved = true, resolved_at = now(),"
                     " notes = $2 WHERE id = $1",
                     sch);
            PGresult *u = PQexecParams(db, sql, 2, NULL, params, NULL, NULL, 0);
            if (PQresultStatus(u) == PGRES_COMMAND_OK) {
                printf("row %s marked resolved\n", id);
                rc = 0;
            } else
                fprintf(stderr, "published, but row %s is not marked resolved: %s", id, PQerrorMessage(db));
            PQclear(u);
        }
        PQclear(r);
        jsCtx_Destroy(js);
        natsConnection_Destroy(nc);
        nats_Close();
    }
    PQfreemem(sch);
    PQfinish(db);
    return rc;
}
