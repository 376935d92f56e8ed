/* libFuzzer target for ctorch's image decoders (src/data/image.c: libjpeg-turbo and libpng
 * behind setjmp error handlers) and the transforms that follow them in the loader:
 * any bytes must give an image or an error message, never a crash, a leak or a hang.
 *
 *   make fuzz && build/fuzz/fuzz_image -max_len=65536 -rss_limit_mb=2048 fuzz/corpus/image
 *   (make fuzz-run FUZZ_TARGETS=image for the long run; docs/fuzzing.md)
 *
 * Seeds: fuzz/corpus/image (tiny JPEGs and PNGs of every colour type, from
 * tests/fixtures/images). */
#include "ctorch_data.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

void ct__image_set_max_pixels(int64_t n);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* a small pixel budget keeps every input fast (a header may claim 65535 x 65535) */
    ct__image_set_max_pixels(1 << 20);
    ct_image img;
    char err[512];
    if (ct_image_decode(data, size, &img, err, sizeof err) != 0) {
        /* an error must say something */
        if (!err[0]) __builtin_trap();
        return 0;
    }
    if (img.h <= 0 || img.w <= 0 || !img.data) __builtin_trap();
    /* the loader's two pipelines on what came out, at a small size */
    ct_image a, b;
    if (ct_image_resize_shorter(&img, 9, &a) == 0) {
        if (ct_image_center_crop(&a, 8, &b) == 0) ct_image_free(&b);
        ct_image_free(&a);
    }
    ct_data_rng r;
    ct_data_rng_seed(&r, size);
    int top, left, h, w;
    ct_random_resized_crop_params(img.h, img.w, 0.08, 1.0, 3.0 / 4, 4.0 / 3, &r, &top, &left, &h, &w);
    if (top < 0 || left < 0 || top + h > img.h || left + w > img.w) __builtin_trap();
    if (ct_image_resized_crop(&img, top, left, h, w, 8, &a) == 0) ct_image_free(&a);
    ct_image_free(&img);
    return 0;
}
