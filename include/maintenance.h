/* maintenance.h - background upkeep: database health for /ready and the rolling messages partitions. */
#ifndef MES_MAINTENANCE_H
#define MES_MAINTENANCE_H

#include <stdatomic.h>
#include <stdbool.h>

#include "config.h"
#include "db.h"

typedef struct maintenance maintenance_t;

/* Starts the thread; it pings PostgreSQL every second and keeps partitions rolling every
 * database.partitionCheckInterval, on a session of pool (borrowed for each check; a pool shared with the DLQ
 * workers may be busy for a while: the last verdict then stands). Returns NULL on failure. */
maintenance_t *maintenance_start(const config_t *cfg, db_pool_t *pool, const atomic_bool *stop);
/* Last health check result. */
bool maintenance_db_up(const maintenance_t *m);
void maintenance_stop(maintenance_t *m); /* joins and frees; NULL-safe; *stop must be set */

#endif
