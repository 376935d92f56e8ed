/*
 * ctorch: tensors with define-by-run autograd, in C11.
 *
 * Conventions
 *  - Every function that returns a ct_tensor* returns a NEW reference (release
 *    it with ct_free) or NULL on failure. Functions returning int return 0 on
 *    success and -1 on failure. After a failure ct_last_error() gives a message
 *    that names the operation, the shapes involved and how to fix it.
 *  - Arguments are borrowed: ops never take ownership of the tensors passed in.
 *  - Names and semantics follow PyTorch (torch.add, torch.nn.functional.conv2d…).
 */
#ifndef CTORCH_H
#define CTORCH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CT_VERSION "0.1.0"
#define CT_MAX_DIMS 8

typedef enum {
    CT_FLOAT32 = 0,
    CT_FLOAT64,
    CT_INT64,
    CT_INT32,
    CT_UINT8,
    CT_BFLOAT16, /* torch.bfloat16: computed in float32, rounded to nearest even */
    CT_FLOAT16,  /* torch.float16 (IEEE half): computed in float32, rounded to nearest even */
    CT_BOOL,     /* torch.bool: one byte, 0 or 1 (comparisons, masks; any value -> x != 0) */
    CT_NUM_DTYPES
} ct_dtype;

typedef enum { CT_CPU = 0, CT_CUDA = 1, CT_NUM_DEVICE_TYPES } ct_device_type;

typedef struct {
    ct_device_type type;
    int index;
} ct_device;

typedef enum { CT_REDUCTION_NONE = 0, CT_REDUCTION_MEAN, CT_REDUCTION_SUM } ct_reduction;

typedef struct ct_tensor ct_tensor;

/* ---------------------------------------------------------------- errors */
const char *ct_last_error(void);       /* message of the last failure on this thread */
void ct_clear_error(void);

/* ------------------------------------------------------------ runtime */
const char *ct_dtype_name(ct_dtype dt);
size_t ct_dtype_size(ct_dtype dt);
int ct_dtype_from_name(const char *name, ct_dtype *out); /* "float32", "int64", … */
ct_device ct_cpu(void);
int ct_device_parse(const char *s, ct_device *out);     /* "cpu", "cuda", "cuda:1" */
int ct_device_str(ct_device d, char *buf, size_t n);
/* Whether device d can be used here: 0, or -1 with the reason and the fix ("CUDA is
 * unavailable: <why>", "no such device: cuda:3 ..."). Loads the backend on first use. */
int ct_device_check(ct_device d);
/* Whether d's tensors live in host memory (the CPU's do: ct_data hands out their data). */
int ct_device_is_host(ct_device d);
/* What device d is ("NVIDIA H100 80GB HBM3 (cc 9.0, ...)") into buf: 0, or -1 when its
 * backend cannot say (buf is then ""). */
int ct_device_describe(ct_device d, char *buf, size_t n);

/* Whether the CUDA backend can be used: returns "available" (and *available = 1) or the
 * reason it cannot, naming the missing piece and the fix. Loads the plugin on first call. */
const char *ct_cuda_status(int *available);
/* Number of CUDA devices ctorch can use, 0 when CUDA is unavailable (torch.cuda.device_count). */
int ct_cuda_device_count(void);
/* "NVIDIA H100 80GB HBM3 (cc 9.0, 132 SMs, 79.1 GiB)" for cuda:<device> into buf: 0, or -1
 * with the error (CUDA unavailable, no such device). */
int ct_cuda_device_name(int device, char *buf, size_t n);

void ct_set_num_threads(int n); /* <= 0: all cores */
int ct_get_num_threads(void);
/* torch.use_deterministic_algorithms: on the CPU every kernel splits its work as if a fixed
 * number of threads ran (8), so results are bitwise identical run after run whatever
 * ct_set_num_threads says (a reduction adds its parts in one fixed order); the CUDA
 * backend picks deterministic cuDNN / cuBLAS algorithms. Costs some speed where a
 * reduction is split into more parts than there are threads. Off by default. */
void ct_use_deterministic_algorithms(int on);
int ct_are_deterministic_algorithms_enabled(void);

/* ------------------------------------------------------------- autocast
 * torch.autocast: mixed precision without changing the model. Inside a region pushed for
 * a device type, ops on that device's tensors pick their dtype by PyTorch's rules:
 * conv2d, linear, matmul and bmm run in the region's dtype (bfloat16 or float16, float32
 * accumulation); the losses (cross_entropy, nll_loss, mse_loss) run in float32; on CUDA
 * also softmax, log_softmax, layer_norm, sum, exp, log and pow run in float32. Every other op runs in its inputs'
 * dtype, so activations stay in 16 bits between layers, and mixed-dtype binary ops
 * promote (bfloat16 + float32 -> float32). Parameters stay float32 ("master weights"):
 * their 16-bit copies are made once per outermost region (one training step) and
 * gradients flow back to them in float32. Push around the forward pass and the loss,
 * pop before backward, as with `with torch.autocast(...)`:
 *
 *     ct_autocast_push(CT_CPU, CT_BFLOAT16);
 *     ct_tensor *loss = ct_cross_entropy_opt(ct_module_forward(model, x), y, NULL);
 *     ct_autocast_pop();
 *     ct_backward(loss, NULL, 0);
 *
 * dtype CT_FLOAT32 turns autocast off inside an enclosing region (autocast(enabled=False)).
 * Regions are per thread and nest. Float16 on the CPU is allowed but emulated (one
 * warning). With float16, scale the loss (ct_grad_scaler, ctorch_optim.h). */
int ct_autocast_push(ct_device_type device, ct_dtype dtype);
int ct_autocast_pop(void);                     /* -1 when no region is open */
ct_dtype ct_autocast_dtype(ct_device_type device); /* CT_FLOAT32 when autocast is off */
void ct_manual_seed(uint64_t seed); /* seeds rand/randn/dropout/init */
uint64_t ct_seed(void);
/* torch.get_rng_state / set_rng_state. The global generator (rand, randn, dropout, init,
 * on every device) is counter-based: draw k of the stream is a pure function of (seed,
 * offset + k), so its whole state is the seed and how many numbers were drawn. */
void ct_get_rng_state(uint64_t *seed, uint64_t *offset);
void ct_set_rng_state(uint64_t seed, uint64_t offset);

/* ------------------------------------------------------- lifetime & info */
/* Ownership: every ct_tensor * a function returns is a NEW reference, the caller's to
 * release (ct_free, or a scope below); tensors passed in are BORROWED (a function that
 * keeps one takes its own reference); functions documented as returning a BORROWED
 * tensor (ct_grad, ct_module_get_tensor, ...) give a pointer the caller must not free.
 * A misused handle is reported, not a crash: freeing twice, using a tensor after it was
 * released, or freeing a borrowed one makes the next call on it fail with "<op>: tensor
 * already released" (released headers are kept for the next ~16k releases to tell). */
ct_tensor *ct_retain(ct_tensor *t); /* returns t with one more reference */
void ct_free(ct_tensor *t);         /* drops one reference; NULL is fine */

/* Scoped lifetime: a scope releases, when it is popped, every tensor reference handed out
 * on this thread while it was the innermost scope (what ops, creation functions and
 * ct_retain return), unless kept. A training step then needs no ct_free:
 *
 *     ct_scope *s = ct_scope_push();
 *     ct_tensor *loss = ct_cross_entropy_opt(ct_module_forward(model, x), y, NULL);
 *     ct_backward(loss, NULL, 0);            // gradients stay with the parameters
 *     ct_optim_step(opt);
 *     printf("%f\n", ct_item(loss));
 *     ct_scope_pop(s);                       // frees loss, the logits and every temporary
 *
 * ct_keep(t) takes t out of the innermost scope: into the enclosing scope, or, when there
 * is none, to the caller, who then owns one reference (ct_free it later). ct_free on a
 * tensor of a scope is allowed (releases it early, once). Scopes nest; popping a scope
 * first pops the scopes pushed inside it, so an early exit through an error path that
 * pops the outer scope frees everything. What ctorch itself keeps (a module's parameters
 * and buffers, gradients, optimizer state, tensors saved for backward, a loader's data)
 * is never released by a scope. A scope belongs to the thread that pushed it; use its
 * tensors on that thread. ct_scope_push returns NULL (with an error) only when out of
 * memory; popping NULL does nothing. */
typedef struct ct_scope ct_scope;
ct_scope *ct_scope_push(void);
ct_tensor *ct_keep(ct_tensor *t); /* returns t; NULL is fine */
void ct_scope_pop(ct_scope *s);
/* GCC / Clang: a scope popped automatically when the variable goes out of scope (also on
 * return and goto): { CT_SCOPE(s); ... } */
void ct__scope_pop_at_exit(ct_scope **s);
#define CT_SCOPE(name)                                                                     \
    ct_scope *name __attribute__((cleanup(ct__scope_pop_at_exit), unused)) = ct_scope_push()

int ct_ndim(const ct_tensor *t);
int64_t ct_size(const ct_tensor *t, int dim);   /* dim may be negative */
const int64_t *ct_shape(const ct_tensor *t);
const int64_t *ct_strides(const ct_tensor *t); /* in elements */
int64_t ct_offset(const ct_tensor *t);          /* in elements */
int64_t ct_numel(const ct_tensor *t);
ct_dtype ct_dtype_of(const ct_tensor *t);
ct_device ct_device_of(const ct_tensor *t);
int ct_is_contiguous(const ct_tensor *t);
/* Pointer to the first element (CPU tensors only; honours the offset). */
void *ct_data(const ct_tensor *t);
/* Value of a one-element tensor as double. Returns NAN and sets an error otherwise. */
double ct_item(const ct_tensor *t);
/* Formats the shape as "[2, 3, 4]". */
const char *ct_shape_str(const ct_tensor *t, char *buf, size_t n);

/* ------------------------------------------------------------- creation */
ct_tensor *ct_empty(const int64_t *shape, int ndim, ct_dtype dt);
ct_tensor *ct_zeros(const int64_t *shape, int ndim, ct_dtype dt);
ct_tensor *ct_ones(const int64_t *shape, int ndim, ct_dtype dt);
ct_tensor *ct_full(const int64_t *shape, int ndim, double value, ct_dtype dt);
ct_tensor *ct_scalar(double value, ct_dtype dt); /* 0-dim tensor */
ct_tensor *ct_arange(double start, double end, double step, ct_dtype dt);
/* Uniform [0,1) and standard normal, from the global seed. The values depend only
 * on the seed and how many numbers were drawn before, never on the thread count. */
ct_tensor *ct_rand(const int64_t *shape, int ndim, ct_dtype dt);
ct_tensor *ct_randn(const int64_t *shape, int ndim, ct_dtype dt);
ct_tensor *ct_empty_like(const ct_tensor *t);
ct_tensor *ct_zeros_like(const ct_tensor *t);
ct_tensor *ct_ones_like(const ct_tensor *t);
/* Copies `numel*dtype_size` bytes from data into a new contiguous CPU tensor (CT_BOOL: one
 * byte per element, any non-zero byte is stored as 1). */
ct_tensor *ct_from_data(const void *data, const int64_t *shape, int ndim, ct_dtype dt);
/* Wraps the caller's buffer without copying. `deleter` (may be NULL) is called with
 * (data, ctx) when the last tensor using the buffer is freed. CT_BOOL: the bytes must be 0
 * or 1 (they are used as they are). */
ct_tensor *ct_from_blob(void *data, const int64_t *shape, int ndim, ct_dtype dt,
                        void (*deleter)(void *data, void *ctx), void *ctx);
/* Copies the tensor's elements, in logical row-major order, to buf (nbytes large). */
int ct_copy_to_buffer(const ct_tensor *t, void *buf, size_t nbytes);
/* Copies buf (row-major, t's dtype) into t (any strides). CT_BOOL: bytes of 0 or 1. */
int ct_copy_from_buffer(ct_tensor *t, const void *buf, size_t nbytes);
ct_tensor *ct_to_dtype(const ct_tensor *t, ct_dtype dt);
ct_tensor *ct_to_device(const ct_tensor *t, ct_device d);
ct_tensor *ct_clone(const ct_tensor *t);

/* ------------------------------------------------------------------ views
 * Views share storage with their base; autograd flows through them. */
ct_tensor *ct_view(const ct_tensor *t, const int64_t *shape, int ndim);    /* -1 allowed once */
ct_tensor *ct_reshape(const ct_tensor *t, const int64_t *shape, int ndim); /* view or copy */
ct_tensor *ct_permute(const ct_tensor *t, const int *dims, int ndim);
ct_tensor *ct_transpose(const ct_tensor *t, int dim0, int dim1);
ct_tensor *ct_narrow(const ct_tensor *t, int dim, int64_t start, int64_t length);
ct_tensor *ct_slice(const ct_tensor *t, int dim, int64_t start, int64_t end, int64_t step);
ct_tensor *ct_expand(const ct_tensor *t, const int64_t *shape, int ndim); /* -1 keeps */
ct_tensor *ct_squeeze(const ct_tensor *t, int dim);
ct_tensor *ct_squeeze_all(const ct_tensor *t);
ct_tensor *ct_unsqueeze(const ct_tensor *t, int dim);
ct_tensor *ct_flatten(const ct_tensor *t, int start_dim, int end_dim);
ct_tensor *ct_contiguous(const ct_tensor *t); /* new ref to t itself when already contiguous */

/* --------------------------------------------------------------- autograd */
int ct_set_requires_grad(ct_tensor *t, int requires_grad); /* leaves only */
int ct_requires_grad(const ct_tensor *t);
int ct_is_leaf(const ct_tensor *t);
ct_tensor *ct_grad(const ct_tensor *t); /* BORROWED reference, or NULL */
int ct_set_grad(ct_tensor *t, ct_tensor *grad); /* retains grad; NULL clears */
void ct_zero_grad(ct_tensor *t);               /* sets .grad to NULL, like set_to_none */
int ct_retain_grad(ct_tensor *t);              /* keep .grad on a non-leaf */
/* Backpropagates from `root`. grad_output may be NULL when root has one element.
 * The graph is freed afterwards unless retain_graph is non-zero. */
int ct_backward(ct_tensor *root, const ct_tensor *grad_output, int retain_graph);
ct_tensor *ct_detach(const ct_tensor *t);
/* Grad mode: ct_set_grad_enabled returns the previous mode. */
int ct_set_grad_enabled(int enabled);
int ct_is_grad_enabled(void);
/* Name of the op that produced t ("AddBackward", …) or NULL for leaves. */
const char *ct_grad_fn_name(const ct_tensor *t);
/* Storage version counter (bumped by every in-place op). */
uint64_t ct_version(const ct_tensor *t);

/* -------------------------------------------------------------- pointwise */
ct_tensor *ct_add(const ct_tensor *a, const ct_tensor *b);
ct_tensor *ct_sub(const ct_tensor *a, const ct_tensor *b);
ct_tensor *ct_mul(const ct_tensor *a, const ct_tensor *b);
ct_tensor *ct_div(const ct_tensor *a, const ct_tensor *b);
ct_tensor *ct_add_scalar(const ct_tensor *a, double s);
ct_tensor *ct_mul_scalar(const ct_tensor *a, double s);
ct_tensor *ct_neg(const ct_tensor *a);
ct_tensor *ct_exp(const ct_tensor *a);
ct_tensor *ct_log(const ct_tensor *a);
ct_tensor *ct_sqrt(const ct_tensor *a);
ct_tensor *ct_pow_scalar(const ct_tensor *a, double exponent);
ct_tensor *ct_abs(const ct_tensor *a);
ct_tensor *ct_sign(const ct_tensor *a); /* -1, 0 or 1; its gradient is 0 */
/* Pass -INFINITY / INFINITY for "no bound". */
ct_tensor *ct_clamp(const ct_tensor *a, double min, double max);

/* ------------------------------------------------------------ comparisons
 * torch.eq/ne/lt/le/gt/ge and torch.logical_*: bool results (CT_BOOL), broadcasting, no
 * gradient (the output does not require grad). Operands of one dtype: float32, float64,
 * int64 or bool. NaN compares as IEEE (NaN != NaN is true, every other comparison with
 * NaN false); the logical ops take non-zero (NaN included) as true. Accuracy:
 *     ct_item(ct_sum(ct_eq(ct_argmax(logits, 1, 0), y), NULL, 0, 0))  (an int64 count) */
ct_tensor *ct_eq(const ct_tensor *a, const ct_tensor *b);
ct_tensor *ct_ne(const ct_tensor *a, const ct_tensor *b);
ct_tensor *ct_lt(const ct_tensor *a, const ct_tensor *b);
ct_tensor *ct_le(const ct_tensor *a, const ct_tensor *b);
ct_tensor *ct_gt(const ct_tensor *a, const ct_tensor *b);
ct_tensor *ct_ge(const ct_tensor *a, const ct_tensor *b);
/* Against a number (t == 3.0): in t's dtype when it holds s exactly (s rounded to a
 * floating t's precision, as PyTorch does), else in float64 (int64 t < 2.5). */
ct_tensor *ct_eq_scalar(const ct_tensor *a, double s);
ct_tensor *ct_ne_scalar(const ct_tensor *a, double s);
ct_tensor *ct_lt_scalar(const ct_tensor *a, double s);
ct_tensor *ct_le_scalar(const ct_tensor *a, double s);
ct_tensor *ct_gt_scalar(const ct_tensor *a, double s);
ct_tensor *ct_ge_scalar(const ct_tensor *a, double s);
ct_tensor *ct_logical_not(const ct_tensor *a);
ct_tensor *ct_logical_and(const ct_tensor *a, const ct_tensor *b);
ct_tensor *ct_logical_or(const ct_tensor *a, const ct_tensor *b);
/* torch.where(cond, a, b): a's elements where cond (bool) is true, b's elsewhere; the three
 * broadcast together, a and b of one dtype (any). Differentiable in a and b: the gradient
 * goes to a where cond is true, to b elsewhere. */
ct_tensor *ct_where(const ct_tensor *cond, const ct_tensor *a, const ct_tensor *b);

/* In-place (bump the version counter; refused on leaves that require grad
 * while grad mode is on). `alpha` scales b: a += alpha*b. */
int ct_add_(ct_tensor *a, const ct_tensor *b, double alpha);
int ct_mul_(ct_tensor *a, const ct_tensor *b);
int ct_mul_scalar_(ct_tensor *a, double s);
int ct_add_scalar_(ct_tensor *a, double s);
int ct_copy_(ct_tensor *dst, const ct_tensor *src); /* broadcasts src */
int ct_fill_(ct_tensor *t, double value);
int ct_zero_(ct_tensor *t);

/* ------------------------------------------------------------- reductions
 * dims == NULL (or ndims == 0) reduces over all dimensions. The sum of a bool tensor is
 * its number of true elements (int64); mean needs a floating-point tensor (as in
 * PyTorch: convert a bool or int64 one with ct_to_dtype first). */
ct_tensor *ct_sum(const ct_tensor *a, const int *dims, int ndims, int keepdim);
ct_tensor *ct_mean(const ct_tensor *a, const int *dims, int ndims, int keepdim);
/* torch.any / torch.all over dims: bool, true where any / every element is non-zero (NaN
 * counts as non-zero); any of no elements is false, all of none true. a: bool, float32,
 * float64 or int64. No gradient. */
ct_tensor *ct_any(const ct_tensor *a, const int *dims, int ndims, int keepdim);
ct_tensor *ct_all(const ct_tensor *a, const int *dims, int ndims, int keepdim);
/* torch.max(a, dim, keepdim): values; indices (int64) returned through *indices if non-NULL. */
ct_tensor *ct_max(const ct_tensor *a, int dim, int keepdim, ct_tensor **indices);
ct_tensor *ct_max_all(const ct_tensor *a); /* torch.max(a) */
ct_tensor *ct_argmax(const ct_tensor *a, int dim, int keepdim);
/* torch.topk(a, k, dim, largest, sorted): the k (0 <= k <= size of dim) largest (largest
 * != 0) or smallest elements along dim, best first; their int64 indices through *indices
 * if non-NULL. NaN ranks above every number (as in PyTorch); equal values come by the
 * smaller index (PyTorch's order among them is unspecified). The result is sorted whatever
 * `sorted` says (PyTorch leaves the order unspecified when it is 0). a: float32, float64 or
 * int64. Differentiable in the values: the gradient goes to the chosen positions. */
ct_tensor *ct_topk(const ct_tensor *a, int64_t k, int dim, int largest, int sorted,
                   ct_tensor **indices);

/* ------------------------------------------------------------ linear algebra */
ct_tensor *ct_matmul(const ct_tensor *a, const ct_tensor *b); /* torch.matmul */
/* y = x W^T + b, W is [out, in]; bias may be NULL. */
ct_tensor *ct_linear(const ct_tensor *x, const ct_tensor *weight, const ct_tensor *bias);

/* ------------------------------------------------------------ convolution */
ct_tensor *ct_conv2d(const ct_tensor *x, const ct_tensor *weight, const ct_tensor *bias,
                     const int stride[2], const int padding[2], const int dilation[2],
                     int groups);
ct_tensor *ct_max_pool2d(const ct_tensor *x, const int kernel[2], const int stride[2],
                         const int padding[2], const int dilation[2], int ceil_mode);
ct_tensor *ct_avg_pool2d(const ct_tensor *x, const int kernel[2], const int stride[2],
                         const int padding[2], int ceil_mode, int count_include_pad);
ct_tensor *ct_adaptive_avg_pool2d(const ct_tensor *x, const int output_size[2]);

/* ------------------------------------------------------------ activations */
ct_tensor *ct_relu(const ct_tensor *a);
ct_tensor *ct_leaky_relu(const ct_tensor *a, double negative_slope);
ct_tensor *ct_gelu(const ct_tensor *a, int approximate_tanh);
ct_tensor *ct_sigmoid(const ct_tensor *a);
ct_tensor *ct_tanh(const ct_tensor *a);
ct_tensor *ct_hardswish(const ct_tensor *a); /* x * relu6(x + 3) / 6 */
ct_tensor *ct_silu(const ct_tensor *a);      /* x * sigmoid(x) (swish) */
/* torch.nn.functional.hardtanh: clamp to [min_val, max_val]; the gradient is 1 strictly
 * inside (0 at and beyond the bounds, as PyTorch's HardtanhBackward). min_val <= max_val. */
ct_tensor *ct_hardtanh(const ct_tensor *a, double min_val, double max_val);
ct_tensor *ct_relu6(const ct_tensor *a); /* hardtanh(a, 0, 6) (nn.ReLU6) */
ct_tensor *ct_softmax(const ct_tensor *a, int dim);
ct_tensor *ct_log_softmax(const ct_tensor *a, int dim);

/* ------------------------------------------------------------- attention
 * torch.nn.functional.scaled_dot_product_attention: q [..., L, E], k [..., S, E],
 * v [..., S, Ev] -> [..., L, Ev] = softmax(q k^T * scale + mask) v, one fused op (a
 * flash-attention loop: the L x S score matrix is never stored, only one log-sum-exp per
 * query row for the backward). The batch dims of q, k and v broadcast. attn_mask: NULL,
 * bool (true = attend) or floating (added to the scores), broadcastable to [..., L, S];
 * it gets no gradient. is_causal: query i attends to keys j <= i (top-left aligned, as
 * PyTorch; not together with attn_mask). dropout_p > 0 drops attention weights (as
 * PyTorch, whatever the training mode: pass 0 in eval) with ctorch's generator, so the
 * dropped positions differ from PyTorch's stream, as for ct_dropout. scale:
 * CT_SDPA_DEFAULT_SCALE (0) for 1/sqrt(E). A query row with nothing to attend gives 0.
 * float32, float64, and bfloat16/float16 (computed in float32). */
#define CT_SDPA_DEFAULT_SCALE 0.0
ct_tensor *ct_scaled_dot_product_attention(const ct_tensor *q, const ct_tensor *k,
                                           const ct_tensor *v, const ct_tensor *attn_mask,
                                           double dropout_p, int is_causal, double scale);

/* ------------------------------------------------------------- embedding
 * torch.nn.functional.embedding: the rows of weight [num_embeddings, dim] picked by the
 * int64 indices (any shape) -> indices' shape + [dim]. padding_idx: a row whose gradient
 * stays zero (negative counts from the end, as in PyTorch), or CT_NO_PADDING. */
#define CT_NO_PADDING INT64_MIN
ct_tensor *ct_embedding(const ct_tensor *indices, const ct_tensor *weight, int64_t padding_idx);

/* ----------------------------------------------------------------- losses
 * target holds int64 class indices. ignore_index: pass -100 as PyTorch does. */
ct_tensor *ct_nll_loss(const ct_tensor *log_probs, const ct_tensor *target,
                       ct_reduction reduction, int64_t ignore_index);
ct_tensor *ct_cross_entropy(const ct_tensor *logits, const ct_tensor *target,
                            ct_reduction reduction, double label_smoothing,
                            int64_t ignore_index);
ct_tensor *ct_mse_loss(const ct_tensor *input, const ct_tensor *target, ct_reduction reduction);
/* The same with options (designated initialisers; a zero field is PyTorch's default):
 *     ct_cross_entropy_opt(logits, y, NULL)                           // mean, -100, 0.0
 *     ct_cross_entropy_opt(logits, y, &(ct_loss_opts){.reduction = "sum",
 *                                                     .label_smoothing = 0.1})
 * reduction: NULL or "mean", "sum", "none"; ignore_index: used only when
 * has_ignore_index is set (else PyTorch's -100); label_smoothing: cross_entropy only. */
typedef struct {
    const char *reduction;
    double label_smoothing;
    int has_ignore_index;
    int64_t ignore_index;
} ct_loss_opts;
ct_tensor *ct_cross_entropy_opt(const ct_tensor *logits, const ct_tensor *target,
                                const ct_loss_opts *o);
ct_tensor *ct_nll_loss_opt(const ct_tensor *log_probs, const ct_tensor *target,
                           const ct_loss_opts *o);

/* ---------------------------------------------------------- normalisation
 * running_mean/var may be NULL; in training mode they are updated in place
 * (PyTorch's formula: unbiased variance, momentum weighting). */
ct_tensor *ct_batch_norm(const ct_tensor *x, ct_tensor *running_mean, ct_tensor *running_var,
                         const ct_tensor *weight, const ct_tensor *bias, int training,
                         double momentum, double eps);
ct_tensor *ct_layer_norm(const ct_tensor *x, const int64_t *normalized_shape, int nnorm,
                         const ct_tensor *weight, const ct_tensor *bias, double eps);
ct_tensor *ct_dropout(const ct_tensor *x, double p, int training);

/* ------------------------------------------------------------- joining */
ct_tensor *ct_cat(ct_tensor *const *tensors, int n, int dim);
ct_tensor *ct_stack(ct_tensor *const *tensors, int n, int dim);

#ifdef __cplusplus
}
#endif

/* The one header a program needs: the rest of the public API (modules, optimizers, data,
 * checkpoints) comes with it. Each of these headers includes ctorch.h first and has its
 * own include guard, so including them too, in any order, is fine. */
#include "ctorch_nn.h"
#include "ctorch_optim.h"
#include "ctorch_data.h"
#include "ctorch_io.h"
#endif /* CTORCH_H */
