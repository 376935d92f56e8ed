/* CUDA topk and its kernel-table entries (cu_k_topk_*). The forward is one thread per row
 * along dim with a selection: the j-th pick is the best element ranked strictly after the
 * (j-1)-th in the kernel's total order (NaN above every number, then by value, equal
 * values by the smaller index), O(k n) per row and no scratch memory -- simple and exactly
 * the CPU's result (src/backends/cpu/cpu_topk.c), not tuned for large k. The backward is
 * one thread per gradient element, writing it at its index (topk's indices are distinct
 * along dim, so no two threads write one place) after the output is zeroed. */
#include "cuda_common.cuh"
#include "cuda_host.h"

/* Whether (x, xi) ranks before (y, yi): largest first (NaN first) or smallest first (NaN
 * last); equal values by the smaller index. */
template <typename T>
__device__ __forceinline__ bool ranks_before(T x, int64_t xi, T y, int64_t yi, bool largest) {
    const bool xn = CT_ISNAN(x), yn = CT_ISNAN(y);
    if (xn != yn) return largest ? xn : yn;
    if (!xn && x != y) return largest ? x > y : x < y;
    return xi < yi;
}

template <typename T>
__global__ void k_topk(int64_t rows, int64_t n, int64_t inner, int64_t k, bool largest,
                       const T *a, T *values, long long *indices) {
    CUK_LOOP(int64_t, r, rows) {
        const int64_t o = r / inner, in = r - o * inner;
        const T *row = a + o * n * inner + in;
        T pv = 0;
        int64_t pi = -1; /* the previous pick; -1: none yet */
        for (int64_t j = 0; j < k; j++) {
            T bv = 0;
            int64_t bi = -1;
            for (int64_t t = 0; t < n; t++) {
                const T v = row[t * inner];
                if (pi >= 0 && !ranks_before(pv, pi, v, t, largest)) continue;
                if (bi < 0 || ranks_before(v, t, bv, bi, largest)) {
                    bv = v;
                    bi = t;
                }
            }
            values[(o * k + j) * inner + in] = bv;
            indices[(o * k + j) * inner + in] = bi;
            pv = bv;
            pi = bi;
        }
    }
}

template <typename T>
__global__ void k_topk_backward(int64_t total, int64_t n, int64_t k, int64_t inner, const T *gy,
                                const long long *indices, T *gx) {
    CUK_LOOP(int64_t, s, total) {
        const int64_t o = s / (k * inner), in = s % inner;
        const long long i = indices[s];
        if (i >= 0 && i < n) gx[(o * n + i) * inner + in] = gy[s];
    }
}

static void split_dims(const ct_tensor *t, int dim, int64_t *outer, int64_t *inner) {
    *outer = *inner = 1;
    for (int d = 0; d < dim; d++) *outer *= t->shape[d];
    for (int d = dim + 1; d < t->ndim; d++) *inner *= t->shape[d];
}

extern "C" int cu_k_topk_forward(ct_tensor *values, ct_tensor *indices, const ct_tensor *a,
                                 int dim, int64_t k, int largest) {
    const char *op = "topk";
    int64_t outer, inner;
    split_dims(a, dim, &outer, &inner);
    const int64_t n = a->ndim ? a->shape[dim] : 1, rows = outer * inner;
    if (k < 0 || k > n) return cu_error("%s: k = %lld is out of [0, %lld]", op, (long long)k, (long long)n);
    cu_dev *d = cu_dev_of(a);
    if (!d) return -1;
    if (rows == 0 || k == 0) return 0;
    const int threads = 128, blocks = cuk_blocks(&d->k, rows, threads);
    long long *ix = (long long *)cu_ptr(indices);
#define TOPK_LAUNCH(T)                                                                     \
    CUK_LAUNCH(blocks, threads, 0, d->k.stream, k_topk<T>)(                                \
        rows, n, inner, k, largest != 0, (const T *)cu_ptr(a), (T *)cu_ptr(values), ix)
    switch (a->dtype) {
    case CT_FLOAT32: TOPK_LAUNCH(float); break;
    case CT_FLOAT64: TOPK_LAUNCH(double); break;
    case CT_INT64: TOPK_LAUNCH(long long); break;
    default:
        return cu_error("%s: dtype %s not supported on cuda (float32, float64 or int64)", op,
                        cu_dtype_name(a->dtype));
    }
#undef TOPK_LAUNCH
    return cu_fail(cuk_status(), op);
}

extern "C" int cu_k_topk_backward(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *indices,
                                  int dim) {
    const char *op = "topk backward";
    if (gx->dtype != gy->dtype || !cu_is_float(gx->dtype))
        return cu_error("%s: dtype %s has no gradient", op, cu_dtype_name(gx->dtype));
    cu_dev *d = cu_dev_of(gx);
    if (!d) return -1;
    int64_t outer, inner;
    split_dims(gx, dim, &outer, &inner);
    const int64_t n = gx->ndim ? gx->shape[dim] : 1, k = gy->ndim ? gy->shape[dim] : 1;
    const int64_t total = outer * k * inner;
    cudaError_t e = cudaMemsetAsync(cu_ptr(gx), 0, (size_t)cu_numel(gx) * cu_dsize(gx->dtype),
                                    d->k.stream);
    if (e != cudaSuccess) return cu_fail((int)e, op);
    if (total == 0) return 0;
    const int blocks = cuk_blocks(&d->k, total, CUK_THREADS);
    const long long *ix = (const long long *)cu_ptr(indices);
    if (gx->dtype == CT_FLOAT32)
        CUK_LAUNCH(blocks, CUK_THREADS, 0, d->k.stream, k_topk_backward<float>)(
            total, n, k, inner, (const float *)cu_ptr(gy), ix, (float *)cu_ptr(gx));
    else
        CUK_LAUNCH(blocks, CUK_THREADS, 0, d->k.stream, k_topk_backward<double>)(
            total, n, k, inner, (const double *)cu_ptr(gy), ix, (double *)cu_ptr(gx));
    return cu_fail(cuk_status(), op);
}
