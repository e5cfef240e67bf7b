/* common.h - what the server benchmarks share: pre-publishing a backlog with the load generator, and optional
 * profiling output of a run, chosen by environment variables:
 *   BENCH_KEEP_LOG=FILE       the service's log (run with --env LOG_LEVEL=debug for per-batch timings)
 *   BENCH_PG_STATEMENTS=FILE  PostgreSQL's top statements by time (pg_stat_statements; see bench/README.md) */
#ifndef MES_BENCH_COMMON_H
#define MES_BENCH_COMMON_H

#include "harness.h"

/* Publishes `count` events of `subjects` for tenant `company` with mes-loadgen (seed 42, waiting for every PubAck).
 * history and invalid are --history-count / --invalid-ratio values, NULL for the defaults. Returns 0, or -1 with the
 * load generator's output on stderr (prefixed with prog). */
int bench_prepublish(const char *prog, const h_nats_t *n, const char *company, long count, const char *subjects,
                     const char *history, const char *invalid);

/* Before the service starts: creates the pg_stat_statements extension when BENCH_PG_STATEMENTS is set. */
void bench_keep_prepare(const h_pg_t *p);
/* After the measurement: writes what the variables ask for. */
void bench_keep(h_svc_t *s, const h_pg_t *p);

#endif
