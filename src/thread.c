// thread.c: a small pthread pool for the compute loops, owned by a session.
//
// Synchronisation invariants:
// - One 64-bit atomic word, `work`, hands tasks out: generation (bits 32-63), part count
//   n_parts (bits 16-31) and the next unclaimed part (bits 0-15). A thread claims a part with
//   one fetch_add(work, 1): the value it gets back names the task (its generation and n_parts)
//   and the part it now owns, all from one atomic read, so a thread can never pair a part index
//   of one task with the part count of another. An index >= n_parts claims nothing (the task is
//   fully handed out). Each thread overshoots at most once per generation (it then waits for a
//   new one), so the index stays below n_parts + pool size <= 2 * MAX_PARTS < 2^16 and never
//   carries into n_parts.
// - The task's descriptor, fn and ctx, is plain data written by mor__pool_run_parts() before it
//   publishes the new `work` value (a sequentially consistent store, so a release). A thread
//   reads fn/ctx only after its fetch_add (acquire) claimed a part of that generation: the
//   fetch_add reads from that store or a later fetch_add of its release sequence, so fn/ctx of
//   that generation are visible. They cannot change while it runs the part: the caller rewrites
//   them only for the next task, which starts after it saw `done` reach n_parts (acquire), and
//   each owner reads fn/ctx before adding its part to `done` (release). A stale thread, one
//   that is still claiming from a finished task, only increments `work` past n_parts: it reads
//   no descriptor and does no work, and the caller's store of the next task's `work` value
//   simply replaces what it added; if its fetch_add lands on the new value instead, it owns a
//   part of the new task, which is as good as any.
// - `done` is reset (relaxed) before `work` is published, and only owners of a part of the
//   current generation add to it, so it counts exactly this task's parts; the caller does not
//   return before done == n_parts, so ctx outlives every use of it. Only the thread that owns
//   the session calls mor__pool_run(): tasks never overlap.
// - A worker spins on the generation in `work` for a while, then sleeps on `cv`. Before
//   sleeping it increments `sleepers` and re-reads `work`, both under `mu`; the caller, after
//   storing `work`, reads `sleepers` and broadcasts under `mu` only when someone sleeps. With
//   sequentially consistent accesses one of the two always sees the other's write, so no
//   wake-up is lost, and back-to-back tasks (a decode step) run without any system call.
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

// The layout of `work`: generation, part count and next part.
#define WORK_GEN(w)   ((uint32_t)((w) >> 32))
#define WORK_PARTS(w) ((int)(((w) >> 16) & 0xffff))
#define WORK_NEXT(w)  ((int)((w) & 0xffff))
// Parts of one task, and threads of one pool, at most: the part index of `work` then stays below
// 2 * MAX_PARTS (see the invariants) and fits its 16 bits.
#define MAX_PARTS (1 << 14)

struct mor__pool {
    int               n;
    mor_allocator     alloc;
    pthread_t        *threads;
    struct worker    *workers;
    // The task being handed out: written by the caller only while no part is owned.
    mor__task_fn      fn;
    void             *ctx;
    _Atomic uint64_t  work;
    _Atomic int       done;
    _Atomic int       sleepers;
    _Atomic int       stop;
    pthread_mutex_t   mu;
    pthread_cond_t    cv;
};

struct worker {
    mor__pool *pool;
    int        ith;
};

// Claims and runs parts of the task in `work` until none is left; returns its generation.
static uint32_t run_parts(mor__pool *p, int tid) {
    for (;;) {
        const uint64_t w = atomic_fetch_add_explicit(&p->work, 1, memory_order_acquire);
        const int k = WORK_NEXT(w), n = WORK_PARTS(w);
        if (k >= n) return WORK_GEN(w);
        p->fn(p->ctx, k, n, tid);  // owned part: fn/ctx stay as they are until done == n
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
    }
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    mor__pool *p = w->pool;
    uint32_t seen = 0;
    for (;;) {
        int spins = 0;
        while (WORK_GEN(atomic_load(&p->work)) == seen && !atomic_load(&p->stop)) {
            if (++spins < SPIN_LIMIT) {
                cpu_relax();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while (WORK_GEN(atomic_load(&p->work)) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
            spins = 0;
        }
        if (atomic_load(&p->stop)) return NULL;
        seen = run_parts(p, w->ith);
    }
}

int mor__pool_create_with(mor__pool **out, int n, const mor_allocator *a) {
    *out = NULL;
    mor__pool *p = mor__alloc(a, 1, sizeof *p, 1);
    if (!p) return MOR_E_NOMEM;
    if (a) p->alloc = *a;
    p->n = n < 1 ? 1 : n > MAX_PARTS ? MAX_PARTS : n;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (p->n > 1) {
        p->threads = mor__alloc(a, (size_t)p->n, sizeof *p->threads, 1);
        p->workers = mor__alloc(a, (size_t)p->n, sizeof *p->workers, 1);
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
    mor__free(&p->alloc, p->threads);
    mor__free(&p->alloc, p->workers);
    const mor_allocator a = p->alloc;
    mor__free(&a, p);
}

int mor__pool_size(const mor__pool *p) { return p ? p->n : 1; }

void mor__pool_run(mor__pool *p, mor__task_fn fn, void *ctx) { mor__pool_run_parts(p, fn, ctx, 4); }

void mor__pool_run_parts(mor__pool *p, mor__task_fn fn, void *ctx, int per_thread) {
    if (!p || p->n == 1) {
        fn(ctx, 0, 1, 0);
        return;
    }
    int parts = (per_thread < 1 ? 1 : per_thread);
    parts = parts > MAX_PARTS / p->n ? MAX_PARTS : parts * p->n;
    // No part of the previous task is owned any more (done reached its count): the descriptor
    // is free to rewrite. Then publish generation + 1 with the part count and part 0.
    p->fn = fn;
    p->ctx = ctx;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    const uint32_t gen = WORK_GEN(atomic_load_explicit(&p->work, memory_order_relaxed)) + 1;
    atomic_store(&p->work, (uint64_t)gen << 32 | (uint64_t)parts << 16);
    if (atomic_load(&p->sleepers)) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    run_parts(p, 0);
    // Parts still running on workers: spin briefly, then yield the core to them.
    for (int spins = 0; atomic_load_explicit(&p->done, memory_order_acquire) < parts; spins++) {
        if (spins < 4096) cpu_relax();
        else sched_yield();
    }
}

#else  // no pthread workers: the caller alone, or OpenMP

struct mor__pool {
    int n;
};

int mor__pool_create_with(mor__pool **out, int n, const mor_allocator *a) {
    *out = NULL;
    mor__pool *p = mor__alloc(a, 1, sizeof *p, 1);
    if (!p) return MOR_E_NOMEM;
    if (a) p->alloc = *a;
#if defined(MOR_OPENMP)
    p->n = n < 1 ? 1 : n;
#else
    p->n = 1;  // a build without threads runs everything on the caller's thread
    (void)n;
#endif
    *out = p;
    return MOR_OK;
}

void mor__pool_free(mor__pool *p) {
    if (!p) return;
    const mor_allocator a = p->alloc;
    mor__free(&a, p);
}
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

int mor__pool_create(mor__pool **out, int n) { return mor__pool_create_with(out, n, NULL); }
