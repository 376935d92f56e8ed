/* ctorch train: the seed's training recipe from one command. */
#include "cli.h"
#include "ctorch.h"
#include "ctorch_data.h"
#include "ctorch_io.h"
#include "ctorch_nn.h"
#include "ctorch_optim.h"
#include "train_common.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t g_interrupted;
static void on_sigint(int sig) {
    (void)sig;
    g_interrupted = 1;
}

static const char *const OPTIMIZERS[] = {"sgd", "adam", "adamw", NULL};
static const char *const SCHEDULES[] = {"none", "step", "cosine", "onecycle", NULL};
static const char *const AUGMENTS[] = {"none", "standard", NULL};

typedef struct {
    const char *model, *dataset, *data_dir, *optimizer, *schedule, *augment, *device;
    const char *init, *save, *log_json;
    int64_t epochs, max_steps, batch_size, train_limit, test_limit, seed, threads;
    double lr, momentum, weight_decay;
    int nesterov, no_shuffle;
} train_args;

/* JSON lines kept in memory and rewritten atomically after each epoch. */
typedef struct {
    char *buf;
    size_t len, cap;
} text_buf;

static int tb_append(text_buf *t, const char *s) {
    size_t n = strlen(s);
    if (t->len + n + 1 > t->cap) {
        size_t cap = (t->len + n + 1) * 2;
        char *b = realloc(t->buf, cap);
        if (!b) return -1;
        t->buf = b;
        t->cap = cap;
    }
    memcpy(t->buf + t->len, s, n + 1);
    t->len += n;
    return 0;
}

static int write_atomic(const char *path, const text_buf *t) {
    ct_atomic_file *f = ct_atomic_open(path);
    if (!f) return -1;
    if (t->len) fwrite(t->buf, 1, t->len, f->fp);
    return ct_atomic_commit(f);
}

static double schedule_lr(const train_args *a, int64_t step, int64_t steps_per_epoch, int64_t total) {
    if (!strcmp(a->schedule, "step"))
        return ct_lr_step(a->lr, step, steps_per_epoch * (a->epochs >= 3 ? a->epochs / 3 : 1), 0.1);
    if (!strcmp(a->schedule, "cosine")) return ct_lr_cosine(a->lr, step, total, 0.0);
    if (!strcmp(a->schedule, "onecycle")) return ct_lr_onecycle(a->lr, step, total, 0.3, 25.0, 1e4);
    return a->lr;
}

static void fmt_time(double s, char *buf, size_t n) {
    int t = (int)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60);
    else snprintf(buf, n, "%d:%02d", t / 60, t % 60);
}

int cmd_train(int argc, char **argv) {
    train_args a = {.optimizer = "sgd", .schedule = "none", .augment = "none", .device = "cpu",
                    .epochs = 10, .batch_size = 64, .lr = NAN, .momentum = NAN,
                    .weight_decay = NAN};
    cli_opt opts[] = {
        {"--model", OPT_STRING, &a.model, 0, 0, 0},
        {"--dataset", OPT_STRING, &a.dataset, 0, 0, 0},
        {"--data-dir", OPT_STRING, &a.data_dir, 0, 0, 0},
        {"--epochs", OPT_INT, &a.epochs, 1, 1e6, 0},
        {"--max-steps", OPT_INT, &a.max_steps, 1, 1e12, 0},
        {"--batch-size", OPT_INT, &a.batch_size, 1, 1 << 20, 0},
        {"--optimizer", OPT_STRING, &a.optimizer, 0, 0, 0},
        {"--lr", OPT_DOUBLE, &a.lr, 0, 1e6, 0},
        {"--momentum", OPT_DOUBLE, &a.momentum, 0, 1, 0},
        {"--weight-decay", OPT_DOUBLE, &a.weight_decay, 0, 1e6, 0},
        {"--nesterov", OPT_FLAG, &a.nesterov, 0, 0, 0},
        {"--schedule", OPT_STRING, &a.schedule, 0, 0, 0},
        {"--augment", OPT_STRING, &a.augment, 0, 0, 0},
        {"--no-shuffle", OPT_FLAG, &a.no_shuffle, 0, 0, 0},
        {"--train-limit", OPT_INT, &a.train_limit, 1, 1e12, 0},
        {"--test-limit", OPT_INT, &a.test_limit, 1, 1e12, 0},
        {"--seed", OPT_INT, &a.seed, 0, 9.2e18, 0},
        {"--threads", OPT_INT, &a.threads, 1, 1024, 0},
        {"--device", OPT_STRING, &a.device, 0, 0, 0},
        {"--init", OPT_STRING, &a.init, 0, 0, 0},
        {"--save", OPT_STRING, &a.save, 0, 0, 0},
        {"--log-json", OPT_STRING, &a.log_json, 0, 0, 0},
    };
    const char *pos[1];
    int npos, rc = cli_parse("train", argc, argv, opts, (int)(sizeof opts / sizeof *opts), pos, 0, &npos);
    if (rc) return rc;
    if (!a.model) return cli_fail("train", CLI_USAGE, "--model is required (simple_cnn, mlp or resnet18)");
    if (!a.dataset) return cli_fail("train", CLI_USAGE, "--dataset is required (cifar10, mnist or fashion_mnist)");
    if ((rc = cli_choice("train", "--model", a.model, ct_model_names())) ||
        (rc = cli_choice("train", "--optimizer", a.optimizer, OPTIMIZERS)) ||
        (rc = cli_choice("train", "--schedule", a.schedule, SCHEDULES)) ||
        (rc = cli_choice("train", "--augment", a.augment, AUGMENTS)))
        return rc;
    ct_dataset_kind kind;
    if (ct_dataset_parse_name(a.dataset, &kind) != 0)
        return cli_fail("train", CLI_USAGE, "%s", ct_last_error());
    ct_optim_kind okind = !strcmp(a.optimizer, "sgd") ? CT_OPTIM_SGD
                        : !strcmp(a.optimizer, "adam") ? CT_OPTIM_ADAM : CT_OPTIM_ADAMW;
    ct_optim_options oo = ct_optim_default_options(okind);
    if (okind == CT_OPTIM_SGD) oo.momentum = 0.9;
    if (!isnan(a.lr)) oo.lr = a.lr;
    if (!isnan(a.momentum)) {
        if (okind == CT_OPTIM_SGD) oo.momentum = a.momentum;
        else oo.beta1 = a.momentum;
    }
    if (!isnan(a.weight_decay)) oo.weight_decay = a.weight_decay;
    oo.nesterov = a.nesterov;
    if (a.nesterov && okind != CT_OPTIM_SGD)
        return cli_fail("train", CLI_USAGE, "--nesterov applies to --optimizer sgd only");
    a.lr = oo.lr;
    ct_device dev;
    if ((rc = cli_device("train", a.device, &dev))) return rc;
    if (a.threads) ct_set_num_threads((int)a.threads);
    ct_manual_seed((uint64_t)a.seed);
    if (a.save && ct_check_writable(a.save) != 0)
        return cli_fail("train", CLI_USAGE, "cannot write --save %s: %s", a.save, ct_last_error());
    if (a.log_json && ct_check_writable(a.log_json) != 0)
        return cli_fail("train", CLI_USAGE, "cannot write --log-json %s: %s", a.log_json, ct_last_error());

    /* Data (checked before any training time is spent). */
    ct_dataset *train = ct_dataset_load(kind, CT_SPLIT_TRAIN, a.data_dir, a.train_limit);
    if (!train) return cli_fail("train", CLI_USAGE, "%s", ct_last_error());
    ct_dataset *test = ct_dataset_load(kind, CT_SPLIT_TEST, a.data_dir, a.test_limit);
    if (!test) {
        ct_dataset_free(train);
        return cli_fail("train", CLI_USAGE, "%s", ct_last_error());
    }
    ct_module *model = ct_model_create_ex(a.model, train->num_classes, train->c, train->h, train->w);
    ct_optimizer *opt = NULL;
    ct_dataloader *dl = NULL;
    ct_device_prefetcher *pf = NULL; /* batches on the device (pinned + overlapped on CUDA) */
    text_buf log = {0};
    int exit_code = CLI_OK;
    if (!model) {
        exit_code = cli_fail("train", CLI_USAGE, "%s", ct_last_error());
        goto done;
    }
    if (a.init && ct_module_load(model, a.init) != 0) {
        exit_code = cli_fail("train", CLI_USAGE, "--init: %s", ct_last_error());
        goto done;
    }
    if (dev.type != CT_CPU && ct_module_to(model, dev, -1) != 0) {
        exit_code = cli_fail("train", CLI_RUNTIME, "moving the model to %s: %s", a.device, ct_last_error());
        goto done;
    }
    int np;
    ct_tensor **params = ct_module_parameters(model, &np);
    opt = ct_optim_new(okind, params, np, &oo);
    free(params);
    if (!opt) {
        exit_code = cli_fail("train", CLI_USAGE, "%s", ct_last_error());
        goto done;
    }
    ct_dataloader_opts lo = ct_dataloader_default_opts();
    lo.batch_size = a.batch_size;
    lo.shuffle = !a.no_shuffle;
    lo.seed = (uint64_t)a.seed;
    lo.transform.normalize = 1;
    ct_dataset_default_normalization(kind, lo.transform.mean, lo.transform.std);
    if (!strcmp(a.augment, "standard")) {
        lo.transform.crop_padding = 4;
        lo.transform.hflip = 1;
    }
    if (cli_loader_open(train, &lo, dev, &dl, &pf) != 0) {
        exit_code = cli_fail("train", CLI_USAGE, "%s", ct_last_error());
        goto done;
    }
    int64_t spe = ct_dataloader_num_batches(dl);
    int64_t total = spe * a.epochs;
    if (a.max_steps && a.max_steps < total) total = a.max_steps;
    int tty = isatty(STDERR_FILENO);
    signal(SIGINT, on_sigint);
    char gpu[300] = "";
    if (dev.type == CT_CUDA) {
        char name[256];
        if (ct_cuda_device_name(dev.index, name, sizeof name) == 0)
            snprintf(gpu, sizeof gpu, " (%s)", name);
    }
    printf("training %s on %s: %lld train / %lld test images, %lld steps per epoch, %s, device "
           "%s%s, %d threads\n",
           a.model, ct_dataset_name(kind), (long long)train->n, (long long)test->n,
           (long long)spe, a.optimizer, a.device, gpu, ct_get_num_threads());
    fflush(stdout);
    int64_t step = 0;
    double final_acc = NAN;
    int epochs_run = 0;
    for (int64_t epoch = 0; epoch < a.epochs && step < total && !g_interrupted; epoch++) {
        double t0 = cli_now();
        ct_device_prefetcher_start_epoch(pf, epoch);
        ct_module_train(model, 1);
        double loss_sum = 0;
        int64_t correct = 0, seen = 0, b = 0;
        ct_tensor *x, *y;
        int got = 1;
        while (step < total && !g_interrupted && (got = ct_device_prefetcher_next(pf, &x, &y)) == 1) {
            ct_optim_set_lr(opt, schedule_lr(&a, step, spe, total));
            train_step_result r;
            if (cli_train_step(model, opt, x, y, dev, &r) != 0) {
                ct_free(x);
                ct_free(y);
                exit_code = cli_fail("train", CLI_RUNTIME, "step %lld: %s", (long long)step, ct_last_error());
                goto done;
            }
            loss_sum += r.loss * (double)r.n;
            correct += r.correct;
            seen += r.n;
            ct_free(x);
            ct_free(y);
            step++;
            b++;
            if (tty && (b % 10 == 0 || b == spe)) {
                double el = cli_now() - t0, ips = (double)seen / el;
                int64_t left = (spe - b) + spe * (a.epochs - epoch - 1);
                if (total - step < left) left = total - step;
                char eta[32];
                fmt_time((double)left * (double)a.batch_size / (ips > 0 ? ips : 1), eta, sizeof eta);
                fprintf(stderr, "\repoch %lld/%lld step %lld/%lld loss %.4f %.0f img/s left %s   ",
                        (long long)epoch + 1, (long long)a.epochs, (long long)b, (long long)spe,
                        loss_sum / (double)seen, ips, eta);
            }
        }
        if (tty) fputc('\n', stderr);
        if (got < 0) {
            exit_code = cli_fail("train", CLI_RUNTIME, "step %lld: loading the batch: %s",
                                 (long long)step, ct_last_error());
            goto done;
        }
        double train_secs = cli_now() - t0;
        if (!seen) break;
        eval_result ev;
        if (cli_evaluate(model, test, kind, dev, 256, &ev) != 0) {
            exit_code = cli_fail("train", CLI_RUNTIME, "evaluation: %s", ct_last_error());
            goto done;
        }
        double secs = cli_now() - t0;
        epochs_run++;
        final_acc = ev.accuracy;
        double ips = (double)seen / train_secs;
        printf("epoch %lld/%lld train_loss %.4f train_acc %.2f%% test_loss %.4f test_acc %.2f%% "
               "lr %.5g %.0f img/s %.1fs\n", (long long)epoch + 1, (long long)a.epochs,
               loss_sum / (double)seen, 100.0 * (double)correct / (double)seen, ev.loss,
               100.0 * ev.accuracy, ct_optim_get_lr(opt), ips, secs);
        fflush(stdout);
        if (a.log_json) {
            char *line = cli_json_line(json_pack(
                "{s:I, s:I, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "epoch", (json_int_t)epoch + 1,
                "step", (json_int_t)step, "train_loss", cli_json_number(loss_sum / (double)seen, "%.6f"),
                "train_acc", cli_json_number((double)correct / (double)seen, "%.6f"),
                "test_loss", cli_json_number(ev.loss, "%.6f"), "test_acc", cli_json_number(ev.accuracy, "%.6f"),
                "lr", cli_json_number(ct_optim_get_lr(opt), "%.8g"),
                "images_per_sec", cli_json_number(ips, "%.1f"), "seconds", cli_json_number(secs, "%.3f")));
            if (!line || tb_append(&log, line) != 0)
                fprintf(stderr, "ctorch train: warning: out of memory for the --log-json row\n");
            else if (write_atomic(a.log_json, &log) != 0)
                fprintf(stderr, "ctorch train: warning: could not write %s: %s\n", a.log_json, ct_last_error());
            free(line);
        }
    }
    if (g_interrupted) fprintf(stderr, "ctorch train: interrupted at step %lld\n", (long long)step);
    if (a.save) {
        const char *meta[] = {"format", "pt", "model", a.model, NULL};
        if (ct_module_save(model, a.save, meta) != 0) {
            exit_code = cli_fail("train", CLI_RUNTIME, "saving %s: %s", a.save, ct_last_error());
            goto done;
        }
        printf("saved weights to %s\n", a.save);
    }
    if (!epochs_run) {
        eval_result ev;
        if (cli_evaluate(model, test, kind, dev, 256, &ev) == 0) final_acc = ev.accuracy;
    }
    printf("final test accuracy: %.2f%%\n", 100.0 * final_acc);
done:
    free(log.buf);
    ct_device_prefetcher_free(pf);
    ct_dataloader_free(dl);
    ct_optim_free(opt);
    ct_module_free(model);
    ct_dataset_free(train);
    ct_dataset_free(test);
    return exit_code;
}
