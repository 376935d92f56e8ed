/* The environment a run's manifest records, dataset digests and the curves plot
 * (run_info.h, docs/runs.md). Everything here asks the library (or the system) and never
 * which device type it is on: the CPU's kernel variant and the CUDA stack's versions come
 * from the backends' `versions` entry point (src/core/backend.h). */
#include "run_info.h"

#include "core/backend.h"
#include "core/error.h"
#include "ctorch_io.h"
#include "data/data_internal.h"
/* CT_BUILD_GIT_COMMIT, CT_BUILD_FLAGS: generated under build/gen by the Makefile */
#include "run_info_build.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#if defined(__clang__)
#define CT_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define CT_COMPILER "gcc " __VERSION__
#else
#define CT_COMPILER "unknown"
#endif

/* ------------------------------------------------------------------ helpers */
/* A JSON string, or null for NULL, "" or text that is not UTF-8 (JSON cannot hold it). */
static json_t *str_or_null(const char *s) {
    json_t *j = s && *s ? json_string(s) : NULL;
    return j ? j : json_null();
}

/* Builds an object from key/value pairs; a NULL value (jansson's out of memory) fails the
 * whole object, so callers check one pointer. */
static json_t *put(json_t *obj, const char *key, json_t *value) {
    if (!obj || !value || json_object_set_new(obj, key, value) != 0) {
        json_decref(obj);
        return NULL;
    }
    return obj;
}

static void *oom(const char *what) { return ct_error_null("%s: out of memory", what); }

/* The backend's `versions` answer; 0, or -1 (no error left set) when it has none. */
static int backend_versions(const ct_backend *b, ct_backend_versions *v) {
    ct_proc_versions_fn fn;
    *(void **)&fn = b ? ct_backend_find_proc(b, "versions") : NULL;
    memset(v, 0, sizeof *v);
    return fn ? fn(v) : -1;
}

/* ------------------------------------------------------------------- ctorch */
json_t *cli_env_ctorch(void) {
    ct_backend_versions v;
    const char *kernels = backend_versions(ct_backend_get(ct_cpu().type), &v) == 0 ? v.kernels
                                                                                    : NULL;
    const char *isa = getenv("CTORCH_CPU_ISA");
    json_t *o = json_object();
    o = put(o, "version", json_string(CT_VERSION));
    o = put(o, "git_commit", json_string(CT_BUILD_GIT_COMMIT));
    o = put(o, "build_flags", str_or_null(CT_BUILD_FLAGS));
    o = put(o, "compiler", str_or_null(CT_COMPILER));
    o = put(o, "cpu_kernels", str_or_null(kernels));
    o = put(o, "cpu_isa_override", str_or_null(isa));
    return o ? o : oom("run info");
}

/* ------------------------------------------------------------------- system */
/* PRETTY_NAME of os-release(5), its quotes removed, into out; 0 or -1. */
static int os_pretty_name(char *out, size_t n) {
    const char *files[] = {"/etc/os-release", "/usr/lib/os-release"};
    for (size_t i = 0; i < 2; i++) {
        FILE *f = fopen(files[i], "r");
        if (!f) continue;
        char line[512];
        int found = -1;
        while (found != 0 && fgets(line, sizeof line, f)) {
            if (strncmp(line, "PRETTY_NAME=", 12) != 0) continue;
            char *s = line + 12;
            s[strcspn(s, "\n")] = 0;
            size_t len = strlen(s);
            if (len >= 2 && (s[0] == '"' || s[0] == '\'') && s[len - 1] == s[0]) {
                s[len - 1] = 0;
                s++;
            }
            snprintf(out, n, "%s", s);
            found = 0;
        }
        fclose(f);
        if (found == 0) return 0;
    }
    return -1;
}

/* The vector-extension flags worth knowing when comparing runs (x86 and Arm names as in
 * /proc/cpuinfo), in this order when present. */
static const char *const SIMD_FLAGS[] = {
    "sse4_1",      "sse4_2",      "avx",      "avx2",        "fma",         "f16c",
    "avx512f",     "avx512dq",    "avx512cd", "avx512bw",    "avx512vl",    "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile",    "amx_bf16",    "amx_int8",
    "amx_fp16",    "asimd",       "asimdhp",  "sve",         "sve2",        "bf16",
    "i8mm"};

static int has_word(const char *list, const char *word) {
    size_t n = strlen(word);
    for (const char *p = list; (p = strstr(p, word)) != NULL; p += n)
        if ((p == list || p[-1] == ' ' || p[-1] == '\t') && (p[n] == 0 || p[n] == ' ' ||
                                                              p[n] == '\n'))
            return 1;
    return 0;
}

/* "model name" and the SIMD flags of the first CPU in /proc/cpuinfo into o. */
static json_t *put_cpuinfo(json_t *o) {
    char *line = NULL, *model = NULL, *flags = NULL;
    size_t cap = 0;
    FILE *f = fopen("/proc/cpuinfo", "r");
    while (f && !(model && flags) && getline(&line, &cap, f) > 0) {
        char *colon = strchr(line, ':');
        if (!colon) continue;
        char *val = colon + 1 + (colon[1] == ' ');
        val[strcspn(val, "\n")] = 0;
        if (!model && !strncmp(line, "model name", 10)) model = strdup(val);
        /* x86 says "flags", Arm "Features" */
        if (!flags && (!strncmp(line, "flags", 5) || !strncmp(line, "Features", 8)))
            flags = strdup(val);
    }
    if (f) fclose(f);
    free(line);
    json_t *list = flags ? json_array() : json_null();
    for (size_t i = 0; flags && list && i < sizeof SIMD_FLAGS / sizeof *SIMD_FLAGS; i++) {
        if (!has_word(flags, SIMD_FLAGS[i])) continue;
        if (json_array_append_new(list, json_string(SIMD_FLAGS[i])) != 0) {
            json_decref(list);
            list = NULL; /* out of memory: put() fails the object */
        }
    }
    o = put(o, "cpu_model", str_or_null(model));
    o = put(o, "cpu_flags", list);
    free(model);
    free(flags);
    return o;
}

/* CPUs this process may run on (sched_getaffinity), -1 when unknown; the set grows until
 * it holds the kernel's mask (machines with more than 1024 CPUs). */
static int cpus_allowed(void) {
    for (int n = 1024; n <= 1 << 20; n *= 4) {
        cpu_set_t *set = CPU_ALLOC(n);
        if (!set) return -1;
        size_t size = CPU_ALLOC_SIZE(n);
        int rc = sched_getaffinity(0, size, set), count = rc == 0 ? CPU_COUNT_S(size, set) : -1;
        CPU_FREE(set);
        if (rc == 0 || errno != EINVAL) return count;
    }
    return -1;
}

/* MemTotal of /proc/meminfo in bytes; the same number through sysconf where that file is
 * missing; -1 when unknown. */
static long long memory_bytes(void) {
    long long kb = -1;
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    while (f && kb < 0 && fgets(line, sizeof line, f))
        if (sscanf(line, "MemTotal: %lld kB", &kb) != 1) kb = -1;
    if (f) fclose(f);
    if (kb >= 0) return kb * 1024;
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? (long long)pages * page : -1;
}

static json_t *int_or_null(long long v) { return v >= 0 ? json_integer(v) : json_null(); }

/* OpenBLAS describes its build and the kernel it chose ("OpenBLAS 0.3.21 DYNAMIC_ARCH
 * NO_AFFINITY SkylakeX MAX_THREADS=64", "SkylakeX"). Weak: a BLAS without these functions
 * leaves them NULL and the field null, instead of failing the link. */
extern char *openblas_get_config(void) __attribute__((weak));
extern char *openblas_get_corename(void) __attribute__((weak));

static json_t *openblas_info(void) {
    if (!openblas_get_config) return json_null();
    const char *config = openblas_get_config();
    char version[32] = "";
    if (config && sscanf(config, "OpenBLAS %31s", version) != 1) version[0] = 0;
    json_t *o = json_object();
    o = put(o, "version", str_or_null(version));
    o = put(o, "config", str_or_null(config));
    o = put(o, "corename", str_or_null(openblas_get_corename ? openblas_get_corename() : NULL));
    return o;
}

/* ctorch's container image records its digest (docs/runs.md): $CTORCH_IMAGE_DIGEST, else
 * the first line of /etc/ctorch/image-digest, which the image build writes. Elsewhere
 * null: a run outside the image has no image to name. */
static json_t *container_image(void) {
    const char *source = "CTORCH_IMAGE_DIGEST";
    char digest[512] = "";
    const char *env = getenv(source);
    if (env && *env) {
        snprintf(digest, sizeof digest, "%s", env);
    } else {
        source = "/etc/ctorch/image-digest";
        FILE *f = fopen(source, "r");
        if (f && !fgets(digest, sizeof digest, f)) digest[0] = 0;
        if (f) fclose(f);
    }
    digest[strcspn(digest, "\r\n")] = 0;
    char *d = digest + strspn(digest, " \t");
    for (size_t n = strlen(d); n > 0 && (d[n - 1] == ' ' || d[n - 1] == '\t'); n--) d[n - 1] = 0;
    if (!*d) return json_null();
    json_t *o = json_object();
    o = put(o, "digest", str_or_null(d));
    return put(o, "source", json_string(source));
}

json_t *cli_env_system(int threads) {
    char os[512] = "", kernel[512] = "";
    struct utsname u;
    int have_uname = uname(&u) == 0;
    if (have_uname) snprintf(kernel, sizeof kernel, "%s %s %s", u.sysname, u.release, u.machine);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    json_t *o = json_object();
    o = put(o, "os", str_or_null(os_pretty_name(os, sizeof os) == 0 ? os : NULL));
    o = put(o, "kernel", str_or_null(kernel));
    o = put(o, "hostname", str_or_null(have_uname ? u.nodename : NULL));
    o = put_cpuinfo(o);
    o = put(o, "cores", int_or_null(cores));
    o = put(o, "cpus_allowed", int_or_null(cpus_allowed()));
    o = put(o, "threads", json_integer(threads));
    o = put(o, "memory_bytes", int_or_null(memory_bytes()));
    o = put(o, "openblas", openblas_info());
    o = put(o, "container_image", container_image());
    return o ? o : oom("run info");
}

/* --------------------------------------------------------------------- CUDA */
/* Describes only the device in use: describing a device initialises it (a context, cuBLAS
 * and cuDNN handles, a workspace), which a manifest must not do to every visible GPU. */
json_t *cli_env_cuda(ct_device dev) {
    if (ct_device_check(dev) != 0) return NULL; /* names the device and why it cannot run */
    if (ct_device_is_host(dev)) return json_null();
    const ct_backend *b = ct_backend_get(dev.type);
    if (!b) return NULL;
    ct_backend_versions v;
    backend_versions(b, &v);
    char name[64] = "", gpu[512] = "";
    ct_device_str(dev, name, sizeof name);
    if (ct_device_describe(dev, gpu, sizeof gpu) != 0) return NULL;
    ct_proc_device_count_fn count;
    *(void **)&count = ct_backend_find_proc(b, "device_count");
    json_t *o = json_object();
    o = put(o, "device", str_or_null(name));
    o = put(o, "gpu", str_or_null(gpu));
    o = put(o, "gpu_count", count ? json_integer(count()) : json_null());
    o = put(o, "driver", str_or_null(v.driver));
    o = put(o, "runtime", str_or_null(v.runtime));
    o = put(o, "cudnn", str_or_null(v.dnn));
    o = put(o, "nccl", str_or_null(v.collectives));
    o = put(o, "kernels", str_or_null(v.kernels));
    return o ? o : oom("run info");
}

/* ------------------------------------------------------------ dataset files */
static int64_t g_hashed; /* files hashed, for cli_dataset_hash_count */

int64_t cli_dataset_hash_count(void) { return __atomic_load_n(&g_hashed, __ATOMIC_RELAXED); }

/* The digest cache: {"version": 1, "files": {real path: {"bytes", "mtime_ns", "sha256"}}}.
 * One entry per path, replaced when the file changes, so it grows with the number of
 * distinct files only. */
typedef struct {
    char path[CT_PATH_MAX]; /* "" when there is nowhere to keep it */
    json_t *root, *files;   /* the cache as read (or a new one) */
    int changed;
} digest_cache;

static int cache_file(char *out, size_t n) {
    const char *dir = getenv("CTORCH_CACHE_DIR"), *xdg = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    int len;
    if (dir && *dir) len = snprintf(out, n, "%s/sha256-cache.json", dir);
    else if (xdg && xdg[0] == '/') /* the XDG spec ignores a relative path */
        len = snprintf(out, n, "%s/ctorch/sha256-cache.json", xdg);
    else if (home && *home) len = snprintf(out, n, "%s/.cache/ctorch/sha256-cache.json", home);
    else len = -1;
    if (len < 0 || (size_t)len >= n) out[0] = 0;
    return out[0] ? 0 : -1;
}

/* Reads the cache; one that is missing, unreadable or not what this code writes is
 * replaced by an empty one (and rewritten when something is added). */
static void cache_load(digest_cache *c) {
    memset(c, 0, sizeof *c);
    if (cache_file(c->path, sizeof c->path) == 0) {
        c->root = json_load_file(c->path, 0, NULL);
        json_t *version = json_object_get(c->root, "version");
        c->files = json_object_get(c->root, "files");
        if (!json_is_object(c->root) || json_integer_value(version) != 1 || !json_is_object(c->files)) {
            json_decref(c->root);
            c->root = NULL;
        }
    }
    if (!c->root) {
        c->root = json_pack("{s:i,s:{}}", "version", 1, "files");
        c->files = json_object_get(c->root, "files");
    }
}

static int is_hex64(const char *s) {
    return s && strlen(s) == 64 && strspn(s, "0123456789abcdef") == 64;
}

static int cache_get(const digest_cache *c, const char *real, const struct stat *st,
                     int64_t mtime_ns, char hex[65]) {
    json_t *e = json_object_get(c->files, real);
    const char *h = json_string_value(json_object_get(e, "sha256"));
    if (json_integer_value(json_object_get(e, "bytes")) != (json_int_t)st->st_size ||
        json_integer_value(json_object_get(e, "mtime_ns")) != (json_int_t)mtime_ns ||
        !json_is_integer(json_object_get(e, "mtime_ns")) || !is_hex64(h))
        return -1;
    memcpy(hex, h, 65);
    return 0;
}

static void cache_put(digest_cache *c, const char *real, const struct stat *st,
                      int64_t mtime_ns, const char hex[65]) {
    if (!c->files) return;
    json_t *e = json_pack("{s:I,s:I,s:s}", "bytes", (json_int_t)st->st_size, "mtime_ns",
                          (json_int_t)mtime_ns, "sha256", hex);
    /* set_new takes e, also when it fails (then the entry is just not cached) */
    if (e && json_object_set_new(c->files, real, e) == 0) c->changed = 1;
}

/* Writes the cache back when it changed. Failing is harmless (the next run hashes again),
 * so no error is reported or left set. */
static void cache_save(digest_cache *c) {
    if (c->changed && c->path[0] && c->root) {
        char dir[CT_PATH_MAX];
        snprintf(dir, sizeof dir, "%s", c->path);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) *slash = 0;
        ct_atomic_file *f = slash && ct_mkdir_p(dir) == 0 ? ct_atomic_open(c->path) : NULL;
        if (f && json_dumpf(c->root, f->fp, JSON_INDENT(1) | JSON_SORT_KEYS) != 0) {
            ct_atomic_abort(f);
            f = NULL;
        }
        if (!f || ct_atomic_commit(f) != 0) ct_clear_error();
    }
    json_decref(c->root);
    c->root = c->files = NULL;
}

static int64_t mtime_ns_of(const struct stat *st) {
    return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

/* {"path", "bytes", "sha256"} of one file, from the cache when its real path, size and
 * mtime match an entry, else hashed. A file that changed while it was hashed, or whose
 * mtime is under 2 s old, is not cached: a rewrite within the same timestamp tick would
 * keep both size and mtime (git's "racily clean" files). */
static json_t *file_entry(digest_cache *c, const char *path) {
    char real[PATH_MAX], hex[65];
    struct stat st, after;
    if (!realpath(path, real) || stat(real, &st) != 0)
        return ct_error_null("dataset files: cannot read %s: %s", path, strerror(errno));
    int64_t mtime = mtime_ns_of(&st);
    if (cache_get(c, real, &st, mtime, hex) != 0) {
        if (ct_sha256_file(real, hex) != 0) return NULL;
        __atomic_add_fetch(&g_hashed, 1, __ATOMIC_RELAXED);
        if (stat(real, &after) == 0 && after.st_size == st.st_size && mtime_ns_of(&after) == mtime &&
            (int64_t)time(NULL) - (int64_t)st.st_mtim.tv_sec >= 2)
            cache_put(c, real, &st, mtime, hex);
    }
    json_t *e = json_pack("{s:s,s:I,s:s}", "path", real, "bytes", (json_int_t)st.st_size,
                          "sha256", hex);
    return e ? e : ct_error_null("dataset files: cannot record %s (out of memory, or the "
                                 "path is not valid UTF-8)",
                                 real);
}

/* Appends path's entry to out unless the same real file is listed already (both CIFAR-10
 * splits may come from one archive). */
static int add_file(json_t *out, digest_cache *c, const char *path) {
    json_t *e = file_entry(c, path);
    if (!e) return -1;
    const char *p = json_string_value(json_object_get(e, "path"));
    size_t i;
    json_t *old;
    json_array_foreach(out, i, old) {
        if (!strcmp(p, json_string_value(json_object_get(old, "path")))) {
            json_decref(e);
            return 0;
        }
    }
    return json_array_append_new(out, e) == 0 ? 0 : ct_error("dataset files: out of memory");
}

/* CIFAR-10 as ct_cifar10_load resolves it, split by split: the split's .bin files in the
 * dataset directory, else the official archive (in the root, else the dataset directory). */
static int cifar_files(const char *root, json_t *out, digest_cache *c) {
    const char *const *split_files[2] = {ct_cifar_train_files, &ct_cifar_test_file};
    const int nfiles[2] = {5, 1};
    char ddir[CT_PATH_MAX], path[CT_PATH_MAX], archive[CT_PATH_MAX];
    for (int s = 0; s < 2; s++) {
        const char *const *files = split_files[s];
        ct_dataset_dir(ddir, sizeof ddir, root, CT_DATASET_CIFAR10, files[0]);
        int missing = -1;
        for (int i = 0; i < nfiles[s] && missing < 0; i++)
            if (!ct_path_is_file(ct_path_join(path, sizeof path, ddir, files[i]))) missing = i;
        for (int i = 0; i < nfiles[s] && missing < 0; i++)
            if (add_file(out, c, ct_path_join(path, sizeof path, ddir, files[i])) != 0) return -1;
        if (missing < 0) continue;
        ct_path_join(archive, sizeof archive, root, CT_CIFAR_ARCHIVE);
        if (!ct_path_is_file(archive)) ct_path_join(archive, sizeof archive, ddir, CT_CIFAR_ARCHIVE);
        if (ct_path_is_file(archive)) {
            if (add_file(out, c, archive) != 0) return -1;
            continue;
        }
        return ct_error("cifar10: %s not found in %s, and no %s in %s either. Put the CIFAR-10 "
                        "binary files there (or the archive itself), or run `ctorch download "
                        "cifar10 --data-dir %s`",
                        files[missing], ddir, CT_CIFAR_ARCHIVE, root, root);
    }
    return 0;
}

/* MNIST / Fashion-MNIST as src/data/mnist.c resolves them: per split, the directory found
 * with the split's image file as marker, each file plain or .gz (the plain one wins). */
static int idx_files(ct_dataset_kind kind, const char *root, json_t *out, digest_cache *c) {
    const char *const prefixes[2] = {"train", "t10k"}, *const kinds[2] = {"images-idx3",
                                                                          "labels-idx1"};
    char ddir[CT_PATH_MAX], base[64], marker[64], path[CT_PATH_MAX];
    for (int s = 0; s < 2; s++) {
        snprintf(marker, sizeof marker, "%s-images-idx3-ubyte", prefixes[s]);
        ct_dataset_dir(ddir, sizeof ddir, root, kind, marker);
        for (int k = 0; k < 2; k++) {
            snprintf(base, sizeof base, "%s-%s-ubyte", prefixes[s], kinds[k]);
            ct_path_join(path, sizeof path, ddir, base);
            if (!ct_path_is_file(path) && strlen(path) + 3 < sizeof path) strcat(path, ".gz");
            if (!ct_path_is_file(path))
                return ct_error("%s: %s (or %s.gz) not found in %s. Put the original files "
                                "there, or run `ctorch download %s --data-dir %s`",
                                ct_dataset_name(kind), base, base, ddir, ct_dataset_name(kind),
                                root);
            if (add_file(out, c, path) != 0) return -1;
        }
    }
    return 0;
}

json_t *cli_dataset_files(ct_dataset_kind kind, const char *data_dir) {
    if ((unsigned)kind >= CT_NUM_DATASETS)
        return ct_error_null("dataset files: unknown dataset kind %d (cifar10, mnist or "
                             "fashion_mnist)",
                             (int)kind);
    const char *root = ct_data_root(data_dir);
    if (!ct_path_is_dir(root))
        return ct_error_null("%s: data directory %s does not exist; give the directory that "
                             "holds the dataset (--data-dir or $CTORCH_DATA), or run `ctorch "
                             "download %s --data-dir %s`",
                             ct_dataset_name(kind), root, ct_dataset_name(kind), root);
    digest_cache c;
    cache_load(&c);
    json_t *out = json_array();
    int rc = !out ? ct_error("dataset files: out of memory")
             : kind == CT_DATASET_CIFAR10 ? cifar_files(root, out, &c)
                                          : idx_files(kind, root, out, &c);
    if (rc == 0) {
        cache_save(&c);
        return out;
    }
    /* what was hashed before the failure is kept (the next call need not hash it again);
     * saving must not replace the failure's message */
    char msg[2048];
    snprintf(msg, sizeof msg, "%s", ct_last_error());
    cache_save(&c);
    json_decref(out);
    return ct_error_null("%s", msg);
}

/* ------------------------------------------------------------- curves plot */
/* One panel of the plot: one or two curves of one metric over the training step, the
 * same four panels as the live page (docs/live-page.md). */
typedef struct {
    const char *title, *ylabel, *keys[2]; /* keys[1] NULL: one curve */
    double scale;       /* 100 for accuracies given in 0-1, shown in % */
    double lo_min, hi_max; /* the axis never goes past these (accuracy: 0-100) */
} panel_spec;

enum { NPANELS = 4 };
static const panel_spec PANELS[NPANELS] = {
    {"Loss", "loss", {"train_loss", "test_loss"}, 1.0, -HUGE_VAL, HUGE_VAL},
    {"Accuracy", "accuracy (%)", {"train_acc", "test_acc"}, 100.0, 0.0, 100.0},
    {"Throughput", "images/s", {"images_per_sec", NULL}, 1.0, 0.0, HUGE_VAL},
    {"Learning rate", "learning rate", {"lr", NULL}, 1.0, 0.0, HUGE_VAL},
};
static const char *const SERIES_NAME[2] = {"train", "test"};
static const char *const SERIES_COLOR[2] = {"#1f77b4", "#d62728"};
static const char *const SERIES_DASH[2] = {"", " stroke-dasharray=\"6 4\""};

/* Geometry (SVG user units): four panels, two by two, under the title and the legend. */
enum { SVG_W = 960, HEADER_H = 66, CELL_W = SVG_W / 2, CELL_H = 340,
       SVG_H = HEADER_H + 2 * CELL_H, PLOT_LEFT = 80, PLOT_RIGHT = 20, PLOT_TOP = 34,
       PLOT_BOTTOM = 56, MARKERS_UP_TO = 60 };

typedef struct {
    double lo, hi, step;
} axis;

/* A step of 1, 2 or 5 times a power of ten giving about `ticks` intervals over span. */
static double nice_step(double span, int ticks) {
    double raw = span / ticks, mag = pow(10, floor(log10(raw))), f = raw / mag;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

/* The value axis: the data's range widened to whole steps, within [lo_min, hi_max]; a
 * flat or empty range gets some room. */
static axis value_axis(double lo, double hi, const panel_spec *p) {
    if (!(lo <= hi)) { /* no value at all */
        lo = p->lo_min > -HUGE_VAL ? p->lo_min : 0;
        hi = lo + 1;
    }
    if (hi - lo < 1e-12 * (fabs(hi) + 1)) {
        double pad = fabs(lo) > 0 ? fabs(lo) * 0.1 : 1;
        lo -= pad;
        hi += pad;
    }
    double margin = (hi - lo) * 0.03; /* keeps the extreme points off the frame */
    lo -= margin;
    hi += margin;
    axis a = {0, 0, nice_step(hi - lo, 5)};
    a.lo = fmax(floor(lo / a.step) * a.step, p->lo_min);
    a.hi = fmin(ceil(hi / a.step) * a.step, p->hi_max);
    if (!(a.hi > a.lo)) a.hi = a.lo + a.step;
    return a;
}

/* The step axis: exactly the data's range (half a unit of room around a single point),
 * ticks on whole numbers. */
static axis x_axis(double lo, double hi) {
    if (hi - lo < 1) {
        lo -= 0.5;
        hi += 0.5;
    }
    double s = nice_step(hi - lo, 6);
    return (axis){lo, hi, s < 1 ? 1 : round(s)};
}

/* Decimals that print every tick of a step exactly (0.25 -> 2, 5 -> 0); 7: too many. */
static int tick_decimals(double step) {
    int d = 0;
    while (d < 7 && fabs(step * pow(10, d) - round(step * pow(10, d))) > 1e-9 * pow(10, d)) d++;
    return d;
}

/* Text as XML character data (also fine inside attribute values). */
static void xml_text(FILE *f, const char *s) {
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '&') fputs("&amp;", f);
        else if (ch == '<') fputs("&lt;", f);
        else if (ch == '>') fputs("&gt;", f);
        else if (ch == '"') fputs("&quot;", f);
        else if (ch < 0x20) fputc(' ', f); /* control characters are not allowed in XML */
        else fputc(*s, f);
    }
}

/* Row i's value of key, scaled; NAN when missing, null or not finite. */
static double row_value(const json_t *rows, size_t i, const char *key, double scale) {
    const json_t *v = json_object_get(json_array_get(rows, i), key);
    double x = json_is_number(v) ? json_number_value(v) * scale : NAN;
    return isfinite(x) ? x : NAN;
}

/* The x axis of the plot: "step" when every row has one, else "epoch" when every row has
 * one, else the row's position (1-based). */
static const char *x_key(const json_t *rows) {
    const char *keys[2] = {"step", "epoch"};
    for (int k = 0; k < 2; k++) {
        size_t i, n = json_array_size(rows);
        for (i = 0; i < n && !isnan(row_value(rows, i, keys[k], 1)); i++) {}
        if (i == n) return keys[k];
    }
    return "row";
}

static double row_x(const json_t *rows, size_t i, const char *xk) {
    return strcmp(xk, "row") ? row_value(rows, i, xk, 1) : (double)(i + 1);
}

typedef struct {
    double x0, x1, y0, y1; /* the plot area, y0 at the top */
    axis ex, vy;
    const char *xk;
} plot_area;

static double px(const plot_area *a, double x) {
    return a->x0 + (x - a->ex.lo) / (a->ex.hi - a->ex.lo) * (a->x1 - a->x0);
}
static double py(const plot_area *a, double v) {
    return a->y1 - (v - a->vy.lo) / (a->vy.hi - a->vy.lo) * (a->y1 - a->y0);
}

/* Frame, grid, tick labels and axis labels of one panel. */
static void draw_axes(FILE *f, const plot_area *a, const panel_spec *p) {
    fprintf(f, "<g class=\"axes\" font-size=\"12\" fill=\"#333\">\n");
    int yd = tick_decimals(a->vy.step);
    /* ticks as lo + k * step: adding step repeatedly would drift (0.30000000000000004) */
    int ny = (int)floor((a->vy.hi - a->vy.lo) / a->vy.step + 1e-6);
    for (int k = 0; k <= ny; k++) {
        double t = a->vy.lo + k * a->vy.step, y = py(a, t);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e0e0e0\"/>\n",
                a->x0, y, a->x1, y);
        if (yd < 7)
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.*f</text>\n",
                    a->x0 - 6, y + 4, yd, t);
        else
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.3g</text>\n",
                    a->x0 - 6, y + 4, t);
    }
    double first = ceil(a->ex.lo / a->ex.step) * a->ex.step;
    for (int k = 0; first + k * a->ex.step <= a->ex.hi + 1e-9; k++) {
        double t = first + k * a->ex.step, x = px(a, t);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#333\"/>\n", x,
                a->y1, x, a->y1 + 5);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.0f</text>\n", x,
                a->y1 + 19, t);
    }
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
               "stroke=\"#333\"/>\n",
            a->x0, a->y0, a->x1 - a->x0, a->y1 - a->y0);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"14\" "
               "font-weight=\"bold\">%s</text>\n",
            (a->x0 + a->x1) / 2, a->y0 - 10, p->title);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n",
            (a->x0 + a->x1) / 2, a->y1 + 40, a->xk);
    fprintf(f, "<text transform=\"translate(%.1f %.1f) rotate(-90)\" text-anchor=\"middle\">%s"
               "</text>\n</g>\n",
            a->x0 - 62, (a->y0 + a->y1) / 2, p->ylabel);
}

/* One curve: a polyline through its finite points (a missing value is skipped, the line
 * joins its neighbours) and, while few enough to tell apart, a marker on each point, so
 * that a single row still shows. */
static void draw_series(FILE *f, const plot_area *a, const json_t *rows, const panel_spec *p,
                        int s) {
    size_t n = json_array_size(rows), points = 0;
    for (size_t i = 0; i < n; i++) points += !isnan(row_value(rows, i, p->keys[s], p->scale));
    if (!points) return;
    fprintf(f, "<polyline data-series=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"2\"%s "
               "points=\"",
            p->keys[s], SERIES_COLOR[s], SERIES_DASH[s]);
    const char *sep = "";
    for (size_t i = 0; i < n; i++) {
        double v = row_value(rows, i, p->keys[s], p->scale);
        if (isnan(v)) continue;
        fprintf(f, "%s%.1f,%.1f", sep, px(a, row_x(rows, i, a->xk)), py(a, v));
        sep = " ";
    }
    fprintf(f, "\"/>\n");
    for (size_t i = 0; i < n && points <= MARKERS_UP_TO; i++) {
        double v = row_value(rows, i, p->keys[s], p->scale);
        if (!isnan(v))
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n",
                    px(a, row_x(rows, i, a->xk)), py(a, v), SERIES_COLOR[s]);
    }
}

static void draw_panel(FILE *f, int k, const json_t *rows, const char *xk) {
    const panel_spec *p = &PANELS[k];
    size_t n = json_array_size(rows);
    int ns = p->keys[1] ? 2 : 1;
    double xlo = HUGE_VAL, xhi = -HUGE_VAL, vlo = HUGE_VAL, vhi = -HUGE_VAL;
    for (size_t i = 0; i < n; i++) {
        xlo = fmin(xlo, row_x(rows, i, xk));
        xhi = fmax(xhi, row_x(rows, i, xk));
        for (int s = 0; s < ns; s++) {
            double v = row_value(rows, i, p->keys[s], p->scale);
            if (isnan(v)) continue;
            vlo = fmin(vlo, v);
            vhi = fmax(vhi, v);
        }
    }
    double cx = (k % 2) * CELL_W, cy = HEADER_H + (k / 2) * CELL_H;
    plot_area a = {cx + PLOT_LEFT, cx + CELL_W - PLOT_RIGHT, cy + PLOT_TOP,
                   cy + CELL_H - PLOT_BOTTOM, x_axis(xlo, xhi), value_axis(vlo, vhi, p), xk};
    fprintf(f, "<g class=\"panel\" data-panel=\"%s\">\n", p->title);
    draw_axes(f, &a, p);
    if (vlo > vhi)
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"#888\">no "
                   "data</text>\n",
                (a.x0 + a.x1) / 2, (a.y0 + a.y1) / 2);
    for (int s = 0; s < ns; s++) draw_series(f, &a, rows, p, s);
    fprintf(f, "</g>\n");
}

/* The title and a legend shared by the panels (one-curve panels draw in train's style). */
static void draw_header(FILE *f, const char *title) {
    fprintf(f, "<text x=\"%d\" y=\"28\" text-anchor=\"middle\" font-size=\"18\" "
               "font-weight=\"bold\">",
            SVG_W / 2);
    xml_text(f, title);
    fprintf(f, "</text>\n<g class=\"legend\" font-size=\"13\">\n");
    for (int s = 0; s < 2; s++) {
        int x = SVG_W / 2 - 90 + s * 100;
        fprintf(f, "<line x1=\"%d\" y1=\"50\" x2=\"%d\" y2=\"50\" stroke=\"%s\" "
                   "stroke-width=\"2\"%s/>\n",
                x, x + 30, SERIES_COLOR[s], SERIES_DASH[s]);
        fprintf(f, "<text x=\"%d\" y=\"54\">%s</text>\n", x + 36, SERIES_NAME[s]);
    }
    fprintf(f, "</g>\n");
}

static int check_rows(const json_t *rows) {
    if (!json_is_array(rows))
        return ct_error("curves plot: rows must be a JSON array of per-epoch objects "
                        "({\"epoch\": 1, \"step\": 16, \"train_loss\": ..., ...})");
    if (json_array_size(rows) == 0)
        return ct_error("curves plot: no epochs to plot (rows is empty); write the plot after "
                        "the first epoch");
    for (size_t i = 0; i < json_array_size(rows); i++)
        if (!json_is_object(json_array_get(rows, i)))
            return ct_error("curves plot: row %zu is not a JSON object (each row is one "
                            "epoch's metrics: {\"epoch\", \"step\", \"train_loss\", "
                            "\"train_acc\", \"test_loss\", \"test_acc\", \"lr\", "
                            "\"images_per_sec\"})",
                            i);
    return 0;
}

int cli_write_curves_svg(const char *path, const json_t *rows, const char *title) {
    if (!path || !*path) return ct_error("curves plot: no file path given");
    if (check_rows(rows) != 0) return -1;
    if (!title) title = "ctorch training curves";
    json_t *utf8 = json_string(title); /* jansson refuses text that is not UTF-8 */
    if (!utf8)
        return ct_error("curves plot: the title is not valid UTF-8 text; pass UTF-8 (an SVG "
                        "file is XML)");
    json_decref(utf8);
    ct_atomic_file *f = ct_atomic_open(path);
    if (!f) {
        ct_error_context("curves plot %s", path);
        return -1;
    }
    fprintf(f->fp,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
            "viewBox=\"0 0 %d %d\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            SVG_W, SVG_H, SVG_W, SVG_H);
    draw_header(f->fp, title);
    const char *xk = x_key(rows);
    for (int k = 0; k < NPANELS; k++) draw_panel(f->fp, k, rows, xk);
    fprintf(f->fp, "</svg>\n");
    if (ct_atomic_commit(f) != 0) {
        ct_error_context("curves plot");
        return -1;
    }
    return 0;
}

const char *cli_build_commit(void) { return CT_BUILD_GIT_COMMIT; }
