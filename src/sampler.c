// sampler.c: token sampling from the last logits: repetition penalty, temperature, top-k,
// top-p, min-p, drawn from the session's own seeded RNG (same seed, same tokens).
#include "session.h"

#include <math.h>

// splitmix64: a small, fast generator with a 64-bit state that the session saves and restores.
static uint64_t next_u64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double next_unit(uint64_t *s) { return (double)(next_u64(s) >> 11) * (1.0 / 9007199254740992.0); }

// The rules a sampler's settings must follow, wherever they come from (mor_session_set_sampler
// or a saved state). top_k and the seed take any value.
int mor__sampler_check(const mor__sampler *sp, char *err, size_t err_n) {
    if (!isfinite(sp->temperature)) return mor__errf(err, err_n, MOR_E_INVALID, "temperature is not a finite number");
    if (!(sp->top_p > 0.0f && sp->top_p <= 1.0f))
        return mor__errf(err, err_n, MOR_E_INVALID, "top_p = %g: must be in (0, 1]", sp->top_p);
    if (!(sp->min_p >= 0.0f && sp->min_p <= 1.0f))
        return mor__errf(err, err_n, MOR_E_INVALID, "min_p = %g: must be in [0, 1]", sp->min_p);
    if (!(sp->repeat_penalty > 0.0f) || !isfinite(sp->repeat_penalty))
        return mor__errf(err, err_n, MOR_E_INVALID, "repeat_penalty = %g: must be positive", sp->repeat_penalty);
    if (sp->repeat_last_n < 0)
        return mor__errf(err, err_n, MOR_E_INVALID, "repeat_last_n = %d: must be >= 0", sp->repeat_last_n);
    return MOR_OK;
}

int mor_session_set_sampler(mor_session *s, const mor_sampler_params *p) {
    if (!s) return MOR_E_INVALID;
    MOR__REFUSE_BUSY(s);
    s->err[0] = 0;
    if (p && p->kind != MOR_PARAMS_SAMPLER)
        return mor__session_fail(s, MOR_E_INVALID, "params is not a mor_sampler_params (kind %u)", p->kind);
    mor_sampler_params q;
    mor_sampler_params_init(&q);
    if (p) memcpy(&q, p, MOR__MIN(p->size, sizeof q));
    mor__sampler sm = {.temperature = q.temperature, .top_p = q.top_p, .min_p = q.min_p,
                       .repeat_penalty = q.repeat_penalty, .top_k = q.top_k,
                       .repeat_last_n = q.repeat_last_n, .seed = q.seed};
    int st = mor__sampler_check(&sm, s->err, sizeof s->err);
    if (st) return st;
    s->sampler = sm;
    s->rng = q.seed;
    return MOR_OK;
}

// Candidate order: higher logit first, lower id on ties (deterministic).
static int before(const float *l, int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); }

static void sift_down(int32_t *h, int32_t n, int32_t i, const float *l) {
    for (;;) {  // min-heap on `before`: the root is the worst of the kept candidates
        int32_t c = 2 * i + 1;
        if (c >= n) return;
        if (c + 1 < n && before(l, h[c], h[c + 1])) c++;
        if (!before(l, h[i], h[c])) return;
        int32_t t = h[i];
        h[i] = h[c], h[c] = t;
        i = c;
    }
}

// Puts the k best ids of l[0..n) in cand[0..k), sorted best first. O(n log k), no allocation.
static void top_k_sorted(const float *l, int32_t n, int32_t k, int32_t *cand) {
    for (int32_t i = 0; i < k; i++) cand[i] = i;
    for (int32_t i = k / 2 - 1; i >= 0; i--) sift_down(cand, k, i, l);
    for (int32_t i0 = k; i0 < n; i0 += 64) {
        int32_t i1 = n - i0 < 64 ? n : i0 + 64, any = 0;
        float worst = l[cand[0]];
        for (int32_t i = i0; i < i1; i++) any |= l[i] >= worst;  // most chunks hold no candidate
        if (!any) continue;
        for (int32_t i = i0; i < i1; i++)
            if (before(l, i, cand[0])) {
                cand[0] = i;
                sift_down(cand, k, 0, l);
            }
    }
    for (int32_t m = k - 1; m > 0; m--) {  // heap sort: worst goes to the end
        int32_t t = cand[0];
        cand[0] = cand[m], cand[m] = t;
        sift_down(cand, m, 0, l);
    }
}

// ---- constraints -----------------------------------------------------------------------------

// The id arrays of a constraint: every id in [0, V) (MOR_E_TOKEN names the first that is not).
static int check_ids(mor_session *s, const int32_t *ids, int32_t n) {
    const int32_t V = s->model->hp.n_vocab;
    for (int32_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return mor__session_fail(s, MOR_E_TOKEN, "token %d at index %d is outside the vocabulary [0, %d)", ids[i], i, V);
    return MOR_OK;
}

int mor_session_set_logit_bias(mor_session *s, const int32_t *ids, const float *bias, int32_t n) {
    if (!s) return MOR_E_INVALID;
    MOR__REFUSE_BUSY(s);
    s->err[0] = 0;
    if (n < 0) return mor__session_fail(s, MOR_E_INVALID, "n = %d: must be >= 0", n);
    if (n > 0 && (!ids || !bias)) return mor__session_fail(s, MOR_E_INVALID, "ids or bias is NULL with n = %d", n);
    int st = check_ids(s, ids, n);
    if (st) return st;
    for (int32_t i = 0; i < n; i++)
        if (isnan(bias[i]) || bias[i] == INFINITY)
            return mor__session_fail(s, MOR_E_INVALID, "bias[%d] (token %d) = %g: must be finite or -INFINITY", i,
                                     ids[i], bias[i]);
    const size_t V = (size_t)s->model->hp.n_vocab;
    if (n > 0 && !s->bias) {
        s->bias = mor__alloc(&s->alloc, V, sizeof(float), 1);
        if (!s->bias) return mor__session_fail(s, MOR_E_NOMEM, "out of memory for the logit bias of %zu tokens", V);
    }
    if (s->bias) memset(s->bias, 0, V * sizeof(float));
    int any = 0;
    for (int32_t i = 0; i < n; i++) s->bias[ids[i]] += bias[i];
    for (int32_t i = 0; i < n; i++) any |= s->bias[ids[i]] != 0.0f;
    s->has_bias = any;
    return MOR_OK;
}

int mor_session_set_allowed_tokens(mor_session *s, const int32_t *ids, int32_t n) {
    if (!s) return MOR_E_INVALID;
    MOR__REFUSE_BUSY(s);
    s->err[0] = 0;
    if (!ids) {
        if (n != 0) return mor__session_fail(s, MOR_E_INVALID, "ids is NULL with n = %d", n);
        s->n_allowed = 0;  // every token allowed
        return MOR_OK;
    }
    if (n < 1)
        return mor__session_fail(s, MOR_E_INVALID, "an allowed set of %d tokens: at least one is needed "
                                                   "(ids = NULL with n = 0 allows every token)", n);
    int st = check_ids(s, ids, n);
    if (st) return st;
    const size_t V = (size_t)s->model->hp.n_vocab;
    if (!s->allowed) {
        s->allowed = mor__alloc(&s->alloc, V, 1, 0);
        if (!s->allowed) return mor__session_fail(s, MOR_E_NOMEM, "out of memory for an allowed set of %zu tokens", V);
    }
    memset(s->allowed, 0, V);
    for (int32_t i = 0; i < n; i++) s->allowed[ids[i]] = 1;
    s->n_allowed = n;
    return MOR_OK;
}

// The logits with the bias added and the tokens outside the allowed set at -inf, into l.
static void constrain(const mor_session *s, const float *logits, float *l, int32_t V) {
    memcpy(l, logits, (size_t)V * sizeof(float));
    if (s->has_bias)
        for (int32_t i = 0; i < V; i++) l[i] += s->bias[i];
    if (s->n_allowed)
        for (int32_t i = 0; i < V; i++)
            if (!s->allowed[i]) l[i] = -INFINITY;
}

int mor_session_sample(mor_session *s, int32_t *token) {
    if (!s) return MOR_E_INVALID;
    MOR__REFUSE_BUSY(s);
    s->err[0] = 0;
    if (!token) return mor__session_fail(s, MOR_E_INVALID, "token is NULL");
    const float *logits = mor_session_logits(s, -1);
    if (!logits) return mor__session_fail(s, MOR_E_INVALID, "no logits: call mor_session_step first");
    const int32_t V = s->model->hp.n_vocab;
    const mor__sampler *sp = &s->sampler;
    const int penalty = sp->repeat_penalty != 1.0f && sp->repeat_last_n > 0;
    const int constrained = s->has_bias || s->n_allowed;
    if (sp->temperature <= 0.0f && !penalty && !constrained) {  // greedy on the logits as they are
        *token = (int32_t)s->kern->argmax(logits, V);
        return MOR_OK;
    }
    float *l = s->probs;
    if (constrained) {
        constrain(s, logits, l, V);
        int32_t best = (int32_t)s->kern->argmax(l, V);
        if (!(l[best] > -INFINITY))  // -inf, or NaN: nothing may be picked
            return mor__session_fail(s, MOR_E_INVALID, "every token is excluded by the allowed set and the logit bias");
    } else {
        memcpy(l, logits, (size_t)V * sizeof(float));
    }
    if (penalty) {
        int32_t from = MOR__MAX(0, s->n_past - sp->repeat_last_n);
        uint8_t *seen = (uint8_t *)s->cand;  // V bytes of scratch; cand is V int32
        memset(seen, 0, (size_t)V);
        for (int32_t i = from; i < s->n_past; i++) {
            int32_t t = s->tokens[i];
            if (seen[t]) continue;
            seen[t] = 1;
            l[t] = l[t] > 0 ? l[t] / sp->repeat_penalty : l[t] * sp->repeat_penalty;
        }
    }
    if (sp->temperature <= 0.0f) {
        *token = (int32_t)s->kern->argmax(l, V);
        return MOR_OK;
    }
    // Relative to the largest logit first: a tiny temperature then sends the others to -inf
    // (probability 0) instead of every logit to +-inf (inf - inf is NaN).
    const float top = l[s->kern->argmax(l, V)];
    const float shift = isfinite(top) ? top : 0.0f;
    for (int32_t i = 0; i < V; i++) l[i] = (l[i] - shift) / sp->temperature;
    int32_t k = sp->top_k > 0 && sp->top_k < V ? sp->top_k : V;
    int32_t *cand = s->cand;
    top_k_sorted(l, V, k, cand);
    while (k > 1 && !(l[cand[k - 1]] > -INFINITY)) k--;  // excluded tokens are never drawn
    // Softmax over the k candidates, in place of their logits (kept in `probs` order by rank).
    float mx = l[cand[0]];
    double sum = 0;
    for (int32_t i = 0; i < k; i++) sum += exp((double)(l[cand[i]] - mx));
    // top-p and min-p cut the sorted list.
    int32_t n = k;
    double acc = 0;
    for (int32_t i = 0; i < k; i++) {
        double pi = exp((double)(l[cand[i]] - mx)) / sum;
        if (i > 0 && pi < sp->min_p * (1.0 / sum)) {  // p_top = exp(0)/sum
            n = i;
            break;
        }
        acc += pi;
        if (acc >= sp->top_p) {
            n = i + 1;
            break;
        }
    }
    double total = 0;
    for (int32_t i = 0; i < n; i++) total += exp((double)(l[cand[i]] - mx));
    double u = next_unit(&s->rng) * total, c = 0;
    for (int32_t i = 0; i < n; i++) {
        c += exp((double)(l[cand[i]] - mx));
        if (u < c) {
            *token = cand[i];
            return MOR_OK;
        }
    }
    *token = cand[n - 1];
    return MOR_OK;
}
