/* CUDA scaled_dot_product_attention (cu_k_sdpa_*_full; the entries, in cuda_lowp.c, widen
 * bfloat16 / float16 to float32 around them): a simple tiled kernel of its own, with the
 * CPU's semantics (src/backends/cpu/cpu_attention.c, src/core/backend.h).
 *
 * Forward: one block per query row; the keys in tiles of SDPA_T (one key per thread: its
 * score), an online softmax over the tiles (block reductions of the max and the sum), the
 * output row accumulated in place (each thread owns some of its columns); lse saved.
 * Backward, deterministic (no atomics): one block per query row for dQ (D = dO . O by a
 * block reduction, then the row's tiles recomputed from lse), and one block per key row
 * for dK and dV (the queries in tiles, one per thread). The score matrix is never stored.
 * Dropout uses the CPU's generator (ct_rng_uniform's bits), so both backends drop the same
 * weights. */
#include "cuda_common.cuh"
#include "cuda_host.h"

#include <string.h>

#define SDPA_T 128 /* threads per block = keys (or queries) per tile */

/* An operand: a [B1, B2, rows, cols] view, its element strides of dims 0-2. */
struct sdpa_view {
    void *p;
    int64_t s0, s1, s2;
};

struct sdpa_dev {
    sdpa_view q, k, v, o, gout, out, gq, gk, gv;
    const void *mask, *lse;
    void *lse_out;
    int64_t B2, L, S, E, Ev, mB2, ms0, ms1, ms2;
    double scale, p;
    unsigned long long seed, offset;
    int causal;
};

__device__ __forceinline__ unsigned long long sdpa_mix(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* 0 or 1/(1-p) for weight (b, i, j): ct_rng_uniform(seed, offset + (b*L + i)*S + j) > p. */
__device__ __forceinline__ double sdpa_drop(const sdpa_dev &a, int64_t b, int64_t i, int64_t j) {
    const unsigned long long n =
        a.offset + (unsigned long long)(b * a.L + i) * (unsigned long long)a.S +
        (unsigned long long)j;
    const unsigned long long bits =
        sdpa_mix(sdpa_mix(a.seed + 0x9e3779b97f4a7c15ULL) ^ (n * 0xd1b54a32d192ed03ULL));
    const double u = (double)(bits >> 11) * (1.0 / 9007199254740992.0);
    return u > a.p ? 1.0 / (1.0 - a.p) : 0.0;
}

/* The block's max (op 0) or sum (op 1) of x; every thread gets it. */
template <typename T>
__device__ T sdpa_reduce(T x, int op, T *red) {
    const int t = threadIdx.x;
    red[t] = x;
    __syncthreads();
    for (int s = SDPA_T / 2; s > 0; s >>= 1) {
        if (t < s) red[t] = op == 0 ? (red[t + s] > red[t] ? red[t + s] : red[t]) : red[t] + red[t + s];
        __syncthreads();
    }
    const T r = red[0];
    __syncthreads();
    return r;
}

/* Row i of batch b (in [0, B1*B2)) of an operand. */
template <typename T>
__device__ __forceinline__ T *sdpa_row(const sdpa_dev &a, const sdpa_view &w, int64_t b,
                                       int64_t i) {
    return (T *)w.p + (b / a.B2) * w.s0 + (b % a.B2) * w.s1 + i * w.s2;
}

/* scale * q_i . k_j + mask (j < S, and not hidden by causal: the caller checks). */
template <typename T>
__device__ T sdpa_score(const sdpa_dev &a, int64_t b, int64_t i, int64_t j) {
    const T *q = sdpa_row<T>(a, a.q, b, i), *k = sdpa_row<T>(a, a.k, b, j);
    T s = 0;
    for (int64_t e = 0; e < a.E; e++) s += q[e] * k[e];
    s *= (T)a.scale;
    if (a.mask)
        s += ((const T *)a.mask)[(b / a.mB2) * a.ms0 + (b % a.mB2) * a.ms1 + i * a.ms2 + j];
    return s;
}

template <typename T>
__global__ void k_sdpa_fwd(sdpa_dev a) {
    __shared__ T red[SDPA_T], p[SDPA_T];
    const int64_t b = blockIdx.x / a.L, i = blockIdx.x % a.L;
    const int t = threadIdx.x;
    T *o = sdpa_row<T>(a, a.out, b, i);
    const T *v = sdpa_row<T>(a, a.v, b, 0);
    for (int64_t e = t; e < a.Ev; e += SDPA_T) o[e] = 0;
    T m = -INFINITY, l = 0, nan_t = 0; /* nan_t: this thread saw a NaN score */
    const int64_t jend = a.causal && i + 1 < a.S ? i + 1 : a.S;
    for (int64_t j0 = 0; j0 < jend; j0 += SDPA_T) {
        const int64_t j = j0 + t;
        const T s = j < jend ? sdpa_score<T>(a, b, i, j) : (T)-INFINITY;
        if (s != s) nan_t = 1;
        const T tmax = sdpa_reduce<T>(s, 0, red);
        const T mnew = tmax > m ? tmax : m;
        if (mnew == (T)-INFINITY) continue; /* the same for every thread */
        T pj = j < jend ? cu_exp(s - mnew) : (T)0;
        const T psum = sdpa_reduce<T>(pj, 1, red);
        const T alpha = m == (T)-INFINITY ? (T)0 : cu_exp(m - mnew);
        l = l * alpha + psum;
        m = mnew;
        if (a.p > 0 && pj != 0) pj *= (T)sdpa_drop(a, b, i, j);
        p[t] = pj;
        __syncthreads();
        const int nk = (int)(jend - j0 < SDPA_T ? jend - j0 : SDPA_T);
        for (int64_t e = t; e < a.Ev; e += SDPA_T) {
            T acc = o[e] * alpha;
            for (int u = 0; u < nk; u++) acc += p[u] * v[(j0 + u) * a.v.s2 + e];
            o[e] = acc;
        }
        __syncthreads();
    }
    /* a NaN score makes the row's output and lse NaN, as in PyTorch */
    const T nan = sdpa_reduce<T>(nan_t, 1, red) > 0 ? (T)NAN : (T)0;
    const T inv = nan != 0 ? nan : l > 0 ? (T)1 / l : (T)0;
    for (int64_t e = t; e < a.Ev; e += SDPA_T) o[e] *= inv;
    if (t == 0)
        ((T *)a.lse_out)[b * a.L + i] = nan != 0 ? nan : l > 0 ? m + cu_log(l) : (T)-INFINITY;
}

/* dS of (b, i, j) from the recomputed probability; *pz receives P~ (dropped out). */
template <typename T>
__device__ T sdpa_ds(const sdpa_dev &a, int64_t b, int64_t i, int64_t j, T D, T *pz) {
    const T lse = ((const T *)a.lse)[b * a.L + i];
    const T s = sdpa_score<T>(a, b, i, j);
    const T pr = lse == (T)-INFINITY ? (T)0 : cu_exp(s - lse);
    const T z = a.p > 0 ? (T)sdpa_drop(a, b, i, j) : (T)1;
    const T *go = sdpa_row<T>(a, a.gout, b, i), *v = sdpa_row<T>(a, a.v, b, j);
    T dp = 0;
    for (int64_t e = 0; e < a.Ev; e++) dp += go[e] * v[e];
    *pz = pr * z;
    return pr * (dp * z - D) * (T)a.scale;
}

/* dO_i . O_i */
template <typename T>
__device__ T sdpa_D(const sdpa_dev &a, int64_t b, int64_t i) {
    const T *go = sdpa_row<T>(a, a.gout, b, i), *o = sdpa_row<T>(a, a.o, b, i);
    T d = 0;
    for (int64_t e = 0; e < a.Ev; e++) d += go[e] * o[e];
    return d;
}

template <typename T>
__global__ void k_sdpa_bwd_q(sdpa_dev a) {
    __shared__ T ds[SDPA_T];
    const int64_t b = blockIdx.x / a.L, i = blockIdx.x % a.L;
    const int t = threadIdx.x;
    T *gq = sdpa_row<T>(a, a.gq, b, i);
    const T *k = sdpa_row<T>(a, a.k, b, 0);
    for (int64_t e = t; e < a.E; e += SDPA_T) gq[e] = 0;
    const T D = sdpa_D<T>(a, b, i);
    const int64_t jend = a.causal && i + 1 < a.S ? i + 1 : a.S;
    for (int64_t j0 = 0; j0 < jend; j0 += SDPA_T) {
        const int64_t j = j0 + t;
        T pz;
        ds[t] = j < jend ? sdpa_ds<T>(a, b, i, j, D, &pz) : (T)0;
        __syncthreads();
        const int nk = (int)(jend - j0 < SDPA_T ? jend - j0 : SDPA_T);
        for (int64_t e = t; e < a.E; e += SDPA_T) {
            T acc = gq[e];
            for (int u = 0; u < nk; u++) acc += ds[u] * k[(j0 + u) * a.k.s2 + e];
            gq[e] = acc;
        }
        __syncthreads();
    }
}

template <typename T>
__global__ void k_sdpa_bwd_kv(sdpa_dev a) {
    __shared__ T ds[SDPA_T], pz[SDPA_T];
    const int64_t b = blockIdx.x / a.S, j = blockIdx.x % a.S;
    const int t = threadIdx.x;
    T *gk = a.gk.p ? sdpa_row<T>(a, a.gk, b, j) : NULL;
    T *gv = a.gv.p ? sdpa_row<T>(a, a.gv, b, j) : NULL;
    const T *q = sdpa_row<T>(a, a.q, b, 0), *go = sdpa_row<T>(a, a.gout, b, 0);
    if (gk)
        for (int64_t e = t; e < a.E; e += SDPA_T) gk[e] = 0;
    if (gv)
        for (int64_t e = t; e < a.Ev; e += SDPA_T) gv[e] = 0;
    const int64_t i_first = a.causal ? j : 0; /* causal: only the queries i >= j see key j */
    for (int64_t i0 = i_first; i0 < a.L; i0 += SDPA_T) {
        const int64_t i = i0 + t;
        T p = 0;
        ds[t] = i < a.L ? sdpa_ds<T>(a, b, i, j, sdpa_D<T>(a, b, i), &p) : (T)0;
        pz[t] = p;
        __syncthreads();
        const int nq = (int)(a.L - i0 < SDPA_T ? a.L - i0 : SDPA_T);
        if (gk)
            for (int64_t e = t; e < a.E; e += SDPA_T) {
                T acc = gk[e];
                for (int u = 0; u < nq; u++) acc += ds[u] * q[(i0 + u) * a.q.s2 + e];
                gk[e] = acc;
            }
        if (gv)
            for (int64_t e = t; e < a.Ev; e += SDPA_T) {
                T acc = gv[e];
                for (int u = 0; u < nq; u++) acc += pz[u] * go[(i0 + u) * a.gout.s2 + e];
                gv[e] = acc;
            }
        __syncthreads();
    }
}

/* w = t's view (NULL t: empty); -1 with an error when t is not 4-D with contiguous rows. */
static int sdpa_view_of(sdpa_view *w, const ct_tensor *t, const char *op) {
    memset(w, 0, sizeof *w);
    if (!t) return 0;
    if (t->ndim != 4 || (t->stride[3] != 1 && t->shape[3] > 1))
        return cu_error("%s: an operand is not a [B1, B2, rows, cols] view with contiguous rows",
                        op);
    w->p = (void *)cu_ptr(t), w->s0 = t->stride[0], w->s1 = t->stride[1], w->s2 = t->stride[2];
    return 0;
}

static int sdpa_fill(sdpa_dev *a, const ct_tensor *q, const ct_tensor *k, const ct_tensor *v,
                     const ct_tensor *mask, const ct_sdpa_params *p, const char *op) {
    if (q->dtype != CT_FLOAT32 && q->dtype != CT_FLOAT64)
        return cu_error("%s: dtype %s not supported on cuda (float32, float64, bfloat16 or "
                        "float16)", op, cu_dtype_name(q->dtype));
    memset(a, 0, sizeof *a);
    if (q->ndim != 4 || k->ndim != 4 || v->ndim != 4 || k->shape[0] != q->shape[0] ||
        v->shape[0] != q->shape[0] || k->shape[1] != q->shape[1] || v->shape[1] != q->shape[1])
        return cu_error("%s: q, k and v must be [B1, B2, rows, cols] views with the same B1, B2",
                        op);
    if (sdpa_view_of(&a->q, q, op) || sdpa_view_of(&a->k, k, op) || sdpa_view_of(&a->v, v, op))
        return -1;
    a->B2 = q->shape[1];
    a->L = q->shape[2], a->S = k->shape[2], a->E = q->shape[3], a->Ev = v->shape[3];
    if (mask) {
        if (mask->dtype != q->dtype || mask->ndim != 4 || (mask->stride[3] != 1 && a->S > 1))
            return cu_error("%s: the mask must have q's dtype, shape [B1, B2, L, S] and a "
                            "contiguous last dim", op);
        a->mask = cu_ptr(mask), a->mB2 = mask->shape[1];
        a->ms0 = mask->stride[0], a->ms1 = mask->stride[1], a->ms2 = mask->stride[2];
    }
    a->scale = p->scale, a->p = p->dropout_p, a->causal = p->causal;
    a->seed = p->seed, a->offset = p->offset;
    return 0;
}

extern "C" int cu_k_sdpa_forward_full(ct_tensor *out, ct_tensor *lse, const ct_tensor *q,
                                      const ct_tensor *k, const ct_tensor *v,
                                      const ct_tensor *mask, const ct_sdpa_params *p) {
    const char *op = "scaled_dot_product_attention";
    cu_dev *d = cu_dev_of(out);
    sdpa_dev a;
    if (!d || sdpa_fill(&a, q, k, v, mask, p, op) != 0) return -1;
    if (sdpa_view_of(&a.out, out, op) != 0) return -1;
    a.lse_out = cu_ptr(lse);
    const int64_t rows = q->shape[0] * q->shape[1] * a.L;
    if (rows == 0) return 0;
    if (rows > 0x7fffffff) return cu_error("%s: %lld query rows is too many", op, (long long)rows);
    if (q->dtype == CT_FLOAT32)
        CUK_LAUNCH((int)rows, SDPA_T, 0, d->k.stream, k_sdpa_fwd<float>)(a);
    else
        CUK_LAUNCH((int)rows, SDPA_T, 0, d->k.stream, k_sdpa_fwd<double>)(a);
    return cu_fail(cuk_status(), op);
}

extern "C" int cu_k_sdpa_backward_full(ct_tensor *gq, ct_tensor *gk, ct_tensor *gv,
                                       const ct_tensor *gout, const ct_tensor *q,
                                       const ct_tensor *k, const ct_tensor *v,
                                       const ct_tensor *out, const ct_tensor *lse,
                                       const ct_tensor *mask, const ct_sdpa_params *p) {
    const char *op = "scaled_dot_product_attention backward";
    cu_dev *d = cu_dev_of(q);
    sdpa_dev a;
    if (!d || sdpa_fill(&a, q, k, v, mask, p, op) != 0) return -1;
    if (sdpa_view_of(&a.o, out, op) || sdpa_view_of(&a.gout, gout, op) ||
        sdpa_view_of(&a.gq, gq, op) || sdpa_view_of(&a.gk, gk, op) || sdpa_view_of(&a.gv, gv, op))
        return -1;
    a.lse = cu_ptr(lse);
    const int64_t B = q->shape[0] * q->shape[1], qrows = B * a.L, krows = B * a.S;
    if (qrows > 0x7fffffff || krows > 0x7fffffff)
        return cu_error("%s: too many rows for one launch", op);
    const int f32 = q->dtype == CT_FLOAT32;
    if (gq && qrows > 0) {
        if (f32) CUK_LAUNCH((int)qrows, SDPA_T, 0, d->k.stream, k_sdpa_bwd_q<float>)(a);
        else CUK_LAUNCH((int)qrows, SDPA_T, 0, d->k.stream, k_sdpa_bwd_q<double>)(a);
        const int st = cuk_status();
        if (st) return cu_fail(st, op);
    }
    if ((gk || gv) && krows > 0) {
        if (f32) CUK_LAUNCH((int)krows, SDPA_T, 0, d->k.stream, k_sdpa_bwd_kv<float>)(a);
        else CUK_LAUNCH((int)krows, SDPA_T, 0, d->k.stream, k_sdpa_bwd_kv<double>)(a);
    }
    return cu_fail(cuk_status(), op);
}
