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
            "  --policy NAME      full, fixed, router, capacity, confidence, saturation, free\n"
            "  --policy-file F    the policy of F's field=value lines (mor-calibrate --policy-file),\n"
            "                     fields of mor_exit_policy; instead of the other policy options\n"
            "                     (default: router for models with one, else full; docs/POLICIES.md)\n"
            "  --depth K          cap every token at K steps (policy fixed)\n"
            "  --full-depth       every token runs every step\n"
            "  --threshold T      router / confidence / saturation / free threshold in [0,1] (0.5)\n"
            "  --min-depth K      steps every token runs before it may exit\n"
            "  --metric M         confidence measure: top2 (default), maxprob, entropy\n"
            "  --decay TAU        confidence: CALM threshold decay over positions\n"
            "  --shallow K        free: steps before the shallow exit (default 1)\n"
            "  --adaptive         free: learn the threshold online (Beta mixture)\n"
            "  --kv S             KV for skipped layers: skip, share, propagate, sync (default: auto)\n"
            "  --budget B         cap the mean depth over the last 32 tokens at B steps\n"
            "  --rollback X       kv sync: roll back tokens the deep pass gives a cross-entropy above X\n"
            "  --depth-map FILE   write the generated text as HTML, each token colored by its depth\n"
            "  --kv-f16           keep the K/V cache in half precision\n"
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

// A policy file: `field=value` lines (fields of mor_exit_policy, mor_params_set names), blank
// lines and `#` comments ignored. 0, or -1 with the problem printed.
static int read_policy_file(const char *path, mor_exit_policy *ep) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "mor-run: cannot open policy file '%s': %s\n", path, strerror(errno));
        return -1;
    }
    mor_exit_policy_init(ep);
    char line[256];
    int n = 0, rc = 0;
    while (!rc && fgets(line, sizeof line, f)) {
        n++;
        char *e = line + strcspn(line, "\r\n#");
        *e = 0;
        if (!line[strspn(line, " \t")]) continue;
        char *eq = strchr(line, '='), *end;
        double v = eq ? strtod(eq + 1, &end) : 0;
        if (eq) *eq = 0;
        int st = !eq || end == eq + 1 || end[strspn(end, " \t")] ? MOR_E_INVALID : mor_params_set(ep, line, v);
        if (st) {
            fprintf(stderr, "mor-run: %s:%d: %s\n", path, n,
                    st == MOR_E_NOT_FOUND ? "not a field of mor_exit_policy" : "expected field=number within the field's range");
            rc = -1;
        }
    }
    fclose(f);
    return rc;
}

static int parse_float(const char *s, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || *end || end == s) return -1;
    *out = v;
    return 0;
}

static void print_stats(const mor_model *model, const mor_session *s, int32_t n_prompt, long n_rolled) {
    mor_session_stats st;
    memset(&st, 0, sizeof st);
    st.size = sizeof st;
    mor_session_get_stats(s, &st);
    int64_t steps = mor_model_get_int(model, MOR_INFO_N_STEPS);
    fprintf(stderr, "mor-run: stats: %lld tokens, mean depth %.3f of %lld steps; layer evaluations %lld of %lld "
                    "at full depth (%.1f%% saved); KV held %.1f KiB\n",
            (long long)st.n_tokens, st.mean_depth, (long long)steps, (long long)st.layer_evals,
            (long long)st.layer_evals_full,
            st.layer_evals_full ? 100.0 * (1.0 - (double)st.layer_evals / (double)st.layer_evals_full) : 0.0,
            (double)st.kv_bytes / 1024.0);
    fprintf(stderr, "mor-run: stats: depth histogram:");
    for (int d = 0; d <= steps && d <= MOR_STATS_MAX_DEPTH; d++) fprintf(stderr, " %d:%lld", d, (long long)st.depth_hist[d]);
    fprintf(stderr, "; deep passes %lld, rollbacks %lld (%ld tokens); threshold %.3f\n", (long long)st.deep_passes,
            (long long)st.rollbacks, n_rolled, st.threshold);
    static const char *kvn[] = {"-", "computed", "propagated", "deferred", "synced", "full"};
    fprintf(stderr, "mor-run: per generated token (depth/score/kv):");
    for (int32_t p = n_prompt; p < mor_session_n_past(s); p++) {
        int32_t d, kv;
        float sc;
        mor_session_token_info(s, p, &d, &sc, &kv);
        fprintf(stderr, " %d/%.2f/%s", d, sc, kvn[kv < 6 && kv >= 0 ? kv : 0]);
    }
    fprintf(stderr, "\n");
}

// HTML: every token of the sequence as a span colored by the steps it ran (light: shallow,
// dark: deep), with its depth, score and KV status in a tooltip.
static int write_depth_map(const char *path, const mor_model *model, const mor_session *s, int32_t n_prompt) {
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "mor-run: cannot write %s\n", path);
        return -1;
    }
    int64_t steps = mor_model_get_int(model, MOR_INFO_N_STEPS);
    fprintf(f, "<!doctype html><meta charset=utf-8><title>mor depth map</title>\n"
               "<style>body{font:16px/1.7 Georgia,serif;max-width:46em;margin:2em auto;color:#111}"
               "span{padding:1px 0;border-radius:3px}.p{color:#777}.k{font:12px sans-serif;margin:1em 0}"
               ".k span{padding:2px 8px;margin-right:4px}</style>\n<div class=k>depth: ");
    for (int d = 0; d <= steps; d++)
        fprintf(f, "<span style=\"background:hsl(210,70%%,%d%%);color:%s\">%d</span>", 95 - (int)(55 * d / (steps ? steps : 1)),
                d * 2 > steps ? "#fff" : "#000", d);
    fprintf(f, "</div>\n<p>");
    char piece[256];
    static const char *kvn[] = {"-", "computed", "propagated", "deferred", "synced", "full"};
    for (int32_t p = 0; p < mor_session_n_past(s); p++) {
        int32_t d = 0, kv = 0;
        float sc = 0;
        mor_session_token_info(s, p, &d, &sc, &kv);
        int32_t tok = 0;
        size_t nb = 0;
        if (mor_session_token_at(s, p, &tok) != MOR_OK ||
            mor_token_to_piece(model, tok, piece, sizeof piece - 1, 0, &nb) != MOR_OK)
            nb = 0;
        piece[nb] = 0;
        fprintf(f, "<span %s title=\"pos %d, depth %d, score %.3f, kv %s\" style=\"background:hsl(210,70%%,%d%%);color:%s\">",
                p < n_prompt ? "class=p" : "", p, d, sc, kvn[kv >= 0 && kv < 6 ? kv : 0],
                95 - (int)(55 * d / (steps ? steps : 1)), d * 2 > steps ? "#fff" : "#000");
        for (size_t i = 0; i < nb; i++) {
            unsigned char c = (unsigned char)piece[i];
            if (c == '<') fputs("&lt;", f);
            else if (c == '>') fputs("&gt;", f);
            else if (c == '&') fputs("&amp;", f);
            else if (c == '\n') fputs("<br>", f);
            else fputc(c, f);
        }
        fputs("</span>", f);
    }
    fputs("</p>\n", f);
    fclose(f);
    fprintf(stderr, "mor-run: depth map written to %s\n", path);
    return 0;
}

// The relaxations of a recursive model, on one line (nothing for a model without any).
static void print_relaxations(const mor_model *model) {
    const int64_t rank = mor_model_get_int(model, MOR_INFO_LORA_RANK), dora = mor_model_get_int(model, MOR_INFO_N_DORA),
                  enc = mor_model_get_int(model, MOR_INFO_N_REC_ENC), ad = mor_model_get_int(model, MOR_INFO_N_ADAPT);
    if (rank <= 0 && enc <= 0 && ad <= 0) return;
    fprintf(stderr, "mor-run: relaxations:");
    const char *sep = " ";
    if (rank > 0) fprintf(stderr, "%sLoRA rank %lld", sep, (long long)rank), sep = ", ";
    if (dora > 0) fprintf(stderr, "%sDoRA on %lld projections", sep, (long long)dora), sep = ", ";
    if (enc > 0) fprintf(stderr, "%srecursion encodings on %lld layers", sep, (long long)enc), sep = ", ";
    if (ad > 0)
        fprintf(stderr, "%sadaption prompts of %lld slots on %lld layers", sep,
                (long long)mor_model_get_int(model, MOR_INFO_ADAPT_LEN), (long long)ad);
    fprintf(stderr, "\n");
}

int main(int argc, char **argv) {
    const char *path = NULL, *text = NULL, *ids = NULL;
    long n_gen = 64, n_ctx = 0, n_batch = 64, depth = 0, n_threads = 1;
    int print_ids = 0, stop = 1, stats = 0, full = 0, policy = -1, kv = 0, adaptive = 0, kv_f16 = 0;
    float threshold = -1, decay = 0, budget = 0, rollback = 0;
    long min_depth = -1, shallow = 1, metric = 0;
    const char *depth_map = NULL, *policy_file = NULL;
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
        else if (!strcmp(a, "--min-depth") && v) bad = parse_int(v, 0, 1 << 20, &min_depth);
        else if (!strcmp(a, "--decay") && v) bad = parse_float(v, &decay);
        else if (!strcmp(a, "--shallow") && v) bad = parse_int(v, 1, 1 << 20, &shallow);
        else if (!strcmp(a, "--budget") && v) bad = parse_float(v, &budget);
        else if (!strcmp(a, "--rollback") && v) bad = parse_float(v, &rollback);
        else if (!strcmp(a, "--depth-map") && v) depth_map = v;
        else if (!strcmp(a, "--policy-file") && v) policy_file = v;
        else if (!strcmp(a, "--metric") && v) {
            metric = !strcmp(v, "top2") ? MOR_CONF_TOP2_GAP : !strcmp(v, "maxprob") ? MOR_CONF_MAX_PROB
                   : !strcmp(v, "entropy") ? MOR_CONF_ENTROPY : -1;
            bad = metric < 0;
        } else if (!strcmp(a, "--kv") && v) {
            kv = !strcmp(v, "skip") ? MOR_KV_SKIP : !strcmp(v, "share") ? MOR_KV_SHARE
               : !strcmp(v, "propagate") ? MOR_KV_PROPAGATE : !strcmp(v, "sync") ? MOR_KV_SYNC
               : !strcmp(v, "auto") ? MOR_KV_AUTO : -1;
            bad = kv < 0;
        } else if (!strcmp(a, "--policy") && v) {
            static const char *names[] = {"full", "fixed", "router", "capacity", "confidence", "saturation", "free"};
            policy = -1;
            for (int k = 0; k < 7; k++)
                if (!strcmp(v, names[k])) policy = k;
            bad = policy < 0;
        }
        else {
            used = 0;
            if (!strcmp(a, "--ids")) print_ids = 1;
            else if (!strcmp(a, "--no-stop")) stop = 0;
            else if (!strcmp(a, "--stats")) stats = 1;
            else if (!strcmp(a, "--full-depth")) full = 1;
            else if (!strcmp(a, "--adaptive")) adaptive = 1;
            else if (!strcmp(a, "--kv-f16")) kv_f16 = 1;
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
    if (kv_f16) p.flags |= MOR_SESSION_KV_F16;
    mor_session *s = NULL;
    if (mor_session_create(model, &p, &s, err, sizeof err) != MOR_OK) {
        fprintf(stderr, "mor-run: %s\n", err);
        return 1;
    }
    if (mor_session_set_sampler(s, &sp) != MOR_OK) {
        fprintf(stderr, "mor-run: %s\n", mor_session_last_error(s));
        return 2;
    }
    int policy_flags = depth || full || threshold >= 0 || policy >= 0 || kv || budget > 0 || min_depth >= 0 ||
                       decay > 0 || adaptive || rollback > 0 || metric;
    if (policy_file) {
        mor_exit_policy ep;
        if (policy_flags) {
            fprintf(stderr, "mor-run: give --policy-file or the policy options, not both\n");
            return 2;
        }
        if (read_policy_file(policy_file, &ep)) return 2;
        if (mor_session_set_exit_policy(s, &ep) != MOR_OK) {
            fprintf(stderr, "mor-run: %s: %s\n", policy_file, mor_session_last_error(s));
            return 2;
        }
    } else if (policy_flags) {
        mor_exit_policy ep;
        mor_exit_policy_init(&ep);
        if (policy >= 0) ep.policy = policy;
        if (depth) ep.policy = MOR_EXIT_FIXED, ep.depth = (int32_t)depth;
        if (full) ep.policy = MOR_EXIT_FULL;
        if (threshold >= 0) ep.threshold = threshold;
        if (min_depth >= 0) ep.min_depth = (int32_t)min_depth;
        else if (ep.policy == MOR_EXIT_CONFIDENCE || ep.policy == MOR_EXIT_SATURATION) ep.min_depth = 1;
        ep.metric = (int32_t)metric;
        ep.decay_tau = decay;
        ep.shallow = (int32_t)shallow;
        ep.adaptive = adaptive;
        ep.kv = kv;
        ep.budget = budget;
        ep.rollback = rollback;
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
    long n_rolled = 0;
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
        if (st == MOR_OK && mor_session_rollback(s) > 0) {  // the deep pass replaced tokens
            n_rolled += mor_session_rollback(s);
            if (!print_ids) printf("\u21ba");  // a mark where text was taken back
        }
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
    print_relaxations(model);
    fprintf(stderr, "mor-run: load %.1f ms; prompt %zu tokens in %.1f ms (%.1f tok/s); generated %ld tokens in %.1f ms (%.1f tok/s)\n",
            t_load * 1e3, n_prompt, t_prompt * 1e3, n_prompt / (t_prompt > 0 ? t_prompt : 1e-9), n_done,
            t_gen * 1e3, n_done / (t_gen > 0 ? t_gen : 1e-9));
    if (n_done) fprintf(stderr, "mor-run: mean depth %.2f of %ld recursions\n", (double)depth_sum / (double)n_done, n_rec);
    if (stats) print_stats(model, s, (int32_t)n_prompt, n_rolled);
    if (depth_map && write_depth_map(depth_map, model, s, (int32_t)n_prompt) != 0) rc = 1;
    free(depths);
    free(prompt);
    mor_detok_free(dt);
    mor_session_free(s);
    mor_model_free(model);
    return rc;
}
