// sha256.h: SHA-256 (FIPS 180-4), for tools and tests that compare files by digest.
#ifndef MOR_SHA256_H
#define MOR_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t h[8];
    uint64_t len;      // bytes hashed so far
    uint8_t  blk[64];  // pending input
    size_t   n;        // bytes pending in blk
} mor__sha256;

void mor__sha256_init(mor__sha256 *s);
void mor__sha256_update(mor__sha256 *s, const void *p, size_t n);
void mor__sha256_final(mor__sha256 *s, uint8_t out[32]);
// The digest of n bytes as 64 lowercase hex digits and a NUL.
void mor__sha256_hex(const void *p, size_t n, char out[65]);

#endif
