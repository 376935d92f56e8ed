/* bfloat16 GEMM with float32 accumulation (cpu_gemm_bf16.c). */
#ifndef CT_CPU_GEMM_BF16_H
#define CT_CPU_GEMM_BF16_H

#include <stdint.h>

/* A strided bf16 matrix: element (i, j) at p[i * rs + j * cs]. */
typedef struct {
    const uint16_t *p;
    int64_t rs, cs;
} ct_bf16_mat;

enum { CT_BF16_AVX512 = 1, CT_BF16_AMX = 2 };
/* The bf16 kernel in use here: CT_BF16_AMX, CT_BF16_AVX512 (AVX512_BF16), or 0 when the
 * CPU has neither or CTORCH_CPU_ISA asks for less. */
int ct_gemm_bf16_kind(void);
int ct_gemm_bf16_available(void); /* ct_gemm_bf16_kind() != 0 */

/* A packed once, multiplied by several B (a convolution's weight, image after image). */
/* A packed for the kernels. With AMX, A's whole blocks of 32 rows may be read in place
 * (direct: a row-major A whose K is whole tiles of 32); data then holds only the blocks
 * from dblocks on (the tail rows, zero-padded). */
typedef struct {
    int kind;
    int64_t M, K, K2, mblocks;
    uint32_t *data;
    const uint16_t *direct; /* A itself for blocks [0, dblocks), or NULL */
    int64_t lda, dblocks;   /* its row stride (elements) and how many blocks it serves */
} ct_bf16_pack;
/* 0, 1 when no bf16 kernel is available (nothing allocated), -1 on error. */
int ct_gemm_bf16_pack_a(ct_bf16_pack *pa, int64_t M, int64_t K, ct_bf16_mat A);
void ct_gemm_bf16_pack_free(ct_bf16_pack *pa);
/* C (M x N, leading dimension ldc) = alpha * A @ B + bias (per row, may be NULL) + beta * C
 * with A packed; B is K x N. C is float32 (C) or, when C is NULL, bfloat16 (Cb: rounded
 * once, as src/core/half.h). */
int ct_gemm_bf16_run(const ct_bf16_pack *pa, int64_t N, ct_bf16_mat B, float *C, uint16_t *Cb,
                     int64_t ldc, float alpha, float beta, const float *bias);
/* The same with B already packed by the caller: panels of CT_BF16_NR columns, panel p at
 * bp + p * pa->K2 * CT_BF16_NR, row k2 of a panel holding (B[2k2][j], B[2k2+1][j]) pairs
 * (low half first) for its CT_BF16_NR columns j, zeros past K and N. */
#define CT_BF16_NR 32
int ct_gemm_bf16_run_packed(const ct_bf16_pack *pa, int64_t N, const uint32_t *bp, float *C,
                            uint16_t *Cb, int64_t ldc, float alpha, float beta,
                            const float *bias);
/* The same with C's columns in groups of `group` (a multiple of CT_BF16_NR) stored gstride
 * elements apart: element (i, j) at C[(j / group) * gstride + i * ldc + j % group] (the
 * images of a batch side by side in one product, each written to its own NCHW slab). */
int ct_gemm_bf16_run_grouped(const ct_bf16_pack *pa, int64_t N, const uint32_t *bp, float *C,
                             uint16_t *Cb, int64_t ldc, int64_t group, int64_t gstride,
                             float alpha, float beta, const float *bias);
/* C = alpha * A @ B + beta * C, C float32 row-major with leading dimension ldc; threads
 * over the pool. 0 when done, 1 when no bf16 kernel is available, -1 on error. */
int ct_gemm_bf16(int64_t M, int64_t N, int64_t K, ct_bf16_mat A, ct_bf16_mat B, float *C,
                 int64_t ldc, float alpha, float beta);
#endif
