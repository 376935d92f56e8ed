/* Module options structs (ct_conv2d_opts, ct_batch_norm2d_opts, ct_pool2d_opts,
 * ct_dropout_opts, ct_linear_opts): a zero-initialised struct (or NULL where allowed) gives
 * PyTorch's defaults, an options call builds the same module as the positional call, the
 * pooling options the positional constructors lack (dilation, ceil_mode,
 * count_include_pad) compute what the ops do and keep Sequential's fusion away, and every
 * field rejects its bad values by name. */
#include "test.h"
#include "ctorch_nn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int has(const char *hay, const char *needle) { return hay && strstr(hay, needle) != NULL; }

static void repr(const ct_module *m, char *buf, size_t n) {
    buf[0] = 0;
    if (m && m->extra_repr) m->extra_repr(m, buf, n);
}

/* Same type, configuration (repr) and state_dict: names, shapes, dtypes and values. */
static void check_same_module(ct_module *a, ct_module *b, const char *what) {
    CHECK_MSG(a && b, "%s: a constructor failed: %s", what, ct_last_error());
    if (!a || !b) return;
    char ra[256], rb[256];
    repr(a, ra, sizeof ra);
    repr(b, rb, sizeof rb);
    CHECK_MSG(!strcmp(a->type, b->type) && !strcmp(ra, rb), "%s: %s(%s) vs %s(%s)", what,
              a->type, ra, b->type, rb);
    ct_state_dict *sa = ct_module_state_dict(a), *sb = ct_module_state_dict(b);
    CHECK_MSG(sa->n == sb->n, "%s: %d vs %d state_dict entries", what, sa->n, sb->n);
    for (int i = 0; i < sa->n && i < sb->n; i++) {
        CHECK_MSG(!strcmp(sa->names[i], sb->names[i]), "%s: entry %d %s vs %s", what, i,
                  sa->names[i], sb->names[i]);
        CHECK(ct_dtype_of(sa->tensors[i]) == ct_dtype_of(sb->tensors[i]));
        CHECK(ct_requires_grad(sa->tensors[i]) == ct_requires_grad(sb->tensors[i]));
        CHECK_CLOSE(sa->tensors[i], sb->tensors[i], 0, sa->names[i]);
    }
    ct_state_dict_free(sa);
    ct_state_dict_free(sb);
}

/* Builds both from the same seed. */
#define SAME(options_call, positional_call, what)                                           \
    do {                                                                                    \
        ct_manual_seed(11);                                                                 \
        ct_module *a_ = (options_call);                                                     \
        ct_manual_seed(11);                                                                 \
        ct_module *b_ = (positional_call);                                                  \
        check_same_module(a_, b_, what);                                                    \
        ct_module_free(a_);                                                                 \
        ct_module_free(b_);                                                                 \
    } while (0)

TEST(nn_options_zero_means_pytorch_defaults) {
    char r[256];
    ct_module *lin = ct_nn_linear_opt(4, 3, &(ct_linear_opts){0}), *lin0 = ct_nn_linear_opt(4, 3, NULL);
    repr(lin, r, sizeof r);
    CHECK_MSG(!strcmp(r, "in_features=4, out_features=3, bias=True"), "Linear: %s", r);
    CHECK(ct_module_get_tensor(lin0, "bias") != NULL);
    ct_module *conv = ct_nn_conv2d_opt(1, 16, &(ct_conv2d_opts){.kernel_size = 3});
    repr(conv, r, sizeof r);
    CHECK_MSG(!strcmp(r, "1, 16, kernel_size=(3, 3), stride=(1, 1)"), "Conv2d: %s", r);
    CHECK(ct_module_get_tensor(conv, "bias") != NULL);
    ct_module *bn = ct_nn_batch_norm2d_opt(16, &(ct_batch_norm2d_opts){0});
    ct_module *bn0 = ct_nn_batch_norm2d_opt(16, NULL);
    repr(bn, r, sizeof r);
    CHECK_MSG(!strcmp(r, "16, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True"),
              "BatchNorm2d: %s", r);
    CHECK(bn0 && ct_module_get_tensor(bn0, "weight") && ct_module_get_tensor(bn0, "running_var"));
    ct_module *mp = ct_nn_max_pool2d_opt(&(ct_pool2d_opts){.kernel_size = 2});
    repr(mp, r, sizeof r);
    CHECK_MSG(!strcmp(r, "kernel_size=2, stride=2, padding=0"), "MaxPool2d: %s", r);
    ct_module *ap = ct_nn_avg_pool2d_opt(&(ct_pool2d_opts){.kernel_size = 3});
    repr(ap, r, sizeof r);
    CHECK_MSG(!strcmp(r, "kernel_size=3, stride=3, padding=0"), "AvgPool2d: %s", r);
    ct_module *dr = ct_nn_dropout_opt(&(ct_dropout_opts){0}), *dr0 = ct_nn_dropout_opt(NULL);
    repr(dr, r, sizeof r);
    CHECK_MSG(!strcmp(r, "p=0.5"), "Dropout: %s", r);
    repr(dr0, r, sizeof r);
    CHECK_MSG(!strcmp(r, "p=0.5"), "Dropout(NULL): %s", r);
    ct_module *all[] = {lin, lin0, conv, bn, bn0, mp, ap, dr, dr0};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) ct_module_free(all[i]);
}

TEST(nn_options_and_positional_calls_build_identical_modules) {
    SAME(ct_nn_linear_opt(5, 3, NULL), ct_nn_linear(5, 3, 1), "Linear");
    SAME(ct_nn_linear_opt(5, 3, &(ct_linear_opts){.no_bias = 1}), ct_nn_linear(5, 3, 0),
         "Linear no bias");
    SAME(ct_nn_conv2d_opt(1, 16, &(ct_conv2d_opts){.kernel_size = 3, .padding = 1}),
         ct_nn_conv2d(1, 16, 3, 1, 1, 1), "Conv2d(1, 16, 3, padding=1)");
    SAME(ct_nn_conv2d_opt(4, 8, &(ct_conv2d_opts){.kernel_size = 3, .stride = 2, .no_bias = 1}),
         ct_nn_conv2d(4, 8, 3, 2, 0, 0), "Conv2d stride 2 no bias");
    ct_conv2d_options full = {{1, 3}, {2, 1}, {0, 1}, {1, 2}, 2, 1};
    SAME(ct_nn_conv2d_opt(4, 8, &(ct_conv2d_opts){.kernel_size_hw = {1, 3}, .stride_hw = {2, 1},
                                                  .padding_hw = {0, 1}, .dilation_hw = {1, 2},
                                                  .groups = 2}),
         ct_nn_conv2d_ex(4, 8, &full), "Conv2d non-square, grouped, dilated");
    ct_conv2d_options sq = {{3, 3}, {1, 1}, {2, 2}, {2, 2}, 4, 0};
    SAME(ct_nn_conv2d_opt(4, 8, &(ct_conv2d_opts){.kernel_size = 3, .padding = 2,
                                                  .dilation = 2, .groups = 4, .no_bias = 1}),
         ct_nn_conv2d_ex(4, 8, &sq), "Conv2d dilation 2 groups 4");
    SAME(ct_nn_batch_norm2d_opt(6, NULL), ct_nn_batch_norm2d(6), "BatchNorm2d");
    SAME(ct_nn_batch_norm2d_opt(6, &(ct_batch_norm2d_opts){.eps = 1e-3, .momentum = 0.01,
                                                           .no_affine = 1}),
         ct_nn_batch_norm2d_ex(6, 1e-3, 0.01, 0, 1), "BatchNorm2d eps momentum affine");
    SAME(ct_nn_batch_norm2d_opt(6, &(ct_batch_norm2d_opts){.momentum_none = 1,
                                                           .no_track_running_stats = 1}),
         ct_nn_batch_norm2d_ex(6, 1e-5, -1, 1, 0), "BatchNorm2d momentum=None no tracking");
    SAME(ct_nn_max_pool2d_opt(&(ct_pool2d_opts){.kernel_size = 3, .stride = 2, .padding = 1}),
         ct_nn_max_pool2d(3, 2, 1), "MaxPool2d(3, 2, 1)");
    SAME(ct_nn_avg_pool2d_opt(&(ct_pool2d_opts){.kernel_size = 2}), ct_nn_avg_pool2d(2, 0, 0),
         "AvgPool2d(2)");
    SAME(ct_nn_dropout_opt(&(ct_dropout_opts){.p = 0.2}), ct_nn_dropout(0.2), "Dropout(0.2)");
}

/* The pooling settings only the options reach: module output == the op's, and a dilated or
 * ceil-mode MaxPool2d inside a Sequential is not fused with the Conv2d and ReLU before it. */
TEST(nn_options_pooling_dilation_ceil_mode_count_include_pad) {
    ct_manual_seed(12);
    int64_t xs[4] = {2, 3, 7, 7};
    ct_tensor *x = ct_randn(xs, 4, CT_FLOAT32);
    int k3[2] = {3, 3}, k2[2] = {2, 2}, s2[2] = {2, 2}, p1[2] = {1, 1}, d2[2] = {2, 2};
    ct_module *mp = ct_nn_max_pool2d_opt(&(ct_pool2d_opts){.kernel_size = 3, .stride = 2,
                                                           .padding = 1, .dilation = 2,
                                                           .ceil_mode = 1});
    ct_tensor *y = ct_module_forward(mp, x), *want = ct_max_pool2d(x, k3, s2, p1, d2, 1);
    CHECK_CLOSE(y, want, 0, "MaxPool2d dilation 2 ceil_mode");
    char r[256];
    repr(mp, r, sizeof r);
    CHECK_MSG(!strcmp(r, "kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True"), "%s",
              r);
    ct_free(y);
    ct_free(want);
    ct_module *ap = ct_nn_avg_pool2d_opt(&(ct_pool2d_opts){.kernel_size = 2, .padding = 1,
                                                           .ceil_mode = 1,
                                                           .no_count_include_pad = 1});
    y = ct_module_forward(ap, x);
    want = ct_avg_pool2d(x, k2, k2, p1, 1, 0);
    CHECK_CLOSE(y, want, 0, "AvgPool2d ceil_mode count_include_pad=False");
    repr(ap, r, sizeof r);
    CHECK(has(r, "ceil_mode=True, count_include_pad=False"));
    ct_free(y);
    ct_free(want);
    /* conv + relu + dilated max-pool in a Sequential == the three run one by one */
    ct_module *conv = ct_nn_conv2d_opt(3, 4, &(ct_conv2d_opts){.kernel_size = 3, .padding = 1});
    ct_module *mods[3] = {conv, ct_nn_relu(), mp};
    ct_module *seq = ct_nn_sequential(mods, 3);
    CHECK_NN(seq);
    ct_tensor *c = ct_module_forward(conv, x), *rl = ct_relu(c);
    want = ct_module_forward(mp, rl);
    y = ct_module_forward(seq, x);
    CHECK_CLOSE(y, want, 1e-6, "Sequential with a dilated MaxPool2d");
    ct_free(c);
    ct_free(rl);
    ct_free(y);
    ct_free(want);
    ct_free(x);
    ct_module_free(seq);
    ct_module_free(ap);
}

TEST(nn_options_reject_bad_values_by_name) {
#define BAD(call, needle) CHECK_ERR_PTR((ct_tensor *)(call), needle)
    /* Linear */
    BAD(ct_nn_linear_opt(0, 3, NULL), "in_features (0)");
    BAD(ct_nn_linear_opt(3, -2, &(ct_linear_opts){.no_bias = 1}), "out_features (-2)");
    /* Conv2d */
    BAD(ct_nn_conv2d_opt(1, 4, NULL), "kernel_size is required");
    BAD(ct_nn_conv2d_opt(1, 4, &(ct_conv2d_opts){.padding = 1}), ".kernel_size is required");
    BAD(ct_nn_conv2d_opt(1, 4, &(ct_conv2d_opts){.kernel_size = -3}), "kernel_size must be >= 1");
    BAD(ct_nn_conv2d_opt(1, 4, &(ct_conv2d_opts){.kernel_size_hw = {3, 0}}),
        "kernel_size must be >= 1, got (3, 0)");
    BAD(ct_nn_conv2d_opt(1, 4, &(ct_conv2d_opts){.kernel_size = 3, .stride = -1}),
        "stride must be >= 1");
    BAD(ct_nn_conv2d_opt(1, 4, &(ct_conv2d_opts){.kernel_size = 3, .stride_hw = {2, 0}}),
        "stride must be >= 1, got (2, 0)");
    BAD(ct_nn_conv2d_opt(1, 4, &(ct_conv2d_opts){.kernel_size = 3, .padding = -1}),
        "padding must be >= 0");
    BAD(ct_nn_conv2d_opt(1, 4, &(ct_conv2d_opts){.kernel_size = 3, .padding_hw = {0, -1}}),
        "padding must be >= 0, got (0, -1)");
    BAD(ct_nn_conv2d_opt(1, 4, &(ct_conv2d_opts){.kernel_size = 3, .dilation = -2}),
        "dilation must be >= 1");
    BAD(ct_nn_conv2d_opt(1, 4, &(ct_conv2d_opts){.kernel_size = 3, .dilation_hw = {0, 2}}),
        "dilation must be >= 1, got (0, 2)");
    BAD(ct_nn_conv2d_opt(1, 4, &(ct_conv2d_opts){.kernel_size = 3, .groups = -1}),
        "groups must be >= 1");
    BAD(ct_nn_conv2d_opt(4, 6, &(ct_conv2d_opts){.kernel_size = 3, .groups = 4}),
        "groups (4) must divide");
    BAD(ct_nn_conv2d_opt(0, 6, &(ct_conv2d_opts){.kernel_size = 3}), "in_channels (0)");
    /* BatchNorm2d */
    BAD(ct_nn_batch_norm2d_opt(0, NULL), "num_features must be >= 1");
    BAD(ct_nn_batch_norm2d_opt(3, &(ct_batch_norm2d_opts){.eps = -1e-5}), ".eps = -1e-05");
    BAD(ct_nn_batch_norm2d_opt(3, &(ct_batch_norm2d_opts){.eps = NAN}), ".eps = nan");
    BAD(ct_nn_batch_norm2d_opt(3, &(ct_batch_norm2d_opts){.momentum = 1.5}), ".momentum = 1.5");
    BAD(ct_nn_batch_norm2d_opt(3, &(ct_batch_norm2d_opts){.momentum = -0.1}),
        "momentum=None is .momentum_none");
    BAD(ct_nn_batch_norm2d_opt(3, &(ct_batch_norm2d_opts){.momentum = 0.1, .momentum_none = 1}),
        "contradict");
    /* MaxPool2d / AvgPool2d */
    BAD(ct_nn_max_pool2d_opt(NULL), "MaxPool2d: options are NULL; kernel_size is required");
    BAD(ct_nn_avg_pool2d_opt(&(ct_pool2d_opts){.stride = 2}), "AvgPool2d: options .kernel_size");
    BAD(ct_nn_max_pool2d_opt(&(ct_pool2d_opts){.kernel_size = -2}), "kernel_size must be >= 1");
    BAD(ct_nn_max_pool2d_opt(&(ct_pool2d_opts){.kernel_size = 2, .stride = -1}),
        ".stride = -1 must be >= 1");
    BAD(ct_nn_avg_pool2d_opt(&(ct_pool2d_opts){.kernel_size = 2, .padding = 2}),
        "padding (2) must be between 0 and half");
    BAD(ct_nn_max_pool2d_opt(&(ct_pool2d_opts){.kernel_size = 2, .padding = -1}),
        "padding (-1)");
    BAD(ct_nn_max_pool2d_opt(&(ct_pool2d_opts){.kernel_size = 3, .dilation = -1}),
        "dilation must be >= 1");
    BAD(ct_nn_avg_pool2d_opt(&(ct_pool2d_opts){.kernel_size = 2, .dilation = 2}),
        "AvgPool2d has no dilation");
    BAD(ct_nn_max_pool2d_opt(&(ct_pool2d_opts){.kernel_size = 2, .no_count_include_pad = 1}),
        "MaxPool2d has no count_include_pad");
    /* padding may reach half the dilated window: (3 - 1) * 2 + 1 = 5 -> 2 */
    ct_module *ok = ct_nn_max_pool2d_opt(&(ct_pool2d_opts){.kernel_size = 3, .padding = 2,
                                                           .dilation = 2});
    CHECK_NN(ok);
    ct_module_free(ok);
    /* Dropout */
    BAD(ct_nn_dropout_opt(&(ct_dropout_opts){.p = 1.5}), ".p = 1.5 must be in (0, 1]");
    BAD(ct_nn_dropout_opt(&(ct_dropout_opts){.p = -0.5}), ".p = -0.5");
    BAD(ct_nn_dropout_opt(&(ct_dropout_opts){.p = NAN}), ".p = nan");
#undef BAD
}
