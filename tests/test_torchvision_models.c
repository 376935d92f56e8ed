/* torchvision's models in ctorch (tests/fixtures/gen_torchvision_models.py): resnet18,
 * resnet34, resnet50 and mobilenet_v2 have torchvision's state_dict (names, dtypes, shapes,
 * parameter counts); with every tensor filled by the same formula on both sides their
 * eval-mode and train-mode logits, loss, gradients and BatchNorm running statistics are
 * PyTorch's; torchvision's own resnet18 weights (peer Python, skipped without one) load and
 * give torchvision's logits. */
#include "model_check.h"
#include "test.h"
#include "cli_util.h"
#include "ctorch_nn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const TV_MODELS[] = {"resnet18", "resnet34", "resnet50", "mobilenet_v2"};

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* The generator's formula: 2*frac(sin(12.9898 i + 78.233 k) * 43758.5453) - 1. */
static double h(int64_t i, int64_t k) {
    double v = sin(12.9898 * (double)i + 78.233 * (double)k) * 43758.5453;
    return (v - floor(v)) * 2 - 1;
}

/* Fills every parameter and float buffer of m as gen_torchvision_models.py's fill(). */
static void fill(ct_module *m) {
    ct_state_dict *sd = ct_module_state_dict(m);
    int k = 0, b = 0, prev = ct_set_grad_enabled(0);
    for (int i = 0; i < sd->n; i++) {
        ct_tensor *t = sd->tensors[i];
        if (ct_dtype_of(t) != CT_FLOAT32) continue;
        int64_t n = ct_numel(t);
        float *v = ct_data(t);
        for (int64_t j = 0; j < n; j++) {
            double x;
            if (ct_requires_grad(t)) {
                if (ct_ndim(t) >= 2) x = h(j, k) * sqrt(3.0 / (double)(n / ct_size(t, 0)));
                else if (ends_with(sd->names[i], "weight")) x = 1 + 0.1 * h(j, k);
                else x = 0.1 * h(j, k);
            } else {
                x = ends_with(sd->names[i], "running_mean") ? 0.1 * h(j, 5000 + b)
                                                            : 1 + 0.5 * h(j, 6000 + b);
            }
            v[j] = (float)x;
        }
        if (ct_requires_grad(t)) k++;
        else b++;
    }
    ct_set_grad_enabled(prev);
    ct_state_dict_free(sd);
}

/* A gradient against the fixture's strided sample and [sum g^2, sum g*r]. */
static void check_grad(ct_fixture *fx, const char *tag, const char *name, const ct_tensor *g,
                       double tol) {
    char key[256], what[256];
    snprintf(what, sizeof what, "%s grad %s", tag, name);
    CHECK_MSG(g != NULL, "%s is missing", what);
    if (!g) return;
    ct_tensor *c64 = ct_to_dtype(g, CT_FLOAT64), *c = ct_contiguous(c64);
    const double *p = ct_data(c);
    int64_t n = ct_numel(c), stride = (n + 95) / 96;
    if (stride < 1) stride = 1;
    int64_t ns = (n + stride - 1) / stride;
    ct_tensor *s = ct_empty(&ns, 1, CT_FLOAT64);
    double *sp = ct_data(s), g2 = 0, gr = 0, r2 = 0;
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
        CHECK_MSG(fabs(g2 - pj[0]) <= 2 * tol * pj[0] + 1e-30, "%s: sum g^2 %.9g, torch %.9g",
                  what, g2, pj[0]);
        CHECK_MSG(fabs(gr - pj[1]) <= tol * sqrt(pj[0] * r2) + 1e-30,
                  "%s: sum g*r %.9g, torch %.9g", what, gr, pj[1]);
    }
    ct_free(proj), ct_free(want), ct_free(s), ct_free(c), ct_free(c64);
}

/* ------------------------------------------------------------ names and shapes */
TEST(torchvision_models_state_dicts_are_torchvisions) {
    CHECK(check_state_dict_listing("torchvision_models.txt", "gen_torchvision_models.py") == 4);
}

/* ------------------------------------------------- forward and backward vs torch */
static void forward_vs_torch(const char *name) {
    ct_fixture *fx = ct_fixture_load("torchvision_models");
    if (!fx) return;
    ct_module *m = ct_model_create(name, 10);
    CHECK_NN(m);
    if (!m) {
        ct_fixture_free(fx);
        return;
    }
    fill(m);
    int64_t xs[4] = {2, 3, 64, 64}, two = 2, one = 1;
    ct_tensor *x = ct_empty(xs, 4, CT_FLOAT32), *t = ct_empty(&two, 1, CT_INT64);
    float *xp = ct_data(x);
    for (int64_t i = 0; i < ct_numel(x); i++) xp[i] = (float)h(i, 1000);
    ((int64_t *)ct_data(t))[0] = 1, ((int64_t *)ct_data(t))[1] = 4;
    char key[256];
    /* eval: the running statistics */
    ct_module_eval(m);
    int prev = ct_set_grad_enabled(0);
    ct_tensor *y = ct_module_forward(m, x);
    ct_set_grad_enabled(prev);
    CHECK_NN(y);
    snprintf(key, sizeof key, "%s.eval_out", name);
    ct_tensor *want = ct_fixture_get(fx, key);
    CHECK_CLOSE(y, want, 1e-4, key);
    ct_free(want), ct_free(y);
    /* train: batch statistics (Dropout off on both sides), loss */
    ct_module_train(m, 1);
    ct_module *drop = ct_module_get(m, "classifier.0");
    if (drop) ct_module_train(drop, 0);
    prev = ct_set_grad_enabled(0);
    y = ct_module_forward(m, x);
    ct_set_grad_enabled(prev);
    CHECK_NN(y);
    snprintf(key, sizeof key, "%s.train_out", name);
    want = ct_fixture_get(fx, key);
    CHECK_CLOSE(y, want, 1e-4, key);
    ct_free(want);
    ct_tensor *loss = y ? ct_cross_entropy(y, t, CT_REDUCTION_MEAN, 0, -100) : NULL;
    ct_tensor *l1 = loss ? ct_reshape(loss, &one, 1) : NULL;
    snprintf(key, sizeof key, "%s.loss", name);
    want = ct_fixture_get(fx, key);
    CHECK_CLOSE(l1, want, 1e-4, key);
    ct_free(want), ct_free(l1), ct_free(loss), ct_free(y);
    /* float64 (the generator says why): the same step from fresh formula weights, its
     * gradients and running statistics */
    ct_module_free(m);
    m = ct_model_create(name, 10);
    if (m) fill(m);
    CHECK_OK(m ? ct_module_to(m, ct_cpu(), CT_FLOAT64) : -1);
    ct_module_train(m, 1);
    if ((drop = ct_module_get(m, "classifier.0"))) ct_module_train(drop, 0);
    ct_tensor *x64 = ct_to_dtype(x, CT_FLOAT64);
    y = ct_module_forward(m, x64);
    CHECK_NN(y);
    snprintf(key, sizeof key, "%s.train_out64", name);
    want = ct_fixture_get(fx, key);
    CHECK_CLOSE(y, want, 1e-7, key);
    ct_free(want);
    loss = y ? ct_cross_entropy(y, t, CT_REDUCTION_MEAN, 0, -100) : NULL;
    l1 = loss ? ct_reshape(loss, &one, 1) : NULL;
    snprintf(key, sizeof key, "%s.loss64", name);
    want = ct_fixture_get(fx, key);
    CHECK_CLOSE(l1, want, 1e-7, key);
    ct_free(want);
    if (loss) CHECK_OK(ct_backward(loss, NULL, 0));
    ct_state_dict *sd = ct_module_state_dict(m);
    int grads = 0, bufs = 0;
    for (int i = 0; i < sd->n; i++) {
        snprintf(key, sizeof key, "%s.grad.%s.sample", name, sd->names[i]);
        if (ct_fixture_has(fx, key)) {
            check_grad(fx, name, sd->names[i], ct_grad(sd->tensors[i]), 1e-7);
            grads++;
        }
        snprintf(key, sizeof key, "%s.buf.%s", name, sd->names[i]);
        if (ct_fixture_has(fx, key)) {
            want = ct_fixture_get(fx, key);
            CHECK_CLOSE(sd->tensors[i], want, 1e-7, key);
            ct_free(want);
            bufs++;
        }
    }
    CHECK_MSG(grads == 5 && bufs == 3, "%s: %d gradients and %d buffers compared, want 5 and 3",
              name, grads, bufs);
    ct_state_dict_free(sd);
    ct_free(l1), ct_free(loss), ct_free(y), ct_free(x), ct_free(x64), ct_free(t);
    ct_module_free(m);
    ct_fixture_free(fx);
}

TEST(torchvision_models_resnet18_vs_torch) { forward_vs_torch(TV_MODELS[0]); }
TEST(torchvision_models_resnet34_vs_torch) { forward_vs_torch(TV_MODELS[1]); }
TEST(torchvision_models_resnet50_vs_torch) { forward_vs_torch(TV_MODELS[2]); }
TEST(torchvision_models_mobilenet_v2_vs_torch) { forward_vs_torch(TV_MODELS[3]); }

/* --------------------------------------------------------------- initialisation */
static double rms(const ct_tensor *w) {
    ct_tensor *sq = ct_mul(w, w), *mean = ct_mean(sq, NULL, 0, 0);
    double v = sqrt(ct_item(mean));
    ct_free(sq), ct_free(mean);
    return v;
}

TEST(torchvision_models_init_is_torchvisions) {
    ct_manual_seed(3);
    ct_module *r = ct_model_create("resnet50", 1000), *mb = ct_model_create("mobilenet_v2", 1000);
    CHECK_NN(r);
    CHECK_NN(mb);
    if (!r || !mb) {
        ct_module_free(r), ct_module_free(mb);
        return;
    }
    /* convs kaiming_normal_(fan_out, relu): std sqrt(2 / (out * kh * kw)) */
    const struct {
        ct_module *m;
        const char *name;
    } convs[] = {{r, "conv1.weight"}, {r, "layer3.2.conv2.weight"}, {r, "layer4.0.downsample.0.weight"},
                 {mb, "features.0.0.weight"}, {mb, "features.5.conv.1.0.weight"},
                 {mb, "features.18.0.weight"}};
    for (size_t i = 0; i < sizeof convs / sizeof *convs; i++) {
        ct_tensor *w = ct_module_get_tensor(convs[i].m, convs[i].name);
        CHECK_MSG(w != NULL, "%s missing", convs[i].name);
        if (!w) continue;
        int64_t fo;
        ct_init_calculate_fan(w, NULL, &fo);
        double want = sqrt(2.0 / (double)fo), got = rms(w);
        CHECK_MSG(fabs(got / want - 1) < 0.05, "%s std %g, want %g", convs[i].name, got, want);
    }
    /* BatchNorm 1 / 0; ResNet fc: Linear's default (|w| <= 1/sqrt(2048)); MobileNetV2's
     * classifier: normal(0, 0.01), bias 0 */
    CHECK(((float *)ct_data(ct_module_get_tensor(r, "layer2.1.bn3.weight")))[7] == 1);
    CHECK(((float *)ct_data(ct_module_get_tensor(mb, "features.3.conv.3.bias")))[3] == 0);
    ct_tensor *fa = ct_abs(ct_module_get_tensor(r, "fc.weight")), *fm = ct_max_all(fa);
    CHECK(ct_item(fm) <= 1 / sqrt(2048.0) && ct_item(fm) > 0.9 / sqrt(2048.0));
    ct_free(fa), ct_free(fm);
    double cs = rms(ct_module_get_tensor(mb, "classifier.1.weight"));
    CHECK_MSG(fabs(cs / 0.01 - 1) < 0.02, "classifier.1.weight std %g, want 0.01", cs);
    ct_tensor *cb = ct_abs(ct_module_get_tensor(mb, "classifier.1.bias")), *cbm = ct_max_all(cb);
    CHECK(ct_item(cbm) == 0);
    ct_free(cb), ct_free(cbm);
    ct_module_free(r);
    ct_module_free(mb);
}

TEST(torchvision_models_resnet18_is_not_resnet18_cifar) {
    ct_module *a = ct_model_create("resnet18", 10), *b = ct_model_create("resnet18_cifar", 10);
    CHECK_NN(a);
    CHECK_NN(b);
    if (a && b) {
        CHECK(ct_size(ct_module_get_tensor(a, "conv1.weight"), 3) == 7);
        CHECK(ct_size(ct_module_get_tensor(b, "conv1.weight"), 3) == 3);
        CHECK(ct_module_get(a, "maxpool") != NULL && ct_module_get(b, "maxpool") == NULL);
        /* both take CIFAR's 32x32 images: 1x1 after the ImageNet stem's four halvings */
        int64_t xs[4] = {1, 3, 32, 32};
        ct_module_eval(a);
        ct_tensor *x = ct_randn(xs, 4, CT_FLOAT32), *ya = ct_module_forward(a, x);
        CHECK(ya && ct_size(ya, 1) == 10);
        ct_free(ya), ct_free(x);
    }
    ct_module_free(a), ct_module_free(b);
}

/* ---------------------------------------------------- torchvision's own weights */
/* torchvision's resnet18() (seeded random init) saved by safetensors.torch.save_file and
 * by torch.save, with its eval-mode logits on a fixed image batch, by the peer Python
 * (tests/peer_torchvision_weights.py), once per test process (tests/test_finetune.c uses
 * them too). The directory, or NULL without a peer. */
const char *tv_peer_weights(void) {
    static char dir[512];
    static int done, ok;
    if (!done)
        done = 1, ok = peer_script_once("tests/peer_torchvision_weights.py", "tv_resnet18", dir,
                                           sizeof dir) == 0;
    return ok ? dir : NULL;
}

static void check_logits_of(const char *weights, const char *dir) {
    ct_state_dict *sd = ct_state_dict_load(weights);
    CHECK_NN(sd);
    char p[600];
    snprintf(p, sizeof p, "%s/logits.safetensors", dir);
    ct_state_dict *ref = ct_state_dict_load(p);
    CHECK_NN(ref);
    ct_module *m = ct_model_create("resnet18", 1000);
    CHECK_NN(m);
    if (sd && ref && m) {
        CHECK_OK(ct_module_load_state_dict(m, sd, 1));
        ct_module_eval(m);
        int prev = ct_set_grad_enabled(0);
        ct_tensor *y = ct_module_forward(m, ct_state_dict_get(ref, "x"));
        ct_set_grad_enabled(prev);
        CHECK_NN(y);
        CHECK_CLOSE(y, ct_state_dict_get(ref, "logits"), 1e-4, weights);
        ct_free(y);
    }
    ct_module_free(m);
    ct_state_dict_free(sd);
    ct_state_dict_free(ref);
}

TEST(torchvision_models_peer_resnet18_safetensors_logits) {
    const char *dir = tv_peer_weights();
    if (!dir) SKIP("no Python with torch, torchvision and safetensors (bench/setup-peer.sh)");
    char p[600];
    snprintf(p, sizeof p, "%s/resnet18.safetensors", dir);
    check_logits_of(p, dir);
}

TEST(torchvision_models_peer_resnet18_torch_save_logits) {
    const char *dir = tv_peer_weights();
    if (!dir) SKIP("no Python with torch, torchvision and safetensors (bench/setup-peer.sh)");
    char p[600];
    snprintf(p, sizeof p, "%s/resnet18.pt", dir);
    check_logits_of(p, dir);
}
