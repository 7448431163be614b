// thread.h: the compute thread pool owned by a session (never global).
//
// mor__pool_run(pool, fn, ctx) splits a task into parts and calls fn(ctx, part, n_parts, tid)
// once for every part, on whichever of the pool's threads grabs it first (tid < pool size
// identifies the thread, for per-thread scratch), and returns when every part is done. Work is
// split by output rows inside fn, so results do not depend on the thread count or on who ran
// which part. A thread that is not scheduled (a busy machine) simply takes no part: the caller
// does the rest instead of waiting for it. Built with MOR_NO_THREADS the pool is the caller
// alone; with MOR_OPENMP the parts run under an OpenMP parallel region.
#ifndef MOR_THREAD_H
#define MOR_THREAD_H

#include "mor.h"

typedef struct mor__pool mor__pool;
typedef void (*mor__task_fn)(void *ctx, int part, int n_parts, int tid);

// n_threads >= 1 (1: no workers). Returns MOR_OK, MOR_E_NOMEM or MOR_E_THREAD.
int  mor__pool_create(mor__pool **out, int n_threads);
// The same, with the pool's memory from `alloc` (NULL: libc); thread stacks are the system's.
int  mor__pool_create_with(mor__pool **out, int n_threads, const mor_allocator *alloc);
void mor__pool_free(mor__pool *p);
int  mor__pool_size(const mor__pool *p);
void mor__pool_run(mor__pool *p, mor__task_fn fn, void *ctx);
// The same with per_thread parts for each thread (mor__pool_run: 4, so a slow thread costs
// little): n_parts = per_thread * pool size (the pthread pool caps it at 16384), or 1 when the
// caller runs alone.
// 1 suits tasks whose every part repeats set-up work, such as quantizing the input of a product.
void mor__pool_run_parts(mor__pool *p, mor__task_fn fn, void *ctx, int per_thread);

// Splits [0, n) into nth nearly equal parts; part ith is [*lo, *hi).
static inline void mor__split(long n, int ith, int nth, long *lo, long *hi) {
    long q = n / nth, r = n % nth;
    *lo = ith * q + (ith < r ? ith : r);
    *hi = *lo + q + (ith < r);
}

#endif
