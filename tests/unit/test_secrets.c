/* test_secrets.c - secrets_mask: no password, decoded or not, nor any fragment of one, survives a library text. */
#include "config.h"
#include "secrets.h"
#include "testlib.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every URL- or DSN-special character sits between fragments long enough to be masked on their own. */
static const char specials[] = "/?#@:%+&= '\"\\,;[]!$*()";

static void password_with(char c, char *out, size_t len)
{
    snprintf(out, len, "Alpha7%cBravo9%cCharl3", c, c);
}

static void pct_encode(const char *in, char *out, size_t len)
{
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p && o + 4 < len; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9'))
            out[o++] = (char)*p;
        else
            o += (size_t)snprintf(out + o, len - o, "%%%02X", *p);
    }
    out[o] = '\0';
}

static void kv_quote(const char *in, char *out, size_t len)
{
    size_t o = 0;
    out[o++] = '\'';
    for (const char *p = in; *p && o + 3 < len; p++) {
        if (*p == '\'' || *p == '\\')
            out[o++] = '\\';
        out[o++] = *p;
    }
    out[o++] = '\'';
    out[o] = '\0';
}

static void check_clean(const char *masked, const char *pw, const char *what)
{
    static const char *const fragments[] = {"Alpha7", "Bravo9", "Charl3"};
    for (size_t i = 0; i < 3; i++)
        if (strstr(masked, fragments[i]))
            testlib_fail(__FILE__, __LINE__, "%s: fragment %s of password [%s] leaked: %s", what, fragments[i], pw,
                         masked);
}

/* Masks texts the way libraries echo them: the whole DSN, the password, each fragment, inside a sentence. */
static void check_dsn(const char *dsn, const char *pw)
{
    char text[2048], masked[2048];
    secrets_clear();
    secrets_register_dsn(dsn);
    snprintf(text, sizeof text,
             "connection to \"%s\" failed; password \"%s\"; invalid integer value \"Alpha7\" for "
             "connection option \"port\"; \"Bravo9\"; Charl3",
             dsn, pw);
    secrets_mask(text, masked, sizeof masked);
    check_clean(masked, pw, dsn);
    CHECK_CONTAINS(masked, "for connection option \"port\"");

    /* And what libpq really says about this DSN (host 127.0.0.1 port 1: refused at once, or a parse error). */
    PGconn *pg = PQconnectdb(dsn);
    REQUIRE(pg != NULL);
    secrets_mask(PQerrorMessage(pg), masked, sizeof masked);
    check_clean(masked, pw, dsn);
    PQfinish(pg);
}

TEST(uri_passwords_with_every_special_character_are_masked_raw_and_percent_encoded)
{
    char pw[64], enc[256], dsn[512];
    for (const char *c = specials; *c; c++) {
        password_with(*c, pw, sizeof pw);
        snprintf(dsn, sizeof dsn, "postgres://postgres:%s@127.0.0.1:1/db?connect_timeout=2", pw);
        check_dsn(dsn, pw);
        pct_encode(pw, enc, sizeof enc);
        snprintf(dsn, sizeof dsn, "postgres://postgres:%s@127.0.0.1:1/db?connect_timeout=2", enc);
        check_dsn(dsn, pw);
        snprintf(dsn, sizeof dsn, "postgresql://127.0.0.1:1/db?user=postgres&password=%s&connect_timeout=2", enc);
        check_dsn(dsn, pw);
    }
    secrets_clear();
}

TEST(key_value_passwords_with_every_special_character_are_masked)
{
    char pw[64], q[256], dsn[512];
    for (const char *c = specials; *c; c++) {
        password_with(*c, pw, sizeof pw);
        kv_quote(pw, q, sizeof q);
        snprintf(dsn, sizeof dsn, "host=127.0.0.1 port=1 user=postgres password=%s dbname=db connect_timeout=2", q);
        check_dsn(dsn, pw);
        if (!strchr(" '\\", *c)) {
            snprintf(dsn, sizeof dsn, "host=127.0.0.1 port=1 password = %s dbname=db connect_timeout=2", pw);
            check_dsn(dsn, pw);
        }
    }
    secrets_clear();
}

TEST(nats_url_passwords_and_tokens_are_masked)
{
    char masked[512];
    secrets_clear();
    secrets_register_dsn(
        "nats://127.0.0.1:4222,nats://alice:S3cr/etc+Pwd9@10.0.0.2:4222,tls://T0k3n/abc@10.0.0.3:4222");
    secrets_mask("nats: Authorization Violation for S3cr/etc+Pwd9 and token T0k3n/abc (S3cr, etc+Pwd9, abc)", masked,
                 sizeof masked);
    CHECK(!strstr(masked, "S3cr"));
    CHECK(!strstr(masked, "Pwd9"));
    CHECK(!strstr(masked, "T0k3n"));
    CHECK(!strstr(masked, "abc"));
    CHECK_CONTAINS(masked, "Authorization Violation");
    secrets_clear();
}

TEST(text_without_secrets_is_unchanged_and_users_are_not_secrets)
{
    char masked[512];
    secrets_clear();
    secrets_register_dsn("postgres://postgres@127.0.0.1:5432/db");
    secrets_register_dsn(NULL);
    secrets_mask("could not connect to server postgres at 127.0.0.1", masked, sizeof masked);
    CHECK_EQ_STR(masked, "could not connect to server postgres at 127.0.0.1");
    secrets_register("ab"); /* shorter than SECRETS_MIN_FRAGMENT: would mask ordinary words */
    secrets_mask("abc", masked, sizeof masked);
    CHECK_EQ_STR(masked, "abc");
    secrets_register("pass/Word9");
    secrets_mask("password=pass Word9 Word9x", masked, sizeof masked);
    CHECK_EQ_STR(masked, "password=**** **** Word9x"); /* a fragment inside a longer word is left alone */
    secrets_mask("tiny", masked, 3);
    CHECK_EQ_STR(masked, "ti");
    secrets_clear();
}
