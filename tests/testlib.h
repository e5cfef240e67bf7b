/* testlib.h - a tiny test runner: TEST(name) cases, CHECK macros, one case per process when named on argv. */
#ifndef MES_TESTLIB_H
#define MES_TESTLIB_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*test_fn)(void);

void testlib_register(const char *name, test_fn fn);
/* Marks the current case failed and prints where. */
void testlib_fail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int testlib_failed(void);

/* Each case registers itself before main() runs. CMake scans for lines starting with TEST(name). */
#define TEST(name)                                                                                                     \
    static void test_##name(void);                                                                                     \
    __attribute__((constructor)) static void test_register_##name(void)                                                \
    {                                                                                                                  \
        testlib_register(#name, test_##name);                                                                          \
    }                                                                                                                  \
    static void test_##name(void)

/* Ends the case as skipped (CTest SKIP_RETURN_CODE 77) and says why: for a machine that lacks what it needs. */
#define SKIP(reason)                                                                                                   \
    do {                                                                                                               \
        printf("SKIPPED %s: %s\n", __func__, (reason));                                                                \
        fflush(stdout);                                                                                                \
        exit(77);                                                                                                      \
    } while (0)

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond))                                                                                                   \
            testlib_fail(__FILE__, __LINE__, "CHECK(%s)", #cond);                                                      \
    } while (0)
#define REQUIRE(cond)                                                                                                  \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            testlib_fail(__FILE__, __LINE__, "REQUIRE(%s)", #cond);                                                    \
            return;                                                                                                    \
        }                                                                                                              \
    } while (0)
#define CHECK_EQ_INT(a, b)                                                                                             \
    do {                                                                                                               \
        long long a__ = (long long)(a), b__ = (long long)(b);                                                          \
        if (a__ != b__)                                                                                                \
            testlib_fail(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a, #b, a__, b__);                              \
    } while (0)
#define CHECK_EQ_STR(a, b)                                                                                             \
    do {                                                                                                               \
        const char *a__ = (a), *b__ = (b);                                                                             \
        if (!a__ || !b__ || strcmp(a__, b__) != 0)                                                                     \
            testlib_fail(__FILE__, __LINE__, "%s == %s: \"%s\" != \"%s\"", #a, #b, a__ ? a__ : "(null)",               \
                         b__ ? b__ : "(null)");                                                                        \
    } while (0)
#define CHECK_CONTAINS(hay, needle)                                                                                    \
    do {                                                                                                               \
        const char *h__ = (hay), *n__ = (needle);                                                                      \
        if (!h__ || !strstr(h__, n__))                                                                                 \
            testlib_fail(__FILE__, __LINE__, "\"%s\" not found in %s", n__, #hay);                                     \
    } while (0)

#endif
