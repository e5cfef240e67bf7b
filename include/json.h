/* json.h - strict, allocation-light JSON validator/tokenizer that keeps byte spans of the source (RFC 8259). */
#ifndef MES_JSON_H
#define MES_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { JSON_NULL = 0, JSON_FALSE, JSON_TRUE, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type_t;

#define JSON_F_ESCAPED 0x01 /* string token contains backslash escapes */
#define JSON_F_INTEGER 0x02 /* number token has neither fraction nor exponent */

/* Tokens are stored in document order. An object's children are key, value, key, value...; `skip` is the index of
 * the first token after this token's whole subtree, so siblings are found without recursion. */
typedef struct {
    uint8_t type;
    uint8_t flags;
    uint32_t start; /* byte offset of the token's first byte ('"', '{', '[', digit, ...) */
    uint32_t len;   /* byte length of the token's full text ("..." includes the quotes; {...} includes braces) */
    uint32_t count; /* object: member count; array: element count */
    uint32_t skip;
} json_tok_t;

#define JSON_MAX_DEPTH 64

typedef struct {
    json_tok_t *toks;
    uint32_t n;
    uint32_t cap;
} json_doc_t;

typedef enum { JSON_OK = 0, JSON_ESYNTAX = -1, JSON_ELIMIT = -2, JSON_ENOMEM = -3 } json_status_t;

void json_doc_init(json_doc_t *d);
void json_doc_free(json_doc_t *d);

/* Parses exactly one JSON value spanning src[0..len) (white space allowed around). Rejects: grammar errors, invalid
 * UTF-8 (overlong, surrogates, > U+10FFFF, truncated), raw control characters in strings, NUL bytes anywhere,
 * "\u0000" escapes (PostgreSQL text cannot hold them), unpaired surrogate escapes, depth > JSON_MAX_DEPTH (ELIMIT).
 * Reuses d->toks (amortised zero allocations). On error writes "what at byte N" into err. */
json_status_t json_parse(json_doc_t *d, const char *src, size_t len, char *err, size_t errlen);

/* Value token index of member `key` (exact, case-sensitive) in object token `obj`, or -1. Linear scan. */
int json_obj_get(const json_doc_t *d, const char *src, uint32_t obj, const char *key);
/* True when the string token equals s exactly after decoding. */
bool json_str_eq(const char *src, const json_tok_t *t, const char *s, size_t n);
/* Decoded length of a string token's value. */
size_t json_str_decoded_len(const char *src, const json_tok_t *t);
/* Decodes a string token's value into out (needs json_str_decoded_len bytes + 1 for NUL). Returns decoded length. */
size_t json_str_decode(const char *src, const json_tok_t *t, char *out);
/* Integral number in [INT64_MIN, INT64_MAX]: accepts "12", "-3", "1.0", "1e3" when the value is exactly integral
 * and within range. Returns false otherwise. */
bool json_num_to_i64(const char *src, const json_tok_t *t, int64_t *out);

#endif
