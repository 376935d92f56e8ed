/* Interface between the plugin's host code (C, src/backends/cuda, .c files) and its device
 * kernels (CUDA C++, the .cu files). Plain C types only: the .cu files never see
 * ct_tensor (whose header uses C11 atomics); the C side unpacks tensors into raw pointers
 * and the small geometry structs below, which are passed to kernels by value.
 *
 * Every launcher enqueues work on ctx->stream and returns 0, a cudaError_t (> 0) from
 * the launch, or CUK_ENOMEM when a workspace could not be allocated (the allocator has
 * then already set the error message). All launchers accept n == 0. */
#ifndef CT_CUDA_INTERNAL_H
#define CT_CUDA_INTERNAL_H

#include "core/op_tables.h"
#include "ctorch.h"

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CUK_MAX_DIMS CT_MAX_DIMS
#define CUK_ENOMEM (-2)

/* dtype, op and reduction codes: ct_dtype and ct_reduction (ctorch.h), ct_unop, ct_binop
 * and ct_redop (the op tables, src/core/op_tables.h, whose formulas the elementwise
 * kernels instantiate), passed as int. */

/* Per-device execution context, owned by the host side. */
typedef struct cuk_ctx {
    cudaStream_t stream;
    int device;
    int sm_count;
    /* Stream-ordered scratch memory from the caching allocator (NULL + error set). */
    void *(*ws_alloc)(size_t nbytes, int device);
    void (*ws_free)(void *p, int device);
    /* Device int64[4] for errors found by kernels (nll_loss target out of range):
     * [0] != 0 when set, [1] position, [2] target value, [3] number of classes. */
    long long *flag;
} cuk_ctx;

/* Strided iteration space for up to three operands (operand 0 is the output). Dims are
 * stored innermost first; ndim >= 1; strides in elements. */
typedef struct {
    int ndim;
    int64_t shape[CUK_MAX_DIMS];
    int64_t stride[3][CUK_MAX_DIMS];
} cuk_geom;

/* Reduction geometry: kept dims (the output's order) and reduced dims, innermost first. */
typedef struct {
    int nk, nr;
    int64_t kshape[CUK_MAX_DIMS], kstride[CUK_MAX_DIMS];
    int64_t rshape[CUK_MAX_DIMS], rstride[CUK_MAX_DIMS];
    int64_t nout, rcount;
} cuk_red_geom;

/* 2-D pooling over NC planes of H x W (input) and Ho x Wo (output), contiguous. */
typedef struct {
    int64_t NC, H, W, Ho, Wo;
    int64_t kh, kw, sh, sw, ph, pw, dh, dw;
    int count_include_pad;
} cuk_pool;

/* ---------------------------------------------------------------- elementwise */
/* dt: the operands' dtype; out has it too, or is bool for the rows whose result rule is
 * BOOL (ct_binop_result_bool: comparisons and logical ops, operands may be bool). dt may be
 * CT_BFLOAT16 / CT_FLOAT16 for binary, unary, unary_backward, dropout and bias_add (stored
 * in 16 bits, computed in float, rounded once). */
int cuk_binary(const cuk_ctx *c, int op, int dt, const cuk_geom *g, int64_t n, void *out,
               const void *a, const void *b, double alpha);
int cuk_unary(const cuk_ctx *c, int op, int dt, const cuk_geom *g, int64_t n, void *out,
              const void *a, double p1, double p2);
/* gx, gy, x, y contiguous with n elements; x or y may be NULL when op does not use it. */
int cuk_unary_backward(const cuk_ctx *c, int op, int dt, int64_t n, void *gx, const void *gy,
                       const void *x, const void *y, double p1, double p2);
/* Training dropout over n contiguous elements: mask = (u > p) / (1 - p), y = x * mask.
 * u (dtype udt) has y's dtype, or float32 beside a bfloat16 / float16 y. */
int cuk_dropout(const cuk_ctx *c, int dt, int udt, int64_t n, void *y, void *mask,
                const void *x, const void *u, double p);
/* dst (dtype ddt) <- src (dtype sdt), any strides, CPU conversion rules. */
int cuk_copy(const cuk_ctx *c, int ddt, int sdt, const cuk_geom *g, int64_t n, void *dst,
             const void *src);
/* Fills with the element bytes in `value` (esize 1, 2, 4 or 8). */
int cuk_fill(const cuk_ctx *c, size_t esize, const cuk_geom *g, int64_t n, void *dst,
             uint64_t value);
/* y[n, c, s] += bias[c] (y contiguous [N, C, S]). */
int cuk_bias_add(const cuk_ctx *c, int dt, void *y, const void *bias, int64_t N, int64_t C,
                 int64_t S);

/* ------------------------------------------------------------------ reduction */
/* in_dt in {F32, F64, I64, BOOL}; out_dt in {F32, F64, I64, BOOL}; idx (int64, may be
 * NULL) for MAX.
 * out is contiguous in the kept dims' order. rcount may be 0 (not for MAX). */
int cuk_reduce(const cuk_ctx *c, int op, int in_dt, int out_dt, const cuk_red_geom *g,
               const void *a, void *out, int64_t *idx);

/* ------------------------------------------------------------------- pooling */
int cuk_max_pool_fwd(const cuk_ctx *c, int dt, const cuk_pool *p, const void *x, void *y,
                     int64_t *ind);
int cuk_max_pool_bwd(const cuk_ctx *c, int dt, const cuk_pool *p, const void *gy,
                     const int64_t *ind, void *gx);
/* With one-byte window codes (src/core/backend.h, max_pool2d_codes_forward): the
 * position ky*kw + kx of the chosen element, or CUK_POOL_NOGRAD where the fused ReLU
 * (relu != 0) clamped the output; codes may be NULL in the forward. */
#define CUK_POOL_NOGRAD 255 /* == CT_POOL_NOGRAD */
int cuk_max_pool_codes_fwd(const cuk_ctx *c, int dt, const cuk_pool *p, const void *x, void *y,
                           uint8_t *codes, int relu);
int cuk_max_pool_codes_bwd(const cuk_ctx *c, int dt, const cuk_pool *p, const void *gy,
                           const uint8_t *codes, void *gx);
int cuk_avg_pool_fwd(const cuk_ctx *c, int dt, const cuk_pool *p, const void *x, void *y);
int cuk_avg_pool_bwd(const cuk_ctx *c, int dt, const cuk_pool *p, const void *gy, void *gx);
int cuk_adaptive_pool_fwd(const cuk_ctx *c, int dt, const cuk_pool *p, const void *x, void *y);
int cuk_adaptive_pool_bwd(const cuk_ctx *c, int dt, const cuk_pool *p, const void *gy,
                          void *gx);

/* ------------------------------------------------------------ softmax / loss */
/* Over the middle dim of a contiguous [outer, C, inner] tensor. */
int cuk_softmax_fwd(const cuk_ctx *c, int dt, int64_t outer, int64_t C, int64_t inner, int log,
                    const void *x, void *y);
int cuk_softmax_bwd(const cuk_ctx *c, int dt, int64_t outer, int64_t C, int64_t inner, int log,
                    const void *y, const void *gy, void *gx);
/* logp [N, C], target int64 [N]; out [N] (NONE) or [] and total_weight [] in dtype dt. An
 * out-of-range target raises the device flag with flag_kind (cu_flag_kind). */
int cuk_nll_fwd(const cuk_ctx *c, int dt, int64_t N, int64_t C, int red, int64_t ignore_index,
                const void *logp, const int64_t *target, void *out, void *total_weight, int flag_kind);
/* gout: [N] (NONE) or []; total_weight may be NULL (then treated as 0). */
int cuk_nll_bwd(const cuk_ctx *c, int dt, int64_t N, int64_t C, int red, int64_t ignore_index,
                const void *gout, const int64_t *target, const void *total_weight, void *glogp, int flag_kind);

/* Fused cross_entropy from logp = log_softmax(logits) [N, C] (the softmax kernels above):
 * label smoothing eps, out [N] (NONE) or [], total_weight []. The backward writes every
 * element of glogits. */
int cuk_ce_fwd(const cuk_ctx *c, int dt, int64_t N, int64_t C, int red, int64_t ignore_index,
               double eps, const void *logp, const int64_t *target, void *out,
               void *total_weight, int flag_kind);
int cuk_ce_bwd(const cuk_ctx *c, int dt, int64_t N, int64_t C, int red, int64_t ignore_index,
               double eps, const void *gout, const void *logp, const int64_t *target,
               const void *total_weight, void *glogits, int flag_kind);

/* -------------------------------------------------------------- normalisation */
/* A per-channel vector: base pointer (NULL when absent) and element stride. */
typedef struct {
    void *p;
    int64_t stride;
} cuk_vec;

int cuk_bn_fwd(const cuk_ctx *c, int dt, int64_t N, int64_t C, int64_t S, const void *x,
               cuk_vec weight, cuk_vec bias, cuk_vec running_mean, cuk_vec running_var,
               int training, double momentum, double eps, void *y, cuk_vec save_mean,
               cuk_vec save_invstd);
int cuk_bn_bwd(const cuk_ctx *c, int dt, int64_t N, int64_t C, int64_t S, const void *gy,
               const void *x, cuk_vec weight, cuk_vec save_mean, cuk_vec save_invstd,
               int training, void *gx, cuk_vec gw, cuk_vec gb);
/* Rows of N elements; weight/bias [N] contiguous or NULL; mean/rstd [M] in dtype dt. */
int cuk_ln_fwd(const cuk_ctx *c, int dt, int64_t M, int64_t N, const void *x, const void *w,
               const void *b, double eps, void *y, void *mean, void *rstd);
int cuk_ln_bwd(const cuk_ctx *c, int dt, int64_t M, int64_t N, const void *gy, const void *x,
               const void *mean, const void *rstd, const void *w, void *gx, void *gw, void *gb);

/* ---------------------------------------------------------- fused optimizers */
/* Lists of n contiguous tensors of one dtype; numel[i] elements each. bufs may hold NULL
 * entries only where the algorithm does not read them (momentum == 0). */
int cuk_sgd(const cuk_ctx *c, int dt, int n, void *const *params, const void *const *grads,
            void *const *bufs, const int64_t *numel, double lr, double momentum,
            double dampening, double weight_decay, int nesterov, int maximize, int first_step);
/* max_exp_avg_sq may be NULL unless amsgrad. */
int cuk_adam(const cuk_ctx *c, int dt, int n, void *const *params, const void *const *grads,
             void *const *exp_avg, void *const *exp_avg_sq, void *const *max_exp_avg_sq,
             const int64_t *numel, double lr, double beta1, double beta2, double eps,
             double weight_decay, int decoupled, int amsgrad, int maximize,
             double bias_correction1, double bias_correction2);
/* GradScaler's unscale: grads[i] (numel[i] elements of dtype dt: float32, float64,
 * float16 or bfloat16) *= inv_scale (a float32 value), *found_inf = 1 when any element is
 * inf or NaN (left alone otherwise). */
int cuk_amp_unscale(const cuk_ctx *c, int dt, int n, void *const *grads, const int64_t *numel,
                    float *found_inf, double inv_scale);

/* ------------------------------------------------------------------- probing */
/* cudaFuncGetAttributes on a kernel of this build: cudaErrorNoKernelImageForDevice (or
 * cudaErrorInvalidDeviceFunction) when the current GPU's architecture is not compiled in. */
int cuk_probe(void);

#ifdef __cplusplus
}
#endif
#endif
