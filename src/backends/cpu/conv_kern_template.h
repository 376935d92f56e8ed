/* Convolution micro-kernels: a template (no include guard on purpose), included by
 * conv_avx512.c and conv_avx2.c after they define (see conv_fast.h for what the kernels
 * compute):
 *   CF_FN(name)  the name with the ISA suffix      CF_TARGET  the target attribute
 *   VL           lanes per vector                  V          the vector type
 *   VLOADU(p) VSTOREU(p, v) VSET1(x) VZERO() VFMA(a, b, c) = a*b + c  VADD VMAX
 *   VLOADN(p, n) / VSTOREN(p, v, n): the first n lanes (others read as 0 / untouched)
 *   VHSUM(v): the sum of the lanes
 *   VLOAD_SHIFT(p, lo, hi): lanes i in [lo, hi) from p[i], others 0 (0 <= lo <= hi <= VL)
 *   VMAX(a, b): max, returning b when either is NaN (x86 maxps)
 *   CF_COPY_S2(d, src, o, s, W): optional; d[0..VL) = src[2*(o+i) + s] (0 outside [0, W))
 * The tile bodies are always_inline with constant sizes so that the accumulators live
 * in registers; CF_FWD_INST / CF_WGT_INST make the instances. */

#define CF_INLINE static inline __attribute__((always_inline)) CF_TARGET

CF_INLINE void CF_FN(fwd_body)(const cf_fwd_args *a, const int MR, const int NV) {
    V acc[8][8];
    const int64_t K = a->K;
    const float *A = a->A;
    const int64_t *koff = a->koff;
    const float *bp[8];
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) bp[v] = a->bp[v];
    if (a->accumulate) {
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++)
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++)
                acc[m][v] = a->nvalid[v] == VL ? VLOADU(a->yp[v] + m * a->ldy)
                                               : VLOADN(a->yp[v] + m * a->ldy, a->nvalid[v]);
    } else {
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++) {
            V b0 = a->bias ? VSET1(a->bias[m]) : VZERO();
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++) acc[m][v] = b0;
        }
    }
    for (int64_t k = 0; k < K; k++) {
        const int64_t o = koff[k];
        V b[8];
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) b[v] = VLOADU(bp[v] + o);
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++) {
            V w = VSET1(A[m]);
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++) acc[m][v] = VFMA(w, b[v], acc[m][v]);
        }
        A += MR;
    }
    if (a->relu) {
        V z = VZERO();
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++)
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++) acc[m][v] = VMAX(z, acc[m][v]); /* NaN stays */
    }
#pragma GCC unroll 8
    for (int m = 0; m < MR; m++)
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) {
            if (a->nvalid[v] == VL)
                VSTOREU(a->yp[v] + m * a->ldy, acc[m][v]);
            else
                VSTOREN(a->yp[v] + m * a->ldy, acc[m][v], a->nvalid[v]);
        }
}

/* Weight gradient tile: MR gy rows x NJ slab rows, accumulated over every pixel of every
 * image of the tile, then reduced into gw. The last, partial vector of an image loads
 * only its valid lanes (the slab may hold finite garbage there, gy holds other data). */
CF_INLINE void CF_FN(wgt_body)(const cf_wgt_args *a, const int MR, const int NJ) {
    V acc[8][8];
#pragma GCC unroll 8
    for (int m = 0; m < MR; m++)
#pragma GCC unroll 8
        for (int j = 0; j < NJ; j++) acc[m][j] = VZERO();
    const int64_t P = a->P, ldg = a->ldg, full = P / VL * VL;
    const int tail = (int)(P - full);
    int64_t ko[8];
#pragma GCC unroll 8
    for (int j = 0; j < NJ; j++) ko[j] = a->koff[j];
    for (int i = 0; i < a->nimg; i++) {
        const float *g = a->gy[i];
        const float *rb[8];
#pragma GCC unroll 8
        for (int j = 0; j < NJ; j++) rb[j] = a->bb[i] + ko[j];
        for (int64_t p = 0; p < full; p += VL) {
            V gv[8];
#pragma GCC unroll 8
            for (int m = 0; m < MR; m++) gv[m] = VLOADU(g + m * ldg + p);
#pragma GCC unroll 8
            for (int j = 0; j < NJ; j++) {
                V b = VLOADU(rb[j] + p);
#pragma GCC unroll 8
                for (int m = 0; m < MR; m++) acc[m][j] = VFMA(gv[m], b, acc[m][j]);
            }
        }
        if (tail) {
            V gv[8];
#pragma GCC unroll 8
            for (int m = 0; m < MR; m++) gv[m] = VLOADN(g + m * ldg + full, tail);
#pragma GCC unroll 8
            for (int j = 0; j < NJ; j++) {
                V b = VLOADN(rb[j] + full, tail);
#pragma GCC unroll 8
                for (int m = 0; m < MR; m++) acc[m][j] = VFMA(gv[m], b, acc[m][j]);
            }
        }
    }
#pragma GCC unroll 8
    for (int m = 0; m < MR; m++)
#pragma GCC unroll 8
        for (int j = 0; j < NJ; j++) a->gw[m * a->ldw + j] += VHSUM(acc[m][j]);
}

/* One slab: rows r in [0, R) of dst (Wo floats each) from input rows ih = r*rs + r0 of
 * the plane xc [H][W] (zero outside), columns iw = ow*sw + s; zeros from R*Wo to L. */
static CF_TARGET void CF_FN(copy_slab)(float *dst, const float *xc, int64_t H, int64_t W,
                                       int64_t R, int64_t Wo, int64_t rs, int64_t r0, int64_t s,
                                       int64_t sw, int64_t L) {
    int64_t lo = 0, hi = Wo; /* valid ow: 0 <= ow*sw + s < W */
    if (sw == 1) {
        lo = s < 0 ? -s : 0;
        hi = W - s < Wo ? W - s : Wo;
        if (hi < lo) hi = lo;
    }
    for (int64_t r = 0; r < R; r++) {
        float *d = dst + r * Wo;
        int64_t ih = r * rs + r0;
        if (ih < 0 || ih >= H) {
            for (int64_t o = 0; o < Wo; o += VL) VSTOREU(d + o, VZERO());
            continue;
        }
        const float *src = xc + ih * W;
        if (sw == 1) {
            for (int64_t o = 0; o < Wo; o += VL) {
                if (o >= lo && o + VL <= hi) {
                    VSTOREU(d + o, VLOADU(src + o + s));
                } else {
                    int64_t l = lo - o, h = hi - o;
                    l = l < 0 ? 0 : l > VL ? VL : l;
                    h = h < l ? l : h > VL ? VL : h;
                    VSTOREU(d + o, VLOAD_SHIFT(src + o + s, (int)l, (int)h));
                }
            }
        } else {
            int64_t o = 0;
#ifdef CF_COPY_S2
            if (sw == 2)
                for (; o < Wo; o += VL) CF_COPY_S2(d + o, src, o, s, W);
#endif
            for (; o < Wo; o++) {
                int64_t iw = o * sw + s;
                d[o] = iw >= 0 && iw < W ? src[iw] : 0.0f;
            }
        }
    }
    for (int64_t i = R * Wo; i < L; i++) dst[i] = 0.0f;
}

#define CF_FWD_INST(MR, NV)                                                                  \
    static CF_TARGET void CF_FN(fwd_##MR##_##NV)(const cf_fwd_args *a) {                    \
        CF_FN(fwd_body)(a, MR, NV);                                                          \
    }
#define CF_WGT_INST(MR, NJ)                                                                  \
    static CF_TARGET void CF_FN(wgt_##MR##_##NJ)(const cf_wgt_args *a) {                    \
        CF_FN(wgt_body)(a, MR, NJ);                                                          \
    }
