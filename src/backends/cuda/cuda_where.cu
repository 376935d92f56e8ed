/* CUDA where and its kernel-table entry (cu_k_where): out = cond ? a : b over broadcast
 * operands, one thread per output element (the output is contiguous; the three inputs
 * are walked through one cuk_geom), moving elements of any dtype by their size. */
#include "cuda_common.cuh"
#include "cuda_host.h"

template <typename I, typename T>
__global__ void k_where(cuk_geom g, I n, T *o, const uint8_t *c, const T *a, const T *b) {
    CUK_LOOP(I, i, n) {
        int64_t off[3];
        cuk_offsets<3, I>(g, i, off);
        o[i] = c[off[0]] ? a[off[1]] : b[off[2]];
    }
}

template <typename T>
static int launch_where(cu_dev *d, const cuk_geom *g, int64_t n, void *o, const void *c,
                        const void *a, const void *b) {
    const int blocks = cuk_blocks(&d->k, n, CUK_THREADS);
    if (n < INT32_MAX)
        CUK_LAUNCH(blocks, CUK_THREADS, 0, d->k.stream, k_where<uint32_t, T>)(
            *g, (uint32_t)n, (T *)o, (const uint8_t *)c, (const T *)a, (const T *)b);
    else
        CUK_LAUNCH(blocks, CUK_THREADS, 0, d->k.stream, k_where<int64_t, T>)(
            *g, n, (T *)o, (const uint8_t *)c, (const T *)a, (const T *)b);
    return cuk_status();
}

extern "C" int cu_k_where(ct_tensor *out, const ct_tensor *cond, const ct_tensor *a,
                          const ct_tensor *b) {
    const char *op = "where";
    if (cond->dtype != CT_BOOL || a->dtype != out->dtype || b->dtype != out->dtype)
        return cu_error("%s: cond must be bool and a, b, out of one dtype on cuda", op);
    if (!cu_is_contiguous(out)) return cu_error("%s: the output must be contiguous", op);
    cu_dev *d = cu_dev_of(out);
    if (!d) return -1;
    cuk_geom g;
    const ct_tensor *ops[3] = {cond, a, b};
    const int64_t n = cu_make_geom(&g, 3, ops);
    if (n <= 0) return 0;
    void *o = cu_ptr(out);
    const void *c = cu_ptr(cond), *pa = cu_ptr(a), *pb = cu_ptr(b);
    int rc;
    switch (cu_dsize(out->dtype)) {
    case 1: rc = launch_where<uint8_t>(d, &g, n, o, c, pa, pb); break;
    case 2: rc = launch_where<uint16_t>(d, &g, n, o, c, pa, pb); break;
    case 4: rc = launch_where<uint32_t>(d, &g, n, o, c, pa, pb); break;
    default: rc = launch_where<uint64_t>(d, &g, n, o, c, pa, pb); break;
    }
    return cu_fail(rc, op);
}
