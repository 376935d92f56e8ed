/* Define-by-run: the forward pass takes a data-dependent branch. An auxiliary head is
 * used (and trained) only for batches whose mean activation is positive; autograd records
 * whatever path actually ran, so gradients reach the auxiliary head only on those steps.
 *
 * Each step runs inside a ct_scope: popping it releases the batch, the activations, the
 * losses and every temporary, whichever branch ran and also when a step fails, so the loop
 * has no ct_free. (A module with the branch inside its forward: examples/adaptive_net.c.) */
#include "ctorch.h"
#include "ctorch_nn.h"
#include "ctorch_optim.h"

#include <stdio.h>
#include <stdlib.h>

enum { STEPS = 20, BATCH = 32, FEATURES = 16, HIDDEN = 32, CLASSES = 4 };

int main(void) {
    ct_manual_seed(1);
    ct_module *root = ct_module_new("DynamicNet", NULL, NULL, NULL);
    if (ct_module_add_child(root, "body", ct_nn_linear(FEATURES, HIDDEN, 1)) != 0 ||
        ct_module_add_child(root, "head", ct_nn_linear(HIDDEN, CLASSES, 1)) != 0 ||
        ct_module_add_child(root, "aux", ct_nn_linear(HIDDEN, CLASSES, 1)) != 0) {
        fprintf(stderr, "error: %s\n", ct_last_error());
        ct_module_free(root);
        return 1;
    }
    ct_module *body = ct_module_get(root, "body"), *head = ct_module_get(root, "head"),
              *aux = ct_module_get(root, "aux");
    ct_tensor *aux_w = ct_module_get_tensor(root, "aux.weight");
    int np;
    ct_tensor **params = ct_module_parameters(root, &np);
    ct_optimizer *opt = ct_optim_sgd_opt(params, np, &(ct_sgd_opts){.lr = 0.05, .momentum = 0.9});
    free(params);

    int64_t xs[2] = {BATCH, FEATURES}, n = BATCH;
    int aux_steps = 0, rc = opt ? 0 : 1;
    for (int step = 0; step < STEPS && rc == 0; step++) {
        ct_scope *s = ct_scope_push();
        ct_tensor *x = ct_randn(xs, 2, CT_FLOAT32);
        int64_t lab[BATCH];
        for (int i = 0; i < BATCH; i++) lab[i] = (i + step) % CLASSES;
        ct_tensor *y = ct_from_data(lab, &n, 1, CT_INT64);
        ct_tensor *h = ct_relu(ct_module_forward(body, x));
        ct_tensor *loss = ct_cross_entropy_opt(ct_module_forward(head, h), y, NULL);
        /* the branch depends on the data of this batch */
        int use_aux = ct_item(ct_mean(x, NULL, 0, 0)) > 0;
        if (use_aux) {
            ct_tensor *aux_loss = ct_cross_entropy_opt(ct_module_forward(aux, h), y, NULL);
            loss = ct_add(loss, ct_mul_scalar(aux_loss, 0.5));
            aux_steps++;
        }
        if (!loss || ct_backward(loss, NULL, 0) != 0 || ct_optim_step(opt) != 0) {
            fprintf(stderr, "error at step %d: %s\n", step, ct_last_error());
            rc = 1;
        } else {
            printf("step %2d  loss %.4f  aux head %s, aux.weight grad %s\n", step,
                   ct_item(loss), use_aux ? "used" : "skipped",
                   ct_grad(aux_w) ? "present" : "absent");
            ct_optim_zero_grad(opt);
        }
        ct_scope_pop(s); /* everything made in this step, on success and on failure */
    }
    if (rc == 0) printf("auxiliary head used on %d of %d steps\n", aux_steps, STEPS);
    ct_optim_free(opt);
    ct_module_free(root);
    return rc;
}
