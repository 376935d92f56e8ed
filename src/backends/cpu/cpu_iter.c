#include "cpu_iter.h"

#include <string.h>

void ct_iter_init(ct_iter *it, int nops, const ct_tensor *const *ops) {
    const ct_tensor *t0 = ops[0];
    memset(it, 0, sizeof *it);
    it->nops = nops;
    for (int k = 0; k < nops; k++) {
        it->base[k] = ct_ptr(ops[k]);
        it->esize[k] = ct_dtype_size(ops[k]->dtype);
    }
    /* drop size-1 dims, then merge mergeable neighbours */
    int nd = 0;
    for (int d = 0; d < t0->ndim; d++) {
        if (t0->shape[d] == 1) continue;
        it->shape[nd] = t0->shape[d];
        for (int k = 0; k < nops; k++) it->st[k][nd] = ops[k]->stride[d];
        nd++;
    }
    if (nd == 0) {
        it->ndim = 1;
        it->shape[0] = 1;
        for (int k = 0; k < nops; k++) it->st[k][0] = 1;
        return;
    }
    int w = 0;
    for (int d = 1; d < nd; d++) {
        int ok = 1;
        for (int k = 0; k < nops; k++)
            if (it->st[k][w] != it->st[k][d] * it->shape[d]) ok = 0;
        if (ok) {
            it->shape[w] *= it->shape[d];
            for (int k = 0; k < nops; k++) it->st[k][w] = it->st[k][d];
        } else {
            w++;
            it->shape[w] = it->shape[d];
            for (int k = 0; k < nops; k++) it->st[k][w] = it->st[k][d];
        }
    }
    it->ndim = w + 1;
}

typedef struct {
    const ct_iter *it;
    ct_row_fn fn;
    void *ctx;
    int64_t inner;
} run_ctx;

static void run_rows(void *vc, int64_t r0, int64_t r1) {
    run_ctx *c = vc;
    const ct_iter *it = c->it;
    int last = it->ndim - 1;
    int64_t s[CT_ITER_MAX_OPS];
    for (int k = 0; k < CT_ITER_MAX_OPS; k++) s[k] = it->st[k][last];
    for (int64_t r = r0; r < r1; r++) {
        char *p[CT_ITER_MAX_OPS];
        int64_t rem = r;
        int64_t off[CT_ITER_MAX_OPS] = {0};
        for (int d = last - 1; d >= 0; d--) {
            int64_t idx = rem % it->shape[d];
            rem /= it->shape[d];
            for (int k = 0; k < it->nops; k++) off[k] += idx * it->st[k][d];
        }
        for (int k = 0; k < it->nops; k++) p[k] = it->base[k] + off[k] * (int64_t)it->esize[k];
        c->fn(c->ctx, c->inner, p, s);
    }
}

typedef struct {
    const ct_iter *it;
    ct_row_fn fn;
    void *ctx;
} flat_ctx;

static void run_flat(void *vc, int64_t b, int64_t e) {
    flat_ctx *c = vc;
    const ct_iter *it = c->it;
    char *p[CT_ITER_MAX_OPS];
    int64_t s[CT_ITER_MAX_OPS];
    for (int k = 0; k < it->nops; k++) {
        s[k] = it->st[k][0];
        p[k] = it->base[k] + b * s[k] * (int64_t)it->esize[k];
    }
    c->fn(c->ctx, e - b, p, s);
}

void ct_iter_run(const ct_iter *it, ct_row_fn fn, void *ctx) {
    if (it->ndim == 1) {
        flat_ctx c = {it, fn, ctx};
        ct_parallel_for(it->shape[0], 32768, run_flat, &c);
        return;
    }
    int64_t inner = it->shape[it->ndim - 1], rows = 1;
    for (int d = 0; d < it->ndim - 1; d++) rows *= it->shape[d];
    run_ctx c = {it, fn, ctx, inner};
    int64_t grain = 32768 / (inner > 0 ? inner : 1);
    ct_parallel_for(rows, grain > 0 ? grain : 1, run_rows, &c);
}
