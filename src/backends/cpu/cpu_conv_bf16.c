/* bfloat16 convolutions, float32 accumulation, one rounding at the output, as PyTorch's
 * CPU bf16 convolutions.
 *
 * With AMX (ct_conv_amx_usable: CTORCH_CPU_ISA not below amx, CTORCH_CONV_AMX not 0),
 * stride-1, dilation-1 convolutions other than unpadded 1x1 ones run as implicit GEMMs on
 * AMX tiles (cpu_conv_amx.c): the forward when C >= 16, the input gradient (that forward
 * on gy with the weight flipped) when O >= 16 and the padding is at most K - 1, the weight
 * gradient when C >= 16. Everything else runs on the bf16 GEMM (cpu_gemm_bf16.c: AMX tiles
 * or AVX512_BF16) around an im2col:
 *
 * Per image: forward  y[n] (O x P)      = W (O x CKK) @ col(x[n]) (CKK x P) + bias
 *            input    col(gx[n])         = W^T (CKK x O) @ gy[n] (O x P), then col2im
 *            weight   gW (O x CKK)      += gy[n] (O x P) @ col(x[n])^T (P x CKK)
 * with P = Ho * Wo and col the im2col matrix (a 1x1 stride-1 unpadded convolution uses
 * the image itself). Weights are packed once per call. Groups other than 1, other dtypes,
 * or a CPU without bf16 arithmetic: 1 (the caller widens to float32). */
#include "core/backend.h"
#include "core/error.h"
#include "core/half.h"
#include "core/parallel.h"
#include "cpu_alloc.h"
#include "cpu_conv_amx.h"
#include "cpu_gemm_bf16.h"
#include "cpu_kernels.h"
#include "simd512.h"

#include <string.h>
#include <stdlib.h>

/* The bf16 GEMM needs AVX512_BF16 or AMX, so every CPU that reaches these kernels has
 * AVX512BW: the data movement around the GEMM (im2col, pair interleave, transposes) is
 * written for it. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_V512 1
#define V512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#else
#define V512
#endif

typedef struct {
    int64_t N, C, H, W, O, KH, KW, Ho, Wo;
    int sh, sw, ph, pw, dh, dw;
} geom;

/* With AMX, bf16 convolutions run here (tiles); with AVX512_BF16 only, the widened float32
 * kernels (Winograd, direct) measured faster than im2col into the vdpbf16ps GEMM (on a
 * Sapphire Rapids restricted by CTORCH_CPU_ISA=avx512: simple_cnn training 0.83x of float32
 * widened against 0.45x, resnet18 0.99x against 0.54x), so there the caller widens, unless
 * CTORCH_BF16_CONV=gemm asks for this path (tests, and CPUs where it may win). */
static int gemm_forced(void) {
    const char *e = getenv("CTORCH_BF16_CONV");
    return e && !strcmp(e, "gemm");
}

static int usable(const ct_tensor *x, const ct_tensor *w, const ct_conv_params *p) {
    return x->dtype == CT_BFLOAT16 && w->dtype == CT_BFLOAT16 && x->ndim == 4 && w->ndim == 4 &&
           p->groups == 1 && ct_is_contiguous(x) && ct_is_contiguous(w) &&
           ct_gemm_bf16_available() && (ct_gemm_bf16_kind() == CT_BF16_AMX || gemm_forced());
}

static geom geom_of(const ct_tensor *x, const ct_tensor *w, const ct_tensor *y,
                    const ct_conv_params *p) {
    return (geom){x->shape[0], x->shape[1], x->shape[2], x->shape[3], w->shape[0], w->shape[2],
                  w->shape[3], y->shape[2], y->shape[3], p->stride[0], p->stride[1],
                  p->padding[0], p->padding[1], p->dilation[0], p->dilation[1]};
}

static int is_pointwise(const geom *g) {
    return g->KH == 1 && g->KW == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0;
}

/* The implicit-GEMM AMX kernels (cpu_conv_amx.c) take stride-1, dilation-1 convolutions
 * other than the unpadded 1x1 ones (those multiply the image itself, no im2col to save).
 * With `transposed`, the geometry of the convolution whose forward is this one's input
 * gradient (gy -> gx: channels O -> C, padding K - 1 - p); 0 where it does not apply. */
static int amx_geom(const geom *g, int transposed, ct_conv_amx_geom *a) {
    if (g->sh != 1 || g->sw != 1 || g->dh != 1 || g->dw != 1 || is_pointwise(g)) return 0;
    if (!transposed)
        *a = (ct_conv_amx_geom){g->N, g->C, g->H, g->W, g->O, g->KH, g->KW, g->Ho, g->Wo,
                                g->ph, g->pw};
    else {
        if (g->ph > g->KH - 1 || g->pw > g->KW - 1) return 0;
        *a = (ct_conv_amx_geom){g->N, g->O, g->Ho, g->Wo, g->C, g->KH, g->KW, g->H, g->W,
                                g->KH - 1 - g->ph, g->KW - 1 - g->pw};
    }
    return ct_conv_amx_usable(a);
}

/* ---------------------------------------------------------------- im2col */

/* Row r (channel, ky, kx) of the im2col matrix of image x into dst[Ho*Wo]. */
V512 static void im2col_row(const geom *g, const uint16_t *x, int64_t r, uint16_t *dst) {
    int64_t ch = r / (g->KH * g->KW), ky = r / g->KW % g->KH, kx = r % g->KW;
    const uint16_t *src = x + ch * g->H * g->W;
#ifdef HAVE_V512
    if (g->sw == 1 && g->Wo <= 32) { /* one masked load per output row, the masks per call */
        int64_t ix0 = kx * g->dw - g->pw;
        int64_t lo = ix0 < 0 ? -ix0 : 0, hi = g->W - ix0;
        if (hi > g->Wo) hi = g->Wo;
        if (lo > g->Wo) lo = g->Wo;
        if (hi < lo) hi = lo;
        const __mmask32 valid = (__mmask32)(((1ull << hi) - 1) & ~((1ull << lo) - 1));
        const __mmask32 all = (__mmask32)((1ull << g->Wo) - 1);
        for (int64_t oy = 0; oy < g->Ho; oy++) {
            int64_t iy = oy * g->sh - g->ph + ky * g->dh;
            __mmask32 k = iy >= 0 && iy < g->H ? valid : 0;
            __m512i v = _mm512_maskz_loadu_epi16(k, (const char *)(src + iy * g->W) + 2 * ix0);
            _mm512_mask_storeu_epi16(dst + oy * g->Wo, all, v);
        }
        return;
    }
#endif
    for (int64_t oy = 0; oy < g->Ho; oy++) {
        int64_t iy = oy * g->sh - g->ph + ky * g->dh;
        uint16_t *d = dst + oy * g->Wo;
        if (iy < 0 || iy >= g->H) {
            memset(d, 0, sizeof(uint16_t) * (size_t)g->Wo);
            continue;
        }
        const uint16_t *s = src + iy * g->W;
        int64_t ix0 = kx * g->dw - g->pw;
        if (g->sw == 1) {
            /* a contiguous run with zeros at both ends: input columns [lo, hi) of the output */
            int64_t lo = ix0 < 0 ? -ix0 : 0, hi = g->W - ix0;
            if (hi > g->Wo) hi = g->Wo;
            if (lo > g->Wo) lo = g->Wo;
            if (hi < lo) hi = lo;
#ifdef HAVE_V512
            /* 32 outputs per masked load: lanes outside [lo, hi) read nothing, give 0 */
            for (int64_t o0 = 0; o0 < g->Wo; o0 += 32) {
                int64_t n = g->Wo - o0 < 32 ? g->Wo - o0 : 32;
                int64_t a = lo - o0 < 0 ? 0 : lo - o0 > 32 ? 32 : lo - o0;
                int64_t b = hi - o0 < 0 ? 0 : hi - o0 > 32 ? 32 : hi - o0;
                uint64_t valid = ((1ull << b) - 1) & ~((1ull << a) - 1);
                __m512i v = _mm512_maskz_loadu_epi16((__mmask32)valid,
                                                     (const char *)s + 2 * (ix0 + o0));
                _mm512_mask_storeu_epi16(d + o0, (__mmask32)((1ull << n) - 1), v);
            }
#else
            for (int64_t ox = 0; ox < lo; ox++) d[ox] = 0;
            for (int64_t ox = lo; ox < hi; ox++) d[ox] = s[ix0 + ox];
            for (int64_t ox = hi; ox < g->Wo; ox++) d[ox] = 0;
#endif
            continue;
        }
        for (int64_t ox = 0; ox < g->Wo; ox++) {
            int64_t ix = ix0 + ox * g->sw;
            d[ox] = ix >= 0 && ix < g->W ? s[ix] : 0;
        }
    }
}

/* d[0..31] = pairs (r0[c], r1[c]) for c < m, zeros past m. */
V512 static inline void interleave_panel(uint32_t *d, const uint16_t *r0, const uint16_t *r1,
                                         int64_t m) {
#ifdef HAVE_V512
    const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9,
                                        40, 8, 39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33,
                                        1, 32, 0);
    const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
    __mmask32 k = m >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1ull << m) - 1);
    __m512i a = _mm512_maskz_loadu_epi16(k, r0), b = _mm512_maskz_loadu_epi16(k, r1);
    _mm512_storeu_si512(d, _mm512_permutex2var_epi16(a, lo, b));
    _mm512_storeu_si512(d + 16, _mm512_permutex2var_epi16(a, hi, b));
#else
    for (int64_t c = 0; c < m; c++) d[c] = (uint32_t)r0[c] | (uint32_t)r1[c] << 16;
    for (int64_t c = m; c < 32; c++) d[c] = 0;
#endif
}

/* The im2col matrix (CKK x P) of image x straight into the GEMM's packed B (pairs of rows,
 * panels of NR columns; K2 pair rows, zeros past CKK), two rows at a time through row
 * buffers r0, r1 [P]: the full matrix is never written. */
#define NR CT_BF16_NR
static void im2col_packed(const geom *g, const uint16_t *x, int64_t K2, uint32_t *bp,
                          uint16_t *r0, uint16_t *r1) {
    const int64_t CKK = g->C * g->KH * g->KW, P = g->Ho * g->Wo;
    const int64_t nblocks = (P + NR - 1) / NR;
    for (int64_t k = 0; k < K2; k++) {
        if (2 * k < CKK) im2col_row(g, x, 2 * k, r0);
        else memset(r0, 0, sizeof(uint16_t) * (size_t)P);
        if (2 * k + 1 < CKK) im2col_row(g, x, 2 * k + 1, r1);
        else memset(r1, 0, sizeof(uint16_t) * (size_t)P);
        for (int64_t nb = 0; nb < nblocks; nb++) {
            int64_t j0 = nb * NR;
            interleave_panel(bp + (nb * K2 + k) * NR, r0 + j0, r1 + j0, P - j0 < NR ? P - j0 : NR);
        }
    }
}

/* The transposed im2col matrix (P x CKK: pairs of adjacent pixels of one row r) into the
 * packed B of the weight gradient (K2 pair rows, this image's from pair row k_off on;
 * panels of NR rows r). The caller zeroes bp first (padding). Sixteen im2col rows at a
 * time go through rows [16][P rounded up to 32] and are transposed in 16 x 16 blocks of
 * pixel pairs. */
static int64_t rows_stride(int64_t P) { return (P + 31) / 32 * 32; }

V512 static void im2col_t_packed(const geom *g, const uint16_t *x, int64_t K2, int64_t k_off,
                                 uint32_t *bp, uint16_t *rows) {
    const int64_t CKK = g->C * g->KH * g->KW, P = g->Ho * g->Wo, Pr = rows_stride(P);
    const int64_t J = (P + 1) / 2; /* pixel pairs; an odd P pairs its last pixel with 0 */
    for (int64_t r0 = 0; r0 < CKK; r0 += 16) {
        int64_t nr = CKK - r0 < 16 ? CKK - r0 : 16;
        for (int64_t i = 0; i < 16; i++) {
            uint16_t *row = rows + i * Pr;
            if (i < nr) im2col_row(g, x, r0 + i, row);
            else memset(row, 0, sizeof(uint16_t) * (size_t)P);
            memset(row + P, 0, sizeof(uint16_t) * (size_t)(Pr - P));
        }
        uint32_t *d = bp + (r0 / NR) * K2 * NR + k_off * NR + r0 % NR;
#ifdef HAVE_V512
        for (int64_t j0 = 0; j0 < J; j0 += 16) {
            __m512i v[16];
            for (int i = 0; i < 16; i++) v[i] = _mm512_loadu_si512(rows + i * Pr + 2 * j0);
            ct_transpose16(v);
            int64_t nt = J - j0 < 16 ? J - j0 : 16;
            for (int64_t t = 0; t < nt; t++) _mm512_storeu_si512(d + (j0 + t) * NR, v[t]);
        }
#else
        for (int64_t i = 0; i < nr; i++)
            for (int64_t j = 0; j < J; j++)
                d[j * NR + i] = (uint32_t)rows[i * Pr + 2 * j] | (uint32_t)rows[i * Pr + 2 * j + 1] << 16;
#endif
    }
}

/* gx image (float32 [C, H, W], zeroed) += col2im(gcol [C*KH*KW, Ho*Wo]); parallel over
 * channels, so that no two threads add into the same element. */
typedef struct {
    const geom *g;
    const float *gcol;
    float *gx;
} c2i_ctx;

static void col2im_channels(void *vc, int64_t begin, int64_t end) {
    const c2i_ctx *c = vc;
    const geom *g = c->g;
    const int64_t P = g->Ho * g->Wo;
    for (int64_t ch = begin; ch < end; ch++)
        for (int64_t ky = 0; ky < g->KH; ky++)
            for (int64_t kx = 0; kx < g->KW; kx++) {
                const float *src = c->gcol + ((ch * g->KH + ky) * g->KW + kx) * P;
                float *dst = c->gx + ch * g->H * g->W;
                for (int64_t oy = 0; oy < g->Ho; oy++) {
                    int64_t iy = oy * g->sh - g->ph + ky * g->dh;
                    if (iy < 0 || iy >= g->H) continue;
                    float *d = dst + iy * g->W;
                    const float *s = src + oy * g->Wo;
                    int64_t ix0 = kx * g->dw - g->pw;
                    if (g->sw == 1) { /* the in-range outputs form one run */
                        int64_t lo = ix0 < 0 ? -ix0 : 0, hi = g->W - ix0;
                        if (hi > g->Wo) hi = g->Wo;
                        for (int64_t ox = lo; ox < hi; ox++) d[ix0 + ox] += s[ox];
                        continue;
                    }
                    for (int64_t ox = 0; ox < g->Wo; ox++) {
                        int64_t ix = ix0 + ox * g->sw;
                        if (ix >= 0 && ix < g->W) d[ix] += s[ox];
                    }
                }
            }
}

/* ---------------------------------------------------------------- helpers */
/* Sum of n bf16 values (float32 lanes; the caller adds the rows in double). */
V512 static double sum_bf16(const uint16_t *q, int64_t n) {
    float tail = 0;
    int64_t i = 0;
#ifdef HAVE_V512
    __m512 acc = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16)
        acc = _mm512_add_ps(acc, _mm512_castsi512_ps(_mm512_slli_epi32(
                                     _mm512_cvtepu16_epi32(_mm256_loadu_si256((const void *)(q + i))), 16)));
    tail = _mm512_reduce_add_ps(acc);
#endif
    for (; i < n; i++) tail += ct_bf16_to_f32(q[i]);
    return tail;
}

static void round_row(uint16_t *dst, const float *src, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = ct_f32_to_bf16(src[i]);
}

/* The bias as float32 (bf16 or float32 tensor), into buf[O]. */
static void bias_f32(const ct_tensor *bias, float *buf, int64_t O) {
    for (int64_t o = 0; o < O; o++)
        buf[o] = bias->dtype == CT_BFLOAT16 ? ct_bf16_to_f32(((const uint16_t *)ct_ptr(bias))[o])
                                            : ((const float *)ct_ptr(bias))[o];
}

/* Work is split over the images: each thread runs whole images with its own scratch (the
 * GEMMs and im2col inside then run inline), which keeps small convolutions from paying a
 * thread hand-off per image. Chunk c of nchunks gets images [c*N/nchunks, (c+1)*N/nchunks). */
static int64_t chunks_for(int64_t N) {
    int64_t t = ct_plan_threads();
    return N < t ? N : t;
}

typedef struct {
    const geom *g;
    const ct_bf16_pack *pa;
    const uint16_t *x, *gy;
    uint16_t *yb, *gxb;
    float *y32, *gw_parts;
    const float *bias;
    int64_t nchunks;
    int rc;
} job;

static void set_rc(job *j, int rc) {
    if (rc) __atomic_store_n(&j->rc, rc, __ATOMIC_RELAXED);
}

/* ---------------------------------------------------------------- forward */
static void fwd_chunks(void *vc, int64_t begin, int64_t end) {
    job *j = vc;
    const geom *g = j->g;
    const int64_t P = g->Ho * g->Wo, K2 = j->pa->K2, nblocks = (P + NR - 1) / NR;
    /* several images side by side in one product when an image is whole panels, as many
     * as keep the packed columns within ~2 MiB (a core's L2) */
    int64_t cnt = P % NR ? 1 : (2 << 20) / (K2 * P * 4);
    if (cnt < 1) cnt = 1;
    uint32_t *bp = ct_cpu_alloc(sizeof(uint32_t) * (size_t)(cnt * nblocks * NR * K2));
    uint16_t *rows = ct_cpu_alloc(sizeof(uint16_t) * (size_t)(2 * P + 2));
    if (!bp || !rows) set_rc(j, -1);
    for (int64_t c = begin; c < end && bp && rows; c++) {
        int64_t n1 = (c + 1) * g->N / j->nchunks;
        for (int64_t n = c * g->N / j->nchunks; n < n1; n += cnt) {
            int64_t m = n1 - n < cnt ? n1 - n : cnt;
            for (int64_t i = 0; i < m; i++)
                im2col_packed(g, j->x + (n + i) * g->C * g->H * g->W, K2,
                              bp + i * nblocks * K2 * NR, rows, rows + P + 1);
            set_rc(j, ct_gemm_bf16_run_grouped(j->pa, m * P, bp,
                                               j->y32 ? j->y32 + n * g->O * P : NULL,
                                               j->y32 ? NULL : j->yb + n * g->O * P, P,
                                               m > 1 ? P : 0, g->O * P, 1.0f, 0.0f, j->bias));
        }
    }
    ct_cpu_free(bp);
    ct_cpu_free(rows);
}

int cpu_conv2d_bf16_forward(ct_tensor *y, float *y32, const ct_tensor *x, const ct_tensor *w,
                            const ct_tensor *bias, const ct_conv_params *p) {
    if (!usable(x, w, p) || (!y32 && (y->dtype != CT_BFLOAT16 || !ct_is_contiguous(y))) ||
        (bias && bias->dtype != CT_BFLOAT16 && bias->dtype != CT_FLOAT32))
        return 1;
    geom g = geom_of(x, w, y, p);
    const int64_t CKK = g.C * g.KH * g.KW;
    ct_conv_amx_geom ag;
    if (!y32 && amx_geom(&g, 0, &ag)) {
        float *bv = bias ? ct_cpu_alloc(sizeof(float) * (size_t)g.O) : NULL;
        if (bias && !bv) return -1;
        if (bv) bias_f32(bias, bv, g.O);
        int rc = ct_conv_amx_forward(&ag, (const uint16_t *)ct_ptr(x), (const uint16_t *)ct_ptr(w),
                                     0, bv, (uint16_t *)ct_ptr(y));
        ct_cpu_free(bv);
        return rc;
    }
    ct_bf16_pack pa;
    ct_bf16_mat W = {(const uint16_t *)ct_ptr(w), CKK, 1};
    int rc = ct_gemm_bf16_pack_a(&pa, g.O, CKK, W);
    if (rc) return rc;
    float *bv = bias ? ct_cpu_alloc(sizeof(float) * (size_t)g.O) : NULL;
    if (bv) bias_f32(bias, bv, g.O);
    job j = {.g = &g, .pa = &pa, .x = (const uint16_t *)ct_ptr(x),
             .yb = y32 ? NULL : (uint16_t *)ct_ptr(y), .y32 = y32, .bias = bv,
             .nchunks = chunks_for(g.N)};
    if (bias && !bv) j.rc = -1;
    else ct_parallel_for(j.nchunks, 1, fwd_chunks, &j);
    ct_cpu_free(bv);
    ct_gemm_bf16_pack_free(&pa);
    return j.rc ? -1 : 0;
}

/* ---------------------------------------------------------------- backward input */
static void bwd_input_chunks(void *vc, int64_t begin, int64_t end) {
    job *j = vc;
    const geom *g = j->g;
    const int64_t CKK = g->C * g->KH * g->KW, P = g->Ho * g->Wo, HW = g->H * g->W;
    const int pw = is_pointwise(g);
    float *gcol = pw ? NULL : ct_cpu_alloc(sizeof(float) * (size_t)(CKK * P));
    float *gxi = pw ? NULL : ct_cpu_alloc(sizeof(float) * (size_t)(g->C * HW));
    if (!pw && (!gcol || !gxi)) set_rc(j, -1);
    for (int64_t c = begin; c < end && !j->rc; c++)
        for (int64_t n = c * g->N / j->nchunks; n < (c + 1) * g->N / j->nchunks; n++) {
            ct_bf16_mat B = {j->gy + n * g->O * P, P, 1};
            if (pw) { /* the product is the gradient itself */
                set_rc(j, ct_gemm_bf16_run(j->pa, P, B, NULL, j->gxb + n * g->C * HW, P, 1.0f,
                                           0.0f, NULL));
                continue;
            }
            set_rc(j, ct_gemm_bf16_run(j->pa, P, B, gcol, NULL, P, 1.0f, 0.0f, NULL));
            memset(gxi, 0, sizeof(float) * (size_t)(g->C * HW));
            c2i_ctx cc = {g, gcol, gxi};
            col2im_channels(&cc, 0, g->C);
            round_row(j->gxb + n * g->C * HW, gxi, g->C * HW);
        }
    ct_cpu_free(gcol);
    ct_cpu_free(gxi);
}

int cpu_conv2d_bf16_backward_input(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *w,
                                   const ct_conv_params *p) {
    if (!usable(gx, w, p) || gy->dtype != CT_BFLOAT16 || !ct_is_contiguous(gy) ||
        !ct_is_contiguous(gx))
        return 1;
    geom g = geom_of(gx, w, gy, p);
    const int64_t CKK = g.C * g.KH * g.KW;
    ct_conv_amx_geom ag;
    if (amx_geom(&g, 1, &ag)) /* the forward on gy with the weight transposed and flipped */
        return ct_conv_amx_forward(&ag, (const uint16_t *)ct_ptr(gy), (const uint16_t *)ct_ptr(w),
                                   1, NULL, (uint16_t *)ct_ptr(gx));
    ct_bf16_pack pa;
    ct_bf16_mat Wt = {(const uint16_t *)ct_ptr(w), 1, CKK}; /* W^T: (CKK x O) */
    int rc = ct_gemm_bf16_pack_a(&pa, CKK, g.O, Wt);
    if (rc) return rc;
    job j = {.g = &g, .pa = &pa, .gy = (const uint16_t *)ct_ptr(gy),
             .gxb = (uint16_t *)ct_ptr(gx), .nchunks = chunks_for(g.N)};
    ct_parallel_for(j.nchunks, 1, bwd_input_chunks, &j);
    ct_gemm_bf16_pack_free(&pa);
    return j.rc ? -1 : 0;
}

/* ---------------------------------------------------------------- backward weight */
/* Chunk c sums its images' products into gw_parts[c]; the parts are added in chunk order
 * afterwards, so the result depends on the thread count only through that order. */
static void bwd_weight_chunks(void *vc, int64_t begin, int64_t end) {
    job *j = vc;
    const geom *g = j->g;
    const int64_t CKK = g->C * g->KH * g->KW, P = g->Ho * g->Wo;
    /* the images of a sub-batch one after another along K (an even P keeps each image's
     * pixel pairs its own): gW += [gy[n] | gy[n+1] | ...] @ [col[n]^T; col[n+1]^T; ...] */
    const int64_t CKKp = (CKK + NR - 1) / NR * NR;
    int64_t cnt = P % 2 ? 1 : (2 << 20) / (CKKp * P * 2);
    if (cnt < 1) cnt = 1;
    uint32_t *bp = NULL;
    uint16_t *row = ct_cpu_alloc(sizeof(uint16_t) * (size_t)(16 * rows_stride(P)));
    uint16_t *agy = cnt > 1 ? ct_cpu_alloc(sizeof(uint16_t) * (size_t)(g->O * cnt * P)) : NULL;
    if (!row || (cnt > 1 && !agy)) set_rc(j, -1);
    for (int64_t c = begin; c < end && !j->rc; c++) {
        float *part = j->gw_parts + c * g->O * CKK;
        int first = 1;
        int64_t n1 = (c + 1) * g->N / j->nchunks;
        for (int64_t n = c * g->N / j->nchunks; n < n1 && !j->rc; n += cnt) {
            int64_t m = n1 - n < cnt ? n1 - n : cnt;
            ct_bf16_mat A = {j->gy + n * g->O * P, P, 1}; /* gy[n]: (O x P) */
            if (m > 1) { /* gy of m images as one (O x mP) matrix */
                for (int64_t o = 0; o < g->O; o++)
                    for (int64_t i = 0; i < m; i++)
                        memcpy(agy + o * m * P + i * P, j->gy + ((n + i) * g->O + o) * P,
                               sizeof(uint16_t) * (size_t)P);
                A = (ct_bf16_mat){agy, m * P, 1};
            }
            ct_bf16_pack pa;
            if (ct_gemm_bf16_pack_a(&pa, g->O, m * P, A) != 0) {
                set_rc(j, -1);
                break;
            }
            size_t bsz = sizeof(uint32_t) * (size_t)(CKKp * pa.K2);
            if (!bp) bp = ct_cpu_alloc(sizeof(uint32_t) * (size_t)(CKKp * ((cnt * P + 31) / 32 * 16)));
            if (!bp) {
                set_rc(j, -1);
                ct_gemm_bf16_pack_free(&pa);
                break;
            }
            memset(bp, 0, bsz);
            for (int64_t i = 0; i < m; i++)
                im2col_t_packed(g, j->x + (n + i) * g->C * g->H * g->W, pa.K2, i * P / 2, bp,
                                row);
            set_rc(j, ct_gemm_bf16_run_packed(&pa, CKK, bp, part, NULL, CKK, 1.0f,
                                              first ? 0.0f : 1.0f, NULL));
            first = 0;
            ct_gemm_bf16_pack_free(&pa);
        }
        if (first) memset(part, 0, sizeof(float) * (size_t)(g->O * CKK));
    }
    ct_cpu_free(bp);
    ct_cpu_free(row);
    ct_cpu_free(agy);
}

int cpu_conv2d_bf16_backward_weight(ct_tensor *gw, ct_tensor *gb, const ct_tensor *gy,
                                    const ct_tensor *x, const ct_conv_params *p) {
    if (!usable(x, gw, p) || gy->dtype != CT_BFLOAT16 || !ct_is_contiguous(gy) ||
        gw->dtype != CT_BFLOAT16 || (gb && gb->dtype != CT_BFLOAT16))
        return 1;
    geom g = geom_of(x, gw, gy, p);
    const int64_t CKK = g.C * g.KH * g.KW, P = g.Ho * g.Wo, OK = g.O * CKK;
    job j = {.g = &g, .x = (const uint16_t *)ct_ptr(x), .gy = (const uint16_t *)ct_ptr(gy),
             .nchunks = chunks_for(g.N)};
    ct_conv_amx_geom ag;
    const int amx = amx_geom(&g, 0, &ag);
    j.gw_parts = ct_cpu_alloc(sizeof(float) * (size_t)(OK * (amx ? 1 : j.nchunks)));
    if (!j.gw_parts) return -1;
    if (amx)
        j.rc = ct_conv_amx_backward_weight(&ag, j.x, j.gy, j.gw_parts);
    else
        ct_parallel_for(j.nchunks, 1, bwd_weight_chunks, &j);
    if (!j.rc) {
        for (int64_t c = 1; c < (amx ? 1 : j.nchunks); c++)
            for (int64_t i = 0; i < OK; i++) j.gw_parts[i] += j.gw_parts[c * OK + i];
        round_row((uint16_t *)ct_ptr(gw), j.gw_parts, OK);
    }
    ct_cpu_free(j.gw_parts);
    if (!j.rc && gb) { /* gb[o] = sum of gy over N, H, W (in double) */
        const uint16_t *gyp = j.gy;
        uint16_t *gbp = (uint16_t *)ct_ptr(gb);
        for (int64_t o = 0; o < g.O; o++) {
            double sum = 0;
            for (int64_t n = 0; n < g.N; n++) sum += sum_bf16(gyp + (n * g.O + o) * P, P);
            gbp[o] = ct_f32_to_bf16((float)sum);
        }
    }
    return j.rc ? -1 : 0;
}
