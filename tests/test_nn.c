/* nn modules: the module tree, state_dict names, default initialisation statistics,
 * BatchNorm buffers, train/eval, load_state_dict reports, checkpoints, float64 gradcheck
 * through modules, and constructor / forward error paths. */
#include "test.h"
#include "ctorch_nn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int has(const char *hay, const char *needle) { return hay && strstr(hay, needle) != NULL; }

static void stats(const ct_tensor *t, double *maxabs, double *mean, double *var) {
    ct_tensor *d = ct_to_dtype(t, CT_FLOAT64);
    ct_tensor *c = ct_contiguous(d);
    const double *p = ct_data(c);
    int64_t n = ct_numel(c);
    double s = 0, s2 = 0, m = 0;
    for (int64_t i = 0; i < n; i++) {
        s += p[i];
        s2 += p[i] * p[i];
        if (fabs(p[i]) > m) m = fabs(p[i]);
    }
    *maxabs = m;
    *mean = s / (double)n;
    *var = s2 / (double)n - (*mean) * (*mean);
    ct_free(c);
    ct_free(d);
}

/* U(-b, b): every |value| <= b, the max close to b, mean ~ 0, variance ~ b^2/3. */
static void check_uniform(const ct_tensor *t, double bound, const char *what) {
    double mx, mean, var;
    stats(t, &mx, &mean, &var);
    int64_t n = ct_numel(t);
    CHECK_MSG(mx <= bound * (1 + 1e-6), "%s: max |w| %g exceeds the bound %g", what, mx, bound);
    if (n >= 1000) {
        CHECK_MSG(mx >= 0.99 * bound, "%s: max |w| %g far below the bound %g", what, mx, bound);
        double sd = bound / sqrt(3.0 * (double)n);
        CHECK_MSG(fabs(mean) < 5 * sd, "%s: mean %g (bound %g)", what, mean, bound);
        CHECK_MSG(fabs(var / (bound * bound / 3) - 1) < 0.05, "%s: variance %g, expected %g",
                  what, var, bound * bound / 3);
    }
}

TEST(nn_linear_default_init_matches_torch_formula) {
    ct_manual_seed(1);
    ct_module *m = ct_nn_linear(784, 128, 1);
    CHECK_NN(m);
    ct_tensor *w = ct_module_get_tensor(m, "weight"), *b = ct_module_get_tensor(m, "bias");
    CHECK(w && b && ct_size(w, 0) == 128 && ct_size(w, 1) == 784 && ct_size(b, 0) == 128);
    /* kaiming_uniform_(a=sqrt(5)): bound = gain*sqrt(3/fan_in) = 1/sqrt(fan_in) */
    double gain = ct_init_calculate_gain("leaky_relu", sqrt(5.0));
    CHECK(fabs(gain * sqrt(3.0 / 784) - 1 / sqrt(784.0)) < 1e-15);
    check_uniform(w, 1 / sqrt(784.0), "Linear(784,128).weight");
    check_uniform(b, 1 / sqrt(784.0), "Linear(784,128).bias");
    CHECK(ct_requires_grad(w) && ct_is_leaf(w));
    CHECK(ct_module_num_parameters(m) == 784 * 128 + 128);
    ct_module_free(m);
}

TEST(nn_conv2d_default_init_matches_torch_formula) {
    ct_manual_seed(2);
    ct_module *m = ct_nn_conv2d(32, 64, 3, 1, 1, 1);
    CHECK_NN(m);
    ct_tensor *w = ct_module_get_tensor(m, "weight"), *b = ct_module_get_tensor(m, "bias");
    CHECK(w && ct_ndim(w) == 4 && ct_size(w, 0) == 64 && ct_size(w, 1) == 32 && ct_size(w, 2) == 3);
    int64_t fi, fo;
    CHECK_OK(ct_init_calculate_fan(w, &fi, &fo));
    CHECK(fi == 32 * 9 && fo == 64 * 9);
    check_uniform(w, 1 / sqrt(288.0), "Conv2d(32,64,3).weight");
    check_uniform(b, 1 / sqrt(288.0), "Conv2d(32,64,3).bias");
    /* grouped: fan_in uses in/groups */
    ct_conv2d_options o = {{3, 3}, {1, 1}, {1, 1}, {1, 1}, 4, 0};
    ct_module *g = ct_nn_conv2d_ex(32, 64, &o);
    CHECK_NN(g);
    CHECK(ct_module_get_tensor(g, "bias") == NULL);
    check_uniform(ct_module_get_tensor(g, "weight"), 1 / sqrt(8 * 9.0), "grouped conv weight");
    ct_module_free(g);
    ct_module_free(m);
}

TEST(nn_init_functions) {
    ct_manual_seed(3);
    int64_t sh[2] = {400, 300};
    ct_tensor *t = ct_empty(sh, 2, CT_FLOAT32);
    double mx, mean, var;
    CHECK_OK(ct_init_kaiming_normal_(t, 0, CT_FAN_OUT, "relu"));
    stats(t, &mx, &mean, &var);
    CHECK_MSG(fabs(sqrt(var) / sqrt(2.0 / 400) - 1) < 0.02, "kaiming_normal std %g", sqrt(var));
    CHECK_OK(ct_init_xavier_uniform_(t, 1.0));
    check_uniform(t, sqrt(6.0 / 700), "xavier_uniform");
    CHECK_OK(ct_init_normal_(t, 2.0, 0.5));
    stats(t, &mx, &mean, &var);
    CHECK(fabs(mean - 2.0) < 0.01 && fabs(sqrt(var) - 0.5) < 0.01);
    CHECK_OK(ct_init_constant_(t, 0.25));
    stats(t, &mx, &mean, &var);
    CHECK(mean == 0.25 && var < 1e-12);
    CHECK(fabs(ct_init_calculate_gain("tanh", 0) - 5.0 / 3) < 1e-15);
    CHECK(fabs(ct_init_calculate_gain("relu", 0) - sqrt(2.0)) < 1e-15);
    CHECK(ct_init_calculate_gain("conv2d", 0) == 1.0);
    CHECK(isnan(ct_init_calculate_gain("swish", 0)));
    CHECK(has(ct_last_error(), "swish"));
    /* seeded: same seed, same values */
    ct_tensor *a = ct_empty(sh, 2, CT_FLOAT32), *b = ct_empty(sh, 2, CT_FLOAT32);
    ct_manual_seed(9);
    ct_init_uniform_(a, -1, 1);
    ct_manual_seed(9);
    ct_init_uniform_(b, -1, 1);
    CHECK(memcmp(ct_data(a), ct_data(b), (size_t)ct_numel(a) * 4) == 0);
    int64_t one = 5;
    ct_tensor *v = ct_empty(&one, 1, CT_FLOAT32);
    CHECK_ERR_INT(ct_init_kaiming_uniform_(v, 0, CT_FAN_IN, "relu"), "fewer than 2 dimensions");
    CHECK_ERR_INT(ct_init_uniform_(v, 1, 0), "uniform_");
    ct_free(v);
    ct_free(a);
    ct_free(b);
    ct_free(t);
}

TEST(nn_batch_norm_buffers_and_modes) {
    ct_module *bn = ct_nn_batch_norm2d(3);
    CHECK_NN(bn);
    ct_state_dict *sd = ct_module_state_dict(bn);
    const char *names[] = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"};
    CHECK(sd->n == 5);
    for (int i = 0; i < 5 && i < sd->n; i++) CHECK(strcmp(sd->names[i], names[i]) == 0);
    ct_tensor *nbt = ct_module_get_tensor(bn, "num_batches_tracked");
    CHECK(ct_dtype_of(nbt) == CT_INT64 && ct_ndim(nbt) == 0);
    const float *w = ct_data(ct_module_get_tensor(bn, "weight"));
    const float *b = ct_data(ct_module_get_tensor(bn, "bias"));
    const float *rv = ct_data(ct_module_get_tensor(bn, "running_var"));
    CHECK(w[0] == 1 && w[2] == 1 && b[1] == 0 && rv[0] == 1);
    int n_params;
    ct_tensor **ps = ct_module_parameters(bn, &n_params);
    CHECK(n_params == 2);
    free(ps);

    int64_t xs[4] = {4, 3, 5, 5};
    ct_manual_seed(4);
    ct_tensor *x = ct_randn(xs, 4, CT_FLOAT32);
    ct_tensor *y = ct_module_forward(bn, x);
    CHECK_NN(y);
    CHECK(ct_item(nbt) == 1);
    /* running_mean = 0.9*0 + 0.1*batch mean */
    int dims[3] = {0, 2, 3};
    ct_tensor *bm = ct_mean(x, dims, 3, 0);
    ct_tensor *exp_rm = ct_mul_scalar(bm, 0.1);
    CHECK_CLOSE(ct_module_get_tensor(bn, "running_mean"), exp_rm, 1e-5, "running_mean");
    /* eval: no update, uses running stats */
    ct_module_eval(bn);
    CHECK(!ct_module_is_training(bn));
    ct_tensor *y2 = ct_module_forward(bn, x);
    CHECK_NN(y2);
    CHECK(ct_item(nbt) == 1);
    ct_tensor *y3 = ct_batch_norm(x, ct_module_get_tensor(bn, "running_mean"),
                                  ct_module_get_tensor(bn, "running_var"),
                                  ct_module_get_tensor(bn, "weight"),
                                  ct_module_get_tensor(bn, "bias"), 0, 0.1, 1e-5);
    CHECK_CLOSE(y2, y3, 1e-6, "eval batch norm");
    ct_free(y);
    ct_free(y2);
    ct_free(y3);
    ct_free(bm);
    ct_free(exp_rm);
    ct_state_dict_free(sd);
    ct_module_free(bn);

    /* momentum=None: cumulative average, running_mean after 2 batches = mean of means */
    ct_module *cum = ct_nn_batch_norm2d_ex(3, 1e-5, -1, 0, 1);
    CHECK_NN(cum);
    CHECK(ct_module_get_tensor(cum, "weight") == NULL);
    ct_tensor *x2 = ct_randn(xs, 4, CT_FLOAT32);
    ct_tensor *o1 = ct_module_forward(cum, x), *o2 = ct_module_forward(cum, x2);
    ct_tensor *m1 = ct_mean(x, dims, 3, 0), *m2 = ct_mean(x2, dims, 3, 0);
    ct_tensor *s = ct_add(m1, m2), *avg = ct_mul_scalar(s, 0.5);
    CHECK_CLOSE(ct_module_get_tensor(cum, "running_mean"), avg, 1e-5, "cumulative running_mean");
    ct_free(o1);
    ct_free(o2);
    ct_free(m1);
    ct_free(m2);
    ct_free(s);
    ct_free(avg);
    ct_free(x2);
    ct_free(x);
    ct_module_free(cum);
}

TEST(nn_sequential_tree_names_and_modes) {
    ct_module *mods[5] = {ct_nn_conv2d(3, 4, 3, 1, 1, 1), ct_nn_batch_norm2d(4), ct_nn_relu(),
                          ct_nn_flatten(1, -1), ct_nn_dropout(0.5)};
    ct_module *seq = ct_nn_sequential(mods, 5);
    CHECK_NN(seq);
    CHECK_OK(ct_nn_sequential_append(seq, ct_nn_linear(4 * 4 * 4, 2, 1)));
    ct_state_dict *sd = ct_module_state_dict(seq);
    const char *want[] = {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                          "1.running_var", "1.num_batches_tracked", "5.weight", "5.bias"};
    CHECK(sd->n == 9);
    for (int i = 0; i < 9 && i < sd->n; i++)
        CHECK_MSG(strcmp(sd->names[i], want[i]) == 0, "entry %d: %s, want %s", i, sd->names[i],
                  want[i]);
    int np;
    ct_tensor **ps = ct_module_parameters(seq, &np);
    CHECK(np == 6 && ps[0] == ct_module_get_tensor(seq, "0.weight") &&
          ps[5] == ct_module_get_tensor(seq, "5.bias"));
    free(ps);
    ct_module *c = ct_module_get(seq, "1");
    CHECK(c && strcmp(c->type, "BatchNorm2d") == 0);
    char path[64];
    CHECK(strcmp(ct_module_path(c, path, sizeof path), "1") == 0);
    CHECK(ct_module_get(seq, "7") == NULL && ct_module_get(seq, "") == seq);
    ct_module_eval(seq);
    CHECK(!ct_module_get(seq, "4")->training);
    ct_module_train(seq, 1);
    CHECK(ct_module_get(seq, "4")->training);

    int64_t xs[4] = {2, 3, 4, 4};
    ct_tensor *x = ct_randn(xs, 4, CT_FLOAT32);
    ct_module_eval(seq); /* dropout off: deterministic */
    ct_tensor *y1 = ct_module_forward(seq, x), *y2 = ct_module_forward(seq, x);
    CHECK_NN(y1);
    CHECK(ct_ndim(y1) == 2 && ct_size(y1, 1) == 2);
    CHECK_CLOSE(y1, y2, 0, "eval forward is deterministic");
    ct_tensor *l = ct_sum(y1, NULL, 0, 0);
    CHECK_OK(ct_backward(l, NULL, 0));
    CHECK(ct_grad(ct_module_get_tensor(seq, "0.weight")) != NULL);
    ct_module_zero_grad(seq);
    CHECK(ct_grad(ct_module_get_tensor(seq, "0.weight")) == NULL);
    char *txt = NULL;
    size_t txtlen = 0;
    FILE *mf = open_memstream(&txt, &txtlen);
    ct_module_print(seq, mf);
    fclose(mf);
    CHECK(has(txt, "Sequential(\n  (0): Conv2d(3, 4, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))"));
    CHECK(has(txt, "(5): Linear(in_features=64, out_features=2, bias=True)\n)"));
    free(txt);
    ct_free(l);
    ct_free(y1);
    ct_free(y2);
    ct_free(x);
    ct_state_dict_free(sd);
    ct_module_free(seq);
}

TEST(nn_activation_pool_dropout_modules) {
    int64_t xs[4] = {2, 3, 6, 6};
    ct_tensor *x = ct_randn(xs, 4, CT_FLOAT32);
    struct {
        ct_module *m;
        ct_tensor *ref;
    } cases[5];
    int k2[2] = {2, 2}, k3[2] = {3, 3}, s2[2] = {2, 2}, p1[2] = {1, 1}, o2[2] = {2, 3};
    cases[0].m = ct_nn_gelu(0);
    cases[0].ref = ct_gelu(x, 0);
    cases[1].m = ct_nn_gelu(1);
    cases[1].ref = ct_gelu(x, 1);
    cases[2].m = ct_nn_max_pool2d(2, 0, 0);
    cases[2].ref = ct_max_pool2d(x, k2, k2, NULL, NULL, 0);
    cases[3].m = ct_nn_avg_pool2d(3, 2, 1);
    cases[3].ref = ct_avg_pool2d(x, k3, s2, p1, 0, 1);
    cases[4].m = ct_nn_adaptive_avg_pool2d(2, 3);
    cases[4].ref = ct_adaptive_avg_pool2d(x, o2);
    for (int i = 0; i < 5; i++) {
        CHECK_NN(cases[i].m);
        ct_tensor *y = ct_module_forward(cases[i].m, x);
        CHECK_CLOSE(y, cases[i].ref, 0, cases[i].m->type);
        ct_free(y);
        ct_free(cases[i].ref);
        ct_module_free(cases[i].m);
    }
    /* Dropout: identity in eval, zeros or scaled values in training */
    ct_module *d = ct_nn_dropout(0.5);
    ct_tensor *y = ct_module_forward(d, x);
    const float *px = ct_data(x), *py = ct_data(y);
    int zeros = 0;
    for (int64_t i = 0; i < ct_numel(x); i++) {
        if (py[i] == 0) zeros++;
        else CHECK(fabsf(py[i] - 2 * px[i]) < 1e-6f);
    }
    CHECK(zeros > 40 && zeros < 176);
    ct_free(y);
    ct_module_eval(d);
    y = ct_module_forward(d, x);
    CHECK_CLOSE(y, x, 0, "dropout eval");
    ct_free(y);
    ct_module_free(d);
    ct_module *id = ct_nn_identity();
    y = ct_module_forward(id, x);
    CHECK(y == x);
    ct_free(y);
    ct_module_free(id);
    ct_free(x);
}

/* A small network converted to float64: gradcheck through the module tree. */
typedef struct {
    ct_module *net;
    ct_tensor *const *params;
    int np;
} net_ctx;

static ct_tensor *net_fn(ct_tensor *const *inputs, void *vc) {
    net_ctx *c = vc;
    (void)inputs; /* inputs[0] is x; the parameters are checked through the module */
    return ct_module_forward(c->net, inputs[0]);
}

TEST(nn_module_float64_gradcheck) {
    ct_manual_seed(5);
    ct_module *mods[6] = {ct_nn_conv2d(2, 3, 3, 1, 1, 1), ct_nn_batch_norm2d(3), ct_nn_gelu(0),
                          ct_nn_avg_pool2d(2, 2, 0), ct_nn_flatten(1, -1), ct_nn_linear(12, 2, 1)};
    ct_module *net = ct_nn_sequential(mods, 6);
    CHECK_NN(net);
    CHECK_OK(ct_module_to(net, ct_cpu(), CT_FLOAT64));
    CHECK(ct_dtype_of(ct_module_get_tensor(net, "0.weight")) == CT_FLOAT64);
    CHECK(ct_dtype_of(ct_module_get_tensor(net, "1.num_batches_tracked")) == CT_INT64);
    CHECK(ct_requires_grad(ct_module_get_tensor(net, "5.bias")));
    ct_module_eval(net); /* running statistics: a smooth function of x and the weights */
    int64_t xs[4] = {2, 2, 4, 4};
    ct_tensor *x = ct_randn(xs, 4, CT_FLOAT64);
    ct_set_requires_grad(x, 1);
    int np;
    ct_tensor **ps = ct_module_parameters(net, &np);
    ct_tensor *inputs[8] = {x};
    for (int i = 0; i < np && i < 7; i++) inputs[1 + i] = ps[i];
    net_ctx c = {net, ps, np};
    GRADCHECK(net_fn, inputs, 1 + (np < 7 ? np : 7), &c, "conv-bn-gelu-pool-linear (eval)");
    ct_module_train(net, 1); /* batch statistics */
    GRADCHECK(net_fn, inputs, 1 + (np < 7 ? np : 7), &c, "conv-bn-gelu-pool-linear (train)");
    free(ps);
    ct_free(x);
    ct_module_free(net);
}

static ct_module *tiny_net(int hidden) {
    ct_module *mods[3] = {ct_nn_linear(4, hidden, 1), ct_nn_relu(), ct_nn_linear(hidden, 2, 1)};
    return ct_nn_sequential(mods, 3);
}

TEST(nn_load_state_dict_reports_mismatches) {
    ct_module *a = tiny_net(8), *b = tiny_net(6);
    ct_state_dict *sa = ct_module_state_dict(a);
    /* same architecture: copies the values */
    ct_module *a2 = tiny_net(8);
    CHECK_OK(ct_module_load_state_dict(a2, sa, 1));
    CHECK_CLOSE(ct_module_get_tensor(a2, "2.weight"), ct_module_get_tensor(a, "2.weight"), 0,
                "loaded weight");
    /* size mismatches: all listed with both shapes, nothing changed */
    ct_tensor *before = ct_clone(ct_module_get_tensor(b, "0.weight"));
    CHECK_ERR_INT(ct_module_load_state_dict(b, sa, 1), "size mismatch");
    const char *e = ct_last_error();
    CHECK(has(e, "0.weight: given [8, 4], model has [6, 4]"));
    CHECK(has(e, "0.bias: given [8], model has [6]"));
    CHECK(has(e, "2.weight: given [2, 8], model has [2, 6]"));
    CHECK(has(e, "3 problems"));
    CHECK_CLOSE(ct_module_get_tensor(b, "0.weight"), before, 0, "unchanged after a failed load");
    /* missing and unexpected names */
    ct_state_dict *part = ct_state_dict_new();
    ct_state_dict_add(part, "0.weight", ct_module_get_tensor(a, "0.weight"));
    ct_state_dict_add(part, "0.bias", ct_module_get_tensor(a, "0.bias"));
    ct_state_dict_add(part, "extra.weight", ct_module_get_tensor(a, "2.bias"));
    CHECK_ERR_INT(ct_module_load_state_dict(a2, part, 1), "missing: 2.weight [2, 8]");
    CHECK(has(ct_last_error(), "unexpected: extra.weight [2]"));
    CHECK(has(ct_last_error(), "missing: 2.bias [2]"));
    char *rep = ct_module_check_state_dict(a2, part, 1);
    CHECK(rep && has(rep, "missing: 2.weight") && has(rep, "unexpected: extra.weight"));
    free(rep);
    CHECK(ct_module_check_state_dict(a2, sa, 1) == NULL);
    /* non-strict: loads what is there */
    CHECK_OK(ct_module_load_state_dict(a2, part, 0));
    ct_state_dict_free(part);
    ct_state_dict_free(sa);
    ct_free(before);
    ct_module_free(a);
    ct_module_free(a2);
    ct_module_free(b);
}

TEST(nn_checkpoint_roundtrip_and_wrong_model) {
    char path[] = "/tmp/ctorch_nn_ckptXXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    ct_module *a = tiny_net(8), *b = tiny_net(8), *c = tiny_net(5);
    const char *meta[] = {"model", "tiny", NULL};
    CHECK_OK(ct_module_save(a, path, meta));
    CHECK_OK(ct_module_load(b, path));
    CHECK_CLOSE(ct_module_get_tensor(b, "0.weight"), ct_module_get_tensor(a, "0.weight"), 0,
                "checkpoint roundtrip");
    CHECK_ERR_INT(ct_module_load(c, path), "does not match");
    CHECK(has(ct_last_error(), path) && has(ct_last_error(), "saved from model tiny"));
    CHECK(has(ct_last_error(), "0.weight: given [8, 4], model has [5, 4]"));
    CHECK_ERR_INT(ct_module_load(c, "/nonexistent/dir/x.safetensors"), "x.safetensors");
    CHECK_ERR_INT(ct_module_save(a, "/nonexistent/dir/x.safetensors", NULL), "x.safetensors");
    unlink(path);
    ct_module_free(a);
    ct_module_free(b);
    ct_module_free(c);
}

TEST(nn_constructor_errors) {
    CHECK_ERR_PTR((ct_tensor *)ct_nn_conv2d(0, 4, 3, 1, 1, 1), "Conv2d");
    CHECK(has(ct_last_error(), "in_channels"));
    ct_conv2d_options o = {{3, 3}, {1, 1}, {0, 0}, {1, 1}, 3, 1};
    CHECK_ERR_PTR((ct_tensor *)ct_nn_conv2d_ex(4, 6, &o), "groups (3) must divide");
    o.groups = 0;
    CHECK_ERR_PTR((ct_tensor *)ct_nn_conv2d_ex(4, 6, &o), "groups must be >= 1");
    o.groups = 1;
    o.kernel[1] = 0;
    CHECK_ERR_PTR((ct_tensor *)ct_nn_conv2d_ex(4, 6, &o), "kernel_size");
    o.kernel[1] = 3;
    o.stride[0] = 0;
    CHECK_ERR_PTR((ct_tensor *)ct_nn_conv2d_ex(4, 6, &o), "stride");
    CHECK_ERR_PTR((ct_tensor *)ct_nn_linear(0, 3, 1), "Linear");
    CHECK_ERR_PTR((ct_tensor *)ct_nn_batch_norm2d(0), "BatchNorm2d");
    CHECK_ERR_PTR((ct_tensor *)ct_nn_batch_norm2d_ex(3, 0, 0.1, 1, 1), "eps");
    CHECK_ERR_PTR((ct_tensor *)ct_nn_dropout(1.5), "Dropout");
    CHECK_ERR_PTR((ct_tensor *)ct_nn_max_pool2d(0, 1, 0), "MaxPool2d");
    CHECK_ERR_PTR((ct_tensor *)ct_nn_avg_pool2d(2, 2, 2), "padding");
    CHECK_ERR_PTR((ct_tensor *)ct_nn_adaptive_avg_pool2d(0, 1), "AdaptiveAvgPool2d");
    CHECK_ERR_PTR((ct_tensor *)ct_nn_basic_block(4, 8, 0), "BasicBlock");
    /* a failed constructor inside Sequential: its message survives */
    ct_module *mods[2] = {ct_nn_relu(), ct_nn_linear(-1, 2, 1)};
    CHECK(ct_nn_sequential(mods, 2) == NULL);
    CHECK(has(ct_last_error(), "Sequential: module 1: Linear: in_features (-1)"));
    /* duplicate / dotted names */
    ct_module *m = ct_nn_linear(2, 2, 1);
    int64_t n = 2;
    ct_tensor *t = ct_zeros(&n, 1, CT_FLOAT32);
    CHECK_ERR_INT(ct_module_add_parameter(m, "weight", t), "already used");
    CHECK_ERR_INT(ct_module_add_buffer(m, "a.b", t), "no '.'");
    CHECK_ERR_INT(ct_module_add_child(m, "bias", ct_nn_relu()), "already used");
    ct_tensor *it = ct_zeros(&n, 1, CT_INT64);
    CHECK_ERR_INT(ct_module_add_parameter(m, "p", it), "float32 or float64");
    CHECK_OK(ct_module_add_buffer(m, "stats", it));
    CHECK(ct_module_get_tensor(m, "stats") == it);
    ct_free(it);
    ct_free(t);
    ct_module_free(m);
}

TEST(nn_forward_errors_name_the_module) {
    ct_module *mods[4] = {ct_nn_conv2d(3, 4, 3, 1, 1, 1), ct_nn_relu(), ct_nn_flatten(1, -1),
                          ct_nn_linear(4 * 8 * 8, 2, 1)};
    ct_module *seq = ct_nn_sequential(mods, 4);
    int64_t bad_c[4] = {2, 5, 8, 8}, bad_hw[4] = {2, 3, 6, 6}, bad_nd[2] = {2, 3};
    ct_tensor *x1 = ct_zeros(bad_c, 4, CT_FLOAT32), *x2 = ct_zeros(bad_hw, 4, CT_FLOAT32);
    ct_tensor *x3 = ct_zeros(bad_nd, 2, CT_FLOAT32);
    CHECK_ERR_PTR(ct_module_forward(seq, x1), "Conv2d '0' (3, 4, kernel_size=(3, 3)");
    CHECK(has(ct_last_error(), "[2, 5, 8, 8] has 5 channels") &&
          has(ct_last_error(), "in_channels = 3"));
    CHECK_ERR_PTR(ct_module_forward(seq, x2), "Linear '3' (in_features=256, out_features=2");
    CHECK(has(ct_last_error(), "[2, 144]"));
    CHECK_ERR_PTR(ct_module_forward(seq, x3), "Conv2d '0'");
    CHECK(has(ct_last_error(), "4-D"));
    CHECK_ERR_PTR(ct_module_forward(seq, NULL), "Sequential");
    ct_module *bn = ct_nn_batch_norm2d(4);
    CHECK_ERR_PTR(ct_module_forward(bn, x1), "BatchNorm2d");
    CHECK(has(ct_last_error(), "num_features is 4"));
    CHECK_ERR_PTR(ct_module_forward(bn, x3), "4-D");
    ct_module_free(bn);
    ct_free(x1);
    ct_free(x2);
    ct_free(x3);
    ct_module_free(seq);
}

TEST(nn_basic_block_structure) {
    ct_module *b = ct_nn_basic_block(64, 128, 2);
    CHECK_NN(b);
    ct_state_dict *sd = ct_module_state_dict(b);
    CHECK(sd->n == 18); /* conv1, bn1 (5), conv2, bn2 (5), downsample conv, bn (5) */
    CHECK(ct_state_dict_get(sd, "downsample.0.weight") != NULL);
    CHECK(ct_state_dict_get(sd, "downsample.1.running_var") != NULL);
    ct_tensor *w = ct_state_dict_get(sd, "downsample.0.weight");
    CHECK(w && ct_size(w, 0) == 128 && ct_size(w, 1) == 64 && ct_size(w, 2) == 1);
    CHECK(ct_state_dict_get(sd, "conv1.bias") == NULL);
    int64_t xs[4] = {2, 64, 8, 8};
    ct_tensor *x = ct_randn(xs, 4, CT_FLOAT32);
    ct_tensor *y = ct_module_forward(b, x);
    CHECK_NN(y);
    CHECK(y && ct_size(y, 1) == 128 && ct_size(y, 2) == 4 && ct_size(y, 3) == 4);
    ct_free(y);
    ct_free(x);
    ct_state_dict_free(sd);
    ct_module_free(b);
    ct_module *same = ct_nn_basic_block(16, 16, 1);
    CHECK(same && ct_module_get(same, "downsample") == NULL);
    ct_module_free(same);
}

/* Weights saved by PyTorch (safetensors layout, incl. the int64 num_batches_tracked) load
 * into the same architecture built from ctorch modules and give PyTorch's output. */
TEST(nn_load_torch_checkpoint) {
    ct_fixture *fx = ct_fixture_load("nn_torch_tiny");
    if (!fx) return;
    const char *dir = getenv("CT_FIXTURE_DIR");
    char path[512];
    snprintf(path, sizeof path, "%s/nn_torch_tiny.safetensors", dir ? dir : "tests/fixtures");
    ct_module *mods[5] = {ct_nn_conv2d(2, 3, 3, 1, 1, 1), ct_nn_batch_norm2d(3), ct_nn_relu(),
                          ct_nn_flatten(1, -1), ct_nn_linear(3 * 4 * 4, 2, 1)};
    ct_module *m = ct_nn_sequential(mods, 5);
    CHECK_OK(ct_module_load(m, path));
    CHECK(ct_item(ct_module_get_tensor(m, "1.num_batches_tracked")) == 2);
    ct_module_eval(m);
    ct_tensor *x = ct_fixture_get(fx, "x"), *want = ct_fixture_get(fx, "y");
    ct_tensor *y = ct_module_forward(m, x);
    CHECK_CLOSE(y, want, 1e-5, "forward with PyTorch's weights");
    ct_free(y);
    ct_free(x);
    ct_free(want);
    ct_module_free(m);
    ct_fixture_free(fx);
}
