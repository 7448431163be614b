// internal.h: shared internal helpers: error plumbing, checked arithmetic, allocation.
//
// Included by every file in src/. Holds nothing with state; never included by the public
// header.
#ifndef MOR_INTERNAL_H
#define MOR_INTERNAL_H

#include "alloc.h"
#include "mor.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MOR__UNUSED(x) ((void)(x))
#define MOR__MIN(a, b) ((a) < (b) ? (a) : (b))
#define MOR__MAX(a, b) ((a) > (b) ? (a) : (b))

// Write a formatted message into err (capacity n; n may be 0) and return `status`.
int mor__errf(char *err, size_t n, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

// Overflow-checked arithmetic: return 0 on success, 1 on overflow.
static inline int mor__mul_u64(uint64_t a, uint64_t b, uint64_t *out) {
    return __builtin_mul_overflow(a, b, out);
}
static inline int mor__add_u64(uint64_t a, uint64_t b, uint64_t *out) {
    return __builtin_add_overflow(a, b, out);
}

// The fields of the public params structs (status.c), in declaration order within each kind:
// what mor_params_set/get reach by name and how the state format writes a policy (state.c).
enum { MOR__F_U32, MOR__F_I32, MOR__F_F32, MOR__F_U64, MOR__F_I64 };
typedef struct {
    uint32_t    kind;    // MOR_PARAMS_*
    const char *name;
    size_t      offset;
    int         type;    // MOR__F_*
} mor__field;
// The whole table; *n receives its length.
const mor__field *mor__params_fields(size_t *n);

// Library log (see mor_log_set). level: 0 error, 1 warn, 2 info, 3 debug.
void mor__log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
