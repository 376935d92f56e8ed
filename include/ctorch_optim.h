/*
 * ctorch optim: SGD, Adam, AdamW with torch.optim's exact update formulas (PyTorch 1.13,
 * single-tensor path), and learning-rate schedules as pure functions of the step.
 *
 * An optimizer keeps references to its parameters (float32/float64 leaf tensors that
 * require grad) and its per-parameter state (momentum buffers, moments), created on the
 * first step. ct_optim_step runs in no-grad mode and updates the parameters in place;
 * parameters whose .grad is NULL are skipped, as in PyTorch. On contiguous CPU tensors
 * the update is one fused multithreaded loop over the raw buffers and allocates nothing
 * after the first step.
 *
 * Update formulas (g = grad, or -grad with maximize; p the parameter):
 *  SGD:   g += weight_decay*p; if momentum: buf = g on the first step, else
 *         buf = momentum*buf + (1-dampening)*g; g = nesterov ? g + momentum*buf : buf;
 *         p -= lr*g.
 *  Adam:  g += weight_decay*p; t += 1; m = beta1*m + (1-beta1)*g;
 *         v = beta2*v + (1-beta2)*g*g; (amsgrad: vmax = max(vmax, v), v := vmax)
 *         p -= lr/(1-beta1^t) * m / (sqrt(v)/sqrt(1-beta2^t) + eps).
 *  AdamW: p *= 1 - lr*weight_decay (decoupled), then Adam without weight_decay in g.
 */
#ifndef CTORCH_OPTIM_H
#define CTORCH_OPTIM_H

#include "ctorch.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { CT_OPTIM_SGD = 0, CT_OPTIM_ADAM, CT_OPTIM_ADAMW } ct_optim_kind;

typedef struct {
    double lr;
    double momentum, dampening; /* SGD */
    int nesterov;               /* SGD */
    double beta1, beta2, eps;   /* Adam, AdamW */
    int amsgrad;                /* Adam, AdamW */
    double weight_decay;
    int maximize;
} ct_optim_options;

typedef struct ct_optimizer ct_optimizer;

/* PyTorch's defaults: SGD lr 0.01 (PyTorch requires lr; 0.01 is ctorch's default),
 * momentum 0, dampening 0, nesterov off, weight_decay 0; Adam lr 1e-3, betas (0.9, 0.999),
 * eps 1e-8, weight_decay 0; AdamW the same with weight_decay 1e-2. */
ct_optim_options ct_optim_default_options(ct_optim_kind kind);
/* Validates the options as PyTorch does (lr >= 0, momentum >= 0, nesterov needs
 * momentum > 0 and dampening 0, betas in [0, 1), eps >= 0, weight_decay >= 0) and the
 * parameters (non-NULL float leaves requiring grad, no duplicates). The optimizer
 * retains the parameters. n may be 0. */
ct_optimizer *ct_optim_new(ct_optim_kind kind, ct_tensor *const *params, int n,
                           const ct_optim_options *o);
ct_optimizer *ct_optim_sgd(ct_tensor *const *params, int n, double lr, double momentum,
                           double dampening, double weight_decay, int nesterov);
ct_optimizer *ct_optim_adam(ct_tensor *const *params, int n, double lr, double beta1,
                            double beta2, double eps, double weight_decay);
ct_optimizer *ct_optim_adamw(ct_tensor *const *params, int n, double lr, double beta1,
                             double beta2, double eps, double weight_decay);
/* Options structs for designated initialisers: a field left 0 means PyTorch's default,
 *     ct_optim_sgd_opt(params, n, &(ct_sgd_opts){.lr = 0.05, .momentum = 0.9});
 *     ct_optim_adamw_opt(params, n, &(ct_adam_opts){.lr = 3e-4});   // NULL: all defaults
 * SGD: lr 0 -> 1e-3 (PyTorch 2's default); momentum, dampening, weight_decay, nesterov and
 * maximize default to 0. Adam/AdamW: lr 0 -> 1e-3, betas {0, 0} -> (0.9, 0.999) (set both
 * to choose them; a zero beta1 with a non-zero beta2 is taken as given), eps 0 -> 1e-8,
 * weight_decay 0 -> 0 (Adam) or 1e-2 (AdamW; no_weight_decay = 1 for none). */
typedef struct {
    double lr, momentum, dampening, weight_decay;
    int nesterov, maximize;
} ct_sgd_opts;
typedef struct {
    double lr, betas[2], eps, weight_decay;
    int amsgrad, maximize, no_weight_decay;
} ct_adam_opts;
ct_optimizer *ct_optim_sgd_opt(ct_tensor *const *params, int n, const ct_sgd_opts *o);
ct_optimizer *ct_optim_adam_opt(ct_tensor *const *params, int n, const ct_adam_opts *o);
ct_optimizer *ct_optim_adamw_opt(ct_tensor *const *params, int n, const ct_adam_opts *o);
void ct_optim_free(ct_optimizer *o); /* NULL is fine */

/* Parameter groups (PyTorch's optimizer.param_groups, learning rate per group): e.g. a
 * fine-tuning's head at 1e-2 and backbone at 1e-3,
 *     ct_param_group g[2] = {{head, nh, 1e-2}, {backbone, nb, 1e-3}};
 *     ct_optimizer *opt = ct_optim_new_groups(CT_OPTIM_SGD, g, 2, &opts);
 * Every other option is shared (opts; NULL: the kind's defaults). A group's lr < 0 takes
 * opts' lr. Parameters are numbered across the groups in order (ct_optim_param, state
 * dicts). An optimizer made by ct_optim_new has one group (0) at its options' lr.
 * ct_optim_set_lr sets every group's lr (as assigning g['lr'] in every group);
 * ct_optim_get_lr and ct_optim_options_of give group 0's. Schedules: set each group's lr
 * from its own base lr (PyTorch's schedulers scale each group's initial_lr). */
typedef struct {
    ct_tensor *const *params;
    int n;
    double lr;
} ct_param_group;
ct_optimizer *ct_optim_new_groups(ct_optim_kind kind, const ct_param_group *groups, int ngroups,
                                  const ct_optim_options *o);
int ct_optim_num_groups(const ct_optimizer *o);
int ct_optim_set_group_lr(ct_optimizer *o, int group, double lr); /* lr >= 0 */
double ct_optim_get_group_lr(const ct_optimizer *o, int group);   /* NAN when out of range */
int ct_optim_param_group(const ct_optimizer *o, int param_index); /* -1 when out of range */

/* One update of every parameter that has a gradient. */
int ct_optim_step(ct_optimizer *o);
/* Sets every parameter's .grad to NULL (PyTorch's zero_grad(set_to_none=True)). */
void ct_optim_zero_grad(ct_optimizer *o);

int ct_optim_set_lr(ct_optimizer *o, double lr); /* lr >= 0 */
double ct_optim_get_lr(const ct_optimizer *o);
/* SGD: momentum; Adam/AdamW: beta1 (what OneCycleLR cycles). */
int ct_optim_set_momentum(ct_optimizer *o, double momentum);
double ct_optim_get_momentum(const ct_optimizer *o);
const ct_optim_options *ct_optim_options_of(const ct_optimizer *o);
ct_optim_kind ct_optim_kind_of(const ct_optimizer *o);
const char *ct_optim_name(ct_optim_kind kind); /* "sgd", "adam", "adamw" */
int64_t ct_optim_steps(const ct_optimizer *o); /* ct_optim_step calls so far */
int ct_optim_num_params(const ct_optimizer *o);
/* Parameter i (0 <= i < ct_optim_num_params), BORROWED; NULL when out of range. */
ct_tensor *ct_optim_param(const ct_optimizer *o, int i);
/* Per-parameter state, BORROWED, NULL when not (yet) created: "momentum_buffer" (SGD),
 * "exp_avg", "exp_avg_sq", "max_exp_avg_sq" (Adam/AdamW). */
ct_tensor *ct_optim_state(const ct_optimizer *o, int param_index, const char *name);
/* The optimizer's state for a checkpoint (PyTorch's optimizer.state_dict()["state"]):
 * "state.<i>.momentum_buffer" (SGD), "state.<i>.exp_avg" / "exp_avg_sq" / "max_exp_avg_sq"
 * and "state.<i>.step" (int64, Adam/AdamW), and "steps" (int64, ct_optim_steps). The
 * tensors are the optimizer's own (retained), so save the dictionary before the next
 * step. Free with ct_state_dict_free (ctorch_nn.h). */
struct ct_state_dict;
struct ct_state_dict *ct_optim_state_dict(const ct_optimizer *o);
/* Restores a state saved by ct_optim_state_dict into an optimizer of the same kind over
 * parameters of the same shapes (values copied to each parameter's device). All or
 * nothing: an entry of another optimizer, an index or shape that does not match leaves
 * the optimizer unchanged and names the entry. Hyper-parameters (lr, momentum...) are
 * the optimizer's own, as in PyTorch's param_groups: set them as they were. */
int ct_optim_load_state_dict(ct_optimizer *o, const struct ct_state_dict *sd);

/* ------------------------------------------------------------- schedules
 * Pure functions of `step` (the number of optimizer steps taken so far, from 0): the lr
 * to use for the next step, equal to what torch.optim.lr_scheduler gives after `step`
 * calls of scheduler.step() (PyTorch's recursive forms agree with these closed forms up
 * to rounding). Call ct_optim_set_lr(o, ct_schedule_lr(&s, step)) before each step. */

/* StepLR: base_lr * gamma^floor(step / step_size). */
double ct_lr_step(double base_lr, int64_t step, int64_t step_size, double gamma);
/* CosineAnnealingLR: eta_min + (base_lr - eta_min) * (1 + cos(pi * step / T_max)) / 2. */
double ct_lr_cosine(double base_lr, int64_t step, int64_t T_max, double eta_min);
/* LinearLR (linear warm-up): base_lr * (start + (end - start) * min(step, total) / total). */
double ct_lr_linear(double base_lr, int64_t step, double start_factor, double end_factor,
                    int64_t total_iters);
/* OneCycleLR (anneal_strategy 'cos', two phases, three_phase False): from
 * max_lr/div_factor up to max_lr over pct_start*total_steps - 1 steps, then down to
 * max_lr/div_factor/final_div_factor at step total_steps - 1. Steps past total_steps - 1
 * keep extrapolating the last phase's cosine (PyTorch raises there instead). */
double ct_lr_onecycle(double max_lr, int64_t step, int64_t total_steps, double pct_start,
                      double div_factor, double final_div_factor);
/* OneCycleLR's momentum cycling (cycle_momentum=True): max_momentum down to base_momentum
 * in phase 1, back up in phase 2 (set it with ct_optim_set_momentum: SGD momentum or
 * Adam's beta1). */
double ct_momentum_onecycle(int64_t step, int64_t total_steps, double pct_start,
                            double base_momentum, double max_momentum);

typedef enum {
    CT_SCHED_NONE = 0, /* constant base_lr */
    CT_SCHED_STEP,
    CT_SCHED_COSINE,
    CT_SCHED_LINEAR,
    CT_SCHED_ONECYCLE
} ct_schedule_kind;

typedef struct {
    ct_schedule_kind kind;
    double base_lr;             /* OneCycle: max_lr */
    int64_t step_size;          /* STEP */
    double gamma;               /* STEP */
    int64_t T_max;              /* COSINE */
    double eta_min;             /* COSINE */
    double start_factor, end_factor; /* LINEAR */
    int64_t total_iters;        /* LINEAR */
    int64_t total_steps;        /* ONECYCLE */
    double pct_start, div_factor, final_div_factor; /* ONECYCLE */
    double base_momentum, max_momentum;             /* ONECYCLE (cycle_momentum) */
    /* Optional linear warm-up in front of any schedule (like SequentialLR of LinearLR and
     * the schedule with milestone warmup_steps): for step < warmup_steps the lr is
     * base_lr * (warmup_start_factor + (1 - warmup_start_factor) * step / warmup_steps);
     * afterwards the schedule runs at step - warmup_steps. 0 disables it. */
    int64_t warmup_steps;
    double warmup_start_factor;
} ct_schedule;

/* A schedule with PyTorch's defaults for its kind: STEP gamma 0.1, step_size 1; COSINE
 * eta_min 0, T_max 1; LINEAR start 1/3, end 1, total_iters 5; ONECYCLE pct_start 0.3,
 * div_factor 25, final_div_factor 1e4, momentum 0.85 .. 0.95, total_steps 1. */
ct_schedule ct_schedule_default(ct_schedule_kind kind, double base_lr);
double ct_schedule_lr(const ct_schedule *s, int64_t step);
/* ONECYCLE: the cycled momentum; other kinds: NAN (leave momentum alone). */
double ct_schedule_momentum(const ct_schedule *s, int64_t step);
/* "none", "step", "cosine", "linear", "onecycle" -> kind; -1 with an error otherwise. */
int ct_schedule_parse(const char *name, ct_schedule_kind *out);

/* ------------------------------------------------------------- gradient scaling
 * GradScaler: dynamic loss scaling for mixed-precision training, with the semantics of
 * PyTorch 2's torch.amp.GradScaler (also torch.cuda.amp.GradScaler's):
 *
 *     ct_grad_scaler *sc = ct_grad_scaler_new(NULL);         // PyTorch's defaults
 *     ... per batch:
 *     ct_backward(ct_grad_scaler_scale(sc, loss), NULL, 0);  // gradients of loss * scale
 *     ct_grad_scaler_unscale(sc, opt);  // optional: to read or clip the true gradients
 *     ct_grad_scaler_step(sc, opt);     // unscales if not done; skipped on inf/NaN
 *     ct_grad_scaler_update(sc);        // backoff after inf/NaN, growth after good steps
 *     ct_optim_zero_grad(opt);
 *
 * The scale is a float32 number (as PyTorch's scale tensor), kept on the host; the
 * gradients are unscaled where they live, by the amp_unscale kernel: one call per device
 * and dtype over all of an optimizer's gradients, then one read of each device's
 * found_inf flag. Per optimizer and between two updates, unscale may run once and before
 * step, and step once (errors otherwise, as PyTorch raises); update needs a step or an
 * unscale since the last update, and combines the inf/NaN findings of every optimizer
 * used since. Unlike PyTorch, ct_grad_scaler_scale need not have been called first.
 *
 * update: when any gradient was inf/NaN, scale *= backoff_factor and the growth tracker
 * restarts at 0; otherwise the tracker counts the good step, and at growth_interval good
 * steps in a row scale *= growth_factor (kept if finite) and the tracker restarts. The
 * new scale is rounded to float32, as PyTorch's _amp_update_scale_ does.
 *
 * A disabled scaler (.disabled = 1, PyTorch's enabled=False) does nothing: scale returns
 * the loss itself (a new reference), unscale and update return 0, step is ct_optim_step
 * (1 or -1), the scale reads 1.0 and the state is empty (all zero). */
typedef struct {
    double init_scale;     /* 0 -> 65536.0 (2^16) */
    double growth_factor;  /* 0 -> 2.0; must be > 1 */
    double backoff_factor; /* 0 -> 0.5; must be in (0, 1) */
    int growth_interval;   /* 0 -> 2000; must be >= 1 */
    int disabled;          /* 1: PyTorch's enabled=False */
} ct_grad_scaler_opts;

typedef struct ct_grad_scaler ct_grad_scaler;

/* NULL: PyTorch's defaults, e.g. ct_grad_scaler_new(&(ct_grad_scaler_opts){
 * .init_scale = 1024, .growth_interval = 100}). NULL + error on invalid options. */
ct_grad_scaler *ct_grad_scaler_new(const ct_grad_scaler_opts *o);
void ct_grad_scaler_free(ct_grad_scaler *s); /* NULL is fine */
/* loss * scale, differentiable (a new reference); the loss itself when disabled. */
ct_tensor *ct_grad_scaler_scale(ct_grad_scaler *s, const ct_tensor *loss);
/* Divides the gradients of o's parameters in place by the scale (multiplies by float32
 * 1/scale, as PyTorch) and records whether any element is inf or NaN. 0 or -1. */
int ct_grad_scaler_unscale(ct_grad_scaler *s, ct_optimizer *o);
/* Unscales (if ct_grad_scaler_unscale was not called for o), then ct_optim_step(o) unless
 * a gradient was inf/NaN: 1 stepped, 0 skipped, -1 error. */
int ct_grad_scaler_step(ct_grad_scaler *s, ct_optimizer *o);
/* Adjusts the scale for the next iteration (see above) and forgets the optimizers'
 * records; 0 or -1. */
int ct_grad_scaler_update(ct_grad_scaler *s);
/* PyTorch's update(new_scale): the scale becomes new_scale (> 0, finite; rounded to
 * float32), the growth tracker is left alone, the optimizers' records are forgotten. */
int ct_grad_scaler_update_to(ct_grad_scaler *s, double new_scale);
double ct_grad_scaler_get_scale(const ct_grad_scaler *s); /* 1.0 when disabled or NULL */
int ct_grad_scaler_is_enabled(const ct_grad_scaler *s);
/* ct_grad_scaler_step calls that stepped / that skipped the step (inf/NaN gradients). */
int64_t ct_grad_scaler_steps_taken(const ct_grad_scaler *s);
int64_t ct_grad_scaler_skipped_steps(const ct_grad_scaler *s);

/* The state PyTorch's GradScaler.state_dict() holds, field for key, for checkpoints. */
typedef struct {
    double scale;            /* "scale" */
    double growth_factor;    /* "growth_factor" */
    double backoff_factor;   /* "backoff_factor" */
    int64_t growth_interval; /* "growth_interval" */
    int64_t growth_tracker;  /* "_growth_tracker": good steps since the last change */
} ct_grad_scaler_state;
/* A disabled scaler's state is all zero (PyTorch's empty dict). */
int ct_grad_scaler_state_dict(const ct_grad_scaler *s, ct_grad_scaler_state *out);
/* Validated as the options are; an empty (all-zero) state is an error, and loading into
 * a disabled scaler does nothing, as in PyTorch. */
int ct_grad_scaler_load_state_dict(ct_grad_scaler *s, const ct_grad_scaler_state *st);

/* The fused kernel behind unscale (torch._amp_foreach_non_finite_check_and_unscale_):
 * every element of grads[0..n) is multiplied in place by inv_scale (rounded to float32;
 * in the gradient's precision, float for float16/bfloat16) and found_inf (a 1-element
 * float32 tensor on the gradients' device) is set to 1 when any element was inf or NaN
 * (it is never reset to 0). Gradients: float32, float64, float16 or bfloat16, any strides,
 * all on found_inf's device; one kernel call per dtype. No autograd. 0 or -1. */
int ct_amp_unscale_(ct_tensor *const *grads, int n, ct_tensor *found_inf, double inv_scale);

/* torch.nn.utils.clip_grad_norm_ (error_if_nonfinite=False, foreach): the norm_type-norm
 * (2.0, 1.0, any p > 0, or INFINITY for the max) of the gradients of params[0..n) taken
 * together as one vector (a parameter without a gradient, or NULL, is skipped); when it
 * exceeds max_norm every gradient is scaled in place by max_norm / (total + 1e-6)
 * (clamped to 1). Returns the total norm (NaN or inf when a gradient holds one: the
 * gradients are then scaled by NaN / 0 as PyTorch does); -1 with ct_error on bad
 * arguments. */
double ct_clip_grad_norm_(ct_tensor *const *params, int n, double max_norm, double norm_type);

#ifdef __cplusplus
}
#endif
#endif /* CTORCH_OPTIM_H */
