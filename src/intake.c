/* intake.c - the fetch loop of every JetStream reader (see intake.h). */
#include "intake.h"

#include "clock.h"
#include "log.h"

#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS 2000

int intake_subscribe(intake_t *in, mes_nats_t *n)
{
    if (mes_nats_subscribe(n, &in->dur, &in->watch, &in->sub) != 0)
        return -1;
    atomic_store(&in->subscribed, true);
    return 0;
}

void intake_close(intake_t *in)
{
    pull_destroy(in->sub);
    in->sub = NULL;
}

void intake_run(intake_t *in, mes_nats_t *n, const atomic_bool *stop, const intake_ops_t *ops, void *ctx)
{
    int64_t backoff = BACKOFF_FIRST_MS;
    in->watch.seen_reconnects = atomic_load(&n->reconnects);
    while (!atomic_load(stop)) {
        int room = ops->room(ctx);
        if (atomic_load(stop))
            break;
        if (room <= 0)
            continue;
        if (!in->sub) { /* the last re-subscription was cut short */
            mes_nats_resubscribe(n, &in->dur, &in->watch, &in->sub, &in->subscribed, stop);
            continue;
        }
        if (ops->on_fetch)
            ops->on_fetch(ctx);
        natsMsgList list = {0};
        int64_t t0 = clock_mono_ms();
        natsStatus s =
            ops->fetch ? ops->fetch(ctx, in->sub, room, &list) : pull_fetch(in->sub, room, false, ops->wait_ms, &list);
        bool got = s == NATS_OK && list.Count > 0;
        bool resub = mes_nats_fetch_watch(n, &in->watch, &in->dur, got ? &list : NULL);
        if (got) {
            backoff = BACKOFF_FIRST_MS;
            ops->deliver(ctx, &list, (double)(clock_mono_ms() - t0) / 1000.0);
        }
        natsMsgList_Destroy(&list);
        if (resub && !atomic_load(stop)) {
            mes_nats_resubscribe(n, &in->dur, &in->watch, &in->sub, &in->subscribed, stop);
            continue;
        }
        if (got)
            continue;
        if (s == NATS_OK || s == NATS_TIMEOUT || s == NATS_NOT_FOUND) {
            if (clock_mono_ms() - t0 < 5) /* a request that ended at once (a 409, a 404): do not spin */
                clock_sleep_ms(10);
            continue;
        }
        if (ops->on_error)
            ops->on_error(ctx);
        log_warn(ops->who, "fetch failed", LF_S("durable", in->dur.durable), LF_S("error", natsStatus_GetText(s)),
                 LF_I("retry_in_ms", backoff));
        clock_sleep_ms(backoff);
        backoff = clock_backoff_next(backoff, BACKOFF_MAX_MS);
    }
}
