/* Winograd F(2x2, 3x3) for 3x3, stride 1, padding 1, dilation 1, ungrouped float32
 * convolutions, on AVX-512 (16 tiles per vector) or AVX2 (8), whichever conv_fast.c's
 * kernels use (cf_current_isa()); conv_fast.c decides when to use it.
 *
 * Y = A^T [ (G g G^T) (.) (B^T d B) ] A per 2x2 output tile, d the 4x4 input patch:
 * 16 products per tile instead of 36 multiply-adds, i.e. 2.25x fewer. The input
 * gradient of such a convolution is one too (flipped, transposed weights), so the same
 * code serves both.
 *
 * Per block of whole tile rows (TB tiles, over images): the input transform writes
 * V[f][c][t] (f = 4*xi + nu, t the tile in the block, 16 tiles per vector along a tile
 * row), then for each f the GEMM M[f][o][t] = sum_c U[f][o][c] V[f][c][t] runs on the
 * forward micro-kernel of conv_fast.c (U packed [C][MR] per output-channel block, rows
 * of V found through the offset table), then the output transform writes y (bias and
 * ReLU included). Blocks are dealt out over the threads, each with its own V and M. */
#include "conv_fast.h"
#include "pool_fast.h"
#include "core/error.h"
#include "core/parallel.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define WT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))

static int64_t rup(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

/* lanes i with 0 <= a + i < W */
static inline __attribute__((always_inline)) WT __mmask16 range_mask(int64_t a, int64_t W) {
    int64_t lo = a < 0 ? -a : 0, hi = W - a;
    if (hi > 16) hi = 16;
    if (lo >= hi) return 0;
    return (__mmask16)(((1u << hi) - 1u) & ~((1u << lo) - 1u));
}

/* Input transform of the tiles tw in [tw0, tw0 + n) of tile row th of plane xc, into
 * V[f*fstride + i] for lane i < n. With pair != 0 (tile rows of exactly 8 tiles, so
 * W is 15 or 16), lanes 8..15 hold tile row th + 1 instead: 16 tiles per vector. */
static WT void in_tf16(const float *xc, int64_t H, int64_t W, int64_t th, int64_t tw0, int n,
                       float *V, int64_t fstride, int pair) {
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_add_epi32(ev, _mm512_set1_epi32(1));
    __m512 d[4][4];
    int64_t a = 2 * tw0 - 1, b = 2 * tw0 + 1;
    /* second segment: the same row 16 columns on, or (pair) the row two below */
    int64_t hoff = pair ? 2 * W : 16, hcol = pair ? 0 : 16;
    __mmask16 ma0 = range_mask(a, W), ma1 = range_mask(a + hcol, W);
    __mmask16 mb0 = range_mask(b, W), mb1 = range_mask(b + hcol, W);
    for (int i = 0; i < 4; i++) {
        int64_t ih = 2 * th - 1 + i, ih2 = pair ? ih + 2 : ih;
        int v0 = ih >= 0 && ih < H, v1 = ih2 >= 0 && ih2 < H;
        const float *r = xc + ih * W;
        __mmask16 la = v0 ? ma0 : 0, lb = v0 ? mb0 : 0, ha = v1 ? ma1 : 0, hb = v1 ? mb1 : 0;
        __m512 al = _mm512_maskz_loadu_ps(la, r + a), ah = _mm512_maskz_loadu_ps(ha, r + a + hoff);
        __m512 bl = _mm512_maskz_loadu_ps(lb, r + b), bh = _mm512_maskz_loadu_ps(hb, r + b + hoff);
        d[i][0] = _mm512_permutex2var_ps(al, ev, ah);
        d[i][1] = _mm512_permutex2var_ps(al, od, ah);
        d[i][2] = _mm512_permutex2var_ps(bl, ev, bh);
        d[i][3] = _mm512_permutex2var_ps(bl, od, bh);
    }
    __m512 t[4][4];
    for (int j = 0; j < 4; j++) {
        t[0][j] = _mm512_sub_ps(d[0][j], d[2][j]);
        t[1][j] = _mm512_add_ps(d[1][j], d[2][j]);
        t[2][j] = _mm512_sub_ps(d[2][j], d[1][j]);
        t[3][j] = _mm512_sub_ps(d[1][j], d[3][j]);
    }
    __mmask16 m = (__mmask16)(n >= 16 ? 0xFFFF : (1u << n) - 1u);
    for (int x = 0; x < 4; x++) {
        __m512 v[4] = {_mm512_sub_ps(t[x][0], t[x][2]), _mm512_add_ps(t[x][1], t[x][2]),
                       _mm512_sub_ps(t[x][2], t[x][1]), _mm512_sub_ps(t[x][1], t[x][3])};
        for (int nu = 0; nu < 4; nu++) {
            if (n >= 16)
                _mm512_storeu_ps(V + (4 * x + nu) * fstride, v[nu]);
            else
                _mm512_mask_storeu_ps(V + (4 * x + nu) * fstride, m, v[nu]);
        }
    }
}

/* Output transform of tiles tw in [tw0, tw0 + 16) of tile row th from M[f*fstride + i]
 * into the output plane yc (bias b, ReLU when relu). pair: lanes 8..15 are tile row
 * th + 1 (tile rows of 8 tiles). */
static WT void out_tf16(const float *M, int64_t fstride, float *yc, int64_t H, int64_t W,
                        int64_t th, int64_t tw0, float b, int relu, int pair) {
    const __m512i il = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i ih = _mm512_add_epi32(il, _mm512_set1_epi32(8));
    __m512 a0[4], a1[4];
    for (int nu = 0; nu < 4; nu++) {
        __m512 m0 = _mm512_loadu_ps(M + (0 + nu) * fstride);
        __m512 m1 = _mm512_loadu_ps(M + (4 + nu) * fstride);
        __m512 m2 = _mm512_loadu_ps(M + (8 + nu) * fstride);
        __m512 m3 = _mm512_loadu_ps(M + (12 + nu) * fstride);
        a0[nu] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
        a1[nu] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
    }
    __m512 bv = _mm512_set1_ps(b), z = _mm512_setzero_ps();
    __m512 y00 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0[0], a0[1]), a0[2]), bv);
    __m512 y01 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(a0[1], a0[2]), a0[3]), bv);
    __m512 y10 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a1[0], a1[1]), a1[2]), bv);
    __m512 y11 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(a1[1], a1[2]), a1[3]), bv);
    if (relu) {
        y00 = _mm512_max_ps(z, y00);
        y01 = _mm512_max_ps(z, y01);
        y10 = _mm512_max_ps(z, y10);
        y11 = _mm512_max_ps(z, y11);
    }
    int64_t c0 = 2 * tw0;
    /* second half: 16 columns on in the same rows, or (pair) the rows two below */
    int64_t hoff = pair ? 2 * W : 16, hcol = pair ? 0 : 16;
    __mmask16 m0 = range_mask(c0, W), m1 = range_mask(c0 + hcol, W);
    float *r0 = yc + 2 * th * W + c0;
    int64_t rows = H - 2 * th; /* output rows left from 2*th */
    _mm512_mask_storeu_ps(r0, m0, _mm512_permutex2var_ps(y00, il, y01));
    if (rows > 1) _mm512_mask_storeu_ps(r0 + W, m0, _mm512_permutex2var_ps(y10, il, y11));
    if (!pair || rows > 2)
        _mm512_mask_storeu_ps(r0 + hoff, m1, _mm512_permutex2var_ps(y00, ih, y01));
    if (pair ? rows > 3 : rows > 1)
        _mm512_mask_storeu_ps(r0 + hoff + W, m1, _mm512_permutex2var_ps(y10, ih, y11));
}

/* Output transform fused with ReLU and 2x2 stride-2 max pooling (the tile is the pooling
 * window): pooled row th (lanes 8..15: row th + 1 with pair) of the pooled plane yp
 * [H/2][W/2] and its window codes (0..3 in row-major order, CPU_POOL_NOGRAD where the
 * ReLU clamped the maximum); the first maximum wins, NaN always taken, as in
 * cpu_max_pool2d_codes_forward. */
static WT void out_pool16(const float *M, int64_t fstride, float *yp, uint8_t *cp, int64_t PW,
                          int64_t th, int64_t tw0, int n, float b) {
    __m512 a0[4], a1[4];
    for (int nu = 0; nu < 4; nu++) {
        __m512 m0 = _mm512_loadu_ps(M + (0 + nu) * fstride);
        __m512 m1 = _mm512_loadu_ps(M + (4 + nu) * fstride);
        __m512 m2 = _mm512_loadu_ps(M + (8 + nu) * fstride);
        __m512 m3 = _mm512_loadu_ps(M + (12 + nu) * fstride);
        a0[nu] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
        a1[nu] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
    }
    __m512 bv = _mm512_set1_ps(b), z = _mm512_setzero_ps();
    __m512 v0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0[0], a0[1]), a0[2]), bv);
    __m512 v1 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(a0[1], a0[2]), a0[3]), bv);
    __m512 v2 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a1[0], a1[1]), a1[2]), bv);
    __m512 v3 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(a1[1], a1[2]), a1[3]), bv);
    __m512 m = v0;
    __m512i code = _mm512_setzero_si512();
    __mmask16 k = _mm512_cmp_ps_mask(v1, m, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v1, v1, _CMP_UNORD_Q);
    m = _mm512_mask_mov_ps(m, k, v1);
    code = _mm512_mask_mov_epi32(code, k, _mm512_set1_epi32(1));
    k = _mm512_cmp_ps_mask(v2, m, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v2, v2, _CMP_UNORD_Q);
    m = _mm512_mask_mov_ps(m, k, v2);
    code = _mm512_mask_mov_epi32(code, k, _mm512_set1_epi32(2));
    k = _mm512_cmp_ps_mask(v3, m, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v3, v3, _CMP_UNORD_Q);
    m = _mm512_mask_mov_ps(m, k, v3);
    code = _mm512_mask_mov_epi32(code, k, _mm512_set1_epi32(3));
    __mmask16 live = _mm512_cmp_ps_mask(m, z, _CMP_GT_OQ);
    m = _mm512_max_ps(z, m); /* ReLU, NaN stays */
    code = _mm512_mask_mov_epi32(_mm512_set1_epi32(CPU_POOL_NOGRAD), live, code);
    __mmask16 st = (__mmask16)(n >= 16 ? 0xFFFF : (1u << n) - 1u);
    _mm512_mask_storeu_ps(yp + th * PW + tw0, st, m);
    if (cp) _mm512_mask_cvtepi32_storeu_epi8(cp + th * PW + tw0, st, code);
}

/* Gradient transform A gy A^T of the tiles tw in [tw0, tw0 + n) of tile row th of the
 * gradient plane gc into Z[f*fstride + i] (A = [[1,0],[1,1],[1,-1],[0,-1]]). */
static WT void gy_tf16(const float *gc, int64_t H, int64_t W, int64_t th, int64_t tw0, int n,
                       float *Z, int64_t fstride, int pair) {
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_add_epi32(ev, _mm512_set1_epi32(1));
    int64_t a = 2 * tw0, hoff = pair ? 2 * W : 16, hcol = pair ? 0 : 16;
    __mmask16 m0 = range_mask(a, W), m1 = range_mask(a + hcol, W);
    __m512 g[2][2];
    for (int i = 0; i < 2; i++) {
        int64_t ih = 2 * th + i, ih2 = pair ? ih + 2 : ih;
        const float *r = gc + ih * W;
        __mmask16 l = ih < H ? m0 : 0, h = ih2 < H ? m1 : 0;
        __m512 lo = _mm512_maskz_loadu_ps(l, r + a), hi = _mm512_maskz_loadu_ps(h, r + a + hoff);
        g[i][0] = _mm512_permutex2var_ps(lo, ev, hi);
        g[i][1] = _mm512_permutex2var_ps(lo, od, hi);
    }
    __m512 p[4][2], z = _mm512_setzero_ps();
    for (int j = 0; j < 2; j++) {
        p[0][j] = g[0][j];
        p[1][j] = _mm512_add_ps(g[0][j], g[1][j]);
        p[2][j] = _mm512_sub_ps(g[0][j], g[1][j]);
        p[3][j] = _mm512_sub_ps(z, g[1][j]);
    }
    __mmask16 m = (__mmask16)(n >= 16 ? 0xFFFF : (1u << n) - 1u);
    for (int i = 0; i < 4; i++) {
        __m512 v[4] = {p[i][0], _mm512_add_ps(p[i][0], p[i][1]), _mm512_sub_ps(p[i][0], p[i][1]),
                       _mm512_sub_ps(z, p[i][1])};
        for (int nu = 0; nu < 4; nu++) {
            if (n >= 16)
                _mm512_storeu_ps(Z + (4 * i + nu) * fstride, v[nu]);
            else
                _mm512_mask_storeu_ps(Z + (4 * i + nu) * fstride, m, v[nu]);
        }
    }
}

/* ------------------------------------------------------------- AVX2 transforms
 * The same four transforms for 8-lane vectors (8 tiles per vector, tile rows never
 * paired); the GEMMs in between run on the AVX2 micro-kernels of conv_fast.c. */
#define WT2 __attribute__((target("avx2,fma")))

/* lanes i with 0 <= a + i < W, as a maskload/maskstore mask */
static inline __attribute__((always_inline)) WT2 __m256i range_mask8(int64_t a, int64_t W) {
    __m256i idx = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                   _mm256_set1_epi32((int)a));
    return _mm256_and_si256(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(-1)),
                            _mm256_cmpgt_epi32(_mm256_set1_epi32((int)W), idx));
}
static inline __attribute__((always_inline)) WT2 __m256i lanes8(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* Even and odd elements of the 16 floats at p (masked loads m0, m1: zeros elsewhere). */
static inline __attribute__((always_inline)) WT2 void deint8m(const float *p, __m256i m0,
                                                              __m256i m1, __m256 *ev,
                                                              __m256 *od) {
    __m256 a = _mm256_maskload_ps(p, m0), b = _mm256_maskload_ps(p + 8, m1);
    *ev = _mm256_castpd_ps(_mm256_permute4x64_pd(
        _mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))), _MM_SHUFFLE(3, 1, 2, 0)));
    *od = _mm256_castpd_ps(_mm256_permute4x64_pd(
        _mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))), _MM_SHUFFLE(3, 1, 2, 0)));
}

/* x[0..7] and y[0..7] interleaved: lo = x0 y0 .. x3 y3, hi = x4 y4 .. x7 y7. */
static inline __attribute__((always_inline)) WT2 void inter8(__m256 x, __m256 y, __m256 *lo,
                                                             __m256 *hi) {
    __m256 l = _mm256_unpacklo_ps(x, y), h = _mm256_unpackhi_ps(x, y);
    *lo = _mm256_permute2f128_ps(l, h, 0x20);
    *hi = _mm256_permute2f128_ps(l, h, 0x31);
}

static WT2 void in_tf8(const float *xc, int64_t H, int64_t W, int64_t th, int64_t tw0, int n,
                       float *V, int64_t fstride) {
    __m256 d[4][4];
    int64_t a = 2 * tw0 - 1, b = 2 * tw0 + 1;
    __m256i ma0 = range_mask8(a, W), ma1 = range_mask8(a + 8, W);
    __m256i mb0 = range_mask8(b, W), mb1 = range_mask8(b + 8, W);
    for (int i = 0; i < 4; i++) {
        int64_t ih = 2 * th - 1 + i;
        if (ih < 0 || ih >= H) {
            d[i][0] = d[i][1] = d[i][2] = d[i][3] = _mm256_setzero_ps();
            continue;
        }
        const float *r = xc + ih * W;
        deint8m(r + a, ma0, ma1, &d[i][0], &d[i][1]);
        deint8m(r + b, mb0, mb1, &d[i][2], &d[i][3]);
    }
    __m256 t[4][4];
    for (int j = 0; j < 4; j++) {
        t[0][j] = _mm256_sub_ps(d[0][j], d[2][j]);
        t[1][j] = _mm256_add_ps(d[1][j], d[2][j]);
        t[2][j] = _mm256_sub_ps(d[2][j], d[1][j]);
        t[3][j] = _mm256_sub_ps(d[1][j], d[3][j]);
    }
    __m256i m = lanes8(n);
    for (int x = 0; x < 4; x++) {
        __m256 v[4] = {_mm256_sub_ps(t[x][0], t[x][2]), _mm256_add_ps(t[x][1], t[x][2]),
                       _mm256_sub_ps(t[x][2], t[x][1]), _mm256_sub_ps(t[x][1], t[x][3])};
        for (int nu = 0; nu < 4; nu++) {
            if (n >= 8) _mm256_storeu_ps(V + (4 * x + nu) * fstride, v[nu]);
            else _mm256_maskstore_ps(V + (4 * x + nu) * fstride, m, v[nu]);
        }
    }
}

/* The 2x2 outputs (y00, y01, y10, y11) of 8 tiles from M (A^T m A), bias added. */
static inline __attribute__((always_inline)) WT2 void out_vals8(const float *M, int64_t fstride,
                                                                float b, __m256 y[4]) {
    __m256 a0[4], a1[4];
    for (int nu = 0; nu < 4; nu++) {
        __m256 m0 = _mm256_loadu_ps(M + (0 + nu) * fstride);
        __m256 m1 = _mm256_loadu_ps(M + (4 + nu) * fstride);
        __m256 m2 = _mm256_loadu_ps(M + (8 + nu) * fstride);
        __m256 m3 = _mm256_loadu_ps(M + (12 + nu) * fstride);
        a0[nu] = _mm256_add_ps(_mm256_add_ps(m0, m1), m2);
        a1[nu] = _mm256_sub_ps(_mm256_sub_ps(m1, m2), m3);
    }
    __m256 bv = _mm256_set1_ps(b);
    y[0] = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0[0], a0[1]), a0[2]), bv);
    y[1] = _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(a0[1], a0[2]), a0[3]), bv);
    y[2] = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a1[0], a1[1]), a1[2]), bv);
    y[3] = _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(a1[1], a1[2]), a1[3]), bv);
}

static WT2 void out_tf8(const float *M, int64_t fstride, float *yc, int64_t H, int64_t W,
                        int64_t th, int64_t tw0, float b, int relu) {
    __m256 y[4];
    out_vals8(M, fstride, b, y);
    if (relu)
        for (int i = 0; i < 4; i++) y[i] = _mm256_max_ps(_mm256_setzero_ps(), y[i]);
    int64_t c0 = 2 * tw0;
    __m256i m0 = range_mask8(c0, W), m1 = range_mask8(c0 + 8, W);
    float *r0 = yc + 2 * th * W + c0;
    __m256 lo, hi;
    inter8(y[0], y[1], &lo, &hi);
    _mm256_maskstore_ps(r0, m0, lo);
    _mm256_maskstore_ps(r0 + 8, m1, hi);
    if (H - 2 * th > 1) {
        inter8(y[2], y[3], &lo, &hi);
        _mm256_maskstore_ps(r0 + W, m0, lo);
        _mm256_maskstore_ps(r0 + W + 8, m1, hi);
    }
}

static WT2 void out_pool8(const float *M, int64_t fstride, float *yp, uint8_t *cp, int64_t PW,
                          int64_t th, int64_t tw0, int n, float b) {
    __m256 v[4], z = _mm256_setzero_ps();
    out_vals8(M, fstride, b, v);
    __m256 m = v[0], code = z; /* codes as floats 0..3 */
    for (int i = 1; i < 4; i++) {
        __m256 k = _mm256_or_ps(_mm256_cmp_ps(v[i], m, _CMP_GT_OQ), _mm256_cmp_ps(v[i], v[i], _CMP_UNORD_Q));
        m = _mm256_blendv_ps(m, v[i], k);
        code = _mm256_blendv_ps(code, _mm256_set1_ps((float)i), k);
    }
    __m256 live = _mm256_cmp_ps(m, z, _CMP_GT_OQ);
    m = _mm256_max_ps(z, m); /* ReLU, NaN stays */
    code = _mm256_blendv_ps(_mm256_set1_ps(CPU_POOL_NOGRAD), code, live);
    _mm256_maskstore_ps(yp + th * PW + tw0, lanes8(n), m);
    if (cp) {
        __m256i ci = _mm256_cvtps_epi32(code);
        __m128i c16 = _mm_packus_epi32(_mm256_castsi256_si128(ci), _mm256_extracti128_si256(ci, 1));
        uint8_t tmp[16];
        _mm_storeu_si128((__m128i *)tmp, _mm_packus_epi16(c16, c16));
        memcpy(cp + th * PW + tw0, tmp, (size_t)(n < 8 ? n : 8));
    }
}

static WT2 void gy_tf8(const float *gc, int64_t H, int64_t W, int64_t th, int64_t tw0, int n,
                       float *Z, int64_t fstride) {
    int64_t a = 2 * tw0;
    __m256i m0 = range_mask8(a, W), m1 = range_mask8(a + 8, W);
    __m256 g[2][2], z = _mm256_setzero_ps();
    for (int i = 0; i < 2; i++) {
        int64_t ih = 2 * th + i;
        if (ih >= H) {
            g[i][0] = g[i][1] = z;
            continue;
        }
        deint8m(gc + ih * W + a, m0, m1, &g[i][0], &g[i][1]);
    }
    __m256 p[4][2];
    for (int j = 0; j < 2; j++) {
        p[0][j] = g[0][j];
        p[1][j] = _mm256_add_ps(g[0][j], g[1][j]);
        p[2][j] = _mm256_sub_ps(g[0][j], g[1][j]);
        p[3][j] = _mm256_sub_ps(z, g[1][j]);
    }
    __m256i m = lanes8(n);
    for (int i = 0; i < 4; i++) {
        __m256 v[4] = {p[i][0], _mm256_add_ps(p[i][0], p[i][1]), _mm256_sub_ps(p[i][0], p[i][1]),
                       _mm256_sub_ps(z, p[i][1])};
        for (int nu = 0; nu < 4; nu++) {
            if (n >= 8) _mm256_storeu_ps(Z + (4 * i + nu) * fstride, v[nu]);
            else _mm256_maskstore_ps(Z + (4 * i + nu) * fstride, m, v[nu]);
        }
    }
}

/* The transforms of the vector width in use: VL tiles per call (16 with pair rows). */
static void in_tf(int VL, const float *xc, int64_t H, int64_t W, int64_t th, int64_t tw0, int n,
                  float *V, int64_t fstride, int pair) {
    if (VL == 16) in_tf16(xc, H, W, th, tw0, n, V, fstride, pair);
    else in_tf8(xc, H, W, th, tw0, n, V, fstride);
}
static void gy_tf(int VL, const float *gc, int64_t H, int64_t W, int64_t th, int64_t tw0, int n,
                  float *Z, int64_t fstride, int pair) {
    if (VL == 16) gy_tf16(gc, H, W, th, tw0, n, Z, fstride, pair);
    else gy_tf8(gc, H, W, th, tw0, n, Z, fstride);
}

typedef struct {
    const cf_isa *isa;
    int64_t N, C, H, W, O, TH, TW;
    int64_t rows;          /* tile rows per block */
    int64_t nblk, TBp;     /* blocks; tiles per block rounded to 16 */
    int64_t MR;
    const float *x, *bias, *U;
    float *y;
    int relu;
    int pool;        /* y is the 2x2-pooled output [N][O][H/2][W/2], codes may be NULL */
    uint8_t *codes;
    int nslots;
    cpu_ws_set *ws;
} wino_ctx;

static void wino_block(wino_ctx *c, int64_t blk, char *ws) {
    const int64_t C = c->C, O = c->O, H = c->H, W = c->W, TH = c->TH, TW = c->TW, TBp = c->TBp;
    int64_t r0 = blk * c->rows, r1 = r0 + c->rows < c->N * TH ? r0 + c->rows : c->N * TH;
    int64_t TB = (r1 - r0) * TW;
    float *V = (float *)ws, *M = V + 16 * C * TBp;
    int64_t *koff = (int64_t *)(M + 16 * O * TBp);
    /* input transform (and zero tails so that the GEMM reads finite values) */
    /* plane by plane (channel outer) so that the input is read sequentially */
    const int VL = c->isa->vl;
    for (int64_t ci = 0; ci < C; ci++)
        for (int64_t r = r0; r < r1;) {
            int64_t n = r / TH, th = r % TH, t0 = (r - r0) * TW;
            int pair = VL == 16 && TW == 8 && r + 1 < r1 && th + 1 < TH;
            const float *xc = c->x + (n * C + ci) * H * W;
            for (int64_t tw0 = 0; tw0 < TW; tw0 += VL) {
                int nl = pair ? 16 : TW - tw0 < VL ? (int)(TW - tw0) : VL;
                in_tf(VL, xc, H, W, th, tw0, nl, V + ci * TBp + t0 + tw0, C * TBp, pair);
            }
            r += pair ? 2 : 1;
        }
    if (TB < TBp)
        for (int64_t f = 0; f < 16; f++)
            for (int64_t ci = 0; ci < C; ci++)
                memset(V + (f * C + ci) * TBp + TB, 0, sizeof(float) * (size_t)(TBp - TB));
    for (int64_t ci = 0; ci < C; ci++) koff[ci] = ci * TBp;
    /* 16 GEMMs */
    const int nvm = c->isa->nv_max;
    const int64_t nq = TBp / VL;
    for (int64_t f = 0; f < 16; f++) {
        const float *Vf = V + f * C * TBp;
        float *Mf = M + f * O * TBp;
        for (int64_t o0 = 0; o0 < O; o0 += c->MR) {
            int64_t mr = O - o0 < c->MR ? O - o0 : c->MR;
            cf_fwd_args a = {.K = C, .A = c->U + (f * O + o0) * C, .koff = koff, .ldy = TBp};
            for (int64_t q0 = 0; q0 < nq; q0 += nvm) {
                int nv = nq - q0 < nvm ? (int)(nq - q0) : nvm;
                for (int v = 0; v < nv; v++) {
                    a.bp[v] = Vf + (q0 + v) * VL;
                    a.yp[v] = Mf + o0 * TBp + (q0 + v) * VL;
                    a.nvalid[v] = VL;
                }
                c->isa->fwd((int)mr, nv, &a);
            }
        }
    }
    /* output transform */
    for (int64_t o = 0; o < O; o++) {
        float b = c->bias ? c->bias[o] : 0.0f;
        for (int64_t r = r0; r < r1;) {
            int64_t n = r / TH, th = r % TH, t0 = (r - r0) * TW;
            int pair = VL == 16 && TW == 8 && r + 1 < r1 && th + 1 < TH;
            if (c->pool) {
                int64_t po = (n * O + o) * TH * TW;
                for (int64_t tw0 = 0; tw0 < TW; tw0 += VL) {
                    int nl = pair ? 16 : TW - tw0 < VL ? (int)(TW - tw0) : VL;
                    if (VL == 16)
                        out_pool16(M + o * TBp + t0 + tw0, O * TBp, c->y + po,
                                   c->codes ? c->codes + po : NULL, TW, th, tw0, nl, b);
                    else
                        out_pool8(M + o * TBp + t0 + tw0, O * TBp, c->y + po,
                                  c->codes ? c->codes + po : NULL, TW, th, tw0, nl, b);
                }
            } else {
                float *yc = c->y + (n * O + o) * H * W;
                for (int64_t tw0 = 0; tw0 < TW; tw0 += VL) {
                    if (VL == 16)
                        out_tf16(M + o * TBp + t0 + tw0, O * TBp, yc, H, W, th, tw0, b, c->relu,
                                 pair);
                    else
                        out_tf8(M + o * TBp + t0 + tw0, O * TBp, yc, H, W, th, tw0, b, c->relu);
                }
            }
            r += pair ? 2 : 1;
        }
    }
}

static void wino_range(void *vctx, int64_t sb, int64_t se) {
    wino_ctx *c = vctx;
    int64_t t0 = c->nblk * sb / c->nslots, t1 = c->nblk * se / c->nslots;
    for (int64_t t = t0; t < t1; t++) wino_block(c, t, c->ws->buf[sb]);
}

/* U[f][o][c] packed per output-channel block as [C][mr]: block (f, o0) at
 * U + (f*O + o0)*C. w is [O][C][3][3]. Output channels [ob, oe). */
typedef struct {
    const float *w;
    int64_t O, C, MR;
    float *U;
} wt_ctx;

static void wino_weights(void *vctx, int64_t ob, int64_t oe) {
    const wt_ctx *c = vctx;
    const int64_t O = c->O, C = c->C, MR = c->MR;
    for (int64_t o = ob; o < oe; o++) {
        int64_t o0 = o / MR * MR, mr = O - o0 < MR ? O - o0 : MR, m = o - o0;
        for (int64_t ci = 0; ci < C; ci++) {
            const float *g = c->w + (o * C + ci) * 9;
            float t[4][3], u[4][4];
            for (int k = 0; k < 3; k++) {
                t[0][k] = g[k];
                t[1][k] = 0.5f * (g[k] + g[3 + k] + g[6 + k]);
                t[2][k] = 0.5f * (g[k] - g[3 + k] + g[6 + k]);
                t[3][k] = g[6 + k];
            }
            for (int i = 0; i < 4; i++) {
                u[i][0] = t[i][0];
                u[i][1] = 0.5f * (t[i][0] + t[i][1] + t[i][2]);
                u[i][2] = 0.5f * (t[i][0] - t[i][1] + t[i][2]);
                u[i][3] = t[i][2];
            }
            for (int f = 0; f < 16; f++) c->U[(f * O + o0) * C + ci * mr + m] = u[f / 4][f % 4];
        }
    }
}

static int wino_forward(const cf_geom *g, const float *x, const float *w, const float *bias,
                        float *y, int relu, int pool, uint8_t *codes) {
    wino_ctx c = {.isa = cf_current_isa(), .N = g->N, .C = g->C, .H = g->H, .W = g->W, .O = g->O,
                  .x = x, .bias = bias, .y = y, .relu = relu, .pool = pool, .codes = codes};
    if (!c.isa) return ct_error("conv2d: Winograd kernels need AVX2 or AVX-512");
    c.TH = (c.H + 1) / 2;
    c.TW = (c.W + 1) / 2;
    c.MR = c.isa->mr_max;
    /* block: whole tile rows, about 128 tiles, V + M within 8 MB */
    int64_t per_tile = 16 * (c.C + c.O) * (int64_t)sizeof(float);
    int64_t want = 128;
    if (want * per_tile > ((int64_t)8 << 20)) want = ((int64_t)8 << 20) / per_tile;
    if (want < 16) want = 16;
    c.rows = (want + c.TW - 1) / c.TW;
    if (c.rows < 1) c.rows = 1;
    int64_t nrows = c.N * c.TH;
    int nth = ct_plan_threads();
    /* enough blocks for the threads */
    if (nth > 1 && (nrows + c.rows - 1) / c.rows < 2 * nth) {
        int64_t r = nrows / (2 * nth);
        c.rows = r < 1 ? 1 : r;
    }
    /* a whole number of 3-vector GEMM tiles per block when a few more rows give one */
    int64_t tile = (int64_t)c.isa->vl * c.isa->nv_max;
    for (int64_t r = c.rows; r < c.rows + tile && r <= nrows; r++)
        if ((r * c.TW) % tile == 0) {
            c.rows = r;
            break;
        }
    c.nblk = (nrows + c.rows - 1) / c.rows;
    c.TBp = rup(c.rows * c.TW, 16);
    c.nslots = (int)(c.nblk < nth ? c.nblk : nth);
    cpu_ws_set *wu = cpu_ws_acquire(1, sizeof(float) * (size_t)(16 * c.O * c.C), "conv2d");
    if (!wu) return -1;
    size_t slot = sizeof(float) * (size_t)(16 * (c.C + c.O) * c.TBp) + sizeof(int64_t) * (size_t)c.C;
    c.ws = cpu_ws_acquire(c.nslots, slot, "conv2d");
    if (!c.ws) {
        cpu_ws_release(wu);
        return -1;
    }
    wt_ctx wc = {.w = w, .O = c.O, .C = c.C, .MR = c.MR, .U = wu->buf[0]};
    ct_parallel_for(c.O, (4096 + c.C - 1) / c.C, wino_weights, &wc);
    c.U = wu->buf[0];
    ct_parallel_for(c.nslots, 1, wino_range, &c);
    cpu_ws_release(c.ws);
    cpu_ws_release(wu);
    return 0;
}

int cf_winograd_forward(const cf_geom *g, const float *x, const float *w, const float *bias,
                        float *y, int relu) {
    return wino_forward(g, x, w, bias, y, relu, 0, NULL);
}

int cf_winograd_forward_relu_pool(const cf_geom *g, const float *x, const float *w,
                                  const float *bias, float *yp, uint8_t *codes) {
    if (g->H % 2 || g->W % 2) return ct_error("conv2d: fused pooling needs an even size");
    return wino_forward(g, x, w, bias, yp, 1, 1, codes);
}

/* ------------------------------------------------------------ weight gradient
 * gw = G^T [ sum over tiles (A gy A^T) (.) (B^T x B) ] G: per block of tile rows the
 * transforms Z[f][o][t] (of gy) and V[f][c][t] (of x), then per f the GEMM
 * gU[f] += Z[f] V[f]^T (OpenBLAS, reduction over the tiles); each slot accumulates its
 * own gU (and bias gradient: the (1,1) component of Z sums the 2x2 gy tile). */
#include <cblas.h>

typedef struct {
    const cf_isa *isa;
    int64_t N, C, H, W, O, TH, TW, rows, TBp;
    int64_t nsplit;
    int own_gemm; /* the dot-product kernel of conv_fast.c instead of OpenBLAS */
    const float *x, *gy;
    int nslots;
    size_t acc_floats;
    cpu_ws_set *ws;
} wgrad_ctx;

static void wgrad_slot(wgrad_ctx *c, int64_t sl, char *ws) {
    const int64_t C = c->C, O = c->O, H = c->H, W = c->W, TH = c->TH, TW = c->TW, TBp = c->TBp;
    float *gU = (float *)ws, *gb = gU + 16 * O * C;
    float *V = gU + c->acc_floats, *Z = V + 16 * C * TBp;
    int64_t *koff = (int64_t *)(Z + 16 * O * TBp);
    for (int64_t ci = 0; ci < C; ci++) koff[ci] = ci * TBp;
    memset(gU, 0, sizeof(float) * c->acc_floats);
    int64_t n0 = c->N * sl / c->nsplit, n1 = c->N * (sl + 1) / c->nsplit;
    const int VL = c->isa->vl;
    for (int64_t r0 = n0 * TH; r0 < n1 * TH; r0 += c->rows) {
        int64_t r1 = r0 + c->rows < n1 * TH ? r0 + c->rows : n1 * TH, TB = (r1 - r0) * TW;
        for (int64_t ci = 0; ci < C; ci++)
            for (int64_t r = r0; r < r1;) {
                int64_t n = r / TH, th = r % TH, t0 = (r - r0) * TW;
                int pair = VL == 16 && TW == 8 && r + 1 < r1 && th + 1 < TH;
                const float *xc = c->x + (n * C + ci) * H * W;
                for (int64_t tw0 = 0; tw0 < TW; tw0 += VL) {
                    int nl = pair ? 16 : TW - tw0 < VL ? (int)(TW - tw0) : VL;
                    in_tf(VL, xc, H, W, th, tw0, nl, V + ci * TBp + t0 + tw0, C * TBp, pair);
                }
                r += pair ? 2 : 1;
            }
        for (int64_t o = 0; o < O; o++)
            for (int64_t r = r0; r < r1;) {
                int64_t n = r / TH, th = r % TH, t0 = (r - r0) * TW;
                int pair = VL == 16 && TW == 8 && r + 1 < r1 && th + 1 < TH;
                const float *gc = c->gy + (n * O + o) * H * W;
                for (int64_t tw0 = 0; tw0 < TW; tw0 += VL) {
                    int nl = pair ? 16 : TW - tw0 < VL ? (int)(TW - tw0) : VL;
                    gy_tf(VL, gc, H, W, th, tw0, nl, Z + o * TBp + t0 + tw0, O * TBp, pair);
                }
                r += pair ? 2 : 1;
            }
        for (int64_t o = 0; o < O; o++) {
            const float *z5 = Z + (5 * O + o) * TBp;
            float s = 0;
            for (int64_t t = 0; t < TB; t++) s += z5[t];
            gb[o] += s;
        }
        if (c->own_gemm) {
            const cf_isa *isa = c->isa;
            for (int64_t f = 0; f < 16; f++) {
                const float *Vf = V + f * C * TBp;
                for (int64_t o0 = 0; o0 < O; o0 += isa->wm_max) {
                    int mr = O - o0 < isa->wm_max ? (int)(O - o0) : isa->wm_max;
                    const float *zr = Z + (f * O + o0) * TBp;
                    for (int64_t c0 = 0; c0 < C; c0 += isa->wj_max) {
                        int nj = C - c0 < isa->wj_max ? (int)(C - c0) : isa->wj_max;
                        cf_wgt_args a = {.nimg = 1, .gy = &zr, .ldg = TBp, .bb = &Vf,
                                         .koff = koff + c0, .P = TB,
                                         .gw = gU + (f * O + o0) * C + c0, .ldw = C};
                        isa->wgt(mr, nj, &a);
                    }
                }
            }
        } else {
            for (int64_t f = 0; f < 16; f++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)O, (int)C, (int)TB,
                            1.0f, Z + f * O * TBp, (int)TBp, V + f * C * TBp, (int)TBp, 1.0f,
                            gU + f * O * C, (int)C);
        }
    }
}

static void wgrad_range(void *vctx, int64_t sb, int64_t se) {
    wgrad_ctx *c = vctx;
    int64_t t0 = c->nsplit * sb / c->nslots, t1 = c->nsplit * se / c->nslots;
    for (int64_t t = t0; t < t1; t++) wgrad_slot(c, t, c->ws->buf[sb]);
}

typedef struct {
    cpu_ws_set *ws;
    int nslots;
    int64_t OC;
    float *gw;
} wfin_ctx;

/* (o, c) pairs [b, e): the slots' gU summed, then gw = G^T gU G. */
static void wgrad_finish(void *vctx, int64_t b, int64_t e) {
    const wfin_ctx *c = vctx;
    const int64_t OC = c->OC;
    const float *acc = c->ws->buf[0];
    for (int64_t i = b; i < e; i++) {
        float u[4][4], t[3][4];
        for (int f = 0; f < 16; f++) {
            float v = acc[f * OC + i];
            for (int sl = 1; sl < c->nslots; sl++) v += ((const float *)c->ws->buf[sl])[f * OC + i];
            u[f / 4][f % 4] = v;
        }
        /* t = G^T u (3x4), gw = t G (3x3); G = [[1,0,0],[.5,.5,.5],[.5,-.5,.5],[0,0,1]] */
        for (int j = 0; j < 4; j++) {
            t[0][j] = u[0][j] + 0.5f * (u[1][j] + u[2][j]);
            t[1][j] = 0.5f * (u[1][j] - u[2][j]);
            t[2][j] = 0.5f * (u[1][j] + u[2][j]) + u[3][j];
        }
        float *o = c->gw + i * 9;
        for (int r = 0; r < 3; r++) {
            o[r * 3 + 0] = t[r][0] + 0.5f * (t[r][1] + t[r][2]);
            o[r * 3 + 1] = 0.5f * (t[r][1] - t[r][2]);
            o[r * 3 + 2] = 0.5f * (t[r][1] + t[r][2]) + t[r][3];
        }
    }
}

int cf_winograd_backward_weight(const cf_geom *g, const float *gy, const float *x, float *gw,
                                float *gb) {
    wgrad_ctx c = {.isa = cf_current_isa(), .N = g->N, .C = g->C, .H = g->H, .W = g->W, .O = g->O, .x = x, .gy = gy};
    if (!c.isa) return ct_error("conv2d backward: Winograd kernels need AVX2 or AVX-512");
    c.TH = (c.H + 1) / 2;
    c.TW = (c.W + 1) / 2;
    int nth = ct_plan_threads();
    c.nsplit = c.N < nth ? c.N : nth;
    if (c.nsplit < 1) c.nsplit = 1;
    c.nslots = (int)c.nsplit;
    /* blocks: whole tile rows, V + Z within 8 MB, at most a slot's images */
    int64_t per_tile = 16 * (c.C + c.O) * (int64_t)sizeof(float);
    int64_t most = ((int64_t)8 << 20) / per_tile;
    if (most < 16) most = 16;
    c.rows = most / c.TW;
    if (c.rows < 1) c.rows = 1;
    int64_t slot_rows = (c.N + c.nsplit - 1) / c.nsplit * c.TH;
    if (c.rows > slot_rows) c.rows = slot_rows;
    c.TBp = rup(c.rows * c.TW, 16);
    c.acc_floats = (size_t)rup(16 * c.O * c.C + c.O, 16);
    /* OpenBLAS packs its operands for cache blocking, which pays off with many channels;
     * below that the dot-product kernel (one pass over the tiles, in L2) is faster.
     * CTORCH_CONV_WINOGRAD_GEMM=blas|own overrides. */
    const char *e = getenv("CTORCH_CONV_WINOGRAD_GEMM");
    c.own_gemm = e && e[0] ? strcmp(e, "blas") != 0 : c.O * c.C < 128 * 128;
    size_t slot = sizeof(float) * (c.acc_floats + (size_t)(16 * (c.C + c.O) * c.TBp)) +
                  sizeof(int64_t) * (size_t)c.C;
    c.ws = cpu_ws_acquire(c.nslots, slot, "conv2d backward");
    if (!c.ws) return -1;
    ct_parallel_for(c.nslots, 1, wgrad_range, &c);
    /* sum the slots, then gw = G^T gU G per (o, c) */
    wfin_ctx fc = {.ws = c.ws, .nslots = c.nslots, .OC = c.O * c.C, .gw = gw};
    ct_parallel_for(fc.OC, 2048, wgrad_finish, &fc);
    const int64_t OC = fc.OC;
    float *acc = c.ws->buf[0];
    for (int sl = 1; sl < c.nslots && gb; sl++) {
        const float *a = c.ws->buf[sl];
        for (int64_t o = 0; o < c.O; o++) acc[16 * OC + o] += a[16 * OC + o];
    }
    if (gb)
        for (int64_t o = 0; o < c.O; o++) gb[o] = acc[16 * OC + o];
    cpu_ws_release(c.ws);
    return 0;
}

#else
int cf_winograd_forward_relu_pool(const cf_geom *g, const float *x, const float *w,
                                  const float *bias, float *yp, uint8_t *codes) {
    (void)g; (void)x; (void)w; (void)bias; (void)yp; (void)codes;
    return ct_error("conv2d: Winograd kernels need x86-64");
}
int cf_winograd_backward_weight(const cf_geom *g, const float *gy, const float *x, float *gw,
                                float *gb) {
    (void)g; (void)gy; (void)x; (void)gw; (void)gb;
    return ct_error("conv2d backward: Winograd kernels need x86-64");
}
int cf_winograd_forward(const cf_geom *g, const float *x, const float *w, const float *bias,
                        float *y, int relu) {
    (void)g; (void)x; (void)w; (void)bias; (void)y; (void)relu;
    return ct_error("conv2d: Winograd kernels need x86-64");
}
#endif
