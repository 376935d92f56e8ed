/* Test registry, assertions, fixture reader and gradcheck for the ctorch suite. */
#include "test.h"

#include <dirent.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TESTS 2048
static struct {
    const char *name;
    ct_test_fn fn;
    const char *file;
} g_tests[MAX_TESTS];
static int g_ntests;
static int g_cur_failed, g_cur_skipped;

void ct_test_register(const char *name, ct_test_fn fn, const char *file) {
    if (g_ntests < MAX_TESTS) {
        g_tests[g_ntests].name = name;
        g_tests[g_ntests].fn = fn;
        g_tests[g_ntests].file = file;
        g_ntests++;
    }
}

void ct_test_fail(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "    %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    g_cur_failed++;
}

void ct_test_skip(const char *reason) {
    fprintf(stderr, "    skipped: %s\n", reason);
    g_cur_skipped = 1;
}

void ct_test_expect_error(const char *file, int line, int failed, const char *expr,
                          const char *needle) {
    if (!failed) {
        ct_test_fail(file, line, "%s should have failed", expr);
        return;
    }
    const char *msg = ct_last_error();
    if (!msg || !*msg) {
        ct_test_fail(file, line, "%s failed without an error message", expr);
        return;
    }
    if (needle && !strstr(msg, needle))
        ct_test_fail(file, line, "%s: message \"%s\" lacks \"%s\"", expr, msg, needle);
}

static double *to_doubles(const ct_tensor *t) {
    ct_tensor *d = ct_to_dtype(t, CT_FLOAT64);
    if (!d) return NULL;
    int64_t n = ct_numel(d);
    double *buf = malloc(sizeof(double) * (size_t)(n ? n : 1));
    if (ct_copy_to_buffer(d, buf, sizeof(double) * (size_t)n) != 0) {
        free(buf);
        buf = NULL;
    }
    ct_free(d);
    return buf;
}

double ct_check_close_(const char *file, int line, const ct_tensor *got, const ct_tensor *want,
                       double tol, const char *what) {
    if (!got || !want) {
        ct_test_fail(file, line, "%s: missing tensor (%s)", what, ct_last_error());
        return INFINITY;
    }
    char b1[128], b2[128];
    if (ct_ndim(got) != ct_ndim(want) ||
        memcmp(ct_shape(got), ct_shape(want), sizeof(int64_t) * (size_t)ct_ndim(got)) != 0) {
        ct_test_fail(file, line, "%s: shape %s, expected %s", what, ct_shape_str(got, b1, sizeof b1),
                     ct_shape_str(want, b2, sizeof b2));
        return INFINITY;
    }
    double *g = to_doubles(got), *w = to_doubles(want);
    double num = 0, den = 0;
    int64_t n = ct_numel(got);
    int bad = !g || !w;
    for (int64_t i = 0; !bad && i < n; i++) {
        if (isnan(g[i]) != isnan(w[i])) bad = 1;
        if (isnan(w[i])) continue;
        num += (g[i] - w[i]) * (g[i] - w[i]);
        den += w[i] * w[i];
    }
    free(g);
    free(w);
    double err = bad ? INFINITY : sqrt(num) / fmax(sqrt(den), 1e-12);
    if (!(err <= tol))
        ct_test_fail(file, line, "%s: relative error %.3g > %.1g (shape %s)", what, err, tol,
                     ct_shape_str(got, b1, sizeof b1));
    return err;
}

/* ------------------------------------------------------------------ fixtures */
struct ct_fixture {
    int n;
    char **names;
    ct_tensor **tensors;
    char path[512];
};

static const char *fixture_dir(void) {
    const char *d = getenv("CT_FIXTURE_DIR");
    return d ? d : "tests/fixtures";
}

ct_fixture *ct_fixture_load(const char *name) {
    ct_fixture *fx = calloc(1, sizeof *fx);
    snprintf(fx->path, sizeof fx->path, "%s/%s.ctf", fixture_dir(), name);
    FILE *f = fopen(fx->path, "rb");
    if (!f) {
        ct_test_fail(__FILE__, __LINE__, "fixture %s missing (run `make fixtures`)", fx->path);
        free(fx);
        return NULL;
    }
    char magic[4];
    uint32_t count = 0;
    if (fread(magic, 1, 4, f) != 4 || memcmp(magic, "CTF1", 4) != 0 || fread(&count, 4, 1, f) != 1)
        goto bad;
    fx->names = calloc(count, sizeof(char *));
    fx->tensors = calloc(count, sizeof(ct_tensor *));
    for (uint32_t i = 0; i < count; i++) {
        uint16_t len;
        uint8_t dt, nd;
        if (fread(&len, 2, 1, f) != 1) goto bad;
        char *nm = calloc(len + 1u, 1);
        if (fread(nm, 1, len, f) != len) { free(nm); goto bad; }
        fx->names[i] = nm;
        fx->n = (int)i + 1;
        if (fread(&dt, 1, 1, f) != 1 || fread(&nd, 1, 1, f) != 1 || nd > CT_MAX_DIMS) goto bad;
        int64_t shape[CT_MAX_DIMS];
        if (nd && fread(shape, 8, nd, f) != nd) goto bad;
        if (dt > 3) goto bad;
        ct_dtype cdt = dt == 0 ? CT_FLOAT32 : dt == 1 ? CT_FLOAT64 : dt == 2 ? CT_INT64 : CT_BOOL;
        ct_tensor *t = ct_empty(shape, nd, cdt);
        if (!t) goto bad;
        size_t nbytes = (size_t)ct_numel(t) * ct_dtype_size(cdt);
        if (nbytes && fread(ct_data(t), 1, nbytes, f) != nbytes) { ct_free(t); goto bad; }
        fx->tensors[i] = t;
    }
    fclose(f);
    return fx;
bad:
    fclose(f);
    ct_test_fail(__FILE__, __LINE__, "fixture %s is corrupt", fx->path);
    ct_fixture_free(fx);
    return NULL;
}

int ct_fixture_has(ct_fixture *fx, const char *key) {
    for (int i = 0; fx && i < fx->n; i++)
        if (strcmp(fx->names[i], key) == 0) return 1;
    return 0;
}

ct_tensor *ct_fixture_get(ct_fixture *fx, const char *key) {
    for (int i = 0; fx && i < fx->n; i++)
        if (strcmp(fx->names[i], key) == 0) return ct_clone(fx->tensors[i]);
    ct_test_fail(__FILE__, __LINE__, "fixture %s has no tensor %s", fx ? fx->path : "?", key);
    return NULL;
}

void ct_fixture_free(ct_fixture *fx) {
    if (!fx) return;
    for (int i = 0; i < fx->n; i++) {
        free(fx->names[i]);
        ct_free(fx->tensors[i]);
    }
    free(fx->names);
    free(fx->tensors);
    free(fx);
}

/* ------------------------------------------------------------------ gradcheck */
static double eval_projected(ct_gradcheck_fn fn, ct_tensor *const *inputs, void *ctx,
                             const double *r, int64_t nr, int *ok) {
    int prev = ct_set_grad_enabled(0);
    ct_tensor *out = fn(inputs, ctx);
    ct_set_grad_enabled(prev);
    if (!out || ct_numel(out) != nr) {
        *ok = 0;
        ct_free(out);
        return 0;
    }
    double *o = to_doubles(out);
    double s = 0;
    for (int64_t i = 0; i < nr; i++) s += o[i] * r[i];
    free(o);
    ct_free(out);
    return s;
}

int ct_gradcheck_(const char *file, int line, ct_gradcheck_fn fn, ct_tensor *const *inputs,
                  int n, void *ctx, const char *what) {
    const double eps = 1e-6, atol = 1e-5, rtol = 1e-3;
    for (int i = 0; i < n; i++) ct_zero_grad(inputs[i]);
    ct_tensor *out = fn(inputs, ctx);
    if (!out) {
        ct_test_fail(file, line, "%s: forward failed: %s", what, ct_last_error());
        return -1;
    }
    int64_t nr = ct_numel(out);
    ct_tensor *rt = ct_test_randn(ct_shape(out), ct_ndim(out), CT_FLOAT64);
    double *r = to_doubles(rt);
    int rc = 0;
    if (ct_backward(out, rt, 0) != 0) {
        ct_test_fail(file, line, "%s: backward failed: %s", what, ct_last_error());
        rc = -1;
    }
    ct_free(out);
    ct_free(rt);
    for (int i = 0; rc == 0 && i < n; i++) {
        if (!ct_requires_grad(inputs[i])) continue;
        ct_tensor *g = ct_grad(inputs[i]);
        int64_t ne = ct_numel(inputs[i]);
        double *ga = g ? to_doubles(g) : calloc((size_t)(ne ? ne : 1), sizeof(double));
        double *x = (double *)ct_data(inputs[i]);
        if (ct_dtype_of(inputs[i]) != CT_FLOAT64 || !ct_is_contiguous(inputs[i])) {
            ct_test_fail(file, line, "%s: gradcheck inputs must be contiguous float64", what);
            free(ga);
            return -1;
        }
        for (int64_t j = 0; j < ne; j++) {
            int ok = 1;
            double orig = x[j];
            x[j] = orig + eps;
            double fp = eval_projected(fn, inputs, ctx, r, nr, &ok);
            x[j] = orig - eps;
            double fm = eval_projected(fn, inputs, ctx, r, nr, &ok);
            x[j] = orig;
            double num = (fp - fm) / (2 * eps);
            if (!ok) {
                ct_test_fail(file, line, "%s: forward failed in gradcheck", what);
                rc = -1;
                break;
            }
            if (fabs(num - ga[j]) > atol + rtol * fabs(num)) {
                ct_test_fail(file, line, "%s: input %d element %lld: analytic %.8g numeric %.8g",
                             what, i, (long long)j, ga[j], num);
                rc = -1;
                break;
            }
        }
        free(ga);
    }
    free(r);
    return rc;
}

ct_tensor *ct_test_randn(const int64_t *shape, int ndim, ct_dtype dt) {
    return ct_randn(shape, ndim, dt);
}

ct_tensor *ct_test_noncontig(const ct_tensor *t) {
    int nd = ct_ndim(t);
    if (nd < 2) {
        /* Strided 1-D view: every other element of a twice-as-long tensor. */
        int64_t n = nd ? ct_size(t, 0) : 1;
        int64_t big = 2 * n;
        ct_tensor *b = ct_zeros(&big, 1, ct_dtype_of(t));
        ct_tensor *v = ct_slice(b, 0, 0, big, 2);
        ct_tensor *v2 = nd ? ct_retain(v) : ct_view(v, NULL, 0);
        ct_copy_(v2, t);
        ct_free(b);
        ct_free(v);
        return v2;
    }
    ct_tensor *tt = ct_transpose(t, nd - 2, nd - 1);
    ct_tensor *c = ct_contiguous(tt);  /* storage in transposed order */
    ct_tensor *back = ct_transpose(c, nd - 2, nd - 1);
    ct_free(tt);
    ct_free(c);
    return back;
}

int ct_test__count(void) { return g_ntests; }

/* Runs test i unless *filter is set and does not match; *failed = -1 when filtered. */
void ct_test__run(int i, const char **filter, int *failed, int *skipped) {
    if (filter && *filter && !strstr(g_tests[i].name, *filter)) {
        *failed = -1;
        *skipped = 0;
        return;
    }
    g_cur_failed = 0;
    g_cur_skipped = 0;
    ct_manual_seed(1234);
    ct_set_grad_enabled(1);
    g_tests[i].fn();
    printf("%-4s %s\n", g_cur_failed ? "FAIL" : g_cur_skipped ? "skip" : "ok", g_tests[i].name);
    fflush(stdout);
    *failed = g_cur_failed != 0;
    *skipped = g_cur_skipped;
}

int ct_test_count_files(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void ct_test_rm_rf(const char *dir) { nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS); }

int ct_test_mkdtemp(char *out, size_t n, const char *templ) {
    snprintf(out, n, "%s", templ);
    return mkdtemp(out) ? 0 : -1;
}
