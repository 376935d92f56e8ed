/* Elementwise kernels: binary, unary, unary derivative, copy with dtype conversion, fill,
 * bias add. Semantics mirror src/backends/cpu/cpu_elementwise.c operation by operation
 * (float32 math in float, float64 in double, int64 rules, NaN handling of clamp/relu). */
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
template <typename T, typename F>
__global__ void k_map3_contig(int64_t n, T *o, const T *a, const T *b, F f) {
    CUK_LOOP(int64_t, i, n) o[i] = f(a[i], b[i]);
}
template <typename I, typename T, typename F>
__global__ void k_map3_strided(cuk_geom g, I n, T *o, const T *a, const T *b, F f) {
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

template <typename T, typename F>
static int launch_map3(const cuk_ctx *c, const cuk_geom *g, int64_t n, T *o, const T *a,
                       const T *b, F f) {
    if (n <= 0) return 0;
    int blocks = cuk_blocks(c, n, CUK_THREADS);
    if (contiguous(g, 3))
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_map3_contig<T, F>)(n, o, a, b, f);
    else if (n < INT32_MAX)
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_map3_strided<uint32_t, T, F>)(
            *g, (uint32_t)n, o, a, b, f);
    else
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_map3_strided<int64_t, T, F>)(
            *g, n, o, a, b, f);
    return cuk_status();
}

/* ------------------------------------------------------------------- binary */
template <typename T>
struct BinF {
    int op;
    T al;
    __device__ __forceinline__ T operator()(T a, T b) const {
        switch (op) {
        case CUK_BIN_ADD: return a + al * b;
        case CUK_BIN_SUB: return a - al * b;
        case CUK_BIN_MUL: return a * b;
        default: return a / b;
        }
    }
};
struct BinI64 {
    int op;
    long long al;
    __device__ __forceinline__ long long operator()(long long a, long long b) const {
        switch (op) {
        case CUK_BIN_ADD: return a + al * b;
        case CUK_BIN_SUB: return a - al * b;
        case CUK_BIN_MUL: return a * b;
        default: return b ? a / b : 0;
        }
    }
};

extern "C" int cuk_binary(const cuk_ctx *c, int op, int dt, const cuk_geom *g, int64_t n,
                          void *out, const void *a, const void *b, double alpha) {
    switch (dt) {
    case CUK_F32:
        return launch_map3(c, g, n, (float *)out, (const float *)a, (const float *)b,
                           BinF<float>{op, (float)alpha});
    case CUK_F64:
        return launch_map3(c, g, n, (double *)out, (const double *)a, (const double *)b,
                           BinF<double>{op, alpha});
    case CUK_I64:
        return launch_map3(c, g, n, (long long *)out, (const long long *)a,
                           (const long long *)b, BinI64{op, (long long)alpha});
    default: return (int)cudaErrorInvalidValue;
    }
}

/* -------------------------------------------------------------------- unary */
#define SQRT_2_OVER_PI 0.7978845608028654
#define INV_SQRT_2 0.7071067811865476
#define INV_SQRT_2PI 0.3989422804014327

template <typename T>
struct UnF {
    int op;
    T p1, p2;
    __device__ __forceinline__ T operator()(T x) const {
        T r;
        switch (op) {
        case CUK_UN_NEG: r = -x; break;
        case CUK_UN_EXP: r = cu_exp(x); break;
        case CUK_UN_LOG: r = cu_log(x); break;
        case CUK_UN_SQRT: r = cu_sqrt(x); break;
        case CUK_UN_ABS: r = cu_abs(x); break;
        case CUK_UN_SIGN: r = (T)((x > 0) - (x < 0)); break;
        case CUK_UN_POW: r = cu_pow(x, p1); break;
        case CUK_UN_CLAMP:
            r = x < p1 ? p1 : (x > p2 ? p2 : x);
            if (x != x) r = x;
            break;
        case CUK_UN_ADD_SCALAR: r = x + p1; break;
        case CUK_UN_MUL_SCALAR: r = x * p1; break;
        case CUK_UN_RELU:
            r = x > 0 ? x : (T)0;
            if (x != x) r = x;
            break;
        case CUK_UN_LEAKY_RELU: r = x > 0 ? x : x * p1; break;
        case CUK_UN_GELU: r = (T)0.5 * x * ((T)1 + cu_erf(x * (T)INV_SQRT_2)); break;
        case CUK_UN_GELU_TANH:
            r = (T)0.5 * x * ((T)1 + cu_tanh((T)SQRT_2_OVER_PI * (x + (T)0.044715 * x * x * x)));
            break;
        case CUK_UN_SIGMOID: r = (T)1 / ((T)1 + cu_exp(-x)); break;
        case CUK_UN_TANH: r = cu_tanh(x); break;
        default: r = x;
        }
        return r;
    }
};
struct UnI64 {
    int op;
    double p1, p2;
    __device__ __forceinline__ long long operator()(long long x) const {
        long long r = x;
        switch (op) {
        case CUK_UN_NEG: r = -x; break;
        case CUK_UN_ABS: r = x < 0 ? -x : x; break;
        case CUK_UN_SIGN: r = (x > 0) - (x < 0); break;
        case CUK_UN_ADD_SCALAR: r = x + (long long)p1; break;
        case CUK_UN_MUL_SCALAR: r = x * (long long)p1; break;
        case CUK_UN_RELU: r = x > 0 ? x : 0; break;
        case CUK_UN_CLAMP:
            r = (double)x < p1 ? (long long)p1 : ((double)x > p2 ? (long long)p2 : x);
            break;
        default: break;
        }
        return r;
    }
};

extern "C" int cuk_unary(const cuk_ctx *c, int op, int dt, const cuk_geom *g, int64_t n,
                         void *out, const void *a, double p1, double p2) {
    switch (dt) {
    case CUK_F32:
        return launch_map2(c, g, n, (float *)out, (const float *)a,
                           UnF<float>{op, (float)p1, (float)p2});
    case CUK_F64:
        return launch_map2(c, g, n, (double *)out, (const double *)a, UnF<double>{op, p1, p2});
    case CUK_I64:
        return launch_map2(c, g, n, (long long *)out, (const long long *)a, UnI64{op, p1, p2});
    default: return (int)cudaErrorInvalidValue;
    }
}

/* ------------------------------------------------------- unary derivative */
template <typename T>
__global__ void k_unary_backward(int op, int64_t n, T *gx, const T *gy, const T *x, const T *y,
                                 T p1, T p2) {
    (void)p2;
    CUK_LOOP(int64_t, i, n) {
        T g = gy[i], d;
        switch (op) {
        case CUK_UN_NEG: d = -1; break;
        case CUK_UN_EXP: d = y[i]; break;
        case CUK_UN_LOG: d = (T)1 / x[i]; break;
        case CUK_UN_SQRT: d = (T)0.5 / y[i]; break;
        case CUK_UN_ABS: d = (T)((x[i] > 0) - (x[i] < 0)); break;
        case CUK_UN_POW: d = p1 == 0 ? (T)0 : p1 * cu_pow(x[i], p1 - 1); break;
        case CUK_UN_CLAMP: d = (x[i] >= p1 && x[i] <= p2) ? (T)1 : (T)0; break;
        case CUK_UN_ADD_SCALAR: d = 1; break;
        case CUK_UN_MUL_SCALAR: d = p1; break;
        case CUK_UN_RELU: d = x[i] > 0 ? (T)1 : (T)0; break;
        case CUK_UN_LEAKY_RELU: d = x[i] > 0 ? (T)1 : p1; break;
        case CUK_UN_GELU: {
            T v = x[i];
            T cdf = (T)0.5 * ((T)1 + (T)erf((double)(v * (T)INV_SQRT_2)));
            T pdf = (T)INV_SQRT_2PI * cu_exp((T)-0.5 * v * v);
            d = cdf + v * pdf;
            break;
        }
        case CUK_UN_GELU_TANH: {
            T v = x[i];
            T inner = (T)SQRT_2_OVER_PI * (v + (T)0.044715 * v * v * v);
            T t = cu_tanh(inner);
            T dinner = (T)SQRT_2_OVER_PI * ((T)1 + (T)3 * (T)0.044715 * v * v);
            d = (T)0.5 * ((T)1 + t) + (T)0.5 * v * ((T)1 - t * t) * dinner;
            break;
        }
        case CUK_UN_SIGMOID: d = y[i] * ((T)1 - y[i]); break;
        case CUK_UN_TANH: d = (T)1 - y[i] * y[i]; break;
        default: d = 0;
        }
        gx[i] = g * d;
    }
}

extern "C" int cuk_unary_backward(const cuk_ctx *c, int op, int dt, int64_t n, void *gx,
                                  const void *gy, const void *x, const void *y, double p1,
                                  double p2) {
    if (n <= 0) return 0;
    int blocks = cuk_blocks(c, n, CUK_THREADS);
    if (dt == CUK_F32)
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_unary_backward<float>)(
            op, n, (float *)gx, (const float *)gy, (const float *)x, (const float *)y,
            (float)p1, (float)p2);
    else if (dt == CUK_F64)
        CUK_LAUNCH(blocks, CUK_THREADS, 0, c->stream, k_unary_backward<double>)(
            op, n, (double *)gx, (const double *)gy, (const double *)x, (const double *)y, p1,
            p2);
    else
        return (int)cudaErrorInvalidValue;
    return cuk_status();
}

/* --------------------------------------------------------------------- copy */
/* bfloat16 / float16 conversions, bit-identical to src/core/half.h. */
__device__ __forceinline__ float bf16_to_f32(uint16_t h) {
    return __uint_as_float((uint32_t)h << 16);
}
__device__ __forceinline__ uint16_t f32_to_bf16(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
__device__ __forceinline__ float f16_to_f32(uint16_t h) {
    uint32_t s = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, u;
    if (e == 0) {
        if (m == 0) {
            u = s;
        } else {
            e = 127 - 15 + 1;
            while (!(m & 0x400u)) {
                m <<= 1;
                e--;
            }
            m &= 0x3ffu;
            u = s | (e << 23) | (m << 13);
        }
    } else if (e == 31) {
        u = s | 0x7f800000u | (m << 13);
    } else {
        u = s | ((e + 127 - 15) << 23) | (m << 13);
    }
    return __uint_as_float(u);
}
__device__ __forceinline__ uint16_t f32_to_f16(float f) {
    uint32_t u = __float_as_uint(f);
    uint32_t s = (u >> 16) & 0x8000u;
    int32_t e = (int32_t)((u >> 23) & 0xff) - 127 + 15;
    uint32_t m = u & 0x7fffffu;
    if (((u >> 23) & 0xff) == 0xff) return (uint16_t)(s | 0x7c00u | (m ? 0x200u : 0));
    if (e >= 31) return (uint16_t)(s | 0x7c00u);
    if (e <= 0) {
        if (e < -10) return (uint16_t)s;
        m |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(s | r);
    }
    uint32_t r = (s | ((uint32_t)e << 10) | (m >> 13));
    uint32_t rem = m & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1))) r++;
    return (uint16_t)r;
}

__device__ __forceinline__ double load_as_double(const char *p, int dt) {
    switch (dt) {
    case CUK_F32: return *(const float *)p;
    case CUK_F64: return *(const double *)p;
    case CUK_I64: return (double)*(const long long *)p;
    case CUK_I32: return *(const int32_t *)p;
    case CUK_U8: return *(const uint8_t *)p;
    case CUK_BF16: return bf16_to_f32(*(const uint16_t *)p);
    case CUK_F16: return f16_to_f32(*(const uint16_t *)p);
    default: return 0;
    }
}
__device__ __forceinline__ void store_double(char *p, int dt, double v) {
    switch (dt) {
    case CUK_F32: *(float *)p = (float)v; break;
    case CUK_F64: *(double *)p = v; break;
    case CUK_I64: *(long long *)p = (long long)v; break;
    case CUK_I32: *(int32_t *)p = (int32_t)v; break;
    case CUK_U8: *(uint8_t *)p = (uint8_t)(int)v; break;
    case CUK_BF16: *(uint16_t *)p = f32_to_bf16((float)v); break;
    case CUK_F16: *(uint16_t *)p = f32_to_f16((float)v); break;
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
    case CUK_F32: case CUK_I32: return 4;
    case CUK_F64: case CUK_I64: return 8;
    case CUK_BF16: case CUK_F16: return 2;
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
    if (ddt == CUK_F32 && sdt == CUK_F64)
        return launch_map2(c, g, n, (float *)dst, (const double *)src, Cast<float, double>{});
    if (ddt == CUK_F64 && sdt == CUK_F32)
        return launch_map2(c, g, n, (double *)dst, (const float *)src, Cast<double, float>{});
    if (ddt == CUK_F32 && sdt == CUK_U8)
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
    CUK_LOOP(I, i, n) y[i] += bias[(i / S) % C];
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
    if (dt == CUK_F32) {
        BIAS_LAUNCH(float)
    } else if (dt == CUK_F64) {
        BIAS_LAUNCH(double)
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
