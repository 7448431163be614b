// quantize.c: whole-file quantization: the recipe (which type each tensor gets), the output
// header, and the streaming conversion (quantize.h).
//
// The llama rules follow llama.cpp's llama-quantize without an importance matrix, as facts of
// its output format: tensors sorted by layer then name; 1-D tensors, norms and a few named
// kinds copied; output / tied embedding to Q6_K (or Q8_0); attn_v and ffn_down of chosen
// layers to more bits in the _M / _S mixes; a row width that the chosen block does not divide
// falls back to a 32-element type (or F16). docs/CONVERT.md has the table.
#include "quantize.h"
#include "gguf-write.h"

#include "internal.h"
#include "kernels.h"
#include "quant.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifndef MOR_NO_THREADS
#include <pthread.h>
#endif

// llama.cpp's llama_ftype values of the recipes.
enum {
    FT_Q4_0 = 2, FT_Q4_1 = 3, FT_Q8_0 = 7, FT_Q5_0 = 8, FT_Q5_1 = 9, FT_Q4_K_S = 14,
    FT_Q4_K_M = 15, FT_Q5_K_S = 16, FT_Q5_K_M = 17, FT_Q6_K = 18
};

static const mor__qrecipe recipes[] = {
    {"Q8_0", FT_Q8_0, MOR__QT_Q8_0},       {"Q4_0", FT_Q4_0, MOR__QT_Q4_0},
    {"Q4_1", FT_Q4_1, MOR__QT_Q4_1},       {"Q5_0", FT_Q5_0, MOR__QT_Q5_0},
    {"Q5_1", FT_Q5_1, MOR__QT_Q5_1},       {"Q6_K", FT_Q6_K, MOR__QT_Q6_K},
    {"Q5_K_M", FT_Q5_K_M, MOR__QT_Q5_K},   {"Q5_K_S", FT_Q5_K_S, MOR__QT_Q5_K},
    {"Q4_K_M", FT_Q4_K_M, MOR__QT_Q4_K},   {"Q4_K_S", FT_Q4_K_S, MOR__QT_Q4_K},
};
#define N_RECIPES (sizeof recipes / sizeof recipes[0])

const mor__qrecipe *mor__qrecipe_find(const char *name) {
    for (size_t i = 0; name && i < N_RECIPES; i++)
        if (strcasecmp(name, recipes[i].name) == 0) return &recipes[i];
    return NULL;
}

const char *mor__qrecipe_names(void) {
    return "Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q6_K, Q5_K_M, Q5_K_S, Q4_K_M, Q4_K_S";
}

// GGUF type ids beyond the block types of quant.h.
enum { T_F32 = 0, T_F16 = 1, T_BF16 = 30 };

// ---- tensor order ---------------------------------------------------------------------------

// The layer of a tensor name "blk.N....", -1 for the others (N read as a C int: optional
// blanks and sign, digits).
static int64_t name_layer(const char *s) {
    if (strncmp(s, "blk.", 4) != 0) return -1;
    s += 4;
    while (isspace((unsigned char)*s)) s++;
    int neg = *s == '-';
    if (*s == '-' || *s == '+') s++;
    if (!isdigit((unsigned char)*s)) return -1;
    int64_t v = 0;
    for (; isdigit((unsigned char)*s); s++)
        if (v < ((int64_t)1 << 40)) v = v * 10 + (*s - '0');
    return neg ? -v : v;
}

typedef struct {
    int64_t     layer;
    const char *name;
    uint32_t    idx;
} order_key;

static int cmp_order(const void *a, const void *b) {
    const order_key *x = a, *y = b;
    if (x->layer != y->layer) return x->layer < y->layer ? -1 : 1;
    return strcmp(x->name, y->name);
}

// ---- the recipe -------------------------------------------------------------------------------

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

// ggml's dimension count: trailing dimensions of 1 do not count.
static uint32_t eff_dims(const mor__gguf_tensor *t) {
    uint32_t n = 4;
    while (n > 1 && t->dims[n - 1] == 1) n--;
    return n;
}

static int more_bits(int64_t i, int64_t n) {
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

typedef struct {
    const mor__qrecipe *r;
    int      mor;            // architecture mor
    int64_t  n_layer;        // llama: block_count; mor: stored layers
    int64_t  n_expert;       // llama: expert_count
    int      is_70b;         // llama: 80 layers with grouped-query attention
    int      has_output;
    int64_t  n_attn_v, i_attn_v, i_ffn_down;
} recipe_ctx;

// Whether a tensor is converted at all (else copied as it is).
static int wants_convert(const recipe_ctx *c, const mor__gguf_tensor *t) {
    const char *nm = t->name;
    // A name of 5 characters passes llama-quantize's "ends with weight" test as well (its
    // position arithmetic wraps); kept for identical output.
    if (!ends_with(nm, "weight") && strlen(nm) != 5) return 0;
    if (eff_dims(t) < 2) return 0;
    static const char *const never[] = {"_norm.weight", "ffn_gate_inp.weight", "ssm_conv1d.weight",
                                        "time_mix_first.weight", "time_mix_w1.weight",
                                        "time_mix_w2.weight", "time_mix_decay_w1.weight",
                                        "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
                                        "attn_rel_b.weight"};
    for (size_t i = 0; i < sizeof never / sizeof never[0]; i++)
        if (strstr(nm, never[i])) return 0;
    // mor: routers stay as they are (small, and their scores pick the depth of every token).
    if (c->mor && (strncmp(nm, "router.", 7) == 0 || strncmp(nm, "router_aux.", 11) == 0))
        return 0;
    return 1;
}

static int is_output_like(const recipe_ctx *c, const char *nm) {
    if (strcmp(nm, "output.weight") == 0) return 1;
    if (!c->has_output && strcmp(nm, "token_embd.weight") == 0) return 1;
    // mor: an exit head is an output matrix.
    return c->mor && strncmp(nm, "exit.", 5) == 0 && ends_with(nm, ".output.weight");
}

// The output type of a converted tensor; *fallback set when the row width forced it. Returns
// MOR_OK or MOR_E_UNSUPPORTED / MOR_E_FORMAT with a message.
static int pick_type(recipe_ctx *c, const mor__gguf_tensor *t, uint32_t *out, int *fallback,
                     char *err, size_t err_n) {
    const char *nm = t->name;
    uint32_t ft = c->r->ftype, ty = c->r->base;
    int64_t nx = (int64_t)t->dims[0];
    *fallback = 0;
    if (is_output_like(c, nm)) {
        if (nx % mor__quant_block(ty) != 0) ty = MOR__QT_Q8_0;
        else if (ty != MOR__QT_Q8_0) ty = MOR__QT_Q6_K;
    } else if (strcmp(nm, "token_embd.weight") == 0) {
        // the recipes here leave the embedding at the base type
    } else if (strstr(nm, "attn_v.weight")) {
        int64_t i = c->mor ? name_layer(nm) : c->i_attn_v, n = c->mor ? c->n_layer : c->n_attn_v;
        if ((ft == FT_Q4_K_M || ft == FT_Q5_K_M) && more_bits(i, n)) ty = MOR__QT_Q6_K;
        else if (ft == FT_Q4_K_S && i < 4) ty = MOR__QT_Q5_K;
        if (c->is_70b && ty == MOR__QT_Q4_K) ty = MOR__QT_Q5_K;
        if (c->n_expert == 8) ty = MOR__QT_Q8_0;
        c->i_attn_v++;
    } else if (strstr(nm, "attn_k.weight")) {
        if (c->n_expert == 8) ty = MOR__QT_Q8_0;
    } else if (strstr(nm, "attn_q.weight")) {
        // no rule for these recipes
    } else if (strstr(nm, "ffn_down")) {
        int64_t i = c->i_ffn_down, n = c->n_layer;
        if (c->mor || c->n_expert > 1) {
            i = name_layer(nm);
            if (i < 0 || i >= n)
                return mor__errf(err, err_n, MOR_E_FORMAT,
                                 "tensor '%s': layer %lld outside the %lld layers of the file",
                                 nm, (long long)i, (long long)n);
        }
        if (ft == FT_Q4_K_M) {
            if (more_bits(i, n)) ty = MOR__QT_Q6_K;
        } else if (ft == FT_Q5_K_M && more_bits(i, n)) {
            ty = MOR__QT_Q6_K;
        } else if (ft == FT_Q4_K_S && i < n / 8) {
            ty = MOR__QT_Q5_K;
        }
        c->i_ffn_down++;
    } else if (strstr(nm, "attn_output.weight")) {
        if (c->n_expert == 8 && (ft == FT_Q4_K_S || ft == FT_Q4_K_M)) ty = MOR__QT_Q5_K;
    } else if (strstr(nm, "attn_qkv.weight")) {
        if (ft == FT_Q4_K_M) ty = MOR__QT_Q5_K;
        else if (ft == FT_Q5_K_M) ty = MOR__QT_Q6_K;
    }
    if (nx % mor__quant_block(ty) != 0) {
        switch (ty) {
        case MOR__QT_Q4_K: ty = MOR__QT_Q5_0; break;
        case MOR__QT_Q5_K: ty = MOR__QT_Q5_1; break;
        case MOR__QT_Q6_K: ty = MOR__QT_Q8_0; break;
        default:
            return mor__errf(err, err_n, MOR_E_UNSUPPORTED,
                             "tensor '%s' gets %s in recipe %s, which needs rows of a multiple of "
                             "%d values; it has %lld (llama-quantize refuses it too)",
                             nm, mor__dtype_name(ty), c->r->name, mor__quant_block(ty), (long long)nx);
        }
        *fallback = 1;
        if (nx % mor__quant_block(ty) != 0) ty = T_F16;
    }
    *out = ty;
    return MOR_OK;
}

static int get_u32_opt(const mor__gguf *g, const char *key, uint32_t def, uint32_t *v, char *err,
                       size_t err_n) {
    int s = mor__gguf_get_u32(g, key, v, err, err_n);
    if (s == MOR_E_NOT_FOUND) {
        *v = def;
        return MOR_OK;
    }
    return s;
}

static int recipe_setup(recipe_ctx *c, const mor__gguf *g, const mor__qrecipe *r, char *err,
                        size_t err_n) {
    memset(c, 0, sizeof *c);
    c->r = r;
    mor__gguf_str arch;
    int s = mor__gguf_get_cstr(g, "general.architecture", &arch, err, err_n);
    if (s == MOR_E_NOT_FOUND)
        return mor__errf(err, err_n, MOR_E_UNSUPPORTED,
                         "no general.architecture key (mor-quantize reads llama and mor files)");
    if (s) return s;
    if (arch.len == 3 && memcmp(arch.ptr, "mor", 3) == 0) {
        c->mor = 1;
    } else if (!(arch.len == 5 && memcmp(arch.ptr, "llama", 5) == 0)) {
        return mor__errf(err, err_n, MOR_E_UNSUPPORTED,
                         "architecture '%.*s' is not supported (mor-quantize reads llama and mor "
                         "files)",
                         (int)(arch.len > 64 ? 64 : arch.len), arch.ptr);
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const char *nm = g->tensors[i].name;
        if (strcmp(nm, "output.weight") == 0) c->has_output = 1;
        if (strstr(nm, "attn_v.weight") || strstr(nm, "attn_qkv.weight") || strstr(nm, "attn_kv_b.weight"))
            c->n_attn_v++;
        if (c->mor && name_layer(nm) + 1 > c->n_layer) c->n_layer = name_layer(nm) + 1;
    }
    if (c->mor) return MOR_OK;
    uint32_t n_layer, n_expert, n_head, n_head_kv;
    s = mor__gguf_get_u32(g, "llama.block_count", &n_layer, err, err_n);
    if (s == MOR_E_NOT_FOUND)
        return mor__errf(err, err_n, MOR_E_FORMAT, "llama file without llama.block_count");
    if (s) return s;
    if ((s = get_u32_opt(g, "llama.expert_count", 0, &n_expert, err, err_n)) ||
        (s = get_u32_opt(g, "llama.attention.head_count", 0, &n_head, err, err_n)) ||
        (s = get_u32_opt(g, "llama.attention.head_count_kv", n_head, &n_head_kv, err, err_n)))
        return s;
    c->n_layer = n_layer;
    c->n_expert = n_expert;
    c->is_70b = n_expert != 8 && n_layer == 80 && n_head != n_head_kv;
    if (c->n_attn_v && c->n_attn_v != c->n_layer)
        return mor__errf(err, err_n, MOR_E_FORMAT,
                         "%lld attn_v tensors for llama.block_count %lld (llama-quantize refuses "
                         "such a file too)",
                         (long long)c->n_attn_v, (long long)c->n_layer);
    return MOR_OK;
}

int mor__qplan_make(mor__qplan *p, const mor__gguf *g, const mor__qrecipe *r, char *err,
                    size_t err_n) {
    memset(p, 0, sizeof *p);
    recipe_ctx c;
    int s = recipe_setup(&c, g, r, err, err_n);
    if (s) return s;
    uint64_t n = g->n_tensors;
    order_key *ord = malloc((n ? n : 1) * sizeof *ord);
    p->t = calloc(n ? n : 1, sizeof *p->t);
    if (!ord || !p->t) {
        free(ord);
        mor__qplan_free(p);
        return mor__errf(err, err_n, MOR_E_NOMEM, "out of memory");
    }
    for (uint64_t i = 0; i < n; i++)
        ord[i] = (order_key){name_layer(g->tensors[i].name), g->tensors[i].name, (uint32_t)i};
    qsort(ord, n, sizeof *ord, cmp_order);
    p->recipe = r;
    p->alignment = g->alignment;
    uint64_t off = 0;
    for (uint64_t k = 0; k < n; k++) {
        const mor__gguf_tensor *t = &g->tensors[ord[k].idx];
        mor__qtensor *q = &p->t[k];
        q->in = ord[k].idx;
        q->n_dims = eff_dims(t);
        q->type = t->type;
        if (wants_convert(&c, t)) {
            uint32_t ty = 0;
            if ((s = pick_type(&c, t, &ty, &q->fallback, err, err_n))) break;
            if (ty != t->type) {
                if (t->type != T_F32 && t->type != T_F16 && t->type != T_BF16) {
                    s = mor__errf(err, err_n, MOR_E_UNSUPPORTED,
                                  "tensor '%s' is %s: mor-quantize converts F32, F16 and BF16 "
                                  "tensors only",
                                  t->name, mor__dtype_name(t->type));
                    break;
                }
                q->type = ty;
                q->convert = 1;
            }
        }
        q->size = q->convert ? mor__dtype_size(q->type, t->n_elems) : t->size;
        q->offset = off;
        uint64_t pad = (p->alignment - q->size % p->alignment) % p->alignment;
        if (mor__add_u64(off, q->size, &off) || mor__add_u64(off, pad, &off)) {
            s = mor__errf(err, err_n, MOR_E_FORMAT, "output size overflows");
            break;
        }
        p->n = k + 1;
    }
    free(ord);
    if (s) {
        mor__qplan_free(p);
        return s;
    }
    p->data_size = off;
    return MOR_OK;
}

void mor__qplan_free(mor__qplan *p) {
    if (!p) return;
    free(p->t);
    memset(p, 0, sizeof *p);
}

// ---- the header ----------------------------------------------------------------------------

typedef struct {
    uint8_t *p;
    size_t   len, cap;
    int      oom;
} obuf;

static void ob_put(obuf *b, const void *src, size_t n) {
    if (b->oom) return;
    if (n > b->cap - b->len) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap - b->len < n) {
            if (cap > SIZE_MAX / 2) {
                b->oom = 1;
                return;
            }
            cap *= 2;
        }
        uint8_t *q = realloc(b->p, cap);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, src, n);
    b->len += n;
}

static void ob_le(obuf *b, uint64_t v, int n) {
    uint8_t t[8];
    for (int i = 0; i < n; i++) t[i] = (uint8_t)(v >> (8 * i));
    ob_put(b, t, (size_t)n);
}

static int is_dropped_key(const mor__gguf_kv *kv) {
    static const char *const keys[] = {"general.quantization_version", "general.file_type",
                                       "split.no", "split.count", "split.tensors.count"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (kv->key.len == strlen(keys[i]) && memcmp(kv->key.ptr, keys[i], kv->key.len) == 0) return 1;
    return 0;
}

static void ob_u32_key(obuf *b, const char *key, uint32_t v) {
    ob_le(b, strlen(key), 8);
    ob_put(b, key, strlen(key));
    ob_le(b, MOR__GGUF_UINT32, 4);
    ob_le(b, v, 4);
}

// The output header: magic, version 3, counts, the input's keys in order (less the file type,
// quantization version and split keys), then general.quantization_version = 2 and
// general.file_type, the tensor records in output order, zero padding to the alignment.
static int build_header(obuf *b, const mor__gguf *g, const mor__qplan *p, char *err, size_t err_n) {
    uint64_t n_kv = 0;
    for (uint64_t i = 0; i < g->n_kv; i++) n_kv += !is_dropped_key(&g->kv[i]);
    ob_put(b, "GGUF", 4);
    ob_le(b, 3, 4);
    ob_le(b, p->n, 8);
    ob_le(b, n_kv + 2, 8);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const mor__gguf_kv *kv = &g->kv[i];
        if (is_dropped_key(kv)) continue;
        uint64_t vn = 0;
        int s = mor__gguf_kv_value_bytes(kv, &vn, err, err_n);
        if (s) return s;
        ob_le(b, kv->key.len, 8);
        ob_put(b, kv->key.ptr, (size_t)kv->key.len);
        ob_le(b, kv->type, 4);
        if (kv->type == MOR__GGUF_ARRAY) {
            ob_le(b, kv->arr_type, 4);
            ob_le(b, kv->arr_n, 8);
        }
        ob_put(b, kv->data, (size_t)vn);
    }
    ob_u32_key(b, "general.quantization_version", 2);
    ob_u32_key(b, "general.file_type", p->recipe->ftype);
    for (uint64_t k = 0; k < p->n; k++) {
        const mor__qtensor *q = &p->t[k];
        const mor__gguf_tensor *t = &g->tensors[q->in];
        ob_le(b, strlen(t->name), 8);
        ob_put(b, t->name, strlen(t->name));
        ob_le(b, q->n_dims, 4);
        for (uint32_t d = 0; d < q->n_dims; d++) ob_le(b, t->dims[d], 8);
        ob_le(b, q->type, 4);
        ob_le(b, q->offset, 8);
    }
    static const uint8_t zeros[64];
    while (!b->oom && b->len % p->alignment) {
        size_t k = p->alignment - b->len % p->alignment;
        ob_put(b, zeros, k < sizeof zeros ? k : sizeof zeros);
    }
    return b->oom ? mor__errf(err, err_n, MOR_E_NOMEM, "out of memory") : MOR_OK;
}

// ---- conversion of one piece ----------------------------------------------------------------

typedef struct {
    const uint8_t *src;     // input rows
    uint32_t       in_type;
    uint32_t       out_type;
    int64_t        cols;
    int64_t        in_row, out_row;  // bytes per row
    float         *f32;     // rows * cols scratch
    uint8_t       *dst;     // output rows
    int64_t        r0, r1;  // this worker's rows
    int64_t        bad;     // first non-finite element (row-major, within the piece), or -1
    int64_t        overflow_row;  // first row whose scales overflow F16, or -1
} piece;

static int f16_bad(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return (h & 0x7c00) == 0x7c00;
}

// The F16 fields of a block type: scale (and min) offsets in a block, block bytes.
static int scale_fields(uint32_t t, int off[2], int *bytes) {
    switch (t) {
    case MOR__QT_Q4_0: *bytes = 18; off[0] = 0, off[1] = -1; return 1;
    case MOR__QT_Q5_0: *bytes = 22; off[0] = 0, off[1] = -1; return 1;
    case MOR__QT_Q8_0: *bytes = 34; off[0] = 0, off[1] = -1; return 1;
    case MOR__QT_Q4_1: *bytes = 20; off[0] = 0, off[1] = 2; return 1;
    case MOR__QT_Q5_1: *bytes = 24; off[0] = 0, off[1] = 2; return 1;
    case MOR__QT_Q4_K: *bytes = 144; off[0] = 0, off[1] = 2; return 1;
    case MOR__QT_Q5_K: *bytes = 176; off[0] = 0, off[1] = 2; return 1;
    case MOR__QT_Q6_K: *bytes = 210; off[0] = 208, off[1] = -1; return 1;
    case T_F16: *bytes = 2; off[0] = 0, off[1] = -1; return 1;
    default: return 0;
    }
}

static void run_piece(piece *w) {
    w->bad = -1;
    w->overflow_row = -1;
    for (int64_t r = w->r0; r < w->r1; r++) {
        const uint8_t *s = w->src + r * w->in_row;
        float *f = w->f32 + r * w->cols;
        switch (w->in_type) {
        case T_F32: memcpy(f, s, (size_t)w->cols * 4); break;
        case T_F16:
            for (int64_t j = 0; j < w->cols; j++) {
                uint16_t h;
                memcpy(&h, s + 2 * j, 2);
                f[j] = mor__f16_to_f32(h);
            }
            break;
        default:
            for (int64_t j = 0; j < w->cols; j++) {
                uint16_t h;
                memcpy(&h, s + 2 * j, 2);
                f[j] = mor__bf16_to_f32(h);
            }
            break;
        }
        for (int64_t j = 0; j < w->cols; j++)
            if (!isfinite(f[j])) {
                w->bad = r * w->cols + j;
                return;
            }
        uint8_t *d = w->dst + r * w->out_row;
        if (w->out_type == T_F16) {
            for (int64_t j = 0; j < w->cols; j++) {
                uint16_t h = mor__f32_to_f16(f[j]);
                memcpy(d + 2 * j, &h, 2);
            }
        } else {
            mor__quantize(w->out_type, f, d, w->cols);
        }
        int off[2], bytes;
        if (w->overflow_row < 0 && scale_fields(w->out_type, off, &bytes))
            for (int64_t b = 0; b < w->out_row / bytes; b++)
                if (f16_bad(d + b * bytes + off[0]) || (off[1] >= 0 && f16_bad(d + b * bytes + off[1]))) {
                    w->overflow_row = r;
                    break;
                }
    }
}

#ifndef MOR_NO_THREADS
static void *piece_thread(void *arg) {
    run_piece(arg);
    return NULL;
}
#endif

// Converts rows [0, rows) of a piece on `threads` threads (the caller's included).
static void run_pieces(const piece *proto, int64_t rows, int threads, piece *ws) {
    if (threads > rows) threads = (int)rows;
    if (threads < 1) threads = 1;
    for (int i = 0; i < threads; i++) {
        ws[i] = *proto;
        ws[i].r0 = rows * i / threads;
        ws[i].r1 = rows * (i + 1) / threads;
    }
#ifndef MOR_NO_THREADS
    pthread_t th[64];
    int started = 0;
    for (int i = 1; i < threads; i++, started++)
        if (pthread_create(&th[i - 1], NULL, piece_thread, &ws[i]) != 0) break;
    for (int i = 1 + started; i < threads; i++) run_piece(&ws[i]);  // threads that did not start
    run_piece(&ws[0]);
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
#else
    for (int i = 0; i < threads; i++) run_piece(&ws[i]);
#endif
}

// ---- the file -------------------------------------------------------------------------------

#define PIECE_ELEMS ((int64_t)4 << 20)
#define COPY_BYTES  ((uint64_t)16 << 20)

typedef struct {
    FILE       *f;
    const char *path;
    uint64_t    written;
} out_file;

static int out_write(out_file *o, const void *p, size_t n, char *err, size_t err_n) {
    if (n && fwrite(p, 1, n, o->f) != n)
        return mor__errf(err, err_n, MOR_E_IO, "cannot write '%s': %s (%llu bytes written)", o->path,
                         strerror(errno ? errno : EIO), (unsigned long long)o->written);
    o->written += n;
    return MOR_OK;
}

// Drops the pages of [p, p + n) from the process (the mapping stays; they read back from the
// file if touched again), so that resident memory does not grow with the input.
static void release(const uint8_t *base, const uint8_t *p, uint64_t n) {
#ifdef MADV_DONTNEED
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), a = (uintptr_t)p, e = a + n;
    a -= (a - (uintptr_t)base) % page;
    if (e > a) madvise((void *)a, e - a, MADV_DONTNEED);
#else
    (void)base, (void)p, (void)n;
#endif
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct {
    const mor__gguf *g;
    const mor__qplan *p;
    const mor__qopts *o;
    out_file *out;
    const uint8_t *image;
    uint64_t done, total, tensors_done;
    float   *f32;
    uint8_t *dst;
    piece   *ws;
    int      threads;
    int64_t  piece_elems;
} job;

static void report(job *j) {
    if (j->o && j->o->progress) j->o->progress(j->o->user, j->done, j->total, j->tensors_done, j->p->n);
}

static int write_tensor(job *j, const mor__qtensor *q, char *err, size_t err_n) {
    const mor__gguf_tensor *t = &j->g->tensors[q->in];
    const uint8_t *src = t->data;
    int s;
    if (!q->convert) {
        for (uint64_t at = 0; at < t->size; at += COPY_BYTES) {
            uint64_t n = t->size - at < COPY_BYTES ? t->size - at : COPY_BYTES;
            if ((s = out_write(j->out, src + at, (size_t)n, err, err_n))) return s;
            release(j->image, src + at, n);
            j->done += n;
            report(j);
        }
    } else {
        int64_t cols = (int64_t)t->dims[0], rows = (int64_t)(t->n_elems / t->dims[0]);
        int64_t per = j->piece_elems / cols > 0 ? j->piece_elems / cols : 1;
        piece proto = {0};
        proto.in_type = t->type;
        proto.out_type = q->type;
        proto.cols = cols;
        proto.in_row = (int64_t)mor__dtype_size(t->type, (uint64_t)cols);
        proto.out_row = (int64_t)mor__dtype_size(q->type, (uint64_t)cols);
        proto.f32 = j->f32;
        proto.dst = j->dst;
        for (int64_t r = 0; r < rows; r += per) {
            int64_t n = rows - r < per ? rows - r : per;
            proto.src = src + r * proto.in_row;
            run_pieces(&proto, n, j->threads, j->ws);
            int nw = j->threads < n ? j->threads : (int)n;
            for (int i = 0; i < nw; i++) {
                if (j->ws[i].bad >= 0) {
                    int64_t e = r * cols + j->ws[i].bad;
                    return mor__errf(err, err_n, MOR_E_FORMAT,
                                     "tensor '%s' holds a non-finite value at element %lld (row "
                                     "%lld, column %lld)",
                                     t->name, (long long)e, (long long)(e / cols), (long long)(e % cols));
                }
                if (j->ws[i].overflow_row >= 0)
                    return mor__errf(err, err_n, MOR_E_FORMAT,
                                     "tensor '%s', row %lld: values too large for %s (a block "
                                     "scale overflows F16)",
                                     t->name, (long long)(r + j->ws[i].overflow_row),
                                     mor__dtype_name(q->type));
            }
            if ((s = out_write(j->out, j->dst, (size_t)(n * proto.out_row), err, err_n))) return s;
            release(j->image, proto.src, (uint64_t)(n * proto.in_row));
            j->done += (uint64_t)(n * proto.in_row);
            report(j);
        }
    }
    static const uint8_t zeros[64];
    uint64_t pad = (j->p->alignment - q->size % j->p->alignment) % j->p->alignment;
    while (pad) {
        uint64_t k = pad < sizeof zeros ? pad : sizeof zeros;
        if ((s = out_write(j->out, zeros, (size_t)k, err, err_n))) return s;
        pad -= k;
    }
    j->tensors_done++;
    report(j);
    return MOR_OK;
}

int mor__quantize_file(const char *in, const char *out, const char *type, const mor__qopts *o,
                       mor__qstats *st, char *err, size_t err_n) {
    mor__qstats stats;
    memset(&stats, 0, sizeof stats);
    double t0 = now_s();
    if (!in || !out || !type) return mor__errf(err, err_n, MOR_E_INVALID, "missing argument");
    const mor__qrecipe *r = mor__qrecipe_find(type);
    if (!r)
        return mor__errf(err, err_n, MOR_E_INVALID, "unknown type '%s' (one of %s)", type,
                         mor__qrecipe_names());
    int fd = open(in, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return mor__errf(err, err_n, MOR_E_IO, "cannot open '%s': %s", in, strerror(errno));
    struct stat si, so;
    if (fstat(fd, &si) != 0 || !S_ISREG(si.st_mode)) {
        close(fd);
        return mor__errf(err, err_n, MOR_E_IO, "'%s' is not a regular file", in);
    }
    if (stat(out, &so) == 0 && so.st_dev == si.st_dev && so.st_ino == si.st_ino) {
        close(fd);
        return mor__errf(err, err_n, MOR_E_INVALID, "the output '%s' is the input file", out);
    }
    if (si.st_size == 0) {
        close(fd);
        return mor__errf(err, err_n, MOR_E_FORMAT, "'%s' is empty (0 bytes)", in);
    }
    size_t size = (size_t)si.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd);
    if (map == MAP_FAILED)
        return mor__errf(err, err_n, MOR_E_IO, "cannot map '%s': %s", in, strerror(map_errno));

    mor__gguf g;
    mor__qplan plan;
    memset(&plan, 0, sizeof plan);
    obuf hdr = {0};
    out_file of = {NULL, out, 0};
    job j;
    memset(&j, 0, sizeof j);
    int out_regular = 0;
    char msg[768] = "";
    int s = mor__gguf_parse(&g, map, size, msg, sizeof msg);
    if (s) {
        mor__errf(err, err_n, s, "%s: %s", in, msg);
        goto done_parse;
    }
    if ((s = mor__qplan_make(&plan, &g, r, msg, sizeof msg))) {
        mor__errf(err, err_n, s, "%s: %s", in, msg);
        goto done;
    }
    if ((s = build_header(&hdr, &g, &plan, msg, sizeof msg))) {
        mor__errf(err, err_n, s, "%s: %s", in, msg);
        goto done;
    }
    // Working buffers: one piece in F32 and its output, for the widest row of a converted tensor.
    int64_t max_piece = 0;
    j.piece_elems = o && o->piece_elems > 0 ? o->piece_elems : PIECE_ELEMS;
    for (uint64_t k = 0; k < plan.n; k++) {
        if (!plan.t[k].convert) continue;
        const mor__gguf_tensor *t = &g.tensors[plan.t[k].in];
        int64_t cols = (int64_t)t->dims[0], rows = (int64_t)(t->n_elems / t->dims[0]);
        int64_t per = j.piece_elems / cols > 0 ? j.piece_elems / cols : 1;
        int64_t e = (per < rows ? per : rows) * cols;
        if (e > max_piece) max_piece = e;
    }
    j.threads = o && o->threads > 1 ? (o->threads > 64 ? 64 : o->threads) : 1;
    size_t fbytes = (size_t)max_piece * 4;
    j.f32 = malloc(fbytes ? fbytes : 1);
    j.dst = malloc(fbytes ? fbytes : 1);  // no output type is wider than F32
    j.ws = calloc((size_t)j.threads, sizeof *j.ws);
    if (!j.f32 || !j.dst || !j.ws) {
        s = mor__errf(err, err_n, MOR_E_NOMEM, "out of memory for %zu bytes of buffers", 2 * fbytes);
        goto done;
    }
    stats.buffer_bytes = 2 * fbytes + hdr.cap;

    if (!(of.f = fopen(out, "wb"))) {
        s = mor__errf(err, err_n, MOR_E_IO, "cannot create '%s': %s", out, strerror(errno));
        goto done;
    }
    struct stat sf;
    out_regular = fstat(fileno(of.f), &sf) == 0 && S_ISREG(sf.st_mode);
    j.g = &g;
    j.p = &plan;
    j.o = o;
    j.out = &of;
    j.image = map;
    for (uint64_t k = 0; k < plan.n; k++) j.total += g.tensors[plan.t[k].in].size;
    if ((s = out_write(&of, hdr.p, hdr.len, msg, sizeof msg))) {
        mor__errf(err, err_n, s, "%s", msg);
        goto done;
    }
    free(hdr.p);
    hdr.p = NULL;
    for (uint64_t k = 0; k < plan.n; k++) {
        if ((s = write_tensor(&j, &plan.t[k], msg, sizeof msg))) {
            mor__errf(err, err_n, s, "%s", msg);
            goto done;
        }
        stats.per_type[plan.t[k].type < 64 ? plan.t[k].type : 63]++;
        stats.n_converted += (uint64_t)plan.t[k].convert;
        stats.n_fallback += (uint64_t)plan.t[k].fallback;
    }
    if (fflush(of.f) != 0 || ferror(of.f)) {
        s = mor__errf(err, err_n, MOR_E_IO, "cannot write '%s': %s", out, strerror(errno ? errno : EIO));
        goto done;
    }
    stats.n_tensors = plan.n;
    stats.in_bytes = size;
    stats.out_bytes = of.written;

done:
    if (of.f && fclose(of.f) != 0 && s == MOR_OK)
        s = mor__errf(err, err_n, MOR_E_IO, "cannot write '%s': %s", out, strerror(errno));
    if (s && out_regular) remove(out);  // never a device or pipe named as the output
    free(hdr.p);
    free(j.f32);
    free(j.dst);
    free(j.ws);
    mor__qplan_free(&plan);
done_parse:
    mor__gguf_free(&g);
    munmap(map, size);
    stats.seconds = now_s() - t0;
    if (st) *st = stats;
    return s;
}
