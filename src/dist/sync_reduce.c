/* The differentiable all-reduce (sum) that SyncBatchNorm is built from: forward sums x
 * over the ranks; backward all-reduces the incoming gradient, since every rank's input
 * feeds every rank's output (d(sum of the ranks' losses)/dx_r = sum over ranks of gy). */
#include "ctorch_dist.h"
#include "core/autograd.h"
#include "core/error.h"

static int all_reduce_backward(ct_node *n, const ct_tensor *gy, ct_tensor **gx) {
    (void)n;
    ct_tensor *g = ct_contiguous(gy);
    ct_tensor *c = g ? ct_clone(g) : NULL;
    ct_free(g);
    if (!c || (ct_dist_is_initialized() && ct_dist_all_reduce(c, CT_REDUCE_SUM) != 0)) {
        ct_free(c);
        return -1;
    }
    gx[0] = c;
    return 0;
}

ct_tensor *ct_dist_all_reduce_sum_autograd(const ct_tensor *x) {
    if (ct__check_tensor(x, "dist all_reduce")) return NULL;
    int prev = ct_set_grad_enabled(0); /* the copy is not recorded: the node below is y's */
    ct_tensor *xc = ct_contiguous(x);
    ct_tensor *yd = xc ? ct_clone(xc) : NULL;
    ct_free(xc);
    ct_set_grad_enabled(prev);
    if (!yd || (ct_dist_is_initialized() && ct_dist_all_reduce(yd, CT_REDUCE_SUM) != 0)) {
        ct_free(yd);
        return NULL;
    }
    ct_node *node;
    return ct_node_record("AllReduceSumBackward", all_reduce_backward, (const ct_tensor *[]){x}, 1,
                          yd, &node);
}
