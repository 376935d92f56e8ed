/* The seed's AdaptiveNet on MNIST: a module with two outputs. forward(x, use_aux) returns
 * (main, aux) in training when use_aux is set, else main only; the auxiliary head reads
 * the first 128 of the backbone's 256 features and learns label % 5 (a coarser task that
 * shares the backbone). The aux loss is added on batches whose mean normalised pixel is
 * positive (more ink than the dataset's average), a data-dependent choice: define-by-run
 * autograd records whichever path ran, so aux_head gets gradients only on those steps.
 *
 * Every training step runs inside a ct_scope: the batch, the outputs, the losses and every
 * temporary are released when the scope is popped, so the loop has no ct_free.
 *
 * Usage: build/examples/adaptive_net [DATA_ROOT] [STEPS]
 * DATA_ROOT holds mnist/ (default: $CTORCH_DATA, else ../shared/data); STEPS default 300. */
#include "ctorch.h"
#include "ctorch_data.h"
#include "ctorch_nn.h"
#include "ctorch_optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { BATCH = 64, TRAIN_IMAGES = 19200, AUX_CLASSES = 5 };

/* Accuracy of the main head on ds, in eval mode (one output) without a graph. */
static double test_accuracy(ct_module *model, const ct_dataset *ds, const ct_dataloader_opts *o) {
    ct_dataloader_opts to = *o;
    to.shuffle = 0;
    to.batch_size = 1000;
    ct_dataloader *dl = ct_dataloader_new(ds, &to);
    if (!dl) return -1;
    ct_module_eval(model);
    int prev = ct_set_grad_enabled(0);
    int64_t correct = 0, seen = 0;
    ct_tensor *x, *y;
    for (;;) {
        ct_scope *s = ct_scope_push();
        if (ct_dataloader_next(dl, &x, &y) != 1) {
            ct_scope_pop(s);
            break;
        }
        /* (pred == y).sum(): how many predictions are right (an int64 count) */
        ct_tensor *pred = ct_argmax(ct_module_forward(model, x), 1, 0);
        ct_tensor *right = ct_sum(ct_eq(pred, y), NULL, 0, 0);
        if (!right) {
            ct_scope_pop(s);
            seen = 0;
            break;
        }
        correct += (int64_t)ct_item(right);
        seen += ct_numel(y);
        ct_scope_pop(s);
    }
    ct_set_grad_enabled(prev);
    ct_module_train(model, 1);
    ct_dataloader_free(dl);
    return seen ? (double)correct / (double)seen : -1;
}

/* The auxiliary target: label % 5, for each label of the batch. */
static ct_tensor *aux_targets(const ct_tensor *y) {
    ct_tensor *t = ct_empty(ct_shape(y), 1, CT_INT64);
    const int64_t *l = ct_data(y);
    int64_t *a = ct_data(t);
    for (int64_t i = 0; a && i < ct_numel(y); i++) a[i] = l[i] % AUX_CLASSES;
    return t;
}

/* One training step on (x, y): returns the loss, or NAN with ct_last_error() set. The
 * caller's scope releases everything made here. */
static double train_step(ct_module *model, ct_optimizer *opt, ct_tensor *x, ct_tensor *y,
                         int *used_aux) {
    int use_aux = ct_item(ct_mean(x, NULL, 0, 0)) > 0; /* the data decides */
    ct_module_args in = {.n = 1, .tensors = {x}, .kwargs = {{"use_aux", use_aux}}};
    ct_module_outputs out;
    if (ct_module_call(model, &in, &out) != 0) return NAN;
    ct_tensor *loss = ct_cross_entropy_opt(out.tensors[0], y, NULL);
    *used_aux = out.n > 1;
    if (*used_aux) { /* total = main + 0.5 * aux */
        ct_tensor *aux = ct_cross_entropy_opt(out.tensors[1], aux_targets(y), NULL);
        loss = ct_add(loss, ct_mul_scalar(aux, 0.5));
    }
    if (!loss || ct_backward(loss, NULL, 0) != 0 || ct_optim_step(opt) != 0) return NAN;
    ct_optim_zero_grad(opt);
    return ct_item(loss);
}

/* Trains for `steps` batches, printing the mean loss every 100 steps; 0 or -1. */
static int train(ct_module *model, ct_optimizer *opt, ct_dataloader *dl, int steps) {
    double sum = 0;
    int aux_steps = 0, epoch = 0;
    for (int step = 1; step <= steps; step++) {
        ct_scope *s = ct_scope_push();
        ct_tensor *x, *y;
        int got = ct_dataloader_next(dl, &x, &y);
        if (got == 0) { /* end of the epoch: start the next one */
            ct_dataloader_start_epoch(dl, ++epoch);
            got = ct_dataloader_next(dl, &x, &y);
        }
        int used_aux = 0;
        double loss = got == 1 ? train_step(model, opt, x, y, &used_aux) : NAN;
        ct_scope_pop(s); /* the batch, outputs, losses and temporaries */
        if (isnan(loss)) {
            fprintf(stderr, "error at step %d: %s\n", step, ct_last_error());
            return -1;
        }
        sum += loss;
        aux_steps += used_aux;
        if (step % 100 == 0 || step == steps) {
            printf("step %4d  train loss %.4f  (aux head on %d of %d steps so far)\n", step,
                   sum / (step % 100 ? step % 100 : 100), aux_steps, step);
            sum = 0;
        }
    }
    return 0;
}

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    const char *root = argc > 1 ? argv[1] : getenv("CTORCH_DATA");
    if (!root || !*root) root = "../shared/data";
    int steps = argc > 2 ? atoi(argv[2]) : 300;
    if (steps < 1) {
        fprintf(stderr, "usage: %s [DATA_ROOT] [STEPS >= 1]\n", argv[0]);
        return 2;
    }
    ct_dataset *train_set = ct_dataset_load(CT_DATASET_MNIST, CT_SPLIT_TRAIN, root, TRAIN_IMAGES);
    ct_dataset *test_set =
        train_set ? ct_dataset_load(CT_DATASET_MNIST, CT_SPLIT_TEST, root, 0) : NULL;
    if (!test_set) {
        fprintf(stderr, "error: %s\n", ct_last_error());
        ct_dataset_free(train_set);
        return 2;
    }
    ct_manual_seed(0);
    ct_module *model = ct_model_adaptive_net(28 * 28, 10, AUX_CLASSES);
    int np = 0;
    ct_tensor **params = model ? ct_module_parameters(model, &np) : NULL;
    ct_optimizer *opt = params ? ct_optim_adam_opt(params, np, NULL) /* PyTorch's defaults */ : NULL;
    free(params);
    ct_dataloader_opts o = ct_dataloader_default_opts();
    o.batch_size = BATCH;
    o.transform.normalize = 1;
    ct_dataset_default_normalization(CT_DATASET_MNIST, o.transform.mean, o.transform.std);
    ct_dataloader *dl = opt ? ct_dataloader_new(train_set, &o) : NULL;
    int rc = 1;
    if (!dl) {
        fprintf(stderr, "error: %s\n", ct_last_error());
    } else {
        ct_module_print(model, stdout);
        double t0 = seconds(), acc = -1;
        if (train(model, opt, dl, steps) == 0 && (acc = test_accuracy(model, test_set, &o)) < 0)
            fprintf(stderr, "error in evaluation: %s\n", ct_last_error());
        if (acc >= 0) {
            printf("test accuracy %.2f%% on %lld images after %d steps (%.1f s)\n", 100 * acc,
                   (long long)test_set->n, steps, seconds() - t0);
            rc = 0;
        }
    }
    ct_dataloader_free(dl);
    ct_optim_free(opt);
    ct_module_free(model);
    ct_dataset_free(train_set);
    ct_dataset_free(test_set);
    return rc;
}
