/* Internal autograd API used by op definitions (src/ops).
 *
 * Pattern for an op with a backward formula:
 *
 *   typedef struct { double alpha; int a, b; } mul_ctx;  // what the formula needs, named
 *
 *   ct_tensor *y = ...forward through CT_KERNEL(...)...;
 *   ct_node *n;
 *   y = ct_node_record("MulBackward", mul_backward, (const ct_tensor *[]){a, b}, 2, y, &n);
 *   if (n) {                                          // y->grad_fn = n (owned by y)
 *       mul_ctx *c = CT_NODE_CTX(n, mul_ctx);         // zeroed, stored in the node
 *       c->alpha = alpha;
 *       c->a = ct_node_save(n, a);                    // saved tensors are named by
 *       c->b = ct_node_save(n, b);                    // their slot in the context
 *   }
 *   return y;                                         // NULL: out of memory, y freed
 *
 *   static int mul_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
 *       const mul_ctx *c = n->ctx;
 *       const ct_tensor *b = ct_node_saved(n, c->b);
 *       if (ct_node_needs_grad(n, 0)) gx[0] = ...;     // must have input 0's shape
 *       ...
 *       return 0;                                      // or -1 with ct_error()
 *   }
 *
 * Backward functions run with grad mode off and may call any public op. The engine
 * checks every returned gradient against the input's recorded shape. */
#ifndef CT_AUTOGRAD_H
#define CT_AUTOGRAD_H

#include "tensor_impl.h"
#include <stdatomic.h>

typedef struct ct_node ct_node;
typedef int (*ct_backward_fn)(ct_node *n, const ct_tensor *gy, ct_tensor **gx);

typedef struct {
    ct_node *fn;      /* producer of this input (retained), or NULL */
    ct_tensor *leaf;  /* leaf tensor requiring grad (retained), or NULL */
    int64_t shape[CT_MAX_DIMS];
    int ndim;
    ct_dtype dtype;
} ct_edge;

typedef struct {
    ct_tensor *t;     /* data-only alias */
    uint64_t version; /* storage version when saved */
} ct_saved;

#define CT_NODE_MAX_SAVED 8
#define CT_NODE_CTX_BYTES 128

struct ct_node {
    atomic_int refcount;
    const char *name;
    ct_backward_fn backward;
    int n_inputs;
    ct_edge *inputs;
    int n_saved;
    ct_saved saved[CT_NODE_MAX_SAVED];
    /* The op's context for its backward formula (a struct of the op's own type): inside
     * ctx_inline when it fits, else allocated (CT_NODE_CTX / ct_node_ctx_new). */
    void *ctx;
    int ctx_heap; /* ctx was allocated and is freed with the node */
    union {
        long double align;
        void *p;
        unsigned char bytes[CT_NODE_CTX_BYTES];
    } ctx_inline;
    uint64_t seq;              /* creation order */
    int released;              /* graph freed after backward */
    ct_tensor *retain_target;  /* weak: tensor that asked retain_grad */
    /* Output metadata, to check incoming gradients. */
    int64_t out_shape[CT_MAX_DIMS];
    int out_ndim;
};

/* True when grad mode is on and some input requires grad. NULL inputs are ignored. */
int ct_needs_grad(const ct_tensor *const *inputs, int n);
static inline int ct_needs_grad1(const ct_tensor *a) { return ct_needs_grad(&a, 1); }
static inline int ct_needs_grad2(const ct_tensor *a, const ct_tensor *b) {
    const ct_tensor *v[2] = {a, b};
    return ct_needs_grad(v, 2);
}

ct_node *ct_node_new(const char *name, ct_backward_fn fn, int n_inputs);
/* Records an op on its output y, when grad mode is on and some input requires grad: a new
 * node `name` with backward fn, inputs[0..n_inputs-1] recorded as its inputs (NULL
 * entries allowed) and attached as y's grad_fn. *node is then that node, borrowed (y
 * owns it), for the op to save tensors and parameters on; it is NULL when nothing was
 * recorded. Returns y; when out of memory, frees y (takes over the caller's reference)
 * and returns NULL with an error. A NULL y (a failed forward) is passed through. */
ct_tensor *ct_node_record(const char *name, ct_backward_fn fn, const ct_tensor *const *inputs,
                          int n_inputs, ct_tensor *y, ct_node **node);
/* The node's context: `size` zeroed bytes for the op's own struct, stored inside the node
 * when size <= CT_NODE_CTX_BYTES, else allocated; freed with the node. NULL + error when
 * out of memory (only possible for large contexts). Call once per node. */
void *ct_node_ctx_new(ct_node *n, size_t size);
/* The same for a context type known to fit (checked at compile time): never NULL. */
#define CT_NODE_CTX(n, type)                                                               \
    ((void)sizeof(struct {                                                                 \
        _Static_assert(sizeof(type) <= CT_NODE_CTX_BYTES, "context too large for a node"); \
        int ok;                                                                            \
    }),                                                                                    \
     (type *)ct_node_ctx_new((n), sizeof(type)))

/* Records input i (may be NULL: no gradient flows there). */
void ct_node_set_input(ct_node *n, int i, const ct_tensor *t);
/* Saves a tensor for backward; returns its index. */
int ct_node_save(ct_node *n, const ct_tensor *t);
/* The saved tensor (borrowed), or NULL with an error if it was modified in place
 * since it was saved or the graph has already been freed. */
const ct_tensor *ct_node_saved(ct_node *n, int i);
int ct_node_needs_grad(const ct_node *n, int i);
/* Makes n the grad_fn of y (marks y requires_grad). Takes over the caller's reference. */
void ct_node_attach(ct_node *n, ct_tensor *y);
void ct_node_release(ct_node *n);
ct_node *ct_node_retain(ct_node *n);

/* Hooks for the distributed layer (PyTorch's register_post_accumulate_grad_hook and the
 * engine's queue_callback):
 * - a leaf's hook runs during ct_backward once every gradient this backward sends to the
 *   leaf has been accumulated into its .grad (received = 1), or once every edge to it was
 *   processed without a gradient (received = 0). A leaf the graph reaches through no
 *   processed node gets no call. Returning -1 (with ct_error) fails the backward.
 * - a callback queued during a backward (from a hook) runs at the end of that ct_backward,
 *   in queue order, with backward_rc = 0, or != 0 when the backward failed (to clean up).
 *   Its -1 fails the backward. Hooks and callbacks run with grad mode off. */
typedef int (*ct_post_acc_hook_fn)(ct_tensor *leaf, int received, void *user);
int ct__set_post_accumulate_grad_hook(ct_tensor *leaf, ct_post_acc_hook_fn fn, void *user);
typedef int (*ct_backward_callback_fn)(void *user, int backward_rc);
int ct__queue_backward_callback(ct_backward_callback_fn fn, void *user);

/* Sums g over broadcast dimensions so it has the given shape (for broadcasting ops). */
ct_tensor *ct_sum_to_shape(const ct_tensor *g, const int64_t *shape, int ndim);

#endif
