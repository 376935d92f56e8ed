/* The CPU's fused optimizer steps (kernel-table entries sgd_step / adam_step): one loop per
 * parameter over the raw buffers (ct_parallel_for), in the parameter's precision and in
 * PyTorch's operation order (each torch op rounds to the tensor dtype, scalars are cast to
 * it), so that results match torch.optim's single-tensor formulas bit for bit. */
#include "core/backend.h"
#include "cpu_isa.h"
#include "core/error.h"
#include "core/parallel.h"
#include "cpu_kernels.h"

#include <math.h>
#include <string.h>

typedef struct {
    void *p;
    const void *g;
    void *b0, *b1, *b2;
    /* SGD */
    double lr, mom, damp, wd;
    int nesterov, first, maximize;
    /* Adam */
    double beta1, beta2, eps, step_size, bc2_sqrt, decay;
    int amsgrad, adamw;
} fused_ctx;

/* The SGD loops: the options are copied into locals and each combination gets its own
 * branch-free loop, so that the compiler vectorizes it (a flag read through `c` inside
 * the loop could alias the stores and kept it scalar). Same operations, same order and
 * same rounding as the scalar formula: buf = buf*mom + (1-damp)*g; p = p + (-lr)*g. */
#define SGD_LOOP(T)                                                                      \
    do {                                                                                 \
        T *p = c->p, *buf = c->b0;                                                       \
        const T *gr = c->g;                                                              \
        const T wd = (T)c->wd, mom = (T)c->mom, one_m_damp = (T)(1 - c->damp),          \
                neg_lr = (T)(-c->lr);                                                    \
        const int has_wd = c->wd != 0, has_mom = c->mom != 0, first = c->first,          \
                  nesterov = c->nesterov, maximize = c->maximize;                        \
        if (!maximize && !has_wd && has_mom && !first && !nesterov) {                    \
            /* the common case: plain momentum */                                        \
            for (int64_t i = b; i < e; i++) {                                            \
                T bb = buf[i] * mom;                                                     \
                bb = bb + one_m_damp * gr[i];                                            \
                buf[i] = bb;                                                             \
                p[i] = p[i] + neg_lr * bb;                                               \
            }                                                                            \
        } else if (!maximize && !has_wd && !has_mom) {                                   \
            for (int64_t i = b; i < e; i++) p[i] = p[i] + neg_lr * gr[i];                \
        } else {                                                                         \
            for (int64_t i = b; i < e; i++) {                                            \
                T g = maximize ? -gr[i] : gr[i];                                         \
                if (has_wd) g = g + wd * p[i];                                           \
                if (has_mom) {                                                           \
                    T bb;                                                                \
                    if (first) {                                                         \
                        bb = g;                                                          \
                    } else {                                                             \
                        bb = buf[i] * mom;                                               \
                        bb = bb + one_m_damp * g;                                        \
                    }                                                                    \
                    buf[i] = bb;                                                         \
                    g = nesterov ? g + mom * bb : bb;                                    \
                }                                                                        \
                p[i] = p[i] + neg_lr * g;                                                \
            }                                                                            \
        }                                                                                \
    } while (0)

/* CT_MULTIVERSION (cpu_isa.h): compiled for AVX-512, AVX2 and baseline x86-64.
 * Floating-point contraction stays off (-std=c11), so every variant rounds alike. */

CT_MULTIVERSION static void sgd_f32(void *vc, int64_t b, int64_t e) {
    const fused_ctx *c = vc;
    SGD_LOOP(float);
}
CT_MULTIVERSION static void sgd_f64(void *vc, int64_t b, int64_t e) {
    const fused_ctx *c = vc;
    SGD_LOOP(double);
}

#define ADAM_LOOP(T, SQRT)                                                               \
    do {                                                                                 \
        T *p = c->p, *m = c->b0, *v = c->b1, *vmax = c->b2;                              \
        const T *gr = c->g;                                                              \
        const T wd = (T)c->wd, b1 = (T)c->beta1, omb1 = (T)(1 - c->beta1),              \
                b2 = (T)c->beta2, omb2 = (T)(1 - c->beta2), bc2s = (T)c->bc2_sqrt,     \
                eps = (T)c->eps, neg_step = (T)(-c->step_size), decay = (T)c->decay;    \
        const int maximize = c->maximize, adamw = c->adamw, has_wd = c->wd != 0,         \
                  amsgrad = c->amsgrad;                                                  \
        for (int64_t i = b; i < e; i++) {                                                \
            T g = maximize ? -gr[i] : gr[i];                                             \
            T pi = p[i];                                                                 \
            if (adamw)                                                                   \
                pi = pi * decay;                                                         \
            else if (has_wd)                                                             \
                g = g + wd * pi;                                                         \
            T mi = m[i] * b1;                                                            \
            mi = mi + omb1 * g;                                                          \
            T vi = v[i] * b2;                                                            \
            vi = vi + omb2 * g * g;                                                      \
            m[i] = mi;                                                                   \
            v[i] = vi;                                                                   \
            if (amsgrad) {                                                               \
                T mx = vmax[i] > vi ? vmax[i] : vi;                                      \
                if (vi != vi) mx = vi; /* torch.maximum propagates NaN */                \
                vmax[i] = mx;                                                            \
                vi = mx;                                                                 \
            }                                                                            \
            T denom = SQRT(vi) / bc2s;                                                   \
            denom = denom + eps;                                                         \
            p[i] = pi + neg_step * mi / denom;                                           \
        }                                                                                \
    } while (0)

CT_MULTIVERSION static void adam_f32(void *vc, int64_t b, int64_t e) {
    const fused_ctx *c = vc;
    ADAM_LOOP(float, sqrtf);
}
CT_MULTIVERSION static void adam_f64(void *vc, int64_t b, int64_t e) {
    const fused_ctx *c = vc;
    ADAM_LOOP(double, sqrt);
}

int cpu_sgd_step(ct_tensor *const *params, ct_tensor *const *grads, ct_tensor *const *bufs,
                 int n, const ct_sgd_args *a, int first_step) {
    for (int i = 0; i < n; i++) {
        const ct_tensor *p = params[i];
        fused_ctx c;
        memset(&c, 0, sizeof c);
        c.p = ct_ptr(p);
        c.g = ct_ptr(grads[i]);
        c.b0 = bufs && bufs[i] ? ct_ptr(bufs[i]) : NULL;
        c.lr = a->lr;
        c.wd = a->weight_decay;
        c.mom = a->momentum;
        c.damp = a->dampening;
        c.nesterov = a->nesterov;
        c.maximize = a->maximize;
        c.first = first_step;
        if (p->dtype == CT_FLOAT32) ct_parallel_for(ct_numel(p), 1 << 15, sgd_f32, &c);
        else if (p->dtype == CT_FLOAT64) ct_parallel_for(ct_numel(p), 1 << 15, sgd_f64, &c);
        else return ct_error("SGD: dtype %s not supported", ct_dtype_name(p->dtype));
    }
    return 0;
}

int cpu_adam_step(ct_tensor *const *params, ct_tensor *const *grads, ct_tensor *const *exp_avg,
                  ct_tensor *const *exp_avg_sq, ct_tensor *const *max_exp_avg_sq, int n,
                  const ct_adam_args *a) {
    const double bc1 = 1 - pow(a->beta1, (double)a->step);
    const double bc2 = 1 - pow(a->beta2, (double)a->step);
    for (int i = 0; i < n; i++) {
        const ct_tensor *p = params[i];
        fused_ctx c;
        memset(&c, 0, sizeof c);
        c.p = ct_ptr(p);
        c.g = ct_ptr(grads[i]);
        c.b0 = ct_ptr(exp_avg[i]);
        c.b1 = ct_ptr(exp_avg_sq[i]);
        c.b2 = a->amsgrad ? ct_ptr(max_exp_avg_sq[i]) : NULL;
        c.lr = a->lr;
        c.wd = a->weight_decay;
        c.maximize = a->maximize;
        c.beta1 = a->beta1;
        c.beta2 = a->beta2;
        c.eps = a->eps;
        c.step_size = a->lr / bc1;
        c.bc2_sqrt = sqrt(bc2);
        c.amsgrad = a->amsgrad;
        c.adamw = a->decoupled;
        c.decay = 1 - a->lr * a->weight_decay;
        if (p->dtype == CT_FLOAT32) ct_parallel_for(ct_numel(p), 1 << 14, adam_f32, &c);
        else if (p->dtype == CT_FLOAT64) ct_parallel_for(ct_numel(p), 1 << 14, adam_f64, &c);
        else return ct_error("Adam: dtype %s not supported", ct_dtype_name(p->dtype));
    }
    return 0;
}
