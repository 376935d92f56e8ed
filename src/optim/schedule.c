/* Learning-rate schedules as pure functions of the step (torch.optim.lr_scheduler). */
#include "ctorch_optim.h"
#include "core/error.h"

#include <math.h>
#include <string.h>

static const double PI = 3.14159265358979323846;

double ct_lr_step(double base_lr, int64_t step, int64_t step_size, double gamma) {
    if (step < 0) step = 0;
    if (step_size < 1) step_size = 1;
    return base_lr * pow(gamma, (double)(step / step_size));
}

double ct_lr_cosine(double base_lr, int64_t step, int64_t T_max, double eta_min) {
    if (step < 0) step = 0;
    if (T_max < 1) T_max = 1;
    return eta_min + (base_lr - eta_min) * (1 + cos(PI * (double)step / (double)T_max)) / 2;
}

double ct_lr_linear(double base_lr, int64_t step, double start_factor, double end_factor,
                    int64_t total_iters) {
    if (step < 0) step = 0;
    if (total_iters < 1) return base_lr * end_factor;
    int64_t t = step < total_iters ? step : total_iters;
    return base_lr * (start_factor + (end_factor - start_factor) * (double)t / (double)total_iters);
}

static double anneal_cos(double start, double end, double pct) {
    double cos_out = cos(PI * pct) + 1;
    return end + (start - end) / 2.0 * cos_out;
}

/* OneCycleLR's two phases: [0, pct_start*total - 1] up, then down to total - 1. */
static double onecycle(double v0, double v1, double v2, int64_t step, int64_t total_steps,
                       double pct_start) {
    if (step < 0) step = 0;
    if (total_steps < 1) total_steps = 1;
    double end1 = pct_start * (double)total_steps - 1;
    double end2 = (double)total_steps - 1;
    double s = (double)step;
    if (s <= end1) return anneal_cos(v0, v1, end1 > 0 ? s / end1 : 1.0);
    double span = end2 - end1;
    return anneal_cos(v1, v2, span > 0 ? (s - end1) / span : 1.0);
}

double ct_lr_onecycle(double max_lr, int64_t step, int64_t total_steps, double pct_start,
                      double div_factor, double final_div_factor) {
    double initial = max_lr / div_factor;
    double min_lr = initial / final_div_factor;
    return onecycle(initial, max_lr, min_lr, step, total_steps, pct_start);
}

double ct_momentum_onecycle(int64_t step, int64_t total_steps, double pct_start,
                            double base_momentum, double max_momentum) {
    return onecycle(max_momentum, base_momentum, max_momentum, step, total_steps, pct_start);
}

ct_schedule ct_schedule_default(ct_schedule_kind kind, double base_lr) {
    ct_schedule s;
    memset(&s, 0, sizeof s);
    s.kind = kind;
    s.base_lr = base_lr;
    s.step_size = 1;
    s.gamma = 0.1;
    s.T_max = 1;
    s.eta_min = 0;
    s.start_factor = 1.0 / 3;
    s.end_factor = 1.0;
    s.total_iters = 5;
    s.total_steps = 1;
    s.pct_start = 0.3;
    s.div_factor = 25;
    s.final_div_factor = 1e4;
    s.base_momentum = 0.85;
    s.max_momentum = 0.95;
    s.warmup_steps = 0;
    s.warmup_start_factor = 1.0 / 3;
    return s;
}

double ct_schedule_lr(const ct_schedule *s, int64_t step) {
    if (!s) return NAN;
    if (step < 0) step = 0;
    if (s->warmup_steps > 0) {
        if (step < s->warmup_steps)
            return ct_lr_linear(s->base_lr, step, s->warmup_start_factor, 1.0, s->warmup_steps);
        step -= s->warmup_steps;
    }
    switch (s->kind) {
    case CT_SCHED_NONE: return s->base_lr;
    case CT_SCHED_STEP: return ct_lr_step(s->base_lr, step, s->step_size, s->gamma);
    case CT_SCHED_COSINE: return ct_lr_cosine(s->base_lr, step, s->T_max, s->eta_min);
    case CT_SCHED_LINEAR:
        return ct_lr_linear(s->base_lr, step, s->start_factor, s->end_factor, s->total_iters);
    case CT_SCHED_ONECYCLE:
        return ct_lr_onecycle(s->base_lr, step, s->total_steps, s->pct_start, s->div_factor,
                              s->final_div_factor);
    }
    return s->base_lr;
}

double ct_schedule_momentum(const ct_schedule *s, int64_t step) {
    if (!s || s->kind != CT_SCHED_ONECYCLE) return NAN;
    if (s->warmup_steps > 0) {
        if (step < s->warmup_steps) return NAN;
        step -= s->warmup_steps;
    }
    return ct_momentum_onecycle(step, s->total_steps, s->pct_start, s->base_momentum,
                                s->max_momentum);
}

int ct_schedule_parse(const char *name, ct_schedule_kind *out) {
    static const struct {
        const char *n;
        ct_schedule_kind k;
    } tab[] = {{"none", CT_SCHED_NONE},     {"step", CT_SCHED_STEP},
               {"cosine", CT_SCHED_COSINE}, {"linear", CT_SCHED_LINEAR},
               {"onecycle", CT_SCHED_ONECYCLE}};
    for (size_t i = 0; name && i < sizeof tab / sizeof tab[0]; i++)
        if (!strcmp(name, tab[i].n)) {
            if (out) *out = tab[i].k;
            return 0;
        }
    return ct_error("schedule: unknown schedule \"%s\"; choose none, step, cosine, linear or "
                    "onecycle", name ? name : "(null)");
}
