/* Fused ops used by nn modules (not public API): same results and gradients as the
 * composed public ops, in fewer passes over memory. */
#ifndef CT_OPS_FUSED_H
#define CT_OPS_FUSED_H

#include "ctorch.h"

/* max_pool2d(relu(x)), computed as relu(max_pool2d(x)) (the same values and gradient)
 * in one pass (the max_pool2d_codes kernels with relu on); composed from ct_relu and
 * ct_max_pool2d for windows too large for one-byte codes. */
ct_tensor *ct_relu_max_pool2d(const ct_tensor *x, const int kernel[2], const int stride[2],
                              const int padding[2], const int dilation[2], int ceil_mode);

/* max_pool2d(relu(conv2d(x, weight, bias))) (dilation 1, no ceil mode for the pooling):
 * one op, the kernel conv2d_relu_max_pool2d_forward (on the CPU in float32 the 2x2 stride-2
 * pooling after a Winograd-eligible convolution happens in the convolution's output
 * transform: the full-size convolution output is never stored); unusual shapes take the
 * composed ops. The output's grad_fn is MaxPool2DWithIndicesBackward, as for the
 * composition. */
ct_tensor *ct_conv2d_relu_max_pool2d(const ct_tensor *x, const ct_tensor *weight,
                                     const ct_tensor *bias, const int stride[2],
                                     const int padding[2], const int dilation[2], int groups,
                                     const int pool_kernel[2], const int pool_stride[2],
                                     const int pool_padding[2]);

/* MultiheadAttention's self-attention on its packed projection: qkv [N, L, 3E] holds q, k
 * and v (each [N, L, E], split into num_heads heads of E / num_heads) side by side; returns
 * [N, L, E], the heads' scaled_dot_product_attention outputs side by side. The same values
 * and gradient (dropout included) as narrowing qkv into q, k, v, viewing them [N, H, L, d],
 * calling ct_scaled_dot_product_attention and merging the heads back, but with no copies:
 * the kernels read the heads in place and the backward writes one [N, L, 3E] gradient.
 * attn_mask: as ct_scaled_dot_product_attention's, broadcastable to [N, H, L, L]. */
ct_tensor *ct_sdpa_packed_qkv(const ct_tensor *qkv, int64_t num_heads, const ct_tensor *attn_mask,
                              double dropout_p, int is_causal, double scale);

#endif
