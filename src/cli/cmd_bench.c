/* ctorch bench: training-step and inference throughput on synthetic data. */
#include "cli.h"
#include "ctorch.h"
#include "ctorch_nn.h"
#include "ctorch_optim.h"
#include "train_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cmd_bench(int argc, char **argv) {
    const char *model_name = NULL, *device = "cpu";
    int64_t batch = 0, steps = 20, threads = 0;
    int json = 0;
    cli_opt opts[] = {
        {"--model", OPT_STRING, &model_name, 0, 0, 0},
        {"--batch-size", OPT_INT, &batch, 1, 1 << 16, 0},
        {"--steps", OPT_INT, &steps, 1, 1e7, 0},
        {"--threads", OPT_INT, &threads, 1, 1024, 0},
        {"--device", OPT_STRING, &device, 0, 0, 0},
        {"--json", OPT_FLAG, &json, 0, 0, 0},
    };
    const char *pos[1];
    int npos, rc = cli_parse("bench", argc, argv, opts, (int)(sizeof opts / sizeof *opts), pos, 0, &npos);
    if (rc) return rc;
    if (!model_name || !batch)
        return cli_fail("bench", CLI_USAGE, "--model and --batch-size are required; see `ctorch help bench`");
    if ((rc = cli_choice("bench", "--model", model_name, ct_model_names()))) return rc;
    ct_device dev;
    if ((rc = cli_device("bench", device, &dev))) return rc;
    if (threads) ct_set_num_threads((int)threads);
    ct_manual_seed(0);
    int mnist = !strcmp(model_name, "mlp");
    int c = mnist ? 1 : 3, hw = mnist ? 28 : 32;
    ct_module *model = ct_model_create_ex(model_name, 10, c, hw, hw);
    if (!model) return cli_fail("bench", CLI_RUNTIME, "%s", ct_last_error());
    int code = CLI_OK;
    ct_optimizer *opt = NULL;
    int64_t xs[4] = {batch, c, hw, hw};
    ct_tensor *x = ct_randn(xs, 4, CT_FLOAT32);
    ct_tensor *yf = ct_rand(&batch, 1, CT_FLOAT32);
    ct_tensor *y10 = yf ? ct_mul_scalar(yf, 10) : NULL;
    ct_tensor *y = y10 ? ct_to_dtype(y10, CT_INT64) : NULL;
    ct_tensor *xd = NULL, *yd = NULL;
    if (!y || (dev.type != CT_CPU && ct_module_to(model, dev, -1) != 0)) {
        code = cli_fail("bench", CLI_RUNTIME, "%s", ct_last_error());
        goto done;
    }
    xd = ct_to_device(x, dev);
    yd = ct_to_device(y, dev);
    int np;
    ct_tensor **params = ct_module_parameters(model, &np);
    opt = ct_optim_sgd(params, np, 0.01, 0.9, 0, 0, 0);
    free(params);
    if (!xd || !yd || !opt) {
        code = cli_fail("bench", CLI_RUNTIME, "%s", ct_last_error());
        goto done;
    }
    /* training steps: warm-up, then timed */
    ct_module_train(model, 1);
    train_step_result r;
    int64_t warm = steps < 3 ? 1 : 3;
    double t_train = 0, t_infer = 0;
    for (int64_t i = 0; i < warm + steps; i++) {
        double t0 = cli_now();
        if (cli_train_step(model, opt, xd, yd, dev, &r) != 0) {
            code = cli_fail("bench", CLI_RUNTIME, "%s", ct_last_error());
            goto done;
        }
        if (i >= warm) t_train += cli_now() - t0;
    }
    ct_module_eval(model);
    int prev = ct_set_grad_enabled(0);
    for (int64_t i = 0; i < warm + steps; i++) {
        double t0 = cli_now();
        ct_tensor *o = ct_module_forward(model, xd);
        /* the result must be on the host to count as done */
        ct_tensor *oh = o ? ct_to_device(o, ct_cpu()) : NULL;
        int ok = oh != NULL;
        ct_free(o);
        ct_free(oh);
        if (!ok) {
            ct_set_grad_enabled(prev);
            code = cli_fail("bench", CLI_RUNTIME, "%s", ct_last_error());
            goto done;
        }
        if (i >= warm) t_infer += cli_now() - t0;
    }
    ct_set_grad_enabled(prev);
    double tips = (double)(batch * steps) / t_train, iips = (double)(batch * steps) / t_infer;
    if (json)
        code = cli_json_print("bench", json_pack("{s:s, s:I, s:i, s:s, s:o, s:o}", "model", model_name,
                                                 "batch_size", (json_int_t)batch, "threads",
                                                 ct_get_num_threads(), "device", device,
                                                 "train_images_per_sec", cli_json_number(tips, "%.1f"),
                                                 "infer_images_per_sec", cli_json_number(iips, "%.1f")));
    else
        printf("%s batch %lld on %s (%d threads): train %.1f images/s, inference %.1f images/s\n",
               model_name, (long long)batch, device, ct_get_num_threads(), tips, iips);
done:
    ct_free(x); ct_free(yf); ct_free(y10); ct_free(y); ct_free(xd); ct_free(yd);
    ct_optim_free(opt);
    ct_module_free(model);
    return code;
}
