/* test_loadgen.c - mes-loadgen end to end: publishes against the real service and proves nothing was lost,
 * reproduces the same events from the same seed, and rejects bad flags with status 2. */
#include <cjson/cJSON.h>

#include "itest.h"

#define CO "acme"
#define SCH "daisi_acme"

static const char *const NO_ENV[] = {NULL};

static void loadgen_bin(char *out, size_t len)
{
    const char *dir = getenv("MES_BUILD_DIR");
    snprintf(out, len, "%s/loadtest/mes-loadgen", dir ? dir : ".");
}

/* The --json report: the one output line that starts with {"tool":"mes-loadgen" (stderr shares the pipe). */
static cJSON *json_report(const char *out)
{
    const char *p = out ? strstr(out, "{\"tool\":\"mes-loadgen\"") : NULL;
    return p ? cJSON_Parse(p) : NULL;
}

static double num(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

/* Only the "SUBJECT PAYLOAD" lines of a dry run (the report goes to stderr, which h_run merges). */
static char *event_lines(const char *out, int *n)
{
    size_t len = strlen(out);
    char *res = calloc(1, len + 1);
    *n = 0;
    for (const char *line = out; res && *line;) {
        const char *nl = strchr(line, '\n');
        size_t l = nl ? (size_t)(nl - line) + 1 : strlen(line);
        if (strncmp(line, "v1.", 3) == 0) {
            strncat(res, line, l);
            (*n)++;
        }
        line += l;
    }
    return res;
}

TEST(loadgen_publishes_count_and_verify_finds_every_entity)
{
    REQUIRE(it_up(CO, NO_ENV));
    char bin[512];
    loadgen_bin(bin, sizeof bin);
    const char *argv[] = {bin,       "--url",    N.url, "--company_ids",    CO,     "--count",
                          "2000",    "--rate",   "0",   "--invalid-ratio",  "0.02", "--seed",
                          "11",      "--verify", P.dsn, "--verify-timeout", "60s",  "--json",
                          "--quiet", NULL};
    char *out = NULL;
    int status = h_run(argv, NULL, 120000, &out);
    if (status != 0)
        fprintf(stderr, "mes-loadgen output:\n%s\n", out ? out : "(none)");
    CHECK_EQ_INT(status, 0);
    cJSON *r = json_report(out);
    REQUIRE(r);
    CHECK_EQ_INT(num(r, "attempted"), 2000);
    CHECK_EQ_INT(num(r, "published"), 2000);
    CHECK_EQ_INT(num(r, "errors"), 0);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(r, "verify");
    REQUIRE(v);
    CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(v, "ok")));
    CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(v, "drained")));
    /* About 2% poison: every one of them is accounted for in the DLQ. */
    const cJSON *poison = cJSON_GetObjectItemCaseSensitive(v, "poison_events");
    CHECK(num(poison, "published") > 0);
    CHECK_EQ_INT(num(poison, "missing"), 0);
    CHECK_EQ_INT(num(poison, "in_dlq"), num(poison, "published"));
    double in_db = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(v, "entities"))
    {
        CHECK_EQ_INT(num(e, "missing"), 0);
        in_db += num(e, "in_db");
    }
    CHECK(in_db > 1000);
    /* The report agrees with the database: the chats it created are there. */
    CHECK(h_pg_int(&P, "SELECT count(*) FROM " SCH ".chats") > 0);
    CHECK(h_pg_int(&P, "SELECT count(*) FROM " SCH ".messages") > 0);
    cJSON_Delete(r);
    free(out);
}

/* The verifier can fail: rows deleted behind the service's back are reported as missing, by id, with status 1. A
 * rerun with the same prefix and seed republishes the same Nats-Msg-Ids, which JetStream drops as duplicates, so the
 * service writes nothing new and the deleted rows stay gone. */
TEST(loadgen_verify_reports_lost_entities)
{
    REQUIRE(it_up(CO, NO_ENV));
    char bin[512];
    loadgen_bin(bin, sizeof bin);
    const char *argv[] = {bin,    "--url",    N.url, "--count",          "300", "--seed", "5",       "--id-prefix",
                          "lost", "--verify", P.dsn, "--verify-timeout", "30s", "--json", "--quiet", NULL};
    char *out = NULL;
    CHECK_EQ_INT(h_run(argv, NULL, 60000, &out), 0);
    free(out);
    REQUIRE(h_pg_exec(&P, "DELETE FROM " SCH ".chats WHERE chat_id IN ('lost-acme-c0', 'lost-acme-c1')"));
    int status = h_run(argv, NULL, 60000, &out);
    CHECK_EQ_INT(status, 1);
    cJSON *r = json_report(out);
    REQUIRE(r);
    CHECK_EQ_INT(num(r, "duplicates"), 300);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(r, "verify");
    CHECK(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(v, "ok")));
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(v, "entities"))
    {
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "entity"));
        CHECK_EQ_INT(num(e, "missing"), name && strcmp(name, "chats") == 0 ? 2 : 0);
    }
    char *ids = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(v, "missing_ids"));
    CHECK_CONTAINS(ids, "lost-acme-c0");
    CHECK_CONTAINS(ids, "lost-acme-c1");
    free(ids);
    cJSON_Delete(r);
    free(out);
}

TEST(loadgen_same_seed_gives_same_events)
{
    char bin[512];
    loadgen_bin(bin, sizeof bin);
    const char *a7[] = {bin, "--dry-run", "--count", "50", "--seed", "7", "--invalid-ratio", "0.1", "--quiet", NULL};
    const char *a8[] = {bin, "--dry-run", "--count", "50", "--seed", "8", "--invalid-ratio", "0.1", "--quiet", NULL};
    char *o1 = NULL, *o2 = NULL, *o3 = NULL;
    CHECK_EQ_INT(h_run(a7, NULL, 20000, &o1), 0);
    CHECK_EQ_INT(h_run(a7, NULL, 20000, &o2), 0);
    CHECK_EQ_INT(h_run(a8, NULL, 20000, &o3), 0);
    REQUIRE(o1 && o2 && o3);
    int n1, n2, n3;
    char *e1 = event_lines(o1, &n1), *e2 = event_lines(o2, &n2), *e3 = event_lines(o3, &n3);
    REQUIRE(e1 && e2 && e3);
    CHECK_EQ_INT(n1, 50);
    CHECK_EQ_INT(n3, 50);
    CHECK_EQ_STR(e1, e2);
    CHECK(strcmp(e1, e3) != 0);
    /* Linked entities: ids carry the prefix and tenant, and every subject is <base>.acme. */
    CHECK_CONTAINS(e1, "\"lg7-acme-");
    CHECK_CONTAINS(e1, ".acme {");
    free(e1);
    free(e2);
    free(e3);
    free(o1);
    free(o2);
    free(o3);
}

TEST(loadgen_rejects_bad_flags_with_status_2)
{
    char bin[512];
    loadgen_bin(bin, sizeof bin);
    static const struct {
        const char *args[6];
        const char *names;
    } cases[] = {
        {{"--count", "abc"}, "--count"},
        {{"--count"}, "--count"},
        {{"--dry-run"}, "--count"},
        {{"--count", "1", "--rate", "-5"}, "--rate"},
        {{"--count", "1", "--bogus"}, "--bogus"},
        {{"--count", "1", "--invalid-ratio", "1.5"}, "--invalid-ratio"},
        {{"--count", "1", "--subjects", "v1.nope:3"}, "v1.nope"},
        {{"--count", "1", "--subjects", "v1.chats.upsert:x"}, "--subjects"},
        {{"--count", "1", "--company_ids", "bad-co"}, "--company_ids"},
        {{"--count", "1", "--duration", "soon"}, "--duration"},
        {{"--count", "1", "--concurrency", "0"}, "--concurrency"},
        {{"--count", "1", "--history-count", "10001"}, "--history-count"},
        {{"--count", "1", "--dry-run", "--verify", "host=x"}, "--verify"},
        {{"--count", "1", "--metrics-address", "localhost"}, "--metrics-address"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *argv[8] = {bin};
        for (int j = 0; j < 6 && cases[i].args[j]; j++)
            argv[j + 1] = cases[i].args[j];
        char *out = NULL;
        int status = h_run(argv, NULL, 10000, &out);
        if (status != 2)
            fprintf(stderr, "case %zu (%s): status %d, output: %s\n", i, cases[i].names, status, out ? out : "");
        CHECK_EQ_INT(status, 2);
        CHECK_CONTAINS(out, cases[i].names);
        free(out);
    }
}
