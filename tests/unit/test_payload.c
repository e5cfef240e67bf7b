/* test_payload.c - SPEC 2 payload rules: every event type, aliases, limits, types, company_id, history items, hostile input. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "payload.h"
#include "testlib.h"

static payload_ctx_t ctx;
static event_t ev;

static error_class_t parse_n(event_type_t et, const char *json, size_t n)
{
    if (!ctx.arena && payload_ctx_init(&ctx, "acme") != 0)
        return ERR_UNKNOWN;
    arena_reset(ctx.arena);
    return payload_parse(&ctx, et, json, n, &ev);
}

static error_class_t parse(event_type_t et, const char *json)
{
    return parse_n(et, json, strlen(json));
}

static bool str_is(str_t s, const char *want)
{
    return s.p && s.len == strlen(want) && memcmp(s.p, want, s.len) == 0;
}

#define CHECK_STR(s, want)                                                                                             \
    do {                                                                                                               \
        str_t s__ = (s);                                                                                               \
        if (!str_is(s__, want))                                                                                        \
            testlib_fail(__FILE__, __LINE__, "%s = \"%.*s\", want \"%s\"", #s, s__.p ? (int)s__.len : 6,               \
                         s__.p ? s__.p : "(null)", want);                                                              \
    } while (0)

/* Asserts the class and that the message contains `needle` (prints the message otherwise). */
#define CHECK_ERR(cls, needle)                                                                                         \
    do {                                                                                                               \
        if (ev.err != (cls) || !ev.errmsg || !strstr(ev.errmsg, needle))                                               \
            testlib_fail(__FILE__, __LINE__, "want %s containing \"%s\", got %s: %s", error_class_name(cls), needle,   \
                         error_class_name(ev.err), ev.errmsg ? ev.errmsg : "(none)");                                  \
    } while (0)

#define CHECK_OK()                                                                                                     \
    do {                                                                                                               \
        if (ev.err != ERR_NONE)                                                                                        \
            testlib_fail(__FILE__, __LINE__, "unexpected %s: %s", error_class_name(ev.err), ev.errmsg);                \
    } while (0)

/* printf into a heap string the test frees. */
static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...)
{
    buf_t b;
    va_list ap;
    buf_init(&b);
    va_start(ap, f);
    size_t n = (size_t)vsnprintf(NULL, 0, f, ap);
    va_end(ap);
    buf_reserve(&b, n);
    va_start(ap, f);
    vsnprintf(b.data, n + 1, f, ap);
    va_end(ap);
    return b.data;
}

static char *repeat(char c, size_t n)
{
    char *s = malloc(n + 1);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

/* `base` with the first occurrence of `from` replaced by `to`; heap string. */
static char *replace(const char *base, const char *from, const char *to)
{
    const char *at = strstr(base, from);
    if (!at)
        return fmt("%s", base);
    return fmt("%.*s%s%s", (int)(at - base), base, to, at + strlen(from));
}

static const char chat_upsert_json[] =
    "{\"chat_id\":\"c1\",\"jid\":\"628@s.whatsapp.net\",\"agent_id\":\"ag1\",\"phone_number\":\"+62 812\","
    "\"push_name\":\"Budi\",\"group_name\":\"G\",\"custom_name\":\"Custom\",\"is_group\":true,\"not_spam\":false,"
    "\"last_message\":{\"text\":\"hi\",\"n\":12345678901234567890},\"conversation_timestamp\":1700000000,"
    "\"unread_count\":3}";

static const char message_upsert_json[] =
    "{\"message_id\":\"m1\",\"chat_id\":\"c1\",\"jid\":\"628@s.whatsapp.net\",\"agent_id\":\"ag1\",\"flow\":\"IN\","
    "\"from_phone\":\"62811\",\"to_phone\":\"62822\",\"message_type\":\"text\",\"message_text\":\"hello\","
    "\"message_url\":\"https://x/y\",\"status\":\"sent\",\"company_id\":\"acme\","
    "\"key\":{\"id\":\"K1\",\"fromMe\":false,\"remoteJid\":\"628@s.whatsapp.net\"},"
    "\"message_obj\":{\"conversation\":\"hello\"},\"message_timestamp\":1700000000123,"
    "\"campaign\":{\"is_campaign\":true,\"tags\":\"promo\",\"assigned_to\":\"sales\",\"origin\":\"ads\"}}";

static const char contact_json[] = "{\"phone_number\":\"+62 812-3456@s.whatsapp.net\",\"agent_id\":\"ag1\","
                                   "\"chat_id\":\"c1\",\"push_name\":\"Budi\"}";

/* ---- valid events of every type ---- */

TEST(chats_upsert_valid_fills_every_field)
{
    REQUIRE(parse(ET_CHATS_UPSERT, chat_upsert_json) == ERR_NONE);
    const chat_upsert_t *c = &ev.u.chat;
    CHECK_EQ_INT(ev.type, ET_CHATS_UPSERT);
    CHECK(ev.errmsg == NULL);
    CHECK(ev.raw.p == chat_upsert_json && ev.raw.len == strlen(chat_upsert_json));
    CHECK_STR(c->chat_id, "c1");
    CHECK(c->chat_id.p == chat_upsert_json + 12); /* zero-copy: points into the source */
    CHECK_STR(c->jid, "628@s.whatsapp.net");
    CHECK_STR(c->agent_id, "ag1");
    CHECK_STR(c->phone_number, "+62 812"); /* chats keep phones as sent */
    CHECK_STR(c->push_name, "Budi");
    CHECK_STR(c->group_name, "G");
    CHECK_STR(c->custom_name, "Custom");
    CHECK_STR(c->company_id, "acme"); /* filled from <co> */
    CHECK_EQ_INT(c->is_group, TRI_TRUE);
    CHECK_EQ_INT(c->not_spam, TRI_FALSE);
    CHECK_STR(c->last_message, "{\"text\":\"hi\",\"n\":12345678901234567890}");
    CHECK(c->conversation_timestamp.set && c->conversation_timestamp.v == 1700000000);
    CHECK(c->unread_count.set && c->unread_count.v == 3);
}

TEST(chats_upsert_optional_fields_absent_stay_unset)
{
    REQUIRE(parse(ET_CHATS_UPSERT, "{\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\"}") ==
            ERR_NONE);
    CHECK(ev.u.chat.push_name.p == NULL);
    CHECK(ev.u.chat.last_message.p == NULL);
    CHECK_EQ_INT(ev.u.chat.is_group, TRI_UNSET);
    CHECK(!ev.u.chat.conversation_timestamp.set);
    CHECK(!ev.u.chat.unread_count.set);
}

TEST(chats_update_valid_fills_every_field)
{
    REQUIRE(parse(ET_CHATS_UPDATE, "{\"chat_id\":\"c1\",\"agent_id\":\"ag1\",\"unread_count\":0,\"unread_delta\":-2,"
                                   "\"conversation_timestamp\":1700000000000,\"last_message\":{}}") == ERR_NONE);
    const chat_update_t *c = &ev.u.chat_update;
    CHECK_STR(c->chat_id, "c1");
    CHECK_STR(c->agent_id, "ag1");
    CHECK(c->unread_count.set && c->unread_count.v == 0);
    CHECK(c->unread_delta.set && c->unread_delta.v == -2);
    CHECK(c->conversation_timestamp.set && c->conversation_timestamp.v == 1700000000);
    CHECK_STR(c->last_message, "{}");
}

TEST(messages_upsert_valid_fills_every_field)
{
    REQUIRE(parse(ET_MESSAGES_UPSERT, message_upsert_json) == ERR_NONE);
    const message_upsert_t *m = &ev.u.msg;
    CHECK_STR(m->message_id, "m1");
    CHECK_STR(m->chat_id, "c1");
    CHECK_STR(m->jid, "628@s.whatsapp.net");
    CHECK_STR(m->agent_id, "ag1");
    CHECK_STR(m->flow, "IN");
    CHECK_STR(m->from_phone, "62811");
    CHECK_STR(m->to_phone, "62822");
    CHECK_STR(m->message_type, "text");
    CHECK_STR(m->message_text, "hello");
    CHECK_STR(m->message_url, "https://x/y");
    CHECK_STR(m->status, "sent");
    CHECK_STR(m->company_id, "acme");
    CHECK_STR(m->key, "{\"id\":\"K1\",\"fromMe\":false,\"remoteJid\":\"628@s.whatsapp.net\"}");
    CHECK_STR(m->message_obj, "{\"conversation\":\"hello\"}");
    CHECK(m->message_timestamp.set && m->message_timestamp.v == 1700000000); /* ms -> s */
    CHECK_EQ_INT(m->message_date, 19675);                                    /* 2023-11-14 */
    CHECK(m->has_campaign);
    CHECK_EQ_INT(m->is_campaign, TRI_TRUE);
    CHECK_STR(m->campaign_tags, "promo");
    CHECK_STR(m->campaign_assigned_to, "sales");
    CHECK_STR(m->campaign_origin, "ads");
}

TEST(messages_upsert_minimal_has_no_campaign_and_date_zero)
{
    REQUIRE(parse(ET_MESSAGES_UPSERT,
                  "{\"message_id\":\"m\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"OUT\"}") ==
            ERR_NONE);
    CHECK_STR(ev.u.msg.flow, "OUT");
    CHECK(!ev.u.msg.has_campaign);
    CHECK_EQ_INT(ev.u.msg.is_campaign, TRI_UNSET);
    CHECK(ev.u.msg.key.p == NULL);
    CHECK(!ev.u.msg.message_timestamp.set);
    CHECK_EQ_INT(ev.u.msg.message_date, 0);
}

TEST(messages_update_valid_fills_every_field)
{
    REQUIRE(parse(ET_MESSAGES_UPDATE,
                  "{\"message_id\":\"m1\",\"status\":\"read\",\"message_url\":\"u\","
                  "\"edited_message_obj\":{\"text\":\"edited\"},\"is_deleted\":false}") == ERR_NONE);
    const message_update_t *m = &ev.u.msg_update;
    CHECK_STR(m->message_id, "m1");
    CHECK_STR(m->status, "read");
    CHECK_STR(m->message_url, "u");
    CHECK_STR(m->edited_message_obj, "{\"text\":\"edited\"}");
    CHECK_EQ_INT(m->is_deleted, TRI_FALSE); /* false is a value, not absence: it can un-delete */
}

TEST(contacts_upsert_valid_normalises_phone)
{
    REQUIRE(parse(ET_CONTACTS_UPSERT, contact_json) == ERR_NONE);
    CHECK_STR(ev.u.contact.phone_number, "628123456");
    CHECK_STR(ev.u.contact.agent_id, "ag1");
    CHECK_STR(ev.u.contact.chat_id, "c1");
    CHECK_STR(ev.u.contact.push_name, "Budi");
    CHECK_STR(ev.u.contact.company_id, "acme");
}

TEST(contacts_update_valid_fills_every_field)
{
    REQUIRE(parse(ET_CONTACTS_UPDATE, "{\"phone_number\":\"628123\",\"agent_id\":\"ag1\",\"push_name\":\"New\","
                                      "\"chat_id\":\"c9\",\"company_id\":\"acme\"}") == ERR_NONE);
    CHECK_STR(ev.u.contact.phone_number, "628123");
    CHECK_STR(ev.u.contact.agent_id, "ag1");
    CHECK_STR(ev.u.contact.push_name, "New");
    CHECK_STR(ev.u.contact.chat_id, "c9");
    CHECK_STR(ev.u.contact.company_id, "acme");
}

TEST(connection_update_valid_fills_every_field)
{
    REQUIRE(parse(ET_CONNECTION_UPDATE, "{\"agent_id\":\"ag1\",\"qr_code\":\"2@abc\",\"status\":\"open\","
                                        "\"agent_name\":\"Agent\",\"host_name\":\"h1\",\"version\":\"1.2\","
                                        "\"phone_number\":\"+62 811\"}") == ERR_NONE);
    const agent_t *a = &ev.u.agent;
    CHECK_STR(a->agent_id, "ag1");
    CHECK_STR(a->qr_code, "2@abc");
    CHECK_STR(a->status, "open");
    CHECK_STR(a->agent_name, "Agent");
    CHECK_STR(a->host_name, "h1");
    CHECK_STR(a->version, "1.2");
    CHECK_STR(a->phone_number, "+62 811"); /* agents keep phones as sent */
    CHECK_STR(a->company_id, "acme");
}

TEST(connection_update_empty_optional_strings_are_present)
{
    REQUIRE(parse(ET_CONNECTION_UPDATE, "{\"agent_id\":\"ag1\",\"status\":\"\"}") == ERR_NONE);
    CHECK(ev.u.agent.status.p != NULL && ev.u.agent.status.len == 0); /* "" overwrites, SPEC 3.2 */
    CHECK(ev.u.agent.qr_code.p == NULL);
}

TEST(history_chats_items_are_typed_and_keep_their_raw_text)
{
    const char *s = "{\"chats\":[{\"chat_id\":\"c1\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\","
                    "\"company_id\":\"acme\"},{\"chat_id\":\"c2\",\"jid\":\"j\",\"agent_id\":\"a\","
                    "\"phone_number\":\"2\",\"company_id\":\"acme\",\"unread_count\":4}]}";
    REQUIRE(parse(ET_HISTORY_CHATS, s) == ERR_NONE);
    CHECK_EQ_INT(ev.type, ET_HISTORY_CHATS);
    REQUIRE(ev.n_items == 2);
    CHECK_EQ_INT(ev.items[0].type, ET_CHATS_UPSERT);
    CHECK_EQ_INT(ev.items[1].err, ERR_NONE);
    CHECK_STR(ev.items[1].u.chat.chat_id, "c2");
    CHECK(ev.items[1].u.chat.unread_count.v == 4);
    CHECK_STR(ev.items[0].raw, "{\"chat_id\":\"c1\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\","
                               "\"company_id\":\"acme\"}");
    CHECK_STR(payload_agent_id(&ev), "a");
    CHECK_STR(payload_jid(&ev), "j");
}

TEST(history_messages_items_inherit_the_batch_agent_id)
{
    const char *s = "{\"is_last_batch\":true,\"agent_id\":\"batch-agent\",\"messages\":["
                    "{\"message_id\":\"m1\",\"chat_id\":\"c\",\"jid\":\"j\",\"flow\":\"IN\",\"company_id\":\"acme\"},"
                    "{\"message_id\":\"m2\",\"chat_id\":\"c\",\"jid\":\"j\",\"flow\":\"OUT\",\"company_id\":\"acme\","
                    "\"agent_id\":\"own\",\"message_timestamp\":86400}]}";
    REQUIRE(parse(ET_HISTORY_MESSAGES, s) == ERR_NONE);
    CHECK_EQ_INT(ev.is_last_batch, TRI_TRUE);
    REQUIRE(ev.n_items == 2);
    CHECK_EQ_INT(ev.items[0].type, ET_MESSAGES_UPSERT);
    CHECK_EQ_INT(ev.items[0].err, ERR_NONE);
    CHECK_STR(ev.items[0].u.msg.agent_id, "batch-agent");
    CHECK_STR(ev.items[1].u.msg.agent_id, "own");
    CHECK_EQ_INT(ev.items[1].u.msg.message_date, 1);
    CHECK_STR(payload_agent_id(&ev), "batch-agent");
}

TEST(history_messages_item_without_agent_id_fails_when_the_batch_has_none)
{
    REQUIRE(parse(ET_HISTORY_MESSAGES, "{\"messages\":[{\"message_id\":\"m1\",\"chat_id\":\"c\",\"jid\":\"j\","
                                       "\"flow\":\"IN\",\"company_id\":\"acme\"}]}") == ERR_NONE);
    CHECK_EQ_INT(ev.is_last_batch, TRI_UNSET);
    CHECK_EQ_INT(ev.items[0].err, ERR_VALIDATION);
    CHECK_EQ_STR(ev.items[0].errmsg, "item 0: field 'agent_id' is required");
}

TEST(history_contacts_items_normalise_phones)
{
    REQUIRE(parse(ET_HISTORY_CONTACTS, "{\"contacts\":[{\"phone_number\":\"+1 (555) 010@c.us\",\"agent_id\":\"a\","
                                       "\"company_id\":\"acme\"}]}") == ERR_NONE);
    REQUIRE(ev.n_items == 1);
    CHECK_EQ_INT(ev.items[0].type, ET_CONTACTS_UPSERT);
    CHECK_STR(ev.items[0].u.contact.phone_number, "1555010");
}

/* ---- aliases and canonical-wins ---- */

TEST(chats_update_accepts_id_alias)
{
    REQUIRE(parse(ET_CHATS_UPDATE, "{\"id\":\"c7\"}") == ERR_NONE);
    CHECK_STR(ev.u.chat_update.chat_id, "c7");
}

TEST(messages_upsert_accepts_from_and_to_aliases)
{
    REQUIRE(parse(ET_MESSAGES_UPSERT, "{\"message_id\":\"m\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\","
                                      "\"flow\":\"IN\",\"from\":\"111\",\"to\":\"222\"}") == ERR_NONE);
    CHECK_STR(ev.u.msg.from_phone, "111");
    CHECK_STR(ev.u.msg.to_phone, "222");
}

TEST(message_key_accepts_from_me_and_remote_jid_aliases)
{
    const char *s = "{\"message_id\":\"m\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"IN\","
                    "\"key\":{\"id\":\"K\",\"from_me\":true,\"remote_jid\":\"r\"}}";
    REQUIRE(parse(ET_MESSAGES_UPSERT, s) == ERR_NONE);
    CHECK_STR(ev.u.msg.key, "{\"id\":\"K\",\"from_me\":true,\"remote_jid\":\"r\"}"); /* stored as sent */
    parse(ET_MESSAGES_UPSERT,
          "{\"message_id\":\"m\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"IN\","
          "\"key\":{\"id\":\"K\",\"from_me\":\"yes\"}}");
    CHECK_ERR(ERR_VALIDATION, "field 'key.from_me' must be a boolean, got string");
    parse(ET_MESSAGES_UPSERT,
          "{\"message_id\":\"m\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"IN\","
          "\"key\":{\"id\":\"K\",\"remote_jid\":5}}");
    CHECK_ERR(ERR_VALIDATION, "field 'key.remote_jid' must be a string, got number");
}

TEST(messages_update_accepts_id_alias)
{
    REQUIRE(parse(ET_MESSAGES_UPDATE, "{\"id\":\"m9\",\"is_deleted\":true}") == ERR_NONE);
    CHECK_STR(ev.u.msg_update.message_id, "m9");
    CHECK_EQ_INT(ev.u.msg_update.is_deleted, TRI_TRUE);
}

TEST(canonical_key_wins_over_alias_in_either_order)
{
    REQUIRE(parse(ET_CHATS_UPDATE, "{\"id\":\"alias\",\"chat_id\":\"canon\"}") == ERR_NONE);
    CHECK_STR(ev.u.chat_update.chat_id, "canon");
    REQUIRE(parse(ET_CHATS_UPDATE, "{\"chat_id\":\"canon\",\"id\":\"alias\"}") == ERR_NONE);
    CHECK_STR(ev.u.chat_update.chat_id, "canon");
    /* The ignored alias is not validated at all. */
    REQUIRE(parse(ET_MESSAGES_UPDATE, "{\"id\":12,\"message_id\":\"canon\"}") == ERR_NONE);
    CHECK_STR(ev.u.msg_update.message_id, "canon");
}

TEST(null_canonical_falls_back_to_the_alias)
{
    REQUIRE(parse(ET_CHATS_UPDATE, "{\"chat_id\":null,\"id\":\"alias\"}") == ERR_NONE);
    CHECK_STR(ev.u.chat_update.chat_id, "alias");
}

TEST(key_matching_is_case_sensitive)
{
    parse(ET_CHATS_UPDATE, "{\"Chat_Id\":\"c\",\"ID\":\"c\"}");
    CHECK_ERR(ERR_VALIDATION, "field 'chat_id' is required");
}

TEST(escaped_keys_match_after_decoding)
{
    REQUIRE(parse(ET_CHATS_UPDATE, "{\"chat\\u005fid\":\"c\"}") == ERR_NONE);
    CHECK_STR(ev.u.chat_update.chat_id, "c");
}

TEST(unknown_keys_are_ignored_whatever_their_value)
{
    REQUIRE(parse(ET_CHATS_UPDATE, "{\"chat_id\":\"c\",\"extra\":[1,{\"chat_id\":5}],\"x\":null,\"y\":1e999}") ==
            ERR_NONE);
    CHECK_STR(ev.u.chat_update.chat_id, "c");
}

TEST(null_counts_as_absent)
{
    REQUIRE(parse(ET_CHATS_UPDATE, "{\"chat_id\":\"c\",\"agent_id\":null,\"unread_count\":null,\"last_message\":null,"
                                   "\"company_id\":null}") == ERR_NONE);
    CHECK(ev.u.chat_update.agent_id.p == NULL);
    CHECK(!ev.u.chat_update.unread_count.set);
    CHECK(ev.u.chat_update.last_message.p == NULL);
    parse(ET_CHATS_UPDATE, "{\"chat_id\":null}");
    CHECK_ERR(ERR_VALIDATION, "field 'chat_id' is required");
    REQUIRE(parse(ET_MESSAGES_UPSERT, "{\"message_id\":\"m\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\","
                                      "\"flow\":\"IN\",\"key\":null,\"campaign\":null}") == ERR_NONE);
    CHECK(!ev.u.msg.has_campaign);
    CHECK(ev.u.msg.key.p == NULL);
}

/* ---- required fields ---- */

TEST(every_required_field_missing_is_named)
{
    static const struct {
        event_type_t et;
        const char *json;
        const char *keys[6];
    } cases[] = {
        {ET_CHATS_UPSERT, chat_upsert_json, {"chat_id", "jid", "agent_id", "phone_number"}},
        {ET_CHATS_UPDATE, "{\"chat_id\":\"c\"}", {"chat_id"}},
        {ET_MESSAGES_UPSERT, message_upsert_json, {"message_id", "chat_id", "jid", "agent_id", "flow"}},
        {ET_MESSAGES_UPDATE, "{\"message_id\":\"m\"}", {"message_id"}},
        {ET_CONTACTS_UPSERT, contact_json, {"phone_number", "agent_id"}},
        {ET_CONTACTS_UPDATE, contact_json, {"phone_number", "agent_id"}},
        {ET_CONNECTION_UPDATE, "{\"agent_id\":\"a\"}", {"agent_id"}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (size_t k = 0; k < 6 && cases[i].keys[k]; k++) {
            char *from = fmt("\"%s\":", cases[i].keys[k]);
            char *json = replace(cases[i].json, from, "\"zz_unused\":");
            char *want = fmt("field '%s' is required", cases[i].keys[k]);
            parse(cases[i].et, json);
            CHECK_ERR(ERR_VALIDATION, want);
            free(from);
            free(json);
            free(want);
        }
    }
}

TEST(blank_required_strings_are_rejected_but_stored_untrimmed_otherwise)
{
    parse(ET_CHATS_UPDATE, "{\"chat_id\":\" \\t\\n \"}");
    CHECK_ERR(ERR_VALIDATION, "field 'chat_id' must not be blank");
    parse(ET_CHATS_UPDATE, "{\"chat_id\":\"\"}");
    CHECK_ERR(ERR_VALIDATION, "field 'chat_id' must not be blank");
    parse(ET_CONNECTION_UPDATE, "{\"agent_id\":\"   \"}");
    CHECK_ERR(ERR_VALIDATION, "field 'agent_id' must not be blank");
    REQUIRE(parse(ET_CHATS_UPDATE, "{\"chat_id\":\"  c1 \"}") == ERR_NONE);
    CHECK_STR(ev.u.chat_update.chat_id, "  c1 ");
    REQUIRE(parse(ET_CHATS_UPDATE, "{\"chat_id\":\"c\",\"agent_id\":\"\"}") == ERR_NONE); /* optional may be "" */
    CHECK(ev.u.chat_update.agent_id.p && ev.u.chat_update.agent_id.len == 0);
}

TEST(message_key_requires_a_non_blank_id)
{
    const char *pre =
        "{\"message_id\":\"m\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"IN\",\"key\":";
    char *s = fmt("%s{\"fromMe\":true}}", pre);
    parse(ET_MESSAGES_UPSERT, s);
    CHECK_ERR(ERR_VALIDATION, "field 'key.id' is required");
    free(s);
    s = fmt("%s{\"id\":\" \"}}", pre);
    parse(ET_MESSAGES_UPSERT, s);
    CHECK_ERR(ERR_VALIDATION, "field 'key.id' must not be blank");
    free(s);
    s = fmt("%s\"K1\"}", pre);
    parse(ET_MESSAGES_UPSERT, s);
    CHECK_ERR(ERR_VALIDATION, "field 'key' must be an object, got string");
    free(s);
}

TEST(flow_must_be_exactly_in_or_out)
{
    const char *pre = "{\"message_id\":\"m\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":";
    static const char *const bad[] = {"\"in\"", "\"IN \"", "\"\"", "\"INOUT\""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *s = fmt("%s%s}", pre, bad[i]);
        parse(ET_MESSAGES_UPSERT, s);
        CHECK_ERR(ERR_VALIDATION, "field 'flow' must be 'IN' or 'OUT'");
        free(s);
    }
    char *s = fmt("%s1}", pre);
    parse(ET_MESSAGES_UPSERT, s);
    CHECK_ERR(ERR_VALIDATION, "field 'flow' must be a string, got number");
    free(s);
    s = fmt("%s\"\\u004fUT\"}", pre); /* escaped but equal after decoding */
    CHECK_EQ_INT(parse(ET_MESSAGES_UPSERT, s), ERR_NONE);
    CHECK_STR(ev.u.msg.flow, "OUT");
    free(s);
}

/* ---- wrong types ---- */

TEST(wrong_json_types_name_the_field_and_expected_type)
{
    static const struct {
        event_type_t et;
        const char *json;
        const char *want;
    } cases[] = {
        {ET_CHATS_UPDATE, "{\"chat_id\":42}", "field 'chat_id' must be a string, got number"},
        {ET_CHATS_UPDATE, "{\"id\":true}", "field 'id' must be a string, got boolean"},
        {ET_CHATS_UPDATE, "{\"chat_id\":\"c\",\"unread_count\":\"5\"}",
         "field 'unread_count' must be an integer, got string"},
        {ET_CHATS_UPDATE, "{\"chat_id\":\"c\",\"last_message\":[1]}",
         "field 'last_message' must be an object, got array"},
        {ET_CHATS_UPDATE, "{\"chat_id\":\"c\",\"last_message\":\"hi\"}",
         "field 'last_message' must be an object, got string"},
        {ET_CHATS_UPDATE, "{\"chat_id\":\"c\",\"unread_delta\":false}",
         "field 'unread_delta' must be an integer, got boolean"},
        {ET_MESSAGES_UPDATE, "{\"message_id\":\"m\",\"is_deleted\":\"true\"}",
         "field 'is_deleted' must be a boolean, got string"},
        {ET_MESSAGES_UPDATE, "{\"message_id\":\"m\",\"is_deleted\":1}",
         "field 'is_deleted' must be a boolean, got number"},
        {ET_MESSAGES_UPDATE, "{\"message_id\":\"m\",\"edited_message_obj\":null,\"status\":{}}",
         "field 'status' must be a string, got object"},
        {ET_CONTACTS_UPSERT, "{\"phone_number\":628,\"agent_id\":\"a\"}",
         "field 'phone_number' must be a string, got number"},
        {ET_CONNECTION_UPDATE, "{\"agent_id\":[\"a\"]}", "field 'agent_id' must be a string, got array"},
        {ET_CHATS_UPSERT,
         "{\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\",\"is_group\":\"no\"}",
         "field 'is_group' must be a boolean, got string"},
        {ET_MESSAGES_UPSERT,
         "{\"message_id\":\"m\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"IN\","
         "\"campaign\":{\"tags\":[\"a\"]}}",
         "field 'campaign.tags' must be a string, got array"},
        {ET_MESSAGES_UPSERT,
         "{\"message_id\":\"m\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"IN\","
         "\"campaign\":{\"is_campaign\":\"yes\"}}",
         "field 'campaign.is_campaign' must be a boolean, got string"},
        {ET_MESSAGES_UPSERT,
         "{\"message_id\":\"m\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"IN\","
         "\"campaign\":true}",
         "field 'campaign' must be an object, got boolean"},
        {ET_MESSAGES_UPSERT,
         "{\"message_id\":\"m\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"IN\","
         "\"message_timestamp\":\"1700000000\"}",
         "field 'message_timestamp' must be an integer, got string"},
        {ET_HISTORY_MESSAGES, "{\"messages\":[],\"is_last_batch\":\"yes\"}",
         "field 'is_last_batch' must be a boolean, got string"},
        {ET_HISTORY_MESSAGES, "{\"messages\":[],\"agent_id\":7}", "field 'agent_id' must be a string, got number"},
        {ET_HISTORY_CHATS, "{\"chats\":{}}", "field 'chats' must be an array, got object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        parse(cases[i].et, cases[i].json);
        CHECK_ERR(ERR_VALIDATION, cases[i].want);
    }
}

/* ---- integers and timestamps ---- */

TEST(integers_must_be_integral_and_in_range)
{
    static const struct {
        const char *json;
        bool ok;
        int64_t v;
    } cases[] = {
        {"{\"chat_id\":\"c\",\"unread_count\":2147483647}", true, 2147483647},
        {"{\"chat_id\":\"c\",\"unread_count\":2147483648}", false, 0},
        {"{\"chat_id\":\"c\",\"unread_count\":-1}", false, 0},
        {"{\"chat_id\":\"c\",\"unread_count\":2.0}", true, 2},
        {"{\"chat_id\":\"c\",\"unread_count\":1e3}", true, 1000},
        {"{\"chat_id\":\"c\",\"unread_count\":1.5}", false, 0},
        {"{\"chat_id\":\"c\",\"unread_count\":1e400}", false, 0},
        {"{\"chat_id\":\"c\",\"unread_count\":-0}", true, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        parse(ET_CHATS_UPDATE, cases[i].json);
        if (cases[i].ok) {
            CHECK_OK();
            CHECK(ev.u.chat_update.unread_count.set && ev.u.chat_update.unread_count.v == cases[i].v);
        } else {
            CHECK_ERR(ERR_VALIDATION, "field 'unread_count' must be an integer between 0 and 2147483647");
        }
    }
    REQUIRE(parse(ET_CHATS_UPDATE, "{\"chat_id\":\"c\",\"unread_delta\":-2147483648}") == ERR_NONE);
    CHECK_EQ_INT(ev.u.chat_update.unread_delta.v, INT32_MIN);
    parse(ET_CHATS_UPDATE, "{\"chat_id\":\"c\",\"unread_delta\":-2147483649}");
    CHECK_ERR(ERR_VALIDATION,
              "field 'unread_delta' must be an integer between -2147483648 and 2147483647, got -2147483649");
    parse(ET_CHATS_UPDATE, "{\"chat_id\":\"c\",\"conversation_timestamp\":9223372036854775808}");
    CHECK_ERR(ERR_VALIDATION, "field 'conversation_timestamp' must be an integer between 0 and 9223372036854775807");
    parse(ET_CHATS_UPDATE, "{\"chat_id\":\"c\",\"conversation_timestamp\":-1}");
    CHECK_ERR(ERR_VALIDATION, "field 'conversation_timestamp' must be an integer between 0");
}

TEST(timestamps_above_1e11_are_milliseconds)
{
    REQUIRE(parse(ET_CHATS_UPDATE, "{\"chat_id\":\"c\",\"conversation_timestamp\":100000000000}") == ERR_NONE);
    CHECK_EQ_INT(ev.u.chat_update.conversation_timestamp.v, 100000000000LL); /* exactly 1e11 is seconds */
    REQUIRE(parse(ET_CHATS_UPDATE, "{\"chat_id\":\"c\",\"conversation_timestamp\":100000000001}") == ERR_NONE);
    CHECK_EQ_INT(ev.u.chat_update.conversation_timestamp.v, 100000000);
    REQUIRE(parse(ET_CHATS_UPDATE, "{\"chat_id\":\"c\",\"conversation_timestamp\":1.7e12}") == ERR_NONE);
    CHECK_EQ_INT(ev.u.chat_update.conversation_timestamp.v, 1700000000);
    CHECK_EQ_INT(payload_timestamp_normalize(1700000000999LL), 1700000000);
    CHECK_EQ_INT(payload_timestamp_normalize(-5), -5);
}

TEST(timestamp_limit_applies_after_normalisation)
{
    REQUIRE(parse(ET_CHATS_UPDATE, "{\"chat_id\":\"c\",\"conversation_timestamp\":253402300799999}") == ERR_NONE);
    CHECK_EQ_INT(ev.u.chat_update.conversation_timestamp.v, PAYLOAD_MAX_TIMESTAMP);
    parse(ET_CHATS_UPDATE, "{\"chat_id\":\"c\",\"conversation_timestamp\":253402300800000}");
    CHECK_ERR(ERR_VALIDATION,
              "field 'conversation_timestamp' is 253402300800 seconds after normalisation, limit 253402300799");
    parse(ET_MESSAGES_UPSERT,
          "{\"message_id\":\"m\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"IN\","
          "\"message_timestamp\":9223372036854775807}");
    CHECK_ERR(ERR_VALIDATION,
              "field 'message_timestamp' is 9223372036854775 seconds after normalisation, limit 253402300799");
}

TEST(message_date_follows_the_timestamp_and_is_zero_when_missing_or_negative)
{
    const char *pre = "{\"message_id\":\"m\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"IN\"";
    char *s = fmt("%s,\"message_timestamp\":-5}", pre);
    REQUIRE(parse(ET_MESSAGES_UPSERT, s) == ERR_NONE);
    CHECK(ev.u.msg.message_timestamp.set && ev.u.msg.message_timestamp.v == -5);
    CHECK_EQ_INT(ev.u.msg.message_date, 0);
    free(s);
    s = fmt("%s,\"message_timestamp\":0}", pre);
    REQUIRE(parse(ET_MESSAGES_UPSERT, s) == ERR_NONE);
    CHECK_EQ_INT(ev.u.msg.message_date, 0);
    free(s);
    s = fmt("%s,\"message_timestamp\":null}", pre);
    REQUIRE(parse(ET_MESSAGES_UPSERT, s) == ERR_NONE);
    CHECK_EQ_INT(ev.u.msg.message_date, 0);
    free(s);
    s = fmt("%s,\"message_timestamp\":1735689599}", pre); /* 2024-12-31T23:59:59Z */
    REQUIRE(parse(ET_MESSAGES_UPSERT, s) == ERR_NONE);
    CHECK_EQ_INT(ev.u.msg.message_date, 20088);
    free(s);
}

TEST(date_helpers_are_exact)
{
    char d[11];
    CHECK_EQ_INT(payload_timestamp_days(0), 0);
    CHECK_EQ_INT(payload_timestamp_days(-86400 * 3), 0);
    CHECK_EQ_INT(payload_timestamp_days(86399), 0);
    CHECK_EQ_INT(payload_timestamp_days(86400), 1);
    CHECK_EQ_INT(payload_timestamp_days(PAYLOAD_MAX_TIMESTAMP), 2932896);
    payload_days_to_date(0, d);
    CHECK_EQ_STR(d, "1970-01-01");
    payload_days_to_date(19675, d);
    CHECK_EQ_STR(d, "2023-11-14");
    payload_days_to_date(11016, d);
    CHECK_EQ_STR(d, "2000-02-29");
    payload_days_to_date(11017, d);
    CHECK_EQ_STR(d, "2000-03-01");
    payload_days_to_date(789, d);
    CHECK_EQ_STR(d, "1972-02-29");
    payload_days_to_date(2932896, d);
    CHECK_EQ_STR(d, "9999-12-31");
    payload_days_to_date(-25508, d);
    CHECK_EQ_STR(d, "1900-03-01");
    payload_days_to_date(INT32_MAX, d); /* clamped, never garbage */
    CHECK_EQ_STR(d, "9999-12-31");
}

/* ---- limits: exactly at the limit passes, one over fails naming the field and the limit ---- */

/* Runs `et` on prefix + n copies of c + suffix and checks the outcome. */
static void check_len(int line, event_type_t et, const char *prefix, char c, size_t n, const char *suffix,
                      const char *want_err)
{
    char *fill = repeat(c, n);
    char *s = fmt("%s%s%s", prefix, fill, suffix);
    parse(et, s);
    if (!want_err && ev.err != ERR_NONE)
        testlib_fail(__FILE__, line, "%zu bytes rejected: %s", n, ev.errmsg);
    if (want_err && (ev.err != ERR_VALIDATION || !strstr(ev.errmsg, want_err)))
        testlib_fail(__FILE__, line, "%zu bytes: want \"%s\", got %s", n, want_err, ev.errmsg ? ev.errmsg : "(ok)");
    free(fill);
    free(s);
}

TEST(id_limit_is_256_bytes)
{
    check_len(__LINE__, ET_CHATS_UPDATE, "{\"chat_id\":\"", 'x', 256, "\"}", NULL);
    check_len(__LINE__, ET_CHATS_UPDATE, "{\"chat_id\":\"", 'x', 257, "\"}", "field 'chat_id' is 257 bytes, limit 256");
    check_len(__LINE__, ET_CHATS_UPDATE, "{\"id\":\"", 'x', 257, "\"}", "field 'id' is 257 bytes, limit 256");
    check_len(__LINE__, ET_MESSAGES_UPDATE, "{\"message_id\":\"", 'x', 257, "\"}",
              "field 'message_id' is 257 bytes, limit 256");
    check_len(__LINE__, ET_CONNECTION_UPDATE, "{\"agent_id\":\"", 'x', 256, "\"}", NULL);
    check_len(__LINE__, ET_CONNECTION_UPDATE, "{\"agent_id\":\"", 'x', 257, "\"}",
              "field 'agent_id' is 257 bytes, limit 256");
    check_len(__LINE__, ET_CHATS_UPSERT, "{\"chat_id\":\"c\",\"agent_id\":\"a\",\"phone_number\":\"1\",\"jid\":\"", 'j',
              257, "\"}", "field 'jid' is 257 bytes, limit 256");
    const char *msg =
        "{\"message_id\":\"m\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"IN\",\"key\":{\"id\":\"";
    check_len(__LINE__, ET_MESSAGES_UPSERT, msg, 'k', 256, "\"}}", NULL);
    check_len(__LINE__, ET_MESSAGES_UPSERT, msg, 'k', 257, "\"}}", "field 'key.id' is 257 bytes, limit 256");
}

TEST(limits_count_decoded_bytes_not_escaped_text)
{
    /* 128 x "\u00e9" is 768 bytes of text but 256 decoded bytes: at the limit. */
    buf_t b;
    buf_init(&b);
    buf_puts(&b, "{\"chat_id\":\"");
    for (int i = 0; i < 128; i++)
        buf_puts(&b, "\\u00e9");
    buf_puts(&b, "\"}");
    REQUIRE(parse(ET_CHATS_UPDATE, b.data) == ERR_NONE);
    CHECK_EQ_INT(ev.u.chat_update.chat_id.len, 256);
    CHECK((unsigned char)ev.u.chat_update.chat_id.p[0] == 0xC3);
    b.len -= 2;
    buf_puts(&b, "x\"}");
    parse(ET_CHATS_UPDATE, b.data);
    CHECK_ERR(ERR_VALIDATION, "field 'chat_id' is 257 bytes, limit 256");
    buf_free(&b);
}

TEST(phone_limit_is_64_bytes_as_sent)
{
    const char *msg =
        "{\"message_id\":\"m\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"IN\",\"from_phone\":\"";
    check_len(__LINE__, ET_MESSAGES_UPSERT, msg, '6', 64, "\"}", NULL);
    check_len(__LINE__, ET_MESSAGES_UPSERT, msg, '6', 65, "\"}", "field 'from_phone' is 65 bytes, limit 64");
    const char *to =
        "{\"message_id\":\"m\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"IN\",\"to\":\"";
    check_len(__LINE__, ET_MESSAGES_UPSERT, to, '6', 65, "\"}", "field 'to' is 65 bytes, limit 64");
    check_len(__LINE__, ET_CHATS_UPSERT, "{\"chat_id\":\"c\",\"agent_id\":\"a\",\"jid\":\"j\",\"phone_number\":\"", '1',
              64, "\"}", NULL);
    check_len(__LINE__, ET_CHATS_UPSERT, "{\"chat_id\":\"c\",\"agent_id\":\"a\",\"jid\":\"j\",\"phone_number\":\"", '1',
              65, "\"}", "field 'phone_number' is 65 bytes, limit 64");
    check_len(__LINE__, ET_CONNECTION_UPDATE, "{\"agent_id\":\"a\",\"phone_number\":\"", '1', 65, "\"}",
              "field 'phone_number' is 65 bytes, limit 64");
    /* Contacts: 64 bytes as sent pass even though only part of them are digits; 65 fail before normalising. */
    check_len(__LINE__, ET_CONTACTS_UPSERT, "{\"agent_id\":\"a\",\"phone_number\":\"62", ' ', 62, "\"}", NULL);
    CHECK_STR(ev.u.contact.phone_number, "62");
    check_len(__LINE__, ET_CONTACTS_UPSERT, "{\"agent_id\":\"a\",\"phone_number\":\"62", ' ', 63, "\"}",
              "field 'phone_number' is 65 bytes, limit 64");
}

TEST(string_limit_is_4096_bytes)
{
    const char *msg =
        "{\"message_id\":\"m\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"IN\",\"message_text\":\"";
    check_len(__LINE__, ET_MESSAGES_UPSERT, msg, 't', 4096, "\"}", NULL);
    CHECK_EQ_INT(ev.u.msg.message_text.len, 4096);
    check_len(__LINE__, ET_MESSAGES_UPSERT, msg, 't', 4097, "\"}", "field 'message_text' is 4097 bytes, limit 4096");
    check_len(__LINE__, ET_MESSAGES_UPSERT, msg, 't', 5000, "\"}", "field 'message_text' is 5000 bytes, limit 4096");
    check_len(__LINE__, ET_CONNECTION_UPDATE, "{\"agent_id\":\"a\",\"qr_code\":\"", 'q', 4097, "\"}",
              "field 'qr_code' is 4097 bytes, limit 4096");
    check_len(__LINE__, ET_CONTACTS_UPSERT, "{\"agent_id\":\"a\",\"phone_number\":\"1\",\"push_name\":\"", 'p', 4097,
              "\"}", "field 'push_name' is 4097 bytes, limit 4096");
    check_len(__LINE__, ET_MESSAGES_UPSERT,
              "{\"message_id\":\"m\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"IN\",\"campaign\":{"
              "\"origin\":\"",
              'o', 4097, "\"}}", "field 'campaign.origin' is 4097 bytes, limit 4096");
}

TEST(object_limit_is_65536_bytes_of_raw_text)
{
    /* {"s":"<n>"} is n + 8 bytes of raw text. */
    const char *msg = "{\"message_id\":\"m\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"IN\","
                      "\"message_obj\":{\"s\":\"";
    check_len(__LINE__, ET_MESSAGES_UPSERT, msg, 'o', 65536 - 8, "\"}}", NULL);
    CHECK_EQ_INT(ev.u.msg.message_obj.len, 65536);
    check_len(__LINE__, ET_MESSAGES_UPSERT, msg, 'o', 65536 - 7, "\"}}",
              "field 'message_obj' is 65537 bytes, limit 65536");
    check_len(__LINE__, ET_CHATS_UPDATE, "{\"chat_id\":\"c\",\"last_message\":{\"s\":\"", 'l', 65536 - 7, "\"}}",
              "field 'last_message' is 65537 bytes, limit 65536");
    check_len(__LINE__, ET_MESSAGES_UPDATE, "{\"message_id\":\"m\",\"edited_message_obj\":{\"s\":\"", 'e', 65536 - 7,
              "\"}}", "field 'edited_message_obj' is 65537 bytes, limit 65536");
    check_len(__LINE__, ET_MESSAGES_UPSERT,
              "{\"message_id\":\"m\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"IN\",\"key\":{"
              "\"id\":\"k\",\"s\":\"",
              'k', 65536, "\"}}", "field 'key' is 65553 bytes, limit 65536");
    check_len(__LINE__, ET_MESSAGES_UPSERT,
              "{\"message_id\":\"m\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"IN\",\"campaign\":{"
              "\"s\":\"",
              'c', 65536 - 7, "\"}}", "field 'campaign' is 65537 bytes, limit 65536");
}

TEST(message_limit_is_one_mebibyte_checked_before_parsing)
{
    const char *pre = "{\"agent_id\":\"a\",\"pad\":\"";
    size_t fill = PAYLOAD_MAX_MESSAGE - strlen(pre) - 2;
    check_len(__LINE__, ET_CONNECTION_UPDATE, pre, ' ', fill, "\"}", NULL);
    check_len(__LINE__, ET_CONNECTION_UPDATE, pre, ' ', fill + 1, "\"}", "message is 1048577 bytes, limit 1048576");
    /* Not even parsed: garbage above the limit is a limit error, not an unmarshal error. */
    char *junk = repeat('{', PAYLOAD_MAX_MESSAGE + 1);
    parse(ET_CHATS_UPSERT, junk);
    CHECK_ERR(ERR_VALIDATION, "limit 1048576");
    free(junk);
}

TEST(history_array_limit_is_10000_items)
{
    buf_t b;
    buf_init(&b);
    buf_puts(&b, "{\"contacts\":[{}");
    for (int i = 1; i < 10000; i++)
        buf_puts(&b, ",{}");
    buf_puts(&b, "]}");
    REQUIRE(parse(ET_HISTORY_CONTACTS, b.data) == ERR_NONE);
    CHECK_EQ_INT(ev.n_items, 10000);
    CHECK_EQ_STR(ev.items[9999].errmsg, "item 9999: field 'phone_number' is required");
    b.len -= 2;
    buf_puts(&b, ",{}]}");
    parse(ET_HISTORY_CONTACTS, b.data);
    CHECK_ERR(ERR_VALIDATION, "field 'contacts' has 10001 items, limit 10000");
    CHECK_EQ_INT(ev.n_items, 0);
    buf_free(&b);
}

/* ---- company_id ---- */

TEST(realtime_company_id_is_filled_when_absent_and_checked_when_present)
{
    REQUIRE(parse(ET_CONTACTS_UPDATE, "{\"phone_number\":\"1\",\"agent_id\":\"a\"}") == ERR_NONE);
    CHECK(ev.u.contact.company_id.p == ctx.company_id);
    REQUIRE(parse(ET_CONTACTS_UPDATE, "{\"phone_number\":\"1\",\"agent_id\":\"a\",\"company_id\":\"acme\"}") ==
            ERR_NONE);
    CHECK_STR(ev.u.contact.company_id, "acme");
    REQUIRE(parse(ET_CONTACTS_UPDATE, "{\"phone_number\":\"1\",\"agent_id\":\"a\",\"company_id\":\"\\u0061cme\"}") ==
            ERR_NONE);
    parse(ET_CONTACTS_UPDATE, "{\"phone_number\":\"1\",\"agent_id\":\"a\",\"company_id\":\"other\"}");
    CHECK_ERR(ERR_VALIDATION, "company_id mismatch: 'other' is not 'acme'");
    parse(ET_CONTACTS_UPDATE, "{\"phone_number\":\"1\",\"agent_id\":\"a\",\"company_id\":\"ACME\"}");
    CHECK_ERR(ERR_VALIDATION, "company_id mismatch: 'ACME' is not 'acme'");
    parse(ET_CONTACTS_UPDATE, "{\"phone_number\":\"1\",\"agent_id\":\"a\",\"company_id\":\"\"}");
    CHECK_ERR(ERR_VALIDATION, "company_id mismatch: '' is not 'acme'");
    parse(ET_CONTACTS_UPDATE, "{\"phone_number\":\"1\",\"agent_id\":\"a\",\"company_id\":5}");
    CHECK_ERR(ERR_VALIDATION, "field 'company_id' must be a string, got number");
}

TEST(company_id_is_checked_on_types_without_a_company_column)
{
    parse(ET_CHATS_UPDATE, "{\"chat_id\":\"c\",\"company_id\":\"globex\"}");
    CHECK_ERR(ERR_VALIDATION, "company_id mismatch: 'globex' is not 'acme'");
    parse(ET_MESSAGES_UPDATE, "{\"message_id\":\"m\",\"company_id\":\"globex\"}");
    CHECK_ERR(ERR_VALIDATION, "company_id mismatch");
    REQUIRE(parse(ET_MESSAGES_UPDATE, "{\"message_id\":\"m\",\"company_id\":\"acme\"}") == ERR_NONE);
}

TEST(history_container_company_id_mismatch_fails_the_whole_batch)
{
    parse(ET_HISTORY_CHATS, "{\"company_id\":\"globex\",\"chats\":[]}");
    CHECK_ERR(ERR_VALIDATION, "company_id mismatch: 'globex' is not 'acme'");
    REQUIRE(parse(ET_HISTORY_CHATS, "{\"company_id\":\"acme\",\"chats\":[]}") == ERR_NONE);
    CHECK_EQ_INT(ev.n_items, 0);
}

TEST(history_items_must_carry_the_company_id)
{
    const char *s = "{\"contacts\":[{\"phone_number\":\"1\",\"agent_id\":\"a\",\"company_id\":\"acme\"},"
                    "{\"phone_number\":\"2\",\"agent_id\":\"a\",\"company_id\":\"globex\"},"
                    "{\"phone_number\":\"3\",\"agent_id\":\"a\",\"company_id\":\"acme\"},"
                    "{\"phone_number\":\"4\",\"agent_id\":\"a\"}]}";
    REQUIRE(parse(ET_HISTORY_CONTACTS, s) == ERR_NONE);
    REQUIRE(ev.n_items == 4);
    CHECK_EQ_INT(ev.items[0].err, ERR_NONE);
    CHECK_EQ_STR(ev.items[1].errmsg, "item 1: company_id mismatch: 'globex' is not 'acme'");
    CHECK_EQ_INT(ev.items[2].err, ERR_NONE);
    CHECK_EQ_INT(ev.items[3].err, ERR_VALIDATION);
    CHECK_EQ_STR(ev.items[3].errmsg, "item 3: company_id is required");
}

/* ---- history batches ---- */

TEST(history_bad_item_among_good_ones_fails_alone_with_its_index)
{
    const char *good =
        "{\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\",\"company_id\":\"acme\"}";
    char *s = fmt("{\"chats\":[%s,{\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\",\"company_id\":\"acme\"},%s,"
                  "42,%s,{\"chat_id\":\"c\",\"chat_id\":\"d\"}]}",
                  good, good, good);
    REQUIRE(parse(ET_HISTORY_CHATS, s) == ERR_NONE);
    CHECK(ev.errmsg == NULL);
    REQUIRE(ev.n_items == 6);
    CHECK_EQ_INT(ev.items[0].err, ERR_NONE);
    CHECK_EQ_INT(ev.items[1].err, ERR_VALIDATION);
    CHECK_EQ_STR(ev.items[1].errmsg, "item 1: field 'chat_id' is required");
    CHECK_STR(ev.items[1].raw, "{\"jid\":\"j\",\"agent_id\":\"a\",\"phone_number\":\"1\",\"company_id\":\"acme\"}");
    CHECK_EQ_INT(ev.items[2].err, ERR_NONE);
    CHECK_EQ_STR(ev.items[3].errmsg, "item 3: must be a JSON object, got number");
    CHECK_STR(ev.items[3].raw, "42");
    CHECK_EQ_INT(ev.items[3].type, ET_CHATS_UPSERT);
    CHECK_EQ_INT(ev.items[4].err, ERR_NONE);
    CHECK_EQ_STR(ev.items[5].errmsg, "item 5: duplicate key 'chat_id'");
    CHECK_STR(ev.items[4].raw, good);
    free(s);
}

TEST(history_container_errors)
{
    parse(ET_HISTORY_MESSAGES, "{\"is_last_batch\":true}");
    CHECK_ERR(ERR_VALIDATION, "field 'messages' is required");
    parse(ET_HISTORY_MESSAGES, "{\"messages\":null}");
    CHECK_ERR(ERR_VALIDATION, "field 'messages' is required");
    parse(ET_HISTORY_CHATS, "[]");
    CHECK_ERR(ERR_UNMARSHAL, "payload is not a JSON object");
    parse(ET_HISTORY_CONTACTS, "{\"contacts\":[}");
    CHECK_ERR(ERR_UNMARSHAL, "invalid JSON");
    parse(ET_HISTORY_CHATS, "{\"chats\":[],\"chats\":[]}");
    CHECK_ERR(ERR_VALIDATION, "duplicate key 'chats'");
    REQUIRE(parse(ET_HISTORY_MESSAGES, "{\"messages\":[],\"is_last_batch\":false}") == ERR_NONE);
    CHECK_EQ_INT(ev.is_last_batch, TRI_FALSE);
    CHECK_EQ_INT(ev.n_items, 0);
}

TEST(history_items_inherit_a_blank_batch_agent_id_as_an_error)
{
    REQUIRE(parse(ET_HISTORY_MESSAGES, "{\"agent_id\":\" \",\"messages\":[{\"message_id\":\"m\",\"chat_id\":\"c\","
                                       "\"jid\":\"j\",\"flow\":\"IN\",\"company_id\":\"acme\"}]}") == ERR_NONE);
    CHECK_EQ_INT(ev.err, ERR_NONE);
    REQUIRE(ev.n_items == 1);
    CHECK_EQ_STR(ev.items[0].errmsg, "item 0: field 'agent_id' must not be blank (inherited from the batch)");
}

/* ---- raw objects ---- */

TEST(big_integers_in_objects_are_kept_as_exact_raw_text)
{
    REQUIRE(parse(ET_CHATS_UPDATE, "{\"chat_id\":\"c\",\"last_message\":{\"n\": 12345678901234567890,"
                                   "\"f\":1e400, \"s\":\"\\u00e9\"}}") == ERR_NONE);
    CHECK_STR(ev.u.chat_update.last_message, "{\"n\": 12345678901234567890,\"f\":1e400, \"s\":\"\\u00e9\"}");
}

/* ---- phones ---- */

TEST(phone_normalize_keeps_digits_before_the_at_sign)
{
    char out[64];
    CHECK_EQ_INT(payload_phone_normalize("+62 812-3456@s.whatsapp.net", 27, out), 9);
    CHECK(memcmp(out, "628123456", 9) == 0);
    CHECK_EQ_INT(payload_phone_normalize("@123", 4, out), 0);
    CHECK_EQ_INT(payload_phone_normalize("abc", 3, out), 0);
    CHECK_EQ_INT(payload_phone_normalize("", 0, out), 0);
    CHECK_EQ_INT(payload_phone_normalize("1@2@3", 5, out), 1);
}

TEST(contact_phone_without_digits_is_rejected)
{
    parse(ET_CONTACTS_UPSERT, "{\"phone_number\":\"abc@s.whatsapp.net\",\"agent_id\":\"a\"}");
    CHECK_ERR(ERR_VALIDATION, "phone_number has no digits");
    parse(ET_CONTACTS_UPDATE, "{\"phone_number\":\"@62812\",\"agent_id\":\"a\"}");
    CHECK_ERR(ERR_VALIDATION, "phone_number has no digits");
    parse(ET_CONTACTS_UPDATE, "{\"phone_number\":\"\",\"agent_id\":\"a\"}");
    CHECK_ERR(ERR_VALIDATION, "phone_number has no digits");
}

TEST(digits_only_contact_phone_stays_zero_copy)
{
    const char *s = "{\"phone_number\":\"628123\",\"agent_id\":\"a\"}";
    REQUIRE(parse(ET_CONTACTS_UPSERT, s) == ERR_NONE);
    CHECK(ev.u.contact.phone_number.p == s + 17);
}

/* ---- escapes and storage ---- */

TEST(escaped_strings_are_decoded_into_the_arena)
{
    const char *s = "{\"chat_id\":\"a\\\"b\\\\c\\u00e9\",\"agent_id\":\"plain\"}";
    REQUIRE(parse(ET_CHATS_UPDATE, s) == ERR_NONE);
    CHECK_STR(ev.u.chat_update.chat_id, "a\"b\\c\xc3\xa9");
    CHECK(ev.u.chat_update.chat_id.p < s || ev.u.chat_update.chat_id.p > s + strlen(s));
    CHECK_EQ_INT(ev.u.chat_update.chat_id.p[ev.u.chat_update.chat_id.len], '\0');
    CHECK(ev.u.chat_update.agent_id.p == strstr(s, "plain"));
}

TEST(metric_labels_come_from_the_event)
{
    REQUIRE(parse(ET_MESSAGES_UPSERT, message_upsert_json) == ERR_NONE);
    CHECK_STR(payload_agent_id(&ev), "ag1");
    CHECK_STR(payload_jid(&ev), "628@s.whatsapp.net");
    REQUIRE(parse(ET_MESSAGES_UPDATE, "{\"message_id\":\"m\"}") == ERR_NONE);
    CHECK(payload_agent_id(&ev).p == NULL);
    CHECK(payload_jid(&ev).p == NULL);
    REQUIRE(parse(ET_CONNECTION_UPDATE, "{\"agent_id\":\"x\"}") == ERR_NONE);
    CHECK_STR(payload_agent_id(&ev), "x");
    REQUIRE(parse(ET_CHATS_UPDATE, "{\"chat_id\":\"c\",\"agent_id\":\"y\"}") == ERR_NONE);
    CHECK_STR(payload_agent_id(&ev), "y");
}

/* ---- hostile input (SPEC 12) ---- */

TEST(malformed_json_is_an_unmarshal_error)
{
    static const char *const bad[] = {"{",
                                      "{\"chat_id\":}",
                                      "{\"chat_id\":\"c\",}",
                                      "{chat_id:\"c\"}",
                                      "{\"chat_id\":'c'}",
                                      "{\"a\":1}}",
                                      "nul",
                                      "{\"chat_id\":\"c\"} trailing",
                                      "{\"n\":01}",
                                      "{\"n\":NaN}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        parse(ET_CHATS_UPDATE, bad[i]);
        CHECK_ERR(ERR_UNMARSHAL, "invalid JSON: ");
    }
}

TEST(non_object_payloads_are_unmarshal_errors)
{
    static const char *const bad[] = {"[]", "\"chat\"", "42", "null", "true", "[{\"chat_id\":\"c\"}]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        parse(ET_CHATS_UPDATE, bad[i]);
        CHECK_ERR(ERR_UNMARSHAL, "payload is not a JSON object");
    }
}

TEST(empty_body_is_an_unmarshal_error)
{
    parse_n(ET_CHATS_UPSERT, "", 0);
    CHECK_ERR(ERR_UNMARSHAL, "invalid JSON: empty input");
    parse_n(ET_CHATS_UPSERT, NULL, 0);
    CHECK_ERR(ERR_UNMARSHAL, "invalid JSON: empty input");
    parse(ET_HISTORY_CHATS, "  \r\n");
    CHECK_ERR(ERR_UNMARSHAL, "invalid JSON: empty input");
}

TEST(every_truncation_of_a_valid_event_is_an_unmarshal_error)
{
    size_t n = strlen(message_upsert_json);
    for (size_t k = 0; k < n; k++) {
        parse_n(ET_MESSAGES_UPSERT, message_upsert_json, k);
        if (ev.err != ERR_UNMARSHAL)
            testlib_fail(__FILE__, __LINE__, "prefix %zu: %s", k, ev.errmsg ? ev.errmsg : "(accepted)");
    }
}

TEST(binary_garbage_never_crashes_and_is_rejected)
{
    unsigned seed = 12345;
    char data[512];
    for (int round = 0; round < 2000; round++) {
        size_t n = (size_t)(round % 500) + 1;
        for (size_t i = 0; i < n; i++) {
            seed = seed * 1103515245u + 12345u;
            data[i] = (char)(seed >> 16);
        }
        if (round % 3 == 0)
            data[0] = '{';
        for (int et = 0; et < ET_BASE_COUNT; et++) {
            parse_n((event_type_t)et, data, n);
            if (ev.err == ERR_NONE || !ev.errmsg)
                testlib_fail(__FILE__, __LINE__, "round %d type %d accepted garbage", round, et);
        }
    }
}

TEST(invalid_utf8_in_a_value_is_an_unmarshal_error)
{
    parse(ET_CHATS_UPDATE, "{\"chat_id\":\"c\xc0\xaf\"}");
    CHECK_ERR(ERR_UNMARSHAL, "invalid JSON: invalid UTF-8 at byte 13");
    parse(ET_CHATS_UPDATE, "{\"chat_id\":\"\xed\xa0\x80\"}");
    CHECK_ERR(ERR_UNMARSHAL, "invalid UTF-8");
    parse(ET_CHATS_UPDATE, "{\"chat_id\":\"c\",\"x\xff\":1}");
    CHECK_ERR(ERR_UNMARSHAL, "invalid UTF-8");
}

TEST(nul_bytes_raw_and_escaped_are_unmarshal_errors)
{
    parse_n(ET_CHATS_UPDATE, "{\"chat_id\":\"a\0b\"}", 17);
    CHECK_ERR(ERR_UNMARSHAL, "NUL byte at byte 13");
    parse(ET_CHATS_UPDATE, "{\"chat_id\":\"a\\u0000b\"}");
    CHECK_ERR(ERR_UNMARSHAL, "\\u0000");
    parse_n(ET_CHATS_UPDATE, "{\"chat_id\":\"c\"}\0", 16);
    CHECK_ERR(ERR_UNMARSHAL, "NUL byte");
}

TEST(lone_surrogate_escapes_are_unmarshal_errors)
{
    parse(ET_CHATS_UPDATE, "{\"chat_id\":\"\\ud83d\"}");
    CHECK_ERR(ERR_UNMARSHAL, "unpaired surrogate");
    parse(ET_CHATS_UPDATE, "{\"chat_id\":\"\\ude00\\ud83d\"}");
    CHECK_ERR(ERR_UNMARSHAL, "unpaired surrogate");
    REQUIRE(parse(ET_CHATS_UPDATE, "{\"chat_id\":\"\\ud83d\\ude00\"}") == ERR_NONE);
    CHECK_STR(ev.u.chat_update.chat_id, "\xf0\x9f\x98\x80");
}

static char *deep_event(int depth)
{
    /* The event object is level 1, so `depth - 1` nested arrays sit inside last_message's object at level 2. */
    char *inner = malloc((size_t)depth * 2 + 1);
    int k = 0;
    for (int i = 0; i < depth - 2; i++)
        inner[k++] = '[';
    for (int i = 0; i < depth - 2; i++)
        inner[k++] = ']';
    inner[k] = '\0';
    char *s = fmt("{\"chat_id\":\"c\",\"last_message\":{\"a\":%s}}", inner);
    free(inner);
    return s;
}

TEST(depth_64_passes_and_65_is_a_validation_error)
{
    char *ok = deep_event(64);
    char *deep = deep_event(65);
    REQUIRE(parse(ET_CHATS_UPDATE, ok) == ERR_NONE);
    parse(ET_CHATS_UPDATE, deep);
    CHECK_ERR(ERR_VALIDATION, "nesting deeper than 64 at byte");
    free(ok);
    free(deep);
}

TEST(duplicate_known_keys_are_validation_errors)
{
    parse(ET_CHATS_UPDATE, "{\"chat_id\":\"a\",\"chat_id\":\"b\"}");
    CHECK_ERR(ERR_VALIDATION, "duplicate key 'chat_id'");
    parse(ET_CHATS_UPDATE, "{\"chat_id\":null,\"chat_id\":\"b\"}");
    CHECK_ERR(ERR_VALIDATION, "duplicate key 'chat_id'");
    parse(ET_CHATS_UPDATE, "{\"id\":\"a\",\"chat_id\":\"c\",\"id\":\"b\"}");
    CHECK_ERR(ERR_VALIDATION, "duplicate key 'id'");
    parse(ET_CHATS_UPDATE, "{\"chat_id\":\"a\",\"chat\\u005fid\":\"b\"}"); /* same key after decoding */
    CHECK_ERR(ERR_VALIDATION, "duplicate key 'chat_id'");
    parse(ET_MESSAGES_UPSERT,
          "{\"message_id\":\"m\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"IN\","
          "\"key\":{\"id\":\"a\",\"id\":\"b\"}}");
    CHECK_ERR(ERR_VALIDATION, "duplicate key 'key.id'");
    /* Unknown keys may repeat; canonical plus alias is not a duplicate. */
    REQUIRE(parse(ET_CHATS_UPDATE, "{\"x\":1,\"x\":2,\"chat_id\":\"c\",\"id\":\"d\"}") == ERR_NONE);
    /* Keys of nested free-form objects are not ours to judge. */
    REQUIRE(parse(ET_CHATS_UPDATE, "{\"chat_id\":\"c\",\"last_message\":{\"a\":1,\"a\":2}}") == ERR_NONE);
}

TEST(object_with_100k_keys_is_handled_in_linear_time)
{
    buf_t b;
    buf_init(&b);
    buf_puts(&b, "{\"chat_id\":\"c\"");
    for (int i = 0; b.len < PAYLOAD_MAX_MESSAGE - 32; i++)
        buf_printf(&b, ",\"k%d\":%d", i, i);
    buf_puts(&b, "}");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    REQUIRE(parse(ET_CHATS_UPDATE, b.data) == ERR_NONE);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    CHECK(ms < 500); /* generous for sanitizer builds; quadratic would take seconds */
    /* A repeated known key at the very end is still found. */
    b.len -= 1;
    buf_puts(&b, ",\"chat_id\":\"d\"}");
    parse(ET_CHATS_UPDATE, b.data);
    CHECK_ERR(ERR_VALIDATION, "duplicate key 'chat_id'");
    buf_free(&b);
}

TEST(huge_strings_in_unknown_keys_are_ignored_and_in_known_keys_rejected)
{
    char *fill = repeat('h', 900000);
    char *s = fmt("{\"chat_id\":\"c\",\"blob\":\"%s\"}", fill);
    REQUIRE(parse(ET_CHATS_UPDATE, s) == ERR_NONE);
    free(s);
    s = fmt("{\"chat_id\":\"c\",\"agent_id\":\"%s\"}", fill);
    parse(ET_CHATS_UPDATE, s);
    CHECK_ERR(ERR_VALIDATION, "field 'agent_id' is 900000 bytes, limit 256");
    free(s);
    free(fill);
}

TEST(numbers_out_of_range_are_validation_errors)
{
    parse(ET_CHATS_UPDATE, "{\"chat_id\":\"c\",\"conversation_timestamp\":1e400}");
    CHECK_ERR(ERR_VALIDATION, "field 'conversation_timestamp' must be an integer");
    parse(ET_CHATS_UPDATE, "{\"chat_id\":\"c\",\"conversation_timestamp\":9223372036854775808}");
    CHECK_ERR(ERR_VALIDATION, "got 9223372036854775808");
    parse(ET_CHATS_UPDATE, "{\"chat_id\":\"c\",\"unread_count\":1.5}");
    CHECK_ERR(ERR_VALIDATION, "field 'unread_count' must be an integer between 0 and 2147483647, got 1.5");
    parse(ET_MESSAGES_UPSERT,
          "{\"message_id\":\"m\",\"chat_id\":\"c\",\"jid\":\"j\",\"agent_id\":\"a\",\"flow\":\"IN\","
          "\"message_timestamp\":-9223372036854775809}");
    CHECK_ERR(ERR_VALIDATION, "field 'message_timestamp' must be an integer");
}

TEST(sql_meta_characters_are_accepted_verbatim)
{
    const char *s = "{\"chat_id\":\"c'; DROP TABLE chats;--\",\"jid\":\"j\\\"--\",\"agent_id\":\"a/*x*/\","
                    "\"phone_number\":\"1' OR '1'='1\",\"push_name\":\"Robert'); DELETE FROM chats; --\\\\\"}";
    REQUIRE(parse(ET_CHATS_UPSERT, s) == ERR_NONE);
    CHECK_STR(ev.u.chat.chat_id, "c'; DROP TABLE chats;--");
    CHECK_STR(ev.u.chat.jid, "j\"--");
    CHECK_STR(ev.u.chat.agent_id, "a/*x*/");
    CHECK_STR(ev.u.chat.phone_number, "1' OR '1'='1");
    CHECK_STR(ev.u.chat.push_name, "Robert'); DELETE FROM chats; --\\");
}

TEST(values_quoted_in_errors_are_truncated_on_a_character_boundary)
{
    buf_t b, out;
    buf_init(&b);
    buf_init(&out);
    buf_puts(&b, "{\"phone_number\":\"1\",\"agent_id\":\"a\",\"company_id\":\"");
    for (int i = 0; i < 500; i++)
        buf_puts(&b, "\xc3\xa9");
    buf_puts(&b, "\"}");
    parse(ET_CONTACTS_UPSERT, b.data);
    CHECK_ERR(ERR_VALIDATION, "company_id mismatch: '");
    CHECK_CONTAINS(ev.errmsg, "...' is not 'acme'");
    CHECK(strlen(ev.errmsg) < 120);
    buf_put_json_str(&out, ev.errmsg, strlen(ev.errmsg));
    CHECK(strstr(out.data, "\\ufffd") == NULL); /* no UTF-8 sequence was cut */
    buf_free(&b);
    buf_free(&out);
}

TEST(unknown_event_type_is_a_validation_error)
{
    parse(ET_UNKNOWN, "{}");
    CHECK_ERR(ERR_VALIDATION, "unknown event type");
    parse((event_type_t)99, "{}");
    CHECK_ERR(ERR_VALIDATION, "unknown event type");
}

TEST(steady_state_parsing_reuses_arena_and_tokens)
{
    REQUIRE(parse(ET_MESSAGES_UPSERT, message_upsert_json) == ERR_NONE);
    json_tok_t *toks = ctx.doc.toks;
    arena_reset(ctx.arena);
    void *start = arena_alloc(ctx.arena, 1);
    for (int i = 0; i < 1000; i++)
        REQUIRE(parse(ET_MESSAGES_UPSERT, message_upsert_json) == ERR_NONE);
    CHECK(ctx.doc.toks == toks);
    CHECK(arena_alloc(ctx.arena, 1) == start); /* the common event took nothing from the arena */
}
