// kernels/ref.c: scalar reference kernels: the specification and test oracle for every
// optimized kernel, and the portable fallback. Plain C11, no intrinsics.
#include "kernels.h"

#include <string.h>

float mor__f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else {  // subnormal: shift the mantissa up until it is normal
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            u = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// Round to nearest even; overflow gives infinity, NaN stays NaN.
uint16_t mor__f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000, exp = (u >> 23) & 0xff, man = u & 0x7fffff;
    if (exp == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    int32_t e = (int32_t)exp - 127 + 15;
    if (e >= 31) return (uint16_t)(sign | 0x7c00);
    if (e <= 0) {
        if (e < -10) return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - e), half = 1u << (shift - 1);
        uint32_t r = man >> shift, rem = man & ((1u << shift) - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ((uint32_t)e << 10) | (man >> 13), rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
    return (uint16_t)(sign | r);
}

float mor__bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t mor__f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

// Eight partial sums in a fixed order: the result does not depend on how the caller splits
// rows among threads, and compilers vectorize the inner loop.
static float ref_dot(const float *a, const float *b, int64_t n) {
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[i + j] * b[i + j];
    for (; i < n; i++) acc[i & 7] += a[i] * b[i];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

static void ref_axpy(float *y, float a, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

static void f32_row(const void *src, float *dst, int64_t n) { memcpy(dst, src, (size_t)n * 4); }

static void f16_row(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        dst[i] = mor__f16_to_f32(h);
    }
}

static void bf16_row(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        dst[i] = mor__bf16_to_f32(h);
    }
}

static void ref_matmul_f32(const void *W, int64_t cols, int64_t r0, int64_t r1, const float *x,
                           int64_t T, int64_t ldx, float *y, int64_t ldy, float *row) {
    (void)row;
    const float *w = W;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t t = 0; t < T; t++) y[t * ldy + r] = ref_dot(w + r * cols, x + t * ldx, cols);
}

static void ref_matmul_f16(const void *W, int64_t cols, int64_t r0, int64_t r1, const float *x,
                           int64_t T, int64_t ldx, float *y, int64_t ldy, float *row) {
    const uint8_t *w = W;
    for (int64_t r = r0; r < r1; r++) {
        f16_row(w + (size_t)(r * cols) * 2, row, cols);
        for (int64_t t = 0; t < T; t++) y[t * ldy + r] = ref_dot(row, x + t * ldx, cols);
    }
}

static void ref_matmul_bf16(const void *W, int64_t cols, int64_t r0, int64_t r1, const float *x,
                            int64_t T, int64_t ldx, float *y, int64_t ldy, float *row) {
    const uint8_t *w = W;
    for (int64_t r = r0; r < r1; r++) {
        bf16_row(w + (size_t)(r * cols) * 2, row, cols);
        for (int64_t t = 0; t < T; t++) y[t * ldy + r] = ref_dot(row, x + t * ldx, cols);
    }
}

static const mor__kernels ref_table = {
    "ref",
    {ref_matmul_f32, ref_matmul_f16, ref_matmul_bf16},
    ref_dot,
    ref_axpy,
    {f32_row, f16_row, bf16_row},
};

const mor__kernels *mor__kernels_ref(void) { return &ref_table; }

// ---- dispatch: the reference table, overridden by what this CPU supports -------------------

#if !defined(MOR_NO_SIMD) && (defined(__x86_64__) || defined(__i386__))
void mor__kernels_install_avx2(mor__kernels *k);
#define HAVE_X86 1
#endif

static mor__kernels best_table;

static void fill_best(void) {
    best_table = ref_table;
#ifdef HAVE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) mor__kernels_install_avx2(&best_table);
#endif
}

#if defined(MOR_NO_THREADS)
static int best_done;
const mor__kernels *mor__kernels_best(void) {
    if (!best_done) fill_best(), best_done = 1;
    return &best_table;
}
#else
#include <pthread.h>
static pthread_once_t best_once = PTHREAD_ONCE_INIT;
const mor__kernels *mor__kernels_best(void) {
    pthread_once(&best_once, fill_best);
    return &best_table;
}
#endif
