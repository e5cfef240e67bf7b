/* test_json.c - the strict JSON tokenizer (grammar, UTF-8, escapes, depth, spans, integers) and the buf/arena primitives. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "json.h"
#include "testlib.h"

static json_doc_t doc;
static char err[160];

static json_status_t parse_n(const char *s, size_t n)
{
    err[0] = '\0';
    return json_parse(&doc, s, n, err, sizeof err);
}

static json_status_t parse(const char *s)
{
    return parse_n(s, strlen(s));
}

/* Fails the case with the input and the parser's message when the status is not the expected one. */
#define EXPECT(s, status)                                                                                              \
    do {                                                                                                               \
        json_status_t st__ = parse(s);                                                                                 \
        if (st__ != (status))                                                                                          \
            testlib_fail(__FILE__, __LINE__, "parse(%s) = %d, want %d (%s)", #s, st__, (status), err);                 \
    } while (0)

static char *decode(const json_tok_t *t, const char *src)
{
    static char out[256];
    json_str_decode(src, t, out);
    return out;
}

TEST(object_tokens_keep_spans_counts_and_skip)
{
    const char *s = " {\"a\": [1, {\"b\": null}], \"c\": \"x\"} ";
    REQUIRE(parse(s) == JSON_OK);
    CHECK_EQ_INT(doc.n, 9); /* {, "a", [, 1, {, "b", null, "c", "x" */
    CHECK_EQ_INT(doc.toks[0].type, JSON_OBJECT);
    CHECK_EQ_INT(doc.toks[0].start, 1);
    CHECK_EQ_INT(doc.toks[0].len, strlen(s) - 2);
    CHECK_EQ_INT(doc.toks[0].count, 2);
    CHECK_EQ_INT(doc.toks[0].skip, 9);
    CHECK_EQ_INT(doc.toks[2].type, JSON_ARRAY);
    CHECK_EQ_INT(doc.toks[2].count, 2);
    CHECK_EQ_INT(doc.toks[2].skip, 7);
    CHECK_EQ_INT(doc.toks[4].count, 1);
    CHECK_EQ_INT(doc.toks[4].len, strlen("{\"b\": null}"));
    CHECK_EQ_INT(doc.toks[1].len, 3); /* "a" with quotes */
    CHECK_EQ_INT(doc.toks[3].flags & JSON_F_INTEGER, JSON_F_INTEGER);
    CHECK_EQ_INT(json_obj_get(&doc, s, 0, "c"), 8);
    CHECK_EQ_INT(json_obj_get(&doc, s, 0, "a"), 2);
    CHECK_EQ_INT(json_obj_get(&doc, s, 0, "b"), -1); /* nested keys are not members */
}

TEST(obj_get_is_exact_and_case_sensitive)
{
    const char *s = "{\"Chat_Id\":1,\"chat_id\":2,\"chat_i\\u0064\":3}";
    REQUIRE(parse(s) == JSON_OK);
    int v = json_obj_get(&doc, s, 0, "chat_id");
    REQUIRE(v > 0);
    CHECK_EQ_INT(doc.toks[v].start, strlen("{\"Chat_Id\":1,\"chat_id\":"));
    CHECK_EQ_INT(json_obj_get(&doc, s, 0, "CHAT_ID"), -1);
    CHECK_EQ_INT(json_obj_get(&doc, s, 0, "chat"), -1);
}

TEST(scalars_are_accepted_at_the_top_level)
{
    EXPECT("42", JSON_OK);
    EXPECT("\"s\"", JSON_OK);
    EXPECT(" true ", JSON_OK);
    EXPECT("null", JSON_OK);
    EXPECT("[]", JSON_OK);
    EXPECT("{}", JSON_OK);
    EXPECT("\t\r\n{ }\n", JSON_OK);
}

TEST(escapes_decode_to_utf8_including_surrogate_pairs)
{
    const char *s = "[\"a\\n\\t\\\"\\\\\\/\\b\\f\\r\", \"\\u00e9\\u20ac\\ud83d\\ude00\", \"plain\"]";
    REQUIRE(parse(s) == JSON_OK);
    CHECK(doc.toks[1].flags & JSON_F_ESCAPED);
    CHECK_EQ_STR(decode(&doc.toks[1], s), "a\n\t\"\\/\b\f\r");
    CHECK_EQ_INT(json_str_decoded_len(s, &doc.toks[1]), 9);
    CHECK_EQ_STR(decode(&doc.toks[2], s), "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
    CHECK_EQ_INT(json_str_decoded_len(s, &doc.toks[2]), 9);
    CHECK(!(doc.toks[3].flags & JSON_F_ESCAPED));
    CHECK_EQ_STR(decode(&doc.toks[3], s), "plain");
    CHECK(json_str_eq(s, &doc.toks[2], "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9));
    CHECK(!json_str_eq(s, &doc.toks[2], "\xc3\xa9", 2));
    CHECK(json_str_eq(s, &doc.toks[3], "plain", 5));
    CHECK(!json_str_eq(s, &doc.toks[3], "plai", 4));
}

TEST(valid_multibyte_utf8_is_accepted)
{
    EXPECT("\"\xc2\x80 \xdf\xbf \xe0\xa0\x80 \xed\x9f\xbf \xee\x80\x80 \xef\xbf\xbf\"", JSON_OK);
    EXPECT("\"\xf0\x90\x80\x80 \xf4\x8f\xbf\xbf \xe4\xbd\xa0\xe5\xa5\xbd\"", JSON_OK);
}

TEST(invalid_utf8_is_rejected_with_its_offset)
{
    static const char *const bad[] = {
        "\"\xc0\x80\"",         /* overlong NUL */
        "\"\xc1\xbf\"",         /* overlong */
        "\"\xe0\x80\x80\"",     /* overlong 3-byte */
        "\"\xf0\x80\x80\x80\"", /* overlong 4-byte */
        "\"\xed\xa0\x80\"",     /* UTF-16 surrogate D800 encoded */
        "\"\xed\xbf\xbf\"",     /* surrogate DFFF */
        "\"\xf4\x90\x80\x80\"", /* U+110000 */
        "\"\xf5\x80\x80\x80\"", /* lead byte beyond U+10FFFF */
        "\"\xff\"",
        "\"\x80\"",     /* lone continuation */
        "\"\xc3\"",     /* truncated before the quote */
        "\"\xe2\x82\"", /* truncated 3-byte */
        "\"\xe2\x28\xa1\"",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (parse(bad[i]) != JSON_ESYNTAX || !strstr(err, "invalid UTF-8 at byte 1"))
            testlib_fail(__FILE__, __LINE__, "case %zu accepted or wrong message: %s", i, err);
    }
    CHECK_EQ_INT(parse_n("\"\xe2\x82", 3), JSON_ESYNTAX); /* truncated at end of input */
}

TEST(nul_bytes_are_rejected_raw_and_escaped)
{
    CHECK_EQ_INT(parse_n("\"a\0b\"", 5), JSON_ESYNTAX);
    CHECK_CONTAINS(err, "NUL byte at byte 2");
    CHECK_EQ_INT(parse_n("{}\0", 3), JSON_ESYNTAX);
    CHECK_CONTAINS(err, "NUL byte at byte 2");
    CHECK_EQ_INT(parse_n("[1,\0]", 5), JSON_ESYNTAX);
    EXPECT("\"a\\u0000b\"", JSON_ESYNTAX);
    CHECK_CONTAINS(err, "\\u0000");
    EXPECT("\"\\u0001\"", JSON_OK);
}

TEST(unpaired_surrogate_escapes_are_rejected)
{
    EXPECT("\"\\ud800\"", JSON_ESYNTAX);
    CHECK_CONTAINS(err, "unpaired surrogate");
    EXPECT("\"\\udc00\\ud800\"", JSON_ESYNTAX);
    EXPECT("\"\\ud800\\u0041\"", JSON_ESYNTAX);
    EXPECT("\"\\ud800x\"", JSON_ESYNTAX);
    EXPECT("\"\\udfff\"", JSON_ESYNTAX);
    EXPECT("\"\\ud800\\ud800\"", JSON_ESYNTAX);
    EXPECT("\"\\uDBFF\\uDFFF\"", JSON_OK);
}

TEST(bad_escapes_are_rejected)
{
    EXPECT("\"\\x41\"", JSON_ESYNTAX);
    CHECK_CONTAINS(err, "invalid escape at byte 1");
    EXPECT("\"\\u12g4\"", JSON_ESYNTAX);
    EXPECT("\"\\'\"", JSON_ESYNTAX);
    EXPECT("\"\\u12", JSON_ESYNTAX);
    CHECK_CONTAINS(err, "unexpected end of input");
}

TEST(raw_control_characters_in_strings_are_rejected)
{
    for (int c = 1; c < 0x20; c++) {
        char s[4] = {'"', (char)c, '"', 0};
        if (parse(s) != JSON_ESYNTAX)
            testlib_fail(__FILE__, __LINE__, "control 0x%02x accepted", c);
    }
    EXPECT("\"a\tb\"", JSON_ESYNTAX);
    CHECK_CONTAINS(err, "control character 0x09 in string at byte 2");
    EXPECT("\"\x7f\"", JSON_OK); /* DEL is not a control character for JSON */
}

TEST(number_grammar_is_strict)
{
    static const char *const good[] = {
        "0", "-0", "1", "-12", "1.5", "0.5", "1e3", "1E+3", "1e-3", "-1.25e-10", "123456789012345678901234567890"};
    static const char *const bad[] = {"01", "-01", "+1",  ".5",       "1.",        "1.e3", "1e",    "1e+",
                                      "-",  "--1", "NaN", "Infinity", "-Infinity", "0x10", "1_000", "١"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        if (parse(good[i]) != JSON_OK)
            testlib_fail(__FILE__, __LINE__, "%s rejected: %s", good[i], err);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (parse(bad[i]) != JSON_ESYNTAX)
            testlib_fail(__FILE__, __LINE__, "%s accepted", bad[i]);
    EXPECT("[01]", JSON_ESYNTAX);
    CHECK_CONTAINS(err, "leading zero in number at byte 1");
    EXPECT("1.5", JSON_OK);
    CHECK_EQ_INT(doc.toks[0].flags & JSON_F_INTEGER, 0);
}

TEST(literals_must_be_exact)
{
    EXPECT("tru", JSON_ESYNTAX);
    EXPECT("True", JSON_ESYNTAX);
    EXPECT("nul", JSON_ESYNTAX);
    EXPECT("falsey", JSON_ESYNTAX);
    EXPECT("[true,false,null]", JSON_OK);
}

TEST(trailing_commas_are_rejected)
{
    EXPECT("[1,]", JSON_ESYNTAX);
    EXPECT("{\"a\":1,}", JSON_ESYNTAX);
    EXPECT("[,1]", JSON_ESYNTAX);
    EXPECT("{,}", JSON_ESYNTAX);
    EXPECT("[1,,2]", JSON_ESYNTAX);
}

TEST(structural_errors_are_rejected)
{
    EXPECT("{\"a\" 1}", JSON_ESYNTAX);
    EXPECT("{\"a\":}", JSON_ESYNTAX);
    EXPECT("{a:1}", JSON_ESYNTAX);
    EXPECT("{'a':1}", JSON_ESYNTAX);
    EXPECT("[1 2]", JSON_ESYNTAX);
    EXPECT("[1}", JSON_ESYNTAX);
    EXPECT("{\"a\":1]", JSON_ESYNTAX);
    EXPECT("{\"a\":1 \"b\":2}", JSON_ESYNTAX);
    EXPECT("{1:2}", JSON_ESYNTAX);
    EXPECT("}", JSON_ESYNTAX);
}

TEST(trailing_garbage_after_the_value_is_rejected)
{
    EXPECT("{} x", JSON_ESYNTAX);
    CHECK_CONTAINS(err, "unexpected character 'x' after the value at byte 3");
    EXPECT("{}{}", JSON_ESYNTAX);
    EXPECT("1 2", JSON_ESYNTAX);
    EXPECT("{}\xff", JSON_ESYNTAX);
    CHECK_CONTAINS(err, "byte 0xff");
}

TEST(empty_and_blank_input_are_rejected)
{
    CHECK_EQ_INT(parse_n("", 0), JSON_ESYNTAX);
    CHECK_EQ_STR(err, "empty input");
    CHECK_EQ_INT(parse_n(NULL, 0), JSON_ESYNTAX);
    EXPECT(" \n\t ", JSON_ESYNTAX);
    CHECK_EQ_STR(err, "empty input");
}

TEST(every_truncation_of_a_document_is_rejected)
{
    const char *s = "{\"a\":[1,-2.5e3,\"x\\u00e9\\ud83d\\ude00\xc3\xa9\",true,false,null,{}],\"b\":{\"c\":\"d\"}}";
    size_t n = strlen(s);
    REQUIRE(parse(s) == JSON_OK);
    for (size_t k = 0; k < n; k++) {
        json_status_t st = parse_n(s, k);
        if (st != JSON_ESYNTAX)
            testlib_fail(__FILE__, __LINE__, "prefix of %zu bytes gave %d", k, st);
    }
}

TEST(error_messages_name_the_character_and_byte)
{
    EXPECT("[1,x]", JSON_ESYNTAX);
    CHECK_EQ_STR(err, "unexpected character 'x' at byte 3");
    EXPECT("[1,\x01]", JSON_ESYNTAX);
    CHECK_EQ_STR(err, "unexpected byte 0x01 at byte 3");
    EXPECT("{\"k\":\"v\xe9x\"}", JSON_ESYNTAX);
    CHECK_EQ_STR(err, "invalid UTF-8 at byte 7");
    EXPECT("[1,", JSON_ESYNTAX);
    CHECK_EQ_STR(err, "unexpected end of input at byte 3");
}

static char *nested(int depth, char open, char close, const char *inner)
{
    size_t n = strlen(inner);
    char *s = malloc((size_t)depth * 2 + n + 1);
    memset(s, open, (size_t)depth);
    memcpy(s + depth, inner, n);
    memset(s + depth + n, close, (size_t)depth);
    s[depth * 2 + n] = '\0';
    return s;
}

TEST(depth_64_is_accepted_and_65_is_a_limit_error)
{
    char *ok = nested(64, '[', ']', "");
    char *deep = nested(65, '[', ']', "");
    CHECK_EQ_INT(parse(ok), JSON_OK);
    CHECK_EQ_INT(parse(deep), JSON_ELIMIT);
    CHECK_EQ_STR(err, "nesting deeper than 64 at byte 64");
    free(ok);
    free(deep);
    /* Objects count the same way; a very deep document fails fast without recursion. */
    char *obj = malloc(64 * 6 + 8);
    size_t k = 0;
    for (int i = 0; i < 64; i++)
        k += (size_t)sprintf(obj + k, "{\"a\":");
    k += (size_t)sprintf(obj + k, "1");
    for (int i = 0; i < 64; i++)
        obj[k++] = '}';
    obj[k] = '\0';
    CHECK_EQ_INT(parse(obj), JSON_OK);
    free(obj);
    char *huge = nested(100000, '[', ']', "");
    CHECK_EQ_INT(parse(huge), JSON_ELIMIT);
    free(huge);
}

TEST(token_array_is_reused_across_parses)
{
    REQUIRE(parse("[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,"
                  "36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64,65]") ==
            JSON_OK);
    json_tok_t *toks = doc.toks;
    uint32_t cap = doc.cap;
    CHECK(cap >= 66);
    for (int i = 0; i < 100; i++)
        REQUIRE(parse("{\"a\":[1,2,3],\"b\":\"c\"}") == JSON_OK);
    CHECK(doc.toks == toks);
    CHECK_EQ_INT(doc.cap, cap);
}

TEST(large_documents_grow_the_token_array)
{
    size_t n = 200000;
    char *s = malloc(n * 2 + 2);
    s[0] = '[';
    for (size_t i = 0; i < n; i++) {
        s[1 + 2 * i] = '0';
        s[2 + 2 * i] = ',';
    }
    s[n * 2] = ']';
    s[n * 2 + 1] = '\0';
    REQUIRE(parse(s) == JSON_OK);
    CHECK_EQ_INT(doc.n, n + 1);
    CHECK_EQ_INT(doc.toks[0].count, n);
    free(s);
}

TEST(long_strings_scan_word_at_a_time_without_missing_specials)
{
    /* Every special byte at every position of a 40-byte string: the 8-byte fast path must stop for each. */
    char s[64];
    for (int pos = 1; pos < 41; pos++) {
        memset(s, 'a', sizeof s);
        s[0] = '"';
        s[41] = '"';
        s[42] = '\0';
        s[pos] = '\x1f';
        if (parse(s) != JSON_ESYNTAX)
            testlib_fail(__FILE__, __LINE__, "control at %d missed", pos);
        s[pos] = '\xff';
        if (parse(s) != JSON_ESYNTAX)
            testlib_fail(__FILE__, __LINE__, "0xff at %d missed", pos);
        s[pos] = '"';
        if (parse(s) != JSON_ESYNTAX) /* string ends early, trailing garbage */
            testlib_fail(__FILE__, __LINE__, "quote at %d missed", pos);
        s[pos] = '\\';
        if (parse(s) != JSON_ESYNTAX) /* "\a" is not an escape */
            testlib_fail(__FILE__, __LINE__, "backslash at %d missed", pos);
        s[pos] = '!'; /* 0x21, just above the control range */
        if (parse(s) != JSON_OK)
            testlib_fail(__FILE__, __LINE__, "'!' at %d rejected", pos);
    }
}

static bool to_i64(const char *s, int64_t *v)
{
    if (parse(s) != JSON_OK)
        return false;
    return json_num_to_i64(s, &doc.toks[0], v);
}

TEST(num_to_i64_accepts_exact_integers_only)
{
    int64_t v = 0;
    CHECK(to_i64("12", &v) && v == 12);
    CHECK(to_i64("-3", &v) && v == -3);
    CHECK(to_i64("1.0", &v) && v == 1);
    CHECK(to_i64("1e3", &v) && v == 1000);
    CHECK(to_i64("1.5e1", &v) && v == 15);
    CHECK(to_i64("100e-2", &v) && v == 1);
    CHECK(to_i64("12300e-2", &v) && v == 123);
    CHECK(to_i64("-0", &v) && v == 0);
    CHECK(to_i64("0.000e999999999999", &v) && v == 0);
    CHECK(to_i64("1.000000000000000000000000000000", &v) && v == 1);
    CHECK(to_i64("9223372036854775807", &v) && v == INT64_MAX);
    CHECK(to_i64("-9223372036854775808", &v) && v == INT64_MIN);
    CHECK(to_i64("9.223372036854775807e18", &v) && v == INT64_MAX);
    CHECK(to_i64("0000", &v) == false); /* not JSON */
    CHECK(!to_i64("9223372036854775808", &v));
    CHECK(!to_i64("-9223372036854775809", &v));
    CHECK(!to_i64("18446744073709551616", &v));
    CHECK(!to_i64("1.5", &v));
    CHECK(!to_i64("1e-1", &v));
    CHECK(!to_i64("1e19", &v));
    CHECK(!to_i64("1e400", &v));
    CHECK(!to_i64("1e99999999999999999999", &v));
    CHECK(!to_i64("123456789012345678901234567890", &v));
    CHECK(!to_i64("\"12\"", &v));
}

TEST(arena_allocations_are_aligned_and_reused_after_reset)
{
    arena_t *a = arena_create(4096);
    REQUIRE(a);
    char *first = arena_alloc(a, 3);
    char *second = arena_alloc(a, 1);
    CHECK(((uintptr_t)first & 15) == 0);
    CHECK(((uintptr_t)second & 15) == 0);
    CHECK(second - first == 16);
    for (int i = 0; i < 100; i++) /* spill into more chunks */
        CHECK(arena_alloc(a, 500) != NULL);
    char *big = arena_alloc(a, 1 << 20);
    REQUIRE(big);
    memset(big, 1, 1 << 20);
    arena_reset(a);
    CHECK(arena_alloc(a, 3) == first); /* the first chunk is reused: no malloc at steady state */
    char *s = arena_strndup(a, "hello world", 5);
    CHECK_EQ_STR(s, "hello");
    char *p = arena_printf(a, "%s-%d", "x", 42);
    CHECK_EQ_STR(p, "x-42");
    char *q = arena_printf(a, "%5000d", 7); /* longer than what is left of the chunk */
    REQUIRE(q);
    CHECK_EQ_INT(strlen(q), 5000);
    CHECK_EQ_STR(s, "hello"); /* earlier allocations untouched */
    arena_destroy(a);
    arena_destroy(NULL);
}

TEST(buf_appends_grow_and_stay_nul_terminated)
{
    buf_t b;
    buf_init(&b);
    buf_puts(&b, "ab");
    buf_putc(&b, 'c');
    buf_put_i64(&b, INT64_MIN);
    buf_putc(&b, ' ');
    buf_put_i64(&b, 0);
    buf_printf(&b, " %s=%d", "n", 5);
    CHECK_EQ_STR(b.data, "abc-9223372036854775808 0 n=5");
    for (int i = 0; i < 1000; i++)
        buf_printf(&b, "%04d", i);
    CHECK_EQ_INT(b.len, strlen(b.data));
    CHECK_EQ_INT(b.len, 29 + 4000);
    buf_reset(&b);
    CHECK_EQ_INT(b.len, 0);
    CHECK_EQ_STR(b.data, "");
    CHECK(!b.oom);
    buf_free(&b);
    buf_free(&b);
}

TEST(buf_put_json_str_escapes_and_replaces_invalid_utf8)
{
    buf_t b;
    buf_init(&b);
    {
        const char *in = "a\"b\\c\n\x01\xc3\xa9\xff\xed\xa0\x80z";
        buf_put_json_str(&b, in, strlen(in));
    }
    CHECK_EQ_STR(b.data, "\"a\\\"b\\\\c\\n\\u0001\xc3\xa9\\ufffd\\ufffd\\ufffd\\ufffdz\"");
    REQUIRE(parse_n(b.data, b.len) == JSON_OK); /* whatever the input, the output is valid JSON */
    buf_free(&b);
}

TEST(an_array_grows_by_doubling_from_its_first_size_and_keeps_its_elements)
{
    size_t cap = 0;
    uint32_t *a = buf_array_grow(NULL, &cap, 3, sizeof *a, 4);
    REQUIRE(a != NULL);
    CHECK_EQ_INT((int)cap, 4);
    for (uint32_t i = 0; i < 4; i++)
        a[i] = i + 1;
    uint32_t *same = buf_array_grow(a, &cap, 4, sizeof *a, 4);
    CHECK(same == a); /* big enough: untouched */
    CHECK_EQ_INT((int)cap, 4);
    a = buf_array_grow(a, &cap, 9, sizeof *a, 4);
    REQUIRE(a != NULL);
    CHECK_EQ_INT((int)cap, 16);
    for (uint32_t i = 0; i < 4; i++)
        CHECK_EQ_INT((int)a[i], (int)i + 1);
    free(a);
}

TEST(an_impossible_size_fails_and_leaves_the_array_as_it_was)
{
    size_t cap = 0;
    char *a = buf_array_grow(NULL, &cap, 8, 1, 8);
    REQUIRE(a != NULL);
    CHECK(buf_array_grow(a, &cap, SIZE_MAX / 2 + 2, 1, 8) == NULL);
    CHECK(buf_array_grow(a, &cap, SIZE_MAX / 8, 16, 8) == NULL);
    CHECK_EQ_INT((int)cap, 8);
    a[7] = 'x'; /* still ours */
    free(a);
}
