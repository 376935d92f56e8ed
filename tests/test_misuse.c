/* Misused tensor handles are reported, never a crash or a read of freed memory (the suite
 * also runs under ASan: make test-sanitize): a double free, a use after free, a borrowed
 * reference (a module's parameter, a gradient) freed by the caller. */
#include "test.h"

#include "ctorch_nn.h"
#include "ctorch_optim.h"

#include <string.h>

#define RELEASED "tensor already released"

TEST(misuse_double_free_is_reported) {
    int64_t n = 4;
    ct_tensor *t = ct_ones(&n, 1, CT_FLOAT32);
    ct_free(t);
    ct_clear_error();
    ct_free(t); /* the second time: an error, no crash, no count below zero */
    CHECK_MSG(strstr(ct_last_error(), RELEASED) != NULL, "error: %s", ct_last_error());
    CHECK_ERR_PTR(ct_retain(t), RELEASED);
}

TEST(misuse_use_after_free_is_reported_by_the_op) {
    int64_t sh[2] = {3, 4};
    ct_tensor *a = ct_randn(sh, 2, CT_FLOAT32), *b = ct_randn(sh, 2, CT_FLOAT32);
    ct_free(a);
    CHECK_ERR_PTR(ct_relu(a), "relu: " RELEASED);
    CHECK_ERR_PTR(ct_add(b, a), "add: " RELEASED);
    CHECK_ERR_PTR(ct_sum(a, NULL, 0, 0), "sum: " RELEASED);
    CHECK_ERR_PTR(ct_matmul(b, a), "matmul: " RELEASED);
    CHECK_ERR_PTR(ct_reshape(a, sh, 2), "reshape: " RELEASED);
    CHECK_ERR_PTR(ct_to_dtype(a, CT_FLOAT64), "to_dtype: " RELEASED);
    CHECK_ERR_PTR(ct_cat((ct_tensor *[]){b, a}, 2, 0), "cat: " RELEASED);
    CHECK_ERR_INT(ct_add_(b, a, 1.0), "add_: " RELEASED);
    CHECK_ERR_INT(ct_backward(a, NULL, 0), "backward: " RELEASED);
    CHECK(ct_data(a) == NULL);
    ct_clear_error();
    CHECK(isnan(ct_item(a)) && strstr(ct_last_error(), RELEASED));
    ct_free(b);
}

TEST(misuse_freeing_a_borrowed_parameter_is_reported) {
    ct_manual_seed(2);
    ct_module *m = ct_nn_linear(4, 3, 1);
    int64_t xs[2] = {2, 4};
    ct_tensor *x = ct_randn(xs, 2, CT_FLOAT32);
    ct_tensor *w = ct_module_get_tensor(m, "weight"); /* BORROWED */
    ct_free(w);                                        /* a mistake: the module's reference */
    ct_clear_error();
    ct_tensor *y = ct_module_forward(m, x);
    CHECK(y == NULL);
    CHECK_MSG(strstr(ct_last_error(), RELEASED) && strstr(ct_last_error(), "Linear"),
              "error: %s", ct_last_error());
    ct_module_free(m); /* releases the module's (already released) weight: reported, no crash */
    ct_free(x);
}

TEST(misuse_freeing_a_borrowed_gradient_is_reported) {
    int64_t n = 5;
    ct_tensor *p = ct_ones(&n, 1, CT_FLOAT32);
    ct_set_requires_grad(p, 1);
    ct_optimizer *o = ct_optim_sgd_opt(&p, 1, &(ct_sgd_opts){.lr = 0.1});
    ct_scope *s = ct_scope_push(); /* the products and losses */
    ct_tensor *loss = ct_sum(ct_mul(p, p), NULL, 0, 0);
    CHECK_OK(ct_backward(loss, NULL, 0));
    ct_free(ct_grad(p)); /* a mistake: the gradient is BORROWED */
    CHECK_ERR_INT(ct_optim_step(o), RELEASED);
    ct_zero_grad(p); /* drops the released gradient: reported, no crash */
    ct_clear_error();
    ct_tensor *loss2 = ct_sum(ct_mul(p, p), NULL, 0, 0);
    CHECK_OK(ct_backward(loss2, NULL, 0)); /* the parameter itself is fine */
    CHECK_OK(ct_optim_step(o));
    ct_scope_pop(s);
    ct_optim_free(o);
    ct_free(p);
}
