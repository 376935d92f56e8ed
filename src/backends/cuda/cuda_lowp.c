/* bfloat16 / float16 operands on CUDA (autocast's compute dtypes).
 *
 * Native (16-bit loads and stores, float arithmetic, one rounding per result with
 * src/core/half.h's conversions -- the CPU's bits):
 *   bmm                     cublasGemmStridedBatchedEx, CUDA_R_16BF / CUDA_R_16F in and out,
 *                           CUBLAS_COMPUTE_32F (tensor cores), cuda_dnn.c;
 *   conv2d forward, backward input, backward weight, conv2d_relu_max_pool2d_forward
 *                           cuDNN with CUDNN_DATA_BFLOAT16 / CUDNN_DATA_HALF tensors and a
 *                           float32 compute type (CUDNN_TENSOR_OP_MATH), cuda_dnn.c; bias add
 *                           and the bias gradient (reduce) are the native kernels below;
 *   binary, unary, unary_backward, dropout_forward, copy, fill, where
 *                           cuda_elementwise.cu, cuda_where.cu;
 *   reduce                  cuda_reduce.cu (double accumulation, the float32 result rounded);
 *   max / avg / adaptive pooling, forward and backward, with indices or window codes
 *                           cuda_pool.cu.
 * Widened here (the rest of the kernels activations reach, and the losses, which autocast
 * runs in float32 anyway): every 16-bit operand is converted to a float32 stand-in by the
 * plugin's copy kernel, the float32 kernel (cu_k_<name>_full) runs, and each 16-bit result
 * is rounded back once -- what src/backends/cpu/cpu_lowp.c does on the CPU. float32
 * operands beside 16-bit ones (batch norm's parameters and running statistics) are used
 * as they are. Entries not listed (topk, sgd_step, adam_step) refuse 16-bit operands with
 * an error that names the kernel and the dtype. */
#include "cuda_host.h"

#include <stdlib.h>
#include <string.h>

#define LP_MAX 8

/* A float32 device tensor made here (the plugin calls no function of the core). */
typedef struct {
    ct_storage st;
    ct_tensor t;
} lp_buf;

typedef struct {
    int failed;
    int n;
    lp_buf *tmp[LP_MAX];    /* float32 stand-ins */
    ct_tensor *dst[LP_MAX]; /* the 16-bit tensor a result goes back to, or NULL */
} lowp;

static int is_lowp(const ct_tensor *t) { return t && cu_is_lowp(t->dtype); }

/* A contiguous float32 stand-in for t on t's device, recorded in L; copy: with t's values.
 * NULL (and L->failed, with the error set) when it cannot be made. */
static ct_tensor *stand_in(lowp *L, const ct_tensor *t, int copy, ct_tensor *back) {
    if (L->failed) return NULL;
    if (L->n >= LP_MAX) {
        L->failed = 1;
        cu_error("low-precision kernel: more than %d operands", LP_MAX);
        return NULL;
    }
    lp_buf *b = calloc(1, sizeof *b);
    cu_dev *d = b ? cu_dev_of(t) : NULL;
    if (!b || !d) {
        free(b);
        L->failed = 1;
        if (!b) cu_error("low-precision kernel: out of host memory");
        return NULL;
    }
    const size_t bytes = (size_t)cu_numel(t) * sizeof(float);
    b->st.device = t->storage->device;
    b->st.nbytes = bytes;
    b->st.data = bytes ? cu_malloc_dev(d, bytes) : NULL;
    if (bytes && !b->st.data) {
        free(b);
        L->failed = 1;
        return NULL;
    }
    b->t.storage = &b->st;
    b->t.dtype = CT_FLOAT32;
    b->t.ndim = t->ndim;
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        b->t.shape[i] = t->shape[i];
        b->t.stride[i] = s;
        s *= t->shape[i] > 1 ? t->shape[i] : 1;
    }
    L->tmp[L->n] = b;
    L->dst[L->n++] = back;
    if (copy && cu_k_copy(&b->t, t) != 0) {
        L->failed = 1;
        return NULL;
    }
    return &b->t;
}

/* An input: itself unless 16-bit. */
static const ct_tensor *lp_in(lowp *L, const ct_tensor *t) {
    return is_lowp(t) ? stand_in(L, t, 1, NULL) : t;
}
/* An output: itself unless 16-bit (then rounded back by lp_done). */
static ct_tensor *lp_out(lowp *L, ct_tensor *t) {
    return is_lowp(t) ? stand_in(L, t, 0, t) : t;
}
/* An output that is read first (running statistics updated in place). */
static ct_tensor *lp_inout(lowp *L, ct_tensor *t) {
    return is_lowp(t) ? stand_in(L, t, 1, t) : t;
}

/* Rounds the results back into their 16-bit tensors (when rc == 0) and frees the stand-ins
 * (stream-ordered: their blocks are reused only by later work); returns rc, or -1 when a
 * stand-in could not be made. */
static int lp_done(lowp *L, int rc) {
    if (L->failed) rc = -1;
    for (int i = 0; i < L->n; i++) {
        lp_buf *b = L->tmp[i];
        if (rc == 0 && L->dst[i] && cu_k_copy(L->dst[i], &b->t) != 0) rc = -1;
        if (b->st.data) cu_free(b->st.data, b->st.device.index);
        free(b);
    }
    return rc;
}

/* Calls the float32 kernel when every stand-in was made (they are all made before). */
#define LP_RUN(L, call) lp_done(&(L), (L).failed ? -1 : (call))

#define ANY2(a, b) (is_lowp(a) || is_lowp(b))
#define ANY3(a, b, c) (ANY2(a, b) || is_lowp(c))
#define ANY4(a, b, c, d) (ANY3(a, b, c) || is_lowp(d))

int cu_k_softmax_forward(ct_tensor *y, const ct_tensor *x, int dim, int log) {
    if (!ANY2(y, x)) return cu_k_softmax_forward_full(y, x, dim, log);
    lowp L = {0};
    const ct_tensor *x32 = lp_in(&L, x);
    ct_tensor *y32 = lp_out(&L, y);
    return LP_RUN(L, cu_k_softmax_forward_full(y32, x32, dim, log));
}

int cu_k_softmax_backward(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *y, int dim,
                          int log) {
    if (!ANY3(gx, gy, y)) return cu_k_softmax_backward_full(gx, gy, y, dim, log);
    lowp L = {0};
    const ct_tensor *gy32 = lp_in(&L, gy), *y32 = lp_in(&L, y);
    ct_tensor *gx32 = lp_out(&L, gx);
    return LP_RUN(L, cu_k_softmax_backward_full(gx32, gy32, y32, dim, log));
}

int cu_k_nll_loss_forward(ct_tensor *out, ct_tensor *total_weight, const ct_tensor *logp,
                          const ct_tensor *target, ct_reduction red, int64_t ignore_index) {
    if (!ANY3(out, total_weight, logp))
        return cu_k_nll_loss_forward_full(out, total_weight, logp, target, red, ignore_index);
    lowp L = {0};
    const ct_tensor *lp32 = lp_in(&L, logp);
    ct_tensor *out32 = lp_out(&L, out), *tw32 = lp_out(&L, total_weight);
    return LP_RUN(L, cu_k_nll_loss_forward_full(out32, tw32, lp32, target, red, ignore_index));
}

int cu_k_nll_loss_backward(ct_tensor *glogp, const ct_tensor *gout, const ct_tensor *target,
                           const ct_tensor *total_weight, ct_reduction red,
                           int64_t ignore_index) {
    if (!ANY3(glogp, gout, total_weight))
        return cu_k_nll_loss_backward_full(glogp, gout, target, total_weight, red,
                                           ignore_index);
    lowp L = {0};
    const ct_tensor *go32 = lp_in(&L, gout), *tw32 = lp_in(&L, total_weight);
    ct_tensor *g32 = lp_out(&L, glogp);
    return LP_RUN(L, cu_k_nll_loss_backward_full(g32, go32, target, tw32, red, ignore_index));
}

int cu_k_cross_entropy_forward(ct_tensor *out, ct_tensor *logp, ct_tensor *total_weight,
                               const ct_tensor *logits, const ct_tensor *target,
                               ct_reduction red, int64_t ignore_index, double label_smoothing) {
    if (!ANY4(out, logp, total_weight, logits))
        return cu_k_cross_entropy_forward_full(out, logp, total_weight, logits, target, red,
                                               ignore_index, label_smoothing);
    lowp L = {0};
    const ct_tensor *x32 = lp_in(&L, logits);
    ct_tensor *out32 = lp_out(&L, out), *lp32 = lp_out(&L, logp);
    ct_tensor *tw32 = lp_out(&L, total_weight);
    return LP_RUN(L, cu_k_cross_entropy_forward_full(out32, lp32, tw32, x32, target, red,
                                                     ignore_index, label_smoothing));
}

int cu_k_cross_entropy_backward(ct_tensor *glogits, const ct_tensor *gout,
                                const ct_tensor *logp, const ct_tensor *target,
                                const ct_tensor *total_weight, ct_reduction red,
                                int64_t ignore_index, double label_smoothing) {
    if (!ANY4(glogits, gout, logp, total_weight))
        return cu_k_cross_entropy_backward_full(glogits, gout, logp, target, total_weight, red,
                                                ignore_index, label_smoothing);
    lowp L = {0};
    const ct_tensor *go32 = lp_in(&L, gout), *lp32 = lp_in(&L, logp);
    const ct_tensor *tw32 = lp_in(&L, total_weight);
    ct_tensor *g32 = lp_out(&L, glogits);
    return LP_RUN(L, cu_k_cross_entropy_backward_full(g32, go32, lp32, target, tw32, red,
                                                      ignore_index, label_smoothing));
}

/* Batch norm with a 16-bit input and float32 parameters / statistics (PyTorch's mixed-type
 * batch norm) widens only the input and the output. */
int cu_k_batch_norm_forward(ct_tensor *y, ct_tensor *save_mean, ct_tensor *save_invstd,
                            const ct_tensor *x, const ct_tensor *weight, const ct_tensor *bias,
                            ct_tensor *running_mean, ct_tensor *running_var, int training,
                            double momentum, double eps) {
    if (!ANY4(y, x, weight, bias) && !ANY4(save_mean, save_invstd, running_mean, running_var))
        return cu_k_batch_norm_forward_full(y, save_mean, save_invstd, x, weight, bias,
                                            running_mean, running_var, training, momentum, eps);
    lowp L = {0};
    const ct_tensor *x32 = lp_in(&L, x), *w32 = lp_in(&L, weight), *b32 = lp_in(&L, bias);
    ct_tensor *rm = lp_inout(&L, running_mean), *rv = lp_inout(&L, running_var);
    ct_tensor *sm = lp_out(&L, save_mean), *si = lp_out(&L, save_invstd);
    ct_tensor *y32 = lp_out(&L, y);
    return LP_RUN(L, cu_k_batch_norm_forward_full(y32, sm, si, x32, w32, b32, rm, rv, training,
                                                  momentum, eps));
}

int cu_k_batch_norm_backward(ct_tensor *gx, ct_tensor *gw, ct_tensor *gb, const ct_tensor *gy,
                             const ct_tensor *x, const ct_tensor *weight,
                             const ct_tensor *save_mean, const ct_tensor *save_invstd,
                             int training) {
    if (!ANY4(gx, gw, gb, gy) && !ANY4(x, weight, save_mean, save_invstd))
        return cu_k_batch_norm_backward_full(gx, gw, gb, gy, x, weight, save_mean, save_invstd,
                                             training);
    lowp L = {0};
    const ct_tensor *gy32 = lp_in(&L, gy), *x32 = lp_in(&L, x), *w32 = lp_in(&L, weight);
    const ct_tensor *sm = lp_in(&L, save_mean), *si = lp_in(&L, save_invstd);
    ct_tensor *gx32 = lp_out(&L, gx), *gw32 = lp_out(&L, gw), *gb32 = lp_out(&L, gb);
    return LP_RUN(L, cu_k_batch_norm_backward_full(gx32, gw32, gb32, gy32, x32, w32, sm, si,
                                                   training));
}

int cu_k_layer_norm_forward(ct_tensor *y, ct_tensor *mean, ct_tensor *rstd, const ct_tensor *x,
                            const ct_tensor *weight, const ct_tensor *bias, int64_t M,
                            int64_t N, double eps) {
    if (!ANY4(y, mean, rstd, x) && !ANY2(weight, bias))
        return cu_k_layer_norm_forward_full(y, mean, rstd, x, weight, bias, M, N, eps);
    lowp L = {0};
    const ct_tensor *x32 = lp_in(&L, x), *w32 = lp_in(&L, weight), *b32 = lp_in(&L, bias);
    ct_tensor *m32 = lp_out(&L, mean), *r32 = lp_out(&L, rstd), *y32 = lp_out(&L, y);
    return LP_RUN(L, cu_k_layer_norm_forward_full(y32, m32, r32, x32, w32, b32, M, N, eps));
}

int cu_k_layer_norm_backward(ct_tensor *gx, ct_tensor *gw, ct_tensor *gb, const ct_tensor *gy,
                             const ct_tensor *x, const ct_tensor *mean, const ct_tensor *rstd,
                             const ct_tensor *weight, int64_t M, int64_t N) {
    if (!ANY4(gx, gw, gb, gy) && !ANY4(x, mean, rstd, weight))
        return cu_k_layer_norm_backward_full(gx, gw, gb, gy, x, mean, rstd, weight, M, N);
    lowp L = {0};
    const ct_tensor *gy32 = lp_in(&L, gy), *x32 = lp_in(&L, x);
    const ct_tensor *m32 = lp_in(&L, mean), *r32 = lp_in(&L, rstd), *w32 = lp_in(&L, weight);
    ct_tensor *gx32 = lp_out(&L, gx), *gw32 = lp_out(&L, gw), *gb32 = lp_out(&L, gb);
    return LP_RUN(L, cu_k_layer_norm_backward_full(gx32, gw32, gb32, gy32, x32, m32, r32, w32,
                                                   M, N));
}

int cu_k_embedding_forward(ct_tensor *y, const ct_tensor *weight, const ct_tensor *indices) {
    if (!ANY2(y, weight)) return cu_k_embedding_forward_full(y, weight, indices);
    lowp L = {0};
    const ct_tensor *w32 = lp_in(&L, weight);
    ct_tensor *y32 = lp_out(&L, y);
    return LP_RUN(L, cu_k_embedding_forward_full(y32, w32, indices));
}

int cu_k_embedding_backward(ct_tensor *gw, const ct_tensor *gy, const ct_tensor *indices,
                            int64_t padding_idx) {
    if (!ANY2(gw, gy)) return cu_k_embedding_backward_full(gw, gy, indices, padding_idx);
    lowp L = {0};
    const ct_tensor *gy32 = lp_in(&L, gy);
    ct_tensor *gw32 = lp_out(&L, gw);
    return LP_RUN(L, cu_k_embedding_backward_full(gw32, gy32, indices, padding_idx));
}

/* Attention: lse and the mask are float32 already beside a 16-bit q (op layer). */
int cu_k_sdpa_forward(ct_tensor *out, ct_tensor *lse, const ct_tensor *q, const ct_tensor *k,
                      const ct_tensor *v, const ct_tensor *mask, const ct_sdpa_params *p) {
    if (!ANY4(out, q, k, v)) return cu_k_sdpa_forward_full(out, lse, q, k, v, mask, p);
    lowp L = {0};
    const ct_tensor *q32 = lp_in(&L, q), *k32 = lp_in(&L, k), *v32 = lp_in(&L, v);
    ct_tensor *o32 = lp_out(&L, out);
    return LP_RUN(L, cu_k_sdpa_forward_full(o32, lse, q32, k32, v32, mask, p));
}

int cu_k_sdpa_backward(ct_tensor *gq, ct_tensor *gk, ct_tensor *gv, const ct_tensor *gout,
                       const ct_tensor *q, const ct_tensor *k, const ct_tensor *v,
                       const ct_tensor *out, const ct_tensor *lse, const ct_tensor *mask,
                       const ct_sdpa_params *p) {
    if (!ANY4(gout, q, k, v) && !ANY4(gq, gk, gv, out))
        return cu_k_sdpa_backward_full(gq, gk, gv, gout, q, k, v, out, lse, mask, p);
    lowp L = {0};
    const ct_tensor *go32 = lp_in(&L, gout), *q32 = lp_in(&L, q), *k32 = lp_in(&L, k);
    const ct_tensor *v32 = lp_in(&L, v), *o32 = lp_in(&L, out);
    ct_tensor *gq32 = lp_out(&L, gq), *gk32 = lp_out(&L, gk), *gv32 = lp_out(&L, gv);
    return LP_RUN(L, cu_k_sdpa_backward_full(gq32, gk32, gv32, go32, q32, k32, v32, o32, lse,
                                             mask, p));
}
