/* keep.h - optional profiling output of a benchmark run, chosen by environment variables:
 *   BENCH_KEEP_LOG=FILE       the service's log (run with --env LOG_LEVEL=debug for per-batch timings)
 *   BENCH_PG_STATEMENTS=FILE  PostgreSQL's top statements by time (pg_stat_statements; see bench/README.md) */
#ifndef MES_BENCH_KEEP_H
#define MES_BENCH_KEEP_H

#include "harness.h"

/* Before the service starts: creates the pg_stat_statements extension when BENCH_PG_STATEMENTS is set. */
void bench_keep_prepare(const h_pg_t *p);
/* After the measurement: writes what the variables ask for. */
void bench_keep(h_svc_t *s, const h_pg_t *p);

#endif
