#include "train_common.h"
#include "cli.h"
#include "core/error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int cli_amp_parse(const char *cmd, const char *s, cli_amp *out) {
    static const char *const choices[] = {"bf16", "fp16", "off", NULL};
    if (!strcmp(s, "bf16") || !strcmp(s, "bfloat16")) out->dtype = CT_BFLOAT16;
    else if (!strcmp(s, "fp16") || !strcmp(s, "float16")) out->dtype = CT_FLOAT16;
    else if (!strcmp(s, "off") || !strcmp(s, "fp32") || !strcmp(s, "float32")) out->dtype = CT_FLOAT32;
    else return cli_choice(cmd, "--amp", s, choices);
    return 0;
}

const char *cli_amp_name(const cli_amp *amp) {
    if (!amp || amp->dtype == CT_FLOAT32) return "off";
    return amp->dtype == CT_BFLOAT16 ? "bf16" : "fp16";
}

/* Opens the autocast region of a forward pass (nothing when amp is off). */
static int amp_enter(const cli_amp *amp, ct_device dev) {
    return amp && amp->dtype != CT_FLOAT32 ? ct_autocast_push(dev.type, amp->dtype) : 0;
}
static void amp_exit(const cli_amp *amp) {
    if (amp && amp->dtype != CT_FLOAT32) ct_autocast_pop();
}

int cli_device(const char *cmd, const char *s, ct_device *out) {
    if (ct_device_parse(s, out) != 0) return cli_fail(cmd, CLI_USAGE, "--device: %s", ct_last_error());
    if (ct_device_check(*out) != 0) return cli_fail(cmd, CLI_USAGE, "--device %s: %s", s, ct_last_error());
    return 0;
}

/* Number of rows whose argmax equals the label, or -1 with the error. CPU float32 logits
 * [N, C] and int64 labels [N], both contiguous (every training step): one pass over the
 * logits, no tensors made; the first maximum wins and a NaN counts as the maximum, as in
 * ct_argmax. */
static int64_t count_correct(const ct_tensor *logits, const ct_tensor *y) {
    if (ct_device_is_host(ct_device_of(logits)) && ct_device_is_host(ct_device_of(y)) &&
        ct_dtype_of(logits) == CT_FLOAT32 && ct_dtype_of(y) == CT_INT64 && ct_ndim(logits) == 2 &&
        ct_ndim(y) == 1 && ct_size(y, 0) == ct_size(logits, 0) && ct_size(logits, 1) > 0 &&
        ct_is_contiguous(logits) && ct_is_contiguous(y)) {
        const float *p = ct_data(logits);
        const int64_t *l = ct_data(y);
        int64_t n = ct_size(logits, 0), c = ct_size(logits, 1), correct = 0;
        for (int64_t i = 0; i < n; i++) {
            const float *row = p + i * c;
            int64_t best = 0;
            float bv = row[0];
            if (bv == bv)
                for (int64_t j = 1; j < c; j++) {
                    float v = row[j];
                    if (v != v) {
                        best = j;
                        break;
                    }
                    if (v > bv) {
                        bv = v;
                        best = j;
                    }
                }
            correct += best == l[i];
        }
        return correct;
    }
    /* other dtypes or layouts */
    ct_tensor *pred = ct_argmax(logits, 1, 0);
    ct_tensor *ph = pred ? ct_to_device(pred, ct_cpu()) : NULL;
    ct_tensor *yh = ct_to_device(y, ct_cpu());
    int64_t c = ph && yh ? 0 : -1;
    if (ph && yh) {
        const int64_t *p = ct_data(ph), *l = ct_data(yh);
        for (int64_t i = 0; i < ct_numel(ph); i++) c += p[i] == l[i];
    }
    ct_free(pred);
    ct_free(ph);
    ct_free(yh);
    return c;
}

/* The loss value and the number of correct predictions of a step. On the CPU: read in
 * place. On a device: the count is computed there, (argmax(logits) == y).sum(), and packed
 * with the loss into one float32 tensor [2] (counts < 2^24 are exact in float32) brought
 * back with a single copy, so a step synchronises with the GPU once, not once per value. */
static int step_stats(const ct_tensor *logits, const ct_tensor *loss, const ct_tensor *y,
                      double *loss_val, int64_t *correct) {
    if (ct_device_is_host(ct_device_of(logits))) {
        *correct = count_correct(logits, y);
        *loss_val = ct_item(loss);
        return *correct < 0 ? -1 : 0;
    }
    const int64_t one = 1;
    int prev = ct_set_grad_enabled(0);
    ct_tensor *pred = ct_argmax(logits, 1, 0), *eq = pred ? ct_eq(pred, y) : NULL;
    ct_tensor *right = eq ? ct_sum(eq, NULL, 0, 0) : NULL;
    ct_tensor *rf = right ? ct_to_dtype(right, CT_FLOAT32) : NULL;
    ct_tensor *r1 = rf ? ct_reshape(rf, &one, 1) : NULL, *l1 = ct_reshape(loss, &one, 1);
    ct_tensor *lf = l1 ? ct_to_dtype(l1, CT_FLOAT32) : NULL;
    ct_tensor *parts[2] = {lf, r1};
    ct_tensor *packed = lf && r1 ? ct_cat(parts, 2, 0) : NULL;
    ct_tensor *host = packed ? ct_to_device(packed, ct_cpu()) : NULL;
    int rc = -1;
    if (host) {
        const float *h = ct_data(host);
        *loss_val = h[0];
        *correct = (int64_t)h[1];
        rc = 0;
    }
    ct_set_grad_enabled(prev);
    ct_free(pred), ct_free(eq), ct_free(right), ct_free(rf), ct_free(r1), ct_free(l1);
    ct_free(lf), ct_free(packed), ct_free(host);
    return rc;
}

int cli_loader_open(const ct_dataset *ds, ct_dataloader_opts *lo, ct_device dev,
                    ct_dataloader **dl, ct_device_prefetcher **pf) {
    lo->pin_memory = !ct_device_is_host(dev); /* pinned batches for a GPU's copies */
    *dl = ct_dataloader_new(ds, lo);
    *pf = *dl ? ct_device_prefetcher_new(*dl, dev) : NULL;
    if (!*pf) {
        ct_dataloader_free(*dl);
        *dl = NULL;
        return -1;
    }
    return 0;
}

int cli_train_step(ct_module *model, ct_optimizer *opt, const ct_tensor *x, const ct_tensor *y,
                   ct_device dev, const cli_amp *amp, int check_loss_first, cli_dist_step *dist,
                   train_step_result *r) {
    return cli_train_step_ex(model, opt, x, y, dev, amp, check_loss_first, dist, NULL, r);
}

/* Between backward and the step: with a GradScaler the gradients are unscaled first (its
 * step then does not unscale again), then clipped to the norm (PyTorch's AMP recipe:
 * scaler.unscale_(opt); clip_grad_norm_(...); scaler.step(opt)). 0 or -1. */
static int clip_grads(const cli_step_opts *so, const cli_amp *amp, ct_optimizer *opt) {
    if (!so || !(so->clip_grad_norm > 0)) return 0;
    if (amp && amp->scaler && ct_grad_scaler_unscale(amp->scaler, opt) != 0) return -1;
    return ct_clip_grad_norm_(so->params, so->nparams, so->clip_grad_norm, 2.0) < 0 ? -1 : 0;
}

int cli_train_step_ex(ct_module *model, ct_optimizer *opt, const ct_tensor *x, const ct_tensor *y,
                      ct_device dev, const cli_amp *amp, int check_loss_first, cli_dist_step *dist,
                      const cli_step_opts *so, train_step_result *r) {
    const double smoothing = so ? so->label_smoothing : 0.0;
    int multi = dist && dist->ddp && ct_dist_world_size() > 1;
    ct_tensor *xd = ct_to_device(x, dev), *yd = ct_to_device(y, dev);
    if (amp_enter(amp, dev) != 0) {
        ct_free(xd);
        ct_free(yd);
        return -1;
    }
    ct_tensor *logits = !xd ? NULL : multi ? ct_ddp_forward(dist->ddp, xd) : ct_module_forward(model, xd);
    ct_tensor *loss = logits && yd ? ct_cross_entropy(logits, yd, CT_REDUCTION_MEAN, smoothing, -100)
                                   : NULL;
    amp_exit(amp);
    int rc = -1, stats_done = 0;
    r->n = ct_size(x, 0);
    if (loss && multi) {
        /* the ranks agree on NaN/inf and on stopping, from flags reduced with the gradients
         * (no collective of their own): backward always runs, the update only when no rank
         * saw a NaN and none was asked to stop */
        if (step_stats(logits, loss, yd, &r->loss, &r->correct) != 0) goto out;
        int32_t flags[2] = {!isfinite(r->loss), dist->stop && *dist->stop};
        if (ct_ddp_set_flags(dist->ddp, flags, 2) != 0) goto out;
        ct_tensor *scaled = amp && amp->scaler ? ct_grad_scaler_scale(amp->scaler, loss) : NULL;
        int brc = amp && amp->scaler ? (scaled ? ct_backward(scaled, NULL, 0) : -1) : ct_backward(loss, NULL, 0);
        ct_free(scaled);
        if (brc != 0 || ct_ddp_get_flags(dist->ddp, flags, 2) != 0) goto out;
        if (flags[0] || flags[1]) {
            ct_optim_zero_grad(opt);
            if (flags[1]) dist->stopped_all = 1;
            if (flags[0] && isfinite(r->loss)) r->loss = NAN; /* another rank's loss */
            rc = flags[1] ? 2 : 1;
            goto out;
        }
        int ok = clip_grads(so, amp, opt) == 0 &&
                 (amp && amp->scaler ? ct_grad_scaler_step(amp->scaler, opt) >= 0 &&
                                           ct_grad_scaler_update(amp->scaler) == 0
                                     : ct_optim_step(opt) == 0);
        if (ok) {
            ct_optim_zero_grad(opt);
            rc = 0;
        }
        goto out;
    }
    if (loss && check_loss_first) {
        /* the figures before the update: a NaN or infinite loss leaves the weights alone */
        if (step_stats(logits, loss, yd, &r->loss, &r->correct) != 0) goto out;
        stats_done = 1;
        if (!isfinite(r->loss)) {
            ct_optim_zero_grad(opt);
            rc = 1;
            goto out;
        }
    }
    if (amp && amp->scaler && loss) {
        /* GradScaler: backward of loss * scale, a step only when every gradient is
         * finite (after unscaling), then the scale's update */
        ct_tensor *scaled = ct_grad_scaler_scale(amp->scaler, loss);
        int ok = scaled && ct_backward(scaled, NULL, 0) == 0 && clip_grads(so, amp, opt) == 0 &&
                 ct_grad_scaler_step(amp->scaler, opt) >= 0 &&
                 ct_grad_scaler_update(amp->scaler) == 0;
        ct_free(scaled);
        if (ok) {
            ct_optim_zero_grad(opt);
            rc = stats_done ? 0 : step_stats(logits, loss, yd, &r->loss, &r->correct);
        }
    } else if (loss && ct_backward(loss, NULL, 0) == 0 && clip_grads(so, amp, opt) == 0 &&
               ct_optim_step(opt) == 0) {
        ct_optim_zero_grad(opt);
        rc = stats_done ? 0 : step_stats(logits, loss, yd, &r->loss, &r->correct);
    }
out:
    ct_free(xd);
    ct_free(yd);
    ct_free(logits);
    ct_free(loss);
    return rc;
}

int cli_evaluate(ct_module *model, const ct_dataset *ds, ct_dataset_kind kind, ct_device dev,
                 int64_t batch, const cli_amp *amp, eval_result *out) {
    return cli_evaluate_sharded(model, ds, kind, dev, batch, amp, 0, 1, out);
}

int cli_evaluate_sharded(ct_module *model, const ct_dataset *ds, ct_dataset_kind kind, ct_device dev,
                         int64_t batch, const cli_amp *amp, int rank, int world, eval_result *out) {
    ct_dataloader_opts lo = ct_dataloader_default_opts();
    lo.batch_size = batch;
    lo.shuffle = 0;
    lo.num_replicas = world;
    lo.rank = rank;
    lo.shard = CT_SHARD_EXACT;
    lo.transform.normalize = 1;
    ct_dataset_default_normalization(kind, lo.transform.mean, lo.transform.std);
    ct_dataloader *dl;
    ct_device_prefetcher *pf;
    out->bad_record = 0;
    if (cli_loader_open(ds, &lo, dev, &dl, &pf) != 0) return -1;
    ct_module_eval(model);
    int prev = ct_set_grad_enabled(0);
    double loss_sum = 0;
    int64_t correct = 0, n = 0;
    ct_tensor *x, *y;
    int got, rc = 0;
    while ((got = ct_device_prefetcher_next(pf, &x, &y)) == 1) {
        ct_tensor *xd = ct_to_device(x, dev), *yd = ct_to_device(y, dev);
        ct_tensor *logits = NULL, *loss = NULL;
        if (amp_enter(amp, dev) == 0) {
            logits = xd ? ct_module_forward(model, xd) : NULL;
            loss = logits && yd ? ct_cross_entropy(logits, yd, CT_REDUCTION_SUM, 0.0, -100) : NULL;
            amp_exit(amp);
        }
        double lv = 0;
        int64_t ok = 0;
        if (!loss || step_stats(logits, loss, yd, &lv, &ok) != 0) rc = -1;
        else {
            loss_sum += lv;
            correct += ok;
            n += ct_size(x, 0);
        }
        ct_free(x); ct_free(y); ct_free(xd); ct_free(yd); ct_free(logits); ct_free(loss);
        if (rc) break;
    }
    if (got < 0) {
        rc = -1;
        out->bad_record = ct_dataloader_failed_on_bad_record(dl);
    }
    ct_set_grad_enabled(prev);
    ct_device_prefetcher_free(pf);
    ct_dataloader_free(dl);
    if (rc == 0 && world > 1) { /* the whole test set's sums */
        double v[3] = {loss_sum, (double)correct, (double)n};
        rc = ct_dist_all_reduce_buf(v, 3, CT_FLOAT64, CT_REDUCE_SUM);
        loss_sum = v[0];
        correct = (int64_t)v[1];
        n = (int64_t)v[2];
    }
    out->n = n;
    out->loss = n ? loss_sum / (double)n : 0;
    out->accuracy = n ? (double)correct / (double)n : 0;
    return rc;
}

ct_dataset *cli_dataset_load(ct_dataset_kind kind, ct_split split, const char *data_dir,
                             int64_t limit, int64_t image_size, const char *on_bad_image) {
    if (kind != CT_DATASET_IMAGEFOLDER) {
        if (image_size || on_bad_image)
            return ct_error_null("--image-size and --on-bad-image go with --dataset imagefolder; "
                                 "%s has a fixed image size and no image files",
                                 ct_dataset_name(kind));
        return ct_dataset_load(kind, split, data_dir, limit);
    }
    if (!data_dir || !data_dir[0])
        return ct_error_null("--dataset imagefolder needs --data-dir ROOT, the folder holding "
                             "train/<class>/ and val/<class>/ (see docs/data.md)");
    ct_imagefolder_opts o = ct_imagefolder_default_opts();
    if (image_size) o.image_size = (int)image_size;
    if (on_bad_image && strcmp(on_bad_image, "error") && strcmp(on_bad_image, "skip"))
        return ct_error_null("--on-bad-image %s: use error (stop, naming the file) or skip "
                             "(leave it out and count it)", on_bad_image);
    o.on_bad_image = on_bad_image && !strcmp(on_bad_image, "skip") ? CT_BAD_IMAGE_SKIP
                                                                   : CT_BAD_IMAGE_ERROR;
    return ct_imagefolder_load(data_dir, split, &o, limit);
}
