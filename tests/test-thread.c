// test-thread.c: the compute thread pool (src/thread.c) driven directly through mor__pool_*.
//
// Many small tasks back to back, each with its own function, context and part count, as a decode
// step issues them: every part of every task must run exactly once, with the task's own fn, ctx
// and n_parts, on a thread id below the pool size, and be finished when mor__pool_run returns
// (the caller then rewrites the context with plain stores). Run under ThreadSanitizer by
// `make tsan`, where a worker reading one task's descriptor while the caller writes the next is
// reported as a data race even when the counts happen to come out right.
#include "harness.h"
#include "mor.h"
#include "thread.h"

#include <stdatomic.h>
#include <time.h>

#define MAX_PARTS   64
#define MAX_THREADS 8
#define N_CTX       3  // contexts are reused round-robin, so a stale read finds a live one

typedef struct {
    int          task;             // the task this context currently belongs to
    int          kind;             // 0: run with fn_a, 1: with fn_b
    int          n_parts;          // the part count the pool should pass
    int          n_threads;        // pool size: every tid must be below it
    int          out[MAX_PARTS];   // plain stores, one per part: ordered by the pool alone
    _Atomic int  runs[MAX_PARTS];  // how many times each part ran
    _Atomic int  bad;              // wrong fn, n_parts, part or tid seen
    int          scratch[MAX_THREADS][16];  // per-thread scratch, as kernels use it
} task_ctx;

static void check_and_mark(task_ctx *c, int kind, int part, int n_parts, int tid) {
    if (c->kind != kind || n_parts != c->n_parts || part < 0 || part >= n_parts || tid < 0 ||
        tid >= c->n_threads) {
        atomic_fetch_add(&c->bad, 1);
        return;
    }
    // Per-thread scratch: only one part at a time may use a tid.
    int *s = c->scratch[tid];
    for (int i = 0; i < 16; i++) s[i] = c->task + part + i;
    int sum = 0;
    for (int i = 0; i < 16; i++) sum += s[i] - i;
    if (sum != 16 * (c->task + part)) atomic_fetch_add(&c->bad, 1);
    c->out[part] = c->task * 1000 + part * 10 + kind;
    atomic_fetch_add_explicit(&c->runs[part], 1, memory_order_relaxed);
}

static void fn_a(void *ctx, int part, int n_parts, int tid) { check_and_mark(ctx, 0, part, n_parts, tid); }
static void fn_b(void *ctx, int part, int n_parts, int tid) {
    // A little more work so parts overlap tasks' ends and starts at different times.
    volatile int x = 0;
    for (int i = 0; i < (part & 3) * 50; i++) x += i;
    (void)x;
    check_and_mark(ctx, 1, part, n_parts, tid);
}

// The part count the pool promises for per_thread: per_thread (at least 1) per thread, or a
// single part when the caller runs alone.
static int expected_parts(int size, int per_thread) {
    if (size == 1) return 1;
    return (per_thread < 1 ? 1 : per_thread) * size;
}

// n_tasks tasks on a pool of n threads; returns the number of faults found (0 when correct).
static long hammer(int n, int n_tasks, uint64_t *seed) {
    mor__pool *p = NULL;
    if (mor__pool_create(&p, n) != MOR_OK) return -1;
    const int size = mor__pool_size(p);
    static task_ctx ctx[N_CTX];
    long faults = 0;
    for (int t = 0; t < n_tasks; t++) {
        task_ctx *c = &ctx[t % N_CTX];
        // Plain stores into a context a worker of an earlier task must no longer touch.
        const int per_thread = (int)(test_rand(seed) % 6);  // 0..5; 0 and 1 both give one each
        c->task = t;
        c->kind = (int)(test_rand(seed) & 1);
        c->n_parts = expected_parts(size, per_thread);
        c->n_threads = size;
        if (c->n_parts > MAX_PARTS) return -1;
        for (int k = 0; k < MAX_PARTS; k++) {
            c->out[k] = -1;
            atomic_store_explicit(&c->runs[k], 0, memory_order_relaxed);
        }
        atomic_store_explicit(&c->bad, 0, memory_order_relaxed);
        mor__task_fn fn = c->kind ? fn_b : fn_a;
        if (per_thread == 4 && (t & 1)) mor__pool_run(p, fn, c);  // mor__pool_run: 4 per thread
        else mor__pool_run_parts(p, fn, c, per_thread);
        // Everything is done on return: read the results with plain loads.
        if (atomic_load_explicit(&c->bad, memory_order_relaxed)) faults++;
        for (int k = 0; k < MAX_PARTS; k++) {
            const int runs = atomic_load_explicit(&c->runs[k], memory_order_relaxed);
            const int want = k < c->n_parts;
            if (runs != want) faults++;
            if (want && c->out[k] != t * 1000 + k * 10 + c->kind) faults++;
        }
    }
    mor__pool_free(p);
    return faults;
}

// 2 threads (the machine's usual count), then more threads than this machine may have cores, so
// workers are descheduled mid-task and come back stale.
TEST(back_to_back_tasks) {
    uint64_t seed = test_seed();
    static const int sizes[] = {2, 3, 4, 8};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        const long f = hammer(sizes[i], sizes[i] <= 4 ? 20000 : 4000, &seed);
        if (f) printf("#   pool of %d threads: %ld faults\n", sizes[i], f);
        ASSERT_EQ(f, 0);
    }
}

// A pool of one thread (or a build without threads) runs the task on the caller as one part.
TEST(single_thread_pool) {
    uint64_t seed = test_seed();
    ASSERT_EQ(hammer(1, 1000, &seed), 0);
    mor__pool *p = NULL;
    ASSERT_OK(mor__pool_create(&p, 1));
    ASSERT_EQ(mor__pool_size(p), 1);
    mor__pool_free(p);
    ASSERT_EQ(mor__pool_size(NULL), 1);
    mor__pool_free(NULL);
}

// Workers that went to sleep (a pause longer than their spin) wake for the next task.
TEST(wake_after_idle) {
    uint64_t seed = test_seed();
    mor__pool *p = NULL;
    ASSERT_OK(mor__pool_create(&p, 3));
    static task_ctx c;
    for (int round = 0; round < 5; round++) {
        // Let the workers give up spinning and sleep.
        nanosleep(&(struct timespec){0, 30 * 1000 * 1000}, NULL);
        c.task = round;
        c.kind = (int)(test_rand(&seed) & 1);
        c.n_threads = mor__pool_size(p);
        c.n_parts = expected_parts(c.n_threads, 2);
        for (int k = 0; k < MAX_PARTS; k++) atomic_store(&c.runs[k], 0);
        mor__pool_run_parts(p, c.kind ? fn_b : fn_a, &c, 2);
        ASSERT_EQ(atomic_load(&c.bad), 0);
        for (int k = 0; k < MAX_PARTS; k++) ASSERT_EQ(atomic_load(&c.runs[k]), k < c.n_parts);
    }
    mor__pool_free(p);
}

TEST_MAIN(back_to_back_tasks, single_thread_pool, wake_after_idle)
