// mor-bench: prompt-processing (pp) and generation (tg) speed, like llama-bench, per model, type,
// thread count and exit policy, with peak RSS; Markdown table or JSON.
//
//   mor-bench -m model.gguf [-m ...]                      files
//   mor-bench --shape smollm-135m --type f32,f16 --recursions 0,3
//                                                         random-weight models, generated into a
//                                                         temporary folder and deleted afterwards
//   options: -p 128 -n 64 -r 5 -t 1,2 --policy full|fixed:K|router[:T]|capacity|confidence:T|
//            saturation:T|free:T (each may end in /skip, /share, /propagate or /sync for the KV
//            strategy; repeatable) -o md|json --no-mmap --kv-f16 --tg-prompt 4 --layers N --keep DIR
//            --gen-only
//
// pp: one mor_session_step of p tokens on an empty session (n_batch = p: one pass).
// tg: a short prompt (--tg-prompt tokens, not timed), then n single-token steps, timed together.
// Tokens are random ids (fixed seed); nothing is sampled, as llama-bench does. One warm-up run of
// each test precedes the r timed repetitions. Each model runs in its own child process, so the
// peak RSS (VmHWM, else ru_maxrss) is that model's alone; the parent stays small (generation
// also happens in a child). Figures: tokens/s per repetition -> mean ± sample sd, and median.
#include "../tests/support/randmodel.h"
#include "../tests/support/schedbench.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_REPS     64
#define MAX_MODELS   64
#define MAX_POLICIES 16
#define MAX_THREADS  16

typedef struct {
    char path[512];
    char label[96];
    int  generated;                // 1: made by --shape (deleted afterwards unless --keep)
    const randmodel_shape *shape;  // generated models
    randmodel_shape sh;            // with --layers applied
    uint32_t type;
    int      n_rec;
} model_spec;

typedef struct {
    char            name[48];
    int             set;  // 0: the model's default policy
    mor_exit_policy ep;
} policy_spec;

// One result row, sent from the child to the parent through a pipe.
typedef struct {
    int32_t kind;  // 1 = row, 2 = model summary
    int32_t ok;
    char    err[200];
    int32_t threads, policy, test, n_tokens, reps;
    double  tps[MAX_REPS];
    double  mean_depth;
    int64_t kv_bytes;
    // model summary
    int64_t peak_rss, base_rss, weight_bytes, n_params, n_params_unrolled, kv_alloc;
    int32_t n_layer, n_rec, n_stored;
    double  load_ms;
    char    arch[16];
    char    type[16];  // weight type: general.file_type, else guessed from bytes per parameter
} rec;

typedef struct {
    int p, n, reps, tg_prompt, no_mmap, kv_f16;
    int no_sequential;  // --sessions: skip the (slow) sequential baseline
    int threads[MAX_THREADS], n_threads;
    policy_spec pol[MAX_POLICIES];
    int n_pol;
} bench_cfg;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int64_t proc_status_kb(const char *key) {  // VmHWM / VmRSS in bytes, -1 if unknown
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    size_t kl = strlen(key);
    int64_t v = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl) && line[kl] == ':') {
            v = atoll(line + kl + 1) * 1024;
            break;
        }
    fclose(f);
    return v;
}

static int64_t peak_rss(void) {
    int64_t v = proc_status_kb("VmHWM");
    if (v >= 0) return v;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (int64_t)ru.ru_maxrss * 1024;
}

static int write_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n) {
        ssize_t k = write(fd, c, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        c += k;
        n -= (size_t)k;
    }
    return 0;
}

static uint64_t tok_rng = 0x9e3779b97f4a7c15ull;
static int32_t rand_token(int32_t n_vocab) {
    tok_rng ^= tok_rng << 13, tok_rng ^= tok_rng >> 7, tok_rng ^= tok_rng << 17;
    return (int32_t)(tok_rng % (uint64_t)n_vocab);
}

static int parse_policy(const char *s, policy_spec *out) {
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", s);
    mor_exit_policy_init(&out->ep);
    out->set = 1;
    char buf[64];
    snprintf(buf, sizeof buf, "%s", s);
    char *kv = strchr(buf, '/');
    if (kv) {
        *kv++ = 0;
        if (!strcmp(kv, "skip")) out->ep.kv = MOR_KV_SKIP;
        else if (!strcmp(kv, "share")) out->ep.kv = MOR_KV_SHARE;
        else if (!strcmp(kv, "propagate")) out->ep.kv = MOR_KV_PROPAGATE;
        else if (!strcmp(kv, "sync")) out->ep.kv = MOR_KV_SYNC;
        else return -1;
    }
    char *arg = strchr(buf, ':');
    if (arg) *arg++ = 0;
    static const char *names[] = {"full", "fixed", "router", "capacity", "confidence", "saturation", "free"};
    int k = -1;
    for (int i = 0; i < 7; i++)
        if (!strcmp(buf, names[i])) k = i;
    if (!strcmp(buf, "default")) {
        out->set = 0;
        return arg || kv ? -1 : 0;
    }
    if (k < 0) return -1;
    out->ep.policy = k;
    if (k == MOR_EXIT_FIXED) {
        if (!arg) return -1;
        out->ep.depth = atoi(arg);
    } else if (arg) {
        char *end;
        out->ep.threshold = strtof(arg, &end);
        if (*end) return -1;
    } else if (k == MOR_EXIT_CONFIDENCE || k == MOR_EXIT_SATURATION || k == MOR_EXIT_FREE) {
        return -1;  // these need a threshold
    }
    if (k == MOR_EXIT_CONFIDENCE || k == MOR_EXIT_SATURATION) out->ep.min_depth = 1;
    return 0;
}

// The weight type of a file: llama.cpp's general.file_type when present, else the bytes per
// parameter (files written by randmodel.h carry no file type).
static void file_type(const mor_model *m, char *buf, size_t n) {
    char v[32];
    size_t len;
    if (mor_model_meta_str(m, "general.file_type", v, sizeof v, &len) == MOR_OK) {
        static const struct {
            int         id;
            const char *name;
        } ft[] = {{0, "f32"}, {1, "f16"}, {2, "q4_0"}, {3, "q4_1"}, {7, "q8_0"}, {8, "q5_0"}, {9, "q5_1"},
                  {32, "bf16"}};
        for (size_t i = 0; i < sizeof ft / sizeof ft[0]; i++)
            if (atoi(v) == ft[i].id) {
                snprintf(buf, n, "%s", ft[i].name);
                return;
            }
        snprintf(buf, n, "ftype %d", atoi(v) & 0xffff);
        return;
    }
    double bpp = (double)mor_model_get_int(m, MOR_INFO_WEIGHT_BYTES) / (double)mor_model_get_int(m, MOR_INFO_N_PARAMS);
    snprintf(buf, n, "%s", bpp > 3.5 ? "f32" : bpp > 1.9 ? "f16/bf16" : bpp > 1.0 ? "q8_0" : bpp > 0.5 ? "q4_0" : "?");
}

// ---- child: benchmark one model, send rows through fd -----------------------------------------

static void copy_str(char *d, size_t n, const char *s) {  // truncating copy
    size_t l = strlen(s);
    if (l >= n) l = n - 1;
    memcpy(d, s, l);
    d[l] = 0;
}

static void send_err_row(int fd, rec *r, const char *msg) {
    r->ok = 0;
    copy_str(r->err, sizeof r->err, msg);
    write_all(fd, r, sizeof *r);
}

static int run_model(const model_spec *m, const bench_cfg *c, int fd) {
    rec sum;
    memset(&sum, 0, sizeof sum);
    sum.kind = 2;
    sum.base_rss = proc_status_kb("VmRSS");
    mor_model_params mp;
    mor_model_params_init(&mp);
    if (c->no_mmap) mp.flags |= MOR_MODEL_NO_MMAP;
    char err[256];
    mor_model *model;
    double t0 = now_s();
    if (mor_model_load(m->path, &mp, &model, err, sizeof err) != MOR_OK) {
        send_err_row(fd, &sum, err);
        return 1;
    }
    sum.load_ms = 1e3 * (now_s() - t0);
    sum.ok = 1;
    sum.weight_bytes = mor_model_get_int(model, MOR_INFO_WEIGHT_BYTES);
    sum.n_params = mor_model_get_int(model, MOR_INFO_N_PARAMS);
    sum.n_params_unrolled = mor_model_get_int(model, MOR_INFO_N_PARAMS_UNROLLED);
    sum.n_layer = (int32_t)mor_model_get_int(model, MOR_INFO_N_LAYER);
    sum.n_rec = (int32_t)mor_model_get_int(model, MOR_INFO_N_RECURSION);
    sum.n_stored = (int32_t)mor_model_get_int(model, MOR_INFO_N_STORED_LAYER);
    snprintf(sum.arch, sizeof sum.arch, "%s", mor_model_get_str(model, MOR_INFO_ARCH));
    file_type(model, sum.type, sizeof sum.type);
    int32_t n_vocab = (int32_t)mor_model_get_int(model, MOR_INFO_N_VOCAB);
    int n_ctx = c->p > c->tg_prompt + c->n ? c->p : c->tg_prompt + c->n;
    if (n_ctx < 1) n_ctx = 1;
    sum.kv_alloc = (int64_t)sum.n_layer * n_ctx * 2 * mor_model_get_int(model, MOR_INFO_N_HEAD_KV) *
                   mor_model_get_int(model, MOR_INFO_HEAD_DIM) * (int64_t)sizeof(float);

    int32_t *toks = malloc(sizeof(int32_t) * (size_t)(n_ctx + 1));
    if (!toks) {
        send_err_row(fd, &sum, "out of memory");
        return 1;
    }
    for (int ti = 0; ti < c->n_threads; ti++) {
        mor_session_params sp;
        mor_session_params_init(&sp);
        sp.n_ctx = n_ctx;
        sp.n_batch = c->p > 0 ? c->p : 1;
        sp.n_threads = c->threads[ti];
        if (c->kv_f16) sp.flags |= MOR_SESSION_KV_F16;
        mor_session *s = NULL;
        int cst = mor_session_create(model, &sp, &s, err, sizeof err);
        for (int pi = 0; pi < c->n_pol; pi++) {
            for (int test = 0; test < 2; test++) {
                int n_tok = test == 0 ? c->p : c->n;
                if (n_tok <= 0) continue;
                rec r;
                memset(&r, 0, sizeof r);
                r.kind = 1;
                r.threads = c->threads[ti];
                r.policy = pi;
                r.test = test;
                r.n_tokens = n_tok;
                if (cst != MOR_OK) {
                    send_err_row(fd, &r, err);
                    continue;
                }
                int bad = 0;
                double depth_sum = 0;
                int64_t kv = 0;
                for (int rep = -1; rep < c->reps && !bad; rep++) {  // rep -1: warm-up
                    mor_session_reset(s);
                    const mor_exit_policy *ep = c->pol[pi].set ? &c->pol[pi].ep : NULL;
                    if (mor_session_set_exit_policy(s, ep) != MOR_OK) {
                        send_err_row(fd, &r, mor_session_last_error(s));
                        bad = 1;
                        break;
                    }
                    mor_session_stats st0 = {sizeof st0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, {0}};
                    mor_session_stats st1 = st0;
                    double dt;
                    int rc = MOR_OK;
                    if (test == 0) {
                        for (int i = 0; i < n_tok; i++) toks[i] = rand_token(n_vocab);
                        double t1 = now_s();
                        rc = mor_session_step(s, toks, n_tok);
                        dt = now_s() - t1;
                    } else {
                        for (int i = 0; i < c->tg_prompt; i++) toks[i] = rand_token(n_vocab);
                        if (c->tg_prompt > 0) rc = mor_session_step(s, toks, c->tg_prompt);
                        mor_session_get_stats(s, &st0);
                        double t1 = now_s();
                        for (int i = 0; i < n_tok && rc == MOR_OK; i++) {
                            int32_t t = rand_token(n_vocab);
                            rc = mor_session_step(s, &t, 1);
                        }
                        dt = now_s() - t1;
                    }
                    if (rc != MOR_OK) {
                        send_err_row(fd, &r, mor_session_last_error(s));
                        bad = 1;
                        break;
                    }
                    mor_session_get_stats(s, &st1);
                    if (rep >= 0) {
                        if (rep < MAX_REPS) r.tps[rep] = n_tok / dt;
                        depth_sum += (double)(st1.steps_run - st0.steps_run) / (double)(st1.n_tokens - st0.n_tokens);
                        if (st1.kv_bytes > kv) kv = st1.kv_bytes;
                    }
                }
                if (bad) continue;
                r.ok = 1;
                r.reps = c->reps < MAX_REPS ? c->reps : MAX_REPS;
                r.mean_depth = c->reps > 0 ? depth_sum / c->reps : 0;
                r.kv_bytes = kv;
                write_all(fd, &r, sizeof r);
            }
        }
        mor_session_free(s);
    }
    free(toks);
    mor_model_free(model);
    sum.peak_rss = peak_rss();
    write_all(fd, &sum, sizeof sum);
    return 0;
}

// ---- memory read bandwidth (for the decode roofline) -------------------------------------------

typedef struct {
    const uint64_t *p;
    size_t          n;
    uint64_t        sum;
} bw_part;

static void *bw_sum(void *arg) {
    bw_part *b = arg;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i + 4 <= b->n; i += 4) s0 += b->p[i], s1 += b->p[i + 1], s2 += b->p[i + 2], s3 += b->p[i + 3];
    b->sum = s0 + s1 + s2 + s3;
    return NULL;
}

// Read bandwidth in GB/s of a streaming sum over `mib` MiB split across `threads` threads:
// median of 7 passes after one warm-up pass.
static double measure_bw(size_t mib, int threads) {
    size_t n = mib * 1024 * 1024 / 8;
    uint64_t *buf = malloc(n * 8);
    if (!buf) return 0;
    for (size_t i = 0; i < n; i++) buf[i] = i;
    double v[7];
    pthread_t th[MAX_THREADS];
    bw_part part[MAX_THREADS];
    uint64_t sink = 0;
    for (int pass = -1; pass < 7; pass++) {
        double t0 = now_s();
        for (int t = 0; t < threads; t++) {
            part[t].p = buf + n / (size_t)threads * (size_t)t;
            part[t].n = n / (size_t)threads;
            if (t > 0) pthread_create(&th[t], NULL, bw_sum, &part[t]);
        }
        bw_sum(&part[0]);
        for (int t = 1; t < threads; t++) pthread_join(th[t], NULL);
        double dt = now_s() - t0;
        for (int t = 0; t < threads; t++) sink += part[t].sum;
        if (pass >= 0) v[pass] = (double)(n / (size_t)threads * (size_t)threads * 8) / dt / 1e9;
    }
    free(buf);
    qsort(v, 7, sizeof v[0], cmp_d);
    return sink == 1 ? 0 : v[3];
}

// ---- parent --------------------------------------------------------------------------------------

static int gen_model(const model_spec *m) {  // in a child, so the parent's RSS stays small
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        char err[256];
        if (randmodel_write(&m->sh, m->type, m->n_rec, NULL, m->path, err, sizeof err) != MOR_OK) {
            fprintf(stderr, "mor-bench: %s: %s\n", m->path, err);
            _exit(1);
        }
        _exit(0);
    }
    int ws;
    while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {}
    return WIFEXITED(ws) && WEXITSTATUS(ws) == 0 ? 0 : -1;
}

typedef struct {
    model_spec spec;
    rec        sum;
    int64_t    file_size;
    rec       *rows;
    int        n_rows;
    char       fail[200];
} model_result;

static int bench_model(const model_spec *m, const bench_cfg *c, model_result *out) {
    int fds[2];
    if (pipe(fds)) return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        close(fds[0]);
        _exit(run_model(m, c, fds[1]));
    }
    close(fds[1]);
    rec r;
    size_t got = 0;
    for (;;) {
        ssize_t k = read(fds[0], (char *)&r + got, sizeof r - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        got += (size_t)k;
        if (got < sizeof r) continue;
        got = 0;
        if (r.kind == 2) {
            out->sum = r;
            if (!r.ok) snprintf(out->fail, sizeof out->fail, "%s", r.err);
        } else {
            rec *nr = realloc(out->rows, sizeof(rec) * (size_t)(out->n_rows + 1));
            if (!nr) break;
            out->rows = nr;
            out->rows[out->n_rows++] = r;
        }
    }
    close(fds[0]);
    int ws;
    while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {}
    if (!(WIFEXITED(ws) && WEXITSTATUS(ws) == 0) && !out->fail[0])
        snprintf(out->fail, sizeof out->fail, "benchmark process %s %d", WIFSIGNALED(ws) ? "killed by signal" : "exit",
                 WIFSIGNALED(ws) ? WTERMSIG(ws) : WEXITSTATUS(ws));
    return 0;
}

static void stats(const rec *r, double *mean, double *sd, double *med) {
    int n = r->reps;
    double s = 0, v[MAX_REPS];
    for (int i = 0; i < n; i++) s += (v[i] = r->tps[i]);
    *mean = n ? s / n : 0;
    double q = 0;
    for (int i = 0; i < n; i++) q += (v[i] - *mean) * (v[i] - *mean);
    *sd = n > 1 ? sqrt(q / (n - 1)) : 0;
    qsort(v, (size_t)n, sizeof v[0], cmp_d);
    *med = n ? (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2])) : 0;
}

static const double MiB = 1024.0 * 1024.0;

static void layers_str(const model_result *mr, char *buf, size_t n) {
    if (mr->sum.n_rec > 1)
        snprintf(buf, n, "%d (%d stored, %d rec)", mr->sum.n_layer, mr->sum.n_stored, mr->sum.n_rec);
    else
        snprintf(buf, n, "%d", mr->sum.n_layer);
}

// Bytes of weights a full-depth token streams if nothing stays in cache: the stored weights
// scaled to the unrolled parameter count (shared blocks counted once per recursion).
static double stream_bytes(const model_result *mr) {
    if (mr->sum.n_params <= 0) return (double)mr->sum.weight_bytes;
    return (double)mr->sum.weight_bytes * (double)mr->sum.n_params_unrolled / (double)mr->sum.n_params;
}

static void print_md(const model_result *res, int n_res, const bench_cfg *c) {
    printf("| model | type | file MiB | layers | threads | policy | test | t/s (mean ± sd) | median | depth | "
           "peak RSS MiB | KV MiB | RSS ≤ file+KV+16M |\n");
    printf("|---|---|---:|---|---:|---|---|---:|---:|---:|---:|---:|---|\n");
    for (int i = 0; i < n_res; i++) {
        const model_result *mr = &res[i];
        const char *type = mr->spec.generated ? randmodel_type_name(mr->spec.type) : mr->sum.type[0] ? mr->sum.type : "?";
        char lay[64];
        layers_str(mr, lay, sizeof lay);
        if (mr->fail[0] && !mr->n_rows) {
            printf("| %s | %s | %.1f | - | - | - | - | failed: %s | | | | | |\n", mr->spec.label, type,
                   (double)mr->file_size / MiB, mr->fail);
            continue;
        }
        int64_t kv_max = 0;
        for (int j = 0; j < mr->n_rows; j++)
            if (mr->rows[j].kv_bytes > kv_max) kv_max = mr->rows[j].kv_bytes;
        int rss_ok = mr->sum.peak_rss <= mr->file_size + kv_max + 16 * 1024 * 1024;
        for (int j = 0; j < mr->n_rows; j++) {
            const rec *r = &mr->rows[j];
            char test[32];
            snprintf(test, sizeof test, "%s%d", r->test ? "tg" : "pp", r->n_tokens);
            if (!r->ok) {
                printf("| %s | %s | %.1f | %s | %d | %s | %s | n/a: %s | | | | | |\n", mr->spec.label, type,
                       (double)mr->file_size / MiB, lay, r->threads, c->pol[r->policy].name, test, r->err);
                continue;
            }
            double mean, sd, med;
            stats(r, &mean, &sd, &med);
            printf("| %s | %s | %.1f | %s | %d | %s | %s | %.2f ± %.2f | %.2f | %.2f | %.1f | %.2f | %s |\n",
                   mr->spec.label, type, (double)mr->file_size / MiB, lay, r->threads, c->pol[r->policy].name, test,
                   mean, sd, med, r->mean_depth, (double)mr->sum.peak_rss / MiB, (double)r->kv_bytes / MiB,
                   mr->sum.peak_rss > 0 ? (rss_ok ? "yes" : "no") : "?");
        }
    }
    printf("\np = %d, n = %d (after a %d-token prompt), %d repetitions after one warm-up; depth = mean steps "
           "per token; KV = bytes held at the end of the test; peak RSS per model process (mmap %s, "
           "K/V %s).\n",
           c->p, c->n, c->tg_prompt, c->reps, c->no_mmap ? "off" : "on", c->kv_f16 ? "F16" : "F32");
}

static void json_str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20) printf("\\u%04x", *s);
        else putchar(*s);
    }
    putchar('"');
}

static void print_json(const model_result *res, int n_res, const bench_cfg *c) {
    printf("{\n  \"mor_version\": \"%s\", \"p\": %d, \"n\": %d, \"tg_prompt\": %d, \"repetitions\": %d, "
           "\"mmap\": %s, \"kv_f16\": %s,\n  \"models\": [\n",
           mor_version(), c->p, c->n, c->tg_prompt, c->reps, c->no_mmap ? "false" : "true", c->kv_f16 ? "true" : "false");
    for (int i = 0; i < n_res; i++) {
        const model_result *mr = &res[i];
        printf("    {\"model\": ");
        json_str(mr->spec.label);
        printf(", \"path\": ");
        json_str(mr->spec.path);
        printf(", \"type\": \"%s\", \"generated\": %s, \"file_bytes\": %lld",
               mr->spec.generated ? randmodel_type_name(mr->spec.type) : mr->sum.type, mr->spec.generated ? "true" : "false",
               (long long)mr->file_size);
        if (mr->fail[0]) {
            printf(", \"error\": ");
            json_str(mr->fail);
        }
        printf(",\n     \"arch\": ");
        json_str(mr->sum.arch);
        printf(", \"n_layer\": %d, \"n_recursion\": %d, \"n_stored_layer\": %d, \"n_params\": %lld, "
               "\"n_params_unrolled\": %lld, \"weight_bytes\": %lld, \"stream_bytes_per_token\": %.0f, "
               "\"load_ms\": %.1f, \"base_rss_bytes\": %lld, \"peak_rss_bytes\": %lld, \"kv_alloc_bytes\": %lld,\n"
               "     \"results\": [",
               mr->sum.n_layer, mr->sum.n_rec, mr->sum.n_stored, (long long)mr->sum.n_params,
               (long long)mr->sum.n_params_unrolled, (long long)mr->sum.weight_bytes, stream_bytes(mr), mr->sum.load_ms,
               (long long)mr->sum.base_rss, (long long)mr->sum.peak_rss, (long long)mr->sum.kv_alloc);
        for (int j = 0; j < mr->n_rows; j++) {
            const rec *r = &mr->rows[j];
            printf("%s\n       {\"test\": \"%s\", \"n_tokens\": %d, \"threads\": %d, \"policy\": ", j ? "," : "",
                   r->test ? "tg" : "pp", r->n_tokens, r->threads);
            json_str(c->pol[r->policy].name);
            if (!r->ok) {
                printf(", \"error\": ");
                json_str(r->err);
                printf("}");
                continue;
            }
            double mean, sd, med;
            stats(r, &mean, &sd, &med);
            printf(", \"tps_mean\": %.4f, \"tps_sd\": %.4f, \"tps_median\": %.4f, \"mean_depth\": %.4f, "
                   "\"kv_bytes\": %lld, \"tps\": [",
                   mean, sd, med, r->mean_depth, (long long)r->kv_bytes);
            for (int k = 0; k < r->reps; k++) printf("%s%.4f", k ? ", " : "", r->tps[k]);
            printf("]}");
        }
        printf("\n     ]}%s\n", i + 1 < n_res ? "," : "");
    }
    printf("  ]\n}\n");
}

static void usage(void) {
    fprintf(stderr,
            "usage: mor-bench [-m FILE]... [--shape NAME [--type f32,f16,bf16] [--recursions 0,3] [--layers N]]\n"
            "                 [-p 128] [-n 64] [-r 5] [-t 1,2] [--policy P]... [-o md|json] [--no-mmap] [--kv-f16]\n"
            "                 [--tg-prompt 4] [--keep DIR] [--gen-only]\n"
            "  -m FILE          a GGUF model (repeatable)\n"
            "  --shape NAME     generate a random-weight model: smollm-135m, smollm-360m, stories15m, tiny,\n"
            "                   tinyllama-1.1b\n"
            "                   (repeatable; each is combined with every --type and --recursions)\n"
            "  --type LIST      f32, f16, bf16 (comma-separated; default f32)\n"
            "  --recursions L   0 = vanilla, N = middle-cycle MoR of the same unrolled depth (default 0)\n"
            "  --layers N       override the shape's depth (e.g. a vanilla model as deep as a MoR one)\n"
            "  -p N / -n N      prompt tokens for pp (0: skip) / generated tokens for tg (0: skip)\n"
            "  -r N             repetitions after one warm-up (default 5)\n"
            "  -t LIST          thread counts (default 1)\n"
            "  --policy P       default, full, fixed:K, router[:T], capacity, confidence:T, saturation:T,\n"
            "                   free:T, optionally /skip|/share|/propagate|/sync (repeatable; default: default)\n"
            "  -o md|json       output format (default md)\n"
            "  --no-mmap        read the model into memory instead of mapping it\n"
            "  --kv-f16         keep K/V in half precision (llama.cpp's default cache type)\n"
            "  --tg-prompt N    untimed prompt before the tg steps (default 4)\n"
            "  --keep DIR       write generated models to DIR and keep them\n"
            "  --gen-only       only generate (with --keep) and print the paths\n"
            "  --bw MIB         also measure read bandwidth (streaming sum over MIB MiB, per thread count)\n"
            "  --sessions LIST  many sessions (e.g. 1,4,16,64): the scheduler (continuous depth-wise batching)\n"
            "                   against static batching and sequential stepping; -p/-n per session\n"
            "  --depths D       with --sessions: full, random (a router drawing depths 1..N), model, confidence,\n"
            "                   skewed (a router continuing each step with probability 0.3)\n"
            "  --no-sequential  with --sessions: leave out the sequential baseline (slow at many sessions)\n"
            "                   and print the decode floor of each model: stream bytes per token / bandwidth\n");
}

static int parse_list(const char *s, int *out, int max, int lo, int hi) {
    int n = 0;
    while (*s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < lo || v > hi || n >= max) return -1;
        out[n++] = (int)v;
        s = end;
        if (*s == ',') s++;
        else if (*s) return -1;
    }
    return n;
}

// Aggregate generated tokens/s of n sessions (prompt c->p tokens each, then c->n generated) under
// the scheduler (continuous depth-wise batching), static batching and sequential stepping, with
// the mean rows per batched layer; median of c->reps runs. Markdown rows on stdout.
static int bench_sessions(const char *path, const char *label, const int *sessions, int n_sessions,
                          const bench_cfg *c, int depth_mode) {
    char err[512];
    mor_model *m;
    if (mor_model_load(path, NULL, &m, err, sizeof err)) {
        fprintf(stderr, "mor-bench: %s\n", err);
        return 1;
    }
    static const char *depth_names[] = {"full depth", "random depth 1..N (router)", "the model's policy",
                                        "confidence exit 0.3", "skewed: each further step p = 0.3 (router)"};
    static int header;
    if (!header++)
        printf("| model | depths | sessions | threads | continuous t/s | static t/s | sequential t/s | vs sequential | "
               "vs static | rows per layer (cont. / static) | rows per head (cont. / static) | mean depth |\n"
               "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|\n");
    for (int si = 0; si < n_sessions; si++)
        for (int ti = 0; ti < c->n_threads; ti++) {
            double t[3][MAX_REPS], occ[3] = {0}, hocc[3] = {0}, depth = 0;
            for (int r = 0; r < c->reps; r++)
                for (int mode = 0; mode < 3 - c->no_sequential; mode++) {  // interleaved: noise hits all alike
                    sb_result sr;
                    if (sb_run(m, sessions[si], c->threads[ti], mode, depth_mode, c->p > 0 ? c->p : 16,
                               c->n > 0 ? c->n : 32, &sr)) {
                        mor_model_free(m);
                        return 1;
                    }
                    t[mode][r] = sr.tok_s;
                    occ[mode] = sr.occupancy;
                    hocc[mode] = sr.head_occ;
                    depth = sr.mean_depth;
                }
            double med[3] = {0};
            for (int mode = 0; mode < 3 - c->no_sequential; mode++) {
                qsort(t[mode], (size_t)c->reps, sizeof(double), cmp_d);
                med[mode] = c->reps % 2 ? t[mode][c->reps / 2] : 0.5 * (t[mode][c->reps / 2 - 1] + t[mode][c->reps / 2]);
            }
            char seq[32] = "-", vs_seq[32] = "-";
            if (!c->no_sequential) {
                snprintf(seq, sizeof seq, "%.1f", med[2]);
                snprintf(vs_seq, sizeof vs_seq, "%.2fx", med[0] / med[2]);
            }
            printf("| %s | %s | %d | %d | %.1f | %.1f | %s | %s | %.2fx | %.1f / %.1f | %.1f / %.1f | %.2f |\n", label,
                   depth_names[depth_mode], sessions[si], c->threads[ti], med[0], med[1], seq, vs_seq, med[0] / med[1],
                   occ[0], occ[1], hocc[0], hocc[1], depth);
            fflush(stdout);
        }
    mor_model_free(m);
    return 0;
}

int main(int argc, char **argv) {
    int sessions[8] = {0}, n_sessions = 0, depth_mode = 2;
    bench_cfg c;
    memset(&c, 0, sizeof c);
    c.p = 128, c.n = 64, c.reps = 5, c.tg_prompt = 4;
    c.threads[0] = 1, c.n_threads = 1;
    const char *files[MAX_MODELS], *shapes[MAX_MODELS], *keep = NULL;
    int n_files = 0, n_shapes = 0, types[8] = {MOR__DT_F32}, n_types = 1, recs[8] = {0}, n_recs = 1, layers = 0;
    int json = 0, gen_only = 0, types_set = 0, bw_mib = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0, used = 1;
        if (!strcmp(a, "-m") && v) bad = n_files >= MAX_MODELS, files[n_files++ % MAX_MODELS] = v;
        else if (!strcmp(a, "--shape") && v) {
            bad = n_shapes >= MAX_MODELS || !randmodel_find(v);
            if (!bad) shapes[n_shapes++] = v;
        } else if (!strcmp(a, "--type") && v) {
            char buf[128];
            snprintf(buf, sizeof buf, "%s", v);
            if (!types_set) n_types = 0;
            types_set = 1;
            for (char *t = strtok(buf, ","); t && !bad; t = strtok(NULL, ",")) {
                int ty = randmodel_type(t);
                bad = ty < 0 || n_types >= 8;
                if (!bad) types[n_types++] = ty;
            }
        } else if (!strcmp(a, "--recursions") && v) bad = (n_recs = parse_list(v, recs, 8, 0, 64)) < 1;
        else if (!strcmp(a, "--layers") && v) bad = parse_list(v, &layers, 1, 1, 4096) != 1;
        else if (!strcmp(a, "-p") && v) bad = parse_list(v, &c.p, 1, 0, 1 << 20) != 1;
        else if (!strcmp(a, "-n") && v) bad = parse_list(v, &c.n, 1, 0, 1 << 20) != 1;
        else if (!strcmp(a, "-r") && v) bad = parse_list(v, &c.reps, 1, 1, MAX_REPS) != 1;
        else if (!strcmp(a, "-t") && v) bad = (c.n_threads = parse_list(v, c.threads, MAX_THREADS, 1, 256)) < 1;
        else if (!strcmp(a, "--tg-prompt") && v) bad = parse_list(v, &c.tg_prompt, 1, 0, 1 << 20) != 1;
        else if (!strcmp(a, "--policy") && v) {
            bad = c.n_pol >= MAX_POLICIES || parse_policy(v, &c.pol[c.n_pol]) != 0;
            if (!bad) c.n_pol++;
        } else if (!strcmp(a, "-o") && v) {
            bad = strcmp(v, "md") && strcmp(v, "json");
            json = !strcmp(v, "json");
        } else if (!strcmp(a, "--keep") && v) keep = v;
        else if (!strcmp(a, "--bw") && v) bad = parse_list(v, &bw_mib, 1, 1, 1 << 16) != 1;
        else if (!strcmp(a, "--no-mmap")) c.no_mmap = 1, used = 0;
        else if (!strcmp(a, "--kv-f16")) c.kv_f16 = 1, used = 0;
        else if (!strcmp(a, "--gen-only")) gen_only = 1, used = 0;
        else if (!strcmp(a, "--no-sequential")) c.no_sequential = 1, used = 0;
        else if (!strcmp(a, "--sessions") && v) bad = (n_sessions = parse_list(v, sessions, 8, 1, 1024)) < 1;
        else if (!strcmp(a, "--depths") && v) {
            static const char *modes[] = {"full", "random", "model", "confidence", "skewed"};
            bad = 1;
            for (int k = 0; k < 5; k++)
                if (!strcmp(v, modes[k])) depth_mode = k, bad = 0;
        }
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return 0;
        } else bad = 1, used = 0;
        if (bad) {
            fprintf(stderr, "mor-bench: bad option or value: %s%s%s\n", a, used && v ? " " : "", used && v ? v : "");
            usage();
            return 2;
        }
        i += used;
    }
    if (!n_files && !n_shapes) {
        usage();
        return 2;
    }
    if (c.n_pol == 0) parse_policy("default", &c.pol[c.n_pol++]);
    if (n_sessions && json) {
        fprintf(stderr, "mor-bench: --sessions prints Markdown only\n");
        return 2;
    }

    static model_spec specs[MAX_MODELS];
    int n_specs = 0;
    char tmpdir[512] = "";
    if (n_shapes) {
        if (keep) {
            snprintf(tmpdir, sizeof tmpdir, "%s", keep);
            if (mkdir(tmpdir, 0755) && errno != EEXIST) {
                fprintf(stderr, "mor-bench: cannot create %s: %s\n", tmpdir, strerror(errno));
                return 1;
            }
        } else {
            const char *base = getenv("TMPDIR");
            snprintf(tmpdir, sizeof tmpdir, "%s/mor-bench-XXXXXX", base && *base ? base : "/tmp");
            if (!mkdtemp(tmpdir)) {
                fprintf(stderr, "mor-bench: cannot create a temporary folder: %s\n", strerror(errno));
                return 1;
            }
        }
    }
    for (int i = 0; i < n_files && n_specs < MAX_MODELS; i++) {
        model_spec *m = &specs[n_specs++];
        memset(m, 0, sizeof *m);
        snprintf(m->path, sizeof m->path, "%s", files[i]);
        const char *b = strrchr(files[i], '/');
        snprintf(m->label, sizeof m->label, "%s", b ? b + 1 : files[i]);
    }
    for (int i = 0; i < n_shapes; i++)
        for (int r = 0; r < n_recs; r++)
            for (int t = 0; t < n_types && n_specs < MAX_MODELS; t++) {
                model_spec *m = &specs[n_specs++];
                memset(m, 0, sizeof *m);
                m->generated = 1;
                m->shape = randmodel_find(shapes[i]);
                m->sh = *m->shape;
                if (layers) m->sh.layers = layers;
                m->type = (uint32_t)types[t];
                m->n_rec = recs[r];
                char depth[32] = "", rec_s[16] = "";
                if (layers) snprintf(depth, sizeof depth, "-L%d", layers);
                if (recs[r]) snprintf(rec_s, sizeof rec_s, "-mor%d", recs[r]);
                snprintf(m->label, sizeof m->label, "%s%s%s", shapes[i], depth, rec_s);
                snprintf(m->path, sizeof m->path, "%s/%s-%s.gguf", tmpdir, m->label, randmodel_type_name(m->type));
            }

    model_result *res = calloc((size_t)n_specs, sizeof *res);
    if (!res) return 1;
    int fails = 0;
    for (int i = 0; i < n_specs; i++) {
        model_spec *m = &specs[i];
        res[i].spec = *m;
        if (m->generated) {
            fprintf(stderr, "mor-bench: generating %s\n", m->path);
            if (gen_model(m)) {
                copy_str(res[i].fail, sizeof res[i].fail, "could not generate the model");
                fails++;
                continue;
            }
            if (gen_only) {
                printf("%s\n", m->path);
                continue;
            }
        }
        struct stat stt;
        res[i].file_size = stat(m->path, &stt) == 0 ? (int64_t)stt.st_size : -1;
        fprintf(stderr, "mor-bench: running %s\n", m->path);
        if (n_sessions) {  // many sessions: the scheduler against its two baselines
            fails += bench_sessions(m->path, m->label, sessions, n_sessions, &c, depth_mode);
            if (m->generated && !keep) unlink(m->path);
            continue;
        }
        if (bench_model(m, &c, &res[i]) || res[i].fail[0]) fails++;
        if (m->generated && !keep) unlink(m->path);
    }
    if (n_shapes && !keep) rmdir(tmpdir);
    if (gen_only || n_sessions) return fails ? 1 : 0;
    double bw[MAX_THREADS] = {0};
    if (bw_mib)
        for (int t = 0; t < c.n_threads; t++) bw[t] = measure_bw((size_t)bw_mib, c.threads[t]);
    if (json) print_json(res, n_specs, &c);
    else print_md(res, n_specs, &c);
    if (bw_mib && !json) {
        printf("\nRead bandwidth (streaming sum over %d MiB):", bw_mib);
        for (int t = 0; t < c.n_threads; t++) printf(" %d thread%s %.1f GB/s;", c.threads[t], c.threads[t] > 1 ? "s" : "", bw[t]);
        printf("\n\n| model | stream MB/token | threads | tg floor t/s (bandwidth / stream bytes) |\n|---|---:|---:|---:|\n");
        for (int i = 0; i < n_specs; i++)
            for (int t = 0; t < c.n_threads; t++)
                if (!res[i].fail[0])
                    printf("| %s | %.1f | %d | %.1f |\n", res[i].spec.label, stream_bytes(&res[i]) / 1e6, c.threads[t],
                           bw[t] * 1e9 / stream_bytes(&res[i]));
    } else if (bw_mib) {
        fprintf(stderr, "mor-bench: read bandwidth over %d MiB:", bw_mib);
        for (int t = 0; t < c.n_threads; t++) fprintf(stderr, " %dT %.2f GB/s", c.threads[t], bw[t]);
        fprintf(stderr, "\n");
    }
    for (int i = 0; i < n_specs; i++) free(res[i].rows);
    free(res);
    return fails ? 1 : 0;
}
