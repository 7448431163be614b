// tokenizer.c: building a vocabulary from GGUF metadata, special tokens, pieces,
// detokenization (whole sequences and streaming) and the public tokenizer API.
#include "tokenizer.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

#if defined(__linux__) && defined(__has_include)
#if __has_include(<sys/random.h>)
#include <sys/random.h>
#define MOR_HAVE_GETRANDOM 1
#endif
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <unistd.h>
#define MOR_HAVE_URANDOM 1
#endif

#include "model.h"
#include "unicode.h"

// ---- small helpers --------------------------------------------------------------------------

int mor__ivec_push(mor__ivec *v, int32_t x) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        int32_t *a = mor__realloc(v->al, v->a, v->cap, cap, sizeof *a);
        if (!a) return MOR_E_NOMEM;
        v->a = a;
        v->cap = cap;
    }
    v->a[v->n++] = x;
    return MOR_OK;
}

// ---- keyed hashing ----------------------------------------------------------------------------
// Model files are untrusted and any fixed hash function is public, so a crafted vocabulary could
// put every token text (or merge pair) into one probe chain and make building (and lookups)
// quadratic. Both tables are therefore hashed with SipHash-1-3 (Aumasson and Bernstein's
// SipHash with one compression and three finalization rounds, the variant Python and Rust use
// for their dictionaries) under a 128-bit key drawn at random for each vocabulary: the file is
// written before the key exists, so it cannot aim at a slot. Only the order of probing depends on
// the key; ids and tokenization results do not. MOR__VOCAB_MAX_RUN bounds the damage should the
// key ever be guessed.

#define ROTL64(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND(v0, v1, v2, v3)                                                \
    do {                                                                      \
        v0 += v1; v1 = ROTL64(v1, 13); v1 ^= v0; v0 = ROTL64(v0, 32);         \
        v2 += v3; v3 = ROTL64(v3, 16); v3 ^= v2;                              \
        v0 += v3; v3 = ROTL64(v3, 21); v3 ^= v0;                              \
        v2 += v1; v1 = ROTL64(v1, 17); v1 ^= v2; v2 = ROTL64(v2, 32);         \
    } while (0)

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
static inline uint64_t load_le64(const uint8_t *p) {
    uint64_t x;
    memcpy(&x, p, 8);
    return x;
}
static inline uint64_t load_le32(const uint8_t *p) {
    uint32_t x;
    memcpy(&x, p, 4);
    return x;
}
#else
static inline uint64_t load_le64(const uint8_t *p) {
    uint64_t x = 0;
    for (int i = 7; i >= 0; i--) x = (x << 8) | p[i];
    return x;
}
static inline uint64_t load_le32(const uint8_t *p) {
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24;
}
#endif

// SipHash-c-d (from the specification): state initialised from the key and the constants
// "somepseudorandomlygeneratedbytes"; each 8-byte little-endian block m is absorbed as
// v3 ^= m, c rounds, v0 ^= m; the last block holds the 0..7 remaining bytes and, in its top
// byte, the length mod 256; then v2 ^= 0xff, d rounds, and the result is v0 ^ v1 ^ v2 ^ v3.
static inline uint64_t sip_bytes(const uint64_t k[2], const uint8_t *p, size_t n, int c, int d) {
    uint64_t v0 = k[0] ^ 0x736f6d6570736575ull, v1 = k[1] ^ 0x646f72616e646f6dull;
    uint64_t v2 = k[0] ^ 0x6c7967656e657261ull, v3 = k[1] ^ 0x7465646279746573ull;
    const uint8_t *end = p + (n & ~(size_t)7);
    for (; p != end; p += 8) {
        uint64_t m = load_le64(p);
        v3 ^= m;
        for (int i = 0; i < c; i++) SIPROUND(v0, v1, v2, v3);
        v0 ^= m;
    }
    // The last 0..7 bytes, little-endian, without a byte loop: two overlapping 4-byte loads, or
    // the first, middle and last byte (overlapping bytes land on the same bits).
    uint64_t b = (uint64_t)n << 56;
    size_t r = n & 7;
    if (r >= 4) b |= load_le32(p) | load_le32(p + r - 4) << (8 * (r - 4));
    else if (r) b |= (uint64_t)p[0] | (uint64_t)p[r >> 1] << (8 * (r >> 1)) | (uint64_t)p[r - 1] << (8 * (r - 1));
    v3 ^= b;
    for (int i = 0; i < c; i++) SIPROUND(v0, v1, v2, v3);
    v0 ^= b;
    v2 ^= 0xff;
    for (int i = 0; i < d; i++) SIPROUND(v0, v1, v2, v3);
    return v0 ^ v1 ^ v2 ^ v3;
}

uint64_t mor__siphash(const uint64_t k[2], const void *p, size_t n, int c, int d) {
    return sip_bytes(k, (const uint8_t *)p, n, c, d);
}

static inline uint64_t hash_bytes(const mor__vocab *v, const char *s, size_t n) {
    return sip_bytes(v->hkey, (const uint8_t *)s, n, 1, 3);
}

void mor__pair_tab_init(mor__pair_tab t, const uint64_t k[2]) {
    for (uint32_t i = 0; i < 8 * 256; i += 2) {
        uint64_t c = i, r = sip_bytes(k, (const uint8_t *)&c, sizeof c, 1, 3);
        t[i / 256][i % 256] = (uint32_t)r;
        t[i / 256][i % 256 + 1] = (uint32_t)(r >> 32);
    }
}

// 16 bytes from the operating system's random source; 0 if there is none or it failed.
static int os_random(void *buf, size_t n) {
    size_t got = 0;
    int tries = 0;
#if defined(MOR_HAVE_GETRANDOM)
    while (got < n && tries++ < 8) {
        ssize_t r = getrandom((char *)buf + got, n - got, GRND_NONBLOCK);
        if (r > 0) got += (size_t)r;
        else if (r < 0 && errno != EINTR) break;  // ENOSYS, or EAGAIN early in boot: try the device
    }
    if (got == n) return 1;
#endif
#if defined(MOR_HAVE_URANDOM)
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        got = 0;
        tries = 0;
        while (got < n && tries++ < 8) {
            ssize_t r = read(fd, (char *)buf + got, n - got);
            if (r > 0) got += (size_t)r;
            else if (r == 0 || errno != EINTR) break;
        }
        close(fd);
        if (got == n) return 1;
    }
#endif
    (void)buf;
    (void)n;
    (void)got;
    (void)tries;
    return 0;
}

// The key of a new vocabulary. Where the system offers no random source, the key is a mix of
// addresses (the vocabulary's, a stack slot's, a function's: as random as the address space
// layout makes them), the time and a process-wide counter. That fallback is weak: someone who
// can predict the load time and the memory layout (no ASLR, or a leak) can predict the key and
// build colliding files again; MOR__VOCAB_MAX_RUN still bounds what such a file can cost.
static void vocab_key(uint64_t key[2], const void *salt) {
    if (os_random(key, 2 * sizeof key[0])) return;
    static atomic_uint_fast64_t counter;
    uint64_t w[8];
    int local = 0;
    struct timespec ts = {0, 0};
#if defined(CLOCK_REALTIME)
    clock_gettime(CLOCK_REALTIME, &ts);
#endif
    w[0] = (uint64_t)(uintptr_t)salt;
    w[1] = (uint64_t)(uintptr_t)&local;
    w[2] = (uint64_t)(uintptr_t)&counter;
    w[3] = (uint64_t)(uintptr_t)&vocab_key;
    w[4] = (uint64_t)ts.tv_sec;
    w[5] = (uint64_t)ts.tv_nsec;
    w[6] = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
    w[7] = atomic_fetch_add(&counter, 1);
    static const uint64_t k0[2] = {0x0706050403020100ull, 0x0f0e0d0c0b0a0908ull};
    const uint64_t k1[2] = {0x5d588b656c078965ull, 0x269ec3ull};
    key[0] = sip_bytes(k0, (const uint8_t *)w, sizeof w, 2, 4);
    key[1] = sip_bytes(k1, (const uint8_t *)w, sizeof w, 2, 4);
}

static uint32_t pow2_at_least(uint64_t n) {
    uint32_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

static const char *tok_text(const mor__vocab *v, int32_t id, size_t *len) {
    *len = v->text_off[id + 1] - v->text_off[id];
    return v->text + v->text_off[id];
}

// Lookup counting the slots it visits into *probes (the build's statistics).
static inline int32_t vocab_find(const mor__vocab *v, const char *text, size_t len, uint64_t *probes) {
    uint32_t h = (uint32_t)hash_bytes(v, text, len) & v->hash_mask;
    for (;;) {
        ++*probes;
        int32_t id = v->hash[h];
        if (id < 0) return -1;
        size_t n;
        const char *t = tok_text(v, id, &n);
        if (n == len && memcmp(t, text, len) == 0) return id;
        h = (h + 1) & v->hash_mask;
    }
}

int32_t mor__vocab_find(const mor__vocab *v, const char *text, size_t len) {
    if (!v || !v->hash) return -1;
    uint64_t probes = 0;
    return vocab_find(v, text, len, &probes);
}

// Longest run of occupied slots in a table of mask + 1 slots (runs wrap around the end).
static uint32_t longest_run_text(const int32_t *t, uint32_t mask) {
    uint32_t best = 0, cur = 0, first = UINT32_MAX;
    for (uint32_t i = 0; i <= mask; i++) {
        if (t[i] >= 0) cur++;
        else {
            if (first == UINT32_MAX) first = cur;
            if (cur > best) best = cur;
            cur = 0;
        }
    }
    if (first == UINT32_MAX) return mask + 1;  // full (cannot happen at load 1/2)
    return MOR__MAX(best, cur + first);        // the last run continues into the first
}

static uint32_t longest_run_merge(const mor__merge_slot *t, uint32_t mask) {
    uint32_t best = 0, cur = 0, first = UINT32_MAX;
    for (uint32_t i = 0; i <= mask; i++) {
        if (t[i].key != UINT64_MAX) cur++;
        else {
            if (first == UINT32_MAX) first = cur;
            if (cur > best) best = cur;
            cur = 0;
        }
    }
    if (first == UINT32_MAX) return mask + 1;
    return MOR__MAX(best, cur + first);
}

// ---- GPT-2 byte <-> character map -----------------------------------------------------------
// Printable bytes ('!'..'~', 0xA1..0xAC, 0xAE..0xFF) map to the code point of the same value;
// the other 68 map, in byte order, to U+0100, U+0101, ...
static uint32_t byte_to_cp(int b) {
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))
        return (uint32_t)b;
    uint32_t n = 0;
    for (int c = 0; c < b; c++)
        if (!((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF))) n++;
    return 256 + n;
}

static int cp_to_byte(uint32_t cp) {
    if (cp < 256) {
        int b = (int)cp;
        if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) return b;
        return -1;
    }
    if (cp >= 256 + 68) return -1;
    uint32_t n = 0;
    for (int c = 0; c < 256; c++) {
        if (!((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF))) {
            if (n == cp - 256) return c;
            n++;
        }
    }
    return -1;
}

int mor__parse_byte_token(const char *s, size_t n) {
    if (n != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'A' && c <= 'F') ? c - 'A' + 10
              : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

// ---- building -------------------------------------------------------------------------------

// Byte-level vocabularies that lack a byte's GPT-2 character may still hold a byte token
// "<0xNN>" (type byte, so that it detokenizes to the byte itself): the byte then stays
// encodable instead of being refused with MOR_E_ENCODING. -1 if there is none.
static int32_t bpe_byte_fallback(const mor__vocab *v, int b) {
    static const char *const fmt[2] = {"<0x%02X>", "<0x%02x>"};
    for (int k = 0; k < 2; k++) {
        char buf[8];
        snprintf(buf, sizeof buf, fmt[k], b);
        int32_t id = mor__vocab_find(v, buf, 6);
        if (id >= 0 && v->ttype[id] == MOR__TOK_BYTE) return id;
    }
    return -1;
}

void mor__vocab_free(mor__vocab *v) {
    if (!v) return;
    mor__free(v->alloc, v->text);
    mor__free(v->alloc, v->text_off);
    mor__free(v->alloc, v->piece);
    mor__free(v->alloc, v->piece_off);
    mor__free(v->alloc, v->scores);
    mor__free(v->alloc, v->ttype);
    mor__free(v->alloc, v->eog);
    mor__free(v->alloc, v->hash);
    mor__free(v->alloc, v->mslot);
    mor__free(v->alloc, v->specials);
    mor__free(v->alloc, v);
}

// Piece bytes of token id into out (room for 3 * text length); returns the length.
static size_t make_piece(const mor__vocab *v, int32_t id, char *out) {
    size_t n;
    const char *t = tok_text(v, id, &n);
    switch (v->ttype[id]) {
    case MOR__TOK_CONTROL:
    case MOR__TOK_UNKNOWN:
    case MOR__TOK_USER:
        memcpy(out, t, n);
        return n;
    case MOR__TOK_BYTE: {
        int b = mor__parse_byte_token(t, n);
        if (b < 0) return 0;
        out[0] = (char)b;
        return 1;
    }
    case MOR__TOK_NORMAL:
        break;
    default:  // unused, undefined: never rendered
        return 0;
    }
    size_t o = 0;
    if (v->type == MOR__VOCAB_SPM) {
        for (size_t i = 0; i < n;) {
            if (i + 3 <= n && memcmp(t + i, "\xE2\x96\x81", 3) == 0) {
                out[o++] = ' ';
                i += 3;
            } else {
                out[o++] = t[i++];
            }
        }
        return o;
    }
    // Byte-level: undo the byte -> character map; characters outside it stay as they are.
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = mor__utf8_decode((const uint8_t *)t + i, n - i, &cp);
        int b = cp_to_byte(cp);
        if (b >= 0) out[o++] = (char)b;
        else {
            memcpy(out + o, t + i, k);
            o += k;
        }
        i += k;
    }
    return o;
}

static int is_eog_text(const char *t, size_t n) {
    static const char *const names[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>",
                                        "<|endoftext|>", "<|eom_id|>", "<EOT>"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i]) == n && memcmp(names[i], t, n) == 0) return 1;
    return 0;
}

static int cmp_special_desc(const void *a, const void *b, const mor__vocab *v) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    uint32_t lx = v->text_off[x + 1] - v->text_off[x], ly = v->text_off[y + 1] - v->text_off[y];
    if (lx != ly) return lx > ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

// Insertion sort of the special list (short lists; qsort has no context argument in C11).
static void sort_specials(mor__vocab *v) {
    for (uint32_t i = 1; i < v->n_specials; i++) {
        int32_t x = v->specials[i];
        uint32_t j = i;
        while (j > 0 && cmp_special_desc(&v->specials[j - 1], &x, v) > 0) {
            v->specials[j] = v->specials[j - 1];
            j--;
        }
        v->specials[j] = x;
    }
}

static const char *const sp_key[MOR__SP_COUNT] = {
    "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id", "tokenizer.ggml.seperator_token_id",
    "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id",
};

int mor__vocab_build(mor__vocab **out, const mor__vocab_desc *d, char *err, size_t err_n) {
    if (!out || !d) return mor__errf(err, err_n, MOR_E_INVALID, "vocab build: NULL argument");
    *out = NULL;
    if (d->type != MOR__VOCAB_SPM && d->type != MOR__VOCAB_BPE)
        return mor__errf(err, err_n, MOR_E_UNSUPPORTED, "tokenizer.ggml.model: unknown type %d", d->type);
    if (d->n_tokens == 0 || d->n_tokens > (uint32_t)INT32_MAX / 4 || !d->tokens || !d->token_lens)
        return mor__errf(err, err_n, MOR_E_FORMAT, "tokenizer.ggml.tokens: %u tokens (need 1..%d)",
                         d->n_tokens, INT32_MAX / 4);
    mor__vocab *v = mor__alloc(d->alloc, 1, sizeof *v, 1);
    if (!v) return mor__errf(err, err_n, MOR_E_NOMEM, "tokenizer: out of memory");
    v->alloc = d->alloc;
    int rc = MOR_E_NOMEM;
    uint32_t n = d->n_tokens;
    v->type = d->type;
    v->n_tokens = (int32_t)n;

    // Token texts.
    uint64_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (d->token_lens[i] > 0xFFFFu) {
            rc = mor__errf(err, err_n, MOR_E_FORMAT, "tokenizer.ggml.tokens[%u]: %u bytes (max 65535)",
                           i, d->token_lens[i]);
            goto fail;
        }
        total += d->token_lens[i];
        if (d->token_lens[i] > v->max_token_len) v->max_token_len = d->token_lens[i];
    }
    if (total > 0x3FFFFFFFu) {
        rc = mor__errf(err, err_n, MOR_E_FORMAT, "tokenizer.ggml.tokens: %llu bytes of text (too many)",
                       (unsigned long long)total);
        goto fail;
    }
    v->text = mor__alloc(v->alloc, (size_t)total + 1, 1, 0);
    v->text_off = mor__alloc(v->alloc, (size_t)n + 1, sizeof *v->text_off, 0);
    v->scores = mor__alloc(v->alloc, n, sizeof *v->scores, 0);
    v->ttype = mor__alloc(v->alloc, n, 1, 0);
    v->eog = mor__alloc(v->alloc, n, 1, 1);
    v->hash_mask = pow2_at_least((uint64_t)n * 2) - 1;
    v->hash = mor__alloc(v->alloc, (size_t)v->hash_mask + 1, sizeof *v->hash, 0);
    if (!v->text || !v->text_off || !v->scores || !v->ttype || !v->eog || !v->hash) goto fail;
    memset(v->hash, 0xff, ((size_t)v->hash_mask + 1) * sizeof *v->hash);
    uint32_t off = 0;
    for (uint32_t i = 0; i < n; i++) {
        v->text_off[i] = off;
        if (d->token_lens[i]) memcpy(v->text + off, d->tokens[i], d->token_lens[i]);
        off += d->token_lens[i];
        v->scores[i] = d->scores ? d->scores[i] : 0.0f;
        int32_t ty = d->types ? d->types[i] : MOR__TOK_NORMAL;
        if (ty < 0 || ty > MOR__TOK_BYTE) ty = MOR__TOK_UNDEFINED;
        v->ttype[i] = (uint8_t)ty;
    }
    v->text_off[n] = off;
    if (d->hash_key) memcpy(v->hkey, d->hash_key, sizeof v->hkey);
    else vocab_key(v->hkey, v);
    mor__pair_tab_init(v->ptab, v->hkey);
    for (uint32_t i = 0; i < n; i++) {
        size_t len;
        const char *t = tok_text(v, (int32_t)i, &len);
        if (len == 0) continue;  // an empty token is never produced by tokenization
        // One walk from the home slot finds a duplicate or the free slot. It never passes more
        // than MOR__VOCAB_MAX_RUN occupied slots: building stays linear whatever the texts.
        uint32_t h = (uint32_t)hash_bytes(v, t, len) & v->hash_mask, walked = 0;
        for (;;) {
            v->probes_text++;
            int32_t id = v->hash[h];
            if (id < 0) break;
            size_t l2;
            const char *t2 = tok_text(v, id, &l2);
            if (l2 == len && memcmp(t2, t, len) == 0) {
                rc = mor__errf(err, err_n, MOR_E_FORMAT, "tokenizer.ggml.tokens[%u]: duplicate token \"%.*s\"",
                               i, (int)MOR__MIN(len, 40), t);
                goto fail;
            }
            if (++walked >= MOR__VOCAB_MAX_RUN) {
                rc = mor__errf(err, err_n, MOR_E_FORMAT,
                               "tokenizer.ggml.tokens[%u]: more than %u token texts share a hash probe run "
                               "(crafted to collide?)", i, MOR__VOCAB_MAX_RUN);
                goto fail;
            }
            h = (h + 1) & v->hash_mask;
        }
        v->hash[h] = (int32_t)i;
        if (v->ttype[i] == MOR__TOK_BYTE && v->type == MOR__VOCAB_SPM && mor__parse_byte_token(t, len) < 0) {
            rc = mor__errf(err, err_n, MOR_E_FORMAT,
                           "tokenizer.ggml.token_type[%u]: byte token \"%.*s\" is not <0xNN>", i,
                           (int)MOR__MIN(len, 40), t);
            goto fail;
        }
    }

    // Inserting into the gap between two runs joins them: check the final runs, which bound the
    // slots any lookup visits (a hit or a miss).
    v->run_text = longest_run_text(v->hash, v->hash_mask);
    if (v->run_text > MOR__VOCAB_MAX_RUN) {
        rc = mor__errf(err, err_n, MOR_E_FORMAT,
                       "tokenizer.ggml.tokens: %u token texts in one hash probe run (max %u; crafted to collide?)",
                       v->run_text, MOR__VOCAB_MAX_RUN);
        goto fail;
    }

    // Flags and the pre-tokenizer.
    int ignore_merges = 0, pre_add_bos = -1;
    if (v->type == MOR__VOCAB_BPE) {
        v->pre = mor__pretok_lookup(d->pre, d->pre_len, &ignore_merges, &pre_add_bos);
        if (v->pre < 0) {
            rc = mor__errf(err, err_n, MOR_E_UNSUPPORTED, "tokenizer.ggml.pre: unsupported pre-tokenizer '%.*s'",
                           (int)MOR__MIN(d->pre_len, 64), d->pre);
            goto fail;
        }
        v->ignore_merges = ignore_merges;
        v->add_bos = pre_add_bos > 0;
        v->add_eos = 0;
        v->add_space_prefix = 0;
    } else {
        v->add_bos = 1;
        v->add_eos = 0;
        v->add_space_prefix = 1;
    }
    if (d->add_bos >= 0) v->add_bos = d->add_bos != 0;
    if (d->add_eos >= 0) v->add_eos = d->add_eos != 0;
    if (d->add_space_prefix >= 0) v->add_space_prefix = d->add_space_prefix != 0;

    // Special ids: given, or the SentencePiece defaults (unk 0, bos 1, eos 2).
    for (int s = 0; s < MOR__SP_COUNT; s++) {
        int64_t id = d->special[s];
        if (id == -2) {
            id = -1;
            if (v->type == MOR__VOCAB_SPM) id = s == MOR__SP_UNK ? 0 : s == MOR__SP_BOS ? 1 : s == MOR__SP_EOS ? 2 : -1;
            if (id >= (int64_t)n) id = -1;
        } else if (id < -1 || id >= (int64_t)n) {
            rc = mor__errf(err, err_n, MOR_E_FORMAT, "%s: token id %lld out of range (%u tokens)", sp_key[s],
                           (long long)id, n);
            goto fail;
        }
        v->special[s] = (int32_t)id;
    }
    if (d->pre && d->pre_len == 11 && memcmp(d->pre, "chatglm-bpe", 11) == 0) v->special[MOR__SP_BOS] = -1;
    if (v->add_bos && v->special[MOR__SP_BOS] < 0) {
        mor__log(1, "tokenizer: add_bos_token is set but the vocabulary has no BOS token; not adding one");
        v->add_bos = 0;
    }
    if (v->add_eos && v->special[MOR__SP_EOS] < 0) {
        mor__log(1, "tokenizer: add_eos_token is set but the vocabulary has no EOS token; not adding one");
        v->add_eos = 0;
    }

    // End-of-generation tokens: eos, eot, eom, and tokens named like an end marker (which are
    // also made control tokens, as llama.cpp does).
    for (uint32_t i = 0; i < n; i++) {
        size_t len;
        const char *t = tok_text(v, (int32_t)i, &len);
        if (is_eog_text(t, len)) {
            v->eog[i] = 1;
            v->ttype[i] = MOR__TOK_CONTROL;
            if (v->special[MOR__SP_EOT] < 0 && !(len == 9 && memcmp(t, "<|eom_id|>", 9) == 0))
                v->special[MOR__SP_EOT] = (int32_t)i;
        }
    }
    for (int s = MOR__SP_EOS; s <= MOR__SP_EOM; s++) {
        if (s != MOR__SP_EOS && s != MOR__SP_EOT && s != MOR__SP_EOM) continue;
        if (v->special[s] >= 0) v->eog[v->special[s]] = 1;
    }

    // Byte tokens.
    for (int b = 0; b < 256; b++) {
        v->byte_tok[b] = -1;
        if (v->type == MOR__VOCAB_SPM) {
            char buf[8];
            snprintf(buf, sizeof buf, "<0x%02X>", b);
            int32_t id = mor__vocab_find(v, buf, 6);
            if (id < 0) {
                char c = (char)b;
                id = mor__vocab_find(v, &c, 1);
            }
            v->byte_tok[b] = id;
        } else {
            char buf[4];
            size_t len = mor__utf8_encode(byte_to_cp(b), buf);
            memcpy(v->byte_chr[b], buf, len);
            v->byte_chr_len[b] = (uint8_t)len;
            v->byte_tok[b] = mor__vocab_find(v, buf, len);
            if (v->byte_tok[b] < 0) v->byte_tok[b] = bpe_byte_fallback(v, b);
        }
    }

    // Pieces.
    {
        v->piece_off = mor__alloc(v->alloc, (size_t)n + 1, sizeof *v->piece_off, 0);
        v->piece = mor__alloc(v->alloc, (size_t)total + 1, 1, 0);  // a piece is never longer than its text
        if (!v->piece_off || !v->piece) goto fail;
        uint32_t po = 0;
        for (uint32_t i = 0; i < n; i++) {
            v->piece_off[i] = po;
            po += (uint32_t)make_piece(v, (int32_t)i, v->piece + po);
        }
        v->piece_off[n] = po;
    }

    // Tokens split out of the text before tokenizing: control, unknown, user-defined.
    {
        uint32_t ns = 0;
        for (uint32_t i = 0; i < n; i++) {
            uint8_t ty = v->ttype[i];
            if ((ty == MOR__TOK_CONTROL || ty == MOR__TOK_UNKNOWN || ty == MOR__TOK_USER) &&
                v->text_off[i + 1] > v->text_off[i])
                ns++;
        }
        if (ns) {
            v->specials = mor__alloc(v->alloc, ns, sizeof *v->specials, 0);
            if (!v->specials) goto fail;
            for (uint32_t i = 0; i < n; i++) {
                uint8_t ty = v->ttype[i];
                if ((ty == MOR__TOK_CONTROL || ty == MOR__TOK_UNKNOWN || ty == MOR__TOK_USER) &&
                    v->text_off[i + 1] > v->text_off[i])
                    v->specials[v->n_specials++] = (int32_t)i;
            }
            sort_specials(v);
        }
    }

    // Merges.
    if (v->type == MOR__VOCAB_BPE) {
        if (!d->merges || !d->merge_lens) {
            rc = mor__errf(err, err_n, MOR_E_FORMAT, "tokenizer.ggml.merges: missing (required by gpt2 vocabularies)");
            goto fail;
        }
        uint32_t cap = pow2_at_least((uint64_t)d->n_merges * 2 + 2);
        v->mmask = cap - 1;
        v->mslot = mor__alloc(v->alloc, (size_t)cap, sizeof *v->mslot, 0);
        if (!v->mslot) goto fail;
        for (uint32_t i = 0; i < cap; i++) v->mslot[i].key = UINT64_MAX;
        char *tmp = mor__alloc(v->alloc, (size_t)v->max_token_len * 2 + 2, 1, 0);
        if (!tmp) goto fail;
        uint32_t skipped = 0;
        for (uint32_t r = 0; r < d->n_merges; r++) {
            const char *m = d->merges[r];
            size_t len = d->merge_lens[r];
            const char *sp = len > 1 ? memchr(m + 1, ' ', len - 1) : NULL;
            if (!sp) {
                mor__free(v->alloc, tmp);
                rc = mor__errf(err, err_n, MOR_E_FORMAT, "tokenizer.ggml.merges[%u]: \"%.*s\" is not \"left right\"",
                               r, (int)MOR__MIN(len, 40), m);
                goto fail;
            }
            size_t la = (size_t)(sp - m), lb = len - la - 1;
            int32_t a = vocab_find(v, m, la, &v->probes_text), b = vocab_find(v, sp + 1, lb, &v->probes_text);
            int32_t c = -1;
            if (a >= 0 && b >= 0 && la + lb <= v->max_token_len) {
                memcpy(tmp, m, la);
                memcpy(tmp + la, sp + 1, lb);
                c = vocab_find(v, tmp, la + lb, &v->probes_text);
            }
            if (c < 0) {  // a part or the result is not a token: the merge can never apply
                skipped++;
                continue;
            }
            uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
            uint32_t h = mor__pair_hash(v->ptab, (uint32_t)a, (uint32_t)b, v->n_tokens > 65536) & v->mmask, walked = 0;
            for (;;) {
                v->probes_merge++;
                if (v->mslot[h].key == UINT64_MAX || v->mslot[h].key == key) break;
                if (++walked >= MOR__VOCAB_MAX_RUN) {
                    mor__free(v->alloc, tmp);
                    rc = mor__errf(err, err_n, MOR_E_FORMAT,
                                   "tokenizer.ggml.merges[%u]: more than %u merge pairs share a hash probe run "
                                   "(crafted to collide?)", r, MOR__VOCAB_MAX_RUN);
                    goto fail;
                }
                h = (h + 1) & v->mmask;
            }
            if (v->mslot[h].key == key) continue;  // duplicate pair: the first (lowest) rank wins
            v->mslot[h].key = key;
            v->mslot[h].rank = (int32_t)r;
            v->mslot[h].res = c;
            v->n_merges++;
        }
        mor__free(v->alloc, tmp);
        v->run_merge = longest_run_merge(v->mslot, v->mmask);
        if (v->run_merge > MOR__VOCAB_MAX_RUN) {
            rc = mor__errf(err, err_n, MOR_E_FORMAT,
                           "tokenizer.ggml.merges: %u merge pairs in one hash probe run (max %u; crafted to collide?)",
                           v->run_merge, MOR__VOCAB_MAX_RUN);
            goto fail;
        }
        if (skipped) mor__log(3, "tokenizer: %u of %u merges name strings that are not tokens; ignored", skipped, d->n_merges);
    }
    *out = v;
    return MOR_OK;
fail:
    mor__vocab_free(v);
    if (rc == MOR_E_NOMEM) mor__errf(err, err_n, MOR_E_NOMEM, "tokenizer: out of memory");
    return rc;
}

// ---- loading from GGUF ----------------------------------------------------------------------

// Walk a string array: fill ptrs/lens (n entries), checking every length against the image.
static int gguf_str_array(const mor__gguf *g, const mor__gguf_kv *kv, const char *key, const char **ptrs,
                          uint32_t *lens, char *err, size_t err_n) {
    const uint8_t *p = kv->data, *end = g->image + g->size;
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        if ((uint64_t)(end - p) < 8) goto bad;
        uint64_t len;
        mor__gguf_decode_int(p, MOR__GGUF_UINT64, &len, NULL);
        p += 8;
        if (len > (uint64_t)(end - p) || len > 0xFFFFFFFFu) goto bad;
        ptrs[i] = (const char *)p;
        lens[i] = (uint32_t)len;
        p += len;
        continue;
    bad:
        return mor__errf(err, err_n, MOR_E_FORMAT, "%s[%llu]: string runs past the end of the file", key,
                         (unsigned long long)i);
    }
    return MOR_OK;
}

static int gguf_int_key(const mor__gguf *g, const char *key, int64_t *out, char *err, size_t err_n) {
    const mor__gguf_kv *kv = mor__gguf_find_kv(g, key);
    if (!kv) return MOR_E_NOT_FOUND;
    uint64_t u;
    int is_signed;
    if (mor__gguf_decode_int(kv->data, kv->type, &u, &is_signed))
        return mor__errf(err, err_n, MOR_E_FORMAT, "%s: expected an integer (type %u)", key, kv->type);
    if (is_signed) *out = (int64_t)u;
    else if (kv->type == MOR__GGUF_UINT32 && u == 0xFFFFFFFFu) *out = -1;  // "none", as converters write it
    else *out = u > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)u;
    return MOR_OK;
}

static int gguf_bool_key(const mor__gguf *g, const char *key, int *out, char *err, size_t err_n) {
    int b = 0;
    int rc = mor__gguf_get_bool(g, key, &b, err, err_n);
    if (rc == MOR_E_NOT_FOUND) {
        *out = -1;
        return MOR_OK;
    }
    if (rc != MOR_OK) return rc;
    *out = b != 0;
    return MOR_OK;
}

int mor__vocab_load(mor__vocab **out, const mor__gguf *g, const mor_allocator *alloc, char *err, size_t err_n) {
    if (!out || !g) return mor__errf(err, err_n, MOR_E_INVALID, "vocab load: NULL argument");
    *out = NULL;
    mor__gguf_str model;
    int rc = mor__gguf_get_str(g, "tokenizer.ggml.model", &model, err, err_n);
    if (rc == MOR_E_NOT_FOUND) return MOR_E_NOT_FOUND;
    if (rc != MOR_OK) return rc;
    mor__vocab_desc d;
    memset(&d, 0, sizeof d);
    d.alloc = alloc;
    if (model.len == 5 && memcmp(model.ptr, "llama", 5) == 0) d.type = MOR__VOCAB_SPM;
    else if (model.len == 4 && memcmp(model.ptr, "gpt2", 4) == 0) d.type = MOR__VOCAB_BPE;
    else if ((model.len == 4 && memcmp(model.ptr, "none", 4) == 0) ||
             (model.len == 8 && memcmp(model.ptr, "no_vocab", 8) == 0))
        return MOR_E_NOT_FOUND;
    else
        return mor__errf(err, err_n, MOR_E_UNSUPPORTED, "tokenizer.ggml.model: unsupported tokenizer '%.*s'",
                         (int)MOR__MIN(model.len, 64), model.ptr);

    mor__gguf_str pre;
    rc = mor__gguf_get_str(g, "tokenizer.ggml.pre", &pre, err, err_n);
    if (rc == MOR_OK) {
        d.pre = pre.ptr;
        d.pre_len = (size_t)pre.len;
    } else if (rc != MOR_E_NOT_FOUND) {
        return rc;
    }

    const mor__gguf_kv *tk = mor__gguf_find_kv(g, "tokenizer.ggml.tokens");
    if (!tk) return mor__errf(err, err_n, MOR_E_FORMAT, "tokenizer.ggml.tokens: missing");
    if (tk->type != MOR__GGUF_ARRAY || tk->arr_type != MOR__GGUF_STRING)
        return mor__errf(err, err_n, MOR_E_FORMAT, "tokenizer.ggml.tokens: expected an array of strings");
    if (tk->arr_n == 0 || tk->arr_n > (uint64_t)INT32_MAX / 4)
        return mor__errf(err, err_n, MOR_E_FORMAT, "tokenizer.ggml.tokens: %llu tokens",
                         (unsigned long long)tk->arr_n);
    uint32_t n = (uint32_t)tk->arr_n;
    d.n_tokens = n;
    for (int s = 0; s < MOR__SP_COUNT; s++) d.special[s] = -2;
    d.add_bos = d.add_eos = d.add_space_prefix = -1;

    const char **tptr = mor__alloc(alloc, n, sizeof *tptr, 0);
    uint32_t *tlen = mor__alloc(alloc, n, sizeof *tlen, 0);
    float *scores = NULL;
    int32_t *types = NULL;
    const char **mptr = NULL;
    uint32_t *mlen = NULL;
    if (!tptr || !tlen) {
        rc = MOR_E_NOMEM;
        goto done;
    }
    rc = gguf_str_array(g, tk, "tokenizer.ggml.tokens", tptr, tlen, err, err_n);
    if (rc) goto done;
    d.tokens = tptr;
    d.token_lens = tlen;

    if (mor__gguf_find_kv(g, "tokenizer.ggml.scores")) {
        scores = mor__alloc(alloc, n, sizeof *scores, 0);
        if (!scores) { rc = MOR_E_NOMEM; goto done; }
        rc = mor__gguf_arr_f32(g, "tokenizer.ggml.scores", scores, n, err, err_n);
        if (rc) goto done;
        d.scores = scores;
    }
    if (mor__gguf_find_kv(g, "tokenizer.ggml.token_type")) {
        types = mor__alloc(alloc, n, sizeof *types, 0);
        if (!types) { rc = MOR_E_NOMEM; goto done; }
        rc = mor__gguf_arr_i32(g, "tokenizer.ggml.token_type", types, n, err, err_n);
        if (rc) goto done;
        d.types = types;
    }
    if (d.type == MOR__VOCAB_BPE) {
        const mor__gguf_kv *mk = mor__gguf_find_kv(g, "tokenizer.ggml.merges");
        if (!mk) {
            rc = mor__errf(err, err_n, MOR_E_FORMAT, "tokenizer.ggml.merges: missing (required by gpt2 vocabularies)");
            goto done;
        }
        if (mk->type != MOR__GGUF_ARRAY || mk->arr_type != MOR__GGUF_STRING || mk->arr_n > (uint64_t)INT32_MAX / 4) {
            rc = mor__errf(err, err_n, MOR_E_FORMAT, "tokenizer.ggml.merges: expected an array of strings");
            goto done;
        }
        uint32_t nm = (uint32_t)mk->arr_n;
        mptr = mor__alloc(alloc, nm, sizeof *mptr, 0);
        mlen = mor__alloc(alloc, nm, sizeof *mlen, 0);
        if (!mptr || !mlen) { rc = MOR_E_NOMEM; goto done; }
        rc = gguf_str_array(g, mk, "tokenizer.ggml.merges", mptr, mlen, err, err_n);
        if (rc) goto done;
        d.n_merges = nm;
        d.merges = mptr;
        d.merge_lens = mlen;
    }
    for (int s = 0; s < MOR__SP_COUNT; s++) {
        int64_t id = -1;
        rc = gguf_int_key(g, sp_key[s], &id, err, err_n);
        if (rc == MOR_E_NOT_FOUND) continue;
        if (rc) goto done;
        d.special[s] = id;
    }
    rc = gguf_bool_key(g, "tokenizer.ggml.add_bos_token", &d.add_bos, err, err_n);
    if (!rc) rc = gguf_bool_key(g, "tokenizer.ggml.add_eos_token", &d.add_eos, err, err_n);
    if (!rc) rc = gguf_bool_key(g, "tokenizer.ggml.add_space_prefix", &d.add_space_prefix, err, err_n);
    if (rc) goto done;
    rc = mor__vocab_build(out, &d, err, err_n);
done:
    if (rc == MOR_E_NOMEM) mor__errf(err, err_n, MOR_E_NOMEM, "tokenizer: out of memory");
    const void *bufs[] = {tptr, tlen, scores, types, mptr, mlen};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) mor__free(alloc, (void *)(uintptr_t)bufs[i]);
    return rc;
}

int mor__vocab_set_pre(mor__vocab *v, const char *name, char *err, size_t err_n) {
    if (!v) return MOR_E_INVALID;
    if (v->type != MOR__VOCAB_BPE)
        return mor__errf(err, err_n, MOR_E_UNSUPPORTED, "pre-tokenizers apply to gpt2 vocabularies only");
    int ignore_merges, add_bos;
    int p = mor__pretok_lookup(name, name ? strlen(name) : 0, &ignore_merges, &add_bos);
    if (p < 0) return mor__errf(err, err_n, MOR_E_UNSUPPORTED, "unsupported pre-tokenizer '%s'", name);
    v->pre = p;
    v->ignore_merges = ignore_merges;
    return MOR_OK;
}

// ---- accessors ------------------------------------------------------------------------------

int32_t mor__vocab_n_tokens(const mor__vocab *v) { return v ? v->n_tokens : 0; }
int mor__vocab_type(const mor__vocab *v) { return v ? v->type : 0; }
int mor__vocab_pre(const mor__vocab *v) { return v ? v->pre : -1; }
int mor__vocab_add_bos(const mor__vocab *v) { return v ? v->add_bos : 0; }
int mor__vocab_add_eos(const mor__vocab *v) { return v ? v->add_eos : 0; }
int mor__vocab_add_space_prefix(const mor__vocab *v) { return v ? v->add_space_prefix : 0; }
int32_t mor__vocab_special(const mor__vocab *v, int slot) {
    if (!v || slot < 0 || slot >= MOR__SP_COUNT) return -1;
    return v->special[slot];
}
int mor__vocab_is_eog(const mor__vocab *v, int32_t token) {
    return v && token >= 0 && token < v->n_tokens && v->eog[token];
}
int mor__vocab_token_type(const mor__vocab *v, int32_t token) {
    if (!v || token < 0 || token >= v->n_tokens) return -1;
    return v->ttype[token];
}
const char *mor__vocab_piece_ref(const mor__vocab *v, int32_t token, size_t *len) {
    *len = v->piece_off[token + 1] - v->piece_off[token];
    return v->piece + v->piece_off[token];
}

// ---- detokenization -------------------------------------------------------------------------

static int is_special_type(uint8_t ty) {
    return ty == MOR__TOK_CONTROL || ty == MOR__TOK_UNKNOWN;
}

// The bytes a token contributes in a sequence; *run_start tracks where the tokenizer added a
// dummy-prefix space (start of text, after a token split out of the text), which is removed.
static const char *seq_piece(const mor__vocab *v, int32_t t, uint32_t flags, int *run_start, size_t *len) {
    uint8_t ty = v->ttype[t];
    const char *p = mor__vocab_piece_ref(v, t, len);
    if (is_special_type(ty) || ty == MOR__TOK_USER) {
        if (is_special_type(ty) && !(flags & MOR_DETOKENIZE_SPECIAL)) *len = 0;
        *run_start = 1;
        return p;
    }
    if (*run_start) {
        *run_start = 0;
        if (v->type == MOR__VOCAB_SPM && v->add_space_prefix && !(flags & MOR_DETOKENIZE_KEEP_PREFIX) &&
            *len > 0 && p[0] == ' ') {
            p++;
            (*len)--;
        }
    }
    return p;
}

int mor__vocab_piece(const mor__vocab *v, int32_t token, char *buf, size_t capacity, uint32_t flags,
                     size_t *n_bytes) {
    if (!v || !n_bytes || (!buf && capacity)) return MOR_E_INVALID;
    if (token < 0 || token >= v->n_tokens) return MOR_E_TOKEN;
    size_t len;
    const char *p = mor__vocab_piece_ref(v, token, &len);
    if (is_special_type(v->ttype[token]) && !(flags & MOR_DETOKENIZE_SPECIAL)) len = 0;
    *n_bytes = len;
    if (len > capacity) return MOR_E_BUFFER_SMALL;
    if (len) memcpy(buf, p, len);
    return MOR_OK;
}

int mor__vocab_detokenize(const mor__vocab *v, const int32_t *tokens, size_t n_tokens, char *buf,
                          size_t capacity, uint32_t flags, size_t *n_bytes) {
    if (!v || !n_bytes || (!tokens && n_tokens) || (!buf && capacity)) return MOR_E_INVALID;
    for (size_t i = 0; i < n_tokens; i++)
        if (tokens[i] < 0 || tokens[i] >= v->n_tokens) return MOR_E_TOKEN;
    size_t total = 0;
    int run_start = 1;
    for (size_t i = 0; i < n_tokens; i++) {
        size_t len;
        const char *p = seq_piece(v, tokens[i], flags, &run_start, &len);
        if (total + len <= capacity && len) memcpy(buf + total, p, len);
        total += len;
    }
    *n_bytes = total;
    return total > capacity ? MOR_E_BUFFER_SMALL : MOR_OK;
}

// ---- public API -----------------------------------------------------------------------------

const mor__vocab *mor__model_vocab(const mor_model *m) { return m ? (const mor__vocab *)m->vocab : NULL; }

MOR_API int mor_tokenize(const mor_model *model, const char *text, size_t text_len, int32_t *tokens,
                         size_t capacity, uint32_t flags, size_t *n_tokens) {
    if (!model || !n_tokens) return MOR_E_INVALID;
    const mor__vocab *v = mor__model_vocab(model);
    if (!v) return MOR_E_NOT_FOUND;
    return mor__vocab_tokenize(v, text, text_len, tokens, capacity, flags, n_tokens);
}

MOR_API int mor_token_to_piece(const mor_model *model, int32_t token, char *buf, size_t capacity,
                               uint32_t flags, size_t *n_bytes) {
    if (!model || !n_bytes) return MOR_E_INVALID;
    const mor__vocab *v = mor__model_vocab(model);
    if (!v) return MOR_E_NOT_FOUND;
    return mor__vocab_piece(v, token, buf, capacity, flags, n_bytes);
}

MOR_API int mor_detokenize(const mor_model *model, const int32_t *tokens, size_t n_tokens, char *buf,
                           size_t capacity, uint32_t flags, size_t *n_bytes) {
    if (!model || !n_bytes) return MOR_E_INVALID;
    const mor__vocab *v = mor__model_vocab(model);
    if (!v) return MOR_E_NOT_FOUND;
    return mor__vocab_detokenize(v, tokens, n_tokens, buf, capacity, flags, n_bytes);
}

MOR_API int32_t mor_model_n_vocab(const mor_model *model) {
    const mor__vocab *v = mor__model_vocab(model);
    return v ? v->n_tokens : -1;
}
MOR_API int32_t mor_model_token_bos(const mor_model *model) { return mor__vocab_special(mor__model_vocab(model), MOR__SP_BOS); }
MOR_API int32_t mor_model_token_eos(const mor_model *model) { return mor__vocab_special(mor__model_vocab(model), MOR__SP_EOS); }
MOR_API int32_t mor_model_token_unk(const mor_model *model) { return mor__vocab_special(mor__model_vocab(model), MOR__SP_UNK); }
MOR_API int32_t mor_model_token_pad(const mor_model *model) { return mor__vocab_special(mor__model_vocab(model), MOR__SP_PAD); }
MOR_API int32_t mor_model_token_eot(const mor_model *model) { return mor__vocab_special(mor__model_vocab(model), MOR__SP_EOT); }
MOR_API int mor_model_token_is_eog(const mor_model *model, int32_t token) {
    return mor__vocab_is_eog(mor__model_vocab(model), token);
}
MOR_API int mor_model_token_type(const mor_model *model, int32_t token) {
    return mor__vocab_token_type(mor__model_vocab(model), token);
}

// Streaming detokenizer.
struct mor_detok {
    const mor_model  *m;  // holds a reference: the model stays while the detokenizer lives
    const mor__vocab *v;
    uint32_t flags;
    int      run_start;
    size_t   n_held;
    char     held[4];
};

MOR_API int mor_detok_create(const mor_model *model, uint32_t flags, mor_detok **out) {
    if (!out) return MOR_E_INVALID;
    *out = NULL;
    if (!model) return MOR_E_INVALID;
    const mor__vocab *v = mor__model_vocab(model);
    if (!v) return MOR_E_NOT_FOUND;
    mor_detok *d = mor__alloc(v->alloc, 1, sizeof *d, 1);
    if (!d) return MOR_E_NOMEM;
    d->m = model;
    d->v = v;
    d->flags = flags;
    d->run_start = 1;
    mor__model_ref(model);
    *out = d;
    return MOR_OK;
}

MOR_API int mor_detok_push(mor_detok *d, int32_t token, char *buf, size_t capacity, size_t *n_bytes) {
    if (!d || !n_bytes || (!buf && capacity)) return MOR_E_INVALID;
    if (token < 0 || token >= d->v->n_tokens) return MOR_E_TOKEN;
    int run_start = d->run_start;
    size_t len;
    const char *p = seq_piece(d->v, token, d->flags, &run_start, &len);
    // held bytes + piece, minus an incomplete character at the end
    size_t all = d->n_held + len;
    size_t tail;
    if (len >= 3) {
        tail = mor__utf8_incomplete_tail((const uint8_t *)p, len);
    } else {
        char tmp[8];
        memcpy(tmp, d->held, d->n_held);
        memcpy(tmp + d->n_held, p, len);
        tail = mor__utf8_incomplete_tail((const uint8_t *)tmp, all);
    }
    size_t emit = all - tail;
    *n_bytes = emit;
    if (emit > capacity) return MOR_E_BUFFER_SMALL;
    char tmp[8];
    size_t nt = 0;
    if (tail) {  // the tail may straddle held bytes and the piece
        for (size_t k = 0; k < tail; k++) {
            size_t idx = all - tail + k;
            tmp[nt++] = idx < d->n_held ? d->held[idx] : p[idx - d->n_held];
        }
    }
    size_t o = 0;
    size_t from_held = MOR__MIN(d->n_held, emit);
    if (from_held) memcpy(buf, d->held, from_held);
    o = from_held;
    if (emit > o) memcpy(buf + o, p, emit - o);
    memcpy(d->held, tmp, nt);
    d->n_held = nt;
    d->run_start = run_start;
    return MOR_OK;
}

MOR_API int mor_detok_flush(mor_detok *d, char *buf, size_t capacity, size_t *n_bytes) {
    if (!d || !n_bytes || (!buf && capacity)) return MOR_E_INVALID;
    *n_bytes = d->n_held;
    if (d->n_held > capacity) return MOR_E_BUFFER_SMALL;
    if (d->n_held) memcpy(buf, d->held, d->n_held);
    d->n_held = 0;
    return MOR_OK;
}

MOR_API void mor_detok_reset(mor_detok *d) {
    if (!d) return;
    d->n_held = 0;
    d->run_start = 1;
}

MOR_API void mor_detok_free(mor_detok *d) {
    if (!d) return;
    const mor_model *m = d->m;
    mor__free(d->v->alloc, d);
    mor__model_unref(m);
}
