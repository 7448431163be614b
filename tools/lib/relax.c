// relax.c: vanilla models to relaxed recursive mor models (relax.h). Reads the source with the
// GGUF reader, computes in double (the source dequantized to F32 first), writes with the GGUF
// writer; the truncated SVDs are svd.c's.
#include "relax.h"
#include "gguf-write.h"

#include "internal.h"
#include "kernels.h"
#include "mor.h"
#include "svd.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

// ---- roles and shapes ------------------------------------------------------------------------

enum { R_Q, R_K, R_V, R_O, R_GATE, R_UP, R_DOWN, N_PROJ, R_ANORM = N_PROJ, R_FNORM, N_ROLE };
static const char *const role_name[N_ROLE] = {"attn_q", "attn_k",   "attn_v",    "attn_output", "ffn_gate",
                                              "ffn_up", "ffn_down", "attn_norm", "ffn_norm"};
static const char *const role_short[N_PROJ] = {"q", "k", "v", "o", "gate", "up", "down"};

enum {
    SH_CYCLE = MOR__RELAX_CYCLE,
    SH_SEQUENCE = MOR__RELAX_SEQUENCE,
    SH_MIDDLE_CYCLE = MOR__RELAX_MIDDLE_CYCLE,
    SH_MIDDLE_SEQUENCE = MOR__RELAX_MIDDLE_SEQUENCE
};
static const char *const sharing_name[] = {"cycle", "sequence", "middle_cycle", "middle_sequence"};
enum {
    INIT_STEPWISE = MOR__RELAX_STEPWISE,
    INIT_AVERAGE = MOR__RELAX_AVERAGE,
    INIT_LOWER = MOR__RELAX_LOWER
};
static const char *const init_name[] = {"stepwise", "average", "lower"};

typedef struct {
    const char *path;
    void       *img;
    uint64_t    size;
    mor__gguf   g;
    int         parsed, is_mor;
    char        prefix[8];       // "llama." or "mor."
    int         L, d, ff, n_h, n_kv, d_h;
    int         rope_norm;       // adjacent-pair RoPE: attn_q / attn_k rows are permuted to neox
    float       lora_scale;      // of the input's own LoRA (mor), merged into its layers
    int         all_f32;         // every projection matrix is F32
} source;

// The options with what follows from the source.
typedef struct {
    int      n_rec, sharing, init, roles, norm_overrides, skip_exact;
    long     rank;               // MOR__RELAX_FULL_RANK: full
    uint32_t type, lora_type;    // resolved: F32 or F16
    float    sigma;
    int      B, n_store, middle;
    void   (*warn)(void *user, const char *msg);
    void    *user;
} plan;

typedef struct {
    mor__gguf_writer *w;
    uint64_t params, params_body;      // elements written; without token_embd / output / exit outputs
    int      n_lora, n_lora_zero, n_norm_override, n_svd;
    double   svd_seconds;
    char    *err;
    size_t   err_n;
} sink;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void warn(const plan *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warn(const plan *p, const char *fmt, ...) {
    if (!p->warn) return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    p->warn(p->user, msg);
}

// Output rows x input columns of a role's matrix (norms: 1 x d).
static void role_shape(const source *in, int role, int64_t *rows, int64_t *cols) {
    int64_t d = in->d, q = (int64_t)in->n_h * in->d_h, kv = (int64_t)in->n_kv * in->d_h, ff = in->ff;
    static const int out_is[N_ROLE] = {1, 2, 2, 0, 3, 3, 0, 4, 4},
                     in_is[N_ROLE] = {0, 0, 0, 1, 0, 0, 3, 0, 0};
    const int64_t sz[5] = {d, q, kv, ff, 1};
    *rows = sz[out_is[role]];
    *cols = sz[in_is[role]];
    if (role >= N_PROJ) *rows = 1, *cols = d;
}

// ---- the layer map of docs/FORMAT.md §3.2 ----------------------------------------------------

static void map_layer(const plan *p, int L, int l, int *s, int *r) {
    int B = p->B, N = p->n_rec;
    switch (p->sharing) {
    case SH_CYCLE: *s = l % B, *r = l / B; return;
    case SH_SEQUENCE: *s = l / N, *r = l % N; return;
    default:
        if (l == 0 || l == L - 1) {
            *s = l == 0 ? 0 : B + 1, *r = 0;
        } else if (p->sharing == SH_MIDDLE_CYCLE) {
            *s = 1 + (l - 1) % B, *r = (l - 1) / B;
        } else {
            *s = 1 + (l - 1) / N, *r = (l - 1) % N;
        }
    }
}

// The unrolled layer of stored layer s at recursion r (the inverse of map_layer for shared s).
static int layer_of(const plan *p, int L, int s, int r) {
    for (int l = 0; l < L; l++) {
        int s2, r2;
        map_layer(p, L, l, &s2, &r2);
        if (s2 == s && r2 == r) return l;
    }
    return -1;
}

// ---- reading the source ----------------------------------------------------------------------

static int get_int(const source *in, const char *key, int dflt, int *out, char *err, size_t err_n) {
    char k[96];
    snprintf(k, sizeof k, "%s%s", in->prefix, key);
    uint32_t v;
    int s = mor__gguf_get_u32(&in->g, k, &v, err, err_n);
    if (s == MOR_E_NOT_FOUND && dflt >= 0) {
        *out = dflt;
        return MOR_OK;
    }
    if (s == MOR_E_NOT_FOUND) return mor__errf(err, err_n, MOR_E_FORMAT, "%s: missing key '%s'", in->path, k);
    if (s) return s;
    if (v < 1 || v > (1u << 24))
        return mor__errf(err, err_n, MOR_E_FORMAT, "%s: %s = %u is out of range", in->path, k, v);
    *out = (int)v;
    return MOR_OK;
}

static int str_eq(mor__gguf_str s, const char *c) {
    return s.len == strlen(c) && memcmp(s.ptr, c, s.len) == 0;
}

// "blk.N.<rest>": N (>= 0) and the rest; -1 for another name.
static int blk_layer(const char *name, const char **rest) {
    if (strncmp(name, "blk.", 4) != 0) return -1;
    const char *p = name + 4;
    long v = 0;
    if (*p < '0' || *p > '9') return -1;
    for (; *p >= '0' && *p <= '9'; p++)
        if ((v = v * 10 + (*p - '0')) > (1 << 20)) return -1;
    if (*p != '.') return -1;
    *rest = p + 1;
    return (int)v;
}

static int role_of(const char *s, size_t n) {
    for (int r = 0; r < N_ROLE; r++)
        if (strlen(role_name[r]) == n && memcmp(role_name[r], s, n) == 0) return r;
    return -1;
}

// Refusals of architectures and features a mor file cannot hold.
static int check_arch(source *in, char *err, size_t err_n) {
    mor__gguf_str a;
    int s = mor__gguf_get_cstr(&in->g, "general.architecture", &a, err, err_n);
    if (s == MOR_E_NOT_FOUND)
        return mor__errf(err, err_n, MOR_E_FORMAT, "%s: no general.architecture key", in->path);
    if (s) return s;
    if (str_eq(a, "llama")) {
        snprintf(in->prefix, sizeof in->prefix, "llama.");
        in->rope_norm = 1;
        return MOR_OK;
    }
    if (str_eq(a, "mor")) {
        in->is_mor = 1;
        snprintf(in->prefix, sizeof in->prefix, "mor.");
        return MOR_OK;
    }
    static const char *const why[][2] = {
        {"qwen2", "its attn_q / attn_k / attn_v biases have no place in a mor layer"},
        {"gemma2",
         "its post-attention and post-FFN norms, GELU, soft-caps, sliding window and embedding scale "
         "have no place in a mor layer"},
        {"phi3",
         "its sliding-window attention has no place in a mor layer (and its Q/K/V and gate/up matrices "
         "are fused)"},
    };
    for (size_t i = 0; i < sizeof why / sizeof why[0]; i++)
        if (str_eq(a, why[i][0]))
            return mor__errf(err, err_n, MOR_E_UNSUPPORTED, "%s: architecture %s cannot be converted: %s",
                             in->path, why[i][0], why[i][1]);
    return mor__errf(err, err_n, MOR_E_UNSUPPORTED,
                     "%s: architecture '%.*s' cannot be converted (llama or mor only)", in->path,
                     (int)(a.len > 40 ? 40 : a.len), a.ptr);
}

static int check_keys(source *in, const plan *p, char *err, size_t err_n) {
    const mor__gguf *g = &in->g;
    int s;
    if (in->is_mor) {
        uint32_t nr = 0;
        if ((s = mor__gguf_get_u32(g, "mor.recursion.count", &nr, err, err_n))) return s;
        if (nr != 1)
            return mor__errf(err, err_n, MOR_E_UNSUPPORTED,
                             "%s is already recursive (mor.recursion.count = %u): "
                             "mor-relax converts vanilla models (one recursion)",
                             in->path, nr);
        mor__gguf_str v;
        if (mor__gguf_get_cstr(g, "mor.router.type", &v, err, err_n) == MOR_OK && !str_eq(v, "none"))
            return mor__errf(err, err_n, MOR_E_UNSUPPORTED,
                             "%s has a router (mor.router.type = %.*s): a vanilla "
                             "model has none",
                             in->path, (int)(v.len > 20 ? 20 : v.len), v.ptr);
        s = mor__gguf_get_cstr(g, "mor.rope.type", &v, err, err_n);
        if (s == MOR_OK) in->rope_norm = str_eq(v, "norm");
        else if (s != MOR_E_NOT_FOUND) return s;
        int kvs = 0;
        if (mor__gguf_get_bool(g, "mor.kv_sharing", &kvs, err, err_n) == MOR_OK && kvs)
            warn(p, "%s sets mor.kv_sharing, which does nothing with one recursion; the output shares no KV",
                 in->path);
        float ls;
        if (mor__gguf_get_f32(g, "mor.lora.scale", &ls, err, err_n) == MOR_OK) in->lora_scale = ls;
    } else {
        mor__gguf_str v;
        s = mor__gguf_get_cstr(g, "llama.rope.scaling.type", &v, err, err_n);
        if (s == MOR_OK && !str_eq(v, "none"))
            return mor__errf(err, err_n, MOR_E_UNSUPPORTED,
                             "%s: llama.rope.scaling.type = %.*s: arch mor has no "
                             "RoPE scaling",
                             in->path, (int)(v.len > 20 ? 20 : v.len), v.ptr);
        uint32_t ne = 0;
        if (mor__gguf_get_u32(g, "llama.expert_count", &ne, err, err_n) == MOR_OK && ne > 1)
            return mor__errf(err, err_n, MOR_E_UNSUPPORTED,
                             "%s: llama.expert_count = %u: mixture-of-experts "
                             "layers cannot be converted",
                             in->path, ne);
    }
    err[0] = 0;
    if ((s = get_int(in, "block_count", -1, &in->L, err, err_n))) return s;
    if ((s = get_int(in, "embedding_length", -1, &in->d, err, err_n))) return s;
    if ((s = get_int(in, "feed_forward_length", -1, &in->ff, err, err_n))) return s;
    if ((s = get_int(in, "attention.head_count", -1, &in->n_h, err, err_n))) return s;
    if ((s = get_int(in, "attention.head_count_kv", in->n_h, &in->n_kv, err, err_n))) return s;
    if (in->L > 4096)
        return mor__errf(err, err_n, MOR_E_UNSUPPORTED, "%s: %d layers (at most 4096)", in->path, in->L);
    in->d_h = in->d / in->n_h;
    if (in->rope_norm && in->d_h % 2)
        return mor__errf(err, err_n, MOR_E_FORMAT, "%s: head size %d is odd", in->path, in->d_h);
    return MOR_OK;
}

// Every tensor must be one mor-relax carries (the engine validated their shapes already).
static int check_tensors(source *in, char *err, size_t err_n) {
    in->all_f32 = 1;
    for (uint64_t i = 0; i < in->g.n_tensors; i++) {
        const mor__gguf_tensor *t = &in->g.tensors[i];
        const char *rest;
        int l = blk_layer(t->name, &rest);
        if (l >= 0) {
            const char *dot = strchr(rest, '.');
            int role = dot ? role_of(rest, (size_t)(dot - rest)) : -1;
            if (role >= 0 && l < in->L && !strcmp(dot, ".weight")) {
                if (role < N_PROJ && t->type != MOR__DT_F32) in->all_f32 = 0;
                continue;
            }
            if (in->is_mor && l < in->L) continue;  // rec.0 overrides and LoRA: the loader checked them
        } else if (!strcmp(t->name, "token_embd.weight") || !strcmp(t->name, "output_norm.weight") ||
                   !strcmp(t->name, "output.weight")) {
            continue;
        } else if (in->is_mor && !strncmp(t->name, "exit.", 5)) {
            continue;
        } else if (!strcmp(t->name, "rope_freqs.weight")) {
            return mor__errf(err, err_n, MOR_E_UNSUPPORTED,
                             "%s: tensor rope_freqs.weight (RoPE frequency factors) "
                             "cannot be carried: arch mor has no such tensor",
                             in->path);
        }
        return mor__errf(err, err_n, MOR_E_UNSUPPORTED,
                         "%s: tensor '%s' is not part of a vanilla model mor-relax "
                         "can carry",
                         in->path, t->name);
    }
    return MOR_OK;
}

// Tensor `name` as rows x cols doubles (any type the engine computes with); MOR_E_NOT_FOUND when
// absent and !required.
static int read_matrix(const source *in, const char *name, int64_t rows, int64_t cols, int required,
                       double *out, char *err, size_t err_n) {
    const mor__gguf_tensor *t = mor__gguf_find_tensor(&in->g, name);
    if (!t)
        return required ? mor__errf(err, err_n, MOR_E_FORMAT, "%s: missing tensor '%s'", in->path, name)
                        : MOR_E_NOT_FOUND;
    if ((int64_t)t->dims[0] != cols || (int64_t)(t->n_elems / t->dims[0]) != rows)
        return mor__errf(err, err_n, MOR_E_FORMAT,
                         "%s: tensor '%s' has %llu x %llu elements, expected %lld x %lld", in->path, name,
                         (unsigned long long)(t->n_elems / t->dims[0]), (unsigned long long)t->dims[0],
                         (long long)rows, (long long)cols);
    void (*to_f32)(const void *, float *, int64_t) =
        mor__dtype_computed(t->type) ? mor__kernels_ref()->to_f32[t->type] : NULL;
    if (!to_f32)
        return mor__errf(err, err_n, MOR_E_UNSUPPORTED,
                         "%s: tensor '%s' has type %s, which mor-relax cannot read", in->path, name,
                         mor__dtype_name(t->type));
    float *row = malloc((size_t)cols * sizeof *row);
    if (!row) return mor__errf(err, err_n, MOR_E_NOMEM, "out of memory");
    int64_t rb = mor__dtype_row_bytes(t->type, cols);
    for (int64_t r = 0; r < rows; r++) {
        to_f32((const uint8_t *)t->data + r * rb, row, cols);
        for (int64_t c = 0; c < cols; c++) {
            if (!isfinite(row[c])) {
                free(row);
                return mor__errf(err, err_n, MOR_E_FORMAT,
                                 "%s: tensor '%s' holds a non-finite value (row %lld, "
                                 "column %lld)",
                                 in->path, name, (long long)r, (long long)c);
            }
            out[r * cols + c] = row[c];
        }
    }
    free(row);
    return MOR_OK;
}

// Rows of attn_q / attn_k from adjacent-pair RoPE to rotate-half RoPE, per head: new row
// h*d_h + j*d_h/2 + i = old row h*d_h + 2i + j. q.k is unchanged, both being permuted alike.
static void permute_rope_rows(double *w, int64_t heads, int64_t d_h, int64_t cols, double *tmp) {
    int64_t half = d_h / 2;
    for (int64_t h = 0; h < heads; h++) {
        double *blk = w + h * d_h * cols;
        memcpy(tmp, blk, (size_t)(d_h * cols) * sizeof *tmp);
        for (int64_t i = 0; i < half; i++)
            for (int64_t j = 0; j < 2; j++)
                memcpy(blk + (j * half + i) * cols, tmp + (2 * i + j) * cols, (size_t)cols * sizeof *tmp);
    }
}

// The weight a vanilla layer l computes with, for role: its stored tensor, or a mor file's
// recursion-0 override, plus its LoRA merged (sigma B A); Q/K rows permuted to rotate-half RoPE.
// out: rows x cols; tmp: scratch of as many doubles.
static int source_weight(const source *in, int l, int role, double *out, double *tmp, char *err,
                         size_t err_n) {
    int64_t rows, cols;
    role_shape(in, role, &rows, &cols);
    char name[96];
    int s = MOR_E_NOT_FOUND;
    if (in->is_mor) {
        snprintf(name, sizeof name, "blk.%d.rec.0.%s.weight", l, role_name[role]);
        s = read_matrix(in, name, rows, cols, 0, out, err, err_n);
        if (s && s != MOR_E_NOT_FOUND) return s;
    }
    if (s == MOR_E_NOT_FOUND) {
        snprintf(name, sizeof name, "blk.%d.%s.weight", l, role_name[role]);
        if ((s = read_matrix(in, name, rows, cols, 1, out, err, err_n))) return s;
    }
    if (in->is_mor && role < N_PROJ) {
        snprintf(name, sizeof name, "blk.%d.rec.0.%s.lora_a", l, role_name[role]);
        const mor__gguf_tensor *ta = mor__gguf_find_tensor(&in->g, name);
        if (ta) {  // W += sigma B A, B rows x k, A k x cols
            int64_t k = (int64_t)ta->dims[1];
            double *a = malloc((size_t)(k * cols) * sizeof *a), *b = malloc((size_t)(rows * k) * sizeof *b);
            if (!a || !b) s = mor__errf(err, err_n, MOR_E_NOMEM, "out of memory");
            if (!s) s = read_matrix(in, name, k, cols, 1, a, err, err_n);
            snprintf(name, sizeof name, "blk.%d.rec.0.%s.lora_b", l, role_name[role]);
            if (!s) s = read_matrix(in, name, rows, k, 1, b, err, err_n);
            for (int64_t r = 0; !s && r < rows; r++)
                for (int64_t t = 0; t < k; t++) {
                    double bt = (double)in->lora_scale * b[r * k + t];
                    for (int64_t c = 0; c < cols; c++) out[r * cols + c] += bt * a[t * cols + c];
                }
            free(a), free(b);
            if (s) return s;
        }
    }
    if (in->rope_norm && (role == R_Q || role == R_K))
        permute_rope_rows(out, role == R_Q ? in->n_h : in->n_kv, in->d_h, cols, tmp);
    return MOR_OK;
}

// ---- writing ---------------------------------------------------------------------------------

// Adds x (rows x cols doubles; rows 0: a vector of cols) as `type` (F32 or F16); the values as
// written go back into x (so residuals are taken against what the file holds).
static int put_matrix(sink *o, const char *name, uint32_t type, int64_t rows, int64_t cols, double *x,
                      int body) {
    int vec = rows == 0;
    if (vec) rows = 1;
    int64_t n = rows * cols;
    size_t es = type == MOR__DT_F32 ? 4 : 2;
    uint8_t *buf = malloc((size_t)n * es);
    if (!buf) return mor__errf(o->err, o->err_n, MOR_E_NOMEM, "out of memory");
    for (int64_t i = 0; i < n; i++) {
        float f = (float)x[i];
        if (type == MOR__DT_F32) {
            memcpy(buf + 4 * i, &f, 4);
            x[i] = f;
        } else {
            uint16_t h = mor__f32_to_f16(f);
            if ((h & 0x7c00) == 0x7c00) {
                free(buf);
                return mor__errf(o->err, o->err_n, MOR_E_UNSUPPORTED,
                                 "tensor '%s': value %g at element %lld is "
                                 "beyond the F16 range (use --type f32 / --lora-type f32)",
                                 name, x[i], (long long)i);
            }
            memcpy(buf + 2 * i, &h, 2);
            x[i] = mor__f16_to_f32(h);
        }
    }
    uint64_t dims[2] = {(uint64_t)cols, (uint64_t)rows};
    int s = mor__gguf_w_tensor(o->w, name, type, vec ? 1 : 2, dims, buf);
    free(buf);
    if (s) return mor__errf(o->err, o->err_n, s, "adding tensor '%s': out of memory", name);
    o->params += (uint64_t)n;
    if (body) o->params_body += (uint64_t)n;
    return MOR_OK;
}

static int put_copy(sink *o, const mor__gguf_tensor *t, const char *name, int body) {
    int s = mor__gguf_w_raw_tensor(o->w, name, strlen(name), t->type, t->n_dims, t->dims, t->data, t->size,
                                   MOR__GGUF_W_AUTO);
    if (s) return mor__errf(o->err, o->err_n, s, "adding tensor '%s': out of memory", name);
    o->params += t->n_elems;
    if (body) o->params_body += t->n_elems;
    return MOR_OK;
}

// Keys: the source's, renamed to mor.* where they are shape keys, then the recursion keys.
static int write_keys(const source *in, const plan *p, int any_lora, sink *o) {
    static const char *const carry[] = {"context_length",       "embedding_length",
                                        "feed_forward_length",  "block_count",
                                        "attention.head_count", "attention.head_count_kv",
                                        "attention.key_length", "attention.layer_norm_rms_epsilon",
                                        "rope.freq_base",       "vocab_size",
                                        "exit.layers"};
    static const char *const known[] = {"rope.dimension_count", "attention.value_length",
                                        "format_version",       "recursion.count",
                                        "recursion.sharing",    "rope.type",
                                        "lora.scale",           "kv_sharing",
                                        "router.type",          "rope.scaling.type"};
    size_t pl = strlen(in->prefix);
    int s = mor__gguf_w_str(o->w, "general.architecture", "mor");
    for (uint64_t i = 0; !s && i < in->g.n_kv; i++) {
        const mor__gguf_kv *kv = &in->g.kv[i];
        char key[256];
        if (kv->key.len >= sizeof key) {
            s = mor__gguf_w_copy_kv(o->w, kv, NULL, o->err, o->err_n);
            continue;
        }
        memcpy(key, kv->key.ptr, kv->key.len);
        key[kv->key.len] = 0;
        if (!strcmp(key, "general.architecture") || !strcmp(key, "general.file_type") ||
            !strcmp(key, "general.quantization_version"))
            continue;
        if (!strncmp(key, "mor.policy.", 11)) {
            warn(p, "key %s dropped: the depth steps of a recursive model are recursions, not the source's",
                 key);
            continue;
        }
        if (strncmp(key, in->prefix, pl) != 0) {  // general.*, tokenizer.* and any other key: as it is
            s = mor__gguf_w_copy_kv(o->w, kv, NULL, o->err, o->err_n);
            continue;
        }
        const char *sub = key + pl;
        int c = -1;
        for (size_t j = 0; j < sizeof carry / sizeof carry[0] && c < 0; j++)
            if (!strcmp(sub, carry[j])) c = (int)j;
        if (c >= 0) {
            char nk[300];
            snprintf(nk, sizeof nk, "mor.%s", sub);
            s = mor__gguf_w_copy_kv(o->w, kv, nk, o->err, o->err_n);
            continue;
        }
        int k = 0;
        for (size_t j = 0; j < sizeof known / sizeof known[0]; j++) k |= !strcmp(sub, known[j]);
        if (!k && strncmp(sub, "router.", 7) != 0) warn(p, "key %s dropped (arch mor has no such key)", key);
    }
    if (!s) s = mor__gguf_w_u32(o->w, "mor.format_version", 1);
    if (!s) s = mor__gguf_w_str(o->w, "mor.rope.type", "neox");
    if (!s) s = mor__gguf_w_u32(o->w, "mor.recursion.count", (uint32_t)p->n_rec);
    if (!s) s = mor__gguf_w_str(o->w, "mor.recursion.sharing", sharing_name[p->sharing]);
    if (!s && any_lora) s = mor__gguf_w_f32(o->w, "mor.lora.scale", p->sigma);
    if (s && !o->err[0]) mor__errf(o->err, o->err_n, s, "writing the keys: out of memory");
    return s;
}

// ---- the conversion --------------------------------------------------------------------------

// Source layers of middle slot j (0 <= j < B) under the plan's init: *n of them into src.
static void slot_sources(const plan *p, int L, int j, int *src, int *n) {
    int lo = p->middle ? 1 : 0, hi = p->middle ? L - 2 : L - 1;
    *n = 0;
    if (p->init == INIT_STEPWISE) {  // round(linspace(lo, hi, B))[j], ties to even
        double x = p->B == 1 ? lo : j == p->B - 1 ? hi : lo + j * ((double)(hi - lo) / (p->B - 1));
        src[(*n)++] = (int)nearbyint(x);
    } else if (p->init == INIT_LOWER) {
        src[(*n)++] = lo + j;
    } else {
        for (int l = 0; l < L; l++) {
            int s, r;
            map_layer(p, L, l, &s, &r);
            if (s == j + p->middle) src[(*n)++] = l;
        }
    }
}

static int64_t lora_rank(const plan *p, int64_t rows, int64_t cols) {
    int64_t mx = rows < cols ? rows : cols;
    return p->rank < 0 || p->rank > mx ? mx : p->rank;
}

// LoRA of one position: R = W_orig - W_shared (rows x cols) as B A with A = V_kᵀ, B = U_k S_k / sigma.
static int put_lora(const plan *p, sink *o, int s, int r, int role, int64_t rows, int64_t cols,
                    const double *res) {
    int64_t k = lora_rank(p, rows, cols);
    int zero = 1;
    for (int64_t i = 0; i < rows * cols && zero; i++) zero = res[i] == 0;
    if (zero && p->skip_exact) return MOR_OK;
    double *u = malloc((size_t)(rows * k) * sizeof *u), *sv = malloc((size_t)k * sizeof *sv);
    double *v = malloc((size_t)(cols * k) * sizeof *v), *a = malloc((size_t)(k * cols) * sizeof *a);
    int st = !u || !sv || !v || !a ? mor__errf(o->err, o->err_n, MOR_E_NOMEM, "out of memory") : MOR_OK;
    double t0 = now_s();
    if (!st) st = mor__svd(rows, cols, res, k, u, sv, v, o->err, o->err_n);
    o->svd_seconds += now_s() - t0;
    o->n_svd++;
    if (!st) {
        for (int64_t t = 0; t < k; t++)
            for (int64_t c = 0; c < cols; c++) a[t * cols + c] = v[c * k + t];
        for (int64_t i = 0; i < rows; i++)
            for (int64_t t = 0; t < k; t++) u[i * k + t] *= sv[t] / p->sigma;
        char name[96];
        snprintf(name, sizeof name, "blk.%d.rec.%d.%s.lora_a", s, r, role_name[role]);
        st = put_matrix(o, name, p->lora_type, k, cols, a, 1);
        snprintf(name, sizeof name, "blk.%d.rec.%d.%s.lora_b", s, r, role_name[role]);
        if (!st) st = put_matrix(o, name, p->lora_type, rows, k, u, 1);
        o->n_lora++;
        o->n_lora_zero += zero;
    }
    free(u), free(sv), free(v), free(a);
    return st;
}

// Stored layer `s` copied from unrolled layer `l` of the source (the unique first and last
// layers of the middle strategies): tensors as they are, Q/K rows permuted when needed; a mor
// source whose layer has overrides or LoRA goes through source_weight.
static int put_unique(const source *in, const plan *p, sink *o, int s, int l, double *w, double *tmp) {
    for (int role = 0; role < N_ROLE; role++) {
        char name[96], out[96];
        snprintf(name, sizeof name, "blk.%d.%s.weight", l, role_name[role]);
        snprintf(out, sizeof out, "blk.%d.%s.weight", s, role_name[role]);
        const mor__gguf_tensor *t = mor__gguf_find_tensor(&in->g, name);
        int merged = 0;
        if (in->is_mor) {
            char ov[96];
            snprintf(ov, sizeof ov, "blk.%d.rec.0.%s.weight", l, role_name[role]);
            merged = mor__gguf_find_tensor(&in->g, ov) != NULL;
            snprintf(ov, sizeof ov, "blk.%d.rec.0.%s.lora_a", l, role_name[role]);
            merged |= mor__gguf_find_tensor(&in->g, ov) != NULL;
        }
        if (!t) return mor__errf(o->err, o->err_n, MOR_E_FORMAT, "%s: missing tensor '%s'", in->path, name);
        int permute = in->rope_norm && (role == R_Q || role == R_K);
        int st;
        if (merged || role >= N_PROJ) {
            int64_t rows, cols;
            role_shape(in, role, &rows, &cols);
            st = source_weight(in, l, role, w, tmp, o->err, o->err_n);
            if (!st)
                st = put_matrix(o, out, role >= N_PROJ ? MOR__DT_F32 : p->type, role >= N_PROJ ? 0 : rows,
                                cols, w, 1);
        } else if (permute) {  // whole rows move: exact for every type, quantized ones included
            int64_t heads = role == R_Q ? in->n_h : in->n_kv, half = in->d_h / 2;
            uint64_t rb = t->size / (t->n_elems / t->dims[0]);
            uint8_t *buf = malloc((size_t)t->size);
            if (!buf) return mor__errf(o->err, o->err_n, MOR_E_NOMEM, "out of memory");
            for (int64_t h = 0; h < heads; h++)
                for (int64_t i = 0; i < half; i++)
                    for (int64_t j = 0; j < 2; j++)
                        memcpy(buf + (uint64_t)(h * in->d_h + j * half + i) * rb,
                               (const uint8_t *)t->data + (uint64_t)(h * in->d_h + 2 * i + j) * rb,
                               (size_t)rb);
            mor__gguf_tensor c = *t;
            c.data = buf;
            st = put_copy(o, &c, out, 1);
            free(buf);
        } else {
            st = put_copy(o, t, out, 1);
        }
        if (st) return st;
    }
    return MOR_OK;
}

// Shared stored layer s (middle slot j = s - middle): its weights from the init, then for each
// recursion the norm overrides and LoRA pairs of the unrolled layer there.
static int put_shared(const source *in, const plan *p, sink *o, int s, double **shared, double *w,
                      double *tmp) {
    int L = in->L, j = s - p->middle, src[4096], n_src;
    slot_sources(p, L, j, src, &n_src);
    char name[96];
    for (int role = 0; role < N_ROLE; role++) {
        int64_t rows, cols;
        role_shape(in, role, &rows, &cols);
        double *acc = shared[role];
        memset(acc, 0, (size_t)(rows * cols) * sizeof *acc);
        for (int k = 0; k < n_src; k++) {
            int st = source_weight(in, src[k], role, w, tmp, o->err, o->err_n);
            if (st) return st;
            for (int64_t i = 0; i < rows * cols; i++) acc[i] += w[i];
        }
        for (int64_t i = 0; i < rows * cols; i++) acc[i] /= n_src;
        snprintf(name, sizeof name, "blk.%d.%s.weight", s, role_name[role]);
        int st = put_matrix(o, name, role >= N_PROJ ? MOR__DT_F32 : p->type, role >= N_PROJ ? 0 : rows, cols,
                            acc, 1);
        if (st) return st;
    }
    for (int r = 0; r < p->n_rec; r++) {
        int l = layer_of(p, L, s, r);
        for (int role = 0; role < N_ROLE; role++) {
            int64_t rows, cols;
            role_shape(in, role, &rows, &cols);
            int proj = role < N_PROJ;
            if (proj && (p->rank == 0 || !(p->roles >> role & 1))) continue;
            if (!proj && !p->norm_overrides) continue;
            int st = source_weight(in, l, role, w, tmp, o->err, o->err_n);
            if (st) return st;
            if (!proj) {  // an override when any element differs from the shared norm as written
                int differs = 0;
                for (int64_t i = 0; i < cols && !differs; i++)
                    differs = (float)w[i] != (float)shared[role][i];
                if (!differs) continue;
                snprintf(name, sizeof name, "blk.%d.rec.%d.%s.weight", s, r, role_name[role]);
                if ((st = put_matrix(o, name, MOR__DT_F32, 0, cols, w, 1))) return st;
                o->n_norm_override++;
                continue;
            }
            for (int64_t i = 0; i < rows * cols; i++) w[i] -= shared[role][i];
            if ((st = put_lora(p, o, s, r, role, rows, cols, w))) return st;
        }
    }
    return MOR_OK;
}

// The whole conversion into o->w (keys and tensors), from a checked source.
static int convert(const source *in, const plan *p, sink *o) {
    int any_lora = p->rank != 0 && p->roles != 0;
    int s = write_keys(in, p, any_lora, o);
    if (s) return s;
    static const char *const globals[] = {"token_embd.weight", "output_norm.weight", "output.weight"};
    for (int i = 0; i < 3; i++) {
        const mor__gguf_tensor *t = mor__gguf_find_tensor(&in->g, globals[i]);
        if (t && (s = put_copy(o, t, globals[i], i == 1))) return s;
    }
    // Scratch: the shared layer's nine roles, one source matrix and a permutation buffer.
    size_t biggest = 0, all = 0;
    double *shared[N_ROLE] = {0};
    for (int role = 0; role < N_ROLE; role++) {
        int64_t rows, cols;
        role_shape(in, role, &rows, &cols);
        biggest = (size_t)(rows * cols) > biggest ? (size_t)(rows * cols) : biggest;
        all += (size_t)(rows * cols);
    }
    double *mem = malloc((all + 2 * biggest) * sizeof *mem);
    if (!mem) return mor__errf(o->err, o->err_n, MOR_E_NOMEM, "out of memory");
    double *at = mem;
    for (int role = 0; role < N_ROLE; role++) {
        int64_t rows, cols;
        role_shape(in, role, &rows, &cols);
        shared[role] = at;
        at += rows * cols;
    }
    double *w = at, *tmp = at + biggest;
    for (int i = 0; i < p->n_store && !s; i++) {
        if (p->middle && (i == 0 || i == p->B + 1))
            s = put_unique(in, p, o, i, i == 0 ? 0 : in->L - 1, w, tmp);
        else s = put_shared(in, p, o, i, shared, w, tmp);
    }
    free(mem);
    for (uint64_t i = 0; i < in->g.n_tensors && !s; i++) {  // exit heads: same unrolled depths
        const mor__gguf_tensor *t = &in->g.tensors[i];
        if (!strncmp(t->name, "exit.", 5)) s = put_copy(o, t, t->name, !strstr(t->name, ".output.weight"));
    }
    return s;
}

// ---- the public calls ------------------------------------------------------------------------

void mor__relax_opts_init(mor__relax_opts *o) {
    memset(o, 0, sizeof *o);
    o->sharing = MOR__RELAX_MIDDLE_CYCLE;
    o->init = MOR__RELAX_STEPWISE;
    o->roles = MOR__RELAX_ALL_ROLES;
    o->type = o->lora_type = MOR__RELAX_AUTO;
    o->sigma = 1.0f;
    o->norm_overrides = 1;
}

const char *mor__relax_sharing_name(int s) { return s >= 0 && s < 4 ? sharing_name[s] : "?"; }
const char *mor__relax_init_name(int i) { return i >= 0 && i < 3 ? init_name[i] : "?"; }

int mor__relax_sharing_parse(const char *s) {
    for (int k = 0; k < 4; k++)
        if (!strcmp(s, sharing_name[k])) return k;
    return -1;
}

int mor__relax_init_parse(const char *s) {
    for (int k = 0; k < 3; k++)
        if (!strcmp(s, init_name[k])) return k;
    return -1;
}

int mor__relax_roles_parse(const char *v) {
    if (!strcmp(v, "all")) return MOR__RELAX_ALL_ROLES;
    int mask = 0;
    while (*v) {
        const char *e = strchr(v, ',');
        size_t n = e ? (size_t)(e - v) : strlen(v);
        int found = -1;
        for (int r = 0; r < N_PROJ; r++)
            if ((strlen(role_short[r]) == n && !memcmp(role_short[r], v, n)) ||
                (strlen(role_name[r]) == n && !memcmp(role_name[r], v, n)))
                found = r;
        if (found < 0) return -1;
        mask |= 1 << found;
        v += n + (e ? 1 : 0);
        if (e && !*v) return -1;
    }
    return mask ? mask : -1;
}

// Which N_r split L under each strategy, for the refusal message.
static void splits(int L, char *buf, size_t n) {
    size_t at = 0;
    buf[0] = 0;
    for (int sh = 0; sh < 4 && at < n; sh++) {
        int span = sh >= SH_MIDDLE_CYCLE ? L - 2 : L, any = 0;
        at += (size_t)snprintf(buf + at, n - at, "%s%s:", sh ? "; " : "", sharing_name[sh]);
        for (int r = 2; r <= span && at < n; r++)
            if (span % r == 0) at += (size_t)snprintf(buf + at, n - at, " %d", r), any = 1;
        if (!any && at < n) at += (size_t)snprintf(buf + at, n - at, " none");
    }
}

// Exit heads keep their unrolled depth; say when no policy of the output can read one.
static void check_exits(const source *in, const plan *p) {
    uint32_t et;
    uint64_t ne = 0;
    int32_t at[64];
    char e2[64];
    if (mor__gguf_get_arr(&in->g, "mor.exit.layers", &et, &ne, e2, sizeof e2) != MOR_OK || !ne || ne > 64 ||
        mor__gguf_arr_i32(&in->g, "mor.exit.layers", at, ne, e2, sizeof e2) != MOR_OK)
        return;
    for (uint64_t k = 0; k < ne; k++) {
        int e = at[k] - p->middle;
        if (p->sharing == SH_SEQUENCE || p->sharing == SH_MIDDLE_SEQUENCE)
            warn(p, "exit head %llu (after layer %d) is kept, but policies read no exit head in a %s model",
                 (unsigned long long)k, at[k], sharing_name[p->sharing]);
        else if (e <= 0 || e % p->B || e / p->B > p->n_rec)
            warn(p,
                 "exit head %llu (after layer %d) is kept, but it is not at the end of a recursion, so the "
                 "exit "
                 "policies will not read it",
                 (unsigned long long)k, at[k]);
    }
}

static int same_file(const char *a, const char *b) {
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

// Source checks, the plan and the conversion, into a writer the caller saves.
static int relax(source *in, const mor__relax_opts *o, mor__relax_stats *st, sink *out, char *err,
                 size_t err_n) {
    plan p = {.n_rec = o->n_rec,
              .sharing = o->sharing,
              .init = o->init,
              .roles = o->roles,
              .norm_overrides = o->norm_overrides,
              .skip_exact = o->skip_exact,
              .rank = o->rank,
              .sigma = o->sigma,
              .warn = o->warn,
              .user = o->user};
    if (o->n_rec < 2 || o->n_rec > 4096 || o->sharing < 0 || o->sharing > 3 || o->init < 0 || o->init > 2 ||
        o->rank < MOR__RELAX_FULL_RANK || !(o->sigma > 0) || (o->roles & ~MOR__RELAX_ALL_ROLES) ||
        (o->type != MOR__RELAX_AUTO && o->type != MOR__DT_F32 && o->type != MOR__DT_F16) ||
        (o->lora_type != MOR__RELAX_AUTO && o->lora_type != MOR__DT_F32 && o->lora_type != MOR__DT_F16))
        return mor__errf(err, err_n, MOR_E_INVALID,
                         "bad options: N_r %d (2 to 4096), sharing %d, init %d, rank %ld, "
                         "sigma %g, roles 0x%x, types %u / %u",
                         o->n_rec, o->sharing, o->init, o->rank, (double)o->sigma, (unsigned)o->roles,
                         o->type, o->lora_type);
    int s = mor__gguf_w_read_file(in->path, &in->img, &in->size, err, err_n);
    if (s) return s;
    char perr[768];
    if ((s = mor__gguf_parse(&in->g, in->img, in->size, perr, sizeof perr)))
        return mor__errf(err, err_n, s, "%s: %s", in->path, perr);
    in->parsed = 1;
    if ((s = check_arch(in, err, err_n)) || (s = check_keys(in, &p, err, err_n)) ||
        (s = check_tensors(in, err, err_n)))
        return s;
    mor_model *m;  // the engine's own checks: shapes, types, vocabulary
    if ((s = mor_model_load(in->path, NULL, &m, perr, sizeof perr)))
        return mor__errf(err, err_n, s, "%s", perr);
    mor_model_free(m);
    p.middle = p.sharing >= SH_MIDDLE_CYCLE;
    int span = in->L - 2 * p.middle;
    if (span < p.n_rec || span % p.n_rec) {
        char ok[512];
        splits(in->L, ok, sizeof ok);
        return mor__errf(err, err_n, MOR_E_INVALID,
                         "%s: %d layers do not split into %d recursions with %s sharing "
                         "(%s / N_r must be a whole number of layers). Splits of %d layers: %s",
                         in->path, in->L, p.n_rec, sharing_name[p.sharing], p.middle ? "(L - 2)" : "L", in->L,
                         ok);
    }
    p.B = span / p.n_rec;
    p.n_store = p.B + 2 * p.middle;
    p.type = o->type == MOR__RELAX_AUTO ? (in->all_f32 ? MOR__DT_F32 : MOR__DT_F16) : o->type;
    p.lora_type = o->lora_type == MOR__RELAX_AUTO ? (in->all_f32 ? MOR__DT_F32 : MOR__DT_F16) : o->lora_type;
    if (in->is_mor) check_exits(in, &p);
    // What the caller reports.
    snprintf(st->arch, sizeof st->arch, "%s", in->is_mor ? "mor" : "llama");
    st->L = in->L, st->d = in->d, st->ff = in->ff, st->n_h = in->n_h, st->n_kv = in->n_kv;
    st->rope_permuted = in->rope_norm;
    st->B = p.B, st->n_store = p.n_store, st->type = p.type, st->lora_type = p.lora_type;
    for (int r = 0; r < N_PROJ; r++) {
        int64_t rows, cols;
        role_shape(in, r, &rows, &cols);
        st->rank[r] = p.rank != 0 && (p.roles >> r & 1) ? lora_rank(&p, rows, cols) : 0;
    }
    size_t at = 0;
    for (int j = 0; j < p.B && at < sizeof st->sources; j++) {
        int src[4096], n;
        slot_sources(&p, in->L, j, src, &n);
        at +=
            (size_t)snprintf(st->sources + at, sizeof st->sources - at, "%s%d<-", j ? " " : "", j + p.middle);
        for (int k = 0; k < n && at < sizeof st->sources; k++)
            at += (size_t)snprintf(st->sources + at, sizeof st->sources - at, "%s%d", k ? "+" : "", src[k]);
    }
    for (uint64_t i = 0; i < in->g.n_tensors; i++) {
        const mor__gguf_tensor *t = &in->g.tensors[i];
        st->params_in += t->n_elems;
        if (strcmp(t->name, "token_embd.weight") && strcmp(t->name, "output.weight") &&
            !strstr(t->name, ".output.weight"))
            st->body_in += t->n_elems;
    }
    if (!(out->w = mor__gguf_writer_create())) return mor__errf(err, err_n, MOR_E_NOMEM, "out of memory");
    if ((s = convert(in, &p, out))) return s;
    st->params_out = out->params, st->body_out = out->params_body;
    st->n_lora = out->n_lora, st->n_lora_zero = out->n_lora_zero, st->n_norm_override = out->n_norm_override;
    st->n_svd = out->n_svd, st->svd_seconds = out->svd_seconds;
    return MOR_OK;
}

int mor__relax_file(const char *in_path, const char *out_path, const mor__relax_opts *o,
                    mor__relax_stats *st_out, char *err, size_t err_n) {
    double t0 = now_s();
    if (!in_path || !out_path || !o) return mor__errf(err, err_n, MOR_E_INVALID, "NULL path or options");
    if (same_file(in_path, out_path))
        return mor__errf(err, err_n, MOR_E_INVALID, "the output %s is the input: refusing to overwrite it",
                         out_path);
    mor__relax_stats st;
    memset(&st, 0, sizeof st);
    source in = {.path = in_path};
    sink out = {.err = err, .err_n = err_n};
    int s = relax(&in, o, &st, &out, err, err_n);
    char part[4096];
    if (snprintf(part, sizeof part, "%s.part", out_path) >= (int)sizeof part && !s)
        s = mor__errf(err, err_n, MOR_E_INVALID, "output path too long");
    if (!s) s = mor__gguf_writer_save(out.w, part, err, err_n);
    mor__gguf_writer_free(out.w);
    if (in.parsed) mor__gguf_free(&in.g);
    free(in.img);
    if (!s) {  // the written file must load before it takes the output's name
        mor_model *m;
        char lerr[768];
        if ((s = mor_model_load(part, NULL, &m, lerr, sizeof lerr))) {
            s = mor__errf(err, err_n, s, "the converted model does not load: %s", lerr);
        } else {
            mor_model_free(m);
            if (rename(part, out_path))
                s = mor__errf(err, err_n, MOR_E_IO, "cannot rename %s to %s: %s", part, out_path,
                              strerror(errno));
        }
        if (s) remove(part);
    }
    if (s) return s;
    st.seconds = now_s() - t0;
    if (st_out) *st_out = st;
    return MOR_OK;
}
