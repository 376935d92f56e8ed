/* An MLP training loop with Adam on one batch of 64 (the seed's first example):
 * Linear(784,128) -> ReLU -> Linear(128,10), cross-entropy, backward, Adam step.
 * Build: make examples; run: build/examples/mlp_adam */
#include "ctorch.h"
#include "ctorch_nn.h"
#include "ctorch_optim.h"

#include <stdio.h>
#include <stdlib.h>

int main(void) {
    ct_manual_seed(0);
    ct_module *mods[3] = {ct_nn_linear(784, 128, 1), ct_nn_relu(), ct_nn_linear(128, 10, 1)};
    ct_module *model = ct_nn_sequential(mods, 3);
    int np;
    ct_tensor **params = ct_module_parameters(model, &np);
    ct_optimizer *opt = ct_optim_adam(params, np, 1e-3, 0.9, 0.999, 1e-8, 0.0);
    free(params);

    int64_t xs[2] = {64, 784}, n = 64;
    ct_tensor *x = ct_randn(xs, 2, CT_FLOAT32);
    int64_t labels[64];
    for (int i = 0; i < 64; i++) labels[i] = i % 10;
    ct_tensor *y = ct_from_data(labels, &n, 1, CT_INT64);

    for (int step = 0; step < 50; step++) {
        ct_tensor *logits = ct_module_forward(model, x);
        ct_tensor *loss = ct_cross_entropy(logits, y, CT_REDUCTION_MEAN, 0.0, -100);
        if (!loss || ct_backward(loss, NULL, 0) != 0 || ct_optim_step(opt) != 0) {
            fprintf(stderr, "error: %s\n", ct_last_error());
            return 1;
        }
        ct_optim_zero_grad(opt);
        if (step % 10 == 0 || step == 49) printf("step %2d  loss %.4f\n", step, ct_item(loss));
        ct_free(logits);
        ct_free(loss);
    }
    ct_free(x);
    ct_free(y);
    ct_optim_free(opt);
    ct_module_free(model);
    return 0;
}
