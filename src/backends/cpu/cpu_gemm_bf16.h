/* bfloat16 GEMM with float32 accumulation (cpu_gemm_bf16.c). */
#ifndef CT_CPU_GEMM_BF16_H
#define CT_CPU_GEMM_BF16_H

#include <stdint.h>

/* A strided bf16 matrix: element (i, j) at p[i * rs + j * cs]. */
typedef struct {
    const uint16_t *p;
    int64_t rs, cs;
} ct_bf16_mat;

/* Whether ct_gemm_bf16 has bf16 arithmetic here (AVX512_BF16, not disabled by
 * CTORCH_CPU_ISA). */
int ct_gemm_bf16_available(void);
/* C = alpha * A @ B + beta * C, C float32 row-major with leading dimension ldc; threads
 * over the pool. 0 when done, 1 when no bf16 kernel is available, -1 on error. */
int ct_gemm_bf16(int64_t M, int64_t N, int64_t K, ct_bf16_mat A, ct_bf16_mat B, float *C,
                 int64_t ldc, float alpha, float beta);
#endif
