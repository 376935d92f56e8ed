/* TEMPORARY weak stubs while kernels are being written; removed before commit. */
#include "core/error.h"
#include "cpu_kernels.h"
#pragma GCC diagnostic ignored "-Wunused-parameter"
__attribute__((weak)) int cpu_bmm(ct_tensor *c, const ct_tensor *a, const ct_tensor *b, double alpha, double beta) { return ct_error("cpu_bmm: not built yet"); }
__attribute__((weak)) int cpu_conv2d_forward(ct_tensor *y, const ct_tensor *x, const ct_tensor *w, const ct_tensor *bias,
                       const ct_conv_params *p) { return ct_error("cpu_conv2d_forward: not built yet"); }
__attribute__((weak)) int cpu_conv2d_backward_input(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *w,
                              const ct_conv_params *p) { return ct_error("cpu_conv2d_backward_input: not built yet"); }
__attribute__((weak)) int cpu_conv2d_backward_weight(ct_tensor *gw, const ct_tensor *gy, const ct_tensor *x,
                               const ct_conv_params *p) { return ct_error("cpu_conv2d_backward_weight: not built yet"); }
__attribute__((weak)) int cpu_max_pool2d_forward(ct_tensor *y, ct_tensor *indices, const ct_tensor *x,
                           const ct_pool_params *p) { return ct_error("cpu_max_pool2d_forward: not built yet"); }
__attribute__((weak)) int cpu_max_pool2d_backward(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *indices,
                            const ct_pool_params *p) { return ct_error("cpu_max_pool2d_backward: not built yet"); }
__attribute__((weak)) int cpu_avg_pool2d_forward(ct_tensor *y, const ct_tensor *x, const ct_pool_params *p) { return ct_error("cpu_avg_pool2d_forward: not built yet"); }
__attribute__((weak)) int cpu_avg_pool2d_backward(ct_tensor *gx, const ct_tensor *gy, const ct_pool_params *p) { return ct_error("cpu_avg_pool2d_backward: not built yet"); }
__attribute__((weak)) int cpu_adaptive_avg_pool2d_forward(ct_tensor *y, const ct_tensor *x) { return ct_error("cpu_adaptive_avg_pool2d_forward: not built yet"); }
__attribute__((weak)) int cpu_adaptive_avg_pool2d_backward(ct_tensor *gx, const ct_tensor *gy) { return ct_error("cpu_adaptive_avg_pool2d_backward: not built yet"); }
__attribute__((weak)) int cpu_softmax_forward(ct_tensor *y, const ct_tensor *x, int dim, int log) { return ct_error("cpu_softmax_forward: not built yet"); }
__attribute__((weak)) int cpu_softmax_backward(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *y, int dim, int log) { return ct_error("cpu_softmax_backward: not built yet"); }
__attribute__((weak)) int cpu_nll_loss_forward(ct_tensor *out, ct_tensor *total_weight, const ct_tensor *logp,
                         const ct_tensor *target, ct_reduction red, int64_t ignore_index) { return ct_error("cpu_nll_loss_forward: not built yet"); }
__attribute__((weak)) int cpu_nll_loss_backward(ct_tensor *glogp, const ct_tensor *gout, const ct_tensor *target,
                          const ct_tensor *total_weight, ct_reduction red, int64_t ignore_index) { return ct_error("cpu_nll_loss_backward: not built yet"); }
__attribute__((weak)) int cpu_batch_norm_forward(ct_tensor *y, ct_tensor *save_mean, ct_tensor *save_invstd,
                           const ct_tensor *x, const ct_tensor *weight, const ct_tensor *bias,
                           ct_tensor *running_mean, ct_tensor *running_var, int training,
                           double momentum, double eps) { return ct_error("cpu_batch_norm_forward: not built yet"); }
__attribute__((weak)) int cpu_batch_norm_backward(ct_tensor *gx, ct_tensor *gw, ct_tensor *gb, const ct_tensor *gy,
                            const ct_tensor *x, const ct_tensor *weight, const ct_tensor *save_mean,
                            const ct_tensor *save_invstd, int training) { return ct_error("cpu_batch_norm_backward: not built yet"); }
__attribute__((weak)) int cpu_layer_norm_forward(ct_tensor *y, ct_tensor *mean, ct_tensor *rstd, const ct_tensor *x,
                           const ct_tensor *weight, const ct_tensor *bias, int64_t M, int64_t N,
                           double eps) { return ct_error("cpu_layer_norm_forward: not built yet"); }
__attribute__((weak)) int cpu_layer_norm_backward(ct_tensor *gx, ct_tensor *gw, ct_tensor *gb, const ct_tensor *gy,
                            const ct_tensor *x, const ct_tensor *mean, const ct_tensor *rstd,
                            const ct_tensor *weight, int64_t M, int64_t N) { return ct_error("cpu_layer_norm_backward: not built yet"); }
