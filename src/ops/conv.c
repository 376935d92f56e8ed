/* conv2d (torch.nn.functional.conv2d): stride, padding, dilation, groups, optional bias;
 * input [N, C, H, W] or unbatched [C, H, W]; backward for input, weight and bias. */
#include "core/autograd.h"
#include "core/backend.h"
#include "core/error.h"

#include <string.h>

static ct_tensor *data_contig(const ct_tensor *t) {
    ct_tensor *a = ct_alias(t);
    if (!a) return NULL;
    ct_tensor *c = ct_contiguous(a);
    ct_free(a);
    return c;
}

/* 4-D data view of a contiguous 3-D or 4-D tensor. */
static ct_tensor *as4d(const ct_tensor *t) {
    if (t->ndim == 4) return ct_alias(t);
    int64_t sh[4] = {1, t->shape[0], t->shape[1], t->shape[2]};
    return ct_tensor_make(t->storage, t->dtype, sh, NULL, 4, t->offset);
}

static int same_device(const ct_tensor *a, const ct_tensor *b) {
    return a->storage->device.type == b->storage->device.type &&
           a->storage->device.index == b->storage->device.index;
}

static void params_from_node(const ct_node *n, ct_conv_params *p) {
    for (int i = 0; i < 2; i++) {
        p->stride[i] = (int)n->ip[i];
        p->padding[i] = (int)n->ip[2 + i];
        p->dilation[i] = (int)n->ip[4 + i];
    }
    p->groups = (int)n->ip[6];
}

static int conv2d_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    ct_conv_params p;
    params_from_node(n, &p);
    const ct_tensor *x = n->ip[7] >= 0 ? ct_node_saved(n, (int)n->ip[7]) : NULL;
    const ct_tensor *w = n->ip[8] >= 0 ? ct_node_saved(n, (int)n->ip[8]) : NULL;
    if ((n->ip[7] >= 0 && !x) || (n->ip[8] >= 0 && !w)) return -1;
    int rc = -1;
    ct_tensor *gyc = data_contig(gy), *gy4 = NULL;
    if (!gyc) return -1;
    gy4 = as4d(gyc);
    if (!gy4) goto out;
    if (ct_node_needs_grad(n, 0)) {
        int (*k)(ct_tensor *, const ct_tensor *, const ct_tensor *, const ct_conv_params *) =
            CT_KERNEL(gy, conv2d_backward_input, "conv2d backward");
        const ct_edge *e = &n->inputs[0];
        ct_tensor *g = k ? ct_empty_on(e->shape, e->ndim, gy->dtype, gy->storage->device) : NULL;
        ct_tensor *g4 = g ? as4d(g) : NULL;
        int r = g4 ? k(g4, gy4, w, &p) : -1;
        ct_free(g4);
        if (r != 0) {
            ct_free(g);
            goto out;
        }
        gx[0] = g;
    }
    if (ct_node_needs_grad(n, 1)) {
        int (*k)(ct_tensor *, const ct_tensor *, const ct_tensor *, const ct_conv_params *) =
            CT_KERNEL(gy, conv2d_backward_weight, "conv2d backward");
        const ct_edge *e = &n->inputs[1];
        ct_tensor *g = k ? ct_empty_on(e->shape, e->ndim, gy->dtype, gy->storage->device) : NULL;
        ct_tensor *x4 = g ? as4d(x) : NULL;
        int r = x4 ? k(g, gy4, x4, &p) : -1;
        ct_free(x4);
        if (r != 0) {
            ct_free(g);
            goto out;
        }
        gx[1] = g;
    }
    if (n->n_inputs > 2 && ct_node_needs_grad(n, 2)) {
        int dims[3] = {0, 2, 3};
        gx[2] = ct_sum(gy4, dims, 3, 0);
        if (!gx[2]) goto out;
    }
    rc = 0;
out:
    ct_free(gy4);
    ct_free(gyc);
    return rc;
}

ct_tensor *ct_conv2d(const ct_tensor *x, const ct_tensor *weight, const ct_tensor *bias,
                     const int stride[2], const int padding[2], const int dilation[2],
                     int groups) {
    char s1[96], s2[96], s3[96];
    if (!x || !weight) return ct_error_null("conv2d: %s is NULL", x ? "weight" : "input");
    if (x->ndim != 3 && x->ndim != 4)
        return ct_error_null("conv2d: input %s must be 4-D [N, C, H, W] or 3-D [C, H, W]",
                             ct_shape_str(x, s1, sizeof s1));
    if (weight->ndim != 4)
        return ct_error_null("conv2d: weight %s must be 4-D [out_channels, in_channels/groups, "
                             "kH, kW]",
                             ct_shape_str(weight, s2, sizeof s2));
    if (x->dtype != CT_FLOAT32 && x->dtype != CT_FLOAT64)
        return ct_error_null("conv2d: input dtype %s not supported (float32 or float64); "
                             "convert with ct_to_dtype",
                             ct_dtype_name(x->dtype));
    if (weight->dtype != x->dtype || (bias && bias->dtype != x->dtype))
        return ct_error_null("conv2d: input is %s but weight is %s%s%s; all must share one dtype",
                             ct_dtype_name(x->dtype), ct_dtype_name(weight->dtype),
                             bias ? " and bias is " : "", bias ? ct_dtype_name(bias->dtype) : "");
    if (!same_device(x, weight) || (bias && !same_device(x, bias)))
        return ct_error_null("conv2d: input, weight and bias must be on the same device; move "
                             "them with ct_to_device");
    if (groups < 1) return ct_error_null("conv2d: groups must be >= 1, got %d", groups);
    int st[2] = {1, 1}, pd[2] = {0, 0}, dl[2] = {1, 1};
    for (int i = 0; i < 2; i++) {
        if (stride) st[i] = stride[i];
        if (padding) pd[i] = padding[i];
        if (dilation) dl[i] = dilation[i];
    }
    if (st[0] < 1 || st[1] < 1)
        return ct_error_null("conv2d: stride must be >= 1, got (%d, %d)", st[0], st[1]);
    if (pd[0] < 0 || pd[1] < 0)
        return ct_error_null("conv2d: padding must be >= 0, got (%d, %d)", pd[0], pd[1]);
    if (dl[0] < 1 || dl[1] < 1)
        return ct_error_null("conv2d: dilation must be >= 1, got (%d, %d)", dl[0], dl[1]);
    int b4 = x->ndim == 4;
    int64_t N = b4 ? x->shape[0] : 1, C = x->shape[b4], H = x->shape[b4 + 1],
            W = x->shape[b4 + 2];
    int64_t O = weight->shape[0], kh = weight->shape[2], kw = weight->shape[3];
    if (weight->shape[1] * groups != C)
        return ct_error_null("conv2d: weight %s with groups=%d expects input with %lld channels, "
                             "but input %s has %lld channels",
                             ct_shape_str(weight, s2, sizeof s2), groups,
                             (long long)(weight->shape[1] * groups), ct_shape_str(x, s1, sizeof s1),
                             (long long)C);
    if (O % groups != 0 || O == 0)
        return ct_error_null("conv2d: out_channels (%lld, weight %s) must be a positive multiple "
                             "of groups (%d)",
                             (long long)O, ct_shape_str(weight, s2, sizeof s2), groups);
    if (kh < 1 || kw < 1)
        return ct_error_null("conv2d: weight %s has an empty kernel",
                             ct_shape_str(weight, s2, sizeof s2));
    if (bias && (bias->ndim != 1 || bias->shape[0] != O))
        return ct_error_null("conv2d: bias %s must be 1-D [%lld] (one per output channel)",
                             ct_shape_str(bias, s3, sizeof s3), (long long)O);
    int64_t eh = (int64_t)dl[0] * (kh - 1) + 1, ew = (int64_t)dl[1] * (kw - 1) + 1;
    int64_t Hp = H + 2 * (int64_t)pd[0], Wp = W + 2 * (int64_t)pd[1];
    if (Hp < eh || Wp < ew)
        return ct_error_null("conv2d: input %s padded to (%lld x %lld) is smaller than the "
                             "dilated kernel (%lld x %lld) of weight %s; use a smaller kernel "
                             "or more padding",
                             ct_shape_str(x, s1, sizeof s1), (long long)Hp, (long long)Wp,
                             (long long)eh, (long long)ew, ct_shape_str(weight, s2, sizeof s2));
    int64_t Ho = (Hp - eh) / st[0] + 1, Wo = (Wp - ew) / st[1] + 1;

    int (*k)(ct_tensor *, const ct_tensor *, const ct_tensor *, const ct_tensor *,
             const ct_conv_params *) = CT_KERNEL(x, conv2d_forward, "conv2d");
    if (!k) return NULL;
    ct_conv_params p = {.stride = {st[0], st[1]},
                        .padding = {pd[0], pd[1]},
                        .dilation = {dl[0], dl[1]},
                        .groups = groups};
    int64_t ysh[4] = {N, O, Ho, Wo};
    ct_tensor *y = b4 ? ct_empty_on(ysh, 4, x->dtype, x->storage->device)
                      : ct_empty_on(ysh + 1, 3, x->dtype, x->storage->device);
    ct_tensor *xc = NULL, *wc = NULL, *bc = NULL, *x4 = NULL, *y4 = NULL;
    int rc = -1;
    if (!y) return NULL;
    xc = data_contig(x);
    wc = data_contig(weight);
    bc = bias ? data_contig(bias) : NULL;
    if (!xc || !wc || (bias && !bc)) goto out;
    x4 = as4d(xc);
    y4 = as4d(y);
    if (!x4 || !y4) goto out;
    if (k(y4, x4, wc, bc, &p) != 0) goto out;
    rc = 0;
    const ct_tensor *ins[3] = {x, weight, bias};
    if (ct_needs_grad(ins, 3)) {
        ct_node *n = ct_node_new("ConvolutionBackward", conv2d_backward, bias ? 3 : 2);
        if (!n) {
            rc = -1;
            goto out;
        }
        ct_node_set_input(n, 0, x);
        ct_node_set_input(n, 1, weight);
        if (bias) ct_node_set_input(n, 2, bias);
        for (int i = 0; i < 2; i++) {
            n->ip[i] = st[i];
            n->ip[2 + i] = pd[i];
            n->ip[4 + i] = dl[i];
        }
        n->ip[6] = groups;
        n->ip[7] = ct_node_needs_grad(n, 1) ? ct_node_save(n, xc) : -1;
        n->ip[8] = ct_node_needs_grad(n, 0) ? ct_node_save(n, wc) : -1;
        ct_node_attach(n, y);
    }
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
