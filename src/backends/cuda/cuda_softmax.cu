/* softmax / log_softmax (forward, backward) and nll_loss (forward, backward), mirroring
 * src/backends/cpu/cpu_softmax.c and cpu_loss.c: max in the element type, exponentials
 * of x - max in the element type, sums accumulated in double; log_softmax subtracts
 * (T)(max + log(sum)); softmax multiplies by (T)(1/sum).
 *
 * Layout [outer, C, inner] around the softmax dim:
 *  - inner == 1, C <= 1024: a warp per row;  inner == 1, C > 1024: a block per row;
 *  - inner > 1: a thread per (outer, inner) position walking the C planes (reads are
 *    coalesced across neighbouring positions). */
#include "cuda_common.cuh"

#include <limits.h>

/* ------------------------------------------------------------ row helpers */
template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        T w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w > v ? w : v;
    }
    return v;
}

template <typename T>
__device__ __forceinline__ T block_max(T v, T *sh /* [32] */) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : -(T)INFINITY;
    return warp_max(v);
}

/* One row of C elements handled by a group of `n` threads with rank `r` (a warp or a
 * block); REDUCE_MAX / REDUCE_SUM combine across the group. */
#define SM_ROW_FWD(REDUCE_MAX, REDUCE_SUM)                                                 \
    {                                                                                      \
        T m = -(T)INFINITY;                                                                \
        for (int64_t i = r; i < C; i += n) m = x[i] > m ? x[i] : m;                        \
        m = REDUCE_MAX(m);                                                                 \
        double s = 0;                                                                      \
        for (int64_t i = r; i < C; i += n) s += (double)cu_exp(x[i] - m);                  \
        s = REDUCE_SUM(s);                                                                 \
        if (log) {                                                                         \
            T lse = (T)((double)m + ::log(s));                                             \
            for (int64_t i = r; i < C; i += n) y[i] = x[i] - lse;                          \
        } else {                                                                           \
            T inv = (T)(1.0 / s);                                                          \
            for (int64_t i = r; i < C; i += n) y[i] = cu_exp(x[i] - m) * inv;              \
        }                                                                                  \
    }

#define SM_ROW_BWD(REDUCE_SUM)                                                             \
    {                                                                                      \
        double s = 0;                                                                      \
        if (log)                                                                           \
            for (int64_t i = r; i < C; i += n) s += (double)gy[i];                         \
        else                                                                               \
            for (int64_t i = r; i < C; i += n) s += (double)gy[i] * (double)y[i];          \
        s = REDUCE_SUM(s);                                                                 \
        T ts = (T)s;                                                                       \
        if (log)                                                                           \
            for (int64_t i = r; i < C; i += n) gx[i] = gy[i] - cu_exp(y[i]) * ts;          \
        else                                                                               \
            for (int64_t i = r; i < C; i += n) gx[i] = y[i] * (gy[i] - ts);                \
    }

#define WARP_MAX(v) warp_max(v)
#define WARP_SUM(v) cuk_warp_sum(v)
#define BLOCK_MAX(v) block_max(v, shm)
#define BLOCK_SUM(v) cuk_block_sum(v, shd)

template <typename T>
__global__ void k_sm_fwd_warp(int64_t rows, int64_t C, int log, const T *X, T *Y) {
    int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return; /* whole warps exit together */
    const int r = threadIdx.x & 31, n = 32;
    const T *x = X + row * C;
    T *y = Y + row * C;
    SM_ROW_FWD(WARP_MAX, WARP_SUM)
}

template <typename T>
__global__ void k_sm_fwd_block(int64_t C, int log, const T *X, T *Y) {
    __shared__ T shm[32];
    __shared__ double shd[32];
    const int r = threadIdx.x, n = blockDim.x;
    const T *x = X + (int64_t)blockIdx.x * C;
    T *y = Y + (int64_t)blockIdx.x * C;
    SM_ROW_FWD(BLOCK_MAX, BLOCK_SUM)
}

template <typename T>
__global__ void k_sm_bwd_warp(int64_t rows, int64_t C, int log, const T *Y, const T *GY, T *GX) {
    int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    const int r = threadIdx.x & 31, n = 32;
    const T *y = Y + row * C, *gy = GY + row * C;
    T *gx = GX + row * C;
    SM_ROW_BWD(WARP_SUM)
}

template <typename T>
__global__ void k_sm_bwd_block(int64_t C, int log, const T *Y, const T *GY, T *GX) {
    __shared__ double shd[32];
    const int r = threadIdx.x, n = blockDim.x;
    const T *y = Y + (int64_t)blockIdx.x * C, *gy = GY + (int64_t)blockIdx.x * C;
    T *gx = GX + (int64_t)blockIdx.x * C;
    SM_ROW_BWD(BLOCK_SUM)
}

/* inner > 1: thread per (o, j); the C values of a position are `inner` apart. */
template <typename T>
__global__ void k_sm_fwd_strided(int64_t outer, int64_t C, int64_t inner, int log, const T *X,
                                 T *Y) {
    CUK_LOOP(int64_t, p, outer * inner) {
        int64_t o = p / inner, j = p - o * inner;
        const T *x = X + o * C * inner + j;
        T *y = Y + o * C * inner + j;
        T m = -(T)INFINITY;
        for (int64_t i = 0; i < C; i++) m = x[i * inner] > m ? x[i * inner] : m;
        double s = 0;
        for (int64_t i = 0; i < C; i++) s += (double)cu_exp(x[i * inner] - m);
        if (log) {
            T lse = (T)((double)m + ::log(s));
            for (int64_t i = 0; i < C; i++) y[i * inner] = x[i * inner] - lse;
        } else {
            T inv = (T)(1.0 / s);
            for (int64_t i = 0; i < C; i++) y[i * inner] = cu_exp(x[i * inner] - m) * inv;
        }
    }
}

template <typename T>
__global__ void k_sm_bwd_strided(int64_t outer, int64_t C, int64_t inner, int log, const T *Y,
                                 const T *GY, T *GX) {
    CUK_LOOP(int64_t, p, outer * inner) {
        int64_t o = p / inner, j = p - o * inner, base = o * C * inner + j;
        const T *y = Y + base, *gy = GY + base;
        T *gx = GX + base;
        double s = 0;
        for (int64_t i = 0; i < C; i++)
            s += log ? (double)gy[i * inner] : (double)gy[i * inner] * (double)y[i * inner];
        T ts = (T)s;
        for (int64_t i = 0; i < C; i++)
            gx[i * inner] = log ? gy[i * inner] - cu_exp(y[i * inner]) * ts
                                : y[i * inner] * (gy[i * inner] - ts);
    }
}

template <typename T>
static int softmax_t(const cuk_ctx *c, bool bwd, int64_t outer, int64_t C, int64_t inner,
                     int log, const T *a, const T *gy, T *out) {
    if (outer <= 0 || C <= 0 || inner <= 0) return 0;
    if (inner == 1 && C <= 1024) {
        const int warps = 8;
        int64_t blocks = (outer + warps - 1) / warps;
        if (blocks > INT_MAX) return (int)cudaErrorInvalidConfiguration;
        if (bwd)
            CUK_LAUNCH((unsigned)blocks, warps * 32, 0, c->stream, k_sm_bwd_warp<T>)(
                outer, C, log, a, gy, out);
        else
            CUK_LAUNCH((unsigned)blocks, warps * 32, 0, c->stream, k_sm_fwd_warp<T>)(
                outer, C, log, a, out);
    } else if (inner == 1) {
        if (outer > INT_MAX) return (int)cudaErrorInvalidConfiguration;
        if (bwd)
            CUK_LAUNCH((unsigned)outer, 512, 0, c->stream, k_sm_bwd_block<T>)(C, log, a, gy, out);
        else
            CUK_LAUNCH((unsigned)outer, 512, 0, c->stream, k_sm_fwd_block<T>)(C, log, a, out);
    } else {
        int blocks = cuk_blocks(c, outer * inner, CUK_THREADS);
        if (bwd)
            CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_sm_bwd_strided<T>)(
                outer, C, inner, log, a, gy, out);
        else
            CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_sm_fwd_strided<T>)(
                outer, C, inner, log, a, out);
    }
    return cuk_status();
}

extern "C" int cuk_softmax_fwd(const cuk_ctx *c, int dt, int64_t outer, int64_t C,
                               int64_t inner, int log, const void *x, void *y) {
    if (dt == CT_FLOAT32)
        return softmax_t<float>(c, false, outer, C, inner, log, (const float *)x, NULL,
                                (float *)y);
    if (dt == CT_FLOAT64)
        return softmax_t<double>(c, false, outer, C, inner, log, (const double *)x, NULL,
                                 (double *)y);
    return (int)cudaErrorInvalidValue;
}

extern "C" int cuk_softmax_bwd(const cuk_ctx *c, int dt, int64_t outer, int64_t C,
                               int64_t inner, int log, const void *y, const void *gy, void *gx) {
    if (dt == CT_FLOAT32)
        return softmax_t<float>(c, true, outer, C, inner, log, (const float *)y,
                                (const float *)gy, (float *)gx);
    if (dt == CT_FLOAT64)
        return softmax_t<double>(c, true, outer, C, inner, log, (const double *)y,
                                 (const double *)gy, (double *)gx);
    return (int)cudaErrorInvalidValue;
}

/* --------------------------------------------------------------- nll_loss */
/* The gradient reaching row i of a loss: gout[i] (NONE), gout (SUM), gout / the count
 * of non-ignored targets (MEAN; 0 when every target was ignored). */
template <typename T>
__device__ __forceinline__ double row_grad_scale(int red, int64_t i, const T *gout, const T *tw) {
    if (red == CT_REDUCTION_NONE) return (double)gout[i];
    const double g = (double)gout[0];
    if (red != CT_REDUCTION_MEAN) return g;
    const double w = tw ? (double)tw[0] : 0.0;
    return w != 0 ? g / w : 0.0;
}

template <typename T>
__global__ void k_nll_bwd(int64_t N, int64_t C, int red, long long ignore, const T *gout,
                          const long long *target, const T *tw, T *g, long long *flag, int kind) {
    CUK_LOOP(int64_t, i, N) {
        long long t = target[i];
        if (t == ignore) continue;
        if (t < 0 || t >= C) {
            cuk_flag_out_of_range(flag, kind, i, t, C);
            continue;
        }
        const double gi = row_grad_scale(red, i, gout, tw);
        g[i * C + t] = (T)-gi;
    }
}


extern "C" int cuk_nll_bwd(const cuk_ctx *c, int dt, int64_t N, int64_t C, int red,
                           int64_t ignore_index, const void *gout, const int64_t *target,
                           const void *total_weight, void *glogp, int flag_kind) {
    size_t es = dt == CT_FLOAT64 ? 8 : 4;
    if (N * C > 0) {
        cudaError_t e = cudaMemsetAsync(glogp, 0, (size_t)(N * C) * es, c->stream);
        if (e != cudaSuccess) return (int)e;
    }
    if (N <= 0) return 0;
    const long long *t = (const long long *)target;
    int blocks = cuk_blocks(c, N, CUK_THREADS);
    if (dt == CT_FLOAT32)
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_nll_bwd<float>)(
            N, C, red, ignore_index, (const float *)gout, t, (const float *)total_weight,
            (float *)glogp, c->flag, flag_kind);
    else if (dt == CT_FLOAT64)
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_nll_bwd<double>)(
            N, C, red, ignore_index, (const double *)gout, t, (const double *)total_weight,
            (double *)glogp, c->flag, flag_kind);
    else
        return (int)cudaErrorInvalidValue;
    return cuk_status();
}

/* ---------------------------------------------------------- cross_entropy */
/* From log_softmax(logits) (computed by the softmax kernels): per row
 * loss = -(1 - eps) * logp[t] - eps * mean_j logp[j] (label smoothing), 0 for an ignored
 * target; then, in one block and a fixed order (per-thread strided partial sums, then a
 * tree), the count of non-ignored targets and the reduced loss. */
template <typename T>
__global__ void k_ce_fwd(int64_t N, int64_t C, int red, long long ignore, double eps,
                         const T *logp, const long long *target, T *out, T *tw,
                         long long *flag, int kind) {
    __shared__ double shd[32];
    double s = 0, cnt = 0;
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
        long long t = target[i];
        if (t == ignore || t < 0 || t >= C) {
            if (t != ignore) cuk_flag_out_of_range(flag, kind, i, t, C);
            if (red == CT_REDUCTION_NONE) out[i] = 0;
            continue;
        }
        const T *row = logp + i * C;
        double loss = -(1.0 - eps) * (double)row[t];
        if (eps != 0) {
            double sr = 0;
            for (int64_t j = 0; j < C; j++) sr += (double)row[j];
            loss -= eps * sr / (double)C;
        }
        if (red == CT_REDUCTION_NONE) out[i] = (T)loss;
        s += loss;
        cnt += 1;
    }
    s = cuk_block_sum(s, shd);
    cnt = cuk_block_sum(cnt, shd);
    if (threadIdx.x != 0) return;
    if (tw) tw[0] = (T)cnt;
    if (red == CT_REDUCTION_NONE) return;
    if (red == CT_REDUCTION_MEAN) s = cnt > 0 ? s / cnt : (double)NAN;
    out[0] = (T)s;
}

/* g[i, j] = gi * (exp(logp[i, j]) - eps / C) - gi * (1 - eps) [j == t], 0 for ignored rows. */
template <typename T>
__global__ void k_ce_bwd(int64_t N, int64_t C, int red, long long ignore, double eps,
                         const T *gout, const T *logp, const long long *target, const T *tw,
                         T *g, long long *flag, int kind) {
    CUK_LOOP(int64_t, k, N * C) {
        const int64_t i = k / C, j = k - i * C;
        const long long t = target[i];
        if (t == ignore || t < 0 || t >= C) {
            if (t != ignore && j == 0) cuk_flag_out_of_range(flag, kind, i, t, C);
            g[k] = 0;
            continue;
        }
        const double gi = row_grad_scale(red, i, gout, tw);
        const T gt = (T)gi, off = (T)(eps / (double)C);
        T v = gt * (cu_exp(logp[k]) - off);
        if (j == t) v -= gt * (T)(1.0 - eps);
        g[k] = v;
    }
}

/* nll_loss is cross_entropy on log-probabilities without label smoothing: the same
 * kernel (with eps 0 the row loss is -logp[t], exactly). */
extern "C" int cuk_nll_fwd(const cuk_ctx *c, int dt, int64_t N, int64_t C, int red,
                           int64_t ignore_index, const void *logp, const int64_t *target,
                           void *out, void *total_weight, int flag_kind) {
    const long long *t = (const long long *)target;
    if (dt == CT_FLOAT32)
        CUK_LAUNCH(1, 1024, 0, c->stream, k_ce_fwd<float>)(
            N, C, red, ignore_index, 0.0, (const float *)logp, t, (float *)out, (float *)total_weight,
            c->flag, flag_kind);
    else if (dt == CT_FLOAT64)
        CUK_LAUNCH(1, 1024, 0, c->stream, k_ce_fwd<double>)(
            N, C, red, ignore_index, 0.0, (const double *)logp, t, (double *)out,
            (double *)total_weight, c->flag, flag_kind);
    else
        return (int)cudaErrorInvalidValue;
    return cuk_status();
}

extern "C" int cuk_ce_fwd(const cuk_ctx *c, int dt, int64_t N, int64_t C, int red,
                          int64_t ignore_index, double eps, const void *logp,
                          const int64_t *target, void *out, void *total_weight, int flag_kind) {
    const long long *t = (const long long *)target;
    if (dt == CT_FLOAT32)
        CUK_LAUNCH(1, 1024, 0, c->stream, k_ce_fwd<float>)(
            N, C, red, ignore_index, eps, (const float *)logp, t, (float *)out,
            (float *)total_weight, c->flag, flag_kind);
    else if (dt == CT_FLOAT64)
        CUK_LAUNCH(1, 1024, 0, c->stream, k_ce_fwd<double>)(
            N, C, red, ignore_index, eps, (const double *)logp, t, (double *)out,
            (double *)total_weight, c->flag, flag_kind);
    else
        return (int)cudaErrorInvalidValue;
    return cuk_status();
}

extern "C" int cuk_ce_bwd(const cuk_ctx *c, int dt, int64_t N, int64_t C, int red,
                          int64_t ignore_index, double eps, const void *gout, const void *logp,
                          const int64_t *target, const void *total_weight, void *glogits, int flag_kind) {
    if (N * C <= 0) return 0;
    const long long *t = (const long long *)target;
    int blocks = cuk_blocks(c, N * C, CUK_THREADS);
    if (dt == CT_FLOAT32)
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_ce_bwd<float>)(
            N, C, red, ignore_index, eps, (const float *)gout, (const float *)logp, t,
            (const float *)total_weight, (float *)glogits, c->flag, flag_kind);
    else if (dt == CT_FLOAT64)
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_ce_bwd<double>)(
            N, C, red, ignore_index, eps, (const double *)gout, (const double *)logp, t,
            (const double *)total_weight, (double *)glogits, c->flag, flag_kind);
    else
        return (int)cudaErrorInvalidValue;
    return cuk_status();
}
