/* CPU topk: each row along dim is copied with its indices and sorted (qsort) in the
 * kernel's total order -- NaN above every number, then by value, equal values by the
 * smaller index -- and its first k entries kept; rows are spread over the thread pool.
 * The backward puts the gradient rows back at the chosen positions. */
#include "core/error.h"
#include "core/parallel.h"
#include "cpu_kernels.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *a;
    char *v;
    int64_t *ix;
    int64_t outer, n, inner, k;
    int largest;
    ct_dtype dt;
    int failed; /* a worker could not allocate its row buffer */
} topk_ctx;

/* [outer, n, inner] around dim. */
static void split_dims(const ct_tensor *t, int dim, int64_t *outer, int64_t *inner) {
    *outer = *inner = 1;
    for (int d = 0; d < dim; d++) *outer *= t->shape[d];
    for (int d = dim + 1; d < t->ndim; d++) *inner *= t->shape[d];
}

/* Item types and comparators: DESC (largest first: NaN first) and ASC (smallest first:
 * NaN last), equal values by the smaller index either way. */
#define TOPK_TYPE(T, SUF)                                                                     \
    typedef struct {                                                                          \
        T v;                                                                                  \
        int64_t i;                                                                            \
    } item_##SUF;                                                                             \
    static int order_##SUF(const item_##SUF *x, const item_##SUF *y, int desc) {              \
        const int xn = CT_ISNAN(x->v), yn = CT_ISNAN(y->v);                                   \
        if (xn != yn) return (xn ? -1 : 1) * (desc ? 1 : -1);                                 \
        if (!xn && x->v != y->v) return (x->v > y->v ? -1 : 1) * (desc ? 1 : -1);             \
        return (x->i > y->i) - (x->i < y->i);                                                 \
    }                                                                                         \
    static int desc_##SUF(const void *p, const void *q) { return order_##SUF(p, q, 1); }     \
    static int asc_##SUF(const void *p, const void *q) { return order_##SUF(p, q, 0); }      \
    static void rows_##SUF(topk_ctx *c, int64_t r0, int64_t r1) {                             \
        item_##SUF *buf = malloc((size_t)(c->n > 0 ? c->n : 1) * sizeof *buf);                \
        if (!buf) {                                                                           \
            __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);                                \
            return;                                                                           \
        }                                                                                     \
        const T *a = (const T *)c->a;                                                         \
        T *v = (T *)c->v;                                                                     \
        for (int64_t r = r0; r < r1; r++) {                                                   \
            const int64_t o = r / c->inner, in = r % c->inner;                                \
            for (int64_t j = 0; j < c->n; j++) {                                              \
                buf[j].v = a[(o * c->n + j) * c->inner + in];                                 \
                buf[j].i = j;                                                                 \
            }                                                                                 \
            qsort(buf, (size_t)c->n, sizeof *buf, c->largest ? desc_##SUF : asc_##SUF);       \
            for (int64_t j = 0; j < c->k; j++) {                                              \
                v[(o * c->k + j) * c->inner + in] = buf[j].v;                                 \
                c->ix[(o * c->k + j) * c->inner + in] = buf[j].i;                             \
            }                                                                                 \
        }                                                                                     \
        free(buf);                                                                            \
    }
TOPK_TYPE(float, f32)
TOPK_TYPE(double, f64)
TOPK_TYPE(int64_t, i64)

static void topk_rows(void *vc, int64_t r0, int64_t r1) {
    topk_ctx *c = vc;
    switch (c->dt) {
    case CT_FLOAT32: rows_f32(c, r0, r1); break;
    case CT_FLOAT64: rows_f64(c, r0, r1); break;
    default: rows_i64(c, r0, r1); break;
    }
}

int cpu_topk_forward(ct_tensor *values, ct_tensor *indices, const ct_tensor *a, int dim,
                     int64_t k, int largest) {
    if (a->dtype != CT_FLOAT32 && a->dtype != CT_FLOAT64 && a->dtype != CT_INT64)
        return ct_error("topk: dtype %s not supported on the CPU (float32, float64 or int64)",
                        ct_dtype_name(a->dtype));
    topk_ctx c = {.a = ct_ptr(a), .v = ct_ptr(values), .ix = (int64_t *)ct_ptr(indices),
                  .n = a->ndim ? a->shape[dim] : 1, .k = k, .largest = largest, .dt = a->dtype};
    split_dims(a, dim, &c.outer, &c.inner);
    if (k < 0 || k > c.n) return ct_error("topk: k = %lld is out of [0, %lld]", (long long)k,
                                          (long long)c.n);
    const int64_t rows = c.outer * c.inner;
    if (rows == 0 || k == 0) return 0;
    ct_parallel_for(rows, 65536 / (c.n + 1) + 1, topk_rows, &c);
    if (c.failed) return ct_error("topk: out of memory for a row of %lld elements", (long long)c.n);
    return 0;
}

int cpu_topk_backward(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *indices, int dim) {
    if (gx->dtype != gy->dtype || (gx->dtype != CT_FLOAT32 && gx->dtype != CT_FLOAT64))
        return ct_error("topk backward: dtype %s has no gradient", ct_dtype_name(gx->dtype));
    int64_t outer, inner;
    split_dims(gx, dim, &outer, &inner);
    const int64_t n = gx->ndim ? gx->shape[dim] : 1, k = gy->ndim ? gy->shape[dim] : 1;
    const size_t es = ct_dtype_size(gx->dtype);
    char *g = ct_ptr(gx);
    const char *src = ct_ptr(gy);
    const int64_t *ix = (const int64_t *)ct_ptr(indices);
    memset(g, 0, (size_t)ct_numel(gx) * es);
    for (int64_t o = 0; o < outer; o++)
        for (int64_t j = 0; j < k; j++)
            for (int64_t in = 0; in < inner; in++) {
                const int64_t s = (o * k + j) * inner + in;
                if (ix[s] < 0 || ix[s] >= n)
                    return ct_error("topk backward: index %lld out of range for size %lld",
                                    (long long)ix[s], (long long)n);
                memcpy(g + (size_t)((o * n + ix[s]) * inner + in) * es, src + (size_t)s * es, es);
            }
    return 0;
}
