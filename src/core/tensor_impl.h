/* Internal layout of tensors and storages. Not part of the public API. */
#ifndef CT_TENSOR_IMPL_H
#define CT_TENSOR_IMPL_H

#include "ctorch.h"

/* The CUDA plugin's .cu files (C++) read tensors too (shape, strides, data) but never
 * touch the counters: for them the atomic fields are plain integers of the same size. */
#ifdef __cplusplus
typedef int ct_atomic_int;
typedef unsigned long long ct_atomic_u64;
extern "C" {
#else
#include <stdatomic.h>
typedef atomic_int ct_atomic_int;
typedef atomic_uint_least64_t ct_atomic_u64;
_Static_assert(sizeof(atomic_int) == sizeof(int) && _Alignof(atomic_int) == _Alignof(int) &&
                   sizeof(atomic_uint_least64_t) == 8 && _Alignof(atomic_uint_least64_t) == 8,
               "the C++ view of ct_tensor / ct_storage must have the same layout");
#endif

typedef struct ct_storage {
    ct_atomic_int refcount;
    void *data;
    size_t nbytes;
    ct_device device;
    /* Version counter shared by every view of this storage: in-place ops bump it,
     * and autograd refuses to use a saved tensor whose version moved. */
    ct_atomic_u64 version;
    void (*deleter)(void *data, void *ctx); /* from_blob; NULL: backend-owned */
    void *deleter_ctx;
} ct_storage;

struct ct_node;

struct ct_tensor {
    ct_atomic_int refcount;
    unsigned magic; /* CT_TENSOR_LIVE; CT_TENSOR_RELEASED once released (see tensor.c) */
    ct_storage *storage;
    ct_dtype dtype;
    int ndim;
    int64_t shape[CT_MAX_DIMS];
    int64_t stride[CT_MAX_DIMS];
    int64_t offset;
    int requires_grad;
    int retains_grad;
    ct_tensor *grad;
    struct ct_node *grad_fn; /* NULL for leaves */
    /* A leaf's post-accumulate-grad hook (src/core/autograd.h), or NULL. */
    int (*post_acc_hook)(ct_tensor *leaf, int received, void *user);
    void *post_acc_user;
    /* The scope (src/core/scope.c) that holds scope_refs of the references, at scope_slot
     * in its list; NULL when no scope holds any. */
    struct ct_scope *scope;
    int scope_refs, scope_slot;
};

/* ------------------------------------------------------------- scopes (scope.c)
 * Library code that keeps a tensor beyond the call (a module's parameter, optimizer state,
 * a saved tensor, a gradient) must not leave it to the caller's scope:
 *   - a reference to a tensor the caller may own: ct__hold / ct__unhold (they never touch
 *     scopes, where ct_retain / ct_free count the references a scope holds);
 *   - a tensor the library created and stores: ct__own(t) right after creating it (or
 *     create it between ct__scope_suspend and ct__scope_resume); it is then released
 *     with ct_free like any unscoped tensor. */
#ifndef __cplusplus
static inline ct_tensor *ct__hold(ct_tensor *t) {
    if (t) atomic_fetch_add(&t->refcount, 1);
    return t;
}
#endif
void ct__unhold(ct_tensor *t);
ct_tensor *ct__own(ct_tensor *t);
/* Registers a new reference to t (created on another thread, or while suspended) in the
 * innermost scope of this thread, as if it had been created here: for references handed
 * to the caller. Returns t. */
ct_tensor *ct__scope_adopt(ct_tensor *t);
int ct__scope_suspend(void); /* returns the previous state for ct__scope_resume */
void ct__scope_resume(int prev);
/* Called by ct_tensor_make and ct_retain (a new reference on this thread). */
void ct__scope_track(ct_tensor *t);
/* Called by ct_free before dropping a reference: 1 when it was one of the scope's. */
int ct__scope_untrack(ct_tensor *t);
/* Called when a tensor is destroyed while a scope still lists it. */
void ct__scope_forget(ct_tensor *t);

/* Handle checks. A released tensor's header is kept for a while (tensor.c's quarantine)
 * with magic CT_TENSOR_RELEASED and no storage, so a double free or a use after free is
 * reported instead of reading freed memory. */
#define CT_TENSOR_LIVE 0x7e450a11u
#define CT_TENSOR_RELEASED 0x7e45dea0u
/* 0 for a live tensor; else -1 with "<op>: NULL tensor argument" or "<op>: tensor already
 * released (...)" as the error. */
int ct__check_tensor(const ct_tensor *t, const char *op);

/* Number of tensor headers alive in the process (for leak tests). */
long long ct__live_tensors(void);

/* Storage management (backend allocators). */
ct_storage *ct_storage_new(size_t nbytes, ct_device dev);
void ct_storage_release(ct_storage *s);

/* A tensor struct over an existing storage (retained). No autograd info. */
ct_tensor *ct_tensor_make(ct_storage *s, ct_dtype dt, const int64_t *shape, const int64_t *stride,
                          int ndim, int64_t offset);
/* Uninitialised contiguous tensor on a device. */
ct_tensor *ct_empty_on(const int64_t *shape, int ndim, ct_dtype dt, ct_device dev);
/* A data-only alias (same storage/shape/strides, no grad info). */
ct_tensor *ct_alias(const ct_tensor *t);
/* The data of t, contiguous, with no grad info (t's storage when already contiguous):
 * what op definitions hand to kernels. */
ct_tensor *ct_data_contiguous(const ct_tensor *t);
/* A 4-D [N, C, H, W] view of a contiguous 3-D [C, H, W] (N = 1) or 4-D tensor. */
ct_tensor *ct_view4d(const ct_tensor *t);
/* Whether two devices are the same one, and whether a and b live on the same device. */
static inline int ct_device_equal(ct_device a, ct_device b) {
    return a.type == b.type && a.index == b.index;
}
static inline int ct_same_device(const ct_tensor *a, const ct_tensor *b) {
    return ct_device_equal(a->storage->device, b->storage->device);
}

void ct_contiguous_strides(const int64_t *shape, int ndim, int64_t *stride);
int64_t ct_shape_numel(const int64_t *shape, int ndim);
int ct_normalize_dim(int dim, int ndim, const char *op, int64_t *out_unused);
/* Wraps a negative dim; returns -1 and sets an error naming `op` if out of range. */
int ct_wrap_dim(int dim, int ndim, const char *op);
int ct_is_floating(ct_dtype dt);
int ct_is_low_precision(ct_dtype dt); /* bfloat16 or float16 */
int ct_same_shape(const ct_tensor *a, const ct_tensor *b);
/* "[2, 3]" into buf. */
const char *ct_fmt_shape(const int64_t *shape, int ndim, char *buf, size_t n);

#ifndef __cplusplus
static inline void ct_bump_version(ct_tensor *t) { atomic_fetch_add(&t->storage->version, 1); }
#endif

/* Element access helpers for CPU code. */
static inline char *ct_ptr(const ct_tensor *t) {
    return (char *)t->storage->data + (size_t)t->offset * ct_dtype_size(t->dtype);
}

#ifdef __cplusplus
}
#endif

#endif
