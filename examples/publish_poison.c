/* publish_poison.c - publishes an event the service must refuse, then shows the DLQ record it became.
 *
 *   publish_poison [--url nats://127.0.0.1:4222] [--company demo] [--wait 10]
 *
 * Defaults come from NATS_URL and COMPANY_ID, as for the service. The event is a message whose flow is neither IN
 * nor OUT: a validation error. The service acks it only after a DLQ record is stored on v1.dlq.<co> (stream
 * dlq_stream; SPEC 5.1: the original, the error naming the field, its class, provenance). The DLQ worker does not
 * retry a validation error: it stores the record in daisi_<co>.exhausted_events at once, where an operator lists,
 * replays or resolves it (replay_exhausted, or `message-event-service exhausted list`).
 *
 * Exits 0 when the record arrived within --wait seconds, 1 otherwise, 2 on bad usage. */
#include "examples.h"

int main(int argc, char **argv)
{
    if (!args_ok(argc, argv, (const char *const[]){"--url", "--company", "--wait", NULL})) {
        fprintf(stderr, "usage: %s [--url URL] [--company CO] [--wait SECONDS]\n", argv[0]);
        return 2;
    }
    const char *url = opt(argc, argv, "--url", "NATS_URL", "nats://127.0.0.1:4222");
    const char *company = opt(argc, argv, "--company", "COMPANY_ID", "demo");
    int64_t wait_ms = 1000 * (int64_t)atoi(opt(argc, argv, "--wait", NULL, "10"));

    /* Every field is fine except flow; the record's error names it. */
    const char *payload = "{\"message_id\":\"example-poison-1\",\"chat_id\":\"example-chat-1\","
                          "\"jid\":\"6281234567@s.whatsapp.net\",\"agent_id\":\"example-agent\",\"flow\":\"SIDEWAYS\"}";
    const char *msg_id = "example-poison-1";
    char subject[128], dlq_subject[128];
    snprintf(subject, sizeof subject, "v1.messages.upsert.%s", company);
    snprintf(dlq_subject, sizeof dlq_subject, "v1.dlq.%s", company);

    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    bool ok = connect_js(url, &nc, &js) && publish(js, subject, payload, msg_id);

    /* The newest record on v1.dlq.<co> is ours once its Original-Nats-Msg-Id header names our event. Polling the
     * stream's last message is enough for an example; the service's DLQ worker is a durable pull consumer. */
    bool found = false;
    int64_t end = nats_Now() + wait_ms;
    while (ok && !found && nats_Now() < end) {
        natsMsg *rec = NULL;
        const char *original_id = NULL;
        if (js_GetLastMsg(&rec, js, "dlq_stream", dlq_subject, NULL, NULL) == NATS_OK &&
            natsMsgHeader_Get(rec, "Original-Nats-Msg-Id", &original_id) == NATS_OK &&
            strcmp(original_id, msg_id) == 0) {
            printf("DLQ record on %s:\n%s\n", dlq_subject, natsMsg_GetData(rec));
            found = true;
        }
        natsMsg_Destroy(rec);
        if (!found)
            nats_Sleep(100);
    }
    if (ok && !found)
        fprintf(stderr, "no DLQ record for %s on %s within %lld s: is the service running for tenant %s?\n", msg_id,
                dlq_subject, (long long)(wait_ms / 1000), company);

    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    nats_Close();
    return found ? 0 : 1;
}
