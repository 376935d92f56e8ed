/* ctorch bench: training-step and inference throughput on synthetic data. */
#include "cli.h"
#include "ctorch.h"
#include "ctorch_nn.h"
#include "ctorch_optim.h"
#include "train_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *model_name, *device, *amp_s;
    int64_t batch, steps, threads;
    int json;
    cli_amp amp;
} bench_args;

static int parse_args(int argc, char **argv, bench_args *a) {
    cli_opt opts[] = {
        {"--model", OPT_STRING, &a->model_name, 0, 0, 0},
        {"--batch-size", OPT_INT, &a->batch, 1, 1 << 16, 0},
        {"--steps", OPT_INT, &a->steps, 1, 1e7, 0},
        {"--threads", OPT_INT, &a->threads, 1, 1024, 0},
        {"--device", OPT_STRING, &a->device, 0, 0, 0},
        {"--json", OPT_FLAG, &a->json, 0, 0, 0},
        {"--amp", OPT_STRING, &a->amp_s, 0, 0, 0},
    };
    const char *pos[1];
    int npos, rc = cli_parse("bench", argc, argv, opts, (int)(sizeof opts / sizeof *opts), pos, 0, &npos);
    if (rc) return rc;
    if (!a->model_name || !a->batch)
        return cli_fail("bench", CLI_USAGE, "--model and --batch-size are required; see `ctorch help bench`");
    if (a->amp_s && (rc = cli_amp_parse("bench", a->amp_s, &a->amp)) != 0) return rc;
    return cli_choice("bench", "--model", a->model_name, ct_model_names());
}

/* Seconds of `steps` training steps on (xd, yd) after `warm` untimed ones. */
static int time_training(ct_module *model, ct_optimizer *opt, const ct_tensor *xd,
                         const ct_tensor *yd, ct_device dev, const cli_amp *amp, int64_t warm,
                         int64_t steps, double *secs) {
    ct_module_train(model, 1);
    train_step_result r;
    *secs = 0;
    for (int64_t i = 0; i < warm + steps; i++) {
        double t0 = cli_now();
        if (cli_train_step(model, opt, xd, yd, dev, amp, 0, NULL, &r) != 0) return -1;
        if (i >= warm) *secs += cli_now() - t0;
    }
    return 0;
}

/* Seconds of `steps` inference forwards (result back on the host) after `warm`. */
static int time_inference(ct_module *model, const ct_tensor *xd, const cli_amp *amp,
                          int64_t warm, int64_t steps, double *secs) {
    ct_module_eval(model);
    if (amp->dtype != CT_FLOAT32 && ct_autocast_push(ct_device_of(xd).type, amp->dtype) != 0)
        return -1;
    int prev = ct_set_grad_enabled(0), rc = 0;
    *secs = 0;
    for (int64_t i = 0; i < warm + steps && rc == 0; i++) {
        double t0 = cli_now();
        ct_tensor *o = ct_module_forward(model, xd);
        /* the result must be on the host to count as done */
        ct_tensor *oh = o ? ct_to_device(o, ct_cpu()) : NULL;
        if (!oh) rc = -1;
        ct_free(o);
        ct_free(oh);
        if (i >= warm) *secs += cli_now() - t0;
    }
    ct_set_grad_enabled(prev);
    if (amp->dtype != CT_FLOAT32) ct_autocast_pop();
    return rc;
}

static int report(const bench_args *a, double tips, double iips) {
    if (a->json)
        return cli_json_print("bench", json_pack("{s:s, s:I, s:i, s:s, s:s, s:o, s:o}", "model",
                                                 a->model_name, "batch_size", (json_int_t)a->batch,
                                                 "threads", ct_get_num_threads(), "device",
                                                 a->device, "amp", cli_amp_name(&a->amp),
                                                 "train_images_per_sec", cli_json_number(tips, "%.1f"),
                                                 "infer_images_per_sec", cli_json_number(iips, "%.1f")));
    printf("%s batch %lld on %s (%d threads, amp %s): train %.1f images/s, inference %.1f "
           "images/s\n",
           a->model_name, (long long)a->batch, a->device, ct_get_num_threads(),
           cli_amp_name(&a->amp), tips, iips);
    return CLI_OK;
}

int cmd_bench(int argc, char **argv) {
    bench_args a = {.device = "cpu", .steps = 20, .amp = {CT_FLOAT32}};
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc;
    ct_device dev;
    if ((rc = cli_device("bench", a.device, &dev))) return rc;
    if (a.threads) ct_set_num_threads((int)a.threads);
    ct_manual_seed(0);
    int mnist = !strcmp(a.model_name, "mlp");
    int c = mnist ? 1 : 3, hw = mnist ? 28 : 32;
    ct_module *model = ct_model_create_ex(a.model_name, 10, c, hw, hw);
    if (!model) return cli_fail("bench", CLI_RUNTIME, "%s", ct_last_error());
    int code = CLI_OK;
    ct_optimizer *opt = NULL;
    int64_t xs[4] = {a.batch, c, hw, hw};
    ct_tensor *x = ct_randn(xs, 4, CT_FLOAT32);
    ct_tensor *yf = ct_rand(&a.batch, 1, CT_FLOAT32);
    ct_tensor *y10 = yf ? ct_mul_scalar(yf, 10) : NULL;
    ct_tensor *y = y10 ? ct_to_dtype(y10, CT_INT64) : NULL;
    ct_tensor *xd = NULL, *yd = NULL;
    if (!y || ct_module_to(model, dev, -1) != 0) {
        code = cli_fail("bench", CLI_RUNTIME, "%s", ct_last_error());
        goto done;
    }
    xd = ct_to_device(x, dev);
    yd = ct_to_device(y, dev);
    int np;
    ct_tensor **params = ct_module_parameters(model, &np);
    opt = ct_optim_sgd(params, np, 0.01, 0.9, 0, 0, 0);
    free(params);
    /* float16 steps scale the loss, as a PyTorch fp16 training loop with GradScaler */
    if (a.amp.dtype == CT_FLOAT16 && !(a.amp.scaler = ct_grad_scaler_new(NULL))) {
        code = cli_fail("bench", CLI_RUNTIME, "%s", ct_last_error());
        goto done;
    }
    /* training steps, then inference: warm-up, then timed */
    int64_t warm = a.steps < 3 ? 1 : 3;
    double t_train = 0, t_infer = 0;
    if (!xd || !yd || !opt || time_training(model, opt, xd, yd, dev, &a.amp, warm, a.steps, &t_train) != 0 ||
        time_inference(model, xd, &a.amp, warm, a.steps, &t_infer) != 0) {
        code = cli_fail("bench", CLI_RUNTIME, "%s", ct_last_error());
        goto done;
    }
    code = report(&a, (double)(a.batch * a.steps) / t_train, (double)(a.batch * a.steps) / t_infer);
done:
    ct_free(x); ct_free(yf); ct_free(y10); ct_free(y); ct_free(xd); ct_free(yd);
    ct_optim_free(opt);
    ct_grad_scaler_free(a.amp.scaler);
    ct_module_free(model);
    return code;
}
