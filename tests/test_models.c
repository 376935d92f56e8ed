/* Built-in models against PyTorch (tests/fixtures/gen_nn_optim.py): state_dict names,
 * dtypes and shapes; simple_cnn and mlp forward + every parameter gradient; resnet18_cifar
 * (the fixtures' "resnet18": its name when they were made) forward/backward, BatchNorm
 * running statistics and eval forward; model errors. The seed's AdaptiveNet (tests/fixtures/gen_adaptive_net.py): names, both outputs and the
 * gradients of each graph, eval mode, the h[:, :128] slice, errors with module paths. */
#include "test.h"
#include "core/tensor_impl.h"
#include "ctorch_nn.h"
#include "ctorch_optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int has(const char *hay, const char *needle) { return hay && strstr(hay, needle) != NULL; }

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* The hash-like formula of gen_nn_optim.py: 2*frac(sin(12.9898 i + 78.233 k) * 43758.5453) - 1. */
static double h(int64_t i, int64_t k) {
    double v = sin(12.9898 * (double)i + 78.233 * (double)k) * 43758.5453;
    return (v - floor(v)) * 2 - 1;
}

/* The weights of gen_nn_optim.py, as a state_dict (buffers keep their values). */
static ct_state_dict *formula_state(const ct_module *m) {
    ct_state_dict *own = ct_module_state_dict(m), *sd = ct_state_dict_new();
    int k = 0;
    for (int i = 0; i < own->n; i++) {
        ct_tensor *t = own->tensors[i];
        if (!ct_requires_grad(t)) {
            ct_tensor *c = ct_clone(t);
            ct_state_dict_add(sd, own->names[i], c);
            ct_free(c);
            continue;
        }
        int64_t n = ct_numel(t);
        float *v = malloc((size_t)n * sizeof *v);
        for (int64_t j = 0; j < n; j++) {
            if (ct_ndim(t) >= 2)
                v[j] = (float)(h(j, k) * sqrt(3.0 / (double)(n / ct_size(t, 0))));
            else if (ends_with(own->names[i], "weight"))
                v[j] = (float)(1 + 0.1 * h(j, k));
            else
                v[j] = (float)(0.1 * h(j, k));
        }
        ct_tensor *w = ct_from_data(v, ct_shape(t), ct_ndim(t), CT_FLOAT32);
        ct_state_dict_add(sd, own->names[i], w);
        ct_free(w);
        free(v);
        k++;
    }
    ct_state_dict_free(own);
    return sd;
}

static ct_tensor *formula_input(const int64_t *shape, int nd) {
    ct_tensor *x = ct_empty(shape, nd, CT_FLOAT32);
    float *p = ct_data(x);
    for (int64_t i = 0; i < ct_numel(x); i++) p[i] = (float)h(i, 1000);
    return x;
}

static ct_tensor *targets(int64_t n) {
    ct_tensor *t = ct_empty(&n, 1, CT_INT64);
    int64_t *p = ct_data(t);
    for (int64_t i = 0; i < n; i++) p[i] = (3 * i + 1) % 10;
    return t;
}

/* Compares a gradient with the fixture's strided sample and [sum g^2, sum g*r]. */
static void check_grad(ct_fixture *fx, const char *tag, const char *name, const ct_tensor *g,
                       int max_sample, double tol) {
    char key[256], what[256];
    snprintf(what, sizeof what, "%s grad %s", tag, name);
    CHECK_MSG(g != NULL, "%s is missing", what);
    if (!g) return;
    ct_tensor *c64 = ct_to_dtype(g, CT_FLOAT64), *c = ct_contiguous(c64);
    const double *p = ct_data(c);
    int64_t n = ct_numel(c);
    int64_t stride = (n + max_sample - 1) / max_sample;
    if (stride < 1) stride = 1;
    int64_t ns = (n + stride - 1) / stride;
    ct_tensor *s = ct_empty(&ns, 1, CT_FLOAT64);
    double *sp = ct_data(s);
    double g2 = 0, gr = 0, r2 = 0;
    for (int64_t i = 0; i < n; i++) {
        double r = sin(0.11 * (double)i + 0.3);
        g2 += p[i] * p[i];
        gr += p[i] * r;
        r2 += r * r;
    }
    for (int64_t i = 0; i < ns; i++) sp[i] = p[i * stride];
    snprintf(key, sizeof key, "%s.grad.%s.sample", tag, name);
    ct_tensor *want = ct_fixture_get(fx, key);
    CHECK_CLOSE(s, want, tol, what);
    snprintf(key, sizeof key, "%s.grad.%s.proj", tag, name);
    ct_tensor *proj = ct_fixture_get(fx, key);
    if (proj) {
        const double *pj = ct_data(proj);
        CHECK_MSG(fabs(g2 - pj[0]) <= 2 * tol * pj[0] + 1e-30, "%s: sum g^2 %.9g, torch %.9g", what,
                  g2, pj[0]);
        CHECK_MSG(fabs(gr - pj[1]) <= tol * sqrt(pj[0] * r2) + 1e-30,
                  "%s: sum g*r %.9g, torch %.9g", what, gr, pj[1]);
    }
    ct_free(proj);
    ct_free(want);
    ct_free(s);
    ct_free(c);
    ct_free(c64);
}

/* Loads the formula weights, runs forward + cross-entropy backward, compares with torch. */
static ct_tensor *run_vs_torch(ct_fixture *fx, const char *tag, ct_module *m, const int64_t *xs,
                               int max_sample, double tol) {
    char key[128];
    ct_state_dict *sd = formula_state(m);
    CHECK_OK(ct_module_load_state_dict(m, sd, 1));
    ct_state_dict_free(sd);
    ct_tensor *x = formula_input(xs, 4), *t = targets(xs[0]);
    ct_tensor *y = ct_module_forward(m, x);
    CHECK_NN(y);
    if (!y) {
        ct_free(x);
        ct_free(t);
        return NULL;
    }
    snprintf(key, sizeof key, "%s.out", tag);
    ct_tensor *want = ct_fixture_get(fx, key);
    CHECK_CLOSE(y, want, tol, key);
    ct_free(want);
    ct_tensor *loss = ct_cross_entropy(y, t, CT_REDUCTION_MEAN, 0, -100);
    CHECK_NN(loss);
    int64_t one = 1;
    ct_tensor *l1 = ct_reshape(loss, &one, 1);
    snprintf(key, sizeof key, "%s.loss", tag);
    want = ct_fixture_get(fx, key);
    CHECK_CLOSE(l1, want, tol, key);
    ct_free(want);
    CHECK_OK(ct_backward(loss, NULL, 0));
    ct_state_dict *own = ct_module_state_dict(m);
    int checked = 0;
    for (int i = 0; i < own->n; i++) {
        if (!ct_requires_grad(own->tensors[i])) continue;
        check_grad(fx, tag, own->names[i], ct_grad(own->tensors[i]), max_sample, tol);
        checked++;
    }
    CHECK(checked > 0);
    ct_state_dict_free(own);
    ct_free(l1);
    ct_free(loss);
    ct_free(y);
    ct_free(t);
    return x;
}

/* m's state_dict against the fixture's "<prefix>.count", "<prefix>.J.name" (character
 * codes) and "<prefix>.J.shape" (dtype code, ndim, shape). */
static void check_names_vs_torch(ct_fixture *fx, const char *prefix, const ct_module *m) {
    ct_state_dict *sd = ct_module_state_dict(m);
    char key[128];
    snprintf(key, sizeof key, "%s.count", prefix);
    ct_tensor *cnt = ct_fixture_get(fx, key);
    int64_t count = cnt ? ((int64_t *)ct_data(cnt))[0] : -1;
    CHECK_MSG(sd->n == count, "%s: %d state_dict entries, torch has %lld", prefix, sd->n,
              (long long)count);
    for (int j = 0; j < sd->n && j < count; j++) {
        snprintf(key, sizeof key, "%s.%d.name", prefix, j);
        ct_tensor *nt = ct_fixture_get(fx, key);
        snprintf(key, sizeof key, "%s.%d.shape", prefix, j);
        ct_tensor *st = ct_fixture_get(fx, key);
        char want[256] = "";
        const int64_t *np = ct_data(nt);
        for (int64_t c = 0; c < ct_numel(nt) && c < 255; c++) want[c] = (char)np[c];
        want[ct_numel(nt) < 255 ? ct_numel(nt) : 255] = 0;
        CHECK_MSG(!strcmp(sd->names[j], want), "%s entry %d: %s, torch has %s", prefix, j,
                  sd->names[j], want);
        const int64_t *sp = ct_data(st);
        ct_tensor *t = sd->tensors[j];
        ct_dtype dt = sp[0] == 0 ? CT_FLOAT32 : sp[0] == 1 ? CT_FLOAT64 : CT_INT64;
        int same = ct_dtype_of(t) == dt && ct_ndim(t) == sp[1];
        for (int d = 0; same && d < ct_ndim(t); d++) same = ct_size(t, d) == sp[2 + d];
        char s1[96];
        CHECK_MSG(same, "%s %s: %s %s differs from torch's", prefix, want,
                  ct_shape_str(t, s1, sizeof s1), ct_dtype_name(ct_dtype_of(t)));
        ct_free(nt);
        ct_free(st);
    }
    ct_free(cnt);
    ct_state_dict_free(sd);
}

TEST(models_state_dict_names_match_torch) {
    ct_fixture *fx = ct_fixture_load("models_names");
    if (!fx) return;
    /* model, its fixture prefix (torchvision's models: tests/test_torchvision_models.c) */
    static const char *const models[3][2] = {
        {"simple_cnn", "simple_cnn"}, {"mlp", "mlp"}, {"resnet18_cifar", "resnet18"}};
    for (int i = 0; i < 3; i++) {
        ct_module *m = ct_model_create(models[i][0], 10);
        CHECK_NN(m);
        if (!m) continue;
        check_names_vs_torch(fx, models[i][1], m);
        ct_module_free(m);
    }
    int nmodels = 0;
    while (ct_model_names()[nmodels]) nmodels++;
    CHECK(nmodels == 9); /* + vit_tiny, vit_b_16 (tests/test_transformer.c) */
    ct_fixture_free(fx);
}

TEST(models_simple_cnn_forward_backward_vs_torch) {
    ct_fixture *fx = ct_fixture_load("models_small");
    if (!fx) return;
    ct_module *m = ct_model_create("simple_cnn", 10);
    CHECK_NN(m);
    int64_t xs[4] = {2, 3, 32, 32};
    ct_tensor *x = m ? run_vs_torch(fx, "simple_cnn", m, xs, 1000, 1e-4) : NULL;
    ct_free(x);
    ct_module_free(m);
    ct_fixture_free(fx);
}

TEST(models_mlp_forward_backward_vs_torch) {
    ct_fixture *fx = ct_fixture_load("models_small");
    if (!fx) return;
    ct_module *m = ct_model_create("mlp", 10);
    CHECK_NN(m);
    int64_t xs[4] = {4, 1, 28, 28};
    ct_tensor *x = m ? run_vs_torch(fx, "mlp", m, xs, 1000, 1e-4) : NULL;
    ct_free(x);
    ct_module_free(m);
    ct_fixture_free(fx);
}

TEST(models_resnet18_cifar_forward_backward_vs_torch) {
    ct_fixture *fx = ct_fixture_load("models_resnet18");
    if (!fx) return;
    ct_module *m = ct_model_create("resnet18_cifar", 10);
    CHECK_NN(m);
    if (!m) {
        ct_fixture_free(fx);
        return;
    }
    int64_t xs[4] = {2, 3, 32, 32};
    ct_tensor *x = run_vs_torch(fx, "resnet18", m, xs, 96, 1e-4);
    const char *bns[2] = {"bn1", "layer4.1.bn2"};
    for (int i = 0; i < 2; i++)
        for (int r = 0; r < 2; r++) {
            char key[160], name[128];
            snprintf(name, sizeof name, "%s.%s", bns[i], r ? "running_var" : "running_mean");
            snprintf(key, sizeof key, "resnet18.%s", name);
            ct_tensor *want = ct_fixture_get(fx, key);
            CHECK_CLOSE(ct_module_get_tensor(m, name), want, 1e-4, key);
            ct_free(want);
        }
    CHECK(ct_item(ct_module_get_tensor(m, "layer2.0.downsample.1.num_batches_tracked")) == 1);
    ct_module_eval(m);
    int prev = ct_set_grad_enabled(0);
    ct_tensor *y = x ? ct_module_forward(m, x) : NULL;
    ct_set_grad_enabled(prev);
    CHECK_NN(y);
    ct_tensor *want = ct_fixture_get(fx, "resnet18.eval_out");
    if (y) CHECK_CLOSE(y, want, 1e-4, "resnet18 eval forward");
    ct_free(want);
    ct_free(y);
    ct_free(x);
    ct_module_free(m);
    ct_fixture_free(fx);
}

TEST(models_resnet18_cifar_init_is_torchvision) {
    ct_manual_seed(11);
    ct_module *m = ct_model_create("resnet18_cifar", 10);
    CHECK_NN(m);
    if (!m) return;
    CHECK(ct_module_num_parameters(m) == 11173962); /* torchvision resnet18, CIFAR stem */
    /* convs: kaiming_normal_(fan_out, relu): std sqrt(2 / (out*k*k)) */
    const char *convs[3] = {"layer3.0.conv2.weight", "layer4.1.conv1.weight",
                            "layer2.0.downsample.0.weight"};
    for (int i = 0; i < 3; i++) {
        ct_tensor *w = ct_module_get_tensor(m, convs[i]);
        int64_t fo;
        ct_init_calculate_fan(w, NULL, &fo);
        ct_tensor *sq = ct_mul(w, w);
        ct_tensor *mean = ct_mean(sq, NULL, 0, 0);
        double v = ct_item(mean);
        CHECK_MSG(fabs(sqrt(v) / sqrt(2.0 / (double)fo) - 1) < 0.03, "%s std %g, expected %g",
                  convs[i], sqrt(v), sqrt(2.0 / (double)fo));
        ct_free(mean);
        ct_free(sq);
    }
    const float *g = ct_data(ct_module_get_tensor(m, "layer1.1.bn2.weight"));
    const float *b = ct_data(ct_module_get_tensor(m, "layer1.1.bn2.bias"));
    CHECK(g[0] == 1 && g[63] == 1 && b[5] == 0);
    ct_tensor *fc = ct_module_get_tensor(m, "fc.weight");
    ct_tensor *mx = ct_abs(fc), *mm = ct_max_all(mx);
    CHECK(ct_item(mm) <= 1 / sqrt(512.0));
    ct_free(mx);
    ct_free(mm);
    ct_module_free(m);
}

TEST(models_errors_name_the_module) {
    CHECK_ERR_PTR((ct_tensor *)ct_model_create("vgg16", 10), "unknown model \"vgg16\"");
    CHECK(has(ct_last_error(), "simple_cnn, mlp, resnet18_cifar, resnet18, resnet34, resnet50, "
                               "mobilenet_v2, vit_tiny or vit_b_16"));
    CHECK_ERR_PTR((ct_tensor *)ct_model_create("mlp", 0), "num_classes");
    CHECK_ERR_PTR((ct_tensor *)ct_model_create_ex("simple_cnn", 10, 3, 2, 2), "4x4");
    ct_module *cnn = ct_model_create("simple_cnn", 10);
    int64_t gray[4] = {2, 1, 32, 32}, small[4] = {2, 3, 28, 28}, flat[2] = {2, 3072};
    ct_tensor *x1 = ct_zeros(gray, 4, CT_FLOAT32), *x2 = ct_zeros(small, 4, CT_FLOAT32);
    ct_tensor *x3 = ct_zeros(flat, 2, CT_FLOAT32);
    CHECK_ERR_PTR(ct_module_forward(cnn, x1), "Conv2d 'features.0'");
    CHECK(has(ct_last_error(), "in_channels = 3"));
    CHECK_ERR_PTR(ct_module_forward(cnn, x2), "Linear 'classifier'");
    CHECK(has(ct_last_error(), "in_features = 4096") && has(ct_last_error(), "[2, 3136]"));
    CHECK_ERR_PTR(ct_module_forward(cnn, x3), "SimpleCNN");
    ct_module *mlp = ct_model_create("mlp", 10);
    CHECK_ERR_PTR(ct_module_forward(mlp, x1), "Linear 'fc1'");
    CHECK(has(ct_last_error(), "in_features = 784"));
    ct_module *res = ct_model_create("resnet18_cifar", 10);
    CHECK_ERR_PTR(ct_module_forward(res, x1), "Conv2d 'conv1'");
    /* a model sized for other images */
    ct_module *mlp3 = ct_model_create_ex("mlp", 10, 1, 32, 32);
    CHECK(ct_size(ct_module_get_tensor(mlp3, "fc1.weight"), 1) == 1024);
    ct_module *cnn28 = ct_model_create_ex("simple_cnn", 10, 3, 28, 28);
    ct_tensor *y = ct_module_forward(cnn28, x2);
    CHECK_NN(y);
    ct_free(y);
    /* weights of another model: every mismatch listed with shapes */
    ct_state_dict *sd = ct_module_state_dict(mlp);
    CHECK_ERR_INT(ct_module_load_state_dict(cnn, sd, 1), "do not match SimpleCNN");
    const char *e = ct_last_error();
    CHECK(has(e, "missing: features.0.weight [32, 3, 3, 3]"));
    CHECK(has(e, "missing: classifier.weight [10, 4096]"));
    CHECK(has(e, "unexpected: fc1.weight [128, 784]"));
    CHECK(has(e, "unexpected: fc2.bias [10]"));
    ct_state_dict_free(sd);
    /* the other way: 62-entry resnet18_cifar state into simple_cnn; the message is bounded and
     * says how many more there are, the report lists all */
    sd = ct_module_state_dict(res);
    CHECK_ERR_INT(ct_module_load_state_dict(cnn, sd, 1), "problems");
    CHECK(has(ct_last_error(), "more"));
    char *rep = ct_module_check_state_dict(cnn, sd, 1);
    CHECK(has(rep, "unexpected: layer4.1.bn2.num_batches_tracked [] int64"));
    free(rep);
    ct_state_dict_free(sd);
    ct_module_free(cnn28);
    ct_module_free(mlp3);
    ct_module_free(res);
    ct_module_free(mlp);
    ct_module_free(cnn);
    ct_free(x1);
    ct_free(x2);
    ct_free(x3);
}

TEST(models_checkpoint_roundtrip) {
    char path[] = "/tmp/ctorch_models_ckptXXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    ct_manual_seed(21);
    ct_module *a = ct_model_create("simple_cnn", 10);
    ct_manual_seed(22);
    ct_module *b = ct_model_create("simple_cnn", 10);
    const char *meta[] = {"model", "simple_cnn", NULL};
    CHECK_OK(ct_module_save(a, path, meta));
    CHECK_OK(ct_module_load(b, path));
    int64_t xs[4] = {2, 3, 32, 32};
    ct_tensor *x = formula_input(xs, 4);
    ct_tensor *ya = ct_module_forward(a, x), *yb = ct_module_forward(b, x);
    CHECK_CLOSE(yb, ya, 0, "outputs after a checkpoint roundtrip");
    ct_module *mlp = ct_model_create("mlp", 10);
    CHECK_ERR_INT(ct_module_load(mlp, path), "saved from model simple_cnn");
    CHECK(has(ct_last_error(), "does not match the MLP model"));
    CHECK(has(ct_last_error(), "unexpected: features.0.weight [32, 3, 3, 3]"));
    unlink(path);
    ct_free(ya);
    ct_free(yb);
    ct_free(x);
    ct_module_free(mlp);
    ct_module_free(a);
    ct_module_free(b);
}

/* simple_cnn + SGD(momentum) overfits a fixed batch: the whole training path works. */
TEST(models_simple_cnn_trains) {
    ct_manual_seed(5);
    ct_module *m = ct_model_create("simple_cnn", 10);
    int64_t xs[4] = {16, 3, 32, 32};
    ct_tensor *x = ct_randn(xs, 4, CT_FLOAT32), *t = targets(16);
    int np;
    ct_tensor **ps = ct_module_parameters(m, &np);
    ct_optimizer *o = ct_optim_sgd(ps, np, 0.02, 0.9, 0, 0, 0);
    free(ps);
    double first = 0, last = 0;
    for (int step = 0; step < 15; step++) {
        ct_optim_zero_grad(o);
        ct_tensor *y = ct_module_forward(m, x);
        ct_tensor *loss = y ? ct_cross_entropy(y, t, CT_REDUCTION_MEAN, 0, -100) : NULL;
        CHECK_NN(loss);
        if (!loss) {
            ct_free(y);
            break;
        }
        CHECK_OK(ct_backward(loss, NULL, 0));
        CHECK_OK(ct_optim_step(o));
        last = ct_item(loss);
        if (step == 0) first = last;
        ct_free(loss);
        ct_free(y);
    }
    CHECK_MSG(last < 0.5 * first, "loss %g -> %g did not fall", first, last);
    ct_optim_free(o);
    ct_free(x);
    ct_free(t);
    ct_module_free(m);
}

/* The bar: from the same weights, simple_cnn after 5 SGD steps (momentum 0.9) is
 * within 1e-5 of PyTorch (and the weight changes within 1e-3). */
TEST(models_simple_cnn_5_sgd_steps_vs_torch) {
    ct_fixture *fx = ct_fixture_load("models_small");
    if (!fx) return;
    ct_module *m = ct_model_create("simple_cnn", 10);
    ct_state_dict *sd = formula_state(m);
    CHECK_OK(ct_module_load_state_dict(m, sd, 1));
    int64_t xs[4] = {8, 3, 32, 32};
    ct_tensor *x = formula_input(xs, 4), *t = targets(8);
    int np;
    ct_tensor **ps = ct_module_parameters(m, &np);
    ct_optimizer *o = ct_optim_sgd(ps, np, 0.01, 0.9, 0, 0, 0);
    free(ps);
    for (int step = 0; step < 5; step++) {
        ct_optim_zero_grad(o);
        ct_tensor *y = ct_module_forward(m, x);
        ct_tensor *loss = y ? ct_cross_entropy(y, t, CT_REDUCTION_MEAN, 0, -100) : NULL;
        CHECK_NN(loss);
        if (loss) CHECK_OK(ct_backward(loss, NULL, 0));
        CHECK_OK(ct_optim_step(o));
        ct_free(loss);
        ct_free(y);
    }
    ct_state_dict *own = ct_module_state_dict(m);
    for (int i = 0; i < own->n; i++) {
        check_grad(fx, "simple_cnn_sgd5", own->names[i], own->tensors[i], 1000, 1e-5);
        ct_tensor *d = ct_sub(own->tensors[i], ct_state_dict_get(sd, own->names[i]));
        check_grad(fx, "simple_cnn_sgd5_delta", own->names[i], d, 1000, 1e-3);
        ct_free(d);
    }
    ct_state_dict_free(own);
    ct_state_dict_free(sd);
    ct_optim_free(o);
    ct_free(x);
    ct_free(t);
    ct_module_free(m);
    ct_fixture_free(fx);
}

/* ------------------------------------------------------------------ AdaptiveNet */
static ct_module_args adaptive_args(const ct_tensor *x, int use_aux) {
    ct_module_args in = {.n = 1, .tensors = {x}, .kwargs = {{"use_aux", use_aux}}};
    return in;
}

TEST(models_adaptive_net_state_dict_names_match_torch) {
    ct_fixture *fx = ct_fixture_load("adaptive_net");
    if (!fx) return;
    ct_module *m = ct_model_adaptive_net(784, 10, 5);
    CHECK_NN(m);
    if (!m) return;
    check_names_vs_torch(fx, "names", m);
    const char *want[6] = {"backbone.1.weight", "main_head.weight", "aux_head.weight",
                           "backbone.1.bias", "main_head.bias", "aux_head.bias"};
    int64_t rows[6] = {256, 10, 5, 256, 10, 5}, cols[3] = {784, 256, 128};
    for (int i = 0; i < 6; i++) {
        ct_tensor *t = ct_module_get_tensor(m, want[i]);
        CHECK_MSG(t && ct_size(t, 0) == rows[i] && (i >= 3 || ct_size(t, 1) == cols[i]),
                  "%s", want[i]);
    }
    CHECK(!strcmp(ct_module_get(m, "backbone.0")->type, "Flatten"));
    CHECK(!strcmp(ct_module_get(m, "backbone.2")->type, "ReLU"));
    CHECK(ct_module_num_parameters(m) == 784 * 256 + 256 + 2570 + 128 * 5 + 5);
    ct_module_free(m);
    ct_fixture_free(fx);
}

/* (main, aux) in training with use_aux, gradients of main + 0.5 aux, the main-only graph
 * (aux_head gets no gradient), eval: main only; all against PyTorch. */
TEST(models_adaptive_net_outputs_and_gradients_vs_torch) {
    ct_fixture *fx = ct_fixture_load("adaptive_net");
    if (!fx) return;
    ct_module *m = ct_model_adaptive_net(784, 10, 5);
    ct_state_dict *sd = formula_state(m);
    CHECK_OK(ct_module_load_state_dict(m, sd, 1));
    ct_state_dict_free(sd);
    int64_t xs[4] = {4, 1, 28, 28};
    ct_scope *s = ct_scope_push();
    ct_tensor *x = formula_input(xs, 4), *t = targets(4);
    int64_t at[4] = {1, 4, 2, 0}; /* (3i + 1) % 10 % 5 */
    int64_t n4 = 4;
    ct_tensor *aux_t = ct_from_data(at, &n4, 1, CT_INT64);
    ct_module_args in = adaptive_args(x, 1);
    ct_module_outputs out;
    CHECK_OK(ct_module_call(m, &in, &out));
    CHECK(out.n == 2);
    if (out.n == 2) {
        ct_tensor *want = ct_fixture_get(fx, "train.main");
        CHECK_CLOSE(out.tensors[0], want, 1e-5, "main output");
        want = ct_fixture_get(fx, "train.aux");
        CHECK_CLOSE(out.tensors[1], want, 1e-5, "aux output");
        ct_tensor *loss = ct_add(ct_cross_entropy(out.tensors[0], t, CT_REDUCTION_MEAN, 0, -100),
                                 ct_mul_scalar(ct_cross_entropy(out.tensors[1], aux_t,
                                                                CT_REDUCTION_MEAN, 0, -100), 0.5));
        CHECK_CLOSE(ct_reshape(loss, &(int64_t){1}, 1), ct_fixture_get(fx, "train.loss"), 1e-6,
                    "loss");
        CHECK_OK(ct_backward(loss, NULL, 0));
        ct_state_dict *own = ct_module_state_dict(m);
        for (int i = 0; i < own->n; i++)
            check_grad(fx, "train", own->names[i], ct_grad(own->tensors[i]), 1000, 1e-5);
        ct_state_dict_free(own);
    }
    /* use_aux=False: one output, the main head's graph only */
    ct_module_zero_grad(m);
    in = adaptive_args(x, 0);
    CHECK_OK(ct_module_call(m, &in, &out));
    CHECK(out.n == 1);
    CHECK_CLOSE(out.tensors[0], ct_fixture_get(fx, "train.main"), 1e-5, "main (use_aux=0)");
    CHECK_OK(ct_backward(ct_cross_entropy(out.tensors[0], t, CT_REDUCTION_MEAN, 0, -100), NULL, 0));
    const char *main_only[4] = {"backbone.1.weight", "backbone.1.bias", "main_head.weight",
                                "main_head.bias"};
    for (int i = 0; i < 4; i++)
        check_grad(fx, "main_only", main_only[i], ct_grad(ct_module_get_tensor(m, main_only[i])),
                   1000, 1e-5);
    CHECK(ct_grad(ct_module_get_tensor(m, "aux_head.weight")) == NULL);
    /* ct_module_forward: the main output */
    CHECK_CLOSE(ct_module_forward(m, x), ct_fixture_get(fx, "train.main"), 1e-5, "forward");
    /* eval: use_aux is ignored */
    ct_module_eval(m);
    CHECK_OK(ct_module_call(m, &(ct_module_args){.n = 1, .tensors = {x},
                                                 .kwargs = {{"use_aux", 1}}}, &out));
    CHECK(out.n == 1);
    CHECK_CLOSE(out.tensors[0], ct_fixture_get(fx, "eval.out"), 1e-5, "eval output");
    ct_scope_pop(s);
    ct_module_free(m);
    ct_fixture_free(fx);
}

/* The aux head reads h[:, :128]: its loss alone reaches only the first 128 rows of the
 * backbone's weight. Nothing is left behind by the scope. */
TEST(models_adaptive_net_aux_head_reads_the_first_128_features) {
    ct_manual_seed(31);
    ct_module *m = ct_model_adaptive_net(784, 10, 5);
    CHECK_NN(m);
    if (!m) return;
    long long base = ct__live_tensors();
    ct_scope *s = ct_scope_push();
    int64_t xs[2] = {3, 784}; /* already flat: Flatten leaves [N, 784] as it is */
    ct_tensor *x = ct_randn(xs, 2, CT_FLOAT32);
    ct_module_args in = adaptive_args(x, 1);
    ct_module_outputs out;
    CHECK_OK(ct_module_call(m, &in, &out));
    CHECK(out.n == 2 && ct_size(out.tensors[0], 1) == 10 && ct_size(out.tensors[1], 1) == 5);
    if (out.n == 2) CHECK_OK(ct_backward(ct_sum(out.tensors[1], NULL, 0, 0), NULL, 0));
    ct_tensor *g = ct_grad(ct_module_get_tensor(m, "backbone.1.weight"));
    CHECK_NN(g);
    if (g) {
        ct_tensor *top = ct_sum(ct_abs(ct_narrow(g, 0, 0, 128)), NULL, 0, 0);
        ct_tensor *bottom = ct_sum(ct_abs(ct_narrow(g, 0, 128, 128)), NULL, 0, 0);
        CHECK_MSG(ct_item(top) > 0 && ct_item(bottom) == 0, "grad rows 0..127: %g, 128..255: %g",
                  ct_item(top), ct_item(bottom));
    }
    CHECK(ct_grad(ct_module_get_tensor(m, "main_head.weight")) == NULL);
    ct_module_zero_grad(m);
    ct_scope_pop(s);
    CHECK_MSG(ct__live_tensors() == base, "%lld tensors leaked", ct__live_tensors() - base);
    ct_module_free(m);
}

TEST(models_adaptive_net_errors) {
    CHECK_ERR_PTR((ct_tensor *)ct_model_adaptive_net(0, 10, 5), "in_features (0)");
    CHECK_ERR_PTR((ct_tensor *)ct_model_adaptive_net(784, 0, 5), "num_classes (0)");
    CHECK_ERR_PTR((ct_tensor *)ct_model_adaptive_net(784, 10, -1), "aux_classes (-1)");
    ct_module *parent = ct_module_new("Wrapper", NULL, NULL, NULL);
    CHECK_OK(ct_module_add_child(parent, "net", ct_model_adaptive_net(784, 10, 5)));
    ct_module *m = ct_module_get(parent, "net");
    long long base = ct__live_tensors();
    int64_t bad[2] = {2, 100}, good[4] = {2, 1, 28, 28}, one = 784;
    ct_tensor *xb = ct_zeros(bad, 2, CT_FLOAT32), *x = ct_zeros(good, 4, CT_FLOAT32);
    ct_tensor *x1 = ct_zeros(&one, 1, CT_FLOAT32);
    ct_module_args in = adaptive_args(xb, 1);
    ct_module_outputs out;
    CHECK_ERR_INT(ct_module_call(m, &in, &out), "Linear 'net.backbone.1' (in_features=784");
    CHECK(has(ct_last_error(), "[2, 100]") && out.n == 0);
    CHECK_ERR_PTR(ct_module_forward(m, x1), "Flatten 'net.backbone.0'");
    ct_module_args typo = {.n = 1, .tensors = {x}, .kwargs = {{"use_axu", 1}}};
    CHECK_ERR_INT(ct_module_call(m, &typo, &out), "AdaptiveNet 'net': got an unexpected keyword "
                                                  "argument 'use_axu'");
    CHECK(has(ct_last_error(), "forward(x0, use_aux=...)"));
    ct_module_args two = {.n = 2, .tensors = {x, x}};
    CHECK_ERR_INT(ct_module_call(m, &two, &out), "takes 1 input tensor, got 2");
    ct_module_args null_x = {.n = 1, .tensors = {NULL}};
    CHECK_ERR_INT(ct_module_call(m, &null_x, &out), "input tensor 0 of 1 is NULL");
    CHECK_ERR_PTR(ct_module_forward(m, NULL), "AdaptiveNet 'net': input is NULL");
    ct_free(xb);
    ct_free(x);
    ct_free(x1);
    CHECK_MSG(ct__live_tensors() == base, "%lld tensors leaked", ct__live_tensors() - base);
    ct_module_free(parent);
}
