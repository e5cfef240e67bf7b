/* text.h - text and encoding primitives: UTF-8 validity, JSON string escapes, base64, blank strings. The one home of
 * each: buf.c, log.c, json.c, metrics.c, http.c, dlq.c, payload.c and the CLI call these. */
#ifndef MES_TEXT_H
#define MES_TEXT_H

#include <stdbool.h>
#include <stddef.h>

#include "buf.h"

/* Length (1..4) of the well-formed UTF-8 sequence at s[0..n) (n >= 1), 0 when the bytes there start none (Unicode
 * Table 3-7: no overlongs, no surrogates, nothing above U+10FFFF, no truncation). A NUL byte is a 1-byte sequence:
 * callers that keep C strings refuse it themselves. Inline: the JSON parser calls it for every non-ASCII byte. */
static inline size_t text_utf8_len(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    unsigned char c = u[0], lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    size_t len;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        lo = c == 0xE0 ? 0xA0 : 0x80; /* no overlongs */
        hi = c == 0xED ? 0x9F : 0xBF; /* no UTF-16 surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        lo = c == 0xF0 ? 0x90 : 0x80; /* no overlongs */
        hi = c == 0xF4 ? 0x8F : 0xBF; /* nothing above U+10FFFF */
    } else {
        return 0;
    }
    if (n < len || u[1] < lo || u[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((u[i] & 0xC0) != 0x80)
            return 0;
    return len;
}

/* True when s[0..n) is valid UTF-8 without NUL bytes (text PostgreSQL accepts). */
bool text_utf8_valid(const char *s, size_t n);

/* The JSON escape of the one byte c that cannot stand verbatim in a JSON string ('"', '\\', a control character,
 * or a byte that is not part of valid UTF-8, which becomes \ufffd) into esc; returns its length (2 or 6). */
size_t text_json_escape(unsigned char c, char esc[6]);
/* True when the byte at s[0..n) needs text_json_escape: everything else is copied verbatim, a valid multi-byte
 * sequence whole (*len says how many bytes). */
static inline bool text_json_needs_escape(const char *s, size_t n, size_t *len)
{
    unsigned char c = (unsigned char)s[0];
    *len = 1;
    if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80)
        return false;
    if (c < 0x80)
        return true;
    *len = text_utf8_len(s, n);
    if (*len)
        return false;
    *len = 1;
    return true;
}

/* Appends standard padded base64 (RFC 4648) of in[0..n). */
void text_base64_append(buf_t *b, const unsigned char *in, size_t n);
/* Appends the bytes of strict padded standard base64 s[0..n); false when it is not that. */
bool text_base64_decode_append(buf_t *out, const char *s, size_t n) __attribute__((warn_unused_result));

/* True when s[0..n) holds only white space (or nothing). */
bool text_blank(const char *s, size_t n);

#endif
