// pretok.c: pre-tokenizers of byte-level BPE vocabularies (tokenizer.ggml.pre).
//
// A pre-tokenizer is a list of stages. Each stage is one regular expression, applied to every
// piece the previous stage produced: its matches and the text between them both become
// pieces (leftmost-first search, as a regex iterator does). The expressions are those
// llama.cpp uses for each name (src/llama-vocab.cpp); here each one is a hand-written matcher
// over code points that returns the length of the match starting at a position (0: none).
// "Out of range" beyond the end of the piece, so lookaheads such as \s+(?!\S) stop at piece
// boundaries, exactly as they do when the regex runs on each piece separately.
//
// Classes: \p{L} \p{N} \p{P} \p{S} \p{M} are the Unicode general categories of unicode.h;
// \s is the White_Space property. Bytes that are not well-formed UTF-8 count as class S (the
// class of U+FFFD). In the character-range classes (DeepSeek, BLOOM) a non-ASCII White_Space
// character never matches a listed range (llama.cpp's regex sees it as U+000B).
#include "tokenizer.h"
#include "unicode.h"

typedef struct {
    const uint32_t *cp;
    const uint8_t  *fl;
} ptext;

typedef size_t (*matcher)(const ptext *t, size_t i, size_t e);

#define CLS(f) ((f) & MOR__UC_CLASS_MASK)
#define IS_L(f) (CLS(f) == MOR__UC_L)
#define IS_N(f) (CLS(f) == MOR__UC_N)
#define IS_P(f) (CLS(f) == MOR__UC_P)
#define IS_WS(f) (((f) & MOR__UC_WS) != 0)
#define IS_LNWS(f) (IS_L(f) || IS_N(f) || IS_WS(f))

static int is_nl(uint32_t c) { return c == '\r' || c == '\n'; }
static uint32_t ascii_lower(uint32_t c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

// The code point a character-range class sees.
static uint32_t range_cp(const ptext *t, size_t i) {
    uint32_t c = t->cp[i];
    if (c >= 0x110000u) return 0xFFFD;
    if (c > 0x7F && IS_WS(t->fl[i])) return 0x0B;
    return c;
}

// 's|'t|'re|'ve|'m|'ll|'d (case-insensitive when ci)
static size_t contraction(const ptext *t, size_t i, size_t e, int ci) {
    if (t->cp[i] != '\'' || i + 1 >= e) return 0;
    uint32_t c1 = ci ? ascii_lower(t->cp[i + 1]) : t->cp[i + 1];
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
    if (i + 2 < e) {
        uint32_t c2 = ci ? ascii_lower(t->cp[i + 2]) : t->cp[i + 2];
        if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
            return 3;
    }
    return 0;
}

// GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
static size_t m_gpt2(const ptext *t, size_t i, size_t e) {
    size_t n = contraction(t, i, e, 0);
    if (n) return n;
    uint32_t c = t->cp[i];
    size_t j = i;  // where the class run starts
    if (c == ' ') {
        if (i + 1 < e) j = i + 1;
        else j = e;  // a lone space at the end: only \s+ can match
    }
    if (j < e) {
        uint8_t f = t->fl[j];
        size_t p = j + 1;
        if (IS_L(f)) {
            while (p < e && IS_L(t->fl[p])) p++;
            return p - i;
        }
        if (IS_N(f)) {
            while (p < e && IS_N(t->fl[p])) p++;
            return p - i;
        }
        if (!IS_LNWS(f)) {
            while (p < e && !IS_LNWS(t->fl[p])) p++;
            return p - i;
        }
    }
    size_t k = 0;
    while (i + k < e && IS_WS(t->fl[i + k])) k++;
    if (k > 1 && i + k < e) return k - 1;  // \s+(?!\S): leave the last one for the next word
    if (k > 0) return k;
    return 1;
}

// Llama 3 (max_digits 3) and Qwen2 (1):
// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max}| ?[^\s\p{L}\p{N}]+[\r\n]*|
// \s*[\r\n]+|\s+(?!\S)|\s+
static size_t m_llama3_n(const ptext *t, size_t i, size_t e, size_t max_digits) {
    size_t n = contraction(t, i, e, 1);
    if (n) return n;
    uint32_t c = t->cp[i];
    uint8_t f = t->fl[i];
    if (!(is_nl(c) || IS_N(f))) {
        if (IS_L(f) || (i + 1 < e && IS_L(t->fl[i + 1]))) {
            size_t p = i + 1;
            while (p < e && IS_L(t->fl[p])) p++;
            return p - i;
        }
    }
    if (IS_N(f)) {
        size_t p = i + 1;
        while (p < e && p - i < max_digits && IS_N(t->fl[p])) p++;
        return p - i;
    }
    {
        size_t j = (c == ' ') ? i + 1 : i;
        if (j < e && !IS_LNWS(t->fl[j])) {
            size_t p = j + 1;
            while (p < e && !IS_LNWS(t->fl[p])) p++;
            while (p < e && is_nl(t->cp[p])) p++;
            return p - i;
        }
    }
    size_t k = 0, last_nl = 0;
    while (i + k < e && IS_WS(t->fl[i + k])) {
        if (is_nl(t->cp[i + k])) last_nl = k + 1;
        k++;
    }
    if (last_nl) return last_nl;
    if (k > 1 && i + k < e) return k - 1;
    if (k > 0) return k;
    return 1;
}
static size_t m_llama3(const ptext *t, size_t i, size_t e) { return m_llama3_n(t, i, e, 3); }
static size_t m_qwen2(const ptext *t, size_t i, size_t e) { return m_llama3_n(t, i, e, 1); }

// \p{N}
static size_t m_num_each(const ptext *t, size_t i, size_t e) {
    MOR__UNUSED(e);
    return IS_N(t->fl[i]) ? 1 : 0;
}
// \p{N}+
static size_t m_num_run(const ptext *t, size_t i, size_t e) {
    size_t p = i;
    while (p < e && IS_N(t->fl[p])) p++;
    return p - i;
}
// [0-9][0-9][0-9]
static size_t m_digit3(const ptext *t, size_t i, size_t e) {
    if (i + 3 > e) return 0;
    for (size_t k = 0; k < 3; k++)
        if (t->cp[i + k] < '0' || t->cp[i + k] > '9') return 0;
    return 3;
}
// [\p{P}\$\+<=>\^~\|]+ (default) and [\p{P}\$\+<=>\^~\|`]+ (falcon)
static int punct_default(const ptext *t, size_t i) {
    uint32_t c = t->cp[i];
    return IS_P(t->fl[i]) || c == '$' || c == '+' || c == '<' || c == '=' || c == '>' || c == '^' ||
           c == '~' || c == '|';
}
static size_t m_punct_default(const ptext *t, size_t i, size_t e) {
    size_t p = i;
    while (p < e && punct_default(t, p)) p++;
    return p - i;
}
static size_t m_punct_falcon(const ptext *t, size_t i, size_t e) {
    size_t p = i;
    while (p < e && (punct_default(t, p) || t->cp[p] == '`')) p++;
    return p - i;
}
// [\r\n]
static size_t m_nl_each(const ptext *t, size_t i, size_t e) {
    MOR__UNUSED(e);
    return is_nl(t->cp[i]) ? 1 : 0;
}

typedef struct {
    uint32_t lo, hi;
} cp_range;

static int in_ranges(const cp_range *r, size_t n, uint32_t c) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < r[mid].lo) hi = mid;
        else if (c > r[mid].hi) lo = mid + 1;
        else return 1;
    }
    return 0;
}

// DeepSeek LLM: the letter class of \s?[A-Za-zµÀ-ÖØ-ö...]+ (sorted ranges, from llama.cpp).
static const cp_range ds_latin[] = {
    {0x0041, 0x005A}, {0x0061, 0x007A}, {0x00B5, 0x00B5}, {0x00C0, 0x00D6}, {0x00D8, 0x00F6},
    {0x00F8, 0x01BA}, {0x01BC, 0x01BF}, {0x01C4, 0x0293}, {0x0295, 0x02AF}, {0x0370, 0x0373},
    {0x0376, 0x0377}, {0x037B, 0x037D}, {0x037F, 0x037F}, {0x0386, 0x0386}, {0x0388, 0x038A},
    {0x038C, 0x038C}, {0x038E, 0x03A1}, {0x03A3, 0x03F5}, {0x03F7, 0x0481}, {0x048A, 0x052F},
    {0x0531, 0x0556}, {0x10A0, 0x10C5}, {0x13A0, 0x13F5}, {0x13F8, 0x13FD}, {0x1C90, 0x1CBA},
    {0x1CBD, 0x1CBF}, {0x1D00, 0x1D2B}, {0x1D6B, 0x1D77}, {0x1D79, 0x1D9A}, {0x1E00, 0x1F15},
    {0x1F18, 0x1F1D}, {0x1F20, 0x1F45}, {0x1F48, 0x1F4D}, {0x1F50, 0x1F57}, {0x1F59, 0x1F59},
    {0x1F5B, 0x1F5B}, {0x1F5D, 0x1F5D}, {0x1F5F, 0x1F7D}, {0x1F80, 0x1FB4}, {0x1FB6, 0x1FBC},
    {0x1FBE, 0x1FBE}, {0x1FC2, 0x1FC4}, {0x1FC6, 0x1FCC}, {0x1FD0, 0x1FD3}, {0x1FD6, 0x1FDB},
    {0x1FE0, 0x1FEC}, {0x1FF2, 0x1FF4}, {0x1FF6, 0x1FFC}, {0x2102, 0x2102}, {0x2107, 0x2107},
    {0x210A, 0x2113}, {0x2115, 0x2115}, {0x2119, 0x211D}, {0x2124, 0x2124}, {0x2126, 0x2126},
    {0x2128, 0x2128}, {0x212A, 0x212D}, {0x212F, 0x2134}, {0x2139, 0x2139}, {0x213C, 0x213F},
    {0x2145, 0x2149}, {0x214E, 0x214E}, {0x2183, 0x2184}, {0x2C00, 0x2C7B}, {0x2C7E, 0x2CE4},
    {0x2CEB, 0x2CEE}, {0x2CF2, 0x2CF3}, {0xA640, 0xA66D}, {0xA680, 0xA69B}, {0xA722, 0xA76F},
    {0xA771, 0xA787}, {0xA78B, 0xA78E}, {0xAB70, 0xABBF}, {0xFB00, 0xFB06}, {0xFB13, 0xFB17},
    {0xFF21, 0xFF3A}, {0xFF41, 0xFF5A}, {0x10400, 0x1044F}, {0x104B0, 0x104D3},
    {0x104D8, 0x104FB}, {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF},
    {0x1E900, 0x1E943},
};
// DeepSeek LLM: [!-/:-~！-／：-～‘-‟　-。]
static const cp_range ds_punct[] = {
    {0x21, 0x2F}, {0x3A, 0x7E}, {0x2018, 0x201F}, {0x3000, 0x3002}, {0xFF01, 0xFF0F}, {0xFF1A, 0xFF5E},
};
// DeepSeek: [一-龥ࠀ-一가-퟿]
static const cp_range ds_cjk[] = {{0x0800, 0x4E00}, {0x4E00, 0x9FA5}, {0xAC00, 0xD7FF}};

#define NRANGES(r) (sizeof(r) / sizeof((r)[0]))

static int c_ds_latin(const ptext *t, size_t i) { return in_ranges(ds_latin, NRANGES(ds_latin), range_cp(t, i)); }
static int c_ds_punct(const ptext *t, size_t i) { return in_ranges(ds_punct, NRANGES(ds_punct), range_cp(t, i)); }
static int c_ds_cjk(const ptext *t, size_t i) { return in_ranges(ds_cjk, NRANGES(ds_cjk), range_cp(t, i)); }
static int c_letter(const ptext *t, size_t i) { return IS_L(t->fl[i]); }
static int c_punct(const ptext *t, size_t i) { return IS_P(t->fl[i]); }

// \s?[X]+
static size_t ws_opt_run(const ptext *t, size_t i, size_t e, int (*x)(const ptext *, size_t)) {
    size_t p = i;
    if (IS_WS(t->fl[i]) && i + 1 < e && x(t, i + 1)) p = i + 1;
    else if (!x(t, i)) return 0;
    while (p < e && x(t, p)) p++;
    return p - i;
}
static size_t m_ds_latin(const ptext *t, size_t i, size_t e) { return ws_opt_run(t, i, e, c_ds_latin); }
static size_t m_ds_punct(const ptext *t, size_t i, size_t e) { return ws_opt_run(t, i, e, c_ds_punct); }
static size_t m_ws_letters(const ptext *t, size_t i, size_t e) { return ws_opt_run(t, i, e, c_letter); }
static size_t m_ws_punct(const ptext *t, size_t i, size_t e) { return ws_opt_run(t, i, e, c_punct); }
static size_t m_ds_cjk(const ptext *t, size_t i, size_t e) {
    size_t p = i;
    while (p < e && c_ds_cjk(t, p)) p++;
    return p - i;
}

// BLOOM / Poro / GPT3-Finnish: " ?[^(\s|.,!?…。，、।۔،)]+"
static int c_bloom(const ptext *t, size_t i) {
    if (IS_WS(t->fl[i])) return 0;
    switch (range_cp(t, i)) {
    case '(': case '|': case ')': case '.': case ',': case '!': case '?':
    case 0x2026: case 0x3002: case 0xFF0C: case 0x3001: case 0x0964: case 0x06D4: case 0x060C:
        return 0;
    default:
        return 1;
    }
}
static size_t m_bloom(const ptext *t, size_t i, size_t e) {
    size_t p = i;
    if (t->cp[i] == ' ' && i + 1 < e && c_bloom(t, i + 1)) p = i + 1;
    else if (!c_bloom(t, i)) return 0;
    while (p < e && c_bloom(t, p)) p++;
    return p - i;
}

// \s+$ : marker; handled by the stage loop (the maximal trailing whitespace run).
#define M_WS_TAIL ((matcher)0)

typedef struct {
    const char *names;   // '\0'-separated, ends with an empty name
    matcher     stages[6];
    int         n_stages;
    int         ignore_merges;
    int         add_bos;     // -1: no opinion
} pre_def;

static const pre_def pre_defs[MOR__PRE_COUNT] = {
    [MOR__PRE_DEFAULT] = {"default\0", {m_punct_default, m_gpt2, m_num_run, m_digit3}, 4, 0, -1},
    [MOR__PRE_GPT2] = {"gpt-2\0phi-2\0jina-es\0jina-de\0gigachat\0jina-v1-en\0jina-v2-es\0"
                       "jina-v2-de\0jina-v2-code\0roberta-bpe\0mpt\0olmo\0jais\0",
                       {m_gpt2}, 1, 0, -1},
    [MOR__PRE_STARCODER] = {"starcoder\0refact\0command-r\0smollm\0codeshell\0exaone\0minerva-7b\0",
                            {m_num_each, m_gpt2}, 2, 0, -1},
    [MOR__PRE_LLAMA3] = {"llama3\0llama-v3\0llama-bpe\0falcon3\0", {m_llama3}, 1, 1, 1},
    [MOR__PRE_QWEN2] = {"qwen2\0deepseek-r1-qwen\0megrez\0stablelm2\0", {m_qwen2}, 1, 0, -1},
    [MOR__PRE_FALCON] = {"falcon\0", {m_punct_falcon, m_gpt2, m_digit3}, 3, 0, -1},
    [MOR__PRE_DEEPSEEK_LLM] = {"deepseek-llm\0",
                               {m_nl_each, m_ds_latin, m_ds_punct, M_WS_TAIL, m_ds_cjk, m_num_run},
                               6, 0, -1},
    [MOR__PRE_DEEPSEEK_CODER] = {"deepseek-coder\0",
                                 {m_nl_each, m_ws_letters, m_ws_punct, m_ds_cjk, m_num_each}, 5, 0, -1},
    [MOR__PRE_BLOOM] = {"bloom\0poro-chat\0gpt3-finnish\0", {m_bloom}, 1, 0, -1},
    [MOR__PRE_VIKING] = {"viking\0", {m_bloom, m_num_each}, 2, 0, -1},
};

// The Llama 3 expression under names whose other settings differ.
static const struct {
    const char *name;
    int         pre;
} pre_alias[] = {{"dbrx", MOR__PRE_LLAMA3}, {"smaug-bpe", MOR__PRE_LLAMA3}, {"chatglm-bpe", MOR__PRE_LLAMA3}};

int mor__pretok_lookup(const char *name, size_t len, int *ignore_merges, int *add_bos) {
    *ignore_merges = 0;
    *add_bos = -1;
    if (!name) return MOR__PRE_DEFAULT;
    for (size_t a = 0; a < sizeof(pre_alias) / sizeof(pre_alias[0]); a++)
        if (strlen(pre_alias[a].name) == len && memcmp(pre_alias[a].name, name, len) == 0)
            return pre_alias[a].pre;
    for (int p = 0; p < MOR__PRE_COUNT; p++) {
        for (const char *s = pre_defs[p].names; *s; s += strlen(s) + 1) {
            if (strlen(s) == len && memcmp(s, name, len) == 0) {
                *ignore_merges = pre_defs[p].ignore_merges;
                *add_bos = pre_defs[p].add_bos;
                return p;
            }
        }
    }
    return -1;
}

const char *mor__vocab_pre_name(int pre) {
    if (pre < 0 || pre >= MOR__PRE_COUNT) return "?";
    return pre_defs[pre].names;  // the first name
}

static size_t run_stage(matcher m, const ptext *t, const uint32_t *in, size_t n_in, uint32_t *out) {
    size_t n_out = 0, start = 0;
    for (size_t s = 0; s < n_in; s++) {
        size_t e = in[s];
        if (m == M_WS_TAIL) {
            size_t w = e;
            while (w > start && IS_WS(t->fl[w - 1])) w--;
            if (w > start) out[n_out++] = (uint32_t)w;
            out[n_out++] = (uint32_t)e;
            start = e;
            continue;
        }
        size_t i = start, gap = start;
        while (i < e) {
            size_t len = m(t, i, e);
            if (len) {
                if (gap < i) out[n_out++] = (uint32_t)i;
                i += len;
                out[n_out++] = (uint32_t)i;
                gap = i;
            } else {
                i++;
            }
        }
        if (gap < e) out[n_out++] = (uint32_t)e;
        start = e;
    }
    return n_out;
}

size_t mor__pretok_split(int pre, const uint32_t *cps, const uint8_t *fl, size_t n, uint32_t *ends,
                         uint32_t *tmp) {
    if (n == 0) return 0;
    const pre_def *d = &pre_defs[(pre >= 0 && pre < MOR__PRE_COUNT) ? pre : 0];
    ptext t = {cps, fl};
    // Stage inputs alternate between the two buffers; the last stage writes into ends.
    uint32_t *bufs[2];
    bufs[(d->n_stages - 1) % 2 == 0 ? 0 : 1] = ends;
    bufs[(d->n_stages - 1) % 2 == 0 ? 1 : 0] = tmp;
    uint32_t whole = (uint32_t)n;
    const uint32_t *in = &whole;
    size_t n_in = 1;
    for (int s = 0; s < d->n_stages; s++) {
        uint32_t *out = bufs[s % 2];
        n_in = run_stage(d->stages[s], &t, in, n_in, out);
        in = out;
    }
    return n_in;
}
