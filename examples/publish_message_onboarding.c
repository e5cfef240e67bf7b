/* publish_message_onboarding.c - publishes an incoming message from a campaign (v1.messages.upsert.<co>), which
 * onboards its sender.
 *
 *   publish_message_onboarding [--url nats://127.0.0.1:4222] [--company demo] [--message-id example-msg-1]
 *
 * Defaults come from NATS_URL and COMPANY_ID, as for the service. In one transaction the service writes the row of
 * daisi_<co>.messages and, because flow is IN with a from_phone, onboards the sender (SPEC 6): a contact for
 * (agent_id, digits of from_phone) with the campaign's tags and origin, and an onboarding_log row.
 *
 *   psql -c "SELECT phone_number, tags, origin, first_message_id FROM daisi_demo.contacts"
 *
 * Exits 0 once the stream stored the event, 1 when it could not, 2 on bad usage. */
#include <time.h>

#include <cjson/cJSON.h>

#include "examples.h"

int main(int argc, char **argv)
{
    if (!args_ok(argc, argv, (const char *const[]){"--url", "--company", "--message-id", NULL})) {
        fprintf(stderr, "usage: %s [--url URL] [--company CO] [--message-id ID]\n", argv[0]);
        return 2;
    }
    const char *url = opt(argc, argv, "--url", "NATS_URL", "nats://127.0.0.1:4222");
    const char *company = opt(argc, argv, "--company", "COMPANY_ID", "demo");
    const char *message_id = opt(argc, argv, "--message-id", NULL, "example-msg-1");

    /* Required: message_id, chat_id, jid, agent_id, flow (IN or OUT). The message's day picks its partition. */
    cJSON *msg = cJSON_CreateObject();
    cJSON_AddStringToObject(msg, "message_id", message_id);
    cJSON_AddStringToObject(msg, "chat_id", "example-chat-1");
    cJSON_AddStringToObject(msg, "jid", "6281234567@s.whatsapp.net");
    cJSON_AddStringToObject(msg, "agent_id", "example-agent");
    cJSON_AddStringToObject(msg, "flow", "IN");
    cJSON_AddStringToObject(msg, "from_phone", "+62 812-3456-7@s.whatsapp.net"); /* contact phone: 6281234567 */
    cJSON_AddStringToObject(msg, "message_type", "text");
    cJSON_AddStringToObject(msg, "message_text", "Halo, ada promo?");
    cJSON_AddStringToObject(msg, "status", "delivered");
    cJSON_AddNumberToObject(msg, "message_timestamp", (double)time(NULL));
    cJSON *campaign = cJSON_AddObjectToObject(msg, "campaign");
    cJSON_AddBoolToObject(campaign, "is_campaign", 1);
    cJSON_AddStringToObject(campaign, "tags", "promo,december");
    cJSON_AddStringToObject(campaign, "origin", "Ads");
    char *payload = cJSON_PrintUnformatted(msg);

    char subject[128], msg_id[300];
    snprintf(subject, sizeof subject, "v1.messages.upsert.%s", company);
    snprintf(msg_id, sizeof msg_id, "message-%s", message_id);

    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    bool ok = connect_js(url, &nc, &js) && publish(js, subject, payload, msg_id);
    if (ok)
        printf("the service for tenant %s writes message %s and onboards contact 6281234567 of example-agent\n",
               company, message_id);

    cJSON_free(payload);
    cJSON_Delete(msg);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    nats_Close();
    return ok ? 0 : 1;
}
