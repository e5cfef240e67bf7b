/* test_log.c - the JSON-lines logger: field order, escaping, invalid UTF-8, truncation, levels, threads. */
#include "log.h"
#include "testlib.h"

#include <cjson/cJSON.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Redirects fd 1 to a temporary file until capture_end, which returns everything written (caller frees). */
typedef struct {
    int fd, saved;
    char path[32];
} capture_t;

static void capture_begin(capture_t *c)
{
    snprintf(c->path, sizeof c->path, "/tmp/mes_log_XXXXXX");
    c->fd = mkstemp(c->path);
    c->saved = dup(STDOUT_FILENO);
    fflush(stdout);
    if (c->fd < 0 || c->saved < 0 || dup2(c->fd, STDOUT_FILENO) < 0)
        testlib_fail(__FILE__, __LINE__, "cannot capture stdout");
}

static char *capture_end(capture_t *c)
{
    fflush(stdout);
    dup2(c->saved, STDOUT_FILENO);
    close(c->saved);
    off_t size = lseek(c->fd, 0, SEEK_END);
    char *text = calloc(1, (size_t)size + 1);
    if (text && pread(c->fd, text, (size_t)size, 0) != size)
        text[0] = '\0';
    close(c->fd);
    unlink(c->path);
    return text;
}

/* Parses one line that must be a complete JSON object ending in exactly one newline. */
static cJSON *parse_line(const char *line)
{
    size_t len = strlen(line);
    if (len == 0 || line[len - 1] != '\n' || memchr(line, '\n', len - 1))
        return NULL;
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithOpts(line, &end, 0);
    if (j && (!cJSON_IsObject(j) || *end != '\n')) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

/* Independent UTF-8 oracle: glibc's decoder rejects overlongs, surrogates and out-of-range code points. */
static bool valid_utf8(const char *s)
{
    setlocale(LC_CTYPE, "C.UTF-8");
    size_t n = mbstowcs(NULL, s, 0);
    setlocale(LC_CTYPE, "C");
    return n != (size_t)-1;
}

static const char *str_of(cJSON *j, const char *key)
{
    return cJSON_GetStringValue(cJSON_GetObjectItem(j, key));
}

TEST(line_is_one_json_object_with_standard_fields_first_in_order)
{
    capture_t cap;
    log_init(LOG_DEBUG, "acme");
    capture_begin(&cap);
    log_info("consumer", "Both consumers started successfully", LF_S("lane", "realtime"), LF_I("batch", 256));
    char *out = capture_end(&cap);
    REQUIRE(out);
    cJSON *j = parse_line(out);
    REQUIRE(j);
    static const char *const order[] = {"ts", "level", "logger", "msg", "company_id", "lane", "batch"};
    cJSON *it = j->child;
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++, it = it ? it->next : NULL)
        CHECK_EQ_STR(it ? it->string : NULL, order[i]);
    CHECK(it == NULL);
    CHECK_EQ_STR(str_of(j, "level"), "info");
    CHECK_EQ_STR(str_of(j, "logger"), "consumer");
    CHECK_EQ_STR(str_of(j, "msg"), "Both consumers started successfully");
    CHECK_EQ_STR(str_of(j, "company_id"), "acme");
    CHECK_EQ_INT(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "batch")), 256);
    cJSON_Delete(j);
    free(out);
}

TEST(timestamp_is_rfc3339_utc_with_milliseconds_and_current)
{
    capture_t cap;
    struct tm tm = {0};
    log_init(LOG_INFO, "acme");
    capture_begin(&cap);
    log_warn("t", "x");
    char *out = capture_end(&cap);
    REQUIRE(out);
    cJSON *j = parse_line(out);
    REQUIRE(j);
    const char *ts = str_of(j, "ts");
    REQUIRE(ts);
    CHECK_EQ_INT(strlen(ts), 24); /* 2026-11-22T12:00:00.123Z */
    const char *rest = strptime(ts, "%Y-%m-%dT%H:%M:%S", &tm);
    CHECK(rest && rest[0] == '.' && rest[1] >= '0' && rest[1] <= '9' && rest[2] >= '0' && rest[2] <= '9' &&
          rest[3] >= '0' && rest[3] <= '9' && rest[4] == 'Z');
    CHECK(llabs((long long)(timegm(&tm) - time(NULL))) <= 5);
    CHECK_EQ_STR(str_of(j, "level"), "warn");
    cJSON_Delete(j);
    free(out);
}

TEST(strings_with_quotes_backslashes_and_control_chars_round_trip)
{
    static const char nasty[] = "say \"hi\"\\ \n\r\t\b\f \x01\x1f\x7f end </script> \xe2\x80\xa8";
    capture_t cap;
    log_init(LOG_INFO, "co\"mp");
    capture_begin(&cap);
    log_error(nasty, nasty, LF_S(nasty, nasty));
    char *out = capture_end(&cap);
    REQUIRE(out);
    cJSON *j = parse_line(out);
    REQUIRE(j);
    CHECK_EQ_STR(str_of(j, "msg"), nasty);
    CHECK_EQ_STR(str_of(j, "logger"), nasty);
    CHECK_EQ_STR(str_of(j, nasty), nasty);
    CHECK_EQ_STR(str_of(j, "company_id"), "co\"mp");
    for (const char *p = out; *p != '\n'; p++)
        CHECK((unsigned char)*p >= 0x20);
    cJSON_Delete(j);
    free(out);
}

TEST(invalid_utf8_bytes_become_replacement_characters_and_valid_utf8_is_kept)
{
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"a\xff"
         "b",
         "a\xef\xbf\xbd"
         "b"},                                                                    /* byte that never appears in UTF-8 */
        {"\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd"},                                 /* overlong '/' */
        {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},                 /* UTF-16 surrogate */
        {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* above U+10FFFF */
        {"end\xe2\x82", "end\xef\xbf\xbd\xef\xbf\xbd"},                           /* cut sequence */
        {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9d\x84\x9e", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9d\x84\x9e"},
    };
    log_init(LOG_INFO, "acme");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        capture_t cap;
        capture_begin(&cap);
        log_info("t", "utf8", LF_S("v", cases[i].in));
        char *out = capture_end(&cap);
        REQUIRE(out);
        CHECK(valid_utf8(out));
        cJSON *j = parse_line(out);
        CHECK(j != NULL);
        CHECK_EQ_STR(j ? str_of(j, "v") : NULL, cases[i].want);
        cJSON_Delete(j);
        free(out);
    }
}

TEST(numbers_bools_and_nulls_render_as_json_types)
{
    capture_t cap;
    log_init(LOG_INFO, "acme");
    capture_begin(&cap);
    log_info("t", "types", LF_I("neg", -42), LF_D("ratio", 0.25), LF_D("nan", NAN), LF_D("inf", INFINITY),
             LF_B("yes", 1), LF_B("no", 0), LF_S("none", NULL), ((log_field_t){.key = "skipped", .type = LOGF_NONE}),
             ((log_field_t){.key = NULL, .type = LOGF_STR, .s = "no key"}));
    char *out = capture_end(&cap);
    REQUIRE(out);
    cJSON *j = parse_line(out);
    REQUIRE(j);
    CHECK_EQ_INT(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "neg")), -42);
    CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "ratio")) == 0.25);
    CHECK(cJSON_IsNull(cJSON_GetObjectItem(j, "nan")));
    CHECK(cJSON_IsNull(cJSON_GetObjectItem(j, "inf")));
    CHECK(cJSON_IsTrue(cJSON_GetObjectItem(j, "yes")));
    CHECK(cJSON_IsFalse(cJSON_GetObjectItem(j, "no")));
    CHECK(cJSON_IsNull(cJSON_GetObjectItem(j, "none")));
    CHECK(cJSON_GetObjectItem(j, "skipped") == NULL);
    CHECK(strstr(out, "no key") == NULL);
    cJSON_Delete(j);
    free(out);
}

TEST(null_logger_and_message_are_written_as_empty_strings)
{
    capture_t cap;
    log_init(LOG_INFO, NULL);
    capture_begin(&cap);
    log_emit(LOG_INFO, NULL, NULL, NULL, 3);
    char *out = capture_end(&cap);
    REQUIRE(out);
    cJSON *j = parse_line(out);
    REQUIRE(j);
    CHECK_EQ_STR(str_of(j, "logger"), "");
    CHECK_EQ_STR(str_of(j, "msg"), "");
    CHECK_EQ_STR(str_of(j, "company_id"), "");
    cJSON_Delete(j);
    free(out);
}

TEST(level_threshold_filters_lines_and_log_enabled_agrees)
{
    capture_t cap;
    log_init(LOG_WARN, "acme");
    CHECK(!log_enabled(LOG_DEBUG));
    CHECK(!log_enabled(LOG_INFO));
    CHECK(log_enabled(LOG_WARN));
    CHECK(log_enabled(LOG_ERROR));
    capture_begin(&cap);
    log_debug("t", "hidden-debug");
    log_info("t", "hidden-info");
    log_emit(LOG_INFO, "t", "hidden-direct", NULL, 0);
    log_warn("t", "shown-warn");
    log_error("t", "shown-error");
    char *out = capture_end(&cap);
    REQUIRE(out);
    CHECK(strstr(out, "hidden") == NULL);
    CHECK_CONTAINS(out, "\"level\":\"warn\",\"logger\":\"t\",\"msg\":\"shown-warn\"");
    CHECK_CONTAINS(out, "\"level\":\"error\",\"logger\":\"t\",\"msg\":\"shown-error\"");
    free(out);
    log_init(LOG_INFO, "acme");
}

TEST(log_level_parse_accepts_the_four_names_case_insensitively)
{
    log_level_t l = LOG_ERROR;
    CHECK(log_level_parse("debug", &l) == 0 && l == LOG_DEBUG);
    CHECK(log_level_parse("INFO", &l) == 0 && l == LOG_INFO);
    CHECK(log_level_parse("Warn", &l) == 0 && l == LOG_WARN);
    CHECK(log_level_parse("warning", &l) == 0 && l == LOG_WARN);
    CHECK(log_level_parse("error", &l) == 0 && l == LOG_ERROR);
    CHECK(log_level_parse("trace", &l) != 0);
    CHECK(log_level_parse("", &l) != 0);
    CHECK(log_level_parse(NULL, &l) != 0);
    CHECK(log_level_parse("info", NULL) != 0);
}

TEST(long_field_is_cut_at_8_kib_and_marked)
{
    size_t n = 100000;
    char *big = malloc(n + 1);
    REQUIRE(big);
    memset(big, 'a', n);
    big[n] = '\0';
    log_init(LOG_INFO, "acme");
    capture_t cap;
    capture_begin(&cap);
    log_info("t", "big", LF_S("payload", big), LF_S("after", "kept"));
    char *out = capture_end(&cap);
    REQUIRE(out);
    cJSON *j = parse_line(out);
    REQUIRE(j);
    const char *v = str_of(j, "payload");
    REQUIRE(v);
    CHECK(strlen(v) < 8192 + 32);
    CHECK(strncmp(v, big, 8192) == 0);
    CHECK_CONTAINS(v, "[truncated]");
    CHECK_EQ_STR(str_of(j, "after"), "kept");
    cJSON_Delete(j);
    free(out);
    free(big);
}

TEST(line_stays_valid_json_under_64_kib_when_fields_overflow_it)
{
    char *ctrl = malloc(8193);
    log_field_t f[20];
    REQUIRE(ctrl);
    memset(ctrl, 0x01, 8192); /* each byte escapes to six: \u0001 */
    ctrl[8192] = '\0';
    for (int i = 0; i < 20; i++)
        f[i] = LF_S(i % 2 ? "odd" : "even", ctrl);
    log_init(LOG_INFO, "acme");
    capture_t cap;
    capture_begin(&cap);
    log_emit(LOG_INFO, "t", "overflow", f, 20);
    log_emit(LOG_INFO, ctrl, ctrl, f, 20);
    char *out = capture_end(&cap);
    REQUIRE(out);
    char *second = strchr(out, '\n');
    REQUIRE(second);
    second++;
    size_t first_len = (size_t)(second - out);
    CHECK(first_len <= 65536);
    CHECK(strlen(second) <= 65536);
    char saved = *second;
    *second = '\0';
    cJSON *j = parse_line(out);
    *second = saved;
    CHECK(j != NULL);
    CHECK(cJSON_IsTrue(cJSON_GetObjectItem(j, "truncated")));
    cJSON_Delete(j);
    j = parse_line(second);
    CHECK(j != NULL);
    cJSON_Delete(j);
    free(out);
    free(ctrl);
}

typedef struct {
    int id;
} worker_arg_t;

static void *log_many(void *p)
{
    const worker_arg_t *a = p;
    for (int i = 0; i < 500; i++)
        log_info("thread", "concurrent line with some padding to make it longer than a few bytes",
                 LF_I("thread", a->id), LF_I("i", i), LF_S("pad", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"));
    return NULL;
}

TEST(concurrent_threads_never_interleave_lines)
{
    pthread_t th[4];
    worker_arg_t args[4];
    int counts[4] = {0};
    log_init(LOG_INFO, "acme");
    capture_t cap;
    capture_begin(&cap);
    for (int i = 0; i < 4; i++) {
        args[i].id = i;
        pthread_create(&th[i], NULL, log_many, &args[i]);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    char *out = capture_end(&cap);
    REQUIRE(out);
    int lines = 0;
    for (char *line = out, *nl; (nl = strchr(line, '\n')) != NULL; line = nl + 1) {
        char saved = nl[1];
        nl[1] = '\0';
        cJSON *j = parse_line(line);
        nl[1] = saved;
        if (!j) {
            testlib_fail(__FILE__, __LINE__, "line %d is not one JSON object", lines);
            break;
        }
        int t = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(j, "thread"));
        if (t >= 0 && t < 4)
            counts[t]++;
        cJSON_Delete(j);
        lines++;
    }
    CHECK_EQ_INT(lines, 2000);
    for (int i = 0; i < 4; i++)
        CHECK_EQ_INT(counts[i], 500);
    free(out);
}
