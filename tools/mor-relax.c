// mor-relax: a vanilla model (arch llama, or arch mor with one recursion) to a relaxed
// recursive mor model: shared layers initialised from the original ones (stepwise, average or
// lower), per-recursion norms, and for every unrolled layer a LoRA pair initialised from the
// truncated SVD of that layer's residual against its shared layer. docs/RELAX.md has the method,
// what is exact and the measurements.
//
//   mor-relax IN.gguf OUT.gguf --recursions N [--sharing S] [--init M] [--rank R | full]
//       [--roles LIST] [--type T] [--lora-type T] [--lora-scale S] [--no-norm-overrides]
//       [--skip-exact] [-q]
//
// Exit status: 0 written (and the written file loads); 1 the input cannot be converted, or an
// error (one message naming the key, tensor or setting; no output file left behind); 2 bad usage.
// The work is in tools/lib/relax.c (relax.h), the SVD in tools/lib/svd.c.
#include "relax.h"

#include "dtype.h"
#include "gguf.h"
#include "mor.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void usage(FILE *f) {
    fprintf(
        f,
        "usage: mor-relax IN.gguf OUT.gguf --recursions N [options]\n"
        "Turns a vanilla model (arch llama, or arch mor with mor.recursion.count = 1) into a relaxed\n"
        "recursive mor model with SVD-initialised LoRA (docs/RELAX.md).\n"
        "  --recursions N       N_r >= 2: L (cycle, sequence) or L - 2 (middle_*) must split into N blocks\n"
        "  --sharing S          cycle, sequence, middle_cycle (default) or middle_sequence\n"
        "  --init M             stepwise (default), average or lower: where the shared layers come from\n"
        "  --rank R             LoRA rank per projection, capped at min(in, out); 0: no LoRA; full: exact\n"
        "                       (default 0)\n"
        "  --roles LIST         projections that get LoRA, comma-separated: q,k,v,o,gate,up,down (the\n"
        "                       default, also 'all'; attn_q ... ffn_down are accepted too)\n"
        "  --type T             auto (default), f32 or f16: the shared matrices\n"
        "  --lora-type T        auto (default), f32 or f16: the LoRA matrices\n"
        "                       (auto: f32 when every projection of the input is F32, else f16)\n"
        "  --lora-scale S       sigma written as mor.lora.scale (default 1); lora_b = U S / sigma\n"
        "  --no-norm-overrides  share the norms too (no per-recursion attn_norm / ffn_norm)\n"
        "  --skip-exact         no LoRA pair where the residual is exactly zero (default: written,\n"
        "                       lora_b = 0, so that every position can be trained)\n"
        "  -q                   errors and warnings only\n");
}

static const char *const role_name[7] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                         "ffn_gate", "ffn_up", "ffn_down"};

static void print_warning(void *user, const char *msg) {
    (void)user;
    fprintf(stderr, "mor-relax: warning: %s\n", msg);
}

static int parse_long(const char *v, long lo, long hi, long *out) {
    char *e;
    errno = 0;
    long x = strtol(v, &e, 10);
    if (e == v || *e || errno || x < lo || x > hi) return -1;
    *out = x;
    return 0;
}

static int parse_type(const char *v, uint32_t *out) {
    if (!strcmp(v, "auto")) *out = MOR__RELAX_AUTO;
    else if (!strcmp(v, "f32") || !strcmp(v, "F32")) *out = MOR__DT_F32;
    else if (!strcmp(v, "f16") || !strcmp(v, "F16")) *out = MOR__DT_F16;
    else return -1;
    return 0;
}

static int same_file(const char *a, const char *b) {
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

// One option with its value; 0, or 2 after printing what was wrong.
static int option(mor__relax_opts *o, const char *a, const char *v) {
    static const char *const names[] = {"--recursions", "--sharing", "--init",      "--rank",
                                        "--roles",      "--type",    "--lora-type", "--lora-scale"};
    static const char *const want[] = {"an integer from 2 to 4096",
                                       "cycle, sequence, middle_cycle or middle_sequence",
                                       "stepwise, average or lower",
                                       "an integer >= 0 or 'full'",
                                       "a comma-separated list of q, k, v, o, gate, up, down (or all)",
                                       "auto, f32 or f16",
                                       "auto, f32 or f16",
                                       "a number > 0"};
    size_t k = 0;
    while (k < sizeof names / sizeof names[0] && strcmp(a, names[k])) k++;
    if (k == sizeof names / sizeof names[0]) {
        fprintf(stderr, "mor-relax: unknown option '%s'\n", a);
        usage(stderr);
        return 2;
    }
    if (!v) {
        fprintf(stderr, "mor-relax: %s needs a value\n", a);
        return 2;
    }
    int bad = 0;
    long x = 0;
    switch (k) {
    case 0: bad = parse_long(v, 2, 4096, &x), o->n_rec = (int)x; break;
    case 1: bad = (o->sharing = mor__relax_sharing_parse(v)) < 0; break;
    case 2: bad = (o->init = mor__relax_init_parse(v)) < 0; break;
    case 3:
        if (!strcmp(v, "full")) o->rank = MOR__RELAX_FULL_RANK;
        else bad = parse_long(v, 0, 1L << 24, &o->rank);
        break;
    case 4: bad = (o->roles = mor__relax_roles_parse(v)) < 0; break;
    case 5: bad = parse_type(v, &o->type); break;
    case 6: bad = parse_type(v, &o->lora_type); break;
    default: {
        char *e;
        double s = strtod(v, &e);
        bad = e == v || *e || !(s > 0 && s < 1e6);
        o->sigma = (float)s;
    }
    }
    if (bad) fprintf(stderr, "mor-relax: %s '%s': expected %s\n", a, v, want[k]);
    return bad ? 2 : 0;
}

int main(int argc, char **argv) {
    const char *pos[2];
    int n_pos = 0, quiet = 0;
    mor__relax_opts o;
    mor__relax_opts_init(&o);
    o.warn = print_warning;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "-q")) {
            quiet = 1;
        } else if (!strcmp(a, "--no-norm-overrides")) {
            o.norm_overrides = 0;
        } else if (!strcmp(a, "--skip-exact")) {
            o.skip_exact = 1;
        } else if (a[0] == '-' && a[1]) {
            int rc = option(&o, a, i + 1 < argc ? argv[i + 1] : NULL);
            if (rc) return rc;
            i++;
        } else if (n_pos == 2) {
            fprintf(stderr, "mor-relax: too many arguments ('%s')\n", a);
            usage(stderr);
            return 2;
        } else {
            pos[n_pos++] = a;
        }
    }
    if (n_pos != 2) {
        usage(stderr);
        return 2;
    }
    if (!o.n_rec) {
        fprintf(stderr, "mor-relax: --recursions N is required\n");
        return 2;
    }
    if (same_file(pos[0], pos[1])) {
        fprintf(stderr, "mor-relax: the output %s is the input: refusing to overwrite it\n", pos[1]);
        return 2;
    }
    char err[1024] = "";
    mor__relax_stats st;
    int s = mor__relax_file(pos[0], pos[1], &o, &st, err, sizeof err);
    if (s) {
        fprintf(stderr, "mor-relax: %s\n", err);
        return 1;
    }
    if (quiet) return 0;
    printf("%s: %s, %d layers, d %d, d_ff %d, %d heads / %d KV heads%s\n", pos[0], st.arch, st.L, st.d, st.ff,
           st.n_h, st.n_kv,
           st.rope_permuted ? " (adjacent-pair RoPE: Q/K rows permuted to rotate-half)" : "");
    printf("plan: %s, %d recursions of %d layers, %d stored layers; init %s: %s",
           mor__relax_sharing_name(o.sharing), o.n_rec, st.B, st.n_store, mor__relax_init_name(o.init),
           st.sources);
    if (st.n_store > st.B) printf(" (0 and %d: layers 0 and %d)", st.B + 1, st.L - 1);
    printf("\n");
    if (o.rank != 0 && o.roles) {
        if (o.rank < 0) printf("LoRA: full rank on");
        else printf("LoRA: rank %ld on", o.rank);
        for (int r = 0; r < 7; r++)
            if (st.rank[r]) printf(" %s(%lld)", role_name[r], (long long)st.rank[r]);
        printf(", %s, sigma %g\n", mor__dtype_name(st.lora_type), (double)o.sigma);
    }
    printf("wrote %s: %s shared matrices, %d LoRA pairs (%d of zero residual), %d norm overrides\n", pos[1],
           mor__dtype_name(st.type), st.n_lora, st.n_lora_zero, st.n_norm_override);
    printf("parameters: %llu -> %llu (%.4f of the input); without the embedding and output matrices: %llu -> "
           "%llu "
           "(%.4f)\n",
           (unsigned long long)st.params_in, (unsigned long long)st.params_out,
           (double)st.params_out / (double)st.params_in, (unsigned long long)st.body_in,
           (unsigned long long)st.body_out, st.body_in ? (double)st.body_out / (double)st.body_in : 0.0);
    printf("time: %.2f s (%d SVDs: %.2f s)\n", st.seconds, st.n_svd, st.svd_seconds);
    return 0;
}
