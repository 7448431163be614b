// mor-perplexity: perplexity of a model on text files, computed by the library.
//
//   mor-perplexity MODEL.gguf FILE... [-c N] [-j N] [--max-tokens N] [--depth K | --full-depth]
//                  [--threshold T] [--dump-tokens]
//
// Each file is tokenized with the model's own vocabulary (mor_tokenize, no BOS/EOS added, no
// special-token parsing) and cut into consecutive, non-overlapping windows of N tokens
// (default: the model's trained context); every window starts a fresh sequence and scores its
// tokens 1..n-1 (the first token of a window is only context). A last window shorter than N
// is scored too. The perplexity is exp(total negative log-likelihood / tokens scored), per
// file and over all files. This is the procedure of tools/train.py's held-out evaluation, so
// the numbers can be compared directly (docs/MODELS.md).
//
// --dump-tokens prints each file's token ids instead (one line: a space, then the ids
// separated by spaces), to compare the tokenizer with another implementation.
#include "mor.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: mor-perplexity MODEL.gguf FILE... [options]\n"
            "  -c, --ctx N        window length in tokens (default: the model's trained context)\n"
            "  -j, --threads N    compute threads (default 1)\n"
            "  --max-tokens N     score at most the first N tokens of each file (default: all)\n"
            "  --depth K          run every token through K recursions\n"
            "  --full-depth       every token runs every recursion\n"
            "  --threshold T      router policy threshold (default 0.5)\n"
            "  --dump-tokens      print the token ids of each file and exit\n");
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int parse_int(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 0);
    if (errno || *end || end == s || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static char *read_file(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) break;
        if (len == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
        }
        size_t got = fread(buf + len, 1, cap - len, fp);
        len += got;
        if (got == 0) break;
    }
    fclose(fp);
    *n = len;
    return buf;
}

// -log softmax(logits)[target], in double.
static double nll(const float *logits, int n_vocab, int32_t target) {
    double mx = logits[0];
    for (int i = 1; i < n_vocab; i++)
        if (logits[i] > mx) mx = logits[i];
    double s = 0;
    for (int i = 0; i < n_vocab; i++) s += exp((double)logits[i] - mx);
    return mx + log(s) - (double)logits[target];
}

int main(int argc, char **argv) {
    const char *path = NULL;
    const char *files[256];
    int n_files = 0, dump = 0, full = 0;
    long n_ctx = 0, n_threads = 1, max_tokens = 0, depth = 0;
    float threshold = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0, used = 1;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if ((!strcmp(a, "-c") || !strcmp(a, "--ctx")) && v) bad = parse_int(v, 2, 1 << 20, &n_ctx);
        else if ((!strcmp(a, "-j") || !strcmp(a, "--threads")) && v) bad = parse_int(v, 1, 256, &n_threads);
        else if (!strcmp(a, "--max-tokens") && v) bad = parse_int(v, 2, 1L << 40, &max_tokens);
        else if (!strcmp(a, "--depth") && v) bad = parse_int(v, 1, 1 << 20, &depth);
        else if (!strcmp(a, "--threshold") && v) {
            char *end;
            errno = 0;
            threshold = strtof(v, &end);
            bad = errno || *end || end == v;
        } else {
            used = 0;
            if (!strcmp(a, "--dump-tokens")) dump = 1;
            else if (!strcmp(a, "--full-depth")) full = 1;
            else if (a[0] != '-' && !path) path = a;
            else if (a[0] != '-' && n_files < 256) files[n_files++] = a;
            else {
                fprintf(stderr, "mor-perplexity: unknown or incomplete option '%s'\n", a);
                usage(stderr);
                return 2;
            }
        }
        if (bad) {
            fprintf(stderr, "mor-perplexity: bad value '%s' for %s\n", v, a);
            return 2;
        }
        i += used;
    }
    if (!path || !n_files) {
        usage(stderr);
        return 2;
    }

    char err[512];
    mor_model_params mp;
    mor_model_params_init(&mp);
    if (dump) mp.flags |= MOR_MODEL_VOCAB_ONLY;
    mor_model *model = NULL;
    if (mor_model_load(path, &mp, &model, err, sizeof err) != MOR_OK) {
        fprintf(stderr, "mor-perplexity: %s\n", err);
        return 1;
    }
    if (mor_model_n_vocab(model) <= 0) {
        fprintf(stderr, "mor-perplexity: %s has no vocabulary\n", path);
        return 1;
    }
    int n_vocab = mor_model_n_vocab(model);
    if (!n_ctx) n_ctx = (long)mor_model_get_int(model, MOR_INFO_N_CTX_TRAIN);
    mor_session *s = NULL;
    if (!dump) {
        mor_session_params p;
        mor_session_params_init(&p);
        p.n_ctx = (int32_t)n_ctx;
        p.n_batch = (int32_t)n_ctx;
        p.n_threads = (int32_t)n_threads;
        p.flags = MOR_SESSION_LOGITS_ALL;
        if (mor_session_create(model, &p, &s, err, sizeof err) != MOR_OK) {
            fprintf(stderr, "mor-perplexity: %s\n", err);
            return 1;
        }
        if (depth || full || threshold >= 0) {
            mor_exit_policy ep;
            mor_exit_policy_init(&ep);
            if (depth) ep.policy = MOR_EXIT_FIXED, ep.depth = (int32_t)depth;
            if (full) ep.policy = MOR_EXIT_FULL;
            if (threshold >= 0) ep.threshold = threshold;
            if (mor_session_set_exit_policy(s, &ep) != MOR_OK) {
                fprintf(stderr, "mor-perplexity: %s\n", mor_session_last_error(s));
                return 2;
            }
        }
        printf("# model %s: %s, %s, router %s, %lld params (%lld unrolled), window %ld tokens\n", path,
               mor_model_get_str(model, MOR_INFO_ARCH), mor_model_get_str(model, MOR_INFO_SHARING_NAME),
               mor_model_get_str(model, MOR_INFO_ROUTER_NAME), (long long)mor_model_get_int(model, MOR_INFO_N_PARAMS),
               (long long)mor_model_get_int(model, MOR_INFO_N_PARAMS_UNROLLED), n_ctx);
    }
    long n_rec = (long)mor_model_get_int(model, MOR_INFO_N_RECURSION);
    long *depth_hist = calloc((size_t)n_rec + 2, sizeof(long));
    double all_nll = 0, t0 = now();
    long all_scored = 0, all_tokens = 0;
    int rc = 0;
    for (int f = 0; f < n_files && !rc; f++) {
        size_t len = 0, n_tok = 0;
        char *text = read_file(files[f], &len);
        if (!text) {
            fprintf(stderr, "mor-perplexity: cannot read %s\n", files[f]);
            rc = 1;
            break;
        }
        int st = mor_tokenize(model, text, len, NULL, 0, 0, &n_tok);
        int32_t *tok = malloc(sizeof(int32_t) * (n_tok ? n_tok : 1));
        if ((st != MOR_OK && st != MOR_E_BUFFER_SMALL) || !tok ||
            mor_tokenize(model, text, len, tok, n_tok, 0, &n_tok) != MOR_OK) {
            fprintf(stderr, "mor-perplexity: cannot tokenize %s\n", files[f]);
            free(text);
            free(tok);
            rc = 1;
            break;
        }
        free(text);
        if (dump) {
            for (size_t i = 0; i < n_tok; i++) printf(" %d", tok[i]);
            printf("\n");
            free(tok);
            continue;
        }
        if (max_tokens && n_tok > (size_t)max_tokens) n_tok = (size_t)max_tokens;
        double f_nll = 0;
        long f_scored = 0;
        for (size_t w = 0; w + 1 < n_tok && !rc; w += (size_t)n_ctx) {
            int32_t n = (int32_t)(n_tok - w < (size_t)n_ctx ? n_tok - w : (size_t)n_ctx);
            if (n < 2) break;
            mor_session_reset(s);
            if (mor_session_step(s, tok + w, n) != MOR_OK) {
                fprintf(stderr, "mor-perplexity: %s\n", mor_session_last_error(s));
                rc = 1;
                break;
            }
            for (int32_t i = 0; i < n; i++) {
                int32_t d = mor_session_depth(s, i);
                if (d >= 0 && d <= n_rec) depth_hist[d]++;
                if (i + 1 < n) {
                    f_nll += nll(mor_session_logits(s, i), n_vocab, tok[w + (size_t)i + 1]);
                    f_scored++;
                }
            }
        }
        printf("%-60s %8zu tokens, %8ld scored, nll %.6f, ppl %.4f\n", files[f], n_tok, f_scored,
               f_scored ? f_nll / f_scored : 0.0, f_scored ? exp(f_nll / f_scored) : 0.0);
        fflush(stdout);
        all_nll += f_nll;
        all_scored += f_scored;
        all_tokens += (long)n_tok;
        free(tok);
    }
    if (!dump && !rc && all_scored) {
        printf("%-60s %8ld tokens, %8ld scored, nll %.6f, ppl %.4f\n", "all", all_tokens, all_scored,
               all_nll / all_scored, exp(all_nll / all_scored));
        printf("# depths (recursions run per token):");
        long tot = 0;
        double mean = 0;
        for (long d = 0; d <= n_rec; d++) tot += depth_hist[d];
        for (long d = 0; d <= n_rec; d++) {
            printf(" %ld: %.1f%%", d, tot ? 100.0 * depth_hist[d] / tot : 0.0);
            mean += (double)d * depth_hist[d];
        }
        printf("; mean %.3f; %.1f s, %.0f tokens/s\n", tot ? mean / tot : 0.0, now() - t0,
               all_tokens / (now() - t0 > 0 ? now() - t0 : 1e-9));
    }
    free(depth_hist);
    mor_session_free(s);
    mor_model_free(model);
    return rc;
}
