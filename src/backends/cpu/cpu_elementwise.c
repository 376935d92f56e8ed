/* CPU pointwise kernels: binary, unary (+ derivative), copy with dtype conversion, fill. */
#include "core/backend.h"
#include "cpu_isa.h"
#include "core/error.h"
#include "core/half.h"
#include "cpu_iter.h"
#include "cpu_kernels.h"
#include "cpu_vexp.h"

#include <math.h>
#include <string.h>

typedef struct {
    int op;
    double alpha, p1, p2;
    int gelu_isa; /* GELU float32's kernel: gelu_level() */
} ew_ctx;

/* The float loops are CT_MULTIVERSION (cpu_isa.h): AVX-512, AVX2 and baseline x86-64, the loader picks
 * one at start-up. Contraction into FMA stays off (-std=c11), so all variants round the
 * same way; libm calls (exp, log, ...) are the same functions in each. */

/* Contiguous bf16 <-> float32 runs, branch-free so that they vectorize (half.h's rules). */
CT_MULTIVERSION static void cvt_bf16_f32(float *o, const uint16_t *h, int64_t n) {
    uint32_t *u = (uint32_t *)o;
    for (int64_t i = 0; i < n; i++) u[i] = (uint32_t)h[i] << 16;
}
CT_MULTIVERSION static void cvt_f32_bf16(uint16_t *o, const float *f, int64_t n) {
    const uint32_t *u = (const uint32_t *)f;
    for (int64_t i = 0; i < n; i++) {
        uint32_t v = u[i], r = (v + 0x7fffu + ((v >> 16) & 1u)) >> 16;
        o[i] = (uint16_t)((v & 0x7fffffffu) > 0x7f800000u ? 0xffffu : r);
    }
}
void cpu_bf16_to_f32_row(float *dst, const uint16_t *src, int64_t n) { cvt_bf16_f32(dst, src, n); }
void cpu_f32_to_bf16_row(uint16_t *dst, const float *src, int64_t n) { cvt_f32_bf16(dst, src, n); }

/* ------------------------------------------------------------------ binary */
/* One loop per (op, layout): contiguous, scalar b (stride 0), general strides. out may
 * alias a or b (in-place ops); the compiler checks overlap at run time before using the
 * vector loop, so even overlapping views keep the element-by-element result. R is the
 * result's type: T for the SAME rows, uint8_t (bool) for the BOOL rows. */
#define BIN_LOOP(T, R, FWD)                                                                   \
    do {                                                                                      \
        if (so == 1 && sa == 1 && sb == 1) {                                                  \
            for (int64_t i = 0; i < n; i++) {                                                 \
                const T x = a[i], y = b[i];                                                   \
                R r;                                                                          \
                FWD;                                                                          \
                o[i] = r;                                                                     \
            }                                                                                 \
        } else if (so == 1 && sa == 1 && sb == 0) {                                           \
            const T y = b[0];                                                                 \
            for (int64_t i = 0; i < n; i++) {                                                 \
                const T x = a[i];                                                             \
                R r;                                                                          \
                FWD;                                                                          \
                o[i] = r;                                                                     \
            }                                                                                 \
        } else {                                                                              \
            for (int64_t i = 0; i < n; i++) {                                                 \
                const T x = a[i * sa], y = b[i * sb];                                         \
                R r;                                                                          \
                FWD;                                                                          \
                o[i * so] = r;                                                                \
            }                                                                                 \
        }                                                                                     \
    } while (0)

/* One branch-free loop per op (the rows of CT_BINARY_OPS whose result rule is SAME,
 * generated); alpha == 1 gets its own loop, where the compiler drops the multiplication
 * (1 * y is exact: same values). */
#define BIN_CASE(ID, name, node, result, FWD)                                                 \
    CT_IF_SAME_ROW_##result(case CT_BIN_##ID:                                                 \
        if (alpha == (T)1) {                                                                  \
            const T al = 1;                                                                   \
            (void)al;                                                                         \
            BIN_LOOP(T, T, FWD);                                                              \
        } else {                                                                              \
            const T al = alpha;                                                               \
            (void)al;                                                                         \
            BIN_LOOP(T, T, FWD);                                                              \
        }                                                                                     \
        break;)

#define BIN_ROW(TYPE, NAME)                                                                      \
    CT_MULTIVERSION static void NAME(void *vc, int64_t n, char **p, const int64_t *s) { \
        typedef TYPE T; /* the formulas of op_tables.h are written over T */       \
        const ew_ctx *c = vc;                                                                 \
        T *o = (T *)p[0];                                                                     \
        const T *a = (const T *)p[1], *b = (const T *)p[2];                                   \
        const T alpha = (T)c->alpha;                                                          \
        const int64_t so = s[0], sa = s[1], sb = s[2];                                        \
        switch ((ct_binop)c->op) {                                                            \
            CT_BINARY_OPS(BIN_CASE)                                                           \
        default: break; /* a BOOL row: cmp_* below */                                         \
        }                                                                                     \
    }
BIN_ROW(float, bin_f32)
BIN_ROW(double, bin_f64)
BIN_ROW(int64_t, bin_i64)

/* The rows whose result rule is BOOL: operands of type T, a bool (uint8_t 0/1) result. */
#define CMP_CASE(ID, name, node, result, FWD)                                                 \
    CT_IF_BOOL_ROW_##result(case CT_BIN_##ID: BIN_LOOP(T, uint8_t, FWD); break;)

#define CMP_ROW(TYPE, NAME)                                                                   \
    CT_MULTIVERSION static void NAME(void *vc, int64_t n, char **p, const int64_t *s) {       \
        typedef TYPE T;                                                                       \
        const ew_ctx *c = vc;                                                                 \
        uint8_t *o = (uint8_t *)p[0];                                                         \
        const T *a = (const T *)p[1], *b = (const T *)p[2];                                   \
        const int64_t so = s[0], sa = s[1], sb = s[2];                                        \
        switch ((ct_binop)c->op) {                                                            \
            CT_BINARY_OPS(CMP_CASE)                                                           \
        default: break; /* a SAME row: bin_* above */                                         \
        }                                                                                     \
    }
CMP_ROW(float, cmp_f32)
CMP_ROW(double, cmp_f64)
CMP_ROW(int64_t, cmp_i64)
CMP_ROW(uint8_t, cmp_bool)

/* bfloat16 rows: chunks of the operands widened on the stack, the float32 row, the result
 * rounded back (the values of widening whole tensors, without the temporaries). */
#define LP_CHUNK 512
static void widen(float *dst, const char *src, int64_t m, int64_t st) {
    const uint16_t *h = (const uint16_t *)src;
    if (st == 1) cvt_bf16_f32(dst, h, m);
    else for (int64_t i = 0; i < m; i++) dst[i] = ct_bf16_to_f32(h[i * st]);
}
static void narrow(char *dst, const float *src, int64_t m, int64_t st) {
    uint16_t *h = (uint16_t *)dst;
    if (st == 1) cvt_f32_bf16(h, src, m);
    else for (int64_t i = 0; i < m; i++) h[i * st] = ct_f32_to_bf16(src[i]);
}
static void bin_bf16(void *vc, int64_t n, char **p, const int64_t *s) {
    float a[LP_CHUNK], b[LP_CHUNK], o[LP_CHUNK];
    const int64_t one[3] = {1, 1, 1};
    for (int64_t i = 0; i < n; i += LP_CHUNK) {
        int64_t m = n - i < LP_CHUNK ? n - i : LP_CHUNK;
        widen(a, p[1] + 2 * i * s[1], m, s[1]);
        widen(b, p[2] + 2 * i * s[2], m, s[2]);
        char *q[3] = {(char *)o, (char *)a, (char *)b};
        bin_f32(vc, m, q, one);
        narrow(p[0] + 2 * i * s[0], o, m, s[0]);
    }
}

int cpu_binary_full(ct_binop op, ct_tensor *out, const ct_tensor *a, const ct_tensor *b, double alpha) {
    if ((unsigned)op >= CT_BIN_COUNT) return ct_error("binary op %d: no such op on the CPU", (int)op);
    const ct_tensor *ops[3] = {out, a, b};
    ct_iter it;
    ct_iter_init(&it, 3, ops);
    ew_ctx c = {op, alpha, 0, 0, 0};
    const int to_bool = ct_binop_result_bool(op);
    if (to_bool && out->dtype != CT_BOOL)
        return ct_error("%s: the output must be bool, got %s", ct_binop_name(op),
                        ct_dtype_name(out->dtype));
    switch (to_bool ? a->dtype : out->dtype) {
    case CT_FLOAT32: ct_iter_run(&it, to_bool ? cmp_f32 : bin_f32, &c); return 0;
    case CT_BFLOAT16:
        if (to_bool) break;
        ct_iter_run(&it, bin_bf16, &c);
        return 0;
    case CT_FLOAT64: ct_iter_run(&it, to_bool ? cmp_f64 : bin_f64, &c); return 0;
    case CT_INT64: ct_iter_run(&it, to_bool ? cmp_i64 : bin_i64, &c); return 0;
    case CT_BOOL:
        if (to_bool) {
            ct_iter_run(&it, cmp_bool, &c);
            return 0;
        }
        /* fallthrough */
    default: break;
    }
    return ct_error("%s: dtype %s not supported on the CPU", ct_binop_name(op),
                    ct_dtype_name(to_bool ? a->dtype : out->dtype));
}

/* ------------------------------------------------------------------ unary */
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

#define UN_LOOP(T, FWD)                                                                       \
    do {                                                                                      \
        if (so == 1 && sa == 1) {                                                             \
            CT_IVDEP for (int64_t i = 0; i < n; i++) {                                        \
                T x = a[i], r;                                                                \
                FWD;                                                                          \
                o[i] = r;                                                                     \
            }                                                                                 \
        } else {                                                                              \
            CT_IVDEP for (int64_t i = 0; i < n; i++) {                                        \
                T x = a[i * sa], r;                                                           \
                FWD;                                                                          \
                o[i * so] = r;                                                                \
            }                                                                                 \
        }                                                                                     \
    } while (0)

/* The forward loops: one per row of CT_UNARY_OPS for the floating types, one per row whose
 * dtype rule is ANY for int64 (the same formula text). */
#define UN_CASE(ID, name, node, dtypes, saves, api, FWD, ...)                                 \
    case CT_UN_##ID: UN_LOOP(T, FWD); break;
#define UN_CASE_INT(ID, name, node, dtypes, saves, api, FWD, ...)                             \
    CT_IF_##dtypes##_INT(case CT_UN_##ID : UN_LOOP(T, FWD); break;)

#define UN_ROW(TYPE, NAME, CASE)                                                                 \
    CT_MULTIVERSION static void NAME(void *vc, int64_t n, char **p, const int64_t *s) { \
        typedef TYPE T; /* the formulas of op_tables.h are written over T */       \
        const ew_ctx *c = vc;                                                                 \
        T *o = (T *)p[0];                                                                     \
        const T *a = (const T *)p[1];                                                         \
        const T p1 = (T)c->p1, p2 = (T)c->p2;                                                 \
        const int64_t so = s[0], sa = s[1];                                                   \
        (void)p1;                                                                             \
        (void)p2;                                                                             \
        switch ((ct_unop)c->op) {                                                             \
            CT_UNARY_OPS(CASE)                                                                \
        default: break; /* int64 of a FLOAT row: refused by cpu_unary before */               \
        }                                                                                     \
    }
UN_ROW(float, un_f32, UN_CASE)
UN_ROW(double, un_f64, UN_CASE)
UN_ROW(int64_t, un_i64, UN_CASE_INT)

/* GELU in float32: the row's formula calls libm's erff, which does not vectorise; this loop
 * computes the same function with ct_vgelu_cdf (relative error ~1e-7, like PyTorch's own
 * vectorised GELU). float64 keeps the row's formula. */
CT_MULTIVERSION static void gelu_f32(void *vc, int64_t n, char **p, const int64_t *s) {
    (void)vc;
    float *o = (float *)p[0];
    const float *a = (const float *)p[1];
    const int64_t so = s[0], sa = s[1];
    if (so == 1 && sa == 1) {
        CT_IVDEP for (int64_t i = 0; i < n; i++) o[i] = a[i] * ct_vgelu_cdf(a[i]);
    } else {
        CT_IVDEP for (int64_t i = 0; i < n; i++) o[i * so] = a[i * sa] * ct_vgelu_cdf(a[i * sa]);
    }
}

#ifdef CT_VEXP_X86
/* GELU's kernels spend ~2 cycles per element computing; on their own the hardware
 * prefetchers leave them waiting for memory on top of that (3-3.7 cycles per element over
 * a tensor larger than the caches, 2.05 in L1; Sapphire Rapids VM). Asking for the line
 * GELU_PF floats ahead brings them to ~2.1. Prefetches do not fault: past the end is
 * harmless. */
#define GELU_PF 1024
#define GELU_PREFETCH(p) _mm_prefetch((const char *)((uintptr_t)(p) + 4 * GELU_PF), _MM_HINT_T0)

/* GELU float32 with AVX2+FMA intrinsics (cpu_vexp.h's ct_gelu8_avx2 and ct_gelu_grad8_avx2:
 * gelu_f32's formulas, 8 at a time with FMA; the target_clones of gelu_f32 get no FMA).
 * Taken when ct_cpu_isa_level() >= CT_ISA_AVX2, 16 wide at CT_ISA_AVX512 (the same values);
 * CTORCH_CPU_ISA=none keeps gelu_f32. Every element goes through the same vector code, so
 * a value does not depend on where it sits: the tail with masked loads and stores, strided
 * runs through a small contiguous buffer. */
CT_AVX2_FMA static void gelu_f32_avx2_run(float *o, const float *a, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        GELU_PREFETCH(a + i);
        _mm256_storeu_ps(o + i, ct_gelu8_avx2(_mm256_loadu_ps(a + i)));
    }
    if (i < n) {
        const __m256i m = ct_lanes8_avx2((int)(n - i));
        _mm256_maskstore_ps(o + i, m, ct_gelu8_avx2(_mm256_maskload_ps(a + i, m)));
    }
}

/* The same 16 at a time (cpu_vexp.h's ct_gelu16_avx512: the AVX2 kernel's values). */
CT_AVX512_FMA static void gelu_f32_avx512_run(float *o, const float *a, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        GELU_PREFETCH(a + i);
        const __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(o + i, m, ct_gelu16_avx512(_mm512_maskz_loadu_ps(m, a + i)));
    }
}

/* GELU's kernel level: 2 AVX-512 (16 wide), 1 AVX2+FMA (8 wide), 0 the portable loop. */
static int gelu_level(void) {
    ct_isa_level l = ct_cpu_isa_level();
    return l >= CT_ISA_AVX512 ? 2 : l >= CT_ISA_AVX2 ? 1 : 0;
}

static void gelu_f32_simd(int level, int64_t n, char **p, const int64_t *s) {
    void (*run)(float *, const float *, int64_t) =
        level == 2 ? gelu_f32_avx512_run : gelu_f32_avx2_run;
    float *o = (float *)p[0];
    const float *a = (const float *)p[1];
    const int64_t so = s[0], sa = s[1];
    if (so == 1 && sa == 1) {
        run(o, a, n);
        return;
    }
    float buf[256];
    for (int64_t i = 0; i < n; i += 256) {
        const int64_t m = n - i < 256 ? n - i : 256;
        for (int64_t j = 0; j < m; j++) buf[j] = a[(i + j) * sa];
        run(buf, buf, m);
        for (int64_t j = 0; j < m; j++) o[(i + j) * so] = buf[j];
    }
}

#endif

/* The float32 rows: the table's loops, but for the rows with a vectorised kernel of their own. */
static void un_f32_row(void *vc, int64_t n, char **p, const int64_t *s) {
    const ew_ctx *c = vc;
    if (c->op != CT_UN_GELU) un_f32(vc, n, p, s);
#ifdef CT_VEXP_X86
    else if (c->gelu_isa) gelu_f32_simd(c->gelu_isa, n, p, s);
#endif
    else gelu_f32(vc, n, p, s);
}

static void un_bf16(void *vc, int64_t n, char **p, const int64_t *s) {
    float a[LP_CHUNK], o[LP_CHUNK];
    const int64_t one[2] = {1, 1};
    for (int64_t i = 0; i < n; i += LP_CHUNK) {
        int64_t m = n - i < LP_CHUNK ? n - i : LP_CHUNK;
        widen(a, p[1] + 2 * i * s[1], m, s[1]);
        char *q[2] = {(char *)o, (char *)a};
        un_f32_row(vc, m, q, one);
        narrow(p[0] + 2 * i * s[0], o, m, s[0]);
    }
}

int cpu_unary_full(ct_unop op, ct_tensor *out, const ct_tensor *a, double p1, double p2) {
    if ((unsigned)op >= CT_UN_COUNT) return ct_error("unary op %d: no such op on the CPU", (int)op);
    const ct_tensor *ops[2] = {out, a};
    ct_iter it;
    ct_iter_init(&it, 2, ops);
    ew_ctx c = {op, 1, p1, p2, 0};
#ifdef CT_VEXP_X86
    if (op == CT_UN_GELU) c.gelu_isa = gelu_level();
#endif
    switch (out->dtype) {
    case CT_FLOAT32: ct_iter_run(&it, un_f32_row, &c); return 0;
    case CT_BFLOAT16: ct_iter_run(&it, un_bf16, &c); return 0;
    case CT_FLOAT64: ct_iter_run(&it, un_f64, &c); return 0;
    case CT_INT64:
        if (ct_unop_allows_int64(op)) {
            ct_iter_run(&it, un_i64, &c);
            return 0;
        }
        /* fallthrough */
    default:
        return ct_error("%s: dtype %s not supported on the CPU; convert to float32 with "
                        "ct_to_dtype",
                        ct_unop_name(op), ct_dtype_name(out->dtype));
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

/* As for the forward: one branch-free loop per row. gx = gy * d with d the derivative, as
 * the row's formula gives it (so NaN and inf propagate alike). x and y are read only by
 * the rows that save them. */
#define UD_CASE(ID, name, node, dtypes, saves, api, FWD, DER, ...)                            \
    case CT_UN_##ID:                                                                          \
        for (int64_t i = b; i < e; i++) {                                                     \
            const T x = CT_SAVES_##saves & CT_SAVES_IN ? xs[i] : (T)0;                         \
            const T y = CT_SAVES_##saves & CT_SAVES_OUT ? ys[i] : (T)0;                         \
            T d;                                                                              \
            (void)x;                                                                          \
            (void)y;                                                                          \
            DER;                                                                              \
            gx[i] = gy[i] * d;                                                                \
        }                                                                                     \
        break;

#define UD_ROW(TYPE, NAME)                                                                       \
    CT_MULTIVERSION static void NAME(void *vc, int64_t b, int64_t e) { \
        typedef TYPE T; /* the formulas of op_tables.h are written over T */                        \
        const ud_ctx *c = vc;                                                                 \
        T *gx = (T *)c->gx;                                                                   \
        const T *gy = (const T *)c->gy, *xs = (const T *)c->x, *ys = (const T *)c->y;         \
        const T p1 = (T)c->p1, p2 = (T)c->p2;                                                 \
        (void)p1;                                                                             \
        (void)p2;                                                                             \
        switch (c->op) {                                                                      \
            CT_UNARY_OPS(UD_CASE)                                                             \
        case CT_UN_COUNT: break;                                                              \
        }                                                                                     \
    }
UD_ROW(float, ud_f32)
UD_ROW(double, ud_f64)

/* GELU's float32 derivative with ct_vgelu_grad (see gelu_f32). */
CT_MULTIVERSION static void gelu_bwd_f32(void *vc, int64_t b, int64_t e) {
    const ud_ctx *c = vc;
    float *gx = (float *)c->gx;
    const float *gy = (const float *)c->gy, *xs = (const float *)c->x;
    CT_IVDEP for (int64_t i = b; i < e; i++) gx[i] = gy[i] * ct_vgelu_grad(xs[i]);
}

#ifdef CT_VEXP_X86
/* The derivative with AVX2+FMA (see gelu_f32_avx2_run). */
CT_AVX2_FMA static void gelu_bwd_f32_avx2(void *vc, int64_t b, int64_t e) {
    const ud_ctx *c = vc;
    float *gx = (float *)c->gx;
    const float *gy = (const float *)c->gy, *xs = (const float *)c->x;
    int64_t i = b;
    for (; i + 8 <= e; i += 8) {
        GELU_PREFETCH(xs + i);
        GELU_PREFETCH(gy + i);
        _mm256_storeu_ps(gx + i, _mm256_mul_ps(_mm256_loadu_ps(gy + i),
                                               ct_gelu_grad8_avx2(_mm256_loadu_ps(xs + i))));
    }
    if (i < e) {
        const __m256i m = ct_lanes8_avx2((int)(e - i));
        const __m256 d = ct_gelu_grad8_avx2(_mm256_maskload_ps(xs + i, m));
        _mm256_maskstore_ps(gx + i, m, _mm256_mul_ps(_mm256_maskload_ps(gy + i, m), d));
    }
}

/* The derivative 16 at a time (the AVX2 kernel's values). */
CT_AVX512_FMA static void gelu_bwd_f32_avx512(void *vc, int64_t b, int64_t e) {
    const ud_ctx *c = vc;
    float *gx = (float *)c->gx;
    const float *gy = (const float *)c->gy, *xs = (const float *)c->x;
    for (int64_t i = b; i < e; i += 16) {
        GELU_PREFETCH(xs + i);
        GELU_PREFETCH(gy + i);
        const __mmask16 m = e - i >= 16 ? 0xffff : (__mmask16)((1u << (e - i)) - 1);
        const __m512 d = ct_gelu_grad16_avx512(_mm512_maskz_loadu_ps(m, xs + i));
        _mm512_mask_storeu_ps(gx + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, gy + i), d));
    }
}
#endif

/* bfloat16 operands (all of them): chunks widened on the stack, the float32 row, gx
 * rounded back; the values of widening whole tensors. */
typedef struct {
    const ud_ctx *c;
    void (*f32)(void *, int64_t, int64_t);
} ud_bf16_ctx;

static void ud_bf16(void *vc, int64_t b, int64_t e) {
    const ud_bf16_ctx *u = vc;
    const ud_ctx *c = u->c;
    float gx[LP_CHUNK], gy[LP_CHUNK], x[LP_CHUNK], y[LP_CHUNK];
    for (int64_t i = b; i < e; i += LP_CHUNK) {
        int64_t m = e - i < LP_CHUNK ? e - i : LP_CHUNK;
        widen(gy, (const char *)c->gy + 2 * i, m, 1);
        if (c->x) widen(x, (const char *)c->x + 2 * i, m, 1);
        if (c->y) widen(y, (const char *)c->y + 2 * i, m, 1);
        ud_ctx l = {c->op, c->p1, c->p2, m, gx, gy, c->x ? x : NULL, c->y ? y : NULL};
        u->f32(&l, 0, m);
        narrow((char *)c->gx + 2 * i, gx, m, 1);
    }
}

int cpu_unary_backward_full(ct_unop op, ct_tensor *gx, const ct_tensor *gy, const ct_tensor *x,
                       const ct_tensor *y, double p1, double p2) {
    if ((unsigned)op >= CT_UN_COUNT)
        return ct_error("unary op %d backward: no such op on the CPU", (int)op);
    ud_ctx c = {op, p1, p2, ct_numel(gx), ct_ptr(gx), ct_ptr(gy), x ? ct_ptr(x) : NULL,
                y ? ct_ptr(y) : NULL};
    if (gx->dtype == CT_FLOAT32 || gx->dtype == CT_BFLOAT16) {
        void (*f)(void *, int64_t, int64_t) = ud_f32;
        if (op == CT_UN_GELU) {
            f = gelu_bwd_f32;
#ifdef CT_VEXP_X86
            int level = gelu_level();
            if (level) f = level == 2 ? gelu_bwd_f32_avx512 : gelu_bwd_f32_avx2;
#endif
        }
        if (gx->dtype == CT_BFLOAT16) { /* cpu_unary_backward checked: all bf16 */
            ud_bf16_ctx u = {&c, f};
            ct_parallel_for(c.n, 16384, ud_bf16, &u);
        } else {
            ct_parallel_for(c.n, 16384, f, &c);
        }
    }
    else if (gx->dtype == CT_FLOAT64) ct_parallel_for(c.n, 16384, ud_f64, &c);
    else return ct_error("%s backward: dtype %s has no gradient", ct_unop_name(op),
                         ct_dtype_name(gx->dtype));
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
    case CT_BOOL: return *(const uint8_t *)p != 0;
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
    case CT_BOOL: *(uint8_t *)p = v != 0; break; /* NaN is true, as bool(nan) in PyTorch */
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
    /* the 16-bit floats to and from float32: the conversions of half.h, one loop each */
    if (s[0] == 1 && s[1] == 1 && c->sd == CT_BFLOAT16 && c->dd == CT_FLOAT32) {
        cvt_bf16_f32((float *)p[0], (const uint16_t *)p[1], n);
        return;
    }
    if (s[0] == 1 && s[1] == 1 && c->sd == CT_FLOAT32 && c->dd == CT_BFLOAT16) {
        cvt_f32_bf16((uint16_t *)p[0], (const float *)p[1], n);
        return;
    }
    if (c->dd == CT_FLOAT32 && (c->sd == CT_BFLOAT16 || c->sd == CT_FLOAT16)) {
        float *o = (float *)p[0];
        const uint16_t *h = (const uint16_t *)p[1];
        if (c->sd == CT_BFLOAT16)
            for (int64_t i = 0; i < n; i++) o[i * s[0]] = ct_bf16_to_f32(h[i * s[1]]);
        else
            for (int64_t i = 0; i < n; i++) o[i * s[0]] = ct_f16_to_f32(h[i * s[1]]);
        return;
    }
    if (c->sd == CT_FLOAT32 && (c->dd == CT_BFLOAT16 || c->dd == CT_FLOAT16)) {
        uint16_t *o = (uint16_t *)p[0];
        const float *f = (const float *)p[1];
        if (c->dd == CT_BFLOAT16)
            for (int64_t i = 0; i < n; i++) o[i * s[0]] = ct_f32_to_bf16(f[i * s[1]]);
        else
            for (int64_t i = 0; i < n; i++) o[i * s[0]] = ct_f32_to_f16(f[i * s[1]]);
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

/* ---------------------------------------------------------------- dropout */
typedef struct {
    int64_t n;
    double p;
    void *y, *mask;
    const void *x, *u;
} do_ctx;

/* mask = (u > p) * (T)(1 / (1 - p)); y = x * mask: the values of the composition
 * mul(x, mul_scalar(clamp(sign(u - p), 0, 1), 1 / (1 - p))). */
#define DO_ROW(T, NAME)                                                                       \
    CT_MULTIVERSION static void NAME(void *vc, int64_t b, int64_t e) {                        \
        const do_ctx *c = vc;                                                                 \
        T *y = (T *)c->y, *m = (T *)c->mask;                                                  \
        const T *x = (const T *)c->x, *u = (const T *)c->u;                                   \
        const T p = (T)c->p, scale = (T)(1.0 / (1.0 - c->p));                                 \
        for (int64_t i = b; i < e; i++) {                                                     \
            T mi = u[i] - p > 0 ? scale : (T)0;                                               \
            m[i] = mi;                                                                        \
            y[i] = x[i] * mi;                                                                 \
        }                                                                                     \
    }
DO_ROW(float, do_f32)
DO_ROW(double, do_f64)

int cpu_dropout_forward_full(ct_tensor *y, ct_tensor *mask, const ct_tensor *x, const ct_tensor *u,
                        double p) {
    do_ctx c = {ct_numel(y), p, ct_ptr(y), ct_ptr(mask), ct_ptr(x), ct_ptr(u)};
    if (y->dtype == CT_FLOAT32) ct_parallel_for(c.n, 16384, do_f32, &c);
    else if (y->dtype == CT_FLOAT64) ct_parallel_for(c.n, 16384, do_f64, &c);
    else return ct_error("dropout: dtype %s not supported on the CPU", ct_dtype_name(y->dtype));
    return 0;
}
