// forward.c: the pass cursor: embedding, the unrolled layers (shared weights referenced, not
// copied), depth steps whose rows the exit rules of route.c choose, the KV strategies for
// skipped layers, final norm and output projection.
//
// Semantics (docs/DESIGN.md, docs/FORMAT.md §3.4 and §4, docs/POLICIES.md):
// - The embedding row is scaled and the logits of every head soft-capped when the
//   architecture says so (arch.h).
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

#include <math.h>

static void mm(mor_session *s, const mor__mat *W, const float *x, int64_t T, float *y) { mor__matmul(&s->w, W, x, T, y); }

// Logits of an exit head (or the final head: head < 0) for one state h into out (n_vocab).
static void head_logits(mor_session *s, int32_t head, const float *h, float *out) {
    const mor_model *m = s->model;
    const float *norm = head >= 0 ? m->exits[head].norm : m->output_norm;
    const mor__mat *w = head >= 0 ? &m->exits[head].out : &m->output;
    s->kern->rmsnorm(s->w.xb, h, norm, m->hp.n_embd, m->hp.rms_eps);
    mm(s, w, s->w.xb, 1, out);
    mor__arch_softcap(out, m->hp.n_vocab, m->hp.final_softcap);
}

// ---- step decisions ------------------------------------------------------------------------

typedef mor__pass pass;

// What the exit rules read of this session.
static mor__route_ctx route_ctx(mor_session *s) {
    const mor_exit_policy *p = &s->policy;
    return (mor__route_ctx){s->model, p, &s->r, &s->rt, s->has_router ? &s->hook : NULL, s->ps.T, s->n_ctx,
                            p->adaptive && s->bmm ? s->bmm->lambda : p->threshold};
}

// A row leaves the steps after running `ran` steps.
static void stop_row(mor_session *s, pass *ps, int32_t t, int32_t ran) {
    const mor_model *m = s->model;
    const mor__hparams *hp = &m->hp;
    mor__rows *r = &s->r;
    const int d = hp->n_embd;
    r->alive[t] = 0;
    r->exit_step[t] = ran;
    float *xt = r->x + (size_t)t * d;
    if (s->policy.kv == MOR_KV_SYNC)  // the state a stacked row resumes from (a unique last layer may follow)
        memcpy(r->h_exit + (size_t)t * d, xt, (size_t)d * sizeof(float));
    if (hp->router == MOR_ROUTER_TOKEN && ran > 0) {  // H = H^1 + p_i x after its last step i
        float g = r->depth_p[(size_t)t * hp->n_rec + (ran - 1)];
        const float *h1 = r->h_in + (size_t)t * d;
        for (int j = 0; j < d; j++) xt[j] = h1[j] + g * xt[j];
        r->gate[t] = g;
    }
    if (t >= ps->T || ran >= m->n_steps) return;
    if (s->policy.kv == MOR_KV_PROPAGATE) {
        const int half = hp->head_dim / 2;
        for (int32_t l = 0; l < hp->n_layer; l++)
            if (m->layer_step[l] >= ran)
                mor__kv_propagate(&s->kv, &s->w, m, l, xt, r->tpos[t], r->rope_cos + (size_t)t * half,
                                  r->rope_sin + (size_t)t * half);
        s->trace.kv[r->tpos[t]] = MOR_KVSTAT_PROPAGATED;
    } else if (s->policy.kv == MOR_KV_SYNC) {
        s->trace.kv[r->tpos[t]] = MOR_KVSTAT_DEFERRED;
    }
}

// The custom router as route.c calls it: with the session marked busy (what the callback may
// call is in mor.h), and its failure or a free from inside it turned into a status.
static int call_router(void *owner, const mor_route_batch *b, uint8_t *keep) {
    mor_session *s = owner;
    s->busy++;
    int32_t rc = s->router.route(s->router_user, b, keep);
    s->busy--;
    if (s->free_pending) return mor__session_fail(s, MOR_E_CANCELLED, "the router callback freed its session");
    if (rc != 0) return mor__session_fail(s, MOR_E_CALLBACK, "the router callback returned %d at step %d", rc, b->step);
    return MOR_OK;
}

void mor__session_hook_router(mor_session *s) {
    s->hook = (mor__router_hook){call_router, s, s->router.wants_confidence};
}

// Decides the rows that run step k; fills act (rows in increasing order) and returns their
// count, or a negative status.
static int32_t begin_step(mor_session *s, pass *ps, int32_t k) {
    const mor_model *m = s->model;
    const mor_exit_policy *p = &s->policy;
    mor__rows *r = &s->r;
    const int d = m->hp.n_embd;
    uint8_t *keep = s->rt.keep;
    int32_t nc = 0;
    for (int32_t t = 0; t < ps->T; t++)
        if (r->alive[t]) r->act[nc++] = t;
    const mor__route_ctx c = route_ctx(s);
    mor__route_score(&c, &s->w, k, r->act, nc);  // the gate is part of the model's function
    if (nc) {
        int st = mor__exit_rule_of(p->policy)->decide(&c, k, r->act, nc, keep);
        if (st) return st;
    }
    int32_t n = 0;
    for (int32_t i = 0; i < nc; i++) {
        int32_t t = r->act[i];
        int on = keep[i] != 0;
        if (k < p->min_depth || ps->force) on = 1;
        if (k >= r->step_cap[t]) on = 0;
        if (on) r->act[n++] = t;
        else stop_row(s, ps, t, k);
    }
    ps->any_new = n > 0;
    // Stacked rows join at the step where they stopped, if a new row goes on there.
    for (int32_t t = ps->T; t < ps->R; t++)
        if (!r->joined[t] && r->row_start[t] == k && ps->any_new) r->joined[t] = 1, r->alive[t] = 1;
    for (int32_t t = ps->T; t < ps->R; t++)
        if (r->joined[t] && r->alive[t]) {
            if (!ps->any_new) stop_row(s, ps, t, k);  // no deep pass beyond here
            else r->act[n++] = t;
        }
    for (int32_t i = 0; i < n; i++) {
        int32_t t = r->act[i];
        memcpy(r->xa + (size_t)i * d, r->x + (size_t)t * d, (size_t)d * sizeof(float));
        memcpy(r->h_step + (size_t)t * d, r->x + (size_t)t * d, (size_t)d * sizeof(float));
        r->tok_depth[t] = k + 1;
    }
    return n;
}

// Writes the step's output back and measures what the next decision needs.
// The state row t (active row i) leaves a step with, into out: the step's output, gated by
// the expert-choice router's weight when there is one.
static void step_out(const mor_session *s, int32_t i, int32_t t, float *out) {
    const mor__hparams *hp = &s->model->hp;
    const int d = hp->n_embd;
    const float *ya = s->r.xa + (size_t)i * d, *hin = s->r.h_step + (size_t)t * d;
    if (hp->router == MOR_ROUTER_EXPERT) {
        float g = hp->router_additive ? 1.0f : s->r.gate[t];
        for (int j = 0; j < d; j++) out[j] = hin[j] + g * ya[j];
    } else {
        memcpy(out, ya, (size_t)d * sizeof(float));
    }
}

// Whether the policy reads an exit head's confidence after step k.
static int needs_conf(mor_session *s, int32_t k) {
    if (k + 1 >= s->model->n_steps) return 0;
    const mor__route_ctx c = route_ctx(s);
    return mor__exit_rule_of(s->policy.policy)->reads_conf(&c, k);
}

static void end_step(mor_session *s, pass *ps, int32_t k, int32_t n) {
    const mor_model *m = s->model;
    const mor__hparams *hp = &m->hp;
    const mor_exit_policy *p = &s->policy;
    const int d = hp->n_embd;
    const float *given = s->conf_logits;
    s->conf_logits = NULL;
    for (int32_t i = 0; i < n; i++) step_out(s, i, s->r.act[i], s->r.x + (size_t)s->r.act[i] * d);
    if (k + 1 >= m->n_steps) return;
    if (needs_conf(s, k)) {
        // Logits of the exit head for the rows that go on: handed over by a scheduler, or
        // computed here, up to MOR__CONF_GROUP rows per product.
        const int32_t head = m->step_exit[k], G = s->conf_group;
        const float *norm = head >= 0 ? m->exits[head].norm : m->output_norm;
        int32_t rows[MOR__CONF_GROUP], g = 0, j = 0;
        for (int32_t i = 0; i <= n; i++) {
            int32_t t = i < n ? s->r.act[i] : -1;
            if (i < n && t >= ps->T) continue;
            if (given && t >= 0) {
                s->r.conf[t] = mor__confidence(s->kern, given + (size_t)j++ * hp->n_vocab, hp->n_vocab, p->metric, &s->r.shallow_top[t]);
                continue;
            }
            if (t >= 0) {
                s->kern->rmsnorm(s->w.xb + (size_t)g * d, s->r.x + (size_t)t * d, norm, d, hp->rms_eps);
                rows[g++] = t;
            }
            if (g == G || (t < 0 && g > 0)) {
                mm(s, head >= 0 ? &m->exits[head].out : &m->output, s->w.xb, g, s->vocab_buf);
                mor__arch_softcap(s->vocab_buf, (int64_t)g * hp->n_vocab, hp->final_softcap);
                for (int32_t q = 0; q < g; q++)
                    s->r.conf[rows[q]] = mor__confidence(s->kern, s->vocab_buf + (size_t)q * hp->n_vocab, hp->n_vocab, p->metric,
                                                  &s->r.shallow_top[rows[q]]);
                g = 0;
            }
        }
    }
    for (int32_t i = 0; i < n; i++) {
        int32_t t = s->r.act[i];
        if (t >= ps->T) continue;
        if (p->policy == MOR_EXIT_SATURATION)
            s->r.cosv[t] = mor__cosine(s->r.x + (size_t)t * d, s->r.h_step + (size_t)t * d, d);
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
        int32_t t = s->r.act[i];
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

// Loads the new tokens and the stack into rows (ps->R: their count).
static void load_rows(mor_session *s, pass *ps, const int32_t *tokens) {
    const mor_model *m = s->model;
    const mor__hparams *hp = &m->hp;
    const int d = hp->n_embd, half = hp->head_dim / 2;
    const mor_exit_policy *p = &s->policy;
    for (int32_t t = 0; t < ps->T; t++) {
        const uint8_t *row = (const uint8_t *)m->tok_embd.data +
                             (size_t)tokens[t] * (size_t)mor__dtype_row_bytes(m->tok_embd.type, d);
        s->kern->to_f32[m->tok_embd.type](row, s->r.x + (size_t)t * d, d);
        if (hp->embd_scale != 1.0f)
            for (int j = 0; j < d; j++) s->r.x[(size_t)t * d + j] *= hp->embd_scale;
        s->r.tpos[t] = s->n_past + t;
        s->r.row_start[t] = 0;
        s->r.joined[t] = 1;
        s->r.alive[t] = 1;
        s->r.exit_step[t] = m->n_steps;
        s->r.conf[t] = s->r.cosv[t] = s->r.rscore[t] = NAN;
        s->r.shallow_top[t] = -1;
        s->r.tok_depth[t] = 0;
        s->r.act_pos[t] = t;
        s->trace.kv[s->r.tpos[t]] = MOR_KVSTAT_NONE;
        s->r.step_cap[t] = mor__budget_cap(&s->budget, p, m->n_steps);
    }
    ps->R = ps->T;
    for (int32_t j = 0; j < s->stack.n; j++) {
        int32_t t = ps->R++;
        memcpy(s->r.x + (size_t)t * d, s->stack.h + (size_t)j * d, (size_t)d * sizeof(float));
        s->r.tpos[t] = s->stack.pos[j];
        s->r.row_start[t] = s->stack.step[j];
        s->r.joined[t] = 0;
        s->r.alive[t] = 0;
        s->r.exit_step[t] = s->stack.step[j];
        s->r.conf[t] = s->stack.conf[j];
        s->r.shallow_top[t] = s->stack.top[j];
        s->r.tok_depth[t] = s->stack.step[j];
        s->r.step_cap[t] = m->n_steps;
        s->r.act_pos[t] = t;
    }
    for (int32_t t = 0; t < ps->R; t++) {
        double pp = (double)s->r.tpos[t];
        for (int i = 0; i < half; i++) {
            double ang = pp * m->rope_inv_freq[i];
            s->r.rope_cos[(size_t)t * half + i] = (float)cos(ang);
            s->r.rope_sin[(size_t)t * half + i] = (float)sin(ang);
        }
    }
}

// Entry n of the stack being rebuilt: row t, with hidden state hs.
static void keep_row(mor_session *s, int32_t n, int32_t t, const float *hs) {
    const int d = s->model->hp.n_embd;
    mor__stack *k = &s->stack_next;
    memcpy(k->h + (size_t)n * d, hs, (size_t)d * sizeof(float));
    k->pos[n] = s->r.tpos[t];
    k->step[n] = s->r.exit_step[t];
    k->conf[n] = s->r.conf[t];
    k->top[n] = s->r.shallow_top[t];
}

// After the pass: telemetry, the KV_SYNC stack and its calibration and rollback.
static void finish_rows(mor_session *s, pass *ps, const int32_t *tokens) {
    const mor_model *m = s->model;
    const mor__hparams *hp = &m->hp;
    const mor_exit_policy *p = &s->policy;
    const int d = hp->n_embd;
    for (int32_t t = 0; t < ps->T; t++) {
        int32_t pos = s->r.tpos[t], dep = s->r.tok_depth[t];
        s->depths[t] = dep;
        s->trace.depth[pos] = (int8_t)MOR__MIN(dep, 127);
        float sc = hp->router != MOR_ROUTER_NONE ? s->r.rscore[t] : s->r.conf[t];
        if (p->policy == MOR_EXIT_SATURATION) sc = s->r.cosv[t];
        s->trace.score[pos] = sc;
        if (s->trace.kv[pos] == MOR_KVSTAT_NONE)
            s->trace.kv[pos] = dep >= m->n_steps ? MOR_KVSTAT_FULL : MOR_KVSTAT_COMPUTED;
        s->st.tokens++;
        s->st.steps += dep;
        s->st.hist[MOR__MIN(dep, MOR_STATS_MAX_DEPTH)]++;
        s->st.evals_full += hp->n_layer;
        mor__budget_record(&s->budget, p, ps->T - 1 - t, dep);  // in the entry reserved for it
    }
    if (p->kv != MOR_KV_SYNC) return;
    // Followers that completed the deep pass now hold full-depth K/V.
    int deep = 0;
    for (int32_t t = 0; t < ps->T; t++) deep |= s->r.exit_step[t] >= m->n_steps;
    if (deep) s->st.deep++;
    int32_t keep_n = 0;
    s->rollback_to = -1;
    for (int32_t t = ps->T; t < ps->R; t++) {
        int32_t pos = s->r.tpos[t];
        if (s->r.joined[t] && s->r.exit_step[t] >= m->n_steps) {
            s->trace.kv[pos] = MOR_KVSTAT_SYNCED;  // depth stays the one its output came from
            if (p->adaptive || p->rollback > 0) {
                head_logits(s, -1, s->r.x + (size_t)t * d, s->vocab_buf);
                int32_t top;
                mor__confidence(s->kern, s->vocab_buf, hp->n_vocab, MOR_CONF_TOP2_GAP, &top);
                if (p->adaptive && s->bmm && s->r.shallow_top[t] >= 0 && !isnan(s->r.conf[t])) {
                    mor__bmm *b = s->bmm;
                    b->conf[b->next] = s->r.conf[t];
                    b->agree[b->next] = (uint8_t)(top == s->r.shallow_top[t]);
                    b->next = (b->next + 1) % MOR__BMM_CAP;
                    if (b->n < MOR__BMM_CAP) b->n++;
                }
                int32_t next = pos + 1;
                int given = next < s->n_ctx && s->trace.given[next];  // prompt tokens stay
                if (p->rollback > 0 && s->rollback_to < 0 && !given) {
                    int32_t tok = next < s->n_past ? s->tokens[next] : tokens[next - s->n_past];
                    if (mor__cross_entropy(s->vocab_buf, hp->n_vocab, tok) > p->rollback) {
                        s->rollback_to = next;
                        memcpy(s->logits, s->vocab_buf, (size_t)hp->n_vocab * sizeof(float));
                    }
                }
            }
            continue;
        }
        // still waiting (not joined): its saved state; joined but the pass stopped early: the
        // state where it stopped
        keep_row(s, keep_n++, t, s->r.joined[t] ? s->r.h_exit + (size_t)t * d : s->r.x + (size_t)t * d);
    }
    for (int32_t t = 0; t < ps->T; t++)
        if (s->r.exit_step[t] < m->n_steps) keep_row(s, keep_n++, t, s->r.h_exit + (size_t)t * d);
    // Positions must stay increasing: sort the (small) stack by position.
    mor__stack *k = &s->stack_next;
    for (int32_t i = 1; i < keep_n; i++)
        for (int32_t j = i; j > 0 && k->pos[j - 1] > k->pos[j]; j--) {
            int32_t a = k->pos[j], b = k->step[j], c = k->top[j];
            float f = k->conf[j];
            k->pos[j] = k->pos[j - 1], k->step[j] = k->step[j - 1], k->top[j] = k->top[j - 1];
            k->conf[j] = k->conf[j - 1];
            k->pos[j - 1] = a, k->step[j - 1] = b, k->top[j - 1] = c, k->conf[j - 1] = f;
            for (int q = 0; q < d; q++) {
                float v = k->h[(size_t)j * d + q];
                k->h[(size_t)j * d + q] = k->h[(size_t)(j - 1) * d + q];
                k->h[(size_t)(j - 1) * d + q] = v;
            }
        }
    k->n = keep_n;
    const mor__stack old = s->stack;  // the rebuilt stack becomes the stack
    s->stack = *k;
    *k = old;
}

// ---- the pass, one layer at a time ---------------------------------------------------------

// Rows still in the steps ran them all.
static void leave_steps(mor_session *s) {
    const mor_model *m = s->model;
    pass *ps = &s->ps;
    for (int32_t t = 0; t < ps->R; t++)
        if (s->r.alive[t]) {
            if (m->hp.router == MOR_ROUTER_TOKEN) stop_row(s, ps, t, m->n_steps);
            s->r.alive[t] = 0;
            s->r.exit_step[t] = m->n_steps;
        }
}

// A layer every joined row runs: their list, gathered when some rows do not take part.
static void gather_joined(mor_session *s) {
    pass *ps = &s->ps;
    const int d = s->model->hp.n_embd;
    int32_t n = 0;
    for (int32_t t = 0; t < ps->R; t++)
        if (s->r.joined[t]) s->r.act[n++] = t;
    ps->n_act = n;
    ps->gathered = n != ps->R;
    if (ps->gathered)
        for (int32_t i = 0; i < n; i++)
            memcpy(s->r.xa + (size_t)i * d, s->r.x + (size_t)s->r.act[i] * d, (size_t)d * sizeof(float));
}

// Moves the cursor to the next layer that has rows to run: opens steps (the policy decides
// who runs them), skips steps nobody runs, finalizes rows before a unique last layer, and
// gathers the rows of unique layers when not every row takes part.
static int settle(mor_session *s) {
    const mor_model *m = s->model;
    const mor__hparams *hp = &m->hp;
    pass *ps = &s->ps;
    while (ps->l < hp->n_layer) {
        int32_t l = ps->l, lk = m->layer_step[l];
        if (lk < 0) {
            if (ps->seen_steps == 1) {  // leaving the steps
                leave_steps(s);
                ps->seen_steps = 2;
            }
            gather_joined(s);
            return MOR_OK;
        }
        if (!ps->seen_steps) ps->seen_steps = 1;
        if (m->steps_interleaved) {  // sequence sharing: FULL or FIXED only
            int32_t limit = s->policy.policy == MOR_EXIT_FIXED ? s->policy.depth : m->n_steps;
            if (lk >= limit) {
                ps->l++;
                continue;
            }
            gather_joined(s);
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
    ps->force = s->policy.kv == MOR_KV_SYNC && s->stack.n >= s->n_batch / 2;
    ps->active = 1;
    load_rows(s, ps, s->tokens + s->n_past);
    return settle(s);
}

int32_t mor__pass_next(const mor_session *s) { return s->ps.l < s->model->hp.n_layer ? s->ps.l : -1; }

void mor__pass_rows(mor_session *s, mor__layer_rows *p) {
    const pass *ps = &s->ps;
    const mor_model *m = s->model;
    int step_layer = m->layer_step[ps->l] >= 0 && !m->steps_interleaved;
    p->kv = &s->kv;
    p->tpos = s->r.tpos;
    p->rope_cos = s->r.rope_cos;
    p->rope_sin = s->r.rope_sin;
    p->evals = &s->st.evals;
    p->l = ps->l;
    p->n = ps->n_act;
    if (step_layer || ps->gathered) {
        p->xr = s->r.xa;
        p->idx = s->r.act;
    } else {  // every row, in place
        p->xr = s->r.x;
        p->idx = s->r.act_pos;
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
                memcpy(s->r.x + (size_t)s->r.act[i] * d, s->r.xa + (size_t)i * d, (size_t)d * sizeof(float));
        if (lk >= 0)  // interleaved step layer: its rows ran step lk
            for (int32_t t = 0; t < ps->R; t++)
                if (s->r.joined[t] && lk + 1 > s->r.tok_depth[t]) s->r.tok_depth[t] = lk + 1;
    }
    s->conf_logits = NULL;  // used by this step's end, or not at all
    ps->l++;
    return settle(s);
}

// At the end of the layers: rows still in the steps ran them all; with interleaved steps a
// row's depth is the steps it ran.
static void close_steps(mor_session *s) {
    const mor_model *m = s->model;
    pass *ps = &s->ps;
    leave_steps(s);
    if (m->steps_interleaved)
        for (int32_t t = 0; t < ps->T; t++) s->r.exit_step[t] = s->r.tok_depth[t];
}

int mor__pass_head_row(mor_session *s, float *xn) {
    const mor_model *m = s->model;
    pass *ps = &s->ps;
    close_steps(s);
    int32_t t = ps->T - 1;
    if (ps->logits_all || s->logit_row0 != 0) return 0;  // one row of logits: the last
    if (!m->has_last && s->r.exit_step[t] < m->n_steps && s->r.exit_step[t] > 0 && m->step_exit[s->r.exit_step[t] - 1] >= 0)
        return 0;
    s->kern->rmsnorm(xn, s->r.x + (size_t)t * m->hp.n_embd, m->output_norm, m->hp.n_embd, m->hp.rms_eps);
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
        if (!m->has_last && s->r.exit_step[t] < m->n_steps && s->r.exit_step[t] > 0) head = m->step_exit[s->r.exit_step[t] - 1];
        s->r.row_head[t] = head;
        if (head != -1) same = 0;
    }
    float *lout = s->logits + (size_t)s->logit_row0 * hp->n_vocab;
    if (same) {
        for (int32_t t = first; t < T; t++)
            s->kern->rmsnorm(s->w.xb + (size_t)(t - first) * d, s->r.x + (size_t)t * d, m->output_norm, d, hp->rms_eps);
        mm(s, &m->output, s->w.xb, T - first, lout);
        mor__arch_softcap(lout, (int64_t)(T - first) * hp->n_vocab, hp->final_softcap);
    } else {
        for (int32_t t = first; t < T; t++)
            head_logits(s, s->r.row_head[t], s->r.x + (size_t)t * d, lout + (size_t)(t - first) * hp->n_vocab);
    }
    s->n_logits = T - first;
    finish_rows(s, ps, s->tokens + s->n_past);
    ps->active = 0;
}

int mor__forward(mor_session *s, const int32_t *tokens, int32_t T, int logits_all) {
    return mor__forward_until(s, tokens, T, logits_all, NULL, NULL, NULL);
}

int mor__forward_until(mor_session *s, const int32_t *tokens, int32_t T, int logits_all,
                       int (*stop)(void *ctx, int32_t layer), void *ctx, int *stopped) {
    if (s->tokens + s->n_past != tokens) memcpy(s->tokens + s->n_past, tokens, (size_t)T * sizeof(int32_t));
    if (stopped) *stopped = 0;
    int st = mor__pass_begin(s, T, logits_all);
    for (int32_t l; st == MOR_OK && (l = mor__pass_next(s)) >= 0;) {
        if (stop && l > 0 && stop(ctx, l)) {  // the pass is dropped
            s->ps.active = 0;
            *stopped = 1;
            return MOR_OK;
        }
        mor__layer_rows p;
        mor__pass_rows(s, &p);
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
