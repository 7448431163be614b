// fuzz-tokenizer.c: tokenizer and detokenizer on fixed vocabularies (loaded once with
// MOR_MODEL_VOCAB_ONLY).
//
// Input: one control byte, then the text (or token ids). Control byte: bits 0-1 the vocabulary
// (0 stories260K: SentencePiece, 512 tokens; 1 llama-spm: SentencePiece, 32000; 2 gpt-2 and 3
// the shipped model: byte-level BPE), bit 2 token mode, bit 3 MOR_TOKENIZE_ADD_SPECIAL, bit 4
// MOR_TOKENIZE_PARSE_SPECIAL, bits 5-6 the detokenizer flags (MOR_DETOKENIZE_SPECIAL,
// MOR_DETOKENIZE_KEEP_PREFIX).
//
// Text mode: tokenize with capacity 0 gives the count the real call returns; every id is in
// the vocabulary; without PARSE_SPECIAL, detokenize(tokenize(x)) == x (the header's promise),
// except that MOR_E_ENCODING (a byte the vocabulary cannot encode) is accepted and a
// SentencePiece text holding U+2581 (the space marker) is not compared; the streaming
// detokenizer (mor_detok_push per token, then flush) gives what mor_detokenize gives.
// Token mode: the rest is a sequence of little-endian 16-bit ids (scaled to the vocabulary,
// some out of range): detokenize refuses bad ids with MOR_E_TOKEN, the stream (bad ids refused,
// the rest pushed) equals mor_detokenize of the good ids, and the text it gives survives
// a round trip.
#include "fuzz.h"

#define N_VOCABS 4
static const char *const vocab_files[N_VOCABS] = {"stories260K.gguf", "vocab/ggml-vocab-llama-spm.gguf",
                                                  "vocab/ggml-vocab-gpt-2.gguf", "models/default.gguf"};
static const int vocab_spm[N_VOCABS] = {1, 1, 0, 0};
static mor_model *vocabs[N_VOCABS];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    for (int i = 0; i < N_VOCABS; i++) vocabs[i] = fz_load(vocab_files[i], MOR_MODEL_VOCAB_ONLY);
    return 0;
}

static int has_u2581(const char *s, size_t n) {
    for (size_t i = 0; i + 2 < n; i++)
        if ((uint8_t)s[i] == 0xe2 && (uint8_t)s[i + 1] == 0x96 && (uint8_t)s[i + 2] == 0x81) return 1;
    return 0;
}

// mor_detokenize into a malloc'd exact-size buffer (sized by a capacity-0 call).
static char *detok_all(const mor_model *m, const int32_t *t, size_t n, uint32_t flags, size_t *len, int *st) {
    size_t need = 0;
    *st = mor_detokenize(m, t, n, NULL, 0, flags, &need);
    *len = 0;
    if (*st == MOR_E_TOKEN) return NULL;
    FZ_STATUS(*st, MOR_OK, MOR_E_BUFFER_SMALL);
    FZ_CHECK(*st == MOR_OK || need > 0, "BUFFER_SMALL asking for 0 bytes");
    char *buf = malloc(need ? need : 1);
    if (!buf) abort();
    size_t got = 0;
    *st = mor_detokenize(m, t, n, buf, need, flags, &got);
    FZ_STATUS(*st, MOR_OK);
    FZ_CHECK(got == need, "detokenize wrote %zu bytes, sizing call said %zu", got, need);
    *len = got;
    return buf;
}

// Streams the tokens (bad ids must be refused and skipped) and checks against `want`.
static void check_stream(const mor_model *m, const int32_t *t, size_t n, uint32_t flags, const char *want,
                         size_t want_n) {
    mor_detok *d = NULL;
    FZ_STATUS(mor_detok_create(m, flags, &d), MOR_OK);
    size_t cap = 64, len = 0, got = 0;
    char *out = malloc(want_n + 1), *buf = malloc(cap);
    if (!out || !buf) abort();
    int32_t nv = mor_model_n_vocab(m);
    for (size_t i = 0; i <= n; i++) {
        int s;
        for (;;) {
            s = i < n ? mor_detok_push(d, t[i], buf, cap, &got) : mor_detok_flush(d, buf, cap, &got);
            if (s != MOR_E_BUFFER_SMALL) break;
            FZ_CHECK(got > cap, "BUFFER_SMALL asks for %zu bytes with %zu given", got, cap);
            cap = got;
            char *q = realloc(buf, cap);
            if (!q) abort();
            buf = q;
        }
        if (i < n && (t[i] < 0 || t[i] >= nv)) {
            FZ_STATUS(s, MOR_E_TOKEN);
            continue;
        }
        FZ_STATUS(s, MOR_OK);
        FZ_CHECK(len + got <= want_n, "stream gives more than detokenize (%zu > %zu bytes)", len + got, want_n);
        memcpy(out + len, buf, got);
        len += got;
    }
    FZ_CHECK(len == want_n && memcmp(out, want, len) == 0,
             "stream (%zu bytes) differs from detokenize (%zu bytes), flags %u", len, want_n, flags);
    free(out);
    free(buf);
    mor_detok_free(d);
}

// Tokenizes text; checks the sizing call, the ids, the round trip and the stream.
static void text_case(int vi, const char *text, size_t n, uint32_t tflags, uint32_t dflags) {
    const mor_model *m = vocabs[vi];
    int32_t nv = mor_model_n_vocab(m);
    size_t count = 0;
    int s0 = mor_tokenize(m, text, n, NULL, 0, tflags, &count);
    FZ_STATUS(s0, MOR_OK, MOR_E_BUFFER_SMALL, MOR_E_ENCODING);
    if (s0 == MOR_OK) FZ_CHECK(count == 0, "capacity 0 accepted for %zu tokens", count);
    int32_t *t = malloc((count ? count : 1) * sizeof *t);
    if (!t) abort();
    size_t nt = 0;
    int s = mor_tokenize(m, text, n, t, count, tflags, &nt);
    if (s0 == MOR_E_ENCODING) {
        FZ_STATUS(s, MOR_E_ENCODING);
        free(t);
        return;
    }
    FZ_STATUS(s, MOR_OK);
    FZ_CHECK(nt == count, "sizing call said %zu tokens, the real call gave %zu", count, nt);
    for (size_t i = 0; i < nt; i++) FZ_CHECK(t[i] >= 0 && t[i] < nv, "token %d outside [0, %d)", t[i], nv);
    size_t len;
    int st;
    if (!(tflags & MOR_TOKENIZE_PARSE_SPECIAL) && !(vocab_spm[vi] && has_u2581(text, n))) {
        char *back = detok_all(m, t, nt, 0, &len, &st);
        FZ_STATUS(st, MOR_OK);
        FZ_CHECK(len == n && memcmp(back, text, n) == 0,
                 "round trip: %zu bytes in, %zu bytes out (vocabulary %s, tokenize flags %u)", n, len,
                 vocab_files[vi], tflags);
        free(back);
    }
    char *whole = detok_all(m, t, nt, dflags, &len, &st);
    FZ_STATUS(st, MOR_OK);
    check_stream(m, t, nt, dflags, whole, len);
    free(whole);
    free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    uint8_t c = data[0];
    int vi = c & 3;
    uint32_t tflags = ((c & 8) ? MOR_TOKENIZE_ADD_SPECIAL : 0) | ((c & 16) ? MOR_TOKENIZE_PARSE_SPECIAL : 0);
    uint32_t dflags = ((c & 32) ? MOR_DETOKENIZE_SPECIAL : 0) | ((c & 64) ? MOR_DETOKENIZE_KEEP_PREFIX : 0);
    // An exact-size copy of the text, so that ASan sees a read past its end.
    size_t n = size - 1;
    char *text = malloc(n ? n : 1);
    if (!text) return 0;
    memcpy(text, data + 1, n);
    if (!(c & 4)) {
        text_case(vi, text, n, tflags, dflags);
        free(text);
        return 0;
    }
    const mor_model *m = vocabs[vi];
    int32_t nv = mor_model_n_vocab(m);
    size_t nt = n / 2, ngood = 0;
    int32_t *t = malloc((nt ? nt : 1) * sizeof *t), *good = malloc((nt ? nt : 1) * sizeof *t);
    if (!t || !good) abort();
    for (size_t i = 0; i < nt; i++) {
        uint32_t v = (uint32_t)(uint8_t)text[2 * i] | (uint32_t)(uint8_t)text[2 * i + 1] << 8;
        // 0..65535 scaled onto [0, nv + nv/64): a few ids past the end; 0xffff is -1.
        t[i] = v == 0xffff ? -1 : (int32_t)((uint64_t)v * (uint64_t)(nv + nv / 64) >> 16);
        if (t[i] >= 0 && t[i] < nv) good[ngood++] = t[i];
        char piece[256];
        size_t pn = 0;
        int ps = mor_token_to_piece(m, t[i], piece, sizeof piece, dflags, &pn);
        if (t[i] >= 0 && t[i] < nv)
            FZ_STATUS(ps, MOR_OK, MOR_E_BUFFER_SMALL);
        else
            FZ_STATUS(ps, MOR_E_TOKEN);
    }
    size_t len;
    int st;
    char *whole = detok_all(m, t, nt, dflags, &len, &st);
    FZ_CHECK((st == MOR_E_TOKEN) == (ngood < nt), "detokenize: %s with %zu bad ids", mor_status_name(st), nt - ngood);
    free(whole);
    whole = detok_all(m, good, ngood, dflags, &len, &st);
    FZ_STATUS(st, MOR_OK);
    check_stream(m, t, nt, dflags, whole, len);
    // The text of any token sequence goes through the round trip like any other text.
    text_case(vi, whole, len, 0, dflags);
    free(whole);
    free(good);
    free(t);
    free(text);
    return 0;
}
