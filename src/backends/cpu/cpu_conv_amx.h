/* bfloat16 stride-1 convolutions as implicit GEMMs on AMX tiles (cpu_conv_amx.c). */
#ifndef CT_CPU_CONV_AMX_H
#define CT_CPU_CONV_AMX_H

#include <stdint.h>

/* A stride-1, dilation-1, ungrouped convolution: x [N, C, H, W] -> y [N, O, Ho, Wo]. */
typedef struct {
    int64_t N, C, H, W, O, KH, KW, Ho, Wo, ph, pw;
} ct_conv_amx_geom;

/* Whether these kernels run here for this geometry: AMX in use (ct_gemm_bf16_kind(), so
 * CTORCH_CPU_ISA=avx512 or lower turns them off), C >= 16, a consistent stride-1 shape,
 * and CTORCH_CONV_AMX not "0" (the switch that sends these convolutions back to im2col +
 * GEMM, for comparisons; "virtual" or "gather" force one of the kernels' two ways of
 * forming pixel rows, which they otherwise choose by shape). */
int ct_conv_amx_usable(const ct_conv_amx_geom *g);
/* How many convolutions (forward and backward-weight calls) these kernels have run in
 * this process: tests check that a shape took this path. */
int64_t ct_conv_amx_calls(void);
/* y (bf16, rounded once) = conv(x, w) + bias (float32 [O] or NULL). With `flipped`, w is
 * the weight of the convolution this one is the input gradient of: w [C, O, KH, KW] read
 * transposed (O <-> C) and flipped in both spatial dimensions. 0, -1 on error (or when not
 * usable), 1 in a build without these kernels. */
int ct_conv_amx_forward(const ct_conv_amx_geom *g, const uint16_t *x, const uint16_t *w,
                        int flipped, const float *bias, uint16_t *y);
/* gw (float32 [O, C, KH, KW]) = sum over the batch of gy (x) x. As the forward: 0, -1, 1. */
int ct_conv_amx_backward_weight(const ct_conv_amx_geom *g, const uint16_t *x,
                                const uint16_t *gy, float *gw);
#endif
