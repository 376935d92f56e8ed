/* torchvision's transforms on decoded RGB images, computed as PIL computes them:
 * Resize (PIL's two-pass bilinear resampling with antialias, fixed point, horizontal pass
 * first, uint8 in between: libImaging/Resample.c), crop, CenterCrop, RandomResizedCrop's
 * window choice. */
#include "data/data_internal.h"

#include "core/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

const float ct_imagenet_mean[3] = {0.485f, 0.456f, 0.406f};
const float ct_imagenet_std[3] = {0.229f, 0.224f, 0.225f};

#define PRECISION_BITS (32 - 8 - 2)

static double bilinear(double x) {
    if (x < 0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

/* PIL's precompute_coeffs + normalize_coeffs_8bpc for a box (0, in_size). Returns ksize,
 * or 0 when out of memory; *bounds: (xmin, count) per output; *kk: ksize ints each. */
static int coeffs(int in_size, int out_size, int **bounds_out, int **kk_out) {
    double scale = (double)in_size / out_size, filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 1.0 * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    double *pre = malloc((size_t)out_size * ksize * sizeof(double));
    int *bounds = malloc((size_t)out_size * 2 * sizeof(int));
    int *kk = malloc((size_t)out_size * ksize * sizeof(int));
    if (!pre || !bounds || !kk) {
        free(pre);
        free(bounds);
        free(kk);
        return 0;
    }
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double *k = pre + (size_t)xx * ksize;
        int x;
        for (x = 0; x < xmax; x++) {
            double w = bilinear((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (x = 0; x < xmax; x++)
            if (ww != 0.0) k[x] /= ww;
        for (; x < ksize; x++) k[x] = 0;
        bounds[xx * 2] = xmin;
        bounds[xx * 2 + 1] = xmax;
    }
    for (size_t i = 0; i < (size_t)out_size * ksize; i++)
        kk[i] = pre[i] < 0 ? (int)(-0.5 + pre[i] * (1 << PRECISION_BITS))
                           : (int)(0.5 + pre[i] * (1 << PRECISION_BITS));
    free(pre);
    *bounds_out = bounds;
    *kk_out = kk;
    return ksize;
}

static inline uint8_t clip8(int in) {
    if (in >= (1 << PRECISION_BITS << 8)) return 255;
    if (in <= 0) return 0;
    return (uint8_t)(in >> PRECISION_BITS);
}

int ct_image_resize(const ct_image *src, int out_h, int out_w, ct_image *dst) {
    dst->data = NULL;
    if (!src || !src->data || src->h <= 0 || src->w <= 0 || out_h <= 0 || out_w <= 0)
        return ct_error("image_resize: bad sizes %dx%d -> %dx%d", src ? src->w : 0,
                        src ? src->h : 0, out_w, out_h);
    if ((int64_t)out_h * out_w > ct__image_max_pixels())
        return ct_error("image_resize: %dx%d -> %dx%d makes more than %lld pixels (an image of "
                        "extreme aspect ratio?)", src->w, src->h, out_w, out_h,
                        (long long)ct__image_max_pixels());
    if (ct_image_alloc(dst, out_h, out_w) != 0) return ct_error("image_resize: out of memory");
    if (out_h == src->h && out_w == src->w) {
        memcpy(dst->data, src->data, (size_t)out_h * out_w * 3);
        return 0;
    }
    int *bh = NULL, *kh = NULL, *bv = NULL, *kv = NULL;
    int ksh = coeffs(src->w, out_w, &bh, &kh), ksv = ksh ? coeffs(src->h, out_h, &bv, &kv) : 0;
    if (!ksv) {
        free(bh);
        free(kh);
        ct_image_free(dst);
        return ct_error("image_resize: out of memory");
    }
    int need_h = out_w != src->w, need_v = out_h != src->h;
    /* rows of the source the vertical pass reads */
    int y0 = bv[0], y1 = bv[out_h * 2 - 2] + bv[out_h * 2 - 1];
    const uint8_t *in = src->data;
    int in_w = src->w;
    uint8_t *tmp = NULL;
    if (need_h) {
        int rows = need_v ? y1 - y0 : out_h;
        if (!need_v) y0 = 0;
        uint8_t *out = need_v ? (tmp = malloc((size_t)rows * out_w * 3 + 1)) : dst->data;
        if (!out) {
            free(bh); free(kh); free(bv); free(kv);
            ct_image_free(dst);
            return ct_error("image_resize: out of memory");
        }
        for (int y = 0; y < rows; y++) {
            const uint8_t *row = src->data + (size_t)(y + y0) * src->w * 3;
            uint8_t *o = out + (size_t)y * out_w * 3;
            for (int xx = 0; xx < out_w; xx++) {
                int xmin = bh[xx * 2], xmax = bh[xx * 2 + 1];
                const int *k = kh + (size_t)xx * ksh;
                int s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
                const uint8_t *p = row + (size_t)xmin * 3;
                for (int x = 0; x < xmax; x++) {
                    s0 += p[3 * x] * k[x];
                    s1 += p[3 * x + 1] * k[x];
                    s2 += p[3 * x + 2] * k[x];
                }
                o[3 * xx] = clip8(s0);
                o[3 * xx + 1] = clip8(s1);
                o[3 * xx + 2] = clip8(s2);
            }
        }
        in = out;
        in_w = out_w;
    } else {
        y0 = 0; /* the vertical pass reads the source directly */
    }
    if (need_v) {
        for (int yy = 0; yy < out_h; yy++) {
            int ymin = bv[yy * 2] - y0, ymax = bv[yy * 2 + 1];
            const int *k = kv + (size_t)yy * ksv;
            uint8_t *o = dst->data + (size_t)yy * out_w * 3;
            for (int i = 0; i < in_w * 3; i++) {
                int s = 1 << (PRECISION_BITS - 1);
                const uint8_t *p = in + (size_t)ymin * in_w * 3 + i;
                for (int y = 0; y < ymax; y++) s += p[(size_t)y * in_w * 3] * k[y];
                o[i] = clip8(s);
            }
        }
    }
    free(tmp);
    free(bh);
    free(kh);
    free(bv);
    free(kv);
    return 0;
}

int ct_image_resize_shorter(const ct_image *src, int size, ct_image *dst) {
    dst->data = NULL;
    if (size <= 0) return ct_error("image_resize: size must be positive, got %d", size);
    int h = src->h, w = src->w;
    int shorter = w <= h ? w : h, longer = w <= h ? h : w;
    int nl = (int)((double)((int64_t)size * longer) / shorter);
    int nw = w <= h ? size : nl, nh = w <= h ? nl : size;
    return ct_image_resize(src, nh, nw, dst);
}

int ct_image_crop(const ct_image *src, int top, int left, int h, int w, ct_image *dst) {
    dst->data = NULL;
    if (h <= 0 || w <= 0) return ct_error("image_crop: bad size %dx%d", w, h);
    if (ct_image_alloc(dst, h, w) != 0) return ct_error("image_crop: out of memory");
    for (int y = 0; y < h; y++) {
        uint8_t *o = dst->data + (size_t)y * w * 3;
        int sy = top + y;
        if (sy < 0 || sy >= src->h) {
            memset(o, 0, (size_t)w * 3);
            continue;
        }
        int x0 = left < 0 ? -left : 0, x1 = left + w > src->w ? src->w - left : w;
        if (x0 > w) x0 = w;
        if (x1 < x0) x1 = x0;
        memset(o, 0, (size_t)x0 * 3);
        memcpy(o + (size_t)x0 * 3, src->data + ((size_t)sy * src->w + left + x0) * 3,
               (size_t)(x1 - x0) * 3);
        memset(o + (size_t)x1 * 3, 0, (size_t)(w - x1) * 3);
    }
    return 0;
}

/* int(round(d / 2.0)) for an integer d >= 0, half to even as Python's round */
static int half_round_even(int d) {
    int k = d / 2;
    return (d % 2 == 0 || k % 2 == 0) ? k : k + 1;
}

int ct_image_center_crop(const ct_image *src, int size, ct_image *dst) {
    int top_pad = size > src->h ? (size - src->h) / 2 : 0;
    int left_pad = size > src->w ? (size - src->w) / 2 : 0;
    int H = size > src->h ? src->h + top_pad + (size - src->h + 1) / 2 : src->h;
    int W = size > src->w ? src->w + left_pad + (size - src->w + 1) / 2 : src->w;
    int top = half_round_even(H - size) - top_pad, left = half_round_even(W - size) - left_pad;
    return ct_image_crop(src, top, left, size, size, dst);
}

static double uniform01(ct_data_rng *r) {
    return (double)(ct_data_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

void ct_random_resized_crop_params(int img_h, int img_w, double scale_lo, double scale_hi,
                                   double ratio_lo, double ratio_hi, ct_data_rng *rng,
                                   int *top, int *left, int *h, int *w) {
    double area = (double)img_h * img_w;
    double lr0 = log(ratio_lo), lr1 = log(ratio_hi);
    for (int attempt = 0; attempt < 10; attempt++) {
        double target = area * (scale_lo + (scale_hi - scale_lo) * uniform01(rng));
        double ar = exp(lr0 + (lr1 - lr0) * uniform01(rng));
        double cw = rint(sqrt(target * ar)), ch = rint(sqrt(target / ar));
        if (cw > 0 && cw <= img_w && ch > 0 && ch <= img_h) {
            *h = (int)ch;
            *w = (int)cw;
            *top = (int)ct_data_rng_below(rng, (uint64_t)(img_h - *h + 1));
            *left = (int)ct_data_rng_below(rng, (uint64_t)(img_w - *w + 1));
            return;
        }
    }
    /* fallback: the central crop */
    double in_ratio = (double)img_w / (double)img_h;
    double rmin = ratio_lo < ratio_hi ? ratio_lo : ratio_hi;
    double rmax = ratio_lo < ratio_hi ? ratio_hi : ratio_lo;
    if (in_ratio < rmin) {
        *w = img_w;
        *h = (int)rint(*w / rmin);
    } else if (in_ratio > rmax) {
        *h = img_h;
        *w = (int)rint(*h * rmax);
    } else {
        *w = img_w;
        *h = img_h;
    }
    *top = (img_h - *h) / 2;
    *left = (img_w - *w) / 2;
}

int ct_image_resized_crop(const ct_image *src, int top, int left, int h, int w, int size,
                          ct_image *dst) {
    ct_image c;
    if (ct_image_crop(src, top, left, h, w, &c) != 0) return -1;
    int rc = ct_image_resize(&c, size, size, dst);
    ct_image_free(&c);
    return rc;
}
