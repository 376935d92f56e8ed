/* CUDA embedding kernels behind the kernel-table entries (cu_k_embedding_*_full; the
 * entries, in cuda_lowp.c, widen bfloat16 / float16 to float32 around them): a gather of
 * weight rows, and a deterministic backward (one thread per column adds the gradient rows
 * in index order: no atomics, the same sums run after run). An index out of range raises
 * the device flag, reported at the next synchronisation. */
#include "cuda_common.cuh"
#include "cuda_host.h"

static const char k_index_fmt[] =
    "embedding: index %lld at position %lld is out of range for %lld embeddings (indices "
    "must be in [0, %lld))";

template <typename T>
__global__ void k_embedding_fwd(int64_t n, int64_t dim, int64_t num, const long long *idx,
                                const T *w, T *y, long long *flag, int kind) {
    CUK_LOOP(int64_t, k, n * dim) {
        const int64_t i = k / dim, j = k - i * dim;
        const long long r = idx[i];
        if (r < 0 || r >= num) {
            if (j == 0) cuk_flag_out_of_range(flag, kind, i, r, num);
            y[k] = (T)NAN;
            continue;
        }
        y[k] = w[r * dim + j];
    }
}

template <typename T>
__global__ void k_embedding_bwd(int64_t n, int64_t dim, int64_t num, int64_t padding,
                                const long long *idx, const T *gy, T *gw) {
    CUK_LOOP(int64_t, j, dim) {
        for (int64_t i = 0; i < n; i++) {
            const long long r = idx[i];
            if (r < 0 || r >= num || r == padding) continue; /* reported by the forward */
            gw[r * dim + j] += gy[i * dim + j];
        }
    }
}

extern "C" int cu_k_embedding_forward_full(ct_tensor *y, const ct_tensor *weight,
                                           const ct_tensor *indices) {
    const char *op = "embedding";
    cu_dev *d = cu_dev_of(y);
    if (!d) return -1;
    const int64_t n = cu_numel(indices), dim = weight->shape[1], num = weight->shape[0];
    if (n * dim == 0) return 0;
    const int kind = cu_flag_kind(k_index_fmt);
    const long long *idx = (const long long *)cu_ptr(indices);
    const int blocks = cuk_blocks(&d->k, n * dim, CUK_THREADS);
    if (weight->dtype == CT_FLOAT32)
        CUK_LAUNCH(blocks, CUK_THREADS, 0, d->k.stream, k_embedding_fwd<float>)(
            n, dim, num, idx, (const float *)cu_ptr(weight), (float *)cu_ptr(y), d->k.flag, kind);
    else if (weight->dtype == CT_FLOAT64)
        CUK_LAUNCH(blocks, CUK_THREADS, 0, d->k.stream, k_embedding_fwd<double>)(
            n, dim, num, idx, (const double *)cu_ptr(weight), (double *)cu_ptr(y), d->k.flag,
            kind);
    else
        return cu_error("%s: dtype %s not supported on cuda (float32, float64, bfloat16 or "
                        "float16)",
                        op, cu_dtype_name(weight->dtype));
    int rc = cu_fail(cuk_status(), op);
    return rc ? rc : cu_flag_raised(d, op);
}

extern "C" int cu_k_embedding_backward_full(ct_tensor *gw, const ct_tensor *gy,
                                            const ct_tensor *indices, int64_t padding_idx) {
    const char *op = "embedding backward";
    cu_dev *d = cu_dev_of(gw);
    if (!d) return -1;
    const int64_t n = cu_numel(indices), dim = gw->shape[1], num = gw->shape[0];
    cudaError_t e = cudaMemsetAsync(cu_ptr(gw), 0, (size_t)(num * dim) * cu_dsize(gw->dtype),
                                    d->k.stream);
    if (e != cudaSuccess) return cu_fail((int)e, op);
    if (n * dim == 0) return 0;
    const long long *idx = (const long long *)cu_ptr(indices);
    const int blocks = cuk_blocks(&d->k, dim, CUK_THREADS);
    if (gw->dtype == CT_FLOAT32)
        CUK_LAUNCH(blocks, CUK_THREADS, 0, d->k.stream, k_embedding_bwd<float>)(
            n, dim, num, padding_idx, idx, (const float *)cu_ptr(gy), (float *)cu_ptr(gw));
    else if (gw->dtype == CT_FLOAT64)
        CUK_LAUNCH(blocks, CUK_THREADS, 0, d->k.stream, k_embedding_bwd<double>)(
            n, dim, num, padding_idx, idx, (const double *)cu_ptr(gy), (double *)cu_ptr(gw));
    else
        return cu_error("%s: dtype %s not supported on cuda (float32, float64, bfloat16 or "
                        "float16)",
                        op, cu_dtype_name(gw->dtype));
    return cu_fail(cuk_status(), op);
}
