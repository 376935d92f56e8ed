/* CPU kernels: one function per ct_kernels entry (see src/core/backend.h). */
#ifndef CT_CPU_KERNELS_H
#define CT_CPU_KERNELS_H

#include "core/backend.h"

int cpu_binary(ct_binop op, ct_tensor *out, const ct_tensor *a, const ct_tensor *b, double alpha);
int cpu_unary(ct_unop op, ct_tensor *out, const ct_tensor *a, double p1, double p2);
int cpu_unary_backward(ct_unop op, ct_tensor *gx, const ct_tensor *gy, const ct_tensor *x,
                       const ct_tensor *y, double p1, double p2);
int cpu_reduce(ct_redop op, ct_tensor *out, ct_tensor *indices, const ct_tensor *a, const int *reduce);
int cpu_copy(ct_tensor *dst, const ct_tensor *src);
int cpu_fill(ct_tensor *t, double value);
int cpu_bmm(ct_tensor *c, const ct_tensor *a, const ct_tensor *b, double alpha, double beta);
int cpu_conv2d_forward(ct_tensor *y, const ct_tensor *x, const ct_tensor *w, const ct_tensor *bias,
                       const ct_conv_params *p);
int cpu_conv2d_backward_input(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *w,
                              const ct_conv_params *p);
int cpu_conv2d_backward_weight(ct_tensor *gw, const ct_tensor *gy, const ct_tensor *x,
                               const ct_conv_params *p);
int cpu_max_pool2d_forward(ct_tensor *y, ct_tensor *indices, const ct_tensor *x,
                           const ct_pool_params *p);
int cpu_max_pool2d_backward(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *indices,
                            const ct_pool_params *p);
int cpu_avg_pool2d_forward(ct_tensor *y, const ct_tensor *x, const ct_pool_params *p);
int cpu_avg_pool2d_backward(ct_tensor *gx, const ct_tensor *gy, const ct_pool_params *p);
int cpu_adaptive_avg_pool2d_forward(ct_tensor *y, const ct_tensor *x);
int cpu_adaptive_avg_pool2d_backward(ct_tensor *gx, const ct_tensor *gy);
int cpu_softmax_forward(ct_tensor *y, const ct_tensor *x, int dim, int log);
int cpu_softmax_backward(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *y, int dim, int log);
int cpu_nll_loss_forward(ct_tensor *out, ct_tensor *total_weight, const ct_tensor *logp,
                         const ct_tensor *target, ct_reduction red, int64_t ignore_index);
int cpu_nll_loss_backward(ct_tensor *glogp, const ct_tensor *gout, const ct_tensor *target,
                          const ct_tensor *total_weight, ct_reduction red, int64_t ignore_index);
int cpu_cross_entropy_forward(ct_tensor *out, ct_tensor *logp, ct_tensor *total_weight,
                              const ct_tensor *logits, const ct_tensor *target,
                              ct_reduction red, int64_t ignore_index, double label_smoothing);
int cpu_cross_entropy_backward(ct_tensor *glogits, const ct_tensor *gout, const ct_tensor *logp,
                               const ct_tensor *target, const ct_tensor *total_weight,
                               ct_reduction red, int64_t ignore_index, double label_smoothing);
/* Shared by the loss kernels (cpu_loss.c). */
void cpu_loss_reduce_rows(ct_tensor *out, ct_tensor *total_weight, const double *v, int64_t N,
                          int64_t count, ct_reduction red);
int cpu_batch_norm_forward(ct_tensor *y, ct_tensor *save_mean, ct_tensor *save_invstd,
                           const ct_tensor *x, const ct_tensor *weight, const ct_tensor *bias,
                           ct_tensor *running_mean, ct_tensor *running_var, int training,
                           double momentum, double eps);
int cpu_batch_norm_backward(ct_tensor *gx, ct_tensor *gw, ct_tensor *gb, const ct_tensor *gy,
                            const ct_tensor *x, const ct_tensor *weight, const ct_tensor *save_mean,
                            const ct_tensor *save_invstd, int training);
int cpu_layer_norm_forward(ct_tensor *y, ct_tensor *mean, ct_tensor *rstd, const ct_tensor *x,
                           const ct_tensor *weight, const ct_tensor *bias, int64_t M, int64_t N,
                           double eps);
int cpu_layer_norm_backward(ct_tensor *gx, ct_tensor *gw, ct_tensor *gb, const ct_tensor *gy,
                            const ct_tensor *x, const ct_tensor *mean, const ct_tensor *rstd,
                            const ct_tensor *weight, int64_t M, int64_t N);

#endif
