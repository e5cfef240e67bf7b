/* infostall.c - what one consumer info request costs a pull consumer with a backlog on nats-server 2.9.10.
 *
 *   bench-info-stall [--messages 14000] [--repeat 3]
 *
 * Starts its own nats-server. Each round makes a fresh file stream with two subjects, publishes --messages messages
 * of 500 bytes (two in five on the consumer's subject; all of them fit the stream's first 8 MB block), creates a
 * durable pull consumer on that subject, fetches and acks its first 200 messages, and then times fetching (batches
 * of 100) and acking the rest: once as it is, once right after one consumer info request. Rounds alternate the two
 * and the medians are compared in the same run.
 *
 * Why (README, "The consumer-info stall"): the info request makes the server count the consumer's pending messages
 * again. Standing in the stream's newest block with more of its messages ahead than behind, the count comes back
 * without a last sequence (filestore.go, FilteredState), so the server counts again for every message it delivers,
 * each time from the start of the block. mes_nats_fetch_watch therefore does not ask while a durable delivers a
 * backlog. */
#include <nats/nats.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "harness.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Seconds to fetch and ack the rest of the backlog, or -1 on failure. */
static double round_once(jsCtx *js, int messages, bool info)
{
    jsErrCode je = 0;
    (void)js_DeleteStream(js, "INFOSTALL", NULL, &je);
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    const char *subjects[] = {"infostall.a", "infostall.b"};
    sc.Name = "INFOSTALL";
    sc.Subjects = subjects;
    sc.SubjectsLen = 2;
    sc.Storage = js_FileStorage;
    if (js_AddStream(NULL, js, &sc, NULL, &je) != NATS_OK)
        return -1;
    char body[500];
    memset(body, 'x', sizeof body);
    for (int i = 0; i < messages; i++)
        if (js_PublishAsync(js, i % 5 < 2 ? "infostall.a" : "infostall.b", body, sizeof body, NULL) != NATS_OK)
            return -1;
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = 30000;
    if (js_PublishAsyncComplete(js, &po) != NATS_OK)
        return -1;
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = "C";
    cc.FilterSubject = "infostall.a";
    cc.AckPolicy = js_AckExplicit;
    cc.MaxAckPending = 1000;
    natsSubscription *sub = NULL;
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = "INFOSTALL";
    so.Consumer = "C";
    if (js_AddConsumer(NULL, js, "INFOSTALL", &cc, NULL, &je) != NATS_OK ||
        js_PullSubscribe(&sub, js, "infostall.a", "C", NULL, &so, &je) != NATS_OK)
        return -1;
    int want = messages / 5 * 2 + (messages % 5 < 2 ? messages % 5 : 2), got = 0;
    double took = -1;
    natsMsgList l = {0};
    if (natsSubscription_Fetch(&l, sub, 200, 5000, &je) != NATS_OK)
        goto done;
    for (int i = 0; i < l.Count; i++)
        natsMsg_Ack(l.Msgs[i], NULL);
    got += l.Count;
    natsMsgList_Destroy(&l);
    if (info) {
        jsConsumerInfo *ci = NULL;
        if (js_GetConsumerInfo(&ci, js, "INFOSTALL", "C", NULL, &je) != NATS_OK)
            goto done;
        jsConsumerInfo_Destroy(ci);
    }
    int64_t t0 = clock_mono_ns();
    while (got < want && natsSubscription_Fetch(&l, sub, 100, 5000, &je) == NATS_OK) {
        for (int i = 0; i < l.Count; i++)
            natsMsg_Ack(l.Msgs[i], NULL);
        got += l.Count;
        natsMsgList_Destroy(&l);
    }
    if (got == want)
        took = (double)(clock_mono_ns() - t0) / 1e9;
done:
    natsSubscription_Destroy(sub);
    return took;
}

int main(int argc, char **argv)
{
    int messages = 14000, repeat = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--messages") && i + 1 < argc)
            messages = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--repeat") && i + 1 < argc)
            repeat = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--messages N] [--repeat R]\n", argv[0]);
            return 2;
        }
    }
    if (messages < 1000 || repeat < 1 || repeat > 20) {
        fprintf(stderr, "%s: --messages >= 1000, 1 <= --repeat <= 20\n", argv[0]);
        return 2;
    }
    h_nats_t n = {0};
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = 65536;
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    if (!h_nats_start(&n) || natsConnection_ConnectTo(&nc, n.url) != NATS_OK ||
        natsConnection_JetStream(&js, nc, &jo) != NATS_OK) {
        fprintf(stderr, "%s: no nats-server\n", argv[0]);
        return 1;
    }
    double plain[20], asked[20];
    for (int r = 0; r < repeat; r++) {
        plain[r] = round_once(js, messages, false);
        asked[r] = round_once(js, messages, true);
        if (plain[r] < 0 || asked[r] < 0) {
            fprintf(stderr, "%s: round %d failed\n", argv[0], r + 1);
            return 1;
        }
        printf("round %d: rest of the backlog in %.3f s, after one consumer info request %.3f s\n", r + 1, plain[r],
               asked[r]);
    }
    qsort(plain, (size_t)repeat, sizeof plain[0], cmp_double);
    qsort(asked, (size_t)repeat, sizeof asked[0], cmp_double);
    double a = asked[repeat / 2], p = plain[repeat / 2];
    printf("medians of %d: %.3f s without, %.3f s after one consumer info request = %.1fx (%d messages, %d on the"
           " consumer's subject)\n",
           repeat, p, a, a / p, messages, messages / 5 * 2 + (messages % 5 < 2 ? messages % 5 : 2));
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return 0;
}
