/* buf.c - growable byte buffer and chunked bump arena (the allocation primitives of the hot path). */
#include "buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text.h"

#define BUF_MIN_CAP 64

void buf_init(buf_t *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->oom = false;
}

void buf_free(buf_t *b)
{
    if (!b)
        return;
    free(b->data);
    buf_init(b);
}

void buf_reset(buf_t *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

/* Room for `extra` more bytes plus the terminating NUL. Grows geometrically so appends are amortised O(1). */
void *buf_array_grow(void *p, size_t *cap, size_t need, size_t elem, size_t first)
{
    if (need <= *cap && p)
        return p;
    size_t n = *cap ? *cap : (first ? first : 1);
    while (n < need) {
        if (n > SIZE_MAX / 2)
            return NULL;
        n *= 2;
    }
    if (elem && n > SIZE_MAX / elem)
        return NULL;
    void *q = realloc(p, n * elem);
    if (!q)
        return NULL;
    *cap = n;
    return q;
}

bool buf_reserve(buf_t *b, size_t extra)
{
    if (b->oom)
        return false;
    if (extra >= SIZE_MAX / 2 - b->len) {
        b->oom = true;
        return false;
    }
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : BUF_MIN_CAP;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->data = p;
    b->cap = cap;
    return true;
}

void buf_append(buf_t *b, const void *p, size_t n)
{
    if (!buf_reserve(b, n))
        return;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void buf_puts(buf_t *b, const char *s)
{
    buf_append(b, s, strlen(s));
}

void buf_putc(buf_t *b, char c)
{
    if (!buf_reserve(b, 1))
        return;
    b->data[b->len++] = c;
    b->data[b->len] = '\0';
}

void buf_printf(buf_t *b, const char *fmt, ...)
{
    va_list ap;
    size_t room = b->cap > b->len ? b->cap - b->len : 0;
    va_start(ap, fmt);
    int n = vsnprintf(room ? b->data + b->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = true;
        return;
    }
    if ((size_t)n >= room) { /* did not fit: grow to the exact size and print again */
        if (!buf_reserve(b, (size_t)n))
            return;
        va_start(ap, fmt);
        vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
}

void buf_put_i64(buf_t *b, int64_t v)
{
    char tmp[24];
    char *p = tmp + sizeof tmp;
    /* Work on the magnitude as unsigned so INT64_MIN does not overflow. */
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--p = '-';
    buf_append(b, p, (size_t)(tmp + sizeof tmp - p));
}

void buf_put_utf8(buf_t *b, const char *s, size_t n, size_t max)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t start = b->len;
    for (size_t i = 0; i < n;) {
        size_t len = u[i] ? text_utf8_len(s + i, n - i) : 0;
        const char *out = len ? s + i : "\xef\xbf\xbd"; /* U+FFFD for a byte that is not UTF-8 (or a NUL) */
        size_t out_len = len ? len : 3;
        if (b->len - start + out_len > max)
            break; /* cut before the character, never inside it */
        buf_append(b, out, out_len);
        i += len ? len : 1;
    }
    if (!b->data)
        buf_append(b, "", 0);
}

/* Every byte that is not valid UTF-8 becomes \ufffd, so the output is valid JSON whatever the input (error
 * messages and logs may quote bytes of a hostile payload). */
void buf_put_json_str(buf_t *b, const char *s, size_t n)
{
    if (!buf_reserve(b, n + 2))
        return;
    buf_putc(b, '"');
    size_t run = 0; /* start of the pending run of bytes copied verbatim */
    for (size_t i = 0, len; i < n; i += len) {
        if (!text_json_needs_escape(s + i, n - i, &len))
            continue;
        char esc[6];
        buf_append(b, s + run, i - run);
        buf_append(b, esc, text_json_escape((unsigned char)s[i], esc));
        run = i + len;
    }
    buf_append(b, s + run, n - run);
    buf_putc(b, '"');
}

/* ---- arena ---- */

#define ARENA_ALIGN 16
/* Spare regular chunks kept across resets; more than this is returned to malloc. */
#define ARENA_KEEP_SPARE 8

typedef struct chunk chunk_t;
struct chunk {
    chunk_t *next;
    size_t size; /* usable bytes after the header */
    size_t used;
    _Alignas(ARENA_ALIGN) unsigned char mem[];
};

struct arena {
    chunk_t *head;  /* current chunk; older and big chunks follow */
    chunk_t *first; /* the chunk arena_create made; never freed before arena_destroy */
    chunk_t *spare; /* regular-size chunks kept by arena_reset for reuse */
    size_t nspare;
    size_t chunk_size;
};

static chunk_t *chunk_new(size_t size)
{
    chunk_t *c = malloc(sizeof *c + size);
    if (!c)
        return NULL;
    c->next = NULL;
    c->size = size;
    c->used = 0;
    return c;
}

arena_t *arena_create(size_t chunk_size)
{
    arena_t *a = malloc(sizeof *a);
    if (!a)
        return NULL;
    a->chunk_size = chunk_size < 1024 ? 1024 : (chunk_size + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    a->spare = NULL;
    a->nspare = 0;
    a->head = a->first = chunk_new(a->chunk_size);
    if (!a->head) {
        free(a);
        return NULL;
    }
    return a;
}

static void chunks_free(chunk_t *c)
{
    while (c) {
        chunk_t *next = c->next;
        free(c);
        c = next;
    }
}

void arena_destroy(arena_t *a)
{
    if (!a)
        return;
    chunks_free(a->head);
    chunks_free(a->spare);
    free(a);
}

/* Keeps the first chunk and up to ARENA_KEEP_SPARE other regular chunks, so a workload that steadily needs a few
 * chunks per batch does no malloc at steady state; oversized chunks (one big allocation each) are freed. */
void arena_reset(arena_t *a)
{
    chunk_t *c = a->head;
    while (c) {
        chunk_t *next = c->next;
        if (c == a->first) {
            /* kept */
        } else if (c->size == a->chunk_size && a->nspare < ARENA_KEEP_SPARE) {
            c->next = a->spare;
            a->spare = c;
            a->nspare++;
        } else {
            free(c);
        }
        c = next;
    }
    a->first->next = NULL;
    a->first->used = 0;
    a->head = a->first;
}

void *arena_alloc(arena_t *a, size_t n)
{
    n = n ? (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1) : ARENA_ALIGN;
    chunk_t *c = a->head;
    if (c->size - c->used >= n) {
        void *p = c->mem + c->used;
        c->used += n;
        return p;
    }
    if (n > a->chunk_size / 4) {
        /* Big allocation: its own chunk, linked behind the current one so the current chunk keeps filling. */
        chunk_t *big = chunk_new(n);
        if (!big)
            return NULL;
        big->used = n;
        big->next = c->next;
        c->next = big;
        return big->mem;
    }
    chunk_t *fresh = a->spare;
    if (fresh) {
        a->spare = fresh->next;
        a->nspare--;
        fresh->used = 0;
    } else if (!(fresh = chunk_new(a->chunk_size))) {
        return NULL;
    }
    fresh->next = c;
    a->head = fresh;
    fresh->used = n;
    return fresh->mem;
}

char *arena_strndup(arena_t *a, const char *s, size_t n)
{
    char *p = arena_alloc(a, n + 1);
    if (!p)
        return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *arena_printf(arena_t *a, const char *fmt, ...)
{
    va_list ap;
    chunk_t *c = a->head;
    size_t room = c->size - c->used;
    /* Try printing straight into the free tail of the current chunk; only claim what was used. */
    va_start(ap, fmt);
    int n = vsnprintf((char *)c->mem + c->used, room, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    if ((size_t)n < room)
        return arena_alloc(a, (size_t)n + 1);
    char *p = arena_alloc(a, (size_t)n + 1);
    if (!p)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}
