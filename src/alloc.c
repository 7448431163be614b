// alloc.c: the allocator indirection (alloc.h).
#include "alloc.h"
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#define ALIGN 64

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
    b = (b + ALIGN - 1) & ~(uint64_t)(ALIGN - 1);
    void *q = p->base ? p->base + p->bytes : NULL;
    p->bytes += b;
    if (q && zero) memset(q, 0, (size_t)b);
    return q;
}
