/* conv2d (torch.nn.functional.conv2d): stride, padding, dilation, groups, optional bias;
 * input [N, C, H, W] or unbatched [C, H, W]; backward for input, weight and bias. */
#include "core/autocast.h"
#include "core/autograd.h"
#include "core/backend.h"
#include "core/error.h"
#include "ops/fused.h"

#include <string.h>

/* The backward context of a convolution (and of the fused convolution + ReLU + pooling):
 * the parameters and the saved contiguous input, weight and window codes (slots, -1 when
 * not saved: x only when the weight needs a gradient, w only when the input does). */
typedef struct {
    ct_conv_params p;
    int x, w;
    ct_pool_params pool; /* fused op only */
    int codes;
} conv_ctx;

static void save_conv(ct_node *n, conv_ctx *c, const ct_conv_params *p, const ct_tensor *xc,
                      const ct_tensor *wc) {
    c->p = *p;
    c->x = ct_node_needs_grad(n, 1) ? ct_node_save(n, xc) : -1;
    c->w = ct_node_needs_grad(n, 0) ? ct_node_save(n, wc) : -1;
    c->codes = -1;
}

/* The gradient of input i of node n (its recorded shape), in gy's dtype and device. */
static ct_tensor *grad_like_input(const ct_node *n, int i, const ct_tensor *gy) {
    const ct_edge *e = &n->inputs[i];
    return ct_empty_on(e->shape, e->ndim, gy->dtype, gy->storage->device);
}

static int conv_grad_input(ct_node *n, const conv_ctx *c, const ct_tensor *gy4,
                           const ct_tensor *w, ct_tensor **gx) {
    int (*k)(ct_tensor *, const ct_tensor *, const ct_tensor *, const ct_conv_params *) =
        CT_KERNEL(gy4, conv2d_backward_input, "conv2d backward");
    ct_tensor *g = k ? grad_like_input(n, 0, gy4) : NULL;
    ct_tensor *g4 = g ? ct_view4d(g) : NULL;
    int r = g4 ? k(g4, gy4, w, &c->p) : -1;
    ct_free(g4);
    if (r != 0) {
        ct_free(g);
        return -1;
    }
    gx[0] = g;
    return 0;
}

/* The weight gradient, and the bias gradient in the same pass when it is wanted. */
static int conv_grad_weight(ct_node *n, const conv_ctx *c, const ct_tensor *gy4,
                            const ct_tensor *x, int want_b, ct_tensor **gx) {
    int (*k)(ct_tensor *, ct_tensor *, const ct_tensor *, const ct_tensor *,
             const ct_conv_params *) = CT_KERNEL(gy4, conv2d_backward_weight, "conv2d backward");
    ct_tensor *g = k ? grad_like_input(n, 1, gy4) : NULL;
    ct_tensor *gb = g && want_b ? grad_like_input(n, 2, gy4) : NULL;
    ct_tensor *x4 = g && (!want_b || gb) ? ct_view4d(x) : NULL;
    int r = x4 ? k(g, gb, gy4, x4, &c->p) : -1;
    ct_free(x4);
    if (r != 0) {
        ct_free(g);
        ct_free(gb);
        return -1;
    }
    gx[1] = g;
    if (gb) gx[2] = gb;
    return 0;
}

/* The gradients of a convolution given gy4 (4-D, contiguous). */
static int conv2d_backward_core(ct_node *n, const ct_tensor *gy4, ct_tensor **gx) {
    const conv_ctx *c = n->ctx;
    const ct_tensor *x = c->x >= 0 ? ct_node_saved(n, c->x) : NULL;
    const ct_tensor *w = c->w >= 0 ? ct_node_saved(n, c->w) : NULL;
    if ((c->x >= 0 && !x) || (c->w >= 0 && !w)) return -1;
    int want_b = n->n_inputs > 2 && ct_node_needs_grad(n, 2);
    if (ct_node_needs_grad(n, 0) && conv_grad_input(n, c, gy4, w, gx) != 0) return -1;
    if (ct_node_needs_grad(n, 1)) {
        if (conv_grad_weight(n, c, gy4, x, want_b, gx) != 0) return -1;
        want_b = 0;
    }
    if (want_b) {
        int dims[3] = {0, 2, 3};
        gx[2] = ct_sum(gy4, dims, 3, 0);
        if (!gx[2]) return -1;
    }
    return 0;
}

static int conv2d_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    ct_tensor *gyc = ct_data_contiguous(gy), *gy4 = gyc ? ct_view4d(gyc) : NULL;
    int rc = gy4 ? conv2d_backward_core(n, gy4, gx) : -1;
    ct_free(gy4);
    ct_free(gyc);
    return rc;
}

/* Checks the arguments of a convolution; fills the parameters and the output size. */
static int conv_prepare(const ct_tensor *x, const ct_tensor *weight, const ct_tensor *bias,
                        const int stride[2], const int padding[2], const int dilation[2],
                        int groups, int st[2], int pd[2], int dl[2], int64_t *ysh) {
    char s1[96], s2[96], s3[96];
    if (!x || !weight) return ct_error("conv2d: %s is NULL", x ? "weight" : "input");
    if (ct__check_tensor(x, "conv2d") || ct__check_tensor(weight, "conv2d") ||
        (bias && ct__check_tensor(bias, "conv2d")))
        return -1; /* a released tensor */
    if (x->ndim != 3 && x->ndim != 4)
        return ct_error("conv2d: input %s must be 4-D [N, C, H, W] or 3-D [C, H, W]",
                        ct_shape_str(x, s1, sizeof s1));
    if (weight->ndim != 4)
        return ct_error("conv2d: weight %s must be 4-D [out_channels, in_channels/groups, "
                        "kH, kW]",
                        ct_shape_str(weight, s2, sizeof s2));
    if (!ct_is_floating(x->dtype))
        return ct_error("conv2d: input dtype %s not supported (a floating dtype); "
                        "convert with ct_to_dtype",
                        ct_dtype_name(x->dtype));
    if (weight->dtype != x->dtype || (bias && bias->dtype != x->dtype))
        return ct_error("conv2d: input is %s but weight is %s%s%s; all must share one dtype",
                        ct_dtype_name(x->dtype), ct_dtype_name(weight->dtype),
                        bias ? " and bias is " : "", bias ? ct_dtype_name(bias->dtype) : "");
    if (!ct_same_device(x, weight) || (bias && !ct_same_device(x, bias)))
        return ct_error("conv2d: input, weight and bias must be on the same device; move "
                        "them with ct_to_device");
    if (groups < 1) return ct_error("conv2d: groups must be >= 1, got %d", groups);
    for (int i = 0; i < 2; i++) {
        st[i] = dl[i] = 1;
        pd[i] = 0;
    }
    for (int i = 0; i < 2; i++) {
        if (stride) st[i] = stride[i];
        if (padding) pd[i] = padding[i];
        if (dilation) dl[i] = dilation[i];
    }
    if (st[0] < 1 || st[1] < 1)
        return ct_error("conv2d: stride must be >= 1, got (%d, %d)", st[0], st[1]);
    if (pd[0] < 0 || pd[1] < 0)
        return ct_error("conv2d: padding must be >= 0, got (%d, %d)", pd[0], pd[1]);
    if (dl[0] < 1 || dl[1] < 1)
        return ct_error("conv2d: dilation must be >= 1, got (%d, %d)", dl[0], dl[1]);
    int b4 = x->ndim == 4;
    int64_t N = b4 ? x->shape[0] : 1, C = x->shape[b4], H = x->shape[b4 + 1],
            W = x->shape[b4 + 2];
    int64_t O = weight->shape[0], kh = weight->shape[2], kw = weight->shape[3];
    if (weight->shape[1] * groups != C)
        return ct_error("conv2d: weight %s with groups=%d expects input with %lld channels, "
                        "but input %s has %lld channels",
                        ct_shape_str(weight, s2, sizeof s2), groups,
                        (long long)(weight->shape[1] * groups), ct_shape_str(x, s1, sizeof s1),
                        (long long)C);
    if (O % groups != 0 || O == 0)
        return ct_error("conv2d: out_channels (%lld, weight %s) must be a positive multiple "
                        "of groups (%d)",
                        (long long)O, ct_shape_str(weight, s2, sizeof s2), groups);
    if (kh < 1 || kw < 1)
        return ct_error("conv2d: weight %s has an empty kernel",
                        ct_shape_str(weight, s2, sizeof s2));
    if (bias && (bias->ndim != 1 || bias->shape[0] != O))
        return ct_error("conv2d: bias %s must be 1-D [%lld] (one per output channel)",
                        ct_shape_str(bias, s3, sizeof s3), (long long)O);
    int64_t eh = (int64_t)dl[0] * (kh - 1) + 1, ew = (int64_t)dl[1] * (kw - 1) + 1;
    int64_t Hp = H + 2 * (int64_t)pd[0], Wp = W + 2 * (int64_t)pd[1];
    if (Hp < eh || Wp < ew)
        return ct_error("conv2d: input %s padded to (%lld x %lld) is smaller than the "
                        "dilated kernel (%lld x %lld) of weight %s; use a smaller kernel "
                        "or more padding",
                        ct_shape_str(x, s1, sizeof s1), (long long)Hp, (long long)Wp,
                        (long long)eh, (long long)ew, ct_shape_str(weight, s2, sizeof s2));
    ysh[0] = N;
    ysh[1] = O;
    ysh[2] = (Hp - eh) / st[0] + 1;
    ysh[3] = (Wp - ew) / st[1] + 1;
    return 0;
}

ct_tensor *ct_conv2d(const ct_tensor *x, const ct_tensor *weight, const ct_tensor *bias,
                     const int stride[2], const int padding[2], const int dilation[2],
                     int groups) {
    CT_AUTOCAST(CT_AC_CONV2D, ct_conv2d(ac[0], ac[1], ac[2], stride, padding, dilation, groups),
                x, weight, bias);
    int st[2] = {1, 1}, pd[2] = {0, 0}, dl[2] = {1, 1};
    int64_t ysh[4];
    if (conv_prepare(x, weight, bias, stride, padding, dilation, groups, st, pd, dl, ysh) != 0)
        return NULL;
    int b4 = x->ndim == 4;
    int (*k)(ct_tensor *, const ct_tensor *, const ct_tensor *, const ct_tensor *,
             const ct_conv_params *) = CT_KERNEL(x, conv2d_forward, "conv2d");
    if (!k) return NULL;
    ct_conv_params p = {.stride = {st[0], st[1]},
                        .padding = {pd[0], pd[1]},
                        .dilation = {dl[0], dl[1]},
                        .groups = groups};
    ct_tensor *y = b4 ? ct_empty_on(ysh, 4, x->dtype, x->storage->device)
                      : ct_empty_on(ysh + 1, 3, x->dtype, x->storage->device);
    ct_tensor *xc = NULL, *wc = NULL, *bc = NULL, *x4 = NULL, *y4 = NULL;
    int rc = -1;
    if (!y) return NULL;
    xc = ct_data_contiguous(x);
    wc = ct_data_contiguous(weight);
    bc = bias ? ct_data_contiguous(bias) : NULL;
    if (!xc || !wc || (bias && !bc)) goto out;
    x4 = ct_view4d(xc);
    y4 = ct_view4d(y);
    if (!x4 || !y4) goto out;
    if (k(y4, x4, wc, bc, &p) != 0) goto out;
    const ct_tensor *ins[3] = {x, weight, bias};
    ct_node *n;
    y = ct_node_record("ConvolutionBackward", conv2d_backward, ins, bias ? 3 : 2, y, &n);
    rc = y ? 0 : -1;
    if (n) save_conv(n, CT_NODE_CTX(n, conv_ctx), &p, xc, wc);
out:
    ct_free(x4);
    ct_free(y4);
    ct_free(xc);
    ct_free(wc);
    ct_free(bc);
    if (rc != 0) {
        ct_free(y);
        return NULL;
    }
    return y;
}

/* ------------------------------------------- fused conv2d + relu + max_pool2d */

/* The gradient of the convolution output [N, O, Ho, Wo] is gy routed back to each
 * window's maximum (zero where the ReLU clamped it); from there on it is a convolution's
 * backward. */
static int conv_relu_pool_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    const conv_ctx *c = n->ctx;
    const ct_tensor *codes = ct_node_saved(n, c->codes);
    if (!codes) return -1;
    const ct_edge *e = &n->inputs[0], *ew = &n->inputs[1];
    const ct_conv_params *p = &c->p;
    int64_t gsh[4] = {e->shape[0], ew->shape[0],
                      (e->shape[2] + 2 * p->padding[0] - p->dilation[0] * (ew->shape[2] - 1) - 1) /
                              p->stride[0] + 1,
                      (e->shape[3] + 2 * p->padding[1] - p->dilation[1] * (ew->shape[3] - 1) - 1) /
                              p->stride[1] + 1};
    ct_tensor *gyc = ct_data_contiguous(gy);
    ct_tensor *gc = gyc ? ct_empty_on(gsh, 4, gy->dtype, gy->storage->device) : NULL;
    int (*k)(ct_tensor *, const ct_tensor *, const ct_tensor *, const ct_pool_params *) =
        CT_KERNEL(gy, max_pool2d_codes_backward, "max_pool2d backward");
    int rc = gc && k ? k(gc, gyc, codes, &c->pool) : -1;
    if (rc == 0) rc = conv2d_backward_core(n, gc, gx);
    ct_free(gc);
    ct_free(gyc);
    return rc;
}

ct_tensor *ct_conv2d_relu_max_pool2d(const ct_tensor *x, const ct_tensor *weight,
                                     const ct_tensor *bias, const int stride[2],
                                     const int padding[2], const int dilation[2], int groups,
                                     const int pool_kernel[2], const int pool_stride[2],
                                     const int pool_padding[2]) {
    CT_AUTOCAST(CT_AC_CONV2D,
                ct_conv2d_relu_max_pool2d(ac[0], ac[1], ac[2], stride, padding, dilation, groups,
                                          pool_kernel, pool_stride, pool_padding),
                x, weight, bias);
    int st[2] = {1, 1}, pd[2] = {0, 0}, dl[2] = {1, 1};
    int64_t ysh[4] = {0, 0, 0, 0};
    ct_pool_params pp = {.kernel = {pool_kernel[0], pool_kernel[1]},
                         .stride = {pool_stride[0], pool_stride[1]},
                         .padding = {pool_padding[0], pool_padding[1]},
                         .dilation = {1, 1}};
    int ok = x && weight && x->ndim == 4 &&
             pp.kernel[0] * pp.kernel[1] < CT_POOL_NOGRAD && pp.stride[0] > 0 &&
             pp.stride[1] > 0 && pp.padding[0] >= 0 && pp.padding[1] >= 0 &&
             2 * pp.padding[0] <= pp.kernel[0] && 2 * pp.padding[1] <= pp.kernel[1] &&
             conv_prepare(x, weight, bias, stride, padding, dilation, groups, st, pd, dl, ysh) == 0;
    int64_t psh[4] = {ysh[0], ysh[1], 0, 0};
    if (ok) {
        psh[2] = (ysh[2] + 2 * pp.padding[0] - pp.kernel[0]) / pp.stride[0] + 1;
        psh[3] = (ysh[3] + 2 * pp.padding[1] - pp.kernel[1]) / pp.stride[1] + 1;
        ok = ysh[2] + 2 * pp.padding[0] >= pp.kernel[0] &&
             ysh[3] + 2 * pp.padding[1] >= pp.kernel[1];
    }
    if (!ok) {
        /* anything unusual: the composed ops (and their error messages) */
        ct_clear_error();
        ct_tensor *c = ct_conv2d(x, weight, bias, stride, padding, dilation, groups);
        ct_tensor *y = c ? ct_relu_max_pool2d(c, pool_kernel, pool_stride, pool_padding, NULL, 0)
                         : NULL;
        ct_free(c);
        return y;
    }
    ct_conv_params p = {.stride = {st[0], st[1]},
                        .padding = {pd[0], pd[1]},
                        .dilation = {dl[0], dl[1]},
                        .groups = groups};
    const ct_tensor *ins[3] = {x, weight, bias};
    int need = ct_needs_grad(ins, 3);
    ct_tensor *y = ct_empty_on(psh, 4, x->dtype, x->storage->device);
    ct_tensor *codes = need ? ct_empty_on(psh, 4, CT_UINT8, x->storage->device) : NULL;
    ct_tensor *xc = ct_data_contiguous(x), *wc = ct_data_contiguous(weight);
    ct_tensor *bc = bias ? ct_data_contiguous(bias) : NULL;
    int (*k)(ct_tensor *, ct_tensor *, const ct_tensor *, const ct_tensor *, const ct_tensor *,
             const ct_conv_params *, const ct_pool_params *) =
        CT_KERNEL(x, conv2d_relu_max_pool2d_forward, "conv2d");
    int rc = -1;
    if (k && y && (!need || codes) && xc && wc && (!bias || bc))
        rc = k(y, codes, xc, wc, bc, &p, &pp);
    ct_node *n = NULL;
    if (rc == 0) {
        y = ct_node_record("MaxPool2DWithIndicesBackward", conv_relu_pool_backward, ins,
                           bias ? 3 : 2, y, &n);
        rc = y ? 0 : -1;
    }
    if (n) {
        conv_ctx *c = CT_NODE_CTX(n, conv_ctx);
        save_conv(n, c, &p, xc, wc);
        c->pool = pp;
        c->codes = ct_node_save(n, codes);
    }
    ct_free(xc);
    ct_free(wc);
    ct_free(bc);
    ct_free(codes);
    if (rc != 0) {
        ct_free(y);
        return NULL;
    }
    return y;
}
