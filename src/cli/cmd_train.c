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
    const char *init, *save, *log_json, *amp_s;
    cli_amp amp;
    int64_t epochs, max_steps, batch_size, train_limit, test_limit, seed, threads;
    double lr, momentum, weight_decay;
    int nesterov, no_shuffle, no_scaler, deterministic;
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

/* ------------------------------------------------------------------ the run's state */
typedef struct {
    train_args a;
    ct_dataset_kind kind;
    ct_optim_kind okind;
    ct_optim_options oo;
    ct_device dev;
    ct_dataset *train, *test;
    ct_module *model;
    ct_optimizer *opt;
    ct_dataloader *dl;
    ct_device_prefetcher *pf; /* batches on the device (pinned + overlapped on CUDA) */
    text_buf log;             /* the --log-json lines so far */
    int64_t spe, total;       /* steps per epoch, steps of the whole run */
    int64_t step;             /* optimizer steps taken */
    int epochs_run, tty;
    double final_acc;
} train_run;

/* One epoch's training figures. */
typedef struct {
    double t0, train_secs, loss_sum;
    int64_t correct, seen;
} epoch_stats;

/* ------------------------------------------------------------------ options */
static int parse_args(int argc, char **argv, train_args *a) {
    cli_opt opts[] = {
        {"--model", OPT_STRING, &a->model, 0, 0, 0},
        {"--dataset", OPT_STRING, &a->dataset, 0, 0, 0},
        {"--data-dir", OPT_STRING, &a->data_dir, 0, 0, 0},
        {"--epochs", OPT_INT, &a->epochs, 1, 1e6, 0},
        {"--max-steps", OPT_INT, &a->max_steps, 1, 1e12, 0},
        {"--batch-size", OPT_INT, &a->batch_size, 1, 1 << 20, 0},
        {"--optimizer", OPT_STRING, &a->optimizer, 0, 0, 0},
        {"--lr", OPT_DOUBLE, &a->lr, 0, 1e6, 0},
        {"--momentum", OPT_DOUBLE, &a->momentum, 0, 1, 0},
        {"--weight-decay", OPT_DOUBLE, &a->weight_decay, 0, 1e6, 0},
        {"--nesterov", OPT_FLAG, &a->nesterov, 0, 0, 0},
        {"--schedule", OPT_STRING, &a->schedule, 0, 0, 0},
        {"--augment", OPT_STRING, &a->augment, 0, 0, 0},
        {"--no-shuffle", OPT_FLAG, &a->no_shuffle, 0, 0, 0},
        {"--train-limit", OPT_INT, &a->train_limit, 1, 1e12, 0},
        {"--test-limit", OPT_INT, &a->test_limit, 1, 1e12, 0},
        {"--seed", OPT_INT, &a->seed, 0, 9.2e18, 0},
        {"--threads", OPT_INT, &a->threads, 1, 1024, 0},
        {"--device", OPT_STRING, &a->device, 0, 0, 0},
        {"--init", OPT_STRING, &a->init, 0, 0, 0},
        {"--save", OPT_STRING, &a->save, 0, 0, 0},
        {"--log-json", OPT_STRING, &a->log_json, 0, 0, 0},
        {"--amp", OPT_STRING, &a->amp_s, 0, 0, 0},
        {"--no-scaler", OPT_FLAG, &a->no_scaler, 0, 0, 0},
        {"--deterministic", OPT_FLAG, &a->deterministic, 0, 0, 0},
    };
    const char *pos[1];
    int npos, rc = cli_parse("train", argc, argv, opts, (int)(sizeof opts / sizeof *opts), pos, 0, &npos);
    if (rc) return rc;
    if (!a->model) return cli_fail("train", CLI_USAGE, "--model is required (simple_cnn, mlp or resnet18)");
    if (!a->dataset) return cli_fail("train", CLI_USAGE, "--dataset is required (cifar10, mnist or fashion_mnist)");
    if ((rc = cli_choice("train", "--model", a->model, ct_model_names())) ||
        (rc = cli_choice("train", "--optimizer", a->optimizer, OPTIMIZERS)) ||
        (rc = cli_choice("train", "--schedule", a->schedule, SCHEDULES)) ||
        (rc = cli_choice("train", "--augment", a->augment, AUGMENTS)) ||
        (a->amp_s && (rc = cli_amp_parse("train", a->amp_s, &a->amp))))
        return rc;
    return CLI_OK;
}

/* The dataset, the optimizer's options, the device, threads and seed from the arguments;
 * the output paths are checked writable before any time is spent. */
static int resolve_options(train_run *r) {
    train_args *a = &r->a;
    if (ct_dataset_parse_name(a->dataset, &r->kind) != 0)
        return cli_fail("train", CLI_USAGE, "%s", ct_last_error());
    r->okind = !strcmp(a->optimizer, "sgd") ? CT_OPTIM_SGD
             : !strcmp(a->optimizer, "adam") ? CT_OPTIM_ADAM : CT_OPTIM_ADAMW;
    ct_optim_options *oo = &r->oo;
    *oo = ct_optim_default_options(r->okind);
    if (r->okind == CT_OPTIM_SGD) oo->momentum = 0.9;
    if (!isnan(a->lr)) oo->lr = a->lr;
    if (!isnan(a->momentum)) {
        if (r->okind == CT_OPTIM_SGD) oo->momentum = a->momentum;
        else oo->beta1 = a->momentum;
    }
    if (!isnan(a->weight_decay)) oo->weight_decay = a->weight_decay;
    oo->nesterov = a->nesterov;
    if (a->nesterov && r->okind != CT_OPTIM_SGD)
        return cli_fail("train", CLI_USAGE, "--nesterov applies to --optimizer sgd only");
    a->lr = oo->lr;
    int rc;
    if ((rc = cli_device("train", a->device, &r->dev))) return rc;
    if (a->threads) ct_set_num_threads((int)a->threads);
    ct_use_deterministic_algorithms(a->deterministic);
    ct_manual_seed((uint64_t)a->seed);
    if (a->save && ct_check_writable(a->save) != 0)
        return cli_fail("train", CLI_USAGE, "cannot write --save %s: %s", a->save, ct_last_error());
    if (a->log_json && ct_check_writable(a->log_json) != 0)
        return cli_fail("train", CLI_USAGE, "cannot write --log-json %s: %s", a->log_json, ct_last_error());
    return CLI_OK;
}

/* ------------------------------------------------------------------ setup */
/* The shuffled, normalised (and augmented) training batches. */
static int open_train_loader(train_run *r) {
    ct_dataloader_opts lo = ct_dataloader_default_opts();
    lo.batch_size = r->a.batch_size;
    lo.shuffle = !r->a.no_shuffle;
    lo.seed = (uint64_t)r->a.seed;
    lo.transform.normalize = 1;
    ct_dataset_default_normalization(r->kind, lo.transform.mean, lo.transform.std);
    if (!strcmp(r->a.augment, "standard")) {
        lo.transform.crop_padding = 4;
        lo.transform.hflip = 1;
    }
    if (cli_loader_open(r->train, &lo, r->dev, &r->dl, &r->pf) != 0)
        return cli_fail("train", CLI_USAGE, "%s", ct_last_error());
    r->spe = ct_dataloader_num_batches(r->dl);
    r->total = r->spe * r->a.epochs;
    if (r->a.max_steps && r->a.max_steps < r->total) r->total = r->a.max_steps;
    return CLI_OK;
}

/* Data (checked before any training time is spent), model, optimizer, batches. */
static int setup_run(train_run *r) {
    const train_args *a = &r->a;
    r->train = ct_dataset_load(r->kind, CT_SPLIT_TRAIN, a->data_dir, a->train_limit);
    if (!r->train) return cli_fail("train", CLI_USAGE, "%s", ct_last_error());
    r->test = ct_dataset_load(r->kind, CT_SPLIT_TEST, a->data_dir, a->test_limit);
    if (!r->test) return cli_fail("train", CLI_USAGE, "%s", ct_last_error());
    r->model = ct_model_create_ex(a->model, r->train->num_classes, r->train->c, r->train->h, r->train->w);
    if (!r->model) return cli_fail("train", CLI_USAGE, "%s", ct_last_error());
    if (a->init && ct_module_load(r->model, a->init) != 0)
        return cli_fail("train", CLI_USAGE, "--init: %s (pass the --model it was saved from)",
                        ct_last_error());
    if (ct_module_to(r->model, r->dev, -1) != 0)
        return cli_fail("train", CLI_RUNTIME, "moving the model to %s: %s", a->device, ct_last_error());
    int np;
    ct_tensor **params = ct_module_parameters(r->model, &np);
    r->opt = ct_optim_new(r->okind, params, np, &r->oo);
    /* float16 autocast scales the loss (PyTorch's GradScaler defaults) unless told not to */
    if (r->opt && r->a.amp.dtype == CT_FLOAT16 && !r->a.no_scaler &&
        !(r->a.amp.scaler = ct_grad_scaler_new(NULL)))
        return cli_fail("train", CLI_RUNTIME, "%s", ct_last_error());
    free(params);
    if (!r->opt) return cli_fail("train", CLI_USAGE, "%s", ct_last_error());
    r->tty = isatty(STDERR_FILENO);
    return open_train_loader(r);
}

static void print_banner(const train_run *r) {
    char gpu[300] = "", name[256];
    if (ct_device_describe(r->dev, name, sizeof name) == 0) snprintf(gpu, sizeof gpu, " (%s)", name);
    printf("training %s on %s: %lld train / %lld test images, %lld steps per epoch, %s, device "
           "%s%s, %d threads%s%s\n",
           r->a.model, ct_dataset_name(r->kind), (long long)r->train->n, (long long)r->test->n,
           (long long)r->spe, r->a.optimizer, r->a.device, gpu, ct_get_num_threads(),
           r->a.amp.dtype != CT_FLOAT32 ? ", amp " : "",
           r->a.amp.dtype != CT_FLOAT32 ? cli_amp_name(&r->a.amp) : "");
    fflush(stdout);
}

/* ------------------------------------------------------------------ one epoch */
/* The progress line on a terminal: step, running loss, images/s, time left. */
static void show_progress(const train_run *r, int64_t epoch, int64_t b, const epoch_stats *s) {
    double el = cli_now() - s->t0, ips = (double)s->seen / el;
    int64_t left = (r->spe - b) + r->spe * (r->a.epochs - epoch - 1);
    if (r->total - r->step < left) left = r->total - r->step;
    char eta[32];
    fmt_time((double)left * (double)r->a.batch_size / (ips > 0 ? ips : 1), eta, sizeof eta);
    fprintf(stderr, "\repoch %lld/%lld step %lld/%lld loss %.4f %.0f img/s left %s   ",
            (long long)epoch + 1, (long long)r->a.epochs, (long long)b, (long long)r->spe,
            s->loss_sum / (double)s->seen, ips, eta);
}

/* Trains on the epoch's batches (until the run's last step or Ctrl-C). */
static int train_epoch(train_run *r, int64_t epoch, epoch_stats *s) {
    memset(s, 0, sizeof *s);
    s->t0 = cli_now();
    ct_device_prefetcher_start_epoch(r->pf, epoch);
    ct_module_train(r->model, 1);
    int64_t b = 0;
    ct_tensor *x, *y;
    int got = 1;
    while (r->step < r->total && !g_interrupted && (got = ct_device_prefetcher_next(r->pf, &x, &y)) == 1) {
        ct_optim_set_lr(r->opt, schedule_lr(&r->a, r->step, r->spe, r->total));
        train_step_result res;
        if (cli_train_step(r->model, r->opt, x, y, r->dev, &r->a.amp, &res) != 0) {
            ct_free(x);
            ct_free(y);
            return cli_fail("train", CLI_RUNTIME, "step %lld: %s", (long long)r->step, ct_last_error());
        }
        s->loss_sum += res.loss * (double)res.n;
        s->correct += res.correct;
        s->seen += res.n;
        ct_free(x);
        ct_free(y);
        r->step++;
        b++;
        if (r->tty && (b % 10 == 0 || b == r->spe)) show_progress(r, epoch, b, s);
    }
    if (r->tty) fputc('\n', stderr);
    if (got < 0)
        return cli_fail("train", CLI_RUNTIME, "step %lld: loading the batch: %s",
                        (long long)r->step, ct_last_error());
    s->train_secs = cli_now() - s->t0;
    return CLI_OK;
}

/* Appends the epoch's row to the --log-json file (rewritten atomically); a failure is a
 * warning, the training goes on. */
static void log_epoch(train_run *r, int64_t epoch, const epoch_stats *s, const eval_result *ev,
                      double ips, double secs) {
    char *line = cli_json_line(json_pack(
        "{s:I, s:I, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o*, s:o*}", "epoch", (json_int_t)epoch + 1,
        "step", (json_int_t)r->step, "train_loss", cli_json_number(s->loss_sum / (double)s->seen, "%.6f"),
        "train_acc", cli_json_number((double)s->correct / (double)s->seen, "%.6f"),
        "test_loss", cli_json_number(ev->loss, "%.6f"), "test_acc", cli_json_number(ev->accuracy, "%.6f"),
        "lr", cli_json_number(ct_optim_get_lr(r->opt), "%.8g"),
        "images_per_sec", cli_json_number(ips, "%.1f"), "seconds", cli_json_number(secs, "%.3f"),
        /* with a GradScaler: its scale and the steps skipped so far (inf/NaN gradients) */
        "loss_scale",
        r->a.amp.scaler ? cli_json_number(ct_grad_scaler_get_scale(r->a.amp.scaler), "%.8g") : NULL,
        "amp_skipped_steps",
        r->a.amp.scaler ? json_integer(ct_grad_scaler_skipped_steps(r->a.amp.scaler)) : NULL));
    if (!line || tb_append(&r->log, line) != 0)
        fprintf(stderr, "ctorch train: warning: out of memory for the --log-json row\n");
    else if (write_atomic(r->a.log_json, &r->log) != 0)
        fprintf(stderr, "ctorch train: warning: could not write %s: %s\n", r->a.log_json, ct_last_error());
    free(line);
}

/* Evaluates on the test set and reports the epoch (stdout, --log-json). */
static int evaluate_epoch(train_run *r, int64_t epoch, const epoch_stats *s) {
    eval_result ev;
    if (cli_evaluate(r->model, r->test, r->kind, r->dev, 256, &r->a.amp, &ev) != 0)
        return cli_fail("train", CLI_RUNTIME, "evaluation: %s", ct_last_error());
    double secs = cli_now() - s->t0;
    r->epochs_run++;
    r->final_acc = ev.accuracy;
    double ips = (double)s->seen / s->train_secs;
    printf("epoch %lld/%lld train_loss %.4f train_acc %.2f%% test_loss %.4f test_acc %.2f%% "
           "lr %.5g %.0f img/s %.1fs", (long long)epoch + 1, (long long)r->a.epochs,
           s->loss_sum / (double)s->seen, 100.0 * (double)s->correct / (double)s->seen, ev.loss,
           100.0 * ev.accuracy, ct_optim_get_lr(r->opt), ips, secs);
    if (r->a.amp.scaler)
        printf(" loss_scale %g skipped %lld", ct_grad_scaler_get_scale(r->a.amp.scaler),
               (long long)ct_grad_scaler_skipped_steps(r->a.amp.scaler));
    printf("\n");
    fflush(stdout);
    if (r->a.log_json) log_epoch(r, epoch, s, &ev, ips, secs);
    return CLI_OK;
}

/* ------------------------------------------------------------------ the end */
/* Saves the weights (also after Ctrl-C) and prints the final test accuracy. */
static int finish_run(train_run *r) {
    if (g_interrupted) fprintf(stderr, "ctorch train: interrupted at step %lld\n", (long long)r->step);
    if (r->a.save) {
        const char *meta[] = {"format", "pt", "model", r->a.model, NULL};
        if (ct_module_save(r->model, r->a.save, meta) != 0)
            return cli_fail("train", CLI_RUNTIME, "saving %s: %s", r->a.save, ct_last_error());
        printf("saved weights to %s\n", r->a.save);
    }
    if (!r->epochs_run) {
        eval_result ev;
        if (cli_evaluate(r->model, r->test, r->kind, r->dev, 256, &r->a.amp, &ev) == 0) r->final_acc = ev.accuracy;
    }
    printf("final test accuracy: %.2f%%\n", 100.0 * r->final_acc);
    return CLI_OK;
}

static void free_run(train_run *r) {
    free(r->log.buf);
    ct_device_prefetcher_free(r->pf);
    ct_dataloader_free(r->dl);
    ct_optim_free(r->opt);
    ct_grad_scaler_free(r->a.amp.scaler);
    ct_module_free(r->model);
    ct_dataset_free(r->train);
    ct_dataset_free(r->test);
}

int cmd_train(int argc, char **argv) {
    train_run r = {.a = {.amp = {CT_FLOAT32}, .optimizer = "sgd", .schedule = "none", .augment = "none", .device = "cpu",
                         .epochs = 10, .batch_size = 64, .lr = NAN, .momentum = NAN,
                         .weight_decay = NAN},
                   .final_acc = NAN};
    int rc = parse_args(argc, argv, &r.a);
    if (rc == CLI_OK) rc = resolve_options(&r);
    if (rc == CLI_OK) rc = setup_run(&r);
    if (rc == CLI_OK) {
        signal(SIGINT, on_sigint);
        print_banner(&r);
        for (int64_t epoch = 0; epoch < r.a.epochs && r.step < r.total && !g_interrupted; epoch++) {
            epoch_stats s;
            if ((rc = train_epoch(&r, epoch, &s)) != CLI_OK || !s.seen) break;
            if ((rc = evaluate_epoch(&r, epoch, &s)) != CLI_OK) break;
        }
    }
    if (rc == CLI_OK) rc = finish_run(&r);
    free_run(&r);
    return rc;
}
