/* The CUDA backend's own kernels behind the ct_kernels table: tensors are unpacked into
 * raw pointers and geometry structs and handed to the launchers of the .cu files. Each
 * wrapper checks what the CPU kernel checks (dtypes) and reports failures by op name;
 * semantics are those of src/backends/cpu (see the .cu files). They are the cu_k_<name>
 * entries of the kernel table (CT_KERNEL_LIST), with the fused optimizer steps. */
#include "core/half.h"
#include "cuda_host.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(CUK_POOL_NOGRAD == CT_POOL_NOGRAD, "cuda_internal.h's pool code");

/* ---------------------------------------------------------------- geometry */
/* Iteration space over nops tensors of t[0]'s shape: size-1 dims dropped, dims laid out
 * contiguously in every operand merged, stored innermost first. Returns the numel. */
static int64_t make_geom(cuk_geom *g, int nops, const ct_tensor *const *t) {
    const ct_tensor *o = t[0];
    int64_t shape[CUK_MAX_DIMS], st[3][CUK_MAX_DIMS];
    int nd = 0;
    int64_t n = 1;
    for (int d = 0; d < o->ndim; d++) {
        n *= o->shape[d];
        if (o->shape[d] == 1) continue;
        int m = nd;
        if (m > 0) { /* merge with the previous (outer) dim when contiguous in all */
            int ok = 1;
            for (int k = 0; k < nops; k++)
                if (st[k][m - 1] != t[k]->stride[d] * o->shape[d]) ok = 0;
            if (ok) {
                shape[m - 1] *= o->shape[d];
                for (int k = 0; k < nops; k++) st[k][m - 1] = t[k]->stride[d];
                continue;
            }
        }
        shape[nd] = o->shape[d];
        for (int k = 0; k < nops; k++) st[k][nd] = t[k]->stride[d];
        nd++;
    }
    memset(g, 0, sizeof *g);
    if (nd == 0) {
        g->ndim = 1;
        g->shape[0] = 1;
        for (int k = 0; k < 3; k++) g->stride[k][0] = 1;
        return n;
    }
    g->ndim = nd;
    for (int i = 0; i < nd; i++) {
        g->shape[i] = shape[nd - 1 - i];
        for (int k = 0; k < nops; k++) g->stride[k][i] = st[k][nd - 1 - i];
    }
    return n;
}

int64_t cu_make_geom(cuk_geom *g, int nops, const ct_tensor *const *t) {
    return make_geom(g, nops, t);
}

/* The float32 / float64 kernels (a 16-bit operand reaches them widened, cuda_lowp.c). */
static int float_only(ct_dtype dt, const char *op) {
    if (cu_is_float(dt)) return 0;
    return cu_error("%s: dtype %s not supported on cuda (float32, float64, bfloat16 or float16)",
                    op, cu_dtype_name(dt));
}

/* The kernels that take bfloat16 / float16 natively (computed in float, rounded once). */
static int compute_only(ct_dtype dt, const char *op) {
    if (cu_is_float(dt) || cu_is_lowp(dt)) return 0;
    return float_only(dt, op);
}

static int same_dtype(const ct_tensor *a, const ct_tensor *b, const char *op) {
    if (!b || a->dtype == b->dtype) return 0;
    return cu_error("%s: dtypes differ on cuda (%s and %s); convert with ct_to_dtype", op,
                    cu_dtype_name(a->dtype), cu_dtype_name(b->dtype));
}

/* ------------------------------------------------------------- elementwise */
#define BIN_ROW(ID, name, ...) [CT_BIN_##ID] = #name,
static const char *const k_binary_names[CT_BIN_COUNT] = {CT_BINARY_OPS(BIN_ROW)};
#undef BIN_ROW

int cu_k_binary(ct_binop op, ct_tensor *out, const ct_tensor *a, const ct_tensor *b,
                    double alpha) {
    const int to_bool = ct_binop_result_bool((int)op);
    if (to_bool && out->dtype != CT_BOOL)
        return cu_error("comparison op: the output must be bool, got %s", cu_dtype_name(out->dtype));
    if (same_dtype(a, b, "binary op") || (!to_bool && same_dtype(out, a, "binary op"))) return -1;
    if (!cu_is_float(a->dtype) && !cu_is_lowp(a->dtype) && a->dtype != CT_INT64 &&
        !(to_bool && a->dtype == CT_BOOL))
        return cu_error("binary op %s: dtype %s not supported on cuda",
                        k_binary_names[(unsigned)op < CT_BIN_COUNT ? op : 0],
                        cu_dtype_name(a->dtype));
    cu_dev *d = cu_dev_of(out);
    if (!d) return -1;
    cuk_geom g;
    const ct_tensor *ops[3] = {out, a, b};
    int64_t n = make_geom(&g, 3, ops);
    return cu_fail(cuk_binary(&d->k, (int)op, (int)a->dtype, &g, n, cu_ptr(out), cu_ptr(a),
                              cu_ptr(b), alpha),
                   "binary op");
}

/* The unary rows' names and which take int64 (their dtype rule), from the op table (the
 * plugin calls no function of the core). */
#define UN_ROW(ID, name, node, dtypes, ...) [CT_UN_##ID] = {#name, !CT_FLOAT_ONLY_##dtypes},
static const struct {
    const char *name;
    int int64;
} k_unary_rows[CT_UN_COUNT] = {CT_UNARY_OPS(UN_ROW)};
#undef UN_ROW

int cu_k_unary(ct_unop op, ct_tensor *out, const ct_tensor *a, double p1, double p2) {
    if (same_dtype(out, a, "unary op")) return -1;
    if ((unsigned)op >= CT_UN_COUNT) return cu_error("unary op %d: no such op", (int)op);
    if (out->dtype == CT_INT64) {
        if (!k_unary_rows[op].int64)
            return cu_error("%s: dtype int64 not supported for this op; convert to float32 with "
                            "ct_to_dtype",
                            k_unary_rows[op].name);
    } else if (!cu_is_float(out->dtype) && !cu_is_lowp(out->dtype)) {
        return cu_error("%s: dtype %s not supported on cuda; convert to float32 with "
                        "ct_to_dtype",
                        k_unary_rows[op].name, cu_dtype_name(out->dtype));
    }
    cu_dev *d = cu_dev_of(out);
    if (!d) return -1;
    cuk_geom g;
    const ct_tensor *ops[2] = {out, a};
    int64_t n = make_geom(&g, 2, ops);
    return cu_fail(cuk_unary(&d->k, (int)op, (int)out->dtype, &g, n, cu_ptr(out), cu_ptr(a), p1,
                             p2),
                   "unary op");
}

int cu_k_unary_backward(ct_unop op, ct_tensor *gx, const ct_tensor *gy, const ct_tensor *x,
                            const ct_tensor *y, double p1, double p2) {
    if (!cu_is_float(gx->dtype) && !cu_is_lowp(gx->dtype))
        return cu_error("%s backward: dtype %s has no gradient",
                        (unsigned)op < CT_UN_COUNT ? k_unary_rows[op].name : "unary",
                        cu_dtype_name(gx->dtype));
    if (same_dtype(gx, gy, "backward") || same_dtype(gx, x, "backward") ||
        same_dtype(gx, y, "backward"))
        return -1;
    cu_dev *d = cu_dev_of(gx);
    if (!d) return -1;
    return cu_fail(cuk_unary_backward(&d->k, (int)op, (int)gx->dtype, cu_numel(gx), cu_ptr(gx),
                                      cu_ptr(gy), x ? cu_ptr(x) : NULL, y ? cu_ptr(y) : NULL, p1,
                                      p2),
                   "backward");
}

int cu_k_copy(ct_tensor *dst, const ct_tensor *src) {
    if ((unsigned)dst->dtype >= CT_NUM_DTYPES || (unsigned)src->dtype >= CT_NUM_DTYPES)
        return cu_error("copy: invalid dtype");
    cu_dev *d = cu_dev_of(dst);
    if (!d) return -1;
    cuk_geom g;
    const ct_tensor *ops[2] = {dst, src};
    int64_t n = make_geom(&g, 2, ops);
    return cu_fail(cuk_copy(&d->k, (int)dst->dtype, (int)src->dtype, &g, n, cu_ptr(dst),
                            cu_ptr(src)),
                   "copy");
}

/* The element's bytes for `value`, converted like the CPU's store_double. */
static uint64_t fill_bits(ct_dtype dt, double v) {
    unsigned char b[8] = {0};
    switch (dt) {
    case CT_FLOAT32: { float f = (float)v; memcpy(b, &f, 4); break; }
    case CT_FLOAT64: memcpy(b, &v, 8); break;
    case CT_INT64: { int64_t i = (int64_t)v; memcpy(b, &i, 8); break; }
    case CT_INT32: { int32_t i = (int32_t)v; memcpy(b, &i, 4); break; }
    case CT_UINT8: b[0] = (uint8_t)(int)v; break;
    case CT_BFLOAT16: { uint16_t h = ct_f32_to_bf16((float)v); memcpy(b, &h, 2); break; }
    case CT_FLOAT16: { uint16_t h = ct_f32_to_f16((float)v); memcpy(b, &h, 2); break; }
    case CT_BOOL: b[0] = v != 0; break;
    default: break;
    }
    uint64_t bits;
    memcpy(&bits, b, 8);
    return bits;
}

int cu_k_fill(ct_tensor *t, double value) {
    if ((unsigned)t->dtype >= CT_NUM_DTYPES) return cu_error("fill: invalid dtype");
    cu_dev *d = cu_dev_of(t);
    if (!d) return -1;
    cuk_geom g;
    const ct_tensor *ops[1] = {t};
    int64_t n = make_geom(&g, 1, ops);
    const uint64_t bits = fill_bits(t->dtype, value);
    return cu_fail(cuk_fill(&d->k, cu_dsize(t->dtype), &g, n, cu_ptr(t), bits), "fill");
}

/* --------------------------------------------------------------- reduction */
int cu_k_reduce(ct_redop op, ct_tensor *out, ct_tensor *indices, const ct_tensor *a,
                    const int *reduce) {
    if (!cu_is_float(a->dtype) && !cu_is_lowp(a->dtype) && a->dtype != CT_INT64 &&
        a->dtype != CT_BOOL)
        return cu_error("reduce: dtype %s not supported on cuda", cu_dtype_name(a->dtype));
    if (!cu_is_float(out->dtype) && !cu_is_lowp(out->dtype) && out->dtype != CT_INT64 &&
        out->dtype != CT_BOOL)
        return cu_error("reduce: output dtype %s not supported on cuda", cu_dtype_name(out->dtype));
    cuk_red_geom g;
    memset(&g, 0, sizeof g);
    int64_t ks[CUK_MAX_DIMS], kst[CUK_MAX_DIMS], rs[CUK_MAX_DIMS], rst[CUK_MAX_DIMS];
    int nk = 0, nr = 0;
    g.rcount = 1;
    for (int d = 0; d < a->ndim; d++) {
        if (reduce[d]) {
            g.rcount *= a->shape[d];
            if (a->shape[d] == 1) continue;
            rs[nr] = a->shape[d];
            rst[nr++] = a->stride[d];
        } else {
            if (a->shape[d] == 1) continue;
            ks[nk] = a->shape[d];
            kst[nk++] = a->stride[d];
        }
    }
    if (op == CT_RED_MAX && g.rcount == 0)
        return cu_error("max: cannot reduce over an empty dimension (no identity)");
    for (int i = 0; i < nk; i++) {
        g.kshape[i] = ks[nk - 1 - i];
        g.kstride[i] = kst[nk - 1 - i];
    }
    for (int i = 0; i < nr; i++) {
        g.rshape[i] = rs[nr - 1 - i];
        g.rstride[i] = rst[nr - 1 - i];
    }
    if (nr == 0) { /* nothing (or only size-1 dims) reduced */
        nr = 1;
        g.rshape[0] = 1;
        g.rstride[0] = 0;
    }
    g.nk = nk;
    g.nr = nr;
    g.nout = cu_numel(out);
    if (indices && indices->dtype != CT_INT64) return cu_error("max: indices must be int64");
    cu_dev *d = cu_dev_of(out);
    if (!d) return -1;
    return cu_fail(cuk_reduce(&d->k, (int)op, (int)a->dtype, (int)out->dtype, &g, cu_ptr(a),
                              cu_ptr(out), indices ? (int64_t *)cu_ptr(indices) : NULL),
                   op == CT_RED_MAX    ? "max"
                   : op == CT_RED_MEAN ? "mean"
                   : op == CT_RED_ANY  ? "any"
                   : op == CT_RED_ALL  ? "all"
                                       : "sum");
}

/* ----------------------------------------------------------------- pooling */
static void pool_geom(cuk_pool *q, const ct_tensor *big, const ct_tensor *small,
                      const ct_pool_params *p) {
    memset(q, 0, sizeof *q);
    q->NC = big->shape[0] * big->shape[1];
    q->H = big->shape[2];
    q->W = big->shape[3];
    q->Ho = small->shape[2];
    q->Wo = small->shape[3];
    if (p) {
        q->kh = p->kernel[0];
        q->kw = p->kernel[1];
        q->sh = p->stride[0];
        q->sw = p->stride[1];
        q->ph = p->padding[0];
        q->pw = p->padding[1];
        q->dh = p->dilation[0] > 0 ? p->dilation[0] : 1;
        q->dw = p->dilation[1] > 0 ? p->dilation[1] : 1;
        q->count_include_pad = p->count_include_pad;
    }
}

static int pool_check(const ct_tensor *big, const ct_tensor *small, const ct_pool_params *p,
                      const char *op) {
    if (compute_only(big->dtype, op) || same_dtype(big, small, op)) return -1;
    if (big->ndim != 4 || small->ndim != 4)
        return cu_error("%s: expected 4-D input and output on cuda", op);
    if (p && (p->stride[0] < 1 || p->stride[1] < 1))
        return cu_error("%s: stride must be > 0", op);
    return 0;
}

int cu_k_max_pool2d_forward(ct_tensor *y, ct_tensor *ind, const ct_tensor *x,
                          const ct_pool_params *p) {
    if (pool_check(x, y, p, "max_pool2d")) return -1;
    cu_dev *d = cu_dev_of(x);
    if (!d) return -1;
    cuk_pool q;
    pool_geom(&q, x, y, p);
    return cu_fail(cuk_max_pool_fwd(&d->k, (int)x->dtype, &q, cu_ptr(x), cu_ptr(y),
                                    (int64_t *)cu_ptr(ind)),
                   "max_pool2d");
}

int cu_k_max_pool2d_backward(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *ind,
                          const ct_pool_params *p) {
    if (pool_check(gx, gy, p, "max_pool2d backward")) return -1;
    cu_dev *d = cu_dev_of(gx);
    if (!d) return -1;
    cuk_pool q;
    pool_geom(&q, gx, gy, p);
    return cu_fail(cuk_max_pool_bwd(&d->k, (int)gx->dtype, &q, cu_ptr(gy),
                                    (const int64_t *)cu_ptr(ind), cu_ptr(gx)),
                   "max_pool2d backward");
}

/* Window codes: uint8, contiguous, one per output; windows of fewer than 255 elements. */
static int codes_check(const ct_tensor *codes, const ct_tensor *small, const ct_pool_params *p,
                       const char *op) {
    if (p->kernel[0] * p->kernel[1] >= CT_POOL_NOGRAD)
        return cu_error("%s: window %dx%d too large for window codes", op, p->kernel[0],
                        p->kernel[1]);
    if (codes && (codes->dtype != CT_UINT8 || !cu_is_contiguous(codes) ||
                  cu_numel(codes) != cu_numel(small)))
        return cu_error("%s: window codes must be a contiguous uint8 tensor of the output's "
                        "shape",
                        op);
    return 0;
}

int cu_k_max_pool2d_codes_forward(ct_tensor *y, ct_tensor *codes, const ct_tensor *x,
                                const ct_pool_params *p, int relu) {
    if (pool_check(x, y, p, "max_pool2d") || codes_check(codes, y, p, "max_pool2d")) return -1;
    cu_dev *d = cu_dev_of(x);
    if (!d) return -1;
    cuk_pool q;
    pool_geom(&q, x, y, p);
    return cu_fail(cuk_max_pool_codes_fwd(&d->k, (int)x->dtype, &q, cu_ptr(x), cu_ptr(y),
                                          codes ? (uint8_t *)cu_ptr(codes) : NULL, relu),
                   "max_pool2d");
}

int cu_k_max_pool2d_codes_backward(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *codes,
                                const ct_pool_params *p) {
    if (pool_check(gx, gy, p, "max_pool2d backward") ||
        codes_check(codes, gy, p, "max_pool2d backward"))
        return -1;
    if (!codes) return cu_error("max_pool2d backward: window codes are NULL");
    cu_dev *d = cu_dev_of(gx);
    if (!d) return -1;
    cuk_pool q;
    pool_geom(&q, gx, gy, p);
    return cu_fail(cuk_max_pool_codes_bwd(&d->k, (int)gx->dtype, &q, cu_ptr(gy),
                                          (const uint8_t *)cu_ptr(codes), cu_ptr(gx)),
                   "max_pool2d backward");
}

int cu_k_avg_pool2d_forward(ct_tensor *y, const ct_tensor *x, const ct_pool_params *p) {
    if (pool_check(x, y, p, "avg_pool2d")) return -1;
    cu_dev *d = cu_dev_of(x);
    if (!d) return -1;
    cuk_pool q;
    pool_geom(&q, x, y, p);
    return cu_fail(cuk_avg_pool_fwd(&d->k, (int)x->dtype, &q, cu_ptr(x), cu_ptr(y)), "avg_pool2d");
}

int cu_k_avg_pool2d_backward(ct_tensor *gx, const ct_tensor *gy, const ct_pool_params *p) {
    if (pool_check(gx, gy, p, "avg_pool2d backward")) return -1;
    cu_dev *d = cu_dev_of(gx);
    if (!d) return -1;
    cuk_pool q;
    pool_geom(&q, gx, gy, p);
    return cu_fail(cuk_avg_pool_bwd(&d->k, (int)gx->dtype, &q, cu_ptr(gy), cu_ptr(gx)),
                   "avg_pool2d backward");
}

int cu_k_adaptive_avg_pool2d_forward(ct_tensor *y, const ct_tensor *x) {
    if (pool_check(x, y, NULL, "adaptive_avg_pool2d")) return -1;
    cu_dev *d = cu_dev_of(x);
    if (!d) return -1;
    cuk_pool q;
    pool_geom(&q, x, y, NULL);
    if (q.Ho == 0 || q.Wo == 0) return 0;
    return cu_fail(cuk_adaptive_pool_fwd(&d->k, (int)x->dtype, &q, cu_ptr(x), cu_ptr(y)),
                   "adaptive_avg_pool2d");
}

int cu_k_adaptive_avg_pool2d_backward(ct_tensor *gx, const ct_tensor *gy) {
    if (pool_check(gx, gy, NULL, "adaptive_avg_pool2d backward")) return -1;
    cu_dev *d = cu_dev_of(gx);
    if (!d) return -1;
    cuk_pool q;
    pool_geom(&q, gx, gy, NULL);
    if (q.Ho == 0 || q.Wo == 0) {
        cuk_geom g;
        const ct_tensor *ops[1] = {gx};
        int64_t n = make_geom(&g, 1, ops);
        return cu_fail(cuk_fill(&d->k, cu_dsize(gx->dtype), &g, n, cu_ptr(gx), 0),
                       "adaptive_avg_pool2d backward");
    }
    return cu_fail(cuk_adaptive_pool_bwd(&d->k, (int)gx->dtype, &q, cu_ptr(gy), cu_ptr(gx)),
                   "adaptive_avg_pool2d backward");
}

/* ---------------------------------------------------------- softmax, loss */
static void sm_split(const ct_tensor *t, int dim, int64_t *outer, int64_t *C, int64_t *inner) {
    int64_t o = 1, c = 1, in = 1;
    for (int d = 0; d < t->ndim; d++) {
        if (d < dim) o *= t->shape[d];
        else if (d == dim) c = t->shape[d];
        else in *= t->shape[d];
    }
    *outer = o;
    *C = c;
    *inner = in;
}

int cu_k_softmax_forward_full(ct_tensor *y, const ct_tensor *x, int dim, int log) {
    const char *op = log ? "log_softmax" : "softmax";
    if (float_only(x->dtype, op) || same_dtype(x, y, op)) return -1;
    cu_dev *d = cu_dev_of(x);
    if (!d) return -1;
    int64_t outer, C, inner;
    sm_split(x, dim, &outer, &C, &inner);
    return cu_fail(cuk_softmax_fwd(&d->k, (int)x->dtype, outer, C, inner, log, cu_ptr(x),
                                   cu_ptr(y)),
                   op);
}

int cu_k_softmax_backward_full(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *y, int dim, int log) {
    const char *op = log ? "log_softmax backward" : "softmax backward";
    if (float_only(y->dtype, op) || same_dtype(y, gy, op) || same_dtype(y, gx, op)) return -1;
    cu_dev *d = cu_dev_of(y);
    if (!d) return -1;
    int64_t outer, C, inner;
    sm_split(y, dim, &outer, &C, &inner);
    return cu_fail(cuk_softmax_bwd(&d->k, (int)y->dtype, outer, C, inner, log, cu_ptr(y),
                                   cu_ptr(gy), cu_ptr(gx)),
                   op);
}

static const char k_target_fmt[] =
    "nll_loss: target %lld at position %lld is out of bounds for %lld classes (targets must "
    "be in [0, %lld) or equal ignore_index)";

int cu_k_nll_loss_forward_full(ct_tensor *out, ct_tensor *tw, const ct_tensor *logp, const ct_tensor *target,
                     ct_reduction red, int64_t ignore_index) {
    if (float_only(logp->dtype, "nll_loss") || same_dtype(logp, out, "nll_loss") ||
        same_dtype(logp, tw, "nll_loss"))
        return -1;
    if (target->dtype != CT_INT64) return cu_error("nll_loss: target must be int64");
    cu_dev *d = cu_dev_of(logp);
    if (!d) return -1;
    int rc = cu_fail(cuk_nll_fwd(&d->k, (int)logp->dtype, logp->shape[0], logp->shape[1],
                                 (int)red, ignore_index, cu_ptr(logp),
                                 (const int64_t *)cu_ptr(target), cu_ptr(out),
                                 tw ? cu_ptr(tw) : NULL, cu_flag_kind(k_target_fmt)),
                     "nll_loss");
    return rc ? rc : cu_flag_raised(d, "nll_loss");
}

int cu_k_nll_loss_backward_full(ct_tensor *glogp, const ct_tensor *gout, const ct_tensor *target,
                     const ct_tensor *tw, ct_reduction red, int64_t ignore_index) {
    const char *op = "nll_loss backward";
    if (float_only(glogp->dtype, op) || same_dtype(glogp, gout, op) || same_dtype(glogp, tw, op))
        return -1;
    if (target->dtype != CT_INT64) return cu_error("%s: target must be int64", op);
    cu_dev *d = cu_dev_of(glogp);
    if (!d) return -1;
    int rc = cu_fail(cuk_nll_bwd(&d->k, (int)glogp->dtype, glogp->shape[0], glogp->shape[1],
                                 (int)red, ignore_index, cu_ptr(gout),
                                 (const int64_t *)cu_ptr(target), tw ? cu_ptr(tw) : NULL,
                                 cu_ptr(glogp), cu_flag_kind(k_target_fmt)),
                     op);
    return rc ? rc : cu_flag_raised(d, op);
}

/* ------------------------------------------------------------- normalisation */
static cuk_vec vec(const ct_tensor *t) {
    cuk_vec v = {NULL, 0};
    if (t) {
        v.p = cu_ptr(t);
        v.stride = t->ndim > 0 ? t->stride[0] : 0;
    }
    return v;
}

static void bn_dims(const ct_tensor *x, int64_t *N, int64_t *C, int64_t *S) {
    *N = x->ndim > 0 ? x->shape[0] : 1;
    *C = x->ndim > 1 ? x->shape[1] : 1;
    *S = 1;
    for (int d = 2; d < x->ndim; d++) *S *= x->shape[d];
}

int cu_k_batch_norm_forward_full(ct_tensor *y, ct_tensor *save_mean, ct_tensor *save_invstd, const ct_tensor *x,
                    const ct_tensor *weight, const ct_tensor *bias, ct_tensor *running_mean,
                    ct_tensor *running_var, int training, double momentum, double eps) {
    const char *op = "batch_norm";
    if (float_only(x->dtype, op) || same_dtype(x, y, op) || same_dtype(x, save_mean, op) ||
        same_dtype(x, save_invstd, op) || same_dtype(x, weight, op) || same_dtype(x, bias, op) ||
        same_dtype(x, running_mean, op) || same_dtype(x, running_var, op))
        return -1;
    if (!training && (!running_mean || !running_var))
        return cu_error("batch_norm: evaluation mode needs running_mean and running_var");
    cu_dev *d = cu_dev_of(x);
    if (!d) return -1;
    int64_t N, C, S;
    bn_dims(x, &N, &C, &S);
    return cu_fail(cuk_bn_fwd(&d->k, (int)x->dtype, N, C, S, cu_ptr(x), vec(weight), vec(bias),
                              vec(running_mean), vec(running_var), training, momentum, eps,
                              cu_ptr(y), vec(save_mean), vec(save_invstd)),
                   op);
}

int cu_k_batch_norm_backward_full(ct_tensor *gx, ct_tensor *gw, ct_tensor *gb, const ct_tensor *gy,
                    const ct_tensor *x, const ct_tensor *weight, const ct_tensor *save_mean,
                    const ct_tensor *save_invstd, int training) {
    const char *op = "batch_norm_backward";
    if (float_only(x->dtype, op) || same_dtype(x, gx, op) || same_dtype(x, gw, op) ||
        same_dtype(x, gb, op) || same_dtype(x, gy, op) || same_dtype(x, weight, op) ||
        same_dtype(x, save_mean, op) || same_dtype(x, save_invstd, op))
        return -1;
    if (!save_mean || !save_invstd)
        return cu_error("batch_norm_backward: saved mean and invstd are required");
    cu_dev *d = cu_dev_of(x);
    if (!d) return -1;
    int64_t N, C, S;
    bn_dims(x, &N, &C, &S);
    return cu_fail(cuk_bn_bwd(&d->k, (int)x->dtype, N, C, S, cu_ptr(gy), cu_ptr(x), vec(weight),
                              vec(save_mean), vec(save_invstd), training,
                              gx ? cu_ptr(gx) : NULL, vec(gw), vec(gb)),
                   op);
}

int cu_k_layer_norm_forward_full(ct_tensor *y, ct_tensor *mean, ct_tensor *rstd, const ct_tensor *x,
                    const ct_tensor *weight, const ct_tensor *bias, int64_t M, int64_t N,
                    double eps) {
    const char *op = "layer_norm";
    if (float_only(x->dtype, op) || same_dtype(x, y, op) || same_dtype(x, mean, op) ||
        same_dtype(x, rstd, op) || same_dtype(x, weight, op) || same_dtype(x, bias, op))
        return -1;
    cu_dev *d = cu_dev_of(x);
    if (!d) return -1;
    return cu_fail(cuk_ln_fwd(&d->k, (int)x->dtype, M, N, cu_ptr(x),
                              weight ? cu_ptr(weight) : NULL, bias ? cu_ptr(bias) : NULL, eps,
                              cu_ptr(y), cu_ptr(mean), cu_ptr(rstd)),
                   op);
}

int cu_k_layer_norm_backward_full(ct_tensor *gx, ct_tensor *gw, ct_tensor *gb, const ct_tensor *gy,
                    const ct_tensor *x, const ct_tensor *mean, const ct_tensor *rstd,
                    const ct_tensor *weight, int64_t M, int64_t N) {
    const char *op = "layer_norm_backward";
    if (float_only(x->dtype, op) || same_dtype(x, gx, op) || same_dtype(x, gw, op) ||
        same_dtype(x, gb, op) || same_dtype(x, gy, op) || same_dtype(x, mean, op) ||
        same_dtype(x, rstd, op) || same_dtype(x, weight, op))
        return -1;
    cu_dev *d = cu_dev_of(x);
    if (!d) return -1;
    return cu_fail(cuk_ln_bwd(&d->k, (int)x->dtype, M, N, cu_ptr(gy), cu_ptr(x), cu_ptr(mean),
                              cu_ptr(rstd), weight ? cu_ptr(weight) : NULL,
                              gx ? cu_ptr(gx) : NULL, gw ? cu_ptr(gw) : NULL,
                              gb ? cu_ptr(gb) : NULL),
                   op);
}


/* -------------------------------------------------------- fused optimizers */
/* Checks that lists[j][i] (j < nlists, entries may be NULL for lists allowed to be NULL)
 * are contiguous CUDA tensors on one device with params[i]'s dtype and numel. */
static cu_dev *optim_check(const char *op, int n, ct_tensor *const *const *lists, int nlists,
                           const char *const *names, ct_dtype *dt) {
    if (n <= 0) return NULL;
    if (!lists[0] || !lists[0][0]) return cu_error_null("%s: NULL parameter list", op);
    const ct_tensor *p0 = lists[0][0];
    *dt = p0->dtype;
    if (!cu_is_float(*dt))
        return cu_error_null("%s: parameters must be float32 or float64, not %s", op,
                             cu_dtype_name(*dt));
    for (int i = 0; i < n; i++)
        for (int j = 0; j < nlists; j++) {
            const ct_tensor *t = lists[j] ? lists[j][i] : NULL;
            if (!t) return cu_error_null("%s: %s[%d] is NULL", op, names[j], i);
            if (t->storage->device.type != CT_CUDA ||
                t->storage->device.index != p0->storage->device.index)
                return cu_error_null("%s: %s[%d] is not on cuda:%d like the first parameter", op,
                                     names[j], i, p0->storage->device.index);
            if (t->dtype != *dt || cu_numel(t) != cu_numel(lists[0][i]) || !cu_is_contiguous(t))
                return cu_error_null("%s: %s[%d] must be contiguous, %s, with the parameter's "
                                     "number of elements",
                                     op, names[j], i, cu_dtype_name(*dt));
        }
    return cu_dev_of(p0);
}

/* The kernel table's sgd_step / adam_step: a whole list of parameters in a few launches
 * (the optimizer bumps the version counters). */
static int pack_lists(const char *op, int n, int nlists, ct_tensor *const *const *lists,
                      void ***ptr, int64_t **numel) {
    *ptr = malloc(sizeof(void *) * (size_t)nlists * (size_t)n);
    *numel = malloc(sizeof(int64_t) * (size_t)n);
    if (!*ptr || !*numel) {
        free(*ptr);
        free(*numel);
        return cu_error("%s: out of host memory", op);
    }
    for (int j = 0; j < nlists; j++)
        for (int i = 0; i < n; i++) (*ptr)[j * n + i] = lists[j] ? cu_ptr(lists[j][i]) : NULL;
    for (int i = 0; i < n; i++) (*numel)[i] = cu_numel(lists[0][i]);
    return 0;
}

int cu_k_sgd_step(ct_tensor *const *params, ct_tensor *const *grads, ct_tensor *const *bufs,
                  int n, const ct_sgd_args *a, int first_step) {
    const char *op = "sgd_step (cuda)";
    if (n <= 0) return 0;
    ct_tensor *const *lists[3] = {params, grads, a->momentum != 0 ? bufs : NULL};
    const char *names[3] = {"params", "grads", "momentum_bufs"};
    ct_dtype dt = CT_FLOAT32;
    cu_dev *d = optim_check(op, n, lists, a->momentum != 0 ? 3 : 2, names, &dt);
    void **ptr;
    int64_t *numel;
    if (!d || pack_lists(op, n, 3, lists, &ptr, &numel) != 0) return -1;
    int rc = cu_fail(cuk_sgd(&d->k, (int)dt, n, ptr, (const void *const *)(ptr + n), ptr + 2 * n,
                             numel, a->lr, a->momentum, a->dampening, a->weight_decay,
                             a->nesterov, a->maximize, first_step),
                     op);
    free(ptr);
    free(numel);
    return rc;
}

int cu_k_adam_step(ct_tensor *const *params, ct_tensor *const *grads, ct_tensor *const *exp_avg,
                   ct_tensor *const *exp_avg_sq, ct_tensor *const *max_exp_avg_sq, int n,
                   const ct_adam_args *a) {
    const char *op = a->decoupled ? "adamw_step (cuda)" : "adam_step (cuda)";
    if (n <= 0) return 0;
    if (a->step < 1) return cu_error("%s: step must be >= 1 (got %lld)", op, (long long)a->step);
    ct_tensor *const *lists[5] = {params, grads, exp_avg, exp_avg_sq,
                                  a->amsgrad ? max_exp_avg_sq : NULL};
    const char *names[5] = {"params", "grads", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
    ct_dtype dt = CT_FLOAT32;
    cu_dev *d = optim_check(op, n, lists, a->amsgrad ? 5 : 4, names, &dt);
    void **ptr;
    int64_t *numel;
    if (!d || pack_lists(op, n, 5, lists, &ptr, &numel) != 0) return -1;
    const double bc1 = 1.0 - pow(a->beta1, (double)a->step);
    const double bc2 = 1.0 - pow(a->beta2, (double)a->step);
    int rc = cu_fail(cuk_adam(&d->k, (int)dt, n, ptr, (const void *const *)(ptr + n), ptr + 2 * n,
                              ptr + 3 * n, ptr + 4 * n, numel, a->lr, a->beta1, a->beta2, a->eps,
                              a->weight_decay, a->decoupled, a->amsgrad, a->maximize, bc1, bc2),
                     op);
    free(ptr);
    free(numel);
    return rc;
}

/* The kernel table's amp_unscale: the whole list of gradients in a few launches. */
int cu_k_amp_unscale(ct_tensor *const *grads, int n, ct_tensor *found_inf, double inv_scale) {
    const char *op = "amp_unscale (cuda)";
    if (n <= 0) return 0;
    if (found_inf->dtype != CT_FLOAT32 || cu_numel(found_inf) != 1 ||
        found_inf->storage->device.type != CT_CUDA)
        return cu_error("%s: found_inf must be a 1-element float32 cuda tensor", op);
    const ct_dtype dt = grads[0]->dtype;
    if (dt != CT_FLOAT32 && dt != CT_FLOAT64 && dt != CT_FLOAT16 && dt != CT_BFLOAT16)
        return cu_error("%s: gradients must be float32, float64, float16 or bfloat16, not %s",
                        op, cu_dtype_name(dt));
    for (int i = 0; i < n; i++) {
        const ct_tensor *g = grads[i];
        if (g->storage->device.type != CT_CUDA ||
            g->storage->device.index != found_inf->storage->device.index)
            return cu_error("%s: grads[%d] is not on cuda:%d like found_inf", op, i,
                            found_inf->storage->device.index);
        if (g->dtype != dt || !cu_is_contiguous(g))
            return cu_error("%s: grads[%d] must be contiguous and %s like grads[0]", op, i,
                            cu_dtype_name(dt));
    }
    cu_dev *d = cu_dev_of(found_inf);
    ct_tensor *const *lists[1] = {grads};
    void **ptr;
    int64_t *numel;
    if (!d || pack_lists(op, n, 1, lists, &ptr, &numel) != 0) return -1;
    int rc = cu_fail(cuk_amp_unscale(&d->k, (int)dt, n, ptr, numel, (float *)cu_ptr(found_inf),
                                     inv_scale),
                     op);
    free(ptr);
    free(numel);
    return rc;
}

/* ------------------------------------------------------------------ dropout */
int cu_k_dropout_forward(ct_tensor *y, ct_tensor *mask, const ct_tensor *x, const ct_tensor *u,
                         double p) {
    if (compute_only(y->dtype, "dropout") || same_dtype(y, x, "dropout") ||
        same_dtype(y, mask, "dropout"))
        return -1;
    /* the uniforms: y's dtype, or float32 beside a 16-bit y (as the op layer draws them) */
    if (u->dtype != y->dtype && !(cu_is_lowp(y->dtype) && u->dtype == CT_FLOAT32))
        return cu_error("dropout: uniforms of dtype %s beside a %s input on cuda",
                        cu_dtype_name(u->dtype), cu_dtype_name(y->dtype));
    cu_dev *d = cu_dev_of(y);
    if (!d) return -1;
    return cu_fail(cuk_dropout(&d->k, (int)y->dtype, (int)u->dtype, cu_numel(y), cu_ptr(y),
                               cu_ptr(mask), cu_ptr(x), cu_ptr(u), p),
                   "dropout");
}

/* ---------------------------------------------------- fused cross_entropy */
int cu_k_cross_entropy_forward_full(ct_tensor *out, ct_tensor *logp, ct_tensor *total_weight,
                               const ct_tensor *logits, const ct_tensor *target,
                               ct_reduction red, int64_t ignore_index, double label_smoothing) {
    const char *op = "cross_entropy";
    if (float_only(logits->dtype, op)) return -1;
    cu_dev *d = cu_dev_of(logits);
    if (!d) return -1;
    const int64_t N = logits->shape[0], C = logits->shape[1];
    const size_t bytes = (size_t)(N * C) * cu_dsize(logits->dtype);
    void *lp = logp ? cu_ptr(logp) : (bytes ? d->k.ws_alloc(bytes, d->index) : NULL);
    if (!lp && bytes) return -1;
    int rc = cu_fail(cuk_softmax_fwd(&d->k, (int)logits->dtype, N, C, 1, 1, cu_ptr(logits), lp),
                     op);
    if (rc == 0)
        rc = cu_fail(cuk_ce_fwd(&d->k, (int)logits->dtype, N, C, (int)red, ignore_index,
                                label_smoothing, lp, (const int64_t *)cu_ptr(target), cu_ptr(out),
                                total_weight ? cu_ptr(total_weight) : NULL,
                                cu_flag_kind(k_target_fmt)),
                     op);
    if (!logp && lp) d->k.ws_free(lp, d->index); /* stream-ordered: safe after the launch */
    return rc ? rc : cu_flag_raised(d, op);
}

int cu_k_cross_entropy_backward_full(ct_tensor *glogits, const ct_tensor *gout, const ct_tensor *logp,
                                const ct_tensor *target, const ct_tensor *total_weight,
                                ct_reduction red, int64_t ignore_index, double label_smoothing) {
    const char *op = "cross_entropy backward";
    if (float_only(glogits->dtype, op) || same_dtype(glogits, gout, op)) return -1;
    cu_dev *d = cu_dev_of(glogits);
    if (!d) return -1;
    int rc = cu_fail(cuk_ce_bwd(&d->k, (int)glogits->dtype, glogits->shape[0], glogits->shape[1],
                                (int)red, ignore_index, label_smoothing, cu_ptr(gout),
                                cu_ptr(logp), (const int64_t *)cu_ptr(target),
                                total_weight ? cu_ptr(total_weight) : NULL, cu_ptr(glogits),
                                cu_flag_kind(k_target_fmt)),
                     op);
    return rc ? rc : cu_flag_raised(d, op);
}
