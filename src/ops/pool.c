/* max_pool2d, avg_pool2d, adaptive_avg_pool2d (torch.nn.functional semantics): input
 * [N, C, H, W] or unbatched [C, H, W]; PyTorch's output-size formulas (including
 * ceil_mode's "last window must start inside the input or left padding" rule) and
 * window rules.
 *
 * Where the backend has the max_pool2d_codes kernels (CPU, CUDA), max pooling keeps a
 * one-byte window code per output for the backward (not PyTorch's int64 flat index, which
 * nothing outside this file sees) and none at all when no gradient is needed;
 * ct_relu_max_pool2d (ops/fused.h) fuses a preceding ReLU into the same pass. */
#include "core/autograd.h"
#include "core/backend.h"
#include "core/error.h"
#include "ops/fused.h"

#include <string.h>

/* Rounds toward negative infinity (PyTorch's div_rtn). */
static int64_t div_rtn(int64_t a, int64_t b) {
    int64_t q = a / b, r = a % b;
    if (r != 0 && ((r < 0) != (b < 0))) q--;
    return q;
}

static int64_t pool_out_size(int64_t in, int64_t k, int64_t pad, int64_t stride, int64_t dil,
                             int ceil_mode) {
    int64_t out = div_rtn(in + 2 * pad - dil * (k - 1) - 1 + (ceil_mode ? stride - 1 : 0), stride) + 1;
    if (ceil_mode && (out - 1) * stride >= in + pad) out--;
    return out;
}

/* The input checks every pooling op makes: [N, C, H, W] or [C, H, W], float, non-empty. */
static int pool_input_check(const char *op, const ct_tensor *x) {
    char s1[96];
    if (!x) return ct_error("%s: input is NULL", op);
    if (ct__check_tensor(x, op)) return -1; /* a released tensor */
    if (x->ndim != 3 && x->ndim != 4)
        return ct_error("%s: input %s must be 4-D [N, C, H, W] or 3-D [C, H, W]", op,
                        ct_shape_str(x, s1, sizeof s1));
    if (!ct_is_floating(x->dtype))
        return ct_error("%s: input dtype %s not supported (a floating dtype); convert with "
                        "ct_to_dtype",
                        op, ct_dtype_name(x->dtype));
    int b4 = x->ndim == 4;
    for (int d = b4; d < x->ndim; d++)
        if (x->shape[d] == 0)
            return ct_error("%s: input %s has an empty channel or spatial dim; expected non-zero "
                            "C, H, W",
                            op, ct_shape_str(x, s1, sizeof s1));
    return 0;
}

/* Common validation of input and window parameters; fills p and the output shape. */
static int pool_setup(const char *op, const ct_tensor *x, const int kernel[2], const int stride[2],
                      const int padding[2], const int dilation[2], int ceil_mode,
                      ct_pool_params *p, int64_t *ysh) {
    if (pool_input_check(op, x) != 0) return -1;
    if (!kernel) return ct_error("%s: kernel size is NULL", op);
    memset(p, 0, sizeof *p);
    for (int i = 0; i < 2; i++) {
        p->kernel[i] = kernel[i];
        p->stride[i] = stride ? stride[i] : kernel[i]; /* NULL: stride = kernel */
        p->padding[i] = padding ? padding[i] : 0;
        p->dilation[i] = dilation ? dilation[i] : 1;
    }
    p->ceil_mode = ceil_mode != 0;
    if (p->kernel[0] < 1 || p->kernel[1] < 1)
        return ct_error("%s: kernel size must be > 0, got (%d, %d)", op, p->kernel[0],
                        p->kernel[1]);
    if (p->stride[0] < 1 || p->stride[1] < 1)
        return ct_error("%s: stride must be > 0, got (%d, %d)", op, p->stride[0], p->stride[1]);
    if (p->dilation[0] < 1 || p->dilation[1] < 1)
        return ct_error("%s: dilation must be > 0, got (%d, %d)", op, p->dilation[0],
                        p->dilation[1]);
    if (p->padding[0] < 0 || p->padding[1] < 0 || p->padding[0] > p->kernel[0] / 2 ||
        p->padding[1] > p->kernel[1] / 2)
        return ct_error("%s: padding (%d, %d) must be between 0 and half the kernel size "
                        "(%d, %d)",
                        op, p->padding[0], p->padding[1], p->kernel[0], p->kernel[1]);
    char s1[96];
    const int b4 = x->ndim == 4;
    int64_t H = x->shape[b4 + 1], W = x->shape[b4 + 2];
    int64_t Ho = pool_out_size(H, p->kernel[0], p->padding[0], p->stride[0], p->dilation[0],
                               p->ceil_mode);
    int64_t Wo = pool_out_size(W, p->kernel[1], p->padding[1], p->stride[1], p->dilation[1],
                               p->ceil_mode);
    if (Ho < 1 || Wo < 1)
        return ct_error("%s: input %s with kernel (%d, %d), stride (%d, %d), padding (%d, %d), "
                        "dilation (%d, %d) gives output size (%lld x %lld), which is too small",
                        op, ct_shape_str(x, s1, sizeof s1), p->kernel[0], p->kernel[1],
                        p->stride[0], p->stride[1], p->padding[0], p->padding[1], p->dilation[0],
                        p->dilation[1], (long long)Ho, (long long)Wo);
    for (int d = 0; d < x->ndim - 2; d++) ysh[d] = x->shape[d];
    ysh[x->ndim - 2] = Ho;
    ysh[x->ndim - 1] = Wo;
    return 0;
}

/* The backward context of every pooling node: its parameters and the saved indices or
 * window codes (slot, -1 when none). */
typedef struct {
    ct_pool_params p;
    int saved;
} pool_ctx;

/* Records the pooling node on y when the forward succeeded (*rc == 0), saving `saved` and
 * the parameters p when given; *rc = -1 when y was lost to an allocation failure. */
static ct_tensor *record_pool(int *rc, const char *name, ct_backward_fn fn, const ct_tensor *x,
                              ct_tensor *y, const ct_tensor *saved, const ct_pool_params *p) {
    if (*rc != 0) return y;
    ct_node *n;
    y = ct_node_record(name, fn, &x, 1, y, &n);
    if (!y) *rc = -1;
    if (n) {
        pool_ctx *c = CT_NODE_CTX(n, pool_ctx);
        c->saved = saved ? ct_node_save(n, saved) : -1;
        if (p) c->p = *p;
    }
    return y;
}

/* Gradient tensor for input 0 of n and its 4-D view. */
static int grad_input(ct_node *n, const ct_tensor *gy, ct_tensor **g, ct_tensor **g4) {
    const ct_edge *e = &n->inputs[0];
    *g = ct_empty_on(e->shape, e->ndim, gy->dtype, gy->storage->device);
    *g4 = *g ? ct_view4d(*g) : NULL;
    if (!*g4) {
        ct_free(*g);
        *g = NULL;
        return -1;
    }
    return 0;
}

/* ----------------------------------------------------------------- max_pool2d */

static int max_pool2d_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    if (!ct_node_needs_grad(n, 0)) return 0;
    const pool_ctx *c = n->ctx;
    const ct_tensor *ind = ct_node_saved(n, c->saved);
    if (!ind) return -1;
    int (*k)(ct_tensor *, const ct_tensor *, const ct_tensor *, const ct_pool_params *) =
        CT_KERNEL(gy, max_pool2d_backward, "max_pool2d backward");
    if (!k) return -1;
    const ct_pool_params p = ((const pool_ctx *)n->ctx)->p;
    ct_tensor *gyc = ct_data_contiguous(gy), *gy4 = gyc ? ct_view4d(gyc) : NULL, *ind4 = ct_view4d(ind);
    ct_tensor *g = NULL, *g4 = NULL;
    int rc = -1;
    if (gy4 && ind4 && grad_input(n, gy, &g, &g4) == 0) rc = k(g4, gy4, ind4, &p);
    ct_free(gyc);
    ct_free(gy4);
    ct_free(ind4);
    ct_free(g4);
    if (rc != 0) {
        ct_free(g);
        return -1;
    }
    gx[0] = g;
    return 0;
}

/* Window codes instead of int64 indices, optional fused ReLU. */
static int max_pool2d_codes_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    if (!ct_node_needs_grad(n, 0)) return 0;
    const pool_ctx *c = n->ctx;
    const ct_tensor *codes = ct_node_saved(n, c->saved);
    if (!codes) return -1;
    const ct_pool_params p = c->p;
    ct_tensor *gyc = ct_data_contiguous(gy), *gy4 = gyc ? ct_view4d(gyc) : NULL, *c4 = ct_view4d(codes);
    ct_tensor *g = NULL, *g4 = NULL;
    int rc = -1;
    int (*k)(ct_tensor *, const ct_tensor *, const ct_tensor *, const ct_pool_params *) =
        CT_KERNEL(gy, max_pool2d_codes_backward, "max_pool2d backward");
    if (k && gy4 && c4 && grad_input(n, gy, &g, &g4) == 0) rc = k(g4, gy4, c4, &p);
    ct_free(gyc);
    ct_free(gy4);
    ct_free(c4);
    ct_free(g4);
    if (rc != 0) {
        ct_free(g);
        return -1;
    }
    gx[0] = g;
    return 0;
}

/* Whether the window is small enough for one-byte window codes (else int64 indices). */
static int use_codes(const ct_pool_params *p) { return p->kernel[0] * p->kernel[1] < CT_POOL_NOGRAD; }

static ct_tensor *max_pool2d_codes(const ct_tensor *x, const ct_pool_params *p,
                                   const int64_t *ysh, int relu) {
    int need = ct_needs_grad1(x);
    ct_tensor *y = ct_empty_on(ysh, x->ndim, x->dtype, x->storage->device);
    ct_tensor *codes = need ? ct_empty_on(ysh, x->ndim, CT_UINT8, x->storage->device) : NULL;
    ct_tensor *xc = ct_data_contiguous(x);
    ct_tensor *x4 = xc ? ct_view4d(xc) : NULL, *y4 = y ? ct_view4d(y) : NULL;
    ct_tensor *c4 = codes ? ct_view4d(codes) : NULL;
    int (*k)(ct_tensor *, ct_tensor *, const ct_tensor *, const ct_pool_params *, int) =
        CT_KERNEL(x, max_pool2d_codes_forward, "max_pool2d");
    int rc = (k && x4 && y4 && (!need || c4)) ? k(y4, c4, x4, p, relu) : -1;
    y = record_pool(&rc, "MaxPool2DWithIndicesBackward", max_pool2d_codes_backward, x, y, codes,
                    p);
    ct_free(x4);
    ct_free(y4);
    ct_free(c4);
    ct_free(xc);
    ct_free(codes);
    if (rc != 0) {
        ct_free(y);
        return NULL;
    }
    return y;
}

ct_tensor *ct_relu_max_pool2d(const ct_tensor *x, const int kernel[2], const int stride[2],
                              const int padding[2], const int dilation[2], int ceil_mode) {
    ct_pool_params p;
    int64_t ysh[4];
    if (x &&
        pool_setup("max_pool2d", x, kernel, stride, padding, dilation, ceil_mode, &p, ysh) == 0 &&
        use_codes(&p))
        return max_pool2d_codes(x, &p, ysh, 1);
    ct_clear_error();
    ct_tensor *r = ct_relu(x);
    ct_tensor *y = r ? ct_max_pool2d(r, kernel, stride, padding, dilation, ceil_mode) : NULL;
    ct_free(r);
    return y;
}

ct_tensor *ct_max_pool2d(const ct_tensor *x, const int kernel[2], const int stride[2],
                         const int padding[2], const int dilation[2], int ceil_mode) {
    ct_pool_params p;
    int64_t ysh[4];
    if (pool_setup("max_pool2d", x, kernel, stride, padding, dilation, ceil_mode, &p, ysh) != 0)
        return NULL;
    if (use_codes(&p)) return max_pool2d_codes(x, &p, ysh, 0);
    int (*k)(ct_tensor *, ct_tensor *, const ct_tensor *, const ct_pool_params *) =
        CT_KERNEL(x, max_pool2d_forward, "max_pool2d");
    if (!k) return NULL;
    ct_tensor *y = ct_empty_on(ysh, x->ndim, x->dtype, x->storage->device);
    ct_tensor *ind = ct_empty_on(ysh, x->ndim, CT_INT64, x->storage->device);
    ct_tensor *xc = ct_data_contiguous(x);
    ct_tensor *x4 = xc ? ct_view4d(xc) : NULL, *y4 = y ? ct_view4d(y) : NULL, *i4 = ind ? ct_view4d(ind) : NULL;
    int rc = (x4 && y4 && i4) ? k(y4, i4, x4, &p) : -1;
    y = record_pool(&rc, "MaxPool2DWithIndicesBackward", max_pool2d_backward, x, y, ind, &p);
    ct_free(x4);
    ct_free(y4);
    ct_free(i4);
    ct_free(xc);
    ct_free(ind);
    if (rc != 0) {
        ct_free(y);
        return NULL;
    }
    return y;
}

/* ----------------------------------------------------------------- avg_pool2d */

static int avg_pool2d_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    if (!ct_node_needs_grad(n, 0)) return 0;
    int (*k)(ct_tensor *, const ct_tensor *, const ct_pool_params *) =
        CT_KERNEL(gy, avg_pool2d_backward, "avg_pool2d backward");
    if (!k) return -1;
    const ct_pool_params p = ((const pool_ctx *)n->ctx)->p;
    ct_tensor *gyc = ct_data_contiguous(gy), *gy4 = gyc ? ct_view4d(gyc) : NULL;
    ct_tensor *g = NULL, *g4 = NULL;
    int rc = -1;
    if (gy4 && grad_input(n, gy, &g, &g4) == 0) rc = k(g4, gy4, &p);
    ct_free(gyc);
    ct_free(gy4);
    ct_free(g4);
    if (rc != 0) {
        ct_free(g);
        return -1;
    }
    gx[0] = g;
    return 0;
}

ct_tensor *ct_avg_pool2d(const ct_tensor *x, const int kernel[2], const int stride[2],
                         const int padding[2], int ceil_mode, int count_include_pad) {
    ct_pool_params p;
    int64_t ysh[4];
    if (pool_setup("avg_pool2d", x, kernel, stride, padding, NULL, ceil_mode, &p, ysh) != 0)
        return NULL;
    p.count_include_pad = count_include_pad != 0;
    int (*k)(ct_tensor *, const ct_tensor *, const ct_pool_params *) =
        CT_KERNEL(x, avg_pool2d_forward, "avg_pool2d");
    if (!k) return NULL;
    ct_tensor *y = ct_empty_on(ysh, x->ndim, x->dtype, x->storage->device);
    ct_tensor *xc = ct_data_contiguous(x);
    ct_tensor *x4 = xc ? ct_view4d(xc) : NULL, *y4 = y ? ct_view4d(y) : NULL;
    int rc = (x4 && y4) ? k(y4, x4, &p) : -1;
    y = record_pool(&rc, "AvgPool2DBackward", avg_pool2d_backward, x, y, NULL, &p);
    ct_free(x4);
    ct_free(y4);
    ct_free(xc);
    if (rc != 0) {
        ct_free(y);
        return NULL;
    }
    return y;
}

/* -------------------------------------------------------- adaptive_avg_pool2d */

static int adaptive_avg_pool2d_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    if (!ct_node_needs_grad(n, 0)) return 0;
    int (*k)(ct_tensor *, const ct_tensor *) =
        CT_KERNEL(gy, adaptive_avg_pool2d_backward, "adaptive_avg_pool2d backward");
    if (!k) return -1;
    ct_tensor *gyc = ct_data_contiguous(gy), *gy4 = gyc ? ct_view4d(gyc) : NULL;
    ct_tensor *g = NULL, *g4 = NULL;
    int rc = -1;
    if (gy4 && grad_input(n, gy, &g, &g4) == 0) rc = k(g4, gy4);
    ct_free(gyc);
    ct_free(gy4);
    ct_free(g4);
    if (rc != 0) {
        ct_free(g);
        return -1;
    }
    gx[0] = g;
    return 0;
}

ct_tensor *ct_adaptive_avg_pool2d(const ct_tensor *x, const int output_size[2]) {
    const char *op = "adaptive_avg_pool2d";
    if (pool_input_check(op, x) != 0) return NULL;
    if (!output_size) return ct_error_null("%s: output_size is NULL", op);
    if (output_size[0] < 0 || output_size[1] < 0)
        return ct_error_null("%s: output_size must be >= 0, got (%d, %d)", op, output_size[0],
                             output_size[1]);
    int (*k)(ct_tensor *, const ct_tensor *) =
        CT_KERNEL(x, adaptive_avg_pool2d_forward, "adaptive_avg_pool2d");
    if (!k) return NULL;
    int64_t ysh[4];
    for (int d = 0; d < x->ndim - 2; d++) ysh[d] = x->shape[d];
    ysh[x->ndim - 2] = output_size[0];
    ysh[x->ndim - 1] = output_size[1];
    ct_tensor *y = ct_empty_on(ysh, x->ndim, x->dtype, x->storage->device);
    ct_tensor *xc = ct_data_contiguous(x);
    ct_tensor *x4 = xc ? ct_view4d(xc) : NULL, *y4 = y ? ct_view4d(y) : NULL;
    int rc = (x4 && y4) ? k(y4, x4) : -1;
    y = record_pool(&rc, "AdaptiveAvgPool2DBackward", adaptive_avg_pool2d_backward, x, y, NULL,
                    NULL);
    ct_free(x4);
    ct_free(y4);
    ct_free(xc);
    if (rc != 0) {
        ct_free(y);
        return NULL;
    }
    return y;
}
