// alloc.c: the allocator indirection (alloc.h).
#include "alloc.h"
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#define ALIGN 64

// Under AddressSanitizer every buffer carved from a plan's block is followed by a poisoned
// redzone, so an overflow from one buffer into the next is reported as it would be between
// separate allocations.
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MOR__ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) && !defined(MOR__ASAN)
#define MOR__ASAN 1
#endif
#ifdef MOR__ASAN
#include <sanitizer/asan_interface.h>
#define REDZONE ALIGN
#else
#define REDZONE 0
#endif

int mor__alloc_custom(const mor_allocator *a) { return a && a->alloc && a->free; }

static int bytes_of(size_t n, size_t elem, size_t *out) {
    size_t b;
    if (__builtin_mul_overflow(n ? n : 1, elem ? elem : 1, &b) || b > SIZE_MAX - ALIGN) return 1;
    *out = (b + ALIGN - 1) & ~(size_t)(ALIGN - 1);
    return 0;
}

void *mor__alloc(const mor_allocator *a, size_t n, size_t elem, int zero) {
    size_t b;
    if (bytes_of(n, elem, &b)) return NULL;
    void *p = mor__alloc_custom(a) ? a->alloc(a->user, b, ALIGN) : aligned_alloc(ALIGN, b);
    if (p && zero) memset(p, 0, b);
    return p;
}

void mor__free(const mor_allocator *a, void *p) {
    if (!p) return;
    if (mor__alloc_custom(a)) a->free(a->user, p);
    else free(p);
}

void *mor__realloc(const mor_allocator *a, void *p, size_t old_n, size_t n, size_t elem) {
    if (!p) return mor__alloc(a, n, elem, 0);
    size_t ob, nb;
    if (bytes_of(n, elem, &nb) || bytes_of(old_n, elem, &ob)) return NULL;
    if (nb == ob) return p;
    // aligned_alloc'd blocks cannot go through realloc() and keep their alignment: copy.
    void *q = mor__alloc(a, n, elem, 0);
    if (!q) return NULL;
    memcpy(q, p, ob < nb ? ob : nb);
    mor__free(a, p);
    return q;
}

char *mor__strndup(const mor_allocator *a, const char *s, size_t n) {
    if (n == SIZE_MAX) return NULL;
    char *p = mor__alloc(a, n + 1, 1, 0);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

void *mor__plan_take(mor__plan *p, uint64_t n, size_t elem, int zero) {
    uint64_t b;
    if (p->fail || __builtin_mul_overflow(n ? n : 1, (uint64_t)elem, &b) || b > UINT64_MAX / 2 - p->bytes) {
        p->fail = 1;
        return NULL;
    }
    const uint64_t used = b;
    b = ((b + ALIGN - 1) & ~(uint64_t)(ALIGN - 1)) + REDZONE;
    char *q = p->base ? p->base + p->bytes : NULL;
    p->bytes += b;
    if (q && zero) memset(q, 0, (size_t)used);
#ifdef MOR__ASAN
    if (q) ASAN_POISON_MEMORY_REGION(q + used, (size_t)(b - used));
#endif
    return q;
}

void mor__plan_free(const mor_allocator *a, void *block, uint64_t bytes) {
#ifdef MOR__ASAN
    if (block) ASAN_UNPOISON_MEMORY_REGION(block, (size_t)bytes);  // a host allocator may reuse it
#else
    (void)bytes;
#endif
    mor__free(a, block);
}
