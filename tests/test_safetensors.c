/* safetensors checkpoints: round trips of every supported dtype, the exact byte layout,
 * a file written from PyTorch tensors in Python (tests/fixtures/gen_safetensors.py), and
 * rejection of truncated / corrupt files without crashing; atomic writes. */
#include "test.h"

#include "ctorch_io.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int make_tmpdir(char *out, size_t n) { return ct_test_mkdtemp(out, n, "/tmp/ctorch_st_test_XXXXXX"); }

static int contains(const char *hay, const char *needle) {
    return hay && strstr(hay, needle) != NULL;
}

#define CHECK_ERRMSG(needle)                                                                 \
    CHECK_MSG(contains(ct_last_error(), needle), "error message lacks \"%s\": %s", needle,   \
              ct_last_error())

static uint8_t *read_all(const char *path, size_t *n) {
    *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)sz + 1);
    *n = fread(b, 1, (size_t)sz, f);
    fclose(f);
    return b;
}

static void write_all(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    CHECK_MSG(f != NULL, "cannot write %s", path);
    if (!f) return;
    if (n) CHECK(fwrite(data, 1, n, f) == n);
    fclose(f);
}

/* Writes a safetensors file from a header string and raw data. */
static void write_st(const char *path, const char *header, const void *data, size_t ndata) {
    size_t hl = strlen(header);
    uint8_t *b = malloc(8 + hl + ndata + 1);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(b + 8, header, hl);
    if (ndata) memcpy(b + 8 + hl, data, ndata);
    write_all(path, b, 8 + hl + ndata);
    free(b);
}

/* Raw logical bytes of t (row-major). */
static uint8_t *tensor_bytes(const ct_tensor *t, size_t *n) {
    *n = (size_t)ct_numel(t) * ct_dtype_size(ct_dtype_of(t));
    uint8_t *b = malloc(*n ? *n : 1);
    if (ct_copy_to_buffer(t, b, *n) != 0) {
        free(b);
        return NULL;
    }
    return b;
}

static ct_tensor *raw_tensor(const void *data, const int64_t *shape, int ndim, ct_dtype dt) {
    return ct_from_data(data, shape, ndim, dt);
}

TEST(safetensors_roundtrip_all_dtypes) {
    char tmp[256], path[512];
    CHECK(make_tmpdir(tmp, sizeof tmp) == 0);
    snprintf(path, sizeof path, "%s/model.safetensors", tmp);

    const float f32[6] = {1.5f, -2.0f, 3.25f, 0.0f, -0.0f, 1e-30f};
    const double f64[4] = {1.0 / 3.0, -1e300, 2.5, 0.0};
    const int64_t i64[3] = {-1, (int64_t)1 << 62, 42};
    const int32_t i32[4] = {-2147483647 - 1, 2147483647, 0, 5};
    const uint8_t u8[5] = {0, 1, 127, 128, 255};
    const uint16_t bf16[3] = {0x3F80, 0xBDCD, 0x7F80}; /* 1, -0.1, inf */
    const uint16_t f16[2] = {0x3C00, 0xC100};          /* 1, -2.5 */
    const uint8_t mask[3] = {1, 0, 1};
    const float scalar = 7.0f;
    const float grid[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
    int64_t s23[2] = {2, 3}, s4[1] = {4}, s3[1] = {3}, s22[2] = {2, 2}, s5[1] = {5}, s2[1] = {2},
            s34[2] = {3, 4};
    ct_tensor *base = raw_tensor(grid, s34, 2, CT_FLOAT32);
    ct_tensor *ts[10] = {
        raw_tensor(f32, s23, 2, CT_FLOAT32), raw_tensor(f64, s4, 1, CT_FLOAT64),
        raw_tensor(i64, s3, 1, CT_INT64),    raw_tensor(i32, s22, 2, CT_INT32),
        raw_tensor(u8, s5, 1, CT_UINT8),     raw_tensor(bf16, s3, 1, CT_BFLOAT16),
        raw_tensor(f16, s2, 1, CT_FLOAT16),  raw_tensor(&scalar, NULL, 0, CT_FLOAT32),
        ct_transpose(base, 0, 1), /* non-contiguous [4, 3] */
        raw_tensor(mask, s3, 1, CT_BOOL),
    };
    const char *names[10] = {"features.0.weight", "f64", "i64", "i32", "u8",
                             "bf16", "f16", "scalar", "classifier.weight", "mask"};
    for (int i = 0; i < 10; i++) CHECK_NN(ts[i]);
    CHECK(!ct_is_contiguous(ts[8]));
    const char *meta[] = {"format", "pt", "note", "quote \" backslash \\ newline \n", NULL};
    CHECK_OK(ct_safetensors_save(path, names, ts, 10, meta));
    CHECK(ct_test_count_files(tmp) == 1); /* no temporary left behind */

    ct_safetensors *st = ct_safetensors_load(path);
    CHECK_NN(st);
    if (st) {
        CHECK(st->n == 10);
        for (int i = 0; i < 10 && i < st->n; i++) {
            CHECK_MSG(strcmp(st->names[i], names[i]) == 0, "name %d: %s", i, st->names[i]);
            ct_tensor *got = ct_safetensors_get(st, names[i]);
            CHECK_NN(got);
            if (!got) continue;
            CHECK(ct_dtype_of(got) == ct_dtype_of(ts[i]));
            CHECK(ct_ndim(got) == ct_ndim(ts[i]));
            for (int d = 0; d < ct_ndim(got); d++) CHECK(ct_size(got, d) == ct_size(ts[i], d));
            size_t na, nb;
            uint8_t *a = tensor_bytes(got, &na), *b = tensor_bytes(ts[i], &nb);
            CHECK_MSG(a && b && na == nb && memcmp(a, b, na) == 0, "tensor %s differs", names[i]);
            free(a);
            free(b);
        }
        ct_tensor *tr = ct_safetensors_get(st, "classifier.weight");
        if (tr) CHECK(((const float *)ct_data(tr))[1] == 4.0f); /* row 0 of the transpose: 0, 4, 8 */
        CHECK(strcmp(ct_safetensors_metadata(st, "format"), "pt") == 0);
        CHECK(strcmp(ct_safetensors_metadata(st, "note"), meta[3]) == 0);
        CHECK(ct_safetensors_metadata(st, "missing") == NULL);
        CHECK(ct_safetensors_get(st, "missing") == NULL);
        ct_safetensors_free(st);
    }
    for (int i = 0; i < 10; i++) ct_free(ts[i]);
    ct_free(base);
    ct_test_rm_rf(tmp);
}

/* The exact bytes of a small file: length, compact JSON padded to 8 bytes, data. */
TEST(safetensors_byte_layout) {
    char tmp[256], path[512];
    CHECK(make_tmpdir(tmp, sizeof tmp) == 0);
    snprintf(path, sizeof path, "%s/a.safetensors", tmp);
    const float v[2] = {1.0f, -2.0f};
    int64_t s2[1] = {2};
    ct_tensor *t = ct_from_data(v, s2, 1, CT_FLOAT32);
    const char *names[1] = {"a"};
    CHECK_OK(ct_safetensors_save(path, names, &t, 1, NULL));
    size_t n;
    uint8_t *b = read_all(path, &n);
    const char *want = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    size_t wl = strlen(want), padded = (wl + 7) / 8 * 8;
    CHECK(b != NULL && n == 8 + padded + 8);
    if (b && n == 8 + padded + 8) {
        uint64_t hl = 0;
        for (int i = 7; i >= 0; i--) hl = hl << 8 | b[i];
        CHECK(hl == padded);
        CHECK(memcmp(b + 8, want, wl) == 0);
        for (size_t i = wl; i < padded; i++) CHECK(b[8 + i] == ' ');
        CHECK(memcmp(b + 8 + padded, v, 8) == 0);
    }
    free(b);

    /* "__metadata__" first, then the tensors in the order given (not sorted), names and
     * values escaped as JSON strings */
    int64_t s1[1] = {1};
    ct_tensor *u = ct_from_data(v, s1, 1, CT_FLOAT32);
    ct_tensor *zu[2] = {t, u};
    const char *names2[2] = {"z", "a\"\n\x01" "caf\xc3\xa9"};
    const char *meta[] = {"format", "pt", "note", "x/y", NULL};
    CHECK_OK(ct_safetensors_save(path, names2, zu, 2, meta));
    b = read_all(path, &n);
    const char *want2 = "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"x/y\"},"
                        "\"z\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                        "\"a\\\"\\n\\u0001caf\xc3\xa9\":{\"dtype\":\"F32\",\"shape\":[1],"
                        "\"data_offsets\":[8,12]}}";
    wl = strlen(want2);
    padded = (wl + 7) / 8 * 8;
    CHECK_MSG(b != NULL && n == 8 + padded + 12, "file of %zu bytes", n);
    if (b && n == 8 + padded + 12) {
        CHECK_MSG(memcmp(b + 8, want2, wl) == 0, "header %.*s", (int)wl, (const char *)b + 8);
        for (size_t i = wl; i < padded; i++) CHECK(b[8 + i] == ' ');
    }
    free(b);
    ct_safetensors *st = ct_safetensors_load(path);
    CHECK(st && st->n == 2 && ct_safetensors_get(st, names2[1]) != NULL &&
          strcmp(ct_safetensors_metadata(st, "note"), "x/y") == 0);
    ct_safetensors_free(st);
    ct_free(u);
    ct_free(t);
    ct_test_rm_rf(tmp);
}

static const char *fixture_path(char *buf, size_t n, const char *file) {
    const char *d = getenv("CT_FIXTURE_DIR");
    snprintf(buf, n, "%s/%s", d ? d : "tests/fixtures", file);
    return buf;
}

/* tests/fixtures/reference.safetensors comes from PyTorch tensors (see
 * gen_safetensors.py for the values stated here). */
TEST(safetensors_reads_python_reference) {
    char path[1024];
    fixture_path(path, sizeof path, "reference.safetensors");
    ct_safetensors *st = ct_safetensors_load(path);
    CHECK_NN(st);
    if (!st) return;
    CHECK(st->n == 10);
    CHECK(strcmp(ct_safetensors_metadata(st, "format"), "pt") == 0);
    CHECK(strcmp(ct_safetensors_metadata(st, "source"), "gen_safetensors.py") == 0);

    ct_tensor *w = ct_safetensors_get(st, "features.0.weight");
    CHECK(w && ct_dtype_of(w) == CT_FLOAT32 && ct_ndim(w) == 4 && ct_size(w, 0) == 2 &&
          ct_size(w, 1) == 3 && ct_size(w, 2) == 1 && ct_size(w, 3) == 1);
    if (w) {
        const float *p = ct_data(w);
        for (int i = 0; i < 6; i++) CHECK_MSG(p[i] == (float)i / 10.0f - 0.25f, "w[%d] = %g", i, p[i]);
    }
    ct_tensor *b = ct_safetensors_get(st, "classifier.bias");
    CHECK(b && ct_dtype_of(b) == CT_FLOAT64 && ct_numel(b) == 3);
    if (b) {
        const double *p = ct_data(b);
        CHECK(p[0] == 0.5 && p[1] == -1.25 && p[2] == 3.0e10);
    }
    ct_tensor *c = ct_safetensors_get(st, "counts");
    CHECK(c && ct_dtype_of(c) == CT_INT64 && ct_size(c, 0) == 2 && ct_size(c, 1) == 2);
    if (c) {
        const int64_t *p = ct_data(c);
        CHECK(p[0] == -3 && p[1] == 0 && p[2] == (int64_t)1 << 40 && p[3] == 7);
    }
    ct_tensor *ix = ct_safetensors_get(st, "idx");
    CHECK(ix && ct_dtype_of(ix) == CT_INT32 && ct_numel(ix) == 3);
    if (ix) {
        const int32_t *p = ct_data(ix);
        CHECK(p[0] == -7 && p[1] == 0 && p[2] == 2147483647);
    }
    ct_tensor *px = ct_safetensors_get(st, "pixels");
    CHECK(px && ct_dtype_of(px) == CT_UINT8 && ct_numel(px) == 4);
    if (px) {
        const uint8_t *p = ct_data(px);
        CHECK(p[0] == 0 && p[1] == 1 && p[2] == 128 && p[3] == 255);
    }
    /* half-precision bits as torch stores them: 1.0, -2.5, 0.1 -> 0x3C00, 0xC100, 0x2E66 */
    ct_tensor *h = ct_safetensors_get(st, "half");
    CHECK(h && ct_dtype_of(h) == CT_FLOAT16 && ct_numel(h) == 3);
    if (h) {
        const uint16_t *p = ct_data(h);
        CHECK(p[0] == 0x3C00 && p[1] == 0xC100 && p[2] == 0x2E66);
    }
    /* bfloat16: 1.0, -0.1 -> 0x3F80, 0xBDCD */
    ct_tensor *bf = ct_safetensors_get(st, "bf");
    CHECK(bf && ct_dtype_of(bf) == CT_BFLOAT16 && ct_numel(bf) == 2);
    if (bf) {
        const uint16_t *p = ct_data(bf);
        CHECK(p[0] == 0x3F80 && p[1] == 0xBDCD);
    }
    /* torch.bool is "BOOL", one byte per element */
    ct_tensor *mk = ct_safetensors_get(st, "mask");
    CHECK(mk && ct_dtype_of(mk) == CT_BOOL && ct_numel(mk) == 3);
    if (mk) {
        const uint8_t *p = ct_data(mk);
        CHECK(p[0] == 1 && p[1] == 0 && p[2] == 1);
    }
    ct_tensor *sc = ct_safetensors_get(st, "scalar");
    CHECK(sc && ct_ndim(sc) == 0 && ct_numel(sc) == 1);
    if (sc) CHECK(((const float *)ct_data(sc))[0] == 42.0f);
    ct_tensor *cafe = ct_safetensors_get(st, "caf\xc3\xa9"); /* "café" from a \u00e9 escape */
    CHECK(cafe && ct_numel(cafe) == 1);
    if (cafe) CHECK(((const float *)ct_data(cafe))[0] == 3.5f);
    /* Tensors come back in data order. */
    for (int i = 1; i < st->n; i++) CHECK(st->names[i] != NULL);
    ct_safetensors_free(st);
}

TEST(safetensors_rejects_corrupt_files) {
    char tmp[256], path[512];
    CHECK(make_tmpdir(tmp, sizeof tmp) == 0);
    snprintf(path, sizeof path, "%s/bad.safetensors", tmp);
    const float data[4] = {1, 2, 3, 4};

#define EXPECT_BAD(needle)                                                                   \
    do {                                                                                     \
        ct_clear_error();                                                                    \
        ct_safetensors *st_ = ct_safetensors_load(path);                                     \
        CHECK_MSG(st_ == NULL, "corrupt file accepted (expected error with \"%s\")", needle); \
        ct_safetensors_free(st_);                                                            \
        CHECK_ERRMSG(needle);                                                                \
        CHECK_ERRMSG("bad.safetensors");                                                     \
    } while (0)

    /* missing file */
    CHECK(ct_safetensors_load("/nonexistent/x.safetensors") == NULL);
    CHECK_ERRMSG("/nonexistent/x.safetensors");
    /* shorter than the length field */
    write_all(path, "\x10\0\0", 3);
    EXPECT_BAD("truncated");
    /* header longer than the file */
    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", data, 16);
    {
        size_t n;
        uint8_t *b = read_all(path, &n);
        b[0] = 0xff; /* header length 255+... > file */
        write_all(path, b, n);
        free(b);
    }
    EXPECT_BAD("truncated");
    /* absurd header length */
    {
        uint8_t b[16] = {0, 0, 0, 0, 0, 0, 0, 0x10, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '};
        write_all(path, b, 16);
    }
    EXPECT_BAD("header");
    /* JSON cut short */
    write_st(path, "{\"a\":{\"dtype\":\"F32\",", data, 16);
    EXPECT_BAD("bad header JSON");
    /* not JSON at all */
    write_st(path, "hello world", data, 16);
    EXPECT_BAD("bad header JSON");
    /* trailing garbage after the object */
    write_st(path, "{} x", NULL, 0);
    EXPECT_BAD("bad header JSON");
    /* data_offsets beyond the data (i.e. the data was truncated) */
    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", data, 12);
    EXPECT_BAD("outside");
    /* offsets that do not match the shape */
    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}", data, 16);
    EXPECT_BAD("needs 12 bytes");
    /* end before begin */
    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", data, 16);
    EXPECT_BAD("outside");
    /* unsupported dtype */
    write_st(path, "{\"a\":{\"dtype\":\"I8\",\"shape\":[4],\"data_offsets\":[0,4]}}", data, 16);
    EXPECT_BAD("unsupported dtype 'I8'");
    /* overlapping tensors */
    write_st(path,
             "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
             "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
             data, 16);
    EXPECT_BAD("overlap");
    /* duplicate names */
    write_st(path,
             "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
             "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
             data, 16);
    EXPECT_BAD("twice");
    /* missing field */
    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4]}}", data, 16);
    EXPECT_BAD("data_offsets");
    /* negative / fractional numbers */
    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[-4],\"data_offsets\":[0,16]}}", data, 16);
    EXPECT_BAD("bad header JSON");
    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4.0],\"data_offsets\":[0,16]}}", data, 16);
    EXPECT_BAD("bad header JSON");
    /* a shape whose byte count overflows */
    write_st(path,
             "{\"a\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296,4096],"
             "\"data_offsets\":[0,16]}}",
             data, 16);
    EXPECT_BAD("needs");
    /* too many dimensions */
    write_st(path, "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}",
             data, 16);
    EXPECT_BAD("dimensions");
    /* metadata values must be strings */
    write_st(path, "{\"__metadata__\":{\"k\":5}}", NULL, 0);
    EXPECT_BAD("bad header JSON");
    EXPECT_BAD("__metadata__ values must be strings");
    write_st(path, "{\"__metadata__\":[\"k\"]}", NULL, 0);
    EXPECT_BAD("__metadata__ must be an object");
    /* a key twice inside an entry, or in __metadata__ */
    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,8]}}",
             data, 16);
    EXPECT_BAD("twice");
    write_st(path, "{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", NULL, 0);
    EXPECT_BAD("twice");
    /* the errors about an entry name the tensor */
    write_st(path, "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", data, 16);
    EXPECT_BAD("data_offsets must be [begin, end]");
    EXPECT_BAD("tensor 'w'");
    write_st(path, "{\"w\":{\"dtype\":32,\"shape\":[2],\"data_offsets\":[0,8]}}", data, 16);
    EXPECT_BAD("tensor 'w'");
    write_st(path, "{\"w\":[1, 2]}", data, 16);
    EXPECT_BAD("tensor 'w'");
    write_st(path, "{\"w\":{\"dtype\":\"F32\",\"shape\":[9007199254740993],\"data_offsets\":[0,8]}}",
             data, 16);
    EXPECT_BAD("above 2^53");
    /* not an object, not UTF-8 */
    write_st(path, "[]", NULL, 0);
    EXPECT_BAD("not an object");
    write_st(path, "{\"caf\xe9\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", data, 16);
    EXPECT_BAD("bad header JSON");

    /* Valid odd-but-legal files load: empty header, extra keys, whitespace, a NULL
     * metadata, escapes in names. */
    write_st(path, "{}", NULL, 0);
    ct_safetensors *st = ct_safetensors_load(path);
    CHECK(st && st->n == 0);
    ct_safetensors_free(st);
    write_st(path,
             " { \"__metadata__\" : null , \"x\\ty\\u0041\" : { \"extra\" : [1, {\"z\": true}, "
             "null, -2.5e3] , \"shape\" : [ 2 ] , \"dtype\" : \"F32\" , \"data_offsets\" : [ 4 , "
             "12 ] } }\n  ",
             data, 16);
    st = ct_safetensors_load(path);
    CHECK_NN(st);
    if (st) {
        ct_tensor *t = ct_safetensors_get(st, "x\tyA");
        CHECK(t && ((const float *)ct_data(t))[0] == 2.0f);
        ct_safetensors_free(st);
    }

    /* Fuzz: random byte flips and truncations of a valid file must never crash. */
    const char *names[2] = {"w", "b"};
    int64_t s22[2] = {2, 2};
    ct_tensor *ts[2] = {ct_from_data(data, s22, 2, CT_FLOAT32), ct_from_data(data, s22, 1, CT_FLOAT32)};
    const char *meta[] = {"format", "pt", NULL};
    CHECK_OK(ct_safetensors_save(path, names, ts, 2, meta));
    size_t n = 0;
    uint8_t *orig = read_all(path, &n);
    CHECK(orig != NULL && n > 16);
    if (!orig || n <= 16) return;
    uint8_t *mut = malloc(n);
    uint64_t rng = 12345;
    int accepted = 0;
    for (int iter = 0; iter < 400; iter++) {
        memcpy(mut, orig, n);
        size_t len = n;
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        if (iter % 4 == 0) {
            len = (size_t)(rng >> 33) % n;
        } else {
            for (int k = 0; k < 1 + iter % 3; k++) {
                rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                size_t pos = (size_t)(rng >> 33) % n;
                mut[pos] = (uint8_t)(rng >> 13);
            }
        }
        write_all(path, mut, len);
        st = ct_safetensors_load(path);
        accepted += st != NULL;
        ct_safetensors_free(st);
    }
    CHECK(accepted < 400);
    free(mut);
    free(orig);
    ct_free(ts[0]);
    ct_free(ts[1]);
    ct_test_rm_rf(tmp);
#undef EXPECT_BAD
}

TEST(safetensors_save_errors_and_atomic_replace) {
    char tmp[256], path[512];
    CHECK(make_tmpdir(tmp, sizeof tmp) == 0);
    snprintf(path, sizeof path, "%s/ckpt.safetensors", tmp);
    const float v1[2] = {1, 2}, v2[3] = {5, 6, 7};
    int64_t s2[1] = {2}, s3[1] = {3};
    ct_tensor *a = ct_from_data(v1, s2, 1, CT_FLOAT32), *b = ct_from_data(v2, s3, 1, CT_FLOAT32);
    ct_tensor *ab[2] = {a, b};

    const char *dup[2] = {"x", "x"};
    CHECK_ERR_INT(ct_safetensors_save(path, dup, ab, 2, NULL), "used twice");
    const char *empty[1] = {""};
    CHECK_ERR_INT(ct_safetensors_save(path, empty, ab, 1, NULL), "empty name");
    const char *reserved[1] = {"__metadata__"};
    CHECK_ERR_INT(ct_safetensors_save(path, reserved, ab, 1, NULL), "reserved");
    const char *one[1] = {"x"};
    ct_tensor *nul[1] = {NULL};
    CHECK_ERR_INT(ct_safetensors_save(path, one, nul, 1, NULL), "NULL");
    const char *badmeta[] = {"k", NULL};
    CHECK_ERR_INT(ct_safetensors_save(path, one, ab, 1, badmeta), "metadata");
    const char *twice[] = {"k", "a", "k", "b", NULL};
    CHECK_ERR_INT(ct_safetensors_save(path, one, ab, 1, twice), "given twice");
    const char *latin1[1] = {"caf\xe9"};
    CHECK_ERR_INT(ct_safetensors_save(path, latin1, ab, 1, NULL), "not valid UTF-8");
    const char *latin1_meta[] = {"k", "caf\xe9", NULL};
    CHECK_ERR_INT(ct_safetensors_save(path, one, ab, 1, latin1_meta), "not valid UTF-8");
    CHECK_ERR_INT(ct_safetensors_save("/nonexistent-dir/x.safetensors", one, ab, 1, NULL),
                  "does not exist");
    CHECK_ERR_INT(ct_safetensors_save(tmp, one, ab, 1, NULL), "is a directory");
    CHECK(ct_test_count_files(tmp) == 0);

    CHECK_OK(ct_check_writable(path));
    CHECK(ct_test_count_files(tmp) == 0); /* the probe is gone */
    CHECK_ERR_INT(ct_check_writable("/nonexistent-dir/x.safetensors"), "does not exist");

    /* save, then replace atomically */
    const char *n1[1] = {"first"};
    CHECK_OK(ct_safetensors_save(path, n1, &a, 1, NULL));
    const char *n2[2] = {"second", "third"};
    CHECK_OK(ct_safetensors_save(path, n2, ab, 2, NULL));
    CHECK(ct_test_count_files(tmp) == 1);
    ct_safetensors *st = ct_safetensors_load(path);
    CHECK(st && st->n == 2 && ct_safetensors_get(st, "first") == NULL);
    if (st) {
        ct_tensor *t = ct_safetensors_get(st, "third");
        CHECK(t && ct_numel(t) == 3 && ((const float *)ct_data(t))[2] == 7.0f);
    }
    ct_safetensors_free(st);
    /* a failed save leaves the previous file intact */
    CHECK(ct_safetensors_save(path, dup, ab, 2, NULL) != 0);
    st = ct_safetensors_load(path);
    CHECK(st && st->n == 2);
    ct_safetensors_free(st);
    /* an empty checkpoint is valid */
    CHECK_OK(ct_safetensors_save(path, NULL, NULL, 0, NULL));
    st = ct_safetensors_load(path);
    CHECK(st && st->n == 0);
    ct_safetensors_free(st);

    ct_atomic_file *f = ct_atomic_open(path);
    CHECK_NN(f);
    if (f) {
        fputs("partial", f->fp);
        ct_atomic_abort(f); /* nothing replaced, temp removed */
    }
    CHECK(ct_test_count_files(tmp) == 1);
    ct_free(a);
    ct_free(b);
    ct_test_rm_rf(tmp);
}

/* FIPS 180-2 test vectors; the streaming form gives the one-shot digest; a file's digest
 * is its bytes' and a missing file is named. */
TEST(sha256_known_vectors_stream_and_file) {
    char h[65];
    CHECK_OK(ct_sha256_buffer("abc", 3, h));
    CHECK(!strcmp(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    CHECK_OK(ct_sha256_buffer("", 0, h));
    CHECK(!strcmp(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    ct_sha256 *s = ct_sha256_new();
    CHECK_NN(s);
    ct_sha256_update(s, m, 10);
    ct_sha256_update(s, m + 10, strlen(m) - 10);
    CHECK_OK(ct_sha256_final(s, h));
    CHECK(!strcmp(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"));
    char path[] = "/tmp/ctorch-sha-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    CHECK(write(fd, m, strlen(m)) == (ssize_t)strlen(m));
    close(fd);
    char hf[65];
    CHECK_OK(ct_sha256_file(path, hf));
    CHECK(!strcmp(hf, h));
    unlink(path);
    CHECK_ERR_INT(ct_sha256_file(path, hf), path);
}
