/* Pointwise ops: broadcasting binary arithmetic, unary math and activations, and the
 * in-place variants used by optimizers. Each op: checks, dispatch, backward formula. */
#include "core/autograd.h"
#include "core/backend.h"
#include "core/error.h"

#include <math.h>
#include <string.h>

static const char *binop_name(ct_binop op) {
    static const char *n[] = {"add", "sub", "mul", "div"};
    return n[op];
}

/* Broadcast shape of a and b (PyTorch rules), or -1 with an error naming op. */
static int broadcast_shape(const ct_tensor *a, const ct_tensor *b, int64_t *out, int *ndim,
                           const char *op) {
    int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
    for (int i = 0; i < nd; i++) {
        int ia = i - (nd - a->ndim), ib = i - (nd - b->ndim);
        int64_t sa = ia >= 0 ? a->shape[ia] : 1, sb = ib >= 0 ? b->shape[ib] : 1;
        if (sa != sb && sa != 1 && sb != 1) {
            char b1[96], b2[96];
            return ct_error("%s: shapes %s and %s cannot be broadcast together (dimension %d: %lld "
                            "vs %lld); sizes must match or be 1",
                            op, ct_shape_str(a, b1, sizeof b1), ct_shape_str(b, b2, sizeof b2), i,
                            (long long)sa, (long long)sb);
        }
        out[i] = sa == 1 ? sb : sa;
    }
    *ndim = nd;
    return 0;
}

static int check_pair(const ct_tensor *a, const ct_tensor *b, const char *op) {
    if (!a || !b) return ct_error("%s: NULL tensor argument", op);
    if (a->dtype != b->dtype)
        return ct_error("%s: dtype mismatch (%s and %s); convert one with ct_to_dtype", op,
                        ct_dtype_name(a->dtype), ct_dtype_name(b->dtype));
    if (a->storage->device.type != b->storage->device.type ||
        a->storage->device.index != b->storage->device.index) {
        char d1[16], d2[16];
        ct_device_str(a->storage->device, d1, sizeof d1);
        ct_device_str(b->storage->device, d2, sizeof d2);
        return ct_error("%s: tensors are on different devices (%s and %s); move one with "
                        "ct_to_device", op, d1, d2);
    }
    return 0;
}

ct_tensor *ct_sum_to_shape(const ct_tensor *g, const int64_t *shape, int ndim) {
    if (g->ndim == ndim && memcmp(g->shape, shape, sizeof(int64_t) * (size_t)ndim) == 0)
        return ct_retain((ct_tensor *)g);
    int dims[CT_MAX_DIMS], nd = 0, lead = g->ndim - ndim;
    for (int i = 0; i < g->ndim; i++) {
        int j = i - lead;
        if (j < 0 || (shape[j] == 1 && g->shape[i] != 1)) dims[nd++] = i;
    }
    ct_tensor *s = nd ? ct_sum(g, dims, nd, 1) : ct_retain((ct_tensor *)g);
    if (!s) return NULL;
    ct_tensor *r = ct_reshape(s, shape, ndim);
    ct_free(s);
    return r;
}

/* --------------------------------------------------------------- binary */
static int binary_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    ct_binop op = (ct_binop)n->ip[0];
    double alpha = n->dp[0];
    const ct_tensor *a = NULL, *b = NULL;
    if (op == CT_BIN_MUL || op == CT_BIN_DIV) {
        if (!(a = ct_node_saved(n, 0)) || !(b = ct_node_saved(n, 1))) return -1;
    }
    for (int i = 0; i < 2; i++) {
        if (!ct_node_needs_grad(n, i)) continue;
        ct_tensor *g = NULL;
        switch (op) {
        case CT_BIN_ADD:
        case CT_BIN_SUB:
            if (i == 0) g = ct_retain((ct_tensor *)gy);
            else g = ct_mul_scalar(gy, op == CT_BIN_ADD ? alpha : -alpha);
            break;
        case CT_BIN_MUL: g = ct_mul(gy, i == 0 ? b : a); break;
        case CT_BIN_DIV:
            if (i == 0) g = ct_div(gy, b);
            else { /* -gy * a / b^2 */
                ct_tensor *t1 = ct_div(gy, b), *t2 = t1 ? ct_div(t1, b) : NULL;
                ct_tensor *t3 = t2 ? ct_mul(t2, a) : NULL;
                g = t3 ? ct_neg(t3) : NULL;
                ct_free(t1);
                ct_free(t2);
                ct_free(t3);
            }
            break;
        default: break;
        }
        if (!g) return -1;
        gx[i] = ct_sum_to_shape(g, n->inputs[i].shape, n->inputs[i].ndim);
        ct_free(g);
        if (!gx[i]) return -1;
    }
    return 0;
}

static ct_tensor *binary_op(ct_binop op, const ct_tensor *a, const ct_tensor *b, double alpha) {
    const char *name = binop_name(op);
    if (check_pair(a, b, name) != 0) return NULL;
    int64_t shape[CT_MAX_DIMS];
    int nd = 0;
    if (broadcast_shape(a, b, shape, &nd, name) != 0) return NULL;
    int prev = ct_set_grad_enabled(0); /* the broadcast views need no graph */
    ct_tensor *ea = ct_expand(a, shape, nd), *eb = ct_expand(b, shape, nd);
    ct_set_grad_enabled(prev);
    ct_tensor *y = ct_empty_on(shape, nd, a->dtype, a->storage->device);
    int (*k)(ct_binop, ct_tensor *, const ct_tensor *, const ct_tensor *, double) =
        y ? CT_KERNEL(y, binary, name) : NULL;
    int rc = (ea && eb && k) ? k(op, y, ea, eb, alpha) : -1;
    ct_free(ea);
    ct_free(eb);
    if (rc != 0) {
        ct_free(y);
        return NULL;
    }
    static const char *names[] = {"AddBackward", "SubBackward", "MulBackward", "DivBackward"};
    ct_node *n;
    y = ct_node_record(names[op], binary_backward, (const ct_tensor *[]){a, b}, 2, y, &n);
    if (n) {
        n->ip[0] = op;
        n->dp[0] = alpha;
        if (op == CT_BIN_MUL || op == CT_BIN_DIV) {
            ct_node_save(n, a);
            ct_node_save(n, b);
        }
    }
    return y;
}

ct_tensor *ct_add(const ct_tensor *a, const ct_tensor *b) { return binary_op(CT_BIN_ADD, a, b, 1); }
ct_tensor *ct_sub(const ct_tensor *a, const ct_tensor *b) { return binary_op(CT_BIN_SUB, a, b, 1); }
ct_tensor *ct_mul(const ct_tensor *a, const ct_tensor *b) { return binary_op(CT_BIN_MUL, a, b, 1); }
ct_tensor *ct_div(const ct_tensor *a, const ct_tensor *b) { return binary_op(CT_BIN_DIV, a, b, 1); }

/* ---------------------------------------------------------------- unary */
static const struct {
    const char *name, *node;
    int float_only;
} g_un[CT_UN_COUNT] = {
    [CT_UN_NEG] = {"neg", "NegBackward", 0},
    [CT_UN_EXP] = {"exp", "ExpBackward", 1},
    [CT_UN_LOG] = {"log", "LogBackward", 1},
    [CT_UN_SQRT] = {"sqrt", "SqrtBackward", 1},
    [CT_UN_ABS] = {"abs", "AbsBackward", 0},
    [CT_UN_SIGN] = {"sign", "SignBackward", 0},
    [CT_UN_POW] = {"pow", "PowBackward", 1},
    [CT_UN_CLAMP] = {"clamp", "ClampBackward", 0},
    [CT_UN_ADD_SCALAR] = {"add_scalar", "AddBackward", 0},
    [CT_UN_MUL_SCALAR] = {"mul_scalar", "MulBackward", 0},
    [CT_UN_RELU] = {"relu", "ReluBackward", 0},
    [CT_UN_LEAKY_RELU] = {"leaky_relu", "LeakyReluBackward", 1},
    [CT_UN_GELU] = {"gelu", "GeluBackward", 1},
    [CT_UN_GELU_TANH] = {"gelu", "GeluBackward", 1},
    [CT_UN_SIGMOID] = {"sigmoid", "SigmoidBackward", 1},
    [CT_UN_TANH] = {"tanh", "TanhBackward", 1},
};

static int unary_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    ct_unop op = (ct_unop)n->ip[0];
    const ct_tensor *x = ct_node_saved(n, 0), *y = ct_node_saved(n, 1);
    if (!x || !y) return -1;
    ct_tensor *gyc = ct_contiguous(gy), *xc = ct_contiguous(x), *yc = ct_contiguous(y);
    ct_tensor *g = gyc ? ct_empty_like(gyc) : NULL;
    int rc = -1;
    if (g && xc && yc) {
        int (*k)(ct_unop, ct_tensor *, const ct_tensor *, const ct_tensor *, const ct_tensor *,
                 double, double) = CT_KERNEL(g, unary_backward, g_un[op].name);
        rc = k ? k(op, g, gyc, xc, yc, n->dp[0], n->dp[1]) : -1;
    }
    ct_free(gyc);
    ct_free(xc);
    ct_free(yc);
    if (rc) {
        ct_free(g);
        return -1;
    }
    gx[0] = g;
    return 0;
}

static ct_tensor *unary_op(ct_unop op, const ct_tensor *a, double p1, double p2) {
    const char *name = g_un[op].name;
    if (!a) return ct_error_null("%s: NULL tensor argument", name);
    if (g_un[op].float_only && !ct_is_floating(a->dtype))
        return ct_error_null("%s: needs a floating-point tensor, got %s; convert with ct_to_dtype",
                             name, ct_dtype_name(a->dtype));
    ct_tensor *y = ct_empty_on(a->shape, a->ndim, a->dtype, a->storage->device);
    int (*k)(ct_unop, ct_tensor *, const ct_tensor *, double, double) = y ? CT_KERNEL(y, unary, name) : NULL;
    if (!k || k(op, y, a, p1, p2) != 0) {
        ct_free(y);
        return NULL;
    }
    ct_node *n;
    y = ct_node_record(g_un[op].node, unary_backward, &a, 1, y, &n);
    if (n) {
        n->ip[0] = op;
        n->dp[0] = p1;
        n->dp[1] = p2;
        ct_node_save(n, a);
        ct_node_save(n, y);
    }
    return y;
}

ct_tensor *ct_neg(const ct_tensor *a) { return unary_op(CT_UN_NEG, a, 0, 0); }
ct_tensor *ct_exp(const ct_tensor *a) { return unary_op(CT_UN_EXP, a, 0, 0); }
ct_tensor *ct_log(const ct_tensor *a) { return unary_op(CT_UN_LOG, a, 0, 0); }
ct_tensor *ct_sqrt(const ct_tensor *a) { return unary_op(CT_UN_SQRT, a, 0, 0); }
ct_tensor *ct_abs(const ct_tensor *a) { return unary_op(CT_UN_ABS, a, 0, 0); }
ct_tensor *ct_pow_scalar(const ct_tensor *a, double e) { return unary_op(CT_UN_POW, a, e, 0); }
ct_tensor *ct_add_scalar(const ct_tensor *a, double s) { return unary_op(CT_UN_ADD_SCALAR, a, s, 0); }
ct_tensor *ct_mul_scalar(const ct_tensor *a, double s) { return unary_op(CT_UN_MUL_SCALAR, a, s, 0); }
ct_tensor *ct_clamp(const ct_tensor *a, double lo, double hi) {
    if (isnan(lo) || isnan(hi) || lo > hi)
        return ct_error_null("clamp: min %g must not exceed max %g (use -INFINITY/INFINITY for no "
                             "bound)", lo, hi);
    return unary_op(CT_UN_CLAMP, a, lo, hi);
}
ct_tensor *ct_relu(const ct_tensor *a) { return unary_op(CT_UN_RELU, a, 0, 0); }
ct_tensor *ct_leaky_relu(const ct_tensor *a, double slope) {
    return unary_op(CT_UN_LEAKY_RELU, a, slope, 0);
}
ct_tensor *ct_gelu(const ct_tensor *a, int approximate_tanh) {
    return unary_op(approximate_tanh ? CT_UN_GELU_TANH : CT_UN_GELU, a, 0, 0);
}
ct_tensor *ct_sigmoid(const ct_tensor *a) { return unary_op(CT_UN_SIGMOID, a, 0, 0); }
ct_tensor *ct_tanh(const ct_tensor *a) { return unary_op(CT_UN_TANH, a, 0, 0); }

/* -------------------------------------------------------------- in-place */
static int check_inplace(ct_tensor *a, const char *op) {
    if (!a) return ct_error("%s: NULL tensor argument", op);
    if (ct_is_grad_enabled() && a->requires_grad) {
        if (!a->grad_fn)
            return ct_error("%s: a leaf tensor that requires grad cannot be modified in place "
                            "while grad mode is on; wrap the update in "
                            "ct_set_grad_enabled(0) ... ct_set_grad_enabled(prev)", op);
        return ct_error("%s: in-place changes to a tensor that is part of an autograd graph "
                        "(produced by %s) are not supported; use the out-of-place op", op,
                        a->grad_fn->name);
    }
    return 0;
}

int ct_add_(ct_tensor *a, const ct_tensor *b, double alpha) {
    if (check_inplace(a, "add_") != 0 || check_pair(a, b, "add_") != 0) return -1;
    ct_tensor *eb = ct_expand(b, a->shape, a->ndim);
    if (!eb) {
        ct_error_context("add_");
        return -1;
    }
    int (*k)(ct_binop, ct_tensor *, const ct_tensor *, const ct_tensor *, double) = CT_KERNEL(a, binary, "add_");
    int rc = k ? k(CT_BIN_ADD, a, a, eb, alpha) : -1;
    ct_free(eb);
    ct_bump_version(a);
    return rc;
}

int ct_mul_(ct_tensor *a, const ct_tensor *b) {
    if (check_inplace(a, "mul_") != 0 || check_pair(a, b, "mul_") != 0) return -1;
    ct_tensor *eb = ct_expand(b, a->shape, a->ndim);
    if (!eb) {
        ct_error_context("mul_");
        return -1;
    }
    int (*k)(ct_binop, ct_tensor *, const ct_tensor *, const ct_tensor *, double) = CT_KERNEL(a, binary, "mul_");
    int rc = k ? k(CT_BIN_MUL, a, a, eb, 1) : -1;
    ct_free(eb);
    ct_bump_version(a);
    return rc;
}

static int unary_(ct_tensor *a, ct_unop op, double p1, const char *name) {
    if (check_inplace(a, name) != 0) return -1;
    int (*k)(ct_unop, ct_tensor *, const ct_tensor *, double, double) = CT_KERNEL(a, unary, name);
    int rc = k ? k(op, a, a, p1, 0) : -1;
    ct_bump_version(a);
    return rc;
}
int ct_mul_scalar_(ct_tensor *a, double s) { return unary_(a, CT_UN_MUL_SCALAR, s, "mul_scalar_"); }
int ct_add_scalar_(ct_tensor *a, double s) { return unary_(a, CT_UN_ADD_SCALAR, s, "add_scalar_"); }

int ct__copy_any(ct_tensor *dst, const ct_tensor *src);

int ct_copy_(ct_tensor *dst, const ct_tensor *src) {
    if (check_inplace(dst, "copy_") != 0) return -1;
    if (!src) return ct_error("copy_: NULL source tensor");
    ct_tensor *es = ct_expand(src, dst->shape, dst->ndim);
    if (!es) {
        ct_error_context("copy_");
        return -1;
    }
    int rc = ct__copy_any(dst, es);
    ct_free(es);
    ct_bump_version(dst);
    return rc;
}

int ct_fill_(ct_tensor *t, double v) {
    if (check_inplace(t, "fill_") != 0) return -1;
    int (*k)(ct_tensor *, double) = CT_KERNEL(t, fill, "fill_");
    int rc = k ? k(t, v) : -1;
    ct_bump_version(t);
    return rc;
}
int ct_zero_(ct_tensor *t) { return ct_fill_(t, 0); }
