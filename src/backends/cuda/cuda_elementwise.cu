/* Elementwise kernels: binary, unary, unary derivative (the formulas of the op tables,
 * src/core/op_tables.h, the same text the CPU kernels compile), dropout, copy with dtype
 * conversion, fill, bias add. Semantics mirror src/backends/cpu/cpu_elementwise.c
 * (float32 math in float, float64 in double, int64 rules, NaN handling of clamp/relu);
 * bfloat16 / float16 elements are computed in float and rounded once (cuk_ld / cuk_st,
 * cuda_common.cuh), as the CPU's low-precision paths do. */
#include "core/half.h"
#include "cuda_common.cuh"

/* ------------------------------------------------------------- generic maps */
template <typename TO, typename TI, typename F>
__global__ void k_map2_contig(int64_t n, TO *o, const TI *a, F f) {
    CUK_LOOP(int64_t, i, n) o[i] = f(a[i]);
}
template <typename I, typename TO, typename TI, typename F>
__global__ void k_map2_strided(cuk_geom g, I n, TO *o, const TI *a, F f) {
    CUK_LOOP(I, i, n) {
        int64_t off[2];
        cuk_offsets<2, I>(g, i, off);
        o[off[0]] = f(a[off[1]]);
    }
}
template <typename TO, typename T, typename F>
__global__ void k_map3_contig(int64_t n, TO *o, const T *a, const T *b, F f) {
    CUK_LOOP(int64_t, i, n) o[i] = f(a[i], b[i]);
}
template <typename I, typename TO, typename T, typename F>
__global__ void k_map3_strided(cuk_geom g, I n, TO *o, const T *a, const T *b, F f) {
    CUK_LOOP(I, i, n) {
        int64_t off[3];
        cuk_offsets<3, I>(g, i, off);
        o[off[0]] = f(a[off[1]], b[off[2]]);
    }
}

static bool contiguous(const cuk_geom *g, int nops) {
    if (g->ndim != 1) return false;
    for (int k = 0; k < nops; k++)
        if (g->stride[k][0] != 1) return false;
    return true;
}

template <typename TO, typename TI, typename F>
static int launch_map2(const cuk_ctx *c, const cuk_geom *g, int64_t n, TO *o, const TI *a, F f) {
    if (n <= 0) return 0;
    int blocks = cuk_blocks(c, n, CUK_THREADS);
    if (contiguous(g, 2))
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_map2_contig<TO, TI, F>)(n, o, a, f);
    else if (n < INT32_MAX)
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_map2_strided<uint32_t, TO, TI, F>)(
            *g, (uint32_t)n, o, a, f);
    else
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_map2_strided<int64_t, TO, TI, F>)(
            *g, n, o, a, f);
    return cuk_status();
}

template <typename TO, typename T, typename F>
static int launch_map3(const cuk_ctx *c, const cuk_geom *g, int64_t n, TO *o, const T *a,
                       const T *b, F f) {
    if (n <= 0) return 0;
    int blocks = cuk_blocks(c, n, CUK_THREADS);
    if (contiguous(g, 3))
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_map3_contig<TO, T, F>)(n, o, a, b, f);
    else if (n < INT32_MAX)
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_map3_strided<uint32_t, TO, T, F>)(
            *g, (uint32_t)n, o, a, b, f);
    else
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_map3_strided<int64_t, TO, T, F>)(
            *g, n, o, a, b, f);
    return cuk_status();
}

/* ------------------------------------------------------------------- binary */
/* The formulas are the rows of src/core/op_tables.h (the same text as the CPU's loops),
 * switched on per element: the op is uniform across a launch, so the branch costs no
 * divergence. BinF has the rows whose result rule is SAME, CmpF those whose rule is BOOL
 * (a uint8_t 0/1 result); an op outside the table never gets here (the host side checks
 * it). */
#define BIN_CASE(ID, name, node, result, FWD)                                              \
    CT_IF_SAME_ROW_##result(case CT_BIN_##ID: {                                            \
        FWD;                                                                               \
        return r;                                                                          \
    })
#define CMP_CASE(ID, name, node, result, FWD)                                              \
    CT_IF_BOOL_ROW_##result(case CT_BIN_##ID: {                                            \
        FWD;                                                                               \
        return r;                                                                          \
    })

template <typename TYPE>
struct BinF {
    int op;
    TYPE al;
    __device__ __forceinline__ TYPE operator()(TYPE x, TYPE y) const {
        typedef TYPE T;
        T r = 0;
        switch (op) { CT_BINARY_OPS(BIN_CASE) }
        return r;
    }
};
template <typename TYPE>
struct CmpF {
    int op;
    __device__ __forceinline__ uint8_t operator()(TYPE x, TYPE y) const {
        typedef TYPE T; /* for formulas that name it */
        (void)sizeof(T);
        uint8_t r = 0;
        switch (op) { CT_BINARY_OPS(CMP_CASE) }
        return r;
    }
};

/* bfloat16 / float16 operands: the float functor on the widened elements, the result
 * rounded once (what the CPU computes). */
template <typename S>
struct LowpBinF {
    BinF<float> f;
    __device__ __forceinline__ S operator()(S x, S y) const {
        return cuk_st<S>(f(cuk_ld(x), cuk_ld(y)));
    }
};
template <typename S>
struct LowpCmpF {
    CmpF<float> f;
    __device__ __forceinline__ uint8_t operator()(S x, S y) const {
        return f(cuk_ld(x), cuk_ld(y));
    }
};

/* dt: the operands' dtype; out has it too for the SAME rows, and is bool for the BOOL
 * rows (whose operands may also be bool). */
extern "C" int cuk_binary(const cuk_ctx *c, int op, int dt, const cuk_geom *g, int64_t n,
                          void *out, const void *a, const void *b, double alpha) {
    if (op < 0 || op >= CT_BIN_COUNT) return (int)cudaErrorInvalidValue;
    if (ct_binop_result_bool(op)) {
        uint8_t *o = (uint8_t *)out;
        switch (dt) {
        case CT_FLOAT32:
            return launch_map3(c, g, n, o, (const float *)a, (const float *)b, CmpF<float>{op});
        case CT_FLOAT64:
            return launch_map3(c, g, n, o, (const double *)a, (const double *)b,
                               CmpF<double>{op});
        case CT_INT64:
            return launch_map3(c, g, n, o, (const long long *)a, (const long long *)b,
                               CmpF<long long>{op});
        case CT_BOOL:
            return launch_map3(c, g, n, o, (const uint8_t *)a, (const uint8_t *)b,
                               CmpF<uint8_t>{op});
        case CT_BFLOAT16:
            return launch_map3(c, g, n, o, (const cuk_bf16 *)a, (const cuk_bf16 *)b,
                               LowpCmpF<cuk_bf16>{CmpF<float>{op}});
        case CT_FLOAT16:
            return launch_map3(c, g, n, o, (const cuk_f16 *)a, (const cuk_f16 *)b,
                               LowpCmpF<cuk_f16>{CmpF<float>{op}});
        default: return (int)cudaErrorInvalidValue;
        }
    }
    switch (dt) {
    case CT_FLOAT32:
        return launch_map3(c, g, n, (float *)out, (const float *)a, (const float *)b,
                           BinF<float>{op, (float)alpha});
    case CT_FLOAT64:
        return launch_map3(c, g, n, (double *)out, (const double *)a, (const double *)b,
                           BinF<double>{op, alpha});
    case CT_INT64:
        return launch_map3(c, g, n, (long long *)out, (const long long *)a,
                           (const long long *)b, BinF<long long>{op, (long long)alpha});
    case CT_BFLOAT16:
        return launch_map3(c, g, n, (cuk_bf16 *)out, (const cuk_bf16 *)a, (const cuk_bf16 *)b,
                           LowpBinF<cuk_bf16>{BinF<float>{op, (float)alpha}});
    case CT_FLOAT16:
        return launch_map3(c, g, n, (cuk_f16 *)out, (const cuk_f16 *)a, (const cuk_f16 *)b,
                           LowpBinF<cuk_f16>{BinF<float>{op, (float)alpha}});
    default: return (int)cudaErrorInvalidValue;
    }
}

/* -------------------------------------------------------------------- unary */
#define UN_CASE(ID, name, node, dtypes, saves, api, FWD, ...)                              \
    case CT_UN_##ID: {                                                                     \
        FWD;                                                                               \
        return r;                                                                          \
    }
#define UN_CASE_INT(ID, name, node, dtypes, saves, api, FWD, ...)                          \
    CT_IF_##dtypes##_INT(case CT_UN_##ID : {                                               \
        FWD;                                                                               \
        return r;                                                                          \
    })

template <typename TYPE>
struct UnF {
    int op;
    TYPE p1, p2;
    __device__ __forceinline__ TYPE operator()(TYPE x) const {
        typedef TYPE T;
        T r = x;
        switch (op) { CT_UNARY_OPS(UN_CASE) }
        return r;
    }
};
/* int64: the rows whose dtype rule is ANY (the host side refuses the others). */
struct UnI64 {
    int op;
    long long p1, p2;
    __device__ __forceinline__ long long operator()(long long x) const {
        typedef long long T;
        T r = x;
        switch (op) { CT_UNARY_OPS(UN_CASE_INT) }
        return r;
    }
};

template <typename S>
struct LowpUnF {
    UnF<float> f;
    __device__ __forceinline__ S operator()(S x) const { return cuk_st<S>(f(cuk_ld(x))); }
};

extern "C" int cuk_unary(const cuk_ctx *c, int op, int dt, const cuk_geom *g, int64_t n,
                         void *out, const void *a, double p1, double p2) {
    if (op < 0 || op >= CT_UN_COUNT) return (int)cudaErrorInvalidValue;
    switch (dt) {
    case CT_FLOAT32:
        return launch_map2(c, g, n, (float *)out, (const float *)a,
                           UnF<float>{op, (float)p1, (float)p2});
    case CT_FLOAT64:
        return launch_map2(c, g, n, (double *)out, (const double *)a, UnF<double>{op, p1, p2});
    case CT_INT64:
        return launch_map2(c, g, n, (long long *)out, (const long long *)a,
                           UnI64{op, (long long)p1, (long long)p2});
    case CT_BFLOAT16:
        return launch_map2(c, g, n, (cuk_bf16 *)out, (const cuk_bf16 *)a,
                           LowpUnF<cuk_bf16>{UnF<float>{op, (float)p1, (float)p2}});
    case CT_FLOAT16:
        return launch_map2(c, g, n, (cuk_f16 *)out, (const cuk_f16 *)a,
                           LowpUnF<cuk_f16>{UnF<float>{op, (float)p1, (float)p2}});
    default: return (int)cudaErrorInvalidValue;
    }
}

/* ------------------------------------------------------- unary derivative */
#define UD_CASE(ID, name, node, dtypes, saves, api, FWD, DER, ...)                         \
    case CT_UN_##ID: {                                                                     \
        const T x = CT_SAVES_##saves & CT_SAVES_IN ? cuk_ld(xs[i]) : (T)0;                 \
        const T y = CT_SAVES_##saves & CT_SAVES_OUT ? cuk_ld(ys[i]) : (T)0;                \
        (void)x;                                                                           \
        (void)y;                                                                           \
        DER;                                                                               \
        break;                                                                             \
    }

/* S: the storage type; the derivative is computed in T (float for 16-bit storage). */
template <typename S>
__global__ void k_unary_backward(int op, int64_t n, S *gx, const S *gy, const S *xs,
                                 const S *ys, typename cuk_acc<S>::type p1,
                                 typename cuk_acc<S>::type p2) {
    typedef typename cuk_acc<S>::type T;
    (void)p1;
    (void)p2;
    CUK_LOOP(int64_t, i, n) {
        T d = 0;
        switch (op) { CT_UNARY_OPS(UD_CASE) }
        gx[i] = cuk_st<S>(cuk_ld(gy[i]) * d);
    }
}

template <typename S>
static void launch_unary_backward(const cuk_ctx *c, int op, int64_t n, void *gx, const void *gy,
                                  const void *x, const void *y, double p1, double p2) {
    typedef typename cuk_acc<S>::type T;
    CUK_LAUNCH(cuk_blocks(c, n, CUK_THREADS), CUK_THREADS, 0, c->stream, k_unary_backward<S>)(
        op, n, (S *)gx, (const S *)gy, (const S *)x, (const S *)y, (T)p1, (T)p2);
}

extern "C" int cuk_unary_backward(const cuk_ctx *c, int op, int dt, int64_t n, void *gx,
                                  const void *gy, const void *x, const void *y, double p1,
                                  double p2) {
    if (n <= 0) return 0;
    if (op < 0 || op >= CT_UN_COUNT) return (int)cudaErrorInvalidValue;
    switch (dt) {
    case CT_FLOAT32: launch_unary_backward<float>(c, op, n, gx, gy, x, y, p1, p2); break;
    case CT_FLOAT64: launch_unary_backward<double>(c, op, n, gx, gy, x, y, p1, p2); break;
    case CT_BFLOAT16: launch_unary_backward<cuk_bf16>(c, op, n, gx, gy, x, y, p1, p2); break;
    case CT_FLOAT16: launch_unary_backward<cuk_f16>(c, op, n, gx, gy, x, y, p1, p2); break;
    default: return (int)cudaErrorInvalidValue;
    }
    return cuk_status();
}

/* ------------------------------------------------------------------ dropout */
/* S: x, y and mask; U: the uniforms (float32 beside 16-bit x: the op layer draws them so). */
template <typename S, typename U>
__global__ void k_dropout(int64_t n, S *y, S *mask, const S *x, const U *u,
                          typename cuk_acc<S>::type p, typename cuk_acc<S>::type scale) {
    typedef typename cuk_acc<S>::type T;
    CUK_LOOP(int64_t, i, n) {
        const T mi = (T)cuk_ld(u[i]) - p > 0 ? scale : (T)0;
        mask[i] = cuk_st<S>(mi);
        y[i] = cuk_st<S>(cuk_ld(x[i]) * mi);
    }
}

template <typename S, typename U>
static int launch_dropout(const cuk_ctx *c, int64_t n, void *y, void *mask, const void *x,
                          const void *u, double p) {
    typedef typename cuk_acc<S>::type T;
    CUK_LAUNCH(cuk_blocks(c, n, CUK_THREADS), CUK_THREADS, 0, c->stream, k_dropout<S, U>)(
        n, (S *)y, (S *)mask, (const S *)x, (const U *)u, (T)p, (T)(1.0 / (1.0 - p)));
    return cuk_status();
}

extern "C" int cuk_dropout(const cuk_ctx *c, int dt, int udt, int64_t n, void *y, void *mask,
                           const void *x, const void *u, double p) {
    if (n <= 0) return 0;
    if (udt == dt) {
        switch (dt) {
        case CT_FLOAT32: return launch_dropout<float, float>(c, n, y, mask, x, u, p);
        case CT_FLOAT64: return launch_dropout<double, double>(c, n, y, mask, x, u, p);
        case CT_BFLOAT16: return launch_dropout<cuk_bf16, cuk_bf16>(c, n, y, mask, x, u, p);
        case CT_FLOAT16: return launch_dropout<cuk_f16, cuk_f16>(c, n, y, mask, x, u, p);
        default: return (int)cudaErrorInvalidValue;
        }
    }
    if (udt != CT_FLOAT32) return (int)cudaErrorInvalidValue;
    switch (dt) {
    case CT_BFLOAT16: return launch_dropout<cuk_bf16, float>(c, n, y, mask, x, u, p);
    case CT_FLOAT16: return launch_dropout<cuk_f16, float>(c, n, y, mask, x, u, p);
    default: return (int)cudaErrorInvalidValue;
    }
}

/* --------------------------------------------------------------------- copy */
/* bfloat16 / float16 conversions: src/core/half.h's (bit-identical to PyTorch's). */
__device__ __forceinline__ double load_as_double(const char *p, int dt) {
    switch (dt) {
    case CT_FLOAT32: return *(const float *)p;
    case CT_FLOAT64: return *(const double *)p;
    case CT_INT64: return (double)*(const long long *)p;
    case CT_INT32: return *(const int32_t *)p;
    case CT_UINT8: return *(const uint8_t *)p;
    case CT_BFLOAT16: return ct_bf16_to_f32(*(const uint16_t *)p);
    case CT_FLOAT16: return ct_f16_to_f32(*(const uint16_t *)p);
    case CT_BOOL: return *(const uint8_t *)p != 0;
    default: return 0;
    }
}
__device__ __forceinline__ void store_double(char *p, int dt, double v) {
    switch (dt) {
    case CT_FLOAT32: *(float *)p = (float)v; break;
    case CT_FLOAT64: *(double *)p = v; break;
    case CT_INT64: *(long long *)p = (long long)v; break;
    case CT_INT32: *(int32_t *)p = (int32_t)v; break;
    case CT_UINT8: *(uint8_t *)p = (uint8_t)(int)v; break;
    case CT_BFLOAT16: *(uint16_t *)p = ct_f32_to_bf16((float)v); break;
    case CT_FLOAT16: *(uint16_t *)p = ct_f32_to_f16((float)v); break;
    case CT_BOOL: *(uint8_t *)p = v != 0; break;
    default: break;
    }
}

template <typename I>
__global__ void k_convert_generic(cuk_geom g, I n, char *dst, int ddt, int dsz, const char *src,
                                  int sdt, int ssz) {
    CUK_LOOP(I, i, n) {
        int64_t off[2];
        cuk_offsets<2, I>(g, i, off);
        store_double(dst + off[0] * dsz, ddt, load_as_double(src + off[1] * ssz, sdt));
    }
}

template <typename D, typename S>
struct Cast {
    __device__ __forceinline__ D operator()(S v) const { return (D)v; }
};
template <typename T>
struct Ident {
    __device__ __forceinline__ T operator()(T v) const { return v; }
};

static size_t dsize(int dt) {
    switch (dt) {
    case CT_FLOAT32: case CT_INT32: return 4;
    case CT_FLOAT64: case CT_INT64: return 8;
    case CT_BFLOAT16: case CT_FLOAT16: return 2;
    case CT_UINT8: case CT_BOOL: return 1;
    default: return 1;
    }
}

extern "C" int cuk_copy(const cuk_ctx *c, int ddt, int sdt, const cuk_geom *g, int64_t n,
                        void *dst, const void *src) {
    if (n <= 0) return 0;
    if (ddt == sdt) {
        size_t es = dsize(ddt);
        if (contiguous(g, 2)) {
            if (dst == src) return 0;
            return (int)cudaMemcpyAsync(dst, src, (size_t)n * es, cudaMemcpyDeviceToDevice,
                                        c->stream);
        }
        switch (es) {
        case 8: return launch_map2(c, g, n, (uint64_t *)dst, (const uint64_t *)src,
                                   Ident<uint64_t>{});
        case 4: return launch_map2(c, g, n, (uint32_t *)dst, (const uint32_t *)src,
                                   Ident<uint32_t>{});
        case 2: return launch_map2(c, g, n, (uint16_t *)dst, (const uint16_t *)src,
                                   Ident<uint16_t>{});
        default: return launch_map2(c, g, n, (uint8_t *)dst, (const uint8_t *)src,
                                    Ident<uint8_t>{});
        }
    }
    /* The common conversions get their own instantiations; the rest go through double
     * exactly like the CPU's load_as_double / store_double. */
    if (ddt == CT_FLOAT32 && sdt == CT_FLOAT64)
        return launch_map2(c, g, n, (float *)dst, (const double *)src, Cast<float, double>{});
    if (ddt == CT_FLOAT64 && sdt == CT_FLOAT32)
        return launch_map2(c, g, n, (double *)dst, (const float *)src, Cast<double, float>{});
    if (ddt == CT_FLOAT32 && sdt == CT_UINT8)
        return launch_map2(c, g, n, (float *)dst, (const uint8_t *)src, Cast<float, uint8_t>{});
    int blocks = cuk_blocks(c, n, CUK_THREADS);
    if (n < INT32_MAX)
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_convert_generic<uint32_t>)(
            *g, (uint32_t)n, (char *)dst, ddt, (int)dsize(ddt), (const char *)src, sdt,
            (int)dsize(sdt));
    else
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_convert_generic<int64_t>)(
            *g, n, (char *)dst, ddt, (int)dsize(ddt), (const char *)src, sdt, (int)dsize(sdt));
    return cuk_status();
}

/* --------------------------------------------------------------------- fill */
template <typename T>
__global__ void k_fill_contig(int64_t n, T *o, T v) {
    CUK_LOOP(int64_t, i, n) o[i] = v;
}
template <typename I, typename T>
__global__ void k_fill_strided(cuk_geom g, I n, T *o, T v) {
    CUK_LOOP(I, i, n) {
        int64_t off[1];
        cuk_offsets<1, I>(g, i, off);
        o[off[0]] = v;
    }
}
template <typename T>
static int launch_fill(const cuk_ctx *c, const cuk_geom *g, int64_t n, T *o, T v) {
    int blocks = cuk_blocks(c, n, CUK_THREADS);
    if (g->ndim == 1 && g->stride[0][0] == 1)
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_fill_contig<T>)(n, o, v);
    else if (n < INT32_MAX)
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_fill_strided<uint32_t, T>)(
            *g, (uint32_t)n, o, v);
    else
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_fill_strided<int64_t, T>)(*g, n, o, v);
    return cuk_status();
}

extern "C" int cuk_fill(const cuk_ctx *c, size_t esize, const cuk_geom *g, int64_t n, void *dst,
                        uint64_t value) {
    if (n <= 0) return 0;
    if (g->ndim == 1 && g->stride[0][0] == 1) {
        /* memset when every byte of the element is the same (zero, in practice). */
        int same = 1;
        for (size_t k = 1; k < esize; k++)
            if (((value >> (8 * k)) & 0xff) != (value & 0xff)) same = 0;
        if (same)
            return (int)cudaMemsetAsync(dst, (int)(value & 0xff), (size_t)n * esize, c->stream);
    }
    switch (esize) {
    case 8: return launch_fill(c, g, n, (uint64_t *)dst, (uint64_t)value);
    case 4: return launch_fill(c, g, n, (uint32_t *)dst, (uint32_t)value);
    case 2: return launch_fill(c, g, n, (uint16_t *)dst, (uint16_t)value);
    default: return launch_fill(c, g, n, (uint8_t *)dst, (uint8_t)value);
    }
}

/* ----------------------------------------------------------------- bias add */
template <typename I, typename T>
__global__ void k_bias_add(I n, T *y, const T *bias, I C, I S) {
    CUK_LOOP(I, i, n) y[i] = cuk_st<T>(cuk_ld(y[i]) + cuk_ld(bias[(i / S) % C]));
}

extern "C" int cuk_bias_add(const cuk_ctx *c, int dt, void *y, const void *bias, int64_t N,
                            int64_t C, int64_t S) {
    int64_t n = N * C * S;
    if (n <= 0) return 0;
    int blocks = cuk_blocks(c, n, CUK_THREADS);
    bool small = n < INT32_MAX;
#define BIAS_LAUNCH(T)                                                                     \
    if (small)                                                                             \
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_bias_add<uint32_t, T>)(            \
            (uint32_t)n, (T *)y, (const T *)bias, (uint32_t)C, (uint32_t)S);               \
    else                                                                                   \
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_bias_add<int64_t, T>)(             \
            n, (T *)y, (const T *)bias, C, S);
    if (dt == CT_FLOAT32) {
        BIAS_LAUNCH(float)
    } else if (dt == CT_FLOAT64) {
        BIAS_LAUNCH(double)
    } else if (dt == CT_BFLOAT16) {
        BIAS_LAUNCH(cuk_bf16)
    } else if (dt == CT_FLOAT16) {
        BIAS_LAUNCH(cuk_f16)
    } else {
        return (int)cudaErrorInvalidValue;
    }
#undef BIAS_LAUNCH
    return cuk_status();
}

/* ------------------------------------------------------------------- probe */
__global__ void k_probe(int *p) {
    if (p) *p = 1;
}

extern "C" int cuk_probe(void) {
    cudaFuncAttributes a;
    return (int)cudaFuncGetAttributes(&a, k_probe);
}
