/* sql.h - the statements of the batched writers (SPEC 3.2, 6). Parameter k is column k of the statement's rows, a
 * text[] array (rows.c sends it in binary format: no quoting, no parsing of an envelope). A subquery unnests the
 * columns as r and casts each to its type, so one prepared shape serves any batch size; a JSON object reaches
 * PostgreSQL as its original text and is cast to jsonb (no float round trip), and a number goes through the same
 * input function, with the same out-of-range errors, as when the rows were a JSON array. Column 1 is the row's index
 * in the transaction (i); the last one is last_metadata (meta). Statements run with search_path = the tenant schema. */

#ifndef MES_STORE_SQL_H
#define MES_STORE_SQL_H

/* unnest of the first N parameters, one per column: "FROM " COLS_N ") AS u(i, ...)". */
#define COLS_7 "unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[]"
#define COLS_8 COLS_7 ", $8::text[]"
#define COLS_10 COLS_8 ", $9::text[], $10::text[]"
#define COLS_12 COLS_10 ", $11::text[], $12::text[]"
#define COLS_15 COLS_12 ", $13::text[], $14::text[], $15::text[]"
#define COLS_18 COLS_15 ", $16::text[], $17::text[], $18::text[]"

/* chats.upsert and history chats. Older events (by conversation_timestamp) do not overwrite the "latest" columns;
 * identity columns stay from the first insert; absent fields keep the stored value. */
#define SQL_CHATS_UPSERT                                                                                               \
    "INSERT INTO chats AS c (chat_id, jid, push_name, is_group, group_name, unread_count, last_message,"               \
    " conversation_timestamp, not_spam, agent_id, company_id, phone_number, custom_name, last_metadata,"               \
    " created_at, updated_at)"                                                                                         \
    " SELECT r.chat_id, r.jid, r.push_name, r.is_group, r.group_name, r.unread_count, r.last_message,"                 \
    " r.conversation_timestamp, r.not_spam, r.agent_id, r.company_id, r.phone_number, r.custom_name, r.meta,"          \
    " now(), now()"                                                                                                    \
    " FROM (SELECT u.chat_id, u.jid, u.push_name, u.is_group::boolean AS is_group, u.group_name,"                      \
    " u.unread_count::integer AS unread_count, u.last_message::jsonb AS last_message,"                                 \
    " u.conversation_timestamp::bigint AS conversation_timestamp, u.not_spam::boolean AS not_spam, u.agent_id,"        \
    " u.company_id, u.phone_number, u.custom_name, u.meta::jsonb AS meta FROM " COLS_15 ")"                            \
    " AS u(i, chat_id, jid, push_name, is_group, group_name, unread_count, last_message, conversation_timestamp,"      \
    " not_spam, agent_id, company_id, phone_number, custom_name, meta)) AS r"                                          \
    " ON CONFLICT (chat_id) DO UPDATE SET"                                                                             \
    " push_name = CASE WHEN EXCLUDED.conversation_timestamp < c.conversation_timestamp THEN c.push_name"               \
    "   ELSE COALESCE(EXCLUDED.push_name, c.push_name) END,"                                                           \
    " group_name = CASE WHEN EXCLUDED.conversation_timestamp < c.conversation_timestamp THEN c.group_name"             \
    "   ELSE COALESCE(EXCLUDED.group_name, c.group_name) END,"                                                         \
    " unread_count = CASE WHEN EXCLUDED.conversation_timestamp < c.conversation_timestamp THEN c.unread_count"         \
    "   ELSE COALESCE(EXCLUDED.unread_count, c.unread_count) END,"                                                     \
    " last_message = CASE WHEN EXCLUDED.conversation_timestamp < c.conversation_timestamp THEN c.last_message"         \
    "   ELSE COALESCE(EXCLUDED.last_message, c.last_message) END,"                                                     \
    " conversation_timestamp = GREATEST(c.conversation_timestamp, EXCLUDED.conversation_timestamp),"                   \
    " not_spam = COALESCE(EXCLUDED.not_spam, c.not_spam),"                                                             \
    " custom_name = COALESCE(EXCLUDED.custom_name, c.custom_name),"                                                    \
    " jid = COALESCE(c.jid, EXCLUDED.jid), agent_id = COALESCE(c.agent_id, EXCLUDED.agent_id),"                        \
    " company_id = COALESCE(c.company_id, EXCLUDED.company_id),"                                                       \
    " phone_number = COALESCE(c.phone_number, EXCLUDED.phone_number),"                                                 \
    " is_group = COALESCE(c.is_group, EXCLUDED.is_group),"                                                             \
    " last_metadata = EXCLUDED.last_metadata, updated_at = now()"

/* Plans: the planner cannot see how many rows the parameters hold. For the JSON array the rows were before it guessed
 * 100; for unnest of a parameter it guesses 10 in a generic plan and uses the exact count in the custom plans of a
 * prepared statement's first five executions. With its default random_page_cost it would prefer a sequential scan
 * and a hash join over index probes once a table has a few thousand rows, so a lane's cost grew with the table (a
 * 100k-event drain spent most of PostgreSQL's CPU in seq scans of messages). Keys are therefore looked up with
 * "= ANY (ARRAY(subquery))" (an index condition) or, for the two-column contact key, a LATERAL probe of the unique
 * index, and the writer sessions run with enable_seqscan = off (pipeline.c). Every statement must be cheap under
 * both guesses: see messages.update. */

/* The UPDATE ... FROM statements first lock their rows in key order (bytewise, COLLATE "C", the order the C side
 * sorts a batch in and so the order the upserts insert in): a join may otherwise visit rows in any order and
 * deadlock with another lane or replica writing the same rows. */

/* chats.update: the chat must exist (RETURNING tells which did). unread_count sets, unread_delta adds (floor 0,
 * computed in bigint and capped to int4 so a hostile delta cannot overflow). */
#define SQL_CHATS_UPDATE                                                                                               \
    "WITH r AS MATERIALIZED (SELECT u.i::integer AS i, u.chat_id, u.agent_id,"                                         \
    " u.unread_count::integer AS unread_count, u.unread_delta::integer AS unread_delta,"                               \
    " u.conversation_timestamp::bigint AS conversation_timestamp, u.last_message::jsonb AS last_message,"              \
    " u.meta::jsonb AS meta FROM " COLS_8 ") AS u(i, chat_id, agent_id, unread_count, unread_delta,"                   \
    " conversation_timestamp, last_message, meta)),"                                                                   \
    " l AS MATERIALIZED (SELECT k.chat_id FROM chats k"                                                                \
    " WHERE k.chat_id = ANY (ARRAY(SELECT chat_id FROM r))"                                                            \
    " ORDER BY k.chat_id COLLATE \"C\" FOR UPDATE)"                                                                    \
    " UPDATE chats AS c SET"                                                                                           \
    " unread_count = CASE WHEN r.unread_count IS NULL AND r.unread_delta IS NULL THEN c.unread_count"                  \
    "   ELSE LEAST(2147483647, GREATEST(0, COALESCE(r.unread_count, c.unread_count, 0)::bigint"                        \
    "   + COALESCE(r.unread_delta, 0)))::integer END,"                                                                 \
    " conversation_timestamp = GREATEST(c.conversation_timestamp, r.conversation_timestamp),"                          \
    " last_message = COALESCE(r.last_message, c.last_message),"                                                        \
    " agent_id = COALESCE(c.agent_id, r.agent_id),"                                                                    \
    " last_metadata = r.meta, updated_at = now()"                                                                      \
    " FROM r WHERE c.chat_id = r.chat_id AND c.chat_id = ANY (ARRAY(SELECT chat_id FROM l)) RETURNING r.i"

/* messages.upsert and history messages: status never regresses along the ladder; identity columns stay. */
#define SQL_MESSAGES_UPSERT                                                                                            \
    "INSERT INTO messages AS m (message_id, from_phone, to_phone, chat_id, jid, message_text, message_url,"            \
    " message_type, company_id, key, message_obj, flow, agent_id, status, message_timestamp, message_date,"            \
    " last_metadata, created_at, updated_at)"                                                                          \
    " SELECT r.message_id, r.from_phone, r.to_phone, r.chat_id, r.jid, r.message_text, r.message_url,"                 \
    " r.message_type, r.company_id, r.key, r.message_obj, r.flow, r.agent_id, r.status, r.message_timestamp,"          \
    " r.message_date, r.meta, now(), now()"                                                                            \
    " FROM (SELECT u.message_id, u.from_phone, u.to_phone, u.chat_id, u.jid, u.message_text, u.message_url,"           \
    " u.message_type, u.company_id, u.key::jsonb AS key, u.message_obj::jsonb AS message_obj, u.flow, u.agent_id,"     \
    " u.status, u.message_timestamp::bigint AS message_timestamp, u.message_date::date AS message_date,"               \
    " u.meta::jsonb AS meta FROM " COLS_18 ") AS u(i, message_id, from_phone, to_phone, chat_id, jid,"                 \
    " message_text, message_url, message_type, company_id, key, message_obj, flow, agent_id, status,"                  \
    " message_timestamp, message_date, meta)) AS r"                                                                    \
    " ON CONFLICT (message_id, message_date) DO UPDATE SET"                                                            \
    " message_text = COALESCE(EXCLUDED.message_text, m.message_text),"                                                 \
    " message_url = COALESCE(EXCLUDED.message_url, m.message_url),"                                                    \
    " message_type = COALESCE(EXCLUDED.message_type, m.message_type),"                                                 \
    " message_obj = COALESCE(EXCLUDED.message_obj, m.message_obj),"                                                    \
    " status = CASE WHEN EXCLUDED.status IS NULL THEN m.status"                                                        \
    "   WHEN mes_status_rank(EXCLUDED.status) > 0 AND mes_status_rank(EXCLUDED.status) < mes_status_rank(m.status)"    \
    "   THEN m.status ELSE EXCLUDED.status END,"                                                                       \
    " from_phone = COALESCE(m.from_phone, EXCLUDED.from_phone), to_phone = COALESCE(m.to_phone, EXCLUDED.to_phone),"   \
    " chat_id = COALESCE(m.chat_id, EXCLUDED.chat_id), jid = COALESCE(m.jid, EXCLUDED.jid),"                           \
    " flow = COALESCE(m.flow, EXCLUDED.flow), agent_id = COALESCE(m.agent_id, EXCLUDED.agent_id),"                     \
    " key = COALESCE(m.key, EXCLUDED.key),"                                                                            \
    " message_timestamp = COALESCE(m.message_timestamp, EXCLUDED.message_timestamp),"                                  \
    " company_id = COALESCE(m.company_id, EXCLUDED.company_id),"                                                       \
    " last_metadata = EXCLUDED.last_metadata, updated_at = now()"

/* messages.update: by message_id in any partition; present fields apply, including is_deleted = false. The locked
 * rows (l) carry their message_date; j pairs them with the update's values, and the update joins j alone, on both
 * key columns: with the generic plan's guess of 10 rows PostgreSQL picks a nested loop, which then probes only the
 * partition of each row's date (run-time pruning). Joined on message_id alone, that loop probed all six partitions
 * per row, and a mix drain's messages.update took 4.4x as long as with the JSON rows (2026-12-06). Joined to r and l
 * at once, the planner guessed one row out of l and m and scanned all of r for each (a join filter over n^2 pairs:
 * 20k for 141 rows, most of the statement's time); l built as a join of r and messages instead probed each
 * partition with the whole key array for every row of r (also n^2). */
#define SQL_MESSAGES_UPDATE                                                                                            \
    "WITH r AS MATERIALIZED (SELECT u.i::integer AS i, u.message_id, u.status, u.message_url,"                         \
    " u.edited_message_obj::jsonb AS edited_message_obj, u.is_deleted::boolean AS is_deleted, u.meta::jsonb AS meta"   \
    " FROM " COLS_7 ") AS u(i, message_id, status, message_url, edited_message_obj, is_deleted, meta)),"               \
    " l AS MATERIALIZED (SELECT k.message_id, k.message_date FROM messages k"                                          \
    " WHERE k.message_id = ANY (ARRAY(SELECT message_id FROM r))"                                                      \
    " ORDER BY k.message_id COLLATE \"C\", k.message_date FOR UPDATE),"                                                \
    " j AS MATERIALIZED (SELECT r.i, r.status, r.message_url, r.edited_message_obj, r.is_deleted, r.meta,"             \
    " l.message_id, l.message_date FROM l JOIN r ON r.message_id = l.message_id)"                                      \
    " UPDATE messages AS m SET"                                                                                        \
    " status = CASE WHEN j.status IS NULL THEN m.status"                                                               \
    "   WHEN mes_status_rank(j.status) > 0 AND mes_status_rank(j.status) < mes_status_rank(m.status)"                  \
    "   THEN m.status ELSE j.status END,"                                                                              \
    " message_url = COALESCE(j.message_url, m.message_url),"                                                           \
    " edited_message_obj = COALESCE(j.edited_message_obj, m.edited_message_obj),"                                      \
    " is_deleted = COALESCE(j.is_deleted, m.is_deleted),"                                                              \
    " last_metadata = j.meta, updated_at = now()"                                                                      \
    " FROM j WHERE m.message_id = j.message_id AND m.message_date = j.message_date"                                    \
    " AND m.message_id = ANY (ARRAY(SELECT message_id FROM j))"                                                        \
    " AND m.message_date = ANY (ARRAY(SELECT message_date FROM j)) RETURNING j.i"

/* The contacts lock: one per tenant schema, held to the end of the transaction, taken right before its first write
 * of contacts, agents or onboarding_log (the statements after the messages ones, plan.c). A transaction writes
 * contacts in up to five statements (upsert rounds, update, onboarding create, merge, log), each in key order but
 * together in no global one, and the two writers, the DLQ workers and replicas may write the same contact
 * (contacts.upsert of one group, onboarding of IN messages in another): each could hold a contact the other's next
 * statement needs. PostgreSQL found such a cycle 0-2 times per 100k-event mix drain (2026-12-06) and broke it only
 * after deadlock_timeout (1 s), stalling a writer and failing its group. Under the lock the contact writes of two
 * transactions never interleave. A transaction waiting for it holds row locks of chats and messages only, which the
 * holder is done with, so the wait cannot close a cycle. The agents statements, between contacts and onboarding,
 * take it too: a transaction with agents but no contacts statements would otherwise wait for the lock at
 * onboarding holding agent rows that the holder may need next. */
#define SQL_CONTACTS_LOCK "SELECT pg_advisory_xact_lock(hashtext('mes_contacts:' || current_schema()))"

/* contacts.upsert and history contacts: identity (agent_id, normalised phone); a fresh UUID on insert. */
#define SQL_CONTACTS_UPSERT                                                                                            \
    "INSERT INTO contacts AS c (id, phone_number, agent_id, chat_id, push_name, company_id, last_metadata,"            \
    " created_at, updated_at)"                                                                                         \
    " SELECT gen_random_uuid()::text, r.phone_number, r.agent_id, r.chat_id, r.push_name, r.company_id, r.meta,"       \
    " now(), now()"                                                                                                    \
    " FROM (SELECT u.phone_number, u.agent_id, u.chat_id, u.push_name, u.company_id, u.meta::jsonb AS meta"            \
    " FROM " COLS_7 ") AS u(i, phone_number, agent_id, chat_id, push_name, company_id, meta)) AS r"                    \
    " ON CONFLICT (agent_id, phone_number) DO UPDATE SET"                                                              \
    " chat_id = COALESCE(EXCLUDED.chat_id, c.chat_id), push_name = COALESCE(EXCLUDED.push_name, c.push_name),"         \
    " company_id = COALESCE(c.company_id, EXCLUDED.company_id),"                                                       \
    " last_metadata = EXCLUDED.last_metadata, updated_at = now()"

#define SQL_CONTACTS_UPDATE                                                                                            \
    "WITH r AS MATERIALIZED (SELECT u.i::integer AS i, u.phone_number, u.agent_id, u.chat_id, u.push_name,"            \
    " u.meta::jsonb AS meta FROM " COLS_7 ") AS u(i, phone_number, agent_id, chat_id, push_name, company_id,"          \
    " meta)),"                                                                                                         \
    " l AS MATERIALIZED (SELECT x.id FROM (SELECT agent_id, phone_number FROM r"                                       \
    " ORDER BY agent_id COLLATE \"C\", phone_number COLLATE \"C\") o CROSS JOIN LATERAL (SELECT k.id FROM contacts k"  \
    " WHERE k.agent_id = o.agent_id AND k.phone_number = o.phone_number LIMIT 1 FOR UPDATE) x)"                        \
    " UPDATE contacts AS c SET"                                                                                        \
    " chat_id = COALESCE(r.chat_id, c.chat_id), push_name = COALESCE(r.push_name, c.push_name),"                       \
    " last_metadata = r.meta, updated_at = now()"                                                                      \
    " FROM r WHERE c.agent_id = r.agent_id AND c.phone_number = r.phone_number"                                        \
    " AND c.id = ANY (ARRAY(SELECT id FROM l))"                                                                        \
    " RETURNING r.i"

/* connection.update, step 1: new agents, absent optional strings stored as '' (never NULL). Step 2 then applies
 * present fields to every agent of the batch. Two statements (not one upsert) because an upsert cannot tell an
 * absent field from a present "" once the insert side has turned absent into ''. Step 2 runs with a new snapshot,
 * so an agent inserted concurrently by a replica is updated, not missed. */
#define SQL_AGENTS_INSERT                                                                                              \
    "INSERT INTO agents (agent_id, qr_code, status, agent_name, phone_number, host_name, version, company_id,"         \
    " last_metadata, created_at, updated_at)"                                                                          \
    " SELECT r.agent_id, COALESCE(r.qr_code, ''), COALESCE(r.status, ''), COALESCE(r.agent_name, ''),"                 \
    " COALESCE(r.phone_number, ''), COALESCE(r.host_name, ''), COALESCE(r.version, ''), r.company_id, r.meta,"         \
    " now(), now()"                                                                                                    \
    " FROM (SELECT u.agent_id, u.qr_code, u.status, u.agent_name, u.phone_number, u.host_name, u.version,"             \
    " u.company_id, u.meta::jsonb AS meta FROM " COLS_10 ") AS u(i, agent_id, qr_code, status, agent_name,"            \
    " phone_number, host_name, version, company_id, meta)) AS r"                                                       \
    " ON CONFLICT (agent_id) DO NOTHING"

#define SQL_AGENTS_UPDATE                                                                                              \
    "WITH r AS MATERIALIZED (SELECT u.agent_id, u.qr_code, u.status, u.agent_name, u.phone_number, u.host_name,"       \
    " u.version, u.company_id, u.meta::jsonb AS meta FROM " COLS_10 ") AS u(i, agent_id, qr_code, status,"             \
    " agent_name, phone_number, host_name, version, company_id, meta)),"                                               \
    " l AS MATERIALIZED (SELECT k.agent_id FROM agents k WHERE k.agent_id = ANY (ARRAY(SELECT agent_id FROM r))"       \
    " ORDER BY k.agent_id COLLATE \"C\" FOR UPDATE)"                                                                   \
    " UPDATE agents AS a SET"                                                                                          \
    " qr_code = COALESCE(r.qr_code, a.qr_code), status = COALESCE(r.status, a.status),"                                \
    " agent_name = COALESCE(r.agent_name, a.agent_name), phone_number = COALESCE(r.phone_number, a.phone_number),"     \
    " host_name = COALESCE(r.host_name, a.host_name), version = COALESCE(r.version, a.version),"                       \
    " company_id = COALESCE(a.company_id, r.company_id), last_metadata = r.meta, updated_at = now()"                   \
    " FROM r WHERE a.agent_id = r.agent_id AND a.agent_id = ANY (ARRAY(SELECT agent_id FROM l))"

/* Onboarding (SPEC 6), same transaction as the messages, one row per (agent, phone) of the batch: first_tags are the
 * campaign tags of its first message (what creating the contact uses), tags those of all its messages in stream
 * order (what later messages merge in). Step 1 creates missing contacts and says which; step 2
 * merges campaign tags and fills empty origin/first_message_* of existing ones (no write when nothing changes);
 * step 3 logs the first message per (agent, phone). */
#define SQL_ONB_RECORDSET                                                                                              \
    " FROM (SELECT u.i::integer AS i, u.phone, u.agent_id, u.chat_id, u.company_id, u.origin, u.assigned_to,"          \
    " u.first_tags, u.tags, u.message_id, u.message_timestamp::bigint AS message_timestamp, u.meta::jsonb AS meta"     \
    " FROM " COLS_12 ") AS u(i, phone, agent_id, chat_id, company_id, origin, assigned_to, first_tags, tags,"          \
    " message_id, message_timestamp, meta)) AS r"

#define SQL_ONB_CREATE                                                                                                 \
    "INSERT INTO contacts (id, phone_number, agent_id, chat_id, company_id, origin, tags, assigned_to,"                \
    " first_message_id, first_message_timestamp, status, last_metadata, created_at, updated_at)"                       \
    " SELECT gen_random_uuid()::text, r.phone, r.agent_id, r.chat_id, r.company_id,"                                   \
    " COALESCE(NULLIF(r.origin, ''), 'DirectChat'),"                                                                   \
    " CASE WHEN r.first_tags IS NULL AND r.tags IS NULL THEN 'Onboarded'"                                              \
    "   ELSE mes_merge_tags(COALESCE(mes_merge_tags(NULL, r.first_tags), 'Onboarded'), r.tags) END,"                   \
    " r.assigned_to, r.message_id, r.message_timestamp, 'ACTIVE', r.meta, now(), now()" SQL_ONB_RECORDSET              \
    " ON CONFLICT (agent_id, phone_number) DO NOTHING RETURNING agent_id, phone_number"

#define SQL_ONB_MERGE                                                                                                  \
    "WITH r AS MATERIALIZED (SELECT r.*, x.id" SQL_ONB_RECORDSET " CROSS JOIN LATERAL (SELECT k.id FROM contacts k"    \
    " WHERE k.agent_id = r.agent_id AND k.phone_number = r.phone LIMIT 1) x)"                                          \
    " UPDATE contacts AS c SET"                                                                                        \
    " tags = CASE WHEN r.tags IS NULL THEN c.tags ELSE mes_merge_tags(c.tags, r.tags) END,"                            \
    " origin = COALESCE(NULLIF(c.origin, ''), NULLIF(r.origin, ''), 'DirectChat'),"                                    \
    " first_message_id = COALESCE(NULLIF(c.first_message_id, ''), r.message_id),"                                      \
    " first_message_timestamp = COALESCE(c.first_message_timestamp, r.message_timestamp),"                             \
    " last_metadata = r.meta, updated_at = now()"                                                                      \
    " FROM r WHERE c.id = r.id AND c.id = ANY (ARRAY(SELECT id FROM r)) AND ("                                         \
    " (r.tags IS NOT NULL AND mes_merge_tags(c.tags, r.tags) IS DISTINCT FROM c.tags)"                                 \
    " OR COALESCE(c.origin, '') = '' OR COALESCE(c.first_message_id, '') = ''"                                         \
    " OR (c.first_message_timestamp IS NULL AND r.message_timestamp IS NOT NULL))"

#define SQL_ONB_LOG                                                                                                    \
    "INSERT INTO onboarding_log (message_id, agent_id, company_id, phone_number, \"timestamp\", last_metadata,"        \
    " created_at) SELECT r.message_id, r.agent_id, r.company_id, r.phone, r.message_timestamp, r.meta, "               \
    "now()" SQL_ONB_RECORDSET " ON CONFLICT (agent_id, phone_number) DO NOTHING"

#endif
