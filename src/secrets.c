/* secrets.c - registry of the configured secrets and the filter that masks them in library error texts. */
#include "secrets.h"

#include "config.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_SECRETS 256
#define SCRATCH 8200 /* input bytes masked per call: more than a log value keeps (8192) */

/* Sorted longest first, so a whole password is replaced before one of its fragments could match inside it. A
 * whole secret is masked wherever it appears; a fragment only as a word of its own (no letter or digit right
 * before or after it): a library that split a password echoes the fragment between delimiters, and a fragment
 * such as "pass" must not mask "password". */
static char *secrets[MAX_SECRETS];
static size_t lens[MAX_SECRETS]; /* strlen(secrets[i]): secrets_mask runs on every logged string */
static bool fragment[MAX_SECRETS];
static size_t nsecrets;

void secrets_clear(void)
{
    for (size_t i = 0; i < nsecrets; i++)
        free(secrets[i]);
    nsecrets = 0;
}

static void add(const char *s, size_t n, bool frag)
{
    if (n < SECRETS_MIN_FRAGMENT || nsecrets == MAX_SECRETS)
        return;
    for (size_t i = 0; i < nsecrets; i++)
        if (lens[i] == n && memcmp(secrets[i], s, n) == 0) {
            fragment[i] = fragment[i] && frag;
            return;
        }
    char *copy = strndup(s, n);
    if (!copy)
        return;
    size_t at = nsecrets;
    while (at > 0 && lens[at - 1] < n) {
        secrets[at] = secrets[at - 1];
        lens[at] = lens[at - 1];
        fragment[at] = fragment[at - 1];
        at--;
    }
    secrets[at] = copy;
    lens[at] = n;
    fragment[at] = frag;
    nsecrets++;
}

static bool delimiter(unsigned char c)
{
    return !(isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c >= 0x80);
}

static void add_with_fragments(const char *s, size_t n)
{
    add(s, n, false);
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || delimiter((unsigned char)s[i])) {
            if (i > start && !(start == 0 && i == n))
                add(s + start, i - start, true);
            start = i + 1;
        }
    }
}

static int hex(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (unsigned char)tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

void secrets_register(const char *secret)
{
    if (!secret || !*secret)
        return;
    size_t n = strlen(secret);
    add_with_fragments(secret, n);
    char *dec = malloc(n + 1);
    if (!dec)
        return;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int h, l;
        if (secret[i] == '%' && i + 2 < n && (h = hex((unsigned char)secret[i + 1])) >= 0 &&
            (l = hex((unsigned char)secret[i + 2])) >= 0) {
            dec[m++] = (char)(h * 16 + l);
            i += 2;
        } else {
            dec[m++] = secret[i];
        }
    }
    if (m != n)
        add_with_fragments(dec, m);
    free(dec);
}

static void register_n(const char *s, size_t n)
{
    char *copy = strndup(s, n);
    if (copy)
        secrets_register(copy);
    free(copy);
}

/* key=value DSN (and URI query) passwords: password = value | 'quoted \' value'. */
static void register_keyword_values(const char *dsn)
{
    static const char kw[] = "password";
    for (const char *p = dsn; (p = strcasestr(p, kw)) != NULL;) {
        const char *v = p + sizeof kw - 1;
        p = v;
        while (*v == ' ' || *v == '\t')
            v++;
        if (*v != '=')
            continue;
        v++;
        while (*v == ' ' || *v == '\t')
            v++;
        if (*v == '\'') {
            char buf[1024];
            size_t m = 0;
            const char *q = v + 1;
            for (; *q && *q != '\'' && m + 1 < sizeof buf; q++) {
                if (*q == '\\' && q[1])
                    q++;
                buf[m++] = *q;
            }
            register_n(buf, m);
            register_n(v + 1, (size_t)(q - v - 1)); /* the raw text too, escapes included */
        } else {
            size_t n = strcspn(v, " \t\r\n&");
            register_n(v, n);
            register_n(v, strcspn(v, " \t\r\n")); /* a raw '&' may belong to the password */
        }
    }
}

/* URI userinfo: between "://" and the last '@' before the next URI of a list. The last '@', because a raw '@' or
 * '/' in a password makes every stricter parse guess wrong (that is how libpq came to echo a fragment). */
static void register_userinfo(const char *dsn)
{
    for (const char *p = dsn; (p = strstr(p, "://")) != NULL;) {
        const char *scheme = p;
        while (scheme > dsn && (isalnum((unsigned char)scheme[-1]) || strchr("+-.", scheme[-1])))
            scheme--;
        bool postgres = strncasecmp(scheme, "postgres", 8) == 0;
        const char *a = p + 3;
        const char *next = strstr(a, "://");
        const char *end = next ? next : a + strlen(a);
        if (next) /* back to the comma that separates list entries */
            while (end > a && end[-1] != ',')
                end--;
        const char *at = NULL;
        for (const char *c = a; c < end; c++)
            if (*c == '@')
                at = c;
        if (at) {
            const char *colon = memchr(a, ':', (size_t)(at - a));
            if (colon)
                register_n(colon + 1, (size_t)(at - colon - 1));
            else if (!postgres)
                register_n(a, (size_t)(at - a)); /* nats://token@host */
        }
        p = next ? next : end;
    }
}

void secrets_register_dsn(const char *dsn)
{
    if (!dsn || !*dsn)
        return;
    register_userinfo(dsn);
    register_keyword_values(dsn);
}

void secrets_mask(const char *in, char *out, size_t outlen)
{
    char tmp[SCRATCH];
    size_t o = 0;

    if (!out || outlen == 0)
        return;
    if (!in)
        in = "";
    for (const char *c = in; *c && o + 1 < sizeof tmp;) {
        size_t hit = 0;
        for (size_t i = 0; i < nsecrets && !hit; i++) {
            size_t n = lens[i];
            if (*c != secrets[i][0] || strncmp(c, secrets[i], n) != 0)
                continue;
            if (fragment[i] && ((c > in && isalnum((unsigned char)c[-1]) && isalnum((unsigned char)c[0])) ||
                                (isalnum((unsigned char)c[n - 1]) && isalnum((unsigned char)c[n]))))
                continue;
            hit = n;
        }
        if (hit) {
            for (const char *m = "****"; *m && o + 1 < sizeof tmp; m++)
                tmp[o++] = *m;
            c += hit;
        } else {
            tmp[o++] = *c++;
        }
    }
    tmp[o] = '\0';
    config_mask_secret(tmp, out, outlen);
}
