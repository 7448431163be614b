// svd.c: singular value decomposition through the symmetric eigenproblem of the Gram matrix
// (svd.h has the method and its accuracy). Everything is double precision and deterministic.
#include "svd.h"

#include "internal.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

// ---- symmetric eigenproblem ------------------------------------------------------------------

// Householder reduction of the symmetric matrix a (p x p, row-major, lower triangle read) to
// tridiagonal form: diagonal d[0..p), subdiagonal e[1..p) (e[0] = 0). On return a holds the
// orthogonal Q with Qᵀ A Q = T, T's basis as the columns of Q.
static void tridiagonalize(int64_t p, double *a, double *d, double *e) {
#define A_(i, j) a[(i)*p + (j)]
    for (int64_t i = p - 1; i > 0; i--) {
        int64_t l = i - 1;
        double h = 0, scale = 0;
        if (l > 0) {
            for (int64_t k = 0; k <= l; k++) scale += fabs(A_(i, k));
            if (scale == 0) {
                e[i] = A_(i, l);
            } else {
                // The reflection that zeroes row i left of the subdiagonal, scaled to avoid
                // overflow: u = row i / scale with u[l] -= g, H = I - u uᵀ / h.
                for (int64_t k = 0; k <= l; k++) {
                    A_(i, k) /= scale;
                    h += A_(i, k) * A_(i, k);
                }
                double f = A_(i, l), g = f >= 0 ? -sqrt(h) : sqrt(h);
                e[i] = scale * g;
                h -= f * g;
                A_(i, l) = f - g;
                f = 0;
                for (int64_t j = 0; j <= l; j++) {
                    A_(j, i) = A_(i, j) / h;  // kept for the accumulation of Q below
                    double s = 0;
                    for (int64_t k = 0; k <= j; k++) s += A_(j, k) * A_(i, k);
                    for (int64_t k = j + 1; k <= l; k++) s += A_(k, j) * A_(i, k);
                    e[j] = s / h;  // p = A u / h, in the free entries of e
                    f += e[j] * A_(i, j);
                }
                double hh = f / (h + h);
                for (int64_t j = 0; j <= l; j++) {  // A -= u qᵀ + q uᵀ, q = p - (uᵀp / 2h) u
                    double fj = A_(i, j), gj = e[j] - hh * fj;
                    e[j] = gj;
                    for (int64_t k = 0; k <= j; k++) A_(j, k) -= fj * e[k] + gj * A_(i, k);
                }
            }
        } else {
            e[i] = A_(i, l);
        }
        d[i] = h;
    }
    d[0] = 0;
    e[0] = 0;
    // Accumulate Q = H_1 ... H_{p-1} in place.
    for (int64_t i = 0; i < p; i++) {
        int64_t l = i - 1;
        if (d[i] != 0) {
            for (int64_t j = 0; j <= l; j++) {
                double g = 0;
                for (int64_t k = 0; k <= l; k++) g += A_(i, k) * A_(k, j);
                for (int64_t k = 0; k <= l; k++) A_(k, j) -= g * A_(k, i);
            }
        }
        d[i] = A_(i, i);
        A_(i, i) = 1;
        for (int64_t j = 0; j <= l; j++) A_(j, i) = A_(i, j) = 0;
    }
#undef A_
}

// Implicit QL on the tridiagonal (d, e as tridiagonalize leaves them), each sweep shifted by the
// eigenvalue of the leading 2 x 2 block nearer its corner: eigenvalues in d (unsorted),
// eigenvector j in row j of zt, which holds Qᵀ on entry (so the plane rotations combine two
// contiguous rows). Returns -1 when an eigenvalue takes more than 60 iterations.
static int tridiagonal_ql(int64_t p, double *d, double *e, double *zt) {
    for (int64_t i = 1; i < p; i++) e[i - 1] = e[i];
    e[p - 1] = 0;
    double norm = 0;
    for (int64_t i = 0; i < p; i++) norm = fmax(norm, fabs(d[i]) + fabs(e[i]));
    // An off-diagonal entry is negligible against its neighbours on the diagonal (relative
    // accuracy), or against the whole matrix at eps^2 (so that a block of tiny eigenvalues,
    // which the Gram matrix cannot resolve anyway, never iterates forever).
    double tiny = DBL_EPSILON * DBL_EPSILON * norm;
    for (int64_t l = 0; l < p; l++) {
        for (int iter = 0;; iter++) {
            int64_t m = l;
            for (; m < p - 1; m++) {
                double dd = fabs(d[m]) + fabs(d[m + 1]);
                if (fabs(e[m]) <= DBL_EPSILON * dd || fabs(e[m]) <= tiny) break;
            }
            if (m == l) break;
            if (iter == 60) return -1;
            double g = (d[l + 1] - d[l]) / (2 * e[l]);
            double r = hypot(g, 1.0);
            g = d[m] - d[l] + e[l] / (g + copysign(r, g));
            double s = 1, c = 1, shift = 0;
            int deflated = 0;
            for (int64_t i = m - 1; i >= l; i--) {
                double f = s * e[i], b = c * e[i];
                r = hypot(f, g);
                e[i + 1] = r;
                if (r == 0) {  // the rotation underflowed: deflate and start over
                    d[i + 1] -= shift;
                    e[m] = 0;
                    deflated = 1;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - shift;
                r = (d[i] - g) * s + 2 * c * b;
                shift = s * r;
                d[i + 1] = g + shift;
                g = c * r - b;
                double *zi = zt + i * p, *zj = zi + p;
                for (int64_t k = 0; k < p; k++) {
                    double t = zj[k];
                    zj[k] = s * zi[k] + c * t;
                    zi[k] = c * zi[k] - s * t;
                }
            }
            if (deflated) continue;
            d[l] -= shift;
            e[l] = g;
            e[m] = 0;
        }
    }
    return 0;
}

int mor__symeig(int64_t p, double *a, double *w, double *z, char *err, size_t err_n) {
    if (p < 1 || (uint64_t)p > ((uint64_t)1 << 20))
        return mor__errf(err, err_n, MOR_E_INVALID, "eigenproblem of size %lld: must be 1 to 2^20",
                         (long long)p);
    double *d = malloc((size_t)p * sizeof *d), *e = malloc((size_t)p * sizeof *e);
    double *zt = malloc((size_t)p * (size_t)p * sizeof *zt);
    int64_t *order = malloc((size_t)p * sizeof *order);
    if (!d || !e || !zt || !order) {
        free(d), free(e), free(zt), free(order);
        return mor__errf(err, err_n, MOR_E_NOMEM, "eigenproblem of size %lld: out of memory", (long long)p);
    }
    tridiagonalize(p, a, d, e);
    for (int64_t i = 0; i < p; i++)
        for (int64_t k = 0; k < p; k++) zt[i * p + k] = a[k * p + i];
    int s = MOR_OK;
    if (tridiagonal_ql(p, d, e, zt)) {
        s = mor__errf(err, err_n, MOR_E_INTERNAL,
                      "eigenproblem of size %lld: the QL iteration did not converge", (long long)p);
    } else {
        // Descending order; equal values keep their order (insertion sort: stable, and p is small).
        for (int64_t i = 0; i < p; i++) {
            int64_t j = i;
            for (; j > 0 && d[order[j - 1]] < d[i]; j--) order[j] = order[j - 1];
            order[j] = i;
        }
        for (int64_t i = 0; i < p; i++) {
            w[i] = d[order[i]];
            memcpy(z + i * p, zt + order[i] * p, (size_t)p * sizeof *z);
        }
    }
    free(d), free(e), free(zt), free(order);
    return s;
}

// ---- singular value decomposition ------------------------------------------------------------

int mor__svd(int64_t m, int64_t n, const double *a, int64_t k, double *u, double *s, double *v, char *err,
             size_t err_n) {
    int64_t p = m < n ? m : n;
    if (m < 1 || n < 1 || (uint64_t)m > ((uint64_t)1 << 24) || (uint64_t)n > ((uint64_t)1 << 24) ||
        (uint64_t)p > ((uint64_t)1 << 16))
        return mor__errf(err, err_n, MOR_E_INVALID,
                         "SVD of a %lld x %lld matrix: sizes must be 1 to 2^24, the smaller "
                         "one at most 2^16",
                         (long long)m, (long long)n);
    if (k < 1 || k > p)
        return mor__errf(err, err_n, MOR_E_INVALID,
                         "SVD of a %lld x %lld matrix: %lld singular values asked, "
                         "must be 1 to %lld",
                         (long long)m, (long long)n, (long long)k, (long long)p);
    int tall = n <= m;         // the Gram matrix is AᵀA (n x n) when tall, else AAᵀ (m x m)
    int64_t q = tall ? m : n;  // length of the computed side's vectors
    double *g = calloc((size_t)p * (size_t)p, sizeof *g), *w = malloc((size_t)p * sizeof *w);
    double *z = malloc((size_t)p * (size_t)p * sizeof *z), *t = malloc((size_t)q * sizeof *t);
    double *sv = malloc((size_t)k * sizeof *sv), *small = malloc((size_t)p * (size_t)k * sizeof *small);
    double *big = malloc((size_t)q * (size_t)k * sizeof *big);
    int64_t *order = malloc((size_t)k * sizeof *order);
    int st = MOR_OK;
    if (!g || !w || !z || !t || !sv || !small || !big || !order) {
        st = mor__errf(err, err_n, MOR_E_NOMEM, "SVD of a %lld x %lld matrix: out of memory", (long long)m,
                       (long long)n);
        goto done;
    }
    if (tall) {  // lower triangle of AᵀA, one row of A at a time (contiguous)
        for (int64_t r = 0; r < m; r++) {
            const double *row = a + r * n;
            for (int64_t i = 0; i < n; i++) {
                double ai = row[i];
                if (ai == 0) continue;
                double *gi = g + i * n;
                for (int64_t j = 0; j <= i; j++) gi[j] += ai * row[j];
            }
        }
    } else {  // lower triangle of AAᵀ: dot products of rows
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j <= i; j++) {
                const double *ri = a + i * n, *rj = a + j * n;
                double acc = 0;
                for (int64_t c = 0; c < n; c++) acc += ri[c] * rj[c];
                g[i * m + j] = acc;
            }
    }
    if ((st = mor__symeig(p, g, w, z, err, err_n))) goto done;
    for (int64_t j = 0; j < k; j++) {
        const double *zj = z + j * p;  // unit vector of the smaller side
        if (tall) {
            for (int64_t r = 0; r < m; r++) {
                const double *row = a + r * n;
                double acc = 0;
                for (int64_t c = 0; c < n; c++) acc += row[c] * zj[c];
                t[r] = acc;
            }
        } else {
            memset(t, 0, (size_t)n * sizeof *t);
            for (int64_t r = 0; r < m; r++) {
                const double *row = a + r * n;
                double zr = zj[r];
                if (zr == 0) continue;
                for (int64_t c = 0; c < n; c++) t[c] += zr * row[c];
            }
        }
        double nrm = 0;
        for (int64_t i = 0; i < q; i++) nrm += t[i] * t[i];
        nrm = sqrt(nrm);
        sv[j] = nrm;
        for (int64_t i = 0; i < p; i++) small[i * k + j] = zj[i];
        for (int64_t i = 0; i < q; i++) big[i * k + j] = nrm > 0 ? t[i] / nrm : 0;
    }
    // The norms ||A v_j|| follow the eigenvalues' order up to rounding; sort them (stable).
    for (int64_t i = 0; i < k; i++) {
        int64_t j = i;
        for (; j > 0 && sv[order[j - 1]] < sv[i]; j--) order[j] = order[j - 1];
        order[j] = i;
    }
    double *us = tall ? big : small, *vs = tall ? small : big;
    for (int64_t j = 0; j < k; j++) {
        int64_t o = order[j];
        if (s) s[j] = sv[o];
        if (u)
            for (int64_t i = 0; i < m; i++) u[i * k + j] = us[i * k + o];
        if (v)
            for (int64_t i = 0; i < n; i++) v[i * k + j] = vs[i * k + o];
    }
done:
    free(g), free(w), free(z), free(t), free(sv), free(small), free(big), free(order);
    return st;
}
