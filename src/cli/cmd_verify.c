/* ctorch verify ARCHIVE|RUN_DIR: checks a run archive written by `ctorch archive` (or a run
 * directory): every sum of SHA256SUMS, the manifest, the weights, then re-evaluates
 * model.safetensors on the recorded test set and compares the accuracy with the manifest's
 * final_metrics.test_acc. One line per check, then "verified" or "FAILED: <files>".
 * Exit 0 verified, 1 a check failed, 2 bad input. docs/runs.md. */
#include "cli.h"
#include "run_info.h"
#include "ctorch.h"
#include "ctorch_data.h"
#include "ctorch_io.h"
#include "ctorch_nn.h"
#include "data/data_internal.h" /* ct_tar_gz_scan: the library's libarchive reader */
#include "run_archive.h"
#include "train_common.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CMD "verify"
#define MAX_MEMBERS 64

typedef struct {
    const char *path, *data_dir;
    int64_t threads;
    int no_eval, is_archive;
    char dir[PATH_MAX]; /* the run's files: the directory, or the archive extracted */
    char tmp[PATH_MAX]; /* the extraction directory (removed at the end) */
    char top[NAME_MAX + 1];
    char members[MAX_MEMBERS][NAME_MAX + 1];
    int nmembers;
    char listed[MAX_MEMBERS][NAME_MAX + 1]; /* the names in SHA256SUMS */
    int nlisted;
    char failed[2048]; /* the files that failed, ", "-separated */
    json_t *manifest;
    char err[PATH_MAX + 256];
} verify_job;

/* ------------------------------------------------------------------- report lines */
static void line(const char *tag, const char *fmt, va_list ap) {
    printf("%-8s", tag);
    vprintf(fmt, ap);
    putchar('\n');
    fflush(stdout);
}

static void __attribute__((format(printf, 1, 2))) ok(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    line("ok", fmt, ap);
    va_end(ap);
}

static void __attribute__((format(printf, 1, 2))) note(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    line("note", fmt, ap);
    va_end(ap);
}

static int has_failed(const verify_job *v, const char *file) {
    size_t n = strlen(file);
    for (const char *p = v->failed; (p = strstr(p, file)); p += n)
        if ((p == v->failed || p[-1] == ' ') && (p[n] == 0 || p[n] == ','))
            return 1;
    return 0;
}

/* A failed check of `file`: "FAILED  file: why", and file in the final line. */
static void __attribute__((format(printf, 3, 4))) failed(verify_job *v, const char *file, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%-8s%s: ", "FAILED", file);
    vprintf(fmt, ap);
    putchar('\n');
    fflush(stdout);
    va_end(ap);
    size_t o = strlen(v->failed);
    if (!has_failed(v, file))
        snprintf(v->failed + o, sizeof v->failed - o, "%s%s", o ? ", " : "", file);
}

/* ---------------------------------------------------------------- the archive */
/* A plain file name (no directory, not . or ..). */
static int plain_name(const char *s) {
    return s[0] && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0 &&
           strlen(s) <= NAME_MAX;
}

static int ex_want(void *ctx, const char *name, uint64_t size) {
    (void)ctx, (void)name, (void)size;
    return 1;
}

static int __attribute__((format(printf, 2, 3))) ex_fail(verify_job *v, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v->err, sizeof v->err, fmt, ap);
    va_end(ap);
    return -1;
}

/* Whether TOP/FILE (name) can be a member of a run archive; -1 with v->err when not. */
static int check_member(verify_job *v, const char *name) {
    const char *slash = strchr(name, '/');
    size_t tl = slash ? (size_t)(slash - name) : 0;
    if (!slash || !tl || tl > NAME_MAX || !plain_name(slash + 1))
        return ex_fail(v, "%s: member %s is not TOP/FILE: not an archive that `ctorch archive` "
                       "writes", v->path, name);
    if (v->top[0] && (strlen(v->top) != tl || strncmp(v->top, name, tl) != 0))
        return ex_fail(v, "%s: members under two top directories (%s/ and %.*s/): not an archive "
                       "that `ctorch archive` writes", v->path, v->top, (int)tl, name);
    if (v->nmembers == MAX_MEMBERS)
        return ex_fail(v, "%s has more than %d members: not an archive that `ctorch archive` "
                       "writes", v->path, MAX_MEMBERS);
    for (int i = 0; i < v->nmembers; i++)
        if (!strcmp(v->members[i], slash + 1))
            return ex_fail(v, "%s holds %s twice: not an archive that `ctorch archive` writes",
                           v->path, name);
    if (!v->top[0]) {
        snprintf(v->top, sizeof v->top, "%.*s", (int)tl, name);
        if (arc_path(v->dir, sizeof v->dir, v->tmp, v->top) != 0 || mkdir(v->dir, 0700) != 0)
            return ex_fail(v, "cannot create %s: %s", v->dir, strerror(errno));
    }
    return 0;
}

/* A member TOP/FILE of the archive, written into the extraction directory. */
static int ex_got(void *ctx, const char *name, uint8_t *data, uint64_t size) {
    verify_job *v = ctx;
    int rc = check_member(v, name);
    const char *file = rc ? NULL : strchr(name, '/') + 1;
    char path[PATH_MAX] = "";
    FILE *f = NULL;
    if (!rc) snprintf(v->members[v->nmembers++], NAME_MAX + 1, "%s", file); /* removed at the end */
    if (!rc && (arc_path(path, sizeof path, v->dir, file) != 0 || !(f = fopen(path, "wb")) ||
                fwrite(data, 1, (size_t)size, f) != size))
        rc = ex_fail(v, "cannot write %s in %s: %s", file, v->dir, strerror(errno));
    if (f && fclose(f) != 0 && !rc) rc = ex_fail(v, "cannot write %s: %s", path, strerror(errno));
    free(data);
    return rc;
}

/* The archive into a temporary directory. CLI_OK, or the exit code after a message. */
static int extract(verify_job *v) {
    const char *t = getenv("TMPDIR");
    snprintf(v->tmp, sizeof v->tmp, "%s/ctorch-verify-XXXXXX", t && t[0] ? t : "/tmp");
    if (!mkdtemp(v->tmp)) {
        int e = errno;
        v->tmp[0] = 0;
        return cli_fail(CMD, CLI_RUNTIME, "cannot create a temporary directory in %s: %s (set "
                        "TMPDIR to a writable directory)", t && t[0] ? t : "/tmp", strerror(e));
    }
    if (ct_tar_gz_scan(v->path, ex_want, ex_got, v) != 0)
        return cli_fail(CMD, CLI_USAGE, "%s", v->err[0] ? v->err : ct_last_error());
    if (!v->nmembers)
        return cli_fail(CMD, CLI_USAGE, "%s holds no files: not an archive that `ctorch archive` writes", v->path);
    ok("%s: %d files under %s/", v->path, v->nmembers, v->top);
    return CLI_OK;
}

static void remove_extracted(verify_job *v) {
    if (!v->tmp[0]) return;
    char path[PATH_MAX];
    for (int i = 0; i < v->nmembers; i++)
        if (arc_path(path, sizeof path, v->dir, v->members[i]) == 0) unlink(path);
    if (v->top[0]) rmdir(v->dir);
    rmdir(v->tmp);
}

/* ------------------------------------------------------------------ SHA256SUMS */
static int is_listed(const verify_job *v, const char *name) {
    for (int i = 0; i < v->nlisted; i++)
        if (!strcmp(v->listed[i], name)) return 1;
    return 0;
}

/* One line "HEX  NAME" (or "HEX *NAME") of SHA256SUMS: the file's sum checked. */
static void check_sum_line(verify_job *v, char *ln, int lineno) {
    size_t len = strcspn(ln, "\r\n");
    ln[len] = 0;
    if (!len) return;
    int good = len > 66 && ln[64] == ' ' && (ln[65] == ' ' || ln[65] == '*') &&
               plain_name(ln + 66) && v->nlisted < MAX_MEMBERS;
    for (int i = 0; good && i < 64; i++)
        good = (ln[i] >= '0' && ln[i] <= '9') || (ln[i] >= 'a' && ln[i] <= 'f');
    if (!good) {
        failed(v, RUN_SUMS, "line %d is not \"SHA256  FILE\" (a file of this directory)", lineno);
        return;
    }
    const char *name = ln + 66;
    snprintf(v->listed[v->nlisted++], NAME_MAX + 1, "%s", name);
    char path[PATH_MAX], hex[65];
    struct stat st;
    if (arc_path(path, sizeof path, v->dir, name) != 0 || stat(path, &st) != 0)
        failed(v, name, "missing (SHA256SUMS lists it)");
    else if (ct_sha256_file(path, hex) != 0)
        failed(v, name, "%s", ct_last_error());
    else if (memcmp(hex, ln, 64) != 0)
        failed(v, name, "modified: its SHA-256 is %.16s..., SHA256SUMS says %.16s...", hex, ln);
    else
        ok("%s: sha256 %.16s... matches", name, hex);
}

/* Every sum of SHA256SUMS; the manifest, the weights and (in an archive) every member must
 * be listed. Returns 0 when there is no SHA256SUMS. */
static int check_sums(verify_job *v) {
    char path[PATH_MAX];
    arc_path(path, sizeof path, v->dir, RUN_SUMS);
    FILE *f = fopen(path, "r");
    if (!f) {
        if (v->is_archive)
            failed(v, RUN_SUMS, "missing: `ctorch archive` always writes one, so the archive's "
                   "files cannot be checked");
        else
            note("%s has no SHA256SUMS (a run directory, not an extracted archive): checking that "
                 "manifest.json parses and model.safetensors loads", v->dir);
        return 0;
    }
    char ln[PATH_MAX + 80];
    for (int lineno = 1; fgets(ln, sizeof ln, f); lineno++) check_sum_line(v, ln, lineno);
    fclose(f);
    const char *required[] = {RUN_MANIFEST, RUN_MODEL};
    for (int k = 0; k < 2; k++)
        if (!is_listed(v, required[k])) failed(v, required[k], "not listed in SHA256SUMS");
    for (int i = 0; i < v->nmembers; i++)
        if (strcmp(v->members[i], RUN_SUMS) != 0 && !is_listed(v, v->members[i]))
            failed(v, v->members[i], "in the archive but not listed in SHA256SUMS");
    return 1;
}

/* ------------------------------------------------------------------ re-evaluation */
/* Whether this is the run's build and machine (exact match expected): the same ctorch
 * commit (or version, when the commit is unknown), CPU kernels and CPU model, as
 * src/cli/run_info.c records them. */
static int same_environment(const json_t *manifest, char *why, size_t n) {
    json_t *ct = cli_env_ctorch(), *sys = cli_env_system(0);
    const char *keys[][2] = {{"ctorch.git_commit", "git_commit"}, {"ctorch.cpu_kernels", "cpu_kernels"},
                             {"system.cpu_model", "cpu_model"}};
    const char *names[] = {"ctorch commit", "CPU kernels", "CPU"};
    int same = 1;
    for (int i = 0; i < 3 && same; i++) {
        const char *rec = run_json_str(manifest, keys[i][0]);
        const char *here = json_string_value(json_object_get(i < 2 ? ct : sys, keys[i][1]));
        if (i == 0 && (!rec || !here || !strcmp(rec, "unknown") || !strcmp(here, "unknown"))) {
            rec = run_json_str(manifest, "ctorch.version"); /* no commit: the version */
            here = CT_VERSION;
            names[0] = "ctorch";
        }
        if (!rec || !here || strcmp(rec, here) != 0) {
            snprintf(why, n, "%s \"%s\" here, \"%s\" in the run", names[i], here ? here : "unknown",
                     rec ? rec : "unrecorded");
            same = 0;
        }
    }
    json_decref(ct);
    json_decref(sys);
    return same;
}

/* The re-evaluated accuracy against final_metrics.test_acc: exactly equal (to the 6
 * decimals recorded) on the run's ctorch, CPU and device; else within 0.5 percentage
 * point, or 2 test images when that is more. */
static void compare_accuracy(verify_job *v, const eval_result *ev, const char *device_why) {
    double rec;
    long long n = (long long)ev->n, correct = llround(ev->accuracy * (double)ev->n);
    if (run_json_num(v->manifest, "final_metrics.test_acc", &rec) != 0) {
        note("manifest.json records no final_metrics.test_acc (status %s): the weights score "
             "%.2f%% (%lld/%lld test images)", run_json_str(v->manifest, "status") ?
             run_json_str(v->manifest, "status") : "unrecorded", 100.0 * ev->accuracy, correct, n);
        return;
    }
    char why[1024];
    int exact = !device_why && same_environment(v->manifest, why, sizeof why);
    if (device_why) snprintf(why, sizeof why, "%s", device_why);
    double diff = ev->accuracy - rec;
    if (exact) {
        if (fabs(diff) <= 5e-7 + 1e-12)
            ok("test accuracy %.4f%% (%lld/%lld images) = the recorded %.4f%% (the run's ctorch "
               "and CPU: exact match required)", 100.0 * ev->accuracy, correct, n, 100.0 * rec);
        else
            failed(v, RUN_MODEL, "test accuracy %.4f%% (%lld/%lld images), recorded %.4f%%: on the "
                   "run's ctorch and CPU it must match exactly", 100.0 * ev->accuracy, correct, n,
                   100.0 * rec);
        return;
    }
    double tol = fmax(0.005, 2.0 / (double)(n > 0 ? n : 1));
    if (fabs(diff) <= tol)
        ok("test accuracy %.2f%% (%lld/%lld images), recorded %.2f%%: %+.2f points, within the "
           "%.2f allowed because %s", 100.0 * ev->accuracy, correct, n, 100.0 * rec, 100.0 * diff,
           100.0 * tol, why);
    else
        failed(v, RUN_MODEL, "test accuracy %.2f%% (%lld/%lld images), recorded %.2f%%: %+.2f "
               "points, more than the %.2f allowed (%s)", 100.0 * ev->accuracy, correct, n,
               100.0 * rec, 100.0 * diff, 100.0 * tol, why);
}

/* The recorded data files (manifest "datasets") found under the data root, hashed and
 * compared: notes only (other data explain a different accuracy; they are no failure of the
 * archive). */
static void check_data(const verify_job *v, const char *root, ct_dataset_kind kind) {
    json_t *ds = run_json_at(v->manifest, "datasets");
    for (size_t i = 0; i < json_array_size(ds); i++) {
        const char *p = run_json_str(json_array_get(ds, i), "path");
        const char *want = run_json_str(json_array_get(ds, i), "sha256");
        if (!p || !want) continue;
        const char *base = strrchr(p, '/') ? strrchr(p, '/') + 1 : p;
        char cand[3][PATH_MAX], sub[PATH_MAX], hex[65];
        snprintf(cand[0], PATH_MAX, "%s", p);
        arc_path(cand[1], PATH_MAX, root, p[0] == '/' ? base : p);
        arc_path(sub, PATH_MAX, root, ct_dataset_subdir(kind));
        arc_path(cand[2], PATH_MAX, sub, base);
        const char *found = NULL;
        struct stat st;
        for (int k = p[0] == '/' ? 0 : 1; k < 3 && !found; k++)
            if (stat(cand[k], &st) == 0 && S_ISREG(st.st_mode)) found = cand[k];
        if (!found) note("data %s: not found under %s; not compared", base, root);
        else if (ct_sha256_file(found, hex) != 0) note("data %s: %s", base, ct_last_error());
        else if (strcmp(hex, want) != 0)
            note("data %s: sha256 %.16s... differs from the run's %.16s...: the evaluation reads "
                 "other data than the training did", found, hex, want);
        else ok("data %s: sha256 matches the run's", found);
    }
}

/* What the evaluation needs from the manifest's config. */
typedef struct {
    const char *model, *dataset, *amp, *device;
    ct_dataset_kind kind;
    int64_t test_limit;
} eval_config;

static int read_config(const verify_job *v, eval_config *c) {
    const json_t *m = v->manifest;
    c->model = run_json_str(m, "config.model");
    c->dataset = run_json_str(m, "config.dataset");
    c->amp = run_json_str(m, "config.amp");
    c->device = run_json_str(m, "config.device");
    if (!c->amp) c->amp = "off";
    if (!c->device) c->device = "cpu";
    if (!c->model || !c->dataset)
        return cli_fail(CMD, CLI_USAGE, "%s: manifest.json has no config.%s, so the weights cannot "
                        "be re-evaluated (--no-eval checks the files only)", v->path,
                        c->model ? "dataset" : "model");
    int known = 0;
    for (const char *const *n = ct_model_names(); *n; n++) known |= !strcmp(*n, c->model);
    if (!known)
        return cli_fail(CMD, CLI_USAGE, "%s: config.model '%s' is not a model of this ctorch "
                        "(`ctorch help train` lists them); --no-eval checks the files only", v->path, c->model);
    if (ct_dataset_parse_name(c->dataset, &c->kind) != 0)
        return cli_fail(CMD, CLI_USAGE, "%s: config.dataset: %s", v->path, ct_last_error());
    static const char *const amps[] = {"off", "bf16", "fp16", "bfloat16", "float16", "fp32", "float32"};
    known = 0;
    for (size_t k = 0; k < sizeof amps / sizeof *amps; k++) known |= !strcmp(amps[k], c->amp);
    if (!known)
        return cli_fail(CMD, CLI_USAGE, "%s: config.amp '%s' is not off, bf16 or fp16", v->path, c->amp);
    double limit = 0;
    json_t *tl = run_json_at(m, "config.test_limit");
    if (tl && !json_is_null(tl) && (run_json_num(m, "config.test_limit", &limit) != 0 || limit < 0 ||
                                    limit != floor(limit)))
        return cli_fail(CMD, CLI_USAGE, "%s: config.test_limit is not a count of images", v->path);
    c->test_limit = (int64_t)limit;
    return CLI_OK;
}

/* The recorded device, or the CPU with a note when it is unusable here. *device_why says
 * why the accuracy cannot be required to match exactly: the CPU instead of the run's GPU,
 * or a GPU (its kernels are not bitwise reproducible from one run to the next). */
static ct_device pick_device(const char *recorded, char *why, size_t n, const char **device_why) {
    ct_device dev;
    *device_why = NULL;
    if (ct_device_parse(recorded, &dev) == 0 && ct_device_check(dev) == 0) {
        if (ct_device_is_host(dev)) return dev;
        snprintf(why, n, "the evaluation ran on %s (GPU results are not bitwise reproducible)",
                 recorded);
        *device_why = why;
        return dev;
    }
    snprintf(why, n, "the run used --device %s, unusable here (%s), so the evaluation ran on the "
             "CPU", recorded, ct_last_error());
    note("%s", why);
    *device_why = why;
    return ct_cpu();
}

/* model.safetensors evaluated on the recorded test set, compared with the manifest.
 * CLI_OK (a mismatch is recorded as a failure), or the exit code after a message. */
static int reevaluate(verify_job *v) {
    eval_config c;
    int rc = read_config(v, &c);
    if (rc) return rc;
    cli_amp amp = {CT_FLOAT32, NULL};
    if ((rc = cli_amp_parse(CMD, c.amp, &amp))) return rc;
    char dwhy[1024], model_path[PATH_MAX];
    const char *device_why;
    ct_device dev = pick_device(c.device, dwhy, sizeof dwhy, &device_why);
    const char *dd = v->data_dir, *recorded = run_json_str(v->manifest, "config.data_dir");
    struct stat st;
    if (!dd && recorded && stat(recorded, &st) == 0 && S_ISDIR(st.st_mode)) dd = recorded;
    if (v->threads) ct_set_num_threads((int)v->threads);
    check_data(v, ct_data_root(dd), c.kind);
    /* imagefolder: the recorded --image-size and --on-bad-image (null on other datasets) */
    double isz = 0;
    json_t *isj = run_json_at(v->manifest, "config.image_size");
    if (isj && json_is_number(isj)) run_json_num(v->manifest, "config.image_size", &isz);
    ct_dataset *test = cli_dataset_load(c.kind, CT_SPLIT_TEST, dd, c.test_limit, (int64_t)isz,
                                        run_json_str(v->manifest, "config.on_bad_image"));
    if (!test)
        return cli_fail(CMD, CLI_USAGE, "%s. The run's test set is needed to re-evaluate its "
                        "weights: pass --data-dir DIR (or --no-eval to check the files only)", ct_last_error());
    arc_path(model_path, sizeof model_path, v->dir, RUN_MODEL);
    /* a fine-tuned head (config.num_classes); a run from before torchvision's resnet18 (no
     * config.num_classes) whose resnet18 is resnet18_cifar (docs/models.md) */
    json_t *ncj = run_json_at(v->manifest, "config.num_classes");
    int classes = json_is_integer(ncj) && json_integer_value(ncj) > 0 ? (int)json_integer_value(ncj)
                                                                       : test->num_classes;
    const char *arch = !ncj && !strcmp(c.model, "resnet18") ? "resnet18_cifar" : c.model;
    if (arch != c.model)
        note("config.model resnet18 of a run from before resnet18_cifar: evaluated as "
             "resnet18_cifar");
    ct_module *model = ct_model_create_ex(arch, classes, test->c, test->h, test->w);
    eval_result ev;
    if (!model) {
        rc = cli_fail(CMD, CLI_RUNTIME, "%s", ct_last_error());
    } else if (ct_module_load(model, model_path) != 0) {
        failed(v, RUN_MODEL, "does not hold the weights of config.model %s: %s", c.model, ct_last_error());
    } else {
        note("evaluating %s on the %s test set (%lld images) from %s, amp %s, on %s", c.model,
             ct_dataset_name(c.kind), (long long)test->n, ct_data_root(dd), c.amp,
             ct_device_is_host(dev) ? "cpu" : c.device);
        if (ct_module_to(model, dev, -1) != 0 || cli_evaluate(model, test, c.kind, dev, 256, &amp, &ev) != 0)
            rc = cli_fail(CMD, CLI_RUNTIME, "evaluating %s: %s", model_path, ct_last_error());
        else
            compare_accuracy(v, &ev, device_why);
    }
    ct_module_free(model);
    ct_dataset_free(test);
    return rc;
}

/* ------------------------------------------------------------------------ entry */
static int check_files(verify_job *v) {
    char mpath[PATH_MAX], wpath[PATH_MAX];
    struct stat st;
    arc_path(mpath, sizeof mpath, v->dir, RUN_MANIFEST);
    arc_path(wpath, sizeof wpath, v->dir, RUN_MODEL);
    if (stat(mpath, &st) != 0)
        return cli_fail(CMD, CLI_USAGE, "%s has no manifest.json: not a ctorch run %s", v->path,
                        v->is_archive ? "archive (`ctorch archive` writes them)" : "directory");
    check_sums(v);
    if (!has_failed(v, RUN_MANIFEST)) {
        if (!(v->manifest = run_manifest_load(CMD, mpath))) return CLI_USAGE;
        ok("manifest.json: a ctorch run, status %s", run_json_str(v->manifest, "status") ?
           run_json_str(v->manifest, "status") : "unrecorded");
    }
    if (!has_failed(v, RUN_MODEL)) {
        ct_safetensors *w = ct_safetensors_load(wpath);
        if (w) ok("model.safetensors: %d tensors", w->n);
        else failed(v, RUN_MODEL, "%s", ct_last_error());
        ct_safetensors_free(w);
    }
    return CLI_OK;
}

static int run_verify(verify_job *v) {
    struct stat st;
    if (stat(v->path, &st) != 0)
        return cli_fail(CMD, CLI_USAGE, "%s: %s; name a run archive (the .tar.gz of `ctorch "
                        "archive`) or a run directory", v->path, strerror(errno));
    int rc = CLI_OK;
    if (S_ISDIR(st.st_mode)) {
        snprintf(v->dir, sizeof v->dir, "%s", v->path);
    } else if (!S_ISREG(st.st_mode)) {
        return cli_fail(CMD, CLI_USAGE, "%s is neither a file nor a directory", v->path);
    } else if (!RUN_HAVE_LIBARCHIVE) {
        return cli_fail(CMD, CLI_RUNTIME, RUN_NO_LIBARCHIVE "; or extract it (tar xzf %s) and "
                        "verify the directory", "read", v->path);
    } else {
        v->is_archive = 1;
        if ((rc = extract(v))) return rc;
    }
    if ((rc = check_files(v))) return rc;
    if (v->failed[0]) note("not re-evaluated: a file failed its check");
    else if (v->no_eval) note("not re-evaluated (--no-eval)");
    else if ((rc = reevaluate(v))) return rc;
    if (v->failed[0]) {
        printf("FAILED: %s\n", v->failed);
        return CLI_RUNTIME;
    }
    printf("verified\n");
    return CLI_OK;
}

int cmd_verify(int argc, char **argv) {
    verify_job *v = calloc(1, sizeof *v);
    if (!v) return cli_fail(CMD, CLI_RUNTIME, "out of memory");
    cli_opt opts[] = {
        {"--data-dir", OPT_STRING, &v->data_dir, 0, 0, 0},
        {"--no-eval", OPT_FLAG, &v->no_eval, 0, 0, 0},
        {"--threads", OPT_INT, &v->threads, 1, 1024, 0},
    };
    const char *pos[1];
    int npos, rc = cli_parse(CMD, argc, argv, opts, (int)(sizeof opts / sizeof *opts), pos, 1, &npos);
    if (!rc && npos != 1)
        rc = cli_fail(CMD, CLI_USAGE, "name what to verify: ctorch verify ARCHIVE.tar.gz|RUN_DIR "
                      "[--data-dir DIR]; see `ctorch help verify`");
    if (!rc) {
        v->path = pos[0];
        rc = run_verify(v);
    }
    remove_extracted(v);
    json_decref(v->manifest);
    free(v);
    return rc;
}
