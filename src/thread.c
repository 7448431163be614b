// thread.c: a small pthread pool for the compute loops, owned by a session.
//
// Synchronisation invariants:
// - A task is split into `n_parts` parts. mor__pool_run() writes fn/ctx/n_parts, sets `done`
//   and then `next` to 0 (sequentially consistent, after fn/ctx), then increments `gen`. Every
//   thread takes parts with fetch_add(next) until it gets an index >= n_parts, runs them and
//   adds them to `done`; the caller takes parts too, then spins until done == n_parts. A worker
//   that is late only finds no part left, so a descheduled thread never stalls the task. A
//   stale worker (one that saw an older gen) can only take parts after `next` was reset for
//   the current task, and then reads this task's fn/ctx (stored before the reset), so it does
//   useful work; the caller does not return before every taken part is done, so ctx outlives
//   its use. Only the thread that owns the session calls mor__pool_run(): tasks never overlap.
// - A worker spins on `gen` for a while, then sleeps on `cv`. Before sleeping it increments
//   `sleepers` and re-reads `gen`, both under `mu`; the caller, after incrementing `gen`, reads
//   `sleepers` and broadcasts under `mu` only when someone sleeps. With sequentially consistent
//   atomics one of the two always sees the other's write, so no wake-up is lost, and
//   back-to-back tasks (a decode step) run without any system call.
// - `stop` is set under `mu` by mor__pool_free() before the final broadcast and join.
#include "thread.h"
#include "internal.h"

#if defined(MOR_OPENMP)
#include <omp.h>
#endif

#if !defined(MOR_NO_THREADS) && !defined(MOR_OPENMP)
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#define SPIN_LIMIT (1 << 15)

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

struct mor__pool {
    int               n;
    pthread_t        *threads;
    struct worker    *workers;
    _Atomic uint64_t  gen;
    _Atomic int       next;
    _Atomic int       done;
    int               n_parts;
    _Atomic int       sleepers;
    _Atomic int       stop;
    mor__task_fn      fn;
    void             *ctx;
    pthread_mutex_t   mu;
    pthread_cond_t    cv;
};

struct worker {
    mor__pool *pool;
    int        ith;
};

static void *worker_main(void *arg) {
    struct worker *w = arg;
    mor__pool *p = w->pool;
    uint64_t seen = 0;
    for (;;) {
        uint64_t g;
        int spins = 0;
        while ((g = atomic_load(&p->gen)) == seen && !atomic_load(&p->stop)) {
            if (++spins < SPIN_LIMIT) {
                cpu_relax();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while (atomic_load(&p->gen) == seen && !atomic_load(&p->stop)) pthread_cond_wait(&p->cv, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
            spins = 0;
        }
        if (atomic_load(&p->stop)) return NULL;
        seen = g;
        for (int k; (k = atomic_fetch_add(&p->next, 1)) < p->n_parts;) {
            p->fn(p->ctx, k, p->n_parts, w->ith);
            atomic_fetch_add(&p->done, 1);
        }
    }
}

int mor__pool_create(mor__pool **out, int n) {
    *out = NULL;
    mor__pool *p = calloc(1, sizeof *p);
    if (!p) return MOR_E_NOMEM;
    p->n = n < 1 ? 1 : n;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (p->n > 1) {
        p->threads = calloc((size_t)p->n, sizeof *p->threads);
        p->workers = calloc((size_t)p->n, sizeof *p->workers);
        if (!p->threads || !p->workers) {
            p->n = 1;
            mor__pool_free(p);
            return MOR_E_NOMEM;
        }
        // Prompt-size kernels keep a few tens of KiB of blocks on the stack: ask for 1 MiB rather
        // than rely on the C library's default (128 KiB on some).
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 1u << 20);
        for (int i = 1; i < p->n; i++) {
            p->workers[i] = (struct worker){p, i};
            if (pthread_create(&p->threads[i], &attr, worker_main, &p->workers[i]) != 0) {
                pthread_attr_destroy(&attr);
                p->n = i;  // free joins the ones started
                mor__pool_free(p);
                return MOR_E_THREAD;
            }
        }
        pthread_attr_destroy(&attr);
    }
    *out = p;
    return MOR_OK;
}

void mor__pool_free(mor__pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->threads);
    free(p->workers);
    free(p);
}

int mor__pool_size(const mor__pool *p) { return p ? p->n : 1; }

void mor__pool_run(mor__pool *p, mor__task_fn fn, void *ctx) { mor__pool_run_parts(p, fn, ctx, 4); }

void mor__pool_run_parts(mor__pool *p, mor__task_fn fn, void *ctx, int per_thread) {
    if (!p || p->n == 1) {
        fn(ctx, 0, 1, 0);
        return;
    }
    const int parts = (per_thread < 1 ? 1 : per_thread) * p->n;
    p->fn = fn;
    p->ctx = ctx;
    p->n_parts = parts;
    atomic_store(&p->done, 0);
    atomic_store(&p->next, 0);
    atomic_fetch_add(&p->gen, 1);
    if (atomic_load(&p->sleepers)) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    for (int k; (k = atomic_fetch_add(&p->next, 1)) < parts;) {
        fn(ctx, k, parts, 0);
        atomic_fetch_add(&p->done, 1);
    }
    // Parts still running on workers: spin briefly, then yield the core to them.
    for (int spins = 0; atomic_load(&p->done) < parts; spins++) {
        if (spins < 4096) cpu_relax();
        else sched_yield();
    }
}

#else  // no pthread workers: the caller alone, or OpenMP

struct mor__pool {
    int n;
};

int mor__pool_create(mor__pool **out, int n) {
    *out = NULL;
    mor__pool *p = calloc(1, sizeof *p);
    if (!p) return MOR_E_NOMEM;
#if defined(MOR_OPENMP)
    p->n = n < 1 ? 1 : n;
#else
    p->n = 1;  // a build without threads runs everything on the caller's thread
    (void)n;
#endif
    *out = p;
    return MOR_OK;
}

void mor__pool_free(mor__pool *p) { free(p); }
int  mor__pool_size(const mor__pool *p) { return p ? p->n : 1; }

void mor__pool_run(mor__pool *p, mor__task_fn fn, void *ctx) { mor__pool_run_parts(p, fn, ctx, 4); }

void mor__pool_run_parts(mor__pool *p, mor__task_fn fn, void *ctx, int per_thread) {
#if defined(MOR_OPENMP)
    if (p && p->n > 1) {
        const int parts = (per_thread < 1 ? 1 : per_thread) * p->n;
#pragma omp parallel for schedule(dynamic, 1) num_threads(p->n)
        for (int k = 0; k < parts; k++) fn(ctx, k, parts, omp_get_thread_num());
        return;
    }
#endif
    (void)p, (void)per_thread;
    fn(ctx, 0, 1, 0);
}

#endif
