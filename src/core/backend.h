/* Backend dispatch. An op is defined once in src/ops (shape rule, dispatch, backward
 * formula); a backend supplies kernels by filling this table and registering it for
 * its device type. The CUDA plugin fills the same table at run time. Nothing above
 * src/backends branches on a device type: what differs between devices is a kernel or
 * an extra entry point (CT_BACKEND_PROCS) here.
 *
 * Kernel contract: tensors arrive already checked (shapes, dtypes, devices agree);
 * outputs are allocated by the op layer and contiguous unless stated; kernels
 * return 0 or -1 with ct_error() set. Floating kernels handle float32 and float64. */
#ifndef CT_BACKEND_H
#define CT_BACKEND_H

#include "autocast.h"
#include "op_tables.h"
#include "tensor_impl.h"

#include <string.h>

#ifdef __cplusplus
#define _Static_assert static_assert /* the CUDA plugin's .cu files include this header */
extern "C" {
#endif


/* Names and dtype rules of the op tables' rows (src/ops/pointwise.c). */
/* dlopen of a plugin shipped with ctorch (libctorch_cuda.so, libctorch_mpi.so): $env_name
 * when set, else next to the executable, next to libctorch.so, then the loader's search
 * path. NULL with dlopen's message in why. */
void *ct__open_plugin(const char *file, const char *env_name, int mode, char *why, size_t n);

/* The kind of answer ct_cuda_status gives (its text says why and how to fix it), for
 * `ctorch doctor`: READY; NO_PLUGIN (this build has no libctorch_cuda.so: a CPU-only
 * build); PLUGIN_BAD (the plugin file is damaged, from another build, or
 * CTORCH_CUDA_PLUGIN names a missing file); NOT_USABLE (the plugin loaded but the machine
 * cannot run it: no driver, driver too old, no GPU, cuDNN missing, architecture). */
typedef enum {
    CT_CUDA_READY = 0,
    CT_CUDA_NO_PLUGIN,
    CT_CUDA_PLUGIN_BAD,
    CT_CUDA_NOT_USABLE
} ct_cuda_state;
ct_cuda_state ct__cuda_state(void);

const char *ct_unop_name(ct_unop op);
const char *ct_binop_name(ct_binop op);
int ct_unop_allows_int64(ct_unop op);
/* The unary op `op` with its scalars: what the public wrappers (ct_exp, ct_clamp, ...) call. */
ct_tensor *ct__unary(ct_unop op, const ct_tensor *a, double p1, double p2);
/* The binary op `op` (ct_add, ct_eq, ...; alpha scales b for add and sub). */
ct_tensor *ct__binary(ct_binop op, const ct_tensor *a, const ct_tensor *b, double alpha);

typedef struct {
    int stride[2], padding[2], dilation[2], groups;
} ct_conv_params;

typedef struct {
    int kernel[2], stride[2], padding[2], dilation[2];
    int ceil_mode, count_include_pad;
} ct_pool_params;

/* scaled_dot_product_attention's scalars (src/ops/attention.c). scale multiplies q.k;
 * causal: key j attends to query i only when j <= i (top-left aligned, as PyTorch);
 * dropout_p > 0: the attention weight of (b, i, j) is kept, scaled by 1/(1-p), when
 * ct_rng_uniform(seed, offset + (b*L + i)*S + j) >= p (the same stream for the forward
 * and the backward; computed in double on every backend). */
typedef struct {
    double scale, dropout_p;
    uint64_t seed, offset;
    int causal;
} ct_sdpa_params;

/* Window code of a max-pooling output whose gradient is zero (a fused ReLU clamped it). */
#define CT_POOL_NOGRAD 255

/* Optimizer hyper-parameters for the fused step kernels (torch.optim's formulas, written
 * out at sgd_step / adam_step below). */
typedef struct {
    double lr, momentum, dampening, weight_decay;
    int nesterov, maximize;
} ct_sgd_args;
typedef struct {
    double lr, beta1, beta2, eps, weight_decay;
    int decoupled; /* AdamW: p *= 1 - lr * weight_decay instead of g += weight_decay * p */
    int amsgrad, maximize;
    int64_t step; /* 1 for the first update */
} ct_adam_args;

/* The kernel table: one row per kernel, X(name, (parameters)); every kernel returns 0, or
 * -1 with ct_error() set. The table struct, the kernel names, the CPU and CUDA tables and
 * the prototypes of their functions (cpu_<name>, cu_k_<name>) are generated from these
 * rows, so a kernel missing from a backend fails the build (CPU) or the plugin's load
 * (CUDA, tested on the emulator), never a NULL call. */
#define CT_KERNEL_LIST(X)                                                                  \
    /* out[i] = op(a[i], b[i]); a and b have out's shape with any strides (0 for          \
     * broadcast); out may be non-contiguous and may alias a (in-place ops). */            \
    X(binary, (ct_binop op, ct_tensor *out, const ct_tensor *a, const ct_tensor *b,        \
               double alpha))                                                              \
    /* out = op(a); a and out same shape, any strides, out may alias a. The dtype rule of  \
     * the op's row (op_tables.h) was checked by the op layer. */                          \
    X(unary, (ct_unop op, ct_tensor *out, const ct_tensor *a, double p1, double p2))       \
    /* gx = gy * op'(x); x and y (= op(x)) are given when the row's `saves` names them,    \
     * else NULL; all contiguous, same shape. */                                           \
    X(unary_backward, (ct_unop op, ct_tensor *gx, const ct_tensor *gy, const ct_tensor *x, \
                       const ct_tensor *y, double p1, double p2))                          \
    /* Reduces `a` over the dims where reduce[d] != 0 into out, which has a's ndim with    \
     * size 1 on reduced dims (contiguous). For CT_RED_MAX exactly one dim is reduced and  \
     * `indices` (int64, out's shape, may be NULL) receives the argmax. a: float32,        \
     * float64, int64 or bool; out: float32, float64, int64 (sum of int64 or bool) or bool \
     * (any, all, max of bool). */                                                         \
    X(reduce, (ct_redop op, ct_tensor *out, ct_tensor *indices, const ct_tensor *a,        \
               const int *reduce))                                                         \
    /* dst = src elementwise with dtype conversion; same shape, any strides. */            \
    X(copy, (ct_tensor *dst, const ct_tensor *src))                                        \
    X(fill, (ct_tensor *t, double value))                                                  \
    /* c[b] = alpha * a[b] @ b[b] + beta * c[b]. a [B,M,K], b [B,K,N], c [B,M,N]           \
     * contiguous. For a and b, stride[2]==1 or stride[1]==1 (transposed); batch stride    \
     * may be 0 (broadcast). bias (NULL or 1-D [N], c's dtype, any stride; only with       \
     * beta == 0): c[b][m][n] = alpha * (a[b] @ b[b])[m][n] + bias[n], a linear layer's    \
     * bias added where the backend can (a GEMM epilogue) instead of a pass of its own. */ \
    X(bmm, (ct_tensor *c, const ct_tensor *a, const ct_tensor *b, const ct_tensor *bias,   \
            double alpha, double beta))                                                    \
    /* NCHW, contiguous. bias may be NULL. */                                              \
    X(conv2d_forward, (ct_tensor *y, const ct_tensor *x, const ct_tensor *w,               \
                       const ct_tensor *bias, const ct_conv_params *p))                    \
    X(conv2d_backward_input, (ct_tensor *gx, const ct_tensor *gy, const ct_tensor *w,      \
                              const ct_conv_params *p))                                    \
    /* gw; and gb (may be NULL) = the bias gradient, gy summed over N, H, W. */            \
    X(conv2d_backward_weight, (ct_tensor *gw, ct_tensor *gb, const ct_tensor *gy,          \
                               const ct_tensor *x, const ct_conv_params *p))               \
    /* yp = max_pool2d(relu(conv2d(x, w) + bias)) with window codes as                     \
     * max_pool2d_codes_forward (codes may be NULL); pooling dilation 1, no ceil mode,     \
     * kernel[0]*kernel[1] < CT_POOL_NOGRAD. The CPU does it in one pass where it can      \
     * (the full-size convolution output is never stored). */                             \
    X(conv2d_relu_max_pool2d_forward, (ct_tensor *yp, ct_tensor *codes, const ct_tensor *x, \
                                       const ct_tensor *w, const ct_tensor *bias,          \
                                       const ct_conv_params *p, const ct_pool_params *pp)) \
    /* indices: int64, y's shape, flat h*W+w offset into the input plane (PyTorch's). */   \
    X(max_pool2d_forward, (ct_tensor *y, ct_tensor *indices, const ct_tensor *x,           \
                           const ct_pool_params *p))                                       \
    X(max_pool2d_backward, (ct_tensor *gx, const ct_tensor *gy, const ct_tensor *indices,  \
                            const ct_pool_params *p))                                      \
    /* Max pooling with compact window codes and an optional fused ReLU. y =              \
     * max_pool2d(x), or relu(max_pool2d(x)) = max_pool2d(relu(x)) when relu != 0. codes   \
     * (uint8, y's shape, may be NULL): each output's window position ky*kw + kx of the    \
     * first maximum in row-major order (a NaN always taken), or CT_POOL_NOGRAD where the  \
     * ReLU clamped the output. Needs kernel[0]*kernel[1] < CT_POOL_NOGRAD. The backward   \
     * scatters gy back by the codes (gx fully written). */                                \
    X(max_pool2d_codes_forward, (ct_tensor *y, ct_tensor *codes, const ct_tensor *x,       \
                                 const ct_pool_params *p, int relu))                       \
    X(max_pool2d_codes_backward, (ct_tensor *gx, const ct_tensor *gy,                      \
                                  const ct_tensor *codes, const ct_pool_params *p))        \
    X(avg_pool2d_forward, (ct_tensor *y, const ct_tensor *x, const ct_pool_params *p))     \
    X(avg_pool2d_backward, (ct_tensor *gx, const ct_tensor *gy, const ct_pool_params *p))  \
    X(adaptive_avg_pool2d_forward, (ct_tensor *y, const ct_tensor *x))                     \
    X(adaptive_avg_pool2d_backward, (ct_tensor *gx, const ct_tensor *gy))                  \
    /* Over `dim` of a contiguous tensor. log != 0: log_softmax. */                        \
    X(softmax_forward, (ct_tensor *y, const ct_tensor *x, int dim, int log))               \
    X(softmax_backward, (ct_tensor *gx, const ct_tensor *gy, const ct_tensor *y, int dim,  \
                         int log))                                                         \
    /* logp [N,C] contiguous, target int64 [N]. out: [N] for NONE, [] otherwise.           \
     * total_weight ([], out dtype) receives the number of non-ignored targets. */         \
    X(nll_loss_forward, (ct_tensor *out, ct_tensor *total_weight, const ct_tensor *logp,   \
                         const ct_tensor *target, ct_reduction red, int64_t ignore_index)) \
    X(nll_loss_backward, (ct_tensor *glogp, const ct_tensor *gout, const ct_tensor *target, \
                          const ct_tensor *total_weight, ct_reduction red,                 \
                          int64_t ignore_index))                                           \
    /* Fused log_softmax + nll (+ label smoothing) over logits [N,C] (contiguous) and      \
     * int64 target [N]. out: [N] for NONE, [] otherwise; logp (may be NULL when no        \
     * backward is needed) receives log_softmax(logits); total_weight ([]) the             \
     * non-ignored count. */                                                               \
    X(cross_entropy_forward, (ct_tensor *out, ct_tensor *logp, ct_tensor *total_weight,    \
                              const ct_tensor *logits, const ct_tensor *target,            \
                              ct_reduction red, int64_t ignore_index,                      \
                              double label_smoothing))                                     \
    X(cross_entropy_backward, (ct_tensor *glogits, const ct_tensor *gout,                  \
                               const ct_tensor *logp, const ct_tensor *target,             \
                               const ct_tensor *total_weight, ct_reduction red,            \
                               int64_t ignore_index, double label_smoothing))              \
    /* x [N,C,*] contiguous; weight/bias/running_* [C] or NULL. save_mean/save_invstd [C]  \
     * receive the statistics used (batch ones in training, running ones in eval). In     \
     * training, running stats (if given) are updated in place. */                         \
    X(batch_norm_forward, (ct_tensor *y, ct_tensor *save_mean, ct_tensor *save_invstd,     \
                           const ct_tensor *x, const ct_tensor *weight,                    \
                           const ct_tensor *bias, ct_tensor *running_mean,                 \
                           ct_tensor *running_var, int training, double momentum,          \
                           double eps))                                                    \
    /* gx, gw, gb may be NULL when not needed. */                                          \
    X(batch_norm_backward, (ct_tensor *gx, ct_tensor *gw, ct_tensor *gb,                   \
                            const ct_tensor *gy, const ct_tensor *x,                       \
                            const ct_tensor *weight, const ct_tensor *save_mean,           \
                            const ct_tensor *save_invstd, int training))                   \
    /* x viewed as [M, N] (normalised over the last N elements). mean/rstd [M]. */         \
    X(layer_norm_forward, (ct_tensor *y, ct_tensor *mean, ct_tensor *rstd,                 \
                           const ct_tensor *x, const ct_tensor *weight,                    \
                           const ct_tensor *bias, int64_t M, int64_t N, double eps))       \
    X(layer_norm_backward, (ct_tensor *gx, ct_tensor *gw, ct_tensor *gb,                   \
                            const ct_tensor *gy, const ct_tensor *x,                       \
                            const ct_tensor *mean, const ct_tensor *rstd,                  \
                            const ct_tensor *weight, int64_t M, int64_t N))                \
    /* Training dropout: mask = (u > p) / (1 - p) with u uniform in [0, 1) (x's shape and  \
     * dtype, drawn by the op layer from the seeded generator), y = x * mask; all          \
     * contiguous; 0 <= p < 1. */                                                          \
    X(dropout_forward, (ct_tensor *y, ct_tensor *mask, const ct_tensor *x,                 \
                        const ct_tensor *u, double p))                                     \
    /* One update of n parameters (contiguous, one device and dtype, each with its         \
     * gradient and state of the same numel) with torch.optim's single-tensor formulas,    \
     * in the parameter's precision:                                                       \
     * SGD: g = ±grad (maximize: -grad) + weight_decay * p; with momentum:                 \
     *      buf = first_step ? g : momentum * buf + (1 - dampening) * g,                   \
     *      g = nesterov ? g + momentum * buf : buf; p -= lr * g.                          \
     *      bufs may be NULL when momentum == 0.                                           \
     * Adam/AdamW: AdamW: p *= 1 - lr * weight_decay; Adam: g += weight_decay * p;         \
     *      m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2;                    \
     *      amsgrad: vmax = max(vmax, v), used instead of v;                               \
     *      p -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps).       \
     *      max_exp_avg_sq may be NULL unless amsgrad. */                                  \
    X(sgd_step, (ct_tensor *const *params, ct_tensor *const *grads, ct_tensor *const *bufs, \
                 int n, const ct_sgd_args *a, int first_step))                             \
    X(adam_step, (ct_tensor *const *params, ct_tensor *const *grads,                       \
                  ct_tensor *const *exp_avg, ct_tensor *const *exp_avg_sq,                 \
                  ct_tensor *const *max_exp_avg_sq, int n, const ct_adam_args *a))         \
    /* GradScaler's unscale (torch._amp_foreach_non_finite_check_and_unscale_): each of \
     * the n grads (contiguous, one dtype: float32, float64, float16 or bfloat16, on     \
     * found_inf's device) is multiplied in place by inv_scale (a float32 value) in its    \
     * precision (float for float16/bfloat16); found_inf (float32, 1 element, contiguous) \
     * is set to 1 when any element was inf or NaN, and left alone otherwise. */           \
    X(amp_unscale, (ct_tensor *const *grads, int n, ct_tensor *found_inf, double inv_scale)) \
    /* y [n, dim] = weight [num, dim] rows picked by indices (int64 [n]), all contiguous;    \
     * an index outside [0, num) is an error naming it (CUDA: at the next sync). */          \
    X(embedding_forward, (ct_tensor *y, const ct_tensor *weight, const ct_tensor *indices)) \
    /* gw [num, dim] (fully written) = sum of the rows of gy [n, dim] at their indices, in  \
     * index order (deterministic); row padding_idx stays zero (< 0: none). */             \
    X(embedding_backward, (ct_tensor *gw, const ct_tensor *gy, const ct_tensor *indices,   \
                           int64_t padding_idx))                                           \
    /* out[i] = cond[i] ? a[i] : b[i]. cond (bool), a and b have out's shape with any      \
     * strides (0 for broadcast); a, b and out have one dtype, any dtype (the elements are \
     * moved, not computed); out contiguous. */                                            \
    X(where, (ct_tensor *out, const ct_tensor *cond, const ct_tensor *a, const ct_tensor *b)) \
    /* The k largest (largest != 0) or smallest elements along dim of a (contiguous, viewed  \
     * as [outer, n, inner] around dim; float32, float64 or int64), 0 <= k <= n: values     \
     * (a's dtype) and indices (int64) [outer, k, inner], contiguous, best first. The order \
     * is total: NaN ranks above every number (first when largest, last when smallest),    \
     * equal values by the smaller index. */                                               \
    X(topk_forward, (ct_tensor *values, ct_tensor *indices, const ct_tensor *a, int dim,   \
                     int64_t k, int largest))                                              \
    /* gx (contiguous, fully written) = zeros with gy [outer, k, inner] (contiguous) put at \
     * the positions indices (topk's: distinct along dim) give along dim. */               \
    X(topk_backward, (ct_tensor *gx, const ct_tensor *gy, const ct_tensor *indices, int dim)) \
    /* Fused attention, flash style (the score matrix is never stored whole): q [B1,B2,L,E], \
     * k [B1,B2,S,E], v [B1,B2,S,Ev], one floating dtype, views with any strides for dims   \
     * 0-2 and contiguous rows (dim 3 stride 1), as out; B = B1*B2 batches, batch b at     \
     * (b / B2, b % B2). out [B1,B2,L,Ev] = softmax(scale * q k^T + mask, causal) (dropped  \
     * out) v; lse [B,L] contiguous (q's dtype) the log-sum-exp of each row's scores (-inf  \
     * for a row with nothing to attend: its output is 0). mask: NULL or additive, q's     \
     * dtype (float32 beside a 16-bit q, as lse), shape [M1,M2,L,S] with M1*M2 = B (batch b \
     * at b / M2, b % M2), strides of dims 0-2 any (0: broadcast), of dim 3 exactly 1. */   \
    X(sdpa_forward, (ct_tensor *out, ct_tensor *lse, const ct_tensor *q, const ct_tensor *k, \
                     const ct_tensor *v, const ct_tensor *mask, const ct_sdpa_params *p))   \
    /* gq, gk, gv (views like q, k, v, fully written; any may be NULL when not needed) from \
     * gout [B1,B2,L,Ev] (a view) and the forward's inputs, out and lse; the tiles are      \
     * recomputed. */                                                                       \
    X(sdpa_backward, (ct_tensor *gq, ct_tensor *gk, ct_tensor *gv, const ct_tensor *gout,    \
                      const ct_tensor *q, const ct_tensor *k, const ct_tensor *v,           \
                      const ct_tensor *out, const ct_tensor *lse, const ct_tensor *mask,    \
                      const ct_sdpa_params *p))

typedef struct ct_kernels {
#define CT__KERNEL_FIELD(name, params) int(*name) params;
    CT_KERNEL_LIST(CT__KERNEL_FIELD)
#undef CT__KERNEL_FIELD
} ct_kernels;

#define CT__KERNEL_ENUM(name, params) CT_K_##name,
enum { CT_KERNEL_LIST(CT__KERNEL_ENUM) CT_KERNEL_COUNT };
#undef CT__KERNEL_ENUM
_Static_assert(sizeof(ct_kernels) == CT_KERNEL_COUNT * sizeof(int (*)(void)),
               "ct_kernels must hold exactly one function pointer per CT_KERNEL_LIST row");
/* The kernels' names, in table order ("binary", "unary", ...). */
extern const char *const ct_kernel_names[CT_KERNEL_COUNT];
/* The i-th entry of a kernel table, untyped (for tests that walk the table). */
static inline int (*ct_kernel_at(const ct_kernels *k, int i))(void) {
    int (*f)(void);
    memcpy(&f, (const char *)k + (size_t)i * sizeof f, sizeof f);
    return f;
}

/* ------------------------------------------------------ extra entry points
 * Beyond its kernels a backend may provide the functions below (asynchronous copies and
 * pinned memory for the DataLoader's device prefetcher, device enumeration), looked up by
 * name with ct_backend_proc, as ggml's get_proc_address. Code above src/backends asks
 * for a capability, never for a device type: a backend without streams (the CPU) returns
 * NULL and the caller takes its synchronous path. */
typedef struct ct_event ct_event;
typedef enum { CT_STREAM_COMPUTE = 0, CT_STREAM_COPY = 1 } ct_stream_id;
/* What a backend's results depend on beyond ctorch's own code, for a run's manifest
 * (src/cli/run_info.c, docs/runs.md): strings, "" where the backend has no such piece or
 * cannot tell. Filled by the `versions` entry point below. */
typedef struct ct_backend_versions {
    char kernels[64];     /* the kernel variant in use: the CPU's "avx512+amx", "avx2", ...;
                             CUDA's compiled architectures */
    char driver[32];      /* the accelerator driver's version (CUDA: "12.4") */
    char runtime[32];     /* the runtime the backend was built with (CUDA: "13.0") */
    char dnn[32];         /* the DNN library as loaded (cuDNN: "9.19.0") */
    char collectives[32]; /* the collective-communication library as loaded (NCCL: "2.28.9") */
} ct_backend_versions;
#define CT_BACKEND_PROCS(X)                                                                \
    X(device_count, int, (void))                                                           \
    X(versions, int, (ct_backend_versions *out))                                           \
    X(device_describe, int, (int device, char *buf, size_t n))                             \
    X(synchronize, int, (int device))                                                      \
    X(host_alloc, void *, (size_t nbytes))                                                 \
    X(host_free, void, (void *p))                                                          \
    X(event_create, ct_event *, (int device))                                              \
    X(event_destroy, void, (ct_event *ev))                                                 \
    X(event_record, int, (ct_event *ev, int stream))                                       \
    X(event_query, int, (ct_event *ev))                                                    \
    X(event_synchronize, int, (ct_event *ev))                                              \
    X(stream_wait_event, int, (int stream, ct_event *ev))                                  \
    X(copy_h2d_async_on, int, (ct_tensor *dst, const ct_tensor *src, int stream))
#define CT__PROC_TYPEDEF(name, ret, params) typedef ret(*ct_proc_##name##_fn) params;
CT_BACKEND_PROCS(CT__PROC_TYPEDEF)
#undef CT__PROC_TYPEDEF
/* A backend's extra entry points, typed (NULL where it lacks one). */
typedef struct {
#define CT__PROC_FIELD(name, ret, params) ct_proc_##name##_fn name;
    CT_BACKEND_PROCS(CT__PROC_FIELD)
#undef CT__PROC_FIELD
} ct_backend_procs;

typedef struct ct_backend {
    const char *name; /* "cpu", "cuda" */
    ct_device_type type;
    int host_memory;  /* tensors live in host memory (ct_data may hand out their pointer) */
    void *(*alloc)(size_t nbytes, int device_index); /* NULL + ct_error on failure */
    void (*free)(void *ptr, int device_index);
    /* Raw byte copy between this backend's memory and the host (kind CT_MEMCPY_H2D /
     * CT_MEMCPY_D2H) or within the device (CT_MEMCPY_D2D). */
    int (*memcpy)(void *dst, const void *src, size_t nbytes, int kind, int device_index);
    const ct_backend_procs *procs; /* extra entry points; NULL: none */
    /* Autocast on this device (src/core/autocast.c): the ops, beyond the common list, that
     * run in float32 inside a region, as bits 1u << ct_autocast_op (CUDA: softmax,
     * layer_norm, exp, ... as PyTorch's CUDA autocast; CPU: none); and whether float16
     * arithmetic is emulated here (computed in float32: autocast warns once). */
    uint32_t autocast_fp32;
    int fp16_emulated;
    ct_kernels k;
} ct_backend;

enum { CT_MEMCPY_H2D = 0, CT_MEMCPY_D2H = 1, CT_MEMCPY_D2D = 2 };

/* The layout of ct_backend, which the CUDA plugin fills in: its size, and a number to bump
 * whenever entries change without changing the size. The core refuses a plugin built with
 * another layout (src/core/dispatch.c) instead of calling through a shifted table. */
/* 6: the `versions` entry point (ct_backend_procs grew: an older plugin's table is shorter) */
#define CT_BACKEND_ABI_VERSION 6
#define CT_BACKEND_ABI ((long)sizeof(ct_backend) * 100 + CT_BACKEND_ABI_VERSION)

int ct_register_backend(const ct_backend *b);
/* The backend for a device type, loading the plugin on first use; NULL + error. */
const ct_backend *ct_backend_get(ct_device_type type);
const ct_backend *ct_backend_of(const ct_tensor *t);
/* The CT_BACKEND_PROCS entry `name` of b, or NULL (no error) when b lacks it. */
void *ct_backend_find_proc(const ct_backend *b, const char *name);
/* An extra entry point of the backend of device type `type`: a CT_BACKEND_PROCS name
 * (cast the result to ct_proc_<name>_fn), or for a plugin any other function it exports
 * under its own name (the CUDA plugin's ct_cuda_* API, src/backends/cuda/cuda_plugin.h).
 * Loads the plugin on first use. NULL + error when the backend is unavailable or lacks
 * the name. */
void *ct_backend_proc(ct_device_type type, const char *name);
/* Called when a process-wide setting a plugin mirrors changes (ct_use_deterministic_algorithms):
 * a loaded CUDA plugin gets it; nothing is loaded for this. */
void ct__backend_settings_changed(void);

/* Looks up kernel `field` for tensor t's device. Every registered backend fills every
 * entry (the tables are generated from CT_KERNEL_LIST); the check reports a backend that
 * is missing altogether. Usage: CT_KERNEL(t, conv2d_forward, "conv2d") -> the function
 * or NULL + error. */
#define CT_KERNEL(t, field, opname)                                                        \
    (ct__kernel_check(ct_backend_of(t), ct_backend_of(t) ? (void *)ct_backend_of(t)->k.field \
                                                         : NULL,                            \
                      (opname))                                                              \
         ? ct_backend_of(t)->k.field                                                        \
         : NULL)
int ct__kernel_check(const ct_backend *b, void *fn, const char *opname);

/* The CPU backend's table (defined in src/backends/cpu). */
extern const ct_backend ct_cpu_backend;

#ifdef __cplusplus
}
#endif

#endif
