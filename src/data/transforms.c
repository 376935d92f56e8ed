/* Image transforms: random crop with zero padding, horizontal flip, to-float with
 * per-channel normalisation; and the seeded random stream they draw from. */
#include "data/data_internal.h"

#include <string.h>

/* splitmix64: a tiny, high-quality generator whose stream depends only on the seed. */
void ct_data_rng_seed(ct_data_rng *r, uint64_t seed) { r->state = seed; }

uint64_t ct_data_rng_next(ct_data_rng *r) {
    uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint64_t ct_data_rng_below(ct_data_rng *r, uint64_t n) {
    if (n <= 1) return 0;
    /* Rejection sampling: unbiased. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = ct_data_rng_next(r);
    while (x >= limit);
    return x % n;
}

void ct_image_crop_padded(const uint8_t *src, uint8_t *dst, int c, int h, int w, int pad,
                          int dy, int dx) {
    /* Output pixel (y, x) reads padded (y + dy, x + dx) = source (y + dy - pad, x + dx - pad). */
    int oy = dy - pad, ox = dx - pad;
    for (int ch = 0; ch < c; ch++) {
        const uint8_t *s = src + (size_t)ch * h * w;
        uint8_t *d = dst + (size_t)ch * h * w;
        for (int y = 0; y < h; y++) {
            uint8_t *drow = d + (size_t)y * w;
            int sy = y + oy;
            if (sy < 0 || sy >= h) {
                memset(drow, 0, (size_t)w);
                continue;
            }
            int x0 = ox < 0 ? -ox : 0;        /* first output column with a source pixel */
            int x1 = ox > 0 ? w - ox : w;     /* one past the last */
            if (x0 > w) x0 = w;
            if (x1 < x0) x1 = x0;
            memset(drow, 0, (size_t)x0);
            memcpy(drow + x0, s + (size_t)sy * w + x0 + ox, (size_t)(x1 - x0));
            memset(drow + x1, 0, (size_t)(w - x1));
        }
    }
}

void ct_image_hflip(uint8_t *img, int c, int h, int w) {
    for (int r = 0; r < c * h; r++) {
        uint8_t *row = img + (size_t)r * w;
        for (int a = 0, b = w - 1; a < b; a++, b--) {
            uint8_t t = row[a];
            row[a] = row[b];
            row[b] = t;
        }
    }
}

void ct_transform_augment(const ct_transform *t, uint8_t *img, int c, int h, int w,
                          ct_data_rng *rng) {
    if (!t) return;
    if (t->crop_padding > 0) {
        int pad = t->crop_padding;
        int dy = (int)ct_data_rng_below(rng, (uint64_t)(2 * pad + 1));
        int dx = (int)ct_data_rng_below(rng, (uint64_t)(2 * pad + 1));
        if (dy != pad || dx != pad) {
            uint8_t tmp[CT_DATA_MAX_CHANNELS * 64 * 64];
            size_t sz = (size_t)c * h * w;
            if (sz <= sizeof tmp) {
                memcpy(tmp, img, sz);
                ct_image_crop_padded(tmp, img, c, h, w, pad, dy, dx);
            } else {
                /* Large images: shift in place, row by row in a safe order. */
                int oy = dy - pad, ox = dx - pad;
                for (int ch = 0; ch < c; ch++) {
                    uint8_t *p = img + (size_t)ch * h * w;
                    int ystart = oy > 0 ? 0 : h - 1, ystep = oy > 0 ? 1 : -1;
                    for (int y = ystart; y >= 0 && y < h; y += ystep) {
                        uint8_t *drow = p + (size_t)y * w;
                        int sy = y + oy;
                        if (sy < 0 || sy >= h) {
                            memset(drow, 0, (size_t)w);
                            continue;
                        }
                        int x0 = ox < 0 ? -ox : 0, x1 = ox > 0 ? w - ox : w;
                        if (x0 > w) x0 = w;
                        if (x1 < x0) x1 = x0;
                        memmove(drow + x0, p + (size_t)sy * w + x0 + ox, (size_t)(x1 - x0));
                        memset(drow, 0, (size_t)x0);
                        memset(drow + x1, 0, (size_t)(w - x1));
                    }
                }
            }
        }
    }
    if (t->hflip) {
        if (ct_data_rng_next(rng) >> 63) ct_image_hflip(img, c, h, w);
    }
}

/* The float of every byte value of channel ch: v/255, then (v/255 - mean) / std when
 * mean/std are given, the operations of ToTensor + Normalize in their order (x*a + b would
 * differ from PyTorch in the last bit). A lookup gives the same bits as computing it. */
void ct__pixel_lut(const float *mean, const float *std, int c, float (*lut)[256]) {
    for (int ch = 0; ch < c; ch++)
        for (int v = 0; v < 256; v++)
            lut[ch][v] = mean && std ? ((float)v / 255.0f - mean[ch]) / std[ch] : (float)v / 255.0f;
}

void ct_images_to_float(const uint8_t *src, float *dst, int64_t n, int c, int h, int w,
                        const float *mean, const float *std) {
    size_t plane = (size_t)h * w;
    for (int ch = 0; ch < c; ch++) {
        float lut[1][256];
        ct__pixel_lut(mean && std ? mean + ch : NULL, mean && std ? std + ch : NULL, 1, lut);
        for (int64_t i = 0; i < n; i++) {
            const uint8_t *s = src + ((size_t)i * c + ch) * plane;
            float *d = dst + ((size_t)i * c + ch) * plane;
            for (size_t k = 0; k < plane; k++) d[k] = lut[0][s[k]];
        }
    }
}

void ct__augment_to_float(const ct_transform *t, const float (*lut)[256], const uint8_t *src,
                          float *dst, int c, int h, int w, ct_data_rng *rng) {
    int oy = 0, ox = 0, flip = 0;
    if (t && t->crop_padding > 0) { /* the draws of ct_transform_augment, in its order */
        int pad = t->crop_padding;
        oy = (int)ct_data_rng_below(rng, (uint64_t)(2 * pad + 1)) - pad;
        ox = (int)ct_data_rng_below(rng, (uint64_t)(2 * pad + 1)) - pad;
    }
    if (t && t->hflip) flip = (int)(ct_data_rng_next(rng) >> 63);
    /* output column x reads source column x + ox, or (w - 1 - x) + ox when flipped; the
     * columns [x0, x1) have one, the others are padding (byte 0) */
    int x0 = flip ? ox : -ox, x1 = flip ? w + ox : w - ox;
    if (x0 < 0) x0 = 0;
    if (x1 > w) x1 = w;
    if (x1 < x0) x1 = x0 = 0;
    for (int ch = 0; ch < c; ch++) {
        const float *L = lut[ch];
        const float zero = L[0];
        const uint8_t *s = src + (size_t)ch * h * w;
        for (int y = 0; y < h; y++) {
            float *d = dst + ((size_t)ch * h + y) * w;
            int sy = y + oy;
            if (sy < 0 || sy >= h) {
                for (int x = 0; x < w; x++) d[x] = zero;
                continue;
            }
            const uint8_t *row = s + (size_t)sy * w;
            for (int x = 0; x < x0; x++) d[x] = zero;
            if (flip)
                for (int x = x0; x < x1; x++) d[x] = L[row[w - 1 - x + ox]];
            else
                for (int x = x0; x < x1; x++) d[x] = L[row[x + ox]];
            for (int x = x1; x < w; x++) d[x] = zero;
        }
    }
}
