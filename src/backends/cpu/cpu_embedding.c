/* CPU embedding kernels: row gathers for the forward, a deterministic scatter-add of the
 * gradient rows for the backward (each thread owns a range of columns and adds the rows
 * in index order). */
#include "core/backend.h"
#include "core/error.h"
#include "core/parallel.h"
#include "cpu_kernels.h"

#include <string.h>

/* The first index outside [0, num), as an error; 0 when all are inside. */
static int check_indices(const int64_t *idx, int64_t n, int64_t num) {
    for (int64_t i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= num)
            return ct_error("embedding: index %lld at position %lld is out of range for %lld "
                            "embeddings (indices must be in [0, %lld))",
                            (long long)idx[i], (long long)i, (long long)num, (long long)num);
    return 0;
}

typedef struct {
    char *y;
    const char *w, *gy;
    char *gw;
    const int64_t *idx;
    int64_t n, dim, num, padding;
    size_t esize;
} emb_ctx;

static void gather_rows(void *vc, int64_t b, int64_t e) {
    const emb_ctx *c = vc;
    const size_t row = (size_t)c->dim * c->esize;
    for (int64_t i = b; i < e; i++) memcpy(c->y + (size_t)i * row, c->w + (size_t)c->idx[i] * row, row);
}

int cpu_embedding_forward_full(ct_tensor *y, const ct_tensor *weight, const ct_tensor *indices) {
    emb_ctx c = {.y = ct_ptr(y), .w = ct_ptr(weight), .idx = (const int64_t *)ct_ptr(indices),
                 .n = ct_numel(indices), .dim = weight->shape[1], .num = weight->shape[0],
                 .esize = ct_dtype_size(weight->dtype)};
    if (check_indices(c.idx, c.n, c.num) != 0) return -1;
    int64_t grain = c.dim > 0 ? (1 << 15) / c.dim + 1 : c.n + 1;
    ct_parallel_for(c.n, grain, gather_rows, &c);
    return 0;
}

/* Columns [b, e) of every row: gw[idx[i]] += gy[i] for i in index order. */
#define SCATTER(T, NAME)                                                                      \
    static void NAME(void *vc, int64_t b, int64_t e) {                                        \
        const emb_ctx *c = vc;                                                                \
        T *gw = (T *)c->gw;                                                                   \
        const T *gy = (const T *)c->gy;                                                       \
        for (int64_t i = 0; i < c->n; i++) {                                                  \
            const int64_t r = c->idx[i];                                                      \
            if (r == c->padding) continue;                                                    \
            T *dst = gw + r * c->dim;                                                         \
            const T *src = gy + i * c->dim;                                                   \
            for (int64_t j = b; j < e; j++) dst[j] += src[j];                                 \
        }                                                                                     \
    }
SCATTER(float, scatter_f32)
SCATTER(double, scatter_f64)

int cpu_embedding_backward_full(ct_tensor *gw, const ct_tensor *gy, const ct_tensor *indices,
                           int64_t padding_idx) {
    emb_ctx c = {.gw = ct_ptr(gw), .gy = ct_ptr(gy), .idx = (const int64_t *)ct_ptr(indices),
                 .n = ct_numel(indices), .dim = gw->shape[1], .num = gw->shape[0],
                 .padding = padding_idx, .esize = ct_dtype_size(gw->dtype)};
    if (check_indices(c.idx, c.n, c.num) != 0) return -1;
    memset(c.gw, 0, (size_t)(c.num * c.dim) * c.esize);
    int64_t grain = c.n > 0 ? (1 << 16) / c.n + 16 : c.dim + 1;
    if (gw->dtype == CT_FLOAT32) ct_parallel_for(c.dim, grain, scatter_f32, &c);
    else if (gw->dtype == CT_FLOAT64) ct_parallel_for(c.dim, grain, scatter_f64, &c);
    else return ct_error("embedding backward: dtype %s not supported", ct_dtype_name(gw->dtype));
    return 0;
}
