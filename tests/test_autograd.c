/* Autograd semantics: accumulation, no-grad, detach, reuse, version counter, graph
 * freeing, retain_graph, retain_grad, and backward errors. */
#include "test.h"

#include <string.h>

static ct_tensor *vec(const double *v, int64_t n, ct_dtype dt) {
    ct_tensor *t = ct_from_data(v, &n, 1, CT_FLOAT64);
    ct_tensor *r = ct_to_dtype(t, dt);
    ct_free(t);
    return r;
}

static double at(const ct_tensor *t, int64_t i) {
    ct_tensor *d = ct_to_dtype(t, CT_FLOAT64);
    ct_tensor *c = ct_contiguous(d);
    double v = ((double *)ct_data(c))[i];
    ct_free(d);
    ct_free(c);
    return v;
}

TEST(autograd_accumulates_across_backward_calls) {
    double v[3] = {1, 2, 3};
    ct_tensor *x = vec(v, 3, CT_FLOAT32);
    ct_set_requires_grad(x, 1);
    for (int k = 0; k < 2; k++) {
        ct_tensor *y = ct_mul(x, x), *s = ct_sum(y, NULL, 0, 0);
        CHECK_OK(ct_backward(s, NULL, 0));
        ct_free(y);
        ct_free(s);
    }
    for (int i = 0; i < 3; i++) CHECK(fabs(at(ct_grad(x), i) - 4 * v[i]) < 1e-6);
    ct_zero_grad(x);
    CHECK(ct_grad(x) == NULL);
    ct_free(x);
}

TEST(autograd_tensor_used_twice) {
    double v[2] = {0.5, -1.5};
    ct_tensor *x = vec(v, 2, CT_FLOAT64);
    ct_set_requires_grad(x, 1);
    /* y = exp(x) * x + x  → dy/dx = exp(x)(1 + x) + 1 */
    ct_tensor *e = ct_exp(x), *m = ct_mul(e, x), *y = ct_add(m, x), *s = ct_sum(y, NULL, 0, 0);
    CHECK_OK(ct_backward(s, NULL, 0));
    for (int i = 0; i < 2; i++) CHECK(fabs(at(ct_grad(x), i) - (exp(v[i]) * (1 + v[i]) + 1)) < 1e-12);
    ct_free(e); ct_free(m); ct_free(y); ct_free(s); ct_free(x);
}

/* A gradient that reaches leaves through pass-through nodes (an expand that broadcasts
 * nothing, an add) is taken without a copy where nobody else holds it: each leaf still owns
 * its own, and the caller's grad_output stays the caller's (changing one in place changes
 * none of the others). */
TEST(autograd_pass_through_gradients_stay_private) {
    double v[3] = {1, 2, 3}, w[3] = {-1, 0.5, 4}, gv[3] = {0.25, -2, 7};
    ct_tensor *x = vec(v, 3, CT_FLOAT32), *y = vec(w, 3, CT_FLOAT32);
    ct_tensor *g = vec(gv, 3, CT_FLOAT32);
    ct_set_requires_grad(x, 1);
    ct_set_requires_grad(y, 1);
    const int64_t sh[1] = {3};
    for (int k = 0; k < 2; k++) { /* the second pass accumulates onto the first */
        ct_tensor *z = ct_add(x, y), *e = ct_expand(z, sh, 1);
        CHECK_OK(ct_backward(e, g, 0));
        ct_free(e), ct_free(z);
        ct_tensor *ex = ct_expand(x, sh, 1); /* x alone, through an expand */
        CHECK_OK(ct_backward(ex, g, 0));
        ct_free(ex);
    }
    for (int i = 0; i < 3; i++) {
        CHECK(fabs(at(ct_grad(x), i) - 4 * gv[i]) < 1e-6);
        CHECK(fabs(at(ct_grad(y), i) - 2 * gv[i]) < 1e-6);
    }
    CHECK_OK(ct_add_(ct_grad(x), ct_grad(x), 1.0)); /* in place on one of them */
    for (int i = 0; i < 3; i++) {
        CHECK(fabs(at(ct_grad(x), i) - 8 * gv[i]) < 1e-6);
        CHECK(fabs(at(ct_grad(y), i) - 2 * gv[i]) < 1e-6);
        CHECK(fabs(at(g, i) - gv[i]) < 1e-12);
    }
    ct_free(x), ct_free(y), ct_free(g);
}

TEST(autograd_no_grad_and_detach) {
    int64_t n = 4;
    ct_tensor *x = ct_ones(&n, 1, CT_FLOAT32);
    ct_set_requires_grad(x, 1);
    int prev = ct_set_grad_enabled(0);
    ct_tensor *y = ct_mul_scalar(x, 2);
    ct_set_grad_enabled(prev);
    CHECK(!ct_requires_grad(y));
    CHECK(ct_grad_fn_name(y) == NULL);
    CHECK_ERR_INT(ct_backward(y, NULL, 0), "does not require grad");
    ct_tensor *z = ct_mul_scalar(x, 3);
    CHECK(ct_requires_grad(z) && ct_grad_fn_name(z) != NULL);
    ct_tensor *d = ct_detach(z);
    CHECK(!ct_requires_grad(d) && ct_is_leaf(d));
    CHECK(ct_data(d) == ct_data(z)); /* shares storage */
    ct_tensor *w = ct_mul(d, x), *s = ct_sum(w, NULL, 0, 0);
    CHECK_OK(ct_backward(s, NULL, 0));
    CHECK(fabs(at(ct_grad(x), 0) - 3.0) < 1e-6); /* gradient does not flow through d */
    ct_free(y); ct_free(z); ct_free(d); ct_free(w); ct_free(s); ct_free(x);
}

TEST(autograd_version_counter_detects_inplace_change) {
    int64_t n = 3;
    ct_tensor *a = ct_ones(&n, 1, CT_FLOAT32), *b = ct_full(&n, 1, 2.0, CT_FLOAT32);
    ct_set_requires_grad(a, 1);
    ct_tensor *y = ct_mul(a, b), *s = ct_sum(y, NULL, 0, 0); /* saves b */
    CHECK_OK(ct_add_scalar_(b, 1.0));                        /* b does not require grad */
    CHECK_ERR_INT(ct_backward(s, NULL, 0), "modified by an in-place operation");
    ct_free(y); ct_free(s);
    /* in-place on a leaf that requires grad is refused outright */
    CHECK_ERR_INT(ct_add_scalar_(a, 1.0), "leaf tensor that requires grad");
    /* ...but allowed in no-grad mode, like an optimizer step */
    int prev = ct_set_grad_enabled(0);
    CHECK_OK(ct_add_scalar_(a, 1.0));
    ct_set_grad_enabled(prev);
    ct_free(a); ct_free(b);
}

TEST(autograd_graph_freed_and_retain_graph) {
    int64_t n = 2;
    ct_tensor *x = ct_ones(&n, 1, CT_FLOAT32);
    ct_set_requires_grad(x, 1);
    ct_tensor *y = ct_exp(x), *s = ct_sum(y, NULL, 0, 0);
    CHECK_OK(ct_backward(s, NULL, 1));
    CHECK_OK(ct_backward(s, NULL, 0));
    CHECK(fabs(at(ct_grad(x), 0) - 2 * exp(1.0)) < 1e-5);
    CHECK_ERR_INT(ct_backward(s, NULL, 0), "second time");
    ct_free(y); ct_free(s); ct_free(x);
}

TEST(autograd_retain_grad_and_grad_output) {
    int64_t n = 3;
    ct_tensor *x = ct_arange(1, 4, 1, CT_FLOAT32);
    ct_set_requires_grad(x, 1);
    ct_tensor *h = ct_mul_scalar(x, 2);
    CHECK_OK(ct_retain_grad(h));
    ct_tensor *y = ct_mul(h, h);
    ct_tensor *g = ct_full(&n, 1, 0.5, CT_FLOAT32);
    CHECK_OK(ct_backward(y, g, 0));
    /* dy/dh = 2h * 0.5 = h; dy/dx = 2h*0.5*2 = 2h */
    CHECK(ct_grad(h) && fabs(at(ct_grad(h), 2) - 6.0) < 1e-6);
    CHECK(fabs(at(ct_grad(x), 2) - 12.0) < 1e-6);
    ct_tensor *bad = ct_ones(&n, 1, CT_FLOAT64);
    ct_tensor *y2 = ct_mul(x, x);
    CHECK_ERR_INT(ct_backward(y2, bad, 0), "grad_output is float64");
    int64_t two = 2;
    ct_tensor *bad2 = ct_ones(&two, 1, CT_FLOAT32);
    CHECK_ERR_INT(ct_backward(y2, bad2, 0), "does not match");
    CHECK_ERR_INT(ct_backward(y2, NULL, 0), "only for scalar outputs");
    ct_free(bad); ct_free(bad2); ct_free(y2);
    ct_free(x); ct_free(h); ct_free(y); ct_free(g);
}

TEST(autograd_requires_grad_rules) {
    int64_t n = 2;
    ct_tensor *i = ct_ones(&n, 1, CT_INT64);
    CHECK_ERR_INT(ct_set_requires_grad(i, 1), "only floating-point");
    ct_tensor *x = ct_ones(&n, 1, CT_FLOAT32);
    ct_set_requires_grad(x, 1);
    ct_tensor *y = ct_neg(x);
    CHECK_ERR_INT(ct_set_requires_grad(y, 0), "not a leaf");
    CHECK(!ct_is_leaf(y));
    ct_free(i); ct_free(x); ct_free(y);
}

TEST(autograd_long_chain_is_freed_iteratively) {
    int64_t n = 4;
    ct_tensor *x = ct_ones(&n, 1, CT_FLOAT32);
    ct_set_requires_grad(x, 1);
    ct_tensor *h = ct_retain(x);
    for (int k = 0; k < 20000; k++) {
        ct_tensor *nh = ct_add_scalar(h, 0.0);
        ct_free(h);
        h = nh;
    }
    ct_tensor *s = ct_sum(h, NULL, 0, 0);
    CHECK_OK(ct_backward(s, NULL, 0));
    CHECK(fabs(at(ct_grad(x), 0) - 1.0) < 1e-6);
    ct_free(s); ct_free(h); ct_free(x);
}

/* Op k of the table below on x [2, 3, 4, 4], conv weight w [5, 3, 3, 3] and bias b [5]. */
static ct_tensor *record_op(int k, ct_tensor *x, ct_tensor *w, ct_tensor *b) {
    int k2[2] = {2, 2}, o1[2] = {1, 1};
    int64_t ln[2] = {4, 4};
    ct_tensor *parts[2] = {x, x};
    switch (k) {
    case 0: return ct_conv2d(x, w, b, NULL, NULL, NULL, 1);
    case 1: return ct_max_pool2d(x, k2, NULL, NULL, NULL, 0);
    case 2: return ct_avg_pool2d(x, k2, NULL, NULL, 0, 1);
    case 3: return ct_adaptive_avg_pool2d(x, o1);
    case 4: return ct_softmax(x, 1);
    case 5: return ct_log_softmax(x, 1);
    case 6: return ct_layer_norm(x, ln, 2, NULL, NULL, 1e-5);
    case 7: return ct_cat(parts, 2, 0);
    case 8: return ct_clone(x);
    case 9: return ct_sum(x, NULL, 0, 1);
    case 10: return ct_mean(x, NULL, 0, 1);
    case 11: return ct_mul(x, x);
    case 12: return ct_exp(x);
    case 13: return ct_dropout(x, 0.5, 1);
    default: return ct_matmul(x, x);
    }
}

TEST(autograd_ops_record_a_node_only_when_needed) {
    static const char *names[] = {"ConvolutionBackward", "MaxPool2DWithIndicesBackward",
                                  "AvgPool2DBackward", "AdaptiveAvgPool2DBackward",
                                  "SoftmaxBackward", "LogSoftmaxBackward", "LayerNormBackward",
                                  "CatBackward", "CloneBackward", "SumBackward", "MeanBackward",
                                  "MulBackward", "ExpBackward", "DropoutBackward",
                                  "MatmulBackward"};
    const int nops = (int)(sizeof names / sizeof names[0]);
    int64_t xs[4] = {2, 3, 4, 4}, ws[4] = {5, 3, 3, 3}, bs = 5;
    ct_manual_seed(0);
    ct_tensor *x = ct_randn(xs, 4, CT_FLOAT32), *w = ct_randn(ws, 4, CT_FLOAT32);
    ct_tensor *b = ct_randn(&bs, 1, CT_FLOAT32);
    for (int k = 0; k < nops; k++) {
        ct_tensor *y = record_op(k, x, w, b);
        CHECK_NN(y);
        CHECK_MSG(y && !ct_requires_grad(y) && !ct_grad_fn_name(y), "%s recorded a node "
                  "though no input requires grad", names[k]);
        ct_free(y);
    }
    CHECK_OK(ct_set_requires_grad(x, 1));
    int prev = ct_set_grad_enabled(0);
    for (int k = 0; k < nops; k++) {
        ct_tensor *y = record_op(k, x, w, b);
        CHECK_MSG(y && !ct_requires_grad(y) && !ct_grad_fn_name(y), "%s recorded a node "
                  "in no-grad mode", names[k]);
        ct_free(y);
    }
    ct_set_grad_enabled(prev);
    for (int k = 0; k < nops; k++) {
        ct_tensor *y = record_op(k, x, w, b);
        const char *got = ct_grad_fn_name(y);
        CHECK_MSG(y && ct_requires_grad(y) && got && strcmp(got, names[k]) == 0,
                  "op %d: grad_fn %s, expected %s", k, got ? got : "(none)", names[k]);
        ct_free(y);
    }
    CHECK_OK(ct_set_requires_grad(x, 0));
    /* Only the bias requires grad: the node still records all three inputs. */
    CHECK_OK(ct_set_requires_grad(b, 1));
    ct_tensor *y = record_op(0, x, w, b), *s = y ? ct_sum(y, NULL, 0, 0) : NULL;
    CHECK_NN(s);
    CHECK(s && ct_backward(s, NULL, 0) == 0);
    CHECK(ct_grad(b) && ct_grad(x) == NULL && ct_grad(w) == NULL);
    for (int i = 0; ct_grad(b) && i < 5; i++) CHECK(fabs(at(ct_grad(b), i) - 8.0) < 1e-5);
    ct_free(s); ct_free(y); ct_free(x); ct_free(w); ct_free(b);
}
