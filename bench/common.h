/* common.h - what the server benchmarks share: pre-publishing a backlog with the load generator, PostgreSQL's side of
 * a service run (commits and the service's peak sessions), and optional profiling output of a run, chosen by
 * environment variables:
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

/* PostgreSQL's side of one service run: the transactions PostgreSQL committed and the peak number of the service's
 * sessions. Start it before h_svc_start and finish it after the service has stopped (bench_svc_stop): a sampler thread
 * with its own connection counts the sessions with application_name 'message-event-service' every 50 ms in between.
 * How the commits are counted, and why only after the stop, is written at bench_pgwatch_finish in common.c. */
typedef struct bench_pgwatch bench_pgwatch_t;

/* Reads the baseline and starts the sampler. Returns NULL (why on stderr) when it cannot. Caller owns; free with
 * bench_pgwatch_destroy. */
bench_pgwatch_t *bench_pgwatch_start(const h_pg_t *p) __attribute__((warn_unused_result));
/* After the service has exited: waits (up to 15 s) until its sessions are gone, stops the sampler and reads the
 * commits. *commits: transactions committed in the database since the start, the sampler's own subtracted (-1 when
 * unknown); *peak: the most sessions of the service seen at once (-1 when never sampled). Returns 0, or -1 when the
 * commit count could not be read (peak still filled). */
int bench_pgwatch_finish(bench_pgwatch_t *w, long long *commits, int *peak) __attribute__((warn_unused_result));
/* After finish: the deadlocks PostgreSQL detected (and broke, after deadlock_timeout) in the database since the start,
 * flushed like the commits; -1 when unknown. */
long long bench_pgwatch_deadlocks(const bench_pgwatch_t *w);
void bench_pgwatch_destroy(bench_pgwatch_t *w); /* NULL-safe; stops the sampler if finish was not called */

/* Stops the service the way operators do (SIGTERM, up to 30 s) so that its sessions end. Returns 0 when it exited 0,
 * else -1 with the status on stderr (what the harness's cleanup would have reported). */
int bench_svc_stop(h_svc_t *s) __attribute__((warn_unused_result));

/* Before the service starts: creates the pg_stat_statements extension when BENCH_PG_STATEMENTS is set. */
void bench_keep_prepare(const h_pg_t *p);
/* After the measurement: writes what the variables ask for. */
void bench_keep(h_svc_t *s, const h_pg_t *p);

#endif
