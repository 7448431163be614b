// measure.h: scoring an exit policy on text, shared by tools/mor-sweep and tools/mor-calibrate
// (tools/lib/measure.c), and the risk-control statistics of mor-calibrate.
//
// Text is scored in windows of `ctx` tokens: window w covers tokens [w*ctx, min((w+1)*ctx, n)),
// each a fresh sequence (the session is reset), and every token after the first of a window is
// predicted, so a window of len tokens gives len - 1 scored positions. Positions are numbered
// across windows in order; a last window of one token scores nothing and is not counted.
#ifndef MOR_MEASURE_H
#define MOR_MEASURE_H

#include "mor.h"

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int64_t n;           // scored positions
    double  nll;         // sum of the negative log-likelihoods of the next token (nats)
    float   mean_depth;  // steps run per token
    double  saved;       // 1 - layer evaluations / layer evaluations at full depth
} mor__measure;

// Reads a text file and tokenizes it with the model's vocabulary; keeps at most max_tokens
// tokens. *tok is malloc'd (free it). MOR_OK, or MOR_E_IO / MOR_E_NOT_FOUND (no vocabulary) /
// MOR_E_ENCODING / MOR_E_NOMEM with a message naming the file.
int mor__measure_text(const mor_model *m, const char *path, long max_tokens, int32_t **tok, int32_t *n,
                      char *err, size_t err_n);

// Windows of the scoring rule above that score at least one position, and the first scored
// position and count of window w.
int32_t mor__measure_n_windows(int32_t n, int32_t ctx);
void    mor__measure_window(int32_t n, int32_t ctx, int32_t w, int64_t *first, int32_t *count);

// Scores tok[0..n) under the policy ep (applied to a fresh session with n_ctx = ctx, LOGITS_ALL):
// totals in *out; per scored position the NLL in nll[] and the argmax token in argmax[] (either
// may be NULL). MOR_OK or the failing call's status with its message in err.
int mor__measure_policy(const mor_model *m, const mor_exit_policy *ep, const int32_t *tok, int32_t n, int32_t ctx,
                        float *nll, int32_t *argmax, mor__measure *out, char *err, size_t err_n);

// ---- risk control (Learn-then-Test) ----------------------------------------------------------

// log P(X <= k) for X ~ Binomial(n, p), summed in log space (log-sum-exp over the terms, with
// lgamma for the coefficients): accurate where the probability underflows a double. k < 0: -inf;
// k >= n: 0.
double mor__log_binom_cdf(int64_t k, int64_t n, double p);

// The Hoeffding-Bentkus p-value of H0: risk > t, from the mean rhat of n losses in [0, 1]:
// min(exp(-n h(min(rhat, t), t)), e * P(Binomial(n, t) <= ceil(n rhat))), with
// h(a, b) = a log(a / b) + (1 - a) log((1 - a) / (1 - b)). In [0, 1]; 1 when rhat >= t or n = 0.
double mor__hb_pvalue(double rhat, int64_t n, double t);

#endif
