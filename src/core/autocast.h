/* Autocast (torch.autocast) inside the op layer: which ops change dtype in an autocast
 * region, device type by device type, and the casts (src/core/autocast.c). An op that
 * takes part calls ct__autocast at its entry; when that returns 1 it calls itself again
 * with the cast inputs (which then need no cast) and releases them:
 *
 *     ct_tensor *ac[3];
 *     int r = ct__autocast(CT_AC_CONV2D, (const ct_tensor *[]){x, w, b}, 3, ac);
 *     if (r < 0) return NULL;
 *     if (r > 0) { y = ct_conv2d(ac[0], ac[1], ac[2], ...); ct__autocast_release(ac, 3); return y; }
 */
#ifndef CT_AUTOCAST_H
#define CT_AUTOCAST_H

#include "tensor_impl.h"

/* The ops autocast knows; the policy of each per device type is in autocast.c's table. */
#define CT_AUTOCAST_OPS(X)                                                                  \
    X(CONV2D, "conv2d") X(LINEAR, "linear") X(MATMUL, "matmul")                           \
    X(CROSS_ENTROPY, "cross_entropy") X(NLL_LOSS, "nll_loss") X(MSE_LOSS, "mse_loss")      \
    X(SOFTMAX, "softmax") X(LOG_SOFTMAX, "log_softmax") X(LAYER_NORM, "layer_norm")        \
    X(SUM, "sum") X(EXP, "exp") X(LOG, "log") X(POW, "pow")                               \
    X(SDPA, "scaled_dot_product_attention")

typedef enum {
#define CT__AC_ENUM(ID, name) CT_AC_##ID,
    CT_AUTOCAST_OPS(CT__AC_ENUM)
#undef CT__AC_ENUM
    CT_AC_COUNT
} ct_autocast_op;

/* 1 and ac[0..n-1] filled (new references, NULL for NULL inputs) when autocast changes
 * the dtype of op's inputs here; 0 when it does not; -1 on error. */
int ct__autocast(ct_autocast_op op, const ct_tensor *const *in, int n, ct_tensor **ac);
void ct__autocast_release(ct_tensor **ac, int n);

/* The entry of an op that returns a tensor: when autocast applies to the inputs (...),
 * returns CALL, evaluated with ac[i] the cast i-th input. */
#define CT_AUTOCAST(OP, CALL, ...)                                                         \
    do {                                                                                   \
        const ct_tensor *ac_in_[] = {__VA_ARGS__};                                         \
        ct_tensor *ac[sizeof ac_in_ / sizeof *ac_in_];                                     \
        int ac_r_ = ct__autocast(OP, ac_in_, (int)(sizeof ac_in_ / sizeof *ac_in_), ac);   \
        if (ac_r_ < 0) return NULL;                                                        \
        if (ac_r_ > 0) {                                                                   \
            ct_tensor *ac_y_ = CALL;                                                       \
            ct__autocast_release(ac, (int)(sizeof ac_in_ / sizeof *ac_in_));               \
            return ac_y_;                                                                  \
        }                                                                                  \
    } while (0)
#endif
