/* Copying ops: contiguous, clone, dtype and device conversion, detach. */
#include "core/autograd.h"
#include "core/backend.h"
#include "core/error.h"

int ct__copy_any(ct_tensor *dst, const ct_tensor *src);

static int identity_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    (void)n;
    gx[0] = ct_clone(gy);
    return gx[0] ? 0 : -1;
}

/* gradient converted back to the input's dtype / device */
typedef struct {
    ct_device dev; /* the input's device */
} convert_ctx;

static int convert_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    const convert_ctx *c = n->ctx;
    ct_tensor *g = ct_to_device(gy, c->dev);
    if (!g) return -1;
    gx[0] = ct_to_dtype(g, n->inputs[0].dtype);
    ct_free(g);
    return gx[0] ? 0 : -1;
}

static ct_tensor *copy_as(const ct_tensor *x, ct_dtype dt, ct_device dev, const char *name,
                          ct_backward_fn bw) {
    ct_tensor *y = ct_empty_on(x->shape, x->ndim, dt, dev);
    if (!y) return NULL;
    if (ct__copy_any(y, x) != 0) {
        ct_error_context("%s", name);
        ct_free(y);
        return NULL;
    }
    ct_node *n = NULL;
    if (ct_is_floating(dt)) y = ct_node_record(name, bw, &x, 1, y, &n);
    if (n) CT_NODE_CTX(n, convert_ctx)->dev = x->storage->device;
    return y;
}

ct_tensor *ct_clone(const ct_tensor *x) {
    if (!x) return ct_error_null("clone: NULL tensor");
    if (ct__check_tensor(x, "clone")) return NULL; /* a released tensor */
    return copy_as(x, x->dtype, x->storage->device, "CloneBackward", identity_backward);
}

ct_tensor *ct_contiguous(const ct_tensor *x) {
    if (!x) return ct_error_null("contiguous: NULL tensor");
    if (ct__check_tensor(x, "contiguous")) return NULL; /* a released tensor */
    if (ct_is_contiguous(x)) return ct_retain((ct_tensor *)x);
    return copy_as(x, x->dtype, x->storage->device, "ContiguousBackward", identity_backward);
}

ct_tensor *ct_to_dtype(const ct_tensor *x, ct_dtype dt) {
    if (!x) return ct_error_null("to_dtype: NULL tensor");
    if (ct__check_tensor(x, "to_dtype")) return NULL; /* a released tensor */
    if ((unsigned)dt >= CT_NUM_DTYPES) return ct_error_null("to_dtype: invalid dtype %d", (int)dt);
    if (dt == x->dtype) return ct_retain((ct_tensor *)x);
    return copy_as(x, dt, x->storage->device, "ToCopyBackward", convert_backward);
}

ct_tensor *ct_to_device(const ct_tensor *x, ct_device dev) {
    if (!x) return ct_error_null("to_device: NULL tensor");
    if (ct__check_tensor(x, "to_device")) return NULL; /* a released tensor */
    if (ct_device_equal(dev, x->storage->device)) return ct_retain((ct_tensor *)x);
    if (!ct_backend_get(dev.type)) return NULL;
    return copy_as(x, x->dtype, dev, "ToCopyBackward", convert_backward);
}

ct_tensor *ct_detach(const ct_tensor *x) {
    if (!x) return ct_error_null("detach: NULL tensor");
    if (ct__check_tensor(x, "detach")) return NULL; /* a released tensor */
    return ct_alias(x);
}
