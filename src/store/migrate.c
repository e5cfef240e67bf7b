/* migrate.c - the tenant schema: explicit, ordered, idempotent migrations and rolling monthly partitions. */
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "store.h"

/* Migrations run with search_path = the tenant schema, so names are unqualified. Append only: never edit a
 * migration that has shipped; add a new one. */
static const struct {
    int version;
    const char *name;
    const char *sql;
} migrations[] = {
    {1, "tables",
     "CREATE TABLE IF NOT EXISTS chats ("
     " id bigserial PRIMARY KEY, chat_id text NOT NULL UNIQUE, jid text, push_name text, is_group boolean,"
     " group_name text, unread_count integer, last_message jsonb, conversation_timestamp bigint, not_spam boolean,"
     " agent_id text, company_id text, phone_number text, custom_name text, last_metadata jsonb,"
     " created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());"
     "CREATE TABLE IF NOT EXISTS messages ("
     " id bigserial, message_id text NOT NULL, from_phone text, to_phone text, chat_id text, jid text,"
     " message_text text, message_url text, message_type text, company_id text, key jsonb, edited_message_obj jsonb,"
     " message_obj jsonb, flow text, agent_id text, status text, is_deleted boolean DEFAULT false,"
     " message_timestamp bigint, message_date date NOT NULL, last_metadata jsonb,"
     " created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),"
     " PRIMARY KEY (id, message_date), UNIQUE (message_id, message_date)) PARTITION BY RANGE (message_date);"
     "CREATE TABLE IF NOT EXISTS messages_default PARTITION OF messages DEFAULT;"
     "CREATE INDEX IF NOT EXISTS messages_message_id_idx ON messages (message_id);"
     "CREATE INDEX IF NOT EXISTS messages_chat_id_idx ON messages (chat_id);"
     "CREATE TABLE IF NOT EXISTS contacts ("
     " id text PRIMARY KEY, phone_number text NOT NULL, agent_id text NOT NULL, chat_id text, type text,"
     " custom_name text, notes text, tags text, company_id text, avatar text, assigned_to text, pob text, dob date,"
     " gender text DEFAULT 'MALE', origin text, push_name text, status text DEFAULT 'ACTIVE',"
     " first_message_id text, first_message_timestamp bigint, created_at timestamptz NOT NULL DEFAULT now(),"
     " updated_at timestamptz NOT NULL DEFAULT now(), last_metadata jsonb, UNIQUE (agent_id, phone_number));"
     "CREATE TABLE IF NOT EXISTS agents ("
     " id bigserial PRIMARY KEY, agent_id text NOT NULL UNIQUE, qr_code text, status text, agent_name text,"
     " phone_number text, host_name text, version text, company_id text,"
     " created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),"
     " last_metadata jsonb);"
     "CREATE TABLE IF NOT EXISTS onboarding_log ("
     " id bigserial PRIMARY KEY, message_id text, agent_id text, company_id text, phone_number text,"
     " \"timestamp\" bigint, created_at timestamptz NOT NULL DEFAULT now(), last_metadata jsonb,"
     " UNIQUE (agent_id, phone_number));"
     "CREATE TABLE IF NOT EXISTS exhausted_events ("
     " id bigserial PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now(), company_id text NOT NULL,"
     " source_subject text NOT NULL, last_error text, retry_count integer, event_timestamp timestamptz,"
     " dlq_payload jsonb NOT NULL, original_payload jsonb, resolved boolean DEFAULT false,"
     " resolved_at timestamptz, notes text, dlq_message_id text UNIQUE);"
     "CREATE INDEX IF NOT EXISTS exhausted_events_unresolved_idx ON exhausted_events (resolved, created_at);"},
    {2, "functions",
     /* Status rank for "never regress" (SPEC 3.2); 0 = not on the ladder, always applies. */
     "CREATE OR REPLACE FUNCTION mes_status_rank(s text) RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE AS"
     " $$ SELECT CASE s WHEN 'pending' THEN 1 WHEN 'sent' THEN 2 WHEN 'delivered' THEN 3 WHEN 'read' THEN 4"
     " WHEN 'played' THEN 5 ELSE 0 END $$;"
     /* Comma-separated tag sets: union, first-seen order, blanks dropped (SPEC 6). */
     "CREATE OR REPLACE FUNCTION mes_merge_tags(a text, b text) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS"
     " $$ SELECT NULLIF(string_agg(t, ',' ORDER BY o), '') FROM ("
     "   SELECT t, min(o) AS o FROM ("
     "     SELECT btrim(x) AS t, n AS o FROM unnest(string_to_array(coalesce(a, ''), ',')) WITH ORDINALITY u(x, n)"
     "     UNION ALL"
     "     SELECT btrim(x), 1000000000 + n FROM unnest(string_to_array(coalesce(b, ''), ',')) WITH ORDINALITY u(x, n)"
     "   ) s WHERE t <> '' GROUP BY t) g $$;"},
    /* The unique (message_id, message_date) index already serves lookups by message_id (its leading column): the
     * separate index only cost every message insert an extra index write. */
    {3, "drop_redundant_message_id_index", "DROP INDEX IF EXISTS messages_message_id_idx;"},
    /* mes_merge_tags, same result, in PL/pgSQL. A SQL function with a FROM clause is never inlined: every statement
     * that called it parsed and planned its body again (about 2 ms, 2026-12-06 profile), then paid an executor start
     * per call (about 10 us); onboarding called it per row, so onboarding cost more PostgreSQL time than the messages
     * it came with. PL/pgSQL compiles once per session and costs about 3 us a call. */
    {4, "merge_tags_plpgsql",
     "CREATE OR REPLACE FUNCTION mes_merge_tags(a text, b text) RETURNS text LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE"
     " AS $$ DECLARE out text[] := '{}'; x text; BEGIN"
     "  IF a IS NOT NULL THEN FOREACH x IN ARRAY string_to_array(a, ',') LOOP x := btrim(x);"
     "   IF x <> '' AND NOT x = ANY (out) THEN out := out || x; END IF; END LOOP; END IF;"
     "  IF b IS NOT NULL THEN FOREACH x IN ARRAY string_to_array(b, ',') LOOP x := btrim(x);"
     "   IF x <> '' AND NOT x = ANY (out) THEN out := out || x; END IF; END LOOP; END IF;"
     "  RETURN NULLIF(array_to_string(out, ','), ''); END $$;"},
};

#define NMIGRATIONS (sizeof migrations / sizeof migrations[0])

static const char *const required_tables[] = {
    "schema_migrations", "chats", "messages", "contacts", "agents", "onboarding_log", "exhausted_events", NULL};

static int verify(db_conn_t *c, db_error_t *err)
{
    for (int i = 0; required_tables[i]; i++) {
        const char *params[2] = {c->cfg->schema, required_tables[i]};
        PGresult *r = db_exec(c,
                              "SELECT 1 FROM pg_catalog.pg_tables t WHERE t.schemaname = $1 AND t.tablename = $2"
                              " UNION ALL SELECT 1 FROM pg_catalog.pg_partitioned_table p"
                              " JOIN pg_catalog.pg_class k ON k.oid = p.partrelid"
                              " JOIN pg_catalog.pg_namespace s ON s.oid = k.relnamespace"
                              " WHERE s.nspname = $1 AND k.relname = $2",
                              2, params, err);
        if (!r)
            return -1;
        int found = PQntuples(r) > 0;
        PQclear(r);
        if (!found) {
            snprintf(err->message, sizeof err->message,
                     "schema %s is missing table %s and database.postgresAutoMigrate is false: run once with "
                     "DATABASE_POSTGRESAUTOMIGRATE=true or apply the migrations",
                     c->cfg->schema, required_tables[i]);
            err->sqlstate[0] = '\0';
            err->cls = ERR_DATABASE;
            err->retryable = false;
            err->outage = false;
            return -1;
        }
    }
    return 0;
}

int store_migrate(db_conn_t *c, bool auto_migrate, db_error_t *err)
{
    if (!auto_migrate)
        return verify(c, err);

    char sql[256];
    if (db_command(c, "BEGIN", err) != 0)
        return -1;
    /* One migrator per tenant at a time; the lock is released by COMMIT/ROLLBACK. */
    const char *lockp[1] = {c->cfg->schema};
    PGresult *r = db_exec(c, "SELECT pg_advisory_xact_lock(hashtext('mes_migrate:' || $1))", 1, lockp, err);
    if (!r)
        goto cleanup;
    PQclear(r);
    snprintf(sql, sizeof sql, "CREATE SCHEMA IF NOT EXISTS %s", c->schema_ident);
    if (db_command(c, sql, err) != 0)
        goto cleanup;
    if (db_command(c,
                   "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                   " applied_at timestamptz NOT NULL DEFAULT now())",
                   err) != 0)
        goto cleanup;
    for (size_t i = 0; i < NMIGRATIONS; i++) {
        char v[16];
        snprintf(v, sizeof v, "%d", migrations[i].version);
        const char *vp[2] = {v, migrations[i].name};
        r = db_exec(c, "SELECT 1 FROM schema_migrations WHERE version = $1", 1, vp, err);
        if (!r)
            goto cleanup;
        int done = PQntuples(r) > 0;
        PQclear(r);
        if (done)
            continue;
        if (db_command(c, migrations[i].sql, err) != 0)
            goto cleanup;
        r = db_exec(c, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", 2, vp, err);
        if (!r)
            goto cleanup;
        PQclear(r);
        log_info("store", "migration applied", LF_I("version", migrations[i].version), LF_S("name", migrations[i].name),
                 LF_S("schema", c->cfg->schema));
    }
    if (db_command(c, "COMMIT", err) != 0)
        goto cleanup;
    return 0;
cleanup:
    db_rollback(c);
    return -1;
}

static int ensure_month(db_conn_t *c, int year, int month, db_error_t *err)
{
    char name[48], from[32], to[32], sql[1024];
    int ny = month == 12 ? year + 1 : year, nm = month == 12 ? 1 : month + 1;
    snprintf(name, sizeof name, "messages_y%04dm%02d", year, month);
    snprintf(from, sizeof from, "%04d-%02d-01", year, month);
    snprintf(to, sizeof to, "%04d-%02d-01", ny, nm);

    const char *p[2] = {c->cfg->schema, name};
    PGresult *r = db_exec(c,
                          "SELECT 1 FROM pg_catalog.pg_class k JOIN pg_catalog.pg_namespace s ON s.oid = k.relnamespace"
                          " WHERE s.nspname = $1 AND k.relname = $2",
                          2, p, err);
    if (!r)
        return -1;
    int exists = PQntuples(r) > 0;
    PQclear(r);
    if (exists)
        return 0;

    if (db_command(c, "BEGIN", err) != 0)
        return -1;
    const char *lockp[1] = {c->cfg->schema};
    r = db_exec(c, "SELECT pg_advisory_xact_lock(hashtext('mes_partition:' || $1))", 1, lockp, err);
    if (!r)
        goto cleanup;
    PQclear(r);
    /* Rows of that month that landed in the default partition (a long stop, clock skew) move into the new partition,
     * otherwise ATTACH would refuse. All of it is one transaction. */
    snprintf(sql, sizeof sql,
             "CREATE TABLE IF NOT EXISTS %s (LIKE messages INCLUDING DEFAULTS INCLUDING CONSTRAINTS);"
             "WITH moved AS (DELETE FROM messages_default WHERE message_date >= '%s' AND message_date < '%s'"
             " RETURNING *) INSERT INTO %s SELECT * FROM moved;"
             "ALTER TABLE messages ATTACH PARTITION %s FOR VALUES FROM ('%s') TO ('%s')",
             name, from, to, name, name, from, to);
    /* Another replica may have attached it between our check and the lock. */
    r = db_exec(c,
                "SELECT 1 FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class k ON k.oid = i.inhrelid"
                " JOIN pg_catalog.pg_namespace s ON s.oid = k.relnamespace WHERE s.nspname = $1 AND k.relname = $2",
                2, p, err);
    if (!r)
        goto cleanup;
    exists = PQntuples(r) > 0;
    PQclear(r);
    if (!exists && db_command(c, sql, err) != 0)
        goto cleanup;
    if (db_command(c, "COMMIT", err) != 0)
        goto cleanup;
    if (!exists)
        log_info("store", "messages partition ready", LF_S("partition", name), LF_S("schema", c->cfg->schema));
    return 0;
cleanup:
    db_rollback(c);
    return -1;
}

int store_ensure_partitions(db_conn_t *c, time_t now, db_error_t *err)
{
    struct tm tm;
    gmtime_r(&now, &tm);
    int y = tm.tm_year + 1900, m = tm.tm_mon + 1; /* 1..12 */
    for (int off = -1; off <= 3; off++) {
        int mm = m + off, yy = y;
        while (mm < 1) {
            mm += 12;
            yy--;
        }
        while (mm > 12) {
            mm -= 12;
            yy++;
        }
        if (ensure_month(c, yy, mm, err) != 0)
            return -1;
    }
    return 0;
}
