/* Tensor basics: creation, views (no copies), contiguous, dtype conversion, RNG
 * determinism across thread counts, device parsing and bad input. */
#include "test.h"

#include "core/backend.h"

#include <string.h>

TEST(tensor_creation) {
    int64_t s[2] = {2, 3};
    ct_tensor *z = ct_zeros(s, 2, CT_FLOAT32), *o = ct_ones(s, 2, CT_INT64), *f = ct_full(s, 2, 2.5, CT_FLOAT64);
    CHECK(ct_numel(z) == 6 && ct_ndim(z) == 2 && ct_size(z, -1) == 3);
    CHECK(((float *)ct_data(z))[5] == 0 && ((int64_t *)ct_data(o))[5] == 1 && ((double *)ct_data(f))[4] == 2.5);
    ct_tensor *a = ct_arange(0, 1, 0.25, CT_FLOAT32);
    CHECK(ct_numel(a) == 4 && ((float *)ct_data(a))[3] == 0.75f);
    ct_tensor *sc = ct_scalar(7, CT_FLOAT32);
    CHECK(ct_ndim(sc) == 0 && ct_item(sc) == 7);
    float buf[6] = {1, 2, 3, 4, 5, 6};
    ct_tensor *b = ct_from_blob(buf, s, 2, CT_FLOAT32, NULL, NULL);
    CHECK(ct_data(b) == buf);
    ct_tensor *c = ct_from_data(buf, s, 2, CT_FLOAT32);
    CHECK(ct_data(c) != buf && ((float *)ct_data(c))[5] == 6);
    float out[6];
    ct_tensor *bt = ct_transpose(b, 0, 1);
    CHECK_OK(ct_copy_to_buffer(bt, out, sizeof out));
    CHECK(out[1] == 4 && out[2] == 2);
    CHECK_ERR_INT(ct_copy_to_buffer(bt, out, 4), "buffer has 4 bytes");
    ct_free(z); ct_free(o); ct_free(f); ct_free(a); ct_free(sc); ct_free(b); ct_free(c); ct_free(bt);
}

TEST(tensor_views_share_storage) {
    ct_tensor *a = ct_arange(0, 24, 1, CT_FLOAT32);
    int64_t s[3] = {2, 3, 4};
    ct_tensor *v = ct_view(a, s, 3);
    CHECK_NN(v);
    CHECK(ct_data(v) == ct_data(a));
    int perm[3] = {2, 0, 1};
    ct_tensor *p = ct_permute(v, perm, 3);
    CHECK(ct_size(p, 0) == 4 && !ct_is_contiguous(p) && ct_data(p) == ct_data(a));
    ct_tensor *n = ct_narrow(v, 2, 1, 2); /* [2,3,2] */
    CHECK(((float *)ct_data(n))[0] == 1.0f && ct_size(n, 2) == 2);
    ct_tensor *sl = ct_slice(a, 0, 1, 10, 3); /* 1,4,7 */
    CHECK(ct_numel(sl) == 3 && ct_strides(sl)[0] == 3);
    ct_tensor *u = ct_unsqueeze(a, 0), *sq = ct_squeeze(u, 0);
    CHECK(ct_ndim(u) == 2 && ct_ndim(sq) == 1 && ct_data(sq) == ct_data(a));
    int64_t es[2] = {5, 24};
    ct_tensor *e = ct_expand(u, es, 2);
    CHECK(ct_strides(e)[0] == 0);
    ct_tensor *c = ct_contiguous(p);
    CHECK(ct_is_contiguous(c) && ((float *)ct_data(c))[1] == 4.0f);
    ct_tensor *f = ct_flatten(v, 1, 2);
    CHECK(ct_ndim(f) == 2 && ct_size(f, 1) == 12);
    int64_t bad[2] = {5, 5};
    CHECK_ERR_PTR(ct_view(a, bad, 2), "view: shape [5, 5] is invalid for input of size 24");
    int64_t s2[2] = {8, 3};
    CHECK_ERR_PTR(ct_view(p, s2, 2), "use ct_reshape");
    ct_tensor *r = ct_reshape(p, s2, 2);
    CHECK(r && ct_is_contiguous(r) && ct_data(r) != ct_data(a));
    int64_t inf[2] = {-1, 8};
    ct_tensor *r2 = ct_reshape(a, inf, 2);
    CHECK(r2 && ct_size(r2, 0) == 3);
    CHECK_ERR_PTR(ct_narrow(a, 0, 20, 5), "narrow: start 20 + length 5 exceeds");
    CHECK_ERR_PTR(ct_permute(v, perm, 2), "permute");
    CHECK_ERR_PTR(ct_transpose(v, 0, 3), "transpose: dimension 3 out of range");
    CHECK_ERR_PTR(ct_expand(v, es, 2), "expand");
    CHECK_ERR_PTR(ct_unsqueeze(a, 3), "unsqueeze: dimension 3 out of range");
    ct_free(a); ct_free(v); ct_free(p); ct_free(n); ct_free(sl); ct_free(u); ct_free(sq);
    ct_free(e); ct_free(c); ct_free(f); ct_free(r); ct_free(r2);
}

static ct_tensor *gc_views(ct_tensor *const *in, void *ctx) {
    (void)ctx;
    int perm[3] = {1, 2, 0};
    int64_t es[4] = {2, 3, 4, 2};
    ct_tensor *p = ct_permute(in[0], perm, 3);        /* [3,4,2] */
    ct_tensor *n = ct_narrow(p, 1, 1, 3);             /* [3,3,2] */
    ct_tensor *t = ct_transpose(n, 0, 2);             /* [2,3,3] */
    ct_tensor *u = ct_unsqueeze(t, 0);                /* [1,2,3,3] */
    ct_tensor *s = ct_slice(u, 3, 0, 3, 2);           /* [1,2,3,2] */
    int64_t rs[3] = {3, 4, 1};
    ct_tensor *r = ct_reshape(s, rs, 3);              /* [3,4,1] */
    ct_tensor *e = ct_expand(r, es + 1, 3);           /* [3,4,2] */
    ct_tensor *f = ct_flatten(e, 0, 1);               /* [12,2] */
    ct_tensor *sq = ct_squeeze_all(f);
    ct_tensor *y = ct_mul(sq, sq);
    ct_free(p); ct_free(n); ct_free(t); ct_free(u); ct_free(s); ct_free(r); ct_free(e); ct_free(f); ct_free(sq);
    return y;
}

TEST(tensor_view_ops_gradcheck_float64) {
    int64_t s[3] = {2, 3, 4};
    ct_tensor *x = ct_randn(s, 3, CT_FLOAT64);
    ct_set_requires_grad(x, 1);
    GRADCHECK(gc_views, &x, 1, NULL, "views chain");
    ct_free(x);
}

TEST(tensor_rand_same_whatever_thread_count) {
    int64_t s[2] = {300, 301};
    ct_set_num_threads(1);
    ct_manual_seed(42);
    ct_tensor *a = ct_randn(s, 2, CT_FLOAT32), *u1 = ct_rand(s, 2, CT_FLOAT64);
    ct_set_num_threads(2);
    ct_manual_seed(42);
    ct_tensor *b = ct_randn(s, 2, CT_FLOAT32), *u2 = ct_rand(s, 2, CT_FLOAT64);
    ct_set_num_threads(0);
    CHECK(memcmp(ct_data(a), ct_data(b), 4 * 300 * 301) == 0);
    CHECK(memcmp(ct_data(u1), ct_data(u2), 8 * 300 * 301) == 0);
    /* moments */
    ct_tensor *m = ct_mean(a, NULL, 0, 0), *sq = ct_mul(a, a), *v = ct_mean(sq, NULL, 0, 0);
    CHECK(fabs(ct_item(m)) < 0.01 && fabs(ct_item(v) - 1) < 0.02);
    double mn = 1, mx = 0;
    for (int i = 0; i < 300 * 301; i++) {
        double x = ((double *)ct_data(u1))[i];
        mn = x < mn ? x : mn;
        mx = x > mx ? x : mx;
    }
    CHECK(mn >= 0 && mx < 1 && mn < 0.001 && mx > 0.999);
    ct_free(a); ct_free(b); ct_free(u1); ct_free(u2); ct_free(m); ct_free(sq); ct_free(v);
}

TEST(tensor_dtype_conversion) {
    double v[5] = {1.5, -2.25, 3.0e3, 1e-3, -0.0};
    int64_t n = 5;
    ct_tensor *d = ct_from_data(v, &n, 1, CT_FLOAT64);
    ct_dtype dts[4] = {CT_FLOAT32, CT_BFLOAT16, CT_FLOAT16, CT_INT64};
    double tol[4] = {1e-7, 1e-2, 1e-3, 1.0};
    for (int k = 0; k < 4; k++) {
        ct_tensor *c = ct_to_dtype(d, dts[k]), *back = ct_to_dtype(c, CT_FLOAT64);
        double *b = ct_data(back);
        for (int i = 0; i < 5; i++) {
            double ref = dts[k] == CT_INT64 ? (double)(int64_t)v[i] : v[i];
            CHECK_MSG(fabs(b[i] - ref) <= tol[k] * fabs(v[i]) + 1e-6, "%s: %g -> %g",
                      ct_dtype_name(dts[k]), v[i], b[i]);
        }
        ct_free(c);
        ct_free(back);
    }
    ct_dtype dt;
    CHECK_OK(ct_dtype_from_name("bfloat16", &dt));
    CHECK(dt == CT_BFLOAT16);
    CHECK_ERR_INT(ct_dtype_from_name("float8", &dt), "unknown dtype 'float8'");
    ct_free(d);
}

/* torch.bool: any value -> (x != 0) (NaN and -0.0 included: true and false), bool -> 0/1. */
TEST(tensor_bool_dtype) {
    CHECK(ct_dtype_size(CT_BOOL) == 1 && strcmp(ct_dtype_name(CT_BOOL), "bool") == 0);
    ct_dtype dt;
    CHECK_OK(ct_dtype_from_name("bool", &dt));
    CHECK(dt == CT_BOOL);
    /* floating sources: NaN and -0.0 included; integer sources: values they can hold */
    double v[6] = {1.5, -2.25, 0.0, NAN, -0.0, 1e-300}, vi[6] = {1.5, 2.25, 0.0, 3, -0.0, 1e-300};
    int64_t n = 6;
    ct_dtype from[4] = {CT_FLOAT64, CT_FLOAT32, CT_INT64, CT_UINT8};
    for (int k = 0; k < 4; k++) {
        ct_tensor *d = ct_from_data(k < 2 ? v : vi, &n, 1, CT_FLOAT64);
        ct_tensor *src = ct_to_dtype(d, from[k]), *b = ct_to_dtype(src, CT_BOOL);
        ct_tensor *sd = ct_to_dtype(src, CT_FLOAT64); /* the source's values */
        CHECK(b && ct_dtype_of(b) == CT_BOOL && ct_grad_fn_name(b) == NULL);
        const uint8_t *p = b ? ct_data(b) : NULL;
        const double *sv = ct_data(sd);
        for (int i = 0; p && i < 6; i++)
            CHECK_MSG(p[i] == (sv[i] != 0), "%s %g -> bool %d", ct_dtype_name(from[k]), sv[i], p[i]);
        ct_dtype to[4] = {CT_FLOAT32, CT_FLOAT64, CT_INT64, CT_UINT8};
        for (int j = 0; p && j < 4; j++) {
            ct_tensor *back = ct_to_dtype(b, to[j]), *bd = ct_to_dtype(back, CT_FLOAT64);
            const double *q = ct_data(bd);
            for (int i = 0; i < 6; i++) CHECK(q[i] == (double)p[i]);
            ct_free(back);
            ct_free(bd);
        }
        ct_free(d), ct_free(src), ct_free(b), ct_free(sd);
    }
    /* creation: fill, from_data (any non-zero byte is true), item */
    ct_tensor *f = ct_full(&n, 1, 0.25, CT_BOOL), *z = ct_zeros(&n, 1, CT_BOOL);
    const uint8_t raw[6] = {0, 1, 2, 255, 0, 7};
    ct_tensor *r = ct_from_data(raw, &n, 1, CT_BOOL);
    for (int i = 0; i < 6; i++) {
        CHECK(((uint8_t *)ct_data(f))[i] == 1 && ((uint8_t *)ct_data(z))[i] == 0);
        CHECK(((uint8_t *)ct_data(r))[i] == (raw[i] != 0));
    }
    ct_tensor *s = ct_scalar(-3, CT_BOOL);
    CHECK(ct_item(s) == 1.0);
    ct_free(f), ct_free(z), ct_free(r), ct_free(s);
}

TEST(tensor_devices_and_bad_input) {
    ct_device dev;
    CHECK_OK(ct_device_parse("cuda:1", &dev));
    CHECK(dev.type == CT_CUDA && dev.index == 1);
    CHECK_OK(ct_device_parse("cpu", &dev));
    CHECK_ERR_INT(ct_device_parse("gpu", &dev), "unknown device 'gpu'");
    CHECK_ERR_INT(ct_device_parse("cuda:x", &dev), "unknown device");
    int64_t neg[2] = {2, -1};
    CHECK_ERR_PTR(ct_zeros(neg, 2, CT_FLOAT32), "negative size -1");
    int64_t big[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    CHECK_ERR_PTR(ct_zeros(big, 9, CT_FLOAT32), "supports 0 to 8");
    CHECK_ERR_PTR(ct_arange(0, 1, 0, CT_FLOAT32), "arange: step must be non-zero");
    CHECK_ERR_PTR(ct_rand(big, 1, CT_INT64), "rand: dtype int64 not supported");
    ct_tensor *t = ct_zeros(big, 2, CT_FLOAT32);
    int64_t two = 2;
    ct_tensor *t2 = ct_zeros(&two, 1, CT_FLOAT32);
    CHECK(isnan(ct_item(t2)));
    CHECK(strstr(ct_last_error(), "item: tensor of shape [2] has 2 elements") != NULL);
    ct_free(t); ct_free(t2);
}

/* The device queries (ct_device_check / ct_device_is_host / ct_device_describe) and the
 * backend's extra entry points, with bad arguments. */
TEST(tensor_device_queries_and_bad_input) {
    CHECK_OK(ct_device_check(ct_cpu()));
    CHECK(ct_device_is_host(ct_cpu()) == 1);
    CHECK_ERR_INT(ct_device_check((ct_device){(ct_device_type)9, 0}), "unknown device type 9");
    CHECK_ERR_INT(ct_device_check((ct_device){CT_CPU, 3}), "no such device");
    CHECK(ct_device_is_host((ct_device){(ct_device_type)9, 0}) == 0);
    char buf[64] = "x";
    CHECK_ERR_INT(ct_device_describe(ct_cpu(), NULL, 8), "NULL or empty buffer");
    CHECK(ct_device_describe(ct_cpu(), buf, sizeof buf) == -1 && buf[0] == 0); /* no description */
    ct_clear_error();
    CHECK(ct_backend_proc(CT_CPU, "host_alloc") == NULL); /* the CPU has no streams or pinned memory */
    CHECK(strstr(ct_last_error(), "the cpu backend has no function host_alloc") != NULL);
    CHECK(ct_backend_proc(CT_CPU, NULL) == NULL);
    int avail = 0;
    ct_cuda_status(&avail);
    if (!avail) {
        CHECK(ct_device_is_host((ct_device){CT_CUDA, 0}) == 0);
        CHECK_ERR_INT(ct_device_check((ct_device){CT_CUDA, 0}), "CUDA is unavailable");
    }
}
