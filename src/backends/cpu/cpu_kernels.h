/* CPU kernels: one function per ct_kernels entry (see src/core/backend.h). The CPU is the
 * reference backend: it implements every kernel. */
#ifndef CT_CPU_KERNELS_H
#define CT_CPU_KERNELS_H

#include "core/backend.h"

/* cpu_<name> for every row of CT_KERNEL_LIST (src/core/backend.h). */
#define CT__CPU_PROTO(name, params) int cpu_##name params;
CT_KERNEL_LIST(CT__CPU_PROTO)
#undef CT__CPU_PROTO

/* cpu_<name>_full: the float32 / float64 kernel behind the entry points of cpu_lowp.c,
 * which widen bfloat16 / float16 operands to float32 around it (declared for every row;
 * the rows without low-precision support have none). */
#define CT__CPU_PROTO_FULL(name, params) int cpu_##name##_full params;
CT_KERNEL_LIST(CT__CPU_PROTO_FULL)
#undef CT__CPU_PROTO_FULL

/* c[b][m][n] = bias[n] for every b, m: bmm's bias where the kernel has no epilogue for it
 * (checks bias's shape and dtype, and beta == 0; then c += a @ b with beta 1). */
int cpu_bmm_bias_prefill(ct_tensor *c, const ct_tensor *bias, double beta);
/* c = alpha * a @ b + beta * c with bfloat16 a and b (bmm's layout rules) using the CPU's
 * bf16 dot-product instructions, float32 accumulation: 0 when done, 1 when this CPU or
 * these operands have no such path (the caller widens to float32 instead), -1 on error. */
int cpu_bmm_lowp(ct_tensor *c, const ct_tensor *a, const ct_tensor *b, double alpha,
                 double beta);
/* Contiguous runs of bfloat16 <-> float32 (half.h's rounding; vectorised). */
void cpu_bf16_to_f32_row(float *dst, const uint16_t *src, int64_t n);
void cpu_f32_to_bf16_row(uint16_t *dst, const float *src, int64_t n);
/* Sum or mean of bfloat16 `a` over outer dims into bfloat16 columns (a bias gradient):
 * 0 when done, 1 when not applicable (the caller widens to float32). */
int cpu_reduce_bf16_cols(ct_redop op, ct_tensor *out, const ct_tensor *a, const int *reduce);
/* Attention on bfloat16 operands (float32 lse and mask) without widened copies of whole
 * tensors (cpu_attention.c): 0, 1 when not applicable (the caller widens), -1 on error. */
int cpu_sdpa_bf16_forward(ct_tensor *out, ct_tensor *lse, const ct_tensor *q, const ct_tensor *k,
                          const ct_tensor *v, const ct_tensor *mask, const ct_sdpa_params *p);
int cpu_sdpa_bf16_backward(ct_tensor *gq, ct_tensor *gk, ct_tensor *gv, const ct_tensor *gout,
                           const ct_tensor *q, const ct_tensor *k, const ct_tensor *v,
                           const ct_tensor *out, const ct_tensor *lse, const ct_tensor *mask,
                           const ct_sdpa_params *p);
/* 2x2 stride-2 max pooling (with codes) on bfloat16 planes, AVX-512: 0, 1 when not
 * applicable (the caller widens to float32). */
int cpu_max_pool2d_codes_bf16_forward(ct_tensor *y, ct_tensor *codes, const ct_tensor *x,
                                      const ct_pool_params *p, int relu);
int cpu_max_pool2d_codes_bf16_backward(ct_tensor *gx, const ct_tensor *gy,
                                       const ct_tensor *codes, const ct_pool_params *p);
/* bf16 convolutions on the bf16 GEMM (cpu_conv_bf16.c), same contract: 0, 1 when not
 * applicable here (other dtypes or groups, no bf16 arithmetic), -1 on error. The forward
 * writes bf16 y, or float32 into y32 when that is not NULL (y then only gives the shape). */
int cpu_conv2d_bf16_forward(ct_tensor *y, float *y32, const ct_tensor *x, const ct_tensor *w,
                            const ct_tensor *bias, const ct_conv_params *p);
int cpu_conv2d_bf16_backward_input(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *w,
                                   const ct_conv_params *p);
int cpu_conv2d_bf16_backward_weight(ct_tensor *gw, ct_tensor *gb, const ct_tensor *gy,
                                    const ct_tensor *x, const ct_conv_params *p);

/* Shared by the loss kernels (cpu_loss.c). */
void cpu_loss_reduce_rows(ct_tensor *out, ct_tensor *total_weight, const double *v, int64_t N,
                          int64_t count, ct_reduction red);
#endif
