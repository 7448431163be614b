// route.c: the routers, the exit measures and the exit policies (route.h).
//
// Expert-choice (MoR): before step k the router of step k scores each candidate row; the
// gate g = alpha * f(z) weighs the step's output (H <- H + g * F(H)) and the score decides,
// against the threshold, whether the row runs the step (capacity: the top k_r rows of the
// batch instead). Token-choice: the router picks each row's depth once, from H^1, before the
// first step. Confidence (CALM) and saturation exits read the state after a step; FREE's
// shallow exit reads the confidence after its shallow steps. docs/DESIGN.md has the methods.
#include "route.h"

#include <math.h>

// ---- routers -------------------------------------------------------------------------------

// Router logits for n rows of width d (already divided by the temperature): out (n, n_out).
// An MLP router's hidden layer (n, 2d) goes through hid.
static void router_logits(mor__work *w, const mor__router_w *rw, const float *x, int32_t n, float *hid, int d, float *out) {
    if (!rw->w2.data) {
        mor__matmul(w, &rw->w1, x, n, out);
        return;
    }
    mor__matmul(w, &rw->w1, x, n, hid);
    for (int64_t i = 0; i < (int64_t)n * 2 * d; i++)
        hid[i] = 0.5f * hid[i] * (1.0f + erff(hid[i] * 0.70710678118654752f));  // exact GELU
    mor__matmul(w, &rw->w2, hid, n, out);
}

static float sigmoidf(float z) { return 1.0f / (1.0f + expf(-z)); }

// xa[i] = x[act[i]] / temperature.
static void scaled_rows(const mor__rows *r, const int32_t *act, int32_t nc, int d, float temp) {
    for (int32_t i = 0; i < nc; i++)
        for (int j = 0; j < d; j++) r->xa[(size_t)i * d + j] = r->x[(size_t)act[i] * d + j] / temp;
}

void mor__route_score(const mor__route_ctx *c, mor__work *w, int32_t k, const int32_t *act, int32_t nc) {
    const mor_model *m = c->m;
    const mor__hparams *hp = &m->hp;
    mor__rows *r = c->r;
    const int d = hp->n_embd;
    if (!nc) return;
    if (hp->router == MOR_ROUTER_EXPERT) {
        scaled_rows(r, act, nc, d, hp->router_temp);
        float *z = c->tmp->z, *za = c->tmp->z_aux;
        router_logits(w, &m->routers[k], r->xa, nc, c->tmp->hid, d, z);
        if (m->routers_aux) router_logits(w, &m->routers_aux[k], r->xa, nc, c->tmp->hid, d, za);
        for (int32_t i = 0; i < nc; i++) {
            int32_t t = act[i];
            float zi = z[i];
            r->gate[t] = hp->router_func == 1 ? hp->router_alpha * sigmoidf(zi)
                       : hp->router_func == 2 ? hp->router_alpha * tanhf(zi) : zi;
            r->rscore[t] = sigmoidf(m->routers_aux ? za[i] : zi);
        }
        return;
    }
    if (hp->router != MOR_ROUTER_TOKEN) return;
    if (k == 0) {  // depth probabilities from H^1, once
        scaled_rows(r, act, nc, d, hp->router_temp);
        float *z = c->tmp->z;
        router_logits(w, &m->routers[0], r->xa, nc, c->tmp->hid, d, z);
        for (int32_t i = 0; i < nc; i++) {
            int32_t t = act[i];
            float *zt = z + (size_t)i * hp->n_rec, *pr = r->depth_p + (size_t)t * hp->n_rec;
            if (hp->router_func == 3) {
                float mx = zt[0], sum = 0;
                for (int j = 1; j < hp->n_rec; j++) mx = zt[j] > mx ? zt[j] : mx;
                for (int j = 0; j < hp->n_rec; j++) sum += (pr[j] = expf(zt[j] - mx));
                for (int j = 0; j < hp->n_rec; j++) pr[j] = hp->router_alpha * pr[j] / sum;
            } else {
                for (int j = 0; j < hp->n_rec; j++) pr[j] = hp->router_alpha * sigmoidf(zt[j]);
            }
            int32_t pick = 0;
            float best = -INFINITY;
            for (int j = 0; j < hp->n_rec; j++) {
                float sc = pr[j] + (m->router_bias ? m->router_bias[j] : 0.0f);
                if (sc > best) best = sc, pick = j;
            }
            r->tok_choice[t] = pick;
            memcpy(r->h_in + (size_t)t * d, r->x + (size_t)t * d, (size_t)d * sizeof(float));
        }
    }
    for (int32_t i = 0; i < nc; i++) r->rscore[act[i]] = r->depth_p[(size_t)act[i] * hp->n_rec + k];
}

// ---- measures ------------------------------------------------------------------------------

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

float mor__cosine(const float *a, const float *b, int n) {
    double ab = 0, aa = 0, bb = 0;
    for (int q = 0; q < n; q++) ab += (double)a[q] * b[q], aa += (double)a[q] * a[q], bb += (double)b[q] * b[q];
    return (float)(ab / (sqrt(aa * bb) + 1e-30));
}

float mor__cross_entropy(const float *l, int32_t V, int32_t tok) {
    float mx = l[0];
    for (int32_t i = 1; i < V; i++) mx = l[i] > mx ? l[i] : mx;
    double sum = 0;
    for (int32_t i = 0; i < V; i++) sum += exp((double)(l[i] - mx));
    return (float)(log(sum) - (double)(l[tok] - mx));
}

// ---- exit policies -------------------------------------------------------------------------

// Whether a row runs step k as far as the router is concerned (no router: yes).
static int router_says(const mor__route_ctx *c, int32_t k, int32_t t) {
    const mor__hparams *hp = &c->m->hp;
    if (hp->router == MOR_ROUTER_TOKEN) return k <= c->r->tok_choice[t];
    if (hp->router == MOR_ROUTER_EXPERT) return c->r->rscore[t] >= c->p->threshold;
    return 1;
}

// The confidence threshold in force for a row: CALM's decay over positions for CONFIDENCE,
// the adaptive one for FREE.
static float conf_threshold(const mor__route_ctx *c, int32_t t) {
    const mor_exit_policy *p = c->p;
    if (p->policy == MOR_EXIT_FREE) return c->lambda;
    if (p->decay_tau > 0) {
        double N = p->decay_len > 0 ? p->decay_len : c->n_ctx;
        return (float)(0.9 * p->threshold + 0.1 * p->threshold * exp(-p->decay_tau * c->r->tpos[t] / N));
    }
    return p->threshold;
}

// Rules that decide row by row.
#define PER_ROW(fn, expr)                                                                                   \
    static int fn(const mor__route_ctx *c, int32_t k, const int32_t *act, int32_t nc, uint8_t *keep) {      \
        (void)c, (void)k;                                                                                   \
        for (int32_t i = 0; i < nc; i++) {                                                                  \
            const int32_t t = act[i];                                                                       \
            (void)t;                                                                                        \
            keep[i] = (uint8_t)(expr);                                                                      \
        }                                                                                                   \
        return MOR_OK;                                                                                      \
    }

PER_ROW(decide_full, 1)
PER_ROW(decide_fixed, k < c->p->depth && router_says(c, k, t))  // a cap; routers still route
PER_ROW(decide_router, router_says(c, k, t))
PER_ROW(decide_confidence, k == 0 || c->r->conf[t] <= conf_threshold(c, t))
PER_ROW(decide_saturation, k == 0 || c->r->cosv[t] < c->p->threshold)
PER_ROW(decide_free, k != c->p->shallow || c->r->conf[t] <= conf_threshold(c, t))

// Expert-choice capacity: the top k_r = max(1, (N - k) T / N) candidates by gate run step k,
// ties by order.
static int decide_capacity(const mor__route_ctx *c, int32_t k, const int32_t *act, int32_t nc, uint8_t *keep) {
    const int32_t N = c->m->n_steps;
    int32_t kr = (int32_t)((int64_t)(N - k) * c->T / N);
    if (kr < 1) kr = 1;
    const float *g = c->r->gate;
    for (int32_t i = 0; i < nc; i++) {
        int32_t rank = 0, ti = act[i];
        for (int32_t j = 0; j < nc; j++) {
            int32_t tj = act[j];
            if (g[tj] > g[ti] || (g[tj] == g[ti] && j < i)) rank++;
        }
        keep[i] = rank < kr;
    }
    return MOR_OK;
}

// A custom router gets the candidates' states, positions, router scores and (when it asks)
// confidences, and clears keep[i] for the rows that stop.
static int decide_custom(const mor__route_ctx *c, int32_t k, const int32_t *act, int32_t nc, uint8_t *keep) {
    const mor__hparams *hp = &c->m->hp;
    const int d = hp->n_embd;
    mor__route_tmp *tmp = c->tmp;
    for (int32_t i = 0; i < nc; i++) {
        int32_t t = act[i];
        memcpy(tmp->hid + (size_t)i * d, c->r->x + (size_t)t * d, (size_t)d * sizeof(float));
        tmp->score[i] = c->r->rscore[t];
        tmp->conf[i] = c->r->conf[t];
        tmp->pos[i] = c->r->tpos[t];
    }
    mor_route_batch b = {sizeof b, k, c->m->n_steps, nc, d, tmp->pos, tmp->hid,
                         hp->router != MOR_ROUTER_NONE ? tmp->score : NULL,
                         c->hook->wants_confidence && k > 0 ? tmp->conf : NULL};
    memset(keep, 1, (size_t)nc);
    return c->hook->route(c->hook->owner, &b, keep);
}

static int conf_never(const mor__route_ctx *c, int32_t k) { return (void)c, (void)k, 0; }
static int conf_always(const mor__route_ctx *c, int32_t k) { return (void)c, (void)k, 1; }
static int conf_free(const mor__route_ctx *c, int32_t k) { return k + 1 == c->p->shallow; }
static int conf_custom(const mor__route_ctx *c, int32_t k) { return (void)k, c->hook && c->hook->wants_confidence; }

static const mor__exit_rule rules[] = {
    [MOR_EXIT_FULL] = {"full", decide_full, conf_never},
    [MOR_EXIT_FIXED] = {"fixed", decide_fixed, conf_never},
    [MOR_EXIT_ROUTER] = {"router", decide_router, conf_never},
    [MOR_EXIT_CAPACITY] = {"capacity", decide_capacity, conf_never},
    [MOR_EXIT_CONFIDENCE] = {"confidence", decide_confidence, conf_always},
    [MOR_EXIT_SATURATION] = {"saturation", decide_saturation, conf_never},
    [MOR_EXIT_FREE] = {"free", decide_free, conf_free},
    [MOR_EXIT_CUSTOM] = {"custom", decide_custom, conf_custom},
};

const mor__exit_rule *mor__exit_rule_of(int32_t policy) {
    if (policy < 0 || policy >= (int32_t)(sizeof rules / sizeof rules[0]) || !rules[policy].decide) return NULL;
    return &rules[policy];
}

// ---- compute budget ------------------------------------------------------------------------

int32_t mor__budget_cap(mor__budget *b, const mor_exit_policy *p, int32_t n_steps) {
    if (!(p->budget > 0)) return n_steps;
    // Cap the steps so that the mean over the window stays <= budget.
    int32_t W = p->budget_window, seen = 0, sum = 0;
    for (int32_t j = 0; j < b->n && j < W - 1; j++) {
        int32_t at = (b->next - 1 - j + 4 * W) % W;
        sum += b->ring[at], seen++;
    }
    int32_t c = (int32_t)floorf(p->budget * (float)(seen + 1) + 1e-4f) - sum;
    if (c < MOR__MAX(1, p->min_depth)) c = MOR__MAX(1, p->min_depth);
    // the entry is rewritten with the depth actually taken when the token finishes
    b->ring[b->next] = MOR__MIN(c, n_steps);
    b->next = (b->next + 1) % W;
    if (b->n < W) b->n++;
    return MOR__MIN(c, n_steps);
}

void mor__budget_record(mor__budget *b, const mor_exit_policy *p, int32_t back, int32_t depth) {
    if (!(p->budget > 0)) return;
    int32_t W = p->budget_window;
    b->ring[(b->next - 1 - back + 4 * W) % W] = depth;
}
