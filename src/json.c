/* json.c - strict RFC 8259 validator/tokenizer: one pass, explicit stack (no recursion), byte spans, reused tokens. */
#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text.h"

/* What went wrong; the message is formatted once, at the end, so the hot path never touches snprintf. Byte offsets
 * in messages are 0-based offsets into the input. */
enum {
    E_OK = 0,
    E_EMPTY,
    E_EOF,
    E_UNEXPECTED,
    E_TRAILING,
    E_LEADING_ZERO,
    E_UTF8,
    E_CTRL,
    E_NUL,
    E_ESCAPE,
    E_NUL_ESCAPE,
    E_SURROGATE,
    E_DEPTH,
    E_TOOBIG,
    E_NOMEM,
};

/* Byte classes inside a string: anything but C_PLAIN leaves the fast loop. */
enum { C_PLAIN = 0, C_QUOTE, C_BSLASH, C_CTRL, C_HIGH };
#define X4(v) v, v, v, v
#define X16(v) X4(v), X4(v), X4(v), X4(v)
static const uint8_t str_class[256] = {
    X16(C_CTRL), X16(C_CTRL), 0,           0,           C_QUOTE,     0,           X4(0),       X4(0),
    X4(0),                                    /* 0x20-0x2f */
    X16(0),      X16(0),                      /* 0x30-0x4f */
    X4(0),       X4(0),       X4(0),          /* 0x50-0x5b */
    C_BSLASH,    0,           0,           0, /* 0x5c-0x5f */
    X16(0),      X16(0),                      /* 0x60-0x7f */
    X16(C_HIGH), X16(C_HIGH), X16(C_HIGH), X16(C_HIGH), X16(C_HIGH), X16(C_HIGH), X16(C_HIGH), X16(C_HIGH),
};

void json_doc_init(json_doc_t *d)
{
    d->toks = NULL;
    d->n = 0;
    d->cap = 0;
}

void json_doc_free(json_doc_t *d)
{
    if (!d)
        return;
    free(d->toks);
    json_doc_init(d);
}

static bool grow(json_doc_t *d)
{
    uint32_t cap = d->cap ? d->cap * 2 : 64;
    if (d->cap > UINT32_MAX / 2)
        return false;
    json_tok_t *t = realloc(d->toks, (size_t)cap * sizeof *t);
    if (!t)
        return false;
    d->toks = t;
    d->cap = cap;
    return true;
}

static inline size_t skip_ws(const unsigned char *s, size_t len, size_t p)
{
    while (p < len && (s[p] == ' ' || s[p] == '\n' || s[p] == '\r' || s[p] == '\t'))
        p++;
    return p;
}

static inline int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Code unit of a "\u" escape plus four hex digits at s[p] (p at the backslash): -1 when malformed, -2 when the input ends inside it. */
static long hex4(const unsigned char *s, size_t len, size_t p)
{
    if (len - p < 2)
        return -2;
    if (s[p] != '\\' || s[p + 1] != 'u')
        return -1;
    long v = 0;
    for (size_t i = 2; i < 6; i++) {
        if (p + i >= len)
            return -2;
        int h = hexval(s[p + i]);
        if (h < 0)
            return -1;
        v = v << 4 | h;
    }
    return v;
}

/* High bit set in each byte of the little-endian word that is '"', '\\', < 0x20 or >= 0x80 (the has-zero-byte and
 * has-byte-less-than tricks). Bytes above the first match may be flagged spuriously; the lowest flag is exact. */
static inline uint64_t special_mask(uint64_t v)
{
    const uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
    uint64_t q = v ^ (ones * '"'), b = v ^ (ones * '\\');
    return (((v - ones * 0x20) & ~v) | ((q - ones) & ~q) | ((b - ones) & ~b) | v) & high;
}

/* Scans the string whose opening quote is at *pp; on success *pp is just past the closing quote. On error *pp is
 * the offending byte. */
static int scan_string(const unsigned char *s, size_t len, size_t *pp, uint8_t *flags)
{
    size_t p = *pp + 1;
    for (;;) {
        /* Eight bytes at a time (the common case for ASCII text), jumping straight to the first byte that needs a
         * look: the lowest flagged byte of the mask is always a true match. */
        for (;;) {
            if (len - p < 8) {
                while (p < len && str_class[s[p]] == C_PLAIN)
                    p++;
                break;
            }
            uint64_t v;
            memcpy(&v, s + p, 8);
            uint64_t m = special_mask(v);
            if (m) {
                p += (size_t)__builtin_ctzll(m) >> 3;
                break;
            }
            p += 8;
        }
        if (p >= len) {
            *pp = p;
            return E_EOF;
        }
        switch (str_class[s[p]]) {
        case C_QUOTE: *pp = p + 1; return E_OK;
        case C_CTRL: *pp = p; return s[p] == 0 ? E_NUL : E_CTRL;
        case C_HIGH: {
            size_t n = text_utf8_len((const char *)s + p, len - p);
            if (!n) {
                *pp = p;
                return E_UTF8;
            }
            p += n;
            break;
        }
        default: /* C_BSLASH */
            *flags |= JSON_F_ESCAPED;
            if (len - p < 2) {
                *pp = len;
                return E_EOF;
            }
            switch (s[p + 1]) {
            case '"':
            case '\\':
            case '/':
            case 'b':
            case 'f':
            case 'n':
            case 'r':
            case 't': p += 2; break;
            case 'u': {
                long cu = hex4(s, len, p);
                *pp = p;
                if (cu < 0)
                    return cu == -2 ? E_EOF : E_ESCAPE;
                if (cu == 0)
                    return E_NUL_ESCAPE;
                if (cu >= 0xDC00 && cu <= 0xDFFF)
                    return E_SURROGATE;
                if (cu >= 0xD800 && cu <= 0xDBFF) {
                    long lo = hex4(s, len, p + 6);
                    if (lo < 0xDC00 || lo > 0xDFFF)
                        return E_SURROGATE;
                    p += 6;
                }
                p += 6;
                break;
            }
            default: *pp = p; return E_ESCAPE;
            }
        }
    }
}

static inline bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?  No "+1", ".5", "1.", leading zeros, NaN or Infinity. */
static int scan_number(const unsigned char *s, size_t len, size_t *pp, uint8_t *flags)
{
    size_t p = *pp;
    uint8_t f = JSON_F_INTEGER;
    if (s[p] == '-')
        p++;
    if (p >= len)
        goto eof;
    if (s[p] == '0') {
        p++;
        if (p < len && is_digit(s[p])) {
            *pp = p - 1;
            return E_LEADING_ZERO;
        }
    } else if (is_digit(s[p])) {
        while (p < len && is_digit(s[p]))
            p++;
    } else {
        goto unexpected;
    }
    if (p < len && s[p] == '.') {
        f = 0;
        if (++p >= len)
            goto eof;
        if (!is_digit(s[p]))
            goto unexpected;
        while (p < len && is_digit(s[p]))
            p++;
    }
    if (p < len && (s[p] == 'e' || s[p] == 'E')) {
        f = 0;
        if (++p < len && (s[p] == '+' || s[p] == '-'))
            p++;
        if (p >= len)
            goto eof;
        if (!is_digit(s[p]))
            goto unexpected;
        while (p < len && is_digit(s[p]))
            p++;
    }
    *pp = p;
    *flags = f;
    return E_OK;
eof:
    *pp = len;
    return E_EOF;
unexpected:
    *pp = p;
    return E_UNEXPECTED;
}

static int scan_literal(const unsigned char *s, size_t len, size_t *pp, const char *lit, size_t n)
{
    size_t p = *pp;
    for (size_t i = 0; i < n; i++, p++) {
        if (p >= len) {
            *pp = len;
            return E_EOF;
        }
        if (s[p] != (unsigned char)lit[i]) {
            *pp = p;
            return E_UNEXPECTED;
        }
    }
    *pp = p;
    return E_OK;
}

static void describe(int e, const unsigned char *s, size_t p, char *err, size_t errlen)
{
    char what[40];
    if (e == E_UNEXPECTED || e == E_TRAILING) {
        if (s[p] > 0x20 && s[p] < 0x7F && s[p] != '\'')
            snprintf(what, sizeof what, "character '%c'", s[p]);
        else if (s[p] == 0)
            e = E_NUL;
        else
            snprintf(what, sizeof what, "byte 0x%02x", s[p]);
    }
    switch (e) {
    case E_EMPTY: snprintf(err, errlen, "empty input"); break;
    case E_EOF: snprintf(err, errlen, "unexpected end of input at byte %zu", p); break;
    case E_UNEXPECTED: snprintf(err, errlen, "unexpected %s at byte %zu", what, p); break;
    case E_TRAILING: snprintf(err, errlen, "unexpected %s after the value at byte %zu", what, p); break;
    case E_LEADING_ZERO: snprintf(err, errlen, "leading zero in number at byte %zu", p); break;
    case E_UTF8: snprintf(err, errlen, "invalid UTF-8 at byte %zu", p); break;
    case E_CTRL: snprintf(err, errlen, "unescaped control character 0x%02x in string at byte %zu", s[p], p); break;
    case E_NUL: snprintf(err, errlen, "NUL byte at byte %zu", p); break;
    case E_ESCAPE: snprintf(err, errlen, "invalid escape at byte %zu", p); break;
    case E_NUL_ESCAPE: snprintf(err, errlen, "\\u0000 escape at byte %zu (NUL is not allowed)", p); break;
    case E_SURROGATE: snprintf(err, errlen, "unpaired surrogate escape at byte %zu", p); break;
    case E_DEPTH: snprintf(err, errlen, "nesting deeper than %d at byte %zu", JSON_MAX_DEPTH, p); break;
    case E_TOOBIG: snprintf(err, errlen, "input of %zu bytes is too large", p); break;
    default: snprintf(err, errlen, "out of memory"); break;
    }
}

/* Iterative state machine: `value` expects a value, `after` has just finished one, `key` expects a member name.
 * The stack holds the token index of each open container, so nesting costs no C stack and is bounded by 64. */
json_status_t json_parse(json_doc_t *d, const char *src, size_t len, char *err, size_t errlen)
{
    const unsigned char *s = (const unsigned char *)src;
    uint32_t stack[JSON_MAX_DEPTH];
    int depth = 0;
    size_t p = 0;
    int e = E_OK;
    json_tok_t *t;
    uint32_t idx;

    d->n = 0;
    if (len >= UINT32_MAX) {
        e = E_TOOBIG;
        p = len;
        goto fail;
    }
    p = skip_ws(s, len, 0);
    if (p >= len) {
        e = E_EMPTY;
        goto fail;
    }

value:
    p = skip_ws(s, len, p);
    if (p >= len) {
        e = E_EOF;
        goto fail;
    }
    if (d->n == d->cap && !grow(d)) {
        e = E_NOMEM;
        goto fail;
    }
    idx = d->n++;
    t = &d->toks[idx];
    t->start = (uint32_t)p;
    t->flags = 0;
    t->count = 0;
    t->skip = idx + 1;
    switch (s[p]) {
    case '{':
    case '[':
        if (depth == JSON_MAX_DEPTH) {
            e = E_DEPTH;
            goto fail;
        }
        t->type = s[p] == '{' ? JSON_OBJECT : JSON_ARRAY;
        stack[depth++] = idx;
        p = skip_ws(s, len, p + 1);
        if (p < len && s[p] == (t->type == JSON_OBJECT ? '}' : ']'))
            goto close;
        if (t->type == JSON_OBJECT)
            goto key;
        goto value;
    case '"':
        t->type = JSON_STRING;
        e = scan_string(s, len, &p, &t->flags);
        break;
    case 't':
        t->type = JSON_TRUE;
        e = scan_literal(s, len, &p, "true", 4);
        break;
    case 'f':
        t->type = JSON_FALSE;
        e = scan_literal(s, len, &p, "false", 5);
        break;
    case 'n':
        t->type = JSON_NULL;
        e = scan_literal(s, len, &p, "null", 4);
        break;
    default:
        if (s[p] != '-' && !is_digit(s[p])) {
            e = E_UNEXPECTED;
            goto fail;
        }
        t->type = JSON_NUMBER;
        e = scan_number(s, len, &p, &t->flags);
        break;
    }
    if (e)
        goto fail;
    t->len = (uint32_t)(p - t->start);

after:
    if (depth == 0) {
        p = skip_ws(s, len, p);
        if (p < len) {
            e = E_TRAILING;
            goto fail;
        }
        return JSON_OK;
    }
    p = skip_ws(s, len, p);
    if (p >= len) {
        e = E_EOF;
        goto fail;
    }
    /* A container's count is its commas plus one once it closes non-empty: no per-value bookkeeping. */
    t = &d->toks[stack[depth - 1]];
    if (s[p] == ',') {
        p++;
        t->count++;
        if (t->type == JSON_OBJECT)
            goto key;
        goto value;
    }
    if (s[p] != (t->type == JSON_OBJECT ? '}' : ']')) {
        e = E_UNEXPECTED;
        goto fail;
    }
    t->count++;

close: /* s[p] closes the container on top of the stack */
    t = &d->toks[stack[--depth]];
    p++;
    t->len = (uint32_t)(p - t->start);
    t->skip = d->n;
    goto after;

key:
    p = skip_ws(s, len, p);
    if (p >= len) {
        e = E_EOF;
        goto fail;
    }
    if (s[p] != '"') {
        e = E_UNEXPECTED;
        goto fail;
    }
    if (d->n == d->cap && !grow(d)) {
        e = E_NOMEM;
        goto fail;
    }
    idx = d->n++;
    t = &d->toks[idx];
    t->type = JSON_STRING;
    t->flags = 0;
    t->start = (uint32_t)p;
    t->count = 0;
    t->skip = idx + 1;
    e = scan_string(s, len, &p, &t->flags);
    if (e)
        goto fail;
    t->len = (uint32_t)(p - t->start);
    p = skip_ws(s, len, p);
    if (p >= len) {
        e = E_EOF;
        goto fail;
    }
    if (s[p] != ':') {
        e = E_UNEXPECTED;
        goto fail;
    }
    p++;
    goto value;

fail:
    d->n = 0;
    if (err && errlen)
        describe(e, s, p, err, errlen);
    return e == E_DEPTH || e == E_TOOBIG ? JSON_ELIMIT : e == E_NOMEM ? JSON_ENOMEM : JSON_ESYNTAX;
}

int json_obj_get(const json_doc_t *d, const char *src, uint32_t obj, const char *key)
{
    const json_tok_t *o = &d->toks[obj];
    if (o->type != JSON_OBJECT)
        return -1;
    size_t n = strlen(key);
    uint32_t i = obj + 1;
    for (uint32_t m = 0; m < o->count; m++) {
        if (json_str_eq(src, &d->toks[i], key, n))
            return (int)(i + 1);
        i = d->toks[i + 1].skip;
    }
    return -1;
}

/* Decodes one unit (a plain byte, an escape or a surrogate pair) of a validated string at *pp into out; returns the
 * number of bytes written (1-4). */
static size_t decode_unit(const unsigned char *s, size_t *pp, char out[4])
{
    size_t p = *pp;
    if (s[p] != '\\') {
        *pp = p + 1;
        out[0] = (char)s[p];
        return 1;
    }
    unsigned char c = s[p + 1];
    *pp = p + 2;
    switch (c) {
    case 'b': out[0] = '\b'; return 1;
    case 'f': out[0] = '\f'; return 1;
    case 'n': out[0] = '\n'; return 1;
    case 'r': out[0] = '\r'; return 1;
    case 't': out[0] = '\t'; return 1;
    case 'u': break;
    default: out[0] = (char)c; return 1; /* '"', '\\', '/' */
    }
    /* The parser validated the escape: 4 hex digits, and a high surrogate is followed by a low one. */
    uint32_t cp = (uint32_t)hex4(s, SIZE_MAX, p);
    *pp = p + 6;
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        uint32_t lo = (uint32_t)hex4(s, SIZE_MAX, p + 6);
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        *pp = p + 12;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

bool json_str_eq(const char *src, const json_tok_t *t, const char *s, size_t n)
{
    if (!(t->flags & JSON_F_ESCAPED))
        return t->len - 2 == n && memcmp(src + t->start + 1, s, n) == 0;
    const unsigned char *u = (const unsigned char *)src;
    size_t p = t->start + 1, end = t->start + t->len - 1, off = 0;
    char unit[4];
    while (p < end) {
        size_t k = decode_unit(u, &p, unit);
        if (off + k > n || memcmp(s + off, unit, k) != 0)
            return false;
        off += k;
    }
    return off == n;
}

size_t json_str_decoded_len(const char *src, const json_tok_t *t)
{
    if (!(t->flags & JSON_F_ESCAPED))
        return t->len - 2;
    const unsigned char *u = (const unsigned char *)src;
    size_t p = t->start + 1, end = t->start + t->len - 1, n = 0;
    char unit[4];
    while (p < end)
        n += decode_unit(u, &p, unit);
    return n;
}

size_t json_str_decode(const char *src, const json_tok_t *t, char *out)
{
    size_t n;
    if (!(t->flags & JSON_F_ESCAPED)) {
        n = t->len - 2;
        memcpy(out, src + t->start + 1, n);
    } else {
        const unsigned char *u = (const unsigned char *)src;
        size_t p = t->start + 1, end = t->start + t->len - 1;
        n = 0;
        while (p < end) {
            /* Copy runs of plain bytes at once; only escapes go through decode_unit. */
            const unsigned char *bs = memchr(u + p, '\\', end - p);
            size_t run = bs ? (size_t)(bs - u) - p : end - p;
            memcpy(out + n, u + p, run);
            n += run;
            p += run;
            if (p < end)
                n += decode_unit(u, &p, out + n);
        }
    }
    out[n] = '\0';
    return n;
}

/* Exact decimal arithmetic on the token text (never through double): the value is integral when, after dropping
 * the digits' trailing zeros, the remaining exponent is >= 0; then it must fit in int64. */
bool json_num_to_i64(const char *src, const json_tok_t *t, int64_t *out)
{
    if (t->type != JSON_NUMBER)
        return false;
    const char *p = src + t->start, *end = p + t->len;
    bool neg = *p == '-';
    if (neg)
        p++;
    const char *mant = p, *mend = p;
    while (mend < end && *mend != 'e' && *mend != 'E')
        mend++;
    /* Exponent, saturated: anything beyond +-1e9 behaves like infinity for our purposes. */
    long long exp = 0;
    if (mend < end) {
        const char *q = mend + 1;
        bool eneg = *q == '-';
        if (*q == '+' || *q == '-')
            q++;
        for (; q < end; q++)
            if (exp < 1000000000)
                exp = exp * 10 + (*q - '0');
        if (eneg)
            exp = -exp;
    }
    /* Digits of the mantissa with the point removed: value = D * 10^(exp - frac_digits). */
    long long nfrac = 0, ndig = 0, first = -1, last = -1;
    bool frac = false;
    for (const char *q = mant; q < mend; q++) {
        if (*q == '.') {
            frac = true;
            continue;
        }
        if (*q != '0') {
            if (first < 0)
                first = ndig;
            last = ndig;
        }
        ndig++;
        nfrac += frac;
    }
    if (first < 0) { /* all zeros: 0, -0, 0.000e5 */
        *out = 0;
        return true;
    }
    long long e2 = exp - nfrac + (ndig - 1 - last); /* exponent applied to the significant digits first..last */
    long long nsig = last - first + 1;
    if (e2 < 0 || nsig + e2 > 19)
        return false;
    uint64_t v = 0;
    long long i = 0;
    for (const char *q = mant; q < mend; q++) {
        if (*q == '.')
            continue;
        if (i >= first && i <= last)
            v = v * 10 + (uint64_t)(*q - '0'); /* at most 19 digits: cannot overflow uint64 */
        i++;
    }
    for (long long k = 0; k < e2; k++) {
        if (v > UINT64_MAX / 10)
            return false;
        v *= 10;
    }
    if (neg) {
        if (v > (uint64_t)INT64_MAX + 1)
            return false;
        *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
    } else {
        if (v > (uint64_t)INT64_MAX)
            return false;
        *out = (int64_t)v;
    }
    return true;
}
