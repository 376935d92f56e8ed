/* SGD, Adam, AdamW with torch.optim's single-tensor formulas (PyTorch 1.13).
 *
 * Fast path: contiguous CPU parameter, gradient and state -> one fused loop per parameter
 * over the raw buffers (ct_parallel_for), in the parameter's precision and in PyTorch's
 * operation order (each torch op rounds to the tensor dtype, scalars are cast to it).
 * CUDA parameters use the CUDA plugin's fused multi-tensor kernels (ct_cuda_sgd_step,
 * ct_cuda_adam_step, looked up in the loaded plugin with ct_cuda_plugin_symbol) when the options allow
 * (no maximize / amsgrad); everything else (other devices, strided gradients) goes
 * through public tensor ops. */
#include "ctorch_optim.h"
#include "backends/cuda/cuda_plugin.h"
#include "core/backend.h"
#include "core/error.h"
#include "core/parallel.h"
#include "core/tensor_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { S_BUF0, S_BUF1, S_BUF2, S_COUNT }; /* SGD: momentum; Adam: exp_avg, exp_avg_sq, max */

struct ct_optimizer {
    ct_optim_kind kind;
    ct_optim_options o;
    int n;
    ct_tensor **params;
    ct_tensor **state[S_COUNT];
    int64_t *param_steps; /* Adam: per-parameter step count (PyTorch's state['step']) */
    int64_t steps;
    /* CUDA fused path scratch (allocated once): per-parameter mark and gather lists */
    unsigned char *mark;
    ct_tensor **gather[5];
};

static const char *kind_title(ct_optim_kind k) {
    return k == CT_OPTIM_SGD ? "SGD" : k == CT_OPTIM_ADAM ? "Adam" : "AdamW";
}

const char *ct_optim_name(ct_optim_kind k) {
    return k == CT_OPTIM_SGD ? "sgd" : k == CT_OPTIM_ADAM ? "adam" : k == CT_OPTIM_ADAMW ? "adamw" : "?";
}

ct_optim_options ct_optim_default_options(ct_optim_kind kind) {
    ct_optim_options o;
    memset(&o, 0, sizeof o);
    o.beta1 = 0.9;
    o.beta2 = 0.999;
    o.eps = 1e-8;
    if (kind == CT_OPTIM_SGD) {
        o.lr = 0.01;
    } else {
        o.lr = 1e-3;
        o.weight_decay = kind == CT_OPTIM_ADAMW ? 1e-2 : 0.0;
    }
    return o;
}

static int validate(ct_optim_kind kind, const ct_optim_options *o) {
    const char *t = kind_title(kind);
    if (!(o->lr >= 0)) return ct_error("%s: invalid learning rate %g (must be >= 0)", t, o->lr);
    if (!(o->weight_decay >= 0))
        return ct_error("%s: invalid weight_decay %g (must be >= 0)", t, o->weight_decay);
    if (kind == CT_OPTIM_SGD) {
        if (!(o->momentum >= 0))
            return ct_error("SGD: invalid momentum %g (must be >= 0)", o->momentum);
        if (!isfinite(o->dampening)) return ct_error("SGD: invalid dampening %g", o->dampening);
        if (o->nesterov && (o->momentum <= 0 || o->dampening != 0))
            return ct_error("SGD: nesterov momentum requires a momentum > 0 and zero dampening "
                            "(got momentum %g, dampening %g)", o->momentum, o->dampening);
    } else {
        if (!(o->eps >= 0)) return ct_error("%s: invalid epsilon %g (must be >= 0)", t, o->eps);
        if (!(o->beta1 >= 0 && o->beta1 < 1))
            return ct_error("%s: invalid beta1 %g (must be in [0, 1))", t, o->beta1);
        if (!(o->beta2 >= 0 && o->beta2 < 1))
            return ct_error("%s: invalid beta2 %g (must be in [0, 1))", t, o->beta2);
    }
    return 0;
}

void ct_optim_free(ct_optimizer *o) {
    if (!o) return;
    for (int i = 0; i < o->n; i++) {
        ct_free(o->params[i]);
        for (int s = 0; s < S_COUNT; s++) ct_free(o->state[s][i]);
    }
    free(o->params);
    for (int s = 0; s < S_COUNT; s++) free(o->state[s]);
    free(o->param_steps);
    free(o->mark);
    for (int s = 0; s < 5; s++) free(o->gather[s]);
    free(o);
}

ct_optimizer *ct_optim_new(ct_optim_kind kind, ct_tensor *const *params, int n,
                           const ct_optim_options *opt) {
    if (kind != CT_OPTIM_SGD && kind != CT_OPTIM_ADAM && kind != CT_OPTIM_ADAMW)
        return ct_error_null("optimizer: unknown kind %d", (int)kind);
    const char *t = kind_title(kind);
    ct_optim_options o = opt ? *opt : ct_optim_default_options(kind);
    if (validate(kind, &o) != 0) return NULL;
    if (n < 0 || (n > 0 && !params))
        return ct_error_null("%s: invalid parameter list (n = %d)", t, n);
    for (int i = 0; i < n; i++) {
        const ct_tensor *p = params[i];
        if (!p) return ct_error_null("%s: parameter %d is NULL", t, i);
        if (p->dtype != CT_FLOAT32 && p->dtype != CT_FLOAT64)
            return ct_error_null("%s: parameter %d has dtype %s; only float32 and float64 "
                                 "parameters can be optimized", t, i, ct_dtype_name(p->dtype));
        if (!p->requires_grad || p->grad_fn)
            return ct_error_null("%s: parameter %d must be a leaf tensor that requires grad "
                                 "(use ct_set_requires_grad(p, 1))", t, i);
        for (int j = 0; j < i; j++)
            if (params[j] == p)
                return ct_error_null("%s: parameter %d appears twice in the list (also at %d)", t,
                                     i, j);
    }
    ct_optimizer *r = calloc(1, sizeof *r);
    if (!r) return ct_error_null("%s: out of memory", t);
    r->kind = kind;
    r->o = o;
    r->n = n;
    size_t cnt = n > 0 ? (size_t)n : 1;
    r->params = calloc(cnt, sizeof(ct_tensor *));
    r->param_steps = calloc(cnt, sizeof(int64_t));
    int ok = r->params && r->param_steps;
    for (int s = 0; s < S_COUNT; s++) ok = (r->state[s] = calloc(cnt, sizeof(ct_tensor *))) && ok;
    ok = (r->mark = calloc(cnt, 1)) && ok;
    for (int s = 0; s < 5; s++) ok = (r->gather[s] = calloc(cnt, sizeof(ct_tensor *))) && ok;
    if (!ok) {
        r->n = 0;
        ct_optim_free(r);
        return ct_error_null("%s: out of memory", t);
    }
    for (int i = 0; i < n; i++) r->params[i] = ct_retain(params[i]);
    return r;
}

ct_optimizer *ct_optim_sgd(ct_tensor *const *params, int n, double lr, double momentum,
                           double dampening, double weight_decay, int nesterov) {
    ct_optim_options o = ct_optim_default_options(CT_OPTIM_SGD);
    o.lr = lr;
    o.momentum = momentum;
    o.dampening = dampening;
    o.weight_decay = weight_decay;
    o.nesterov = nesterov != 0;
    return ct_optim_new(CT_OPTIM_SGD, params, n, &o);
}

static ct_optimizer *adam_like(ct_optim_kind k, ct_tensor *const *params, int n, double lr,
                               double beta1, double beta2, double eps, double wd) {
    ct_optim_options o = ct_optim_default_options(k);
    o.lr = lr;
    o.beta1 = beta1;
    o.beta2 = beta2;
    o.eps = eps;
    o.weight_decay = wd;
    return ct_optim_new(k, params, n, &o);
}
ct_optimizer *ct_optim_adam(ct_tensor *const *params, int n, double lr, double beta1,
                            double beta2, double eps, double weight_decay) {
    return adam_like(CT_OPTIM_ADAM, params, n, lr, beta1, beta2, eps, weight_decay);
}
ct_optimizer *ct_optim_adamw(ct_tensor *const *params, int n, double lr, double beta1,
                             double beta2, double eps, double weight_decay) {
    return adam_like(CT_OPTIM_ADAMW, params, n, lr, beta1, beta2, eps, weight_decay);
}

/* ------------------------------------------------------------- accessors */
void ct_optim_zero_grad(ct_optimizer *o) {
    if (!o) return;
    for (int i = 0; i < o->n; i++) ct_zero_grad(o->params[i]);
}

int ct_optim_set_lr(ct_optimizer *o, double lr) {
    if (!o) return ct_error("set_lr: NULL optimizer");
    if (!(lr >= 0)) return ct_error("%s: invalid learning rate %g (must be >= 0)", kind_title(o->kind), lr);
    o->o.lr = lr;
    return 0;
}
double ct_optim_get_lr(const ct_optimizer *o) { return o ? o->o.lr : NAN; }

int ct_optim_set_momentum(ct_optimizer *o, double m) {
    if (!o) return ct_error("set_momentum: NULL optimizer");
    if (o->kind == CT_OPTIM_SGD) {
        if (!(m >= 0)) return ct_error("SGD: invalid momentum %g (must be >= 0)", m);
        if (o->o.nesterov && m <= 0)
            return ct_error("SGD: nesterov momentum requires a momentum > 0 (got %g)", m);
        o->o.momentum = m;
    } else {
        if (!(m >= 0 && m < 1))
            return ct_error("%s: invalid beta1 %g (must be in [0, 1))", kind_title(o->kind), m);
        o->o.beta1 = m;
    }
    return 0;
}
double ct_optim_get_momentum(const ct_optimizer *o) {
    return !o ? NAN : o->kind == CT_OPTIM_SGD ? o->o.momentum : o->o.beta1;
}
const ct_optim_options *ct_optim_options_of(const ct_optimizer *o) { return o ? &o->o : NULL; }
ct_optim_kind ct_optim_kind_of(const ct_optimizer *o) { return o ? o->kind : CT_OPTIM_SGD; }
int64_t ct_optim_steps(const ct_optimizer *o) { return o ? o->steps : 0; }
int ct_optim_num_params(const ct_optimizer *o) { return o ? o->n : 0; }

ct_tensor *ct_optim_state(const ct_optimizer *o, int i, const char *name) {
    if (!o || i < 0 || i >= o->n || !name) return NULL;
    if (o->kind == CT_OPTIM_SGD) return !strcmp(name, "momentum_buffer") ? o->state[S_BUF0][i] : NULL;
    if (!strcmp(name, "exp_avg")) return o->state[S_BUF0][i];
    if (!strcmp(name, "exp_avg_sq")) return o->state[S_BUF1][i];
    if (!strcmp(name, "max_exp_avg_sq")) return o->state[S_BUF2][i];
    return NULL;
}

/* -------------------------------------------------------------- fused loops */
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

/* Compiled for AVX-512, AVX2 and baseline x86-64; the loader picks one at start-up.
 * Floating-point contraction stays off (-std=c11), so every variant rounds alike. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CT_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CT_MULTIVERSION
#endif

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

static int is_cpu_contig(const ct_tensor *t) {
    return t && t->storage->device.type == CT_CPU && ct_is_contiguous(t);
}

/* ----------------------------------------------------------- generic path */
/* t = t*s1 + s2*x (in place, via public ops). */
static int axpby_(ct_tensor *t, double s1, const ct_tensor *x, double s2) {
    if (s1 != 1 && ct_mul_scalar_(t, s1) != 0) return -1;
    return ct_add_(t, x, s2);
}

static int sgd_generic(ct_optimizer *o, int i, const ct_tensor *grad, int first) {
    ct_tensor *p = o->params[i];
    const ct_optim_options *op = &o->o;
    ct_tensor *g = op->maximize ? ct_neg(grad) : ct_clone(grad);
    if (!g) return -1;
    int rc = 0;
    if (op->weight_decay != 0) rc = ct_add_(g, p, op->weight_decay);
    if (rc == 0 && op->momentum != 0) {
        ct_tensor *buf = o->state[S_BUF0][i];
        if (first)
            rc = ct_copy_(buf, g);
        else
            rc = axpby_(buf, op->momentum, g, 1 - op->dampening);
        if (rc == 0) {
            if (op->nesterov)
                rc = ct_add_(g, buf, op->momentum);
            else
                rc = ct_copy_(g, buf);
        }
    }
    if (rc == 0) rc = ct_add_(p, g, -op->lr);
    ct_free(g);
    return rc;
}

static int adam_generic(ct_optimizer *o, int i, const ct_tensor *grad, double step_size,
                        double bc2_sqrt) {
    ct_tensor *p = o->params[i];
    const ct_optim_options *op = &o->o;
    ct_tensor *m = o->state[S_BUF0][i], *v = o->state[S_BUF1][i], *vmax = o->state[S_BUF2][i];
    ct_tensor *g = op->maximize ? ct_neg(grad) : ct_clone(grad);
    if (!g) return -1;
    int rc = 0;
    if (o->kind == CT_OPTIM_ADAMW)
        rc = ct_mul_scalar_(p, 1 - op->lr * op->weight_decay);
    else if (op->weight_decay != 0)
        rc = ct_add_(g, p, op->weight_decay);
    if (rc == 0) rc = axpby_(m, op->beta1, g, 1 - op->beta1);
    ct_tensor *gg = rc == 0 ? ct_mul(g, g) : NULL;
    if (!gg) rc = -1;
    if (rc == 0) rc = axpby_(v, op->beta2, gg, 1 - op->beta2);
    ct_free(gg);
    ct_tensor *use = v;
    if (rc == 0 && op->amsgrad) {
        /* max(a, b) = (a + b + |a - b|) / 2 */
        ct_tensor *d = ct_sub(vmax, v), *ad = d ? ct_abs(d) : NULL;
        ct_tensor *s = ad ? ct_add(vmax, v) : NULL, *s2 = s ? ct_add(s, ad) : NULL;
        rc = s2 ? ct_copy_(vmax, s2) : -1;
        if (rc == 0) rc = ct_mul_scalar_(vmax, 0.5);
        ct_free(d);
        ct_free(ad);
        ct_free(s);
        ct_free(s2);
        use = vmax;
    }
    ct_tensor *den = rc == 0 ? ct_sqrt(use) : NULL;
    if (!den) rc = -1;
    if (rc == 0) rc = ct_mul_scalar_(den, 1.0 / bc2_sqrt);
    if (rc == 0) rc = ct_add_scalar_(den, op->eps);
    ct_tensor *q = rc == 0 ? ct_div(m, den) : NULL;
    if (!q) rc = -1;
    if (rc == 0) rc = ct_add_(p, q, -step_size);
    ct_free(q);
    ct_free(den);
    ct_free(g);
    return rc;
}

/* ----------------------------------------------------------------- step */
static int ensure_state(ct_optimizer *o, int s, int i) {
    if (o->state[s][i]) return 0;
    ct_tensor *p = o->params[i];
    ct_tensor *z = ct_empty_on(p->shape, p->ndim, p->dtype, p->storage->device);
    if (!z) return -1;
    if (ct_zero_(z) != 0) {
        ct_free(z);
        return -1;
    }
    o->state[s][i] = z;
    return 0;
}

static int step_param(ct_optimizer *o, int i) {
    ct_tensor *p = o->params[i];
    ct_tensor *grad = p->grad;
    const ct_optim_options *op = &o->o;
    if (!grad) return 0;
    char s1[96], s2[96];
    if (!ct_same_shape(grad, p) || grad->dtype != p->dtype ||
        grad->storage->device.type != p->storage->device.type ||
        grad->storage->device.index != p->storage->device.index)
        return ct_error("%s: parameter %d %s %s has a gradient %s %s; they must match",
                        kind_title(o->kind), i, ct_shape_str(p, s1, sizeof s1),
                        ct_dtype_name(p->dtype), ct_shape_str(grad, s2, sizeof s2),
                        ct_dtype_name(grad->dtype));
    fused_ctx c;
    memset(&c, 0, sizeof c);
    c.maximize = op->maximize;
    c.lr = op->lr;
    c.wd = op->weight_decay;
    int64_t n = ct_numel(p);
    if (o->kind == CT_OPTIM_SGD) {
        int first = 0;
        if (op->momentum != 0) {
            first = o->state[S_BUF0][i] == NULL;
            if (ensure_state(o, S_BUF0, i) != 0) return -1;
        }
        ct_tensor *buf = o->state[S_BUF0][i];
        if (is_cpu_contig(p) && is_cpu_contig(grad) && (op->momentum == 0 || is_cpu_contig(buf))) {
            c.p = ct_ptr(p);
            c.g = ct_ptr(grad);
            c.b0 = buf ? ct_ptr(buf) : NULL;
            c.mom = op->momentum;
            c.damp = op->dampening;
            c.nesterov = op->nesterov;
            c.first = first;
            ct_parallel_for(n, 1 << 15, p->dtype == CT_FLOAT32 ? sgd_f32 : sgd_f64, &c);
            ct_bump_version(p);
            if (buf) ct_bump_version(buf);
            return 0;
        }
        return sgd_generic(o, i, grad, first);
    }
    if (ensure_state(o, S_BUF0, i) || ensure_state(o, S_BUF1, i) ||
        (op->amsgrad && ensure_state(o, S_BUF2, i)))
        return -1;
    int64_t t = ++o->param_steps[i];
    double bc1 = 1 - pow(op->beta1, (double)t);
    double bc2 = 1 - pow(op->beta2, (double)t);
    double step_size = op->lr / bc1;
    double bc2_sqrt = sqrt(bc2);
    ct_tensor *m = o->state[S_BUF0][i], *v = o->state[S_BUF1][i], *vmax = o->state[S_BUF2][i];
    if (is_cpu_contig(p) && is_cpu_contig(grad) && is_cpu_contig(m) && is_cpu_contig(v) &&
        (!op->amsgrad || is_cpu_contig(vmax))) {
        c.p = ct_ptr(p);
        c.g = ct_ptr(grad);
        c.b0 = ct_ptr(m);
        c.b1 = ct_ptr(v);
        c.b2 = vmax ? ct_ptr(vmax) : NULL;
        c.beta1 = op->beta1;
        c.beta2 = op->beta2;
        c.eps = op->eps;
        c.step_size = step_size;
        c.bc2_sqrt = bc2_sqrt;
        c.amsgrad = op->amsgrad;
        c.adamw = o->kind == CT_OPTIM_ADAMW;
        c.decay = 1 - op->lr * op->weight_decay;
        ct_parallel_for(n, 1 << 14, p->dtype == CT_FLOAT32 ? adam_f32 : adam_f64, &c);
        ct_bump_version(p);
        ct_bump_version(m);
        ct_bump_version(v);
        if (vmax) ct_bump_version(vmax);
        return 0;
    }
    return adam_generic(o, i, grad, step_size, bc2_sqrt);
}

/* ------------------------------------------------------- CUDA fused path */

enum { M_NONE = 0, M_PENDING, M_PENDING_FIRST, M_DONE };

/* Updates the CUDA parameters the fused kernels can handle, grouped by (device, dtype,
 * first step / step count), and marks them M_DONE. Returns 0 also when the plugin is
 * not there (the per-parameter path then handles them). */
static int cuda_fused_step(ct_optimizer *o) {
    const ct_optim_options *op = &o->o;
    memset(o->mark, M_NONE, (size_t)o->n);
    if (op->maximize || op->amsgrad) return 0;
    int any = 0;
    for (int i = 0; i < o->n && !any; i++)
        any = o->params[i]->storage->device.type == CT_CUDA && o->params[i]->grad;
    if (!any) return 0;
    static ct_cuda_sgd_step_fn sgd_fn;
    static ct_cuda_adam_step_fn adam_fn;
    if (o->kind == CT_OPTIM_SGD && !sgd_fn)
        *(void **)&sgd_fn = ct_cuda_plugin_symbol("ct_cuda_sgd_step");
    if (o->kind != CT_OPTIM_SGD && !adam_fn)
        *(void **)&adam_fn = ct_cuda_plugin_symbol("ct_cuda_adam_step");
    if (o->kind == CT_OPTIM_SGD ? !sgd_fn : !adam_fn) return 0;
    for (int i = 0; i < o->n; i++) {
        ct_tensor *p = o->params[i], *g = p->grad;
        if (p->storage->device.type != CT_CUDA || !g || !ct_is_contiguous(p) ||
            !ct_is_contiguous(g) || g->dtype != p->dtype || !ct_same_device(g, p) ||
            !ct_same_shape(g, p))
            continue;
        int first = 0;
        if (o->kind == CT_OPTIM_SGD) {
            if (op->momentum != 0) {
                first = o->state[S_BUF0][i] == NULL;
                if (ensure_state(o, S_BUF0, i) != 0) return -1;
            }
        } else if (ensure_state(o, S_BUF0, i) || ensure_state(o, S_BUF1, i)) {
            return -1;
        }
        o->mark[i] = first ? M_PENDING_FIRST : M_PENDING;
    }
    for (int i = 0; i < o->n; i++) {
        if (o->mark[i] != M_PENDING && o->mark[i] != M_PENDING_FIRST) continue;
        const ct_tensor *pi = o->params[i];
        int k = 0;
        for (int j = i; j < o->n; j++) {
            const ct_tensor *pj = o->params[j];
            if (o->mark[j] != o->mark[i] || pj->dtype != pi->dtype || !ct_same_device(pj, pi)) continue;
            if (o->kind != CT_OPTIM_SGD && o->param_steps[j] != o->param_steps[i]) continue;
            o->gather[0][k] = o->params[j];
            o->gather[1][k] = o->params[j]->grad;
            o->gather[2][k] = o->state[S_BUF0][j];
            o->gather[3][k] = o->state[S_BUF1][j];
            k++;
        }
        int first = o->mark[i] == M_PENDING_FIRST, rc;
        int64_t step = o->param_steps[i] + 1;
        if (o->kind == CT_OPTIM_SGD)
            rc = sgd_fn(o->gather[0], o->gather[1], op->momentum != 0 ? o->gather[2] : NULL, k,
                        op->lr, op->momentum, op->dampening, op->weight_decay, op->nesterov,
                        first);
        else
            rc = adam_fn(o->gather[0], o->gather[1], o->gather[2], o->gather[3], k, op->lr,
                         op->beta1, op->beta2, op->eps, op->weight_decay,
                         o->kind == CT_OPTIM_ADAMW, step);
        if (rc) return -1;
        unsigned char m = o->mark[i];
        for (int j = i; j < o->n; j++) {
            const ct_tensor *pj = o->params[j];
            if (o->mark[j] != m || pj->dtype != pi->dtype || !ct_same_device(pj, pi)) continue;
            if (o->kind != CT_OPTIM_SGD && o->param_steps[j] != step - 1) continue;
            o->mark[j] = M_DONE;
            if (o->kind != CT_OPTIM_SGD) o->param_steps[j]++;
            ct_bump_version(o->params[j]);
        }
    }
    return 0;
}

int ct_optim_step(ct_optimizer *o) {
    if (!o) return ct_error("optimizer step: NULL optimizer");
    int prev = ct_set_grad_enabled(0);
    int rc = cuda_fused_step(o);
    for (int i = 0; i < o->n && rc == 0; i++)
        if (o->mark[i] != M_DONE) rc = step_param(o, i);
    ct_set_grad_enabled(prev);
    if (rc == 0) o->steps++;
    return rc;
}
