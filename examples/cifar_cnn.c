/* The seed's SimpleCNN trained on CIFAR-10, on the CPU or the GPU.
 * Usage: build/examples/cifar_cnn [--device cpu|cuda] [--epochs N] [--data-dir DIR]
 *                                 [--limit N]   (train on the first N images only)
 * Data: DIR/cifar-10-batches-bin (default: $CTORCH_DATA, else ./data).
 * Every batch is a ct_scope: the batch, its device copies, the logits and the loss are
 * released when the scope is popped. */
#include "ctorch.h"
#include "ctorch_data.h"
#include "ctorch_nn.h"
#include "ctorch_optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One epoch of SGD; the mean loss, or NAN on error. Each batch is a scope. */
static double train_epoch(ct_module *model, ct_optimizer *opt, ct_dataloader *dl, ct_device dev,
                          int64_t epoch) {
    ct_module_train(model, 1);
    ct_dataloader_start_epoch(dl, epoch);
    double sum = 0;
    int64_t batches = 0;
    ct_tensor *x, *y;
    for (;;) {
        ct_scope *s = ct_scope_push();
        if (ct_dataloader_next(dl, &x, &y) != 1) {
            ct_scope_pop(s);
            break;
        }
        ct_tensor *logits = ct_module_forward(model, ct_to_device(x, dev));
        ct_tensor *loss = logits ? ct_cross_entropy_opt(logits, ct_to_device(y, dev), NULL) : NULL;
        int ok = loss && ct_backward(loss, NULL, 0) == 0 && ct_optim_step(opt) == 0;
        ct_optim_zero_grad(opt);
        if (ok) sum += ct_item(loss);
        ct_scope_pop(s);
        if (!ok) return NAN;
        batches++;
    }
    return batches ? sum / (double)batches : NAN;
}

/* Accuracy on the test set in eval mode without a graph, or -1 on error. */
static double test_accuracy(ct_module *model, const ct_dataset *test,
                            const ct_dataloader_opts *o, ct_device dev) {
    ct_module_eval(model);
    int prev = ct_set_grad_enabled(0);
    ct_dataloader_opts to = *o;
    to.shuffle = 0;
    to.batch_size = 500;
    ct_dataloader *tl = ct_dataloader_new(test, &to);
    int64_t correct = 0, seen = 0;
    ct_tensor *x, *y;
    for (int ok = tl != NULL; ok;) {
        ct_scope *s = ct_scope_push();
        ok = ct_dataloader_next(tl, &x, &y) == 1;
        ct_tensor *logits = ok ? ct_module_forward(model, ct_to_device(x, dev)) : NULL;
        /* (pred == y).sum() on the model's device: one number comes back per batch */
        ct_tensor *right =
            logits ? ct_sum(ct_eq(ct_argmax(logits, 1, 0), ct_to_device(y, dev)), NULL, 0, 0) : NULL;
        if (right) {
            correct += (int64_t)ct_item(right);
            seen += ct_numel(y);
        } else if (ok) {
            seen = 0; /* an error: report it */
            ok = 0;
        }
        ct_scope_pop(s);
    }
    ct_dataloader_free(tl);
    ct_set_grad_enabled(prev);
    return seen ? (double)correct / (double)seen : -1;
}

/* The value of a numeric option: a whole number >= 1, else -1. */
static long long positive(const char *s) {
    char *end;
    long long v = strtoll(s, &end, 10);
    return *s && !*end && v >= 1 ? v : -1;
}

int main(int argc, char **argv) {
    const char *device = "cpu", *data_dir = NULL;
    long long epochs = 1, limit = 0;
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 < argc && !strcmp(argv[i], "--device")) device = argv[i + 1];
        else if (i + 1 < argc && !strcmp(argv[i], "--epochs")) epochs = positive(argv[i + 1]);
        else if (i + 1 < argc && !strcmp(argv[i], "--data-dir")) data_dir = argv[i + 1];
        else if (i + 1 < argc && !strcmp(argv[i], "--limit")) limit = positive(argv[i + 1]);
        else {
            fprintf(stderr, "usage: %s [--device cpu|cuda] [--epochs N] [--data-dir DIR] "
                    "[--limit N]\n", argv[0]);
            return 2;
        }
        if (epochs < 1 || limit < 0) {
            fprintf(stderr, "%s: %s needs a whole number >= 1, got \"%s\"\n", argv[0], argv[i],
                    argv[i + 1]);
            return 2;
        }
    }
    ct_device dev;
    int avail = 1;
    if (ct_device_parse(device, &dev) != 0) {
        fprintf(stderr, "%s\n", ct_last_error());
        return 2;
    }
    if (dev.type == CT_CUDA) {
        const char *why = ct_cuda_status(&avail);
        if (!avail) {
            fprintf(stderr, "cuda unavailable: %s\n", why);
            return 2;
        }
    }
    ct_dataset *train = ct_dataset_load(CT_DATASET_CIFAR10, CT_SPLIT_TRAIN, data_dir, limit);
    ct_dataset *test = ct_dataset_load(CT_DATASET_CIFAR10, CT_SPLIT_TEST, data_dir, 0);
    if (!train || !test) {
        fprintf(stderr, "%s\n", ct_last_error());
        ct_dataset_free(train);
        ct_dataset_free(test);
        return 2;
    }
    ct_manual_seed(0);
    ct_module *model = ct_model_create("simple_cnn", 10);
    int np = 0; /* parameters on the device before the optimizer takes them */
    ct_tensor **params = model && ct_module_to(model, dev, -1) == 0
                             ? ct_module_parameters(model, &np) : NULL;
    ct_optimizer *opt =
        params ? ct_optim_sgd_opt(params, np, &(ct_sgd_opts){.lr = 0.01, .momentum = 0.9}) : NULL;
    free(params);
    ct_dataloader_opts o = ct_dataloader_default_opts();
    o.transform.normalize = 1;
    ct_dataset_default_normalization(CT_DATASET_CIFAR10, o.transform.mean, o.transform.std);
    ct_dataloader *dl = opt ? ct_dataloader_new(train, &o) : NULL;
    int rc = dl ? 0 : 1;
    if (rc) fprintf(stderr, "error: %s\n", ct_last_error());
    for (long long epoch = 0; epoch < epochs && rc == 0; epoch++) {
        double loss = train_epoch(model, opt, dl, dev, epoch);
        double acc = isnan(loss) ? -1 : test_accuracy(model, test, &o, dev);
        if (acc < 0) {
            fprintf(stderr, "error: %s\n", ct_last_error());
            rc = 1;
        } else {
            printf("epoch %lld  train loss %.4f  test accuracy %.2f%%\n", epoch + 1, loss,
                   100.0 * acc);
        }
    }
    ct_dataloader_free(dl);
    ct_optim_free(opt);
    ct_module_free(model);
    ct_dataset_free(train);
    ct_dataset_free(test);
    return rc;
}
