/* Reductions: sum / mean over any set of dims, max (+ argmax) over one dim, any / all
 * (sums of 1 for each non-zero / zero element, then > 0 / == 0). Like the CPU kernel
 * (src/backends/cpu/cpu_reduce.c), values are accumulated in double; max keeps the
 * first NaN (smallest index) or else the largest value with the smallest index, which is
 * exactly what the CPU's sequential scan returns.
 *
 * bfloat16 / float16 elements are widened on load and a 16-bit result is the float32 one
 * rounded (the CPU's low-precision reduction).
 *
 * Two shapes of work, both deterministic (no atomics; fixed combination order):
 *  - thread per output when neighbouring outputs are neighbours in memory (reading is
 *    coalesced across threads) or the reduction is short;
 *  - block per output otherwise (threads stride along the reduced elements).
 * When there are too few outputs to fill the GPU, the reduced range is split over
 * gridDim.y; partial results go to a workspace and a final kernel combines them in
 * split order. */
#include "cuda_common.cuh"

#include <limits.h>

struct RedVal {
    double v;
    long long i;
};

/* Associative, commutative "better" for max: NaN with the smallest index, else larger
 * value, ties to the smaller index. */
__device__ __forceinline__ RedVal max_combine(RedVal a, RedVal b) {
    bool an = a.v != a.v, bn = b.v != b.v;
    if (an && bn) return a.i < b.i ? a : b;
    if (an) return a;
    if (bn) return b;
    if (a.v > b.v) return a;
    if (b.v > a.v) return b;
    return a.i < b.i ? a : b;
}

__device__ __forceinline__ int64_t red_koff(const cuk_red_geom &g, int64_t o) {
    int64_t off = 0;
#pragma unroll
    for (int d = 0; d < CUK_MAX_DIMS; d++) {
        if (d == g.nk) break;
        int64_t q = o / g.kshape[d];
        off += (o - q * g.kshape[d]) * g.kstride[d];
        o = q;
    }
    return off;
}

__device__ __forceinline__ int64_t red_roff(const cuk_red_geom &g, int64_t r) {
    if (g.nr == 1) return r * g.rstride[0];
    int64_t off = 0;
#pragma unroll
    for (int d = 0; d < CUK_MAX_DIMS; d++) {
        if (d == g.nr) break;
        int64_t q = r / g.rshape[d];
        off += (r - q * g.rshape[d]) * g.rstride[d];
        r = q;
    }
    return off;
}

/* What a sum-like reduction adds for element value v: v itself, or for any / all a count
 * of the non-zero / zero elements. */
__device__ __forceinline__ double red_term(int op, double v) {
    return op == CT_RED_ANY ? (double)(v != 0) : op == CT_RED_ALL ? (double)(v == 0) : v;
}

__device__ __forceinline__ void red_store(int op, int out_dt, void *out, int64_t *idx, int64_t o,
                                          double acc, long long best, int64_t rcount) {
    if (op == CT_RED_MEAN) acc = rcount ? acc / (double)rcount : (double)NAN;
    if (op == CT_RED_ANY) acc = acc > 0;
    if (op == CT_RED_ALL) acc = acc == 0;
    switch (out_dt) {
    case CT_FLOAT32: ((float *)out)[o] = (float)acc; break;
    case CT_FLOAT64: ((double *)out)[o] = acc; break;
    /* 16-bit outputs: the float32 result rounded, as the CPU's widened reduction gives */
    case CT_BFLOAT16: ((uint16_t *)out)[o] = ct_f32_to_bf16((float)acc); break;
    case CT_FLOAT16: ((uint16_t *)out)[o] = ct_f32_to_f16((float)acc); break;
    case CT_BOOL: ((uint8_t *)out)[o] = acc != 0; break;
    default: ((long long *)out)[o] = (long long)acc; break;
    }
    if (idx) idx[o] = best;
}

struct RedArgs {
    int op, out_dt, nsplit;
    int64_t chunk;
    double *pv;     /* partial values [nsplit][nout] (nsplit > 1) */
    long long *pi;  /* partial indices (max) */
    void *out;
    int64_t *idx;
};

template <typename T, bool IS_MAX>
__global__ void k_red_thread(cuk_red_geom g, const T *a, RedArgs ra) {
    int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= g.nout) return;
    int s = blockIdx.y;
    int64_t r0 = (int64_t)s * ra.chunk, r1 = r0 + ra.chunk < g.rcount ? r0 + ra.chunk : g.rcount;
    const T *base = a + red_koff(g, o);
    RedVal best = {-(double)INFINITY, LLONG_MAX};
    double acc = 0;
    for (int64_t r = r0; r < r1; r++) {
        double v = (double)cuk_ld(base[red_roff(g, r)]);
        if (IS_MAX) best = max_combine(best, RedVal{v, (long long)r});
        else acc += red_term(ra.op, v);
    }
    if (IS_MAX) acc = best.v;
    if (ra.nsplit == 1) {
        red_store(ra.op, ra.out_dt, ra.out, ra.idx, o, acc, best.i, g.rcount);
    } else {
        ra.pv[(int64_t)s * g.nout + o] = acc;
        if (IS_MAX) ra.pi[(int64_t)s * g.nout + o] = best.i;
    }
}

template <typename T, bool IS_MAX>
__global__ void k_red_block(cuk_red_geom g, const T *a, RedArgs ra) {
    __shared__ double sv[256];
    __shared__ long long si[256];
    int64_t o = blockIdx.x;
    int s = blockIdx.y;
    int64_t r0 = (int64_t)s * ra.chunk, r1 = r0 + ra.chunk < g.rcount ? r0 + ra.chunk : g.rcount;
    const T *base = a + red_koff(g, o);
    RedVal best = {-(double)INFINITY, LLONG_MAX};
    double acc = 0;
    for (int64_t r = r0 + threadIdx.x; r < r1; r += blockDim.x) {
        double v = (double)cuk_ld(base[red_roff(g, r)]);
        if (IS_MAX) best = max_combine(best, RedVal{v, (long long)r});
        else acc += red_term(ra.op, v);
    }
    sv[threadIdx.x] = IS_MAX ? best.v : acc;
    si[threadIdx.x] = best.i;
    __syncthreads();
    for (unsigned w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) {
            if (IS_MAX) {
                RedVal m = max_combine(RedVal{sv[threadIdx.x], si[threadIdx.x]},
                                       RedVal{sv[threadIdx.x + w], si[threadIdx.x + w]});
                sv[threadIdx.x] = m.v;
                si[threadIdx.x] = m.i;
            } else {
                sv[threadIdx.x] += sv[threadIdx.x + w];
            }
        }
        __syncthreads();
    }
    if (threadIdx.x != 0) return;
    if (ra.nsplit == 1) {
        red_store(ra.op, ra.out_dt, ra.out, ra.idx, o, sv[0], si[0], g.rcount);
    } else {
        ra.pv[(int64_t)s * g.nout + o] = sv[0];
        if (IS_MAX) ra.pi[(int64_t)s * g.nout + o] = si[0];
    }
}

__global__ void k_red_final(int64_t nout, int64_t rcount, bool is_max, RedArgs ra) {
    CUK_LOOP(int64_t, o, nout) {
        RedVal best = {-(double)INFINITY, LLONG_MAX};
        double acc = 0;
        for (int s = 0; s < ra.nsplit; s++) {
            double v = ra.pv[(int64_t)s * nout + o];
            if (is_max) best = max_combine(best, RedVal{v, ra.pi[(int64_t)s * nout + o]});
            else acc += v;
        }
        red_store(ra.op, ra.out_dt, ra.out, ra.idx, o, is_max ? best.v : acc, best.i, rcount);
    }
}

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
static int reduce_t(const cuk_ctx *c, int op, int out_dt, const cuk_red_geom *g, const T *a,
                    void *out, int64_t *idx) {
    const int64_t O = g->nout, R = g->rcount;
    if (O <= 0) return 0;
    const bool is_max = op == CT_RED_MAX;
    const int64_t sms = c->sm_count > 0 ? c->sm_count : 108;
    RedArgs ra = {op, out_dt, 1, R, NULL, NULL, out, idx};
    const bool kept_contig = g->nk > 0 && g->kstride[0] == 1 && g->kshape[0] > 1;
    const bool per_thread = O >= 32 && (kept_contig || R <= 16);
    int threads;
    dim3 grid;
    if (per_thread) {
        threads = CUK_THREADS;
        int64_t want = sms * 2048; /* resident threads of the whole GPU */
        int64_t nsplit = 1;
        if (O < want && R > 64) {
            nsplit = cdiv(want, O);
            if (nsplit > cdiv(R, 64)) nsplit = cdiv(R, 64);
            if (nsplit > 65535) nsplit = 65535;
        }
        ra.chunk = R > 0 ? cdiv(R, nsplit) : 0;
        ra.nsplit = R > 0 ? (int)cdiv(R, ra.chunk) : 1;
        grid = dim3((unsigned)cdiv(O, threads), (unsigned)ra.nsplit);
    } else {
        threads = 32;
        while (threads < 256 && threads < R) threads *= 2;
        int64_t nsplit = 1;
        if (O < 4 * sms && R > 4096) {
            nsplit = cdiv(4 * sms, O);
            if (nsplit > cdiv(R, 2048)) nsplit = cdiv(R, 2048);
            if (nsplit > 65535) nsplit = 65535;
        }
        ra.chunk = R > 0 ? cdiv(R, nsplit) : 0;
        ra.nsplit = R > 0 ? (int)cdiv(R, ra.chunk) : 1;
        if (O > INT32_MAX) return (int)cudaErrorInvalidConfiguration;
        grid = dim3((unsigned)O, (unsigned)ra.nsplit);
    }
    if (ra.nsplit > 1) {
        size_t nb = (size_t)ra.nsplit * (size_t)O * (is_max ? 16 : 8);
        char *ws = (char *)c->ws_alloc(nb, c->device);
        if (!ws) return CUK_ENOMEM;
        ra.pv = (double *)ws;
        ra.pi = is_max ? (long long *)(ws + (size_t)ra.nsplit * (size_t)O * 8) : NULL;
    }
    if (per_thread) {
        if (is_max) CUK_LAUNCH(grid, threads, 0, c->stream, k_red_thread<T, true>)(*g, a, ra);
        else CUK_LAUNCH(grid, threads, 0, c->stream, k_red_thread<T, false>)(*g, a, ra);
    } else {
        if (is_max) CUK_LAUNCH(grid, threads, 0, c->stream, k_red_block<T, true>)(*g, a, ra);
        else CUK_LAUNCH(grid, threads, 0, c->stream, k_red_block<T, false>)(*g, a, ra);
    }
    int rc = cuk_status();
    if (rc == 0 && ra.nsplit > 1) {
        CUK_LAUNCH(cuk_blocks(c, O, CUK_THREADS), CUK_THREADS, 0, c->stream, k_red_final)(
            O, R, is_max, ra);
        rc = cuk_status();
    }
    if (ra.pv) c->ws_free(ra.pv, c->device);
    return rc;
}

extern "C" int cuk_reduce(const cuk_ctx *c, int op, int in_dt, int out_dt, const cuk_red_geom *g,
                          const void *a, void *out, int64_t *idx) {
    switch (in_dt) {
    case CT_FLOAT32: return reduce_t(c, op, out_dt, g, (const float *)a, out, idx);
    case CT_FLOAT64: return reduce_t(c, op, out_dt, g, (const double *)a, out, idx);
    case CT_INT64: return reduce_t(c, op, out_dt, g, (const long long *)a, out, idx);
    case CT_BOOL: return reduce_t(c, op, out_dt, g, (const uint8_t *)a, out, idx);
    case CT_BFLOAT16: return reduce_t(c, op, out_dt, g, (const cuk_bf16 *)a, out, idx);
    case CT_FLOAT16: return reduce_t(c, op, out_dt, g, (const cuk_f16 *)a, out, idx);
    default: return (int)cudaErrorInvalidValue;
    }
}
