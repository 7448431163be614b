// mor-sweep: measure exit policies on held-out text: for each policy setting, the perplexity,
// the mean depth, the layer evaluations saved against full depth, and the agreement of the
// greedy (argmax) prediction with full depth at every position. Output: CSV on stdout (one
// row per setting), for tools/plot-pareto.py and docs/RESULTS.md.
//
//   mor-sweep MODEL.gguf TEXT.txt [--tokens N] [--ctx N] [--policies LIST]
//
// LIST is comma-separated: full, fixed:K, router:T, confidence:T, saturation:T, free:T,
// freeadapt:T, budget:B (mean-depth cap, full policy below it), and any of them followed by
// @B to add a mean-depth cap (e.g. confidence:0.4@2); default: a sweep of each family
// the model supports. Texts are scored in windows of --ctx tokens (default 256), each window a
// fresh sequence, every token after the first of a window predicted.
#include "measure.h"
#include "mor.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char   name[32];
    int    policy, kv, depth, metric;
    float  threshold, budget;
    int    adaptive;
} setting;

static int parse_setting(const char *s, setting *o) {
    memset(o, 0, sizeof *o);
    snprintf(o->name, sizeof o->name, "%s", s);
    o->threshold = 0.5f;
    const char *at = strchr(s, '@');  // "policy:value@B": also cap the mean depth at B
    if (at) o->budget = strtof(at + 1, NULL);
    const char *colon = strchr(s, ':');
    float v = colon ? strtof(colon + 1, NULL) : 0;
    size_t n = colon ? (size_t)(colon - s) : strlen(s);
#define IS(w) (n == strlen(w) && !strncmp(s, w, n))
    if (IS("full")) o->policy = MOR_EXIT_FULL;
    else if (IS("fixed")) o->policy = MOR_EXIT_FIXED, o->depth = (int)v;
    else if (IS("router")) o->policy = MOR_EXIT_ROUTER, o->threshold = v;
    else if (IS("confidence")) o->policy = MOR_EXIT_CONFIDENCE, o->threshold = v;
    else if (IS("saturation")) o->policy = MOR_EXIT_SATURATION, o->threshold = v;
    else if (IS("free")) o->policy = MOR_EXIT_FREE, o->threshold = v, o->kv = MOR_KV_SYNC;
    else if (IS("freeadapt")) o->policy = MOR_EXIT_FREE, o->threshold = v, o->kv = MOR_KV_SYNC, o->adaptive = 1;
    else if (IS("budget")) o->policy = MOR_EXIT_FULL, o->budget = v;
    else if (IS("confidence_maxprob")) o->policy = MOR_EXIT_CONFIDENCE, o->threshold = v, o->metric = MOR_CONF_MAX_PROB;
    else if (IS("confidence_entropy")) o->policy = MOR_EXIT_CONFIDENCE, o->threshold = v, o->metric = MOR_CONF_ENTROPY;
    else return -1;
#undef IS
    return 0;
}

// Scores tokens[0..n) in windows (tools/lib/measure.c); argmax_ref (may be NULL) receives
// (fill_ref) or is compared with the argmax at every scored position.
static int run(const mor_model *m, const setting *st, const int32_t *tok, int32_t n, int32_t ctx, int32_t *argmax_ref,
               int fill_ref, mor__measure *out, int64_t *agree) {
    mor_exit_policy ep;
    mor_exit_policy_init(&ep);
    ep.policy = st->policy;
    ep.depth = st->depth;
    ep.threshold = st->threshold;
    ep.kv = st->kv;
    ep.adaptive = st->adaptive;
    ep.budget = st->budget;
    ep.metric = st->metric;
    ep.min_depth = st->policy == MOR_EXIT_CONFIDENCE || st->policy == MOR_EXIT_SATURATION;
    int32_t *am = argmax_ref && !fill_ref ? malloc(sizeof(int32_t) * ((size_t)n + 1)) : argmax_ref;
    char err[512];
    int s = argmax_ref && !am ? MOR_E_NOMEM : mor__measure_policy(m, &ep, tok, n, ctx, NULL, am, out, err, sizeof err);
    if (s) fprintf(stderr, "mor-sweep: %s: %s\n", st->name, s == MOR_E_NOMEM && !am ? "out of memory" : err);
    *agree = 0;
    if (!s && argmax_ref && !fill_ref)
        for (int64_t k = 0; k < out->n; k++) *agree += am[k] == argmax_ref[k];
    if (am != argmax_ref) free(am);
    return s ? -1 : 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: mor-sweep MODEL.gguf TEXT.txt [--tokens N] [--ctx N] [--policies LIST]\n");
        return 2;
    }
    long max_tokens = 16384, ctx = 256;
    const char *list = NULL;
    for (int i = 3; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--tokens")) max_tokens = strtol(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--ctx")) ctx = strtol(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--policies")) list = argv[i + 1];
        else {
            fprintf(stderr, "mor-sweep: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    char err[512];
    mor_model *m;
    if (mor_model_load(argv[1], NULL, &m, err, sizeof err)) {
        fprintf(stderr, "mor-sweep: %s\n", err);
        return 1;
    }
    int32_t *tok, nt;
    if (mor__measure_text(m, argv[2], max_tokens, &tok, &nt, err, sizeof err)) {
        fprintf(stderr, "mor-sweep: %s\n", err);
        mor_model_free(m);
        return 1;
    }
    char defaults[1024];
    int64_t steps = mor_model_get_int(m, MOR_INFO_N_STEPS), router = mor_model_get_int(m, MOR_INFO_ROUTER);
    if (!list) {
        int o = snprintf(defaults, sizeof defaults, "full");
        for (int k = 1; k < steps; k++) o += snprintf(defaults + o, sizeof defaults - (size_t)o, ",fixed:%d", k);
        if (router == MOR_ROUTER_EXPERT)
            o += snprintf(defaults + o, sizeof defaults - (size_t)o, ",router:0.1,router:0.3,router:0.5,router:0.7,router:0.9");
        if (router == MOR_ROUTER_TOKEN) o += snprintf(defaults + o, sizeof defaults - (size_t)o, ",router:0.5");
        if (steps > 1 && router != MOR_ROUTER_TOKEN) {
            const char *th[] = {"0.9", "0.8", "0.6", "0.4", "0.2", "0.1"};
            for (int i = 0; i < 6; i++) o += snprintf(defaults + o, sizeof defaults - (size_t)o, ",confidence:%s", th[i]);
            const char *sa[] = {"0.999", "0.995", "0.99", "0.98", "0.95"};
            for (int i = 0; i < 5; i++) o += snprintf(defaults + o, sizeof defaults - (size_t)o, ",saturation:%s", sa[i]);
            if (router == MOR_ROUTER_NONE)
                for (int i = 0; i < 6; i++) o += snprintf(defaults + o, sizeof defaults - (size_t)o, ",free:%s", th[i]);
            o += snprintf(defaults + o, sizeof defaults - (size_t)o, ",budget:%.1f", (double)steps - 0.5);
        }
        list = defaults;
    }
    int32_t *ref = malloc(sizeof(int32_t) * (nt + 1));
    setting full;
    parse_setting("full", &full);
    mor__measure base;
    int64_t agree;
    if (!ref || run(m, &full, tok, nt, (int32_t)ctx, ref, 1, &base, &agree)) return 1;
    printf("model,policy,tokens,perplexity,mean_depth,layers_saved,greedy_agreement,ppl_change\n");
    char *dup = strdup(list);
    for (char *it = strtok(dup, ","); it; it = strtok(NULL, ",")) {
        setting st;
        if (parse_setting(it, &st)) {
            fprintf(stderr, "mor-sweep: unknown policy '%s'\n", it);
            continue;
        }
        mor__measure sc;
        if (run(m, &st, tok, nt, (int32_t)ctx, ref, 0, &sc, &agree)) continue;
        double ppl = exp(sc.nll / (double)sc.n), ppl0 = exp(base.nll / (double)base.n);
        const char *slash = strrchr(argv[1], '/');
        printf("%s,%s,%lld,%.4f,%.3f,%.4f,%.4f,%.4f\n", slash ? slash + 1 : argv[1], st.name, (long long)sc.n, ppl,
               sc.mean_depth, sc.saved, (double)agree / (double)sc.n, ppl / ppl0 - 1.0);
        fflush(stdout);
    }
    free(dup);
    free(ref);
    free(tok);
    mor_model_free(m);
    return 0;
}
