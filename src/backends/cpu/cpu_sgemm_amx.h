/* float32 GEMM on AMX tiles, accurate to float32 ("bf16x6", cpu_sgemm_amx.c). Internal. */
#ifndef CT_CPU_SGEMM_AMX_H
#define CT_CPU_SGEMM_AMX_H

#include <stdint.h>

/* 1 when this product goes to ct_sgemm_amx: the CPU has AMX and AVX512_BF16, the ISA level
 * (CTORCH_CPU_ISA) allows AMX, CTORCH_FP32_AMX is not "0", and the product is large enough
 * for the splitting to pay. Decided by the shape alone. */
int ct_sgemm_amx_wanted(int ta, int tb, int64_t M, int64_t N, int64_t K);

/* 1 when the CPU, the ISA level and CTORCH_FP32_AMX let this kernel run. */
int ct_sgemm_amx_available(void);
/* Turns the kernel off (0) or back on (1, where the CPU has it); returns the previous
 * setting. For tests that compare it with the AVX-512 kernels. */
int ct_sgemm_amx_set_enabled(int on);

/* Row-major C[M, N] = alpha * op(A) @ op(B) + bias + beta * C, threaded over the pool.
 * op(A) is M x K: A[m*lda + k] (ta == 0) or A[k*lda + m] (ta == 1);
 * op(B) is K x N: B[k*ldb + n] (tb == 0) or B[n*ldb + k] (tb == 1).
 * bias: NULL or bias[0..N), added to every row. beta == 0 never reads C. Every element of C
 * is summed in one fixed order whatever the thread count. 0 when done, 1 when AMX is not
 * usable here (the caller takes another kernel), -1 on error (out of memory). */
int ct_sgemm_amx(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                 int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc,
                 const float *bias);

#endif
