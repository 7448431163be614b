// test-svd.c: the SVD and symmetric eigensolver of tools/lib/svd.c (used by tools/mor-relax).
//
// Matrices with known decompositions: A = Q1 diag(s) Q2ᵀ from products of seeded Householder
// reflections (tall, wide, square; spread, repeated and zero singular values), diagonal and
// permuted matrices, rank-deficient and zero matrices, vectors, and the second-difference
// matrix whose eigenvalues have a closed form. Checked: the singular values (sorted, against
// the known ones), the reconstruction U diag(s) Vᵀ, the orthonormality of U and V, the
// truncation error (the norm of the dropped singular values), determinism, and refusals of bad sizes.
#include "harness.h"

#include "mor.h"
#include "svd.h"

#define PI 3.14159265358979323846

// Q (n x n, row-major) = product of `refl` Householder reflections I - 2 w wᵀ / wᵀw, seeded.
static void random_orthogonal(int64_t n, int refl, uint64_t *seed, double *q) {
    double *w = malloc((size_t)n * sizeof *w), *t = malloc((size_t)n * sizeof *t);
    for (int64_t i = 0; i < n * n; i++) q[i] = 0;
    for (int64_t i = 0; i < n; i++) q[i * n + i] = 1;
    for (int h = 0; h < refl; h++) {
        double ww = 0;
        for (int64_t i = 0; i < n; i++) w[i] = test_randf(seed), ww += w[i] * w[i];
        if (ww == 0) continue;
        for (int64_t r = 0; r < n; r++) {  // Q <- Q (I - 2 w wᵀ / ww)
            double dot = 0;
            for (int64_t i = 0; i < n; i++) dot += q[r * n + i] * w[i];
            for (int64_t i = 0; i < n; i++) q[r * n + i] -= 2 * dot / ww * w[i];
        }
    }
    free(w), free(t);
}

// a (m x n) = Q1[:, :p] diag(s) Q2[:, :p]ᵀ with p = min(m, n).
static void compose(int64_t m, int64_t n, const double *s, uint64_t seed, double *a) {
    int64_t p = m < n ? m : n;
    double *q1 = malloc((size_t)(m * m) * sizeof *q1), *q2 = malloc((size_t)(n * n) * sizeof *q2);
    random_orthogonal(m, 6, &seed, q1);
    random_orthogonal(n, 6, &seed, q2);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double acc = 0;
            for (int64_t k = 0; k < p; k++) acc += q1[i * m + k] * s[k] * q2[j * n + k];
            a[i * n + j] = acc;
        }
    free(q1), free(q2);
}

typedef struct {
    double recon;   // max |A - U S Vᵀ| / max(s_1, tiny)
    double orth_u;  // max |UᵀU - I| over the columns with s > 0
    double orth_v;  // max |VᵀV - I| (the smaller side: all columns)
    int sorted;     // s descending and >= 0
} svd_check;

static int check_svd(int64_t m, int64_t n, const double *a, int64_t k, double *s_out, svd_check *c) {
    double *u = malloc((size_t)(m * k) * sizeof *u), *s = malloc((size_t)k * sizeof *s);
    double *v = malloc((size_t)(n * k) * sizeof *v);
    char err[256];
    int st = mor__svd(m, n, a, k, u, s, v, err, sizeof err);
    if (st) {
        printf("# mor__svd: %s\n", err);
        free(u), free(s), free(v);
        return st;
    }
    memset(c, 0, sizeof *c);
    c->sorted = 1;
    for (int64_t j = 0; j < k; j++) {
        if (s[j] < 0 || (j && s[j] > s[j - 1])) c->sorted = 0;
        if (s_out) s_out[j] = s[j];
    }
    double scale = s[0] > 0 ? s[0] : 1;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double acc = 0;
            for (int64_t t = 0; t < k; t++) acc += u[i * k + t] * s[t] * v[j * k + t];
            c->recon = fmax(c->recon, fabs(acc - a[i * n + j]) / scale);
        }
    int tall = n <= m;
    for (int64_t x = 0; x < k; x++)
        for (int64_t y = 0; y < k; y++) {
            double du = 0, dv = 0;
            for (int64_t i = 0; i < m; i++) du += u[i * k + x] * u[i * k + y];
            for (int64_t i = 0; i < n; i++) dv += v[i * k + x] * v[i * k + y];
            double want = x == y;
            // The computed side (U when tall, else V) has zero columns for zero singular values.
            int uz = tall && (s[x] == 0 || s[y] == 0), vz = !tall && (s[x] == 0 || s[y] == 0);
            if (!uz) c->orth_u = fmax(c->orth_u, fabs(du - want));
            if (!vz) c->orth_v = fmax(c->orth_v, fabs(dv - want));
        }
    if (!tall) {  // report the smaller side as orth_v
        double t = c->orth_u;
        c->orth_u = c->orth_v;
        c->orth_v = t;
    }
    free(u), free(s), free(v);
    return 0;
}

TEST(known_spectra) {
    static const int64_t shapes[][2] = {{8, 5},   {5, 8}, {12, 12}, {40, 17}, {17, 40},
                                        {64, 64}, {3, 1}, {1, 3},   {1, 1}};
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
        int64_t m = shapes[t][0], n = shapes[t][1], p = m < n ? m : n;
        double *s = malloc((size_t)p * sizeof *s), *got = malloc((size_t)p * sizeof *got);
        double *a = malloc((size_t)(m * n) * sizeof *a);
        for (int64_t j = 0; j < p; j++) s[j] = 10.0 * pow(0.7, (double)j);  // condition up to 0.7^-63 ~ 6e9
        compose(m, n, s, 0x5eed + t, a);
        svd_check c;
        ASSERT_OK(check_svd(m, n, a, p, got, &c));
        ASSERT(c.sorted);
        for (int64_t j = 0; j < p; j++) {
            // The Gram matrix resolves s_j to about eps * s_1^2 / s_j absolute: tight for the
            // spread here, loose only for the last values of the 64 x 64 case.
            double tol = 1e-12 * s[0] + 4e-16 * s[0] * s[0] / s[j];
            if (fabs(got[j] - s[j]) > tol)
                TEST__FAIL("%lldx%lld: s[%lld] = %.17g, expected %.17g", (long long)m, (long long)n,
                           (long long)j, got[j], s[j]);
        }
        ASSERT_LT(c.recon, 1e-13);
        ASSERT_LT(c.orth_v, 1e-13);  // the smaller side, from the eigensolver
        // The other side loses orthogonality like eps * (s_1 / s_j)^2: check it where that is small.
        if (s[0] / s[p - 1] < 1e3) ASSERT_LT(c.orth_u, 1e-10);
        free(s), free(got), free(a);
    }
}

TEST(repeated_and_zero_values) {
    // An orthogonal matrix (every singular value 1), a 7 x 4 matrix of rank 2 with a double
    // value, and the zero matrix.
    int64_t n = 9;
    double *q = malloc((size_t)(n * n) * sizeof *q), s[9];
    uint64_t seed = 77;
    random_orthogonal(n, 5, &seed, q);
    svd_check c;
    ASSERT_OK(check_svd(n, n, q, n, s, &c));
    for (int j = 0; j < 9; j++) ASSERT_NEAR(s[j], 1.0, 1e-13);
    ASSERT_LT(c.recon, 1e-13);
    ASSERT_LT(c.orth_u, 1e-12);
    ASSERT_LT(c.orth_v, 1e-13);
    free(q);

    double a[7 * 4], want[4] = {3, 3, 0, 0};
    compose(7, 4, want, 99, a);
    ASSERT_OK(check_svd(7, 4, a, 4, s, &c));
    ASSERT_NEAR(s[0], 3, 1e-13);
    ASSERT_NEAR(s[1], 3, 1e-13);
    ASSERT_LT(s[2], 1e-7);  // zero to the resolution of the Gram matrix (sqrt(eps) * s_1)
    ASSERT_LT(c.recon, 1e-13);
    ASSERT_LT(c.orth_v, 1e-13);

    double z[5 * 3] = {0};
    ASSERT_OK(check_svd(5, 3, z, 3, s, &c));
    for (int j = 0; j < 3; j++) ASSERT_EQ(s[j], 0);
    ASSERT_EQ(c.recon, 0);
    ASSERT_LT(c.orth_v, 1e-15);  // the right vectors are still a basis
    ASSERT_OK(check_svd(3, 5, z, 3, s, &c));
    ASSERT_EQ(c.recon, 0);
}

TEST(permuted_diagonal) {
    // Rows of diag(2, 7, 0.5, 4) scattered in a 6 x 4 matrix, with signs: s = 7, 4, 2, 0.5 and
    // the vectors are signed unit vectors.
    double a[6 * 4] = {0};
    a[0 * 4 + 2] = -0.5, a[2 * 4 + 0] = 2, a[3 * 4 + 3] = -4, a[5 * 4 + 1] = 7;
    double u[6 * 4], s[4], v[4 * 4];
    char err[128];
    ASSERT_OK(mor__svd(6, 4, a, 4, u, s, v, err, sizeof err));
    static const double want[4] = {7, 4, 2, 0.5};
    static const int col[4] = {1, 3, 0, 2}, row[4] = {5, 3, 2, 0};
    for (int j = 0; j < 4; j++) {
        ASSERT_NEAR(s[j], want[j], 1e-14);
        ASSERT_NEAR(fabs(v[col[j] * 4 + j]), 1, 1e-14);
        ASSERT_NEAR(fabs(u[row[j] * 4 + j]), 1, 1e-14);
        ASSERT_NEAR(u[row[j] * 4 + j] * s[j] * v[col[j] * 4 + j], a[row[j] * 4 + col[j]], 1e-14);
    }
}

TEST(truncation) {
    // Best rank-k approximation: ||A - A_k||_F^2 = sum of the squared singular values beyond k, and the
    // truncated call returns the leading part of the full one.
    int64_t m = 30, n = 20;
    double *a = malloc((size_t)(m * n) * sizeof *a);
    uint64_t seed = 1234;
    for (int64_t i = 0; i < m * n; i++) a[i] = test_randf(&seed);
    double full[20], *u = malloc((size_t)(m * 6) * sizeof *u), s[6], *v = malloc((size_t)(n * 6) * sizeof *v);
    char err[128];
    ASSERT_OK(mor__svd(m, n, a, 20, NULL, full, NULL, err, sizeof err));
    ASSERT_OK(mor__svd(m, n, a, 6, u, s, v, err, sizeof err));
    for (int j = 0; j < 6; j++) ASSERT_NEAR(s[j], full[j], 1e-13 * full[0]);
    double tail = 0, resid = 0;
    for (int j = 6; j < 20; j++) tail += full[j] * full[j];
    for (int64_t i = 0; i < m; i++)
        for (int64_t c = 0; c < n; c++) {
            double acc = 0;
            for (int t = 0; t < 6; t++) acc += u[i * 6 + t] * s[t] * v[c * 6 + t];
            resid += (a[i * n + c] - acc) * (a[i * n + c] - acc);
        }
    ASSERT_NEAR(resid, tail, 1e-12 * tail);
    // Deterministic: the same bytes again.
    double u2[30 * 6], s2[6], v2[20 * 6];
    ASSERT_OK(mor__svd(m, n, a, 6, u2, s2, v2, err, sizeof err));
    ASSERT(memcmp(u, u2, sizeof u2) == 0 && memcmp(s, s2, sizeof s2) == 0 && memcmp(v, v2, sizeof v2) == 0);
    free(a), free(u), free(v);
}

TEST(symeig_closed_form) {
    // The second-difference matrix tridiag(-1, 2, -1) of size p: eigenvalues 2 - 2 cos(j pi /
    // (p + 1)), eigenvectors sin(i j pi / (p + 1)) up to sign and scale.
    int64_t p = 50;
    double *a = calloc((size_t)(p * p), sizeof *a), *w = malloc((size_t)p * sizeof *w);
    double *z = malloc((size_t)(p * p) * sizeof *z);
    for (int64_t i = 0; i < p; i++) {
        a[i * p + i] = 2;
        if (i) a[i * p + i - 1] = -1;
    }
    char err[128];
    ASSERT_OK(mor__symeig(p, a, w, z, err, sizeof err));
    for (int64_t r = 0; r < p; r++) {
        int64_t j = p - r;  // descending
        ASSERT_NEAR(w[r], 2 - 2 * cos((double)j * PI / (double)(p + 1)), 1e-13);
        double dot = 0, nn = 0;
        for (int64_t i = 0; i < p; i++) {
            double e = sin((double)((i + 1) * j) * PI / (double)(p + 1));
            dot += e * z[r * p + i], nn += e * e;
        }
        ASSERT_NEAR(fabs(dot) / sqrt(nn), 1, 1e-12);
    }
    free(a), free(w), free(z);
}

TEST(refusals) {
    double a[4] = {1, 2, 3, 4}, s[2];
    char err[160] = "";
    ASSERT_STATUS(mor__svd(2, 2, a, 0, NULL, s, NULL, err, sizeof err), MOR_E_INVALID);
    ASSERT_STR_CONTAINS(err, "0 singular values asked");
    ASSERT_STATUS(mor__svd(2, 2, a, 3, NULL, s, NULL, err, sizeof err), MOR_E_INVALID);
    ASSERT_STR_CONTAINS(err, "must be 1 to 2");
    ASSERT_STATUS(mor__svd(0, 2, a, 1, NULL, s, NULL, err, sizeof err), MOR_E_INVALID);
    ASSERT_STATUS(mor__symeig(0, a, s, a, err, sizeof err), MOR_E_INVALID);
}

TEST_MAIN(known_spectra, repeated_and_zero_values, permuted_diagonal, truncation, symeig_closed_form,
          refusals)
