// llama2c.c: llama2.c checkpoint + tokenizer -> GGUF `llama` (see llama2c.h for the formats).
#include "llama2c.h"

#include "gguf-write.h"
#include "internal.h"
#include "tokenizer.h"

#include <math.h>
#include <stdio.h>

#define LLAMA2C_MAGIC 0x616b3432u  // "ak42" read as a little-endian uint32

static uint32_t rd_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static int32_t rd_i32(const uint8_t *p) { return (int32_t)rd_u32(p); }
static float rd_f32(const uint8_t *p) {
    uint32_t u = rd_u32(p);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// ---- checkpoint ------------------------------------------------------------------------------

enum { R_EMB, R_ATT_NORM, R_WQ, R_WK, R_WV, R_WO, R_FFN_NORM, R_W1, R_W2, R_W3, R_NORM, R_FREQ,
       R_CLS, R_COUNT };

typedef struct {
    uint64_t off;     // byte offset of the first item in the file
    uint64_t n;       // elements per item
    uint64_t items;   // items (one per layer, or 1; 2 for the RoPE tables)
    uint64_t bytes;   // bytes per item
    int      quant;   // int8 values + fp32 group scales
    int      present;
} region;

typedef struct {
    int      version;  // 0, 1, 2
    uint64_t dim, hidden, n_layers, n_heads, n_kv, vocab, seq, head, kv_dim;
    int      shared;   // classifier shared with the embedding
    uint64_t gs;       // v2 group size
    region   r[R_COUNT];
} ckpt;

static const char *const hdr_names[7] = {"dim", "hidden_dim", "n_layers", "n_heads",
                                         "n_kv_heads", "vocab_size", "seq_len"};

static int parse_header(ckpt *c, const uint8_t *p, size_t size, char *err, size_t err_n) {
    size_t hdr_at;
    memset(c, 0, sizeof *c);
    if (size >= 8 && rd_u32(p) == LLAMA2C_MAGIC) {
        int32_t v = rd_i32(p + 4);
        if (v != 1 && v != 2)
            return mor__errf(err, err_n, MOR_E_UNSUPPORTED,
                             "llama2.c checkpoint: version %d at offset 4 is not supported "
                             "(0, 1 and 2 are)",
                             (int)v);
        if (size < 256)
            return mor__errf(err, err_n, MOR_E_FORMAT,
                             "llama2.c checkpoint: truncated header: %zu bytes, the version %d "
                             "header is 256 bytes",
                             size, (int)v);
        c->version = v;
        hdr_at = 8;
    } else {
        if (size < 28)
            return mor__errf(err, err_n, MOR_E_FORMAT,
                             "llama2.c checkpoint: truncated header: %zu bytes, the header is 28 "
                             "bytes (7 int32)",
                             size);
        hdr_at = 0;
    }
    int32_t h[7];
    for (int i = 0; i < 7; i++) h[i] = rd_i32(p + hdr_at + 4 * (size_t)i);
    for (int i = 0; i < 7; i++) {
        int32_t x = h[i];
        if (i == 5 && c->version == 0 && x < 0 && x != INT32_MIN) x = -x;  // separate classifier
        if (x <= 0)
            return mor__errf(err, err_n, MOR_E_FORMAT,
                             "llama2.c checkpoint: header field %s (offset %zu) is %d, must be > 0",
                             hdr_names[i], hdr_at + 4 * (size_t)i, (int)h[i]);
        if (x > (1 << 20))  // the model loader's limit on every dimension (src/model.c)
            return mor__errf(err, err_n, MOR_E_FORMAT,
                             "llama2.c checkpoint: header field %s (offset %zu) is %d, more than "
                             "1048576",
                             hdr_names[i], hdr_at + 4 * (size_t)i, (int)h[i]);
    }
    c->dim = (uint64_t)h[0];
    c->hidden = (uint64_t)h[1];
    c->n_layers = (uint64_t)h[2];
    c->n_heads = (uint64_t)h[3];
    c->n_kv = (uint64_t)h[4];
    c->vocab = (uint64_t)(h[5] < 0 ? -(int64_t)h[5] : h[5]);
    c->seq = (uint64_t)h[6];
    if (c->version == 0) {
        c->shared = h[5] > 0;
    } else {
        uint8_t flag = p[36];
        if (flag > 1)
            return mor__errf(err, err_n, MOR_E_FORMAT,
                             "llama2.c checkpoint: shared-classifier flag at offset 36 is %u, "
                             "must be 0 or 1",
                             flag);
        c->shared = flag;
        if (c->version == 2) {
            int32_t gs = rd_i32(p + 37);
            if (gs <= 0)
                return mor__errf(err, err_n, MOR_E_FORMAT,
                                 "llama2.c checkpoint: group size at offset 37 is %d, must be > 0",
                                 (int)gs);
            c->gs = (uint64_t)gs;
        }
    }
    if (c->dim % c->n_heads)
        return mor__errf(err, err_n, MOR_E_FORMAT,
                         "llama2.c checkpoint: n_heads %llu does not divide dim %llu",
                         (unsigned long long)c->n_heads, (unsigned long long)c->dim);
    if (c->n_heads % c->n_kv)
        return mor__errf(err, err_n, MOR_E_FORMAT,
                         "llama2.c checkpoint: n_kv_heads %llu does not divide n_heads %llu",
                         (unsigned long long)c->n_kv, (unsigned long long)c->n_heads);
    c->head = c->dim / c->n_heads;
    if (c->head % 2)
        return mor__errf(err, err_n, MOR_E_FORMAT,
                         "llama2.c checkpoint: head size dim/n_heads = %llu is odd (RoPE rotates "
                         "pairs)",
                         (unsigned long long)c->head);
    c->kv_dim = c->head * c->n_kv;
    if (c->n_layers > (MOR__GGUF_MAX_TENSORS - 3) / 9)
        return mor__errf(err, err_n, MOR_E_FORMAT,
                         "llama2.c checkpoint: n_layers %llu is more than a GGUF file can hold "
                         "(at most %d)",
                         (unsigned long long)c->n_layers, (MOR__GGUF_MAX_TENSORS - 3) / 9);
    if (c->vocab > MOR__GGUF_MAX_ARRAY)
        return mor__errf(err, err_n, MOR_E_FORMAT,
                         "llama2.c checkpoint: vocab_size %llu exceeds the limit %u",
                         (unsigned long long)c->vocab, MOR__GGUF_MAX_ARRAY);
    return MOR_OK;
}

// Fills the region table in file order and checks the file size. All header values are
// below 2^31, so products of two fit in 62 bits; larger products are checked.
static int layout(ckpt *c, size_t size, char *err, size_t err_n) {
    static const int order0[] = {R_EMB, R_ATT_NORM, R_WQ, R_WK, R_WV, R_WO, R_FFN_NORM,
                                 R_W1, R_W2, R_W3, R_NORM, R_FREQ, R_CLS};
    static const int order1[] = {R_ATT_NORM, R_FFN_NORM, R_NORM, R_EMB, R_WQ, R_WK, R_WV,
                                 R_WO, R_W1, R_W2, R_W3, R_CLS};
    static const char *const rname[R_COUNT] = {
        "token_embedding", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3",
        "rms_final", "freq_cis", "wcls"};
    const uint64_t L = c->n_layers, d = c->dim;
    struct { uint64_t n, items; } spec[R_COUNT] = {
        [R_EMB] = {c->vocab * d, 1},       [R_ATT_NORM] = {d, L},
        [R_WQ] = {d * d, L},               [R_WK] = {c->kv_dim * d, L},
        [R_WV] = {c->kv_dim * d, L},       [R_WO] = {d * d, L},
        [R_FFN_NORM] = {d, L},             [R_W1] = {c->hidden * d, L},
        [R_W2] = {d * c->hidden, L},       [R_W3] = {c->hidden * d, L},
        [R_NORM] = {d, 1},                 [R_FREQ] = {c->seq * (c->head / 2), 2},
        [R_CLS] = {c->vocab * d, 1},
    };
    const int *order = c->version == 0 ? order0 : order1;
    int n_order = c->version == 0 ? (int)(sizeof order0 / sizeof *order0)
                                  : (int)(sizeof order1 / sizeof *order1);
    uint64_t off = c->version == 0 ? 28 : 256;
    int overflow = 0;
    for (int k = 0; k < n_order; k++) {
        int id = order[k];
        region *r = &c->r[id];
        if (id == R_CLS && c->shared) continue;
        r->present = 1;
        r->n = spec[id].n;
        r->items = spec[id].items;
        r->quant = c->version == 2 && id != R_ATT_NORM && id != R_FFN_NORM && id != R_NORM;
        if (r->quant) {
            if (r->n % c->gs)
                return mor__errf(err, err_n, MOR_E_FORMAT,
                                 "llama2.c checkpoint: %s has %llu elements, not a multiple of the "
                                 "group size %llu",
                                 rname[id], (unsigned long long)r->n, (unsigned long long)c->gs);
            overflow |= mor__mul_u64(r->n / c->gs, 4, &r->bytes);
            overflow |= mor__add_u64(r->bytes, r->n, &r->bytes);
        } else {
            overflow |= mor__mul_u64(r->n, 4, &r->bytes);
        }
        r->off = off;
        uint64_t total;
        overflow |= mor__mul_u64(r->bytes, r->items, &total);
        overflow |= mor__add_u64(off, total, &off);
    }
    if (overflow || off != size) {
        char want[32];
        if (overflow) snprintf(want, sizeof want, "more than 2^64");
        else snprintf(want, sizeof want, "%llu", (unsigned long long)off);
        return mor__errf(err, err_n, MOR_E_FORMAT,
                         "llama2.c checkpoint: file is %zu bytes, but a version %d checkpoint with "
                         "dim=%llu hidden_dim=%llu n_layers=%llu n_heads=%llu n_kv_heads=%llu "
                         "vocab_size=%llu seq_len=%llu (%s classifier) is %s bytes (%s)",
                         size, c->version, (unsigned long long)c->dim,
                         (unsigned long long)c->hidden, (unsigned long long)c->n_layers,
                         (unsigned long long)c->n_heads, (unsigned long long)c->n_kv,
                         (unsigned long long)c->vocab, (unsigned long long)c->seq,
                         c->shared ? "shared" : "separate", want,
                         overflow || off > size ? "truncated" : "trailing bytes");
    }
    return MOR_OK;
}

// Writes item `item` of region `id` as an F32 tensor.
static int put_tensor(mor__gguf_writer *w, const ckpt *c, const uint8_t *p, int id,
                      uint64_t item, const char *name, uint64_t cols, uint64_t rows, char *err,
                      size_t err_n) {
    const region *r = &c->r[id];
    uint64_t dims[2] = {cols, rows};
    uint32_t n_dims = rows ? 2 : 1;
    const uint8_t *src = p + r->off + item * r->bytes;
    int s;
    if (!r->quant) {
        s = mor__gguf_w_tensor(w, name, MOR__DT_F32, n_dims, dims, src);
    } else {
        float *tmp = malloc((size_t)r->n * sizeof *tmp);
        if (!tmp) return mor__errf(err, err_n, MOR_E_NOMEM, "out of memory converting %s", name);
        const int8_t *q = (const int8_t *)src;
        const uint8_t *sc = src + r->n;
        for (uint64_t i = 0; i < r->n; i++) tmp[i] = (float)q[i] * rd_f32(sc + 4 * (i / c->gs));
        s = mor__gguf_w_tensor(w, name, MOR__DT_F32, n_dims, dims, tmp);
        free(tmp);
    }
    if (s) return mor__errf(err, err_n, s, "cannot add tensor %s (%s)", name, mor_status_name(s));
    return MOR_OK;
}

static int put_weights(mor__gguf_writer *w, const ckpt *c, const uint8_t *p, char *err,
                       size_t err_n) {
    const uint64_t d = c->dim, V = c->vocab;
    int s;
    if ((s = put_tensor(w, c, p, R_EMB, 0, "token_embd.weight", d, V, err, err_n))) return s;
    if ((s = put_tensor(w, c, p, R_NORM, 0, "output_norm.weight", d, 0, err, err_n))) return s;
    int cls = c->shared ? R_EMB : R_CLS;
    if ((s = put_tensor(w, c, p, cls, 0, "output.weight", d, V, err, err_n))) return s;
    static const struct {
        const char *role;
        int         id;
        int         shape;  // 0: [d, d]; 1: [d, kv_dim]; 2: [d]; 3: [d, hidden]; 4: [hidden, d]
    } roles[] = {
        {"attn_q", R_WQ, 0},     {"attn_k", R_WK, 1},   {"attn_v", R_WV, 1},
        {"attn_output", R_WO, 0}, {"attn_norm", R_ATT_NORM, 2}, {"ffn_gate", R_W1, 3},
        {"ffn_down", R_W2, 4},   {"ffn_up", R_W3, 3},   {"ffn_norm", R_FFN_NORM, 2},
    };
    for (uint64_t l = 0; l < c->n_layers; l++) {
        for (size_t k = 0; k < sizeof roles / sizeof *roles; k++) {
            char name[MOR__GGUF_MAX_NAME + 1];
            snprintf(name, sizeof name, "blk.%llu.%s.weight", (unsigned long long)l, roles[k].role);
            uint64_t cols = d, rows;
            switch (roles[k].shape) {
            case 0: rows = d; break;
            case 1: rows = c->kv_dim; break;
            case 2: rows = 0; break;
            case 3: rows = c->hidden; break;
            default: cols = c->hidden; rows = d; break;
            }
            if ((s = put_tensor(w, c, p, roles[k].id, l, name, cols, rows, err, err_n))) return s;
        }
    }
    return MOR_OK;
}

// ---- tokenizer -------------------------------------------------------------------------------

typedef struct {
    uint64_t  n;
    char    **text;     // escaped piece (owned)
    uint32_t *len;
    float    *score;
    int32_t  *type;
} vocab;

static void vocab_free(vocab *v) {
    if (v->text)
        for (uint64_t i = 0; i < v->n; i++) free(v->text[i]);
    free(v->text);
    free(v->len);
    free(v->score);
    free(v->type);
    memset(v, 0, sizeof *v);
}

// Walks the entries; want == 0 means "as many as the file holds". Only validates and counts
// when v == NULL.
static int tok_walk(const uint8_t *p, size_t size, uint64_t want, uint64_t *count, vocab *v,
                    char *err, size_t err_n) {
    if (size < 4)
        return mor__errf(err, err_n, MOR_E_FORMAT,
                         "llama2.c tokenizer: truncated: %zu bytes, the header is 4 bytes", size);
    int32_t max_len = rd_i32(p);
    if (max_len <= 0)
        return mor__errf(err, err_n, MOR_E_FORMAT,
                         "llama2.c tokenizer: max_token_length at offset 0 is %d, must be > 0",
                         (int)max_len);
    size_t off = 4;
    uint64_t i = 0;
    for (; want ? i < want : off < size; i++) {
        if (size - off < 8)
            return mor__errf(err, err_n, MOR_E_FORMAT,
                             "llama2.c tokenizer: truncated at token %llu (offset %zu): needs 8 "
                             "bytes for its score and length, %zu left%s",
                             (unsigned long long)i, off, size - off,
                             want ? " (the model's vocab_size needs more tokens)" : "");
        float score = rd_f32(p + off);
        int32_t len = rd_i32(p + off + 4);
        if (!isfinite(score))
            return mor__errf(err, err_n, MOR_E_FORMAT,
                             "llama2.c tokenizer: token %llu (offset %zu) has a non-finite score",
                             (unsigned long long)i, off);
        if (len < 0 || len > max_len)
            return mor__errf(err, err_n, MOR_E_FORMAT,
                             "llama2.c tokenizer: token %llu (offset %zu) has length %d, outside "
                             "0..max_token_length %d",
                             (unsigned long long)i, off + 4, (int)len, (int)max_len);
        off += 8;
        if ((size_t)len > size - off)
            return mor__errf(err, err_n, MOR_E_FORMAT,
                             "llama2.c tokenizer: truncated at token %llu (offset %zu): %d bytes "
                             "of text, %zu left",
                             (unsigned long long)i, off, (int)len, size - off);
        if (v) {
            const char *src = (const char *)p + off;
            const char *text = src;
            size_t tlen = (size_t)len;
            int32_t type;
            if (i == 0) {
                text = "<unk>", tlen = 5, type = 2;
            } else if (i == 1) {
                text = "<s>", tlen = 3, type = 3;
            } else if (i == 2) {
                text = "</s>", tlen = 4, type = 3;
            } else if (len == 0) {
                type = 3;
            } else if (mor__parse_byte_token(src, (size_t)len) >= 0) {  // exactly "<0xNN>", as the loader wants
                type = 6;
            } else {
                type = 1;
            }
            size_t spaces = 0;
            for (size_t k = 0; k < tlen; k++) spaces += text[k] == ' ';
            char *out = malloc(tlen + 2 * spaces + 1);
            if (!out) return mor__errf(err, err_n, MOR_E_NOMEM, "out of memory");
            size_t o = 0;
            for (size_t k = 0; k < tlen; k++) {
                if (text[k] == ' ') {
                    memcpy(out + o, "\xe2\x96\x81", 3);  // U+2581
                    o += 3;
                } else {
                    out[o++] = text[k];
                }
            }
            out[o] = 0;
            v->text[i] = out;
            v->len[i] = (uint32_t)o;
            v->score[i] = score;
            v->type[i] = type;
        }
        off += (size_t)len;
        if (!want && i + 1 > MOR__GGUF_MAX_ARRAY)
            return mor__errf(err, err_n, MOR_E_FORMAT,
                             "llama2.c tokenizer: more than %u tokens", MOR__GGUF_MAX_ARRAY);
    }
    if (off != size) {
        uint64_t all = 0;
        char more[64] = "";
        if (tok_walk(p, size, 0, &all, NULL, NULL, 0) == MOR_OK)
            snprintf(more, sizeof more, "; the file holds %llu tokens", (unsigned long long)all);
        return mor__errf(err, err_n, MOR_E_FORMAT,
                         "llama2.c tokenizer: %zu trailing bytes at offset %zu after the %llu "
                         "tokens of the model's vocab_size%s",
                         size - off, off, (unsigned long long)want, more);
    }
    if (i < 3)
        return mor__errf(err, err_n, MOR_E_FORMAT,
                         "llama2.c tokenizer: %llu tokens, at least 3 are needed (unk, bos, eos)",
                         (unsigned long long)i);
    *count = i;
    return MOR_OK;
}

// Token texts must be unique (the loader refuses a vocabulary that repeats one; empty texts
// are exempt there too): sort the indices by text, then compare neighbours. O(n log n).
typedef struct {
    const char *t;
    uint32_t    len, idx;
} text_ref;

static int text_ref_cmp(const void *a, const void *b) {
    const text_ref *x = a, *y = b;
    int c = memcmp(x->t, y->t, x->len < y->len ? x->len : y->len);
    if (c) return c;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

static int check_unique(const vocab *v, char *err, size_t err_n) {
    text_ref *r = malloc((size_t)(v->n ? v->n : 1) * sizeof *r);
    if (!r) return mor__errf(err, err_n, MOR_E_NOMEM, "out of memory");
    size_t m = 0;
    for (uint64_t i = 0; i < v->n; i++)
        if (v->len[i]) r[m++] = (text_ref){v->text[i], v->len[i], (uint32_t)i};
    qsort(r, m, sizeof *r, text_ref_cmp);
    int s = MOR_OK;
    for (size_t i = 1; i < m && !s; i++)
        if (r[i].len == r[i - 1].len && !memcmp(r[i].t, r[i - 1].t, r[i].len))
            s = mor__errf(err, err_n, MOR_E_FORMAT, "llama2.c tokenizer: tokens %u and %u are both \"%.*s\"",
                          r[i - 1].idx, r[i].idx, (int)(r[i].len < 40 ? r[i].len : 40), r[i].t);
    free(r);
    return s;
}

static int load_vocab(vocab *v, const uint8_t *p, size_t size, uint64_t want, char *err,
                      size_t err_n) {
    uint64_t n;
    int s = tok_walk(p, size, want, &n, NULL, err, err_n);
    if (s) return s;
    v->text = calloc((size_t)n, sizeof *v->text);
    v->len = calloc((size_t)n, sizeof *v->len);
    v->score = calloc((size_t)n, sizeof *v->score);
    v->type = calloc((size_t)n, sizeof *v->type);
    v->n = n;
    if (!v->text || !v->len || !v->score || !v->type)
        return mor__errf(err, err_n, MOR_E_NOMEM, "out of memory for %llu tokens",
                         (unsigned long long)n);
    if ((s = tok_walk(p, size, n, &n, v, err, err_n))) return s;
    return check_unique(v, err, err_n);
}

// ---- entry points ----------------------------------------------------------------------------

#define W(call)                                                                                  \
    do {                                                                                         \
        if ((s = (call)))                                                                        \
            return mor__errf(err, err_n, s, "cannot write GGUF metadata (%s)", mor_status_name(s)); \
    } while (0)

static int put_keys(mor__gguf_writer *w, const vocab *v, const ckpt *c, uint32_t ctx, char *err,
                    size_t err_n) {
    int s;
    W(mor__gguf_w_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v->text, v->len, v->n));
    W(mor__gguf_w_arr_f32(w, "tokenizer.ggml.scores", v->score, v->n));
    W(mor__gguf_w_arr_i32(w, "tokenizer.ggml.token_type", v->type, v->n));
    W(mor__gguf_w_str(w, "tokenizer.ggml.model", "llama"));
    W(mor__gguf_w_str(w, "general.architecture", "llama"));
    W(mor__gguf_w_str(w, "general.name", "llama"));
    W(mor__gguf_w_u32(w, "tokenizer.ggml.unknown_token_id", 0));
    W(mor__gguf_w_u32(w, "tokenizer.ggml.bos_token_id", 1));
    W(mor__gguf_w_u32(w, "tokenizer.ggml.eos_token_id", 2));
    W(mor__gguf_w_u32(w, "tokenizer.ggml.seperator_token_id", UINT32_MAX));  // sic, as llama.cpp
    W(mor__gguf_w_u32(w, "tokenizer.ggml.padding_token_id", UINT32_MAX));
    if (!c) return MOR_OK;
    W(mor__gguf_w_u32(w, "llama.context_length", ctx ? ctx : (uint32_t)c->seq));
    W(mor__gguf_w_u32(w, "llama.embedding_length", (uint32_t)c->dim));
    W(mor__gguf_w_u32(w, "llama.feed_forward_length", (uint32_t)c->hidden));
    W(mor__gguf_w_u32(w, "llama.attention.head_count", (uint32_t)c->n_heads));
    W(mor__gguf_w_u32(w, "llama.attention.head_count_kv", (uint32_t)c->n_kv));
    W(mor__gguf_w_u32(w, "llama.block_count", (uint32_t)c->n_layers));
    W(mor__gguf_w_u32(w, "llama.rope.dimension_count", (uint32_t)c->head));
    W(mor__gguf_w_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f));
    return MOR_OK;
}
#undef W

int mor__llama2c_build(mor__gguf_writer *w, const void *model, size_t model_size, const void *tok,
                       size_t tok_size, uint32_t context_length, char *err, size_t err_n) {
    if (!w || (!model && model_size) || (!tok && tok_size))
        return mor__errf(err, err_n, MOR_E_INVALID, "llama2c: NULL argument");
    if (!tok) return mor__errf(err, err_n, MOR_E_INVALID, "llama2c: no tokenizer given");
    ckpt c;
    int s;
    memset(&c, 0, sizeof c);
    if (model) {
        if ((s = parse_header(&c, model, model_size, err, err_n))) return s;
        if ((s = layout(&c, model_size, err, err_n))) return s;
    }
    vocab v = {0};
    if ((s = load_vocab(&v, tok, tok_size, model ? c.vocab : 0, err, err_n))) goto done;
    if ((s = put_keys(w, &v, model ? &c : NULL, context_length, err, err_n))) goto done;
    if (model) s = put_weights(w, &c, model, err, err_n);
done:
    vocab_free(&v);
    return s;
}

int mor__llama2c_convert(const void *model, size_t model_size, const void *tok, size_t tok_size,
                         void **gguf_out, size_t *gguf_size, char *err, size_t err_n) {
    if (!gguf_out || !gguf_size) return mor__errf(err, err_n, MOR_E_INVALID, "llama2c: NULL output");
    *gguf_out = NULL;
    *gguf_size = 0;
    mor__gguf_writer *w = mor__gguf_writer_create();
    if (!w) return mor__errf(err, err_n, MOR_E_NOMEM, "out of memory");
    int s = mor__llama2c_build(w, model, model_size, tok, tok_size, 0, err, err_n);
    if (!s) {
        uint64_t n;
        void *img = mor__gguf_writer_finish(w, &n);
        if (!img || n > SIZE_MAX) {
            free(img);
            s = mor__errf(err, err_n, MOR_E_NOMEM, "out of memory finishing the GGUF image");
        } else {
            *gguf_out = img;
            *gguf_size = (size_t)n;
        }
    }
    mor__gguf_writer_free(w);
    return s;
}
