/* buf.h - growable byte buffer and a chunked bump arena; the allocation primitives of the hot path. */
#ifndef MES_BUF_H
#define MES_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Growable buffer; always NUL-terminated after any append (when data != NULL). Caller owns; buf_free releases. */
typedef struct {
    char *data;
    size_t len;
    size_t cap;
    bool oom; /* sticky: an append failed to allocate */
} buf_t;

void buf_init(buf_t *b);
void buf_free(buf_t *b);
void buf_reset(buf_t *b); /* len = 0, keeps capacity */
bool buf_reserve(buf_t *b, size_t extra);
void buf_append(buf_t *b, const void *p, size_t n);
void buf_puts(buf_t *b, const char *s);
void buf_putc(buf_t *b, char c);
void buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_put_i64(buf_t *b, int64_t v);
/* Appends at most max bytes of s as valid UTF-8 text without NUL bytes: each byte that is not part of a valid
 * sequence (and each NUL) becomes U+FFFD, and a cut falls between characters, never inside one. */
void buf_put_utf8(buf_t *b, const char *s, size_t n, size_t max);
/* Appends s as a JSON string literal (quotes included), escaping per RFC 8259. */
void buf_put_json_str(buf_t *b, const char *s, size_t n);

/* The one way a growable array grows: returns p reallocated to hold at least need elements of elem bytes (its
 * capacity doubled from *cap, or from first when empty) and updates *cap; returns p itself when it is big enough,
 * and NULL on out of memory or overflow (p and *cap are then unchanged and still valid). */
void *buf_array_grow(void *p, size_t *cap, size_t need, size_t elem, size_t first) __attribute__((warn_unused_result));

/* Bump arena made of chunks; arena_reset keeps the first chunk so steady state does no malloc. */
typedef struct arena arena_t;
arena_t *arena_create(size_t chunk_size);
void arena_destroy(arena_t *a); /* NULL-safe */
void arena_reset(arena_t *a);
void *arena_alloc(arena_t *a, size_t n); /* 16-byte aligned; NULL on OOM */
char *arena_strndup(arena_t *a, const char *s, size_t n);
char *arena_printf(arena_t *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
