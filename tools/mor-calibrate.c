// mor-calibrate: choose an exit threshold with a finite-sample guarantee on the loss against
// full depth (docs/POLICIES.md, "Calibrated exits"), and write it into a model file as its
// default policy (mor.policy.* keys) or into a small text file.
//
//   mor-calibrate MODEL.gguf TEXT.txt --tolerance T [--risk disagree|nll] [--delta D]
//       [--policy confidence|saturation|router] [--ctx N] [--tokens N] [--thresholds LIST]
//       [--nll-bound B] [-o OUT.gguf | --policy-file OUT.txt] [--check TEXT2.txt]
//   mor-calibrate --pvalue N RHAT T     (prints the Hoeffding-Bentkus p-value; for tests)
//
// The text is scored in windows of --ctx tokens (tools/lib/measure.h), the independent units.
// Loss of a window under a candidate threshold: `disagree`, the share of its positions whose
// argmax differs from full depth's; `nll`, max(0, mean NLL increase over full depth) clipped
// to B (--nll-bound, default 1 nat) and divided by B. Candidates run from the most
// conservative to the most aggressive; each gets the Hoeffding-Bentkus p-value of
// H0: risk > T from its window losses, and is rejected (accepted as safe) while p <= delta;
// the first non-rejection stops the sequence (fixed-sequence testing, as in Learn-then-Test).
// The last rejected candidate is chosen. Exit status: 0 chosen, 1 none rejected or an error,
// 2 bad usage.
#include "gguf-write.h"
#include "internal.h"
#include "measure.h"
#include "mor.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_CAND 64

static void usage(FILE *f) {
    fprintf(f,
            "usage: mor-calibrate MODEL.gguf TEXT.txt --tolerance T [options]\n"
            "  --tolerance T       the risk to control, in (0, 1)\n"
            "  --risk KIND         disagree (default: share of argmax tokens unlike full depth's) or nll\n"
            "                      (mean NLL increase over full depth per window, clipped to B, / B)\n"
            "  --delta D           error level of the guarantee, in (0, 1); default 0.1\n"
            "  --policy NAME       confidence (default), saturation or router (expert-choice)\n"
            "  --thresholds LIST   candidates, comma-separated, most conservative first\n"
            "                      (default: a grid of the policy)\n"
            "  --ctx N             tokens per window (default 256)\n"
            "  --tokens N          use the first N tokens of TEXT (default 16384)\n"
            "  --nll-bound B       B of the nll risk, in nats (default 1)\n"
            "  -o OUT.gguf         copy MODEL with the chosen policy as its default (mor.policy.*)\n"
            "  --policy-file OUT   write the chosen policy as field=value lines\n"
            "  --check TEXT2.txt   report the chosen threshold's risk on other text\n"
            "  --pvalue N RHAT T   print the Hoeffding-Bentkus p-value and exit\n");
}

typedef struct {
    int   policy, min_depth, risk;  // risk: 0 disagree, 1 nll
    float bound;                    // B of the nll risk
} plan;

static void policy_of(const plan *pl, float threshold, mor_exit_policy *ep) {
    mor_exit_policy_init(ep);
    ep->policy = pl->policy;
    ep->threshold = threshold;
    ep->min_depth = pl->min_depth;
}

// Per-window losses of a run (nll, argmax per position) against full depth's.
static void window_losses(const plan *pl, int32_t n, int32_t ctx, const float *nll, const int32_t *am,
                          const float *nll0, const int32_t *am0, double *loss) {
    int32_t nw = mor__measure_n_windows(n, ctx);
    for (int32_t w = 0; w < nw; w++) {
        int64_t first;
        int32_t cnt;
        mor__measure_window(n, ctx, w, &first, &cnt);
        double acc = 0;
        for (int32_t i = 0; i < cnt; i++) {
            int64_t k = first + i;
            acc += pl->risk ? (double)nll[k] - (double)nll0[k] : (double)(am[k] != am0[k]);
        }
        double l = cnt ? acc / cnt : 0;
        if (pl->risk) l = l < 0 ? 0 : (l > pl->bound ? 1 : l / pl->bound);
        loss[w] = l;
    }
}

typedef struct {
    int32_t *tok, n, nw;
    float   *nll0, *nll;
    int32_t *am0, *am;
    double  *loss;
    mor__measure full;
} corpus;

static void corpus_free(corpus *c) {
    free(c->tok), free(c->nll0), free(c->nll), free(c->am0), free(c->am), free(c->loss);
    memset(c, 0, sizeof *c);
}

static int corpus_open(const mor_model *m, const char *path, long max_tokens, int32_t ctx, corpus *c, char *err,
                       size_t err_n) {
    memset(c, 0, sizeof *c);
    int s = mor__measure_text(m, path, max_tokens, &c->tok, &c->n, err, err_n);
    if (s) return s;
    c->nw = mor__measure_n_windows(c->n, ctx);
    if (c->nw < 1) return mor__errf(err, err_n, MOR_E_INVALID, "'%s' has %d tokens: too few to score a window", path, c->n);
    size_t k = (size_t)c->n + 1;
    c->nll0 = malloc(k * sizeof(float)), c->nll = malloc(k * sizeof(float));
    c->am0 = malloc(k * sizeof(int32_t)), c->am = malloc(k * sizeof(int32_t));
    c->loss = malloc((size_t)c->nw * sizeof(double));
    if (!c->nll0 || !c->nll || !c->am0 || !c->am || !c->loss) return mor__errf(err, err_n, MOR_E_NOMEM, "out of memory");
    mor_exit_policy ep;
    mor_exit_policy_init(&ep);
    ep.policy = MOR_EXIT_FULL;
    return mor__measure_policy(m, &ep, c->tok, c->n, ctx, c->nll0, c->am0, &c->full, err, err_n);
}

// Runs the candidate on the corpus: per-window losses in c->loss, their mean in *risk.
static int corpus_run(const mor_model *m, const plan *pl, float threshold, int32_t ctx, corpus *c, mor__measure *out,
                      double *risk, char *err, size_t err_n) {
    mor_exit_policy ep;
    policy_of(pl, threshold, &ep);
    int s = mor__measure_policy(m, &ep, c->tok, c->n, ctx, c->nll, c->am, out, err, err_n);
    if (s) return s;
    window_losses(pl, c->n, ctx, c->nll, c->am, c->nll0, c->am0, c->loss);
    double sum = 0;
    for (int32_t w = 0; w < c->nw; w++) sum += c->loss[w];
    *risk = sum / c->nw;
    return MOR_OK;
}

static int same_file(const char *a, const char *b) {
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

// The model file with the policy's mor.policy.* keys added (replacing any it had); every other
// key and every tensor copied byte for byte.
static int write_model(const char *in, const char *out, const mor_exit_policy *ep, char *err, size_t err_n) {
    void *img = NULL;
    uint64_t size = 0;
    int s = mor__gguf_w_read_file(in, &img, &size, err, err_n);
    if (s) return s;
    mor__gguf g;
    if ((s = mor__gguf_parse(&g, img, size, err, err_n))) {
        free(img);
        return s;
    }
    mor__gguf_writer *w = mor__gguf_writer_create();
    s = w ? mor__gguf_w_copy(w, &g, "mor.policy.", err, err_n) : mor__errf(err, err_n, MOR_E_NOMEM, "out of memory");
    if (!s) s = mor__gguf_w_i32(w, "mor.policy.policy", ep->policy);
    if (!s) s = mor__gguf_w_f32(w, "mor.policy.threshold", ep->threshold);
    if (!s) s = mor__gguf_w_i32(w, "mor.policy.min_depth", ep->min_depth);
    if (!s && ep->policy == MOR_EXIT_CONFIDENCE) s = mor__gguf_w_i32(w, "mor.policy.metric", ep->metric);
    if (s && !err[0]) mor__errf(err, err_n, s, "out of memory");
    if (!s) s = mor__gguf_writer_save(w, out, err, err_n);
    mor__gguf_writer_free(w);
    mor__gguf_free(&g);
    free(img);
    return s;
}

static int write_policy_file(const char *path, const mor_exit_policy *ep, char *err, size_t err_n) {
    FILE *f = fopen(path, "w");
    if (!f) return mor__errf(err, err_n, MOR_E_IO, "cannot create '%s': %s", path, strerror(errno));
    fprintf(f, "policy=%d\nthreshold=%.9g\nmin_depth=%d\n", ep->policy, (double)ep->threshold, ep->min_depth);
    if (ep->policy == MOR_EXIT_CONFIDENCE) fprintf(f, "metric=%d\n", ep->metric);
    if (fclose(f)) return mor__errf(err, err_n, MOR_E_IO, "write error on '%s'", path);
    return MOR_OK;
}

static int parse_double(const char *s, double lo, double hi, double *out) {
    char *e;
    errno = 0;
    double v = strtod(s, &e);
    if (e == s || *e || errno || !(v >= lo && v <= hi)) return -1;
    *out = v;
    return 0;
}

static int parse_list(const char *s, float *v, int *n) {
    *n = 0;
    while (*s) {
        char *e;
        double x = strtod(s, &e);
        if (e == s || !(x >= 0 && x <= 1) || *n >= MAX_CAND) return -1;
        v[(*n)++] = (float)x;
        if (*e == ',') e++;
        else if (*e) return -1;
        s = e;
    }
    return *n ? 0 : -1;
}

int main(int argc, char **argv) {
    if (argc == 5 && !strcmp(argv[1], "--pvalue")) {
        double n, rhat, t;
        if (parse_double(argv[2], 0, 1e9, &n) || parse_double(argv[3], 0, 1, &rhat) || parse_double(argv[4], 0, 1, &t)) {
            fprintf(stderr, "mor-calibrate: --pvalue N RHAT T: N >= 0, RHAT and T in [0, 1]\n");
            return 2;
        }
        printf("%.17g\n", mor__hb_pvalue(rhat, (int64_t)n, t));
        return 0;
    }
    if (argc < 3 || argv[1][0] == '-' || argv[2][0] == '-') {
        usage(argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) ? stdout : stderr);
        return argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) ? 0 : 2;
    }
    const char *model_path = argv[1], *text_path = argv[2], *out = NULL, *pfile = NULL, *check = NULL,
               *pname = "confidence";
    double tol = -1, delta = 0.1, bound = 1.0, ctx = 256, max_tokens = 16384;
    float cand[MAX_CAND];
    int n_cand = 0;
    plan pl = {MOR_EXIT_CONFIDENCE, 1, 0, 1.0f};
    for (int i = 3; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = !v;
        if (bad) ;
        else if (!strcmp(a, "--tolerance")) bad = parse_double(v, 1e-9, 1 - 1e-9, &tol);
        else if (!strcmp(a, "--delta")) bad = parse_double(v, 1e-9, 1 - 1e-9, &delta);
        else if (!strcmp(a, "--nll-bound")) bad = parse_double(v, 1e-6, 1e6, &bound);
        else if (!strcmp(a, "--ctx")) bad = parse_double(v, 2, 1 << 20, &ctx) || ctx != floor(ctx);
        else if (!strcmp(a, "--tokens")) bad = parse_double(v, 2, 1e9, &max_tokens) || max_tokens != floor(max_tokens);
        else if (!strcmp(a, "--thresholds")) bad = parse_list(v, cand, &n_cand);
        else if (!strcmp(a, "-o")) out = v;
        else if (!strcmp(a, "--policy-file")) pfile = v;
        else if (!strcmp(a, "--check")) check = v;
        else if (!strcmp(a, "--risk")) {
            if (!strcmp(v, "disagree")) pl.risk = 0;
            else if (!strcmp(v, "nll")) pl.risk = 1;
            else bad = 1;
        } else if (!strcmp(a, "--policy")) {
            pname = v;
            if (!strcmp(v, "confidence")) pl.policy = MOR_EXIT_CONFIDENCE, pl.min_depth = 1;
            else if (!strcmp(v, "saturation")) pl.policy = MOR_EXIT_SATURATION, pl.min_depth = 1;
            else if (!strcmp(v, "router")) pl.policy = MOR_EXIT_ROUTER, pl.min_depth = 0;
            else bad = 1;
        } else {
            fprintf(stderr, "mor-calibrate: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "mor-calibrate: bad or missing value for %s%s%s\n", a, v ? ": " : "", v ? v : "");
            return 2;
        }
    }
    if (tol < 0) {
        fprintf(stderr, "mor-calibrate: --tolerance T is required\n");
        usage(stderr);
        return 2;
    }
    if (out && pfile) {
        fprintf(stderr, "mor-calibrate: give -o or --policy-file, not both\n");
        return 2;
    }
    if (out && same_file(out, model_path)) {
        fprintf(stderr, "mor-calibrate: -o %s is the input model: refusing to overwrite it\n", out);
        return 2;
    }
    pl.bound = (float)bound;
    if (!n_cand) {  // the default grids, most conservative first
        if (pl.policy == MOR_EXIT_CONFIDENCE)
            for (int i = 19; i >= 1; i--) cand[n_cand++] = 0.05f * (float)i;  // exit when conf > T: high is cautious
        else if (pl.policy == MOR_EXIT_SATURATION) {
            static const float g[] = {0.9999f, 0.9995f, 0.999f, 0.998f, 0.995f, 0.99f, 0.98f,
                                      0.97f, 0.95f, 0.9f, 0.8f, 0.7f, 0.5f};
            for (size_t i = 0; i < sizeof g / sizeof g[0]; i++) cand[n_cand++] = g[i];
        } else
            for (int i = 1; i <= 19; i++) cand[n_cand++] = 0.05f * (float)i;  // run while sigmoid >= T: low is cautious
    }
    char err[512] = "";
    mor_model *m;
    if (mor_model_load(model_path, NULL, &m, err, sizeof err)) {
        fprintf(stderr, "mor-calibrate: %s\n", err);
        return 1;
    }
    {  // the policy must suit the model before anything is measured
        mor_session *s = NULL;
        mor_exit_policy ep;
        policy_of(&pl, cand[0], &ep);
        int st = mor_session_create(m, NULL, &s, err, sizeof err);
        if (!st && (st = mor_session_set_exit_policy(s, &ep))) snprintf(err, sizeof err, "%s", mor_session_last_error(s));
        mor_session_free(s);
        if (st) {
            fprintf(stderr, "mor-calibrate: --policy %s: %s\n", pname, err);
            mor_model_free(m);
            return 1;
        }
    }
    corpus c;
    int st = corpus_open(m, text_path, (long)max_tokens, (int32_t)ctx, &c, err, sizeof err);
    if (st) {
        fprintf(stderr, "mor-calibrate: %s\n", err);
        corpus_free(&c);
        mor_model_free(m);
        return 1;
    }
    const char *risk_name = pl.risk ? "nll" : "disagree";
    printf("# %s on %s: %d tokens, %d windows of %d tokens; policy %s, risk %s", model_path, text_path, c.n, c.nw,
           (int)ctx, pname, risk_name);
    if (pl.risk) printf(" (B = %g nats)", bound);
    printf(", tolerance %g, delta %g\n", tol, delta);
    printf("# full depth: mean depth %.3f, perplexity %.4f\n", (double)c.full.mean_depth, exp(c.full.nll / (double)c.full.n));
    printf("%-10s %10s %12s %10s %12s %8s\n", "threshold", "mean_depth", "layers_saved", "risk", "p_value", "rejected");
    int chosen = -1;
    double chosen_risk = 0;
    for (int k = 0; k < n_cand; k++) {
        mor__measure ms;
        double risk;
        if ((st = corpus_run(m, &pl, cand[k], (int32_t)ctx, &c, &ms, &risk, err, sizeof err))) {
            fprintf(stderr, "mor-calibrate: threshold %g: %s\n", (double)cand[k], err);
            corpus_free(&c);
            mor_model_free(m);
            return 1;
        }
        double pv = mor__hb_pvalue(risk, c.nw, tol);
        int rej = pv <= delta;
        printf("%-10.6g %10.3f %12.4f %10.6f %12.6g %8s\n", (double)cand[k], (double)ms.mean_depth, ms.saved, risk, pv,
               rej ? "yes" : "no");
        fflush(stdout);
        if (!rej) break;  // fixed-sequence testing stops at the first non-rejection
        chosen = k, chosen_risk = risk;
    }
    if (chosen < 0) {
        printf("no threshold chosen: the most conservative candidate (%g) was not shown to keep the %s risk "
               "within %g at delta %g over %d windows\n", (double)cand[0], risk_name, tol, delta, c.nw);
        fprintf(stderr, "mor-calibrate: no threshold rejected H0 (risk > %g); try a larger --tolerance, a larger "
                        "--delta, or more text (more windows)\n", tol);
        corpus_free(&c);
        mor_model_free(m);
        return 1;
    }
    mor_exit_policy ep;
    policy_of(&pl, cand[chosen], &ep);
    printf("chosen: --policy %s --threshold %g --min-depth %d (empirical %s risk %.5f <= tolerance %g; "
           "risk <= %g with probability >= %g over the calibration windows)\n",
           pname, (double)cand[chosen], pl.min_depth, risk_name, chosen_risk, tol, tol, 1 - delta);
    int rc = 0;
    if (out) {
        if ((st = write_model(model_path, out, &ep, err, sizeof err))) {
            fprintf(stderr, "mor-calibrate: %s\n", err);
            rc = 1;
        } else {
            mor_model *chk;  // the written file must load with its new default
            if (mor_model_load(out, NULL, &chk, err, sizeof err)) {
                fprintf(stderr, "mor-calibrate: the written model does not load: %s\n", err);
                rc = 1;
            } else {
                mor_model_free(chk);
                printf("wrote %s (mor.policy.* keys set)\n", out);
            }
        }
    } else if (pfile) {
        if ((st = write_policy_file(pfile, &ep, err, sizeof err))) {
            fprintf(stderr, "mor-calibrate: %s\n", err);
            rc = 1;
        } else
            printf("wrote %s\n", pfile);
    }
    if (check && !rc) {
        corpus c2;
        mor__measure ms;
        double risk;
        st = corpus_open(m, check, (long)max_tokens, (int32_t)ctx, &c2, err, sizeof err);
        if (!st) st = corpus_run(m, &pl, cand[chosen], (int32_t)ctx, &c2, &ms, &risk, err, sizeof err);
        if (st) {
            fprintf(stderr, "mor-calibrate: --check: %s\n", err);
            rc = 1;
        } else {
            int over = 0;
            printf("# check on %s: %d tokens, %d windows; threshold %g\n", check, c2.n, c2.nw, (double)cand[chosen]);
            printf("%-8s %10s %8s\n", "window", "risk", "within");
            for (int32_t w = 0; w < c2.nw; w++) {
                over += c2.loss[w] > tol;
                printf("%-8d %10.5f %8s\n", w, c2.loss[w], c2.loss[w] <= tol ? "yes" : "no");
            }
            printf("check: mean depth %.3f, layers saved %.4f, %s risk %.5f over %d windows (%d above %g): %s the tolerance\n",
                   (double)ms.mean_depth, ms.saved, risk_name, risk, c2.nw, over, tol, risk <= tol ? "within" : "NOT within");
        }
        corpus_free(&c2);
    }
    corpus_free(&c);
    mor_model_free(m);
    return rc;
}
