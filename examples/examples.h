/* examples.h - what every example shares (as nats.c's examples/examples.h): options, the JetStream connection and
 * one publish that waits for its PubAck. Everything is static: each example is one .c file plus this header. */
#ifndef MES_EXAMPLES_H
#define MES_EXAMPLES_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

/* True when the arguments are "--name VALUE" pairs and every name is in known (NULL-terminated). */
static bool args_ok(int argc, char **argv, const char *const *known)
{
    if (argc % 2 == 0)
        return false;
    for (int i = 1; i < argc; i += 2) {
        int k = 0;
        while (known[k] && strcmp(known[k], argv[i]) != 0)
            k++;
        if (!known[k])
            return false;
    }
    return true;
}

/* The value of --name, else of the environment variable env (the service reads the same ones), else def. */
static const char *opt(int argc, char **argv, const char *name, const char *env, const char *def)
{
    for (int i = 1; i + 1 < argc; i += 2)
        if (strcmp(argv[i], name) == 0)
            return argv[i + 1];
    const char *v = env ? getenv(env) : NULL;
    return v && *v ? v : def;
}

/* Connects to url and opens a JetStream context. The streams are the service's: it creates them at startup. */
static bool connect_js(const char *url, natsConnection **nc, jsCtx **js)
{
    natsStatus s = natsConnection_ConnectTo(nc, url);
    if (s == NATS_OK)
        s = natsConnection_JetStream(js, *nc, NULL);
    if (s != NATS_OK)
        fprintf(stderr, "cannot connect to %s: %s\n", url, natsStatus_GetText(s));
    return s == NATS_OK;
}

/* Publishes data to subject and waits for the PubAck, which says the stream stored it. The Nats-Msg-Id makes a
 * second publish of the same id within the stream's duplicate window (2 min) a no-op: publishers retry safely. */
static bool publish(jsCtx *js, const char *subject, const char *data, const char *msg_id)
{
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = msg_id;
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_Publish(&pa, js, subject, data, (int)strlen(data), &po, &jerr);
    if (s == NATS_OK)
        printf("published %s (Nats-Msg-Id %s): stream %s, sequence %llu%s\n", subject, msg_id, pa->Stream,
               (unsigned long long)pa->Sequence, pa->Duplicate ? ", a duplicate the stream already held" : "");
    else
        fprintf(stderr, "cannot publish to %s: %s (JetStream error %d)\n", subject, natsStatus_GetText(s), (int)jerr);
    jsPubAck_Destroy(pa);
    return s == NATS_OK;
}

#endif
