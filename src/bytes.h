// bytes.h: little-endian byte streams for the session state format (state.c, kv.c).
//
// A writer counts what it would write when it has no buffer (or too small a one), so one walk
// gives the size and the bytes. A reader never reads past its end: a short read sets `bad`
// and yields zeros, and the caller checks `bad` once after a group of reads.
#ifndef MOR_BYTES_H
#define MOR_BYTES_H

#include <stdint.h>
#include <string.h>

typedef struct {
    uint8_t *p;       // NULL: count only
    size_t   n, cap;  // bytes written (or counted), room in p
} mor__wbuf;

typedef struct {
    const uint8_t *p;
    size_t         n, off;  // size, read position
    int            bad;     // a read ran past the end
} mor__rbuf;

// Arrays are little-endian in the format: copied as they are on a little-endian host, element
// by element on any other.
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define MOR__HOST_LE 1
#else
#define MOR__HOST_LE 0
#endif

static inline void mor__put(mor__wbuf *w, const void *src, size_t n) {
    if (n && w->p && w->n + n <= w->cap) memcpy(w->p + w->n, src, n);
    w->n += n;
}
static inline void mor__put_u32(mor__wbuf *w, uint32_t v) {
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    mor__put(w, b, 4);
}
static inline void mor__put_u64(mor__wbuf *w, uint64_t v) {
    mor__put_u32(w, (uint32_t)v);
    mor__put_u32(w, (uint32_t)(v >> 32));
}
// n 32-bit elements.
static inline void mor__put_arr32(mor__wbuf *w, const void *src, size_t n) {
    if (MOR__HOST_LE) {
        mor__put(w, src, 4 * n);
        return;
    }
    const uint8_t *p = src;
    for (size_t i = 0; i < n; i++) {
        uint32_t v;
        memcpy(&v, p + 4 * i, 4);
        mor__put_u32(w, v);
    }
}
// n halves, two per 32-bit word; an odd count is padded with a zero half.
static inline void mor__put_arr16(mor__wbuf *w, const uint16_t *src, size_t n) {
    if (MOR__HOST_LE) {
        static const uint16_t zero = 0;
        mor__put(w, src, 2 * n);
        if (n & 1) mor__put(w, &zero, 2);
        return;
    }
    for (size_t i = 0; i < n; i += 2)
        mor__put_u32(w, (uint32_t)src[i] | (i + 1 < n ? (uint32_t)src[i + 1] << 16 : 0));
}

static inline uint32_t mor__get_u32(mor__rbuf *r) {
    if (r->bad || r->n - r->off < 4) {
        r->bad = 1;
        return 0;
    }
    const uint8_t *b = r->p + r->off;
    r->off += 4;
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}
static inline uint64_t mor__get_u64(mor__rbuf *r) {
    uint64_t lo = mor__get_u32(r);
    return lo | (uint64_t)mor__get_u32(r) << 32;
}
// n 32-bit elements into dst; 0 (and bad set) when the stream is too short.
static inline int mor__get_arr32(mor__rbuf *r, void *dst, size_t n) {
    if (r->bad || (r->n - r->off) / 4 < n) return r->bad = 1, 0;
    if (MOR__HOST_LE) {
        if (n) memcpy(dst, r->p + r->off, 4 * n);
        r->off += 4 * n;
        return 1;
    }
    uint8_t *d = dst;
    for (size_t i = 0; i < n; i++) {
        uint32_t v = mor__get_u32(r);
        memcpy(d + 4 * i, &v, 4);
    }
    return 1;
}
// n halves written by mor__put_arr16.
static inline void mor__get_arr16(mor__rbuf *r, uint16_t *dst, size_t n) {
    if (MOR__HOST_LE) {
        size_t words = (n + 1) / 2;
        if (r->bad || (r->n - r->off) / 4 < words) {
            r->bad = 1;
            return;
        }
        if (n) memcpy(dst, r->p + r->off, 2 * n);
        r->off += 4 * words;
        return;
    }
    for (size_t i = 0; i < n; i += 2) {
        uint32_t v = mor__get_u32(r);
        dst[i] = (uint16_t)v;
        if (i + 1 < n) dst[i + 1] = (uint16_t)(v >> 16);
    }
}

static inline uint32_t mor__f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float mor__bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

#endif
