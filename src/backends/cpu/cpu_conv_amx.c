/* bfloat16 stride-1 convolutions as implicit GEMMs on AMX tiles: no im2col matrix.
 *
 * Each image is copied once into a zero-padded NHWC buffer xp: Hp = H + 2ph rows of
 * Wp = W + 2pw pixels, Cp = C rounded up to 32 channels per pixel, zeros at the borders,
 * in the padded channels and in a tail of extra pixels. The outputs are computed on a
 * "virtual" grid as wide as the padded input: virtual pixel q = oy * Wp + ox for ox in
 * [0, Wp) (columns ox >= Wo are junk, never stored), Qv = Ho * Wp of them, rounded up to
 * Qb (a multiple of 32). For kernel offset (ky, kx) the input pixel of q is q + s with
 * s = ky * Wp + kx, so 16 consecutive virtual pixels x 32 channels are one tile load
 * straight from xp (row stride Cp * 2 bytes).
 *
 * Forward: blocks of 32 pixels x 32 outputs are four float32 tiles; per step of K (a
 * kernel offset and 32 channels), two A tiles (pixels x channels) and two B tiles (channel
 * pairs x outputs, the weight packed once per call) and four tdpbf16ps. The block is
 * stored, transposed in 16 x 16 blocks to output-major, the bias added, rounded once to
 * bf16 and written with masked stores (the 16 pixels of a vector may span several output
 * rows, or images). The input gradient of a stride-1 convolution is this forward on gy with
 * the weight transposed and flipped (padding K - 1 - p).
 *
 * Weight gradient: gw[o][c][ky][kx] = sum over images and virtual pixels q of
 * gyv[o][q] * xp[q + s][c], where gyv is gy on the virtual grid (zeros at junk columns and
 * past Qv, so junk pixels add nothing). Per (ky, kx): C (O x Cp) += A (O x pixels, straight
 * from gyv) @ B (pixel pairs x channels, VNNI). B comes from two pair-interleaved copies of
 * xp, XE[j] = (xp[2j], xp[2j+1]) and XO[j] = (xp[2j+1], xp[2j+2]) (an even shift s reads
 * XE, an odd one XO). Each thread sums its images into its own float32 accumulator
 * [KH*KW][Op][Cp]; the accumulators are added in thread-chunk order afterwards.
 *
 * Small images with many outputs (8x8, 4x4: a third to a half of the virtual grid is junk)
 * gather the real output pixels instead ("gather" mode, use_gather()): the forward copies
 * each output pixel's KH*KW*Cp inputs from xp into A rows (an NHWC im2col, one chunk of K
 * at a time, the pixels of several images end to end); the weight gradient builds, per
 * kernel offset, the pixel pairs x channels B operand the same way and gy with the images'
 * pixels end to end. The copies cost about 1/32 of the products per output channel.
 *
 * Images are split over threads in chunks of whole images, each thread with its own
 * scratch and its own tile configuration. */
#include "cpu_conv_amx.h"

#include "core/error.h"
#include "ctorch.h"
#include "core/parallel.h"
#include "cpu_alloc.h"
#include "cpu_amx.h"
#include "cpu_gemm_bf16.h"
#include "simd512.h"

#include <stdlib.h>
#include <string.h>

static int64_t g_calls;

int64_t ct_conv_amx_calls(void) { return __atomic_load_n(&g_calls, __ATOMIC_RELAXED); }

static inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }
static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* CTORCH_CONV_AMX (read on every call): "0" sends these convolutions back to im2col +
 * GEMM; "virtual" / "gather" force one way of forming the pixel rows (for tests);
 * otherwise the kernels choose. */
static int enabled(void) {
    const char *e = getenv("CTORCH_CONV_AMX");
    return !(e && !strcmp(e, "0"));
}
static int forced_mode(void) { /* -1: choose; 0: virtual grid; 1: gather */
    const char *e = getenv("CTORCH_CONV_AMX");
    return e && !strcmp(e, "virtual") ? 0 : e && !strcmp(e, "gather") ? 1 : -1;
}

#if defined(__x86_64__) && defined(CT_HAVE_SIMD512) && (__GNUC__ >= 10 || defined(__clang__))
#define AMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq")))

/* Sizes derived from the geometry. */
typedef struct {
    int64_t Hp, Wp, Cp, Op, KK, Qv, Qb;
    int64_t Np; /* pixels per padded image buffer (even) */
    int64_t ncb, nob; /* blocks of 32 channels, of 16 outputs */
} layout;

static layout layout_of(const ct_conv_amx_geom *g) {
    layout l;
    l.Hp = g->H + 2 * g->ph;
    l.Wp = g->W + 2 * g->pw;
    l.Cp = round_up(g->C, 32);
    l.Op = round_up(g->O, 32);
    l.KK = g->KH * g->KW;
    l.Qv = g->Ho * l.Wp;
    l.Qb = round_up(l.Qv, 32);
    /* the last block's reads reach pixel Qb - 1 + (KH-1)*Wp + KW-1; the weight gradient's
     * pair copies one or two past that */
    l.Np = round_up(l.Hp * l.Wp + (l.Qb - l.Qv) + g->KW + 2, 2);
    l.ncb = l.Cp / 32;
    l.nob = l.Op / 16;
    return l;
}

int ct_conv_amx_usable(const ct_conv_amx_geom *g) {
    if (!enabled() || ct_gemm_bf16_kind() != CT_BF16_AMX) return 0;
    if (g->N < 1 || g->C < 16 || g->O < 1 || g->KH < 1 || g->KW < 1 || g->ph < 0 || g->pw < 0)
        return 0;
    return g->Ho >= 1 && g->Wo >= 1 && g->Ho == g->H + 2 * g->ph - g->KH + 1 &&
           g->Wo == g->W + 2 * g->pw - g->KW + 1;
}

/* Tiles 0-3: the four float32 accumulators; 4-5: A; 6-7: B. All 16 rows x 64 bytes. */
static void tiles_config(void) { ct_amx_configure(8, 16, 64); }

/* Image x (bf16 [C, H, W]) into its padded NHWC buffer xp (zeroed once by the caller: the
 * borders and tail are never written). Sixteen channel pairs of sixteen pixels are
 * interleaved into u32 and transposed, giving 32 channels of one pixel per vector. */
AMX static void pack_image(const ct_conv_amx_geom *g, const layout *l, const uint16_t *x,
                           uint16_t *xp) {
    const int64_t HW = g->H * g->W;
    const __m512i zero = _mm512_setzero_si512();
    for (int64_t iy = 0; iy < g->H; iy++)
        for (int64_t cb = 0; cb < l->Cp; cb += 32)
            for (int64_t ix0 = 0; ix0 < g->W; ix0 += 16) {
                int64_t n = min64(16, g->W - ix0);
                __mmask16 m = (__mmask16)((1u << n) - 1);
                __m512i v[16];
                for (int i = 0; i < 16; i++) {
                    int64_t c = cb + 2 * i;
                    const uint16_t *s = x + c * HW + iy * g->W + ix0;
                    __m512i a = c < g->C ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, s))
                                         : zero;
                    __m512i b = c + 1 < g->C
                                    ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, s + HW))
                                    : zero;
                    v[i] = _mm512_or_si512(a, _mm512_slli_epi32(b, 16));
                }
                ct_transpose16(v);
                uint16_t *d = xp + ((iy + g->ph) * l->Wp + ix0 + g->pw) * l->Cp + cb;
                for (int64_t j = 0; j < n; j++) _mm512_storeu_si512(d + j * l->Cp, v[j]);
            }
}

/* ------------------------------------------------------------------- forward */
/* The weight as B tiles: for step k = kk * ncb + cb (channel block cb of 32) and output
 * block ob of 16, the tile at wb + ((ob / 2 * KK * ncb + k) * 2 + ob % 2) * 256 (the steps
 * of 32 outputs one after another), row i (channel pair) x column o (output), each u32
 * (w[o][2i][kk], w[o][2i+1][kk]); zeros past C and O. Element (o, c, kk) of the weight
 * is w[o * so + c * sc + kk] (or, flipped, kk -> KK - 1 - kk). */
typedef struct {
    const ct_conv_amx_geom *g;
    const layout *l;
    const uint16_t *w;
    int64_t so, sc;
    int flipped;
    uint32_t *wb;
} wpack_ctx;

/* Kernels of up to MAXKK taps are packed with vector permutes, larger ones element by
 * element. */
#define MAXKK 49
static const uint16_t iota16[32] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10,
                                    11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
                                    22, 23, 24, 25, 26, 27, 28, 29, 30, 31};

/* Where split_taps finds lane j's element of tap kk: in load t = (j*KK + kk) / 32 (lanes
 * mask[kk][t]) at position pos[kk] = (j*KK + kk) % 32. */
typedef struct {
    __m512i pos[MAXKK];
    __mmask32 mask[MAXKK][MAXKK];
} taps_map;

AMX static void taps_map_init(taps_map *m, int64_t KK) {
    const __m512i jk = _mm512_mullo_epi16(_mm512_loadu_si512(iota16),
                                          _mm512_set1_epi16((short)KK));
    for (int64_t kk = 0; kk < KK; kk++) {
        __m512i idx = _mm512_add_epi16(jk, _mm512_set1_epi16((short)kk));
        m->pos[kk] = _mm512_and_si512(idx, _mm512_set1_epi16(31));
        __m512i reg = _mm512_srli_epi16(idx, 5);
        for (int64_t t = 0; t < KK; t++)
            m->mask[kk][t] = _mm512_cmpeq_epi16_mask(reg, _mm512_set1_epi16((short)t));
    }
}

/* out[kk] lane j (j < 32) = src[j * KK + kk] for kk < KK <= MAXKK: 32 rows of KK 16-bit
 * elements split by column; elements at or past n read as 0. Each output is an OR of
 * independent masked permutes (no chain through one register). */
AMX static void split_taps(const taps_map *m, const uint16_t *src, int64_t n, int64_t KK,
                           __m512i *out) {
    __m512i r[MAXKK];
    for (int64_t t = 0; t < KK; t++) {
        int64_t cnt = n - 32 * t;
        __mmask32 k = cnt >= 32 ? 0xffffffffu : cnt <= 0 ? 0 : (__mmask32)((1u << cnt) - 1);
        r[t] = _mm512_maskz_loadu_epi16(k, src + 32 * t);
    }
    for (int64_t kk = 0; kk < KK; kk++) {
        const int64_t t1 = (31 * KK + kk) / 32;
        const __m512i pos = m->pos[kk];
        __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
        int64_t t = kk / 32;
        for (; t + 1 <= t1; t += 2) {
            a0 = _mm512_or_si512(a0, _mm512_maskz_permutexvar_epi16(m->mask[kk][t], pos, r[t]));
            a1 = _mm512_or_si512(a1,
                                 _mm512_maskz_permutexvar_epi16(m->mask[kk][t + 1], pos, r[t + 1]));
        }
        if (t == t1)
            a0 = _mm512_or_si512(a0, _mm512_maskz_permutexvar_epi16(m->mask[kk][t], pos, r[t]));
        out[kk] = _mm512_or_si512(a0, a1);
    }
}

/* Output blocks of 32 [begin, end), element by element (any kernel size). */
static void pack_weight_scalar(const wpack_ctx *p, int64_t begin, int64_t end) {
    const ct_conv_amx_geom *g = p->g;
    const layout *l = p->l;
    for (int64_t o = begin * 32; o < end * 32; o++) {
        uint32_t *col = p->wb + (o / 32 * l->KK * l->ncb * 2 + o / 16 % 2) * 256 + o % 16;
        for (int64_t kk = 0; kk < l->KK; kk++) {
            int64_t ks = p->flipped ? l->KK - 1 - kk : kk;
            for (int64_t i = 0; i < l->Cp / 2; i++) {
                int64_t c = 2 * i;
                uint32_t lo = 0, hi = 0;
                if (o < g->O && c < g->C) lo = p->w[o * p->so + c * p->sc + ks];
                if (o < g->O && c + 1 < g->C) hi = p->w[o * p->so + (c + 1) * p->sc + ks];
                col[(kk * l->ncb + i / 16) * 512 + (i % 16) * 16] = lo | hi << 16;
            }
        }
    }
}

/* Output blocks of 32 [begin, end). The weight w [O][C][KK]: per output, 32 channels' taps
 * split by tap (the pairs of channels come out as u32), then 16 outputs transposed into a
 * tile's columns. Flipped, w [C][O][KK]: per channel, 32 outputs' taps split by tap, two
 * channels interleaved into pairs. */
AMX static void pack_weight_blocks(void *vc, int64_t begin, int64_t end) {
    const wpack_ctx *p = vc;
    const ct_conv_amx_geom *g = p->g;
    const layout *l = p->l;
    const int64_t KK = l->KK, nk = KK * l->ncb;
    if (KK > MAXKK) {
        pack_weight_scalar(p, begin, end);
        return;
    }
    taps_map tm;
    taps_map_init(&tm, KK);
    if (!p->flipped) {
        __m512i t[MAXKK][16];
        for (int64_t ob = begin; ob < end; ob++)
            for (int e = 0; e < 2; e++)
                for (int64_t cb = 0; cb < l->ncb; cb++) {
                    __m512i col[MAXKK];
                    for (int o = 0; o < 16; o++) {
                        int64_t oa = ob * 32 + 16 * e + o, nc = min64(32, g->C - cb * 32);
                        if (oa < g->O)
                            split_taps(&tm, p->w + (oa * g->C + cb * 32) * KK, nc * KK, KK, col);
                        for (int64_t kk = 0; kk < KK; kk++)
                            t[kk][o] = oa < g->O ? col[kk] : _mm512_setzero_si512();
                    }
                    for (int64_t kk = 0; kk < KK; kk++) {
                        ct_transpose16(t[kk]); /* t[kk][i]: channel pair i, lanes = outputs */
                        uint32_t *d = p->wb + ((ob * nk + kk * l->ncb + cb) * 2 + e) * 256;
                        for (int i = 0; i < 16; i++) _mm512_storeu_si512(d + i * 16, t[kk][i]);
                    }
                }
        return;
    }
    const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9,
                                        40, 8, 39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33,
                                        1, 32, 0);
    const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
    for (int64_t ob = begin; ob < end; ob++) {
        const int64_t no = max64(0, min64(32, g->O - ob * 32));
        for (int64_t i = 0; i < l->Cp / 2; i++) {
            __m512i a[MAXKK], b[MAXKK];
            for (int e = 0; e < 2; e++) {
                int64_t c = 2 * i + e;
                int64_t n = c < g->C ? no * KK : 0;
                split_taps(&tm, n ? p->w + (c * g->O + ob * 32) * KK : p->w, n, KK, e ? b : a);
            }
            for (int64_t kk = 0; kk < KK; kk++) { /* tap kk of w is tap KK-1-kk here */
                uint32_t *d = p->wb + ((ob * nk + (KK - 1 - kk) * l->ncb + i / 16) * 2) * 256 +
                              (i % 16) * 16;
                _mm512_storeu_si512(d, _mm512_permutex2var_epi16(a[kk], lo, b[kk]));
                _mm512_storeu_si512(d + 256, _mm512_permutex2var_epi16(a[kk], hi, b[kk]));
            }
        }
    }
}

/* Where a 16-lane vector of outputs goes: lanes mk[k] of output channel o are stored at
 * y + off[k] + o * Ho * Wo + lane (y: the batch's output). */
typedef struct {
    __mmask16 mk[20];
    int64_t off[20];
    int n;
} segs;

/* Lanes = virtual pixels qs.. of image n (the output rows they touch: lanes [lo, hi) of
 * row r go to row r at column q - r * Wp). */
static void segs_virtual(const ct_conv_amx_geom *g, const layout *l, int64_t n, int64_t qs,
                         segs *sg) {
    const int64_t qe = min64(qs + 16, l->Qv), img = n * g->O * g->Ho * g->Wo;
    sg->n = 0;
    for (int64_t r = qs / l->Wp; r * l->Wp < qe && sg->n < 20; r++) {
        int64_t lo = max64(qs, r * l->Wp), hi = min64(qe, r * l->Wp + g->Wo);
        if (hi <= lo) continue;
        sg->mk[sg->n] = (__mmask16)(((1u << (hi - qs)) - 1) & ~((1u << (lo - qs)) - 1));
        sg->off[sg->n++] = img + r * g->Wo - r * l->Wp + qs;
    }
}

/* Lanes = output pixels ps.. of the images n, n+1, ... laid end to end (T pixels). */
static void segs_gather(const ct_conv_amx_geom *g, int64_t n, int64_t ps, int64_t T, segs *sg) {
    const int64_t P = g->Ho * g->Wo, pe = min64(ps + 16, T);
    sg->n = 0;
    for (int64_t i = ps / P; i * P < pe && sg->n < 20; i++) {
        int64_t lo = max64(ps, i * P), hi = min64(pe, (i + 1) * P);
        sg->mk[sg->n] = (__mmask16)(((1u << (hi - ps)) - 1) & ~((1u << (lo - ps)) - 1));
        sg->off[sg->n++] = (n + i) * g->O * P - i * P + ps;
    }
}

/* The block buf [32 pixels][32 outputs] (float32) of outputs o0.. into y (the batch's bf16
 * output), pixels 0-15 and 16-31 as sg[0] and sg[1] say, with the bias: transposed in
 * 16 x 16 blocks, the bias added, rounded once. */
AMX static void fwd_store(const ct_conv_amx_geom *g, const float *buf, const segs sg[2],
                          int64_t o0, const float *bias, uint16_t *y) {
    const int64_t P = g->Ho * g->Wo;
    for (int h = 0; h < 2; h++) {
        if (!sg[h].n) continue;
        for (int e = 0; e < 2; e++) {
            int64_t ob = o0 + 16 * e;
            if (ob >= g->O) break;
            __m512i v[16];
            for (int t = 0; t < 16; t++)
                v[t] = _mm512_load_si512(buf + (16 * h + t) * 32 + 16 * e);
            ct_transpose16(v); /* v[t]: output ob + t, lanes = the 16 pixels */
            int64_t nt = min64(16, g->O - ob);
            for (int64_t t = 0; t < nt; t++) {
                __m512 f = _mm512_castsi512_ps(v[t]);
                if (bias) f = _mm512_add_ps(f, _mm512_set1_ps(bias[ob + t]));
                __m256i b = ct_f32x16_to_bf16(f);
                uintptr_t yo = (uintptr_t)(y + (ob + t) * P);
                /* lane 0's address may lie before the row (masked off): integer arithmetic */
                for (int k = 0; k < sg[h].n; k++)
                    _mm256_mask_storeu_epi16((void *)(yo + (uintptr_t)(2 * sg[h].off[k])),
                                             sg[h].mk[k], b);
            }
        }
    }
}

/* Gather mode: the A operand of output pixels p0 .. p0 + nrows - 1 of the images in xp
 * (laid end to end, T pixels; zeros past T) for steps k0 .. k0 + nk - 1 (step k = kk * ncb
 * + cb: input pixel (oy + ky, ox + kx), channels cb * 32 ..), as rows of KC * 32 bf16: an
 * NHWC im2col, one chunk of K at a time. */
#define KC 8
AMX static void gather_chunk(const ct_conv_amx_geom *g, const layout *l, const uint16_t *xp,
                             int64_t xpn, int64_t p0, int64_t T, int64_t nrows, int64_t k0,
                             int64_t nk, uint16_t *A) {
    const int64_t P = g->Ho * g->Wo;
    int64_t off[KC]; /* each step's offset from the output pixel's own input pixel */
    for (int64_t k = 0; k < nk; k++) {
        int64_t kk = (k0 + k) / l->ncb, cb = (k0 + k) % l->ncb;
        off[k] = (kk / g->KW * l->Wp + kk % g->KW) * l->Cp + cb * 32;
    }
    for (int64_t r = 0; r < nrows; r++) {
        uint16_t *d = A + r * KC * 32;
        int64_t p = p0 + r;
        if (p >= T) {
            memset(d, 0, sizeof(uint16_t) * (size_t)(nk * 32));
            continue;
        }
        int64_t i = p / P, oy = p % P / g->Wo, ox = p % P % g->Wo;
        const uint16_t *src = xp + i * xpn + (oy * l->Wp + ox) * l->Cp;
        for (int64_t k = 0; k < nk; k++)
            _mm512_storeu_si512(d + k * 32, _mm512_loadu_si512(src + off[k]));
    }
}

/* Whether to gather output pixels instead of computing the virtual grid: when the grid's
 * junk (columns ox >= Wo, the tail to Qb) costs more than copying each pixel's KH*KW*Cp
 * inputs (about 1/32 of its products per output channel: worth it with many outputs on
 * small images, e.g. 8x8 and 4x4). M: the outputs of the product (O, or O for the weight
 * gradient's rows). */
static int use_gather(const ct_conv_amx_geom *g, const layout *l) {
    const int64_t P = g->Ho * g->Wo;
    int forced = forced_mode();
    return forced >= 0 ? forced : l->Qb * l->Op > P * (l->Op + 32);
}

typedef struct {
    const ct_conv_amx_geom *g;
    layout l;
    const uint16_t *x;
    const uint32_t *wb;
    const float *bias;
    uint16_t *y;
    int64_t nchunks;
    int gather, rc;
} fwd_ctx;

#define TILES_ZERO() CT_AMX_ZERO22()
/* C tiles 0-3 += A (tiles 4, 5 at a, a16) x B (tiles 6, 7 at b, b + 256 u32) */
#define TILES_STEP(a, lda, a16, b) CT_AMX_STEP22((a), (a16), (lda), (b), (b) + 256, 64)
#define TILES_STORE(buf) CT_AMX_STORE22((buf), 32)

/* Per-thread scratch of the forward. */
typedef struct {
    uint16_t *xp;  /* G padded images */
    uint16_t *A;   /* gather mode: PB rows of KC steps */
    float *part;   /* gather mode: PB x Op partial sums, in 32 x 32 tile blocks */
    int64_t G, PB;
    float buf[32 * 32] __attribute__((aligned(64)));
} fwd_scratch;

/* The m images n.. (padded in s->xp) on the virtual grid: per 32 outputs, per image, per
 * 32 virtual pixels, all of K in the tiles. */
AMX static void fwd_virtual(const fwd_ctx *f, fwd_scratch *s, int64_t n, int64_t m) {
    const ct_conv_amx_geom *g = f->g;
    const layout *l = &f->l;
    const int64_t xpn = l->Np * l->Cp, nk = l->KK * l->ncb, ld = l->Cp * 2;
    segs sg[2];
    for (int64_t ob = 0; ob < l->Op / 32; ob++) {
        const uint32_t *wo = f->wb + ob * nk * 512;
        for (int64_t i = 0; i < m; i++) {
            const uint16_t *xi = s->xp + i * xpn;
            for (int64_t q0 = 0; q0 < l->Qb; q0 += 32) {
                TILES_ZERO();
                for (int64_t ky = 0; ky < g->KH; ky++)
                    for (int64_t kx = 0; kx < g->KW; kx++) {
                        const uint16_t *a = xi + (q0 + ky * l->Wp + kx) * l->Cp;
                        const uint32_t *b = wo + (ky * g->KW + kx) * l->ncb * 512;
                        for (int64_t cb = 0; cb < l->ncb; cb++)
                            TILES_STEP(a + cb * 32, ld, a + 16 * l->Cp + cb * 32, b + cb * 512);
                    }
                TILES_STORE(s->buf);
                segs_virtual(g, l, n + i, q0, &sg[0]);
                segs_virtual(g, l, n + i, q0 + 16, &sg[1]);
                fwd_store(g, s->buf, sg, ob * 32, f->bias, f->y);
            }
        }
    }
}

/* The m images n.. (padded in s->xp) in gather mode: blocks of PB output pixels; per chunk
 * of KC steps of K, the block's A rows (32 pixels of them stay in L1 over all output
 * blocks; the chunk's weight, 32 KiB per 32 outputs, in L2 over the pixels), the partial
 * sums parked in s->part between chunks. */
AMX static void fwd_gather(const fwd_ctx *f, fwd_scratch *s, int64_t n, int64_t m) {
    const ct_conv_amx_geom *g = f->g;
    const layout *l = &f->l;
    const int64_t xpn = l->Np * l->Cp, nk = l->KK * l->ncb, T = m * g->Ho * g->Wo;
    segs sg[2];
    for (int64_t p0 = 0; p0 < T; p0 += s->PB) {
        const int64_t nrows = round_up(min64(s->PB, T - p0), 32);
        for (int64_t k0 = 0; k0 < nk; k0 += KC) {
            const int64_t kn = min64(KC, nk - k0);
            gather_chunk(g, l, s->xp, xpn, p0, T, nrows, k0, kn, s->A);
            for (int64_t r0 = 0; r0 < nrows; r0 += 32) {
                const uint16_t *a = s->A + r0 * KC * 32;
                for (int64_t ob = 0; ob < l->Op / 32; ob++) {
                    const uint32_t *wo = f->wb + (ob * nk + k0) * 512;
                    float *pc = s->part + (r0 / 32 * (l->Op / 32) + ob) * 1024;
                    if (k0 == 0) TILES_ZERO();
                    else {
                        _tile_loadd(0, pc, 64);
                        _tile_loadd(1, pc + 256, 64);
                        _tile_loadd(2, pc + 512, 64);
                        _tile_loadd(3, pc + 768, 64);
                    }
                    for (int64_t k = 0; k < kn; k++)
                        TILES_STEP(a + k * 32, KC * 64, a + 16 * KC * 32 + k * 32, wo + k * 512);
                    if (k0 + kn < nk) {
                        _tile_stored(0, pc, 64);
                        _tile_stored(1, pc + 256, 64);
                        _tile_stored(2, pc + 512, 64);
                        _tile_stored(3, pc + 768, 64);
                        continue;
                    }
                    TILES_STORE(s->buf);
                    segs_gather(g, n, p0 + r0, T, &sg[0]);
                    segs_gather(g, n, p0 + r0 + 16, T, &sg[1]);
                    fwd_store(g, s->buf, sg, ob * 32, f->bias, f->y);
                }
            }
        }
    }
}

AMX static void fwd_chunks(void *vc, int64_t begin, int64_t end) {
    fwd_ctx *f = vc;
    const ct_conv_amx_geom *g = f->g;
    const layout *l = &f->l;
    const int64_t xpn = l->Np * l->Cp, CHW = g->C * g->H * g->W;
    fwd_scratch s;
    /* several images per pass over the weight (small images, large weights), as many as
     * keep their padded copies within ~1 MiB */
    s.G = min64(max64(1, (1 << 20) / (xpn * 2)), (g->N + f->nchunks - 1) / f->nchunks);
    /* gather mode: blocks of PB pixels whose partial sums (float32, PB x Op) take about
     * 512 KiB */
    s.PB = max64(32, (1 << 19) / (l->Op * 4) / 32 * 32);
    s.xp = ct_cpu_alloc(sizeof(uint16_t) * (size_t)(xpn * s.G));
    s.A = f->gather ? ct_cpu_alloc(sizeof(uint16_t) * (size_t)(s.PB * KC * 32)) : NULL;
    s.part = f->gather ? ct_cpu_alloc(sizeof(float) * (size_t)(s.PB * l->Op)) : NULL;
    if (s.xp && (!f->gather || (s.A && s.part))) {
        memset(s.xp, 0, sizeof(uint16_t) * (size_t)(xpn * s.G));
        tiles_config();
        for (int64_t c = begin; c < end; c++) {
            int64_t n1 = (c + 1) * g->N / f->nchunks;
            for (int64_t n = c * g->N / f->nchunks; n < n1; n += s.G) {
                int64_t m = min64(s.G, n1 - n);
                for (int64_t i = 0; i < m; i++)
                    pack_image(g, l, f->x + (n + i) * CHW, s.xp + i * xpn);
                if (f->gather) fwd_gather(f, &s, n, m);
                else fwd_virtual(f, &s, n, m);
            }
        }
        _tile_release();
    } else
        __atomic_store_n(&f->rc, -1, __ATOMIC_RELAXED);
    ct_cpu_free(s.xp);
    ct_cpu_free(s.A);
    ct_cpu_free(s.part);
}

static int64_t chunks_for(int64_t N) {
    int64_t t = ct_plan_threads();
    return N < t ? N : t;
}

int ct_conv_amx_forward(const ct_conv_amx_geom *g, const uint16_t *x, const uint16_t *w,
                        int flipped, const float *bias, uint16_t *y) {
    if (!ct_conv_amx_usable(g))
        return ct_error("conv (AMX): not usable for this convolution or CPU");
    layout l = layout_of(g);
    size_t wn = (size_t)(l.KK * l.Cp / 2 * l.Op);
    uint32_t *wb = ct_cpu_alloc(sizeof(uint32_t) * wn);
    if (!wb) return -1;
    wpack_ctx wp = {g, &l, w, flipped ? l.KK : g->C * l.KK, flipped ? g->O * l.KK : l.KK,
                    flipped, wb};
    ct_parallel_for(l.Op / 32, 1, pack_weight_blocks, &wp);
    fwd_ctx f = {g, l, x, wb, bias, y, chunks_for(g->N), use_gather(g, &l), 0};
    ct_parallel_for(f.nchunks, 1, fwd_chunks, &f);
    ct_cpu_free(wb);
    if (f.rc) return ct_error("conv (AMX): out of memory");
    __atomic_add_fetch(&g_calls, 1, __ATOMIC_RELAXED);
    return 0;
}

/* ------------------------------------------------------------- weight gradient */
typedef struct {
    const ct_conv_amx_geom *g;
    layout l;
    const uint16_t *x, *gy;
    float *acc; /* [nchunks][KK][Op][Cp] */
    int64_t nchunks, J; /* J: rows of XE / XO */
    int rc;
} bww_ctx;

/* d[c] = (a[c], b[c]) as u32 pairs, c < Cp. */
AMX static inline void interleave_row(uint32_t *d, const uint16_t *a, const uint16_t *b,
                                      int64_t Cp) {
    const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9,
                                        40, 8, 39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33,
                                        1, 32, 0);
    const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
    for (int64_t c = 0; c < Cp; c += 32) {
        __m512i va = _mm512_loadu_si512(a + c), vb = _mm512_loadu_si512(b + c);
        _mm512_storeu_si512(d + c, _mm512_permutex2var_epi16(va, lo, vb));
        _mm512_storeu_si512(d + c + 16, _mm512_permutex2var_epi16(va, hi, vb));
    }
}

/* XE[j] = pairs (xp[2j][c], xp[2j+1][c]) and XO[j] = (xp[2j+1][c], xp[2j+2][c]) for
 * j < J, rows of Cp u32. */
AMX static void pair_copies(const layout *l, int64_t J, const uint16_t *xp, uint32_t *xe,
                            uint32_t *xo) {
    for (int64_t j = 0; j < J; j++) {
        const uint16_t *r = xp + 2 * j * l->Cp;
        interleave_row(xe + j * l->Cp, r, r + l->Cp, l->Cp);
        interleave_row(xo + j * l->Cp, r + l->Cp, r + 2 * l->Cp, l->Cp);
    }
}

AMX static void bww_chunks(void *vc, int64_t begin, int64_t end) {
    bww_ctx *f = vc;
    const ct_conv_amx_geom *g = f->g;
    const layout *l = &f->l;
    const int64_t CHW = g->C * g->H * g->W, OP = g->O * g->Ho * g->Wo;
    const int64_t xn = f->J * l->Cp, gn = l->Op * l->Qb; /* per image: XE (or XO), gyv */
    /* S images have their operands built at a time, as many as take ~1 MiB or twice the
     * accumulator, whichever is more (a large accumulator is then loaded and stored once
     * per S images); within them, per (ky, kx), blocks of G images whose operands for that
     * offset (gyv and one of XE / XO: ~1 MiB) stay in L2 with the accumulator's slice. */
    const int64_t acc_bytes = l->KK * l->Op * l->Cp * 4;
    const int64_t per_image = xn * 8 + gn * 2, per_offset = xn * 4 + gn * 2;
    const int64_t chunk = (g->N + f->nchunks - 1) / f->nchunks;
    int64_t S = max64(1, max64(1 << 20, min64(2 * acc_bytes, (int64_t)1 << 26)) / per_image);
    S = min64(S, chunk);
    const int64_t G = min64(S, max64(1, (1 << 20) / per_offset));
    uint16_t *xp = ct_cpu_alloc(sizeof(uint16_t) * (size_t)(l->Np * l->Cp));
    uint32_t *xe = ct_cpu_alloc(sizeof(uint32_t) * (size_t)(2 * xn * S));
    uint16_t *gyv = ct_cpu_alloc(sizeof(uint16_t) * (size_t)(gn * S));
    if (!xp || !xe || !gyv) {
        __atomic_store_n(&f->rc, -1, __ATOMIC_RELAXED);
        ct_cpu_free(xp);
        ct_cpu_free(xe);
        ct_cpu_free(gyv);
        return;
    }
    memset(xp, 0, sizeof(uint16_t) * (size_t)(l->Np * l->Cp));
    memset(gyv, 0, sizeof(uint16_t) * (size_t)(gn * S)); /* junk columns, tail, O..Op */
    tiles_config();
    for (int64_t c = begin; c < end; c++) {
        float *acc = f->acc + c * l->KK * l->Op * l->Cp;
        const int64_t n0 = c * g->N / f->nchunks, n1 = (c + 1) * g->N / f->nchunks;
        if (n1 == n0) memset(acc, 0, sizeof(float) * (size_t)(l->KK * l->Op * l->Cp));
        for (int64_t n = n0; n < n1; n += S) {
            int64_t m = min64(S, n1 - n);
            for (int64_t i = 0; i < m; i++) {
                pack_image(g, l, f->x + (n + i) * CHW, xp);
                pair_copies(l, f->J, xp, xe + 2 * i * xn, xe + (2 * i + 1) * xn);
                const uint16_t *gs = f->gy + (n + i) * OP;
                uint16_t *gd = gyv + i * gn;
                for (int64_t o = 0; o < g->O; o++)
                    for (int64_t oy = 0; oy < g->Ho; oy++)
                        memcpy(gd + o * l->Qb + oy * l->Wp, gs + (o * g->Ho + oy) * g->Wo,
                               sizeof(uint16_t) * (size_t)g->Wo);
            }
            for (int64_t ky = 0; ky < g->KH; ky++)
                for (int64_t kx = 0; kx < g->KW; kx++)
                    for (int64_t i0 = 0; i0 < m; i0 += G) {
                        const int64_t s = ky * l->Wp + kx, odd = s & 1, i1 = min64(m, i0 + G);
                        float *ak = acc + (ky * g->KW + kx) * l->Op * l->Cp;
                        for (int64_t o0 = 0; o0 < l->Op; o0 += 32)
                            for (int64_t c0 = 0; c0 < l->Cp; c0 += 32) {
                                float *cp = ak + o0 * l->Cp + c0;
                                if (n == n0 && i0 == 0) TILES_ZERO(); /* first visit */
                                else CT_AMX_LOAD22(cp, l->Cp);
                                for (int64_t i = i0; i < i1; i++) {
                                    const uint16_t *a = gyv + i * gn + o0 * l->Qb;
                                    const uint32_t *b =
                                        xe + (2 * i + odd) * xn + (s - odd) / 2 * l->Cp + c0;
                                    for (int64_t q0 = 0; q0 < l->Qb; q0 += 32)
                                        CT_AMX_STEP22(a + q0, a + 16 * l->Qb + q0, l->Qb * 2,
                                                      b + q0 / 2 * l->Cp,
                                                      b + q0 / 2 * l->Cp + 16, l->Cp * 4);
                                }
                                CT_AMX_STORE22(cp, l->Cp);
                            }
                    }
        }
    }
    _tile_release();
    ct_cpu_free(xp);
    ct_cpu_free(xe);
    ct_cpu_free(gyv);
}

/* Gather mode (small images): the output pixels of S images laid end to end (T of them,
 * rounded up to Tp), gy as gyc [Op][T] and, per (ky, kx), the input pixels each output
 * pixel reads as pairs of pixels x channels, Bk [KK][Tp / 2][Cp] u32 (an NHWC im2col in
 * VNNI pairs; zeros past T); then per (ky, kx), C (O x Cp) += gyc @ Bk[kk]. */
AMX static void bww_gather_chunks(void *vc, int64_t begin, int64_t end) {
    bww_ctx *f = vc;
    const ct_conv_amx_geom *g = f->g;
    const layout *l = &f->l;
    const int64_t CHW = g->C * g->H * g->W, P = g->Ho * g->Wo, xpn = l->Np * l->Cp;
    const int64_t acc_bytes = l->KK * l->Op * l->Cp * 4;
    const int64_t per_image = xpn * 2 + l->KK * P * l->Cp * 2 + l->Op * P * 2;
    const int64_t chunk = (g->N + f->nchunks - 1) / f->nchunks;
    int64_t S = max64(1, max64(1 << 20, min64(2 * acc_bytes, (int64_t)1 << 26)) / per_image);
    S = min64(S, chunk);
    const int64_t Tmax = round_up(S * P, 32);
    /* K blocks of Kb pixels whose gyc and Bk columns (~1 MiB) stay in L2 */
    const int64_t Kb = max64(32, (1 << 20) / ((l->Cp + l->Op) * 2) / 32 * 32);
    uint16_t *xp = ct_cpu_alloc(sizeof(uint16_t) * (size_t)(xpn * S));
    uint32_t *bk = ct_cpu_alloc(sizeof(uint32_t) * (size_t)(l->KK * Tmax / 2 * l->Cp));
    uint16_t *gyc = ct_cpu_alloc(sizeof(uint16_t) * (size_t)(l->Op * Tmax));
    uint16_t *zrow = ct_cpu_alloc(sizeof(uint16_t) * (size_t)l->Cp);
    if (!xp || !bk || !gyc || !zrow) {
        __atomic_store_n(&f->rc, -1, __ATOMIC_RELAXED);
        ct_cpu_free(xp);
        ct_cpu_free(bk);
        ct_cpu_free(gyc);
        ct_cpu_free(zrow);
        return;
    }
    memset(xp, 0, sizeof(uint16_t) * (size_t)(xpn * S));
    memset(gyc, 0, sizeof(uint16_t) * (size_t)(l->Op * Tmax)); /* rows O..Op */
    memset(zrow, 0, sizeof(uint16_t) * (size_t)l->Cp);
    tiles_config();
    for (int64_t c = begin; c < end; c++) {
        float *acc = f->acc + c * l->KK * l->Op * l->Cp;
        const int64_t n0 = c * g->N / f->nchunks, n1 = (c + 1) * g->N / f->nchunks;
        if (n1 == n0) memset(acc, 0, sizeof(float) * (size_t)(l->KK * l->Op * l->Cp));
        for (int64_t n = n0; n < n1; n += S) {
            const int64_t m = min64(S, n1 - n), T = m * P, Tp = round_up(T, 32);
            for (int64_t i = 0; i < m; i++) pack_image(g, l, f->x + (n + i) * CHW, xp + i * xpn);
            for (int64_t o = 0; o < g->O; o++) {
                uint16_t *d = gyc + o * Tmax;
                for (int64_t i = 0; i < m; i++)
                    memcpy(d + i * P, f->gy + ((n + i) * g->O + o) * P, sizeof(uint16_t) * (size_t)P);
                memset(d + T, 0, sizeof(uint16_t) * (size_t)(Tp - T));
            }
            for (int64_t kk = 0; kk < l->KK; kk++) {
                const int64_t s = kk / g->KW * l->Wp + kk % g->KW;
                uint32_t *d = bk + kk * (Tmax / 2) * l->Cp;
                for (int64_t p = 0; p < Tp; p += 2) {
                    const uint16_t *src[2];
                    for (int e = 0; e < 2; e++) {
                        int64_t q = p + e, i = q / P, oy = q % P / g->Wo, ox = q % P % g->Wo;
                        src[e] = q < T ? xp + i * xpn + (oy * l->Wp + ox + s) * l->Cp : zrow;
                    }
                    interleave_row(d + p / 2 * l->Cp, src[0], src[1], l->Cp);
                }
            }
            for (int64_t kk = 0; kk < l->KK; kk++) {
                const uint32_t *b = bk + kk * (Tmax / 2) * l->Cp;
                float *ak = acc + kk * l->Op * l->Cp;
                for (int64_t k0 = 0; k0 < Tp; k0 += Kb) {
                    const int64_t k1 = min64(Tp, k0 + Kb);
                    for (int64_t o0 = 0; o0 < l->Op; o0 += 32)
                        for (int64_t c0 = 0; c0 < l->Cp; c0 += 32) {
                            float *cp = ak + o0 * l->Cp + c0;
                            const uint16_t *a = gyc + o0 * Tmax;
                            if (n == n0 && k0 == 0) TILES_ZERO(); /* first visit */
                            else CT_AMX_LOAD22(cp, l->Cp);
                            for (int64_t q0 = k0; q0 < k1; q0 += 32)
                                CT_AMX_STEP22(a + q0, a + 16 * Tmax + q0, Tmax * 2,
                                              b + q0 / 2 * l->Cp + c0,
                                              b + q0 / 2 * l->Cp + c0 + 16, l->Cp * 4);
                            CT_AMX_STORE22(cp, l->Cp);
                        }
                }
            }
        }
    }
    _tile_release();
    ct_cpu_free(xp);
    ct_cpu_free(bk);
    ct_cpu_free(gyc);
    ct_cpu_free(zrow);
}

/* gw[o][c][kk] = the chunks' acc[kk][o][c] added in chunk order. */
typedef struct {
    const ct_conv_amx_geom *g;
    const layout *l;
    const float *acc;
    int64_t nchunks;
    float *gw;
} gather_ctx;

AMX static void gather_outputs(void *vc, int64_t begin, int64_t end) {
    const gather_ctx *p = vc;
    const ct_conv_amx_geom *g = p->g;
    const layout *l = p->l;
    const int64_t part = l->KK * l->Op * l->Cp, KK = l->KK;
    if (KK > MAXKK) {
        for (int64_t o = begin; o < end; o++)
            for (int64_t c = 0; c < g->C; c++)
                for (int64_t kk = 0; kk < KK; kk++) {
                    const float *a = p->acc + (kk * l->Op + o) * l->Cp + c;
                    float sum = a[0];
                    for (int64_t ch = 1; ch < p->nchunks; ch++) sum += a[ch * part];
                    p->gw[(o * g->C + c) * KK + kk] = sum;
                }
        return;
    }
    /* 16 channels x 16 taps at a time: the taps' vectors (lanes = channels) transposed,
     * each channel's taps stored at its place */
    for (int64_t o = begin; o < end; o++)
        for (int64_t c0 = 0; c0 < g->C; c0 += 16) {
            const int64_t nc = min64(16, g->C - c0);
            for (int64_t k0 = 0; k0 < KK; k0 += 16) {
                const int64_t nt = min64(16, KK - k0);
                __m512i v[16];
                for (int64_t t = 0; t < 16; t++) {
                    if (t >= nt) {
                        v[t] = _mm512_setzero_si512();
                        continue;
                    }
                    const float *a = p->acc + ((k0 + t) * l->Op + o) * l->Cp + c0;
                    __m512 sum = _mm512_loadu_ps(a);
                    for (int64_t ch = 1; ch < p->nchunks; ch++)
                        sum = _mm512_add_ps(sum, _mm512_loadu_ps(a + ch * part));
                    v[t] = _mm512_castps_si512(sum);
                }
                ct_transpose16(v); /* v[c]: channel c0 + c, lanes = taps k0.. */
                for (int64_t c = 0; c < nc; c++)
                    _mm512_mask_storeu_ps(p->gw + (o * g->C + c0 + c) * KK + k0,
                                          (__mmask16)((1u << nt) - 1), _mm512_castsi512_ps(v[c]));
            }
        }
}

int ct_conv_amx_backward_weight(const ct_conv_amx_geom *g, const uint16_t *x,
                                const uint16_t *gy, float *gw) {
    if (!ct_conv_amx_usable(g))
        return ct_error("conv weight gradient (AMX): not usable for this convolution or CPU");
    bww_ctx f = {.g = g, .l = layout_of(g), .x = x, .gy = gy, .nchunks = chunks_for(g->N)};
    f.J = f.l.Np / 2 - 1;
    f.acc = ct_cpu_alloc(sizeof(float) * (size_t)(f.nchunks * f.l.KK * f.l.Op * f.l.Cp));
    if (!f.acc) return -1;
    ct_parallel_for(f.nchunks, 1, use_gather(g, &f.l) ? bww_gather_chunks : bww_chunks, &f);
    if (!f.rc) {
        gather_ctx gc = {g, &f.l, f.acc, f.nchunks, gw};
        ct_parallel_for(g->O, 8, gather_outputs, &gc);
    }
    ct_cpu_free(f.acc);
    if (f.rc) return ct_error("conv weight gradient (AMX): out of memory");
    __atomic_add_fetch(&g_calls, 1, __ATOMIC_RELAXED);
    return 0;
}

#else /* no AMX kernels in this build */
int ct_conv_amx_usable(const ct_conv_amx_geom *g) {
    (void)g;
    (void)enabled;
    (void)forced_mode;
    return 0;
}
int ct_conv_amx_forward(const ct_conv_amx_geom *g, const uint16_t *x, const uint16_t *w,
                        int flipped, const float *bias, uint16_t *y) {
    (void)g, (void)x, (void)w, (void)flipped, (void)bias, (void)y;
    return 1;
}
int ct_conv_amx_backward_weight(const ct_conv_amx_geom *g, const uint16_t *x,
                                const uint16_t *gy, float *gw) {
    (void)g, (void)x, (void)gy, (void)gw;
    return 1;
}
#endif
