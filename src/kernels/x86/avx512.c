// kernels/x86/avx512.c: AVX-512 (F, BW, VL, DQ) + VNNI kernels. Compiled with the AVX-512 flags
// (this file only) and installed over the AVX2 table (dispatch.c) when the CPU has them. Each
// kernel computes what its reference in kernels/ref.c computes: the integer parts of the
// quantized products and the activation quantization bit for bit, float sums up to summation
// order.
//
// Matrix products are batch-independent: the value of y[t][r] is computed by the same
// sequence of operations whatever T, the token's place among the call's tokens and the row
// range [r0, r1), so a scheduler may batch rows of different sessions and get, bit for bit,
// what each session alone would get (tests/test-kernels.c checks it with memcmp).
// - F32/F16/BF16: one 16-lane accumulator per (r, t) over the row's 16-float slices (masked
//   last slice), one fixed horizontal-sum tree. Register tiles of 8 rows x up to 3 tokens
//   share loads; with more than 3 tokens the row is walked in k-chunks whose weights are
//   widened once into an aligned L1 buffer, and the next chunk is prefetched meanwhile.
// - Q8_0/Q4_0: a float chain over the blocks, fma((float)isum_b, dw_b * dx_b, acc), isum_b
//   exact. Fewer than 8 tokens: 16 rows in the lanes (vpdpbusd per row, a transposed integer
//   reduction); more: 16 tokens in the lanes, weights broadcast, x packed (vpdpbusd with x + 128
//   as the unsigned side, corrected by -128 * sum(w) per block). Q4_1, Q5_0, Q5_1 and IQ4_NL run
//   the same code (with the min's fma for Q4_1/Q5_1).
// - K types: the same kind of chain per block of 32 of x, with the sub-blocks' integer sums
//   times their scales (and the mins' term); 16 rows or 16 tokens in the lanes, as above.
#include "kernels.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define UNROLL _Pragma("GCC unroll 32")

static inline float rd_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

static inline __mmask16 tail16(int64_t n) { return (__mmask16)((1u << n) - 1u); }

// ---- exp ------------------------------------------------------------------------------------

// e^x for x in [-88, 88] (clamped), about 1 ulp: 2^n * p(r), r = x - n ln2, |r| <= ln2 / 2.
static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

// ---- weights as floats ----------------------------------------------------------------------

// 16 weights (masked) as floats.
static inline __m512 ld_w(int dt, const void *w, int64_t i, __mmask16 m) {
    if (dt == MOR__DT_F32) return _mm512_maskz_loadu_ps(m, (const float *)w + i);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)w + i);
    if (dt == MOR__DT_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static void avx512_f16_row(const void *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
        _mm512_mask_storeu_ps(dst + i, m, ld_w(MOR__DT_F16, src, i, m));
    }
}

static void avx512_bf16_row(const void *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
        _mm512_mask_storeu_ps(dst + i, m, ld_w(MOR__DT_BF16, src, i, m));
    }
}

// ---- float products ------------------------------------------------------------------------
//
// One arithmetic for every output, whatever the batch: y[t][r] is one 16-lane accumulator,
// acc = fma(w[i..i+16), x[t][i..i+16), acc) over the row's 16-float slices in order (the last
// slice masked: zeros beyond cols in both operands), then its lanes summed by one fixed tree
// (hsum_n). Tiles of R rows x C tokens only decide which of these dot products run together
// (sharing weight and x loads), so T, the position of a token in the tile grid and the caller's
// row range never change a bit of the result. F16 weights are widened with vcvtph2ps, BF16 with
// a shift: both exact, so converting a row block once (many tokens) or per slice (few tokens)
// gives the same floats.

// out[j] = the lanes of v[j] summed as ((l_i + l_{i+8}) then + (i+4), then + (i+2), then + (i+1))
// (the tree of _mm512_reduce_add_ps), for j < n <= 16, 16 accumulators at a time: the tree's
// levels are shuffles between pairs of accumulators, so each costs about 3 instructions
// instead of 8. Result lane 4k + j holds input 4j + k, so inputs are taken transposed.
static inline __attribute__((always_inline)) void hsum_n(const __m512 *v, int n, float *out) {
    __m512 in[16], w[8], q[4], s[2];
    UNROLL for (int m = 0; m < 16; m++) {
        int src = (m % 4) * 4 + m / 4;
        in[m] = src < n ? v[src] : _mm512_setzero_ps();
    }
    UNROLL for (int p = 0; p < 8; p++)  // lanes i + i+8: [v_2p (8), v_2p+1 (8)]
        w[p] = _mm512_add_ps(_mm512_shuffle_f32x4(in[2 * p], in[2 * p + 1], 0x44),
                             _mm512_shuffle_f32x4(in[2 * p], in[2 * p + 1], 0xee));
    UNROLL for (int p = 0; p < 4; p++)  // + i+4: four accumulators of 4 lanes
        q[p] = _mm512_add_ps(_mm512_shuffle_f32x4(w[2 * p], w[2 * p + 1], 0x88),
                             _mm512_shuffle_f32x4(w[2 * p], w[2 * p + 1], 0xdd));
    UNROLL for (int p = 0; p < 2; p++)  // + i+2, within 128-bit lanes
        s[p] = _mm512_add_ps(_mm512_shuffle_ps(q[2 * p], q[2 * p + 1], 0x44), _mm512_shuffle_ps(q[2 * p], q[2 * p + 1], 0xee));
    __m512 z = _mm512_add_ps(_mm512_shuffle_ps(s[0], s[1], 0x88), _mm512_shuffle_ps(s[0], s[1], 0xdd));  // + i+1
    _Alignas(64) float tmp[16];
    _mm512_store_ps(tmp, z);
    UNROLL for (int j = 0; j < n; j++) out[j] = tmp[j];
}

// One tile: R rows (row a at w + a * rb bytes, elements of type dt) x C tokens (token c at
// x + c * ldx), over the 16-float slices of [i0, i1). `last`: the chunk ends the row at `cols`
// (a masked slice when cols is not a multiple of 16). The accumulators start at zero (`first`)
// or from accs, and go back to accs (not `last`) or, summed, to y[c * ldy + a]: a row walked in
// chunks is the same sequence of FMAs on the same lanes as a row walked at once.
// Modes (compile time): FT_DIRECT reads W; FT_SAVE also writes the weights, as floats, to
// save + a * FKC + (i - i0) for the tiles that follow; FT_BUF reads that buffer (dt F32,
// rb = FKC * 4, a constant). While the tile runs it prefetches pf_n lines from pf on, pf_per
// a slice (the next row block's weights).
typedef struct {
    const uint8_t *w;
    size_t         rb;
    int64_t        i0, i1, cols;
    const float   *x;
    int64_t        ldx;
    __m512        *accs;
    float         *save;
    int            first, last;
    float         *y;
    int64_t        ldy;
    const char    *pf;
    int64_t        pf_n, pf_per;
} ftile_args;

enum { FT_DIRECT, FT_SAVE, FT_BUF };
#define FKC 640  // longest k-chunk (floats) of the many-token path: 8 x 2.5 KiB of weights + 3 x 2.5 KiB of x in L1

static inline __attribute__((always_inline)) void ftile(const ftile_args *p, int dt, int mode, int R, int C) {
    const uint8_t *w = p->w;
    const size_t rb = mode == FT_BUF ? FKC * 4 : p->rb;
    const int64_t i0 = p->i0, i1 = p->i1, ldx = p->ldx, per = p->pf_per;
    const float *x = p->x;
    float *save = p->save;
    const char *pf = p->pf;
    int64_t pn = p->pf_n;
    __m512 acc[24];
    UNROLL for (int n = 0; n < R * C; n++) acc[n] = p->first ? _mm512_setzero_ps() : p->accs[n];
    int64_t i = i0;
    for (; i + 16 <= i1; i += 16) {
        for (int64_t q = 0; q < per && pn > 0; q++, pn--, pf += 64) _mm_prefetch(pf, _MM_HINT_T1);
        __m512 xv[3];
        UNROLL for (int c = 0; c < C; c++) xv[c] = _mm512_loadu_ps(x + c * ldx + i);
        UNROLL for (int a = 0; a < R; a++) {
            __m512 wv = mode == FT_BUF ? _mm512_load_ps((const float *)(w + a * rb) + (i - i0)) : ld_w(dt, w + a * rb, i, 0xffff);
            if (C > 1) __asm__("" : "+v"(wv));  // one load, not a memory operand of each FMA
            if (mode == FT_SAVE) _mm512_store_ps(save + a * FKC + (i - i0), wv);
            UNROLL for (int c = 0; c < C; c++) acc[a * C + c] = _mm512_fmadd_ps(wv, xv[c], acc[a * C + c]);
        }
    }
    if (!p->last) {
        UNROLL for (int n = 0; n < R * C; n++) p->accs[n] = acc[n];
        return;
    }
    if (i < p->cols) {
        __mmask16 m = tail16(p->cols - i);
        __m512 xv[3];
        UNROLL for (int c = 0; c < C; c++) xv[c] = _mm512_maskz_loadu_ps(m, x + c * ldx + i);
        UNROLL for (int a = 0; a < R; a++) {
            __m512 wv = mode == FT_BUF ? _mm512_maskz_load_ps(m, (const float *)(w + a * rb) + (i - i0)) : ld_w(dt, w + a * rb, i, m);
            if (mode == FT_SAVE) _mm512_store_ps(save + a * FKC + (i - i0), wv);
            UNROLL for (int c = 0; c < C; c++) acc[a * C + c] = _mm512_fmadd_ps(wv, xv[c], acc[a * C + c]);
        }
    }
    float out[24];
    hsum_n(acc, R * C < 16 ? R * C : 16, out);
    if (R * C > 16) hsum_n(acc + 16, R * C - 16, out + 16);
    UNROLL for (int a = 0; a < R; a++) UNROLL for (int c = 0; c < C; c++) p->y[c * p->ldy + a] = out[a * C + c];
}

typedef void (*ftile_fn)(const ftile_args *p);
#define FTILE(DT, MODE, NAME, R, C) \
    static void ft_##NAME##_##R##x##C(const ftile_args *p) { ftile(p, DT, MODE, R, C); }
#define FTILES_R(DT, MODE, NAME, R) FTILE(DT, MODE, NAME, R, 1) FTILE(DT, MODE, NAME, R, 2) FTILE(DT, MODE, NAME, R, 3)
#define FTILES(DT, MODE, NAME) \
    FTILES_R(DT, MODE, NAME, 1) FTILES_R(DT, MODE, NAME, 2) FTILES_R(DT, MODE, NAME, 4) FTILES_R(DT, MODE, NAME, 8)
FTILES(MOR__DT_F32, FT_DIRECT, f32)
FTILES(MOR__DT_F16, FT_DIRECT, f16)
FTILES(MOR__DT_BF16, FT_DIRECT, bf16)
FTILES(MOR__DT_F32, FT_SAVE, f32s)
FTILES(MOR__DT_F16, FT_SAVE, f16s)
FTILES(MOR__DT_BF16, FT_SAVE, bf16s)
FTILES(MOR__DT_F32, FT_BUF, buf)
#define FROW(NAME, R) {NULL, ft_##NAME##_##R##x1, ft_##NAME##_##R##x2, ft_##NAME##_##R##x3}
#define FTAB(NAME) {{NULL}, FROW(NAME, 1), FROW(NAME, 2), {NULL}, FROW(NAME, 4), {NULL}, {NULL}, {NULL}, FROW(NAME, 8)}
// ft_tab[mode][ft_type(dt)][R][C]: R in {1, 2, 4, 8}, C in 1..3 (FT_BUF: dt F32 only).
static const ftile_fn ft_tab[3][3][9][4] = {
    {FTAB(f32), FTAB(f16), FTAB(bf16)}, {FTAB(f32s), FTAB(f16s), FTAB(bf16s)}, {FTAB(buf)}};
static inline int ft_type(int dt) { return dt == MOR__DT_F32 ? 0 : dt == MOR__DT_F16 ? 1 : 2; }

// Tiles are 8 rows x up to 3 tokens (24 accumulators, 3 x vectors and one weight vector live;
// row tails 4, 2, 1). Up to 3 tokens (decode) stream 8 weight rows at once over the whole row
// length. More tokens walk the rows in k-chunks: the first token block's tile also writes the
// chunk's weights, as floats, to an aligned buffer that stays in L1 while the pass's other
// token blocks run over it (their accumulators parked in accs between chunks). F16/BF16 are
// then widened once per chunk, and weight loads are aligned whatever W's alignment (GGUF
// tensors are 32-byte aligned); F32 weights on 64-byte boundaries are read in place. The next
// row block's weights (contiguous) are prefetched over the tiles of the current one.
#define FR      8   // rows per tile
#define FC      3   // tokens per tile, at most
#ifndef FPF_AHEAD
#define FPF_AHEAD 24576  // bytes ahead that the few-token tiles prefetch
#endif
#define FNB_MAX 32  // token blocks per pass (T up to 96 per pass: 48 KiB of accumulators)

static void fmatmul(int dt, const void *W, int64_t cols, int64_t r0, int64_t r1, const float *x, int64_t T,
                    int64_t ldx, float *y, int64_t ldy) {
    const size_t rb = (size_t)mor__dtype_row_bytes(dt, cols);
    if (T <= FC) {  // few tokens: stream 8 rows at a time, the whole row length
        // The rows are contiguous: each tile prefetches (into L2) the bytes FPF_AHEAD past its
        // own, as many lines as it reads, spread over its slices, never past the range's end.
        const char *end = (const char *)W + (size_t)r1 * rb;
        const int64_t slices = cols > 15 ? (cols + 15) / 16 : 1;
        for (int64_t r = r0; r < r1;) {
            int R = r1 - r >= FR ? FR : r1 - r >= 4 ? 4 : r1 - r >= 2 ? 2 : 1;
            const char *pf = (const char *)(((uintptr_t)W + (size_t)r * rb + FPF_AHEAD) & ~(uintptr_t)63);
            int64_t pf_n = pf < end ? (int64_t)((end - pf + 63) / 64) : 0, lines = (int64_t)((R * rb + 63) / 64);
            if (pf_n > lines) pf_n = lines;
            ftile_args p = {(const uint8_t *)W + (size_t)r * rb, rb, 0, cols, cols, x, ldx, NULL, NULL, 1, 1, y + r, ldy,
                            pf, pf_n, (lines + slices - 1) / slices};
            ft_tab[FT_DIRECT][ft_type(dt)][R][T](&p);
            r += R;
        }
        return;
    }
    _Alignas(64) float wbuf[FR * FKC];
    _Alignas(64) __m512 accs[FNB_MAX][FR * FC];
    const int64_t nch = (cols + FKC - 1) / FKC, kc = nch > 1 ? ((cols + nch - 1) / nch + 15) & ~(int64_t)15 : FKC;
    for (int64_t tp = 0; tp < T; tp += FNB_MAX * FC) {
        const int64_t Tp = T - tp < FNB_MAX * FC ? T - tp : FNB_MAX * FC;
        const int64_t nblk = (Tp + FC - 1) / FC;  // token blocks of nearly equal size
        // F16/BF16 are always widened into the buffer; F32 rows off 64-byte boundaries are copied
        // once there are 3 token blocks or more to pay for it (split-line loads otherwise).
        const int copy = dt != MOR__DT_F32 || (((uintptr_t)W | rb) % 64 && nblk >= 3);
        for (int64_t r = r0; r < r1;) {
            int R = r1 - r >= FR ? FR : r1 - r >= 4 ? 4 : r1 - r >= 2 ? 2 : 1;
            // The next row block's weights, prefetched over this one's tiles (slots: one per
            // slice of each tile).
            int64_t nR = r1 - (r + R) >= FR ? FR : r1 - (r + R);
            const char *pfb = (const char *)W + (size_t)(r + R) * rb;
            int64_t pf_lines = nR > 0 && rb > 0 ? (int64_t)(((uintptr_t)(pfb + nR * rb - 1) >> 6) - ((uintptr_t)pfb >> 6) + 1) : 0;
            int64_t slots = nblk * (cols / 16 + nch) + 1;
            int64_t per = (pf_lines + slots - 1) / slots;
            const char *pf = (const char *)((uintptr_t)pfb & ~(uintptr_t)63);
            for (int64_t k0 = 0; k0 < cols || k0 == 0; k0 += kc) {
                int64_t k1 = cols - k0 > kc ? k0 + kc : cols;
                ftile_args p = {(const uint8_t *)W + (size_t)r * rb, rb, k0, k1, cols, NULL, ldx, NULL,
                                wbuf, k0 == 0, k1 == cols, NULL, ldy, pf, 0, per};
                int64_t xoff = 0, mode = copy ? FT_SAVE : FT_DIRECT;
                for (int64_t b = 0, t = tp; b < nblk; b++) {
                    int C = (int)(Tp / nblk + (b < Tp % nblk));
                    p.x = x + t * ldx + xoff, p.y = y + t * ldy + r, p.accs = accs[b];
                    p.pf = pf, p.pf_n = per * ((k1 - k0) / 16) < pf_lines ? per * ((k1 - k0) / 16) : pf_lines;
                    ft_tab[mode][mode == FT_BUF ? 0 : ft_type(dt)][R][C](&p);
                    pf += 64 * p.pf_n, pf_lines -= p.pf_n;
                    if (mode == FT_SAVE) {  // the others read the buffer: elements k0.. from 0
                        p.w = (const uint8_t *)wbuf, p.i0 = 0, p.i1 = k1 - k0, p.cols = cols - k0;
                        mode = FT_BUF, xoff = k0;
                    }
                    t += C;
                }
            }
            r += R;
        }
    }
}

#define FMATMUL(NAME, DT)                                                                              \
    static void NAME(const void *W, int64_t cols, int64_t r0, int64_t r1, const float *x, int64_t T, \
                     int64_t ldx, float *y, int64_t ldy, float *row) {                               \
        (void)row;                                                                                   \
        fmatmul(DT, W, cols, r0, r1, x, T, ldx, y, ldy);                                             \
    }
FMATMUL(avx512_matmul_f32, MOR__DT_F32)
FMATMUL(avx512_matmul_f16, MOR__DT_F16)
FMATMUL(avx512_matmul_bf16, MOR__DT_BF16)

#define TLQ 64   // tokens per tile of the quantized products

// ---- activation quantization ---------------------------------------------------------------

// One block of 32: q and the f16-rounded scale, exactly as the reference.
static inline float quant_block(const float *x, int8_t *q) {
    __m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
    float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    __m512 vid = _mm512_set1_ps(id);
    __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, vid)), qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, vid));
    _mm_storeu_si128((__m128i *)q, _mm512_cvtsepi32_epi8(qa));
    _mm_storeu_si128((__m128i *)(q + 16), _mm512_cvtsepi32_epi8(qb));
    return _cvtsh_ss(_cvtss_sh(amax / 127.0f, _MM_FROUND_TO_NEAREST_INT));
}

static void avx512_quant_act(const float *x, int64_t n, int8_t *q, float *d) {
    for (int64_t b = 0; b < n / MOR__QK; b++) d[b] = quant_block(x + b * MOR__QK, q + b * MOR__QK);
}

// ---- quantized products ---------------------------------------------------------------------
//
// One arithmetic for every output, whatever the batch: y[t][r] = a float chain over the row's
// blocks in order, acc = fma((float)isum_b, dw_b * dx_b, acc), isum_b the exact integer dot
// product of block b (any summation order gives the same integer). Few tokens put 16 rows in
// the lanes, many tokens put 16 tokens in the lanes; both run this chain per lane.

// The nibbles of a Q4_0 block at p (elements 0..15 in the low half, 16..31 in the high half).
static inline __m256i q4_one(const uint8_t *p) {
    __m128i v = _mm_loadu_si128((const __m128i *)(p + 2));
    return _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1),
                            _mm256_set1_epi8(0x0f));
}

// Sum of 32 bytes read as int8.
static inline int32_t sum_s8(__m256i v) {
    __m256i s = _mm256_sad_epu8(_mm256_xor_si256(v, _mm256_set1_epi8((char)0x80)), _mm256_setzero_si256());
    __m128i s2 = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    return (int32_t)(_mm_cvtsi128_si64(s2) + _mm_extract_epi64(s2, 1)) - 32 * 128;
}

// The blocks of 32 (Q8_0, Q4_0 and the types of the same shape: Q4_1, Q5_0, Q5_1, IQ4_NL): bytes
// per block, where the nibbles start, where the fifth bits start (-1: none), and whether the
// block has a min (Q4_1, Q5_1: weight = d * code + m).
static inline int qbs(int dt) {
    switch (dt) {
    case MOR__DT_Q8_0: return MOR__Q8_0_SIZE;
    case MOR__DT_Q4_1: return MOR__Q4_1_SIZE;
    case MOR__DT_Q5_0: return MOR__Q5_0_SIZE;
    case MOR__DT_Q5_1: return MOR__Q5_1_SIZE;
    default: return MOR__Q4_0_SIZE;  // Q4_0, IQ4_NL
    }
}
static inline int q_nib(int dt) { return dt == MOR__DT_Q4_1 ? 4 : dt == MOR__DT_Q5_0 ? 6 : dt == MOR__DT_Q5_1 ? 8 : 2; }
static inline int q_hbit(int dt) { return dt == MOR__DT_Q5_0 ? 2 : dt == MOR__DT_Q5_1 ? 4 : -1; }
static inline int q_min(int dt) { return dt == MOR__DT_Q4_1 || dt == MOR__DT_Q5_1; }

static inline uint32_t rd32(const uint8_t *p) {
    uint32_t u;
    memcpy(&u, p, 4);
    return u;
}

// IQ4_NL's 16 values, + 128 (unsigned bytes) or as they are, in each 128-bit lane.
static inline __m512i iq4nl_tab(int plus128) {
    const __m128i v = _mm_setr_epi8(-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113);
    return _mm512_broadcast_i32x4(plus128 ? _mm_xor_si128(v, _mm_set1_epi8((char)0x80)) : v);
}

// The codes of one block of 32 at p in element order, as bytes (Q4_0/Q4_1: the nibbles; Q5_0,
// Q5_1: nibble | bit << 4, 0..31; IQ4_NL: the signed values); the signed side of vpdpbusd.
static inline __m256i q_codes(int dt, const uint8_t *p) {
    __m128i v = _mm_loadu_si128((const __m128i *)(p + q_nib(dt)));
    __m256i u = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1),
                                 _mm256_set1_epi8(0x0f));
    if (q_hbit(dt) >= 0) u = _mm256_mask_add_epi8(u, (__mmask32)rd32(p + q_hbit(dt)), u, _mm256_set1_epi8(0x10));
    if (dt == MOR__DT_IQ4_NL) u = _mm256_shuffle_epi8(_mm512_castsi512_si256(iq4nl_tab(0)), u);
    return u;
}

// The per-block, per-token integer that comes with sum(q) of x's block: the correction of
// the unsigned side in the few-token path (Q8_0, IQ4_NL: w + 128; Q4_0: nib = w + 8; Q5_0:
// code = w + 16), or, for the types with a min, sum(q) itself (the min's term).
static inline int q_xcorr(int dt) {
    switch (dt) {
    case MOR__DT_Q8_0:
    case MOR__DT_IQ4_NL: return -128;
    case MOR__DT_Q4_0: return -8;
    case MOR__DT_Q5_0: return -16;
    default: return 1;  // Q4_1, Q5_1
    }
}

// ---- few tokens: 16 rows in the lanes ------------------------------------------------------
//
// vpdpbusd takes the weights as the unsigned side (Q8_0: w + 128; Q4_0: the nibbles) and the
// quantized x as the signed side; the offsets come back as one correction per block and token
// (-128 * sum(q), -8 * sum(q)). Each row's two blocks (64 bytes) give 16 lanes of partial sums;
// 16 rows' partials are reduced together (a transposed tree of shuffles) to one vector of 16
// rows' isum per block. The scales of 16 rows come with one gather per block.

// A token's quantized x in the caller's row scratch (cols floats = 4 cols bytes; 1.25 cols a
// token): q[cols] int8, d[cols / 32] scales, c[cols / 32] the block corrections.
typedef struct {
    const int8_t  *q;
    const float   *d;
    const int32_t *c;
} qtok;

static qtok qtok_prepare(int dt, const float *x, int64_t cols, uint8_t *buf) {
    int64_t nb = cols / MOR__QK;
    int8_t *q = (int8_t *)buf;
    float *d = (float *)(buf + cols);  // cols is a multiple of 32: aligned as the scratch
    int32_t *c = (int32_t *)(d + nb);
    for (int64_t b = 0; b < nb; b++) {
        d[b] = quant_block(x + b * MOR__QK, q + b * MOR__QK);
        c[b] = q_xcorr(dt) * sum_s8(_mm256_loadu_si256((const __m256i *)(q + b * MOR__QK)));
    }
    return (qtok){q, d, c};
}

// The unsigned side of two blocks of a row at p (block b at p, b + 1 at p + bs; `two` = 0:
// block b only, zeros for b + 1). Q8_0: [w_b + 128 | w_b+1 + 128]. Q4_0, in 16-byte quarters:
// [low nibbles of b, low of b + 1, high of b, high of b + 1] (elements 0..15 of b, of b + 1,
// 16..31 of b, of b + 1; one cross-lane instruction), x is arranged to match (qx_two).
static inline __m512i qw_two(int dt, const uint8_t *p, int two) {
    if (dt == MOR__DT_Q8_0) {
        __m256i lo = _mm256_loadu_si256((const __m256i *)(p + 2));
        __m256i hi = two ? _mm256_loadu_si256((const __m256i *)(p + MOR__Q8_0_SIZE + 2)) : _mm256_set1_epi8((char)0x80);
        return _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1), _mm512_set1_epi8((char)0x80));
    }
    const int bs = qbs(dt), o = q_nib(dt);
    __m128i b1 = two ? _mm_loadu_si128((const __m128i *)(p + bs + o)) : _mm_set1_epi8(0);
    __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(p + o))), b1, 1);
    const __m256i m = _mm256_set1_epi8(0x0f);
    __m512i u = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(v, m)), _mm256_and_si256(_mm256_srli_epi16(v, 4), m), 1);
    if (q_hbit(dt) >= 0) {  // the fifth bits, in the same quarters
        uint64_t h0 = rd32(p + q_hbit(dt)), h1 = two ? rd32(p + bs + q_hbit(dt)) : 0;
        __mmask64 k = (h0 & 0xffff) | (h1 & 0xffff) << 16 | (h0 >> 16) << 32 | (h1 >> 16) << 48;
        u = _mm512_mask_add_epi8(u, k, u, _mm512_set1_epi8(0x10));
    }
    if (dt == MOR__DT_IQ4_NL) u = _mm512_shuffle_epi8(iq4nl_tab(1), u);
    return u;
}

// The signed side: the quantized x of blocks b, b + 1 (zeros for b + 1 when not `two`), in
// qw_two's order.
static inline __m512i qx_two(int dt, const int8_t *q, int two) {
    __m512i xv = two ? _mm512_loadu_si512(q) : _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)q));
    if (!two) xv = _mm512_inserti64x4(xv, _mm256_setzero_si256(), 1);
    if (dt != MOR__DT_Q8_0) xv = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 1, 4, 5, 2, 3, 6, 7), xv);
    return xv;
}

// v[a]: row a's 16 lanes of partial sums (Q8_0: lanes 0..7 block b, 8..15 block b + 1; Q4_0:
// lanes 0..3 and 8..11 block b, 4..7 and 12..15 block b + 1). Returns the 16 rows' sums of block
// b in *s0 and of block b + 1 in *s1, row a in lane a.
static inline __attribute__((always_inline)) void qreduce16(int dt, const __m512i *v, __m512i *s0, __m512i *s1) {
    __m512i u[8], w[4], z[2];
    UNROLL for (int p = 0; p < 8; p++)  // [row 2p: b, b+1; row 2p+1: b, b+1], 4 partials each
        u[p] = dt == MOR__DT_Q8_0
                   ? _mm512_add_epi32(_mm512_shuffle_i32x4(v[2 * p], v[2 * p + 1], 0x88), _mm512_shuffle_i32x4(v[2 * p], v[2 * p + 1], 0xdd))
                   : _mm512_add_epi32(_mm512_shuffle_i32x4(v[2 * p], v[2 * p + 1], 0x44), _mm512_shuffle_i32x4(v[2 * p], v[2 * p + 1], 0xee));
    UNROLL for (int p = 0; p < 4; p++)  // 2 partials each
        w[p] = _mm512_add_epi32(_mm512_unpacklo_epi64(u[2 * p], u[2 * p + 1]), _mm512_unpackhi_epi64(u[2 * p], u[2 * p + 1]));
    UNROLL for (int p = 0; p < 2; p++)  // lane 4k + j of z[p]: row 2 (4p + j) + k / 2, block b + k % 2
        z[p] = _mm512_add_epi32(
            _mm512_castps_si512(_mm512_shuffle_ps(_mm512_castsi512_ps(w[2 * p]), _mm512_castsi512_ps(w[2 * p + 1]), 0x88)),
            _mm512_castps_si512(_mm512_shuffle_ps(_mm512_castsi512_ps(w[2 * p]), _mm512_castsi512_ps(w[2 * p + 1]), 0xdd)));
    const __m512i i0 = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 16, 24, 17, 25, 18, 26, 19, 27);
    *s0 = _mm512_permutex2var_epi32(z[0], i0, z[1]);
    *s1 = _mm512_permutex2var_epi32(z[0], _mm512_add_epi32(i0, _mm512_set1_epi32(4)), z[1]);
}

// How far ahead (bytes) the few-token paths prefetch (into L2): whole groups of 16 rows, at least
// 24 KiB (one group of long rows; three of SmolLM-135M's 576-wide Q8_0 rows, where one group
// ahead left decode 10-20 % slower on AMD Zen 5). The blocks of 32 prefetch that group's bytes
// in address order, spread evenly over the steps (on 576-wide rows 1.5-2x faster decode than
// the same lines taken row by row at each step's offset); the K types, which step 256 columns
// at a time, take the row-by-row order (as fast or faster on 2048-wide rows). docs/KERNELS.md.
static inline size_t pf_ahead(size_t rb) { return 16 * rb * ((24576 + 16 * rb - 1) / (16 * rb)); }

// 16 rows (n < 16: rows from n on repeat row n - 1 and are not stored) x C tokens.
static inline __attribute__((always_inline)) void qrows16(int dt, const uint8_t *w, size_t rb, int n, int64_t nb,
                                                          const qtok *xt, float *y, int64_t ldy, int C) {
    const int bs = qbs(dt);
    const size_t pfd = pf_ahead(rb);
    const uint8_t *wr[16];
    UNROLL for (int a = 0; a < 16; a++) wr[a] = w + (size_t)(a < n ? a : n - 1) * rb;
    __m512i ridx = _mm512_mullo_epi32(_mm512_min_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                                       _mm512_set1_epi32(n - 1)),
                                      _mm512_set1_epi32((int)rb));
    __m512 acc[3];
    UNROLL for (int c = 0; c < C; c++) acc[c] = _mm512_setzero_ps();
    const char *pfb = (const char *)w + pfd;  // a later group of 16 rows: pl lines in ns steps
    const int64_t pl = (int64_t)((16 * rb + 63) / 64), ns = (nb + 1) / 2;
    for (int64_t b = 0; b < nb; b += 2) {
        const int two = b + 1 < nb;
        const size_t off = (size_t)b * bs;
        for (int64_t l = (b / 2) * pl / ns, le = (b / 2 + 1) * pl / ns; l < le; l++) _mm_prefetch(pfb + 64 * l, _MM_HINT_T1);
        __m512 dw0, dw1, mw0, mw1;
        if (!q_min(dt)) {
            dw0 = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_i32gather_epi32(ridx, w + off, 1)));
            dw1 = two ? _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_i32gather_epi32(ridx, w + off + bs, 1))) : dw0;
            mw0 = dw0, mw1 = dw1;
        } else {  // Q4_1, Q5_1: the mins are the upper halves of the same dwords
            __m512i g0 = _mm512_i32gather_epi32(ridx, w + off, 1), g1 = two ? _mm512_i32gather_epi32(ridx, w + off + bs, 1) : g0;
            dw0 = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g0)), dw1 = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g1));
            mw0 = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(g0, 16)));
            mw1 = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(g1, 16)));
        }
        UNROLL for (int c = 0; c < C; c++) {
            __m512i xv = qx_two(dt, xt[c].q + b * MOR__QK, two);
            __m512i v[16], s0, s1;
            UNROLL for (int a = 0; a < 16; a++) {
                v[a] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qw_two(dt, wr[a] + off, two), xv);
            }
            qreduce16(dt, v, &s0, &s1);
            if (!q_min(dt)) s0 = _mm512_add_epi32(s0, _mm512_set1_epi32(xt[c].c[b]));
            acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), _mm512_mul_ps(dw0, _mm512_set1_ps(xt[c].d[b])), acc[c]);
            if (q_min(dt))
                acc[c] = _mm512_fmadd_ps(_mm512_set1_ps((float)xt[c].c[b]), _mm512_mul_ps(mw0, _mm512_set1_ps(xt[c].d[b])), acc[c]);
            if (two) {
                if (!q_min(dt)) s1 = _mm512_add_epi32(s1, _mm512_set1_epi32(xt[c].c[b + 1]));
                acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1), _mm512_mul_ps(dw1, _mm512_set1_ps(xt[c].d[b + 1])), acc[c]);
                if (q_min(dt))
                    acc[c] = _mm512_fmadd_ps(_mm512_set1_ps((float)xt[c].c[b + 1]), _mm512_mul_ps(mw1, _mm512_set1_ps(xt[c].d[b + 1])),
                                             acc[c]);
            }
        }
    }
    __mmask16 m = n >= 16 ? 0xffff : tail16(n);
    UNROLL for (int c = 0; c < C; c++) _mm512_mask_storeu_ps(y + c * ldy, m, acc[c]);
}

static inline __attribute__((always_inline)) void qfew(int dt, const void *W, int64_t cols, int64_t r0, int64_t r1,
                                                       const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy,
                                                       float *row) {
    const int64_t nb = cols / MOR__QK, per = cols + cols / 4;  // scratch bytes a token
    const size_t rb = (size_t)mor__dtype_row_bytes((uint32_t)dt, cols);
    const int64_t ng = (T + 2) / 3;  // groups of nearly equal size, up to 3 tokens (the scratch holds 3)
    for (int64_t g = 0, t0 = 0; g < ng; g++) {
        int64_t C = T / ng + (g < T % ng);
        qtok xt[3];
        for (int64_t t = 0; t < C; t++) xt[t] = qtok_prepare(dt, x + (t0 + t) * ldx, cols, (uint8_t *)row + t * per);
        for (int64_t r = r0; r < r1; r += 16) {
            int n = r1 - r >= 16 ? 16 : (int)(r1 - r);
            const uint8_t *w = (const uint8_t *)W + (size_t)r * rb;
            float *yt = y + t0 * ldy + r;
            if (C == 1) qrows16(dt, w, rb, n, nb, xt, yt, ldy, 1);
            else if (C == 2) qrows16(dt, w, rb, n, nb, xt, yt, ldy, 2);
            else qrows16(dt, w, rb, n, nb, xt, yt, ldy, 3);
        }
        t0 += C;
    }
}

// ---- K types, few tokens: 16 rows in the lanes ----------------------------------------------
//
// Every output runs, per block b of 32 of x in order, the chain
//   acc = fma((float)isc_b, d * dx_b, acc), then (Q2_K, Q4_K, Q5_K) acc = fnmadd((float)imn_b, dmin * dx_b, acc),
// with the exact integers isc_b = sum over b's sub-blocks k of sc_k * (sum code * q - off * qsum_k)
// (the codes stored with an offset: 32 for Q6_K, 4 for Q3_K, 0 for the others) and imn_b = sum
// mn_k * qsum_k. The codes (unsigned bytes) go to vpdpbusd against x, two blocks a row at a time;
// 16 rows' lanes are reduced together to the sums of each block (Q4_K, Q5_K: a scale per 32) or
// of each half (Q2_K, Q3_K, Q6_K: a scale per 16), then multiplied by the scales, gathered with
// the rows in the lanes (d and dmin too). Tokens go in groups of up to 3 (the row scratch holds
// 3 quantized tokens), each group's codes decoded once for its tokens.

// A token's quantized x: q[cols], d[cols / 32], s[cols / 16] (sums of 16 quantized values).
typedef struct {
    const int8_t  *q;
    const float   *d;
    const int16_t *s;
} xtok;

static xtok xtok_prepare(const float *x, int64_t cols, uint8_t *buf) {
    int8_t *q = (int8_t *)buf;
    float *d = (float *)(buf + cols);
    int16_t *s = (int16_t *)(d + cols / MOR__QK);
    for (int64_t b = 0; b < cols / MOR__QK; b++) {
        d[b] = quant_block(x + b * MOR__QK, q + b * MOR__QK);
        __m256i v = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(q + b * MOR__QK)), _mm256_set1_epi8((char)0x80));
        __m256i t = _mm256_sad_epu8(v, _mm256_setzero_si256());  // 4 sums of 8 bytes, each + 8 * 128
        s[2 * b] = (int16_t)(_mm256_extract_epi64(t, 0) + _mm256_extract_epi64(t, 1) - 16 * 128);
        s[2 * b + 1] = (int16_t)(_mm256_extract_epi64(t, 2) + _mm256_extract_epi64(t, 3) - 16 * 128);
    }
    return (xtok){q, d, s};
}

static inline int bsizek(int dt) {
    switch (dt) {
    case MOR__DT_Q2_K: return MOR__Q2_K_SIZE;
    case MOR__DT_Q3_K: return MOR__Q3_K_SIZE;
    case MOR__DT_Q4_K: return MOR__Q4_K_SIZE;
    case MOR__DT_Q5_K: return MOR__Q5_K_SIZE;
    default: return MOR__Q6_K_SIZE;
    }
}
static inline int k_mins(int dt) { return dt == MOR__DT_Q2_K || dt == MOR__DT_Q4_K || dt == MOR__DT_Q5_K; }
static inline int k_off(int dt) { return dt == MOR__DT_Q6_K ? 32 : dt == MOR__DT_Q3_K ? 4 : 0; }

// Two 32-byte halves: lo in bytes 0..31, hi in 32..63.
static inline __m512i cat256(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }
static inline __m512i bcast256(const uint8_t *p) { return _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)p)); }

// The codes of blocks 2p, 2p + 1 of the super-block at w (64 unsigned bytes, element order).
static inline __attribute__((always_inline)) __m512i kcodes(int dt, const uint8_t *w, int p) {
    const __m512i m4 = _mm512_set1_epi8(0x0f), m2 = _mm512_set1_epi8(0x03);
    const int g = 2 * (p % 2);  // Q2_K, Q3_K, Q6_K: quarters g and g + 1 of the half p / 2
    switch (dt) {
    case MOR__DT_Q4_K:
    case MOR__DT_Q5_K: {  // low nibbles block 2p, high nibbles 2p + 1
        __m512i v = bcast256(w + (dt == MOR__DT_Q4_K ? 16 : 48) + 32 * p);
        v = _mm512_and_si512(_mm512_srlv_epi16(v, cat256(_mm256_setzero_si256(), _mm256_set1_epi16(4))), m4);
        if (dt == MOR__DT_Q5_K) {  // bit 2p (2p + 1) of qh[l]: + 16
            __m512i bit = cat256(_mm256_set1_epi8((char)(1 << (2 * p))), _mm256_set1_epi8((char)(1 << (2 * p + 1))));
            v = _mm512_mask_add_epi8(v, _mm512_test_epi8_mask(bcast256(w + 16), bit), v, _mm512_set1_epi8(0x10));
        }
        return v;
    }
    case MOR__DT_Q6_K: {  // nibbles of ql[64h .. 64h + 63] (low: g < 2), bits 2g.. of qh[32h + l] to bits 4, 5
        __m512i lo = _mm512_loadu_si512(w + 64 * (p / 2));
        lo = _mm512_and_si512(p % 2 ? _mm512_srli_epi16(lo, 4) : lo, m4);
        __m512i hv = bcast256(w + 128 + 32 * (p / 2)), hi;
        if (p % 2 == 0) hi = _mm512_sllv_epi16(hv, cat256(_mm256_set1_epi16(4), _mm256_set1_epi16(2)));
        else hi = _mm512_srlv_epi16(hv, cat256(_mm256_setzero_si256(), _mm256_set1_epi16(2)));
        return _mm512_or_si512(lo, _mm512_and_si512(hi, _mm512_set1_epi8(0x30)));
    }
    case MOR__DT_Q3_K: {  // bits 2g.. of qs[32h + l], + 4 where bit 2p (2p + 1) of hmask[l] is set
        __m512i v = _mm512_srlv_epi16(bcast256(w + 32 + 32 * (p / 2)), cat256(_mm256_set1_epi16((short)(2 * g)), _mm256_set1_epi16((short)(2 * g + 2))));
        v = _mm512_and_si512(v, m2);
        __m512i bit = cat256(_mm256_set1_epi8((char)(1 << (2 * p))), _mm256_set1_epi8((char)(1 << (2 * p + 1))));
        return _mm512_mask_add_epi8(v, _mm512_test_epi8_mask(bcast256(w), bit), v, _mm512_set1_epi8(4));
    }
    default: {  // Q2_K: bits 2g.. of qs[32h + l]
        __m512i v = _mm512_srlv_epi16(bcast256(w + 16 + 32 * (p / 2)), cat256(_mm256_set1_epi16((short)(2 * g)), _mm256_set1_epi16((short)(2 * g + 2))));
        return _mm512_and_si512(v, m2);
    }
    }
}

// The scale (mn = 0) or min (mn = 1) of sub-block k of 16 rows, from the gathered scale dwords G
// (Q4_K/Q5_K: bytes 4..15, k < 8; Q6_K: int8 scales; Q2_K: bytes 0..15; Q3_K: bytes 96..107).
static inline __attribute__((always_inline)) __m512i kscale(int dt, const __m512i *G, int k, int mn) {
    const __m512i m63 = _mm512_set1_epi32(63), m15 = _mm512_set1_epi32(15), m3 = _mm512_set1_epi32(3);
    switch (dt) {
    case MOR__DT_Q4_K:
    case MOR__DT_Q5_K: {
        const __m512i a = G[mn];  // scales: bytes 0..3 (and their top bits), mins: bytes 4..7
        if (k < 4) return _mm512_and_si512(_mm512_srli_epi32(a, 8 * k), m63);
        __m512i lo = _mm512_and_si512(_mm512_srli_epi32(G[2], 8 * (k - 4) + 4 * mn), m15);
        return _mm512_or_si512(lo, _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(a, 8 * (k - 4) + 6), m3), 4));
    }
    case MOR__DT_Q6_K: return _mm512_srai_epi32(_mm512_slli_epi32(G[k / 4], 24 - 8 * (k % 4)), 24);
    case MOR__DT_Q3_K: {
        __m512i lo = _mm512_and_si512(_mm512_srli_epi32(G[(k % 8) / 4], 8 * (k % 4) + (k >= 8 ? 4 : 0)), m15);
        __m512i hi = _mm512_and_si512(_mm512_srli_epi32(G[2], 8 * (k % 4) + 2 * (k / 4)), m3);
        return _mm512_sub_epi32(_mm512_or_si512(lo, _mm512_slli_epi32(hi, 4)), _mm512_set1_epi32(32));
    }
    default: return _mm512_and_si512(_mm512_srli_epi32(G[k / 4], 8 * (k % 4) + 4 * mn), m15);  // Q2_K
    }
}

// v[a]: row a's 16 lanes of partial sums, lanes 4j..4j+3 for half j (16 elements). Returns the
// 16 rows' sums of each half j in h[j], row a in lane a.
static inline __attribute__((always_inline)) void qreduce16h(const __m512i *v, __m512i *h) {
    __m512i u[8], w[4];
    UNROLL for (int p = 0; p < 8; p++)  // per 128-bit lane: [A0 + A2, B0 + B2, A1 + A3, B1 + B3]
        u[p] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * p], v[2 * p + 1]), _mm512_unpackhi_epi32(v[2 * p], v[2 * p + 1]));
    UNROLL for (int q = 0; q < 4; q++)  // 128-bit lane j: the sums of half j of rows 4q .. 4q + 3
        w[q] = _mm512_add_epi32(_mm512_unpacklo_epi64(u[2 * q], u[2 * q + 1]), _mm512_unpackhi_epi64(u[2 * q], u[2 * q + 1]));
    __m512i t0 = _mm512_shuffle_i32x4(w[0], w[1], 0x44), t1 = _mm512_shuffle_i32x4(w[0], w[1], 0xee);
    __m512i t2 = _mm512_shuffle_i32x4(w[2], w[3], 0x44), t3 = _mm512_shuffle_i32x4(w[2], w[3], 0xee);
    h[0] = _mm512_shuffle_i32x4(t0, t2, 0x88), h[1] = _mm512_shuffle_i32x4(t0, t2, 0xdd);
    h[2] = _mm512_shuffle_i32x4(t1, t3, 0x88), h[3] = _mm512_shuffle_i32x4(t1, t3, 0xdd);
}

// A half (f16) of 16 rows at byte `at` of their super-blocks (ridx: the rows' byte offsets);
// read as the upper half of a dword when it is the last field of the block.
static inline __m512 kgather_f16(const uint8_t *w, __m512i ridx, int at, int upper) {
    __m512i g = _mm512_i32gather_epi32(ridx, w + at - 2 * upper, 1);
    if (upper) g = _mm512_srli_epi32(g, 16);
    return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g));
}

// The float chain's step for block b of token xt (both paths of the K types use it).
static inline __attribute__((always_inline)) __m512 kstep(int dt, __m512 acc, __m512i isc, __m512i imn, __m512 d, __m512 dmin, __m512 dx) {
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isc), _mm512_mul_ps(d, dx), acc);
    if (k_mins(dt)) acc = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(imn), _mm512_mul_ps(dmin, dx), acc);
    return acc;
}

// 16 rows (n < 16: rows from n on repeat row n - 1 and are not stored) x C tokens.
static inline __attribute__((always_inline)) void krows16(int dt, const uint8_t *w, size_t rb, int n, int64_t nsb,
                                                          const xtok *xt, float *y, int64_t ldy, int C) {
    const int bs = bsizek(dt);
    const size_t pfd = pf_ahead(rb);
    const uint8_t *wr[16];
    UNROLL for (int a = 0; a < 16; a++) wr[a] = w + (size_t)(a < n ? a : n - 1) * rb;
    __m512i ridx = _mm512_mullo_epi32(_mm512_min_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                                       _mm512_set1_epi32(n - 1)),
                                      _mm512_set1_epi32((int)rb));
    __m512 acc[3];
    UNROLL for (int c = 0; c < C; c++) acc[c] = _mm512_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        const size_t off = (size_t)sb * bs;
        const uint8_t *ws = w + off;
        __m512 d, dmin = _mm512_setzero_ps();
        __m512i G[4];
        switch (dt) {
        case MOR__DT_Q4_K:
        case MOR__DT_Q5_K:
            d = kgather_f16(ws, ridx, 0, 0), dmin = kgather_f16(ws, ridx, 2, 1);
            UNROLL for (int i = 0; i < 3; i++) G[i] = _mm512_i32gather_epi32(ridx, ws + 4 + 4 * i, 1);
            break;
        case MOR__DT_Q6_K:
            d = kgather_f16(ws, ridx, 208, 1);
            UNROLL for (int i = 0; i < 4; i++) G[i] = _mm512_i32gather_epi32(ridx, ws + 192 + 4 * i, 1);
            break;
        case MOR__DT_Q3_K:
            d = kgather_f16(ws, ridx, 108, 1);
            UNROLL for (int i = 0; i < 3; i++) G[i] = _mm512_i32gather_epi32(ridx, ws + 96 + 4 * i, 1);
            break;
        default:  // Q2_K
            d = kgather_f16(ws, ridx, 80, 0), dmin = kgather_f16(ws, ridx, 82, 1);
            UNROLL for (int i = 0; i < 4; i++) G[i] = _mm512_i32gather_epi32(ridx, ws + 4 * i, 1);
            break;
        }
        UNROLL for (int p = 0; p < 4; p++) {
            _Alignas(64) uint8_t cbuf[16][64];  // the rows' codes, for the group's other tokens
            UNROLL for (int c = 0; c < C; c++) {
                const int16_t *qs = xt[c].s + 16 * sb + 4 * p;  // the sums of the pair's 4 halves
                __m512i xv = _mm512_loadu_si512(xt[c].q + 256 * sb + 64 * p), v[16];
                UNROLL for (int a = 0; a < 16; a++) {
                    __m512i cw;
                    if (c == 0) {
                        _mm_prefetch((const char *)wr[a] + pfd + off + 64 * p, _MM_HINT_T1);
                        cw = kcodes(dt, wr[a] + off, p);
                        if (C > 1) _mm512_store_si512(cbuf[a], cw);
                    } else cw = _mm512_load_si512(cbuf[a]);
                    v[a] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), cw, xv);
                }
                __m512i isc[2], imn[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
                if (dt == MOR__DT_Q4_K || dt == MOR__DT_Q5_K) {
                    qreduce16(MOR__DT_Q8_0, v, &isc[0], &isc[1]);
                    UNROLL for (int i = 0; i < 2; i++) {
                        isc[i] = _mm512_mullo_epi32(kscale(dt, G, 2 * p + i, 0), isc[i]);
                        imn[i] = _mm512_mullo_epi32(kscale(dt, G, 2 * p + i, 1), _mm512_set1_epi32(qs[2 * i] + qs[2 * i + 1]));
                    }
                } else {
                    __m512i h[4];
                    qreduce16h(v, h);
                    UNROLL for (int j = 0; j < 4; j++) {
                        if (k_off(dt)) h[j] = _mm512_sub_epi32(h[j], _mm512_set1_epi32(k_off(dt) * qs[j]));
                        h[j] = _mm512_mullo_epi32(kscale(dt, G, 4 * p + j, 0), h[j]);
                    }
                    isc[0] = _mm512_add_epi32(h[0], h[1]), isc[1] = _mm512_add_epi32(h[2], h[3]);
                    if (dt == MOR__DT_Q2_K)
                        UNROLL for (int i = 0; i < 2; i++)
                            imn[i] = _mm512_add_epi32(_mm512_mullo_epi32(kscale(dt, G, 4 * p + 2 * i, 1), _mm512_set1_epi32(qs[2 * i])),
                                                      _mm512_mullo_epi32(kscale(dt, G, 4 * p + 2 * i + 1, 1), _mm512_set1_epi32(qs[2 * i + 1])));
                }
                UNROLL for (int i = 0; i < 2; i++)
                    acc[c] = kstep(dt, acc[c], isc[i], imn[i], d, dmin, _mm512_set1_ps(xt[c].d[8 * sb + 2 * p + i]));
            }
        }
    }
    __mmask16 m = n >= 16 ? 0xffff : tail16(n);
    UNROLL for (int c = 0; c < C; c++) _mm512_mask_storeu_ps(y + c * ldy, m, acc[c]);
}

static inline __attribute__((always_inline)) void kfew(int dt, const void *W, int64_t cols, int64_t r0, int64_t r1,
                                                       const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy,
                                                       float *row) {
    const int64_t nsb = cols / MOR__QK_K, per = cols + cols / 4;  // scratch bytes a token
    const size_t rb = (size_t)mor__dtype_row_bytes((uint32_t)dt, cols);
    const int64_t ng = (T + 2) / 3;  // groups of nearly equal size, up to 3 tokens
    for (int64_t g = 0, t0 = 0; g < ng; g++) {
        int64_t C = T / ng + (g < T % ng);
        xtok xt[3];
        for (int64_t t = 0; t < C; t++) xt[t] = xtok_prepare(x + (t0 + t) * ldx, cols, (uint8_t *)row + t * per);
        for (int64_t r = r0; r < r1; r += 16) {
            int n = r1 - r >= 16 ? 16 : (int)(r1 - r);
            const uint8_t *w = (const uint8_t *)W + (size_t)r * rb;
            float *yt = y + t0 * ldy + r;
            if (C == 1) krows16(dt, w, rb, n, nsb, xt, yt, ldy, 1);
            else if (C == 2) krows16(dt, w, rb, n, nsb, xt, yt, ldy, 2);
            else krows16(dt, w, rb, n, nsb, xt, yt, ldy, 3);
        }
        t0 += C;
    }
}

// ---- quantized products, many tokens -------------------------------------------------------

#define QPACK 40960  // bytes of packed x per k-chunk: 640 elements x 64 tokens, 2560 x 16

// Packed x for a tile of up to 64 tokens (NT groups of 16) and a k-chunk of at most
// QPACK / (16 NT) elements: xq[(g * NT + j) * 64 + 4 * l + m] is x + 128 of token 16 j + l,
// element 4 g + m; xd[b * 16 NT + t] the block scales; xc[b * 16 NT + t] the Q4_0 corrections
// -8 * sum(q). Fewer tokens take longer chunks: a row is walked in one chunk up to 640
// elements with 64 tokens, 2560 with 16, so no partial sums go back to y between chunks.
typedef struct {
    uint8_t xq[QPACK];
    float   xd[QPACK / MOR__QK];
    int32_t xc[QPACK / MOR__QK];
} qpack;

// Tokens per tile of the token-lane paths, for rows of cols (blocks of bw) and a call of `rows`
// rows. A row longer than a k-chunk of the pack takes its partial chains back to y between
// chunks (a gather and a scatter a chunk); with 64 tokens that y (rows x 64 floats) stays in
// L2 while the chunk's weights stream by up to about 768 rows, beyond that it does not and each
// chunk costs a trip to L3. So: 64 tokens when a row is one chunk or the call has at most 768
// rows; else the most of 48, 32, 16 with which a row is one chunk, else 32. Measured
// (mor-kbench, one thread, T = 64, against 64 always): 576 x 1536 the same tiles; 2048 x 2048
// Q8_0 101-108 -> 212-224 GFLOP/s, Q4_K 81-95 -> 153-154, Q6_K 96-100 -> 163-172; 1024 x 11008
// Q8_0 99-111 -> 163-170, Q4_K 84-85 -> 121-133; 2048 x 5632 Q8_0 111-115 -> 166-170.
static inline int64_t lane_tokens(int64_t cols, int64_t rows, int64_t bw) {
    if (cols <= QPACK / TLQ / bw * bw || rows <= 768) return TLQ;
    for (int64_t nt = 3; nt >= 1; nt--)
        if (cols <= QPACK / (16 * nt) / bw * bw) return 16 * nt;
    return 32;
}


static inline __attribute__((always_inline)) void qlane_tile(int dt, const uint8_t *w, size_t rb, int64_t b0,
                                                             int64_t nbc, const qpack *pk, float *y, int64_t ldy,
                                                             __m512i idx, int64_t nt, int first, int RR, int NT) {
    __m512 facc[12][4];  // a later k-chunk continues the chain from y
    UNROLL for (int a = 0; a < RR; a++) UNROLL for (int j = 0; j < NT; j++) {
        int64_t left = nt - 16 * j;
        __mmask16 m = left >= 16 ? 0xffff : tail16(left);
        facc[a][j] = first ? _mm512_setzero_ps() : _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, y + 16 * j * ldy + a, 4);
    }
    const int bs = qbs(dt);
    for (int64_t b = 0; b < nbc; b++) {
        const uint8_t *wq[12];
        _Alignas(32) uint8_t un[12][32];
        __m512i iacc[12][4];
        float dw[12], mw[12];
        UNROLL for (int a = 0; a < RR; a++) {
            const uint8_t *blk = w + (size_t)a * rb + (size_t)(b0 + b) * bs;
            _mm_prefetch((const char *)blk + (size_t)RR * rb, _MM_HINT_T0);  // the next tile's rows
            dw[a] = rd_f16(blk);
            mw[a] = q_min(dt) ? rd_f16(blk + 2) : 0.0f;
            __m256i v;
            if (dt == MOR__DT_Q8_0) {
                wq[a] = blk + 2;
                v = _mm256_loadu_si256((const __m256i *)wq[a]);
            } else {
                v = dt == MOR__DT_Q4_0 ? q4_one(blk) : q_codes(dt, blk);
                _mm256_store_si256((__m256i *)un[a], v);
                wq[a] = un[a];
            }
            __m512i c = _mm512_set1_epi32(-128 * sum_s8(v));
            UNROLL for (int j = 0; j < NT; j++)
                iacc[a][j] = dt == MOR__DT_Q4_0 || dt == MOR__DT_Q5_0 ? _mm512_add_epi32(c, _mm512_load_si512(pk->xc + b * 16 * NT + 16 * j)) : c;
        }
        UNROLL for (int g = 0; g < 8; g++) {
            __m512i xv[4];
            UNROLL for (int j = 0; j < NT; j++) xv[j] = _mm512_load_si512(pk->xq + ((b * 8 + g) * NT + j) * 64);
            UNROLL for (int a = 0; a < RR; a++) {
                int32_t wd;
                memcpy(&wd, wq[a] + 4 * g, 4);
                __m512i wv = _mm512_set1_epi32(wd);
                UNROLL for (int j = 0; j < NT; j++) iacc[a][j] = _mm512_dpbusd_epi32(iacc[a][j], xv[j], wv);
            }
        }
        UNROLL for (int j = 0; j < NT; j++) {
            __m512 dx = _mm512_load_ps(pk->xd + b * 16 * NT + 16 * j);
            UNROLL for (int a = 0; a < RR; a++) {
                facc[a][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iacc[a][j]), _mm512_mul_ps(_mm512_set1_ps(dw[a]), dx), facc[a][j]);
                if (q_min(dt))  // + (m * dx) * sum(q), as the few-token path
                    facc[a][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(pk->xc + b * 16 * NT + 16 * j)),
                                                 _mm512_mul_ps(_mm512_set1_ps(mw[a]), dx), facc[a][j]);
            }
        }
    }
    UNROLL for (int j = 0; j < NT; j++) {
        int64_t left = nt - 16 * j;
        __mmask16 m = left >= 16 ? 0xffff : tail16(left);
        UNROLL for (int a = 0; a < RR; a++) _mm512_mask_i32scatter_ps(y + 16 * j * ldy + a, m, idx, facc[a][j], 4);
    }
}

static inline __attribute__((always_inline)) void qlane_rows(int dt, const uint8_t *W, size_t rb, int64_t b0,
                                                             int64_t nbc, int64_t r0, int64_t r1, const qpack *pk,
                                                             float *y, int64_t ldy, __m512i idx, int64_t nt,
                                                             int first, int RR, int NT) {
    int64_t r = r0;
    for (; r + RR <= r1; r += RR) qlane_tile(dt, W + (size_t)r * rb, rb, b0, nbc, pk, y + r, ldy, idx, nt, first, RR, NT);
    for (; r < r1; r++) qlane_tile(dt, W + (size_t)r * rb, rb, b0, nbc, pk, y + r, ldy, idx, nt, first, 1, NT);
}

static void qgemm_lanes(int dt, const void *W, int64_t cols, int64_t r0, int64_t r1, const float *x, int64_t T,
                        int64_t ldx, float *y, int64_t ldy) {
    _Alignas(64) qpack pk;
    size_t rb = (size_t)mor__dtype_row_bytes((uint32_t)dt, cols);
    __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                     _mm512_set1_epi32((int)ldy));
    const int64_t tl = lane_tokens(cols, r1 - r0, MOR__QK);
    for (int64_t t0 = 0; t0 < T; t0 += tl) {
        int64_t nt = T - t0 < tl ? T - t0 : tl, NT = (nt + 15) / 16;
        // Chunks of nearly equal length (whole blocks) within the pack.
        int64_t kmax = QPACK / (16 * NT) / MOR__QK * MOR__QK, nch = (cols + kmax - 1) / kmax;
        int64_t kstep = ((cols + nch - 1) / nch + MOR__QK - 1) / MOR__QK * MOR__QK;
        for (int64_t k0 = 0; k0 < cols; k0 += kstep) {
            int64_t kc = cols - k0 < kstep ? cols - k0 : kstep, nbc = kc / MOR__QK;
            for (int64_t t = 0; t < NT * 16; t++) {
                int64_t j = t / 16, l = t % 16;
                for (int64_t b = 0; b < nbc; b++) {
                    _Alignas(32) int8_t q[32];
                    float d = 0;
                    if (t < nt) d = quant_block(x + (t0 + t) * ldx + k0 + b * MOR__QK, q);
                    else memset(q, 0, sizeof q);
                    __m256i v = _mm256_load_si256((const __m256i *)q);
                    pk.xd[b * 16 * NT + t] = d;
                    pk.xc[b * 16 * NT + t] = q_xcorr(dt) * sum_s8(v);  // used by Q4_0, Q5_0, Q4_1, Q5_1
                    v = _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80));
                    _Alignas(32) uint32_t g[8];
                    _mm256_store_si256((__m256i *)g, v);
                    for (int gi = 0; gi < 8; gi++) memcpy(pk.xq + ((b * 8 + gi) * NT + j) * 64 + 4 * l, &g[gi], 4);
                }
            }
            float *yt = y + t0 * ldy;
            int first = k0 == 0;
            const uint8_t *w = W;
            // Rows per tile by token groups. One group takes 4 rows, not 8: with the next tile's
            // rows prefetched, 8 rows ran a 49152 x 576 head 20-30 % slower (measured with
            // mor-kbench; 4 and 8 are equal on matrices that stay in L2).
            switch (NT) {
            case 1: qlane_rows(dt, w, rb, k0 / MOR__QK, nbc, r0, r1, &pk, yt, ldy, idx, nt, first, 4, 1); break;
            case 2: qlane_rows(dt, w, rb, k0 / MOR__QK, nbc, r0, r1, &pk, yt, ldy, idx, nt, first, 5, 2); break;
            case 3: qlane_rows(dt, w, rb, k0 / MOR__QK, nbc, r0, r1, &pk, yt, ldy, idx, nt, first, 4, 3); break;
            default: qlane_rows(dt, w, rb, k0 / MOR__QK, nbc, r0, r1, &pk, yt, ldy, idx, nt, first, 3, 4); break;
            }
        }
    }
}

// ---- K types, many tokens: 16 tokens in the lanes ------------------------------------------
//
// The chain of krows16 per lane, with tokens in the lanes: x + 128 packed as in qgemm_lanes
// (the unsigned side), the codes broadcast a dword at a time (the signed side), per half of 16
// the integer sum corrected by -128 * (sum of the half's codes) and the codes' offset times the
// half's qsum, then multiplied by the scale (integers, exact: the same isc_b and imn_b as
// krows16). k-chunks are whole super-blocks; a later chunk continues the chain from y.

// Packed x for up to 64 tokens and a chunk of whole super-blocks: xq as in qpack, xd[b * 16 NT
// + t] the block scales, xs[k * 16 NT + t] the sums of each 16 (times 32 for Q6_K, 4 for Q3_K:
// the codes' offset).
typedef struct {
    uint8_t xq[QPACK];
    float   xd[QPACK / MOR__QK];
    int32_t xs[QPACK / 16];
} kpack;

// One super-block of a row, decoded: codes (element order), the sums of each half's codes, the
// 16 scales and mins (per half: Q4_K/Q5_K's repeat per block), d and dmin.
typedef struct {
    _Alignas(64) uint8_t c[256];
    int32_t csum[16], sc[16], mn[16];
    float   d, dmin;
} ksb;

static inline __attribute__((always_inline)) void ksb_decode(int dt, const uint8_t *w, ksb *o) {
    UNROLL for (int p = 0; p < 4; p++) {
        __m512i v = kcodes(dt, w, p);
        _mm512_store_si512(o->c + 64 * p, v);
        _Alignas(64) uint64_t t[8];
        _mm512_store_si512(t, _mm512_sad_epu8(v, _mm512_setzero_si512()));
        UNROLL for (int j = 0; j < 4; j++) o->csum[4 * p + j] = (int32_t)(t[2 * j] + t[2 * j + 1]);
    }
    uint32_t a, b, c;
    switch (dt) {
    case MOR__DT_Q4_K:
    case MOR__DT_Q5_K:
        memcpy(&a, w + 4, 4), memcpy(&b, w + 8, 4), memcpy(&c, w + 12, 4);
        {
            uint32_t v[4] = {a & 0x3f3f3f3fu, (c & 0x0f0f0f0fu) | ((a >> 2) & 0x30303030u), b & 0x3f3f3f3fu,
                             ((c >> 4) & 0x0f0f0f0fu) | ((b >> 2) & 0x30303030u)};
            UNROLL for (int k = 0; k < 8; k++) {
                o->sc[2 * k] = o->sc[2 * k + 1] = (v[k / 4] >> 8 * (k % 4)) & 0xff;
                o->mn[2 * k] = o->mn[2 * k + 1] = (v[2 + k / 4] >> 8 * (k % 4)) & 0xff;
            }
        }
        o->d = rd_f16(w), o->dmin = rd_f16(w + 2);
        break;
    case MOR__DT_Q6_K:
        UNROLL for (int k = 0; k < 16; k++) o->sc[k] = (int8_t)w[192 + k], o->mn[k] = 0;
        o->d = rd_f16(w + 208), o->dmin = 0;
        break;
    case MOR__DT_Q3_K: {
        const uint8_t *s = w + 96;
        UNROLL for (int k = 0; k < 16; k++) {
            int lo = k < 8 ? s[k] & 15 : s[k - 8] >> 4, hi = (s[8 + k % 4] >> (2 * (k / 4))) & 3;
            o->sc[k] = (lo | hi << 4) - 32, o->mn[k] = 0;
        }
        o->d = rd_f16(w + 108), o->dmin = 0;
        break;
    }
    default:  // Q2_K
        UNROLL for (int k = 0; k < 16; k++) o->sc[k] = w[k] & 15, o->mn[k] = w[k] >> 4;
        o->d = rd_f16(w + 80), o->dmin = rd_f16(w + 82);
        break;
    }
}

static inline __attribute__((always_inline)) void klane_tile(int dt, const uint8_t *w, size_t rb, int64_t sb0,
                                                             int64_t nsbc, const kpack *pk, float *y, int64_t ldy,
                                                             __m512i idx, int64_t nt, int first, int RR, int NT) {
    __m512 facc[8][4];
    UNROLL for (int a = 0; a < RR; a++) UNROLL for (int j = 0; j < NT; j++) {
        int64_t left = nt - 16 * j;
        __mmask16 m = left >= 16 ? 0xffff : tail16(left);
        facc[a][j] = first ? _mm512_setzero_ps() : _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, y + 16 * j * ldy + a, 4);
    }
    const int bs = bsizek(dt);
    for (int64_t sb = 0; sb < nsbc; sb++) {
        ksb kb[8];
        UNROLL for (int a = 0; a < RR; a++) {
            const uint8_t *blk = w + (size_t)a * rb + (size_t)(sb0 + sb) * bs;
            UNROLL for (int l = 0; l < 4; l++) _mm_prefetch((const char *)blk + (size_t)RR * rb + 64 * l, _MM_HINT_T0);
            ksb_decode(dt, blk, &kb[a]);
        }
        for (int b = 0; b < 8; b++) {
            __m512i isc[8][4], imn[8][4];
            UNROLL for (int hh = 0; hh < 2; hh++) {
                const int k = 2 * b + hh;  // the half
                __m512i h[8][4];
                UNROLL for (int a = 0; a < RR; a++) UNROLL for (int j = 0; j < NT; j++) {
                    h[a][j] = _mm512_set1_epi32(-128 * kb[a].csum[k]);
                    if (k_off(dt)) h[a][j] = _mm512_sub_epi32(h[a][j], _mm512_load_si512(pk->xs + (sb * 16 + k) * 16 * NT + 16 * j));
                }
                UNROLL for (int g = 0; g < 4; g++) {
                    __m512i xv[4];
                    UNROLL for (int j = 0; j < NT; j++) xv[j] = _mm512_load_si512(pk->xq + (((sb * 8 + b) * 8 + 4 * hh + g) * NT + j) * 64);
                    UNROLL for (int a = 0; a < RR; a++) {
                        int32_t wd;
                        memcpy(&wd, kb[a].c + 16 * k + 4 * g, 4);
                        __m512i wv = _mm512_set1_epi32(wd);
                        UNROLL for (int j = 0; j < NT; j++) h[a][j] = _mm512_dpbusd_epi32(h[a][j], xv[j], wv);
                    }
                }
                UNROLL for (int a = 0; a < RR; a++) UNROLL for (int j = 0; j < NT; j++) {
                    if (dt == MOR__DT_Q4_K || dt == MOR__DT_Q5_K) {  // one scale for both halves: sum them first
                        isc[a][j] = hh ? _mm512_mullo_epi32(_mm512_set1_epi32(kb[a].sc[k]), _mm512_add_epi32(isc[a][j], h[a][j])) : h[a][j];
                    } else {
                        __m512i t = _mm512_mullo_epi32(_mm512_set1_epi32(kb[a].sc[k]), h[a][j]);
                        isc[a][j] = hh ? _mm512_add_epi32(isc[a][j], t) : t;
                    }
                }
            }
            UNROLL for (int j = 0; j < NT; j++) {
                const int32_t *xs = pk->xs + (sb * 16 + 2 * b) * 16 * NT + 16 * j;
                __m512i s0 = _mm512_load_si512(xs), s1 = _mm512_load_si512(xs + 16 * NT);
                UNROLL for (int a = 0; a < RR; a++) {
                    if (dt == MOR__DT_Q4_K || dt == MOR__DT_Q5_K)
                        imn[a][j] = _mm512_mullo_epi32(_mm512_set1_epi32(kb[a].mn[2 * b]), _mm512_add_epi32(s0, s1));
                    else if (dt == MOR__DT_Q2_K)
                        imn[a][j] = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_set1_epi32(kb[a].mn[2 * b]), s0),
                                                     _mm512_mullo_epi32(_mm512_set1_epi32(kb[a].mn[2 * b + 1]), s1));
                    else imn[a][j] = _mm512_setzero_si512();
                }
                __m512 dx = _mm512_load_ps(pk->xd + (sb * 8 + b) * 16 * NT + 16 * j);
                UNROLL for (int a = 0; a < RR; a++)
                    facc[a][j] = kstep(dt, facc[a][j], isc[a][j], imn[a][j], _mm512_set1_ps(kb[a].d), _mm512_set1_ps(kb[a].dmin), dx);
            }
        }
    }
    UNROLL for (int j = 0; j < NT; j++) {
        int64_t left = nt - 16 * j;
        __mmask16 m = left >= 16 ? 0xffff : tail16(left);
        UNROLL for (int a = 0; a < RR; a++) _mm512_mask_i32scatter_ps(y + 16 * j * ldy + a, m, idx, facc[a][j], 4);
    }
}

static inline __attribute__((always_inline)) void klane_rows(int dt, const uint8_t *W, size_t rb, int64_t sb0,
                                                             int64_t nsbc, int64_t r0, int64_t r1, const kpack *pk,
                                                             float *y, int64_t ldy, __m512i idx, int64_t nt,
                                                             int first, int RR, int NT) {
    int64_t r = r0;
    for (; r + RR <= r1; r += RR) klane_tile(dt, W + (size_t)r * rb, rb, sb0, nsbc, pk, y + r, ldy, idx, nt, first, RR, NT);
    for (; r < r1; r++) klane_tile(dt, W + (size_t)r * rb, rb, sb0, nsbc, pk, y + r, ldy, idx, nt, first, 1, NT);
}

static inline __attribute__((always_inline)) void kgemm_lanes(int dt, const void *W, int64_t cols, int64_t r0, int64_t r1,
                                                              const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy) {
    _Alignas(64) kpack pk;
    size_t rb = (size_t)mor__dtype_row_bytes((uint32_t)dt, cols);
    __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                     _mm512_set1_epi32((int)ldy));
    const int xsf = k_off(dt) ? k_off(dt) : 1;  // the factor of the packed sums
    const int64_t tl = lane_tokens(cols, r1 - r0, MOR__QK_K);
    for (int64_t t0 = 0; t0 < T; t0 += tl) {
        int64_t nt = T - t0 < tl ? T - t0 : tl, NT = (nt + 15) / 16;
        // Chunks of nearly equal length (whole super-blocks) within the pack.
        int64_t kmax = QPACK / (16 * NT) / MOR__QK_K * MOR__QK_K, nch = (cols + kmax - 1) / kmax;
        int64_t kstep_ = ((cols + nch - 1) / nch + MOR__QK_K - 1) / MOR__QK_K * MOR__QK_K;
        for (int64_t k0 = 0; k0 < cols; k0 += kstep_) {
            int64_t kc = cols - k0 < kstep_ ? cols - k0 : kstep_, nbc = kc / MOR__QK;
            for (int64_t t = 0; t < NT * 16; t++) {
                int64_t j = t / 16, l = t % 16;
                for (int64_t b = 0; b < nbc; b++) {
                    _Alignas(32) int8_t q[32];
                    float d = 0;
                    if (t < nt) d = quant_block(x + (t0 + t) * ldx + k0 + b * MOR__QK, q);
                    else memset(q, 0, sizeof q);
                    __m256i v = _mm256_load_si256((const __m256i *)q);
                    pk.xd[b * 16 * NT + t] = d;
                    __m256i sd = _mm256_sad_epu8(_mm256_xor_si256(v, _mm256_set1_epi8((char)0x80)), _mm256_setzero_si256());
                    pk.xs[2 * b * 16 * NT + t] = xsf * (int32_t)(_mm256_extract_epi64(sd, 0) + _mm256_extract_epi64(sd, 1) - 16 * 128);
                    pk.xs[(2 * b + 1) * 16 * NT + t] = xsf * (int32_t)(_mm256_extract_epi64(sd, 2) + _mm256_extract_epi64(sd, 3) - 16 * 128);
                    v = _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80));
                    _Alignas(32) uint32_t g[8];
                    _mm256_store_si256((__m256i *)g, v);
                    for (int gi = 0; gi < 8; gi++) memcpy(pk.xq + ((b * 8 + gi) * NT + j) * 64 + 4 * l, &g[gi], 4);
                }
            }
            float *yt = y + t0 * ldy;
            int first = k0 == 0;
            const int64_t sb0 = k0 / MOR__QK_K, nsbc = kc / MOR__QK_K;
            switch (NT) {
            case 1: klane_rows(dt, W, rb, sb0, nsbc, r0, r1, &pk, yt, ldy, idx, nt, first, 4, 1); break;
            case 2: klane_rows(dt, W, rb, sb0, nsbc, r0, r1, &pk, yt, ldy, idx, nt, first, 3, 2); break;
            case 3: klane_rows(dt, W, rb, sb0, nsbc, r0, r1, &pk, yt, ldy, idx, nt, first, 2, 3); break;
            default: klane_rows(dt, W, rb, sb0, nsbc, r0, r1, &pk, yt, ldy, idx, nt, first, 2, 4); break;
            }
        }
    }
}

#define QLANE_MIN_T 8  // fewer tokens: 16 rows in the lanes, in groups of up to 3 tokens

static void avx512_matmul_q8_0(const void *W, int64_t cols, int64_t r0, int64_t r1, const float *x, int64_t T,
                               int64_t ldx, float *y, int64_t ldy, float *row) {
    if (T >= QLANE_MIN_T && ldy < (1 << 24)) qgemm_lanes(MOR__DT_Q8_0, W, cols, r0, r1, x, T, ldx, y, ldy);
    else qfew(MOR__DT_Q8_0, W, cols, r0, r1, x, T, ldx, y, ldy, row);
}

static void avx512_matmul_q4_0(const void *W, int64_t cols, int64_t r0, int64_t r1, const float *x, int64_t T,
                               int64_t ldx, float *y, int64_t ldy, float *row) {
    if (T >= QLANE_MIN_T && ldy < (1 << 24)) qgemm_lanes(MOR__DT_Q4_0, W, cols, r0, r1, x, T, ldx, y, ldy);
    else qfew(MOR__DT_Q4_0, W, cols, r0, r1, x, T, ldx, y, ldy, row);
}

#define QMATMUL32(NAME, DT)                                                                                   \
    static void NAME(const void *W, int64_t cols, int64_t r0, int64_t r1, const float *x, int64_t T, int64_t ldx, \
                     float *y, int64_t ldy, float *row) {                                                       \
        if (T >= QLANE_MIN_T && ldy < (1 << 24)) qgemm_lanes(DT, W, cols, r0, r1, x, T, ldx, y, ldy);            \
        else qfew(DT, W, cols, r0, r1, x, T, ldx, y, ldy, row);                                                 \
    }
QMATMUL32(avx512_matmul_q4_1, MOR__DT_Q4_1)
QMATMUL32(avx512_matmul_q5_0, MOR__DT_Q5_0)
QMATMUL32(avx512_matmul_q5_1, MOR__DT_Q5_1)
QMATMUL32(avx512_matmul_iq4_nl, MOR__DT_IQ4_NL)

#define KMATMUL(NAME, DT)                                                                                     \
    static void NAME(const void *W, int64_t cols, int64_t r0, int64_t r1, const float *x, int64_t T, int64_t ldx, \
                     float *y, int64_t ldy, float *row) {                                                       \
        if (T >= QLANE_MIN_T && ldy < (1 << 24)) kgemm_lanes(DT, W, cols, r0, r1, x, T, ldx, y, ldy);            \
        else kfew(DT, W, cols, r0, r1, x, T, ldx, y, ldy, row);                                                 \
    }
KMATMUL(avx512_matmul_q2_k, MOR__DT_Q2_K)
KMATMUL(avx512_matmul_q3_k, MOR__DT_Q3_K)
KMATMUL(avx512_matmul_q4_k, MOR__DT_Q4_K)
KMATMUL(avx512_matmul_q5_k, MOR__DT_Q5_K)
KMATMUL(avx512_matmul_q6_k, MOR__DT_Q6_K)

static void avx512_q8_0_row(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    for (int64_t b = 0; b < n / MOR__QK; b++, p += MOR__Q8_0_SIZE) {
        __m512 d = _mm512_set1_ps(rd_f16(p));
        __m512i v = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 2)));
        __m512i u = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 18)));
        _mm512_storeu_ps(dst + b * MOR__QK, _mm512_mul_ps(d, _mm512_cvtepi32_ps(v)));
        _mm512_storeu_ps(dst + b * MOR__QK + 16, _mm512_mul_ps(d, _mm512_cvtepi32_ps(u)));
    }
}

static void avx512_q4_0_row(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    for (int64_t b = 0; b < n / MOR__QK; b++, p += MOR__Q4_0_SIZE) {
        __m512 d = _mm512_set1_ps(rd_f16(p));
        __m256i v = _mm256_sub_epi8(q4_one(p), _mm256_set1_epi8(8));
        __m512i lo = _mm512_cvtepi8_epi32(_mm256_castsi256_si128(v)), hi = _mm512_cvtepi8_epi32(_mm256_extracti128_si256(v, 1));
        _mm512_storeu_ps(dst + b * MOR__QK, _mm512_mul_ps(d, _mm512_cvtepi32_ps(lo)));
        _mm512_storeu_ps(dst + b * MOR__QK + 16, _mm512_mul_ps(d, _mm512_cvtepi32_ps(hi)));
    }
}

// ---- the other layer operations ------------------------------------------------------------

static void avx512_rmsnorm(float *o, const float *x, const float *w, int64_t n, float eps) {
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        __m512d a = _mm512_cvtps_pd(_mm512_castps512_ps256(v)), b = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
        s0 = _mm512_fmadd_pd(a, a, s0);
        s1 = _mm512_fmadd_pd(b, b, s1);
    }
    double ss = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    __m512 sc = _mm512_set1_ps((float)(1.0 / sqrt(ss / (double)n + eps)));
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
        _mm512_mask_storeu_ps(o + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, w + i), _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), sc)));
    }
}

static void avx512_swiglu(float *g, const float *u, int64_t n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
        __m512 gv = _mm512_maskz_loadu_ps(m, g + i);
        __m512 s = _mm512_div_ps(gv, _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), gv))));
        _mm512_mask_storeu_ps(g + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, u + i)));
    }
}

// x = softmax(x) in place (max subtracted), the scores of attend_kt below; n >= 1.
static void softmax(float *x, int64_t n) {
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
        mx = _mm512_mask_max_ps(mx, m, _mm512_maskz_loadu_ps(m, x + i), mx);
    }
    __m512 vm = _mm512_set1_ps(_mm512_reduce_max_ps(mx)), sum = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm));
        sum = _mm512_mask_add_ps(sum, m, sum, e);
        _mm512_mask_storeu_ps(x + i, m, e);
    }
    __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
        _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv));
    }
}

// One head over n cache entries of type dt (F32 or F16). Scores 16 entries at a time: one
// accumulator per entry over the head's 16-float slices, the 16 summed together by hsum_n's
// transposed tree (no reduction per entry). Values: the head's slices in groups of up to 4
// accumulators (independent chains) over the entries.
static inline __attribute__((always_inline)) void attend_kt(int dt, const float *q, const void *k, const void *v,
                                                            int64_t n, int64_t hd, int64_t stride, float scale,
                                                            float *att, float *out) {
    const size_t es = dt == MOR__DT_F32 ? 4 : 2;  // bytes per cache element
    const char *kb = k, *vb = v;
    for (int64_t e0 = 0; e0 < n; e0 += 16) {
        const int ne = n - e0 >= 16 ? 16 : (int)(n - e0);
        __m512 acc[16];
        UNROLL for (int j = 0; j < 16; j++) acc[j] = _mm512_setzero_ps();
        for (int64_t i = 0; i < hd; i += 16) {
            __mmask16 m = hd - i >= 16 ? 0xffff : tail16(hd - i);
            __m512 qv = _mm512_maskz_loadu_ps(m, q + i);
            UNROLL for (int j = 0; j < 16; j++)
                if (j < ne) acc[j] = _mm512_fmadd_ps(qv, ld_w(dt, kb + (size_t)(e0 + j) * stride * es, i, m), acc[j]);
        }
        hsum_n(acc, ne, att + e0);
        for (int j = 0; j < ne; j++) att[e0 + j] *= scale;
    }
    softmax(att, n);
    for (int64_t i0 = 0; i0 < hd; i0 += 64) {
        __m512 o[4];
        __mmask16 m[4];
        UNROLL for (int c = 0; c < 4; c++) {
            int64_t left = hd - i0 - 16 * c;
            m[c] = left >= 16 ? 0xffff : left > 0 ? tail16(left) : 0;
            o[c] = _mm512_setzero_ps();
        }
        for (int64_t e = 0; e < n; e++) {
            __m512 a = _mm512_set1_ps(att[e]);
            const char *ve = vb + (size_t)e * stride * es;
            UNROLL for (int c = 0; c < 4; c++)
                if (m[c]) o[c] = _mm512_fmadd_ps(a, ld_w(dt, ve, i0 + 16 * c, m[c]), o[c]);
        }
        UNROLL for (int c = 0; c < 4; c++)
            if (m[c]) _mm512_mask_storeu_ps(out + i0 + 16 * c, m[c], o[c]);
    }
}

static void avx512_attend(const float *q, const float *k, const float *v, int64_t n, int64_t hd, int64_t stride,
                          float scale, float *att, float *out) {
    attend_kt(MOR__DT_F32, q, k, v, n, hd, stride, scale, att, out);
}

static void avx512_attend_f16(const float *q, const uint16_t *k, const uint16_t *v, int64_t n, int64_t hd,
                              int64_t stride, float scale, float *att, float *out) {
    attend_kt(MOR__DT_F16, q, k, v, n, hd, stride, scale, att, out);
}

static int64_t avx512_argmax(const float *x, int64_t n) {
    __m512 best = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
        best = _mm512_mask_max_ps(best, m, _mm512_maskz_loadu_ps(m, x + i), best);  // a NaN x keeps best
    }
    float bv = _mm512_reduce_max_ps(best);
    if (!(bv > -INFINITY)) return 0;
    __m512 vb = _mm512_set1_ps(bv);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
        __mmask16 eq = _mm512_mask_cmp_ps_mask(m, _mm512_maskz_loadu_ps(m, x + i), vb, _CMP_EQ_OQ);
        if (eq) return i + __builtin_ctz(eq);
    }
    return 0;
}

// exp512 in float lanes, summed in double lanes. Below -88 the exp is clamped to exp(-88) (and
// the entropy term to its -88), a relative change under 1e-37 of the sum.
static double avx512_expsum(const float *x, int64_t n, float m, double *zsum) {
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd(), z0 = _mm512_setzero_pd(), z1 = _mm512_setzero_pd();
    const __m512 vm = _mm512_set1_ps(m), lo = _mm512_set1_ps(-88.0f);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? 0xffff : tail16(n - i);
        __m512 z = _mm512_max_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), vm), lo);
        __m512 e = _mm512_maskz_mov_ps(k, exp512(z));
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(e, 1)));
        if (zsum) {
            __m512 ez = _mm512_mul_ps(e, z);
            z0 = _mm512_add_pd(z0, _mm512_cvtps_pd(_mm512_castps512_ps256(ez)));
            z1 = _mm512_add_pd(z1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(ez, 1)));
        }
    }
    if (zsum) *zsum = _mm512_reduce_add_pd(_mm512_add_pd(z0, z1));
    return _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
}

void mor__kernels_install_avx512(mor__kernels *k);
void mor__kernels_install_avx512(mor__kernels *k) {
    k->name = "avx512";
    k->matmul[MOR__DT_F32] = avx512_matmul_f32;
    k->matmul[MOR__DT_F16] = avx512_matmul_f16;
    k->matmul[MOR__DT_BF16] = avx512_matmul_bf16;
    k->matmul[MOR__DT_Q8_0] = avx512_matmul_q8_0;
    k->matmul[MOR__DT_Q4_0] = avx512_matmul_q4_0;
    k->matmul[MOR__DT_Q4_1] = avx512_matmul_q4_1;
    k->matmul[MOR__DT_Q5_0] = avx512_matmul_q5_0;
    k->matmul[MOR__DT_Q5_1] = avx512_matmul_q5_1;
    k->matmul[MOR__DT_IQ4_NL] = avx512_matmul_iq4_nl;
    k->matmul[MOR__DT_Q2_K] = avx512_matmul_q2_k;
    k->matmul[MOR__DT_Q3_K] = avx512_matmul_q3_k;
    k->matmul[MOR__DT_Q4_K] = avx512_matmul_q4_k;
    k->matmul[MOR__DT_Q5_K] = avx512_matmul_q5_k;
    k->matmul[MOR__DT_Q6_K] = avx512_matmul_q6_k;
    k->to_f32[MOR__DT_F16] = avx512_f16_row;
    k->to_f32[MOR__DT_BF16] = avx512_bf16_row;
    k->to_f32[MOR__DT_Q8_0] = avx512_q8_0_row;
    k->to_f32[MOR__DT_Q4_0] = avx512_q4_0_row;
    k->quant_act = avx512_quant_act;
    k->rmsnorm = avx512_rmsnorm;
    k->swiglu = avx512_swiglu;
    k->attend = avx512_attend;
    k->attend_f16 = avx512_attend_f16;
    k->argmax = avx512_argmax;
    k->expsum = avx512_expsum;
}
