/* clock.h - time helpers shared by every module: monotonic/real clocks, interruptible sleeps, RFC 3339 stamps. */
#ifndef MES_CLOCK_H
#define MES_CLOCK_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

int64_t clock_mono_ms(void);
int64_t clock_mono_ns(void);
double clock_mono_s(void);
int64_t clock_real_ms(void);
int64_t clock_real_us(void);
/* Sleeps until CLOCK_MONOTONIC reads mono_ns (a paced schedule), resuming after signals. */
void clock_sleep_until_ns(int64_t mono_ns);
/* Sleeps ms milliseconds, resuming after signals. */
void clock_sleep_ms(int64_t ms);
/* Sleeps ms milliseconds or until *stop is set (looked at every 100 ms and after each signal). */
void clock_sleep_ms_unless(int64_t ms, const atomic_bool *stop);
/* The CLOCK_REALTIME instant ms milliseconds from now, for pthread_cond_timedwait. */
struct timespec clock_deadline_in_ms(int64_t ms);
/* A CLOCK_REALTIME time in milliseconds as a timespec (pthread_timedjoin_np deadlines). */
struct timespec clock_timespec_of_ms(int64_t real_ms);

/* Backoff of attempt n (>= 1): min(base * 2^(n-1), max), with +-20% jitter when asked (SPEC 4 and 5.2). */
int64_t clock_backoff_ms(int64_t base_ms, int64_t max_ms, int n, bool jitter);
/* The wait after `cur` in a doubling retry loop: twice as long, at most max. */
static inline int64_t clock_backoff_next(int64_t cur, int64_t max)
{
    return cur * 2 > max ? max : cur * 2;
}
/* "2026-11-22T12:00:00.123456Z" (UTC, microseconds) into out (>= 32 bytes). */
void clock_rfc3339_now(char *out, size_t len);
/* True when s is a complete RFC 3339 date-time ("2024-05-01T10:00:00Z", "2024-05-01T17:00:00.5+07:00": month, day,
 * hour, minute, second and offset in range), or a full-date ("2024-05-01") when date_only_ok. Checked here so that a
 * bad value is refused by the caller rather than by PostgreSQL. */
bool clock_rfc3339_valid(const char *s, bool date_only_ok);

#endif
