// policy.c: a session's exit policy and KV strategy: validation against the model,
// installation (slot map, budget and calibration restarts), custom routers, telemetry, and the
// Beta-mixture threshold of FREE. The per-token decisions are the exit rules of route.c.
#include "session.h"

#include <stdlib.h>

#include <math.h>

// The same check for the live session: its KV strategy cannot change while it holds tokens.
// The message goes to the session.
static int check_policy(mor_session *s, const mor_exit_policy *q, mor_exit_policy *out) {
    mor_exit_policy np;
    int st = mor__policy_check(s->model, q, s->has_router, s->n_batch, &np, s->err, sizeof s->err);
    if (st) return st;
    if (np.kv != s->policy.kv && s->n_past > 0)
        return mor__session_fail(s, MOR_E_INVALID, "the KV strategy of a session holding %d tokens cannot change: reset it first",
                                 s->n_past);
    *out = np;
    return MOR_OK;
}

const char *mor__policy_name(int32_t policy) {
    static const char *const names[] = {"full", "fixed", "router", "capacity", "confidence", "saturation", "free", "custom"};
    return policy >= 0 && policy < (int32_t)(sizeof names / sizeof names[0]) ? names[policy] : "?";
}

const char *mor__kv_name(int32_t kv) {
    static const char *const names[] = {"auto", "skip", "share", "propagate", "sync"};
    return kv >= 0 && kv < (int32_t)(sizeof names / sizeof names[0]) ? names[kv] : "?";
}

void mor__policy_install(mor_session *s, const mor_exit_policy *np) {
    mor__log(MOR_LOG_DEBUG,
             "session %p: exit policy %s -> %s (depth %d, threshold %g, min_depth %d, metric %d, KV %s, budget %g)",
             (void *)s, mor__policy_name(s->policy.policy), mor__policy_name(np->policy), np->depth,
             (double)np->threshold, np->min_depth, np->metric, mor__kv_name(np->kv), (double)np->budget);
    int new_free = np->policy == MOR_EXIT_FREE && (s->policy.policy != MOR_EXIT_FREE || s->policy.threshold != np->threshold);
    s->policy = *np;
    if (new_free) {
        s->bmm->lambda = np->threshold;
        s->bmm->n = s->bmm->next = s->bmm->n_fits = 0;
    }
    s->budget.n = s->budget.next = 0;
    mor__kv_map(&s->kv, s->model, np->kv == MOR_KV_SHARE);
    // Policies that read exit-head confidences get room for a group of rows' logits (one head
    // product for the group); others keep one row. Not getting the room only costs speed.
    int conf = np->policy == MOR_EXIT_CONFIDENCE || np->policy == MOR_EXIT_FREE ||
               (np->policy == MOR_EXIT_CUSTOM && s->router.wants_confidence);
    int32_t g = conf ? MOR__MIN(s->n_batch, MOR__CONF_GROUP) : 1;
    if (g != s->conf_group) {  // one row lives in the session's block; a group is allocated
        float *nb = g == 1 ? s->vocab_row : mor__alloc(&s->alloc, (size_t)g * (size_t)s->model->hp.n_vocab, sizeof(float), 1);
        if (nb) {
            if (s->conf_group > 1) mor__free(&s->alloc, s->vocab_buf);
            s->vocab_buf = nb, s->conf_group = g;
        }
    }
}

int mor_session_set_exit_policy(mor_session *s, const mor_exit_policy *pol) {
    if (!s) return MOR_E_INVALID;
    MOR__REFUSE_BUSY(s);
    s->err[0] = 0;
    if (s->ps.active) return mor__session_fail(s, MOR_E_INVALID, "a token of this session is being computed by its scheduler");
    mor_exit_policy q;
    mor_exit_policy_init(&q);
    if (pol) {
        if (pol->kind != MOR_PARAMS_EXIT)
            return mor__session_fail(s, MOR_E_INVALID, "policy is not a mor_exit_policy (kind %u)", pol->kind);
        memcpy(&q, pol, MOR__MIN(pol->size, sizeof q));
    } else if (s->has_router) {
        q.policy = MOR_EXIT_CUSTOM;
    } else if (s->model->has_file_policy) {
        q = s->model->file_policy;  // the file's default (mor.policy.* keys)
    }
    mor_exit_policy np;
    int st = check_policy(s, &q, &np);
    if (st) return st;
    mor__policy_install(s, &np);
    return MOR_OK;
}

void mor__router_release(mor_session *s) {
    if (!s->has_router || !s->router.free) return;
    s->busy++;  // the free callback runs with the session marked busy, like route and reset
    s->router.free(s->router_user);
    s->busy--;
}

int mor_session_set_router(mor_session *s, const mor_router_i *r, void *user) {
    if (!s) return MOR_E_INVALID;
    MOR__REFUSE_BUSY(s);
    s->err[0] = 0;
    if (r && (r->size < offsetof(mor_router_i, wants_confidence) || r->version != MOR_ROUTER_API_VERSION || !r->route))
        return mor__session_fail(s, MOR_E_INVALID, "router: size %u, version %u (expected %d) and a route function are required",
                    r->size, r->version, MOR_ROUTER_API_VERSION);
    if (r && s->model->steps_interleaved)
        return mor__session_fail(s, MOR_E_UNSUPPORTED, "%s sharing interleaves the recursions: a router cannot stop tokens per step",
                    s->model->sharing_name);
    mor__router_release(s);
    memset(&s->router, 0, sizeof s->router);
    s->has_router = r != NULL;
    s->router_user = user;
    if (r) memcpy(&s->router, r, MOR__MIN(r->size, sizeof s->router));
    mor__session_hook_router(s);
    mor_exit_policy np;
    mor_exit_policy q;
    mor_exit_policy_init(&q);
    if (!r && s->model->has_file_policy) q = s->model->file_policy;  // the file's default
    q.policy = r ? MOR_EXIT_CUSTOM : q.policy;
    q.kv = s->policy.kv;  // keep the session's KV strategy
    if (check_policy(s, &q, &np) != MOR_OK) {  // only possible through the KV strategy
        q.kv = MOR_KV_AUTO;
        if (check_policy(s, &q, &np) != MOR_OK) return MOR_E_INTERNAL;
    }
    mor__policy_install(s, &np);
    return MOR_OK;
}

int mor_session_set_router_fn(mor_session *s, mor_route_fn route, void *user, int32_t wants_confidence) {
    if (!route) return s ? mor_session_set_router(s, NULL, NULL) : MOR_E_INVALID;
    mor_router_i r = {sizeof r, MOR_ROUTER_API_VERSION, route, NULL, NULL, wants_confidence};
    return mor_session_set_router(s, &r, user);
}

// ---- telemetry -----------------------------------------------------------------------------

int mor_session_token_info(const mor_session *s, int32_t pos, int32_t *depth, float *score, int32_t *kv) {
    if (!s || pos < 0 || pos >= s->n_past) return MOR_E_INVALID;
    if (depth) *depth = s->trace.depth[pos];
    if (score) *score = s->trace.score[pos];
    if (kv) *kv = s->trace.kv[pos];
    return MOR_OK;
}

int mor_session_get_stats(const mor_session *s, mor_session_stats *out) {
    if (!s || !out || out->size < offsetof(mor_session_stats, depth_hist)) return MOR_E_INVALID;
    mor_session_stats st;
    memset(&st, 0, sizeof st);
    st.size = (uint32_t)MOR__MIN(out->size, sizeof st);
    st.n_tokens = s->st.tokens;
    st.steps_run = s->st.steps;
    st.layer_evals = s->st.evals;
    st.layer_evals_full = s->st.evals_full;
    st.kv_bytes = mor__kv_bytes(&s->kv);
    st.deep_passes = s->st.deep;
    st.rollbacks = s->st.rollbacks;
    st.mean_depth = s->st.tokens ? (float)((double)s->st.steps / (double)s->st.tokens) : 0.0f;
    st.threshold = s->policy.policy == MOR_EXIT_FREE && s->policy.adaptive ? s->bmm->lambda : s->policy.threshold;
    memcpy(st.depth_hist, s->st.hist, sizeof st.depth_hist);
    memcpy(out, &st, st.size);
    return MOR_OK;
}

int32_t mor_session_rollback(const mor_session *s) { return s ? s->rolled_back : 0; }

// ---- FREE adaptive threshold: a two-component Beta mixture -------------------------------
// Each component is fitted by the method of moments to the confidences of its own class
// (agreeing / disagreeing shallow and deep predictions), as the reference estimator does. The
// threshold is the lowest grid value in [0.3, 0.9] from which the posterior of the agreeing
// component exceeds zeta = 0.4 (mixture weights ignored), counted from the top of the grid.

static void beta_fit(const float *x, const uint8_t *y, int32_t n, int cls, double *a, double *b) {
    double m = 0, v = 0;
    int32_t c = 0;
    for (int32_t i = 0; i < n; i++)
        if (y[i] == cls) m += fmin(fmax(x[i], 1e-4), 1 - 1e-4), c++;
    if (c < 2) {
        *a = *b = 1;  // flat: no information
        return;
    }
    m /= c;
    for (int32_t i = 0; i < n; i++)
        if (y[i] == cls) {
            double d = fmin(fmax(x[i], 1e-4), 1 - 1e-4) - m;
            v += d * d;
        }
    v /= c;
    if (v < 1e-8) v = 1e-8;
    double k = m * (1 - m) / v - 1;
    if (k < 1e-3) k = 1e-3;
    *a = m * k;
    *b = (1 - m) * k;
}

static double beta_pdf(double x, double a, double b) {
    return exp((a - 1) * log(x) + (b - 1) * log(1 - x) + lgamma(a + b) - lgamma(a) - lgamma(b));
}

void mor__bmm_refit(mor_session *s) {
    mor__bmm *bm = s->bmm;
    if (!bm || bm->n < 4 || bm->n_fits >= 300) return;
    double a1, b1, a0, b0;
    beta_fit(bm->conf, bm->agree, bm->n, 1, &a1, &b1);
    beta_fit(bm->conf, bm->agree, bm->n, 0, &a0, &b0);
    int agree_hi = a1 / (a1 + b1) >= a0 / (a0 + b0);
    int marked = 0;
    for (int i = 0; i < 10; i++) {
        double x = 0.3 + 0.6 * i / 9.0;
        double p1 = beta_pdf(x, a1, b1), p0 = beta_pdf(x, a0, b0);
        double post = (agree_hi ? p1 : p0) / (p1 + p0 + 1e-300);
        if (post > 0.4) marked++;
    }
    int idx = 10 - marked;
    if (idx < 0) idx = 0;
    if (idx > 9) idx = 9;
    bm->lambda = (float)(0.3 + 0.6 * idx / 9.0);
    bm->n_fits++;
}
