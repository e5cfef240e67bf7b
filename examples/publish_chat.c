/* publish_chat.c - publishes one chat (v1.chats.upsert.<co>) the way a tenant's chat platform does.
 *
 *   publish_chat [--url nats://127.0.0.1:4222] [--company demo] [--chat-id example-chat-1]
 *
 * Defaults come from NATS_URL and COMPANY_ID, as for the service. The service running for that tenant upserts the
 * row into daisi_<co>.chats (conflict on chat_id; SPEC 2 lists the fields, 3.2 the write rules):
 *
 *   psql -c "SELECT chat_id, push_name, unread_count FROM daisi_demo.chats"
 *
 * Exits 0 once the stream stored the event, 1 when it could not, 2 on bad usage. */
#include <time.h>

#include <cjson/cJSON.h>

#include "examples.h"

int main(int argc, char **argv)
{
    if (!args_ok(argc, argv, (const char *const[]){"--url", "--company", "--chat-id", NULL})) {
        fprintf(stderr, "usage: %s [--url URL] [--company CO] [--chat-id ID]\n", argv[0]);
        return 2;
    }
    const char *url = opt(argc, argv, "--url", "NATS_URL", "nats://127.0.0.1:4222");
    const char *company = opt(argc, argv, "--company", "COMPANY_ID", "demo");
    const char *chat_id = opt(argc, argv, "--chat-id", NULL, "example-chat-1");

    /* Required: chat_id, jid, agent_id, phone_number. company_id may be left out: the service fills in its own. */
    cJSON *chat = cJSON_CreateObject();
    cJSON_AddStringToObject(chat, "chat_id", chat_id);
    cJSON_AddStringToObject(chat, "jid", "6281234567@s.whatsapp.net");
    cJSON_AddStringToObject(chat, "agent_id", "example-agent");
    cJSON_AddStringToObject(chat, "phone_number", "6281234567");
    cJSON_AddStringToObject(chat, "push_name", "Budi");
    cJSON_AddNumberToObject(chat, "unread_count", 1);
    /* Unix seconds. An event older than the stored conversation_timestamp does not overwrite newer values. */
    cJSON_AddNumberToObject(chat, "conversation_timestamp", (double)time(NULL));
    cJSON *last = cJSON_AddObjectToObject(chat, "last_message");
    cJSON_AddStringToObject(last, "text", "Halo, ada promo?");
    char *payload = cJSON_PrintUnformatted(chat);

    char subject[128], msg_id[300];
    snprintf(subject, sizeof subject, "v1.chats.upsert.%s", company);
    snprintf(msg_id, sizeof msg_id, "chat-%s", chat_id); /* one id per event: a retry is not stored twice */

    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    bool ok = connect_js(url, &nc, &js) && publish(js, subject, payload, msg_id);
    if (ok)
        printf("the service for tenant %s upserts chat %s into its table chats\n", company, chat_id);

    cJSON_free(payload);
    cJSON_Delete(chat);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    nats_Close();
    return ok ? 0 : 1;
}
