/* publish_history_batch.c - publishes a batch of old messages (v1.history.messages.<co>), as a chat platform does
 * when an agent's history is imported.
 *
 *   publish_history_batch [--url nats://127.0.0.1:4222] [--company demo] [--count 3]
 *
 * Defaults come from NATS_URL and COMPANY_ID, as for the service. History goes to its own stream
 * (wa_history_events_stream) and lanes. Every item must carry company_id. Valid items are written to
 * daisi_<co>.messages; an invalid item would become its own DLQ record while the others are still written. History
 * messages do not onboard contacts.
 *
 *   psql -c "SELECT message_id, message_date FROM daisi_demo.messages WHERE message_id LIKE 'example-old-%'"
 *
 * Exits 0 once the stream stored the batch, 1 when it could not, 2 on bad usage. */
#include <cjson/cJSON.h>

#include "examples.h"

int main(int argc, char **argv)
{
    if (!args_ok(argc, argv, (const char *const[]){"--url", "--company", "--count", NULL})) {
        fprintf(stderr, "usage: %s [--url URL] [--company CO] [--count N]\n", argv[0]);
        return 2;
    }
    const char *url = opt(argc, argv, "--url", "NATS_URL", "nats://127.0.0.1:4222");
    const char *company = opt(argc, argv, "--company", "COMPANY_ID", "demo");
    int count = atoi(opt(argc, argv, "--count", NULL, "3"));
    if (count < 1 || count > 10000) {
        fprintf(stderr, "--count must be between 1 and 10000 (items per batch)\n");
        return 2;
    }

    cJSON *batch = cJSON_CreateObject();
    cJSON_AddStringToObject(batch, "agent_id", "example-agent");
    cJSON_AddBoolToObject(batch, "is_last_batch", 1);
    cJSON *items = cJSON_AddArrayToObject(batch, "messages");
    for (int i = 1; i <= count; i++) {
        char id[32];
        snprintf(id, sizeof id, "example-old-%d", i);
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "message_id", id);
        cJSON_AddStringToObject(m, "chat_id", "example-chat-1");
        cJSON_AddStringToObject(m, "jid", "6281234567@s.whatsapp.net");
        cJSON_AddStringToObject(m, "agent_id", "example-agent");
        cJSON_AddStringToObject(m, "company_id", company);
        cJSON_AddStringToObject(m, "flow", i % 2 ? "IN" : "OUT");
        cJSON_AddStringToObject(m, "message_text", "an old message");
        cJSON_AddNumberToObject(m, "message_timestamp", 1700000000 + i * 60); /* November 2023 */
        cJSON_AddItemToArray(items, m);
    }
    char *payload = cJSON_PrintUnformatted(batch);

    char subject[128], msg_id[64];
    snprintf(subject, sizeof subject, "v1.history.messages.%s", company);
    snprintf(msg_id, sizeof msg_id, "history-example-old-1-to-%d", count);

    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    bool ok = connect_js(url, &nc, &js) && publish(js, subject, payload, msg_id);
    if (ok)
        printf("the service for tenant %s writes %d history messages example-old-1..%d\n", company, count, count);

    cJSON_free(payload);
    cJSON_Delete(batch);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    nats_Close();
    return ok ? 0 : 1;
}
