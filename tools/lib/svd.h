// svd.h: the singular value decomposition of a real matrix in double precision, for
// tools/mor-relax (the SVD-initialised LoRA of docs/RELAX.md); tools/lib/svd.c.
//
// Method. With p = min(m, n), the p x p Gram matrix of the smaller side (AᵀA when n <= m, else
// AAᵀ) is reduced to tridiagonal form by Householder reflections and diagonalized by the
// implicit QL algorithm (shifted), its eigenvectors accumulated: that gives the
// singular vectors of the smaller side, orthonormal to a few units of double rounding whatever
// the matrix. The other side comes from one product: for n <= m, t_j = A v_j, s_j = ||t_j||,
// u_j = t_j / s_j (and symmetrically for n > m). So U diag(s) Vᵀ = A V Vᵀ (or U Uᵀ A) holds to
// double rounding at full rank, however ill-conditioned A is; singular values far below
// s_1 * 1e-8 are not resolved by the Gram matrix (their vectors are still orthonormal on the
// smaller side, and the product above still exact), and the computed side's vectors of such
// values lose orthogonality in proportion to (s_1 / s_j)^2 eps. For the LoRA of float32
// weights that is far below what matters. The arithmetic is deterministic: no randomness, the
// same result for the same input on every run.
#ifndef MOR_SVD_H
#define MOR_SVD_H

#include <stddef.h>
#include <stdint.h>

// The k largest singular triplets of the m x n matrix a (row-major, a[i*n + j]), 1 <= k <=
// min(m, n): u (m x k, row-major: u[i*k + j] is component i of the j-th left vector), s (k,
// descending, >= 0) and v (n x k, likewise). A singular value of exactly 0 gets a zero vector on
// the computed side (the left side when n <= m, else the right). Any of u, s, v may be NULL
// when not wanted. Returns 0 (MOR_OK), MOR_E_INVALID for bad sizes or MOR_E_NOMEM, with a
// message in err; MOR_E_INTERNAL if the QL iteration fails to converge (not seen in practice;
// 60 iterations per eigenvalue are allowed).
int mor__svd(int64_t m, int64_t n, const double *a, int64_t k, double *u, double *s, double *v, char *err,
             size_t err_n);

// Eigen-decomposition of the symmetric p x p matrix a (row-major; only the lower triangle,
// j <= i, is read): eigenvalues w (descending) and z (p x p, row j the unit eigenvector of w[j]).
// a is overwritten. Same returns as mor__svd.
int mor__symeig(int64_t p, double *a, double *w, double *z, char *err, size_t err_n);

#endif
