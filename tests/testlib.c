/* testlib.c - runner for TEST() cases: `exe` runs all, `exe name` runs one; exit 1 when any check failed. */
#include "testlib.h"

#include <stdarg.h>
#include <stdlib.h>

#define MAX_CASES 256

static struct {
    const char *name;
    test_fn fn;
} cases[MAX_CASES];
static int ncases;
static int failures;

void testlib_register(const char *name, test_fn fn)
{
    if (ncases < MAX_CASES) {
        cases[ncases].name = name;
        cases[ncases].fn = fn;
        ncases++;
    }
}

void testlib_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "FAIL %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    failures++;
}

int testlib_failed(void)
{
    return failures;
}

int main(int argc, char **argv)
{
    int ran = 0, failed_cases = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 0; i < ncases; i++) {
        if (argc > 1 && strcmp(argv[1], cases[i].name) != 0)
            continue;
        int before = failures;
        fprintf(stderr, "RUN  %s\n", cases[i].name);
        cases[i].fn();
        ran++;
        if (failures != before) {
            failed_cases++;
            fprintf(stderr, "FAILED %s\n", cases[i].name);
        } else {
            fprintf(stderr, "OK   %s\n", cases[i].name);
        }
    }
    if (ran == 0) {
        fprintf(stderr, "no test case named %s\n", argc > 1 ? argv[1] : "(any)");
        return 2;
    }
    fprintf(stderr, "%d passed, %d failed\n", ran - failed_cases, failed_cases);
    return failed_cases ? 1 : 0;
}
