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
TEST(deterministic_resnet18_same_weights_whatever_the_threads) {
    same_weights_1_and_2_threads("resnet18", 2, CT_FLOAT32);
}
TEST(deterministic_resnet18_bf16_same_weights_whatever_the_threads) {
    same_weights_1_and_2_threads("resnet18", 2, CT_BFLOAT16);
}
TEST(deterministic_avx2_level_same_weights_whatever_the_threads) {
    const char *old = getenv("CTORCH_CPU_ISA");
    char *keep = old ? strdup(old) : NULL;
    setenv("CTORCH_CPU_ISA", "avx2", 1);
    same_weights_1_and_2_threads("simple_cnn", 3, CT_FLOAT32);
    same_weights_1_and_2_threads("resnet18", 2, CT_FLOAT32);
    if (keep) setenv("CTORCH_CPU_ISA", keep, 1);
    else unsetenv("CTORCH_CPU_ISA");
    free(keep);
}
