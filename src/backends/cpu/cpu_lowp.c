/* The CPU's bfloat16 / float16 entry points. Each kernel below accepts operands in
 * bfloat16 or float16 (the compute dtypes of autocast) as well as float32 / float64: a
 * low-precision operand is widened to float32, the float32 kernel (cpu_<name>_full) runs,
 * and each low-precision result is rounded back to nearest even. That is PyTorch's CPU
 * semantics for these dtypes (compute in float32, round once at the output), and it is the
 * fallback of every op; the hot ones (GEMM, convolution) take their own paths inside the
 * full kernels where the CPU has bf16 arithmetic (see cpu_gemm_bf16.c).
 *
 * Operands that are float32 already (master weights, batch-norm parameters and running
 * statistics, the fp32 side of a mixed op) are passed through untouched. */
#include "core/backend.h"
#include "core/error.h"
#include "cpu_kernels.h"

#define LP_MAX 8

typedef struct {
    int failed;
    int n;
    ct_tensor *tmp[LP_MAX];       /* float32 stand-ins */
    ct_tensor *dst[LP_MAX];       /* the low-precision tensor a result goes back to, or NULL */
} lowp;

static int is_lowp(const ct_tensor *t) {
    return t && (t->dtype == CT_BFLOAT16 || t->dtype == CT_FLOAT16);
}

/* A float32 stand-in for t, shaped like t (contiguous), recorded in L; copy: with t's
 * values. NULL (and L->failed) when out of memory. */
static ct_tensor *stand_in(lowp *L, const ct_tensor *t, int copy, ct_tensor *back) {
    if (L->n >= LP_MAX) {
        L->failed = 1;
        ct_error("low-precision kernel: more than %d operands", LP_MAX);
        return NULL;
    }
    ct_tensor *f = ct_empty_on(t->shape, t->ndim, CT_FLOAT32, t->storage->device);
    if (!f || (copy && cpu_copy(f, t) != 0)) {
        ct_free(f);
        L->failed = 1;
        return NULL;
    }
    L->tmp[L->n] = f;
    L->dst[L->n++] = back;
    return f;
}

/* An input: itself unless low precision. */
static const ct_tensor *lp_in(lowp *L, const ct_tensor *t) {
    return is_lowp(t) ? stand_in(L, t, 1, NULL) : t;
}
/* An output: itself unless low precision (then written back by lp_done). */
static ct_tensor *lp_out(lowp *L, ct_tensor *t) {
    return is_lowp(t) ? stand_in(L, t, 0, t) : t;
}
/* An output that is read first (accumulated into, updated in place). */
static ct_tensor *lp_inout(lowp *L, ct_tensor *t) {
    return is_lowp(t) ? stand_in(L, t, 1, t) : t;
}

/* Rounds the results back into their low-precision tensors (when rc == 0) and frees the
 * stand-ins; returns rc, or -1 when a stand-in could not be made. */
static int lp_done(lowp *L, int rc) {
    if (L->failed) rc = -1;
    for (int i = 0; i < L->n; i++) {
        if (rc == 0 && L->dst[i] && cpu_copy(L->dst[i], L->tmp[i]) != 0) rc = -1;
        ct_free(L->tmp[i]);
    }
    return rc;
}

/* Calls the full-precision kernel when no stand-in failed: every stand-in (lp_out too) is
 * made before this line, so a failed one never reaches the kernel as NULL. */
#define LP_RUN(L, call) lp_done(&(L), (L).failed ? -1 : (call))

#define ANY2(a, b) (is_lowp(a) || is_lowp(b))
#define ANY3(a, b, c) (ANY2(a, b) || is_lowp(c))
#define ANY4(a, b, c, d) (ANY3(a, b, c) || is_lowp(d))

int cpu_binary(ct_binop op, ct_tensor *out, const ct_tensor *a, const ct_tensor *b,
               double alpha) {
    if (!ANY3(out, a, b) || (out->dtype == CT_BFLOAT16 && a->dtype == CT_BFLOAT16 &&
                              b->dtype == CT_BFLOAT16 && !ct_binop_result_bool(op)))
        return cpu_binary_full(op, out, a, b, alpha); /* bf16 rows widen chunk by chunk */
    lowp L = {0};
    const ct_tensor *a32 = lp_in(&L, a), *b32 = lp_in(&L, b);
    ct_tensor *r0 = lp_out(&L, out);
    return LP_RUN(L, cpu_binary_full(op, r0, a32, b32, alpha));
}

int cpu_unary(ct_unop op, ct_tensor *out, const ct_tensor *a, double p1, double p2) {
    if (!ANY2(out, a) || (out->dtype == CT_BFLOAT16 && a->dtype == CT_BFLOAT16))
        return cpu_unary_full(op, out, a, p1, p2); /* bf16 rows widen chunk by chunk */
    lowp L = {0};
    const ct_tensor *a32 = lp_in(&L, a);
    ct_tensor *r0 = lp_out(&L, out);
    return LP_RUN(L, cpu_unary_full(op, r0, a32, p1, p2));
}

int cpu_unary_backward(ct_unop op, ct_tensor *gx, const ct_tensor *gy, const ct_tensor *x,
                       const ct_tensor *y, double p1, double p2) {
    if (!ANY4(gx, gy, x, y)) return cpu_unary_backward_full(op, gx, gy, x, y, p1, p2);
    if (gx->dtype == CT_BFLOAT16 && gy->dtype == CT_BFLOAT16 &&
        (!x || x->dtype == CT_BFLOAT16) && (!y || y->dtype == CT_BFLOAT16))
        return cpu_unary_backward_full(op, gx, gy, x, y, p1, p2); /* widened chunk by chunk */
    lowp L = {0};
    const ct_tensor *gy32 = lp_in(&L, gy), *x32 = x ? lp_in(&L, x) : NULL;
    const ct_tensor *y32 = y ? lp_in(&L, y) : NULL;
    ct_tensor *r0 = lp_out(&L, gx);
    return LP_RUN(L, cpu_unary_backward_full(op, r0, gy32, x32, y32, p1, p2));
}

int cpu_reduce(ct_redop op, ct_tensor *out, ct_tensor *indices, const ct_tensor *a,
               const int *reduce) {
    if (!ANY2(out, a)) return cpu_reduce_full(op, out, indices, a, reduce);
    int r = cpu_reduce_bf16_cols(op, out, a, reduce);
    if (r <= 0) return r;
    lowp L = {0};
    const ct_tensor *a32 = lp_in(&L, a);
    ct_tensor *r0 = lp_out(&L, out);
    return LP_RUN(L, cpu_reduce_full(op, r0, indices, a32, reduce));
}

int cpu_bmm(ct_tensor *c, const ct_tensor *a, const ct_tensor *b, const ct_tensor *bias,
            double alpha, double beta) {
    if (!ANY4(c, a, b, bias)) return cpu_bmm_full(c, a, b, bias, alpha, beta);
    if (bias) { /* 16 bits: the bias broadcast into c, then c += a @ b */
        if (cpu_bmm_bias_prefill(c, bias, beta) != 0) return -1;
        beta = 1.0;
    }
    if (cpu_bmm_lowp(c, a, b, alpha, beta) == 0) return 0; /* bf16 arithmetic */
    lowp L = {0};
    const ct_tensor *a32 = lp_in(&L, a), *b32 = lp_in(&L, b);
    ct_tensor *c32 = beta != 0 ? lp_inout(&L, c) : lp_out(&L, c);
    return LP_RUN(L, cpu_bmm_full(c32, a32, b32, NULL, alpha, beta));
}

int cpu_conv2d_forward(ct_tensor *y, const ct_tensor *x, const ct_tensor *w,
                       const ct_tensor *bias, const ct_conv_params *p) {
    if (!ANY4(y, x, w, bias)) return cpu_conv2d_forward_full(y, x, w, bias, p);
    int r = cpu_conv2d_bf16_forward(y, NULL, x, w, bias, p);
    if (r <= 0) return r;
    lowp L = {0};
    const ct_tensor *x32 = lp_in(&L, x), *w32 = lp_in(&L, w);
    const ct_tensor *b32 = bias ? lp_in(&L, bias) : NULL;
    ct_tensor *r0 = lp_out(&L, y);
    return LP_RUN(L, cpu_conv2d_forward_full(r0, x32, w32, b32, p));
}

int cpu_conv2d_backward_input(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *w,
                              const ct_conv_params *p) {
    if (!ANY3(gx, gy, w)) return cpu_conv2d_backward_input_full(gx, gy, w, p);
    int r = cpu_conv2d_bf16_backward_input(gx, gy, w, p);
    if (r <= 0) return r;
    lowp L = {0};
    const ct_tensor *gy32 = lp_in(&L, gy), *w32 = lp_in(&L, w);
    ct_tensor *r0 = lp_out(&L, gx);
    return LP_RUN(L, cpu_conv2d_backward_input_full(r0, gy32, w32, p));
}

int cpu_conv2d_backward_weight(ct_tensor *gw, ct_tensor *gb, const ct_tensor *gy,
                               const ct_tensor *x, const ct_conv_params *p) {
    if (!ANY4(gw, gb, gy, x)) return cpu_conv2d_backward_weight_full(gw, gb, gy, x, p);
    int r = cpu_conv2d_bf16_backward_weight(gw, gb, gy, x, p);
    if (r <= 0) return r;
    lowp L = {0};
    const ct_tensor *gy32 = lp_in(&L, gy), *x32 = lp_in(&L, x);
    ct_tensor *gb32 = gb ? lp_out(&L, gb) : NULL;
    ct_tensor *r0 = lp_out(&L, gw);
    return LP_RUN(L, cpu_conv2d_backward_weight_full(r0, gb32, gy32, x32, p));
}

/* The fused convolution + ReLU + max-pool with bf16 operands: the bf16 convolution into a
 * float32 buffer, then pooling with the ReLU folded in, rounded once. 1: not applicable. */
static int fused_bf16(ct_tensor *yp, ct_tensor *codes, const ct_tensor *x, const ct_tensor *w,
                      const ct_tensor *bias, const ct_conv_params *p, const ct_pool_params *pp) {
    if (x->dtype != CT_BFLOAT16 || x->ndim != 4 || w->ndim != 4) return 1;
    int64_t sh[4] = {x->shape[0], w->shape[0], 0, 0};
    for (int d = 0; d < 2; d++)
        sh[2 + d] = (x->shape[2 + d] + 2 * p->padding[d] - p->dilation[d] * (w->shape[2 + d] - 1) -
                     1) / p->stride[d] + 1;
    /* the convolution rounded to bf16, then ReLU + pooling in bf16: as PyTorch's bf16 layers
     * one after the other (rounding is monotonic, so it equals pooling before rounding) */
    ct_tensor *conv = ct_empty_on(sh, 4, CT_BFLOAT16, x->storage->device);
    if (!conv) return -1;
    int r = cpu_conv2d_bf16_forward(conv, NULL, x, w, bias, p);
    if (r == 0) r = cpu_max_pool2d_codes_forward(yp, codes, conv, pp, 1);
    ct_free(conv);
    return r;
}

int cpu_conv2d_relu_max_pool2d_forward(ct_tensor *yp, ct_tensor *codes, const ct_tensor *x,
                                       const ct_tensor *w, const ct_tensor *bias,
                                       const ct_conv_params *p, const ct_pool_params *pp) {
    if (!ANY4(yp, x, w, bias))
        return cpu_conv2d_relu_max_pool2d_forward_full(yp, codes, x, w, bias, p, pp);
    int r = fused_bf16(yp, codes, x, w, bias, p, pp);
    if (r <= 0) return r;
    lowp L = {0};
    const ct_tensor *x32 = lp_in(&L, x), *w32 = lp_in(&L, w);
    const ct_tensor *b32 = bias ? lp_in(&L, bias) : NULL;
    ct_tensor *r0 = lp_out(&L, yp);
    return LP_RUN(L, cpu_conv2d_relu_max_pool2d_forward_full(r0, codes, x32, w32,
                                                             b32, p, pp));
}

int cpu_max_pool2d_forward(ct_tensor *y, ct_tensor *indices, const ct_tensor *x,
                           const ct_pool_params *p) {
    if (!ANY2(y, x)) return cpu_max_pool2d_forward_full(y, indices, x, p);
    lowp L = {0};
    const ct_tensor *x32 = lp_in(&L, x);
    ct_tensor *r0 = lp_out(&L, y);
    return LP_RUN(L, cpu_max_pool2d_forward_full(r0, indices, x32, p));
}

int cpu_max_pool2d_backward(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *indices,
                            const ct_pool_params *p) {
    if (!ANY2(gx, gy)) return cpu_max_pool2d_backward_full(gx, gy, indices, p);
    lowp L = {0};
    const ct_tensor *gy32 = lp_in(&L, gy);
    ct_tensor *r0 = lp_out(&L, gx);
    return LP_RUN(L, cpu_max_pool2d_backward_full(r0, gy32, indices, p));
}

int cpu_max_pool2d_codes_forward(ct_tensor *y, ct_tensor *codes, const ct_tensor *x,
                                 const ct_pool_params *p, int relu) {
    if (!ANY2(y, x)) return cpu_max_pool2d_codes_forward_full(y, codes, x, p, relu);
    int r = cpu_max_pool2d_codes_bf16_forward(y, codes, x, p, relu);
    if (r <= 0) return r;
    lowp L = {0};
    const ct_tensor *x32 = lp_in(&L, x);
    ct_tensor *r0 = lp_out(&L, y);
    return LP_RUN(L, cpu_max_pool2d_codes_forward_full(r0, codes, x32, p, relu));
}

int cpu_max_pool2d_codes_backward(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *codes,
                                  const ct_pool_params *p) {
    if (!ANY2(gx, gy)) return cpu_max_pool2d_codes_backward_full(gx, gy, codes, p);
    int r = cpu_max_pool2d_codes_bf16_backward(gx, gy, codes, p);
    if (r <= 0) return r;
    lowp L = {0};
    const ct_tensor *gy32 = lp_in(&L, gy);
    ct_tensor *r0 = lp_out(&L, gx);
    return LP_RUN(L, cpu_max_pool2d_codes_backward_full(r0, gy32, codes, p));
}

int cpu_avg_pool2d_forward(ct_tensor *y, const ct_tensor *x, const ct_pool_params *p) {
    if (!ANY2(y, x)) return cpu_avg_pool2d_forward_full(y, x, p);
    lowp L = {0};
    const ct_tensor *x32 = lp_in(&L, x);
    ct_tensor *r0 = lp_out(&L, y);
    return LP_RUN(L, cpu_avg_pool2d_forward_full(r0, x32, p));
}

int cpu_avg_pool2d_backward(ct_tensor *gx, const ct_tensor *gy, const ct_pool_params *p) {
    if (!ANY2(gx, gy)) return cpu_avg_pool2d_backward_full(gx, gy, p);
    lowp L = {0};
    const ct_tensor *gy32 = lp_in(&L, gy);
    ct_tensor *r0 = lp_out(&L, gx);
    return LP_RUN(L, cpu_avg_pool2d_backward_full(r0, gy32, p));
}

int cpu_adaptive_avg_pool2d_forward(ct_tensor *y, const ct_tensor *x) {
    if (!ANY2(y, x)) return cpu_adaptive_avg_pool2d_forward_full(y, x);
    lowp L = {0};
    const ct_tensor *x32 = lp_in(&L, x);
    ct_tensor *r0 = lp_out(&L, y);
    return LP_RUN(L, cpu_adaptive_avg_pool2d_forward_full(r0, x32));
}

int cpu_adaptive_avg_pool2d_backward(ct_tensor *gx, const ct_tensor *gy) {
    if (!ANY2(gx, gy)) return cpu_adaptive_avg_pool2d_backward_full(gx, gy);
    lowp L = {0};
    const ct_tensor *gy32 = lp_in(&L, gy);
    ct_tensor *r0 = lp_out(&L, gx);
    return LP_RUN(L, cpu_adaptive_avg_pool2d_backward_full(r0, gy32));
}

int cpu_softmax_forward(ct_tensor *y, const ct_tensor *x, int dim, int log) {
    if (!ANY2(y, x)) return cpu_softmax_forward_full(y, x, dim, log);
    lowp L = {0};
    const ct_tensor *x32 = lp_in(&L, x);
    ct_tensor *r0 = lp_out(&L, y);
    return LP_RUN(L, cpu_softmax_forward_full(r0, x32, dim, log));
}

int cpu_softmax_backward(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *y, int dim,
                         int log) {
    if (!ANY3(gx, gy, y)) return cpu_softmax_backward_full(gx, gy, y, dim, log);
    lowp L = {0};
    const ct_tensor *gy32 = lp_in(&L, gy), *y32 = lp_in(&L, y);
    ct_tensor *r0 = lp_out(&L, gx);
    return LP_RUN(L, cpu_softmax_backward_full(r0, gy32, y32, dim, log));
}

int cpu_nll_loss_forward(ct_tensor *out, ct_tensor *total_weight, const ct_tensor *logp,
                         const ct_tensor *target, ct_reduction red, int64_t ignore_index) {
    if (!ANY3(out, total_weight, logp))
        return cpu_nll_loss_forward_full(out, total_weight, logp, target, red, ignore_index);
    lowp L = {0};
    const ct_tensor *lp32 = lp_in(&L, logp);
    ct_tensor *tw32 = lp_out(&L, total_weight);
    ct_tensor *r0 = lp_out(&L, out);
    return LP_RUN(L, cpu_nll_loss_forward_full(r0, tw32, lp32, target, red,
                                               ignore_index));
}

int cpu_nll_loss_backward(ct_tensor *glogp, const ct_tensor *gout, const ct_tensor *target,
                          const ct_tensor *total_weight, ct_reduction red,
                          int64_t ignore_index) {
    if (!ANY3(glogp, gout, total_weight))
        return cpu_nll_loss_backward_full(glogp, gout, target, total_weight, red, ignore_index);
    lowp L = {0};
    const ct_tensor *go32 = lp_in(&L, gout), *tw32 = lp_in(&L, total_weight);
    ct_tensor *r0 = lp_out(&L, glogp);
    return LP_RUN(L, cpu_nll_loss_backward_full(r0, go32, target, tw32, red,
                                                ignore_index));
}

int cpu_cross_entropy_forward(ct_tensor *out, ct_tensor *logp, ct_tensor *total_weight,
                              const ct_tensor *logits, const ct_tensor *target,
                              ct_reduction red, int64_t ignore_index, double label_smoothing) {
    if (!ANY4(out, logp, total_weight, logits))
        return cpu_cross_entropy_forward_full(out, logp, total_weight, logits, target, red,
                                              ignore_index, label_smoothing);
    lowp L = {0};
    const ct_tensor *x32 = lp_in(&L, logits);
    ct_tensor *lp32 = logp ? lp_out(&L, logp) : NULL, *tw32 = lp_out(&L, total_weight);
    ct_tensor *r0 = lp_out(&L, out);
    return LP_RUN(L, cpu_cross_entropy_forward_full(r0, lp32, tw32, x32, target,
                                                    red, ignore_index, label_smoothing));
}

int cpu_cross_entropy_backward(ct_tensor *glogits, const ct_tensor *gout,
                               const ct_tensor *logp, const ct_tensor *target,
                               const ct_tensor *total_weight, ct_reduction red,
                               int64_t ignore_index, double label_smoothing) {
    if (!ANY4(glogits, gout, logp, total_weight))
        return cpu_cross_entropy_backward_full(glogits, gout, logp, target, total_weight, red,
                                               ignore_index, label_smoothing);
    lowp L = {0};
    const ct_tensor *go32 = lp_in(&L, gout), *lp32 = lp_in(&L, logp);
    const ct_tensor *tw32 = lp_in(&L, total_weight);
    ct_tensor *r0 = lp_out(&L, glogits);
    return LP_RUN(L, cpu_cross_entropy_backward_full(r0, go32, lp32, target,
                                                     tw32, red, ignore_index,
                                                     label_smoothing));
}

/* Batch norm with a low-precision input and float32 parameters / statistics (PyTorch's
 * mixed-type batch norm) widens only the input and output. */
int cpu_batch_norm_forward(ct_tensor *y, ct_tensor *save_mean, ct_tensor *save_invstd,
                           const ct_tensor *x, const ct_tensor *weight, const ct_tensor *bias,
                           ct_tensor *running_mean, ct_tensor *running_var, int training,
                           double momentum, double eps) {
    if (!ANY4(y, x, weight, bias) && !ANY4(save_mean, save_invstd, running_mean, running_var))
        return cpu_batch_norm_forward_full(y, save_mean, save_invstd, x, weight, bias,
                                           running_mean, running_var, training, momentum, eps);
    /* bf16 activations beside float32 parameters and statistics: natively (cpu_norm.c) */
    if (x->dtype == CT_BFLOAT16 && y->dtype == CT_BFLOAT16 && ct_is_contiguous(x) &&
        ct_is_contiguous(y) && !ANY4(weight, bias, save_mean, save_invstd) &&
        !ANY2(running_mean, running_var))
        return cpu_batch_norm_forward_full(y, save_mean, save_invstd, x, weight, bias,
                                           running_mean, running_var, training, momentum, eps);
    lowp L = {0};
    const ct_tensor *x32 = lp_in(&L, x);
    const ct_tensor *w32 = weight ? lp_in(&L, weight) : NULL;
    const ct_tensor *b32 = bias ? lp_in(&L, bias) : NULL;
    ct_tensor *rm = running_mean ? lp_inout(&L, running_mean) : NULL;
    ct_tensor *rv = running_var ? lp_inout(&L, running_var) : NULL;
    ct_tensor *sm = lp_out(&L, save_mean), *si = lp_out(&L, save_invstd);
    ct_tensor *r0 = lp_out(&L, y);
    return LP_RUN(L, cpu_batch_norm_forward_full(r0, sm, si, x32, w32, b32, rm, rv,
                                                 training, momentum, eps));
}

int cpu_batch_norm_backward(ct_tensor *gx, ct_tensor *gw, ct_tensor *gb, const ct_tensor *gy,
                            const ct_tensor *x, const ct_tensor *weight,
                            const ct_tensor *save_mean, const ct_tensor *save_invstd,
                            int training) {
    if (!ANY4(gx, gw, gb, gy) && !ANY4(x, weight, save_mean, save_invstd))
        return cpu_batch_norm_backward_full(gx, gw, gb, gy, x, weight, save_mean, save_invstd,
                                            training);
    if (x->dtype == CT_BFLOAT16 && gy->dtype == CT_BFLOAT16 && (!gx || gx->dtype == CT_BFLOAT16) &&
        ct_is_contiguous(x) && ct_is_contiguous(gy) && (!gx || ct_is_contiguous(gx)) &&
        !ANY4(gw, gb, weight, save_mean) && !is_lowp(save_invstd))
        return cpu_batch_norm_backward_full(gx, gw, gb, gy, x, weight, save_mean, save_invstd,
                                            training);
    lowp L = {0};
    const ct_tensor *gy32 = lp_in(&L, gy), *x32 = lp_in(&L, x);
    const ct_tensor *w32 = weight ? lp_in(&L, weight) : NULL;
    const ct_tensor *sm = lp_in(&L, save_mean), *si = lp_in(&L, save_invstd);
    ct_tensor *gx32 = gx ? lp_out(&L, gx) : NULL, *gw32 = gw ? lp_out(&L, gw) : NULL;
    ct_tensor *gb32 = gb ? lp_out(&L, gb) : NULL;
    return LP_RUN(L, cpu_batch_norm_backward_full(gx32, gw32, gb32, gy32, x32, w32, sm, si,
                                                  training));
}

int cpu_layer_norm_forward(ct_tensor *y, ct_tensor *mean, ct_tensor *rstd, const ct_tensor *x,
                           const ct_tensor *weight, const ct_tensor *bias, int64_t M,
                           int64_t N, double eps) {
    if (!ANY4(y, mean, rstd, x) && !ANY2(weight, bias))
        return cpu_layer_norm_forward_full(y, mean, rstd, x, weight, bias, M, N, eps);
    lowp L = {0};
    const ct_tensor *x32 = lp_in(&L, x);
    const ct_tensor *w32 = weight ? lp_in(&L, weight) : NULL;
    const ct_tensor *b32 = bias ? lp_in(&L, bias) : NULL;
    ct_tensor *m32 = lp_out(&L, mean), *r32 = lp_out(&L, rstd);
    ct_tensor *r0 = lp_out(&L, y);
    return LP_RUN(L, cpu_layer_norm_forward_full(r0, m32, r32, x32, w32, b32, M, N,
                                                 eps));
}

int cpu_layer_norm_backward(ct_tensor *gx, ct_tensor *gw, ct_tensor *gb, const ct_tensor *gy,
                            const ct_tensor *x, const ct_tensor *mean, const ct_tensor *rstd,
                            const ct_tensor *weight, int64_t M, int64_t N) {
    if (!ANY4(gx, gw, gb, gy) && !ANY4(x, mean, rstd, weight))
        return cpu_layer_norm_backward_full(gx, gw, gb, gy, x, mean, rstd, weight, M, N);
    lowp L = {0};
    const ct_tensor *gy32 = lp_in(&L, gy), *x32 = lp_in(&L, x);
    const ct_tensor *m32 = lp_in(&L, mean), *r32 = lp_in(&L, rstd);
    const ct_tensor *w32 = weight ? lp_in(&L, weight) : NULL;
    ct_tensor *gx32 = gx ? lp_out(&L, gx) : NULL, *gw32 = gw ? lp_out(&L, gw) : NULL;
    ct_tensor *gb32 = gb ? lp_out(&L, gb) : NULL;
    return LP_RUN(L, cpu_layer_norm_backward_full(gx32, gw32, gb32, gy32, x32, m32, r32, w32,
                                                  M, N));
}

int cpu_dropout_forward(ct_tensor *y, ct_tensor *mask, const ct_tensor *x, const ct_tensor *u,
                        double p) {
    if (!ANY4(y, mask, x, u)) return cpu_dropout_forward_full(y, mask, x, u, p);
    lowp L = {0};
    const ct_tensor *x32 = lp_in(&L, x), *u32 = lp_in(&L, u);
    ct_tensor *m32 = lp_out(&L, mask);
    ct_tensor *r0 = lp_out(&L, y);
    return LP_RUN(L, cpu_dropout_forward_full(r0, m32, x32, u32, p));
}

int cpu_embedding_forward(ct_tensor *y, const ct_tensor *weight, const ct_tensor *indices) {
    if (!ANY2(y, weight)) return cpu_embedding_forward_full(y, weight, indices);
    lowp L = {0};
    const ct_tensor *w32 = lp_in(&L, weight);
    ct_tensor *r0 = lp_out(&L, y);
    return LP_RUN(L, cpu_embedding_forward_full(r0, w32, indices));
}

int cpu_embedding_backward(ct_tensor *gw, const ct_tensor *gy, const ct_tensor *indices,
                           int64_t padding_idx) {
    if (!ANY2(gw, gy)) return cpu_embedding_backward_full(gw, gy, indices, padding_idx);
    lowp L = {0};
    const ct_tensor *gy32 = lp_in(&L, gy);
    ct_tensor *r0 = lp_out(&L, gw);
    return LP_RUN(L, cpu_embedding_backward_full(r0, gy32, indices, padding_idx));
}

/* Attention: lse and the mask are float32 already beside a 16-bit q (op layer). */
int cpu_sdpa_forward(ct_tensor *out, ct_tensor *lse, const ct_tensor *q, const ct_tensor *k,
                     const ct_tensor *v, const ct_tensor *mask, const ct_sdpa_params *p) {
    if (!ANY4(out, q, k, v)) return cpu_sdpa_forward_full(out, lse, q, k, v, mask, p);
    int r = cpu_sdpa_bf16_forward(out, lse, q, k, v, mask, p);
    if (r <= 0) return r;
    lowp L = {0};
    const ct_tensor *q32 = lp_in(&L, q), *k32 = lp_in(&L, k), *v32 = lp_in(&L, v);
    ct_tensor *o32 = lp_out(&L, out);
    return LP_RUN(L, cpu_sdpa_forward_full(o32, lse, q32, k32, v32, mask, p));
}

int cpu_sdpa_backward(ct_tensor *gq, ct_tensor *gk, ct_tensor *gv, const ct_tensor *gout,
                      const ct_tensor *q, const ct_tensor *k, const ct_tensor *v,
                      const ct_tensor *out, const ct_tensor *lse, const ct_tensor *mask,
                      const ct_sdpa_params *p) {
    if (!ANY4(gout, q, k, v) && !ANY4(gq, gk, gv, out))
        return cpu_sdpa_backward_full(gq, gk, gv, gout, q, k, v, out, lse, mask, p);
    int r = cpu_sdpa_bf16_backward(gq, gk, gv, gout, q, k, v, out, lse, mask, p);
    if (r <= 0) return r;
    lowp L = {0};
    const ct_tensor *go32 = lp_in(&L, gout), *q32 = lp_in(&L, q), *k32 = lp_in(&L, k);
    const ct_tensor *v32 = lp_in(&L, v), *o32 = lp_in(&L, out);
    ct_tensor *gq32 = lp_out(&L, gq), *gk32 = lp_out(&L, gk), *gv32 = lp_out(&L, gv);
    return LP_RUN(L, cpu_sdpa_backward_full(gq32, gk32, gv32, go32, q32, k32, v32, o32, lse,
                                            mask, p));
}
