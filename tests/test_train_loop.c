/* A small CNN forward+backward+SGD loop built from raw ops. `make valgrind` runs this
 * test under valgrind's leak checker; here it also checks the loss goes down. */
#include "test.h"

TEST(train_loop_conv_net_learns_and_frees_everything) {
    ct_manual_seed(7);
    int64_t xs[4] = {8, 3, 8, 8}, w1s[4] = {4, 3, 3, 3}, b1s = 4, w2s[2] = {3, 4 * 4 * 4}, b2s = 3, n = 8;
    ct_tensor *x = ct_randn(xs, 4, CT_FLOAT32);
    ct_tensor *w1r = ct_randn(w1s, 4, CT_FLOAT32), *w2r = ct_randn(w2s, 2, CT_FLOAT32);
    ct_tensor *w1 = ct_mul_scalar(w1r, 0.2), *w2 = ct_mul_scalar(w2r, 0.05);
    ct_tensor *b1 = ct_zeros(&b1s, 1, CT_FLOAT32), *b2 = ct_zeros(&b2s, 1, CT_FLOAT32);
    int64_t lab[8] = {0, 1, 2, 0, 1, 2, 0, 1};
    ct_tensor *y = ct_from_data(lab, &n, 1, CT_INT64);
    ct_tensor *params[4] = {w1, b1, w2, b2};
    for (int i = 0; i < 4; i++) ct_set_requires_grad(params[i], 1);
    int st[2] = {1, 1}, pd[2] = {1, 1}, dl[2] = {1, 1}, k2[2] = {2, 2};
    double first = 0, last = 0;
    for (int step = 0; step < 30; step++) {
        ct_tensor *h = ct_conv2d(x, w1, b1, st, pd, dl, 1);
        ct_tensor *r = ct_relu(h);
        ct_tensor *p = ct_max_pool2d(r, k2, k2, (int[2]){0, 0}, dl, 0);
        ct_tensor *f = ct_flatten(p, 1, -1);
        ct_tensor *d = ct_dropout(f, 0.1, 1);
        ct_tensor *o = ct_linear(d, w2, b2);
        ct_tensor *loss = ct_cross_entropy(o, y, CT_REDUCTION_MEAN, 0.05, -100);
        CHECK_NN(loss);
        if (!loss) break;
        CHECK_OK(ct_backward(loss, NULL, 0));
        if (step == 0) first = ct_item(loss);
        last = ct_item(loss);
        int prev = ct_set_grad_enabled(0);
        for (int i = 0; i < 4; i++) {
            CHECK_OK(ct_add_(params[i], ct_grad(params[i]), -0.1));
            ct_zero_grad(params[i]);
        }
        ct_set_grad_enabled(prev);
        ct_free(h); ct_free(r); ct_free(p); ct_free(f); ct_free(d); ct_free(o); ct_free(loss);
    }
    CHECK_MSG(last < 0.5 * first, "loss %g -> %g did not fall", first, last);
    ct_free(x); ct_free(w1r); ct_free(w2r); ct_free(y);
    for (int i = 0; i < 4; i++) ct_free(params[i]);
}
