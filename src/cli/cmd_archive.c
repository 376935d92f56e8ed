/* ctorch archive RUN_DIR: a citable, verifiable .tar.gz of a training run directory. Under
 * a top directory named after the run: manifest.json, model.safetensors, metrics.jsonl,
 * curves.svg (when present), and generated README.md, CITATION.cff, .zenodo.json and
 * SHA256SUMS; --upload zenodo deposits it on Zenodo (zenodo.c). docs/runs.md, "Archiving
 * and verifying a run". */
#include "cli.h"
#include "ctorch.h"
#include "ctorch_data.h"
#include "ctorch_io.h"
#include "run_archive.h"

#include <errno.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifdef CT_HAVE_LIBARCHIVE
#include <archive.h>
#include <archive_entry.h>
#endif

#define CMD "archive"
#define MAX_AUTHORS 32

typedef struct {
    const char *run_dir, *out, *title, *license, *keywords, *description, *version;
    const char *upload, *zenodo_url, *token_file;
    const char *authors[MAX_AUTHORS];
    int nauthors;
    int publish, allow_incomplete;
} archive_args;

typedef struct {
    char family[256], given[256], affiliation[512];
} author;

/* A file of the archive: copied from the run directory (src) or generated (data). */
typedef struct {
    const char *name;
    char src[PATH_MAX];
    char *data;
    size_t size;
} member;

/* Everything the archive says, gathered before anything is written. */
typedef struct {
    archive_args a;
    json_t *manifest;
    const char *status;
    char name[NAME_MAX + 1]; /* the top directory: the run directory's name */
    char out[PATH_MAX];
    author authors[MAX_AUTHORS];
    int nauthors;
    json_t *keywords; /* array of strings */
    char title[1024], date[16];
    char *description; /* malloc'd */
    time_t mtime;
    char model_file[PATH_MAX];
} archive_job;

/* ------------------------------------------------------------------ text helpers */
/* s without leading and trailing blanks into out; -1 when it does not fit. */
static int trimmed(const char *s, size_t len, char *out, size_t n) {
    while (len && (*s == ' ' || *s == '\t')) s++, len--;
    while (len && (s[len - 1] == ' ' || s[len - 1] == '\t')) len--;
    if (len >= n) return -1;
    memcpy(out, s, len);
    out[len] = 0;
    return 0;
}

static int is_utf8(const char *s) {
    json_t *j = json_string(s);
    json_decref(j);
    return j != NULL;
}

/* A JSON value as text for the README: strings as they are, numbers, true/false, objects
 * and arrays as compact JSON (cut to n bytes); "-" for null or missing. */
static const char *text_of(const json_t *v, char *buf, size_t n) {
    if (json_is_string(v)) return json_string_value(v);
    if (json_is_object(v) || json_is_array(v)) {
        char *d = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        snprintf(buf, n, "%s", d ? d : "-");
        free(d);
        return buf;
    }
    if (json_is_integer(v)) snprintf(buf, n, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v)) snprintf(buf, n, "%.6g", json_real_value(v));
    else if (json_is_boolean(v)) snprintf(buf, n, "%s", json_is_true(v) ? "true" : "false");
    else snprintf(buf, n, "-");
    return buf;
}

static const char *mtext(const archive_job *j, const char *dotted, char *buf, size_t n) {
    return text_of(run_json_at(j->manifest, dotted), buf, n);
}

/* The first of two dotted paths that is present (a detail of an object, else the whole). */
static const char *mtext2(const archive_job *j, const char *first, const char *second, char *buf,
                          size_t n) {
    return mtext(j, run_json_at(j->manifest, first) ? first : second, buf, n);
}

/* An accuracy (a fraction) at a dotted path as "NN.NN%", or "-". */
static const char *mpercent(const archive_job *j, const char *dotted, char *buf, size_t n) {
    double v;
    if (run_json_num(j->manifest, dotted, &v) != 0) return "-";
    snprintf(buf, n, "%.2f%%", 100.0 * v);
    return buf;
}

/* s as a YAML double-quoted scalar (a JSON string is one). */
static void yaml_str(FILE *f, const char *s) {
    json_t *j = json_string(s);
    char *q = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    fputs(q ? q : "\"\"", f);
    free(q);
    json_decref(j);
}

/* ------------------------------------------------------------------- arguments */
/* The repeatable --author (V or =V) into a->authors; the other arguments into rest, in
 * order, for cli_parse (a value of another option is passed on as it is, even when it
 * reads "--author"). */
static int take_authors(int argc, char **argv, const cli_opt *opts, int nopts, archive_args *a,
                        char **rest, int *nrest) {
    if (argc > 256) return cli_fail(CMD, CLI_USAGE, "too many arguments (%d)", argc);
    for (int i = 0; i < argc; i++) {
        const char *v = !strncmp(argv[i], "--author=", 9) ? argv[i] + 9
                        : !strcmp(argv[i], "--author") ? (i + 1 < argc ? argv[++i] : "") : NULL;
        if (v && !*v) return cli_fail(CMD, CLI_USAGE, "--author needs a value: --author "
                                      "\"Family, Given; Affiliation\"");
        if (v && a->nauthors == MAX_AUTHORS)
            return cli_fail(CMD, CLI_USAGE, "--author can be given at most %d times", MAX_AUTHORS);
        if (v) {
            a->authors[a->nauthors++] = v;
            continue;
        }
        rest[(*nrest)++] = argv[i];
        for (int k = 0; k < nopts; k++)
            if (opts[k].type != OPT_FLAG && !strcmp(argv[i], opts[k].name) && i + 1 < argc)
                rest[(*nrest)++] = argv[++i];
    }
    return CLI_OK;
}

static int parse_args(int argc, char **argv, archive_args *a) {
    memset(a, 0, sizeof *a);
    a->license = "CC-BY-4.0";
    a->version = "1";
    a->zenodo_url = "https://zenodo.org/api";
    cli_opt opts[] = {
        {"--out", OPT_STRING, &a->out, 0, 0, 0},
        {"--title", OPT_STRING, &a->title, 0, 0, 0},
        {"--license", OPT_STRING, &a->license, 0, 0, 0},
        {"--keywords", OPT_STRING, &a->keywords, 0, 0, 0},
        {"--description", OPT_STRING, &a->description, 0, 0, 0},
        {"--version", OPT_STRING, &a->version, 0, 0, 0},
        {"--allow-incomplete", OPT_FLAG, &a->allow_incomplete, 0, 0, 0},
        {"--upload", OPT_STRING, &a->upload, 0, 0, 0},
        {"--publish", OPT_FLAG, &a->publish, 0, 0, 0},
        {"--zenodo-url", OPT_STRING, &a->zenodo_url, 0, 0, 0},
        {"--token-file", OPT_STRING, &a->token_file, 0, 0, 0},
    };
    const int nopts = (int)(sizeof opts / sizeof *opts);
    char *rest[256];
    int nrest = 0, rc = take_authors(argc, argv, opts, nopts, a, rest, &nrest);
    const char *pos[1];
    int npos;
    if (rc || (rc = cli_parse(CMD, nrest, rest, opts, nopts, pos, 1, &npos))) return rc;
    if (npos != 1)
        return cli_fail(CMD, CLI_USAGE, "name the run directory: ctorch archive RUN_DIR [--out "
                        "FILE] [--author \"Family, Given; Affiliation\"] ...; see `ctorch help archive`");
    a->run_dir = pos[0];
    static const char *const uploads[] = {"zenodo", NULL};
    if (a->upload && (rc = cli_choice(CMD, "--upload", a->upload, uploads))) return rc;
    for (int k = nopts - 3; k < nopts && !a->upload; k++)
        if (opts[k].seen)
            return cli_fail(CMD, CLI_USAGE, "%s only applies with --upload zenodo", opts[k].name);
    for (const char *c = a->license; *c; c++)
        if (!((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
              *c == '-' || *c == '.' || *c == '+'))
            return cli_fail(CMD, CLI_USAGE, "--license '%s' is not an SPDX license identifier "
                            "(for example CC-BY-4.0, CC0-1.0, MIT; https://spdx.org/licenses/)", a->license);
    const char *texts[] = {a->title, a->keywords, a->description, a->version};
    const char *names[] = {"--title", "--keywords", "--description", "--version"};
    for (int k = 0; k < 4; k++)
        if (texts[k] && !is_utf8(texts[k]))
            return cli_fail(CMD, CLI_USAGE, "%s is not valid UTF-8 text", names[k]);
    return CLI_OK;
}

/* "Family, Given; Affiliation" (the given names and the affiliation may be left out). */
static int parse_author(const char *s, author *out) {
    const char *semi = strchr(s, ';');
    size_t name_len = semi ? (size_t)(semi - s) : strlen(s);
    const char *comma = memchr(s, ',', name_len);
    size_t fam_len = comma ? (size_t)(comma - s) : name_len;
    int bad = !is_utf8(s) || trimmed(s, fam_len, out->family, sizeof out->family) != 0 ||
              trimmed(comma ? comma + 1 : "", comma ? name_len - fam_len - 1 : 0, out->given,
                      sizeof out->given) != 0 ||
              trimmed(semi ? semi + 1 : "", semi ? strlen(semi + 1) : 0, out->affiliation,
                      sizeof out->affiliation) != 0;
    if (bad || !out->family[0])
        return cli_fail(CMD, CLI_USAGE, "--author '%s': expected \"Family, Given; Affiliation\" "
                        "(for example --author \"Curie, Marie; Sorbonne\"; the given names and the "
                        "affiliation may be left out)", s);
    return CLI_OK;
}

/* The authors of --author, else the user's name from the password database (a warning). */
static int gather_authors(archive_job *j) {
    for (int i = 0; i < j->a.nauthors; i++) {
        int rc = parse_author(j->a.authors[i], &j->authors[i]);
        if (rc) return rc;
    }
    j->nauthors = j->a.nauthors;
    if (j->nauthors) return CLI_OK;
    if (j->a.upload)
        return cli_fail(CMD, CLI_USAGE, "--upload zenodo needs the creators of the record: pass "
                        "--author \"Family, Given; Affiliation\" (once per author)");
    struct passwd *pw = getpwuid(getuid());
    const char *who = pw && pw->pw_gecos && pw->pw_gecos[0] && pw->pw_gecos[0] != ',' ? pw->pw_gecos
                      : pw ? pw->pw_name : getenv("USER");
    if (!who || !who[0] || !is_utf8(who)) who = "unknown";
    trimmed(who, strcspn(who, ","), j->authors[0].family, sizeof j->authors[0].family);
    j->nauthors = 1;
    fprintf(stderr, "ctorch archive: warning: no --author: CITATION.cff and .zenodo.json name "
            "'%s'; pass --author \"Family, Given; Affiliation\" (repeatable) to credit the authors\n",
            j->authors[0].family);
    return CLI_OK;
}

/* --keywords "a, b", else ctorch, the model and the dataset. */
static int gather_keywords(archive_job *j) {
    j->keywords = json_array();
    if (!j->keywords) return cli_fail(CMD, CLI_RUNTIME, "out of memory");
    if (!j->a.keywords) {
        const char *def[] = {"ctorch", run_json_str(j->manifest, "config.model"),
                             run_json_str(j->manifest, "config.dataset")};
        for (int k = 0; k < 3; k++)
            if (def[k]) json_array_append_new(j->keywords, json_string(def[k]));
        return CLI_OK;
    }
    for (const char *s = j->a.keywords; *s;) {
        size_t len = strcspn(s, ",");
        char kw[256];
        if (trimmed(s, len, kw, sizeof kw) != 0)
            return cli_fail(CMD, CLI_USAGE, "--keywords: a keyword is longer than 255 bytes");
        if (kw[0]) json_array_append_new(j->keywords, json_string(kw));
        s += len + (s[len] == ',');
    }
    return CLI_OK;
}

/* ---------------------------------------------------------------- the run directory */
/* The run's name (the directory's own name) and the default --out, RUN_DIR.tar.gz. */
static int locate_run(archive_job *j) {
    struct stat st;
    if (stat(j->a.run_dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return cli_fail(CMD, CLI_USAGE, "%s is not a directory: name a run directory (the one "
                        "`ctorch train` wrote, holding manifest.json and model.safetensors)", j->a.run_dir);
    char real[PATH_MAX];
    if (!realpath(j->a.run_dir, real))
        return cli_fail(CMD, CLI_USAGE, "%s: %s", j->a.run_dir, strerror(errno));
    const char *base = strrchr(real, '/');
    base = base ? base + 1 : real;
    if (!base[0]) return cli_fail(CMD, CLI_USAGE, "the run directory cannot be /");
    snprintf(j->name, sizeof j->name, "%.*s", NAME_MAX, base);
    if (j->a.out) {
        snprintf(j->out, sizeof j->out, "%s", j->a.out);
    } else {
        /* RUN_DIR without its trailing slashes; "." and ".." through the real path */
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s", j->a.run_dir);
        size_t n = strlen(dir);
        while (n > 1 && dir[n - 1] == '/') dir[--n] = 0;
        const char *b = strrchr(dir, '/');
        b = b ? b + 1 : dir;
        const char *stem = !strcmp(b, ".") || !strcmp(b, "..") ? real : dir;
        if ((size_t)snprintf(j->out, sizeof j->out, "%s.tar.gz", stem) >= sizeof j->out)
            return cli_fail(CMD, CLI_USAGE, "%s: path too long", j->a.run_dir);
    }
    if (ct_check_writable(j->out) != 0)
        return cli_fail(CMD, CLI_USAGE, "cannot write %s: %s", j->out, ct_last_error());
    return CLI_OK;
}

/* The run directory's files that go into the archive (manifest and model required). */
static int gather_files(archive_job *j, member *m, int *n) {
    static const char *const names[] = {RUN_MANIFEST, RUN_MODEL, RUN_METRICS, RUN_CURVES};
    char missing[128] = "";
    *n = 0;
    for (int k = 0; k < 4; k++) {
        char path[PATH_MAX];
        struct stat st;
        if (arc_path(path, sizeof path, j->a.run_dir, names[k]) != 0)
            return cli_fail(CMD, CLI_USAGE, "%s: path too long", j->a.run_dir);
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            m[*n].name = names[k];
            snprintf(m[*n].src, sizeof m[*n].src, "%s", path);
            (*n)++;
        } else if (k < 2) {
            snprintf(missing + strlen(missing), sizeof missing - strlen(missing), "%s%s",
                     missing[0] ? " and " : "", names[k]);
        } else if (k == 2) {
            fprintf(stderr, "ctorch archive: warning: %s has no %s (the per-epoch metrics); "
                    "archiving without it\n", j->a.run_dir, names[k]);
        }
    }
    if (missing[0])
        return cli_fail(CMD, CLI_USAGE, "%s has no %s: not a complete run directory (`ctorch "
                        "train` writes manifest.json and model.safetensors in it)", j->a.run_dir, missing);
    struct stat so, sm;
    for (int i = 0; i < *n && stat(j->out, &so) == 0; i++)
        if (stat(m[i].src, &sm) == 0 && so.st_dev == sm.st_dev && so.st_ino == sm.st_ino)
            return cli_fail(CMD, CLI_USAGE, "--out %s is the run's own %s: choose another file "
                            "(default: RUN_DIR.tar.gz next to the run directory)", j->out, m[i].name);
    return CLI_OK;
}

/* The manifest, its status, and the model file (it must load as safetensors). */
static int check_run(archive_job *j) {
    char path[PATH_MAX];
    arc_path(path, sizeof path, j->a.run_dir, RUN_MANIFEST);
    if (!(j->manifest = run_manifest_load(CMD, path))) return CLI_USAGE;
    arc_path(j->model_file, sizeof j->model_file, j->a.run_dir, RUN_MODEL);
    ct_safetensors *st = ct_safetensors_load(j->model_file);
    if (!st) return cli_fail(CMD, CLI_USAGE, "%s", ct_last_error());
    ct_safetensors_free(st);
    const char *status = run_json_str(j->manifest, "status");
    j->status = status ? status : "unknown";
    if (!strcmp(j->status, "completed")) return CLI_OK;
    if (!j->a.allow_incomplete && (!strcmp(j->status, "running") || j->a.publish))
        return cli_fail(CMD, CLI_USAGE, "%s's status is \"%s\", not \"completed\": %s; pass "
                        "--allow-incomplete to %s it as it is", j->a.run_dir, j->status,
                        !strcmp(j->status, "running") ? "wait for the training to finish (or, if "
                        "its process died, the run is incomplete)" : "a published record cannot "
                        "be withdrawn", j->a.publish ? "publish" : "archive");
    fprintf(stderr, "ctorch archive: warning: %s's status is \"%s\", not \"completed\"; archiving "
            "it as it is (its README.md says so)\n", j->a.run_dir, j->status);
    return CLI_OK;
}

/* SOURCE_DATE_EPOCH (reproducible archives) or now: the members' time and the release date. */
static void set_time(archive_job *j) {
    const char *sde = getenv("SOURCE_DATE_EPOCH");
    char *end = NULL;
    long long t = sde ? strtoll(sde, &end, 10) : -1;
    j->mtime = sde && *sde && !*end && t >= 0 ? (time_t)t : time(NULL);
    struct tm tm;
    gmtime_r(&j->mtime, &tm);
    strftime(j->date, sizeof j->date, "%Y-%m-%d", &tm);
}

static int describe(archive_job *j) {
    char b[4][64];
    const char *model = run_json_str(j->manifest, "config.model");
    const char *dataset = run_json_str(j->manifest, "config.dataset");
    if (j->a.title) snprintf(j->title, sizeof j->title, "%s", j->a.title);
    else snprintf(j->title, sizeof j->title, "ctorch run %s: %s on %s", j->name,
                  model ? model : "a model", dataset ? dataset : "a dataset");
    char *d = NULL;
    size_t dn = 0;
    FILE *f = open_memstream(&d, &dn);
    if (!f) return cli_fail(CMD, CLI_RUNTIME, "out of memory");
    if (j->a.description) {
        fputs(j->a.description, f);
    } else {
        fprintf(f, "Weights, per-epoch metrics and provenance of a ctorch training run: %s trained "
                "on %s for %s epochs (status: %s). Final test accuracy %s, test loss %s.",
                model ? model : "-", dataset ? dataset : "-", mtext(j, "config.epochs", b[0], 64),
                j->status, mpercent(j, "final_metrics.test_acc", b[1], 64),
                mtext(j, "final_metrics.test_loss", b[2], 64));
    }
    if (fclose(f) != 0 || !d) return cli_fail(CMD, CLI_RUNTIME, "out of memory");
    j->description = d;
    return CLI_OK;
}

/* ---------------------------------------------------------------- generated files */
static void readme_summary(FILE *f, const archive_job *j) {
    char b[9][128];
    fprintf(f, "| | |\n|---|---|\n");
    fprintf(f, "| model | `%s` |\n", mtext(j, "config.model", b[0], 128));
    double limit = 0;
    int limited = run_json_num(j->manifest, "config.test_limit", &limit) == 0 && limit > 0;
    snprintf(b[1], 128, "the first %.0f images", limit);
    fprintf(f, "| dataset | `%s` (test set: %s) |\n", mtext(j, "config.dataset", b[0], 128),
            limited ? b[1] : "all images");
    fprintf(f, "| training | %s epochs, batch size %s, %s (lr %s, momentum %s, weight decay %s), "
            "schedule %s, augment %s, seed %s |\n", mtext(j, "config.epochs", b[0], 128),
            mtext(j, "config.batch_size", b[1], 128), mtext(j, "config.optimizer", b[2], 128),
            mtext(j, "config.lr", b[3], 128), mtext(j, "config.momentum", b[4], 128),
            mtext(j, "config.weight_decay", b[5], 128), mtext(j, "config.schedule", b[6], 128),
            mtext(j, "config.augment", b[7], 128), mtext(j, "config.seed", b[8], 128));
    double threads = 0;
    int all = run_json_num(j->manifest, "config.threads", &threads) != 0 || threads <= 0;
    fprintf(f, "| device | %s, amp %s, %s threads |\n", mtext(j, "config.device", b[0], 128),
            mtext(j, "config.amp", b[1], 128), all ? "default" : mtext(j, "config.threads", b[2], 128));
    fprintf(f, "| status | %s (started %s, ended %s) |\n", j->status, mtext(j, "started", b[0], 128),
            mtext(j, "ended", b[1], 128));
    fprintf(f, "| final metrics | epoch %s, step %s: train loss %s, train accuracy %s; **test "
            "loss %s, test accuracy %s** |\n", mtext(j, "final_metrics.epoch", b[0], 128),
            mtext(j, "final_metrics.step", b[1], 128), mtext(j, "final_metrics.train_loss", b[2], 128),
            mpercent(j, "final_metrics.train_acc", b[3], 128), mtext(j, "final_metrics.test_loss", b[4], 128),
            mpercent(j, "final_metrics.test_acc", b[5], 128));
    fprintf(f, "| ctorch | %s (commit %s, CPU kernels %s) |\n", mtext(j, "ctorch.version", b[0], 128),
            mtext(j, "ctorch.git_commit", b[1], 128), mtext(j, "ctorch.cpu_kernels", b[2], 128));
    double mem = 0;
    int has_mem = run_json_num(j->manifest, "system.memory_bytes", &mem) == 0;
    fprintf(f, "| system | %s %s, %s (%s cores, %s threads, ", mtext(j, "system.os", b[0], 128),
            mtext(j, "system.kernel", b[1], 128), mtext(j, "system.cpu_model", b[2], 128),
            mtext(j, "system.cores", b[3], 128), mtext(j, "system.threads", b[4], 128));
    if (has_mem) fprintf(f, "%.1f GiB", mem / (1024.0 * 1024.0 * 1024.0));
    else fprintf(f, "memory -");
    fprintf(f, "), OpenBLAS %s, container %s |\n",
            mtext2(j, "system.openblas.config", "system.openblas", b[0], 128),
            mtext2(j, "system.container_image.source", "system.container_image", b[1], 128));
    json_t *cuda = run_json_at(j->manifest, "cuda");
    char *cj = json_is_object(cuda) ? json_dumps(cuda, JSON_COMPACT) : NULL;
    fprintf(f, "| cuda | %s |\n", cj ? cj : "none");
    free(cj);
}

static void readme_files(FILE *f, const archive_job *j, const member *m, int n) {
    fprintf(f, "\n## Files\n\n");
    for (int i = 0; i < n; i++) {
        const char *what = !strcmp(m[i].name, RUN_MANIFEST) ? "what was run, where and how "
                           "(command, configuration, seeds, environment, data hashes, final metrics)"
                         : !strcmp(m[i].name, RUN_MODEL) ? "the final weights (safetensors, "
                           "PyTorch's state_dict names)"
                         : !strcmp(m[i].name, RUN_METRICS) ? "one JSON object per epoch (losses, "
                           "accuracies as fractions, learning rate, images/s)"
                         : !strcmp(m[i].name, RUN_CURVES) ? "loss and accuracy curves"
                         : !strcmp(m[i].name, "CITATION.cff") ? "how to cite this record (Citation "
                           "File Format 1.2.0)"
                         : !strcmp(m[i].name, ".zenodo.json") ? "the Zenodo deposition metadata"
                         : "this file: what the run is, how to verify it, how to load "
                           "the weights";
        fprintf(f, "- `%s`: %s\n", m[i].name, what);
    }
    fprintf(f, "- `SHA256SUMS`: the SHA-256 of every other file (`sha256sum -c SHA256SUMS`)\n");
    json_t *ds = run_json_at(j->manifest, "datasets");
    if (json_array_size(ds)) fprintf(f, "\nThe data the run read (SHA-256 as recorded):\n\n");
    for (size_t i = 0; i < json_array_size(ds); i++) {
        char b[2][64];
        json_t *e = json_array_get(ds, i);
        fprintf(f, "- `%s` (%s bytes): `%s`\n", text_of(json_object_get(e, "path"), b[0], 64),
                text_of(json_object_get(e, "bytes"), b[1], 64),
                json_string_value(json_object_get(e, "sha256")) ? json_string_value(json_object_get(e, "sha256")) : "-");
    }
}

/* The model's architecture in PyTorch (ctorch's models use PyTorch's names). legacy: a run
 * from before torchvision's resnet18 (no config.num_classes), whose resnet18 is the CIFAR one. */
static const char *pytorch_model(const char *model, int legacy) {
    static const char *const tv[][2] = {
        {"resnet18", "import torchvision\nmodel = torchvision.models.resnet18(num_classes=num_classes)\n"},
        {"resnet34", "import torchvision\nmodel = torchvision.models.resnet34(num_classes=num_classes)\n"},
        {"resnet50", "import torchvision\nmodel = torchvision.models.resnet50(num_classes=num_classes)\n"},
        {"mobilenet_v2", "import torchvision\nmodel = torchvision.models.mobilenet_v2(num_classes=num_classes)\n"},
        {"vit_b_16", "import torchvision\nmodel = torchvision.models.vit_b_16(num_classes=num_classes)\n"},
        {"vit_tiny", "from torchvision.models.vision_transformer import VisionTransformer\n"
                     "model = VisionTransformer(image_size=32, patch_size=4, num_layers=12, num_heads=3, "
                     "hidden_dim=192, mlp_dim=768, num_classes=num_classes)\n"}};
    if (model && !legacy)
        for (size_t i = 0; i < sizeof tv / sizeof *tv; i++)
            if (!strcmp(model, tv[i][0])) return tv[i][1];
    if (model && !strcmp(model, "mlp"))
        return "model = nn.Sequential(OrderedDict(fc1=nn.Linear(C * H * W, 128), relu=nn.ReLU(),\n"
               "                                  fc2=nn.Linear(128, num_classes)))\n"
               "# input: x.flatten(1)\n";
    if (model && !strcmp(model, "simple_cnn"))
        return "model = nn.Module()\n"
               "model.features = nn.Sequential(nn.Conv2d(C, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),\n"
               "                               nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))\n"
               "model.classifier = nn.Linear(64 * (H // 4) * (W // 4), num_classes)\n"
               "# forward: model.classifier(model.features(x).flatten(1))\n";
    if (model && (!strcmp(model, "resnet18_cifar") || !strcmp(model, "resnet18")))
        return "import torchvision\n"
               "model = torchvision.models.resnet18(num_classes=num_classes)\n"
               "model.conv1 = nn.Conv2d(C, 64, 3, stride=1, padding=1, bias=False)  # CIFAR stem\n"
               "model.maxpool = nn.Identity()\n";
    return "model = ...  # the same architecture, with PyTorch's parameter names\n";
}

static void readme_usage(FILE *f, const archive_job *j) {
    const char *model = run_json_str(j->manifest, "config.model");
    const char *dataset = run_json_str(j->manifest, "config.dataset");
    ct_dataset_kind kind;
    float mean[3] = {0}, std[3] = {1, 1, 1};
    int known = dataset && ct_dataset_parse_name(dataset, &kind) == 0 &&
                ct_dataset_default_normalization(kind, mean, std) == 0;
    const char *file = strrchr(j->out, '/') ? strrchr(j->out, '/') + 1 : j->out;
    json_t *nc = json_object_get(json_object_get(j->manifest, "config"), "num_classes");
    long long classes = json_is_integer(nc) && json_integer_value(nc) > 0 ? json_integer_value(nc) : 10;
    fprintf(f, "\n## Verify\n\n```\nctorch verify %s   # the sums, then the test accuracy "
            "re-evaluated\n# or, without ctorch:\ntar xzf %s && cd %s && sha256sum -c "
            "SHA256SUMS\n```\n", file, file, j->name);
    fprintf(f, "\n`ctorch verify` re-evaluates `model.safetensors` on the recorded test set and "
            "compares the accuracy with `final_metrics.test_acc` of `manifest.json` (docs/runs.md "
            "of ctorch).\n");
    fprintf(f, "\n## Load the weights in PyTorch\n\n```python\nfrom collections import OrderedDict\n"
            "import torch\nfrom torch import nn\nfrom safetensors.torch import load_file\n\n"
            "state_dict = load_file(\"model.safetensors\")  # name -> torch.Tensor\n"
            "C, H, W, num_classes = %s %lld  # the input images and classes of %s\n%s"
            "model.load_state_dict(state_dict)\nmodel.eval()\n```\n",
            !dataset ? "..., ..., ...," : !strcmp(dataset, "cifar10") ? "3, 32, 32," : "1, 28, 28,",
            classes, dataset ? dataset : "the dataset",
            pytorch_model(model, !json_object_get(json_object_get(j->manifest, "config"), "num_classes")));
    if (known)
        fprintf(f, "\nInputs are scaled to [0, 1] and normalised per channel with mean %g and "
                "standard deviation %g, as in training.\n", mean[0], std[0]);
    fprintf(f, "\n## Cite\n\nSee `CITATION.cff` (GitHub's \"Cite this repository\", `cffconvert`).\n");
}

static char *gen_readme(const archive_job *j, const member *m, int n) {
    char *d = NULL;
    size_t dn = 0;
    FILE *f = open_memstream(&d, &dn);
    if (!f) return NULL;
    fprintf(f, "# %s\n\n%s\n\n", j->title, j->description);
    if (strcmp(j->status, "completed") != 0)
        fprintf(f, "**This run did not complete: its status is \"%s\".** The weights are those "
                "saved when it stopped.\n\n", j->status);
    readme_summary(f, j);
    readme_files(f, j, m, n);
    readme_usage(f, j);
    fprintf(f, "\nWritten by `ctorch archive` (ctorch %s) on %s.\n", CT_VERSION, j->date);
    if (fclose(f) != 0) {
        free(d);
        return NULL;
    }
    return d;
}

static char *gen_citation(const archive_job *j) {
    char *d = NULL;
    size_t dn = 0;
    FILE *f = open_memstream(&d, &dn);
    if (!f) return NULL;
    fprintf(f, "cff-version: 1.2.0\nmessage: \"If you use these weights or results, please cite "
            "them as below.\"\ntype: dataset\ntitle: ");
    yaml_str(f, j->title);
    fprintf(f, "\nauthors:\n");
    for (int i = 0; i < j->nauthors; i++) {
        fprintf(f, "  - family-names: ");
        yaml_str(f, j->authors[i].family);
        if (j->authors[i].given[0]) fprintf(f, "\n    given-names: "), yaml_str(f, j->authors[i].given);
        if (j->authors[i].affiliation[0])
            fprintf(f, "\n    affiliation: "), yaml_str(f, j->authors[i].affiliation);
        fprintf(f, "\n");
    }
    fprintf(f, "version: ");
    yaml_str(f, j->a.version);
    fprintf(f, "\ndate-released: \"%s\"\nlicense: ", j->date);
    yaml_str(f, j->a.license);
    fprintf(f, "\nkeywords:\n");
    for (size_t i = 0; i < json_array_size(j->keywords); i++) {
        fprintf(f, "  - ");
        yaml_str(f, json_string_value(json_array_get(j->keywords, i)));
        fprintf(f, "\n");
    }
    fprintf(f, "abstract: ");
    yaml_str(f, j->description);
    fprintf(f, "\n");
    if (fclose(f) != 0) {
        free(d);
        return NULL;
    }
    return d;
}

/* The Zenodo deposition metadata (.zenodo.json, and the body of the metadata update). */
static json_t *zenodo_metadata(const archive_job *j) {
    json_t *creators = json_array();
    for (int i = 0; creators && i < j->nauthors; i++) {
        char name[600];
        snprintf(name, sizeof name, "%s%s%s", j->authors[i].family, j->authors[i].given[0] ? ", " : "",
                 j->authors[i].given);
        json_t *c = json_pack("{s:s}", "name", name);
        if (c && j->authors[i].affiliation[0])
            json_object_set_new(c, "affiliation", json_string(j->authors[i].affiliation));
        json_array_append_new(creators, c);
    }
    /* Zenodo's license ids are the SPDX ids in lower case (cc-by-4.0) */
    char license[128];
    snprintf(license, sizeof license, "%s", j->a.license);
    for (char *c = license; *c; c++)
        if (*c >= 'A' && *c <= 'Z') *c = (char)(*c - 'A' + 'a');
    return json_pack("{s:s, s:s, s:o, s:s, s:s, s:s, s:O, s:s, s:s}", "upload_type", "dataset",
                     "title", j->title, "creators", creators, "description", j->description,
                     "access_right", "open", "license", license, "keywords", j->keywords,
                     "version", j->a.version, "publication_date", j->date);
}

/* ---------------------------------------------------------------- the .tar.gz */
#ifdef CT_HAVE_LIBARCHIVE
typedef struct {
    struct archive *a;
    const archive_job *j;
    FILE *sums; /* SHA256SUMS, being written */
    char err[PATH_MAX + 256];
} tar_out;

static int tar_fail(tar_out *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int tar_fail(tar_out *t, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->err, sizeof t->err, fmt, ap);
    va_end(ap);
    return -1;
}

/* A member's header: NAME/name, or the directory NAME/ itself (name NULL). */
static int tar_header(tar_out *t, const char *name, int64_t size) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", t->j->name, name ? name : "");
    struct archive_entry *e = archive_entry_new();
    if (!e) return tar_fail(t, "out of memory");
    archive_entry_set_pathname(e, path);
    archive_entry_set_filetype(e, name ? AE_IFREG : AE_IFDIR);
    archive_entry_set_perm(e, name ? 0644 : 0755);
    archive_entry_set_size(e, name ? size : 0);
    archive_entry_set_mtime(e, t->j->mtime, 0);
    int r = archive_write_header(t->a, e);
    archive_entry_free(e);
    return r == ARCHIVE_OK ? 0 : tar_fail(t, "%s: %s", path, archive_error_string(t->a));
}

static int tar_data(tar_out *t, const char *name, const void *p, size_t n, ct_sha256 *h) {
    la_ssize_t w = archive_write_data(t->a, p, n);
    if (w < 0 || (size_t)w != n) return tar_fail(t, "writing %s: %s", name, archive_error_string(t->a));
    ct_sha256_update(h, p, n);
    return 0;
}

/* One member: a file of the run (streamed) or a generated buffer; with `listed`, its sum
 * goes into SHA256SUMS. */
static int tar_member(tar_out *t, const member *m, int listed) {
    FILE *src = NULL;
    int64_t size = (int64_t)m->size;
    struct stat st;
    if (!m->data) {
        if (!(src = fopen(m->src, "rb")) || fstat(fileno(src), &st) != 0) {
            if (src) fclose(src);
            return tar_fail(t, "cannot read %s: %s", m->src, strerror(errno));
        }
        size = (int64_t)st.st_size;
    }
    ct_sha256 *h = ct_sha256_new();
    int rc = h ? tar_header(t, m->name, size) : tar_fail(t, "%s", ct_last_error());
    if (rc == 0 && m->data) rc = tar_data(t, m->name, m->data, m->size, h);
    static char buf[1 << 20];
    int64_t done = 0;
    size_t got;
    while (rc == 0 && src && done < size && (got = fread(buf, 1, sizeof buf, src)) > 0) {
        if ((int64_t)got > size - done) got = (size_t)(size - done);
        rc = tar_data(t, m->name, buf, got, h);
        done += (int64_t)got;
    }
    if (rc == 0 && src && done != size)
        rc = tar_fail(t, "%s changed while it was archived (%lld of %lld bytes read)", m->src,
                      (long long)done, (long long)size);
    if (src) fclose(src);
    char hex[65];
    if (rc != 0) ct_sha256_free(h);
    else if (ct_sha256_final(h, hex) != 0) rc = tar_fail(t, "%s", ct_last_error());
    if (rc == 0 && listed) fprintf(t->sums, "%s  %s\n", hex, m->name);
    return rc;
}

static int tar_open(tar_out *t, ct_atomic_file *f) {
    if (!f) return tar_fail(t, "%s", ct_last_error());
    if (!t->a || !t->sums) return tar_fail(t, "out of memory");
    if (archive_write_add_filter_gzip(t->a) != ARCHIVE_OK ||
        archive_write_set_filter_option(t->a, "gzip", "timestamp", NULL) < ARCHIVE_WARN ||
        archive_write_set_format_pax_restricted(t->a) != ARCHIVE_OK ||
        archive_write_open_FILE(t->a, f->fp) != ARCHIVE_OK)
        return tar_fail(t, "libarchive: %s", archive_error_string(t->a));
    return tar_header(t, NULL, 0);
}

/* The archive, written atomically at j->out: the members, then SHA256SUMS. */
static int write_tar(const archive_job *j, const member *m, int n, char *err, size_t nerr) {
    tar_out t = {archive_write_new(), j, NULL, ""};
    char *sums = NULL;
    size_t nsums = 0;
    t.sums = open_memstream(&sums, &nsums);
    ct_atomic_file *f = ct_atomic_open(j->out);
    int rc = tar_open(&t, f);
    for (int i = 0; rc == 0 && i < n; i++) rc = tar_member(&t, &m[i], 1);
    if (t.sums && fclose(t.sums) != 0 && rc == 0) rc = tar_fail(&t, "out of memory");
    member sm = {RUN_SUMS, "", sums, nsums};
    if (rc == 0) rc = tar_member(&t, &sm, 0);
    if (rc == 0 && archive_write_close(t.a) != ARCHIVE_OK)
        rc = tar_fail(&t, "%s: %s", j->out, archive_error_string(t.a));
    if (t.a) archive_write_free(t.a);
    if (rc == 0 && f && ct_atomic_commit(f) != 0) rc = tar_fail(&t, "%s", ct_last_error());
    else if (rc != 0) ct_atomic_abort(f);
    free(sums);
    if (rc) snprintf(err, nerr, "%s", t.err);
    return rc;
}
#else
static int write_tar(const archive_job *j, const member *m, int n, char *err, size_t nerr) {
    (void)j, (void)m, (void)n;
    snprintf(err, nerr, RUN_NO_LIBARCHIVE, "write");
    return -1;
}
#endif

/* ---------------------------------------------------------------------- entry */
static int prepare(archive_job *j, member *m, int *n) {
    int rc = locate_run(j);
    if (!rc) rc = gather_files(j, m, n);
    if (!rc) rc = check_run(j);
    if (!rc) rc = gather_authors(j);
    if (!rc) rc = gather_keywords(j);
    if (rc) return rc;
    set_time(j);
    return describe(j);
}

/* The generated members after the run's files: README.md first, then the citation files. */
static int generate(archive_job *j, member *m, int *n, json_t **zmeta) {
    *zmeta = zenodo_metadata(j);
    char *zj = NULL;
    if (*zmeta) {
        char *d = json_dumps(*zmeta, JSON_INDENT(2));
        size_t dn = d ? strlen(d) : 0;
        zj = d ? realloc(d, dn + 2) : NULL;
        if (zj) memcpy(zj + dn, "\n", 2);
        else free(d);
    }
    char *cff = gen_citation(j);
    member all[8];
    all[0] = (member){"README.md", "", NULL, 0};
    memcpy(all + 1, m, sizeof *m * (size_t)*n);
    all[*n + 1] = (member){"CITATION.cff", "", cff, cff ? strlen(cff) : 0};
    all[*n + 2] = (member){".zenodo.json", "", zj, zj ? strlen(zj) : 0};
    char *readme = gen_readme(j, all, *n + 3);
    all[0].data = readme;
    all[0].size = readme ? strlen(readme) : 0;
    *n += 3;
    memcpy(m, all, sizeof *m * (size_t)*n);
    if (!readme || !cff || !zj) return cli_fail(CMD, CLI_RUNTIME, "out of memory");
    return CLI_OK;
}

int cmd_archive(int argc, char **argv) {
    archive_job j;
    memset(&j, 0, sizeof j);
    int rc = parse_args(argc, argv, &j.a);
    if (rc) return rc;
    if (!RUN_HAVE_LIBARCHIVE) return cli_fail(CMD, CLI_RUNTIME, RUN_NO_LIBARCHIVE, "write");
    char token[4096] = "";
    if (j.a.upload && (rc = zenodo_token(CMD, j.a.token_file, token, sizeof token))) return rc;
    member m[8];
    int n = 0;
    json_t *zmeta = NULL;
    memset(m, 0, sizeof m);
    if (!(rc = prepare(&j, m, &n))) rc = generate(&j, m, &n, &zmeta);
    char err[PATH_MAX + 256];
    if (!rc && write_tar(&j, m, n, err, sizeof err) != 0)
        rc = cli_fail(CMD, CLI_RUNTIME, "writing %s failed: %s (nothing was written there)", j.out, err);
    if (!rc) {
        char hex[65];
        struct stat st;
        if (ct_sha256_file(j.out, hex) != 0 || stat(j.out, &st) != 0)
            rc = cli_fail(CMD, CLI_RUNTIME, "%s", ct_last_error());
        else
            printf("archived %s as %s: %d files under %s/, %lld bytes, sha256 %s\n", j.a.run_dir,
                   j.out, n + 1, j.name, (long long)st.st_size, hex);
        fflush(stdout);
    }
    if (!rc && j.a.upload) {
        zenodo_job z = {j.a.zenodo_url, token, j.out, zmeta, j.a.publish};
        rc = zenodo_upload(CMD, &z);
    }
    memset(token, 0, sizeof token);
    for (int i = 0; i < n; i++) free(m[i].data);
    json_decref(zmeta);
    json_decref(j.keywords);
    json_decref(j.manifest);
    free(j.description);
    return rc;
}
