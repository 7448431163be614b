// policy.c: a session's exit policy and KV strategy: validation against the model,
// installation (slot map, budget and calibration restarts), custom routers, telemetry, and the
// Beta-mixture threshold of FREE. The per-token decisions are the exit rules of route.c.
#include "session.h"

#include <stdlib.h>

#include <math.h>

void mor__policy_default(const mor_model *m, mor_exit_policy *p) {
    mor_exit_policy_init(p);
    p->policy = m->hp.router != MOR_ROUTER_NONE ? MOR_EXIT_ROUTER : MOR_EXIT_FULL;
    p->depth = m->n_steps;
    p->threshold = 0.5f;
    p->min_depth = 0;
    p->metric = MOR_CONF_TOP2_GAP;
    p->shallow = 1;
    p->adaptive = 0;
    p->kv = m->hp.kv_sharing ? MOR_KV_SHARE : MOR_KV_SKIP;
    p->budget = 0;
    p->budget_window = 32;
    p->rollback = 0;
}

// Checks a policy against the model and a session's router and batch size; resolves defaults
// into *out. Reads nothing else and writes nothing but *out and err, so state loading can
// validate a saved policy without touching the session.
int mor__policy_check(const mor_model *m, const mor_exit_policy *q, int has_router, int32_t n_batch,
                      mor_exit_policy *out, char *err, size_t err_n) {
    const mor__hparams *hp = &m->hp;
    mor_exit_policy np;
    mor__policy_default(m, &np);
    int32_t pol = q->policy == -1 ? np.policy : q->policy;
    int steps = m->n_steps;
    int per_step = pol == MOR_EXIT_CONFIDENCE || pol == MOR_EXIT_SATURATION || pol == MOR_EXIT_FREE ||
                   pol == MOR_EXIT_CUSTOM;
    switch (pol) {
    case MOR_EXIT_FULL: case MOR_EXIT_FIXED: case MOR_EXIT_CONFIDENCE: case MOR_EXIT_SATURATION:
    case MOR_EXIT_FREE: case MOR_EXIT_CUSTOM:
        break;
    case MOR_EXIT_ROUTER:
        if (hp->router == MOR_ROUTER_NONE)
            return mor__errf(err, err_n, MOR_E_UNSUPPORTED, "the router policy needs a model with a router; this one has none");
        break;
    case MOR_EXIT_CAPACITY:
        if (hp->router != MOR_ROUTER_EXPERT)
            return mor__errf(err, err_n, MOR_E_UNSUPPORTED, "the capacity policy needs an expert-choice router; this model has %s",
                        m->router_name);
        break;
    default:
        return mor__errf(err, err_n, MOR_E_INVALID, "unknown exit policy %d", pol);
    }
    if (pol == MOR_EXIT_CUSTOM && !has_router)
        return mor__errf(err, err_n, MOR_E_INVALID, "the custom policy needs a router: call mor_session_set_router()");
    if (per_step && m->steps_interleaved)
        return mor__errf(err, err_n, MOR_E_UNSUPPORTED, "%s sharing interleaves the recursions: depth can only be FULL or FIXED",
                    m->sharing_name);
    if (per_step && pol != MOR_EXIT_CUSTOM && hp->router == MOR_ROUTER_TOKEN)
        return mor__errf(err, err_n, MOR_E_UNSUPPORTED, "a token-choice model picks each token's depth once: use ROUTER, FULL, FIXED or CUSTOM");
    if ((pol == MOR_EXIT_CONFIDENCE || pol == MOR_EXIT_SATURATION || pol == MOR_EXIT_FREE) && steps < 2)
        return mor__errf(err, err_n, MOR_E_UNSUPPORTED, "this model has a single depth step (no recursions, no exit heads): nothing to exit from");
    if (pol == MOR_EXIT_FIXED && (q->depth < 1 || q->depth > steps))
        return mor__errf(err, err_n, MOR_E_INVALID, "fixed depth %d: must be 1..%d (the model's depth steps)", q->depth, steps);
    if (!(q->threshold >= 0.0f && q->threshold <= 1.0f))
        return mor__errf(err, err_n, MOR_E_INVALID, "threshold %g: must be within [0, 1]", q->threshold);
    if (q->min_depth < 0 || q->min_depth > steps)
        return mor__errf(err, err_n, MOR_E_INVALID, "min_depth %d: must be 0..%d", q->min_depth, steps);
    if (q->metric < MOR_CONF_TOP2_GAP || q->metric > MOR_CONF_ENTROPY)
        return mor__errf(err, err_n, MOR_E_INVALID, "unknown confidence metric %d", q->metric);
    if (!(q->decay_tau >= 0.0f) || !isfinite(q->decay_tau))
        return mor__errf(err, err_n, MOR_E_INVALID, "decay_tau %g: must be >= 0", q->decay_tau);
    if (q->decay_len < 0) return mor__errf(err, err_n, MOR_E_INVALID, "decay_len %d: must be >= 0", q->decay_len);
    if (pol == MOR_EXIT_FREE && (q->shallow < 1 || q->shallow >= steps))
        return mor__errf(err, err_n, MOR_E_INVALID, "shallow exit after %d steps: must be 1..%d", q->shallow, steps - 1);
    if (!(q->budget >= 0.0f) || q->budget > (float)steps)
        return mor__errf(err, err_n, MOR_E_INVALID, "budget %g: must be 0 (off) or a mean depth up to %d", q->budget, steps);
    if (q->budget > 0 && q->budget < 1.0f)
        return mor__errf(err, err_n, MOR_E_INVALID, "budget %g: every token runs at least one step, so the cap must be >= 1", q->budget);
    if (q->budget > 0 && (q->budget_window < 1 || q->budget_window > MOR__BUDGET_MAX_WINDOW))
        return mor__errf(err, err_n, MOR_E_INVALID, "budget_window %d: must be 1..%d", q->budget_window, MOR__BUDGET_MAX_WINDOW);
    if (!(q->rollback >= 0.0f) || !isfinite(q->rollback))
        return mor__errf(err, err_n, MOR_E_INVALID, "rollback %g: must be >= 0", q->rollback);
    int32_t kv = q->kv == MOR_KV_AUTO ? (pol == MOR_EXIT_FREE ? MOR_KV_SYNC : np.kv) : q->kv;
    switch (kv) {
    case MOR_KV_SKIP: case MOR_KV_PROPAGATE:
        break;
    case MOR_KV_SHARE:
        if (hp->n_rec < 2)
            return mor__errf(err, err_n, MOR_E_UNSUPPORTED, "KV sharing reuses recursion-0 K/V: this model has no recursions");
        break;
    case MOR_KV_SYNC:
        if (hp->router != MOR_ROUTER_NONE)
            return mor__errf(err, err_n, MOR_E_UNSUPPORTED, "synchronized parallel decoding re-runs stacked tokens at full depth: "
                        "not defined for a model with a router");
        if (steps < 2) return mor__errf(err, err_n, MOR_E_UNSUPPORTED, "synchronized parallel decoding needs more than one depth step");
        if (n_batch < 2) return mor__errf(err, err_n, MOR_E_INVALID, "synchronized parallel decoding needs n_batch >= 2");
        break;
    default:
        return mor__errf(err, err_n, MOR_E_INVALID, "unknown KV strategy %d", q->kv);
    }
    if (q->rollback > 0 && kv != MOR_KV_SYNC)
        return mor__errf(err, err_n, MOR_E_INVALID, "rollback needs the KV_SYNC strategy");
    // The public struct, with its defaults resolved, is the session's policy.
    np = *q;
    np.size = sizeof np;
    np.kind = MOR_PARAMS_EXIT;
    np.policy = pol;
    np.depth = pol == MOR_EXIT_FIXED ? q->depth : steps;
    np.adaptive = q->adaptive != 0;
    np.kv = kv;
    if (np.budget_window <= 0) np.budget_window = 32;
    *out = np;
    return MOR_OK;
}

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

void mor__policy_install(mor_session *s, const mor_exit_policy *np) {
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
    q.policy = r ? MOR_EXIT_CUSTOM : -1;
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
