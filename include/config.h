/* config.h - the service configuration: defaults < YAML file < environment (SPEC 9). */
#ifndef MES_CONFIG_H
#define MES_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "event.h"

/* Settings of one consuming lane (realtime or historical). Durations are milliseconds. */
typedef struct {
    char *stream;              /* nats.<lane>.stream */
    char *consumer;            /* durable name prefix, nats.<lane>.consumer */
    char *group;               /* nats.<lane>.group: accepted for compatibility (unused by pull consumers) */
    char *subject_list;        /* nats.<lane>.subjectList: comma list of bases to consume; "" = all of the lane */
    int max_age_days;          /* nats.<lane>.maxAge */
    int max_deliver;           /* nats.<lane>.maxDeliver */
    int64_t nak_base_delay_ms; /* nats.<lane>.nakBaseDelay */
    int64_t nak_max_delay_ms;  /* nats.<lane>.nakMaxDelay */
    int64_t ack_wait_ms;       /* nats.<lane>.ackWait */
    int max_ack_pending;       /* nats.<lane>.maxAckPending */
    int batch_size;            /* nats.<lane>.batchSize (own key): max messages per fetch/transaction */
    int64_t fetch_wait_ms;     /* nats.<lane>.fetchWait (own key): how long one pull request waits */
} lane_config_t;

typedef struct {
    char *log_level;                    /* logLevel: debug|info|warn|error */
    char *server_address;               /* server.address */
    int server_port;                    /* server.port */
    int http_max_connections;           /* server.maxConnections (own key) */
    int64_t http_connection_timeout_ms; /* server.connectionTimeout (own key) */

    char *nats_url;            /* nats.url (secret-bearing: mask user:pass); one URL or a comma-separated list */
    int nats_stream_replicas;  /* nats.streamReplicas: replicas of the streams the service creates (1-5) */
    char *nats_tls_ca_file;    /* nats.tls.caFile; the nats.tls.* and auth fields are NULL when unset */
    char *nats_tls_cert_file;  /* nats.tls.certFile (with keyFile: client certificate) */
    char *nats_tls_key_file;   /* nats.tls.keyFile */
    char *nats_user;           /* nats.user (with nats.password) */
    char *nats_password;       /* nats.password (secret) */
    char *nats_token;          /* nats.token (secret) */
    char *nats_nkey_seed_file; /* nats.nkeySeedFile: a file holding a user NKey seed (secret contents) */
    char *nats_creds_file;     /* nats.credsFile: user JWT + seed (secret contents) */
    lane_config_t realtime;
    lane_config_t historical;

    char *dlq_stream;  /* nats.dlqStream */
    char *dlq_subject; /* nats.dlqSubject, e.g. "v1.dlq" */
    int dlq_workers;
    int dlq_queue_size;
    int dlq_max_retries;
    int64_t dlq_base_delay_ms; /* nats.dlqBaseDelay, else nats.dlqBaseDelayMinutes */
    int64_t dlq_max_delay_ms;  /* nats.dlqMaxDelay, else nats.dlqMaxDelayMinutes */
    int dlq_max_age_days;
    int dlq_max_deliver;
    int64_t dlq_ack_wait_ms;
    int dlq_max_ack_pending;

    char *postgres_dsn; /* database.postgresDSN (secret-bearing) */
    bool postgres_auto_migrate;
    int64_t statement_timeout_ms;
    int64_t lock_timeout_ms;
    int db_max_connections; /* database.maxConnections (database.poolSize, its old name, is an alias): sessions */
    int db_writers;         /* database.writers: sessions of the lanes' writers; resolved from 0 (auto) at load */

    char *company_id;            /* company.id / COMPANY_ID, validated ^[A-Za-z0-9_]{1,48}$ */
    char schema[64];             /* derived: "daisi_" + lower(company_id), unquoted */
    bool consume[ET_BASE_COUNT]; /* derived: the bases whose lane is started (subjectList; empty: all of the lane) */

    bool metrics_enabled;
    int metrics_max_agent_labels;
    bool metrics_jid_label;

    int64_t shutdown_timeout_ms;         /* shutdown.timeout (own key), 20s */
    int64_t startup_timeout_ms;          /* startup.timeout (own key), 60s */
    int64_t partition_check_interval_ms; /* database.partitionCheckInterval (own key), 1h */
} config_t;

#define CONFIG_EXIT_BAD 2

/*
 * Loads defaults, then the YAML file (path from --config/CONFIG_FILE, or config/default.yaml if it exists),
 * then the environment. argv options understood: --config FILE (also --config=FILE). Other argv entries are left
 * for the caller (subcommands). On failure writes a message naming the key, value and what is allowed into err and
 * returns CONFIG_EXIT_BAD; returns 0 on success. cfg is owned by the caller: release it with config_free.
 */
int config_load(config_t *cfg, int argc, char **argv, char *err, size_t errlen) __attribute__((warn_unused_result));
void config_free(config_t *cfg);
/* Logs every key and value (secrets masked) at info level, logger "config". */
void config_log(const config_t *cfg);
/* Copies s into out with any password in a URL or DSN replaced by "****". */
void config_mask_secret(const char *s, char *out, size_t outlen);

#endif
