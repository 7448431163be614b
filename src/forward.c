// forward.c: the recursive forward pass: embedding, the unrolled layers (shared weights
// referenced, not copied), recursion blocks with their routers and exit policy, final norm
// and output projection.
//
// Recursion semantics (SEED.md §2-5, docs/FORMAT.md §3.4, docs/POLICIES.md):
// - Unrolled layer l runs the weights of stored layer s(l) with the overrides and LoRA of
//   (s(l), r(l)). Layers outside the recursion blocks (vanilla layers, the unique first and
//   last layers of the middle strategies) run on every token.
// - At the start of each recursion block r the policy decides which tokens run it. Only those
//   tokens are gathered (compacted, positions kept) and run through the block; only they
//   append K/V to the block's slots and attend to them (recursion-wise KV caching).
// - Expert-choice: H <- H + g * F_r(H) for a selected token (g = alpha * f(z)); a token not
//   selected keeps H and is not selected again (hierarchical).
// - Token-choice: the router reads H^1 once, picks a depth i and a gate g; the block runs
//   i+1 times on x (x^0 = H^1) with no gating in between, then H = H^1 + g * x.
// Sequence sharing has no block loop: each middle layer is its own step, active for tokens
// whose depth exceeds its recursion index.
#include "session.h"
#include "thread.h"

#include <math.h>

// ---- small helpers -------------------------------------------------------------------------

static int kt_of(uint32_t t) {
    return t == MOR__DT_F16 ? MOR__KT_F16 : t == MOR__DT_BF16 ? MOR__KT_BF16 : MOR__KT_F32;
}

typedef struct {
    mor_session    *s;
    const mor__mat *W;
    const float    *x;
    int64_t         T;
    float          *y;
} mm_task;

static void mm_part(void *c, int ith, int nth) {
    const mm_task *t = c;
    long r0, r1;
    mor__split((long)t->W->rows, ith, nth, &r0, &r1);
    if (r0 < r1)
        t->s->kern->matmul[kt_of(t->W->type)](t->W->data, t->W->cols, r0, r1, t->x, t->T, t->W->cols, t->y,
                                              t->W->rows, t->s->row + (size_t)ith * t->s->row_stride);
}

// y[T][rows] = x[T][cols] * W^T, rows split among the session's threads (small products run on
// the caller's thread alone: waking workers costs more than they save).
static void mm(mor_session *s, const mor__mat *W, const float *x, int64_t T, float *y) {
    mm_task t = {s, W, x, T, y};
    if (W->rows * W->cols * T < 32768 || mor__pool_size(s->pool) == 1) mm_part(&t, 0, 1);
    else mor__pool_run(s->pool, mm_part, &t);
}

static void rmsnorm(float *o, const float *x, const float *w, int n, float eps) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++) o[i] = w[i] * (x[i] * scale);
}

// A projection of one layer with its LoRA: y = W x + scale * B (A x).
static void proj(mor_session *s, const mor__layer *ly, int role, const float *x, int64_t n, float *y) {
    mm(s, &ly->w[role], x, n, y);
    const mor__mat *a = &ly->lora_a[role], *b = &ly->lora_b[role];
    if (!a->data) return;
    float sc = s->model->hp.lora_scale;
    mm(s, a, x, n, s->lora);                  // (n, rank)
    mm(s, b, s->lora, n, s->tmp);             // (n, out): tmp is free during projections
    int64_t out = ly->w[role].rows;
    for (int64_t i = 0; i < n * out; i++) y[i] += sc * s->tmp[i];
}

static void rope(float *v, int n_heads, int hd, const float *c, const float *sn, int neox) {
    int half = hd / 2;
    for (int h = 0; h < n_heads; h++, v += hd) {
        if (neox) {
            for (int i = 0; i < half; i++) {
                float x0 = v[i], x1 = v[i + half];
                v[i] = x0 * c[i] - x1 * sn[i];
                v[i + half] = x1 * c[i] + x0 * sn[i];
            }
        } else {
            for (int i = 0; i < half; i++) {
                float x0 = v[2 * i], x1 = v[2 * i + 1];
                v[2 * i] = x0 * c[i] - x1 * sn[i];
                v[2 * i + 1] = x0 * sn[i] + x1 * c[i];
            }
        }
    }
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

// ---- attention -----------------------------------------------------------------------------

typedef struct {
    mor_session        *s;
    const mor__kv_slot *sl;
    const int32_t      *idx;
    int32_t             n;
    int32_t             pos0;
} att_task;

// Attention for (row, head) pairs split among threads: each row sees the slot entries at
// positions up to its own.
static void att_part(void *c, int ith, int nth) {
    const att_task *t = c;
    mor_session *s = t->s;
    const mor__hparams *hp = &s->model->hp;
    const int hd = hp->head_dim, nh = hp->n_head, nkv = hp->n_head_kv;
    const int qdim = nh * hd, kvdim = nkv * hd, rep = nh / nkv;
    const float scale = 1.0f / sqrtf((float)hd);
    const mor__kv_slot *sl = t->sl;
    float *att = s->att + (size_t)ith * (size_t)s->n_ctx;
    long lo, hi;
    mor__split((long)t->n * nh, ith, nth, &lo, &hi);
    for (long w = lo; w < hi; w++) {
        int32_t i = (int32_t)(w / nh);
        int h = (int)(w % nh), kh = h / rep;
        int32_t nv = visible(sl, t->pos0 + t->idx[i]);
        const float *qh = s->q + (size_t)i * qdim + (size_t)h * hd;
        float mx = -INFINITY;
        for (int32_t e = 0; e < nv; e++) {
            att[e] = s->kern->dot(qh, sl->k + (size_t)e * kvdim + (size_t)kh * hd, hd) * scale;
            if (att[e] > mx) mx = att[e];
        }
        float sum = 0;
        for (int32_t e = 0; e < nv; e++) {
            att[e] = expf(att[e] - mx);
            sum += att[e];
        }
        float *o = s->ao + (size_t)i * qdim + (size_t)h * hd, inv = 1.0f / sum;
        memset(o, 0, (size_t)hd * sizeof(float));
        for (int32_t e = 0; e < nv; e++) s->kern->axpy(o, att[e] * inv, sl->v + (size_t)e * kvdim + (size_t)kh * hd, hd);
    }
}

// ---- one layer on n compacted rows ---------------------------------------------------------

// xr: (n, d) rows of the residual stream, updated in place; idx[i]: index of row i in the
// step (for its position and RoPE table).
static void run_layer(mor_session *s, int32_t l, float *xr, const int32_t *idx, int32_t n) {
    const mor__hparams *hp = &s->model->hp;
    const mor__layer *ly = &s->model->layers[l];
    const int d = hp->n_embd, hd = hp->head_dim, nh = hp->n_head, nkv = hp->n_head_kv;
    const int qdim = nh * hd, kvdim = nkv * hd, half = hd / 2, ff = hp->n_ff;
    const int32_t pos0 = s->n_past;

    for (int32_t i = 0; i < n; i++) rmsnorm(s->xb + (size_t)i * d, xr + (size_t)i * d, ly->attn_norm, d, hp->rms_eps);
    proj(s, ly, MOR__ROLE_Q, s->xb, n, s->q);
    for (int32_t i = 0; i < n; i++)
        rope(s->q + (size_t)i * qdim, nh, hd, s->rope_cos + (size_t)idx[i] * half,
             s->rope_sin + (size_t)idx[i] * half, hp->rope_neox);
    mor__kv_slot *sl = &s->slots[ly->kv_slot];
    if (ly->kv_write) {
        proj(s, ly, MOR__ROLE_K, s->xb, n, s->k);
        proj(s, ly, MOR__ROLE_V, s->xb, n, s->v);
        for (int32_t i = 0; i < n; i++) {
            float *kr = s->k + (size_t)i * kvdim;
            rope(kr, nkv, hd, s->rope_cos + (size_t)idx[i] * half, s->rope_sin + (size_t)idx[i] * half,
                 hp->rope_neox);
            memcpy(sl->k + (size_t)sl->len * kvdim, kr, (size_t)kvdim * sizeof(float));
            memcpy(sl->v + (size_t)sl->len * kvdim, s->v + (size_t)i * kvdim, (size_t)kvdim * sizeof(float));
            sl->pos[sl->len++] = pos0 + idx[i];
        }
    }
    att_task at = {s, sl, idx, n, pos0};
    if ((long)n * nh * sl->len < 4096 || mor__pool_size(s->pool) == 1) att_part(&at, 0, 1);
    else mor__pool_run(s->pool, att_part, &at);
    proj(s, ly, MOR__ROLE_O, s->ao, n, s->hb2);  // hb2 is free until the MLP
    for (int64_t i = 0; i < (int64_t)n * d; i++) xr[i] += s->hb2[i];

    for (int32_t i = 0; i < n; i++) rmsnorm(s->xb + (size_t)i * d, xr + (size_t)i * d, ly->ffn_norm, d, hp->rms_eps);
    proj(s, ly, MOR__ROLE_GATE, s->xb, n, s->hb);
    proj(s, ly, MOR__ROLE_UP, s->xb, n, s->hb2);
    for (int64_t i = 0; i < (int64_t)n * ff; i++) {
        float g = s->hb[i];
        s->hb[i] = g / (1.0f + expf(-g)) * s->hb2[i];
    }
    proj(s, ly, MOR__ROLE_DOWN, s->hb, n, s->hb2);
    for (int64_t i = 0; i < (int64_t)n * d; i++) xr[i] += s->hb2[i];
}

// ---- routers -------------------------------------------------------------------------------

// Router logits for n rows (already divided by temp) of width d: out (n, n_out).
static void router_logits(mor_session *s, const mor__router_w *rw, const float *x, int32_t n, float *out) {
    const mor__hparams *hp = &s->model->hp;
    if (!rw->w2.data) {
        mm(s, &rw->w1, x, n, out);
        return;
    }
    float *h = s->hb;  // (n, 2d): hb has n_batch * n_ff floats; checked at session create
    mm(s, &rw->w1, x, n, h);
    for (int64_t i = 0; i < (int64_t)n * 2 * hp->n_embd; i++)
        h[i] = 0.5f * h[i] * (1.0f + erff(h[i] * 0.70710678118654752f));  // exact GELU
    mm(s, &rw->w2, h, n, out);
}

static float sigmoidf(float z) { return 1.0f / (1.0f + expf(-z)); }

// Gathers rows act[0..n) of x, divided by temp, into s->xa.
static void gather_scaled(mor_session *s, const float *x, int32_t n, float inv_temp) {
    const int d = s->model->hp.n_embd;
    for (int32_t i = 0; i < n; i++)
        for (int j = 0; j < d; j++) s->xa[(size_t)i * d + j] = x[(size_t)s->act[i] * d + j] * inv_temp;
}

// Decides which tokens run recursion r; fills s->act (n_act returned) and the gates.
static int32_t decide(mor_session *s, int32_t r, int32_t T) {
    const mor_model *m = s->model;
    const mor__hparams *hp = &m->hp;
    const mor__policy *p = &s->policy;
    const int d = hp->n_embd;
    int32_t n = 0;
    if (hp->router == MOR_ROUTER_NONE) {
        int32_t limit = p->policy == MOR_EXIT_FIXED ? p->depth : hp->n_rec;
        if (r < limit)
            for (int32_t t = 0; t < T; t++) s->act[n++] = t;
        return n;
    }
    if (hp->router == MOR_ROUTER_TOKEN) {
        if (r == 0) {  // choose each token's depth once, from H^1
            for (int32_t t = 0; t < T; t++) s->act[t] = t;
            gather_scaled(s, s->x, T, 1.0f / hp->router_temp);
            float *z = s->router_h;  // (T, n_rec)
            router_logits(s, &m->routers[0], s->xa, T, z);
            for (int32_t t = 0; t < T; t++) {
                float *zt = z + (size_t)t * hp->n_rec, pr[64];
                if (hp->router_func == 3) {  // softmax
                    float mx = zt[0], sum = 0;
                    for (int j = 1; j < hp->n_rec; j++) mx = zt[j] > mx ? zt[j] : mx;
                    for (int j = 0; j < hp->n_rec; j++) sum += (pr[j] = expf(zt[j] - mx));
                    for (int j = 0; j < hp->n_rec; j++) pr[j] = hp->router_alpha * pr[j] / sum;
                } else {
                    for (int j = 0; j < hp->n_rec; j++) pr[j] = hp->router_alpha * sigmoidf(zt[j]);
                }
                int32_t c = 0;
                if (p->policy == MOR_EXIT_FULL) {
                    c = hp->n_rec - 1;
                } else if (p->policy == MOR_EXIT_FIXED) {
                    c = p->depth - 1;
                } else {
                    float best = -INFINITY;
                    for (int j = 0; j < hp->n_rec; j++) {
                        float sc = pr[j] + (m->router_bias ? m->router_bias[j] : 0.0f);
                        if (sc > best) best = sc, c = j;
                    }
                    if (c < p->min_depth - 1) c = p->min_depth - 1;
                }
                s->tok_choice[t] = c;
                s->gate[t] = pr[c];
                memcpy(s->h_in + (size_t)t * d, s->x + (size_t)t * d, (size_t)d * sizeof(float));
            }
        }
        for (int32_t t = 0; t < T; t++)
            if (r <= s->tok_choice[t]) s->act[n++] = t;
        return n;
    }
    // Expert-choice: candidates are the tokens still alive (selected at every earlier step).
    int32_t nc = 0;
    for (int32_t t = 0; t < T; t++)
        if (s->alive[t]) s->act[nc++] = t;
    if (!nc) return 0;
    gather_scaled(s, s->x, nc, 1.0f / hp->router_temp);
    float *z = s->router_h, *za = s->router_h + s->n_batch;
    router_logits(s, &m->routers[r], s->xa, nc, z);
    if (m->routers_aux) router_logits(s, &m->routers_aux[r], s->xa, nc, za);
    for (int32_t i = 0; i < nc; i++) {
        int32_t t = s->act[i];
        float zi = z[i];
        float g = hp->router_func == 1 ? hp->router_alpha * sigmoidf(zi)
                : hp->router_func == 2 ? hp->router_alpha * tanhf(zi) : zi;
        int on;
        if (p->policy == MOR_EXIT_FULL) on = 1;
        else if (p->policy == MOR_EXIT_FIXED) on = r < p->depth;
        else on = r < p->min_depth || sigmoidf(m->routers_aux ? za[i] : zi) >= p->threshold;
        s->alive[t] = (uint8_t)on;
        s->gate[t] = g;
        if (on) {
            s->act[n++] = t;
            memcpy(s->h_in + (size_t)t * d, s->x + (size_t)t * d, (size_t)d * sizeof(float));
        }
    }
    return n;
}

// ---- the pass ------------------------------------------------------------------------------

int mor__forward(mor_session *s, const int32_t *tokens, int32_t T, int logits_all) {
    const mor_model *m = s->model;
    const mor__hparams *hp = &m->hp;
    const int d = hp->n_embd, half = hp->head_dim / 2;
    const int seq = hp->sharing == MOR_SHARING_SEQUENCE || hp->sharing == MOR_SHARING_MIDDLE_SEQUENCE;

    for (int32_t t = 0; t < T; t++) {
        const uint8_t *row = (const uint8_t *)m->tok_embd.data +
                             (size_t)tokens[t] * (size_t)d * (m->tok_embd.type == MOR__DT_F32 ? 4 : 2);
        s->kern->to_f32[kt_of(m->tok_embd.type)](row, s->x + (size_t)t * d, d);
        s->alive[t] = 1;
        s->tok_depth[t] = 0;
        s->act_pos[t] = t;
        double p = (double)(s->n_past + t);
        for (int i = 0; i < half; i++) {
            double ang = p * pow((double)hp->rope_theta, -2.0 * i / hp->head_dim);
            s->rope_cos[(size_t)t * half + i] = (float)cos(ang);
            s->rope_sin[(size_t)t * half + i] = (float)sin(ang);
        }
    }

    int32_t n_act = 0, r = 0;
    for (int32_t l = 0; l < hp->n_layer; l++) {
        const mor__layer *ly = &m->layers[l];
        if (!ly->in_middle) {
            run_layer(s, l, s->x, s->act_pos, T);
            continue;
        }
        int32_t k = l - hp->n_first;
        int start = seq || k % hp->block == 0, end = seq || k % hp->block == hp->block - 1;
        if (start) {
            r = ly->rec;
            n_act = decide(s, r, T);
            for (int32_t i = 0; i < n_act; i++) {
                memcpy(s->xa + (size_t)i * d, s->x + (size_t)s->act[i] * d, (size_t)d * sizeof(float));
                if (!seq || r + 1 > s->tok_depth[s->act[i]]) s->tok_depth[s->act[i]] = r + 1;
            }
        }
        if (n_act) run_layer(s, l, s->xa, s->act, n_act);
        if (end) {
            for (int32_t i = 0; i < n_act; i++) {
                int32_t t = s->act[i];
                float *xt = s->x + (size_t)t * d, *ya = s->xa + (size_t)i * d, *hin = s->h_in + (size_t)t * d;
                if (hp->router == MOR_ROUTER_EXPERT) {
                    float g = hp->router_additive ? 1.0f : s->gate[t];
                    for (int j = 0; j < d; j++) xt[j] = hin[j] + g * ya[j];
                } else if (hp->router == MOR_ROUTER_TOKEN && r == s->tok_choice[t]) {
                    for (int j = 0; j < d; j++) xt[j] = hin[j] + s->gate[t] * ya[j];
                } else {
                    memcpy(xt, ya, (size_t)d * sizeof(float));
                }
            }
        }
    }
    for (int32_t t = 0; t < T; t++) {
        if (hp->n_rec == 1 && hp->sharing == MOR_SHARING_NONE) s->tok_depth[t] = 1;
        s->depths[t] = s->tok_depth[t];
    }

    int32_t first = logits_all ? 0 : T - 1;
    for (int32_t t = first; t < T; t++)
        rmsnorm(s->xb + (size_t)(t - first) * d, s->x + (size_t)t * d, m->output_norm, d, hp->rms_eps);
    mm(s, &m->output, s->xb, T - first, s->logits);
    s->n_logits = T - first;
    return MOR_OK;
}
