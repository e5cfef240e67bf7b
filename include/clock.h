/* clock.h - time helpers shared by every module: monotonic/real clocks, interruptible sleeps, RFC 3339 stamps. */
#ifndef MES_CLOCK_H
#define MES_CLOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

int64_t clock_mono_ms(void);
int64_t clock_mono_ns(void);
double clock_mono_s(void);
int64_t clock_real_ms(void);
int64_t clock_real_us(void);
/* Sleeps until CLOCK_MONOTONIC reads mono_ns (a paced schedule), resuming after signals. */
void clock_sleep_until_ns(int64_t mono_ns);
/* Sleeps ms milliseconds, resuming after signals. */
void clock_sleep_ms(int64_t ms);
/* "2026-11-22T12:00:00.123456Z" (UTC, microseconds) into out (>= 32 bytes). */
void clock_rfc3339_now(char *out, size_t len);
/* True when s is a complete RFC 3339 date-time ("2024-05-01T10:00:00Z", "2024-05-01T17:00:00.5+07:00": month, day,
 * hour, minute, second and offset in range), or a full-date ("2024-05-01") when date_only_ok. Checked here so that a
 * bad value is refused by the caller rather than by PostgreSQL. */
bool clock_rfc3339_valid(const char *s, bool date_only_ok);

#endif
