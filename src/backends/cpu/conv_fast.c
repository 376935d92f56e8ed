/* Fast float32 convolution drivers: slab building, weight packing, tiling and threads
 * around the ISA micro-kernels (conv_kern_template.h). See conv_fast.h for the method.
 *
 * Work split. Forward (and the input gradient, which is a forward convolution of gy):
 * tasks are (group of `nb` images, range of output-channel blocks); a task builds the
 * slabs of its images for a chunk of input channels (bounded so that they stay in L2),
 * then runs MR x NV tiles over them, output-channel block outer (its packed weights stay
 * in L1), pixel vectors inner. Channel chunks after the first accumulate into y.
 * Weight gradient: tasks are (image range, output-channel block range); each slot owns an
 * accumulator [O][Kg + 1] (the extra column is the bias gradient, from a slab of ones)
 * and the slots are summed at the end. */
#include "cpu_isa.h"
#include "conv_fast.h"
#include "core/error.h"
#include "core/parallel.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ workspace pool */

static pthread_mutex_t g_ws_mu = PTHREAD_MUTEX_INITIALIZER;
static cpu_ws_set *g_ws_free;

void cpu_ws_release(cpu_ws_set *s) {
    if (!s) return;
    pthread_mutex_lock(&g_ws_mu);
    s->next = g_ws_free;
    g_ws_free = s;
    pthread_mutex_unlock(&g_ws_mu);
}

cpu_ws_set *cpu_ws_acquire(int n, size_t bytes, const char *op) {
    pthread_mutex_lock(&g_ws_mu);
    cpu_ws_set *s = g_ws_free;
    if (s) g_ws_free = s->next;
    pthread_mutex_unlock(&g_ws_mu);
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s) return ct_error_null("%s: out of memory allocating a workspace", op);
    }
    if (s->n < n) {
        void **nb = realloc(s->buf, sizeof(void *) * (size_t)n);
        if (nb) s->buf = nb;
        size_t *nc = nb ? realloc(s->cap, sizeof(size_t) * (size_t)n) : NULL;
        if (nc) s->cap = nc;
        if (!nb || !nc) {
            cpu_ws_release(s);
            return ct_error_null("%s: out of memory allocating a workspace", op);
        }
        for (int i = s->n; i < n; i++) {
            s->buf[i] = NULL;
            s->cap[i] = 0;
        }
        s->n = n;
    }
    size_t want = (bytes + 63) / 64 * 64;
    if (want == 0) want = 64;
    for (int i = 0; i < n; i++) {
        if (s->cap[i] >= want) continue;
        free(s->buf[i]);
        s->buf[i] = aligned_alloc(64, want);
        s->cap[i] = s->buf[i] ? want : 0;
        if (!s->buf[i]) {
            cpu_ws_release(s);
            return ct_error_null("%s: out of memory allocating a %zu-byte workspace", op, want);
        }
    }
    return s;
}

/* Frees the pooled workspaces at exit so that leak checkers stay quiet. */
static void ws_free_all(void) {
    pthread_mutex_lock(&g_ws_mu);
    cpu_ws_set *s = g_ws_free;
    g_ws_free = NULL;
    pthread_mutex_unlock(&g_ws_mu);
    while (s) {
        cpu_ws_set *nx = s->next;
        for (int i = 0; i < s->n; i++) free(s->buf[i]);
        free(s->buf);
        free(s->cap);
        free(s);
        s = nx;
    }
}
static pthread_once_t g_ws_once = PTHREAD_ONCE_INIT;
static void ws_register(void) { atexit(ws_free_all); }

/* ---------------------------------------------------------------- selection */

#if defined(__x86_64__) || defined(__i386__)
static int g_have512, g_have2;
static pthread_once_t g_cpu_once = PTHREAD_ONCE_INIT;
static void probe_cpu(void) {
    __builtin_cpu_init();
    g_have512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                __builtin_cpu_supports("fma");
    g_have2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

/* The kernels to use, read on every call so that tests can switch paths:
 * CTORCH_CONV_REFERENCE=1 -> none (the im2col reference), CTORCH_CONV_ISA=avx2 -> AVX2. */
static const cf_isa *select_isa(void) {
    const char *r = getenv("CTORCH_CONV_REFERENCE");
    if (r && r[0] && strcmp(r, "0") != 0) return NULL;
#if defined(__x86_64__) || defined(__i386__)
    pthread_once(&g_cpu_once, probe_cpu);
    /* CTORCH_CPU_ISA=avx2 (all CPU kernels) or CTORCH_CONV_ISA=avx2 (these only) */
    const char *want = getenv("CTORCH_CONV_ISA");
    if ((want && !strcmp(want, "avx2")) || ct_cpu_isa_level() < CT_ISA_AVX512)
        return g_have2 && ct_cpu_isa_level() >= CT_ISA_AVX2 ? &cf_isa_avx2 : NULL;
    if (g_have512) return &cf_isa_avx512;
    if (g_have2) return &cf_isa_avx2;
#endif
    return NULL;
}

int cf_available(void) { return select_isa() != NULL; }
const cf_isa *cf_current_isa(void) { return select_isa(); }

const char *cf_isa_name(void) {
    const cf_isa *i = select_isa();
    return i ? i->name : "reference";
}

/* ------------------------------------------------------------------- slabs */

/* Slab geometry of a convolution for vectors of VL lanes. */
typedef struct {
    const cf_geom *g;
    int64_t Cg, Og, KK, Kg, P, VP;
    int64_t nsh;  /* slabs per channel */
    int64_t R;    /* rows per slab */
    int64_t L;    /* floats per slab (rounded, with slack) */
    int64_t VL;
} slab_geom;

static int64_t rup(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

static void slab_init(slab_geom *s, const cf_geom *g, int64_t VL) {
    s->g = g;
    s->VL = VL;
    s->Cg = g->C / g->G;
    s->Og = g->O / g->G;
    s->KK = g->kh * g->kw;
    s->Kg = s->Cg * s->KK;
    s->P = g->Ho * g->Wo;
    s->VP = (s->P + VL - 1) / VL;
    if (g->sh == 1) {
        s->nsh = g->kw;
        s->R = g->Ho + (g->kh - 1) * g->dh;
    } else {
        s->nsh = g->kh * g->kw;
        s->R = g->Ho;
    }
    s->L = rup(s->R * g->Wo, VL) + VL;
}

/* Slabs of one image for channels [c0, c1) of group gi into buf ([nsh][c1-c0][L]); when
 * ones != 0 one more slab of ones follows. x is the image [C][H][W]. */
static void build_slabs(const cf_isa *isa, const slab_geom *s, const float *x, int64_t gi,
                        int64_t c0, int64_t c1, float *buf, int ones) {
    const cf_geom *g = s->g;
    int64_t cc = c1 - c0, Wo = g->Wo;
    for (int64_t j = 0; j < s->nsh; j++) {
        int64_t ky = g->sh == 1 ? 0 : j / g->kw, kx = g->sh == 1 ? j : j % g->kw;
        int64_t shift = kx * g->dw - g->pw;
        for (int64_t c = 0; c < cc; c++) {
            const float *xc = x + (gi * s->Cg + c0 + c) * g->H * g->W;
            float *d = buf + (j * cc + c) * s->L;
            if (g->sh == 1)
                isa->copy_slab(d, xc, g->H, g->W, s->R, Wo, 1, -g->ph, shift, g->sw, s->L);
            else
                isa->copy_slab(d, xc, g->H, g->W, s->R, Wo, g->sh, ky * g->dh - g->ph, shift,
                               g->sw, s->L);
        }
    }
    if (ones) {
        float *d = buf + s->nsh * cc * s->L;
        for (int64_t i = 0; i < s->L; i++) d[i] = 1.0f;
    }
}

/* Row offsets (in floats, from an image's slab base) of the local K rows of a channel
 * chunk of cc channels: k = (c*kh + ky)*kw + kx. */
static void build_koff(const slab_geom *s, int64_t cc, int64_t *koff) {
    const cf_geom *g = s->g;
    for (int64_t c = 0; c < cc; c++)
        for (int64_t ky = 0; ky < g->kh; ky++)
            for (int64_t kx = 0; kx < g->kw; kx++) {
                int64_t j = g->sh == 1 ? kx : ky * g->kw + kx;
                int64_t row = g->sh == 1 ? ky * g->dh * g->Wo : 0;
                koff[(c * g->kh + ky) * g->kw + kx] = (j * cc + c) * s->L + row;
            }
}

/* Channel chunk and image-group size: the slabs of nb images for cc channels should fit
 * in `budget` bytes; nb is raised until a group has at least min_vec pixel vectors. */
static void plan_chunks(const slab_geom *s, int64_t nimg_max, int64_t min_vec, int64_t nv,
                        size_t budget, int64_t *nb, int64_t *cc) {
    int64_t b = (min_vec + s->VP - 1) / s->VP;
    if (b < 1) b = 1;
    /* a whole number of nv-vector tiles per group when that costs at most nv images */
    if (nv > 1 && (b * s->VP) % nv != 0) {
        int64_t b2 = b;
        while ((b2 * s->VP) % nv != 0 && b2 < b + nv) b2++;
        if ((b2 * s->VP) % nv == 0) b = b2;
    }
    if (b > nimg_max) b = nimg_max > 0 ? nimg_max : 1;
    int64_t per_c = s->nsh * s->L * (int64_t)sizeof(float) * b;
    int64_t c = per_c > 0 ? (int64_t)budget / per_c : s->Cg;
    if (c < 1) c = 1;
    if (c > s->Cg) c = s->Cg;
    *nb = b;
    *cc = c;
}

#define SLAB_BUDGET ((size_t)512 << 10)

/* ------------------------------------------------------------------ forward */

typedef struct {
    const cf_isa *isa;
    const cf_geom *g;
    slab_geom s;
    const float *x, *bias, *A;
    float *y;
    int relu;
    int pool;               /* y is [N][O][Ho/2][16]: ReLU + 2x2 pooling in the epilogue */
    uint8_t *codes;
    int64_t MR, nob;        /* output-channel block size and blocks per group */
    int64_t nb, cc;         /* images per group, channels per chunk */
    int64_t ngrp, osplit;   /* image groups, output-block ranges per group */
    int64_t ntasks;
    int nslots;
    size_t img_floats;      /* slab floats per image */
    cpu_ws_set *ws;
} fwd_ctx;

/* Packed weights of group gi, block ob: [Kg][mr] at A + (gi*Og + ob*MR)*Kg. */
static void pack_weights(const slab_geom *s, int64_t MR, const float *w, float *A) {
    const cf_geom *g = s->g;
    for (int64_t gi = 0; gi < g->G; gi++)
        for (int64_t o0 = 0; o0 < s->Og; o0 += MR) {
            int64_t mr = s->Og - o0 < MR ? s->Og - o0 : MR;
            const float *src = w + (gi * s->Og + o0) * s->Kg;
            float *dst = A + (gi * s->Og + o0) * s->Kg;
            for (int64_t k = 0; k < s->Kg; k++)
                for (int64_t m = 0; m < mr; m++) dst[k * mr + m] = src[m * s->Kg + k];
        }
}

static void fwd_task(fwd_ctx *c, int64_t t, char *ws) {
    const cf_geom *g = c->g;
    const slab_geom *s = &c->s;
    const int64_t VL = s->VL, P = s->P, VP = s->VP, KK = s->KK;
    int64_t grp = t / c->osplit, os = t % c->osplit;
    int64_t n0 = grp * c->nb, n1 = n0 + c->nb < g->N ? n0 + c->nb : g->N, nimg = n1 - n0;
    int64_t ob0 = c->nob * os / c->osplit, ob1 = c->nob * (os + 1) / c->osplit;
    if (ob0 >= ob1) return;
    float *buf = (float *)ws;
    int64_t *koff = (int64_t *)(ws + c->img_floats * (size_t)c->nb * sizeof(float));
    int nvm = c->isa->nv_max;
    for (int64_t gi = 0; gi < g->G; gi++)
        for (int64_t c0 = 0; c0 < s->Cg; c0 += c->cc) {
            int64_t c1 = c0 + c->cc < s->Cg ? c0 + c->cc : s->Cg, kc = (c1 - c0) * KK;
            for (int64_t i = 0; i < nimg; i++)
                build_slabs(c->isa, s, c->x + (n0 + i) * g->C * g->H * g->W, gi, c0, c1,
                            buf + (size_t)i * c->img_floats, 0);
            build_koff(s, c1 - c0, koff);
            int last = c1 == s->Cg;
            if (c->pool) { /* one channel chunk (checked by the caller), row pairs */
                int64_t PP = (g->Ho / 2) * 16;
                for (int64_t ob = ob0; ob < ob1; ob++) {
                    int64_t o0 = ob * c->MR, mr = s->Og - o0 < c->MR ? s->Og - o0 : c->MR;
                    cf_fwd_args a = {.K = kc,
                                     .A = c->A + (gi * s->Og + o0) * s->Kg,
                                     .koff = koff,
                                     .bias = c->bias ? c->bias + gi * s->Og + o0 : NULL,
                                     .ldp = PP};
                    for (int64_t i = 0; i < nimg; i++)
                        for (int64_t rp = 0; rp < g->Ho / 2; rp++) {
                            for (int v = 0; v < 4; v++)
                                a.bp[v] = buf + (size_t)i * c->img_floats + rp * 64 + 16 * v;
                            int64_t po = ((n0 + i) * g->O + gi * s->Og + o0) * PP + rp * 16;
                            a.pyp = c->y + po;
                            a.pcp = c->codes ? c->codes + po : NULL;
                            c->isa->fwd_pool((int)mr, &a);
                        }
                }
                continue;
            }
            for (int64_t ob = ob0; ob < ob1; ob++) {
                int64_t o0 = ob * c->MR, mr = s->Og - o0 < c->MR ? s->Og - o0 : c->MR;
                cf_fwd_args a = {.K = kc,
                                 .A = c->A + (gi * s->Og + o0) * s->Kg + c0 * KK * mr,
                                 .koff = koff,
                                 .ldy = P,
                                 .bias = c0 == 0 && c->bias ? c->bias + gi * s->Og + o0 : NULL,
                                 .accumulate = c0 > 0,
                                 .relu = c->relu && last};
                int64_t nq = nimg * VP;
                for (int64_t q0 = 0; q0 < nq; q0 += nvm) {
                    int nv = nq - q0 < nvm ? (int)(nq - q0) : nvm;
                    for (int v = 0; v < nv; v++) {
                        int64_t q = q0 + v, ni = q / VP, pv = (q % VP) * VL;
                        a.bp[v] = buf + (size_t)ni * c->img_floats + pv;
                        a.yp[v] = c->y + ((n0 + ni) * g->O + gi * s->Og + o0) * P + pv;
                        a.nvalid[v] = P - pv < VL ? (int)(P - pv) : (int)VL;
                    }
                    c->isa->fwd((int)mr, nv, &a);
                }
            }
        }
}

static void fwd_range(void *vctx, int64_t sb, int64_t se) {
    fwd_ctx *c = vctx;
    int64_t t0 = c->ntasks * sb / c->nslots, t1 = c->ntasks * se / c->nslots;
    for (int64_t t = t0; t < t1; t++) fwd_task(c, t, c->ws->buf[sb]);
}

/* Winograd F(2x2, 3x3) pays when there are enough channels to amortise its transforms.
 * CTORCH_CONV_WINOGRAD=0 turns it off. */
static int use_winograd(const cf_isa *isa, const cf_geom *g) {
    if (isa != &cf_isa_avx512 && isa != &cf_isa_avx2) return 0;
    if (!(g->kh == 3 && g->kw == 3 && g->sh == 1 && g->sw == 1 && g->ph == 1 && g->pw == 1 &&
          g->dh == 1 && g->dw == 1 && g->G == 1 && g->C >= 16 && g->O >= 16))
        return 0;
    /* the transformed weights (and weight gradients) take 16*O*C floats: at most 64 MB */
    if (g->O * g->C > ((int64_t)1 << 20)) return 0;
    const char *e = getenv("CTORCH_CONV_WINOGRAD");
    return !(e && !strcmp(e, "0"));
}

/* The Winograd weight gradient (measured 1.1x-1.9x faster than the direct kernels on
 * the simple_cnn and ResNet-18 shapes); CTORCH_CONV_WINOGRAD_WGRAD=0 turns it off. */
static int wgrad_winograd(const cf_geom *g) {
    (void)g;
    const char *e = getenv("CTORCH_CONV_WINOGRAD_WGRAD");
    return !(e && e[0] && !strcmp(e, "0"));
}

int cf_relu_pool_fusable(const cf_geom *g, const ct_pool_params *pp) {
    const cf_isa *isa = select_isa();
    return isa && use_winograd(isa, g) && pp->kernel[0] == 2 && pp->kernel[1] == 2 &&
           pp->stride[0] == 2 && pp->stride[1] == 2 && pp->padding[0] == 0 &&
           pp->padding[1] == 0 && pp->dilation[0] <= 1 && pp->dilation[1] <= 1 &&
           g->Ho % 2 == 0 && g->Wo % 2 == 0 && !getenv("CTORCH_POOL_REFERENCE");
}

static int direct_forward(const cf_isa *isa, const cf_geom *g, const float *x, const float *w,
                          const float *bias, float *y, int relu, int pool, uint8_t *codes) {
    fwd_ctx c = {.isa = isa, .g = g, .x = x, .bias = bias, .y = y, .relu = relu, .pool = pool,
                 .codes = codes};
    slab_init(&c.s, g, isa->vl);
    const slab_geom *s = &c.s;
    c.MR = pool ? 6 : isa->mr_max;
    c.nob = (s->Og + c.MR - 1) / c.MR;
    plan_chunks(s, g->N, 4 * isa->nv_max, isa->nv_max, SLAB_BUDGET, &c.nb, &c.cc);
    if (pool && c.cc < s->Cg) { /* the epilogue needs whole sums: one chunk */
        c.nb = 1;
        c.cc = s->Cg;
    }
    c.img_floats = (size_t)(s->nsh * c.cc * s->L);
    c.ngrp = (g->N + c.nb - 1) / c.nb;
    int nth = ct_plan_threads();
    double flops = 2.0 * (double)g->N * (double)g->O * (double)s->P * (double)s->Kg;
    if (flops < 2e6) nth = 1;
    c.osplit = 1;
    if (c.ngrp < 2 * (int64_t)nth && nth > 1) {
        int64_t want = (2 * (int64_t)nth + c.ngrp - 1) / c.ngrp;
        c.osplit = want < c.nob ? want : c.nob;
    }
    c.ntasks = c.ngrp * c.osplit;
    c.nslots = (int)(c.ntasks < nth ? c.ntasks : nth);
    cpu_ws_set *wp = cpu_ws_acquire(1, sizeof(float) * (size_t)(g->O * s->Kg), "conv2d");
    if (!wp) return -1;
    size_t slot_bytes = c.img_floats * (size_t)c.nb * sizeof(float) +
                        sizeof(int64_t) * (size_t)(c.cc * s->KK + 1);
    c.ws = cpu_ws_acquire(c.nslots, slot_bytes, "conv2d");
    if (!c.ws) {
        cpu_ws_release(wp);
        return -1;
    }
    pack_weights(s, c.MR, w, wp->buf[0]);
    c.A = wp->buf[0];
    ct_parallel_for(c.nslots, 1, fwd_range, &c);
    cpu_ws_release(c.ws);
    cpu_ws_release(wp);
    return 0;
}

static int forward_impl(const cf_isa *isa, const cf_geom *g, const float *x, const float *w,
                        const float *bias, float *y, int relu) {
    pthread_once(&g_ws_once, ws_register);
    if (use_winograd(isa, g)) return cf_winograd_forward(g, x, w, bias, y, relu);
    return direct_forward(isa, g, x, w, bias, y, relu, 0, NULL);
}

int cf_direct_pool_ok(const cf_geom *g, const ct_pool_params *pp) {
    const cf_isa *isa = select_isa();
    return isa && isa->fwd_pool && g->Wo == 32 && g->Ho >= 2 && g->Ho % 2 == 0 &&
           pp->kernel[0] == 2 && pp->kernel[1] == 2 && pp->stride[0] == 2 &&
           pp->stride[1] == 2 && pp->padding[0] == 0 && pp->padding[1] == 0 &&
           pp->dilation[0] <= 1 && pp->dilation[1] <= 1 && !getenv("CTORCH_POOL_REFERENCE");
}

int cf_forward_relu_pool(const cf_geom *g, const float *x, const float *w, const float *bias,
                         float *yp, uint8_t *codes) {
    const cf_isa *isa = select_isa();
    if (!isa || !isa->fwd_pool) return ct_error("conv2d: fused pooling not available");
    pthread_once(&g_ws_once, ws_register);
    return direct_forward(isa, g, x, w, bias, yp, 1, 1, codes);
}

int cf_forward(const cf_geom *g, const float *x, const float *w, const float *bias, float *y,
               int relu) {
    const cf_isa *isa = select_isa();
    if (!isa) return ct_error("conv2d: fast path not available");
    return forward_impl(isa, g, x, w, bias, y, relu);
}

/* ----------------------------------------------------------- input gradient */

int cf_backward_input_ok(const cf_geom *g) {
    return g->sh == 1 && g->sw == 1 && g->dh * (g->kh - 1) >= g->ph &&
           g->dw * (g->kw - 1) >= g->pw;
}

typedef struct {
    const float *w;
    float *wt;
    int64_t Og, Cg, kh, kw;
} flip_ctx;

/* rows [b, e) of (group, output channel): wt[gi*Cg + c][o] = w[gi*Og + o][c] flipped */
static void flip_range(void *vctx, int64_t b, int64_t e) {
    const flip_ctx *f = vctx;
    const int64_t kh = f->kh, kw = f->kw;
    for (int64_t r = b; r < e; r++) {
        int64_t gi = r / f->Og, o = r % f->Og;
        for (int64_t c = 0; c < f->Cg; c++) {
            const float *src = f->w + (((gi * f->Og + o) * f->Cg + c) * kh) * kw;
            float *dst = f->wt + (((gi * f->Cg + c) * f->Og + o) * kh) * kw;
            for (int64_t i = 0; i < kh; i++)
                for (int64_t j = 0; j < kw; j++)
                    dst[i * kw + j] = src[(kh - 1 - i) * kw + (kw - 1 - j)];
        }
    }
}

int cf_backward_input(const cf_geom *g, const float *gy, const float *w, float *gx) {
    const cf_isa *isa = select_isa();
    if (!isa) return ct_error("conv2d backward: fast path not available");
    if (!cf_backward_input_ok(g)) return ct_error("conv2d backward: unsupported geometry");
    pthread_once(&g_ws_once, ws_register);
    /* gx = conv(gy, w'), w'[gi*Cg + c][o][ky][kx] = w[gi*Og + o][c][kh-1-ky][kw-1-kx],
     * stride 1, padding dil*(k-1) - pad. */
    int64_t Cg = g->C / g->G, Og = g->O / g->G, kh = g->kh, kw = g->kw;
    cf_geom t = {.N = g->N, .C = g->O, .H = g->Ho, .W = g->Wo, .O = g->C, .Ho = g->H,
                 .Wo = g->W, .kh = kh, .kw = kw, .G = g->G, .sh = 1, .sw = 1,
                 .ph = g->dh * (kh - 1) - g->ph, .pw = g->dw * (kw - 1) - g->pw,
                 .dh = g->dh, .dw = g->dw};
    cpu_ws_set *ws = cpu_ws_acquire(1, sizeof(float) * (size_t)(g->O * Cg * kh * kw),
                                    "conv2d backward");
    if (!ws) return -1;
    flip_ctx fc = {.w = w, .wt = ws->buf[0], .Og = Og, .Cg = Cg, .kh = kh, .kw = kw};
    ct_parallel_for(g->G * Og, (16384 + Cg * kh * kw - 1) / (Cg * kh * kw), flip_range, &fc);
    int rc = forward_impl(isa, &t, gy, fc.wt, NULL, gx, 0);
    cpu_ws_release(ws);
    return rc;
}

/* ---------------------------------------------------------- weight gradient */

typedef struct {
    const cf_isa *isa;
    const cf_geom *g;
    slab_geom s;
    const float *gy, *x;
    int64_t Kx;             /* accumulator row length: Kg (+1 with the bias) */
    int bias;
    int64_t nb, cc;
    int64_t nimg_split, osplit, nob, MR;
    int64_t ntasks;
    int nslots;
    size_t img_floats, acc_floats;
    cpu_ws_set *ws;
} wgt_ctx;

static void wgt_task(wgt_ctx *c, int64_t t, char *ws) {
    const cf_geom *g = c->g;
    const slab_geom *s = &c->s;
    const int64_t P = s->P, KK = s->KK;
    int64_t is = t / c->osplit, os = t % c->osplit;
    int64_t nA = g->N * is / c->nimg_split, nB = g->N * (is + 1) / c->nimg_split;
    int64_t ob0 = c->nob * os / c->osplit, ob1 = c->nob * (os + 1) / c->osplit;
    if (nA >= nB || ob0 >= ob1) return;
    float *acc = (float *)ws;
    float *buf = acc + c->acc_floats;
    int64_t *koff = (int64_t *)(buf + c->img_floats * (size_t)c->nb);
    const float *gyp[64];
    const float *bb[64];
    int wm = c->isa->wm_max, wj = c->isa->wj_max;
    for (int64_t n0 = nA; n0 < nB; n0 += c->nb) {
        int64_t n1 = n0 + c->nb < nB ? n0 + c->nb : nB, nimg = n1 - n0;
        for (int64_t gi = 0; gi < g->G; gi++)
            for (int64_t c0 = 0; c0 < s->Cg; c0 += c->cc) {
                int64_t c1 = c0 + c->cc < s->Cg ? c0 + c->cc : s->Cg, kc = (c1 - c0) * KK;
                int ones = c->bias && c1 == s->Cg;
                for (int64_t i = 0; i < nimg; i++) {
                    build_slabs(c->isa, s, c->x + (n0 + i) * g->C * g->H * g->W, gi, c0, c1,
                                buf + (size_t)i * c->img_floats, ones);
                    bb[i] = buf + (size_t)i * c->img_floats;
                }
                build_koff(s, c1 - c0, koff);
                if (ones) koff[kc++] = s->nsh * (c1 - c0) * s->L;
                for (int64_t ob = ob0; ob < ob1; ob++) {
                    int64_t o0 = ob * c->MR, mr = s->Og - o0 < c->MR ? s->Og - o0 : c->MR;
                    for (int64_t i = 0; i < nimg; i++)
                        gyp[i] = c->gy + ((n0 + i) * g->O + gi * s->Og + o0) * P;
                    for (int64_t k0 = 0; k0 < kc; k0 += wj) {
                        int nj = kc - k0 < wj ? (int)(kc - k0) : wj;
                        cf_wgt_args a = {.nimg = (int)nimg,
                                         .gy = gyp,
                                         .ldg = P,
                                         .bb = bb,
                                         .koff = koff + k0,
                                         .P = P,
                                         .gw = acc + (gi * s->Og + o0) * c->Kx + c0 * KK + k0,
                                         .ldw = c->Kx};
                        (void)wm;
                        c->isa->wgt((int)mr, nj, &a);
                    }
                }
            }
    }
}

static void wgt_range(void *vctx, int64_t sb, int64_t se) {
    wgt_ctx *c = vctx;
    float *acc = c->ws->buf[sb];
    memset(acc, 0, sizeof(float) * c->acc_floats);
    int64_t t0 = c->ntasks * sb / c->nslots, t1 = c->ntasks * se / c->nslots;
    for (int64_t t = t0; t < t1; t++) wgt_task(c, t, c->ws->buf[sb]);
}

typedef struct {
    cpu_ws_set *ws;
    int nslots;
    int64_t Kg, Kx;
    float *gw, *gb;
} wsum_ctx;

static void wsum_range(void *vctx, int64_t ob, int64_t oe) {
    const wsum_ctx *c = vctx;
    for (int64_t o = ob; o < oe; o++) {
        float *dw = c->gw + o * c->Kg;
        const float *a0 = (const float *)c->ws->buf[0] + o * c->Kx;
        memcpy(dw, a0, sizeof(float) * (size_t)c->Kg);
        float b = c->gb ? a0[c->Kg] : 0.0f;
        for (int sl = 1; sl < c->nslots; sl++) {
            const float *a = (const float *)c->ws->buf[sl] + o * c->Kx;
            for (int64_t k = 0; k < c->Kg; k++) dw[k] += a[k];
            if (c->gb) b += a[c->Kg];
        }
        if (c->gb) c->gb[o] = b;
    }
}

int cf_backward_weight(const cf_geom *g, const float *gy, const float *x, float *gw, float *gb) {
    const cf_isa *isa = select_isa();
    if (!isa) return ct_error("conv2d backward: fast path not available");
    pthread_once(&g_ws_once, ws_register);
    if (use_winograd(isa, g) && wgrad_winograd(g))
        return cf_winograd_backward_weight(g, gy, x, gw, gb);
    wgt_ctx c = {.isa = isa, .g = g, .gy = gy, .x = x, .bias = gb != NULL};
    slab_init(&c.s, g, isa->vl);
    const slab_geom *s = &c.s;
    c.Kx = s->Kg + (gb ? 1 : 0);
    c.MR = isa->wm_max;
    c.nob = (s->Og + c.MR - 1) / c.MR;
    int nth = ct_plan_threads();
    double flops = 2.0 * (double)g->N * (double)g->O * (double)s->P * (double)s->Kg;
    if (flops < 2e6) nth = 1;
    /* Images split over the slots when there are enough, else output-channel blocks. */
    c.nimg_split = g->N < nth ? (g->N > 0 ? g->N : 1) : nth;
    c.osplit = 1;
    if (c.nimg_split < nth) {
        int64_t want = (nth + c.nimg_split - 1) / c.nimg_split;
        c.osplit = want < c.nob ? want : c.nob;
    }
    c.ntasks = c.nimg_split * c.osplit;
    c.nslots = (int)(c.ntasks < nth ? c.ntasks : nth);
    int64_t per_slot_imgs = (g->N + c.nimg_split - 1) / c.nimg_split;
    plan_chunks(s, per_slot_imgs < 64 ? per_slot_imgs : 64, 64, 1, SLAB_BUDGET, &c.nb, &c.cc);
    c.img_floats = (size_t)(s->nsh * c.cc * s->L + s->L);
    c.acc_floats = (size_t)rup(g->O * c.Kx, 16);
    /* per-slot accumulators of a huge weight: leave it to the reference path */
    if (c.acc_floats * sizeof(float) * (size_t)c.nslots > ((size_t)256 << 20)) return 1;
    size_t slot_bytes = sizeof(float) * (c.acc_floats + c.img_floats * (size_t)c.nb) +
                        sizeof(int64_t) * (size_t)(c.cc * s->KK + 1);
    c.ws = cpu_ws_acquire(c.nslots, slot_bytes, "conv2d backward");
    if (!c.ws) return -1;
    ct_parallel_for(c.nslots, 1, wgt_range, &c);
    /* Sum the slots' accumulators into gw and gb. */
    wsum_ctx sc = {.ws = c.ws, .nslots = c.nslots, .Kg = s->Kg, .Kx = c.Kx, .gw = gw, .gb = gb};
    ct_parallel_for(g->O, (16384 + c.Kx - 1) / c.Kx, wsum_range, &sc);
    cpu_ws_release(c.ws);
    return 0;
}
