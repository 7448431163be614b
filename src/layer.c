// layer.c: one transformer layer on the rows of one or several sessions (pre-norm attention
// with RoPE and grouped-query heads over each session's KV slot, then a SwiGLU MLP).
//
// Rows of different sessions share every projection whose weights are the same memory: the
// shared block of a recursive model is one weight set at every recursion, so tokens of
// different sessions at different recursion depths are one matrix product (continuous
// depth-wise batching). Per-recursion overrides and LoRA split the rows into runs of parts
// with identical weights. Attention is per row, against that row's session and slot. Each
// output element is computed the same way whatever the batch, so batching never changes a
// result.
#include "session.h"
#include "thread.h"

#include <math.h>


typedef struct {
    mor__work      *w;
    const mor__mat *W;
    const float    *x;
    int64_t         T;
    float          *y;
} mm_task;

static void mm_part(void *c, int part, int n_parts, int tid) {
    const mm_task *t = c;
    long r0, r1;
    mor__split((long)t->W->rows, part, n_parts, &r0, &r1);
    if (r0 < r1)
        t->w->kern->matmul[t->W->type](t->W->data, t->W->cols, r0, r1, t->x, t->T, t->W->cols, t->y,
                                              t->W->rows, t->w->row + (size_t)tid * t->w->row_stride);
}

// Rows split among the workspace's threads; small products run on the caller's thread alone
// (waking workers costs more than they save).
void mor__matmul(mor__work *w, const mor__mat *W, const float *x, int64_t T, float *y) {
    mm_task t = {w, W, x, T, y};
    const int quant = W->type == MOR__DT_Q8_0 || W->type == MOR__DT_Q4_0;
    if (W->rows * W->cols * T < 32768 || mor__pool_size(w->pool) == 1) mm_part(&t, 0, 1, 0);
    else mor__pool_run_parts(w->pool, mm_part, &t, quant ? 1 : 4);  // each part quantizes all of x
}

// Number of slot entries at positions <= p (entries are sorted by position).
static int32_t visible(const mor__kv_slot *sl, int32_t p) {
    int32_t lo = 0, hi = sl->len;
    while (lo < hi) {
        int32_t mid = (lo + hi) / 2;
        if (sl->pos[mid] <= p) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

// Puts the entry of position pos into a slot, keeping it sorted; an entry already at pos is
// replaced (a deep pass recomputing a stacked token's K/V).
static void slot_put(mor__kv_slot *sl, int32_t pos, const float *k, const float *v, int kvdim) {
    const int half = sl->k16 != NULL;
    size_t row = (size_t)kvdim * (half ? sizeof(uint16_t) : sizeof(float));
    char *K = half ? (char *)sl->k16 : (char *)sl->k, *Vv = half ? (char *)sl->v16 : (char *)sl->v;
    int32_t e = sl->len;
    if (e > 0 && sl->pos[e - 1] >= pos) {
        e = visible(sl, pos - 1);
        if (!(e < sl->len && sl->pos[e] == pos)) {
            memmove(K + (size_t)(e + 1) * row, K + (size_t)e * row, (size_t)(sl->len - e) * row);
            memmove(Vv + (size_t)(e + 1) * row, Vv + (size_t)e * row, (size_t)(sl->len - e) * row);
            memmove(sl->pos + e + 1, sl->pos + e, (size_t)(sl->len - e) * sizeof(int32_t));
            sl->len++;
        }
    } else {
        sl->len++;
    }
    if (half) {  // round to nearest even
        uint16_t *kd = sl->k16 + (size_t)e * kvdim, *vd = sl->v16 + (size_t)e * kvdim;
        for (int i = 0; i < kvdim; i++) kd[i] = mor__f32_to_f16(k[i]), vd[i] = mor__f32_to_f16(v[i]);
    } else {
        memcpy(sl->k + (size_t)e * kvdim, k, row);
        memcpy(sl->v + (size_t)e * kvdim, v, row);
    }
    sl->pos[e] = pos;
}

static const float *rope_c(const mor_session *s, int32_t row) {
    return s->rope_cos + (size_t)row * (size_t)(s->model->hp.head_dim / 2);
}
static const float *rope_s(const mor_session *s, int32_t row) {
    return s->rope_sin + (size_t)row * (size_t)(s->model->hp.head_dim / 2);
}

void mor__propagate_kv(mor_session *s, int32_t l, const float *h, int32_t row) {
    const mor__hparams *hp = &s->model->hp;
    const mor__layer *ly = &s->model->layers[l];
    const int kvdim = hp->n_head_kv * hp->head_dim;
    if (!s->slot_write[l]) return;
    mor__work *w = &s->w;
    w->kern->rmsnorm(w->xb, h, ly->attn_norm, hp->n_embd, hp->rms_eps);
    mor__matmul(w, &ly->w[MOR__ROLE_K], w->xb, 1, w->k);
    mor__matmul(w, &ly->w[MOR__ROLE_V], w->xb, 1, w->v);
    for (int role = MOR__ROLE_K; role <= MOR__ROLE_V; role++) {
        if (!ly->lora_a[role].data) continue;
        float *y = role == MOR__ROLE_K ? w->k : w->v;
        mor__matmul(w, &ly->lora_a[role], w->xb, 1, w->lora);
        mor__matmul(w, &ly->lora_b[role], w->lora, 1, w->tmp);
        for (int i = 0; i < kvdim; i++) y[i] += hp->lora_scale * w->tmp[i];
    }
    w->kern->rope(w->k, hp->n_head_kv, hp->head_dim, rope_c(s, row), rope_s(s, row), hp->rope_neox);
    slot_put(&s->slots[l], s->tpos[row], w->k, w->v, kvdim);
}

// ---- projections over runs of parts with the same weights ---------------------------------

typedef struct {
    const mor__part *parts;
    int              n_parts;
    int32_t          off[65];  // row offset of each part (and the total)
} batch;

static const mor__layer *layer_of(const batch *b, int i) {
    return &b->parts[i].s->model->layers[b->parts[i].l];
}

static int same_weights(const mor__layer *a, const mor__layer *b, int role) {
    return a->w[role].data == b->w[role].data && a->lora_a[role].data == b->lora_a[role].data &&
           a->lora_b[role].data == b->lora_b[role].data;
}

// y (rows of every selected part, concatenated) = projection `role` of x. `only_writers`
// skips parts whose layer writes no K/V (KV sharing). Rows of skipped parts are left alone.
static void proj(mor__work *w, const batch *b, int role, const float *x, int64_t in, float *y, int64_t out,
                 int only_writers) {
    const mor_model *m = b->parts[0].s->model;
    for (int i = 0; i < b->n_parts;) {
        if (only_writers && !b->parts[i].s->slot_write[b->parts[i].l]) {
            i++;
            continue;
        }
        int j = i + 1;
        while (j < b->n_parts && same_weights(layer_of(b, i), layer_of(b, j), role) &&
               !(only_writers && !b->parts[j].s->slot_write[b->parts[j].l]))
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
        i = j;
    }
}

// ---- attention -----------------------------------------------------------------------------

typedef struct {
    mor__work   *w;
    const batch *b;
    int32_t      total;
} att_task;

// (row, head) pairs split among threads: each row sees its slot's entries at positions up to
// its own.
static void att_part(void *c, int part, int n_parts, int tid) {
    const att_task *t = c;
    const mor__hparams *hp = &t->b->parts[0].s->model->hp;
    const int hd = hp->head_dim, nh = hp->n_head, nkv = hp->n_head_kv;
    const int qdim = nh * hd, kvdim = nkv * hd, rep = nh / nkv;
    const float scale = 1.0f / sqrtf((float)hd);
    const mor__kernels *kern = t->w->kern;
    float *att = t->w->att + (size_t)tid * t->w->att_stride;
    long lo, hi;
    mor__split((long)t->total * nh, part, n_parts, &lo, &hi);
    int pi = 0;
    for (long w = lo; w < hi; w++) {
        int32_t row = (int32_t)(w / nh);
        int h = (int)(w % nh), kh = h / rep;
        while (row >= t->b->off[pi + 1]) pi++;
        const mor__part *p = &t->b->parts[pi];
        const mor_session *s = p->s;
        const mor__kv_slot *sl = &s->slots[s->slot_of[p->l]];
        int32_t nv = visible(sl, s->tpos[p->idx[row - t->b->off[pi]]]);
        const float *qh = t->w->q + (size_t)row * qdim + (size_t)h * hd;
        float *o = t->w->ao + (size_t)row * qdim + (size_t)h * hd;
        if (sl->k16) {
            kern->attend_f16(qh, sl->k16 + (size_t)kh * hd, sl->v16 + (size_t)kh * hd, nv, hd, kvdim, scale, att, o);
            continue;
        }
        kern->attend(qh, sl->k + (size_t)kh * hd, sl->v + (size_t)kh * hd, nv, hd, kvdim, scale, att, o);
    }
}

// ---- the layer -----------------------------------------------------------------------------

// g = SiLU(g) * u over n elements, split among threads: the kernel is elementwise, so each
// element comes out the same whatever the split.
typedef struct {
    const mor__kernels *kern;
    float              *g;
    const float        *u;
    long                n;
} swiglu_task;

static void swiglu_part(void *c, int part, int n_parts, int tid) {
    const swiglu_task *t = c;
    (void)tid;
    long lo, hi;
    mor__split(t->n, part, n_parts, &lo, &hi);
    if (lo < hi) t->kern->swiglu(t->g + lo, t->u + lo, hi - lo);
}

static void run_batch(mor__work *w, const mor_model *m, const batch *b) {
    const mor__hparams *hp = &m->hp;
    const int d = hp->n_embd, hd = hp->head_dim, nh = hp->n_head, nkv = hp->n_head_kv;
    const int qdim = nh * hd, kvdim = nkv * hd, ff = hp->n_ff;
    const int32_t N = b->off[b->n_parts];

    for (int i = 0; i < b->n_parts; i++) {
        const mor__part *p = &b->parts[i];
        p->s->st_evals += p->n;
        for (int32_t r = 0; r < p->n; r++)
            w->kern->rmsnorm(w->xb + (size_t)(b->off[i] + r) * d, p->xr + (size_t)r * d, layer_of(b, i)->attn_norm, d,
                         hp->rms_eps);
    }
    proj(w, b, MOR__ROLE_Q, w->xb, d, w->q, qdim, 0);
    proj(w, b, MOR__ROLE_K, w->xb, d, w->k, kvdim, 1);
    proj(w, b, MOR__ROLE_V, w->xb, d, w->v, kvdim, 1);
    long work = 0;
    for (int i = 0; i < b->n_parts; i++) {
        const mor__part *p = &b->parts[i];
        mor_session *s = p->s;
        for (int32_t r = 0; r < p->n; r++) {
            int32_t row = b->off[i] + r, pr = p->idx[r];
            w->kern->rope(w->q + (size_t)row * qdim, nh, hd, rope_c(s, pr), rope_s(s, pr), hp->rope_neox);
            if (!s->slot_write[p->l]) continue;
            float *kr = w->k + (size_t)row * kvdim;
            w->kern->rope(kr, nkv, hd, rope_c(s, pr), rope_s(s, pr), hp->rope_neox);
            slot_put(&s->slots[p->l], s->tpos[pr], kr, w->v + (size_t)row * kvdim, kvdim);
        }
        work += (long)p->n * s->slots[s->slot_of[p->l]].len;
    }
    att_task at = {w, b, N};
    if (work * nh < 4096 || mor__pool_size(w->pool) == 1) att_part(&at, 0, 1, 0);
    else mor__pool_run(w->pool, att_part, &at);
    proj(w, b, MOR__ROLE_O, w->ao, qdim, w->hb2, d, 0);
    for (int i = 0; i < b->n_parts; i++) {
        const mor__part *p = &b->parts[i];
        const float *o = w->hb2 + (size_t)b->off[i] * d;
        for (int64_t e = 0; e < (int64_t)p->n * d; e++) p->xr[e] += o[e];
        for (int32_t r = 0; r < p->n; r++)
            w->kern->rmsnorm(w->xb + (size_t)(b->off[i] + r) * d, p->xr + (size_t)r * d, layer_of(b, i)->ffn_norm, d,
                         hp->rms_eps);
    }
    proj(w, b, MOR__ROLE_GATE, w->xb, d, w->hb, ff, 0);
    proj(w, b, MOR__ROLE_UP, w->xb, d, w->hb2, ff, 0);
    swiglu_task sg = {w->kern, w->hb, w->hb2, (long)N * ff};
    if (sg.n < 16384 || mor__pool_size(w->pool) == 1) swiglu_part(&sg, 0, 1, 0);
    else mor__pool_run(w->pool, swiglu_part, &sg);
    proj(w, b, MOR__ROLE_DOWN, w->hb, ff, w->hb2, d, 0);
    for (int i = 0; i < b->n_parts; i++) {
        const mor__part *p = &b->parts[i];
        const float *o = w->hb2 + (size_t)b->off[i] * d;
        for (int64_t e = 0; e < (int64_t)p->n * d; e++) p->xr[e] += o[e];
    }
}

void mor__run_layers(mor__work *w, const mor_model *m, const mor__part *parts, int n_parts) {
    for (int i0 = 0; i0 < n_parts; i0 += 64) {  // at most 64 parts per batch (offset table)
        batch b;
        b.parts = parts + i0;
        b.n_parts = MOR__MIN(64, n_parts - i0);
        b.off[0] = 0;
        for (int i = 0; i < b.n_parts; i++) b.off[i + 1] = b.off[i] + b.parts[i].n;
        if (b.off[b.n_parts] > 0) run_batch(w, m, &b);
    }
}
