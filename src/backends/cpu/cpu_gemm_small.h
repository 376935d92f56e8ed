/* Single-precision GEMM kernels of our own (AVX-512, chosen at run time), for the shapes
 * where OpenBLAS's packing and blocking cost more than the arithmetic: linear layers at
 * small batch (M = 64: [64, 784] x [784, 128] and friends), and, cache-blocked, linear
 * layers over thousands of tokens (a ViT's [8320, 192] x [192, 768]). Internal. */
#ifndef CT_CPU_GEMM_SMALL_H
#define CT_CPU_GEMM_SMALL_H

#include <stdint.h>

/* 1 when the CPU has the instructions the kernels need (AVX-512F) and they are not
 * disabled with CTORCH_GEMM=blas in the environment. */
int ct_sgemm_small_available(void);

/* Turns the kernels off (0) or back on (1, where the CPU has them); returns the previous
 * setting. For tests that compare them with the BLAS path. */
int ct_sgemm_small_set_enabled(int on);

/* Which kernel is expected to be fastest on this product (layout and size): OpenBLAS,
 * ct_sgemm_small, or ct_sgemm_blocked. Decided by the whole product's shape, so that a
 * caller that tiles C runs every tile through the same kernel (the same sums' order
 * whatever the thread count). */
enum { CT_SGEMM_BLAS = 0, CT_SGEMM_SMALL = 1, CT_SGEMM_BLOCKED = 2 };
int ct_sgemm_small_wanted(int ta, int tb, int64_t M, int64_t N, int64_t K);

/* Row-major C[M, N] = alpha * op(A) @ op(B) + beta * C, single-threaded.
 * op(A) is M x K: A[m*lda + k] (ta == 0) or A[k*lda + m] (ta == 1);
 * op(B) is K x N: B[k*ldb + n] (tb == 0) or B[n*ldb + k] (tb == 1).
 * beta == 0 never reads C. Returns 0 when done, 1 when the layout is not handled here
 * (ta == 1 with tb == 1) or the CPU lacks AVX-512: the caller then uses BLAS. */
int ct_sgemm_small(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                   int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

/* The same product for large operands (the "large products" section of
 * gemm_small_avx512.c: register tiles inside cache blocks, no packing but a transposed copy
 * of B when tb == 1). K is summed in chunks of at most 384 whose bounds depend on K alone.
 * bias: NULL, or bias[0..N) added to every row of C after alpha (with beta == 0 only).
 * Returns 0 when done, 1 when not handled here (ta == 1 with tb == 1, no AVX-512, or no
 * memory for the copy of B): the caller then uses BLAS. */
int ct_sgemm_blocked(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                     const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                     float *C, int64_t ldc, const float *bias);

#endif
