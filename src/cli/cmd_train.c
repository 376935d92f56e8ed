/* ctorch train: the seed's training recipe from one command, in a run directory that
 * survives crashes (docs/runs.md): manifest.json, metrics.jsonl, checkpoints/ with the
 * whole training state, model.safetensors and curves.svg. `--resume RUN_DIR` continues
 * from the newest valid checkpoint; with --deterministic the result is bitwise the one
 * of an uninterrupted run. */
#include "cli.h"
#include "ctorch.h"
#include "ctorch_data.h"
#include "ctorch_dist.h"
#include "ctorch_io.h"
#include "ctorch_nn.h"
#include "ctorch_optim.h"
#include "core/error.h"
#include "monitor/monitor.h"
#include "run_dir.h"
#include "run_info.h"
#include "train_common.h"

#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* SIGINT / SIGTERM (what schedulers send before preemption): finish the step, write a
 * checkpoint, print the resume command, exit 0. A second signal ends the process at once. */
static volatile sig_atomic_t g_interrupted;
static void on_signal(int sig) {
    if (g_interrupted) {
        static const char msg[] = "\nctorch train: second signal; stopping now without a checkpoint\n";
        if (write(STDERR_FILENO, msg, sizeof msg - 1)) {}
        _exit(128 + sig);
    }
    g_interrupted = sig;
}

static const char *const OPTIMIZERS[] = {"sgd", "adam", "adamw", NULL};
static const char *const SCHEDULES[] = {"none", "step", "cosine", "onecycle", NULL};
static const char *const AUGMENTS[] = {"none", "standard", NULL};
static const char *const NAN_POLICIES[] = {"stop", "skip", NULL};

typedef struct {
    const char *model, *dataset, *data_dir, *optimizer, *schedule, *augment, *device;
    const char *init, *save, *log_json, *amp_s, *run_dir, *resume, *nan_policy;
    const char *metrics_addr, *metrics_token_file, *on_bad_image;
    const char *init_ignore, *freeze; /* comma-separated state_dict prefixes */
    cli_amp amp;
    int64_t image_size;
    int64_t epochs, max_steps, batch_size, train_limit, test_limit, seed, threads;
    int64_t checkpoint_every, keep_checkpoints, metrics_port, num_classes;
    double lr, momentum, weight_decay, bucket_mb, dist_timeout, metrics_linger, lr_backbone;
    double label_smoothing, clip_grad_norm, warmup_epochs; /* the recipe (docs/models.md) */
    int nesterov, no_shuffle, no_scaler, deterministic, no_checkpoints, sync_bn, no_overlap;
} train_args;

/* How an option relates to a run (what --resume does with it):
 *   RESULT: recorded; changing it would change the result, so --resume refuses another value
 *   FREE:   recorded; --resume may change it (where and how the run goes on)
 *   RAISE:  recorded; --resume may raise it (--epochs)
 *   LOCAL:  this invocation only (--run-dir, --resume) */
enum { RESULT, FREE, RAISE, LOCAL };

enum { NOPTS = 49 };
static int train_opts(train_args *a, cli_opt *o, int *kind) {
    const struct {
        cli_opt opt;
        int kind;
    } t[NOPTS] = {
        {{"--model", OPT_STRING, &a->model, 0, 0, 0}, RESULT},
        {{"--dataset", OPT_STRING, &a->dataset, 0, 0, 0}, RESULT},
        {{"--data-dir", OPT_STRING, &a->data_dir, 0, 0, 0}, FREE},
        {{"--image-size", OPT_INT, &a->image_size, 8, 8192, 0}, RESULT},
        {{"--on-bad-image", OPT_STRING, &a->on_bad_image, 0, 0, 0}, FREE},
        {{"--epochs", OPT_INT, &a->epochs, 1, 1e6, 0}, RAISE},
        {{"--max-steps", OPT_INT, &a->max_steps, 0, 1e12, 0}, FREE},
        {{"--batch-size", OPT_INT, &a->batch_size, 1, 1 << 20, 0}, RESULT},
        {{"--optimizer", OPT_STRING, &a->optimizer, 0, 0, 0}, RESULT},
        {{"--lr", OPT_DOUBLE, &a->lr, 0, 1e6, 0}, RESULT},
        {{"--momentum", OPT_DOUBLE, &a->momentum, 0, 1, 0}, RESULT},
        {{"--weight-decay", OPT_DOUBLE, &a->weight_decay, 0, 1e6, 0}, RESULT},
        {{"--nesterov", OPT_FLAG, &a->nesterov, 0, 0, 0}, RESULT},
        {{"--schedule", OPT_STRING, &a->schedule, 0, 0, 0}, RESULT},
        {{"--warmup-epochs", OPT_DOUBLE, &a->warmup_epochs, 0, 1e6, 0}, RESULT},
        {{"--label-smoothing", OPT_DOUBLE, &a->label_smoothing, 0, 1, 0}, RESULT},
        {{"--clip-grad-norm", OPT_DOUBLE, &a->clip_grad_norm, 0, 1e6, 0}, RESULT},
        {{"--augment", OPT_STRING, &a->augment, 0, 0, 0}, RESULT},
        {{"--no-shuffle", OPT_FLAG, &a->no_shuffle, 0, 0, 0}, RESULT},
        {{"--train-limit", OPT_INT, &a->train_limit, 0, 1e12, 0}, RESULT},
        {{"--test-limit", OPT_INT, &a->test_limit, 0, 1e12, 0}, RESULT},
        {{"--seed", OPT_INT, &a->seed, 0, 9.2e18, 0}, RESULT},
        {{"--threads", OPT_INT, &a->threads, 0, 1024, 0}, FREE},
        {{"--device", OPT_STRING, &a->device, 0, 0, 0}, RESULT},
        {{"--init", OPT_STRING, &a->init, 0, 0, 0}, RESULT},
        {{"--init-ignore", OPT_LIST, &a->init_ignore, 0, 0, 0}, RESULT},
        {{"--num-classes", OPT_INT, &a->num_classes, 1, 1e7, 0}, RESULT},
        {{"--freeze", OPT_LIST, &a->freeze, 0, 0, 0}, RESULT},
        {{"--lr-backbone", OPT_DOUBLE, &a->lr_backbone, 0, 1e6, 0}, RESULT},
        {{"--save", OPT_STRING, &a->save, 0, 0, 0}, FREE},
        {{"--log-json", OPT_STRING, &a->log_json, 0, 0, 0}, FREE},
        {{"--amp", OPT_STRING, &a->amp_s, 0, 0, 0}, RESULT},
        {{"--no-scaler", OPT_FLAG, &a->no_scaler, 0, 0, 0}, RESULT},
        {{"--deterministic", OPT_FLAG, &a->deterministic, 0, 0, 0}, RESULT},
        {{"--checkpoint-every", OPT_INT, &a->checkpoint_every, 0, 1e12, 0}, FREE},
        {{"--keep-checkpoints", OPT_INT, &a->keep_checkpoints, 1, 1e6, 0}, FREE},
        {{"--no-checkpoints", OPT_FLAG, &a->no_checkpoints, 0, 0, 0}, FREE},
        {{"--nan-policy", OPT_STRING, &a->nan_policy, 0, 0, 0}, FREE},
        {{"--sync-bn", OPT_FLAG, &a->sync_bn, 0, 0, 0}, RESULT},
        {{"--bucket-mb", OPT_DOUBLE, &a->bucket_mb, 0.001, 1e6, 0}, FREE},
        {{"--dist-timeout", OPT_DOUBLE, &a->dist_timeout, 1, 1e7, 0}, FREE},
        {{"--no-overlap", OPT_FLAG, &a->no_overlap, 0, 0, 0}, FREE},
        {{"--run-dir", OPT_STRING, &a->run_dir, 0, 0, 0}, LOCAL},
        {{"--resume", OPT_STRING, &a->resume, 0, 0, 0}, LOCAL},
        {{"--metrics-port", OPT_INT, &a->metrics_port, 0, 65535, 0}, LOCAL},
        {{"--metrics-addr", OPT_STRING, &a->metrics_addr, 0, 0, 0}, LOCAL},
        {{"--metrics-token-file", OPT_STRING, &a->metrics_token_file, 0, 0, 0}, LOCAL},
        {{"--metrics-linger", OPT_DOUBLE, &a->metrics_linger, 0, 86400, 0}, LOCAL},
        {{"--help", OPT_FLAG, NULL, 0, 0, 0}, LOCAL},
    };
    int n = 0;
    for (int i = 0; i < NOPTS; i++) {
        if (!t[i].opt.dest) continue; /* --help is handled by main */
        o[n] = t[i].opt;
        kind[n++] = t[i].kind;
    }
    return n;
}

static train_args default_args(void) {
    return (train_args){.amp = {CT_FLOAT32}, .optimizer = "sgd", .schedule = "none",
                        .augment = "none", .device = "cpu", .amp_s = "off", .nan_policy = "stop",
                        .epochs = 10, .batch_size = 64, .keep_checkpoints = 2, .lr = NAN,
                        .momentum = NAN, .weight_decay = NAN, .bucket_mb = 25, .dist_timeout = 300,
                        .metrics_port = -1, .lr_backbone = NAN, .clip_grad_norm = NAN};
}

/* "--weight-decay" -> "weight_decay" */
static void config_key(const char *opt, char *key, size_t n) {
    snprintf(key, n, "%s", opt + 2);
    for (char *p = key; *p; p++)
        if (*p == '-') *p = '_';
}

/* ------------------------------------------------------------------ the run's state */
typedef struct {
    train_args a;
    char **argv;
    int argc;
    json_t *recorded; /* --resume: the manifest (its strings back a's) */
    ct_dataset_kind kind;
    ct_optim_kind okind;
    ct_optim_options oo;
    ct_device dev;
    ct_dataset *train, *test;
    double data_wait; /* this epoch: seconds the steps waited for their batch */
    ct_module *model;
    ct_optimizer *opt;
    ct_dataloader *dl;
    ct_device_prefetcher *pf; /* batches on the device (pinned + overlapped on CUDA) */
    char *dir;                /* the run directory */
    json_t *manifest;
    json_t *rows;             /* metrics.jsonl: one object per epoch */
    char *last_ckpt;          /* newest checkpoint written or resumed from */
    int64_t last_ckpt_step, last_ckpt_epoch, last_ckpt_batch; /* and its position */
    int64_t spe, total;       /* steps per epoch, steps of the whole run */
    int64_t warmup;           /* --warmup-epochs in steps (0: none) */
    ct_tensor **params;       /* the model's parameters (--clip-grad-norm) */
    int nparams;
    int64_t step;             /* optimizer steps taken */
    int64_t epoch, batch;     /* position: the next batch to train on */
    int64_t nan_skipped;
    double ckpt_secs; /* time spent writing checkpoints (this process) */
    int tty;
    double final_acc, final_loss;
    /* data-parallel (mpirun / ctorch launch): this rank of world; rank 0 alone prints
     * and writes the run directory */
    int rank, world;
    ct_ddp *ddp;
    cli_dist_step dstep;
    int stop_agreed; /* every rank saw the stop request (a signal) */
    int legacy_resnet18; /* --resume of a run whose "resnet18" is resnet18_cifar */
    mon_monitor *mon; /* --metrics-port: the monitor the steps are published to, or NULL */
    double ddp_wait;      /* this epoch: seconds backward waited for communication */
    int64_t ddp_steps;
} train_run;

/* One epoch's training figures (kept in checkpoints, so a resumed epoch reports the
 * figures of the whole epoch). */
typedef struct {
    double t0, train_secs, loss_sum;
    int64_t correct, seen;
} epoch_stats;

/* The start factor of the linear warm-up (torchvision's reference recipe,
 * --lr-warmup-decay 0.01): the first step runs at 1% of the lr. */
#define WARMUP_START_FACTOR 0.01

/* The schedule's lr at step for a group whose base lr is lr (--lr, or --lr-backbone).
 * With warmup steps W: PyTorch's SequentialLR([LinearLR(start_factor=0.01,
 * total_iters=W), CosineAnnealingLR(T_max=total - W)], milestones=[W]) stepped per
 * optimizer step (--schedule none: a constant lr after the warm-up). */
static double schedule_lr(const train_args *a, double lr, int64_t step, int64_t steps_per_epoch,
                          int64_t total, int64_t warmup) {
    if (warmup > 0) {
        ct_schedule s = ct_schedule_default(strcmp(a->schedule, "cosine") ? CT_SCHED_NONE
                                                                          : CT_SCHED_COSINE, lr);
        s.T_max = total - warmup;
        s.eta_min = 0.0;
        s.warmup_steps = warmup;
        s.warmup_start_factor = WARMUP_START_FACTOR;
        return ct_schedule_lr(&s, step);
    }
    if (!strcmp(a->schedule, "step"))
        return ct_lr_step(lr, step, steps_per_epoch * (a->epochs >= 3 ? a->epochs / 3 : 1), 0.1);
    if (!strcmp(a->schedule, "cosine")) return ct_lr_cosine(lr, step, total, 0.0);
    if (!strcmp(a->schedule, "onecycle")) return ct_lr_onecycle(lr, step, total, 0.3, 25.0, 1e4);
    return lr;
}

static double unix_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void fmt_time(double s, char *buf, size_t n) {
    int t = (int)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60);
    else snprintf(buf, n, "%d:%02d", t / 60, t % 60);
}

/* ------------------------------------------------------------------ options */
/* The run's configuration as JSON: every recorded option, defaults filled in. */
static json_t *config_json(train_args *a) {
    cli_opt o[NOPTS];
    int kind[NOPTS], n = train_opts(a, o, kind);
    json_t *c = json_object();
    char key[64];
    for (int i = 0; c && i < n; i++) {
        if (kind[i] == LOCAL) continue;
        config_key(o[i].name, key, sizeof key);
        json_t *v = NULL;
        switch (o[i].type) {
        case OPT_FLAG: v = json_boolean(*(int *)o[i].dest); break;
        case OPT_INT: v = json_integer(*(int64_t *)o[i].dest); break;
        case OPT_DOUBLE: {
            double d = *(double *)o[i].dest; /* NAN: not given (--lr-backbone) */
            v = isnan(d) ? json_null() : json_real(d);
            break;
        }
        case OPT_STRING:
        case OPT_LIST: {
            const char *s = *(const char **)o[i].dest;
            v = s ? json_string(s) : json_null();
            break;
        }
        }
        json_object_set_new(c, key, v);
    }
    return c;
}

/* Sets a's recorded options from a config object (--resume). */
static int config_load(train_args *a, json_t *c, const char *where) {
    cli_opt o[NOPTS];
    int kind[NOPTS], n = train_opts(a, o, kind);
    char key[64];
    for (int i = 0; i < n; i++) {
        if (kind[i] == LOCAL) continue;
        config_key(o[i].name, key, sizeof key);
        json_t *v = json_object_get(c, key);
        if (!v) continue; /* an option newer than the run: its default */
        int ok = 1;
        switch (o[i].type) {
        case OPT_FLAG: ok = json_is_boolean(v); if (ok) *(int *)o[i].dest = json_is_true(v); break;
        case OPT_INT: ok = json_is_integer(v); if (ok) *(int64_t *)o[i].dest = json_integer_value(v); break;
        case OPT_DOUBLE:
            ok = json_is_number(v) || json_is_null(v);
            if (ok) *(double *)o[i].dest = json_is_null(v) ? NAN : json_number_value(v);
            break;
        case OPT_STRING:
        case OPT_LIST:
            ok = json_is_string(v) || json_is_null(v);
            if (ok) *(const char **)o[i].dest = json_is_string(v) ? json_string_value(v) : NULL;
            break;
        }
        if (!ok)
            return cli_fail("train", CLI_USAGE, "--resume: %s: config.%s has the wrong type; the "
                            "manifest was edited or damaged", where, key);
    }
    return CLI_OK;
}

static int same_value(const cli_opt *o, const void *recorded) {
    switch (o->type) {
    case OPT_FLAG: return *(const int *)o->dest == *(const int *)recorded;
    case OPT_INT: return *(const int64_t *)o->dest == *(const int64_t *)recorded;
    case OPT_DOUBLE: {
        double x = *(const double *)o->dest, y = *(const double *)recorded;
        return x == y || (isnan(x) && isnan(y));
    }
    case OPT_STRING:
    case OPT_LIST: {
        const char *x = *(const char *const *)o->dest, *y = *(const char *const *)recorded;
        return (!x && !y) || (x && y && !strcmp(x, y));
    }
    }
    return 0;
}

static void value_text(const cli_opt *o, const void *p, char *buf, size_t n) {
    switch (o->type) {
    case OPT_FLAG: snprintf(buf, n, "%s", *(const int *)p ? "on" : "off"); break;
    case OPT_INT: snprintf(buf, n, "%lld", (long long)*(const int64_t *)p); break;
    case OPT_DOUBLE: snprintf(buf, n, "%g", *(const double *)p); break;
    case OPT_STRING:
    case OPT_LIST: snprintf(buf, n, "%s", *(const char *const *)p ? *(const char *const *)p : "(none)"); break;
    }
}

/* --resume: reads RUN_DIR/manifest.json into r->recorded; its "config" or NULL + exit code. */
static json_t *read_recorded(train_run *r, int *rc) {
    const char *dir = r->a.resume;
    struct stat st;
    *rc = CLI_USAGE;
    if (r->a.run_dir) {
        cli_fail("train", CLI_USAGE, "--resume continues in the run's own directory; drop --run-dir");
        return NULL;
    }
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        cli_fail("train", CLI_USAGE, "--resume %s: no such run directory", dir);
        return NULL;
    }
    char *mp = run_path(dir, "manifest.json");
    json_error_t je;
    r->recorded = mp ? json_load_file(mp, 0, &je) : NULL;
    json_t *fv = json_object_get(r->recorded, "format_version");
    json_t *cfg = json_object_get(r->recorded, "config");
    if (!r->recorded)
        cli_fail("train", CLI_USAGE, "--resume %s: not a ctorch run directory (%s: %s)", dir,
                 mp ? mp : "manifest.json", mp && access(mp, F_OK) ? "missing" : je.text);
    else if (!json_is_integer(fv) || !json_is_object(cfg))
        cli_fail("train", CLI_USAGE, "--resume %s: %s is not a ctorch run manifest", dir, mp);
    else if (json_integer_value(fv) > RUN_FORMAT_VERSION)
        cli_fail("train", CLI_USAGE, "--resume %s: the run was written by a newer ctorch (run "
                 "format %lld, this ctorch %s reads %d); resume it with that version", dir,
                 (long long)json_integer_value(fv), CT_VERSION, RUN_FORMAT_VERSION);
    else
        *rc = CLI_OK;
    free(mp);
    return *rc == CLI_OK ? cfg : NULL;
}

/* --resume: a becomes the recorded run, with the options given on the command line that
 * may change (FREE, RAISE raised); any other given with another value is refused, each
 * named with the run's value. opts/kind describe a (as parsed). */
static int apply_recorded(train_args *a, const cli_opt *opts, const int *kind, int nopts,
                          json_t *cfg) {
    train_args rec = default_args();
    int rc = config_load(&rec, cfg, a->resume);
    if (rc != CLI_OK) return rc;
    cli_opt ro[NOPTS];
    int rkind[NOPTS];
    train_opts(&rec, ro, rkind);
    char refused[2048] = "";
    for (int i = 0; i < nopts; i++) {
        if (!opts[i].seen || kind[i] == LOCAL || kind[i] == FREE) continue;
        if (same_value(&opts[i], ro[i].dest)) continue;
        if (kind[i] == RAISE && *(int64_t *)opts[i].dest >= *(int64_t *)ro[i].dest) continue;
        char g[256], w[256], item[600];
        value_text(&opts[i], opts[i].dest, g, sizeof g);
        value_text(&ro[i], ro[i].dest, w, sizeof w);
        snprintf(item, sizeof item, "%s  %s %s (the run has %s%s)", refused[0] ? "\n" : "",
                 opts[i].name, g, w, kind[i] == RAISE ? "; it may only be raised" : "");
        strncat(refused, item, sizeof refused - strlen(refused) - 1);
    }
    if (refused[0])
        return cli_fail("train", CLI_USAGE,
                        "--resume %s: these options would change the run's result:\n%s\n"
                        "drop them to continue the run as it was, or start a new run",
                        a->resume, refused);
    for (int i = 0; i < nopts; i++) /* what the command line changes */
        if (opts[i].seen) {
            switch (opts[i].type) {
            case OPT_FLAG: *(int *)ro[i].dest = *(const int *)opts[i].dest; break;
            case OPT_INT: *(int64_t *)ro[i].dest = *(const int64_t *)opts[i].dest; break;
            case OPT_DOUBLE: *(double *)ro[i].dest = *(const double *)opts[i].dest; break;
            case OPT_STRING:
            case OPT_LIST: *(const char **)ro[i].dest = *(const char *const *)opts[i].dest; break;
            }
        }
    rec.resume = a->resume;
    *a = rec;
    return CLI_OK;
}

/* --metrics-*: usage errors before anything is loaded (docs/monitoring.md). */
static int check_metrics_opts(const train_args *a) {
    if (a->metrics_port < 0) {
        if (a->metrics_addr || a->metrics_token_file || a->metrics_linger > 0)
            return cli_fail("train", CLI_USAGE, "--metrics-addr, --metrics-token-file and "
                            "--metrics-linger go with --metrics-port PORT");
        return CLI_OK;
    }
    if (!mon_available())
        return cli_fail("train", CLI_USAGE, "--metrics-port: built without libmicrohttpd; install "
                        "libmicrohttpd-dev and rebuild");
    char err[1024];
    mon_opts o = {a->metrics_addr, (int)a->metrics_port, a->metrics_token_file};
    if (mon_check(&o, err, sizeof err) != 0) return cli_fail("train", CLI_USAGE, "%s", err);
    return CLI_OK;
}

static int parse_args(int argc, char **argv, train_run *r) {
    train_args *a = &r->a;
    cli_opt opts[NOPTS];
    int kind[NOPTS], nopts = train_opts(a, opts, kind);
    const char *pos[1];
    int npos, rc = cli_parse("train", argc, argv, opts, nopts, pos, 0, &npos);
    if (rc) return rc;
    if (a->resume) {
        json_t *cfg = read_recorded(r, &rc);
        if (!cfg || (rc = apply_recorded(a, opts, kind, nopts, cfg)) != CLI_OK) return rc;
        /* a run from before torchvision's resnet18 (its config has no num_classes): its
         * "resnet18" is the CIFAR ResNet, resnet18_cifar today (docs/models.md) */
        if (a->model && !strcmp(a->model, "resnet18") && !json_object_get(cfg, "num_classes")) {
            fprintf(stderr, "ctorch train: note: %s was trained by a ctorch whose resnet18 was the "
                    "CIFAR ResNet (3x3 stem, no max-pool), now called resnet18_cifar; it goes on as "
                    "resnet18_cifar\n", a->resume);
            a->model = "resnet18_cifar";
            r->legacy_resnet18 = 1;
        }
    }
    if (!a->model) return cli_fail("train", CLI_USAGE, "--model is required (one of: simple_cnn, mlp, "
                                   "resnet18_cifar, resnet18, resnet34, resnet50, mobilenet_v2, "
                                   "vit_tiny, vit_b_16)");
    if (!a->dataset) return cli_fail("train", CLI_USAGE, "--dataset is required (cifar10, mnist, fashion_mnist or imagefolder)");
    if ((rc = cli_choice("train", "--model", a->model, ct_model_names())) ||
        (rc = cli_choice("train", "--optimizer", a->optimizer, OPTIMIZERS)) ||
        (rc = cli_choice("train", "--schedule", a->schedule, SCHEDULES)) ||
        (rc = cli_choice("train", "--augment", a->augment, AUGMENTS)) ||
        (rc = cli_choice("train", "--nan-policy", a->nan_policy, NAN_POLICIES)) ||
        (rc = cli_amp_parse("train", a->amp_s, &a->amp)))
        return rc;
    a->amp_s = cli_amp_name(&a->amp);
    if (a->clip_grad_norm == 0)
        return cli_fail("train", CLI_USAGE, "--clip-grad-norm 0 would zero every gradient; give "
                        "the largest gradient norm, e.g. --clip-grad-norm 1.0 (leave the option "
                        "out not to clip)");
    if (a->warmup_epochs > 0 && strcmp(a->schedule, "cosine") && strcmp(a->schedule, "none"))
        return cli_fail("train", CLI_USAGE, "--warmup-epochs goes with --schedule cosine or none "
                        "(--schedule %s: %s)", a->schedule, !strcmp(a->schedule, "onecycle")
                        ? "onecycle has its own warm-up; drop --warmup-epochs"
                        : "drop --warmup-epochs or use --schedule cosine");
    return check_metrics_opts(a);
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
    /* the values in force, for the manifest */
    a->lr = oo->lr;
    a->momentum = r->okind == CT_OPTIM_SGD ? oo->momentum : oo->beta1;
    a->weight_decay = oo->weight_decay;
    /* the data root in force, absolute, so that the manifest says what was read */
    static char root[PATH_MAX];
    if (r->kind == CT_DATASET_IMAGEFOLDER) {
        if (!a->data_dir)
            return cli_fail("train", CLI_USAGE, "--dataset imagefolder needs --data-dir ROOT, the "
                            "folder holding train/<class>/ and val/<class>/ (docs/data.md)");
        if (a->augment && strcmp(a->augment, "none"))
            return cli_fail("train", CLI_USAGE, "--augment %s: imagefolder's training split always "
                            "uses torchvision's RandomResizedCrop + RandomHorizontalFlip; drop "
                            "--augment", a->augment);
        if (realpath(a->data_dir, root)) a->data_dir = root;
    } else if (realpath(ct_data_root(a->data_dir), root)) {
        a->data_dir = root;
    }
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

/* ------------------------------------------------------------------ manifest */
static void manifest_write(train_run *r) {
    if (r->rank != 0) return; /* rank 0 writes the run directory */
    char *p = run_path(r->dir, "manifest.json");
    if (!p || run_write_json(p, r->manifest) != 0)
        fprintf(stderr, "ctorch train: warning: could not write %s: %s\n", p ? p : "manifest.json",
                ct_last_error());
    free(p);
}

static json_t *command_json(int argc, char **argv) {
    json_t *c = json_pack("[s, s]", "ctorch", "train");
    for (int i = 0; c && i < argc; i++) json_array_append_new(c, json_string(argv[i]));
    return c;
}

/* A new run: the directory and its manifest (status "running"), written before the first
 * step so that a run killed at any moment after this can be resumed; a resumed one: the
 * manifest gains a "resumes" entry. */
static int open_run_dir(train_run *r) {
    train_args *a = &r->a;
    char now[32];
    run_utc_now(now, sizeof now);
    if (r->rank != 0) { /* rank 0 writes the run directory; the others read checkpoints */
        r->dir = strdup(a->resume ? a->resume : a->run_dir ? a->run_dir : "(rank 0's run directory)");
        r->manifest = a->resume ? json_deep_copy(r->recorded) : json_object();
        return r->dir && r->manifest ? CLI_OK : cli_fail("train", CLI_RUNTIME, "out of memory");
    }
    if (a->resume) {
        r->dir = strdup(a->resume);
        r->manifest = json_deep_copy(r->recorded); /* a's strings point into recorded */
        json_object_set_new(r->manifest, "status", json_string("running"));
        json_object_set_new(r->manifest, "config", config_json(a));
        json_t *res = json_object_get(r->manifest, "resumes");
        if (!json_is_array(res)) json_object_set_new(r->manifest, "resumes", res = json_array());
        json_array_append_new(res, json_pack("{s:s, s:o, s:i}", "at", now, "command",
                                             command_json(r->argc, r->argv), "world_size", r->world));
        char *probe = run_path(r->dir, "manifest.json");
        int ok = probe && ct_check_writable(probe) == 0;
        free(probe);
        if (!ok)
            return cli_fail("train", CLI_USAGE, "--resume %s: cannot write in the run directory: %s",
                            r->dir, ct_last_error());
        return CLI_OK; /* written once the checkpoint is restored */
    }
    r->dir = a->run_dir ? strdup(a->run_dir) : run_dir_default(a->model, a->dataset);
    if (!r->dir) return cli_fail("train", CLI_RUNTIME, "out of memory");
    if (run_dir_create(r->dir) != 0) return cli_fail("train", CLI_USAGE, "--run-dir: %s", ct_last_error());
    r->manifest = json_pack("{s:s, s:i, s:s, s:o}", "format", RUN_FORMAT, "format_version",
                            RUN_FORMAT_VERSION, "status", "running", "command",
                            command_json(r->argc, r->argv));
    json_object_set_new(r->manifest, "ctorch", cli_env_ctorch());
    json_object_set_new(r->manifest, "system", cli_env_system(ct_get_num_threads()));
    json_object_set_new(r->manifest, "cuda", cli_env_cuda(r->dev));
    json_object_set_new(r->manifest, "config", config_json(a));
    if (r->world > 1) {
        const char *launch = getenv("CTORCH_LAUNCH_COMMAND");
        const char *mpi = ct_dist_backend_version();
        json_object_set_new(r->manifest, "distributed",
                            json_pack("{s:i, s:s, s:s?, s:s, s:f, s:b}", "world_size", r->world,
                                      "backend", ct_device_is_host(r->dev) ? "mpi" : "nccl",
                                      "mpi_version", mpi, "launch_command",
                                      launch ? launch : "mpirun (the launcher's command line is not "
                                      "visible to the ranks; ctorch launch records it)",
                                      "bucket_mb", a->bucket_mb, "sync_bn", a->sync_bn));
    }
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)a->seed);
    json_object_set_new(r->manifest, "seeds",
                        json_pack("{s:I, s:s, s:s, s:s}", "seed", (json_int_t)a->seed,
                                  "init_and_dropout", "global generator seeded with seed",
                                  "data_order", "permutation of (seed, epoch)",
                                  "augmentation", "stream of (seed, epoch, batch)"));
    /* what was read, by SHA-256 (cached by path, size and mtime) */
    json_t *files = r->kind == CT_DATASET_IMAGEFOLDER /* too many files to hash: their count */
        ? json_pack("[{s:s, s:s, s:i, s:I, s:I}]", "imagefolder", a->data_dir, "layout",
                    "train/<class>/*, val/<class>/*", "classes", r->train->num_classes,
                    "train_images", (json_int_t)r->train->n, "val_images", (json_int_t)r->test->n)
        : cli_dataset_files(r->kind, a->data_dir);
    if (!files) fprintf(stderr, "ctorch train: warning: dataset files not hashed: %s\n", ct_last_error());
    json_object_set_new(r->manifest, "datasets", files ? files : json_array());
    json_object_set_new(r->manifest, "started", json_string(now));
    json_object_set_new(r->manifest, "ended", json_null());
    json_object_set_new(r->manifest, "final_metrics", json_null());
    json_object_set_new(r->manifest, "checkpoint", json_null());
    json_object_set_new(r->manifest, "resumes", json_array());
    manifest_write(r);
    printf("run directory: %s\n", r->dir);
    return CLI_OK;
}

/* ------------------------------------------------------------------ setup */
/* The shuffled, normalised (and augmented) training batches. */
static int open_train_loader(train_run *r) {
    ct_dataloader_opts lo = ct_dataloader_default_opts();
    lo.batch_size = r->a.batch_size;
    lo.shuffle = !r->a.no_shuffle;
    lo.seed = (uint64_t)r->a.seed;
    lo.num_replicas = r->world; /* DistributedSampler: this rank's share of each epoch */
    lo.rank = r->rank;
    lo.transform.normalize = 1;
    ct_dataset_default_normalization(r->kind, lo.transform.mean, lo.transform.std);
    if (!strcmp(r->a.augment, "standard")) {
        lo.transform.crop_padding = 4;
        lo.transform.hflip = 1;
    }
    if (r->kind == CT_DATASET_IMAGEFOLDER) /* RandomResizedCrop (the dataset's) + flip */
        lo.transform.hflip = 1;
    if (cli_loader_open(r->train, &lo, r->dev, &r->dl, &r->pf) != 0)
        return cli_fail("train", CLI_USAGE, "%s", ct_last_error());
    r->spe = ct_dataloader_num_batches(r->dl);
    r->total = r->spe * r->a.epochs;
    if (r->a.max_steps && r->a.max_steps < r->total) r->total = r->a.max_steps;
    /* --warmup-epochs E: round(E x steps per epoch) steps, at least one */
    r->warmup = 0;
    if (r->a.warmup_epochs > 0) {
        r->warmup = llround(r->a.warmup_epochs * (double)r->spe);
        if (r->warmup < 1) r->warmup = 1;
        if (!strcmp(r->a.schedule, "cosine") && r->warmup >= r->total)
            return cli_fail("train", CLI_USAGE, "--warmup-epochs %g is %lld steps (%lld per epoch), "
                            "not fewer than the run's %lld steps: the cosine would have none "
                            "left; lower --warmup-epochs or raise --epochs", r->a.warmup_epochs,
                            (long long)r->warmup, (long long)r->spe, (long long)r->total);
    }
    return CLI_OK;
}

/* Whether name starts with one of the prefixes of a comma-separated list. */
static int has_prefix(const char *list, const char *name) {
    char item[256];
    for (const char *p = list; (p = cli_list_next(p, item, sizeof item));)
        if (!strncmp(name, item, strlen(item))) return 1;
    return 0;
}

/* Each prefix of list must name something in sd (the model's state_dict or the file's):
 * a typo is an error, not a silent no-op. */
static int check_prefixes(const char *opt, const char *list, const ct_state_dict *a,
                          const ct_state_dict *b) {
    char item[256];
    for (const char *p = list; (p = cli_list_next(p, item, sizeof item));) {
        int found = 0;
        for (int i = 0; a && i < a->n && !found; i++) found = !strncmp(a->names[i], item, strlen(item));
        for (int i = 0; b && i < b->n && !found; i++) found = !strncmp(b->names[i], item, strlen(item));
        if (!found)
            return cli_fail("train", CLI_USAGE, "%s %s: no tensor of the model%s starts with %s "
                            "(prefixes are state_dict names' beginnings, e.g. fc. or layer1.)",
                            opt, item, b ? " or of the --init file" : "", item);
    }
    return CLI_OK;
}

/* The module prefix of a tensor name ("fc.weight" -> "fc.") appended to list if new. */
static void add_module_prefix(char *list, size_t n, const char *name) {
    const char *dot = strrchr(name, '.');
    char item[256];
    snprintf(item, sizeof item, "%.*s", dot ? (int)(dot - name + 1) : (int)strlen(name), name);
    for (const char *p = list; (p = cli_list_next(p, item + 128, 128));)
        if (!strcmp(item + 128, item)) return;
    snprintf(list + strlen(list), n - strlen(list), "%s%s", list[0] ? "," : "", item);
}

/* --init FILE (any format ct_state_dict_load reads): every tensor of the model from the
 * file except those under --init-ignore prefixes, which keep their fresh initialisation
 * (a new head for --num-classes). Anything else that does not fit is an error listing the
 * mismatches and the --init-ignore that would skip them. */
static int load_init(train_run *r, int classes) {
    const train_args *a = &r->a;
    ct_state_dict *file = ct_state_dict_load(a->init);
    if (!file) return cli_fail("train", CLI_USAGE, "--init: %s", ct_last_error());
    ct_state_dict *own = ct_module_state_dict(r->model), *use = ct_state_dict_new();
    int rc = own && use ? CLI_OK : cli_fail("train", CLI_RUNTIME, "out of memory");
    if (rc == CLI_OK && a->init_ignore) rc = check_prefixes("--init-ignore", a->init_ignore, own, file);
    for (int i = 0; rc == CLI_OK && i < file->n; i++)
        if (!a->init_ignore || !has_prefix(a->init_ignore, file->names[i]))
            ct_state_dict_add(use, file->names[i], file->tensors[i]);
    for (int i = 0; rc == CLI_OK && i < own->n; i++) /* ignored: the model's own values */
        if (a->init_ignore && has_prefix(a->init_ignore, own->names[i]))
            ct_state_dict_add(use, own->names[i], own->tensors[i]);
    char *report = rc == CLI_OK ? ct_module_check_state_dict(r->model, use, 1) : NULL;
    if (report) {
        char skip[1024] = "";
        for (int i = 0; i < own->n; i++) { /* the modules whose tensors do not fit */
            ct_tensor *t = ct_state_dict_get(use, own->names[i]), *m = own->tensors[i];
            int fits = t && ct_ndim(t) == ct_ndim(m);
            for (int d = 0; fits && d < ct_ndim(m); d++) fits = ct_size(t, d) == ct_size(m, d);
            if (!fits) add_module_prefix(skip, sizeof skip, own->names[i]);
        }
        ct_tensor *c1 = ct_state_dict_get(file, "conv1.weight");
        int cifar = !strcmp(a->model, "resnet18") && c1 && ct_ndim(c1) == 4 && ct_size(c1, 3) == 3;
        rc = cli_fail("train", CLI_USAGE, "--init %s does not fit --model %s with %d classes:\n"
                      "%s%s%s%s%s%s", a->init, a->model, classes, report,
                      cifar ? "these are resnet18_cifar weights (ctorch's CIFAR ResNet, called "
                              "resnet18 before ctorch had torchvision's): pass --model resnet18_cifar\n" : "",
                      skip[0] && !cifar ? "to start these layers from scratch instead (a new "
                                          "classifier head for --num-classes): --init-ignore " : "",
                      skip[0] && !cifar ? skip : "", skip[0] && !cifar ? "\n" : "",
                      "or pass the --model the weights were saved from");
        free(report);
    } else if (rc == CLI_OK && ct_module_load_state_dict(r->model, use, 1) != 0) {
        rc = cli_fail("train", CLI_USAGE, "--init %s: %s", a->init, ct_last_error());
    }
    ct_state_dict_free(use);
    ct_state_dict_free(own);
    ct_state_dict_free(file);
    return rc;
}

/* --freeze: those parameters stop requiring grad and stay out of the optimizer (their
 * BatchNorm running statistics still update in train mode, as in PyTorch). --lr-backbone:
 * two parameter groups, the classifier head at --lr and the rest at --lr-backbone. */
static int make_optimizer(train_run *r) {
    const train_args *a = &r->a;
    int np, rc = CLI_OK;
    ct_state_dict *sd = ct_module_state_dict(r->model);
    if (!sd) return cli_fail("train", CLI_RUNTIME, "%s", ct_last_error());
    if (a->freeze) rc = check_prefixes("--freeze", a->freeze, sd, NULL);
    ct_tensor **params = ct_module_parameters(r->model, &np);
    ct_tensor **head = calloc((size_t)np + 1, sizeof *head), **rest = calloc((size_t)np + 1, sizeof *rest);
    int nh = 0, nr = 0, frozen = 0;
    const char *hp = ct_model_head(a->model);
    if (rc == CLI_OK && (!params || !head || !rest)) rc = cli_fail("train", CLI_RUNTIME, "out of memory");
    for (int i = 0; rc == CLI_OK && head && rest && i < sd->n; i++) {
        ct_tensor *t = sd->tensors[i];
        int is_param = 0;
        for (int j = 0; j < np && !is_param; j++) is_param = params[j] == t;
        if (!is_param) continue;
        if (a->freeze && has_prefix(a->freeze, sd->names[i])) {
            ct_set_requires_grad(t, 0);
            frozen++;
        } else if (!isnan(a->lr_backbone) && hp && !strncmp(sd->names[i], hp, strlen(hp))) {
            head[nh++] = t;
        } else {
            rest[nr++] = t;
        }
    }
    if (rc == CLI_OK && nh + nr == 0)
        rc = cli_fail("train", CLI_USAGE, "--freeze %s froze every parameter: nothing to train", a->freeze);
    if (rc == CLI_OK) {
        if (isnan(a->lr_backbone)) {
            r->opt = ct_optim_new(r->okind, rest, nr, &r->oo);
        } else {
            ct_param_group g[2] = {{head, nh, a->lr}, {rest, nr, a->lr_backbone}};
            r->opt = ct_optim_new_groups(r->okind, g, 2, &r->oo);
        }
        if (!r->opt) rc = cli_fail("train", CLI_USAGE, "%s", ct_last_error());
    }
    if (rc == CLI_OK && frozen && r->rank == 0)
        printf("fine-tuning: %d parameter tensors frozen (--freeze %s), %d trained\n", frozen,
               a->freeze, nh + nr);
    if (rc == CLI_OK && !isnan(a->lr_backbone) && r->rank == 0)
        printf("fine-tuning: %d head tensors (%s) at --lr %g, the other %d at --lr-backbone %g\n",
               nh, hp ? hp : "none", a->lr, nr, a->lr_backbone);
    free(head);
    free(rest);
    r->params = params; /* --clip-grad-norm: frozen ones have no gradient and are skipped */
    r->nparams = np;
    ct_state_dict_free(sd);
    return rc;
}

/* Data (checked before any training time is spent), model, optimizer, batches. */
static int setup_run(train_run *r) {
    const train_args *a = &r->a;
    r->train = cli_dataset_load(r->kind, CT_SPLIT_TRAIN, a->data_dir, a->train_limit,
                                a->image_size, a->on_bad_image);
    if (!r->train) return cli_fail("train", CLI_USAGE, "%s", ct_last_error());
    r->test = cli_dataset_load(r->kind, CT_SPLIT_TEST, a->data_dir, a->test_limit, a->image_size,
                               a->on_bad_image);
    if (!r->test) return cli_fail("train", CLI_USAGE, "%s", ct_last_error());
    int classes = a->num_classes ? (int)a->num_classes : r->train->num_classes;
    if (classes < r->train->num_classes)
        return cli_fail("train", CLI_USAGE, "--num-classes %d: %s has %d classes (labels 0..%d); "
                        "give at least %d", classes, ct_dataset_name(r->kind),
                        r->train->num_classes, r->train->num_classes - 1, r->train->num_classes);
    r->model = ct_model_create_ex(a->model, classes, r->train->c, r->train->h, r->train->w);
    if (!r->model) return cli_fail("train", CLI_USAGE, "%s", ct_last_error());
    if (a->sync_bn && ct_nn_convert_sync_batchnorm(r->model) == 0)
        fprintf(stderr, "ctorch train: warning: --sync-bn: %s has no BatchNorm layer\n", a->model);
    if (a->init_ignore && !a->init)
        return cli_fail("train", CLI_USAGE, "--init-ignore goes with --init FILE");
    int rc;
    if (a->init && (rc = load_init(r, classes)) != CLI_OK) return rc;
    if (ct_module_to(r->model, r->dev, -1) != 0)
        return cli_fail("train", CLI_RUNTIME, "moving the model to %s: %s", a->device, ct_last_error());
    if ((rc = make_optimizer(r)) != CLI_OK) return rc;
    /* float16 autocast scales the loss (PyTorch's GradScaler defaults) unless told not to */
    if (r->a.amp.dtype == CT_FLOAT16 && !r->a.no_scaler &&
        !(r->a.amp.scaler = ct_grad_scaler_new(NULL)))
        return cli_fail("train", CLI_RUNTIME, "%s", ct_last_error());
    r->tty = isatty(STDERR_FILENO);
    r->rows = json_array();
    return open_train_loader(r);
}

/* ------------------------------------------------------------------ checkpoints */
static json_t *u64_text(uint64_t v) {
    char b[32];
    snprintf(b, sizeof b, "%llu", (unsigned long long)v);
    return json_string(b);
}

static int parse_u64(json_t *v, uint64_t *out) {
    const char *s = json_string_value(v);
    char *end = NULL;
    if (!s || !*s) return -1;
    *out = strtoull(s, &end, 10);
    return *end ? -1 : 0;
}

/* The state beside the tensors: position, RNG streams, figures so far, the config. */
static char *state_text(train_run *r, const epoch_stats *s) {
    uint64_t seed, off;
    ct_get_rng_state(&seed, &off);
    json_t *st = json_pack(
        "{s:I, s:I, s:I, s:I, s:{s:f, s:I, s:I, s:f}, s:{s:o, s:o}, s:{s:o, s:s, s:s},"
        " s:{s:s, s:I, s:I}, s:I, s:I, s:O, s:o}",
        "epoch", (json_int_t)r->epoch, "batch", (json_int_t)r->batch, "step", (json_int_t)r->step,
        "steps_per_epoch", (json_int_t)r->spe,
        "epoch_stats", "loss_sum", s->loss_sum, "correct", (json_int_t)s->correct, "seen",
        (json_int_t)s->seen, "train_secs", s->train_secs,
        "rng", "seed", u64_text(seed), "offset", u64_text(off),
        "data", "seed", u64_text((uint64_t)r->a.seed), "order", "permutation of (seed, epoch)",
        "augmentation", "per-batch stream of (seed, epoch, batch), the same with any number of workers",
        "schedule", "name", r->a.schedule, "step", (json_int_t)r->step, "total", (json_int_t)r->total,
        "nan_skipped_steps", (json_int_t)r->nan_skipped,
        "amp_skipped_steps",
        (json_int_t)(r->a.amp.scaler ? ct_grad_scaler_skipped_steps(r->a.amp.scaler) : 0),
        "metrics", r->rows, "config", config_json(&r->a));
    if (st) json_object_set_new(st, "world_size", json_integer(r->world));
    char *text = st ? json_dumps(st, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(st);
    return text;
}

/* The epoch's figures over every rank (one process: its own). */
static int all_ranks_stats(const train_run *r, const epoch_stats *s, epoch_stats *out) {
    *out = *s;
    if (r->world <= 1) return 0;
    double v[3] = {s->loss_sum, (double)s->correct, (double)s->seen};
    if (ct_dist_all_reduce_buf(v, 3, CT_FLOAT64, CT_REDUCE_SUM) != 0) return -1;
    out->loss_sum = v[0], out->correct = (int64_t)v[1], out->seen = (int64_t)v[2];
    return 0;
}

/* Writes a checkpoint of the current position; a failure (full disk, unwritable
 * directory) is a warning: training goes on, the previous checkpoint is intact. */
static int write_checkpoint(train_run *r, const epoch_stats *s) {
    if (r->a.no_checkpoints) return 0;
    if (r->last_ckpt && r->last_ckpt_step == r->step && r->last_ckpt_epoch == r->epoch &&
        r->last_ckpt_batch == r->batch)
        return 0; /* already written here */
    double t0 = cli_now();
    epoch_stats g; /* every rank's figures: rank 0 resumes with them */
    if (all_ranks_stats(r, s, &g) != 0) {
        fprintf(stderr, "ctorch train%s: %s\n", cli_rank_tag, ct_last_error());
        return -1;
    }
    char *path = run_checkpoint_path(r->dir, r->step);
    if (r->rank != 0) { /* rank 0 writes; the others keep the same bookkeeping */
        free(r->last_ckpt);
        r->last_ckpt = path;
        r->last_ckpt_step = r->step;
        r->last_ckpt_epoch = r->epoch;
        r->last_ckpt_batch = r->batch;
        return path ? 0 : -1;
    }
    s = &g;
    char *state = path ? state_text(r, s) : NULL;
    int rc = state ? ct_checkpoint_save(path, r->model, r->opt, r->a.amp.scaler, r->a.model, state)
                   : ct_error("out of memory");
    if (rc != 0) {
        fprintf(stderr, "ctorch train: warning: could not write checkpoint %s: %s; training goes "
                "on%s%s%s\n", path ? path : "", ct_last_error(),
                r->last_ckpt ? " (the previous checkpoint " : "", r->last_ckpt ? r->last_ckpt : "",
                r->last_ckpt ? " is intact)" : "");
        free(path);
    } else {
        free(r->last_ckpt);
        r->last_ckpt = path;
        r->last_ckpt_step = r->step;
        r->last_ckpt_epoch = r->epoch;
        r->last_ckpt_batch = r->batch;
        run_prune_checkpoints(r->dir, (int)r->a.keep_checkpoints);
        mon_checkpoint(r->mon, unix_now());
        json_object_set_new(r->manifest, "checkpoint", json_string(path + strlen(r->dir) + 1));
        manifest_write(r);
    }
    free(state);
    r->ckpt_secs += cli_now() - t0;
    return rc;
}

/* Sets the position, figures and RNG streams from a checkpoint's state. */
static int restore_state(train_run *r, const char *path, const char *text, epoch_stats *s) {
    json_error_t je;
    json_t *st = json_loads(text, 0, &je);
    json_int_t epoch, batch, step, spe, nan_sk = 0, amp_sk = 0, correct, seen;
    json_t *rng_seed, *rng_off, *metrics;
    double loss_sum, secs;
    uint64_t seed, off;
    if (!st || json_unpack(st, "{s:I, s:I, s:I, s:I, s:{s:F, s:I, s:I, s:F}, s:{s:o, s:o}, s:I, s:I, s:o}",
                           "epoch", &epoch, "batch", &batch, "step", &step, "steps_per_epoch", &spe,
                           "epoch_stats", "loss_sum", &loss_sum, "correct", &correct, "seen", &seen,
                           "train_secs", &secs, "rng", "seed", &rng_seed, "offset", &rng_off,
                           "nan_skipped_steps", &nan_sk, "amp_skipped_steps", &amp_sk,
                           "metrics", &metrics) != 0 ||
        parse_u64(rng_seed, &seed) || parse_u64(rng_off, &off) || !json_is_array(metrics)) {
        json_decref(st);
        return cli_fail("train", CLI_USAGE, "--resume: checkpoint %s: its state does not parse", path);
    }
    json_int_t ws = 1;
    json_t *wsj = json_object_get(st, "world_size");
    if (json_is_integer(wsj)) ws = json_integer_value(wsj);
    if (ws != r->world) {
        /* another number of processes: the rest of the epoch is re-sharded */
        if (r->rank == 0)
            fprintf(stderr, "ctorch train: warning: checkpoint %s was written by %lld processes, "
                    "this job has %d: the rest of epoch %lld is re-sharded over %d ranks (the run "
                    "goes on from the same weights and optimizer state, but is not bitwise the "
                    "run it would have been)\n", path, (long long)ws, r->world,
                    (long long)epoch + 1, r->world);
        int64_t samples = (int64_t)batch * r->a.batch_size * ws;
        batch = samples / (r->a.batch_size * r->world);
        if (batch > r->spe) batch = r->spe;
        step = epoch * r->spe + batch;
        spe = r->spe;
    }
    if (spe != r->spe) {
        json_decref(st);
        return cli_fail("train", CLI_USAGE, "--resume: checkpoint %s has %lld steps per epoch, this "
                        "run %lld: the dataset or its files changed", path, (long long)spe,
                        (long long)r->spe);
    }
    (void)amp_sk;
    r->epoch = epoch;
    r->batch = batch;
    r->step = step;
    r->nan_skipped = nan_sk;
    /* the epoch's figures so far are every rank's: rank 0 carries them */
    s->loss_sum = r->rank == 0 ? loss_sum : 0;
    s->correct = r->rank == 0 ? correct : 0;
    s->seen = r->rank == 0 ? seen : 0;
    s->train_secs = secs;
    json_decref(r->rows);
    r->rows = json_deep_copy(metrics);
    ct_set_rng_state(seed, off);
    json_decref(st);
    return CLI_OK;
}

/* --resume: the newest checkpoint that verifies; damaged ones are named and skipped. No
 * checkpoint yet (a run killed before its first): the run starts from its beginning. */
static int resume_from_checkpoint(train_run *r, epoch_stats *s) {
    char **paths;
    int n = run_list_checkpoints(r->dir, &paths), rc = CLI_OK, found = 0;
    for (int i = 0; i < n && !found && rc == CLI_OK; i++) {
        ct_checkpoint_status status;
        ct_checkpoint *c = ct_checkpoint_open(paths[i], &status);
        if (!c && status == CT_CHECKPOINT_NEWER) {
            rc = cli_fail("train", CLI_USAGE, "--resume: %s", ct_last_error());
            break;
        }
        if (!c) {
            fprintf(stderr, "ctorch train: warning: %s; %s\n", ct_last_error(),
                    i + 1 < n ? "falling back to the previous checkpoint" : "no older checkpoint");
            continue;
        }
        if (c->model && strcmp(c->model, r->a.model) &&
            !(r->legacy_resnet18 && !strcmp(c->model, "resnet18"))) {
            rc = cli_fail("train", CLI_USAGE, "--resume: checkpoint %s is of model %s, the run's "
                          "manifest says %s", paths[i], c->model, r->a.model);
        } else if (ct_checkpoint_restore(c, r->model, r->opt, r->a.amp.scaler) != 0) {
            rc = cli_fail("train", CLI_USAGE, "--resume: %s: %s", paths[i], ct_last_error());
        } else if ((rc = restore_state(r, paths[i], c->state_json, s)) == CLI_OK) {
            found = 1;
            r->last_ckpt = strdup(paths[i]);
            r->last_ckpt_step = r->step;
            r->last_ckpt_epoch = r->epoch;
            r->last_ckpt_batch = r->batch;
            printf("resuming %s from %s: epoch %lld, step %lld\n", r->dir, paths[i],
                   (long long)r->epoch + 1, (long long)r->step);
        }
        ct_checkpoint_close(c);
    }
    for (int i = 0; i < n; i++) free(paths[i]);
    free(paths);
    if (rc == CLI_OK && !found) {
        if (n > 0)
            return cli_fail("train", CLI_USAGE, "--resume %s: none of its %d checkpoints is usable "
                            "(see above); start a new run", r->dir, n);
        fprintf(stderr, "ctorch train: %s has no checkpoint yet; starting the run from its "
                "beginning\n", r->dir);
    }
    /* the manifest's record of the resume */
    json_t *res = json_object_get(r->manifest, "resumes");
    json_t *last = json_array_get(res, json_array_size(res) - 1);
    if (rc == CLI_OK && last) {
        json_object_set_new(last, "checkpoint",
                            found ? json_string(r->last_ckpt + strlen(r->dir) + 1) : json_null());
        json_object_set_new(last, "step", json_integer(r->step));
        manifest_write(r);
    }
    return rc;
}

/* ------------------------------------------------------------------ monitor */
static double row_number(json_t *row, const char *key) {
    json_t *v = json_object_get(row, key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

/* A metrics.jsonl row, as a point of /api/history. */
static void monitor_row(train_run *r, json_t *row, double when) {
    if (!r->mon) return;
    mon_point p = {(int64_t)row_number(row, "step"), (int64_t)row_number(row, "epoch"), when,
                   row_number(row, "train_loss"), row_number(row, "train_acc"),
                   row_number(row, "test_acc"), row_number(row, "lr"),
                   row_number(row, "images_per_sec")};
    mon_history_add(r->mon, &p);
}

/* --metrics-port: the server starts once the run's shape is known and before the first
 * step; a port that cannot be bound ends the run (exit 1). Data-parallel: every rank
 * serves its own figures, rank r on PORT + local rank (PORT 0: any free port each). */
static int start_monitor(train_run *r) {
    const train_args *a = &r->a;
    if (a->metrics_port < 0) return CLI_OK;
    int port = (int)a->metrics_port;
    if (r->world > 1 && port > 0) port += ct_dist_local_rank();
    const char *name = strrchr(r->dir, '/');
    name = name && name[1] ? name + 1 : r->dir;
    json_t *cfg = config_json(&r->a);
    char *config = cfg ? json_dumps(cfg, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(cfg);
    mon_run_info info = {name, a->model, a->dataset, r->rank, r->world, a->epochs, r->spe,
                         r->total, !ct_device_is_host(r->dev), config};
    mon_opts o = {a->metrics_addr, port, a->metrics_token_file};
    char err[1024];
    r->mon = mon_start(&o, &info, err, sizeof err);
    free(config);
    if (!r->mon) return cli_fail("train", CLI_RUNTIME, "%s", err);
    const char *host = a->metrics_addr ? a->metrics_addr : "127.0.0.1";
    int v6 = strchr(host, ':') != NULL;
    printf("metrics: http://%s%s%s:%d/metrics%s\n", v6 ? "[" : "", host, v6 ? "]" : "",
           mon_port(r->mon), a->metrics_token_file ? " (bearer token required)" : "");
    fflush(stdout);
    mon_position(r->mon, r->epoch + 1, r->step);
    for (size_t i = 0; i < json_array_size(r->rows); i++) /* rows before a resume */
        monitor_row(r, json_array_get(r->rows, i), NAN);
    return CLI_OK;
}

/* The run's end: its state for /api/run, --metrics-linger seconds more of serving (so that
 * a scraper sees the last figures, a NaN among them; a signal ends it), then stop. */
static void stop_monitor(train_run *r, int rc) {
    if (!r->mon) return;
    mon_state(r->mon, rc == CLI_OK ? MON_FINISHED : MON_FAILED);
    if (r->a.metrics_linger > 0) {
        int sig = g_interrupted;
        printf("metrics: serving for %g s more (--metrics-linger)\n", r->a.metrics_linger);
        fflush(stdout);
        double end = cli_now() + r->a.metrics_linger;
        while (cli_now() < end && g_interrupted == sig) usleep(20000);
    }
    mon_stop(r->mon);
    r->mon = NULL;
}

/* One step's figures for the monitor. */
static void publish_step(train_run *r, const epoch_stats *s, const train_step_result *res,
                         double wait_s, double step_s) {
    if (!r->mon) return;
    mon_step_info m = {res->loss, s->seen ? (double)s->correct / (double)s->seen : NAN,
                       ct_optim_get_lr(r->opt), r->epoch + 1, r->step, res->n, wait_s, step_s};
    mon_step(r->mon, &m);
    if (r->a.amp.scaler) mon_amp_skipped(r->mon, ct_grad_scaler_skipped_steps(r->a.amp.scaler));
}

/* The next batch, and the seconds spent waiting for it. */
static int next_batch(train_run *r, ct_tensor **x, ct_tensor **y, double *wait) {
    double t0 = cli_now();
    int got = ct_device_prefetcher_next(r->pf, x, y);
    *wait = cli_now() - t0;
    return got;
}

/* ------------------------------------------------------------------ one epoch */
static void print_banner(const train_run *r) {
    char gpu[300] = "", name[256];
    if (ct_device_describe(r->dev, name, sizeof name) == 0) snprintf(gpu, sizeof gpu, " (%s)", name);
    printf("training %s on %s: %lld train / %lld test images, %lld steps per epoch, %s, device "
           "%s%s, %d threads%s%s%s\n",
           r->a.model, ct_dataset_name(r->kind), (long long)r->train->n, (long long)r->test->n,
           (long long)r->spe, r->a.optimizer, r->a.device, gpu, ct_get_num_threads(),
           r->a.amp.dtype != CT_FLOAT32 ? ", amp " : "",
           r->a.amp.dtype != CT_FLOAT32 ? cli_amp_name(&r->a.amp) : "",
           r->a.deterministic ? ", deterministic" : "");
    if (r->warmup > 0 || r->a.label_smoothing > 0 || r->a.clip_grad_norm > 0) {
        printf("recipe:");
        if (r->warmup > 0)
            printf(" warm-up %lld step%s (lr from %g x --lr, linear) then %s", (long long)r->warmup,
                   r->warmup == 1 ? "" : "s", WARMUP_START_FACTOR, !strcmp(r->a.schedule, "cosine") ? "cosine" : "constant");
        if (r->a.label_smoothing > 0) printf("%s label smoothing %g", r->warmup > 0 ? "," : "",
                                             r->a.label_smoothing);
        if (r->a.clip_grad_norm > 0)
            printf("%s gradients clipped to norm %g", r->warmup > 0 || r->a.label_smoothing > 0
                   ? "," : "", r->a.clip_grad_norm);
        printf("\n");
    }
    fflush(stdout);
}

/* The progress line on a terminal: step, running loss, images/s, time left. */
static void show_progress(const train_run *r, const epoch_stats *s, int64_t seen0) {
    double el = cli_now() - s->t0, ips = (double)(s->seen - seen0) / el;
    int64_t left = r->total - r->step;
    char eta[32];
    fmt_time((double)left * (double)r->a.batch_size / (ips > 0 ? ips : 1), eta, sizeof eta);
    fprintf(stderr, "\repoch %lld/%lld step %lld/%lld loss %.4f %.0f img/s left %s   ",
            (long long)r->epoch + 1, (long long)r->a.epochs, (long long)r->batch, (long long)r->spe,
            s->loss_sum / (double)s->seen, ips, eta);
}

enum { EPOCH_DONE, EPOCH_STOPPED };

/* Trains from the current position to the end of the epoch (or the run's last step, or a
 * signal), checkpointing every --checkpoint-every steps. */
static int train_epoch(train_run *r, epoch_stats *s, int *stopped) {
    double t_start = cli_now();
    s->t0 = t_start;
    int64_t seen0 = s->seen;
    *stopped = 0;
    if (ct_device_prefetcher_start_epoch_at(r->pf, r->epoch, r->batch) != 0)
        return cli_fail("train", CLI_RUNTIME, "%s", ct_last_error());
    ct_module_train(r->model, 1);
    int skip_first = !strcmp(r->a.nan_policy, "skip");
    ct_tensor *x, *y;
    int got = 1;
    double wait;
    /* one process stops at a signal; data-parallel ranks stop together at the step where
     * every rank has seen it (cli_train_step agrees on it) */
    while (r->step < r->total && !(r->world == 1 && g_interrupted) && !r->stop_agreed &&
           (got = next_batch(r, &x, &y, &wait)) == 1) {
        r->data_wait += wait;
        ct_optim_set_lr(r->opt, schedule_lr(&r->a, r->a.lr, r->step, r->spe, r->total, r->warmup));
        if (!isnan(r->a.lr_backbone)) /* group 1: the backbone, on its own base lr */
            ct_optim_set_group_lr(r->opt, 1, schedule_lr(&r->a, r->a.lr_backbone, r->step, r->spe,
                                                         r->total, r->warmup));
        train_step_result res;
        double t_step = cli_now();
        cli_step_opts so = {r->a.label_smoothing, r->a.clip_grad_norm, r->params, r->nparams};
        int st = cli_train_step_ex(r->model, r->opt, x, y, r->dev, &r->a.amp, skip_first,
                                   r->ddp ? &r->dstep : NULL, &so, &res);
        t_step = cli_now() - t_step;
        ct_free(x);
        ct_free(y);
        if (st < 0)
            return cli_fail("train", CLI_RUNTIME, "step %lld: %s", (long long)r->step, ct_last_error());
        if (st == 2) { /* every rank stops here (a signal); this batch is not trained */
            r->stop_agreed = 1;
            break;
        }
        if (st == 1 || !isfinite(res.loss)) {
            mon_nan_event(r->mon, res.loss);
            if (skip_first) { /* --nan-policy skip: no update from this batch, counted */
                r->nan_skipped++;
                fprintf(stderr, "%sctorch train: warning: step %lld: loss is %s; update skipped "
                        "(--nan-policy skip; %lld so far)\n", r->tty ? "\n" : "",
                        (long long)r->step, isnan(res.loss) ? "NaN" : "infinite",
                        (long long)r->nan_skipped);
                r->batch++;
                r->step++;
                continue;
            }
            fprintf(stderr, "%sctorch train: step %lld (epoch %lld, batch %lld): the loss is %s; "
                    "stopping (--nan-policy stop). Last good checkpoint: %s\n"
                    "  fix: a lower --lr or --amp off in a new run, or drop such steps: "
                    "ctorch train --resume %s --nan-policy skip\n",
                    r->tty ? "\n" : "", (long long)r->step, (long long)r->epoch + 1,
                    (long long)r->batch, isnan(res.loss) ? "NaN" : res.loss > 0 ? "inf" : "-inf",
                    r->last_ckpt ? r->last_ckpt : "(none yet)", r->dir);
            return CLI_RUNTIME;
        }
        if (r->ddp) {
            r->ddp_wait += ct_ddp_last_wait_seconds(r->ddp);
            r->ddp_steps++;
        }
        s->loss_sum += res.loss * (double)res.n;
        s->correct += res.correct;
        s->seen += res.n;
        r->step++;
        r->batch++;
        publish_step(r, s, &res, wait, t_step);
        if (r->tty && (r->batch % 10 == 0 || r->batch == r->spe)) show_progress(r, s, seen0);
        if (r->a.checkpoint_every > 0 && r->step % r->a.checkpoint_every == 0) {
            s->train_secs += cli_now() - t_start;
            t_start = cli_now();
            write_checkpoint(r, s);
        }
    }
    if (r->tty) fputc('\n', stderr);
    s->train_secs += cli_now() - t_start;
    if (got < 0)
        return ct_dataloader_failed_on_bad_record(r->dl)
            ? cli_fail("train", CLI_USAGE, "step %lld: %s (--on-bad-image skip leaves such files "
                       "out and counts them)", (long long)r->step, ct_last_error())
            : cli_fail("train", CLI_RUNTIME, "step %lld: loading the batch: %s",
                       (long long)r->step, ct_last_error());
    *stopped = (r->world == 1 ? g_interrupted != 0 : r->stop_agreed) ||
               (r->batch < r->spe && r->step < r->total);
    return CLI_OK;
}

/* Rewrites metrics.jsonl (and --log-json) with every row so far; a failure is a warning. */
static void write_metrics(train_run *r) {
    if (r->rank != 0) return;
    char *p = run_path(r->dir, "metrics.jsonl");
    if (!p || run_write_jsonl(p, r->rows) != 0)
        fprintf(stderr, "ctorch train: warning: could not write %s: %s\n", p ? p : "metrics.jsonl",
                ct_last_error());
    free(p);
    if (r->a.log_json && run_write_jsonl(r->a.log_json, r->rows) != 0)
        fprintf(stderr, "ctorch train: warning: could not write %s: %s\n", r->a.log_json, ct_last_error());
}

/* Evaluates on the test set, reports the epoch (stdout, metrics.jsonl, --log-json) and
 * moves the position to the next epoch. */
static int evaluate_epoch(train_run *r, epoch_stats *ls) {
    eval_result ev;
    double t0 = cli_now();
    if (cli_evaluate_sharded(r->model, r->test, r->kind, r->dev, 256, &r->a.amp, r->rank, r->world,
                             &ev) != 0)
        return ev.bad_record
            ? cli_fail("train", CLI_USAGE, "evaluation: %s (--on-bad-image skip leaves such files "
                       "out)", ct_last_error())
            : cli_fail("train", CLI_RUNTIME, "evaluation: %s", ct_last_error());
    /* --on-bad-image skip: the images left out this epoch (train: the loader's count;
     * test: what the evaluation did not see) */
    const char *skip_report = NULL;
    int64_t skipped = ct_dataloader_skipped(r->dl, &skip_report);
    int64_t test_skipped = r->world == 1 && ev.n < r->test->n ? r->test->n - ev.n : 0;
    double data_wait = ls->train_secs > 0 ? r->data_wait / ls->train_secs : 0;
    r->data_wait = 0;
    epoch_stats gs, *s = &gs; /* the figures of every rank's share */
    if (all_ranks_stats(r, ls, &gs) != 0) return cli_fail("train", CLI_RUNTIME, "%s", ct_last_error());
    double secs = s->train_secs + (cli_now() - t0);
    r->final_acc = ev.accuracy;
    r->final_loss = ev.loss;
    mon_test_accuracy(r->mon, ev.accuracy);
    double ips = s->train_secs > 0 ? (double)s->seen / s->train_secs : 0;
    printf("epoch %lld/%lld train_loss %.4f train_acc %.2f%% test_loss %.4f test_acc %.2f%% "
           "lr %.5g %.0f img/s %.1fs", (long long)r->epoch + 1, (long long)r->a.epochs,
           s->loss_sum / (double)s->seen, 100.0 * (double)s->correct / (double)s->seen, ev.loss,
           100.0 * ev.accuracy, ct_optim_get_lr(r->opt), ips, secs);
    if (r->a.amp.scaler)
        printf(" loss_scale %g skipped %lld", ct_grad_scaler_get_scale(r->a.amp.scaler),
               (long long)ct_grad_scaler_skipped_steps(r->a.amp.scaler));
    if (r->nan_skipped) printf(" nan_skipped %lld", (long long)r->nan_skipped);
    printf(" data_wait %.1f%%", 100.0 * data_wait);
    if (skipped || test_skipped)
        printf(" skipped_images %lld train %lld test", (long long)skipped, (long long)test_skipped);
    /* data-parallel: the communication left after backward (what overlap did not hide) */
    double wait_ms = r->ddp_steps ? 1000.0 * r->ddp_wait / (double)r->ddp_steps : 0;
    if (r->ddp) printf(" ddp_wait %.3f ms/step", wait_ms);
    r->ddp_wait = 0;
    r->ddp_steps = 0;
    printf("\n");
    fflush(stdout);
    if (skipped && r->rank == 0) { /* which files, on stderr (at most 50 lines) */
        fprintf(stderr, "ctorch train: epoch %lld: %lld unreadable training images skipped "
                "(--on-bad-image skip):\n", (long long)r->epoch + 1, (long long)skipped);
        const char *p = skip_report;
        for (int line = 0; p && *p && line < 50; line++) {
            const char *nl = strchr(p, '\n');
            int len = nl ? (int)(nl - p) : (int)strlen(p);
            fprintf(stderr, "  %.*s\n", len, p);
            p = nl ? nl + 1 : p + len;
        }
        if (skipped > 50) fprintf(stderr, "  ... and %lld more\n", (long long)skipped - 50);
    }
    json_t *row = json_pack(
        "{s:I, s:I, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o*, s:o*, s:o*}", "epoch",
        (json_int_t)r->epoch + 1, "step", (json_int_t)r->step, "train_loss",
        cli_json_number(s->loss_sum / (double)s->seen, "%.6f"), "train_acc",
        cli_json_number((double)s->correct / (double)s->seen, "%.6f"), "test_loss",
        cli_json_number(ev.loss, "%.6f"), "test_acc", cli_json_number(ev.accuracy, "%.6f"), "lr",
        cli_json_number(ct_optim_get_lr(r->opt), "%.8g"), "images_per_sec",
        cli_json_number(ips, "%.1f"), "seconds", cli_json_number(secs, "%.3f"),
        /* with a GradScaler: its scale and the steps skipped so far (inf/NaN gradients) */
        "loss_scale",
        r->a.amp.scaler ? cli_json_number(ct_grad_scaler_get_scale(r->a.amp.scaler), "%.8g") : NULL,
        "amp_skipped_steps",
        r->a.amp.scaler ? json_integer(ct_grad_scaler_skipped_steps(r->a.amp.scaler)) : NULL,
        "nan_skipped_steps", r->nan_skipped ? json_integer(r->nan_skipped) : NULL);
    if (row) json_object_set_new(row, "data_wait_frac", cli_json_number(data_wait, "%.4f"));
    if (row && (skipped || test_skipped || r->kind == CT_DATASET_IMAGEFOLDER)) {
        json_object_set_new(row, "skipped_train_images", json_integer(skipped));
        json_object_set_new(row, "skipped_test_images", json_integer(test_skipped));
    }
    if (row && r->ddp) {
        json_object_set_new(row, "world_size", json_integer(r->world));
        json_object_set_new(row, "ddp_wait_ms_per_step", cli_json_number(wait_ms, "%.4f"));
    }
    if (!row || json_array_append_new(r->rows, row) != 0)
        fprintf(stderr, "ctorch train: warning: out of memory for the metrics row\n");
    else
        monitor_row(r, row, unix_now());
    write_metrics(r);
    r->epoch++;
    r->batch = 0;
    memset(ls, 0, sizeof *ls);
    return CLI_OK;
}

/* ------------------------------------------------------------------ the end */
static void set_final(train_run *r, const char *status) {
    if (r->rank != 0) return;
    char now[32];
    run_utc_now(now, sizeof now);
    json_object_set_new(r->manifest, "status", json_string(status));
    json_object_set_new(r->manifest, "ended", json_string(now));
    json_object_set_new(r->manifest, "checkpoint_seconds", cli_json_number(r->ckpt_secs, "%.3f"));
    json_t *last = json_array_get(r->rows, json_array_size(r->rows) - 1);
    if (last)
        json_object_set_new(r->manifest, "final_metrics",
                            json_pack("{s:O, s:O, s:O?, s:O?, s:O?, s:O?}", "epoch",
                                      json_object_get(last, "epoch"), "step",
                                      json_object_get(last, "step"), "train_loss",
                                      json_object_get(last, "train_loss"), "train_acc",
                                      json_object_get(last, "train_acc"), "test_loss",
                                      json_object_get(last, "test_loss"), "test_acc",
                                      json_object_get(last, "test_acc")));
    else if (isfinite(r->final_acc)) /* no epoch row: the evaluation at the end */
        json_object_set_new(r->manifest, "final_metrics",
                            json_pack("{s:I, s:o, s:o}", "step", (json_int_t)r->step, "test_loss",
                                      cli_json_number(r->final_loss, "%.6f"), "test_acc",
                                      cli_json_number(r->final_acc, "%.6f")));
    manifest_write(r);
}

/* A signal: checkpoint where the run stands, the command that continues it, exit 0. */
static int finish_interrupted(train_run *r, const epoch_stats *s) {
    if (r->rank == 0)
        fprintf(stderr, "ctorch train: %s at step %lld (epoch %lld, batch %lld/%lld)\n",
                g_interrupted == SIGTERM ? "terminated" : "interrupted", (long long)r->step,
                (long long)r->epoch + 1, (long long)r->batch, (long long)r->spe);
    int rc = write_checkpoint(r, s);
    if (r->rank != 0) return CLI_OK;
    if (r->a.save) { /* the weights so far, as before run directories */
        const char *meta[] = {"format", "pt", "model", r->a.model, NULL};
        if (ct_module_save(r->model, r->a.save, meta) == 0) printf("saved weights to %s\n", r->a.save);
        else fprintf(stderr, "ctorch train: warning: saving %s: %s\n", r->a.save, ct_last_error());
    }
    set_final(r, "interrupted");
    if (rc != 0 && !r->last_ckpt) {
        fprintf(stderr, "ctorch train: no checkpoint could be written; the run cannot be resumed\n");
        return CLI_RUNTIME;
    }
    printf("checkpoint: %s\nresume with: ctorch train --resume %s\n", r->last_ckpt, r->dir);
    return CLI_OK;
}

/* The final weights (run dir and --save), the plot, a checkpoint to extend the run from,
 * the manifest. A failed final save exits 1 naming the file and the last checkpoint. */
static int finish_run(train_run *r, const epoch_stats *s) {
    json_t *last = json_array_get(r->rows, json_array_size(r->rows) - 1);
    if (last && isnan(r->final_acc)) { /* resumed after its last epoch: nothing to train */
        r->final_acc = json_number_value(json_object_get(last, "test_acc"));
        r->final_loss = json_number_value(json_object_get(last, "test_loss"));
        printf("the run had finished its %lld epochs; raise --epochs to train further\n",
               (long long)r->a.epochs);
    }
    if (!last) { /* --max-steps inside the first epoch */
        eval_result ev;
        if (cli_evaluate_sharded(r->model, r->test, r->kind, r->dev, 256, &r->a.amp, r->rank,
                                 r->world, &ev) == 0) {
            r->final_acc = ev.accuracy;
            r->final_loss = ev.loss;
        }
    }
    write_checkpoint(r, s);
    if (r->rank != 0) return CLI_OK; /* rank 0 writes the weights */
    char *mp = run_path(r->dir, "model.safetensors"), *cp = run_path(r->dir, "curves.svg");
    const char *meta[] = {"format", "pt", "model", r->a.model, NULL};
    int rc = CLI_OK;
    const char *saves[2] = {mp, r->a.save};
    for (int i = 0; i < 2 && rc == CLI_OK; i++) {
        if (!saves[i]) continue;
        if (ct_module_save(r->model, saves[i], meta) != 0) {
            rc = cli_fail("train", CLI_RUNTIME, "saving the final weights to %s failed: %s; the "
                          "last good checkpoint is %s (resume: ctorch train --resume %s)",
                          saves[i], ct_last_error(), r->last_ckpt ? r->last_ckpt : "(none)", r->dir);
        } else if (i == 1) printf("saved weights to %s\n", r->a.save);
    }
    if (rc == CLI_OK && cp && cli_write_curves_svg(cp, r->rows, r->dir) != 0)
        fprintf(stderr, "ctorch train: warning: could not draw %s: %s\n", cp, ct_last_error());
    free(mp);
    free(cp);
    set_final(r, rc == CLI_OK ? "completed" : "failed");
    if (rc == CLI_OK) printf("final test accuracy: %.2f%%\nrun directory: %s\n", 100.0 * r->final_acc, r->dir);
    return rc;
}

static void free_run(train_run *r) {
    ct_ddp_free(r->ddp);
    ct_device_prefetcher_free(r->pf);
    ct_dataloader_free(r->dl);
    ct_optim_free(r->opt);
    ct_grad_scaler_free(r->a.amp.scaler);
    ct_module_free(r->model);
    free(r->params);
    ct_dataset_free(r->train);
    ct_dataset_free(r->test);
    json_decref(r->rows);
    json_decref(r->manifest);
    json_decref(r->recorded);
    free(r->dir);
    free(r->last_ckpt);
}

/* ------------------------------------------------------------------ data-parallel */
/* Started by mpirun, srun or ctorch launch with more than one process: join the process
 * group (same ctorch build on every rank, checked), tag messages with the rank, and
 * silence stdout on ranks other than 0. */
static int dist_start(train_run *r) {
    int world = 1;
    r->rank = 0;
    r->world = 1;
    if (!ct_dist_env(&world, NULL, NULL, NULL) || world <= 1) return CLI_OK;
    char build[128];
    snprintf(build, sizeof build, "commit %s", cli_build_commit());
    ct_dist_opts o = {.timeout_seconds = r->a.dist_timeout, .build_id = build};
    if (ct_dist_init(&o) != 0) return cli_fail("train", CLI_RUNTIME, "%s", ct_last_error());
    r->rank = ct_dist_rank();
    r->world = ct_dist_world_size();
    snprintf(cli_rank_tag, sizeof cli_rank_tag, " (rank %d on %s)", r->rank, ct_dist_hostname());
    if (r->rank != 0 && !freopen("/dev/null", "w", stdout))
        return cli_fail("train", CLI_RUNTIME, "cannot open /dev/null");
    r->dstep.stop = (volatile int *)&g_interrupted;
    return CLI_OK;
}

/* One device per rank: cuda means cuda:<local rank>. */
static int dist_device(train_run *r) {
    if (r->world <= 1 || ct_device_is_host(r->dev)) return CLI_OK;
    r->dev.index = ct_dist_local_rank();
    if (ct_device_check(r->dev) != 0)
        return cli_fail("train", CLI_USAGE, "--device %s: rank %d uses device %d: %s (start at "
                        "most as many processes per host as it has GPUs)", r->a.device, r->rank,
                        r->dev.index, ct_last_error());
    return CLI_OK;
}

/* Wraps the model in DDP (after any resume: every rank restored the same checkpoint, and
 * rank 0's weights are broadcast anyway). */
static int dist_wrap(train_run *r) {
    if (r->world <= 1) return CLI_OK;
    ct_ddp_opts o = ct_ddp_default_opts();
    o.bucket_cap_mb = r->a.bucket_mb;
    if (!(r->ddp = ct_ddp_new(r->model, &o))) return cli_fail("train", CLI_RUNTIME, "%s", ct_last_error());
    ct_ddp_set_overlap(r->ddp, !r->a.no_overlap);
    r->dstep.ddp = r->ddp;
    if (r->rank == 0)
        printf("data-parallel: %d processes (%s), %d gradient buckets of at most %g MiB%s\n",
               r->world, ct_dist_backend_version() ? ct_dist_backend_version() : "MPI",
               ct_ddp_num_buckets(r->ddp), r->a.bucket_mb, r->a.sync_bn ? ", SyncBatchNorm" : "");
    return CLI_OK;
}

/* At an epoch's end: do all ranks stop (a signal reached any)? */
static int dist_agree_stop(train_run *r) {
    if (r->world <= 1) return g_interrupted != 0;
    if (r->stop_agreed) return 1;
    int32_t f = g_interrupted != 0;
    if (ct_dist_all_reduce_buf(&f, 1, CT_INT32, CT_REDUCE_MAX) != 0) return -1;
    return r->stop_agreed = f != 0;
}

int cmd_train(int argc, char **argv) {
    train_run r = {.a = default_args(), .argc = argc, .argv = argv, .final_acc = NAN, .world = 1};
    epoch_stats s = {0};
    int rc = parse_args(argc, argv, &r);
    if (rc == CLI_OK) rc = dist_start(&r);
    if (rc == CLI_OK) rc = resolve_options(&r);
    if (rc == CLI_OK) rc = dist_device(&r);
    if (rc == CLI_OK) rc = setup_run(&r);
    if (rc == CLI_OK) rc = open_run_dir(&r);
    if (rc == CLI_OK && r.a.resume) rc = resume_from_checkpoint(&r, &s);
    if (rc == CLI_OK) rc = dist_wrap(&r);
    if (rc == CLI_OK) rc = start_monitor(&r);
    if (rc == CLI_OK) {
        struct sigaction sa = {0};
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        print_banner(&r);
        int stopped = 0;
        while (r.epoch < r.a.epochs && r.step < r.total && !stopped) {
            if ((rc = train_epoch(&r, &s, &stopped)) != CLI_OK || stopped) break;
            if ((rc = evaluate_epoch(&r, &s)) != CLI_OK) break;
            if ((stopped = dist_agree_stop(&r)) < 0) {
                rc = cli_fail("train", CLI_RUNTIME, "%s", ct_last_error());
                break;
            }
            if (r.a.checkpoint_every == 0 && !stopped) write_checkpoint(&r, &s);
        }
        /* the run's last step inside an epoch (--max-steps): that epoch's figures (the
         * ranks take equal steps: all or none of them get here) */
        if (rc == CLI_OK && !stopped && r.batch > 0 && (s.seen > 0 || r.world > 1))
            rc = evaluate_epoch(&r, &s);
        int interrupted = r.world == 1 ? g_interrupted != 0 : r.stop_agreed;
        if (rc == CLI_OK) rc = interrupted ? finish_interrupted(&r, &s) : finish_run(&r, &s);
        else if (r.manifest) set_final(&r, "failed");
    } else if (r.manifest && rc == CLI_RUNTIME) {
        set_final(&r, "failed");
    }
    stop_monitor(&r, rc);
    free_run(&r);
    /* MPI wants its finalize after a success; after a failure the exit code ends the job
     * (mpirun stops the other ranks) */
    if (rc == CLI_OK && r.world > 1 && ct_dist_finalize() != 0) rc = CLI_RUNTIME;
    return rc;
}

int cli_train_option_kind(const char *name, size_t len, int *takes_value) {
    train_args a = default_args();
    cli_opt o[NOPTS];
    int kind[NOPTS], n = train_opts(&a, o, kind);
    for (int i = 0; i < n; i++) {
        if (strlen(o[i].name) != len || strncmp(o[i].name, name, len) != 0) continue;
        if (takes_value) *takes_value = o[i].type != OPT_FLAG;
        return kind[i] == RESULT ? TRAIN_OPT_RESULT : kind[i] == LOCAL ? TRAIN_OPT_LOCAL
                                                                       : TRAIN_OPT_RESUMABLE;
    }
    if (takes_value) *takes_value = 0;
    return TRAIN_OPT_UNKNOWN;
}
