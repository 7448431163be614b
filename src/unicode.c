// unicode.c: strict UTF-8 decoding and encoding (RFC 3629).
#include "unicode.h"

// Valid second-byte range for each lead byte class (RFC 3629 table, "UTF8-2/3/4").
static int utf8_lead(uint8_t b, size_t *len, uint8_t *lo, uint8_t *hi) {
    *lo = 0x80;
    *hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) { *len = 2; return 1; }
    if (b == 0xE0) { *len = 3; *lo = 0xA0; return 1; }
    if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) { *len = 3; return 1; }
    if (b == 0xED) { *len = 3; *hi = 0x9F; return 1; }          // no surrogates
    if (b == 0xF0) { *len = 4; *lo = 0x90; return 1; }
    if (b >= 0xF1 && b <= 0xF3) { *len = 4; return 1; }
    if (b == 0xF4) { *len = 4; *hi = 0x8F; return 1; }          // <= U+10FFFF
    return 0;
}

size_t mor__utf8_decode(const uint8_t *s, size_t n, uint32_t *cp) {
    uint8_t b = s[0];
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    size_t len;
    uint8_t lo, hi;
    if (!utf8_lead(b, &len, &lo, &hi) || n < len || s[1] < lo || s[1] > hi) goto bad;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) goto bad;
    if (len == 2) {
        *cp = ((uint32_t)(b & 0x1F) << 6) | (s[1] & 0x3F);
    } else if (len == 3) {
        *cp = ((uint32_t)(b & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    } else {
        *cp = ((uint32_t)(b & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
              ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    }
    return len;
bad:
    *cp = MOR__UC_BADBYTE + b;
    return 1;
}

size_t mor__utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    if (cp < 0x110000) {
        out[0] = (char)(0xF0 | (cp >> 18));
        out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[3] = (char)(0x80 | (cp & 0x3F));
        return 4;
    }
    return 0;
}

size_t mor__utf8_incomplete_tail(const uint8_t *s, size_t n) {
    // Look back at most 3 bytes for a lead byte whose sequence runs past the end.
    for (size_t k = 1; k <= 3 && k <= n; k++) {
        uint8_t b = s[n - k];
        if ((b & 0xC0) == 0x80) continue;  // continuation: keep looking for the lead
        size_t len;
        uint8_t lo, hi;
        if (b < 0x80 || !utf8_lead(b, &len, &lo, &hi) || len <= k) return 0;
        // The k bytes present must be a valid prefix of a character.
        if (k >= 2 && (s[n - k + 1] < lo || s[n - k + 1] > hi)) return 0;
        return k;
    }
    return 0;
}
