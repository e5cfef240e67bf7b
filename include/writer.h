/* writer.h - group commit for the lanes: the batches that are ready at the same moment, across subjects, are written
 * in ONE transaction on one of the writers' sessions (database.writers).
 *
 * There is no writer thread and no linger. A lane that has a batch to commit queues it and, when one of the writers'
 * sessions is free, takes every batch queued at that moment (its own and other lanes', oldest first, up to a row
 * budget) and commits them together; the lanes whose batches it took wait for its result. So an idle system commits
 * the first event at once, and a busy one coalesces exactly what piled up while the sessions were in use. A second
 * group starts beside one in flight only once a quarter of max_rows is queued (one session is falling behind);
 * below that, batches wait for the group in flight and go together after it. The store writes upserts of an entity
 * before its updates, and same-key items in queue order (store_commit), so a group needs no extra ordering; each
 * lane acks, NAKs and publishes DLQ records itself after its result. */
#ifndef MES_WRITER_H
#define MES_WRITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "db.h"
#include "store.h"

typedef struct writer writer_t;

/* Over the writers' pool (not owned). max_rows: a group takes batches while their rows fit (a first batch always). */
writer_t *writer_create(db_pool_t *pool, size_t max_rows);
void writer_destroy(writer_t *w); /* NULL-safe; no lane may use it any more */

/* Commits items[0..n) (n > 0) in one transaction, together with whatever other lanes queued meanwhile. Returns 0 when
 * committed (items[].result and .onb filled) or 1 when the group failed and rolled back: err says why, *alone whether
 * the group held only these items (else another lane's rows may be the cause). A session that is not usable right
 * now fails the group as an outage without waiting: the caller's own path (writer_session) reconnects. *seconds: the
 * transaction's time. Waits without a time limit (sessions are held briefly), calling ka meanwhile. */
int writer_commit(writer_t *w, store_item_t *items, size_t n, store_scratch_t *scratch, const db_keepalive_t *ka,
                  db_error_t *err, bool *alone, double *seconds) __attribute__((warn_unused_result));

/* A session of the writers' pool for this lane alone (isolating the events of a failed group, waiting through an
 * outage): waits until one is free, calling ka meanwhile. Give it back with writer_session_release. */
db_conn_t **writer_session(writer_t *w, const db_keepalive_t *ka);
void writer_session_release(writer_t *w, db_conn_t **slot); /* NULL-safe */

#endif
