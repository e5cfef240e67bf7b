/* router.c - subject -> event type -> tenant check -> validated event -> store items, for the lanes and the DLQ. */
#include "router.h"

#include <string.h>

route_subject_t router_subject(const char *subject, const char *company_id)
{
    route_subject_t r = {ET_UNKNOWN, false};
    const char *dot = strrchr(subject, '.');
    if (!dot)
        return r;
    r.et = event_type_from_base(subject, (size_t)(dot - subject));
    r.own_tenant = strcmp(dot + 1, company_id) == 0;
    return r;
}

/* "{"<key>":[<item>]}" in the arena: a history item back in a one-item batch of its type. NULL on out of memory. */
static const char *rewrap(payload_ctx_t *ctx, event_type_t et, const char *item, size_t len, size_t *out_len)
{
    static const char *const keys[] = {"chats", "messages", "contacts"};
    const char *key = keys[et - ET_HISTORY_FIRST];
    size_t klen = strlen(key);
    char *p = arena_alloc(ctx->arena, len + klen + 8);
    if (!p)
        return NULL;
    size_t n = 0;
    memcpy(p + n, "{\"", 2);
    n += 2;
    memcpy(p + n, key, klen);
    n += klen;
    memcpy(p + n, "\":[", 3);
    n += 3;
    memcpy(p + n, item, len);
    n += len;
    memcpy(p + n, "]}", 3); /* with the NUL */
    *out_len = n + 2;
    return p;
}

static error_class_t refuse(event_t *ev, error_class_t cls, const char *msg)
{
    ev->err = cls;
    ev->errmsg = msg ? msg : "invalid event";
    return cls;
}

error_class_t router_route(payload_ctx_t *ctx, const char *subject, event_type_t expected, const char *data, size_t len,
                           int64_t item_index, event_t *ev)
{
    memset(ev, 0, sizeof *ev);
    route_subject_t rs = router_subject(subject, ctx->company_id);
    if (rs.et == ET_UNKNOWN || !rs.own_tenant || (expected != ET_UNKNOWN && rs.et != expected)) {
        if (expected != ET_UNKNOWN)
            return refuse(ev, ERR_VALIDATION,
                          arena_printf(ctx->arena, "unknown subject '%.200s' (expected %s.%s)", subject,
                                       event_type_base(expected), ctx->company_id));
        return refuse(
            ev, ERR_VALIDATION,
            arena_printf(ctx->arena, "unknown subject '%.200s' (expected <base>.%s)", subject, ctx->company_id));
    }
    bool item = event_type_lane(rs.et) == LANE_HISTORICAL && item_index >= 0;
    if (item) {
        data = rewrap(ctx, rs.et, data ? data : "", len, &len);
        if (!data)
            return refuse(ev, ERR_UNKNOWN, "out of memory");
    }
    payload_parse(ctx, rs.et, data ? data : "", len, ev);
    /* The re-wrapped item is item 0 of its one-item batch: report it under its index in the original batch. */
    if (item && ev->err == ERR_NONE && ev->n_items == 1 && ev->items[0].errmsg &&
        strncmp(ev->items[0].errmsg, "item 0: ", 8) == 0) {
        const char *fixed = arena_printf(ctx->arena, "item %lld: %s", (long long)item_index, ev->items[0].errmsg + 8);
        if (fixed)
            ev->items[0].errmsg = fixed;
    }
    return ev->err;
}

size_t router_item_count(const event_t *ev)
{
    return event_type_lane(ev->type) == LANE_HISTORICAL ? ev->n_items : 1;
}

size_t router_items(const event_t *ev, const char *meta, uint32_t meta_len, store_item_t *out, size_t *bad,
                    const char **bad_err)
{
    size_t k = 0, nbad = 0;
    if (event_type_lane(ev->type) == LANE_HISTORICAL) {
        for (uint32_t i = 0; i < ev->n_items; i++) {
            if (ev->items[i].err != ERR_NONE) {
                nbad++;
                if (bad_err)
                    *bad_err = ev->items[i].errmsg;
                continue;
            }
            out[k++] = (store_item_t){.ev = &ev->items[i], .meta = meta, .meta_len = meta_len};
        }
    } else {
        /* Onboarding applies to realtime messages; a DLQ replay of one is still that message. */
        out[k++] =
            (store_item_t){.ev = ev, .meta = meta, .meta_len = meta_len, .onboard = ev->type == ET_MESSAGES_UPSERT};
    }
    if (bad)
        *bad = nbad;
    return k;
}
