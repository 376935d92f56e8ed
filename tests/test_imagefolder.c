/* ImageFolder: decoding (JPEG / PNG, every colour type converted as PIL's convert("RGB")),
 * torchvision's transforms against PIL + torchvision reference pixels
 * (tests/fixtures/gen_imagefolder.py), the folder layout and class ordering, bad images
 * under both policies, determinism across worker counts, and `ctorch train --dataset
 * imagefolder` end to end on a folder written here from the real CIFAR-10 test set
 * (libjpeg / libpng encoders; skipped without $CTORCH_DATA). */
#include "cli_util.h"
#include "ctorch_data.h"
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#ifdef CT_HAVE_IMAGE
#include <jpeglib.h>
#include <png.h>

/* ------------------------------------------------------------------ writers */
static int write_jpeg(const char *path, const uint8_t *rgb, int h, int w, int quality) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr e;
    c.err = jpeg_std_error(&e);
    jpeg_create_compress(&c);
    jpeg_stdio_dest(&c, f);
    c.image_width = (JDIMENSION)w;
    c.image_height = (JDIMENSION)h;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, quality, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(rgb + (size_t)c.next_scanline * w * 3);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    return fclose(f);
}

static int write_png_ex(const char *path, const uint8_t *rgb, int h, int w, int interlace);
static int write_png(const char *path, const uint8_t *rgb, int h, int w) {
    return write_png_ex(path, rgb, h, w, 0);
}

static int write_png_ex(const char *path, const uint8_t *rgb, int h, int w, int interlace) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    png_structp p = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(p);
    if (setjmp(png_jmpbuf(p))) {
        png_destroy_write_struct(&p, &info);
        fclose(f);
        return -1;
    }
    png_init_io(p, f);
    png_set_IHDR(p, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB,
                 interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    png_write_info(p, info);
    int passes = interlace ? png_set_interlace_handling(p) : 1;
    for (int pass = 0; pass < passes; pass++)
        for (int y = 0; y < h; y++) png_write_row(p, (png_const_bytep)(rgb + (size_t)y * w * 3));
    png_write_end(p, NULL);
    png_destroy_write_struct(&p, &info);
    return fclose(f);
}

static const char *const CIFAR_CLASSES[10] = {"airplane", "automobile", "bird", "cat", "deer",
                                              "dog", "frog", "horse", "ship", "truck"};

/* ROOT/{train,val}/<class>/NNNNN.{jpg,png} from the first n_train + n_val CIFAR-10 test
 * images: even indices JPEG (quality 95), odd PNG, every fifth PNG with an upper-case
 * extension; plus a README.txt in one class (not an image: ignored). Returns the dataset
 * (for the pixels and labels) or NULL (skip). */
static ct_dataset *make_cifar_folder(const char *root, int n_train, int n_val) {
    const char *d = data_dir();
    if (!d) return NULL;
    ct_dataset *ds = ct_cifar10_load(d, CT_SPLIT_TEST, n_train + n_val);
    if (!ds) return NULL;
    char path[1024];
    uint8_t hwc[32 * 32 * 3];
    for (int i = 0; i < n_train + n_val; i++) {
        const char *split = i < n_train ? "train" : "val";
        snprintf(path, sizeof path, "%s/%s/%s", root, split, CIFAR_CLASSES[ds->labels[i]]);
        mkdir(path, 0777); /* exists after the first image of the class */
        const uint8_t *chw = ds->images + (size_t)i * 3072;
        for (int p = 0; p < 1024; p++)
            for (int c = 0; c < 3; c++) hwc[p * 3 + c] = chw[c * 1024 + p];
        size_t len = strlen(path);
        if (i % 2 == 0) {
            snprintf(path + len, sizeof path - len, "/%05d.jpg", i);
            CHECK(write_jpeg(path, hwc, 32, 32, 95) == 0);
        } else {
            snprintf(path + len, sizeof path - len, "/%05d.%s", i, i % 5 == 0 ? "PNG" : "png");
            CHECK(write_png(path, hwc, 32, 32) == 0);
        }
    }
    snprintf(path, sizeof path, "%s/train/cat/README.txt", root);
    FILE *f = fopen(path, "w");
    if (f) {
        fputs("not an image\n", f);
        fclose(f);
    }
    return ds;
}
#endif

#ifdef CT_HAVE_IMAGE
static void mkdirs(const char *root) {
    char p[1024];
    const char *s[2] = {"train", "val"};
    mkdir(root, 0777);
    for (int k = 0; k < 2; k++) {
        snprintf(p, sizeof p, "%s/%s", root, s[k]);
        mkdir(p, 0777);
    }
}

/* Compares an image with a fixture [H, W, 3]; returns the largest difference. */
static int image_vs_fixture(const ct_image *img, ct_fixture *fx, const char *key) {
    ct_tensor *t = ct_fixture_get(fx, key);
    if (!t) return 256;
    int worst = 0;
    if (ct_size(t, 0) != img->h || ct_size(t, 1) != img->w || ct_size(t, 2) != 3) {
        ct_test_fail(__FILE__, __LINE__, "%s: size %dx%d, PIL's %lldx%lld", key, img->w, img->h,
                     (long long)ct_size(t, 1), (long long)ct_size(t, 0));
        ct_free(t);
        return 256;
    }
    const int64_t *want = ct_data(t);
    for (int64_t i = 0; i < (int64_t)img->h * img->w * 3; i++) {
        int d = abs((int)img->data[i] - (int)want[i]);
        if (d > worst) worst = d;
    }
    ct_free(t);
    return worst;
}

static void image_from_fixture(ct_fixture *fx, const char *key, ct_image *img) {
    ct_tensor *t = ct_fixture_get(fx, key);
    img->data = NULL;
    if (!t) return;
    ct_image_alloc(img, (int)ct_size(t, 0), (int)ct_size(t, 1));
    const int64_t *v = ct_data(t);
    for (int64_t i = 0; i < (int64_t)img->h * img->w * 3; i++) img->data[i] = (uint8_t)v[i];
    ct_free(t);
}

static const char *tmp_root(const char *name) {
    static char buf[4][512];
    static int k;
    char *b = buf[k++ % 4];
    snprintf(b, 512, "%s/%s", tmpdir(), name);
    return b;
}
#endif

/* ------------------------------------------------------------------ decoding */
TEST(imagefolder_decode_matches_pil_convert_rgb) {
#ifndef CT_HAVE_IMAGE
    SKIP("built without libjpeg / libpng");
#else
    ct_fixture *fx = ct_fixture_load("imagefolder");
    if (!fx) return;
    /* every PNG kind exactly; JPEGs too (same libjpeg-turbo islow IDCT and upsampling) */
    static const char *const files[] = {
        "rgb.png", "gray.png", "gray_alpha.png", "rgba.png", "palette_trns.png", "bilevel.png",
        "gray16.png", "rgb16.png", "rgba16.png", "gray4.png", "gray2.png", "rgb.jpg", "rgb444.jpg",
        "gray.jpg", "cmyk.jpg", "progressive.jpg"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[512], key[128], err[512];
        snprintf(path, sizeof path, "tests/fixtures/images/%s", files[i]);
        snprintf(key, sizeof key, "dec_%s", files[i]);
        ct_image img;
        if (ct_image_load(path, &img, err, sizeof err) != 0) {
            ct_test_fail(__FILE__, __LINE__, "%s: %s", files[i], err);
            continue;
        }
        int worst = image_vs_fixture(&img, fx, key);
        CHECK_MSG(worst == 0, "%s: differs from PIL's convert(\"RGB\") by up to %d", files[i], worst);
        ct_image_free(&img);
    }
    ct_fixture_free(fx);
#endif
}

TEST(imagefolder_decode_rejects_corrupt_and_truncated) {
#ifndef CT_HAVE_IMAGE
    SKIP("built without libjpeg / libpng");
#else
    static const char *const files[] = {"rgb.png", "rgb.jpg", "progressive.jpg", "rgb16.png"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[512], err[512];
        snprintf(path, sizeof path, "tests/fixtures/images/%s", files[i]);
        FILE *f = fopen(path, "rb");
        CHECK(f != NULL);
        if (!f) continue;
        uint8_t buf[4096];
        size_t n = fread(buf, 1, sizeof buf, f);
        fclose(f);
        ct_image img;
        /* every truncation: an error, never a crash (PNG: every one; JPEG: past the header
         * too, as PIL's "image file is truncated") */
        for (size_t cut = 0; cut < n; cut++) {
            int rc = ct_image_decode(buf, cut, &img, err, sizeof err);
            if (rc == 0) {
                ct_image_free(&img);
                /* cut inside the last 12 bytes (PNG: IEND; JPEG: EOI), every pixel is there */
                CHECK_MSG(cut + 12 >= n, "%s cut at %zu/%zu decoded", files[i], cut, n);
            } else {
                CHECK_MSG(err[0] != '\0', "%s cut at %zu: no message", files[i], cut);
            }
        }
        /* flipped bytes: decoded or refused, never a crash */
        for (size_t k = 0; k < n; k += 3) {
            uint8_t save = buf[k];
            buf[k] ^= 0x5A;
            if (ct_image_decode(buf, n, &img, err, sizeof err) == 0) ct_image_free(&img);
            buf[k] = save;
        }
    }
    ct_image img;
    char err[512];
    CHECK(ct_image_load("tests/fixtures/images/missing.png", &img, err, sizeof err) != 0);
    CHECK_MSG(strstr(err, "missing.png") != NULL, "%s", err);
    const uint8_t junk[16] = "GIF89a.........";
    CHECK(ct_image_decode(junk, sizeof junk, &img, err, sizeof err) != 0);
    CHECK_MSG(strstr(err, "not a JPEG or PNG") != NULL, "%s", err);
#endif
}

TEST(imagefolder_decode_interlaced_png_and_big_jpeg) {
#ifndef CT_HAVE_IMAGE
    SKIP("built without libjpeg / libpng");
#else
    /* Adam7 PNG: lossless, so the pixels come back exactly; a 300x217 JPEG (several MCU
     * rows, odd sizes) close to its source */
    enum { H = 217, W = 300 };
    uint8_t *rgb = malloc((size_t)H * W * 3);
    if (!rgb) return;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            uint8_t *p = rgb + ((size_t)y * W + x) * 3;
            p[0] = (uint8_t)(x * 255 / W);
            p[1] = (uint8_t)(y * 255 / H);
            p[2] = (uint8_t)((x + y) * 255 / (W + H));
        }
    char path[600], err[512];
    ct_image img;
    snprintf(path, sizeof path, "%s/adam7.png", tmpdir());
    CHECK(write_png_ex(path, rgb, H, W, 1) == 0);
    CHECK_MSG(ct_image_load(path, &img, err, sizeof err) == 0, "%s", err);
    CHECK(img.h == H && img.w == W && img.data && !memcmp(img.data, rgb, (size_t)H * W * 3));
    ct_image_free(&img);
    snprintf(path, sizeof path, "%s/big.jpg", tmpdir());
    CHECK(write_jpeg(path, rgb, H, W, 95) == 0);
    CHECK_MSG(ct_image_load(path, &img, err, sizeof err) == 0, "%s", err);
    CHECK(img.h == H && img.w == W);
    long sum = 0;
    for (size_t i = 0; img.data && i < (size_t)H * W * 3; i++) sum += abs((int)img.data[i] - (int)rgb[i]);
    CHECK_MSG(sum / (double)(H * W * 3) < 3.0, "JPEG mean error %.2f", sum / (double)(H * W * 3));
    ct_image_free(&img);
    free(rgb);
#endif
}

/* ------------------------------------------------------------------ transforms */
TEST(imagefolder_transforms_match_torchvision_pil) {
#ifndef CT_HAVE_IMAGE
    SKIP("built without libjpeg / libpng");
#else
    ct_fixture *fx = ct_fixture_load("imagefolder");
    if (!fx) return;
    ct_image src, out, tmp;
    image_from_fixture(fx, "src", &src);
    if (!src.data) return;
    /* tolerance: 0. ctorch runs PIL's own fixed-point resampling (coefficients, rounding,
     * horizontal pass first); docs/data.md allows 1 for other PIL builds. */
    const int tol = 0;
    struct {
        const char *key;
        int size;
    } shorter[] = {{"resize_short_24", 24}, {"resize_short_9", 9}, {"resize_short_33", 33}};
    for (int i = 0; i < 3; i++) {
        CHECK_OK(ct_image_resize_shorter(&src, shorter[i].size, &out));
        int d = image_vs_fixture(&out, fx, shorter[i].key);
        CHECK_MSG(d <= tol, "%s: off by %d from PIL", shorter[i].key, d);
        ct_image_free(&out);
    }
    CHECK_OK(ct_image_resize(&src, 7, 11, &out));
    CHECK_MSG(image_vs_fixture(&out, fx, "resize_7x11") <= tol, "resize 11x7 differs from PIL");
    ct_image_free(&out);
    CHECK_OK(ct_image_center_crop(&src, 20, &out));
    CHECK_MSG(image_vs_fixture(&out, fx, "center_crop_20") == 0, "center crop 20 differs");
    ct_image_free(&out);
    CHECK_OK(ct_image_center_crop(&src, 32, &out));
    CHECK_MSG(image_vs_fixture(&out, fx, "center_crop_32") == 0, "center crop 32 (padded) differs");
    ct_image_free(&out);
    CHECK_OK(ct_image_resized_crop(&src, 3, 5, 17, 23, 16, &out));
    CHECK_MSG(image_vs_fixture(&out, fx, "resized_crop_3_5_17_23_16") <= tol, "resized_crop differs");
    ct_image_free(&out);
    /* the val pipeline at --image-size 32: Resize(36) + CenterCrop(32) */
    CHECK_OK(ct_image_resize_shorter(&src, 32 * 256 / 224, &tmp));
    CHECK_OK(ct_image_center_crop(&tmp, 32, &out));
    CHECK_MSG(image_vs_fixture(&out, fx, "val_36_32") <= tol, "val pipeline differs");
    ct_image_free(&out);
    ct_image_free(&tmp);
    ct_image_free(&src);

    /* RandomResizedCrop: the fallback (no try fits with scale (2, 3)) is torchvision's */
    const int sizes[3][2] = {{29, 37}, {100, 20}, {20, 100}};
    for (int k = 0; k < 3; k++) {
        char key[64];
        snprintf(key, sizeof key, "rrc_%dx%d", sizes[k][0], sizes[k][1]);
        ct_tensor *t = ct_fixture_get(fx, key);
        if (!t) continue;
        const int64_t *w = ct_data(t);
        ct_data_rng r;
        ct_data_rng_seed(&r, 7);
        int top, left, h, wd;
        ct_random_resized_crop_params(sizes[k][0], sizes[k][1], 2.0, 3.0, 3.0 / 4, 4.0 / 3, &r, &top,
                                      &left, &h, &wd);
        CHECK_MSG(top == w[0] && left == w[1] && h == w[2] && wd == w[3],
                  "%s: (%d %d %d %d), torchvision (%lld %lld %lld %lld)", key, top, left, h, wd,
                  (long long)w[0], (long long)w[1], (long long)w[2], (long long)w[3]);
        ct_free(t);
    }
    ct_fixture_free(fx);
    /* the random tries: windows inside the image, area and ratio in range (up to rounding) */
    ct_data_rng r;
    ct_data_rng_seed(&r, 1);
    int fallback = 0;
    for (int i = 0; i < 2000; i++) {
        int top, left, h, w;
        ct_random_resized_crop_params(240, 320, 0.08, 1.0, 3.0 / 4, 4.0 / 3, &r, &top, &left, &h, &w);
        CHECK(top >= 0 && left >= 0 && h >= 1 && w >= 1 && top + h <= 240 && left + w <= 320);
        double area = (double)h * w / (240.0 * 320.0), ratio = (double)w / h;
        CHECK_MSG(area > 0.07 && area <= 1.0 && ratio > 0.72 && ratio < 1.38,
                  "window %dx%d: area %.3f ratio %.3f", w, h, area, ratio);
        fallback += h == 240 && w == 320;
    }
    CHECK_MSG(fallback < 20, "%d fallbacks in 2000", fallback);
#endif
}

/* ------------------------------------------------------------------ the folder */
TEST(imagefolder_layout_class_order_and_round_trip) {
#ifndef CT_HAVE_IMAGE
    SKIP("built without libjpeg / libpng");
#else
    const char *root = tmp_root("cifar_folder");
    mkdirs(root);
    ct_dataset *cif = make_cifar_folder(root, 60, 20);
    if (!cif) SKIP("CIFAR-10 not found in $CTORCH_DATA");
    ct_imagefolder_opts o = ct_imagefolder_default_opts();
    o.image_size = 32;
    ct_dataset *tr = ct_imagefolder_load(root, CT_SPLIT_TRAIN, &o, 0);
    ct_dataset *va = ct_imagefolder_load(root, CT_SPLIT_TEST, &o, 0);
    CHECK_NN(tr);
    CHECK_NN(va);
    if (!tr || !va) goto out;
    CHECK(tr->n == 60 && va->n == 20);
    CHECK(tr->c == 3 && tr->h == 32 && tr->w == 32);
    /* the CIFAR class names sort in CIFAR's own label order: label == CIFAR's */
    CHECK(tr->num_classes == 10);
    for (int k = 0; k < tr->num_classes && k < 10; k++) {
        const char *name = ct_dataset_class_name(tr, k);
        CHECK_MSG(name && !strcmp(name, CIFAR_CLASSES[k]), "class %d is %s", k, name ? name : "(null)");
    }
    /* records: by class, then by file name; the labels are CIFAR's */
    for (int64_t i = 0; i < tr->n; i++) {
        const char *p = ct_dataset_record_path(tr, i);
        CHECK(p != NULL);
        if (!p) continue;
        int idx = atoi(strrchr(p, '/') + 1);
        CHECK_MSG(tr->labels[i] == cif->labels[idx], "%s: label %lld, CIFAR %lld", p,
                  (long long)tr->labels[i], (long long)cif->labels[idx]);
        if (i > 0) {
            const char *q = ct_dataset_record_path(tr, i - 1);
            CHECK(tr->labels[i - 1] < tr->labels[i] || strcmp(q, p) < 0);
        }
        /* round trip: PNG exact, JPEG (quality 95) close */
        ct_image img;
        char err[512];
        CHECK_MSG(ct_image_load(p, &img, err, sizeof err) == 0, "%s", err);
        if (!img.data) continue;
        const uint8_t *chw = cif->images + (size_t)idx * 3072;
        long sum = 0;
        int worst = 0;
        for (int px = 0; px < 1024; px++)
            for (int c = 0; c < 3; c++) {
                int d = abs((int)img.data[px * 3 + c] - (int)chw[c * 1024 + px]);
                sum += d;
                if (d > worst) worst = d;
            }
        if (idx % 2) CHECK_MSG(worst == 0, "%s: PNG round trip off by %d", p, worst);
        else /* quality 95 with 4:2:0 chroma on 32x32 images: 2 to 6 on average */
            CHECK_MSG(sum / 3072.0 < 8.0, "%s: JPEG round trip mean error %.2f", p, sum / 3072.0);
        ct_image_free(&img);
    }
    /* the val pipeline at image size 32 on a 32x32 image: Resize(36) + CenterCrop(32) */
    ct_dataloader_opts lo = ct_dataloader_default_opts();
    lo.shuffle = 0;
    lo.batch_size = 20;
    lo.num_workers = 1;
    ct_dataloader *dl = ct_dataloader_new(va, &lo);
    CHECK_NN(dl);
    ct_tensor *x, *y;
    if (dl && ct_dataloader_next(dl, &x, &y) == 1) {
        CHECK(ct_size(x, 0) == 20 && ct_size(x, 1) == 3 && ct_size(x, 2) == 32);
        ct_free(x);
        ct_free(y);
    }
    ct_dataloader_free(dl);
    /* torchvision's byte order of class names, limit, errors */
    const char *r2 = tmp_root("order");
    mkdirs(r2);
    const char *names[] = {"b", "B", "a", "C_2", "C-1"};
    char p[1024];
    uint8_t px[3 * 4 * 4] = {0};
    for (int k = 0; k < 5; k++) {
        snprintf(p, sizeof p, "%s/train/%s", r2, names[k]);
        mkdir(p, 0777);
        snprintf(p, sizeof p, "%s/train/%s/x.Jpeg", r2, names[k]);
        CHECK(write_jpeg(p, px, 4, 4, 90) == 0);
    }
    ct_dataset *od = ct_imagefolder_load(r2, CT_SPLIT_TRAIN, &o, 0);
    CHECK_NN(od);
    const char *want[] = {"B", "C-1", "C_2", "a", "b"};
    for (int k = 0; od && k < 5; k++)
        CHECK_MSG(!strcmp(ct_dataset_class_name(od, k), want[k]), "class %d: %s", k,
                  ct_dataset_class_name(od, k));
    ct_dataset_free(od);
    od = ct_imagefolder_load(r2, CT_SPLIT_TRAIN, &o, 2);
    CHECK(od && od->n == 2);
    ct_dataset_free(od);
    CHECK(ct_imagefolder_load(r2, CT_SPLIT_TEST, &o, 0) == NULL); /* val/ is empty */
    CHECK_MSG(strstr(ct_last_error(), "class") != NULL, "%s", ct_last_error());
    snprintf(p, sizeof p, "%s/val/zebra", r2);
    mkdir(p, 0777);
    CHECK(ct_imagefolder_load(r2, CT_SPLIT_TEST, &o, 0) == NULL);
    CHECK_MSG(strstr(ct_last_error(), "zebra") != NULL, "%s", ct_last_error());
    CHECK(ct_imagefolder_load(tmp_root("nothing"), CT_SPLIT_TRAIN, &o, 0) == NULL);
    CHECK_MSG(strstr(ct_last_error(), "nothing/train") != NULL, "%s", ct_last_error());
out:
    ct_dataset_free(tr);
    ct_dataset_free(va);
    ct_dataset_free(cif);
#endif
}

#ifdef CT_HAVE_IMAGE
/* Every batch of `epochs` epochs as one float buffer (and the labels). */
static float *all_batches(const ct_dataset *ds, int workers, int epochs, int64_t *n_out) {
    ct_dataloader_opts lo = ct_dataloader_default_opts();
    lo.batch_size = 7;
    lo.seed = 42;
    lo.num_workers = workers;
    lo.transform.hflip = 1;
    lo.transform.normalize = 1;
    ct_dataset_default_normalization(CT_DATASET_IMAGEFOLDER, lo.transform.mean, lo.transform.std);
    ct_dataloader *dl = ct_dataloader_new(ds, &lo);
    if (!dl) return NULL;
    size_t cap = (size_t)ds->n * epochs * 3 * ds->h * ds->w + (size_t)ds->n * epochs, len = 0;
    float *buf = malloc(cap * sizeof(float));
    ct_tensor *x, *y;
    for (int e = 0; e < epochs; e++) {
        ct_dataloader_start_epoch(dl, e);
        while (ct_dataloader_next(dl, &x, &y) == 1) {
            size_t nx = (size_t)ct_numel(x), ny = (size_t)ct_numel(y);
            memcpy(buf + len, ct_data(x), nx * sizeof(float));
            len += nx;
            for (size_t k = 0; k < ny; k++) buf[len++] = (float)((int64_t *)ct_data(y))[k];
            ct_free(x);
            ct_free(y);
        }
    }
    ct_dataloader_free(dl);
    *n_out = (int64_t)len;
    return buf;
}
#endif

TEST(imagefolder_batches_independent_of_workers) {
#ifndef CT_HAVE_IMAGE
    SKIP("built without libjpeg / libpng");
#else
    const char *root = tmp_root("det_folder");
    mkdirs(root);
    ct_dataset *cif = make_cifar_folder(root, 40, 4);
    if (!cif) SKIP("CIFAR-10 not found in $CTORCH_DATA");
    ct_imagefolder_opts o = ct_imagefolder_default_opts();
    o.image_size = 24; /* RandomResizedCrop to 24 */
    ct_dataset *tr = ct_imagefolder_load(root, CT_SPLIT_TRAIN, &o, 0);
    CHECK_NN(tr);
    if (tr) {
        int64_t n0 = 0, n1 = 0, n3 = 0;
        float *b0 = all_batches(tr, 0, 2, &n0), *b1 = all_batches(tr, 1, 2, &n1),
              *b3 = all_batches(tr, 3, 2, &n3);
        CHECK(b0 && b1 && b3 && n0 > 0 && n0 == n1 && n0 == n3);
        if (b0 && b1 && b3 && n0 == n1 && n0 == n3) {
            CHECK_MSG(!memcmp(b0, b1, (size_t)n0 * sizeof(float)), "1 worker differs from 0");
            CHECK_MSG(!memcmp(b0, b3, (size_t)n0 * sizeof(float)), "3 workers differ from 0");
            /* the two epochs differ (new crops and order) */
            CHECK(memcmp(b0, b0 + n0 / 2, (size_t)n0 / 2 * sizeof(float)) != 0);
        }
        free(b0);
        free(b1);
        free(b3);
    }
    ct_dataset_free(tr);
    ct_dataset_free(cif);
#endif
}

TEST(imagefolder_bad_images_error_or_skip) {
#ifndef CT_HAVE_IMAGE
    SKIP("built without libjpeg / libpng");
#else
    const char *root = tmp_root("bad_folder");
    mkdirs(root);
    ct_dataset *cif = make_cifar_folder(root, 30, 4);
    if (!cif) SKIP("CIFAR-10 not found in $CTORCH_DATA");
    /* a truncated JPEG (cut in its scan data), a PNG cut short, a text file named .png */
    ct_dataset *tmp = ct_imagefolder_load(root, CT_SPLIT_TRAIN, NULL, 0);
    CHECK_NN(tmp);
    if (!tmp) return;
    const char *bad[3] = {NULL, NULL, NULL};
    char keep[3][1024];
    for (int64_t i = 0, k = 0; i < tmp->n && k < 2; i++) {
        const char *q = ct_dataset_record_path(tmp, i);
        if ((k == 0 && strstr(q, ".jpg")) || (k == 1 && strstr(q, ".png"))) {
            snprintf(keep[k], sizeof keep[k], "%s", q);
            bad[k] = keep[k];
            k++;
        }
    }
    ct_dataset_free(tmp);
    CHECK(bad[0] && bad[1]);
    if (!bad[0] || !bad[1]) return;
    for (int k = 0; k < 2; k++) {
        FILE *f = fopen(bad[k], "rb");
        uint8_t buf[8192];
        size_t n = f ? fread(buf, 1, sizeof buf, f) : 0;
        if (f) fclose(f);
        f = fopen(bad[k], "wb");
        if (f) {
            fwrite(buf, 1, n * 2 / 3, f);
            fclose(f);
        }
    }
    snprintf(keep[2], sizeof keep[2], "%s/train/truck/notes.png", root);
    bad[2] = keep[2];
    FILE *f = fopen(bad[2], "w");
    if (f) {
        fputs("hello\n", f);
        fclose(f);
    }
    ct_imagefolder_opts o = ct_imagefolder_default_opts();
    o.image_size = 32;
    /* error: the loader stops with the file's name */
    ct_dataset *ds = ct_imagefolder_load(root, CT_SPLIT_TRAIN, &o, 0);
    CHECK_NN(ds);
    ct_dataloader_opts lo = ct_dataloader_default_opts();
    lo.batch_size = 8;
    lo.shuffle = 0;
    lo.num_workers = 2;
    ct_dataloader *dl = ds ? ct_dataloader_new(ds, &lo) : NULL;
    ct_tensor *x, *y;
    int got, failed = 0;
    while (dl && (got = ct_dataloader_next(dl, &x, &y)) != 0) {
        if (got < 0) {
            failed = 1;
            CHECK(ct_dataloader_failed_on_bad_record(dl));
            CHECK_MSG(strstr(ct_last_error(), bad[0]) || strstr(ct_last_error(), bad[1]) ||
                          strstr(ct_last_error(), bad[2]),
                      "%s", ct_last_error());
            break;
        }
        ct_free(x);
        ct_free(y);
    }
    CHECK(failed);
    ct_dataloader_free(dl);
    ct_dataset_free(ds);
    /* skip: smaller batches, the three counted and named, every epoch */
    o.on_bad_image = CT_BAD_IMAGE_SKIP;
    ds = ct_imagefolder_load(root, CT_SPLIT_TRAIN, &o, 0);
    CHECK_NN(ds);
    for (int workers = 0; ds && workers <= 2; workers += 2) {
        lo.num_workers = workers;
        dl = ct_dataloader_new(ds, &lo);
        for (int e = 0; dl && e < 2; e++) {
            int64_t seen = 0;
            while ((got = ct_dataloader_next(dl, &x, &y)) == 1) {
                seen += ct_size(x, 0);
                CHECK(ct_size(x, 0) == ct_size(y, 0));
                ct_free(x);
                ct_free(y);
            }
            CHECK_MSG(got == 0, "%s", ct_last_error());
            const char *report;
            int64_t sk = ct_dataloader_skipped(dl, &report);
            CHECK_MSG(sk == 3 && seen == ds->n - 3, "epoch %d, %d workers: skipped %lld, seen %lld of %lld",
                      e, workers, (long long)sk, (long long)seen, (long long)ds->n);
            for (int k = 0; k < 3; k++) CHECK_MSG(strstr(report, bad[k]) != NULL, "%s not in %s", bad[k], report);
        }
        ct_dataloader_free(dl);
    }
    ct_dataset_free(ds);
    ct_dataset_free(cif);
#endif
}

TEST(imagefolder_cli_train_and_bad_image_exit_codes) {
#ifndef CT_HAVE_IMAGE
    SKIP("built without libjpeg / libpng");
#else
    const char *root = tmp_root("cli_folder");
    mkdirs(root);
    ct_dataset *cif = make_cifar_folder(root, 96, 32);
    if (!cif) SKIP("CIFAR-10 not found in $CTORCH_DATA");
    ct_dataset_free(cif);
    char cmd[2048], log[512];
    snprintf(log, sizeof log, "%s/if_train.log", tmpdir());
    snprintf(cmd, sizeof cmd, "%s train --model simple_cnn --dataset imagefolder --data-dir %s "
             "--image-size 32 --epochs 2 --batch-size 16 --threads 2 --run-dir %s/if_run1",
             bin(), root, tmpdir());
    int rc = run(cmd, log);
    CHECK_MSG(rc == 0, "train exited %d", rc);
    CHECK(log_has(log, "training simple_cnn on imagefolder: 96 train / 32 test images"));
    CHECK(log_has(log, "epoch 2/2"));
    CHECK(log_has(log, "data_wait"));
    if (rc) show_log(log);
    char mp[600];
    snprintf(mp, sizeof mp, "%s/if_run1/model.safetensors", tmpdir());
    /* eval on val with the trained weights */
    snprintf(cmd, sizeof cmd, "%s eval --model simple_cnn --checkpoint %s --dataset imagefolder "
             "--data-dir %s --image-size 32", bin(), mp, root);
    rc = run(cmd, log);
    CHECK_MSG(rc == 0 && log_has(log, "imagefolder test (32 images)"), "eval exited %d", rc);
    /* a corrupt image: exit 2 naming it; skip: trains and reports it */
    char badp[700];
    snprintf(badp, sizeof badp, "%s/train/ship/zz_broken.jpg", root);
    FILE *f = fopen(badp, "wb");
    if (f) {
        fputs("\xff\xd8\xff\xe0 broken", f);
        fclose(f);
    }
    snprintf(cmd, sizeof cmd, "%s train --model simple_cnn --dataset imagefolder --data-dir %s "
             "--image-size 32 --epochs 1 --batch-size 16 --run-dir %s/if_run2", bin(), root, tmpdir());
    rc = run(cmd, log);
    CHECK_MSG(rc == 2 && log_has(log, "zz_broken.jpg"), "bad image: exit %d", rc);
    snprintf(cmd, sizeof cmd, "%s train --model simple_cnn --dataset imagefolder --data-dir %s "
             "--image-size 32 --epochs 1 --batch-size 16 --on-bad-image skip --run-dir %s/if_run3",
             bin(), root, tmpdir());
    rc = run(cmd, log);
    CHECK_MSG(rc == 0 && log_has(log, "skipped_images 1 train") && log_has(log, "zz_broken.jpg"),
              "skip: exit %d", rc);
    snprintf(mp, sizeof mp, "%s/if_run3/metrics.jsonl", tmpdir());
    CHECK(log_has(mp, "\"skipped_train_images\": 1"));
    /* usage errors */
    snprintf(cmd, sizeof cmd, "%s train --model simple_cnn --dataset imagefolder --epochs 1", bin());
    rc = run(cmd, log);
    CHECK_MSG(rc == 2 && log_has(log, "--data-dir"), "no --data-dir: exit %d", rc);
    snprintf(cmd, sizeof cmd, "%s train --model simple_cnn --dataset imagefolder --data-dir %s "
             "--on-bad-image maybe --epochs 1", bin(), root);
    rc = run(cmd, log);
    CHECK_MSG(rc == 2 && log_has(log, "--on-bad-image maybe"), "bad policy: exit %d", rc);
#endif
}

/* The val pipeline end to end against torchvision's ImageFolder + PIL on the same files
 * (JPEG and PNG): the batches ctorch's loader builds equal the tensors torchvision gives
 * (decoding, Resize, CenterCrop, ToTensor, Normalize), so a model's forward on them can be
 * compared with PyTorch's. */
TEST(imagefolder_val_batches_match_torchvision) {
#ifndef CT_HAVE_IMAGE
    SKIP("built without libjpeg / libpng");
#else
    const char *py = peer_python("torch, torchvision, PIL");
    if (!py) SKIP("no Python with torch, torchvision and Pillow (bench/setup-peer.sh)");
    const char *root = tmp_root("tv_folder");
    mkdirs(root);
    ct_dataset *cif = make_cifar_folder(root, 100, 60); /* every class in both */
    if (!cif) SKIP("CIFAR-10 not found in $CTORCH_DATA");
    ct_dataset_free(cif);
    char script[600], out[600], log[600], cmd[2400];
    snprintf(script, sizeof script, "%s/tv_val.py", tmpdir());
    snprintf(out, sizeof out, "%s/tv_val.bin", tmpdir());
    snprintf(log, sizeof log, "%s/tv_val.log", tmpdir());
    FILE *f = fopen(script, "w");
    if (!f) return;
    fprintf(f, "import sys, torch, torchvision.transforms as T\n"
               "from torchvision.datasets import ImageFolder\n"
               "tf = T.Compose([T.Resize(36), T.CenterCrop(32), T.ToTensor(),\n"
               "                T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])\n"
               "ds = ImageFolder(sys.argv[1] + '/val', transform=tf)\n"
               "x = torch.stack([ds[i][0] for i in range(len(ds))])\n"
               "y = torch.tensor([ds[i][1] for i in range(len(ds))], dtype=torch.float32)\n"
               "open(sys.argv[2], 'wb').write(torch.cat([x.flatten(), y]).numpy().tobytes())\n");
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s %s %s %s", py, script, root, out);
    int rc = run(cmd, log);
    CHECK_MSG(rc == 0, "torchvision script exited %d", rc);
    if (rc) {
        show_log(log);
        return;
    }
    ct_imagefolder_opts o = ct_imagefolder_default_opts();
    o.image_size = 32;
    ct_dataset *va = ct_imagefolder_load(root, CT_SPLIT_TEST, &o, 0);
    CHECK_NN(va);
    if (!va) return;
    ct_dataloader_opts lo = ct_dataloader_default_opts();
    lo.shuffle = 0;
    lo.batch_size = va->n;
    lo.transform.normalize = 1;
    ct_dataset_default_normalization(CT_DATASET_IMAGEFOLDER, lo.transform.mean, lo.transform.std);
    ct_dataloader *dl = ct_dataloader_new(va, &lo);
    ct_tensor *x = NULL, *y = NULL;
    CHECK(dl && ct_dataloader_next(dl, &x, &y) == 1);
    size_t nx = (size_t)va->n * 3 * 32 * 32, ny = (size_t)va->n;
    float *want = malloc((nx + ny) * sizeof(float));
    f = fopen(out, "rb");
    size_t got = f && want ? fread(want, sizeof(float), nx + ny, f) : 0;
    if (f) fclose(f);
    CHECK_MSG(got == nx + ny, "torchvision gave %zu values, ctorch %zu", got, nx + ny);
    if (x && got == nx + ny) {
        const float *a = ct_data(x);
        const int64_t *lab = ct_data(y);
        double worst = 0;
        for (size_t i = 0; i < nx; i++) worst = fmax(worst, fabs((double)a[i] - want[i]));
        CHECK_MSG(worst <= 1e-6, "images differ from torchvision's by up to %g", worst);
        for (size_t i = 0; i < ny; i++) CHECK(lab[i] == (int64_t)want[nx + i]);
    }
    free(want);
    ct_free(x);
    ct_free(y);
    ct_dataloader_free(dl);
    ct_dataset_free(va);
#endif
}

/* The fine-tuning path end to end: a folder of JPEG and PNG images made from the
 * CIFAR-10 test set; torchvision's resnet18 saved by torch.save (tests/
 * peer_torchvision_weights.py). Its forward over the folder equals PyTorch's (torchvision's
 * ImageFolder + PIL + the same validation transforms, tests/peer_imagefolder_eval.py): the
 * mean loss within 1e-4 relative and the same number of right answers; then ctorch train
 * fine-tunes it from the .pt with a new 10-class head (--num-classes 10 --init-ignore fc.). */
const char *tv_peer_weights(void); /* tests/test_torchvision_models.c */

/* `ctorch train --dataset imagefolder --data-dir ROOT --threads 2 --no-checkpoints ARGS`
 * (log in tmpdir()/NAME.log, run in tmpdir()/NAME): its exit status. A run that should
 * finish (want 0) must report its final test accuracy. */
static int folder_train(const char *root, const char *args, const char *name, int want) {
    char cmd[3072], log[512];
    snprintf(log, sizeof log, "%s/%s.log", tmpdir(), name);
    snprintf(cmd, sizeof cmd, "%s train --dataset imagefolder --data-dir %s --threads 2 "
             "--no-checkpoints --run-dir %s/%s %s", bin(), root, tmpdir(), name, args);
    int rc = run(cmd, log);
    CHECK_MSG(rc == want, "%s exited %d, want %d", name, rc, want);
    if (want == 0) CHECK_MSG(log_has(log, "final test accuracy"), "%s: no final accuracy", name);
    if (rc != want) show_log(log);
    return rc;
}

TEST(imagefolder_finetune_torchvision_resnet18_from_pt) {
#ifndef CT_HAVE_IMAGE
    SKIP("built without libjpeg / libpng");
#else
    const char *wdir = tv_peer_weights();
    if (!wdir) SKIP("no Python with torch, torchvision and safetensors (bench/setup-peer.sh)");
    const char *py = peer_python("torch, torchvision, safetensors.torch");
    const char *root = tmp_root("ft_folder");
    mkdirs(root);
    ct_dataset *cif = make_cifar_folder(root, 128, 256);
    if (!cif) SKIP("CIFAR-10 not found in $CTORCH_DATA");
    ct_dataset_free(cif);
    char cmd[3072], log[512], plog[512];
    snprintf(log, sizeof log, "%s/ft_eval.log", tmpdir());
    snprintf(cmd, sizeof cmd, "%s eval --model resnet18 --checkpoint %s/resnet18.pt --dataset "
             "imagefolder --data-dir %s --image-size 32 --num-classes 1000 --threads 2 --json",
             bin(), wdir, root);
    CHECK_MSG(run(cmd, log) == 0, "ctorch eval failed");
    snprintf(plog, sizeof plog, "%s/ft_peer.log", tmpdir());
    snprintf(cmd, sizeof cmd, "'%s' tests/peer_imagefolder_eval.py %s %s/resnet18.pt 32", py, root,
             wdir);
    CHECK_MSG(run(cmd, plog) == 0, "tests/peer_imagefolder_eval.py failed");
    double cl = -1, ca = -1, pl = -2, pc = -1, n = 0;
    FILE *f = fopen(log, "r");
    char line[4096];
    while (f && fgets(line, sizeof line, f)) {
        char *p = strstr(line, "\"test_loss\"");
        if (p) sscanf(strchr(p, ':') + 1, "%lf", &cl);
        if ((p = strstr(line, "\"test_acc\""))) sscanf(strchr(p, ':') + 1, "%lf", &ca);
    }
    if (f) fclose(f);
    f = fopen(plog, "r");
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, "\"images\""))
            sscanf(line, "{\"images\": %lf, \"test_loss\": %lf, \"correct\": %lf", &n, &pl, &pc);
    if (f) fclose(f);
    fprintf(stderr, "    folder of 256 val images: ctorch loss %.6f acc %.4f, PyTorch loss %.6f "
            "correct %.0f/%.0f\n", cl, ca, pl, pc, n);
    CHECK_MSG(n == 256, "PyTorch's ImageFolder saw %.0f images", n);
    CHECK_MSG(fabs(cl - pl) <= 1e-4 * fabs(pl), "loss %.6f vs PyTorch's %.6f", cl, pl);
    CHECK_MSG(fabs(ca * 256 - pc) < 0.5, "accuracy %.4f vs PyTorch's %.0f/256", ca, pc);
    if (fabs(cl - pl) > 1e-4 * fabs(pl)) show_log(log), show_log(plog);

    snprintf(cmd, sizeof cmd, "--model resnet18 --image-size 32 --init %s/resnet18.pt "
             "--num-classes 10 --init-ignore fc. --lr-backbone 0.001 --epochs 1 --batch-size 32",
             wdir);
    folder_train(root, cmd, "ft_train", 0);
#endif
}

/* vit_b_16 fine-tunes through the image-folder path: torchvision's architecture at 224x224
 * (the folder's 32-pixel images resized by the validation and training transforms), its
 * ImageNet head replaced (--num-classes 10 --init-ignore heads.) and trained one step from
 * weights of its own (ct_module_save: the same names torchvision's files carry). */
TEST(imagefolder_finetune_vit_b_16) {
#ifndef CT_HAVE_IMAGE
    SKIP("built without libjpeg / libpng");
#else
    const char *root = tmp_root("vit_folder");
    mkdirs(root);
    ct_dataset *cif = make_cifar_folder(root, 64, 8); /* 64: every class in train/ */
    if (!cif) SKIP("CIFAR-10 not found in $CTORCH_DATA");
    ct_dataset_free(cif);
    char w[512], cmd[2048], log[512];
    snprintf(w, sizeof w, "%s/vit_b_16_1000.safetensors", tmpdir());
    ct_module *m = ct_model_create("vit_b_16", 1000);
    CHECK_NN(m);
    if (!m) return;
    CHECK_OK(ct_module_save(m, w, NULL));
    ct_module_free(m);
    snprintf(cmd, sizeof cmd, "--model vit_b_16 --image-size 224 --init %s --num-classes 10 "
             "--init-ignore heads. --optimizer adamw --lr 1e-4 --lr-backbone 1e-5 --epochs 1 "
             "--batch-size 4 --max-steps 2 --test-limit 4", w);
    folder_train(root, cmd, "vit_ft", 0);
    /* without --init-ignore the 1000-class head does not fit: exit 2 naming the prefix */
    snprintf(cmd, sizeof cmd, "--model vit_b_16 --image-size 224 --init %s --num-classes 10 "
             "--max-steps 1", w);
    folder_train(root, cmd, "vit_ft_head", 2);
    snprintf(log, sizeof log, "%s/vit_ft_head.log", tmpdir());
    CHECK_MSG(log_has(log, "heads.head"), "the message names the mismatched head");
    remove(w);
#endif
}
