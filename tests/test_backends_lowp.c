/* The backend conformance suite in bfloat16 and float16 (autocast's compute dtypes): the
 * kernels autocast's activations reach -- GEMM, the convolutions and the fused
 * conv+ReLU+pool, the elementwise ops and their derivatives, reductions, every pooling
 * kernel, batch norm with float32 parameters and statistics beside a 16-bit input,
 * softmax, the losses on 16-bit logits, layer norm, dropout, embedding -- run on every
 * backend other than the CPU against the CPU, on the same 16-bit inputs. The CPU computes
 * them in float32 and rounds once (src/backends/cpu/cpu_lowp.c); so does the CUDA plugin
 * (src/backends/cuda/cuda_lowp.c), natively or through float32 stand-ins, and cuBLAS /
 * cuDNN accumulate in float32. GEMMs and convolutions may therefore differ by a rounding
 * of the 16-bit output (relative error norm within 1e-2 for bfloat16, 2e-3 for float16);
 * the other kernels compute what the CPU computes and must agree but for a rare rounding
 * flip (1e-3, 2e-4: tight enough to catch a wrong rounding mode); window codes, indices,
 * comparisons, max pooling and dropout are exact.
 *
 * Then the op layer under autocast: a CUDA region runs softmax in float32 (PyTorch's CUDA
 * rule, ct_backend.autocast_fp32) where a CPU region keeps bfloat16, and a small CNN trains
 * one step under autocast on both devices.
 *
 * Skipped, with the reason, where no backend other than the CPU can run; run on the CUDA
 * emulator by tests/test_cuda_emu.c. */
#include "backend_test.h"

#include "core/autocast.h"

#include <string.h>

static const ct_dtype k_lowp[2] = {CT_BFLOAT16, CT_FLOAT16};
/* GEMMs and convolutions: cuBLAS / cuDNN sum in another order than the CPU, and the CUDA
 * convolution rounds before its bias add, so an output may be a 16-bit rounding away. */
static double tol_lp(ct_dtype dt) { return dt == CT_BFLOAT16 ? 1e-2 : 2e-3; }
/* The rest computes what the CPU computes, in float32, rounded once: only a float32
 * difference of the GPU's math library can flip a rounding, rarely (a wrong rounding mode
 * -- truncation -- gives about 4e-3 in bfloat16, 5e-4 in float16). */
static double tol_same(ct_dtype dt) { return dt == CT_BFLOAT16 ? 1e-3 : 2e-4; }

/* A 16-bit test tensor on the CPU and the device: rnd's values rounded to dt. */
static tp lp_rnd(const int64_t *sh, int nd, ct_dtype dt, int kind, ct_device dev) {
    return tp_rnd(sh, nd, dt, kind, dev);
}

/* ---------------------------------------------------------------------- bmm */
static void case_lowp_bmm(ct_device dev, const ct_kernels *k, const char *bname) {
    for (int di = 0; di < 2; di++) {
        const ct_dtype dt = k_lowp[di];
        const int64_t B = 3, M = 9, K = 37, N = 6;
        int64_t sa[3] = {B, M, K}, sb[3] = {B, K, N}, sc[3] = {B, M, N};
        int64_t saT[3] = {B, K, M}, sbT[3] = {B, N, K}, sa1[3] = {1, M, K};
        for (int variant = 0; variant < 5; variant++) {
            tp a, b, a0 = {NULL, NULL}, b0 = {NULL, NULL}, bias = {NULL, NULL};
            double alpha = 1, beta = 0;
            if (variant == 0) {
                a = lp_rnd(sa, 3, dt, 0, dev);
                b = lp_rnd(sb, 3, dt, 0, dev);
            } else if (variant == 1) { /* both transposed */
                a0 = lp_rnd(saT, 3, dt, 0, dev), b0 = lp_rnd(sbT, 3, dt, 0, dev);
                a = tp_transpose(a0, 1, 2), b = tp_transpose(b0, 1, 2);
                alpha = 0.75;
            } else if (variant == 2) { /* a broadcast over the batch, beta != 0 */
                a0 = lp_rnd(sa1, 3, dt, 0, dev);
                a.c = ct_expand(a0.c, sa, 3), a.d = ct_expand(a0.d, sa, 3);
                b = lp_rnd(sb, 3, dt, 0, dev);
                beta = 0.5;
            } else if (variant == 4) { /* a column bias (a linear layer's) */
                a = lp_rnd(sa, 3, dt, 0, dev);
                b = lp_rnd(sb, 3, dt, 0, dev);
                int64_t n1 = N;
                bias = lp_rnd(&n1, 1, dt, 0, dev);
            } else { /* b transposed, alpha and beta */
                a = lp_rnd(sa, 3, dt, 0, dev);
                b0 = lp_rnd(sbT, 3, dt, 0, dev), b = tp_transpose(b0, 1, 2);
                alpha = -1.5, beta = 1;
            }
            tp c = lp_rnd(sc, 3, dt, 0, dev);
            char what[96];
            snprintf(what, sizeof what, "bmm variant %d %s", variant, ct_dtype_name(dt));
            KCALL(what, cpuk()->bmm(c.c, a.c, b.c, bias.c, alpha, beta),
                  k->bmm(c.d, a.d, b.d, bias.d, alpha, beta));
            tp_check(c, tol_lp(dt), what, bname);
            tp_free(a), tp_free(b), tp_free(a0), tp_free(b0), tp_free(c), tp_free(bias);
        }
    }
}
BACKEND_CASE(bmm, case_lowp_bmm)

/* ------------------------------------------------------------------- conv2d */
typedef struct {
    int64_t x[4], w[4];
    ct_conv_params p;
} lp_conv;

static const lp_conv k_lp_convs[] = {
    {{2, 4, 9, 8}, {6, 2, 3, 3}, {{2, 1}, {1, 1}, {1, 2}, 2}},  /* groups, dilation, stride */
    {{2, 3, 10, 10}, {8, 3, 3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}}, /* a 3x3 "same" layer */
    {{3, 5, 7, 7}, {4, 5, 1, 1}, {{1, 1}, {0, 0}, {1, 1}, 1}},   /* 1x1 */
};

static void conv_out(const lp_conv *s, int64_t *y) {
    y[0] = s->x[0], y[1] = s->w[0];
    for (int i = 0; i < 2; i++)
        y[2 + i] = (s->x[2 + i] + 2 * s->p.padding[i] - s->p.dilation[i] * (s->w[2 + i] - 1) - 1) /
                       s->p.stride[i] + 1;
}

static void lowp_conv(ct_device dev, const ct_kernels *k, const char *bname, int dir) {
    for (int di = 0; di < 2; di++)
        for (size_t i = 0; i < sizeof k_lp_convs / sizeof *k_lp_convs; i++) {
            const ct_dtype dt = k_lowp[di];
            const lp_conv *s = &k_lp_convs[i];
            int64_t ysh[4];
            conv_out(s, ysh);
            tp x = lp_rnd(s->x, 4, dt, 0, dev), w = lp_rnd(s->w, 4, dt, 0, dev);
            tp y = lp_rnd(ysh, 4, dt, 0, dev), bias = lp_rnd(&s->w[0], 1, dt, 0, dev);
            char what[96];
            snprintf(what, sizeof what, "conv2d %s config %zu %s",
                     dir == 0 ? "forward" : dir == 1 ? "backward input" : "backward weight", i,
                     ct_dtype_name(dt));
            if (dir == 0) {
                KCALL(what, cpuk()->conv2d_forward(y.c, x.c, w.c, bias.c, &s->p),
                      k->conv2d_forward(y.d, x.d, w.d, bias.d, &s->p));
                tp_check(y, tol_lp(dt), what, bname);
            } else if (dir == 1) {
                KCALL(what, cpuk()->conv2d_backward_input(x.c, y.c, w.c, &s->p),
                      k->conv2d_backward_input(x.d, y.d, w.d, &s->p));
                tp_check(x, tol_lp(dt), what, bname);
            } else {
                KCALL(what, cpuk()->conv2d_backward_weight(w.c, bias.c, y.c, x.c, &s->p),
                      k->conv2d_backward_weight(w.d, bias.d, y.d, x.d, &s->p));
                tp_check(w, tol_lp(dt), what, bname);
                tp_check(bias, tol_lp(dt), what, bname);
            }
            tp_free(x), tp_free(w), tp_free(y), tp_free(bias);
        }
}

static void case_lowp_conv_fwd(ct_device dev, const ct_kernels *k, const char *bname) {
    lowp_conv(dev, k, bname, 0);
}
static void case_lowp_conv_bwd_input(ct_device dev, const ct_kernels *k, const char *bname) {
    lowp_conv(dev, k, bname, 1);
}
static void case_lowp_conv_bwd_weight(ct_device dev, const ct_kernels *k, const char *bname) {
    lowp_conv(dev, k, bname, 2);
}
BACKEND_CASE(conv2d_forward, case_lowp_conv_fwd)
BACKEND_CASE(conv2d_backward_input, case_lowp_conv_bwd_input)
BACKEND_CASE(conv2d_backward_weight, case_lowp_conv_bwd_weight)

/* The fused conv + ReLU + max-pool: its output against the CPU's fused kernel within the
 * tolerance; and exactly (values and window codes) against the device's own convolution
 * pooled by the CPU's codes kernel. (Where the convolution's 16-bit rounding makes two
 * window elements equal, the first one wins; the CPU's fused kernel pools the float32
 * convolution, so its codes may name the other one.) */
static void case_lowp_conv_relu_pool(ct_device dev, const ct_kernels *k, const char *bname) {
    const ct_conv_params p = {{1, 1}, {1, 1}, {1, 1}, 1};
    const ct_pool_params pp = {{2, 2}, {2, 2}, {0, 0}, {1, 1}, 0, 0};
    int64_t xs[4] = {2, 3, 8, 10}, ws[4] = {5, 3, 3, 3}, cs[4] = {2, 5, 8, 10};
    int64_t ys[4] = {2, 5, 4, 5};
    for (int di = 0; di < 2; di++) {
        const ct_dtype dt = k_lowp[di];
        char what[96];
        snprintf(what, sizeof what, "conv2d+relu+max_pool2d %s", ct_dtype_name(dt));
        tp x = lp_rnd(xs, 4, dt, 0, dev), w = lp_rnd(ws, 4, dt, 0, dev);
        tp b = lp_rnd(&ws[0], 1, dt, 0, dev), y = lp_rnd(ys, 4, dt, 0, dev);
        tp codes = tp_from(ct_zeros(ys, 4, CT_UINT8), dev);
        KCALL(what, cpuk()->conv2d_relu_max_pool2d_forward(y.c, codes.c, x.c, w.c, b.c, &p, &pp),
              k->conv2d_relu_max_pool2d_forward(y.d, codes.d, x.d, w.d, b.d, &p, &pp));
        tp_check(y, tol_lp(dt), what, bname);
        /* the device's convolution, pooled on the CPU */
        ct_tensor *conv_d = ct_empty_on(cs, 4, dt, dev);
        CHECK_OK(k->conv2d_forward(conv_d, x.d, w.d, b.d, &p));
        ct_tensor *conv_c = ct_to_device(conv_d, ct_cpu());
        ct_tensor *yc = ct_empty_on(ys, 4, dt, ct_cpu()), *cc = ct_zeros(ys, 4, CT_UINT8);
        CHECK_OK(cpuk()->max_pool2d_codes_forward(yc, cc, conv_c, &pp, 1));
        tp exact_y = {yc, ct_retain(y.d)}, exact_codes = {cc, ct_retain(codes.d)};
        tp_check(exact_y, 0, what, bname);
        tp_check(exact_codes, 0, what, bname);
        tp_free(exact_y), tp_free(exact_codes), ct_free(conv_d), ct_free(conv_c);
        tp_free(x), tp_free(w), tp_free(b), tp_free(y), tp_free(codes);
    }
}
BACKEND_CASE(conv2d_relu_max_pool2d_forward, case_lowp_conv_relu_pool)

/* ------------------------------------------------------------- elementwise */
/* Operands of binary op `op`: the comparisons get ties (multiples of 0.5) and NaNs, the
 * others randn (a) and [1, 3) (b). */
static tp lp_binary_operand(const int64_t *sh, int nd, ct_dtype dt, int second, int op,
                            ct_device dev) {
    if (!ct_binop_result_bool(op)) return lp_rnd(sh, nd, dt, second ? 1 : 0, dev);
    ct_tensor *h = rnd(sh, nd, CT_FLOAT64, 0);
    double *p = ct_data(h);
    for (int64_t i = 0; i < ct_numel(h); i++) {
        p[i] = (double)(int64_t)(p[i] * 2.4) / 2;
        if ((i + second) % 7 == 3) p[i] = NAN;
    }
    ct_tensor *t = ct_to_dtype(h, dt);
    ct_free(h);
    return tp_from(t, dev);
}

static void lowp_binary(ct_device dev, const ct_kernels *k, const char *bname, int op,
                        ct_dtype dt) {
    const int to_bool = ct_binop_result_bool(op);
    const ct_dtype odt = to_bool ? CT_BOOL : dt;
    const double alpha = op <= CT_BIN_SUB ? 0.5 : 1, tol = to_bool ? 0 : tol_same(dt);
    char what[96];
    snprintf(what, sizeof what, "binary %s %s", ct_binop_name((ct_binop)op), ct_dtype_name(dt));
    int64_t sh[3] = {3, 4, 5}, shT[3] = {3, 5, 4}, shb[3] = {1, 4, 1};
    tp a = lp_binary_operand(sh, 3, dt, 0, op, dev), b = lp_binary_operand(sh, 3, dt, 1, op, dev);
    tp o = tp_from(ct_zeros(sh, 3, odt), dev);
    KCALL(what, cpuk()->binary((ct_binop)op, o.c, a.c, b.c, alpha),
          k->binary((ct_binop)op, o.d, a.d, b.d, alpha));
    tp_check(o, tol, what, bname);
    /* transposed a, broadcast b, and (same-dtype rows) in place into the strided view */
    tp at0 = lp_binary_operand(shT, 3, dt, 0, op, dev), at = tp_transpose(at0, 1, 2);
    tp b0 = lp_binary_operand(shb, 3, dt, 1, op, dev);
    tp bb = {ct_expand(b0.c, sh, 3), ct_expand(b0.d, sh, 3)};
    KCALL(what, cpuk()->binary((ct_binop)op, o.c, at.c, bb.c, alpha),
          k->binary((ct_binop)op, o.d, at.d, bb.d, alpha));
    tp_check(o, tol, what, bname);
    if (!to_bool) {
        KCALL(what, cpuk()->binary((ct_binop)op, at.c, at.c, b.c, alpha),
              k->binary((ct_binop)op, at.d, at.d, b.d, alpha));
        tp_check(at0, tol, what, bname);
    }
    tp_free(a), tp_free(b), tp_free(o), tp_free(at0), tp_free(at), tp_free(b0), tp_free(bb);
}

static void case_lowp_binary(ct_device dev, const ct_kernels *k, const char *bname) {
    for (int di = 0; di < 2; di++)
        for (int op = 0; op < CT_BIN_COUNT; op++) lowp_binary(dev, k, bname, op, k_lowp[di]);
}
BACKEND_CASE(binary, case_lowp_binary)

typedef struct {
    ct_unop op;
    double p1, p2;
    int positive;
} lp_unary_spec;

#define LP_UNARY_SPEC(ID, name, node, dtypes, saves, api, fwd, der, p1, p2, domain)          \
    {CT_UN_##ID, p1, p2, CT_DOMAIN_##domain == CT_DOMAIN_POS},
static const lp_unary_spec k_lp_unary[] = {CT_UNARY_OPS(LP_UNARY_SPEC)};
#define N_LP_UNARY ((int)(sizeof k_lp_unary / sizeof k_lp_unary[0]))

static void case_lowp_unary(ct_device dev, const ct_kernels *k, const char *bname) {
    for (int di = 0; di < 2; di++)
        for (int i = 0; i < N_LP_UNARY; i++) {
            const lp_unary_spec *s = &k_lp_unary[i];
            const ct_dtype dt = k_lowp[di];
            char what[96];
            snprintf(what, sizeof what, "unary %s %s", ct_unop_name(s->op), ct_dtype_name(dt));
            int64_t sh[2] = {6, 40}, shT[2] = {40, 6};
            tp x0 = lp_rnd(shT, 2, dt, s->positive ? 1 : 0, dev), x = tp_transpose(x0, 0, 1);
            tp o = lp_rnd(sh, 2, dt, 0, dev);
            KCALL(what, cpuk()->unary(s->op, o.c, x.c, s->p1, s->p2),
                  k->unary(s->op, o.d, x.d, s->p1, s->p2));
            tp_check(o, tol_same(dt), what, bname);
            KCALL(what, cpuk()->unary(s->op, x.c, x.c, s->p1, s->p2),
                  k->unary(s->op, x.d, x.d, s->p1, s->p2));
            tp_check(x0, tol_same(dt), what, bname);
            tp_free(x0), tp_free(x), tp_free(o);
        }
}
BACKEND_CASE(unary, case_lowp_unary)

static void case_lowp_unary_backward(ct_device dev, const ct_kernels *k, const char *bname) {
    for (int di = 0; di < 2; di++)
        for (int i = 0; i < N_LP_UNARY; i++) {
            const lp_unary_spec *s = &k_lp_unary[i];
            const ct_dtype dt = k_lowp[di];
            char what[96];
            snprintf(what, sizeof what, "unary backward %s %s", ct_unop_name(s->op),
                     ct_dtype_name(dt));
            int64_t sh[2] = {7, 33};
            ct_tensor *xc = rnd(sh, 2, dt, s->positive ? 1 : 0);
            ct_tensor *yc = ct_empty_on(sh, 2, dt, ct_cpu());
            CHECK_OK(cpuk()->unary(s->op, yc, xc, s->p1, s->p2));
            tp x = tp_from(xc, dev), y = tp_from(yc, dev), gy = lp_rnd(sh, 2, dt, 0, dev);
            tp gx = lp_rnd(sh, 2, dt, 0, dev);
            KCALL(what, cpuk()->unary_backward(s->op, gx.c, gy.c, x.c, y.c, s->p1, s->p2),
                  k->unary_backward(s->op, gx.d, gy.d, x.d, y.d, s->p1, s->p2));
            tp_check(gx, tol_same(dt), what, bname);
            tp_free(x), tp_free(y), tp_free(gy), tp_free(gx);
        }
}
BACKEND_CASE(unary_backward, case_lowp_unary_backward)

/* Training dropout: uniforms in float32 beside the 16-bit input (as ct_dropout draws them);
 * mask and output exact. */
static void case_lowp_dropout(ct_device dev, const ct_kernels *k, const char *bname) {
    for (int di = 0; di < 2; di++) {
        const ct_dtype dt = k_lowp[di];
        char what[96];
        snprintf(what, sizeof what, "dropout p=0.3 %s", ct_dtype_name(dt));
        int64_t sh[2] = {17, 41};
        tp x = lp_rnd(sh, 2, dt, 0, dev), u = tp_from(ct_rand(sh, 2, CT_FLOAT32), dev);
        tp y = lp_rnd(sh, 2, dt, 0, dev), m = lp_rnd(sh, 2, dt, 0, dev);
        KCALL(what, cpuk()->dropout_forward(y.c, m.c, x.c, u.c, 0.3),
              k->dropout_forward(y.d, m.d, x.d, u.d, 0.3));
        tp_check(y, 0, what, bname);
        tp_check(m, 0, what, bname);
        tp_free(x), tp_free(u), tp_free(y), tp_free(m);
    }
}
BACKEND_CASE(dropout_forward, case_lowp_dropout)

/* ------------------------------------------------------------------- reduce */
static void lowp_reduce_one(ct_device dev, const ct_kernels *k, const char *bname, ct_redop op,
                            tp a, const int *red, ct_dtype odt, const char *what) {
    int64_t osh[CT_MAX_DIMS];
    for (int d = 0; d < a.c->ndim; d++) osh[d] = red[d] ? 1 : a.c->shape[d];
    tp o = lp_rnd(osh, a.c->ndim, odt, 0, dev), idx = {NULL, NULL};
    if (op == CT_RED_MAX) idx = tp_from(ct_zeros(osh, a.c->ndim, CT_INT64), dev);
    KCALL(what, cpuk()->reduce(op, o.c, idx.c, a.c, red), k->reduce(op, o.d, idx.d, a.d, red));
    tp_check(o, op == CT_RED_MAX ? 0 : tol_same(a.c->dtype), what, bname);
    if (op == CT_RED_MAX) tp_check(idx, 0, what, bname);
    tp_free(o), tp_free(idx);
}

static void case_lowp_reduce(ct_device dev, const ct_kernels *k, const char *bname) {
    const int r1[3] = {0, 1, 0}, r02[3] = {1, 0, 1}, rall[3] = {1, 1, 1}, r2[3] = {0, 0, 1};
    for (int di = 0; di < 2; di++) {
        const ct_dtype dt = k_lowp[di];
        int64_t shT[3] = {4, 6, 5};
        tp a0 = lp_rnd(shT, 3, dt, 0, dev), a = tp_transpose(a0, 1, 2); /* [4, 5, 6] strided */
        char what[96];
        snprintf(what, sizeof what, "reduce %s", ct_dtype_name(dt));
        lowp_reduce_one(dev, k, bname, CT_RED_SUM, a, r1, dt, what);
        lowp_reduce_one(dev, k, bname, CT_RED_SUM, a, r02, dt, what);
        lowp_reduce_one(dev, k, bname, CT_RED_SUM, a, rall, CT_FLOAT32, what); /* mixed */
        lowp_reduce_one(dev, k, bname, CT_RED_MEAN, a, r2, dt, what);
        lowp_reduce_one(dev, k, bname, CT_RED_MAX, a, r1, dt, what);
        tp_free(a0), tp_free(a);
        /* a long row: the split path */
        int64_t wide[2] = {2, 30000};
        const int c1[2] = {0, 1};
        tp w = lp_rnd(wide, 2, dt, 0, dev);
        lowp_reduce_one(dev, k, bname, CT_RED_SUM, w, c1, dt, what);
        lowp_reduce_one(dev, k, bname, CT_RED_MAX, w, c1, dt, what);
        tp_free(w);
    }
}
BACKEND_CASE(reduce, case_lowp_reduce)

/* ------------------------------------------------------------------ pooling */
static const ct_pool_params k_lp_pools[] = {
    {{2, 2}, {2, 2}, {0, 0}, {1, 1}, 0, 0},
    {{3, 3}, {2, 2}, {1, 1}, {1, 1}, 0, 1},
    {{3, 2}, {2, 1}, {1, 0}, {2, 1}, 0, 0},
};
#define N_LP_POOLS ((int)(sizeof k_lp_pools / sizeof k_lp_pools[0]))

static void lp_pool_shapes(const ct_pool_params *p, int64_t *x, int64_t *y, int dil) {
    x[0] = 2, x[1] = 3, x[2] = 9, x[3] = 8;
    y[0] = 2, y[1] = 3;
    for (int i = 0; i < 2; i++)
        y[2 + i] = (x[2 + i] + 2 * p->padding[i] - (dil ? p->dilation[i] : 1) * (p->kernel[i] - 1) -
                    1) / p->stride[i] + 1;
}

/* kind: 0 max with indices, 1 max with window codes (+ fused ReLU), 2 avg. */
static void lowp_pool(ct_device dev, const ct_kernels *k, const char *bname, int kind, int bwd) {
    static const char *names[3] = {"max_pool2d", "max_pool2d codes", "avg_pool2d"};
    for (int di = 0; di < 2; di++)
        for (int i = 0; i < N_LP_POOLS; i++)
            for (int relu = 0; relu < (kind == 1 ? 2 : 1); relu++) {
                const ct_dtype dt = k_lowp[di];
                ct_pool_params p = k_lp_pools[i];
                if (kind == 2) p.dilation[0] = p.dilation[1] = 1;
                int64_t xs[4], ys[4];
                lp_pool_shapes(&p, xs, ys, kind != 2);
                char what[112];
                snprintf(what, sizeof what, "%s %s config %d relu %d %s", names[kind],
                         bwd ? "backward" : "forward", i, relu, ct_dtype_name(dt));
                const double tol = kind == 2 ? tol_same(dt) : 0;
                tp x = lp_rnd(xs, 4, dt, 0, dev), y = lp_rnd(ys, 4, dt, 0, dev);
                tp idx = tp_from(ct_zeros(ys, 4, kind == 1 ? CT_UINT8 : CT_INT64), dev);
                int rc_c, rc_d = 0;
                if (kind == 0) rc_c = cpuk()->max_pool2d_forward(y.c, idx.c, x.c, &p);
                else if (kind == 1) rc_c = cpuk()->max_pool2d_codes_forward(y.c, idx.c, x.c, &p, relu);
                else rc_c = cpuk()->avg_pool2d_forward(y.c, x.c, &p);
                if (!bwd) {
                    if (kind == 0) rc_d = k->max_pool2d_forward(y.d, idx.d, x.d, &p);
                    else if (kind == 1) rc_d = k->max_pool2d_codes_forward(y.d, idx.d, x.d, &p, relu);
                    else rc_d = k->avg_pool2d_forward(y.d, x.d, &p);
                    CHECK_MSG(rc_c == 0 && rc_d == 0, "%s on %s: %s", what, bname, ct_last_error());
                    tp_check(y, tol, what, bname);
                    if (kind != 2) tp_check(idx, 0, what, bname);
                } else { /* the CPU's indices / codes on both */
                    CHECK_MSG(rc_c == 0, "%s forward on cpu: %s", what, ct_last_error());
                    tp idx2 = tp_from(ct_retain(idx.c), dev), gy = lp_rnd(ys, 4, dt, 0, dev);
                    if (kind == 0)
                        KCALL(what, cpuk()->max_pool2d_backward(x.c, gy.c, idx2.c, &p),
                              k->max_pool2d_backward(x.d, gy.d, idx2.d, &p));
                    else if (kind == 1)
                        KCALL(what, cpuk()->max_pool2d_codes_backward(x.c, gy.c, idx2.c, &p),
                              k->max_pool2d_codes_backward(x.d, gy.d, idx2.d, &p));
                    else
                        KCALL(what, cpuk()->avg_pool2d_backward(x.c, gy.c, &p),
                              k->avg_pool2d_backward(x.d, gy.d, &p));
                    tp_check(x, tol_same(dt), what, bname);
                    tp_free(idx2), tp_free(gy);
                }
                tp_free(x), tp_free(y), tp_free(idx);
            }
}

#define LP_POOL_CASE(fn, kind, bwd)                                                       \
    static void fn(ct_device dev, const ct_kernels *k, const char *bname) {               \
        lowp_pool(dev, k, bname, kind, bwd);                                               \
    }
LP_POOL_CASE(case_lowp_max_pool_fwd, 0, 0)
LP_POOL_CASE(case_lowp_max_pool_bwd, 0, 1)
LP_POOL_CASE(case_lowp_max_pool_codes_fwd, 1, 0)
LP_POOL_CASE(case_lowp_max_pool_codes_bwd, 1, 1)
LP_POOL_CASE(case_lowp_avg_pool_fwd, 2, 0)
LP_POOL_CASE(case_lowp_avg_pool_bwd, 2, 1)
BACKEND_CASE(max_pool2d_forward, case_lowp_max_pool_fwd)
BACKEND_CASE(max_pool2d_backward, case_lowp_max_pool_bwd)
BACKEND_CASE(max_pool2d_codes_forward, case_lowp_max_pool_codes_fwd)
BACKEND_CASE(max_pool2d_codes_backward, case_lowp_max_pool_codes_bwd)
BACKEND_CASE(avg_pool2d_forward, case_lowp_avg_pool_fwd)
BACKEND_CASE(avg_pool2d_backward, case_lowp_avg_pool_bwd)

static void lowp_adaptive(ct_device dev, const ct_kernels *k, const char *bname, int bwd) {
    const int64_t cfg[][4] = {{7, 9, 3, 4}, {8, 8, 1, 1}};
    for (int di = 0; di < 2; di++)
        for (int i = 0; i < 2; i++) {
            const ct_dtype dt = k_lowp[di];
            int64_t xs[4] = {2, 3, cfg[i][0], cfg[i][1]}, ys[4] = {2, 3, cfg[i][2], cfg[i][3]};
            char what[96];
            snprintf(what, sizeof what, "adaptive_avg_pool2d %s config %d %s",
                     bwd ? "backward" : "forward", i, ct_dtype_name(dt));
            tp x = lp_rnd(xs, 4, dt, 0, dev), y = lp_rnd(ys, 4, dt, 0, dev);
            if (!bwd) {
                KCALL(what, cpuk()->adaptive_avg_pool2d_forward(y.c, x.c),
                      k->adaptive_avg_pool2d_forward(y.d, x.d));
                tp_check(y, tol_same(dt), what, bname);
            } else {
                KCALL(what, cpuk()->adaptive_avg_pool2d_backward(x.c, y.c),
                      k->adaptive_avg_pool2d_backward(x.d, y.d));
                tp_check(x, tol_same(dt), what, bname);
            }
            tp_free(x), tp_free(y);
        }
}
static void case_lowp_adaptive_fwd(ct_device dev, const ct_kernels *k, const char *bname) {
    lowp_adaptive(dev, k, bname, 0);
}
static void case_lowp_adaptive_bwd(ct_device dev, const ct_kernels *k, const char *bname) {
    lowp_adaptive(dev, k, bname, 1);
}
BACKEND_CASE(adaptive_avg_pool2d_forward, case_lowp_adaptive_fwd)
BACKEND_CASE(adaptive_avg_pool2d_backward, case_lowp_adaptive_bwd)

/* ---------------------------------------------------------------- softmax */
static void lowp_softmax(ct_device dev, const ct_kernels *k, const char *bname, int bwd) {
    const int64_t shapes[2][3] = {{6, 10, 0}, {2, 5, 7}};
    const int nds[2] = {2, 3};
    for (int di = 0; di < 2; di++)
        for (int si = 0; si < 2; si++)
            for (int lg = 0; lg < 2; lg++) {
                const ct_dtype dt = k_lowp[di];
                const int64_t *sh = shapes[si];
                char what[96];
                snprintf(what, sizeof what, "%ssoftmax %s shape %d %s", lg ? "log_" : "",
                         bwd ? "backward" : "forward", si, ct_dtype_name(dt));
                tp x = lp_rnd(sh, nds[si], dt, 0, dev), y = lp_rnd(sh, nds[si], dt, 0, dev);
                if (!bwd) {
                    KCALL(what, cpuk()->softmax_forward(y.c, x.c, 1, lg),
                          k->softmax_forward(y.d, x.d, 1, lg));
                    tp_check(y, tol_same(dt), what, bname);
                } else {
                    ct_tensor *yc = ct_empty_on(sh, nds[si], dt, ct_cpu());
                    CHECK_OK(cpuk()->softmax_forward(yc, x.c, 1, lg));
                    tp yy = tp_from(yc, dev), gy = lp_rnd(sh, nds[si], dt, 0, dev);
                    KCALL(what, cpuk()->softmax_backward(y.c, gy.c, yy.c, 1, lg),
                          k->softmax_backward(y.d, gy.d, yy.d, 1, lg));
                    tp_check(y, tol_same(dt), what, bname);
                    tp_free(yy), tp_free(gy);
                }
                tp_free(x), tp_free(y);
            }
}
static void case_lowp_softmax_fwd(ct_device dev, const ct_kernels *k, const char *bname) {
    lowp_softmax(dev, k, bname, 0);
}
static void case_lowp_softmax_bwd(ct_device dev, const ct_kernels *k, const char *bname) {
    lowp_softmax(dev, k, bname, 1);
}
BACKEND_CASE(softmax_forward, case_lowp_softmax_fwd)
BACKEND_CASE(softmax_backward, case_lowp_softmax_bwd)

/* ------------------------------------------------------------------ losses */
/* cross_entropy on 16-bit logits (autocast gives the losses float32; a direct call with
 * 16-bit logits works too), and nll_loss on 16-bit log-probabilities. */
static void lowp_loss(ct_device dev, const ct_kernels *k, const char *bname, int ce, int bwd) {
    const int64_t N = 7, C = 5, tgt[7] = {0, 4, 2, -100, 1, 3, 2};
    int64_t sh[2] = {N, C};
    for (int di = 0; di < 2; di++)
        for (int red = 0; red < 3; red++) {
            const ct_dtype dt = k_lowp[di];
            const double ls = ce ? 0.1 : 0;
            char what[96];
            snprintf(what, sizeof what, "%s %s reduction %d %s", ce ? "cross_entropy" : "nll_loss",
                     bwd ? "backward" : "forward", red, ct_dtype_name(dt));
            const int nd = red == CT_REDUCTION_NONE ? 1 : 0;
            const ct_reduction r = (ct_reduction)red;
            ct_tensor *xh = rnd(sh, 2, dt, 0);
            if (!ce) { /* log-probabilities */
                ct_tensor *lp = ct_empty_on(sh, 2, dt, ct_cpu());
                CHECK_OK(cpuk()->softmax_forward(lp, xh, 1, 1));
                ct_free(xh);
                xh = lp;
            }
            tp x = tp_from(xh, dev), t = tp_from(ct_from_data(tgt, &N, 1, CT_INT64), dev);
            tp out = lp_rnd(&N, nd, dt, 0, dev), tw = lp_rnd(NULL, 0, dt, 0, dev);
            tp logp = lp_rnd(sh, 2, dt, 0, dev);
            if (ce)
                CHECK_OK(cpuk()->cross_entropy_forward(out.c, logp.c, tw.c, x.c, t.c, r, -100, ls));
            else CHECK_OK(cpuk()->nll_loss_forward(out.c, tw.c, x.c, t.c, r, -100));
            if (!bwd) {
                int rc = ce ? k->cross_entropy_forward(out.d, logp.d, tw.d, x.d, t.d, r, -100, ls)
                            : k->nll_loss_forward(out.d, tw.d, x.d, t.d, r, -100);
                CHECK_MSG(rc == 0, "%s on %s: %s", what, bname, ct_last_error());
                /* a scalar for the mean and sum: one rounding is its whole error */
                tp_check(out, tol_lp(dt), what, bname);
                tp_check(tw, 0, what, bname);
                if (ce) tp_check(logp, tol_same(dt), what, bname);
            } else {
                tp lp2 = tp_from(ct_retain(logp.c), dev), tw2 = tp_from(ct_retain(tw.c), dev);
                tp gout = lp_rnd(&N, nd, dt, 0, dev), g = lp_rnd(sh, 2, dt, 0, dev);
                if (ce)
                    KCALL(what,
                          cpuk()->cross_entropy_backward(g.c, gout.c, lp2.c, t.c, tw2.c, r, -100,
                                                         ls),
                          k->cross_entropy_backward(g.d, gout.d, lp2.d, t.d, tw2.d, r, -100, ls));
                else
                    KCALL(what, cpuk()->nll_loss_backward(g.c, gout.c, t.c, tw2.c, r, -100),
                          k->nll_loss_backward(g.d, gout.d, t.d, tw2.d, r, -100));
                tp_check(g, tol_same(dt), what, bname);
                tp_free(lp2), tp_free(tw2), tp_free(gout), tp_free(g);
            }
            tp_free(x), tp_free(t), tp_free(out), tp_free(tw), tp_free(logp);
        }
}
#define LP_LOSS_CASE(fn, ce, bwd)                                                         \
    static void fn(ct_device dev, const ct_kernels *k, const char *bname) {               \
        lowp_loss(dev, k, bname, ce, bwd);                                                 \
    }
LP_LOSS_CASE(case_lowp_ce_fwd, 1, 0)
LP_LOSS_CASE(case_lowp_ce_bwd, 1, 1)
LP_LOSS_CASE(case_lowp_nll_fwd, 0, 0)
LP_LOSS_CASE(case_lowp_nll_bwd, 0, 1)
BACKEND_CASE(cross_entropy_forward, case_lowp_ce_fwd)
BACKEND_CASE(cross_entropy_backward, case_lowp_ce_bwd)
BACKEND_CASE(nll_loss_forward, case_lowp_nll_fwd)
BACKEND_CASE(nll_loss_backward, case_lowp_nll_bwd)

/* ------------------------------------------------------------ normalisation */
/* batch_norm with a 16-bit input and float32 weight, bias, running and saved statistics
 * (what ct_batch_norm hands the kernel under autocast). */
static void lowp_bn(ct_device dev, const ct_kernels *k, const char *bname, int bwd) {
    const int64_t shapes[2][4] = {{4, 3, 5, 5}, {6, 3, 0, 0}};
    const int nds[2] = {4, 2};
    const ct_dtype f = CT_FLOAT32;
    for (int di = 0; di < 2; di++)
        for (int si = 0; si < 2; si++)
            for (int training = 0; training < 2; training++) {
                const ct_dtype dt = k_lowp[di];
                const int64_t *sh = shapes[si], C = sh[1];
                const int nd = nds[si];
                char what[96];
                snprintf(what, sizeof what, "batch_norm %s shape %d training %d %s",
                         bwd ? "backward" : "forward", si, training, ct_dtype_name(dt));
                tp x = lp_rnd(sh, nd, dt, 0, dev), y = lp_rnd(sh, nd, dt, 0, dev);
                tp w = tp_rnd(&C, 1, f, 0, dev), b = tp_rnd(&C, 1, f, 0, dev);
                tp rm = tp_rnd(&C, 1, f, 0, dev), rv = tp_rnd(&C, 1, f, 1, dev);
                tp sm = tp_rnd(&C, 1, f, 0, dev), si2 = tp_rnd(&C, 1, f, 0, dev);
                if (!bwd) {
                    KCALL(what,
                          cpuk()->batch_norm_forward(y.c, sm.c, si2.c, x.c, w.c, b.c, rm.c, rv.c,
                                                     training, 0.1, 1e-5),
                          k->batch_norm_forward(y.d, sm.d, si2.d, x.d, w.d, b.d, rm.d, rv.d,
                                                training, 0.1, 1e-5));
                    tp_check(y, tol_same(dt), what, bname);
                    tp_check(sm, 1e-4, what, bname);
                    tp_check(si2, 1e-4, what, bname);
                    tp_check(rm, 1e-4, what, bname);
                    tp_check(rv, 1e-4, what, bname);
                } else {
                    CHECK_OK(cpuk()->batch_norm_forward(y.c, sm.c, si2.c, x.c, w.c, b.c, rm.c,
                                                        rv.c, training, 0.1, 1e-5));
                    tp sm2 = tp_from(ct_retain(sm.c), dev), is2 = tp_from(ct_retain(si2.c), dev);
                    tp gy = lp_rnd(sh, nd, dt, 0, dev), gx = lp_rnd(sh, nd, dt, 0, dev);
                    tp gw = tp_rnd(&C, 1, f, 0, dev), gb = tp_rnd(&C, 1, f, 0, dev);
                    KCALL(what,
                          cpuk()->batch_norm_backward(gx.c, gw.c, gb.c, gy.c, x.c, w.c, sm2.c,
                                                      is2.c, training),
                          k->batch_norm_backward(gx.d, gw.d, gb.d, gy.d, x.d, w.d, sm2.d, is2.d,
                                                 training));
                    tp_check(gx, tol_same(dt), what, bname);
                    tp_check(gw, 1e-4, what, bname);
                    tp_check(gb, 1e-4, what, bname);
                    tp_free(sm2), tp_free(is2), tp_free(gy), tp_free(gx), tp_free(gw),
                        tp_free(gb);
                }
                tp_free(x), tp_free(y), tp_free(w), tp_free(b), tp_free(rm), tp_free(rv),
                    tp_free(sm), tp_free(si2);
            }
}
static void case_lowp_bn_fwd(ct_device dev, const ct_kernels *k, const char *bname) {
    lowp_bn(dev, k, bname, 0);
}
static void case_lowp_bn_bwd(ct_device dev, const ct_kernels *k, const char *bname) {
    lowp_bn(dev, k, bname, 1);
}
BACKEND_CASE(batch_norm_forward, case_lowp_bn_fwd)
BACKEND_CASE(batch_norm_backward, case_lowp_bn_bwd)

/* layer_norm with a 16-bit input, float32 weight and bias, float32 statistics. */
static void lowp_ln(ct_device dev, const ct_kernels *k, const char *bname, int bwd) {
    const int64_t M = 6, N = 37;
    int64_t sh[2] = {M, N};
    const ct_dtype f = CT_FLOAT32;
    for (int di = 0; di < 2; di++) {
        const ct_dtype dt = k_lowp[di];
        char what[96];
        snprintf(what, sizeof what, "layer_norm %s %s", bwd ? "backward" : "forward",
                 ct_dtype_name(dt));
        tp x = lp_rnd(sh, 2, dt, 0, dev), y = lp_rnd(sh, 2, dt, 0, dev);
        tp w = tp_rnd(&N, 1, f, 0, dev), b = tp_rnd(&N, 1, f, 0, dev);
        tp mean = tp_rnd(&M, 1, f, 0, dev), rstd = tp_rnd(&M, 1, f, 0, dev);
        CHECK_OK(cpuk()->layer_norm_forward(y.c, mean.c, rstd.c, x.c, w.c, b.c, M, N, 1e-5));
        if (!bwd) {
            CHECK_OK(k->layer_norm_forward(y.d, mean.d, rstd.d, x.d, w.d, b.d, M, N, 1e-5));
            tp_check(y, tol_same(dt), what, bname);
            tp_check(mean, 1e-4, what, bname);
            tp_check(rstd, 1e-4, what, bname);
        } else {
            tp m2 = tp_from(ct_retain(mean.c), dev), r2 = tp_from(ct_retain(rstd.c), dev);
            tp gy = lp_rnd(sh, 2, dt, 0, dev), gx = lp_rnd(sh, 2, dt, 0, dev);
            tp gw = tp_rnd(&N, 1, f, 0, dev), gb = tp_rnd(&N, 1, f, 0, dev);
            KCALL(what,
                  cpuk()->layer_norm_backward(gx.c, gw.c, gb.c, gy.c, x.c, m2.c, r2.c, w.c, M, N),
                  k->layer_norm_backward(gx.d, gw.d, gb.d, gy.d, x.d, m2.d, r2.d, w.d, M, N));
            tp_check(gx, tol_same(dt), what, bname);
            tp_check(gw, 1e-4, what, bname);
            tp_check(gb, 1e-4, what, bname);
            tp_free(m2), tp_free(r2), tp_free(gy), tp_free(gx), tp_free(gw), tp_free(gb);
        }
        tp_free(x), tp_free(y), tp_free(w), tp_free(b), tp_free(mean), tp_free(rstd);
    }
}
static void case_lowp_ln_fwd(ct_device dev, const ct_kernels *k, const char *bname) {
    lowp_ln(dev, k, bname, 0);
}
static void case_lowp_ln_bwd(ct_device dev, const ct_kernels *k, const char *bname) {
    lowp_ln(dev, k, bname, 1);
}
BACKEND_CASE(layer_norm_forward, case_lowp_ln_fwd)
BACKEND_CASE(layer_norm_backward, case_lowp_ln_bwd)

/* ---------------------------------------------------------------- embedding */
static void lowp_embedding(ct_device dev, const ct_kernels *k, const char *bname, int bwd) {
    const int64_t num = 9, dim = 6, n = 8, idx[8] = {3, 0, 8, 3, 5, 1, 3, 7};
    int64_t ws[2] = {num, dim}, ys[2] = {n, dim};
    for (int di = 0; di < 2; di++) {
        const ct_dtype dt = k_lowp[di];
        char what[96];
        snprintf(what, sizeof what, "embedding %s %s", bwd ? "backward" : "forward",
                 ct_dtype_name(dt));
        tp ind = tp_from(ct_from_data(idx, &n, 1, CT_INT64), dev);
        tp w = lp_rnd(ws, 2, dt, 0, dev), y = lp_rnd(ys, 2, dt, 0, dev);
        if (!bwd) {
            KCALL(what, cpuk()->embedding_forward(y.c, w.c, ind.c),
                  k->embedding_forward(y.d, w.d, ind.d));
            tp_check(y, 0, what, bname);
        } else {
            KCALL(what, cpuk()->embedding_backward(w.c, y.c, ind.c, 5),
                  k->embedding_backward(w.d, y.d, ind.d, 5));
            tp_check(w, tol_same(dt), what, bname);
        }
        tp_free(ind), tp_free(w), tp_free(y);
    }
}
static void case_lowp_embedding_fwd(ct_device dev, const ct_kernels *k, const char *bname) {
    lowp_embedding(dev, k, bname, 0);
}
static void case_lowp_embedding_bwd(ct_device dev, const ct_kernels *k, const char *bname) {
    lowp_embedding(dev, k, bname, 1);
}
BACKEND_CASE(embedding_forward, case_lowp_embedding_fwd)
BACKEND_CASE(embedding_backward, case_lowp_embedding_bwd)

/* ------------------------------------------------------ the op layer, autocast */
/* The autocast dtype of softmax on dev: a CUDA region runs it in float32 (PyTorch's CUDA
 * autocast list, the backend's autocast_fp32), a CPU region keeps the 16-bit input's dtype;
 * the values agree with the CPU's within bfloat16's tolerance. */
static void case_autocast_softmax_dtype(ct_device dev, const ct_kernels *k, const char *bname) {
    (void)k;
    const ct_backend *b = ct_backend_get(dev.type);
    const int fp32 = b && (b->autocast_fp32 >> CT_AC_SOFTMAX & 1u);
    if (dev.type == CT_CUDA)
        CHECK_MSG(fp32, "%s: softmax is not on the CUDA backend's float32 autocast list", bname);
    int64_t xs[2] = {4, 12}, ws[2] = {10, 12}, c10 = 10;
    tp x = tp_rnd(xs, 2, CT_FLOAT32, 0, dev), w = tp_rnd(ws, 2, CT_FLOAT32, 0, dev);
    tp bias = tp_rnd(&c10, 1, CT_FLOAT32, 0, dev);
    ct_tensor *s[2] = {NULL, NULL}, *h[2] = {NULL, NULL};
    for (int side = 0; side < 2; side++) {
        const ct_device dv = side ? dev : ct_cpu();
        CHECK_OK(ct_autocast_push(dv.type, CT_BFLOAT16));
        h[side] = ct_linear(side ? x.d : x.c, side ? w.d : w.c, side ? bias.d : bias.c);
        s[side] = h[side] ? ct_softmax(h[side], 1) : NULL;
        CHECK_OK(ct_autocast_pop());
        CHECK_MSG(s[side] != NULL, "autocast linear + softmax on %s: %s",
                  side ? bname : "cpu", ct_last_error());
    }
    if (s[0] && s[1]) {
        CHECK_MSG(ct_dtype_of(h[0]) == CT_BFLOAT16 && ct_dtype_of(h[1]) == CT_BFLOAT16,
                  "autocast linear: %s on cpu, %s on %s (want bfloat16)",
                  ct_dtype_name(ct_dtype_of(h[0])), ct_dtype_name(ct_dtype_of(h[1])), bname);
        CHECK_MSG(ct_dtype_of(s[0]) == CT_BFLOAT16, "autocast softmax on cpu: %s (want bfloat16)",
                  ct_dtype_name(ct_dtype_of(s[0])));
        const ct_dtype want = fp32 ? CT_FLOAT32 : CT_BFLOAT16;
        CHECK_MSG(ct_dtype_of(s[1]) == want, "autocast softmax on %s: %s (want %s)", bname,
                  ct_dtype_name(ct_dtype_of(s[1])), ct_dtype_name(want));
        ct_tensor *s1 = ct_to_dtype(s[1], CT_BFLOAT16);
        tp both = {ct_retain(s[0]), s1};
        tp_check(both, 1e-2, "autocast softmax", bname);
        tp_free(both);
    }
    for (int i = 0; i < 2; i++) ct_free(s[i]), ct_free(h[i]);
    tp_free(x), tp_free(w), tp_free(bias);
}

TEST(backends_autocast_softmax_dtype_per_device) {
    char why[1024];
    if (backend_run_cases(case_autocast_softmax_dtype, why, sizeof why) == 0) SKIP(why);
}

/* A small CNN (conv, relu, batch_norm with float32 parameters, max_pool, linear,
 * cross_entropy) forward and backward under autocast in dt, on the CPU and on dev: the
 * activations stay 16-bit between the layers on both, the loss is float32, and the loss
 * and the float32 master weights' gradients agree within the 16-bit tolerance. */
static void autocast_cnn(ct_device dev, const char *bname, ct_dtype dt) {
    int64_t xs[4] = {4, 3, 8, 8}, ws[4] = {6, 3, 3, 3}, c6 = 6, ls[2] = {10, 6 * 4 * 4};
    int64_t l10 = 10, tg[4] = {1, 7, 3, 3}, four = 4;
    ct_tensor *cpu[6] = {rnd(xs, 4, CT_FLOAT32, 0), rnd(ws, 4, CT_FLOAT32, 0),
                         rnd(&c6, 1, CT_FLOAT32, 0), rnd(ls, 2, CT_FLOAT32, 0),
                         rnd(&l10, 1, CT_FLOAT32, 0), ct_from_data(tg, &four, 1, CT_INT64)};
    ct_tensor *gpu[6], *loss[2] = {NULL, NULL}, *grads[2][5] = {{NULL}};
    for (int i = 0; i < 6; i++) gpu[i] = ct_to_device(cpu[i], dev);
    for (int side = 0; side < 2; side++) {
        ct_tensor **t = side ? gpu : cpu;
        for (int i = 1; i < 5; i++) ct_set_requires_grad(t[i], 1);
        const int st[2] = {1, 1}, pd[2] = {1, 1}, dl[2] = {1, 1}, kk[2] = {2, 2};
        CHECK_OK(ct_autocast_push(side ? dev.type : CT_CPU, dt));
        ct_tensor *h = ct_conv2d(t[0], t[1], t[2], st, pd, dl, 1);
        ct_tensor *hr = h ? ct_relu(h) : NULL;
        ct_tensor *hb = hr ? ct_batch_norm(hr, NULL, NULL, NULL, NULL, 1, 0.1, 1e-5) : NULL;
        ct_tensor *hp = hb ? ct_max_pool2d(hb, kk, kk, NULL, NULL, 0) : NULL;
        ct_tensor *hf = hp ? ct_flatten(hp, 1, -1) : NULL;
        ct_tensor *lo = hf ? ct_linear(hf, t[3], t[4]) : NULL;
        loss[side] = lo ? ct_cross_entropy(lo, t[5], CT_REDUCTION_MEAN, 0.1, -100) : NULL;
        CHECK_OK(ct_autocast_pop());
        CHECK_MSG(loss[side] != NULL, "autocast %s forward on %s: %s", ct_dtype_name(dt),
                  side ? bname : "cpu", ct_last_error());
        if (hp) CHECK_MSG(ct_dtype_of(hp) == dt, "pooled activations are %s, want %s",
                          ct_dtype_name(ct_dtype_of(hp)), ct_dtype_name(dt));
        if (loss[side]) {
            CHECK(ct_dtype_of(loss[side]) == CT_FLOAT32);
            CHECK_OK(ct_backward(loss[side], NULL, 0));
        }
        for (int i = 1; i < 5; i++) grads[side][i] = ct_grad(t[i]);
        ct_free(h), ct_free(hr), ct_free(hb), ct_free(hp), ct_free(hf), ct_free(lo);
    }
    char what[64];
    snprintf(what, sizeof what, "autocast %s cnn loss", ct_dtype_name(dt));
    tp l = {loss[0], loss[1]};
    if (l.c && l.d) tp_check(l, tol_lp(dt), what, bname);
    const char *names[5] = {"", "conv weight grad", "conv bias grad", "linear weight grad",
                            "linear bias grad"};
    for (int i = 1; i < 5; i++) {
        tp g = {grads[0][i], grads[1][i]};
        snprintf(what, sizeof what, "autocast %s %s", ct_dtype_name(dt), names[i]);
        if (g.c && g.d) {
            CHECK_MSG(ct_dtype_of(g.c) == CT_FLOAT32 && ct_dtype_of(g.d) == CT_FLOAT32,
                      "%s: master weights' gradients must be float32", what);
            tp_check(g, 3 * tol_lp(dt), what, bname);
        } else {
            CHECK_MSG(0, "%s missing", what);
        }
    }
    ct_free(loss[0]), ct_free(loss[1]);
    for (int i = 0; i < 6; i++) ct_free(cpu[i]), ct_free(gpu[i]);
}

static void case_autocast_cnn(ct_device dev, const ct_kernels *k, const char *bname) {
    (void)k;
    autocast_cnn(dev, bname, CT_BFLOAT16);
    autocast_cnn(dev, bname, CT_FLOAT16);
}

TEST(backends_ops_cnn_autocast_forward_backward) {
    char why[1024];
    if (backend_run_cases(case_autocast_cnn, why, sizeof why) == 0) SKIP(why);
}
