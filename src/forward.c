// forward.c: the recursive forward pass: embedding, the unrolled layers (shared weights
// referenced, not copied), depth steps with their routers and exit policy, the KV strategies
// for skipped layers, final norm and output projection.
//
// Semantics (docs/DESIGN.md, docs/FORMAT.md §3.4, docs/POLICIES.md):
// - Unrolled layer l runs the weights of stored layer s(l) with the overrides and LoRA of
//   (s(l), r(l)). Layers outside the steps (the unique first and last layers of the middle
//   strategies) run on every row.
// - A step is a recursion block (recursive models) or a segment between exit heads (vanilla
//   models). Before step k the policy decides which rows run it; only those are gathered
//   (positions kept), run through the step's layers, append K/V and attend (recursion-wise
//   caching). A row that stops is never resumed in the same pass, except stacked rows of
//   KV_SYNC, which resume in a later pass where they left off.
// - Expert-choice: H <- H + g * F_r(H) for a selected row (g = alpha * f(z)).
// - Token-choice: H^1 is kept; the block runs on x without gating; when the row leaves the
//   recursion after step i, H = H^1 + p_i * x.
// Rows of a pass: 0..T-1 are the new tokens; T.. are stacked tokens (KV_SYNC) that join when a
// new token goes on at their step, so their deep K/V becomes exactly the full-depth K/V.
#include "session.h"
#include "thread.h"

#include <math.h>

static void mm(mor_session *s, const mor__mat *W, const float *x, int64_t T, float *y) { mor__matmul(&s->w, W, x, T, y); }

// ---- routers and exit heads ----------------------------------------------------------------

// Router logits for n rows (already divided by temp) of width d: out (n, n_out).
static void router_logits(mor_session *s, const mor__router_w *rw, const float *x, int32_t n, float *out) {
    const mor__hparams *hp = &s->model->hp;
    if (!rw->w2.data) {
        mm(s, &rw->w1, x, n, out);
        return;
    }
    float *h = s->hb;  // (n, 2d): hb holds n_batch * max(n_ff, 2d) floats
    mm(s, &rw->w1, x, n, h);
    for (int64_t i = 0; i < (int64_t)n * 2 * hp->n_embd; i++)
        h[i] = 0.5f * h[i] * (1.0f + erff(h[i] * 0.70710678118654752f));  // exact GELU
    mm(s, &rw->w2, h, n, out);
}

static float sigmoidf(float z) { return 1.0f / (1.0f + expf(-z)); }

// Logits of an exit head (or the final head: head < 0) for one state h into out (n_vocab).
static void head_logits(mor_session *s, int32_t head, const float *h, float *out) {
    const mor_model *m = s->model;
    const float *norm = head >= 0 ? m->exits[head].norm : m->output_norm;
    const mor__mat *w = head >= 0 ? &m->exits[head].out : &m->output;
    s->kern->rmsnorm(s->xb, h, norm, m->hp.n_embd, m->hp.rms_eps);
    mm(s, w, s->xb, 1, out);
}

// Confidence in [0, 1] of a logit vector by the policy's metric; *top receives the argmax.
// One exp per logit, no log per logit: with e_i = exp(l_i - max) and S = sum e_i, p_i = e_i / S,
// the second probability is exp(l_2nd - max) / S, and the entropy -sum p_i log p_i is
// log S - sum e_i (l_i - max) / S.
float mor__confidence(const mor__kernels *k, const float *l, int32_t V, int metric, int32_t *top) {
    const int32_t b = (int32_t)k->argmax(l, V);
    *top = b;
    const float mx = l[b];
    double lsum = 0, sum = k->expsum(l, V, mx, metric == MOR_CONF_ENTROPY ? &lsum : NULL);
    double p1 = 1.0 / sum;
    if (metric == MOR_CONF_MAX_PROB) return (float)p1;
    if (metric == MOR_CONF_ENTROPY) return (float)(1.0 - (log(sum) - lsum / sum) / log((double)V));
    float second = -INFINITY;  // the largest logit but the top one's
    if (b > 0) second = l[k->argmax(l, b)];
    if (b + 1 < V) {
        float r = l[b + 1 + k->argmax(l + b + 1, V - b - 1)];
        second = r > second ? r : second;
    }
    double p2 = second > -INFINITY ? exp((double)(second - mx)) / sum : 0.0;
    return (float)(p1 - p2);
}

// Cross-entropy of token tok under logits l.
static float cross_entropy(const float *l, int32_t V, int32_t tok) {
    float mx = l[0];
    for (int32_t i = 1; i < V; i++) mx = l[i] > mx ? l[i] : mx;
    double sum = 0;
    for (int32_t i = 0; i < V; i++) sum += exp((double)(l[i] - mx));
    return (float)(log(sum) - (double)(l[tok] - mx));
}

// The threshold in force for a row (CALM decay over positions for CONFIDENCE).
static float row_threshold(const mor_session *s, int32_t row) {
    const mor__policy *p = &s->policy;
    if (p->policy == MOR_EXIT_FREE) return p->adaptive && s->bmm ? s->bmm->lambda : p->threshold;
    if (p->policy == MOR_EXIT_CONFIDENCE && p->decay_tau > 0) {
        double N = p->decay_len > 0 ? p->decay_len : s->n_ctx;
        return (float)(0.9 * p->threshold + 0.1 * p->threshold * exp(-p->decay_tau * s->tpos[row] / N));
    }
    return p->threshold;
}

// ---- step decisions ------------------------------------------------------------------------

typedef mor__pass pass;

// A row leaves the steps after running `ran` steps.
static void stop_row(mor_session *s, pass *ps, int32_t t, int32_t ran) {
    const mor_model *m = s->model;
    const mor__hparams *hp = &m->hp;
    const int d = hp->n_embd;
    s->alive[t] = 0;
    s->exit_step[t] = ran;
    float *xt = s->x + (size_t)t * d;
    if (s->policy.kv == MOR_KV_SYNC)  // the state a stacked row resumes from (a unique last layer may follow)
        memcpy(s->h_exit + (size_t)t * d, xt, (size_t)d * sizeof(float));
    if (hp->router == MOR_ROUTER_TOKEN && ran > 0) {  // H = H^1 + p_i x after its last step i
        float g = s->router_h[(size_t)t * hp->n_rec + (ran - 1)];
        const float *h1 = s->h_in + (size_t)t * d;
        for (int j = 0; j < d; j++) xt[j] = h1[j] + g * xt[j];
        s->gate[t] = g;
    }
    if (t >= ps->T || ran >= m->n_steps) return;
    if (s->policy.kv == MOR_KV_PROPAGATE) {
        for (int32_t l = 0; l < hp->n_layer; l++)
            if (m->layer_step[l] >= ran) mor__propagate_kv(s, l, xt, t);
        s->trace.kv[s->tpos[t]] = MOR_KVSTAT_PROPAGATED;
    } else if (s->policy.kv == MOR_KV_SYNC) {
        s->trace.kv[s->tpos[t]] = MOR_KVSTAT_DEFERRED;
    }
}

// Calls the custom router for the candidate new rows in act[0..nc); writes keep[].
static int call_router(mor_session *s, int32_t k, int32_t nc, uint8_t *keep, int have_conf) {
    const mor__hparams *hp = &s->model->hp;
    const int d = hp->n_embd;
    float *hid = s->xa, *rs = s->hb2, *cf = s->hb2 + s->n_batch;
    int32_t *pos = s->cap + s->n_batch;  // scratch: cap holds 2 * n_batch ints
    for (int32_t i = 0; i < nc; i++) {
        int32_t t = s->act[i];
        memcpy(hid + (size_t)i * d, s->x + (size_t)t * d, (size_t)d * sizeof(float));
        rs[i] = s->rscore[t];
        cf[i] = s->conf[t];
        pos[i] = s->tpos[t];
    }
    mor_route_batch b = {sizeof b, k, s->model->n_steps, nc, d, pos, hid,
                         hp->router != MOR_ROUTER_NONE ? rs : NULL, have_conf && k > 0 ? cf : NULL};
    memset(keep, 1, (size_t)nc);
    s->busy++;
    int32_t rc = s->router.route(s->router_user, &b, keep);
    s->busy--;
    if (s->free_pending) return mor__session_fail(s, MOR_E_CANCELLED, "the router callback freed its session");
    if (rc != 0) return mor__session_fail(s, MOR_E_CALLBACK, "the router callback returned %d at step %d", rc, k);
    return MOR_OK;
}

// Decides the rows that run step k; fills act (rows in increasing order) and returns their
// count, or a negative status.
static int32_t begin_step(mor_session *s, pass *ps, int32_t k) {
    const mor_model *m = s->model;
    const mor__hparams *hp = &m->hp;
    const mor__policy *p = &s->policy;
    const int d = hp->n_embd;
    uint8_t *keep = s->alive + s->n_batch;  // scratch: alive holds 2 * n_batch bytes
    int32_t nc = 0;
    for (int32_t t = 0; t < ps->T; t++)
        if (s->alive[t]) s->act[nc++] = t;

    // Router scores of the candidates (the gate is part of the model's function).
    if (nc && hp->router == MOR_ROUTER_EXPERT) {
        for (int32_t i = 0; i < nc; i++)
            for (int j = 0; j < d; j++) s->xa[(size_t)i * d + j] = s->x[(size_t)s->act[i] * d + j] / hp->router_temp;
        float *z = s->tmp, *za = s->tmp + s->n_batch;
        router_logits(s, &m->routers[k], s->xa, nc, z);
        if (m->routers_aux) router_logits(s, &m->routers_aux[k], s->xa, nc, za);
        for (int32_t i = 0; i < nc; i++) {
            int32_t t = s->act[i];
            float zi = z[i];
            s->gate[t] = hp->router_func == 1 ? hp->router_alpha * sigmoidf(zi)
                       : hp->router_func == 2 ? hp->router_alpha * tanhf(zi) : zi;
            s->rscore[t] = sigmoidf(m->routers_aux ? za[i] : zi);
        }
    }
    if (nc && hp->router == MOR_ROUTER_TOKEN && k == 0) {  // depth probabilities from H^1, once
        for (int32_t i = 0; i < nc; i++)
            for (int j = 0; j < d; j++) s->xa[(size_t)i * d + j] = s->x[(size_t)s->act[i] * d + j] / hp->router_temp;
        float *z = s->tmp;
        router_logits(s, &m->routers[0], s->xa, nc, z);
        for (int32_t i = 0; i < nc; i++) {
            int32_t t = s->act[i];
            float *zt = z + (size_t)i * hp->n_rec, *pr = s->router_h + (size_t)t * hp->n_rec;
            if (hp->router_func == 3) {
                float mx = zt[0], sum = 0;
                for (int j = 1; j < hp->n_rec; j++) mx = zt[j] > mx ? zt[j] : mx;
                for (int j = 0; j < hp->n_rec; j++) sum += (pr[j] = expf(zt[j] - mx));
                for (int j = 0; j < hp->n_rec; j++) pr[j] = hp->router_alpha * pr[j] / sum;
            } else {
                for (int j = 0; j < hp->n_rec; j++) pr[j] = hp->router_alpha * sigmoidf(zt[j]);
            }
            int32_t c = 0;
            float best = -INFINITY;
            for (int j = 0; j < hp->n_rec; j++) {
                float sc = pr[j] + (m->router_bias ? m->router_bias[j] : 0.0f);
                if (sc > best) best = sc, c = j;
            }
            s->tok_choice[t] = c;
            memcpy(s->h_in + (size_t)t * d, s->x + (size_t)t * d, (size_t)d * sizeof(float));
        }
    }
    if (nc && hp->router == MOR_ROUTER_TOKEN)
        for (int32_t i = 0; i < nc; i++) s->rscore[s->act[i]] = s->router_h[(size_t)s->act[i] * hp->n_rec + k];

    // The policy.
    if (nc && p->policy == MOR_EXIT_CUSTOM) {
        int rc = call_router(s, k, nc, keep, s->router.wants_confidence);
        if (rc) return rc;
    } else if (nc && p->policy == MOR_EXIT_CAPACITY) {
        int32_t kr = (int32_t)((int64_t)(m->n_steps - k) * ps->T / m->n_steps);
        if (kr < 1) kr = 1;
        for (int32_t i = 0; i < nc; i++) {  // rank by gate among the candidates, ties by order
            int32_t rank = 0, ti = s->act[i];
            for (int32_t j = 0; j < nc; j++) {
                int32_t tj = s->act[j];
                if (s->gate[tj] > s->gate[ti] || (s->gate[tj] == s->gate[ti] && j < i)) rank++;
            }
            keep[i] = rank < kr;
        }
    } else {
        for (int32_t i = 0; i < nc; i++) {
            int32_t t = s->act[i];
            int on = 1;
            int by_router = hp->router == MOR_ROUTER_TOKEN ? k <= s->tok_choice[t]
                          : hp->router == MOR_ROUTER_EXPERT ? s->rscore[t] >= p->threshold : 1;
            switch (p->policy) {
            case MOR_EXIT_FIXED: on = k < p->depth && by_router; break;  // a cap; routers still route
            case MOR_EXIT_ROUTER: on = by_router; break;
            case MOR_EXIT_CONFIDENCE: on = k == 0 || s->conf[t] <= row_threshold(s, t); break;
            case MOR_EXIT_SATURATION: on = k == 0 || s->cosv[t] < p->threshold; break;
            case MOR_EXIT_FREE: on = k != p->shallow || s->conf[t] <= row_threshold(s, t); break;
            default: on = 1; break;
            }
            keep[i] = (uint8_t)on;
        }
    }
    int32_t n = 0;
    for (int32_t i = 0; i < nc; i++) {
        int32_t t = s->act[i];
        int on = keep[i] != 0;
        if (k < p->min_depth || ps->force) on = 1;
        if (k >= s->cap[t]) on = 0;
        if (on) s->act[n++] = t;
        else stop_row(s, ps, t, k);
    }
    ps->any_new = n > 0;
    // Stacked rows join at the step where they stopped, if a new row goes on there.
    for (int32_t t = ps->T; t < ps->R; t++)
        if (!s->joined[t] && s->row_start[t] == k && ps->any_new) s->joined[t] = 1, s->alive[t] = 1;
    for (int32_t t = ps->T; t < ps->R; t++)
        if (s->joined[t] && s->alive[t]) {
            if (!ps->any_new) stop_row(s, ps, t, k);  // no deep pass beyond here
            else s->act[n++] = t;
        }
    for (int32_t i = 0; i < n; i++) {
        int32_t t = s->act[i];
        memcpy(s->xa + (size_t)i * d, s->x + (size_t)t * d, (size_t)d * sizeof(float));
        memcpy(s->h_step + (size_t)t * d, s->x + (size_t)t * d, (size_t)d * sizeof(float));
        s->tok_depth[t] = k + 1;
    }
    return n;
}

// Writes the step's output back and measures what the next decision needs.
// The state row t (active row i) leaves a step with, into out: the step's output, gated by
// the expert-choice router's weight when there is one.
static void step_out(const mor_session *s, int32_t i, int32_t t, float *out) {
    const mor__hparams *hp = &s->model->hp;
    const int d = hp->n_embd;
    const float *ya = s->xa + (size_t)i * d, *hin = s->h_step + (size_t)t * d;
    if (hp->router == MOR_ROUTER_EXPERT) {
        float g = hp->router_additive ? 1.0f : s->gate[t];
        for (int j = 0; j < d; j++) out[j] = hin[j] + g * ya[j];
    } else {
        memcpy(out, ya, (size_t)d * sizeof(float));
    }
}

// Whether the policy reads an exit head's confidence after step k.
static int needs_conf(const mor_session *s, int32_t k) {
    const mor__policy *p = &s->policy;
    return k + 1 < s->model->n_steps &&
           (p->policy == MOR_EXIT_CONFIDENCE || (p->policy == MOR_EXIT_FREE && k + 1 == p->shallow) ||
            (p->policy == MOR_EXIT_CUSTOM && s->router.wants_confidence));
}

static void end_step(mor_session *s, pass *ps, int32_t k, int32_t n) {
    const mor_model *m = s->model;
    const mor__hparams *hp = &m->hp;
    const mor__policy *p = &s->policy;
    const int d = hp->n_embd;
    const float *given = s->conf_logits;
    s->conf_logits = NULL;
    for (int32_t i = 0; i < n; i++) step_out(s, i, s->act[i], s->x + (size_t)s->act[i] * d);
    if (k + 1 >= m->n_steps) return;
    if (needs_conf(s, k)) {
        // Logits of the exit head for the rows that go on: handed over by a scheduler, or
        // computed here, up to MOR__CONF_GROUP rows per product.
        const int32_t head = m->step_exit[k], G = s->conf_group;
        const float *norm = head >= 0 ? m->exits[head].norm : m->output_norm;
        int32_t rows[MOR__CONF_GROUP], g = 0, j = 0;
        for (int32_t i = 0; i <= n; i++) {
            int32_t t = i < n ? s->act[i] : -1;
            if (i < n && t >= ps->T) continue;
            if (given && t >= 0) {
                s->conf[t] = mor__confidence(s->kern, given + (size_t)j++ * hp->n_vocab, hp->n_vocab, p->metric, &s->shallow_top[t]);
                continue;
            }
            if (t >= 0) {
                s->kern->rmsnorm(s->xb + (size_t)g * d, s->x + (size_t)t * d, norm, d, hp->rms_eps);
                rows[g++] = t;
            }
            if (g == G || (t < 0 && g > 0)) {
                mm(s, head >= 0 ? &m->exits[head].out : &m->output, s->xb, g, s->vocab_buf);
                for (int32_t q = 0; q < g; q++)
                    s->conf[rows[q]] = mor__confidence(s->kern, s->vocab_buf + (size_t)q * hp->n_vocab, hp->n_vocab, p->metric,
                                                  &s->shallow_top[rows[q]]);
                g = 0;
            }
        }
    }
    for (int32_t i = 0; i < n; i++) {
        int32_t t = s->act[i];
        if (t >= ps->T) continue;
        const float *xt = s->x + (size_t)t * d;
        if (p->policy == MOR_EXIT_SATURATION) {
            const float *h0 = s->h_step + (size_t)t * d;
            double ab = 0, aa = 0, bb = 0;
            for (int q = 0; q < d; q++) ab += (double)xt[q] * h0[q], aa += (double)xt[q] * xt[q], bb += (double)h0[q] * h0[q];
            s->cosv[t] = (float)(ab / (sqrt(aa * bb) + 1e-30));
        }
    }
}

int32_t mor__pass_conf_rows(mor_session *s, float *xn, int32_t *head) {
    const mor_model *m = s->model;
    const pass *ps = &s->ps;
    const int d = m->hp.n_embd;
    if (!ps->active || ps->l >= m->hp.n_layer || m->steps_interleaved) return 0;
    int32_t k = m->layer_step[ps->l];
    if (k < 0 || ps->l != m->step_end[k] - 1 || !needs_conf(s, k)) return 0;
    int32_t h = m->step_exit[k], n = 0;
    const float *norm = h >= 0 ? m->exits[h].norm : m->output_norm;
    for (int32_t i = 0; i < ps->n_act; i++) {
        int32_t t = s->act[i];
        if (t >= ps->T) continue;
        if (xn) {
            float *o = xn + (size_t)n * d;
            step_out(s, i, t, o);
            s->kern->rmsnorm(o, o, norm, d, m->hp.rms_eps);
        }
        n++;
    }
    *head = h;
    return n;
}

void mor__pass_conf_logits(mor_session *s, const float *logits) { s->conf_logits = logits; }

// ---- the pass ------------------------------------------------------------------------------

// Loads the new tokens and the stack into rows; returns the row count.
static void load_rows(mor_session *s, pass *ps, const int32_t *tokens) {
    const mor_model *m = s->model;
    const mor__hparams *hp = &m->hp;
    const int d = hp->n_embd, half = hp->head_dim / 2;
    const mor__policy *p = &s->policy;
    for (int32_t t = 0; t < ps->T; t++) {
        const uint8_t *row = (const uint8_t *)m->tok_embd.data +
                             (size_t)tokens[t] * (size_t)mor__dtype_row_bytes(m->tok_embd.type, d);
        s->kern->to_f32[m->tok_embd.type](row, s->x + (size_t)t * d, d);
        s->tpos[t] = s->n_past + t;
        s->row_start[t] = 0;
        s->joined[t] = 1;
        s->alive[t] = 1;
        s->exit_step[t] = m->n_steps;
        s->conf[t] = s->cosv[t] = s->rscore[t] = NAN;
        s->shallow_top[t] = -1;
        s->tok_depth[t] = 0;
        s->act_pos[t] = t;
        s->trace.kv[s->tpos[t]] = MOR_KVSTAT_NONE;
        // Compute budget: cap the steps so that the mean over the window stays <= budget.
        s->cap[t] = m->n_steps;
        if (p->budget > 0) {
            int32_t W = p->budget_window, seen = 0, sum = 0;
            for (int32_t j = 0; j < s->budget_n && j < W - 1; j++) {
                int32_t at = (s->budget_next - 1 - j + 4 * W) % W;
                sum += s->budget_ring[at], seen++;
            }
            int32_t c = (int32_t)floorf(p->budget * (float)(seen + 1) + 1e-4f) - sum;
            if (c < MOR__MAX(1, p->min_depth)) c = MOR__MAX(1, p->min_depth);
            if (c < s->cap[t]) s->cap[t] = c;
            // the ring is updated as tokens finish, in order, below
            s->budget_ring[s->budget_next] = MOR__MIN(c, m->n_steps);
            s->budget_next = (s->budget_next + 1) % W;
            if (s->budget_n < W) s->budget_n++;
        }
    }
    ps->R = ps->T;
    for (int32_t j = 0; j < s->n_stack; j++) {
        int32_t t = ps->R++;
        memcpy(s->x + (size_t)t * d, s->stack_h + (size_t)j * d, (size_t)d * sizeof(float));
        s->tpos[t] = s->stack_pos[j];
        s->row_start[t] = s->stack_step[j];
        s->joined[t] = 0;
        s->alive[t] = 0;
        s->exit_step[t] = s->stack_step[j];
        s->conf[t] = s->stack_conf[j];
        s->shallow_top[t] = s->stack_top[j];
        s->tok_depth[t] = s->stack_step[j];
        s->cap[t] = m->n_steps;
        s->act_pos[t] = t;
    }
    for (int32_t t = 0; t < ps->R; t++) {
        double pp = (double)s->tpos[t];
        for (int i = 0; i < half; i++) {
            double ang = pp * m->rope_inv_freq[i];
            s->rope_cos[(size_t)t * half + i] = (float)cos(ang);
            s->rope_sin[(size_t)t * half + i] = (float)sin(ang);
        }
    }
}

// Scratch for the rebuilt KV_SYNC stack, in buffers the pass no longer needs: hb holds
// n_batch * wide floats, cap 2 * n_batch ints.
typedef struct {
    float   *h, *conf;
    int32_t *pos, *step, *top;
} stack_tmp;

static stack_tmp stack_scratch(mor_session *s) {
    return (stack_tmp){s->hb, s->tmp, s->cap, s->cap + s->n_batch, s->tok_choice};
}

// Entry n of the rebuilt stack: row t, with hidden state hs.
static void keep_row(const mor_session *s, stack_tmp *k, int32_t n, int32_t t, const float *hs) {
    const int d = s->model->hp.n_embd;
    memcpy(k->h + (size_t)n * d, hs, (size_t)d * sizeof(float));
    k->pos[n] = s->tpos[t];
    k->step[n] = s->exit_step[t];
    k->conf[n] = s->conf[t];
    k->top[n] = s->shallow_top[t];
}

// After the pass: telemetry, the KV_SYNC stack and its calibration and rollback.
static void finish_rows(mor_session *s, pass *ps, const int32_t *tokens) {
    const mor_model *m = s->model;
    const mor__hparams *hp = &m->hp;
    const mor__policy *p = &s->policy;
    const int d = hp->n_embd;
    for (int32_t t = 0; t < ps->T; t++) {
        int32_t pos = s->tpos[t], dep = s->tok_depth[t];
        s->depths[t] = dep;
        s->trace.depth[pos] = (int8_t)MOR__MIN(dep, 127);
        float sc = hp->router != MOR_ROUTER_NONE ? s->rscore[t] : s->conf[t];
        if (p->policy == MOR_EXIT_SATURATION) sc = s->cosv[t];
        s->trace.score[pos] = sc;
        if (s->trace.kv[pos] == MOR_KVSTAT_NONE)
            s->trace.kv[pos] = dep >= m->n_steps ? MOR_KVSTAT_FULL : MOR_KVSTAT_COMPUTED;
        s->st_tokens++;
        s->st_steps += dep;
        s->st_hist[MOR__MIN(dep, MOR_STATS_MAX_DEPTH)]++;
        s->st_evals_full += hp->n_layer;
        if (p->budget > 0) {  // record the depth actually taken in the ring slot reserved for it
            int32_t W = p->budget_window, back = ps->T - 1 - t;
            s->budget_ring[(s->budget_next - 1 - back + 4 * W) % W] = dep;
        }
    }
    if (p->kv != MOR_KV_SYNC) return;
    // Followers that completed the deep pass now hold full-depth K/V.
    int deep = 0;
    for (int32_t t = 0; t < ps->T; t++) deep |= s->exit_step[t] >= m->n_steps;
    if (deep) s->st_deep++;
    int32_t keep_n = 0;
    stack_tmp k = stack_scratch(s);
    float *tmp_h = k.h;
    int32_t *tmp_pos = k.pos, *tmp_step = k.step, *tmp_top = k.top;
    float *tmp_conf = k.conf;
    s->rollback_to = -1;
    for (int32_t t = ps->T; t < ps->R; t++) {
        int32_t pos = s->tpos[t];
        if (s->joined[t] && s->exit_step[t] >= m->n_steps) {
            s->trace.kv[pos] = MOR_KVSTAT_SYNCED;  // depth stays the one its output came from
            if (p->adaptive || p->rollback > 0) {
                head_logits(s, -1, s->x + (size_t)t * d, s->vocab_buf);
                int32_t top;
                mor__confidence(s->kern, s->vocab_buf, hp->n_vocab, MOR_CONF_TOP2_GAP, &top);
                if (p->adaptive && s->bmm && s->shallow_top[t] >= 0 && !isnan(s->conf[t])) {
                    mor__bmm *b = s->bmm;
                    b->conf[b->next] = s->conf[t];
                    b->agree[b->next] = (uint8_t)(top == s->shallow_top[t]);
                    b->next = (b->next + 1) % MOR__BMM_CAP;
                    if (b->n < MOR__BMM_CAP) b->n++;
                }
                int32_t next = pos + 1;
                int given = next < s->n_ctx && s->trace.given[next];  // prompt tokens stay
                if (p->rollback > 0 && s->rollback_to < 0 && !given) {
                    int32_t tok = next < s->n_past ? s->tokens[next] : tokens[next - s->n_past];
                    if (cross_entropy(s->vocab_buf, hp->n_vocab, tok) > p->rollback) {
                        s->rollback_to = next;
                        memcpy(s->logits, s->vocab_buf, (size_t)hp->n_vocab * sizeof(float));
                    }
                }
            }
            continue;
        }
        // still waiting (not joined): its saved state; joined but the pass stopped early: the
        // state where it stopped
        keep_row(s, &k, keep_n++, t, s->joined[t] ? s->h_exit + (size_t)t * d : s->x + (size_t)t * d);
    }
    for (int32_t t = 0; t < ps->T; t++)
        if (s->exit_step[t] < m->n_steps) keep_row(s, &k, keep_n++, t, s->h_exit + (size_t)t * d);
    // Positions must stay increasing: sort the (small) stack by position.
    for (int32_t i = 1; i < keep_n; i++)
        for (int32_t j = i; j > 0 && tmp_pos[j - 1] > tmp_pos[j]; j--) {
            int32_t a = tmp_pos[j], b = tmp_step[j], c = tmp_top[j];
            float f = tmp_conf[j];
            tmp_pos[j] = tmp_pos[j - 1], tmp_step[j] = tmp_step[j - 1], tmp_top[j] = tmp_top[j - 1];
            tmp_conf[j] = tmp_conf[j - 1];
            tmp_pos[j - 1] = a, tmp_step[j - 1] = b, tmp_top[j - 1] = c, tmp_conf[j - 1] = f;
            for (int q = 0; q < d; q++) {
                float v = tmp_h[(size_t)j * d + q];
                tmp_h[(size_t)j * d + q] = tmp_h[(size_t)(j - 1) * d + q];
                tmp_h[(size_t)(j - 1) * d + q] = v;
            }
        }
    memcpy(s->stack_h, tmp_h, (size_t)keep_n * d * sizeof(float));
    memcpy(s->stack_pos, tmp_pos, (size_t)keep_n * sizeof(int32_t));
    memcpy(s->stack_step, tmp_step, (size_t)keep_n * sizeof(int32_t));
    memcpy(s->stack_conf, tmp_conf, (size_t)keep_n * sizeof(float));
    memcpy(s->stack_top, tmp_top, (size_t)keep_n * sizeof(int32_t));
    s->n_stack = keep_n;
}

// ---- the pass, one layer at a time ---------------------------------------------------------

// Moves the cursor to the next layer that has rows to run: opens steps (the policy decides
// who runs them), skips steps nobody runs, finalizes rows before a unique last layer, and
// gathers the rows of unique layers when not every row takes part.
static int settle(mor_session *s) {
    const mor_model *m = s->model;
    const mor__hparams *hp = &m->hp;
    pass *ps = &s->ps;
    const int d = hp->n_embd;
    while (ps->l < hp->n_layer) {
        int32_t l = ps->l, lk = m->layer_step[l];
        if (lk < 0) {
            if (ps->seen_steps == 1) {  // leaving the steps: rows still in them ran them all
                for (int32_t t = 0; t < ps->R; t++)
                    if (s->alive[t]) {
                        if (hp->router == MOR_ROUTER_TOKEN) stop_row(s, ps, t, m->n_steps);
                        s->alive[t] = 0;
                        s->exit_step[t] = m->n_steps;
                    }
                ps->seen_steps = 2;
            }
            int32_t n = 0;
            for (int32_t t = 0; t < ps->R; t++)
                if (s->joined[t]) s->act[n++] = t;
            ps->n_act = n;
            ps->gathered = n != ps->R;
            if (ps->gathered)
                for (int32_t i = 0; i < n; i++)
                    memcpy(s->xa + (size_t)i * d, s->x + (size_t)s->act[i] * d, (size_t)d * sizeof(float));
            return MOR_OK;
        }
        if (!ps->seen_steps) ps->seen_steps = 1;
        if (m->steps_interleaved) {  // sequence sharing: FULL or FIXED only
            int32_t limit = s->policy.policy == MOR_EXIT_FIXED ? s->policy.depth : m->n_steps;
            if (lk >= limit) {
                ps->l++;
                continue;
            }
            int32_t n = 0;
            for (int32_t t = 0; t < ps->R; t++)
                if (s->joined[t]) s->act[n++] = t;
            ps->n_act = n;
            ps->gathered = n != ps->R;
            if (ps->gathered)
                for (int32_t i = 0; i < n; i++)
                    memcpy(s->xa + (size_t)i * d, s->x + (size_t)s->act[i] * d, (size_t)d * sizeof(float));
            return MOR_OK;
        }
        if (l == m->step_begin[lk]) {
            ps->k = lk;
            int32_t n = begin_step(s, ps, lk);
            if (n < 0) return n;
            ps->n_act = n;
            if (n == 0) {  // nobody runs this step
                end_step(s, ps, lk, 0);
                ps->l = m->step_end[lk];
                continue;
            }
        }
        return MOR_OK;
    }
    return MOR_OK;
}

int mor__pass_begin(mor_session *s, int32_t T, int logits_all) {
    pass *ps = &s->ps;
    memset(ps, 0, sizeof *ps);
    ps->T = ps->R = T;
    ps->k = -1;
    ps->logits_all = logits_all;
    ps->force = s->policy.kv == MOR_KV_SYNC && s->n_stack >= s->n_batch / 2;
    ps->active = 1;
    load_rows(s, ps, s->tokens + s->n_past);
    return settle(s);
}

int32_t mor__pass_next(const mor_session *s) { return s->ps.l < s->model->hp.n_layer ? s->ps.l : -1; }

void mor__pass_part(mor_session *s, mor__part *p) {
    const pass *ps = &s->ps;
    const mor_model *m = s->model;
    int step_layer = m->layer_step[ps->l] >= 0 && !m->steps_interleaved;
    p->s = s;
    p->l = ps->l;
    p->n = ps->n_act;
    if (step_layer || ps->gathered) {
        p->xr = s->xa;
        p->idx = s->act;
    } else {  // every row, in place
        p->xr = s->x;
        p->idx = s->act_pos;
        p->n = ps->R;
    }
}

int mor__pass_advance(mor_session *s) {
    const mor_model *m = s->model;
    pass *ps = &s->ps;
    const int d = m->hp.n_embd;
    int32_t l = ps->l, lk = m->layer_step[l];
    if (lk >= 0 && !m->steps_interleaved) {
        if (l == m->step_end[lk] - 1) end_step(s, ps, lk, ps->n_act);
    } else {
        if (ps->gathered)
            for (int32_t i = 0; i < ps->n_act; i++)
                memcpy(s->x + (size_t)s->act[i] * d, s->xa + (size_t)i * d, (size_t)d * sizeof(float));
        if (lk >= 0)  // interleaved step layer: its rows ran step lk
            for (int32_t t = 0; t < ps->R; t++)
                if (s->joined[t] && lk + 1 > s->tok_depth[t]) s->tok_depth[t] = lk + 1;
    }
    s->conf_logits = NULL;  // used by this step's end, or not at all
    ps->l++;
    return settle(s);
}

// Rows still in the steps ran them all.
static void close_steps(mor_session *s) {
    const mor_model *m = s->model;
    pass *ps = &s->ps;
    for (int32_t t = 0; t < ps->R; t++)
        if (s->alive[t]) {
            if (m->hp.router == MOR_ROUTER_TOKEN) stop_row(s, ps, t, m->n_steps);
            s->alive[t] = 0;
            s->exit_step[t] = m->n_steps;
        }
    if (m->steps_interleaved)
        for (int32_t t = 0; t < ps->T; t++) s->exit_step[t] = s->tok_depth[t];
}

int mor__pass_head_row(mor_session *s, float *xn) {
    const mor_model *m = s->model;
    pass *ps = &s->ps;
    close_steps(s);
    int32_t t = ps->T - 1;
    if (ps->logits_all || s->logit_row0 != 0) return 0;  // one row of logits: the last
    if (!m->has_last && s->exit_step[t] < m->n_steps && s->exit_step[t] > 0 && m->step_exit[s->exit_step[t] - 1] >= 0)
        return 0;
    s->kern->rmsnorm(xn, s->x + (size_t)t * m->hp.n_embd, m->output_norm, m->hp.n_embd, m->hp.rms_eps);
    return 1;
}

void mor__pass_finish_with(mor_session *s, const float *logits) {
    memcpy(s->logits, logits, (size_t)s->model->hp.n_vocab * sizeof(float));
    s->n_logits = 1;
    finish_rows(s, &s->ps, s->tokens + s->n_past);
    s->ps.active = 0;
}

void mor__pass_finish(mor_session *s) {
    const mor_model *m = s->model;
    const mor__hparams *hp = &m->hp;
    pass *ps = &s->ps;
    const int d = hp->n_embd;
    const int32_t T = ps->T;
    close_steps(s);
    // Logits: the final head, or for a model without a unique last layer the exit head after
    // the last step a row ran.
    int32_t first = ps->logits_all ? 0 : T - 1;
    int same = 1;
    for (int32_t t = first; t < T; t++) {
        int32_t head = -1;
        if (!m->has_last && s->exit_step[t] < m->n_steps && s->exit_step[t] > 0) head = m->step_exit[s->exit_step[t] - 1];
        s->row_head[t] = head;
        if (head != -1) same = 0;
    }
    float *lout = s->logits + (size_t)s->logit_row0 * hp->n_vocab;
    if (same) {
        for (int32_t t = first; t < T; t++)
            s->kern->rmsnorm(s->xb + (size_t)(t - first) * d, s->x + (size_t)t * d, m->output_norm, d, hp->rms_eps);
        mm(s, &m->output, s->xb, T - first, lout);
    } else {
        for (int32_t t = first; t < T; t++)
            head_logits(s, s->row_head[t], s->x + (size_t)t * d, lout + (size_t)(t - first) * hp->n_vocab);
    }
    s->n_logits = T - first;
    finish_rows(s, ps, s->tokens + s->n_past);
    ps->active = 0;
}

int mor__forward(mor_session *s, const int32_t *tokens, int32_t T, int logits_all) {
    if (s->tokens + s->n_past != tokens) memcpy(s->tokens + s->n_past, tokens, (size_t)T * sizeof(int32_t));
    int st = mor__pass_begin(s, T, logits_all);
    while (st == MOR_OK && mor__pass_next(s) >= 0) {
        mor__part p;
        mor__pass_part(s, &p);
        mor__run_layers(&s->w, s->model, &p, 1);
        st = mor__pass_advance(s);
    }
    if (st) {
        s->ps.active = 0;
        return st;
    }
    mor__pass_finish(s);
    return MOR_OK;
}
