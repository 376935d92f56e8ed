/* `ctorch archive` and `ctorch verify` end to end: a real run directory (a short mlp run on
 * MNIST from $CTORCH_DATA and a manifest.json written here), its archive, verification
 * of the archive and of modified copies, bad input, and `--upload zenodo` against
 * tests/zenodo_mock.py (a stand-in for Zenodo's API on loopback, run with the system
 * python3). The binary is build/ctorch unless CTORCH_BIN says otherwise. */
#include "test.h"
#include "ctorch_io.h"
#include "data/data_internal.h" /* ct_tar_gz_scan: reads the archives back */

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TOKEN "tok-5a1e7c"
#define PY "/usr/bin/python3"
#define MOCK "tests/zenodo_mock.py"

/* The binary, as an absolute path (some commands run in another directory). */
static const char *bin(void) {
    static char path[512];
    char real[4096];
    const char *b = getenv("CTORCH_BIN");
    if (!b) b = "build/ctorch";
    if (!path[0]) snprintf(path, sizeof path, "%.500s", realpath(b, real) ? real : b);
    return path;
}

static char g_tmp[256];
static void remove_tmpdir(void) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd)) {}
}
static const char *tmpdir(void) {
    if (!g_tmp[0]) {
        snprintf(g_tmp, sizeof g_tmp, "/tmp/ctorch-archive-test-XXXXXX");
        if (!mkdtemp(g_tmp)) g_tmp[0] = 0;
        else atexit(remove_tmpdir);
    }
    return g_tmp;
}

/* Runs a shell command with its output in `log`; returns the exit status. */
static int run(const char *cmd, const char *log) {
    char full[8192];
    snprintf(full, sizeof full, "%s > %s 2>&1", cmd, log);
    int st = system(full);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The whole of a (small) file, NUL-terminated, malloc'd; NULL when unreadable. */
static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = malloc(1 << 20);
    size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (buf) buf[n] = 0;
    return buf;
}

static int file_has(const char *path, const char *needle) {
    char *s = slurp(path);
    int has = s && strstr(s, needle);
    free(s);
    return has;
}

static void show(const char *log) {
    char *s = slurp(log);
    fprintf(stderr, "    --- %s:\n%s    ---\n", log, s ? s : "(unreadable)");
    free(s);
}

/* `ctorch ARGS` must exit with `code` and print `needle`. */
static void expect(const char *args, int code, const char *needle) {
    char cmd[4096], log[512];
    snprintf(log, sizeof log, "%s/expect.log", tmpdir());
    snprintf(cmd, sizeof cmd, "%s %s", bin(), args);
    int rc = run(cmd, log);
    int has = !needle || file_has(log, needle);
    CHECK_MSG(rc == code, "`ctorch %s` exited %d, expected %d", args, rc, code);
    CHECK_MSG(has, "`ctorch %s`: output lacks \"%s\"", args, needle);
    if (rc != code || !has) show(log);
}

#ifdef CT_HAVE_LIBARCHIVE
static const char *mnist_dir(void) {
    const char *d = getenv("CTORCH_DATA");
    char p[1024];
    snprintf(p, sizeof p, "%s/mnist/t10k-images-idx3-ubyte.gz", d ? d : ".");
    return d && access(p, R_OK) == 0 ? d : NULL;
}

/* ------------------------------------------------------------------ the run */
/* tmp/run: a real run directory (`ctorch train --run-dir`: mlp, one epoch on 512 MNIST
 * images, 256 test images) made once. */
static const char *the_run(void) {
    static char dir[512];
    static int state; /* 0 not made, 1 made, -1 failed */
    const char *data = mnist_dir();
    if (state == 0 && data) {
        char cmd[4096], log[600];
        snprintf(dir, sizeof dir, "%s/run", tmpdir());
        snprintf(log, sizeof log, "%s/train.log", tmpdir());
        snprintf(cmd, sizeof cmd, "%s train --model mlp --dataset mnist --data-dir %s --epochs 1 "
                 "--train-limit 512 --test-limit 256 --run-dir %s", bin(), data, dir);
        int rc = run(cmd, log);
        CHECK_MSG(rc == 0, "train exited %d", rc);
        if (rc) show(log);
        state = rc == 0 ? 1 : -1;
    }
    return state == 1 ? dir : NULL;
}

/* A copy of the run in tmp/NAME. */
static const char *copy_run(const char *name) {
    static char dir[512];
    char cmd[2048];
    snprintf(dir, sizeof dir, "%s/%s", tmpdir(), name);
    snprintf(cmd, sizeof cmd, "rm -rf %s && cp -r %s %s", dir, the_run(), dir);
    return system(cmd) == 0 ? dir : NULL;
}

/* Sets key (top level or "final_metrics"/"system" member) of DIR/manifest.json. */
static void edit_manifest(const char *dir, const char *object, const char *key, json_t *value) {
    char path[1024];
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    json_t *m = json_load_file(path, 0, NULL);
    json_t *o = object ? json_object_get(m, object) : m;
    CHECK(o != NULL);
    if (o) json_object_set_new(o, key, value);
    CHECK(m && json_dump_file(m, path, JSON_INDENT(2)) == 0);
    json_decref(m);
}

/* ------------------------------------------------------------- archive contents */
typedef struct {
    char names[16][128];
    char *data[16];
    size_t size[16];
    int n;
} members;

static int want_all(void *ctx, const char *name, uint64_t size) {
    (void)ctx, (void)name, (void)size;
    return 1;
}

static int keep(void *ctx, const char *name, uint8_t *data, uint64_t size) {
    members *m = ctx;
    if (m->n == 16) {
        free(data);
        return 0;
    }
    snprintf(m->names[m->n], 128, "%s", name);
    m->data[m->n] = malloc(size + 1);
    if (!m->data[m->n]) {
        free(data);
        return -1;
    }
    memcpy(m->data[m->n], data, size);
    m->data[m->n][size] = 0;
    free(data);
    m->size[m->n++] = size;
    return 0;
}

static const char *member(const members *m, const char *name) {
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->names[i], name)) return m->data[i];
    return NULL;
}

static void free_members(members *m) {
    for (int i = 0; i < m->n; i++) free(m->data[i]);
}

/* SHA256SUMS lists every other member with its right sum. */
static void check_sums(const members *m) {
    const char *sums = member(m, "run/SHA256SUMS");
    CHECK(sums != NULL);
    if (!sums) return;
    int listed = 0;
    for (int i = 0; i < m->n; i++) {
        if (!strcmp(m->names[i], "run/SHA256SUMS")) continue;
        char hex[65], line[256];
        CHECK_OK(ct_sha256_buffer(m->data[i], m->size[i], hex));
        snprintf(line, sizeof line, "%s  %s\n", hex, m->names[i] + 4);
        CHECK_MSG(strstr(sums, line), "SHA256SUMS lacks \"%s\"", line);
        listed++;
    }
    int lines = 0;
    for (const char *p = sums; *p; p++) lines += *p == '\n';
    CHECK_MSG(lines == listed && listed == 7, "SHA256SUMS: %d lines for %d other members", lines, listed);
}

static void check_citation(const members *m) {
    const char *cff = member(m, "run/CITATION.cff");
    const char *want[] = {"cff-version: 1.2.0\n", "message: ", "title: \"MLP on MNIST, a test\"",
                          "  - family-names: \"Curie\"\n    given-names: \"Marie\"\n    affiliation: "
                          "\"Sorbonne Universit\xc3\xa9\"\n", "  - family-names: \"Doe\"\n    "
                          "given-names: \"Jane\"\n", "version: \"1\"", "date-released: \"2024-03-01\"",
                          "license: \"CC-BY-4.0\"", "keywords:\n  - \"mnist\"\n  - \"quick test\"\n"};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        CHECK_MSG(cff && strstr(cff, want[i]), "CITATION.cff lacks \"%s\"", want[i]);
    json_t *z = json_loads(member(m, "run/.zenodo.json") ? member(m, "run/.zenodo.json") : "", 0, NULL);
    CHECK_MSG(z != NULL, ".zenodo.json is not JSON");
    const char *s;
    json_t *c0 = NULL, *c1 = NULL, *kw = NULL;
    const char *desc = NULL, *date = NULL, *type = NULL, *lic = NULL, *name0 = NULL, *aff0 = NULL,
               *name1 = NULL;
    int bad = json_unpack(z, "{s:s, s:s, s:o, s:s, s:s, s:o, s:s, s:s}", "upload_type", &type,
                          "title", &s, "creators", &c0, "description", &desc, "license", &lic,
                          "keywords", &kw, "version", &s, "publication_date", &date);
    c1 = json_array_get(c0, 1);
    c0 = json_array_get(c0, 0);
    bad = bad || json_unpack(c0, "{s:s, s:s}", "name", &name0, "affiliation", &aff0) ||
          json_unpack(c1, "{s:s}", "name", &name1) || json_object_get(c1, "affiliation");
    CHECK_MSG(!bad, ".zenodo.json lacks a field");
    if (!bad) {
        CHECK(!strcmp(type, "dataset") && !strcmp(lic, "cc-by-4.0") && !strcmp(date, "2024-03-01"));
        CHECK(!strcmp(name0, "Curie, Marie") && !strcmp(aff0, "Sorbonne Universit\xc3\xa9") &&
              !strcmp(name1, "Doe, Jane"));
        CHECK(json_array_size(kw) == 2 && !strcmp(desc, "One epoch of an MLP."));
    }
    json_decref(z);
}

static void check_readme(const members *m) {
    const char *r = member(m, "run/README.md");
    const char *want[] = {"# MLP on MNIST, a test", "`mlp`", "`mnist`", "the first 256 images",
                          "ctorch verify run.tar.gz", "sha256sum -c SHA256SUMS",
                          "from safetensors.torch import load_file", "fc1=nn.Linear(C * H * W, 128)",
                          "model.load_state_dict(state_dict)", CT_VERSION};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        CHECK_MSG(r && strstr(r, want[i]), "README.md lacks \"%s\"", want[i]);
}

/* ------------------------------------------------------------------ the tests */
TEST(archive_and_verify_a_real_run) {
    if (!mnist_dir()) SKIP("CTORCH_DATA does not hold MNIST");
    const char *dir = the_run();
    if (!dir) return;
    char args[4096], out[600], log[600];
    snprintf(out, sizeof out, "%s.tar.gz", dir);
    snprintf(log, sizeof log, "%s/archive.log", tmpdir());
    snprintf(args, sizeof args, "%s archive %s/ --title 'MLP on MNIST, a test' --author "
             "'Curie, Marie; Sorbonne Universit\xc3\xa9' --author 'Doe,Jane' --keywords 'mnist, "
             "quick test,' --description 'One epoch of an MLP.'", bin(), dir);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "SOURCE_DATE_EPOCH=1709251200 %s", args);
    int rc = run(cmd, log);
    CHECK_MSG(rc == 0, "archive exited %d", rc);
    CHECK(file_has(log, "archived") && file_has(log, out));
    if (rc) return show(log);
    members m = {0};
    CHECK_OK(ct_tar_gz_scan(out, want_all, keep, &m));
    const char *names[] = {"run/README.md", "run/manifest.json", "run/model.safetensors",
                           "run/metrics.jsonl", "run/curves.svg", "run/CITATION.cff", "run/.zenodo.json",
                           "run/SHA256SUMS"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        CHECK_MSG(member(&m, names[i]), "the archive lacks %s", names[i]);
    CHECK_MSG(m.n == 8, "%d members, expected 8", m.n);
    check_sums(&m);
    check_citation(&m);
    check_readme(&m);
    free_members(&m);
    /* verify: the sums, then the accuracy exactly (this build and CPU are the run's) */
    snprintf(args, sizeof args, "verify %s", out);
    expect(args, 0, "exact match required");
    expect(args, 0, "model.safetensors: sha256");
    expect(args, 0, "\nverified\n");
    /* the run directory itself: no SHA256SUMS, the manifest and the weights */
    snprintf(args, sizeof args, "verify %s", dir);
    expect(args, 0, "no SHA256SUMS");
    expect(args, 0, "\nverified\n");
    snprintf(args, sizeof args, "verify %s --no-eval", out);
    expect(args, 0, "not re-evaluated (--no-eval)");
}

/* Another CPU (or ctorch) than the run's: within 0.5 point (2 images of 256 here) passes,
 * more fails naming the weights; on the run's CPU one image off fails. */
TEST(archive_verify_compares_the_accuracy) {
    if (!mnist_dir()) SKIP("CTORCH_DATA does not hold MNIST");
    if (!the_run()) return;
    char args[1024], mpath[1024];
    snprintf(mpath, sizeof mpath, "%s/run/manifest.json", tmpdir());
    json_t *m = json_load_file(mpath, 0, NULL);
    double acc = json_number_value(json_object_get(json_object_get(m, "final_metrics"), "test_acc"));
    json_decref(m);
    const char *dir = copy_run("run_acc");
    CHECK(dir != NULL);
    if (!dir) return;
    snprintf(args, sizeof args, "verify %s", dir);
    edit_manifest(dir, "final_metrics", "test_acc", json_real(acc + 1.0 / 256));
    expect(args, 1, "must match exactly");
    expect(args, 1, "FAILED: model.safetensors");
    edit_manifest(dir, "system", "cpu_model", json_string("Another CPU"));
    expect(args, 0, "within the 0.78 allowed because CPU");
    edit_manifest(dir, "final_metrics", "test_acc", json_real(acc + 0.03));
    expect(args, 1, "more than the 0.78 allowed");
    edit_manifest(dir, "final_metrics", "test_acc", json_null());
    expect(args, 0, "records no final_metrics.test_acc");
}

/* Flips one byte of a file at offset `at` from its end. */
static int flip_byte(const char *path, long at) {
    FILE *f = fopen(path, "r+b");
    if (!f || fseek(f, -at, SEEK_END) != 0) {
        if (f) fclose(f);
        return -1;
    }
    int c = fgetc(f);
    fseek(f, -at, SEEK_END);
    fputc(c ^ 0x01, f);
    return fclose(f);
}

static int have_tar(void) { return system("tar --version >/dev/null 2>&1") == 0; }

/* A byte changed in a file of the archive (extracted, and repacked with tar), a file added,
 * the weights changed: verify exits 1 and names the file. */
TEST(archive_verify_names_a_modified_file) {
    if (!mnist_dir()) SKIP("CTORCH_DATA does not hold MNIST");
    if (!the_run()) return;
    char cmd[4096], args[2048], x[600], log[600];
    snprintf(log, sizeof log, "%s/mod.log", tmpdir());
    snprintf(cmd, sizeof cmd, "cd %s && %s archive run --out run.tar.gz --author 'Doe, Jane'", tmpdir(), bin());
    CHECK(run(cmd, log) == 0);
    if (!have_tar()) SKIP("no tar program to extract and repack the archive");
    snprintf(x, sizeof x, "%s/x", tmpdir());
    snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir %s && tar xzf %s/run.tar.gz -C %s", x, x, tmpdir(), x);
    CHECK(system(cmd) == 0);
    /* the extracted directory, with its SHA256SUMS: the sums are checked */
    snprintf(args, sizeof args, "verify %s/run", x);
    expect(args, 0, "metrics.jsonl: sha256");
    snprintf(cmd, sizeof cmd, "%s/run/metrics.jsonl", x);
    CHECK(flip_byte(cmd, 3) == 0);
    expect(args, 1, "FAILED  metrics.jsonl: modified");
    expect(args, 1, "\nFAILED: metrics.jsonl\n");
    /* repacked: the archive fails the same way */
    snprintf(cmd, sizeof cmd, "cd %s && tar czf ../repacked.tar.gz run", x);
    CHECK(system(cmd) == 0);
    snprintf(args, sizeof args, "verify %s/repacked.tar.gz", tmpdir());
    expect(args, 1, "\nFAILED: metrics.jsonl\n");
    /* the weights: a changed byte fails the sums; nothing is evaluated */
    snprintf(cmd, sizeof cmd, "%s/run/model.safetensors", x);
    CHECK(flip_byte(cmd, 100) == 0);
    snprintf(cmd, sizeof cmd, "cd %s && tar czf ../repacked.tar.gz run", x);
    CHECK(system(cmd) == 0);
    expect(args, 1, "\nFAILED: model.safetensors, metrics.jsonl\n");
    expect(args, 1, "not re-evaluated: a file failed its check");
    /* a file that SHA256SUMS does not list; a listed file removed */
    snprintf(cmd, sizeof cmd, "cd %s && rm -rf run && tar xzf ../run.tar.gz && echo extra > "
             "run/extra.txt && rm run/.zenodo.json && tar czf ../repacked.tar.gz run", x);
    CHECK(system(cmd) == 0);
    expect(args, 1, "FAILED  extra.txt: in the archive but not listed in SHA256SUMS");
    expect(args, 1, "FAILED  .zenodo.json: missing");
    /* a damaged archive is never "verified": cut short, it is not a valid .tar.gz (exit 2);
     * a byte changed in the middle of the compressed stream fails one way or the other */
    snprintf(cmd, sizeof cmd, "head -c 100000 %s/run.tar.gz > %s/damaged.tar.gz", tmpdir(), tmpdir());
    CHECK(system(cmd) == 0);
    snprintf(args, sizeof args, "verify %s/damaged.tar.gz", tmpdir());
    expect(args, 2, "not a valid .tar.gz archive");
    snprintf(cmd, sizeof cmd, "cp %s/run.tar.gz %s/damaged.tar.gz", tmpdir(), tmpdir());
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "%s/damaged.tar.gz", tmpdir());
    CHECK(flip_byte(cmd, ct_file_size(cmd) / 2) == 0);
    snprintf(cmd, sizeof cmd, "%s verify %s/damaged.tar.gz", bin(), tmpdir());
    int rc = run(cmd, log);
    CHECK_MSG((rc == 1 || rc == 2) && !file_has(log, "verified"), "a damaged archive: exit %d", rc);
}

TEST(archive_bad_input_exits_2) {
    char args[2048], d[600];
    expect("help archive", 0, "--author");
    expect("help verify", 0, "--data-dir");
    expect("archive", 2, "name the run directory");
    expect("archive /nonexistent/run", 2, "/nonexistent/run is not a directory");
    expect("verify", 2, "name what to verify");
    expect("verify /nonexistent/run.tar.gz", 2, "/nonexistent/run.tar.gz");
    snprintf(d, sizeof d, "%s/empty", tmpdir());
    mkdir(d, 0755);
    snprintf(args, sizeof args, "archive %s", d);
    expect(args, 2, "has no manifest.json and model.safetensors");
    snprintf(args, sizeof args, "verify %s", d);
    expect(args, 2, "has no manifest.json");
    snprintf(args, sizeof args, "archive %s --publish", d);
    expect(args, 2, "--publish only applies with --upload zenodo");
    snprintf(args, sizeof args, "archive %s --upload dropbox", d);
    expect(args, 2, "choose one of: zenodo");
    snprintf(args, sizeof args, "archive %s --license 'CC BY'", d);
    expect(args, 2, "SPDX");
    snprintf(args, sizeof args, "archive %s --author", d);
    expect(args, 2, "--author needs a value");
    snprintf(args, sizeof args, "archive %s --author=", d);
    expect(args, 2, "--author needs a value");
    /* not a .tar.gz */
    snprintf(args, sizeof args, "%s/notes.tar.gz", tmpdir());
    FILE *f = fopen(args, "w");
    if (f) fputs("not an archive\n", f), fclose(f);
    snprintf(args, sizeof args, "verify %s/notes.tar.gz", tmpdir());
    expect(args, 2, "not a valid .tar.gz");
    if (!mnist_dir()) SKIP("CTORCH_DATA does not hold MNIST (the cases with a run)");
    if (!the_run()) return;
    const char *dir = copy_run("run_bad");
    if (!dir) return;
    snprintf(args, sizeof args, "archive %s --author ', Jane'", dir);
    expect(args, 2, "expected \"Family, Given; Affiliation\"");
    snprintf(args, sizeof args, "archive %s --out %s/model.safetensors", dir, dir);
    expect(args, 2, "is the run's own model.safetensors");
    snprintf(args, sizeof args, "verify %s --data-dir /nonexistent/data", dir);
    expect(args, 2, "--no-eval");
    edit_manifest(dir, NULL, "status", json_string("running"));
    snprintf(args, sizeof args, "archive %s --author 'Doe, Jane'", dir);
    expect(args, 2, "--allow-incomplete");
    edit_manifest(dir, NULL, "status", json_string("interrupted"));
    expect(args, 0, "warning: ");
    snprintf(args, sizeof args, "%s.tar.gz", dir);
    members m = {0};
    CHECK_OK(ct_tar_gz_scan(args, want_all, keep, &m));
    const char *readme = member(&m, "run_bad/README.md");
    CHECK(readme && strstr(readme, "This run did not complete: its status is \"interrupted\""));
    free_members(&m);
    edit_manifest(dir, NULL, "format", json_string("something-else"));
    snprintf(args, sizeof args, "archive %s --author 'Doe, Jane'", dir);
    expect(args, 2, "not a ctorch run manifest");
    snprintf(args, sizeof args, "verify %s", dir);
    expect(args, 2, "not a ctorch run manifest");
    snprintf(args, sizeof args, "%s/model.safetensors", dir);
    unlink(args);
    snprintf(args, sizeof args, "archive %s", dir);
    expect(args, 2, "has no model.safetensors");
}

/* ------------------------------------------------------------- Zenodo (mock) */
typedef struct {
    pid_t pid;
    int port;
    char log[512];
} mock;

static pid_t g_mock_pids[8];

/* Kills what is left of the mocks (a test that returned early, or exit). */
static void kill_mocks(void) {
    for (int i = 0; i < 8; i++)
        if (g_mock_pids[i] > 0) {
            kill(g_mock_pids[i], SIGTERM);
            while (waitpid(g_mock_pids[i], NULL, 0) < 0 && errno == EINTR) {}
            g_mock_pids[i] = 0;
        }
}

static void mock_stop(mock *m) {
    if (m->pid <= 0) return;
    kill(m->pid, SIGTERM);
    while (waitpid(m->pid, NULL, 0) < 0 && errno == EINTR) {}
    for (int i = 0; i < 8; i++)
        if (g_mock_pids[i] == m->pid) g_mock_pids[i] = 0;
    m->pid = 0;
}

static long ms_since(const struct timespec *t0) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (t.tv_sec - t0->tv_sec) * 1000L + (t.tv_nsec - t0->tv_nsec) / 1000000L;
}

/* The mock's first line from fd, NUL-terminated in buf without its newline: reads until
 * the newline (whatever the number of writes it came in), EOF (the mock died) or 15 s.
 * Returns 1 with a whole line, 0 otherwise (buf then holds what came). */
static int read_line(int fd, char *buf, size_t n) {
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    size_t got = 0;
    buf[0] = 0;
    while (got + 1 < n) {
        long left = 15000 - ms_since(&t0);
        if (left <= 0) return 0;
        struct pollfd p = {fd, POLLIN, 0};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return 0;
        ssize_t k = read(fd, buf + got, n - 1 - got);
        if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (k <= 0) return 0; /* EOF: the mock exited before it finished the line */
        got += (size_t)k;
        buf[got] = 0;
        char *nl = strchr(buf, '\n');
        if (nl) {
            *nl = 0;
            return 1;
        }
    }
    return 0;
}

/* Starts tests/zenodo_mock.py for `archive` (fail: "STEP:STATUS" or NULL); 0 once it
 * listens on m->port.
 *
 * The mock prints its port once its socket listens; this reads that whole line before it
 * closes the pipe. (It once took what the first read() returned and closed the read end
 * at once; a python3 with PYTHONUNBUFFERED=1 writes print()'s "PORT" and "\n" in two
 * write()s, so the mock's second write could find the pipe closed, die of BrokenPipeError
 * before serving, and the upload then failed with "Couldn't connect".) The pipe is
 * O_CLOEXEC: no other child (a later mock, an upload's shell) holds a copy of it. */
static int mock_start(mock *m, const char *name, const char *archive, const char *fail) {
    static int registered;
    if (!registered) registered = !atexit(kill_mocks);
    snprintf(m->log, sizeof m->log, "%s/%s.mock.log", tmpdir(), name);
    unlink(m->log);
    m->port = 0;
    int fd[2];
    if (pipe2(fd, O_CLOEXEC) != 0) {
        CHECK_MSG(0, "pipe2: %s", strerror(errno));
        return -1;
    }
    m->pid = fork();
    if (m->pid == 0) {
        dup2(fd[1], 1); /* fd 1 itself is not close-on-exec */
        if (fail)
            execl(PY, PY, MOCK, "--token", TOKEN, "--archive", archive, "--log", m->log, "--fail",
                  fail, (char *)NULL);
        else
            execl(PY, PY, MOCK, "--token", TOKEN, "--archive", archive, "--log", m->log, (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    for (int i = 0; m->pid > 0 && i < 8; i++)
        if (!g_mock_pids[i]) {
            g_mock_pids[i] = m->pid;
            break;
        }
    char line[64];
    int whole = m->pid > 0 && read_line(fd[0], line, sizeof line);
    close(fd[0]);
    char *end = NULL;
    long port = whole ? strtol(line, &end, 10) : 0;
    if (whole && end != line && *end == 0 && port > 0 && port < 65536) {
        m->port = (int)port;
        return 0;
    }
    CHECK_MSG(0, "%s did not start: its first line was \"%s\"%s, not a port", MOCK,
              m->pid > 0 ? line : "", whole ? "" : " (no newline within 15 s or it exited)");
    mock_stop(m);
    return -1;
}

static const char *mock_ready(void) {
    if (access(PY, X_OK) != 0) return "no system python3 (" PY ") to run the Zenodo mock";
    if (access(MOCK, R_OK) != 0) return MOCK " not found: run the tests from the repository root";
    if (!mnist_dir()) return "CTORCH_DATA does not hold MNIST";
    return NULL;
}

/* `ENV ctorch archive RUN --out OUT --author ... --upload zenodo --zenodo-url MOCK EXTRA`. */
static int upload(const mock *m, const char *env, const char *out, const char *extra, const char *log) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s %s archive %s --out %s --author 'Curie, Marie; Sorbonne' "
             "--upload zenodo --zenodo-url http://127.0.0.1:%d/api %s", env, bin(), the_run(), out,
             m->port, extra);
    return run(cmd, log);
}

TEST(archive_upload_to_zenodo_mock) {
    const char *why = mock_ready();
    if (why) SKIP(why);
    if (!the_run()) return;
    char out[600], log[600];
    snprintf(out, sizeof out, "%s/up.tar.gz", tmpdir());
    snprintf(log, sizeof log, "%s/up.log", tmpdir());
    mock m = {0};
    if (mock_start(&m, "draft", out, NULL) == 0) {
        int rc = upload(&m, "ZENODO_TOKEN=" TOKEN, out, "", log);
        CHECK_MSG(rc == 0, "upload exited %d", rc);
        CHECK(file_has(log, "zenodo: created deposition 4242") && file_has(log, "/deposit/4242") &&
              file_has(log, "saved as a draft"));
        CHECK(!file_has(log, TOKEN));
        CHECK(file_has(m.log, "create ok\nupload ok up.tar.gz") && file_has(m.log, "metadata ok "
              "title=\"ctorch run run: mlp on mnist\" creators=[\"Curie, Marie\"] license=cc-by-4.0"));
        CHECK_MSG(!file_has(m.log, "publish") && !file_has(m.log, "ERROR"), "the mock saw a "
                  "publish or an error");
        if (rc) show(log), show(m.log);
    }
    mock_stop(&m);
    /* --publish, the token from a file of mode 0600 */
    char tf[600], env[700];
    snprintf(tf, sizeof tf, "%s/token", tmpdir());
    FILE *f = fopen(tf, "w");
    if (f) fputs(TOKEN "\n", f), fclose(f);
    chmod(tf, 0600);
    snprintf(env, sizeof env, "env -u ZENODO_TOKEN");
    char extra[700];
    snprintf(extra, sizeof extra, "--publish --token-file %s", tf);
    if (mock_start(&m, "publish", out, NULL) == 0) {
        int rc = upload(&m, env, out, extra, log);
        CHECK_MSG(rc == 0, "upload --publish exited %d", rc);
        CHECK(file_has(log, "DOI 10.5072/zenodo.4242") && file_has(log, "/records/4242"));
        CHECK(file_has(m.log, "metadata ok") && file_has(m.log, "publish ok"));
        CHECK(!file_has(m.log, "ERROR"));
        if (rc) show(log), show(m.log);
    }
    mock_stop(&m);
}

TEST(archive_upload_errors) {
    const char *why = mock_ready();
    if (why) SKIP(why);
    if (!the_run()) return;
    char out[600], log[600], tf[600], extra[700];
    snprintf(out, sizeof out, "%s/err.tar.gz", tmpdir());
    snprintf(log, sizeof log, "%s/err.log", tmpdir());
    mock m = {0};
    /* no token, a token file others can read, no --author: exit 2, nothing written */
    m.port = 9;
    unlink(out);
    CHECK(upload(&m, "env -u ZENODO_TOKEN", out, "", log) == 2);
    CHECK(file_has(log, "set ZENODO_TOKEN or pass --token-file FILE (mode 0600)"));
    CHECK_MSG(access(out, F_OK) != 0, "the archive was written before the token was checked");
    snprintf(tf, sizeof tf, "%s/token644", tmpdir());
    FILE *f = fopen(tf, "w");
    if (f) fputs(TOKEN "\n", f), fclose(f);
    chmod(tf, 0644);
    snprintf(extra, sizeof extra, "--token-file %s", tf);
    CHECK(upload(&m, "", out, extra, log) == 2);
    CHECK(file_has(log, "has mode 0644") && file_has(log, "chmod 600"));
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "ZENODO_TOKEN=" TOKEN " %s archive %s --out %s --upload zenodo", bin(),
             the_run(), out);
    CHECK(run(cmd, log) == 2 && file_has(log, "--author"));
    /* Zenodo's errors: exit 1 with its message */
    if (mock_start(&m, "e401", out, "create:401") == 0) {
        CHECK(upload(&m, "ZENODO_TOKEN=" TOKEN, out, "", log) == 1);
        CHECK(file_has(log, "answered HTTP 401: The server could not verify that you are authorized"));
    }
    mock_stop(&m);
    if (mock_start(&m, "e400", out, "metadata:400") == 0) {
        CHECK(upload(&m, "ZENODO_TOKEN=" TOKEN, out, "--publish", log) == 1);
        CHECK(file_has(log, "HTTP 400: Validation error. (metadata.creators: Missing data for "
                            "required field.)"));
        CHECK(file_has(log, "draft deposition 4242"));
        CHECK_MSG(!file_has(m.log, "publish"), "published after a failed step");
    }
    mock_stop(&m);
    /* a wrong token: the mock answers 401 */
    if (mock_start(&m, "wrong", out, NULL) == 0) {
        CHECK(upload(&m, "ZENODO_TOKEN=not-the-token", out, "", log) == 1);
        CHECK(file_has(log, "HTTP 401") && file_has(log, "check the token"));
        CHECK(!file_has(log, "not-the-token"));
    }
    mock_stop(&m);
    /* nothing listens: the transfer's error, exit 1 */
    m.port = 1;
    CHECK(upload(&m, "ZENODO_TOKEN=" TOKEN, out, "", log) == 1);
    CHECK(file_has(log, "zenodo: creating the deposition"));
}
#else
/* Built without libarchive (the Makefile said so): both commands say it in one line. */
TEST(archive_without_libarchive_says_so) {
    char args[1024];
    snprintf(args, sizeof args, "archive %s", tmpdir());
    expect(args, 1, "not built with libarchive");
    snprintf(args, sizeof args, "%s/some.tar.gz", tmpdir());
    FILE *f = fopen(args, "w");
    if (f) fputs("x\n", f), fclose(f);
    snprintf(args, sizeof args, "verify %s/some.tar.gz", tmpdir());
    expect(args, 1, "not built with libarchive");
}
#endif
