/* log.h - JSON-lines logger on stdout (SPEC 10). Thread-safe; one write per line. */
#ifndef MES_LOG_H
#define MES_LOG_H

#include <stdbool.h>
#include <stddef.h>

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } log_level_t;

typedef enum { LOGF_NONE = 0, LOGF_STR, LOGF_INT, LOGF_DBL, LOGF_BOOL } log_field_type_t;

typedef struct {
    const char *key;
    log_field_type_t type;
    const char *s;
    long long i;
    double d;
} log_field_t;

#define LF_S(k, v) ((log_field_t){.key = (k), .type = LOGF_STR, .s = (v)})
#define LF_I(k, v) ((log_field_t){.key = (k), .type = LOGF_INT, .i = (long long)(v)})
#define LF_D(k, v) ((log_field_t){.key = (k), .type = LOGF_DBL, .d = (double)(v)})
#define LF_B(k, v) ((log_field_t){.key = (k), .type = LOGF_BOOL, .i = (v) ? 1 : 0})

/* Parses "debug", "info", "warn"/"warning", "error" (case-insensitive). Returns 0 on success. */
int log_level_parse(const char *s, log_level_t *out);
void log_init(log_level_t level, const char *company_id);
bool log_enabled(log_level_t level);
/* Names the calling thread "<role> <what>" (what may be NULL), cut to the 15 characters Linux keeps, so top -H,
 * perf and gdb tell the fetchers, lanes and workers apart. Best effort: a failure changes nothing else. */
void log_thread_name(const char *role, const char *what);
/* Writes {"ts":..,"level":..,"logger":..,"msg":..,"company_id":..,<fields>} + "\n". Fields with LOGF_NONE are skipped. */
void log_emit(log_level_t level, const char *logger, const char *msg, const log_field_t *fields, size_t nfields);

#define LOG_AT(lvl, logger, msg, ...)                                                                                  \
    do {                                                                                                               \
        if (log_enabled(lvl)) {                                                                                        \
            const log_field_t lf__[] = {{.type = LOGF_NONE}, __VA_ARGS__};                                             \
            log_emit((lvl), (logger), (msg), lf__, sizeof lf__ / sizeof lf__[0]);                                      \
        }                                                                                                              \
    } while (0)
#define log_debug(logger, ...) LOG_AT(LOG_DEBUG, logger, __VA_ARGS__)
#define log_info(logger, ...) LOG_AT(LOG_INFO, logger, __VA_ARGS__)
#define log_warn(logger, ...) LOG_AT(LOG_WARN, logger, __VA_ARGS__)
#define log_error(logger, ...) LOG_AT(LOG_ERROR, logger, __VA_ARGS__)

#endif
