/* An MLP training loop with Adam on one batch of 64 (the seed's first example):
 * Linear(784,128) -> ReLU -> Linear(128,10), cross-entropy, backward, Adam step.
 * Tensors live in scopes: `data` holds the batch for the whole run, each step's scope the
 * logits, the loss and the temporaries, so nothing is freed by hand.
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
    int np = 0;
    ct_tensor **params = model ? ct_module_parameters(model, &np) : NULL;
    ct_optimizer *opt = params ? ct_optim_adam_opt(params, np, NULL) /* PyTorch's defaults */ : NULL;
    free(params);
    if (!opt) {
        fprintf(stderr, "error: %s\n", ct_last_error());
        ct_module_free(model);
        return 1;
    }

    ct_scope *data = ct_scope_push();
    int64_t xs[2] = {64, 784}, n = 64;
    ct_tensor *x = ct_randn(xs, 2, CT_FLOAT32);
    int64_t labels[64];
    for (int i = 0; i < 64; i++) labels[i] = i % 10;
    ct_tensor *y = ct_from_data(labels, &n, 1, CT_INT64);

    int rc = 0;
    for (int step = 0; step < 50 && rc == 0; step++) {
        ct_scope *s = ct_scope_push();
        ct_tensor *loss = ct_cross_entropy_opt(ct_module_forward(model, x), y, NULL);
        if (!loss || ct_backward(loss, NULL, 0) != 0 || ct_optim_step(opt) != 0) {
            fprintf(stderr, "error: %s\n", ct_last_error());
            rc = 1;
        }
        ct_optim_zero_grad(opt);
        if (rc == 0 && (step % 10 == 0 || step == 49))
            printf("step %2d  loss %.4f\n", step, ct_item(loss));
        ct_scope_pop(s);
    }
    ct_scope_pop(data);
    ct_optim_free(opt);
    ct_module_free(model);
    return rc;
}
