// exit.c: the rules an exit policy must meet for a model (mor__policy_check, shared by
// mor_session_set_exit_policy, state loading and model loading), the built-in default policy,
// and the model's default policy: the built-in one with the file's `mor.policy.<field>` keys
// applied (docs/FORMAT.md), read and checked at load.
#include "model.h"

#include <math.h>
#include <stdio.h>

static void builtin_default(const mor_model *m, mor_exit_policy *p) {
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
    builtin_default(m, &np);
    int32_t pol = q->policy == -1 ? (m->has_file_policy ? m->file_policy.policy : np.policy) : q->policy;
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


void mor__policy_default(const mor_model *m, mor_exit_policy *p) {
    if (m->has_file_policy) *p = m->file_policy;
    else builtin_default(m, p);
}

// The `mor.policy.` keys of the file: each names a field of mor_exit_policy (the params field
// table of status.c) and holds a number (integer, float or bool). They are applied over the
// built-in default in file order and the result is checked with the rules of
// mor_session_set_exit_policy for a session without a custom router and with n_batch >= 2. Any
// problem fails the load with MOR_E_FORMAT naming the key.
#define KEY_PREFIX "mor.policy."

int mor__policy_read_file(mor_model *m, char *err, size_t err_n) {
    mor_exit_policy q;
    builtin_default(m, &q);
    q.kv = MOR_KV_AUTO;  // resolved by the check, as for a policy a host sets
    const size_t pn = sizeof KEY_PREFIX - 1;
    int any = 0;
    char keys[256] = "";  // the keys read, for the message of a refused policy
    for (uint64_t i = 0; i < m->gguf.n_kv; i++) {
        const mor__gguf_kv *kv = &m->gguf.kv[i];
        if (kv->key.len <= pn || memcmp(kv->key.ptr, KEY_PREFIX, pn) != 0) continue;
        int kl = (int)MOR__MIN(kv->key.len, 120);
        char field[32];
        size_t fl = (size_t)(kv->key.len - pn);
        if (fl >= sizeof field || memchr(kv->key.ptr + pn, 0, fl))
            return mor__errf(err, err_n, MOR_E_FORMAT, "key '%.*s': not a field of mor_exit_policy", kl, kv->key.ptr);
        memcpy(field, kv->key.ptr + pn, fl);
        field[fl] = 0;
        double v;
        if (kv->type == MOR__GGUF_FLOAT32 || kv->type == MOR__GGUF_FLOAT64) {
            float f = 0;
            char full[64];
            snprintf(full, sizeof full, KEY_PREFIX "%s", field);
            if (mor__gguf_get_f32(&m->gguf, full, &f, err, err_n)) return MOR_E_FORMAT;
            v = f;
        } else if (kv->type == MOR__GGUF_BOOL) {
            v = kv->data[0] != 0;
        } else if (kv->type != MOR__GGUF_STRING && kv->type != MOR__GGUF_ARRAY) {
            uint64_t u = 0;
            int sg = 0;
            mor__gguf_decode_int(kv->data, kv->type, &u, &sg);
            v = sg ? (double)(int64_t)u : (double)u;
        } else {
            return mor__errf(err, err_n, MOR_E_FORMAT, "key '%.*s': must be a number, not a %s", kl, kv->key.ptr,
                             kv->type == MOR__GGUF_STRING ? "string" : "array");
        }
        if (!isfinite(v))
            return mor__errf(err, err_n, MOR_E_FORMAT, "key '%.*s' is not a finite number", kl, kv->key.ptr);
        int s = mor_params_set(&q, field, v);
        if (s == MOR_E_NOT_FOUND || !strcmp(field, "size") || !strcmp(field, "kind"))
            return mor__errf(err, err_n, MOR_E_FORMAT, "key '%.*s': '%s' is not a field of mor_exit_policy", kl,
                             kv->key.ptr, field);
        if (s) return mor__errf(err, err_n, MOR_E_FORMAT, "key '%.*s' = %g: out of range for the field's type", kl,
                                kv->key.ptr, v);
        size_t o = strlen(keys);
        if (o + 4 < sizeof keys) snprintf(keys + o, sizeof keys - o, "%s%.*s", any ? ", " : "", kl, kv->key.ptr);
        any = 1;
    }
    if (!any) return MOR_OK;
    char why[200];
    mor_exit_policy np;
    if (mor__policy_check(m, &q, 0, 2, &np, why, sizeof why))
        return mor__errf(err, err_n, MOR_E_FORMAT, "the exit policy of the file's keys %s is refused: %s", keys, why);
    m->file_policy = np;
    m->has_file_policy = 1;
    return MOR_OK;
}
