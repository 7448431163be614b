// model.c: load a GGUF model: map the file, read the hyperparameters of its architecture (the
// rows of arch.c: `llama`, `mor`, `qwen2`, `phi3`, `gemma2`), bind every tensor with its shape
// checked (fused matrices as views into one tensor), and build the unrolled-layer table that
// points shared layers at one copy of their weights.
//
// Nothing here computes; the forward pass lives in forward.c. Every failure names the key or
// tensor and the expected and found values (docs/FORMAT.md). Nor does it know the tokenizer,
// which sits above the model: load.c runs the steps declared in model.h with the vocabulary
// read in between, and attaches it to the model.
#include "model.h"
#include "kernels.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_LAYERS 4096
#define MAX_DIM    (1 << 20)

typedef struct {
    mor_model *m;
    char      *err;
    size_t     err_n;
    char       prefix[24];   // the architecture's name and a dot: "llama.", "mor.", ...
    double     rope_linear;  // linear RoPE scaling factor (positions divided by it), 1: none
    float     *f32_next;     // next free float in m->f32_copies
    float     *f32_end;
    uint8_t   *used;         // [n_tensors]: bound by a known name
    float    **vec;          // [n_tensors]: F32 copy of a 1-D tensor already converted
} loader;

static const char *role_names[MOR__N_PROJ] = {"attn_q", "attn_k", "attn_v", "attn_output",
                                              "ffn_gate", "ffn_up", "ffn_down"};

// ---- metadata helpers ----------------------------------------------------------------------

static int get_u32(loader *ld, const char *key, uint32_t *out, int required, uint32_t def) {
    char full[96];
    snprintf(full, sizeof full, "%s%s", ld->prefix, key);
    int s = mor__gguf_get_u32(&ld->m->gguf, full, out, ld->err, ld->err_n);
    if (s == MOR_E_NOT_FOUND) {
        if (required) return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT, "missing required key '%s'", full);
        *out = def;
        return MOR_OK;
    }
    return s;
}

static int get_f32(loader *ld, const char *key, float *out, float def) {
    char full[96];
    snprintf(full, sizeof full, "%s%s", ld->prefix, key);
    int s = mor__gguf_get_f32(&ld->m->gguf, full, out, ld->err, ld->err_n);
    if (s == MOR_E_NOT_FOUND) {
        *out = def;
        return MOR_OK;
    }
    if (s == MOR_OK && !isfinite(*out))
        return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT, "key '%s' is not a finite number", full);
    return s;
}

// Reads a string key into buf (NUL-terminated); def when absent (NULL: the key is required).
// A value holding a NUL byte is refused: as a C string it would read as a shorter name.
static int get_str(loader *ld, const char *key, char *buf, size_t n, const char *def) {
    char full[96];
    snprintf(full, sizeof full, "%s%s", ld->prefix, key);
    mor__gguf_str s;
    int st = mor__gguf_get_cstr(&ld->m->gguf, full, &s, ld->err, ld->err_n);
    if (st == MOR_E_NOT_FOUND) {
        if (!def) return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT, "missing required key '%s'", full);
        snprintf(buf, n, "%s", def);
        return MOR_OK;
    }
    if (st) return st;
    if (s.len >= n)
        return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT, "key '%s': value of %llu bytes is too long",
                         full, (unsigned long long)s.len);
    memcpy(buf, s.ptr, s.len);
    buf[s.len] = 0;
    return MOR_OK;
}

// ---- tensor binding ------------------------------------------------------------------------

// What a tensor's address must be a multiple of for the kernels, which read weights in place:
// F32 as floats (4), F16 and BF16 as 16-bit words (2), the quantized blocks as ggml's block
// structs, which hold 16-bit scales at even offsets (2). Rows are whole multiples of these
// sizes, so an aligned first row aligns every row.
static uint32_t kernel_align(uint32_t t) { return t == MOR__DT_F32 ? 4 : 2; }

// GGUF allows any power-of-two general.alignment, 1 included; with 1 or 2 a tensor can start
// at an address the kernels cannot read (undefined behaviour, and a fault on some CPUs).
// Such files are refused rather than copied: converters write 32.
static int check_align(loader *ld, const char *name, const mor__gguf_tensor *t) {
    uint32_t a = kernel_align(t->type);
    if ((uintptr_t)t->data % a == 0) return MOR_OK;
    return mor__errf(ld->err, ld->err_n, MOR_E_UNSUPPORTED,
                     "tensor '%s' (%s) at byte %llu of the file is not %u-byte aligned "
                     "(general.alignment is %u); the kernels read %s weights in place",
                     name, mor__dtype_name(t->type), (unsigned long long)t->offset, a,
                     ld->m->gguf.alignment, mor__dtype_name(t->type));
}

// Finds tensor `name`; checks it is a matrix of `rows` x `cols` (ggml dims [cols, rows]).
// Absent: required → error; else mat->data = NULL.
static int bind_mat(loader *ld, const char *name, int64_t rows, int64_t cols, int required,
                    mor__mat *mat) {
    memset(mat, 0, sizeof *mat);
    const mor__gguf_tensor *t = mor__gguf_find_tensor(&ld->m->gguf, name);
    if (!t) {
        if (required) return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT, "missing tensor '%s'", name);
        return MOR_OK;
    }
    ld->used[t - ld->m->gguf.tensors] = 1;
    if (t->n_dims > 2 || (int64_t)t->dims[0] != cols || (int64_t)t->dims[1] != rows)
        return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                         "tensor '%s' has shape [%llu, %llu%s], expected [%lld, %lld]", name,
                         (unsigned long long)t->dims[0], (unsigned long long)t->dims[1],
                         t->n_dims > 2 ? ", ..." : "", (long long)cols, (long long)rows);
    if (!mor__dtype_computed(t->type))
        return mor__errf(ld->err, ld->err_n, MOR_E_UNSUPPORTED,
                         "tensor '%s' has type %s; this version computes with " MOR__DTYPE_COMPUTED_NAMES,
                         name, mor__dtype_name(t->type));
    // The GGUF reader already refuses a row length that is not a multiple of the type's block;
    // the kernels depend on it, so it is checked here too.
    if (cols % mor__dtype_block(t->type))
        return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                         "tensor '%s' has rows of %lld %s weights, not a multiple of the block of %lld", name,
                         (long long)cols, mor__dtype_name(t->type), (long long)mor__dtype_block(t->type));
    int s = check_align(ld, name, t);
    if (s) return s;
    mat->data = t->data;
    mat->type = t->type;
    mat->rows = rows;
    mat->cols = cols;
    return MOR_OK;
}

// A 1-D tensor of n floats, converted to an F32 copy with `add` added to every element (the
// architecture's norm weight offset; 0 for anything else). Absent: required → error, else NULL.
static int bind_vec_add(loader *ld, const char *name, int64_t n, int required, float add, const float **out) {
    *out = NULL;
    const mor__gguf_tensor *t = mor__gguf_find_tensor(&ld->m->gguf, name);
    if (!t) {
        if (required) return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT, "missing tensor '%s'", name);
        return MOR_OK;
    }
    size_t ti = (size_t)(t - ld->m->gguf.tensors);
    if (ld->vec[ti]) {  // shared by several unrolled layers: converted once
        *out = ld->vec[ti];
        return MOR_OK;
    }
    ld->used[ti] = 1;
    if (t->n_elems != (uint64_t)n || (t->n_dims > 1 && t->dims[0] != (uint64_t)n))
        return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                         "tensor '%s' has %llu elements (first dim %llu), expected a vector of %lld",
                         name, (unsigned long long)t->n_elems, (unsigned long long)t->dims[0],
                         (long long)n);
    if (!mor__dtype_computed(t->type))
        return mor__errf(ld->err, ld->err_n, MOR_E_UNSUPPORTED,
                         "tensor '%s' has type %s; this version computes with " MOR__DTYPE_COMPUTED_NAMES,
                         name, mor__dtype_name(t->type));
    int s = check_align(ld, name, t);
    if (s) return s;
    if (ld->f32_end - ld->f32_next < n)
        return mor__errf(ld->err, ld->err_n, MOR_E_INTERNAL, "vector store exhausted at '%s'", name);
    float *dst = ld->f32_next;
    mor__kernels_ref()->to_f32[t->type](t->data, dst, n);
    if (add != 0.0f)
        for (int64_t i = 0; i < n; i++) dst[i] += add;
    ld->f32_next += n;
    ld->vec[ti] = dst;
    *out = dst;
    return MOR_OK;
}

static int bind_vec(loader *ld, const char *name, int64_t n, int required, const float **out) {
    return bind_vec_add(ld, name, n, required, 0.0f, out);
}

// A norm weight vector: the architecture's offset applies.
static int bind_norm(loader *ld, const char *name, int64_t n, int required, const float **out) {
    return bind_vec_add(ld, name, n, required, ld->m->ar->norm_offset, out);
}

// A matrix stored as row blocks of several projections (fused QKV, fused gate/up): each
// out[i] is a view of rows[i] rows into the one tensor, in order; nothing is copied.
static int bind_split(loader *ld, const char *name, int64_t cols, int n, const int64_t *rows, mor__mat *const *out) {
    int64_t total = 0;
    for (int i = 0; i < n; i++) total += rows[i];
    mor__mat whole;
    int s = bind_mat(ld, name, total, cols, 1, &whole);
    if (s) return s;
    const int64_t rb = mor__dtype_row_bytes(whole.type, cols);
    int64_t r0 = 0;
    for (int i = 0; i < n; i++) {
        *out[i] = whole;
        out[i]->data = (const uint8_t *)whole.data + r0 * rb;
        out[i]->rows = rows[i];
        r0 += rows[i];
    }
    return MOR_OK;
}

// ---- unrolled → stored mapping (docs/FORMAT.md §3.2) ---------------------------------------

static void map_layer(const mor__hparams *hp, int32_t l, int32_t *stored, int32_t *rec, int32_t *mid) {
    int32_t B = hp->block, R = hp->n_rec, L = hp->n_layer;
    switch (hp->sharing) {
    case MOR_SHARING_CYCLE:
        *stored = l % B, *rec = l / B, *mid = 1;
        return;
    case MOR_SHARING_SEQUENCE:
        *stored = l / R, *rec = l % R, *mid = 1;
        return;
    case MOR_SHARING_MIDDLE_CYCLE:
    case MOR_SHARING_MIDDLE_SEQUENCE:
        if (l == 0) {
            *stored = 0, *rec = 0, *mid = 0;
        } else if (l == L - 1) {
            *stored = B + 1, *rec = 0, *mid = 0;
        } else if (hp->sharing == MOR_SHARING_MIDDLE_CYCLE) {
            *stored = 1 + (l - 1) % B, *rec = (l - 1) / B, *mid = 1;
        } else {
            *stored = 1 + (l - 1) / R, *rec = (l - 1) % R, *mid = 1;
        }
        return;
    default:  // vanilla: every layer its own
        *stored = l, *rec = 0, *mid = 0;
        return;
    }
}

// ---- hyperparameters -----------------------------------------------------------------------

// What the architecture's row adds to the Llama hyperparameters (arch.h, docs/FORMAT.md §4).
static int read_arch_hparams(loader *ld) {
    mor_model *m = ld->m;
    mor__hparams *hp = &m->hp;
    const mor__arch *A = m->ar;
    int s;
    hp->act = A->act;
    hp->attn_scale = 1.0f / sqrtf((float)hp->head_dim);
    if (A->qscale_embd_layers && hp->n_layer == A->qscale_embd_layers)
        hp->attn_scale = 1.0f / sqrtf((float)(hp->n_embd / hp->n_head));
    hp->embd_scale = A->embd_scale ? sqrtf((float)hp->n_embd) : 1.0f;
    if (A->flags & MOR__ARCH_SOFTCAP) {
        if ((s = get_f32(ld, "attn_logit_softcapping", &hp->attn_softcap, A->attn_cap_def))) return s;
        if ((s = get_f32(ld, "final_logit_softcapping", &hp->final_softcap, A->final_cap_def))) return s;
        if (!(hp->attn_softcap > 0) || !(hp->final_softcap > 0))
            return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                             "%sattn_logit_softcapping = %g and %sfinal_logit_softcapping = %g must be positive",
                             ld->prefix, hp->attn_softcap, ld->prefix, hp->final_softcap);
    }
    if (A->swa != MOR__SWA_NONE) {
        uint32_t w;
        if ((s = get_u32(ld, "attention.sliding_window", &w, A->swa_def < 0, (uint32_t)MOR__MAX(A->swa_def, 0))))
            return s;
        hp->swa = w > (uint32_t)INT32_MAX ? INT32_MAX : (int32_t)w;  // 0: no window
    }
    ld->rope_linear = 1.0;
    if (A->flags & MOR__ARCH_ROPE_SCALING) {
        char type[32];
        if ((s = get_str(ld, "rope.scaling.type", type, sizeof type, "none"))) return s;
        if (strcmp(type, "linear") == 0) {
            float f;
            if ((s = get_f32(ld, "rope.scaling.factor", &f, 1.0f))) return s;
            if (!(f > 0))
                return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT, "%srope.scaling.factor = %g must be positive",
                                 ld->prefix, f);
            ld->rope_linear = f;
        } else if (strcmp(type, "none") != 0) {
            return mor__errf(ld->err, ld->err_n, MOR_E_UNSUPPORTED,
                             "%srope.scaling.type is '%s': this version computes none and linear", ld->prefix, type);
        }
    }
    return MOR_OK;
}

static int read_hparams(loader *ld) {
    mor_model *m = ld->m;
    mor__hparams *hp = &m->hp;
    const mor__arch *A = m->ar;
    int mor = (A->flags & MOR__ARCH_RECURSIVE) != 0;
    uint32_t v;
    int s;
#define U32(key, field, req, def)                                                                 \
    do {                                                                                          \
        if ((s = get_u32(ld, key, &v, req, def))) return s;                                        \
        if (v > MAX_DIM)                                                                          \
            return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT, "key '%s%s' = %u exceeds %d",      \
                             ld->prefix, key, v, MAX_DIM);                                        \
        hp->field = (int32_t)v;                                                                   \
    } while (0)
    if (mor) {
        if ((s = get_u32(ld, "format_version", &v, 1, 0))) return s;
        if (v != 1)
            return mor__errf(ld->err, ld->err_n, MOR_E_UNSUPPORTED,
                             "mor.format_version is %u; this library reads version 1", v);
    }
    U32("context_length", n_ctx_train, 1, 0);
    U32("embedding_length", n_embd, 1, 0);
    U32("feed_forward_length", n_ff, 1, 0);
    U32("block_count", n_layer, 1, 0);
    U32("attention.head_count", n_head, 1, 0);
    U32("attention.head_count_kv", n_head_kv, 0, (uint32_t)hp->n_head);
    if (hp->n_embd < 1 || hp->n_ff < 1 || hp->n_head < 1 || hp->n_head_kv < 1 || hp->n_ctx_train < 1)
        return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                         "zero hyperparameter: embedding %d, ffn %d, heads %d, kv heads %d, context %d",
                         hp->n_embd, hp->n_ff, hp->n_head, hp->n_head_kv, hp->n_ctx_train);
    if (hp->n_layer < 1 || hp->n_layer > MAX_LAYERS)
        return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT, "%sblock_count = %d: must be 1..%d",
                         ld->prefix, hp->n_layer, MAX_LAYERS);
    if (hp->n_embd % hp->n_head)
        return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                         "embedding length %d is not a multiple of the head count %d", hp->n_embd,
                         hp->n_head);
    U32("attention.key_length", head_dim, 0, (uint32_t)(hp->n_embd / hp->n_head));
    if (A->flags & MOR__ARCH_FREE_HEAD) {  // the head size is its own hyperparameter
        if (hp->head_dim < 2 || hp->head_dim % 2)
            return mor__errf(ld->err, ld->err_n, MOR_E_UNSUPPORTED, "head size %sattention.key_length = %d: expected "
                             "an even number", ld->prefix, hp->head_dim);
    } else if (hp->head_dim != hp->n_embd / hp->n_head || hp->head_dim % 2)
        return mor__errf(ld->err, ld->err_n, MOR_E_UNSUPPORTED,
                         "head size %d: expected an even embedding/heads = %d", hp->head_dim,
                         hp->n_embd / hp->n_head);
    if (hp->n_head % hp->n_head_kv)
        return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                         "head count %d is not a multiple of the KV head count %d", hp->n_head,
                         hp->n_head_kv);
    uint32_t vlen;
    if ((s = get_u32(ld, "attention.value_length", &vlen, 0, (uint32_t)hp->head_dim))) return s;
    if ((int32_t)vlen != hp->head_dim)
        return mor__errf(ld->err, ld->err_n, MOR_E_UNSUPPORTED, "value length %u differs from key length %d",
                         vlen, hp->head_dim);
    uint32_t rope_dim;
    if ((s = get_u32(ld, "rope.dimension_count", &rope_dim, 0, (uint32_t)hp->head_dim))) return s;
    if ((int32_t)rope_dim != hp->head_dim)
        return mor__errf(ld->err, ld->err_n, MOR_E_UNSUPPORTED,
                         "partial RoPE (%u of %d dimensions) is not supported", rope_dim, hp->head_dim);
    if ((s = get_f32(ld, "attention.layer_norm_rms_epsilon", &hp->rms_eps, 1e-5f))) return s;
    if ((s = get_f32(ld, "rope.freq_base", &hp->rope_theta, 10000.0f))) return s;
    if (!(hp->rms_eps > 0) || !(hp->rope_theta > 0))
        return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT, "RMS eps %g and RoPE base %g must be positive",
                         hp->rms_eps, hp->rope_theta);
    if ((s = read_arch_hparams(ld))) return s;

    hp->n_rec = 1;
    hp->sharing = MOR_SHARING_NONE;
    hp->router = MOR_ROUTER_NONE;
    snprintf(m->sharing_name, sizeof m->sharing_name, "none");
    snprintf(m->router_name, sizeof m->router_name, "none");
    if (!mor) {
        hp->rope_neox = A->rope == MOR__ROPE_NEOX;
        hp->block = hp->n_layer;
        hp->n_stored = hp->n_layer;
        return MOR_OK;
    }
    char buf[32];
    if ((s = get_str(ld, "rope.type", buf, sizeof buf, "neox"))) return s;
    if (strcmp(buf, "neox") == 0) hp->rope_neox = 1;
    else if (strcmp(buf, "norm") == 0) hp->rope_neox = 0;
    else return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT, "mor.rope.type is '%s': expected 'neox' or 'norm'", buf);
    U32("recursion.count", n_rec, 1, 0);
    if (hp->n_rec < 1 || hp->n_rec > hp->n_layer)
        return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT, "mor.recursion.count = %d: must be 1..%d",
                         hp->n_rec, hp->n_layer);
    if ((s = get_str(ld, "recursion.sharing", m->sharing_name, sizeof m->sharing_name, NULL))) return s;
    static const char *names[] = {"none", "cycle", "sequence", "middle_cycle", "middle_sequence"};
    hp->sharing = -1;
    for (int i = 1; i < 5; i++)
        if (strcmp(m->sharing_name, names[i]) == 0) hp->sharing = i;
    if (hp->sharing < 0)
        return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                         "mor.recursion.sharing is '%s': expected cycle, sequence, middle_cycle or "
                         "middle_sequence",
                         m->sharing_name);
    int middle = hp->sharing >= MOR_SHARING_MIDDLE_CYCLE;
    int32_t span = hp->n_layer - (middle ? 2 : 0);
    if (span < hp->n_rec || span % hp->n_rec)
        return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                         "%d layers%s cannot be split into %d recursions of equal size", span,
                         middle ? " between the unique first and last" : "", hp->n_rec);
    hp->block = span / hp->n_rec;
    hp->n_first = middle ? 1 : 0;
    hp->n_stored = hp->block + (middle ? 2 : 0);
    int kvs = 0;
    s = mor__gguf_get_bool(&m->gguf, "mor.kv_sharing", &kvs, ld->err, ld->err_n);
    if (s && s != MOR_E_NOT_FOUND) return s;
    hp->kv_sharing = kvs;
    if ((s = get_f32(ld, "lora.scale", &hp->lora_scale, 0.0f))) return s;

    if ((s = get_str(ld, "router.type", m->router_name, sizeof m->router_name, "none"))) return s;
    if (strcmp(m->router_name, "none") == 0) hp->router = MOR_ROUTER_NONE;
    else if (strcmp(m->router_name, "expert") == 0) hp->router = MOR_ROUTER_EXPERT;
    else if (strcmp(m->router_name, "token") == 0) hp->router = MOR_ROUTER_TOKEN;
    else return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                          "mor.router.type is '%s': expected none, expert or token", m->router_name);
    if (hp->router != MOR_ROUTER_NONE) {
        if (hp->sharing == MOR_SHARING_SEQUENCE || hp->sharing == MOR_SHARING_MIDDLE_SEQUENCE)
            return mor__errf(ld->err, ld->err_n, MOR_E_UNSUPPORTED,
                             "a router needs cycle or middle_cycle sharing, not %s", m->sharing_name);
        if ((s = get_str(ld, "router.arch", buf, sizeof buf, NULL))) return s;
        if (strcmp(buf, "linear") == 0) hp->router_mlp = 0;
        else if (strcmp(buf, "mlp") == 0) hp->router_mlp = 1;
        else return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT, "mor.router.arch is '%s': expected linear or mlp", buf);
        if ((s = get_str(ld, "router.func", buf, sizeof buf, NULL))) return s;
        static const char *funcs[] = {"none", "sigmoid", "tanh", "softmax"};
        hp->router_func = -1;
        for (int i = 0; i < 4; i++)
            if (strcmp(buf, funcs[i]) == 0) hp->router_func = i;
        int ok = hp->router == MOR_ROUTER_EXPERT ? (hp->router_func >= 0 && hp->router_func <= 2)
                                                 : (hp->router_func == 1 || hp->router_func == 3);
        if (!ok)
            return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                             "mor.router.func '%s' is not valid for a%s router", buf,
                             hp->router == MOR_ROUTER_EXPERT ? "n expert-choice" : " token-choice");
        if ((s = get_f32(ld, "router.alpha", &hp->router_alpha, NAN))) return s;
        if (isnan(hp->router_alpha))
            return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT, "missing required key 'mor.router.alpha'");
        if ((s = get_f32(ld, "router.temp", &hp->router_temp, 1.0f))) return s;
        if (!(hp->router_temp > 0))
            return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT, "mor.router.temp = %g must be positive",
                             hp->router_temp);
        if ((s = get_str(ld, "router.gating", buf, sizeof buf, "weighted"))) return s;
        if (strcmp(buf, "weighted") == 0) hp->router_additive = 0;
        else if (strcmp(buf, "additive") == 0) hp->router_additive = 1;
        else return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT, "mor.router.gating is '%s'", buf);
    }
    return MOR_OK;
#undef U32
}

// ---- tensors -------------------------------------------------------------------------------

static void proj_shape(const mor__hparams *hp, int role, int64_t *rows, int64_t *cols) {
    int64_t d = hp->n_embd, q = (int64_t)hp->n_head * hp->head_dim,
            kv = (int64_t)hp->n_head_kv * hp->head_dim, ff = hp->n_ff;
    switch (role) {
    case MOR__ROLE_Q: *rows = q, *cols = d; return;
    case MOR__ROLE_K: case MOR__ROLE_V: *rows = kv, *cols = d; return;
    case MOR__ROLE_O: *rows = d, *cols = q; return;
    case MOR__ROLE_GATE: case MOR__ROLE_UP: *rows = ff, *cols = d; return;
    default: *rows = d, *cols = ff; return;
    }
}

static uint64_t mat_params(const mor__mat *w) { return w->data ? (uint64_t)w->rows * (uint64_t)w->cols : 0; }

// The seven projections of stored layer i: separate tensors, or views into the fused ones.
static int bind_proj(loader *ld, int32_t i, mor__layer *ly) {
    const mor__hparams *hp = &ld->m->hp;
    const uint32_t f = ld->m->ar->flags;
    char name[MOR__GGUF_MAX_NAME + 32];
    int s;
    for (int r = 0; r < MOR__N_PROJ; r++) {
        if ((f & MOR__ARCH_FUSED_QKV) && r <= MOR__ROLE_V) continue;
        if ((f & MOR__ARCH_FUSED_UP) && (r == MOR__ROLE_GATE || r == MOR__ROLE_UP)) continue;
        int64_t rows, cols;
        proj_shape(hp, r, &rows, &cols);
        snprintf(name, sizeof name, "blk.%d.%s.weight", i, role_names[r]);
        if ((s = bind_mat(ld, name, rows, cols, 1, &ly->w[r]))) return s;
    }
    const int64_t q = (int64_t)hp->n_head * hp->head_dim, kv = (int64_t)hp->n_head_kv * hp->head_dim;
    if (f & MOR__ARCH_FUSED_QKV) {  // Q rows, then K, then V
        const int64_t rows[3] = {q, kv, kv};
        mor__mat *const out[3] = {&ly->w[MOR__ROLE_Q], &ly->w[MOR__ROLE_K], &ly->w[MOR__ROLE_V]};
        snprintf(name, sizeof name, "blk.%d.attn_qkv.weight", i);
        if ((s = bind_split(ld, name, hp->n_embd, 3, rows, out))) return s;
    }
    if (f & MOR__ARCH_FUSED_UP) {  // gate rows, then up rows
        const int64_t rows[2] = {hp->n_ff, hp->n_ff};
        mor__mat *const out[2] = {&ly->w[MOR__ROLE_GATE], &ly->w[MOR__ROLE_UP]};
        snprintf(name, sizeof name, "blk.%d.ffn_up.weight", i);
        if ((s = bind_split(ld, name, hp->n_embd, 2, rows, out))) return s;
    }
    if (f & MOR__ARCH_QKV_BIAS) {
        static const char *bn[3] = {"attn_q", "attn_k", "attn_v"};
        for (int r = 0; r < 3; r++) {
            snprintf(name, sizeof name, "blk.%d.%s.bias", i, bn[r]);
            if ((s = bind_vec(ld, name, r == 0 ? q : kv, 1, &ly->bias[r]))) return s;
        }
    }
    if (f & MOR__ARCH_POST_NORMS) {
        snprintf(name, sizeof name, "blk.%d.post_attention_norm.weight", i);
        if ((s = bind_norm(ld, name, hp->n_embd, 1, &ly->attn_post_norm))) return s;
        snprintf(name, sizeof name, "blk.%d.post_ffw_norm.weight", i);
        if ((s = bind_norm(ld, name, hp->n_embd, 1, &ly->ffn_post_norm))) return s;
    }
    return MOR_OK;
}

// Per-recursion overrides, LoRA pairs and norm overrides of unrolled layer ly's (s, r).
static int bind_overrides(loader *ld, mor__layer *ly) {
    mor_model *m = ld->m;
    mor__hparams *hp = &m->hp;
    const int64_t d = hp->n_embd;
    char name[MOR__GGUF_MAX_NAME + 32];
    int s;
    for (int r = 0; r < MOR__N_PROJ; r++) {
        int64_t rows, cols;
        proj_shape(hp, r, &rows, &cols);
        mor__mat ov;
        snprintf(name, sizeof name, "blk.%d.rec.%d.%s.weight", ly->stored, ly->rec, role_names[r]);
        if ((s = bind_mat(ld, name, rows, cols, 0, &ov))) return s;
        if (ov.data) ly->w[r] = ov;
        // LoRA: a [in, rank] and b [rank, out] (ggml order) → a: (rank, in), b: (out, rank)
        snprintf(name, sizeof name, "blk.%d.rec.%d.%s.lora_a", ly->stored, ly->rec, role_names[r]);
        const mor__gguf_tensor *ta = mor__gguf_find_tensor(&m->gguf, name);
        snprintf(name, sizeof name, "blk.%d.rec.%d.%s.lora_b", ly->stored, ly->rec, role_names[r]);
        const mor__gguf_tensor *tb = mor__gguf_find_tensor(&m->gguf, name);
        if (!ta && !tb) continue;
        if (!ta || !tb)
            return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                             "LoRA of blk.%d.rec.%d.%s: lora_a and lora_b must come in pairs",
                             ly->stored, ly->rec, role_names[r]);
        int64_t rank = (int64_t)ta->dims[1];
        if (ta->n_dims != 2 || rank < 1 || rank > MOR__MIN(rows, cols))
            return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                             "LoRA blk.%d.rec.%d.%s.lora_a: rank %lld outside 1..%lld", ly->stored,
                             ly->rec, role_names[r], (long long)rank,
                             (long long)MOR__MIN(rows, cols));
        snprintf(name, sizeof name, "blk.%d.rec.%d.%s.lora_a", ly->stored, ly->rec, role_names[r]);
        if ((s = bind_mat(ld, name, rank, cols, 1, &ly->lora_a[r]))) return s;
        snprintf(name, sizeof name, "blk.%d.rec.%d.%s.lora_b", ly->stored, ly->rec, role_names[r]);
        if ((s = bind_mat(ld, name, rows, rank, 1, &ly->lora_b[r]))) return s;
        if (!(hp->lora_scale != 0.0f))
            return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                             "LoRA tensors present but mor.lora.scale is missing or 0");
        if (rank > hp->lora_rank) hp->lora_rank = (int32_t)rank;
    }
    const float *nv;
    snprintf(name, sizeof name, "blk.%d.rec.%d.attn_norm.weight", ly->stored, ly->rec);
    if ((s = bind_vec(ld, name, d, 0, &nv))) return s;
    if (nv) ly->attn_norm = nv;
    snprintf(name, sizeof name, "blk.%d.rec.%d.ffn_norm.weight", ly->stored, ly->rec);
    if ((s = bind_vec(ld, name, d, 0, &nv))) return s;
    if (nv) ly->ffn_norm = nv;
    return MOR_OK;
}

// ---- relaxations besides LoRA (docs/FORMAT.md §3.3) ------------------------------------------

#define MAX_PROMPT (1 << 16)  // adaption prompt slots

// DoRA magnitudes, the recursion encoding and the adaption prompt of unrolled layer ly's (s, r).
// A magnitude is bound as an F32 copy into ly->dora (relax_compute turns it into the row scale in
// place: the copy belongs to this layer alone); the prompt matrix goes to *prompt.
static int bind_relax(loader *ld, mor__layer *ly, mor__mat *prompt) {
    mor_model *m = ld->m;
    mor__hparams *hp = &m->hp;
    const int64_t d = hp->n_embd;
    char name[MOR__GGUF_MAX_NAME + 32], gname[MOR__GGUF_MAX_NAME + 32];
    int s;
    for (int r = 0; r < MOR__N_PROJ; r++) {
        int64_t rows, cols;
        proj_shape(hp, r, &rows, &cols);
        snprintf(name, sizeof name, "blk.%d.rec.%d.%s.dora_m", ly->stored, ly->rec, role_names[r]);
        const float *mv;
        if ((s = bind_vec(ld, name, rows, 0, &mv))) return s;
        if (!mv) continue;
        if (!ly->lora_a[r].data)
            return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                             "tensor '%s': a DoRA magnitude needs the LoRA pair blk.%d.rec.%d.%s.lora_a / lora_b",
                             name, ly->stored, ly->rec, role_names[r]);
        ly->dora[r] = mv;
        hp->n_dora++;
    }
    snprintf(name, sizeof name, "blk.%d.rec.%d.rec_enc", ly->stored, ly->rec);
    if ((s = bind_vec(ld, name, d, 0, &ly->rec_enc))) return s;
    if (ly->rec_enc) hp->n_rec_enc++;
    snprintf(name, sizeof name, "blk.%d.rec.%d.adapt_prompt", ly->stored, ly->rec);
    snprintf(gname, sizeof gname, "blk.%d.rec.%d.adapt_gate", ly->stored, ly->rec);
    const mor__gguf_tensor *t = mor__gguf_find_tensor(&m->gguf, name);
    const float *g;
    if ((s = bind_vec(ld, gname, 1, 0, &g))) return s;
    if (!t && !g) return MOR_OK;
    if (!t || !g)
        return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                         "adaption prompt of blk.%d.rec.%d: adapt_prompt and adapt_gate must come in pairs "
                         "('%s' is missing)", ly->stored, ly->rec, t ? gname : name);
    if (t->n_dims != 2 || t->dims[0] != (uint64_t)d || t->dims[1] > MAX_PROMPT)
        return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                         "tensor '%s' has shape [%llu, %llu%s], expected [%lld, len] with len 1..%d", name,
                         (unsigned long long)t->dims[0], (unsigned long long)(t->n_dims > 1 ? t->dims[1] : 1),
                         t->n_dims > 2 ? ", ..." : "", (long long)d, MAX_PROMPT);
    if ((s = bind_mat(ld, name, (int64_t)t->dims[1], d, 1, prompt))) return s;
    if (!isfinite(*g))
        return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT, "tensor '%s' = %g is not a finite number", gname, *g);
    ly->adapt_gate = *g;
    ly->adapt_len = (int32_t)t->dims[1];
    hp->n_adapt++;
    if (ly->adapt_len > hp->adapt_len) hp->adapt_len = ly->adapt_len;
    return MOR_OK;
}

// Combinations with a router that the training code does not define (docs/DESIGN.md,
// Relaxations besides LoRA): an expert-choice router replaces the attention module of every
// block layer, which fails on a layer wrapped by a recursion encoding and on a prompt-adapted
// attention (neither has the attributes it reads); a token-choice router calls the block's
// layers with the positions of its compacted batch, so the adapter's query would be rotated by
// the token's rank among the routed tokens, not by its position.
static int check_relax_router(loader *ld) {
    const mor__hparams *hp = &ld->m->hp;
    if (hp->router == MOR_ROUTER_EXPERT && hp->n_rec_enc)
        return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                         "recursion encodings (rec_enc) with an expert-choice router are not defined "
                         "(see docs/DESIGN.md, Relaxations besides LoRA)");
    if (hp->router != MOR_ROUTER_NONE && hp->n_adapt)
        return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                         "adaption prompts (adapt_prompt) with a%s router are not defined "
                         "(see docs/DESIGN.md, Relaxations besides LoRA)",
                         hp->router == MOR_ROUTER_EXPERT ? "n expert-choice" : " token-choice");
    return MOR_OK;
}

// Row o of W in F32 (W->cols values).
static void mat_row(const mor__mat *W, int64_t o, float *dst) {
    const uint8_t *row = (const uint8_t *)W->data + o * mor__dtype_row_bytes(W->type, W->cols);
    mor__kernels_ref()->to_f32[W->type](row, dst, W->cols);
}

static double dot_f64(const float *a, const float *b, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

// The DoRA row scale of projection `role` of ly, in place of its magnitude m:
// scale[o] = m[o] / |W[o] + sigma (B A)[o]| (the norm over the inputs). buf: cols + rank * cols
// + rank floats.
static int dora_scale(loader *ld, const mor__layer *ly, int role, float *buf) {
    const mor__mat *W = &ly->w[role], *A = &ly->lora_a[role], *B = &ly->lora_b[role];
    const int64_t cols = W->cols, rank = A->rows;
    const float sigma = ld->m->hp.lora_scale;
    float *v = buf, *a = buf + cols, *brow = a + rank * cols;
    float *scale = (float *)(uintptr_t)ly->dora[role];  // the layer's own F32 copy (bind_relax)
    for (int64_t k = 0; k < rank; k++) mat_row(A, k, a + k * cols);
    for (int64_t o = 0; o < W->rows; o++) {
        mat_row(W, o, v);
        mat_row(B, o, brow);
        for (int64_t k = 0; k < rank; k++) {
            const float c = sigma * brow[k], *ak = a + k * cols;
            for (int64_t i = 0; i < cols; i++) v[i] += c * ak[i];
        }
        const double norm = sqrt(dot_f64(v, v, cols)), sc = scale[o] / norm;
        if (!(norm > 0) || !isfinite(sc))
            return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                             "tensor 'blk.%d.rec.%d.%s.dora_m': row %lld of W + scale * B A has norm %g and "
                             "magnitude %g; the row scale is not a finite number", ly->stored, ly->rec,
                             role_names[role], (long long)o, norm, (double)scale[o]);
        scale[o] = (float)sc;
    }
    return MOR_OK;
}

// y[n][out] = projection `role` of ly applied to the rows x[n][in], as the layer computes it:
// W x (+ sigma B (A x)) (times the DoRA scale) (+ the bias). row: max(in, rank) floats, t: n *
// rank floats.
static void proj_rows(const mor_model *m, const mor__layer *ly, int role, const float *x, int64_t n, float *y,
                      float *row, float *t) {
    const mor__mat *W = &ly->w[role], *A = &ly->lora_a[role], *B = &ly->lora_b[role];
    const int64_t in = W->cols, out = W->rows;
    for (int64_t o = 0; o < out; o++) {
        mat_row(W, o, row);
        for (int64_t j = 0; j < n; j++) y[j * out + o] = (float)dot_f64(row, x + j * in, in);
    }
    if (A->data) {
        const int64_t rank = A->rows;
        for (int64_t k = 0; k < rank; k++) {
            mat_row(A, k, row);
            for (int64_t j = 0; j < n; j++) t[j * rank + k] = (float)dot_f64(row, x + j * in, in);
        }
        for (int64_t o = 0; o < out; o++) {
            mat_row(B, o, row);
            for (int64_t j = 0; j < n; j++)
                y[j * out + o] += m->hp.lora_scale * (float)dot_f64(row, t + j * rank, rank);
        }
    }
    const float *sc = ly->dora[role], *bias = role <= MOR__ROLE_V ? ly->bias[role] : NULL;
    for (int64_t j = 0; j < n; j++)
        for (int64_t o = 0; o < out; o++) {
            if (sc) y[j * out + o] *= sc[o];
            if (bias) y[j * out + o] += bias[o];
        }
}

// DoRA row scales from the bound magnitudes, then the keys and values of every adaption prompt
// (constant per layer: K_a = the layer's K projection of the prompt, V_a likewise; no RoPE).
static int relax_compute(loader *ld, const mor__mat *prompts) {
    mor_model *m = ld->m;
    const mor__hparams *hp = &m->hp;
    if (!hp->n_dora && !hp->n_adapt) return MOR_OK;
    const uint64_t d = (uint64_t)hp->n_embd, kvd = (uint64_t)hp->n_head_kv * (uint64_t)hp->head_dim,
                   rank = (uint64_t)MOR__MAX(hp->lora_rank, 1), len = (uint64_t)MOR__MAX(hp->adapt_len, 1);
    const uint64_t wide = MOR__MAX(MOR__MAX((uint64_t)hp->n_ff, d), (uint64_t)hp->n_head * (uint64_t)hp->head_dim);
    // scratch: DoRA needs a row, A, and a row of B; a prompt needs itself, A x and a row
    uint64_t need = MOR__MAX(wide + rank * wide + rank, len * d + len * rank + MOR__MAX(wide, rank));
    uint64_t store = 0;
    for (int32_t l = 0; l < hp->n_layer; l++) store += (uint64_t)m->layers[l].adapt_len * kvd * 2;
    float *buf = mor__alloc(&m->alloc, (size_t)need, sizeof(float), 0);
    m->relax = store ? mor__alloc(&m->alloc, (size_t)store, sizeof(float), 0) : NULL;
    if (!buf || (store && !m->relax)) {
        mor__free(&m->alloc, buf);
        return mor__errf(ld->err, ld->err_n, MOR_E_NOMEM, "out of memory for the relaxations (%llu floats)",
                         (unsigned long long)(need + store));
    }
    int s = MOR_OK;
    float *next = m->relax;
    for (int32_t l = 0; l < hp->n_layer && !s; l++) {
        mor__layer *ly = &m->layers[l];
        for (int r = 0; r < MOR__N_PROJ && !s; r++)
            if (ly->dora[r]) s = dora_scale(ld, ly, r, buf);
        if (s || !ly->adapt_len) continue;
        const int64_t n = ly->adapt_len;
        float *p = buf, *t = buf + n * (int64_t)d, *row = t + n * (int64_t)rank;
        for (int64_t j = 0; j < n; j++) mat_row(&prompts[l], j, p + j * (int64_t)d);
        ly->adapt_k = next;
        proj_rows(m, ly, MOR__ROLE_K, p, n, next, row, t);
        next += n * (int64_t)kvd;
        ly->adapt_v = next;
        proj_rows(m, ly, MOR__ROLE_V, p, n, next, row, t);
        next += n * (int64_t)kvd;
        for (int64_t e = 0; e < 2 * n * (int64_t)kvd; e++)
            if (!isfinite(ly->adapt_k[e]))
                s = mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                              "adaption prompt of blk.%d.rec.%d: its keys or values are not finite", ly->stored,
                              ly->rec);
    }
    mor__free(&m->alloc, buf);
    return s;
}

static int bind_layers(loader *ld) {
    mor_model *m = ld->m;
    mor__hparams *hp = &m->hp;
    int mor = (m->ar->flags & MOR__ARCH_RECURSIVE) != 0;
    int64_t d = hp->n_embd;
    char name[MOR__GGUF_MAX_NAME + 32];
    int s;
    m->layers = mor__alloc(&m->alloc, (size_t)hp->n_layer, sizeof *m->layers, 1);
    if (!m->layers) return mor__errf(ld->err, ld->err_n, MOR_E_NOMEM, "out of memory");
    // The prompt matrix of each unrolled layer until its keys and values are computed.
    mor__mat *prompts = mor__alloc(&m->alloc, (size_t)hp->n_layer, sizeof *prompts, 1);
    if (!prompts) return mor__errf(ld->err, ld->err_n, MOR_E_NOMEM, "out of memory");
    s = MOR_OK;
    // Stored layers first: the nine roles, shared by every unrolled layer mapping to them.
    for (int32_t l = 0; l < hp->n_layer && !s; l++) {
        mor__layer *ly = &m->layers[l];
        map_layer(hp, l, &ly->stored, &ly->rec, &ly->in_middle);
        if ((s = bind_proj(ld, ly->stored, ly))) break;
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", ly->stored);
        if ((s = bind_norm(ld, name, d, 1, &ly->attn_norm))) break;
        snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", ly->stored);
        if ((s = bind_norm(ld, name, d, 1, &ly->ffn_norm))) break;
        if (m->ar->swa == MOR__SWA_ALL || (m->ar->swa == MOR__SWA_EVEN && l % 2 == 0)) ly->window = hp->swa;
        if (!mor) continue;
        if ((s = bind_overrides(ld, ly))) break;
        if ((s = bind_relax(ld, ly, &prompts[l]))) break;
    }
    if (!s) s = check_relax_router(ld);
    if (!s) s = relax_compute(ld, prompts);
    mor__free(&m->alloc, prompts);
    return s;
}

static int bind_routers(loader *ld) {
    mor_model *m = ld->m;
    mor__hparams *hp = &m->hp;
    if (hp->router == MOR_ROUTER_NONE) return MOR_OK;
    int64_t d = hp->n_embd;
    int expert = hp->router == MOR_ROUTER_EXPERT;
    int n = expert ? hp->n_rec : 1;
    int64_t out = expert ? 1 : hp->n_rec;
    char name[96];
    int s;
    m->routers = mor__alloc(&m->alloc, (size_t)n, sizeof *m->routers, 1);
    if (!m->routers) return mor__errf(ld->err, ld->err_n, MOR_E_NOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        char base[32];
        if (expert) snprintf(base, sizeof base, "router.%d", i);
        else snprintf(base, sizeof base, "router");
        if (hp->router_mlp) {
            snprintf(name, sizeof name, "%s.fc1.weight", base);
            if ((s = bind_mat(ld, name, 2 * d, d, 1, &m->routers[i].w1))) return s;
            snprintf(name, sizeof name, "%s.fc2.weight", base);
            if ((s = bind_mat(ld, name, out, 2 * d, 1, &m->routers[i].w2))) return s;
        } else {
            snprintf(name, sizeof name, "%s.weight", base);
            if ((s = bind_mat(ld, name, out, d, 1, &m->routers[i].w1))) return s;
        }
    }
    if (expert) {
        const char *probe = hp->router_mlp ? "router_aux.0.fc1.weight" : "router_aux.0.weight";
        if (mor__gguf_find_tensor(&m->gguf, probe)) {
            m->routers_aux = mor__alloc(&m->alloc, (size_t)n, sizeof *m->routers_aux, 1);
            if (!m->routers_aux) return mor__errf(ld->err, ld->err_n, MOR_E_NOMEM, "out of memory");
            for (int i = 0; i < n; i++) {
                if (hp->router_mlp) {
                    snprintf(name, sizeof name, "router_aux.%d.fc1.weight", i);
                    if ((s = bind_mat(ld, name, 2 * d, d, 1, &m->routers_aux[i].w1))) return s;
                    snprintf(name, sizeof name, "router_aux.%d.fc2.weight", i);
                    if ((s = bind_mat(ld, name, 1, 2 * d, 1, &m->routers_aux[i].w2))) return s;
                } else {
                    snprintf(name, sizeof name, "router_aux.%d.weight", i);
                    if ((s = bind_mat(ld, name, 1, d, 1, &m->routers_aux[i].w1))) return s;
                }
            }
        }
    } else {
        const float *b;
        if ((s = bind_vec(ld, "router.bias", hp->n_rec, 0, &b))) return s;
        m->router_bias = (float *)b;
    }
    return MOR_OK;
}

static int bind_exits(loader *ld) {
    mor_model *m = ld->m;
    const mor__gguf_kv *kv = mor__gguf_find_kv(&m->gguf, "mor.exit.layers");
    if (!kv || !(m->ar->flags & MOR__ARCH_RECURSIVE)) return MOR_OK;
    uint64_t n;
    uint32_t et;
    int s = mor__gguf_get_arr(&m->gguf, "mor.exit.layers", &et, &n, ld->err, ld->err_n);
    if (s) return s;
    if (n > (uint64_t)m->hp.n_layer)
        return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT, "mor.exit.layers has %llu entries, more than the %d layers",
                         (unsigned long long)n, m->hp.n_layer);
    int32_t *at = mor__alloc(&m->alloc, (size_t)n, sizeof *at, 1);
    m->exits = mor__alloc(&m->alloc, (size_t)n, sizeof *m->exits, 1);
    if (!at || !m->exits) {
        mor__free(&m->alloc, at);
        return mor__errf(ld->err, ld->err_n, MOR_E_NOMEM, "out of memory");
    }
    s = mor__gguf_arr_i32(&m->gguf, "mor.exit.layers", at, n, ld->err, ld->err_n);
    for (uint64_t i = 0; s == MOR_OK && i < n; i++) {
        if (at[i] < 1 || at[i] > m->hp.n_layer || (i && at[i] <= at[i - 1])) {
            s = mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                          "mor.exit.layers[%llu] = %d: must be increasing within 1..%d",
                          (unsigned long long)i, at[i], m->hp.n_layer);
            break;
        }
        mor__exit_head *e = &m->exits[i];
        e->after_layer = at[i];
        char name[64];
        snprintf(name, sizeof name, "exit.%llu.norm.weight", (unsigned long long)i);
        if ((s = bind_vec(ld, name, m->hp.n_embd, 0, &e->norm))) break;
        if (!e->norm) e->norm = m->output_norm;
        snprintf(name, sizeof name, "exit.%llu.output.weight", (unsigned long long)i);
        if ((s = bind_mat(ld, name, m->hp.n_vocab, m->hp.n_embd, 0, &e->out))) break;
        if (!e->out.data) e->out = m->output;
        m->n_exits = (int32_t)(i + 1);
    }
    mor__free(&m->alloc, at);
    return s;
}

// Depth steps: recursion blocks, or segments between the exit heads of a vanilla model.
static int build_steps(loader *ld) {
    mor_model *m = ld->m;
    const mor__hparams *hp = &m->hp;
    int32_t L = hp->n_layer, n = 1;
    int32_t bounds[MAX_LAYERS + 1];
    if (hp->n_rec > 1) {
        n = hp->n_rec;
    } else {  // segments end after each exit head below the full depth
        for (int32_t i = 0; i < m->n_exits; i++)
            if (m->exits[i].after_layer < L) bounds[n++ - 1] = m->exits[i].after_layer;
    }
    m->n_steps = n;
    m->layer_step = mor__alloc(&m->alloc, (size_t)L, sizeof(int32_t), 0);
    m->step_begin = mor__alloc(&m->alloc, (size_t)n, sizeof(int32_t), 0);
    m->step_end = mor__alloc(&m->alloc, (size_t)n, sizeof(int32_t), 0);
    m->step_exit = mor__alloc(&m->alloc, (size_t)n, sizeof(int32_t), 0);
    if (!m->layer_step || !m->step_begin || !m->step_end || !m->step_exit)
        return mor__errf(ld->err, ld->err_n, MOR_E_NOMEM, "out of memory");
    m->has_last = hp->sharing == MOR_SHARING_MIDDLE_CYCLE || hp->sharing == MOR_SHARING_MIDDLE_SEQUENCE;
    m->steps_interleaved = hp->n_rec > 1 && (hp->sharing == MOR_SHARING_SEQUENCE || hp->sharing == MOR_SHARING_MIDDLE_SEQUENCE);
    if (hp->n_rec > 1) {
        for (int32_t l = 0; l < L; l++) m->layer_step[l] = m->layers[l].in_middle ? m->layers[l].rec : -1;
        for (int32_t r = 0; r < n; r++) {
            m->step_begin[r] = hp->n_first + r * hp->block;
            m->step_end[r] = hp->n_first + (r + 1) * hp->block;
        }
    } else {
        int32_t b = 0;
        for (int32_t k = 0; k < n; k++) {
            m->step_begin[k] = b;
            m->step_end[k] = k < n - 1 ? bounds[k] : L;
            for (int32_t l = m->step_begin[k]; l < m->step_end[k]; l++) m->layer_step[l] = k;
            b = m->step_end[k];
        }
    }
    // The exit head read after each step: indexed by the layer it follows (one pass over the
    // exits, then one over the steps; not steps x exits).
    int32_t *exit_after = bounds;  // bounds is no longer needed: reused, L + 1 entries
    for (int32_t l = 0; l <= L; l++) exit_after[l] = -1;
    for (int32_t i = 0; i < m->n_exits; i++) exit_after[m->exits[i].after_layer] = i;
    for (int32_t k = 0; k < n; k++)
        m->step_exit[k] = m->steps_interleaved ? -1 : exit_after[m->step_end[k]];
    return MOR_OK;
}

static int bind_all(loader *ld) {
    mor_model *m = ld->m;
    mor__hparams *hp = &m->hp;
    int s;
    const mor__gguf_tensor *te = mor__gguf_find_tensor(&m->gguf, "token_embd.weight");
    if (!te) return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT, "missing tensor 'token_embd.weight'");
    if (te->n_dims != 2 || te->dims[0] != (uint64_t)hp->n_embd || te->dims[1] > (1u << 24))
        return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                         "tensor 'token_embd.weight' has shape [%llu, %llu], expected [%d, n_vocab]",
                         (unsigned long long)te->dims[0], (unsigned long long)te->dims[1], hp->n_embd);
    hp->n_vocab = (int32_t)te->dims[1];
    uint32_t nv;
    if ((s = get_u32(ld, "vocab_size", &nv, 0, (uint32_t)hp->n_vocab))) return s;
    if ((int32_t)nv != hp->n_vocab)
        return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                         "%svocab_size = %u but token_embd.weight has %d rows", ld->prefix, nv, hp->n_vocab);
    // 1-D F32 copies: norms of every stored layer and override, final and exit norms, bias.
    uint64_t n_vec = 0;
    for (uint64_t i = 0; i < m->gguf.n_tensors; i++)
        if (m->gguf.tensors[i].n_dims == 1 || m->gguf.tensors[i].dims[1] == 1) n_vec += m->gguf.tensors[i].n_elems;
    m->f32_copies = mor__alloc(&m->alloc, (size_t)(n_vec + (uint64_t)hp->n_embd * 2 + 1), sizeof(float), 0);
    if (!m->f32_copies) return mor__errf(ld->err, ld->err_n, MOR_E_NOMEM, "out of memory");
    ld->f32_next = m->f32_copies;
    ld->f32_end = m->f32_copies + n_vec + (uint64_t)hp->n_embd * 2 + 1;

    if ((s = bind_mat(ld, "token_embd.weight", hp->n_vocab, hp->n_embd, 1, &m->tok_embd))) return s;
    if ((s = bind_mat(ld, "output.weight", hp->n_vocab, hp->n_embd, 0, &m->output))) return s;
    int tied = m->output.data == NULL;
    if (tied) m->output = m->tok_embd;
    if ((s = bind_norm(ld, "output_norm.weight", hp->n_embd, 1, &m->output_norm))) return s;
    if ((s = bind_layers(ld))) return s;
    if ((s = bind_routers(ld))) return s;
    if ((s = bind_exits(ld))) return s;
    if ((s = build_steps(ld))) return s;
    m->rope_inv_freq = mor__alloc(&m->alloc, (size_t)(hp->head_dim / 2 + 1), sizeof(double), 0);
    if (!m->rope_inv_freq) return mor__errf(ld->err, ld->err_n, MOR_E_NOMEM, "out of memory");
    for (int i = 0; i < hp->head_dim / 2; i++)
        m->rope_inv_freq[i] = pow((double)hp->rope_theta, -2.0 * i / hp->head_dim);
    if (m->ar->flags & MOR__ARCH_ROPE_FREQS) {  // Llama 3.x: per-frequency factors divide them
        const float *ff;
        if ((s = bind_vec(ld, "rope_freqs.weight", hp->head_dim / 2, 0, &ff))) return s;
        for (int i = 0; ff && i < hp->head_dim / 2; i++) {
            if (!(ff[i] > 0) || !isfinite(ff[i]))
                return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                                 "rope_freqs.weight[%d] = %g: frequency factors must be positive", i, ff[i]);
            m->rope_inv_freq[i] /= ff[i];
        }
    }
    if (ld->rope_linear != 1.0)
        for (int i = 0; i < hp->head_dim / 2; i++) m->rope_inv_freq[i] /= ld->rope_linear;

    for (uint64_t i = 0; i < m->gguf.n_tensors; i++) {
        const mor__gguf_tensor *t = &m->gguf.tensors[i];
        m->n_params += t->n_elems;
        m->weight_bytes += t->size;
        if (ld->used[i]) continue;
        if (strncmp(t->name, "rope_factors_", 13) == 0)  // Phi-3 128k models: positions beyond the original context
            return mor__errf(ld->err, ld->err_n, MOR_E_UNSUPPORTED,
                             "tensor '%s': LongRoPE frequency factors are not supported by this version", t->name);
        if (m->ar->flags & MOR__ARCH_STRICT)
            return mor__errf(ld->err, ld->err_n, MOR_E_FORMAT,
                             "unexpected tensor '%s' (not part of this model's layout; see "
                             "docs/FORMAT.md)",
                             t->name);
        mor__log(MOR_LOG_WARN, "ignoring tensor '%s'", t->name);
    }
    // Unrolled parameter count: embedding, output if separate, final norm, every unrolled
    // layer in full (shared weights counted at each use), routers and exit heads.
    uint64_t u = (uint64_t)hp->n_vocab * hp->n_embd * (tied ? 1 : 2) + (uint64_t)hp->n_embd;
    for (int32_t l = 0; l < hp->n_layer; l++) {
        const mor__layer *ly = &m->layers[l];
        for (int r = 0; r < MOR__N_PROJ; r++)
            u += mat_params(&ly->w[r]) + mat_params(&ly->lora_a[r]) + mat_params(&ly->lora_b[r]);
        u += 2 * (uint64_t)hp->n_embd;
        u += (ly->attn_post_norm ? (uint64_t)hp->n_embd : 0) + (ly->ffn_post_norm ? (uint64_t)hp->n_embd : 0);
        if (ly->bias[0])
            u += (uint64_t)(hp->n_head + 2 * hp->n_head_kv) * (uint64_t)hp->head_dim;
        for (int r = 0; r < MOR__N_PROJ; r++) u += ly->dora[r] ? (uint64_t)ly->w[r].rows : 0;
        u += (ly->rec_enc ? (uint64_t)hp->n_embd : 0) + (uint64_t)ly->adapt_len * (uint64_t)hp->n_embd +
             (ly->adapt_len ? 1 : 0);
    }
    if (m->routers) {
        int n = hp->router == MOR_ROUTER_EXPERT ? hp->n_rec : 1;
        for (int i = 0; i < n; i++) u += mat_params(&m->routers[i].w1) + mat_params(&m->routers[i].w2);
    }
    m->n_params_unrolled = u;
    return MOR_OK;
}

// ---- load ----------------------------------------------------------------------------------

static void model_destroy(mor_model *m) {
    if (m->vocab_free) m->vocab_free(m->vocab);
    mor__gguf_free(&m->gguf);
    void *bufs[] = {m->layers, m->layer_step, m->routers, m->routers_aux, m->exits, m->step_begin, m->step_end,
                    m->step_exit, m->f32_copies, m->relax, m->rope_inv_freq, m->name, m->heap};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) mor__free(&m->alloc, bufs[i]);
    if (m->map) munmap(m->map, m->map_size);
    const mor_allocator a = m->alloc;
    mor__free(&a, m);
}

// The caller's reference and one per session, scheduler and streaming detokenizer: whoever
// drops the last one frees the model, so freeing a model that is still in use (from another
// thread, or from a session's callback) cannot pull it from under its users.
void mor__model_ref(const mor_model *m) { atomic_fetch_add(&((mor_model *)(uintptr_t)m)->refs, 1); }

void mor__model_unref(const mor_model *m) {
    mor_model *mm = (mor_model *)(uintptr_t)m;
    if (atomic_fetch_sub(&mm->refs, 1) == 1) model_destroy(mm);
}

void mor_model_free(mor_model *m) {
    if (!m) return;
    int users = atomic_load(&m->refs) - 1;
    if (users > 0)
        mor__log(MOR_LOG_WARN, "mor_model_free: %d sessions, schedulers or detokenizers still use the model; "
                 "it is freed with the last of them", users);
    mor__model_unref(m);
}

// The first step of a load: the GGUF header, the architecture and the name.
static int open_image(mor_model *m, const void *image, size_t size, uint32_t flags, char *err, size_t err_n) {
    int s = mor__gguf_parse_with(&m->gguf, &m->alloc, image, size, err, err_n);
    if (s) return s;
    mor__gguf_str a;
    s = mor__gguf_get_cstr(&m->gguf, "general.architecture", &a, err, err_n);
    if (s == MOR_E_NOT_FOUND) return mor__errf(err, err_n, MOR_E_FORMAT, "missing required key 'general.architecture'");
    if (s) return s;
    snprintf(m->arch, sizeof m->arch, "%.*s", (int)MOR__MIN(a.len, sizeof m->arch - 1), a.ptr);
    // general.name is optional and informative (a value of another type is ignored), but it is
    // handed out as a C string: a NUL inside would cut it short.
    mor__gguf_str nm = {"", 0};
    if (mor__gguf_get_str(&m->gguf, "general.name", &nm, NULL, 0) == MOR_OK &&
        (s = mor__gguf_get_cstr(&m->gguf, "general.name", &nm, err, err_n)))
        return s;
    m->name = mor__strndup(&m->alloc, nm.ptr, nm.len);
    if (!m->name) return mor__errf(err, err_n, MOR_E_NOMEM, "out of memory");
    m->vocab_only = (flags & MOR_MODEL_VOCAB_ONLY) != 0;
    return MOR_OK;
}

int mor__model_bind(mor_model *m, char *err, size_t err_n) {
    if (m->vocab_only) return MOR_OK;
    m->ar = mor__arch_find(m->arch);
    if (!m->ar) {
        mor__gguf_str a;  // the whole value: m->arch holds its first 15 bytes
        mor__gguf_get_str(&m->gguf, "general.architecture", &a, NULL, 0);
        char names[128];
        mor__arch_names(names, sizeof names);
        return mor__errf(err, err_n, MOR_E_UNSUPPORTED, "unknown architecture '%.*s' (supported: %s)",
                         (int)MOR__MIN(a.len, 64), a.ptr, names);
    }
    loader ld = {m, err, err_n, "", 1.0, NULL, NULL, NULL, NULL};
    snprintf(ld.prefix, sizeof ld.prefix, "%s.", m->arch);
    ld.used = mor__alloc(&m->alloc, (size_t)m->gguf.n_tensors, 1, 1);
    ld.vec = mor__alloc(&m->alloc, (size_t)m->gguf.n_tensors, sizeof *ld.vec, 1);
    int s = ld.used && ld.vec ? MOR_OK : mor__errf(err, err_n, MOR_E_NOMEM, "out of memory");
    if (!s) s = read_hparams(&ld);
    if (!s) s = bind_all(&ld);
    if (!s) s = mor__policy_read_file(m, err, err_n);
    mor__free(&m->alloc, ld.used);
    mor__free(&m->alloc, ld.vec);
    return s;
}

static uint32_t params_flags(const mor_model_params *p, mor_allocator *alloc) {
    mor_model_params d;
    mor_model_params_init(&d);
    if (p) memcpy(&d, p, MOR__MIN(p->size, sizeof d));
    *alloc = mor__alloc_custom(&d.allocator) ? d.allocator : (mor_allocator){0};
    return d.flags;
}

// An empty model whose memory comes from `a`.
static mor_model *new_model(const mor_allocator *a) {
    mor_model *m = mor__alloc(a, 1, sizeof *m, 1);
    if (!m) return NULL;
    m->alloc = *a;
    atomic_init(&m->refs, 1);
    return m;
}

int mor__model_open_memory(const void *data, size_t size, const mor_model_params *params, mor_model **out,
                           char *err, size_t err_size) {
    *out = NULL;
    if (!data) return mor__errf(err, err_size, MOR_E_INVALID, "data is NULL");
    if (params && params->kind != MOR_PARAMS_MODEL)
        return mor__errf(err, err_size, MOR_E_INVALID, "params is not a mor_model_params (kind %u)", params->kind);
    mor_allocator alloc;
    uint32_t flags = params_flags(params, &alloc);
    // The kernels read weights in place, F32 as 4-byte floats: a borrowed buffer at an address
    // that is not a multiple of 4 would misalign every tensor of a well-formed file. It is
    // copied instead (malloc aligns for any type), as documented at mor_model_load_memory.
    if (!(flags & MOR_MODEL_COPY) && (uintptr_t)data % 4) {
        mor__log(MOR_LOG_INFO, "model buffer %p is not 4-byte aligned: copying its %zu bytes", data, size);
        flags |= MOR_MODEL_COPY;
    }
    mor_model *m = new_model(&alloc);
    if (!m) return mor__errf(err, err_size, MOR_E_NOMEM, "out of memory");
    if (flags & MOR_MODEL_COPY) {
        m->heap = mor__alloc(&alloc, size, 1, 0);
        if (!m->heap) {
            mor__free(&alloc, m);
            return mor__errf(err, err_size, MOR_E_NOMEM, "out of memory copying %zu bytes", size);
        }
        memcpy(m->heap, data, size);
        data = m->heap;
    }
    int s = open_image(m, data, size, flags, err, err_size);
    if (s) {
        mor_model_free(m);
        return s;
    }
    *out = m;
    return MOR_OK;
}

int mor__model_open_file(const char *path, const mor_model_params *params, mor_model **out, char *err,
                         size_t err_size) {
    *out = NULL;
    if (!path) return mor__errf(err, err_size, MOR_E_INVALID, "path is NULL");
    if (params && params->kind != MOR_PARAMS_MODEL)
        return mor__errf(err, err_size, MOR_E_INVALID, "params is not a mor_model_params (kind %u)", params->kind);
    mor_allocator alloc;
    uint32_t flags = params_flags(params, &alloc);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return mor__errf(err, err_size, MOR_E_IO, "cannot open '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return mor__errf(err, err_size, MOR_E_IO, "'%s' is not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    mor_model *m = new_model(&alloc);
    if (!m) {
        close(fd);
        return mor__errf(err, err_size, MOR_E_NOMEM, "out of memory");
    }
    const void *image = NULL;
    if (size == 0) {
        close(fd);
        mor_model_free(m);
        return mor__errf(err, err_size, MOR_E_FORMAT, "'%s' is empty (0 bytes)", path);
    }
    if (!(flags & MOR_MODEL_NO_MMAP)) {
        void *p = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p != MAP_FAILED) {
            m->map = p;
            m->map_size = size;
            image = p;
        }
    }
    if (!image) {  // NO_MMAP, or mmap failed: read the whole file
        m->heap = mor__alloc(&m->alloc, size, 1, 0);
        if (!m->heap) {
            close(fd);
            mor_model_free(m);
            return mor__errf(err, err_size, MOR_E_NOMEM, "out of memory reading %zu bytes", size);
        }
        size_t got = 0;
        while (got < size) {
            ssize_t r = read(fd, (char *)m->heap + got, size - got);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) {
                close(fd);
                mor_model_free(m);
                return mor__errf(err, err_size, MOR_E_IO, "read error on '%s' at byte %zu", path, got);
            }
            got += (size_t)r;
        }
        image = m->heap;
    }
    close(fd);
    int s = open_image(m, image, size, flags, err, err_size);
    if (s) {
        mor_model_free(m);
        return s;
    }
    *out = m;
    return MOR_OK;
}

// ---- getters -------------------------------------------------------------------------------

int64_t mor_model_get_int(const mor_model *m, int32_t key) {
    if (!m) return -1;
    const mor__hparams *hp = &m->hp;
    switch (key) {
    case MOR_INFO_N_VOCAB: return hp->n_vocab;
    case MOR_INFO_N_CTX_TRAIN: return hp->n_ctx_train;
    case MOR_INFO_N_EMBD: return hp->n_embd;
    case MOR_INFO_N_FF: return hp->n_ff;
    case MOR_INFO_N_HEAD: return hp->n_head;
    case MOR_INFO_N_HEAD_KV: return hp->n_head_kv;
    case MOR_INFO_HEAD_DIM: return hp->head_dim;
    case MOR_INFO_N_LAYER: return hp->n_layer;
    case MOR_INFO_N_RECURSION: return hp->n_rec;
    case MOR_INFO_N_STORED_LAYER: return hp->n_stored;
    case MOR_INFO_BLOCK_SIZE: return hp->block;
    case MOR_INFO_SHARING: return hp->sharing;
    case MOR_INFO_ROUTER: return hp->router;
    case MOR_INFO_KV_SHARING: return hp->kv_sharing;
    case MOR_INFO_LORA_RANK: return hp->lora_rank;
    case MOR_INFO_N_EXIT_HEADS: return m->n_exits;
    case MOR_INFO_N_PARAMS: return (int64_t)m->n_params;
    case MOR_INFO_N_PARAMS_UNROLLED: return (int64_t)m->n_params_unrolled;
    case MOR_INFO_ROPE_TYPE: return hp->rope_neox;
    case MOR_INFO_WEIGHT_BYTES: return (int64_t)m->weight_bytes;
    case MOR_INFO_VOCAB_ONLY: return m->vocab_only;
    case MOR_INFO_N_STEPS: return m->n_steps;
    case MOR_INFO_N_DORA: return hp->n_dora;
    case MOR_INFO_N_REC_ENC: return hp->n_rec_enc;
    case MOR_INFO_N_ADAPT: return hp->n_adapt;
    case MOR_INFO_ADAPT_LEN: return hp->adapt_len;
    default: return -1;
    }
}

double mor_model_get_float(const mor_model *m, int32_t key) {
    if (!m) return NAN;
    switch (key) {
    case MOR_INFO_RMS_EPS: return m->hp.rms_eps;
    case MOR_INFO_ROPE_THETA: return m->hp.rope_theta;
    case MOR_INFO_LORA_SCALE: return m->hp.lora_scale;
    case MOR_INFO_ROUTER_ALPHA: return m->hp.router_alpha;
    default: return NAN;
    }
}

const char *mor_model_get_str(const mor_model *m, int32_t key) {
    if (!m) return NULL;
    switch (key) {
    case MOR_INFO_ARCH: return m->arch;
    case MOR_INFO_SHARING_NAME: return m->sharing_name;
    case MOR_INFO_ROUTER_NAME: return m->router_name;
    case MOR_INFO_NAME: return m->name;
    default: return NULL;
    }
}

int mor_model_meta_str(const mor_model *m, const char *key, char *buf, size_t cap, size_t *n_bytes) {
    if (!m || !key || (!buf && cap)) return MOR_E_INVALID;
    const mor__gguf_kv *kv = mor__gguf_find_kv(&m->gguf, key);
    if (!kv) return MOR_E_NOT_FOUND;
    char tmp[64];
    const char *src = tmp;
    size_t len;
    switch (kv->type) {
    case MOR__GGUF_STRING: {
        mor__gguf_str s;
        mor__gguf_get_str(&m->gguf, key, &s, NULL, 0);
        src = s.ptr;
        len = (size_t)s.len;
        break;
    }
    case MOR__GGUF_ARRAY:
        len = (size_t)snprintf(tmp, sizeof tmp, "[%llu items]", (unsigned long long)kv->arr_n);
        break;
    case MOR__GGUF_FLOAT32: case MOR__GGUF_FLOAT64: {
        float f = 0;
        mor__gguf_get_f32(&m->gguf, key, &f, NULL, 0);
        len = (size_t)snprintf(tmp, sizeof tmp, "%.9g", (double)f);
        break;
    }
    case MOR__GGUF_BOOL:
        len = (size_t)snprintf(tmp, sizeof tmp, "%s", kv->data[0] ? "true" : "false");
        break;
    default: {  // the integers (the parser admits no other type)
        uint64_t u = 0;
        int sg = 0;
        mor__gguf_decode_int(kv->data, kv->type, &u, &sg);
        len = sg ? (size_t)snprintf(tmp, sizeof tmp, "%lld", (long long)(int64_t)u)
                 : (size_t)snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)u);
        break;
    }
    }
    if (n_bytes) *n_bytes = len;
    if (len + 1 > cap) return MOR_E_BUFFER_SMALL;
    memcpy(buf, src, len);
    buf[len] = 0;
    return MOR_OK;
}
