/* Pointwise ops: broadcasting binary arithmetic, unary math and activations, and the
 * in-place variants used by optimizers. The ops' names, dtype rules and formulas are the
 * rows of src/core/op_tables.h; this file holds what the op layer adds: the checks,
 * the dispatch and the backward formulas. */
#include "core/autocast.h"
#include "core/autograd.h"
#include "core/backend.h"
#include "core/error.h"

#include <math.h>
#include <string.h>

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
    if (ct__check_tensor(a, op) || ct__check_tensor(b, op)) return -1; /* a released tensor */
    if (a->dtype != b->dtype)
        return ct_error("%s: dtype mismatch (%s and %s); convert one with ct_to_dtype", op,
                        ct_dtype_name(a->dtype), ct_dtype_name(b->dtype));
    if (!ct_same_device(a, b)) {
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
#define CT__BIN_NAME(ID, name, node, result, fwd) [CT_BIN_##ID] = {#name, node},
static const struct {
    const char *name, *node; /* node: NULL for the BOOL rows (no gradient) */
} g_bin[CT_BIN_COUNT] = {CT_BINARY_OPS(CT__BIN_NAME)};
_Static_assert(sizeof g_bin / sizeof *g_bin == CT_BIN_COUNT, "one g_bin row per binary op");

const char *ct_binop_name(ct_binop op) {
    return (unsigned)op < CT_BIN_COUNT ? g_bin[op].name : "unknown binary op";
}

typedef struct {
    ct_binop op;
    double alpha;
    int a, b; /* saved operands (mul, div) */
} binary_ctx;

/* The gradient of input i (before summing over broadcast dims). One case per
 * CT_BINARY_OPS row: a missing one fails the build (-Wswitch, no default). */
static ct_tensor *binary_grad(const binary_ctx *c, int i, const ct_tensor *gy,
                              const ct_tensor *a, const ct_tensor *b) {
    switch (c->op) {
    case CT_BIN_ADD:
    case CT_BIN_SUB:
        if (i == 0) return ct_retain((ct_tensor *)gy);
        return ct_mul_scalar(gy, c->op == CT_BIN_ADD ? c->alpha : -c->alpha);
    case CT_BIN_MUL: return ct_mul(gy, i == 0 ? b : a);
    case CT_BIN_DIV: {
        if (i == 0) return ct_div(gy, b);
        /* -gy * a / b^2 */
        ct_tensor *t1 = ct_div(gy, b), *t2 = t1 ? ct_div(t1, b) : NULL;
        ct_tensor *t3 = t2 ? ct_mul(t2, a) : NULL, *g = t3 ? ct_neg(t3) : NULL;
        ct_free(t1);
        ct_free(t2);
        ct_free(t3);
        return g;
    }
    /* the BOOL rows record no node (binary_op): never reached */
    case CT_BIN_EQ:
    case CT_BIN_NE:
    case CT_BIN_LT:
    case CT_BIN_LE:
    case CT_BIN_GT:
    case CT_BIN_GE:
    case CT_BIN_LOGICAL_AND:
    case CT_BIN_LOGICAL_OR:
        return ct_error_null("%s: not differentiable (its output is bool)", g_bin[c->op].name);
    case CT_BIN_COUNT: break;
    }
    return ct_error_null("binary op %d: no backward formula", (int)c->op);
}

static int binary_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    const binary_ctx *c = n->ctx;
    const ct_tensor *a = NULL, *b = NULL;
    if (c->a >= 0 && !(a = ct_node_saved(n, c->a))) return -1;
    if (c->b >= 0 && !(b = ct_node_saved(n, c->b))) return -1;
    for (int i = 0; i < 2; i++) {
        if (!ct_node_needs_grad(n, i)) continue;
        ct_tensor *g = binary_grad(c, i, gy, a, b);
        if (!g) return -1;
        gx[i] = ct_sum_to_shape(g, n->inputs[i].shape, n->inputs[i].ndim);
        ct_free(g);
        if (!gx[i]) return -1;
    }
    return 0;
}

/* The operands' dtype suits the row: float32, float64 or int64 for arithmetic; bool too
 * for comparisons and logical ops. */
static int check_binary_dtype(ct_binop op, ct_dtype dt) {
    const char *name = g_bin[op].name;
    if (ct_is_floating(dt) || dt == CT_INT64) return 0;
    if (ct_binop_result_bool(op)) {
        if (dt == CT_BOOL) return 0;
        return ct_error("%s: dtype %s is not supported (a floating dtype, int64 or bool); "
                        "convert with ct_to_dtype", name, ct_dtype_name(dt));
    }
    if (dt == CT_BOOL)
        return ct_error("%s: bool tensors have no arithmetic; use ct_logical_and / "
                        "ct_logical_or, or convert with ct_to_dtype(t, CT_INT64) first", name);
    return ct_error("%s: dtype %s is not supported (a floating dtype or int64); convert with "
                    "ct_to_dtype", name, ct_dtype_name(dt));
}

/* PyTorch's type promotion between two floating dtypes, or int64 and a floating dtype:
 * the wider float wins (float16 with bfloat16 gives float32), a float beats int64.
 * Returns -1 when the pair does not promote (the same dtype, or other dtypes). */
static int promoted_dtype(ct_dtype x, ct_dtype y) {
    if (x == y) return -1;
    int fx = ct_is_floating(x), fy = ct_is_floating(y);
    if (fx && fy) {
        if (x == CT_FLOAT64 || y == CT_FLOAT64) return CT_FLOAT64;
        return CT_FLOAT32; /* float32 with a 16-bit float, or bfloat16 with float16 */
    }
    if (fx && y == CT_INT64) return x;
    if (fy && x == CT_INT64) return y;
    return -1;
}

static ct_tensor *binary_op_same(ct_binop op, const ct_tensor *a, const ct_tensor *b,
                                 double alpha);

/* Mixed dtypes promote (a bf16 activation plus a float32 tensor gives float32): the
 * operand(s) are converted, differentiably, and the op runs in the promoted dtype. */
static ct_tensor *binary_op(ct_binop op, const ct_tensor *a, const ct_tensor *b, double alpha) {
    int pd = a && b && !ct__check_tensor(a, g_bin[op].name) &&
                     !ct__check_tensor(b, g_bin[op].name)
                 ? promoted_dtype(a->dtype, b->dtype)
                 : -1;
    if (pd < 0) return binary_op_same(op, a, b, alpha);
    ct_tensor *ap = ct_to_dtype(a, (ct_dtype)pd), *bp = ap ? ct_to_dtype(b, (ct_dtype)pd) : NULL;
    ct_tensor *y = bp ? binary_op_same(op, ap, bp, alpha) : NULL;
    ct_free(ap);
    ct_free(bp);
    return y;
}

static ct_tensor *binary_op_same(ct_binop op, const ct_tensor *a, const ct_tensor *b,
                                 double alpha) {
    const char *name = g_bin[op].name;
    if (check_pair(a, b, name) != 0 || check_binary_dtype(op, a->dtype) != 0) return NULL;
    int64_t shape[CT_MAX_DIMS];
    int nd = 0;
    if (broadcast_shape(a, b, shape, &nd, name) != 0) return NULL;
    int prev = ct_set_grad_enabled(0); /* the broadcast views need no graph */
    ct_tensor *ea = ct_expand(a, shape, nd), *eb = ct_expand(b, shape, nd);
    ct_set_grad_enabled(prev);
    const int to_bool = ct_binop_result_bool(op);
    ct_tensor *y = ct_empty_on(shape, nd, to_bool ? CT_BOOL : a->dtype, a->storage->device);
    int (*k)(ct_binop, ct_tensor *, const ct_tensor *, const ct_tensor *, double) =
        y ? CT_KERNEL(y, binary, name) : NULL;
    int rc = (ea && eb && k) ? k(op, y, ea, eb, alpha) : -1;
    ct_free(ea);
    ct_free(eb);
    if (rc != 0) {
        ct_free(y);
        return NULL;
    }
    if (to_bool) return y; /* no gradient: PyTorch's comparisons do not require grad */
    ct_node *n;
    y = ct_node_record(g_bin[op].node, binary_backward, (const ct_tensor *[]){a, b}, 2, y, &n);
    if (n) {
        binary_ctx *c = CT_NODE_CTX(n, binary_ctx);
        int saves = op == CT_BIN_MUL || op == CT_BIN_DIV;
        *c = (binary_ctx){op, alpha, saves ? ct_node_save(n, a) : -1,
                          saves ? ct_node_save(n, b) : -1};
    }
    return y;
}

ct_tensor *ct__binary(ct_binop op, const ct_tensor *a, const ct_tensor *b, double alpha) {
    if ((unsigned)op >= CT_BIN_COUNT) return ct_error_null("binary op %d: no such op", (int)op);
    return binary_op(op, a, b, alpha);
}

/* ct_<name>(a, b) for every row: add, sub, mul, div, eq, ne, lt, le, gt, ge, logical_and,
 * logical_or. */
#define CT__BIN_API(ID, name, ...)                                                          \
    ct_tensor *ct_##name(const ct_tensor *a, const ct_tensor *b) {                          \
        return binary_op(CT_BIN_##ID, a, b, 1);                                             \
    }
CT_BINARY_OPS(CT__BIN_API)

/* A comparison with a number, as PyTorch's t < 2.5: in t's dtype when it holds s exactly
 * (always for floating t: s is rounded to it, as PyTorch does), else in float64 (an int64
 * or bool tensor against 2.5, NaN or a number beyond int64). */
static ct_tensor *compare_scalar(ct_binop op, const ct_tensor *a, double s, const char *name) {
    if (!a) return ct_error_null("%s: NULL tensor argument", name);
    if (check_binary_dtype(op, a->dtype) != 0) {
        ct_error_context("%s", name);
        return NULL;
    }
    ct_dtype dt = a->dtype;
    int exact = ct_is_floating(dt) ||
                (s == s && s >= -9.2e18 && s <= 9.2e18 && (double)(int64_t)s == s &&
                 (dt != CT_BOOL || s == 0 || s == 1));
    ct_tensor *ac = exact ? ct_retain((ct_tensor *)a) : ct_to_dtype(a, CT_FLOAT64);
    ct_tensor *sc = ac ? ct_empty_on(NULL, 0, ac->dtype, a->storage->device) : NULL;
    ct_tensor *y = NULL;
    if (sc && ct_backend_of(sc)->k.fill(sc, s) == 0) y = binary_op(op, ac, sc, 1);
    ct_free(ac);
    ct_free(sc);
    if (!y) ct_error_context("%s", name);
    return y;
}

ct_tensor *ct_eq_scalar(const ct_tensor *a, double s) { return compare_scalar(CT_BIN_EQ, a, s, "eq_scalar"); }
ct_tensor *ct_ne_scalar(const ct_tensor *a, double s) { return compare_scalar(CT_BIN_NE, a, s, "ne_scalar"); }
ct_tensor *ct_lt_scalar(const ct_tensor *a, double s) { return compare_scalar(CT_BIN_LT, a, s, "lt_scalar"); }
ct_tensor *ct_le_scalar(const ct_tensor *a, double s) { return compare_scalar(CT_BIN_LE, a, s, "le_scalar"); }
ct_tensor *ct_gt_scalar(const ct_tensor *a, double s) { return compare_scalar(CT_BIN_GT, a, s, "gt_scalar"); }
ct_tensor *ct_ge_scalar(const ct_tensor *a, double s) { return compare_scalar(CT_BIN_GE, a, s, "ge_scalar"); }
/* not x = (x == 0): NaN is true, so its negation false, as in PyTorch. */
ct_tensor *ct_logical_not(const ct_tensor *a) { return compare_scalar(CT_BIN_EQ, a, 0, "logical_not"); }

/* ---------------------------------------------------------------- unary */
#define CT__UN_ROW(ID, name, node, dtypes, saves, api, ...)                                 \
    [CT_UN_##ID] = {#name, node, CT_SAVES_##saves, CT_FLOAT_ONLY_##dtypes},
static const struct {
    const char *name, *node;
    int saves;      /* CT_SAVES_*: what the derivative reads */
    int float_only; /* the row's dtype rule is FLOAT */
} g_un[CT_UN_COUNT] = {CT_UNARY_OPS(CT__UN_ROW)};
_Static_assert(sizeof g_un / sizeof *g_un == CT_UN_COUNT, "one g_un row per unary op");

const char *ct_unop_name(ct_unop op) {
    return (unsigned)op < CT_UN_COUNT ? g_un[op].name : "unknown unary op";
}
int ct_unop_allows_int64(ct_unop op) { return (unsigned)op < CT_UN_COUNT && !g_un[op].float_only; }

typedef struct {
    ct_unop op;
    double p1, p2;
    int x, y; /* saved input and output, -1 when the derivative does not read them */
} unary_ctx;

static int unary_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    const unary_ctx *c = n->ctx;
    const ct_tensor *x = c->x >= 0 ? ct_node_saved(n, c->x) : NULL;
    const ct_tensor *y = c->y >= 0 ? ct_node_saved(n, c->y) : NULL;
    if ((c->x >= 0 && !x) || (c->y >= 0 && !y)) return -1;
    ct_tensor *gyc = ct_contiguous(gy);
    ct_tensor *xc = x ? ct_contiguous(x) : NULL, *yc = y ? ct_contiguous(y) : NULL;
    ct_tensor *g = gyc ? ct_empty_like(gyc) : NULL;
    int rc = -1;
    if (g && (!x || xc) && (!y || yc)) {
        int (*k)(ct_unop, ct_tensor *, const ct_tensor *, const ct_tensor *, const ct_tensor *,
                 double, double) = CT_KERNEL(g, unary_backward, g_un[c->op].name);
        rc = k ? k(c->op, g, gyc, xc, yc, c->p1, c->p2) : -1;
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

/* The unary rows autocast knows (CUDA runs them in float32). */
static int unary_autocast_op(ct_unop op) {
    switch (op) {
    case CT_UN_EXP: return CT_AC_EXP;
    case CT_UN_LOG: return CT_AC_LOG;
    case CT_UN_POW: return CT_AC_POW;
    default: return -1;
    }
}

ct_tensor *ct__unary(ct_unop op, const ct_tensor *a, double p1, double p2) {
    if ((unsigned)op >= CT_UN_COUNT) return ct_error_null("unary op %d: no such op", (int)op);
    if (unary_autocast_op(op) >= 0)
        CT_AUTOCAST((ct_autocast_op)unary_autocast_op(op), ct__unary(op, ac[0], p1, p2), a);
    const char *name = g_un[op].name;
    if (!a) return ct_error_null("%s: NULL tensor argument", name);
    if (ct__check_tensor(a, name)) return NULL; /* a released tensor */
    if (!ct_is_floating(a->dtype) && !(a->dtype == CT_INT64 && !g_un[op].float_only))
        return ct_error_null("%s: needs a floating-point tensor%s, got %s; convert with "
                             "ct_to_dtype",
                             name, g_un[op].float_only ? "" : " or int64",
                             ct_dtype_name(a->dtype));
    ct_tensor *y = ct_empty_on(a->shape, a->ndim, a->dtype, a->storage->device);
    int (*k)(ct_unop, ct_tensor *, const ct_tensor *, double, double) = y ? CT_KERNEL(y, unary, name) : NULL;
    if (!k || k(op, y, a, p1, p2) != 0) {
        ct_free(y);
        return NULL;
    }
    ct_node *n;
    y = ct_node_record(g_un[op].node, unary_backward, &a, 1, y, &n);
    if (n) {
        unary_ctx *c = CT_NODE_CTX(n, unary_ctx);
        int s = g_un[op].saves;
        *c = (unary_ctx){op, p1, p2, s & CT_SAVES_IN ? ct_node_save(n, a) : -1,
                         s & CT_SAVES_OUT ? ct_node_save(n, y) : -1};
    }
    return y;
}

/* ct_<name>(x) for the rows whose api column is A0; the others are written out below. */
#define CT__UN_API(ID, name, node, dtypes, saves, api, ...)                                 \
    CT_IF_##api(ct_tensor *ct_##name(const ct_tensor *a) { return ct__unary(CT_UN_##ID, a, 0, 0); })
CT_UNARY_OPS(CT__UN_API)

ct_tensor *ct_pow_scalar(const ct_tensor *a, double e) { return ct__unary(CT_UN_POW, a, e, 0); }
ct_tensor *ct_add_scalar(const ct_tensor *a, double s) { return ct__unary(CT_UN_ADD_SCALAR, a, s, 0); }
ct_tensor *ct_mul_scalar(const ct_tensor *a, double s) { return ct__unary(CT_UN_MUL_SCALAR, a, s, 0); }
ct_tensor *ct_clamp(const ct_tensor *a, double lo, double hi) {
    if (isnan(lo) || isnan(hi) || lo > hi)
        return ct_error_null("clamp: min %g must not exceed max %g (use -INFINITY/INFINITY for no "
                             "bound)", lo, hi);
    return ct__unary(CT_UN_CLAMP, a, lo, hi);
}
ct_tensor *ct_hardtanh(const ct_tensor *a, double min_val, double max_val) {
    if (isnan(min_val) || isnan(max_val) || min_val > max_val)
        return ct_error_null("hardtanh: min_val %g must not exceed max_val %g", min_val, max_val);
    return ct__unary(CT_UN_HARDTANH, a, min_val, max_val);
}
ct_tensor *ct_relu6(const ct_tensor *a) { return ct_hardtanh(a, 0, 6); }
ct_tensor *ct_leaky_relu(const ct_tensor *a, double slope) {
    return ct__unary(CT_UN_LEAKY_RELU, a, slope, 0);
}
ct_tensor *ct_gelu(const ct_tensor *a, int approximate_tanh) {
    return ct__unary(approximate_tanh ? CT_UN_GELU_TANH : CT_UN_GELU, a, 0, 0);
}

/* -------------------------------------------------------------- in-place */
static int check_inplace(ct_tensor *a, const char *op) {
    if (!a) return ct_error("%s: NULL tensor argument", op);
    if (ct__check_tensor(a, op)) return -1; /* a released tensor */
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
    if (!ct_is_floating(a->dtype) && !(a->dtype == CT_INT64 && ct_unop_allows_int64(op)))
        return ct_error("%s: dtype %s not supported", name, ct_dtype_name(a->dtype));
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
    if (ct__check_tensor(src, "copy_")) return -1; /* a released tensor */
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
