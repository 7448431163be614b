// mor-run: load a model, take a prompt as text (-p) or token ids (-t), generate tokens and
// print them as they come, then timing and depth statistics on stderr.
//
//   mor-run MODEL.gguf -p "Once upon a time" -n 64
//   mor-run MODEL.gguf -t "1 403 407" -n 32 --ids
#include "mor.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: mor-run MODEL.gguf [options]\n"
            "  -p TEXT            prompt text (tokenized with the model's vocabulary, BOS added as the file says)\n"
            "  -t \"ID ID ...\"     prompt as token ids instead of text\n"
            "  -n N               tokens to generate (default 64)\n"
            "  -c, --ctx N        context length (default: the model's, at most 4096)\n"
            "  -b, --batch N      prompt tokens per pass (default 64)\n"
            "  -j, --threads N    compute threads (default 1)\n"
            "  --temp T           temperature; 0 = greedy (default 0)\n"
            "  --top-k K          (default 40)     --top-p P (default 0.95)     --min-p P (default 0.05)\n"
            "  --repeat-penalty R (default 1.0)    --repeat-last-n N (default 64)\n"
            "  -s, --seed S       sampler seed (default 0x5eed)\n"
            "  --depth K          run every token through K recursions (default: the model's policy)\n"
            "  --full-depth       every token runs every recursion\n"
            "  --threshold T      router policy: continue while the router score >= T (default 0.5)\n"
            "  --ids              print token ids instead of text\n"
            "  --no-stop          do not stop at an end-of-generation token\n"
            "  --stats            print per-token depths at the end\n"
            "  -v                 log what the library reports\n");
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void on_log(int32_t level, const char *msg, void *user) {
    (void)user;
    static const char *names[] = {"error", "warn", "info", "debug"};
    fprintf(stderr, "mor %s: %s\n", names[level & 3], msg);
}

static int parse_int(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 0);
    if (errno || *end || end == s || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static int parse_float(const char *s, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || *end || end == s) return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv) {
    const char *path = NULL, *text = NULL, *ids = NULL;
    long n_gen = 64, n_ctx = 0, n_batch = 64, depth = 0, n_threads = 1;
    int print_ids = 0, stop = 1, stats = 0, full = 0;
    float threshold = -1;
    mor_sampler_params sp;
    mor_sampler_params_init(&sp);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long x;
        int bad = 0, used = 1;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "-p") && v) text = v;
        else if (!strcmp(a, "-t") && v) ids = v;
        else if (!strcmp(a, "-n") && v) bad = parse_int(v, 0, 1 << 24, &n_gen);
        else if ((!strcmp(a, "-c") || !strcmp(a, "--ctx")) && v) bad = parse_int(v, 1, 1 << 20, &n_ctx);
        else if ((!strcmp(a, "-b") || !strcmp(a, "--batch")) && v) bad = parse_int(v, 1, 8192, &n_batch);
        else if ((!strcmp(a, "-j") || !strcmp(a, "--threads")) && v) bad = parse_int(v, 1, 256, &n_threads);
        else if (!strcmp(a, "--temp") && v) bad = parse_float(v, &sp.temperature);
        else if (!strcmp(a, "--top-k") && v) bad = parse_int(v, -1, 1 << 30, &x), sp.top_k = (int32_t)x;
        else if (!strcmp(a, "--top-p") && v) bad = parse_float(v, &sp.top_p);
        else if (!strcmp(a, "--min-p") && v) bad = parse_float(v, &sp.min_p);
        else if (!strcmp(a, "--repeat-penalty") && v) bad = parse_float(v, &sp.repeat_penalty);
        else if (!strcmp(a, "--repeat-last-n") && v) bad = parse_int(v, 0, 1 << 20, &x), sp.repeat_last_n = (int32_t)x;
        else if ((!strcmp(a, "-s") || !strcmp(a, "--seed")) && v) {
            char *end;
            errno = 0;
            sp.seed = strtoull(v, &end, 0);
            bad = errno || *end || end == v;
        } else if (!strcmp(a, "--depth") && v) bad = parse_int(v, 1, 1 << 20, &depth);
        else if (!strcmp(a, "--threshold") && v) bad = parse_float(v, &threshold);
        else {
            used = 0;
            if (!strcmp(a, "--ids")) print_ids = 1;
            else if (!strcmp(a, "--no-stop")) stop = 0;
            else if (!strcmp(a, "--stats")) stats = 1;
            else if (!strcmp(a, "--full-depth")) full = 1;
            else if (!strcmp(a, "-v")) mor_log_set(on_log, NULL, MOR_LOG_DEBUG);
            else if (a[0] != '-' && !path) path = a;
            else {
                fprintf(stderr, "mor-run: unknown or incomplete option '%s'\n", a);
                usage(stderr);
                return 2;
            }
        }
        if (bad) {
            fprintf(stderr, "mor-run: bad value '%s' for %s\n", v, a);
            return 2;
        }
        i += used;
    }
    if (!path) {
        usage(stderr);
        return 2;
    }

    char err[512];
    mor_model *model = NULL;
    double t0 = now();
    if (mor_model_load(path, NULL, &model, err, sizeof err) != MOR_OK) {
        fprintf(stderr, "mor-run: %s\n", err);
        return 1;
    }
    double t_load = now() - t0;
    int has_vocab = mor_model_n_vocab(model) > 0;
    if (!has_vocab) print_ids = 1;

    // Prompt.
    int32_t *prompt = NULL;
    size_t n_prompt = 0;
    if (ids) {
        prompt = malloc(sizeof(int32_t) * (strlen(ids) / 2 + 2));
        for (char *p = (char *)ids, *end; *p;) {
            while (*p == ' ' || *p == ',') p++;
            if (!*p) break;
            long v = strtol(p, &end, 10);
            if (end == p) {
                fprintf(stderr, "mor-run: bad token id list near '%s'\n", p);
                return 2;
            }
            prompt[n_prompt++] = (int32_t)v;
            p = end;
        }
    } else if (text && has_vocab) {
        size_t need = 0;
        int st = mor_tokenize(model, text, strlen(text), NULL, 0, MOR_TOKENIZE_ADD_SPECIAL, &need);
        if (st != MOR_OK && st != MOR_E_BUFFER_SMALL) {
            fprintf(stderr, "mor-run: cannot tokenize the prompt: %s\n", mor_status_str(st));
            return 1;
        }
        prompt = malloc(sizeof(int32_t) * (need ? need : 1));
        mor_tokenize(model, text, strlen(text), prompt, need, MOR_TOKENIZE_ADD_SPECIAL, &n_prompt);
    } else if (text) {
        fprintf(stderr, "mor-run: the model has no vocabulary; give token ids with -t\n");
        return 2;
    }
    if (n_prompt == 0) {  // start from BOS (or token 0)
        prompt = realloc(prompt, sizeof(int32_t));
        int32_t bos = has_vocab ? mor_model_token_bos(model) : -1;
        prompt[0] = bos >= 0 ? bos : 0;
        n_prompt = 1;
    }

    mor_session_params p;
    mor_session_params_init(&p);
    int64_t train = mor_model_get_int(model, MOR_INFO_N_CTX_TRAIN);
    p.n_ctx = (int32_t)(n_ctx ? n_ctx : (train < 4096 ? train : 4096));
    p.n_batch = (int32_t)n_batch;
    p.n_threads = (int32_t)n_threads;
    mor_session *s = NULL;
    if (mor_session_create(model, &p, &s, err, sizeof err) != MOR_OK) {
        fprintf(stderr, "mor-run: %s\n", err);
        return 1;
    }
    if (mor_session_set_sampler(s, &sp) != MOR_OK) {
        fprintf(stderr, "mor-run: %s\n", mor_session_last_error(s));
        return 2;
    }
    if (depth || full || threshold >= 0) {
        mor_exit_policy ep;
        mor_exit_policy_init(&ep);
        if (depth) ep.policy = MOR_EXIT_FIXED, ep.depth = (int32_t)depth;
        if (full) ep.policy = MOR_EXIT_FULL;
        if (threshold >= 0) ep.threshold = threshold;
        if (mor_session_set_exit_policy(s, &ep) != MOR_OK) {
            fprintf(stderr, "mor-run: %s\n", mor_session_last_error(s));
            return 2;
        }
    }
    mor_detok *dt = NULL;
    if (!print_ids) mor_detok_create(model, text ? MOR_DETOKENIZE_KEEP_PREFIX : 0, &dt);

    int rc = 0;
    double t1 = now();
    if (mor_session_step(s, prompt, (int32_t)n_prompt) != MOR_OK) {
        fprintf(stderr, "mor-run: %s\n", mor_session_last_error(s));
        return 1;
    }
    double t_prompt = now() - t1;
    if (text && dt) fputs(text, stdout);
    long n_done = 0, depth_sum = 0;
    int32_t *depths = malloc(sizeof(int32_t) * (size_t)(n_gen ? n_gen : 1));
    char piece[256];
    double t2 = now();
    for (; n_done < n_gen; n_done++) {
        int32_t tok;
        mor_session_sample(s, &tok);
        if (stop && has_vocab && mor_model_token_is_eog(model, tok)) break;
        if (print_ids) {
            printf("%d ", tok);
        } else {
            size_t nb = 0;
            if (mor_detok_push(dt, tok, piece, sizeof piece, &nb) == MOR_OK) fwrite(piece, 1, nb, stdout);
        }
        fflush(stdout);
        int st = mor_session_step(s, &tok, 1);
        if (st != MOR_OK) {
            fprintf(stderr, "\nmor-run: %s\n", mor_session_last_error(s));
            rc = st == MOR_E_CONTEXT_FULL ? 0 : 1;
            n_done++;
            break;
        }
        depths[n_done] = mor_session_depth(s, -1);
        depth_sum += depths[n_done];
    }
    double t_gen = now() - t2;
    if (dt) {
        size_t nb = 0;
        if (mor_detok_flush(dt, piece, sizeof piece, &nb) == MOR_OK) fwrite(piece, 1, nb, stdout);
    }
    printf("\n");
    fflush(stdout);
    long n_rec = (long)mor_model_get_int(model, MOR_INFO_N_RECURSION);
    fprintf(stderr, "mor-run: %s, %s, %lld params (%lld unrolled), %ld recursion%s\n",
            mor_model_get_str(model, MOR_INFO_ARCH), mor_model_get_str(model, MOR_INFO_SHARING_NAME),
            (long long)mor_model_get_int(model, MOR_INFO_N_PARAMS),
            (long long)mor_model_get_int(model, MOR_INFO_N_PARAMS_UNROLLED), n_rec, n_rec == 1 ? "" : "s");
    fprintf(stderr, "mor-run: load %.1f ms; prompt %zu tokens in %.1f ms (%.1f tok/s); generated %ld tokens in %.1f ms (%.1f tok/s)\n",
            t_load * 1e3, n_prompt, t_prompt * 1e3, n_prompt / (t_prompt > 0 ? t_prompt : 1e-9), n_done,
            t_gen * 1e3, n_done / (t_gen > 0 ? t_gen : 1e-9));
    if (n_done) fprintf(stderr, "mor-run: mean depth %.2f of %ld recursions\n", (double)depth_sum / (double)n_done, n_rec);
    if (stats) {
        fprintf(stderr, "mor-run: depths:");
        for (long i = 0; i < n_done && i < n_gen; i++) fprintf(stderr, " %d", depths[i]);
        fprintf(stderr, "\n");
    }
    free(depths);
    free(prompt);
    mor_detok_free(dt);
    mor_session_free(s);
    mor_model_free(model);
    return rc;
}
