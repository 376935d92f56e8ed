/* CPU reductions: sum / mean over any set of dims (accumulated in double), max with
 * argmax over one dim, any / all (counts of the non-zero / zero elements). */
#include "core/error.h"
#include "core/parallel.h"
#include "backends/cpu/cpu_isa.h"
#include "cpu_kernels.h"
#include "core/half.h"

#include <math.h>
#include <string.h>

typedef struct {
    ct_redop op;
    const ct_tensor *a;
    ct_tensor *out, *idx;
    int nk, nr;                     /* kept / reduced dims */
    int64_t kshape[CT_MAX_DIMS], kstride[CT_MAX_DIMS];
    int64_t rshape[CT_MAX_DIMS], rstride[CT_MAX_DIMS];
    int64_t rcount;
} red_ctx;

static inline double ld(const char *base, int64_t off, ct_dtype dt) {
    return dt == CT_FLOAT32 ? ((const float *)base)[off]
         : dt == CT_FLOAT64 ? ((const double *)base)[off]
         : dt == CT_BOOL    ? (double)((const uint8_t *)base)[off]
                            : (double)((const int64_t *)base)[off];
}

static void red_range(void *vc, int64_t b, int64_t e) {
    red_ctx *c = vc;
    const char *base = ct_ptr(c->a);
    ct_dtype dt = c->a->dtype;
    int last = c->nr - 1;
    for (int64_t o = b; o < e; o++) {
        int64_t off = 0, rem = o;
        for (int d = c->nk - 1; d >= 0; d--) {
            off += (rem % c->kshape[d]) * c->kstride[d];
            rem /= c->kshape[d];
        }
        double acc = c->op == CT_RED_MAX ? -INFINITY : 0;
        int64_t best = 0;
        int isnan_seen = 0;
        int64_t inner = c->rshape[last], ist = c->rstride[last];
        int64_t outer = c->rcount / (inner ? inner : 1);
        for (int64_t r = 0; r < outer; r++) {
            int64_t roff = off, rr = r;
            for (int d = last - 1; d >= 0; d--) {
                roff += (rr % c->rshape[d]) * c->rstride[d];
                rr /= c->rshape[d];
            }
            if (c->op == CT_RED_MAX) {
                for (int64_t i = 0; i < inner; i++) {
                    double v = ld(base, roff + i * ist, dt);
                    if (isnan_seen) break;
                    if (isnan(v)) { acc = v; best = r * inner + i; isnan_seen = 1; break; }
                    if (v > acc || (r == 0 && i == 0)) { acc = v; best = r * inner + i; }
                }
            } else if (c->op == CT_RED_ANY || c->op == CT_RED_ALL) {
                const int any = c->op == CT_RED_ANY; /* count non-zeros / zeros */
                for (int64_t i = 0; i < inner; i++) acc += (ld(base, roff + i * ist, dt) != 0) == any;
            } else if (dt == CT_FLOAT32 && ist == 1) {
                const float *p = (const float *)base + roff;
                double s = 0;
                for (int64_t i = 0; i < inner; i++) s += p[i];
                acc += s;
            } else {
                for (int64_t i = 0; i < inner; i++) acc += ld(base, roff + i * ist, dt);
            }
        }
        if (c->op == CT_RED_MEAN) acc /= (double)(c->rcount ? c->rcount : 1);
        if (c->op == CT_RED_MEAN && c->rcount == 0) acc = NAN;
        if (c->op == CT_RED_ANY) acc = acc > 0;
        if (c->op == CT_RED_ALL) acc = acc == 0;
        char *op = ct_ptr(c->out);
        switch (c->out->dtype) {
        case CT_FLOAT32: ((float *)op)[o] = (float)acc; break;
        case CT_FLOAT64: ((double *)op)[o] = acc; break;
        case CT_INT64: ((int64_t *)op)[o] = (int64_t)acc; break;
        case CT_BOOL: ((uint8_t *)op)[o] = acc != 0; break;
        default: break;
        }
        if (c->idx) ((int64_t *)ct_ptr(c->idx))[o] = best;
    }
}

/* ------------------------------------------------- reduction over outer dims
 * When every reduced dim lies outside every kept dim and the kept dims form one dense
 * block with unit stride (x.sum(0) on [R, C]: bias gradients, broadcast backward), the
 * outputs are a run of contiguous columns: rows of the input are added into a block of
 * column accumulators, which vectorizes, instead of one strided walk per output. The
 * accumulation is in double and in the same order as the general path, so the results
 * are identical. */
enum { COL_BLOCK = 256 };

/* Number of contiguous kept columns, or 0 when the layout does not fit. */
static int64_t outer_reduce_cols(const ct_tensor *a, const int *reduce) {
    int64_t cols = 1;
    int seen_reduced = 0;
    for (int d = a->ndim - 1; d >= 0; d--) {
        if (a->shape[d] == 1) continue;
        if (reduce[d]) {
            seen_reduced = 1;
        } else {
            if (seen_reduced || a->stride[d] != cols) return 0;
            cols *= a->shape[d];
        }
    }
    return seen_reduced && cols > 1 ? cols : 0;
}

#define COLRED(T, NAME)                                                                       \
    CT_MULTIVERSION static void NAME(void *vc, int64_t j0, int64_t j1) {                      \
        red_ctx *c = vc;                                                                      \
        const T *base = (const T *)ct_ptr(c->a);                                              \
        T *out = (T *)ct_ptr(c->out);                                                         \
        double acc[COL_BLOCK];                                                                \
        for (int64_t jb = j0; jb < j1; jb += COL_BLOCK) {                                     \
            int64_t w = j1 - jb < COL_BLOCK ? j1 - jb : COL_BLOCK;                            \
            for (int64_t j = 0; j < w; j++) acc[j] = 0;                                       \
            for (int64_t r = 0; r < c->rcount; r++) {                                         \
                int64_t roff = 0, rr = r;                                                     \
                if (c->nr == 1) roff = r * c->rstride[0];                                     \
                else                                                                          \
                    for (int d = c->nr - 1; d >= 0; d--) {                                    \
                        roff += (rr % c->rshape[d]) * c->rstride[d];                          \
                        rr /= c->rshape[d];                                                   \
                    }                                                                         \
                const T *p = base + roff + jb;                                                \
                for (int64_t j = 0; j < w; j++) acc[j] += p[j];                               \
            }                                                                                 \
            if (c->op == CT_RED_MEAN)                                                         \
                for (int64_t j = 0; j < w; j++) acc[j] /= (double)c->rcount;                  \
            for (int64_t j = 0; j < w; j++) out[jb + j] = (T)acc[j];                          \
        }                                                                                     \
    }
COLRED(float, colred_f32)
COLRED(double, colred_f64)

/* bfloat16 columns: the same double sums of the widened values, rounded once to float32
 * and then to bf16 (as widening a whole, reducing in float32 and rounding back). */
CT_MULTIVERSION static void colred_bf16(void *vc, int64_t j0, int64_t j1) {
    red_ctx *c = vc;
    const uint16_t *base = (const uint16_t *)ct_ptr(c->a);
    uint16_t *out = (uint16_t *)ct_ptr(c->out);
    double acc[COL_BLOCK];
    for (int64_t jb = j0; jb < j1; jb += COL_BLOCK) {
        int64_t w = j1 - jb < COL_BLOCK ? j1 - jb : COL_BLOCK;
        for (int64_t j = 0; j < w; j++) acc[j] = 0;
        for (int64_t r = 0; r < c->rcount; r++) {
            int64_t roff = 0, rr = r;
            for (int d = c->nr - 1; d >= 0; d--) {
                roff += (rr % c->rshape[d]) * c->rstride[d];
                rr /= c->rshape[d];
            }
            const uint16_t *p = base + roff + jb;
            for (int64_t j = 0; j < w; j++) acc[j] += ct_bf16_to_f32(p[j]);
        }
        if (c->op == CT_RED_MEAN)
            for (int64_t j = 0; j < w; j++) acc[j] /= (double)c->rcount;
        for (int64_t j = 0; j < w; j++) out[jb + j] = ct_f32_to_bf16((float)acc[j]);
    }
}

static void fill_ctx(red_ctx *c, const ct_tensor *a, const int *reduce) {
    c->rcount = 1;
    for (int d = 0; d < a->ndim; d++) {
        if (reduce[d]) {
            c->rshape[c->nr] = a->shape[d];
            c->rstride[c->nr++] = a->stride[d];
            c->rcount *= a->shape[d];
        } else {
            c->kshape[c->nk] = a->shape[d];
            c->kstride[c->nk++] = a->stride[d];
        }
    }
    if (c->nr == 0) { /* nothing reduced: a copy */
        c->rshape[0] = 1;
        c->rstride[0] = 0;
        c->nr = 1;
    }
}

/* Sums over outer dims into `cols` adjacent columns. */
static void run_colred(red_ctx *c, int64_t cols, void (*fn)(void *, int64_t, int64_t)) {
    /* adjacent reduced dims that are one run in memory count as one (the rows in the
     * same order: the same sums), e.g. [N, L] of an [N, L, C] bias gradient */
    int nr = 0;
    for (int d = 0; d < c->nr; d++) {
        if (nr > 0 && c->rstride[nr - 1] == c->rstride[d] * c->rshape[d]) {
            c->rshape[nr - 1] *= c->rshape[d];
            c->rstride[nr - 1] = c->rstride[d];
        } else {
            c->rshape[nr] = c->rshape[d], c->rstride[nr++] = c->rstride[d];
        }
    }
    c->nr = nr;
    /* columns in runs of 16 (whole cache lines) per thread: a 192-wide bias gradient
     * of many rows is split over the threads too */
    int64_t g = 65536 / c->rcount;
    g = g < 16 ? 16 : (g + 15) / 16 * 16;
    ct_parallel_for(cols, g, fn, c);
}

int cpu_reduce_bf16_cols(ct_redop op, ct_tensor *out, const ct_tensor *a, const int *reduce) {
    if ((op != CT_RED_SUM && op != CT_RED_MEAN) || a->dtype != CT_BFLOAT16 ||
        out->dtype != CT_BFLOAT16 || !ct_is_contiguous(out))
        return 1;
    red_ctx c = {.op = op, .a = a, .out = out};
    fill_ctx(&c, a, reduce);
    int64_t cols = outer_reduce_cols(a, reduce);
    if (c.rcount <= 0 || cols != ct_numel(out)) return 1;
    run_colred(&c, cols, colred_bf16);
    return 0;
}

int cpu_reduce_full(ct_redop op, ct_tensor *out, ct_tensor *indices, const ct_tensor *a, const int *reduce) {
    int r = cpu_reduce_bf16_cols(op, out, a, reduce);
    if (r <= 0) return r; /* bf16 columns (a bias gradient) summed without a widened copy */
    if (a->dtype != CT_FLOAT32 && a->dtype != CT_FLOAT64 && a->dtype != CT_INT64 &&
        a->dtype != CT_BOOL)
        return ct_error("reduce: dtype %s not supported on the CPU", ct_dtype_name(a->dtype));
    red_ctx c = {.op = op, .a = a, .out = out, .idx = indices};
    fill_ctx(&c, a, reduce);
    int64_t nout = ct_numel(out);
    if (op == CT_RED_MAX && c.rcount == 0)
        return ct_error("max: cannot reduce over an empty dimension (no identity)");
    int64_t cols;
    if ((op == CT_RED_SUM || op == CT_RED_MEAN) && c.rcount > 0 && out->dtype == a->dtype &&
        (a->dtype == CT_FLOAT32 || a->dtype == CT_FLOAT64) && ct_is_contiguous(out) &&
        (cols = outer_reduce_cols(a, reduce)) == nout) {
        run_colred(&c, cols, a->dtype == CT_FLOAT32 ? colred_f32 : colred_f64);
        return 0;
    }
    int64_t grain = c.rcount > 0 ? 65536 / c.rcount : 65536;
    ct_parallel_for(nout, grain > 0 ? grain : 1, red_range, &c);
    return 0;
}
