/* Fast float32 convolution on the CPU (internal to the CPU backend).
 *
 * Method ("shifted copies" implicit GEMM, NCHW in and out, no layout change visible
 * outside): for a batch slice and a range of input channels, each input plane is copied
 * into a few zero-padded "slabs" such that every GEMM row (c, ky, kx) of the im2col
 * matrix is a contiguous run of a slab:
 *   stride_h == 1: kw slabs per channel (one per kx), R = H + 2*pad_h rows of Wo columns;
 *                  im2col row (c, ky, kx), pixel p = slab(kx, c)[p + ky*dil_h*Wo]
 *   stride_h  > 1: kh*kw slabs per channel (the im2col rows themselves).
 * The output tile y[o0:o0+MR, p:p+VL*NV] is then sum_k A[k][m] * row_k[p...] with A the
 * weights packed [K][MR] and the rows found through an offset table: register-blocked
 * FMAs over unaligned vector loads, no masks in the inner loop, bias (and ReLU) in the
 * epilogue. The weight gradient is the dot product of gy rows with the same rows
 * (accumulated over all pixels of several images, then reduced); the input gradient
 * of a stride-1 convolution is the forward convolution of gy with the flipped,
 * transposed weights. Kernels exist for AVX-512 and AVX2+FMA, chosen at run time.
 *
 * The reference path (im2col + OpenBLAS in cpu_conv.c) stays: float64, strided input
 * gradients, CPUs without AVX2, and CTORCH_CONV_REFERENCE=1 use it. */
#ifndef CT_CPU_CONV_FAST_H
#define CT_CPU_CONV_FAST_H

#include "core/backend.h"

#include <stddef.h>
#include <stdint.h>

/* Geometry of one convolution as the fast path sees it (input x [N, C, H, W], weight
 * [O, C/G, kh, kw], output [N, O, Ho, Wo]). */
typedef struct {
    int64_t N, C, H, W, O, Ho, Wo, kh, kw, G;
    int64_t sh, sw, ph, pw, dh, dw;
} cf_geom;

/* 1 when the fast kernels may run here (float32 path, CPU support, not disabled). */
int cf_available(void);
/* Which kernels run: "avx512", "avx2" or "reference". */
const char *cf_isa_name(void);

/* y = conv(x, w) + bias, then ReLU when relu != 0. All float32, contiguous, NCHW. */
int cf_forward(const cf_geom *g, const float *x, const float *w, const float *bias, float *y,
               int relu);
/* gx = conv2d input gradient; only for stride 1 and dilation*(k-1) >= padding (see
 * cf_backward_input_ok). */
/* yp = max_pool2d(relu(conv(x, w) + bias)) for a 2x2 stride-2 pooling when the direct
 * kernels can pool in their epilogue (cf_direct_pool_ok: output rows of 32 pixels, even
 * height, AVX-512). codes as cpu_max_pool2d_codes_forward (may be NULL). */
int cf_direct_pool_ok(const cf_geom *g, const ct_pool_params *pp);
int cf_forward_relu_pool(const cf_geom *g, const float *x, const float *w, const float *bias,
                         float *yp, uint8_t *codes);
int cf_backward_input_ok(const cf_geom *g);
int cf_backward_input(const cf_geom *g, const float *gy, const float *w, float *gx);
/* gw = weight gradient; gb (may be NULL) = bias gradient (sum of gy over N, H, W).
 * Returns 1 (nothing done) when the per-thread accumulators would be too large. */
int cf_backward_weight(const cf_geom *g, const float *gy, const float *x, float *gw, float *gb);

/* Winograd F(2x2, 3x3) forward (conv_winograd.c): 3x3, stride 1, padding 1, dilation 1,
 * groups 1, AVX-512 CPUs only. */
int cf_winograd_forward(const cf_geom *g, const float *x, const float *w, const float *bias,
                        float *y, int relu);
int cf_winograd_backward_weight(const cf_geom *g, const float *gy, const float *x, float *gw,
                                float *gb);
/* Winograd forward fused with ReLU and 2x2 stride-2 max pooling (even H and W): yp
 * [N][O][H/2][W/2], codes (uint8, yp's shape, may be NULL) as cpu_max_pool2d_codes_forward. */
int cf_relu_pool_fusable(const cf_geom *g, const ct_pool_params *pp);
int cf_winograd_forward_relu_pool(const cf_geom *g, const float *x, const float *w,
                                  const float *bias, float *yp, uint8_t *codes);

/* Workspace pool shared with the reference path: a set of n buffers of at least
 * `bytes` bytes each, 64-byte aligned, reused across calls. */
typedef struct cpu_ws_set {
    struct cpu_ws_set *next;
    int n;
    void **buf;
    size_t *cap;
} cpu_ws_set;
cpu_ws_set *cpu_ws_acquire(int n, size_t bytes, const char *op);
void cpu_ws_release(cpu_ws_set *s);

/* Forward with an optional fused ReLU (the kernel-table entries cpu_conv2d_forward,
 * cpu_conv2d_backward_weight and cpu_conv2d_relu_max_pool2d_forward are in cpu_conv.c and
 * take the fast path where it applies, else the reference kernels). */
int cpu_conv2d_forward_ex(ct_tensor *y, const ct_tensor *x, const ct_tensor *w,
                          const ct_tensor *bias, const ct_conv_params *p, int relu);

/* ------------------------------------------------------------- ISA kernels */

/* One output tile of the forward kernel: rows [o0, o0+mr) x nv vectors of VL pixels. */
typedef struct {
    int64_t K;            /* reduction length */
    const float *A;       /* packed weights [K][mr] */
    const int64_t *koff;  /* row k starts at bp[v] + koff[k] */
    const float *bp[8];   /* per vector: slab base + pixel offset */
    float *yp[8];         /* per vector: output row o0 at this pixel */
    int nvalid[8];        /* valid lanes per vector (VL when full) */
    int64_t ldy;          /* output row stride (Ho*Wo) */
    const float *bias;    /* mr values or NULL (used when !accumulate) */
    int accumulate;       /* add to y instead of overwriting */
    int relu;
    /* fwd_pool only: pooled output and window codes of row o0 (may be NULL), plane stride */
    float *pyp;
    uint8_t *pcp;
    int64_t ldp;
} cf_fwd_args;

/* One weight-gradient tile: gw[o0+m][k0+j] += sum over images i and pixels p of
 * gy_i[m][p] * row_{k0+j}(i)[p]. */
typedef struct {
    int nimg;
    const float *const *gy;  /* per image: gy row o0 */
    int64_t ldg;             /* gy row stride (Ho*Wo) */
    const float *const *bb;  /* per image: slab base */
    const int64_t *koff;     /* nj offsets (koff[k0..]) */
    int64_t P;               /* pixels per image */
    float *gw;               /* gw row o0, column k0 */
    int64_t ldw;
} cf_wgt_args;

typedef struct {
    const char *name;
    int vl, mr_max, nv_max; /* forward tile limits */
    int wm_max, wj_max;     /* weight-gradient tile limits */
    void (*fwd)(int mr, int nv, const cf_fwd_args *a);
    void (*wgt)(int mr, int nj, const cf_wgt_args *a);
    /* Optional (NULL when absent): a forward tile of mr <= 6 channels x 4 vectors = two
     * output rows of 32 pixels, with bias, then ReLU and 2x2 stride-2 max pooling into
     * pyp/pcp (codes as cpu_max_pool2d_codes_forward); nothing is written to yp. */
    void (*fwd_pool)(int mr, const cf_fwd_args *a);
    /* One slab: rows r in [0, R) of dst (Wo floats each) are input rows ih = r*rs + r0
     * of the plane xc [H][W] (zero outside), columns iw = ow*sw + s (zero outside); then
     * zeros up to dst[L-1]. Row writes may spill up to VL-1 floats past their end. */
    void (*copy_slab)(float *dst, const float *xc, int64_t H, int64_t W, int64_t R, int64_t Wo,
                      int64_t rs, int64_t r0, int64_t s, int64_t sw, int64_t L);
} cf_isa;

extern const cf_isa cf_isa_avx512;
extern const cf_isa cf_isa_avx2;
/* The kernels conv_fast.c uses on this call (CTORCH_CPU_ISA, CTORCH_CONV_ISA and
 * CTORCH_CONV_REFERENCE honoured), or NULL for the reference path. */
const cf_isa *cf_current_isa(void);

#endif
