// mor-run: load a model, take a prompt as text (-p, -f) or token ids (--ids-prompt), generate
// tokens and print them as they come, then timing and depth statistics on stderr. The options
// use the names common among command-line model runners (-m, -p, -f, -n, -t, -c, -r, -i, ...).
//
//   mor-run -m MODEL.gguf -p "Once upon a time" -n 64
//   mor-run -m MODEL.gguf --ids-prompt "1 403 407" -n 32 --ids
//   mor-run -m MODEL.gguf -p "User: hi\nBot:" -r "User:" -i
//
// Exit status: 0 done (including end of input in -i), 1 a run-time error (the model, the
// session, a full context, a file), 2 a usage error (an option or its value).
#include "mor.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: mor-run -m MODEL.gguf [options]\n"
            "  -m, --model FILE       the model (GGUF)\n"
            "  -p, --prompt TEXT      prompt text (tokenized with the model's vocabulary, BOS added as the file says;\n"
            "                         \\n \\t \\r \\\\ \\\" \\' escapes, also in -r and --stop)\n"
            "  -f, --file FILE        prompt text from FILE (- = stdin; one trailing newline removed)\n"
            "  --ids-prompt \"ID ...\"  prompt as token ids instead of text\n"
            "  -n, --n-predict N      tokens to generate (default 64; -1 = until end of generation or a full context)\n"
            "  -t, --threads N        compute threads (default 1)\n"
            "  -c, --ctx-size N       context length (default: the model's, at most 4096)\n"
            "  -b, --batch-size N     prompt tokens per pass (default 64)\n"
            "  --temp T               temperature; 0 = greedy (default 0)\n"
            "  --top-k K              (default 40)     --top-p P (default 0.95)     --min-p P (default 0.05)\n"
            "  --repeat-penalty R     (default 1.0)    --repeat-last-n N (default 64)\n"
            "  -s, --seed S           sampler seed (default 0x5eed)\n"
            "  -r, --reverse-prompt T stop when the text ends with T, T printed (in -i: your turn); repeatable\n"
            "  --stop T               stop when the text ends with T, T not printed; repeatable\n"
            "  --ignore-eos           do not stop at an end-of-generation token\n"
            "  -i, --interactive      after generating, read a line from stdin, append it (and a newline) and\n"
            "                         generate again (an empty line: generate on); end of input ends the run.\n"
            "                         Plain continuation (no chat template is applied); piped lines are echoed\n"
            "  --color[=WHEN]         color each generated token by the depth it ran (legend on stderr); WHEN is\n"
            "                         auto (the default of --color: only when stdout is a terminal and NO_COLOR is\n"
            "                         unset), always or never\n"
            "  --policy NAME          full, fixed, router, capacity, confidence, saturation, free\n"
            "  --policy-file F        the policy of F's field=value lines (mor-calibrate --policy-file),\n"
            "                         fields of mor_exit_policy; instead of the other policy options\n"
            "                         (default: router for models with one, else full; docs/POLICIES.md)\n"
            "  --depth K              cap every token at K steps (policy fixed)\n"
            "  --full-depth           every token runs every step\n"
            "  --threshold T          router / confidence / saturation / free threshold in [0,1] (0.5)\n"
            "  --min-depth K          steps every token runs before it may exit\n"
            "  --metric M             confidence measure: top2 (default), maxprob, entropy\n"
            "  --decay TAU            confidence: CALM threshold decay over positions\n"
            "  --shallow K            free: steps before the shallow exit (default 1)\n"
            "  --adaptive             free: learn the threshold online (Beta mixture)\n"
            "  --kv S                 KV for skipped layers: skip, share, propagate, sync (default: auto)\n"
            "  --budget B             cap the mean depth over the last 32 tokens at B steps\n"
            "  --rollback X           kv sync: roll back tokens the deep pass gives a cross-entropy above X\n"
            "  --depth-map FILE       write the generated text as HTML, each token colored by its depth\n"
            "  --kv-f16               keep the K/V cache in half precision\n"
            "  --ids                  print token ids instead of text\n"
            "  --stats                print per-token depths at the end\n"
            "  -v                     log what the library reports\n"
            "deprecated (until the next release): MODEL as a positional argument (use -m), -j N (use -t),\n"
            "  --ctx (use -c), --batch (use -b), --no-stop (use --ignore-eos); -t no longer takes token ids\n"
            "  (use --ids-prompt)\n"
            "exit status: 0 done, 1 run-time error (including a full context), 2 usage error\n");
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


// In place: \n \t \r \\ \" \' become what they name (the common default for
// command-line text); other backslashes stay. Returns the new length.
static size_t unescape(char *s) {
    char *o = s;
    for (const char *p = s; *p; p++) {
        if (*p != '\\' || !p[1]) {
            *o++ = *p;
            continue;
        }
        const char *from = "ntr\\\"'", *to = "\n\t\r\\\"'", *k = strchr(from, p[1]);
        if (k) *o++ = to[k - from], p++;
        else *o++ = *p;
    }
    *o = 0;
    return (size_t)(o - s);
}

// The prompt file (- = stdin) in a malloc'd, NUL-terminated buffer; one trailing newline is
// removed, as is usual. NULL with the problem printed.
static char *read_prompt_file(const char *path, size_t *len) {
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f) {
        fprintf(stderr, "mor-run: cannot read the prompt file '%s': %s\n", path, strerror(errno));
        return NULL;
    }
    size_t n = 0, cap = 4096;
    char *buf = malloc(cap);
    for (size_t got; buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0;) {
        n += got;
        if (cap - n < 2) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) free(buf);
            buf = nb, cap *= 2;
        }
    }
    int bad = !buf || ferror(f);
    int e = errno;
    if (f != stdin) fclose(f);
    if (bad) {
        fprintf(stderr, "mor-run: cannot read the prompt file '%s': %s\n", path, buf ? strerror(e) : "out of memory");
        free(buf);
        return NULL;
    }
    if (n && buf[n - 1] == '\n') n--;
    buf[n] = 0;
    *len = n;
    return buf;
}

// --color: the depth each generated token ran, shallow (blue) to deep (red), in the eight-color
// ANSI set every terminal has. A model's depths are binned onto the palette by their fraction of
// its steps, so 1 and the full depth always get its two ends.
static const char *const palette[] = {"\033[34m", "\033[36m", "\033[32m", "\033[33m", "\033[31m"};
#define N_PALETTE 5
#define COLOR_RESET "\033[0m"
#define NO_DEPTH 0xff  // bytes that are not a token's (the rollback mark): never colored

static int color_of(int32_t d, int64_t steps) {
    if (d < 1) d = 1;
    if (steps <= 1) return N_PALETTE - 1;
    if (d > steps) d = (int32_t)steps;
    return (int)((d - 1) * (N_PALETTE - 1) / (steps - 1));
}

static void color_legend(int64_t steps) {
    fprintf(stderr, "mor-run: colors show the depth each token ran, of %lld step%s:", (long long)steps,
            steps == 1 ? "" : "s");
    for (int64_t d = 1; d <= steps; d++) fprintf(stderr, " %s%lld" COLOR_RESET, palette[color_of((int32_t)d, steps)], (long long)d);
    fprintf(stderr, " (shallow to deep)\n");
}

// One run: the session, what stops a turn, and the text of the current turn with the depth of
// the token each byte came from, so that a stop string spanning tokens is found and text held
// back while it might still become one keeps its color.
typedef struct {
    const mor_model *model;
    mor_session *s;
    mor_detok *dt;  // NULL with --ids
    int64_t steps;
    int color, print_ids, stop_eog, has_vocab;
    const char **stops, **rprompts;
    int n_stops, n_rprompts;
    char *text;
    unsigned char *tdepth;
    size_t n, cap, printed;  // bytes in text, allocated, already written to stdout
    int cur_color;           // palette entry in effect on stdout, -1 none
    int32_t last_depth;
    long n_done, depth_sum, n_rolled;  // tokens generated and run, their depths, tokens rolled back
    int oom;
    char *line;  // -i: the last line read
    size_t line_cap;
} run;

// Why a turn ended.
enum { END_LENGTH, END_EOG, END_STOP, END_REVERSE, END_CONTEXT, END_ERROR };
#define NONE ((size_t)-1)

static int text_append(run *r, const char *b, size_t nb, int32_t d) {
    if (!nb) return 0;
    if (r->n + nb > r->cap) {
        size_t cap = (r->n + nb) * 2 + 256;
        char *t = realloc(r->text, cap);
        if (t) r->text = t;
        unsigned char *td = t ? realloc(r->tdepth, cap) : NULL;
        if (!td) return r->oom = 1, -1;
        r->tdepth = td, r->cap = cap;
    }
    memcpy(r->text + r->n, b, nb);
    memset(r->tdepth + r->n, d < 0 || d >= NO_DEPTH ? NO_DEPTH : d, nb);
    r->n += nb;
    return 0;
}

static void color_set(run *r, int c) {
    if (!r->color || c == r->cur_color) return;
    fputs(c < 0 ? COLOR_RESET : palette[c], stdout);
    r->cur_color = c;
}

// Write text[printed, end) to stdout, colored by depth.
static void emit(run *r, size_t end) {
    for (size_t i = r->printed; i < end; i++) {
        color_set(r, r->tdepth[i] == NO_DEPTH ? -1 : color_of(r->tdepth[i], r->steps));
        fputc(r->text[i], stdout);
    }
    if (end > r->printed) r->printed = end;
    fflush(stdout);
}

static size_t find(const char *h, size_t hn, size_t from, const char *needle) {
    const size_t m = strlen(needle);
    for (size_t i = from; m && i + m <= hn; i++)
        if (!memcmp(h + i, needle, m)) return i;
    return NONE;
}

// After the text grew from n0 bytes: a --stop string anywhere in the unprinted text ends the
// turn where it starts (it and what follows are never printed); a reverse prompt that ends in
// the new bytes ends the turn with everything printed. Otherwise print all but the longest tail
// that could still grow into a --stop string. Returns END_STOP, END_REVERSE or 0.
static int check_stops(run *r, size_t n0) {
    size_t best = NONE;
    for (int i = 0; i < r->n_stops; i++) {
        size_t at = find(r->text, r->n, r->printed, r->stops[i]);
        if (at < best) best = at;
    }
    if (best != NONE) {
        emit(r, best);
        r->printed = r->n;
        return END_STOP;
    }
    for (int i = 0; i < r->n_rprompts; i++) {
        size_t len = strlen(r->rprompts[i]);
        if (find(r->text, r->n, n0 + 1 > len ? n0 + 1 - len : 0, r->rprompts[i]) != NONE) {
            emit(r, r->n);
            return END_REVERSE;
        }
    }
    size_t hold = 0;
    for (int i = 0; i < r->n_stops; i++)
        for (size_t k = strlen(r->stops[i]) - 1; k > hold; k--)
            if (k <= r->n - r->printed && !memcmp(r->text + r->n - k, r->stops[i], k)) {
                hold = k;
                break;
            }
    emit(r, r->n - hold);
    return 0;
}

// One turn: sample, run and print up to n_gen tokens (n_gen < 0: no limit). Every token counted
// in n_done was run, so its depth is known and counted too; a token that does not fit the
// context is neither printed nor counted.
static int generate(run *r, long n_gen) {
    char piece[512];
    int end = END_LENGTH;
    r->n = r->printed = 0;
    for (long k = 0; n_gen < 0 || k < n_gen; k++) {
        int32_t tok;
        if (mor_session_sample(r->s, &tok) != MOR_OK) {
            end = END_ERROR;
            break;
        }
        if (r->stop_eog && r->has_vocab && mor_model_token_is_eog(r->model, tok)) {
            end = END_EOG;
            break;
        }
        int st = mor_session_step(r->s, &tok, 1);
        if (st != MOR_OK) {
            end = st == MOR_E_CONTEXT_FULL ? END_CONTEXT : END_ERROR;
            break;
        }
        int32_t d = mor_session_depth(r->s, -1), rb = mor_session_rollback(r->s);
        r->n_done++, r->depth_sum += d, r->last_depth = d;
        size_t n0 = r->n, nb = 0;
        if (r->print_ids) {
            nb = (size_t)snprintf(piece, sizeof piece, "%d ", tok);
        } else if (mor_detok_push(r->dt, tok, piece, sizeof piece, &nb) != MOR_OK) {
            nb = 0;
        }
        if (text_append(r, piece, nb, d) ||
            (rb > 0 && !r->print_ids && text_append(r, "\u21ba", strlen("\u21ba"), NO_DEPTH))) {  // text taken back
            end = END_ERROR;
            break;
        }
        r->n_rolled += rb;
        if ((end = check_stops(r, n0)) != END_LENGTH) break;
    }
    if (r->dt) {
        size_t nb = 0, n0 = r->n;
        if (end != END_STOP && mor_detok_flush(r->dt, piece, sizeof piece, &nb) == MOR_OK && nb &&
            !text_append(r, piece, nb, r->last_depth)) {
            int e = check_stops(r, n0);
            if (e != END_LENGTH) end = e;
        }
        mor_detok_reset(r->dt);
    }
    if (end != END_STOP) emit(r, r->n);  // the start of a stop string that never completed
    color_set(r, -1);
    fflush(stdout);
    return end;
}

// A full context: what is used, what did not fit, and how to get more.
static void context_full(const run *r, size_t need, char *msg, size_t cap) {
    snprintf(msg, cap, "mor-run: the context is full: %d of its %d tokens are used and %zu more do not fit; "
                    "raise it with -c N (the model was trained on %lld)\n",
            mor_session_n_past(r->s), mor_session_n_ctx(r->s), need,
            (long long)mor_model_get_int(r->model, MOR_INFO_N_CTX_TRAIN));
}

// -i: a line of input appended to the sequence (with its newline). 1 at end of input, 0 done,
// -1 on an error (described in msg).
static int read_turn(run *r, char *msg, size_t cap) {
    ssize_t len = getline(&r->line, &r->line_cap, stdin);
    if (len < 0) return 1;
    char *line = r->line;
    while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) len--;
    if (!len) return 0;  // an empty line: generate on
    line[len++] = '\n';  // getline's buffer held the newline or NUL, so there is room
    if (!isatty(STDIN_FILENO)) fwrite(line, 1, (size_t)len, stdout);  // a terminal has shown it already
    size_t need = 0, n = 0;
    int st = mor_tokenize(r->model, line, (size_t)len, NULL, 0, 0, &need);
    int32_t *toks = st == MOR_OK || st == MOR_E_BUFFER_SMALL ? malloc(sizeof(int32_t) * (need ? need : 1)) : NULL;
    if (toks) st = mor_tokenize(r->model, line, (size_t)len, toks, need, 0, &n);
    if (!toks || st != MOR_OK) {
        snprintf(msg, cap, "mor-run: cannot tokenize the input: %s\n", mor_status_str(toks ? st : MOR_E_NOMEM));
        free(toks);
        return -1;
    }
    st = n ? mor_session_step(r->s, toks, (int32_t)n) : MOR_OK;
    free(toks);
    if (st == MOR_E_CONTEXT_FULL) context_full(r, n, msg, cap);
    else if (st != MOR_OK) snprintf(msg, cap, "mor-run: %s\n", mor_session_last_error(r->s));
    return st == MOR_OK ? 0 : -1;
}

static int is_opt(const char *a, const char *s, const char *l) { return (s && !strcmp(a, s)) || (l && !strcmp(a, l)); }

static void deprecated(const char *old, const char *now) {
    fprintf(stderr, "mor-run: warning: %s is deprecated and goes in the next release; use %s\n", old, now);
}

// main's ways out: everything it allocated is freed on each (so leak checkers stay quiet).
#define FAIL(code) \
    do { \
        rc = (code); \
        goto done; \
    } while (0)

int main(int argc, char **argv) {
    const char *path = NULL, *ids = NULL, *prompt_file = NULL;
    char *text = NULL, *file_text = NULL;
    size_t text_len = 0;
    long n_gen = 64, n_ctx = 0, n_batch = 64, depth = 0, n_threads = 1;
    int print_ids = 0, stop = 1, stats = 0, full = 0, policy = -1, kv = 0, adaptive = 0, kv_f16 = 0;
    int interactive = 0, color = 0;  // color: 0 never, 1 auto, 2 always
    float threshold = -1, decay = 0, budget = 0, rollback = 0;
    long min_depth = -1, shallow = 1, metric = 0;
    const char *depth_map = NULL, *policy_file = NULL;
    const char **stops = calloc((size_t)argc, sizeof *stops), **rprompts = calloc((size_t)argc, sizeof *rprompts);
    int n_stops = 0, n_rprompts = 0, rc = 0;
    mor_model *model = NULL;
    mor_session *s = NULL;
    int32_t *prompt = NULL;
    run r;
    memset(&r, 0, sizeof r);
    if (!stops || !rprompts) FAIL(1);
    mor_sampler_params sp;
    mor_sampler_params_init(&sp);
    for (int i = 1; i < argc; i++) {
        char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long x;
        int bad = 0, used = 1;
        if (is_opt(a, "-h", "--help")) {
            usage(stdout);
            FAIL(0);
        } else if (is_opt(a, "-m", "--model") && v) path = v;
        else if (is_opt(a, "-p", "--prompt") && v) text = v, text_len = unescape(v), prompt_file = NULL, ids = NULL;
        else if (is_opt(a, "-f", "--file") && v) prompt_file = v, text = NULL, ids = NULL;
        else if (is_opt(a, NULL, "--ids-prompt") && v) ids = v, text = NULL, prompt_file = NULL;
        else if (is_opt(a, "-n", "--n-predict") && v) bad = parse_int(v, -1, 1 << 24, &n_gen);
        else if (is_opt(a, "-c", "--ctx-size") && v) bad = parse_int(v, 1, 1 << 20, &n_ctx);
        else if (is_opt(a, "-b", "--batch-size") && v) bad = parse_int(v, 1, 8192, &n_batch);
        else if (is_opt(a, "-t", "--threads") && v) {
            if (parse_int(v, 1, 256, &n_threads)) {
                fprintf(stderr, "mor-run: %s takes a thread count (1 to 256), not '%s'; prompt token ids, which -t took "
                                "before, go with --ids-prompt \"ID ID ...\"\n", a, v);
                FAIL(2);
            }
        } else if (is_opt(a, "-j", NULL) && v) deprecated("-j", "-t (threads)"), bad = parse_int(v, 1, 256, &n_threads);
        else if (is_opt(a, NULL, "--ctx") && v) deprecated("--ctx", "-c or --ctx-size"), bad = parse_int(v, 1, 1 << 20, &n_ctx);
        else if (is_opt(a, NULL, "--batch") && v) deprecated("--batch", "-b or --batch-size"), bad = parse_int(v, 1, 8192, &n_batch);
        else if (is_opt(a, "-r", "--reverse-prompt") && v) rprompts[n_rprompts++] = v, bad = !unescape(v);
        else if (is_opt(a, NULL, "--stop") && v) stops[n_stops++] = v, bad = !unescape(v);
        else if (!strcmp(a, "--temp") && v) bad = parse_float(v, &sp.temperature);
        else if (!strcmp(a, "--top-k") && v) bad = parse_int(v, -1, 1 << 30, &x), sp.top_k = (int32_t)x;
        else if (!strcmp(a, "--top-p") && v) bad = parse_float(v, &sp.top_p);
        else if (!strcmp(a, "--min-p") && v) bad = parse_float(v, &sp.min_p);
        else if (!strcmp(a, "--repeat-penalty") && v) bad = parse_float(v, &sp.repeat_penalty);
        else if (!strcmp(a, "--repeat-last-n") && v) bad = parse_int(v, 0, 1 << 20, &x), sp.repeat_last_n = (int32_t)x;
        else if (is_opt(a, "-s", "--seed") && v) {
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
            else if (!strcmp(a, "--ignore-eos")) stop = 0;
            else if (!strcmp(a, "--no-stop")) deprecated("--no-stop", "--ignore-eos"), stop = 0;
            else if (!strcmp(a, "--stats")) stats = 1;
            else if (!strcmp(a, "--full-depth")) full = 1;
            else if (!strcmp(a, "--adaptive")) adaptive = 1;
            else if (!strcmp(a, "--kv-f16")) kv_f16 = 1;
            else if (is_opt(a, "-i", "--interactive")) interactive = 1;
            else if (is_opt(a, "--color", "--color=auto")) color = 1;
            else if (!strcmp(a, "--color=always")) color = 2;
            else if (!strcmp(a, "--color=never")) color = 0;
            else if (!strcmp(a, "-v")) mor_log_set(on_log, NULL, MOR_LOG_DEBUG);
            else if (a[0] != '-' && !path) deprecated("MODEL as a positional argument", "-m MODEL"), path = a;
            else {
                fprintf(stderr, "mor-run: unknown or incomplete option '%s' (mor-run -h lists them)\n", a);
                FAIL(2);
            }
        }
        if (bad) {
            fprintf(stderr, "mor-run: bad value '%s' for %s\n", v, a);
            FAIL(2);
        }
        i += used;
    }
    if (!path) {
        fprintf(stderr, "mor-run: no model: give one with -m MODEL.gguf (mor-run -h lists the options)\n");
        FAIL(2);
    }
    if ((n_stops || n_rprompts || interactive) && print_ids) {
        fprintf(stderr, "mor-run: -r, --stop and -i work on text, not with --ids\n");
        FAIL(2);
    }
    if (interactive && prompt_file && !strcmp(prompt_file, "-")) {
        fprintf(stderr, "mor-run: -i reads your lines from stdin, so the prompt cannot come from it (-f -)\n");
        FAIL(2);
    }
    if (prompt_file && !(text = file_text = read_prompt_file(prompt_file, &text_len))) FAIL(1);
    if (color == 1) {
        const char *no = getenv("NO_COLOR");
        color = isatty(STDOUT_FILENO) && !(no && *no);
    }

    char err[512];
    double t0 = now();
    if (mor_model_load(path, NULL, &model, err, sizeof err) != MOR_OK) {
        fprintf(stderr, "mor-run: %s\n", err);
        FAIL(1);
    }
    double t_load = now() - t0;
    int has_vocab = mor_model_n_vocab(model) > 0;
    if (!has_vocab) print_ids = 1;
    if (!has_vocab && (n_stops || n_rprompts || interactive)) {
        fprintf(stderr, "mor-run: the model has no vocabulary: -r, --stop and -i need text\n");
        FAIL(2);
    }

    // Prompt.
    size_t n_prompt = 0;
    if (ids) {
        prompt = malloc(sizeof(int32_t) * (strlen(ids) / 2 + 2));
        for (char *p = (char *)ids, *end; *p;) {
            while (*p == ' ' || *p == ',') p++;
            if (!*p) break;
            long v = strtol(p, &end, 10);
            if (end == p) {
                fprintf(stderr, "mor-run: bad token id list near '%s'\n", p);
                FAIL(2);
            }
            prompt[n_prompt++] = (int32_t)v;
            p = end;
        }
    } else if (text && has_vocab) {
        size_t need = 0;
        int st = mor_tokenize(model, text, text_len, NULL, 0, MOR_TOKENIZE_ADD_SPECIAL, &need);
        if (st != MOR_OK && st != MOR_E_BUFFER_SMALL) {
            fprintf(stderr, "mor-run: cannot tokenize the prompt: %s\n", mor_status_str(st));
            FAIL(1);
        }
        prompt = malloc(sizeof(int32_t) * (need ? need : 1));
        mor_tokenize(model, text, text_len, prompt, need, MOR_TOKENIZE_ADD_SPECIAL, &n_prompt);
    } else if (text) {
        fprintf(stderr, "mor-run: the model has no vocabulary; give token ids with --ids-prompt\n");
        FAIL(2);
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
    if (mor_session_create(model, &p, &s, err, sizeof err) != MOR_OK) {
        fprintf(stderr, "mor-run: %s\n", err);
        FAIL(1);
    }
    if (mor_session_set_sampler(s, &sp) != MOR_OK) {
        fprintf(stderr, "mor-run: %s\n", mor_session_last_error(s));
        FAIL(2);
    }
    int policy_flags = depth || full || threshold >= 0 || policy >= 0 || kv || budget > 0 || min_depth >= 0 ||
                       decay > 0 || adaptive || rollback > 0 || metric;
    if (policy_file) {
        mor_exit_policy ep;
        if (policy_flags) {
            fprintf(stderr, "mor-run: give --policy-file or the policy options, not both\n");
            FAIL(2);
        }
        if (read_policy_file(policy_file, &ep)) FAIL(2);
        if (mor_session_set_exit_policy(s, &ep) != MOR_OK) {
            fprintf(stderr, "mor-run: %s: %s\n", policy_file, mor_session_last_error(s));
            FAIL(2);
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
            FAIL(2);
        }
    }
    r.model = model, r.s = s, r.color = color, r.print_ids = print_ids, r.stop_eog = stop, r.has_vocab = has_vocab;
    r.stops = stops, r.n_stops = n_stops, r.rprompts = rprompts, r.n_rprompts = n_rprompts, r.cur_color = -1;
    r.steps = mor_model_get_int(model, MOR_INFO_N_STEPS);
    if (!print_ids) mor_detok_create(model, text ? MOR_DETOKENIZE_KEEP_PREFIX : 0, &r.dt);
    if (color) color_legend(r.steps);
    if (interactive) {
        size_t nb = 0;
        int tmpl = mor_model_meta_str(model, "tokenizer.chat_template", NULL, 0, &nb) != MOR_E_NOT_FOUND;
        fprintf(stderr, "mor-run: interactive: each line you type is appended to the text, then generation goes on; "
                        "end of input (Ctrl-D) ends%s\n",
                tmpl ? " (the model has a chat template, which mor-run does not apply: plain continuation)" : "");
    }

    char msg[512] = "";  // the error that ended the run, printed after the text
    double t1 = now(), t_prompt = 0, t_gen = 0;
    int st = mor_session_step(s, prompt, (int32_t)n_prompt);
    if (st != MOR_OK) {
        if (st == MOR_E_CONTEXT_FULL) context_full(&r, n_prompt, msg, sizeof msg);
        else snprintf(msg, sizeof msg, "mor-run: %s\n", mor_session_last_error(s));
        rc = 1;
    } else {
        t_prompt = now() - t1;
        if (text && r.dt) fwrite(text, 1, text_len, stdout);
        double t2 = now();
        for (;;) {
            int end = generate(&r, n_gen);
            if (end == END_CONTEXT && n_gen < 0 && !interactive) {
                snprintf(msg, sizeof msg, "mor-run: stopped at the end of the context (%d tokens)\n", mor_session_n_ctx(s));
                break;
            }
            if (end == END_CONTEXT || end == END_ERROR) {
                if (end == END_CONTEXT) context_full(&r, 1, msg, sizeof msg);
                else snprintf(msg, sizeof msg, "mor-run: %s\n", r.oom ? "out of memory" : mor_session_last_error(s));
                rc = 1;
                break;
            }
            if (!interactive) break;
            int t = read_turn(&r, msg, sizeof msg);
            if (t) {
                rc = t < 0;
                break;
            }
        }
        t_gen = now() - t2;
    }
    printf("\n");
    fflush(stdout);
    fputs(msg, stderr);
    long n_rec = (long)mor_model_get_int(model, MOR_INFO_N_RECURSION);
    fprintf(stderr, "mor-run: %s, %s, %lld params (%lld unrolled), %ld recursion%s\n",
            mor_model_get_str(model, MOR_INFO_ARCH), mor_model_get_str(model, MOR_INFO_SHARING_NAME),
            (long long)mor_model_get_int(model, MOR_INFO_N_PARAMS),
            (long long)mor_model_get_int(model, MOR_INFO_N_PARAMS_UNROLLED), n_rec, n_rec == 1 ? "" : "s");
    print_relaxations(model);
    fprintf(stderr, "mor-run: load %.1f ms; prompt %zu tokens in %.1f ms (%.1f tok/s); generated %ld tokens in %.1f ms (%.1f tok/s)\n",
            t_load * 1e3, n_prompt, t_prompt * 1e3, n_prompt / (t_prompt > 0 ? t_prompt : 1e-9), r.n_done,
            t_gen * 1e3, r.n_done / (t_gen > 0 ? t_gen : 1e-9));
    if (r.n_done)
        fprintf(stderr, "mor-run: mean depth %.2f of %ld recursions\n", (double)r.depth_sum / (double)r.n_done, n_rec);
    if (stats) print_stats(model, s, (int32_t)n_prompt, r.n_rolled);
    if (depth_map && write_depth_map(depth_map, model, s, (int32_t)n_prompt) != 0) rc = 1;
done:
    free(r.text);
    free(r.tdepth);
    free(r.line);
    free(prompt);
    free(file_text);
    free(stops);
    free(rprompts);
    mor_detok_free(r.dt);
    mor_session_free(s);
    mor_model_free(model);
    return rc;
}
