// harness.h: the test harness: TEST() functions, ASSERT_* macros and a TAP runner.
//
// Each tests/test-<module>.c is one executable. It defines tests with TEST(name) and ends with
// TEST_MAIN(name, name, ...). Running it with no argument runs every test; with a name, only
// that one. A test that cannot run here (hardware or build lacking) calls TEST_SKIP(reason).
// Output is TAP plus a closing "N passed, N failed, N skipped" line. MOR_TEST_SEED overrides
// the seed given to tests that draw random inputs (printed on failure).
#ifndef MOR_TEST_HARNESS_H
#define MOR_TEST_HARNESS_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*test_fn)(void);
typedef struct {
    const char *name;
    test_fn     fn;
} test_entry;

static int      test__failed;
static int      test__skipped;
static char     test__skip_reason[200];
static uint64_t test__seed = 0x6d6f7221u;

#define TEST(name) static void test_##name(void)

#define TEST__FAIL(...)                                                                 \
    do {                                                                                \
        printf("#   %s:%d: ", __FILE__, __LINE__);                                      \
        printf(__VA_ARGS__);                                                            \
        printf("\n");                                                                   \
        test__failed = 1;                                                               \
        return;                                                                         \
    } while (0)

// Ends the running test as skipped: TAP "ok N - name # SKIP reason" (printf-style reason).
#define TEST_SKIP(...)                                                                  \
    do {                                                                                \
        snprintf(test__skip_reason, sizeof test__skip_reason, __VA_ARGS__);             \
        test__skipped = 1;                                                              \
        return;                                                                         \
    } while (0)

#define ASSERT(cond)                                                                    \
    do {                                                                                \
        if (!(cond)) TEST__FAIL("assertion failed: %s", #cond);                         \
    } while (0)
#define ASSERT_EQ(a, b)                                                                 \
    do {                                                                                \
        long long a_ = (long long)(a), b_ = (long long)(b);                             \
        if (a_ != b_) TEST__FAIL("%s == %s: %lld != %lld", #a, #b, a_, b_);             \
    } while (0)
#define ASSERT_NE(a, b)                                                                 \
    do {                                                                                \
        long long a_ = (long long)(a), b_ = (long long)(b);                             \
        if (a_ == b_) TEST__FAIL("%s != %s: both %lld", #a, #b, a_);                    \
    } while (0)
#define ASSERT_LT(a, b)                                                                 \
    do {                                                                                \
        double a_ = (double)(a), b_ = (double)(b);                                      \
        if (!(a_ < b_)) TEST__FAIL("%s < %s: %g >= %g", #a, #b, a_, b_);                \
    } while (0)
#define ASSERT_LE(a, b)                                                                 \
    do {                                                                                \
        double a_ = (double)(a), b_ = (double)(b);                                      \
        if (!(a_ <= b_)) TEST__FAIL("%s <= %s: %g > %g", #a, #b, a_, b_);               \
    } while (0)
#define ASSERT_OK(expr)                                                                 \
    do {                                                                                \
        int s_ = (expr);                                                                \
        if (s_ != 0) TEST__FAIL("%s returned %d (%s)", #expr, s_, mor_status_name(s_)); \
    } while (0)
#define ASSERT_STATUS(expr, want)                                                       \
    do {                                                                                \
        int s_ = (expr), w_ = (want);                                                   \
        if (s_ != w_)                                                                   \
            TEST__FAIL("%s returned %d (%s), expected %d (%s)", #expr, s_,              \
                       mor_status_name(s_), w_, mor_status_name(w_));                   \
    } while (0)
#define ASSERT_NEAR(a, b, tol)                                                          \
    do {                                                                                \
        double a_ = (double)(a), b_ = (double)(b), t_ = (double)(tol);                  \
        if (!(fabs(a_ - b_) <= t_)) TEST__FAIL("|%s - %s| = %g > %g", #a, #b, fabs(a_ - b_), t_); \
    } while (0)
#define ASSERT_STR_CONTAINS(hay, needle)                                                \
    do {                                                                                \
        const char *h_ = (hay), *n_ = (needle);                                         \
        if (!h_ || !strstr(h_, n_)) TEST__FAIL("\"%s\" does not contain \"%s\"", h_ ? h_ : "(null)", n_); \
    } while (0)

static inline uint64_t test_seed(void) { return test__seed; }

// splitmix64: deterministic test randomness.
static inline uint64_t test_rand(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static inline float test_randf(uint64_t *s) { // uniform in [-1, 1)
    return (float)((test_rand(s) >> 40) * (1.0 / 8388608.0) - 1.0);
}

// Directory holding test data (tests/data), overridable with MOR_TEST_DATA.
static inline const char *test_data_dir(void) {
    const char *d = getenv("MOR_TEST_DATA");
    return d ? d : "tests/data";
}
static inline const char *test_path(char *buf, size_t n, const char *file) {
    int r = snprintf(buf, n, "%s/%s", test_data_dir(), file);
    if (r < 0 || (size_t)r >= n) buf[0] = 0;  // too long: an empty path fails to open
    return buf;
}

static inline int test__run(const test_entry *tests, int n, int argc, char **argv) {
    const char *only = argc > 1 ? argv[1] : NULL;
    const char *seed = getenv("MOR_TEST_SEED");
    if (seed) test__seed = strtoull(seed, NULL, 0);
    int n_run = 0, n_fail = 0, n_skip = 0;
    for (int i = 0; i < n; i++)
        if (!only || strcmp(only, tests[i].name) == 0) n_run++;
    printf("1..%d\n", n_run);
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (only && strcmp(only, tests[i].name) != 0) continue;
        test__failed = 0;
        test__skipped = 0;
        tests[i].fn();
        k++;
        if (test__failed) {
            n_fail++;
            printf("not ok %d - %s (seed %llu)\n", k, tests[i].name, (unsigned long long)test__seed);
        } else if (test__skipped) {
            n_skip++;
            printf("ok %d - %s # SKIP %s\n", k, tests[i].name, test__skip_reason);
        } else {
            printf("ok %d - %s\n", k, tests[i].name);
        }
        fflush(stdout);
    }
    printf("%d passed, %d failed, %d skipped\n", n_run - n_fail - n_skip, n_fail, n_skip);
    return n_fail ? 1 : (n_run ? 0 : 1);
}

#define TEST__E1(n) {#n, test_##n},
#define TEST__MAP(M, ...) TEST__MAPN(__VA_ARGS__, TEST__M16, TEST__M15, TEST__M14, TEST__M13, TEST__M12, \
    TEST__M11, TEST__M10, TEST__M9, TEST__M8, TEST__M7, TEST__M6, TEST__M5, TEST__M4, TEST__M3, TEST__M2, TEST__M1)(M, __VA_ARGS__)
#define TEST__MAPN(_1,_2,_3,_4,_5,_6,_7,_8,_9,_10,_11,_12,_13,_14,_15,_16,N,...) N
#define TEST__M1(M,a) M(a)
#define TEST__M2(M,a,...) M(a) TEST__M1(M,__VA_ARGS__)
#define TEST__M3(M,a,...) M(a) TEST__M2(M,__VA_ARGS__)
#define TEST__M4(M,a,...) M(a) TEST__M3(M,__VA_ARGS__)
#define TEST__M5(M,a,...) M(a) TEST__M4(M,__VA_ARGS__)
#define TEST__M6(M,a,...) M(a) TEST__M5(M,__VA_ARGS__)
#define TEST__M7(M,a,...) M(a) TEST__M6(M,__VA_ARGS__)
#define TEST__M8(M,a,...) M(a) TEST__M7(M,__VA_ARGS__)
#define TEST__M9(M,a,...) M(a) TEST__M8(M,__VA_ARGS__)
#define TEST__M10(M,a,...) M(a) TEST__M9(M,__VA_ARGS__)
#define TEST__M11(M,a,...) M(a) TEST__M10(M,__VA_ARGS__)
#define TEST__M12(M,a,...) M(a) TEST__M11(M,__VA_ARGS__)
#define TEST__M13(M,a,...) M(a) TEST__M12(M,__VA_ARGS__)
#define TEST__M14(M,a,...) M(a) TEST__M13(M,__VA_ARGS__)
#define TEST__M15(M,a,...) M(a) TEST__M14(M,__VA_ARGS__)
#define TEST__M16(M,a,...) M(a) TEST__M15(M,__VA_ARGS__)

// TEST_MAIN(a, b, c): up to 16 names per call. For more, use TEST_LIST + TEST_MAIN_LIST.
#define TEST_MAIN(...)                                                                  \
    int main(int argc, char **argv) {                                                   \
        static const test_entry tests_[] = {TEST__MAP(TEST__E1, __VA_ARGS__)};          \
        return test__run(tests_, (int)(sizeof tests_ / sizeof tests_[0]), argc, argv);  \
    }
// For longer lists: static const test_entry tests_[] = { TEST_LIST(a,b,...) TEST_LIST(...) };
#define TEST_LIST(...) TEST__MAP(TEST__E1, __VA_ARGS__)
#define TEST_MAIN_LIST(arr)                                                             \
    int main(int argc, char **argv) {                                                   \
        return test__run(arr, (int)(sizeof arr / sizeof arr[0]), argc, argv);           \
    }

#endif
