/* batch_norm and layer_norm, forward and backward, with the formulas of
 * src/backends/cpu/cpu_norm.c (statistics and coefficients in double; biased variance
 * for normalising, unbiased for running_var; the same gx expressions).
 *
 * batch_norm: per-channel sums are computed by a (channel, split) grid of blocks writing
 * partial sums, a per-channel finalize kernel adds the partials in split order (so the
 * result is deterministic), derives the statistics and the affine coefficients, and an
 * elementwise pass applies them. The variance uses sums of x - K with K the channel's
 * first element (a shifted-data algorithm: no catastrophic cancellation, one pass).
 *
 * layer_norm: a block per row for the row statistics and the input gradient; the weight
 * and bias gradients are column sums (a thread per column, rows split over gridDim.y). */
#include "cuda_common.cuh"

#include <limits.h>

__device__ __forceinline__ double vld(cuk_vec v, int64_t i, bool f64) {
    return f64 ? ((const double *)v.p)[i * v.stride] : (double)((const float *)v.p)[i * v.stride];
}
__device__ __forceinline__ void vst(cuk_vec v, int64_t i, double x, bool f64) {
    if (f64) ((double *)v.p)[i * v.stride] = x;
    else ((float *)v.p)[i * v.stride] = (float)x;
}

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Number of splits of a per-channel (or per-column) reduction of `len` elements over
 * `units` independent outputs: enough blocks for the GPU, at least `min_len` per split. */
static int splits(const cuk_ctx *c, int64_t units, int64_t len, int64_t min_len, int64_t want) {
    (void)c;
    int64_t s = 1;
    if (units < want && len > min_len) {
        s = cdiv(want, units);
        if (s > cdiv(len, min_len)) s = cdiv(len, min_len);
        if (s > 65535) s = 65535;
    }
    return (int)s;
}

/* ------------------------------------------------------------- batch_norm */
/* mode 0: sums of d = x - K and d^2 (K = the channel's first element);
 * mode 1: sums of gy and gy * (x - mean). part[(c * nsplit + s) * 2 + {0, 1}]. */
template <typename T, typename I>
__global__ void k_bn_partial(int mode, const T *x, const T *gy, cuk_vec mean, int64_t N, int64_t C,
                             int64_t S, int64_t chunk, int nsplit, double *part) {
    __shared__ double sh[32];
    const int64_t c = blockIdx.x;
    const int s = blockIdx.y;
    const I M = (I)(N * S);
    const I e0 = (I)(s * chunk);
    const I e1 = (I)(s * chunk + chunk) < M ? (I)(s * chunk + chunk) : M;
    double ref = 0;
    if (mode == 0) ref = M > 0 ? (double)x[c * S] : 0.0;
    else ref = vld(mean, c, sizeof(T) == 8);
    double a0 = 0, a1 = 0;
    const I SS = (I)S;
    for (I e = e0 + threadIdx.x; e < e1; e += blockDim.x) {
        I n = e / SS, sp = e - n * SS;
        int64_t off = ((int64_t)n * C + c) * S + sp;
        double d = (double)x[off] - ref;
        if (mode == 0) {
            a0 += d;
            a1 += d * d;
        } else {
            double g = (double)gy[off];
            a0 += g;
            a1 += g * d;
        }
    }
    a0 = cuk_block_sum(a0, sh);
    a1 = cuk_block_sum(a1, sh);
    if (threadIdx.x == 0) {
        part[(c * nsplit + s) * 2] = a0;
        part[(c * nsplit + s) * 2 + 1] = a1;
    }
}

struct BnFwdArgs {
    cuk_vec w, b, rm, rv, smean, sinv;
    int training;
    double momentum, eps;
};

/* coef[c] = a, coef[C + c] = b with y = x * a + b. */
template <typename T>
__global__ void k_bn_fwd_final(const T *x, int64_t N, int64_t C, int64_t S, const double *part,
                               int nsplit, BnFwdArgs a, double *coef) {
    const bool f64 = sizeof(T) == 8;
    CUK_LOOP(int64_t, c, C) {
        const int64_t M = N * S;
        double mean, invstd;
        if (a.training) {
            double sd = 0, sdd = 0;
            for (int s = 0; s < nsplit; s++) {
                sd += part[(c * nsplit + s) * 2];
                sdd += part[(c * nsplit + s) * 2 + 1];
            }
            const double K = M > 0 ? (double)x[c * S] : 0.0;
            const double Md = (double)M;
            double ssd = sdd - sd * sd / Md; /* sum of squared deviations */
            if (ssd < 0) ssd = 0;
            mean = M > 0 ? K + sd / Md : (double)NAN;
            const double var = M > 0 ? ssd / Md : (double)NAN;
            invstd = 1.0 / sqrt(var + a.eps);
            if (a.rm.p)
                vst(a.rm, c, (1.0 - a.momentum) * vld(a.rm, c, f64) + a.momentum * mean, f64);
            if (a.rv.p) {
                const double unb = M > 1 ? ssd / (double)(M - 1) : (double)NAN;
                vst(a.rv, c, (1.0 - a.momentum) * vld(a.rv, c, f64) + a.momentum * unb, f64);
            }
        } else {
            mean = vld(a.rm, c, f64);
            invstd = 1.0 / sqrt(vld(a.rv, c, f64) + a.eps);
        }
        const double w = a.w.p ? vld(a.w, c, f64) : 1.0;
        const double b = a.b.p ? vld(a.b, c, f64) : 0.0;
        const double k = invstd * w;
        coef[c] = k;
        coef[C + c] = b - mean * k;
        if (a.smean.p) vst(a.smean, c, mean, f64);
        if (a.sinv.p) vst(a.sinv, c, invstd, f64);
    }
}

/* out = in0 * coef[c] + (in1 ? in1 * coef[C + c] : 0) + coef[koff + c]  (koff: C or 2C) */
template <typename T, typename I>
__global__ void k_bn_apply(I n, I C, I S, const T *in0, const T *in1, const double *coef,
                           int with_k, T *out) {
    CUK_LOOP(I, i, n) {
        I c = (i / S) % C;
        double v;
        if (in1) v = (double)in0[i] * coef[c] + (double)in1[i] * coef[C + c] + coef[2 * C + c];
        else v = (double)in0[i] * coef[c] + (with_k ? coef[C + c] : 0.0);
        out[i] = (T)v;
    }
}

template <typename T>
static int launch_bn_apply(const cuk_ctx *c, int64_t n, int64_t C, int64_t S, const T *in0,
                           const T *in1, const double *coef, int with_k, T *out) {
    if (n <= 0) return 0;
    int blocks = cuk_blocks(c, n, CUK_THREADS);
    if (n < INT32_MAX)
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_bn_apply<T, uint32_t>)(
            (uint32_t)n, (uint32_t)C, (uint32_t)S, in0, in1, coef, with_k, out);
    else
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_bn_apply<T, int64_t>)(
            n, C, S, in0, in1, coef, with_k, out);
    return cuk_status();
}

template <typename T>
static int launch_bn_partial(const cuk_ctx *c, int mode, const T *x, const T *gy, cuk_vec mean,
                             int64_t N, int64_t C, int64_t S, int *nsplit_out, double **part_out) {
    const int64_t M = N * S;
    const int64_t sms = c->sm_count > 0 ? c->sm_count : 108;
    int nsplit = splits(c, C, M, 8192, 4 * sms);
    int64_t chunk = M > 0 ? cdiv(M, nsplit) : 0;
    if (M > 0) nsplit = (int)cdiv(M, chunk);
    const size_t nb = (size_t)C * (size_t)nsplit * 2 * sizeof(double);
    double *part = (double *)c->ws_alloc(nb, c->device);
    if (!part) return CUK_ENOMEM;
    if (C > INT_MAX) {
        c->ws_free(part, c->device);
        return (int)cudaErrorInvalidConfiguration;
    }
    dim3 grid((unsigned)C, (unsigned)nsplit);
    if (M < INT32_MAX)
        CUK_LAUNCH(grid, CUK_THREADS, 0, c->stream, k_bn_partial<T, uint32_t>)(
            mode, x, gy, mean, N, C, S, chunk, nsplit, part);
    else
        CUK_LAUNCH(grid, CUK_THREADS, 0, c->stream, k_bn_partial<T, int64_t>)(
            mode, x, gy, mean, N, C, S, chunk, nsplit, part);
    int rc = cuk_status();
    if (rc) {
        c->ws_free(part, c->device);
        return rc;
    }
    *nsplit_out = nsplit;
    *part_out = part;
    return 0;
}

template <typename T>
static int bn_fwd_t(const cuk_ctx *c, int64_t N, int64_t C, int64_t S, const T *x, cuk_vec w,
                    cuk_vec b, cuk_vec rm, cuk_vec rv, int training, double momentum, double eps,
                    T *y, cuk_vec smean, cuk_vec sinv) {
    if (C <= 0) return 0;
    int nsplit = 0;
    double *part = NULL;
    int rc;
    if (training) {
        rc = launch_bn_partial<T>(c, 0, x, (const T *)NULL, cuk_vec{NULL, 0}, N, C, S, &nsplit,
                                  &part);
        if (rc) return rc;
    }
    double *coef = (double *)c->ws_alloc((size_t)C * 2 * sizeof(double), c->device);
    if (!coef) {
        if (part) c->ws_free(part, c->device);
        return CUK_ENOMEM;
    }
    BnFwdArgs a = {w, b, rm, rv, smean, sinv, training, momentum, eps};
    CUK_LAUNCH(cuk_blocks(c, C, CUK_THREADS), CUK_THREADS, 0, c->stream, k_bn_fwd_final<T>)(
        x, N, C, S, part, nsplit, a, coef);
    rc = cuk_status();
    if (!rc) rc = launch_bn_apply<T>(c, N * C * S, C, S, x, (const T *)NULL, coef, 1, y);
    if (part) c->ws_free(part, c->device);
    c->ws_free(coef, c->device);
    return rc;
}

struct BnBwdArgs {
    cuk_vec w, smean, sinv, gw, gb;
    int training, want_gx;
};

/* coef[c] = a, coef[C + c] = b, coef[2C + c] = k with gx = gy * a + x * b + k. */
template <typename T>
__global__ void k_bn_bwd_final(int64_t N, int64_t C, int64_t S, const double *part, int nsplit,
                               BnBwdArgs a, double *coef) {
    const bool f64 = sizeof(T) == 8;
    CUK_LOOP(int64_t, c, C) {
        const int64_t M = N * S;
        double s0 = 0, s1 = 0;
        if (part)
            for (int s = 0; s < nsplit; s++) {
                s0 += part[(c * nsplit + s) * 2];
                s1 += part[(c * nsplit + s) * 2 + 1];
            }
        const double mean = vld(a.smean, c, f64), is = vld(a.sinv, c, f64);
        if (a.gw.p) vst(a.gw, c, s1 * is, f64);
        if (a.gb.p) vst(a.gb, c, s0, f64);
        if (!a.want_gx) continue;
        const double w = a.w.p ? vld(a.w, c, f64) : 1.0;
        const double ka = w * is;
        double kb = 0, kk = 0;
        if (a.training && M > 0) {
            kb = -ka * is * is * s1 / (double)M;
            kk = -ka * s0 / (double)M - kb * mean;
        }
        coef[c] = ka;
        coef[C + c] = kb;
        coef[2 * C + c] = kk;
    }
}

template <typename T>
static int bn_bwd_t(const cuk_ctx *c, int64_t N, int64_t C, int64_t S, const T *gy, const T *x,
                    cuk_vec w, cuk_vec smean, cuk_vec sinv, int training, T *gx, cuk_vec gw,
                    cuk_vec gb) {
    if (C <= 0) return 0;
    const int need_sums = gw.p || gb.p || (gx && training);
    int nsplit = 0;
    double *part = NULL;
    int rc;
    if (need_sums) {
        rc = launch_bn_partial<T>(c, 1, x, gy, smean, N, C, S, &nsplit, &part);
        if (rc) return rc;
    }
    double *coef = (double *)c->ws_alloc((size_t)C * 3 * sizeof(double), c->device);
    if (!coef) {
        if (part) c->ws_free(part, c->device);
        return CUK_ENOMEM;
    }
    BnBwdArgs a = {w, smean, sinv, gw, gb, training, gx != NULL};
    CUK_LAUNCH(cuk_blocks(c, C, CUK_THREADS), CUK_THREADS, 0, c->stream, k_bn_bwd_final<T>)(
        N, C, S, part, nsplit, a, coef);
    rc = cuk_status();
    if (!rc && gx) rc = launch_bn_apply<T>(c, N * C * S, C, S, gy, x, coef, 1, gx);
    if (part) c->ws_free(part, c->device);
    c->ws_free(coef, c->device);
    return rc;
}

extern "C" int cuk_bn_fwd(const cuk_ctx *c, int dt, int64_t N, int64_t C, int64_t S,
                          const void *x, cuk_vec weight, cuk_vec bias, cuk_vec running_mean,
                          cuk_vec running_var, int training, double momentum, double eps, void *y,
                          cuk_vec save_mean, cuk_vec save_invstd) {
    if (dt == CT_FLOAT32)
        return bn_fwd_t<float>(c, N, C, S, (const float *)x, weight, bias, running_mean,
                               running_var, training, momentum, eps, (float *)y, save_mean,
                               save_invstd);
    if (dt == CT_FLOAT64)
        return bn_fwd_t<double>(c, N, C, S, (const double *)x, weight, bias, running_mean,
                                running_var, training, momentum, eps, (double *)y, save_mean,
                                save_invstd);
    return (int)cudaErrorInvalidValue;
}

extern "C" int cuk_bn_bwd(const cuk_ctx *c, int dt, int64_t N, int64_t C, int64_t S,
                          const void *gy, const void *x, cuk_vec weight, cuk_vec save_mean,
                          cuk_vec save_invstd, int training, void *gx, cuk_vec gw, cuk_vec gb) {
    if (dt == CT_FLOAT32)
        return bn_bwd_t<float>(c, N, C, S, (const float *)gy, (const float *)x, weight, save_mean,
                               save_invstd, training, (float *)gx, gw, gb);
    if (dt == CT_FLOAT64)
        return bn_bwd_t<double>(c, N, C, S, (const double *)gy, (const double *)x, weight,
                                save_mean, save_invstd, training, (double *)gx, gw, gb);
    return (int)cudaErrorInvalidValue;
}

/* ------------------------------------------------------------- layer_norm */
template <typename T>
__global__ void k_ln_fwd(int64_t N, const T *X, const T *w, const T *b, double eps, T *Y,
                         T *mean_out, T *rstd_out) {
    __shared__ double sh[32];
    const int64_t r = blockIdx.x;
    const T *x = X + r * N;
    T *y = Y + r * N;
    double s = 0;
    for (int64_t j = threadIdx.x; j < N; j += blockDim.x) s += (double)x[j];
    s = cuk_block_sum(s, sh);
    const double mean = N > 0 ? s / (double)N : (double)NAN;
    double q = 0;
    for (int64_t j = threadIdx.x; j < N; j += blockDim.x) {
        double d = (double)x[j] - mean;
        q += d * d;
    }
    q = cuk_block_sum(q, sh);
    const double rstd = 1.0 / sqrt((N > 0 ? q / (double)N : (double)NAN) + eps);
    if (threadIdx.x == 0) {
        mean_out[r] = (T)mean;
        rstd_out[r] = (T)rstd;
    }
    for (int64_t j = threadIdx.x; j < N; j += blockDim.x) {
        double v = ((double)x[j] - mean) * rstd;
        if (w) v *= (double)w[j];
        if (b) v += (double)b[j];
        y[j] = (T)v;
    }
}

template <typename T>
__global__ void k_ln_bwd_input(int64_t N, const T *GY, const T *X, const T *mean_in,
                               const T *rstd_in, const T *w, T *GX) {
    __shared__ double sh[32];
    const int64_t r = blockIdx.x;
    const T *x = X + r * N, *gy = GY + r * N;
    T *gx = GX + r * N;
    const double mean = (double)mean_in[r], rstd = (double)rstd_in[r];
    double sg = 0, sgx = 0;
    for (int64_t j = threadIdx.x; j < N; j += blockDim.x) {
        const double g = (double)gy[j] * (w ? (double)w[j] : 1.0);
        sg += g;
        sgx += g * ((double)x[j] - mean) * rstd;
    }
    sg = cuk_block_sum(sg, sh);
    sgx = cuk_block_sum(sgx, sh);
    const double mg = N > 0 ? sg / (double)N : 0.0, mgx = N > 0 ? sgx / (double)N : 0.0;
    for (int64_t j = threadIdx.x; j < N; j += blockDim.x) {
        const double g = (double)gy[j] * (w ? (double)w[j] : 1.0);
        const double xh = ((double)x[j] - mean) * rstd;
        gx[j] = (T)(rstd * (g - mg - xh * mgx));
    }
}

/* Column sums over rows [s*chunk, (s+1)*chunk): part[(s * N + j) * 2 + {0: w, 1: b}], or the
 * final gw / gb when nsplit == 1. */
template <typename T>
__global__ void k_ln_bwd_params(int64_t M, int64_t N, const T *gy, const T *x, const T *mean,
                                const T *rstd, int64_t chunk, int nsplit, double *part, T *gw,
                                T *gb) {
    const int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= N) return;
    const int s = blockIdx.y;
    const int64_t r0 = (int64_t)s * chunk, r1 = r0 + chunk < M ? r0 + chunk : M;
    double aw = 0, ab = 0;
    for (int64_t r = r0; r < r1; r++) {
        const double g = (double)gy[r * N + j];
        aw += g * ((double)x[r * N + j] - (double)mean[r]) * (double)rstd[r];
        ab += g;
    }
    if (nsplit == 1) {
        if (gw) gw[j] = (T)aw;
        if (gb) gb[j] = (T)ab;
    } else {
        part[((int64_t)s * N + j) * 2] = aw;
        part[((int64_t)s * N + j) * 2 + 1] = ab;
    }
}

template <typename T>
__global__ void k_ln_params_final(int64_t N, int nsplit, const double *part, T *gw, T *gb) {
    CUK_LOOP(int64_t, j, N) {
        double aw = 0, ab = 0;
        for (int s = 0; s < nsplit; s++) {
            aw += part[((int64_t)s * N + j) * 2];
            ab += part[((int64_t)s * N + j) * 2 + 1];
        }
        if (gw) gw[j] = (T)aw;
        if (gb) gb[j] = (T)ab;
    }
}

static int row_threads(int64_t N) {
    int t = 32;
    while (t < 512 && t < N) t *= 2;
    return t;
}

template <typename T>
static int ln_fwd_t(const cuk_ctx *c, int64_t M, int64_t N, const T *x, const T *w, const T *b,
                    double eps, T *y, T *mean, T *rstd) {
    if (M <= 0) return 0;
    if (M > INT_MAX) return (int)cudaErrorInvalidConfiguration;
    CUK_LAUNCH((unsigned)M, row_threads(N), 0, c->stream, k_ln_fwd<T>)(
        N, x, w, b, eps, y, mean, rstd);
    return cuk_status();
}

template <typename T>
static int ln_bwd_t(const cuk_ctx *c, int64_t M, int64_t N, const T *gy, const T *x,
                    const T *mean, const T *rstd, const T *w, T *gx, T *gw, T *gb) {
    if (gx && M > 0) {
        if (M > INT_MAX) return (int)cudaErrorInvalidConfiguration;
        CUK_LAUNCH((unsigned)M, row_threads(N), 0, c->stream, k_ln_bwd_input<T>)(
            N, gy, x, mean, rstd, w, gx);
        int rc = cuk_status();
        if (rc) return rc;
    }
    if ((!gw && !gb) || N <= 0) return 0;
    const int64_t sms = c->sm_count > 0 ? c->sm_count : 108;
    const int64_t colblocks = cdiv(N, CUK_THREADS);
    int nsplit = splits(c, colblocks, M, 32, 4 * sms);
    int64_t chunk = M > 0 ? cdiv(M, nsplit) : 0;
    if (M > 0) nsplit = (int)cdiv(M, chunk);
    double *part = NULL;
    if (nsplit > 1) {
        part = (double *)c->ws_alloc((size_t)nsplit * (size_t)N * 2 * sizeof(double), c->device);
        if (!part) return CUK_ENOMEM;
    }
    const dim3 grid((unsigned)colblocks, (unsigned)nsplit);
    CUK_LAUNCH(grid, CUK_THREADS, 0, c->stream, k_ln_bwd_params<T>)(
        M, N, gy, x, mean, rstd, chunk, nsplit, part, gw, gb);
    int rc = cuk_status();
    if (!rc && nsplit > 1) {
        CUK_LAUNCH(cuk_blocks(c, N, CUK_THREADS), CUK_THREADS, 0, c->stream, k_ln_params_final<T>)(
            N, nsplit, part, gw, gb);
        rc = cuk_status();
    }
    if (part) c->ws_free(part, c->device);
    return rc;
}

extern "C" int cuk_ln_fwd(const cuk_ctx *c, int dt, int64_t M, int64_t N, const void *x,
                          const void *w, const void *b, double eps, void *y, void *mean,
                          void *rstd) {
    if (dt == CT_FLOAT32)
        return ln_fwd_t<float>(c, M, N, (const float *)x, (const float *)w, (const float *)b, eps,
                               (float *)y, (float *)mean, (float *)rstd);
    if (dt == CT_FLOAT64)
        return ln_fwd_t<double>(c, M, N, (const double *)x, (const double *)w, (const double *)b,
                                eps, (double *)y, (double *)mean, (double *)rstd);
    return (int)cudaErrorInvalidValue;
}

extern "C" int cuk_ln_bwd(const cuk_ctx *c, int dt, int64_t M, int64_t N, const void *gy,
                          const void *x, const void *mean, const void *rstd, const void *w,
                          void *gx, void *gw, void *gb) {
    if (dt == CT_FLOAT32)
        return ln_bwd_t<float>(c, M, N, (const float *)gy, (const float *)x, (const float *)mean,
                               (const float *)rstd, (const float *)w, (float *)gx, (float *)gw,
                               (float *)gb);
    if (dt == CT_FLOAT64)
        return ln_bwd_t<double>(c, M, N, (const double *)gy, (const double *)x,
                                (const double *)mean, (const double *)rstd, (const double *)w,
                                (double *)gx, (double *)gw, (double *)gb);
    return (int)cudaErrorInvalidValue;
}
