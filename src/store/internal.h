/* internal.h - what the store's three jobs share inside src/store: rows.c writes the rows of each entity as columns,
 * plan.c orders items into key-unique rounds and yields the statements, pipeline.c sends them in one transaction.
 * Nothing outside src/store includes it. */
#ifndef MES_STORE_INTERNAL_H
#define MES_STORE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "db.h"
#include "store.h"

/* Every statement the writers use, in the order a transaction runs them (see plan.c). */
typedef enum {
    ST_CHATS_UPSERT,
    ST_CHATS_UPDATE,
    ST_MESSAGES_UPSERT,
    ST_MESSAGES_UPDATE,
    ST_CONTACTS_UPSERT,
    ST_CONTACTS_UPDATE,
    ST_AGENTS_INSERT,
    ST_AGENTS_UPDATE,
    ST_ONB_CREATE,
    ST_ONB_MERGE,
    ST_ONB_LOG,
    ST_COUNT
} stmt_t;

/* What the executor does with a statement's result. */
typedef enum { OP_PLAIN, OP_FOUND, OP_ONB_CREATE } op_kind_t;

typedef struct {
    const char *sql;
    op_kind_t kind;
    db_op_t op; /* metrics labels */
    db_entity_t ent;
    bool locked; /* writes contacts, agents or onboarding_log: runs under the transaction's contacts lock (sql.h) */
} stmt_info_t;

extern const stmt_info_t store_stmt_info[ST_COUNT];

/* rows.c: the rows of items idx[0..n) (one entity type) as s's columns (s->cols, col_vals, col_lens, ncols): one
 * binary text[] array per column, in the column order of the entity's statements in sql.h. 0, or -1 (out of memory
 * or a column-count bug). */
int store_rows(store_scratch_t *s, const store_item_t *items, const uint32_t *idx, size_t n);
/* rows.c: true when it is a realtime IN message with a from_phone that has digits: phone gets its identity. */
bool store_onboardable(const store_item_t *it, char phone[PAYLOAD_MAX_PHONE + 1], size_t *plen);
/* rows.c: onboarding's columns: begin, then ONE row per (agent, phone) for the messages order[from..to), whose
 * normalised phone is phones[i * (PAYLOAD_MAX_PHONE + 1)] for item i, then end with the row count (0 or -1). */
void store_onboarding_begin(store_scratch_t *s);
void store_row_onboarding(store_scratch_t *s, const store_item_t *items, const uint32_t *order, size_t from, size_t to,
                          const char *phones);
int store_onboarding_end(store_scratch_t *s, size_t rows);

#endif
