// alloc.h: every allocation the library makes goes through an allocator: the C library's, or
// the host's (mor_allocator in mor.h) held by a model, a session or a scheduler.
//
// A NULL allocator, or one whose alloc is NULL, is the C library's. Sizes are checked for
// overflow here, so callers pass element counts and sizes as they are. A failed allocation
// returns NULL: the caller reports MOR_E_NOMEM and leaves its object as it was.
#ifndef MOR_ALLOC_H
#define MOR_ALLOC_H

#include "mor.h"

#include <stddef.h>

// n * elem bytes, 64-byte aligned (whole cache lines, for the SIMD kernels' rows); zeroed
// when `zero`. NULL on overflow or out of memory.
void *mor__alloc(const mor_allocator *a, size_t n, size_t elem, int zero);
// Grow or shrink a block from mor__alloc of old_n elements to n (contents kept up to the
// smaller size; new bytes are not zeroed). NULL on failure, with p left as it was.
void *mor__realloc(const mor_allocator *a, void *p, size_t old_n, size_t n, size_t elem);
// NULL is ignored.
void  mor__free(const mor_allocator *a, void *p);
// A NUL-terminated copy of s[0..n).
char *mor__strndup(const mor_allocator *a, const char *s, size_t n);
// 1 if the allocator is the host's.
int   mor__alloc_custom(const mor_allocator *a);

// An arena plan: one walk over an object's buffers that either only counts their bytes (base
// NULL) or carves them, in the same order and sizes, out of one block of that many bytes. The
// count is therefore exact by construction, and an object built this way is one allocation.
// Every buffer starts on a 64-byte boundary (the block itself is 64-aligned).
typedef struct {
    char    *base;   // the block being carved; NULL: count only
    uint64_t bytes;  // bytes planned so far
    int      fail;   // a size overflowed
} mor__plan;

// n elements of elem bytes; zeroed when `zero` (a buffer left unzeroed costs address space
// until it is written, not memory). NULL when counting or after an overflow.
void *mor__plan_take(mor__plan *p, uint64_t n, size_t elem, int zero);
// Frees a block carved by a plan of `bytes` (with mor__alloc from a).
void  mor__plan_free(const mor_allocator *a, void *block, uint64_t bytes);

#endif
