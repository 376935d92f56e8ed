/* `ctorch doctor` (docs/doctor.md): exit 0 here with this machine's CPU facts, and each
 * faked fault gives its verdict, its fix and the exit status (1 only for a problem). */
#include "cli_util.h"
#include "test.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* Runs `ENV ctorch doctor --json ARGS`; the parsed output (NULL when it is not JSON, the
 * test then fails) and the exit status in *rc. */
static json_t *doctor_json(const char *env, const char *args, int *rc) {
    char cmd[2048], out[600], log[600];
    snprintf(out, sizeof out, "%s/doctor.json", tmpdir());
    snprintf(log, sizeof log, "%s/doctor.log", tmpdir());
    snprintf(cmd, sizeof cmd, "%s %s doctor --json %s > %s 2> %s; exit $?", env, bin(), args, out,
             log);
    int st = system(cmd);
    *rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    json_error_t err;
    json_t *j = json_load_file(out, 0, &err);
    CHECK_MSG(j && json_is_array(json_object_get(j, "checks")),
              "doctor --json %s: not the expected JSON (%s, line %d)", args, err.text, err.line);
    if (!j) show_log(log);
    return j;
}

/* The row named check, or NULL (the test fails). */
static const json_t *row(const json_t *j, const char *check) {
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(j, "checks"), i, r) {
        if (!strcmp(json_string_value(json_object_get(r, "check")), check)) return r;
    }
    CHECK_MSG(0, "doctor: no row '%s'", check);
    return NULL;
}

static const char *field(const json_t *r, const char *key) {
    const char *s = r ? json_string_value(json_object_get(r, key)) : NULL;
    return s ? s : "";
}

/* Row check has verdict v and its fix (or detail, when fix_has is NULL) names needle. */
static void expect(const json_t *j, const char *check, const char *v, const char *fix_has) {
    const json_t *r = row(j, check);
    if (!r) return;
    CHECK_MSG(!strcmp(field(r, "verdict"), v), "doctor row %s: verdict %s, expected %s (%s)",
              check, field(r, "verdict"), v, field(r, "detail"));
    if (fix_has)
        CHECK_MSG(strstr(field(r, "fix"), fix_has), "doctor row %s: fix '%s' lacks '%s'", check,
                  field(r, "fix"), fix_has);
}

/* "model name" of /proc/cpuinfo */
static int cpu_model(char *out, size_t n) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    int found = -1;
    while (f && found && fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
            char *v = strchr(line, ':') + 1;
            v += *v == ' ';
            v[strcspn(v, "\n")] = 0;
            snprintf(out, n, "%s", v);
            found = 0;
        }
    if (f) fclose(f);
    return found;
}

TEST(doctor_ok_here_with_this_cpu) {
    int rc;
    json_t *j = doctor_json("", "", &rc);
    if (!j) return;
    CHECK_MSG(rc == 0, "doctor exited %d here; summary: %s", rc,
              json_dumps(json_object_get(j, "summary"), 0));
    CHECK(json_integer_value(json_object_get(json_object_get(j, "summary"), "problem")) == 0);
    char model[256];
    const char *cpu = field(row(j, "cpu"), "detail");
    if (cpu_model(model, sizeof model) == 0)
        CHECK_MSG(strstr(cpu, model), "cpu row '%s' lacks the model '%s'", cpu, model);
    if (__builtin_cpu_supports("avx2"))
        CHECK_MSG(strstr(cpu, "avx2") && strstr(cpu, "kernels: avx"), "cpu row: %s", cpu);
    expect(j, "smoke cpu", "ok", NULL);
    expect(j, "run dir", "ok", NULL);
    /* the table has the same rows as the JSON */
    char log[600], cmd[800], line[64];
    snprintf(log, sizeof log, "%s/table.log", tmpdir());
    snprintf(cmd, sizeof cmd, "%s doctor", bin());
    CHECK(run(cmd, log) == 0);
    snprintf(line, sizeof line, "%zu checks:", json_array_size(json_object_get(j, "checks")));
    CHECK_MSG(log_has(log, line) && log_has(log, "smoke cpu"), "table lacks '%s'", line);
    json_decref(j);
}

TEST(doctor_broken_cuda_plugin_is_a_problem) {
    char plugin[600], env[700];
    snprintf(plugin, sizeof plugin, "%s/libctorch_cuda.so", tmpdir());
    FILE *f = fopen(plugin, "w");
    if (!f) return;
    fputs("not a shared library\n", f);
    fclose(f);
    snprintf(env, sizeof env, "CTORCH_CUDA_PLUGIN=%s", plugin);
    int rc;
    json_t *j = doctor_json(env, "", &rc);
    if (!j) return;
    CHECK_MSG(rc == 1, "doctor with a broken plugin exited %d", rc);
    expect(j, "cuda", "problem", "make cuda");
    CHECK(strstr(field(row(j, "cuda"), "detail"), "damaged"));
    json_decref(j);
}

TEST(doctor_small_dev_shm_warns) {
    if (system("unshare -m true 2>/dev/null") != 0) SKIP("unshare -m is not permitted here");
    /* in a private mount namespace: /dev/shm of 1 MiB */
    char cmd[1200], out[600];
    snprintf(out, sizeof out, "%s/shm.json", tmpdir());
    snprintf(cmd, sizeof cmd,
             "unshare -m sh -c 'mount -t tmpfs -o size=1m tmpfs /dev/shm || exit 99; exec %s "
             "doctor --json' > %s 2>/dev/null",
             bin(), out);
    int st = system(cmd), rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    if (rc == 99) SKIP("cannot mount a tmpfs in a mount namespace here");
    json_t *j = json_load_file(out, 0, NULL);
    CHECK_MSG(j, "doctor --json under a small /dev/shm: not JSON (exit %d)", rc);
    if (!j) return;
    CHECK_MSG(rc == 0, "a small /dev/shm is a warning, not a problem: exit %d", rc);
    expect(j, "shm", "warning", "--shm-size");
    CHECK(strstr(field(row(j, "shm"), "detail"), "1.0 MiB"));
    json_decref(j);
}

TEST(doctor_missing_data) {
    int rc;
    /* a named directory that does not exist: a problem */
    json_t *j = doctor_json("", "--data-dir /nonexistent/ctorch-data", &rc);
    if (!j) return;
    CHECK_MSG(rc == 1, "doctor --data-dir /nonexistent exited %d", rc);
    expect(j, "data dir", "problem", "ctorch download");
    json_decref(j);
    /* the default ./data, absent: a warning only */
    char env[700];
    snprintf(env, sizeof env, "cd %s && CTORCH_DATA= CTORCH_RUNS=", tmpdir());
    char self[1024];
    if (!getcwd(self, sizeof self)) return;
    if (bin()[0] != '/') {
        char abs[1200];
        snprintf(abs, sizeof abs, "%s/%s", self, bin());
        setenv("CTORCH_BIN", abs, 1);
    }
    j = doctor_json(env, "", &rc);
    unsetenv("CTORCH_BIN");
    if (!j) return;
    CHECK_MSG(rc == 0, "doctor without data exited %d", rc);
    expect(j, "data dir", "warning", "ctorch download");
    json_decref(j);
}

TEST(doctor_damaged_dataset_file) {
    const char *d = getenv("CTORCH_DATA");
    char src[1024], dst[700], cmd[3000];
    if (!d) SKIP("CTORCH_DATA is not set");
    snprintf(src, sizeof src, "%s/mnist/t10k-labels-idx1-ubyte.gz", d);
    if (access(src, R_OK) != 0) SKIP("no MNIST in $CTORCH_DATA");
    snprintf(dst, sizeof dst, "%s/data", tmpdir());
    snprintf(cmd, sizeof cmd,
             "mkdir -p %s/mnist && cp %s/mnist/*.gz %s/mnist/ && printf x >> "
             "%s/mnist/t10k-labels-idx1-ubyte.gz",
             dst, d, dst, dst);
    CHECK(system(cmd) == 0);
    char env[800], args[800];
    snprintf(env, sizeof env, "CTORCH_CACHE_DIR=%s/cache", tmpdir());
    snprintf(args, sizeof args, "--data-dir %s", dst);
    int rc;
    json_t *j = doctor_json(env, args, &rc);
    if (!j) return;
    CHECK_MSG(rc == 1, "doctor with a damaged dataset file exited %d", rc);
    expect(j, "data mnist", "problem", "ctorch download mnist");
    CHECK(strstr(field(row(j, "data mnist"), "detail"), "t10k-labels-idx1-ubyte.gz"));
    expect(j, "data cifar10", "warning", "ctorch download cifar10");
    expect(j, "data dir", "ok", NULL);
    json_decref(j);
}

TEST(doctor_unwritable_run_dir) {
    char file[600], args[800];
    snprintf(file, sizeof file, "%s/in-the-way", tmpdir());
    FILE *f = fopen(file, "w");
    if (!f) return;
    fclose(f);
    /* a file where a directory should be: fails for root too */
    snprintf(args, sizeof args, "--run-dir %s/runs", file);
    int rc;
    json_t *j = doctor_json("", args, &rc);
    if (!j) return;
    CHECK_MSG(rc == 1, "doctor with an unwritable run dir exited %d", rc);
    expect(j, "run dir", "problem", "--run-dir");
    json_decref(j);
}

TEST(doctor_openblas_threads_warn) {
    int rc;
    json_t *j = doctor_json("OPENBLAS_NUM_THREADS=8", "", &rc);
    if (!j) return;
    CHECK_MSG(rc == 0, "OPENBLAS_NUM_THREADS=8 is a warning: exit %d", rc);
    expect(j, "thread vars", "warning", "unset OPENBLAS_NUM_THREADS");
    json_decref(j);
    j = doctor_json("OPENBLAS_NUM_THREADS=1", "", &rc);
    if (!j) return;
    expect(j, "thread vars", "ok", NULL);
    json_decref(j);
}

TEST(doctor_usage_errors) {
    char cmd[800], log[600];
    snprintf(log, sizeof log, "%s/usage.log", tmpdir());
    snprintf(cmd, sizeof cmd, "%s doctor --bogus", bin());
    CHECK(run(cmd, log) == 2);
    snprintf(cmd, sizeof cmd, "%s doctor --device tpu", bin());
    CHECK(run(cmd, log) == 2);
    snprintf(cmd, sizeof cmd, "%s doctor extra", bin());
    CHECK(run(cmd, log) == 2);
}

/* The GPU rows and the CUDA smoke test on the CUDA emulator (tests/cuda_emu). */
TEST(doctor_gpu_rows_on_the_emulator) {
    const char *dir = "build/cuda_emu";
    char plugin[300], env[1600];
    snprintf(plugin, sizeof plugin, "%s/libctorch_cuda.so", dir);
    if (access(plugin, R_OK) != 0) SKIP("the CUDA emulator is not built (make cuda-emu)");
    char cwd[512];
    if (!getcwd(cwd, sizeof cwd)) return;
    snprintf(env, sizeof env, "CTORCH_CUDA_PLUGIN=%s/%s LD_LIBRARY_PATH=%s/%s", cwd, plugin, cwd,
             dir);
    int rc;
    json_t *j = doctor_json(env, "--device cuda", &rc);
    if (!j) return;
    CHECK_MSG(rc == 0, "doctor on the emulator exited %d", rc);
    expect(j, "cuda", "ok", NULL);
    expect(j, "gpu cuda:0", "ok", NULL);
    expect(j, "smoke cuda:0", "ok", NULL);
    CHECK(strstr(field(row(j, "cuda libs"), "detail"), "cuDNN"));
    json_decref(j);
    /* no GPU: --device cuda makes it a problem */
    j = doctor_json("CTORCH_CUDA_PLUGIN=/nonexistent/libctorch_cuda.so", "--device cuda", &rc);
    if (!j) return;
    CHECK_MSG(rc == 1, "doctor --device cuda without CUDA exited %d", rc);
    expect(j, "cuda", "problem", "unset it");
    json_decref(j);
}
