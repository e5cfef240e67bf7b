/* exhausted.h - the operator command "exhausted": list, show, replay and resolve exhausted_events rows (SPEC 5.3). */
#ifndef MES_EXHAUSTED_H
#define MES_EXHAUSTED_H

#include "config.h"

/* Exit statuses of the command. */
#define EXH_EXIT_OK 0
#define EXH_EXIT_NO_MATCH 1 /* no row matched the selection */
#define EXH_EXIT_USAGE 2    /* unknown subcommand or flag, missing value, bad --id/--since/--limit, --help */
#define EXH_EXIT_FAILED 3   /* PostgreSQL or NATS unreachable, a statement failed, or some replays failed */

/* Index of the word "exhausted" in argv (skipping the value of --config), or -1 when the process should run as the
 * service. */
int exhausted_argv_index(int argc, char **argv);

/* Runs the command with argv[0] == "exhausted" for the tenant and connections of cfg, and returns its exit status.
 * The command's output (table or JSON) is the only thing written to stdout: log lines, which log.c writes to file
 * descriptor 1, are sent to stderr for the rest of the process. */
int exhausted_cli(const config_t *cfg, int argc, char **argv) __attribute__((warn_unused_result));

#endif
