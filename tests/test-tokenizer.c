// test-tokenizer.c: tokenizer and detokenizer against reference vectors, round trips,
// malformed input, buffer contracts, special tokens, streaming and bad vocabulary metadata.
//
// Data (tests/data/vocab, see its README.md):
//   ggml-vocab-*.gguf + .inp/.out   llama.cpp's test-tokenizer-0 vectors (46 strings each)
//   pretok.inp + pretok-*.out       403 strings (the 46 above + 357 more) tokenized by
//                                   llama.cpp (same commit) for more vocabularies and for the
//                                   gpt-2 vocabulary under every other pre-tokenizer
//   llama2c-tokenizer.bin + _tests.json   llama2.c's Llama-2 tokenizer and its encode tests
#include "harness.h"

#include <pthread.h>

#include "llama2c.h"

#include "model.h"
#include "mor.h"
#include "tokenizer.h"
#include "unicode.h"

#define SEP "\n__ggml_vocab_test__\n"

static char *slurp(const char *name, size_t *n) {
    char path[512];
    test_path(path, sizeof path, name);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long l = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)l + 1);
    *n = fread(b, 1, (size_t)l, f);
    b[*n] = 0;
    fclose(f);
    return b;
}

// A vocabulary loaded from a GGUF file in tests/data (the image stays alive with it).
typedef struct {
    char      *img;
    mor__gguf  g;
    mor__vocab *v;
} tvocab;

static int tv_load(tvocab *t, const char *name) {
    size_t n;
    char err[256];
    memset(t, 0, sizeof *t);
    t->img = slurp(name, &n);
    if (!t->img) {
        printf("#   cannot read %s\n", name);
        return -1;
    }
    if (mor__gguf_parse(&t->g, t->img, n, err, sizeof err)) {
        printf("#   %s: %s\n", name, err);
        return -1;
    }
    if (mor__vocab_load(&t->v, &t->g, NULL, err, sizeof err)) {
        printf("#   %s: %s\n", name, err);
        return -1;
    }
    return 0;
}

static void tv_free(tvocab *t) {
    mor__vocab_free(t->v);
    mor__gguf_free(&t->g);
    free(t->img);
}

// Split a .inp file into strings (pointers into buf, which is modified).
static size_t split_inp(char *buf, char **s, size_t *len, size_t max) {
    size_t n = 0;
    char *p = buf, *q;
    while (n < max && (q = strstr(p, SEP)) != NULL) {
        s[n] = p;
        len[n] = (size_t)(q - p);
        n++;
        p = q + strlen(SEP);
    }
    return n;
}

static int32_t g_toks[1 << 16];

// Tokenize every string of inp (flags 0) and compare with the lines of out. Returns the number
// of strings checked, -1 on a mismatch (printed).
static int check_vectors(const mor__vocab *v, const char *inp_name, const char *out_name) {
    size_t ni, no;
    char *inp = slurp(inp_name, &ni), *out = slurp(out_name, &no);
    if (!inp || !out) {
        printf("#   missing %s or %s\n", inp_name, out_name);
        free(inp);
        free(out);
        return -1;
    }
    static char *s[1024];
    static size_t len[1024];
    size_t n = split_inp(inp, s, len, 1024);
    char *line = out;
    int bad = 0;
    for (size_t i = 0; i < n && !bad; i++) {
        char *nl = strchr(line, '\n');
        if (!nl) {
            printf("#   %s: fewer lines than strings\n", out_name);
            bad = 1;
            break;
        }
        *nl = 0;
        size_t nt = 0;
        int rc = mor__vocab_tokenize(v, s[i], len[i], g_toks, sizeof g_toks / sizeof g_toks[0], 0, &nt);
        char *p = line;
        size_t k = 0;
        while (!rc && *p) {
            char *e;
            long id = strtol(p, &e, 10);
            if (e == p) break;
            if (k >= nt || g_toks[k] != id) {
                bad = 1;
                break;
            }
            k++;
            p = e;
        }
        if (rc || bad || k != nt) {
            printf("#   %s string %zu (\"%.*s\"): expected%s\n#   got     ", inp_name, i, (int)MOR__MIN(len[i], 60),
                   s[i], line);
            for (size_t j = 0; j < nt && j < 40; j++) printf(" %d", g_toks[j]);
            printf(" (rc %d)\n", rc);
            bad = 1;
        }
        line = nl + 1;
    }
    free(inp);
    free(out);
    return bad ? -1 : (int)n;
}

static void vectors(const char *vocab) {
    tvocab t;
    char name[128], inp[160], out[160];
    snprintf(name, sizeof name, "vocab/ggml-vocab-%s.gguf", vocab);
    snprintf(inp, sizeof inp, "%s.inp", name);
    snprintf(out, sizeof out, "%s.out", name);
    ASSERT_EQ(tv_load(&t, name), 0);
    int n = check_vectors(t.v, inp, out);
    tv_free(&t);
    ASSERT_EQ(n, 46);
}

// The shipped model's own vocabulary (trained for it; byte-level BPE, GPT-2 pre-tokenizer):
// 408 strings with ids from the Hugging Face tokenizer it was trained with.
TEST(vectors_shipped_model) {
    tvocab t;
    ASSERT_EQ(tv_load(&t, "models/default.gguf"), 0);
    int n = check_vectors(t.v, "models/default.gguf.inp", "models/default.gguf.out");
    tv_free(&t);
    ASSERT_EQ(n, 408);
}

TEST(vectors_gpt2) { vectors("gpt-2"); }
TEST(vectors_llama_spm) { vectors("llama-spm"); }
TEST(vectors_mpt) { vectors("mpt"); }
TEST(vectors_refact) { vectors("refact"); }
TEST(vectors_starcoder) { vectors("starcoder"); }

// 403 strings per vocabulary, reference from llama.cpp.
TEST(pretok_vocabularies) {
    static const struct {
        const char *file, *pre, *out;
    } c[] = {
        {"gpt-2", NULL, "gpt-2-as-gpt-2"},   {"llama-spm", NULL, "llama-spm"}, {"mpt", NULL, "mpt"},
        {"starcoder", NULL, "starcoder"},    {"refact", NULL, "refact"},
        // ggml-vocab-gpt-neox.gguf = the mpt vocabulary without a tokenizer.ggml.pre key
        {"mpt", "", "gpt-neox"},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        tvocab t;
        char name[128], out[128], err[128];
        snprintf(name, sizeof name, "vocab/ggml-vocab-%s.gguf", c[i].file);
        snprintf(out, sizeof out, "vocab/pretok-%s.out", c[i].out);
        ASSERT_EQ(tv_load(&t, name), 0);
        if (c[i].pre) ASSERT_OK(mor__vocab_set_pre(t.v, c[i].pre[0] ? c[i].pre : NULL, err, sizeof err));
        int n = check_vectors(t.v, "vocab/pretok.inp", out);
        tv_free(&t);
        ASSERT_EQ(n, 403);
    }
}

// The gpt-2 vocabulary run under every other pre-tokenizer, against llama.cpp with the same
// tokenizer.ggml.pre value.
TEST(pretok_all_pretokenizers) {
    static const char *const pre[] = {"default", "gpt-2", "starcoder", "command-r", "smollm", "llama-bpe", "dbrx",
                                      "qwen2", "falcon", "deepseek-llm", "deepseek-coder", "bloom", "viking"};
    tvocab t;
    ASSERT_EQ(tv_load(&t, "vocab/ggml-vocab-gpt-2.gguf"), 0);
    int fails = 0;
    for (size_t i = 0; i < sizeof pre / sizeof pre[0]; i++) {
        char out[128], err[128];
        snprintf(out, sizeof out, "vocab/pretok-gpt-2-as-%s.out", pre[i]);
        if (mor__vocab_set_pre(t.v, pre[i], err, sizeof err)) {
            printf("#   %s\n", err);
            fails++;
            continue;
        }
        if (check_vectors(t.v, "vocab/pretok.inp", out) != 403) {
            printf("#   pre-tokenizer %s failed\n", pre[i]);
            fails++;
        }
    }
    tv_free(&t);
    ASSERT_EQ(fails, 0);
}

TEST(pretok_names) {
    static const struct {
        const char *name;
        int pre, ignore_merges;
    } c[] = {
        {"default", MOR__PRE_DEFAULT, 0}, {"gpt-2", MOR__PRE_GPT2, 0},       {"mpt", MOR__PRE_GPT2, 0},
        {"olmo", MOR__PRE_GPT2, 0},       {"starcoder", MOR__PRE_STARCODER, 0}, {"refact", MOR__PRE_STARCODER, 0},
        {"smollm", MOR__PRE_STARCODER, 0}, {"command-r", MOR__PRE_STARCODER, 0}, {"llama3", MOR__PRE_LLAMA3, 1},
        {"llama-bpe", MOR__PRE_LLAMA3, 1}, {"dbrx", MOR__PRE_LLAMA3, 0},      {"qwen2", MOR__PRE_QWEN2, 0},
        {"falcon", MOR__PRE_FALCON, 0},   {"deepseek-llm", MOR__PRE_DEEPSEEK_LLM, 0},
        {"deepseek-coder", MOR__PRE_DEEPSEEK_CODER, 0}, {"bloom", MOR__PRE_BLOOM, 0}, {"viking", MOR__PRE_VIKING, 0},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        int im, ab;
        ASSERT_EQ(mor__pretok_lookup(c[i].name, strlen(c[i].name), &im, &ab), c[i].pre);
        ASSERT_EQ(im, c[i].ignore_merges);
    }
    int im, ab;
    ASSERT_EQ(mor__pretok_lookup(NULL, 0, &im, &ab), MOR__PRE_DEFAULT);
    ASSERT_EQ(mor__pretok_lookup("tekken", 6, &im, &ab), -1);
    ASSERT_EQ(mor__pretok_lookup("gpt-", 4, &im, &ab), -1);
}

// ---- llama2.c tokenizer files ----------------------------------------------------------------

// Build a vocabulary from a llama2.c tokenizer file the way the llama2c converter writes it:
// spaces become U+2581, id 0 is <unk> (unknown), 1 <s> and 2 </s> (control), <0xNN> pieces
// are byte tokens; bos 1, eos 2, unk 0.
static mor__vocab *llama2c_vocab(const char *name, uint32_t n_tokens) {
    size_t n;
    char *b = slurp(name, &n);
    if (!b) return NULL;
    const char **tok = calloc(n_tokens, sizeof *tok);
    uint32_t *len = calloc(n_tokens, sizeof *len);
    float *score = calloc(n_tokens, sizeof *score);
    int32_t *type = calloc(n_tokens, sizeof *type);
    char *pool = malloc(n * 3 + 64);
    size_t p = 4, o = 0;
    mor__vocab *v = NULL;
    for (uint32_t i = 0; i < n_tokens; i++) {
        int32_t l;
        if (p + 8 > n) goto done;
        memcpy(&score[i], b + p, 4);
        memcpy(&l, b + p + 4, 4);
        p += 8;
        if (l < 0 || p + (size_t)l > n) goto done;
        const char *s = b + p;
        p += (size_t)l;
        tok[i] = pool + o;
        if (i == 0) s = "<unk>", l = 5;
        if (i == 1) s = "<s>", l = 3;
        if (i == 2) s = "</s>", l = 4;
        for (int32_t k = 0; k < l; k++) {
            if (s[k] == ' ') {
                memcpy(pool + o, "\xE2\x96\x81", 3);
                o += 3;
            } else {
                pool[o++] = s[k];
            }
        }
        len[i] = (uint32_t)(pool + o - tok[i]);
        type[i] = i == 0 ? MOR__TOK_UNKNOWN : i <= 2 ? MOR__TOK_CONTROL : MOR__TOK_NORMAL;
        unsigned x;
        char tail;
        char piece[8] = {0};
        if (len[i] == 6) memcpy(piece, tok[i], 6);  // the pool is not NUL-terminated
        if (len[i] == 6 && sscanf(piece, "<0x%2X%c", &x, &tail) == 2 && tail == '>') type[i] = MOR__TOK_BYTE;
    }
    mor__vocab_desc d;
    memset(&d, 0, sizeof d);
    d.type = MOR__VOCAB_SPM;
    d.n_tokens = n_tokens;
    d.tokens = tok;
    d.token_lens = len;
    d.scores = score;
    d.types = type;
    d.special[MOR__SP_BOS] = 1;
    d.special[MOR__SP_EOS] = 2;
    d.special[MOR__SP_UNK] = 0;
    for (int s = MOR__SP_PAD; s < MOR__SP_COUNT; s++) d.special[s] = -1;
    d.add_bos = d.add_eos = d.add_space_prefix = -1;
    char err[256];
    if (mor__vocab_build(&v, &d, err, sizeof err)) printf("#   %s: %s\n", name, err);
done:
    free(b);
    free(tok);
    free(len);
    free(score);
    free(type);
    free(pool);
    return v;
}

// Minimal reader for tokenizer_tests.json: [{"text": "...", "bos": b, "eos": b, "expected": [..]}, ...]
static const char *json_str(const char *p, char *out, size_t *n) {
    p = strchr(p, '"');
    if (!p) return NULL;
    p++;
    size_t o = 0;
    while (*p && *p != '"') {
        if (*p == '\\') {
            p++;
            char c = *p++;
            if (c == 'n') out[o++] = '\n';
            else if (c == 't') out[o++] = '\t';
            else if (c == 'u') {
                unsigned cp;
                sscanf(p, "%4x", &cp);
                p += 4;
                o += mor__utf8_encode(cp, out + o);
            } else out[o++] = c;
        } else {
            out[o++] = *p++;
        }
    }
    *n = o;
    return *p ? p + 1 : NULL;
}

TEST(llama2c_tokenizer_tests) {
    mor__vocab *v = llama2c_vocab("vocab/llama2c-tokenizer.bin", 32000);
    ASSERT(v != NULL);
    size_t n;
    char *js = slurp("vocab/llama2c-tokenizer_tests.json", &n);
    ASSERT(js != NULL);
    int cases = 0, bad = 0;
    const char *p = js;
    static char text[4096];
    while ((p = strstr(p, "\"text\"")) != NULL) {
        size_t tl;
        p = json_str(p + 6, text, &tl);
        if (!p) break;
        int bos = strstr(p, "\"bos\": true") && strstr(p, "\"bos\": true") < strstr(p, "\"expected\"");
        const char *e = strchr(strstr(p, "\"expected\""), '[') + 1;
        int32_t want[256];
        size_t nw = 0;
        while (*e && *e != ']') {
            char *end;
            long x = strtol(e, &end, 10);
            if (end == e) e++;
            else {
                want[nw++] = (int32_t)x;
                e = end;
            }
        }
        size_t nt;
        int rc = mor__vocab_tokenize(v, text, tl, g_toks, 4096, bos ? MOR_TOKENIZE_ADD_SPECIAL : 0, &nt);
        if (rc || nt != nw || memcmp(g_toks, want, nw * sizeof *want) != 0) {
            printf("#   case %d (\"%.40s\") differs\n", cases, text);
            bad++;
        }
        cases++;
        p = e;
    }
    free(js);
    // llama2.c's encode reproduces llama.cpp's llama-spm vectors: so must this vocabulary.
    int nv = check_vectors(v, "vocab/ggml-vocab-llama-spm.gguf.inp", "vocab/ggml-vocab-llama-spm.gguf.out");
    mor__vocab_free(v);
    ASSERT_EQ(cases, 5);
    ASSERT_EQ(bad, 0);
    ASSERT_EQ(nv, 46);
}

// Through the library's llama2.c converter (vocab-only GGUF): the same vectors pass.
TEST(llama2c_converter) {
    size_t n;
    char *tok = slurp("vocab/llama2c-tokenizer.bin", &n);
    ASSERT(tok != NULL);
    void *img = NULL;
    size_t size = 0;
    char err[256];
    int rc = mor__llama2c_convert(NULL, 0, tok, n, &img, &size, err, sizeof err);
    free(tok);
    if (rc) printf("#   convert: %s\n", err);
    ASSERT_OK(rc);
    mor__gguf g;
    mor__vocab *v = NULL;
    ASSERT_OK(mor__gguf_parse(&g, img, size, err, sizeof err));
    rc = mor__vocab_load(&v, &g, NULL, err, sizeof err);
    if (rc) printf("#   load: %s\n", err);
    int nv = rc ? -1 : check_vectors(v, "vocab/ggml-vocab-llama-spm.gguf.inp", "vocab/ggml-vocab-llama-spm.gguf.out");
    size_t nt = 0;
    const char *a = "I believe the meaning of life is";
    if (!rc) rc = mor__vocab_tokenize(v, a, strlen(a), g_toks, 64, MOR_TOKENIZE_ADD_SPECIAL, &nt);
    mor__vocab_free(v);
    mor__gguf_free(&g);
    free(img);
    ASSERT_OK(rc);
    ASSERT_EQ(nv, 46);
    ASSERT_EQ(nt, 8);
    ASSERT_EQ(g_toks[0], 1);
    ASSERT_EQ(g_toks[7], 338);
}

TEST(llama2c_tok512) {
    mor__vocab *v = llama2c_vocab("tok512.bin", 512);
    ASSERT(v != NULL);
    size_t nt;
    // Prompt token counts (with BOS) from llama.cpp's server tests for stories260K.
    const char *a = "I believe the meaning of life is";
    const char *b = "Write a joke about AI from a very long prompt which will not be truncated";
    ASSERT_OK(mor__vocab_tokenize(v, a, strlen(a), g_toks, 4096, MOR_TOKENIZE_ADD_SPECIAL, &nt));
    ASSERT_EQ(nt, 18);
    ASSERT_EQ(g_toks[0], 1);
    ASSERT_OK(mor__vocab_tokenize(v, b, strlen(b), g_toks, 4096, MOR_TOKENIZE_ADD_SPECIAL, &nt));
    ASSERT_EQ(nt, 46);
    // The same vocabulary as stored in stories260K.gguf tokenizes identically.
    tvocab t;
    ASSERT_EQ(tv_load(&t, "stories260K.gguf"), 0);
    size_t n;
    char *inp = slurp("vocab/pretok.inp", &n);
    static int32_t t2[1 << 16];
    size_t n1, n2;
    ASSERT_OK(mor__vocab_tokenize(v, inp, n, g_toks, 1 << 16, MOR_TOKENIZE_ADD_SPECIAL, &n1));
    ASSERT_OK(mor__vocab_tokenize(t.v, inp, n, t2, 1 << 16, MOR_TOKENIZE_ADD_SPECIAL, &n2));
    free(inp);
    tv_free(&t);
    mor__vocab_free(v);
    ASSERT_EQ(n1, n2);
    ASSERT(memcmp(g_toks, t2, n1 * sizeof *t2) == 0);
}

// ---- round trips -----------------------------------------------------------------------------

// Random UTF-8: code points from every plane (no surrogates), runs of whitespace, ASCII.
static size_t rand_utf8(uint64_t *s, char *out, size_t max_chars) {
    static const uint32_t ws[] = {' ', ' ', ' ', '\t', '\n', '\r', 0x0B, 0x0C, 0x85, 0xA0, 0x2009, 0x3000, 0x2028};
    size_t o = 0, n = test_rand(s) % (max_chars + 1);
    for (size_t i = 0; i < n; i++) {
        uint64_t r = test_rand(s) % 100;
        uint32_t cp;
        if (r < 30) {
            cp = 0x20 + (uint32_t)(test_rand(s) % 95);
        } else if (r < 45) {
            size_t run = 1 + test_rand(s) % 6;
            for (size_t k = 0; k < run; k++) o += mor__utf8_encode(ws[test_rand(s) % 13], out + o);
            continue;
        } else if (r < 50) {
            cp = '0' + (uint32_t)(test_rand(s) % 10);
        } else if (r < 75) {
            cp = 0x80 + (uint32_t)(test_rand(s) % (0x10000 - 0x80));  // plane 0
        } else {
            cp = (uint32_t)(test_rand(s) % 0x110000);  // any plane
        }
        if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;
        // U+2581 is SentencePiece's space marker: in SPM vocabularies it reads back as a space
        if (cp == 0x2581) cp = 0x2582;
        o += mor__utf8_encode(cp, out + o);
    }
    return o;
}

static char g_text[1 << 16], g_back[1 << 18];

// Whether a vocabulary has a token for byte b: a byte-level vocabulary needs its character or
// a byte token; the SentencePiece vocabularies used here all have byte-fallback tokens.
static int encodable_byte(const mor__vocab *v, uint8_t b) {
    return mor__vocab_type(v) != MOR__VOCAB_BPE || v->byte_tok[b] >= 0;
}

// Offset of the first byte of s[0..n) the vocabulary cannot encode, n if none.
static size_t first_unencodable(const mor__vocab *v, const char *s, size_t n) {
    size_t i = 0;
    while (i < n && encodable_byte(v, (uint8_t)s[i])) i++;
    return i;
}

// s without the bytes the vocabulary cannot encode: text it must give back exactly.
static size_t representable(const mor__vocab *v, const char *s, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++)
        if (encodable_byte(v, (uint8_t)s[i])) out[o++] = s[i];
    return o;
}

static char g_want[1 << 16];

// Text with a byte the vocabulary cannot encode is refused (MOR_E_ENCODING, *n_tokens = the
// byte's offset), for the sizing call too; the text without such bytes round-trips exactly.
static int round_trip(const mor__vocab *v, const char *s0, size_t n0) {
    size_t nt, nb;
    size_t bad = first_unencodable(v, s0, n0);
    int rc;
    if (bad < n0) {
        rc = mor__vocab_tokenize(v, s0, n0, g_toks, sizeof g_toks / sizeof g_toks[0], 0, &nt);
        if (rc != MOR_E_ENCODING || nt != bad) {
            printf("#   byte 0x%02X at %zu: rc %d, offset %zu\n", (uint8_t)s0[bad], bad, rc, nt);
            return -101;
        }
        rc = mor__vocab_tokenize(v, s0, n0, NULL, 0, 0, &nt);
        if (rc != MOR_E_ENCODING || nt != bad) return -102;
    }
    size_t n = representable(v, s0, n0, g_want);
    const char *s = g_want;
    rc = mor__vocab_tokenize(v, s, n, g_toks, sizeof g_toks / sizeof g_toks[0], 0, &nt);
    if (rc) return rc;
    rc = mor__vocab_detokenize(v, g_toks, nt, g_back, sizeof g_back, 0, &nb);
    if (rc) return rc;
    if (nb != n || memcmp(g_back, s, n) != 0) {
        printf("#   round trip differs: \"%.*s\" -> \"%.*s\"\n", (int)MOR__MIN(n, 60), s, (int)MOR__MIN(nb, 60), g_back);
        return -100;
    }
    return 0;
}

static const char *const all_vocabs[] = {"gpt-2", "llama-spm", "mpt", "refact", "starcoder"};

static mor__vocab *open_vocab(int i, tvocab *t) {
    if (i < 5) {
        char name[128];
        snprintf(name, sizeof name, "vocab/ggml-vocab-%s.gguf", all_vocabs[i]);
        return tv_load(t, name) ? NULL : t->v;
    }
    memset(t, 0, sizeof *t);
    return t->v = (i == 5 ? llama2c_vocab("vocab/llama2c-tokenizer.bin", 32000) : llama2c_vocab("tok512.bin", 512));
}
#define N_VOCABS 7

TEST(round_trip_test_strings) {
    size_t n;
    char *inp = slurp("vocab/pretok.inp", &n);
    ASSERT(inp != NULL);
    static char *s[1024];
    static size_t len[1024];
    size_t ns = split_inp(inp, s, len, 1024);
    int bad = 0;
    for (int i = 0; i < N_VOCABS; i++) {
        tvocab t;
        mor__vocab *v = open_vocab(i, &t);
        if (!v) { bad++; continue; }
        for (size_t k = 0; k < ns; k++)
            if (round_trip(v, s[k], len[k])) bad++;
        tv_free(&t);
    }
    free(inp);
    ASSERT_EQ(ns, 403);
    ASSERT_EQ(bad, 0);
}

TEST(round_trip_random_utf8) {
    int bad = 0;
    for (int i = 0; i < N_VOCABS; i++) {
        tvocab t;
        mor__vocab *v = open_vocab(i, &t);
        if (!v) { bad++; continue; }
        uint64_t seed = test_seed();
        for (int k = 0; k < 10000 && bad < 5; k++) {
            size_t n = rand_utf8(&seed, g_text, 40);
            if (round_trip(v, g_text, n)) bad++;
        }
        tv_free(&t);
    }
    ASSERT_EQ(bad, 0);
}

// Arbitrary bytes: invalid UTF-8 (stray continuation bytes, truncated and overlong sequences,
// surrogates, 0xF5..0xFF) and NUL bytes. Defined behaviour: each such byte is kept (byte
// fallback / byte-level token), so the round trip still holds, or, where the vocabulary has
// no token for the byte, the text is refused with MOR_E_ENCODING; buffers are never over-read.
TEST(invalid_utf8_and_nul) {
    static const char *const cases[] = {"\xff", "\xc3", "a\xc3", "\xe2\x96", "\xf0\x9f\xa6", "\xc0\xaf",
                                        "\xed\xa0\x80", "\xf4\x90\x80\x80", "\x80\x80 \x80", "x\xfe\xfe y"};
    int bad = 0;
    for (int i = 0; i < N_VOCABS; i++) {
        tvocab t;
        mor__vocab *v = open_vocab(i, &t);
        if (!v) { bad++; continue; }
        for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
            if (round_trip(v, cases[k], strlen(cases[k]))) bad++;
        if (round_trip(v, "a\0b\0\0 c", 7)) bad++;
        if (round_trip(v, "\0", 1)) bad++;
        uint64_t seed = test_seed() + 7;
        for (int r = 0; r < 2000 && bad < 5; r++) {
            size_t n = test_rand(&seed) % 24;
            // heap copy of exactly n bytes, so ASan catches any read past the end
            char *b = malloc(n ? n : 1);
            for (size_t j = 0; j < n; j++) {
                uint64_t x = test_rand(&seed);
                b[j] = (char)((x & 3) == 0 ? ' ' : (x & 7) == 1 ? 0 : (x >> 8));
            }
            if (round_trip(v, b, n)) bad++;
            free(b);
        }
        tv_free(&t);
    }
    ASSERT_EQ(bad, 0);
}

// ---- API contracts ---------------------------------------------------------------------------

TEST(buffer_contracts) {
    tvocab t;
    ASSERT_EQ(tv_load(&t, "vocab/ggml-vocab-gpt-2.gguf"), 0);
    const char *s = "Hello, world!";
    size_t nt = 99;
    ASSERT_STATUS(mor__vocab_tokenize(t.v, s, strlen(s), NULL, 0, 0, &nt), MOR_E_BUFFER_SMALL);
    ASSERT_EQ(nt, 4);
    int32_t small[3] = {-5, -5, -5};
    ASSERT_STATUS(mor__vocab_tokenize(t.v, s, strlen(s), small, 3, 0, &nt), MOR_E_BUFFER_SMALL);
    ASSERT_EQ(nt, 4);
    ASSERT_EQ(small[0], -5);  // untouched
    int32_t ok[4];
    ASSERT_OK(mor__vocab_tokenize(t.v, s, strlen(s), ok, 4, 0, &nt));
    ASSERT_EQ(ok[0], 15496);
    ASSERT_EQ(ok[3], 0);
    ASSERT_OK(mor__vocab_tokenize(t.v, NULL, 0, NULL, 0, 0, &nt));
    ASSERT_EQ(nt, 0);
    ASSERT_STATUS(mor__vocab_tokenize(t.v, NULL, 3, ok, 4, 0, &nt), MOR_E_INVALID);
    ASSERT_STATUS(mor__vocab_tokenize(t.v, s, 3, NULL, 4, 0, &nt), MOR_E_INVALID);
    ASSERT_STATUS(mor__vocab_tokenize(t.v, s, 3, ok, 4, 0, NULL), MOR_E_INVALID);
    // pieces
    char buf[16];
    size_t nb;
    ASSERT_STATUS(mor__vocab_piece(t.v, 18435, buf, 2, 0, &nb), MOR_E_BUFFER_SMALL);  // " Hello"
    ASSERT_EQ(nb, 6);
    ASSERT_OK(mor__vocab_piece(t.v, 18435, buf, 6, 0, &nb));
    ASSERT(memcmp(buf, " Hello", 6) == 0);
    ASSERT_STATUS(mor__vocab_piece(t.v, -1, buf, 6, 0, &nb), MOR_E_TOKEN);
    ASSERT_STATUS(mor__vocab_piece(t.v, 50257, buf, 6, 0, &nb), MOR_E_TOKEN);
    // detokenize
    ASSERT_STATUS(mor__vocab_detokenize(t.v, ok, 4, buf, 5, 0, &nb), MOR_E_BUFFER_SMALL);
    ASSERT_EQ(nb, 13);
    ASSERT_OK(mor__vocab_detokenize(t.v, ok, 4, buf, 13, 0, &nb));
    ASSERT(memcmp(buf, s, 13) == 0);
    int32_t badt[2] = {15496, 60000};
    ASSERT_STATUS(mor__vocab_detokenize(t.v, badt, 2, buf, 16, 0, &nb), MOR_E_TOKEN);
    // <|endoftext|> is a control token: empty unless rendered on request
    ASSERT_OK(mor__vocab_piece(t.v, 50256, buf, 16, 0, &nb));
    ASSERT_EQ(nb, 0);
    ASSERT_OK(mor__vocab_piece(t.v, 50256, buf, 16, MOR_DETOKENIZE_SPECIAL, &nb));
    ASSERT_EQ(nb, 13);
    ASSERT(mor__vocab_is_eog(t.v, 50256));
    tv_free(&t);
}

TEST(special_tokens) {
    tvocab t;
    ASSERT_EQ(tv_load(&t, "vocab/ggml-vocab-llama-spm.gguf"), 0);
    mor__vocab *v = t.v;
    ASSERT_EQ(mor__vocab_special(v, MOR__SP_BOS), 1);
    ASSERT_EQ(mor__vocab_special(v, MOR__SP_EOS), 2);
    ASSERT_EQ(mor__vocab_special(v, MOR__SP_UNK), 0);
    ASSERT(mor__vocab_add_bos(v));
    ASSERT(!mor__vocab_add_eos(v));
    size_t nt, nb;
    int32_t a[64], b[64];
    ASSERT_OK(mor__vocab_tokenize(v, "Hello", 5, a, 64, MOR_TOKENIZE_ADD_SPECIAL, &nt));
    ASSERT_EQ(nt, 2);
    ASSERT_EQ(a[0], 1);
    ASSERT_EQ(a[1], 15043);  // "▁Hello"
    // parse_special: "<s>" and "</s>" become tokens; text after them gets the dummy prefix
    const char *s = "<s>Hello</s>";
    ASSERT_OK(mor__vocab_tokenize(v, s, strlen(s), a, 64, MOR_TOKENIZE_PARSE_SPECIAL, &nt));
    ASSERT_EQ(nt, 3);
    ASSERT_EQ(a[0], 1);
    ASSERT_EQ(a[1], 15043);
    ASSERT_EQ(a[2], 2);
    char buf[64];
    ASSERT_OK(mor__vocab_detokenize(v, a, nt, buf, 64, MOR_DETOKENIZE_SPECIAL, &nb));
    ASSERT_EQ(nb, strlen(s));
    ASSERT(memcmp(buf, s, nb) == 0);
    ASSERT_OK(mor__vocab_detokenize(v, a, nt, buf, 64, 0, &nb));
    ASSERT_EQ(nb, 5);
    ASSERT_OK(mor__vocab_detokenize(v, a, nt, buf, 64, MOR_DETOKENIZE_KEEP_PREFIX, &nb));
    ASSERT_EQ(nb, 6);
    ASSERT(memcmp(buf, " Hello", 6) == 0);
    // without parse_special the text is plain text
    ASSERT_OK(mor__vocab_tokenize(v, s, strlen(s), b, 64, 0, &nt));
    ASSERT(nt > 3);
    for (size_t i = 0; i < nt; i++) ASSERT(b[i] != 1 && b[i] != 2);
    ASSERT_OK(mor__vocab_detokenize(v, b, nt, buf, 64, 0, &nb));
    ASSERT_EQ(nb, strlen(s));
    ASSERT(memcmp(buf, s, nb) == 0);
    tv_free(&t);

    ASSERT_EQ(tv_load(&t, "vocab/ggml-vocab-gpt-2.gguf"), 0);
    const char *e = "a<|endoftext|>b";
    ASSERT_OK(mor__vocab_tokenize(t.v, e, strlen(e), a, 64, MOR_TOKENIZE_PARSE_SPECIAL, &nt));
    ASSERT_EQ(nt, 3);
    ASSERT_EQ(a[1], 50256);
    ASSERT_OK(mor__vocab_tokenize(t.v, e, strlen(e), a, 64, 0, &nt));
    ASSERT(nt > 3);
    ASSERT_OK(mor__vocab_tokenize(t.v, e, strlen(e), a, 64, MOR_TOKENIZE_ADD_SPECIAL, &nt));
    ASSERT(a[0] != 50256);  // gpt-2 does not add BOS
    tv_free(&t);
}

// The public API on a vocabulary-only model, and the streaming detokenizer.
TEST(public_api_and_streaming) {
    mor_model_params p;
    mor_model_params_init(&p);
    p.flags = MOR_MODEL_VOCAB_ONLY;
    char path[512], err[256];
    static const char *const files[] = {"vocab/ggml-vocab-llama-spm.gguf", "vocab/ggml-vocab-starcoder.gguf"};
    for (int f = 0; f < 2; f++) {
        mor_model *m = NULL;
        ASSERT_OK(mor_model_load(test_path(path, sizeof path, files[f]), &p, &m, err, sizeof err));
        ASSERT(mor_model_n_vocab(m) > 1000);
        ASSERT_STATUS(mor_tokenize(NULL, "a", 1, g_toks, 8, 0, &(size_t){0}), MOR_E_INVALID);
        mor_detok *d = NULL;
        ASSERT_OK(mor_detok_create(m, 0, &d));
        ASSERT_STATUS(mor_detok_push(d, -3, NULL, 0, &(size_t){0}), MOR_E_TOKEN);
        uint64_t seed = test_seed() + 99;
        for (int k = 0; k < 300; k++) {
            size_t n0 = rand_utf8(&seed, g_text, 30), nt, nb, total = 0;
            const mor__vocab *v = mor__model_vocab(m);
            size_t bad = first_unencodable(v, g_text, n0);
            if (bad < n0) {  // refused, sizing call included; go on with the encodable bytes
                ASSERT_STATUS(mor_tokenize(m, g_text, n0, NULL, 0, MOR_TOKENIZE_ADD_SPECIAL, &nt), MOR_E_ENCODING);
                ASSERT_EQ(nt, bad);
                ASSERT_STATUS(mor_tokenize(m, g_text, n0, g_toks, 1 << 16, MOR_TOKENIZE_ADD_SPECIAL, &nt),
                              MOR_E_ENCODING);
                ASSERT_EQ(nt, bad);
            }
            size_t n = representable(v, g_text, n0, g_want);
            ASSERT_OK(mor_tokenize(m, g_want, n, g_toks, 1 << 16, MOR_TOKENIZE_ADD_SPECIAL, &nt));
            ASSERT_OK(mor_detokenize(m, g_toks, nt, g_back, sizeof g_back, 0, &nb));
            ASSERT_EQ(nb, n);
            ASSERT(memcmp(g_back, g_want, n) == 0);
            // stream: every chunk is whole UTF-8 characters; the chunks add up to the text
            mor_detok_reset(d);
            static char all[1 << 16];
            for (size_t i = 0; i < nt; i++) {
                char chunk[256];
                size_t cn;
                int rc = mor_detok_push(d, g_toks[i], chunk, 1, &cn);  // too small unless empty
                if (rc == MOR_E_BUFFER_SMALL) ASSERT_OK(mor_detok_push(d, g_toks[i], chunk, sizeof chunk, &cn));
                else ASSERT_OK(rc);
                for (size_t j = 0; j < cn;) {
                    uint32_t cp;
                    size_t l = mor__utf8_decode((const uint8_t *)chunk + j, cn - j, &cp);
                    if (n == n0) ASSERT(cp < 0x110000);  // (removed bytes leave stray continuations)
                    j += l;
                }
                memcpy(all + total, chunk, cn);
                total += cn;
            }
            size_t cn;
            ASSERT_OK(mor_detok_flush(d, all + total, 8, &cn));
            ASSERT_EQ(cn, 0);  // valid input: nothing left over
            ASSERT_EQ(total, n);
            ASSERT(memcmp(all, g_want, n) == 0);
        }
        // a byte token that never completes is emitted by flush
        if (f == 0) {
            size_t cn;
            char out[8];
            mor_detok_reset(d);
            ASSERT_OK(mor_detok_push(d, 3 + 0xE2, out, 8, &cn));  // <0xE2>
            ASSERT_EQ(cn, 0);
            ASSERT_OK(mor_detok_flush(d, out, 8, &cn));
            ASSERT_EQ(cn, 1);
            ASSERT_EQ((uint8_t)out[0], 0xE2);
        }
        mor_detok_free(d);
        mor_model_free(m);
    }
}

// ---- bytes a vocabulary cannot encode; U+2581 in SentencePiece input -------------------------

// The last warning written to the library log.
static char g_warn[1024];
static void warn_capture(int32_t level, const char *msg, void *user) {
    (void)user;
    if (level == MOR_LOG_WARN) snprintf(g_warn, sizeof g_warn, "%s", msg);
}

// A vocabulary-only model whose vocabulary is written as GGUF in memory. merges: gpt2 only.
// unk: the unknown_token_id key, -2 to leave it out.
static mor_model *vocab_model(const char *type, const char *const *tok, const int32_t *ttype, uint32_t n,
                              const char *const *merges, uint32_t n_merges, int32_t unk) {
    mor__gguf_writer *w = mor__gguf_writer_create();
    int bpe = strcmp(type, "gpt2") == 0;
    int rc = w ? MOR_OK : MOR_E_NOMEM;
    if (!rc) rc = mor__gguf_w_str(w, "general.architecture", "llama");
    if (!rc) rc = mor__gguf_w_str(w, "tokenizer.ggml.model", type);
    if (!rc && bpe) rc = mor__gguf_w_str(w, "tokenizer.ggml.pre", "gpt-2");
    if (!rc) rc = mor__gguf_w_arr_str(w, "tokenizer.ggml.tokens", tok, NULL, n);
    if (!rc) rc = mor__gguf_w_arr_i32(w, "tokenizer.ggml.token_type", ttype, n);
    if (!rc && bpe) rc = mor__gguf_w_arr_str(w, "tokenizer.ggml.merges", merges, NULL, n_merges);
    if (!rc && unk != -2) rc = mor__gguf_w_i32(w, "tokenizer.ggml.unknown_token_id", unk);
    uint64_t size = 0;
    void *img = rc ? NULL : mor__gguf_writer_finish(w, &size);
    mor__gguf_writer_free(w);
    mor_model_params p;
    mor_model_params_init(&p);
    p.flags = MOR_MODEL_VOCAB_ONLY | MOR_MODEL_COPY;
    mor_model *m = NULL;
    char err[256];
    if (!img || mor_model_load_memory(img, size, &p, &m, err, sizeof err)) printf("#   vocab_model: %s\n", err);
    free(img);
    return m;
}

// Detokenize through the streaming detokenizer: the chunks of every push plus the flush, into
// out (cap bytes). SIZE_MAX on any error.
static size_t stream_detok(mor_model *m, const int32_t *toks, size_t nt, char *out, size_t cap) {
    mor_detok *d = NULL;
    size_t total = 0, cn = 0;
    if (mor_detok_create(m, 0, &d)) return SIZE_MAX;
    for (size_t i = 0; i <= nt && total != SIZE_MAX; i++) {
        int rc = i < nt ? mor_detok_push(d, toks[i], out + total, cap - total, &cn)
                        : mor_detok_flush(d, out + total, cap - total, &cn);
        total = rc ? SIZE_MAX : total + cn;
    }
    mor_detok_free(d);
    return total;
}

// A byte a byte-level vocabulary has no token for is refused, never dropped: starcoder lacks
// the characters of 0xC0, 0xC1, 0xF1 and 0xF5..0xFF.
TEST(unencodable_byte_refused) {
    mor_model_params p;
    mor_model_params_init(&p);
    p.flags = MOR_MODEL_VOCAB_ONLY;
    char path[512], err[256];
    mor_model *m = NULL;
    ASSERT_OK(mor_model_load(test_path(path, sizeof path, "vocab/ggml-vocab-starcoder.gguf"), &p, &m, err, sizeof err));
    mor_log_set(warn_capture, NULL, MOR_LOG_WARN);
    int32_t toks[32];
    for (int i = 0; i < 32; i++) toks[i] = -7;
    size_t nt = 99;
    g_warn[0] = 0;
    ASSERT_STATUS(mor_tokenize(m, "A\xff" "B", 3, toks, 32, 0, &nt), MOR_E_ENCODING);
    ASSERT_EQ(nt, 1);          // the offset of the byte: text[1]
    ASSERT_EQ(toks[0], -7);    // nothing written
    ASSERT_STR_CONTAINS(g_warn, "0xFF");
    ASSERT_STR_CONTAINS(g_warn, "offset 1");
    // the sizing call gives the same answer (not MOR_E_BUFFER_SMALL)
    nt = 99;
    ASSERT_STATUS(mor_tokenize(m, "A\xff" "B", 3, NULL, 0, 0, &nt), MOR_E_ENCODING);
    ASSERT_EQ(nt, 1);
    // 0xF1 is the first byte of U+40000..U+7FFFF; the first bad byte is the one reported
    const char *f1 = "ab \xf1\x80\x80\x80 \xff";
    ASSERT_STATUS(mor_tokenize(m, f1, strlen(f1), toks, 32, 0, &nt), MOR_E_ENCODING);
    ASSERT_EQ(nt, 3);
    ASSERT_STR_CONTAINS(g_warn, "0xF1");
    // the offset counts from the start of the text, across tokens split out of it
    int32_t eot = mor_model_token_eot(m);
    ASSERT(eot >= 0);
    const char *sp = "x<|endoftext|>y\xc0";
    ASSERT_STATUS(mor_tokenize(m, sp, strlen(sp), toks, 32, MOR_TOKENIZE_PARSE_SPECIAL, &nt), MOR_E_ENCODING);
    ASSERT_EQ(nt, 15);
    ASSERT_STR_CONTAINS(g_warn, "0xC0");
    mor_log_set(NULL, NULL, 0);
    // every single byte: round trip, or refused at offset 0 exactly for the bytes listed above
    int refused = 0;
    for (int b = 0; b < 256; b++) {
        char c = (char)b, back[8];
        size_t nb = 0;
        int rc = mor_tokenize(m, &c, 1, toks, 32, 0, &nt);
        int missing = b == 0xC0 || b == 0xC1 || b == 0xF1 || b >= 0xF5;
        if (missing) {
            ASSERT_STATUS(rc, MOR_E_ENCODING);
            ASSERT_EQ(nt, 0);
            refused++;
            continue;
        }
        ASSERT_OK(rc);
        ASSERT_OK(mor_detokenize(m, toks, nt, back, sizeof back, 0, &nb));
        ASSERT_EQ(nb, 1);
        ASSERT_EQ((uint8_t)back[0], b);
    }
    ASSERT_EQ(refused, 14);
    mor_model_free(m);
}

// GPT-2's byte -> character map (the character of byte b, UTF-8, NUL-terminated).
static void gpt2_char(int b, char *out) {
    uint32_t cp = (uint32_t)b;
    if (!((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))) {
        cp = 256;
        for (int c = 0; c < b; c++)
            if (!((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF))) cp++;
    }
    out[mor__utf8_encode(cp, out)] = 0;
}

// A byte-level vocabulary that lacks a byte's character but has its byte token <0xNN> (type
// byte) keeps the byte through that token; a "<0xNN>" of another type is not a byte token.
TEST(byte_level_byte_fallback) {
    static char chars[256][4];
    const char *tok[260];
    int32_t type[260];
    uint32_t n = 0;
    for (int b = 0; b < 256; b++) {
        if (b == 0xC0 || b == 0xFF) continue;
        gpt2_char(b, chars[b]);
        tok[n] = chars[b];
        type[n++] = MOR__TOK_NORMAL;
    }
    int32_t id_ff = (int32_t)n, id_ab = (int32_t)n + 2;
    tok[n] = "<0xFF>", type[n++] = MOR__TOK_BYTE;
    tok[n] = "<0xC0>", type[n++] = MOR__TOK_NORMAL;
    tok[n] = "ab", type[n++] = MOR__TOK_NORMAL;
    static const char *const merges[] = {"a b"};
    mor_model *m = vocab_model("gpt2", tok, type, n, merges, 1, -2);
    ASSERT(m != NULL);
    const char *s = "ab\xff\xff" "ab \xff";
    int32_t toks[32];
    size_t nt, nb;
    char back[256];
    ASSERT_OK(mor_tokenize(m, s, strlen(s), toks, 32, 0, &nt));
    int n_ff = 0;
    for (size_t i = 0; i < nt; i++) n_ff += toks[i] == id_ff;
    ASSERT_EQ(n_ff, 3);
    ASSERT_EQ(toks[0], id_ab);
    ASSERT_OK(mor_detokenize(m, toks, nt, back, sizeof back, 0, &nb));
    ASSERT_EQ(nb, strlen(s));
    ASSERT(memcmp(back, s, nb) == 0);
    nb = stream_detok(m, toks, nt, back, sizeof back);
    ASSERT_EQ(nb, strlen(s));
    ASSERT(memcmp(back, s, nb) == 0);
    // 0xC0: neither its character nor a byte token
    ASSERT_STATUS(mor_tokenize(m, "ab\xc0", 3, toks, 32, 0, &nt), MOR_E_ENCODING);
    ASSERT_EQ(nt, 2);
    mor_model_free(m);
}

// SentencePiece vocabulary without byte-fallback tokens: a character that is not a token
// becomes the unknown token (one per byte, as documented in mor.h); with no unknown token
// either, the text is refused.
TEST(spm_without_byte_fallback) {
    static const char *const tok[] = {"<unk>", "<s>", "</s>", "\xe2\x96\x81", "a", "b",
                                      "\xe2\x96\x81" "a", "\xe2\x96\x81" "b"};
    static const int32_t type[] = {2, 3, 3, 1, 1, 1, 1, 1};
    mor_model *m = vocab_model("llama", tok, type, 8, NULL, 0, 0);
    ASSERT(m != NULL);
    const char *s = "a\xc3\xa9 b";  // "aé b": é is not a token
    int32_t toks[32];
    size_t nt, nb;
    char back[64];
    ASSERT_OK(mor_tokenize(m, s, strlen(s), toks, 32, 0, &nt));
    ASSERT_EQ(nt, 4);
    ASSERT_EQ(toks[0], 6);  // ▁a
    ASSERT_EQ(toks[1], 0);  // <unk> for 0xC3
    ASSERT_EQ(toks[2], 0);  // <unk> for 0xA9
    ASSERT_EQ(toks[3], 7);  // ▁b
    // the unknown token reads back as nothing (its text on request) and, like any unknown
    // token, takes the leading space of the next token with it: the character is not recovered
    ASSERT_OK(mor_detokenize(m, toks, nt, back, sizeof back, 0, &nb));
    ASSERT_EQ(nb, 2);
    ASSERT(memcmp(back, "ab", 2) == 0);
    ASSERT_OK(mor_detokenize(m, toks, nt, back, sizeof back, MOR_DETOKENIZE_SPECIAL, &nb));
    ASSERT_EQ(nb, 12);
    ASSERT(memcmp(back, "a<unk><unk>b", 12) == 0);
    ASSERT_EQ(stream_detok(m, toks, nt, back, sizeof back), 2);
    ASSERT(memcmp(back, "ab", 2) == 0);
    mor_model_free(m);

    // no unknown token: refused at the byte, never dropped
    m = vocab_model("llama", tok + 1, type + 1, 7, NULL, 0, -1);
    ASSERT(m != NULL);
    ASSERT_EQ(mor_model_token_unk(m), -1);
    mor_log_set(warn_capture, NULL, MOR_LOG_WARN);
    g_warn[0] = 0;
    ASSERT_STATUS(mor_tokenize(m, s, strlen(s), toks, 32, 0, &nt), MOR_E_ENCODING);
    ASSERT_EQ(nt, 1);
    ASSERT_STR_CONTAINS(g_warn, "0xC3");
    ASSERT_STR_CONTAINS(g_warn, "offset 1");
    ASSERT_STATUS(mor_tokenize(m, s, strlen(s), NULL, 0, 0, &nt), MOR_E_ENCODING);
    ASSERT_EQ(nt, 1);
    ASSERT_OK(mor_tokenize(m, "a b", 3, toks, 32, 0, &nt));
    ASSERT_EQ(nt, 2);
    mor_model_free(m);
    // a vocabulary that cannot encode U+2581 at all fails on its own dummy prefix: reported at
    // the start of the text
    m = vocab_model("llama", tok + 4, type + 4, 2, NULL, 0, -1);
    ASSERT(m != NULL);
    ASSERT_STATUS(mor_tokenize(m, "ab", 2, toks, 32, 0, &nt), MOR_E_ENCODING);
    ASSERT_EQ(nt, 0);
    ASSERT_STR_CONTAINS(g_warn, "dummy-prefix");
    mor_log_set(NULL, NULL, 0);
    mor_model_free(m);
}

// U+2581 in the input of a SentencePiece vocabulary is the space marker, as in the reference
// SentencePiece: the same ids as a space, and it reads back as a space (documented in mor.h).
// Byte-level vocabularies keep it.
TEST(spm_space_marker_in_input) {
    static const char *const files[] = {"vocab/ggml-vocab-llama-spm.gguf", "stories260K.gguf"};
    static const char *const pairs[][2] = {
        {"a\xe2\x96\x81" "b", "a b"}, {"\xe2\x96\x81" "a", " a"}, {"x \xe2\x96\x81\xe2\x96\x81 y", "x    y"}};
    for (int f = 0; f < 2; f++) {
        tvocab t;
        ASSERT_EQ(tv_load(&t, files[f]), 0);
        for (size_t k = 0; k < sizeof pairs / sizeof pairs[0]; k++) {
            int32_t a[64], b[64];
            size_t na, nb, nc;
            char back[64];
            const char *lit = pairs[k][0], *sp = pairs[k][1];
            ASSERT_OK(mor__vocab_tokenize(t.v, lit, strlen(lit), a, 64, MOR_TOKENIZE_ADD_SPECIAL, &na));
            ASSERT_OK(mor__vocab_tokenize(t.v, sp, strlen(sp), b, 64, MOR_TOKENIZE_ADD_SPECIAL, &nb));
            ASSERT_EQ(na, nb);
            ASSERT(memcmp(a, b, na * sizeof *a) == 0);
            ASSERT_OK(mor__vocab_detokenize(t.v, a, na, back, sizeof back, 0, &nc));
            ASSERT_EQ(nc, strlen(sp));
            ASSERT(memcmp(back, sp, nc) == 0);
        }
        tv_free(&t);
    }
    tvocab t;
    ASSERT_EQ(tv_load(&t, "vocab/ggml-vocab-gpt-2.gguf"), 0);
    ASSERT_EQ(round_trip(t.v, pairs[0][0], strlen(pairs[0][0])), 0);
    tv_free(&t);
}

// ---- malformed vocabulary metadata ------------------------------------------------------------

// A tiny GGUF v3 image builder (metadata only).
typedef struct {
    uint8_t b[4096];
    size_t  n;
    uint64_t n_kv;
} gb;
static void gb_raw(gb *g, const void *p, size_t n) {
    memcpy(g->b + g->n, p, n);
    g->n += n;
}
static void gb_u32(gb *g, uint32_t x) { gb_raw(g, &x, 4); }
static void gb_u64(gb *g, uint64_t x) { gb_raw(g, &x, 8); }
static void gb_s(gb *g, const char *s) {
    gb_u64(g, strlen(s));
    gb_raw(g, s, strlen(s));
}
static void gb_key(gb *g, const char *k, uint32_t type) {
    gb_s(g, k);
    gb_u32(g, type);
    g->n_kv++;
}
static void gb_str(gb *g, const char *k, const char *v) {
    gb_key(g, k, MOR__GGUF_STRING);
    gb_s(g, v);
}
static void gb_strs(gb *g, const char *k, const char *const *v, size_t n) {
    gb_key(g, k, MOR__GGUF_ARRAY);
    gb_u32(g, MOR__GGUF_STRING);
    gb_u64(g, n);
    for (size_t i = 0; i < n; i++) gb_s(g, v[i]);
}
static void gb_i32s(gb *g, const char *k, const int32_t *v, size_t n) {
    gb_key(g, k, MOR__GGUF_ARRAY);
    gb_u32(g, MOR__GGUF_INT32);
    gb_u64(g, n);
    gb_raw(g, v, n * 4);
}
static void gb_i32(gb *g, const char *k, int32_t v) {
    gb_key(g, k, MOR__GGUF_INT32);
    gb_raw(g, &v, 4);
}
static void gb_begin(gb *g) {
    g->n = 24;
    g->n_kv = 0;
}
// Parse and load; returns the vocab status and leaves the message in err.
static int gb_load(gb *g, char *err, size_t n) {
    memcpy(g->b, "GGUF", 4);
    uint32_t ver = 3;
    uint64_t nt = 0;
    memcpy(g->b + 4, &ver, 4);
    memcpy(g->b + 8, &nt, 8);
    memcpy(g->b + 16, &g->n_kv, 8);
    mor__gguf gg;
    err[0] = 0;
    int rc = mor__gguf_parse(&gg, g->b, g->n, err, n);
    if (rc) return 1000 + rc;
    mor__vocab *v = NULL;
    rc = mor__vocab_load(&v, &gg, NULL, err, n);
    mor__vocab_free(v);
    mor__gguf_free(&gg);
    return rc;
}

TEST(bad_metadata) {
    static const char *const toks[] = {"<unk>", "<s>", "</s>", "a", "b", "ab", "<0x41>"};
    static const int32_t types[] = {2, 3, 3, 1, 1, 1, 6};
    char err[256];
    gb g;
    // a good one first
    gb_begin(&g);
    gb_str(&g, "tokenizer.ggml.model", "llama");
    gb_strs(&g, "tokenizer.ggml.tokens", toks, 7);
    gb_i32s(&g, "tokenizer.ggml.token_type", types, 7);
    ASSERT_OK(gb_load(&g, err, sizeof err));
    // no tokenizer at all
    gb_begin(&g);
    gb_str(&g, "general.name", "x");
    ASSERT_STATUS(gb_load(&g, err, sizeof err), MOR_E_NOT_FOUND);
    // unknown model
    gb_begin(&g);
    gb_str(&g, "tokenizer.ggml.model", "t5");
    ASSERT_STATUS(gb_load(&g, err, sizeof err), MOR_E_UNSUPPORTED);
    ASSERT_STR_CONTAINS(err, "tokenizer.ggml.model");
    // no tokens
    gb_begin(&g);
    gb_str(&g, "tokenizer.ggml.model", "llama");
    ASSERT_STATUS(gb_load(&g, err, sizeof err), MOR_E_FORMAT);
    ASSERT_STR_CONTAINS(err, "tokenizer.ggml.tokens");
    // tokens of the wrong type
    gb_begin(&g);
    gb_str(&g, "tokenizer.ggml.model", "llama");
    gb_i32s(&g, "tokenizer.ggml.tokens", types, 7);
    ASSERT_STATUS(gb_load(&g, err, sizeof err), MOR_E_FORMAT);
    ASSERT_STR_CONTAINS(err, "tokenizer.ggml.tokens");
    // token_type length mismatch
    gb_begin(&g);
    gb_str(&g, "tokenizer.ggml.model", "llama");
    gb_strs(&g, "tokenizer.ggml.tokens", toks, 7);
    gb_i32s(&g, "tokenizer.ggml.token_type", types, 6);
    ASSERT_STATUS(gb_load(&g, err, sizeof err), MOR_E_FORMAT);
    ASSERT_STR_CONTAINS(err, "token_type");
    // special id out of range
    gb_begin(&g);
    gb_str(&g, "tokenizer.ggml.model", "llama");
    gb_strs(&g, "tokenizer.ggml.tokens", toks, 7);
    gb_i32(&g, "tokenizer.ggml.eos_token_id", 7);
    ASSERT_STATUS(gb_load(&g, err, sizeof err), MOR_E_FORMAT);
    ASSERT_STR_CONTAINS(err, "eos_token_id");
    // -1 means none
    gb_begin(&g);
    gb_str(&g, "tokenizer.ggml.model", "llama");
    gb_strs(&g, "tokenizer.ggml.tokens", toks, 7);
    gb_i32(&g, "tokenizer.ggml.padding_token_id", -1);
    ASSERT_OK(gb_load(&g, err, sizeof err));
    // malformed byte token
    static const char *const badbyte[] = {"<unk>", "<0x4G>"};
    static const int32_t bbt[] = {2, 6};
    gb_begin(&g);
    gb_str(&g, "tokenizer.ggml.model", "llama");
    gb_strs(&g, "tokenizer.ggml.tokens", badbyte, 2);
    gb_i32s(&g, "tokenizer.ggml.token_type", bbt, 2);
    ASSERT_STATUS(gb_load(&g, err, sizeof err), MOR_E_FORMAT);
    ASSERT_STR_CONTAINS(err, "<0xNN>");
    // duplicate token
    static const char *const dup[] = {"a", "b", "a"};
    gb_begin(&g);
    gb_str(&g, "tokenizer.ggml.model", "llama");
    gb_strs(&g, "tokenizer.ggml.tokens", dup, 3);
    ASSERT_STATUS(gb_load(&g, err, sizeof err), MOR_E_FORMAT);
    ASSERT_STR_CONTAINS(err, "duplicate");
    // gpt2 without merges, with a bad merge, with an unknown pre-tokenizer
    static const char *const bt[] = {"a", "b", "ab"};
    gb_begin(&g);
    gb_str(&g, "tokenizer.ggml.model", "gpt2");
    gb_strs(&g, "tokenizer.ggml.tokens", bt, 3);
    ASSERT_STATUS(gb_load(&g, err, sizeof err), MOR_E_FORMAT);
    ASSERT_STR_CONTAINS(err, "tokenizer.ggml.merges");
    static const char *const badm[] = {"ab"};
    gb_begin(&g);
    gb_str(&g, "tokenizer.ggml.model", "gpt2");
    gb_strs(&g, "tokenizer.ggml.tokens", bt, 3);
    gb_strs(&g, "tokenizer.ggml.merges", badm, 1);
    ASSERT_STATUS(gb_load(&g, err, sizeof err), MOR_E_FORMAT);
    ASSERT_STR_CONTAINS(err, "merges[0]");
    static const char *const goodm[] = {"a b"};
    gb_begin(&g);
    gb_str(&g, "tokenizer.ggml.model", "gpt2");
    gb_str(&g, "tokenizer.ggml.pre", "no-such-pre");
    gb_strs(&g, "tokenizer.ggml.tokens", bt, 3);
    gb_strs(&g, "tokenizer.ggml.merges", goodm, 1);
    ASSERT_STATUS(gb_load(&g, err, sizeof err), MOR_E_UNSUPPORTED);
    ASSERT_STR_CONTAINS(err, "tokenizer.ggml.pre");
    // a minimal byte-level vocabulary works: "ab" merges
    gb_begin(&g);
    gb_str(&g, "tokenizer.ggml.model", "gpt2");
    gb_str(&g, "tokenizer.ggml.pre", "gpt-2");
    gb_strs(&g, "tokenizer.ggml.tokens", bt, 3);
    gb_strs(&g, "tokenizer.ggml.merges", goodm, 1);
    ASSERT_OK(gb_load(&g, err, sizeof err));
}

// Tokenize from several threads at once on one vocabulary: same results as one thread.
typedef struct {
    const mor__vocab *v;
    const char *text;
    size_t n, nt;
    int32_t *out;
    int rc;
} tjob;
static void *tjob_run(void *p) {
    tjob *j = p;
    for (int r = 0; r < 5 && !j->rc; r++) j->rc = mor__vocab_tokenize(j->v, j->text, j->n, j->out, 1 << 16, 0, &j->nt);
    return NULL;
}
TEST(concurrent_tokenize) {
    tvocab t;
    ASSERT_EQ(tv_load(&t, "vocab/ggml-vocab-starcoder.gguf"), 0);
    size_t n;
    char *inp = slurp("vocab/pretok.inp", &n);
    ASSERT(inp != NULL);
    size_t n1;
    ASSERT_OK(mor__vocab_tokenize(t.v, inp, n, g_toks, 1 << 16, 0, &n1));
    tjob j[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        j[i] = (tjob){t.v, inp, n, 0, malloc((1 << 16) * sizeof(int32_t)), 0};
        ASSERT_EQ(pthread_create(&th[i], NULL, tjob_run, &j[i]), 0);
    }
    int bad = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        if (j[i].rc || j[i].nt != n1 || memcmp(j[i].out, g_toks, n1 * sizeof *g_toks)) bad++;
        free(j[i].out);
    }
    free(inp);
    tv_free(&t);
    ASSERT_EQ(bad, 0);
}

TEST(utf8_helpers) {
    char b[4];
    uint32_t cp;
    ASSERT_EQ(mor__utf8_encode(0x10FFFF, b), 4);
    ASSERT_EQ(mor__utf8_decode((const uint8_t *)b, 4, &cp), 4);
    ASSERT_EQ(cp, 0x10FFFF);
    ASSERT_EQ(mor__utf8_encode(0x110000, b), 0);
    ASSERT_EQ(mor__utf8_decode((const uint8_t *)"\xE2\x82", 2, &cp), 1);  // truncated
    ASSERT_EQ(cp, MOR__UC_BADBYTE + 0xE2);
    ASSERT_EQ(mor__utf8_incomplete_tail((const uint8_t *)"a\xE2\x82", 3), 2);
    ASSERT_EQ(mor__utf8_incomplete_tail((const uint8_t *)"a\xE2\x82\xAC", 4), 0);
    ASSERT_EQ(mor__utf8_incomplete_tail((const uint8_t *)"a\xF0", 2), 1);
    ASSERT_EQ(mor__utf8_incomplete_tail((const uint8_t *)"a\xE0\x80", 3), 0);  // overlong: never completes
    ASSERT_EQ(mor__uc_flags('a') & 7, MOR__UC_L);
    ASSERT_EQ(mor__uc_flags('7') & 7, MOR__UC_N);
    ASSERT(mor__uc_flags(0x3000) & MOR__UC_WS);
    ASSERT(mor__uc_flags(0x85) & MOR__UC_WS);
    ASSERT(!(mor__uc_flags(0x200B) & MOR__UC_WS));
    ASSERT_EQ(mor__uc_flags(0x4E00) & 7, MOR__UC_L);
    ASSERT_EQ(mor__uc_flags(0x1F600) & 7, MOR__UC_S);
    ASSERT_EQ(mor__uc_flags(0x0301) & 7, MOR__UC_M);
    ASSERT_EQ(mor__uc_flags(0xE000) & 7, MOR__UC_C);
    ASSERT_EQ(mor__uc_flags(0x0378) & 7, MOR__UC_CN);
    ASSERT_EQ(mor__uc_flags(0x20000) & 7, MOR__UC_L);  // CJK Ext. B (a First/Last range)
}

// ---- hash flooding ---------------------------------------------------------------------------
// A model file is untrusted. The tables used to hash with fixed public functions (reproduced
// here), so a file could put every token text, or every merge pair, into one probe chain and
// make loading quadratic. They are now keyed by a random key (texts: SipHash-1-3; pairs:
// tabulation), and a run of more than MOR__VOCAB_MAX_RUN occupied slots is refused.

// The former text hash (an unseeded FNV-1a variant) and merge-pair hash.
static uint64_t old_hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}
static uint64_t old_hash_pair(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

// Slots of the text table for n tokens (as mor__vocab_build sizes it) and of the merge table.
static uint32_t pow2_ge(uint64_t n) {
    uint32_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

// Candidate token text number i: "h" and base-62 digits of i (no spaces: usable in merges).
static size_t cand_text(uint64_t i, char *out) {
    static const char dig[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    size_t o = 0;
    out[o++] = 'h';
    do {
        out[o++] = dig[i % 62];
        i /= 62;
    } while (i);
    return o;
}

// A vocabulary of texts pool[0..n) (each 16 bytes apart, lengths len[]); BPE when merges given.
typedef struct {
    uint32_t n, nm;
    char *pool;               // 16 bytes a token
    uint32_t *len;
    const char **tok;
    char *mpool;              // 40 bytes a merge
    uint32_t *mlen;
    const char **mer;
} flood;

static void flood_init(flood *f, uint32_t n, uint32_t nm) {
    memset(f, 0, sizeof *f);
    f->n = n;
    f->nm = nm;
    f->pool = calloc(n, 16);
    f->len = calloc(n, sizeof *f->len);
    f->tok = calloc(n, sizeof *f->tok);
    for (uint32_t i = 0; i < n; i++) f->tok[i] = f->pool + 16 * (size_t)i;
    if (nm) {
        f->mpool = calloc(nm, 40);
        f->mlen = calloc(nm, sizeof *f->mlen);
        f->mer = calloc(nm, sizeof *f->mer);
        for (uint32_t i = 0; i < nm; i++) f->mer[i] = f->mpool + 40 * (size_t)i;
    }
}

static void flood_free(flood *f) {
    free(f->pool);
    free(f->len);
    free(f->tok);
    free(f->mpool);
    free(f->mlen);
    free(f->mer);
}

static int flood_build(const flood *f, const uint64_t *key, mor__vocab **v, char *err, size_t err_n) {
    mor__vocab_desc d;
    memset(&d, 0, sizeof d);
    d.type = f->nm ? MOR__VOCAB_BPE : MOR__VOCAB_SPM;
    d.n_tokens = f->n;
    d.tokens = f->tok;
    d.token_lens = f->len;
    d.n_merges = f->nm;
    d.merges = f->mer;
    d.merge_lens = f->mlen;
    for (int s = 0; s < MOR__SP_COUNT; s++) d.special[s] = -1;
    d.add_bos = d.add_eos = d.add_space_prefix = -1;
    d.hash_key = key;
    *v = NULL;
    int rc = mor__vocab_build(v, &d, err, err_n);
    if (rc) printf("#   build: %s\n", err);
    return rc;
}

// Merges over base tokens 0..nb-1 (texts cand_text(i), 2..3 bytes): merge k joins the pair
// pairs[k] and its result is token nb + k.
static void flood_merges(flood *f, uint32_t nb, const uint64_t *pairs) {
    for (uint32_t i = 0; i < nb; i++) f->len[i] = (uint32_t)cand_text(i, f->pool + 16 * (size_t)i);
    for (uint32_t k = 0; k < f->nm; k++) {
        uint32_t a = (uint32_t)(pairs[k] >> 32), b = (uint32_t)pairs[k];
        char *r = f->pool + 16 * (size_t)(nb + k), *m = f->mpool + 40 * (size_t)k;
        memcpy(r, f->tok[a], f->len[a]);
        memcpy(r + f->len[a], f->tok[b], f->len[b]);
        f->len[nb + k] = f->len[a] + f->len[b];
        memcpy(m, f->tok[a], f->len[a]);
        m[f->len[a]] = ' ';
        memcpy(m + f->len[a] + 1, f->tok[b], f->len[b]);
        f->mlen[k] = f->len[a] + 1 + f->len[b];
    }
}

static uint64_t rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }
static void sipround(uint64_t v[4]) {
    v[0] += v[1], v[1] = rotl(v[1], 13), v[1] ^= v[0], v[0] = rotl(v[0], 32);
    v[2] += v[3], v[3] = rotl(v[3], 16), v[3] ^= v[2];
    v[0] += v[3], v[3] = rotl(v[3], 21), v[3] ^= v[0];
    v[2] += v[1], v[1] = rotl(v[1], 17), v[1] ^= v[2], v[2] = rotl(v[2], 32);
}
static uint64_t ref_siphash(const uint64_t k[2], const uint8_t *m, size_t n, int c, int d) {
    uint64_t v[4] = {k[0] ^ 0x736f6d6570736575ull, k[1] ^ 0x646f72616e646f6dull, k[0] ^ 0x6c7967656e657261ull,
                     k[1] ^ 0x7465646279746573ull};
    for (size_t i = 0; i <= n / 8; i++) {  // the blocks, then the length block
        uint64_t w = i == n / 8 ? (uint64_t)(n & 255) << 56 : 0;
        for (size_t j = 0; j < 8 && 8 * i + j < n; j++) w |= (uint64_t)m[8 * i + j] << (8 * j);
        v[3] ^= w;
        for (int r = 0; r < c; r++) sipround(v);
        v[0] ^= w;
    }
    v[2] ^= 0xff;
    for (int r = 0; r < d; r++) sipround(v);
    return v[0] ^ v[1] ^ v[2] ^ v[3];
}

// SipHash-2-4 known answer from the specification's appendix (key 00..0f, message 00..0e).
TEST(siphash_known_answer) {
    const uint64_t key[2] = {0x0706050403020100ull, 0x0f0e0d0c0b0a0908ull};
    uint8_t msg[15];
    for (int i = 0; i < 15; i++) msg[i] = (uint8_t)i;
    ASSERT_EQ(mor__siphash(key, msg, 15, 2, 4), (long long)0xa129ca6149be45e5ull);
    uint8_t none = 0;
    ASSERT_EQ(mor__siphash(key, &none, 0, 2, 4), (long long)0x726fdb47dd0e0e31ull);  // empty message
    // Every length 0..64, both round counts, against a byte-at-a-time rendering of the spec.
    uint8_t buf[64];
    uint64_t s = test_seed();
    for (int i = 0; i < 64; i++) buf[i] = (uint8_t)test_rand(&s);
    for (int cd = 0; cd < 2; cd++)
        for (size_t n = 0; n <= 64; n++) {
            int c = cd ? 2 : 1, d = cd ? 4 : 3;
            ASSERT_EQ(mor__siphash(key, buf, n, c, d), (long long)ref_siphash(key, buf, n, c, d));
        }
}

// n token texts that all share one slot under the former text hash: building (and looking up
// every token) visits a bounded number of slots per token, not n / 2.
TEST(hash_flood_tokens) {
    const uint32_t n = 3000;
    uint32_t mask = pow2_ge((uint64_t)n * 2) - 1;
    flood f;
    flood_init(&f, n, 0);
    uint32_t got = 0;
    char buf[16];
    for (uint64_t i = 0; got < n; i++) {
        size_t l = cand_text(i, buf);
        if ((old_hash_bytes(buf, l) & mask) != 0) continue;
        memcpy(f.pool + 16 * (size_t)got, buf, l);
        f.len[got++] = (uint32_t)l;
    }
    mor__vocab *v = NULL;
    char err[256];
    int rc = flood_build(&f, NULL, &v, err, sizeof err);
    if (rc == 0) {
        printf("#   %u colliding texts: %llu probes, longest run %u\n", n, (unsigned long long)v->probes_text,
               v->run_text);
        uint64_t bad = 0, probes = v->probes_text;
        for (uint32_t i = 0; i < n; i++) bad += mor__vocab_find(v, f.tok[i], f.len[i]) != (int32_t)i;
        ASSERT_EQ(bad, 0);
        ASSERT_LE(probes, 4.0 * n);  // linear probing at load <= 1/2: about 1.5 a token
        ASSERT_LE(v->run_text, MOR__VOCAB_MAX_RUN);
    }
    mor__vocab_free(v);
    flood_free(&f);
    ASSERT_OK(rc);
}

// Merge pairs that all share one slot under the former pair hash.
TEST(hash_flood_merges) {
    const uint32_t nb = 2048, nm = 1000;
    uint32_t mmask = pow2_ge((uint64_t)nm * 2 + 2) - 1;
    uint64_t *pairs = malloc(nm * sizeof *pairs);
    uint32_t got = 0;
    for (uint32_t a = 0; a < nb && got < nm; a++)
        for (uint32_t b = 0; b < nb && got < nm; b++) {
            uint64_t key = ((uint64_t)a << 32) | b;
            if ((old_hash_pair(key) & mmask) == 0) pairs[got++] = key;
        }
    ASSERT_EQ(got, nm);
    flood f;
    flood_init(&f, nb + nm, nm);
    flood_merges(&f, nb, pairs);
    mor__vocab *v = NULL;
    char err[256];
    int rc = flood_build(&f, NULL, &v, err, sizeof err);
    if (rc == 0) {
        printf("#   %u colliding merge pairs: %llu probes, longest run %u\n", nm,
               (unsigned long long)v->probes_merge, v->run_merge);
        uint64_t probes = v->probes_merge;
        uint32_t in_table = v->n_merges, run = v->run_merge;
        mor__vocab_free(v);
        v = NULL;
        ASSERT_EQ(in_table, nm);
        ASSERT_LE(probes, 4.0 * nm);
        ASSERT_LE(run, MOR__VOCAB_MAX_RUN);
    }
    mor__vocab_free(v);
    flood_free(&f);
    free(pairs);
    ASSERT_OK(rc);
}

// Should the key be known (here: fixed by the test), colliding texts or pairs can be found
// for it; the vocabulary is then refused once a run passes MOR__VOCAB_MAX_RUN, so building
// still does at most that many probes a token.
TEST(hash_run_bound) {
    const uint64_t key[2] = {0x0123456789abcdefull, 0xfedcba9876543210ull};
    char err[256];
    char buf[16];
    mor__vocab *v = NULL;
    // Texts: MAX_RUN of them in one slot are accepted (and cost n^2 / 2 probes: the key is
    // known), one more is refused.
    for (int over = 0; over < 2; over++) {
        uint32_t n = MOR__VOCAB_MAX_RUN + (uint32_t)over, mask = pow2_ge((uint64_t)n * 2) - 1, got = 0;
        flood f;
        flood_init(&f, n, 0);
        for (uint64_t i = 0; got < n; i++) {
            size_t l = cand_text(i, buf);
            if ((mor__siphash(key, buf, l, 1, 3) & mask) != 0) continue;
            memcpy(f.pool + 16 * (size_t)got, buf, l);
            f.len[got++] = (uint32_t)l;
        }
        int rc = flood_build(&f, key, &v, err, sizeof err);
        if (!over) {
            ASSERT_OK(rc);
            ASSERT_EQ(v->run_text, n);
            ASSERT_EQ(v->probes_text, (uint64_t)n * (n + 1) / 2);
        } else {
            ASSERT_STATUS(rc, MOR_E_FORMAT);
            ASSERT_STR_CONTAINS(err, "tokenizer.ggml.tokens");
        }
        mor__vocab_free(v);
        v = NULL;
        flood_free(&f);
    }
    // Merge pairs.
    const uint32_t nb = 1024, nm = MOR__VOCAB_MAX_RUN + 1;
    uint32_t mmask = pow2_ge((uint64_t)nm * 2 + 2) - 1, got = 0;
    uint64_t *pairs = malloc(nm * sizeof *pairs);
    static mor__pair_tab tab;
    mor__pair_tab_init(tab, key);
    for (uint32_t a = 0; a < nb && got < nm; a++)
        for (uint32_t b = 0; b < nb && got < nm; b++)
            if ((mor__pair_hash(tab, a, b, 0) & mmask) == 0) pairs[got++] = ((uint64_t)a << 32) | b;
    ASSERT_EQ(got, nm);
    flood f;
    flood_init(&f, nb + nm, nm);
    flood_merges(&f, nb, pairs);
    int rc = flood_build(&f, key, &v, err, sizeof err);
    mor__vocab_free(v);
    flood_free(&f);
    free(pairs);
    ASSERT_STATUS(rc, MOR_E_FORMAT);
    ASSERT_STR_CONTAINS(err, "tokenizer.ggml.merges");
}

static const test_entry tests_[] = {
    TEST_LIST(vectors_gpt2, vectors_llama_spm, vectors_mpt, vectors_refact, vectors_starcoder, pretok_vocabularies,
              pretok_all_pretokenizers, pretok_names, llama2c_tokenizer_tests, llama2c_tok512,
              round_trip_test_strings, round_trip_random_utf8, invalid_utf8_and_nul, buffer_contracts, special_tokens,
              public_api_and_streaming)
    TEST_LIST(llama2c_converter, bad_metadata, concurrent_tokenize, utf8_helpers, vectors_shipped_model,
              unencodable_byte_refused, byte_level_byte_fallback, spm_without_byte_fallback, spm_space_marker_in_input)
    TEST_LIST(siphash_known_answer, hash_flood_tokens, hash_flood_merges, hash_run_bound)
};
TEST_MAIN_LIST(tests_)
