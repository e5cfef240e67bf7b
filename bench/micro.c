/* micro.c - handler microbenchmark: route + parse/validate + statement parameters per event type, in ns and mallocs.
 *
 *   bench-micro [--loadgen PATH] [--ms-per-rep N] [--reps N] [--only BASE] [--json]
 *
 * Payloads come from `mes-loadgen --dry-run` (the realistic mix for realtime types, so updates spread over many keys
 * the way they do in production; history batches of 100 items), cycled in lane-sized batches: 256 realtime messages
 * or 64 history messages per batch, the service's default batchSize. Per batch it does what the consumer and the
 * store do before the database is involved: arena_reset; per message the last_metadata object and the router (subject
 * check, payload_parse, store items); then the store's planning (sort by key, same-key rounds) and the column arrays
 * (the parameters) of every statement, onboarding rows included. Two numbers per type: "parse" (route + payload_parse only) and "full" (all of
 * it). Allocations are counted by interposing malloc & co. (glibc __libc_* entry points), only inside the timed
 * repetitions, after a warm-up, so they are steady-state allocations per event.
 *
 * It calls the service's own code for all of it: consumer_build_meta, router_route/router_items and
 * store_plan_begin/store_plan_next (the planning and rows store_commit sends), so what is measured is what runs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "clock.h"
#include "consumer.h"
#include "event.h"
#include "payload.h"
#include "router.h"
#include "store.h"

/* ---- allocation counter (interposed over glibc's allocator) ------------------------------------------------------ */

extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t sz);
extern void *__libc_realloc(void *p, size_t n);
extern void __libc_free(void *p);
extern void *__libc_memalign(size_t align, size_t n);

static bool counting;
static unsigned long long n_allocs, n_frees;

void *malloc(size_t n)
{
    n_allocs += counting;
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t sz)
{
    n_allocs += counting;
    return __libc_calloc(n, sz);
}

void *realloc(void *p, size_t n)
{
    n_allocs += counting;
    return __libc_realloc(p, n);
}

void free(void *p)
{
    n_frees += counting && p;
    __libc_free(p);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    n_allocs += counting;
    void *p = __libc_memalign(align, n);
    if (!p)
        return 12; /* ENOMEM */
    *out = p;
    return 0;
}

void *aligned_alloc(size_t align, size_t n)
{
    n_allocs += counting;
    return __libc_memalign(align, n);
}

/* ---- payload pools ---------------------------------------------------------------------------------------------- */

#define COMPANY "bench"
#define POOL_MAX 1024
#define RT_BATCH 256
#define HIST_BATCH 64
#define HIST_ITEMS 100

typedef struct {
    event_type_t et;
    size_t n;
    char *subject[POOL_MAX];
    char *data[POOL_MAX];
    size_t len[POOL_MAX];
    char msg_id[POOL_MAX][32];
} pool_t;

static pool_t pools[ET_BASE_COUNT];

/* Runs the load generator in dry-run mode and files each "SUBJECT PAYLOAD" line under its event type. */
static int load_pools(const char *loadgen, const char *args)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' --dry-run --company_ids " COMPANY " --seed 42 --id-prefix mb %s 2>/dev/null",
             loadgen, args);
    FILE *f = popen(cmd, "r");
    if (!f)
        return -1;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
        if (line[n - 1] == '\n')
            line[--n] = '\0';
        char *sp = strchr(line, ' ');
        char *dot = sp ? memrchr(line, '.', (size_t)(sp - line)) : NULL;
        if (!dot)
            continue;
        event_type_t et = event_type_from_base(line, (size_t)(dot - line));
        if (et == ET_UNKNOWN || pools[et].n == POOL_MAX)
            continue;
        pool_t *p = &pools[et];
        p->et = et;
        p->subject[p->n] = strndup(line, (size_t)(sp - line));
        p->data[p->n] = strdup(sp + 1);
        p->len[p->n] = strlen(sp + 1);
        snprintf(p->msg_id[p->n], sizeof p->msg_id[p->n], "mb-%zu", p->n + 1);
        if (!p->subject[p->n] || !p->data[p->n])
            break;
        p->n++;
    }
    free(line);
    return pclose(f) == 0 ? 0 : -1;
}

/* ---- one message as the consumer prepares it ---------------------------------------------------------------------- */

typedef struct {
    event_t ev;
    const char *meta;
    uint32_t meta_len;
    char msg_id[160];
} slot_t;

/* last_metadata as the consumer builds it (consumer_build_meta into a reused buffer, copied into the arena). */
static void build_meta(arena_t *arena, buf_t *b, slot_t *s, const char *subject, uint64_t seq, const char *processed_at)
{
    buf_reset(b);
    consumer_build_meta(b, "wa_events_stream", seq, "wa_listener_acme_bench", seq, s->msg_id, subject, processed_at);
    s->meta = b->oom ? NULL : arena_strndup(arena, b->data, b->len);
    if (!s->meta)
        s->meta = "{}";
    s->meta_len = (uint32_t)strlen(s->meta);
}

/* Plans items[0..n) and builds every statement parameter exactly as store_commit would (store_plan_begin/next);
 * returns the bytes built (so nothing is dead code to the optimiser) and counts the statements the store would
 * execute (BEGIN/COMMIT excluded). */
static size_t store_params(store_item_t *items, size_t n, store_scratch_t *s, size_t *statements)
{
    size_t bytes = 0;
    store_stmt_t st;
    if (store_plan_begin(s, items, n) != 0)
        return 0;
    while (store_plan_next(s, &st) == 1) {
        for (int c = 0; c < st.nparams; c++)
            bytes += (size_t)st.lengths[c];
        (*statements)++;
    }
    return bytes;
}

/* ---- the benchmark ---------------------------------------------------------------------------------------------- */

typedef struct {
    payload_ctx_t ctx;
    store_scratch_t scratch;
    buf_t metabuf;
    slot_t *slots;
    store_item_t *items;
    size_t items_cap;
    size_t sink; /* bytes built: keeps the work observable */
    size_t statements, rows, invalid;
} bench_t;

/* One lane batch of `n` messages starting at pool index `start`. full: also metadata and statement parameters. */
static void run_batch(bench_t *b, const pool_t *p, size_t start, size_t n, bool full)
{
    char processed_at[40];
    clock_rfc3339_now(processed_at, sizeof processed_at);
    arena_reset(b->ctx.arena);
    size_t nitems = 0;
    for (size_t k = 0; k < n; k++) {
        size_t i = (start + k) % p->n;
        slot_t *s = &b->slots[k];
        memset(&s->ev, 0, sizeof s->ev);
        if (full) {
            snprintf(s->msg_id, sizeof s->msg_id, "%s", p->msg_id[i]);
            build_meta(b->ctx.arena, &b->metabuf, s, p->subject[i], start + k + 1, processed_at);
        }
        if (router_route(&b->ctx, p->subject[i], p->et, p->data[i], p->len[i], -1, &s->ev) != ERR_NONE) {
            b->invalid++;
            continue;
        }
        if (!full)
            continue;
        size_t want = router_item_count(&s->ev);
        store_item_t *it = buf_array_grow(b->items, &b->items_cap, nitems + want, sizeof *it, 256);
        if (!it)
            abort();
        b->items = it;
        nitems += router_items(&s->ev, s->meta, s->meta_len, &b->items[nitems], NULL, NULL);
    }
    if (full) {
        b->sink += store_params(b->items, nitems, &b->scratch, &b->statements);
        b->rows += nitems;
    }
}

typedef struct {
    double ns_per_msg;     /* median over the repetitions */
    double allocs_per_msg; /* over all timed repetitions */
    double frees_per_msg;
    double items_per_msg; /* store rows per message (history: valid items) */
    double statements_per_batch;
} result_t;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static result_t measure(bench_t *b, const pool_t *p, bool full, int reps, double ms_per_rep)
{
    size_t batch = event_type_lane(p->et) == LANE_HISTORICAL ? HIST_BATCH : RT_BATCH, pos = 0;
    /* Warm-up: twice through the pool, so token buffers, arena chunks and scratch space reached their steady size. */
    for (size_t done = 0; done < 2 * p->n + 2 * batch; done += batch, pos += batch)
        run_batch(b, p, pos, batch, full);
    double per[64];
    if (reps > 64)
        reps = 64;
    size_t msgs = 0, rows0 = b->rows, st0 = b->statements, batches = 0;
    n_allocs = n_frees = 0;
    for (int r = 0; r < reps; r++) {
        size_t m = 0;
        counting = true;
        double t0 = now_ns(), t;
        do {
            run_batch(b, p, pos, batch, full);
            pos += batch;
            m += batch;
            batches++;
        } while ((t = now_ns()) - t0 < ms_per_rep * 1e6);
        counting = false;
        per[r] = (t - t0) / (double)m;
        msgs += m;
    }
    qsort(per, (size_t)reps, sizeof per[0], cmp_double);
    return (result_t){per[reps / 2], (double)n_allocs / (double)msgs, (double)n_frees / (double)msgs,
                      (double)(b->rows - rows0) / (double)msgs, (double)(b->statements - st0) / (double)batches};
}

int main(int argc, char **argv)
{
    const char *loadgen = NULL, *only = NULL;
    double ms_per_rep = 150;
    int reps = 5;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--loadgen") && i + 1 < argc)
            loadgen = argv[++i];
        else if (!strcmp(argv[i], "--ms-per-rep") && i + 1 < argc)
            ms_per_rep = atof(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else if (!strcmp(argv[i], "--json"))
            json = true;
        else {
            fprintf(stderr, "usage: %s [--loadgen PATH] [--ms-per-rep N] [--reps N] [--only BASE] [--json]\n", argv[0]);
            return 2;
        }
    }
    char path[512];
    if (!loadgen) {
        const char *build = getenv("MES_BUILD_DIR");
        snprintf(path, sizeof path, "%s/loadtest/mes-loadgen", build ? build : ".");
        loadgen = path;
    }
    if (reps < 1 || ms_per_rep <= 0) {
        fprintf(stderr, "bench-micro: --reps and --ms-per-rep must be positive\n");
        return 2;
    }
    /* Realtime: the default mix without history, so updates target many keys as in production. */
    if (load_pools(loadgen, "--count 6000 --subjects v1.chats.upsert:8,v1.chats.update:10,v1.messages.upsert:40,"
                            "v1.messages.update:24,v1.contacts.upsert:6,v1.contacts.update:4,"
                            "v1.connection.update:2") != 0 ||
        load_pools(loadgen, "--count 64 --history-count 100 --subjects v1.history.chats") != 0 ||
        load_pools(loadgen, "--count 64 --history-count 100 --subjects v1.history.messages") != 0 ||
        load_pools(loadgen, "--count 64 --history-count 100 --subjects v1.history.contacts") != 0) {
        fprintf(stderr, "bench-micro: %s --dry-run failed (pass --loadgen PATH or set MES_BUILD_DIR)\n", loadgen);
        return 1;
    }
    bench_t b;
    memset(&b, 0, sizeof b);
    store_scratch_init(&b.scratch);
    buf_init(&b.metabuf);
    b.slots = calloc(RT_BATCH, sizeof *b.slots);
    if (!b.slots || payload_ctx_init(&b.ctx, COMPANY) != 0) {
        fprintf(stderr, "bench-micro: out of memory\n");
        return 1;
    }
    if (!json) {
        printf("handler microbenchmark: batches of %d realtime / %d history messages (%d items each); median of %d x "
               "%.0f ms\n",
               RT_BATCH, HIST_BATCH, HIST_ITEMS, reps, ms_per_rep);
        printf("%-22s %6s %6s %12s %9s %11s %10s %9s %8s\n", "event type", "bytes", "rows", "parse ns/ev", "allocs",
               "full ns/ev", "allocs/ev", "frees/ev", "stmts/b");
    }
    for (int et = 0; et < ET_BASE_COUNT; et++) {
        const pool_t *p = &pools[et];
        if (only && strcmp(only, event_type_base((event_type_t)et)) != 0)
            continue; /* e.g. to profile one type: perf record bench-micro --only v1.messages.upsert */
        if (p->n == 0) {
            fprintf(stderr, "bench-micro: no payloads for %s\n", event_type_base((event_type_t)et));
            return 1;
        }
        size_t bytes = 0;
        for (size_t i = 0; i < p->n; i++)
            bytes += p->len[i];
        size_t invalid0 = b.invalid;
        result_t parse = measure(&b, p, false, reps, ms_per_rep);
        result_t full = measure(&b, p, true, reps, ms_per_rep);
        bool history = event_type_lane(p->et) == LANE_HISTORICAL;
        if (b.invalid != invalid0)
            fprintf(stderr, "bench-micro: %s: %zu payloads failed validation\n", event_type_base(p->et),
                    b.invalid - invalid0);
        if (json)
            printf(
                "{\"type\":\"%s\",\"history\":%s,\"bytes\":%.0f,\"rows_per_event\":%.2f,\"parse_ns\":%.1f,"
                "\"parse_allocs\":%.3f,\"full_ns\":%.1f,\"allocs\":%.3f,\"frees\":%.3f,\"statements_per_batch\":%.2f,"
                "\"full_ns_per_item\":%.1f}\n",
                event_type_base(p->et), history ? "true" : "false", (double)bytes / (double)p->n, full.items_per_msg,
                parse.ns_per_msg, parse.allocs_per_msg, full.ns_per_msg, full.allocs_per_msg, full.frees_per_msg,
                full.statements_per_batch, full.ns_per_msg / (full.items_per_msg > 0 ? full.items_per_msg : 1));
        else
            printf("%-22s %6.0f %6.1f %12.0f %9.2f %11.0f %10.2f %9.2f %8.1f%s\n", event_type_base(p->et),
                   (double)bytes / (double)p->n, full.items_per_msg, parse.ns_per_msg, parse.allocs_per_msg,
                   full.ns_per_msg, full.allocs_per_msg, full.frees_per_msg, full.statements_per_batch,
                   history ? "  (per batch of 100 items)" : "");
        if (history && !json)
            printf("%-22s %6s %6s %12.0f %9.3f %11.0f %10.3f %9.3f   per item\n", "", "", "",
                   parse.ns_per_msg / full.items_per_msg, parse.allocs_per_msg / full.items_per_msg,
                   full.ns_per_msg / full.items_per_msg, full.allocs_per_msg / full.items_per_msg,
                   full.frees_per_msg / full.items_per_msg);
    }
    if (!json)
        printf("(parse = subject check + payload_parse; full = + last_metadata + store planning and the column "
               "arrays of every statement)\n");
    fprintf(stderr, "%s", b.sink ? "" : "bench-micro: nothing built?\n");
    payload_ctx_free(&b.ctx);
    store_scratch_free(&b.scratch);
    buf_free(&b.metabuf);
    free(b.items);
    free(b.slots);
    return 0;
}
