/* The run manifest's environment fields, dataset digests and curves plot
 * (src/cli/run_info.c, linked into the suite by the Makefile). */
#include "test.h"
#include "cli_util.h"

#include "cli/run_info.h"
#include "ctorch_io.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ helpers */
static int make_tmpdir(char *out, size_t n) { return ct_test_mkdtemp(out, n, "/tmp/ctorch_runinfo_test_XXXXXX"); }

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    CHECK_MSG(f != NULL, "cannot write %s: %s", path, strerror(errno));
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

/* Sets path's mtime to `ago` seconds before now (+ns nanoseconds). */
static void set_mtime(const char *path, long ago, long ns) {
    struct timespec t[2];
    clock_gettime(CLOCK_REALTIME, &t[0]);
    t[0].tv_sec -= ago;
    t[0].tv_nsec = ns;
    t[1] = t[0];
    CHECK_MSG(utimensat(AT_FDCWD, path, t, 0) == 0, "utimensat %s: %s", path, strerror(errno));
}

static const char *str_of(const json_t *o, const char *key) {
    return json_string_value(json_object_get(o, key));
}

/* A call returning json_t * that must fail with a message containing needle. */
#define CHECK_ERR_JSON(expr, needle)                                                       \
    do {                                                                                   \
        ct_clear_error();                                                                  \
        json_t *ct__j = (expr);                                                            \
        ct_test_expect_error(__FILE__, __LINE__, ct__j == NULL, #expr, (needle));          \
        json_decref(ct__j);                                                                \
    } while (0)

/* Sets or unsets an environment variable, returning the old value (malloc'd or NULL) for
 * restore_env. */
static char *swap_env(const char *name, const char *value) {
    const char *old = getenv(name);
    char *saved = old ? strdup(old) : NULL;
    if (value) setenv(name, value, 1);
    else unsetenv(name);
    return saved;
}

static void restore_env(const char *name, char *saved) {
    if (saved) setenv(name, saved, 1);
    else unsetenv(name);
    free(saved);
}

/* ------------------------------------------------------------------- ctorch */
TEST(run_info_env_ctorch_names_version_commit_flags_and_kernels) {
    json_t *o = cli_env_ctorch();
    CHECK_NN(o);
    if (!o) return;
    CHECK(str_of(o, "version") && !strcmp(str_of(o, "version"), CT_VERSION));
    const char *commit = str_of(o, "git_commit");
    CHECK_MSG(commit && (!strcmp(commit, "unknown") || strspn(commit, "0123456789abcdef") >= 4),
              "git_commit %s", commit ? commit : "(null)");
    /* Built from a git checkout: the commit compiled in is HEAD's (when the suite runs in
     * the tree it was built from; a stale build says otherwise, which is the point). */
    FILE *p = access(".git", F_OK) == 0 ? popen("git rev-parse --short HEAD 2>/dev/null", "r") : NULL;
    char head[64] = "";
    if (p && fgets(head, sizeof head, p)) head[strcspn(head, "\n")] = 0;
    if (p) pclose(p);
    if (head[0] && commit)
        CHECK_MSG(!strncmp(commit, head, strlen(head)), "git_commit %s, HEAD is %s", commit, head);
    const char *flags = str_of(o, "build_flags");
    CHECK_MSG(flags && strstr(flags, "-std=c11"), "build_flags %s", flags ? flags : "(null)");
    const char *k = str_of(o, "cpu_kernels");
    CHECK_MSG(k && (!strncmp(k, "avx512", 6) || !strcmp(k, "avx2") || !strcmp(k, "baseline")),
              "cpu_kernels %s", k ? k : "(null)");
    char *text = json_dumps(o, JSON_COMPACT);
    printf("    ctorch: %s\n", text ? text : "");
    free(text);
    json_decref(o);

    /* CTORCH_CPU_ISA lowers the kernels' level, and the manifest says so */
    char *saved = swap_env("CTORCH_CPU_ISA", "none");
    o = cli_env_ctorch();
    CHECK(o && !strcmp(str_of(o, "cpu_kernels"), "baseline"));
    CHECK(o && !strcmp(str_of(o, "cpu_isa_override"), "none"));
    json_decref(o);
    setenv("CTORCH_CPU_ISA", "avx2", 1);
    o = cli_env_ctorch();
    CHECK(o && (!strcmp(str_of(o, "cpu_kernels"), "avx2") ||
                !strcmp(str_of(o, "cpu_kernels"), "baseline")));
    json_decref(o);
    restore_env("CTORCH_CPU_ISA", saved);
}

/* ------------------------------------------------------------------- system */
TEST(run_info_env_system_describes_the_machine) {
    char *saved = swap_env("CTORCH_IMAGE_DIGEST", NULL);
    json_t *o = cli_env_system(3);
    CHECK_NN(o);
    if (!o) {
        restore_env("CTORCH_IMAGE_DIGEST", saved);
        return;
    }
    struct utsname u;
    CHECK(uname(&u) == 0);
    const char *kernel = str_of(o, "kernel");
    CHECK_MSG(kernel && !strncmp(kernel, u.sysname, strlen(u.sysname)) && strstr(kernel, u.release),
              "kernel %s", kernel ? kernel : "(null)");
    CHECK(str_of(o, "hostname") && !strcmp(str_of(o, "hostname"), u.nodename));
    if (access("/etc/os-release", R_OK) == 0) CHECK(str_of(o, "os") != NULL);
    json_int_t cores = json_integer_value(json_object_get(o, "cores"));
    json_int_t allowed = json_integer_value(json_object_get(o, "cpus_allowed"));
    CHECK_MSG(cores >= 1 && allowed >= 1 && allowed <= cores, "cores %lld allowed %lld",
              (long long)cores, (long long)allowed);
    CHECK(json_integer_value(json_object_get(o, "threads")) == 3);
    CHECK(json_integer_value(json_object_get(o, "memory_bytes")) > (json_int_t)1 << 26);
    const json_t *flags = json_object_get(o, "cpu_flags");
    CHECK(json_is_array(flags) || json_is_null(flags));
#if defined(__x86_64__) && defined(__GNUC__)
    CHECK(json_is_array(flags));
    if (__builtin_cpu_supports("avx2")) {
        int found = 0;
        size_t i;
        json_t *f;
        json_array_foreach(flags, i, f) found |= !strcmp(json_string_value(f), "avx2");
        CHECK_MSG(found, "avx2 missing from cpu_flags");
    }
    CHECK(str_of(o, "cpu_model") != NULL);
#endif
    const json_t *blas = json_object_get(o, "openblas");
    CHECK_MSG(json_is_object(blas) && str_of(blas, "config"), "openblas: %s",
              json_is_null(blas) ? "null" : "no config");
    if (access("/etc/ctorch/image-digest", F_OK) != 0)
        CHECK(json_is_null(json_object_get(o, "container_image")));
    json_decref(o);

    /* inside ctorch's image: the digest, trimmed, and where it came from */
    setenv("CTORCH_IMAGE_DIGEST", "  sha256:0123abcd \n", 1);
    o = cli_env_system(1);
    const json_t *img = json_object_get(o, "container_image");
    CHECK(json_is_object(img) && !strcmp(str_of(img, "digest"), "sha256:0123abcd") &&
          !strcmp(str_of(img, "source"), "CTORCH_IMAGE_DIGEST"));
    json_decref(o);
    restore_env("CTORCH_IMAGE_DIGEST", saved);
}

/* --------------------------------------------------------------------- CUDA */
TEST(run_info_env_cuda_is_null_on_the_cpu_and_names_the_stack_on_a_gpu) {
    json_t *o = cli_env_cuda(ct_cpu());
    CHECK(o && json_is_null(o));
    json_decref(o);
    ct_device gpu;
    CHECK_OK(ct_device_parse("cuda", &gpu));
    int avail = 0;
    ct_cuda_status(&avail);
    if (!avail) {
        CHECK_ERR_JSON(cli_env_cuda(gpu), "CUDA is unavailable");
        return;
    }
    o = cli_env_cuda(gpu);
    CHECK_NN(o);
    CHECK(str_of(o, "device") && !strcmp(str_of(o, "device"), "cuda:0"));
    CHECK(str_of(o, "gpu") && str_of(o, "runtime") && str_of(o, "driver") && str_of(o, "cudnn"));
    CHECK(json_integer_value(json_object_get(o, "gpu_count")) >= 1);
    /* NCCL's version when libnccl.so.2 loads (the emulator has a stand-in), else null */
    const json_t *nccl = json_object_get(o, "nccl");
    void *nccl_lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_NOLOAD);
    CHECK_MSG(nccl_lib ? json_is_string(nccl) && strchr(json_string_value(nccl), '.')
                       : json_is_null(nccl),
              "nccl: %s with libnccl.so.2 %s", json_is_string(nccl) ? json_string_value(nccl)
                                                                    : "null",
              nccl_lib ? "loaded" : "not loaded");
    if (nccl_lib) dlclose(nccl_lib);
    char *s = json_dumps(o, JSON_COMPACT);
    printf("    cuda: %s\n", s ? s : "");
    free(s);
    json_decref(o);
    CHECK_OK(ct_device_parse("cuda:99", &gpu));
    CHECK_ERR_JSON(cli_env_cuda(gpu), "no such device");
}

/* ------------------------------------------------------------ dataset files */
/* The four MNIST files under <root>/mnist, with distinct contents; returns the root. */
static void fake_mnist(const char *root) {
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/mnist", root);
    CHECK(mkdir(dir, 0755) == 0);
    const char *names[] = {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte",
                           "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"};
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        write_file(path, names[i]); /* the content is the name: every file differs */
        set_mtime(path, 3600, 0);
    }
}

/* Whether every entry's sha256 is its content's and the paths are as expected. */
static void check_entries(const json_t *files, int n) {
    CHECK_MSG(json_array_size(files) == (size_t)n, "%zu files, expected %d",
              json_array_size(files), n);
    size_t i;
    json_t *e;
    json_array_foreach(files, i, e) {
        const char *path = str_of(e, "path"), *sha = str_of(e, "sha256");
        char want[65];
        CHECK(path && path[0] == '/');
        CHECK(path && ct_sha256_file(path, want) == 0 && sha && !strcmp(sha, want));
        struct stat st;
        CHECK(path && stat(path, &st) == 0 &&
              json_integer_value(json_object_get(e, "bytes")) == st.st_size);
    }
}

TEST(run_info_dataset_files_are_hashed_once_and_again_after_a_change) {
    char tmp[256], root[300], cache[300], path[600];
    if (make_tmpdir(tmp, sizeof tmp) != 0) SKIP("no temporary directory");
    snprintf(root, sizeof root, "%s/data", tmp);
    snprintf(cache, sizeof cache, "%s/cache", tmp);
    CHECK(mkdir(root, 0755) == 0);
    fake_mnist(root);
    char *saved = swap_env("CTORCH_CACHE_DIR", cache);

    int64_t n0 = cli_dataset_hash_count();
    json_t *a = cli_dataset_files(CT_DATASET_MNIST, root);
    CHECK_NN(a);
    check_entries(a, 4);
    CHECK(cli_dataset_hash_count() - n0 == 4);
    /* the plain file wins over a .gz, as in the loader */
    CHECK(a && strstr(str_of(json_array_get(a, 1), "path"), "/mnist/train-labels-idx1-ubyte") &&
          !strstr(str_of(json_array_get(a, 1), "path"), ".gz"));
    snprintf(path, sizeof path, "%s/sha256-cache.json", cache);
    json_t *c = json_load_file(path, 0, NULL);
    CHECK_MSG(json_is_object(json_object_get(c, "files")) &&
                  json_object_size(json_object_get(c, "files")) == 4,
              "cache file %s", path);
    json_decref(c);

    /* unchanged files: answered from the cache, same result */
    json_t *b = cli_dataset_files(CT_DATASET_MNIST, root);
    CHECK(cli_dataset_hash_count() - n0 == 4);
    CHECK(a && b && json_equal(a, b));
    json_decref(b);

    /* a touched file (mtime only) is hashed again; new content with the same size too */
    snprintf(path, sizeof path, "%s/mnist/t10k-images-idx3-ubyte.gz", root);
    set_mtime(path, 1800, 0);
    b = cli_dataset_files(CT_DATASET_MNIST, root);
    CHECK(cli_dataset_hash_count() - n0 == 5);
    CHECK(a && b && json_equal(a, b));
    json_decref(b);
    write_file(path, "T10K-IMAGES-IDX3-UBYTE.GZ"); /* same length, other bytes */
    set_mtime(path, 1700, 123);
    b = cli_dataset_files(CT_DATASET_MNIST, root);
    CHECK(cli_dataset_hash_count() - n0 == 6);
    check_entries(b, 4);
    CHECK(a && b && strcmp(str_of(json_array_get(a, 2), "sha256"),
                           str_of(json_array_get(b, 2), "sha256")) != 0);
    json_decref(b);

    /* a file modified just now is hashed every time until it is 2 s old (its mtime could
     * still be shared by a rewrite) */
    set_mtime(path, 0, 0);
    int64_t n1 = cli_dataset_hash_count();
    json_decref(cli_dataset_files(CT_DATASET_MNIST, root));
    json_decref(cli_dataset_files(CT_DATASET_MNIST, root));
    CHECK(cli_dataset_hash_count() - n1 == 2);
    json_decref(a);
    restore_env("CTORCH_CACHE_DIR", saved);
    ct_test_rm_rf(tmp);
}

TEST(run_info_dataset_files_survive_a_corrupt_or_unwritable_cache) {
    char tmp[256], root[300], cache[300], path[600];
    if (make_tmpdir(tmp, sizeof tmp) != 0) SKIP("no temporary directory");
    snprintf(root, sizeof root, "%s/data", tmp);
    snprintf(cache, sizeof cache, "%s/cache", tmp);
    CHECK(mkdir(root, 0755) == 0 && mkdir(cache, 0755) == 0);
    fake_mnist(root);
    char *saved = swap_env("CTORCH_CACHE_DIR", cache);
    snprintf(path, sizeof path, "%s/sha256-cache.json", cache);
    const char *bad[] = {"{not json", "[1, 2]", "{\"version\": 1, \"files\": {\"x\": 3}}",
                         "{\"version\": 1, \"files\": []}"};
    for (int i = 0; i < 4; i++) {
        write_file(path, bad[i]);
        int64_t n0 = cli_dataset_hash_count();
        json_t *a = cli_dataset_files(CT_DATASET_MNIST, root);
        CHECK_MSG(a != NULL, "cache \"%s\": %s", bad[i], ct_last_error());
        check_entries(a, 4);
        CHECK(cli_dataset_hash_count() - n0 == 4);
        json_decref(a);
        json_t *c = json_load_file(path, 0, NULL); /* rewritten, with the 4 digests */
        CHECK(json_object_size(json_object_get(c, "files")) >= 4);
        json_decref(c);
    }
    /* a cache entry with a wrong digest format is not trusted */
    json_t *c = json_load_file(path, 0, NULL);
    const char *key;
    json_t *e;
    json_object_foreach(json_object_get(c, "files"), key, e)
        json_object_set_new(e, "sha256", json_string("not-a-digest"));
    CHECK(json_dump_file(c, path, 0) == 0);
    json_decref(c);
    int64_t n0 = cli_dataset_hash_count();
    json_t *a = cli_dataset_files(CT_DATASET_MNIST, root);
    check_entries(a, 4);
    CHECK(cli_dataset_hash_count() - n0 == 4);
    json_decref(a);

    /* nowhere to write (a regular file where the directory should be): hashed every
     * time, never an error */
    snprintf(path, sizeof path, "%s/cache/sha256-cache.json/sub", tmp);
    setenv("CTORCH_CACHE_DIR", path, 1);
    n0 = cli_dataset_hash_count();
    for (int i = 0; i < 2; i++) {
        ct_clear_error();
        a = cli_dataset_files(CT_DATASET_MNIST, root);
        CHECK_MSG(a != NULL, "%s", ct_last_error());
        check_entries(a, 4);
        CHECK_MSG(!ct_last_error() || !*ct_last_error(), "error left set: %s", ct_last_error());
        json_decref(a);
    }
    CHECK(cli_dataset_hash_count() - n0 == 8);
    restore_env("CTORCH_CACHE_DIR", saved);
    ct_test_rm_rf(tmp);
}

TEST(run_info_dataset_files_resolve_cifar10_like_the_loader) {
    char tmp[256], dir[300], path[600];
    if (make_tmpdir(tmp, sizeof tmp) != 0) SKIP("no temporary directory");
    char cache[300];
    snprintf(cache, sizeof cache, "%s/cache", tmp);
    char *saved = swap_env("CTORCH_CACHE_DIR", cache);
    /* only the official archive: both splits read it, listed once */
    snprintf(path, sizeof path, "%s/cifar-10-binary.tar.gz", tmp);
    write_file(path, "archive");
    json_t *a = cli_dataset_files(CT_DATASET_CIFAR10, tmp);
    CHECK_NN(a);
    check_entries(a, 1);
    CHECK(a && strstr(str_of(json_array_get(a, 0), "path"), "cifar-10-binary.tar.gz"));
    json_decref(a);
    /* the batches, when all of a split's are there, win over the archive */
    snprintf(dir, sizeof dir, "%s/cifar-10-batches-bin", tmp);
    CHECK(mkdir(dir, 0755) == 0);
    const char *names[] = {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
                           "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"};
    for (int i = 0; i < 6; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        write_file(path, names[i]);
    }
    a = cli_dataset_files(CT_DATASET_CIFAR10, tmp);
    check_entries(a, 6);
    CHECK(a && strstr(str_of(json_array_get(a, 5), "path"), "/test_batch.bin"));
    json_decref(a);
    /* the dataset directory itself given as the data directory */
    a = cli_dataset_files(CT_DATASET_CIFAR10, dir);
    check_entries(a, 6);
    json_decref(a);
    /* a missing test batch and no archive: the error names the file and the directory */
    snprintf(path, sizeof path, "%s/test_batch.bin", dir);
    CHECK(unlink(path) == 0);
    snprintf(path, sizeof path, "%s/cifar-10-binary.tar.gz", tmp);
    CHECK(unlink(path) == 0);
    CHECK_ERR_JSON(cli_dataset_files(CT_DATASET_CIFAR10, tmp), "test_batch.bin not found in");
    CHECK_ERR_JSON(cli_dataset_files(CT_DATASET_CIFAR10, tmp), "ctorch download cifar10");
    restore_env("CTORCH_CACHE_DIR", saved);
    ct_test_rm_rf(tmp);
}

TEST(run_info_dataset_files_name_a_missing_directory_or_file) {
    CHECK_ERR_JSON(cli_dataset_files(CT_DATASET_MNIST, "/nonexistent/ctorch-data"),
                   "data directory /nonexistent/ctorch-data does not exist");
    CHECK_ERR_JSON(cli_dataset_files((ct_dataset_kind)7, "/tmp"), "unknown dataset");
    char tmp[256], path[600];
    if (make_tmpdir(tmp, sizeof tmp) != 0) SKIP("no temporary directory");
    char *saved = swap_env("CTORCH_CACHE_DIR", tmp);
    fake_mnist(tmp);
    snprintf(path, sizeof path, "%s/mnist/t10k-labels-idx1-ubyte.gz", tmp);
    CHECK(unlink(path) == 0);
    CHECK_ERR_JSON(cli_dataset_files(CT_DATASET_MNIST, tmp), "t10k-labels-idx1-ubyte (or");
    CHECK_ERR_JSON(cli_dataset_files(CT_DATASET_FASHION_MNIST, tmp), "fashion_mnist:");
    restore_env("CTORCH_CACHE_DIR", saved);
    ct_test_rm_rf(tmp);
}

/* The real datasets ($CTORCH_DATA): every digest equals the data's SHA256SUMS. */
TEST(run_info_dataset_files_match_the_data_sha256sums) {
    const char *root = getenv("CTORCH_DATA");
    char sums_path[4096], tmp[256];
    snprintf(sums_path, sizeof sums_path, "%s/SHA256SUMS", root ? root : "");
    FILE *sums = root ? fopen(sums_path, "r") : NULL;
    if (!sums) SKIP("CTORCH_DATA with a SHA256SUMS file not set");
    char sums_text[8192];
    size_t len = fread(sums_text, 1, sizeof sums_text - 1, sums);
    sums_text[len] = 0;
    fclose(sums);
    if (make_tmpdir(tmp, sizeof tmp) != 0) SKIP("no temporary directory");
    char *saved = swap_env("CTORCH_CACHE_DIR", tmp);
    const ct_dataset_kind kinds[] = {CT_DATASET_CIFAR10, CT_DATASET_MNIST, CT_DATASET_FASHION_MNIST};
    for (int k = 0; k < 3; k++) {
        json_t *files = cli_dataset_files(kinds[k], root);
        if (!files) continue; /* that dataset is not there */
        int64_t n0 = cli_dataset_hash_count();
        json_t *again = cli_dataset_files(kinds[k], root);
        CHECK_MSG(cli_dataset_hash_count() == n0, "%s hashed again", ct_dataset_name(kinds[k]));
        CHECK(json_equal(files, again));
        json_decref(again);
        size_t i;
        json_t *e;
        json_array_foreach(files, i, e) {
            const char *path = str_of(e, "path"), *base = strrchr(path, '/');
            char line[512];
            /* "<sha256>  <subdir>/<file>": the digest followed by this file's name */
            snprintf(line, sizeof line, "%s  ", str_of(e, "sha256"));
            const char *hit = strstr(sums_text, line);
            CHECK_MSG(hit && !strncmp(strchr(hit + 66, '/') ? strchr(hit + 66, '/') : "", base,
                                      strlen(base)),
                      "%s: sha256 %s is not the one in %s", path, str_of(e, "sha256"), sums_path);
        }
        printf("    %s: %zu files hashed\n", ct_dataset_name(kinds[k]), json_array_size(files));
        json_decref(files);
    }
    restore_env("CTORCH_CACHE_DIR", saved);
    ct_test_rm_rf(tmp);
}

/* --------------------------------------------------------------- curves plot */
/* Counts the polylines of an SVG file and, per data-series, its points. */
static int svg_points(const char *path, const char *series) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return svg_series_points(buf, series);
}

static int count_of(const char *path, const char *needle) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    int c = 0;
    for (const char *p = buf; (p = strstr(p, needle)) != NULL; p++) c++;
    return c;
}

/* The file parses as XML, when python3 is there to say so (-1: no python3). */
static int xml_well_formed(const char *path) {
    if (system("python3 -c 'import xml.dom.minidom' >/dev/null 2>&1") != 0) return -1;
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "python3 -c 'import xml.dom.minidom,sys; xml.dom.minidom.parse(sys.argv[1])' '%s'",
             path);
    return system(cmd) == 0;
}

static json_t *rows_of(int n, int gaps) {
    json_t *rows = json_array();
    for (int e = 1; e <= n; e++) {
        json_t *r = json_pack("{s:i,s:i,s:f,s:f,s:f,s:f,s:f,s:f}", "epoch", e, "step", 16 * e,
                              "train_loss", 2.0 / e, "train_acc", 1 - 0.9 / e, "test_loss",
                              2.2 / e, "test_acc", 0.95 - 0.9 / e, "lr", 0.1 / e,
                              "images_per_sec", 900.0 + e);
        if (gaps && e == 2) json_object_set_new(r, "test_loss", json_null());
        if (gaps && e == 3) json_object_del(r, "train_acc");
        json_array_append_new(rows, r);
    }
    return rows;
}

TEST(run_info_curves_svg_draws_four_panels_for_1_to_many_epochs) {
    char tmp[256], path[600];
    if (make_tmpdir(tmp, sizeof tmp) != 0) SKIP("no temporary directory");
    snprintf(path, sizeof path, "%s/curves.svg", tmp);
    const int sizes[] = {1, 7, 500};
    int xml_checked = 0;
    for (int k = 0; k < 3; k++) {
        json_t *rows = rows_of(sizes[k], 0);
        CHECK_OK(cli_write_curves_svg(path, rows, "simple_cnn on cifar10 <lr=0.1 & bs=128>"));
        const char *series[] = {"train_loss", "test_loss", "train_acc", "test_acc", "lr",
                                "images_per_sec"};
        for (int s = 0; s < 6; s++)
            CHECK_MSG(svg_points(path, series[s]) == sizes[k], "%d epochs: %s has %d points",
                      sizes[k], series[s], svg_points(path, series[s]));
        CHECK(count_of(path, "<polyline") == 6);
        CHECK(count_of(path, "class=\"panel\"") == 4);
        const char *panels[] = {"Loss", "Accuracy", "Throughput", "Learning rate"};
        for (int p = 0; p < 4; p++) {
            char tag[64];
            snprintf(tag, sizeof tag, "data-panel=\"%s\"", panels[p]);
            CHECK_MSG(count_of(path, tag) == 1, "no %s panel", panels[p]);
        }
        CHECK(count_of(path, ">step</text>") == 4); /* over the training step */
        /* markers while the points can be told apart (a single epoch is only a marker) */
        CHECK(count_of(path, "<circle") == (sizes[k] <= 60 ? 6 * sizes[k] : 0));
        CHECK(count_of(path, "&lt;lr=0.1 &amp; bs=128&gt;") == 1);
        int wf = xml_well_formed(path);
        CHECK_MSG(wf != 0, "%d epochs: %s is not well-formed XML", sizes[k], path);
        xml_checked += wf == 1;
        json_decref(rows);
    }
    printf("    XML well-formedness: %s\n", xml_checked ? "checked with python3" : "not checked (no python3)");

    /* missing and null values are skipped: 7 epochs with one gap in test_loss, train_acc */
    json_t *rows = rows_of(7, 1);
    CHECK_OK(cli_write_curves_svg(path, rows, NULL));
    CHECK(svg_points(path, "train_loss") == 7 && svg_points(path, "test_loss") == 6);
    CHECK(svg_points(path, "train_acc") == 6 && svg_points(path, "test_acc") == 7);
    CHECK(count_of(path, "ctorch training curves") == 1);
    CHECK(xml_well_formed(path) != 0);
    json_decref(rows);
    /* no test metrics at all (a run without a test set): the train curves only */
    rows = json_pack("[{s:i,s:f,s:f},{s:i,s:f,s:f}]", "epoch", 1, "train_loss", 1.5, "train_acc",
                     0.4, "epoch", 2, "train_loss", 1.1, "train_acc", 0.6);
    CHECK_OK(cli_write_curves_svg(path, rows, "train only"));
    CHECK(count_of(path, "<polyline") == 2 && svg_points(path, "train_acc") == 2);
    CHECK(count_of(path, ">epoch</text>") == 4); /* no step in the rows: over the epoch */
    CHECK(count_of(path, "no data") == 2);      /* throughput and learning rate */
    json_decref(rows);

    /* rendered by a browser when one is installed, and by librsvg's strict renderer: the
     * plot with gaps */
    rows = rows_of(7, 1);
    CHECK_OK(cli_write_curves_svg(path, rows, "render check"));
    json_decref(rows);
    const char *browsers[] = {"chromium", "chromium-browser", "google-chrome"};
    int rendered = 0, rsvg = 0;
    if (system("command -v rsvg-convert >/dev/null 2>&1") == 0) {
        char cmd[1600], png[700];
        snprintf(png, sizeof png, "%s/rsvg.png", tmp);
        snprintf(cmd, sizeof cmd, "rsvg-convert '%s' -o '%s'", path, png);
        struct stat st;
        CHECK_MSG(system(cmd) == 0 && stat(png, &st) == 0 && st.st_size > 1000,
                  "rsvg-convert could not render %s", path);
        rsvg = 1;
    }
    for (int b = 0; b < 3 && !rendered; b++) {
        char cmd[1600], png[700];
        snprintf(cmd, sizeof cmd, "command -v %s >/dev/null 2>&1", browsers[b]);
        if (system(cmd) != 0) continue;
        snprintf(png, sizeof png, "%s/curves.png", tmp);
        snprintf(cmd, sizeof cmd,
                 "timeout 60 %s --headless --no-sandbox --disable-gpu --screenshot='%s' "
                 "--window-size=960,746 'file://%s' >/dev/null 2>&1",
                 browsers[b], png, path);
        struct stat st;
        CHECK_MSG(system(cmd) == 0 && stat(png, &st) == 0 && st.st_size > 1000,
                  "%s could not render %s", browsers[b], path);
        rendered = 1;
    }
    printf("    rendering: %s, %s\n", rendered ? "chromium checked" : "no chromium",
           rsvg ? "rsvg-convert checked" : "no rsvg-convert");
    ct_test_rm_rf(tmp);
}

TEST(run_info_curves_svg_rejects_bad_rows_and_paths) {
    char tmp[256], path[600];
    if (make_tmpdir(tmp, sizeof tmp) != 0) SKIP("no temporary directory");
    snprintf(path, sizeof path, "%s/curves.svg", tmp);
    json_t *rows = rows_of(3, 0);
    json_t *obj = json_object(), *empty = json_array(), *bad = json_pack("[{s:i}, i]", "epoch", 1, 5);
    CHECK_ERR_INT(cli_write_curves_svg(path, obj, NULL), "rows must be a JSON array");
    CHECK_ERR_INT(cli_write_curves_svg(path, NULL, NULL), "rows must be a JSON array");
    CHECK_ERR_INT(cli_write_curves_svg(path, empty, NULL), "no epochs to plot");
    CHECK_ERR_INT(cli_write_curves_svg(path, bad, NULL), "row 1 is not a JSON object");
    CHECK_ERR_INT(cli_write_curves_svg(NULL, rows, NULL), "no file path");
    CHECK_ERR_INT(cli_write_curves_svg(path, rows, "bad \xff title"), "not valid UTF-8");
    CHECK(access(path, F_OK) != 0); /* nothing written by a refused call */
    /* a directory that does not exist, a directory as the path: named in the error */
    char missing[700];
    snprintf(missing, sizeof missing, "%s/no/such/dir/curves.svg", tmp);
    CHECK_ERR_INT(cli_write_curves_svg(missing, rows, NULL), "no/such/dir does not exist");
    CHECK_ERR_INT(cli_write_curves_svg(tmp, rows, NULL), "is a directory");
    /* an earlier plot survives a failed rewrite untouched, and nothing is left behind */
    CHECK_OK(cli_write_curves_svg(path, rows, "first"));
    CHECK_ERR_INT(cli_write_curves_svg(path, bad, "second"), "row 1");
    CHECK(count_of(path, "first") == 1);
    CHECK(ct_test_count_files(tmp) == 1);
    json_decref(rows);
    json_decref(obj);
    json_decref(empty);
    json_decref(bad);
    ct_test_rm_rf(tmp);
}
