/* GradScaler: torch.amp.GradScaler's dynamic loss scaling (include/ctorch_optim.h).
 *
 * The scale and the growth tracker are host numbers (the scale rounded to float32, as
 * PyTorch's float32 scale tensor). Unscaling hands every gradient of an optimizer to the
 * amp_unscale kernel, one call per device and dtype, with a found_inf flag per device,
 * and reads the flags back once at the end. Per optimizer the scaler keeps a record of
 * the current iteration (PyTorch's _per_optimizer_states): its stage and what unscale
 * found; update combines the records and forgets them. */
#include "ctorch_optim.h"
#include "core/backend.h"
#include "core/error.h"
#include "core/tensor_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { STAGE_READY = 0, STAGE_UNSCALED, STAGE_STEPPED };

typedef struct {
    const ct_optimizer *o;
    int stage;
    int checked;   /* unscale saw at least one gradient (PyTorch: found_inf_per_device) */
    int found_inf; /* some gradient had an inf or NaN */
} opt_record;

struct ct_grad_scaler {
    int enabled;
    float scale;
    double growth_factor, backoff_factor;
    int growth_interval;
    int growth_tracker;
    int64_t steps_taken, steps_skipped;
    opt_record *rec;
    int nrec, caprec;
};

/* ------------------------------------------------------------- the kernel's op */
/* Runs the kernel over grads[idx[0..k)] (one dtype, on found_inf's device): contiguous
 * copies of non-contiguous gradients are unscaled and copied back. */
static int unscale_group(ct_tensor *const *grads, const int *idx, int k, ct_tensor *found_inf,
                         double inv_scale) {
    ct_tensor **c = calloc((size_t)k, sizeof *c);
    if (!c) return ct_error("amp_unscale: out of memory");
    int rc = 0;
    for (int m = 0; m < k && rc == 0; m++)
        rc = (c[m] = ct_data_contiguous(grads[idx[m]])) ? 0 : -1;
    if (rc == 0) {
        int (*fn)(ct_tensor *const *, int, ct_tensor *, double) =
            CT_KERNEL(found_inf, amp_unscale, "amp_unscale");
        rc = fn ? fn(c, k, found_inf, inv_scale) : -1;
    }
    for (int m = 0; m < k; m++) {
        ct_tensor *g = grads[idx[m]];
        if (rc == 0 && c[m] && c[m]->storage != g->storage) rc = ct_copy_(g, c[m]);
        if (rc == 0) ct_bump_version(g);
        ct_free(c[m]);
    }
    free(c);
    return rc;
}

static int check_unscale_args(ct_tensor *const *grads, int n, const ct_tensor *found_inf) {
    const char *op = "amp_unscale";
    if (n < 0 || (n > 0 && !grads))
        return ct_error("%s: invalid gradient list (n = %d, grads %s)", op, n,
                        grads ? "given" : "NULL");
    if (ct__check_tensor(found_inf, op)) {
        ct_error_context("found_inf");
        return -1;
    }
    if (found_inf->dtype != CT_FLOAT32 || ct_numel(found_inf) != 1)
        return ct_error("%s: found_inf must be a 1-element float32 tensor (got %s with %lld "
                        "elements); make it with ct_zeros(NULL, 0, CT_FLOAT32) on the "
                        "gradients' device", op, ct_dtype_name(found_inf->dtype),
                        (long long)ct_numel(found_inf));
    for (int i = 0; i < n; i++) {
        const ct_tensor *g = grads[i];
        if (ct__check_tensor(g, op)) {
            ct_error_context("gradient %d", i);
            return -1;
        }
        ct_dtype dt = g->dtype;
        if (dt != CT_FLOAT32 && dt != CT_FLOAT64 && dt != CT_FLOAT16 && dt != CT_BFLOAT16)
            return ct_error("%s: gradient %d has dtype %s; only float32, float64, float16 and "
                            "bfloat16 gradients can be unscaled", op, i, ct_dtype_name(dt));
        if (!ct_same_device(g, found_inf)) {
            char a[32], b[32];
            ct_device_str(ct_device_of(g), a, sizeof a);
            ct_device_str(ct_device_of(found_inf), b, sizeof b);
            return ct_error("%s: gradient %d is on %s but found_inf is on %s; unscale each "
                            "device's gradients with a found_inf on that device", op, i, a, b);
        }
    }
    return 0;
}

int ct_amp_unscale_(ct_tensor *const *grads, int n, ct_tensor *found_inf, double inv_scale) {
    if (check_unscale_args(grads, n, found_inf)) return -1;
    if (n == 0) return 0;
    int *idx = malloc(sizeof(int) * (size_t)n);
    unsigned char *done = calloc((size_t)n, 1);
    if (!idx || !done) {
        free(idx);
        free(done);
        return ct_error("amp_unscale: out of memory");
    }
    int prev = ct_set_grad_enabled(0), rc = 0;
    for (int i = 0; i < n && rc == 0; i++) { /* one kernel call per dtype */
        if (done[i]) continue;
        int k = 0;
        for (int j = i; j < n; j++)
            if (!done[j] && grads[j]->dtype == grads[i]->dtype) {
                idx[k++] = j;
                done[j] = 1;
            }
        rc = unscale_group(grads, idx, k, found_inf, (double)(float)inv_scale);
    }
    ct_set_grad_enabled(prev);
    free(idx);
    free(done);
    return rc;
}

/* ------------------------------------------------------------------ the scaler */
/* PyTorch asserts growth_factor > 1 and backoff_factor < 1; the rest keeps the scale a
 * positive float32 number. `who` names the caller in the message. */
static int validate(const char *who, double scale, double growth, double backoff,
                    int64_t interval) {
    if (!(scale > 0) || !isfinite((float)scale))
        return ct_error("%s: the scale must be a positive float32 number (got %g)", who, scale);
    if (!(growth > 1.0) || !isfinite(growth))
        return ct_error("%s: the growth factor must be > 1.0 (got %g)", who, growth);
    if (!(backoff > 0.0 && backoff < 1.0))
        return ct_error("%s: the backoff factor must be in (0, 1) (got %g)", who, backoff);
    if (interval < 1 || interval > 0x7fffffff)
        return ct_error("%s: the growth interval must be >= 1 (got %lld)", who,
                        (long long)interval);
    return 0;
}

ct_grad_scaler *ct_grad_scaler_new(const ct_grad_scaler_opts *o) {
    ct_grad_scaler_opts z = {0};
    if (!o) o = &z;
    double init = o->init_scale != 0 ? o->init_scale : 65536.0;
    double growth = o->growth_factor != 0 ? o->growth_factor : 2.0;
    double backoff = o->backoff_factor != 0 ? o->backoff_factor : 0.5;
    int interval = o->growth_interval != 0 ? o->growth_interval : 2000;
    if (!o->disabled && validate("GradScaler", init, growth, backoff, interval)) return NULL;
    ct_grad_scaler *s = calloc(1, sizeof *s);
    if (!s) return ct_error_null("GradScaler: out of memory");
    s->enabled = !o->disabled;
    s->scale = (float)init;
    s->growth_factor = growth;
    s->backoff_factor = backoff;
    s->growth_interval = interval;
    return s;
}

void ct_grad_scaler_free(ct_grad_scaler *s) {
    if (!s) return;
    free(s->rec);
    free(s);
}

ct_tensor *ct_grad_scaler_scale(ct_grad_scaler *s, const ct_tensor *loss) {
    if (!s)
        return ct_error_null("GradScaler scale: NULL scaler (make one with ct_grad_scaler_new)");
    if (ct__check_tensor(loss, "GradScaler scale")) {
        ct_error_context("the loss");
        return NULL;
    }
    if (!s->enabled) return ct_retain((ct_tensor *)loss);
    return ct_mul_scalar(loss, (double)s->scale);
}

/* The record of optimizer o for this iteration, created READY on first use. */
static opt_record *record_of(ct_grad_scaler *s, const ct_optimizer *o) {
    for (int i = 0; i < s->nrec; i++)
        if (s->rec[i].o == o) return &s->rec[i];
    if (s->nrec == s->caprec) {
        int cap = s->caprec ? 2 * s->caprec : 4;
        opt_record *r = realloc(s->rec, sizeof *r * (size_t)cap);
        if (!r) return ct_error_null("GradScaler: out of memory");
        s->rec = r;
        s->caprec = cap;
    }
    opt_record *r = &s->rec[s->nrec++];
    *r = (opt_record){o, STAGE_READY, 0, 0};
    return r;
}

/* A zeroed 0-dim float32 found_inf flag on d. */
static ct_tensor *new_flag(ct_device d) {
    ct_tensor *f = ct_empty_on(NULL, 0, CT_FLOAT32, d);
    if (f && ct_zero_(f) != 0) {
        ct_free(f);
        return NULL;
    }
    return f;
}

/* Unscales the gradients of o: one ct_amp_unscale_ per device (one kernel call per dtype),
 * then one read of each device's flag. Sets *checked (some gradient) and *found. */
static int unscale_grads(const ct_grad_scaler *s, ct_optimizer *o, int *checked, int *found) {
    const size_t cnt = (size_t)(ct_optim_num_params(o) > 0 ? ct_optim_num_params(o) : 1);
    ct_tensor **g = calloc(cnt, sizeof *g), **dev = calloc(cnt, sizeof *dev);
    ct_tensor **flags = calloc(cnt, sizeof *flags);
    int rc = g && dev && flags ? 0 : ct_error("GradScaler unscale: out of memory"), k = 0, nf = 0;
    for (int i = 0; i < ct_optim_num_params(o) && rc == 0; i++) {
        ct_tensor *gr = ct_grad(ct_optim_param(o, i));
        if (!gr) continue;
        if (gr->dtype == CT_FLOAT16) /* as PyTorch's "Attempting to unscale FP16 gradients" */
            rc = ct_error("GradScaler unscale: parameter %d has a float16 gradient, which "
                          "cannot be unscaled; keep the parameters in float32 (PyTorch refuses "
                          "float16 gradients too)", i);
        g[k++] = gr;
    }
    /* PyTorch: scale.double().reciprocal().float() */
    const double inv = (float)(1.0 / (double)s->scale);
    for (int i = 0; i < k && rc == 0; i++) {
        if (!g[i]) continue; /* unscaled with an earlier device's */
        const ct_device d = ct_device_of(g[i]);
        int m = 0;
        for (int j = i; j < k; j++)
            if (g[j] && ct_device_equal(ct_device_of(g[j]), d)) {
                dev[m++] = g[j];
                g[j] = NULL;
            }
        flags[nf] = new_flag(d);
        rc = flags[nf] ? ct_amp_unscale_(dev, m, flags[nf], inv) : -1;
        nf++;
    }
    *checked = k > 0;
    *found = 0;
    for (int f = 0; f < nf; f++) { /* the flags are read after every device has its work */
        float v = 0;
        if (rc == 0) rc = ct_copy_to_buffer(flags[f], &v, sizeof v);
        *found |= v != 0;
        ct_free(flags[f]);
    }
    free(g);
    free(dev);
    free(flags);
    return rc;
}

int ct_grad_scaler_unscale(ct_grad_scaler *s, ct_optimizer *o) {
    if (!s) return ct_error("GradScaler unscale: NULL scaler (make one with ct_grad_scaler_new)");
    if (!o) return ct_error("GradScaler unscale: NULL optimizer");
    if (!s->enabled) return 0;
    opt_record *r = record_of(s, o);
    if (!r) return -1;
    if (r->stage == STAGE_UNSCALED)
        return ct_error("GradScaler unscale: already called for this optimizer since the last "
                        "update; call ct_grad_scaler_update after ct_grad_scaler_step before "
                        "unscaling again");
    if (r->stage == STAGE_STEPPED)
        return ct_error("GradScaler unscale: called after ct_grad_scaler_step for this "
                        "optimizer; unscale before the step (or call ct_grad_scaler_update "
                        "first)");
    int checked = 0, found = 0;
    if (unscale_grads(s, o, &checked, &found)) return -1;
    r->checked = checked;
    r->found_inf = found;
    r->stage = STAGE_UNSCALED;
    return 0;
}

int ct_grad_scaler_step(ct_grad_scaler *s, ct_optimizer *o) {
    if (!s) return ct_error("GradScaler step: NULL scaler (make one with ct_grad_scaler_new)");
    if (!o) return ct_error("GradScaler step: NULL optimizer");
    if (!s->enabled) {
        if (ct_optim_step(o)) return -1;
        s->steps_taken++;
        return 1;
    }
    opt_record *r = record_of(s, o);
    if (!r) return -1;
    if (r->stage == STAGE_STEPPED)
        return ct_error("GradScaler step: already called for this optimizer since the last "
                        "update; call ct_grad_scaler_update once per iteration");
    if (r->stage == STAGE_READY && ct_grad_scaler_unscale(s, o)) return -1;
    if (!r->checked)
        return ct_error("GradScaler step: no inf checks were recorded for this optimizer: none "
                        "of its parameters has a gradient (run the backward of "
                        "ct_grad_scaler_scale(scaler, loss) first)");
    if (r->found_inf) {
        s->steps_skipped++;
        r->stage = STAGE_STEPPED;
        return 0;
    }
    if (ct_optim_step(o)) return -1;
    s->steps_taken++;
    r->stage = STAGE_STEPPED;
    return 1;
}

int ct_grad_scaler_update(ct_grad_scaler *s) {
    if (!s) return ct_error("GradScaler update: NULL scaler (make one with ct_grad_scaler_new)");
    if (!s->enabled) return 0;
    int checked = 0, found = 0;
    for (int i = 0; i < s->nrec; i++) {
        checked |= s->rec[i].checked;
        found |= s->rec[i].found_inf;
    }
    if (!checked)
        return ct_error("GradScaler update: no inf checks were recorded before update; call "
                        "ct_grad_scaler_step (or ct_grad_scaler_unscale) with an optimizer "
                        "whose parameters have gradients first");
    /* torch._amp_update_scale_ (CPU): float32 scale times a double factor */
    if (found) {
        s->scale = (float)((double)s->scale * s->backoff_factor);
        s->growth_tracker = 0;
    } else if (s->growth_tracker + 1 == s->growth_interval) {
        float grown = (float)((double)s->scale * s->growth_factor);
        if (isfinite(grown)) s->scale = grown;
        s->growth_tracker = 0;
    } else {
        s->growth_tracker++;
    }
    s->nrec = 0;
    return 0;
}

int ct_grad_scaler_update_to(ct_grad_scaler *s, double new_scale) {
    if (!s) return ct_error("GradScaler update: NULL scaler (make one with ct_grad_scaler_new)");
    if (!s->enabled) return 0;
    if (!(new_scale > 0) || !isfinite((float)new_scale))
        return ct_error("GradScaler update: the new scale must be a positive float32 number "
                        "(got %g)", new_scale);
    s->scale = (float)new_scale;
    s->nrec = 0;
    return 0;
}

/* ---------------------------------------------------------------- accessors */
double ct_grad_scaler_get_scale(const ct_grad_scaler *s) {
    return s && s->enabled ? (double)s->scale : 1.0;
}
int ct_grad_scaler_is_enabled(const ct_grad_scaler *s) { return s && s->enabled; }
int64_t ct_grad_scaler_steps_taken(const ct_grad_scaler *s) { return s ? s->steps_taken : 0; }
int64_t ct_grad_scaler_skipped_steps(const ct_grad_scaler *s) { return s ? s->steps_skipped : 0; }

int ct_grad_scaler_state_dict(const ct_grad_scaler *s, ct_grad_scaler_state *out) {
    if (!s || !out) return ct_error("GradScaler state_dict: NULL %s", s ? "output" : "scaler");
    memset(out, 0, sizeof *out);
    if (!s->enabled) return 0;
    out->scale = s->scale;
    out->growth_factor = s->growth_factor;
    out->backoff_factor = s->backoff_factor;
    out->growth_interval = s->growth_interval;
    out->growth_tracker = s->growth_tracker;
    return 0;
}

int ct_grad_scaler_load_state_dict(ct_grad_scaler *s, const ct_grad_scaler_state *st) {
    if (!s || !st) return ct_error("GradScaler load_state_dict: NULL %s", s ? "state" : "scaler");
    if (!s->enabled) return 0;
    if (st->scale == 0 && st->growth_factor == 0 && st->backoff_factor == 0 &&
        st->growth_interval == 0 && st->growth_tracker == 0)
        return ct_error("GradScaler load_state_dict: the state is empty, possibly because it "
                        "was saved from a disabled GradScaler");
    if (validate("GradScaler load_state_dict", st->scale, st->growth_factor,
                 st->backoff_factor, st->growth_interval))
        return -1;
    if (st->growth_tracker < 0 || st->growth_tracker >= st->growth_interval)
        return ct_error("GradScaler load_state_dict: _growth_tracker %lld must be in [0, "
                        "growth_interval = %lld)", (long long)st->growth_tracker,
                        (long long)st->growth_interval);
    s->scale = (float)st->scale;
    s->growth_factor = st->growth_factor;
    s->backoff_factor = st->backoff_factor;
    s->growth_interval = (int)st->growth_interval;
    s->growth_tracker = (int)st->growth_tracker;
    return 0;
}
