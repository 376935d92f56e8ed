/* Define-by-run: the forward pass takes a data-dependent branch. An auxiliary head is
 * used (and trained) only for batches whose mean activation is positive; autograd records
 * whatever path actually ran, so gradients reach the auxiliary head only on those steps. */
#include "ctorch.h"
#include "ctorch_nn.h"
#include "ctorch_optim.h"

#include <stdio.h>
#include <stdlib.h>

int main(void) {
    ct_manual_seed(1);
    ct_module *root = ct_module_new("DynamicNet", NULL, NULL, NULL);
    ct_module_add_child(root, "body", ct_nn_linear(16, 32, 1));
    ct_module_add_child(root, "head", ct_nn_linear(32, 4, 1));
    ct_module_add_child(root, "aux", ct_nn_linear(32, 4, 1));
    ct_module *body = ct_module_get(root, "body"), *head = ct_module_get(root, "head"),
              *aux = ct_module_get(root, "aux");
    int np;
    ct_tensor **params = ct_module_parameters(root, &np);
    ct_optimizer *opt = ct_optim_sgd(params, np, 0.05, 0.9, 0, 0, 0);
    free(params);
    ct_tensor *aux_w = ct_module_get_tensor(root, "aux.weight");
    int64_t xs[2] = {32, 16}, n = 32;
    int aux_steps = 0;
    for (int step = 0; step < 20; step++) {
        ct_tensor *x = ct_randn(xs, 2, CT_FLOAT32);
        int64_t lab[32];
        for (int i = 0; i < 32; i++) lab[i] = (i + step) % 4;
        ct_tensor *y = ct_from_data(lab, &n, 1, CT_INT64);
        ct_tensor *h0 = ct_module_forward(body, x), *h = ct_relu(h0);
        ct_tensor *logits = ct_module_forward(head, h);
        ct_tensor *loss = ct_cross_entropy(logits, y, CT_REDUCTION_MEAN, 0.0, -100);
        /* the branch depends on the data of this batch */
        ct_tensor *m = ct_mean(x, NULL, 0, 0);
        int use_aux = ct_item(m) > 0;
        if (use_aux) {
            ct_tensor *al = ct_module_forward(aux, h);
            ct_tensor *aloss = ct_cross_entropy(al, y, CT_REDUCTION_MEAN, 0.0, -100);
            ct_tensor *half = ct_mul_scalar(aloss, 0.5), *total = ct_add(loss, half);
            ct_free(loss);
            loss = total;
            ct_free(al); ct_free(aloss); ct_free(half);
            aux_steps++;
        }
        if (ct_backward(loss, NULL, 0) != 0) {
            fprintf(stderr, "error: %s\n", ct_last_error());
            return 1;
        }
        printf("step %2d  loss %.4f  aux head %s, aux.weight grad %s\n", step, ct_item(loss),
               use_aux ? "used" : "skipped", ct_grad(aux_w) ? "present" : "absent");
        ct_optim_step(opt);
        ct_optim_zero_grad(opt);
        ct_free(x); ct_free(y); ct_free(h0); ct_free(h); ct_free(logits); ct_free(loss); ct_free(m);
    }
    printf("auxiliary head used on %d of 20 steps\n", aux_steps);
    ct_optim_free(opt);
    ct_module_free(root);
    return 0;
}
