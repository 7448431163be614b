// layer.c: one transformer layer on the rows of one or several sessions (pre-norm attention
// with RoPE and grouped-query heads over each session's KV slot, then a gated MLP).
//
// What differs between architectures is data of the model (arch.h): Q/K/V biases, the layer's
// sliding window, attention soft-cap and query scale, the MLP activation (SiLU or tanh GELU),
// and norms of the attention and MLP outputs. So are the relaxations of a recursive model
// (docs/DESIGN.md): LoRA and DoRA in the projections, an adaption prompt in the attention, a
// recursion encoding on the output. Absent, each costs nothing.
//
// Rows of different sessions share every projection whose weights are the same memory: the
// shared block of a recursive model is one weight set at every recursion, so tokens of
// different sessions at different recursion depths are one matrix product (continuous
// depth-wise batching). Per-recursion overrides and LoRA split the rows into runs of parts
// with identical weights. Attention is per row, against that row's session and slot. Each
// output element is computed the same way whatever the batch, so batching never changes a
// result.
#include "layer.h"

#include <math.h>


static const float *rope_c(const mor__layer_rows *p, int32_t row, int half) { return p->rope_cos + (size_t)row * half; }
static const float *rope_s(const mor__layer_rows *p, int32_t row, int half) { return p->rope_sin + (size_t)row * half; }

// ---- projections over runs of parts with the same weights ---------------------------------

typedef struct {
    const mor_model       *m;
    const mor__layer_rows *parts;
    int                    n_parts;
    int32_t                off[65];  // row offset of each part (and the total)
} batch;

static const mor__layer *layer_of(const batch *b, int i) { return &b->m->layers[b->parts[i].l]; }

static int same_weights(const mor__layer *a, const mor__layer *b, int role) {
    return a->w[role].data == b->w[role].data && a->lora_a[role].data == b->lora_a[role].data &&
           a->lora_b[role].data == b->lora_b[role].data && a->dora[role] == b->dora[role];
}

// y (rows of every selected part, concatenated) = projection `role` of x. `only_writers`
// skips parts whose layer writes no K/V (KV sharing). Rows of skipped parts are left alone.
static void proj(mor__work *w, const batch *b, int role, const float *x, int64_t in, float *y, int64_t out,
                 int only_writers) {
    const mor_model *m = b->m;
    for (int i = 0; i < b->n_parts;) {
        if (only_writers && !b->parts[i].kv->slot_write[b->parts[i].l]) {
            i++;
            continue;
        }
        int j = i + 1;
        while (j < b->n_parts && same_weights(layer_of(b, i), layer_of(b, j), role) &&
               !(only_writers && !b->parts[j].kv->slot_write[b->parts[j].l]))
            j++;
        const mor__layer *ly = layer_of(b, i);
        int32_t r0 = b->off[i], n = b->off[j] - r0;
        mor__matmul(w, &ly->w[role], x + (size_t)r0 * in, n, y + (size_t)r0 * out);
        if (ly->lora_a[role].data) {  // y += scale * B (A x), never materialized
            mor__matmul(w, &ly->lora_a[role], x + (size_t)r0 * in, n, w->lora);
            mor__matmul(w, &ly->lora_b[role], w->lora, n, w->tmp);
            float sc = m->hp.lora_scale, *yy = y + (size_t)r0 * out;
            for (int64_t e = 0; e < (int64_t)n * out; e++) yy[e] += sc * w->tmp[e];
        }
        if (ly->dora[role]) {  // DoRA: each output row times m / |W + scale B A|_row (computed at load)
            const float *ds = ly->dora[role];
            float *yy = y + (size_t)r0 * out;
            for (int32_t t = 0; t < n; t++)
                for (int64_t o = 0; o < out; o++) yy[(size_t)t * out + o] *= ds[o];
        }
        i = j;
    }
}

// ---- attention -----------------------------------------------------------------------------

// One head with soft-capped scores (score = cap * tanh(scale * q.k / cap)) over n entries of an
// F32 or F16 cache: the attend kernel's steps with the cap between the product and the softmax.
static void attend_capped(const float *q, const float *k, const uint16_t *k16, const float *v, const uint16_t *v16,
                          int64_t n, int64_t hd, int64_t stride, float scale, float cap, float *att, float *out) {
    float mx = -INFINITY, sum = 0;
    const float inv_cap = 1.0f / cap;
    for (int64_t e = 0; e < n; e++) {
        float acc = 0;
        if (k16)
            for (int64_t i = 0; i < hd; i++) acc += q[i] * mor__f16_to_f32(k16[e * stride + i]);
        else
            for (int64_t i = 0; i < hd; i++) acc += q[i] * k[e * stride + i];
        att[e] = cap * tanhf(acc * scale * inv_cap);
        if (att[e] > mx) mx = att[e];
    }
    for (int64_t e = 0; e < n; e++) sum += (att[e] = expf(att[e] - mx));
    const float inv = 1.0f / sum;
    memset(out, 0, (size_t)hd * sizeof(float));
    for (int64_t e = 0; e < n; e++) {
        const float a = att[e] * inv;
        if (v16)
            for (int64_t i = 0; i < hd; i++) out[i] += a * mor__f16_to_f32(v16[e * stride + i]);
        else
            for (int64_t i = 0; i < hd; i++) out[i] += a * v[e * stride + i];
    }
}

typedef struct {
    mor__work   *w;
    const batch *b;
    int32_t      total;
} att_task;

// (row, head) pairs split among threads: each row sees its slot's entries at positions up to
// its own (and, in a layer with a sliding window W, above its own minus W).
static void att_part(void *c, int part, int n_parts, int tid) {
    const att_task *t = c;
    const mor__hparams *hp = &t->b->m->hp;
    const int hd = hp->head_dim, nh = hp->n_head, nkv = hp->n_head_kv;
    const int qdim = nh * hd, kvdim = nkv * hd, rep = nh / nkv;
    const float scale = hp->attn_scale, cap = hp->attn_softcap;
    const mor__kernels *kern = t->w->kern;
    float *att = t->w->att + (size_t)tid * t->w->att_stride;
    long lo, hi;
    mor__split((long)t->total * nh, part, n_parts, &lo, &hi);
    int pi = 0;
    for (long w = lo; w < hi; w++) {
        int32_t row = (int32_t)(w / nh);
        int h = (int)(w % nh), kh = h / rep;
        while (row >= t->b->off[pi + 1]) pi++;
        const mor__layer_rows *p = &t->b->parts[pi];
        const mor__kv_slot *sl = &p->kv->slots[p->kv->slot_of[p->l]];
        const int32_t pos = p->tpos[p->idx[row - t->b->off[pi]]], win = t->b->m->layers[p->l].window;
        int32_t nv = mor__kv_visible(sl, pos);
        const int32_t e0 = win > 0 && pos >= win ? mor__kv_visible(sl, pos - win) : 0;  // entries before the window
        const size_t off = (size_t)e0 * kvdim + (size_t)kh * hd;
        nv -= e0;
        const float *qh = t->w->q + (size_t)row * qdim + (size_t)h * hd;
        float *o = t->w->ao + (size_t)row * qdim + (size_t)h * hd;
        if (cap > 0)
            attend_capped(qh, sl->k ? sl->k + off : NULL, sl->k16 ? sl->k16 + off : NULL, sl->v ? sl->v + off : NULL,
                          sl->v16 ? sl->v16 + off : NULL, nv, hd, kvdim, scale, cap, att, o);
        else if (sl->k16)
            kern->attend_f16(qh, sl->k16 + off, sl->v16 + off, nv, hd, kvdim, scale, att, o);
        else
            kern->attend(qh, sl->k + off, sl->v + off, nv, hd, kvdim, scale, att, o);
        const mor__layer *ly = &t->b->m->layers[p->l];
        if (ly->adapt_len) {  // adaption prompt: o += g * softmax(q . K_a / sqrt(d_h)) V_a, its own softmax
            float *oa = att + ly->adapt_len;  // the scratch holds adapt_len scores and a head (work.c)
            const size_t ko = (size_t)kh * hd;
            kern->attend(qh, ly->adapt_k + ko, ly->adapt_v + ko, ly->adapt_len, hd, kvdim, 1.0f / sqrtf((float)hd),
                         att, oa);
            for (int i = 0; i < hd; i++) o[i] += ly->adapt_gate * oa[i];
        }
    }
}

// ---- the layer -----------------------------------------------------------------------------

// g = act(g) * u over n elements, split among threads: SiLU through the kernel, or the tanh
// approximation of GELU. Elementwise, so each element comes out the same whatever the split.
typedef struct {
    const mor__kernels *kern;
    float              *g;
    const float        *u;
    long                n;
    int                 act;
} swiglu_task;

static void geglu(float *g, const float *u, long n) {
    const float c = 0.7978845608028654f;  // sqrt(2 / pi)
    for (long i = 0; i < n; i++) {
        const float x = g[i];
        g[i] = 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x))) * u[i];
    }
}

static void swiglu_part(void *c, int part, int n_parts, int tid) {
    const swiglu_task *t = c;
    (void)tid;
    long lo, hi;
    mor__split(t->n, part, n_parts, &lo, &hi);
    if (lo >= hi) return;
    if (t->act == MOR__ACT_GELU_TANH) geglu(t->g + lo, t->u + lo, hi - lo);
    else t->kern->swiglu(t->g + lo, t->u + lo, hi - lo);
}

// y[r] += bias over the n rows of width `width` of each selected part whose layer has a bias
// for projection `which` (0 Q, 1 K, 2 V); only_writers as for proj().
static void add_bias(const batch *b, int which, float *y, int64_t width, int only_writers) {
    for (int i = 0; i < b->n_parts; i++) {
        const float *bias = layer_of(b, i)->bias[which];
        if (!bias || (only_writers && !b->parts[i].kv->slot_write[b->parts[i].l])) continue;
        for (int32_t r = b->off[i]; r < b->off[i + 1]; r++) {
            float *yr = y + (size_t)r * width;
            for (int64_t e = 0; e < width; e++) yr[e] += bias[e];
        }
    }
}

// Rows of each part normalized in place by its layer's post-norm (attention output: post 0,
// MLP output: post 1), when the layer has one.
static void post_norm(mor__work *w, const batch *b, int which, float *y, int64_t d) {
    const float eps = b->m->hp.rms_eps;
    for (int i = 0; i < b->n_parts; i++) {
        const mor__layer *ly = layer_of(b, i);
        const float *nw = which ? ly->ffn_post_norm : ly->attn_post_norm;
        if (!nw) continue;
        for (int32_t r = b->off[i]; r < b->off[i + 1]; r++) w->kern->rmsnorm(y + (size_t)r * d, y + (size_t)r * d, nw, d, eps);
    }
}

static void run_batch(mor__work *w, const mor_model *m, const batch *b) {
    const mor__hparams *hp = &m->hp;
    const int d = hp->n_embd, hd = hp->head_dim, nh = hp->n_head, nkv = hp->n_head_kv;
    const int qdim = nh * hd, kvdim = nkv * hd, ff = hp->n_ff;
    const int32_t N = b->off[b->n_parts];

    for (int i = 0; i < b->n_parts; i++) {
        const mor__layer_rows *p = &b->parts[i];
        *p->evals += p->n;
        for (int32_t r = 0; r < p->n; r++)
            w->kern->rmsnorm(w->xb + (size_t)(b->off[i] + r) * d, p->xr + (size_t)r * d, layer_of(b, i)->attn_norm, d,
                         hp->rms_eps);
    }
    proj(w, b, MOR__ROLE_Q, w->xb, d, w->q, qdim, 0);
    proj(w, b, MOR__ROLE_K, w->xb, d, w->k, kvdim, 1);
    proj(w, b, MOR__ROLE_V, w->xb, d, w->v, kvdim, 1);
    add_bias(b, 0, w->q, qdim, 0);
    add_bias(b, 1, w->k, kvdim, 1);
    add_bias(b, 2, w->v, kvdim, 1);
    long work = 0;
    for (int i = 0; i < b->n_parts; i++) {
        const mor__layer_rows *p = &b->parts[i];
        for (int32_t r = 0; r < p->n; r++) {
            int32_t row = b->off[i] + r, pr = p->idx[r];
            w->kern->rope(w->q + (size_t)row * qdim, nh, hd, rope_c(p, pr, hd / 2), rope_s(p, pr, hd / 2), hp->rope_neox);
            if (!p->kv->slot_write[p->l]) continue;
            float *kr = w->k + (size_t)row * kvdim;
            w->kern->rope(kr, nkv, hd, rope_c(p, pr, hd / 2), rope_s(p, pr, hd / 2), hp->rope_neox);
            mor__kv_put(&p->kv->slots[p->l], p->tpos[pr], kr, w->v + (size_t)row * kvdim, kvdim);
        }
        work += (long)p->n * (p->kv->slots[p->kv->slot_of[p->l]].len + layer_of(b, i)->adapt_len);
    }
    att_task at = {w, b, N};
    if (work * nh < 4096 || mor__pool_size(w->pool) == 1) att_part(&at, 0, 1, 0);
    else mor__pool_run(w->pool, att_part, &at);
    proj(w, b, MOR__ROLE_O, w->ao, qdim, w->hb2, d, 0);
    post_norm(w, b, 0, w->hb2, d);
    for (int i = 0; i < b->n_parts; i++) {
        const mor__layer_rows *p = &b->parts[i];
        const float *o = w->hb2 + (size_t)b->off[i] * d;
        for (int64_t e = 0; e < (int64_t)p->n * d; e++) p->xr[e] += o[e];
        for (int32_t r = 0; r < p->n; r++)
            w->kern->rmsnorm(w->xb + (size_t)(b->off[i] + r) * d, p->xr + (size_t)r * d, layer_of(b, i)->ffn_norm, d,
                         hp->rms_eps);
    }
    proj(w, b, MOR__ROLE_GATE, w->xb, d, w->hb, ff, 0);
    proj(w, b, MOR__ROLE_UP, w->xb, d, w->hb2, ff, 0);
    swiglu_task sg = {w->kern, w->hb, w->hb2, (long)N * ff, hp->act};
    if (sg.n < 16384 || mor__pool_size(w->pool) == 1) swiglu_part(&sg, 0, 1, 0);
    else mor__pool_run(w->pool, swiglu_part, &sg);
    proj(w, b, MOR__ROLE_DOWN, w->hb, ff, w->hb2, d, 0);
    post_norm(w, b, 1, w->hb2, d);
    for (int i = 0; i < b->n_parts; i++) {
        const mor__layer_rows *p = &b->parts[i];
        const float *o = w->hb2 + (size_t)b->off[i] * d, *enc = layer_of(b, i)->rec_enc;
        for (int64_t e = 0; e < (int64_t)p->n * d; e++) p->xr[e] += o[e];
        if (enc)  // recursion encoding: the layer's whole output stream times e
            for (int32_t r = 0; r < p->n; r++)
                for (int j = 0; j < d; j++) p->xr[(size_t)r * d + j] *= enc[j];
    }
}

void mor__run_layers(mor__work *w, const mor_model *m, const mor__layer_rows *parts, int n_parts) {
    for (int i0 = 0; i0 < n_parts; i0 += 64) {  // at most 64 parts per batch (offset table)
        batch b;
        b.m = m;
        b.parts = parts + i0;
        b.n_parts = MOR__MIN(64, n_parts - i0);
        b.off[0] = 0;
        for (int i = 0; i < b.n_parts; i++) b.off[i + 1] = b.off[i] + b.parts[i].n;
        if (b.off[b.n_parts] > 0) run_batch(w, m, &b);
    }
}
