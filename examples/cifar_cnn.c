/* The seed's SimpleCNN trained on CIFAR-10, on the CPU or the GPU.
 * Usage: build/examples/cifar_cnn [--device cpu|cuda] [--epochs N] [--data-dir DIR]
 * Data: DIR/cifar-10-batches-bin (default: $CTORCH_DATA, else ./data). */
#include "ctorch.h"
#include "ctorch_data.h"
#include "ctorch_nn.h"
#include "ctorch_optim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    const char *device = "cpu", *data_dir = NULL;
    int epochs = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--device")) device = argv[i + 1];
        else if (!strcmp(argv[i], "--epochs")) epochs = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--data-dir")) data_dir = argv[i + 1];
        else {
            fprintf(stderr, "usage: %s [--device cpu|cuda] [--epochs N] [--data-dir DIR]\n", argv[0]);
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
    ct_dataset *train = ct_dataset_load(CT_DATASET_CIFAR10, CT_SPLIT_TRAIN, data_dir, 0);
    ct_dataset *test = ct_dataset_load(CT_DATASET_CIFAR10, CT_SPLIT_TEST, data_dir, 0);
    if (!train || !test) {
        fprintf(stderr, "%s\n", ct_last_error());
        return 2;
    }
    ct_manual_seed(0);
    ct_module *model = ct_model_create("simple_cnn", 10);
    if (dev.type != CT_CPU && ct_module_to(model, dev, -1) != 0) {
        fprintf(stderr, "%s\n", ct_last_error());
        return 1;
    }
    int np;
    ct_tensor **params = ct_module_parameters(model, &np);
    ct_optimizer *opt = ct_optim_sgd(params, np, 0.01, 0.9, 0.0, 0.0, 0);
    free(params);

    ct_dataloader_opts o = ct_dataloader_default_opts();
    o.transform.normalize = 1;
    ct_dataset_default_normalization(CT_DATASET_CIFAR10, o.transform.mean, o.transform.std);
    ct_dataloader *dl = ct_dataloader_new(train, &o);
    for (int epoch = 0; epoch < epochs; epoch++) {
        ct_module_train(model, 1);
        ct_dataloader_start_epoch(dl, epoch);
        ct_tensor *x, *y;
        double sum = 0;
        int64_t batches = 0;
        while (ct_dataloader_next(dl, &x, &y) == 1) {
            ct_tensor *xd = ct_to_device(x, dev), *yd = ct_to_device(y, dev);
            ct_tensor *logits = ct_module_forward(model, xd);
            ct_tensor *loss = ct_cross_entropy(logits, yd, CT_REDUCTION_MEAN, 0.0, -100);
            if (!loss || ct_backward(loss, NULL, 0) != 0 || ct_optim_step(opt) != 0) {
                fprintf(stderr, "error: %s\n", ct_last_error());
                return 1;
            }
            ct_optim_zero_grad(opt);
            sum += ct_item(loss);
            batches++;
            ct_free(x); ct_free(y); ct_free(xd); ct_free(yd); ct_free(logits); ct_free(loss);
        }
        /* test accuracy */
        ct_module_eval(model);
        int prev = ct_set_grad_enabled(0);
        ct_dataloader_opts to = o;
        to.shuffle = 0;
        to.batch_size = 500;
        ct_dataloader *tl = ct_dataloader_new(test, &to);
        int64_t correct = 0, seen = 0;
        while (ct_dataloader_next(tl, &x, &y) == 1) {
            ct_tensor *xd = ct_to_device(x, dev);
            ct_tensor *logits = ct_module_forward(model, xd);
            ct_tensor *pred = ct_argmax(logits, 1, 0), *ph = ct_to_device(pred, ct_cpu());
            const int64_t *p = ct_data(ph), *l = ct_data(y);
            for (int64_t i = 0; i < ct_numel(y); i++) correct += p[i] == l[i];
            seen += ct_numel(y);
            ct_free(x); ct_free(y); ct_free(xd); ct_free(logits); ct_free(pred); ct_free(ph);
        }
        ct_dataloader_free(tl);
        ct_set_grad_enabled(prev);
        printf("epoch %d  train loss %.4f  test accuracy %.2f%%\n", epoch + 1, sum / (double)batches,
               100.0 * (double)correct / (double)seen);
    }
    ct_dataloader_free(dl);
    ct_optim_free(opt);
    ct_module_free(model);
    ct_dataset_free(train);
    ct_dataset_free(test);
    return 0;
}
