/* test_router.c - the one route of live events and DLQ replays: subject -> type -> tenant -> event -> store items. */
#include <string.h>

#include "buf.h"
#include "router.h"
#include "testlib.h"

static payload_ctx_t ctx;
static event_t ev;

static error_class_t route(const char *subject, event_type_t expected, const char *json, int64_t item_index)
{
    if (!ctx.arena && payload_ctx_init(&ctx, "acme") != 0)
        return ERR_UNKNOWN;
    arena_reset(ctx.arena);
    return router_route(&ctx, subject, expected, json, strlen(json), item_index, &ev);
}

static const char chat[] = "{\"chat_id\":\"c1\",\"jid\":\"j\",\"phone_number\":\"62\",\"agent_id\":\"ag1\"}";
static const char message[] = "{\"message_id\":\"m1\",\"chat_id\":\"c1\",\"jid\":\"j\",\"agent_id\":\"ag1\",\"flow\":"
                              "\"IN\",\"from_phone\":\"62811\","
                              "\"key\":{\"id\":\"K1\"}}";

TEST(subject_names_type_and_tenant)
{
    route_subject_t r = router_subject("v1.chats.upsert.acme", "acme");
    CHECK_EQ_INT(r.et, ET_CHATS_UPSERT);
    CHECK(r.own_tenant);
    r = router_subject("v1.history.messages.other", "acme");
    CHECK_EQ_INT(r.et, ET_HISTORY_MESSAGES);
    CHECK(!r.own_tenant);
    r = router_subject("v1.chats.acme", "acme");
    CHECK_EQ_INT(r.et, ET_UNKNOWN);
    r = router_subject("nodots", "acme");
    CHECK_EQ_INT(r.et, ET_UNKNOWN);
    CHECK(!r.own_tenant);
}

TEST(a_lane_refuses_another_subject_or_tenant_naming_what_it_expected)
{
    CHECK_EQ_INT(route("v1.chats.upsert.acme", ET_CHATS_UPSERT, chat, -1), ERR_NONE);
    CHECK_EQ_INT(route("v1.chats.upsert.other", ET_CHATS_UPSERT, chat, -1), ERR_VALIDATION);
    CHECK_CONTAINS(ev.errmsg, "unknown subject 'v1.chats.upsert.other' (expected v1.chats.upsert.acme)");
    CHECK_EQ_INT(route("v1.chats.update.acme", ET_CHATS_UPSERT, chat, -1), ERR_VALIDATION);
    CHECK_CONTAINS(ev.errmsg, "expected v1.chats.upsert.acme");
    CHECK_EQ_INT(route("v1.nope.acme", ET_UNKNOWN, chat, -1), ERR_VALIDATION);
    CHECK_CONTAINS(ev.errmsg, "unknown subject 'v1.nope.acme' (expected <base>.acme)");
}

TEST(a_realtime_event_is_one_item_and_a_message_upsert_onboards)
{
    store_item_t items[2];
    REQUIRE(route("v1.messages.upsert.acme", ET_UNKNOWN, message, -1) == ERR_NONE);
    CHECK_EQ_INT((int)router_item_count(&ev), 1);
    size_t bad = 9;
    CHECK_EQ_INT((int)router_items(&ev, "{}", 2, items, &bad, NULL), 1);
    CHECK_EQ_INT((int)bad, 0);
    CHECK(items[0].ev == &ev && items[0].onboard && items[0].meta_len == 2);
    REQUIRE(route("v1.chats.upsert.acme", ET_UNKNOWN, chat, -1) == ERR_NONE);
    CHECK_EQ_INT((int)router_items(&ev, "{}", 2, items, NULL, NULL), 1);
    CHECK(!items[0].onboard);
}

TEST(a_history_batch_gives_its_valid_items_in_order)
{
    static const char batch[] =
        "{\"chats\":[{\"chat_id\":\"a\",\"jid\":\"j\",\"phone_number\":\"62\",\"agent_id\":\"g\",\"company_id\":"
        "\"acme\"},"
        "{\"agent_id\":\"g\",\"company_id\":\"acme\"},"
        "{\"chat_id\":\"c\",\"jid\":\"j\",\"phone_number\":\"62\",\"agent_id\":\"g\",\"company_id\":\"acme\"}]}";
    store_item_t items[3];
    REQUIRE(route("v1.history.chats.acme", ET_HISTORY_CHATS, batch, -1) == ERR_NONE);
    CHECK_EQ_INT((int)router_item_count(&ev), 3);
    size_t bad = 0;
    const char *why = NULL;
    CHECK_EQ_INT((int)router_items(&ev, "{}", 2, items, &bad, &why), 2);
    CHECK_EQ_INT((int)bad, 1);
    REQUIRE(why != NULL);
    CHECK_CONTAINS(why, "item 1");
    CHECK(items[0].ev == &ev.items[0] && items[1].ev == &ev.items[2]);
}

TEST(a_replayed_history_item_is_rewrapped_and_keeps_its_index)
{
    /* What a DLQ record keeps of item 7 of a history.contacts batch: the item alone. */
    REQUIRE(route("v1.history.contacts.acme", ET_UNKNOWN, "{\"agent_id\":\"g\",\"company_id\":\"acme\"}", 7) ==
            ERR_NONE);
    REQUIRE(ev.n_items == 1);
    CHECK_EQ_INT(ev.items[0].err, ERR_VALIDATION);
    CHECK_CONTAINS(ev.items[0].errmsg, "item 7: ");
    CHECK(strstr(ev.items[0].errmsg, "item 0") == NULL);
    REQUIRE(route("v1.history.contacts.acme", ET_UNKNOWN,
                  "{\"phone_number\":\"+62 812\",\"agent_id\":\"g\",\"company_id\":\"acme\"}", 7) == ERR_NONE);
    CHECK_EQ_INT(ev.items[0].err, ERR_NONE);
    /* A realtime record ignores item_index. */
    CHECK_EQ_INT(route("v1.chats.upsert.acme", ET_UNKNOWN, chat, 3), ERR_NONE);
    CHECK_EQ_INT(ev.type, ET_CHATS_UPSERT);
}
