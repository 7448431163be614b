// kernels/dispatch.c: the choice of kernel table. It checks the CPU's features once, at the
// first call (x86-64: AVX2 + FMA, then AVX-512 F/BW/VL/DQ + VNNI; AArch64: NEON, always
// there), and builds one table per ISA the CPU runs: the reference table (ref.c) with the ISA's
// entries installed over it, AVX-512 over AVX2 over the reference. mor__kernels_best() gives
// the last of them, mor__kernels_isa() any of them by name. With MOR_NO_SIMD (make SIMD=0) or
// on other architectures the reference table is the only one.
#include "kernels.h"

#include <string.h>

#if !defined(MOR_NO_THREADS)
#include <pthread.h>
#endif

#if !defined(MOR_NO_SIMD) && defined(__x86_64__)
void mor__kernels_install_avx2(mor__kernels *k);
void mor__kernels_install_avx512(mor__kernels *k);
#define HAVE_X86 1
#endif
#if !defined(MOR_NO_SIMD) && defined(__aarch64__)
void mor__kernels_install_neon(mor__kernels *k);
#define HAVE_NEON 1
#endif

enum { ISA_AVX2, ISA_AVX512, ISA_NEON, ISA_COUNT };
static const char  *isa_name[ISA_COUNT] = {"avx2", "avx512", "neon"};
static mor__kernels isa_table[ISA_COUNT];
static int          isa_ok[ISA_COUNT];
static mor__kernels best_table;

static void fill_best(void) {
    best_table = *mor__kernels_ref();
#ifdef HAVE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        isa_table[ISA_AVX2] = *mor__kernels_ref();
        mor__kernels_install_avx2(&isa_table[ISA_AVX2]);
        isa_ok[ISA_AVX2] = 1;
        best_table = isa_table[ISA_AVX2];
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
            __builtin_cpu_supports("avx512vnni")) {
            isa_table[ISA_AVX512] = isa_table[ISA_AVX2];
            mor__kernels_install_avx512(&isa_table[ISA_AVX512]);
            isa_ok[ISA_AVX512] = 1;
            best_table = isa_table[ISA_AVX512];
        }
    }
#endif
#ifdef HAVE_NEON
    isa_table[ISA_NEON] = *mor__kernels_ref();
    mor__kernels_install_neon(&isa_table[ISA_NEON]);
    isa_ok[ISA_NEON] = 1;
    best_table = isa_table[ISA_NEON];
#endif
}

#if defined(MOR_NO_THREADS)
static int best_done;
const mor__kernels *mor__kernels_best(void) {
    if (!best_done) fill_best(), best_done = 1;
    return &best_table;
}
#else
static pthread_once_t best_once = PTHREAD_ONCE_INIT;
const mor__kernels *mor__kernels_best(void) {
    pthread_once(&best_once, fill_best);
    return &best_table;
}
#endif

const mor__kernels *mor__kernels_isa(const char *name) {
    mor__kernels_best();
    if (!strcmp(name, "ref")) return mor__kernels_ref();
    for (int i = 0; i < ISA_COUNT; i++)
        if (!strcmp(name, isa_name[i])) return isa_ok[i] ? &isa_table[i] : NULL;
    return NULL;
}
