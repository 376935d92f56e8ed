/* Scoped tensor lifetime (ct_scope_push / ct_keep / ct_scope_pop): what a scope frees,
 * what it must never free (parameters, gradients, optimizer state, saved tensors, a
 * loader's batches once handed out), nesting, early exits and misuse. Leaks are counted
 * with the number of live tensor headers. */
#include "test.h"

#include "core/tensor_impl.h"
#include "ctorch_data.h"
#include "ctorch_nn.h"
#include "ctorch_optim.h"

#include <stdlib.h>

TEST(scope_frees_everything_created_inside) {
    long long base = ct__live_tensors();
    int64_t sh[2] = {4, 5};
    ct_scope *s = ct_scope_push();
    CHECK_NN(s);
    ct_tensor *a = ct_randn(sh, 2, CT_FLOAT32), *b = ct_ones(sh, 2, CT_FLOAT32);
    ct_tensor *c = ct_relu(ct_add(ct_mul(a, b), ct_exp(b)));
    ct_tensor *v = ct_transpose(c, 0, 1), *r = ct_retain(c), *same = ct_contiguous(c);
    CHECK(c && v && r == c && same == c);
    ct_free(a); /* early release is allowed, once */
    CHECK(ct__live_tensors() > base);
    ct_scope_pop(s);
    CHECK_MSG(ct__live_tensors() == base, "%lld tensors leaked", ct__live_tensors() - base);
}

TEST(scope_keep_moves_to_the_caller_or_the_enclosing_scope) {
    long long base = ct__live_tensors();
    int64_t n = 3;
    ct_scope *outer = ct_scope_push();
    ct_scope *inner = ct_scope_push();
    ct_tensor *x = ct_keep(ct_full(&n, 1, 2.0, CT_FLOAT32)); /* into outer */
    ct_tensor *tmp = ct_ones(&n, 1, CT_FLOAT32);
    (void)tmp;
    ct_scope_pop(inner);
    CHECK(ct__live_tensors() == base + 1);
    CHECK(ct_item(ct_sum(x, NULL, 0, 0)) == 6.0); /* alive, and the sum is outer's */
    ct_tensor *y = ct_keep(ct_mul_scalar(x, 2)); /* no enclosing scope: the caller's */
    ct_scope_pop(outer);
    CHECK(ct__live_tensors() == base + 1);
    CHECK(((float *)ct_data(y))[0] == 4.0f);
    ct_free(y);
    CHECK(ct__live_tensors() == base);
    CHECK(ct_keep(NULL) == NULL);
}

TEST(scope_pop_of_an_outer_scope_pops_the_inner_ones) {
    long long base = ct__live_tensors();
    int64_t n = 8;
    ct_scope *outer = ct_scope_push();
    ct_tensor *a = ct_ones(&n, 1, CT_FLOAT32);
    ct_scope *inner = ct_scope_push();
    ct_tensor *b = ct_add_scalar(a, 1);
    (void)b;
    ct_scope_push(); /* an early exit that never popped this one */
    ct_tensor *c = ct_neg(a);
    (void)c;
    ct_scope_pop(outer);
    CHECK(ct__live_tensors() == base);
    /* inner was popped with it: popping it again is an error, not a crash */
    CHECK_ERR_INT((ct_scope_pop(inner), ct_last_error()[0] ? -1 : 0), "not a scope");
    ct_clear_error();
    ct_scope_pop(NULL); /* nothing */
    CHECK(ct_last_error()[0] == 0);
}

static int early_exit(int fail, long long *live_inside) {
    CT_SCOPE(s);
    int64_t n = 4;
    ct_tensor *a = ct_randn(&n, 1, CT_FLOAT32), *b = ct_exp(a);
    *live_inside = ct__live_tensors();
    if (fail || !b) return -1; /* the scope is popped on the way out */
    return 0;
}

TEST(scope_macro_pops_on_every_return) {
    long long base = ct__live_tensors(), inside = 0;
    CHECK(early_exit(1, &inside) == -1);
    CHECK(inside >= base + 2);
    CHECK(ct__live_tensors() == base);
    CHECK(early_exit(0, &inside) == 0);
    CHECK(ct__live_tensors() == base);
}

/* A training loop where every step is a scope: the model, its gradients and the optimizer
 * state survive each pop; nothing else does. */
TEST(scope_training_steps_keep_what_ctorch_keeps) {
    ct_manual_seed(3);
    ct_scope *setup = ct_scope_push(); /* the model and optimizer are made inside a scope */
    ct_module *m = ct_model_create_ex("mlp", 4, 1, 4, 4);
    int np = 0;
    ct_tensor **params = ct_module_parameters(m, &np);
    ct_optimizer *opt = ct_optim_adam(params, np, 0.01, 0.9, 0.999, 1e-8, 0);
    free(params);
    ct_scope_pop(setup);
    CHECK_NN(m);
    CHECK_NN(opt);
    long long base = ct__live_tensors();
    int64_t xs[4] = {8, 1, 4, 4}, n = 8;
    double first = 0, last = 0;
    for (int step = 0; step < 30; step++) {
        ct_scope *s = ct_scope_push();
        ct_manual_seed(7);
        ct_tensor *x = ct_randn(xs, 4, CT_FLOAT32);
        int64_t lab[8] = {0, 1, 2, 3, 0, 1, 2, 3};
        ct_tensor *y = ct_from_data(lab, &n, 1, CT_INT64);
        ct_tensor *loss = ct_cross_entropy(ct_module_forward(m, x), y, CT_REDUCTION_MEAN, 0, -100);
        CHECK_OK(ct_backward(loss, NULL, 0));
        CHECK_OK(ct_optim_step(opt));
        ct_optim_zero_grad(opt);
        last = ct_item(loss);
        if (step == 0) first = last;
        ct_scope_pop(s);
        /* Adam's state appears at the first step; after that the count is flat */
        if (step == 0) base = ct__live_tensors();
        CHECK_MSG(ct__live_tensors() == base, "step %d: %lld tensors more than after step 0",
                  step, ct__live_tensors() - base);
    }
    CHECK_MSG(last < first * 0.5, "loss %.4f -> %.4f: the model did not train", first, last);
    /* gradients survive a scope: backward inside one, read them outside */
    ct_scope *s = ct_scope_push();
    ct_tensor *x = ct_randn(xs, 4, CT_FLOAT32);
    CHECK_OK(ct_backward(ct_sum(ct_module_forward(m, x), NULL, 0, 0), NULL, 0));
    ct_scope_pop(s);
    ct_tensor *w = ct_module_get_tensor(m, "fc1.weight");
    CHECK(w && ct_grad(w) && ct_numel(ct_grad(w)) == ct_numel(w));
    ct_optim_free(opt);
    ct_module_free(m);
}

/* A graph built in an inner scope, its loss kept: the tensors saved for backward belong to
 * the graph, so backward after the pop works. */
TEST(scope_saved_tensors_outlive_the_scope_that_made_them) {
    long long base = ct__live_tensors();
    int64_t sh[2] = {3, 4};
    ct_tensor *w = ct_randn(sh, 2, CT_FLOAT64);
    ct_set_requires_grad(w, 1);
    ct_scope *s = ct_scope_push();
    ct_tensor *loss = ct_keep(ct_sum(ct_mul(ct_tanh(w), ct_exp(w)), NULL, 0, 0));
    ct_scope_pop(s);
    CHECK_OK(ct_backward(loss, NULL, 0));
    CHECK_NN(ct_grad(w));
    ct_free(loss);
    ct_free(w);
    CHECK(ct__live_tensors() == base);
}

/* A tensor the user made inside a scope and handed to a module (or an optimizer) lives on
 * in the module after the pop. */
TEST(scope_tensors_given_to_a_module_stay_with_it) {
    ct_module *m = ct_module_new("Custom", NULL, NULL, NULL);
    ct_scope *s = ct_scope_push();
    int64_t n = 5;
    ct_tensor *p = ct_zeros(&n, 1, CT_FLOAT32);
    CHECK(ct_module_add_parameter(m, "p", p) >= 0);
    ct_tensor *b = ct_ones(&n, 1, CT_FLOAT32);
    CHECK(ct_module_add_buffer(m, "b", b) >= 0);
    ct_state_dict *sd = ct_module_state_dict(m);
    ct_scope_pop(s);
    ct_tensor *pp = ct_module_get_tensor(m, "p"), *bb = ct_module_get_tensor(m, "b");
    CHECK(pp == p && bb == b && ct_numel(pp) == 5 && ((float *)ct_data(bb))[4] == 1.0f);
    CHECK(sd && sd->n == 2 && sd->tensors[1] == b);
    ct_state_dict_free(sd);
    ct_module_free(m);
}

/* Batches built by loader worker threads belong to the scope of the thread that takes
 * them. */
TEST(scope_owns_the_batches_a_loader_hands_out) {
    uint8_t img[64 * 16];
    for (int i = 0; i < 64 * 16; i++) img[i] = (uint8_t)(i * 7);
    ct_dataset *ds = ct_dataset_from_memory(img, NULL, 64, 1, 4, 4, 3, "synthetic");
    CHECK_NN(ds);
    if (!ds) return;
    for (int workers = 0; workers <= 2; workers += 2) {
        ct_dataloader_opts o = ct_dataloader_default_opts();
        o.batch_size = 16;
        o.num_workers = workers;
        long long base = ct__live_tensors();
        ct_dataloader *dl = ct_dataloader_new(ds, &o);
        CHECK_NN(dl);
        ct_tensor *x, *y;
        for (int k = 0; k < 4; k++) {
            ct_scope *s = ct_scope_push();
            CHECK(ct_dataloader_next(dl, &x, &y) == 1);
            CHECK(ct_numel(x) == 16 * 16 && ct_numel(y) == 16);
            ct_scope_pop(s);
        }
        ct_dataloader_free(dl);
        CHECK_MSG(ct__live_tensors() == base, "%d workers: %lld batch tensors leaked", workers,
                  ct__live_tensors() - base);
    }
    ct_dataset_free(ds);
}
