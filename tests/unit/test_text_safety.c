/* test_text_safety.c - what may reach a stored row from a hostile record: RFC 3339 checked in full, UTF-8 cut between
 * characters and sanitised (issue 17, class 1). */
#include <string.h>

#include "buf.h"
#include "clock.h"
#include "testlib.h"
#include "text.h"

TEST(rfc3339_accepts_date_times_with_zone_and_fraction)
{
    CHECK(clock_rfc3339_valid("2024-05-01T10:00:00Z", false));
    CHECK(clock_rfc3339_valid("2024-05-01T17:00:00.5+07:00", false));
    CHECK(clock_rfc3339_valid("2024-02-29T23:59:60.123456z", false)); /* leap year, leap second */
    CHECK(clock_rfc3339_valid("2024-05-01", true));
}

TEST(rfc3339_refuses_every_field_out_of_range_not_only_bad_punctuation)
{
    static const char *const bad[] = {
        "2024-13-45T25:61:61Z",      "2024-00-01T00:00:00Z",
        "2023-02-29T00:00:00Z",      "2024-04-31T00:00:00Z",
        "2024-05-01T24:00:00Z",      "2024-05-01T23:60:00Z",
        "2024-05-01T23:00:61Z",      "2024-05-01T10:00:00+24:00",
        "2024-05-01T10:00:00+07:60", "2024-05-01T10:00:00",
        "2024-05-01T10:00:00.Z",     "2024-05-01T10:00:00Zjunk",
        "2024-5-01T10:00:00Z",       "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (clock_rfc3339_valid(bad[i], false))
            testlib_fail(__FILE__, __LINE__, "accepted '%s'", bad[i]);
    CHECK(!clock_rfc3339_valid("2024-05-01", false)); /* a record's ts is a date-time */
}

TEST(utf8_cut_falls_between_characters)
{
    buf_t b;
    buf_init(&b);
    buf_put_utf8(&b, "\xc3\xa9\xc3\xa9\xc3\xa9", 6, 5); /* éé fits in 5 bytes, the third é does not */
    CHECK_EQ_STR(b.data, "\xc3\xa9\xc3\xa9");
    buf_reset(&b);
    buf_put_utf8(&b, "a\xe2\x82\xac", 4, 3); /* € would need bytes 2..4 */
    CHECK_EQ_STR(b.data, "a");
    buf_reset(&b);
    buf_put_utf8(&b, "x", 1, 0);
    CHECK_EQ_STR(b.data, "");
    buf_free(&b);
}

TEST(utf8_invalid_bytes_and_nul_become_replacement_characters)
{
    buf_t b;
    buf_init(&b);
    buf_put_utf8(&b,
                 "a\xff"
                 "b\0c\xed\xa0\x80",
                 8, 100); /* stray byte, NUL, an encoded surrogate */
    CHECK_EQ_STR(b.data, "a\xef\xbf\xbd"
                         "b\xef\xbf\xbd"
                         "c\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    CHECK_EQ_INT((long long)strlen(b.data), (long long)b.len);
    buf_free(&b);
}

TEST(utf8_is_valid_refuses_stray_bytes_surrogates_and_nul)
{
    CHECK(text_utf8_valid("caf\xc3\xa9 \xe2\x82\xac", 9));
    CHECK(text_utf8_valid("", 0));
    CHECK(!text_utf8_valid("bad-\xff\xfe-id", 10));
    CHECK(!text_utf8_valid("\xed\xa0\x80", 3)); /* an encoded surrogate */
    CHECK(!text_utf8_valid("a\0b", 3));
    CHECK(!text_utf8_valid("\xc3", 1)); /* cut inside a character */
}
