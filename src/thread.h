// thread.h: the compute thread pool owned by a session (never global).
//
// mor__pool_run(pool, fn, ctx) calls fn(ctx, ith, nth) once on each of the pool's nth threads,
// the caller's thread being ith = 0, and returns when all have finished. Work is split by
// output rows inside fn, so results do not depend on the thread count. Built with
// MOR_NO_THREADS the pool is the caller alone; with MOR_OPENMP the same function runs under an
// OpenMP parallel region instead of the pthread workers.
#ifndef MOR_THREAD_H
#define MOR_THREAD_H

typedef struct mor__pool mor__pool;
typedef void (*mor__task_fn)(void *ctx, int ith, int nth);

// n_threads >= 1 (1: no workers). Returns MOR_OK, MOR_E_NOMEM or MOR_E_THREAD.
int  mor__pool_create(mor__pool **out, int n_threads);
void mor__pool_free(mor__pool *p);
int  mor__pool_size(const mor__pool *p);
void mor__pool_run(mor__pool *p, mor__task_fn fn, void *ctx);

// Splits [0, n) into nth nearly equal parts; part ith is [*lo, *hi).
static inline void mor__split(long n, int ith, int nth, long *lo, long *hi) {
    long q = n / nth, r = n % nth;
    *lo = ith * q + (ith < r ? ith : r);
    *hi = *lo + q + (ith < r);
}

#endif
