/* JPEG and PNG decoding (libjpeg-turbo, libpng) into 8-bit RGB, HWC, converted as PIL's
 * Image.open(...).convert("RGB") does:
 *   grayscale (any bit depth) -> replicated; 1/2/4-bit grey scaled to 0..255 (x255, x85, x17);
 *   grayscale + alpha, RGBA  -> alpha dropped (not composited on any background);
 *   palette                  -> looked up (transparency ignored);
 *   16-bit RGB, RGBA, LA     -> the high byte of each sample (PIL's "RGB;16B" unpacker);
 *   16-bit grayscale         -> clipped to 255 (PIL opens it as "I;16", whose conversion
 *                               clips rather than scales);
 *   CMYK / YCCK JPEG         -> inverted (Adobe convention, PIL's "CMYK;I") then
 *                               R = (255 - C)(255 - K)/255 rounded, as PIL's cmyk2rgb.
 * gAMA, iCCP and EXIF orientation are ignored, as PIL's convert does.
 *
 * Errors never unwind past our frames in an unsafe way: each library's error handler
 * longjmps back to the setjmp in the one function that calls into that library, which
 * frees what it allocated (held in a context struct in the caller's frame, so its values
 * survive the longjmp) and returns -1 with a message. A JPEG that ends early (libjpeg's
 * "Premature end of JPEG file" warning, which would otherwise decode grey padding) is an
 * error, as PIL's "image file is truncated". */
#include "data/data_internal.h"

#include "core/error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* PIL's DecompressionBombError threshold (2 * MAX_IMAGE_PIXELS). */
static int64_t g_max_pixels = 2 * 89478485LL;

void ct__image_set_max_pixels(int64_t n) { g_max_pixels = n > 0 ? n : 2 * 89478485LL; }
int64_t ct__image_max_pixels(void) { return g_max_pixels; }

void ct_image_free(ct_image *img) {
    if (!img) return;
    free(img->data);
    img->data = NULL;
    img->h = img->w = 0;
}

static int fail(char *err, size_t nerr, const char *fmt, ...) CT_PRINTF(3, 4);
static int fail(char *err, size_t nerr, const char *fmt, ...) {
    if (err && nerr) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, nerr, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int ct_image_alloc(ct_image *img, int h, int w) {
    img->h = h;
    img->w = w;
    img->data = malloc((size_t)h * (size_t)w * 3 + 1);
    return img->data ? 0 : -1;
}

#ifdef CT_HAVE_IMAGE
static int check_dims(int64_t w, int64_t h, char *err, size_t nerr) {
    if (w <= 0 || h <= 0) return fail(err, nerr, "the image has no pixels (%lldx%lld)", (long long)w, (long long)h);
    if (w * h > g_max_pixels)
        return fail(err, nerr, "the image is %lldx%lld pixels, more than the %lld allowed "
                    "(a decompression bomb?)", (long long)w, (long long)h, (long long)g_max_pixels);
    return 0;
}

#include <jerror.h>
#include <jpeglib.h>
#include <png.h>
#include <setjmp.h>

int ct_image_available(void) { return 1; }

/* ------------------------------------------------------------------ JPEG */
typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    int truncated;
    char msg[JMSG_LENGTH_MAX];
} jerr_t;

static void jpeg_on_error(j_common_ptr cinfo) {
    jerr_t *e = (jerr_t *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, e->msg);
    longjmp(e->jb, 1);
}

static void jpeg_on_message(j_common_ptr cinfo, int level) {
    jerr_t *e = (jerr_t *)cinfo->err;
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) e->truncated = 1;
    /* other warnings (extraneous bytes, ...) pass silently, as in PIL */
}

typedef struct {
    struct jpeg_decompress_struct cinfo;
    jerr_t jerr;
    uint8_t *row; /* one decoded scanline (CMYK / grey) */
    ct_image img;
} jpeg_ctx;

static int decode_jpeg(jpeg_ctx *c, const uint8_t *buf, size_t n, char *err, size_t nerr) {
    struct jpeg_decompress_struct *ci = &c->cinfo;
    ci->err = jpeg_std_error(&c->jerr.pub);
    c->jerr.pub.error_exit = jpeg_on_error;
    c->jerr.pub.emit_message = jpeg_on_message;
    if (setjmp(c->jerr.jb)) {
        fail(err, nerr, "corrupt JPEG: %s", c->jerr.msg);
        jpeg_destroy_decompress(ci);
        return -1;
    }
    jpeg_create_decompress(ci);
    jpeg_mem_src(ci, buf, (unsigned long)n);
    jpeg_read_header(ci, TRUE);
    int cmyk = ci->jpeg_color_space == JCS_CMYK || ci->jpeg_color_space == JCS_YCCK;
    int gray = ci->jpeg_color_space == JCS_GRAYSCALE;
    ci->out_color_space = cmyk ? JCS_CMYK : gray ? JCS_GRAYSCALE : JCS_RGB;
    /* PIL's defaults: islow IDCT, fancy upsampling */
    ci->dct_method = JDCT_ISLOW;
    ci->do_fancy_upsampling = TRUE;
    if (check_dims(ci->image_width, ci->image_height, err, nerr) != 0) {
        jpeg_destroy_decompress(ci);
        return -1;
    }
    jpeg_start_decompress(ci);
    int w = (int)ci->output_width, h = (int)ci->output_height, nc = ci->output_components;
    if (ct_image_alloc(&c->img, h, w) != 0 || !(c->row = malloc((size_t)w * (size_t)nc))) {
        jpeg_destroy_decompress(ci);
        return fail(err, nerr, "out of memory for a %dx%d image", w, h);
    }
    while (ci->output_scanline < ci->output_height) {
        uint8_t *dst = c->img.data + (size_t)ci->output_scanline * w * 3;
        JSAMPROW rows[1] = {nc == 3 ? dst : c->row};
        if (jpeg_read_scanlines(ci, rows, 1) != 1) break;
        if (c->jerr.truncated) break;
        if (nc == 1) {
            for (int x = 0; x < w; x++) dst[3 * x] = dst[3 * x + 1] = dst[3 * x + 2] = c->row[x];
        } else if (nc == 4) {
            for (int x = 0; x < w; x++) {
                const uint8_t *p = c->row + 4 * x;
                unsigned k = p[3]; /* inverted: 255 - (255 - k) */
                for (int j = 0; j < 3; j++) {
                    unsigned t = (unsigned)p[j] * k + 128; /* (255 - c')(255 - k') with c' = 255 - c */
                    dst[3 * x + j] = (uint8_t)((t + (t >> 8)) >> 8);
                }
            }
        }
    }
    if (c->jerr.truncated || ci->output_scanline < ci->output_height) {
        jpeg_destroy_decompress(ci);
        return fail(err, nerr, "truncated JPEG: the data ends at row %u of %u",
                    ci->output_scanline, ci->output_height);
    }
    /* the rest of the stream (after the last scanline) is not needed; PIL stops here too */
    jpeg_destroy_decompress(ci);
    return 0;
}

/* ------------------------------------------------------------------ PNG */
typedef struct {
    jmp_buf jb;
    char msg[256];
    const uint8_t *buf;
    size_t n, pos;
    png_structp png;
    png_infop info;
    png_bytep *rows;
    uint8_t *raw; /* the decoded samples before conversion */
    ct_image img;
} png_ctx;

static void png_on_error(png_structp png, png_const_charp msg) {
    png_ctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg ? msg : "error");
    longjmp(c->jb, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

static void png_read_mem(png_structp png, png_bytep out, png_size_t len) {
    png_ctx *c = png_get_io_ptr(png);
    if (len > c->n - c->pos) png_error(png, "truncated: the file ends inside the image data");
    memcpy(out, c->buf + c->pos, len);
    c->pos += len;
}

static int decode_png(png_ctx *c, char *err, size_t nerr) {
    c->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, c, png_on_error, png_on_warning);
    if (!c->png) return fail(err, nerr, "out of memory (libpng)");
    if (setjmp(c->jb)) {
        png_destroy_read_struct(&c->png, c->info ? &c->info : NULL, NULL);
        return fail(err, nerr, "corrupt PNG: %s", c->msg);
    }
    c->info = png_create_info_struct(c->png);
    if (!c->info) png_error(c->png, "out of memory");
    png_set_read_fn(c->png, c, png_read_mem);
    png_set_user_limits(c->png, 1u << 20, 1u << 20);
    png_read_info(c->png, c->info);
    png_uint_32 w, h;
    int depth, ctype, interlace;
    png_get_IHDR(c->png, c->info, &w, &h, &depth, &ctype, &interlace, NULL, NULL);
    if (check_dims(w, h, err, nerr) != 0) {
        png_destroy_read_struct(&c->png, &c->info, NULL);
        return -1;
    }
    if (ctype == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(c->png); /* tRNS not expanded */
    if (ctype == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(c->png);
    if (interlace != PNG_INTERLACE_NONE) png_set_interlace_handling(c->png);
    png_read_update_info(c->png, c->info);
    int ch = png_get_channels(c->png, c->info);
    int bytes = png_get_bit_depth(c->png, c->info) == 16 ? 2 : 1;
    size_t rowbytes = png_get_rowbytes(c->png, c->info);
    if (rowbytes != (size_t)w * ch * bytes) png_error(c->png, "unexpected row layout");
    if (ct_image_alloc(&c->img, (int)h, (int)w) != 0 || !(c->raw = malloc(rowbytes * h)) ||
        !(c->rows = malloc(sizeof(png_bytep) * h)))
        png_error(c->png, "out of memory");
    for (png_uint_32 y = 0; y < h; y++) c->rows[y] = c->raw + (size_t)y * rowbytes;
    png_read_image(c->png, c->rows);
    int gray16 = bytes == 2 && ch <= 2 && ctype == PNG_COLOR_TYPE_GRAY;
    for (size_t i = 0; i < (size_t)w * h; i++) {
        const uint8_t *p = c->raw + i * ch * bytes;
        uint8_t *d = c->img.data + 3 * i;
        if (gray16) { /* PIL "I;16" -> RGB clips */
            unsigned v = (unsigned)p[0] << 8 | p[1];
            d[0] = d[1] = d[2] = (uint8_t)(v > 255 ? 255 : v);
        } else if (ch <= 2) { /* grey, grey + alpha (high byte when 16-bit) */
            d[0] = d[1] = d[2] = p[0];
        } else {
            for (int j = 0; j < 3; j++) d[j] = p[j * bytes];
        }
    }
    png_destroy_read_struct(&c->png, &c->info, NULL);
    return 0;
}

int ct_image_decode(const uint8_t *buf, size_t n, ct_image *out, char *err, size_t nerr) {
    if (err && nerr) err[0] = '\0';
    out->data = NULL;
    out->h = out->w = 0;
    if (!buf || n < 8) return fail(err, nerr, "not an image: %zu bytes", buf ? n : 0);
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (buf[0] == 0xFF && buf[1] == 0xD8) {
        jpeg_ctx c;
        memset(&c, 0, sizeof c);
        int rc = decode_jpeg(&c, buf, n, err, nerr);
        free(c.row);
        if (rc != 0) {
            ct_image_free(&c.img);
            return -1;
        }
        *out = c.img;
        return 0;
    }
    if (memcmp(buf, png_sig, 8) == 0) {
        png_ctx c;
        memset(&c, 0, sizeof c);
        c.buf = buf;
        c.n = n;
        int rc = decode_png(&c, err, nerr);
        free(c.rows);
        free(c.raw);
        if (rc != 0) {
            ct_image_free(&c.img);
            return -1;
        }
        *out = c.img;
        return 0;
    }
    return fail(err, nerr, "not a JPEG or PNG file (it starts with %02x %02x %02x %02x)", buf[0],
                buf[1], buf[2], buf[3]);
}
#else
int ct_image_available(void) { return 0; }

int ct_image_decode(const uint8_t *buf, size_t n, ct_image *out, char *err, size_t nerr) {
    (void)buf;
    (void)n;
    out->data = NULL;
    out->h = out->w = 0;
    return fail(err, nerr, "image decoding is not built in: install libjpeg62-turbo-dev and "
                "libpng-dev and rebuild ctorch");
}
#endif

int ct_image_load(const char *path, ct_image *out, char *err, size_t nerr) {
    out->data = NULL;
    out->h = out->w = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return fail(err, nerr, "%s: cannot open: %s", path, strerror(errno));
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            size_t ncap = cap ? 2 * cap : 1 << 16;
            uint8_t *nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                fclose(f);
                return fail(err, nerr, "%s: out of memory reading it", path);
            }
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    int rerr = ferror(f);
    fclose(f);
    if (rerr) {
        free(buf);
        return fail(err, nerr, "%s: read error", path);
    }
    char why[400];
    int rc = ct_image_decode(buf, len, out, why, sizeof why);
    free(buf);
    if (rc != 0) return fail(err, nerr, "%s: %s", path, why);
    return 0;
}
