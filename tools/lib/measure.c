// measure.c: scoring an exit policy on text in windows (mor-sweep, mor-calibrate) and the
// Hoeffding-Bentkus p-value of mor-calibrate's Learn-then-Test procedure (measure.h).
#include "measure.h"
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 64  // tokens per step (n_batch)

int mor__measure_text(const mor_model *m, const char *path, long max_tokens, int32_t **tok, int32_t *n,
                      char *err, size_t err_n) {
    *tok = NULL;
    *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return mor__errf(err, err_n, MOR_E_IO, "cannot open '%s': %s", path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    char *text = malloc(cap);
    while (text) {
        if (len == cap) {
            char *nt = cap < ((size_t)1 << 30) ? realloc(text, cap * 2) : NULL;
            if (!nt) {
                free(text);
                text = NULL;
                break;
            }
            text = nt, cap *= 2;
        }
        size_t r = fread(text + len, 1, cap - len, f);
        len += r;
        if (r == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (!text) return mor__errf(err, err_n, MOR_E_NOMEM, "'%s': out of memory (or larger than 1 GiB)", path);
    if (bad) {
        free(text);
        return mor__errf(err, err_n, MOR_E_IO, "read error on '%s'", path);
    }
    size_t need = 0;
    int s = mor_tokenize(m, text, len, NULL, 0, 0, &need);
    if (s != MOR_OK && s != MOR_E_BUFFER_SMALL) {
        free(text);
        return mor__errf(err, err_n, s, "cannot tokenize '%s': %s", path, mor_status_str(s));
    }
    int32_t *t = malloc(sizeof(int32_t) * (need + 1));
    size_t got = 0;
    s = t ? mor_tokenize(m, text, len, t, need, 0, &got) : MOR_E_NOMEM;
    free(text);
    if (s) {
        free(t);
        return mor__errf(err, err_n, s, "cannot tokenize '%s': %s", path, mor_status_str(s));
    }
    if (max_tokens > 0 && (long)got > max_tokens) got = (size_t)max_tokens;
    if (got > INT32_MAX / 2) got = INT32_MAX / 2;
    *tok = t;
    *n = (int32_t)got;
    return MOR_OK;
}

int32_t mor__measure_n_windows(int32_t n, int32_t ctx) {
    int32_t w = 0;
    for (int64_t w0 = 0; w0 + 1 < n; w0 += ctx) w++;
    return w;
}

void mor__measure_window(int32_t n, int32_t ctx, int32_t w, int64_t *first, int32_t *count) {
    int64_t w0 = (int64_t)w * ctx;
    int64_t len = n - w0 < ctx ? n - w0 : ctx;
    *first = w0 - w;  // each earlier window scored ctx - 1 positions
    *count = (int32_t)(len - 1);
}

int mor__measure_policy(const mor_model *m, const mor_exit_policy *ep, const int32_t *tok, int32_t n, int32_t ctx,
                        float *nll, int32_t *argmax, mor__measure *out, char *err, size_t err_n) {
    int32_t V = (int32_t)mor_model_get_int(m, MOR_INFO_N_VOCAB);
    memset(out, 0, sizeof *out);
    mor_session_params p;
    mor_session_params_init(&p);
    p.n_ctx = ctx;
    p.n_batch = CHUNK;
    p.flags = MOR_SESSION_LOGITS_ALL;
    mor_session *s;
    int st = mor_session_create(m, &p, &s, err, err_n);
    if (st) return st;
    if ((st = mor_session_set_exit_policy(s, ep))) {
        mor__errf(err, err_n, st, "%s", mor_session_last_error(s));
        mor_session_free(s);
        return st;
    }
    int64_t steps = 0, tokens = 0, evals = 0, full = 0, k = 0;
    for (int64_t w0 = 0; w0 + 1 < n; w0 += ctx) {
        int32_t len = n - w0 < ctx ? (int32_t)(n - w0) : ctx;
        mor_session_reset(s);
        for (int32_t off = 0; off < len; off += CHUNK) {
            int32_t c = len - off < CHUNK ? len - off : CHUNK;
            if ((st = mor_session_step(s, tok + w0 + off, c))) {
                mor__errf(err, err_n, st, "%s", mor_session_last_error(s));
                mor_session_free(s);
                return st;
            }
            for (int32_t i = 0; i < c && off + i + 1 < len; i++) {
                const float *l = mor_session_logits(s, i);
                float mx = l[0];
                int32_t am = 0;
                for (int32_t v = 1; v < V; v++)
                    if (l[v] > mx) mx = l[v], am = v;
                double sum = 0;
                for (int32_t v = 0; v < V; v++) sum += exp((double)(l[v] - mx));
                double x = log(sum) - (double)(l[tok[w0 + off + i + 1]] - mx);
                out->nll += x;
                if (nll) nll[k] = (float)x;
                if (argmax) argmax[k] = am;
                k++;
            }
        }
        mor_session_stats stt;
        memset(&stt, 0, sizeof stt);
        stt.size = sizeof stt;
        mor_session_get_stats(s, &stt);
        steps += stt.steps_run, tokens += stt.n_tokens, evals += stt.layer_evals, full += stt.layer_evals_full;
    }
    out->n = k;
    out->mean_depth = tokens ? (float)((double)steps / (double)tokens) : 0;
    out->saved = full ? 1.0 - (double)evals / (double)full : 0;
    mor_session_free(s);
    return MOR_OK;
}

// ---- risk control ----------------------------------------------------------------------------

double mor__log_binom_cdf(int64_t k, int64_t n, double p) {
    if (k < 0) return -INFINITY;
    if (k >= n) return 0.0;
    if (p <= 0) return 0.0;
    if (p >= 1) return -INFINITY;
    double lp = log(p), lq = log1p(-p), lgn = lgamma((double)n + 1);
    // log-sum-exp over the terms i = 0..k, shifted by the largest
    double mx = -INFINITY;
    for (int64_t i = 0; i <= k; i++) {
        double t = lgn - lgamma((double)i + 1) - lgamma((double)(n - i) + 1) + (double)i * lp + (double)(n - i) * lq;
        if (t > mx) mx = t;
    }
    double sum = 0;
    for (int64_t i = 0; i <= k; i++) {
        double t = lgn - lgamma((double)i + 1) - lgamma((double)(n - i) + 1) + (double)i * lp + (double)(n - i) * lq;
        sum += exp(t - mx);
    }
    double r = mx + log(sum);
    return r > 0 ? 0 : r;
}

static double kl_bernoulli(double a, double b) {  // h(a, b), a in [0, b], b in (0, 1)
    double x = a > 0 ? a * log(a / b) : 0;
    double y = a < 1 ? (1 - a) * log((1 - a) / (1 - b)) : 0;
    return x + y;
}

double mor__hb_pvalue(double rhat, int64_t n, double t) {
    if (n <= 0 || !(t > 0) || t >= 1 || !(rhat >= 0)) return 1.0;
    if (rhat > 1) rhat = 1;
    double hoeffding = exp(-(double)n * kl_bernoulli(rhat < t ? rhat : t, t));
    // ceil(n rhat), with a little slack so that a mean of k/n computed in floating point gives k
    double nk = ceil((double)n * rhat - 1e-9);
    double bentkus = exp(1.0 + mor__log_binom_cdf((int64_t)nk, n, t));
    double pv = hoeffding < bentkus ? hoeffding : bentkus;
    return pv > 1 ? 1 : pv;
}
