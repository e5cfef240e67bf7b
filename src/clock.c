/* clock.c - time helpers: monotonic and real clocks, sleeps that survive EINTR, RFC 3339 UTC stamps. */
#include "clock.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <time.h>

int64_t clock_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t clock_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

double clock_mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int64_t clock_real_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t clock_real_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void clock_sleep_until_ns(int64_t mono_ns)
{
    struct timespec ts = {(time_t)(mono_ns / 1000000000LL), (long)(mono_ns % 1000000000LL)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

void clock_sleep_ms(int64_t ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

void clock_sleep_ms_unless(int64_t ms, const atomic_bool *stop)
{
    for (int64_t end = clock_mono_ms() + ms, left; !atomic_load(stop) && (left = end - clock_mono_ms()) > 0;) {
        int64_t slice = left < 100 ? left : 100;
        struct timespec ts = {0, (long)slice * 1000000L};
        nanosleep(&ts, NULL); /* a signal ends the slice early: *stop is looked at again */
    }
}

struct timespec clock_timespec_of_ms(int64_t real_ms)
{
    return (struct timespec){(time_t)(real_ms / 1000), (long)(real_ms % 1000) * 1000000L};
}

struct timespec clock_deadline_in_ms(int64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t ns = ts.tv_nsec + (ms % 1000) * 1000000L;
    ts.tv_sec += (time_t)(ms / 1000 + ns / 1000000000L);
    ts.tv_nsec = (long)(ns % 1000000000L);
    return ts;
}

int64_t clock_backoff_ms(int64_t base_ms, int64_t max_ms, int n, bool jitter)
{
    static _Thread_local uint64_t seed;
    if (n < 1)
        n = 1;
    int64_t d = base_ms;
    for (int i = 1; i < n && d < max_ms; i++)
        d *= 2;
    if (d > max_ms)
        d = max_ms;
    if (jitter && d > 0) {
        if (!seed)
            seed = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)&seed;
        seed ^= seed << 13; /* xorshift64 */
        seed ^= seed >> 7;
        seed ^= seed << 17;
        double f = 0.8 + 0.4 * (double)(seed >> 11) / 9007199254740992.0;
        d = (int64_t)((double)d * f);
    }
    return d < 1 ? 1 : d;
}

void clock_rfc3339_now(char *out, size_t len)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int us = (int)(ts.tv_nsec / 1000);
    snprintf(out, len, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", (tm.tm_year + 1900) % 10000, (tm.tm_mon + 1) % 100,
             tm.tm_mday % 100, tm.tm_hour % 100, tm.tm_min % 100, tm.tm_sec % 100, us % 1000000);
}

/* ---- RFC 3339 ---- */

static bool fixed_digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

static int days_in_month(int y, int m)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : days[m - 1];
}

bool clock_rfc3339_valid(const char *s, bool date_only_ok)
{
    int y, mo, d, h, mi, sec, oh, om;
    if (!fixed_digits(s, 4, &y) || s[4] != '-' || !fixed_digits(s + 5, 2, &mo) || s[7] != '-' ||
        !fixed_digits(s + 8, 2, &d) || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo))
        return false;
    s += 10;
    if (!*s)
        return date_only_ok;
    if ((*s != 'T' && *s != 't' && *s != ' ') || !fixed_digits(s + 1, 2, &h) || s[3] != ':' ||
        !fixed_digits(s + 4, 2, &mi) || s[6] != ':' || !fixed_digits(s + 7, 2, &sec) || h > 23 || mi > 59 || sec > 60)
        return false;
    s += 9;
    if (*s == '.') {
        if (!isdigit((unsigned char)*++s))
            return false;
        while (isdigit((unsigned char)*s))
            s++;
    }
    if (*s == 'Z' || *s == 'z')
        return s[1] == '\0';
    return (*s == '+' || *s == '-') && fixed_digits(s + 1, 2, &oh) && s[3] == ':' && fixed_digits(s + 4, 2, &om) &&
           s[6] == '\0' && oh <= 23 && om <= 59;
}
