/* fuzz_payload.c - libFuzzer harness: byte 0 picks one of the ten event types (and, for a history type, whether the
 * payload is a lone item as a DLQ record keeps it), the rest is the payload for tenant "acme". It goes through the
 * router as a lane or the DLQ worker would send it: subject check, payload_parse, re-wrapping, store items. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "payload.h"
#include "router.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One context for the whole run, as a lane has: reuse across inputs is part of what is being tested. */
static payload_ctx_t ctx;
static json_doc_t doc;

/* Touches every byte of a span so ASan catches a span that points outside the input or the arena. */
static void touch(str_t s)
{
    volatile unsigned char sink = 0;
    for (uint32_t i = 0; s.p && i < s.len; i++)
        sink ^= (unsigned char)s.p[i];
    (void)sink;
}

static void check_event(const event_t *ev)
{
    if (ev->err != ERR_NONE && (!ev->errmsg || strlen(ev->errmsg) == 0))
        abort(); /* every rejection must say why */
    if (ev->err == ERR_NONE && ev->errmsg)
        abort();
    touch(ev->raw);
    touch(payload_agent_id(ev));
    touch(payload_jid(ev));
    if (ev->type == ET_MESSAGES_UPSERT && ev->err == ERR_NONE) {
        touch(ev->u.msg.key);
        touch(ev->u.msg.message_text);
        touch(ev->u.msg.flow);
    }
    if ((ev->type == ET_CONTACTS_UPSERT || ev->type == ET_CONTACTS_UPDATE) && ev->err == ERR_NONE) {
        for (uint32_t i = 0; i < ev->u.contact.phone_number.len; i++)
            if (ev->u.contact.phone_number.p[i] < '0' || ev->u.contact.phone_number.p[i] > '9')
                abort(); /* stored identity phones are digits only */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    if (!ctx.arena && payload_ctx_init(&ctx, "acme") != 0)
        abort();
    event_type_t et = (event_type_t)(data[0] % ET_BASE_COUNT);
    int64_t item_index = (data[0] / ET_BASE_COUNT) % 2 ? (int64_t)(data[0] % 7) : -1; /* a replayed history item */
    /* A heap copy of exactly the payload bytes, so reading one past the end is caught. */
    size_t n = size - 1;
    char *p = malloc(n ? n : 1);
    if (!p)
        return 0;
    memcpy(p, data + 1, n);

    arena_reset(ctx.arena);
    event_t ev;
    char subject[64];
    snprintf(subject, sizeof subject, "%s.acme", event_type_base(et));
    router_route(&ctx, subject, et, p, n, item_index, &ev);
    check_event(&ev);
    for (uint32_t i = 0; i < ev.n_items; i++)
        check_event(&ev.items[i]);
    if (ev.err == ERR_NONE) {
        size_t cap = router_item_count(&ev), bad = 0;
        store_item_t *items = malloc((cap ? cap : 1) * sizeof *items);
        if (!items)
            abort();
        size_t k = router_items(&ev, "{}", 2, items, &bad, NULL);
        if (k + bad != cap)
            abort(); /* every item is either written or reported */
        for (size_t i = 0; i < k; i++)
            if (items[i].ev->err != ERR_NONE)
                abort();
        free(items);
    }

    char err[128];
    if (json_parse(&doc, p, n, err, sizeof err) == JSON_OK) {
        for (uint32_t i = 0; i < doc.n; i++) {
            const json_tok_t *t = &doc.toks[i];
            if ((size_t)t->start + t->len > n || t->skip <= i || t->skip > doc.n)
                abort();
            if (t->type == JSON_STRING) {
                size_t dl = json_str_decoded_len(p, t);
                char *out = malloc(dl + 1);
                if (out && json_str_decode(p, t, out) != dl)
                    abort();
                free(out);
            } else if (t->type == JSON_NUMBER) {
                int64_t v;
                (void)json_num_to_i64(p, t, &v);
            }
        }
    }
    free(p);
    return 0;
}
