/* CPU pointwise kernels: binary, unary (+ derivative), copy with dtype conversion, fill. */
#include "core/backend.h"
#include "core/error.h"
#include "core/half.h"
#include "cpu_iter.h"
#include "cpu_kernels.h"

#include <math.h>
#include <string.h>

typedef struct {
    int op;
    double alpha, p1, p2;
} ew_ctx;

/* The float loops are compiled for AVX-512, AVX2 and baseline x86-64 and the loader picks
 * one at start-up. Contraction into FMA stays off (-std=c11), so all variants round the
 * same way; libm calls (exp, log, ...) are the same functions in each. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CT_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CT_MULTIVERSION
#endif

/* ------------------------------------------------------------------ binary */
/* One loop per (op, layout): contiguous, scalar b (stride 0), general strides. out may
 * alias a or b (in-place ops); the compiler checks overlap at run time before using the
 * vector loop, so even overlapping views keep the element-by-element result. */
#define BIN_LOOP(T, EXPR)                                                                     \
    do {                                                                                      \
        if (so == 1 && sa == 1 && sb == 1) {                                                  \
            for              (int64_t i = 0; i < n; i++) {                                    \
                const T x = a[i], y = b[i];                                                   \
                o[i] = EXPR;                                                                  \
            }                                                                                 \
        } else if (so == 1 && sa == 1 && sb == 0) {                                           \
            const T y = b[0];                                                                 \
            for              (int64_t i = 0; i < n; i++) {                                    \
                const T x = a[i];                                                             \
                o[i] = EXPR;                                                                  \
            }                                                                                 \
        } else {                                                                              \
            for              (int64_t i = 0; i < n; i++) {                                    \
                const T x = a[i * sa], y = b[i * sb];                                         \
                o[i * so] = EXPR;                                                             \
            }                                                                                 \
        }                                                                                     \
    } while (0)

#define BIN_ROW(T, NAME)                                                                      \
    CT_MULTIVERSION static void NAME(void *vc, int64_t n, char **p, const int64_t *s) {       \
        const ew_ctx *c = vc;                                                                 \
        T *o = (T *)p[0];                                                                     \
        const T *a = (const T *)p[1], *b = (const T *)p[2];                                   \
        const T al = (T)c->alpha;                                                             \
        const int64_t so = s[0], sa = s[1], sb = s[2];                                        \
        switch (c->op) {                                                                      \
        case CT_BIN_ADD:                                                                      \
            if (al == 1) BIN_LOOP(T, x + y);                                                  \
            else BIN_LOOP(T, x + al * y);                                                     \
            break;                                                                            \
        case CT_BIN_SUB:                                                                      \
            if (al == 1) BIN_LOOP(T, x - y);                                                  \
            else BIN_LOOP(T, x - al * y);                                                     \
            break;                                                                            \
        case CT_BIN_MUL: BIN_LOOP(T, x * y); break;                                           \
        case CT_BIN_DIV: BIN_LOOP(T, x / y); break;                                           \
        }                                                                                     \
    }
BIN_ROW(float, bin_f32)
BIN_ROW(double, bin_f64)

static void bin_i64(void *vc, int64_t n, char **p, const int64_t *s) {
    const ew_ctx *c = vc;
    int64_t *o = (int64_t *)p[0];
    const int64_t *a = (const int64_t *)p[1], *b = (const int64_t *)p[2];
    int64_t al = (int64_t)c->alpha;
    for (int64_t i = 0; i < n; i++) {
        int64_t x = a[i * s[1]], y = b[i * s[2]], r = 0;
        switch (c->op) {
        case CT_BIN_ADD: r = x + al * y; break;
        case CT_BIN_SUB: r = x - al * y; break;
        case CT_BIN_MUL: r = x * y; break;
        case CT_BIN_DIV: r = y ? x / y : 0; break;
        }
        o[i * s[0]] = r;
    }
}

int cpu_binary(ct_binop op, ct_tensor *out, const ct_tensor *a, const ct_tensor *b, double alpha) {
    const ct_tensor *ops[3] = {out, a, b};
    ct_iter it;
    ct_iter_init(&it, 3, ops);
    ew_ctx c = {op, alpha, 0, 0};
    switch (out->dtype) {
    case CT_FLOAT32: ct_iter_run(&it, bin_f32, &c); return 0;
    case CT_FLOAT64: ct_iter_run(&it, bin_f64, &c); return 0;
    case CT_INT64: ct_iter_run(&it, bin_i64, &c); return 0;
    default: return ct_error("binary op: dtype %s not supported on the CPU", ct_dtype_name(out->dtype));
    }
}

/* ------------------------------------------------------------------ unary */
#define SQRT_2_OVER_PI 0.7978845608028654
#define INV_SQRT_2 0.7071067811865476
#define INV_SQRT_2PI 0.3989422804014327

/* The op is switched on once per row, outside the element loop, so that each loop is
 * branch-free and vectorizes; contiguous rows get their own loop. `out` may alias `a`
 * element for element (in-place ops), which ivdep allows. */
/* "The iterations are independent" for GCC's vectorizer (output and input may alias only
 * element for element, see above). Clang vectorizes with run-time alias checks instead, and
 * its forcing pragma would fail (-Werror) on the loops with libm calls. */
#if defined(__GNUC__) && !defined(__clang__)
#define CT_IVDEP _Pragma("GCC ivdep")
#else
#define CT_IVDEP
#endif

#define UN_LOOP(T, EXPR)                                                                      \
    do {                                                                                      \
        if (so == 1 && sa == 1) {                                                             \
            CT_IVDEP for (int64_t i = 0; i < n; i++) {                            \
                T x = a[i], r;                                                                \
                EXPR;                                                                         \
                o[i] = r;                                                                     \
            }                                                                                 \
        } else {                                                                              \
            CT_IVDEP for (int64_t i = 0; i < n; i++) {                            \
                T x = a[i * sa], r;                                                           \
                EXPR;                                                                         \
                o[i * so] = r;                                                                \
            }                                                                                 \
        }                                                                                     \
    } while (0)

#define UN_ROW(T, NAME, EXP, LOG, SQRT, FABS, POW, TANH, ERF)                                 \
    CT_MULTIVERSION static void NAME(void *vc, int64_t n, char **p, const int64_t *s) {       \
        const ew_ctx *c = vc;                                                                 \
        T *o = (T *)p[0];                                                                     \
        const T *a = (const T *)p[1];                                                         \
        const T p1 = (T)c->p1, p2 = (T)c->p2;                                                 \
        const int64_t so = s[0], sa = s[1];                                                   \
        switch (c->op) {                                                                      \
        case CT_UN_NEG: UN_LOOP(T, r = -x); break;                                            \
        case CT_UN_EXP: UN_LOOP(T, r = EXP(x)); break;                                        \
        case CT_UN_LOG: UN_LOOP(T, r = LOG(x)); break;                                        \
        case CT_UN_SQRT: UN_LOOP(T, r = SQRT(x)); break;                                      \
        case CT_UN_ABS: UN_LOOP(T, r = FABS(x)); break;                                       \
        case CT_UN_SIGN: UN_LOOP(T, r = (T)((x > 0) - (x < 0))); break;                       \
        case CT_UN_POW: UN_LOOP(T, r = POW(x, p1)); break;                                    \
        case CT_UN_CLAMP:                                                                     \
            UN_LOOP(T, r = x < p1 ? p1 : (x > p2 ? p2 : x); if (x != x) r = x);               \
            break;                                                                            \
        case CT_UN_ADD_SCALAR: UN_LOOP(T, r = x + p1); break;                                 \
        case CT_UN_MUL_SCALAR: UN_LOOP(T, r = x * p1); break;                                 \
        case CT_UN_RELU: UN_LOOP(T, r = x > 0 ? x : 0; if (x != x) r = x); break;             \
        case CT_UN_LEAKY_RELU: UN_LOOP(T, r = x > 0 ? x : x * p1); break;                     \
        case CT_UN_GELU: UN_LOOP(T, r = (T)0.5 * x * ((T)1 + ERF(x * (T)INV_SQRT_2))); break; \
        case CT_UN_GELU_TANH:                                                                 \
            UN_LOOP(T, r = (T)0.5 * x *                                                       \
                           ((T)1 + TANH((T)SQRT_2_OVER_PI * (x + (T)0.044715 * x * x * x)))); \
            break;                                                                            \
        case CT_UN_SIGMOID: UN_LOOP(T, r = (T)1 / ((T)1 + EXP(-x))); break;                   \
        case CT_UN_TANH: UN_LOOP(T, r = TANH(x)); break;                                      \
        default: UN_LOOP(T, r = x); break;                                                    \
        }                                                                                     \
    }
UN_ROW(float, un_f32, expf, logf, sqrtf, fabsf, powf, tanhf, erff)
UN_ROW(double, un_f64, exp, log, sqrt, fabs, pow, tanh, erf)

static void un_i64(void *vc, int64_t n, char **p, const int64_t *s) {
    const ew_ctx *c = vc;
    int64_t *o = (int64_t *)p[0];
    const int64_t *a = (const int64_t *)p[1];
    for (int64_t i = 0; i < n; i++) {
        int64_t x = a[i * s[1]], r = x;
        switch (c->op) {
        case CT_UN_NEG: r = -x; break;
        case CT_UN_ABS: r = x < 0 ? -x : x; break;
        case CT_UN_SIGN: r = (x > 0) - (x < 0); break;
        case CT_UN_ADD_SCALAR: r = x + (int64_t)c->p1; break;
        case CT_UN_MUL_SCALAR: r = x * (int64_t)c->p1; break;
        case CT_UN_RELU: r = x > 0 ? x : 0; break;
        case CT_UN_CLAMP: r = (double)x < c->p1 ? (int64_t)c->p1 : ((double)x > c->p2 ? (int64_t)c->p2 : x); break;
        default: break;
        }
        o[i * s[0]] = r;
    }
}

int cpu_unary(ct_unop op, ct_tensor *out, const ct_tensor *a, double p1, double p2) {
    const ct_tensor *ops[2] = {out, a};
    ct_iter it;
    ct_iter_init(&it, 2, ops);
    ew_ctx c = {op, 1, p1, p2};
    switch (out->dtype) {
    case CT_FLOAT32: ct_iter_run(&it, un_f32, &c); return 0;
    case CT_FLOAT64: ct_iter_run(&it, un_f64, &c); return 0;
    case CT_INT64:
        if (op == CT_UN_NEG || op == CT_UN_ABS || op == CT_UN_SIGN || op == CT_UN_ADD_SCALAR ||
            op == CT_UN_MUL_SCALAR || op == CT_UN_RELU || op == CT_UN_CLAMP) {
            ct_iter_run(&it, un_i64, &c);
            return 0;
        }
        /* fallthrough */
    default:
        return ct_error("unary op: dtype %s not supported for this op; convert to float32 with "
                        "ct_to_dtype", ct_dtype_name(out->dtype));
    }
}

/* ------------------------------------------------------- unary derivative */
typedef struct {
    ct_unop op;
    double p1, p2;
    int64_t n;
    void *gx;
    const void *gy, *x, *y;
} ud_ctx;

/* As for the forward: one branch-free loop per op. gx = gy * d with d the derivative,
 * exactly as the per-element formula (so NaN and inf propagate alike). */
#define UD_LOOP(T, EXPR)                                                                      \
    do {                                                                                      \
        for (int64_t i = b; i < e; i++) {                                                     \
            T d;                                                                              \
            EXPR;                                                                             \
            gx[i] = gy[i] * d;                                                                \
        }                                                                                     \
    } while (0)

#define UD_BODY(T, EXP, POW, TANH, FABS)                                                      \
    {                                                                                         \
        T *gx = (T *)c->gx;                                                                   \
        const T *gy = (const T *)c->gy, *x = (const T *)c->x, *y = (const T *)c->y;           \
        const T p1 = (T)c->p1;                                                                \
        switch (c->op) {                                                                      \
        case CT_UN_NEG: UD_LOOP(T, d = -1); break;                                            \
        case CT_UN_EXP: UD_LOOP(T, d = y[i]); break;                                          \
        case CT_UN_LOG: UD_LOOP(T, d = (T)1 / x[i]); break;                                   \
        case CT_UN_SQRT: UD_LOOP(T, d = (T)0.5 / y[i]); break;                                \
        case CT_UN_ABS: UD_LOOP(T, d = (T)((x[i] > 0) - (x[i] < 0))); break;                  \
        case CT_UN_POW: UD_LOOP(T, d = p1 == 0 ? 0 : p1 * POW(x[i], p1 - 1)); break;          \
        case CT_UN_CLAMP: {                                                                   \
            const T p2 = (T)c->p2;                                                            \
            UD_LOOP(T, d = (x[i] >= p1 && x[i] <= p2) ? 1 : 0);                               \
            break;                                                                            \
        }                                                                                     \
        case CT_UN_ADD_SCALAR: UD_LOOP(T, d = 1); break;                                      \
        case CT_UN_MUL_SCALAR: UD_LOOP(T, d = p1); break;                                     \
        case CT_UN_RELU: UD_LOOP(T, d = x[i] > 0 ? 1 : 0); break;                             \
        case CT_UN_LEAKY_RELU: UD_LOOP(T, d = x[i] > 0 ? 1 : p1); break;                      \
        case CT_UN_GELU:                                                                      \
            UD_LOOP(T, T v = x[i];                                                            \
                    T cdf = (T)0.5 * ((T)1 + (T)erf((double)(v * (T)INV_SQRT_2)));            \
                    T pdf = (T)INV_SQRT_2PI * EXP((T)-0.5 * v * v); d = cdf + v * pdf);       \
            break;                                                                            \
        case CT_UN_GELU_TANH:                                                                 \
            UD_LOOP(T, T v = x[i]; T inner = (T)SQRT_2_OVER_PI * (v + (T)0.044715 * v * v * v); \
                    T t = TANH(inner);                                                        \
                    T dinner = (T)SQRT_2_OVER_PI * ((T)1 + (T)3 * (T)0.044715 * v * v);       \
                    d = (T)0.5 * ((T)1 + t) + (T)0.5 * v * ((T)1 - t * t) * dinner);          \
            break;                                                                            \
        case CT_UN_SIGMOID: UD_LOOP(T, d = y[i] * ((T)1 - y[i])); break;                      \
        case CT_UN_TANH: UD_LOOP(T, d = (T)1 - y[i] * y[i]); break;                           \
        default: UD_LOOP(T, d = 0); break;                                                    \
        }                                                                                     \
    }

CT_MULTIVERSION static void ud_f32(void *vc, int64_t b, int64_t e) {
    ud_ctx *c = vc;
    UD_BODY(float, expf, powf, tanhf, fabsf)
}
CT_MULTIVERSION static void ud_f64(void *vc, int64_t b, int64_t e) {
    ud_ctx *c = vc;
    UD_BODY(double, exp, pow, tanh, fabs)
}

int cpu_unary_backward(ct_unop op, ct_tensor *gx, const ct_tensor *gy, const ct_tensor *x,
                       const ct_tensor *y, double p1, double p2) {
    ud_ctx c = {op, p1, p2, ct_numel(gx), ct_ptr(gx), ct_ptr(gy), x ? ct_ptr(x) : NULL,
                y ? ct_ptr(y) : NULL};
    if (gx->dtype == CT_FLOAT32) ct_parallel_for(c.n, 16384, ud_f32, &c);
    else if (gx->dtype == CT_FLOAT64) ct_parallel_for(c.n, 16384, ud_f64, &c);
    else return ct_error("backward: dtype %s has no gradient", ct_dtype_name(gx->dtype));
    return 0;
}

/* ------------------------------------------------------------------- copy */
static double load_as_double(const char *p, ct_dtype dt) {
    switch (dt) {
    case CT_FLOAT32: return *(const float *)p;
    case CT_FLOAT64: return *(const double *)p;
    case CT_INT64: return (double)*(const int64_t *)p;
    case CT_INT32: return *(const int32_t *)p;
    case CT_UINT8: return *(const uint8_t *)p;
    case CT_BFLOAT16: return ct_bf16_to_f32(*(const uint16_t *)p);
    case CT_FLOAT16: return ct_f16_to_f32(*(const uint16_t *)p);
    default: return 0;
    }
}

static void store_double(char *p, ct_dtype dt, double v) {
    switch (dt) {
    case CT_FLOAT32: *(float *)p = (float)v; break;
    case CT_FLOAT64: *(double *)p = v; break;
    case CT_INT64: *(int64_t *)p = (int64_t)v; break;
    case CT_INT32: *(int32_t *)p = (int32_t)v; break;
    case CT_UINT8: *(uint8_t *)p = (uint8_t)(int)v; break;
    case CT_BFLOAT16: *(uint16_t *)p = ct_f32_to_bf16((float)v); break;
    case CT_FLOAT16: *(uint16_t *)p = ct_f32_to_f16((float)v); break;
    default: break;
    }
}

typedef struct {
    ct_dtype dd, sd;
    size_t dsz, ssz;
} cp_ctx;

static void copy_row(void *vc, int64_t n, char **p, const int64_t *s) {
    const cp_ctx *c = vc;
    if (c->dd == c->sd) {
        if (s[0] == 1 && s[1] == 1) {
            memcpy(p[0], p[1], (size_t)n * c->dsz);
            return;
        }
        switch (c->dsz) {
        case 4: for (int64_t i = 0; i < n; i++) ((uint32_t *)p[0])[i * s[0]] = ((const uint32_t *)p[1])[i * s[1]]; return;
        case 8: for (int64_t i = 0; i < n; i++) ((uint64_t *)p[0])[i * s[0]] = ((const uint64_t *)p[1])[i * s[1]]; return;
        case 2: for (int64_t i = 0; i < n; i++) ((uint16_t *)p[0])[i * s[0]] = ((const uint16_t *)p[1])[i * s[1]]; return;
        default: for (int64_t i = 0; i < n; i++) p[0][i * s[0]] = p[1][i * s[1]]; return;
        }
    }
    if (c->dd == CT_FLOAT32 && c->sd == CT_FLOAT64) {
        for (int64_t i = 0; i < n; i++) ((float *)p[0])[i * s[0]] = (float)((const double *)p[1])[i * s[1]];
        return;
    }
    if (c->dd == CT_FLOAT32 && c->sd == CT_UINT8) {
        for (int64_t i = 0; i < n; i++) ((float *)p[0])[i * s[0]] = ((const uint8_t *)p[1])[i * s[1]];
        return;
    }
    for (int64_t i = 0; i < n; i++)
        store_double(p[0] + i * s[0] * (int64_t)c->dsz, c->dd,
                     load_as_double(p[1] + i * s[1] * (int64_t)c->ssz, c->sd));
}

int cpu_copy(ct_tensor *dst, const ct_tensor *src) {
    const ct_tensor *ops[2] = {dst, src};
    ct_iter it;
    ct_iter_init(&it, 2, ops);
    cp_ctx c = {dst->dtype, src->dtype, ct_dtype_size(dst->dtype), ct_dtype_size(src->dtype)};
    ct_iter_run(&it, copy_row, &c);
    return 0;
}

typedef struct {
    ct_dtype dt;
    size_t sz;
    char val[8];
} fill_ctx;

static void fill_row(void *vc, int64_t n, char **p, const int64_t *s) {
    const fill_ctx *c = vc;
    if (s[0] == 1 && c->sz == 4) {
        uint32_t v;
        memcpy(&v, c->val, 4);
        if (v == 0) { memset(p[0], 0, (size_t)n * 4); return; }
        for (int64_t i = 0; i < n; i++) ((uint32_t *)p[0])[i] = v;
        return;
    }
    for (int64_t i = 0; i < n; i++) memcpy(p[0] + i * s[0] * (int64_t)c->sz, c->val, c->sz);
}

int cpu_fill(ct_tensor *t, double value) {
    const ct_tensor *ops[1] = {t};
    ct_iter it;
    ct_iter_init(&it, 1, ops);
    fill_ctx c = {t->dtype, ct_dtype_size(t->dtype), {0}};
    store_double(c.val, t->dtype, value);
    ct_iter_run(&it, fill_row, &c);
    return 0;
}
