/* Tensor lifetime, metadata, creation and copies. */
#include "autograd.h"
#include "backend.h"
#include "error.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ct_contiguous_strides(const int64_t *shape, int ndim, int64_t *stride) {
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        stride[i] = s;
        s *= shape[i] > 0 ? shape[i] : 1;
    }
}

int64_t ct_shape_numel(const int64_t *shape, int ndim) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

const char *ct_fmt_shape(const int64_t *shape, int ndim, char *buf, size_t n) {
    size_t p = 0;
    p += (size_t)snprintf(buf + p, n - p, "[");
    for (int i = 0; i < ndim && p < n; i++)
        p += (size_t)snprintf(buf + p, n - p, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (p < n) snprintf(buf + p, n - p, "]");
    return buf;
}

const char *ct_shape_str(const ct_tensor *t, char *buf, size_t n) {
    return t ? ct_fmt_shape(t->shape, t->ndim, buf, n) : (snprintf(buf, n, "(null)"), buf);
}

int ct_wrap_dim(int dim, int ndim, const char *op) {
    int n = ndim > 0 ? ndim : 1;
    if (dim < -n || dim >= n)
        return ct_error("%s: dimension %d out of range for a %d-D tensor (expected %d..%d)", op,
                        dim, ndim, -n, n - 1);
    return dim < 0 ? dim + n : dim;
}

int ct_same_shape(const ct_tensor *a, const ct_tensor *b) {
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

static int check_shape(const int64_t *shape, int ndim, const char *op) {
    if (ndim < 0 || ndim > CT_MAX_DIMS)
        return ct_error("%s: %d dimensions requested; ctorch supports 0 to %d", op, ndim,
                        CT_MAX_DIMS);
    if (ndim > 0 && !shape) return ct_error("%s: shape pointer is NULL for %d dims", op, ndim);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0)
            return ct_error("%s: negative size %lld at dimension %d", op, (long long)shape[i], i);
    return 0;
}

static _Alignas(64) atomic_llong g_live; /* tensor headers alive (ct__live_tensors, for leak tests) */

long long ct__live_tensors(void) { return atomic_load(&g_live); }

/* Released headers are not handed back to malloc at once: they wait in a ring of the
 * last QUARANTINE releases, marked CT_TENSOR_RELEASED and pointing at a storage-less
 * sentinel, so that a double free or a use after free within that window (a handle used
 * after about 16k later releases) is reported by name instead of reading freed memory. */
#define QUARANTINE 16384
static ct_storage g_released_storage = {.device = {CT_NUM_DEVICE_TYPES, -1}};
static struct {
    pthread_mutex_t mu;
    ct_tensor *ring[QUARANTINE];
    size_t next;
} g_quarantine = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void quarantine(ct_tensor *t) {
    t->magic = CT_TENSOR_RELEASED;
    t->storage = &g_released_storage;
    t->grad = NULL;
    t->grad_fn = NULL;
    t->requires_grad = 0;
    t->ndim = 0;
    pthread_mutex_lock(&g_quarantine.mu);
    ct_tensor *old = g_quarantine.ring[g_quarantine.next];
    g_quarantine.ring[g_quarantine.next] = t;
    g_quarantine.next = (g_quarantine.next + 1) % QUARANTINE;
    pthread_mutex_unlock(&g_quarantine.mu);
    free(old);
}

/* At exit: the quarantined headers go back to malloc (leak checkers then see none). */
__attribute__((destructor)) static void quarantine_drain(void) {
    pthread_mutex_lock(&g_quarantine.mu);
    for (size_t i = 0; i < QUARANTINE; i++) {
        free(g_quarantine.ring[i]);
        g_quarantine.ring[i] = NULL;
    }
    pthread_mutex_unlock(&g_quarantine.mu);
}

int ct__check_tensor(const ct_tensor *t, const char *op) {
    if (!t) return ct_error("%s: NULL tensor argument", op);
    if (t->magic == CT_TENSOR_LIVE) return 0;
    if (t->magic == CT_TENSOR_RELEASED)
        return ct_error("%s: tensor already released (used after ct_free, freed twice, or a "
                        "borrowed reference such as ct_grad() or a module's parameter was "
                        "freed); keep a reference with ct_retain or ct_keep while you use it",
                        op);
    return ct_error("%s: not a ctorch tensor (a stale or corrupted pointer)", op);
}

ct_tensor *ct_tensor_make(ct_storage *s, ct_dtype dt, const int64_t *shape, const int64_t *stride,
                          int ndim, int64_t offset) {
    ct_tensor *t = calloc(1, sizeof *t);
    if (!t) return ct_error_null("out of memory allocating a tensor header");
    atomic_fetch_add(&g_live, 1);
    atomic_init(&t->refcount, 1);
    t->magic = CT_TENSOR_LIVE;
    atomic_fetch_add(&s->refcount, 1);
    t->storage = s;
    t->dtype = dt;
    t->ndim = ndim;
    if (ndim) {
        memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
        if (stride) memcpy(t->stride, stride, sizeof(int64_t) * (size_t)ndim);
        else ct_contiguous_strides(shape, ndim, t->stride);
    }
    t->offset = offset;
    ct__scope_track(t);
    return t;
}

ct_tensor *ct_empty_on(const int64_t *shape, int ndim, ct_dtype dt, ct_device dev) {
    if (check_shape(shape, ndim, "empty") != 0) return NULL;
    if ((unsigned)dt >= CT_NUM_DTYPES) return ct_error_null("empty: invalid dtype %d", (int)dt);
    int64_t n = ct_shape_numel(shape, ndim);
    ct_storage *s = ct_storage_new((size_t)n * ct_dtype_size(dt), dev);
    if (!s) return NULL;
    ct_tensor *t = ct_tensor_make(s, dt, shape, NULL, ndim, 0);
    ct_storage_release(s);
    return t;
}

ct_tensor *ct_alias(const ct_tensor *t) {
    return ct_tensor_make(t->storage, t->dtype, t->shape, t->stride, t->ndim, t->offset);
}

ct_tensor *ct_data_contiguous(const ct_tensor *t) {
    ct_tensor *a = ct_alias(t);
    if (!a) return NULL;
    ct_tensor *c = ct_contiguous(a);
    ct_free(a);
    return c;
}

ct_tensor *ct_view4d(const ct_tensor *t) {
    if (t->ndim == 4) return ct_alias(t);
    int64_t sh[4] = {1, t->shape[0], t->shape[1], t->shape[2]};
    return ct_tensor_make(t->storage, t->dtype, sh, NULL, 4, t->offset);
}

ct_tensor *ct_retain(ct_tensor *t) {
    if (!t) return NULL;
    if (ct__check_tensor(t, "ct_retain") != 0) return NULL;
    atomic_fetch_add(&t->refcount, 1);
    ct__scope_track(t);
    return t;
}

void ct__unhold(ct_tensor *t) {
    if (!t) return;
    if (t->magic != CT_TENSOR_LIVE) { /* never below zero: reported, nothing touched */
        ct__check_tensor(t, "ct_free");
        return;
    }
    if (atomic_fetch_sub(&t->refcount, 1) != 1) return;
    if (t->scope) ct__scope_forget(t);
    if (t->grad_fn) {
        if (t->grad_fn->retain_target == t) t->grad_fn->retain_target = NULL;
        ct_node_release(t->grad_fn);
    }
    ct__unhold(t->grad);
    ct_storage_release(t->storage);
    quarantine(t);
    atomic_fetch_sub(&g_live, 1);
}

void ct_free(ct_tensor *t) {
    if (!t) return;
    if (t->magic == CT_TENSOR_LIVE && t->scope) ct__scope_untrack(t);
    ct__unhold(t);
}

/* ----------------------------------------------------------------- info */
int ct_ndim(const ct_tensor *t) { return t ? t->ndim : 0; }
int64_t ct_size(const ct_tensor *t, int dim) {
    if (!t) return -1;
    if (dim < 0) dim += t->ndim;
    return (dim >= 0 && dim < t->ndim) ? t->shape[dim] : -1;
}
const int64_t *ct_shape(const ct_tensor *t) { return t->shape; }
const int64_t *ct_strides(const ct_tensor *t) { return t->stride; }
int64_t ct_offset(const ct_tensor *t) { return t->offset; }
int64_t ct_numel(const ct_tensor *t) { return t ? ct_shape_numel(t->shape, t->ndim) : 0; }
ct_dtype ct_dtype_of(const ct_tensor *t) { return t->dtype; }
ct_device ct_device_of(const ct_tensor *t) { return t->storage->device; }

int ct_is_contiguous(const ct_tensor *t) {
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->stride[i] != s) return 0;
        s *= t->shape[i];
    }
    return 1;
}

void *ct_data(const ct_tensor *t) {
    if (!t) return NULL;
    if (ct__check_tensor(t, "data")) return NULL;
    const ct_backend *b = ct_backend_of(t);
    if (!b || !b->host_memory) {
        char d[32];
        ct_device_str(t->storage->device, d, sizeof d);
        return ct_error_null("data: tensor is on %s; copy it to the CPU first (ct_to_device)", d);
    }
    return ct_ptr(t);
}

double ct_item(const ct_tensor *t) {
    if (t && ct__check_tensor(t, "item")) return NAN;
    if (!t || ct_numel(t) != 1) {
        char b[64];
        ct_error("item: tensor of shape %s has %lld elements; item() needs exactly one",
                 t ? ct_shape_str(t, b, sizeof b) : "(null)", (long long)ct_numel(t));
        return NAN;
    }
    double v = NAN;
    ct_tensor *d = ct_to_dtype(t, CT_FLOAT64);
    if (d) {
        ct_copy_to_buffer(d, &v, sizeof v);
        ct_free(d);
    }
    return v;
}

/* ------------------------------------------------------------- creation */
ct_tensor *ct_empty(const int64_t *shape, int ndim, ct_dtype dt) {
    return ct_empty_on(shape, ndim, dt, ct_cpu());
}

ct_tensor *ct_full(const int64_t *shape, int ndim, double value, ct_dtype dt) {
    ct_tensor *t = ct_empty(shape, ndim, dt);
    if (t && ct_backend_of(t)->k.fill(t, value) != 0) {
        ct_free(t);
        return NULL;
    }
    return t;
}
ct_tensor *ct_zeros(const int64_t *shape, int ndim, ct_dtype dt) { return ct_full(shape, ndim, 0, dt); }
ct_tensor *ct_ones(const int64_t *shape, int ndim, ct_dtype dt) { return ct_full(shape, ndim, 1, dt); }
ct_tensor *ct_scalar(double value, ct_dtype dt) { return ct_full(NULL, 0, value, dt); }

static ct_tensor *full_like(const ct_tensor *t, double v, int fill) {
    ct_tensor *r = ct_empty_on(t->shape, t->ndim, t->dtype, t->storage->device);
    if (r && fill && ct_backend_of(r)->k.fill(r, v) != 0) {
        ct_free(r);
        return NULL;
    }
    return r;
}
ct_tensor *ct_empty_like(const ct_tensor *t) { return full_like(t, 0, 0); }
ct_tensor *ct_zeros_like(const ct_tensor *t) { return full_like(t, 0, 1); }
ct_tensor *ct_ones_like(const ct_tensor *t) { return full_like(t, 1, 1); }

ct_tensor *ct_arange(double start, double end, double step, ct_dtype dt) {
    if (step == 0 || !isfinite(start) || !isfinite(end) || !isfinite(step))
        return ct_error_null("arange: step must be non-zero and bounds finite (got start=%g, "
                             "end=%g, step=%g)", start, end, step);
    double cnt = ceil((end - start) / step);
    int64_t n = cnt > 0 ? (int64_t)cnt : 0;
    ct_tensor *t = ct_empty_on(&n, 1, CT_FLOAT64, ct_cpu());
    if (!t) return NULL;
    double *p = (double *)ct_ptr(t);
    for (int64_t i = 0; i < n; i++) p[i] = start + (double)i * step;
    if (dt == CT_FLOAT64) return t;
    ct_tensor *r = ct_to_dtype(t, dt);
    ct_free(t);
    return r;
}

ct_tensor *ct_from_data(const void *data, const int64_t *shape, int ndim, ct_dtype dt) {
    ct_tensor *t = ct_empty(shape, ndim, dt);
    if (!t) return NULL;
    size_t nb = (size_t)ct_numel(t) * ct_dtype_size(dt);
    if (nb && !data) {
        ct_free(t);
        return ct_error_null("from_data: data pointer is NULL");
    }
    if (nb) memcpy(ct_ptr(t), data, nb);
    if (dt == CT_BOOL) { /* any non-zero byte is true: stored as 1, as the kernels expect */
        uint8_t *b = (uint8_t *)ct_ptr(t);
        for (size_t i = 0; i < nb; i++) b[i] = b[i] != 0;
    }
    return t;
}

void ct__noop_deleter(void *d, void *c);

ct_tensor *ct_from_blob(void *data, const int64_t *shape, int ndim, ct_dtype dt,
                        void (*deleter)(void *, void *), void *ctx) {
    if (check_shape(shape, ndim, "from_blob") != 0) return NULL;
    if (!data) return ct_error_null("from_blob: data pointer is NULL");
    ct_storage *s = calloc(1, sizeof *s);
    if (!s) return ct_error_null("out of memory");
    atomic_init(&s->refcount, 1);
    atomic_init(&s->version, 0);
    s->data = data;
    s->nbytes = (size_t)ct_shape_numel(shape, ndim) * ct_dtype_size(dt);
    s->device = ct_cpu();
    s->deleter = deleter ? deleter : ct__noop_deleter; /* caller keeps ownership */
    s->deleter_ctx = ctx;
    ct_tensor *t = ct_tensor_make(s, dt, shape, NULL, ndim, 0);
    ct_storage_release(s);
    return t;
}
void ct__noop_deleter(void *d, void *c) {
    (void)d;
    (void)c;
}

/* Copies between devices: src is materialised contiguous on its device, then moved. */
static int copy_cross_device(ct_tensor *dst, const ct_tensor *src) {
    ct_tensor *sc = ct_contiguous(src);
    if (!sc) return -1;
    ct_tensor *staging = NULL;
    int rc = -1;
    ct_tensor *target = dst;
    if (!ct_is_contiguous(dst) || dst->dtype != src->dtype) {
        staging = ct_empty_on(src->shape, src->ndim, src->dtype, dst->storage->device);
        if (!staging) goto out;
        target = staging;
    }
    size_t nb = (size_t)ct_numel(sc) * ct_dtype_size(sc->dtype);
    const ct_backend *bs = ct_backend_of(sc), *bt = ct_backend_of(target);
    if (bs->host_memory) {
        rc = bt->memcpy(ct_ptr(target), ct_ptr(sc), nb, CT_MEMCPY_H2D, target->storage->device.index);
    } else if (bt->host_memory) {
        rc = bs->memcpy(ct_ptr(target), ct_ptr(sc), nb, CT_MEMCPY_D2H, sc->storage->device.index);
    } else {
        rc = ct_error("copy: direct copies between two GPUs are not supported; go through the CPU");
    }
    if (rc == 0 && staging) rc = ct_backend_of(dst)->k.copy(dst, staging);
out:
    ct_free(staging);
    ct_free(sc);
    return rc;
}

/* dst <- src elementwise (same shape), any device pair. */
int ct__copy_any(ct_tensor *dst, const ct_tensor *src) {
    if (ct_same_device(dst, src)) {
        int (*fn)(ct_tensor *, const ct_tensor *) = CT_KERNEL(dst, copy, "copy");
        return fn ? fn(dst, src) : -1;
    }
    return copy_cross_device(dst, src);
}

int ct_copy_to_buffer(const ct_tensor *t, void *buf, size_t nbytes) {
    if (!t || !buf) return ct_error("copy_to_buffer: NULL tensor or buffer");
    size_t need = (size_t)ct_numel(t) * ct_dtype_size(t->dtype);
    if (nbytes < need)
        return ct_error("copy_to_buffer: buffer has %zu bytes, tensor needs %zu", nbytes, need);
    ct_tensor *dst = ct_from_blob(buf, t->shape, t->ndim, t->dtype, NULL, NULL);
    if (!dst) return -1;
    int rc = ct__copy_any(dst, t);
    ct_free(dst);
    return rc;
}

int ct_copy_from_buffer(ct_tensor *t, const void *buf, size_t nbytes) {
    if (!t || !buf) return ct_error("copy_from_buffer: NULL tensor or buffer");
    size_t need = (size_t)ct_numel(t) * ct_dtype_size(t->dtype);
    if (nbytes < need)
        return ct_error("copy_from_buffer: buffer has %zu bytes, tensor needs %zu", nbytes, need);
    ct_tensor *src = ct_from_blob((void *)buf, t->shape, t->ndim, t->dtype, NULL, NULL);
    if (!src) return -1;
    int rc = ct__copy_any(t, src);
    ct_bump_version(t);
    ct_free(src);
    return rc;
}

