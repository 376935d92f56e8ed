/* ct_use_deterministic_algorithms: the same seed gives bitwise-identical weights whatever
 * the thread count (issue 12's --deterministic). Trains a few SGD steps of the seed's
 * models on synthetic images with shuffling and augmentation, once with 1 thread and once
 * with 2 (also at the AVX2 level and under bf16 autocast, whose kernels split their work
 * differently), and compares every byte of every parameter and buffer. */
#include "test.h"
#include "ctorch_data.h"
#include "ctorch_nn.h"
#include "ctorch_optim.h"

#include <stdlib.h>
#include <string.h>

/* Trains `steps` steps and returns the state_dict's bytes, concatenated (malloc'd). */
static unsigned char *train_bytes(const char *model, int threads, int steps, ct_dtype amp,
                                  size_t *len) {
    ct_set_num_threads(threads);
    ct_manual_seed(3);
    enum { N = 96, C = 3, H = 32, W = 32 };
    uint8_t *img = malloc((size_t)N * C * H * W);
    int64_t lab[N];
    for (int i = 0; i < N * C * H * W; i++) img[i] = (uint8_t)((i * 2654435761u) >> 13);
    for (int i = 0; i < N; i++) lab[i] = (i * 7) % 10;
    ct_dataset *ds = ct_dataset_from_memory(img, lab, N, C, H, W, 10, "synthetic");
    free(img);
    ct_dataloader_opts lo = ct_dataloader_default_opts();
    lo.batch_size = 32;
    lo.seed = 5;
    lo.transform.crop_padding = 4;
    lo.transform.hflip = 1;
    lo.transform.normalize = 1;
    for (int c = 0; c < 3; c++) lo.transform.mean[c] = lo.transform.std[c] = 0.5f;
    ct_dataloader *dl = ds ? ct_dataloader_new(ds, &lo) : NULL;
    ct_module *m = ct_model_create_ex(model, 10, C, H, W);
    int np = 0;
    ct_tensor **params = m ? ct_module_parameters(m, &np) : NULL;
    ct_optimizer *opt = params ? ct_optim_sgd(params, np, 0.05, 0.9, 0, 1e-4, 0) : NULL;
    free(params);
    unsigned char *out = NULL;
    *len = 0;
    CHECK_NN(opt);
    for (int s = 0; opt && s < steps; s++) {
        ct_tensor *x, *y;
        if (ct_dataloader_next(dl, &x, &y) != 1) CHECK_OK(ct_dataloader_next(dl, &x, &y) == 1 ? 0 : -1);
        if (amp != CT_FLOAT32) ct_autocast_push(CT_CPU, amp);
        ct_tensor *logits = ct_module_forward(m, x);
        ct_tensor *loss = ct_cross_entropy(logits, y, CT_REDUCTION_MEAN, 0.0, -100);
        if (amp != CT_FLOAT32) ct_autocast_pop();
        CHECK_NN(loss);
        if (loss) {
            CHECK_OK(ct_backward(loss, NULL, 0));
            CHECK_OK(ct_optim_step(opt));
            ct_optim_zero_grad(opt);
        }
        ct_free(x), ct_free(y), ct_free(logits), ct_free(loss);
    }
    ct_state_dict *sd = opt ? ct_module_state_dict(m) : NULL;
    for (int i = 0; sd && i < sd->n; i++) {
        size_t b = (size_t)ct_numel(sd->tensors[i]) * ct_dtype_size(ct_dtype_of(sd->tensors[i]));
        out = realloc(out, *len + b);
        memcpy(out + *len, ct_data(sd->tensors[i]), b);
        *len += b;
    }
    ct_state_dict_free(sd);
    ct_optim_free(opt);
    ct_module_free(m);
    ct_dataloader_free(dl);
    ct_dataset_free(ds);
    return out;
}

static void same_weights_1_and_2_threads(const char *model, int steps, ct_dtype amp) {
    int prev_threads = ct_get_num_threads();
    ct_use_deterministic_algorithms(1);
    size_t l1, l2;
    unsigned char *a = train_bytes(model, 1, steps, amp, &l1);
    unsigned char *b = train_bytes(model, 2, steps, amp, &l2);
    ct_use_deterministic_algorithms(0);
    ct_set_num_threads(prev_threads);
    CHECK(a && b && l1 == l2 && l1 > 0);
    if (a && b && l1 == l2) {
        size_t diff = 0;
        for (size_t i = 0; i < l1; i++) diff += a[i] != b[i];
        CHECK_MSG(diff == 0, "%s: %zu of %zu weight bytes differ between 1 and 2 threads", model,
                  diff, l1);
    }
    free(a);
    free(b);
}

TEST(deterministic_simple_cnn_same_weights_whatever_the_threads) {
    same_weights_1_and_2_threads("simple_cnn", 3, CT_FLOAT32);
}
TEST(deterministic_resnet18_cifar_same_weights_whatever_the_threads) {
    same_weights_1_and_2_threads("resnet18_cifar", 2, CT_FLOAT32);
}
TEST(deterministic_resnet18_cifar_bf16_same_weights_whatever_the_threads) {
    same_weights_1_and_2_threads("resnet18_cifar", 2, CT_BFLOAT16);
}
TEST(deterministic_avx2_level_same_weights_whatever_the_threads) {
    const char *old = getenv("CTORCH_CPU_ISA");
    char *keep = old ? strdup(old) : NULL;
    setenv("CTORCH_CPU_ISA", "avx2", 1);
    same_weights_1_and_2_threads("simple_cnn", 3, CT_FLOAT32);
    same_weights_1_and_2_threads("resnet18_cifar", 2, CT_FLOAT32);
    if (keep) setenv("CTORCH_CPU_ISA", keep, 1);
    else unsetenv("CTORCH_CPU_ISA");
    free(keep);
}

/* ---------------------------------------------------------- state for resuming */
/* Two optimizers over equal parameters: B gets A's state_dict after 3 steps; the next
 * steps then give bitwise the same parameters (SGD momentum, Adam moments and steps). */
static void optimizer_state_roundtrip(ct_optim_kind kind) {
    int64_t shape[2] = {4, 5};
    ct_manual_seed(11);
    ct_tensor *pa = ct_randn(shape, 2, CT_FLOAT32), *pb = ct_clone(pa);
    ct_set_requires_grad(pa, 1);
    ct_set_requires_grad(pb, 1);
    ct_optim_options oo = ct_optim_default_options(kind);
    oo.lr = 0.1;
    if (kind == CT_OPTIM_SGD) oo.momentum = 0.9;
    oo.amsgrad = kind == CT_OPTIM_ADAM;
    ct_optimizer *a = ct_optim_new(kind, &pa, 1, &oo), *b = ct_optim_new(kind, &pb, 1, &oo);
    CHECK(a && b);
    if (!a || !b) return;
    for (int step = 0; step < 6; step++) {
        if (step == 3) {
            ct_state_dict *sd = ct_optim_state_dict(a);
            CHECK_NN(sd);
            int prev = ct_set_grad_enabled(0);
            CHECK_OK(ct_copy_(pb, pa));
            ct_set_grad_enabled(prev);
            CHECK_OK(ct_optim_load_state_dict(b, sd));
            ct_state_dict_free(sd);
            CHECK(ct_optim_steps(b) == 3);
        }
        ct_tensor *opt_p[2] = {pa, pb};
        ct_optimizer *opts[2] = {a, b};
        for (int k = 0; k < (step >= 3 ? 2 : 1); k++) {
            ct_tensor *sq = ct_mul(opt_p[k], opt_p[k]), *l = ct_sum(sq, NULL, 0, 0);
            CHECK_OK(ct_backward(l, NULL, 0));
            CHECK_OK(ct_optim_step(opts[k]));
            ct_optim_zero_grad(opts[k]);
            ct_free(sq), ct_free(l);
        }
    }
    CHECK(!memcmp(ct_data(pa), ct_data(pb), sizeof(float) * 20));
    /* a state of another optimizer or another shape is refused, and changes nothing */
    ct_state_dict *sd = ct_optim_state_dict(a);
    int64_t other[2] = {5, 4};
    ct_tensor *pc = ct_zeros(other, 2, CT_FLOAT32);
    ct_set_requires_grad(pc, 1);
    ct_optimizer *c = ct_optim_new(kind, &pc, 1, &oo);
    CHECK_ERR_INT(ct_optim_load_state_dict(c, sd), "parameter 0");
    ct_optimizer *d = ct_optim_new(kind == CT_OPTIM_SGD ? CT_OPTIM_ADAM : CT_OPTIM_SGD, &pc, 1, NULL);
    CHECK_ERR_INT(ct_optim_load_state_dict(d, sd), "another optimizer");
    CHECK(ct_optim_steps(c) == 0);
    ct_state_dict_free(sd);
    ct_optim_free(a), ct_optim_free(b), ct_optim_free(c), ct_optim_free(d);
    ct_free(pa), ct_free(pb), ct_free(pc);
}

TEST(optimizer_state_dict_resumes_sgd_bitwise) { optimizer_state_roundtrip(CT_OPTIM_SGD); }
TEST(optimizer_state_dict_resumes_adam_bitwise) { optimizer_state_roundtrip(CT_OPTIM_ADAM); }

TEST(rng_state_restores_the_stream) {
    ct_manual_seed(5);
    int64_t n = 16;
    ct_tensor *skip = ct_rand(&n, 1, CT_FLOAT32);
    uint64_t seed, off;
    ct_get_rng_state(&seed, &off);
    CHECK(seed == 5 && off == 16);
    ct_tensor *a = ct_randn(&n, 1, CT_FLOAT32);
    ct_manual_seed(99);
    ct_set_rng_state(seed, off);
    ct_tensor *b = ct_randn(&n, 1, CT_FLOAT32);
    CHECK(!memcmp(ct_data(a), ct_data(b), sizeof(float) * 16));
    ct_free(skip), ct_free(a), ct_free(b);
}

/* Starting an epoch at batch k gives batches k.. of the uninterrupted epoch (shuffled and
 * augmented), with workers and without. */
TEST(data_loader_starts_an_epoch_at_a_batch) {
    enum { N = 40, C = 1, H = 8, W = 8 };
    uint8_t img[N * C * H * W];
    int64_t lab[N];
    for (int i = 0; i < N * C * H * W; i++) img[i] = (uint8_t)(i * 37);
    for (int i = 0; i < N; i++) lab[i] = i % 10;
    ct_dataset *ds = ct_dataset_from_memory(img, lab, N, C, H, W, 10, "synthetic");
    for (int workers = 0; workers <= 2; workers += 2) {
        ct_dataloader_opts lo = ct_dataloader_default_opts();
        lo.batch_size = 6;
        lo.seed = 9;
        lo.num_workers = workers;
        lo.transform.crop_padding = 2;
        lo.transform.hflip = 1;
        ct_dataloader *full = ct_dataloader_new(ds, &lo), *part = ct_dataloader_new(ds, &lo);
        CHECK_OK(ct_dataloader_start_epoch(full, 3));
        CHECK_OK(ct_dataloader_start_epoch_at(part, 3, 4));
        ct_tensor *x, *y, *x2, *y2;
        for (int b = 0; b < 7; b++) {
            CHECK(ct_dataloader_next(full, &x, &y) == 1);
            if (b >= 4) {
                CHECK(ct_dataloader_next(part, &x2, &y2) == 1);
                CHECK(ct_numel(x) == ct_numel(x2) &&
                      !memcmp(ct_data(x), ct_data(x2), sizeof(float) * (size_t)ct_numel(x)));
                CHECK(!memcmp(ct_data(y), ct_data(y2), sizeof(int64_t) * (size_t)ct_numel(y)));
                ct_free(x2), ct_free(y2);
            }
            ct_free(x), ct_free(y);
        }
        CHECK(ct_dataloader_next(part, &x2, &y2) == 0);
        CHECK_ERR_INT(ct_dataloader_start_epoch_at(part, 0, 8), "batch-size");
        ct_dataloader_free(full);
        ct_dataloader_free(part);
    }
    ct_dataset_free(ds);
}
