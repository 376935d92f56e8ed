/* Backend dispatch. An op is defined once in src/ops (shape rule, dispatch, backward
 * formula); a backend supplies kernels by filling this table and registering it for
 * its device type. A NULL entry means "not implemented on this backend" and the op
 * reports that by name. The CUDA plugin fills the same table at run time.
 *
 * Kernel contract: tensors arrive already checked (shapes, dtypes, devices agree);
 * outputs are allocated by the op layer and contiguous unless stated; kernels
 * return 0 or -1 with ct_error() set. Floating kernels handle float32 and float64. */
#ifndef CT_BACKEND_H
#define CT_BACKEND_H

#include "tensor_impl.h"

typedef enum {
    CT_BIN_ADD, /* a + alpha*b */
    CT_BIN_SUB, /* a - alpha*b */
    CT_BIN_MUL,
    CT_BIN_DIV,
    CT_BIN_COUNT
} ct_binop;

typedef enum {
    CT_UN_NEG,
    CT_UN_EXP,
    CT_UN_LOG,
    CT_UN_SQRT,
    CT_UN_ABS,
    CT_UN_SIGN,
    CT_UN_POW,        /* x^p1 */
    CT_UN_CLAMP,      /* min(max(x, p1), p2) */
    CT_UN_ADD_SCALAR, /* x + p1 */
    CT_UN_MUL_SCALAR, /* x * p1 */
    CT_UN_RELU,
    CT_UN_LEAKY_RELU, /* slope p1 */
    CT_UN_GELU,
    CT_UN_GELU_TANH,
    CT_UN_SIGMOID,
    CT_UN_TANH,
    CT_UN_COUNT
} ct_unop;

typedef enum { CT_RED_SUM, CT_RED_MEAN, CT_RED_MAX, CT_RED_COUNT } ct_redop;

typedef struct {
    int stride[2], padding[2], dilation[2], groups;
} ct_conv_params;

typedef struct {
    int kernel[2], stride[2], padding[2], dilation[2];
    int ceil_mode, count_include_pad;
} ct_pool_params;

/* Window code of a max-pooling output whose gradient is zero (a fused ReLU clamped it). */
#define CT_POOL_NOGRAD 255

typedef struct ct_kernels {
    /* out[i] = op(a[i], b[i]); a and b have out's shape with any strides (0 for
     * broadcast); out may be non-contiguous and may alias a (in-place ops). */
    int (*binary)(ct_binop op, ct_tensor *out, const ct_tensor *a, const ct_tensor *b,
                  double alpha);
    /* out = op(a); a and out same shape, any strides, out may alias a. */
    int (*unary)(ct_unop op, ct_tensor *out, const ct_tensor *a, double p1, double p2);
    /* gx = gy * op'(x) (y = op(x) given when cheaper); all contiguous, same shape. */
    int (*unary_backward)(ct_unop op, ct_tensor *gx, const ct_tensor *gy, const ct_tensor *x,
                          const ct_tensor *y, double p1, double p2);
    /* Reduces `a` over the dims where reduce[d] != 0 into out, which has a's ndim with
     * size 1 on reduced dims (contiguous). For CT_RED_MAX exactly one dim is reduced
     * and `indices` (int64, out's shape, may be NULL) receives the argmax. */
    int (*reduce)(ct_redop op, ct_tensor *out, ct_tensor *indices, const ct_tensor *a,
                  const int *reduce);
    /* dst = src elementwise with dtype conversion; same shape, any strides. */
    int (*copy)(ct_tensor *dst, const ct_tensor *src);
    int (*fill)(ct_tensor *t, double value);
    /* c[b] = alpha * a[b] @ b[b] + beta * c[b]. a [B,M,K], b [B,K,N], c [B,M,N]
     * contiguous. For a and b, stride[2]==1 or stride[1]==1 (transposed); batch
     * stride may be 0 (broadcast). */
    int (*bmm)(ct_tensor *c, const ct_tensor *a, const ct_tensor *b, double alpha, double beta);
    /* NCHW, contiguous. bias may be NULL. */
    int (*conv2d_forward)(ct_tensor *y, const ct_tensor *x, const ct_tensor *w,
                          const ct_tensor *bias, const ct_conv_params *p);
    int (*conv2d_backward_input)(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *w,
                                 const ct_conv_params *p);
    int (*conv2d_backward_weight)(ct_tensor *gw, const ct_tensor *gy, const ct_tensor *x,
                                  const ct_conv_params *p);
    /* indices: int64, y's shape, flat h*W+w offset into the input plane (PyTorch's). */
    int (*max_pool2d_forward)(ct_tensor *y, ct_tensor *indices, const ct_tensor *x,
                              const ct_pool_params *p);
    int (*max_pool2d_backward)(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *indices,
                               const ct_pool_params *p);
    /* Max pooling with compact window codes and an optional fused ReLU (NULL where a
     * backend lacks it: the op layer then uses the int64-index pair above). y =
     * max_pool2d(x), or relu(max_pool2d(x)) = max_pool2d(relu(x)) when relu != 0. codes
     * (uint8, y's shape, may be NULL): each output's window position ky*kw + kx of the first
     * maximum in row-major order (a NaN always taken), or CT_POOL_NOGRAD where the ReLU
     * clamped the output. Needs kernel[0]*kernel[1] < CT_POOL_NOGRAD. The backward
     * scatters gy back by the codes (gx fully written). */
    int (*max_pool2d_codes_forward)(ct_tensor *y, ct_tensor *codes, const ct_tensor *x,
                                    const ct_pool_params *p, int relu);
    int (*max_pool2d_codes_backward)(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *codes,
                                     const ct_pool_params *p);
    int (*avg_pool2d_forward)(ct_tensor *y, const ct_tensor *x, const ct_pool_params *p);
    int (*avg_pool2d_backward)(ct_tensor *gx, const ct_tensor *gy, const ct_pool_params *p);
    int (*adaptive_avg_pool2d_forward)(ct_tensor *y, const ct_tensor *x);
    int (*adaptive_avg_pool2d_backward)(ct_tensor *gx, const ct_tensor *gy);
    /* Over `dim` of a contiguous tensor. log != 0: log_softmax. */
    int (*softmax_forward)(ct_tensor *y, const ct_tensor *x, int dim, int log);
    int (*softmax_backward)(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *y, int dim,
                            int log);
    /* logp [N,C] contiguous, target int64 [N]. out: [N] for NONE, [] otherwise.
     * total_weight ([], out dtype) receives the number of non-ignored targets. */
    int (*nll_loss_forward)(ct_tensor *out, ct_tensor *total_weight, const ct_tensor *logp,
                            const ct_tensor *target, ct_reduction red, int64_t ignore_index);
    int (*nll_loss_backward)(ct_tensor *glogp, const ct_tensor *gout, const ct_tensor *target,
                             const ct_tensor *total_weight, ct_reduction red,
                             int64_t ignore_index);
    /* Fused log_softmax + nll (+ label smoothing) over logits [N,C] (contiguous) and int64
     * target [N]. out: [N] for NONE, [] otherwise; logp (may be NULL when no backward is
     * needed) receives log_softmax(logits); total_weight ([]) the non-ignored count.
     * Optional: when NULL the op composes log_softmax and nll_loss. */
    int (*cross_entropy_forward)(ct_tensor *out, ct_tensor *logp, ct_tensor *total_weight,
                                 const ct_tensor *logits, const ct_tensor *target,
                                 ct_reduction red, int64_t ignore_index, double label_smoothing);
    int (*cross_entropy_backward)(ct_tensor *glogits, const ct_tensor *gout, const ct_tensor *logp,
                                  const ct_tensor *target, const ct_tensor *total_weight,
                                  ct_reduction red, int64_t ignore_index, double label_smoothing);
    /* x [N,C,*] contiguous; weight/bias/running_* [C] or NULL. save_mean/save_invstd [C]
     * receive the statistics used (batch ones in training, running ones in eval).
     * In training, running stats (if given) are updated in place. */
    int (*batch_norm_forward)(ct_tensor *y, ct_tensor *save_mean, ct_tensor *save_invstd,
                              const ct_tensor *x, const ct_tensor *weight, const ct_tensor *bias,
                              ct_tensor *running_mean, ct_tensor *running_var, int training,
                              double momentum, double eps);
    /* gx, gw, gb may be NULL when not needed. */
    int (*batch_norm_backward)(ct_tensor *gx, ct_tensor *gw, ct_tensor *gb, const ct_tensor *gy,
                               const ct_tensor *x, const ct_tensor *weight,
                               const ct_tensor *save_mean, const ct_tensor *save_invstd,
                               int training);
    /* x viewed as [M, N] (normalised over the last N elements). mean/rstd [M]. */
    int (*layer_norm_forward)(ct_tensor *y, ct_tensor *mean, ct_tensor *rstd, const ct_tensor *x,
                              const ct_tensor *weight, const ct_tensor *bias, int64_t M,
                              int64_t N, double eps);
    int (*layer_norm_backward)(ct_tensor *gx, ct_tensor *gw, ct_tensor *gb, const ct_tensor *gy,
                               const ct_tensor *x, const ct_tensor *mean, const ct_tensor *rstd,
                               const ct_tensor *weight, int64_t M, int64_t N);
} ct_kernels;

typedef struct ct_backend {
    const char *name; /* "cpu", "cuda" */
    ct_device_type type;
    void *(*alloc)(size_t nbytes, int device_index); /* NULL + ct_error on failure */
    void (*free)(void *ptr, int device_index);
    /* Raw byte copy between this backend's memory and the host (to_host selects the
     * direction) or within the device when both are device pointers (kind 2). */
    int (*memcpy)(void *dst, const void *src, size_t nbytes, int kind, int device_index);
    ct_kernels k;
} ct_backend;

enum { CT_MEMCPY_H2D = 0, CT_MEMCPY_D2H = 1, CT_MEMCPY_D2D = 2 };

/* The layout of ct_backend, which the CUDA plugin fills in: its size, and a number to bump
 * whenever entries change without changing the size. The core refuses a plugin built with
 * another layout (src/core/dispatch.c) instead of calling through a shifted table. */
#define CT_BACKEND_ABI_VERSION 2
#define CT_BACKEND_ABI ((long)sizeof(ct_backend) * 100 + CT_BACKEND_ABI_VERSION)

int ct_register_backend(const ct_backend *b);
/* The backend for a device type, loading the plugin on first use; NULL + error. */
const ct_backend *ct_backend_get(ct_device_type type);
const ct_backend *ct_backend_of(const ct_tensor *t);
/* A function the CUDA plugin exports beyond its table (src/backends/cuda/cuda_plugin.h
 * declares them, with a ct_cuda_*_fn typedef each), looked up with dlsym on the plugin's
 * own handle; loads the plugin on first use. NULL + error ("cuda unavailable: <reason>",
 * or the plugin lacks it) when CUDA cannot be used. */
void *ct_cuda_plugin_symbol(const char *name);

/* Looks up kernel `field` for tensor t's device; on NULL reports "<op>: not implemented
 * on <device>". Usage: CT_KERNEL(t, conv2d_forward, "conv2d") -> function pointer or NULL. */
#define CT_KERNEL(t, field, opname)                                                       \
    (ct__kernel_check(ct_backend_of(t), ct_backend_of(t) ? (void *)ct_backend_of(t)->k.field \
                                                         : NULL,                           \
                      (opname))                                                             \
         ? ct_backend_of(t)->k.field                                                       \
         : NULL)
int ct__kernel_check(const ct_backend *b, void *fn, const char *opname);

/* The CPU backend's table (defined in src/backends/cpu). */
extern const ct_backend ct_cpu_backend;

#endif
