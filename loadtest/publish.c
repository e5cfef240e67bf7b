/* publish.c - mes-publish: publishes "SUBJECT PAYLOAD" lines from stdin to JetStream, one PubAck per event.
 *
 *   mes-publish --url nats://127.0.0.1:4222 [--id-prefix demo] < events.txt
 *
 * Each line is a subject, one space, then the payload bytes up to the newline (sent as is, so a line may hold
 * malformed JSON on purpose). Empty lines and lines starting with '#' are skipped. Every event gets a Nats-Msg-Id
 * "<prefix>-<line number>", so running the same file twice within the stream's duplicate window publishes nothing
 * new. Exits 0 when every event was stored, 1 otherwise. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

int main(int argc, char **argv)
{
    const char *url = "nats://127.0.0.1:4222", *prefix = "mes-publish";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--url") == 0)
            url = argv[i + 1];
        else if (strcmp(argv[i], "--id-prefix") == 0)
            prefix = argv[i + 1];
        else {
            fprintf(stderr, "usage: %s [--url URL] [--id-prefix P] < lines\n", argv[0]);
            return 2;
        }
    }
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    natsStatus s = natsConnection_ConnectTo(&nc, url);
    if (s == NATS_OK)
        s = natsConnection_JetStream(&js, nc, NULL);
    if (s != NATS_OK) {
        fprintf(stderr, "mes-publish: cannot connect to %s: %s\n", url, natsStatus_GetText(s));
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long lineno = 0, ok = 0, bad = 0;
    while ((len = getline(&line, &cap, stdin)) >= 0) {
        lineno++;
        if (len > 0 && line[len - 1] == '\n')
            line[--len] = '\0';
        if (len == 0 || line[0] == '#')
            continue;
        char *sp = memchr(line, ' ', (size_t)len);
        if (!sp) {
            fprintf(stderr, "mes-publish: line %ld has no payload\n", lineno);
            bad++;
            continue;
        }
        *sp = '\0';
        char id[128];
        snprintf(id, sizeof id, "%s-%ld", prefix, lineno);
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MsgId = id;
        jsErrCode jerr = 0;
        jsPubAck *pa = NULL;
        s = js_Publish(&pa, js, line, sp + 1, (int)(len - (sp + 1 - line)), &po, &jerr);
        jsPubAck_Destroy(pa);
        if (s == NATS_OK) {
            ok++;
        } else {
            fprintf(stderr, "mes-publish: %s: %s\n", line, natsStatus_GetText(s));
            bad++;
        }
    }
    free(line);
    printf("published %ld events (%ld failed)\n", ok, bad);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    nats_Close();
    return bad ? 1 : 0;
}
