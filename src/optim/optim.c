/* SGD, Adam, AdamW with torch.optim's single-tensor formulas (PyTorch 1.13).
 *
 * A step groups the parameters that have a gradient by device, dtype and step count, and
 * hands each group to its backend's fused step kernel (sgd_step / adam_step in the kernel
 * table: the CPU's loops, the CUDA plugin's multi-tensor kernels), which hold the one
 * definition of each update per backend. */
#include "ctorch_optim.h"
#include "ctorch_nn.h"
#include "core/backend.h"
#include "core/error.h"
#include "core/tensor_impl.h"

#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

enum { S_BUF0, S_BUF1, S_BUF2, S_COUNT }; /* SGD: momentum; Adam: exp_avg, exp_avg_sq, max */
enum { M_NONE = 0, M_PENDING, M_PENDING_FIRST, M_DONE }; /* step: a parameter's group mark */

struct ct_optimizer {
    ct_optim_kind kind;
    ct_optim_options o;
    int n;
    ct_tensor **params;
    ct_tensor **state[S_COUNT];
    int64_t *param_steps; /* Adam: per-parameter step count (PyTorch's state['step']) */
    int64_t steps;
    /* parameter groups (PyTorch's param_groups): group[i] is parameter i's, group_lr[g] the
     * learning rate of group g; one group unless made by ct_optim_new_groups. o.lr is
     * group 0's. */
    int ngroups;
    int *group;
    double *group_lr;
    /* step scratch (allocated once): per-parameter group mark and the gathered lists */
    unsigned char *mark;
    int *members;
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
        ct__unhold(o->params[i]);
        for (int s = 0; s < S_COUNT; s++) ct_free(o->state[s][i]);
    }
    free(o->params);
    for (int s = 0; s < S_COUNT; s++) free(o->state[s]);
    free(o->param_steps);
    free(o->group);
    free(o->group_lr);
    free(o->mark);
    free(o->members);
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
    r->group = calloc(cnt, sizeof(int));
    r->group_lr = calloc(1, sizeof(double));
    r->ngroups = 1;
    int ok = r->params && r->param_steps && r->group && r->group_lr;
    for (int s = 0; s < S_COUNT; s++) ok = (r->state[s] = calloc(cnt, sizeof(ct_tensor *))) && ok;
    ok = (r->mark = calloc(cnt, 1)) && ok;
    ok = (r->members = calloc(cnt, sizeof(int))) && ok;
    for (int s = 0; s < 5; s++) ok = (r->gather[s] = calloc(cnt, sizeof(ct_tensor *))) && ok;
    if (!ok) {
        r->n = 0;
        ct_optim_free(r);
        return ct_error_null("%s: out of memory", t);
    }
    for (int i = 0; i < n; i++) r->params[i] = ct__hold(params[i]);
    r->group_lr[0] = o.lr;
    return r;
}

ct_optimizer *ct_optim_new_groups(ct_optim_kind kind, const ct_param_group *groups, int ngroups,
                                  const ct_optim_options *opt) {
    if (ngroups < 1 || !groups)
        return ct_error_null("optimizer: at least one parameter group is needed (got %d)", ngroups);
    ct_optim_options o = opt ? *opt : ct_optim_default_options(kind);
    int n = 0;
    for (int g = 0; g < ngroups; g++) {
        if (groups[g].n < 0 || (groups[g].n > 0 && !groups[g].params))
            return ct_error_null("optimizer: parameter group %d: invalid parameter list (n = %d)",
                                 g, groups[g].n);
        double lr = groups[g].lr < 0 ? o.lr : groups[g].lr;
        if (!(lr >= 0) || !isfinite(lr))
            return ct_error_null("optimizer: parameter group %d: invalid learning rate %g", g, lr);
        n += groups[g].n;
    }
    ct_tensor **all = malloc((n > 0 ? (size_t)n : 1) * sizeof *all);
    double *lrs = malloc((size_t)ngroups * sizeof *lrs);
    if (!all || !lrs) {
        free(all);
        free(lrs);
        return ct_error_null("optimizer: out of memory");
    }
    int k = 0;
    for (int g = 0; g < ngroups; g++) {
        for (int i = 0; i < groups[g].n; i++) all[k++] = groups[g].params[i];
        lrs[g] = groups[g].lr < 0 ? o.lr : groups[g].lr;
    }
    o.lr = lrs[0];
    ct_optimizer *r = ct_optim_new(kind, all, n, &o); /* checks every parameter, duplicates too */
    free(all);
    if (!r) {
        free(lrs);
        return NULL;
    }
    free(r->group_lr);
    r->group_lr = lrs;
    r->ngroups = ngroups;
    k = 0;
    for (int g = 0; g < ngroups; g++)
        for (int i = 0; i < groups[g].n; i++) r->group[k++] = g;
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

ct_optimizer *ct_optim_sgd_opt(ct_tensor *const *params, int n, const ct_sgd_opts *so) {
    ct_sgd_opts z = {0};
    if (!so) so = &z;
    ct_optim_options o = ct_optim_default_options(CT_OPTIM_SGD);
    o.lr = so->lr != 0 ? so->lr : 1e-3;
    o.momentum = so->momentum;
    o.dampening = so->dampening;
    o.weight_decay = so->weight_decay;
    o.nesterov = so->nesterov != 0;
    o.maximize = so->maximize != 0;
    return ct_optim_new(CT_OPTIM_SGD, params, n, &o);
}

static ct_optimizer *adam_opt(ct_optim_kind k, ct_tensor *const *params, int n,
                              const ct_adam_opts *ao) {
    ct_adam_opts z = {0};
    if (!ao) ao = &z;
    ct_optim_options o = ct_optim_default_options(k); /* PyTorch's defaults */
    if (ao->lr != 0) o.lr = ao->lr;
    if (ao->betas[0] != 0 || ao->betas[1] != 0) {
        o.beta1 = ao->betas[0];
        o.beta2 = ao->betas[1];
    }
    if (ao->eps != 0) o.eps = ao->eps;
    if (ao->weight_decay != 0 || ao->no_weight_decay) o.weight_decay = ao->weight_decay;
    o.amsgrad = ao->amsgrad != 0;
    o.maximize = ao->maximize != 0;
    return ct_optim_new(k, params, n, &o);
}
ct_optimizer *ct_optim_adam_opt(ct_tensor *const *params, int n, const ct_adam_opts *o) {
    return adam_opt(CT_OPTIM_ADAM, params, n, o);
}
ct_optimizer *ct_optim_adamw_opt(ct_tensor *const *params, int n, const ct_adam_opts *o) {
    return adam_opt(CT_OPTIM_ADAMW, params, n, o);
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
    for (int g = 0; g < o->ngroups; g++) o->group_lr[g] = lr;
    return 0;
}
double ct_optim_get_lr(const ct_optimizer *o) { return o ? o->o.lr : NAN; }

int ct_optim_num_groups(const ct_optimizer *o) { return o ? o->ngroups : 0; }
int ct_optim_set_group_lr(ct_optimizer *o, int g, double lr) {
    if (!o) return ct_error("set_group_lr: NULL optimizer");
    if (g < 0 || g >= o->ngroups)
        return ct_error("%s: no parameter group %d (it has %d)", kind_title(o->kind), g, o->ngroups);
    if (!(lr >= 0)) return ct_error("%s: invalid learning rate %g (must be >= 0)", kind_title(o->kind), lr);
    o->group_lr[g] = lr;
    if (g == 0) o->o.lr = lr;
    return 0;
}
double ct_optim_get_group_lr(const ct_optimizer *o, int g) {
    return o && g >= 0 && g < o->ngroups ? o->group_lr[g] : NAN;
}
int ct_optim_param_group(const ct_optimizer *o, int i) {
    return o && i >= 0 && i < o->n ? o->group[i] : -1;
}

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
ct_tensor *ct_optim_param(const ct_optimizer *o, int i) {
    return o && i >= 0 && i < o->n ? o->params[i] : NULL;
}

ct_tensor *ct_optim_state(const ct_optimizer *o, int i, const char *name) {
    if (!o || i < 0 || i >= o->n || !name) return NULL;
    if (o->kind == CT_OPTIM_SGD) return !strcmp(name, "momentum_buffer") ? o->state[S_BUF0][i] : NULL;
    if (!strcmp(name, "exp_avg")) return o->state[S_BUF0][i];
    if (!strcmp(name, "exp_avg_sq")) return o->state[S_BUF1][i];
    if (!strcmp(name, "max_exp_avg_sq")) return o->state[S_BUF2][i];
    return NULL;
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
    o->state[s][i] = ct__own(z); /* the optimizer's, never a scope's */
    return 0;
}

/* The tensors handed to the step kernel for parameter i: the parameter, its gradient and
 * its state, contiguous. A non-contiguous parameter or gradient gets a contiguous copy
 * (step_group copies a parameter's back after the step). */
static int gather(ct_optimizer *o, int i, int k) {
    ct_tensor *p = o->params[i], *g = p->grad;
    o->gather[0][k] = ct_contiguous(p); /* grad mode is off: no graph */
    o->gather[1][k] = ct_contiguous(g);
    for (int s = 0; s < S_COUNT; s++) o->gather[2 + s][k] = o->state[s][i];
    return o->gather[0][k] && o->gather[1][k] ? 0 : -1;
}

/* Checks parameter i's gradient and creates its state; sets mark[i] to the group key. */
static int prepare(ct_optimizer *o, int i) {
    ct_tensor *p = o->params[i], *grad = p->grad;
    const ct_optim_options *op = &o->o;
    char s1[96], s2[96];
    if (ct__check_tensor(p, kind_title(o->kind)) || ct__check_tensor(grad, kind_title(o->kind))) {
        ct_error_context("parameter %d", i); /* released by the caller */
        return -1;
    }
    if (!ct_same_shape(grad, p) || grad->dtype != p->dtype || !ct_same_device(grad, p))
        return ct_error("%s: parameter %d %s %s has a gradient %s %s; they must match",
                        kind_title(o->kind), i, ct_shape_str(p, s1, sizeof s1),
                        ct_dtype_name(p->dtype), ct_shape_str(grad, s2, sizeof s2),
                        ct_dtype_name(grad->dtype));
    if (o->kind == CT_OPTIM_SGD) {
        int first = op->momentum != 0 && o->state[S_BUF0][i] == NULL;
        if (op->momentum != 0 && ensure_state(o, S_BUF0, i) != 0) return -1;
        o->mark[i] = first ? M_PENDING_FIRST : M_PENDING;
        return 0;
    }
    if (ensure_state(o, S_BUF0, i) || ensure_state(o, S_BUF1, i) ||
        (op->amsgrad && ensure_state(o, S_BUF2, i)))
        return -1;
    o->mark[i] = M_PENDING;
    return 0;
}

/* Whether parameter j steps in the same kernel call as parameter i: same device, dtype,
 * first-step flag (SGD) or step count (Adam). */
static int same_group(const ct_optimizer *o, int i, int j) {
    const ct_tensor *pi = o->params[i], *pj = o->params[j];
    return o->mark[j] == o->mark[i] && o->group[j] == o->group[i] && pj->dtype == pi->dtype &&
           ct_same_device(pj, pi) &&
           (o->kind == CT_OPTIM_SGD || o->param_steps[j] == o->param_steps[i]);
}

static int run_kernel(ct_optimizer *o, int i, int k) {
    const ct_optim_options *op = &o->o;
    ct_tensor *p0 = o->params[i];
    double lr = o->group_lr[o->group[i]];
    if (o->kind == CT_OPTIM_SGD) {
        int (*sgd)(ct_tensor *const *, ct_tensor *const *, ct_tensor *const *, int,
                   const ct_sgd_args *, int) = CT_KERNEL(p0, sgd_step, "SGD");
        ct_sgd_args a = {lr, op->momentum, op->dampening, op->weight_decay, op->nesterov,
                         op->maximize};
        return sgd ? sgd(o->gather[0], o->gather[1], op->momentum != 0 ? o->gather[2] : NULL, k,
                         &a, o->mark[i] == M_PENDING_FIRST)
                   : -1;
    }
    int (*adam)(ct_tensor *const *, ct_tensor *const *, ct_tensor *const *, ct_tensor *const *,
                ct_tensor *const *, int, const ct_adam_args *) =
        CT_KERNEL(p0, adam_step, kind_title(o->kind));
    ct_adam_args a = {lr,               op->beta1,   op->beta2,     op->eps,
                      op->weight_decay, o->kind == CT_OPTIM_ADAMW, op->amsgrad, op->maximize,
                      o->param_steps[i] + 1};
    return adam ? adam(o->gather[0], o->gather[1], o->gather[2], o->gather[3],
                       op->amsgrad ? o->gather[4] : NULL, k, &a)
                : -1;
}

/* One kernel call for the group of parameter i (every pending parameter like it). */
static int step_group(ct_optimizer *o, int i) {
    int k = 0, rc = 0;
    for (int j = i; j < o->n; j++)
        if (same_group(o, i, j)) o->members[k++] = j;
    for (int m = 0; m < k && rc == 0; m++) rc = gather(o, o->members[m], m);
    if (rc == 0) rc = run_kernel(o, i, k);
    for (int m = 0; m < k; m++) {
        int j = o->members[m];
        ct_tensor *p = o->params[j], *pc = o->gather[0][m];
        if (rc == 0 && pc != p) rc = ct_copy_(p, pc); /* a non-contiguous parameter */
        ct_free(pc);
        ct_free(o->gather[1][m]);
        o->gather[0][m] = o->gather[1][m] = NULL;
        o->mark[j] = M_DONE;
        if (rc != 0) continue;
        ct_bump_version(p);
        for (int s = 0; s < S_COUNT; s++)
            if (o->state[s][j]) ct_bump_version(o->state[s][j]);
        if (o->kind != CT_OPTIM_SGD) o->param_steps[j]++;
    }
    return rc;
}

int ct_optim_step(ct_optimizer *o) {
    if (!o) return ct_error("optimizer step: NULL optimizer");
    int prev = ct_set_grad_enabled(0);
    int rc = 0;
    memset(o->mark, M_NONE, (size_t)o->n);
    for (int i = 0; i < o->n && rc == 0; i++)
        if (o->params[i]->grad) rc = prepare(o, i);
    for (int i = 0; i < o->n && rc == 0; i++)
        if (o->mark[i] == M_PENDING || o->mark[i] == M_PENDING_FIRST) rc = step_group(o, i);
    ct_set_grad_enabled(prev);
    if (rc == 0) o->steps++;
    return rc;
}

/* ----------------------------------------------------------- state_dict */
static const char *const STATE_NAMES[2][S_COUNT] = {
    {"momentum_buffer", NULL, NULL},
    {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"},
};

ct_state_dict *ct_optim_state_dict(const ct_optimizer *o) {
    if (!o) return ct_error_null("optimizer state_dict: NULL optimizer");
    ct_state_dict *sd = ct_state_dict_new();
    if (!sd) return NULL;
    const int adam = o->kind != CT_OPTIM_SGD;
    char name[64];
    int rc = 0;
    int64_t one = 1;
    ct_tensor *steps = ct_from_data(&o->steps, &one, 0, CT_INT64);
    rc = steps ? ct_state_dict_add(sd, "steps", steps) : -1;
    ct_free(steps);
    for (int i = 0; i < o->n && rc == 0; i++) {
        for (int s = 0; s < S_COUNT && rc == 0; s++) {
            if (!STATE_NAMES[adam][s] || !o->state[s][i]) continue;
            snprintf(name, sizeof name, "state.%d.%s", i, STATE_NAMES[adam][s]);
            rc = ct_state_dict_add(sd, name, o->state[s][i]);
        }
        if (adam && rc == 0 && o->state[S_BUF0][i]) {
            ct_tensor *t = ct_from_data(&o->param_steps[i], &one, 0, CT_INT64);
            snprintf(name, sizeof name, "state.%d.step", i);
            rc = t ? ct_state_dict_add(sd, name, t) : -1;
            ct_free(t);
        }
    }
    if (rc) {
        ct_state_dict_free(sd);
        return NULL;
    }
    return sd;
}

int ct_optim_load_state_dict(ct_optimizer *o, const ct_state_dict *sd) {
    if (!o || !sd) return ct_error("optimizer load_state_dict: NULL %s", o ? "state_dict" : "optimizer");
    const int adam = o->kind != CT_OPTIM_SGD;
    char s1[96], s2[96];
    /* Check everything first: all-or-nothing. */
    for (int k = 0; k < sd->n; k++) {
        const char *name = sd->names[k];
        ct_tensor *t = sd->tensors[k];
        if (!strcmp(name, "steps")) {
            if (ct_numel(t) != 1 || t->dtype != CT_INT64)
                return ct_error("optimizer load_state_dict: 'steps' must be one int64");
            continue;
        }
        int i, used = 0;
        if (sscanf(name, "state.%d.%n", &i, &used) != 1 || used == 0 || i < 0 || i >= o->n)
            return ct_error("optimizer load_state_dict: unexpected entry '%s' for a %s over %d "
                            "parameters (was it saved from another optimizer or model?)",
                            name, kind_title(o->kind), o->n);
        const char *field = name + used;
        if (adam && !strcmp(field, "step")) {
            if (ct_numel(t) != 1 || t->dtype != CT_INT64)
                return ct_error("optimizer load_state_dict: '%s' must be one int64", name);
            continue;
        }
        int s = -1;
        for (int j = 0; j < S_COUNT; j++)
            if (STATE_NAMES[adam][j] && !strcmp(field, STATE_NAMES[adam][j])) s = j;
        if (s < 0)
            return ct_error("optimizer load_state_dict: '%s' is not %s state (saved from "
                            "another optimizer?)", name, kind_title(o->kind));
        ct_tensor *p = o->params[i];
        if (!ct_same_shape(t, p) || t->dtype != p->dtype)
            return ct_error("optimizer load_state_dict: '%s' is %s %s but parameter %d is %s %s",
                            name, ct_shape_str(t, s1, sizeof s1), ct_dtype_name(t->dtype), i,
                            ct_shape_str(p, s2, sizeof s2), ct_dtype_name(p->dtype));
    }
    /* Then replace the state: entries absent from sd become absent (not yet created). */
    for (int s = 0; s < S_COUNT; s++)
        for (int i = 0; i < o->n; i++) {
            ct_free(o->state[s][i]);
            o->state[s][i] = NULL;
        }
    for (int i = 0; i < o->n; i++) o->param_steps[i] = 0;
    o->steps = 0;
    int rc = 0;
    for (int k = 0; k < sd->n && rc == 0; k++) {
        const char *name = sd->names[k];
        ct_tensor *t = sd->tensors[k];
        ct_tensor *host = ct_to_device(t, ct_cpu());
        if (!host) return -1;
        if (!strcmp(name, "steps")) {
            o->steps = *(const int64_t *)ct_data(host);
            ct_free(host);
            continue;
        }
        int i, used = 0;
        sscanf(name, "state.%d.%n", &i, &used);
        const char *field = name + used;
        if (adam && !strcmp(field, "step")) {
            o->param_steps[i] = *(const int64_t *)ct_data(host);
            ct_free(host);
            continue;
        }
        ct_free(host);
        int s = 0;
        for (int j = 0; j < S_COUNT; j++)
            if (STATE_NAMES[adam][j] && !strcmp(field, STATE_NAMES[adam][j])) s = j;
        if ((rc = ensure_state(o, s, i)) == 0) rc = ct_copy_(o->state[s][i], t);
    }
    return rc;
}
