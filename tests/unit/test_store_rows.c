/* test_store_rows.c - the parameters the store sends: one binary text[] array per column (rows.c), in the column
 * order of sql.h, absent fields as NULL elements. The integration tests check what PostgreSQL makes of them; this
 * checks the bytes. */
#include <stdio.h>
#include <string.h>

#include "router.h"
#include "store.h"
#include "testlib.h"

static uint32_t be32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

/* Element `row` of the array in param `col` of st, copied into out ("<NULL>" for a NULL element). */
static void element(const store_stmt_t *st, int col, size_t row, char *out, size_t outlen)
{
    const char *p = st->values[col];
    snprintf(out, outlen, "<bad array>");
    if (st->lengths[col] < 20 || be32(p) != 1 || be32(p + 8) != 25 || be32(p + 12) != st->rows || be32(p + 16) != 1)
        return;
    const char *e = p + 20, *end = p + st->lengths[col];
    for (size_t r = 0; e + 4 <= end; r++) {
        uint32_t len = be32(e);
        e += 4;
        if (r == row) {
            if (len == UINT32_MAX)
                snprintf(out, outlen, "<NULL>");
            else if (e + len <= end)
                snprintf(out, outlen, "%.*s", (int)len, e);
            return;
        }
        if (len != UINT32_MAX)
            e += len;
    }
}

/* Checks row `row` of every column c with want[c] != NULL ("<NULL>" for a NULL element). */
static void check_row(const store_stmt_t *st, size_t row, const char *const *want, int ncols)
{
    char v[128];
    for (int c = 0; c < ncols; c++) {
        if (!want[c])
            continue;
        element(st, c, row, v, sizeof v);
        CHECK_EQ_STR(v, want[c]);
    }
}

static payload_ctx_t ctx[2];
static event_t ev[2];

static void route(int k, const char *subject, const char *json)
{
    REQUIRE(ctx[k].arena || payload_ctx_init(&ctx[k], "acme") == 0);
    REQUIRE(router_route(&ctx[k], subject, ET_UNKNOWN, json, strlen(json), -1, &ev[k]) == ERR_NONE);
}

TEST(a_chat_is_one_element_per_column_and_absent_fields_are_null)
{
    route(0, "v1.chats.upsert.acme",
          "{\"chat_id\":\"c1\",\"jid\":\"j\",\"phone_number\":\"62\",\"agent_id\":\"ag1\",\"unread_count\":7,"
          "\"is_group\":false,\"last_message\":{\"text\":\"hi \\\"you\\\"\"}}");
    store_item_t it[1];
    REQUIRE(router_items(&ev[0], "{\"m\":1}", 7, it, NULL, NULL) == 1);
    store_scratch_t s;
    store_scratch_init(&s);
    store_stmt_t st;
    REQUIRE(store_plan_begin(&s, it, 1) == 0);
    REQUIRE(store_plan_next(&s, &st) == 1);
    CHECK_EQ_INT(st.nparams, 15);
    CHECK_EQ_INT((int)st.rows, 1);
    /* i, chat_id, jid, push_name, is_group, group_name, unread_count, last_message (the object as it was sent,
     * escapes and all), conversation_timestamp, not_spam, agent_id, company_id, phone_number, custom_name, meta */
    static const char *const want[15] = {
        "0",      "c1",     "j",   "<NULL>", "false", "<NULL>", "7",        "{\"text\":\"hi \\\"you\\\"\"}",
        "<NULL>", "<NULL>", "ag1", NULL,     "62",    "<NULL>", "{\"m\":1}"};
    check_row(&st, 0, want, 15);
    CHECK_EQ_INT(store_plan_next(&s, &st), 0);
    store_scratch_free(&s);
}

TEST(onboarding_joins_the_campaign_tags_of_one_phones_messages_in_stream_order)
{
    route(0, "v1.messages.upsert.acme",
          "{\"message_id\":\"m1\",\"chat_id\":\"c1\",\"jid\":\"j\",\"agent_id\":\"ag1\",\"flow\":\"IN\","
          "\"from_phone\":\"62811\",\"key\":{\"id\":\"K1\"},\"campaign\":{\"tags\":\"b, a\",\"origin\":\"Ads\"}}");
    route(1, "v1.messages.upsert.acme",
          "{\"message_id\":\"m2\",\"chat_id\":\"c1\",\"jid\":\"j\",\"agent_id\":\"ag1\",\"flow\":\"IN\","
          "\"from_phone\":\"+62 811\",\"key\":{\"id\":\"K2\"},\"campaign\":{\"tags\":\"c\"}}");
    store_item_t it[2];
    REQUIRE(router_items(&ev[0], "{}", 2, &it[0], NULL, NULL) == 1);
    REQUIRE(router_items(&ev[1], "{}", 2, &it[1], NULL, NULL) == 1);
    store_scratch_t s;
    store_scratch_init(&s);
    store_stmt_t st;
    REQUIRE(store_plan_begin(&s, it, 2) == 0);
    REQUIRE(store_plan_next(&s, &st) == 1); /* the messages */
    CHECK_EQ_INT(st.nparams, 18);
    CHECK_EQ_INT((int)st.rows, 2);
    REQUIRE(store_plan_next(&s, &st) == 1); /* onboarding: create */
    CHECK_EQ_INT(st.nparams, 12);
    CHECK_EQ_INT((int)st.rows, 1); /* one (agent, phone) */
    /* i, phone, agent_id, chat_id, company_id, origin, assigned_to, first_tags, tags, message_id, message_timestamp,
     * meta */
    static const char *const want[12] = {NULL,     "62811", "ag1",    "c1", NULL, "Ads",
                                         "<NULL>", "b, a",  "b, a,c", "m1", NULL, "{}"};
    check_row(&st, 0, want, 12);
    store_scratch_free(&s);
}
